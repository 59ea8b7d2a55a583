"""apexctl bench: online load over gRPC, each policy in turn, side by side in one run.

The same Poisson arrivals and lengths (the simulator's workloads, scaled to the model)
are replayed once per policy; between runs the policy is switched live through the
admin API and the server is let go idle. Throughput is generated tokens/s over the
steady part (between the 10th and 90th percentile of finish times); TTFT and TPOT are
per request, p50 and p99. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from clients.apex_client import ApexClient
from clients.cli_output import pyplot


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="online load per policy, side by side (JSON + PNG)")
    b.add_argument("--workload", default="chat", help="chat, cot or neo (as simulate)")
    b.add_argument("--policies", default="gpu-only,neo,apex")
    b.add_argument("--requests", type=int, default=64)
    b.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second")
    b.add_argument("--scale", type=float, default=0.1, help="length scale for small models")
    b.add_argument("--tpot-slo-ms", type=float, default=0.0, help="apex's bound (0: keep)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, default=Path("bench.json"))


@dataclass
class Done:
    arrival: float
    first: float
    end: float
    token_times: list[float]
    tokens: int
    error: str = ""


@dataclass
class PolicyResult:
    policy: str
    throughput: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    requests: int
    errors: int
    strategies: dict[str, int]
    profile_mape: float  # calibrated online, as the policy uses it
    profile_uncalibrated_mape: float
    predictor_mape: float


def one(client: ApexClient, start: float, t: float, prompt: list[int], out: int) -> Done:
    delay = start + t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sent = time.monotonic()
    times: list[float] = []
    try:
        for msg in client.generate_stream(prompt, max_tokens=out, temperature=0.0, ignore_eos=True):
            now = time.monotonic()
            times += [now] * len(msg.token_ids)
    except Exception as e:
        return Done(sent, sent, time.monotonic(), times, len(times), str(e))
    return Done(sent, times[0] if times else sent, time.monotonic(), times, len(times))


def run_policy(client: ApexClient, arrivals, vocab: int, seed: int) -> list[Done]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(p)] for _, p, _, _ in arrivals]
    start = time.monotonic() + 0.2
    with ThreadPoolExecutor(max_workers=len(arrivals)) as pool:
        futs = [
            pool.submit(one, client, start, t, pr, o)
            for (t, _, o, _), pr in zip(arrivals, prompts, strict=True)
        ]
        return [f.result() for f in futs]


def summarise(policy: str, done: list[Done], client: ApexClient, since: int) -> PolicyResult:
    ok = [d for d in done if not d.error]
    finish = sorted(d.end for d in ok)
    lo, hi = finish[len(finish) // 10], finish[(9 * len(finish)) // 10]
    tokens = sum(1 for d in ok for t in d.token_times if lo < t <= hi)
    trace = [t for t in client.trace(0) if t.step_id > since]
    strategies: dict[str, int] = {}
    for t in trace:
        strategies[t.strategy] = strategies.get(t.strategy, 0) + 1
    st = client.status()

    def mape(field: str) -> float:
        errs = [
            abs(getattr(t, field) - t.measured_ms) / t.measured_ms
            for t in trace
            if t.measured_ms > 0 and math.isfinite(getattr(t, field))
        ]
        return statistics.fmean(errs) if errs else float("nan")

    from scheduler.sim.simulator import pct  # the simulator's percentile: same definition

    ttft = [d.first - d.arrival for d in ok]
    tpot = [(d.end - d.first) / (d.tokens - 1) for d in ok if d.tokens > 1]
    return PolicyResult(
        policy=policy,
        throughput=tokens / (hi - lo) if hi > lo else float("nan"),
        ttft_p50=pct(ttft, 50),
        ttft_p99=pct(ttft, 99),
        tpot_p50=pct(tpot, 50),
        tpot_p99=pct(tpot, 99),
        requests=len(done),
        errors=len(done) - len(ok),
        strategies=strategies,
        profile_mape=mape("profile_predicted_ms"),
        profile_uncalibrated_mape=mape("profile_uncalibrated_ms"),
        predictor_mape=st.predictor_mape,
    )


def wait_idle(client: ApexClient, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.status()
        if not st.num_running and not st.num_waiting:
            return
        time.sleep(0.2)
    raise SystemExit("apexctl bench: the server did not go idle")


def cmd_bench(client: ApexClient, args: argparse.Namespace) -> int:
    from scheduler.sim.simulator import WORKLOADS, requests

    if args.workload not in WORKLOADS:
        raise SystemExit(f"apexctl bench: workload must be one of {sorted(WORKLOADS)}")
    if args.requests < 2 or args.rate <= 0 or args.scale <= 0:
        raise SystemExit("apexctl bench: --requests >= 2, --rate > 0 and --scale > 0")
    info = client.model_info()
    arrivals = requests(
        WORKLOADS[args.workload],
        args.requests,
        args.rate,
        info.max_model_len,
        args.seed,
        args.scale,
    )
    before = client.policy()
    results: list[PolicyResult] = []
    try:
        for name in args.policies.split(","):
            wait_idle(client)
            client.policy(name, args.tpot_slo_ms)
            since = max((t.step_id for t in client.trace(1)), default=0)
            print(f"{name}: {args.requests} requests at {args.rate}/s ...", file=sys.stderr)
            done = run_policy(client, arrivals, info.vocab_size, args.seed)
            results.append(summarise(name, done, client, since))
    finally:
        wait_idle(client)
        client.policy(before.name, before.tpot_slo_ms)
    report = {
        "measured": True,
        "device": info.device,
        "model": info.model,
        "dtype": info.dtype,
        "workload": args.workload,
        "scale": args.scale,
        "requests": args.requests,
        "rate": args.rate,
        "results": [asdict(r) for r in results],
    }
    args.out.write_text(json.dumps(report, indent=1))
    print_table(results)
    png = args.out.with_suffix(".png")
    if plot(results, png, f"{info.model} on {info.device}, {args.workload}"):
        print(f"wrote {args.out} and {png}")
    return 1 if any(r.errors for r in results) else 0


def print_table(results: list[PolicyResult]) -> None:
    base = results[0].throughput
    print(
        f"{'policy':9} {'tok/s':>8} {'ratio':>6} {'TTFT p50/p99 s':>16} {'TPOT p50/p99 ms':>17}"
        f" {'profile err':>11} errors  strategies"
    )
    for r in results:
        print(
            f"{r.policy:9} {r.throughput:8.1f} {r.throughput / base:6.2f} "
            f"{r.ttft_p50:7.2f}/{r.ttft_p99:<8.2f} {r.tpot_p50 * 1e3:7.1f}/{r.tpot_p99 * 1e3:<9.1f}"
            f" {100 * r.profile_mape:10.1f}% {r.errors:6}  {r.strategies}"
        )


def plot(results: list[PolicyResult], path: Path, title: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False

    names = [r.policy for r in results]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    ax[0].bar(names, [r.throughput for r in results])
    ax[0].set(title="throughput (steady part)", ylabel="tokens/s")
    for a, field, unit, scale in ((ax[1], "ttft", "s", 1), (ax[2], "tpot", "ms", 1e3)):
        x = range(len(names))
        a.bar(
            [i - 0.2 for i in x],
            [getattr(r, f"{field}_p50") * scale for r in results],
            0.4,
            label="p50",
        )
        a.bar(
            [i + 0.2 for i in x],
            [getattr(r, f"{field}_p99") * scale for r in results],
            0.4,
            label="p99",
        )
        a.set_xticks(list(x), names)
        a.set(title=field.upper(), ylabel=unit)
        a.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
