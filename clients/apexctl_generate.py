"""`apexctl generate` and `apexctl chat`: stream the model's answer to the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from google.protobuf.json_format import MessageToDict

from clients.apex_client import FINISH_REASONS, ApexClient


def add_parsers(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="stream a generation to the terminal")
    gen.add_argument("prompt")
    gen.add_argument("--token-ids", action="store_true", help="the prompt is token ids")
    add_sampling_flags(gen)
    chat = sub.add_parser(
        "chat", help="chat with the model (its chat template); no MESSAGE: read turns from stdin"
    )
    chat.add_argument("message", nargs="?")
    chat.add_argument("--system", help="a system message first")
    add_sampling_flags(chat)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")


def sampling_of(args: argparse.Namespace) -> dict:
    return dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop or (),
        ignore_eos=args.ignore_eos,
    )


def stream_out(client: ApexClient, prompt, args: argparse.Namespace) -> str:
    """Stream one generation to the terminal (or one JSON object at the end); returns
    its text."""
    text: list[str] = []
    ids: list[int] = []
    last = None
    for msg in client.generate_stream(prompt, **sampling_of(args)):
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
    return "".join(text)


def cmd_generate(client: ApexClient, args: argparse.Namespace) -> int:
    prompt: str | list[int] = args.prompt
    if args.token_ids:
        prompt = [int(t) for t in args.prompt.replace(",", " ").split()]
    stream_out(client, prompt, args)
    return 0


def cmd_chat(client: ApexClient, args: argparse.Namespace) -> int:
    """One exchange with MESSAGE; without it, a conversation read from standard input,
    a line a turn, the history sent each time (the server applies the chat template)."""
    history = [{"role": "system", "content": args.system}] if args.system else []
    turns = [args.message] if args.message else None
    while True:
        if turns is not None:
            if not turns:
                return 0
            line = turns.pop(0)
        else:
            try:
                line = input("you> ")
            except EOFError:
                return 0
            if not line.strip():
                continue
        history.append({"role": "user", "content": line})
        reply = stream_out(client, history, args)
        history.append({"role": "assistant", "content": reply})
