"""apexctl profile and apexctl bench on the running stack."""

from __future__ import annotations

import json
import math
import threading

import grpc
import pytest
from apex.v1 import admin_pb2

from scheduler.costs.profile import load_profile
from scheduler.policies.apex import default_tpot_slo
from tests.factories import (
    BIN,
    assert_matches_hf,
    make_prompts,
    run,
    run_concurrently,
    running_stack,
)

ARGS = ["--gpu-blocks", "24", "--max-model-len", "384", "--cpu-blocks", "200"]


def apexctl(stack, *args: str, timeout: float = 300.0):
    return run(str(BIN / "apexctl"), "--address", stack.address, *args, timeout=timeout)


def test_profile_is_measured_saved_loaded_at_start_and_drives_apex(models, tmp_path, monkeypatch):
    store = tmp_path / "profiles"
    monkeypatch.setenv("APEX_PROFILE_DIR", str(store))
    model = models["tiny-gqa"]
    with running_stack(model, tmp_path / "a", scheduler_args=ARGS, cpu_executor_args=[]) as s:
        assert "no profile measured for L4-" in s.logs()
        with s.client() as c:
            assert c.policy().profile == "" and "no profile" in c.policy().description
        out = tmp_path / "p.json"
        r = apexctl(s, "profile", "--quick", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert "] " in r.stderr and "overhead" in r.stderr  # the progress bar ran
        prof = json.loads(out.read_text())
        assert prof["kind"] == "measured" and prof["key"].startswith("L4-")
        assert "float32" in prof["key"] and "cpu-kv:float32" in prof["key"]
        for curve in ("linear", "head", "transfer"):
            assert all(x > 0 for x in prof[curve]["seconds"])
        for grid in ("gpu_attention", "cpu_attention"):
            assert prof[grid]["rows"] and all(v > 0 for row in prof[grid]["seconds"] for v in row)
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert list(store.glob("*.json")), "the daemon saved it where it looks at start"
        with s.client() as c:
            info = c.policy()
            assert info.profile == prof["name"]
            assert info.description.startswith("apex (TPOT bound")
            # apex's default bound is the measured profile's (nothing has run since, so
            # the calibration is still 1)
            assert info.tpot_from_profile and "from the profile" in info.description
            bound_ms = 1e3 * default_tpot_slo(load_profile(str(out)))
            assert info.tpot_slo_ms == pytest.approx(bound_ms)
            vocab = c.model_info().vocab_size
        prompts = make_prompts(vocab, seed=31)
        results = run_concurrently(s, prompts)
        assert_matches_hf(model, prompts, results)
        with s.client() as c:
            trace = c.trace(0)
            st = c.status()
        assert all(math.isfinite(t.profile_predicted_ms) for t in trace)
        assert st.profile == prof["name"] and math.isfinite(st.profile_mape)
    with running_stack(model, tmp_path / "b", scheduler_args=ARGS, cpu_executor_args=[]) as s:
        assert f"profile: {prof['name']}" in s.logs()
        with s.client() as c:
            assert c.policy().profile == prof["name"]


def test_profile_refuses_a_busy_server(models, tmp_path):
    stack = running_stack(models["tiny"], tmp_path, scheduler_args=ARGS, cpu_executor_args=[])
    with stack as s, s.client() as c:
        t = threading.Thread(target=lambda: c.generate([5, 6, 7], max_tokens=300, ignore_eos=True))
        t.start()
        while not c.status().num_running:
            pass
        with pytest.raises(grpc.RpcError) as e:
            list(c.admin.Profile(admin_pb2.ProfileRequest()))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "needs an idle server" in e.value.details()
        t.join()
        assert c.status().finished_requests == 1  # the request was not disturbed
