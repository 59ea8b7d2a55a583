"""The HTTP door against the gRPC one: same stack, same streams, same run.

Greedy requests with EOS ignored go through gRPC (`ApexClient.generate_stream`) and the
OpenAI-compatible HTTP API (`/v1/completions`, `stream: true`, read as server-sent
events, one kept-alive HTTP/1.1 connection per client), alternating round by round so
that drift of the machine falls on both, under three loads: one client in sequence
(TTFT with nothing queued, and the daemon's CPU per request), N clients in a closed
loop with output lengths that differ (concurrent streams as a server sees them), and N
requests released at one instant. Clients and connections are made before the clock
starts, and the HTTP client only splits lines and parses each event's JSON (the openai
SDK builds a pydantic object per chunk, which on a 2-core host would measure the
client, not the server). Reports tokens/s and TTFT p50/p99 as the clients see them,
and the ratios. Writes JSON.

    python -m benchmarks.http_vs_grpc [--streams 64] [--tokens 64] [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
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


def run_round(streams: int, door, tokens: int) -> dict:
    """`streams` threads released together; each returns (ttft_s, tokens)."""
    start = threading.Barrier(streams + 1)
    results: list = [None] * streams

    def worker(i: int) -> None:
        one = door()  # the client and its connection, before the clock starts
        start.wait()
        results[i] = one(time.perf_counter(), tokens)

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


def run_closed(streams: int, door, seconds: float, tokens: int) -> dict:
    """`streams` clients, each sending its next request as soon as the last one ends,
    for `seconds`; requests that start in the first fifth are left out (the burst at
    the start). Output lengths are drawn from [tokens/2, 3 tokens/2], the same draws
    for both doors, so that the streams fall out of step as real ones do (equal lengths
    keep them in lockstep: a burst of 64 arrivals every round). TTFT is from each
    request's send; tokens/s over the measured span."""
    start = threading.Barrier(streams + 1)
    samples: list[list[tuple[float, float, int]]] = [[] for _ in range(streams)]

    def worker(i: int) -> None:
        one, lengths = door(), random.Random(i)
        start.wait()
        while (t0 := time.perf_counter()) < end:
            ttft, got = one(t0, lengths.randint(tokens // 2, tokens * 3 // 2))
            samples[i].append((t0, ttft, got))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    end = begin + seconds
    start.wait()
    for t in threads:
        t.join()
    wall_end = time.perf_counter()
    cut = begin + seconds / 5
    kept = [x for xs in samples for x in xs if x[0] >= cut]
    ttft = [x[1] for x in kept]
    return {
        "tokens_per_s": sum(x[2] for x in kept) / (wall_end - cut),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "requests": len(kept),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sequential(door, pid: int, requests: int, tokens: int) -> dict:
    """One client, one request at a time: TTFT with nothing queued, and the daemon's
    CPU time per request (parsing, tokenizing, streaming; the engine step included)."""
    one = door()
    cpu0, t_start = cpu_seconds(pid), time.perf_counter()
    results = [one(time.perf_counter(), tokens) for _ in range(requests)]
    wall = time.perf_counter() - t_start
    ttft = [r[0] for r in results]
    return {
        "tokens_per_s": sum(r[1] for r in results) / wall,
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "daemon_cpu_ms_per_request": 1e3 * (cpu_seconds(pid) - cpu0) / requests,
    }


def grpc_stream(address: str):
    def door():
        client = ApexClient(address, timeout=300)
        client.model_info()  # connected

        def one(t0: float, n: int) -> tuple[float, int]:
            ttft, tokens = None, 0
            for d in client.generate_stream(PROMPT, max_tokens=n, temperature=0.0, ignore_eos=True):
                tokens += len(d.token_ids)
                if ttft is None and d.token_ids:
                    ttft = time.perf_counter() - t0
            return ttft, tokens

        return one

    return door


def http_stream(base_url: str, model: str):
    url = urllib.parse.urlparse(base_url)
    fields = {
        "model": model,
        "prompt": PROMPT,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "return_token_ids": True,
    }

    def door():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        conn.connect()

        def one(t0: float, n: int) -> tuple[float, int]:
            ttft, tokens = None, 0
            body = json.dumps({**fields, "max_tokens": n})
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
            return ttft, tokens  # read to the end: the connection is kept for the next

        return one

    return door


def summarise(rounds: dict[str, list[dict]]) -> dict:
    summary = {}
    for name, rs in rounds.items():
        summary[name] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "ttft_p50_ms": 1e3 * statistics.median(r["ttft_p50_s"] for r in rs),
            "ttft_p99_ms": 1e3 * statistics.median(r["ttft_p99_s"] for r in rs),
        }
        if "daemon_cpu_ms_per_request" in rs[0]:
            summary[name]["daemon_cpu_ms_per_request"] = statistics.median(
                r["daemon_cpu_ms_per_request"] for r in rs
            )
    g, h = summary["grpc"], summary["http"]
    summary["http_over_grpc_tokens_per_s"] = h["tokens_per_s"] / g["tokens_per_s"]
    summary["http_added_ttft_p50_ms"] = h["ttft_p50_ms"] - g["ttft_p50_ms"]
    return summary


def report(mode: str, summary: dict) -> None:
    for name in ("grpc", "http"):
        s = summary[name]
        print(
            f"{mode:6} {name:5} {s['tokens_per_s']:8.1f} tok/s  TTFT p50 {s['ttft_p50_ms']:7.1f} ms"
            f"  p99 {s['ttft_p99_ms']:7.1f} ms"
        )
    if "daemon_cpu_ms_per_request" in summary["http"]:
        print(
            f"{mode:6} daemon CPU per request: grpc "
            f"{summary['grpc']['daemon_cpu_ms_per_request']:.2f} ms, http "
            f"{summary['http']['daemon_cpu_ms_per_request']:.2f} ms"
        )
    print(
        f"{mode:6} http / grpc tokens/s: {summary['http_over_grpc_tokens_per_s']:.3f}; "
        f"TTFT p50 added by HTTP: {summary['http_added_ttft_p50_ms']:+.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="per closed-loop round")
    ap.add_argument("--out", type=Path, default=RESULTS / "http_vs_grpc.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model(Path(tmp) / "tiny", "tiny")
        sched = ["--max-num-seqs", str(args.streams)]
        with local_stack(model, executor_args=["--threads", "1"], scheduler_args=sched) as stack:
            doors = {
                "grpc": grpc_stream(stack.address),
                "http": http_stream(stack.http_url, "tiny"),
            }
            for door in doors.values():  # warm-up: allocator, first prefill
                run_round(4, door, args.tokens)
            pid = stack.children[-1].proc.pid
            modes = {
                "single": lambda door: run_sequential(door, pid, 100, args.tokens),
                "closed": lambda door: run_closed(args.streams, door, args.seconds, args.tokens),
                "burst": lambda door: run_round(args.streams, door, args.tokens),
            }
            rounds = {m: {k: [] for k in doors} for m in modes}
            for _ in range(args.rounds):
                for mode, run in modes.items():
                    for name, door in doors.items():
                        rounds[mode][name].append(run(door))
    summaries = {mode: summarise(rs) for mode, rs in rounds.items()}
    for mode, summary in summaries.items():
        report(mode, summary)
    save(
        {
            "machine": cpu_name(),
            "device": "cpu (no GPU)",
            "streams": args.streams,
            "tokens_per_stream": args.tokens,
            "closed_loop_seconds": args.seconds,
            "rounds": rounds,
            "summary": summaries,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
