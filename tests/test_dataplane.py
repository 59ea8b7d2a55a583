"""The shared-memory data plane against the real CPU executor process.

The test plays the GPU executor: it attaches through CpuLink and drives many steps of
six layers with random row subsets, growing contexts and fresh random q/k/v. Every
output is checked against attention over the K/V history the test itself sent, so a
torn read (a row half from the previous step) or a stale one (the previous layer's
output) shows up as a mismatch.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from apex.v1 import executor_pb2, executor_pb2_grpc

from dataplane.shm import Segment, SharedMemoryError
from gpu_executor.cpu_link import CpuExecutorLost, CpuLink, CpuRows
from gpu_executor.server import attachment
from launcher.stack import Child, free_port, start, stop, wait_healthy
from tests.factories import pause

LAYERS, H, KVH, D, BS, BLOCKS, MAX_ROWS, MAX_BLOCKS = 6, 4, 2, 16, 8, 512, 16, 24


@contextlib.contextmanager
def cpu_executor_process(folder, *args: str):
    port = free_port()
    with open(folder / "cpu-executor.log", "wb") as log:
        child: Child = start(
            "cpu-executor",
            ["cpu_executor.server", "--port", str(port), "--threads", "2", *args],
            f"127.0.0.1:{port}",
            log,
        )
        try:
            wait_healthy(child, 60)
            yield child
        finally:
            stop([child])


@pytest.fixture
def cpu_executor(tmp_path):
    with cpu_executor_process(tmp_path) as child:
        yield child


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q [H, d]; k, v [n, KVH, d] -> [H, d] in float64."""
    g = H // KVH
    out = np.empty((H, D))
    for h in range(H):
        s = k[:, h // g].astype(np.float64) @ q[h].astype(np.float64) / np.sqrt(D)
        p = np.exp(s - s.max())
        out[h] = (p / p.sum()) @ v[:, h // g]
    return out


def init_tier(address: str) -> executor_pb2.CpuTierLayout:
    """Set up the tier as the daemon would."""
    with grpc.insecure_channel(address) as ch:
        return executor_pb2_grpc.CpuExecutorStub(ch).InitTier(
            executor_pb2.InitTierRequest(
                num_layers=LAYERS,
                num_blocks=BLOCKS,
                block_size=BS,
                num_heads=H,
                num_kv_heads=KVH,
                head_dim=D,
                kv_dtype="float32",
                io_dtype="float32",
                max_rows=MAX_ROWS,
                max_blocks_per_seq=MAX_BLOCKS,
            )
        )


def attach(cpu_executor: Child, timeout_s: float) -> CpuLink:
    """Set up the tier, and attach to it as the GPU executor does."""
    layout = init_tier(cpu_executor.address)
    return CpuLink(attachment(layout), torch.device("cpu"), timeout_s=timeout_s)


def test_a_tier_that_would_leave_the_host_short_is_refused(tmp_path):
    """/dev/shm is often half the RAM or more: a tier that fills it would starve the
    host, so the CPU executor keeps an operator-set reserve free."""
    with cpu_executor_process(tmp_path, "--host-reserve-gb", "1000000") as child:
        with pytest.raises(grpc.RpcError) as err:
            init_tier(child.address)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "keeps 1000000.00 GB in reserve (--host-reserve-gb)" in err.value.details()
        assert "lower --cpu-kv-gb" in err.value.details()
        assert not list(Path("/dev/shm").glob(f"apex-{child.proc.pid}-*")), "nothing allocated"


def test_many_steps_random_rows_no_torn_or_stale_reads(cpu_executor):
    link = attach(cpu_executor, timeout_s=20)
    rng = random.Random(1)
    nrng = np.random.default_rng(1)
    free = list(range(BLOCKS))
    rng.shuffle(free)
    seqs = [
        {"table": [], "k": [[] for _ in range(LAYERS)], "v": [[] for _ in range(LAYERS)]}
        for _ in range(40)
    ]
    checked = 0
    for _step in range(80):
        rows = rng.sample(range(len(seqs)), rng.randint(1, MAX_ROWS))
        rows = [r for r in rows if len(seqs[r]["k"][0]) < MAX_BLOCKS * BS - 1] or rows[:0]
        if not rows:
            continue
        lens, slots, tables = [], [], []
        for r in rows:
            s = seqs[r]
            pos = len(s["k"][0])
            if pos % BS == 0:
                s["table"].append(free.pop())
            lens.append(pos + 1)
            slots.append(s["table"][pos // BS] * BS + pos % BS)
            tables.append(list(s["table"]))
        link.begin(CpuRows(torch.arange(len(rows)), tables, lens, slots))
        for layer in range(LAYERS):
            q = nrng.standard_normal((len(rows), H, D), np.float32)
            k = nrng.standard_normal((len(rows), KVH, D), np.float32)
            v = nrng.standard_normal((len(rows), KVH, D), np.float32)
            link.send(layer, torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
            link.publish(layer)
            out = link.receive(layer, torch.float32).numpy()
            for i, r in enumerate(rows):
                seqs[r]["k"][layer].append(k[i])
                seqs[r]["v"][layer].append(v[i])
                ref = attention_ref(
                    q[i], np.stack(seqs[r]["k"][layer]), np.stack(seqs[r]["v"][layer])
                )
                err = np.abs(out[i] - ref).max()
                assert err < 1e-4, f"step {_step} layer {layer} row {r}: off by {err}"
                checked += 1
        link.finish()  # raises CpuExecutorLost if the CPU side never ends the step
    assert checked > 2000


def one_layer(link: CpuLink, layer: int, rows: int, seed: int):
    """Send random q/k/v for `rows` rows of one layer; returns them."""
    g = np.random.default_rng(seed)
    q = g.standard_normal((rows, H, D), np.float32)
    k = g.standard_normal((rows, KVH, D), np.float32)
    v = g.standard_normal((rows, KVH, D), np.float32)
    link.send(layer, torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v))
    link.publish(layer)
    return q, k, v


@pytest.mark.parametrize("paused_at", [0, LAYERS // 2, LAYERS - 1])
def test_a_cpu_executor_paused_past_the_timeout_resynchronises(cpu_executor, paused_at):
    """The GPU side gives up on a step at layer `paused_at` while the CPU executor is
    stopped; once it runs again, it must follow the next step, not wait for the rest of
    the abandoned one (which would wedge every later step)."""
    link = attach(cpu_executor, timeout_s=1.0)
    pid = cpu_executor.proc.pid
    # The abandoned step: rows 0-1, one block each.
    link.begin(CpuRows(torch.arange(2), [[0], [1]], [1, 1], [0, BS]))
    for layer in range(paused_at):
        one_layer(link, layer, 2, layer)
        link.receive(layer, torch.float32)
    pause(pid)
    try:
        one_layer(link, paused_at, 2, 99)
        t = time.monotonic()
        with pytest.raises(CpuExecutorLost, match="did not answer"):
            link.receive(paused_at, torch.float32)
        assert time.monotonic() - t < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    # The next steps use fresh blocks (the engine recomputes the abandoned rows elsewhere)
    # and must come out exact, every layer, at the first try.
    for step in range(3):
        blocks = [[10 + 2 * step], [11 + 2 * step], [40 + step]]
        link.begin(CpuRows(torch.arange(3), blocks, [1, 1, 1], [b[0] * BS for b in blocks]))
        for layer in range(LAYERS):
            q, k, v = one_layer(link, layer, 3, 1000 * step + layer)
            out = link.receive(layer, torch.float32).numpy()
            for i in range(3):
                ref = attention_ref(q[i], k[i : i + 1], v[i : i + 1])
                assert np.abs(out[i] - ref).max() < 1e-4, f"step {step} layer {layer} row {i}"
        link.finish()


def test_attach_checks_the_agreed_size(tmp_path, monkeypatch):
    monkeypatch.setattr("dataplane.shm.SHM_DIR", tmp_path)
    seg = Segment.create("apex-test-size", 8192)
    try:
        with pytest.raises(
            SharedMemoryError, match="is 8192 bytes but the agreed layout says 4096"
        ):
            Segment.attach("apex-test-size", 4096)
        with pytest.raises(SharedMemoryError, match="not found"):
            Segment.attach("apex-test-missing", 4096)
    finally:
        seg.close()
    assert not (tmp_path / "apex-test-size").exists()


def test_create_explains_missing_or_small_shared_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("dataplane.shm.SHM_DIR", tmp_path / "nope")
    with pytest.raises(SharedMemoryError, match="does not exist"):
        Segment.create("apex-test-x", 4096)
    monkeypatch.setattr("dataplane.shm.SHM_DIR", tmp_path)
    with pytest.raises(SharedMemoryError, match="lower --cpu-kv-gb"):
        Segment.create("apex-test-y", 1 << 60)
