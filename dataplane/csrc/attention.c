/*
 * Paged decode attention over the CPU KV tier (layout in simd.h), plain C with OpenMP,
 * called through ctypes (no GIL held).
 *
 * Why it is written the way it is (numbers in benchmarks/README.md): at 4 query heads per
 * KV head the loops do one FMA per 4 bytes of fp32 KV and per 2 bytes of 16-bit KV, so on
 * a few cores the arithmetic is as costly as the reads and must hide under them. Hence
 * every loop is specialised per storage dtype (no per-element branches), the
 * accumulators stay in registers (scores leave as whole vectors, never lane by lane), the
 * FMA chains are independent enough to cover their latency, the softmax is vectorised,
 * and what the next steps read is prefetched in step with the current loads.
 * Built with -DAPEX_LOADS_ONLY it is its own memory twin: the same loops, loads and
 * prefetches without the FMAs, which the benchmark times beside it to tell how much of
 * its time the arithmetic costs beyond reading (wrong results: never served).
 */
#include <stdlib.h>

#include "simd.h"

#define MAX_GROUP 64 /* query heads per KV head */
#define MAX_D 512
#define TILE_MIN 64 /* tokens per online-softmax tile, at least */

/* Tokens per tile: a whole number of blocks, so a tile starts at a block's first token
 * and its scores are written as whole vectors. */
static int tile_tokens(int bs) { return bs >= TILE_MIN ? bs : (TILE_MIN / bs) * bs; }

/* Asks for the bytes [p, p + n) into L2 (n: a few lines). */
ALWAYS_INLINE void prefetch_span(const char *p, int n) {
    for (int o = 0; o < n; o += 64) prefetch_l2(p + o);
}

/* Scores of HB heads (q: HB rows of d floats, pre-scaled) for the VW tokens in lanes
 * [v0, v0 + VW) of one block's K ([d][bs]), stored as whole vectors at s[h * ss].
 * Even and odd dimensions accumulate apart: 2*HB independent FMA chains, so even HB = 2
 * covers the FMA latency. With PF, the same-sized regions pf0 and pf1 (or kt itself:
 * nothing new) are asked for in step with K's own reads, a dimension pair's rows at a
 * time, so their fills overlap the arithmetic instead of stalling it in one burst. */
ALWAYS_INLINE void qk_chunk(const float *q, const int HB, const int d, const char *kt,
                            const int DT, int bs, int v0, float *s, int ss, const int PF,
                            const char *pf0, const char *pf1) {
    const int esz = DT == F32 ? 4 : 2;
    const size_t row = (size_t)bs * esz;
    const char *p = kt + (size_t)v0 * esz;
    vf a0[4], a1[4];
    for (int h = 0; h < HB; h++) a0[h] = a1[h] = bcast(0.f);
    for (int x = 0; x < d; x += 2) {
        if (PF) {
            prefetch_span(pf0 + x * row, 2 * (int)row);
            prefetch_span(pf1 + x * row, 2 * (int)row);
        }
        vf k0 = ldx(p + x * row, DT), k1 = ldx(p + (x + 1) * row, DT);
#ifdef APEX_LOADS_ONLY /* the memory twin (benchmarks): same loads, no arithmetic */
        a0[0] += k0;
        a1[0] += k1;
#else
        for (int h = 0; h < HB; h++) {
            a0[h] += bcast(q[h * d + x]) * k0;
            a1[h] += bcast(q[h * d + x + 1]) * k1;
        }
#endif
    }
    for (int h = 0; h < HB; h++) stv(s + (size_t)h * ss, a0[h] + a1[h]);
}

/* acc[h][x..x+NV*VW) += sum_i p[h][i] * v_i[..] for HB heads: NV*HB register
 * accumulators held across the whole tile; per token NV V loads and NV*HB FMAs. With
 * PF, the rows pf[i] (as long as V's) are asked for in step with V's own reads. */
