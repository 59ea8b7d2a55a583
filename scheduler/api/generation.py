"""The public Generation service of the daemon (grpc.aio): the one place where a
`GenerateRequest` becomes a `Request` and an engine delta becomes a `GenerateResponse`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from apex.v1 import generation_pb2, generation_pb2_grpc

from scheduler.api.chat_template import ChatTemplate
from scheduler.api.validation import InvalidRequest, Limits, build_request
from scheduler.engine.engine import Engine
from scheduler.engine.outputs import (
    Draining,
    DuplicateRequest,
    EngineError,
    OutputDelta,
    QueueFull,
    Rejected,
    RequestStream,
)
from scheduler.types import TokenLogprob

# Why an intake was refused, as gRPC says it.
REJECTED = {
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    DuplicateRequest: grpc.StatusCode.ALREADY_EXISTS,
}


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


def logprobs_proto(lps: list[TokenLogprob]) -> list[generation_pb2.TokenLogprobs]:
    return [
        generation_pb2.TokenLogprobs(
            logprob=lp.logprob,
            top_token_ids=[i for i, _ in lp.top],
            top_logprobs=[v for _, v in lp.top],
        )
        for lp in lps
    ]


class GenerationService(generation_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        engine: Engine,
        limits: Limits,
        model_info: generation_pb2.ModelInfo,
        template: ChatTemplate | None = None,
    ):
        self.engine = engine
        self.limits = limits
        self.model_info = model_info
        self.template = template

    async def submit(self, request, context) -> RequestStream:
        try:
            req = build_request(request, self.engine.tokenizer, self.limits, self.template)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            return self.engine.submit(req)
        except Rejected as e:
            await context.abort(REJECTED[type(e)], str(e))
        raise AssertionError("unreachable: context.abort raises")

    async def deltas(self, stream: RequestStream, context) -> AsyncIterator[OutputDelta]:
        """Yields until the final delta; aborts the request if the client goes away."""
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, EngineError):
                    await context.abort(grpc.StatusCode[item.code.name], item.message)
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
                logprobs=logprobs_proto(d.logprobs),
            )

    async def GenerateUnary(self, request, context):
        stream = await self.submit(request, context)
        text: list[str] = []
        ids: list[int] = []
        lps: list[TokenLogprob] = []
        last: OutputDelta | None = None
        async for d in self.deltas(stream, context):
            text.append(d.text)
            ids.extend(d.token_ids)
            lps.extend(d.logprobs)
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
            logprobs=logprobs_proto(lps),
        )

    async def Abort(self, request, context):
        return generation_pb2.AbortResponse(found=self.engine.abort(request.request_id))

    async def GetModelInfo(self, request, context):
        return self.model_info
