"""One iteration's inputs, flattened the way the model runner wants them.

The plan from the scheduler is per sequence; the forward pass is per token. This turns
the first into the second once per step, on the host with numpy, and uploads each array
once, so that no per-layer work happens in Python loops over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SeqInput:
    token_ids: list[int]
    start_pos: int
    block_table: list[int]

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


@dataclass
class PrefillSpan:
    """A sequence with several new tokens: attends causally within them and to its cache."""

    token_start: int  # index into the flat token arrays
    token_end: int
    start_pos: int
    block_table: torch.Tensor  # (num_blocks,) int64


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    slot_mapping: torch.Tensor  # (T,) int64: cache slot each new token's K/V goes to
    last_token_index: torch.Tensor  # (S,) int64: flat index of each sequence's last token
    prefills: list[PrefillSpan]
    decode_token_index: torch.Tensor  # (D,) flat index of each single-token sequence
    decode_block_tables: torch.Tensor  # (D, max_blocks) int64, padded with 0
    decode_context_lens: torch.Tensor  # (D,) int64, tokens attended incl. the new one
    num_prefill_tokens: int
    num_decode_tokens: int


def pack(seqs: list[SeqInput], block_size: int, device: torch.device) -> PackedBatch:
    ids: list[int] = []
    positions: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    last: list[int] = []
    prefills: list[PrefillSpan] = []
    dec_index: list[int] = []
    dec_tables: list[list[int]] = []
    dec_lens: list[int] = []
    for s in seqs:
        start = len(ids)
        ids.extend(s.token_ids)
        pos = np.arange(s.start_pos, s.end_pos, dtype=np.int64)
        table = np.asarray(s.block_table, dtype=np.int64)
        positions.append(pos)
        slots.append(table[pos // block_size] * block_size + pos % block_size)
        last.append(len(ids) - 1)
        if len(s.token_ids) == 1:
            dec_index.append(start)
            dec_tables.append(s.block_table)
            dec_lens.append(s.end_pos)
        else:
            prefills.append(
                PrefillSpan(start, len(ids), s.start_pos, torch.from_numpy(table).to(device))
            )
    width = max((len(t) for t in dec_tables), default=0)
    padded = np.zeros((len(dec_tables), width), dtype=np.int64)
    for i, t in enumerate(dec_tables):
        padded[i, : len(t)] = t

    def up(a: np.ndarray | list[int]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64)).to(device, non_blocking=True)

    return PackedBatch(
        input_ids=up(ids),
        positions=up(np.concatenate(positions)),
        slot_mapping=up(np.concatenate(slots)),
        last_token_index=up(last),
        prefills=prefills,
        decode_token_index=up(dec_index),
        decode_block_tables=up(padded),
        decode_context_lens=up(dec_lens),
        num_prefill_tokens=sum(p.token_end - p.token_start for p in prefills),
        num_decode_tokens=len(dec_index),
    )
