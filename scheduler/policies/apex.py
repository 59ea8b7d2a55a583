"""apex: per-iteration strategy, and CPU placement only while the TPOT bound holds."""

from __future__ import annotations

from scheduler.core.view import SchedulerView
from scheduler.costs.cost_model import CostModel, best_decision, iteration_s
from scheduler.policies.base import CostedPolicy, expected_context, gpu_future_fits
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
        if gpu_future_fits(view, req, admitted):
            return Tier.GPU
        if not view.has_cpu_tier:
            return None
        after = self.cpu_work(view, admitted).plus_cpu_row(expected_context(req))
        t_after = best_decision(self.cost, after, self.strategies).predicted_s
        t_after *= self.calibration.scale
        # Rows grow faster than the iteration time until the bound (the weights are read
        # once for all rows), so filling up to the bound maximises predicted tokens/s.
        return Tier.CPU if t_after <= self.tpot_slo_s else None

    def describe(self) -> str:
        return f"apex (TPOT bound {self.tpot_slo_s * 1e3:.1f} ms)"


def default_tpot_slo(cost: CostModel) -> float:
    """With no bound given: a pipelined decode step (every weight read twice) plus 25%.
    Below the pipeline's own cost only overlap is possible, and the bound would cap the
    CPU tier at what hides under the GPU's attention; this lets apex pipeline, and spend
    a quarter more on CPU attention that does not fully hide."""
    return 1.25 * iteration_s(cost, 2 * cost.linear_s(1) + cost.gatt_s(0))
