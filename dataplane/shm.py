"""Named shared-memory segments in /dev/shm, created by one process, attached by another.

Plain open/ftruncate/mmap instead of multiprocessing.shared_memory: its resource tracker
unlinks segments that the attaching process merely used. The creator unlinks; an
attacher checks the size it was told against what it finds, so a layout mismatch is an
error at start-up rather than a torn read later.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from pathlib import Path

import numpy as np

SHM_DIR = Path(os.environ.get("APEX_SHM_DIR", "/dev/shm"))


class SharedMemoryError(RuntimeError):
    pass


def unique_name(purpose: str) -> str:
    return f"apex-{os.getpid()}-{purpose}-{secrets.token_hex(4)}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def remove_stale_segments() -> list[str]:
    """Unlink segments whose creating process is gone (a CPU executor killed with -9
    cannot unlink its own), so restarts do not leak host memory."""
    removed = []
    for path in SHM_DIR.glob("apex-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit():
            continue
        if not process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def memory_available_bytes() -> int | None:
    """The host's MemAvailable (what it can still hand out without swapping), or None
    where /proc/meminfo does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_host_memory(size: int, reserve: int) -> None:
    """Refuse a tier that would leave the host less than `reserve` bytes: /dev/shm is
    often sized at half the RAM or more, and a tier that fills it starves the executors
    and everything else on the host."""
    available = memory_available_bytes()
    if available is not None and size > available - reserve:
        raise SharedMemoryError(
            f"the CPU tier needs {size / 1e9:.2f} GB but the host has "
            f"{available / 1e9:.2f} GB available and keeps {reserve / 1e9:.2f} GB in reserve "
            "(--host-reserve-gb): lower --cpu-kv-gb"
        )


class Segment:
    def __init__(self, name: str, size: int, fd: int, owner: bool) -> None:
        self.name = name
        self.size = size
        self.owner = owner
        self.map = mmap.mmap(fd, size)
        os.close(fd)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        if not SHM_DIR.is_dir():
            raise SharedMemoryError(
                f"{SHM_DIR} does not exist: the CPU KV tier needs POSIX shared memory "
                "(on Docker, share IPC with the GPU executor and set shm_size)"
            )
        free = os.statvfs(SHM_DIR)
        free_bytes = free.f_bavail * free.f_frsize
        if size > free_bytes:
            raise SharedMemoryError(
                f"{SHM_DIR} has {free_bytes / 1e9:.2f} GB free but segment {name} needs "
                f"{size / 1e9:.2f} GB: lower --cpu-kv-gb or enlarge {SHM_DIR} "
                "(Docker: shm_size; Linux: mount -o remount,size=... /dev/shm)"
            )
        path = SHM_DIR / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            # Touch every page now: a tmpfs that cannot back the size fails here with a
            # clear error instead of SIGBUS in the middle of serving.
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise SharedMemoryError(f"cannot allocate {size / 1e9:.2f} GB in {SHM_DIR}: {e}") from e
        return cls(name, size, fd, owner=True)

    @classmethod
    def attach(cls, name: str, size: int) -> Segment:
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as e:
            raise SharedMemoryError(
                f"shared-memory segment {path} not found: the CPU executor must run on the "
                "same host (and IPC namespace) as the GPU executor"
            ) from e
        actual = os.fstat(fd).st_size
        if actual != size:
            os.close(fd)
            raise SharedMemoryError(
                f"segment {name} is {actual} bytes but the agreed layout says {size}: the "
                "executors disagree about the layout (different versions?)"
            )
        return cls(name, size, fd, owner=False)

    def array(self, offset: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self.map, offset=offset)

    def close(self) -> None:
        # Views still alive keep the mapping; it then goes with the process.
        with contextlib.suppress(BufferError):
            self.map.close()
        if self.owner:
            (SHM_DIR / self.name).unlink(missing_ok=True)
