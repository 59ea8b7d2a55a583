"""Policies: where each request's KV lives and how each iteration runs.

The scheduler does the bookkeeping; a policy answers two questions for it, both from a
cost model (a profile) of the subtasks of one decoder layer:

- `place(...)`: a request is about to be admitted; after its prefill (always on the
  GPU), should its KV stay on the GPU tier, go to the CPU tier, or should it wait?
- `choose(...)`: this iteration's rows are fixed; which strategy runs them, and for
  asymmetric pipelining, how are the CPU rows split between the two sub-batches?

Three policies:

- `gpu-only` (vLLM-like): attention only on the GPU; the CPU tier, if any, is swap
  space for preempted requests.
- `neo` (NEO's load-aware placement, always pipelining when CPU rows exist): a request
  goes to the GPU tier when its future fits there, else to the CPU tier while the CPU
  attention stays hidden under the pipeline's GPU work.
- `apex`: per iteration the strategy with the least predicted time; a request goes to
  the CPU tier only when the predicted iteration time with it stays under the TPOT bound
  and it raises the predicted tokens/s.

Per layer, with T tokens through the linear layers, G GPU rows, C CPU rows:

    gpu-only  lin(T) + gatt(G)
    overlap   lin(T) + max(gatt(G), catt(C))
    pipeline  B0 = GPU rows + CPU rows C0, B1 = CPU rows C1; the GPU runs both
              sub-batches' linear layers (the weights are read twice); catt(C1) hides
              under lin(B0) + gatt(G), catt(C0) under gatt(G) + lin(B1).
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from scheduler.request import Request, Tier

if TYPE_CHECKING:
    from scheduler.core import Scheduler, SeqPlan


class Strategy(enum.Enum):
    GPU_ONLY = "gpu-only"
    OVERLAP = "overlap"
    PIPELINE = "pipeline"


class CostModel(Protocol):
    """Per-layer subtask times; a spec-derived or a measured profile provides them."""

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


def work_of(seqs: list[SeqPlan]) -> Work:
    tokens, gctx, cctx, grows = 0, 0.0, [], 0
    for s in seqs:
        n = len(s.token_ids)
        ctx = s.start_pos + n
        tokens += n
        if s.tier is Tier.CPU:
            cctx.append(float(ctx))
        else:
            gctx += ctx if n == 1 else n * (s.start_pos + ctx) / 2
            grows += n
    return Work(tokens, len(seqs), gctx, tuple(cctx), grows)


@dataclass(frozen=True)
class Decision:
    strategy: Strategy
    pipeline_rows: int  # CPU rows in sub-batch B1 (the first CPU rows in plan order)
    predicted_s: float


def iteration_s(cost: CostModel, layer_s: float, rows: int = 1) -> float:
    return cost.num_layers * layer_s + cost.head_s(rows) + cost.overhead_s(rows)


def overlap_s(cost: CostModel, w: Work) -> float:
    c = cost.catt_s(len(w.cpu_context), sum(w.cpu_context))
    layer = cost.linear_s(w.tokens) + max(cost.gatt_s(w.gpu_context, w.gpu_rows), c)
    return iteration_s(cost, layer, w.rows)


def pipeline_layer_s(cost: CostModel, w: Work, k: int, gatt: float, c1: float, c0: float) -> float:
    """One layer with the first k CPU rows in B1: GPU busy time plus its stalls, or the
    CPU's whole layer if that is longer."""
    lin0, lin1 = cost.linear_s(w.tokens - k), cost.linear_s(k)
    stall1 = max(0.0, c1 - (lin0 + gatt))
    stall0 = max(0.0, c0 - (gatt + lin1))
    return max(lin0 + gatt + lin1 + stall1 + stall0, c1 + c0)


def pipeline_s(cost: CostModel, w: Work, k: int | None = None) -> tuple[float, int]:
    """Iteration time with B1 = the first k CPU rows; k=None searches the best split.

    Over k the layer time is a nearly constant GPU part plus B1's stall (growing with
    k) and C0's (shrinking): convex, so a bisection on its slope finds the minimum in
    O(log C) evaluations instead of trying every split."""
    gatt = cost.gatt_s(w.gpu_context, w.gpu_rows)
    ctx = w.cpu_context
    n = len(ctx)
    prefix = list(itertools.accumulate(ctx, initial=0.0))

    def layer(j: int) -> float:
        c1 = cost.catt_s(j, prefix[j])
        c0 = cost.catt_s(n - j, prefix[n] - prefix[j])
        return pipeline_layer_s(cost, w, j, gatt, c1, c0)

    if k is not None:
        return iteration_s(cost, layer(k), w.rows), k
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if layer(mid) <= layer(mid + 1):
            hi = mid
        else:
            lo = mid + 1
    return iteration_s(cost, layer(lo), w.rows), lo


