"""apex: per-iteration strategy, and CPU placement only where it serves the SLO: within
the TPOT bound, and only for a request that waiting for the GPU tier would make late.

Placement, as measured on the capacity grid (benchmarks/README.md):
- A request goes to the GPU tier whenever its KV fits there now, as vLLM admits: the
  GPU tier is the fast one, and reserving each request's whole future (max_tokens) left
  most of it empty, so apex lost to gpu-only on hosts with little CPU.
- When the GPU tier later runs short, the newest GPU rows move to the CPU tier (the
  scheduler's swap-out). So the bound check counts them before they move: GPU rows
  beyond what the GPU holds at their mean context count as CPU load ("at risk").
- A request goes to the CPU tier only while the predicted iteration, with it and the
  rows at risk on the CPU, stays within the TPOT bound; else it waits.
- ...and only if waiting for the GPU tier would take it past half its TTFT bound (the
  GPU rows nearest their end free the room, at the present step time). Where a CPU row
  costs more than a GPU row (two vCPUs beside an A10), filling the CPU tier to the TPOT
  bound slowed every step and the queue drained slower than gpu-only's; a request that
  can wait a few steps for the GPU now does.
- Each row counts at its mean context over its life (`mean_context`).
"""

from __future__ import annotations

from scheduler.core.view import SchedulerView
from scheduler.costs.cost_model import CostModel, Work, best_decision, iteration_s
from scheduler.policies.base import CostedPolicy, gpu_fits_now, gpu_wait_s, mean_context
from scheduler.types import Request, Strategy, Tier

DEFAULT_TTFT_SLO_S = 2.0  # with no TTFT bound given: an interactive service's
# Of what its prefill leaves of the TTFT bound, the share a request may spend waiting
# for the GPU tier: the wait is predicted from output budgets (an upper bound on real
# lengths) and requests behind it in the queue wait longer still.
WAIT_SHARE = 0.5


class ApexPolicy(CostedPolicy):
    name = "apex"
    strategies = (Strategy.OVERLAP, Strategy.PIPELINE)

    def __init__(
        self, cost: CostModel, tpot_slo_s: float | None = None, ttft_slo_s: float | None = None
    ) -> None:
        if tpot_slo_s is not None and tpot_slo_s <= 0:
            raise ValueError(f"the TPOT bound must be > 0 s, got {tpot_slo_s}")
        if ttft_slo_s is not None and ttft_slo_s <= 0:
            raise ValueError(f"the TTFT bound must be > 0 s, got {ttft_slo_s}")
        super().__init__(cost)
        self.tpot_slo_given = tpot_slo_s  # the operator's bound; None: the profile's
        self.default_tpot_s = default_tpot_slo(cost)
        self.ttft_slo_s = DEFAULT_TTFT_SLO_S if ttft_slo_s is None else ttft_slo_s

    @property
    def tpot_slo_s(self) -> float:  # type: ignore[override]
        """The bound in force. The operator's is absolute. Without one, the default
        is relative to the machine (a pipelined step plus 25%), so it is scaled by the
        calibration as the predictions it is held against are: a profile measured on
        an idle machine would otherwise put the bound below the step the machine
        actually runs, and no row would ever go to the CPU tier."""
        if self.tpot_slo_given is not None:
            return self.tpot_slo_given
        return self.default_tpot_s * self.calibration.scale

    @property
    def tpot_from_profile(self) -> bool:  # type: ignore[override]
        return self.tpot_slo_given is None

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        if gpu_fits_now(view, req):
            return Tier.GPU
        if not view.has_cpu_tier:
            return None
        load = self.cpu_work(view, admitted)
        if not self.within_bound(load.plus_cpu_row(mean_context(req))):
            return None
        return None if self.gpu_soon(view, req, load) else Tier.CPU

    def gpu_soon(self, view: SchedulerView, req: Request, load: Work) -> bool:
        """Whether the GPU tier frees room for `req` soon enough that it meets the TTFT
        bound by waiting for it: within a share of what its prefill leaves of the bound."""
        budget = WAIT_SHARE * (self.ttft_slo_s - self.prefill_s(view, req, load))
        waited = view.now - req.arrival_time
        return waited + gpu_wait_s(view, req, self.step_s(load)) <= budget

    def prefill_s(self, view: SchedulerView, req: Request, load: Work) -> float:
        """The iterations that carry the request's prompt (in chunks of what the decode
        rows leave of the token budget, as the scheduler will), at the present load."""
        cfg = view.config
        n = req.num_tokens
        chunk = cfg.prefill_budget(load.rows) if cfg.chunked_prefill else n
        return sum(self.step_s(load.plus_prompt(s, min(chunk, n - s))) for s in range(0, n, chunk))

    def step_s(self, work: Work) -> float:
        """The predicted iteration, calibrated to what the steps measure."""
        return best_decision(self.cost, work, self.strategies).predicted_s * self.calibration.scale

    def spill(self, view: SchedulerView, head: Request, victims: list[Request]) -> bool:
        """Yes while the iteration, with the victims' rows on the CPU, stays within the
        bound, unless `head` can wait for a GPU row to end and still meet its TTFT."""
        w = self.cpu_work(view, [])
        moved = tuple(mean_context(r) for r in victims)
        gctx = max(0.0, w.gpu_context - sum(moved))
        after = Work(w.tokens, w.rows, gctx, (*w.cpu_context, *moved), w.gpu_rows - len(moved))
        return self.within_bound(after) and not self.gpu_soon(view, head, w)

    def within_bound(self, work: Work) -> bool:
        """Rows grow faster than the iteration time until the bound (the weights are read
        once for all rows), so filling up to the bound maximises predicted tokens/s."""
        return self.step_s(work) <= self.tpot_slo_s

    def describe(self) -> str:
        source = " from the profile" if self.tpot_from_profile else ""
        return (
            f"apex (TPOT bound {self.tpot_slo_s * 1e3:.1f} ms{source}, TTFT {self.ttft_slo_s:g} s)"
        )


def default_tpot_slo(cost: CostModel) -> float:
    """With no bound given: a pipelined decode step (every weight read twice) plus 25%.
    Below the pipeline's own cost only overlap is possible, and the bound would cap the
    CPU tier at what hides under the GPU's attention; this lets apex pipeline, and spend
    a quarter more on CPU attention that does not fully hide."""
    return 1.25 * iteration_s(cost, 2 * cost.linear_s(1) + cost.gatt_s(0))
