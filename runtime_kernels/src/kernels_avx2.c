/* x86_64 AVX2 + FMA variant. This file alone is compiled with -mavx2 -mfma; it is only
 * called after cpuid says the CPU has both. The ep_*_avx2 functions are shared with the
 * avx512 variant (kernels_avx512.c), which only replaces the fused stream kernel. */
#include <immintrin.h>
#include <string.h>
#include "internal.h"

#define AI static inline __attribute__((always_inline))

AI float hsum(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

static const int32_t k_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
AI __m256i tail_mask(int64_t r) { return _mm256_loadu_si256((const __m256i *)(k_mask + 8 - r)); }

/* ---- dot-product GEMM on unpacked W (small N, where packing W would cost more than it saves):
 * NX rows of X against NW rows of W, dot products over len columns (8 lanes + masked tail);
 * y = (acc ? y : bias) + dot */
AI void dot_tile(const int NX, const int NW, int64_t len, const float *x, int64_t ldx, const float *w,
             int64_t ldw, const float *bias, float *y, int64_t ldy, int acc_y) {
    __m256 acc[8][4];
    for (int a = 0; a < NX; a++)
        for (int b = 0; b < NW; b++) acc[a][b] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= len; c += 8) {
        __m256 xv[8], wv[4];
        for (int a = 0; a < NX; a++) xv[a] = _mm256_loadu_ps(x + a * ldx + c);
        for (int b = 0; b < NW; b++) wv[b] = _mm256_loadu_ps(w + b * ldw + c);
        for (int a = 0; a < NX; a++)
            for (int b = 0; b < NW; b++) acc[a][b] = _mm256_fmadd_ps(xv[a], wv[b], acc[a][b]);
    }
    if (c < len) {
        __m256i m = tail_mask(len - c);
        __m256 xv[8], wv[4];
        for (int a = 0; a < NX; a++) xv[a] = _mm256_maskload_ps(x + a * ldx + c, m);
        for (int b = 0; b < NW; b++) wv[b] = _mm256_maskload_ps(w + b * ldw + c, m);
        for (int a = 0; a < NX; a++)
            for (int b = 0; b < NW; b++) acc[a][b] = _mm256_fmadd_ps(xv[a], wv[b], acc[a][b]);
    }
    for (int a = 0; a < NX; a++)
        for (int b = 0; b < NW; b++) {
            float base = acc_y ? y[a * ldy + b] : (bias ? bias[b] : 0.0f);
            y[a * ldy + b] = base + hsum(acc[a][b]);
        }
}

#define DOT_KC 512 /* column block: 8 rows of X x DOT_KC floats stay in L1 while W streams */

void ep_gemm_dot_avx2(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                      const float *bias, float *Y, int64_t ldy) {
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) { /* W streamed once per 8 rows of X */
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        for (int64_t c0 = 0; c0 < cols; c0 += DOT_KC) {
            const int64_t len = cols - c0 < DOT_KC ? cols - c0 : DOT_KC;
            for (int64_t r = 0; r < rows; r++)
                dot_tile(8, 1, len, x + c0, cols, W + r * cols + c0, cols, bias ? bias + r : NULL, y + r, ldy, c0 > 0);
        }
    }
    for (; n + 4 <= N; n += 4) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 2 <= rows; r += 2) dot_tile(4, 2, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
        for (; r < rows; r++) dot_tile(4, 1, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
    }
    for (; n < N; n++) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) dot_tile(1, 4, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
        for (; r < rows; r++) dot_tile(1, 1, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
    }
}

/* ---- packed GEMM: gemm_simd.h's 6 x 16 broadcast-FMA register tile (12 accumulators) over
 * 16-row panels, over simd.h's AVX2 mapping */
#define MR 6
#define KC 256 /* column block: a 256 x 16 panel slice (16 KB) stays in L1 while the rows of X pass */
#include "gemm_simd.h"

/* r[t] = column t of the 8 x 8 block whose rows are r[0..8) */
AI void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

