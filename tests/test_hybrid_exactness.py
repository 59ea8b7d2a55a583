"""Hybrid decode stays exact: greedy tokens equal transformers' with KV on the CPU tier.

Through the real three processes: the CPU executor really holds the KV in /dev/shm and
really runs the attention (our kernel or ORT, whichever it measures faster), the GPU
executor ships q/k/v through the exchange each layer.
"""

from __future__ import annotations

import pytest
from apex.v1 import admin_pb2

from tests.factories import (
    PREEMPT_OUTPUT_LENGTHS,
    assert_matches_hf,
    hf_greedy,
    make_prompts,
    run_concurrently,
    run_under_pressure,
    running_stack,
)


def admin_migrate(client, request_id: str, tier: int) -> bool:
    return client.admin.Migrate(admin_pb2.MigrateRequest(request_id=request_id, tier=tier)).found


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_all_requests_on_the_cpu_tier(preset, models, tmp_path):
    args = ["--placement", "cpu", "--cpu-kv-gb", "0.05"]
    with running_stack(
        models[preset], tmp_path, scheduler_args=args, cpu_executor_args=[]
    ) as stack:
        with stack.client() as c:
            vocab = c.model_info().vocab_size
        prompts = make_prompts(vocab, seed=11)
        results = run_concurrently(stack, prompts)
        with stack.client() as c:
            st = c.status()
        # every request went to the CPU tier after its prefill
        assert st.swap_outs == len(prompts) and st.strategy == "overlap"
        assert [t.blocks_used for t in st.tiers] == [0, 0]
        assert_matches_hf(models[preset], prompts, results)


@pytest.mark.parametrize("strategy", ["overlap", "pipeline"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_mixed_placement_with_swap_out_under_pressure(preset, strategy, models, tmp_path):
    # A 24-block GPU tier: auto placement sends what does not fit to the CPU tier at
    # admission, and evicts to it (instead of recomputing) when decodes outgrow the GPU.
    # Forced pipelining: with two or more CPU rows both sub-batches carry some (B1 and
    # C0), and GPU rows and prefills ride in B0.
    args = [
        "--gpu-blocks",
        "24",
        "--max-model-len",
        "384",
        "--placement",
        "auto",
        "--cpu-blocks",
        "200",
        "--strategy",
        strategy,
    ]
    with running_stack(
        models[preset], tmp_path, scheduler_args=args, cpu_executor_args=[]
    ) as stack:
        prompts, results = run_under_pressure(stack, seed=5)
        with stack.client() as c:
            st = c.status()
            trace = c.trace(0)
        assert st.swap_outs > 0, "some requests were meant to move to the CPU tier"
        assert st.preemptions == 0, "with a CPU tier, nothing needs recomputing here"
        assert sum(r.usage.preemptions for r in results) == 0
        assert {t.strategy for t in trace} == {"gpu-only", strategy}
        if strategy == "pipeline":
            piped = [t for t in trace if t.strategy == "pipeline"]
            assert any(0 < t.pipeline_rows < t.cpu_rows for t in piped), "no two-part step"
            assert any(t.gpu_rows > 0 for t in piped), "no GPU rows beside pipelined rows"
        assert_matches_hf(models[preset], prompts, results, PREEMPT_OUTPUT_LENGTHS)


def test_swap_mode_parks_requests_and_brings_them_back(models, tmp_path):
    # placement gpu: attention stays on the GPU; the CPU tier only parks swapped KV.
    args = [
        "--gpu-blocks",
        "24",
        "--max-model-len",
        "384",
        "--placement",
        "gpu",
        "--cpu-blocks",
        "200",
    ]
    with running_stack(
        models["tiny"], tmp_path, scheduler_args=args, cpu_executor_args=[]
    ) as stack:
        prompts, results = run_under_pressure(stack, seed=3)
        with stack.client() as c:
            st = c.status()
        assert st.swap_outs > 0 and st.swap_ins == st.swap_outs and st.preemptions == 0
        assert st.strategy == "gpu-only"
        assert_matches_hf(models["tiny"], prompts, results, PREEMPT_OUTPUT_LENGTHS)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_migration_gpu_to_cpu_and_back_mid_generation(preset, models, tmp_path):
    args = ["--placement", "gpu", "--cpu-kv-gb", "0.05"]
    prompt = [0, 17, 250, 33, 91, 402, 7, 7, 300]
    # Long enough that the server cannot finish before the client reacts; aborted once
    # the client has seen both moves take effect.
    n, stop_after = 1500, 200
    with (
        running_stack(models[preset], tmp_path, scheduler_args=args, cpu_executor_args=[]) as stack,
        stack.client() as c,
    ):
        stream = c.generate_stream(
            prompt, request_id="mover", max_tokens=n, temperature=0.0, ignore_eos=True
        )
        tokens: list[int] = []
        tiers_seen = set()
        for msg in stream:
            tokens.extend(msg.token_ids)
            if len(tokens) == 10:
                assert admin_migrate(c, "mover", admin_pb2.KV_TIER_CPU)
            if len(tokens) == 60:
                assert admin_migrate(c, "mover", admin_pb2.KV_TIER_GPU)
            if len(tokens) > 10:
                info = [r for r in c.list_requests() if r.request_id == "mover"]
                if info:
                    tiers_seen.add(info[0].tier)
            if len(tokens) >= stop_after:
                c.abort("mover")
        assert len(tokens) < n, "the request was meant to be aborted"
        assert tokens == hf_greedy(models[preset], prompt, len(tokens))
        assert tiers_seen == {admin_pb2.KV_TIER_CPU, admin_pb2.KV_TIER_GPU}
        st = c.status()
        assert st.swap_outs == 1 and st.swap_ins == 1
        assert all(t.blocks_used == 0 for t in st.tiers)
        assert admin_migrate(c, "gone", admin_pb2.KV_TIER_CPU) is False
