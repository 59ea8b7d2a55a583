"""The scheduler's side of the executor control plane: one Step RPC per iteration.

This is a process edge: the plan leaves as a `StepRequest` built here, the reply comes
back as a `StepResult`, and a failed call as an `ExecutorError`; no protobuf or gRPC
error travels further into the daemon.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from apex.v1 import executor_pb2, executor_pb2_grpc

from scheduler.executors.step_message import StepEncoder
from scheduler.types import ExecutorError, StepPlan, StepResult, TokenLogprob

T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
]


@dataclass(frozen=True)
class TierSpec:
    """The CPU tier the daemon asks the CPU executor for: its dimensions and size."""

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

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_blocks", "block_size", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_proto(self) -> executor_pb2.InitTierRequest:
        return executor_pb2.InitTierRequest(**self.__dict__)


async def call(rpc: Awaitable[T]) -> T:
    """Await one executor RPC; a gRPC failure leaves as an ExecutorError."""
    try:
        return await rpc
    except grpc.aio.AioRpcError as e:
        raise ExecutorError(e.code().name, e.details() or "") from e


def step_logprobs(
    plan: StepPlan, reply: executor_pb2.StepResponse
) -> list[TokenLogprob | None] | None:
    if not reply.logprobs:
        return None
    return [
        TokenLogprob(lp.logprob, tuple(zip(lp.top_ids, lp.top_logprobs, strict=True)))
        if s.request.sampling.logprobs is not None
        else None
        for s, lp in zip(plan.seqs, reply.logprobs, strict=True)
    ]


class GpuExecutorClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = executor_pb2_grpc.GpuExecutorStub(self.channel)
        self.encoder = StepEncoder()

    async def info(self, timeout: float = 5.0) -> executor_pb2.ExecutorInfo:
        return await call(self.stub.GetInfo(executor_pb2.ExecutorInfoRequest(), timeout=timeout))

    async def init_cache(
        self, num_blocks: int, block_size: int, max_blocks_per_seq: int = 0
    ) -> int:
        request = executor_pb2.InitCacheRequest(
            num_blocks=num_blocks, block_size=block_size, max_blocks_per_seq=max_blocks_per_seq
        )
        reply = await call(self.stub.InitCache(request, timeout=120.0))
        return reply.cache_bytes

    async def step(self, plan: StepPlan, timeout: float) -> StepResult:
        """One iteration. The message holds deltas against the last step; where the
        executor no longer holds that step (it restarted), the plan goes again whole."""
        try:
            reply = await call(self.stub.Step(self.encoder.encode(plan), timeout=timeout))
        except ExecutorError as e:
            self.encoder.forget()
            if e.code != "ABORTED":  # the executor's refusal of a delta (executor.proto)
                raise
            reply = await call(self.stub.Step(self.encoder.encode(plan), timeout=timeout))
        self.encoder.acknowledge()
        return StepResult(list(reply.next_tokens), step_logprobs(plan, reply))

    async def attach_cpu_tier(self, layout: executor_pb2.CpuTierLayout) -> None:
        """The layout the CPU executor answered InitTier with, passed on as it came."""
        await call(self.stub.AttachCpuTier(layout, timeout=60.0))

    async def close(self) -> None:
        await self.channel.close()


class CpuExecutorClient:
    """Start-up only: the per-layer traffic goes through shared memory, not gRPC."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = executor_pb2_grpc.CpuExecutorStub(self.channel)

    async def info(self, timeout: float = 5.0) -> executor_pb2.CpuExecutorInfo:
        return await call(self.stub.GetInfo(executor_pb2.ExecutorInfoRequest(), timeout=timeout))

    async def init_tier(self, spec: TierSpec) -> executor_pb2.CpuTierLayout:
        return await call(self.stub.InitTier(spec.to_proto(), timeout=120.0))

    async def close(self) -> None:
        await self.channel.close()
