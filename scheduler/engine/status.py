"""The engine as the API edge and the metrics see it: typed snapshots, read at once.

`Engine.status()` and `Engine.requests()` build these; the gRPC servicers and the
Prometheus collector translate them into their own shapes and never read the scheduler's
lists or the engine's counters themselves.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from scheduler.types import Status, Tier


@dataclass
class EngineStats:
    """Counters the engine keeps as it runs (only it writes them)."""

    iterations: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0
    rejected_requests: int = 0
    started: float = field(default_factory=time.monotonic)
    window: deque = field(default_factory=lambda: deque(maxlen=4096))  # (time, tokens)
    last_strategy: str = "none"
    by_strategy: dict[str, int] = field(default_factory=dict)
    recoveries: int = 0

    def tokens_per_s(self, horizon: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self.window if now - t <= horizon]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span


@dataclass(frozen=True)
class TierStatus:
    tier: str  # "gpu" | "cpu"
    blocks_total: int
    blocks_used: int
    block_size: int


@dataclass(frozen=True)
class PolicyStatus:
    name: str
    tpot_slo_s: float | None
    ttft_slo_s: float | None
    profile: str  # the loaded profile's name; empty: none
    description: str
    calibration: float  # measured / profile-predicted step time, recent median
    tpot_from_profile: bool  # the TPOT bound is the profile's default, calibrated


@dataclass(frozen=True)
class EngineStatus:
    num_waiting: int
    num_running: int
    num_swapped: int
    tiers: tuple[TierStatus, ...]
    iterations: int
    generated_tokens: int
    preemptions: int
    swap_outs: int
    swap_ins: int
    prompt_tokens_prefilled: int
    prompt_tokens_shared: int
    tokens_per_s: float
    uptime_s: float
    last_strategy: str
    by_strategy: dict[str, int]
    finished_requests: int
    rejected_requests: int
    max_queue: int
    placement: str
    draining: bool
    recoveries: int
    # The one step-time error: of the prediction the engine made for each step (the
    # policy's calibrated profile when one is loaded, else the online fit).
    prediction_mape: float
    prediction_samples: int
    policy: PolicyStatus


@dataclass(frozen=True)
class RequestSnapshot:
    request_id: str
    status: Status
    tier: Tier
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    blocks: int  # on `tier`
    age_s: float
    preemptions: int
    migrations: int
