"""The attention worker: follows the exchange's counters step by step, layer by layer.

Per step the GPU executor writes the CPU rows' metadata and bumps STEP; per layer it
writes the rows' q/k/v and bumps LAYER_IN; this thread appends k/v into the tier,
attends (the faster path for the shape, as measured), writes the output and bumps
LAYER_OUT; after the last layer it bumps DONE.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from cpu_executor.attention import AttnShape, OrtAttention, PathChooser, append_kv, kernel_attention
from dataplane.exchange import Exchange
from dataplane.layout import DONE, STEP, TierLayout, layer_in, layer_out

log = logging.getLogger(__name__)
POLL_S = 0.1  # how often an idle worker looks at its stop flag


class AttentionWorker(threading.Thread):
    def __init__(
        self,
        tier: TierLayout,
        tier_segment,
        exchange: Exchange,
        num_heads: int,
        threads: int,
        paths: tuple[str, ...] = ("kernel", "ort"),
    ) -> None:
        super().__init__(name="attention-worker", daemon=True)
        self.tier = tier
        self.kv = [tier.kv(tier_segment, layer) for layer in range(tier.num_layers)]
        self.exchange = exchange
        self.shape = AttnShape(num_heads, tier.num_kv_heads, tier.head_dim, tier.block_size)
        self.threads = threads
        self.ort = OrtAttention(self.shape, threads) if "ort" in paths else None
        self.chooser = PathChooser(paths)
        self.stop_flag = threading.Event()
        self.steps = 0
        self.attention_s = 0.0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self.stop_flag.set()

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as e:  # report, never die silently: the GPU side times out
            self.error = e
            log.exception("attention worker failed")

    def wait(self, counter: int, target: int) -> bool:
        while not self.stop_flag.is_set():
            if self.exchange.wait(counter, target, POLL_S):
                return True
        return False

    def wait_input(self, counter: int, step: int) -> bool:
        """Wait for this step's input on `counter`. False when stopping, or when the GPU
        side has begun a newer step: it gave up on this one (this process was paused or
        slow past its timeout), and the worker must follow it to the new step instead
        of waiting for layers of the old one that will never come."""
        ex = self.exchange
        while not self.stop_flag.is_set():
            if ex.wait(counter, step, POLL_S):
                return ex.value(STEP) == step  # a newer step's signal also reaches `step`
            if ex.value(STEP) != step:
                return False
        return False

    def loop(self) -> None:
        ex, views = self.exchange, self.exchange.views
        views.header[7] = os.getpid()  # the GPU side checks this process is alive
        step = ex.value(STEP)
        while self.wait(STEP, step + 1):
            step = ex.value(STEP)
            rows = int(views.header[0])
            split = int(views.header[2])
            parts = [(0, split), (split, rows)] if 0 < split < rows else [(0, rows)]
            width = int(views.header[1])
            tables = np.ascontiguousarray(views.block_tables[:rows, :width])
            if self.serve_step(step, parts, tables):
                self.steps += 1
                ex.signal(DONE, step)
            elif ex.value(STEP) != step:
                log.warning(
                    "step %d was abandoned by the GPU side; following step %d", step, ex.value(STEP)
                )

    def serve_step(self, step: int, parts: list[tuple[int, int]], tables: np.ndarray) -> bool:
        """Every layer of one step; False if it ended early (stopping, or superseded)."""
        for layer in range(self.tier.num_layers):
            for part, (lo, hi) in enumerate(parts):
                if not self.wait_input(layer_in(layer, part), step):
                    return False
                t1 = time.perf_counter()
                self.attend(layer, lo, hi, tables[lo:hi])
                self.attention_s += time.perf_counter() - t1
                self.exchange.signal(layer_out(layer, part), step)
        return True

    def attend(self, layer: int, lo: int, hi: int, tables: np.ndarray) -> None:
        """Rows [lo, hi) of this step: append their k/v into the tier and attend."""
        views = self.exchange.views
        k_cache, v_cache = self.kv[layer]
        q, k, v, out = (
            a[lo:hi] for a in (views.q[layer], views.k[layer], views.v[layer], views.out[layer])
        )
        lens, slots = views.context_lens[lo:hi], views.slots[lo:hi]
        rows, max_ctx = hi - lo, int(lens.max())
        path = self.chooser.choose(rows, max_ctx)
        t = time.perf_counter()
        if path == "ort" and self.ort is not None:
            self.ort(q, k, v, k_cache, v_cache, self.tier.dtype, tables, lens, out)
            append_kv(k_cache, v_cache, self.tier.dtype, k, v, slots, self.shape)
        else:
            append_kv(k_cache, v_cache, self.tier.dtype, k, v, slots, self.shape)
            kernel_attention(
                q, k_cache, v_cache, self.tier.dtype, tables, lens, out, self.shape, self.threads
            )
        self.chooser.record(rows, max_ctx, path, time.perf_counter() - t)
