"""The simulator against the real stack, on this machine: is it trusted?

Starts the stack on the default tiny model (GPU tier capped, a CPU tier), measures
its profile there (`apexctl profile`), runs `apexctl bench` for each policy at a few
rates, then runs the simulator on that measured profile with the same workload, scale,
arrivals (same seed) and rates. Prints and saves throughput and p50 TPOT side by side
with the simulator's error; the issue's bar is 10% on throughput and 15% on p50 TPOT.

Each policy and rate runs `--repeats` times, round by round, so the stack's own
spread between identical runs on this shared machine is reported beside the
simulator's error against their mean. The simulator runs twice: on the profile alone,
and with a loop cost (`LoopCost`: the step scaled, a cost per row and per CPU row on
top, and the daemon's gap between steps) fitted by least squares on the traces of the
*other* policies' and rates' runs, so no run is predicted from its own measurements.
`--resimulate` fits and simulates again on the runs the last measurement saved.

On a machine without a GPU both executors, the daemon and the benchmark client share
its cores, so what is compared is the simulator's model of *this* machine.

    python -m benchmarks.sim_vs_stack [--rates 2,4] [--requests 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
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
    ap.add_argument("--repeats", type=int, default=2, help="runs of each policy and rate")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--gpu-blocks", type=int, default=48)
    ap.add_argument("--cpu-kv-gb", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_vs_stack.json")
    ap.add_argument(
        "--resimulate",
        action="store_true",
        help="no stack: simulate again against the runs and traces the last run saved",
    )
    args = ap.parse_args()
    prof_path = args.out.with_name("sim_vs_stack_profile.json")
    bench_path = args.out.with_name("sim_vs_stack_bench.json")
    if args.resimulate:  # the stack's runs and traces as the last full run saved them
        saved = json.loads(bench_path.read_text())
        measured = saved["results"]
        with gzip.open(traces_path(bench_path), "rt") as f:
            traces = [
                [dict(zip(c, row, strict=True)) for row in zip(*c.values(), strict=True)]
                for c in json.load(f)
            ]
        args.workload, args.requests = saved["workload"], saved["requests"]
        args.scale = saved["scale"]
    else:
        measured, traces = measure(args, prof_path, bench_path)
    profile = load_profile(str(prof_path))
    runs = [(m, samples(t)) for m, t in zip(measured, traces, strict=True)]
    rows = []
    print(
        f"{'policy':8} {'rate':>5} {'simulated on':13} {'tok/s stack/sim':>16} {'err':>6} "
        f"{'TPOT p50 ms':>16} {'err':>6}  stack's own spread (tok/s, TPOT)"
    )
    for key in dict.fromkeys((m["policy"], m["rate"]) for m in measured):
        mine = [m for m in measured if (m["policy"], m["rate"]) == key]
        # fitted on the other policies' and rates' runs, never on this one's
        loop = fit_loop([x for m, x in runs if (m["policy"], m["rate"]) != key])
        stack = {f: statistics.fmean(m[f] for m in mine) for f in ("throughput", "tpot_p50")}
        spread = {f: max(m[f] for m in mine) / min(m[f] for m in mine) - 1 for f in stack}
        row = {"policy": key[0], "rate": key[1], "runs": len(mine)}
        row.update({f"stack_{f}": v for f, v in stack.items()})
        row.update({f"stack_{f}_spread": v for f, v in spread.items()})
        for label, cost in (("profile", None), ("profile+loop", loop)):
            r = simulate(
                profile,
                WORKLOADS[args.workload],
                key[0],
                n=args.requests,
                rate=key[1],
                seed=0,
                steady=True,
                scale=args.scale,
                loop=cost,
            )
            thr_err = r.throughput / stack["throughput"] - 1
            tpot_err = r.tpot_p50 / stack["tpot_p50"] - 1
            row[label] = {
                "sim_throughput": r.throughput,
                "throughput_error": thr_err,
                "sim_tpot_p50": r.tpot_p50,
                "tpot_p50_error": tpot_err,
            }
            print(
                f"{key[0]:8} {key[1]:5g} {label:13} {stack['throughput']:7.1f}/"
                f"{r.throughput:<8.1f} {thr_err:+6.0%} {1e3 * stack['tpot_p50']:7.1f}/"
                f"{1e3 * r.tpot_p50:<8.1f} {tpot_err:+6.0%}  "
                f"{spread['throughput']:.0%}, {spread['tpot_p50']:.0%}"
            )
        row["loop"] = loop.__dict__
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


def measure(args: argparse.Namespace, prof_path: Path, bench_path: Path):
    """The stack's side: its profile, then bench runs (each policy and rate, `repeats`
    times) with the daemon's iteration trace of each. Saves both beside the results."""
    model = ensure_default_model()
    sched = ["--gpu-blocks", str(args.gpu_blocks), "--cpu-kv-gb", str(args.cpu_kv_gb)]
    measured, traces = [], []
    with local_stack(model, scheduler_args=sched, cpu_executor_args=[]) as stack:
        apexctl(stack.address, "profile", "--out", str(prof_path))
        # One run at a time, its trace read at once: the daemon keeps the last 8,192
        # iterations, fewer than a whole sweep takes. Repeats come round by round, so a
        # slow spell of this shared machine lands on one run of each, not on all of one,
        # and each round starts one place further along, so no configuration always
        # runs last (after the daemon has served all the others of its round).
        configs = list(itertools.product(POLICIES, args.rates.split(",")))
        for r in range(args.repeats):
            for policy, rate in configs[r % len(configs) :] + configs[: r % len(configs)]:
                bench = ["bench", "--workload", args.workload, "--requests", str(args.requests)]
                bench += ["--policies", policy, "--rate", rate, "--scale", str(args.scale)]
                apexctl(stack.address, *bench, "--out", str(bench_path))
                measured.append(json.loads(bench_path.read_text())["results"][0])
                trace = json.loads(apexctl(stack.address, "trace", "--limit", "0", "--json"))
                first, last = measured[-1]["first_step"], measured[-1]["last_step"]
                traces.append([t for t in trace if first <= int(t["step_id"]) <= last])
    saved = {"measured": True, "workload": args.workload, "requests": args.requests}
    bench_path.write_text(json.dumps({**saved, "scale": args.scale, "results": measured}, indent=1))
    with gzip.open(traces_path(bench_path), "wt") as f:  # ~50k iterations: columns, gzipped
        json.dump([{k: [t[k] for t in trace] for k in TRACE_FIELDS} for trace in traces], f)
    bench_path.with_suffix(".png").unlink(missing_ok=True)  # one run's, not the sweep's
    return measured, traces