void ep_gemm_pack_avx2(int nr, int64_t rows, int64_t cols, const float *W, float *Wp) {
    for (int64_t r0 = 0; r0 < rows; r0 += nr) {
        const float *w = W + r0 * cols;
        float *p = Wp + r0 * cols;
        if (rows - r0 < nr) { ep_gemm_pack(nr, rows - r0, cols, w, p); break; } /* zero-padded panel */
        for (int g = 0; g < nr; g += 8) { /* 8 rows of W at a time: 8 source lines live in L1 */
            int64_t k = 0;
            for (; k + 8 <= cols; k += 8) {
                __m256 v[8];
                for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(w + (g + j) * cols + k);
                transpose8(v);
                for (int t = 0; t < 8; t++) _mm256_storeu_ps(p + (k + t) * nr + g, v[t]);
            }
            for (; k < cols; k++)
                for (int j = 0; j < 8; j++) p[k * nr + g + j] = w[(g + j) * cols + k];
        }
    }
}

static void gemm_pack_avx2(int64_t rows, int64_t cols, const float *W, float *Wp) {
    ep_gemm_pack_avx2(NR, rows, cols, W, Wp);
}

static void gemm_avx2(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                      const float *bias, float *Y, int64_t ldy) {
    gemm_simd(N, rows, cols, X, Wp, bias, Y, ldy);
}

/* ---- hashing: 8 keys (i, j..j+7) per step ---- */
AI __m256i rotl(__m256i x, int r) { return _mm256_or_si256(_mm256_slli_epi32(x, r), _mm256_srli_epi32(x, 32 - r)); }

AI __m256i xxh_tail8(__m256i head, __m256i j) {
    __m256i h = _mm256_add_epi32(head, _mm256_mullo_epi32(j, _mm256_set1_epi32((int)EP_P3)));
    h = _mm256_mullo_epi32(rotl(h, 17), _mm256_set1_epi32((int)EP_P4));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)EP_P2));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)EP_P3));
    return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
}

/* h mod nb on 8 lanes, exact for every 32-bit h and nb < 2^31, no correction step needed:
 * d = h + 0.5 is exact in double and v = d/nb lies at least 0.5/nb from any integer, while
 * fl(d * fl(1/nb)) is within v * 2^-52 < 2^-20/nb of v, so floor() gives floor(h/nb) exactly;
 * r = d - q*nb (exact, fnmadd) is then r + 0.5 and truncates to r. */
