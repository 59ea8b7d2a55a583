"""The daemon's loop: schedule, step the executor, turn tokens into streamed text.

The engine is the only place where the pure scheduler meets I/O. Each live request has
an asyncio queue its gRPC handler reads from; the loop only ever puts into queues, so
a slow client cannot stall an iteration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from scheduler.core import Scheduler, StepPlan
from scheduler.cost_model import CostModel
from scheduler.executors import Executors
from scheduler.metrics import EngineObserver
from scheduler.policy import make_policy
from scheduler.predictor import StepTimePredictor, features
from scheduler.profiler import Profiler
from scheduler.request import FinishReason, Request
from scheduler.tokenizer import IncrementalDetokenizer, TextTokenizer
from scheduler.trace import Trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    total_time_s: float
    preemptions: int


@dataclass(frozen=True)
class OutputDelta:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    matched_stop: str = ""
    usage: Usage | None = None


@dataclass(frozen=True)
class EngineError:
    """Ends a stream with a gRPC status instead of an output."""

    code: grpc.StatusCode
    message: str


@dataclass
class RequestStream:
    request: Request
    detok: IncrementalDetokenizer
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    sent_tokens: int = 0


MAX_FAILED_STEPS = 3


class QueueFull(Exception):
    pass


class Draining(Exception):
    pass


@dataclass
class EngineStats:
    iterations: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0
    rejected_requests: int = 0
    started: float = field(default_factory=time.monotonic)
    window: deque = field(default_factory=lambda: deque(maxlen=4096))  # (time, tokens)
    last_strategy: str = "none"
    by_strategy: dict[str, int] = field(default_factory=dict)
    recoveries: int = 0

    def tokens_per_s(self, horizon: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self.window if now - t <= horizon]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span


class Engine:
    def __init__(
        self,
        scheduler: Scheduler,
        executors: Executors,
        tokenizer: TextTokenizer,
        step_timeout_s: float = 120.0,
        recovery_timeout_s: float = 120.0,
        observer: EngineObserver | None = None,
        cost: CostModel | None = None,
        profile_name: str = "",
    ) -> None:
        self.scheduler = scheduler
        self.cost = cost  # the loaded profile: what neo and apex predict with
        self.profile_name = profile_name
        self.profiler: Profiler | None = None  # set by the daemon
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
        self.scheduler.add(req)  # raises ValueError on a duplicate id
        stream = RequestStream(
            req, IncrementalDetokenizer(self.tokenizer, req.prompt_ids, req.sampling.stop)
        )
        self.streams[req.request_id] = stream
        self.wake.set()
        return stream

    def abort(self, request_id: str) -> bool:
        req = self.scheduler.abort(request_id)
        if req is None:
            return False
        self.emit(self.streams[request_id])
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
        failures = 0  # consecutive failed steps
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
            predicted = self.predictor.predict(work)
            t = time.monotonic()
            self.stepping = True
            try:
                reply = await self.executors.step(plan, timeout=self.step_timeout_s)
                measured = time.monotonic() - t
                self.predictor.observe(work, measured, predicted)
                self.trace.record(plan, self.scheduler.policy.name, predicted, measured)
                self.scheduler.policy.calibration.observe(plan.model_s, measured)
                self.apply(plan, list(reply.next_tokens))
                failures = 0
            except grpc.aio.AioRpcError as e:
                failures += 1
                if failures >= MAX_FAILED_STEPS:
                    # The same plan keeps failing: a fault in the executor, not a crash
                    # that a restart cures. End these requests instead of looping.
                    self.fail_plan(
                        plan,
                        grpc.StatusCode.INTERNAL,
                        f"the executor failed {failures} steps in a row: "
                        f"{e.code().name}: {e.details()}",
                    )
                    failures = 0
                    continue
                await self.recover(e)
                continue
            except Exception:  # a bug of ours must not leave requests hanging
                log.exception("engine iteration failed; ending the requests of this plan")
                self.fail_plan(plan, grpc.StatusCode.INTERNAL, "internal error in the engine")
                continue
            finally:
                self.stepping = False
            self.observer.on_step(
                self.stats.last_strategy, measured, len(reply.next_tokens), predicted
            )
            await asyncio.sleep(0)  # let handlers stream and new requests arrive
        self.fail_all(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

    def use_profile(self, cost: CostModel) -> None:
        """A new cost model: the policy is rebuilt on it, keeping its name and bound."""
        self.cost = cost
        self.profile_name = cost.name
        p = self.scheduler.policy
        self.scheduler.set_policy(make_policy(p.name, cost, p.tpot_slo_s))

    async def held(self) -> bool:
        """Called with `hold` taken: waits out the iteration in flight; True if no
        request holds KV (the profiler's probes write into free cache blocks)."""
        while self.stepping:
            await asyncio.sleep(0.005)
        return not (self.scheduler.running or self.scheduler.swapped)

    def fail_plan(self, plan: StepPlan, code: grpc.StatusCode, message: str) -> None:
        for seq in plan.seqs:
            self.fail(seq.request.request_id, code, message)

    def fail(self, request_id: str, code: grpc.StatusCode, message: str) -> None:
        """End one live request with a gRPC status instead of an output."""
        stream = self.streams.pop(request_id, None)
        if stream is not None:
            self.scheduler.abort(request_id)
            stream.queue.put_nowait(EngineError(code, message))

    def apply(self, plan: StepPlan, tokens: list[int]) -> None:
        updated = self.scheduler.update(plan, tokens)
        now = time.monotonic()
        self.stats.iterations += 1
        strategy = plan.strategy.value
        self.stats.last_strategy = strategy
        self.stats.by_strategy[strategy] = self.stats.by_strategy.get(strategy, 0) + 1
        self.stats.generated_tokens += len(updated)
        self.stats.window.append((now, len(updated)))
        for req in updated:
            stream = self.streams[req.request_id]
            matched = stream.detok.add(req.output_ids[-1])
            if matched is not None and not req.finished:
                self.scheduler.finish(req, FinishReason.STOP_STRING, matched)
            self.emit(stream)

    def emit(self, stream: RequestStream) -> None:
        req = stream.request
        final = req.finished
        if final and req.finish_reason is not FinishReason.STOP_STRING:
            stream.detok.flush()
            stream.detok.match_stop()
        new_tokens = req.output_ids[stream.sent_tokens :]
        stream.sent_tokens = len(req.output_ids)
        text = stream.detok.take(final)
        if not final:
            if text or new_tokens:
                stream.queue.put_nowait(OutputDelta(text, new_tokens))
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
            OutputDelta(text, new_tokens, req.finish_reason, req.matched_stop, usage)
        )
        self.observer.on_finish(
            req.finish_reason.name.lower(),
            usage.time_to_first_token_s,
            usage.total_time_s,
            usage.completion_tokens,
        )
        del self.streams[req.request_id]

    async def recover(self, error: grpc.aio.AioRpcError) -> None:
        """An executor failed a step: recompute what was running once both answer again."""
        lost = self.scheduler.requeue_running()
        self.stats.recoveries += 1
        log.error(
            "executor step failed (%s: %s); %d requests will be recomputed",
            error.code().name,
            error.details(),
            len(lost),
        )
        if await self.executors.recover(self.recovery_timeout_s):
            log.info("executors are back; resuming")
            return
        self.fail_all(
            grpc.StatusCode.UNAVAILABLE,
            f"the executors at {self.executors.describe()} are unreachable",
        )

    def fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for request_id in list(self.streams):
            self.fail(request_id, code, message)
