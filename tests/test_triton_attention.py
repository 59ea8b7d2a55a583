"""The Triton paged decode kernel on the CPU, under Triton's interpreter: against a
float64 reference over the same blocks, with every slot past a context and every block
a row does not own poisoned with NaN (a read of one would show). Grouped and multi-head
KV, fp32/fp16/bf16 caches, ragged contexts, block sizes 16 and 32, batch 1-64, contexts
1-8k, split-K with the merge."""

from __future__ import annotations

import os

# `APEX_TEST_DEVICE=cuda` (the GPU check) compiles the kernel for real; on the CPU it
# runs under the interpreter, which must be switched on before triton is imported.
DEVICE = os.environ.get("APEX_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton_attention = pytest.importorskip("gpu_executor.triton_attention")
if not triton_attention.available():  # pragma: no cover
    pytest.skip("triton is not installed", allow_module_level=True)

# Per cache dtype: the kernel computes in fp32 over values stored in the dtype; the
# reference computes in float64 over the same stored values.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_case(rows, heads, kv_heads, dim, block_size, lens, dtype, seed=0):
    """Caches with each row's blocks scattered at random, the rest poisoned."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    num_blocks = sum(need) + 3
    shape = (num_blocks, block_size, kv_heads, dim)
    k = torch.full(shape, float("nan"), dtype=dtype)
    v = torch.full(shape, float("nan"), dtype=dtype)
    order = torch.randperm(num_blocks, generator=g).tolist()
    width = max(need)
    tables = torch.zeros((rows, width), dtype=torch.int64)  # padding: block 0, not owned
    for r, (n, b) in enumerate(zip(lens, need, strict=True)):
        own = [order.pop() for _ in range(b)]
        tables[r, :b] = torch.tensor(own)
        for i, block in enumerate(own):
            filled = min(block_size, n - i * block_size)  # slots past the context stay NaN
            k[block, :filled] = torch.randn((filled, kv_heads, dim), generator=g).to(dtype)
            v[block, :filled] = torch.randn((filled, kv_heads, dim), generator=g).to(dtype)
    q = torch.randn((rows, heads, dim), generator=g).to(dtype)
    lens_t = torch.tensor(lens, dtype=torch.int64)
    return tuple(t.to(DEVICE) for t in (q, k, v, tables, lens_t))


def reference(q, k, v, tables, lens, scale):
    """float64 softmax(q k^T) v over each row's own slots, read through its table."""
    q, k, v, tables, lens = (t.cpu() for t in (q, k, v, tables, lens))
    rows, heads, dim = q.shape
    kv_heads = k.shape[2]
    out = torch.empty((rows, heads, dim), dtype=torch.float64)
    for r in range(rows):
        n = int(lens[r])
        kr = k[tables[r]].reshape(-1, kv_heads, dim)[:n].double()
        vr = v[tables[r]].reshape(-1, kv_heads, dim)[:n].double()
        group = heads // kv_heads
        kr, vr = kr.repeat_interleave(group, dim=1), vr.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[r].double(), kr) * scale
        out[r] = torch.einsum("hn,nhd->hd", scores.softmax(-1), vr)
    return out


CASES = [
    # rows, heads, kv heads, dim, block size, contexts, dtype, splits (None: automatic)
    (1, 4, 4, 16, 16, [1], torch.float32, None),
    (3, 8, 2, 32, 16, [5, 16, 17], torch.float32, None),
    (64, 8, 2, 16, 16, [1 + (i * 37) % 120 for i in range(64)], torch.float32, 1),
    (16, 4, 1, 32, 32, [1 + (i * 131) % 700 for i in range(16)], torch.float16, None),
    (5, 6, 2, 16, 32, [33, 64, 65, 1, 300], torch.bfloat16, 3),
    (2, 8, 2, 16, 32, [8192, 4097], torch.float32, 16),
    (1, 4, 4, 16, 16, [3000], torch.float16, 8),
]