AI __m128i mod4(__m128i hs, __m256d nb, __m256d inv) { /* hs = h ^ 0x80000000 (signed) */
    __m256d d = _mm256_add_pd(_mm256_cvtepi32_pd(hs), _mm256_set1_pd(2147483648.5));
    __m256d q = _mm256_round_pd(_mm256_mul_pd(d, inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    return _mm256_cvttpd_epi32(_mm256_fnmadd_pd(q, nb, d));
}
AI __m256i mod8(__m256i h, __m256d nb, __m256d inv) {
    __m256i hs = _mm256_xor_si256(h, _mm256_set1_epi32((int)0x80000000u));
    __m128i lo = mod4(_mm256_castsi256_si128(hs), nb, inv);
    __m128i hi = mod4(_mm256_extracti128_si256(hs, 1), nb, inv);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* bucket lookup for 8 hashes; POW2: nb is a power of two (mask = nb - 1); smask = sign mask */
AI __m256 lookup_t(const int POW2, const float *bk, __m256i h, __m256i mask, __m256d nb, __m256d inv, __m256i smask) {
    __m256i idx = POW2 ? _mm256_and_si256(h, mask) : mod8(h, nb, inv);
    __m256 v = _mm256_i32gather_ps(bk, idx, 4);
    return _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_and_si256(h, smask)));
}

typedef struct hctx {
    __m256i mask, smask;
    __m256d nb, inv;
    int pow2;
} hctx;

AI hctx hctx_make(const ep_hcfg *c) {
    hctx x;
    x.pow2 = (c->nb & (c->nb - 1)) == 0;
    x.mask = _mm256_set1_epi32((int)(c->nb - 1));
    x.smask = _mm256_set1_epi32(c->sgn ? (int)0x80000000u : 0);
    x.nb = _mm256_set1_pd((double)c->nb);
    x.inv = _mm256_set1_pd(1.0 / (double)c->nb);
    return x;
}

AI __m256 lookup(const ep_hcfg *c, const hctx *x, __m256i h) {
    return x->pow2 ? lookup_t(1, c->buckets, h, x->mask, x->nb, x->inv, x->smask)
                   : lookup_t(0, c->buckets, h, x->mask, x->nb, x->inv, x->smask);
}

/* V[i, j..j+7] for the general case (K hashes, optional recon MLP) */
AI __m256 vchunk(const ep_hcfg *c, const hctx *x, const __m256i *head, __m256i jv) {
    if (!c->w1) return lookup(c, x, xxh_tail8(head[0], jv));
    __m256 z[64];
    for (int k = 0; k < c->k; k++) z[k] = lookup(c, x, xxh_tail8(head[k], jv));
    __m256 y = _mm256_set1_ps(c->b2);
    for (int hh = 0; hh < c->h; hh++) {
        __m256 a = _mm256_set1_ps(c->b1[hh]);
        for (int k = 0; k < c->k; k++) a = _mm256_fmadd_ps(_mm256_set1_ps(c->w1[hh * c->k + k]), z[k], a);
        y = _mm256_fmadd_ps(_mm256_set1_ps(c->w2[hh]), _mm256_max_ps(a, _mm256_setzero_ps()), y);
    }
    return y;
}

void ep_hash_row_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, float *out) {
    __m256i head[64];
    const hctx x = hctx_make(c);
    for (int k = 0; k < c->k; k++) head[k] = _mm256_set1_epi32((int)ep_xxh_key_head(i, c->seed + (uint32_t)k));
    __m256i jv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = 0; j < cols; j += 8, jv = _mm256_add_epi32(jv, _mm256_set1_epi32(8))) {
        __m256 y = vchunk(c, &x, head, jv);
        if (j + 8 <= cols) _mm256_storeu_ps(out + j, y);
        else _mm256_maskstore_ps(out + j, tail_mask(cols - j), y);
    }
}

/* ---- fused stream kernel: y[n * ldy] = bias + X[n, :] . V[i, :] for n < NX, V never stored.
 * K = 1 without recon: the hash is computed with j * P3 carried incrementally, 16 lanes per
 * step (two independent gathers in flight), and the row of X consumed straight from registers. */
AI __m256i xxh_tail8_jp(__m256i head, __m256i jp) { /* jp = j * P3 */
    __m256i h = _mm256_add_epi32(head, jp);
    h = _mm256_mullo_epi32(rotl(h, 17), _mm256_set1_epi32((int)EP_P4));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)EP_P2));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)EP_P3));
    return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
}