def plan_s(cost: CostModel, seqs: list[SeqPlan], strategy: Strategy, k: int) -> float:
    """The model's time for a plan run the way it says (the simulator's clock)."""
    w = work_of(seqs)
    if strategy is Strategy.PIPELINE and w.cpu_context:
        return pipeline_s(cost, w, k)[0]
    return overlap_s(cost, w)


def best_decision(cost: CostModel, w: Work, allowed: tuple[Strategy, ...]) -> Decision:
    if not w.cpu_context:
        layer = cost.linear_s(w.tokens) + cost.gatt_s(w.gpu_context, w.gpu_rows)
        t = iteration_s(cost, layer, w.rows)
        return Decision(Strategy.GPU_ONLY, 0, t)
    options: list[Decision] = []
    if Strategy.OVERLAP in allowed:
        options.append(Decision(Strategy.OVERLAP, 0, overlap_s(cost, w)))
    if Strategy.PIPELINE in allowed:
        t, k = pipeline_s(cost, w)
        options.append(Decision(Strategy.PIPELINE, k, t))
    if not options:  # a policy without CPU attention, but rows forced onto the CPU
        options.append(Decision(Strategy.OVERLAP, 0, overlap_s(cost, w)))
    return min(options, key=lambda d: d.predicted_s)


