/* NEON variant for aarch64 and for 32-bit ARMv7 built with NEON (-mfpu=neon, armeabi-v7a):
 * NEON is baseline in both builds, so no run-time check is needed. */
#if defined(__aarch64__) || (defined(__arm__) && defined(__ARM_NEON))
#include <arm_neon.h>
#include <string.h>
#include "internal.h"

#define AI static inline __attribute__((always_inline))

/* the few A64-only intrinsics, with ARMv7 equivalents (no fused multiply-add without VFPv4) */
#if defined(__aarch64__)
#define FMA(a, b, c) vfmaq_f32(a, b, c)
#define FMA_N(a, b, s) vfmaq_n_f32(a, b, s)
#define HSUM(v) vaddvq_f32(v)
#else
#if defined(__ARM_FEATURE_FMA)
#define FMA(a, b, c) vfmaq_f32(a, b, c)
#else
#define FMA(a, b, c) vmlaq_f32(a, b, c)
#endif
#define FMA_N(a, b, s) FMA(a, b, vdupq_n_f32(s))
AI float HSUM(float32x4_t v) {
    float32x2_t p = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(p, p), 0);
}
#endif

/* ---- dot-product GEMM on unpacked W (small N, where packing W would cost more than it saves):
 * NX rows of X against NW rows of W, 4 lanes + scalar tail */
AI void dot_tile(const int NX, const int NW, int64_t cols, const float *x, const float *w,
             const float *bias, float *y, int64_t ldy) {
    float32x4_t acc[4][4];
    for (int a = 0; a < NX; a++)
        for (int b = 0; b < NW; b++) acc[a][b] = vdupq_n_f32(0.0f);
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
        float32x4_t xv[4], wv[4];
        for (int a = 0; a < NX; a++) xv[a] = vld1q_f32(x + a * cols + c);
        for (int b = 0; b < NW; b++) wv[b] = vld1q_f32(w + b * cols + c);
        for (int a = 0; a < NX; a++)
            for (int b = 0; b < NW; b++) acc[a][b] = FMA(acc[a][b], xv[a], wv[b]);
    }
    for (int a = 0; a < NX; a++)
        for (int b = 0; b < NW; b++) {
            float s = HSUM(acc[a][b]);
            for (int64_t t = c; t < cols; t++) s += x[a * cols + t] * w[b * cols + t];
            y[a * ldy + b] = s + (bias ? bias[b] : 0.0f);
        }
}

static void gemm_dot_neon(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                          const float *bias, float *Y, int64_t ldy) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 2 <= rows; r += 2) dot_tile(4, 2, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
        for (; r < rows; r++) dot_tile(4, 1, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
    }
    for (; n < N; n++) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) dot_tile(1, 4, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
        for (; r < rows; r++) dot_tile(1, 1, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
    }
}

/* ---- packed GEMM: gemm_simd.h's MR x 8 broadcast-FMA register tile over 8-row panels
 * (ep_gemm_pack(8)), over simd.h's NEON mapping: 6 x 8 (12 accumulators of the 32 registers) on
 * aarch64, 4 x 8 (8 of 16) on ARMv7 */
#if defined(__aarch64__)
#define MR 6
#else
#define MR 4
#endif
#define KC 256 /* column block: a 256 x 8 panel slice (8 KB) stays in L1 while the rows of X pass */
#include "gemm_simd.h"

static void gemm_pack_neon(int64_t rows, int64_t cols, const float *W, float *Wp) { ep_gemm_pack(NR, rows, cols, W, Wp); }

static void gemm_neon(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                      const float *bias, float *Y, int64_t ldy) {
    gemm_simd(N, rows, cols, X, Wp, bias, Y, ldy);
}

AI uint32x4_t rotl17(uint32x4_t x) { return vsriq_n_u32(vshlq_n_u32(x, 17), x, 15); }

AI uint32x4_t xxh_tail4(uint32x4_t head, uint32x4_t j) {
    uint32x4_t h = vmlaq_u32(head, j, vdupq_n_u32(EP_P3));
    h = vmulq_u32(rotl17(h), vdupq_n_u32(EP_P4));
    h = veorq_u32(h, vshrq_n_u32(h, 15));
    h = vmulq_u32(h, vdupq_n_u32(EP_P2));
    h = veorq_u32(h, vshrq_n_u32(h, 13));
    h = vmulq_u32(h, vdupq_n_u32(EP_P3));
    return veorq_u32(h, vshrq_n_u32(h, 16));
}

AI float32x4_t lookup(const ep_hcfg *c, uint32x4_t h) {
    uint32_t hv[4];
    float v[4];
    vst1q_u32(hv, h);
    if ((c->nb & (c->nb - 1)) == 0)
        for (int t = 0; t < 4; t++) v[t] = c->buckets[hv[t] & (c->nb - 1)];
    else
        for (int t = 0; t < 4; t++) v[t] = c->buckets[hv[t] % c->nb];
    float32x4_t r = vld1q_f32(v);
    if (c->sgn) r = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(r), vandq_u32(h, vdupq_n_u32(0x80000000u))));
    return r;
}