@pytest.mark.parametrize(
    ("rows", "heads", "kv_heads", "dim", "bs", "lens", "dtype", "splits"),
    CASES,
    ids=[f"b{c[0]}-h{c[1]}/{c[2]}-bs{c[4]}-max{max(c[5])}-{str(c[6])[6:]}" for c in CASES],
)
def test_kernel_matches_float64_over_poisoned_caches(
    rows, heads, kv_heads, dim, bs, lens, dtype, splits
):
    q, k, v, tables, ctx = make_case(rows, heads, kv_heads, dim, bs, lens, dtype)
    scale = dim**-0.5
    got = triton_attention.paged_decode_attention(q, k, v, tables, ctx, scale, splits)
    assert got.dtype == dtype and got.shape == (rows, heads, dim)
    assert torch.isfinite(got.float()).all()
    want = reference(q, k, v, tables, ctx, scale)
    err = (got.double().cpu() - want).abs().max().item()
    assert err < TOLERANCE[dtype], err


def test_the_split_count_does_not_change_the_answer():
    q, k, v, tables, ctx = make_case(2, 4, 2, 16, 16, [500, 77], torch.float32, seed=3)
    one = triton_attention.paged_decode_attention(q, k, v, tables, ctx, 0.25, 1)
    many = triton_attention.paged_decode_attention(q, k, v, tables, ctx, 0.25, 7)
    assert (one - many).abs().max().item() < 1e-5
    # the poison is live: one slot past row 0's context (a NaN in its last block) shows
    over = triton_attention.paged_decode_attention(
        q, k, v, tables, ctx + torch.tensor([1, 0]), 0.25
    )
    assert torch.isnan(over[0]).all() and torch.isfinite(over[1]).all()


def test_shapes_it_cannot_serve_are_refused():
    q, k, v, tables, ctx = make_case(1, 6, 4, 16, 16, [3], torch.float32)
    with pytest.raises(ValueError, match="group"):
        triton_attention.paged_decode_attention(q, k, v, tables, ctx, 1.0)


def test_the_model_s_decode_attention_gives_the_same_through_the_kernel(models):
    """The GPU executor's own call, on its real cache layout: the kernel and the
    gathered SDPA path agree."""
    from gpu_executor.llama import LlamaModel

    model = LlamaModel(models["tiny-gqa"], DEVICE, "float32", decode_kernel="triton")
    assert model.triton_decode
    model.init_cache(num_blocks=12, block_size=16)
    g = torch.Generator().manual_seed(1)
    for t in (model.kv.k[0], model.kv.v[0]):
        t.copy_(torch.randn(t.shape, generator=g))
    s = model.shape
    q = torch.randn((3, s.num_heads, s.head_dim), generator=g).to(DEVICE)
    tables = torch.tensor([[4, 7, 1], [0, 0, 0], [11, 2, 0]], device=DEVICE)
    lens = torch.tensor([40, 9, 17], device=DEVICE)
    kernel = model.decode_attention(0, q, tables, lens)
    model.triton_decode = False
    gathered = model.decode_attention(0, q, tables, lens)
    assert (kernel - gathered).abs().max().item() < 1e-5


