"""The backbone: greedy output equals transformers' generate, token for token (fp32).

Through the real processes and gRPC: prompts of different lengths are sent at once and
staggered in time, so that requests join and leave running batches (continuous
batching) and prefills share iterations with decodes.
"""

from __future__ import annotations

import pytest

from tests.factories import (
    PREEMPT_OUTPUT_LENGTHS,
    assert_matches_hf,
    hf_greedy,
    make_prompts,
    run_concurrently,
    run_under_pressure,
    running_stack,
)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_greedy_equals_transformers(preset, models, request):
    stack = request.getfixturevalue("tiny_stack" if preset == "tiny" else "gqa_stack")
    with stack.client() as c:
        vocab = c.model_info().vocab_size
    prompts = make_prompts(vocab, seed=len(preset))
    assert_matches_hf(models[preset], prompts, run_concurrently(stack, prompts))
    if preset == "tiny-gqa":  # its stack runs --cuda-graphs: decode took the static path
        assert "first static decode step" in stack.logs()


def test_text_prompts_equal_transformers(tiny_stack, models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["tiny"]))
    texts = ["Hello, world!", "The scheduler keeps a queue", "def generate(prompt):", "你好 🎉"]
    with tiny_stack.client() as c:
        for text in texts:
            res = c.generate(text, max_tokens=16, temperature=0.0, ignore_eos=True)
            ids = tok(text).input_ids
            assert list(res.token_ids) == hf_greedy(models["tiny"], ids, 16), text
            assert res.usage.prompt_tokens == len(ids)
            assert res.text == tok.decode(res.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_greedy_exact_under_preemption(preset, models, tmp_path):
    # 24 blocks of 16 tokens hold 384 tokens; the six requests need ~850 together, so
    # the scheduler must preempt and recompute, and still match token for token.
    args = ["--gpu-blocks", "24", "--max-model-len", "384"]
    with running_stack(models[preset], tmp_path, scheduler_args=args) as stack:
        prompts, results = run_under_pressure(stack, seed=7)
        with stack.client() as c:
            status = c.status()
        assert status.preemptions > 0, "the block budget was meant to force preemption"
        assert sum(r.usage.preemptions for r in results) == status.preemptions
        assert status.tiers[0].blocks_used == 0
        assert_matches_hf(models[preset], prompts, results, PREEMPT_OUTPUT_LENGTHS)


def test_chunked_prefill_is_exact_and_keeps_each_iteration_within_the_budget(models, tmp_path):
    """Prompts up to 250 tokens against a budget of 24 tokens an iteration: they come in
    by chunks, beside the decode rows of the others, and the output does not change."""
    args = ["--max-num-batched-tokens", "24"]
    with (
        running_stack(models["tiny-gqa"], tmp_path, scheduler_args=args) as stack,
        stack.client() as c,
    ):
        prompts = make_prompts(c.model_info().vocab_size, seed=5)
        results = run_concurrently(stack, prompts)
        trace = c.trace(1000)
    assert_matches_hf(models["tiny-gqa"], prompts, results)
    assert all(t.prefill_tokens + t.gpu_rows + t.cpu_rows <= 24 for t in trace)
    assert any(t.prefill_tokens and t.gpu_rows for t in trace)  # chunks beside decodes
