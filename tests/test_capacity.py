"""Capacity at an SLO on the simulator: the rate found holds the SLO and the next rate
tried above it does not; the cards a target rate needs follow; `apexctl simulate`
prints it as a table and JSON (all of it simulation)."""

from __future__ import annotations

import json
import math

import pytest

from scheduler.costs.profile import load_profile
from scheduler.sim.capacity import Capacity, Slo, capacity
from scheduler.sim.simulator import WORKLOADS
from tests.factories import BIN, run


def test_the_capacity_holds_the_slo_and_the_next_rate_up_does_not():
    slo = Slo(ttft_p99_s=10.0, tpot_p99_s=0.15)
    profile = load_profile("t4-llama2-7b")
    c = capacity(profile, WORKLOADS["neo"], "apex", slo, n=40, refine=2, minutes=0)
    assert c.rate > 0
    at = next(p for p in c.points if p.rate == c.rate)
    assert at.meets(slo)
    above = [p for p in c.points if p.rate > c.rate]
    assert above and not above[0].meets(slo)
    assert [p.rate for p in c.points] == sorted(p.rate for p in c.points)
    assert c.replicas_for(c.rate * 2.5) == 3 and c.replicas_for(c.rate) == 1
    for p in c.points:  # one seed only where it was not near a bound; attainment a share
        assert p.requests == 40 and p.seeds in (1, 2) and not (p.seeds == 1 and p.close_to(slo))
        assert 0 <= p.attainment <= 1
    assert any(p.seeds == 2 for p in c.points)
    assert at.attainment > above[0].attainment


def test_a_run_spans_minutes_of_arrivals_within_its_floor_and_cap():
    from scheduler.sim.capacity import MAX_REQUESTS, requests_at

    assert requests_at(0.01, 100, 30) == 100  # 18 arrivals in 30 min: the floor
    assert requests_at(0.5, 100, 30) == 900
    assert requests_at(5.0, 100, 30) == MAX_REQUESTS
    assert requests_at(5.0, 40, 0) == 40


def test_no_rate_holding_the_slo_is_a_capacity_of_zero_and_no_card_count():
    c = capacity(
        load_profile("t4-llama2-7b"),
        WORKLOADS["neo"],
        "gpu-only",
        Slo(0.001, 0.001),
        n=20,
        minutes=0,
    )
    assert c.rate == 0 and c.replicas_for(1.0) is None
    assert len(c.points) == 7  # halved down to start / 64
    with pytest.raises(ValueError, match="> 0"):
        Slo(0, 0.1)
    assert Capacity("x", 0.5, ()).replicas_for(1.2) == math.ceil(1.2 / 0.5)


def test_apexctl_simulate_answers_how_many_cards_a_rate_needs(tmp_path):
    args = [
        str(BIN / "apexctl"),
        "simulate",
        "--workload",
        "neo",
        "--policies",
        "apex",
        "--requests",
        "30",
        "--minutes",
        "0",
    ]
    args += ["--slo-ttft-s", "10", "--slo-tpot-ms", "150", "--target-rate", "1"]
    table = run(*args)
    assert table.returncode == 0, table.stderr
    assert "SIMULATION" in table.stdout and "cards for 1/s" in table.stdout
    out = json.loads(run(*args, "--json").stdout)
    cap = out["capacity"][0]
    assert out["simulation"] is True and cap["policy"] == "apex"
    assert cap["replicas_for_target"] == math.ceil(1 / cap["rate"])
    assert all(p["requests"] == 30 for p in cap["points"])
    saved = run(*args, "--out", str(tmp_path / "cap.json"))
    assert saved.returncode == 0, saved.stderr
    assert json.loads((tmp_path / "cap.json").read_text())["capacity"][0]["rate"] == cap["rate"]
    assert (tmp_path / "cap.png").stat().st_size > 10_000
    bad = run(str(BIN / "apexctl"), "simulate", "--slo-ttft-s", "10")
    assert bad.returncode != 0 and "--slo-tpot-ms" in bad.stderr


def test_a_host_preset_sets_the_cpu_attention_rate_and_the_cpu_tier():
    from scheduler.costs.hosts import HOSTS, on_host

    t4 = load_profile("t4-llama2-7b")
    small, large = (on_host(t4, HOSTS[n]) for n in ("g4dn.xlarge", "g4dn.16xlarge"))
    assert small.cpu_attention_rate == 2 * 11e9  # 4 vCPUs, 2 left to the processes
    assert large.cpu_attention_rate == 140.8e9 * 0.7  # the memory channels cap it
    assert small.cpu_kv_capacity_tokens == (16 - 6) * 2**30 // (512 * 1024)
    assert large.cpu_kv_capacity_tokens > 20 * small.cpu_kv_capacity_tokens
    assert small.gpu_kv_capacity_tokens == t4.gpu_kv_capacity_tokens  # the card stays
    assert "g4dn.xlarge" in small.name and "g4dn.xlarge" in small.device
    args = [str(BIN / "apexctl"), "simulate", "--host", "g5.xlarge", "--profile"]
    out = run(*args, "a10-llama3.1-8b", "--requests", "20", "--rate", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["profile"].endswith("@g5.xlarge")
    bad = run(str(BIN / "apexctl"), "simulate", "--host", "laptop")
    assert bad.returncode != 0 and "--host must be one of" in bad.stderr
