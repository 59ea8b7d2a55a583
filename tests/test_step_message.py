"""The delta step message: what the executor rebuilds from each message equals the plan,
step after step, across tier moves, preemptions, min_tokens and a failed step; a delta
the executor cannot apply is refused, and the client then sends the step whole, as it
does against a real executor process that lost its memory."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from apex.v1 import executor_pb2

from gpu_executor.row_memory import RowMemory, RowMemoryLost
from launcher.stack import free_port, start, stop, wait_healthy
from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.executors.client import GpuExecutorClient
from scheduler.executors.step_message import StepEncoder, sampling_spec
from scheduler.policies import placement_policy
from scheduler.types import Request, SamplingConfig, StepPlan, Tier
from tests.factories import hf_greedy


def scheduler(gpu_blocks: int = 64, cpu_blocks: int = 64) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=64,
        block_size=4,
        num_gpu_blocks=gpu_blocks,
        num_cpu_blocks=cpu_blocks,
        placement="auto",
    )
    return Scheduler(cfg, frozenset({1}), placement_policy(cfg.placement))


def request(rid: str, n: int, **sampling) -> Request:
    sp = SamplingConfig(max_tokens=30, ignore_eos=True, **sampling)
    return Request(rid, list(range(2, 2 + n)), sp)


def check_rebuilt(plan: StepPlan, msg: executor_pb2.StepRequest, memory: RowMemory) -> None:
    rows = memory.resolve(msg)
    for s, row in zip(plan.seqs, rows, strict=True):
        rid = s.request.request_id
        assert (row.request_id, row.token_ids, row.start_pos) == (rid, s.token_ids, s.start_pos)
        assert row.table == list(s.block_table), rid
        assert row.sampling == sampling_spec(s), rid
        assert row.tier == (executor_pb2.TIER_CPU if s.tier is Tier.CPU else executor_pb2.TIER_GPU)
    memory.keep(rows)


def test_the_executor_rebuilds_every_plan_from_the_deltas():
    s, encoder, memory = scheduler(gpu_blocks=24), StepEncoder(), RowMemory()
    for i in range(6):
        s.add(request(f"r{i}", 5 + 3 * i, min_tokens=4 if i % 2 else 0, seed=i))
    whole = delta = columns = rows = 0
    for step in range(60):
        plan = s.schedule()
        if plan is None:
            break
        if step == 8:  # a row moves to the CPU tier and back: new tables on the other tier
            rid = next(iter(s.running)).request_id
            s.pin(rid, Tier.CPU)
        if step == 12:
            s.pin(rid, Tier.GPU)
        msg = encoder.encode(plan)
        check_rebuilt(plan, msg, memory)
        encoder.acknowledge()
        delta += sum(len(r.block_table) for r in msg.seqs)
        delta += sum(1 for b in msg.continue_block if b >= 0)
        whole += sum(len(r.block_table) for r in plan.seqs)
        columns += sum(1 for src in msg.row_source if src >= 0)
        rows += len(plan.seqs)
        if step == 20:  # a failed step: the encoder forgets, the next message is whole
            encoder.forget()
            msg = encoder.encode(plan)
            assert not msg.row_source and len(msg.seqs) == len(plan.seqs)
            assert all(r.table_offset == 0 and r.HasField("sampling") for r in msg.seqs)
        s.update(plan, [7] * len(plan.seqs))
    assert not s.running and not s.waiting
    assert s.num_preemptions + s.num_swap_outs > 0, "the run exercised no preemption or move"
    assert delta < whole / 3, (delta, whole)
    assert columns > rows / 2, (columns, rows)  # most rows went as three integers


def test_min_tokens_sends_sampling_while_the_ban_changes_then_stops_sending_it():
    s, encoder = scheduler(), StepEncoder()
    s.add(request("a", 3, min_tokens=3, stop_token_ids=(9,)))
    sent = []
    for _ in range(6):
        plan = s.schedule()
        msg = encoder.encode(plan)
        encoder.acknowledge()
        sent.append(bool(msg.seqs) and msg.seqs[0].HasField("sampling"))
        s.update(plan, [7])
    # token 9 is banned for the first three draws; the fourth step sends the lifted ban
    assert sent == [True, False, False, True, False, False]


def test_a_delta_the_executor_cannot_apply_is_refused_and_memory_is_kept():
    memory = RowMemory()
    full = executor_pb2.SeqStep(
        request_id="a", token_ids=[5], start_pos=3, block_table=[4, 9], sampling={"seed": 1}
    )
    memory.keep(memory.resolve(executor_pb2.StepRequest(seqs=[full])))
    for bad, what in (
        (executor_pb2.SeqStep(request_id="b", token_ids=[5], table_offset=1), "table_offset"),
        (executor_pb2.SeqStep(request_id="b", token_ids=[5], block_table=[3]), "sampling"),
        (executor_pb2.SeqStep(request_id="a", token_ids=[5], table_offset=3), "table_offset"),
        (
            executor_pb2.SeqStep(
                request_id="a", token_ids=[5], table_offset=1, tier=executor_pb2.TIER_CPU
            ),
            "table_offset",
        ),
    ):
        with pytest.raises(RowMemoryLost, match=what):
            memory.resolve(executor_pb2.StepRequest(seqs=[bad]))
    with pytest.raises(RowMemoryLost, match="row 1 of the last step"):
        memory.resolve(
            executor_pb2.StepRequest(row_source=[1], continue_token=[6], continue_block=[-1])
        )
    for bad, what in (
        ({"row_source": [0], "continue_token": [6], "continue_block": []}, "as long as"),
        ({"row_source": [0, -1], "continue_token": [6], "continue_block": [-1]}, "more than"),
        ({"row_source": [0], "continue_token": [6, 7], "continue_block": [-1, -1]}, "account"),
    ):
        with pytest.raises(ValueError, match=what):
            memory.resolve(executor_pb2.StepRequest(**bad))
    msg = executor_pb2.StepRequest(
        seqs=[executor_pb2.SeqStep(request_id="a", table_offset=2, block_table=[1])]
    )
    (row,) = memory.resolve(msg)
    assert row.table == [4, 9, 1] and row.sampling.seed == 1
    # a continued row: the last step's row 0, its next token, and the block it gained
    msg = executor_pb2.StepRequest(row_source=[0], continue_token=[6], continue_block=[12])
    (row,) = memory.resolve(msg)
    assert (row.request_id, row.token_ids, row.start_pos) == ("a", [6], 4)
    assert row.table == [4, 9, 12] and row.sampling.seed == 1


def test_a_real_executor_that_lost_its_memory_gets_the_step_whole(models, tmp_path):
    """InitCache empties the executor's memory between two steps, as a restart would:
    the client's delta is refused with ABORTED and it resends the step whole. The
    greedy tokens of the steps that kept the cache equal transformers'."""
    port = free_port()
    argv = ["gpu_executor.server", "--model", str(models["tiny"]), "--port", str(port)]
    with open(tmp_path / "gpu-executor.log", "wb") as log:
        child = start("gpu-executor", [*argv, "--threads", "1"], f"127.0.0.1:{port}", log)
        try:
            wait_healthy(child, 60)
            asyncio.run(two_runs(f"127.0.0.1:{port}", models["tiny"]))
        finally:
            stop([child])


