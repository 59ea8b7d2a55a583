"""The GPU check's dry run: the script a lent GPU machine runs walks all its steps on
the CPU (tiny model, small sizes), so that it is ready, not rotten, when a GPU comes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_gpu_check_walks_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    argv = [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    assert [s["step"] for s in report["steps"]] == [
        "tests",
        "model",
        "decode floor",
        "profile and policies",
    ]
    floor = json.loads((out / "decode_floor.json").read_text())
    assert floor["bandwidth_gb_s"] > 0 and all(r["step_over_floor"] > 1 for r in floor["rows"])
    # the graphed path (eager on the CPU) gives the plain step's logits
    assert all(r["graph_logits_max_abs_diff"] < 1e-4 for r in floor["rows"])
    bench = json.loads((out / "bench_cpu.json").read_text())
    runs = sorted((p["policy"], p["rate"]) for p in bench["results"])
    assert runs == sorted((p, r) for p in ("gpu-only", "neo", "apex") for r in (4.0, 8.0))
    for p in bench["results"]:  # each policy served all, and latencies are ordered
        assert p["errors"] == 0 and p["requests"] == 6 and p["throughput"] > 0
        assert 0 < p["ttft_p50"] <= p["ttft_p99"] and 0 < p["tpot_p50"] <= p["tpot_p99"]
        assert 0 <= p["attainment"] <= 1
    # the capacity is the sweep's highest rate below which every rate met the SLO
    assert bench["slo"] == {"ttft_p99_s": 10.0, "tpot_p99_s": 0.15}
    for policy, cap in bench["capacity"].items():
        ok = [
            p["ttft_p99"] <= 10 and p["tpot_p99"] <= 0.15
            for p in sorted(bench["results"], key=lambda p: p["rate"])
            if p["policy"] == policy
        ]
        assert cap == ([0.0, 4.0, 8.0][ok.index(False)] if False in ok else 8.0), (policy, ok)
    assert bench["policy_after_bench"] == "apex"  # put back as it was
    assert (out / "profile_cpu.json").is_file() and (out / "bench_cpu.png").is_file()
    assert "versions" in report and report["versions"]["torch"] != "missing"
