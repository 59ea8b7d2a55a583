"""CUDA graphs for GPU-only decode steps (`--cuda-graphs`, off by default until a GPU
run shows them exact and faster).

A decode step of a 7B model launches ~15 kernels a layer from Python: at batch 1-16 on
a T4 that launch overhead is a visible share of a ~40 ms step, and it grows on faster
cards. A graph captures the whole step once per batch-size bucket and replays it with
one launch. A graph replays fixed shapes and addresses, so the step reads its inputs
from static buffers sized for the largest bucket:

- a batch of n rows runs in the smallest bucket >= n; rows n..bucket are padding that
  read token 0 at position 0 and write their K and V into a scratch block, one past the
  blocks the scheduler owns, so no real block is ever touched;
- block tables are `max_blocks_per_seq` wide (InitCache says how wide), padded with the
  scratch block; context lengths mask what lies past each row's end.

On the CPU the same static step runs eagerly (no capture), so CI checks the padding,
the scratch block and the bucket choice against transformers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from gpu_executor.batch import TIER_GPU, SeqInput
from gpu_executor.llama import LlamaModel

log = logging.getLogger(__name__)
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def bucket_for(rows: int) -> int | None:
    return next((b for b in BUCKETS if b >= rows), None)


class DecodeGraphs:
    """Static-shape decode steps over the model's cache, captured on CUDA."""

    def __init__(self, model: LlamaModel, max_blocks_per_seq: int, max_rows: int = 256) -> None:
        if max_blocks_per_seq < 1:
            raise ValueError("CUDA-graphed decode needs max_blocks_per_seq >= 1 from InitCache")
        cache = model.kv
        self.model = model
        self.width = max_blocks_per_seq
        self.scratch = cache.num_blocks - 1  # the cache was made one block larger
        self.buckets = tuple(b for b in BUCKETS if b <= max_rows)
        top, dev = self.buckets[-1], model.device
        i64 = dict(dtype=torch.int64, device=dev)
        # all padding until a step fills them: the capture itself writes the scratch block
        self.ids = torch.zeros(top, **i64)
        self.positions = torch.zeros(top, **i64)
        self.slots = torch.full((top,), self.scratch * cache.block_size, **i64)
        self.tables = torch.full((top, self.width), self.scratch, **i64)
        self.lens = torch.ones(top, **i64)
        self.logits = torch.zeros((top, model.shape.vocab_size), dtype=torch.float32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.served = 0  # steps run through the static path
        if dev.type == "cuda":
            self.capture()

    def serves(self, seqs: list[SeqInput]) -> bool:
        """A decode-only step on the GPU tier that fits a bucket and the table width."""
        return (
            len(seqs) <= self.buckets[-1]
            and all(
                len(s.token_ids) == 1 and s.tier == TIER_GPU and len(s.block_table) <= self.width
                for s in seqs
            )
            and bool(seqs)
        )

    def run(self, seqs: list[SeqInput]) -> torch.Tensor:
        """The rows' fp32 logits (n, vocab), as `strategies.forward` gives them."""
        n = len(seqs)
        b = bucket_for(n)
        if b is None or b > self.buckets[-1]:
            raise ValueError(f"{n} rows exceed the largest graphed bucket {self.buckets[-1]}")
        self.fill(seqs, b)
        graph = self.graphs.get(b)
        if graph is not None:
            graph.replay()
        else:
            self.step(b)
        if not self.served:
            how = "replayed" if graph is not None else "run eagerly (no capture off CUDA)"
            log.info("first static decode step: %d rows in bucket %d, %s", n, b, how)
        self.served += 1
        return self.logits[:n]

    def fill(self, seqs: list[SeqInput], b: int) -> None:
        """The static inputs for bucket b: the rows, then padding into the scratch block."""
        bs = self.model.kv.block_size
        tables = np.full((b, self.width), self.scratch, dtype=np.int64)
        ids = np.zeros(b, dtype=np.int64)
        pos = np.zeros(b, dtype=np.int64)
        lens = np.ones(b, dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i] = s.token_ids[0]
            pos[i] = s.start_pos
            lens[i] = s.end_pos
            tables[i, : len(s.block_table)] = s.block_table
        slots = tables[np.arange(b), pos // bs] * bs + pos % bs
        for dst, src in (
            (self.ids, ids),
            (self.positions, pos),
            (self.slots, slots),
            (self.lens, lens),
            (self.tables, tables),
        ):
            dst[:b].copy_(torch.from_numpy(src), non_blocking=True)

    @torch.inference_mode()
    def step(self, b: int) -> None:
        """One decode step of bucket b over the static buffers (what a graph captures)."""
        m = self.model
        ids, pos, slots = self.ids[:b], self.positions[:b], self.slots[:b]
        tables, lens = self.tables[:b], self.lens[:b]
        cos, sin = m.rope(pos)
        x = m.embed_tokens(ids)
        for li, lw in enumerate(m.layers):
            q, k, v = m.qkv(lw, x, cos, sin)
            m.write_kv(li, k, v, slots)
            x = m.post(lw, x, m.decode_attention(li, q, tables, lens))
        self.logits[:b].copy_(m.head(x))

    def capture(self) -> None:
        """Largest bucket first, all in one memory pool; each warmed up once (Triton
        compiles on its first launch, which a capture must not see)."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.model.device)
        for b in reversed(self.buckets):
            side.wait_stream(torch.cuda.current_stream(self.model.device))
            with torch.cuda.stream(side):
                self.step(b)
            torch.cuda.current_stream(self.model.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.step(b)
            self.graphs[b] = graph
        torch.cuda.synchronize(self.model.device)
        log.info("captured CUDA graphs for decode batches %s", ", ".join(map(str, self.buckets)))
