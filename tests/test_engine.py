"""The engine's behaviour in-process, in milliseconds: a fake executor stands in for the
real ones (which tests/test_exactness.py and the other real-process tests start), so
streaming, stops, aborts, drain, policy switches and executor failures are each checked
here on the engine's own logic."""

from __future__ import annotations

import asyncio
import math

import pytest

from scheduler.costs.profile import Profile
from scheduler.engine.engine import MAX_FAILED_STEPS
from scheduler.engine.outputs import Draining, DuplicateRequest, EngineError, QueueFull
from scheduler.policies.apex import default_tpot_slo
from scheduler.types import ErrorCode, FinishReason, Status, Tier
from tests.factories import EOS, FakeExecutors, byte_tokenizer, collect, make_engine, request


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return byte_tokenizer(tmp_path_factory.mktemp("byte-tokenizer"))


def ids(text: str) -> list[int]:
    return [b + 2 for b in text.encode()]  # the byte tokenizer's ids (see factories)


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_streams_text_and_ids_then_a_final_delta_with_usage(tokenizer):
    async def scenario():
        fake = FakeExecutors({"r": ids("héllo wörld")})
        engine = make_engine(tokenizer, fake)
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=64)))
        await engine.stop()
        return engine, items

    engine, items = run(scenario)
    text = "".join(d.text for d in items)
    tokens = [t for d in items for t in d.token_ids]
    assert text == "héllo wörld"  # multi-byte characters are never split across deltas
    assert all("\ufffd" not in d.text for d in items)
    assert tokens == [*ids("héllo wörld"), EOS]
    final = items[-1]
    assert final.finish_reason is FinishReason.EOS and final.usage.completion_tokens == 14
    assert len(items) > 2, "streamed as it went, not at the end"
    assert engine.streams == {} and engine.scheduler.gpu.num_used == 0


def test_max_tokens_ends_with_length(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors({"r": ids("abcdefgh")}))
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=3)))
        await engine.stop()
        return items

    items = run(scenario)
    assert "".join(d.text for d in items) == "abc"
    assert items[-1].finish_reason is FinishReason.LENGTH


def test_stop_string_is_cut_and_never_streamed(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors({"r": ids("one two STOP three")}))
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=64, stop=("STOP",))))
        await engine.stop()
        return engine, items

    engine, items = run(scenario)
    assert "".join(d.text for d in items) == "one two "
    assert all("S" not in d.text for d in items)
    assert items[-1].finish_reason is FinishReason.STOP_STRING
    assert items[-1].matched_stop == "STOP"
    assert engine.scheduler.gpu.num_used == 0


def test_a_stop_string_completed_by_the_last_allowed_token_is_the_finish_reason(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors({"r": ids("abcSTOPdef")}))
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=7, stop=("STOP",))))
        await engine.stop()
        return items

    items = run(scenario)
    assert "".join(d.text for d in items) == "abc"
    assert items[-1].finish_reason is FinishReason.STOP_STRING
    assert items[-1].matched_stop == "STOP"


def test_stop_token_ends_at_its_first_occurrence(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors({"r": ids("ab;cd;")}))
        engine.start()
        items = await collect(
            engine.submit(request("r", max_tokens=64, stop_token_ids=frozenset(ids(";"))))
        )
        await engine.stop()
        return items

    items = run(scenario)
    assert [t for d in items for t in d.token_ids] == ids("ab;")
    assert items[-1].finish_reason is FinishReason.STOP_TOKEN


def test_abort_mid_stream_ends_it_and_frees_its_blocks(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors(step_s=0.002))
        engine.start()
        stream = engine.submit(request("r", max_tokens=64))
        first = await asyncio.wait_for(stream.queue.get(), 5)
        assert engine.abort("r") and not engine.abort("r") and not engine.abort("nobody")
        rest = await collect(stream)
        status = engine.status()
        await engine.stop()
        return first, rest, status, engine

    first, rest, status, engine = run(scenario)
    assert first.finish_reason is None
    assert rest[-1].finish_reason is FinishReason.ABORTED
    assert status.num_running == status.num_waiting == 0
    assert status.tiers[0].blocks_used == 0 and engine.streams == {}


def test_duplicate_ids_and_a_full_queue_are_refused(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors(), max_queue=2)
        engine.submit(request("a"))  # not started: both wait
        with pytest.raises(DuplicateRequest, match="already live"):
            engine.submit(request("a"))
        engine.submit(request("b"))
        with pytest.raises(QueueFull, match="queue is full"):
            engine.submit(request("c"))
        return engine.status()

    status = run(scenario)
    assert status.num_waiting == 2 and status.rejected_requests == 1


