"""`apex serve --replicas N`: one stack per GPU behind vllm-router, started and stopped
as one.

The router is vLLM's (`vllm-router`, a Rust binary shipped as a Python package): it
forwards the OpenAI-compatible API to the replicas' HTTP ports with power-of-two load
balancing on their `/get_load`, health checks on `/health`, retries and a circuit
breaker. We only start it, point it at the replicas and keep them alive: a replica
whose daemon dies is started again as a whole (its executors too) on the same ports,
and the router takes it back once its health checks pass.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher.stack import (
    Child,
    LaunchError,
    StackPlan,
    close_logs,
    free_port,
    launch,
    restart_crashed,
    stack_plan,
    start,
    stop,
    stop_on_signals,
)

ROUTER_MODULE = "launcher.router_main"  # vllm-router's launcher, ending with ours
MAX_REPLICA_RESTARTS = 10  # per replica, over the life of the cluster


@dataclass(frozen=True)
class RouterOptions:
    """What `apex serve` sets on the router; everything else keeps vllm-router's default."""

    host: str = "127.0.0.1"
    port: int = 8080
    policy: str = "power_of_two"  # one replica: round_robin (power_of_two needs two)
    health_interval_s: int = 5  # health checks, and power_of_two's load polls
    metrics_port: int = 0  # the router's own Prometheus port (0: a free one)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.health_interval_s < 1:
            raise ValueError(f"health_interval_s must be >= 1, got {self.health_interval_s}")


@dataclass
class Replica:
    index: int
    plan: StackPlan
    env: dict[str, str]
    log_dir: Path | None
    children: list[Child] = field(default_factory=list)
    restarts: int = 0  # of the whole replica
    executor_restarts: dict[str, int] = field(default_factory=dict)

    @property
    def daemon(self) -> Child:
        return self.children[-1]


@dataclass
class Cluster:
    replicas: list[Replica]
    router: Child
    url: str  # the router's base, without /v1


