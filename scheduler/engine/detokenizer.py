"""Tokenizing and incremental detokenizing in the daemon, with `tokenizers` (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required)")
        self.tok = Tokenizer.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()
        self.eos_token_ids = frozenset(read_eos_ids(model_dir))
        # The longest text one token can decode to bounds a prompt's characters by its
        # tokens, so an absurd string is refused before it is tokenized.
        self.max_token_chars = max(len(t) for t in self.tok.get_vocab())

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`, with the model's BOS unless `special` is off."""
        return self.tok.encode(text, add_special_tokens=special).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def read_eos_ids(model_dir: Path) -> list[int]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        p = model_dir / name
        if p.is_file():
            eos = json.loads(p.read_text()).get("eos_token_id")
            if eos is not None:
                ids.extend(eos if isinstance(eos, list) else [eos])
    return sorted(set(ids))


# How far back decoding restarts: enough tokens that the byte-level decoder sees the
# start of any multi-byte character the new token completes.
PREFIX_WINDOW = 6


class IncrementalDetokenizer:
    """Turns tokens into text deltas that never split a multi-byte character.

    The tail of the text is decoded again with each token (from the last whole
    character's tokens on); a delta is released only when it extends what was decoded
    and does not end in U+FFFD, i.e. when the bytes decoded so far form whole
    characters. Stop strings are matched on the text, and the last
    len(longest stop) - 1 characters are held back so a stop string split across
    tokens never leaks into the stream.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        prompt_ids: list[int],
        stop: tuple[str, ...],
        include_stop: bool = False,
    ):
        self.tokenizer = tokenizer
        # Only the tail that is still decoded against: the request keeps the token ids.
        self.ids = list(prompt_ids[-PREFIX_WINDOW:])
        self.read_offset = len(self.ids)  # ids before it are decoded, after it held
        self.text = ""
        self.sent = 0  # characters of text already streamed
        self.stop = stop
        self.include_stop = include_stop  # vLLM's include_stop_str_in_output
        self.hold = max((len(s) for s in stop), default=1) - 1

    def add(self, token: int, stops: bool = True) -> str | None:
        """Feed one token; returns the stop string that matched, if any (none is looked
        for with `stops` off)."""
        self.ids.append(token)
        prefix = self.tokenizer.decode(self.ids[: self.read_offset])
        full = self.tokenizer.decode(self.ids)
        if len(full) > len(prefix) and full.startswith(prefix) and not full.endswith("\ufffd"):
            self.append(full[len(prefix) :])
            self.advance(self.read_offset)
        return self.match_stop() if stops else None

    def flush(self) -> None:
        """At the end, release what was held for incomplete bytes (the model's own).

        A byte-level BPE decodes the held bytes as the whole output reads. Byte fallback
        (SentencePiece) decodes an invalid group of bytes as one U+FFFD per byte, taking
        a character already streamed with it when the output was cut inside the next
        one (max_tokens, a stop token, an abort), so the text would stop being a prefix
        of itself: there the held tokens that make whole characters are released, and
        the start of the cut character reads as one U+FFFD."""
        prefix = self.tokenizer.decode(self.ids[: self.read_offset])
        full = self.tokenizer.decode(self.ids)
        if full.startswith(prefix):
            self.append(full[len(prefix) :])
        else:
            for end in range(len(self.ids) - 1, self.read_offset, -1):
                part = self.tokenizer.decode(self.ids[:end])
                if part.startswith(prefix) and not part.endswith("\ufffd"):
                    self.append(part[len(prefix) :])
                    break
            self.append("\ufffd")
        self.advance(len(self.ids))

    def advance(self, start: int) -> None:
        """Decoding restarts at ids[start] from now on; what lies before it is dropped."""
        del self.ids[:start]
        self.read_offset = len(self.ids)

    def append(self, delta: str) -> None:
        self.text += delta

    def match_stop(self) -> str | None:
        for s in self.stop:
            # Only the tail can hold a new match: start where the previous text could end one.
            idx = self.text.find(s, max(0, self.sent - len(s)))
            if idx != -1:
                self.text = self.text[: idx + len(s) if self.include_stop else idx]
                return s
        return None

    def take(self, final: bool) -> str:
        """The text not yet streamed, less the hold-back unless this is the end."""
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        delta = self.text[self.sent : end]
        self.sent = end
        return delta
