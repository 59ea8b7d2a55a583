"""A profile measured on the running stack (`apexctl profile`), as a cost model.

The measured points are the truth; between them the model interpolates linearly, and
past them it extrapolates along the last segment (in context) or in proportion (in
rows), because attention work grows with both. All times are per decoder layer except
the head and the fixed per-iteration overhead.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Curve:
    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.xs) < 1 or len(self.xs) != len(self.ys):
            raise ValueError("a curve needs as many x as y values, at least one")
        if list(self.xs) != sorted(set(self.xs)):
            raise ValueError(f"curve x values must increase: {self.xs}")

    def __call__(self, x: float) -> float:
        return interpolate(self.xs, self.ys, x)


def interpolate(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Piecewise linear through (xs, ys), extended along the last segment past the end."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    i = min(bisect.bisect_right(xs, x), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass(frozen=True)
class Grid:
    """seconds[i][j]: rows[i] decode rows of context[j] tokens each."""

    rows: tuple[int, ...]
    curves: tuple[Curve, ...]  # one per rows[i], over context per row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        ctx = tuple(float(c) for c in d["context"])
        return cls(
            tuple(int(r) for r in d["rows"]),
            tuple(Curve(ctx, tuple(float(s) for s in row)) for row in d["seconds"]),
        )

    def __call__(self, rows: float, context_per_row: float) -> float:
        at = tuple(c(context_per_row) for c in self.curves)
        if rows >= self.rows[-1]:
            return at[-1] * rows / self.rows[-1]
        return interpolate(self.rows, at, rows)  # no Curve: this runs per prediction


@dataclass(frozen=True)
class MeasuredProfile:
    name: str
    device: str
    model: str
    key: str
    num_layers: int
    overhead: Curve  # per iteration outside the layers, over rows
    linear: Curve  # per layer, over tokens
    head: Curve  # once per iteration, over rows
    gpu_attention: Grid
    cpu_attention: Grid | None  # None: no CPU tier when measured
    transfer: Curve  # seconds over bytes each way
    gpu_kv_capacity_tokens: int
    cpu_kv_capacity_tokens: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasuredProfile:
        def curve(c: dict[str, Any], x: str) -> Curve:
            return Curve(tuple(float(v) for v in c[x]), tuple(float(v) for v in c["seconds"]))

        return cls(
            name=d["name"],
            device=d["device"],
            model=d["model"],
            key=d["key"],
            num_layers=int(d["num_layers"]),
            overhead=curve(d["iteration_overhead"], "rows"),
            linear=curve(d["linear"], "tokens"),
            head=curve(d["head"], "tokens"),
            gpu_attention=Grid.from_dict(d["gpu_attention"]),
            cpu_attention=Grid.from_dict(d["cpu_attention"]) if d.get("cpu_attention") else None,
            transfer=curve(d["transfer"], "bytes"),
            gpu_kv_capacity_tokens=int(d["gpu_kv_capacity_tokens"]),
            cpu_kv_capacity_tokens=int(d["cpu_kv_capacity_tokens"]),
        )

    def linear_s(self, tokens: int) -> float:
        return self.linear(max(tokens, 1))

    def gatt_s(self, context_tokens: float, rows: int = 1) -> float:
        if context_tokens <= 0:
            return 0.0
        rows = max(rows, 1)
        return self.gpu_attention(rows, context_tokens / rows)

    def catt_s(self, rows: int, context_tokens: float) -> float:
        if rows == 0:
            return 0.0
        if self.cpu_attention is None:
            raise ValueError(f"profile {self.name} was measured without a CPU tier")
        return self.cpu_attention(rows, context_tokens / rows)

    def head_s(self, rows: int = 1) -> float:
        return self.head(max(rows, 1))

    def overhead_s(self, rows: int) -> float:
        return self.overhead(max(rows, 1))
