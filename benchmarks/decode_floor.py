"""The GPU-only decode step against its byte floor, on the device at hand.

A decode step must read every weight once and every row's KV once: floor = (weight
bytes + KV bytes) / memory bandwidth, the bandwidth measured here in the same run (a
large device-to-device copy, bytes read plus written). The step is the executor's own
GPU-only layer loop over a packed decode batch (`gpu_executor.strategies`), timed after
a warm-up, median of repeats, synchronised. Reports step / floor per batch size, and
the same step through the CUDA-graphed path (`--cuda-graphs`: captured on CUDA, run
eagerly elsewhere) with its logits' largest difference from the plain step's.

    python -m benchmarks.decode_floor --model DIR [--device cuda] [--batches 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gpu_executor.batch import SeqInput, pack
from gpu_executor.decode_graphs import DecodeGraphs, bucket_for
from gpu_executor.llama import LlamaModel, sync
from gpu_executor.strategies import gpu_only_layers


def bandwidth(device: torch.device, mib: int = 1024, repeats: int = 10) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)  # random data: zeros can be faster than real data
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 2 * src.nbytes / statistics.median(times)


def decode_rows(model: LlamaModel, rows: int, context: int) -> list[SeqInput]:
    bs = model.kv.block_size
    per_row = -(-(context + 1) // bs)
    return [
        SeqInput([5], context, list(range(r * per_row, (r + 1) * per_row))) for r in range(rows)
    ]


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of fn() after 3 warm-ups, and its last result."""
    times = []
    for i in range(repeats + 3):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times), out


def decode_step_s(
    model: LlamaModel, seqs: list[SeqInput], repeats: int
) -> tuple[float, torch.Tensor]:
    """Median seconds of one GPU-only decode step over these rows, and its logits."""
    batch = pack(seqs, model.kv.block_size, model.device)

    @torch.inference_mode()
    def step() -> torch.Tensor:
        x = model.embed_tokens(batch.input_ids)
        cos, sin = model.rope(batch.positions)
        x = gpu_only_layers(model, batch, x, cos, sin)
        return model.head(x.index_select(0, batch.last_token_index))

    return timed(step, model.device, repeats)


def measure(
    model_dir: Path,
    device: str,
    dtype: str,
    batches: list[int],
    context: int,
    repeats: int,
    copy_mib: int = 1024,
) -> dict:
    model = LlamaModel(model_dir, device=device, dtype=dtype)
    bs = 16
    per_row = -(-(context + 1) // bs)
    model.init_cache(per_row * max(batches) + 1, bs)  # + the graphs' scratch block
    for t in (*model.kv.k, *model.kv.v):  # random KV: never time zeros
        t.normal_()
    graphs = DecodeGraphs(model, per_row, max_rows=bucket_for(max(batches)) or max(batches))
    bw = bandwidth(model.device, copy_mib)
    shape = model.shape
    kv_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim
    kv_token *= torch.tensor([], dtype=model.dtype).element_size()
    rows = []
    for b in batches:
        seqs = decode_rows(model, b, context)
        step, plain = decode_step_s(model, seqs, repeats)
        graph_step, graphed = timed(lambda s=seqs: graphs.run(s), model.device, repeats)
        floor = (model.weight_bytes + b * (context + 1) * kv_token) / bw
        diff = (graphed - plain).abs().max().item()
        rows.append(
            {
                "batch": b,
                "step_ms": 1e3 * step,
                "graph_step_ms": 1e3 * graph_step,
                "floor_ms": 1e3 * floor,
                "step_over_floor": step / floor,
                "graph_over_floor": graph_step / floor,
                "graph_logits_max_abs_diff": diff,
            }
        )
        print(
            f"batch {b:3}: step {1e3 * step:8.2f} ms, graphed {1e3 * graph_step:8.2f} ms, "
            f"floor {1e3 * floor:8.2f} ms, {step / floor:5.2f}x / {graph_step / floor:5.2f}x, "
            f"logits differ by {diff:.2e}"
        )
    name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    return {
        "device": name,
        "dtype": str(model.dtype),
        "model": model_dir.name,
        "weight_bytes": model.weight_bytes,
        "kv_bytes_per_token": kv_token,
        "context": context,
        "bandwidth_gb_s": bw / 1e9,
        "decode_kernel": "triton" if model.triton_decode else "gathered SDPA",
        "graphs": "captured" if graphs.graphs else "static path run eagerly (no CUDA)",
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--copy-mib", type=int, default=1024, help="the bandwidth probe's size")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    result = measure(
        args.model, args.device, args.dtype, batches, args.context, args.repeats, args.copy_mib
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