def test_drain_refuses_new_work_and_lets_the_running_finish(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors(step_s=0.001))
        engine.start()
        streams = [engine.submit(request(f"r{i}", max_tokens=20)) for i in range(3)]
        assert engine.begin_drain() == 3
        with pytest.raises(Draining):
            engine.submit(request("late"))
        left = await engine.drain(grace_s=10)
        items = [await collect(s) for s in streams]
        await engine.stop()
        return left, items, engine.status()

    left, items, status = run(scenario)
    assert left == 0 and status.draining
    assert all(i[-1].finish_reason in (FinishReason.LENGTH, FinishReason.EOS) for i in items)


def test_drain_grace_runs_out_and_stop_ends_the_rest_with_unavailable(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors(step_s=0.01))
        engine.start()
        stream = engine.submit(request("slow", max_tokens=200, ignore_eos=True))
        left = await engine.drain(grace_s=0.05)
        await engine.stop()
        return left, await collect(stream)

    left, items = run(scenario)
    assert left == 1
    assert isinstance(items[-1], EngineError) and items[-1].code is ErrorCode.UNAVAILABLE


def test_policy_switch_live_takes_effect_and_bad_names_are_refused(tokenizer):
    async def scenario():
        fake = FakeExecutors(step_s=0.001)
        engine = make_engine(tokenizer, fake, policy="apex", num_cpu_blocks=64)
        engine.start()
        stream = engine.submit(request("r", max_tokens=30, ignore_eos=True))
        first = await asyncio.wait_for(stream.queue.get(), 5)
        before = engine.policy_status()
        after = engine.set_policy("gpu-only")
        with pytest.raises(ValueError, match="policy must be one of"):
            engine.set_policy("fastest")
        items = [first, *await collect(stream)]
        await engine.stop()
        return before, after, items, engine.status()

    before, after, items, status = run(scenario)
    assert before.name == "apex" and after.name == "gpu-only"
    assert status.policy.name == "gpu-only"
    assert items[-1].finish_reason is FinishReason.LENGTH
    assert sum(len(d.token_ids) for d in items) == 30


def test_a_new_profile_re_derives_a_default_bound_and_keeps_an_operators(tokenizer):
    """`apexctl profile` loads the profile it measured: apex's default TPOT bound is the
    new profile's, not the one the daemon started with; a bound an operator set stays."""
    t4, a10 = Profile.load("t4-llama2-7b"), Profile.load("a10-llama3.1-8b")
    engine = make_engine(tokenizer, FakeExecutors(step_s=0.001), policy="apex")
    engine.use_profile(t4)
    st = engine.policy_status()
    assert st.tpot_from_profile and st.tpot_slo_s == pytest.approx(default_tpot_slo(t4))
    engine.use_profile(a10)
    st = engine.policy_status()
    assert st.tpot_from_profile and st.tpot_slo_s == pytest.approx(default_tpot_slo(a10))
    engine.set_policy("apex", 0.3)
    engine.use_profile(t4)
    assert engine.policy_status().tpot_slo_s == 0.3
    assert not engine.policy_status().tpot_from_profile
    engine.set_policy("neo")
    engine.set_policy("apex")  # no bound asked for: the profile's default again
    st = engine.policy_status()
    assert st.tpot_from_profile and st.tpot_slo_s == pytest.approx(default_tpot_slo(t4))
    engine.set_policy("apex", 0.25)
    engine.set_policy("apex", ttft_slo_s=4.0)  # a TTFT bound alone keeps the TPOT one
    assert engine.policy_status().tpot_slo_s == 0.25


def test_migrate_pins_a_request_to_a_tier(tokenizer):
    async def scenario():
        fake = FakeExecutors(step_s=0.001)
        engine = make_engine(tokenizer, fake, num_cpu_blocks=64, placement="auto")
        engine.start()
        stream = engine.submit(request("r", max_tokens=40, ignore_eos=True))
        await asyncio.wait_for(stream.queue.get(), 5)
        assert engine.migrate("r", Tier.CPU) and not engine.migrate("nobody", Tier.CPU)
        await asyncio.sleep(0.02)
        snapshot = {r.request_id: r for r in engine.requests()}
        items = await collect(stream)
        await engine.stop()
        return snapshot, items, fake

    snapshot, items, fake = run(scenario)
    assert snapshot["r"].tier is Tier.CPU and snapshot["r"].status is Status.RUNNING
    assert any(p.num_cpu_rows for p in fake.plans), "it decoded on the CPU tier"
    assert items[-1].finish_reason is FinishReason.LENGTH


