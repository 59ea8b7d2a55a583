"""The scheduler's bookkeeping on its own: no processes, no torch."""

from __future__ import annotations

import pytest

from scheduler.core.block_manager import BlockAllocator
from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.policies import placement_policy
from scheduler.types import FinishReason, Request, SamplingConfig, Status


def req(rid: str, prompt_len: int, max_tokens: int = 100, **kw) -> Request:
    return Request(
        rid,
        list(range(2, 2 + prompt_len)),
        SamplingConfig(temperature=0.0, max_tokens=max_tokens, **kw),
    )


def sched(blocks: int = 16, block_size: int = 4, **kw) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=blocks * block_size, block_size=block_size, num_gpu_blocks=blocks, **kw
    )
    return Scheduler(cfg, frozenset({1}), placement_policy(cfg.placement))


def test_allocator_hands_out_distinct_blocks_and_catches_double_free():
    a = BlockAllocator(8)
    x, y = a.allocate(3), a.allocate(5)
    assert sorted(x + y) == list(range(8)) and a.num_free == 0
    with pytest.raises(RuntimeError, match="0 free"):
        a.allocate(1)
    a.free(x)
    assert a.num_free == 3
    a.free(y)
    with pytest.raises(RuntimeError, match="freed twice"):
        a.free([0])


def test_config_rejects_a_cache_that_cannot_hold_one_sequence():
    with pytest.raises(ValueError, match="needs 5 blocks"):
        SchedulerConfig(max_model_len=20, block_size=4, num_gpu_blocks=4)
    with pytest.raises(ValueError, match="max_queue"):
        SchedulerConfig(max_model_len=16, block_size=4, num_gpu_blocks=4, max_queue=0)


def test_prefill_then_decode_plan_and_block_growth():
    s = sched()
    s.add(req("a", 5))
    plan = s.schedule()
    assert [(p.request.request_id, len(p.token_ids), p.start_pos) for p in plan.seqs] == [
        ("a", 5, 0)
    ]
    r = plan.seqs[0].request
    assert len(r.block_table) == 2  # 5 tokens in blocks of 4
    s.update(plan, [42])
    assert r.num_computed == 5 and r.output_ids == [42]
    plan = s.schedule()
    assert plan.seqs[0].token_ids == [42] and plan.seqs[0].start_pos == 5
    for tok in (43, 44):
        s.update(plan, [tok])
        plan = s.schedule()
    # 8 tokens computed + the new one at position 8 need a third block.
    assert plan.seqs[0].start_pos == 7 and len(r.block_table) == 2
    s.update(plan, [45])
    plan = s.schedule()
    assert plan.seqs[0].start_pos == 8 and len(r.block_table) == 3


def test_preemption_recomputes_the_newest_request():
    s = sched(blocks=4, block_size=4)
    s.add(req("old", 6))
    s.add(req("new", 6))
    plan = s.schedule()  # both prefill: 2 + 2 blocks, cache full
    assert s.gpu.num_free == 0
    s.update(plan, [10, 20])
    plan = s.schedule()  # 7 tokens each: still 2 blocks
    s.update(plan, [11, 21])
    plan = s.schedule()  # 8 tokens each: still 2 blocks
    s.update(plan, [12, 22])
    plan = s.schedule()  # 9 tokens each need a third block: the newest, "new", yields
    assert [p.request.request_id for p in plan.seqs] == ["old"]
    assert [r.request_id for r in plan.preempted] == ["new"]
    new = plan.preempted[0]
    assert new.status is Status.WAITING and new.block_table == [] and new.num_computed == 0
    assert new.output_ids == [20, 21, 22] and s.waiting[0] is new and s.num_preemptions == 1


def test_stop_conditions_and_abort_free_blocks():
    s = sched()
    s.add(req("len", 3, max_tokens=2))
    s.add(req("eos", 3))
    s.add(req("ign", 3, ignore_eos=True))
    s.add(req("stopid", 3, stop_token_ids=frozenset({9})))
    plan = s.schedule()
    s.update(plan, [5, 1, 1, 9])
    reasons = {p.request.request_id: p.request.finish_reason for p in plan.seqs}
    assert reasons == {
        "len": None,
        "eos": FinishReason.EOS,
        "ign": None,
        "stopid": FinishReason.STOP_TOKEN,
    }
    plan = s.schedule()
    s.update(plan, [5, 5])
    assert plan.seqs[0].request.finish_reason is FinishReason.LENGTH
    aborted = s.abort("ign")
    assert aborted.finish_reason is FinishReason.ABORTED
    assert s.gpu.num_used == 0 and not s.running and not s.requests


def test_abort_during_a_step_drops_its_token():
    s = sched()
    s.add(req("a", 3))
    plan = s.schedule()
    s.abort("a")
    assert s.update(plan, [7]) == []
    assert plan.seqs[0].request.output_ids == []


def test_admission_respects_token_budget_and_max_num_seqs():
    s = sched(blocks=64, max_num_batched_tokens=10, max_num_seqs=2)
    for i in range(3):
        s.add(req(f"r{i}", 6))
    plan = s.schedule()
    assert [p.request.request_id for p in plan.seqs] == ["r0"]  # 6 + 6 > 10
    s.update(plan, [1 + 2])
    plan = s.schedule()
    assert [p.request.request_id for p in plan.seqs] == ["r0", "r1"]  # max_num_seqs = 2


def test_queue_bound():
    # Duplicate ids are the engine's registry's to refuse: tests/test_engine.py.
    s = sched(max_queue=2)
    s.add(req("a", 2))
    assert not s.queue_full()
    s.add(req("b", 2))
    assert s.queue_full()
