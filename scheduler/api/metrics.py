"""Prometheus metrics of the daemon, on their own port and on the HTTP API's /metrics.

State (queue depth, KV usage, counters) is read at scrape time from one `EngineStatus`
snapshot, so it can never drift from the truth; latencies are histograms fed through
the engine's observer hooks.

Beside the `apex_` metrics, the names that vLLM users and the Kubernetes Gateway API
Inference Extension's model-server protocol read, labelled with `model_name`:
`vllm:num_requests_waiting` (queued, not admitted), `vllm:num_requests_running` (in the
running batch, on either tier; requests parked on the CPU tier are not counted),
`vllm:kv_cache_usage_perc` (0-1: blocks in use over both tiers' blocks, GPU and CPU,
since a request placed on the CPU tier is served as well as one on the GPU; the GPU
tier alone is `apex_kv_blocks_used{tier="gpu"}`), `vllm:cache_config_info` (labels
`block_size`, `num_gpu_blocks`, `num_cpu_blocks`), `vllm:time_to_first_token_seconds`,
`vllm:inter_token_latency_seconds` (every gap between a request's tokens),
`vllm:e2e_request_latency_seconds`, `vllm:prompt_tokens_total`,
`vllm:generation_tokens_total`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from scheduler.engine.ports import EngineObserver
from scheduler.engine.status import EngineStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics(EngineObserver):
    def __init__(self, model_name: str = "") -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        r = self.registry
        m = ["model_name"]
        self.vllm_ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first token",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.vllm_itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between two tokens of a request",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.vllm_e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to the end of a request",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.vllm_prompt = Counter(
            "vllm:prompt_tokens", "Prompt tokens of finished requests", m, registry=r
        ).labels(model_name)
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

    def watch(self, status: Callable[[], EngineStatus]) -> None:
        """Read the engine's state at every scrape through `status`."""
        self.registry.register(EngineCollector(status, self.model_name))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def on_step(
        self, strategy: str, seconds: float, tokens: int, predicted_s: float | None
    ) -> None:
        self.step.labels(strategy).observe(seconds)
        if predicted_s is not None and seconds > 0:
            self.predictor_error.observe(abs(predicted_s - seconds) / seconds)

    def on_finish(
        self, reason: str, ttft_s: float, total_s: float, tokens: int, prompt_tokens: int
    ) -> None:
        self.finished.labels(reason).inc()
        self.vllm_e2e.observe(total_s)
        self.vllm_prompt.inc(prompt_tokens)
        if tokens >= 1:
            self.ttft.observe(ttft_s)
            self.vllm_ttft.observe(ttft_s)
        if tokens >= 2:
            self.tpot.observe((total_s - ttft_s) / (tokens - 1))

    def on_token_gaps(self, gaps: list[float]) -> None:
        for gap in gaps:
            self.vllm_itl.observe(gap)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()


class EngineCollector:
    def __init__(self, status: Callable[[], EngineStatus], model_name: str) -> None:
        self.status = status
        self.model_name = model_name

    def collect(self):
        st = self.status()
        yield from self.vllm(st)
        yield GaugeMetricFamily("apex_queue_depth", "Requests waiting", value=st.num_waiting)
        yield GaugeMetricFamily("apex_running_requests", "Requests decoding", value=st.num_running)
        yield GaugeMetricFamily(
            "apex_swapped_requests", "Requests parked on the CPU tier", value=st.num_swapped
        )
        used = GaugeMetricFamily("apex_kv_blocks_used", "KV blocks in use", labels=["tier"])
        total = GaugeMetricFamily("apex_kv_blocks_total", "KV blocks", labels=["tier"])
        for tier in st.tiers:
            used.add_metric([tier.tier], tier.blocks_used)
            total.add_metric([tier.tier], tier.blocks_total)
        yield used
        yield total
        yield GaugeMetricFamily(
            "apex_tokens_per_second", "Generated tokens/s, last 10 s", value=st.tokens_per_s
        )
        yield GaugeMetricFamily("apex_draining", "1 while draining", value=int(st.draining))
        yield CounterMetricFamily(
            "apex_generated_tokens", "Tokens generated", value=st.generated_tokens
        )
        yield CounterMetricFamily(
            "apex_preemptions", "Requests preempted for recompute", value=st.preemptions
        )
        yield CounterMetricFamily(
            "apex_prompt_tokens_prefilled",
            "Prompt tokens the GPU computed (again after a preemption)",
            value=st.prompt_tokens_prefilled,
        )
        yield CounterMetricFamily(
            "apex_prompt_tokens_shared",
            "Prompt tokens a sample (n > 1) took from another sample's KV blocks",
            value=st.prompt_tokens_shared,
        )
        mig = CounterMetricFamily(
            "apex_migrations", "Requests moved between KV tiers", labels=["direction"]
        )
        mig.add_metric(["gpu_to_cpu"], st.swap_outs)
        mig.add_metric(["cpu_to_gpu"], st.swap_ins)
        yield mig
        it = CounterMetricFamily(
            "apex_iterations", "Engine iterations by strategy", labels=["strategy"]
        )
        for strategy, n in sorted(st.by_strategy.items()):
            it.add_metric([strategy], n)
        yield it
        yield GaugeMetricFamily(
            "apex_predictor_mape",
            "Step-time prediction (the calibrated profile, else the online fit): "
            "mean absolute % error, recent window",
            value=st.prediction_mape,
        )
        yield GaugeMetricFamily(
            "apex_profile_mape",
            "apex_predictor_mape while a profile is loaded (NaN without one)",
            value=st.prediction_mape if st.policy.profile else float("nan"),
        )
        yield GaugeMetricFamily(
            "apex_profile_calibration",
            "Measured / profile-predicted step time, recent median",
            value=st.policy.calibration,
        )
        policy = GaugeMetricFamily("apex_policy", "1 for the policy in force", labels=["policy"])
        policy.add_metric([st.policy.name], 1)
        yield policy
        yield CounterMetricFamily(
            "apex_executor_recoveries",
            "Times the executors were lost and the running requests recomputed",
            value=st.recoveries,
        )

    def vllm(self, st: EngineStatus):
        m = ["model_name"]
        for name, doc, value in (
            ("vllm:num_requests_waiting", "Requests waiting to be admitted", st.num_waiting),
            ("vllm:num_requests_running", "Requests in the running batch", st.num_running),
            (
                "vllm:kv_cache_usage_perc",
                "KV blocks in use over all blocks, both tiers (0-1)",
                sum(t.blocks_used for t in st.tiers)
                / max(1, sum(t.blocks_total for t in st.tiers)),
            ),
        ):
            g = GaugeMetricFamily(name, doc, labels=m)
            g.add_metric([self.model_name], value)
            yield g
        blocks = {t.tier: t for t in st.tiers}
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "The KV cache's configuration",
            labels=["model_name", "block_size", "num_gpu_blocks", "num_cpu_blocks"],
        )
        gpu, cpu = blocks.get("gpu"), blocks.get("cpu")
        info.add_metric(
            [
                self.model_name,
                str(gpu.block_size if gpu else 0),
                str(gpu.blocks_total if gpu else 0),
                str(cpu.blocks_total if cpu else 0),
            ],
            1,
        )
        yield info
        generated = CounterMetricFamily("vllm:generation_tokens", "Tokens generated", labels=m)
        generated.add_metric([self.model_name], st.generated_tokens)
        yield generated
