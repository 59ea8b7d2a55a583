"""`apex-scheduler`: the daemon that owns the queue, the KV blocks and every decision."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

import grpc
from apex.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

from common.grpc_server import (
    SERVER_OPTIONS,
    add_health_and_reflection,
    exit_with_launcher,
    listen,
    port_taken,
    set_serving,
    setup_logging,
)
from scheduler.api.admin import AdminService
from scheduler.api.auth import TokenAuthInterceptor
from scheduler.api.chat_template import ChatTemplate, TemplateError
from scheduler.api.generation import GenerationService
from scheduler.api.http import create_app, http_server, wait_started
from scheduler.api.metrics import Metrics
from scheduler.api.openai_serving import Served
from scheduler.api.options import parse_args
from scheduler.api.tls import TlsError, server_credentials
from scheduler.api.validation import Limits
from scheduler.api.wire import MalformedRequestInterceptor
from scheduler.core.config import ModelSpec, SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.costs.cost_model import CostModel
from scheduler.costs.profile import find_profile, load_profile, profile_key, user_profile_dir
from scheduler.engine.detokenizer import TextTokenizer
from scheduler.engine.engine import Engine
from scheduler.executors.client import CpuExecutorClient, GpuExecutorClient, TierSpec
from scheduler.executors.profiler import Profiler
from scheduler.executors.setup import Executors
from scheduler.policies import Policy, make_policy
from scheduler.types import ExecutorError

log = logging.getLogger(__name__)
PROG = "apex-scheduler"
SERVICES = [
    generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
]
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CPU_DEFAULT_KV_GB = 0.5
GPU_MEMORY_UTILIZATION = 0.9


def load_policy(args: argparse.Namespace, key: str) -> tuple[CostModel | None, Policy]:
    """--profile auto: the newest profile measured under this stack's key, if any."""
    cost = None
    source = args.profile
    if source == "auto":
        found = find_profile(key)
        source = str(found) if found else ""
        if not found:
            log.warning(
                "no profile measured for %s in %s: run `apexctl profile`", key, user_profile_dir()
            )
    if source and source != "none":
        try:
            cost = load_profile(source)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"apex-scheduler: --profile {source}: {e}") from e
        log.info("profile: %s (%s)", cost.name, source)
    if args.tpot_slo_ms < 0:
        raise SystemExit("apex-scheduler: --tpot-slo-ms must be >= 0")
    if args.ttft_slo_s < 0:
        raise SystemExit("apex-scheduler: --ttft-slo-s must be >= 0")
    policy = make_policy(args.policy, cost, args.tpot_slo_ms / 1e3 or None, args.ttft_slo_s or None)
    if cost is None and args.policy != "gpu-only":
        log.warning("no --profile: policy %s runs the fixed placement rule", args.policy)
    log.info("policy: %s", policy.describe())
    return cost, policy


