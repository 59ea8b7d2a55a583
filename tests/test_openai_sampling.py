"""The OpenAI API's sampling parameters, through the official openai SDK on both tiers:
logprobs equal transformers' log-softmax, the penalties, logit bias and min_tokens
follow their formulas, and `n` samples prefill their prompt once, each equal to its
seed alone."""

from __future__ import annotations

import pytest

from tests import openai_shared
from tests.factories import chat_prompt_ids, hf_greedy, hf_logprobs, hf_processed_greedy
from tests.openai_shared import MESSAGES, client, extra, name, scrape, value

# the shared stacks, as this file's fixtures `stack` and `cpu_stack`
gpu_stack_fixture = openai_shared.gpu_stack_fixture
cpu_stack_fixture = openai_shared.cpu_stack_fixture


@pytest.mark.parametrize("which", ["stack", "cpu_stack"])
def test_logprobs_are_transformers_log_softmax(which, models, request):
    """Chat (chosen and top 5, whole and streamed) and completions (top 3): the raw
    model distribution, as vLLM returns it, within 1e-4 of transformers' fp32."""
    stack = request.getfixturevalue(which)
    model = models["tiny" if which == "stack" else "tiny-gqa"]
    c, n = client(stack), 12
    body = {"ignore_eos": True, "return_token_ids": True}
    kw = dict(model=name(stack), messages=MESSAGES, max_tokens=n, temperature=0)
    whole = c.chat.completions.create(**kw, logprobs=True, top_logprobs=5, extra_body=body)
    ids = extra(whole.choices[0], "token_ids")
    chosen, top, _ = hf_logprobs(model, chat_prompt_ids(model, MESSAGES), ids, 5)
    content = whole.choices[0].logprobs.content
    assert len(content) == n
    for i, entry in enumerate(content):
        assert entry.logprob == pytest.approx(chosen[i], abs=1e-4)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top[i], abs=1e-4)
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: top 1
    streamed = c.chat.completions.create(
        **kw, logprobs=True, top_logprobs=5, stream=True, extra_body=body
    )
    lps = [
        e.logprob
        for ch in streamed
        if ch.choices and ch.choices[0].logprobs
        for e in ch.choices[0].logprobs.content
    ]
    assert lps == pytest.approx(chosen, abs=1e-4)
    prompt = [0, 45, 99, 301, 7, 250]
    r = c.completions.create(
        model=name(stack),
        prompt=prompt,
        max_tokens=n,
        temperature=0,
        logprobs=3,
        extra_body=body,
    )
    ids = extra(r.choices[0], "token_ids")
    chosen, top, _ = hf_logprobs(model, prompt, ids, 3)
    got = r.choices[0].logprobs
    assert got.token_logprobs == pytest.approx(chosen, abs=1e-4)
    for i, alternatives in enumerate(got.top_logprobs):
        for v in alternatives.values():  # keys are token texts: distinct ids may share one
            assert min(abs(v - w) for w in top[i]) < 1e-4
    assert got.text_offset[0] == 0 and len(got.tokens) == n


@pytest.mark.parametrize("which", ["stack", "cpu_stack"])
def test_penalties_logit_bias_and_min_tokens_follow_their_formulas(which, models, request):
    stack = request.getfixturevalue(which)
    model = models["tiny" if which == "stack" else "tiny-gqa"]
    c, n, prompt = client(stack), 14, [0, 45, 99, 301, 7, 250]

    def run(**kw) -> list[int]:
        body = {"return_token_ids": True, **kw.pop("extra_body", {})}
        r = c.completions.create(
            model=name(stack), prompt=prompt, max_tokens=n, temperature=0, extra_body=body, **kw
        )
        return extra(r.choices[0], "token_ids")

    plain = hf_greedy(model, prompt, n)
    got = run(frequency_penalty=1.5, presence_penalty=0.5, extra_body={"ignore_eos": True})
    assert got == hf_processed_greedy(model, prompt, n, frequency=1.5, presence=0.5)
    got = run(extra_body={"repetition_penalty": 1.3, "ignore_eos": True})
    assert got == hf_processed_greedy(model, prompt, n, repetition=1.3)
    bias = {plain[0]: -100.0, plain[1]: 8.0}
    got = run(logit_bias={str(k): v for k, v in bias.items()}, extra_body={"ignore_eos": True})
    assert got == hf_processed_greedy(model, prompt, n, bias=bias)
    assert got != plain
    # The greedy first token as a stop token ends the output at once, unless min_tokens
    # keeps it (and EOS) from being drawn before then.
    stop = plain[0]
    assert run(extra_body={"stop_token_ids": [stop], "ignore_eos": True}) == [stop]
    got = run(extra_body={"stop_token_ids": [stop], "ignore_eos": True, "min_tokens": 6})
    assert len(got) >= 6 and stop not in got[:6]
    assert got == hf_processed_greedy(model, prompt, n, min_tokens=6, stop_ids=[stop])


@pytest.mark.parametrize("which", ["stack", "cpu_stack"])
def test_n_samples_prefill_once_and_each_equals_its_seed_alone(which, models, request):
    """Sample i of `n` draws with seed + i: the same tokens as that seed alone, again
    on a second run and when streamed; the prompt's whole blocks are computed once."""
    stack = request.getfixturevalue(which)
    n = 2 if which == "stack" else 3  # the first stack's queue holds 2
    c = client(stack)
    body = {"ignore_eos": True, "return_token_ids": True}
    kw = dict(model=name(stack), messages=MESSAGES, max_tokens=6, temperature=1.5, seed=11)
    before = scrape(stack)
    together = c.chat.completions.create(n=n, **kw, extra_body=body)
    after = scrape(stack)
    assert [ch.index for ch in together.choices] == list(range(n))
    got = [extra(ch, "token_ids") for ch in together.choices]
    assert together.usage.completion_tokens == 6 * n and len({tuple(g) for g in got}) > 1
    alone = [
        extra(
            c.chat.completions.create(**{**kw, "seed": 11 + i}, extra_body=body).choices[0],
            "token_ids",
        )
        for i in range(n)
    ]
    assert got == alone
    streamed: dict[int, list[int]] = {i: [] for i in range(n)}
    for chunk in c.chat.completions.create(n=n, **kw, stream=True, extra_body=body):
        for ch in chunk.choices:
            streamed[ch.index] += (ch.model_extra or {}).get("token_ids") or []
    assert [streamed[i] for i in range(n)] == got
    length = len(chat_prompt_ids(models["tiny" if which == "stack" else "tiny-gqa"], MESSAGES))
    shared = (length - 1) // 16 * 16
    metric = "apex_prompt_tokens_prefilled_total"
    prefilled = value(after, metric) - value(before, metric)
    assert shared > 0 and prefilled == length + (n - 1) * (length - shared)
