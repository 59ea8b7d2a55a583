"""apex: per-iteration strategy, and CPU placement only while the TPOT bound holds.

Placement, as measured on the capacity grid (benchmarks/README.md):
- A request goes to the GPU tier whenever its KV fits there now, as vLLM admits: the
  GPU tier is the fast one, and reserving each request's whole future (max_tokens) left
  most of it empty, so apex lost to gpu-only on hosts with little CPU.
- When the GPU tier later runs short, the newest GPU rows move to the CPU tier (the
  scheduler's swap-out). So the bound check counts them before they move: GPU rows
  beyond what the GPU holds at their mean context count as CPU load ("at risk").
- A request goes to the CPU tier only while the predicted iteration, with it and the
  rows at risk on the CPU, stays within the TPOT bound; else it waits.
"""

from __future__ import annotations

from scheduler.core.view import SchedulerView
from scheduler.costs.cost_model import CostModel, Work, best_decision, iteration_s
from scheduler.policies.base import CostedPolicy, expected_context, gpu_fits_now
from scheduler.types import Request, Strategy, Tier


class ApexPolicy(CostedPolicy):
    name = "apex"
    strategies = (Strategy.OVERLAP, Strategy.PIPELINE)

    def __init__(self, cost: CostModel, tpot_slo_s: float) -> None:
        if tpot_slo_s <= 0:
            raise ValueError(f"the TPOT bound must be > 0 s, got {tpot_slo_s}")
        super().__init__(cost)
        self.tpot_slo_s = tpot_slo_s

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        if gpu_fits_now(view, req):
            return Tier.GPU
        if not view.has_cpu_tier:
            return None
        after = self.cpu_work(view, admitted).plus_cpu_row(expected_context(req))
        return Tier.CPU if self.within_bound(after) else None

    def spill(self, view: SchedulerView, victims: list[Request]) -> bool:
        """Yes while the iteration, with the victims' rows on the CPU, stays within the
        bound: the prompt then starts now instead of when a GPU row ends."""
        w = self.cpu_work(view, [])
        moved = tuple(expected_context(r) for r in victims)
        gctx = max(0.0, w.gpu_context - sum(moved))
        after = Work(w.tokens, w.rows, gctx, (*w.cpu_context, *moved), w.gpu_rows - len(moved))
        return self.within_bound(after)

    def within_bound(self, work: Work) -> bool:
        """Rows grow faster than the iteration time until the bound (the weights are read
        once for all rows), so filling up to the bound maximises predicted tokens/s."""
        t = best_decision(self.cost, work, self.strategies).predicted_s
        return t * self.calibration.scale <= self.tpot_slo_s

    def describe(self) -> str:
        return f"apex (TPOT bound {self.tpot_slo_s * 1e3:.1f} ms)"


def default_tpot_slo(cost: CostModel) -> float:
    """With no bound given: a pipelined decode step (every weight read twice) plus 25%.
    Below the pipeline's own cost only overlap is possible, and the bound would cap the
    CPU tier at what hides under the GPU's attention; this lets apex pipeline, and spend
    a quarter more on CPU attention that does not fully hide."""
    return 1.25 * iteration_s(cost, 2 * cost.linear_s(1) + cost.gatt_s(0))
