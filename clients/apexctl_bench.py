"""apexctl bench: online load over gRPC, each policy in turn, side by side in one run.

The same Poisson arrivals and lengths (the simulator's workloads, scaled to the model)
are replayed once per policy (and per rate, with `--rates`); between runs the policy is
switched live through the admin API and the server is let go idle. Throughput is
generated tokens/s over the steady part (between the 10th and 90th percentile of finish
times); TTFT and TPOT are per request, p50 and p99, the first and last 10% of requests
by arrival left out (as the simulator does). With an SLO (`--slo-ttft-s`,
`--slo-tpot-ms`) each run reports its attainment, apex takes the SLO's TPOT as its
bound, and each policy's capacity is the highest rate tried whose p99s meet it. Writes
JSON and a PNG (the latency-throughput curves when several rates ran).
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
    b.add_argument("--rates", help="several rates, comma-separated: a latency-throughput sweep")
    b.add_argument("--slo-ttft-s", type=float, default=0.0, help="p99 TTFT bound of an SLO")
    b.add_argument("--slo-tpot-ms", type=float, default=0.0, help="p99 TPOT bound of an SLO")
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
    rate: float
    throughput: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    requests: int
    errors: int
    strategies: dict[str, int]
    attainment: float  # share of the counted requests within both SLO bounds (nan: no SLO)
    first_step: int  # the daemon's iterations this run covered (its trace's step ids)
    last_step: int
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


def summarise(
    policy: str,
    rate: float,
    done: list[Done],
    client: ApexClient,
    since: int,
    slo: tuple[float, float] | None,
) -> PolicyResult:
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

    by_arrival = sorted(ok, key=lambda d: d.arrival)
    cut = len(by_arrival) // 10
    steady = by_arrival[cut : len(by_arrival) - cut]
    ttft = [d.first - d.arrival for d in steady]
    tpot = [(d.end - d.first) / (d.tokens - 1) for d in steady if d.tokens > 1]
    attained = float("nan")
    if slo is not None and steady:
        met = sum(
            d.first - d.arrival <= slo[0] and (d.end - d.first) / max(1, d.tokens - 1) <= slo[1]
            for d in steady
        )
        attained = met / len(steady)
    return PolicyResult(
        policy=policy,
        rate=rate,
        throughput=tokens / (hi - lo) if hi > lo else float("nan"),
        ttft_p50=pct(ttft, 50),
        ttft_p99=pct(ttft, 99),
        tpot_p50=pct(tpot, 50),
        tpot_p99=pct(tpot, 99),
        requests=len(done),
        errors=len(done) - len(ok),
        strategies=strategies,
        attainment=attained,
        first_step=since + 1,
        last_step=max((t.step_id for t in trace), default=since),
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
    try:
        rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    except ValueError:
        raise SystemExit(f"apexctl bench: --rates must be numbers, got {args.rates!r}") from None
    if args.requests < 2 or min(rates) <= 0 or args.scale <= 0:
        raise SystemExit("apexctl bench: --requests >= 2, rates > 0 and --scale > 0")
    if (
        bool(args.slo_ttft_s) != bool(args.slo_tpot_ms)
        or min(args.slo_ttft_s, args.slo_tpot_ms) < 0
    ):
        raise SystemExit("apexctl bench: an SLO needs both --slo-ttft-s and --slo-tpot-ms (> 0)")
    slo = (args.slo_ttft_s, args.slo_tpot_ms / 1e3) if args.slo_ttft_s else None
    info = client.model_info()
    before = client.policy()
    results: list[PolicyResult] = []
    try:
        for name in args.policies.split(","):
            for rate in sorted(rates):
                arrivals = requests(
                    WORKLOADS[args.workload],
                    args.requests,
                    rate,
                    info.max_model_len,
                    args.seed,
                    args.scale,
                )
                wait_idle(client)
                client.policy(name, args.tpot_slo_ms or args.slo_tpot_ms, args.slo_ttft_s)
                since = max((t.step_id for t in client.trace(1)), default=0)
                print(f"{name}: {args.requests} requests at {rate}/s ...", file=sys.stderr)
                done = run_policy(client, arrivals, info.vocab_size, args.seed)
                results.append(summarise(name, rate, done, client, since, slo))
    finally:
        wait_idle(client)
        # a bound that was the profile's default goes back as one (0), not as a figure
        tpot_ms = 0.0 if before.tpot_from_profile else before.tpot_slo_ms
        client.policy(before.name, tpot_ms, before.ttft_slo_s)
    report = {
        "measured": True,
        "device": info.device,
        "model": info.model,
        "dtype": info.dtype,
        "workload": args.workload,
        "scale": args.scale,
        "requests": args.requests,
        "rates": sorted(rates),
        "results": [asdict(r) for r in results],
    }
    if slo is not None:
        report["slo"] = {"ttft_p99_s": slo[0], "tpot_p99_s": slo[1]}
        report["capacity"] = capacities(results, slo)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(results)
    if slo is not None:
        for policy, rate in report["capacity"].items():
            print(f"{policy}: {rate:g} requests/s at the SLO (the highest rate tried that met it)")
    png = args.out.with_suffix(".png")
    title = f"{info.model} on {info.device}, {args.workload}"
    if len(rates) > 1:
        from clients.capacity_plot import plot_curves

        curves: dict[str, list[PolicyResult]] = {}
        for r in results:
            curves.setdefault(r.policy, []).append(r)
        bounds = slo or (math.inf, math.inf)
        drawn = plot_curves(curves, report.get("capacity", {}), bounds, png, title)
    else:
        drawn = plot(results, png, title)
    if drawn:
        print(f"wrote {args.out} and {png}")
    return 1 if any(r.errors for r in results) else 0


def capacities(results: list[PolicyResult], slo: tuple[float, float]) -> dict[str, float]:
    """Per policy, the highest rate of the sweep below which every rate run met the SLO
    (p99 TTFT and p99 TPOT, no errors); 0 where the lowest did not."""
    out: dict[str, float] = {}
    for policy in dict.fromkeys(r.policy for r in results):
        out[policy] = 0.0
        for r in sorted((r for r in results if r.policy == policy), key=lambda r: r.rate):
            if r.errors or r.ttft_p99 > slo[0] or r.tpot_p99 > slo[1]:
                break
            out[policy] = r.rate
    return out


def print_table(results: list[PolicyResult]) -> None:
    """ratio: throughput against the first policy's at the same rate."""
    first = {}
    for r in results:
        first.setdefault(r.rate, r.throughput)
    print(
        f"{'policy':9} {'rate':>6} {'tok/s':>8} {'ratio':>6} {'TTFT p50/p99 s':>16} "
        f"{'TPOT p50/p99 ms':>17} {'attained':>8} {'profile err':>11} errors  strategies"
    )
    for r in results:
        print(
            f"{r.policy:9} {r.rate:6.3g} {r.throughput:8.1f} {r.throughput / first[r.rate]:6.2f} "
            f"{r.ttft_p50:7.2f}/{r.ttft_p99:<8.2f} {r.tpot_p50 * 1e3:7.1f}/{r.tpot_p99 * 1e3:<9.1f}"
            f" {r.attainment:8.1%} {100 * r.profile_mape:10.1f}% {r.errors:6}  {r.strategies}"
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
