/*
 * Shared by the APEX CPU kernels: storage element types, the paged cache's offsets, and
 * the vector helpers the attention loops are written in (GCC vector extensions, so one
 * source serves AVX-512, AVX2 and NEON; x86 intrinsics only where they save instructions).
 *
 * CPU tier layout, per layer: V as [num_blocks][kv_heads][block_size][d] and K transposed
 * within each block, [num_blocks][kv_heads][d][block_size]: one head's block is one
 * contiguous region either way (streamed), and K's tokens lie in vector lanes, so scores
 * are plain vector FMAs with no horizontal sums.
 */
#ifndef APEX_SIMD_H
#define APEX_SIMD_H

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, F16 = 1, BF16 = 2 }; /* storage element types */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

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

static inline int64_t cache_offset(int64_t block, int head, int off, int kvh, int bs, int d) {
    return ((block * kvh + head) * (int64_t)bs + off) * d;
}

/* A prefetch into L2 that GCC cannot delete (it drops loops of __builtin_prefetch as side
 * effect free). L2, not L1: the regions asked for are read a few microseconds later, and
 * on the 4 KiB-paged tier the L2 requests keep more lines in flight (measured: random
 * 8 KiB reads at 23 GB/s with L2 prefetch against 18 GB/s into L1). */
static inline void prefetch_l2(const char *p) {
#if defined(__x86_64__)
    __asm__ volatile("prefetcht1 %0" : : "m"(*p));
#else
    __builtin_prefetch(p, 0, 2);
#endif
}

/* Vectors of VW floats: 16 lanes where AVX-512 is enabled, else 8 (AVX2 on x86; pairs of
 * NEON registers on Arm). */
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

ALWAYS_INLINE vf bcast(float x) {
#if defined(__AVX512F__) && VW == 16
    return (vf)_mm512_set1_ps(x);
#elif defined(__AVX__) && VW == 8
    return (vf)_mm256_set1_ps(x);
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = x;
    return r;
#endif
}

ALWAYS_INLINE vf vmax(vf a, vf b) {
    vi gt = a > b;
    return (vf)(((vi)a & gt) | ((vi)b & ~gt));
}

static inline float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

static inline float hmax(vf v) {
    float s = v[0];
    for (int i = 1; i < VW; i++) s = v[i] > s ? v[i] : s;
    return s;
}

/* VW elements of the cache at p as floats, converted in registers. DT is a constant at
 * every call site, so the branches fold away. */
ALWAYS_INLINE vf ldx(const char *p, const int DT) {
    if (DT == F32) return ldv((const float *)p);
#if defined(__AVX512F__) && VW == 16
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (DT == F16) return (vf)_mm512_cvtph_ps(h);
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#elif defined(__AVX2__) && defined(__F16C__) && VW == 8
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (DT == F16) return (vf)_mm256_cvtph_ps(h);
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = load(p, DT, i);
    return r;
#endif
}

/* exp(x) for x <= 0 (softmax after the max is taken out), exactly 0 below -87 (where
 * the true value is a denormal): 2^n * 2^f with f in [-0.5, 0.5], 2^f by its degree-6
 * Taylor series in f*ln2 (relative error ~1e-7). -inf (a masked score) gives 0. */
ALWAYS_INLINE vf exp_neg(vf x) {
    const vf lo = bcast(-87.0f), magic = bcast(12582912.0f); /* 1.5 * 2^23 */
    vi below = x < lo;
    x = (vf)(((vi)x & ~below) | ((vi)lo & below));
    vf t = x * 1.44269504f;
    vf nf = (t + magic) - magic; /* round to nearest */
    vf f = (t - nf) * 0.69314718f;
    vf p = 1.0f + f * (1.0f + f * (0.5f + f * (1.6666667e-1f + f * (4.1666667e-2f +
           f * (8.3333333e-3f + f * 1.3888889e-3f)))));
    vi n = (vi)(nf + magic) - (vi)magic;
    return (vf)((vi)(p * (vf)((n + 127) << 23)) & ~below);
}

#endif
