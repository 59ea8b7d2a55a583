"""Paged attention in Triton: each decode row, and each prompt chunk that continues a
cached prefix, reads its K and V blocks where they lie in the cache, with no gathered
copy and no mask tensor.

Bytes per step: the gathered path reads every block of the batch's padded tables, writes
them out as a dense copy and reads that again (about 3x the cache bytes the step needs);
this reads each owned block once. Work is split three ways: one program per (row, KV
head, split of the context). A program serves all the query heads of its KV head (GQA:
the K and V it loads are shared by the group) and walks its split's blocks with an
online softmax; a split's partial result (its max, its sum of exponentials and its
normalised output) is merged across splits afterwards, so that long contexts use many
programs (flash-decoding's split-K).

A prompt chunk after a cached prefix (chunked prefill, shared prompt blocks) is the
other kernel: one program per (chunk, tile of its query rows, KV head) walks the
chunk's blocks once per tile up to the tile's causal limit, with two matmuls a block
(`tl.dot`, fp32 accumulation) and the causal mask computed, not stored.

Runs on CUDA, and on CPU tensors under Triton's interpreter (`TRITON_INTERPRET=1`),
which is how CI tests it. Triton is optional: `available()` says whether it imports;
nothing on the CPU serving path needs it.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the serving path does not need it
    triton = None
    tl = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _paged_decode_split(
        q_ptr,  # (B, H, D)
        k_ptr,  # (num_blocks, BS, KVH, D)
        v_ptr,
        tables_ptr,  # (B, max_blocks) int
        lens_ptr,  # (B,) int
        out_ptr,  # (B, KVH, S, GP, D) fp32: the split's normalised output
        max_ptr,  # (B, KVH, S, GP) fp32
        sum_ptr,  # (B, KVH, S, GP) fp32
        scale,
        stride_qb,
        stride_qh,
        stride_kn,
        stride_kb,
        stride_kh,
        stride_tb,
        blocks_per_split,
        num_splits,
        G: tl.constexpr,  # query heads per KV head
        GP: tl.constexpr,  # G padded to a power of two
        BS: tl.constexpr,  # block size
        D: tl.constexpr,  # head dim
        KVH: tl.constexpr,
    ):
        row = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        ctx = tl.load(lens_ptr + row)
        num_blocks = tl.cdiv(ctx, BS)
        first = split * blocks_per_split
        last = tl.minimum(first + blocks_per_split, num_blocks)

        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        t = tl.arange(0, BS)
        g_ok = g < G
        heads = kvh * G + g
        q = tl.load(
            q_ptr + row * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=g_ok[:, None],
            other=0.0,
        ).to(tl.float32)

        m = tl.full((GP,), float("-inf"), tl.float32)
        s = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, D), tl.float32)
        for b in range(first, last):
            block = tl.load(tables_ptr + row * stride_tb + b).to(tl.int64)
            pos = b * BS + t
            valid = pos < ctx
            base = block * stride_kn + t[:, None] * stride_kb + kvh * stride_kh + d[None, :]
            k = tl.load(k_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # (GP, BS)
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            # a row with nothing yet (m_new still -inf) keeps zeros instead of NaNs
            alpha = tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new))
            p = tl.where(valid[None, :], tl.exp(scores - m_new[:, None]), 0.0)
            s = s * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new

        part = ((row * KVH + kvh) * num_splits + split) * GP + g
        out = acc / tl.where(s > 0, s, 1.0)[:, None]
        tl.store(out_ptr + part[:, None] * D + d[None, :], out)
        tl.store(max_ptr + part, m)
        tl.store(sum_ptr + part, s)


if triton is not None:

    @triton.jit
    def _paged_prefill(
        q_ptr,  # (T, H, D): the batch's tokens
        k_ptr,  # (num_blocks, BS, KVH, D), this chunk's own K and V already written
        v_ptr,
        out_ptr,  # (T, H, D)
        tables_ptr,  # (S, max_blocks) int
        token_start_ptr,  # (S,) first token of each chunk in q
        lens_ptr,  # (S,) tokens in each chunk
        start_pos_ptr,  # (S,) position of each chunk's first token
        scale,
        stride_qt,
        stride_qh,
        stride_ot,
        stride_oh,
        stride_kn,
        stride_kb,
        stride_kh,
        stride_tb,
        G: tl.constexpr,
        GP: tl.constexpr,
        BM: tl.constexpr,  # query rows per tile
        BS: tl.constexpr,
        D: tl.constexpr,
        F32_DOTS: tl.constexpr,  # the dots in full fp32 (no TF32); see f32_dots()
    ):
        chunk = tl.program_id(0)
        tile = tl.program_id(1)
        kvh = tl.program_id(2)
        n = tl.load(lens_ptr + chunk)
        if tile * BM >= n:
            return
        tok0 = tl.load(token_start_ptr + chunk)
        start = tl.load(start_pos_ptr + chunk)

        i = tl.arange(0, BM * GP)  # (query row, head of the group), flattened
        row = tile * BM + i // GP
        g = i % GP
        ok = (row < n) & (g < G)
        heads = kvh * G + g
        d = tl.arange(0, D)
        t = tl.arange(0, BS)
        q = tl.load(
            q_ptr + (tok0 + row)[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
            mask=ok[:, None],
            other=0.0,
        )
        if F32_DOTS:
            q = q.to(tl.float32)
        pos_q = start + row  # each query's own position: it sees keys at <= it
        limit = start + tl.minimum(n, (tile + 1) * BM)  # the tile's last position + 1

        m = tl.full((BM * GP,), float("-inf"), tl.float32)
        s = tl.zeros((BM * GP,), tl.float32)
        acc = tl.zeros((BM * GP, D), tl.float32)
        for b in range(0, tl.cdiv(limit, BS)):
            block = tl.load(tables_ptr + chunk * stride_tb + b).to(tl.int64)
            pos = b * BS + t
            valid = pos < limit
            base = block * stride_kn + t[:, None] * stride_kb + kvh * stride_kh + d[None, :]
            k = tl.load(k_ptr + base, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + base, mask=valid[:, None], other=0.0)
            if F32_DOTS:
                k, v = k.to(tl.float32), v.to(tl.float32)
                scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                scores = tl.dot(q, tl.trans(k)) * scale  # (BM * GP, BS), fp32
            seen = (pos[None, :] <= pos_q[:, None]) & valid[None, :]
            scores = tl.where(seen, scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new))
            p = tl.where(seen, tl.exp(scores - m_new[:, None]), 0.0)
            s = s * alpha + tl.sum(p, axis=1)
            if F32_DOTS:  # noqa: SIM108 - a constexpr branch, compiled one way
                pv = tl.dot(p, v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m = m_new

        out = acc / tl.where(s > 0, s, 1.0)[:, None]
        tl.store(
            out_ptr + (tok0 + row)[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=ok[:, None],
        )


def paged_prefill_attention(
    q: torch.Tensor,
    out: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_starts: torch.Tensor,
    lens: torch.Tensor,
    start_positions: torch.Tensor,
    max_len: int,
    scale: float,
    block_m: int = 16,
) -> None:
    """Prompt chunks that continue a cached prefix, each over its own blocks (its new
    K and V already in them), causal within the chunk. q and out (T, H, D): the chunks'
    rows of out are written, the other rows left alone; tables (S, max_blocks); the
    rest (S,). tl.dot needs 16 or more on each side: block size and head dim >= 16."""
    group, padded = head_groups(q, k_cache, smallest=16)
    kv_heads, block_size, dim = k_cache.shape[2], k_cache.shape[1], q.shape[2]
    block_m = max(block_m, -(-16 // padded))  # BM x GP >= 16 rows for tl.dot
    tables = block_tables.contiguous()
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    grid = (tables.shape[0], -(-max_len // block_m), kv_heads)
    _paged_prefill[grid](
        q,
        k_cache,
        v_cache,
        out,
        tables,
        token_starts.contiguous(),
        lens.contiguous(),
        start_positions.contiguous(),
        scale,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        tables.stride(0),
        G=group,
        GP=padded,
        BM=block_m,
        BS=block_size,
        D=dim,
        F32_DOTS=f32_dots(k_cache.dtype),
    )


def head_groups(q: torch.Tensor, k_cache: torch.Tensor, smallest: int = 1) -> tuple[int, int]:
    """(query heads per KV head, that padded to a power of two) for q (..., H, D) over a
    cache (blocks, block size, KVH, D); shapes a kernel cannot serve are refused."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    heads, dim = q.shape[-2:]
    _, block_size, kv_heads, _ = k_cache.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not group over {kv_heads} KV heads")
    if dim & (dim - 1) or block_size & (block_size - 1) or min(dim, block_size) < smallest:
        raise ValueError(
            f"head dim {dim} and block size {block_size} must be powers of two, >= {smallest}"
        )
    group = heads // kv_heads
    return group, max(1, 1 << (group - 1).bit_length())


