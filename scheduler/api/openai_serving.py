"""Chat and text completions over the engine: OpenAI's shapes in, engine requests out.

One engine request per choice (a list of prompts makes several); their deltas become
OpenAI's JSON, whole or as server-sent events. A client that goes away, streaming or
not, has its requests aborted at once, so their KV blocks are free again.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from scheduler.api.chat_template import ChatTemplate, Message
from scheduler.api.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from scheduler.api.validation import (
    InvalidRequest,
    Limits,
    chat_tokens,
    id_prompt,
    make_sampling,
    text_prompt,
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
from scheduler.types import ErrorCode, FinishReason, Request

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
    last: OutputDelta | None = None


def check(served: Served, body: SamplingFields) -> None:
    if body.model != served.model:
        raise ApiError(404, f"model {body.model!r} is not served here", "not_found_error", "model")
    bad = body.unsupported()
    if bad is not None:
        raise invalid(*bad)


def engine_request(served: Served, body: SamplingFields, ids: list[int], limit: int | None):
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
    )
    return Request(f"{uuid.uuid4().hex}", ids, sampling)


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


class OpenAIApi:
    """What chat and text completions share: the response envelope, a choice's ending
    and token ids, whole responses and stream chunks; the two differ in the object
    names, how a choice carries its text, and how prompts come."""

    whole_object = ""
    chunk_object = ""

    def __init__(self, served: Served) -> None:
        self.served = served

    def start(self, body) -> list[Choice]:
        raise NotImplementedError

    def content(self, c: Choice) -> dict:
        raise NotImplementedError

    def delta(self, text: str, end: dict | None) -> dict:
        raise NotImplementedError

    def prompt_ids(self, choices: list[Choice]) -> list:
        raise NotImplementedError

    def envelope(self, rid: str, kind: str, choices: list[dict]) -> dict:
        return {
            "id": rid,
            "object": kind,
            "created": int(time.time()),
            "model": self.served.model,
            "choices": choices,
        }

    def whole(self, body, choices: list[Choice], rid: str) -> dict:
        out = self.envelope(
            rid,
            self.whole_object,
            [
                {"index": c.index, **self.content(c), "logprobs": None, **finish(c)}
                | ({"token_ids": c.token_ids} if body.return_token_ids else {})
                for c in choices
            ],
        )
        out["usage"] = usage(choices)
        if body.return_token_ids:
            out["prompt_token_ids"] = self.prompt_ids(choices)
        return out

    def chunk(
        self, rid: str, index: int, text: str, ids: list[int], end: dict | None, body
    ) -> dict:
        choice = {"index": index, **self.delta(text, end), "logprobs": None}
        choice |= end or {"finish_reason": None, "stop_reason": None}
        if body.return_token_ids:
            choice["token_ids"] = ids
        return self.envelope(rid, self.chunk_object, [choice])


class Completions(OpenAIApi):
    whole_object = chunk_object = "text_completion"

    def start(self, body: CompletionRequest) -> list[Choice]:
        check(self.served, body)
        requests = []
        for i, p in enumerate(body.prompts()):
            field_name = "prompt" if isinstance(body.prompt, str) or i == 0 else f"prompt[{i}]"
            try:
                if isinstance(p, str):
                    ids = text_prompt(p, field_name, self.served.tokenizer, self.served.limits)
                else:
                    ids = id_prompt(list(p), field_name, self.served.limits)
                requests.append(engine_request(self.served, body, ids, body.max_tokens))
            except InvalidRequest as e:
                raise invalid(e.field, str(e).split(": ", 1)[1]) from e
        return submit(self.served, requests)

    def content(self, c: Choice) -> dict:
        return {"text": "".join(c.text)}

    def delta(self, text: str, end: dict | None) -> dict:
        return {"text": text}

    def prompt_ids(self, choices: list[Choice]) -> list:
        return [c.stream.request.prompt_ids for c in choices]


class ChatCompletions(OpenAIApi):
    whole_object, chunk_object = "chat.completion", "chat.completion.chunk"

    def start(self, body: ChatCompletionRequest) -> list[Choice]:
        check(self.served, body)
        try:
            ids = chat_prompt(self.served, body.messages, body.add_generation_prompt)
            req = engine_request(self.served, body, ids, body.token_limit())
        except InvalidRequest as e:
            field_name = e.field
            if e.field == "max_tokens" and body.max_completion_tokens is not None:
                field_name = "max_completion_tokens"
            raise invalid(field_name, str(e).split(": ", 1)[1]) from e
        return submit(self.served, [req])

    def content(self, c: Choice) -> dict:
        return {"message": {"role": "assistant", "content": "".join(c.text)}}

    def delta(self, text: str, end: dict | None) -> dict:
        return {"delta": {"content": text} if text or end is None else {}}

    def prompt_ids(self, choices: list[Choice]) -> list:
        return choices[0].stream.request.prompt_ids


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def event_stream(
    api: OpenAIApi, body, choices: list[Choice], rid: str
) -> AsyncIterator[bytes]:
    """Server-sent events of every choice as its deltas come, then usage (if asked) and
    [DONE]. Cancelled when the client goes away: the finally aborts what is left."""
    served = api.served
    queue: asyncio.Queue[tuple[Choice, OutputDelta | EngineError]] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        while True:
            item = await c.stream.queue.get()
            await queue.put((c, item))
            if isinstance(item, EngineError) or item.finish_reason is not None:
                return

    pumps = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        if isinstance(api, ChatCompletions):
            for c in choices:  # the role comes first, as OpenAI sends it
                first = api.chunk(rid, c.index, "", [], None, body)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse(first)
        open_choices = len(choices)
        while open_choices:
            c, item = await queue.get()
            if isinstance(item, EngineError):
                yield sse(engine_failure(item).body())
                break
            end = None
            if item.finish_reason is not None:
                c.last = item
                end = finish(c)
                open_choices -= 1
            if item.text or item.token_ids or end is not None:
                yield sse(api.chunk(rid, c.index, item.text, list(item.token_ids), end, body))
        options = body.stream_options
        if options is not None and options.include_usage:
            tail = api.chunk(rid, 0, "", [], None, body)
            tail["choices"] = []
            tail["usage"] = usage(choices)
            yield sse(tail)
        yield sse("[DONE]")
    finally:
        for p in pumps:
            p.cancel()
        abort(served, choices)
