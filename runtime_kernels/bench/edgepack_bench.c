/* edgepack-bench: native kernel micro-benchmarks (runs where there is no Python).
 *   edgepack-bench kernels --sizes 256,1024,4096 --batch 1,8 --threads 1 --json
 * Per kernel and shape: median/p90 time per call, dense-equivalent GFLOP/s, weight bytes and
 * the speed-up over the dense kernel of the same shape. Kernels are single-threaded. */
#define _POSIX_C_SOURCE 200112L /* clock_gettime; 2001 so Darwin's stdio also declares snprintf */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgepack/kernels.h"

typedef struct {
    int runs, warmup, block, rank, ratio, json, threads;
    double min_time_s;
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

typedef ep_status (*call_fn)(void *ctx);
typedef struct { double median_us, p90_us; int runs; } timing_t;

static timing_t time_call(const opts_t *o, call_fn fn, void *ctx) {
    for (int i = 0; i < o->warmup; i++) fn(ctx);
    int cap = 1024, n = 0;
    double *t = (double *)malloc(sizeof(double) * (size_t)cap), start = now_s();
    while (n < o->runs || (now_s() - start < o->min_time_s && n < 100000)) {
        double t0 = now_s();
        ep_status st = fn(ctx);
        double t1 = now_s();
        if (st != EP_OK) { fprintf(stderr, "edgepack-bench: kernel failed: %s\n", ep_last_error()); exit(1); }
        if (n == cap) t = (double *)realloc(t, sizeof(double) * (size_t)(cap *= 2));
        t[n++] = (t1 - t0) * 1e6;
    }
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    timing_t r = {t[n / 2], t[(int)ceil(0.9 * (n - 1))], n};
    free(t);
    return r;
}

/* ---- call contexts ---- */
typedef struct {
    int64_t n, N;
    float *X, *Y, *W, *bias;
    ep_hash_params hp;
    float *buckets;
    ep_hashed_plan *hpl;
    ep_circulant_plan *cpl;
    ep_ldr_plan *lpl;
    ep_rfft_plan *fpl;
} ctx_t;

static ep_status c_dense(void *p) { ctx_t *c = p; return ep_dense_matmul(c->X, c->N, c->n, c->W, c->n, c->bias, c->Y); }
static ep_status c_circ(void *p) { ctx_t *c = p; return ep_circulant_matmul(c->cpl, c->X, c->N, c->n, c->bias, c->Y, c->n); }
static ep_status c_ldr(void *p) { ctx_t *c = p; return ep_ldr_matmul(c->lpl, c->X, c->N, c->n, c->bias, c->Y, c->n); }
static ep_status c_hexp(void *p) { ctx_t *c = p; return ep_hashed_matmul_expand(c->hpl, c->X, c->N, c->n, c->bias, c->Y, c->n); }
static ep_status c_hstr(void *p) { ctx_t *c = p; return ep_hashed_matmul_stream(&c->hp, c->buckets, NULL, 0, c->X, c->N, c->bias, c->Y); }
static ep_status c_rfft(void *p) { ctx_t *c = p; return ep_rfft(c->fpl, c->n, c->X, c->Y); }

static float *rnd_vec(int64_t n, uint32_t seed) {
    float *v = (float *)malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; v[i] = (float)((seed >> 8) * (1.0 / 16777216.0) - 0.5); }
    return v;
}

static int g_first = 1;
static void emit(const opts_t *o, const char *kernel, const char *params, int64_t n, int64_t N, timing_t t,
                 double flops, int64_t wbytes, double dense_us, int64_t dense_bytes) {
    double gf = flops / (t.median_us * 1e3);
    if (o->json) {
        printf("%s    {\"kernel\": \"%s\", \"params\": \"%s\", \"n\": %lld, \"batch\": %lld, \"variant\": \"%s\", "
               "\"runs\": %d, \"median_us\": %.3f, \"p90_us\": %.3f, \"gflops\": %.3f, \"weight_bytes\": %lld, "
               "\"speedup_vs_dense\": %.3f, \"weight_ratio_vs_dense\": %.6f}",
               g_first ? "" : ",\n", kernel, params, (long long)n, (long long)N, ep_variant(), t.runs, t.median_us,
               t.p90_us, gf, (long long)wbytes, dense_us > 0 ? dense_us / t.median_us : 0.0,
               dense_bytes > 0 ? (double)wbytes / (double)dense_bytes : 0.0);
    } else {
        printf("%-16s %-10s n=%-6lld N=%-3lld median %10.2f us  p90 %10.2f us  %8.2f GFLOP/s  %10lld B  x%.2f vs dense\n",
               kernel, params, (long long)n, (long long)N, t.median_us, t.p90_us, gf, (long long)wbytes,
               dense_us > 0 ? dense_us / t.median_us : 0.0);
    }
    g_first = 0;
    fflush(stdout);
}

static void must(ep_status s) {
    if (s != EP_OK) { fprintf(stderr, "edgepack-bench: %s\n", ep_last_error()); exit(1); }
}

