"""What each iteration did and what it cost: the record behind `apexctl trace`.

Every decision can be checked after the fact: the strategy the policy chose, how many
rows attended where, what its cost model predicted (calibrated and raw), what the engine
predicted (the profile if loaded, else its online fit), and what the step really took.
The error of that prediction is kept once, by `predictor.StepTimePredictor`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from scheduler.types import StepPlan


@dataclass(frozen=True)
class IterationRecord:
    step_id: int
    strategy: str
    policy: str
    gpu_rows: int
    cpu_rows: int
    pipeline_rows: int
    prefill_tokens: int
    swap_out_blocks: int
    swap_in_blocks: int
    profile_predicted_s: float  # calibrated; NaN: no cost model
    profile_uncalibrated_s: float
    predicted_s: float  # the engine's prediction; NaN: none (no profile, fit not ready)
    measured_s: float
    wall_time: float


class Trace:
    def __init__(self, keep: int = 8192) -> None:
        self.records: deque[IterationRecord] = deque(maxlen=keep)

    def record(
        self, plan: StepPlan, policy: str, predicted_s: float | None, measured_s: float
    ) -> IterationRecord:
        cpu = plan.num_cpu_rows
        decode = sum(1 for s in plan.seqs if not s.is_prefill)
        rec = IterationRecord(
            step_id=plan.step_id,
            strategy=plan.strategy.value,
            policy=policy,
            gpu_rows=decode - cpu,
            cpu_rows=cpu,
            pipeline_rows=plan.pipeline_rows,
            prefill_tokens=plan.num_prefill_tokens,
            swap_out_blocks=len(plan.swap_out),
            swap_in_blocks=len(plan.swap_in),
            profile_predicted_s=plan.predicted_s,
            profile_uncalibrated_s=plan.model_s,
            predicted_s=math.nan if predicted_s is None else predicted_s,
            measured_s=measured_s,
            wall_time=time.time(),
        )
        self.records.append(rec)
        return rec

    def last(self, limit: int) -> list[IterationRecord]:
        """Newest first."""
        items = list(self.records)[::-1]
        return items[:limit] if limit > 0 else items
