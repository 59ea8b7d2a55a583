"""Policies: strategy choice from the cost model, placement under the TPOT bound, NEO's
hiding rule, live switching, and the simulator's three-way comparison."""

from __future__ import annotations

import math

import pytest

from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.costs.cost_model import Work, best_decision, overlap_s, pipeline_s
from scheduler.costs.profile import Profile
from scheduler.policies import make_policy
from scheduler.policies.apex import ApexPolicy, default_tpot_slo
from scheduler.policies.base import mean_context
from scheduler.sim.simulator import WORKLOADS, simulate
from scheduler.types import Request, SamplingConfig, SeqPlan, Status, Strategy, Tier

T4 = Profile.load("t4-llama2-7b")


def rows(gpu_ctx: list[int], cpu_ctx: list[int]) -> list[SeqPlan]:
    r = Request("x", [1], SamplingConfig())
    return [SeqPlan(r, [1], c - 1, Tier.GPU, []) for c in gpu_ctx] + [
        SeqPlan(r, [1], c - 1, Tier.CPU, []) for c in cpu_ctx
    ]


def test_no_cpu_rows_is_gpu_only():
    d = make_policy("apex", T4, 0.2).choose(rows([500, 700], []))
    assert d.strategy is Strategy.GPU_ONLY and d.pipeline_rows == 0
    assert d.predicted_s > T4.num_layers * T4.linear_s(2)


def test_light_cpu_load_overlaps_heavy_load_pipelines():
    apex = make_policy("apex", T4, 1.0)
    light = apex.choose(rows([1000], [200]))
    heavy = apex.choose(rows([1000], [1000] * 8))
    assert light.strategy is Strategy.OVERLAP
    assert heavy.strategy is Strategy.PIPELINE and 0 < heavy.pipeline_rows <= 8
    # and each choice is the cheaper of the two by the model
    for seqs, d in ((rows([1000], [200]), light), (rows([1000], [1000] * 8), heavy)):
        w = Work(len(seqs), len(seqs), 1000.0, tuple(float(s.start_pos + 1) for s in seqs[1:]))
        assert d.predicted_s == pytest.approx(min(overlap_s(T4, w), pipeline_s(T4, w)[0]))


def test_pipeline_split_balances_the_two_windows():
    w = Work(9, 9, 1000.0, (1000.0,) * 8)
    t, k = pipeline_s(T4, w)
    # every other split is no faster, and the best one puts CPU rows in both parts
    assert all(pipeline_s(T4, w, j)[0] >= t - 1e-12 for j in range(1, 9))
    assert 0 < k < 8
    assert t < overlap_s(T4, w)


@pytest.mark.parametrize("profile", ["t4-llama2-7b", "a10-llama3.1-8b"])
@pytest.mark.parametrize("seed", range(20))
def test_bisected_split_is_as_good_as_trying_every_split(profile, seed):
    import random

    cost = Profile.load(profile)
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    w = Work(
        n + rng.randint(0, 40) + rng.choice([0, 0, 500]),  # sometimes a prefill rides in B0
        n,
        float(rng.randint(0, 20000)),
        tuple(float(rng.randint(10, 4000)) for _ in range(n)),
        rng.randint(0, 40),
    )
    t, _ = pipeline_s(cost, w)
    assert t == pytest.approx(min(pipeline_s(cost, w, j)[0] for j in range(1, n + 1)), rel=1e-9)


def sched_with(policy, gpu_blocks=40, cpu_blocks=4000) -> Scheduler:
    cfg = SchedulerConfig(
        max_model_len=512,
        block_size=16,
        num_gpu_blocks=gpu_blocks,
        num_cpu_blocks=cpu_blocks,
        max_num_batched_tokens=4096,
    )
    return Scheduler(cfg, frozenset(), policy=policy)


def new(rid: str, prompt: int = 100, out: int = 400) -> Request:
    return Request(
        rid, [2] * prompt, SamplingConfig(temperature=0.0, max_tokens=out, ignore_eos=True)
    )


def run(s: Scheduler, steps: int):
    plans = []
    for _ in range(steps):
        plan = s.schedule()
        if plan is None:
            break
        s.update(plan, [2] * len(plan.seqs))
        plans.append(plan)
    return plans


@pytest.mark.parametrize("slo_ms", [70.0, 110.0, 200.0])
def test_apex_keeps_predicted_decode_steps_under_its_bound(slo_ms):
    s = sched_with(make_policy("apex", T4, slo_ms / 1e3))
    for i in range(150):
        s.add(new(f"r{i}"))
    plans = run(s, 150)
    decode_only = [p for p in plans if p.num_prefill_tokens == 0 and p.num_cpu_rows]
    assert decode_only, "some requests should decode on the CPU tier"
    assert max(p.predicted_s for p in decode_only) <= slo_ms / 1e3 * 1.05
    assert s.waiting, "the bound must hold some requests back"


def test_tighter_bound_admits_fewer_cpu_rows():
    counts = []
    for slo in (0.07, 0.2):
        s = sched_with(make_policy("apex", T4, slo))
        for i in range(40):
            s.add(new(f"r{i}"))
        run(s, 30)
        counts.append(sum(1 for r in s.running if r.tier is Tier.CPU))
    assert counts[0] < counts[1]


