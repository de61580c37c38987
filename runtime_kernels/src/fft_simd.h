/* The FFT micro-kernels (complex FFT stages, real split passes, complex multiply-accumulate)
 * written once over simd.h's vector operations. Included by each SIMD variant file, which wraps
 * these static functions under its own names; their contracts are ep_ops' (internal.h). */
#ifndef EDGEPACK_FFT_SIMD_H
#define EDGEPACK_FFT_SIMD_H

#include <string.h>
#include "internal.h"
#include "simd.h"

/* sg * i * v for the radix-4 butterflies: forward (sg = -1) (x, y) -> (y, -x), inverse (-y, x) */
EP_SI ep_v fft_rot_signs(int inv) { return inv ? ep_vsigns(1, 0) : ep_vsigns(0, 1); }

/* Stockham radix-4 stage (see ep_cfft_radix4_stage_ref), EP_VC values of q per vector: s >= EP_VC */
static void fft_radix4_stage(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = L / 4;
    const ep_v rot = fft_rot_signs(inv);
    for (int64_t p = 0; p < l4; p++) {
        const ep_vtw w1 = ep_vtw_bcast(tw + 2 * (p * s));
        const ep_vtw w2 = ep_vtw_bcast(tw + 2 * (2 * p * s));
        const ep_vtw w3 = ep_vtw_bcast(tw + 2 * (3 * p * s));
        const float *A = a + 2 * s * p, *const end = A + 2 * s;
        float *o = b + 2 * s * 4 * p;
        const int64_t st = 2 * s * l4;
        for (; A < end; A += EP_VL, o += EP_VL) {
            const ep_v va = ep_vld(A), vb = ep_vld(A + st);
            const ep_v vc = ep_vld(A + 2 * st), vd = ep_vld(A + 3 * st);
            const ep_v apc = ep_vadd(va, vc), amc = ep_vsub(va, vc);
            const ep_v bpd = ep_vadd(vb, vd), bmd = ep_vsub(vb, vd);
            const ep_v j = ep_vflip(ep_vswap(bmd), rot);
            ep_vst(o, ep_vadd(apc, bpd));
            ep_vst(o + 2 * s, ep_vcmul(ep_vadd(amc, j), w1));
            ep_vst(o + 4 * s, ep_vcmul(ep_vsub(apc, bpd), w2));
            ep_vst(o + 6 * s, ep_vcmul(ep_vsub(amc, j), w3));
        }
    }
}

/* the last radix-2 stage (L == 2), s >= EP_VC */
static void fft_radix2_stage(int64_t s, const float *a, float *b) {
    for (int64_t q = 0; q < 2 * s; q += EP_VL) {
        const ep_v va = ep_vld(a + q), vb = ep_vld(a + 2 * s + q);
        ep_vst(b + q, ep_vadd(va, vb));
        ep_vst(b + 2 * s + q, ep_vsub(va, vb));
    }
}

/* first stage (L = m, s = 1), EP_VC values of p per vector with per-lane twiddles from the
 * table after the m twiddles (48-float blocks of 4 p, see ep_tw_floats); the 4 outputs of each
 * p are adjacent, hence the transposed store. m >= EP_TW1_MIN. */
static void fft_radix4_first(int64_t m, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = m / 4;
    const ep_v rot = fft_rot_signs(inv);
    const float *t = tw + 2 * m;
    for (int64_t p4 = 0; p4 < l4; p4 += 4, t += 48)
        for (int h = 0; h < 4; h += EP_VC) { /* the vectors of this block of 4 p */
            const float *T = t + 2 * h, *A = a + 2 * (p4 + h);
            const ep_v va = ep_vld(A), vb = ep_vld(A + 2 * l4);
            const ep_v vc = ep_vld(A + 4 * l4), vd = ep_vld(A + 6 * l4);
            const ep_v apc = ep_vadd(va, vc), amc = ep_vsub(va, vc);
            const ep_v bpd = ep_vadd(vb, vd), bmd = ep_vsub(vb, vd);
            const ep_v j = ep_vflip(ep_vswap(bmd), rot);
            const ep_v y1 = ep_vcmul(ep_vadd(amc, j), ep_vtw_split(ep_vld(T), ep_vld(T + 8)));
            const ep_v y2 = ep_vcmul(ep_vsub(apc, bpd), ep_vtw_split(ep_vld(T + 16), ep_vld(T + 24)));
            const ep_v y3 = ep_vcmul(ep_vsub(amc, j), ep_vtw_split(ep_vld(T + 32), ep_vld(T + 40)));
            ep_vst_ct4(b + 8 * (p4 + h), ep_vadd(apc, bpd), y1, y2, y3);
        }
}

