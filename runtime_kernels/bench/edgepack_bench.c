/* edgepack-bench: native kernel micro-benchmarks (runs where there is no Python).
 *   edgepack-bench kernels --sizes 256,1024,4096 --batch 1,8 --threads 1 --json
 * Per kernel and shape: median/p90 time per call, dense-equivalent GFLOP/s, weight bytes and
 * the speed-up over the dense kernel of the same shape, on --threads N threads (ep_set_num_threads).
 *   edgepack-bench kernels --sizes 4096 --batch 8 --threads 1,2
 * Two thread counts in one process: both timed in interleaved rounds, ratio = time(A) / time(B).
 *   edgepack-bench kernels --baseline OLD/libedgepack_kernels.so [--rounds 11] [--markdown]
 * Before/after in one process: each kernel runs from this build (linked) and from the dlopen'ed
 * baseline library on the same inputs; outputs must agree, then both are timed in interleaved
 * rounds and the ratio current/baseline of the per-side medians is reported. */
#define _POSIX_C_SOURCE 200112L /* clock_gettime; 2001 so Darwin's stdio also declares snprintf */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgepack/kernels.h"

/* The kernels.h entry points the bench calls, as one table per side: the linked build's from its
 * symbols, the baseline's from dlsym (the names are the symbols). */
#define BENCH_API(X)                                                                                     \
    X(const char *, ep_last_error, (void))                                                               \
    X(const char *, ep_version, (void))                                                                  \
    X(const char *, ep_variant, (void))                                                                  \
    X(ep_status, ep_set_variant, (const char *))                                                         \
    X(ep_status, ep_dense_matmul, (const float *, int64_t, int64_t, const float *, int64_t, const float *, float *)) \
    X(ep_status, ep_circulant_plan_create,                                                               \
      (int64_t, int64_t, int64_t, const float *, int64_t, int64_t, ep_circulant_plan **))                \
    X(void, ep_circulant_plan_destroy, (ep_circulant_plan *))                                            \
    X(ep_status, ep_circulant_matmul,                                                                    \
      (const ep_circulant_plan *, const float *, int64_t, int64_t, const float *, float *, int64_t))     \
    X(ep_status, ep_ldr_plan_create, (int64_t, int64_t, const float *, const float *, int64_t, int64_t, ep_ldr_plan **)) \
    X(void, ep_ldr_plan_destroy, (ep_ldr_plan *))                                                        \
    X(ep_status, ep_ldr_matmul, (const ep_ldr_plan *, const float *, int64_t, int64_t, const float *, float *, int64_t)) \
    X(ep_status, ep_hashed_plan_create,                                                                  \
      (const ep_hash_params *, const float *, const float *, int64_t, ep_hashed_plan **))                \
    X(void, ep_hashed_plan_destroy, (ep_hashed_plan *))                                                  \
    X(ep_status, ep_hashed_matmul_expand,                                                                \
      (const ep_hashed_plan *, const float *, int64_t, int64_t, const float *, float *, int64_t))        \
    X(ep_status, ep_hashed_matmul_stream,                                                                \
      (const ep_hash_params *, const float *, const float *, int64_t, const float *, int64_t, const float *, float *)) \
    X(ep_status, ep_rfft_plan_create, (int64_t, ep_rfft_plan **))                                        \
    X(void, ep_rfft_plan_destroy, (ep_rfft_plan *))                                                      \
    X(ep_status, ep_rfft, (const ep_rfft_plan *, int64_t, const float *, float *))

typedef struct {
#define API_FIELD(ret, name, args) ret(*name) args;
    BENCH_API(API_FIELD)
#undef API_FIELD
} api_t;

static const api_t g_linked = {
#define API_LINKED(ret, name, args) name,
    BENCH_API(API_LINKED)
#undef API_LINKED
};

typedef struct {
    int runs, warmup, block, rank, ratio, json, markdown, threads, threads_b, rounds; /* threads_b: 0 or B of --threads A,B */
    double min_time_s, tolerance;
} opts_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Quantile q in [0, 1] of t[0..n), linearly interpolated (sorts t). */
static double quantile(double *t, int n, double q) {
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    double pos = q * (n - 1);
    int i = (int)pos;
    return i + 1 < n ? t[i] + (pos - i) * (t[i + 1] - t[i]) : t[n - 1];
}

