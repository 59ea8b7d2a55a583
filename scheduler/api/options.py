"""The daemon's command line: every option an operator has, checked where it is read."""

from __future__ import annotations

import argparse
import os

from scheduler.core.config import DEFAULT_BATCHED_TOKENS, STRATEGIES
from scheduler.policies import POLICIES


def parse_args(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="apex-scheduler", description=description)
    ap.add_argument("--model", required=True, help="checkpoint directory (tokenizer, config)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051)
    ap.add_argument("--gpu-executor", default="127.0.0.1:50061", help="host:port")
    tier = ap.add_mutually_exclusive_group()
    tier.add_argument("--gpu-blocks", type=int, help="GPU KV tier size in blocks")
    tier.add_argument("--gpu-kv-gb", type=float, help="GPU KV tier size in GB (1e9 bytes)")
    ap.add_argument("--cpu-executor", default="", help="host:port; empty: no CPU tier")
    cpu = ap.add_mutually_exclusive_group()
    cpu.add_argument("--cpu-blocks", type=int, help="CPU KV tier size in blocks")
    cpu.add_argument("--cpu-kv-gb", type=float, help="CPU KV tier size in GB (default 1)")
    ap.add_argument(
        "--cpu-kv-dtype",
        default="",
        help="CPU tier storage: float32, float16, bfloat16 (default: the model's)",
    )
    ap.add_argument(
        "--placement",
        default="auto",
        choices=["gpu", "cpu", "auto"],
        help="where decode attention runs: gpu (CPU tier only for swapping), "
        "cpu (every request after prefill), auto (CPU when the GPU is full)",
    )
    ap.add_argument(
        "--policy",
        default="apex",
        choices=list(POLICIES),
        help="gpu-only (vLLM-like), neo (pipelining, load-aware placement), apex "
        "(per-iteration strategy and placement under a TPOT bound); switch live with "
        "`apexctl policy`",
    )
    ap.add_argument(
        "--tpot-slo-ms", type=float, default=0.0, help="apex's TPOT bound (0: from the profile)"
    )
    ap.add_argument(
        "--ttft-slo-s",
        type=float,
        default=0.0,
        help="apex's TTFT bound: a request waits for the GPU tier only while that keeps it "
        "within half of this, else it decodes on the CPU tier (0: 2 s)",
    )
    ap.add_argument(
        "--strategy",
        default="auto",
        choices=list(STRATEGIES),
        help="force how CPU rows run (tests, operations); auto: the policy decides",
    )
    ap.add_argument(
        "--profile",
        default="auto",
        help="cost-model profile: auto (the newest measured for this model, dtype and "
        "device), a JSON path, a shipped profile's name, or none; without one, neo and "
        "apex fall back to the fixed placement rule",
    )
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=0, help="0: the model's own")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=DEFAULT_BATCHED_TOKENS,
        help="tokens per iteration, a decode row counting one; longer prompts are "
        "prefilled in chunks (with --no-chunked-prefill: prompt tokens admitted per "
        "iteration, at least max_model_len)",
    )
    ap.add_argument(
        "--no-chunked-prefill",
        action="store_true",
        help="prefill each prompt whole in one iteration (it stalls the decoding ones)",
    )
    ap.add_argument("--max-queue", type=int, default=1024)
    ap.add_argument(
        "--executor-wait-s",
        type=float,
        default=300.0,
        help="how long to wait for the executor at start",
    )
    ap.add_argument(
        "--generation-token",
        default=os.environ.get("APEX_GENERATION_TOKEN", ""),
        help="bearer token for Generation calls (env APEX_GENERATION_TOKEN)",
    )
    ap.add_argument(
        "--admin-token",
        default=os.environ.get("APEX_ADMIN_TOKEN", ""),
        help="bearer token for Admin calls (env APEX_ADMIN_TOKEN)",
    )
    ap.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="the OpenAI-compatible HTTP API on this port (0: off)",
    )
    ap.add_argument(
        "--chat-template",
        default="",
        help="Jinja chat template file (default: the model's own, from tokenizer_config.json)",
    )
    ap.add_argument("--tls-cert", default="", help="PEM certificate: serve TLS")
    ap.add_argument("--tls-key", default="", help="PEM private key for --tls-cert")
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics over HTTP on this port (0: off)",
    )
    ap.add_argument(
        "--drain-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM or Drain, how long in-flight requests may take",
    )
    ap.add_argument(
        "--step-timeout-s",
        type=float,
        default=120.0,
        help="how long one iteration may take at the GPU executor before it counts as "
        "failed (its requests are recomputed; a request in 3 failed steps ends)",
    )
    ap.add_argument(
        "--recovery-timeout-s",
        type=float,
        default=120.0,
        help="after a failed step, how long to wait for the executors to answer again "
        "before every request ends with UNAVAILABLE",
    )
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    if not args.drain_grace_s >= 0:
        ap.error("--drain-grace-s must be >= 0")
    for name in ("step_timeout_s", "recovery_timeout_s"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    return args