AI void hash_dot_k1(const int NX, const int POW2, const ep_hcfg *c, const hctx *x, uint32_t i, int64_t cols,
                    const float *X, float bias, float *y, int64_t ldy) {
    const __m256i head = _mm256_set1_epi32((int)ep_xxh_key_head(i, c->seed));
    const __m256i step = _mm256_set1_epi32((int)(16u * EP_P3));
    __m256i jp0 = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)EP_P3));
    __m256i jp1 = _mm256_add_epi32(jp0, _mm256_set1_epi32((int)(8u * EP_P3)));
    __m256 acc0[EP_HASH_DOT_MAXN], acc1[EP_HASH_DOT_MAXN];
    for (int a = 0; a < NX; a++) { acc0[a] = _mm256_setzero_ps(); acc1[a] = _mm256_setzero_ps(); }
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        __m256 v0 = lookup_t(POW2, c->buckets, xxh_tail8_jp(head, jp0), x->mask, x->nb, x->inv, x->smask);
        __m256 v1 = lookup_t(POW2, c->buckets, xxh_tail8_jp(head, jp1), x->mask, x->nb, x->inv, x->smask);
        jp0 = _mm256_add_epi32(jp0, step); jp1 = _mm256_add_epi32(jp1, step);
        for (int a = 0; a < NX; a++) {
            acc0[a] = _mm256_fmadd_ps(_mm256_loadu_ps(X + a * cols + j), v0, acc0[a]);
            acc1[a] = _mm256_fmadd_ps(_mm256_loadu_ps(X + a * cols + j + 8), v1, acc1[a]);
        }
    }
    for (; j < cols; j += 8) {
        __m256i m = tail_mask(cols - j < 8 ? cols - j : 8);
        __m256 v = lookup_t(POW2, c->buckets, xxh_tail8_jp(head, jp0), x->mask, x->nb, x->inv, x->smask);
        v = _mm256_and_ps(v, _mm256_castsi256_ps(m)); /* 0 * inf would give NaN */
        jp0 = _mm256_add_epi32(jp0, _mm256_set1_epi32((int)(8u * EP_P3)));
        for (int a = 0; a < NX; a++) acc0[a] = _mm256_fmadd_ps(_mm256_maskload_ps(X + a * cols + j, m), v, acc0[a]);
    }
    for (int a = 0; a < NX; a++) y[a * ldy] = bias + hsum(_mm256_add_ps(acc0[a], acc1[a]));
}

AI void hash_dot_gen(const int NX, const ep_hcfg *c, const hctx *x, uint32_t i, int64_t cols, const float *X,
                     float bias, float *y, int64_t ldy) {
    __m256i head[64];
    for (int k = 0; k < c->k; k++) head[k] = _mm256_set1_epi32((int)ep_xxh_key_head(i, c->seed + (uint32_t)k));
    __m256 acc[EP_HASH_DOT_MAXN];
    for (int a = 0; a < NX; a++) acc[a] = _mm256_setzero_ps();
    __m256i jv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = 0; j < cols; j += 8, jv = _mm256_add_epi32(jv, _mm256_set1_epi32(8))) {
        __m256i m = tail_mask(cols - j < 8 ? cols - j : 8);
        __m256 v = _mm256_and_ps(vchunk(c, x, head, jv), _mm256_castsi256_ps(m));
        for (int a = 0; a < NX; a++) acc[a] = _mm256_fmadd_ps(_mm256_maskload_ps(X + a * cols + j, m), v, acc[a]);
    }
    for (int a = 0; a < NX; a++) y[a * ldy] = bias + hsum(acc[a]);
}

#define HD_CASE(n)                                                                                  \
    case n:                                                                                         \
        if (k1 && x.pow2) hash_dot_k1(n, 1, c, &x, i, cols, X, bias, y, ldy);                       \
        else if (k1) hash_dot_k1(n, 0, c, &x, i, cols, X, bias, y, ldy);                            \
        else hash_dot_gen(n, c, &x, i, cols, X, bias, y, ldy);                                      \
        break;

void ep_hash_dot_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, const float *X, int N, float bias,
                      float *y, int64_t ldy) {
    const hctx x = hctx_make(c);
    const int k1 = !c->w1;
    switch (N) {
        HD_CASE(1) HD_CASE(2) HD_CASE(3) HD_CASE(4)
    default: break;
    }
}

/* ---- FFT: the shared micro-kernels (fft_simd.h) over simd.h's AVX2 mapping ---- */
#include "fft_simd.h"