ALWAYS_INLINE void pv_block(float *acc, const int HB, const int NV, const int d,
                            const char *const *v, const int DT, int n, const float *p, int ps,
                            const int PF, const char *const *pf) {
    const int esz = DT == F32 ? 4 : 2;
    for (int x = 0; x < d; x += NV * VW) {
        vf a[4][2];
        for (int h = 0; h < HB; h++)
            for (int u = 0; u < NV; u++) a[h][u] = ldv(acc + (size_t)h * d + x + u * VW);
        for (int i = 0; i < n; i++) {
            if (PF) prefetch_span(pf[i] + (size_t)x * esz, NV * VW * esz);
            vf vv[2];
            for (int u = 0; u < NV; u++) vv[u] = ldx(v[i] + (size_t)(x + u * VW) * esz, DT);
#ifdef APEX_LOADS_ONLY
            for (int u = 0; u < NV; u++) a[0][u] += vv[u];
#else
            for (int h = 0; h < HB; h++) {
                vf pb = bcast(p[(size_t)h * ps + i]);
                for (int u = 0; u < NV; u++) a[h][u] += pb * vv[u];
            }
#endif
        }
        for (int h = 0; h < HB; h++)
            for (int u = 0; u < NV; u++) stv(acc + (size_t)h * d + x + u * VW, a[h][u]);
    }
}

/* The G heads of a group in blocks of 4, 2, 1 (so each call site is specialised). */
#define BY_HEAD_BLOCKS(G, CALL)                                                             \
    do {                                                                                    \
        int g_ = 0;                                                                         \
        for (; g_ + 4 <= (G); g_ += 4) CALL(g_, 4);                                         \
        for (; g_ + 2 <= (G); g_ += 2) CALL(g_, 2);                                         \
        for (; g_ < (G); g_ += 1) CALL(g_, 1);                                              \
    } while (0)

/* Scores of all heads for the n tokens of one block (block size not a multiple of VW:
 * lanes cannot hold whole blocks, so one token at a time). */
static void qk_block_scalar(const float *q, int G, int J, const char *k_cache, int DT,
                            int32_t block, int bs, int d, int n, float *s, int ss) {
    const int esz = elem_size(DT);
    for (int j = 0; j < J; j++) {
        const char *kt = k_cache + cache_offset(block, j, 0, J, bs, d) * esz;
        for (int g = 0; g < G; g++)
            for (int o = 0; o < n; o++) {
                float a = 0.f;
                for (int x = 0; x < d; x++)
                    a += q[((size_t)j * G + g) * d + x] * load(kt, DT, (int64_t)x * bs + o);
                s[((size_t)j * G + g) * ss + o] = a;
            }
    }
}

/* Scores of all heads for the n tokens of block b of the row, each KV head's K one
 * contiguous region. The first head group paces the prefetch of this block's V (read
 * after the tile's scores) and, in a task's first tile (whose K no earlier tile asked
 * for), the next block's K. */
ALWAYS_INLINE void qk_block(const float *q, int G, int J, const char *k_cache,
                            const char *v_cache, const int DT, const int32_t *table, int b,
                            int next_k, int bs, const int d, int n, float *s, int ss) {
    const int esz = DT == F32 ? 4 : 2;
    for (int j = 0; j < J; j++) {
        const int64_t base = cache_offset(table[b], j, 0, J, bs, d) * esz;
        const char *kt = k_cache + base, *pf_v = v_cache + base;
        const char *pf_k = next_k ? k_cache + cache_offset(table[b + 1], j, 0, J, bs, d) * esz : kt;
        const float *qj = q + (size_t)j * G * d;
        float *sj = s + (size_t)j * G * ss;
        for (int v0 = 0; v0 < n; v0 += VW) {
#define QK(g0, HB)                                                                          \
    do {                                                                                    \
        if (v0 == 0 && (g0) == 0)                                                           \
            qk_chunk(qj, HB, d, kt, DT, bs, v0, sj + v0, ss, 1, pf_v, pf_k);                \
        else                                                                                \
            qk_chunk(qj + (size_t)(g0) * d, HB, d, kt, DT, bs, v0, sj + (size_t)(g0) * ss + v0, \
                     ss, 0, NULL, NULL);                                                    \
    } while (0)
            BY_HEAD_BLOCKS(G, QK);
#undef QK
        }
    }
}

/* Pointers to the V rows (d elements each) of tokens [t0, t0+n) of one KV head, in place,
 * t0 % bs == 0. */
