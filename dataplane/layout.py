"""Where everything lives in the two shared segments; both executors compute the same.

The CPU KV tier: per layer, K as [num_blocks][kv_heads][head_dim][block_size] (transposed
within the block: tokens in vector lanes for the score FMAs) then V as
[num_blocks][kv_heads][block_size][head_dim], in the storage dtype. Either way one head's
block is one contiguous region, streamed by the kernel.

The exchange (the per-layer data plane): a control page of sequence counters, each on
its own cache line so that the two sides never false-share; the step's metadata (rows,
their context lengths, append slots, block tables); then per layer the q, k,
v rows going to the CPU and the attention output coming back, in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

LINE = 64
PAGE = 4096
ITEM = {"float32": 4, "float16": 2, "bfloat16": 2}
NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def align(n: int, a: int = PAGE) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class TierLayout:
    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in ITEM:
            raise ValueError(f"CPU KV dtype must be float32, float16 or bfloat16, not {self.dtype}")
        if (
            min(self.num_layers, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
            < 1
        ):
            raise ValueError(f"every tier dimension must be >= 1: {self}")

    @property
    def block_shape(self) -> tuple[int, int, int]:
        return (self.num_kv_heads, self.block_size, self.head_dim)

    @property
    def bytes_per_block(self) -> int:
        """All layers, K and V: what one block of the tier costs."""
        kvh, bs, d = self.block_shape
        return 2 * self.num_layers * kvh * bs * d * ITEM[self.dtype]

    @property
    def nbytes(self) -> int:
        return align(self.num_blocks * self.bytes_per_block)

    def kv(self, seg, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(K [blocks, kvh, d, bs], V [blocks, kvh, bs, d]) of one layer."""
        kvh, bs, d = self.block_shape
        per = self.num_blocks * self.bytes_per_block // (2 * self.num_layers)
        base = 2 * layer * per
        dt = NUMPY[self.dtype]
        return (
            seg.array(base, (self.num_blocks, kvh, d, bs), dt),
            seg.array(base + per, (self.num_blocks, kvh, bs, d), dt),
        )


# Counter indices in the control page (each a (seq, waiters) pair on its own line).
# A step's CPU rows may come in two parts per layer (header[2] splits them: asymmetric
# pipelining sends rows [0, split) and rows [split, n) at different times); each part
# has its own in and out counters. Unsplit steps use part 0 only.
STEP, DONE = 0, 1


def layer_in(layer: int, part: int = 0) -> int:
    return 2 + 4 * layer + 2 * part


def layer_out(layer: int, part: int = 0) -> int:
    return 3 + 4 * layer + 2 * part


@dataclass(frozen=True)
class ExchangeLayout:
    num_layers: int
    max_rows: int
    max_blocks_per_seq: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in ITEM:
            raise ValueError(f"exchange dtype must be float32, float16 or bfloat16: {self.dtype}")
        if self.max_rows < 1 or self.max_blocks_per_seq < 1:
            raise ValueError("max_rows and max_blocks_per_seq must be >= 1")

    @property
    def num_counters(self) -> int:
        return 2 + 4 * self.num_layers

    @property
    def control_bytes(self) -> int:
        return align(self.num_counters * LINE)

    @property
    def meta_bytes(self) -> int:
        r = self.max_rows
        # header (8 x int64), context_lens int32, slots int64, block tables int32
        return align(64 + 4 * r + 8 * r + 4 * r * self.max_blocks_per_seq)

    @property
    def row_elems(self) -> tuple[int, int]:
        return self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim

    @property
    def layer_bytes(self) -> int:
        q, kv = self.row_elems
        return align(self.max_rows * (2 * q + 2 * kv) * ITEM[self.dtype])

    @property
    def nbytes(self) -> int:
        return self.control_bytes + self.meta_bytes + self.num_layers * self.layer_bytes


@dataclass
class ExchangeViews:
    """numpy views into an attached exchange segment."""

    counters: np.ndarray  # uint32, [num_counters, LINE / 4]; [:, 0] seq, [:, 1] waiters
    header: np.ndarray  # int64 [8]: [0] rows, [1] block-table width, [2] part split
    # (0: one part), [7] CPU worker's pid
    context_lens: np.ndarray
    slots: np.ndarray
    block_tables: np.ndarray
    q: list[np.ndarray]
    k: list[np.ndarray]
    v: list[np.ndarray]
    out: list[np.ndarray]

    @classmethod
    def of(cls, layout: ExchangeLayout, seg) -> ExchangeViews:
        r, b = layout.max_rows, layout.max_blocks_per_seq
        counters = seg.array(0, (layout.num_counters, LINE // 4), np.uint32)
        m = layout.control_bytes
        header = seg.array(m, (8,), np.int64)
        lens = seg.array(m + 64, (r,), np.int32)
        slots = seg.array(m + 64 + 4 * r, (r,), np.int64)
        tables = seg.array(m + 64 + 12 * r, (r, b), np.int32)
        qe, kve = layout.row_elems
        dt = NUMPY[layout.dtype]
        it = ITEM[layout.dtype]
        qs, ks, vs, outs = [], [], [], []
        for layer in range(layout.num_layers):
            base = layout.control_bytes + layout.meta_bytes + layer * layout.layer_bytes
            qs.append(seg.array(base, (r, layout.num_heads, layout.head_dim), dt))
            base += r * qe * it
            ks.append(seg.array(base, (r, layout.num_kv_heads, layout.head_dim), dt))
            base += r * kve * it
            vs.append(seg.array(base, (r, layout.num_kv_heads, layout.head_dim), dt))
            base += r * kve * it
            outs.append(seg.array(base, (r, layout.num_heads, layout.head_dim), dt))
        return cls(counters, header, lens, slots, tables, qs, ks, vs, outs)


@dataclass(frozen=True)
class TierAttachment:
    """What the GPU executor needs to attach to a CPU tier the CPU executor made: both
    layouts and the two segments' names and sizes under /dev/shm."""

    tier: TierLayout
    exchange: ExchangeLayout
    kv_segment: str
    kv_bytes: int
    exchange_segment: str
    exchange_bytes: int


class TierDims(Protocol):
    """The dimensions a tier is made with (the scheduler's InitTier message has them)."""

    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str
    io_dtype: str
    max_rows: int
    max_blocks_per_seq: int


def layouts(d: TierDims) -> tuple[TierLayout, ExchangeLayout]:
    """The tier's and the exchange's layouts for these dimensions; ValueError when they
    make no valid layout. Both executors build them from the same message."""
    tier = TierLayout(
        d.num_layers, d.num_blocks, d.block_size, d.num_kv_heads, d.head_dim, d.kv_dtype
    )
    exchange = ExchangeLayout(
        d.num_layers,
        d.max_rows,
        d.max_blocks_per_seq,
        d.num_heads,
        d.num_kv_heads,
        d.head_dim,
        d.io_dtype,
    )
    if d.num_heads % d.num_kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    return tier, exchange
