"""`apex-cpu-executor`: owns the CPU KV tier in shared memory, runs CPU decode attention.

Control (gRPC): GetInfo, and InitTier once at start, where the scheduler sizes the tier
and the executor creates the segments and answers with their names. Data (per layer):
the exchange segment, driven by the GPU executor; see worker.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from concurrent import futures

import grpc
from apex.v1 import executor_pb2, executor_pb2_grpc

from common.grpc_server import (
    SERVER_OPTIONS,
    exit_with_launcher,
    serve_until_signalled,
    setup_logging,
)
from cpu_executor.worker import AttentionWorker
from dataplane.exchange import Exchange
from dataplane.layout import layouts
from dataplane.shm import (
    SHM_DIR,
    Segment,
    SharedMemoryError,
    check_host_memory,
    remove_stale_segments,
    unique_name,
)

log = logging.getLogger(__name__)
SERVICE = executor_pb2.DESCRIPTOR.services_by_name["CpuExecutor"].full_name


class CpuExecutorServicer(executor_pb2_grpc.CpuExecutorServicer):
    def __init__(self, threads: int, paths: tuple[str, ...], host_reserve_bytes: int = 0) -> None:
        self.threads = threads
        self.host_reserve_bytes = host_reserve_bytes
        self.paths = paths
        self.lock = threading.Lock()
        self.segments: list[Segment] = []
        self.worker: AttentionWorker | None = None
        self.kv_dtype = ""

    def GetInfo(self, request, context) -> executor_pb2.CpuExecutorInfo:
        w = self.worker
        return executor_pb2.CpuExecutorInfo(
            threads=self.threads,
            paths=list(self.paths),
            tier_ready=w is not None and w.is_alive(),
            steps=w.steps if w else 0,
            path_calls=dict(w.chooser.chosen) if w else {},
            attention_s=w.attention_s if w else 0.0,
            kv_dtype=self.kv_dtype,
        )

    def InitTier(self, request, context) -> executor_pb2.CpuTierLayout:
        try:
            tier, exchange = layouts(request)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self.lock:
            self.release()
            try:
                check_host_memory(tier.nbytes + exchange.nbytes, self.host_reserve_bytes)
                kv_seg = Segment.create(unique_name("kv"), tier.nbytes)
                self.segments.append(kv_seg)
                ex_seg = Segment.create(unique_name("exchange"), exchange.nbytes)
                self.segments.append(ex_seg)
            except (SharedMemoryError, OSError) as e:
                self.release()
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            self.worker = AttentionWorker(
                tier,
                kv_seg,
                Exchange(exchange, ex_seg),
                request.num_heads,
                self.threads,
                self.paths,
            )
            self.worker.start()
            self.kv_dtype = tier.dtype
        log.info(
            "CPU tier: %d blocks x %d tokens, %s, %.1f MiB in /dev/shm/%s; exchange %.1f MiB",
            tier.num_blocks,
            tier.block_size,
            tier.dtype,
            tier.nbytes / 2**20,
            kv_seg.name,
            exchange.nbytes / 2**20,
        )
        return executor_pb2.CpuTierLayout(
            kv_segment=kv_seg.name,
            exchange_segment=ex_seg.name,
            kv_bytes=tier.nbytes,
            exchange_bytes=exchange.nbytes,
            dims=request,
        )

    def release(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout=5)
            self.worker = None
        for seg in self.segments:
            seg.close()
        self.segments = []


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="apex-cpu-executor", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50071)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="attention threads (0: every core this process may run on)",
    )
    ap.add_argument(
        "--cores", default="", help="pin to these cores, e.g. 0-7 or 0,2,4 (default: no pinning)"
    )
    ap.add_argument(
        "--paths", default="kernel,ort", help="attention paths to choose from: kernel, ort or both"
    )
    ap.add_argument(
        "--host-reserve-gb",
        type=float,
        default=2.0,
        help="memory the CPU tier must leave to the rest of the host (GB)",
    )
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    setup_logging("cpu-executor", args.log_level)
    if not args.host_reserve_gb >= 0:
        raise SystemExit("apex-cpu-executor: --host-reserve-gb must be >= 0")
    exit_with_launcher()
    if args.cores:
        os.sched_setaffinity(0, parse_cores(args.cores))
    threads = args.threads or default_threads()
    paths = tuple(p for p in args.paths.split(",") if p)
    if not paths or set(paths) - {"kernel", "ort"}:
        raise SystemExit(f"apex-cpu-executor: --paths takes kernel and/or ort, not {args.paths}")
    from dataplane import native

    native.lib()  # build or load the kernels now: a missing compiler fails here, clearly
    if SHM_DIR.is_dir():
        for name in remove_stale_segments():
            log.info("removed the stale segment /dev/shm/%s of a process that is gone", name)
    servicer = CpuExecutorServicer(threads, paths, int(args.host_reserve_gb * 1e9))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=SERVER_OPTIONS)
    executor_pb2_grpc.add_CpuExecutorServicer_to_server(servicer, server)
    serve_until_signalled(
        server,
        SERVICE,
        args.host,
        args.port,
        "apex-cpu-executor",
        f" with {threads} threads, paths {paths}",
    )
    servicer.release()
    log.info("stopped")


def parse_cores(spec: str) -> set[int]:
    cores: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


if __name__ == "__main__":
    main()
