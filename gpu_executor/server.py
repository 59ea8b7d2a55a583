"""`apex-gpu-executor`: the process that holds the weights and the GPU KV tier.

It decides nothing: the scheduler sends one plan per iteration (which sequences, which
tokens, which cache blocks) and the executor runs it and samples a token per sequence.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from concurrent import futures

import grpc
import torch
from apex.v1 import executor_pb2, executor_pb2_grpc

from common.grpc_server import (
    SERVER_OPTIONS,
    exit_with_launcher,
    serve_until_signalled,
    setup_logging,
)
from dataplane.layout import TierAttachment, layouts
from dataplane.shm import SharedMemoryError
from gpu_executor.batch import SeqInput, pack
from gpu_executor.cpu_link import CpuExecutorLost, CpuLink
from gpu_executor.decode_graphs import DecodeGraphs
from gpu_executor.llama import LlamaModel, sync
from gpu_executor.probes import ProbeError, probe
from gpu_executor.row_memory import Row, RowMemory, RowMemoryLost
from gpu_executor.sampler import RowSampling, logprobs, sample
from gpu_executor.strategies import forward

log = logging.getLogger(__name__)
SERVICE = executor_pb2.DESCRIPTOR.services_by_name["GpuExecutor"].full_name


class GpuExecutorServicer(executor_pb2_grpc.GpuExecutorServicer):
    def __init__(
        self, model: LlamaModel, dataplane_timeout_s: float = 30.0, cuda_graphs: bool = False
    ) -> None:
        self.model = model
        self.dataplane_timeout_s = dataplane_timeout_s
        self.cuda_graphs = cuda_graphs
        self.graphs: DecodeGraphs | None = None  # made with the cache, when asked for
        self.link: CpuLink | None = None  # the CPU tier, once attached
        self.lock = threading.Lock()  # one step at a time: the cache is shared state
        self.memory = RowMemory()  # the rows of the last step, which deltas build on

    def forward(self, seqs: list[SeqInput], request, context) -> torch.Tensor:
        """The step's logits through the strategy the plan names."""
        model, link = self.model, self.link
        try:
            batch = pack(seqs, model.kv.block_size, model.device)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        pipelined = request.strategy == executor_pb2.STRATEGY_PIPELINE and batch.cpu is not None
        if pipelined and request.pipeline_rows < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PIPELINE needs pipeline_rows >= 1")
        logits = forward(model, batch, link, request.pipeline_rows if pipelined else 0)
        sync(model.device)
        if batch.cpu is not None and link is not None:
            link.finish()
        return logits

    def GetInfo(self, request, context) -> executor_pb2.ExecutorInfo:
        r, s = self.model, self.model.shape
        free = 0
        if r.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(r.device)
        return executor_pb2.ExecutorInfo(
            model=r.model_dir.name,
            device=str(r.device),
            dtype=str(r.dtype).removeprefix("torch."),
            num_layers=s.num_layers,
            hidden_size=s.hidden_size,
            num_attention_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads,
            head_dim=s.head_dim,
            vocab_size=s.vocab_size,
            max_position_embeddings=s.max_position_embeddings,
            free_device_memory_bytes=free,
            weight_bytes=r.weight_bytes,
            cache_ready=r.cache is not None,
            device_name=device_name(r.device),
        )

    def Profile(self, request, context) -> executor_pb2.ProfileProbeResult:
        p = request.probe
        with self.lock:
            try:
                seconds, spread = probe(
                    self.model, self.link, p.kind, p.tokens, p.rows, p.context, p.bytes, p.repeats
                )
            except ProbeError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except CpuExecutorLost as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return executor_pb2.ProfileProbeResult(seconds=seconds, spread=spread)

    def InitCache(self, request, context) -> executor_pb2.InitCacheResponse:
        if request.num_blocks < 1 or request.block_size < 1:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "num_blocks and block_size must be >= 1"
            )
        graphed = self.cuda_graphs and request.max_blocks_per_seq > 0
        if self.cuda_graphs and not graphed:
            log.warning("--cuda-graphs: InitCache gave no max_blocks_per_seq; no graphs")
        with self.lock:
            self.graphs = None
            try:
                # graphed: one more block, the scratch block the padding rows write to
                blocks = request.num_blocks + (1 if graphed else 0)
                nbytes = self.model.init_cache(blocks, request.block_size)
                if graphed:
                    self.graphs = DecodeGraphs(self.model, request.max_blocks_per_seq)
                self.memory.clear()
            except torch.OutOfMemoryError as e:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"KV cache does not fit: {e}")
        log.info(
            "KV cache: %d blocks x %d tokens, %.1f MiB",
            request.num_blocks,
            request.block_size,
            nbytes / 2**20,
        )
        return executor_pb2.InitCacheResponse(cache_bytes=nbytes)

    def AttachCpuTier(self, request, context) -> executor_pb2.AttachCpuTierResponse:
        with self.lock:
            try:
                self.link = CpuLink(
                    attachment(request), self.model.device, self.dataplane_timeout_s
                )
            except (SharedMemoryError, ValueError) as e:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        log.info(
            "attached the CPU tier %s (%d blocks, %s)",
            request.kv_segment,
            request.dims.num_blocks,
            request.dims.kv_dtype,
        )
        return executor_pb2.AttachCpuTierResponse()

    def Step(self, request, context) -> executor_pb2.StepResponse:
        with self.lock:
            try:
                return self.step(request, context)
            except CpuExecutorLost as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    def step(self, request, context) -> executor_pb2.StepResponse:
        model, cache, link = self.model, self.model.cache, self.link
        if cache is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "InitCache has not been called")
        if (request.swap_out or request.swap_in) and link is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no CPU tier is attached")
        if link is not None:
            link.swap_out(cache.k, cache.v, [(c.src, c.dst) for c in request.swap_out])
            link.swap_in(cache.k, cache.v, [(c.src, c.dst) for c in request.swap_in])
        try:
            rows = self.memory.resolve(request)
        except RowMemoryLost as e:
            context.abort(grpc.StatusCode.ABORTED, str(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        seqs = [SeqInput(row.token_ids, row.start_pos, row.table, row.tier) for row in rows]
        if self.graphs is not None and self.graphs.serves(seqs):
            logits = self.graphs.run(seqs)
            sync(model.device)
        else:
            logits = self.forward(seqs, request, context)
        self.memory.keep(rows)
        draws = [row_sampling(row) for row in rows]
        tokens = sample(logits, draws)
        reply = executor_pb2.StepResponse(step_id=request.step_id, next_tokens=tokens)
        if any(r.logprobs >= 0 for r in draws):
            reply.logprobs.extend(
                executor_pb2.StepLogprobs(
                    logprob=lp.logprob, top_ids=lp.top_ids, top_logprobs=lp.top_logprobs
                )
                if lp is not None
                else executor_pb2.StepLogprobs()
                for lp in logprobs(logits, draws, tokens)
            )
        return reply


def row_sampling(row: Row) -> RowSampling:
    sp = row.sampling
    return RowSampling(
        temperature=sp.temperature,
        top_p=sp.top_p or 1.0,
        top_k=sp.top_k,
        seed=sp.seed,
        position=row.end_pos,
        logprobs=sp.top_logprobs if sp.logprobs else -1,
        banned=tuple(sp.banned_token_ids),
        logit_bias=tuple(sp.logit_bias.items()),
        repetition_penalty=sp.repetition_penalty,
        frequency_penalty=sp.frequency_penalty,
        presence_penalty=sp.presence_penalty,
        prompt_ids=row.prompt_token_ids,
        output_ids=row.output_token_ids,
    )


def attachment(layout: executor_pb2.CpuTierLayout) -> TierAttachment:
    """The CPU executor's answer to InitTier, as the data plane takes it. Raises
    ValueError when the dimensions make no valid layout."""
    tier, exchange = layouts(layout.dims)
    return TierAttachment(
        tier=tier,
        exchange=exchange,
        kv_segment=layout.kv_segment,
        kv_bytes=layout.kv_bytes,
        exchange_segment=layout.exchange_segment,
        exchange_bytes=layout.exchange_bytes,
    )


def device_name(device: torch.device) -> str:
    """What a profile is keyed by: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="apex-gpu-executor", description=__doc__)
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50061)
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if any)")
    ap.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument(
        "--dataplane-timeout-s",
        type=float,
        default=30.0,
        help="how long a step waits for the CPU executor's output of one layer before it "
        "fails (the scheduler then recomputes and the CPU executor resynchronises)",
    )
    ap.add_argument(
        "--decode-kernel",
        default="auto",
        choices=["auto", "triton", "gather"],
        help="GPU-tier decode attention: the Triton paged kernel (auto: on CUDA when "
        "triton imports) or the gathered SDPA path",
    )
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay GPU-only decode steps as CUDA graphs, batch sizes bucketed (off until "
        "a GPU run shows them exact and faster; on the CPU the same static step runs eagerly)",
    )
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    if not args.dataplane_timeout_s > 0:
        raise SystemExit("apex-gpu-executor: --dataplane-timeout-s must be > 0")
    setup_logging("gpu-executor", args.log_level)
    exit_with_launcher()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    t = time.perf_counter()
    try:
        model = LlamaModel(
            args.model, device=device, dtype=args.dtype, decode_kernel=args.decode_kernel
        )
    except ValueError as e:
        raise SystemExit(f"apex-gpu-executor: {e}") from e
    log.info(
        "decode attention: %s", "Triton paged kernel" if model.triton_decode else "gathered SDPA"
    )
    log.info(
        "loaded %s (%s) on %s as %s in %.1f s (%.1f MiB of weights)",
        args.model,
        model.loader,
        model.device,
        model.dtype,
        time.perf_counter() - t,
        model.weight_bytes / 2**20,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            *SERVER_OPTIONS,
            ("grpc.max_receive_message_length", 64 * 2**20),
            ("grpc.max_send_message_length", 64 * 2**20),
        ],
    )
    servicer = GpuExecutorServicer(model, args.dataplane_timeout_s, args.cuda_graphs)
    executor_pb2_grpc.add_GpuExecutorServicer_to_server(servicer, server)
    serve_until_signalled(server, SERVICE, args.host, args.port, "apex-gpu-executor")
    log.info("stopped")


if __name__ == "__main__":
    main()
