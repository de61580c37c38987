/* Micro-kernel tests in XNNPACK's discipline: every ISA variant compiled in and supported by this
 * CPU runs every micro-kernel of its ep_ops table against the scalar reference table (ep_ops_ref)
 * on cases generated from the variant's declared tiles (ep_tiles in src/internal.h); the
 * reference itself is checked against naive double-precision math on the same kind of cases.
 * Prints one line per variant and kernel (cases run, worst error / tolerance); a mismatch prints
 * variant, kernel and sizes. Exit status 1 on any mismatch. About 2 s under qemu. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "internal.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* Tolerances, relative to the reference: errors are scaled by the magnitude the reference sums
 * over (sum of |terms| for dot products, the output's rms for FFTs), so they stay meaningful
 * under cancellation. The variants reorder sums and fuse multiply-adds, so equality is exact
 * only where no arithmetic is done: hash_row with K = 1 and no recon MLP (one signed bucket). */
#define TOL_DOT 1e-5   /* gemm, hash_dot, hash_row with the recon MLP: |y - ref| / sum |terms| */
#define TOL_FFT 1e-6   /* cfft: max |Y - ref| / rms(ref), times log2(2m) (one rounding per stage) */
#define TOL_SPLIT 4e-6 /* rfft_post, irfft_pre: max |X - ref| / rms(ref) */
#define TOL_CMAC 2e-6  /* cmac: |acc - ref| / (|acc| + |a||b|) per element */
#define MAX_FAIL_LINES 8 /* per variant and kernel */

typedef struct kstat {
    const char *var, *kern;
    int cases, fails;
    double worst; /* the largest error / tolerance over the cases */
} kstat;

static kstat stat_new(const ep_ops *v, const char *kern) {
    kstat s = {v->name, kern, 0, 0, 0.0};
    return s;
}

/* One case: err must be <= tol (NaN fails); fmt: printf-style sizes of the case. */
static void check(kstat *s, double err, double tol, const char *fmt, ...) {
    s->cases++;
    double r = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0.0);
    if (r > s->worst || r != r) s->worst = r != r ? INFINITY : r;
    if (err <= tol) return;
    if (s->fails++ < MAX_FAIL_LINES) {
        char buf[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        printf("FAIL %s %s %s: error %.3g > tolerance %.3g\n", s->var, s->kern, buf, err, tol);
    }
}

static int g_failed;
static void summary(const kstat *s) {
    printf("%-7s %-10s %5d cases  worst %.2f of tolerance  %s\n", s->var, s->kern, s->cases, s->worst,
           s->fails ? "FAILED" : "ok");
    if (s->fails) g_failed = 1;
}

/* ---- data ---- */
static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd(void) { return (float)((double)rnd_u32() / 4294967296.0 * 2.0 - 1.0); }

/* exactly n floats (so ASan sees any access past the end), random in [-1, 1) */
static float *fvec(int64_t n) {
    float *v = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!v) { printf("out of memory\n"); exit(2); }
    for (int64_t i = 0; i < n; i++) v[i] = rnd();
    return v;
}
static double *dvec(int64_t n) {
    double *v = (double *)calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!v) { printf("out of memory\n"); exit(2); }
    return v;
}

/* a NaN payload no kernel produces: marks memory a kernel must not write */
static const uint32_t SENTINEL = 0x7FC0DEADu;
static void fill_sentinel(float *v, int64_t n) { for (int64_t i = 0; i < n; i++) memcpy(v + i, &SENTINEL, 4); }
static int is_sentinel(float f) { uint32_t u; memcpy(&u, &f, 4); return u == SENTINEL; }

/* max_i |got_i - want_i| / scale_i; at: the worst index; NaN counts as infinite */
static double max_err(const float *got, const double *want, const double *scale, int64_t n, int64_t *at) {
    double e = 0.0;
    *at = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]) / (scale[i] > 0 ? scale[i] : 1e-30);
        if (d != d) d = INFINITY;
        if (d > e) { e = d; *at = i; }
    }
    return e;
}
static double rms(const double *v, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += v[i] * v[i];
    return sqrt(s / (double)(n > 0 ? n : 1)) + 1e-30;
}

/* Sizes from a declared tile t: 1, t-1, t, t+1, 2t, 2t+1, 3t-1 (positive, no duplicates). */
static int tile_sizes(int64_t t, int64_t *out, int n) {
    const int64_t c[7] = {1, t - 1, t, t + 1, 2 * t, 2 * t + 1, 3 * t - 1};
    for (int i = 0; i < 7; i++) {
        int dup = c[i] <= 0;
        for (int j = 0; j < n && !dup; j++) dup = out[j] == c[i];
        if (!dup) out[n++] = c[i];
    }
    return n;
}

/* ---- GEMM ---- */
/* packed: v->gemm on W packed by ep_gemm_pack (with the pack itself checked); else v->gemm_dot on W */
static void gemm_case(const ep_ops *v, kstat *s, int packed, int64_t N, int64_t rows, int64_t cols, int with_bias,
                      int64_t ldy) {
    float *X = fvec(N * cols), *W = fvec(rows * cols), *bias = with_bias ? fvec(rows) : NULL;
    const int64_t ny = (N - 1) * ldy + rows;
    float *Y = fvec(ny), *R = fvec(ny);
    double *want = dvec(ny), *scale = dvec(ny);
    /* each variant's packing (exactly sized, pre-filled with NaNs so unwritten padding shows),
     * checked against ep_gemm_pack bit for bit and to round-trip, then its kernel on it against
     * the reference's own packing */
    const int nr = v->tile.gemm_nr, rnr = ep_ops_ref.tile.gemm_nr;
    const int64_t np = ep_gemm_packed_floats(nr, rows, cols), nrp = ep_gemm_packed_floats(rnr, rows, cols);
    float *Wp = fvec(np), *Wr = fvec(nrp), *Wu = fvec(rows * cols);
    float *Wg = fvec(np);
    fill_sentinel(Wp, np);
    v->gemm_pack(rows, cols, W, Wp);
    ep_gemm_pack(nr, rows, cols, W, Wg);
    ep_gemm_unpack(nr, rows, cols, Wp, Wu);
    int64_t bad_pack = -1;
    const char *why = "a packed float left unwritten";
    for (int64_t i = 0; i < np && bad_pack < 0; i++)
        if (is_sentinel(Wp[i])) bad_pack = i;
    if (bad_pack < 0 && memcmp(Wp, Wg, sizeof(float) * (size_t)np) != 0) { bad_pack = 0; why = "differs from ep_gemm_pack"; }
    if (bad_pack < 0 && memcmp(W, Wu, sizeof(float) * (size_t)(rows * cols)) != 0) { bad_pack = 0; why = "unpack does not give W back"; }
    if (packed)
        check(s, bad_pack >= 0 ? INFINITY : 0.0, TOL_DOT, "gemm_pack nr=%d rows=%lld cols=%lld (%s)", nr,
              (long long)rows, (long long)cols, why);
    ep_gemm_pack(rnr, rows, cols, W, Wr);
    fill_sentinel(Y, ny);
    if (packed) v->gemm(N, rows, cols, X, Wp, bias, Y, ldy);
    else v->gemm_dot(N, rows, cols, X, W, bias, Y, ldy);
    if (v != &ep_ops_ref) ep_ops_ref.gemm(N, rows, cols, X, Wr, bias, R, ldy);
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < rows; r++) {
            double acc = bias ? bias[r] : 0.0, mag = bias ? fabs(bias[r]) : 0.0;
            for (int64_t c = 0; c < cols; c++) {
                double p = (double)X[n * cols + c] * W[r * cols + c];
                acc += p; mag += fabs(p);
            }
            want[n * ldy + r] = v == &ep_ops_ref ? acc : R[n * ldy + r];
            scale[n * ldy + r] = mag;
        }
    int64_t at = 0, gap = -1;
    for (int64_t n = 0; n + 1 < N; n++) /* the gaps between output rows stay untouched */
        for (int64_t r = rows; r < ldy; r++) {
            if (!is_sentinel(Y[n * ldy + r]) && gap < 0) gap = n * ldy + r;
            want[n * ldy + r] = 0.0; scale[n * ldy + r] = 1.0; Y[n * ldy + r] = 0.0f;
        }
    double e = gap >= 0 ? INFINITY : max_err(Y, want, scale, ny, &at);
    if (gap >= 0) at = gap;
    check(s, e, TOL_DOT, "N=%lld rows=%lld cols=%lld bias=%d ldy=%lld (at n=%lld r=%lld%s)", (long long)N,
          (long long)rows, (long long)cols, with_bias, (long long)ldy, (long long)(at / ldy), (long long)(at % ldy),
          gap >= 0 ? ", wrote between output rows" : "");
    free(X); free(W); free(Wp); free(Wg); free(Wr); free(Wu); free(bias); free(Y); free(R); free(want); free(scale);
}

