"""`apex`: make a model, run the stack."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launcher import stack
from scheduler.api.tls import TlsError, server_credentials


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="apex", description="APEX hybrid CPU-GPU LLM serving")
    sub = ap.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init-model", help="write a random-weight Llama checkpoint")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--preset", default="tiny", help="tiny (default), tiny-gqa, llama2-7b, llama3.1-8b"
    )
    init.add_argument("--seed", type=int, default=0)
    init.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="then train it this many steps on shipped text, so that it writes words "
        "(the default model gets 300; 0: random weights, as the exactness tests use)",
    )

    srv = sub.add_parser("serve", help="run the executors and the daemon as local processes")
    srv.add_argument("--model", type=Path, help="checkpoint dir (default: the tiny model)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=50051, help="the gRPC API")
    srv.add_argument(
        "--http-port", type=int, default=8000, help="the OpenAI-compatible HTTP API (0: off)"
    )
    srv.add_argument("--chat-template", help="Jinja chat template file (default: the model's)")
    srv.add_argument("--device", help="executor device: cuda, cuda:N or cpu")
    srv.add_argument("--dtype", default="auto")
    srv.add_argument("--threads", type=int, default=0, help="executor torch threads")
    tier = srv.add_mutually_exclusive_group()
    tier.add_argument("--gpu-blocks", type=int)
    tier.add_argument("--gpu-kv-gb", type=float)
    srv.add_argument(
        "--placement",
        choices=["gpu", "cpu", "auto"],
        default="auto",
        help="where decode attention runs (default auto: CPU when the GPU is full)",
    )
    srv.add_argument(
        "--policy",
        choices=["gpu-only", "neo", "apex"],
        default="apex",
        help="scheduling policy (default apex); switch live with `apexctl policy`",
    )
    srv.add_argument("--tpot-slo-ms", type=float, help="apex's TPOT bound")
    srv.add_argument("--ttft-slo-s", type=float, help="apex's TTFT bound")
    srv.add_argument("--profile", help="cost-model profile: JSON path or shipped name")
    srv.add_argument(
        "--strategy", choices=["auto", "overlap", "pipeline"], help="force how CPU rows run"
    )
    srv.add_argument(
        "--cpu-kv-gb",
        type=float,
        default=1.0,
        help="CPU KV tier in shared memory, GB (0: no CPU tier or CPU executor)",
    )
    srv.add_argument("--cpu-kv-dtype", help="float32, float16 or bfloat16 (default: the model's)")
    srv.add_argument("--cpu-threads", type=int, default=0, help="CPU attention threads")
    srv.add_argument("--cpu-cores", default="", help="pin the CPU executor, e.g. 0-7")
    srv.add_argument(
        "--host-reserve-gb",
        type=float,
        help="memory the CPU tier must leave to the rest of the host (GB, default 2)",
    )
    srv.add_argument("--block-size", type=int)
    srv.add_argument("--max-model-len", type=int)
    srv.add_argument("--max-num-seqs", type=int)
    srv.add_argument("--max-queue", type=int)
    srv.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="tokens per iteration (default 512): longer prompts are prefilled in chunks",
    )
    srv.add_argument("--no-chunked-prefill", action="store_true", help="prefill each prompt whole")
    srv.add_argument(
        "--drain-grace-s",
        type=float,
        help="on SIGTERM or Ctrl-C, how long in-flight requests may take (default 30)",
    )
    srv.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="stacks, one per GPU, behind vllm-router on --http-port (replica i: gRPC on "
        "--port + i, HTTP on --http-port + 1 + i); default 1: one stack, no router",
    )
    srv.add_argument(
        "--router-policy",
        default="power_of_two",
        choices=["power_of_two", "round_robin", "random", "cache_aware", "consistent_hash"],
        help="how vllm-router picks a replica (default power_of_two, on their /get_load)",
    )
    srv.add_argument(
        "--router-health-interval-s",
        type=int,
        default=5,
        help="seconds between the router's health checks and load polls (default 5)",
    )
    srv.add_argument("--tls-cert", help="PEM certificate: the daemon serves TLS")
    srv.add_argument("--tls-key", help="PEM private key for --tls-cert")
    srv.add_argument(
        "--generation-token",
        help="bearer token for Generation calls (or env APEX_GENERATION_TOKEN)",
    )
    srv.add_argument("--admin-token", help="bearer token for Admin calls (or env APEX_ADMIN_TOKEN)")
    args = ap.parse_args(argv)

    if args.command == "init-model":
        from gpu_executor.model_init import init_model  # torch only for this command

        try:
            out = init_model(args.dir, args.preset, args.seed)
        except ValueError as e:
            sys.exit(f"apex init-model: {e}")
        print(f"apex: wrote the {args.preset} model to {out}")
        if args.train_steps > 0:
            from gpu_executor.model_train import train_briefly

            r = train_briefly(out, steps=args.train_steps, seed=args.seed)
            print(
                f"apex: trained {args.train_steps} steps: loss {r['first_loss']:.2f} -> "
                f"{r['last_loss']:.2f} in {r['seconds']:.0f} s"
            )
        return

    try:  # the daemon checks them too; here a mistake is said before anything starts
        server_credentials(args.tls_cert or "", args.tls_key or "")
    except TlsError as e:
        sys.exit(f"apex serve: {e}")
    model = args.model or stack.ensure_default_model()
    if not (model / "config.json").is_file():
        sys.exit(
            f"apex serve: {model} is not a model directory (no config.json); "
            "make one with `apex init-model DIR`"
        )
    executor_args = ["--dtype", args.dtype, "--threads", str(args.threads)]
    if args.device:
        executor_args += ["--device", args.device]
    scheduler_args: list[str] = ["--placement", args.placement, "--policy", args.policy]
    flags = (
        "tpot_slo_ms",
        "ttft_slo_s",
        "profile",
        "strategy",
        "gpu_blocks",
        "gpu_kv_gb",
        "block_size",
        "max_model_len",
        "max_num_seqs",
        "max_queue",
        "max_num_batched_tokens",
        "cpu_kv_dtype",
        "drain_grace_s",
        "http_port",
        "chat_template",
        "tls_cert",
        "tls_key",
    )
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            scheduler_args += ["--" + flag.replace("_", "-"), str(value)]
    if args.no_chunked_prefill:
        scheduler_args.append("--no-chunked-prefill")
    # Tokens reach the daemon through its environment, not its command line (which any
    # user of the host can read in the process list).
    for flag, env in (
        ("generation_token", "APEX_GENERATION_TOKEN"),
        ("admin_token", "APEX_ADMIN_TOKEN"),
    ):
        if getattr(args, flag):
            os.environ[env] = getattr(args, flag)
    cpu_args = None
    if args.cpu_kv_gb > 0:
        scheduler_args += ["--cpu-kv-gb", str(args.cpu_kv_gb)]
        cpu_args = ["--threads", str(args.cpu_threads)]
        if args.cpu_cores:
            cpu_args += ["--cores", args.cpu_cores]
        if args.host_reserve_gb is not None:
            cpu_args += ["--host-reserve-gb", str(args.host_reserve_gb)]
    elif args.placement == "cpu":
        sys.exit("apex serve: --placement cpu needs a CPU tier (--cpu-kv-gb > 0)")
    if args.replicas != 1:
        sys.exit(serve_replicated(args, model, executor_args, scheduler_args, cpu_args))
    sys.exit(stack.serve(model, args.host, args.port, executor_args, scheduler_args, cpu_args))


def serve_replicated(
    args: argparse.Namespace,
    model: Path,
    executor_args: list[str],
    scheduler_args: list[str],
    cpu_args: list[str] | None,
) -> int:
    """--replicas N: the router takes --http-port, the replicas the ports after it."""
    from launcher.replicas import RouterOptions, serve_replicas

    if args.replicas < 1:
        sys.exit(f"apex serve: --replicas must be >= 1, got {args.replicas}")
    if args.http_port == 0:
        sys.exit("apex serve: --replicas needs the HTTP API (--http-port > 0): the router uses it")
    if args.tls_cert:
        sys.exit("apex serve: --replicas with --tls-cert is not supported (the router speaks HTTP)")
    i = scheduler_args.index("--http-port")
    del scheduler_args[i : i + 2]
    try:
        router = RouterOptions(
            args.host, args.http_port, args.router_policy, args.router_health_interval_s
        )
    except ValueError as e:
        sys.exit(f"apex serve: {e}")
    return serve_replicas(
        model,
        args.replicas,
        router,
        args.host,
        args.port,
        args.http_port + 1,
        executor_args,
        scheduler_args,
        cpu_args,
    )


if __name__ == "__main__":
    main()
