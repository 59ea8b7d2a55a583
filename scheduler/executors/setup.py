"""The daemon's handle on its executors: set-up at start, and again after a crash.

An executor that restarts comes back empty: a new GPU executor has no KV cache and no
CPU tier attached, a new CPU executor has no tier at all. `ensure_ready` looks at what
each reports and redoes just the missing steps; the scheduler recomputes the requests
whose KV was lost from the token ids it kept.
"""

from __future__ import annotations

import asyncio
import logging
import time

from apex.v1 import executor_pb2

from scheduler.executors.client import CpuExecutorClient, GpuExecutorClient, TierSpec
from scheduler.types import ExecutorError, StepPlan, StepResult

log = logging.getLogger(__name__)


class Executors:
    def __init__(
        self,
        gpu: GpuExecutorClient,
        num_gpu_blocks: int,
        block_size: int,
        cpu: CpuExecutorClient | None = None,
        tier: TierSpec | None = None,
        max_model_len: int = 0,
    ) -> None:
        self.gpu = gpu
        self.cpu = cpu
        self.tier = tier
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.layout: executor_pb2.CpuTierLayout | None = None

    async def ensure_ready(self) -> None:
        """Bring both executors to a state where Step works; raises ExecutorError if one
        does not answer."""
        cpu_new = False
        if self.cpu is not None and self.tier is not None:
            info = await self.cpu.info(timeout=2.0)
            if not info.tier_ready or self.layout is None:
                self.layout = await self.cpu.init_tier(self.tier)
                cpu_new = True
                log.info(
                    "CPU tier ready: %s (%d blocks)", self.layout.kv_segment, self.tier.num_blocks
                )
        info = await self.gpu.info(timeout=2.0)
        gpu_new = not info.cache_ready
        if gpu_new:
            await self.gpu.init_cache(self.num_gpu_blocks, self.block_size, self.max_blocks_per_seq)
        if self.layout is not None and (gpu_new or cpu_new):
            await self.gpu.attach_cpu_tier(self.layout)

    async def recover(self, timeout_s: float) -> bool:
        """Wait for both executors to answer again and re-set them up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await self.ensure_ready()
                return True
            except ExecutorError:
                await asyncio.sleep(0.5)
        return False

    async def step(self, plan: StepPlan, timeout: float) -> StepResult:
        return await self.gpu.step(plan, timeout)

    def describe(self) -> str:
        return self.gpu.address + (f" and {self.cpu.address}" if self.cpu else "")

    async def close(self) -> None:
        await self.gpu.close()
        if self.cpu is not None:
            await self.cpu.close()
