"""Prometheus metrics of the daemon, served over HTTP on their own port.

State (queue depth, KV usage, counters the scheduler keeps) is read at scrape time, so
it can never drift from the truth; latencies are histograms fed as requests finish.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineObserver:
    """What the engine reports as it goes; the default reports to nobody."""

    def on_step(
        self, strategy: str, seconds: float, tokens: int, predicted_s: float | None
    ) -> None: ...

    def on_finish(self, reason: str, ttft_s: float, total_s: float, tokens: int) -> None: ...

    def on_reject(self, reason: str) -> None: ...


class Metrics(EngineObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "apex_time_to_first_token_seconds",
            "Arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "apex_time_per_output_token_seconds",
            "Mean time between output tokens of a finished request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.step = Histogram(
            "apex_iteration_seconds",
            "One engine iteration (executor step)",
            ["strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "apex_requests_finished",
            "Requests ended, by finish reason",
            ["finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "apex_requests_rejected", "Requests refused at intake", ["reason"], registry=r
        )
        self.predictor_error = Histogram(
            "apex_predictor_relative_error",
            "|predicted - measured| / measured, per iteration",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )

    def watch(self, engine) -> None:
        self.registry.register(EngineCollector(engine))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def on_step(
        self, strategy: str, seconds: float, tokens: int, predicted_s: float | None
    ) -> None:
        self.step.labels(strategy).observe(seconds)
        if predicted_s is not None and seconds > 0:
            self.predictor_error.observe(abs(predicted_s - seconds) / seconds)

    def on_finish(self, reason: str, ttft_s: float, total_s: float, tokens: int) -> None:
        self.finished.labels(reason).inc()
        if tokens >= 1:
            self.ttft.observe(ttft_s)
        if tokens >= 2:
            self.tpot.observe((total_s - ttft_s) / (tokens - 1))

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()


class EngineCollector:
    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        e, s = self.engine, self.engine.scheduler
        yield GaugeMetricFamily("apex_queue_depth", "Requests waiting", value=len(s.waiting))
        yield GaugeMetricFamily("apex_running_requests", "Requests decoding", value=len(s.running))
        yield GaugeMetricFamily(
            "apex_swapped_requests", "Requests parked on the CPU tier", value=len(s.swapped)
        )
        used = GaugeMetricFamily("apex_kv_blocks_used", "KV blocks in use", labels=["tier"])
        total = GaugeMetricFamily("apex_kv_blocks_total", "KV blocks", labels=["tier"])
        for alloc in (s.gpu, s.cpu):
            if alloc is not None:
                used.add_metric([alloc.tier], alloc.num_used)
                total.add_metric([alloc.tier], alloc.num_total)
        yield used
        yield total
        yield GaugeMetricFamily(
            "apex_tokens_per_second", "Generated tokens/s, last 10 s", value=e.stats.tokens_per_s()
        )
        yield GaugeMetricFamily("apex_draining", "1 while draining", value=int(e.draining))
        yield CounterMetricFamily(
            "apex_generated_tokens", "Tokens generated", value=e.stats.generated_tokens
        )
        yield CounterMetricFamily(
            "apex_preemptions", "Requests preempted for recompute", value=s.num_preemptions
        )
        mig = CounterMetricFamily(
            "apex_migrations", "Requests moved between KV tiers", labels=["direction"]
        )
        mig.add_metric(["gpu_to_cpu"], s.num_swap_outs)
        mig.add_metric(["cpu_to_gpu"], s.num_swap_ins)
        yield mig
        it = CounterMetricFamily(
            "apex_iterations", "Engine iterations by strategy", labels=["strategy"]
        )
        for strategy, n in sorted(e.stats.by_strategy.items()):
            it.add_metric([strategy], n)
        yield it
        yield GaugeMetricFamily(
            "apex_predictor_mape",
            "Step-time predictor: mean absolute % error, recent window",
            value=e.predictor.mape(),
        )
        yield GaugeMetricFamily(
            "apex_profile_mape",
            "The policy's profile, calibrated: mean absolute % error, recent window",
            value=e.trace.profile_mape(),
        )
        yield GaugeMetricFamily(
            "apex_profile_calibration",
            "Measured / profile-predicted step time, recent median",
            value=s.policy.calibration.scale,
        )
        policy = GaugeMetricFamily("apex_policy", "1 for the policy in force", labels=["policy"])
        policy.add_metric([s.policy.name], 1)
        yield policy
        yield CounterMetricFamily(
            "apex_executor_recoveries",
            "Times the executors were lost and the running requests recomputed",
            value=e.stats.recoveries,
        )
