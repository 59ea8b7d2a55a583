"""Capacity at a latency SLO: the highest Poisson arrival rate at which a card keeps p99
TTFT and p99 TPOT within bounds, found on the simulator's virtual clock.

This is what an operator sizes a fleet with: a card that holds `c` requests/s at the
SLO needs ceil(R / c) replicas for R requests/s behind a router that splits arrivals
evenly (a random split of Poisson arrivals is Poisson at R / N per replica; a
load-aware router does no worse). Simulation: the figures are as good as the profile.

Each rate is a steady-state run long enough to mean something: 30 simulated minutes of
arrivals (at least the floor asked for, at most 1,000 requests), the first and last 10%
of requests by arrival left out of the statistics (the queue filling and draining).
Where a p99 lands within 10% of its bound, a second seed runs and the two runs'
requests are pooled: one seed's tail is too noisy to call the answer.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.costs.profile import Profile
from scheduler.sim.simulator import SimResult, Workload, pct, simulate

FLOOR_HALVINGS = 7
MAX_REQUESTS = 1000
CLOSE = 0.10  # a p99 this near its bound (relative) gets a second seed


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
    requests: int  # arrivals per seed
    seeds: int  # 2 where the answer was close
    throughput: float  # generated tokens/s, mean over the seeds
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    attainment: float  # fraction of requests counted that met both bounds themselves

    def meets(self, slo: Slo) -> bool:
        return self.ttft_p99 <= slo.ttft_p99_s and self.tpot_p99 <= slo.tpot_p99_s

    def close_to(self, slo: Slo) -> bool:
        return any(
            abs(got / bound - 1) <= CLOSE
            for got, bound in ((self.ttft_p99, slo.ttft_p99_s), (self.tpot_p99, slo.tpot_p99_s))
        )


def rate_point(rate: float, n: int, runs: list[SimResult], slo: Slo) -> RatePoint:
    """The runs' requests pooled into one set of percentiles."""
    lat = [x for r in runs for x in r.latencies]
    ttft, tpot = [a for a, _ in lat], [b for _, b in lat if b > 0]
    met = sum(a <= slo.ttft_p99_s and b <= slo.tpot_p99_s for a, b in lat)
    return RatePoint(
        rate,
        n,
        len(runs),
        statistics.fmean(r.throughput for r in runs),
        pct(ttft, 50),
        pct(ttft, 99),
        pct(tpot, 50),
        pct(tpot, 99),
        met / len(lat) if lat else float("nan"),
    )


@dataclass(frozen=True)
class Capacity:
    policy: str
    rate: float  # requests/s held at the SLO (0: not even the lowest rate tried)
    points: tuple[RatePoint, ...]  # every rate run, ascending

    def replicas_for(self, target_rate: float) -> int | None:
        """Cards (one stack each) that hold `target_rate` at the SLO; None: none do."""
        return math.ceil(target_rate / self.rate) if self.rate > 0 else None


def requests_at(rate: float, floor: int, minutes: float) -> int:
    """Arrivals for one run: `minutes` of them at `rate`, within [floor, 1000]."""
    return max(floor, min(MAX_REQUESTS, round(rate * 60 * minutes)))


def run_at(
    profile: Profile | MeasuredProfile,
    workload: Workload,
    policy: str,
    rate: float,
    slo: Slo,
    n: int = 100,
    seed: int = 0,
    minutes: float = 30.0,
    sims: dict[tuple, SimResult] | None = None,
) -> RatePoint:
    """One rate's steady-state point; apex gets the SLO's bounds as its own. `sims`
    keeps the runs for other SLOs on the same profile and workload (only apex's depend
    on the SLO)."""
    tpot, ttft = (slo.tpot_p99_s, slo.ttft_p99_s) if policy == "apex" else (None, None)
    count = requests_at(rate, n, minutes)
    sims = {} if sims is None else sims

    def once(s: int) -> SimResult:
        key = (policy, rate, count, s, tpot, ttft)
        if key not in sims:
            sims[key] = simulate(
                profile,
                workload,
                policy,
                n=count,
                rate=rate,
                seed=s,
                tpot_slo_s=tpot,
                ttft_slo_s=ttft,
                steady=True,
            )
        return sims[key]

    runs = [once(seed)]
    point = rate_point(rate, count, runs, slo)
    if point.close_to(slo):
        runs.append(once(seed + 1))
        point = rate_point(rate, count, runs, slo)
    return point


def capacity(
    profile: Profile | MeasuredProfile,
    workload: Workload,
    policy: str,
    slo: Slo,
    n: int = 100,
    seed: int = 0,
    start_rate: float = 0.01,
    refine: int = 4,
    minutes: float = 30.0,
    sims: dict[tuple, SimResult] | None = None,
) -> Capacity:
    """From `start_rate`, halve until the SLO holds (capacity 0 if it never does), then
    double until it breaks, then bisect `refine` times between the last rate that held
    and the first that did not. `n` is the floor of requests per run; `sims` (see
    `run_at`) is filled in as the search goes."""
    runs: dict[float, RatePoint] = {}

    def at(rate: float) -> RatePoint:
        if rate not in runs:
            runs[rate] = run_at(profile, workload, policy, rate, slo, n, seed, minutes, sims)
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
