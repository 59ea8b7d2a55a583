"""Build (once, from source) and load the APEX CPU kernels; typed ctypes entry points.

The library is plain C with OpenMP (`csrc/`), compiled for this machine (-march=native)
into a cache folder keyed by the sources' hash, so an edit rebuilds it and two checkouts never
share a stale build. ctypes releases the GIL for the duration of every call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

CSRC = Path(__file__).parent / "csrc"
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class NativeBuildError(RuntimeError):
    pass


def build_dir() -> Path:
    root = os.environ.get("APEX_NATIVE_DIR") or Path.home() / ".cache" / "apex" / "native"
    return Path(root)


def cflags() -> list[str]:
    """Compiler flags; they are part of the build's cache key."""
    return os.environ.get("APEX_CFLAGS", "-O3 -march=native -fno-math-errno").split()


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.c"))


def library_path(extra: tuple[str, ...] = ()) -> Path:
    files = sorted(CSRC.glob("*.[ch]"))
    key = b"".join(f.read_bytes() for f in files) + " ".join(cflags() + list(extra)).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    return build_dir() / f"libapex_cpu-{digest}.so"


def build(force: bool = False, extra: tuple[str, ...] = ()) -> Path:
    out = library_path(extra)
    if out.is_file() and not force:
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NativeBuildError("no C compiler found (install gcc) to build the APEX CPU kernels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        cc,
        *cflags(),
        *extra,
        "-fopenmp",
        "-fPIC",
        "-shared",
        "-std=gnu11",
        *map(str, sources()),
        "-o",
        str(tmp),
        "-lm",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NativeBuildError(f"building the CPU kernels failed: {' '.join(cmd)}\n{proc.stderr}")
    tmp.replace(out)  # atomic: concurrent builders never load a half-written file
    return out


def lib() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            _lib = _declare(ctypes.CDLL(str(build())))
        return _lib


def loads_only_twin() -> ctypes.CDLL:
    """The attention kernel built with -DAPEX_LOADS_ONLY: its loads and prefetches without
    its arithmetic (wrong results), for benchmarks only."""
    return _declare(ctypes.CDLL(str(build(extra=("-DAPEX_LOADS_ONLY",)))))


def _declare(so: ctypes.CDLL) -> ctypes.CDLL:
    p, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    u32p = ctypes.POINTER(ctypes.c_uint32)
    so.apex_append_kv.argtypes = [p, p, i32, p, p, i32, p, i32, i32, i32, i32]
    so.apex_append_kv.restype = None
    so.apex_paged_decode_attention.argtypes = [
        p,
        i32,
        p,
        p,
        i32,
        p,
        i32,
        p,
        p,
        i32,
        i32,
        i32,
        i32,
        i32,
        f32,
        i32,
        i32,
    ]
    so.apex_paged_decode_attention.restype = i32
    so.apex_gather_kv_bnsh.argtypes = [p, p, i32, p, i32, p, p, p, i32, i32, i32, i32, i32, i32]
    so.apex_gather_kv_bnsh.restype = None
    so.apex_seq_wait.argtypes = [u32p, u32p, ctypes.c_uint32, i64, i64]
    so.apex_seq_wait.restype = i32
    so.apex_seq_signal.argtypes = [u32p, u32p, ctypes.c_uint32]
    so.apex_seq_signal.restype = None
    so.apex_read_sum.argtypes = [p, i64, i32]
    so.apex_read_sum.restype = ctypes.c_double
    so.apex_abi_version.restype = i32
    if so.apex_abi_version() != 1:
        raise NativeBuildError("the loaded CPU kernel library has an unexpected ABI version")
    return so


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def dtype_code(a: np.ndarray | str) -> int:
    name = a if isinstance(a, str) else storage_name(a.dtype)
    return DTYPE_CODES[name]


def storage_name(dt: np.dtype) -> str:
    """numpy has no bfloat16: bf16 tensors are held as uint16 and named explicitly."""
    if dt == np.float32:
        return "float32"
    if dt == np.float16:
        return "float16"
    if dt == np.uint16:
        return "bfloat16"
    raise ValueError(f"unsupported element type {dt}")


if __name__ == "__main__":
    print(build(force=True))