static void head_rows(const char **rows, const char *cache, int esz, const int32_t *table, int j,
                      int kvh, int bs, int d, int t0, int n) {
    const int32_t *block = table + t0 / bs;
    for (int i = 0; i < n; block++) {
        const char *p = cache + cache_offset(*block, j, 0, kvh, bs, d) * esz;
        for (int r = 0; r < bs && i < n; r++, i++) rows[i] = p + (size_t)r * d * esz;
    }
}

/* Rows (of d elements, as V's) of the regions [first, first + count) of a tile's K taken
 * in block-major order (region r: the tile's block r / kvh, head r % kvh), so that what
 * is asked for while one head's values are summed is one contiguous stretch of memory.
 * Returns the number of rows written. */
static int region_rows(const char **rows, const char *cache, int esz, const int32_t *blocks,
                       int first, int count, int kvh, int bs, int d) {
    int i = 0;
    for (int r = first; r < first + count; r++) {
        const char *p = cache + cache_offset(blocks[r / kvh], r % kvh, 0, kvh, bs, d) * esz;
        for (int o = 0; o < bs; o++) rows[i++] = p + (size_t)o * d * esz;
    }
    return i;
}

/* Online-softmax step for one head over a tile of nv scores (the tile's n rounded up to
 * VW, lanes past n already -inf): s becomes exp(s - new max); l, acc are rescaled. */
static void softmax_tile(float *s, int nv, float *m, float *l, float *acc, int d) {
    vf mx = bcast(*m);
    for (int i = 0; i < nv; i += VW) mx = vmax(mx, ldv(s + i));
    const float mt = hmax(mx), c = expf(*m - mt);
    vf sum = bcast(0.f);
    const vf mtv = bcast(mt);
    for (int i = 0; i < nv; i += VW) {
        vf e = exp_neg(ldv(s + i) - mtv);
        stv(s + i, e);
        sum += e;
    }
    *l = *l * c + hsum(sum);
    if (c != 1.f) {
        const vf cv = bcast(c);
        for (int x = 0; x < d; x += VW) stv(acc + x, ldv(acc + x) * cv);
    }
    *m = mt;
}

/*
 * One task: all H = J x G query heads of one row against tokens [t0, t1) of its KV, t0 a
 * multiple of the tile. Online softmax over tiles of T tokens: the scores of a tile are
 * computed block by block (each KV head's part of a block is one contiguous region, and
 * each K row serves the G query heads of its KV head), then the values per KV head over
 * the whole tile, so the PV accumulators stay in registers for T rows. Leaves per head
 * the running max m, sum l and unnormalised acc for the caller to finish or merge.
 * s: H x T floats of scratch; rows, pf_rows: T pointers each.
 */
ALWAYS_INLINE void attend_heads(const float *q, int G, int J, const char *k_cache,
                                const char *v_cache, const int DT, const int32_t *table, int bs,
                                const int d, int t0, int t1, float *m, float *l, float *acc,
                                float *s, int T, const char **rows,
                                const char **pf_rows) {
    const int H = J * G, esz = DT == F32 ? 4 : 2;
    for (int h = 0; h < H; h++) {
        m[h] = -INFINITY;
        l[h] = 0.f;
        memset(acc + (size_t)h * d, 0, sizeof(float) * d);
    }
    for (int start = t0; start < t1; start += T) {
        const int n = t1 - start < T ? t1 - start : T;
        const int nv = (n + VW - 1) / VW * VW;
        for (int i = 0; i < n; i += bs) { /* start % bs == 0: whole blocks */
            int b = (start + i) / bs, bn = n - i < bs ? n - i : bs;
            if (bs % VW == 0)
                qk_block(q, G, J, k_cache, v_cache, DT, table, b, start == t0 && start + i + bs < t1,
                         bs, d, bn, s + i, T);
            else
                qk_block_scalar(q, G, J, k_cache, DT, table[b], bs, d, bn, s + i, T);
        }
        for (int h = 0; h < H; h++) {
            for (int i = n; i < nv; i++) s[(size_t)h * T + i] = -INFINITY; /* past the context */
            softmax_tile(s + (size_t)h * T, nv, m + h, l + h, acc + (size_t)h * d, d);
        }
        /* the next tile's K is asked for while this tile's values are summed: an equal
         * share of its regions per KV head, then (past them) V's own rows, in cache */
        const int next = start + T, next_n = t1 - next < T ? t1 - next : T;
        const int next_blocks = next_n > 0 ? (next_n + bs - 1) / bs : 0;
        for (int j = 0; j < J; j++) {
            head_rows(rows, v_cache, esz, table, j, J, bs, d, start, n);
            int w = region_rows(pf_rows, k_cache, esz, table + next / bs, j * next_blocks,
                                next_blocks, J, bs, d);
            for (int i = w; i < n; i++) pf_rows[i] = rows[i];
            float *aj = acc + (size_t)j * G * d;
            const float *sj = s + (size_t)j * G * T;
#define PV(NV, g0, HB)                                                                      \
    pv_block(aj + (size_t)(g0) * d, HB, NV, d, rows, DT, n, sj + (size_t)(g0) * T, T, (g0) == 0, \
             pf_rows)
#define PV2(g0, HB) PV(2, g0, HB)
#define PV1(g0, HB) PV(1, g0, HB)
            if (d % (2 * VW) == 0)
                BY_HEAD_BLOCKS(G, PV2);
            else
                BY_HEAD_BLOCKS(G, PV1);
#undef PV
#undef PV2
#undef PV1
        }
    }
}

