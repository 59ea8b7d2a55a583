"""Engine vs transformers `generate` on the CPU: same model, prompts and output lengths.

Offline throughput: all 64 requests are handed over at once. transformers runs them
(a) one at a time, its plain use, and (b) in static batches of 8 with left padding,
each batch generating to its longest request (only the requested tokens count). The
engine gets them all through gRPC and batches continuously. Every greedy output is also
checked against transformers' token for token. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from benchmarks.common import RESULTS, cpu_name, save
from clients.apex_client import ApexClient
from gpu_executor.model_init import init_model
from launcher.stack import local_stack
from scheduler.sim.simulator import pct


def workload(n: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    prompts = [
        [0] + [rng.randrange(2, vocab) for _ in range(rng.randrange(8, 128))] for _ in range(n)
    ]
    outputs = [rng.randrange(16, 257) for _ in range(n)]
    return prompts, outputs


def hf_sequential(model, prompts, outputs) -> dict:
    tokens, lat, results = 0, [], []
    t0 = time.perf_counter()
    for p, n in zip(prompts, outputs, strict=True):
        s = time.perf_counter()
        ids = torch.tensor([p])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        lat.append(time.perf_counter() - s)
        results.append(out[0, len(p) :].tolist())
        tokens += n
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": pct(lat, 50),
        "latency_p99_s": pct(lat, 99),
        "outputs": results,
    }


def hf_batched(model, prompts, outputs, batch: int) -> dict:
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        ps, ns = prompts[i : i + batch], outputs[i : i + batch]
        width = max(len(p) for p in ps)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max(ns),
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        tokens += sum(ns)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "batch": batch}


def engine(model_dir: Path, prompts, outputs, threads: int) -> dict:
    with (
        local_stack(
            model_dir,
            executor_args=["--threads", str(threads)],
            log_dir=Path(tempfile.mkdtemp()) / "logs",
        ) as stack,
        ApexClient(stack.address, timeout=600) as c,
    ):
        c.generate(prompts[0], max_tokens=4, temperature=0.0)  # warm-up

        def one(i: int):
            return c.generate(prompts[i], max_tokens=outputs[i], temperature=0.0, ignore_eos=True)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            res = list(pool.map(one, range(len(prompts))))
        wall = time.perf_counter() - t0
        status = c.status()
    lat = [r.usage.total_time_s for r in res]
    ttft = [r.usage.time_to_first_token_s for r in res]
    tokens = sum(len(r.token_ids) for r in res)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": pct(lat, 50),
        "latency_p99_s": pct(lat, 99),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "iterations": status.iterations - 1,
        "predictor_mape": status.predictor_mape,
        "predictor_samples": status.predictor_samples,
        "outputs": [list(r.token_ids) for r in res],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, help="checkpoint (default: a fresh tiny model)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "engine_vs_hf_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model or init_model(Path(tempfile.mkdtemp()) / "tiny", "tiny")
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompts, outputs = workload(args.requests, hf.config.vocab_size, args.seed)

    with torch.inference_mode():
        hf_seq = hf_sequential(hf, prompts, outputs)
        hf_b8 = hf_batched(hf, prompts, outputs, 8)
    eng = engine(model_dir, prompts, outputs, args.threads)
    exact = sum(a == b for a, b in zip(eng.pop("outputs"), hf_seq.pop("outputs"), strict=True))

    report = {
        "what": "engine vs transformers generate, greedy fp32, offline (all requests at once)",
        "machine": {
            "cpu": cpu_name(),
            "cores": torch.get_num_threads(),
            "device": "cpu (no GPU)",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": {"dir": model_dir.name, "params": sum(p.numel() for p in hf.parameters())},
        "workload": {
            "requests": args.requests,
            "prompt_tokens": [8, 128],
            "output_tokens": [16, 256],
            "total_output_tokens": sum(outputs),
            "seed": args.seed,
        },
        "transformers_sequential": hf_seq,
        "transformers_batch8": hf_b8,
        "engine": eng,
        "ratio_engine_vs_transformers_sequential": eng["tokens_per_s"] / hf_seq["tokens_per_s"],
        "ratio_engine_vs_transformers_batch8": eng["tokens_per_s"] / hf_b8["tokens_per_s"],
        "greedy_outputs_equal": f"{exact}/{args.requests}",
    }
    save(report, args.out)
    print(f"{'system':28} {'tokens/s':>10} {'wall s':>8} {'lat p50':>8} {'lat p99':>8}")
    for name, r in (
        ("transformers, one at a time", hf_seq),
        ("transformers, batches of 8", hf_b8),
        ("apex engine (gRPC)", eng),
    ):
        print(
            f"{name:28} {r['tokens_per_s']:10.1f} {r['wall_s']:8.2f} "
            f"{r.get('latency_p50_s', float('nan')):8.3f} "
            f"{r.get('latency_p99_s', float('nan')):8.3f}"
        )
    seq_ratio = report["ratio_engine_vs_transformers_sequential"]
    b8_ratio = report["ratio_engine_vs_transformers_batch8"]
    print(
        f"engine / transformers sequential: {seq_ratio:.2f}x; / batches of 8: {b8_ratio:.2f}x;"
        f" greedy outputs equal: {report['greedy_outputs_equal']}"
    )


if __name__ == "__main__":
    main()
