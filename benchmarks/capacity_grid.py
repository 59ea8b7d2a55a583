"""Capacity at every point of the SLO grid, each card on a small and a large host:
SIMULATION.

T4 + Llama-2-7B and A10 + Llama-3.1-8B (spec-derived profiles), each on its small and
large cloud host (`scheduler/costs/hosts.py`), workloads chat, CoT and NEO's synthetic,
SLOs p99 TPOT 100/150/250 ms (T4) or 60/100/200 ms (A10) by p99 TTFT 2 s and 10 s:
every policy's highest Poisson rate whose p99 TTFT and p99 TPOT meet the SLO
(`scheduler/sim/capacity.py`). One process per (card, host, workload): their runs are
shared across that case's SLOs. Prints the table and writes JSON.

    python -m benchmarks.capacity_grid [--jobs 2] [--cards T4] [--workloads chat]
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS
from scheduler.costs.hosts import HOSTS, on_host
from scheduler.costs.profile import load_profile
from scheduler.sim.capacity import Slo, capacity
from scheduler.sim.simulator import WORKLOADS

CARDS = {  # profile, p99 TPOT bounds (s)
    "T4": ("t4-llama2-7b", (0.100, 0.150, 0.250)),
    "A10": ("a10-llama3.1-8b", (0.060, 0.100, 0.200)),
}
TTFT_BOUNDS = (2.0, 10.0)
POLICIES = ("gpu-only", "neo", "apex")


def one_case(card: str, host: str, workload: str, floor: int, refine: int) -> list[dict]:
    name, tpots = CARDS[card]
    profile = on_host(load_profile(name), HOSTS[host])
    sims: dict = {}
    rows = []
    for ttft in TTFT_BOUNDS:
        for tpot in tpots:
            slo = Slo(ttft, tpot)
            caps = [
                capacity(profile, WORKLOADS[workload], p, slo, n=floor, refine=refine, sims=sims)
                for p in POLICIES
            ]
            rows.append(
                {
                    "card": card,
                    "host": host,
                    "workload": workload,
                    "slo": asdict(slo),
                    "capacity": {c.policy: c.rate for c in caps},
                    "points": {c.policy: [asdict(p) for p in c.points] for c in caps},
                }
            )
    return rows


def ratio(row: dict) -> float:
    c = row["capacity"]
    other = max(c["gpu-only"], c["neo"])
    return c["apex"] / other if other > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cards", default="T4,A10")
    ap.add_argument("--workloads", default="chat,cot,neo")
    ap.add_argument("--floor", type=int, default=100, help="fewest requests per rate")
    ap.add_argument("--refine", type=int, default=3, help="bisections past the bracket")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "capacity_grid.json")
    args = ap.parse_args()
    cases = [
        (card, h.name, w)
        for card in args.cards.split(",")
        for h in HOSTS.values()
        if h.card == card
        for w in args.workloads.split(",")
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_case, *c, args.floor, args.refine) for c in cases]
        rows = [r for f in futures for r in f.result()]
    print("SIMULATION: requests/s at the SLO (spec-derived profiles, host presets)")
    print(
        f"{'card':4} {'host':14} {'workload':8} {'SLO':>11} "
        + " ".join(f"{p:>9}" for p in POLICIES)
        + "  apex/best-other"
    )
    for r in rows:
        slo = f"{r['slo']['ttft_p99_s']:g}s/{r['slo']['tpot_p99_s'] * 1e3:g}ms"
        print(
            f"{r['card']:4} {r['host']:14} {r['workload']:8} {slo:>11} "
            + " ".join(f"{r['capacity'][p]:9.4g}" for p in POLICIES)
            + f"  {ratio(r):6.2f}x"
        )
    finite = [ratio(r) for r in rows if ratio(r) != float("inf")]
    summary = {
        "points": len(rows),
        "apex_at_least_best_other": sum(ratio(r) >= 1 for r in rows),
        "median_ratio": statistics.median(finite) if finite else None,
        "min_ratio": min(finite) if finite else None,
    }
    print(summary)
    report = {
        "simulation": True,
        "method": "30 simulated minutes of arrivals per rate (>= floor, <= 1000 requests), "
        "first and last 10% left out, a second seed where a p99 is within 10% of its bound",
        "floor": args.floor,
        "refine": args.refine,
        "summary": summary,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
