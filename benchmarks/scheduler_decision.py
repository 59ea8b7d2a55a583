"""Scheduler decision time per iteration with many running requests. Times `schedule()`
(the decision), the building and serialising of the executor's StepRequest (deltas
against the step before, as the daemon sends it), their sum (`control`: issue 13's
target is under 1 ms p50 and 2 ms p99 at 256 running), `update()` (bookkeeping the
results) and the executor's side (parsing the message, rebuilding its rows); the
requests are on both tiers so the two-tier paths are exercised. Prints, writes JSON."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from apex.v1 import executor_pb2

from benchmarks.common import RESULTS, cpu_name, save
from gpu_executor.row_memory import RowMemory
from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.costs.profile import Profile
from scheduler.executors.step_message import StepEncoder
from scheduler.policies import make_policy, placement_policy
from scheduler.types import Request, SamplingConfig, Tier


def run(running: int, context: int, iterations: int, policy: str) -> dict:
    bs = 16
    cfg = SchedulerConfig(
        max_model_len=8192,
        block_size=bs,
        num_gpu_blocks=running * (context + iterations + bs) // bs // 2 + 1024,
        num_cpu_blocks=running * (context + iterations + bs) // bs + 1024,
        max_num_seqs=running + 64,
        max_num_batched_tokens=running * context,
        placement="cpu",  # all run: each moves to the CPU tier after its prefill
    )
    s = Scheduler(cfg, frozenset(), placement_policy(cfg.placement))
    for i in range(running):
        s.add(
            Request(
                f"r{i}", [2] * context, SamplingConfig(max_tokens=iterations + 10, ignore_eos=True)
            )
        )
    while s.waiting or any(r.tier is Tier.GPU for r in s.running):  # prefill, then move
        plan = s.schedule()
        s.update(plan, [3] * len(plan.seqs))
    for r in list(s.running)[: running // 4]:  # a quarter back on the GPU: both tiers in use
        s.pin(r.request_id, Tier.GPU)
    plan = s.schedule()
    s.update(plan, [3] * len(plan.seqs))
    # From here the policy decides: every iteration it chooses the strategy for all
    # rows and looks at the head of a queue it cannot admit (the bound is full).
    s.placement = "auto"
    s.set_policy(make_policy(policy, Profile.load("t4-llama2-7b"), 0.05))
    for i in range(64):
        s.add(Request(f"w{i}", [2] * context, SamplingConfig(max_tokens=2000, ignore_eos=True)))
    times = {"schedule": [], "update": [], "proto": [], "control": [], "unpack": []}
    encoder, memory = StepEncoder(), RowMemory()
    for _ in range(iterations):
        t0 = time.perf_counter()
        plan = s.schedule()
        t1 = time.perf_counter()
        msg = encoder.encode(plan).SerializeToString()
        encoder.acknowledge()
        t2 = time.perf_counter()
        s.update(plan, [3] * len(plan.seqs))
        t3 = time.perf_counter()
        memory.keep(memory.resolve(executor_pb2.StepRequest.FromString(msg)))
        t4 = time.perf_counter()
        times["schedule"].append(t1 - t0)
        times["proto"].append(t2 - t1)
        times["update"].append(t3 - t2)
        times["control"].append(t2 - t0)
        times["unpack"].append(t4 - t3)
    tiers = {t: sum(1 for r in s.running if r.tier is t) for t in Tier}
    return {
        "policy": policy,
        "strategies": sorted({plan.strategy.value}),
        "waiting": len(s.waiting),
        "running": running,
        "context": context,
        "iterations": iterations,
        "on_gpu": tiers[Tier.GPU],
        "on_cpu": tiers[Tier.CPU],
        "message_bytes": len(msg),
        **{f"{k}_ms_p50": float(np.percentile(v, 50) * 1e3) for k, v in times.items()},
        **{f"{k}_ms_p99": float(np.percentile(v, 99) * 1e3) for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "scheduler_decision.json")
    args = ap.parse_args()
    rows = [run(n, 1024, args.iterations, p) for p in ("apex", "neo") for n in (64, 256, 512)]
    print(
        f"{'policy':7} {'running':>7} {'gpu/cpu':>9} {'schedule p50/p99 ms':>20} "
        f"{'update p50/p99':>15} {'proto p50/p99':>14} {'control p50/p99':>16} "
        f"{'executor unpack':>16}"
    )
    for r in rows:
        print(
            f"{r['policy']:7} {r['running']:7} {r['on_gpu']:4}/{r['on_cpu']:<4} "
            f"{r['schedule_ms_p50']:9.3f}/{r['schedule_ms_p99']:<9.3f} "
            f"{r['update_ms_p50']:7.3f}/{r['update_ms_p99']:<7.3f} "
            f"{r['proto_ms_p50']:6.3f}/{r['proto_ms_p99']:<6.3f} "
            f"{r['control_ms_p50']:7.3f}/{r['control_ms_p99']:<7.3f} "
            f"{r['unpack_ms_p50']:7.3f}/{r['unpack_ms_p99']:<7.3f}"
        )
    report = {
        "what": "scheduler decision time per iteration, contexts of 1k tokens",
        "machine": {"cpu": cpu_name(), "device": "cpu (no GPU)"},
        "target": "schedule() plus the step message under 1 ms p50 and 2 ms p99 at 256 running",
        "cases": rows,
    }
    save(report, args.out)


if __name__ == "__main__":
    main()
