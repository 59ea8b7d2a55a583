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
            for layer in range(self.tier.num_layers):
                for part, (lo, hi) in enumerate(parts):
                    if not self.wait(layer_in(layer, part), step):
                        return
                    t1 = time.perf_counter()
                    self.attend(layer, lo, hi, tables[lo:hi])
                    self.attention_s += time.perf_counter() - t1
                    ex.signal(layer_out(layer, part), step)
            self.steps += 1
            ex.signal(DONE, step)

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
