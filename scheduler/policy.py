"""Policies: where each request's KV lives and how each iteration runs.

The scheduler does the bookkeeping; a policy answers its questions, from a cost model
(a profile) of the subtasks of one decoder layer:

- `place(...)`: a request is about to be admitted; after its prefill (always on the
  GPU), should its KV stay on the GPU tier, go to the CPU tier, or should it wait?
- `select(...)`: which of the running rows run this iteration (all of them, except
  under neo)?
- `choose(...)`: this iteration's rows are fixed; which strategy runs them, and for
  asymmetric pipelining, how are the CPU rows split between the two sub-batches?

Three policies:

- `gpu-only` (vLLM-like): attention only on the GPU; the CPU tier, if any, is swap
  space for preempted requests.
- `neo` (NEO's own scheduling rules): a request goes to the GPU tier while its KV fits
  there (swapped out when the GPU runs short); each iteration only the CPU rows whose
  attention hides under the pipeline's GPU work run (`select`), the others wait.
- `apex`: per iteration the strategy with the least predicted time; a request goes to
  the CPU tier only while the predicted iteration time with it stays under the TPOT
  bound, and every admitted row runs every iteration.

How each strategy's time is predicted: `scheduler/cost_model.py`.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import TYPE_CHECKING

from scheduler.cost_model import (
    CostModel,
    Decision,
    Strategy,
    Work,
    best_decision,
    best_split,
    iteration_s,
    pipeline_s,
    work_of,
)
from scheduler.request import Request, Tier

if TYPE_CHECKING:
    from scheduler.core import Scheduler, SeqPlan


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
    tpot_slo_s: float | None = None  # a TPOT bound, for the policies that keep one

    def __init__(self, cost: CostModel | None) -> None:
        self.cost = cost
        self.calibration = Calibration()

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        """The tier the request's KV goes to after prefill, or None to keep it waiting."""
        return Tier.GPU

    def select(self, seqs: list[SeqPlan]) -> list[SeqPlan]:
        """The rows that run this iteration; the others wait (NEO lets CPU rows wait)."""
        return seqs

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
    """NEO's scheduler, as its public implementation does it: optimistic GPU placement
    with swap-out of the newest GPU request when the GPU tier runs short; per
    iteration, CPU rows join the pipeline in arrival order only while their attention
    stays hidden under the other sub-batch's GPU work (a row that does not hide waits
    this iteration, and so does every longer one after it); then the pipelined batch
    runs only if it predicts more tokens/s than the GPU rows alone."""

    name = "neo"
    strategies = (Strategy.PIPELINE,)

    def place(self, sched: Scheduler, req: Request, admitted: list[Request]) -> Tier | None:
        if sched.cpu is None:
            return Tier.GPU
        if any(r.target_tier is Tier.CPU for r in admitted):
            return Tier.CPU  # one went to the CPU this round: later ones follow (FCFS)
        staged = sum(sched.config.blocks_for(r.num_tokens) for r in admitted)
        fits = sched.config.blocks_for(req.num_tokens) + staged <= sched.gpu.num_free
        return Tier.GPU if fits else Tier.CPU

    def select(self, seqs: list[SeqPlan]) -> list[SeqPlan]:
        gpu = [s for s in seqs if s.tier is not Tier.CPU]
        cpu = [s for s in seqs if s.tier is Tier.CPU]
        if not cpu:
            return seqs
        base = work_of(gpu)
        gatt = self.cost.gatt_s(base.gpu_context, base.gpu_rows)
        chosen: list[SeqPlan] = []
        prefix = [0.0]  # running sums of the chosen rows' contexts
        too_long = float("inf")  # after a row that does not hide, only shorter ones try
        for row in cpu:
            c = float(row.start_pos + 1)
            if c >= too_long:
                continue
            prefix.append(prefix[-1] + c)
            if best_split(self.cost, base.tokens + len(prefix) - 1, gatt, prefix)[2]:
                chosen.append(row)
            else:
                prefix.pop()
                too_long = c
        ctx = tuple(float(row.start_pos + 1) for row in chosen)
        if not gpu:
            return chosen or cpu[:1]  # nothing to hide under: still make progress
        alone = best_decision(self.cost, base, ()).predicted_s
        both = Work(
            base.tokens + len(ctx),
            base.rows + len(ctx),
            base.gpu_context,
            ctx,
            base.gpu_rows,
        )
        piped = pipeline_s(self.cost, both)[0] if ctx else float("inf")
        return gpu + chosen if both.rows / piped > base.rows / alone else gpu


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
