"""What every benchmark script shares: the machine's name, medians of repeated
timings, and writing the JSON report beside the others. (Percentiles: the simulator's
`pct`, one definition for benchmarks, simulator and `apexctl bench`.)"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one run of fn."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of fn over reps runs, after one warm-up run."""
    fn()
    return statistics.median(timed(fn) for _ in range(reps))


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
