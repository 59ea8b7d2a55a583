"""Start the real stack (executor and daemon as processes) for tests and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clients.apex_client import ApexClient
from scheduler.launcher import Child, free_port, start, stop, wait_healthy


@dataclass
class Stack:
    address: str
    executor_address: str
    children: list[Child]
    log_dir: Path

    def client(self, timeout: float | None = 120.0) -> ApexClient:
        return ApexClient(self.address, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@contextlib.contextmanager
def running_stack(
    model: Path,
    log_dir: Path,
    scheduler_args: list[str] = (),
    executor_args: list[str] = (),
    timeout_s: float = 120.0,
) -> Iterator[Stack]:
    log_dir.mkdir(parents=True, exist_ok=True)
    ex_port, port = free_port(), free_port()
    children: list[Child] = []
    with (
        open(log_dir / "gpu-executor.log", "wb") as ex_log,
        open(log_dir / "scheduler.log", "wb") as sched_log,
    ):
        try:
            children.append(
                start(
                    "gpu-executor",
                    [
                        "gpu_executor.server",
                        "--model",
                        str(model),
                        "--port",
                        str(ex_port),
                        "--threads",
                        "1",
                        *executor_args,
                    ],
                    f"127.0.0.1:{ex_port}",
                    ex_log,
                )
            )
            wait_healthy(children[-1], timeout_s)
            children.append(
                start(
                    "scheduler",
                    [
                        "scheduler.daemon",
                        "--model",
                        str(model),
                        "--port",
                        str(port),
                        "--gpu-executor",
                        f"127.0.0.1:{ex_port}",
                        *scheduler_args,
                    ],
                    f"127.0.0.1:{port}",
                    sched_log,
                )
            )
            wait_healthy(children[-1], timeout_s)
            yield Stack(f"127.0.0.1:{port}", f"127.0.0.1:{ex_port}", children, log_dir)
        finally:
            stop(children)
