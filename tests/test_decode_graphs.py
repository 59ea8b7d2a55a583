"""The CUDA-graphed decode step's static path, run eagerly on the CPU (captured and
replayed on CUDA, in the GPU check: APEX_TEST_DEVICE=cuda): a batch padded to its bucket
gives the logits the ordinary forward gives, the padding writes only the scratch block,
and steps the graphs cannot serve are left to the ordinary path."""

from __future__ import annotations

import os

import pytest
import torch

from gpu_executor.batch import TIER_CPU, SeqInput, pack
from gpu_executor.decode_graphs import BUCKETS, DecodeGraphs, bucket_for
from gpu_executor.llama import LlamaModel
from gpu_executor.strategies import forward

DEVICE = os.environ.get("APEX_TEST_DEVICE", "cpu")


def test_buckets():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 16, 17, 256)] == [1, 2, 4, 8, 16, 32, 256]
    assert bucket_for(257) is None and BUCKETS[-1] == 256


def test_a_padded_bucket_gives_the_plain_forward_s_logits_and_touches_only_scratch(models):
    kernel = "auto" if DEVICE == "cuda" else "gather"
    model = LlamaModel(models["tiny-gqa"], DEVICE, "float32", decode_kernel=kernel)
    num_blocks, bs = 20, 16
    model.init_cache(num_blocks + 1, bs)  # + the scratch block
    g = torch.Generator().manual_seed(0)
    for t in (*model.kv.k, *model.kv.v):
        t.copy_(torch.randn(t.shape, generator=g))
    graphs = DecodeGraphs(model, max_blocks_per_seq=6, max_rows=8)
    assert graphs.scratch == num_blocks
    assert bool(graphs.graphs) == (DEVICE == "cuda")  # captured on CUDA only
    seqs = [
        SeqInput([5], 20, [3, 8]),
        SeqInput([9], 0, [11]),
        SeqInput([7], 70, [0, 1, 2, 4, 5]),
    ]
    before = [t.clone() for t in model.kv.k]
    got = graphs.run(seqs).clone()  # bucket 4: one padding row
    written = [
        (t != b).any(dim=(1, 2, 3)).nonzero().flatten().tolist()
        for t, b in zip(model.kv.k, before, strict=True)
    ]
    # each layer wrote the three rows' slots and the padding's scratch slot, nothing else
    assert all(w == sorted({8, 11, 5, num_blocks}) for w in written), written
    # the plain forward writes the same K and V to the rows' slots, then attends
    want = forward(model, pack(seqs, bs, model.device), None)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5


def test_steps_the_graphs_cannot_serve_go_the_ordinary_way(models):
    model = LlamaModel(models["tiny"], "cpu", "float32", decode_kernel="gather")
    model.init_cache(9, 16)
    graphs = DecodeGraphs(model, max_blocks_per_seq=2, max_rows=4)
    assert graphs.serves([SeqInput([1], 3, [0])])
    assert not graphs.serves([SeqInput([1, 2], 0, [0])])  # a prompt
    assert not graphs.serves([SeqInput([1], 3, [0], TIER_CPU)])  # a CPU row
    assert not graphs.serves([SeqInput([1], 40, [0, 1, 2])])  # wider than the tables
    assert not graphs.serves([SeqInput([1], 3, [0])] * 5)  # past the largest bucket
    assert not graphs.serves([])
    with pytest.raises(ValueError, match="max_blocks_per_seq"):
        DecodeGraphs(model, max_blocks_per_seq=0)
