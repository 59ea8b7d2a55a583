"""The real scheduler stepping a virtual clock driven by a profile: no executors.

Policies are compared here for hardware we do not have (T4, A10). Everything it prints
is a simulation and says so; measured comparisons come from `apexctl bench` on a GPU.
Arrivals are Poisson; every request generates exactly its output length (EOS ignored).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field

from scheduler.core.config import DEFAULT_BATCHED_TOKENS, SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.costs.profile import Profile, step_time
from scheduler.policies import POLICIES, make_policy
from scheduler.types import Request, SamplingConfig

BLOCK = 16


@dataclass(frozen=True)
class Workload:
    name: str
    prompt: tuple[int, int]  # uniform range of prompt tokens
    output: tuple[int, int]  # uniform range of output tokens
    jitter: float = 0.0  # +- fraction applied on top (NEO's synthetic: 10%)


WORKLOADS = {
    w.name: w
    for w in (
        Workload("chat", (50, 200), (256, 2048)),  # decode-heavy chat
        Workload("cot", (100, 300), (1536, 4096)),  # long chain-of-thought outputs
        Workload("neo", (1000, 1000), (50, 400), jitter=0.1),  # NEO's synthetic
    )
}


@dataclass(frozen=True)
class LoopCost:
    """What a real daemon's iteration costs beyond the profile's step. The step itself
    (what the engine times around the executor call, and calibrates against): the
    profile's step scaled (a machine busier than when the profile was measured), plus
    a cost per row and per CPU row. Then the host-side gap before the next step
    (scheduling, bookkeeping, streaming): a fixed part and a part per row. Where the
    executors share the host's cores with the daemon and its clients (a machine
    without a GPU) their steps slow with the host work each row brings, and CPU rows
    run both executors at once, which the profile, timing each alone, does not see.
    Fitted from live runs' traces (benchmarks/sim_vs_stack.py); none by default."""

    scale: float = 1.0
    per_step_s: float = 0.0  # the gap's fixed part
    per_row_s: float = 0.0  # the step's, per row
    per_cpu_row_s: float = 0.0  # the step's, per CPU row
    gap_per_row_s: float = 0.0  # the gap's, per row

    def __post_init__(self) -> None:
        times = (self.per_step_s, self.per_row_s, self.per_cpu_row_s, self.gap_per_row_s)
        if not self.scale > 0 or min(times) < 0:
            raise ValueError(f"a loop cost needs scale > 0 and times >= 0, got {self}")

    def step_s(self, step_s: float, rows: int, cpu_rows: int = 0) -> float:
        """The step as the engine measures it."""
        return self.scale * step_s + self.per_row_s * rows + self.per_cpu_row_s * cpu_rows

    def gap_s(self, rows: int) -> float:
        return self.per_step_s + self.gap_per_row_s * rows

    def of(self, step_s: float, rows: int, cpu_rows: int = 0) -> float:
        """The whole iteration: the step and the gap before the next."""
        return self.step_s(step_s, rows, cpu_rows) + self.gap_s(rows)


@dataclass
class SimResult:
    policy: str
    throughput: float  # generated tokens/s over the steady part
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    preemptions: int
    migrations: int
    iterations: int
    mean_batch: float
    decision_ms_p99: float  # scheduler.schedule() wall time, this machine
    strategies: dict[str, int]  # iterations run with each strategy
    # (TTFT s, TPOT s) of each request counted, for SLO attainment and pooling seeds
    latencies: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    calibration: float = 1.0  # the policy's measured/profile step ratio at the end

    def summary(self) -> dict:
        """The figures, without the per-request latencies."""
        return {k: v for k, v in asdict(self).items() if k != "latencies"}


