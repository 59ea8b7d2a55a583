"""What each iteration did and what it cost: the record behind `apexctl trace`.

Every decision can be checked after the fact: the strategy the policy chose, how many
rows attended where, what its cost model predicted, what the online predictor
predicted, and what the step really took. The profile's own error is kept here too, so
that a stale or foreign profile shows up as a number, not a mystery.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from scheduler.core import StepPlan


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
    predicted_s: float  # online predictor; NaN: not fitted yet
    measured_s: float
    wall_time: float


class Trace:
    def __init__(self, keep: int = 8192, error_window: int = 200) -> None:
        self.records: deque[IterationRecord] = deque(maxlen=keep)
        self.profile_errors: deque[float] = deque(maxlen=error_window)

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
        if not math.isnan(plan.predicted_s) and measured_s > 0:
            self.profile_errors.append(abs(plan.predicted_s - measured_s) / measured_s)
        return rec

    def last(self, limit: int) -> list[IterationRecord]:
        """Newest first."""
        items = list(self.records)[::-1]
        return items[:limit] if limit > 0 else items

    def profile_mape(self) -> float:
        if not self.profile_errors:
            return math.nan
        return sum(self.profile_errors) / len(self.profile_errors)
