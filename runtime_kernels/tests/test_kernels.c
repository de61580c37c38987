/* C test runner: every kernel, every variant, against the reference variant and against naive
 * dense math built from the definitions in kernels.h, and the decode limits. Prints "N passed,
 * M failed". */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack/ops.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static int g_pass, g_fail;
static const char *g_var = "?";

#define CHECK(cond, ...) do { if (cond) g_pass++; else { g_fail++; \
    printf("FAIL [%s] %s:%d: ", g_var, __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd(void) { return (float)((double)rnd_u32() / 4294967296.0 * 2.0 - 1.0); }
static float *rnd_vec(int64_t n) {
    float *v = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) v[i] = rnd();
    return v;
}

/* max |a - b| / max(1, max |b|) */
static double rel_err(const float *a, const double *b, int64_t n) {
    double e = 0, m = 1;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > e || d != d) e = d != d ? INFINITY : d;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return e / m;
}
static double rel_err_f(const float *a, const float *b, int64_t n) {
    double *bd = (double *)malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) bd[i] = b[i];
    double e = rel_err(a, bd, n);
    free(bd);
    return e;
}

/* Y = X W^T + bias in double */
static double *naive_mm(const float *X, int64_t N, int64_t in, const double *W, int64_t out, const float *bias) {
    double *Y = (double *)malloc(sizeof(double) * (size_t)(N * out));
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < out; r++) {
            double s = bias ? bias[r] : 0.0;
            for (int64_t c = 0; c < in; c++) s += (double)X[n * in + c] * W[r * in + c];
            Y[n * out + r] = s;
        }
    return Y;
}

static int nvariants(void) { return ep_variant_count(); }
static void use_variant(int v) {
    g_var = ep_variant_name(v);
    if (ep_set_variant(g_var) != EP_OK) { printf("cannot set variant %s\n", g_var); exit(2); }
}

/* ---- XXH32 ---- */
static const struct { int len; uint32_t seed, h; } k_xxh[] = {
    {0,0x00000000u,0x02cc5d05u},
    {0,0x00000001u,0x0b2cb792u},
    {0,0x9747b28cu,0x8d3b42d8u},
    {0,0xffffffffu,0x9061da9du},
    {1,0x00000000u,0x21ae663au},
    {1,0x00000001u,0xce96dce4u},
    {1,0x9747b28cu,0xb32e6d59u},
    {1,0xffffffffu,0x54d92bb4u},
    {3,0x00000000u,0xcd3d2242u},
    {3,0x00000001u,0x9a24f8fau},
    {3,0x9747b28cu,0x8513982bu},
    {3,0xffffffffu,0xed8de89bu},
    {4,0x00000000u,0x725479f2u},
    {4,0x00000001u,0x80c278ccu},
    {4,0x9747b28cu,0xfe53286cu},
    {4,0xffffffffu,0x20d776b3u},
    {5,0x00000000u,0xa666ab62u},
    {5,0x00000001u,0xd376b09du},
    {5,0x9747b28cu,0x38885ee8u},
    {5,0xffffffffu,0xd82ca33du},
    {8,0x00000000u,0x29b5025au},
    {8,0x00000001u,0xf8ee68c7u},
    {8,0x9747b28cu,0xf216d2bfu},
    {8,0xffffffffu,0x62187a18u},
    {15,0x00000000u,0x82d3c84du},
    {15,0x00000001u,0x2ec07768u},
    {15,0x9747b28cu,0x6a9c0ce1u},
    {15,0xffffffffu,0x3cb82583u},
    {16,0x00000000u,0x8845547du},
    {16,0x00000001u,0xb9de69c0u},
    {16,0x9747b28cu,0xbe544edeu},
    {16,0xffffffffu,0xe84813cfu},
    {17,0x00000000u,0x450e5f84u},
    {17,0x00000001u,0x0ea6e085u},
    {17,0x9747b28cu,0xeb0d3c4au},
    {17,0xffffffffu,0xb77d64bdu},
    {31,0x00000000u,0x1f73d3c7u},
    {31,0x00000001u,0x450b5154u},
    {31,0x9747b28cu,0xd1fc525fu},
    {31,0xffffffffu,0xc82257edu},
    {32,0x00000000u,0xe988ccb7u},
    {32,0x00000001u,0x7e2d2f82u},
    {32,0x9747b28cu,0xb7a4f0c0u},
    {32,0xffffffffu,0xd38f34b0u},
    {33,0x00000000u,0x94f536d5u},
    {33,0x00000001u,0x34456127u},
    {33,0x9747b28cu,0x33447231u},
    {33,0xffffffffu,0xd3a8f1cau},
    {63,0x00000000u,0x0bedc2f7u},
    {63,0x00000001u,0xec0c6f6eu},
    {63,0x9747b28cu,0x23b18562u},
    {63,0xffffffffu,0xff6a4d29u}
};

