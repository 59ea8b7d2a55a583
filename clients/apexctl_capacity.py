"""`apexctl simulate --slo-ttft-s A --slo-tpot-ms B`: each policy's capacity at an SLO
on a profile, and how many cards a target request rate needs (simulation)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def cmd_capacity(args: argparse.Namespace, profile, workload, policies: list[str]) -> int:
    from scheduler.sim.capacity import Slo, capacity

    if not (args.slo_ttft_s and args.slo_tpot_ms):
        sys.exit("apexctl simulate: an SLO needs both --slo-ttft-s and --slo-tpot-ms (> 0)")
    if args.target_rate is not None and not args.target_rate > 0:
        sys.exit(f"apexctl simulate: --target-rate must be > 0, got {args.target_rate}")
    if args.minutes < 0:
        sys.exit(f"apexctl simulate: --minutes must be >= 0, got {args.minutes}")
    slo = Slo(args.slo_ttft_s, args.slo_tpot_ms / 1e3)
    caps = [
        capacity(profile, workload, p, slo, n=args.requests, seed=args.seed, minutes=args.minutes)
        for p in policies
    ]
    out = {
        "simulation": True,
        "profile": profile.name,
        "device": profile.device,
        "workload": workload.name,
        "requests_per_rate": {"floor": args.requests, "minutes_of_arrivals": args.minutes},
        "slo": {"ttft_p99_s": slo.ttft_p99_s, "tpot_p99_s": slo.tpot_p99_s},
        "capacity": [
            asdict(c) | {"replicas_for_target": c.replicas_for(args.target_rate)}
            if args.target_rate
            else asdict(c)
            for c in caps
        ],
        "target_rate": args.target_rate,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    if args.out:
        write_outputs(out, caps, slo, args.out)
    print(
        f"SIMULATION on {profile.device}: {profile.model}; workload {workload.name}; "
        f"SLO p99 TTFT <= {slo.ttft_p99_s:g} s, p99 TPOT <= {args.slo_tpot_ms:g} ms; "
        f"{args.minutes:g} simulated minutes of arrivals per rate (>= {args.requests} "
        "requests, <= 1000), the first and last 10% left out"
    )
    target = f"  cards for {args.target_rate:g}/s" if args.target_rate else ""
    print(
        f"{'policy':10} {'req/s at SLO':>13} {'vs first':>9} {'TTFT p99 s':>11} "
        f"{'TPOT p99 ms':>12} {'attained':>9}{target}"
    )
    base = caps[0].rate
    for c in caps:
        at = [p for p in c.points if p.rate == c.rate]
        nan = float("nan")
        ttft, tpot, met = (
            (at[0].ttft_p99, at[0].tpot_p99 * 1e3, at[0].attainment) if at else (nan, nan, nan)
        )
        ratio = f"{c.rate / base:8.2f}x" if base > 0 else f"{'-':>9}"
        cards = ""
        if args.target_rate:
            n = c.replicas_for(args.target_rate)
            cards = f"  {n if n is not None else 'none hold it':>14}"
        print(f"{c.policy:10} {c.rate:13.4g} {ratio} {ttft:11.1f} {tpot:12.1f} {met:9.1%}{cards}")
    return 0


def write_outputs(out: dict, caps, slo, path: Path) -> None:
    """The JSON beside a PNG of the curves (same name, .png)."""
    from clients.capacity_plot import plot_curves

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    title = f"SIMULATION: {out['profile']}, {out['workload']}"
    png = path.with_suffix(".png")
    curves = {c.policy: c.points for c in caps}
    drawn = plot_curves(
        curves, {c.policy: c.rate for c in caps}, (slo.ttft_p99_s, slo.tpot_p99_s), png, title
    )
    print(f"wrote {path}" + (f" and {png}" if drawn else ""))
