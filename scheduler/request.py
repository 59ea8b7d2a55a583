"""A request as the scheduler tracks it: its tokens, its cache blocks and its fate."""

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


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False

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
    first_token_time: float | None = None
    finish_time: float | None = None

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