/* ep_ops.cfft: radix-4 stages (radix-2 last when log2 m is odd), scalar where m is too small */
static void fft_cfft(int64_t m, const float *tw, const float *src, float *x, float *tmp, int inv) {
    int nst = 0;
    for (int64_t L = m; L >= 2; L = L >= 4 ? L / 4 : 1) nst++;
    /* stage k writes x when nst - k is even, so the last one lands in x; when src == x and the
     * first stage would write x, run the stages through tmp first and copy at the end */
    float *a = (float *)src, *b = (nst & 1) ? x : tmp, *c = (nst & 1) ? tmp : x;
    if (src == x && (nst & 1)) { b = tmp; c = x; }
    int64_t L = m, s = 1;
    for (; L >= 4; L /= 4, s *= 4) {
        if (s >= EP_VC) fft_radix4_stage(L, s, tw, a, b, inv);
        else if (s == 1 && m >= EP_TW1_MIN) fft_radix4_first(m, tw, a, b, inv);
        else ep_cfft_radix4_stage_ref(L, s, tw, a, b, inv);
        a = b; b = c; c = a;
    }
    if (L == 2) {
        if (s >= EP_VC) fft_radix2_stage(s, a, b);
        else ep_cfft_radix2_stage_ref(s, a, b);
        a = b;
    }
    if (a != x) memcpy(x, a, (size_t)m * 2 * sizeof(float));
}

/* ep_ops.rfft_post: bins k..k+EP_VC-1 and their mirrors m-k-EP_VC+1..m-k per step while the two
 * blocks are disjoint (bin 0 and bin m never in a vector step), the rest scalar */
static void fft_rfft_post(int64_t m, const float *rt, float *X) {
    const ep_v half = ep_vset1(0.5f), cj = ep_vsigns(0, 1);
    int64_t k = 1;
    for (; 2 * k + 2 * EP_VC - 2 < m; k += EP_VC) {
        float *pk = X + 2 * k, *pl = X + 2 * (m - k - EP_VC + 1);
        const ep_v A = ep_vld(pk), Bc = ep_vflip(ep_vcrev(ep_vld(pl)), cj); /* conj Z_l */
        const ep_v E = ep_vmul(half, ep_vadd(A, Bc)), D = ep_vmul(half, ep_vsub(A, Bc));
        const ep_v S = ep_vswap(ep_vcmul(D, ep_vtw_of(ep_vld(rt + 2 * k)))); /* w^k D as (ti, tr) */
        /* X_k = (er + ti, ei - tr); X_l = (er - ti, -ei - tr) */
        ep_vst(pk, ep_vaddflip(E, S, cj));
        ep_vst(pl, ep_vcrev(ep_vsub(ep_vflip(E, cj), S)));
    }
    if (k > 1) {
        const float z0r = X[0], z0i = X[1];
        X[0] = z0r + z0i; X[1] = 0.0f;
        X[2 * m] = z0r - z0i; X[2 * m + 1] = 0.0f;
    }
    ep_rfft_post_ref(m, rt, X, k); /* the rest (and bin 0 when k == 1) */
}

/* ep_ops.irfft_pre, the same blocking as fft_rfft_post */
static void fft_irfft_pre(int64_t m, const float *rt, const float *X, float *Z) {
    const ep_v half = ep_vset1(0.5f), cj = ep_vsigns(0, 1), cre = ep_vsigns(1, 0);
    int64_t k = 1;
    for (; 2 * k + 2 * EP_VC - 2 < m; k += EP_VC) {
        const float *pk = X + 2 * k, *pl = X + 2 * (m - k - EP_VC + 1);
        const ep_v A = ep_vld(pk), Bc = ep_vflip(ep_vcrev(ep_vld(pl)), cj);
        const ep_v E = ep_vmul(half, ep_vadd(A, Bc)), D = ep_vmul(half, ep_vsub(A, Bc));
        const ep_v S = ep_vswap(ep_vcmul(D, ep_vtw_conj_of(ep_vld(rt + 2 * k)))); /* O_k as (oi, or) */
        /* Z_k = (er - oi, ei + or); Z_l = (er + oi, -ei + or) */
        ep_vst(Z + 2 * k, ep_vaddflip(E, S, cre));
        ep_vst(Z + 2 * (m - k - EP_VC + 1), ep_vcrev(ep_vadd(ep_vflip(E, cj), S)));
    }
    if (k > 1) {
        const float x0 = X[0], xm = X[2 * m];
        Z[0] = 0.5f * (x0 + xm); Z[1] = 0.5f * (x0 - xm);
    }
    ep_irfft_pre_ref(m, rt, X, Z, k);
}