static void test_xxh32(void) {
    g_var = "core";
    uint8_t data[64];
    for (int i = 0; i < 64; i++) data[i] = (uint8_t)((i * 7 + 3) & 255);
    for (size_t t = 0; t < sizeof k_xxh / sizeof k_xxh[0]; t++) {
        uint32_t h = ep_xxh32(data, (size_t)k_xxh[t].len, k_xxh[t].seed);
        CHECK(h == k_xxh[t].h, "xxh32 len=%d seed=%08x: got %08x want %08x", k_xxh[t].len, k_xxh[t].seed, h, k_xxh[t].h);
    }
    CHECK(ep_xxh32("abc", 3, 0) == 0x32D153FFu, "xxh32(abc)");
    int bad = 0;
    for (int t = 0; t < 2000; t++) {
        uint32_t i = rnd_u32(), j = rnd_u32(), s = rnd_u32();
        uint8_t key[8] = {(uint8_t)i, (uint8_t)(i >> 8), (uint8_t)(i >> 16), (uint8_t)(i >> 24),
                          (uint8_t)j, (uint8_t)(j >> 8), (uint8_t)(j >> 16), (uint8_t)(j >> 24)};
        bad += ep_xxh32(key, 8, s) != ep_xxh32_key(i, j, s);
    }
    CHECK(bad == 0, "ep_xxh32_key differs from ep_xxh32 on %d of 2000 keys", bad);
}

/* ---- hashed ---- */
static uint32_t naive_hash(int64_t i, int64_t j, uint32_t seed) {
    uint8_t key[8];
    for (int b = 0; b < 4; b++) { key[b] = (uint8_t)((uint64_t)i >> (8 * b)); key[4 + b] = (uint8_t)((uint64_t)j >> (8 * b)); }
    return ep_xxh32(key, 8, seed);
}

static double *naive_hashed(const ep_hash_params *p, const float *bk, const float *recon, int64_t rlen) {
    double *V = (double *)malloc(sizeof(double) * (size_t)(p->rows * p->cols));
    int K = p->num_hashes, H = recon ? (int)((rlen - 1) / (K + 2)) : 0;
    double z[64];
    for (int64_t i = 0; i < p->rows; i++)
        for (int64_t j = 0; j < p->cols; j++) {
            for (int k = 0; k < K; k++) {
                uint32_t h = naive_hash(i, j, p->seed + (uint32_t)k);
                double v = bk[h % (uint32_t)p->num_buckets];
                z[k] = (p->is_signed && (h & 0x80000000u)) ? -v : v;
            }
            double y = z[0];
            if (recon) { /* the MLP, also for K = 1 when one is given */
                const float *w1 = recon, *b1 = recon + H * K, *w2 = b1 + H;
                y = w2[H];
                for (int h = 0; h < H; h++) {
                    double a = b1[h];
                    for (int k = 0; k < K; k++) a += (double)w1[h * K + k] * z[k];
                    y += (double)w2[h] * (a > 0 ? a : 0);
                }
            }
            V[i * p->cols + j] = y;
        }
    return V;
}

