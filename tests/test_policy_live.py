"""Policies on the running stack: switched live with apexctl, every decision in the
trace, and greedy output equal to transformers' under each of them."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from apex.v1 import admin_pb2

from tests.factories import (
    BIN,
    PREEMPT_OUTPUT_LENGTHS,
    assert_matches_hf,
    run,
    run_under_pressure,
    running_stack,
)

ARGS = [
    "--gpu-blocks",
    "24",
    "--max-model-len",
    "384",
    "--cpu-blocks",
    "200",
    "--policy",
    "gpu-only",
    "--profile",
    "t4-llama2-7b",  # foreign to this machine, but it drives the same decisions
]


def apexctl(stack, *args: str):
    return run(str(BIN / "apexctl"), "--address", stack.address, *args)


@pytest.fixture(scope="module")
def stack(models, tmp_path_factory):
    """One stack for the file: the refused requests change nothing, and run first."""
    log_dir = tmp_path_factory.mktemp("policy-live")
    with running_stack(models["tiny-gqa"], log_dir, scheduler_args=ARGS, cpu_executor_args=[]) as s:
        yield s


def test_bad_policy_requests_name_the_problem(stack):
    with stack.client() as c:
        with pytest.raises(grpc.RpcError) as e:
            c.policy("fastest")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name:" in e.value.details() and "fastest" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            c.admin.Trace(admin_pb2.TraceRequest(limit=-1))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            c.policy("apex", ttft_slo_s=-1.0)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttft_slo_s" in e.value.details()
        assert c.policy().name == "gpu-only"  # nothing changed
    r = apexctl(stack, "policy", "--ttft-slo-s", "5")
    assert r.returncode != 0 and "needs a policy name" in r.stderr


def test_switching_policies_live_keeps_greedy_exact(stack, models):
    model = models["tiny-gqa"]
    with stack.client() as c:
        assert c.policy().name == "gpu-only" and c.policy().profile == "t4-llama2-7b-fp16-spec"
    seen: dict[str, set[str]] = {}
    for i, (name, extra) in enumerate(
        [
            ("gpu-only", []),
            ("neo", []),
            ("apex", ["--tpot-slo-ms", "1000", "--ttft-slo-s", "0.5"]),
        ]
    ):
        r = apexctl(stack, "policy", name, *extra)
        assert r.returncode == 0 and f"switched to {name}" in r.stdout, r.stderr
        prompts, results = run_under_pressure(stack, seed=20 + i)
        assert_matches_hf(model, prompts, results, PREEMPT_OUTPUT_LENGTHS)
        r = apexctl(stack, "trace", "--limit", "0", "--json")
        assert r.returncode == 0, r.stderr
        trace = [t for t in json.loads(r.stdout) if t["policy"] == name]
        assert trace, f"no iteration recorded under {name}"
        seen[name] = {t["strategy"] for t in trace}
        for t in trace:
            assert t["measured_ms"] > 0 and math.isfinite(t["profile_predicted_ms"])
    assert seen["gpu-only"] == {"gpu-only"}
    assert "pipeline" in seen["neo"] and "overlap" not in seen["neo"]
    assert seen["apex"] & {"overlap", "pipeline"}
    r = apexctl(stack, "policy")
    assert "apex (TPOT bound 1000.0 ms, TTFT 0.5 s)" in r.stdout
    r = apexctl(stack, "status")
    assert "policy       apex" in r.stdout and "t4-llama2-7b-fp16-spec" in r.stdout