def visible_gpus() -> list[str]:
    """The GPUs to give one each to the replicas: CUDA_VISIBLE_DEVICES if set, else
    what nvidia-smi lists; none on a host without them (all replicas share the CPU)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def router_installed() -> bool:
    return importlib.util.find_spec("vllm_router") is not None


def router_policy(opts: RouterOptions, replicas: int) -> str:
    return "round_robin" if replicas < 2 else opts.policy  # power_of_two needs two


def router_argv(opts: RouterOptions, worker_urls: list[str]) -> list[str]:
    policy = router_policy(opts, len(worker_urls))
    interval = str(opts.health_interval_s)
    metrics_port = opts.metrics_port or free_port(opts.host)
    return [
        ROUTER_MODULE,
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--worker-urls",
        *worker_urls,
        "--policy",
        policy,
        "--health-check-interval-secs",
        interval,
        "--worker-startup-check-interval",
        interval,
        "--prometheus-host",
        opts.host,
        "--prometheus-port",
        str(metrics_port),
        "--health-failure-threshold",
        "1",
        "--cb-failure-threshold",
        "1",
        "--cb-timeout-duration-secs",
        str(3 * opts.health_interval_s),
        "--retry-max-retries",
        "3",
        "--log-level",
        "warning",
        *opts.extra_args,
    ]


def wait_http_ok(child: Child, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = child.proc.poll()
        if code is not None:
            raise LaunchError(f"{child.name} exited with code {code} before it answered {url}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        time.sleep(0.2)
    raise LaunchError(f"{child.name} did not answer {url} in {timeout_s:.0f} s")


def start_router(opts: RouterOptions, replicas: list[Replica], log_dir: Path | None) -> Child:
    log_file = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_dir / "router.log", "ab")  # noqa: SIM115
    urls = [r.plan.http_url for r in replicas]
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    child = start("router", router_argv(opts, urls), f"{host}:{opts.port}", log_file)
    wait_http_ok(child, f"http://{host}:{opts.port}/health", 60.0)
    return child


@contextlib.contextmanager
def replicated(
    model: Path,
    replicas: int,
    router: RouterOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    http_port: int = 0,
    executor_args: Sequence[str] = (),
    scheduler_args: Sequence[str] = (),
    cpu_executor_args: Sequence[str] | None = None,
    log_dir: Path | None = None,
    start_timeout_s: float = 300.0,
) -> Iterator[Cluster]:
    """N stacks, replica i on gRPC port `port + i` and HTTP port `http_port + i` (0:
    free ports) with GPU i of those visible, then the router in front of their HTTP
    APIs; stopped router first, then each stack draining."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if not router_installed():
        raise LaunchError("vllm-router is not installed: pip install 'apex-serve[router]'")
    gpus = visible_gpus()
    if gpus and len(gpus) < replicas:
        raise LaunchError(f"{replicas} replicas asked, {len(gpus)} GPUs visible")
    started: list[Replica] = []
    router_child: Child | None = None
    try:
        for i in range(replicas):
            http = http_port + i if http_port else free_port()
            args = [*scheduler_args, "--http-port", str(http)]
            plan = stack_plan(
                model, host, port + i if port else 0, executor_args, args, cpu_executor_args
            )
            env = {"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else {}
            logs = log_dir / f"replica-{i}" if log_dir is not None else None
            replica = Replica(i, plan, env, logs)
            replica.children = launch(plan, logs, start_timeout_s, env)
            started.append(replica)
        router_child = start_router(router, started, log_dir)
        host_url = router_child.address
        yield Cluster(started, router_child, f"http://{host_url}")
    finally:
        if router_child is not None:
            stop([router_child])
            close_logs([router_child])
        for replica in reversed(started):
            stop(replica.children)
            close_logs(replica.children)


def keep_alive(cluster: Cluster, start_timeout_s: float = 300.0) -> None:
    """One supervision pass: executors that died start again (the daemon recovers
    them); a replica whose daemon ended starts again whole, on the same ports."""
    for replica in cluster.replicas:
        if replica.daemon.proc.poll() is None:
            restart_crashed(replica.children, replica.executor_restarts)
            continue
        replica.restarts += 1
        if replica.restarts > MAX_REPLICA_RESTARTS:
            raise LaunchError(f"replica {replica.index} ended {MAX_REPLICA_RESTARTS} times")
        print(
            f"apex: replica {replica.index}'s daemon exited with code "
            f"{replica.daemon.proc.returncode}; starting the replica again",
            file=sys.stderr,
            flush=True,
        )
        stop(replica.children)
        close_logs(replica.children)
        replica.children = launch(replica.plan, replica.log_dir, start_timeout_s, replica.env)


def serve_replicas(
    model: Path,
    replicas: int,
    router: RouterOptions,
    host: str,
    port: int,
    http_port: int,
    executor_args: list[str],
    scheduler_args: list[str],
    cpu_executor_args: list[str] | None,
) -> int:
    """The foreground command: start everything, keep it alive, stop it on Ctrl-C."""
    stop_requested = stop_on_signals()
    try:
        with replicated(
            model,
            replicas,
            router,
            host,
            port,
            http_port,
            executor_args,
            scheduler_args,
            cpu_executor_args,
        ) as cluster:
            for r in cluster.replicas:
                gpu = r.env.get("CUDA_VISIBLE_DEVICES", "none")
                print(f"apex: replica {r.index}: {r.plan.http_url} (GPU {gpu})", flush=True)
            print(
                f"apex: serving {model.name} x{replicas} behind vllm-router on "
                f"{cluster.url}/v1 (policy {router_policy(router, replicas)})",
                flush=True,
            )
            while not stop_requested.is_set():
                keep_alive(cluster)
                time.sleep(0.5)
            print("apex: stopping", file=sys.stderr, flush=True)
        return 0
    except LaunchError as e:
        print(f"apex: {e}", file=sys.stderr)
        return 1
