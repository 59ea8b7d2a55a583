"""What the tests share: the real stack as processes, transformers' reference output,
prompt and workload factories, polling helpers, and the in-process engine with a fake
executor. One module, so that no test file imports another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clients.apex_client import ApexClient
from launcher.stack import LocalStack, local_stack
from scheduler.core.config import SchedulerConfig
from scheduler.core.scheduler import Scheduler
from scheduler.engine.detokenizer import TextTokenizer
from scheduler.engine.engine import Engine
from scheduler.engine.outputs import EngineError, OutputDelta, RequestStream
from scheduler.policies import make_policy
from scheduler.types import (
    ExecutorError,
    Request,
    SamplingConfig,
    StepPlan,
    StepResult,
    TokenLogprob,
)


@functools.cache
def hf_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m.eval()
    return m


def hf_logprobs(path: Path, prompt_ids: list[int], out_ids: list[int], top: int):
    """transformers' log_softmax (fp32) at each generated token: (chosen, top values,
    top ids), one row per token."""
    import torch

    with torch.inference_mode():
        logits = hf_model(path)(torch.tensor([prompt_ids + out_ids])).logits[0].float()
    rows = torch.log_softmax(logits, -1)[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(out_ids)]
    chosen = rows.gather(1, torch.tensor(out_ids)[:, None])[:, 0]
    values, ids = rows.topk(top, dim=-1)
    return chosen.tolist(), values.tolist(), ids.tolist()


def hf_processed_greedy(
    path: Path,
    prompt: list[int],
    n: int,
    *,
    frequency: float = 0.0,
    presence: float = 0.0,
    repetition: float = 1.0,
    bias: dict[int, float] | None = None,
    min_tokens: int = 0,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy decoding on transformers' fp32 logits with the documented formulas written
    out here on their own (a reference for the engine's, not a copy of it): tokens that
    would end the output banned before min_tokens, logit_bias added, HF's repetition
    penalty over prompt and output, OpenAI's frequency and presence penalties over the
    output; it ends at a stop id once min_tokens are out."""
    import torch

    model, out = hf_model(path), []
    with torch.inference_mode():
        for _ in range(n):
            x = model(torch.tensor([prompt + out])).logits[0, -1].float().clone()
            if len(out) < min_tokens:
                for t in stop_ids:
                    x[t] = float("-inf")
            for t, v in (bias or {}).items():
                x[t] += v
            if repetition != 1.0:
                for t in set(prompt + out):
                    x[t] = x[t] / repetition if x[t] > 0 else x[t] * repetition
            for t in set(out):
                x[t] -= frequency * out.count(t) + presence
            out.append(int(x.argmax()))
            if len(out) >= max(min_tokens, 1) and out[-1] in stop_ids:
                break
    return out


def chat_prompt_ids(model: Path, messages) -> list[int]:
    """The prompt transformers' apply_chat_template makes, as token ids."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model)).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def hf_greedy(path: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generate, fp32, never stopping at EOS."""
    import torch

    model = hf_model(path)
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        out = model.generate(
            ids,
            # Explicit mask: with pad_token_id set, generate would infer one from the ids
            # and mask out every token equal to it (the BOS here).
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


PROMPT_LENGTHS = [1, 3, 8, 17, 40, 64, 129, 250]


OUTPUT_LENGTHS = [40, 12, 33, 24, 48, 7, 30, 20]


# Preemption case: all six fit at admission (18 of 24 blocks of 16 tokens), then each
# grows to 8-10 blocks, so the scheduler must preempt whatever the arrival timing.
PREEMPT_PROMPT_LENGTHS = [40, 33, 50, 20, 45, 38]


PREEMPT_OUTPUT_LENGTHS = [100, 110, 90, 120, 95, 105]


def make_prompts(vocab: int, seed: int, lengths: list[int] = PROMPT_LENGTHS) -> list[list[int]]:
    rng = random.Random(seed)
    # Id 0 is BOS; ids from 2 up are ordinary tokens of the trained vocabulary.
    return [[0] + [rng.randrange(2, vocab) for _ in range(n - 1)] for n in lengths]


def run_concurrently(
    stack: Stack,
    prompts: list[list[int]],
    stagger_s: float = 0.03,
    output_lengths: list[int] = OUTPUT_LENGTHS,
):
    def one(i: int):
        time.sleep(i * stagger_s)
        with stack.client() as c:
            return c.generate(
                prompts[i], max_tokens=output_lengths[i], temperature=0.0, ignore_eos=True
            )

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, range(len(prompts))))


def run_under_pressure(stack: Stack, seed: int) -> tuple[list[list[int]], list]:
    """The six staggered requests that outgrow a 24-block GPU tier (the preemption,
    swap and policy tests all use them): their prompts and results."""
    with stack.client() as c:
        vocab = c.model_info().vocab_size
    prompts = make_prompts(vocab, seed=seed, lengths=PREEMPT_PROMPT_LENGTHS)
    results = run_concurrently(
        stack, prompts, stagger_s=0.005, output_lengths=PREEMPT_OUTPUT_LENGTHS
    )
    return prompts, results


def assert_matches_hf(
    model: Path, prompts: list[list[int]], results, output_lengths: list[int] = OUTPUT_LENGTHS
) -> None:
    for i, (prompt, res) in enumerate(zip(prompts, results, strict=True)):
        expected = hf_greedy(model, prompt, output_lengths[i])
        assert list(res.token_ids) == expected, f"prompt {i} ({len(prompt)} tokens) diverged"
        assert res.usage.completion_tokens == output_lengths[i]