/* ---- inputs shared by both sides, and each side's plans and output ---- */
typedef struct {
    int64_t n, N, b;
    int rank;
    float *X, *W, *bias, *blocks, *G, *H, *buckets;
    ep_hash_params hp;
} inputs_t;

typedef struct {
    const char *label; /* "current" or "baseline" */
    const api_t *api;
    const inputs_t *in;
    float *Y;
    ep_circulant_plan *cpl;
    ep_ldr_plan *lpl;
    ep_hashed_plan *hpl;
    ep_rfft_plan *fpl;
    void (*set_threads)(int); /* the library's ep_set_num_threads (NULL: a baseline without one) */
    int threads;
} side_t;

typedef enum { K_DENSE, K_CIRC, K_LDR, K_HEXP, K_HSTR, K_RFFT } kind_t;
static const char *const KIND_NAME[] = {"dense", "circulant", "ldr", "hashed_expand", "hashed_stream", "rfft"};

static ep_status run_kernel(kind_t k, side_t *d) {
    const inputs_t *c = d->in;
    const api_t *a = d->api;
    if (d->set_threads) d->set_threads(d->threads);
    switch (k) {
    case K_DENSE: return a->ep_dense_matmul(c->X, c->N, c->n, c->W, c->n, c->bias, d->Y);
    case K_CIRC: return a->ep_circulant_matmul(d->cpl, c->X, c->N, c->n, c->bias, d->Y, c->n);
    case K_LDR: return a->ep_ldr_matmul(d->lpl, c->X, c->N, c->n, c->bias, d->Y, c->n);
    case K_HEXP: return a->ep_hashed_matmul_expand(d->hpl, c->X, c->N, c->n, c->bias, d->Y, c->n);
    case K_HSTR: return a->ep_hashed_matmul_stream(&c->hp, c->buckets, NULL, 0, c->X, c->N, c->bias, d->Y);
    case K_RFFT: return a->ep_rfft(d->fpl, c->n, c->X, d->Y);
    }
    return EP_ERR_ARG;
}

static void check(ep_status s, kind_t k, const side_t *d) {
    if (s != EP_OK) {
        fprintf(stderr, "edgepack-bench: %s %s failed: %s\n", d->label, KIND_NAME[k], d->api->ep_last_error());
        exit(1);
    }
}

/* The plan kernel k needs, made with this side's library (plans never cross libraries). */
static void plan(kind_t k, side_t *d) {
    const inputs_t *c = d->in;
    const api_t *a = d->api;
    ep_status s = EP_OK;
    if (k == K_CIRC) s = a->ep_circulant_plan_create(c->n / c->b, c->n / c->b, c->b, c->blocks, c->n, c->n, &d->cpl);
    else if (k == K_LDR) s = a->ep_ldr_plan_create(c->rank, c->n, c->G, c->H, c->n, c->n, &d->lpl);
    else if (k == K_HEXP) s = a->ep_hashed_plan_create(&c->hp, c->buckets, NULL, 0, &d->hpl);
    else if (k == K_RFFT) s = a->ep_rfft_plan_create(c->n, &d->fpl);
    check(s, k, d);
}

static void unplan(side_t *d) {
    if (d->cpl) d->api->ep_circulant_plan_destroy(d->cpl);
    if (d->lpl) d->api->ep_ldr_plan_destroy(d->lpl);
    if (d->hpl) d->api->ep_hashed_plan_destroy(d->hpl);
    if (d->fpl) d->api->ep_rfft_plan_destroy(d->fpl);
    d->cpl = NULL; d->lpl = NULL; d->hpl = NULL; d->fpl = NULL;
}

/* ---- timing ---- */
typedef struct { double median_us, p90_us; int runs; } timing_t;

static timing_t time_call(const opts_t *o, kind_t k, side_t *d) {
    for (int i = 0; i < o->warmup; i++) check(run_kernel(k, d), k, d);
    int cap = 1024, n = 0;
    double *t = (double *)malloc(sizeof(double) * (size_t)cap), start = now_s();
    while (n < o->runs || (now_s() - start < o->min_time_s && n < 100000)) {
        double t0 = now_s();
        ep_status st = run_kernel(k, d);
        double t1 = now_s();
        check(st, k, d);
        if (n == cap) t = (double *)realloc(t, sizeof(double) * (size_t)(cap *= 2));
        t[n++] = (t1 - t0) * 1e6;
    }
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    timing_t r = {t[n / 2], t[(int)ceil(0.9 * (n - 1))], n};
    free(t);
    return r;
}

