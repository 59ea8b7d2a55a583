"""The simulator against the real stack, on this machine: is it trusted?

Starts the stack on the default tiny model (GPU tier capped, a CPU tier), measures
its profile there (`apexctl profile`), runs `apexctl bench` for each policy at a few
rates, then runs the simulator on that measured profile with the same workload, scale,
arrivals (same seed) and rates. Prints and saves throughput and p50 TPOT side by side
with the simulator's error; the issue's bar is 10% on throughput and 15% on p50 TPOT.

Twice: the profile alone, and with a loop cost (`LoopCost`: the step scaled by the
median measured / predicted ratio, plus the daemon's gap between steps, a + b x rows)
fitted from the trace of the *other* rate's run of the same policy, so no run is
predicted from its own measurements.

On a machine without a GPU both executors, the daemon and the benchmark client share
its cores, so what is compared is the simulator's model of *this* machine.

    python -m benchmarks.sim_vs_stack [--rates 2,4] [--requests 48]
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import pairwise
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, cpu_name, save
from benchmarks.measured_stack import apexctl
from launcher.stack import ensure_default_model, local_stack
from scheduler.costs.profile import load_profile
from scheduler.sim.simulator import WORKLOADS, LoopCost, simulate

POLICIES = ("gpu-only", "neo", "apex")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", default="chat")
    ap.add_argument("--rates", default="2,4")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--gpu-blocks", type=int, default=48)
    ap.add_argument("--cpu-kv-gb", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_vs_stack.json")
    args = ap.parse_args()
    model = ensure_default_model()
    sched = ["--gpu-blocks", str(args.gpu_blocks), "--cpu-kv-gb", str(args.cpu_kv_gb)]
    with local_stack(model, scheduler_args=sched, cpu_executor_args=[]) as stack, open("/dev/null"):
        prof_path = args.out.with_name("sim_vs_stack_profile.json")
        apexctl(stack.address, "profile", "--out", str(prof_path))
        bench_path = args.out.with_name("sim_vs_stack_bench.json")
        measured, loops = [], {}
        # One run at a time, its trace read at once: the daemon keeps the last 8,192
        # iterations, fewer than a whole sweep takes.
        for policy in POLICIES:
            for rate in args.rates.split(","):
                bench = ["bench", "--workload", args.workload, "--requests", str(args.requests)]
                bench += ["--policies", policy, "--rate", rate, "--scale", str(args.scale)]
                apexctl(stack.address, *bench, "--out", str(bench_path))
                m = json.loads(bench_path.read_text())["results"][0]
                trace = json.loads(apexctl(stack.address, "trace", "--limit", "0", "--json"))
                loops[(m["policy"], m["rate"])] = fit_loop(trace, m)
                measured.append(m)
        bench_path.write_text(json.dumps({"measured": True, "results": measured}, indent=1))
        bench_path.with_suffix(".png").unlink(missing_ok=True)  # one run's, not the sweep's
    profile = load_profile(str(prof_path))
    rows = []
    print(
        f"{'policy':8} {'rate':>5} {'simulated on':13} {'tok/s stack/sim':>16} {'err':>6} "
        f"{'TPOT p50 ms':>16} {'err':>6}"
    )
    for m in measured:
        other = [x for x in measured if x["policy"] == m["policy"] and x["rate"] != m["rate"]]
        loop = loops[(other[0]["policy"], other[0]["rate"])] if other else None
        row = {"policy": m["policy"], "rate": m["rate"], "loop_fitted_on_rate": None}
        for label, cost in (("profile", None), ("profile+loop", loop)):
            if label == "profile+loop" and cost is None:
                continue
            r = simulate(
                profile,
                WORKLOADS[args.workload],
                m["policy"],
                n=args.requests,
                rate=m["rate"],
                seed=0,
                steady=True,
                scale=args.scale,
                loop=cost,
            )
            thr_err = r.throughput / m["throughput"] - 1
            tpot_err = r.tpot_p50 / m["tpot_p50"] - 1
            row[label] = {
                "sim_throughput": r.throughput,
                "throughput_error": thr_err,
                "sim_tpot_p50": r.tpot_p50,
                "tpot_p50_error": tpot_err,
                "sim_ttft_p50": r.ttft_p50,
            }
            print(
                f"{m['policy']:8} {m['rate']:5g} {label:13} {m['throughput']:7.1f}/"
                f"{r.throughput:<8.1f} {thr_err:+6.0%} {1e3 * m['tpot_p50']:7.1f}/"
                f"{1e3 * r.tpot_p50:<8.1f} {tpot_err:+6.0%}"
            )
        row.update(
            stack_throughput=m["throughput"],
            stack_tpot_p50=m["tpot_p50"],
            stack_ttft_p50=m["ttft_p50"],
            loop=loop.__dict__ if loop else None,
            loop_fitted_on_rate=other[0]["rate"] if other else None,
        )
        rows.append(row)
    save(
        {
            "what": "simulator (on the profile measured in the same run) against apexctl bench",
            "machine": {"cpu": cpu_name(), "device": "cpu (no GPU)"},
            "workload": args.workload,
            "scale": args.scale,
            "requests": args.requests,
            "targets": {"throughput_error": 0.10, "tpot_p50_error": 0.15},
            "rows": rows,
        },
        args.out,
    )


def fit_loop(trace: list[dict], run: dict) -> LoopCost:
    """From one bench run's iterations: the median of measured over predicted step
    time, and the gap between one step's end and the next step's (the daemon's loop)
    fitted as a + b x rows by least squares; idle gaps (no work queued) left out."""
    for t in trace:  # proto JSON writes 64-bit integers as strings
        t["step_id"] = int(t["step_id"])
    steps = sorted(
        (t for t in trace if run["first_step"] <= t["step_id"] <= run["last_step"]),
        key=lambda t: t["step_id"],
    )
    ratios = [
        t["measured_ms"] / t["profile_uncalibrated_ms"]
        for t in steps
        if t["profile_uncalibrated_ms"] > 0 and t["measured_ms"] > 0
    ]
    gaps, rows = [], []
    for a, b in pairwise(steps):
        gap = b["wall_time"] - b["measured_ms"] / 1e3 - a["wall_time"]
        if b["step_id"] == a["step_id"] + 1 and 0 <= gap < 0.05:
            gaps.append(gap)
            rows.append(b["gpu_rows"] + b["cpu_rows"] + (1 if b["prefill_tokens"] else 0))
    if len(gaps) < 2 or len(set(rows)) < 2:
        return LoopCost(statistics.median(ratios) if ratios else 1.0)
    b, a = np.polyfit(rows, gaps, 1)
    return LoopCost(statistics.median(ratios) if ratios else 1.0, max(0.0, a), max(0.0, b))


if __name__ == "__main__":
    main()