/* ep_ops.cmac: acc[k] += a[k] * b[k] */
static void fft_cmac(int64_t m, const float *a, const float *b, float *acc) {
    int64_t k = 0;
    for (; k + EP_VC <= m; k += EP_VC) {
        const ep_v p = ep_vcmul(ep_vld(a + 2 * k), ep_vtw_of(ep_vld(b + 2 * k)));
        ep_vst(acc + 2 * k, ep_vadd(ep_vld(acc + 2 * k), p));
    }
    for (; k < m; k++) {
        const float ar = a[2 * k], ai = a[2 * k + 1], br = b[2 * k], bi = b[2 * k + 1];
        acc[2 * k] += ar * br - ai * bi;
        acc[2 * k + 1] += ar * bi + ai * br;
    }
}

/* acc[r][k] = sum_j a[j][k] * B[j][r][k] for tr rows and tv vectors of k, the tr x tv sums
 * held in registers over j; each vector of a is prepared once per j and used by every row */
EP_SI void cmac_rows_tile(const int tr, const int tv, int64_t nj, const float *a, int64_t lda, const float *B,
                          int64_t ldbj, int64_t ldb, float *acc, int64_t ldacc) {
    ep_v c[4][2];
    for (int r = 0; r < tr; r++)
        for (int v = 0; v < tv; v++) c[r][v] = ep_vset1(0.0f);
    for (int64_t j = 0; j < nj; j++, a += lda, B += ldbj) {
        ep_vtw w[2];
        for (int v = 0; v < tv; v++) w[v] = ep_vtw_acc_of(ep_vld(a + v * EP_VL));
        for (int r = 0; r < tr; r++)
            for (int v = 0; v < tv; v++) c[r][v] = ep_vcmac(c[r][v], ep_vld(B + r * ldb + v * EP_VL), w[v]);
    }
    for (int r = 0; r < tr; r++)
        for (int v = 0; v < tv; v++) ep_vst(acc + r * ldacc + v * EP_VL, c[r][v]);
}

/* the row tiles (4, 2, 1) of one step of tv vectors at complex offset k */
EP_SI void cmac_rows_step(const int tv, int64_t k, int64_t nj, int64_t rows, const float *a, int64_t lda,
                          const float *B, int64_t ldb, float *acc, int64_t ldacc) {
    const int64_t ldbj = rows * ldb;
    int64_t r = 0;
    a += 2 * k; B += 2 * k; acc += 2 * k;
    for (; r + 4 <= rows; r += 4) cmac_rows_tile(4, tv, nj, a, lda, B + r * ldb, ldbj, ldb, acc + r * ldacc, ldacc);
    if (r + 2 <= rows) {
        cmac_rows_tile(2, tv, nj, a, lda, B + r * ldb, ldbj, ldb, acc + r * ldacc, ldacc);
        r += 2;
    }
    if (r < rows) cmac_rows_tile(1, tv, nj, a, lda, B + r * ldb, ldbj, ldb, acc + r * ldacc, ldacc);
}

/* ep_ops.cmac_rows: steps of 2 * EP_VC complex values (4 x 2-vector register tiles, 2- and 1-row
 * tails), one EP_VC step, then scalar; a single product (nj = rows = 1, the b = n circulant)
 * in EP_VC steps, then scalar */
static void fft_cmac_rows(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                          int64_t ldb, float *acc, int64_t ldacc) {
    int64_t k = 0;
    if (nj == 1 && rows == 1)
        for (; k + EP_VC <= m; k += EP_VC) ep_vst(acc + 2 * k, ep_vcmul(ep_vld(a + 2 * k), ep_vtw_of(ep_vld(B + 2 * k))));
    for (; k + 2 * EP_VC <= m; k += 2 * EP_VC) cmac_rows_step(2, k, nj, rows, a, lda, B, ldb, acc, ldacc);
    if (k + EP_VC <= m) {
        cmac_rows_step(1, k, nj, rows, a, lda, B, ldb, acc, ldacc);
        k += EP_VC;
    }
    for (; k < m; k++)
        for (int64_t r = 0; r < rows; r++) {
            float sr = 0.0f, si = 0.0f;
            for (int64_t j = 0; j < nj; j++) {
                const float ar = a[j * lda + 2 * k], ai = a[j * lda + 2 * k + 1];
                const float br = B[(j * rows + r) * ldb + 2 * k], bi = B[(j * rows + r) * ldb + 2 * k + 1];
                sr += ar * br - ai * bi;
                si += ar * bi + ai * br;
            }
            acc[r * ldacc + 2 * k] = sr;
            acc[r * ldacc + 2 * k + 1] = si;
        }
}

#endif
