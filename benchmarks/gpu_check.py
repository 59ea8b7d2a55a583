"""The GPU check: one command for the minutes a GPU machine is lent (DEVELOPERS.md).

On the device machine (its own Python, torch, transformers, triton; no network; what it
lacks installed first from the carried wheel folder by `scripts/gpu_check.sh`):

1. versions of everything it runs on, and a clear failure naming what is missing or
   does not fit (our generated protobuf stubs against the protobuf runtime);
2. the tests that mean something on CUDA, with `APEX_TEST_DEVICE=cuda`: the Triton
   kernel compiled for real, greedy exactness against transformers in fp32 with the
   executors on the GPU, the hybrid paths (the CUDA copy stream, the pinned exchange);
3. a Llama-2-7B-shaped random fp16 model (`apex init-model --preset llama2-7b`), its
   GPU-only decode step against the byte floor measured in the same run;
4. its profile measured on a stack whose GPU KV is capped to what a T4 leaves, and
   gpu-only, neo and apex side by side on it (`benchmarks.measured_stack`).

Everything lands in `--out` (default benchmarks/results/gpu_check_<device>/), JSON and
PNG naming the device. `--dry-run` walks the same steps on the CPU with the tiny model
and small sizes, so that CI keeps the script from rotting.

    python -m benchmarks.gpu_check [--dry-run] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
# What the stack imports at run time, by module; the device image brings torch,
# transformers and triton, the wheel folder the rest.
NEEDED = [
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "numpy",
    "grpc",
    "grpc_health.v1",
    "grpc_reflection.v1alpha",
    "google.protobuf",
    "prometheus_client",
    "fastapi",
    "uvicorn",
    "pydantic",
    "jinja2",
    "pytest",
    "openai",
]
CUDA_TESTS = [
    "tests/test_triton_attention.py",
    "tests/test_exactness.py",
    "tests/test_hybrid_exactness.py",
    "tests/test_sampler.py",
    "tests/test_decode_graphs.py",
]
T4_KV_BYTES = 1.5 * 2**30  # what a 16 GB T4 leaves for KV beside Llama-2-7B's fp16 weights


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "onnxruntime", "grpc", "google.protobuf"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            found[name] = "missing"
    import torch

    found["cuda"] = torch.version.cuda or "none"
    found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return found


def check_imports() -> list[str]:
    """What does not import, and why: the list to fix before anything runs."""
    problems = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as e:
            problems.append(f"{name}: {e}")
    for stub in ("protos.apex.v1.generation_pb2", "protos.apex.v1.executor_pb2"):
        try:  # generated code checks the protobuf runtime it meets
            importlib.import_module(stub)
        except Exception as e:  # whatever it raises is the message to show
            problems.append(f"{stub} (our generated stubs): {e}")
    return problems


def step(title: str, argv: list[str], env: dict[str, str], timeout: float) -> dict:
    print(f"== {title}: {' '.join(argv)}", flush=True)
    t = time.monotonic()
    r = subprocess.run(argv, env=env, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    out = r.stdout + r.stderr
    print(out[-3000:], flush=True)
    return {"step": title, "rc": r.returncode, "seconds": time.monotonic() - t, "tail": out[-600:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small sizes")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    found = versions()
    print(json.dumps(found, indent=1), flush=True)
    problems = check_imports()
    if problems:
        sys.exit("gpu check: cannot run here:\n  " + "\n  ".join(problems))
    cuda = found["device"] != "cpu"
    if not cuda and not args.dry_run:
        sys.exit("gpu check: no CUDA device here (use --dry-run to walk the steps on the CPU)")
    device = "cuda" if cuda and not args.dry_run else "cpu"
    tag = re.sub(r"[^a-z0-9]+", "-", found["device"].lower()).strip("-") or "cpu"
    out = args.out or RESULTS / f"gpu_check_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = {**os.environ, "APEX_TEST_DEVICE": device}
    steps = []
    t0 = time.monotonic()
    if not args.skip_tests:
        tests = (
            CUDA_TESTS
            if not args.dry_run
            else [f"{CUDA_TESTS[0]}::test_the_split_count_does_not_change_the_answer"]
        )
        steps.append(step("tests", [py, "-m", "pytest", "-q", "-x", *tests], env, 300))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / ("tiny" if args.dry_run else "llama2-7b")
        preset = "tiny" if args.dry_run else "llama2-7b"
        init = [py, "-m", "launcher.cli", "init-model", str(model), "--preset", preset]
        steps.append(step("model", init, env, 300))
        floor = [py, "-m", "benchmarks.decode_floor", "--model", str(model), "--device", device]
        floor += ["--out", str(out / "decode_floor.json")]
        floor += ["--batches", "1,2" if args.dry_run else "1,2,4,8,16"]
        floor += ["--repeats", "3" if args.dry_run else "20"]
        floor += ["--copy-mib", "64" if args.dry_run else "1024"]
        steps.append(step("decode floor", floor, env, 300))
        kv_token = 2 * 32 * 32 * 128 * 2  # Llama-2-7B, fp16
        blocks = 24 if args.dry_run else int(T4_KV_BYTES // (kv_token * 16))
        bench = [py, "-m", "benchmarks.measured_stack", "--model", str(model)]
        bench += ["--device", device, "--gpu-blocks", str(blocks), "--tag", tag]
        bench += ["--results", str(out), "--requests", "6" if args.dry_run else "32"]
        bench += ["--cpu-kv-gb", "0.2" if args.dry_run else "8"]
        bench += ["--rates", "4,8" if args.dry_run else "1,2,4", "--slo", "10,150"]
        bench += ["--scale", "0.05" if args.dry_run else "0.25"]
        steps.append(step("profile and policies", bench, env, 420))
    report = {
        "device": found["device"],
        "dry_run": args.dry_run,
        "versions": found,
        "seconds": time.monotonic() - t0,
        "steps": steps,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'step':22} {'rc':>3} {'seconds':>8}")
    for s in steps:
        print(f"{s['step']:22} {s['rc']:3} {s['seconds']:8.1f}")
    print(f"device {found['device']}; results in {out}")
    sys.exit(0 if all(s["rc"] == 0 for s in steps) else 1)


if __name__ == "__main__":
    main()
