/* x86_64 AVX2 + FMA variant. This file alone is compiled with -mavx2 -mfma; it is only
 * called after cpuid says the CPU has both. */
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

/* NX rows of X against NW rows of W, dot products over len columns (8 lanes + masked tail);
 * y = (acc ? y : bias) + dot */
AI void tile(const int NX, const int NW, int64_t len, const float *x, int64_t ldx, const float *w,
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

#define KC 512 /* column block: 8 rows of X x KC floats stay in L1 while W streams */

static void gemm_avx2(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                      const float *bias, float *Y, int64_t ldy) {
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) { /* W streamed once per 8 rows of X */
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        for (int64_t c0 = 0; c0 < cols; c0 += KC) {
            const int64_t len = cols - c0 < KC ? cols - c0 : KC;
            for (int64_t r = 0; r < rows; r++)
                tile(8, 1, len, x + c0, cols, W + r * cols + c0, cols, bias ? bias + r : NULL, y + r, ldy, c0 > 0);
        }
    }
    for (; n + 4 <= N; n += 4) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 2 <= rows; r += 2) tile(4, 2, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
        for (; r < rows; r++) tile(4, 1, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
    }
    for (; n < N; n++) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) tile(1, 4, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
        for (; r < rows; r++) tile(1, 1, cols, x, cols, W + r * cols, cols, bias ? bias + r : NULL, y + r, ldy, 0);
    }
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

/* h mod nb on 4 lanes, exact: h and nb < 2^32 are exact in double, q may be off by one */
AI __m128i mod4(__m128i h, __m256d nb, __m256d inv) {
    __m256d d = _mm256_cvtepi32_pd(h);
    d = _mm256_add_pd(d, _mm256_and_pd(_mm256_cmp_pd(d, _mm256_setzero_pd(), _CMP_LT_OQ), _mm256_set1_pd(4294967296.0)));
    __m256d q = _mm256_floor_pd(_mm256_mul_pd(d, inv));
    __m256d r = _mm256_fnmadd_pd(q, nb, d);
    r = _mm256_add_pd(r, _mm256_and_pd(_mm256_cmp_pd(r, _mm256_setzero_pd(), _CMP_LT_OQ), nb));
    r = _mm256_sub_pd(r, _mm256_and_pd(_mm256_cmp_pd(r, nb, _CMP_GE_OQ), nb));
    return _mm256_cvttpd_epi32(r);
}

AI __m256 lookup(const ep_hcfg *c, __m256i h, __m256d nb, __m256d inv) {
    __m256i idx;
    if ((c->nb & (c->nb - 1)) == 0) {
        idx = _mm256_and_si256(h, _mm256_set1_epi32((int)(c->nb - 1)));
    } else {
        __m128i lo = mod4(_mm256_castsi256_si128(h), nb, inv);
        __m128i hi = mod4(_mm256_extracti128_si256(h, 1), nb, inv);
        idx = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    }
    __m256 v = _mm256_i32gather_ps(c->buckets, idx, 4);
    if (c->sgn) v = _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_and_si256(h, _mm256_set1_epi32((int)0x80000000u))));
    return v;
}

static void hash_row_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, float *out) {
    __m256i head[64];
    __m256 z[64];
    const __m256d nb = _mm256_set1_pd((double)c->nb), inv = _mm256_set1_pd(1.0 / (double)c->nb);
    for (int k = 0; k < c->k; k++) head[k] = _mm256_set1_epi32((int)ep_xxh_key_head(i, c->seed + (uint32_t)k));
    __m256i jv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = 0; j < cols; j += 8, jv = _mm256_add_epi32(jv, _mm256_set1_epi32(8))) {
        __m256 y;
        if (!c->w1) {
            y = lookup(c, xxh_tail8(head[0], jv), nb, inv);
        } else {
            for (int k = 0; k < c->k; k++) z[k] = lookup(c, xxh_tail8(head[k], jv), nb, inv);
            y = _mm256_set1_ps(c->b2);
            for (int hh = 0; hh < c->h; hh++) {
                __m256 a = _mm256_set1_ps(c->b1[hh]);
                for (int k = 0; k < c->k; k++) a = _mm256_fmadd_ps(_mm256_set1_ps(c->w1[hh * c->k + k]), z[k], a);
                y = _mm256_fmadd_ps(_mm256_set1_ps(c->w2[hh]), _mm256_max_ps(a, _mm256_setzero_ps()), y);
            }
        }
        if (j + 8 <= cols) _mm256_storeu_ps(out + j, y);
        else _mm256_maskstore_ps(out + j, tail_mask(cols - j), y);
    }
}

/* ---- FFT ---- */
AI __m256 swap_ri(__m256 v) { return _mm256_permute_ps(v, 0xB1); }
/* v * w, w given as (re dup, im dup) */
AI __m256 cmulw(__m256 v, __m256 wr, __m256 wi) { return _mm256_fmaddsub_ps(v, wr, _mm256_mul_ps(swap_ri(v), wi)); }