static void bench_shape(const opts_t *o, int64_t n, int64_t N, int do_fft) {
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.n = n; c.N = N;
    c.X = rnd_vec(N * n, 1); c.Y = (float *)malloc(sizeof(float) * (size_t)(N * n + 2)); c.bias = rnd_vec(n, 2);
    c.W = rnd_vec(n * n, 3);
    const double dflops = 2.0 * (double)N * (double)n * (double)n;
    const int64_t dbytes = n * n * 4;
    char prm[64];

    timing_t td = time_call(o, c_dense, &c);
    emit(o, "dense", "-", n, N, td, dflops, dbytes, td.median_us, dbytes);

    int64_t bs[2] = {o->block < n ? o->block : n, n};
    for (int k = 0; k < (bs[0] == n ? 1 : 2); k++) {
        int64_t b = bs[k], p = n / b;
        float *blocks = rnd_vec(p * p * b, 4);
        must(ep_circulant_plan_create(p, p, b, blocks, n, n, &c.cpl));
        snprintf(prm, sizeof prm, "b=%lld", (long long)b);
        emit(o, "circulant", prm, n, N, time_call(o, c_circ, &c), dflops, p * p * b * 4, td.median_us, dbytes);
        ep_circulant_plan_destroy(c.cpl); free(blocks);
    }

    float *G = rnd_vec(o->rank * n, 5), *H = rnd_vec(o->rank * n, 6);
    must(ep_ldr_plan_create(o->rank, n, G, H, n, n, &c.lpl));
    snprintf(prm, sizeof prm, "r=%d", o->rank);
    emit(o, "ldr", prm, n, N, time_call(o, c_ldr, &c), dflops, 2 * o->rank * n * 4, td.median_us, dbytes);
    ep_ldr_plan_destroy(c.lpl); free(G); free(H);

    int64_t nb = n * n / o->ratio > 0 ? n * n / o->ratio : 1;
    ep_hash_params hp = {n, n, nb, 1, 42, 1};
    c.hp = hp;
    c.buckets = rnd_vec(nb, 7);
    snprintf(prm, sizeof prm, "ratio=1/%d", o->ratio);
    must(ep_hashed_plan_create(&c.hp, c.buckets, NULL, 0, &c.hpl));
    emit(o, "hashed_expand", prm, n, N, time_call(o, c_hexp, &c), dflops, nb * 4, td.median_us, dbytes);
    ep_hashed_plan_destroy(c.hpl);
    emit(o, "hashed_stream", prm, n, N, time_call(o, c_hstr, &c), dflops, nb * 4, td.median_us, dbytes);
    free(c.buckets);

    if (do_fft) {
        must(ep_rfft_plan_create(n, &c.fpl));
        emit(o, "rfft", "-", n, 1, time_call(o, c_rfft, &c), 2.5 * (double)n * log2((double)n), 0, 0, 0);
        ep_rfft_plan_destroy(c.fpl);
    }
    free(c.X); free(c.Y); free(c.bias); free(c.W);
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
            "usage: edgepack-bench kernels [--sizes 256,1024,4096] [--batch 1,8] [--threads 1] [--json]\n"
            "                              [--num_runs 20] [--warmup_runs 3] [--min_time_ms 100] [--block 64]\n"
            "                              [--rank 2] [--ratio 8] [--variant auto|ref|avx2|avx512|neon]\n"
            "  sizes must be powers of two >= 4 (square n x n layers)\n");
}

int main(int argc, char **argv) {
    opts_t o = {20, 3, 64, 2, 8, 0, 1, 0.1};
    int64_t sizes[32] = {256, 1024, 4096}, batch[32] = {1, 8};
    int ns = 3, nbt = 2;
    if (argc < 2 || strcmp(argv[1], "kernels") != 0) { usage(); return 2; }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
        if (strcmp(a, "--json") == 0) o.json = 1;
        else if (ARG("--sizes")) { if ((ns = parse_list(v, sizes, 32)) <= 0) { usage(); return 2; } }
        else if (ARG("--batch")) { if ((nbt = parse_list(v, batch, 32)) <= 0) { usage(); return 2; } }
        else if (ARG("--threads") || ARG("--num_threads")) o.threads = atoi(v);
        else if (ARG("--runs") || ARG("--num_runs")) o.runs = atoi(v);
        else if (ARG("--warmup") || ARG("--warmup_runs")) o.warmup = atoi(v);
        else if (ARG("--min_time_ms")) o.min_time_s = atof(v) / 1e3;
        else if (ARG("--block")) o.block = atoi(v);
        else if (ARG("--rank")) o.rank = atoi(v);
        else if (ARG("--ratio")) o.ratio = atoi(v);
        else if (ARG("--variant")) { if (ep_set_variant(v) != EP_OK) { fprintf(stderr, "%s\n", ep_last_error()); return 2; } }
        else { fprintf(stderr, "edgepack-bench: unknown or incomplete argument '%s'\n", a); usage(); return 2; }
#undef ARG
    }
    if (o.runs < 1 || o.warmup < 0 || o.block < 4 || o.rank < 1 || o.ratio < 1) { usage(); return 2; }
    for (int i = 0; i < ns; i++)
        if (sizes[i] < 4 || (sizes[i] & (sizes[i] - 1))) { fprintf(stderr, "edgepack-bench: size %lld is not a power of two >= 4\n", (long long)sizes[i]); return 2; }
    if (o.threads != 1) fprintf(stderr, "edgepack-bench: kernels are single-threaded; --threads %d ignored\n", o.threads);
    if (o.json)
        printf("{\"tool\": \"edgepack-bench\", \"mode\": \"kernels\", \"version\": \"%s\", \"variant\": \"%s\", "
               "\"threads\": 1, \"time_unit\": \"us\", \"results\": [\n", ep_version(), ep_variant());
    for (int i = 0; i < ns; i++)
        for (int j = 0; j < nbt; j++) bench_shape(&o, sizes[i], batch[j], j == 0);
    if (o.json) printf("\n]}\n");
    return 0;
}
