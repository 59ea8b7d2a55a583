"""The daemon's loop: schedule, step the executor, turn tokens into streamed text.

The engine is the only place where the pure scheduler meets I/O. Each live request has
an asyncio queue its handler reads from; the loop only ever puts into queues, so a slow
client cannot stall an iteration. The engine's `streams` is the one registry of live
requests: a request enters it on submit and leaves it with its final delta or error.

The API edge and the metrics use the methods below the loop (submit, abort, migrate,
set_policy, drain, status, requests, trace); none of them reaches into the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

from scheduler.core.scheduler import Scheduler
from scheduler.costs.cost_model import CostModel
from scheduler.engine.detokenizer import IncrementalDetokenizer, TextTokenizer
from scheduler.engine.outputs import (
    Draining,
    DuplicateRequest,
    EngineError,
    OutputDelta,
    QueueFull,
    RequestStream,
    Usage,
)
from scheduler.engine.ports import EngineObserver, ExecutorPort
from scheduler.engine.predictor import StepTimePredictor, features
from scheduler.engine.readout import EngineReadout
from scheduler.engine.status import EngineStats, PolicyStatus
from scheduler.engine.trace import Trace
from scheduler.policies import make_policy
from scheduler.types import (
    ErrorCode,
    ExecutorError,
    FinishReason,
    Request,
    StepPlan,
    StepResult,
    Tier,
)

log = logging.getLogger(__name__)

MAX_FAILED_STEPS = 3


class Engine(EngineReadout):
    def __init__(
        self,
        scheduler: Scheduler,
        executors: ExecutorPort,
        tokenizer: TextTokenizer,
        step_timeout_s: float = 120.0,
        recovery_timeout_s: float = 120.0,
        observer: EngineObserver | None = None,
        cost: CostModel | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.cost = cost  # the loaded profile: what neo and apex predict with
        self.executors = executors
        self.observer = observer or EngineObserver()
        self.predictor = StepTimePredictor()
        self.trace = Trace()
        self.draining = False
        self.tokenizer = tokenizer
        self.streams: dict[str, RequestStream] = {}
        self.stats = EngineStats()
        self.step_timeout_s = step_timeout_s
        self.recovery_timeout_s = recovery_timeout_s
        self.wake = asyncio.Event()
        self.hold = asyncio.Lock()  # taken by the profiler: no iteration runs meanwhile
        self.stepping = False
        self.stopping = False
        self.task: asyncio.Task | None = None

    # -- requests -------------------------------------------------------------------
    def submit(self, req: Request) -> RequestStream:
        if self.stopping or self.draining:
            self.observer.on_reject("draining")
            raise Draining("the server is draining: it finishes what it has and takes no more")
        if self.scheduler.queue_full():
            self.stats.rejected_requests += 1
            self.observer.on_reject("queue_full")
            raise QueueFull(f"the waiting queue is full ({self.scheduler.config.max_queue})")
        if req.request_id in self.streams:
            raise DuplicateRequest(f"request_id {req.request_id!r} is already live")
        self.scheduler.add(req)
        stream = RequestStream(
            req,
            IncrementalDetokenizer(
                self.tokenizer, req.prompt_ids, req.sampling.stop, req.sampling.include_stop_str
            ),
        )
        self.streams[req.request_id] = stream
        self.wake.set()
        return stream

    def abort(self, request_id: str) -> bool:
        stream = self.streams.get(request_id)
        if stream is None:
            return False
        self.scheduler.finish(stream.request, FinishReason.ABORTED)
        self.emit(stream)
        return True

    # -- loop -----------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="engine-loop")

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            await self.task

    async def run(self) -> None:
        while not self.stopping:
            if self.hold.locked():  # the profiler has the executors
                async with self.hold:
                    continue
            plan = self.scheduler.schedule()
            if plan is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            work = features(plan)
            predicted = self.predict(plan, work)
            t = time.monotonic()
            self.stepping = True
            try:
                reply = await self.executors.step(plan, timeout=self.step_timeout_s)
                measured = time.monotonic() - t
                self.predictor.observe(work, measured, predicted, fit=self.cost is None)
                self.trace.record(plan, self.scheduler.policy.name, predicted, measured)
                self.scheduler.policy.calibration.observe(plan.model_s, measured)
                self.apply(plan, reply)
            except ExecutorError as e:
                if self.give_up_on_repeated_failures(plan, e):
                    await self.recover(e)
                continue
            except Exception:  # a bug of ours must not leave requests hanging
                log.exception("engine iteration failed; ending the requests of this plan")
                for seq in plan.seqs:
                    self.fail(
                        seq.request.request_id, ErrorCode.INTERNAL, "internal error in the engine"
                    )
                continue
            finally:
                self.stepping = False
            self.observer.on_step(
                self.stats.last_strategy, measured, len(reply.next_tokens), predicted
            )
            await asyncio.sleep(0)  # let handlers stream and new requests arrive
        self.fail_all(ErrorCode.UNAVAILABLE, "the server is shutting down")

    def predict(self, plan: StepPlan, work) -> float | None:
        """The step time the engine expects: the policy's calibrated profile when one is
        loaded, else the online fit (None until it has seen enough steps)."""
        if math.isfinite(plan.predicted_s):
            return plan.predicted_s
        return self.predictor.predict(work)

    def give_up_on_repeated_failures(self, plan: StepPlan, error: ExecutorError) -> bool:
        """Counts the failed step against each request it carried; a request in
        MAX_FAILED_STEPS failed steps ends with INTERNAL (a fault that recomputing does
        not cure must not keep it alive, whatever the executors do). True if some of the
        plan's requests are left to recompute."""
        left = False
        for seq in plan.seqs:
            req = seq.request
            req.failed_steps += 1
            if req.failed_steps >= MAX_FAILED_STEPS:
                message = f"the executors failed {req.failed_steps} steps that carried it: {error}"
                self.fail(req.request_id, ErrorCode.INTERNAL, message)
            else:
                left = left or not req.finished
        return left

    def fail(self, request_id: str, code: ErrorCode, message: str) -> None:
        """End one live request with a status instead of an output."""
        stream = self.streams.pop(request_id, None)
        if stream is not None:
            self.scheduler.finish(stream.request, FinishReason.ABORTED)
            stream.queue.put_nowait(EngineError(code, message))

    def apply(self, plan: StepPlan, reply: StepResult) -> None:
        if reply.logprobs is not None:  # kept beside the tokens they belong to
            for seq, lp in zip(plan.seqs, reply.logprobs, strict=True):
                stream = self.streams.get(seq.request.request_id)
                if lp is not None and stream is not None and seq.draws and not seq.request.finished:
                    stream.logprobs.append(lp)
        updated = self.scheduler.update(plan, reply.next_tokens)
        now = time.monotonic()
        self.stats.iterations += 1
        strategy = plan.strategy.value
        self.stats.last_strategy = strategy
        self.stats.by_strategy[strategy] = self.stats.by_strategy.get(strategy, 0) + 1
        self.stats.generated_tokens += len(updated)
        self.stats.window.append((now, len(updated)))
        gaps = []
        for req in updated:
            stream = self.streams[req.request_id]
            if stream.last_token_at is not None:
                gaps.append(now - stream.last_token_at)
            stream.last_token_at = now
            # Before min_tokens no stop string ends the output (as vLLM does it).
            matched = stream.detok.add(
                req.output_ids[-1], stops=len(req.output_ids) >= req.sampling.min_tokens
            )
            if matched is not None and not req.finished:
                self.scheduler.finish(req, FinishReason.STOP_STRING, matched)
            elif matched is not None and req.finish_reason is FinishReason.LENGTH:
                # The last token allowed completed a stop string: the text is cut at it,
                # so the stop is why it ended, not the length.
                req.finish_reason, req.matched_stop = FinishReason.STOP_STRING, matched
            self.emit(stream)
        self.observer.on_token_gaps(gaps)

    def emit(self, stream: RequestStream) -> None:
        req = stream.request
        final = req.finished
        if final and req.finish_reason is not FinishReason.STOP_STRING:
            stream.detok.flush()
            stream.detok.match_stop()
        new_tokens = req.output_ids[stream.sent_tokens :]
        new_logprobs = stream.logprobs[stream.sent_tokens :]
        stream.sent_tokens = len(req.output_ids)
        text = stream.detok.take(final)
        if not final:
            if text or new_tokens:
                stream.queue.put_nowait(OutputDelta(text, new_tokens, logprobs=new_logprobs))
            return
        self.stats.finished_requests += 1
        end = req.finish_time or time.monotonic()
        usage = Usage(
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(req.output_ids),
            time_to_first_token_s=(req.first_token_time or end) - req.arrival_time,
            total_time_s=end - req.arrival_time,
            preemptions=req.preemptions,
        )
        stream.queue.put_nowait(
            OutputDelta(text, new_tokens, req.finish_reason, req.matched_stop, usage, new_logprobs)
        )
        self.observer.on_finish(
            req.finish_reason.name.lower(),
            usage.time_to_first_token_s,
            usage.total_time_s,
            usage.completion_tokens,
            usage.prompt_tokens,
        )
        del self.streams[req.request_id]

    async def recover(self, error: ExecutorError) -> None:
        """An executor failed a step: recompute what was running once both answer again."""
        lost = self.scheduler.requeue_running()
        self.stats.recoveries += 1
        log.error("executor step failed (%s); %d requests will be recomputed", error, len(lost))
        if await self.executors.recover(self.recovery_timeout_s):
            log.info("executors are back; resuming")
            return
        self.fail_all(
            ErrorCode.UNAVAILABLE,
            f"the executors at {self.executors.describe()} are unreachable",
        )

    def fail_all(self, code: ErrorCode, message: str) -> None:
        for request_id in list(self.streams):
            self.fail(request_id, code, message)

    # -- operations -----------------------------------------------------------------
    def set_policy(
        self, name: str, tpot_slo_s: float | None = None, ttft_slo_s: float | None = None
    ) -> PolicyStatus:
        """Switch the policy live (from the next iteration); None keeps the bound in
        force. Raises ValueError for an unknown name or a bound <= 0."""
        old = self.scheduler.policy
        tpot = tpot_slo_s if tpot_slo_s else old.tpot_slo_given  # a default is re-derived
        ttft = ttft_slo_s if ttft_slo_s else old.ttft_slo_s
        policy = make_policy(name, self.cost, tpot, ttft)
        self.scheduler.set_policy(policy)
        self.wake.set()
        log.info("policy switched to %s", policy.describe())
        return self.policy_status()

    def use_profile(self, cost: CostModel) -> None:
        """A new cost model: the policy is rebuilt on it, keeping its name and the
        operator's bounds; a bound that was the old profile's default is the new one's."""
        self.cost = cost
        p = self.scheduler.policy
        self.scheduler.set_policy(make_policy(p.name, cost, p.tpot_slo_given, p.ttft_slo_s))

    def migrate(self, request_id: str, tier: Tier) -> bool:
        """Operator lever: move a request's KV to `tier` and keep it there. Raises
        ValueError when there is no such tier."""
        found = self.scheduler.pin(request_id, tier)
        self.wake.set()
        return found

    def begin_drain(self) -> int:
        """Take no more requests; returns how many are in flight."""
        self.draining = True
        return len(self.streams)

    async def drain(self, grace_s: float) -> int:
        """Take no more requests; let the ones in flight finish for up to grace_s.
        Returns how many were left when the grace ran out."""
        self.begin_drain()
        deadline = time.monotonic() + grace_s
        while self.scheduler.has_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self.streams)

    @property
    def profiling(self) -> bool:
        return self.hold.locked()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """No iteration runs inside (the profiler has the executors); yields whether no
        request holds KV, since the probes write into free cache blocks."""
        async with self.hold:
            while self.stepping:
                await asyncio.sleep(0.005)
            yield not (self.scheduler.running or self.scheduler.swapped)
        self.wake.set()
