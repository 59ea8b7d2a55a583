"""neo: NEO's own scheduling rules, the hybrid baseline apex is measured against."""

from __future__ import annotations

from scheduler.core.view import SchedulerView
from scheduler.costs.cost_model import Work, best_decision, best_split, pipeline_s, work_of
from scheduler.policies.base import CostedPolicy
from scheduler.types import Request, SeqPlan, Strategy, Tier


class NeoPolicy(CostedPolicy):
    """NEO's scheduler, as its public implementation does it: optimistic GPU placement
    with swap-out of the newest GPU request when the GPU tier runs short; per
    iteration, CPU rows join the pipeline in arrival order only while their attention
    stays hidden under the other sub-batch's GPU work (a row that does not hide waits
    this iteration, and so does every longer one after it); then the pipelined batch
    runs only if it predicts more tokens/s than the GPU rows alone."""

    name = "neo"
    strategies = (Strategy.PIPELINE,)

    def place(self, view: SchedulerView, req: Request, admitted: list[Request]) -> Tier | None:
        if not view.has_cpu_tier:
            return Tier.GPU
        if any(r.target_tier is Tier.CPU for r in admitted):
            return Tier.CPU  # one went to the CPU this round: later ones follow (FCFS)
        # the prompts admitted before it hold their blocks already: the free count has them
        fits = view.blocks_for(req.num_tokens) <= view.gpu_free_blocks
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