static void hash_row_neon(const ep_hcfg *c, uint32_t i, int64_t cols, float *out) {
    uint32x4_t head[64];
    float32x4_t z[64];
    static const uint32_t j0[4] = {0, 1, 2, 3};
    for (int k = 0; k < c->k; k++) head[k] = vdupq_n_u32(ep_xxh_key_head(i, c->seed + (uint32_t)k));
    uint32x4_t jv = vld1q_u32(j0);
    for (int64_t j = 0; j < cols; j += 4, jv = vaddq_u32(jv, vdupq_n_u32(4))) {
        float32x4_t y;
        if (!c->w1) {
            y = lookup(c, xxh_tail4(head[0], jv));
        } else {
            for (int k = 0; k < c->k; k++) z[k] = lookup(c, xxh_tail4(head[k], jv));
            y = vdupq_n_f32(c->b2);
            for (int hh = 0; hh < c->h; hh++) {
                float32x4_t a = vdupq_n_f32(c->b1[hh]);
                for (int k = 0; k < c->k; k++) a = FMA_N(a, z[k], c->w1[hh * c->k + k]);
                y = FMA_N(y, vmaxq_f32(a, vdupq_n_f32(0.0f)), c->w2[hh]);
            }
        }
        if (j + 4 <= cols) vst1q_f32(out + j, y);
        else {
            float t[4];
            vst1q_f32(t, y);
            memcpy(out + j, t, sizeof(float) * (size_t)(cols - j));
        }
    }
}

/* ---- FFT: the shared micro-kernels (fft_simd.h) over simd.h's NEON mapping ---- */
#include "fft_simd.h"

static void cfft_neon(int64_t m, const float *tw, const float *src, float *x, float *tmp, int inv) {
    fft_cfft(m, tw, src, x, tmp, inv);
}
static void rfft_post_neon(int64_t m, const float *rt, float *X) { fft_rfft_post(m, rt, X); }
static void irfft_pre_neon(int64_t m, const float *rt, const float *X, float *Z) { fft_irfft_pre(m, rt, X, Z); }
static void cmac_neon(int64_t m, const float *a, const float *b, float *acc) { fft_cmac(m, a, b, acc); }
static void cmac_rows_neon(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                           int64_t ldb, float *acc, int64_t ldacc) {
    fft_cmac_rows(m, nj, rows, a, lda, B, ldb, acc, ldacc);
}

/* ---- sparse codebook rows (codebook_simd.h) ---- */
#include "codebook_simd.h"

static void spcb_slice_neon(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                            int64_t ldx, int64_t nb, float *acc, int64_t ldacc) {
    spcb_slice_simd(len, val, col, wide, xt, ldx, nb, acc, ldacc);
}

/* ---- HyperWeight gather (hyper_simd.h): 4-lane unpack, lane loads ---- */
#include "hyper_simd.h"

static void hyper_gather_neon(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                              float *out) {
    hyper_gather_simd(count, stream, len, bits, k, table, out);
}

const ep_ops ep_ops_neon = {
    "neon", gemm_neon, gemm_dot_neon, gemm_pack_neon, hash_row_neon, NULL, cfft_neon, rfft_post_neon, irfft_pre_neon, cmac_neon,
    .cmac_rows = cmac_rows_neon, .spcb_slice = spcb_slice_neon, .hyper_gather = hyper_gather_neon,
    .tile = {
        .gemm_mr = MR, .gemm_nr = NR, /* 6 x 8 (aarch64) or 4 x 8 (ARMv7) tile, 1..MR-1-row tails */
        .gemm_kr = 1,                 /* one broadcast per row and column */
        .gemm_kc = KC,                /* N > MR: columns in blocks of 256, accumulated into Y */
        .dot_mr = 4, .dot_nr = 4,     /* dot tiles 4x2, 1x4, then 4x1 / 1x1 tails */
        .dot_kr = 4,                  /* 4 lanes, scalar tail */
        .dot_kc = 0,                  /* no column blocking */
        .pack_kr = 1,                 /* the portable packing */
        .pack_min_n = 32,             /* not measured on hardware: the x86 avx2 figure */
        .hash_row_lanes = 4,        /* xxh_tail4 + scalar lookups, partial store of the tail */
        .hash_dot_lanes = 0,        /* no fused kernel: the core decodes + gemm */
        .fft_lanes = EP_VC,         /* fft_simd.h over simd.h: 2 complex per float32x4_t */
        .fft_min_m = EP_TW1_MIN,    /* fft_radix4_first needs m >= 16; later stages have s >= 4 */
        .split_lanes = EP_VC,       /* bins k, k+1 and their mirrors while 2k + 2 < m */
        .cmac_lanes = EP_VC,        /* 2 complex per step, scalar tail */
        .cmac_rows_lanes = 2 * EP_VC, /* 4 complex per step, then 2, then scalar */
        .cmac_rows_mr = 4,            /* 4 rows x 2 vectors of sums in registers, 2- and 1-row tails */
        .spcb_lanes = SPCB_LANES,     /* 4 x 4 batch columns per entry, then 1-4 vectors, the last partial */
        .spcb_min_nb = SPCB_MIN_NB,   /* one row of X: 16 rows of W per step, lane loads */
        .hyper_lanes = HY_LANES,      /* 4 indices per step, lane loads, byte-wise tail */
    },
};
#endif /* __aarch64__ || ARMv7 NEON */