def requests(workload: Workload, n: int, rate: float, max_len: int, seed: int, scale: float = 1.0):
    """(arrival s, prompt tokens, output tokens, id) of n Poisson arrivals; `scale`
    shrinks the lengths for small models (the online benchmark on a CPU)."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        p = rng.randint(*workload.prompt)
        o = rng.randint(*workload.output)
        if workload.jitter:
            p = round(p * rng.uniform(1 - workload.jitter, 1 + workload.jitter))
            o = round(o * rng.uniform(1 - workload.jitter, 1 + workload.jitter))
        p, o = max(1, round(p * scale)), max(1, round(o * scale))
        p = min(p, max_len - 2)
        o = max(1, min(o, max_len - p))
        out.append((t, p, o, f"r{i}"))
    return out


def simulate(
    profile: Profile | MeasuredProfile,
    workload: Workload,
    policy: str,
    n: int = 200,
    rate: float = 8.0,
    seed: int = 0,
    tpot_slo_s: float | None = None,
    steady: bool = False,
    scale: float = 1.0,
    loop: LoopCost | None = None,
    ttft_slo_s: float | None = None,
    prefill_chunk: int | None = DEFAULT_BATCHED_TOKENS,
) -> SimResult:
    """Runs `n` arrivals to completion. steady: latency percentiles leave out the first
    and last 10% of requests by arrival (the queue filling and draining). scale: the
    lengths shrunk as `apexctl bench --scale` shrinks them (same arrivals, same seed).
    loop: the daemon's own cost per iteration on top of the profile's step. The bounds
    are apex's. prefill_chunk: tokens an iteration, as the daemon's
    --max-num-batched-tokens (its default); None: unchunked, each prompt whole."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    gpu_blocks = profile.gpu_kv_capacity_tokens // BLOCK
    max_len = min(gpu_blocks * BLOCK, 8192)
    # gpu-only gets the same host memory, as swap space for preempted requests.
    cpu_blocks = profile.cpu_kv_capacity_tokens // BLOCK
    cfg = SchedulerConfig(
        max_model_len=max_len,
        block_size=BLOCK,
        num_gpu_blocks=gpu_blocks,
        max_num_seqs=256,
        max_num_batched_tokens=prefill_chunk or max(4096, max_len),
        chunked_prefill=prefill_chunk is not None,
        max_queue=10**6,
        num_cpu_blocks=cpu_blocks,
        placement="auto",
    )
    now = [0.0]
    sched = Scheduler(
        cfg,
        frozenset(),
        clock=lambda: now[0],
        policy=make_policy(policy, profile, tpot_slo_s, ttft_slo_s),
    )
    pending = requests(workload, n, rate, max_len, seed, scale)
    live: list[Request] = []
    done: list[Request] = []
    steps: list[tuple[float, int]] = []
    decide: list[float] = []
    used: dict[str, int] = {}
    i = 0
    while i < len(pending) or sched.has_work():
        while i < len(pending) and pending[i][0] <= now[0]:
            t, p, o, rid = pending[i]
            req = Request(
                rid,
                [2] * p,
                SamplingConfig(temperature=0.0, max_tokens=o, ignore_eos=True),
                arrival_time=t,
            )
            sched.add(req)
            live.append(req)
            i += 1
        t0 = time.perf_counter()
        plan = sched.schedule()
        decide.append(time.perf_counter() - t0)
        if plan is None:
            now[0] = pending[i][0]
            continue
        step, gap = step_time(profile, plan), 0.0
        if loop is not None:
            step = loop.step_s(step, len(plan.seqs), plan.num_cpu_rows)
            gap = loop.gap_s(len(plan.seqs))
        # the policy calibrates on the steps it sees, as the daemon's engine does: a
        # bound derived from the profile and the predictions scale with the machine
        sched.policy.calibration.observe(plan.model_s, step)
        now[0] += step + gap
        updated = sched.update(plan, [2] * len(plan.seqs))
        steps.append((now[0], len(updated)))
        used[plan.strategy.value] = used.get(plan.strategy.value, 0) + 1
        done.extend(r for r in updated if r.finished)
    if steady:
        by_arrival = sorted(done, key=lambda r: r.arrival_time)
        done = by_arrival[len(by_arrival) // 10 : len(by_arrival) - len(by_arrival) // 10]
    return summarise(policy, done, steps, decide, sched, used)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))] if xs else float("nan")


def summarise(policy, done, steps, decide, sched, used) -> SimResult:
    finish = sorted(r.finish_time for r in done)
    lo, hi = finish[len(finish) // 10], finish[(9 * len(finish)) // 10]  # steady part
    tokens = sum(n for t, n in steps if lo < t <= hi)
    ttft = [r.first_token_time - r.arrival_time for r in done]
    tpot = [tpot_of(r) for r in done if len(r.output_ids) > 1]
    latencies = tuple((r.first_token_time - r.arrival_time, tpot_of(r)) for r in done)
    return SimResult(
        policy=policy,
        throughput=tokens / (hi - lo) if hi > lo else float("nan"),
        ttft_p50=pct(ttft, 50),
        ttft_p99=pct(ttft, 99),
        tpot_p50=pct(tpot, 50),
        tpot_p99=pct(tpot, 99),
        preemptions=sched.num_preemptions,
        migrations=sched.num_swap_outs + sched.num_swap_ins,
        iterations=len(steps),
        mean_batch=statistics.fmean(n for _, n in steps),
        decision_ms_p99=pct(decide, 99) * 1e3,
        strategies=used,
        latencies=latencies,
        calibration=sched.policy.calibration.scale,
    )


def tpot_of(r: Request) -> float:
    """Seconds per output token after the first (0 for a one-token output)."""
    n = len(r.output_ids)
    return (r.finish_time - r.first_token_time) / (n - 1) if n > 1 else 0.0