static void test_hashed(void) {
    struct { int64_t rows, cols, nb; int k; uint32_t seed; int sgn, h; } cs[] = {
        {1, 1, 1, 1, 0, 1, 0},      {7, 13, 5, 1, 42, 1, 0},   {16, 33, 64, 1, 0xFFFFFFFFu, 0, 0},
        {33, 17, 1000, 1, 7, 1, 0}, {9, 40, 97, 3, 0xFFFFFFFEu, 1, 4}, {5, 11, 8, 2, 3, 0, 1},
        {12, 64, 333, 4, 11, 1, 7}, {64, 100, 800, 1, 123, 1, 0}, {10, 9, 31, 1, 5, 1, 2},
        /* fused stream path: 16-lane steps + tails, pow2 and large / odd bucket counts (exact mod) */
        {6, 48, 1 << 12, 1, 9, 1, 0}, {5, 257, 2097143, 1, 77, 1, 0}, {4, 200, 1000003, 1, 5, 0, 0},
        {3, 65, 3, 1, 0xFFFFFFFFu, 1, 0}, {7, 130, 1048577, 1, 2, 1, 0}, {3, 31, 64, 2, 4, 1, 3},
        /* avx512: 32-column steps + a full / partial 16-lane tail, one exact 16-lane vector */
        {2, 47, 1 << 20, 1, 13, 1, 0}, {3, 16, 4093, 1, 0x80000000u, 1, 0}, {2, 95, 65521, 1, 6, 0, 0},
    };
    for (size_t t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        ep_hash_params p = {cs[t].rows, cs[t].cols, cs[t].nb, cs[t].k, cs[t].seed, cs[t].sgn};
        int64_t rlen = cs[t].h ? (int64_t)cs[t].h * (cs[t].k + 2) + 1 : 0;
        float *bk = rnd_vec(p.num_buckets), *recon = rlen ? rnd_vec(rlen) : NULL;
        int64_t rc = p.rows * p.cols;
        double *V = naive_hashed(&p, bk, recon, rlen);
        /* indices / signs */
        int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)(rc * p.num_hashes));
        int8_t *sg = (int8_t *)malloc((size_t)(rc * p.num_hashes));
        g_var = "core";
        CHECK(ep_hash_indices(&p, idx, sg) == EP_OK, "hash_indices: %s", ep_last_error());
        int bad = 0;
        for (int64_t i = 0; i < p.rows; i++)
            for (int64_t j = 0; j < p.cols; j++)
                for (int k = 0; k < p.num_hashes; k++) {
                    uint32_t h = naive_hash(i, j, p.seed + (uint32_t)k);
                    int64_t o = (i * p.cols + j) * p.num_hashes + k;
                    bad += idx[o] != (int32_t)(h % (uint32_t)p.num_buckets);
                    bad += sg[o] != ((p.is_signed && (h >> 31)) ? -1 : 1);
                }
        CHECK(bad == 0, "hash_indices case %zu: %d mismatches", t, bad);
        /* batch sizes 1 and 5 */
        static const int64_t Ns[] = {1, 3, 4, 5, 9}; /* fused kernel up to 4, tile + gemm above */
        for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
            const int64_t N = Ns[ni];
            float *X = rnd_vec(N * p.cols), *bias = rnd_vec(p.rows);
            double *Vref = naive_mm(X, N, p.cols, V, p.rows, bias);
            float *Vr = (float *)malloc(sizeof(float) * (size_t)rc);
            float *Yr = (float *)malloc(sizeof(float) * (size_t)(N * p.rows));
            float *Yv = (float *)malloc(sizeof(float) * (size_t)(N * p.rows));
            float *Vv = (float *)malloc(sizeof(float) * (size_t)rc);
            for (int v = 0; v < nvariants(); v++) {
                use_variant(v);
                const double tol = recon ? 1e-5 : 0.0;
                CHECK(ep_hashed_decode(&p, bk, recon, rlen, Vv) == EP_OK, "decode: %s", ep_last_error());
                double e = rel_err(Vv, V, rc);
                CHECK(e <= tol + 1e-7, "decode case %zu err %g", t, e);
                if (v == 0) memcpy(Vr, Vv, sizeof(float) * (size_t)rc);
                else CHECK(rel_err_f(Vv, Vr, rc) <= tol, "decode case %zu vs ref err %g", t, rel_err_f(Vv, Vr, rc));
                CHECK(ep_hashed_matmul_stream(&p, bk, recon, rlen, X, N, bias, Yv) == EP_OK, "stream: %s", ep_last_error());
                e = rel_err(Yv, Vref, N * p.rows);
                CHECK(e < 1e-5, "stream case %zu N=%lld err %g", t, (long long)N, e);
                if (v == 0) memcpy(Yr, Yv, sizeof(float) * (size_t)(N * p.rows));
                else CHECK(rel_err_f(Yv, Yr, N * p.rows) < 1e-5, "stream vs ref case %zu", t);
                ep_hashed_plan *pl = NULL;
                CHECK(ep_hashed_plan_create(&p, bk, recon, rlen, &pl) == EP_OK, "plan: %s", ep_last_error());
                if (pl) {
                    CHECK(ep_hashed_matmul_expand(pl, X, N, p.cols, N == 1 ? NULL : bias, Yv, p.rows) == EP_OK, "expand: %s", ep_last_error());
                    double *Vref2 = naive_mm(X, N, p.cols, V, p.rows, N == 1 ? NULL : bias);
                    e = rel_err(Yv, Vref2, N * p.rows);
                    CHECK(e < 1e-5, "expand case %zu N=%lld err %g", t, (long long)N, e);
                    free(Vref2);
                    ep_hashed_plan_destroy(pl);
                }
            }
            free(X); free(bias); free(Vref); free(Vr); free(Yr); free(Yv); free(Vv);
        }
        free(bk); free(recon); free(V); free(idx); free(sg);
    }
}

/* ---- dense ---- */
static void test_dense(void) {
    int64_t shapes[][3] = {{1, 1, 1}, {1, 7, 3}, {3, 5, 9}, {4, 8, 16}, {5, 33, 31}, {8, 64, 100}, {9, 17, 257}, {1, 300, 513}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t N = shapes[t][0], rows = shapes[t][1], cols = shapes[t][2];
        float *X = rnd_vec(N * cols), *W = rnd_vec(rows * cols), *b = rnd_vec(rows);
        double *Wd = (double *)malloc(sizeof(double) * (size_t)(rows * cols));
        for (int64_t i = 0; i < rows * cols; i++) Wd[i] = W[i];
        float *Y = (float *)malloc(sizeof(float) * (size_t)(N * rows)), *Yr = (float *)malloc(sizeof(float) * (size_t)(N * rows));
        for (int wb = 0; wb < 2; wb++) {
            double *R = naive_mm(X, N, cols, Wd, rows, wb ? b : NULL);
            for (int v = 0; v < nvariants(); v++) {
                use_variant(v);
                CHECK(ep_dense_matmul(X, N, cols, W, rows, wb ? b : NULL, Y) == EP_OK, "dense: %s", ep_last_error());
                double e = rel_err(Y, R, N * rows);
                CHECK(e < 1e-5, "dense %lldx%lldx%lld err %g", (long long)N, (long long)rows, (long long)cols, e);
                if (v == 0) memcpy(Yr, Y, sizeof(float) * (size_t)(N * rows));
                else CHECK(rel_err_f(Y, Yr, N * rows) < 1e-5, "dense vs ref");
            }
            free(R);
        }
        free(X); free(W); free(b); free(Wd); free(Y); free(Yr);
    }
}