/* packed: the gemm kernel on its tiles (gemm_*), else gemm_dot on its own (dot_*); both are
 * compared with the reference's packed gemm */
static void test_gemm(const ep_ops *v, int packed) {
    const ep_tiles *t = &v->tile;
    int64_t Ns[8], rs[8], cs[24];
    int nN = tile_sizes(packed ? t->gemm_mr : t->dot_mr, Ns, 0), nr = tile_sizes(packed ? t->gemm_nr : t->dot_nr, rs, 0);
    int nc = tile_sizes(packed ? t->gemm_kr : t->dot_kr, cs, 0);
    const int kc = packed ? t->gemm_kc : t->dot_kc;
    if (kc > 0) nc = tile_sizes(kc, cs, nc);
    if (packed) nc = tile_sizes(t->pack_kr, cs, nc);
    cs[nc++] = 257; /* above every vector width, odd */
    kstat s = stat_new(v, packed ? "gemm" : "gemm_dot");
    for (int a = 0; a < nN; a++)
        for (int b = 0; b < nr; b++)
            for (int c = 0; c < nc; c++)
                for (int bias = 0; bias < 2; bias++)
                    for (int pad = 0; pad < 2; pad++)
                        gemm_case(v, &s, packed, Ns[a], rs[b], cs[c], bias, rs[b] + 3 * pad);
    summary(&s);
}

/* Packed weights belong to the variant that packed them (its panel width): an expand plan made
 * under each supported variant and run after switching to every other one must still give
 * X V^T + bias, V from ep_hashed_decode, within the dot-product tolerance; ep_hashed_plan_unpack
 * unpacks V exactly. */
static void test_plan_across_variants(void) {
    const int64_t rows = 45, cols = 37, N = 14; /* partial panels for every nr, more than one row block */
    ep_hash_params p = {rows, cols, 97, 1, 5, 1};
    float *bk = fvec(97), *X = fvec(N * cols), *bias = fvec(rows), *V = fvec(rows * cols), *Y = fvec(N * rows);
    kstat s = {"all", "plan_xvar", 0, 0, 0.0};
    const int nv = ep_variant_count();
    for (int a = 0; a < nv; a++) {
        ep_hashed_plan *pl = NULL;
        if (ep_set_variant(ep_variant_name(a)) || ep_hashed_plan_create(&p, bk, NULL, 0, &pl) ||
            ep_hashed_decode(&p, bk, NULL, 0, V)) {
            check(&s, INFINITY, TOL_DOT, "plan under %s: %s", ep_variant_name(a), ep_last_error());
            ep_hashed_plan_destroy(pl);
            continue;
        }
        for (int b = 0; b < nv; b++) {
            ep_set_variant(ep_variant_name(b));
            fill_sentinel(Y, N * rows);
            double e = ep_hashed_matmul_expand(pl, X, N, cols, bias, Y, rows) ? INFINITY : 0.0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t r = 0; r < rows; r++) {
                    double acc = bias[r], mag = fabs(bias[r]);
                    for (int64_t c = 0; c < cols; c++) {
                        acc += (double)X[n * cols + c] * V[r * cols + c];
                        mag += fabs((double)X[n * cols + c] * V[r * cols + c]);
                    }
                    double d = fabs(Y[n * rows + r] - acc) / mag;
                    if (!(d <= e)) e = d != d ? INFINITY : d;
                }
            check(&s, e, TOL_DOT, "plan made under %s, run under %s", ep_variant_name(a), ep_variant_name(b));
        }
        float *Vp = (float *)malloc(sizeof(float) * (size_t)(rows * cols)); /* K = 1: exact */
        const int same = Vp && ep_hashed_plan_unpack(pl, Vp) == EP_OK && !memcmp(Vp, V, sizeof(float) * (size_t)(rows * cols));
        check(&s, same ? 0.0 : INFINITY, TOL_DOT, "ep_hashed_plan_unpack under %s differs from ep_hashed_decode",
              ep_variant_name(a));
        free(Vp);
        ep_hashed_plan_destroy(pl);
    }
    ep_set_variant("auto");
    summary(&s);
    free(bk); free(X); free(bias); free(V); free(Y);
}

/* ---- hashing ---- */
typedef struct hconf { int k, h, sgn; uint32_t nb, seed; } hconf; /* h = 0: no recon MLP */
static const hconf k_hconf[] = {
    {1, 0, 0, 1024, 7},               /* K = 1, power-of-two buckets (mask), unsigned */
    {1, 0, 1, 1000, 42},              /* K = 1, modulo, signed */
    {1, 0, 1, 1, 3},                  /* one bucket */
    {1, 0, 1, (1u << 20) + 7, 99},    /* large modulo */
    {1, 3, 1, 500, 5},                /* K = 1 with a recon MLP */
    {3, 4, 0, 64, 11},                /* K = 3 recon, power of two, unsigned */
    {2, 1, 1, 1000, 0xFFFFFFFFu},     /* K = 2 recon, signed, seed + k wraps */
};
#define NHCONF ((int)(sizeof k_hconf / sizeof k_hconf[0]))
static const uint32_t k_rows[] = {0, 77777, 0xFFFFFFFEu};

typedef struct hdata { ep_hcfg c; float *bk, *recon; } hdata;
static hdata hdata_make(const hconf *q) {
    hdata d;
    memset(&d, 0, sizeof d);
    d.bk = fvec(q->nb);
    d.c.seed = q->seed; d.c.nb = q->nb; d.c.k = q->k; d.c.sgn = q->sgn; d.c.buckets = d.bk;
    if (q->h) {
        d.recon = fvec((int64_t)q->h * (q->k + 2) + 1); /* [W1 (H x K), b1 (H), W2 (H), b2] */
        d.c.h = q->h; d.c.w1 = d.recon; d.c.b1 = d.recon + q->h * q->k; d.c.w2 = d.c.b1 + q->h;
        d.c.b2 = d.c.w2[q->h];
    }
    return d;
}
static void hdata_free(hdata *d) { free(d->bk); free(d->recon); }

