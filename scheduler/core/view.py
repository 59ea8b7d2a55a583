"""The seam between the scheduler and its policy: what a policy may read, what it answers.

A policy decides on a few counts and the running rows; it gets them through
`SchedulerView`, a frozen snapshot made for each question, so no policy can reach into
the scheduler's lists or allocators and bend the bookkeeping. `PolicyPort` is what the
scheduler needs of a policy; `scheduler.policies` implements it without this package
importing that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.core.config import SchedulerConfig
from scheduler.types import Decision, Request, SeqPlan, Tier


@dataclass(frozen=True)
class SchedulerView:
    """Read-only: the numbers a placement decision weighs, as they are at that moment."""

    config: SchedulerConfig
    has_cpu_tier: bool
    gpu_free_blocks: int
    step_id: int
    running: Sequence[Request]
    now: float  # the scheduler's clock: how long the queue's head has waited

    def blocks_for(self, num_tokens: int) -> int:
        return self.config.blocks_for(num_tokens)

    def future_blocks(self, req: Request) -> int:
        return self.config.future_blocks(req)


class Calibrated(Protocol):
    scale: float  # measured / predicted step time, recently


class PolicyPort(Protocol):
    """What the scheduler asks of a policy (see `scheduler.policies.base.Policy`)."""

    name: str
    cpu_attention: bool
    cost: object
    calibration: Calibrated

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        """The tier the request's KV goes to after prefill, or None to keep it waiting."""
        ...

    def select(self, seqs: list[SeqPlan]) -> list[SeqPlan]:
        """The rows that run this iteration; the others wait."""
        ...

    def spill(self, view: SchedulerView, head: Request, victims: list[Request]) -> bool:
        """Whether these running GPU rows may move to the CPU tier so that the waiting
        prompt `head` can be prefilled now."""
        ...

    def choose(self, seqs: list[SeqPlan]) -> Decision:
        """How this iteration's rows run, and the model's (uncalibrated) time for it."""
        ...