/* One specialisation per storage dtype and common head size, so that DT and d are
 * constants inside the loops. */
#define ATTEND(DT, D)                                                                       \
    attend_heads(q, G, J, k_cache, v_cache, DT, table, bs, D, t0, t1, m, l, acc, s, T, rows, \
                 pf_rows)
#define ATTEND_D(DT)                                                                        \
    do {                                                                                    \
        if (d == 128) ATTEND(DT, 128);                                                      \
        else if (d == 64) ATTEND(DT, 64);                                                   \
        else ATTEND(DT, d);                                                                 \
    } while (0)

static void attend(const float *q, int G, int J, const char *k_cache, const char *v_cache,
                   int dtype, const int32_t *table, int bs, int d, int t0, int t1, float *m,
                   float *l, float *acc, float *s, int T, const char **rows,
                   const char **pf_rows) {
    switch (dtype) {
    case F16: ATTEND_D(F16); break;
    case BF16: ATTEND_D(BF16); break;
    default: ATTEND_D(F32);
    }
}

/* Merge the partial (m, l, acc) of every chunk of every row-head and normalise. */
static void merge_chunks(const float *part, int nchunks, size_t per_task, void *out,
                         int io_dtype, int R, int H, int d, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t rh = 0; rh < (int64_t)R * H; rh++) {
        int r = (int)(rh / H), g = (int)(rh % H); /* g: the head's slot in a partial */
        const float *base = part + per_task * ((int64_t)r * nchunks);
        float mx = -INFINITY;
        for (int c = 0; c < nchunks; c++) {
            float mc = base[per_task * c + g * (d + 2)];
            mx = mc > mx ? mc : mx;
        }
        float lsum = 0.f;
        float o[MAX_D];
        memset(o, 0, sizeof(float) * d);
        for (int c = 0; c < nchunks; c++) {
            const float *p = base + per_task * c + g * (d + 2);
            if (p[1] == 0.f) continue;
            float w = expf(p[0] - mx);
            lsum += p[1] * w;
            for (int x = 0; x < d; x++) o[x] += p[2 + x] * w;
        }
        float inv = 1.f / lsum;
        for (int x = 0; x < d; x++) store(out, io_dtype, rh * d + x, o[x] * inv);
    }
}

/*
 * Decode attention for R rows (one new query token each) over the paged CPU tier.
 * q, out: [R][H][d] in io_dtype. Each row attends to context_lens[r] tokens (the new
 * token's K/V already appended). Long contexts are split into chunks of chunk_tokens
 * (rounded up to whole tiles; 0: chosen so that there are at least 2 tasks per thread),
 * merged afterwards. Returns 0, or -1 on bad arguments / no memory.
 */