/* V[i, j] in double from the definition, and the sum of |terms| of its recon MLP (1 for K = 1) */
static double naive_v(const ep_hcfg *c, uint32_t i, uint32_t j, double *mag) {
    double z[EP_MAX_HASHES];
    for (int k = 0; k < c->k; k++) {
        uint32_t h = ep_xxh_key_tail(ep_xxh_key_head(i, c->seed + (uint32_t)k), j);
        double b = c->buckets[h % c->nb];
        z[k] = (c->sgn && (h >> 31)) ? -b : b;
    }
    if (!c->w1) { *mag = fabs(z[0]); return z[0]; }
    double y = c->b2, m = fabs(c->b2);
    for (int hh = 0; hh < c->h; hh++) {
        double a = c->b1[hh], am = fabs(c->b1[hh]);
        for (int k = 0; k < c->k; k++) { a += c->w1[hh * c->k + k] * z[k]; am += fabs(c->w1[hh * c->k + k] * z[k]); }
        y += c->w2[hh] * (a > 0 ? a : 0.0);
        m += fabs(c->w2[hh]) * am;
    }
    *mag = m;
    return y;
}

static void hash_row_case(const ep_ops *v, kstat *s, const hconf *q, const ep_hcfg *c, uint32_t i, int64_t cols) {
    float *out = fvec(cols), *R = fvec(cols);
    double *want = dvec(cols), *scale = dvec(cols);
    v->hash_row(c, i, cols, out);
    for (int64_t j = 0; j < cols; j++) want[j] = naive_v(c, i, (uint32_t)j, &scale[j]);
    if (v != &ep_ops_ref) {
        ep_ops_ref.hash_row(c, i, cols, R);
        for (int64_t j = 0; j < cols; j++) want[j] = R[j];
    }
    int64_t at = 0;
    double e, tol;
    if (!c->w1) { /* one signed bucket: bit-exact */
        for (int64_t j = 0; j < cols; j++) R[j] = (float)want[j];
        at = -1;
        for (int64_t j = 0; j < cols && at < 0; j++)
            if (memcmp(out + j, R + j, sizeof(float)) != 0) at = j;
        e = at < 0 ? 0.0 : INFINITY;
        tol = 0.0;
        if (at < 0) at = 0;
    } else {
        e = max_err(out, want, scale, cols, &at);
        tol = TOL_DOT;
    }
    check(s, e, tol, "K=%d H=%d signed=%d nb=%u seed=%u row=%u cols=%lld (at j=%lld)", q->k, q->h, q->sgn,
          (unsigned)q->nb, (unsigned)q->seed, (unsigned)i, (long long)cols, (long long)at);
    free(out); free(R); free(want); free(scale);
}

static void test_hash_row(const ep_ops *v) {
    int64_t cs[16];
    int nc = tile_sizes(v->tile.hash_row_lanes, cs, 0);
    cs[nc++] = 1000;
    kstat s = stat_new(v, "hash_row");
    for (int q = 0; q < NHCONF; q++) {
        hdata d = hdata_make(&k_hconf[q]);
        for (int r = 0; r < (int)(sizeof k_rows / sizeof k_rows[0]); r++)
            for (int c = 0; c < nc; c++) hash_row_case(v, &s, &k_hconf[q], &d.c, k_rows[r], cs[c]);
        hdata_free(&d);
    }
    summary(&s);
}

/* hash_dot against the reference's decoded row (ep_ops_ref.hash_row: the core's path when a
 * variant has no hash_dot) dotted in double */
static void hash_dot_case(const ep_ops *v, kstat *s, const hconf *q, const ep_hcfg *c, uint32_t i, int64_t cols,
                          int N, int64_t ldy) {
    float *X = fvec(N * cols), *V = fvec(cols), bias = rnd();
    const int64_t ny = (N - 1) * ldy + 1;
    float *y = fvec(ny);
    double *want = dvec(ny), *scale = dvec(ny);
    fill_sentinel(y, ny);
    v->hash_dot(c, i, cols, X, N, bias, y, ldy);
    ep_ops_ref.hash_row(c, i, cols, V);
    int64_t gap = -1, at = 0;
    for (int64_t t = 0; t < ny; t++) {
        if (t % ldy) { /* not an output: stays untouched */
            if (!is_sentinel(y[t]) && gap < 0) gap = t;
            y[t] = 0.0f; scale[t] = 1.0;
            continue;
        }
        double acc = bias, mag = fabs(bias);
        for (int64_t j = 0; j < cols; j++) {
            double p = (double)X[(t / ldy) * cols + j] * V[j];
            acc += p; mag += fabs(p);
        }
        want[t] = acc; scale[t] = mag;
    }
    double e = gap >= 0 ? INFINITY : max_err(y, want, scale, ny, &at);
    if (gap >= 0) at = gap;
    check(s, e, TOL_DOT, "K=%d H=%d signed=%d nb=%u row=%u cols=%lld N=%d ldy=%lld (at n=%lld%s)", q->k, q->h,
          q->sgn, (unsigned)q->nb, (unsigned)i, (long long)cols, N, (long long)ldy, (long long)(at / ldy),
          gap >= 0 ? ", wrote between outputs" : "");
    free(X); free(V); free(y); free(want); free(scale);
}

static void test_hash_dot(const ep_ops *v) {
    if (!v->hash_dot) { printf("%-7s %-10s none: the core decodes rows and calls gemm\n", v->name, "hash_dot"); return; }
    int64_t cs[16];
    int nc = tile_sizes(v->tile.hash_dot_lanes, cs, 0);
    cs[nc++] = 1000;
    kstat s = stat_new(v, "hash_dot");
    for (int q = 0; q < NHCONF; q++) {
        hdata d = hdata_make(&k_hconf[q]);
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < nc; c++)
                for (int N = 1; N <= EP_HASH_DOT_MAXN; N++)
                    for (int ldy = 1; ldy <= 5; ldy += 4) hash_dot_case(v, &s, &k_hconf[q], &d.c, k_rows[r], cs[c], N, ldy);
        hdata_free(&d);
    }
    summary(&s);
}

/* ---- FFT ---- */
/* The m twiddles e^{-+2 pi i k/m} and, for m >= EP_TW1_MIN, the first-stage table, laid out as
 * ep_tw_floats documents in internal.h. */
static float *twiddles(int64_t m, int inv) {
    float *t = fvec(ep_tw_floats(m));
    const double sg = inv ? 1.0 : -1.0;
    for (int64_t k = 0; k < m; k++) {
        double a = sg * 2.0 * M_PI * (double)k / (double)m;
        t[2 * k] = (float)cos(a); t[2 * k + 1] = (float)sin(a);
    }
    if (m < EP_TW1_MIN) return t;
    float *f = t + 2 * m;
    for (int64_t p0 = 0; p0 < m / 4; p0 += 4, f += 48)
        for (int t1 = 1; t1 <= 3; t1++)
            for (int64_t u = 0; u < 4; u++) {
                double a = sg * 2.0 * M_PI * (double)(t1 * (p0 + u)) / (double)m;
                float *re = f + 16 * (t1 - 1), *im = re + 8;
                re[2 * u] = re[2 * u + 1] = (float)cos(a);
                im[2 * u] = im[2 * u + 1] = (float)sin(a);
            }
    return t;
}
/* rt[k] = e^{-2 pi i k/(2m)}, k < m: the split pass's table */
static float *split_twiddles(int64_t m) {
    float *rt = fvec(2 * m);
    for (int64_t k = 0; k < m; k++) {
        double a = -M_PI * (double)k / (double)m;
        rt[2 * k] = (float)cos(a); rt[2 * k + 1] = (float)sin(a);
    }
    return rt;
}

/* m = 2, 4, ... up to a few times the declared vector widths (cfft's smallest vector m and
 * lanes, the split pass's lanes), then the large ones */
