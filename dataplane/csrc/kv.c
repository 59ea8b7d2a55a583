/*
 * KV movement on the CPU tier (layout in simd.h): appending new tokens' K/V in place,
 * and gathering a row's paged past into the contiguous BNSH buffers ONNX Runtime's
 * GroupQueryAttention takes.
 */
#include "simd.h"

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
