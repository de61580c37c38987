/* The sparse codebook row (ep_ops.spcb_row) written once over simd.h's vector operations:
 * vectorised over the batch columns of X transposed ([cols, ldx]), each entry's codebook value
 * broadcast and multiplied into SPCB_U vectors of sums. Few batch columns (below SPCB_MIN_NB)
 * take a scalar loop with four sums each. The including variant file wraps spcb_row_simd. */
#ifndef EDGEPACK_CODEBOOK_SIMD_H
#define EDGEPACK_CODEBOOK_SIMD_H

#include "internal.h"
#include "simd.h"

#define SPCB_U 4                   /* vectors of sums per main step */
#define SPCB_LANES (SPCB_U * EP_VL) /* batch columns per main step */
#define SPCB_MIN_NB (EP_VL / 2)     /* below: a vector would hold mostly masked lanes */

/* acc[0 .. U*EP_VL) (the last vector only the tail's lanes when masked) for one row's entries */
EP_SI void spcb_block(const int U, int64_t count, const float *cb, const uint8_t *idx, const uint8_t *gaps,
                      const float *xt, int64_t ldx, float *acc, int masked, ep_vtail tail) {
    ep_v s[SPCB_U];
    for (int u = 0; u < U; u++) s[u] = ep_vset1(0.0f);
    int64_t col = -1;
    for (int64_t m = 0; m < count; m++) {
        col += gaps[m];
        const ep_v w = ep_vset1(cb[idx[m]]);
        const float *x = xt + col * ldx;
        for (int u = 0; u < U; u++) {
            const ep_v xv = masked && u == U - 1 ? ep_vld_n(x + u * EP_VL, tail) : ep_vld(x + u * EP_VL);
            s[u] = ep_vfma(s[u], w, xv);
        }
    }
    for (int u = 0; u < U; u++) {
        if (masked && u == U - 1) ep_vst_n(acc + u * EP_VL, s[u], tail);
        else ep_vst(acc + u * EP_VL, s[u]);
    }
}

/* one batch column: four independent sums over interleaved entries hide the add latency, and the
 * four columns come from partial sums of their gaps, so only one add per step depends on the last */
EP_SI float spcb_column(int64_t count, const float *cb, const uint8_t *idx, const uint8_t *gaps, const float *x,
                        int64_t ldx) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t col = -1, m = 0;
    for (; m + 4 <= count; m += 4) {
        const int64_t g01 = gaps[m] + gaps[m + 1], g012 = g01 + gaps[m + 2], g0123 = g012 + gaps[m + 3];
        const int64_t c0 = col + gaps[m], c1 = col + g01, c2 = col + g012, c3 = col + g0123;
        s0 += cb[idx[m]] * x[c0 * ldx];
        s1 += cb[idx[m + 1]] * x[c1 * ldx];
        s2 += cb[idx[m + 2]] * x[c2 * ldx];
        s3 += cb[idx[m + 3]] * x[c3 * ldx];
        col = c3;
    }
    for (; m < count; m++) {
        col += gaps[m];
        s0 += cb[idx[m]] * x[col * ldx];
    }
    return (s0 + s1) + (s2 + s3);
}

static void spcb_row_simd(int64_t count, const float *cb, const uint8_t *idx, const uint8_t *gaps, const float *xt,
                          int64_t ldx, int64_t nb, float *acc) {
    if (nb == 1 && ldx == 1) { /* one row of X as given (the driver's batch of 1): no stride multiply */
        acc[0] = spcb_column(count, cb, idx, gaps, xt, 1);
        return;
    }
    if (nb < SPCB_MIN_NB) {
        for (int64_t b = 0; b < nb; b++) acc[b] = spcb_column(count, cb, idx, gaps, xt + b, ldx);
        return;
    }
    int64_t b = 0;
    const ep_vtail none = ep_vtail_of(EP_VL);
    for (; b + SPCB_LANES <= nb; b += SPCB_LANES)
        spcb_block(SPCB_U, count, cb, idx, gaps, xt + b, ldx, acc + b, 0, none);
    switch ((nb - b) / EP_VL) { /* the rest in one walk over the entries: 1..3 vectors, the last masked */
    case 3: spcb_block(3, count, cb, idx, gaps, xt + b, ldx, acc + b, 0, none); b += 3 * EP_VL; break;
    case 2: spcb_block(2, count, cb, idx, gaps, xt + b, ldx, acc + b, 0, none); b += 2 * EP_VL; break;
    case 1: spcb_block(1, count, cb, idx, gaps, xt + b, ldx, acc + b, 0, none); b += EP_VL; break;
    default: break;
    }
    if (b < nb) spcb_block(1, count, cb, idx, gaps, xt + b, ldx, acc + b, 1, ep_vtail_of((int)(nb - b)));
}

#endif