static int fft_sizes(const ep_tiles *t, int64_t *out) {
    int n = 0;
    int64_t top = 64;
    if (8 * (int64_t)t->fft_min_m > top) top = 8 * (int64_t)t->fft_min_m;
    if (16 * (int64_t)t->fft_lanes > top) top = 16 * (int64_t)t->fft_lanes;
    if (16 * (int64_t)t->split_lanes > top) top = 16 * (int64_t)t->split_lanes;
    for (int64_t m = 2; m <= top; m *= 2) out[n++] = m;
    out[n++] = 1024;
    out[n++] = 4096;
    return n;
}
#define NAIVE_MAX_M 1024 /* the O(m^2) DFT of the reference check stops here */

static double log2d(int64_t m) { return log((double)m) / log(2.0); }

static void cfft_case(const ep_ops *v, kstat *s, int64_t m, int inv, int inplace) {
    float *tw = twiddles(m, inv), *src = fvec(2 * m), *dst = fvec(2 * m), *tmp = fvec(2 * m);
    float *keep = fvec(2 * m), *R = fvec(2 * m), *Rt = fvec(2 * m);
    double *want = dvec(2 * m), *scale = dvec(2 * m);
    memcpy(keep, src, sizeof(float) * 2 * (size_t)m);
    if (inplace) memcpy(dst, src, sizeof(float) * 2 * (size_t)m);
    v->cfft(m, tw, inplace ? dst : src, dst, tmp, inv);
    if (v != &ep_ops_ref) {
        ep_ops_ref.cfft(m, tw, keep, R, Rt, inv);
        for (int64_t k = 0; k < 2 * m; k++) want[k] = R[k];
    } else {
        const double sg = inv ? 1.0 : -1.0;
        for (int64_t k = 0; k < m; k++) {
            double re = 0.0, im = 0.0;
            for (int64_t j = 0; j < m; j++) {
                double a = sg * 2.0 * M_PI * (double)((j * k) % m) / (double)m, c = cos(a), sn = sin(a);
                re += keep[2 * j] * c - keep[2 * j + 1] * sn;
                im += keep[2 * j] * sn + keep[2 * j + 1] * c;
            }
            want[2 * k] = re; want[2 * k + 1] = im;
        }
    }
    const double r = rms(want, 2 * m);
    for (int64_t k = 0; k < 2 * m; k++) scale[k] = r;
    int64_t at = 0;
    int src_kept = inplace || memcmp(src, keep, sizeof(float) * 2 * (size_t)m) == 0;
    double e = src_kept ? max_err(dst, want, scale, 2 * m, &at) : INFINITY;
    check(s, e, TOL_FFT * log2d(2 * m), "m=%lld inv=%d in-place=%d (at bin %lld%s)", (long long)m, inv, inplace,
          (long long)(at / 2), src_kept ? "" : ", wrote src");
    free(tw); free(src); free(dst); free(tmp); free(keep); free(R); free(Rt); free(want); free(scale);
}

static void test_cfft(const ep_ops *v) {
    int64_t ms[24];
    int nm = fft_sizes(&v->tile, ms);
    kstat s = stat_new(v, "cfft");
    for (int a = 0; a < nm; a++) {
        if (v == &ep_ops_ref && ms[a] > NAIVE_MAX_M) continue;
        for (int inv = 0; inv < 2; inv++)
            for (int inplace = 0; inplace < 2; inplace++) cfft_case(v, &s, ms[a], inv, inplace);
    }
    summary(&s);
}

/* the split passes from their definitions, in double, with exact twiddles w^k = e^{-i pi k/m} */
static void naive_rfft_post(int64_t m, const float *Z, double *X) {
    for (int64_t k = 0; k <= m; k++) {
        const int64_t a = k % m, b = (m - k) % m;
        double er = 0.5 * (Z[2 * a] + Z[2 * b]), ei = 0.5 * (Z[2 * a + 1] - Z[2 * b + 1]);
        double dr = 0.5 * (Z[2 * a] - Z[2 * b]), di = 0.5 * (Z[2 * a + 1] + Z[2 * b + 1]);
        double wr = cos(M_PI * (double)k / (double)m), wi = -sin(M_PI * (double)k / (double)m);
        double tr = wr * dr - wi * di, ti = wr * di + wi * dr; /* X_k = E - i w^k D */
        X[2 * k] = er + ti; X[2 * k + 1] = ei - tr;
    }
}
static void naive_irfft_pre(int64_t m, const float *X, double *Z) {
    for (int64_t k = 0; k < m; k++) {
        const int64_t b = m - k;
        double er = 0.5 * (X[2 * k] + X[2 * b]), ei = 0.5 * (X[2 * k + 1] - X[2 * b + 1]);
        double dr = 0.5 * (X[2 * k] - X[2 * b]), di = 0.5 * (X[2 * k + 1] + X[2 * b + 1]);
        double wr = cos(M_PI * (double)k / (double)m), wi = sin(M_PI * (double)k / (double)m); /* conj w^k */
        double orr = wr * dr - wi * di, oi = wr * di + wi * dr; /* Z_k = E + i O */
        Z[2 * k] = er - oi; Z[2 * k + 1] = ei + orr;
    }
}

static void rfft_post_case(const ep_ops *v, kstat *s, int64_t m) {
    const int64_t n = 2 * m + 2;
    float *rt = split_twiddles(m), *X = fvec(n), *R = fvec(n);
    double *want = dvec(n), *scale = dvec(n);
    memcpy(R, X, sizeof(float) * (size_t)n);
    v->rfft_post(m, rt, X);
    if (v != &ep_ops_ref) {
        ep_ops_ref.rfft_post(m, rt, R);
        for (int64_t k = 0; k < n; k++) want[k] = R[k];
    } else {
        naive_rfft_post(m, R, want);
    }
    const double r = rms(want, n);
    for (int64_t k = 0; k < n; k++) scale[k] = r;
    int64_t at = 0;
    double e = max_err(X, want, scale, n, &at);
    check(s, e, TOL_SPLIT, "m=%lld (at bin %lld)", (long long)m, (long long)(at / 2));
    free(rt); free(X); free(R); free(want); free(scale);
}

static void irfft_pre_case(const ep_ops *v, kstat *s, int64_t m) {
    const int64_t n = 2 * m + 2;
    float *rt = split_twiddles(m), *X = fvec(n), *keep = fvec(n), *Z = fvec(2 * m), *R = fvec(2 * m);
    double *want = dvec(2 * m), *scale = dvec(2 * m);
    X[1] = 0.0f; X[2 * m + 1] = 0.0f; /* a real signal's spectrum: bins 0 and m are real */
    memcpy(keep, X, sizeof(float) * (size_t)n);
    v->irfft_pre(m, rt, X, Z);
    if (v != &ep_ops_ref) {
        ep_ops_ref.irfft_pre(m, rt, keep, R);
        for (int64_t k = 0; k < 2 * m; k++) want[k] = R[k];
    } else {
        naive_irfft_pre(m, keep, want);
    }
    const double r = rms(want, 2 * m);
    for (int64_t k = 0; k < 2 * m; k++) scale[k] = r;
    int64_t at = 0;
    int kept = memcmp(X, keep, sizeof(float) * (size_t)n) == 0;
    double e = kept ? max_err(Z, want, scale, 2 * m, &at) : INFINITY;
    check(s, e, TOL_SPLIT, "m=%lld (at bin %lld%s)", (long long)m, (long long)(at / 2), kept ? "" : ", wrote X");
    free(rt); free(X); free(keep); free(Z); free(R); free(want); free(scale);
}

static void test_split(const ep_ops *v) {
    int64_t ms[24];
    int nm = fft_sizes(&v->tile, ms);
    kstat sp = stat_new(v, "rfft_post"), si = stat_new(v, "irfft_pre");
    for (int a = 0; a < nm; a++) {
        rfft_post_case(v, &sp, ms[a]);
        irfft_pre_case(v, &si, ms[a]);
    }
    summary(&sp);
    summary(&si);
}

