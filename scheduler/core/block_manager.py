"""Paged KV blocks of one tier: the scheduler owns them, executors only index by them."""

from __future__ import annotations


class BlockAllocator:
    """A free list of block ids with reference counts. Requests own their tables; this
    hands out ids, and lets the samples of one prompt (`n` > 1) hold its prompt blocks
    together: a shared block goes back to the free list when its last holder frees it."""

    def __init__(self, num_blocks: int, tier: str = "gpu") -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.tier = tier
        self.num_total = num_blocks
        # Popping from the end hands out low ids first, which keeps small runs compact.
        self._free = list(range(num_blocks - 1, -1, -1))
        # holders beyond the first, only for shared blocks: most frees stay a list extend
        self._extra: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_total - len(self._free)

    @property
    def num_shared(self) -> int:
        """Blocks held by more than one request."""
        return len(self._extra)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"{self.tier} tier: {n} blocks asked, {len(self._free)} free")
        if n <= 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        return taken[::-1]

    def share(self, blocks: list[int]) -> list[int]:
        """One more holder for each of these (allocated) blocks; returns them."""
        for b in blocks:
            self._extra[b] = self._extra.get(b, 0) + 1
        return list(blocks)

    def free(self, blocks: list[int]) -> None:
        """Drop one holder of each block; a block no one holds is free again."""
        if self._extra:
            kept = []
            for b in blocks:
                extra = self._extra.get(b)
                if extra is None:
                    kept.append(b)
                elif extra == 1:
                    del self._extra[b]
                else:
                    self._extra[b] = extra - 1
            blocks = kept
        self._free.extend(reversed(blocks))
        if len(self._free) > self.num_total:
            raise RuntimeError(f"{self.tier} tier: a block was freed twice")