TRACE_FIELDS = (
    "step_id",
    "strategy",
    "gpu_rows",
    "cpu_rows",
    "prefill_tokens",
    "measured_ms",
    "profile_uncalibrated_ms",
    "wall_time",
)


def traces_path(bench_path: Path) -> Path:
    return bench_path.with_name(bench_path.stem + "_traces.json.gz")


def samples(trace: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """One run's iterations as (step samples, gap samples). A step sample: the
    measured time, the profile's (uncalibrated) time, the rows and the CPU rows. A gap
    sample: the time between one step's end and the next one's start (the daemon's
    loop) and the rows of the step it led to; idle gaps (no work queued) left out."""
    steps = sorted(trace, key=lambda t: int(t["step_id"]))  # proto JSON: int64 as strings
    timed = [
        (t["measured_ms"] / 1e3, t["profile_uncalibrated_ms"] / 1e3, rows_of(t), t["cpu_rows"])
        for t in steps
        if t["profile_uncalibrated_ms"] > 0 and t["measured_ms"] > 0
    ]
    gaps = []
    for a, b in pairwise(steps):
        gap = b["wall_time"] - b["measured_ms"] / 1e3 - a["wall_time"]
        if int(b["step_id"]) == int(a["step_id"]) + 1 and 0 <= gap < 0.05:
            gaps.append((gap, rows_of(b)))
    return np.array(timed, float).reshape(-1, 4), np.array(gaps, float).reshape(-1, 2)


def rows_of(t: dict) -> int:
    return t["gpu_rows"] + t["cpu_rows"] + (1 if t["prefill_tokens"] else 0)


def fit_loop(runs: list[tuple[np.ndarray, np.ndarray]]) -> LoopCost:
    """The loop cost, by least squares over the pooled iterations of the runs given
    (every run but the one it will predict): the measured step as the profile's step
    scaled, plus a cost per row and per CPU row (on a machine without a GPU the
    executors share the host's cores with the daemon and the client, whose work grows
    with the rows; CPU rows add the two executors running at once); the gap between
    steps as a + b x rows."""
    steps = np.concatenate([s for s, _ in runs])
    gaps = np.concatenate([g for _, g in runs])
    measured, model, rows, cpu_rows = steps.T
    (scale, per_row, per_cpu_row), *_ = np.linalg.lstsq(
        np.stack([model, rows, cpu_rows], 1), measured, rcond=None
    )
    gap_per_row, gap = np.polyfit(gaps[:, 1], gaps[:, 0], 1)
    return LoopCost(
        scale=float(scale),
        per_step_s=max(0.0, float(gap)),
        per_row_s=max(0.0, float(per_row)),
        per_cpu_row_s=max(0.0, float(per_cpu_row)),
        gap_per_row_s=max(0.0, float(gap_per_row)),
    )


if __name__ == "__main__":
    main()