def gpu_blocks(args: argparse.Namespace, bytes_per_block: int, free_bytes: int) -> int:
    if args.gpu_blocks is not None:
        return args.gpu_blocks
    if args.gpu_kv_gb is not None:
        return int(args.gpu_kv_gb * 1e9 // bytes_per_block)
    if free_bytes > 0:
        return int(free_bytes * GPU_MEMORY_UTILIZATION // bytes_per_block)
    return int(CPU_DEFAULT_KV_GB * 1e9 // bytes_per_block)


async def wait_for(client: GpuExecutorClient | CpuExecutorClient, name: str, wait_s: float):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await client.info(timeout=2.0)
        except ExecutorError as e:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"apex-scheduler: {name} at {client.address} did not answer in "
                    f"{wait_s:.0f} s ({e.code}); is it running there?"
                ) from e
            await asyncio.sleep(0.2)


def tier_spec(args: argparse.Namespace, spec: ModelSpec, info, max_len: int) -> TierSpec | None:
    """The CPU tier's dimensions and size, or None when there is no CPU tier."""
    kv_dtype = args.cpu_kv_dtype or info.dtype
    if kv_dtype not in DTYPE_BYTES:
        raise SystemExit(f"apex-scheduler: --cpu-kv-dtype must be one of {sorted(DTYPE_BYTES)}")
    per_block = spec.kv_bytes_per_token(DTYPE_BYTES[kv_dtype]) * args.block_size
    gb = args.cpu_kv_gb if args.cpu_kv_gb is not None else 1.0
    blocks = args.cpu_blocks if args.cpu_blocks is not None else int(gb * 1e9 // per_block)
    if blocks <= 0:
        return None
    return TierSpec(
        num_layers=spec.num_layers,
        num_blocks=blocks,
        block_size=args.block_size,
        num_heads=info.num_attention_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        kv_dtype=kv_dtype,
        io_dtype=info.dtype,
        max_rows=args.max_num_seqs,
        max_blocks_per_seq=-(-max_len // args.block_size),
    )


def chat_template(args: argparse.Namespace) -> ChatTemplate | None:
    try:
        template = ChatTemplate.load(args.model, args.chat_template or None)
    except (OSError, TemplateError) as e:
        raise SystemExit(f"{PROG}: --chat-template {args.chat_template}: {e}") from e
    if template is None:
        log.warning("the model has no chat template: /v1/chat/completions needs --chat-template")
    return template


async def drain(engine: Engine, grace_s: float) -> None:
    """Take no more requests; let the ones in flight finish for up to grace_s."""
    left = await engine.drain(grace_s)
    if left:
        log.warning("drain grace of %.0f s over: %d requests end with UNAVAILABLE", grace_s, left)


async def serve(args: argparse.Namespace, credentials: grpc.ServerCredentials | None) -> None:
    spec = ModelSpec.from_dir(args.model)
    tokenizer = TextTokenizer(args.model)
    gpu = GpuExecutorClient(args.gpu_executor)
    info = await wait_for(gpu, "GPU executor", args.executor_wait_s)
    bytes_per_block = spec.kv_bytes_per_token(DTYPE_BYTES[info.dtype]) * args.block_size
    num_blocks = gpu_blocks(args, bytes_per_block, info.free_device_memory_bytes)
    max_len = args.max_model_len or spec.max_position_embeddings
    if max_len > spec.max_position_embeddings:
        raise SystemExit(
            f"--max-model-len {max_len} exceeds the model's "
            f"{spec.max_position_embeddings} positions"
        )
    if num_blocks * args.block_size < max_len and not args.max_model_len:
        log.warning(
            "the GPU tier holds %d tokens; max_model_len lowered from %d",
            num_blocks * args.block_size,
            max_len,
        )
        max_len = num_blocks * args.block_size
    cpu, tier = None, None
    if args.cpu_executor:
        cpu = CpuExecutorClient(args.cpu_executor)
        await wait_for(cpu, "CPU executor", args.executor_wait_s)
        tier = tier_spec(args, spec, info, max_len)
    elif args.placement == "cpu":
        raise SystemExit("apex-scheduler: --placement cpu needs --cpu-executor")
    cpu_blocks = tier.num_blocks if tier is not None else 0
    try:
        config = SchedulerConfig(
            max_model_len=max_len,
            block_size=args.block_size,
            num_gpu_blocks=num_blocks,
            max_num_seqs=args.max_num_seqs,
            # unchunked, any prompt must fit one iteration
            max_num_batched_tokens=args.max_num_batched_tokens
            if not args.no_chunked_prefill
            else max(args.max_num_batched_tokens, max_len),
            chunked_prefill=not args.no_chunked_prefill,
            max_queue=args.max_queue,
            num_cpu_blocks=cpu_blocks,
            placement=args.placement if cpu_blocks else "gpu",
            strategy=args.strategy,
        )
    except ValueError as e:
        raise SystemExit(f"apex-scheduler: {e}") from e
    executors = Executors(gpu, num_blocks, args.block_size, cpu, tier, max_len)
    try:
        await executors.ensure_ready()
    except ExecutorError as e:
        raise SystemExit(f"apex-scheduler: the executors could not be set up: {e.details}") from e
    log.info(
        "GPU tier: %d blocks of %d tokens; CPU tier: %d blocks; max_model_len %d; placement %s",
        num_blocks,
        args.block_size,
        cpu_blocks,
        max_len,
        config.placement,
    )

    key = profile_key(
        spec.num_layers,
        info.hidden_size,
        info.num_attention_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.vocab_size,
        info.dtype,
        info.device_name,
        tier.kv_dtype if tier is not None else "",
    )
    cost, policy = load_policy(args, key)
    metrics = Metrics(spec.name)
    engine = Engine(
        Scheduler(config, tokenizer.eos_token_ids, policy=policy),
        executors,
        tokenizer,
        step_timeout_s=args.step_timeout_s,
        recovery_timeout_s=args.recovery_timeout_s,
        observer=metrics,
        cost=cost,
    )
    profiler = Profiler(
        executors,
        key,
        spec.name,
        info.device_name,
        spec.num_layers,
        max_tokens=max(config.max_num_batched_tokens, max_len),
        max_rows=config.max_num_seqs,
        max_context=max_len,
        gpu_kv_capacity_tokens=num_blocks * args.block_size,
        cpu_kv_capacity_tokens=cpu_blocks * args.block_size,
    )
    metrics.watch(engine.status)
    if args.metrics_port:
        metrics.serve(args.host, args.metrics_port)
        log.info("Prometheus metrics on http://%s:%d/metrics", args.host, args.metrics_port)
    model_info = generation_pb2.ModelInfo(
        model=spec.name,
        vocab_size=spec.vocab_size,
        max_model_len=max_len,
        eos_token_ids=sorted(tokenizer.eos_token_ids),
        num_layers=spec.num_layers,
        hidden_size=info.hidden_size,
        num_attention_heads=info.num_attention_heads,
        num_kv_heads=spec.num_kv_heads,
        dtype=info.dtype,
        device=info.device,
        block_size=args.block_size,
        gpu_blocks=num_blocks,
    )
    stop = asyncio.Event()
    server = grpc.aio.server(
        interceptors=[
            TokenAuthInterceptor(args.generation_token, args.admin_token),
            MalformedRequestInterceptor(),
        ],
        options=SERVER_OPTIONS,
    )
    limits = Limits(max_model_len=max_len, vocab_size=spec.vocab_size)
    template = chat_template(args)
    generation_pb2_grpc.add_GenerationServicer_to_server(
        GenerationService(engine, limits, model_info, template), server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(engine, spec.name, stop.set, profiler), server
    )
    health = add_health_and_reflection(server, SERVICES)
    bound = listen(server, args.host, args.port, PROG, credentials)
    await server.start()
    engine.start()
    http = None
    if args.http_port:
        served = Served(engine, tokenizer, limits, spec.name, template)
        app = create_app(served, args.generation_token, metrics.registry)
        http = http_server(app, args.host, args.http_port)
        http_task = asyncio.create_task(http.serve(), name="http")
        await wait_started(http)
        log.info("OpenAI-compatible HTTP API on http://%s:%d/v1", args.host, args.http_port)
    set_serving(health, SERVICES, True)
    log.info(
        "serving %s on %s:%d%s", spec.name, args.host, bound, " (TLS)" if args.tls_cert else ""
    )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (grace %.0f s)", args.drain_grace_s)
    set_serving(health, SERVICES, False)
    await drain(engine, args.drain_grace_s)
    await engine.stop()
    if http is not None:
        http.should_exit = True
        await http_task
    await server.stop(grace=2.0)
    await executors.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__)
    setup_logging("scheduler", args.log_level)
    exit_with_launcher()
    # What can be checked without the executors is checked first: a second daemon on a
    # taken port, or a TLS mistake, says so at once instead of after minutes of waiting.
    for port in (args.port, args.http_port):
        if port_taken(args.host, port):
            raise SystemExit(f"{PROG}: cannot listen on {args.host}:{port}: the port is in use")
    try:
        credentials = server_credentials(args.tls_cert, args.tls_key)
    except TlsError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    asyncio.run(serve(args, credentials))


if __name__ == "__main__":
    main()
