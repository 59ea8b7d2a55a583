"""What the API edge and the metrics read of the engine: snapshots of the policy, the
queues and tiers, the live requests and the last iterations.

A mixin of `Engine`, split out for size: it only reads the engine's state, never
changes it, and every answer is a frozen snapshot (`status.py`), so no handler holds a
reference into the scheduler.
"""

from __future__ import annotations

import time

from scheduler.core.scheduler import Scheduler
from scheduler.costs.cost_model import CostModel
from scheduler.engine.outputs import RequestStream
from scheduler.engine.predictor import StepTimePredictor
from scheduler.engine.status import (
    EngineStats,
    EngineStatus,
    PolicyStatus,
    RequestSnapshot,
    TierStatus,
)
from scheduler.engine.trace import IterationRecord, Trace


class EngineReadout:
    # Engine's own, declared for the type checker
    scheduler: Scheduler
    cost: CostModel | None
    predictor: StepTimePredictor
    trace: Trace
    draining: bool
    streams: dict[str, RequestStream]
    stats: EngineStats

    def policy_status(self) -> PolicyStatus:
        p = self.scheduler.policy
        return PolicyStatus(
            name=p.name,
            tpot_slo_s=p.tpot_slo_s,
            ttft_slo_s=p.ttft_slo_s,
            profile=self.cost.name if self.cost is not None else "",
            description=p.describe(),
            calibration=p.calibration.scale,
            tpot_from_profile=p.tpot_from_profile,
        )

    def status(self) -> EngineStatus:
        s, st = self.scheduler, self.stats
        return EngineStatus(
            num_waiting=len(s.waiting),
            num_running=len(s.running),
            num_swapped=len(s.swapped),
            tiers=tuple(
                TierStatus(a.tier, a.num_total, a.num_used, s.config.block_size)
                for a in (s.gpu, s.cpu)
                if a is not None
            ),
            iterations=st.iterations,
            generated_tokens=st.generated_tokens,
            preemptions=s.num_preemptions,
            swap_outs=s.num_swap_outs,
            swap_ins=s.num_swap_ins,
            prompt_tokens_prefilled=s.num_prompt_tokens_prefilled,
            prompt_tokens_shared=s.num_prompt_tokens_shared,
            tokens_per_s=st.tokens_per_s(),
            uptime_s=time.monotonic() - st.started,
            last_strategy=st.last_strategy,
            by_strategy=dict(st.by_strategy),
            finished_requests=st.finished_requests,
            rejected_requests=st.rejected_requests,
            max_queue=s.config.max_queue,
            placement=s.placement,
            draining=self.draining,
            recoveries=st.recoveries,
            prediction_mape=self.predictor.mape(),
            prediction_samples=self.predictor.observed,
            policy=self.policy_status(),
        )

    def requests(self) -> list[RequestSnapshot]:
        now = time.monotonic()
        return [
            RequestSnapshot(
                request_id=r.request_id,
                status=r.status,
                tier=r.tier,
                prompt_tokens=len(r.prompt_ids),
                output_tokens=len(r.output_ids),
                max_tokens=r.sampling.max_tokens,
                blocks=len(r.block_table),
                age_s=now - r.arrival_time,
                preemptions=r.preemptions,
                migrations=r.migrations,
            )
            for r in (stream.request for stream in self.streams.values())
        ]

    def iterations(self, limit: int) -> list[IterationRecord]:
        """The last iterations' records, newest first (all of them for limit 0)."""
        return self.trace.last(limit)
