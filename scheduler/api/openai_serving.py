"""Chat and text completions over the engine: OpenAI's requests in, engine requests out.

One engine request per choice (a list of prompts makes several), validated and sampled
the same way as gRPC's; their deltas are gathered here, and shaped into OpenAI's JSON
by `openai_apis.py`. A client that goes away, streaming or not, has its requests
aborted at once, so their KV blocks are free again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass, field

from scheduler.api.chat_template import ChatTemplate, Message
from scheduler.api.openai_protocol import (
    SamplingFields,
)
from scheduler.api.validation import (
    Limits,
    chat_tokens,
    make_sampling,
)
from scheduler.engine.detokenizer import TextTokenizer
from scheduler.engine.engine import Engine
from scheduler.engine.outputs import (
    Draining,
    EngineError,
    OutputDelta,
    QueueFull,
    Rejected,
    RequestStream,
)
from scheduler.types import ErrorCode, FinishReason, Request, SamplingConfig, TokenLogprob

FINISH = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS: "stop",
    FinishReason.STOP_TOKEN: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.ABORTED: "abort",
}


class ApiError(Exception):
    """An answer in OpenAI's error shape: HTTP status, type, the field it is about."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def invalid(field: str | None, message: str) -> ApiError:
    return ApiError(
        400, f"{field}: {message}" if field else message, "invalid_request_error", field
    )


@dataclass
class Served:
    """What the HTTP edge serves with: the engine and what the daemon knows of the model."""

    engine: Engine
    tokenizer: TextTokenizer
    limits: Limits
    model: str
    template: ChatTemplate | None
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Choice:
    index: int
    stream: RequestStream
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: OutputDelta | None = None
    offset: int = 0  # characters streamed so far (the Completions API's text_offset)


def check(served: Served, body: SamplingFields) -> None:
    if body.model != served.model:
        raise ApiError(404, f"model {body.model!r} is not served here", "not_found_error", "model")
    bad = body.unsupported()
    if bad is not None:
        raise invalid(*bad)


def engine_request(served: Served, body: SamplingFields, ids: list[int], limit: int | None):
    logprobs, logprobs_field = body.logprob_count()
    sampling = make_sampling(
        len(ids),
        served.limits,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        max_tokens=limit,
        stop=body.stops(),
        stop_token_ids=body.stop_token_ids,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        logprobs_field=logprobs_field,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias,
        min_tokens=body.min_tokens,
        include_stop_str=body.keeps_stop(),
    )
    return samples(ids, sampling, body.n)


def samples(ids: list[int], sampling: SamplingConfig, n: int) -> list[Request]:
    """`n` requests for one prompt: sample i draws with seed + i (each equals a request
    of that seed alone), and they share the prompt's KV blocks once it is computed."""
    rid = uuid.uuid4().hex
    if n == 1:
        return [Request(rid, ids, sampling)]
    group: list[Request] = []
    for i in range(n):
        sp = dataclasses.replace(sampling, seed=sampling.seed + i)
        group.append(Request(f"{rid}-{i}", ids, sp, siblings=group))
    return group


def chat_prompt(served: Served, messages: list, add_generation_prompt: bool) -> list[int]:
    msgs = [Message(m.role, m.text()) for m in messages]
    return chat_tokens(
        served.template, msgs, add_generation_prompt, served.tokenizer, served.limits
    )


def submit(served: Served, requests: list[Request]) -> list[Choice]:
    choices: list[Choice] = []
    try:
        for i, req in enumerate(requests):
            choices.append(Choice(i, served.engine.submit(req)))
    except Rejected as e:
        abort(served, choices)
        status = 429 if isinstance(e, QueueFull) else 503 if isinstance(e, Draining) else 409
        kind = "rate_limit_error" if status == 429 else "service_unavailable_error"
        raise ApiError(status, str(e), kind) from e
    return choices


def abort(served: Served, choices: list[Choice]) -> None:
    for c in choices:
        served.engine.abort(c.stream.request.request_id)


def engine_failure(item: EngineError) -> ApiError:
    status = 503 if item.code is ErrorCode.UNAVAILABLE else 500
    return ApiError(status, item.message, "server_error")


async def drain_choice(choice: Choice) -> None:
    while True:
        item = await choice.stream.queue.get()
        if isinstance(item, EngineError):
            raise engine_failure(item)
        choice.text.append(item.text)
        choice.token_ids.extend(item.token_ids)
        choice.logprobs.extend(item.logprobs)
        if item.finish_reason is not None:
            choice.last = item
            return


async def until_disconnected(receive) -> None:
    """Returns when the HTTP client goes away (its body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_to_end(served: Served, choices: list[Choice], receive) -> None:
    """Every choice to its end, or all aborted at once if the client leaves first."""
    work = asyncio.gather(*(drain_choice(c) for c in choices))
    gone = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            raise ApiError(499, "the client closed the connection", "client_closed")
        work.result()
    finally:
        gone.cancel()
        work.cancel()
        abort(served, choices)  # a no-op for those that ended


def usage(choices: list[Choice]) -> dict:
    prompt = sum(len(c.stream.request.prompt_ids) for c in choices)
    completion = sum(len(c.stream.request.output_ids) for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish(choice: Choice) -> dict:
    last = choice.last
    reason = last.finish_reason if last is not None else None
    stop_reason: str | int | None = None
    if reason is FinishReason.STOP_STRING:
        stop_reason = last.matched_stop
    elif reason is FinishReason.STOP_TOKEN:
        stop_reason = int(last.matched_stop)
    return {"finish_reason": FINISH.get(reason), "stop_reason": stop_reason}