/* ---- FFT ---- */
/* sizes too large for the O(n^2) check: every variant against ref, and irfft(rfft(x)) == x */
static void test_fft_large(void) {
    for (int64_t n = 8192; n <= 65536; n *= 2) {
        float *x = rnd_vec(n), *X = (float *)malloc(sizeof(float) * (size_t)(n + 2));
        float *Xr = (float *)malloc(sizeof(float) * (size_t)(n + 2)), *y = (float *)malloc(sizeof(float) * (size_t)n);
        double *xd = (double *)malloc(sizeof(double) * (size_t)n);
        for (int64_t t = 0; t < n; t++) xd[t] = x[t];
        ep_rfft_plan *p = NULL;
        g_var = "core";
        CHECK(ep_rfft_plan_create(n, &p) == EP_OK, "rfft plan n=%lld: %s", (long long)n, ep_last_error());
        for (int v = 0; v < nvariants() && p; v++) {
            use_variant(v);
            CHECK(ep_rfft(p, n, x, X) == EP_OK, "rfft: %s", ep_last_error());
            if (v == 0) memcpy(Xr, X, sizeof(float) * (size_t)(n + 2));
            else CHECK(rel_err_f(X, Xr, n + 2) < 1e-5, "rfft vs ref n=%lld err %g", (long long)n, rel_err_f(X, Xr, n + 2));
            CHECK(ep_irfft(p, n, X, y) == EP_OK, "irfft: %s", ep_last_error());
            double e = rel_err(y, xd, n);
            CHECK(e < 1e-5, "irfft(rfft(x)) n=%lld err %g", (long long)n, e);
        }
        ep_rfft_plan_destroy(p);
        free(x); free(X); free(Xr); free(y); free(xd);
    }
}

static void test_fft(void) {
    for (int64_t n = 4; n <= 4096; n *= 2) {
        float *x = rnd_vec(n), *X = (float *)malloc(sizeof(float) * (size_t)(n + 2)), *Xr = (float *)malloc(sizeof(float) * (size_t)(n + 2));
        float *y = (float *)malloc(sizeof(float) * (size_t)n);
        double *R = (double *)malloc(sizeof(double) * (size_t)(n + 2)), *xd = (double *)malloc(sizeof(double) * (size_t)n);
        for (int64_t k = 0; k <= n / 2; k++) {
            double re = 0, im = 0;
            for (int64_t t = 0; t < n; t++) {
                double a = -2.0 * M_PI * (double)((k * t) % n) / (double)n;
                re += x[t] * cos(a); im += x[t] * sin(a);
            }
            R[2 * k] = re; R[2 * k + 1] = im;
        }
        for (int64_t t = 0; t < n; t++) xd[t] = x[t];
        ep_rfft_plan *p = NULL;
        g_var = "core";
        CHECK(ep_rfft_plan_create(n, &p) == EP_OK, "rfft plan n=%lld: %s", (long long)n, ep_last_error());
        for (int v = 0; v < nvariants() && p; v++) {
            use_variant(v);
            CHECK(ep_rfft(p, n, x, X) == EP_OK, "rfft: %s", ep_last_error());
            double e = rel_err(X, R, n + 2);
            CHECK(e < 1e-5, "rfft n=%lld err %g", (long long)n, e);
            if (v == 0) memcpy(Xr, X, sizeof(float) * (size_t)(n + 2));
            else CHECK(rel_err_f(X, Xr, n + 2) < 1e-5, "rfft vs ref n=%lld", (long long)n);
            X[1] = 123.0f; X[n + 1] = -7.0f; /* ignored, like numpy */
            CHECK(ep_irfft(p, n, X, y) == EP_OK, "irfft: %s", ep_last_error());
            e = rel_err(y, xd, n);
            CHECK(e < 1e-5, "irfft(rfft(x)) n=%lld err %g", (long long)n, e);
        }
        ep_rfft_plan_destroy(p);
        free(x); free(X); free(Xr); free(y); free(R); free(xd);
    }
}