/* Mean time per call (us) of a block of `calls` back-to-back calls. */
static double block_us(kind_t k, side_t *d, int calls) {
    double t0 = now_s();
    for (int i = 0; i < calls; i++) check(run_kernel(k, d), k, d);
    return (now_s() - t0) * 1e6 / calls;
}

/* Per-side medians over the rounds, and the quartiles of the per-round ratios (the spread). */
typedef struct { double current_us, baseline_us, ratio_q25, ratio_q75; int calls; } pair_t;

/* Interleaved rounds: each round times a block of calls on one side then on the other, the
 * order alternating per round, so drifts in machine load hit both sides alike. */
static pair_t time_pair(const opts_t *o, kind_t k, side_t *cur, side_t *base) {
    side_t *sides[2] = {cur, base};
    for (int i = 0; i < o->warmup; i++) { block_us(k, cur, 1); block_us(k, base, 1); }
    double one = fmax(block_us(k, cur, 1), block_us(k, base, 1)), target = o->min_time_s * 1e6 / o->rounds;
    int calls = one >= target ? 1 : (int)fmin(ceil(target / fmax(one, 1e-3)), 1e6);
    int R = o->rounds;
    double *t = (double *)malloc(sizeof(double) * 3 * (size_t)R);
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < 2; j++) {
            int s = (r & 1) ? 1 - j : j;
            t[s * R + r] = block_us(k, sides[s], calls);
        }
        t[2 * R + r] = t[r] / t[R + r];
    }
    pair_t p = {quantile(t, R, 0.5), quantile(t + R, R, 0.5), quantile(t + 2 * R, R, 0.25),
                quantile(t + 2 * R, R, 0.75), calls};
    free(t);
    return p;
}

/* max |current - baseline| over the outputs; *scale = max |baseline|. */
static double max_diff(const side_t *cur, const side_t *base, int64_t len, double *scale) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < len; i++) {
        double e = fabs((double)cur->Y[i] - (double)base->Y[i]);
        if (!(e <= d)) d = e; /* NaN propagates */
        if (fabs((double)base->Y[i]) > m) m = fabs((double)base->Y[i]);
    }
    *scale = m;
    return d;
}

/* ---- output ---- */
static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static int g_first = 1;
static void emit(const opts_t *o, const char *kernel, const char *params, int64_t n, int64_t N, timing_t t,
                 double flops, int64_t wbytes, double dense_us, int64_t dense_bytes) {
    double gf = flops / (t.median_us * 1e3), speedup = dense_us > 0 ? dense_us / t.median_us : 0.0;
    if (o->json) {
        printf("%s    {\"kernel\": \"%s\", \"params\": \"%s\", \"n\": %lld, \"batch\": %lld, \"variant\": \"%s\", "
               "\"runs\": %d, \"median_us\": %.3f, \"p90_us\": %.3f, \"gflops\": %.3f, \"weight_bytes\": %lld, "
               "\"speedup_vs_dense\": %.3f, \"weight_ratio_vs_dense\": %.6f}",
               g_first ? "" : ",\n", kernel, params, (long long)n, (long long)N, ep_variant(), t.runs, t.median_us,
               t.p90_us, gf, (long long)wbytes, speedup, dense_bytes > 0 ? (double)wbytes / (double)dense_bytes : 0.0);
    } else if (o->markdown) {
        printf("| %s | %s | %lld | %lld | %.2f | %.2f | %.2f | %lld | %.2f |\n", kernel, params, (long long)n,
               (long long)N, t.median_us, t.p90_us, gf, (long long)wbytes, speedup);
    } else {
        printf("%-16s %-10s n=%-6lld N=%-3lld median %10.2f us  p90 %10.2f us  %8.2f GFLOP/s  %10lld B  x%.2f vs dense\n",
               kernel, params, (long long)n, (long long)N, t.median_us, t.p90_us, gf, (long long)wbytes, speedup);
    }
    g_first = 0;
    fflush(stdout);
}

