"""CPU decode attention: achieved GB/s of KV read against this machine's bandwidth.

For each (batch, context, storage dtype) the two paths (our paged kernel, ORT's GQA
with its gather) attend one layer of a Llama-3-8B-shaped KV (8 KV heads x 128, 32 query
heads). Bytes counted are the KV the attention must read once: K and V of every context
token. The bandwidth it is held against is one large multi-threaded read measured in the
same run with the same threads. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, cpu_name, median_time, save
from cpu_executor import native
from cpu_executor.attention import AttnShape, OrtAttention, kernel_attention
from cpu_executor.layout import ITEM

SHAPE = AttnShape(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)


def read_bandwidth(threads: int, gb: float = 2.0) -> float:
    a = np.random.default_rng(0).standard_normal(int(gb * 1e9 / 4), np.float32)
    lib = native.lib()
    t = median_time(lambda: lib.apex_read_sum(native.ptr(a), a.size, threads), 5)
    return a.nbytes / t / 1e9


def storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    return (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation: data only


def case(batch: int, ctx: int, dtype: str, threads: int, ort: OrtAttention, reps: int) -> dict:
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
    t_kernel = median_time(
        lambda: kernel_attention(q, k, v, dtype, tables, lens, out, s, threads), reps
    )
    t_ort = median_time(lambda: ort(q, kn, kn, k, v, dtype, tables, lens, out), reps)
    return {
        "batch": batch,
        "context": ctx,
        "dtype": dtype,
        "kv_bytes": kv_bytes,
        "kernel_s": t_kernel,
        "ort_s": t_ort,
        "kernel_gbps": kv_bytes / t_kernel / 1e9,
        "ort_gbps": kv_bytes / t_ort / 1e9,
    }


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
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_attention.json")
    args = ap.parse_args()
    bw = read_bandwidth(args.threads)
    ort = OrtAttention(SHAPE, args.threads)
    rows = []
    print(f"one large read, {args.threads} threads: {bw:.1f} GB/s")
    print(
        f"{'batch':>5} {'ctx':>5} {'dtype':8} {'kernel GB/s':>11} {'%bw':>5} "
        f"{'ort GB/s':>9} {'%bw':>5}"
    )
    for dtype in ("float32", "float16", "bfloat16"):
        for b in map(int, args.batches.split(",")):
            for c in map(int, args.contexts.split(",")):
                if b * c > args.max_tokens:
                    continue
                r = case(b, c, dtype, args.threads, ort, args.reps)
                r["kernel_pct_bw"] = 100 * r["kernel_gbps"] / bw
                r["ort_pct_bw"] = 100 * r["ort_gbps"] / bw
                rows.append(r)
                print(
                    f"{b:5} {c:5} {dtype:8} {r['kernel_gbps']:11.2f} "
                    f"{r['kernel_pct_bw']:5.0f} {r['ort_gbps']:9.2f} {r['ort_pct_bw']:5.0f}"
                )
    target = [r for r in rows if r["batch"] >= 8 and r["context"] >= 1024]
    report = {
        "what": "CPU decode attention, one layer, Llama-3-8B KV shape (8 x 128, 32 q heads)",
        "machine": {"cpu": cpu_name(), "threads": args.threads, "device": "cpu (no GPU)"},
        "read_bandwidth_gbps": bw,
        "cases": rows,
        "target": "kernel >= 70% of the read bandwidth at batch >= 8 and context >= 1k",
        "kernel_min_pct_bw_in_target_region": min(
            (r["kernel_pct_bw"] for r in target), default=None
        ),
    }
    save(report, args.out)
    print(
        f"kernel, batch >= 8 and context >= 1k: at least "
        f"{report['kernel_min_pct_bw_in_target_region']:.0f}% of the read bandwidth"
    )


if __name__ == "__main__":
    main()
