"""SIMULATION: gpu-only, neo and apex on the shipped T4 and A10 profiles, side by side.

The real scheduler and policies step a virtual clock driven by spec-derived profiles (no
GPU was used). Long-output workloads (chat, cot) are run at an arrival rate that keeps
the GPU tier at its memory limit; NEO's synthetic workload is run too. apex is run at its
default TPOT bound and over a sweep of bounds, so that the throughput/latency trade is
visible. Writes benchmarks/results/simulation_policies.json and a PNG plot beside it.

    python -m benchmarks.simulate_policies [--requests N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clients.cli_output import pyplot
from scheduler.costs.profile import Profile
from scheduler.policies.apex import default_tpot_slo
from scheduler.sim.simulator import WORKLOADS, simulate

RESULTS = Path(__file__).parent / "results"
CASES = {  # profile: (arrival rate that saturates its GPU tier, apex bounds to sweep, ms)
    "t4-llama2-7b": (1.0, (66, 110, 150, 250)),
    "a10-llama3.1-8b": (16.0, (53, 70, 100, 150)),
}


def run(requests: int) -> dict:
    out: dict = {"simulation": True, "requests": requests, "cases": []}
    for name, (rate, sweep) in CASES.items():
        profile = Profile.load(name)
        default_ms = default_tpot_slo(profile) * 1e3
        for wl in ("chat", "cot", "neo"):
            runs = {
                p: simulate(profile, WORKLOADS[wl], p, n=requests, rate=rate)
                for p in ("gpu-only", "neo", "apex")
            }
            g, n = runs["gpu-only"], runs["neo"]
            rows = [("gpu-only", None, g), ("neo", None, n), ("apex", default_ms, runs["apex"])]
            for ms in sweep:
                r = simulate(
                    profile, WORKLOADS[wl], "apex", n=requests, rate=rate, tpot_slo_s=ms / 1e3
                )
                rows.append(("apex", float(ms), r))
            case = {
                "profile": name,
                "device": profile.device,
                "workload": wl,
                "rate": rate,
                "apex_default_tpot_slo_ms": default_ms,
                "runs": [],
            }
            for policy, slo, r in rows:
                case["runs"].append(
                    {
                        "policy": policy,
                        "tpot_slo_ms": slo,
                        "vs_gpu_only": r.throughput / g.throughput,
                        "vs_neo": r.throughput / n.throughput,
                        "tpot_p99_vs_gpu_only": r.tpot_p99 / g.tpot_p99,
                        **r.summary(),
                    }
                )
                label = policy if slo is None else f"apex@{slo:.0f}ms"
                print(
                    f"SIM {name:16} {wl:5} {label:12} {r.throughput:8.1f} tok/s "
                    f"{r.throughput / g.throughput:5.2f}x gpu-only "
                    f"{r.throughput / n.throughput:5.2f}x neo"
                    f"  TPOT p99 {r.tpot_p99 * 1e3:7.1f} ms ({r.tpot_p99 / g.tpot_p99:4.2f}x)"
                    f"  TTFT p50 {r.ttft_p50:6.1f} s  {r.strategies}",
                    flush=True,
                )
            out["cases"].append(case)
    return out


def plot(data: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    cases = data["cases"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, case in zip(axes.flat, cases, strict=False):
        for r in case["runs"]:
            label = r["policy"] if r["tpot_slo_ms"] is None else f"apex {r['tpot_slo_ms']:.0f} ms"
            marker = {"gpu-only": "s", "neo": "^"}.get(r["policy"], "o")
            ax.scatter(r["tpot_p99"] * 1e3, r["throughput"], marker=marker, label=label)
        ax.set_xscale("log")
        ax.set_title(f"{case['profile']} / {case['workload']} (SIMULATION)", fontsize=9)
        ax.set_xlabel("TPOT p99 (ms)")
        ax.set_ylabel("tokens/s")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    data = run(args.requests)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "simulation_policies.json"
    out.write_text(json.dumps(data, indent=1))
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
