"""What the router costs: the same replicas addressed through vllm-router and directly,
in one run.

Two replicas of the tiny model (`launcher.replicas.replicated`, as `apex serve
--replicas 2` starts them) behind vllm-router. Each round runs the same load twice,
alternating which goes first: through the router, and with each client pinned to one
replica (client i to replica i mod 2, the even split a perfect balancer would make).
Loads are those of `http_vs_grpc.py`: one client in sequence (TTFT with nothing queued)
and N clients in a closed loop with output lengths that differ. Reports tokens/s and
TTFT p50/p99 as the clients see them, and the TTFT the router adds. Everything shares
this host's cores, so throughput scaling across replicas is not measured here (it needs
a machine per replica); this measures the hop. Writes JSON.

    python -m benchmarks.router_overhead [--streams 16] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, cpu_name, save
from benchmarks.http_vs_grpc import http_stream, run_closed, run_round, run_sequential
from gpu_executor.model_init import init_model
from launcher.replicas import RouterOptions, replicated
from launcher.stack import free_port


def pinned(doors: list):
    """A door that hands each new client the next replica's door in turn."""
    turn = itertools.count()
    return lambda: doors[next(turn) % len(doors)]()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="per closed-loop round")
    ap.add_argument("--out", type=Path, default=RESULTS / "router_overhead.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = init_model(Path(tmp) / "tiny", "tiny")
        router = RouterOptions(port=free_port(), health_interval_s=5)
        with replicated(
            model,
            2,
            router,
            executor_args=["--threads", "1"],
            scheduler_args=["--max-num-seqs", str(args.streams)],
            log_dir=Path(tmp) / "logs",
        ) as cluster:
            doors = {
                "router": http_stream(cluster.url, "tiny"),
                "direct": pinned([http_stream(r.plan.http_url, "tiny") for r in cluster.replicas]),
            }
            for door in doors.values():  # warm-up
                run_round(4, door, args.tokens)
            pid = cluster.replicas[0].daemon.proc.pid
            modes = {
                "single": lambda door: run_sequential(door, pid, 50, args.tokens),
                "closed": lambda door: run_closed(args.streams, door, args.seconds, args.tokens),
            }
            rounds = {m: {k: [] for k in doors} for m in modes}
            for i in range(args.rounds):
                order = list(doors.items())[:: 1 if i % 2 == 0 else -1]
                for mode, run in modes.items():
                    for name, door in order:
                        rounds[mode][name].append(run(door))
    summary: dict = {}
    for mode, by_door in rounds.items():
        summary[mode] = {
            name: {
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                "ttft_p50_ms": 1e3 * statistics.median(r["ttft_p50_s"] for r in rs),
                "ttft_p99_ms": 1e3 * statistics.median(r["ttft_p99_s"] for r in rs),
            }
            for name, rs in by_door.items()
        }
        r, d = summary[mode]["router"], summary[mode]["direct"]
        summary[mode]["router_added_ttft_p50_ms"] = r["ttft_p50_ms"] - d["ttft_p50_ms"]
        summary[mode]["router_over_direct_tokens_per_s"] = r["tokens_per_s"] / d["tokens_per_s"]
        for name in ("direct", "router"):
            s = summary[mode][name]
            print(
                f"{mode:6} {name:6} {s['tokens_per_s']:8.1f} tok/s  TTFT p50 "
                f"{s['ttft_p50_ms']:7.1f} ms  p99 {s['ttft_p99_ms']:7.1f} ms"
            )
        print(
            f"{mode:6} router / direct tokens/s: "
            f"{summary[mode]['router_over_direct_tokens_per_s']:.3f}; TTFT p50 added by "
            f"the router: {summary[mode]['router_added_ttft_p50_ms']:+.2f} ms"
        )
    save(
        {
            "machine": cpu_name(),
            "device": "cpu (no GPU)",
            "replicas": 2,
            "router": "vllm-router 0.1.17, power_of_two",
            "streams": args.streams,
            "tokens_per_stream": args.tokens,
            "rounds": rounds,
            "summary": summary,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
