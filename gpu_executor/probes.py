"""Subtask timings for the profiler, measured in this process on the real code paths.

Each probe runs one subtask of a decoder layer at one size, the way a step runs it
(the same `qkv`/`post`, the same paged decode attention, the same exchange to the CPU
executor), and reports the median over repeats. The scheduler calls these only while no
request holds KV: the attention probes write into cache blocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from gpu_executor.cpu_link import CpuLink, CpuRows
from gpu_executor.llama import LlamaModel, sync

KINDS = ("linear", "gpu_attention", "cpu_attention", "head", "transfer")


class ProbeError(ValueError):
    """A probe this executor cannot run as asked (the message says why)."""


def time_it(fn: Callable[[int], None], repeats: int, device: torch.device) -> tuple[float, float]:
    fn(0)  # warm-up: allocations, kernel selection
    sync(device)
    times = []
    for i in range(max(repeats, 1)):
        t = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    times.sort()
    lo, hi = times[len(times) // 10], times[(9 * len(times)) // 10]
    return med, (hi - lo) / med if med > 0 else 0.0


def block_tables(rows: int, context: int, block_size: int, num_blocks: int) -> torch.Tensor:
    """Distinct blocks per row while the tier has them (wrapping after), so the probe
    reads as many bytes as real rows of that context would."""
    per = -(-context // block_size)
    return (torch.arange(rows * per) % num_blocks).view(rows, per)


def probe(
    model: LlamaModel,
    link: CpuLink | None,
    kind: str,
    tokens: int,
    rows: int,
    context: int,
    nbytes: int,
    repeats: int,
) -> tuple[float, float]:
    if kind not in KINDS:
        raise ProbeError(f"kind must be one of {KINDS}, not {kind!r}")
    s, dev, dt = model.shape, model.device, model.dtype
    layers = model.layers
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return (0.1 * torch.randn(*shape, generator=gen)).to(dev, dt)

    if kind in ("linear", "head"):
        if tokens < 1:
            raise ProbeError("tokens must be >= 1")
        x = randn(tokens, s.hidden_size)
        if kind == "head":

            def head(i: int) -> None:
                model.head(x).argmax(dim=-1)

            return time_it(head, repeats, dev)
        cos, sin = model.rope(torch.arange(tokens, device=dev))

        def linear(i: int) -> None:
            lw = layers[i % len(layers)]
            q, _, _ = model.qkv(lw, x, cos, sin)
            model.post(lw, x, q)

        return time_it(linear, repeats, dev)
    if kind == "transfer":
        if nbytes < 4:
            raise ProbeError("bytes must be >= 4")
        src = torch.zeros(nbytes // 4, dtype=torch.float32, device=dev)
        dst = torch.empty(nbytes // 4, dtype=torch.float32, pin_memory=dev.type == "cuda")

        def transfer(i: int) -> None:
            dst.copy_(src, non_blocking=True)
            sync(dev)
            src.copy_(dst, non_blocking=True)

        return time_it(transfer, repeats, dev)
    if rows < 1 or context < 1:
        raise ProbeError("rows and context must be >= 1")
    q = randn(rows, s.num_heads, s.head_dim)
    if kind == "gpu_attention":
        cache = model.cache
        if cache is None:
            raise ProbeError("no GPU KV cache: InitCache first")
        tables = block_tables(rows, context, cache.block_size, cache.num_blocks).to(dev)
        lens = torch.full((rows,), context, dtype=torch.int64, device=dev)

        def gatt(i: int) -> None:
            model.decode_attention(i % len(layers), q, tables, lens)

        return time_it(gatt, repeats, dev)
    if link is None:
        raise ProbeError("no CPU tier is attached")
    if rows > link.xl.max_rows or -(-context // link.tier.block_size) > link.xl.max_blocks_per_seq:
        raise ProbeError(
            f"{rows} rows of {context} tokens exceed the exchange "
            f"({link.xl.max_rows} rows, {link.xl.max_blocks_per_seq} blocks per row)"
        )
    bs = link.tier.block_size
    tables = block_tables(rows, context, bs, link.tier.num_blocks)
    pos = context - 1
    cpu_rows = CpuRows(
        token_index=torch.arange(rows, device=dev),
        block_tables=tables.tolist(),
        context_lens=[context] * rows,
        slots=[int(t[pos // bs]) * bs + pos % bs for t in tables],
    )
    kv = randn(rows, s.num_kv_heads, s.head_dim)

    def catt(i: int) -> None:
        link.begin(cpu_rows)
        for li in range(len(layers)):
            link.send(li, q, kv, kv)
            link.publish(li)
            link.receive(li, dt)
        link.finish()

    med, spread = time_it(catt, repeats, dev)
    return med / len(layers), spread  # per layer, data plane included