def test_migrate_without_a_cpu_tier_is_refused(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors())
        engine.submit(request("r"))
        with pytest.raises(ValueError, match="no CPU tier"):
            engine.migrate("r", Tier.CPU)

    run(scenario)


def test_a_failed_step_is_recovered_and_the_request_recomputed_exactly(tokenizer):
    async def scenario():
        fake = FakeExecutors({"r": ids("recomputed, same text")})
        engine = make_engine(tokenizer, fake)
        fake.fail_next = 1
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=64)))
        await engine.stop()
        return items, engine.status(), fake

    items, status, fake = run(scenario)
    assert "".join(d.text for d in items) == "recomputed, same text"
    assert status.recoveries == 1 and fake.recoveries == 1


def test_a_step_that_always_fails_ends_its_requests_with_internal(tokenizer):
    async def scenario():
        fake = FakeExecutors()
        fake.fail_next = 10**6
        engine = make_engine(tokenizer, fake)
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=4)))
        await engine.stop()
        return items, fake, engine

    items, fake, engine = run(scenario)
    item = items[-1]
    assert isinstance(item, EngineError) and item.code is ErrorCode.INTERNAL
    assert "failed" in item.message and len(fake.plans) == MAX_FAILED_STEPS
    assert engine.stats.recoveries == MAX_FAILED_STEPS - 1
    assert engine.scheduler.gpu.num_used == 0 and engine.streams == {}


def test_a_request_whose_decode_steps_keep_failing_ends_within_a_bound(tokenizer):
    """Prefills succeed and every decode step fails (a CPU executor that is wedged, as
    issue 10 found): failures are counted per request, not per run of failed steps, so
    recovery cannot keep the request alive forever."""

    async def scenario():
        fake = FakeExecutors()
        fake.fail_if = lambda plan: plan.num_prefill_tokens == 0
        engine = make_engine(tokenizer, fake)
        engine.start()
        items = await collect(engine.submit(request("r", max_tokens=8)))
        await engine.stop()
        return items, fake, engine

    items, fake, engine = run(scenario)
    assert isinstance(items[-1], EngineError) and items[-1].code is ErrorCode.INTERNAL
    assert f"failed {MAX_FAILED_STEPS} steps" in items[-1].message
    assert len(fake.plans) == 2 * MAX_FAILED_STEPS  # prefill, failed decode; three times
    assert engine.streams == {} and engine.scheduler.gpu.num_used == 0


def test_executors_that_never_come_back_end_every_request_with_unavailable(tokenizer):
    async def scenario():
        fake = FakeExecutors()
        fake.fail_next, fake.recovers = 1, False
        engine = make_engine(tokenizer, fake)
        engine.start()
        items = [await collect(engine.submit(request(f"r{i}"))) for i in range(1)]
        await engine.stop()
        return items, engine

    items, engine = run(scenario)
    assert all(isinstance(i[-1], EngineError) for i in items)
    assert items[0][-1].code is ErrorCode.UNAVAILABLE and "unreachable" in items[0][-1].message
    assert engine.streams == {} and engine.scheduler.gpu.num_used == 0


def test_status_snapshot_counts_and_prediction_error(tokenizer):
    async def scenario():
        engine = make_engine(tokenizer, FakeExecutors())
        engine.start()
        for i in range(4):
            await collect(engine.submit(request(f"r{i}", max_tokens=12, ignore_eos=True)))
        await engine.stop()
        return engine.status()

    status = run(scenario)
    assert status.generated_tokens == 48 and status.finished_requests == 4
    assert status.iterations >= 12 and status.prediction_samples == status.iterations
    assert status.policy.profile == "" and math.isnan(status.policy.calibration) is False
    assert status.last_strategy == "gpu-only"


def test_logprobs_travel_with_their_tokens_and_only_when_asked(tokenizer):
    async def scenario():
        fake = FakeExecutors(step_s=0.001)
        engine = make_engine(tokenizer, fake)
        engine.start()
        asked = engine.submit(request("a", max_tokens=9, ignore_eos=True, logprobs=2))
        plain = engine.submit(request("b", max_tokens=9, ignore_eos=True))
        items = await collect(asked), await collect(plain)
        await engine.stop()
        return items

    asked, plain = run(scenario)
    assert all(len(d.logprobs) == len(d.token_ids) for d in asked)
    assert sum(len(d.logprobs) for d in asked) == 9
    assert all(not d.logprobs for d in plain)