static void cmac_case(const ep_ops *v, kstat *s, int64_t m) {
    float *a = fvec(2 * m), *b = fvec(2 * m), *acc = fvec(2 * m), *R = fvec(2 * m);
    double *want = dvec(2 * m), *scale = dvec(2 * m);
    memcpy(R, acc, sizeof(float) * 2 * (size_t)m);
    for (int64_t k = 0; k < m; k++) {
        double ar = a[2 * k], ai = a[2 * k + 1], br = b[2 * k], bi = b[2 * k + 1];
        want[2 * k] = acc[2 * k] + ar * br - ai * bi;
        want[2 * k + 1] = acc[2 * k + 1] + ar * bi + ai * br;
        scale[2 * k] = fabs(acc[2 * k]) + fabs(ar * br) + fabs(ai * bi);
        scale[2 * k + 1] = fabs(acc[2 * k + 1]) + fabs(ar * bi) + fabs(ai * br);
    }
    v->cmac(m, a, b, acc);
    if (v != &ep_ops_ref) {
        ep_ops_ref.cmac(m, a, b, R);
        for (int64_t k = 0; k < 2 * m; k++) want[k] = R[k];
    }
    int64_t at = 0;
    double e = max_err(acc, want, scale, 2 * m, &at);
    check(s, e, TOL_CMAC, "m=%lld (at k=%lld)", (long long)m, (long long)(at / 2));
    free(a); free(b); free(acc); free(R); free(want); free(scale);
}

static void test_cmac(const ep_ops *v) {
    int64_t ms[16];
    int nm = tile_sizes(v->tile.cmac_lanes, ms, 0);
    ms[nm++] = 1000;
    kstat s = stat_new(v, "cmac");
    for (int a = 0; a < nm; a++) cmac_case(v, &s, ms[a]);
    summary(&s);
}

/* nj spectra against rows rows of B at strides lda, ldb, ldacc wider than 2m: acc holds the
 * sums (its old values are overwritten), the gaps stay untouched */
static void cmac_rows_case(const ep_ops *v, kstat *s, int64_t m, int64_t nj, int64_t rows) {
    const int64_t lda = 2 * m + 2, ldb = 2 * m + 4, ldacc = 2 * m + 6;
    const int64_t na_ = (nj - 1) * lda + 2 * m, nb = (nj * rows - 1) * ldb + 2 * m, nc = (rows - 1) * ldacc + 2 * m;
    float *a = fvec(na_), *B = fvec(nb), *acc = fvec(nc), *R = fvec(nc);
    double *want = dvec(nc), *scale = dvec(nc);
    memcpy(R, acc, sizeof(float) * (size_t)nc);
    for (int64_t i = 0; i < nc; i++) { want[i] = acc[i]; scale[i] = 1.0; }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < m; k++) {
            double *w = want + r * ldacc + 2 * k, *sc = scale + r * ldacc + 2 * k;
            w[0] = w[1] = sc[0] = sc[1] = 0.0;
            for (int64_t j = 0; j < nj; j++) {
                const float *b = B + (j * rows + r) * ldb + 2 * k;
                double ar = a[j * lda + 2 * k], ai = a[j * lda + 2 * k + 1], br = b[0], bi = b[1];
                sc[0] += fabs(ar * br) + fabs(ai * bi);
                sc[1] += fabs(ar * bi) + fabs(ai * br);
                w[0] += ar * br - ai * bi;
                w[1] += ar * bi + ai * br;
            }
        }
    v->cmac_rows(m, nj, rows, a, lda, B, ldb, acc, ldacc);
    if (v != &ep_ops_ref) {
        ep_ops_ref.cmac_rows(m, nj, rows, a, lda, B, ldb, R, ldacc);
        for (int64_t i = 0; i < nc; i++) want[i] = R[i];
    }
    int64_t at = 0;
    double e = max_err(acc, want, scale, nc, &at);
    check(s, e, TOL_CMAC, "m=%lld nj=%lld rows=%lld (at row %lld, float %lld)", (long long)m, (long long)nj,
          (long long)rows, (long long)(at / ldacc), (long long)(at % ldacc));
    free(a); free(B); free(acc); free(R); free(want); free(scale);
}

static void test_cmac_rows(const ep_ops *v) {
    int64_t ms[16], rows[16];
    const int64_t njs[] = {1, 3};
    int nm = tile_sizes(v->tile.cmac_rows_lanes, ms, 0), nr = tile_sizes(v->tile.cmac_rows_mr, rows, 0);
    ms[nm++] = 32; /* b = 64: bins 0..31 */
    kstat s = stat_new(v, "cmac_rows");
    for (int a = 0; a < nm; a++)
        for (int r = 0; r < nr; r++)
            for (size_t j = 0; j < sizeof njs / sizeof njs[0]; j++) cmac_rows_case(v, &s, ms[a], njs[j], rows[r]);
    summary(&s);
}

/* ---- sparse codebook rows ---- */
/* One CSR row over cols columns at about density (every column when density >= 1), codebook of
 * J values (entry 0 is 0.0, the fillers' value), gaps over 255 bridged by fillers: its entries. */
typedef struct spcb_row_data { int64_t count; uint8_t *idx, *gaps; float *cb; } spcb_row_data;
static spcb_row_data spcb_row_make(int64_t cols, double density, int J) {
    spcb_row_data d = {0, (uint8_t *)malloc((size_t)cols * 2 + 1), (uint8_t *)malloc((size_t)cols * 2 + 1), fvec(J)};
    if (!d.idx || !d.gaps) { printf("out of memory\n"); exit(2); }
    d.cb[0] = 0.0f;
    int64_t last = -1;
    for (int64_t c = 0; c < cols; c++) {
        if (density < 1.0 && (double)rnd_u32() / 4294967296.0 >= density) continue;
        int64_t gap = c - last;
        for (; gap > 255; gap -= 255) { d.idx[d.count] = 0; d.gaps[d.count++] = 255; }
        d.idx[d.count] = (uint8_t)(rnd_u32() % (uint32_t)J);
        d.gaps[d.count++] = (uint8_t)gap;
        last = c;
    }
    return d;
}

/* A slice of EP_SPCB_ROWS such rows (row l at density dens[l]) in spcb_slice's layout: sorted by
 * length (longest first), diagonal by diagonal, values looked up, absolute columns (uint16_t, or
 * int32_t when wide); the column array exactly EP_SPCB_ROWS entries longer (the reads the
 * contract allows: the last column there). */
