"""Policies: where each request's KV lives and how each iteration runs.

The scheduler does the bookkeeping; a policy answers its questions, from a cost model
(a profile) of the subtasks of one decoder layer:

- `place(...)`: a request is about to be admitted; after its prefill (always on the
  GPU), should its KV stay on the GPU tier, go to the CPU tier, or should it wait?
- `select(...)`: which of the running rows run this iteration (all of them, except
  under neo)?
- `choose(...)`: this iteration's rows are fixed; which strategy runs them, and for
  asymmetric pipelining, how are the CPU rows split between the two sub-batches?

Three policies:

- `gpu-only` (vLLM-like): attention only on the GPU; the CPU tier, if any, is swap
  space for preempted requests.
- `neo` (NEO's own scheduling rules): a request goes to the GPU tier while its KV fits
  there (swapped out when the GPU runs short); each iteration only the CPU rows whose
  attention hides under the pipeline's GPU work run (`select`), the others wait.
- `apex`: per iteration the strategy with the least predicted time; a request goes to
  the GPU tier whenever its KV fits there now, else to the CPU tier only while the
  predicted iteration time with it stays under the TPOT bound, and only if waiting for
  the GPU would take it past half of what its prefill leaves of the TTFT bound; GPU
  rows spill to the CPU tier (on the same two conditions) so that a waiting prompt
  starts now; every admitted row runs every iteration.

How each strategy's time is predicted: `scheduler/costs/cost_model.py`. The policies
themselves: `base.py` (the interface, gpu-only, the fixed rule), `neo.py`, `apex.py`;
`registry.py` builds one by name.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence

from scheduler.core.view import SchedulerView
from scheduler.costs.cost_model import CostModel, Work, best_decision, work_of
from scheduler.types import Decision, Request, SeqPlan, Strategy, Tier


def mean_context(req: Request) -> float:
    """The context a row holds on average over its whole life (its prompt and half its
    output budget), or what it holds now if that is more: the load it stands for.

    Not the mean over the rest of its life: summed over the running rows, that counts
    each row at 3/4 of its output on average, where in steady state rows sit at a
    uniformly random point of their lives (1/2), finished rows giving way to new short
    ones. Admission gated on that sum kept apex's p99 TPOT at 70% of its bound (T4,
    long CoT: 105 of 150 ms) while requests queued."""
    n = len(req.prompt_ids)  # without max() or num_tokens: every running row, every step
    mean = n + req.sampling.max_tokens / 2
    return float(n + len(req.output_ids)) if n + len(req.output_ids) > mean else mean


def gpu_wait_s(view: SchedulerView, req: Request, step_s: float) -> float:
    """How long `req` would wait for the GPU tier to hold its prompt: until the GPU rows
    closest to their end (by output budget) have freed enough blocks, at `step_s` a
    token; inf if they never would."""
    short = view.blocks_for(req.num_tokens + 1) - view.gpu_free_blocks
    if short <= 0:
        return 0.0
    gpu_rows = sorted(
        (r for r in view.running if r.tier is Tier.GPU and r.target_tier is not Tier.CPU),
        key=lambda r: r.remaining_tokens,
    )
    for r in gpu_rows:
        short -= len(r.block_table)
        if short <= 0:
            return r.remaining_tokens * step_s
    return math.inf


class Calibration:
    """The profile's times, scaled by the median ratio of measured to predicted over
    the recent iterations: a profile measured on an idle machine, or a while ago,
    stays right in scale, and the policy's bound keeps meaning what it says."""

    def __init__(self, window: int = 64) -> None:
        self.ratios: deque[float] = deque(maxlen=window)
        self.scale = 1.0

    def observe(self, model_s: float, measured_s: float) -> None:
        if model_s > 0 and measured_s > 0 and math.isfinite(model_s):
            self.ratios.append(measured_s / model_s)
            self.scale = statistics.median(self.ratios)


