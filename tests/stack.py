"""The real stack (executor and daemon as processes) for tests, with logs kept per test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.apex_client import ApexClient
from scheduler.launcher import LocalStack, local_stack


@dataclass
class Stack:
    local: LocalStack
    log_dir: Path

    @property
    def address(self) -> str:
        return self.local.address

    def client(self, timeout: float | None = 120.0) -> ApexClient:
        return ApexClient(self.address, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@contextlib.contextmanager
def running_stack(
    model: Path,
    log_dir: Path,
    scheduler_args: Sequence[str] = (),
    executor_args: Sequence[str] = (),
    cpu_executor_args: Sequence[str] | None = None,
) -> Iterator[Stack]:
    """cpu_executor_args None: GPU tier only; a list (maybe empty): with a CPU tier."""
    # One thread each: tests run beside each other on a 2-core CI machine.
    cpu_args = None if cpu_executor_args is None else ["--threads", "1", *cpu_executor_args]
    with local_stack(
        model,
        executor_args=["--threads", "1", *executor_args],
        scheduler_args=scheduler_args,
        log_dir=log_dir,
        start_timeout_s=120.0,
        cpu_executor_args=cpu_args,
    ) as local:
        yield Stack(local, log_dir)
