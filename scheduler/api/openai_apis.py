"""Chat and text completions as OpenAI shapes them: whole responses, stream chunks with
their log-probabilities, and the server-sent event stream that carries the chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from scheduler.api.openai_protocol import ChatCompletionRequest, CompletionRequest
from scheduler.api.openai_serving import (
    Choice,
    Served,
    abort,
    chat_prompt,
    check,
    engine_failure,
    engine_request,
    finish,
    invalid,
    submit,
    usage,
)
from scheduler.api.validation import InvalidRequest, id_prompt, text_prompt
from scheduler.engine.outputs import EngineError, OutputDelta
from scheduler.types import TokenLogprob


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

    def token_text(self, token_id: int) -> str:
        return self.served.tokenizer.decode([token_id])

    def logprobs(self, ids: list[int], lps: list[TokenLogprob], offset: int) -> dict:
        raise NotImplementedError

    def whole(self, body, choices: list[Choice], rid: str) -> dict:
        asked = body.logprob_count()[0] is not None
        out = self.envelope(
            rid,
            self.whole_object,
            [
                {
                    "index": c.index,
                    **self.content(c),
                    "logprobs": self.logprobs(c.token_ids, c.logprobs, 0) if asked else None,
                    **finish(c),
                }
                | ({"token_ids": c.token_ids} if body.return_token_ids else {})
                for c in choices
            ],
        )
        out["usage"] = usage(choices)
        if body.return_token_ids:
            out["prompt_token_ids"] = self.prompt_ids(choices)
        return out

    def chunk(
        self,
        rid: str,
        index: int,
        text: str,
        ids: list[int],
        end: dict | None,
        body,
        lps: list[TokenLogprob] | None = None,
        offset: int = 0,
    ) -> dict:
        asked = lps and body.logprob_count()[0] is not None
        logprobs = self.logprobs(ids, lps, offset) if asked else None
        choice = {"index": index, **self.delta(text, end), "logprobs": logprobs}
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
                requests += engine_request(self.served, body, ids, body.max_tokens)
            except InvalidRequest as e:
                raise invalid(e.field, str(e).split(": ", 1)[1]) from e
        return submit(self.served, requests)

    def content(self, c: Choice) -> dict:
        return {"text": "".join(c.text)}

    def delta(self, text: str, end: dict | None) -> dict:
        return {"text": text}

    def prompt_ids(self, choices: list[Choice]) -> list:
        return [c.stream.request.prompt_ids for c in choices]

    def logprobs(self, ids: list[int], lps: list[TokenLogprob], offset: int) -> dict:
        """The Completions API's shape: parallel lists, the top ones as {token: logprob}."""
        tokens = [self.token_text(i) for i in ids]
        offsets = []
        for tok in tokens:
            offsets.append(offset)
            offset += len(tok)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{self.token_text(j): v for j, v in lp.top} for lp in lps],
            "text_offset": offsets,
        }


class ChatCompletions(OpenAIApi):
    whole_object, chunk_object = "chat.completion", "chat.completion.chunk"

    def start(self, body: ChatCompletionRequest) -> list[Choice]:
        check(self.served, body)
        try:
            ids = chat_prompt(self.served, body.messages, body.add_generation_prompt)
            requests = engine_request(self.served, body, ids, body.token_limit())
        except InvalidRequest as e:
            field_name = e.field
            if e.field == "max_tokens" and body.max_completion_tokens is not None:
                field_name = "max_completion_tokens"
            raise invalid(field_name, str(e).split(": ", 1)[1]) from e
        return submit(self.served, requests)

    def content(self, c: Choice) -> dict:
        return {"message": {"role": "assistant", "content": "".join(c.text)}}

    def delta(self, text: str, end: dict | None) -> dict:
        return {"delta": {"content": text} if text or end is None else {}}

    def prompt_ids(self, choices: list[Choice]) -> list:
        return choices[0].stream.request.prompt_ids

    def logprobs(self, ids: list[int], lps: list[TokenLogprob], offset: int) -> dict:
        """The Chat API's shape: per token its text, logprob, UTF-8 bytes and the top."""

        def entry(token_id: int, logprob: float) -> dict:
            tok = self.token_text(token_id)
            return {"token": tok, "logprob": logprob, "bytes": list(tok.encode())}

        return {
            "content": [
                entry(i, lp.logprob) | {"top_logprobs": [entry(j, v) for j, v in lp.top]}
                for i, lp in zip(ids, lps, strict=True)
            ]
        }


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
                ids = list(item.token_ids)
                yield sse(
                    api.chunk(rid, c.index, item.text, ids, end, body, item.logprobs, c.offset)
                )
                c.offset += len(item.text)
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
