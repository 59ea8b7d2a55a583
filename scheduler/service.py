"""Public Generation and Admin services of the daemon (grpc.aio)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from apex.v1 import admin_pb2, admin_pb2_grpc, generation_pb2, generation_pb2_grpc

from scheduler.engine import Draining, Engine, EngineError, OutputDelta, QueueFull, RequestStream
from scheduler.measured_profile import MeasuredProfile
from scheduler.policy import make_policy
from scheduler.request import Status, Tier
from scheduler.validation import InvalidRequest, Limits, build_request

log = logging.getLogger(__name__)

STATES = {
    Status.WAITING: admin_pb2.REQUEST_STATE_WAITING,
    Status.RUNNING: admin_pb2.REQUEST_STATE_RUNNING,
    Status.SWAPPED: admin_pb2.REQUEST_STATE_SWAPPED,
}
TIERS = {Tier.GPU: admin_pb2.KV_TIER_GPU, Tier.CPU: admin_pb2.KV_TIER_CPU}


def usage_proto(delta: OutputDelta) -> generation_pb2.Usage | None:
    u = delta.usage
    if u is None:
        return None
    return generation_pb2.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        time_to_first_token_s=u.time_to_first_token_s,
        total_time_s=u.total_time_s,
        preemptions=u.preemptions,
    )


class GenerationService(generation_pb2_grpc.GenerationServicer):
    def __init__(self, engine: Engine, limits: Limits, model_info: generation_pb2.ModelInfo):
        self.engine = engine
        self.limits = limits
        self.model_info = model_info

    async def submit(self, request, context) -> RequestStream:
        try:
            req = build_request(request, self.engine.tokenizer, self.limits)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            return self.engine.submit(req)
        except QueueFull as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except Draining as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        raise AssertionError("unreachable: context.abort raises")

    async def deltas(self, stream: RequestStream, context) -> AsyncIterator[OutputDelta]:
        """Yields until the final delta; aborts the request if the client goes away."""
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, EngineError):
                    await context.abort(item.code, item.message)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Cancellation, a passed deadline or a broken stream lands here too: the
            # request is aborted and its blocks are freed at once. A no-op when done.
            self.engine.abort(stream.request.request_id)

    async def Generate(self, request, context):
        stream = await self.submit(request, context)
        rid = stream.request.request_id
        async for d in self.deltas(stream, context):
            yield generation_pb2.GenerateResponse(
                request_id=rid,
                text=d.text,
                token_ids=d.token_ids,
                finish_reason=int(d.finish_reason or 0),
                matched_stop=d.matched_stop,
                usage=usage_proto(d),
            )

    async def GenerateUnary(self, request, context):
        stream = await self.submit(request, context)
        text: list[str] = []
        ids: list[int] = []
        last: OutputDelta | None = None
        async for d in self.deltas(stream, context):
            text.append(d.text)
            ids.extend(d.token_ids)
            last = d
        if last is None:
            raise AssertionError("a stream always ends with a final delta")
        return generation_pb2.GenerateResult(
            request_id=stream.request.request_id,
            text="".join(text),
            token_ids=ids,
            finish_reason=int(last.finish_reason or 0),
            matched_stop=last.matched_stop,
            usage=usage_proto(last),
        )

    async def Abort(self, request, context):
        return generation_pb2.AbortResponse(found=self.engine.abort(request.request_id))

    async def GetModelInfo(self, request, context):
        return self.model_info


def policy_info(e: Engine) -> admin_pb2.PolicyInfo:
    p = e.scheduler.policy
    return admin_pb2.PolicyInfo(
        name=p.name,
        tpot_slo_ms=(p.tpot_slo_s or 0.0) * 1e3,
        profile=e.profile_name,
        description=p.describe(),
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, engine: Engine, model: str, request_shutdown: Callable[[], None]) -> None:
        self.engine = engine
        self.model = model
        self.request_shutdown = request_shutdown

    async def Drain(self, request, context):
        self.engine.draining = True
        self.request_shutdown()
        return admin_pb2.DrainResponse(in_flight=len(self.engine.scheduler.requests))

    async def GetStatus(self, request, context):
        e, s = self.engine, self.engine.scheduler
        st = e.stats
        return admin_pb2.StatusResponse(
            model=self.model,
            num_waiting=len(s.waiting),
            num_running=len(s.running),
            tiers=[
                admin_pb2.TierUsage(
                    tier=a.tier,
                    blocks_total=a.num_total,
                    blocks_used=a.num_used,
                    block_size=s.config.block_size,
                )
                for a in (s.gpu, s.cpu)
                if a is not None
            ],
            iterations=st.iterations,
            generated_tokens=st.generated_tokens,
            preemptions=s.num_preemptions,
            tokens_per_s=st.tokens_per_s(),
            uptime_s=time.monotonic() - st.started,
            strategy=st.last_strategy,
            finished_requests=st.finished_requests,
            rejected_requests=st.rejected_requests,
            max_queue=s.config.max_queue,
            placement=s.placement,
            swap_outs=s.num_swap_outs,
            swap_ins=s.num_swap_ins,
            num_swapped=len(s.swapped),
            draining=e.draining,
            executor_recoveries=st.recoveries,
            predictor_mape=e.predictor.mape(),
            predictor_samples=e.predictor.observed,
            policy=s.policy.name,
            profile_mape=e.trace.profile_mape(),
            profile=e.profile_name,
            profile_calibration=s.policy.calibration.scale,
        )

    async def Policy(self, request, context):
        e, s = self.engine, self.engine.scheduler
        if request.name:
            if request.tpot_slo_ms < 0 or request.tpot_slo_ms != request.tpot_slo_ms:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tpot_slo_ms: must be >= 0")
            slo = request.tpot_slo_ms / 1e3 if request.tpot_slo_ms else s.policy.tpot_slo_s
            try:
                policy = make_policy(request.name, e.cost, slo)
            except ValueError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name: {err}")
            s.set_policy(policy)
            e.wake.set()
            log.info("policy switched to %s", policy.describe())
        return policy_info(e)

    async def Profile(self, request, context):
        e, s = self.engine, self.engine.scheduler
        if e.profiler is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no profiler configured")
        if e.hold.locked():
            await context.abort(grpc.StatusCode.ABORTED, "a profile is already being measured")
        async with e.hold:
            if not await e.held():
                n = len(s.running) + len(s.swapped)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the profiler needs an idle server, but {n} requests hold KV: "
                    "wait for them (or drain) and run it again",
                )
            async for p in e.profiler.run(request.quick):
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
        e.wake.set()

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
                for r in self.engine.trace.last(request.limit)
            ]
        )

    async def ListRequests(self, request, context):
        now = time.monotonic()
        infos = [
            admin_pb2.RequestInfo(
                request_id=r.request_id,
                state=STATES[r.status],
                prompt_tokens=len(r.prompt_ids),
                output_tokens=len(r.output_ids),
                max_tokens=r.sampling.max_tokens,
                gpu_blocks=len(r.block_table) if r.tier is Tier.GPU else 0,
                cpu_blocks=len(r.block_table) if r.tier is Tier.CPU else 0,
                tier=TIERS[r.tier],
                age_s=now - r.arrival_time,
                preemptions=r.preemptions,
                migrations=r.migrations,
            )
            for r in self.engine.scheduler.requests.values()
        ]
        return admin_pb2.ListRequestsResponse(requests=infos)

    async def Abort(self, request, context):
        return generation_pb2.AbortResponse(found=self.engine.abort(request.request_id))

    async def Migrate(self, request, context):
        tier = {admin_pb2.KV_TIER_GPU: Tier.GPU, admin_pb2.KV_TIER_CPU: Tier.CPU}.get(request.tier)
        if tier is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tier: must be GPU or CPU")
        try:
            found = self.engine.scheduler.pin(request.request_id, tier)
        except ValueError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        self.engine.wake.set()
        return admin_pb2.MigrateResponse(found=found)
