"""How one step's layers run: the three strategies, composed from the model's pieces.

- GPU-only: every row's attention on the GPU, layer after layer.
- Asynchronous overlap (APEX): one batch. Per layer the CPU rows' q/k/v leave for the
  CPU executor first, the GPU attends to its own rows meanwhile, and the join waits only
  just before the O projection.
- Asymmetric pipelining (NEO): two sub-batches whose CPU attention hides under each
  other's GPU work (below).

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

import torch

from gpu_executor.batch import PackedBatch
from gpu_executor.cpu_link import CpuLink, CpuRows
from gpu_executor.llama import LlamaModel

B1, C0 = 0, 1  # exchange parts


@torch.inference_mode()
def forward(
    model: LlamaModel, batch: PackedBatch, link: CpuLink | None, pipeline_rows: int = 0
) -> torch.Tensor:
    """The logits of each sequence's last token, (S, vocab), in fp32. pipeline_rows > 0
    runs asymmetric pipelining with that many CPU rows in B1."""
    cpu = batch.cpu
    cos, sin = model.rope(batch.positions)
    x = model.embed_tokens(batch.input_ids)
    if cpu is None:
        x = gpu_only_layers(model, batch, x, cos, sin)
    elif link is None:
        raise RuntimeError("CPU-placed rows but no CPU tier is attached")
    elif batch.gpu_token_index is None:
        raise RuntimeError("a batch with CPU rows must say which tokens stay on the GPU")
    elif pipeline_rows > 0:
        x = pipelined_layers(model, batch, cpu, x, cos, sin, link, pipeline_rows)
    else:
        x = overlap_layers(model, batch, cpu, x, cos, sin, link)
    return model.head(x.index_select(0, batch.last_token_index))


def gpu_only_layers(
    model: LlamaModel, batch: PackedBatch, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    for li, lw in enumerate(model.layers):
        q, k, v = model.qkv(lw, x, cos, sin)
        model.write_kv(li, k, v, batch.slot_mapping)
        x = model.post(lw, x, model.attention(li, q, batch, k, v))
    return x


def overlap_layers(
    model: LlamaModel,
    batch: PackedBatch,
    cpu: CpuRows,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    link: CpuLink,
) -> torch.Tensor:
    link.begin(cpu)
    ci, gi = cpu.token_index, batch.gpu_token_index
    for li, lw in enumerate(model.layers):
        q, k, v = model.qkv(lw, x, cos, sin)
        link.send(li, q[ci], k[ci], v[ci])
        model.write_kv(li, k[gi], v[gi], batch.slot_mapping)
        att = model.attention(li, q, batch, k, v)
        link.publish(li)
        att.index_copy_(0, ci, link.receive(li, att.dtype))
        x = model.post(lw, x, att)
    return x


def pipelined_layers(
    model: LlamaModel,
    batch: PackedBatch,
    cpu: CpuRows,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    link: CpuLink,
    k: int,
) -> torch.Tensor:
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
    layers = model.layers
    q_all = torch.empty(
        (total, model.shape.num_heads, model.shape.head_dim), dtype=x.dtype, device=dev
    )
    # New prompts attend over their own K and V, in batch order like q_all (only built
    # when the step has prompts: decode-only steps read the cache alone).
    kv_shape = (total, model.shape.num_kv_heads, model.shape.head_dim)
    k_all = torch.empty(kv_shape, dtype=x.dtype, device=dev) if batch.new_prompts else None
    v_all = torch.empty(kv_shape, dtype=x.dtype, device=dev) if batch.new_prompts else None

    def ship_b1(li: int) -> None:
        q1, k1, v1 = model.qkv(layers[li], x1, cos1, sin1)
        link.send(li, q1, k1, v1, part=B1)
        link.publish(li, part=B1)

    ship_b1(0)
    for li, lw in enumerate(layers):
        q0, k0, v0 = model.qkv(lw, x0, cos0, sin0)
        if has_c0:
            link.send(li, q0[c0], k0[c0], v0[c0], part=C0)
        model.write_kv(li, k0[g0], v0[g0], batch.slot_mapping)
        q_all.index_copy_(0, b0, q0)  # attention finds its rows by their batch index
        if k_all is not None and v_all is not None:
            k_all.index_copy_(0, b0, k0)
            v_all.index_copy_(0, b0, v0)
        att = model.attention(li, q_all, batch, k_all, v_all)
        if has_c0:
            link.publish(li, part=C0)
        x1 = model.post(lw, x1, link.receive(li, x.dtype, part=B1))
        if li + 1 < len(layers):
            ship_b1(li + 1)
        att0 = att[b0]
        if has_c0:
            att0.index_copy_(0, c0, link.receive(li, x.dtype, part=C0))
        x0 = model.post(lw, x0, att0)
    out = torch.empty_like(x)
    out.index_copy_(0, b0, x0)
    out.index_copy_(0, b1, x1)
    return out
