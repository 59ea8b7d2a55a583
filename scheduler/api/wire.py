"""Requests whose bytes do not parse: INVALID_ARGUMENT and one log line, not a traceback.

gRPC deserializes a request before any handler of ours runs; when protobuf refuses the
bytes (a corrupt frame, invalid UTF-8 in a string field) grpc.aio answers UNKNOWN and
logs a traceback per request, so any client could flood the log. This interceptor puts a
deserializer in front that hands such bytes to the handler as `Malformed`, and a
handler that refuses them with INVALID_ARGUMENT; the log gets one line per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)
OURS = "/apex.v1."  # health and reflection are grpc's own, with handlers of their own kind


@dataclass(frozen=True)
class Malformed:
    error: str


class RateLimitedLog:
    """At most one line per `interval_s`, saying how many were held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self.last = -float("inf")
        self.held = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.held += 1
            return
        more = f" ({self.held} more since the last line)" if self.held else ""
        log.warning("%s%s", message, more)
        self.last, self.held = now, 0


def safe(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as e:  # protobuf raises DecodeError; anything else is as bad
            return Malformed(f"{type(e).__name__}: {e}")

    return parse


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.log = RateLimitedLog()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or not details.method.startswith(OURS):
            return handler  # ours (async, one request message per call) only
        method = details.method
        refuse = self.refuse

        async def unary(request, context):
            if isinstance(request, Malformed):
                await refuse(method, request, context)
            return await handler.unary_unary(request, context)

        async def stream(request, context):
            if isinstance(request, Malformed):
                await refuse(method, request, context)
            async for item in handler.unary_stream(request, context):
                yield item

        kw = dict(
            request_deserializer=safe(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(stream, **kw)
        return grpc.unary_unary_rpc_method_handler(unary, **kw)

    async def refuse(self, method: str, request: Malformed, context) -> None:
        self.log.warning(f"refused a malformed request to {method}: {request.error}")
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request could not be parsed as the method's message ({request.error})",
        )
