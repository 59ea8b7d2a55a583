"""The HTTP door against the gRPC one: same stack, same 64 concurrent streams, same run.

Each round sends 64 streams at once, all with the same prompt and output length
(greedy, EOS ignored), through gRPC (`ApexClient.generate_stream`) and through the
OpenAI-compatible HTTP API (`/v1/completions`, `stream: true`, read as server-sent
events over one HTTP/1.1 connection per stream); the two alternate round by round so
that drift of the machine falls on both. Clients and connections are made before the
clock starts, and the HTTP client only splits lines and parses each event's JSON (the
openai SDK builds a pydantic object per chunk, which on a 2-core host would measure the
client, not the server). Reports tokens/s over each round and TTFT p50/p99 as the
clients see them, and the ratios. Writes JSON.

    python -m benchmarks.http_vs_grpc [--streams 64] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from benchmarks.common import RESULTS, cpu_name, save
from clients.apex_client import ApexClient
from gpu_executor.model_init import init_model
from launcher.stack import local_stack
from scheduler.sim.simulator import pct

PROMPT = "Once upon a time there was a robot that"


def run_round(streams: int, door) -> dict:
    """`streams` threads released together; each returns (ttft_s, tokens)."""
    start = threading.Barrier(streams + 1)
    results: list = [None] * streams

    def worker(i: int) -> None:
        one = door()  # the client and its connection, before the clock starts
        start.wait()
        results[i] = one(time.perf_counter())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"tokens_per_s": tokens / wall, "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99)}


def grpc_stream(address: str, n: int):
    def door():
        client = ApexClient(address, timeout=300)
        client.model_info()  # connected

        def one(t0: float) -> tuple[float, int]:
            ttft, tokens = None, 0
            with client as c:
                for d in c.generate_stream(PROMPT, max_tokens=n, temperature=0.0, ignore_eos=True):
                    tokens += len(d.token_ids)
                    if ttft is None and d.token_ids:
                        ttft = time.perf_counter() - t0
            return ttft, tokens

        return one

    return door


def http_stream(base_url: str, model: str, n: int):
    url = urllib.parse.urlparse(base_url)
    body = json.dumps(
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": n,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "return_token_ids": True,
        }
    )

    def door():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        conn.connect()

        def one(t0: float) -> tuple[float, int]:
            ttft, tokens = None, 0
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            for line in r:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                ids = event["choices"][0].get("token_ids", []) if event["choices"] else []
                tokens += len(ids)
                if ttft is None and ids:
                    ttft = time.perf_counter() - t0
            conn.close()
            return ttft, tokens

        return one

    return door


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "http_vs_grpc.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model(Path(tmp) / "tiny", "tiny")
        sched = ["--max-num-seqs", str(args.streams)]
        with local_stack(model, executor_args=["--threads", "1"], scheduler_args=sched) as stack:
            doors = {
                "grpc": grpc_stream(stack.address, args.tokens),
                "http": http_stream(stack.http_url, "tiny", args.tokens),
            }
            for door in doors.values():  # warm-up: allocator, first prefill
                run_round(4, door)
            rounds: dict[str, list[dict]] = {k: [] for k in doors}
            for _ in range(args.rounds):
                for name, door in doors.items():
                    rounds[name].append(run_round(args.streams, door))
    summary = {}
    for name, rs in rounds.items():
        summary[name] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "ttft_p50_ms": 1e3 * statistics.median(r["ttft_p50_s"] for r in rs),
            "ttft_p99_ms": 1e3 * statistics.median(r["ttft_p99_s"] for r in rs),
        }
        s = summary[name]
        print(
            f"{name:5} {s['tokens_per_s']:8.1f} tok/s  TTFT p50 {s['ttft_p50_ms']:7.1f} ms"
            f"  p99 {s['ttft_p99_ms']:7.1f} ms"
        )
    g, h = summary["grpc"], summary["http"]
    ratio = h["tokens_per_s"] / g["tokens_per_s"]
    added = h["ttft_p50_ms"] - g["ttft_p50_ms"]
    print(f"http / grpc tokens/s: {ratio:.3f}; TTFT p50 added by HTTP: {added:+.1f} ms")
    save(
        {
            "machine": cpu_name(),
            "device": "cpu (no GPU)",
            "streams": args.streams,
            "tokens_per_stream": args.tokens,
            "rounds": rounds,
            "summary": summary,
            "http_over_grpc_tokens_per_s": ratio,
            "http_added_ttft_p50_ms": added,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