BIN = Path(sys.executable).parent


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def pause(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP a process and return once every one of its threads has stopped (kill
    returns before a running thread is actually off its core)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] in "tT" for t in tasks)

    if not wait_until(stopped, timeout_s):
        raise RuntimeError(f"process {pid} did not stop")


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def idle(client) -> bool:
    st = client.status()
    return st.num_running == 0 and st.num_waiting == 0 and st.tiers[0].blocks_used == 0


@dataclass
class Stack:
    local: LocalStack
    log_dir: Path

    @property
    def address(self) -> str:
        return self.local.address

    def client(self, timeout: float | None = 120.0) -> ApexClient:
        return ApexClient(self.address, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@contextlib.contextmanager
def running_stack(
    model: Path,
    log_dir: Path,
    scheduler_args: Sequence[str] = (),
    executor_args: Sequence[str] = (),
    cpu_executor_args: Sequence[str] | None = None,
) -> Iterator[Stack]:
    """cpu_executor_args None: GPU tier only; a list (maybe empty): with a CPU tier."""
    # One thread each: tests run beside each other on a 2-core CI machine.
    cpu_args = None if cpu_executor_args is None else ["--threads", "1", *cpu_executor_args]
    with local_stack(
        model,
        executor_args=["--threads", "1", *executor_args],
        scheduler_args=scheduler_args,
        log_dir=log_dir,
        start_timeout_s=120.0,
        cpu_executor_args=cpu_args,
    ) as local:
        yield Stack(local, log_dir)


# -- the engine in-process, with a fake executor ------------------------------------------
EOS = 1


def byte_tokenizer(folder: Path) -> TextTokenizer:
    """A byte-level tokenizer with no merges (0 BOS, 1 EOS, then the 256 bytes): made in
    milliseconds, and every text round-trips through it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "</s>": EOS} | {ch: b + 2 for b, ch in enumerate(byte_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": EOS}))
    return TextTokenizer(folder)


def byte_fallback_tokenizer(folder: Path, words: Sequence[str] = ()) -> TextTokenizer:
    """A Llama-2-style SentencePiece tokenizer (what `tokenizer.json` of Llama-2 holds):
    "▁" for spaces, a few words, and every other character as its UTF-8 bytes through
    byte-fallback tokens <0x00>..<0xFF>."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["▁", *(f"▁{w}" for w in words), *"abcdefghijklmnopqrstuvwxyz"]:
        vocab.setdefault(piece, len(vocab))
    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    return TextTokenizer(folder)


def byte_chars() -> list[str]:
    """The character byte-level BPE writes for each byte value (printable bytes as
    themselves, the others shifted past U+00FF), so that id = byte + 2 above."""
    direct = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in direct else chr(next(shifted)) for b in range(256)]


class FakeExecutors:
    """Stands in for both executors (an `ExecutorPort`): each request emits the tokens of
    its scripted reply, then EOS, wherever and however the plan says it runs. Faults and
    slowness are dialled in: `fail_next` steps (and those `fail_if` picks) raise
    ExecutorError, `recovers` says
    whether recovery succeeds, `step_s` makes each step take that long."""

    def __init__(self, replies: dict[str, list[int]] | None = None, step_s: float = 0.0):
        self.replies = replies or {}
        self.step_s = step_s
        self.fail_next = 0
        self.fail_if: Callable[[StepPlan], bool] = lambda plan: False
        self.recovers = True
        self.plans: list[StepPlan] = []
        self.recoveries = 0

    def reply(self, request_id: str) -> list[int]:
        return self.replies.get(request_id, [ord(c) + 2 for c in "fake reply "] * 8)

    async def step(self, plan: StepPlan, timeout: float) -> StepResult:
        self.plans.append(plan)
        if self.step_s:
            await asyncio.sleep(self.step_s)
        if self.fail_next or self.fail_if(plan):
            self.fail_next = max(0, self.fail_next - 1)
            raise ExecutorError("UNAVAILABLE", "the fake executor failed this step")
        tokens = []
        for seq in plan.seqs:
            script = self.reply(seq.request.request_id)
            n = len(seq.request.output_ids)
            tokens.append(script[n] if n < len(script) else EOS)
        logprobs = [
            TokenLogprob(-0.5, ((t, -0.5),)) if s.request.sampling.logprobs is not None else None
            for s, t in zip(plan.seqs, tokens, strict=True)
        ]
        return StepResult(tokens, logprobs)

    async def recover(self, timeout_s: float) -> bool:
        self.recoveries += 1
        return self.recovers

    def describe(self) -> str:
        return "fake executors"


def make_engine(
    tokenizer: TextTokenizer,
    executors: FakeExecutors,
    policy: str = "gpu-only",
    **config,
) -> Engine:
    """An engine over a small GPU tier (and a CPU tier if num_cpu_blocks is given)."""
    cfg = SchedulerConfig(
        **{"max_model_len": 256, "block_size": 16, "num_gpu_blocks": 64, **config}
    )
    scheduler = Scheduler(cfg, tokenizer.eos_token_ids, make_policy(policy, None))
    return Engine(scheduler, executors, tokenizer, recovery_timeout_s=1.0)


def request(request_id: str, prompt: Sequence[int] = (0, 70, 71), **sampling) -> Request:
    return Request(request_id, list(prompt), SamplingConfig(**{"max_tokens": 16, **sampling}))


async def collect(stream: RequestStream) -> list[OutputDelta | EngineError]:
    """Every item of a stream, up to its final delta or error."""
    items: list[OutputDelta | EngineError] = []
    while True:
        item = await asyncio.wait_for(stream.queue.get(), 10)
        items.append(item)
        if isinstance(item, EngineError) or item.finish_reason is not None:
            return items
