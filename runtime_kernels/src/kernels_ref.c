/* Portable C reference variant: the definition every SIMD variant is tested against. */
#include <string.h>
#include "internal.h"

#define PACK_KB 16 /* columns per pass: one cache line of each row of W, a block of Wp in L1 */
void ep_gemm_pack(int nr, int64_t rows, int64_t cols, const float *W, float *Wp) {
    for (int64_t r0 = 0; r0 < rows; r0 += nr, Wp += nr * cols) {
        const int64_t nc = rows - r0 < nr ? rows - r0 : nr;
        const float *w = W + r0 * cols;
        for (int64_t k0 = 0; k0 < cols; k0 += PACK_KB) {
            const int64_t k1 = cols - k0 < PACK_KB ? cols : k0 + PACK_KB;
            for (int64_t j = 0; j < nr; j++)
                for (int64_t k = k0; k < k1; k++) Wp[k * nr + j] = j < nc ? w[j * cols + k] : 0.0f;
        }
    }
}

void ep_gemm_unpack(int nr, int64_t rows, int64_t cols, const float *Wp, float *W) {
    for (int64_t r = 0; r < rows; r++) {
        const float *p = Wp + r / nr * nr * cols + r % nr;
        for (int64_t k = 0; k < cols; k++) W[r * cols + k] = p[k * nr];
    }
}

/* Y = X W^T + bias by dot products on W as given, one output at a time */
static void gemm_dot_ref(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                         const float *bias, float *Y, int64_t ldy) {
    for (int64_t n = 0; n < N; n++) {
        const float *x = X + n * cols;
        for (int64_t r = 0; r < rows; r++) {
            const float *w = W + r * cols;
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; c++) acc += x[c] * w[c];
            Y[n * ldy + r] = acc + (bias ? bias[r] : 0.0f);
        }
    }
}

#define REF_NR 4 /* the panel width of the reference: exercises packing and its zero padding */
static void gemm_pack_ref(int64_t rows, int64_t cols, const float *W, float *Wp) { ep_gemm_pack(REF_NR, rows, cols, W, Wp); }

/* The definition on the packed layout: one output at a time, columns summed in order. */
static void gemm_ref(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                     const float *bias, float *Y, int64_t ldy) {
    for (int64_t n = 0; n < N; n++) {
        const float *x = X + n * cols;
        for (int64_t r = 0; r < rows; r++) {
            const float *w = Wp + r / REF_NR * REF_NR * cols + r % REF_NR;
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; c++) acc += x[c] * w[c * REF_NR];
            Y[n * ldy + r] = acc + (bias ? bias[r] : 0.0f);
        }
    }
}

static void hash_row_ref(const ep_hcfg *c, uint32_t i, int64_t cols, float *out) {
    uint32_t head[64];
    float z[64];
    for (int k = 0; k < c->k; k++) head[k] = ep_xxh_key_head(i, c->seed + (uint32_t)k);
    for (int64_t j = 0; j < cols; j++) {
        for (int k = 0; k < c->k; k++) {
            uint32_t h = ep_xxh_key_tail(head[k], (uint32_t)j);
            float v = c->buckets[h % c->nb];
            z[k] = (c->sgn && (h >> 31)) ? -v : v;
        }
        if (!c->w1) { out[j] = z[0]; continue; }
        float y = c->b2;
        for (int hh = 0; hh < c->h; hh++) {
            float a = c->b1[hh];
            for (int k = 0; k < c->k; k++) a += c->w1[hh * c->k + k] * z[k];
            y += c->w2[hh] * (a > 0.0f ? a : 0.0f);
        }
        out[j] = y;
    }
}

/* Stockham autosort radix-4 stage: sub-transform length L, stride s (L * s = m).
 * Reads a[q + s*(p + t*L/4)], writes b[q + s*(4p + t)], twiddle w^t_p = tw[t*p*s]. */
