"""Incremental detokenizing: deltas join to the full text and never split a character."""

from __future__ import annotations

import random

import pytest

from scheduler.engine.detokenizer import IncrementalDetokenizer, TextTokenizer
from tests.factories import byte_fallback_tokenizer


@pytest.fixture(scope="module")
def tok(models) -> TextTokenizer:
    return TextTokenizer(models["tiny"])


def stream(
    tok: TextTokenizer, prompt: list[int], ids: list[int], stop=(), include_stop: bool = False
) -> tuple[list[str], str | None]:
    d = IncrementalDetokenizer(tok, prompt, tuple(stop), include_stop)
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
    # include_stop_str_in_output (SGLang: no_stop_trim): the same cut, after the stop
    deltas, matched = stream(tok, [0], ids, stop=("learned",), include_stop=True)
    assert matched == "learned" and "".join(deltas) == "the robot learned"


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory) -> TextTokenizer:
    return byte_fallback_tokenizer(tmp_path_factory.mktemp("sp"), ["the", "robot", "llama"])


@pytest.mark.parametrize("kind", ["sentencepiece", "tok"])
def test_an_output_cut_inside_a_character_keeps_the_stream_a_prefix(kind, request):
    """max_tokens (or a stop token, or an abort) can end the output in the middle of a
    character: the text streamed before must stay a prefix of the final text, which is
    the decode of the tokens wherever that agrees with what was streamed."""
    tok = request.getfixturevalue(kind)
    prompt = tok.encode("the robot")
    head = tok.decode(prompt)
    for text in ("\U0001f999\U0001f999", "llama \U0001f999 ünï 你好", "a✓b\U0001f389"):
        ids = tok.encode(text, False) if kind == "sentencepiece" else tok.encode(text)[1:]
        for cut in range(1, len(ids) + 1):
            deltas, _ = stream(tok, prompt, ids[:cut])
            streamed, final = "".join(deltas[:-1]), "".join(deltas)
            assert "\ufffd" not in streamed and final.startswith(streamed), (text, cut, deltas)
            whole = tok.decode(prompt + ids[:cut])
            if whole.startswith(head + streamed):
                assert head + final == whole, (text, cut, deltas)
            else:  # byte fallback swallowed a streamed character: whole ones, then one U+FFFD
                assert final.endswith("\ufffd") and "\ufffd" not in final[:-1], (text, cut)


def test_llama_cut_after_five_byte_tokens(sentencepiece):
    tok = sentencepiece
    ids = tok.encode("🦙🦙", False)  # "▁", then 4 + 4 byte tokens
    deltas, _ = stream(tok, tok.encode("the robot"), ids[:6])
    assert "".join(deltas[:-1]) == " 🦙"
    assert "".join(deltas) == " 🦙\ufffd"
