"""The executor's half of the delta step message (executor.proto, SeqStep).

The scheduler sends each row's block table from `table_offset` on and its sampling only
when it changed; this keeps, for exactly the rows of the step that ran last, the whole
table and sampling, and rebuilds each row of the next step from them. A delta for a
row it holds nothing of is refused, never guessed: the sender then resends it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from apex.v1 import executor_pb2


class RowMemoryLost(ValueError):
    """A row claims a previous step this executor does not remember (it restarted, or
    that step never ran here)."""


@dataclass(slots=True)
class Row:
    table: list[int]
    tier: int
    sampling: executor_pb2.SamplingSpec


class RowMemory:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def resolve(self, seqs: Sequence[executor_pb2.SeqStep]) -> list[Row]:
        """Each row's whole table and sampling. What it returns is remembered only once
        `keep` is called, so a step refused on its input leaves the memory as it was."""
        rows = []
        for s in seqs:
            prev = self.rows.get(s.request_id)
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
                    f"no memory of row {s.request_id!r} to take its sampling from: "
                    "send the step whole"
                )
            rows.append(Row(table, s.tier, sampling))
        return rows

    def keep(self, seqs: Sequence[executor_pb2.SeqStep], rows: list[Row]) -> None:
        """The step ran with these rows: they are what the next step's deltas build on."""
        self.rows = {s.request_id: r for s, r in zip(seqs, rows, strict=True)}

    def clear(self) -> None:
        self.rows = {}