async def two_runs(address: str, model) -> None:
    client = GpuExecutorClient(address)
    try:
        await client.init_cache(64, 4)
        s = scheduler(cpu_blocks=0)
        prompt = list(range(5, 14))
        s.add(Request("a", prompt, SamplingConfig(temperature=0.0, max_tokens=6, ignore_eos=True)))
        out = []
        for i in range(6):
            plan = s.schedule()
            if i == 3:  # the executor forgets; the cache is new, so generation stops here
                await client.init_cache(64, 4)
            result = await client.step(plan, timeout=60)
            if i >= 3:  # the step ran: the delta was refused and the step went whole
                assert len(result.next_tokens) == 1
                assert client.encoder.acked["a"].length == len(plan.seqs[0].block_table)
                break
            out += result.next_tokens
            s.update(plan, result.next_tokens)
        assert out == hf_greedy(model, prompt, 3)
        # columns that do not add up are the sender's mistake; a row it never ran, lost
        for columns, code in (
            ({"row_source": [0, 0], "continue_token": [1], "continue_block": [-1]}, "INVALID"),
            ({"row_source": [5], "continue_token": [1], "continue_block": [-1]}, "ABORTED"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.stub.Step(executor_pb2.StepRequest(step_id=99, **columns), timeout=30)
            assert err.value.code().name.startswith(code), err.value
            assert "row" in err.value.details(), err.value.details()
    finally:
        await client.close()