typedef struct spcb_slice_data { int32_t len[EP_SPCB_ROWS]; int64_t n; float *val; void *col; } spcb_slice_data;
static spcb_slice_data spcb_slice_make(int64_t cols, const double *dens, int J, int wide) {
    spcb_slice_data sl = {{0}, 0, NULL, NULL};
    spcb_row_data d[EP_SPCB_ROWS];
    for (int l = 0; l < EP_SPCB_ROWS; l++) {
        d[l] = spcb_row_make(cols, dens[l], J);
        for (int i = l; i > 0 && d[i].count > d[i - 1].count; i--) { spcb_row_data t = d[i]; d[i] = d[i - 1]; d[i - 1] = t; }
    }
    for (int l = 0; l < EP_SPCB_ROWS; l++) sl.n += d[l].count;
    sl.val = fvec(sl.n);
    const size_t cb = wide ? 4 : 2;
    sl.col = malloc((size_t)(sl.n + EP_SPCB_ROWS) * cb);
    if (!sl.col) { printf("out of memory\n"); exit(2); }
    for (int64_t e = sl.n; e < sl.n + EP_SPCB_ROWS; e++) { /* past the end: the last column */
        if (wide) ((int32_t *)sl.col)[e] = (int32_t)(cols - 1);
        else ((uint16_t *)sl.col)[e] = (uint16_t)(cols - 1);
    }
    for (int l = 0; l < EP_SPCB_ROWS; l++) {
        sl.len[l] = (int32_t)d[l].count;
        int64_t e = l, col = -1;
        for (int64_t j = 0; j < d[l].count; j++) {
            col += d[l].gaps[j];
            sl.val[e] = d[l].cb[d[l].idx[j]];
            if (wide) ((int32_t *)sl.col)[e] = (int32_t)col;
            else ((uint16_t *)sl.col)[e] = (uint16_t)col;
            int alive = 0; /* rows that reach diagonal j */
            for (int k = 0; k < EP_SPCB_ROWS; k++) alive += d[k].count > j;
            e += alive;
        }
    }
    for (int l = 0; l < EP_SPCB_ROWS; l++) { free(d[l].idx); free(d[l].gaps); free(d[l].cb); }
    return sl;
}

/* one slice against nb batch columns of X transposed at stride ldx (exactly the floats read: ASan
 * sees any access past them), into acc at stride ldacc = nb + 1, against naive double sums (ref)
 * or the reference (the others) */
static void spcb_case(const ep_ops *v, kstat *s, int64_t cols, const double *dens, int J, int64_t nb, int64_t ldx,
                      int wide) {
    spcb_slice_data sl = spcb_slice_make(cols, dens, J, wide);
    const int64_t ldacc = nb + 1, na = (EP_SPCB_ROWS - 1) * ldacc + nb;
    float *xt = fvec((cols - 1) * ldx + nb), *acc = fvec(na), *R = fvec(na);
    double *want = dvec(na), *scale = dvec(na);
    for (int l = 0; l < EP_SPCB_ROWS; l++)
        for (int64_t b = 0; b < nb; b++) {
            int64_t e = l;
            for (int32_t j = 0; j < sl.len[l]; j++) {
                const int64_t c = wide ? ((int32_t *)sl.col)[e] : ((uint16_t *)sl.col)[e];
                const double t = (double)sl.val[e] * xt[c * ldx + b];
                want[l * ldacc + b] += t;
                scale[l * ldacc + b] += fabs(t);
                for (int k = 0; k < EP_SPCB_ROWS; k++) e += sl.len[k] > j;
            }
        }
    v->spcb_slice(sl.len, sl.val, sl.col, wide, xt, ldx, nb, acc, ldacc);
    if (v->spcb_gemv_gather && nb == 1 && ldx == 1) { /* the gathers: the lane loads' sums, bit for bit */
        float g[EP_SPCB_ROWS];
        v->spcb_gemv_gather(sl.len, sl.val, sl.col, wide, xt, g);
        for (int l = 0; l < EP_SPCB_ROWS; l++)
            if (memcmp(&g[l], &acc[l * ldacc], sizeof(float)))
                check(s, INFINITY, TOL_DOT, "spcb_gemv_gather row %d: %g, spcb_slice %g (cols=%lld wide=%d)", l,
                      (double)g[l], (double)acc[l * ldacc], (long long)cols, wide);
    }
    if (v != &ep_ops_ref) {
        ep_ops_ref.spcb_slice(sl.len, sl.val, sl.col, wide, xt, ldx, nb, R, ldacc);
        for (int64_t i = 0; i < na; i++) want[i] = R[i];
    }
    double e = 0.0;
    int64_t at = 0;
    for (int l = 0; l < EP_SPCB_ROWS; l++) {
        int64_t a = 0;
        const double el = max_err(acc + l * ldacc, want + l * ldacc, scale + l * ldacc, nb, &a);
        if (el > e) { e = el; at = l * ldacc + a; }
        for (int64_t b = 0; b < nb && !sl.len[l]; b++)
            e = acc[l * ldacc + b] == 0.0f ? e : INFINITY; /* an empty row sums to exactly 0 */
    }
    check(s, e, TOL_DOT, "cols=%lld density=%g..%g J=%d nb=%lld ldx=%lld wide=%d lens=%d..%d (at %lld)",
          (long long)cols, dens[EP_SPCB_ROWS - 1], dens[0], J, (long long)nb, (long long)ldx, wide, sl.len[0],
          sl.len[EP_SPCB_ROWS - 1], (long long)at);
    free(sl.val); free(sl.col); free(xt); free(acc); free(R); free(want); free(scale);
}

/* random sparsity at densities 0 .. 100 %, equal and spread lengths, a partial slice (empty
 * rows), codebooks of 1 .. 256 values, uint16_t and int32_t columns (past 65535), batch columns
 * from the tiles, one row of X as given (nb = ldx = 1: 16 rows at once) and transposed */
static void test_spcb_slice(const ep_ops *v) {
    int64_t nbs[24];
    int nn = tile_sizes(v->tile.spcb_lanes, nbs, 0);
    const int64_t h = v->tile.spcb_min_nb; /* the reference below it; SIMD variants: half a vector */
    const int64_t more[] = {h - 1, h, 2 * h, 3 * h, 4 * h, 4 * h + 3, 6 * h, 64}; /* 1, 2 (+ masked), 3 vectors */
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        if (more[i] >= 1 && more[i] <= 200) nbs[nn++] = more[i];
    const int64_t colss[] = {1, 7, 300, 1000};
    const double dens[] = {0.0, 0.02, 0.1, 0.5, 1.0};
    const int Js[] = {1, 2, 16, 256};
    kstat s = stat_new(v, "spcb_slice");
    for (int a = 0; a < nn; a++)
        for (size_t c = 0; c < sizeof colss / sizeof colss[0]; c++)
            for (size_t dd = 0; dd < sizeof dens / sizeof dens[0]; dd++) {
                double ds[EP_SPCB_ROWS];
                const size_t shape = (a + dd) % 3; /* equal, spread over 0 .. 2x, partial (rows 11+ empty) */
                for (int l = 0; l < EP_SPCB_ROWS; l++)
                    ds[l] = shape == 0 ? dens[dd] : shape == 1 ? dens[dd] * (l % 5) / 2.0 : l < 11 ? dens[dd] : 0.0;
                const int J = Js[(a + c + dd) % 4], wide = (int)((a + c + dd) % 2);
                spcb_case(v, &s, colss[c], ds, J, nbs[a], nbs[a] + 3, wide);
                if (nbs[a] == 1) spcb_case(v, &s, colss[c], ds, J, 1, 1, wide);
            }
    double sparse[EP_SPCB_ROWS];
    for (int l = 0; l < EP_SPCB_ROWS; l++) sparse[l] = l == 15 ? 0.0 : 0.002 / (1 + l / 2);
    spcb_case(v, &s, 70001, sparse, 16, 1, 1, 1); /* columns past 65535 */
    spcb_case(v, &s, 70001, sparse, 16, 2 * h < 64 ? 2 * h : 64, 2 * h < 64 ? 2 * h : 64, 1);
    spcb_case(v, &s, 65536, sparse, 16, 1, 1, 0); /* up to the last uint16_t column */
    summary(&s);
}

/* The fused matmul under every variant (batch blocks of 64, rows of X one at a time as given,
 * threads) against X W^T + bias with W from ep_codebook_decode; the decoder against the packed
 * indices read back naively, for bits 1, 2, 4, 8, and once with 70001 columns (int32_t). */
