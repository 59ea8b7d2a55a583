"""Latency-throughput curves as a PNG: p99 TPOT, p99 TTFT and throughput against the
arrival rate, one line per policy, the SLO's bounds and each policy's capacity marked.
Shared by `apexctl simulate --out` and `apexctl bench --rates`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from clients.cli_output import pyplot


class Point(Protocol):
    rate: float
    throughput: float
    ttft_p99: float
    tpot_p99: float


def plot_curves(
    curves: dict[str, Sequence[Point]],
    capacities: dict[str, float],
    slo: tuple[float, float],
    path: Path,
    title: str,
) -> bool:
    """slo: (p99 TTFT s, p99 TPOT s). False when matplotlib is absent."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        (ax[0], "tpot_p99", 1e3, "p99 TPOT (ms)", slo[1] * 1e3),
        (ax[1], "ttft_p99", 1.0, "p99 TTFT (s)", slo[0]),
        (ax[2], "throughput", 1.0, "generated tokens/s", None),
    )
    for name, points in curves.items():
        pts = sorted(points, key=lambda p: p.rate)
        rates = [p.rate for p in pts]
        for a, attr, scale, _, _ in panels:
            (line,) = a.plot(rates, [getattr(p, attr) * scale for p in pts], "o-", ms=3, label=name)
            if capacities.get(name, 0) > 0:
                a.axvline(capacities[name], color=line.get_color(), ls=":", lw=1)
    for a, _, _, label, bound in panels:
        a.set(xlabel="arrival rate (requests/s)", ylabel=label)
        if bound is not None:
            a.axhline(bound, color="k", ls="--", lw=1, label="SLO")
            a.set_yscale("log")
        a.legend(fontsize=7)
    fig.suptitle(title + "  (dotted: each policy's capacity at the SLO)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
