"""The GPU executor's end of the CPU tier: attach, ship rows per layer, join, migrate.

Per layer the CPU rows' q/k/v go into the exchange and the counter is bumped *before*
the GPU computes attention for its own rows; the output is collected just before the O
projection (asynchronous overlap). On a CUDA device the row copies run on a stream of
their own into the exchange, which is registered as pinned memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dataplane.exchange import Exchange
from dataplane.layout import DONE, STEP, TierAttachment, layer_in, layer_out
from dataplane.shm import Segment, process_alive

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WAIT_SLICE_S = 0.1


class CpuExecutorLost(RuntimeError):
    """The CPU executor stopped answering on the data plane."""


def torch_view(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


@dataclass
class CpuRows:
    """This step's CPU-placed decode rows, as the CPU executor needs them."""

    token_index: torch.Tensor  # flat token index of each row in the batch (on device)
    block_tables: list[list[int]]
    context_lens: list[int]
    slots: list[int]  # CPU-tier slot of each row's new token


class CpuLink:
    def __init__(
        self, attachment: TierAttachment, device: torch.device, timeout_s: float = 30.0
    ) -> None:
        self.tier = attachment.tier
        self.xl = attachment.exchange
        self.kv_segment = Segment.attach(attachment.kv_segment, attachment.kv_bytes)
        self.ex_segment = Segment.attach(attachment.exchange_segment, attachment.exchange_bytes)
        self.exchange = Exchange(self.xl, self.ex_segment)
        v = self.exchange.views
        io = self.xl.dtype
        self.q = [torch_view(a, io) for a in v.q]
        self.k = [torch_view(a, io) for a in v.k]
        self.v = [torch_view(a, io) for a in v.v]
        self.out = [torch_view(a, io) for a in v.out]
        self.kv = [
            tuple(torch_view(a, self.tier.dtype) for a in self.tier.kv(self.kv_segment, i))
            for i in range(self.tier.num_layers)
        ]
        self.device = device
        self.timeout_s = timeout_s
        self.step = self.exchange.value(STEP)  # continue where a previous attach left off
        self.rows = 0
        self.parts: list[tuple[int, int]] = []
        self.copy_stream = None
        self.copy_done: list = []
        if device.type == "cuda":
            self.copy_stream = torch.cuda.Stream(device)
            cudart = torch.cuda.cudart()
            mv = np.frombuffer(self.ex_segment.map, np.uint8)
            cudart.cudaHostRegister(mv.ctypes.data, mv.nbytes, 0)

    # -- per step -------------------------------------------------------------------
    def begin(self, rows: CpuRows, split: int = 0) -> None:
        """A new step. split > 0: the rows come in two parts per layer, [0, split) and
        [split, n) (asymmetric pipelining); 0: one part."""
        n = len(rows.context_lens)
        if n > self.xl.max_rows:
            raise ValueError(f"{n} CPU rows exceed the exchange's {self.xl.max_rows}")
        width = max(len(t) for t in rows.block_tables)
        if width > self.xl.max_blocks_per_seq:
            raise ValueError(f"a CPU row holds {width} blocks, over {self.xl.max_blocks_per_seq}")
        v = self.exchange.views
        v.header[0], v.header[1] = n, width
        v.header[2] = split if 0 < split < n else 0
        self.parts = [(0, split), (split, n)] if 0 < split < n else [(0, n)]
        v.context_lens[:n] = rows.context_lens
        v.slots[:n] = rows.slots
        for i, t in enumerate(rows.block_tables):
            v.block_tables[i, : len(t)] = t
        self.rows = n
        self.step += 1
        self.exchange.signal(STEP, self.step)

    def send(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part: int = 0
    ) -> None:
        """Ship this layer's CPU rows (of one part). Host tensors are copied and published
        at once; on CUDA the copies are only enqueued, and `publish` (called after the
        GPU's own attention is enqueued) waits for them and signals."""
        lo, hi = self.parts[part]
        if self.copy_stream is None:
            self.q[layer][lo:hi].copy_(q)
            self.k[layer][lo:hi].copy_(k)
            self.v[layer][lo:hi].copy_(v)
            self.exchange.signal(layer_in(layer, part), self.step)
            return
        ready = torch.cuda.current_stream(self.device).record_event()
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(ready)
            self.q[layer][lo:hi].copy_(q, non_blocking=True)
            self.k[layer][lo:hi].copy_(k, non_blocking=True)
            self.v[layer][lo:hi].copy_(v, non_blocking=True)
            self.copy_done.append(self.copy_stream.record_event())

    def publish(self, layer: int, part: int = 0) -> None:
        if self.copy_stream is None:
            return  # already published by send
        self.copy_done.pop(0).synchronize()  # only the D2H copies, not the GPU's work
        self.exchange.signal(layer_in(layer, part), self.step)

    def wait(self, counter: int, what: str) -> None:
        """Wait in slices, checking between them that the CPU executor still lives, so
        that a crash fails the step at once rather than at the timeout."""
        deadline = time.monotonic() + self.timeout_s
        while not self.exchange.wait(counter, self.step, WAIT_SLICE_S):
            pid = int(self.exchange.views.header[7])
            if pid and not process_alive(pid):
                raise CpuExecutorLost(f"the CPU executor (pid {pid}) is gone ({what})")
            if time.monotonic() > deadline:
                raise CpuExecutorLost(
                    f"the CPU executor did not answer {what} in {self.timeout_s:.0f} s"
                )

    def receive(self, layer: int, dtype: torch.dtype, part: int = 0) -> torch.Tensor:
        self.wait(layer_out(layer, part), f"layer {layer} of step {self.step}")
        lo, hi = self.parts[part]
        out = self.out[layer][lo:hi]
        return out.to(self.device, dtype=dtype, non_blocking=self.copy_stream is not None)

    def finish(self) -> None:
        """Waits for the CPU's end of the step."""
        self.wait(DONE, f"the end of step {self.step}")

    # -- migration ------------------------------------------------------------------
    def swap_out(
        self, gpu_k: list[torch.Tensor], gpu_v: list[torch.Tensor], pairs: list[tuple[int, int]]
    ) -> None:
        """GPU blocks [bs, kvh, d] -> CPU K blocks [kvh, d, bs], V [kvh, bs, d], every layer."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=gpu_k[0].device)
        dst = torch.tensor([p[1] for p in pairs])
        dt = TORCH_DTYPES[self.tier.dtype]
        for layer, (ck, cv) in enumerate(self.kv):
            ck[dst] = gpu_k[layer][src].permute(0, 2, 3, 1).to("cpu", dt)
            cv[dst] = gpu_v[layer][src].transpose(1, 2).to("cpu", dt)

    def swap_in(
        self, gpu_k: list[torch.Tensor], gpu_v: list[torch.Tensor], pairs: list[tuple[int, int]]
    ) -> None:
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs])
        dst = torch.tensor([p[1] for p in pairs], device=gpu_k[0].device)
        for layer, (ck, cv) in enumerate(self.kv):
            gk, gv = gpu_k[layer], gpu_v[layer]
            gk[dst] = ck[src].permute(0, 3, 1, 2).to(gk.device, gk.dtype)
            gv[dst] = cv[src].transpose(1, 2).to(gv.device, gv.dtype)
