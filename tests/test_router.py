"""Two replicas behind the real vllm-router, started by `apex serve --replicas 2` as
one process tree: the official openai SDK talks to the router; greedy output equals
transformers', requests spread over the replicas, and a replica whose daemon is
killed -9 costs only the requests it held, then comes back and gets traffic again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from common.grpc_server import port_taken
from launcher.stack import free_port
from tests.factories import chat_prompt_ids, hf_greedy, wait_until

MESSAGES = [
    [{"role": "user", "content": "Tell me about the robot."}],
    [{"role": "user", "content": "What is a queue?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
]


def free_run(n: int) -> int:
    """A port p with p .. p+n-1 all free."""
    while True:
        p = free_port()
        if p + n < 32768 and not any(port_taken("127.0.0.1", p + i) for i in range(1, n)):
            return p


class Cluster:
    def __init__(self, proc: subprocess.Popen, http: int, replicas: int) -> None:
        self.proc, self.http, self.replicas = proc, http, replicas

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def replica_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.http + 1 + i}"

    def client(self, **kw) -> openai.OpenAI:
        kw = {"api_key": "unused", "max_retries": 0, "timeout": 60, **kw}
        return openai.OpenAI(base_url=self.url + "/v1", **kw)

    def served(self, i: int) -> float:
        """Requests replica i finished (its own vllm: metrics)."""
        text = urllib.request.urlopen(self.replica_url(i) + "/metrics", timeout=5).read()
        name = "vllm:e2e_request_latency_seconds_count{"
        line = next(ln for ln in text.decode().splitlines() if ln.startswith(name))
        return float(line.rsplit(" ", 1)[1])

    def healthy(self, i: int) -> bool:
        return answers(self.replica_url(i) + "/health")

    def daemon_pid(self, i: int) -> int:
        """The pid of replica i's daemon, found by its HTTP port in /proc."""
        port = str(self.http + 1 + i)
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode() for a in argv]
            if "scheduler.api.daemon" in args and port in args:
                return int(proc.name)
        raise LookupError(f"no daemon on HTTP port {port}")


@pytest.fixture(scope="module")
def cluster(models, tmp_path_factory):
    http, grpc = free_run(3), free_run(2)
    log = open(tmp_path_factory.mktemp("router") / "apex-serve.log", "wb")  # noqa: SIM115
    argv = [sys.executable, "-m", "launcher.cli", "serve", "--model", str(models["tiny"])]
    argv += ["--replicas", "2", "--http-port", str(http), "--port", str(grpc)]
    argv += ["--cpu-kv-gb", "0", "--threads", "1", "--router-health-interval-s", "1"]
    argv += ["--drain-grace-s", "2"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    c = Cluster(proc, http, 2)
    try:
        ready = wait_until(
            lambda: proc.poll() is None and answers(c.url + "/health"), timeout_s=120
        )
        assert ready, Path(log.name).read_text()[-3000:]
        yield c
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    # one command stopped them all: no daemon of ours is left on the replicas' ports
    assert code == 0
    for i in range(2):
        with pytest.raises(LookupError):
            c.daemon_pid(i)
    assert not port_taken("127.0.0.1", http)


def answers(url: str) -> bool:
    """Whether GET url answers 200 (a refused or failed call: no)."""
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def chat(c: Cluster, messages, max_tokens: int = 8) -> list[int]:
    r = c.client().chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    return r.choices[0].model_extra["token_ids"]


def test_chat_through_the_router_equals_transformers_and_spreads(cluster, models):
    before = [cluster.served(i) for i in range(2)]
    jobs = [MESSAGES[i % 3] for i in range(12)]
    got: list = [None] * len(jobs)

    def one(i: int) -> None:
        got[i] = chat(cluster, jobs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expected = [hf_greedy(models["tiny"], chat_prompt_ids(models["tiny"], m), 8) for m in MESSAGES]
    assert got == [expected[i % 3] for i in range(len(jobs))]
    served = [cluster.served(i) - before[i] for i in range(2)]
    assert sum(served) == len(jobs) and min(served) > 0, served


def test_a_killed_replica_costs_only_its_requests_and_comes_back(cluster):
    c = cluster
    outcomes: list = []

    def long_stream() -> None:
        t0 = time.monotonic()
        try:
            stream = c.client().chat.completions.create(
                model="tiny",
                messages=MESSAGES[0],
                max_tokens=1500,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            last = None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    last = chunk.choices[0].finish_reason
            outcomes.append(("ended", last, time.monotonic() - t0))
        except openai.APIError as e:
            outcomes.append(("error", type(e).__name__, time.monotonic() - t0))

    def busy(i: int) -> bool:
        try:
            load = urllib.request.urlopen(c.replica_url(i) + "/get_load", timeout=5).read()
        except OSError:
            return False
        return b'"num_reqs":0' not in load

    # The router picks on loads it polls each second, so streams started together can
    # all land on one replica: start them one at a time until both replicas hold one.
    threads: list[threading.Thread] = []
    while len(threads) < 10 and not all(busy(i) for i in range(2)):
        threads.append(threading.Thread(target=long_stream))
        threads[-1].start()
        wait_until(lambda: all(busy(i) for i in range(2)), 2.5)
    assert all(busy(i) for i in range(2)), f"{len(threads)} streams did not reach both replicas"
    victim = c.daemon_pid(0)
    os.kill(victim, signal.SIGKILL)
    # Requests sent now go to the other replica (the router retries or skips it).
    for m in MESSAGES * 2:
        assert len(chat(c, m)) == 8
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a request hung"
    kinds = sorted(o[0] for o in outcomes)
    # The streams on the killed replica end with an error (the SDK's APIConnectionError:
    # the router cuts the stream it relayed), the others in full.
    assert "error" in kinds and ("ended", "length") in [(o[0], o[1]) for o in outcomes], outcomes
    # The launcher starts the replica again; the router takes it back.
    assert wait_until(lambda: c.healthy(0) and c.daemon_pid(0) != victim, 120)
    assert wait_until(lambda: chat(c, MESSAGES[1]) and c.served(0) > 0, 30)
