"""Bearer-token auth for the daemon's gRPC services.

Two tokens, each enforced only when configured: one for the Generation service, one for
Admin. Health checking and reflection stay open, so probes and grpcurl work without
secrets. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

import grpc

GENERATION_PREFIX = "/apex.v1.Generation/"
ADMIN_PREFIX = "/apex.v1.Admin/"


def bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, generation_token: str = "", admin_token: str = "") -> None:
        self.tokens = {GENERATION_PREFIX: generation_token, ADMIN_PREFIX: admin_token}

    async def intercept_service(self, continuation, details):
        required = next((t for p, t in self.tokens.items() if details.method.startswith(p)), "")
        handler = await continuation(details)
        if not required or handler is None:
            return handler
        given = bearer(details.invocation_metadata)
        if given is not None and hmac.compare_digest(given.encode(), required.encode()):
            return handler
        message = (
            "missing bearer token (metadata 'authorization: Bearer ...')"
            if given is None
            else "invalid bearer token"
        )
        return denied(handler, message)


def denied(handler, message: str):
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)
