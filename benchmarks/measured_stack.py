"""On the machine at hand: measure its profile on a running stack, then run the online
benchmark with every policy, so that the profile's prediction error is measured on the
machine it was measured on.

    python -m benchmarks.measured_stack [--model DIR] [--workload chat] [--requests 48]

Writes benchmarks/results/profile_<device>.json (+ .png), bench_<device>.json (+ .png).
On a machine without a GPU the "GPU" executor runs on the same cores as the CPU
executor, so the policies' speeds here are not a performance result: the run shows
that the three policies work end to end and how well the profile predicts steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, cpu_name
from launcher.stack import ensure_default_model, local_stack


def apexctl(address: str, *args: str) -> str:
    r = subprocess.run(  # as a module: a checkout that is not pip-installed has no script
        [sys.executable, "-m", "clients.apexctl", "--address", address, *args],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"apexctl {args[0]} failed: {r.stderr}")
    return r.stdout


def noise_floor(trace: list[dict]) -> dict[str, dict[str, float]]:
    """Per policy: the error of an oracle that predicts each step by the median measured
    time of the steps with the same shape (GPU rows, CPU rows, prefill tokens / 32), the
    best any predictor of the plan alone could do here, beside the profile's error."""
    out: dict[str, dict[str, float]] = {}
    for policy in sorted({t["policy"] for t in trace}):
        steps = [t for t in trace if t["policy"] == policy and t["measured_ms"] > 0]
        shapes: dict[tuple, list[float]] = {}
        for t in steps:
            key = (t["gpu_rows"], t["cpu_rows"], t["prefill_tokens"] // 32)
            shapes.setdefault(key, []).append(t["measured_ms"])
        med = {k: statistics.median(v) for k, v in shapes.items()}
        oracle = [
            abs(med[(t["gpu_rows"], t["cpu_rows"], t["prefill_tokens"] // 32)] - t["measured_ms"])
            / t["measured_ms"]
            for t in steps
        ]
        prof = [
            abs(t["profile_predicted_ms"] - t["measured_ms"]) / t["measured_ms"]
            for t in steps
            if math.isfinite(t["profile_predicted_ms"])
        ]
        out[policy] = {
            "steps": len(steps),
            "oracle_mape": statistics.fmean(oracle) if oracle else math.nan,
            "profile_mape": statistics.fmean(prof) if prof else math.nan,
        }
        print(
            f"{policy}: oracle MAPE {100 * out[policy]['oracle_mape']:.1f}%, "
            f"profile {100 * out[policy]['profile_mape']:.1f}% over {len(steps)} steps"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--device", default="", help="executor device (default: cuda if any)")
    ap.add_argument("--workload", default="chat")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--rates", default="", help="a sweep, comma-separated (instead of --rate)")
    ap.add_argument("--slo", default="", help="p99 TTFT s,p99 TPOT ms: attainment and capacity")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--gpu-blocks", type=int, default=48, help="cap the GPU tier: pressure")
    ap.add_argument("--cpu-kv-gb", type=float, default=0.2)
    ap.add_argument("--tag", default="", help="file name tag (default: from the CPU)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the files")
    args = ap.parse_args()
    model = args.model or ensure_default_model()
    tag = args.tag or ("gpu" if args.device.startswith("cuda") else "cpu")
    os.environ["APEX_PROFILE_DIR"] = tempfile.mkdtemp(prefix="apex-profiles-")
    ex_args = ["--device", args.device] if args.device else []
    sched = ["--gpu-blocks", str(args.gpu_blocks), "--cpu-kv-gb", str(args.cpu_kv_gb)]
    with local_stack(
        model, executor_args=ex_args, scheduler_args=sched, cpu_executor_args=[]
    ) as stack:
        args.results.mkdir(parents=True, exist_ok=True)
        prof = args.results / f"profile_{tag}.json"
        print(apexctl(stack.address, "profile", "--out", str(prof)))
        bench = args.results / f"bench_{tag}.json"
        print(
            apexctl(
                stack.address,
                "bench",
                "--workload",
                args.workload,
                "--requests",
                str(args.requests),
                *(["--rates", args.rates] if args.rates else ["--rate", str(args.rate)]),
                *slo_args(args.slo),
                "--scale",
                str(args.scale),
                "--out",
                str(bench),
            )
        )
        status = json.loads(apexctl(stack.address, "status", "--json"))
        trace = json.loads(apexctl(stack.address, "trace", "--limit", "0", "--json"))
    report = json.loads(bench.read_text())
    report["host_cpu"] = cpu_name()
    report["gpu_blocks"] = args.gpu_blocks
    report["note"] = (
        "no GPU: both executors share the same cores; not a performance comparison"
        if not args.device.startswith("cuda")
        else "measured on a GPU"
    )
    report["profile"] = str(prof.name)
    report["profile_mape_whole_run"] = status.get("profile_mape")
    report["policy_after_bench"] = status.get("policy")  # bench puts the policy back
    report["online_predictor_mape"] = status.get("predictor_mape")
    report["noise_floor"] = noise_floor(trace)
    bench.write_text(json.dumps(report, indent=1))
    print(f"profile error over the run: {100 * status.get('profile_mape', float('nan')):.1f}%")


def slo_args(slo: str) -> list[str]:
    if not slo:
        return []
    ttft, tpot = slo.split(",")
    return ["--slo-ttft-s", ttft, "--slo-tpot-ms", tpot]


if __name__ == "__main__":
    main()
