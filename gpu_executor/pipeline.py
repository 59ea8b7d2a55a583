"""Asymmetric pipelining (NEO's strategy): two sub-batches whose CPU attention hides
under each other's GPU work.

B1 holds the first `k` CPU rows; B0 holds everything else (the GPU rows, prefills and
the remaining CPU rows C0). Per layer l the GPU runs

    pre(B0, l) -> C0 ship, GPU attention of B0's GPU rows
    join B1(l) -> post(B1, l) -> pre(B1, l+1) -> B1 ship     (C0(l) computes meanwhile)
    join C0(l) -> post(B0, l)                                (B1(l+1) computes meanwhile)

so B1's CPU attention hides under B0's linear layers and attention, and C0's under
B1's. The price is reading every layer's weights twice. The exchange carries the two
parts as rows [0, k) and [k, n) with counters of their own, in the order the CPU
executor serves them: B1(l), C0(l), B1(l+1), ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gpu_executor.batch import PackedBatch
from gpu_executor.cpu_link import CpuLink

if TYPE_CHECKING:
    from gpu_executor.llama import LlamaRunner

B1, C0 = 0, 1  # exchange parts


def pipelined_layers(
    runner: LlamaRunner,
    batch: PackedBatch,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    link: CpuLink,
    k: int,
) -> torch.Tensor:
    cpu = batch.cpu
    assert cpu is not None and batch.gpu_token_index is not None
    n = len(cpu.context_lens)
    k = min(k, n)
    total = x.shape[0]
    dev = x.device
    b1 = cpu.token_index[:k]
    keep = torch.ones(total, dtype=torch.bool, device=dev)
    keep[b1] = False
    b0 = keep.nonzero().squeeze(1)  # ascending: B0 keeps the batch's token order
    local = torch.full((total,), -1, dtype=torch.int64, device=dev)
    local[b0] = torch.arange(b0.numel(), device=dev)
    c0 = local[cpu.token_index[k:]]  # C0 rows, as positions in B0
    g0 = local[batch.gpu_token_index]  # GPU-tier tokens, as positions in B0
    has_c0 = k < n
    link.begin(cpu, split=k)
    x1, x0 = x[b1], x[b0]
    cos1, sin1, cos0, sin0 = cos[b1], sin[b1], cos[b0], sin[b0]
    layers = runner.layers
    q_all = torch.empty(
        (total, runner.shape.num_heads, runner.shape.head_dim), dtype=x.dtype, device=dev
    )

    def ship_b1(li: int) -> None:
        q1, k1, v1 = runner.qkv(layers[li], x1, cos1, sin1)
        link.send(li, q1, k1, v1, part=B1)
        link.publish(li, part=B1)

    ship_b1(0)
    for li, lw in enumerate(layers):
        q0, k0, v0 = runner.qkv(lw, x0, cos0, sin0)
        if has_c0:
            link.send(li, q0[c0], k0[c0], v0[c0], part=C0)
        runner.write_kv(li, k0[g0], v0[g0], batch.slot_mapping)
        q_all.index_copy_(0, b0, q0)  # attention finds its rows by their batch index
        att = runner.attention(li, q_all, batch)
        if has_c0:
            link.publish(li, part=C0)
        x1 = runner.post(lw, x1, link.receive(li, x.dtype, part=B1))
        if li + 1 < len(layers):
            ship_b1(li + 1)
        att0 = att[b0]
        if has_c0:
            att0.index_copy_(0, c0, link.receive(li, x.dtype, part=C0))
        x0 = runner.post(lw, x0, att0)
    out = torch.empty_like(x)
    out.index_copy_(0, b0, x0)
    out.index_copy_(0, b1, x1)
    return out