def prefill_case(chunks, heads, kv_heads, dim, bs, dtype, seed=0):
    """chunks: (cached prefix, new tokens) each. Every chunk's blocks hold its prefix and
    its own new K and V (written before attention, as the executor does); slots past
    each chunk's end and unowned blocks are NaN. q rows of the chunks, laid end to end,
    with one unrelated row first (the kernel must leave its output alone)."""
    lens = [p + n for p, n in chunks]
    _, k, v, tables, _ = make_case(len(chunks), heads, kv_heads, dim, bs, lens, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    total = 1 + sum(n for _, n in chunks)
    q = torch.randn((total, heads, dim), generator=g).to(dtype).to(DEVICE)
    starts = [1 + sum(n for _, n in chunks[:i]) for i in range(len(chunks))]
    meta = [
        torch.tensor(x, dtype=torch.int64, device=DEVICE)
        for x in (starts, [n for _, n in chunks], [p for p, _ in chunks])
    ]
    return q, k, v, tables, meta


def prefill_reference(q, k, v, tables, chunks, starts, scale):
    """float64: each new token over its chunk's slots up to and including its own."""
    q, k, v, tables = (t.cpu() for t in (q, k, v, tables))
    heads, dim, kv_heads = q.shape[1], q.shape[2], k.shape[2]
    want = {}
    for c, ((prefix, n), s0) in enumerate(zip(chunks, starts, strict=True)):
        kr = k[tables[c]].reshape(-1, kv_heads, dim).double()
        vr = v[tables[c]].reshape(-1, kv_heads, dim).double()
        group = heads // kv_heads
        kr, vr = kr.repeat_interleave(group, dim=1), vr.repeat_interleave(group, dim=1)
        for i in range(n):
            ctx = prefix + i + 1
            scores = torch.einsum("hd,nhd->hn", q[s0 + i].double(), kr[:ctx]) * scale
            want[s0 + i] = torch.einsum("hn,nhd->hd", scores.softmax(-1), vr[:ctx])
    return want


PREFILL_CASES = [
    # chunks (prefix, new), heads, kv heads, dim, block size, dtype
    ([(16, 5)], 4, 4, 16, 16, torch.float32),
    ([(37, 40), (0, 3), (512, 17)], 8, 2, 32, 16, torch.float32),
    ([(100, 33), (5, 64)], 8, 1, 16, 32, torch.float16),
    ([(64, 20)], 6, 2, 16, 32, torch.bfloat16),
]


@pytest.mark.parametrize(
    ("chunks", "heads", "kv_heads", "dim", "bs", "dtype"),
    PREFILL_CASES,
    ids=[f"{len(c[0])}chunks-h{c[1]}/{c[2]}-bs{c[4]}-{str(c[5])[6:]}" for c in PREFILL_CASES],
)
def test_prefill_kernel_continues_a_cached_prefix_exactly(chunks, heads, kv_heads, dim, bs, dtype):
    q, k, v, tables, (starts, lens, positions) = prefill_case(
        chunks, heads, kv_heads, dim, bs, dtype
    )
    out = torch.full_like(q, 7.0)
    scale = dim**-0.5
    triton_attention.paged_prefill_attention(
        q, out, k, v, tables, starts, lens, positions, max(n for _, n in chunks), scale
    )
    want = prefill_reference(q, k, v, tables, chunks, starts.tolist(), scale)
    got = out.cpu()
    assert (got[0] == 7.0).all(), "a row outside the chunks was written"
    err = max((got[i].double() - w).abs().max().item() for i, w in want.items())
    assert err < TOLERANCE[dtype], err


def test_the_model_s_continued_prefill_gives_the_same_through_the_kernel(models):
    """The executor's attention() over a batch with a prompt chunk after a cached prefix,
    a decode row and a new prompt: the kernel path and the gathered SDPA path agree."""
    from gpu_executor.batch import SeqInput, pack
    from gpu_executor.llama import LlamaModel

    model = LlamaModel(models["tiny-gqa"], DEVICE, "float32", decode_kernel="triton")
    model.init_cache(num_blocks=12, block_size=16)
    assert model.triton_prefill  # the chunk below goes through the paged prefill kernel
    g = torch.Generator().manual_seed(2)
    for t in (model.kv.k[0], model.kv.v[0]):
        t.copy_(torch.randn(t.shape, generator=g))
    seqs = [
        SeqInput(list(range(3, 23)), 30, [5, 9, 2, 0]),  # positions 30..49 after a prefix
        SeqInput([4], 20, [7, 8]),
        SeqInput(list(range(3, 12)), 0, [10]),
    ]
    batch = pack(seqs, 16, torch.device(DEVICE))
    s = model.shape
    q = torch.randn((batch.input_ids.shape[0], s.num_heads, s.head_dim), generator=g).to(DEVICE)
    k = torch.randn((q.shape[0], s.num_kv_heads, s.head_dim), generator=g).to(DEVICE)
    v = torch.randn_like(k)
    model.write_kv(0, k, v, batch.slot_mapping)
    kernel = model.attention(0, q, batch, k, v)
    model.triton_decode = model.triton_prefill = False
    gathered = model.attention(0, q, batch, k, v)
    assert (kernel - gathered).abs().max().item() < 1e-5