/* ---- circulant ---- */
static void test_circulant(void) {
    int64_t cs[][6] = { /* p, q, b, in, out, N */
        {1, 1, 4, 4, 4, 1},     {1, 1, 4, 3, 2, 3},       {2, 3, 8, 21, 13, 1},  {3, 2, 16, 32, 48, 4},
        {2, 2, 64, 100, 77, 5}, {1, 1, 256, 256, 256, 2}, {4, 3, 32, 65, 127, 7}, {1, 1, 1024, 1000, 999, 1},
        /* batches larger than one block of rows (kernels.c's EP_BATCH_FLOATS): 26 + 4, 648 x 3 + 56 rows */
        {2, 8, 256, 2000, 512, 30}, {3, 5, 4, 18, 11, 2000},
    };
    for (size_t t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        int64_t p = cs[t][0], q = cs[t][1], b = cs[t][2], in = cs[t][3], out = cs[t][4], N = cs[t][5];
        float *blocks = rnd_vec(p * q * b), *X = rnd_vec(N * in), *bias = rnd_vec(out);
        double *W = (double *)malloc(sizeof(double) * (size_t)(out * in));
        for (int64_t r = 0; r < out; r++)
            for (int64_t s = 0; s < in; s++) {
                int64_t i = r / b, j = s / b, rr = r % b, ss = s % b;
                W[r * in + s] = blocks[(i * q + j) * b + ((rr - ss + b) % b)];
            }
        double *R = naive_mm(X, N, in, W, out, bias), *R0 = naive_mm(X, N, in, W, out, NULL);
        float *Y = (float *)malloc(sizeof(float) * (size_t)(N * out)), *Yr = (float *)malloc(sizeof(float) * (size_t)(N * out));
        ep_circulant_plan *pl = NULL;
        g_var = "core";
        CHECK(ep_circulant_plan_create(p, q, b, blocks, in, out, &pl) == EP_OK, "circ plan: %s", ep_last_error());
        for (int v = 0; v < nvariants() && pl; v++) {
            use_variant(v);
            CHECK(ep_circulant_matmul(pl, X, N, in, bias, Y, out) == EP_OK, "circ: %s", ep_last_error());
            double e = rel_err(Y, R, N * out);
            CHECK(e < 2e-5, "circulant p=%lld q=%lld b=%lld in=%lld out=%lld N=%lld err %g", (long long)p, (long long)q,
                  (long long)b, (long long)in, (long long)out, (long long)N, e);
            if (v == 0) memcpy(Yr, Y, sizeof(float) * (size_t)(N * out));
            else CHECK(rel_err_f(Y, Yr, N * out) < 2e-5, "circulant vs ref case %zu", t);
            CHECK(ep_circulant_matmul(pl, X, N, in, NULL, Y, out) == EP_OK, "circ: %s", ep_last_error());
            CHECK(rel_err(Y, R0, N * out) < 2e-5, "circulant no-bias case %zu", t);
        }
        ep_circulant_plan_destroy(pl);
        free(blocks); free(X); free(bias); free(W); free(R); free(R0); free(Y); free(Yr);
    }
}

/* ---- LDR ---- */
static double zf(const float *v, int64_t n, int64_t a, int64_t c, double f) { return a >= c ? v[a - c] : f * v[n + a - c]; }

static void test_ldr(void) {
    int64_t cs[][5] = { /* r, n, in, out, N */
        {1, 4, 4, 4, 1}, {2, 4, 3, 2, 3}, {1, 8, 8, 5, 2}, {3, 16, 11, 16, 4}, {2, 64, 50, 63, 5}, {2, 128, 128, 128, 1}, {4, 256, 200, 255, 3},
        {2, 32, 32, 32, 700}, {1, 64, 40, 50, 400}, /* batches larger than one block of rows: 668 + 32, 337 + 63 */
    };
    for (size_t t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        int64_t r = cs[t][0], n = cs[t][1], in = cs[t][2], out = cs[t][3], N = cs[t][4];
        float *G = rnd_vec(r * n), *H = rnd_vec(r * n), *X = rnd_vec(N * in), *bias = rnd_vec(out);
        double *Wf = (double *)calloc((size_t)(n * n), sizeof(double)), *W = (double *)malloc(sizeof(double) * (size_t)(out * in));
        for (int64_t i = 0; i < r; i++)
            for (int64_t a = 0; a < n; a++)
                for (int64_t k = 0; k < n; k++) {
                    double g = zf(G + i * n, n, a, k, 1.0);
                    for (int64_t c = 0; c < n; c++) Wf[a * n + c] += g * zf(H + i * n, n, k, c, -1.0);
                }
        for (int64_t a = 0; a < out; a++)
            for (int64_t c = 0; c < in; c++) W[a * in + c] = Wf[a * n + c];
        double *R = naive_mm(X, N, in, W, out, bias);
        float *Y = (float *)malloc(sizeof(float) * (size_t)(N * out)), *Yr = (float *)malloc(sizeof(float) * (size_t)(N * out));
        ep_ldr_plan *pl = NULL;
        g_var = "core";
        CHECK(ep_ldr_plan_create(r, n, G, H, in, out, &pl) == EP_OK, "ldr plan: %s", ep_last_error());
        for (int v = 0; v < nvariants() && pl; v++) {
            use_variant(v);
            CHECK(ep_ldr_matmul(pl, X, N, in, bias, Y, out) == EP_OK, "ldr: %s", ep_last_error());
            double e = rel_err(Y, R, N * out);
            CHECK(e < 5e-5, "ldr r=%lld n=%lld in=%lld out=%lld N=%lld err %g", (long long)r, (long long)n, (long long)in,
                  (long long)out, (long long)N, e);
            if (v == 0) memcpy(Yr, Y, sizeof(float) * (size_t)(N * out));
            else CHECK(rel_err_f(Y, Yr, N * out) < 5e-5, "ldr vs ref case %zu", t);
        }
        ep_ldr_plan_destroy(pl);
        free(G); free(H); free(X); free(bias); free(Wf); free(W); free(R); free(Y); free(Yr);
    }
}

