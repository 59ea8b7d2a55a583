"""CPU decode attention: achieved GB/s of KV read against this machine's bandwidth.

For each (batch, context, storage dtype) the two paths (our paged kernel, ORT's GQA
with its gather) attend one layer of a Llama-3-8B-shaped KV (8 KV heads x 128, 32 query
heads). Bytes counted are the KV the attention must read once: K and V of every context
token. The bandwidth it is held against is one large multi-threaded read (as fast as a
read can be made here: vector loads, four sums, prefetch) with the same threads, timed
in the same rounds: each round times the read, the kernel and ORT back to back, and the
percentage is the median over rounds of kernel (or ORT) GB/s over that round's read
GB/s, because on a shared host the bandwidth itself drifts by a third within minutes.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, cpu_name, save, timed
from cpu_executor.attention import AttnShape, OrtAttention, kernel_attention
from dataplane import native
from dataplane.layout import ITEM

SHAPE = AttnShape(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)


def storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    return (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation: data only


def case(
    batch: int,
    ctx: int,
    dtype: str,
    threads: int,
    ort: OrtAttention,
    rounds: int,
    big: np.ndarray,
    twin: ctypes.CDLL,
) -> dict:
    rng = np.random.default_rng(batch * 7919 + ctx)
    s = SHAPE
    blocks_per = -(-ctx // s.block_size)
    nblocks = batch * blocks_per
    dims = (nblocks, s.num_kv_heads, s.block_size, s.head_dim)
    k_dims = (nblocks, s.num_kv_heads, s.head_dim, s.block_size)  # K transposed per block
    k = storage(rng.standard_normal(k_dims, np.float32), dtype)
    v = storage(rng.standard_normal(dims, np.float32), dtype)
    tables = rng.permutation(nblocks).astype(np.int32).reshape(batch, blocks_per)
    lens = np.full(batch, ctx, np.int32)
    q = rng.standard_normal((batch, s.num_heads, s.head_dim), np.float32)
    kn = rng.standard_normal((batch, s.num_kv_heads, s.head_dim), np.float32)
    out = np.empty_like(q)
    kv_bytes = 2 * batch * ctx * s.num_kv_heads * s.head_dim * ITEM[dtype]
    lib = native.lib()
    paths = {
        "read": lambda: lib.apex_read_sum(native.ptr(big), big.size, threads),
        "kernel": lambda: kernel_attention(q, k, v, dtype, tables, lens, out, s, threads),
        "twin": lambda: kernel_attention(q, k, v, dtype, tables, lens, out, s, threads, lib=twin),
        "ort": lambda: ort(q, kn, kn, k, v, dtype, tables, lens, out),
    }
    for fn in paths.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(rounds):
        # kernel and twin swap places every round: whichever runs second may find the
        # tail of the other's KV still in L3
        order = ("read", "kernel", "twin", "ort") if i % 2 else ("read", "twin", "kernel", "ort")
        for name in order:
            times[name].append(timed(paths[name]))
    read = [big.nbytes / t / 1e9 for t in times["read"]]
    row = {"batch": batch, "context": ctx, "dtype": dtype, "kv_bytes": kv_bytes}
    row["read_gbps"] = statistics.median(read)
    for name in ("kernel", "twin", "ort"):
        gbps = [kv_bytes / t / 1e9 for t in times[name]]
        row[f"{name}_s"] = statistics.median(times[name])
        row[f"{name}_gbps"] = statistics.median(gbps)
        row[f"{name}_pct_bw"] = statistics.median(
            100 * g / r for g, r in zip(gbps, read, strict=True)
        )
    row["kernel_pct_twin"] = statistics.median(
        100 * t / k for t, k in zip(times["twin"], times["kernel"], strict=True)
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="128,1024,4096,8192")
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=131072,
        help="skip cases with batch x context above this (memory, time)",
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--read-gb", type=float, default=1.0, help="size of the reference read")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_attention.json")
    args = ap.parse_args()
    big = np.random.default_rng(0).standard_normal(int(args.read_gb * 1e9 / 4), np.float32)
    ort = OrtAttention(SHAPE, args.threads)
    twin = native.loads_only_twin()
    rows = []
    print(
        f"{'batch':>5} {'ctx':>5} {'dtype':8} {'read GB/s':>9} {'kernel GB/s':>11} {'%bw':>5} "
        f"{'%twin':>5} {'ort GB/s':>9} {'%bw':>5}"
    )
    for dtype in ("float32", "float16", "bfloat16"):
        for b in map(int, args.batches.split(",")):
            for c in map(int, args.contexts.split(",")):
                if b * c > args.max_tokens:
                    continue
                r = case(b, c, dtype, args.threads, ort, args.rounds, big, twin)
                rows.append(r)
                print(
                    f"{b:5} {c:5} {dtype:8} {r['read_gbps']:9.1f} {r['kernel_gbps']:11.2f} "
                    f"{r['kernel_pct_bw']:5.0f} {r['kernel_pct_twin']:5.0f} {r['ort_gbps']:9.2f} "
                    f"{r['ort_pct_bw']:5.0f}"
                )
    target = [r for r in rows if r["batch"] >= 8 and r["context"] >= 1024]
    report = {
        "what": "CPU decode attention, one layer, Llama-3-8B KV shape (8 x 128, 32 q heads)",
        "machine": {"cpu": cpu_name(), "threads": args.threads, "device": "cpu (no GPU)"},
        "reference_read": f"{args.read_gb} GB, {args.threads} threads, timed in every round",
        "read_bandwidth_gbps_range": [
            min(r["read_gbps"] for r in rows),
            max(r["read_gbps"] for r in rows),
        ],
        "cases": rows,
        "twin": "the kernel built with -DAPEX_LOADS_ONLY: its loads and prefetches without "
        "its FMAs; kernel_pct_twin is the kernel's speed as a percentage of the twin's",
        "target": "kernel >= 70% of the read bandwidth at batch >= 8 and context >= 1k",
        "kernel_min_pct_bw_in_target_region": min(
            (r["kernel_pct_bw"] for r in target), default=None
        ),
        "kernel_pct_bw_range_in_target_region_by_dtype": {
            dt: [min(p), max(p)]
            for dt in ("float32", "float16", "bfloat16")
            if (p := [r["kernel_pct_bw"] for r in target if r["dtype"] == dt])
        },
    }
    save(report, args.out)
    print(
        f"kernel, batch >= 8 and context >= 1k: at least "
        f"{report['kernel_min_pct_bw_in_target_region']:.0f}% of the read bandwidth"
    )


if __name__ == "__main__":
    main()
