"""The scheduler's side of the executor control plane: one Step RPC per iteration."""

from __future__ import annotations

import grpc
from apex.v1 import executor_pb2, executor_pb2_grpc

from scheduler.core import StepPlan

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
]


class GpuExecutorClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = executor_pb2_grpc.GpuExecutorStub(self.channel)

    async def info(self, timeout: float = 5.0) -> executor_pb2.ExecutorInfo:
        return await self.stub.GetInfo(executor_pb2.ExecutorInfoRequest(), timeout=timeout)

    async def init_cache(self, num_blocks: int, block_size: int) -> int:
        reply = await self.stub.InitCache(
            executor_pb2.InitCacheRequest(num_blocks=num_blocks, block_size=block_size),
            timeout=120.0,
        )
        return reply.cache_bytes

    async def step(self, plan: StepPlan, timeout: float) -> executor_pb2.StepResponse:
        seqs = [
            executor_pb2.SeqStep(
                request_id=s.request.request_id,
                token_ids=s.token_ids,
                start_pos=s.start_pos,
                block_table=s.request.block_table,
                sampling=executor_pb2.SamplingSpec(
                    temperature=s.request.sampling.temperature,
                    top_p=s.request.sampling.top_p,
                    top_k=s.request.sampling.top_k,
                    seed=s.request.sampling.seed,
                ),
            )
            for s in plan.seqs
        ]
        req = executor_pb2.StepRequest(step_id=plan.step_id, seqs=seqs)
        return await self.stub.Step(req, timeout=timeout)

    async def close(self) -> None:
        await self.channel.close()
