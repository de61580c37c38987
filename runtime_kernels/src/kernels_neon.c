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
#define TRN1(a, b) vtrn1q_f32(a, b)
#define TRN2(a, b) vtrn2q_f32(a, b)
#define ZIP1_64(a, b) vreinterpretq_f32_f64(vzip1q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)))
#define ZIP2_64(a, b) vreinterpretq_f32_f64(vzip2q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)))
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
#define TRN1(a, b) (vtrnq_f32(a, b).val[0])
#define TRN2(a, b) (vtrnq_f32(a, b).val[1])
#define ZIP1_64(a, b) vcombine_f32(vget_low_f32(a), vget_low_f32(b))
#define ZIP2_64(a, b) vcombine_f32(vget_high_f32(a), vget_high_f32(b))
#endif

AI void tile(const int NX, const int NW, int64_t cols, const float *x, const float *w,
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

static void gemm_neon(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                      const float *bias, float *Y, int64_t ldy) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 2 <= rows; r += 2) tile(4, 2, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
        for (; r < rows; r++) tile(4, 1, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
    }
    for (; n < N; n++) {
        const float *x = X + n * cols;
        float *y = Y + n * ldy;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) tile(1, 4, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
        for (; r < rows; r++) tile(1, 1, cols, x, W + r * cols, bias ? bias + r : NULL, y + r, ldy);
    }
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

/* ---- FFT: 2 complex per vector ---- */
AI float32x4_t cmulw(float32x4_t v, float32x4_t wr, float32x4_t wis) { /* wis = (-wi, wi, ..) */
    return FMA(vmulq_f32(v, wr), vrev64q_f32(v), wis);
}
static const float k_alt[4] = {-1.0f, 1.0f, -1.0f, 1.0f};

static void radix4_stage(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = L / 4;
    const float32x4_t alt = vld1q_f32(k_alt);
    /* sg*i*v = sg*(-y, x): swap then multiply by sg*alt */
    const float32x4_t jm = inv ? alt : vnegq_f32(alt);
    for (int64_t p = 0; p < l4; p++) {
        float32x4_t w1 = vreinterpretq_f32_u64(vld1q_dup_u64((const uint64_t *)(tw + 2 * (p * s))));
        float32x4_t w2 = vreinterpretq_f32_u64(vld1q_dup_u64((const uint64_t *)(tw + 2 * (2 * p * s))));
        float32x4_t w3 = vreinterpretq_f32_u64(vld1q_dup_u64((const uint64_t *)(tw + 2 * (3 * p * s))));
        float32x4_t w1r = TRN1(w1, w1), w1i = vmulq_f32(TRN2(w1, w1), alt);
        float32x4_t w2r = TRN1(w2, w2), w2i = vmulq_f32(TRN2(w2, w2), alt);
        float32x4_t w3r = TRN1(w3, w3), w3i = vmulq_f32(TRN2(w3, w3), alt);
        const float *A = a + 2 * s * p;
        float *o = b + 2 * s * 4 * p;
        const int64_t st = 2 * s * l4;
        for (int64_t q = 0; q < 2 * s; q += 4) {
            float32x4_t va = vld1q_f32(A + q), vb = vld1q_f32(A + st + q);
            float32x4_t vc = vld1q_f32(A + 2 * st + q), vd = vld1q_f32(A + 3 * st + q);
            float32x4_t apc = vaddq_f32(va, vc), amc = vsubq_f32(va, vc);
            float32x4_t bpd = vaddq_f32(vb, vd), bmd = vsubq_f32(vb, vd);
            float32x4_t j = vmulq_f32(vrev64q_f32(bmd), jm);
            vst1q_f32(o + q, vaddq_f32(apc, bpd));
            vst1q_f32(o + 2 * s + q, cmulw(vaddq_f32(amc, j), w1r, w1i));
            vst1q_f32(o + 4 * s + q, cmulw(vsubq_f32(apc, bpd), w2r, w2i));
            vst1q_f32(o + 6 * s + q, cmulw(vsubq_f32(amc, j), w3r, w3i));
        }
    }
}

static void radix2_stage(int64_t s, const float *a, float *b) {
    for (int64_t q = 0; q < 2 * s; q += 4) {
        float32x4_t va = vld1q_f32(a + q), vb = vld1q_f32(a + 2 * s + q);
        vst1q_f32(b + q, vaddq_f32(va, vb));
        vst1q_f32(b + 2 * s + q, vsubq_f32(va, vb));
    }
}

/* first stage (L = m, s = 1): 2 values of p per vector, per-lane twiddles from the table after
 * the m twiddles (re/im duplicated, 4 p per 48-float block), then a 2x2 complex transpose */
static void radix4_first(int64_t m, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = m / 4;
    const float32x4_t alt = vld1q_f32(k_alt);
    const float32x4_t jm = inv ? alt : vnegq_f32(alt);
    const float *t = tw + 2 * m;
    for (int64_t p = 0; p < l4; p += 2) {
        const float *T = t + 48 * (p / 4) + 4 * ((p / 2) & 1);
        const float *A = a + 2 * p;
        float32x4_t va = vld1q_f32(A), vb = vld1q_f32(A + 2 * l4);
        float32x4_t vc = vld1q_f32(A + 4 * l4), vd = vld1q_f32(A + 6 * l4);
        float32x4_t apc = vaddq_f32(va, vc), amc = vsubq_f32(va, vc);
        float32x4_t bpd = vaddq_f32(vb, vd), bmd = vsubq_f32(vb, vd);
        float32x4_t j = vmulq_f32(vrev64q_f32(bmd), jm);
        float32x4_t y0 = vaddq_f32(apc, bpd);
        float32x4_t y1 = cmulw(vaddq_f32(amc, j), vld1q_f32(T), vmulq_f32(vld1q_f32(T + 8), alt));
        float32x4_t y2 = cmulw(vsubq_f32(apc, bpd), vld1q_f32(T + 16), vmulq_f32(vld1q_f32(T + 24), alt));
        float32x4_t y3 = cmulw(vsubq_f32(amc, j), vld1q_f32(T + 32), vmulq_f32(vld1q_f32(T + 40), alt));
        float *o = b + 8 * p;
        vst1q_f32(o, ZIP1_64(y0, y1));
        vst1q_f32(o + 4, ZIP1_64(y2, y3));
        vst1q_f32(o + 8, ZIP2_64(y0, y1));
        vst1q_f32(o + 12, ZIP2_64(y2, y3));
    }
}

static void cfft_neon(int64_t m, const float *tw, const float *src, float *x, float *tmp, int inv) {
    int nst = 0;
    for (int64_t L = m; L >= 2; L = L >= 4 ? L / 4 : 1) nst++;
    /* the last stage lands in x; see cfft_avx2 */
    float *a = (float *)src, *b = (nst & 1) ? x : tmp, *c = (nst & 1) ? tmp : x;
    if (src == x && (nst & 1)) { b = tmp; c = x; }
    int64_t L = m, s = 1;
    for (; L >= 4; L /= 4, s *= 4) {
        if (s >= 2) radix4_stage(L, s, tw, a, b, inv);
        else if (m >= EP_TW1_MIN) radix4_first(m, tw, a, b, inv);
        else ep_cfft_radix4_stage_ref(L, s, tw, a, b, inv);
        a = b; b = c; c = a;
    }
    if (L == 2) {
        if (s >= 2) radix2_stage(s, a, b);
        else ep_cfft_radix2_stage_ref(s, a, b);
        a = b;
    }
    if (a != x) memcpy(x, a, (size_t)m * 2 * sizeof(float));
}

/* 2 complex in reverse order */
AI float32x4_t crev(float32x4_t v) { return vextq_f32(v, v, 2); }
static const float k_conj[4] = {1.0f, -1.0f, 1.0f, -1.0f};

/* split pass, bins k, k+1 and mirrors l = m-k-1, m-k per step while disjoint (see the AVX2 one) */
static void rfft_post_neon(int64_t m, const float *rt, float *X) {
    const float32x4_t cj = vld1q_f32(k_conj), alt = vld1q_f32(k_alt);
    int64_t k = 1;
    for (; 2 * k + 2 < m; k += 2) {
        float *pk = X + 2 * k, *pl = X + 2 * (m - k - 1);
        float32x4_t A = vld1q_f32(pk), Bc = vmulq_f32(crev(vld1q_f32(pl)), cj);
        float32x4_t E = vmulq_n_f32(vaddq_f32(A, Bc), 0.5f), D = vmulq_n_f32(vsubq_f32(A, Bc), 0.5f);
        float32x4_t w = vld1q_f32(rt + 2 * k);
        float32x4_t T = cmulw(D, TRN1(w, w), vmulq_f32(TRN2(w, w), alt));
        float32x4_t S = vrev64q_f32(T);
        vst1q_f32(pk, FMA(E, S, cj));
        vst1q_f32(pl, crev(vsubq_f32(vmulq_f32(E, cj), S)));
    }
    if (k > 1) {
        float z0r = X[0], z0i = X[1];
        X[0] = z0r + z0i; X[1] = 0.0f;
        X[2 * m] = z0r - z0i; X[2 * m + 1] = 0.0f;
    }
    ep_rfft_post_ref(m, rt, X, k);
}

static void irfft_pre_neon(int64_t m, const float *rt, const float *X, float *Z) {
    const float32x4_t cj = vld1q_f32(k_conj), alt = vld1q_f32(k_alt);
    int64_t k = 1;
    for (; 2 * k + 2 < m; k += 2) {
        const float *pk = X + 2 * k, *pl = X + 2 * (m - k - 1);
        float32x4_t A = vld1q_f32(pk), Bc = vmulq_f32(crev(vld1q_f32(pl)), cj);
        float32x4_t E = vmulq_n_f32(vaddq_f32(A, Bc), 0.5f), D = vmulq_n_f32(vsubq_f32(A, Bc), 0.5f);
        float32x4_t w = vmulq_f32(vld1q_f32(rt + 2 * k), cj);
        float32x4_t O = cmulw(D, TRN1(w, w), vmulq_f32(TRN2(w, w), alt));
        float32x4_t S = vrev64q_f32(O);
        vst1q_f32(Z + 2 * k, FMA(E, S, alt)); /* (er - oi, ei + or) */
        vst1q_f32(Z + 2 * (m - k - 1), crev(vaddq_f32(vmulq_f32(E, cj), S)));
    }
    if (k > 1) {
        float x0 = X[0], xm = X[2 * m];
        Z[0] = 0.5f * (x0 + xm); Z[1] = 0.5f * (x0 - xm);
    }
    ep_irfft_pre_ref(m, rt, X, Z, k);
}

static void cmac_neon(int64_t m, const float *a, const float *b, float *acc) {
    const float32x4_t alt = vld1q_f32(k_alt);
    int64_t k = 0;
    for (; k + 2 <= m; k += 2) {
        float32x4_t va = vld1q_f32(a + 2 * k), vb = vld1q_f32(b + 2 * k);
        float32x4_t p = cmulw(va, TRN1(vb, vb), vmulq_f32(TRN2(vb, vb), alt));
        vst1q_f32(acc + 2 * k, vaddq_f32(vld1q_f32(acc + 2 * k), p));
    }
    for (; k < m; k++) {
        float ar = a[2 * k], ai = a[2 * k + 1], br = b[2 * k], bi = b[2 * k + 1];
        acc[2 * k] += ar * br - ai * bi;
        acc[2 * k + 1] += ar * bi + ai * br;
    }
}

const ep_ops ep_ops_neon = {"neon", gemm_neon, hash_row_neon, NULL, cfft_neon, rfft_post_neon, irfft_pre_neon, cmac_neon};
#endif /* __aarch64__ || ARMv7 NEON */
