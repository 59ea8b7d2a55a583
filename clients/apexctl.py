"""`apexctl`: talk to a running APEX daemon from the terminal."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
import time
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from clients import (
    apexctl_bench,
    apexctl_capacity,
    apexctl_generate,
    apexctl_policy,
    apexctl_profile,
)
from clients.apex_client import DEFAULT_ADDRESS, ApexClient
from clients.cli_output import as_dict
from common.grpc_server import check_health

CONFIG_PATH = Path.home() / ".config" / "apex" / "apexctl.ini"


def cmd_status(client: ApexClient, args: argparse.Namespace) -> int:
    if args.watch and not args.json:
        while True:  # a live table until Ctrl-C
            sys.stdout.write("\x1b[H\x1b[2J")
            print_status(client.status())
            print()
            print_requests(client.list_requests())
            print("\n(Ctrl-C to stop)")
            time.sleep(args.watch)
    st = client.status()
    if args.json:
        print(json.dumps(as_dict(st)))
        return 0
    print_status(st)
    return 0


def print_status(st) -> None:
    state = "draining" if st.draining else "serving"
    print(f"model        {st.model} ({state}; placement {st.placement})")
    print(
        f"requests     {st.num_running} running, {st.num_waiting} waiting "
        f"(queue bound {st.max_queue}), {st.finished_requests} finished"
    )
    for t in st.tiers:
        pct = 100.0 * t.blocks_used / max(t.blocks_total, 1)
        print(
            f"{t.tier} KV       {t.blocks_used}/{t.blocks_total} blocks of {t.block_size} "
            f"tokens ({pct:.0f}%)"
        )
    print(f"policy       {st.policy}; last strategy {st.strategy}")
    print(
        f"throughput   {st.tokens_per_s:.1f} tokens/s over the last 10 s; "
        f"{st.generated_tokens} tokens in {st.iterations} iterations"
    )
    print(
        f"preemptions  {st.preemptions}; migrations {st.swap_outs} to CPU, "
        f"{st.swap_ins} to GPU; {st.num_swapped} parked"
    )
    print(f"recoveries   {st.executor_recoveries}")
    print(
        f"predictor    {100 * st.predictor_mape:.1f}% mean abs. error on step time "
        f"({st.predictor_samples} iterations measured)"
    )
    if st.profile:
        print(
            f"profile      {st.profile}: {100 * st.profile_mape:.1f}% mean abs. error "
            f"(calibrated x{st.profile_calibration:.2f} online)"
        )
    print(f"uptime       {st.uptime_s:.0f} s")


def cmd_requests(client: ApexClient, args: argparse.Namespace) -> int:
    reqs = client.list_requests()
    if args.json:
        print(json.dumps([MessageToDict(r, preserving_proto_field_name=True) for r in reqs]))
        return 0
    print_requests(reqs)
    return 0


STATES = {1: "waiting", 2: "running", 3: "swapped"}
TIERS = {1: "gpu", 2: "cpu"}


def print_requests(reqs) -> None:
    print(
        f"{'request_id':34} {'state':8} {'tier':4} {'prompt':>6} {'output':>6} {'max':>6} "
        f"{'blocks':>6} {'age s':>6}"
    )
    for r in reqs:
        print(
            f"{r.request_id[:34]:34} {STATES.get(r.state, '?'):8} {TIERS.get(r.tier, '-'):4} "
            f"{r.prompt_tokens:6} {r.output_tokens:6} {r.max_tokens:6} "
            f"{r.gpu_blocks + r.cpu_blocks:6} {r.age_s:6.1f}"
        )


def cmd_health(client: ApexClient, args: argparse.Namespace) -> int:
    """gRPC health (needs no token): exit 0 when serving, for scripts and healthchecks."""
    ok = check_health(client.address, timeout=args.timeout or 3.0, tls_ca=client.tls_ca)
    print("serving" if ok else "not serving")
    return 0 if ok else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    """Runs locally: the scheduler on a virtual clock over a profile (no daemon)."""

    from scheduler.costs.profile import load_profile
    from scheduler.policies import POLICIES
    from scheduler.sim.simulator import WORKLOADS, simulate

    try:
        profile = load_profile(args.profile)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"apexctl simulate: cannot load profile {args.profile!r}: {e}")
    if args.host:
        from scheduler.costs.hosts import HOSTS, on_host

        if args.host not in HOSTS:
            sys.exit(f"apexctl simulate: --host must be one of {sorted(HOSTS)}")
        try:
            profile = on_host(profile, HOSTS[args.host])
        except ValueError as e:
            sys.exit(f"apexctl simulate: {e}")
    if args.workload not in WORKLOADS:
        sys.exit(f"apexctl simulate: workload must be one of {sorted(WORKLOADS)}")
    policies = args.policies.split(",")
    if set(policies) - set(POLICIES):
        sys.exit(f"apexctl simulate: policies must be among {POLICIES}")
    if not (args.tpot_slo_ms >= 0 and args.ttft_slo_s >= 0):
        sys.exit("apexctl simulate: --tpot-slo-ms and --ttft-slo-s must be >= 0")
    if args.slo_ttft_s or args.slo_tpot_ms:
        return apexctl_capacity.cmd_capacity(args, profile, WORKLOADS[args.workload], policies)
    results = [
        simulate(
            profile,
            WORKLOADS[args.workload],
            pol,
            n=args.requests,
            rate=args.rate,
            seed=args.seed,
            tpot_slo_s=args.tpot_slo_ms / 1e3 or None,
            ttft_slo_s=args.ttft_slo_s or None,
        )
        for pol in policies
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "simulation": True,
                    "profile": profile.name,
                    "device": profile.device,
                    "workload": args.workload,
                    "requests": args.requests,
                    "rate": args.rate,
                    "results": [r.summary() for r in results],
                }
            )
        )
        return 0
    print(
        f"SIMULATION on {profile.device}: {profile.model}; workload {args.workload}, "
        f"{args.requests} requests at {args.rate}/s"
    )
    print(
        f"{'policy':10} {'tok/s':>8} {'ratio':>6} {'TTFT p50/p99 s':>16} "
        f"{'TPOT p50/p99 ms':>17} {'batch':>6} {'preempt':>8} {'migr':>5}"
    )
    base = results[0].throughput
    for r in results:
        print(
            f"{r.policy:10} {r.throughput:8.1f} {r.throughput / base:6.2f} "
            f"{r.ttft_p50:7.1f}/{r.ttft_p99:<8.1f} {r.tpot_p50 * 1e3:7.1f}/{r.tpot_p99 * 1e3:<9.1f}"
            f"{r.mean_batch:6.1f} {r.preemptions:8} {r.migrations:5}"
        )
    return 0


def cmd_drain(client: ApexClient, args: argparse.Namespace) -> int:
    n = client.drain()
    print(
        f"draining: {n} requests in flight finish, then the daemon stops; new ones get UNAVAILABLE"
    )
    return 0


def cmd_migrate(client: ApexClient, args: argparse.Namespace) -> int:
    found = client.migrate(args.request_id, args.tier)
    print(
        f"{args.request_id} moves to the {args.tier} tier"
        if found
        else f"no live request {args.request_id!r}"
    )
    return 0 if found else 1


def cmd_abort(client: ApexClient, args: argparse.Namespace) -> int:
    found = client.admin_abort(args.request_id)
    print("aborted" if found else f"no live request {args.request_id!r}")
    return 0 if found else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apexctl", description=__doc__)
    ap.add_argument("--address", help=f"daemon host:port (env APEX_ADDRESS; {DEFAULT_ADDRESS})")
    ap.add_argument("--token", help="bearer token (env APEX_TOKEN)")
    ap.add_argument("--tls-ca", help="CA certificate (PEM) of a TLS daemon (env APEX_TLS_CA)")
    ap.add_argument("--config", help=f"settings file (env APEX_CONFIG; default {CONFIG_PATH})")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per call")
    sub = ap.add_subparsers(dest="command", required=True)
    apexctl_generate.add_parsers(sub)
    st = sub.add_parser("status", help="what the daemon is doing")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", type=float, default=0, help="refresh every N seconds")
    rq = sub.add_parser("requests", help="list live requests")
    rq.add_argument("--json", action="store_true")
    ab = sub.add_parser("abort", help="abort a request by id")
    ab.add_argument("request_id")
    sub.add_parser("drain", help="finish what is in flight, take nothing new, then stop")
    sub.add_parser("health", help="exit 0 when the daemon answers gRPC health as serving")
    sim = sub.add_parser("simulate", help="compare policies on a profile (no daemon; simulation)")
    sim.add_argument(
        "--profile",
        default="t4-llama2-7b",
        help="a shipped profile (t4-llama2-7b, a10-llama3.1-8b, measured-epyc-2core-tiny) "
        "or a JSON path, spec-derived or measured by `apexctl profile`",
    )
    sim.add_argument("--workload", default="chat", help="chat, cot or neo")
    sim.add_argument(
        "--host",
        help="the host the card is rented with: g4dn.xlarge, g4dn.16xlarge (T4), g5.xlarge, "
        "g5.16xlarge (A10): its CPU attention rate and CPU tier (default: the profile's)",
    )
    sim.add_argument("--policies", default="gpu-only,neo,apex")
    sim.add_argument(
        "--tpot-slo-ms", type=float, default=0.0, help="apex's TPOT bound (0: default)"
    )
    sim.add_argument("--ttft-slo-s", type=float, default=0.0, help="apex's TTFT bound (0: 2 s)")
    sim.add_argument(
        "--requests", type=int, default=200, help="per run (with an SLO: the floor per rate)"
    )
    sim.add_argument("--rate", type=float, default=8.0, help="Poisson arrivals per second")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--slo-ttft-s", type=float, help="with --slo-tpot-ms: each policy's capacity at this SLO"
    )
    sim.add_argument("--slo-tpot-ms", type=float, help="p99 TPOT bound of the SLO")
    sim.add_argument(
        "--target-rate", type=float, help="with an SLO: the cards (replicas) this rate needs"
    )
    sim.add_argument(
        "--minutes",
        type=float,
        default=30.0,
        help="with an SLO: simulated minutes of arrivals per rate (at least --requests "
        "requests, at most 1000; 0: exactly --requests)",
    )
    sim.add_argument("--out", type=Path, help="with an SLO: write the JSON here and a PNG beside")
    sim.add_argument("--json", action="store_true")
    mg = sub.add_parser("migrate", help="move a request's KV to the gpu or cpu tier")
    mg.add_argument("request_id")
    mg.add_argument("tier", choices=["gpu", "cpu"])
    apexctl_policy.add_parsers(sub)
    apexctl_profile.add_parser(sub)
    apexctl_bench.add_parser(sub)
    return ap


COMMANDS = {
    "generate": apexctl_generate.cmd_generate,
    "chat": apexctl_generate.cmd_chat,
    "status": cmd_status,
    "requests": cmd_requests,
    "abort": cmd_abort,
    "drain": cmd_drain,
    "health": cmd_health,
    "migrate": cmd_migrate,
    "policy": apexctl_policy.cmd_policy,
    "trace": apexctl_policy.cmd_trace,
    "profile": apexctl_profile.cmd_profile,
    "bench": apexctl_bench.cmd_bench,
}


def settings(args: argparse.Namespace) -> dict[str, str | None]:
    """Flags, then environment, then the [apexctl] section of the config file."""
    path = Path(args.config or os.environ.get("APEX_CONFIG") or CONFIG_PATH)
    file: dict[str, str] = {}
    if path.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as e:
            sys.exit(f"apexctl: cannot read {path}: {e}")
        file = dict(parser["apexctl"]) if parser.has_section("apexctl") else {}
    elif args.config:
        sys.exit(f"apexctl: config file {path} not found")

    def pick(flag: str | None, env: str, key: str, default: str | None = None) -> str | None:
        return flag or os.environ.get(env) or file.get(key) or default

    return {
        "address": pick(args.address, "APEX_ADDRESS", "address", DEFAULT_ADDRESS),
        "token": pick(args.token, "APEX_TOKEN", "token"),
        "tls_ca": pick(args.tls_ca, "APEX_TLS_CA", "tls_ca"),
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        sys.exit(cmd_simulate(args))
    conf = settings(args)
    address = conf["address"]
    try:
        with ApexClient(
            address, timeout=args.timeout, token=conf["token"], tls_ca=conf["tls_ca"]
        ) as client:
            code = COMMANDS[args.command](client, args)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            sys.exit(
                f"apexctl: cannot reach the APEX daemon at {address} "
                f"({e.details()}); is `apex serve` running?"
            )
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            sys.exit(
                f"apexctl: the daemon refused the call ({e.details()}); pass --token, "
                "set APEX_TOKEN, or put token = ... in the config file"
            )
        sys.exit(f"apexctl: {e.code().name}: {e.details()}")
    except OSError as e:
        sys.exit(f"apexctl: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
