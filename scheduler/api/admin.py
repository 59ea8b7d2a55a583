"""The Admin service (grpc.aio): status, requests, abort, migrate, drain, policy, trace and
profile, each translated between its protobuf and the engine's methods and snapshots."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import grpc
from apex.v1 import admin_pb2, admin_pb2_grpc, generation_pb2

from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.engine.engine import Engine
from scheduler.engine.status import PolicyStatus
from scheduler.executors.profiler import Profiler
from scheduler.types import Status, Tier

log = logging.getLogger(__name__)

STATES = {
    Status.WAITING: admin_pb2.REQUEST_STATE_WAITING,
    Status.RUNNING: admin_pb2.REQUEST_STATE_RUNNING,
    Status.SWAPPED: admin_pb2.REQUEST_STATE_SWAPPED,
}
TIERS = {Tier.GPU: admin_pb2.KV_TIER_GPU, Tier.CPU: admin_pb2.KV_TIER_CPU}


def policy_info(p: PolicyStatus) -> admin_pb2.PolicyInfo:
    return admin_pb2.PolicyInfo(
        name=p.name,
        tpot_slo_ms=(p.tpot_slo_s or 0.0) * 1e3,
        tpot_from_profile=p.tpot_from_profile,
        ttft_slo_s=p.ttft_slo_s or 0.0,
        profile=p.profile,
        description=p.description,
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        engine: Engine,
        model: str,
        request_shutdown: Callable[[], None],
        profiler: Profiler | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.request_shutdown = request_shutdown
        self.profiler = profiler

    async def Drain(self, request, context):
        in_flight = self.engine.begin_drain()
        self.request_shutdown()
        return admin_pb2.DrainResponse(in_flight=in_flight)

    async def GetStatus(self, request, context):
        st = self.engine.status()
        nan = float("nan")
        return admin_pb2.StatusResponse(
            model=self.model,
            num_waiting=st.num_waiting,
            num_running=st.num_running,
            tiers=[
                admin_pb2.TierUsage(
                    tier=t.tier,
                    blocks_total=t.blocks_total,
                    blocks_used=t.blocks_used,
                    block_size=t.block_size,
                )
                for t in st.tiers
            ],
            iterations=st.iterations,
            generated_tokens=st.generated_tokens,
            preemptions=st.preemptions,
            tokens_per_s=st.tokens_per_s,
            uptime_s=st.uptime_s,
            strategy=st.last_strategy,
            finished_requests=st.finished_requests,
            rejected_requests=st.rejected_requests,
            max_queue=st.max_queue,
            placement=st.placement,
            swap_outs=st.swap_outs,
            swap_ins=st.swap_ins,
            num_swapped=st.num_swapped,
            draining=st.draining,
            executor_recoveries=st.recoveries,
            predictor_mape=st.prediction_mape,
            predictor_samples=st.prediction_samples,
            policy=st.policy.name,
            # One error figure: with a profile loaded, the prediction is the profile's.
            profile_mape=st.prediction_mape if st.policy.profile else nan,
            profile=st.policy.profile,
            profile_calibration=st.policy.calibration,
        )

    async def Policy(self, request, context):
        if not request.name:
            return policy_info(self.engine.policy_status())
        for field in ("tpot_slo_ms", "ttft_slo_s"):
            value = getattr(request, field)
            if not value >= 0 or value == float("inf"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must be >= 0")
        try:
            status = self.engine.set_policy(
                request.name, request.tpot_slo_ms / 1e3 or None, request.ttft_slo_s or None
            )
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name: {err}")
        return policy_info(status)

    async def Profile(self, request, context):
        e = self.engine
        if self.profiler is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no profiler configured")
        if e.profiling:
            await context.abort(grpc.StatusCode.ABORTED, "a profile is already being measured")
        async with e.held() as idle:
            if not idle:
                st = e.status()
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the profiler needs an idle server, but {st.num_running + st.num_swapped} "
                    "requests hold KV: wait for them (or drain) and run it again",
                )
            async for p in self.profiler.run(request.quick):
                if p.profile is not None:
                    e.use_profile(MeasuredProfile.from_dict(p.profile))
                    log.info("measured and loaded profile %s (%s)", p.profile["name"], p.path)
                yield admin_pb2.ProfileProgress(
                    done=p.done,
                    total=p.total,
                    stage=p.stage,
                    profile_json=json.dumps(p.profile) if p.profile else "",
                    path=p.path,
                )

    async def Trace(self, request, context):
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit: must be >= 0")
        return admin_pb2.TraceResponse(
            iterations=[
                admin_pb2.IterationTrace(
                    step_id=r.step_id,
                    strategy=r.strategy,
                    policy=r.policy,
                    gpu_rows=r.gpu_rows,
                    cpu_rows=r.cpu_rows,
                    pipeline_rows=r.pipeline_rows,
                    prefill_tokens=r.prefill_tokens,
                    swap_out_blocks=r.swap_out_blocks,
                    swap_in_blocks=r.swap_in_blocks,
                    profile_predicted_ms=r.profile_predicted_s * 1e3,
                    profile_uncalibrated_ms=r.profile_uncalibrated_s * 1e3,
                    predicted_ms=r.predicted_s * 1e3,
                    measured_ms=r.measured_s * 1e3,
                    wall_time=r.wall_time,
                )
                for r in self.engine.iterations(request.limit)
            ]
        )

    async def ListRequests(self, request, context):
        infos = [
            admin_pb2.RequestInfo(
                request_id=r.request_id,
                state=STATES[r.status],
                prompt_tokens=r.prompt_tokens,
                output_tokens=r.output_tokens,
                max_tokens=r.max_tokens,
                gpu_blocks=r.blocks if r.tier is Tier.GPU else 0,
                cpu_blocks=r.blocks if r.tier is Tier.CPU else 0,
                tier=TIERS[r.tier],
                age_s=r.age_s,
                preemptions=r.preemptions,
                migrations=r.migrations,
            )
            for r in self.engine.requests()
        ]
        return admin_pb2.ListRequestsResponse(requests=infos)

    async def Abort(self, request, context):
        return generation_pb2.AbortResponse(found=self.engine.abort(request.request_id))

    async def Migrate(self, request, context):
        tier = {admin_pb2.KV_TIER_GPU: Tier.GPU, admin_pb2.KV_TIER_CPU: Tier.CPU}.get(request.tier)
        if tier is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tier: must be GPU or CPU")
        try:
            found = self.engine.migrate(request.request_id, tier)
        except ValueError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return admin_pb2.MigrateResponse(found=found)
