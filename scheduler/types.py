"""The types every layer of the daemon shares: the leaf of its import graph.

A request as the scheduler tracks it (its tokens, its cache blocks, its fate), its
sampling settings, and the messages that cross from one layer to the next: the plan of
one iteration (core -> engine -> executors), a policy's decision (policies -> core),
what an executor step returns (executors -> engine) and the failure codes the engine
ends a request with (engine -> API edge, which maps them onto its wire status). Nothing
here imports another module of the project, and nothing here does I/O.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class FinishReason(enum.IntEnum):
    # Values mirror apex.v1.FinishReason so they cross the wire unchanged.
    LENGTH = 1
    EOS = 2
    STOP_TOKEN = 3
    STOP_STRING = 4
    ABORTED = 5


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"  # KV parked on the CPU tier, not decoding (placement gpu)
    FINISHED = "finished"


class Tier(enum.Enum):
    GPU = "gpu"
    CPU = "cpu"


class Strategy(enum.Enum):
    GPU_ONLY = "gpu-only"
    OVERLAP = "overlap"
    PIPELINE = "pipeline"


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    include_stop_str: bool = False  # the matched stop string stays in the text
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; N: the chosen token's and the top N
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0  # before it, EOS and stop tokens are banned and stops not matched

    # Whether the executor needs the tokens so far (a penalty counts them). Set once
    # here, not a property: the step message asks for every row of every step.
    penalised: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # User input is validated (with field names) before this is built; these are
        # the invariants the engine relies on.
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens], got {self.min_tokens}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        penalised = bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )
        object.__setattr__(self, "penalised", penalised)


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingConfig
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    tier: Tier = Tier.GPU  # where the KV (block_table) lives; prefill is always on the GPU
    target_tier: Tier | None = None  # where placement wants it; None: wherever it is
    pinned: bool = False  # target set by an operator: automatic moves leave it alone
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    finish_reason: FinishReason | None = None
    matched_stop: str = ""
    preemptions: int = 0
    migrations: int = 0
    failed_steps: int = 0  # executor steps that carried it and failed
    first_token_time: float | None = None
    finish_time: float | None = None
    # The samples of one prompt (`n` > 1), this one included, in one list they share:
    # a sample admitted after another one's prefill holds that one's prompt blocks.
    siblings: list[Request] | None = field(default=None, repr=False, compare=False)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def tokens_from(self, start: int) -> list[int]:
        """all_ids[start:] without building all_ids (a decode step needs one token)."""
        n = len(self.prompt_ids)
        if start >= n:
            return self.output_ids[start - n :]
        return self.prompt_ids[start:] + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining_tokens(self) -> int:
        return self.sampling.max_tokens - len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(slots=True, eq=False)
class SeqPlan:
    """One row of a step. Read-only by convention, not frozen: the scheduler makes one
    per running request every iteration, and a frozen dataclass costs 1.2 us to build
    against 0.5 (0.2 ms a step at 256 rows). Compared by identity."""

    request: Request
    token_ids: list[int]  # what to feed this iteration
    start_pos: int  # position of token_ids[0]
    tier: Tier
    block_table: list[int]
    banned: tuple[int, ...] = ()  # tokens the draw must not take (min_tokens not reached)

    @property
    def is_prefill(self) -> bool:
        return len(self.token_ids) > 1

    @property
    def draws(self) -> bool:
        """Whether its sampled token is kept: false for a prompt chunk that is not the
        last (read before the plan's results are applied)."""
        return self.start_pos + len(self.token_ids) >= self.request.num_tokens


@dataclass(frozen=True)
class Decision:
    """A policy's answer for one iteration: how its rows run, and what that will take."""

    strategy: Strategy
    pipeline_rows: int  # CPU rows in sub-batch B1 (the first CPU rows in plan order)
    predicted_s: float


@dataclass(frozen=True)
class StepPlan:
    step_id: int
    seqs: list[SeqPlan]
    preempted: list[Request]
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu block, gpu block)
    strategy: Strategy = Strategy.GPU_ONLY
    pipeline_rows: int = 0  # PIPELINE: CPU rows in sub-batch B1, the first in plan order
    predicted_s: float = float("nan")  # the policy's cost model, calibrated; NaN: none
    model_s: float = float("nan")  # the same, uncalibrated

    @property
    def num_prefill_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs if s.is_prefill)

    @property
    def num_cpu_rows(self) -> int:
        return sum(1 for s in self.seqs if s.tier is Tier.CPU)


@dataclass(frozen=True)
class TokenLogprob:
    """log_softmax of the raw logits at the token drawn, and the N most likely."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True)
class StepResult:
    """What one executor step gives back: a sampled token per sequence, in plan order,
    and its log-probabilities where the request asked for them."""

    next_tokens: list[int]
    logprobs: list[TokenLogprob | None] | None = None


class ErrorCode(enum.Enum):
    """Why the engine ended a request without its output; the API edge maps each onto
    its own wire status (the names are gRPC's)."""

    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


class ExecutorError(Exception):
    """An executor step or set-up call failed; `code` names the status it failed with."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
