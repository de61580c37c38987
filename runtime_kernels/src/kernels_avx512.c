/* x86_64 AVX-512 variant: the avx2 table (kernels_avx2.c) with a 12 x 32 packed GEMM tile, a
 * 16-lane fused stream kernel (hash_dot) and a 16-lane K=1 row decoder (hash_row). This file
 * alone is compiled with -mavx512f -mavx512dq -mavx512vl -mavx2 -mfma; it is only called after
 * cpuid + XGETBV say the CPU and OS support all of them (kernels.c). Elsewhere it compiles to nothing. */
#include "internal.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(EP_WITH_AVX2) && defined(EP_WITH_AVX512) && \
    defined(__AVX512F__)
#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* ---- packed GEMM: gemm_simd.h's 12 x 32 broadcast-FMA register tile (24 zmm accumulators) over
 * 32-row panels, over simd.h's AVX-512 mapping */
#define EP_SIMD_AVX512 1
#define MR 12
#define GEMM_MASKED 1 /* measured: a separate full-panel path made GCC spill the 24 accumulators, 6% slower */
#define KC 256 /* column block: a 256 x 32 panel slice (32 KB) stays in L1 while the rows of X pass */
#include "gemm_simd.h"

static void gemm_pack_avx512(int64_t rows, int64_t cols, const float *W, float *Wp) {
    ep_gemm_pack_avx2(NR, rows, cols, W, Wp);
}

static void gemm_avx512(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                        const float *bias, float *Y, int64_t ldy) {
    gemm_simd(N, rows, cols, X, Wp, bias, Y, ldy);
}

/* XXH32 tail of the keys (i, j..j+15), jp = j * P3 (the head is the per-row constant) */
AI __m512i xxh_tail16_jp(__m512i head, __m512i jp) {
    __m512i h = _mm512_mullo_epi32(_mm512_rol_epi32(_mm512_add_epi32(head, jp), 17), _mm512_set1_epi32((int)EP_P4));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)EP_P2));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)EP_P3));
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}

/* h mod nb on 8 lanes, exact for every 32-bit h and nb < 2^31: the avx2 argument unchanged
 * (there h + 0.5 is formed from the signed h ^ 2^31 plus 2^31 + 0.5, here from the unsigned
 * conversion; both give the same exact double d = h + 0.5). v = d/nb lies at least 0.5/nb from
 * any integer and fl(d * fl(1/nb)) is within v * 2^-52 < 2^-20/nb of v, so floor() gives
 * floor(h/nb) exactly; d - q*nb (exact, fnmadd) is r + 0.5 and truncates to r. */
AI __m256i mod8(__m256i h, __m512d nb, __m512d inv) {
    __m512d d = _mm512_add_pd(_mm512_cvtepu32_pd(h), _mm512_set1_pd(0.5));
    __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(d, inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    return _mm512_cvttpd_epi32(_mm512_fnmadd_pd(q, nb, d));
}
AI __m512i mod16(__m512i h, __m512d nb, __m512d inv) {
    __m256i lo = mod8(_mm512_castsi512_si256(h), nb, inv);
    __m256i hi = mod8(_mm512_extracti64x4_epi64(h, 1), nb, inv);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

typedef struct hctx {
    __m512i mask, smask;
    __m512d nb, inv;
    int pow2;
} hctx;

AI hctx hctx_make(const ep_hcfg *c) {
    hctx x;
    x.pow2 = (c->nb & (c->nb - 1)) == 0;
    x.mask = _mm512_set1_epi32((int)(c->nb - 1));
    x.smask = _mm512_set1_epi32(c->sgn ? (int)0x80000000u : 0);
    x.nb = _mm512_set1_pd((double)c->nb);
    x.inv = _mm512_set1_pd(1.0 / (double)c->nb);
    return x;
}

/* signed bucket values for 16 hashes; lanes outside m are 0 and not loaded */
AI __m512 lookup16(const int POW2, const float *bk, const hctx *x, __m512i h, __mmask16 m) {
    __m512i idx = POW2 ? _mm512_and_si512(h, x->mask) : mod16(h, x->nb, x->inv);
    __m512 v = m == 0xFFFF ? _mm512_i32gather_ps(idx, bk, 4)
                           : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, bk, 4);
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_and_si512(h, x->smask)));
}

