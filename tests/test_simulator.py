"""The simulator: the real scheduler on a virtual clock over a spec-derived profile."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scheduler.costs.profile import Profile, step_time
from scheduler.sim.simulator import WORKLOADS, LoopCost, requests, simulate

BIN = Path(sys.executable).parent


def test_profiles_load_with_a_source_for_every_figure():
    for name in ("t4-llama2-7b", "a10-llama3.1-8b"):
        data = json.loads((Path("scheduler/costs/profiles") / f"{name}.json").read_text())
        assert all(f["source"] for f in data["figures"].values())
        p = Profile.load(name)
        # decode at batch 1 is bound by reading the weights once
        floor = p.num_layers * p.layer_weight_bytes / p.gpu_bandwidth
        assert floor < p.num_layers * p.linear_s(1) < 1.2 * floor


def test_workloads_respect_their_ranges_and_the_context():
    reqs = requests(WORKLOADS["neo"], 500, 5.0, 2048, seed=1)
    assert all(900 <= p <= 1100 and 45 <= o <= 440 for _, p, o, _ in reqs)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(reqs))  # arrivals in order
    short = requests(WORKLOADS["cot"], 100, 5.0, 512, seed=1)
    assert all(p + o <= 512 for _, p, o, _ in short)


@pytest.mark.parametrize("policy", ["gpu-only", "neo", "apex"])
def test_every_request_finishes_with_its_tokens(policy):
    profile = Profile.load("t4-llama2-7b")
    r = simulate(profile, WORKLOADS["chat"], policy, n=40, rate=4.0, seed=3)
    assert r.iterations > 0 and r.throughput > 0
    # gpu-only parks on the CPU tier but never decodes there; the others do
    assert (set(r.strategies) == {"gpu-only"}) == (policy == "gpu-only")
    assert r.ttft_p50 <= r.ttft_p99 and r.tpot_p50 <= r.tpot_p99
    assert r.decision_ms_p99 < 5


def test_overlap_costs_the_slower_of_gpu_and_cpu_attention():
    from scheduler.core.scheduler import SeqPlan, StepPlan
    from scheduler.types import Request, SamplingConfig, Tier

    p = Profile.load("t4-llama2-7b")
    req = Request("a", [1], SamplingConfig())
    gpu = SeqPlan(req, [1], 999, Tier.GPU, [])
    cpu = SeqPlan(req, [1], 999, Tier.CPU, [])
    only_gpu = step_time(p, StepPlan(1, [gpu], []))
    both = step_time(p, StepPlan(1, [gpu, cpu], []))
    per_layer = max(p.gatt_s(1000), p.catt_s(1, 1000)) - p.gatt_s(1000)
    assert both == pytest.approx(only_gpu + p.num_layers * per_layer, rel=1e-9)


def test_apexctl_simulate_json():
    r = subprocess.run(
        [
            str(BIN / "apexctl"),
            "simulate",
            "--profile",
            "a10-llama3.1-8b",
            "--workload",
            "neo",
            "--requests",
            "30",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["simulation"] is True and [x["policy"] for x in out["results"]] == [
        "gpu-only",
        "neo",
        "apex",
    ]


def test_a_measured_profile_drives_the_simulator_too():
    from scheduler.costs.measured_profile import MeasuredProfile
    from scheduler.costs.profile import load_profile

    p = load_profile("measured-epyc-2core-tiny")  # measured by apexctl profile on this VM
    assert isinstance(p, MeasuredProfile) and p.key.startswith("L4-")
    results = {
        pol: simulate(p, WORKLOADS["chat"], pol, n=30, rate=20.0, seed=2)
        for pol in ("gpu-only", "neo", "apex")
    }
    for r in results.values():
        assert r.iterations > 0 and r.throughput > 0
    assert results["neo"].strategies.get("pipeline", 0) > 0


def test_a_loop_cost_adds_its_parts_and_a_cpu_row_cost_touches_only_hybrid_steps():
    loop = LoopCost(
        scale=1.5, per_step_s=0.001, per_row_s=0.0002, per_cpu_row_s=0.003, gap_per_row_s=1e-4
    )
    assert loop.step_s(0.010, rows=4) == pytest.approx(0.015 + 0.0008)
    assert loop.gap_s(rows=4) == pytest.approx(0.001 + 0.0004)
    assert loop.of(0.010, rows=4) == pytest.approx(0.015 + 0.001 + 0.0008 + 0.0004)
    assert loop.of(0.010, rows=4, cpu_rows=2) == pytest.approx(0.0172 + 0.006)
    with pytest.raises(ValueError, match="times >= 0"):
        LoopCost(per_cpu_row_s=-0.001)
    profile = Profile.load("t4-llama2-7b")
    cpu_only = LoopCost(per_cpu_row_s=0.05)

    def run(policy: str, cost: LoopCost | None):
        return simulate(profile, WORKLOADS["cot"], policy, n=40, rate=0.05, seed=2, loop=cost)

    assert run("gpu-only", cpu_only).tpot_p50 == run("gpu-only", None).tpot_p50
    # the simulated daemon calibrates its policy on the steps it runs, as the engine does
    assert run("apex", None).calibration == pytest.approx(1.0)
    assert run("apex", LoopCost(scale=2.0, per_step_s=0.01)).calibration == pytest.approx(2.0)
    hybrid, plain = run("neo", cpu_only), run("neo", None)
    assert hybrid.strategies.get("pipeline", 0) > 0
    assert hybrid.tpot_p99 > plain.tpot_p99


def test_the_loop_fit_recovers_a_known_loop_from_iterations():
    from benchmarks.sim_vs_stack import fit_loop

    rng = np.random.default_rng(0)
    model = rng.uniform(0.002, 0.02, 400)
    rows = rng.integers(1, 32, 400).astype(float)
    cpu = np.minimum(rows, rng.integers(0, 8, 400)).astype(float)
    measured = 1.2 * model + 0.0003 * rows + 0.0008 * cpu + rng.normal(0, 1e-5, 400)
    gaps = 0.0002 + 0.0001 * rows + rng.normal(0, 1e-6, 400)
    half = [
        (np.stack([measured, model, rows, cpu], 1)[i::2], np.stack([gaps, rows], 1)[i::2])
        for i in (0, 1)
    ]
    loop = fit_loop(half)
    assert loop.scale == pytest.approx(1.2, rel=0.02)
    assert loop.per_row_s == pytest.approx(0.0003, rel=0.05)
    assert loop.gap_per_row_s == pytest.approx(0.0001, rel=0.05)
    assert loop.per_cpu_row_s == pytest.approx(0.0008, rel=0.05)
    assert loop.per_step_s == pytest.approx(0.0002, rel=0.05)
