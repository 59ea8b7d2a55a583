"""`apexctl`: talk to a running APEX daemon from the terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from clients.apex_client import DEFAULT_ADDRESS, FINISH_REASONS, ApexClient


def cmd_generate(client: ApexClient, args: argparse.Namespace) -> int:
    prompt: str | list[int] = args.prompt
    if args.token_ids:
        prompt = [int(t) for t in args.prompt.replace(",", " ").split()]
    sampling = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop or (),
        ignore_eos=args.ignore_eos,
    )
    text: list[str] = []
    ids: list[int] = []
    last = None
    for msg in client.generate_stream(prompt, **sampling):
        text.append(msg.text)
        ids.extend(msg.token_ids)
        last = msg
        if not args.json:
            sys.stdout.write(msg.text)
            sys.stdout.flush()
    usage = MessageToDict(last.usage, preserving_proto_field_name=True) if last else {}
    reason = FINISH_REASONS.get(last.finish_reason) if last else None
    if args.json:
        print(
            json.dumps(
                {
                    "request_id": last.request_id if last else "",
                    "text": "".join(text),
                    "token_ids": ids,
                    "finish_reason": reason,
                    "matched_stop": last.matched_stop if last else "",
                    "usage": usage,
                }
            )
        )
    else:
        print(f"\n[{reason}; {len(ids)} tokens]", file=sys.stderr)
    return 0


def cmd_status(client: ApexClient, args: argparse.Namespace) -> int:
    st = client.status()
    if args.json:
        print(
            json.dumps(
                MessageToDict(
                    st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
            )
        )
        return 0
    print(f"model        {st.model}")
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
    print(f"strategy     {st.strategy}")
    print(
        f"throughput   {st.tokens_per_s:.1f} tokens/s over the last 10 s; "
        f"{st.generated_tokens} tokens in {st.iterations} iterations"
    )
    print(f"preemptions  {st.preemptions}")
    print(f"uptime       {st.uptime_s:.0f} s")
    return 0


def cmd_requests(client: ApexClient, args: argparse.Namespace) -> int:
    reqs = client.list_requests()
    if args.json:
        print(json.dumps([MessageToDict(r, preserving_proto_field_name=True) for r in reqs]))
        return 0
    print(f"{'request_id':34} {'state':8} {'prompt':>6} {'output':>6} {'max':>6} {'blocks':>6}")
    for r in reqs:
        state = "running" if r.state == 2 else "waiting"
        print(
            f"{r.request_id:34} {state:8} {r.prompt_tokens:6} {r.output_tokens:6} "
            f"{r.max_tokens:6} {r.gpu_blocks:6}"
        )
    return 0


def cmd_abort(client: ApexClient, args: argparse.Namespace) -> int:
    found = client.admin_abort(args.request_id)
    print("aborted" if found else f"no live request {args.request_id!r}")
    return 0 if found else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apexctl", description=__doc__)
    ap.add_argument(
        "--address",
        default=os.environ.get("APEX_ADDRESS", DEFAULT_ADDRESS),
        help="daemon host:port (env APEX_ADDRESS)",
    )
    ap.add_argument("--timeout", type=float, default=None, help="seconds per call")
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="stream a generation to the terminal")
    gen.add_argument("prompt")
    gen.add_argument("--token-ids", action="store_true", help="the prompt is token ids")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end")
    st = sub.add_parser("status", help="what the daemon is doing")
    st.add_argument("--json", action="store_true")
    rq = sub.add_parser("requests", help="list live requests")
    rq.add_argument("--json", action="store_true")
    ab = sub.add_parser("abort", help="abort a request by id")
    ab.add_argument("request_id")
    return ap


COMMANDS = {
    "generate": cmd_generate,
    "status": cmd_status,
    "requests": cmd_requests,
    "abort": cmd_abort,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        with ApexClient(args.address, timeout=args.timeout) as client:
            code = COMMANDS[args.command](client, args)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            sys.exit(
                f"apexctl: cannot reach the APEX daemon at {args.address} "
                f"({e.details()}); is `apex serve` running?"
            )
        sys.exit(f"apexctl: {e.code().name}: {e.details()}")
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
