"""One iteration's inputs, flattened the way the model runner wants them.

The plan from the scheduler is per sequence; the forward pass is per token. This turns
the first into the second once per step, on the host with numpy, and uploads each array
once, so that no per-layer work happens in Python loops over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpu_executor.cpu_link import CpuRows

TIER_GPU, TIER_CPU = 0, 1


@dataclass(frozen=True)
class SeqInput:
    token_ids: list[int]
    start_pos: int
    block_table: list[int]  # blocks on `tier`
    tier: int = TIER_GPU

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


# New prompts of different lengths run as one padded SDPA call while the padding adds at
# most this share of tokens; else they split into groups of similar lengths.
PAD_WASTE = 1.25


@dataclass
class PrefillSpan:
    """A prompt chunk after a cached prefix: attends causally within itself and to the
    cache (chunked prefill, shared prompt blocks)."""

    token_start: int  # index into the flat token arrays
    token_end: int
    start_pos: int  # its blocks: its row of `ContinuedPrefills.block_tables`


@dataclass
class NewPrompts:
    """Prompts that start at position 0, padded at their ends to one length: a causal
    mask never lets a real token see the padding after it, so one call serves them all
    with no mask tensor."""

    token_index: torch.Tensor  # (P, L) flat token index; padding repeats a prompt's first
    valid: torch.Tensor  # indices into the (P * L) padded rows that are real tokens
    out_index: torch.Tensor  # the flat token index of each of those, in the same order


@dataclass
class ContinuedPrefills:
    """The PrefillSpans as the paged prefill kernel takes them."""

    token_starts: torch.Tensor  # (S,) int64
    lens: torch.Tensor  # (S,)
    start_positions: torch.Tensor  # (S,)
    block_tables: torch.Tensor  # (S, max_blocks), padded with 0
    max_len: int


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    gpu_token_index: torch.Tensor | None  # tokens whose K/V go to the GPU tier; None: all
    slot_mapping: torch.Tensor  # GPU-tier slot of each of those tokens
    last_token_index: torch.Tensor  # (S,) int64: flat index of each sequence's last token
    prefills: list[PrefillSpan]  # chunks after a cached prefix
    continued: ContinuedPrefills | None  # the same, for the kernel; None: there are none
    new_prompts: list[NewPrompts]
    decode_token_index: torch.Tensor  # (D,) flat index of each single-token sequence
    decode_block_tables: torch.Tensor  # (D, max_blocks) int64, padded with 0
    decode_context_lens: torch.Tensor  # (D,) int64, tokens attended incl. the new one
    num_prefill_tokens: int
    num_decode_tokens: int
    cpu: CpuRows | None  # decode rows whose attention runs on the CPU executor


def pack(seqs: list[SeqInput], block_size: int, device: torch.device) -> PackedBatch:
    ids: list[int] = []
    positions: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    gpu_tokens: list[np.ndarray] = []
    cpu_index: list[int] = []
    cpu_tables: list[list[int]] = []
    cpu_lens: list[int] = []
    cpu_slots: list[int] = []
    last: list[int] = []
    prefills: list[PrefillSpan] = []
    prefill_tables: list[list[int]] = []
    fresh: list[tuple[int, int]] = []  # (token start, length) of prompts from position 0
    dec_index: list[int] = []
    dec_tables: list[list[int]] = []
    dec_lens: list[int] = []
    for s in seqs:
        start = len(ids)
        ids.extend(s.token_ids)
        pos = np.arange(s.start_pos, s.end_pos, dtype=np.int64)
        table = np.asarray(s.block_table, dtype=np.int64)
        positions.append(pos)
        slot = table[pos // block_size] * block_size + pos % block_size
        last.append(len(ids) - 1)
        if s.tier == TIER_CPU:
            if len(s.token_ids) != 1:
                raise ValueError("a CPU-placed sequence must decode one token at a time")
            cpu_index.append(start)
            cpu_tables.append(s.block_table)
            cpu_lens.append(s.end_pos)
            cpu_slots.append(int(slot[0]))
            continue
        slots.append(slot)
        gpu_tokens.append(np.arange(start, len(ids), dtype=np.int64))
        if len(s.token_ids) == 1:
            dec_index.append(start)
            dec_tables.append(s.block_table)
            dec_lens.append(s.end_pos)
        elif s.start_pos == 0:
            fresh.append((start, len(s.token_ids)))
        else:
            prefills.append(PrefillSpan(start, len(ids), s.start_pos))
            prefill_tables.append(s.block_table)

    def up(a: np.ndarray | list[int]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64)).to(device, non_blocking=True)

    continued = None
    if prefills:
        continued = ContinuedPrefills(
            up([p.token_start for p in prefills]),
            up([p.token_end - p.token_start for p in prefills]),
            up([p.start_pos for p in prefills]),
            up(pad_tables(prefill_tables)),
            max(p.token_end - p.token_start for p in prefills),
        )

    empty = np.zeros(0, np.int64)
    cpu = None
    if cpu_index:
        cpu = CpuRows(up(cpu_index), cpu_tables, cpu_lens, cpu_slots)
    return PackedBatch(
        input_ids=up(ids),
        positions=up(np.concatenate(positions)),
        gpu_token_index=up(np.concatenate(gpu_tokens or [empty])) if cpu_index else None,
        slot_mapping=up(np.concatenate(slots or [empty])),
        last_token_index=up(last),
        prefills=prefills,
        continued=continued,
        new_prompts=[new_prompts(g, up) for g in group_by_length(fresh)],
        decode_token_index=up(dec_index),
        decode_block_tables=up(pad_tables(dec_tables)),
        decode_context_lens=up(dec_lens),
        num_prefill_tokens=sum(p.token_end - p.token_start for p in prefills)
        + sum(n for _, n in fresh),
        num_decode_tokens=len(dec_index),
        cpu=cpu,
    )


def pad_tables(tables: list[list[int]]) -> np.ndarray:
    width = max((len(t) for t in tables), default=0)
    padded = np.zeros((len(tables), width), dtype=np.int64)
    for i, t in enumerate(tables):
        padded[i, : len(t)] = t
    return padded


def group_by_length(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Longest first; a prompt joins the group while the padded size stays within
    PAD_WASTE of the real tokens."""
    groups: list[list[tuple[int, int]]] = []
    for span in sorted(spans, key=lambda x: -x[1]):
        g = groups[-1] if groups else None
        if g and (len(g) + 1) * g[0][1] <= PAD_WASTE * (sum(n for _, n in g) + span[1]):
            g.append(span)
        else:
            groups.append([span])
    return groups


def new_prompts(group: list[tuple[int, int]], up) -> NewPrompts:
    length = group[0][1]
    index = np.empty((len(group), length), dtype=np.int64)
    valid, out = [], []
    for r, (start, n) in enumerate(group):
        index[r, :n] = np.arange(start, start + n)
        index[r, n:] = start
        valid.append(np.arange(r * length, r * length + n))
        out.append(index[r, :n])
    return NewPrompts(up(index), up(np.concatenate(valid)), up(np.concatenate(out)))
