/*
 * The shared-memory data plane's sequence counters (shared between the two executor
 * processes), and the one large read the attention's bandwidth is held against.
 */
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "simd.h"

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int reached(uint32_t value, uint32_t target) { return (int32_t)(value - target) >= 0; }

/*
 * Wait until *seq reaches target (wrap-safe). Spins for spin_ns, then blocks on a futex;
 * *waiters tells the signaller that a wake-up syscall is needed. Returns 0, or -1 after
 * timeout_ns (< 0: never).
 */
int apex_seq_wait(uint32_t *seq, uint32_t *waiters, uint32_t target, int64_t spin_ns,
                  int64_t timeout_ns) {
    int64_t t0 = now_ns();
    while (!reached(__atomic_load_n(seq, __ATOMIC_ACQUIRE), target)) {
        int64_t el = now_ns() - t0;
        if (timeout_ns >= 0 && el > timeout_ns) return -1;
        if (el < spin_ns) {
            __builtin_ia32_pause();
            continue;
        }
        __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
        uint32_t cur = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
        if (!reached(cur, target)) {
            struct timespec ts = {0, 10 * 1000 * 1000}; /* re-check the timeout every 10 ms */
            syscall(SYS_futex, seq, FUTEX_WAIT, cur, &ts, NULL, 0);
        }
        __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
    }
    return 0;
}

/* Publish a new value (release: the payload written before is visible) and wake waiters. */
void apex_seq_signal(uint32_t *seq, uint32_t *waiters, uint32_t value) {
    __atomic_store_n(seq, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* One large streaming read with num_threads threads: the bandwidth the attention is held
 * against, so it is made as fast as a read can be here: each thread streams one
 * contiguous part with whole-vector loads into four independent sums and asks for the
 * lines 2 KiB ahead into L2 (measured on the 2-core EPYC: 45-50 GB/s, against 30-41 GB/s
 * for a plain scalar sum of the same buffer). Returns the sum so the reads stay. */
double apex_read_sum(const float *p, int64_t n, int num_threads) {
    double total = 0.0;
    const int64_t part = (n / num_threads + 4 * VW - 1) / (4 * VW) * (4 * VW);
#pragma omp parallel for reduction(+ : total) schedule(static, 1) num_threads(num_threads)
    for (int t = 0; t < num_threads; t++) {
        int64_t i = t * part, end = i + part < n ? i + part : n;
        vf a = bcast(0.f), b = a, c = a, d = a;
        for (; i + 4 * VW <= end; i += 4 * VW) {
            prefetch_l2((const char *)(p + i) + 2048);
            a += ldv(p + i);
            b += ldv(p + i + VW);
            c += ldv(p + i + 2 * VW);
            d += ldv(p + i + 3 * VW);
        }
        float s = hsum(a + b + c + d);
        for (; i < end; i++) s += p[i];
        total += s;
    }
    return total;
}

int apex_abi_version(void) { return 1; }