static void test_codebook_across_variants(void) {
    kstat s = {"all", "codebook", 0, 0, 0.0};
    const int bitss[] = {1, 2, 4, 8, 4};
    for (size_t bi = 0; bi < 5; bi++) { /* the last: columns past 65535 (the plan's int32_t columns) */
        const int bits = bitss[bi], J = 1 << bits > 200 ? 200 : 1 << bits, wide = bi == 4;
        const int64_t rows = 23, cols = wide ? 70001 : 301, N = wide ? 9 : 130;
        const double scale = wide ? 0.004 : 1.0;
        int32_t row_ptr[24];
        uint8_t *gaps = (uint8_t *)malloc(rows * cols * 2), *idx = (uint8_t *)malloc(rows * cols * 2);
        float *cb = fvec(J);
        cb[0] = 0.0f;
        int64_t n = 0;
        row_ptr[0] = 0;
        for (int64_t r = 0; r < rows; r++) { /* densities 0 .. 100 %, row 3 empty */
            spcb_row_data d = spcb_row_make(cols, r == 3 ? 0.0 : scale * (r % 6) / 5.0, J);
            memcpy(gaps + n, d.gaps, (size_t)d.count);
            memcpy(idx + n, d.idx, (size_t)d.count);
            n += d.count;
            row_ptr[r + 1] = (int32_t)n;
            free(d.idx); free(d.gaps); free(d.cb);
        }
        uint8_t *packed = (uint8_t *)calloc((size_t)((n * bits + 7) / 8 + 1), 1);
        for (int64_t k = 0; k < n; k++) packed[k * bits / 8] |= (uint8_t)(idx[k] << (k * bits % 8));
        ep_codebook w = {rows, cols, bits, cb, J, packed, (n * bits + 7) / 8, row_ptr, rows + 1, gaps, n};
        float *W = fvec(rows * cols), *X = fvec(N * cols), *bias = fvec(rows), *Y = fvec(N * rows);
        double e = ep_codebook_decode(&w, W) ? INFINITY : 0.0;
        for (int64_t r = 0; r < rows && e == 0.0; r++) {
            int64_t col = -1, m = row_ptr[r];
            for (int64_t c = 0; c < cols; c++) {
                float want = 0.0f;
                if (m < row_ptr[r + 1] && col + gaps[m] == c) { col += gaps[m]; want = cb[idx[m++]]; }
                if (memcmp(&W[r * cols + c], &want, 4) && !(W[r * cols + c] == 0.0f && want == 0.0f)) e = INFINITY;
            }
        }
        check(&s, e, TOL_DOT, "decode, bits=%d", bits);
        for (int a = 0; a < ep_variant_count(); a++)
            for (int threads = 1; threads <= 2; threads++) {
                ep_codebook_plan *pl = NULL;
                ep_set_variant(ep_variant_name(a));
                ep_set_num_threads(threads);
                ep_set_parallel_min_work(threads > 1 ? 1 : -1);
                const int64_t Ns[] = {1, 3, wide ? 8 : 64, N};
                for (size_t ni = 0; ni < 4; ni++) {
                    const int64_t NN = Ns[ni];
                    e = ep_codebook_plan_create(&w, &pl) || ep_sparse_codebook_matmul(pl, X, NN, cols, bias, Y, rows)
                            ? INFINITY : 0.0;
                    for (int64_t i = 0; i < NN && e < INFINITY; i++)
                        for (int64_t r = 0; r < rows; r++) {
                            double acc = bias[r], mag = fabs(bias[r]);
                            for (int64_t c = 0; c < cols; c++) {
                                acc += (double)X[i * cols + c] * W[r * cols + c];
                                mag += fabs((double)X[i * cols + c] * W[r * cols + c]);
                            }
                            double dd = fabs(Y[i * rows + r] - acc) / mag;
                            if (!(dd <= e)) e = dd != dd ? INFINITY : dd;
                        }
                    check(&s, e, TOL_DOT, "matmul under %s, bits=%d, N=%lld, %d threads", ep_variant_name(a), bits,
                          (long long)NN, threads);
                    ep_codebook_plan_destroy(pl);
                    pl = NULL;
                }
            }
        ep_set_variant("auto");
        ep_set_num_threads(1);
        ep_set_parallel_min_work(-1);
        free(gaps); free(idx); free(cb); free(packed); free(W); free(X); free(bias); free(Y);
    }
    summary(&s);
}

/* ---- HyperWeight ---- */
/* index m of an LSB-first bit stream, bit by bit (the contract's definition) */
static uint32_t naive_index(const uint8_t *stream, int64_t m, int bits) {
    uint32_t v = 0;
    for (int i = 0; i < bits; i++) {
        const int64_t b = m * bits + i;
        v |= (uint32_t)((stream[b / 8] >> (b % 8)) & 1u) << i;
    }
    return v;
}

/* count random indices < entries packed into exactly ceil(count*bits/8) bytes (ASan sees any read
 * past them), unused high bits 0 */
static uint8_t *hyper_stream(int64_t count, int bits, uint32_t entries, uint32_t *want) {
    const int64_t len = (count * bits + 7) / 8;
    uint8_t *st = (uint8_t *)calloc((size_t)(len > 0 ? len : 1), 1);
    if (!st) { printf("out of memory\n"); exit(2); }
    for (int64_t m = 0; m < count; m++) {
        want[m] = rnd_u32() % entries;
        if (m % 7 == 3) want[m] = entries - 1; /* the largest index, all its bits set when entries = 2^bits */
        for (int i = 0; i < bits; i++)
            if (want[m] >> i & 1u) st[(m * bits + i) / 8] |= (uint8_t)(1u << ((m * bits + i) % 8));
    }
    return st;
}

#define HY_MAX_ENTRIES (16 * 65537) /* (rings+1)*(points+1) at the largest rings and points */

/* hyper_gather against the naive unpack and copy, bit for bit (no arithmetic: exact); indices
 * reach up to 2^bits - 1 (or the largest real table), so their high bits are exercised */
static void hyper_gather_case(const ep_ops *v, kstat *s, const float *table, int64_t count, int bits, int k) {
    const uint32_t entries = bits <= 20 ? (1u << bits) - (bits > 1 ? rnd_u32() % 2u : 0u)
                                        : (uint32_t)HY_MAX_ENTRIES - rnd_u32() % 16u;
    uint32_t *want = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)count);
    if (!want) { printf("out of memory\n"); exit(2); }
    uint8_t *st = hyper_stream(count, bits, entries, want);
    float *out = fvec(count * k);
    fill_sentinel(out, count * k);
    v->hyper_gather(count, st, (count * bits + 7) / 8, bits, k, table, out);
    double e = 0.0;
    for (int64_t m = 0; m < count && e == 0.0; m++) {
        if (naive_index(st, m, bits) != want[m]) e = INFINITY; /* the test's own packing */
        if (memcmp(out + m * k, table + (int64_t)want[m] * k, sizeof(float) * (size_t)k)) e = INFINITY;
    }
    check(s, e, 0.0, "count=%lld bits=%d k=%d entries=%u", (long long)count, bits, k, entries);
    free(want); free(st); free(out);
}

static void test_hyper_gather(const ep_ops *v) {
    int64_t counts[24];
    int nc = tile_sizes(v->tile.hyper_lanes, counts, 0);
    const int64_t more[] = {8, 17, 33, 100, 257};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        int dup = 0;
        for (int j = 0; j < nc; j++) dup |= counts[j] == more[i];
        if (!dup) counts[nc++] = more[i];
    }
    float *table = fvec((int64_t)HY_MAX_ENTRIES * 4);
    kstat s = stat_new(v, "hyper");
    for (int bits = 1; bits <= 24; bits++)
        for (int k = 1; k <= 4; k++)
            for (int c = 0; c < nc; c++) hyper_gather_case(v, &s, table, counts[c], bits, k);
    free(table);
    summary(&s);
}

