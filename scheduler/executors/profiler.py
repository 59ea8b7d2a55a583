"""Measures this machine's profile on the running stack, probe by probe.

The executors time each subtask on their real code paths (`gpu_executor/probes.py`);
this side picks the sizes, collects the medians into a profile keyed by model shape,
dtype and device, and measures the fixed per-iteration overhead as a real one-row Step
minus what the subtasks account for. The engine is held for the duration, so no
iteration runs beside a probe; requests that arrive meanwhile wait in the queue.
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from apex.v1 import executor_pb2

from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.costs.profile import user_profile_dir
from scheduler.executors.client import call
from scheduler.executors.setup import Executors


@dataclass(frozen=True)
class ProbeGrid:
    """The sizes probed: log-spaced, because the curves bend where a kernel changes
    regime (memory- to compute-bound) and are near-linear between."""

    tokens: tuple[int, ...]
    head_rows: tuple[int, ...]
    rows: tuple[int, ...]
    context: tuple[int, ...]
    transfer_bytes: tuple[int, ...]
    repeats: int
    overhead_steps: int


FULL = ProbeGrid(
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    (1, 16, 64, 256),
    (1, 4, 16, 64),
    (64, 256, 1024, 4096),
    (1 << 16, 1 << 20, 1 << 24),
    repeats=15,
    overhead_steps=30,
)
QUICK = ProbeGrid((1, 8, 64, 256), (1, 16), (1, 8), (64, 512), (1 << 16, 1 << 20), 5, 10)


@dataclass
class Progress:
    done: int
    total: int
    stage: str
    profile: dict | None = None
    path: str = ""


class Profiler:
    def __init__(
        self,
        executors: Executors,
        key: str,
        model: str,
        device: str,
        num_layers: int,
        max_tokens: int,
        max_rows: int,
        max_context: int,
        gpu_kv_capacity_tokens: int,
        cpu_kv_capacity_tokens: int,
    ) -> None:
        self.executors = executors
        self.key = key
        self.model = model
        self.device = device
        self.num_layers = num_layers
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.max_context = max_context
        self.gpu_tokens = gpu_kv_capacity_tokens
        self.cpu_tokens = cpu_kv_capacity_tokens

    def plan(self, g: ProbeGrid) -> list[executor_pb2.ProfileProbe]:
        P = executor_pb2.ProfileProbe
        ctx = [c for c in g.context if c <= self.max_context] or [self.max_context]
        probes = [
            P(kind="linear", tokens=t, repeats=g.repeats) for t in g.tokens if t <= self.max_tokens
        ]
        probes += [P(kind="head", tokens=t, repeats=g.repeats) for t in g.head_rows]
        probes += [
            P(kind="gpu_attention", rows=r, context=c, repeats=g.repeats)
            for r in g.rows
            for c in ctx
        ]
        tier = self.executors.tier
        if tier is not None:
            rows = [r for r in g.rows if r <= tier.max_rows] or [tier.max_rows]
            cctx = [c for c in ctx if -(-c // tier.block_size) <= tier.max_blocks_per_seq]
            probes += [
                P(kind="cpu_attention", rows=r, context=c, repeats=g.repeats)
                for r in rows
                for c in cctx
            ]
        probes += [P(kind="transfer", bytes=b, repeats=g.repeats) for b in g.transfer_bytes]
        return probes

    async def run(self, quick: bool) -> AsyncIterator[Progress]:
        g = QUICK if quick else FULL
        probes = self.plan(g)
        total = len(probes) + 1
        results: list[tuple[executor_pb2.ProfileProbe, float]] = []
        stub = self.executors.gpu.stub
        for i, p in enumerate(probes):
            r = await call(stub.Profile(executor_pb2.ProfileProbeRequest(probe=p), timeout=600))
            results.append((p, r.seconds))
            size = p.tokens or p.bytes or f"{p.rows}x{p.context}"
            yield Progress(i + 1, total, f"{p.kind} {size}: {r.seconds * 1e3:.3f} ms")
        profile = self.assemble(results)
        rows = [r for r in g.head_rows if r <= self.max_rows]
        model = MeasuredProfile.from_dict(profile)  # the subtasks, to subtract
        seconds = [await self.iteration_overhead(r, g.overhead_steps, model) for r in rows]
        profile["iteration_overhead"] = {"rows": rows, "seconds": seconds}
        path = self.save(profile)
        said = ", ".join(f"{r} rows {s * 1e3:.2f}" for r, s in zip(rows, seconds, strict=True))
        yield Progress(total, total, f"overhead {said} ms", profile, str(path))

    def assemble(self, results: list[tuple[executor_pb2.ProfileProbe, float]]) -> dict:
        def curve(kind: str, field: str) -> dict:
            pts = sorted((getattr(p, field), s) for p, s in results if p.kind == kind)
            return {field: [x for x, _ in pts], "seconds": [s for _, s in pts]}

        def grid(kind: str) -> dict | None:
            at = {(p.rows, p.context): s for p, s in results if p.kind == kind}
            rows, ctx = sorted({r for r, _ in at}), sorted({c for _, c in at})
            if not rows:
                return None
            return {
                "rows": rows,
                "context": ctx,
                "seconds": [[at[(r, c)] for c in ctx] for r in rows],
            }

        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return {
            "kind": "measured",
            "name": f"measured-{self.model}-{now}",
            "key": self.key,
            "device": self.device,
            "model": self.model,
            "measured_at": now,
            "units": "seconds; linear, attention: per decoder layer; head, overhead: per step",
            "num_layers": self.num_layers,
            "iteration_overhead": {"rows": [1], "seconds": [0.0]},  # measured last
            "linear": curve("linear", "tokens"),
            "head": curve("head", "tokens"),
            "gpu_attention": grid("gpu_attention"),
            "cpu_attention": grid("cpu_attention"),
            "transfer": curve("transfer", "bytes"),
            "gpu_kv_capacity_tokens": self.gpu_tokens,
            "cpu_kv_capacity_tokens": self.cpu_tokens,
        }

    async def iteration_overhead(self, rows: int, steps: int, model: MeasuredProfile) -> float:
        """A real Step of `rows` one-token decode rows, less the subtasks the profile
        accounts for: what packing, sampling and the RPC cost per iteration, by rows."""
        seqs = [
            executor_pb2.SeqStep(
                request_id=f"profile-{i}",
                token_ids=[1],
                start_pos=0,
                block_table=[i % self.executors.num_gpu_blocks],
                sampling=executor_pb2.SamplingSpec(),
            )
            for i in range(rows)
        ]
        req = executor_pb2.StepRequest(step_id=0, seqs=seqs)
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            await call(self.executors.gpu.stub.Step(req, timeout=600))
            times.append(time.perf_counter() - t)
        layer = model.linear_s(rows) + model.gatt_s(rows, rows)
        subtasks = self.num_layers * layer + model.head_s(rows)
        return max(0.0, statistics.median(times[1:]) - subtasks)

    def save(self, profile: dict) -> Path:
        folder = user_profile_dir()
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in profile["name"])
        path = folder / f"{safe}.json"
        path.write_text(json.dumps(profile, indent=1))
        return path
