/* The HyperWeight gather (ep_ops.hyper_gather) written once over a few per-ISA integer steps:
 * HY_LANES indices unpacked from the bit stream at once (one 32-bit load per index at its byte,
 * shifted by its bit offset and masked; a vector gather on AVX2 / AVX-512), then their table
 * points copied out (a float gather for k = 1, a 64-bit gather for k = 2, plain copies for k = 3, 4).
 * No float arithmetic: the values are the table's bits. The tail, where a 32-bit load would read
 * past the stream, reads byte by byte. The including variant file wraps hyper_gather_simd. */
#ifndef EDGEPACK_HYPER_SIMD_H
#define EDGEPACK_HYPER_SIMD_H

#include <string.h>

#include "internal.h"

#if defined(EP_SIMD_AVX512)
#include <immintrin.h>
#define HY_LANES 16
/* v[0 .. 16): the indices whose bits start at bit `shift` of p + i*bits (shift < 8) */
static inline __attribute__((always_inline)) void hy_unpack(const uint8_t *p, int shift, int bits, uint32_t *v) {
    const __m512i off = _mm512_add_epi32(_mm512_set1_epi32(shift),
                                         _mm512_mullo_epi32(_mm512_set1_epi32(bits),
                                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                              12, 13, 14, 15)));
    const __m512i words = _mm512_i32gather_epi32(_mm512_srli_epi32(off, 3), (const void *)p, 1);
    const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(words, _mm512_and_si512(off, _mm512_set1_epi32(7))),
                                         _mm512_set1_epi32((int)((1u << bits) - 1u)));
    _mm512_storeu_si512((void *)v, idx);
}
static inline __attribute__((always_inline)) void hy_gather1(const float *t, const uint32_t *v, float *o) {
    _mm512_storeu_ps(o, _mm512_i32gather_ps(_mm512_loadu_si512((const void *)v), t, 4));
}
static inline __attribute__((always_inline)) void hy_gather2(const float *t, const uint32_t *v, float *o) {
    _mm512_storeu_pd((double *)o, _mm512_i32gather_pd(_mm256_loadu_si256((const __m256i *)v), (const void *)t, 8));
    _mm512_storeu_pd((double *)(o + 16),
                     _mm512_i32gather_pd(_mm256_loadu_si256((const __m256i *)(v + 8)), (const void *)t, 8));
}
#elif defined(__AVX2__)
#include <immintrin.h>
#define HY_LANES 8
static inline __attribute__((always_inline)) void hy_unpack(const uint8_t *p, int shift, int bits, uint32_t *v) {
    const __m256i off = _mm256_add_epi32(_mm256_set1_epi32(shift),
                                         _mm256_mullo_epi32(_mm256_set1_epi32(bits),
                                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256i words = _mm256_i32gather_epi32((const int *)(const void *)p, _mm256_srli_epi32(off, 3), 1);
    const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(words, _mm256_and_si256(off, _mm256_set1_epi32(7))),
                                         _mm256_set1_epi32((int)((1u << bits) - 1u)));
    _mm256_storeu_si256((__m256i *)v, idx);
}
static inline __attribute__((always_inline)) void hy_gather1(const float *t, const uint32_t *v, float *o) {
    _mm256_storeu_ps(o, _mm256_i32gather_ps(t, _mm256_loadu_si256((const __m256i *)v), 4));
}
static inline __attribute__((always_inline)) void hy_gather2(const float *t, const uint32_t *v, float *o) {
    const double *d = (const double *)(const void *)t;
    _mm256_storeu_pd((double *)(void *)o, _mm256_i32gather_pd(d, _mm_loadu_si128((const __m128i *)v), 8));
    _mm256_storeu_pd((double *)(void *)(o + 8), _mm256_i32gather_pd(d, _mm_loadu_si128((const __m128i *)(v + 4)), 8));
}
#elif defined(__aarch64__) || (defined(__arm__) && defined(__ARM_NEON))
#include <arm_neon.h>
#define HY_LANES 4
static inline __attribute__((always_inline)) void hy_unpack(const uint8_t *p, int shift, int bits, uint32_t *v) {
    uint32_t w[4];
    int32_t sh[4];
    for (int i = 0; i < 4; i++) {
        const int off = shift + i * bits;
        memcpy(&w[i], p + (off >> 3), 4); /* little-endian: the byte order the stream is read in */
        sh[i] = -(off & 7);
    }
    const uint32x4_t idx = vandq_u32(vshlq_u32(vld1q_u32(w), vld1q_s32(sh)), vdupq_n_u32((1u << bits) - 1u));
    vst1q_u32(v, idx);
}
static inline __attribute__((always_inline)) void hy_gather1(const float *t, const uint32_t *v, float *o) {
    float32x4_t x = vld1q_dup_f32(t + v[0]);
    x = vld1q_lane_f32(t + v[1], x, 1);
    x = vld1q_lane_f32(t + v[2], x, 2);
    x = vld1q_lane_f32(t + v[3], x, 3);
    vst1q_f32(o, x);
}
static inline __attribute__((always_inline)) void hy_gather2(const float *t, const uint32_t *v, float *o) {
    vst1q_f32(o, vcombine_f32(vld1_f32(t + 2 * (size_t)v[0]), vld1_f32(t + 2 * (size_t)v[1])));
    vst1q_f32(o + 4, vcombine_f32(vld1_f32(t + 2 * (size_t)v[2]), vld1_f32(t + 2 * (size_t)v[3])));
}
#else
#error "hyper_simd.h: include it from an AVX2, AVX-512 or NEON variant file"
#endif

static void hyper_gather_simd(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                              float *out) {
    uint32_t v[HY_LANES];
    int64_t m = 0;
    /* a step's last load is 4 bytes at byte ((m + HY_LANES - 1)*bits) >> 3 */
    for (; m + HY_LANES <= count && (((m + HY_LANES - 1) * bits) >> 3) + 4 <= len; m += HY_LANES) {
        const int64_t bit = m * bits;
        hy_unpack(stream + (bit >> 3), (int)(bit & 7), bits, v);
        float *o = out + m * k;
        switch (k) {
        case 1: hy_gather1(table, v, o); break;
        case 2: hy_gather2(table, v, o); break;
        default:
            for (int i = 0; i < HY_LANES; i++) memcpy(o + i * k, table + (size_t)v[i] * (size_t)k, sizeof(float) * (size_t)k);
            break;
        }
    }
    for (; m < count; m++) {
        const float *p = table + (size_t)ep_hyper_index(stream, len, m, bits) * (size_t)k;
        for (int j = 0; j < k; j++) out[m * k + j] = p[j];
    }
}

#endif
