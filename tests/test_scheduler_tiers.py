"""Two-tier bookkeeping: placement, swap-out instead of recompute, swap-in, pins."""

from __future__ import annotations

import pytest

from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.policies import placement_policy
from scheduler.types import Request, SamplingConfig, Status, Tier


def req(rid: str, prompt_len: int, max_tokens: int = 20) -> Request:
    return Request(
        rid,
        list(range(2, 2 + prompt_len)),
        SamplingConfig(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
    )


def sched(gpu: int, cpu: int, placement: str, bs: int = 4, max_len: int = 16) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=max_len,
        block_size=bs,
        num_gpu_blocks=gpu,
        num_cpu_blocks=cpu,
        placement=placement,
    )
    return Scheduler(cfg, frozenset({1}), placement_policy(cfg.placement))


def step(s: Scheduler, token: int = 7):
    plan = s.schedule()
    s.update(plan, [token] * len(plan.seqs))
    return plan


def check_blocks(s: Scheduler) -> None:
    """Every block is owned by exactly one live request of its tier, or free."""
    for tier, alloc in ((Tier.GPU, s.gpu), (Tier.CPU, s.cpu)):
        if alloc is None:
            continue
        owned = [b for r in s.requests.values() if r.tier is tier for b in r.block_table]
        assert len(owned) == len(set(owned)) == alloc.num_used


def test_config_validates_placement_and_cpu_capacity():
    with pytest.raises(ValueError, match="placement must be"):
        SchedulerConfig(max_model_len=16, block_size=4, num_gpu_blocks=4, placement="disk")
    with pytest.raises(ValueError, match="needs a CPU tier"):
        SchedulerConfig(max_model_len=16, block_size=4, num_gpu_blocks=4, placement="cpu")
    with pytest.raises(ValueError, match="CPU tier has 2"):
        SchedulerConfig(max_model_len=16, block_size=4, num_gpu_blocks=4, num_cpu_blocks=2)


def test_cpu_placement_moves_after_prefill_and_copies_the_filled_blocks():
    s = sched(gpu=8, cpu=8, placement="cpu")
    s.add(req("a", 6))
    plan = step(s)
    assert plan.seqs[0].tier is Tier.GPU and plan.swap_out == []  # prefill on the GPU
    gpu_blocks = list(plan.seqs[0].block_table)
    plan = step(s)
    # 6 prompt tokens computed: both GPU blocks hold KV and move; the CPU side gets
    # room for 7 tokens (2 blocks).
    assert plan.seqs[0].tier is Tier.CPU
    assert [a for a, _ in plan.swap_out] == gpu_blocks
    assert [b for _, b in plan.swap_out] == plan.seqs[0].block_table
    assert s.gpu.num_used == 0 and s.cpu.num_used == 2 and plan.num_cpu_rows == 1
    check_blocks(s)


def test_auto_swaps_out_instead_of_recomputing_and_swaps_back_in():
    s = sched(gpu=4, cpu=8, placement="auto")
    a, b = req("a", 4, max_tokens=6), req("b", 4, max_tokens=8)
    s.add(a)
    s.add(b)
    step(s)  # both futures fit beside each other at admission: both stay on the GPU
    assert a.target_tier is None and b.target_tier is None
    for _ in range(4):
        plan = step(s)  # steps 2-5: up to 8 tokens each, 2 blocks each, GPU full
    assert s.gpu.num_free == 0 and not plan.swap_out
    plan = step(s)  # step 6: "a" (9 tokens) needs a third block: "b", the newest, goes
    assert s.num_preemptions == 0 and s.num_swap_outs == 1
    assert b.tier is Tier.CPU and b.status is Status.RUNNING
    assert len(plan.swap_out) == 2  # its 8 computed tokens fill 2 blocks
    assert {p.request.request_id: p.tier for p in plan.seqs} == {"a": Tier.GPU, "b": Tier.CPU}
    check_blocks(s)
    assert "a" not in s.requests  # its 6th token came in step 6: its 3 blocks are free
    plan = step(s)  # step 7: b's remaining future fits on the GPU again: swap-in
    assert b.tier is Tier.GPU and len(plan.swap_in) == 3 and not plan.swap_out
    check_blocks(s)
    while s.has_work():
        step(s)
    assert s.gpu.num_used == 0 and s.cpu.num_used == 0 and len(b.output_ids) == 8


def test_gpu_placement_parks_evicted_requests_until_there_is_room():
    s = sched(gpu=4, cpu=8, placement="gpu")
    s.add(req("a", 6, max_tokens=8))
    s.add(req("b", 6, max_tokens=8))
    for _ in range(4):
        step(s)  # step n holds 6 + n - 1 tokens: at step 4, 9 need a third block: b goes
    assert [r.request_id for r in s.swapped] == ["b"]
    b = s.requests["b"]
    assert b.status is Status.SWAPPED and b.tier is Tier.CPU
    s.add(req("c", 2))
    plan = s.schedule()  # parked requests come first: no admission meanwhile
    assert [p.request.request_id for p in plan.seqs] == ["a"]
    s.update(plan, [7])
    while "a" in s.requests:
        step(s)
    plan = step(s)
    assert b.status is Status.RUNNING and b.tier is Tier.GPU and plan.swap_in
    assert all(p.tier is Tier.GPU for p in plan.seqs)
    check_blocks(s)


def test_pin_moves_a_request_both_ways():
    s = sched(gpu=8, cpu=8, placement="gpu")
    s.add(req("a", 5, max_tokens=10))
    step(s)
    assert s.pin("a", Tier.CPU) and not s.pin("zzz", Tier.CPU)
    plan = step(s)
    assert plan.seqs[0].tier is Tier.CPU and len(plan.swap_out) == 2
    plan = step(s)
    assert plan.seqs[0].tier is Tier.CPU and plan.swap_out == []  # stays: pinned
    s.pin("a", Tier.GPU)
    plan = step(s)
    assert plan.seqs[0].tier is Tier.GPU and len(plan.swap_in) == 2
    check_blocks(s)


def test_pin_to_cpu_without_a_cpu_tier_is_refused():
    s = sched(gpu=8, cpu=0, placement="gpu")
    s.add(req("a", 5))
    with pytest.raises(ValueError, match="no CPU tier"):
        s.pin("a", Tier.CPU)
