"""The engine never leaves a request hanging, even when every step fails.

The one place a stand-in executor is used: a step that fails deterministically (an
executor bug) cannot be produced on demand from the real one.
"""

from __future__ import annotations

import asyncio

import grpc

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.engine import MAX_FAILED_STEPS, Engine, EngineError
from scheduler.request import Request, SamplingConfig
from scheduler.tokenizer import TextTokenizer


class FailingExecutors:
    def __init__(self) -> None:
        self.steps = 0

    async def step(self, plan, timeout):
        self.steps += 1
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom"
        )

    async def recover(self, timeout_s: float) -> bool:
        return True  # "back at once": the failure is not a crash

    def describe(self) -> str:
        return "stand-in"


def test_a_step_that_always_fails_ends_its_requests_with_internal(models):
    async def scenario():
        cfg = SchedulerConfig(max_model_len=64, block_size=16, num_gpu_blocks=8)
        executors = FailingExecutors()
        engine = Engine(Scheduler(cfg, frozenset({1})), executors, TextTokenizer(models["tiny"]))
        engine.start()
        stream = engine.submit(Request("r", [0, 5, 6], SamplingConfig(max_tokens=4)))
        item = await asyncio.wait_for(stream.queue.get(), 10)
        await engine.stop()
        return item, executors.steps, engine

    item, steps, engine = asyncio.run(scenario())
    assert isinstance(item, EngineError) and item.code == grpc.StatusCode.INTERNAL
    assert "boom" in item.message and steps == MAX_FAILED_STEPS
    assert engine.stats.recoveries == MAX_FAILED_STEPS - 1
    assert engine.scheduler.gpu.num_used == 0 and not engine.scheduler.requests
