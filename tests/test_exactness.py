"""The backbone: greedy output equals transformers' generate, token for token (fp32).

Through the real processes and gRPC: prompts of different lengths are sent at once and
staggered in time, so that requests join and leave running batches (continuous
batching) and prefills share iterations with decodes.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import hf_greedy
from tests.stack import Stack, running_stack

PROMPT_LENGTHS = [1, 3, 8, 17, 40, 64, 129, 250]
OUTPUT_LENGTHS = [40, 12, 33, 24, 48, 7, 30, 20]


# Preemption case: all six fit at admission (18 of 24 blocks of 16 tokens), then each
# grows to 8-10 blocks, so the scheduler must preempt whatever the arrival timing.
PREEMPT_PROMPT_LENGTHS = [40, 33, 50, 20, 45, 38]
PREEMPT_OUTPUT_LENGTHS = [100, 110, 90, 120, 95, 105]


def make_prompts(vocab: int, seed: int, lengths: list[int] = PROMPT_LENGTHS) -> list[list[int]]:
    rng = random.Random(seed)
    # Id 0 is BOS; ids from 2 up are ordinary tokens of the trained vocabulary.
    return [[0] + [rng.randrange(2, vocab) for _ in range(n - 1)] for n in lengths]


def run_concurrently(
    stack: Stack,
    prompts: list[list[int]],
    stagger_s: float = 0.03,
    output_lengths: list[int] = OUTPUT_LENGTHS,
):
    def one(i: int):
        time.sleep(i * stagger_s)
        with stack.client() as c:
            return c.generate(
                prompts[i], max_tokens=output_lengths[i], temperature=0.0, ignore_eos=True
            )

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, range(len(prompts))))


def run_under_pressure(stack: Stack, seed: int) -> tuple[list[list[int]], list]:
    """The six staggered requests that outgrow a 24-block GPU tier (the preemption,
    swap and policy tests all use them): their prompts and results."""
    with stack.client() as c:
        vocab = c.model_info().vocab_size
    prompts = make_prompts(vocab, seed=seed, lengths=PREEMPT_PROMPT_LENGTHS)
    results = run_concurrently(
        stack, prompts, stagger_s=0.005, output_lengths=PREEMPT_OUTPUT_LENGTHS
    )
    return prompts, results


def assert_matches_hf(
    model: Path, prompts: list[list[int]], results, output_lengths: list[int] = OUTPUT_LENGTHS
) -> None:
    for i, (prompt, res) in enumerate(zip(prompts, results, strict=True)):
        expected = hf_greedy(model, prompt, output_lengths[i])
        assert list(res.token_ids) == expected, f"prompt {i} ({len(prompt)} tokens) diverged"
        assert res.usage.completion_tokens == output_lengths[i]


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_greedy_equals_transformers(preset, models, request):
    stack = request.getfixturevalue("tiny_stack" if preset == "tiny" else "gqa_stack")
    with stack.client() as c:
        vocab = c.model_info().vocab_size
    prompts = make_prompts(vocab, seed=len(preset))
    assert_matches_hf(models[preset], prompts, run_concurrently(stack, prompts))


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
