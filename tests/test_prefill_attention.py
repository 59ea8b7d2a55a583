"""Prefill attention on the GPU tier's CPU twin: new prompts of different lengths run
as padded groups through SDPA's causal path and equal each prompt run alone; the
grouping bounds the padding; a chunk after a cached prefix equals the same tokens
computed with the prompt whole."""

from __future__ import annotations

import torch

from gpu_executor.batch import PAD_WASTE, SeqInput, group_by_length, pack
from gpu_executor.llama import LlamaModel


def test_grouping_covers_every_prompt_once_within_the_padding_bound():
    spans = [(i * 100, n) for i, n in enumerate([40, 3, 9, 10, 38, 1, 17])]
    groups = group_by_length(spans)
    assert sorted(s for g in groups for s in g) == sorted(spans)
    for g in groups:
        longest = max(n for _, n in g)
        assert g[0][1] == longest
        assert len(g) * longest <= PAD_WASTE * sum(n for _, n in g)
    assert len(groups) < len(spans)  # similar lengths do share a call
    assert group_by_length([(0, 5)]) == [[(0, 5)]]


def attend(model: LlamaModel, seqs: list[SeqInput]) -> torch.Tensor:
    """Layer 0's attention for a step of these rows, with fixed random q/k/v per token
    (seeded by position and token, so one prompt gets the same alone or in a batch)."""
    batch = pack(seqs, model.kv.block_size, model.device)
    s = model.shape
    rows = []
    for seq in seqs:
        for i, tok in enumerate(seq.token_ids):
            g = torch.Generator().manual_seed(1000 * tok + seq.start_pos + i)
            rows.append(torch.randn((s.num_heads + 2 * s.num_kv_heads, s.head_dim), generator=g))
    x = torch.stack(rows)
    q, k, v = x.split([s.num_heads, s.num_kv_heads, s.num_kv_heads], dim=1)
    k, v = k.contiguous(), v.contiguous()
    model.write_kv(0, k, v, batch.slot_mapping)
    return model.attention(0, q.contiguous(), batch, k, v)


def test_new_prompts_in_one_call_equal_each_prompt_alone(models):
    model = LlamaModel(models["tiny-gqa"], "cpu", "float32", decode_kernel="gather")
    model.init_cache(num_blocks=64, block_size=16)
    lens = [40, 3, 9, 10, 38, 17]
    seqs, next_block = [], 0
    for j, n in enumerate(lens):
        blocks = list(range(next_block, next_block + -(-n // 16)))
        next_block += len(blocks)
        seqs.append(SeqInput([j + 2] * n, 0, blocks))
    together = attend(model, seqs)
    assert len(pack(seqs, 16, model.device).new_prompts) < len(lens)
    start = 0
    for seq in seqs:
        alone = attend(model, [seq])
        n = len(seq.token_ids)
        assert (together[start : start + n] - alone).abs().max().item() < 1e-6
        start += n


def test_a_chunk_after_its_cached_prefix_equals_the_prompt_whole(models):
    model = LlamaModel(models["tiny-gqa"], "cpu", "float32", decode_kernel="gather")
    model.init_cache(num_blocks=16, block_size=16)
    table = [3, 7, 1]
    whole = attend(model, [SeqInput([5] * 40, 0, table)])
    first = attend(model, [SeqInput([5] * 24, 0, table)])
    rest = attend(model, [SeqInput([5] * 16, 24, table)])
    assert (torch.cat([first, rest]) - whole).abs().max().item() < 1e-5