int apex_paged_decode_attention(const void *q, int io_dtype, const void *k_cache,
                                const void *v_cache, int cache_dtype, const int32_t *block_tables,
                                int max_blocks, const int32_t *context_lens, void *out, int R,
                                int H, int kvh, int d, int bs, float scale, int num_threads,
                                int chunk_tokens) {
    if (R <= 0) return 0;
    if (kvh < 1 || bs < 1 || H % kvh || H / kvh > MAX_GROUP || d > MAX_D || d % VW ||
        num_threads < 1)
        return -1;
    const int G = H / kvh, T = tile_tokens(bs);
    int max_ctx = 0;
    for (int r = 0; r < R; r++) {
        if (context_lens[r] < 1 || context_lens[r] > max_blocks * bs) return -1;
        if (context_lens[r] > max_ctx) max_ctx = context_lens[r];
    }
    if (chunk_tokens <= 0) {
        int want = 2 * num_threads; /* tasks wanted */
        int splits = (want + R - 1) / R;
        chunk_tokens = (max_ctx + splits - 1) / splits;
        if (chunk_tokens < 256) chunk_tokens = 256;
    }
    chunk_tokens = (chunk_tokens + T - 1) / T * T;
    const int nchunks = (max_ctx + chunk_tokens - 1) / chunk_tokens;
    const int64_t ntasks = (int64_t)R * nchunks;
    /* partial results: per task (row, chunk), H x (m, l, acc[d]) */
    const size_t per_task = (size_t)H * (d + 2);
    float *part = NULL;
    if (nchunks > 1) {
        part = (float *)malloc(sizeof(float) * per_task * ntasks);
        if (!part) return -1;
    }

    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        /* per-thread scratch, allocated once per call */
        float *qbuf = (float *)malloc(sizeof(float) * (size_t)H * d);
        float *acc = (float *)malloc(sizeof(float) * (size_t)H * d);
        float *ml = (float *)malloc(sizeof(float) * 2 * (size_t)H);
        float *sbuf = (float *)malloc(sizeof(float) * (size_t)H * T);
        const char **rows = (const char **)malloc(sizeof(char *) * 2 * (size_t)T);
        int ok = qbuf && acc && ml && sbuf && rows;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            if (!ok) continue;
            float *m = ml, *l = ml + H;
            int c = (int)(task % nchunks);
            int r = (int)(task / nchunks);
            int ctx = context_lens[r];
            int t0 = c * chunk_tokens;
            int t1 = t0 + chunk_tokens < ctx ? t0 + chunk_tokens : ctx;
            for (int h = 0; h < H; h++)
                for (int x = 0; x < d; x++)
                    qbuf[h * d + x] = scale * load(q, io_dtype, ((int64_t)r * H + h) * d + x);
            if (t0 >= t1) { /* this row is shorter than the chunk: an empty partial */
                for (int h = 0; h < H; h++) {
                    m[h] = -INFINITY;
                    l[h] = 0.f;
                    memset(acc + (size_t)h * d, 0, sizeof(float) * d);
                }
            } else {
                attend(qbuf, G, kvh, (const char *)k_cache, (const char *)v_cache, cache_dtype,
                       block_tables + (int64_t)r * max_blocks, bs, d, t0, t1, m, l, acc, sbuf, T,
                       rows, rows + T);
            }
            if (nchunks == 1) {
                for (int h = 0; h < H; h++) {
                    float inv = 1.f / l[h];
                    for (int x = 0; x < d; x++)
                        store(out, io_dtype, ((int64_t)r * H + h) * d + x, acc[h * d + x] * inv);
                }
            } else {
                float *p = part + per_task * task;
                for (int h = 0; h < H; h++) {
                    p[h * (d + 2)] = m[h];
                    p[h * (d + 2) + 1] = l[h];
                    memcpy(p + h * (d + 2) + 2, acc + (size_t)h * d, sizeof(float) * d);
                }
            }
        }
        free(qbuf);
        free(acc);
        free(ml);
        free(sbuf);
        free(rows);
    }
    if (failed) {
        free(part);
        return -1;
    }
    if (nchunks > 1) {
        merge_chunks(part, nchunks, per_task, out, io_dtype, R, H, d, num_threads);
        free(part);
    }
    return 0;
}
