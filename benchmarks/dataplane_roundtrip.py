"""Per-layer data-plane round trip with an empty attention: p50 and p99.

This process plays the GPU executor (writes the rows, bumps LAYER_IN, waits LAYER_OUT);
a second process plays the CPU executor with no attention at all (waits LAYER_IN,
bumps LAYER_OUT). Measured three ways: spinning with no payload (the signalling floor),
spinning with a 16-row Llama-3-8B-shaped fp16 q/k/v payload written through torch as
CpuLink does, and with spinning off (straight to the futex). Prints, writes JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, cpu_name, save
from dataplane.exchange import Exchange
from dataplane.layout import ExchangeLayout, layer_in, layer_out
from dataplane.shm import Segment, unique_name
from gpu_executor.cpu_link import torch_view

LAYOUT = ExchangeLayout(
    num_layers=1,
    max_rows=16,
    max_blocks_per_seq=8,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    dtype="float16",
)


def echo(name: str, size: int, n: int, spin_ns: int) -> None:
    """The CPU side: answer every LAYER_IN with LAYER_OUT, nothing in between."""
    ex = Exchange(LAYOUT, Segment.attach(name, size), spin_ns=spin_ns)
    for i in range(1, n + 1):
        if not ex.wait(layer_in(0), i, 10.0):
            sys.exit("echo: timed out")
        ex.signal(layer_out(0), i)


def run(n: int, spin_ns: int, payload: bool) -> dict:
    seg = Segment.create(unique_name("bench"), LAYOUT.nbytes)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.dataplane_roundtrip",
            "--echo",
            seg.name,
            str(LAYOUT.nbytes),
            str(n),
            str(spin_ns),
        ]
    )
    try:
        ex = Exchange(LAYOUT, seg, spin_ns=spin_ns)
        v = ex.views
        q, k, vv = (torch_view(a, "float16") for a in (v.q[0], v.k[0], v.v[0]))
        src_q = torch.randn(q.shape, dtype=torch.float16)
        src_kv = torch.randn(k.shape, dtype=torch.float16)
        times = np.empty(n)
        for i in range(1, n + 1):
            t = time.perf_counter_ns()
            if payload:
                q.copy_(src_q)
                k.copy_(src_kv)
                vv.copy_(src_kv)
            ex.signal(layer_in(0), i)
            if not ex.wait(layer_out(0), i, 10.0):
                raise RuntimeError("no answer from the echo process")
            times[i - 1] = time.perf_counter_ns() - t
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        seg.close()
    warm = times[n // 10 :]  # the first tenth: both sides still starting up
    payload_bytes = (q.numel() + 2 * k.numel()) * 2 if payload else 0
    return {
        "spin_ns": spin_ns,
        "payload_bytes": payload_bytes,
        "round_trips": len(warm),
        "p50_us": float(np.percentile(warm, 50) / 1e3),
        "p99_us": float(np.percentile(warm, 99) / 1e3),
        "mean_us": float(warm.mean() / 1e3),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--echo":
        echo(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=RESULTS / "dataplane_roundtrip.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("spin, no payload", 200_000, False),
        ("spin, 16-row fp16 payload", 200_000, True),
        ("futex, no spinning", 0, False),
    ]
    rows = []
    print(f"{'mode':28} {'p50 us':>8} {'p99 us':>8}")
    for label, spin, payload in cases:
        r = run(args.n if spin else args.n // 4, spin, payload)
        r["mode"] = label
        rows.append(r)
        print(f"{label:28} {r['p50_us']:8.2f} {r['p99_us']:8.2f}")
    report = {
        "what": "per-layer data-plane round trip, empty attention, two processes",
        "machine": {"cpu": cpu_name(), "device": "cpu (no GPU)"},
        "target": "p50 <= 20 us when spinning",
        "cases": rows,
    }
    save(report, args.out)


if __name__ == "__main__":
    main()
