"""The executor's half of the delta step message (executor.proto, StepRequest, SeqStep).

The scheduler sends a decoding row that continues from the last step as three integers
(which row it was, its token, the block it gained), any other row as a SeqStep with its
block table from `table_offset` on and its sampling only when it changed. This keeps
exactly the rows of the step that ran last, in order, and rebuilds each row of the next
step from them. A row that refers to something it does not hold is refused, never
guessed: the sender then resends the step whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex.v1 import executor_pb2


class RowMemoryLost(ValueError):
    """A row claims a previous step this executor does not remember (it restarted, or
    that step never ran here)."""


@dataclass(slots=True)
class Row:
    """One row of a step, whole: what the forward pass and the sampler read."""

    request_id: str
    token_ids: list[int]
    start_pos: int
    table: list[int]
    tier: int
    sampling: executor_pb2.SamplingSpec
    prompt_token_ids: tuple[int, ...] = ()  # sent only with a penalty on
    output_token_ids: tuple[int, ...] = ()

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


class RowMemory:
    def __init__(self) -> None:
        self.last: list[Row] = []  # the rows of the step that ran last, in order
        self.by_id: dict[str, Row] = {}

    def resolve(self, step: executor_pb2.StepRequest) -> list[Row]:
        """The step's rows, whole. What it returns is remembered only once `keep` is
        called, so a step refused on its input leaves the memory as it was."""
        if not step.row_source:
            return [self.whole(s) for s in step.seqs]
        seqs, tokens, blocks = step.seqs, step.continue_token, step.continue_block
        if len(tokens) != len(blocks):
            raise ValueError("continue_token and continue_block must be as long as each other")
        whole = sum(1 for src in step.row_source if src < 0)
        if whole > len(seqs):
            raise ValueError(f"row_source asks for more than the {len(seqs)} seqs sent")
        if whole != len(seqs) or len(step.row_source) - whole != len(tokens):
            raise ValueError("row_source does not account for every seq and continued row sent")
        rows, k, j = [], 0, 0
        for src in step.row_source:
            if src < 0:
                rows.append(self.whole(seqs[k]))
                k += 1
                continue
            if src >= len(self.last):
                raise RowMemoryLost(
                    f"no memory of row {src} of the last step ({len(self.last)} rows): "
                    "send the step whole"
                )
            prev, block = self.last[src], blocks[j]
            table = [*prev.table, block] if block >= 0 else prev.table
            rows.append(
                Row(prev.request_id, [tokens[j]], prev.end_pos, table, prev.tier, prev.sampling)
            )
            j += 1
        return rows

    def whole(self, s: executor_pb2.SeqStep) -> Row:
        prev = self.by_id.get(s.request_id)
        if s.table_offset:
            if prev is None or prev.tier != s.tier or s.table_offset > len(prev.table):
                raise RowMemoryLost(
                    f"no memory of row {s.request_id!r} to apply table_offset "
                    f"{s.table_offset} to: send the step whole"
                )
            table = prev.table[: s.table_offset] + list(s.block_table)
        else:
            table = list(s.block_table)
        if s.HasField("sampling"):
            sampling = s.sampling
        elif prev is not None:
            sampling = prev.sampling
        else:
            raise RowMemoryLost(
                f"no memory of row {s.request_id!r} to take its sampling from: send the step whole"
            )
        return Row(
            s.request_id,
            list(s.token_ids),
            s.start_pos,
            table,
            s.tier,
            sampling,
            tuple(s.prompt_token_ids),
            tuple(s.output_token_ids),
        )

    def keep(self, rows: list[Row]) -> None:
        """The step ran with these rows: they are what the next step's deltas build on."""
        self.last = rows
        self.by_id = {r.request_id: r for r in rows}

    def clear(self) -> None:
        self.last, self.by_id = [], {}