void ep_cfft_avx2(int64_t m, const float *tw, const float *src, float *x, float *tmp, int inv) {
    fft_cfft(m, tw, src, x, tmp, inv);
}
void ep_rfft_post_avx2(int64_t m, const float *rt, float *X) { fft_rfft_post(m, rt, X); }
void ep_irfft_pre_avx2(int64_t m, const float *rt, const float *X, float *Z) { fft_irfft_pre(m, rt, X, Z); }
void ep_cmac_avx2(int64_t m, const float *a, const float *b, float *acc) { fft_cmac(m, a, b, acc); }
void ep_cmac_rows_avx2(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                       int64_t ldb, float *acc, int64_t ldacc) {
    fft_cmac_rows(m, nj, rows, a, lda, B, ldb, acc, ldacc);
}

/* ---- sparse codebook rows (codebook_simd.h) ---- */
#include "codebook_simd.h"

/* (measured: an 8-lane gather of X and of the codebook for one batch column was slower than the
 * scalar loop of four sums, 1.1-1.5x against 1.3-1.7x over dense at 4 %, on AMD EPYC) */
static void ep_spcb_slice_avx2(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                               int64_t ldx, int64_t nb, float *acc, int64_t ldacc) {
    spcb_slice_simd(len, val, col, wide, xt, ldx, nb, acc, ldacc);
}

/* ---- HyperWeight gather (hyper_simd.h): 8-lane unpack + gather ---- */
#include "hyper_simd.h"

static void hyper_gather_avx2(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                              float *out) {
    hyper_gather_simd(count, stream, len, bits, k, table, out);
}

const ep_ops ep_ops_avx2 = {
    "avx2", gemm_avx2, ep_gemm_dot_avx2, gemm_pack_avx2, ep_hash_row_avx2, ep_hash_dot_avx2, ep_cfft_avx2, ep_rfft_post_avx2,
    ep_irfft_pre_avx2, ep_cmac_avx2, .cmac_rows = ep_cmac_rows_avx2, .spcb_slice = ep_spcb_slice_avx2,
    .hyper_gather = hyper_gather_avx2,
    .tile = {
        .gemm_mr = MR, .gemm_nr = NR, /* 6 x 16 tile (12 ymm accumulators), 1..5-row tails */
        .gemm_kr = 1,                 /* one broadcast per row and column */
        .gemm_kc = KC,                /* N > MR: columns in blocks of 256, accumulated into Y */
        .dot_mr = 8, .dot_nr = 4,     /* dot tiles 8x1 (DOT_KC blocks), 4x2, 1x4, then 4x1 / 1x1 */
        .dot_kr = 8,                  /* 8 lanes, masked tail */
        .dot_kc = DOT_KC,             /* the 8-row path accumulates over 512-column blocks */
        .pack_kr = 8,                 /* 8 x 8 transposes, scalar column tail and partial panel */
        .pack_min_n = 32,             /* measured: dense 16 x 1024 x 1024 still 1.05x slower packed */
        .hash_row_lanes = 8,        /* xxh_tail8 + gather, masked store of the tail */
        .hash_dot_lanes = 16,       /* K = 1: two 8-lane gathers per step, 8-lane tail; K > 1: 8 */
        .fft_lanes = EP_VC,         /* fft_simd.h over simd.h: 4 complex per __m256 */
        .fft_min_m = EP_TW1_MIN,    /* fft_radix4_first needs m >= 16; later stages have s >= 4 */
        .split_lanes = EP_VC,       /* bins k..k+3 and their mirrors while 2k + 6 < m */
        .cmac_lanes = EP_VC,        /* 4 complex per step, scalar tail */
        .cmac_rows_lanes = 2 * EP_VC, /* 8 complex per step, then 4, then scalar */
        .cmac_rows_mr = 4,            /* 4 rows x 2 vectors of sums in registers, 2- and 1-row tails */
        .spcb_lanes = SPCB_LANES,     /* 4 x 8 batch columns per entry, then 1-4 vectors, the last masked */
        .spcb_min_nb = SPCB_MIN_NB,   /* fewer than 4 rows of X: one at a time, 16 rows of W per step */
        .hyper_lanes = HY_LANES,      /* 8 indices per step (gathers), byte-wise tail */
    },
};
