"""Chunked prefill in the scheduler: an iteration's tokens stay within the budget, a
decode row runs in every iteration while a long prompt comes in by chunks, a chunk
before the last draws nothing, and a request moves tiers only once its prompt is in."""

from __future__ import annotations

from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.policies import placement_policy
from scheduler.types import Request, SamplingConfig, Tier


def req(rid: str, prompt_len: int, max_tokens: int = 30) -> Request:
    sp = SamplingConfig(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return Request(rid, list(range(2, 2 + prompt_len)), sp)


def sched(budget: int, placement: str = "gpu", cpu: int = 0) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=64,
        block_size=4,
        num_gpu_blocks=32,
        num_cpu_blocks=cpu,
        placement=placement,
        max_num_batched_tokens=budget,
        chunked_prefill=True,
    )
    return Scheduler(cfg, frozenset({1}), placement_policy(cfg.placement))


DRAWS: dict[int, list[bool]] = {}  # step id -> which rows' draws are kept


def step(s: Scheduler):
    plan = s.schedule()
    DRAWS[plan.step_id] = [sq.draws for sq in plan.seqs]  # read before the results
    s.update(plan, [7] * len(plan.seqs))
    return plan


def fed(plan) -> list[tuple[str, int, int]]:
    return [(p.request.request_id, p.start_pos, len(p.token_ids)) for p in plan.seqs]


def test_a_long_prompt_comes_in_by_chunks_beside_a_decode_that_never_stalls():
    s = sched(budget=8)
    short, long = req("short", 3), req("long", 21)
    s.add(short)
    assert fed(step(s)) == [("short", 0, 3)]
    s.add(long)
    plans = [step(s) for _ in range(4)]
    # the decode row takes one token of the 8; the prompt gets the other 7 each time
    assert [fed(p) for p in plans] == [
        [("short", 3, 1), ("long", 0, 7)],
        [("short", 4, 1), ("long", 7, 7)],
        [("short", 5, 1), ("long", 14, 7)],
        [("short", 6, 1), ("long", 21, 1)],
    ]
    assert all(sum(len(q.token_ids) for q in p.seqs) <= 8 for p in plans)
    # a chunk before the last draws nothing; the last one and the decode after it do
    assert DRAWS[plans[1].step_id] == [True, False]
    assert DRAWS[plans[2].step_id] == [True, True]
    assert long.output_ids == [7, 7] and long.num_computed == 22
    assert len(long.block_table) == 6 and len(short.output_ids) == 5


def test_a_prompt_moves_to_the_cpu_tier_only_once_it_is_all_in():
    s = sched(budget=8, placement="cpu", cpu=32)
    long = req("long", 20)
    s.add(long)
    for _ in range(2):  # 8 + 8 of 20 tokens: still prefilling, still on the GPU
        plan = step(s)
        assert plan.swap_out == [] and long.tier is Tier.GPU
    plan = step(s)  # the last 4 tokens
    assert fed(plan) == [("long", 16, 4)] and long.output_ids == [7]
    plan = step(s)
    assert long.tier is Tier.CPU and len(plan.swap_out) == 5


def test_unchunked_admits_a_long_prompt_whole():
    cfg = SchedulerConfig(
        max_model_len=64, block_size=4, num_gpu_blocks=32, max_num_batched_tokens=8
    )
    s = Scheduler(cfg, frozenset({1}), placement_policy("gpu"))
    s.add(req("long", 21))
    assert fed(step(s)) == [("long", 0, 21)]