class Policy:
    name = "base"
    cpu_attention = True  # False: the CPU tier only parks preempted requests
    strategies: tuple[Strategy, ...] = (Strategy.OVERLAP,)
    tpot_slo_s: float | None = None  # a TPOT bound in force, for the policies that keep one
    tpot_slo_given: float | None = None  # the operator's bound (None: none, or a default)
    tpot_from_profile = False  # whether the bound in force is the profile's default
    ttft_slo_s: float | None = None  # and a TTFT bound

    def __init__(self, cost: CostModel | None) -> None:
        self.cost = cost
        self.calibration = Calibration()

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        """The tier the request's KV goes to after prefill, or None to keep it waiting."""
        return Tier.GPU

    def select(self, seqs: list[SeqPlan]) -> list[SeqPlan]:
        """The rows that run this iteration; the others wait (NEO lets CPU rows wait)."""
        return seqs

    def spill(self, view: SchedulerView, head: Request, victims: list[Request]) -> bool:
        """Whether running GPU rows may move to the CPU tier to let a prompt in (only
        apex says yes: the others wait for the GPU, as their papers do)."""
        return False

    def choose(self, seqs: list[SeqPlan]) -> Decision:
        w = work_of(seqs)
        if self.cost is None:
            strategy = Strategy.OVERLAP if w.cpu_context else Strategy.GPU_ONLY
            return Decision(strategy, 0, float("nan"))
        return best_decision(self.cost, w, self.strategies)  # uncalibrated

    def describe(self) -> str:
        return self.name


def gpu_fits_now(view: SchedulerView, req: Request) -> bool:
    """Its KV and its next token fit in the GPU blocks free now (vLLM's admission; the
    future is not reserved). The prompts admitted before it this round hold their
    blocks already: the free count has them."""
    return view.blocks_for(req.num_tokens + 1) <= view.gpu_free_blocks


class GpuOnlyPolicy(Policy):
    name = "gpu-only"
    cpu_attention = False
    strategies = ()


class FixedRulePolicy(Policy):
    """Issue 3's rule, kept for `--placement cpu|gpu` and for runs with no profile: the
    GPU tier when the request's future fits beside what is left, else the CPU tier."""

    name = "fixed"

    def __init__(self, cost: CostModel | None, label: str = "fixed") -> None:
        super().__init__(cost)
        self.name = label  # the policy asked for, running without a profile

    def describe(self) -> str:
        return f"{self.name} (no profile: fixed placement rule, overlap)"

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        if not view.has_cpu_tier:
            return Tier.GPU
        growth = view.future_blocks(req) - view.blocks_for(req.num_tokens)
        return Tier.GPU if growth <= view.gpu_free_blocks else Tier.CPU


class CostedPolicy(Policy):
    def __init__(self, cost: CostModel) -> None:
        super().__init__(cost)
        self.cost: CostModel = cost
        self._base: tuple[int, tuple[float, list[float], float]] = (-1, (0.0, [], 0.0))

    def cpu_work(self, view: SchedulerView, admitted: list[Request]) -> Work:
        """The load the tiers will carry on average: each row at its expected context;
        CPU rows, and GPU rows beyond what the GPU tier holds at those contexts (they
        are the ones that will move there), on the CPU. The running part is summed once
        per iteration (admission asks several times)."""
        capacity = view.config.num_gpu_blocks * view.config.block_size
        if self._base[0] != view.step_id:
            self._base = (view.step_id, load_of(view.running, capacity))
        gctx, cctx, held = self._base[1]
        more_g, more_c, _ = load_of(admitted, capacity, held)
        rows = len(view.running) + len(admitted)
        cpu = (*cctx, *more_c)
        return Work(rows, rows, gctx + more_g, cpu, rows - len(cpu))


def load_of(
    reqs: Sequence[Request], gpu_capacity: int, held: float = 0.0
) -> tuple[float, list[float], float]:
    """(GPU context, CPU contexts, GPU tokens held) of these requests at their expected
    contexts, oldest first; `held`: what the GPU tier holds already."""
    gctx, cctx = 0.0, []
    cpu = Tier.CPU
    for r in reqs:
        e = mean_context(r)
        if r.tier is cpu or r.target_tier is cpu or held + e > gpu_capacity:
            cctx.append(e)
        else:
            gctx += e
            held += e
    return gctx, cctx, held
