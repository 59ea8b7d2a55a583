"""The per-layer data plane: sequence counters over the exchange segment.

Each counter is a (seq, waiters) pair of uint32 on its own cache line. A writer fills
the payload, then publishes the step id with a release store and wakes a sleeper only if
one registered; a reader spins briefly (~0.3 us round trips) and then blocks on a futex.
Both calls run in C without the GIL.
"""

from __future__ import annotations

import ctypes

from dataplane import native
from dataplane.layout import LINE, ExchangeLayout, ExchangeViews

DEFAULT_SPIN_NS = 200_000  # spin this long before sleeping on the futex


class DataPlaneTimeout(RuntimeError):
    pass


class Exchange:
    def __init__(self, layout: ExchangeLayout, segment, spin_ns: int = DEFAULT_SPIN_NS) -> None:
        self.layout = layout
        self.segment = segment
        self.views = ExchangeViews.of(layout, segment)
        self.spin_ns = spin_ns
        base = self.views.counters.ctypes.data
        u32p = ctypes.POINTER(ctypes.c_uint32)
        self._seq = [ctypes.cast(base + i * LINE, u32p) for i in range(layout.num_counters)]
        self._wait = [ctypes.cast(base + i * LINE + 4, u32p) for i in range(layout.num_counters)]
        self._lib = native.lib()

    def signal(self, counter: int, value: int) -> None:
        self._lib.apex_seq_signal(self._seq[counter], self._wait[counter], value & 0xFFFFFFFF)

    def wait(self, counter: int, target: int, timeout_s: float) -> bool:
        """True once the counter reached target; False after timeout_s."""
        rc = self._lib.apex_seq_wait(
            self._seq[counter],
            self._wait[counter],
            target & 0xFFFFFFFF,
            self.spin_ns,
            int(timeout_s * 1e9),
        )
        return rc == 0

    def value(self, counter: int) -> int:
        return int(self.views.counters[counter, 0])
