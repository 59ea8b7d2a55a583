"""The commands a user types: apex init-model, apex serve, apexctl."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc

from clients.apex_client import ApexClient
from common.grpc_server import port_taken
from launcher.stack import LaunchError, free_port
from tests.factories import BIN, hf_greedy, run, wait_until


def start_serve(model: Path, port: int, *extra: str) -> subprocess.Popen:
    """`apex serve` as a user runs it; returns once it says it is serving."""
    serve = subprocess.Popen(
        [
            str(BIN / "apex"),
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--threads",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = serve.stdout.readline()
        if line.startswith("apex: serving"):
            return serve
        if not line and serve.poll() is not None:
            break
    serve.kill()
    raise AssertionError("apex serve never said it was serving")


def test_init_model_can_train_the_model_to_write_words(tmp_path):
    """The demo's model learns the shipped text (the exactness tests keep random ones)."""
    r = run(
        str(BIN / "apex"), "init-model", str(tmp_path / "m"), "--train-steps", "40", timeout=300
    )
    assert r.returncode == 0, r.stderr
    first, last = (float(x) for x in re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout).groups())
    assert last < first / 2, r.stdout


def test_init_model_rejects_unknown_preset(tmp_path):
    r = run(str(BIN / "apex"), "init-model", str(tmp_path / "m"), "--preset", "nope")
    assert r.returncode != 0
    assert "unknown preset 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_serve_generate_status_and_clean_stop(tmp_path):
    model = tmp_path / "model"
    r = run(str(BIN / "apex"), "init-model", str(model), "--preset", "tiny-gqa")
    assert r.returncode == 0, r.stderr
    port = free_port()
    env = dict(os.environ, APEX_ADDRESS=f"127.0.0.1:{port}")
    serve = start_serve(model, port)
    try:
        gen = subprocess.run(
            [
                str(BIN / "apexctl"),
                "generate",
                "The robot",
                "--max-tokens",
                "12",
                "--temperature",
                "0",
                "--ignore-eos",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert gen.returncode == 0, gen.stderr
        out = json.loads(gen.stdout)
        from transformers import AutoTokenizer

        prompt = AutoTokenizer.from_pretrained(str(model))("The robot").input_ids
        assert out["token_ids"] == hf_greedy(model, prompt, 12)
        assert out["finish_reason"] == "length" and isinstance(out["text"], str)

        st = subprocess.run(
            [str(BIN / "apexctl"), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["finished_requests"] == "1" and status["tiers"][0]["tier"] == "gpu"
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
    assert code == 0
    # Both children are gone with it.
    left = run("pgrep", "-f", f"--model {model}")
    assert left.stdout.strip() == "", left.stdout


def test_apexctl_says_when_the_daemon_is_down():
    r = run(str(BIN / "apexctl"), "--address", f"127.0.0.1:{free_port()}", "status")
    assert r.returncode != 0
    assert "cannot reach the APEX daemon" in r.stderr and "Traceback" not in r.stderr


def test_serve_fails_clearly_without_shared_memory(models, tmp_path):
    env = dict(os.environ, APEX_SHM_DIR=str(tmp_path / "no-shm-here"))
    r = subprocess.run(
        [
            str(BIN / "apex"),
            "serve",
            "--model",
            str(models["tiny"]),
            "--port",
            str(free_port()),
            "--placement",
            "cpu",
            "--threads",
            "1",
            "--cpu-threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "no-shm-here does not exist" in out and "shared memory" in out, out
    assert "shm_size" in out  # says how to fix it
    assert "Traceback" not in out


def test_apexctl_drain_stops_apex_serve_cleanly(models, tmp_path):
    port = free_port()
    serve = start_serve(models["tiny"], port, "--cpu-kv-gb", "0")
    try:
        env = dict(os.environ, APEX_ADDRESS=f"127.0.0.1:{port}")
        r = subprocess.run(
            [str(BIN / "apexctl"), "drain"], capture_output=True, text=True, timeout=30, env=env
        )
        assert r.returncode == 0 and "draining" in r.stdout, r.stderr
        assert serve.wait(60) == 0
        rest = serve.stdout.read()
        assert "drained and stopped" in rest and "unexpectedly" not in rest, rest
    finally:
        if serve.poll() is None:
            serve.kill()


def children_of(pid: int) -> list[int]:
    r = run("pgrep", "-P", str(pid))
    return [int(p) for p in r.stdout.split()]


def test_a_taken_port_is_refused_and_a_killed_launcher_takes_its_processes(models, tmp_path):
    port = free_port()
    serve = start_serve(models["tiny"], port, "--cpu-kv-gb", "0.05", "--cpu-threads", "1")
    try:
        pids = children_of(serve.pid)
        assert len(pids) == 3, pids  # CPU executor, GPU executor, daemon
        # A second stack on the same port refuses at once, and says why.
        model = str(models["tiny"])
        second = run(str(BIN / "apex"), "serve", "--model", model, "--port", str(port))
        assert second.returncode == 1 and "port is in use" in second.stderr, second.stderr
        daemon = run(str(BIN / "apex-scheduler"), "--model", model, "--port", str(port))
        assert daemon.returncode != 0 and "the port is in use" in daemon.stderr, daemon.stderr
        assert "Traceback" not in second.stderr + daemon.stderr
        # The launcher dies without a word: its processes must not live on serving.
        serve.kill()
        serve.wait(10)
        assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 30)
        assert not port_taken("127.0.0.1", port)
        assert not [s for s in Path("/dev/shm").glob("apex-*") if int(s.name.split("-")[1]) in pids]
    finally:
        if serve.poll() is None:
            serve.kill()


def test_sigterm_gives_in_flight_requests_the_whole_drain_grace(models, tmp_path):
    """The launcher used to kill the daemon 10 s into its drain: the requests here need
    longer than that, and all of them must finish."""
    port = free_port()
    args = ("--cpu-kv-gb", "0", "--max-num-seqs", "1", "--drain-grace-s", "60")
    serve = start_serve(models["tiny"], port, *args)
    address = f"127.0.0.1:{port}"
    try:
        with ApexClient(address, timeout=60) as c:
            t = time.monotonic()
            c.generate([0, 45, 99], max_tokens=150, temperature=0.0, ignore_eos=True)
            rate = 150 / (time.monotonic() - t)
        work = 12.5 * rate  # tokens: 12.5 s of decoding, one request at a time
        n = max(3, math.ceil(work / 2000))  # each within the 2048-token context
        per_request = math.ceil(work / n)
        outcomes: list = [None] * n

        def one(i: int) -> None:
            with ApexClient(address, timeout=300) as c:
                try:
                    res = c.generate([0, 45, 99 + i], max_tokens=per_request, ignore_eos=True)
                    outcomes[i] = len(res.token_ids)
                except grpc.RpcError as e:
                    outcomes[i] = e.code()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(120)
        drained_s = time.monotonic() - t0
        for th in threads:
            th.join(30)
        assert outcomes == [per_request] * n, outcomes
        assert code == 0 and drained_s > 10.5, drained_s
    finally:
        if serve.poll() is None:
            serve.kill()


def test_apex_port_range_narrows_the_server_ports_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("APEX_PORT_RANGE", "23000-23009")
    assert all(23000 <= free_port() <= 23009 for _ in range(5))
    for bad in ("23000", "2300-x", "500-600", "24000-23000"):
        monkeypatch.setenv("APEX_PORT_RANGE", bad)
        try:
            free_port()
        except LaunchError as e:
            assert "APEX_PORT_RANGE" in str(e) and repr(bad) in str(e)
        else:
            raise AssertionError(f"APEX_PORT_RANGE={bad!r} was taken")