void ep_cfft_radix4_stage_ref(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv) {
    const int64_t l4 = L / 4;
    const float sg = inv ? 1.0f : -1.0f; /* forward: multiply (b - d) by -i */
    for (int64_t p = 0; p < l4; p++) {
        const float w1r = tw[2 * (p * s)], w1i = tw[2 * (p * s) + 1];
        const float w2r = tw[2 * (2 * p * s)], w2i = tw[2 * (2 * p * s) + 1];
        const float w3r = tw[2 * (3 * p * s)], w3i = tw[2 * (3 * p * s) + 1];
        for (int64_t q = 0; q < s; q++) {
            const float *A = a + 2 * (q + s * p), *B = A + 2 * s * l4, *C = B + 2 * s * l4, *D = C + 2 * s * l4;
            float apcr = A[0] + C[0], apci = A[1] + C[1], amcr = A[0] - C[0], amci = A[1] - C[1];
            float bpdr = B[0] + D[0], bpdi = B[1] + D[1], bmdr = B[0] - D[0], bmdi = B[1] - D[1];
            /* j = sg * i * (b - d) */
            float jr = -sg * bmdi, ji = sg * bmdr;
            float *o = b + 2 * (q + s * 4 * p);
            float y1r = amcr + jr, y1i = amci + ji;
            float y2r = apcr - bpdr, y2i = apci - bpdi;
            float y3r = amcr - jr, y3i = amci - ji;
            o[0] = apcr + bpdr; o[1] = apci + bpdi;
            o[2 * s] = y1r * w1r - y1i * w1i; o[2 * s + 1] = y1r * w1i + y1i * w1r;
            o[4 * s] = y2r * w2r - y2i * w2i; o[4 * s + 1] = y2r * w2i + y2i * w2r;
            o[6 * s] = y3r * w3r - y3i * w3i; o[6 * s + 1] = y3r * w3i + y3i * w3r;
        }
    }
}

/* last radix-2 stage (L == 2) */
void ep_cfft_radix2_stage_ref(int64_t s, const float *a, float *b) {
    for (int64_t q = 0; q < s; q++) {
        const float *A = a + 2 * q, *B = a + 2 * (q + s);
        float *o = b + 2 * q;
        float br = B[0], bi = B[1], ar = A[0], ai = A[1];
        o[0] = ar + br; o[1] = ai + bi;
        o[2 * s] = ar - br; o[2 * s + 1] = ai - bi;
    }
}

static void cfft_ref(int64_t m, const float *tw, const float *src, float *x, float *tmp, int inv) {
    float *a = x, *b = tmp;
    if (src != x) memcpy(x, src, (size_t)m * 2 * sizeof(float));
    int64_t L = m, s = 1;
    for (; L >= 4; L /= 4, s *= 4) {
        ep_cfft_radix4_stage_ref(L, s, tw, a, b, inv);
        float *t = a; a = b; b = t;
    }
    if (L == 2) {
        ep_cfft_radix2_stage_ref(s, a, b);
        float *t = a; a = b; b = t;
    }
    if (a != x) memcpy(x, a, (size_t)m * 2 * sizeof(float));
}

void ep_rfft_post_ref(int64_t m, const float *rt, float *X, int64_t k0) {
    if (k0 == 1) {
        float z0r = X[0], z0i = X[1];
        X[0] = z0r + z0i; X[1] = 0.0f;
        X[2 * m] = z0r - z0i; X[2 * m + 1] = 0.0f;
    }
    for (int64_t k = k0; k <= m / 2; k++) {
        const int64_t l = m - k;
        float ar = X[2 * k], ai = X[2 * k + 1], br = X[2 * l], bi = X[2 * l + 1];
        /* E = (Z_k + conj Z_l)/2, D = (Z_k - conj Z_l)/2; X_k = E - i w^k D */
        float er = 0.5f * (ar + br), ei = 0.5f * (ai - bi), dr = 0.5f * (ar - br), di = 0.5f * (ai + bi);
        float wr = rt[2 * k], wi = rt[2 * k + 1];
        float tr = wr * dr - wi * di, ti = wr * di + wi * dr; /* w^k D */
        X[2 * k] = er + ti; X[2 * k + 1] = ei - tr;
        if (l == k) break;
        /* E_l = conj E, D_l = -conj D, w^l = -conj w^k: X_l = conj E - i conj(w^k D) */
        X[2 * l] = er - ti; X[2 * l + 1] = -ei - tr;
    }
}