static void emit_pair(const opts_t *o, const char *kernel, const char *params, int64_t n, int64_t N, pair_t p,
                      double diff) {
    double ratio = p.current_us / p.baseline_us;
    if (o->json) {
        printf("%s    {\"kernel\": \"%s\", \"params\": \"%s\", \"n\": %lld, \"batch\": %lld, \"rounds\": %d, "
               "\"block_calls\": %d, \"current_us\": %.3f, \"baseline_us\": %.3f, \"ratio\": %.4f, "
               "\"round_ratio_iqr\": [%.4f, %.4f], \"max_abs_diff\": %.3g}",
               g_first ? "" : ",\n", kernel, params, (long long)n, (long long)N, o->rounds, p.calls, p.current_us,
               p.baseline_us, ratio, p.ratio_q25, p.ratio_q75, diff);
    } else if (o->markdown) {
        printf("| %s | %s | %lld | %lld | %.2f | %.2f | %.3f | %.2f-%.2f | %.2g |\n", kernel, params, (long long)n,
               (long long)N, p.current_us, p.baseline_us, ratio, p.ratio_q25, p.ratio_q75, diff);
    } else {
        printf("%-14s %-10s n=%-6lld N=%-3lld current %10.2f us  baseline %10.2f us  ratio %6.3f "
               "(rounds %.2f-%.2f)  max abs diff %.2g  (%d x %d calls)\n",
               kernel, params, (long long)n, (long long)N, p.current_us, p.baseline_us, ratio, p.ratio_q25,
               p.ratio_q75, diff, o->rounds, p.calls);
    }
    g_first = 0;
    fflush(stdout);
}

static float *rnd_vec(int64_t n, uint32_t seed) {
    float *v = (float *)malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; v[i] = (float)((seed >> 8) * (1.0 / 16777216.0) - 0.5); }
    return v;
}

/* One kernel on one shape: timed alone, or (with a baseline) checked against it and timed
 * interleaved with it. Returns the median time per call of the current side (alone). */
static double bench_kernel(const opts_t *o, kind_t k, const char *params, side_t *cur, side_t *base, double flops,
                           int64_t wbytes, double dense_us, int64_t dense_bytes) {
    const inputs_t *c = cur->in;
    int64_t N = k == K_RFFT ? 1 : c->N, out_len = k == K_RFFT ? c->n + 2 : c->N * c->n;
    plan(k, cur);
    double us = 0;
    if (!base) {
        timing_t t = time_call(o, k, cur);
        emit(o, KIND_NAME[k], params, c->n, N, t, flops, wbytes, dense_us < 0 ? t.median_us : dense_us, dense_bytes);
        us = t.median_us;
    } else {
        plan(k, base);
        check(run_kernel(k, cur), k, cur);
        check(run_kernel(k, base), k, base);
        double scale, diff = max_diff(cur, base, out_len, &scale), limit = o->tolerance * fmax(1.0, scale);
        if (!(diff <= limit)) {
            fprintf(stderr,
                    "edgepack-bench: the baseline gives different results for %s %s n=%lld batch=%lld: max abs diff "
                    "%.3g > %.3g (--tolerance %g x max(1, max |y| = %.3g)); not timing a different computation\n",
                    KIND_NAME[k], params, (long long)c->n, (long long)N, diff, limit, o->tolerance, scale);
            exit(3);
        }
        emit_pair(o, KIND_NAME[k], params, c->n, N, time_pair(o, k, cur, base), diff);
        unplan(base);
    }
    unplan(cur);
    return us;
}