def test_neo_runs_only_the_cpu_rows_that_hide_and_pipelines_them():
    from scheduler.costs.cost_model import pipeline_hidden, work_of

    neo = make_policy("neo", T4)
    seqs = rows([1000, 800], [3000, 2500, 400, 3000, 300, 2000, 1000, 3500, 200])
    ran = neo.select(seqs)
    cpu_ran = [s for s in ran if s.tier is Tier.CPU]
    assert 0 < len(cpu_ran) < 9, "some CPU rows run, the rest wait this iteration"
    assert all(s in ran for s in seqs if s.tier is Tier.GPU)
    assert pipeline_hidden(T4, work_of(ran))
    # NEO's rule: after a row that does not hide, only shorter ones are tried
    first_out = next(s for s in seqs if s.tier is Tier.CPU and s not in ran)
    later = seqs[seqs.index(first_out) + 1 :]
    assert all(s.start_pos < first_out.start_pos for s in later if s in ran)
    assert neo.choose(ran).strategy is Strategy.PIPELINE
    # with no GPU rows to hide under, it still makes progress
    assert neo.select(rows([], [9000, 9000]))


def test_gpu_only_never_decodes_on_the_cpu_tier():
    s = sched_with(make_policy("gpu-only", T4), gpu_blocks=40)
    for i in range(10):
        s.add(new(f"r{i}"))
    plans = run(s, 300)
    assert all(p.num_cpu_rows == 0 and p.strategy is Strategy.GPU_ONLY for p in plans)
    assert s.num_swap_outs > 0, "a full GPU tier parks requests on the CPU tier"


def test_live_switch_takes_effect_at_the_next_iteration():
    s = sched_with(make_policy("gpu-only", T4))
    for i in range(20):
        s.add(new(f"r{i}"))
    run(s, 5)
    assert not any(r.tier is Tier.CPU for r in s.running)
    s.set_policy(make_policy("apex", T4, 0.2))
    plans = run(s, 40)
    assert any(p.num_cpu_rows for p in plans)


def test_bad_policy_settings_are_value_errors():
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy("fastest", T4)
    with pytest.raises(ValueError, match="TPOT bound"):
        ApexPolicy(T4, 0.0)
    fallback = make_policy("apex", None)
    assert fallback.name == "apex" and "no profile" in fallback.describe()
    assert math.isnan(fallback.choose(rows([10], [10])).predicted_s)


def test_apex_default_bound_scales_with_the_machine_and_an_operators_does_not():
    derived, given = make_policy("apex", T4), make_policy("apex", T4, 0.2)
    default = default_tpot_slo(T4)
    assert derived.tpot_slo_s == default and derived.tpot_slo_given is None
    assert "from the profile" in derived.describe()
    assert given.tpot_slo_s == 0.2 and "from the profile" not in given.describe()
    # the machine runs its steps at twice the profile's time
    for p in (derived, given):
        for _ in range(10):
            p.calibration.observe(0.05, 0.1)
    assert derived.tpot_slo_s == pytest.approx(2 * default) and given.tpot_slo_s == 0.2
    # so a default-bound apex admits what it did on the profile's machine: the step it
    # predicts and the bound it holds it to scale together. A step of 0.86x the default
    # on the profile runs at 1.7x it here: a bound left unscaled would refuse it.
    work = Work(8, 8, 4000.0, (2000.0,) * 3, 5)
    fresh = make_policy("apex", T4)
    assert fresh.step_s(work) < default < derived.step_s(work)
    assert derived.within_bound(work) and fresh.within_bound(work)
    # while the operator's bound holds as it is: the slower machine no longer meets it
    assert make_policy("apex", T4, 0.2).within_bound(work) and not given.within_bound(work)


def test_best_decision_without_cpu_strategies_still_runs_forced_cpu_rows():
    d = best_decision(T4, Work(2, 2, 10.0, (10.0,)), ())
    assert d.strategy is Strategy.OVERLAP


def test_simulated_apex_beats_gpu_only_on_long_outputs_at_the_t4_memory_limit():
    chat = WORKLOADS["chat"]
    res = {p: simulate(T4, chat, p, n=60, rate=1.0, seed=1) for p in ("gpu-only", "neo", "apex")}
    assert res["apex"].throughput > 1.8 * res["gpu-only"].throughput
    assert res["apex"].tpot_p99 <= 1.1 * res["gpu-only"].tpot_p99
    assert res["neo"].strategies.get("pipeline", 0) > 0
    assert set(res["apex"].strategies) <= {"gpu-only", "overlap", "pipeline"}


