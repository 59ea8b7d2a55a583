"""The step message, sent as deltas against the step before.

At 256 running requests a whole message carries ~16k block-table entries and 256
sampling specs every iteration, and building it cost more than the decision itself.
Between two steps a decoding row's table gains at most one block and its sampling
rarely changes. So a row that only decodes on, as it was, goes as three integers in
packed columns (its row in the last step, its token, the block it gained or -1); any
other row that was in the previous step sends only the blocks from `table_offset` on
and no sampling unless it changed (executor.proto, StepRequest and SeqStep). The
executor remembers exactly the rows of the step it ran last; this encoder mirrors that
rule, and forgets everything when a step fails, so the next message is whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex.v1 import executor_pb2

from scheduler.types import SamplingConfig, SeqPlan, StepPlan, Strategy, Tier

STRATEGIES = {
    Strategy.GPU_ONLY: executor_pb2.STRATEGY_GPU_ONLY,
    Strategy.OVERLAP: executor_pb2.STRATEGY_OVERLAP,
    Strategy.PIPELINE: executor_pb2.STRATEGY_PIPELINE,
}


@dataclass(slots=True)
class SentRow:
    """What the executor holds for a row after a step: the table it was sent (the
    scheduler's own list, which only grows in place; a move or a preemption replaces
    it), how much of it, the sampling that went with it, the row's place in that step
    and the position it ends at."""

    table: list[int]
    length: int
    tier: Tier
    sampling: SamplingConfig
    banned: tuple[int, ...]
    index: int
    end_pos: int


def sampling_spec(s: SeqPlan) -> executor_pb2.SamplingSpec:
    """The row's sampling as the executor reads it; defaults are left unset."""
    sp = s.request.sampling
    spec = executor_pb2.SamplingSpec(
        temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k, seed=sp.seed
    )
    if sp.logprobs is not None:
        spec.logprobs, spec.top_logprobs = True, sp.logprobs
    if s.banned:
        spec.banned_token_ids.extend(s.banned)
    if sp.logit_bias:
        spec.logit_bias.update(dict(sp.logit_bias))
    if sp.penalised:
        spec.repetition_penalty = sp.repetition_penalty
        spec.frequency_penalty = sp.frequency_penalty
        spec.presence_penalty = sp.presence_penalty
    return spec


class StepEncoder:
    """Builds each StepRequest against what the executor holds from the last step."""

    def __init__(self) -> None:
        self.acked: dict[str, SentRow] = {}  # the rows of the last step that came back
        self.pending: dict[str, SentRow] = {}

    def encode(self, plan: StepPlan) -> executor_pb2.StepRequest:
        acked, pending = self.acked, {}
        msg = executor_pb2.StepRequest(
            step_id=plan.step_id,
            swap_out=[executor_pb2.BlockCopy(src=a, dst=b) for a, b in plan.swap_out],
            swap_in=[executor_pb2.BlockCopy(src=a, dst=b) for a, b in plan.swap_in],
            strategy=STRATEGIES[plan.strategy],
            pipeline_rows=plan.pipeline_rows,
        )
        add_row = msg.seqs.add  # in place: a list of rows passed in would be copied
        source, tokens, blocks = [], [], []
        for i, s in enumerate(plan.seqs):
            req, table, fed = s.request, s.block_table, s.token_ids
            sp, n = req.sampling, len(table)
            prev = acked.get(req.request_id)
            if prev is None:
                same_table = same_sampling = False
            else:
                same_table = prev.table is table and prev.tier is s.tier and 0 < prev.length <= n
                same_sampling = prev.sampling is sp and prev.banned == s.banned
            if (
                same_table
                and same_sampling
                and len(fed) == 1
                and s.start_pos == prev.end_pos
                and n - prev.length <= 1
                and not sp.penalised
            ):  # a decoding row as it was: three integers
                source.append(prev.index)
                tokens.append(fed[0])
                blocks.append(table[-1] if n > prev.length else -1)
            else:
                source.append(-1)
                add_row(**self.row_fields(s, prev, same_table, same_sampling))
            pending[req.request_id] = SentRow(
                table, n, s.tier, sp, s.banned, i, s.start_pos + len(fed)
            )
        if len(msg.seqs) < len(source):
            msg.row_source.extend(source)
            msg.continue_token.extend(tokens)
            msg.continue_block.extend(blocks)
        self.pending = pending
        return msg

    @staticmethod
    def row_fields(s: SeqPlan, prev: SentRow | None, same_table: bool, same_sampling: bool) -> dict:
        """A row as a SeqStep: its table from where the last step's left off when it is
        the same table, its sampling unless unchanged since the last step."""
        table, sp = s.block_table, s.request.sampling
        row = {
            "request_id": s.request.request_id,
            "token_ids": s.token_ids,
            "start_pos": s.start_pos,
        }
        if prev is not None and same_table:
            row["table_offset"] = prev.length
            row["block_table"] = table[prev.length :]
        else:
            row["block_table"] = table
        if s.tier is Tier.CPU:
            row["tier"] = executor_pb2.TIER_CPU
        if not same_sampling:
            row["sampling"] = sampling_spec(s)
        if sp.penalised:  # the token lists, which grow with the output, go every step
            row["output_token_ids"] = s.request.output_ids
            if sp.repetition_penalty != 1.0:
                row["prompt_token_ids"] = s.request.prompt_ids
        return row

    def acknowledge(self) -> None:
        """The step the last message carried ran: the executor now holds its rows."""
        self.acked, self.pending = self.pending, {}

    def forget(self) -> None:
        """The step failed or the executor may have restarted: send everything whole."""
        self.acked, self.pending = {}, {}
