"""`apex serve`: the stack as separate local processes, started in order, stopped cleanly.

The executor starts first (loading weights is the slow part), then the daemon, which
connects to it; the launcher waits until each answers gRPC health before starting the
next, and on Ctrl-C or SIGTERM stops the daemon first so that it can end its streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.grpc_server import LAUNCHER_PID, check_health, port_taken


class LaunchError(RuntimeError):
    pass


class StackDone(Exception):
    """The daemon exited 0: it drained (SIGTERM or the admin Drain call) and stopped."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    address: str
    argv: list[str]
    log_file: object = None
    env: dict[str, str] = field(default_factory=dict)  # over the launcher's own

    def flag(self, name: str) -> str | None:
        """The value this child was started with for `name`, if any."""
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    @property
    def tls_ca(self) -> str | None:
        """A daemon serving TLS with a self-signed certificate is probed with it as CA."""
        return self.flag("--tls-cert")

    @property
    def stop_grace_s(self) -> float:
        """How long a SIGTERM may take before SIGKILL: the daemon's whole drain grace
        (its own default when not given) and a margin to stop after it."""
        if self.name != "scheduler":
            return EXECUTOR_STOP_S
        return float(self.flag("--drain-grace-s") or DEFAULT_DRAIN_GRACE_S) + STOP_MARGIN_S


MAX_RESTARTS = 10  # per executor, over the life of the stack
DEFAULT_DRAIN_GRACE_S = 30.0  # the daemon's --drain-grace-s default
STOP_MARGIN_S = 10.0
EXECUTOR_STOP_S = 10.0


# Ports for servers are picked below the kernel's ephemeral range (32768-60999 by
# default), where outgoing connections take their local ports: a port picked there can
# be taken by a client's socket before the server binds it, and our servers refuse to
# share a port. Each port is handed out once per process. APEX_PORT_RANGE ("lo-hi",
# inclusive) narrows it: a firewall's opening, or one range per parallel test worker so
# two workers never pick the same port between one's check and its server's bind.
DEFAULT_SERVER_PORTS = range(20000, 32768)


def server_ports() -> range:
    spec = os.environ.get("APEX_PORT_RANGE", "")
    if not spec:
        return DEFAULT_SERVER_PORTS
    lo, sep, hi = spec.partition("-")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
        raise LaunchError(f"APEX_PORT_RANGE must be 'lo-hi' (e.g. 20000-24999), not {spec!r}")
    ports = range(int(lo), int(hi) + 1)
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise LaunchError(f"APEX_PORT_RANGE {spec!r} must lie within 1024-65535, low to high")
    return ports


_handed_out: set[int] = set()
_rng = random.Random()  # its own: a test that seeds the global one must not repeat ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, that this process has not handed out before."""
    ports = server_ports()
    for _ in range(1000):
        port = _rng.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise LaunchError(f"no free port in {ports.start}-{ports.stop - 1} on {host}")


def default_model_dir() -> Path:
    home = Path(os.environ.get("APEX_HOME", Path.home() / ".cache" / "apex"))
    return home / "models" / "tiny"


DEFAULT_TRAIN_STEPS = 300  # enough for the tiny model to write words (~30 s on 2 cores)


def ensure_default_model() -> Path:
    """The demo's model: made once (random weights, then a brief training run on shipped
    text so that it writes words) and cached; made again if an older version of this
    function made it (no chat template, not trained)."""
    path = default_model_dir()
    marker = path / "apex_preset.json"
    current = marker.is_file() and json.loads(marker.read_text()).get("trained_steps")
    if not current:
        from gpu_executor.model_init import init_model  # torch only when needed
        from gpu_executor.model_train import train_briefly

        print(f"apex: creating the default model in {path} (about a minute, once)", file=sys.stderr)
        init_model(path)
        train_briefly(path, steps=DEFAULT_TRAIN_STEPS)  # records trained_steps in the marker
    return path


