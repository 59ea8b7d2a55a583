"""apexctl policy and apexctl trace: the scheduling policy, and what it decided."""

from __future__ import annotations

import argparse
import json

from clients.apex_client import ApexClient
from clients.cli_output import as_dict


def add_parsers(sub: argparse._SubParsersAction) -> None:
    po = sub.add_parser("policy", help="show the scheduling policy, or switch it live")
    po.add_argument("name", nargs="?", choices=["gpu-only", "neo", "apex"])
    po.add_argument("--tpot-slo-ms", type=float, default=0.0, help="apex's TPOT bound")
    po.add_argument("--ttft-slo-s", type=float, default=0.0, help="apex's TTFT bound")
    po.add_argument("--json", action="store_true")
    tr = sub.add_parser("trace", help="the last iteration plans: strategy, rows, times")
    tr.add_argument("-n", "--limit", type=int, default=20, help="iterations (0: all kept)")
    tr.add_argument("--json", action="store_true")


def cmd_policy(client: ApexClient, args: argparse.Namespace) -> int:
    if (args.tpot_slo_ms or args.ttft_slo_s) and not args.name:
        raise SystemExit("apexctl policy: a bound needs a policy name (e.g. apex)")
    info = client.policy(args.name or "", args.tpot_slo_ms, args.ttft_slo_s)
    if args.json:
        print(json.dumps(as_dict(info)))
        return 0
    verb = "switched to" if args.name else "policy"
    print(f"{verb} {info.description}")
    print(f"profile  {info.profile or '(none loaded)'}")
    return 0


def cmd_trace(client: ApexClient, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise SystemExit("apexctl trace: --limit must be >= 0")
    its = client.trace(args.limit)
    if args.json:
        print(json.dumps([as_dict(t) for t in its]))
        return 0
    print(
        f"{'step':>7} {'policy':8} {'strategy':9} {'gpu':>4} {'cpu':>4} {'B1':>3} "
        f"{'prefill':>7} {'swap o/i':>9} {'profile ms':>10} {'online ms':>9} {'measured':>9}"
    )
    for t in its:
        print(
            f"{t.step_id:7} {t.policy:8} {t.strategy:9} {t.gpu_rows:4} {t.cpu_rows:4} "
            f"{t.pipeline_rows:3} {t.prefill_tokens:7} "
            f"{t.swap_out_blocks:4}/{t.swap_in_blocks:<4} {t.profile_predicted_ms:10.2f} "
            f"{t.predicted_ms:9.2f} {t.measured_ms:9.2f}"
        )
    return 0
