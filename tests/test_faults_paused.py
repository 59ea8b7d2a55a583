"""Executors that stop answering without dying (SIGSTOP: a swapped-out, throttled or
debugged process) past the timeouts: every accepted request still ends, with its output
or a status, within a bound set by the operator's timeouts, and the stack serves again
once the executor runs. The timeouts are shrunk through the options an operator has."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from clients.apex_client import ApexClient
from launcher.stack import local_stack
from tests.factories import hf_greedy, idle, make_prompts, pause, wait_until

DATAPLANE_TIMEOUT_S = 1.0
STEP_TIMEOUT_S = 3.0
RECOVERY_TIMEOUT_S = 4.0
# What any request may take here at worst: three failed steps, each a step timeout and a
# recovery, plus its own decoding; far below the 120 s defaults.
BOUND_S = 3 * (STEP_TIMEOUT_S + RECOVERY_TIMEOUT_S) + 15


@pytest.fixture(scope="module")
def stack(models, tmp_path_factory):
    with local_stack(
        models["tiny"],
        executor_args=["--threads", "1", "--dataplane-timeout-s", str(DATAPLANE_TIMEOUT_S)],
        scheduler_args=[
            "--placement",
            "cpu",
            "--cpu-kv-gb",
            "0.05",
            "--step-timeout-s",
            str(STEP_TIMEOUT_S),
            "--recovery-timeout-s",
            str(RECOVERY_TIMEOUT_S),
        ],
        cpu_executor_args=["--threads", "1"],
        log_dir=tmp_path_factory.mktemp("logs-paused"),
        start_timeout_s=120,
    ) as s:
        yield s


def pid_of(stack, name: str) -> int:
    return next(c for c in stack.children if c.name == name).proc.pid


def generate_in_background(address: str, prompts: list[list[int]], n: int):
    """Each prompt in a thread; returns the threads and, per prompt, its result or the
    gRPC status it ended with, and when."""
    outcomes: list = [None] * len(prompts)

    def one(i: int) -> None:
        with ApexClient(address, timeout=BOUND_S + 30) as c:
            try:
                outcomes[i] = c.generate(prompts[i], max_tokens=n, temperature=0.0, ignore_eos=True)
            except grpc.RpcError as e:
                outcomes[i] = e.code()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    return threads, outcomes


def assert_serves_exactly(stack, model) -> None:
    prompt = [0, 45, 99, 301, 7, 250]
    with ApexClient(stack.address, timeout=60) as c:
        res = c.generate(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
        assert list(res.token_ids) == hf_greedy(model, prompt, 24)
        assert wait_until(lambda: idle(c), 10)


def test_cpu_executor_paused_past_the_dataplane_timeout(stack, models):
    with ApexClient(stack.address, timeout=30) as c:
        vocab = c.model_info().vocab_size
        prompts = make_prompts(vocab, seed=5, lengths=[6, 20, 41])
        threads, outcomes = generate_in_background(stack.address, prompts, 60)
        assert wait_until(lambda: c.status().generated_tokens >= 20, 30)
        pid = pid_of(stack, "cpu-executor")
        t0 = time.monotonic()
        pause(pid)
        time.sleep(DATAPLANE_TIMEOUT_S + 1.5)
        os.kill(pid, signal.SIGCONT)
        for t in threads:
            t.join(BOUND_S)
        assert not any(t.is_alive() for t in threads), "a request hangs"
        assert time.monotonic() - t0 < BOUND_S
        assert c.status().executor_recoveries >= 1
    for prompt, out in zip(prompts, outcomes, strict=True):
        # Recomputed after the resynchronised executor came back: the same output.
        assert not isinstance(out, grpc.StatusCode), out
        assert list(out.token_ids) == hf_greedy(models["tiny"], prompt, 60)
    assert_serves_exactly(stack, models["tiny"])


def test_gpu_executor_hung_past_the_step_timeout(stack, models):
    with ApexClient(stack.address, timeout=30) as c:
        prompts = make_prompts(c.model_info().vocab_size, seed=6, lengths=[9, 30])
        threads, outcomes = generate_in_background(stack.address, prompts, 200)
        assert wait_until(lambda: c.status().generated_tokens >= 10, 30)
        pid = pid_of(stack, "gpu-executor")
        t0 = time.monotonic()
        pause(pid)
        try:
            for t in threads:
                t.join(STEP_TIMEOUT_S + RECOVERY_TIMEOUT_S + 10)
            ended = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
    assert not any(t.is_alive() for t in threads), "a request hangs behind a hung executor"
    assert outcomes == [grpc.StatusCode.UNAVAILABLE] * len(prompts)
    assert ended < STEP_TIMEOUT_S + RECOVERY_TIMEOUT_S + 10
    with ApexClient(stack.address, timeout=30) as c:
        assert wait_until(lambda: idle(c), 30)
    assert_serves_exactly(stack, models["tiny"])