/* ---- bad input: status + non-empty message, nothing touched ---- */
#define BAD(expr, want) do { ep_status s_ = (expr); const char *m_ = ep_last_error(); \
    CHECK(s_ == (want) && m_ && m_[0], "%s -> %d (%s) want %d", #expr, (int)s_, m_ ? m_ : "(null)", (int)(want)); } while (0)

static void test_bad_input(void) {
    g_var = "core";
    float buf[64] = {0}, out[64];
    int32_t idx[64];
    ep_hash_params hp = {4, 4, 8, 1, 0, 1};
    ep_hash_params h0 = hp; h0.num_buckets = 0;
    ep_hash_params hr = hp; hr.rows = 0;
    ep_hash_params hc = hp; hc.cols = -3;
    ep_hash_params hk = hp; hk.num_hashes = 0;
    ep_hash_params hk2 = hp; hk2.num_hashes = 2;
    ep_hash_params hov = hp; hov.rows = 0xFFFFFFFFll; hov.cols = 0xFFFFFFFFll; hov.num_hashes = 64;
    BAD(ep_hashed_decode(&h0, buf, NULL, 0, out), EP_ERR_SIZE);
    BAD(ep_hashed_decode(&hr, buf, NULL, 0, out), EP_ERR_SIZE);
    BAD(ep_hashed_decode(&hc, buf, NULL, 0, out), EP_ERR_SIZE);
    BAD(ep_hashed_decode(&hk, buf, NULL, 0, out), EP_ERR_SIZE);
    BAD(ep_hashed_decode(NULL, buf, NULL, 0, out), EP_ERR_NULL);
    BAD(ep_hashed_decode(&hp, NULL, NULL, 0, out), EP_ERR_NULL);
    BAD(ep_hashed_decode(&hp, buf, NULL, 0, NULL), EP_ERR_NULL);
    BAD(ep_hashed_decode(&hk2, buf, NULL, 0, out), EP_ERR_NULL);
    BAD(ep_hashed_decode(&hk2, buf, buf, 8, out), EP_ERR_ARG);  /* H*(2+2)+1: 5, 9, ... */
    BAD(ep_hashed_decode(&hk2, buf, buf, 4, out), EP_ERR_ARG);
    BAD(ep_hashed_decode(&hov, buf, NULL, 0, out), EP_ERR_OVERFLOW);
    BAD(ep_hash_indices(&h0, idx, NULL), EP_ERR_SIZE);
    BAD(ep_hash_indices(&hp, NULL, NULL), EP_ERR_NULL);
    BAD(ep_hashed_matmul_stream(&hp, buf, NULL, 0, buf, 0, NULL, out), EP_ERR_SIZE);
    BAD(ep_hashed_matmul_stream(&hp, buf, NULL, 0, NULL, 1, NULL, out), EP_ERR_NULL);
    ep_hashed_plan *hpl = NULL;
    BAD(ep_hashed_plan_create(&h0, buf, NULL, 0, &hpl), EP_ERR_SIZE);
    CHECK(hpl == NULL, "plan stays NULL on failure");
    CHECK(ep_hashed_plan_create(&hp, buf, NULL, 0, &hpl) == EP_OK, "hashed plan");
    BAD(ep_hashed_matmul_expand(hpl, buf, 1, 5, NULL, out, 4), EP_ERR_PLAN);
    BAD(ep_hashed_matmul_expand(hpl, buf, 1, 4, NULL, out, 3), EP_ERR_PLAN);
    BAD(ep_hashed_matmul_expand(NULL, buf, 1, 4, NULL, out, 4), EP_ERR_NULL);
    ep_hashed_plan_destroy(hpl);

    BAD(ep_dense_matmul(buf, 1, 0, buf, 4, NULL, out), EP_ERR_SIZE);
    BAD(ep_dense_matmul(buf, 1, 4, buf, -1, NULL, out), EP_ERR_SIZE);
    BAD(ep_dense_matmul(buf, 0, 4, buf, 4, NULL, out), EP_ERR_SIZE);
    BAD(ep_dense_matmul(buf, 1, 4, NULL, 4, NULL, out), EP_ERR_NULL);
    BAD(ep_dense_matmul(buf, 1, 4, buf, 4, NULL, NULL), EP_ERR_NULL);
    BAD(ep_dense_matmul(buf, 1, INT64_MAX / 2, buf, 4, NULL, out), EP_ERR_OVERFLOW);

    ep_rfft_plan *fp = NULL;
    BAD(ep_rfft_plan_create(12, &fp), EP_ERR_SIZE);
    BAD(ep_rfft_plan_create(2, &fp), EP_ERR_SIZE);
    BAD(ep_rfft_plan_create(0, &fp), EP_ERR_SIZE);
    BAD(ep_rfft_plan_create(-8, &fp), EP_ERR_SIZE);
    BAD(ep_rfft_plan_create(8, NULL), EP_ERR_NULL);
    CHECK(ep_rfft_plan_create(8, &fp) == EP_OK, "rfft plan");
    BAD(ep_rfft(fp, 16, buf, out), EP_ERR_PLAN);
    BAD(ep_irfft(fp, 4, buf, out), EP_ERR_PLAN);
    BAD(ep_rfft(fp, 8, NULL, out), EP_ERR_NULL);
    BAD(ep_rfft(NULL, 8, buf, out), EP_ERR_NULL);
    ep_rfft_plan_destroy(fp);

    ep_circulant_plan *cp = NULL;
    BAD(ep_circulant_plan_create(1, 1, 6, buf, 6, 6, &cp), EP_ERR_SIZE);
    BAD(ep_circulant_plan_create(1, 1, 2, buf, 2, 2, &cp), EP_ERR_SIZE);
    BAD(ep_circulant_plan_create(0, 1, 4, buf, 4, 4, &cp), EP_ERR_SIZE);
    BAD(ep_circulant_plan_create(1, 1, 4, buf, 5, 4, &cp), EP_ERR_SIZE);
    BAD(ep_circulant_plan_create(1, 1, 4, buf, 4, 0, &cp), EP_ERR_SIZE);
    BAD(ep_circulant_plan_create(1, 1, 4, NULL, 4, 4, &cp), EP_ERR_NULL);
    BAD(ep_circulant_plan_create(INT64_MAX / 4, INT64_MAX / 4, 4, buf, 4, 4, &cp), EP_ERR_OVERFLOW);
    CHECK(ep_circulant_plan_create(2, 2, 4, buf, 7, 8, &cp) == EP_OK, "circ plan: %s", ep_last_error());
    BAD(ep_circulant_matmul(cp, buf, 1, 8, NULL, out, 8), EP_ERR_PLAN);
    BAD(ep_circulant_matmul(cp, buf, 1, 7, NULL, out, 7), EP_ERR_PLAN);
    BAD(ep_circulant_matmul(cp, buf, -1, 7, NULL, out, 8), EP_ERR_SIZE);
    BAD(ep_circulant_matmul(cp, NULL, 1, 7, NULL, out, 8), EP_ERR_NULL);
    ep_circulant_plan_destroy(cp);

    ep_ldr_plan *lp = NULL;
    BAD(ep_ldr_plan_create(1, 10, buf, buf, 10, 10, &lp), EP_ERR_SIZE);
    BAD(ep_ldr_plan_create(0, 8, buf, buf, 8, 8, &lp), EP_ERR_SIZE);
    BAD(ep_ldr_plan_create(1, 8, buf, buf, 9, 8, &lp), EP_ERR_SIZE);
    BAD(ep_ldr_plan_create(1, 8, NULL, buf, 8, 8, &lp), EP_ERR_NULL);
    CHECK(ep_ldr_plan_create(2, 8, buf, buf, 8, 6, &lp) == EP_OK, "ldr plan: %s", ep_last_error());
    BAD(ep_ldr_matmul(lp, buf, 1, 8, NULL, out, 8), EP_ERR_PLAN);
    BAD(ep_ldr_matmul(lp, buf, 0, 8, NULL, out, 6), EP_ERR_SIZE);
    ep_ldr_plan_destroy(lp);

    BAD(ep_set_variant("sse9"), EP_ERR_ARG);
    { /* a variant the CPU lacks (e.g. avx512 without AVX-512 or on aarch64) is refused */
        int has512 = 0;
        for (int v = 0; v < ep_variant_count(); v++) has512 |= strcmp(ep_variant_name(v), "avx512") == 0;
        if (!has512) BAD(ep_set_variant("avx512"), EP_ERR_ARG);
        else CHECK(ep_set_variant("avx512") == EP_OK && strcmp(ep_variant(), "avx512") == 0, "set_variant avx512");
    }
    BAD(ep_set_variant(NULL), EP_ERR_NULL);
    CHECK(ep_set_variant("auto") == EP_OK && ep_set_variant("ref") == EP_OK, "set_variant auto/ref");
    CHECK(strcmp(ep_status_str(EP_ERR_PLAN), "size does not match plan") == 0, "status_str");
}

/* The decode limits: strict parsing, the environment, and the checks at their boundaries. */
static void test_limits(void) {
    g_var = "limits";
    static const struct { const char *text; int64_t want; } good[] = {
        {"1", 1}, {" 42\t", 42}, {"268435456", 268435456}, {"9223372036854775807", INT64_MAX}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t v = 0;
        CHECK(ep_parse_limit("X", good[i].text, &v) == EP_OK && v == good[i].want, "parse '%s' -> %lld",
              good[i].text, (long long)v);
    }
    const char *bad[] = {"", " ", "0", "-1", "+1", "1e9", "12x", "0x10", "1 2", "9223372036854775808", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 7;
        CHECK(ep_parse_limit("EDGEPACK_X", bad[i], &v) == EP_ERR_ARG && v == 7 &&
              strstr(ep_last_error(), "EDGEPACK_X="), "parse '%s': %s", bad[i] ? bad[i] : "NULL", ep_last_error());
    }
    ep_limits lim;
    unsetenv(EP_ENV_MAX_VIRTUAL_WEIGHTS);
    unsetenv(EP_ENV_MAX_DECODED_BYTES);
    CHECK(ep_limits_from_env(&lim) == EP_OK && lim.max_virtual_weights == (int64_t)1 << 28 &&
          lim.max_decoded_bytes == (int64_t)1 << 30, "defaults");
    setenv(EP_ENV_MAX_DECODED_BYTES, "4096", 1);
    CHECK(ep_limits_from_env(&lim) == EP_OK && lim.max_decoded_bytes == 4096, "env bytes");
    setenv(EP_ENV_MAX_VIRTUAL_WEIGHTS, "lots", 1);
    CHECK(ep_limits_from_env(&lim) == EP_ERR_ARG && strstr(ep_last_error(), "EDGEPACK_MAX_VIRTUAL_WEIGHTS='lots'"),
          "env bad: %s", ep_last_error());
    unsetenv(EP_ENV_MAX_VIRTUAL_WEIGHTS);
    unsetenv(EP_ENV_MAX_DECODED_BYTES);
    lim.max_virtual_weights = 100, lim.max_decoded_bytes = 1000;
    CHECK(ep_limits_check_weights(&lim, 100, "shape [10, 10]") == EP_OK, "100 weights");
    CHECK(ep_limits_check_weights(&lim, 101, "shape [101]") == EP_ERR_SIZE &&
          strstr(ep_last_error(), "shape [101] would decode 101 virtual weights, above the limit of 100") &&
          strstr(ep_last_error(), "EDGEPACK_MAX_VIRTUAL_WEIGHTS"), "101 weights: %s", ep_last_error());
    CHECK(ep_limits_check_weights(&lim, -1, "overflow") == EP_ERR_SIZE, "overflowed count");
    CHECK(ep_limits_check_bytes(&lim, 600, 400, "w") == EP_OK, "600 + 400 bytes");
    CHECK(ep_limits_check_bytes(&lim, 600, 401, "w") == EP_ERR_SIZE && strstr(ep_last_error(), "600 bytes already"),
          "600 + 401 bytes: %s", ep_last_error());
    lim.max_decoded_bytes = INT64_MAX;
    CHECK(ep_limits_check_bytes(&lim, INT64_MAX - 5, INT64_MAX, "w") == EP_ERR_SIZE, "no overflow in used + bytes");
    CHECK(ep_limits_check_bytes(&lim, INT64_MAX - 5, 5, "w") == EP_OK, "up to INT64_MAX");
}

/* Codebook sizes whose rows*cols (or rows+1) overflow int64 are refused before any arithmetic on them,
 * in the kernel's check and in the op's attributes (shape / in_features x out_features). */
static ep_attr_result cb_int(void *c, const char *n, int64_t *o, char *k, size_t kc) {
    (void)k; (void)kc;
    if (!strcmp(n, "bits")) { *o = 8; return EP_ATTR_FOUND; }
    if (strcmp(n, "in_features") && strcmp(n, "out_features")) return EP_ATTR_MISSING;
    *o = *(const int64_t *)c;
    return EP_ATTR_FOUND;
}
static ep_attr_result cb_ints(void *c, const char *n, int64_t *o, size_t cap, size_t *cnt, char *k, size_t kc) {
    (void)n; (void)cap; (void)k; (void)kc;
    o[0] = o[1] = *(const int64_t *)c;
    *cnt = 2;
    return EP_ATTR_FOUND;
}
static ep_attr_result cb_float(void *c, const char *n, float *o, char *k, size_t kc) {
    (void)c; (void)n; (void)o; (void)k; (void)kc;
    return EP_ATTR_MISSING;
}

static void test_codebook_bounds(void) {
    float cb[2] = {1, 2}, W[4];
    uint8_t ind[1] = {0}, gaps[1] = {1};
    int32_t rp[3] = {0, 0, 0};
    ep_codebook w = {2, INT64_MAX / 2 + 1, 8, cb, 2, ind, 0, rp, 3, gaps, 0};
    CHECK(ep_codebook_check(&w) == EP_ERR_OVERFLOW, "sparse rows*cols overflow: %s", ep_last_error());
    CHECK(ep_codebook_decode(&w, W) == EP_ERR_OVERFLOW, "decode of an overflowing sparse weight");
    w.rows = INT64_MAX;
    w.cols = 1;
    CHECK(ep_codebook_check_sizes(&w) == EP_ERR_OVERFLOW, "rows = INT64_MAX: %s", ep_last_error());
    w.rows = 2;
    w.cols = 2;
    w.row_ptr_len = 3;
    CHECK(ep_codebook_check(&w) == EP_OK, "a 2x2 empty sparse weight: %s", ep_last_error());
    const int64_t big = 4294967295LL;
    char msg[512];
    ep_op_attrs a;
    ep_attr_reader r = {(void *)&big, cb_int, cb_ints, cb_float};
    CHECK(ep_op_read_attrs(EP_OP_CodebookWeight, EP_RUNTIME_ORT, &r, &a, msg, sizeof msg) == 1 &&
          strstr(msg, "too large"), "CodebookWeight shape [2^32-1, 2^32-1]: %s", msg);
    CHECK(ep_op_read_attrs(EP_OP_SparseCodebookMatMul, EP_RUNTIME_ORT, &r, &a, msg, sizeof msg) == 1 &&
          strstr(msg, "too large"), "SparseCodebookMatMul 2^32-1 x 2^32-1: %s", msg);
    const int64_t ok = 3;
    r.ctx = (void *)&ok;
    CHECK(ep_op_read_attrs(EP_OP_CodebookWeight, EP_RUNTIME_ORT, &r, &a, msg, sizeof msg) == 0 && a.hp.rows == 3 &&
          a.hp.cols == 3, "CodebookWeight shape [3, 3]: %s", msg);
}

int main(void) {
    printf("edgepack kernels %s, variants:", ep_version());
    for (int v = 0; v < ep_variant_count(); v++) printf(" %s", ep_variant_name(v));
    printf(" (default %s)\n", ep_variant());
    test_xxh32();
    test_dense();
    test_hashed();
    test_fft();
    test_fft_large();
    test_circulant();
    test_ldr();
    test_bad_input();
    test_limits();
    test_codebook_bounds();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
