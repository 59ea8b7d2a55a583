"""Decode latency while long prompts arrive: chunked prefill against unchunked, one run.

Two stacks of the tiny model on this machine, the same but for `--no-chunked-prefill`
(chunked: `--max-num-batched-tokens` tokens an iteration). In each round, on one stack
and then the other (alternating which first), `--decoders` greedy streams decode while
a prompt of `--prompt-tokens` tokens arrives every `--gap-s` seconds. The decoding
streams' gaps between tokens as their gRPC client sees them (inter-token latency: the
stall a reader of the stream feels) and each decoding request's TPOT (its mean gap) are
reported as p50, p99 (and the gaps' max), with the ratio of the p99s. The
long prompts' TTFT is reported too: chunking is paid for there. Writes JSON.

    python -m benchmarks.chunked_prefill [--rounds 3] [--prompt-tokens 1800]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import RESULTS, cpu_name, save
from clients.apex_client import ApexClient
from gpu_executor.model_init import init_model
from launcher.stack import local_stack
from scheduler.sim.simulator import pct


def run_round(address: str, args: argparse.Namespace) -> dict:
    gaps: list[float] = []
    tpots: list[float] = []  # per decoding request: (last token - first) / (tokens - 1)
    ttfts: list[float] = []
    stop = threading.Event()
    measuring = threading.Event()

    def decoder(i: int) -> None:
        with ApexClient(address, timeout=300) as c:
            while not stop.is_set():
                last = first = None
                n = 0
                stream = c.generate_stream(
                    [0, 45, 99 + i], max_tokens=200, temperature=0.0, ignore_eos=True
                )
                for d in stream:
                    now = time.perf_counter()
                    if last is not None and d.token_ids:
                        gaps.append((now - last) / len(d.token_ids))
                    if d.token_ids:
                        first = now if first is None else first
                        last, n = now, n + len(d.token_ids)
                    if stop.is_set():
                        stream.cancel()
                        break
                else:
                    if measuring.is_set() and n > 1:
                        tpots.append((last - first) / (n - 1))

    def long_prompts() -> None:
        with ApexClient(address, timeout=300) as c:
            for k in range(args.prompts):
                time.sleep(args.gap_s)
                prompt = [(7 * k + j) % 600 + 3 for j in range(args.prompt_tokens)]
                t0 = time.perf_counter()
                c.generate(prompt, max_tokens=1, temperature=0.0)
                ttfts.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=decoder, args=(i,)) for i in range(args.decoders)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the decoders are in
    gaps.clear()
    measuring.set()
    arrivals = threading.Thread(target=long_prompts)
    arrivals.start()
    arrivals.join()
    stop.set()
    for t in threads:
        t.join()
    return {
        "itl_p50_ms": 1e3 * pct(gaps, 50),
        "itl_p99_ms": 1e3 * pct(gaps, 99),
        "itl_max_ms": 1e3 * max(gaps),
        "tpot_p50_ms": 1e3 * pct(tpots, 50),
        "tpot_p99_ms": 1e3 * pct(tpots, 99),
        "long_prompt_ttft_p50_ms": 1e3 * pct(ttfts, 50),
        "tokens": len(gaps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decoders", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=1800)
    ap.add_argument("--prompts", type=int, default=12, help="long prompts per round")
    ap.add_argument("--gap-s", type=float, default=0.25)
    ap.add_argument("--budget", type=int, default=128, help="chunked: tokens per iteration")
    ap.add_argument("--out", type=Path, default=RESULTS / "chunked_prefill.json")
    args = ap.parse_args()
    variants = {
        "chunked": ["--max-num-batched-tokens", str(args.budget)],
        "unchunked": ["--no-chunked-prefill"],
    }
    rounds: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model(Path(tmp) / "tiny", "tiny")
        ex = ["--threads", "1"]
        with (
            local_stack(model, executor_args=ex, scheduler_args=variants["chunked"]) as a,
            local_stack(model, executor_args=ex, scheduler_args=variants["unchunked"]) as b,
        ):
            stacks = {"chunked": a.address, "unchunked": b.address}
            for i in range(args.rounds):
                order = list(stacks.items())[:: 1 if i % 2 == 0 else -1]
                for name, address in order:
                    rounds[name].append(run_round(address, args))
    summary = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()
    }
    ratio = summary["unchunked"]["itl_p99_ms"] / summary["chunked"]["itl_p99_ms"]
    tpot_ratio = summary["unchunked"]["tpot_p99_ms"] / summary["chunked"]["tpot_p99_ms"]
    for name, s in summary.items():
        print(
            f"{name:9} between tokens p50 {s['itl_p50_ms']:6.1f} ms  p99 {s['itl_p99_ms']:6.1f} ms"
            f"  max {s['itl_max_ms']:6.1f} ms; per-request TPOT p50 {s['tpot_p50_ms']:5.1f} "
            f"p99 {s['tpot_p99_ms']:5.1f} ms; long prompt TTFT p50 "
            f"{s['long_prompt_ttft_p50_ms']:5.0f} ms"
        )
    print(
        f"unchunked / chunked: p99 between tokens {ratio:.2f}x, p99 per-request TPOT "
        f"{tpot_ratio:.2f}x"
    )
    save(
        {
            "machine": cpu_name(),
            "device": "cpu (no GPU)",
            "model": "tiny",
            "decoders": args.decoders,
            "prompt_tokens": args.prompt_tokens,
            "chunk_budget": args.budget,
            "rounds": rounds,
            "summary": summary,
            "p99_itl_unchunked_over_chunked": ratio,
            "p99_tpot_unchunked_over_chunked": tpot_ratio,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
