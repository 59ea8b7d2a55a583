"""gRPC plumbing every APEX process shares: health checking and server reflection.

Every server exposes the standard grpc.health.v1 service (what `apex serve`, docker
healthchecks and load balancers poll) and reflection (so grpcurl and friends work
without the protos at hand).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def add_health_and_reflection(
    server: grpc.Server | grpc.aio.Server, service_full_names: Iterable[str]
) -> health.HealthServicer:
    """Registers both services; the returned servicer starts NOT_SERVING for every name."""
    names = list(service_full_names)
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *names]:
        servicer.set(name, NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return servicer


def set_serving(servicer: health.HealthServicer, names: Iterable[str], serving: bool) -> None:
    status = SERVING if serving else NOT_SERVING
    for name in ["", *names]:
        servicer.set(name, status)


def setup_logging(process: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
    )


def client_channel(address: str, tls_ca: str | None = None) -> grpc.Channel:
    """A channel to address: TLS trusting the CA in the PEM file tls_ca, else plaintext."""
    if not tls_ca:
        return grpc.insecure_channel(address)
    with open(tls_ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(address, creds)


def check_health(address: str, timeout: float = 1.0, tls_ca: str | None = None) -> bool:
    """True when the server at address answers SERVING for the whole server."""
    try:
        with client_channel(address, tls_ca) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
            return reply.status == SERVING
    except grpc.RpcError:
        return False


def serve_until_signalled(
    server: grpc.Server, service: str, host: str, port: int, prog: str, what: str = ""
) -> None:
    """Listen, report SERVING, block until SIGTERM or SIGINT, then report NOT_SERVING and
    stop the server (in-flight calls get 2 s). For the executors' synchronous servers."""
    health = add_health_and_reflection(server, [service])
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"{prog}: cannot listen on {host}:{port}")
    server.start()
    set_serving(health, [service], True)
    logging.getLogger(prog).info("serving on %s:%d%s", host, bound, what)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    set_serving(health, [service], False)
    server.stop(grace=2).wait()
