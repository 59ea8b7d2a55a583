"""Surviving faults: overload, executors killed with -9, mass cancellation, SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from launcher.stack import local_stack
from tests.factories import hf_greedy, idle, make_prompts, wait_until

PROMPT = [0, 45, 99, 301, 7, 250]


def child(stack, name: str):
    return next(c for c in stack.children if c.name == name)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_overload_rejects_the_excess_and_finishes_the_rest(models, tmp_path):
    from tests.factories import running_stack

    bound = 4
    with running_stack(
        models["tiny"], tmp_path, scheduler_args=["--max-queue", str(bound), "--max-num-seqs", "2"]
    ) as s:
        start = threading.Barrier(10 * bound)

        def one(_):
            with s.client() as c:
                start.wait()
                try:
                    return len(
                        c.generate(
                            PROMPT, max_tokens=25, temperature=0.0, ignore_eos=True
                        ).token_ids
                    )
                except grpc.RpcError as e:
                    return e.code()

        with ThreadPoolExecutor(10 * bound) as pool:
            outcomes = list(pool.map(one, range(10 * bound)))
        rejected = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert outcomes.count(25) + rejected == 10 * bound, outcomes
        assert rejected >= 10 * bound - 2 * bound - 2  # at most queue + running got in
        with s.client() as c:
            assert idle(c)


@pytest.mark.parametrize("victim", ["gpu-executor", "cpu-executor"])
def test_kill_9_an_executor_mid_decode(victim, models, tmp_path):
    model = models["tiny-gqa"]
    cpu_args = ["--threads", "1"]
    sched = ["--placement", "cpu" if victim == "cpu-executor" else "auto", "--cpu-kv-gb", "0.05"]
    with local_stack(
        model,
        executor_args=["--threads", "1"],
        scheduler_args=sched,
        cpu_executor_args=cpu_args,
        log_dir=tmp_path,
        start_timeout_s=120,
        supervise=True,
    ) as stack:
        from clients.apex_client import ApexClient

        with ApexClient(stack.address, timeout=60) as c:
            vocab = c.model_info().vocab_size
        prompts = make_prompts(vocab, seed=21, lengths=[5, 30, 12, 60])
        n = 80
        results: list = [None] * len(prompts)

        def one(i: int) -> None:
            with ApexClient(stack.address, timeout=180) as c:
                results[i] = c.generate(prompts[i], max_tokens=n, temperature=0.0, ignore_eos=True)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        with ApexClient(stack.address, timeout=30) as c:
            assert wait_until(lambda: c.status().generated_tokens >= 40, 60)
            pid = child(stack, victim).proc.pid
            child(stack, victim).proc.send_signal(signal.SIGKILL)
            for t in threads:
                t.join(180)
            st = c.status()
            assert child(stack, victim).proc.pid != pid, "the launcher restarted it"
            assert st.executor_recoveries >= 1
            assert idle(c)
        for prompt, res in zip(prompts, results, strict=True):
            assert res is not None and list(res.token_ids) == hf_greedy(model, prompt, n)


def test_500_cancellations_leave_nothing_behind(tiny_stack):
    def cancel_some(k: int) -> None:
        with tiny_stack.client() as c:
            for _ in range(k):
                stream = c.generate_stream(
                    PROMPT, max_tokens=1500, temperature=0.0, ignore_eos=True
                )
                next(stream)
                stream.cancel()

    pid = child(tiny_stack.local, "scheduler").proc.pid
    cancel_some(50)  # warm-up: allocator arenas, gRPC buffers
    with tiny_stack.client() as c:
        assert wait_until(lambda: idle(c))
    before = rss_kib(pid)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(cancel_some, [50] * 10))
    with tiny_stack.client() as c:
        assert wait_until(lambda: idle(c), 30), c.status()
        assert not c.list_requests()
    grown = rss_kib(pid) - before
    assert grown < 30 * 1024, f"the daemon grew by {grown} KiB over 500 cancellations"


def test_sigterm_drains_in_flight_and_refuses_new(models, tmp_path):
    with local_stack(
        models["tiny"], executor_args=["--threads", "1"], log_dir=tmp_path, start_timeout_s=120
    ) as stack:
        from clients.apex_client import ApexClient

        results: list = []

        def one() -> None:
            with ApexClient(stack.address, timeout=120) as c:
                results.append(c.generate(PROMPT, max_tokens=150, temperature=0.0, ignore_eos=True))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        with ApexClient(stack.address, timeout=30) as c:
            assert wait_until(lambda: c.status().num_running == 4, 30)
            daemon = child(stack, "scheduler").proc
            daemon.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as err:
                c.generate(PROMPT, max_tokens=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in threads:
            t.join(120)
        assert [len(r.token_ids) for r in results] == [150] * 4
        assert daemon.wait(30) == 0
    assert all(c.proc.returncode == 0 for c in stack.children), [
        (c.name, c.proc.returncode) for c in stack.children
    ]
