"""`n` samples of one prompt: prefilled once, its whole blocks held by every sample on
the GPU tier, each block freed when its last holder lets go."""

from __future__ import annotations

from collections import Counter

import pytest

from scheduler.core.block_manager import BlockAllocator
from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.policies import placement_policy
from scheduler.types import Request, SamplingConfig, Tier


def samples(n: int, prompt_len: int, max_tokens: int = 6) -> list[Request]:
    group: list[Request] = []
    for i in range(n):
        sp = SamplingConfig(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, seed=i)
        group.append(Request(f"s{i}", list(range(2, 2 + prompt_len)), sp, siblings=group))
    return group


def sched(placement: str = "gpu", gpu: int = 16, cpu: int = 0, **kw) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=32,
        block_size=4,
        num_gpu_blocks=gpu,
        num_cpu_blocks=cpu,
        placement=placement,
        **kw,
    )
    return Scheduler(cfg, frozenset({1}), placement_policy(cfg.placement))


def step(s: Scheduler):
    plan = s.schedule()
    s.update(plan, [7] * len(plan.seqs))
    return plan


def fed(plan) -> list[tuple[str, int, int]]:
    return [(p.request.request_id, p.start_pos, len(p.token_ids)) for p in plan.seqs]


def check_holds(s: Scheduler) -> None:
    """A GPU block is held as often as live tables name it; the rest are free."""
    held = Counter(b for r in s.requests.values() if r.tier is Tier.GPU for b in r.block_table)
    assert len(held) == s.gpu.num_used
    assert sum(1 for c in held.values() if c > 1) == s.gpu.num_shared


def test_a_shared_block_is_free_only_when_its_last_holder_frees_it():
    a = BlockAllocator(4)
    x = a.allocate(2)
    a.share(x)
    a.share(x[:1])
    a.free(x)
    assert a.num_free == 2 and a.num_shared == 1
    a.free(x)
    assert a.num_free == 3 and a.num_shared == 0
    a.free(x[:1])
    assert a.num_free == 4
    with pytest.raises(RuntimeError, match="freed twice"):
        a.free(x[:1])


def test_samples_after_the_first_prefill_only_past_its_whole_prompt_blocks():
    s = sched()
    group = samples(3, prompt_len=10)
    for r in group:
        s.add(r)
    assert fed(step(s)) == [("s0", 0, 10)]  # the others wait a step to share it
    plan = step(s)
    # 10 prompt tokens in blocks of 4: the first 2 blocks are shared; the last prompt
    # block (tokens 8-9) is computed by each sample, for its own first draw.
    assert fed(plan) == [("s0", 10, 1), ("s1", 8, 2), ("s2", 8, 2)]
    shared = group[0].block_table[:2]
    assert group[1].block_table[:2] == group[2].block_table[:2] == shared
    assert s.gpu.num_shared == 2 and s.gpu.num_used == 3 + 1 + 1
    assert (s.num_prompt_tokens_prefilled, s.num_prompt_tokens_shared) == (10 + 2 + 2, 8 + 8)
    check_holds(s)
    while s.has_work():
        step(s)
        check_holds(s)
    assert [len(r.output_ids) for r in group] == [6, 6, 6]
    assert s.gpu.num_used == 0 and s.gpu.num_shared == 0


def test_a_prompt_inside_one_block_is_not_waited_for():
    s = sched()
    for r in samples(2, prompt_len=4):
        s.add(r)
    assert fed(step(s)) == [("s0", 0, 4), ("s1", 0, 4)]
    assert s.gpu.num_shared == 0


def test_when_the_first_sample_is_gone_the_next_one_prefills_and_lends():
    s = sched()
    group = samples(3, prompt_len=9)
    for r in group:
        s.add(r)
    step(s)
    s.abort("s0")
    assert fed(step(s)) == [("s1", 0, 9)]
    assert fed(step(s)) == [("s1", 9, 1), ("s2", 8, 1)]
    assert group[2].block_table[:2] == group[1].block_table[:2]
    check_holds(s)


def test_cpu_placement_shares_before_the_move_and_copies_after_it():
    s = sched("cpu", gpu=12, cpu=16)
    group = samples(2, prompt_len=10)
    for r in group:
        s.add(r)
    step(s)
    plan = step(s)  # s0 stays on the GPU until s1 holds its prompt blocks
    assert fed(plan) == [("s0", 10, 1), ("s1", 8, 2)] and plan.swap_out == []
    assert s.gpu.num_shared == 2
    shared = group[0].block_table[:2]
    plan = step(s)  # now both move, each copying the blocks it holds
    assert {r.tier for r in group} == {Tier.CPU}
    assert len(plan.swap_out) == 3 + 3 and s.gpu.num_used == 0 and s.gpu.num_shared == 0
    sources = Counter(a for a, _ in plan.swap_out)
    assert [sources[b] for b in shared] == [2, 2]
    assert len({b for _, b in plan.swap_out}) == 6  # distinct CPU blocks
    while s.has_work():
        step(s)
    assert s.cpu.num_used == 0 and [len(r.output_ids) for r in group] == [6, 6]


def test_with_chunked_prefill_the_others_wait_for_the_whole_prompt_then_share_it():
    s = sched(max_num_batched_tokens=6, chunked_prefill=True)
    group = samples(2, prompt_len=10)
    for r in group:
        s.add(r)
    assert fed(step(s)) == [("s0", 0, 6)]
    assert fed(step(s)) == [("s0", 6, 4)]  # s1 waits: s0's prompt is not all in
    assert fed(step(s)) == [("s0", 10, 1), ("s1", 8, 2)]
    assert group[1].block_table[:2] == group[0].block_table[:2] and s.gpu.num_shared == 2