def start(
    name: str, argv: list[str], address: str, log_file=None, env: dict[str, str] | None = None
) -> Child:
    """`python -m argv` with `env` over ours; the child ends if the launcher dies."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        stdout=log_file,
        stderr=subprocess.STDOUT if log_file else None,
        start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        env={**os.environ, **(env or {}), LAUNCHER_PID: str(os.getpid())},
    )
    return Child(name, proc, address, list(argv), log_file, env or {})


def restart_crashed(children: list[Child], restarts: dict[str, int]) -> None:
    """Start again, on the same port, any executor that died; the daemon notices on its
    next step, waits for it and recomputes what it held. The daemon itself is not
    restarted: it holds the requests, so its death ends the stack."""
    for i, child in enumerate(children):
        code = child.proc.poll()
        if code is None:
            continue
        if child.name == "scheduler":
            if code == 0:
                raise StackDone()
            raise LaunchError(f"the scheduler exited unexpectedly with code {code}")
        restarts[child.name] = restarts.get(child.name, 0) + 1
        if restarts[child.name] > MAX_RESTARTS:
            raise LaunchError(f"{child.name} crashed {MAX_RESTARTS} times; giving up")
        print(
            f"apex: {child.name} exited with code {code}; restarting it "
            f"({restarts[child.name]}/{MAX_RESTARTS})",
            file=sys.stderr,
            flush=True,
        )
        children[i] = start(child.name, child.argv, child.address, child.log_file, child.env)


def wait_healthy(child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = child.proc.poll()
        if code is not None:
            raise LaunchError(f"{child.name} exited with code {code} before it was healthy")
        if check_health(child.address, timeout=0.5, tls_ca=child.tls_ca):
            return
        time.sleep(0.1)
    raise LaunchError(f"{child.name} at {child.address} was not healthy in {timeout_s:.0f} s")


def stop(children: list[Child]) -> None:
    """Stop in reverse start order: SIGTERM, wait (the daemon its drain grace), then
    SIGKILL what is left."""
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(child.stop_grace_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


class Watcher(threading.Thread):
    """restart_crashed in the background, for stacks run inside another program."""

    def __init__(self, children: list[Child]) -> None:
        super().__init__(name="stack-watcher", daemon=True)
        self.children = children
        self.done = threading.Event()
        self.restarts: dict[str, int] = {}
        self.error: LaunchError | None = None

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                restart_crashed(self.children, self.restarts)
            except StackDone:
                return
            except LaunchError as e:
                self.error = e
                return

    def halt(self) -> None:
        self.done.set()
        self.join()


@dataclass
class LocalStack:
    address: str
    executor_address: str
    children: list[Child]
    http_url: str = ""  # the OpenAI-compatible API's base, without /v1; empty: off


@dataclass(frozen=True)
class StackPlan:
    """What to start, in order: (name, address, argv) per process, and where the daemon
    answers; kept so that a supervisor can start the same stack again on its ports."""

    processes: list[tuple[str, str, list[str]]]
    address: str
    executor_address: str
    http_url: str


def stack_plan(
    model: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    executor_args: Sequence[str] = (),
    scheduler_args: Sequence[str] = (),
    cpu_executor_args: Sequence[str] | None = None,
) -> StackPlan:
    """The processes of one stack on fixed ports (port 0: a free one)."""
    ex_addr = f"127.0.0.1:{free_port()}"
    port = port or free_port(host)
    if "--http-port" not in scheduler_args:  # never the default 8000 of another stack
        scheduler_args = [*scheduler_args, "--http-port", str(free_port(host))]
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    plan: list[tuple[str, str, list[str]]] = []
    if cpu_executor_args is not None:
        cpu_addr = f"127.0.0.1:{free_port()}"
        cpu_argv = ["cpu_executor.server", "--port", cpu_addr.split(":")[1]]
        plan.append(("cpu-executor", cpu_addr, [*cpu_argv, *cpu_executor_args]))
        scheduler_args = ["--cpu-executor", cpu_addr, *scheduler_args]
    gpu_argv = ["gpu_executor.server", "--model", str(model), "--port", ex_addr.split(":")[1]]
    plan.append(("gpu-executor", ex_addr, [*gpu_argv, *executor_args]))
    daemon = ["scheduler.api.daemon", "--model", str(model), "--host", host, "--port", str(port)]
    plan.append(("scheduler", f"{client_host}:{port}", [*daemon, "--gpu-executor", ex_addr]))
    plan[-1][2].extend(scheduler_args)
    http_port = plan[-1][2][plan[-1][2].index("--http-port") + 1]
    http = f"http://{client_host}:{http_port}" if http_port != "0" else ""
    return StackPlan(plan, f"{client_host}:{port}", ex_addr, http)


def launch(
    plan: StackPlan,
    log_dir: Path | None = None,
    start_timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
) -> list[Child]:
    """Start the plan's processes in order, each healthy before the next; on failure
    the ones started are stopped again."""
    children: list[Child] = []
    try:
        for name, address, argv in plan.processes:
            log_file = None
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                log_file = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115
            children.append(start(name, argv, address, log_file, env))
            wait_healthy(children[-1], start_timeout_s)
    except BaseException:
        stop(children)
        raise
    return children


def close_logs(children: list[Child]) -> None:
    for child in children:
        if child.log_file is not None:
            child.log_file.close()


@contextlib.contextmanager
def local_stack(
    model: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    executor_args: Sequence[str] = (),
    scheduler_args: Sequence[str] = (),
    log_dir: Path | None = None,
    start_timeout_s: float = 300.0,
    cpu_executor_args: Sequence[str] | None = None,
    supervise: bool = False,
) -> Iterator[LocalStack]:
    """Executors, then the daemon, each healthy before the next; stopped in reverse.

    port 0 picks a free port. cpu_executor_args None: no CPU executor (GPU tier only).
    With log_dir, each process logs to its own file there; without, they share the
    caller's terminal.
    """
    plan = stack_plan(model, host, port, executor_args, scheduler_args, cpu_executor_args)
    children = launch(plan, log_dir, start_timeout_s)
    watcher = None
    try:
        if supervise:
            watcher = Watcher(children)
            watcher.start()
        yield LocalStack(plan.address, plan.executor_address, children, plan.http_url)
    finally:
        if watcher is not None:
            watcher.halt()
        stop(children)
        close_logs(children)


def stop_on_signals() -> threading.Event:
    """Set on Ctrl-C or SIGTERM: the foreground commands poll it and stop in order."""
    requested = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: requested.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    return requested


def serve(
    model: Path,
    host: str,
    port: int,
    executor_args: list[str],
    scheduler_args: list[str],
    cpu_executor_args: list[str] | None,
) -> int:
    stop_requested = stop_on_signals()
    http = scheduler_args.index("--http-port") + 1 if "--http-port" in scheduler_args else 0
    http_port = int(scheduler_args[http]) if http else 0
    for taken in (p for p in (port, http_port) if port_taken(host, p)):
        print(f"apex: cannot serve on {host}:{taken}: the port is in use", file=sys.stderr)
        return 1
    try:
        with local_stack(
            model, host, port, executor_args, scheduler_args, cpu_executor_args=cpu_executor_args
        ) as stack:
            print(
                f"apex: serving {model.name} on {host}:{port} "
                f'(try: apexctl --address {stack.address} generate "Hello")'
                + (f"; OpenAI API on {stack.http_url}/v1" if stack.http_url else ""),
                flush=True,
            )
            restarts: dict[str, int] = {}
            while not stop_requested.is_set():
                try:
                    restart_crashed(stack.children, restarts)
                except StackDone:
                    print(
                        "apex: the scheduler drained and stopped; stopping the executors",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
                time.sleep(0.2)
            print("apex: stopping", file=sys.stderr, flush=True)
        return 0
    except LaunchError as e:
        print(f"apex: {e}", file=sys.stderr)
        return 1
