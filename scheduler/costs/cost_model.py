"""The cost model of one iteration: per-layer subtask times composed per strategy.

Per layer, with T tokens through the linear layers, G GPU rows, C CPU rows:

    gpu-only  lin(T) + gatt(G)
    overlap   lin(T) + max(gatt(G), catt(C))
    pipeline  B0 = GPU rows + CPU rows C0, B1 = CPU rows C1; the GPU runs both
              sub-batches' linear layers (the weights are read twice); catt(C1) hides
              under lin(B0) + gatt(G), catt(C0) under gatt(G) + lin(B1).

The same formulas drive the policies' predictions and the simulator's clock; a profile
(spec-derived or measured) supplies the subtask times.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

from scheduler.types import Decision, SeqPlan, Strategy, Tier


class CostModel(Protocol):
    """Per-layer subtask times; a spec-derived or a measured profile provides them."""

    name: str
    num_layers: int

    def overhead_s(self, rows: int) -> float:
        """Per iteration, outside the layers: scheduling, RPC, packing, sampling."""
        ...

    def linear_s(self, tokens: int) -> float: ...

    def gatt_s(self, context_tokens: float, rows: int = 1) -> float: ...

    def catt_s(self, rows: int, context_tokens: float) -> float: ...

    def head_s(self, rows: int = 1) -> float: ...


@dataclass(frozen=True)
class Work:
    """One iteration's load, as the cost model needs it."""

    tokens: int  # through the linear layers
    rows: int  # sequences (each yields one token)
    gpu_context: float  # context tokens attended on the GPU (a prefill: n x mean context)
    cpu_context: tuple[float, ...]  # per CPU row, in plan order
    gpu_rows: int = 1  # rows (query tokens) attending on the GPU

    def plus_cpu_row(self, context: float) -> Work:
        return Work(
            self.tokens + 1,
            self.rows + 1,
            self.gpu_context,
            (*self.cpu_context, context),
            self.gpu_rows,
        )

    def plus_prompt(self, start: int, n: int) -> Work:
        """With `n` prompt tokens from position `start` on (a prefill or one chunk)."""
        return Work(
            self.tokens + n,
            self.rows + 1,
            self.gpu_context + prompt_context(start, n),
            self.cpu_context,
            self.gpu_rows + n,
        )


def prompt_context(start: int, n: int) -> float:
    """Context tokens that `n` prompt tokens from position `start` on attend, summed
    (causal: each its own position and every one before it)."""
    return n * (2 * start + n) / 2


def work_of(seqs: list[SeqPlan]) -> Work:
    tokens, gctx, cctx, grows = 0, 0.0, [], 0
    cpu = Tier.CPU  # looked up once: every row of every iteration comes through here
    for s in seqs:
        n = len(s.token_ids)
        ctx = s.start_pos + n
        tokens += n
        if s.tier is cpu:
            cctx.append(float(ctx))
        else:
            gctx += ctx if n == 1 else prompt_context(s.start_pos, n)
            grows += n
    return Work(tokens, len(seqs), gctx, tuple(cctx), grows)


def iteration_s(cost: CostModel, layer_s: float, rows: int = 1) -> float:
    return cost.num_layers * layer_s + cost.head_s(rows) + cost.overhead_s(rows)


def overlap_s(cost: CostModel, w: Work) -> float:
    c = cost.catt_s(len(w.cpu_context), sum(w.cpu_context))
    layer = cost.linear_s(w.tokens) + max(cost.gatt_s(w.gpu_context, w.gpu_rows), c)
    return iteration_s(cost, layer, w.rows)


def split_layer_s(
    cost: CostModel, tokens: int, gatt: float, prefix: list[float], k: int
) -> tuple[float, bool]:
    """One layer with the first k CPU rows in B1 (prefix: running sums of the CPU rows'
    contexts): the GPU's busy time plus its stalls, or the CPU's whole layer if that is
    longer; and whether both parts hide (no stall)."""
    n = len(prefix) - 1
    c1 = cost.catt_s(k, prefix[k])
    c0 = cost.catt_s(n - k, prefix[n] - prefix[k])
    lin0, lin1 = cost.linear_s(tokens - k), cost.linear_s(k)
    stall1 = max(0.0, c1 - (lin0 + gatt))
    stall0 = max(0.0, c0 - (gatt + lin1))
    return max(lin0 + gatt + lin1 + stall1 + stall0, c1 + c0), stall1 == stall0 == 0.0


def best_split(
    cost: CostModel, tokens: int, gatt: float, prefix: list[float]
) -> tuple[float, int, bool]:
    """(layer time, k, hidden) at the best split. Over k the layer time is a nearly
    constant GPU part plus B1's stall (growing with k) and C0's (shrinking): convex, so a
    bisection on its slope finds the minimum in O(log C) evaluations."""
    lo, hi = 1, len(prefix) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if (
            split_layer_s(cost, tokens, gatt, prefix, mid)[0]
            <= split_layer_s(cost, tokens, gatt, prefix, mid + 1)[0]
        ):
            hi = mid
        else:
            lo = mid + 1
    layer, hidden = split_layer_s(cost, tokens, gatt, prefix, lo)
    return layer, lo, hidden


def pipeline_s(cost: CostModel, w: Work, k: int | None = None) -> tuple[float, int]:
    """Iteration time with B1 = the first k CPU rows; k=None takes the best split."""
    gatt = cost.gatt_s(w.gpu_context, w.gpu_rows)
    prefix = list(itertools.accumulate(w.cpu_context, initial=0.0))
    if k is None:
        layer, k, _ = best_split(cost, w.tokens, gatt, prefix)
    else:
        layer = split_layer_s(cost, w.tokens, gatt, prefix, k)[0]
    return iteration_s(cost, layer, w.rows), k


def plan_s(cost: CostModel, seqs: list[SeqPlan], strategy: Strategy, k: int) -> float:
    """The model's time for a plan run the way it says (the simulator's clock)."""
    w = work_of(seqs)
    if strategy is Strategy.PIPELINE and w.cpu_context:
        return pipeline_s(cost, w, k)[0]
    return overlap_s(cost, w)


def best_decision(cost: CostModel, w: Work, allowed: tuple[Strategy, ...]) -> Decision:
    if not w.cpu_context:  # overlap with nothing on the CPU is the GPU-only step
        return Decision(Strategy.GPU_ONLY, 0, overlap_s(cost, w))
    options: list[Decision] = []
    if Strategy.OVERLAP in allowed:
        options.append(Decision(Strategy.OVERLAP, 0, overlap_s(cost, w)))
    if Strategy.PIPELINE in allowed:
        t, k = pipeline_s(cost, w)
        options.append(Decision(Strategy.PIPELINE, k, t))
    if not options:  # a policy without CPU attention, but rows forced onto the CPU
        options.append(Decision(Strategy.OVERLAP, 0, overlap_s(cost, w)))
    return min(options, key=lambda d: d.predicted_s)


def pipeline_hidden(cost: CostModel, w: Work) -> bool:
    """Whether, at the best split, both parts' CPU attention hides under the other
    sub-batch's GPU work (no stall): NEO's condition for letting CPU rows run."""
    gatt = cost.gatt_s(w.gpu_context, w.gpu_rows)
    prefix = list(itertools.accumulate(w.cpu_context, initial=0.0))
    return best_split(cost, w.tokens, gatt, prefix)[2]
