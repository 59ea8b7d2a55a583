/*
 * APEX CPU kernels: paged decode attention over the CPU KV tier, KV append, a gather
 * into contiguous buffers (for the ONNX Runtime path), and the sequence counters of the
 * shared-memory data plane. Plain C with OpenMP, called through ctypes (no GIL held).
 *
 * CPU tier layout, per layer: V as [num_blocks][kv_heads][block_size][d] and K transposed
 * within each block, [num_blocks][kv_heads][d][block_size]: one head's block is one
 * contiguous region either way (streamed), and K's tokens lie in vector lanes, so scores
 * are plain vector FMAs with no horizontal sums.
 * Element types: 0 = float32, 1 = float16, 2 = bfloat16.
 */
#include <errno.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { F32 = 0, F16 = 1, BF16 = 2 };
#define TILE 64
#define MAX_GROUP 64   /* query heads per KV head */
#define MAX_D 512

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float load(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case F16: return (float)((const _Float16 *)p)[i];
    case BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static inline void store(void *p, int dtype, int64_t i, float v) {
    switch (dtype) {
    case F16: ((_Float16 *)p)[i] = (_Float16)v; break;
    case BF16: ((uint16_t *)p)[i] = f32_to_bf16(v); break;
    default: ((float *)p)[i] = v;
    }
}

static inline int elem_size(int dtype) { return dtype == F32 ? 4 : 2; }

/* dst[0..n) = float(src[0..n)): the one place a cache row is widened. */
static inline void widen(float *dst, const void *src, int dtype, int n) {
    if (dtype == F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (dtype == F16) {
        const _Float16 *s = (const _Float16 *)src;
        int i = 0;
#ifdef __F16C__
        for (; i + 8 <= n; i += 8) /* vcvtph2ps: 8 halves per instruction */
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#endif
        for (; i < n; i++) dst[i] = (float)s[i];
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    }
}

static inline int64_t cache_offset(int64_t block, int head, int off, int kvh, int bs, int d) {
    return ((block * kvh + head) * (int64_t)bs + off) * d;
}

/* Write new K/V rows ([n, kvh, d] in in_dtype) into the paged cache at the given slots. */
void apex_append_kv(void *k_cache, void *v_cache, int cache_dtype, const void *k, const void *v,
                    int in_dtype, const int64_t *slots, int n, int kvh, int d, int bs) {
    for (int r = 0; r < n; r++) {
        int64_t block = slots[r] / bs;
        int off = (int)(slots[r] % bs);
        for (int h = 0; h < kvh; h++) {
            int64_t kdst = cache_offset(block, h, 0, kvh, bs, d) + off; /* K: [d][bs] */
            int64_t vdst = cache_offset(block, h, off, kvh, bs, d);     /* V: [bs][d] */
            int64_t src = ((int64_t)r * kvh + h) * d;
            for (int i = 0; i < d; i++) {
                store(k_cache, cache_dtype, kdst + (int64_t)i * bs, load(k, in_dtype, src + i));
                store(v_cache, cache_dtype, vdst + i, load(v, in_dtype, src + i));
            }
        }
    }
}

/* Pointers to the rows of tokens [t0, t0+n) of one KV head, in place, any storage dtype:
 * rows of a block are contiguous (layout above). */
static void tile_rows(const char **rows, const void *cache, int dtype, const int32_t *table,
                      int j, int kvh, int bs, int d, int t0, int n) {
    const int esz = elem_size(dtype);
    for (int i = 0; i < n;) {
        int t = t0 + i;
        int in_block = bs - t % bs;
        int run = n - i < in_block ? n - i : in_block;
        int64_t off = cache_offset(table[t / bs], j, t % bs, kvh, bs, d);
        for (int r = 0; r < run; r++)
            rows[i + r] = (const char *)cache + (off + (int64_t)r * d) * esz;
        i += run;
    }
}

/* A prefetch GCC cannot delete (it drops loops of __builtin_prefetch as side-effect free). */
static inline void prefetch_line(const char *p) {
#if defined(__x86_64__)
    __asm__ volatile("prefetcht0 %0" : : "m"(*p));
#else
    __builtin_prefetch(p, 0, 3);
#endif
}

/* Vectors of VW floats (GCC vector extensions): 16 lanes where AVX-512 is enabled,
 * else 8 (AVX2 on x86; pairs of NEON registers on Arm). */
#ifdef __AVX512F__
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf ldv(const float *p) {
    vf r;
    memcpy(&r, p, sizeof r); /* unaligned load */
    return r;
}

static inline void stv(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* VW elements of the cache at p (any storage dtype) as floats, converted in registers. */
static inline vf ldx(const char *p, int dtype) {
    if (dtype == F32) return ldv((const float *)p);
#if defined(__AVX512F__) && VW == 16
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (dtype == F16) return (vf)_mm512_cvtph_ps(h);
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#elif defined(__AVX2__) && defined(__F16C__) && VW == 8
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (dtype == F16) return (vf)_mm256_cvtph_ps(h);
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = load(p, dtype, i);
    return r;
#endif
}

static inline float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

/* exp(x) for x <= 0 (softmax after the max is taken out): 2^n * 2^f with f in
 * [-0.5, 0.5], 2^f by its degree-6 Taylor series in f*ln2 (relative error ~1e-7). */
static inline vf exp_neg(vf x) {
    const vf lo = (vf){0} - 87.0f, magic = (vf){0} + 12582912.0f; /* 1.5 * 2^23 */
    vi below = x < lo;
    x = (vf)(((vi)x & ~below) | ((vi)lo & below));
    vf t = x * 1.44269504f;
    vf nf = (t + magic) - magic; /* round to nearest */
    vf f = (t - nf) * 0.69314718f;
    vf p = 1.0f + f * (1.0f + f * (0.5f + f * (1.6666667e-1f + f * (4.1666667e-2f +
           f * (8.3333333e-3f + f * 1.3888889e-3f)))));
    vi n = (vi)(nf + magic) - (vi)magic;
    return p * (vf)((n + 127) << 23);
}

/* Scores of HB heads for tokens [off, off+run) of one block, K transposed ([d][bs]):
 * tokens in vector lanes, one K load and HB broadcast FMAs per dimension. bs % VW == 0. */
static inline __attribute__((always_inline)) void qk_tblock(const float *q, int HB, int d,
                                                              const char *kt, int dtype, int bs,
                                                              int off,
                                                              int run, float (*s)[TILE], int i0,
                                                              const char *pf0, const char *pf1,
                                                              int64_t pf_bytes) {
    /* Paced prefetch: while this block's scores are computed, the regions the next
     * steps read (pf0, pf1: pf_bytes each) are asked for a slice per dimension, so the
     * fills overlap the arithmetic instead of stalling it in one burst. */
    const int64_t step = (pf_bytes + d - 1) / d;
    for (int v0 = off - off % VW; v0 < off + run; v0 += VW) {
        vf acc[4];
        for (int h = 0; h < HB; h++) acc[h] = (vf){0};
        for (int x = 0; x < d; x++) {
            if (pf0 && v0 == off - off % VW) {
                for (int64_t o = x * step; o < (x + 1) * step && o < pf_bytes; o += 64) {
                    prefetch_line(pf0 + o);
                    if (pf1) prefetch_line(pf1 + o);
                }
            }
            vf kv = ldx(kt + ((size_t)x * bs + v0) * elem_size(dtype), dtype);
            for (int h = 0; h < HB; h++) acc[h] += q[(size_t)h * d + x] * kv;
        }
        int lo = v0 < off ? off : v0, hi = v0 + VW < off + run ? v0 + VW : off + run;
        for (int h = 0; h < HB; h++)
            for (int l = lo; l < hi; l++) s[h][i0 + l - off] = acc[h][l - v0];
    }
}

/* acc[h][x..x+NV*VW) += sum_i p[h][i] * v_i[..] for HB heads: NV*HB register
 * accumulators held across the whole tile; per token NV V loads and NV*HB FMAs. */
static inline __attribute__((always_inline)) void pv_block(float *acc, int HB, int NV, int d,
                                                             const char *const *v, int dtype,
                                                             int n, float (*p)[TILE]) {
    const int esz = elem_size(dtype);
    for (int x = 0; x < d; x += NV * VW) {
        vf a[4][2];
        for (int h = 0; h < HB; h++)
            for (int u = 0; u < NV; u++) a[h][u] = ldv(acc + (size_t)h * d + x + u * VW);
        for (int i = 0; i < n; i++) {
            vf vv[2];
            for (int u = 0; u < NV; u++) vv[u] = ldx(v[i] + (size_t)(x + u * VW) * esz, dtype);
            for (int h = 0; h < HB; h++) {
                vf pb = (vf){0} + p[h][i]; /* broadcast */
                for (int u = 0; u < NV; u++) a[h][u] += pb * vv[u];
            }
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

/*
 * One task: all H = J x G query heads of one row against tokens [t0, t1) of its KV.
 * Online softmax over tiles of TILE tokens. Within a tile, block by block, every KV
 * head's part of the block is read in turn, so K (then V) is streamed as each block's
 * one contiguous region; each K row serves the G query heads of its KV head (GQA).
 * Arithmetic is register-blocked vector FMAs (d % VW == 0); 16-bit storage is
 * converted in registers as it is loaded. Leaves per head the running max m, sum l and
 * unnormalised acc for the caller to finish or merge. s: H x TILE floats of scratch.
 */
static void attend_heads(const float *q, /* [H][d], pre-scaled */ int G, int J,
                         const void *k_cache, const void *v_cache, int cache_dtype,
                         const int32_t *table, int bs, int d, int t0, int t1, float *m, float *l,
                         float *acc, float (*s)[TILE]) {
    const int H = J * G, kvh = J, esz = elem_size(cache_dtype);
    const char *rows[TILE];
    for (int h = 0; h < H; h++) {
        m[h] = -INFINITY;
        l[h] = 0.f;
        memset(acc + (size_t)h * d, 0, sizeof(float) * d);
    }
    for (int start = t0; start < t1; start += TILE) {
        int n = t1 - start < TILE ? t1 - start : TILE;
        for (int i = 0; i < n;) { /* scores, one block run at a time, every head */
            int t = start + i, off = t % bs;
            int run = n - i < bs - off ? n - i : bs - off;
            int has_next = (t / bs + 1) * bs < t1;
            for (int j = 0; j < J; j++) {
                int64_t base = cache_offset(table[t / bs], j, 0, kvh, bs, d);
                const char *kt = (const char *)k_cache + base * esz; /* [d][bs] */
                /* this block's V of head j (read after the scores) and the next block's K */
                const char *pf_v = (const char *)v_cache + base * esz;
                const char *pf_k = has_next ? (const char *)k_cache +
                    cache_offset(table[t / bs + 1], j, 0, kvh, bs, d) * esz : NULL;
                const float *qj = q + (size_t)j * G * d;
                float(*sj)[TILE] = s + (size_t)j * G;
                if (bs % VW == 0) {
#define QK(g0, HB)                                                                          \
    qk_tblock(qj + (size_t)(g0) * d, HB, d, kt, cache_dtype, bs, off, run, sj + (g0), i,     \
              (g0) == 0 ? pf_v : NULL, (g0) == 0 ? pf_k : NULL, (int64_t)bs * d * esz)
                    BY_HEAD_BLOCKS(G, QK);
#undef QK
                } else {
                    for (int g = 0; g < G; g++)
                        for (int o = off; o < off + run; o++) {
                            float a = 0.f;
                            for (int x = 0; x < d; x++)
                                a += qj[(size_t)g * d + x] *
                                     load(kt, cache_dtype, (int64_t)x * bs + o);
                            sj[g][i + o - off] = a;
                        }
                }
            }
            i += run;
        }
        for (int h = 0; h < H; h++) {
            float mt = m[h];
            for (int i = 0; i < n; i++) mt = s[h][i] > mt ? s[h][i] : mt;
            float c = expf(m[h] - mt);
            float *sh = s[h];
            float sum = 0.f;
            int i = 0;
            for (; i + VW <= n; i += VW) {
                vf e = exp_neg(ldv(sh + i) - mt);
                stv(sh + i, e);
                sum += hsum(e);
            }
            for (; i < n; i++) {
                sh[i] = expf(sh[i] - mt);
                sum += sh[i];
            }
            l[h] = l[h] * c + sum;
            float *ah = acc + (size_t)h * d;
            if (c != 1.f)
                for (int x = 0; x < d; x++) ah[x] *= c;
            m[h] = mt;
        }
        for (int j = 0; j < J; j++) { /* values: per head over the whole tile, so the
                                           accumulators stay in registers for TILE rows */
            tile_rows(rows, v_cache, cache_dtype, table, j, kvh, bs, d, start, n);
            float *aj = acc + (size_t)j * G * d;
            float(*sj)[TILE] = s + (size_t)j * G;
            if (d % (2 * VW) == 0) {
#define PV(g0, HB) pv_block(aj + (size_t)(g0) * d, HB, 2, d, rows, cache_dtype, n, sj + (g0))
                BY_HEAD_BLOCKS(G, PV);
#undef PV
            } else {
#define PV(g0, HB) pv_block(aj + (size_t)(g0) * d, HB, 1, d, rows, cache_dtype, n, sj + (g0))
                BY_HEAD_BLOCKS(G, PV);
#undef PV
            }
        }
    }
}

/*
 * Decode attention for R rows (one new query token each) over the paged CPU tier.
 * q, out: [R][H][d] in io_dtype. Each row attends to context_lens[r] tokens (the new
 * token's K/V already appended). Long contexts are split into chunks of chunk_tokens
 * (0: chosen so that there are at least 2 tasks per thread), merged afterwards.
 * Returns 0, or -1 on bad arguments / no memory.
 */
int apex_paged_decode_attention(const void *q, int io_dtype, const void *k_cache,
                                const void *v_cache, int cache_dtype, const int32_t *block_tables,
                                int max_blocks, const int32_t *context_lens, void *out, int R,
                                int H, int kvh, int d, int bs, float scale, int num_threads,
                                int chunk_tokens) {
    if (R <= 0) return 0;
    if (H % kvh || H / kvh > MAX_GROUP || d > MAX_D || d % VW || num_threads < 1) return -1;
    const int G = H / kvh;
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
        float(*sbuf)[TILE] = (float(*)[TILE])malloc(sizeof(float) * (size_t)H * TILE);
        int ok = qbuf && acc && ml && sbuf;
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
                attend_heads(qbuf, G, kvh, k_cache, v_cache, cache_dtype,
                             block_tables + (int64_t)r * max_blocks, bs, d, t0, t1, m, l, acc,
                             sbuf);
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
    }
    if (failed) {
        free(part);
        return -1;
    }

    if (nchunks > 1) {
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
        free(part);
    }
    return 0;
}

/*
 * Gather the first n_past[r] tokens of each row's paged K and V into contiguous
 * float32 buffers [R][kvh][max_seq][d] (BNSH, what ONNX Runtime's GQA takes as past).
 */
void apex_gather_kv_bnsh(const void *k_cache, const void *v_cache, int cache_dtype,
                         const int32_t *block_tables, int max_blocks, const int32_t *n_past,
                         float *k_out, float *v_out, int R, int kvh, int d, int bs, int max_seq,
                         int num_threads) {
    const int esz = elem_size(cache_dtype);
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads)
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < kvh; j++) {
            const int32_t *table = block_tables + (int64_t)r * max_blocks;
            float *kd = k_out + (((int64_t)r * kvh + j) * max_seq) * d;
            float *vd = v_out + (((int64_t)r * kvh + j) * max_seq) * d;
            for (int t = 0; t < n_past[r]; t += bs) {
                int n = n_past[r] - t < bs ? n_past[r] - t : bs;
                int64_t off = cache_offset(table[t / bs], j, 0, kvh, bs, d);
                for (int x = 0; x < d; x++) /* K is [d][bs] within the block */
                    for (int o = 0; o < n; o++)
                        kd[(int64_t)(t + o) * d + x] = load(k_cache, cache_dtype, off + (int64_t)x * bs + o);
                widen(vd + (int64_t)t * d, (const char *)v_cache + off * esz, cache_dtype, n * d);
            }
        }
    }
}

/* ---- data-plane sequence counters (in shared memory, shared between processes) ---- */

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
 * against. Returns the sum so the compiler cannot drop the reads. */
double apex_read_sum(const float *p, int64_t n, int num_threads) {
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static) num_threads(num_threads)
    for (int64_t i = 0; i < n; i += 16) {
        float s = 0.f;
        int64_t end = i + 16 < n ? i + 16 : n;
        for (int64_t j = i; j < end; j++) s += p[j];
        total += s;
    }
    return total;
}

int apex_abi_version(void) { return 1; }
