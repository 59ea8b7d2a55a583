"""Incremental detokenizing: deltas join to the full text and never split a character."""

from __future__ import annotations

import random

import pytest

from scheduler.engine.detokenizer import IncrementalDetokenizer, TextTokenizer


@pytest.fixture(scope="module")
def tok(models) -> TextTokenizer:
    return TextTokenizer(models["tiny"])


def stream(
    tok: TextTokenizer, prompt: list[int], ids: list[int], stop=()
) -> tuple[list[str], str | None]:
    d = IncrementalDetokenizer(tok, prompt, tuple(stop))
    deltas, matched = [], None
    for t in ids:
        matched = d.add(t)
        deltas.append(d.take(final=matched is not None))
        if matched:
            return deltas, matched
    d.flush()
    deltas.append(d.take(final=True))
    return deltas, None


def test_multibyte_characters_are_never_split(tok):
    text = "你好, 🎉 world — ünïcödé ✓"
    ids = tok.encode(text)[1:]  # without BOS
    assert len(ids) > len(text)  # byte fallback: several tokens per character
    deltas, _ = stream(tok, [0], ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_random_tokens_join_to_the_full_decode(tok):
    rng = random.Random(0)
    for _ in range(30):
        prompt = [0] + [rng.randrange(2, tok.vocab_size) for _ in range(rng.randrange(0, 9))]
        ids = [rng.randrange(0, tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        deltas, _ = stream(tok, prompt, ids)
        full = tok.decode(prompt + ids)
        assert tok.decode(prompt) + "".join(deltas) == full


def test_stop_string_split_across_tokens_is_held_back(tok):
    ids = tok.encode("the robot learned to share its work")[1:]
    deltas, matched = stream(tok, [0], ids, stop=("learned",))
    assert matched == "learned"
    assert "".join(deltas) == "the robot "
    assert not any("lea" in d for d in deltas)