AI __mmask16 tail16(int64_t r) { return r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1u); }

/* ---- K = 1 without recon: V[i, j] is one signed bucket, so decoding is exact (bit-equal to ref) */
AI void hash_row_k1(const int POW2, const ep_hcfg *c, const hctx *x, uint32_t i, int64_t cols, float *out) {
    const __m512i head = _mm512_set1_epi32((int)ep_xxh_key_head(i, c->seed));
    const __m512i step = _mm512_set1_epi32((int)(16u * EP_P3));
    __m512i jp = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                    _mm512_set1_epi32((int)EP_P3));
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16, jp = _mm512_add_epi32(jp, step))
        _mm512_storeu_ps(out + j, lookup16(POW2, c->buckets, x, xxh_tail16_jp(head, jp), 0xFFFF));
    if (j < cols) {
        const __mmask16 m = tail16(cols - j);
        _mm512_mask_storeu_ps(out + j, m, lookup16(POW2, c->buckets, x, xxh_tail16_jp(head, jp), m));
    }
}

static void hash_row_avx512(const ep_hcfg *c, uint32_t i, int64_t cols, float *out) {
    if (c->w1) { ep_hash_row_avx2(c, i, cols, out); return; } /* K hashes + recon MLP */
    const hctx x = hctx_make(c);
    if (x.pow2) hash_row_k1(1, c, &x, i, cols, out);
    else hash_row_k1(0, c, &x, i, cols, out);
}

/* ---- fused stream kernel, K = 1: y[n * ldy] = bias + X[n, :] . V[i, :] for n < NX. HD_U * 16
 * columns per step (HD_U independent 16-lane gathers in flight), the rows of X consumed from
 * registers. */
#define HD_U 2 /* 1 and 4 measured the same: the loop runs near the gather (load-port) limit */
AI void hash_dot_k1(const int NX, const int POW2, const ep_hcfg *c, const hctx *x, uint32_t i, int64_t cols,
                    const float *X, float bias, float *y, int64_t ldy) {
    const __m512i head = _mm512_set1_epi32((int)ep_xxh_key_head(i, c->seed));
    const __m512i step = _mm512_set1_epi32((int)(16u * HD_U * EP_P3));
    const __m512i step1 = _mm512_set1_epi32((int)(16u * EP_P3));
    __m512i jp[HD_U];
    jp[0] = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                               _mm512_set1_epi32((int)EP_P3));
    for (int u = 1; u < HD_U; u++) jp[u] = _mm512_add_epi32(jp[u - 1], step1);
    __m512 acc[HD_U][EP_HASH_DOT_MAXN];
    for (int u = 0; u < HD_U; u++)
        for (int a = 0; a < NX; a++) acc[u][a] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 * HD_U <= cols; j += 16 * HD_U) {
        __m512 v[HD_U];
        for (int u = 0; u < HD_U; u++) {
            v[u] = lookup16(POW2, c->buckets, x, xxh_tail16_jp(head, jp[u]), 0xFFFF);
            jp[u] = _mm512_add_epi32(jp[u], step);
        }
        for (int u = 0; u < HD_U; u++)
            for (int a = 0; a < NX; a++)
                acc[u][a] = _mm512_fmadd_ps(_mm512_loadu_ps(X + a * cols + j + 16 * u), v[u], acc[u][a]);
    }
    for (; j < cols; j += 16) { /* masked lanes: v = 0 and x = 0 (no 0 * inf) */
        const __mmask16 m = tail16(cols - j);
        __m512 v = lookup16(POW2, c->buckets, x, xxh_tail16_jp(head, jp[0]), m);
        jp[0] = _mm512_add_epi32(jp[0], step1);
        for (int a = 0; a < NX; a++) acc[0][a] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, X + a * cols + j), v, acc[0][a]);
    }
    for (int a = 0; a < NX; a++) {
        __m512 s = acc[0][a];
        for (int u = 1; u < HD_U; u++) s = _mm512_add_ps(s, acc[u][a]);
        y[a * ldy] = bias + _mm512_reduce_add_ps(s);
    }
}

