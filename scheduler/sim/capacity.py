"""Capacity at a latency SLO: the highest Poisson arrival rate at which a card keeps p99
TTFT and p99 TPOT within bounds, found on the simulator's virtual clock.

This is what an operator sizes a fleet with: a card that holds `c` requests/s at the
SLO needs ceil(R / c) replicas for R requests/s behind a router that splits arrivals
evenly (a random split of Poisson arrivals is Poisson at R / N per replica; a
load-aware router does no worse). Simulation: the figures are as good as the profile.

Each rate is a steady-state run: the first and last 10% of requests by arrival are
left out of the latency percentiles (the queue filling and draining).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.costs.profile import Profile
from scheduler.sim.simulator import Workload, simulate

FLOOR_HALVINGS = 7


@dataclass(frozen=True)
class Slo:
    ttft_p99_s: float
    tpot_p99_s: float

    def __post_init__(self) -> None:
        if not self.ttft_p99_s > 0 or not self.tpot_p99_s > 0:
            raise ValueError(f"SLO bounds must be > 0, got {self}")


@dataclass(frozen=True)
class RatePoint:
    rate: float
    throughput: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float

    def meets(self, slo: Slo) -> bool:
        return self.ttft_p99 <= slo.ttft_p99_s and self.tpot_p99 <= slo.tpot_p99_s


@dataclass(frozen=True)
class Capacity:
    policy: str
    rate: float  # requests/s held at the SLO (0: not even the lowest rate tried)
    points: tuple[RatePoint, ...]  # every rate run, ascending

    def replicas_for(self, target_rate: float) -> int | None:
        """Cards (one stack each) that hold `target_rate` at the SLO; None: none do."""
        return math.ceil(target_rate / self.rate) if self.rate > 0 else None


def run_at(
    profile: Profile | MeasuredProfile,
    workload: Workload,
    policy: str,
    rate: float,
    n: int,
    seed: int,
    tpot_slo_s: float | None,
) -> RatePoint:
    r = simulate(
        profile, workload, policy, n=n, rate=rate, seed=seed, tpot_slo_s=tpot_slo_s, steady=True
    )
    return RatePoint(rate, r.throughput, r.ttft_p50, r.ttft_p99, r.tpot_p50, r.tpot_p99)


def capacity(
    profile: Profile | MeasuredProfile,
    workload: Workload,
    policy: str,
    slo: Slo,
    n: int = 300,
    seed: int = 0,
    start_rate: float = 0.01,
    refine: int = 4,
) -> Capacity:
    """From `start_rate`, halve until the SLO holds (capacity 0 if it never does), then
    double until it breaks, then bisect `refine` times between the last rate that held
    and the first that did not. apex gets the SLO's TPOT bound as its own."""
    tpot = slo.tpot_p99_s if policy == "apex" else None
    runs: dict[float, RatePoint] = {}

    def at(rate: float) -> RatePoint:
        if rate not in runs:
            runs[rate] = run_at(profile, workload, policy, rate, n, seed, tpot)
        return runs[rate]

    lo, hi = 0.0, start_rate
    for _ in range(FLOOR_HALVINGS):  # below the start rate: down to start / 64
        if at(hi).meets(slo):
            lo, hi = hi, hi * 2
            break
        hi /= 2
    else:
        return Capacity(policy, 0.0, tuple(runs[r] for r in sorted(runs)))
    while at(hi).meets(slo):
        lo, hi = hi, hi * 2
        if hi > 1e4:  # a profile with no bound: say so rather than loop
            raise ValueError(f"{policy} meets the SLO past {lo:g} requests/s: check the profile")
    for _ in range(refine if lo > 0 else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid).meets(slo) else (lo, mid)
    return Capacity(policy, lo, tuple(runs[r] for r in sorted(runs)))