def f32_dots(dtype: torch.dtype) -> bool:
    """An fp32 cache gets fp32 dots (TF32 would cost exactness against transformers);
    so does bf16 under the interpreter, whose bf16 tl.dot returns garbage (triton 3.9,
    checked). fp16 and, on CUDA, bf16 dot in their own type with fp32 accumulation."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreted)


def splits_for(max_blocks: int, rows: int, kv_heads: int, target_programs: int = 128) -> int:
    """Enough splits that rows x KV heads x splits fills the device, none of them empty
    of blocks on the longest context."""
    want = max(1, math.ceil(target_programs / max(1, rows * kv_heads)))
    return max(1, min(want, max_blocks))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q (B, H, D); caches (num_blocks, block_size, KVH, D) in fp32, fp16 or bf16;
    tables (B, max_blocks); lens (B,), each >= 1. Returns (B, H, D) in q's dtype."""
    group, padded = head_groups(q, k_cache)
    rows, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    max_blocks = block_tables.shape[1]
    splits = num_splits or splits_for(max_blocks, rows, kv_heads)
    per_split = -(-max_blocks // splits)
    q = q.contiguous()
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    tables = block_tables.contiguous()
    f32 = dict(dtype=torch.float32, device=q.device)
    out = torch.empty((rows, kv_heads, splits, padded, dim), **f32)
    maxes = torch.empty((rows, kv_heads, splits, padded), **f32)
    sums = torch.empty((rows, kv_heads, splits, padded), **f32)
    _paged_decode_split[(rows, kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        tables,
        context_lens.contiguous(),
        out,
        maxes,
        sums,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        tables.stride(0),
        per_split,
        splits,
        G=group,
        GP=padded,
        BS=block_size,
        D=dim,
        KVH=kv_heads,
    )
    return merge_splits(out, maxes, sums)[:, :, :group].reshape(rows, heads, dim).to(q.dtype)


def merge_splits(out: torch.Tensor, maxes: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """Softmax over the whole context from each split's (max, sum, normalised output):
    weights sum_s x exp(max_s - max); empty splits (sum 0) weigh nothing."""
    top = maxes.amax(dim=2, keepdim=True)
    weight = sums * torch.exp(torch.where(sums > 0, maxes - top, torch.zeros_like(maxes)))
    weight = torch.where(sums > 0, weight, torch.zeros_like(weight))
    total = weight.sum(dim=2)
    merged = (out * weight[..., None]).sum(dim=2) / total.clamp_min(1e-30)[..., None]
    return merged  # (B, KVH, GP, D)
