"""Capacity at a latency SLO for each card on a small and a large host: SIMULATION.

For T4 + Llama-2-7B and A10 + Llama-3.1-8B (spec-derived profiles), each on its small
and large cloud host (`scheduler/costs/hosts.py`), each workload: every policy's highest
Poisson rate whose p99 TTFT and p99 TPOT meet the SLO (`scheduler/sim/capacity.py`).
Prints the table and writes JSON.

    python -m benchmarks.capacity_hosts [--workloads chat,cot] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS
from scheduler.costs.hosts import HOSTS, on_host
from scheduler.costs.profile import load_profile
from scheduler.sim.capacity import Slo, capacity
from scheduler.sim.simulator import WORKLOADS

CARDS = {  # profile, SLO (p99 TTFT s, p99 TPOT s)
    "T4": ("t4-llama2-7b", Slo(10.0, 0.150)),
    "A10": ("a10-llama3.1-8b", Slo(10.0, 0.100)),
}
POLICIES = ("gpu-only", "neo", "apex")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workloads", default="chat,cot")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "capacity_hosts.json")
    args = ap.parse_args()
    rows = []
    print("SIMULATION: requests/s at the SLO (spec-derived profiles, host presets)")
    print(
        f"{'card':4} {'host':14} {'workload':8} {'SLO':>10} "
        + " ".join(f"{p:>9}" for p in POLICIES)
        + "  apex/best-other"
    )
    for card, (name, slo) in CARDS.items():
        for host in (h for h in HOSTS.values() if h.card == card):
            profile = on_host(load_profile(name), host)
            for workload in args.workloads.split(","):
                caps = [
                    capacity(profile, WORKLOADS[workload], p, slo, n=args.requests)
                    for p in POLICIES
                ]
                by = {c.policy: c.rate for c in caps}
                other = max(by["gpu-only"], by["neo"])
                ratio = by["apex"] / other if other > 0 else float("inf")
                slo_s = f"{slo.ttft_p99_s:g}s/{slo.tpot_p99_s * 1e3:g}ms"
                print(
                    f"{card:4} {host.name:14} {workload:8} {slo_s:>10} "
                    + " ".join(f"{by[p]:9.4g}" for p in POLICIES)
                    + f"  {ratio:6.2f}x",
                    flush=True,
                )
                rows.append(
                    {
                        "card": card,
                        "host": host.name,
                        "workload": workload,
                        "slo": asdict(slo),
                        "capacity": [asdict(c) for c in caps],
                    }
                )
    args.out.write_text(
        json.dumps({"simulation": True, "requests_per_rate": args.requests, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