def test_switching_to_gpu_only_with_rows_on_the_cpu_tier_keeps_them_decoding():
    s = sched_with(make_policy("apex", T4, 0.2))
    for i in range(20):
        s.add(new(f"r{i}"))
    run(s, 10)
    assert any(r.tier is Tier.CPU for r in s.running)
    s.set_policy(make_policy("gpu-only", T4))
    while s.has_work():
        on_cpu = {r.request_id for r in s.running if r.tier is Tier.CPU}
        decoding = {r.request_id: r for r in s.running}
        plan = s.schedule()
        ran = {x.request.request_id for x in plan.seqs}
        assert on_cpu <= ran, "a row on the CPU tier missed its token"
        # a GPU row that missed one was evicted when the GPU tier filled: gpu-only parks
        # it on the CPU tier (swap) or requeues it, as vLLM does
        for rid in decoding.keys() - ran:
            assert decoding[rid].status in (Status.SWAPPED, Status.WAITING), rid
        cpu_rows = [x for x in plan.seqs if x.tier is Tier.CPU]
        # rows already on the CPU tier keep decoding there (overlap) until moved back
        assert plan.strategy is (Strategy.OVERLAP if cpu_rows else Strategy.GPU_ONLY)
        s.update(plan, [2] * len(plan.seqs))
    assert s.num_swap_ins > 0, "they move back to the GPU as room returns"
    assert not s.requests and s.gpu.num_used == 0 and s.cpu.num_used == 0


def test_apex_spills_gpu_rows_to_the_cpu_so_a_waiting_prompt_starts_now():
    """A GPU tier full of decoding rows and a prompt that does not fit: apex moves the
    newest GPU rows to the CPU tier in the same plan (swap-out before the forward pass)
    and prefills the prompt; gpu-only and neo leave it waiting; apex with a bound the
    CPU rows would break does not spill."""

    def filled(policy) -> Scheduler:
        s = sched_with(policy, gpu_blocks=32)
        for i in range(3):  # 3 x (100 + 20) tokens: 24 blocks, 8 left
            s.add(new(f"r{i}", prompt=100, out=300))
        run(s, 20)
        assert all(r.tier is Tier.GPU for r in s.running) and len(s.running) == 3
        s.add(new("late", prompt=200, out=50))  # 13 blocks: more than the 8 free
        return s

    s = filled(make_policy("apex", T4, 0.2))
    free_before = s.gpu.num_free
    plan = s.schedule()
    assert "late" in {x.request.request_id for x in plan.seqs if x.is_prefill}
    moved = [r for r in s.running if r.tier is Tier.CPU]
    assert moved and plan.swap_out, "a GPU row went to the CPU tier in the same plan"
    assert [r.request_id for r in moved] == ["r2"]  # the newest, and only what was short
    assert s.gpu.num_free + 13 >= free_before  # the prompt took what the move freed
    for policy in (make_policy("gpu-only", T4), make_policy("neo", T4)):
        s = filled(policy)
        plan = s.schedule()
        assert "late" not in {x.request.request_id for x in plan.seqs} and not plan.swap_out
    s = filled(make_policy("apex", T4, 0.001))  # no CPU row fits such a bound
    plan = s.schedule()
    assert not plan.swap_out and [r.request_id for r in s.waiting] == ["late"]


def test_a_row_counts_at_its_mean_context_over_its_life_or_what_it_holds_now():
    r = new("r", prompt=100, out=400)
    assert mean_context(r) == 300  # 100 + 400 / 2, from its first token on
    r.output_ids = [2] * 150
    assert mean_context(r) == 300  # halfway through its life it holds less than that
    r.output_ids = [2] * 350
    assert mean_context(r) == 450  # late in it, what it holds


def test_apex_waits_for_the_gpu_only_while_that_keeps_the_ttft_bound():
    """A full GPU tier where one row ends in a few steps: a prompt that does not fit
    waits for that room under a 10 s TTFT bound (no spill, no CPU row); it is spilled for
    at once under a bound the wait would break, or once it has waited past half of it."""

    def filled(ttft_s: float) -> Scheduler:
        s = sched_with(ApexPolicy(T4, 0.2, ttft_s), gpu_blocks=32)
        s.add(new("ends-soon", prompt=100, out=25))
        for i in range(2):
            s.add(new(f"r{i}", prompt=100, out=300))
        run(s, 20)  # 3 x 120 tokens: 24 blocks, 8 left
        assert all(r.tier is Tier.GPU for r in s.running) and len(s.running) == 3
        s.add(new("late", prompt=200, out=50))  # 13 blocks: more than the 8 free
        return s

    s = filled(10.0)
    plan = s.schedule()
    assert not plan.swap_out and [r.request_id for r in s.waiting] == ["late"]
    s.update(plan, [2] * len(plan.seqs))
    while s.waiting:
        plan = s.schedule()
        assert not plan.swap_out and not plan.num_cpu_rows
        s.update(plan, [2] * len(plan.seqs))
    late = next(r for r in s.running if r.request_id == "late")
    assert late.tier is Tier.GPU and "ends-soon" not in s.requests

    s = filled(0.01)
    plan = s.schedule()
    assert plan.swap_out and "late" in {x.request.request_id for x in plan.seqs}

    s = filled(10.0)
    s.waiting[0].arrival_time -= 6.0  # it has waited 6 s of its 10 already
    plan = s.schedule()
    assert plan.swap_out and "late" in {x.request.request_id for x in plan.seqs}