void ep_irfft_pre_ref(int64_t m, const float *rt, const float *X, float *Z, int64_t k0) {
    if (k0 == 1) {
        float x0 = X[0], xm = X[2 * m];
        Z[0] = 0.5f * (x0 + xm); Z[1] = 0.5f * (x0 - xm); /* E_0 + i O_0 */
    }
    for (int64_t k = k0; k <= m / 2; k++) {
        const int64_t l = m - k;
        float ar = X[2 * k], ai = X[2 * k + 1], br = X[2 * l], bi = X[2 * l + 1];
        float er = 0.5f * (ar + br), ei = 0.5f * (ai - bi), dr = 0.5f * (ar - br), di = 0.5f * (ai + bi);
        float wr = rt[2 * k], wi = -rt[2 * k + 1]; /* conj w^k */
        float orr = wr * dr - wi * di, oi = wr * di + wi * dr; /* O_k = D conj(w^k) */
        Z[2 * k] = er - oi; Z[2 * k + 1] = ei + orr;       /* E + i O */
        /* for l: E_l = conj E_k, O_l = conj O_k */
        if (l == k) break;
        Z[2 * l] = er + oi; Z[2 * l + 1] = -ei + orr;
    }
}

static void rfft_post_ref(int64_t m, const float *rt, float *X) { ep_rfft_post_ref(m, rt, X, 1); }
static void irfft_pre_ref(int64_t m, const float *rt, const float *X, float *Z) { ep_irfft_pre_ref(m, rt, X, Z, 1); }

static void cmac_ref(int64_t m, const float *a, const float *b, float *acc) {
    for (int64_t k = 0; k < m; k++) {
        float ar = a[2 * k], ai = a[2 * k + 1], br = b[2 * k], bi = b[2 * k + 1];
        acc[2 * k] += ar * br - ai * bi;
        acc[2 * k + 1] += ar * bi + ai * br;
    }
}

static void cmac_rows_ref(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                          int64_t ldb, float *acc, int64_t ldacc) {
    for (int64_t r = 0; r < rows; r++) memset(acc + r * ldacc, 0, sizeof(float) * 2 * (size_t)m);
    for (int64_t j = 0; j < nj; j++)
        for (int64_t r = 0; r < rows; r++) cmac_ref(m, a + j * lda, B + (j * rows + r) * ldb, acc + r * ldacc);
}

void ep_spcb_slice_ref(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                       int64_t ldx, int64_t nb, float *acc, int64_t ldacc) {
    for (int l = 0; l < EP_SPCB_ROWS; l++)
        for (int64_t b = 0; b < nb; b++) {
            float sum = 0.0f;
            int64_t d = 0;
            int c = EP_SPCB_ROWS;
            for (int32_t j = 0; j < len[l]; j++) {
                while (len[c - 1] <= j) c--;
                const int64_t e = d + l, cl = wide ? ((const int32_t *)col)[e] : ((const uint16_t *)col)[e];
                sum += val[e] * xt[cl * ldx + b];
                d += c;
            }
            acc[l * ldacc + b] = sum;
        }
}

void ep_hyper_gather_ref(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                         float *out) {
    for (int64_t m = 0; m < count; m++) {
        const float *p = table + (int64_t)ep_hyper_index(stream, len, m, bits) * k;
        for (int j = 0; j < k; j++) out[m * k + j] = p[j];
    }
}

const ep_ops ep_ops_ref = {
    "ref", gemm_ref, gemm_dot_ref, gemm_pack_ref, hash_row_ref, NULL, cfft_ref, rfft_post_ref, irfft_pre_ref, cmac_ref,
    .cmac_rows = cmac_rows_ref, .spcb_slice = ep_spcb_slice_ref, .hyper_gather = ep_hyper_gather_ref,
    .tile = {
        .gemm_mr = 1, .gemm_nr = REF_NR, .gemm_kr = 1, /* one output at a time on 4-row panels */
        .gemm_kc = 0,                                   /* no column blocking */
        .dot_mr = 1, .dot_nr = 1, .dot_kr = 1, .dot_kc = 0, /* one dot product at a time */
        .pack_kr = 1,                                   /* one column at a time */
        .pack_min_n = 1 << 30,                          /* dot products read W as fast as the panels */
        .hash_row_lanes = 1,                       /* one column per step */
        .hash_dot_lanes = 0,                       /* no fused kernel: the core decodes + gemm */
        .fft_lanes = 1, .fft_min_m = 2,            /* scalar stages for every m */
        .split_lanes = 1,                          /* one bin and its mirror per step */
        .cmac_lanes = 1,
        .cmac_rows_lanes = 1, .cmac_rows_mr = 1,   /* one complex value of one row per step */
        .spcb_lanes = 1, .spcb_min_nb = 1 << 30,   /* one batch column at a time, every entry */
        .hyper_lanes = 1,                          /* one index at a time, byte by byte */
    },
};