static void radix4_stage(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = L / 4;
    /* sg*i*v: forward (-i): (y, -x) -> negate odd lanes; inverse (+i): (-y, x) -> negate even */
    const __m256 neg = inv ? _mm256_setr_ps(-0.f, 0.f, -0.f, 0.f, -0.f, 0.f, -0.f, 0.f)
                           : _mm256_setr_ps(0.f, -0.f, 0.f, -0.f, 0.f, -0.f, 0.f, -0.f);
    for (int64_t p = 0; p < l4; p++) {
        __m256 w1 = _mm256_castpd_ps(_mm256_broadcast_sd((const double *)(tw + 2 * (p * s))));
        __m256 w2 = _mm256_castpd_ps(_mm256_broadcast_sd((const double *)(tw + 2 * (2 * p * s))));
        __m256 w3 = _mm256_castpd_ps(_mm256_broadcast_sd((const double *)(tw + 2 * (3 * p * s))));
        __m256 w1r = _mm256_moveldup_ps(w1), w1i = _mm256_movehdup_ps(w1);
        __m256 w2r = _mm256_moveldup_ps(w2), w2i = _mm256_movehdup_ps(w2);
        __m256 w3r = _mm256_moveldup_ps(w3), w3i = _mm256_movehdup_ps(w3);
        const float *A = a + 2 * s * p;
        float *o = b + 2 * s * 4 * p;
        const int64_t st = 2 * s * l4;
        for (int64_t q = 0; q < 2 * s; q += 8) {
            __m256 va = _mm256_loadu_ps(A + q), vb = _mm256_loadu_ps(A + st + q);
            __m256 vc = _mm256_loadu_ps(A + 2 * st + q), vd = _mm256_loadu_ps(A + 3 * st + q);
            __m256 apc = _mm256_add_ps(va, vc), amc = _mm256_sub_ps(va, vc);
            __m256 bpd = _mm256_add_ps(vb, vd), bmd = _mm256_sub_ps(vb, vd);
            __m256 j = _mm256_xor_ps(swap_ri(bmd), neg);
            _mm256_storeu_ps(o + q, _mm256_add_ps(apc, bpd));
            _mm256_storeu_ps(o + 2 * s + q, cmulw(_mm256_add_ps(amc, j), w1r, w1i));
            _mm256_storeu_ps(o + 4 * s + q, cmulw(_mm256_sub_ps(apc, bpd), w2r, w2i));
            _mm256_storeu_ps(o + 6 * s + q, cmulw(_mm256_sub_ps(amc, j), w3r, w3i));
        }
    }
}

static void radix2_stage(int64_t s, const float *a, float *b) {
    for (int64_t q = 0; q < 2 * s; q += 8) {
        __m256 va = _mm256_loadu_ps(a + q), vb = _mm256_loadu_ps(a + 2 * s + q);
        _mm256_storeu_ps(b + q, _mm256_add_ps(va, vb));
        _mm256_storeu_ps(b + 2 * s + q, _mm256_sub_ps(va, vb));
    }
}

static void cfft_avx2(int64_t m, const float *tw, float *x, float *tmp, int inv) {
    float *a = x, *b = tmp;
    int64_t L = m, s = 1;
    for (; L >= 4; L /= 4, s *= 4) {
        if (s >= 4) radix4_stage(L, s, tw, a, b, inv);
        else ep_cfft_radix4_stage_ref(L, s, tw, a, b, inv);
        float *t = a; a = b; b = t;
    }
    if (L == 2) {
        if (s >= 4) radix2_stage(s, a, b);
        else ep_cfft_radix2_stage_ref(s, a, b);
        float *t = a; a = b; b = t;
    }
    if (a != x) memcpy(x, a, (size_t)m * 2 * sizeof(float));
}

static void cmac_avx2(int64_t m, const float *a, const float *b, float *acc) {
    int64_t k = 0;
    for (; k + 4 <= m; k += 4) {
        __m256 va = _mm256_loadu_ps(a + 2 * k), vb = _mm256_loadu_ps(b + 2 * k);
        __m256 p = _mm256_fmaddsub_ps(va, _mm256_moveldup_ps(vb), _mm256_mul_ps(swap_ri(va), _mm256_movehdup_ps(vb)));
        _mm256_storeu_ps(acc + 2 * k, _mm256_add_ps(_mm256_loadu_ps(acc + 2 * k), p));
    }
    for (; k < m; k++) {
        float ar = a[2 * k], ai = a[2 * k + 1], br = b[2 * k], bi = b[2 * k + 1];
        acc[2 * k] += ar * br - ai * bi;
        acc[2 * k + 1] += ar * bi + ai * br;
    }
}

const ep_ops ep_ops_avx2 = {"avx2", gemm_avx2, hash_row_avx2, cfft_avx2, cmac_avx2};