/* One point of the contract, each operation rounded to float (volatile: never fused). */
static void naive_point(const ep_hyper *w, uint32_t v, float *out) {
    const int k = w->group;
    int64_t t = 1;
    for (;; t++) {
        int64_t p = 1;
        for (int j = 0; j < k; j++) p *= t;
        if (p >= w->points) break;
    }
    const uint32_t n1 = (uint32_t)w->points + 1u, r = v / n1, q = v % n1;
    const float L = w->side[0];
    volatile float half = L * 0.5f;
    for (int j = 0; j < k; j++) {
        int64_t pw = 1;
        for (int e = 0; e < k - j; e++) pw *= t;
        volatile float corner = w->center[j] - half, step = L / (float)pw;
        volatile float p = w->center[j];
        if (q) {
            volatile float a = (float)(q - 1u) * step;
            volatile float f = fmodf(a, L);
            p = f + corner;
        }
        if (r) {
            volatile float d = p - w->center[j];
            volatile float e = d * w->scales[r - 1];
            p = e + w->center[j];
        }
        out[j] = p;
    }
}

/* ep_hyper_decode under every variant and 1 or 2 threads against the contract computed naively,
 * bit for bit: rings 0..15, groups 1..4, weights around the table size (each group computed from
 * its index below it, the table gathered above it) and a padded last group. */
static void test_hyper_across_variants(void) {
    kstat s = {"all", "hyperdec", 0, 0, 0.0};
    for (int rings = 0; rings <= 15; rings++)
        for (int k = 1; k <= 4; k++) {
            const int32_t points = 1 + (int32_t)(rnd_u32() % (rings % 3 == 0 ? 3000u : 40u));
            const uint32_t entries = (uint32_t)(rings + 1) * (uint32_t)(points + 1);
            int bits = 1;
            while ((1u << bits) < entries) bits++;
            bits += rings == 7; /* one case with indices that could pass the table: checked, none do */
            float center[4], side = 0.05f + (float)(rnd_u32() % 1000) / 100.0f, scales[15];
            for (int j = 0; j < k; j++) center[j] = rnd();
            for (int r = 0; r < rings; r++) scales[r] = 1.0f + (float)(r + 1) * 0.37f;
            const int64_t sizes[] = {1, k + 1, (int64_t)entries * k - 1, (int64_t)entries * k * 3 + k - 1, 40000};
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                const int64_t V = sizes[si] > 0 ? sizes[si] : 1, g = (V + k - 1) / k;
                uint32_t *want = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)g);
                if (!want) { printf("out of memory\n"); exit(2); }
                uint8_t *st = hyper_stream(g, bits, entries, want);
                ep_hyper w = {V, points, k, rings, bits, st, (g * bits + 7) / 8, center, k, &side, 1, rings > 0,
                              rings ? scales : NULL, rings};
                float *ref = fvec(V + 3), *W = fvec(V);
                for (int64_t m = 0; m < g; m++) {
                    float p[4];
                    naive_point(&w, want[m], p);
                    for (int j = 0; j < k && m * k + j < V; j++) ref[m * k + j] = p[j];
                }
                for (int a = 0; a < ep_variant_count(); a++)
                    for (int threads = 1; threads <= 2; threads++) {
                        ep_set_variant(ep_variant_name(a));
                        ep_set_num_threads(threads);
                        ep_set_parallel_min_work(threads > 1 ? 1 : -1);
                        fill_sentinel(W, V);
                        double e = ep_hyper_decode(&w, W) || memcmp(W, ref, sizeof(float) * (size_t)V) ? INFINITY : 0.0;
                        check(&s, e, 0.0, "under %s, %d threads: V=%lld points=%d group=%d rings=%d bits=%d",
                              ep_variant_name(a), threads, (long long)V, points, k, rings, bits);
                    }
                free(want); free(st); free(ref); free(W);
            }
        }
    ep_set_variant("auto");
    ep_set_num_threads(1);
    ep_set_parallel_min_work(-1);
    summary(&s);
}

/* the declared tiles are usable: positive lanes, a hash_dot tile exactly when there is a hash_dot */
static int tiles_valid(const ep_ops *v) {
    const ep_tiles *t = &v->tile;
    int ok = t->gemm_mr >= 1 && t->gemm_nr >= 1 && t->gemm_kr >= 1 && t->gemm_kc >= 0 && t->dot_mr >= 1 &&
             t->dot_nr >= 1 && t->dot_kr >= 1 && t->dot_kc >= 0 && t->pack_kr >= 1 && t->pack_min_n >= 0 &&
             t->hash_row_lanes >= 1 &&
             (t->hash_dot_lanes >= 1) == (v->hash_dot != NULL) && t->fft_lanes >= 1 && t->fft_min_m >= 2 &&
             t->split_lanes >= 1 && t->cmac_lanes >= 1 && t->cmac_rows_lanes >= 1 && t->cmac_rows_mr >= 1 && v->cmac_rows &&
             t->spcb_lanes >= 1 && t->spcb_min_nb >= 1 && v->spcb_slice && t->hyper_lanes >= 1 && v->hyper_gather;
    if (!ok) printf("FAIL %s: declared tiles are incomplete or inconsistent with its table\n", v->name);
    return ok;
}

int main(void) {
    const ep_ops *compiled[] = {
        &ep_ops_ref,
#if defined(EP_HAVE_AVX2)
        &ep_ops_avx2,
#endif
#if defined(EP_HAVE_AVX512)
        &ep_ops_avx512,
#endif
#if defined(EP_HAVE_NEON)
        &ep_ops_neon,
#endif
    };
    for (size_t i = 0; i < sizeof compiled / sizeof compiled[0]; i++) {
        const ep_ops *v = compiled[i];
        int supported = 0;
        for (int j = 0; j < ep_variant_count(); j++) supported |= strcmp(ep_variant_name(j), v->name) == 0;
        if (!supported) { printf("%-7s compiled in, not supported by this CPU: skipped\n", v->name); continue; }
        const ep_tiles *t = &v->tile;
        printf("%-7s tiles: gemm %dx%d k%d kc%d, gemm_dot %dx%d k%d kc%d, gemm_pack k%d (from N=%d), hash_row %d, hash_dot %d, fft %d (m >= %d), split %d, cmac %d, cmac_rows %d x %d rows, spcb %d (from nb=%d), hyper %d%s\n",
               v->name, t->gemm_mr, t->gemm_nr, t->gemm_kr, t->gemm_kc, t->dot_mr, t->dot_nr, t->dot_kr, t->dot_kc,
               t->pack_kr, t->pack_min_n, t->hash_row_lanes, t->hash_dot_lanes,
               t->fft_lanes, t->fft_min_m, t->split_lanes, t->cmac_lanes, t->cmac_rows_lanes, t->cmac_rows_mr,
               t->spcb_lanes, t->spcb_min_nb, t->hyper_lanes, v == &ep_ops_ref ? " (checked against naive double math)" : "");
        if (!tiles_valid(v)) { g_failed = 1; continue; }
        test_gemm(v, 1);
        test_gemm(v, 0);
        test_hash_row(v);
        test_hash_dot(v);
        test_cfft(v);
        test_split(v);
        test_cmac(v);
        test_cmac_rows(v);
        test_spcb_slice(v);
        test_hyper_gather(v);
    }
    test_plan_across_variants();
    test_codebook_across_variants();
    test_hyper_across_variants();
    printf(g_failed ? "test_microkernels: FAILED\n" : "test_microkernels: all variants match the reference\n");
    return g_failed ? 1 : 0;
}
