"""Paged KV blocks of one tier: the scheduler owns them, executors only index by them."""

from __future__ import annotations


class BlockAllocator:
    """A free list of block ids. Requests own their tables; this only hands out ids."""

    def __init__(self, num_blocks: int, tier: str = "gpu") -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.tier = tier
        self.num_total = num_blocks
        # Popping from the end hands out low ids first, which keeps small runs compact.
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_total - len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"{self.tier} tier: {n} blocks asked, {len(self._free)} free")
        if n <= 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        return taken[::-1]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
        if len(self._free) > self.num_total:
            raise RuntimeError(f"{self.tier} tier: a block was freed twice")