#define HD_CASE(n)                                                                                  \
    case n:                                                                                         \
        if (x.pow2) hash_dot_k1(n, 1, c, &x, i, cols, X, bias, y, ldy);                             \
        else hash_dot_k1(n, 0, c, &x, i, cols, X, bias, y, ldy);                                    \
        break;

static void hash_dot_avx512(const ep_hcfg *c, uint32_t i, int64_t cols, const float *X, int N, float bias,
                            float *y, int64_t ldy) {
    if (c->w1) { ep_hash_dot_avx2(c, i, cols, X, N, bias, y, ldy); return; } /* K hashes + recon MLP */
    const hctx x = hctx_make(c);
    switch (N) {
        HD_CASE(1) HD_CASE(2) HD_CASE(3) HD_CASE(4)
    default: break;
    }
}

/* ---- sparse codebook rows: codebook_simd.h over the 16-lane mapping ---- */
#include "codebook_simd.h"

static void spcb_slice_avx512(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                              int64_t ldx, int64_t nb, float *acc, int64_t ldacc) {
    spcb_slice_simd(len, val, col, wide, xt, ldx, nb, acc, ldacc);
}

static void spcb_gemv_gather_avx512(const int32_t *len, const float *val, const void *col, int wide, const float *x,
                                    float *acc) {
    if (wide) spcb_gemv_by(len, val, col, 1, x, acc, 1);
    else spcb_gemv_by(len, val, col, 0, x, acc, 1);
}

/* ---- HyperWeight gather: hyper_simd.h over 16 lanes ---- */
#include "hyper_simd.h"

static void hyper_gather_avx512(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                                float *out) {
    hyper_gather_simd(count, stream, len, bits, k, table, out);
}

const ep_ops ep_ops_avx512 = {
    "avx512", gemm_avx512, ep_gemm_dot_avx2, gemm_pack_avx512, hash_row_avx512, hash_dot_avx512, ep_cfft_avx2,
    ep_rfft_post_avx2, ep_irfft_pre_avx2, ep_cmac_avx2, .cmac_rows = ep_cmac_rows_avx2,
    .spcb_slice = spcb_slice_avx512, .spcb_gemv_gather = spcb_gemv_gather_avx512, .hyper_gather = hyper_gather_avx512,
    .tile = { /* the avx2 kernels' tiles except the GEMM and the two hash kernels */
        .gemm_mr = MR, .gemm_nr = NR, /* 12 x 32 tile (24 zmm accumulators), 1..11-row tails */
        .gemm_kr = 1, .gemm_kc = KC,  /* one broadcast per row and column; N > MR: 256-column blocks */
        .dot_mr = 8, .dot_nr = 4, .dot_kr = 8, .dot_kc = 512, /* the avx2 dot kernel */
        .pack_kr = 8,                 /* the avx2 8 x 8 transposes */
        .pack_min_n = 8,              /* measured: dense 4 x 1024 x 1024 breaks even packed, 8 is 2.2x faster */
        .hash_row_lanes = 16,      /* K = 1: 16 lanes, masked tail; K > 1: the avx2 8-lane decoder */
        .hash_dot_lanes = 16 * HD_U, /* K = 1: HD_U 16-lane gathers per step, 16-lane tail */
        .fft_lanes = 4, .fft_min_m = EP_TW1_MIN, .split_lanes = 4, .cmac_lanes = 4,
        .cmac_rows_lanes = 8, .cmac_rows_mr = 4,
        .spcb_lanes = SPCB_LANES, .spcb_min_nb = SPCB_MIN_NB, /* 4 x 16 batch columns, 1-4 more; < 8: row by row */
        .hyper_lanes = HY_LANES,   /* 16 indices per step (gathers), byte-wise tail */
    },
};

#endif
