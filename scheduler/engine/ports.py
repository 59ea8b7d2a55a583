"""What the engine needs of its neighbours, as protocols: the executors it steps and the
observer it reports to. The daemon plugs in the gRPC executor clients and the Prometheus
metrics; the tests plug in an in-process fake executor and run the engine in
milliseconds. Neither side imports the other."""

from __future__ import annotations

from typing import Protocol

from scheduler.types import StepPlan, StepResult


class ExecutorPort(Protocol):
    async def step(self, plan: StepPlan, timeout: float) -> StepResult:
        """Run one iteration's plan; raises `ExecutorError` when a step fails."""
        ...

    async def recover(self, timeout_s: float) -> bool:
        """Wait for the executors to answer again and set them up; False on timeout."""
        ...

    def describe(self) -> str: ...


class EngineObserver:
    """What the engine reports as it goes; the default reports to nobody."""

    def on_step(
        self, strategy: str, seconds: float, tokens: int, predicted_s: float | None
    ) -> None: ...

    def on_finish(
        self, reason: str, ttft_s: float, total_s: float, tokens: int, prompt_tokens: int
    ) -> None: ...

    def on_token_gaps(self, gaps: list[float]) -> None:
        """Per step: for each request that got a token and had one before, the time
        since its previous token."""

    def on_reject(self, reason: str) -> None: ...