static void bench_shape(const opts_t *o, int64_t n, int64_t N, int do_fft, const api_t *cur_api,
                        const api_t *base_api, void (*cur_thr)(int), void (*base_thr)(int)) {
    inputs_t c;
    memset(&c, 0, sizeof c);
    c.n = n; c.N = N; c.rank = o->rank;
    c.X = rnd_vec(N * n, 1); c.bias = rnd_vec(n, 2); c.W = rnd_vec(n * n, 3);
    c.G = rnd_vec(o->rank * n, 5); c.H = rnd_vec(o->rank * n, 6);
    int64_t nb = n * n / o->ratio > 0 ? n * n / o->ratio : 1;
    ep_hash_params hp = {n, n, nb, 1, 42, 1};
    c.hp = hp;
    c.buckets = rnd_vec(nb, 7);
    side_t cur = {"current", cur_api, &c, NULL, NULL, NULL, NULL, NULL, cur_thr, o->threads};
    side_t base = {"baseline", base_api, &c, NULL, NULL, NULL, NULL, NULL, base_thr, o->threads_b ? o->threads_b : o->threads};
    cur.Y = (float *)calloc((size_t)(N * n + 2), sizeof(float));
    base.Y = (float *)calloc((size_t)(N * n + 2), sizeof(float));
    side_t *b = base_api ? &base : NULL;
    const double dflops = 2.0 * (double)N * (double)n * (double)n;
    const int64_t dbytes = n * n * 4;
    char prm[64];

    double td = bench_kernel(o, K_DENSE, "-", &cur, b, dflops, dbytes, -1, dbytes);

    int64_t bs[2] = {o->block < n ? o->block : n, n};
    for (int k = 0; k < (bs[0] == n ? 1 : 2); k++) {
        int64_t p = n / bs[k];
        c.b = bs[k];
        c.blocks = rnd_vec(p * p * c.b, 4);
        snprintf(prm, sizeof prm, "b=%lld", (long long)c.b);
        bench_kernel(o, K_CIRC, prm, &cur, b, dflops, p * p * c.b * 4, td, dbytes);
        free(c.blocks);
    }

    snprintf(prm, sizeof prm, "r=%d", o->rank);
    bench_kernel(o, K_LDR, prm, &cur, b, dflops, 2 * o->rank * n * 4, td, dbytes);

    snprintf(prm, sizeof prm, "ratio=1/%d", o->ratio);
    bench_kernel(o, K_HEXP, prm, &cur, b, dflops, nb * 4, td, dbytes);
    bench_kernel(o, K_HSTR, prm, &cur, b, dflops, nb * 4, td, dbytes);

    if (do_fft) bench_kernel(o, K_RFFT, "-", &cur, b, 2.5 * (double)n * log2((double)n), 0, 0, 0);
    free(c.X); free(c.bias); free(c.W); free(c.G); free(c.H); free(c.buckets); free(cur.Y); free(base.Y);
}

/* dlopen a kernels library for option flag (a bare file name is taken relative to the working
 * directory, not searched for) and resolve every BENCH_API symbol; exit 2 naming the path or
 * symbol otherwise. */
static void *load_library(const char *flag, const char *path, api_t *api) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s%s", strchr(path, '/') ? "" : "./", path);
    void *h = dlopen(buf, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        fprintf(stderr, "edgepack-bench: %s %s: cannot load it: %s\n", flag, path, why ? why : "unknown error");
        exit(2);
    }
