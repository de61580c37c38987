/* The packed GEMM written once over simd.h's vector operations: an MR x NR broadcast-FMA
 * register tile (NR = 2 vectors) over NR-row panels, the layout ep_gemm_pack(NR, ...) writes, and
 * its column-blocking driver. The including SIMD variant file defines MR (4, 6 or 12) and KC, may
 * define GEMM_U(m) (accumulator sets for an m-row tile), and wraps gemm_simd under its own name. */
#ifndef EDGEPACK_GEMM_SIMD_H
#define EDGEPACK_GEMM_SIMD_H

#include "internal.h"
#include "simd.h"

#if !defined(MR) || !defined(KC)
#error "gemm_simd.h: define MR and KC first"
#endif
#if MR != 4 && MR != 6 && MR != 12
#error "gemm_simd.h: MR must be 4, 6 or 12 (the driver's row tails)"
#endif

#define NR (2 * EP_VL)
#ifndef GEMM_MASKED /* 1: masked loads and stores on every tile, not only on a partial panel */
#define GEMM_MASKED 0
#endif
#ifndef GEMM_U /* few rows: more independent accumulators to hide the FMA latency */
#define GEMM_U(m) ((m) == 1 ? 4 : (m) <= 3 ? 2 : 1)
#endif

/* y[i, 0..nc) (+)= x[i, 0..kc) . panel for i < M; first: y = acc + b (b: NR floats, zero
 * padded), else y += acc. U independent accumulator sets over interleaved columns hide the FMA
 * latency when M is small. */
EP_SI void gemm_tile(const int M, const int U, int64_t kc, const float *x, int64_t ldx, const float *w,
                     const float *b, float *y, int64_t ldy, int first, int nc) {
    ep_v acc[4][MR][2]; /* U <= 4, M <= MR: fixed sizes keep them in registers */
    for (int u = 0; u < U; u++)
        for (int i = 0; i < M; i++) acc[u][i][0] = acc[u][i][1] = ep_vset1(0.0f);
    int64_t k = 0;
    for (; k + U <= kc; k += U)
        for (int u = 0; u < U; u++) {
            const ep_v w0 = ep_vld(w + (k + u) * NR), w1 = ep_vld(w + (k + u) * NR + EP_VL);
            for (int i = 0; i < M; i++) {
                const ep_v xv = ep_vbcast(x + i * ldx + k + u);
                acc[u][i][0] = ep_vfma(acc[u][i][0], xv, w0);
                acc[u][i][1] = ep_vfma(acc[u][i][1], xv, w1);
            }
        }
    for (; k < kc; k++) {
        const ep_v w0 = ep_vld(w + k * NR), w1 = ep_vld(w + k * NR + EP_VL);
        for (int i = 0; i < M; i++) {
            const ep_v xv = ep_vbcast(x + i * ldx + k);
            acc[0][i][0] = ep_vfma(acc[0][i][0], xv, w0);
            acc[0][i][1] = ep_vfma(acc[0][i][1], xv, w1);
        }
    }
    for (int u = 1; u < U; u++)
        for (int i = 0; i < M; i++) {
            acc[0][i][0] = ep_vadd(acc[0][i][0], acc[u][i][0]);
            acc[0][i][1] = ep_vadd(acc[0][i][1], acc[u][i][1]);
        }
    const ep_vtail t0 = ep_vtail_of(nc < EP_VL ? nc : EP_VL), t1 = ep_vtail_of(nc < EP_VL ? 0 : nc - EP_VL);
    const ep_v b0 = ep_vld(b), b1 = ep_vld(b + EP_VL);
    for (int i = 0; i < M; i++) {
        float *yi = y + i * ldy;
        ep_v v0 = acc[0][i][0], v1 = acc[0][i][1];
        if (first) { v0 = ep_vadd(v0, b0); v1 = ep_vadd(v1, b1); }
        if (!GEMM_MASKED && nc == NR) {
            if (!first) { v0 = ep_vadd(v0, ep_vld(yi)); v1 = ep_vadd(v1, ep_vld(yi + EP_VL)); }
            ep_vst(yi, v0); ep_vst(yi + EP_VL, v1);
        } else {
            if (!first) { v0 = ep_vadd(v0, ep_vld_n(yi, t0)); v1 = ep_vadd(v1, ep_vld_n(yi + EP_VL, t1)); }
            ep_vst_n(yi, v0, t0); ep_vst_n(yi + EP_VL, v1, t1);
        }
    }
}

#define GEMM_CASE(m) case m: gemm_tile(m, GEMM_U(m), kc, x, cols, w, b, y, ldy, k0 == 0, nc); break;

/* Y[N, rows] = X[N, cols] . W^T + bias from Wp = ep_gemm_pack(NR, W) (ep_ops' gemm contract):
 * N > MR: columns in KC blocks accumulated into Y, so a panel slice stays in L1 while the rows
 * of X pass; else one unblocked pass that streams each panel once. */
static void gemm_simd(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                      const float *bias, float *Y, int64_t ldy) {
    float b[NR];
    const int64_t kb = N > MR ? KC : cols;
    for (int64_t k0 = 0; k0 < cols; k0 += kb) {
        const int64_t kc = cols - k0 < kb ? cols - k0 : kb;
        for (int64_t r0 = 0; r0 < rows; r0 += NR) {
            const int nc = (int)(rows - r0 < NR ? rows - r0 : NR);
            const float *w = Wp + r0 * cols + k0 * NR;
            for (int j = 0; j < NR; j++) b[j] = bias && j < nc ? bias[r0 + j] : 0.0f;
            for (int64_t n = 0; n < N; n += MR) {
                const float *x = X + n * cols + k0;
                float *y = Y + n * ldy + r0;
                switch (N - n < MR ? N - n : MR) {
                    GEMM_CASE(1) GEMM_CASE(2) GEMM_CASE(3) GEMM_CASE(4)
#if MR > 4
                    GEMM_CASE(5) GEMM_CASE(6)
#endif
#if MR > 6
                    GEMM_CASE(7) GEMM_CASE(8) GEMM_CASE(9) GEMM_CASE(10) GEMM_CASE(11) GEMM_CASE(12)
#endif
                default: break;
                }
            }
        }
    }
}

#undef GEMM_CASE

#endif
