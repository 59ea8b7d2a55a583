"""gRPC plumbing every APEX process shares: health checking and server reflection.

Every server exposes the standard grpc.health.v1 service (what `apex serve`, docker
healthchecks and load balancers poll) and reflection (so grpcurl and friends work
without the protos at hand).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# gRPC binds with SO_REUSEPORT by default: a second server on a taken port would start,
# and clients would be served by either at random. Ours refuse to share.
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
LAUNCHER_PID = "APEX_LAUNCHER_PID"  # set by `apex serve` for the processes it starts
PR_SET_PDEATHSIG = 1


def exit_with_launcher() -> None:
    """A process started by `apex serve` gets SIGTERM when the launcher dies (even by
    kill -9), so that no orphan lives on holding the port and the CPU tier's memory."""
    launcher = os.environ.get(LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(launcher):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (port 0 is never taken)."""
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def listen(
    server: grpc.Server | grpc.aio.Server,
    host: str,
    port: int,
    prog: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind the server (made with SERVER_OPTIONS); exits with one line when the port is
    taken or cannot be bound. Returns the port bound."""
    address = f"{host}:{port}"
    taken = f"{prog}: cannot listen on {address}: the port is in use (another apex serve?)"
    if port_taken(host, port):
        raise SystemExit(taken)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as e:  # lost a race for the port, or an address that cannot be had
        raise SystemExit(taken if port_taken(host, port) else f"{prog}: {e}") from e
    if bound == 0:
        raise SystemExit(f"{prog}: cannot listen on {address}")
    return bound


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
    bound = listen(server, host, port, prog)
    server.start()
    set_serving(health, [service], True)
    logging.getLogger(prog).info("serving on %s:%d%s", host, bound, what)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    set_serving(health, [service], False)
    server.stop(grace=2).wait()
