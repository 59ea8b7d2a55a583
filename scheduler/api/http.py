"""The OpenAI-compatible HTTP API, served by the daemon itself (FastAPI on uvicorn, in the
daemon's event loop: no extra process, no hop per token).

Routes: POST /v1/chat/completions and /v1/completions (whole or as server-sent events),
GET /v1/models, GET /health, GET /metrics (the daemon's Prometheus registry), POST
/tokenize and /detokenize, GET /version, GET /get_load (what load-aware routers poll).
Errors come in OpenAI's shape ({"error": {"message", "type", "param", "code"}}); the
bearer token, when one is set, is the generation token (what the openai SDK sends as
its api_key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import TypeVar

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from scheduler.api.openai_apis import ChatCompletions, Completions, event_stream
from scheduler.api.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from scheduler.api.openai_serving import ApiError, Served, chat_prompt, invalid, run_to_end
from scheduler.api.validation import InvalidRequest

VERSION = "0.1.0"
T = TypeVar("T", bound=BaseModel)


def validation_error(exc: RequestValidationError | ValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    # A field that does not match any member of a union names the member too: keep the
    # field's own path.
    path = ".".join(
        x for x in loc if x and not x[0].isupper() and not x.startswith(("list[", "str"))
    )
    if first.get("type") == "extra_forbidden":
        return invalid(path, "this server does not support this field")
    if first.get("type") == "json_invalid":
        return invalid(None, f"the body is not valid JSON: {first.get('msg', '')}")
    return invalid(path or None, first.get("msg", "invalid request"))


def create_app(served: Served, token: str, registry: CollectorRegistry) -> FastAPI:
    def bearer(request: Request) -> None:
        """A dependency, not a middleware: starlette's BaseHTTPMiddleware relays every
        streamed chunk through a queue of its own, which cost 0.7 ms per request here."""
        if not token:
            return
        given = request.headers.get("authorization", "")
        ok = given.startswith("Bearer ") and hmac.compare_digest(
            given.removeprefix("Bearer ").encode(), token.encode()
        )
        if not ok:
            why = "missing" if not given else "invalid"
            raise ApiError(401, f"{why} bearer token (the api key)", "authentication_error")

    app = FastAPI(
        title="APEX serve",
        version=VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    guarded = [Depends(bearer)]  # probes and scrapers (health, metrics, version) need no key
    completions, chats = Completions(served), ChatCompletions(served)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    async def serve(api, body, request: Request, prefix: str):
        choices = api.start(body)
        rid = f"{prefix}-{choices[0].stream.request.request_id}"
        if body.stream:
            return StreamingResponse(
                event_stream(api, body, choices, rid), media_type="text/event-stream"
            )
        await run_to_end(served, choices, request.receive)
        return api.whole(body, choices, rid)

    async def parse(request: Request, model: type[T]) -> T:
        """The body, parsed and validated by pydantic-core in one pass (the generation
        routes skip FastAPI's body handling: per request it cost as much again)."""
        bearer(request)
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as e:
            raise validation_error(e) from None

    @app.post("/v1/completions", response_model=None)
    async def create_completion(request: Request):
        body = await parse(request, CompletionRequest)
        return await serve(completions, body, request, "cmpl")

    @app.post("/v1/chat/completions", response_model=None)
    async def create_chat_completion(request: Request):
        body = await parse(request, ChatCompletionRequest)
        return await serve(chats, body, request, "chatcmpl")

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": served.model,
                    "object": "model",
                    "created": served.created,
                    "owned_by": "apex",
                    "max_model_len": served.limits.max_model_len,
                }
            ],
        }

    @app.get("/health")
    async def health():
        draining = served.engine.status().draining
        return Response(status_code=503 if draining else 200)

    @app.get("/get_load")
    async def get_load():
        """What load-aware routers poll (vllm-router's power_of_two reads `load`):
        requests held, running or waiting; open like /health, for the same probes."""
        st = served.engine.status()
        held = st.num_running + st.num_swapped
        return {
            "load": held + st.num_waiting,
            "num_reqs": held,
            "num_waiting_reqs": st.num_waiting,
        }

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version():
        return {"version": VERSION}

    @app.post("/tokenize", dependencies=guarded)
    async def tokenize(body: TokenizeRequest):
        if (body.prompt is None) == (body.messages is None):
            raise invalid("prompt", "give one of prompt or messages")
        try:
            if body.messages is not None:
                ids = chat_prompt(served, body.messages, body.add_generation_prompt)
            else:
                ids = served.tokenizer.encode(body.prompt or "", body.add_special_tokens)
        except InvalidRequest as e:
            raise invalid(e.field, str(e).split(": ", 1)[1]) from e
        return {"tokens": ids, "count": len(ids), "max_model_len": served.limits.max_model_len}

    @app.post("/detokenize", dependencies=guarded)
    async def detokenize(body: DetokenizeRequest):
        vocab = served.limits.vocab_size
        for i, t in enumerate(body.tokens):
            if not 0 <= t < vocab:
                raise invalid(f"tokens[{i}]", f"{t} is outside the vocabulary [0, {vocab})")
        return {"prompt": served.tokenizer.decode(body.tokens)}

    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the daemon's loop: the daemon owns the signals (drain on SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def wait_started(server: EmbeddedServer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if server.should_exit or time.monotonic() > deadline:
            raise SystemExit("apex-scheduler: the HTTP server did not start")
        await asyncio.sleep(0.01)


def http_server(app: FastAPI, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )
    return EmbeddedServer(config)