def forced(strategy: str, seqs: list[SeqPlan], d: Decision) -> Decision:
    """--strategy overlap|pipeline (tests, operations): pipelining splits the CPU rows
    in half, so that both sub-batches carry CPU rows whenever there are two."""
    if strategy == "overlap":
        return Decision(Strategy.OVERLAP, 0, float("nan"))
    n = sum(1 for s in seqs if s.tier is Tier.CPU)
    return Decision(Strategy.PIPELINE, (n + 1) // 2, float("nan"))


def expected_context(req: Request) -> float:
    """Mean context over the rest of the request's life: what it will cost on average."""
    return req.num_tokens + req.remaining_tokens / 2


class Calibration:
    """The profile's times, scaled by the median ratio of measured to predicted over
    the recent iterations: a profile measured on an idle machine, or a while ago,
    stays right in scale, and the policy's bound keeps meaning what it says."""

    def __init__(self, window: int = 64) -> None:
        self.ratios: deque[float] = deque(maxlen=window)
        self.scale = 1.0

    def observe(self, model_s: float, measured_s: float) -> None:
        if model_s > 0 and measured_s > 0 and math.isfinite(model_s):
            self.ratios.append(measured_s / model_s)
            self.scale = statistics.median(self.ratios)


class Policy:
    name = "base"
    cpu_attention = True  # False: the CPU tier only parks preempted requests
    strategies: tuple[Strategy, ...] = (Strategy.OVERLAP,)

    def __init__(self, cost: CostModel | None) -> None:
        self.cost = cost
        self.calibration = Calibration()

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        """The tier the request's KV goes to after prefill, or None to keep it waiting."""
        return Tier.GPU

    def choose(self, seqs: list[SeqPlan]) -> Decision:
        w = work_of(seqs)
        if self.cost is None:
            strategy = Strategy.OVERLAP if w.cpu_context else Strategy.GPU_ONLY
            return Decision(strategy, 0, float("nan"))
        return best_decision(self.cost, w, self.strategies)  # uncalibrated

    def describe(self) -> str:
        return self.name


def gpu_future_fits(sched: Scheduler, req: Request, admitted: list[Request]) -> bool:
    """Every GPU-placed request's whole future stays on the GPU: reserve it at admission."""
    taken = sum(
        sched.config.blocks_for(r.num_tokens)  # staged there for its prefill only
        if r.target_tier is Tier.CPU
        else sched.future_blocks(r)
        for r in admitted
    )
    return sched.future_free - taken >= sched.future_blocks(req)


class GpuOnlyPolicy(Policy):
    name = "gpu-only"
    cpu_attention = False
    strategies = ()


class FixedRulePolicy(Policy):
    """Issue 3's rule, kept for `--placement cpu|gpu` and for runs with no profile: the
    GPU tier when the request's future fits beside what is left, else the CPU tier."""

    name = "fixed"

    def __init__(self, cost: CostModel | None, label: str = "fixed") -> None:
        super().__init__(cost)
        self.name = label  # the policy asked for, running without a profile

    def describe(self) -> str:
        return f"{self.name} (no profile: fixed placement rule, overlap)"

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        if sched.cpu is None:
            return Tier.GPU
        growth = sched.future_blocks(req) - sched.config.blocks_for(req.num_tokens)
        return Tier.GPU if growth <= sched.gpu.num_free else Tier.CPU


class CostedPolicy(Policy):
    def __init__(self, cost: CostModel) -> None:
        super().__init__(cost)
        self.cost: CostModel = cost
        self._base: tuple[int, tuple[float, list[float]]] = (-1, (0.0, []))

    def cpu_work(self, sched: Scheduler, admitted: list[Request]) -> Work:
        """The load the CPU tier will carry on average: running CPU rows and those just
        admitted for it, each at its expected context; GPU rows at theirs. The running
        part is summed once per iteration (admission asks several times)."""
        if self._base[0] != sched.step_id:
            self._base = (sched.step_id, self.load_of(sched.running))
        gctx, cctx = self._base[1]
        more_g, more_c = self.load_of(admitted)
        rows = len(sched.running) + len(admitted)
        cpu = (*cctx, *more_c)
        return Work(rows, rows, gctx + more_g, cpu, rows - len(cpu))

    @staticmethod
    def load_of(reqs: list[Request]) -> tuple[float, list[float]]:
        gctx, cctx = 0.0, []
        for r in reqs:
            if r.tier is Tier.CPU or r.target_tier is Tier.CPU:
                cctx.append(expected_context(r))
            else:
                gctx += expected_context(r)
        return gctx, cctx


class NeoPolicy(CostedPolicy):
    name = "neo"
    strategies = (Strategy.PIPELINE,)

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        if gpu_future_fits(sched, req, admitted):
            return Tier.GPU
        if sched.cpu is None:
            return None
        w = self.cpu_work(sched, admitted).plus_cpu_row(expected_context(req))
        gatt = self.cost.gatt_s(w.gpu_context, w.gpu_rows)
        gpu_busy = 2 * self.cost.linear_s(max(1, w.tokens // 2)) + gatt
        cpu = self.cost.catt_s(len(w.cpu_context), sum(w.cpu_context))
        return Tier.CPU if cpu <= gpu_busy else None  # the CPU must stay hidden


class ApexPolicy(CostedPolicy):
    name = "apex"
    strategies = (Strategy.OVERLAP, Strategy.PIPELINE)

    def __init__(self, cost: CostModel, tpot_slo_s: float) -> None:
        if tpot_slo_s <= 0:
            raise ValueError(f"the TPOT bound must be > 0 s, got {tpot_slo_s}")
        super().__init__(cost)
        self.tpot_slo_s = tpot_slo_s

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        if gpu_future_fits(sched, req, admitted):
            return Tier.GPU
        if sched.cpu is None:
            return None
        after = self.cpu_work(sched, admitted).plus_cpu_row(expected_context(req))
        t_after = best_decision(self.cost, after, self.strategies).predicted_s
        t_after *= self.calibration.scale
        # Rows grow faster than the iteration time until the bound (the weights are read
        # once for all rows), so filling up to the bound maximises predicted tokens/s.
        return Tier.CPU if t_after <= self.tpot_slo_s else None

    def describe(self) -> str:
        return f"apex (TPOT bound {self.tpot_slo_s * 1e3:.1f} ms)"


POLICIES = ("gpu-only", "neo", "apex")


def make_policy(name: str, cost: CostModel | None, tpot_slo_s: float | None = None) -> Policy:
    """A policy by name. neo and apex need a cost model; without one they fall back to
    the fixed rule (the caller says so to the operator)."""
    if name == "gpu-only":
        return GpuOnlyPolicy(cost)
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {name!r}")
    if cost is None:
        return FixedRulePolicy(None, name)
    if name == "neo":
        return NeoPolicy(cost)
    return ApexPolicy(cost, tpot_slo_s if tpot_slo_s else default_tpot_slo(cost))


def default_tpot_slo(cost: CostModel) -> float:
    """With no bound given: a pipelined decode step (every weight read twice) plus 25%.
    Below the pipeline's own cost only overlap is possible, and the bound would cap the
    CPU tier at what hides under the GPU's attention; this lets apex pipeline, and spend
    a quarter more on CPU attention that does not fully hide."""
    return 1.25 * iteration_s(cost, 2 * cost.linear_s(1) + cost.gatt_s(0))