#define API_RESOLVE(ret, name, args)                                                                        \
    {                                                                                                       \
        void *sym = dlsym(h, #name);                                                                        \
        if (!sym) {                                                                                         \
            fprintf(stderr, "edgepack-bench: %s %s has no symbol %s: not a libedgepack_kernels "           \
                            "shared library (or one older than this bench)\n", flag, path, #name);          \
            exit(2);                                                                                        \
        }                                                                                                   \
        memcpy(&api->name, &sym, sizeof sym);                                                               \
    }
    BENCH_API(API_RESOLVE)
#undef API_RESOLVE
    return h;
}

static int parse_list(const char *s, int64_t *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v <= 0) return -1;
        out[n++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static void usage(void) {
    fprintf(stderr,
            "usage: edgepack-bench kernels [--sizes 256,1024,4096] [--batch 1,8] [--threads N|A,B] [--json | --markdown]\n"
            "                              [--num_runs 20] [--warmup_runs 3] [--min_time_ms 100] [--block 64]\n"
            "                              [--rank 2] [--ratio 8] [--variant auto|ref|avx2|avx512|neon]\n"
            "                              [--baseline LIB [--current LIB] [--rounds 11] [--tolerance 1e-3]\n"
            "                              [--baseline_variant V]]\n"
            "  sizes must be powers of two >= 4 (square n x n layers)\n"
            "  --threads A,B: time every kernel on A and on B threads in interleaved rounds (as --baseline\n"
            "  does; outputs must agree), ratio = time(A) / time(B); not with --baseline\n"
            "  --baseline: also run every kernel from the shared library LIB (dlopen'ed); outputs must agree\n"
            "  within tolerance x max(1, max|y|) (else exit 3); timed in interleaved rounds of blocks of\n"
            "  about min_time_ms/rounds per side; reports both medians and the ratio current/baseline\n"
            "  --current: take the current side from the shared library LIB too (both sides dlopen'ed:\n"
            "  the same code placement, no linked-vs-shared offset)\n");
}

int main(int argc, char **argv) {
    opts_t o = {20, 3, 64, 2, 8, 0, 0, 1, 0, 11, 0.1, 1e-3};
    int64_t sizes[32] = {256, 1024, 4096}, batch[32] = {1, 8};
    int ns = 3, nbt = 2;
    const char *baseline = NULL, *current = NULL, *variant = NULL, *baseline_variant = NULL;
    if (argc < 2 || strcmp(argv[1], "kernels") != 0) { usage(); return 2; }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
        if (strcmp(a, "--json") == 0) o.json = 1;
        else if (strcmp(a, "--markdown") == 0) o.markdown = 1;
        else if (ARG("--sizes")) { if ((ns = parse_list(v, sizes, 32)) <= 0) { usage(); return 2; } }
        else if (ARG("--batch")) { if ((nbt = parse_list(v, batch, 32)) <= 0) { usage(); return 2; } }
        else if (ARG("--threads") || ARG("--num_threads")) {
            int64_t t[3];
            int nt = parse_list(v, t, 3);
            if (nt < 1 || nt > 2 || t[0] > 64 || t[nt - 1] > 64) {
                fprintf(stderr, "edgepack-bench: --threads %s: give N or A,B (thread counts in [1, 64])\n", v);
                return 2;
            }
            o.threads = (int)t[0];
            o.threads_b = nt == 2 ? (int)t[1] : 0;
        }
        else if (ARG("--runs") || ARG("--num_runs")) o.runs = atoi(v);
        else if (ARG("--warmup") || ARG("--warmup_runs")) o.warmup = atoi(v);
        else if (ARG("--min_time_ms")) o.min_time_s = atof(v) / 1e3;
        else if (ARG("--block")) o.block = atoi(v);
        else if (ARG("--rank")) o.rank = atoi(v);
        else if (ARG("--ratio")) o.ratio = atoi(v);
        else if (ARG("--variant")) variant = v;
        else if (ARG("--baseline")) baseline = v;
        else if (ARG("--current")) current = v;
        else if (ARG("--baseline_variant")) baseline_variant = v;
        else if (ARG("--rounds")) o.rounds = atoi(v);
        else if (ARG("--tolerance")) o.tolerance = atof(v);
        else { fprintf(stderr, "edgepack-bench: unknown or incomplete argument '%s'\n", a); usage(); return 2; }
#undef ARG
    }
    if (o.runs < 1 || o.warmup < 0 || o.block < 4 || o.rank < 1 || o.ratio < 1 || o.rounds < 1 ||
        !(o.tolerance >= 0) || !(o.min_time_s >= 0) || (o.json && o.markdown)) { usage(); return 2; }
    if ((baseline_variant || current) && !baseline) {
        fprintf(stderr, "edgepack-bench: --%s needs --baseline\n", current ? "current" : "baseline_variant");
        return 2;
    }
    for (int i = 0; i < ns; i++)
        if (sizes[i] < 4 || (sizes[i] & (sizes[i] - 1))) { fprintf(stderr, "edgepack-bench: size %lld is not a power of two >= 4\n", (long long)sizes[i]); return 2; }
    if (o.threads_b && baseline) {
        fprintf(stderr, "edgepack-bench: --threads A,B compares two thread counts of this build; with --baseline give one count\n");
        return 2;
    }

    api_t base_api, cur = g_linked;
    void *handle = baseline ? load_library("--baseline", baseline, &base_api) : NULL;
    void *cur_handle = current ? load_library("--current", current, &cur) : NULL;
    void (*cur_thr)(int) = ep_set_num_threads, (*base_thr)(int) = NULL;
    if (cur_handle) { void *f = dlsym(cur_handle, "ep_set_num_threads"); memcpy(&cur_thr, &f, sizeof f); }
    if (handle) { void *f = dlsym(handle, "ep_set_num_threads"); memcpy(&base_thr, &f, sizeof f); }
    if ((cur_handle && !cur_thr && o.threads != 1) || (handle && !base_thr && o.threads != 1))
        fprintf(stderr, "edgepack-bench: %s has no ep_set_num_threads (older library): it runs single-threaded\n",
                cur_handle && !cur_thr ? current : baseline);
    if (o.threads_b) { base_api = cur; base_thr = cur_thr; }
    const int paired = handle || o.threads_b;
    if (variant && cur.ep_set_variant(variant) != EP_OK) { fprintf(stderr, "%s\n", cur.ep_last_error()); return 2; }
    if (handle && (baseline_variant || variant) && base_api.ep_set_variant(baseline_variant ? baseline_variant : variant) != EP_OK) {
        fprintf(stderr, "edgepack-bench: --baseline %s: %s\n", baseline, base_api.ep_last_error());
        return 2;
    }

    if (o.json) {
        printf("{\"tool\": \"edgepack-bench\", \"mode\": \"kernels\", \"version\": \"%s\", \"variant\": \"%s\", "
               "\"threads\": %d, \"time_unit\": \"us\", ", cur.ep_version(), cur.ep_variant(), o.threads);
        if (o.threads_b)
            printf("\"threads_compared\": [%d, %d], \"rounds\": %d, \"interleaved\": true, \"tolerance\": %g, ",
                   o.threads, o.threads_b, o.rounds, o.tolerance);
        if (handle) {
            printf("\"baseline\": {\"path\": ");
            json_str(baseline);
            printf(", \"version\": ");
            json_str(base_api.ep_version());
            printf(", \"variant\": ");
            json_str(base_api.ep_variant());
            printf("}, \"rounds\": %d, \"interleaved\": true, \"tolerance\": %g, ", o.rounds, o.tolerance);
        }
        printf("\"results\": [\n");
    } else if (handle) {
        printf("%scurrent: %s, version %s, variant %s; baseline: %s, version %s, variant %s.\n"
               "%s%d interleaved rounds per kernel (each round: a block of calls on one side then the other, order "
               "alternating), median per side; ratio = current/baseline (<1: current faster); IQR: quartiles of "
               "the per-round ratios.\n",
               o.markdown ? "" : "# ", current ? current : "this build (linked)", cur.ep_version(), cur.ep_variant(),
               baseline, base_api.ep_version(),
               base_api.ep_variant(), o.markdown ? "" : "# ", o.rounds);
        if (o.markdown)
            printf("\n| kernel | params | n | batch | current (us) | baseline (us) | current/baseline | "
                   "per-round ratio IQR | max abs diff |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    } else if (o.threads_b) {
        printf("%svariant %s; %d interleaved rounds per kernel of %d threads (\"current\") and %d threads "
               "(\"baseline\"), median per side; ratio = time(%d threads) / time(%d threads) (>1: %d threads faster).\n",
               o.markdown ? "" : "# ", cur.ep_variant(), o.rounds, o.threads, o.threads_b, o.threads, o.threads_b,
               o.threads_b);
        if (o.markdown)
            printf("\n| kernel | params | n | batch | %d threads (us) | %d threads (us) | ratio | "
                   "per-round ratio IQR | max abs diff |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n", o.threads, o.threads_b);
    } else if (o.markdown) {
        printf("variant %s, %d thread(s)\n\n| kernel | params | n | batch | median (us) | p90 (us) | GFLOP/s | "
               "weight bytes | vs dense |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n", ep_variant(), o.threads);
    }
    fflush(stdout);
    for (int i = 0; i < ns; i++)
        for (int j = 0; j < nbt; j++)
            bench_shape(&o, sizes[i], batch[j], j == 0, &cur, paired ? &base_api : NULL, cur_thr, base_thr);
    if (o.json) printf("\n]}\n");
    if (handle) dlclose(handle);
    if (cur_handle) dlclose(cur_handle);
    return 0;
}
