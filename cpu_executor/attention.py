"""CPU decode attention over the paged CPU tier: our kernel and ONNX Runtime's GQA.

Both compute the same function on the same storage. Ours reads the paged blocks in
place in any storage dtype; ORT's GroupQueryAttention wants a contiguous BNSH past, so
its path first gathers (and widens) the past into a scratch buffer, then lets GQA append
the new token in place (past and present bound to one OrtValue) and attend. Which is
faster depends on batch, context and dtype, so `PathChooser` measures instead of guessing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from dataplane import native


@dataclass(frozen=True)
class AttnShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5


def append_kv(
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    cache_dtype: str,
    k: np.ndarray,
    v: np.ndarray,
    slots: np.ndarray,
    shape: AttnShape,
) -> None:
    """k, v: [n, kv_heads, d] (fp32/fp16/bf16-as-uint16); slots: [n] int64."""
    native.lib().apex_append_kv(
        native.ptr(k_cache),
        native.ptr(v_cache),
        native.dtype_code(cache_dtype),
        native.ptr(k),
        native.ptr(v),
        native.dtype_code(k),
        native.ptr(slots),
        len(slots),
        shape.num_kv_heads,
        shape.head_dim,
        shape.block_size,
    )


def kernel_attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    cache_dtype: str,
    block_tables: np.ndarray,
    context_lens: np.ndarray,
    out: np.ndarray,
    shape: AttnShape,
    threads: int,
    chunk_tokens: int = 0,
    lib: ctypes.CDLL | None = None,
) -> None:
    """q, out: [R, H, d] contiguous, same dtype; block_tables [R, max_blocks] int32.
    lib: another build of the kernels (the benchmark's memory twin); default ours."""
    rows = q.shape[0]
    rc = (lib or native.lib()).apex_paged_decode_attention(
        native.ptr(q),
        native.dtype_code(q),
        native.ptr(k_cache),
        native.ptr(v_cache),
        native.dtype_code(cache_dtype),
        native.ptr(block_tables),
        block_tables.shape[1],
        native.ptr(context_lens),
        native.ptr(out),
        rows,
        shape.num_heads,
        shape.num_kv_heads,
        shape.head_dim,
        shape.block_size,
        shape.scale,
        threads,
        chunk_tokens,
    )
    if rc != 0:
        raise ValueError("apex_paged_decode_attention rejected its arguments")


class OrtAttention:
    """GroupQueryAttention (com.microsoft) on the CPU execution provider."""

    def __init__(self, shape: AttnShape, threads: int) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.shape = shape
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No spinning after a run: on a few cores ORT's idle spinners starve the kernel's
        # OpenMP threads (and the GPU side's), seen as 100x slower calls after each ORT run.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            gqa_model(shape).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.threads = threads
        self.k_scratch = np.empty(0, np.float32)
        self.v_scratch = np.empty(0, np.float32)

    def __call__(
        self,
        q: np.ndarray,
        k_new: np.ndarray,
        v_new: np.ndarray,
        k_cache: np.ndarray,
        v_cache: np.ndarray,
        cache_dtype: str,
        block_tables: np.ndarray,
        context_lens: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """Like kernel_attention, but the new token's K/V come in k_new/v_new ([R, kvh, d])
        and the cache holds only the past (context_lens - 1 tokens) for this path's use."""
        s = self.shape
        rows = q.shape[0]
        max_seq = int(context_lens.max())
        need = rows * s.num_kv_heads * max_seq * s.head_dim
        if self.k_scratch.size < need:
            self.k_scratch = np.empty(need, np.float32)
            self.v_scratch = np.empty(need, np.float32)
        bnsh = (rows, s.num_kv_heads, max_seq, s.head_dim)
        kbuf = self.k_scratch[:need].reshape(bnsh)
        vbuf = self.v_scratch[:need].reshape(bnsh)
        past = (context_lens - 1).astype(np.int32)
        native.lib().apex_gather_kv_bnsh(
            native.ptr(k_cache),
            native.ptr(v_cache),
            native.dtype_code(cache_dtype),
            native.ptr(block_tables),
            block_tables.shape[1],
            native.ptr(past),
            native.ptr(kbuf),
            native.ptr(vbuf),
            rows,
            s.num_kv_heads,
            s.head_dim,
            s.block_size,
            max_seq,
            self.threads,
        )
        f32 = np.float32
        ov = self.ort.OrtValue.ortvalue_from_numpy
        io = self.session.io_binding()
        io.bind_ortvalue_input("query", ov(np.ascontiguousarray(q.reshape(rows, 1, -1), f32)))
        io.bind_ortvalue_input("key", ov(np.ascontiguousarray(k_new.reshape(rows, 1, -1), f32)))
        io.bind_ortvalue_input("value", ov(np.ascontiguousarray(v_new.reshape(rows, 1, -1), f32)))
        kv_k, kv_v = ov(kbuf), ov(vbuf)
        io.bind_ortvalue_input("past_key", kv_k)
        io.bind_ortvalue_input("past_value", kv_v)
        io.bind_ortvalue_output("present_key", kv_k)  # same buffer: GQA appends in place
        io.bind_ortvalue_output("present_value", kv_v)
        io.bind_ortvalue_input("seqlens_k", ov(past))
        io.bind_ortvalue_input("total_sequence_length", ov(np.array(max_seq, np.int32)))
        result = np.empty((rows, 1, s.num_heads * s.head_dim), f32)
        io.bind_ortvalue_output("output", ov(result))
        self.session.run_with_iobinding(io)
        out[...] = result.reshape(out.shape).astype(out.dtype, copy=False)


def gqa_model(shape: AttnShape):
    from onnx import TensorProto, helper

    f, i = TensorProto.FLOAT, TensorProto.INT32
    hd, kvd = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    cache = ["B", shape.num_kv_heads, "S", shape.head_dim]
    node = helper.make_node(
        "GroupQueryAttention",
        ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
        ["output", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=shape.num_heads,
        kv_num_heads=shape.num_kv_heads,
        scale=shape.scale,
    )
    graph = helper.make_graph(
        [node],
        "apex_gqa_decode",
        [
            helper.make_tensor_value_info("query", f, ["B", 1, hd]),
            helper.make_tensor_value_info("key", f, ["B", 1, kvd]),
            helper.make_tensor_value_info("value", f, ["B", 1, kvd]),
            helper.make_tensor_value_info("past_key", f, cache),
            helper.make_tensor_value_info("past_value", f, cache),
            helper.make_tensor_value_info("seqlens_k", i, ["B"]),
            helper.make_tensor_value_info("total_sequence_length", i, []),
        ],
        [
            helper.make_tensor_value_info("output", f, ["B", 1, hd]),
            helper.make_tensor_value_info("present_key", f, cache),
            helper.make_tensor_value_info("present_value", f, cache),
        ],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


class PathChooser:
    """Picks the faster path per call from measured times, per (rows, context) bucket.

    Each bucket first tries every path a few times, then takes the one with the lowest
    moving-average time, re-trying the others every `reprobe` calls so that a path that
    became faster (warmer caches, other load) is noticed.
    """

    def __init__(self, paths: tuple[str, ...], trials: int = 2, reprobe: int = 64) -> None:
        self.paths = paths
        self.trials = trials
        self.reprobe = reprobe
        self.avg: dict[tuple[int, int, str], float] = {}
        self.count: dict[tuple[int, int, str], int] = {}
        self.calls: dict[tuple[int, int], int] = {}
        self.chosen: dict[str, int] = dict.fromkeys(paths, 0)

    @staticmethod
    def bucket(rows: int, max_context: int) -> tuple[int, int]:
        return (rows - 1).bit_length(), (max_context - 1).bit_length()

    def choose(self, rows: int, max_context: int) -> str:
        b = self.bucket(rows, max_context)
        n = self.calls.get(b, 0)
        self.calls[b] = n + 1
        for p in self.paths:
            if self.count.get((*b, p), 0) < self.trials:
                return p
        if n % self.reprobe == 0:
            return self.paths[(n // self.reprobe) % len(self.paths)]
        return min(self.paths, key=lambda p: self.avg[(*b, p)])

    def record(self, rows: int, max_context: int, path: str, seconds: float) -> None:
        key = (*self.bucket(rows, max_context), path)
        c = self.count.get(key, 0)
        self.count[key] = c + 1
        self.avg[key] = seconds if c == 0 else 0.8 * self.avg[key] + 0.2 * seconds
        self.chosen[path] += 1
