/* The thread pool and the split drivers: every task runs exactly once, concurrent callers are
 * safe, and each parallelised kernel's output is bit-identical (memcmp) for 1, 2 and 3 threads on
 * sizes no split divides, for every variant. Reads internal.h to split even small calls. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "internal.h"

static int g_fail, g_pass;
#define CHECK(cond, ...) do { if (cond) g_pass++; else { g_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

/* ---- the pool ---- */
typedef struct { atomic_int *hits; int max_worker; atomic_int bad_worker; } cover_ctx;
static void cover_task(void *ctx, int64_t i, int w) {
    cover_ctx *c = (cover_ctx *)ctx;
    atomic_fetch_add(&c->hits[i], 1);
    if (w < 0 || w > c->max_worker) atomic_store(&c->bad_worker, 1);
}

static void test_cover(void) {
    static const int64_t ns[] = {1, 2, 3, 5, 64, 1001};
    static const int ts[] = {1, 2, 3, 8};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof ts / sizeof *ts; b++) {
            atomic_int *hits = (atomic_int *)calloc((size_t)ns[a], sizeof *hits);
            cover_ctx c = {hits, ts[b] - 1, 0};
            int used = ep_parallel_for(ts[b], ns[a], cover_task, &c);
            int once = 1;
            for (int64_t i = 0; i < ns[a]; i++) once &= atomic_load(&hits[i]) == 1;
            CHECK(once, "parallel_for(threads=%d, n=%lld): some task did not run exactly once", ts[b], (long long)ns[a]);
            CHECK(!atomic_load(&c.bad_worker) && used >= 1 && used <= ts[b] && used <= ns[a],
                  "parallel_for(threads=%d, n=%lld): %d participants / bad worker index", ts[b], (long long)ns[a], used);
            free(hits);
        }
}

static void *concurrent_caller(void *arg) {
    int *ok = (int *)arg;
    for (int rep = 0; rep < 200; rep++) {
        atomic_int hits[37];
        for (int i = 0; i < 37; i++) atomic_init(&hits[i], 0);
        cover_ctx c = {hits, 2, 0};
        ep_parallel_for(3, 37, cover_task, &c);
        for (int i = 0; i < 37; i++) *ok &= atomic_load(&hits[i]) == 1;
        *ok &= !atomic_load(&c.bad_worker);
    }
    return NULL;
}

static void test_concurrent(void) {
    pthread_t th[3];
    int ok[3] = {1, 1, 1};
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, concurrent_caller, &ok[i]);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    CHECK(ok[0] && ok[1] && ok[2], "parallel_for from 3 threads at once: a task ran 0 or 2 times");
}

static void test_count(void) {
    ep_set_num_threads(0);
    CHECK(ep_get_num_threads() == 1, "ep_set_num_threads(0) -> %d, want 1", ep_get_num_threads());
    ep_set_num_threads(1000);
    CHECK(ep_get_num_threads() == EP_MAX_THREADS, "ep_set_num_threads(1000) -> %d, want %d", ep_get_num_threads(), EP_MAX_THREADS);
    ep_set_num_threads(3);
    CHECK(ep_get_num_threads() == 3, "ep_set_num_threads(3) -> %d", ep_get_num_threads());
    ep_set_num_threads(1);
}

/* ---- the kernels ---- */
static float *rnd(int64_t n, unsigned *s) {
    float *v = (float *)malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) { *s = *s * 1664525u + 1013904223u; v[i] = (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f; }
    return v;
}

/* out of `n` floats from `run` with 1 thread, then memcmp against 2 and 3 threads */
typedef ep_status (*runner)(void *ctx, float *Y);
static void same_for_threads(const char *what, runner run, void *ctx, int64_t n) {
    float *ref = (float *)malloc(sizeof(float) * (size_t)n), *y = (float *)malloc(sizeof(float) * (size_t)n);
    ep_set_num_threads(1);
    ep_status st = run(ctx, ref);
    CHECK(st == EP_OK, "%s [%s] 1 thread: %s", what, ep_variant(), ep_last_error());
    for (int t = 2; t <= 3 && st == EP_OK; t++) {
        memset(y, 0xFF, sizeof(float) * (size_t)n);
        ep_set_num_threads(t);
        ep_status s2 = run(ctx, y);
        CHECK(s2 == EP_OK && memcmp(ref, y, sizeof(float) * (size_t)n) == 0,
              "%s [%s]: %d threads differ from 1 thread", what, ep_variant(), t);
    }
    ep_set_num_threads(1);
    free(ref); free(y);
}

typedef struct { ep_hash_params p; const float *bk, *recon; int64_t rl; const float *X; int64_t N; const float *bias;
                 const ep_hashed_plan *hp; const float *W; const ep_circulant_plan *cp; const ep_ldr_plan *lp;
                 int64_t in, out; } kctx;
static ep_status run_decode(void *c, float *Y) { kctx *k = (kctx *)c; return ep_hashed_decode(&k->p, k->bk, k->recon, k->rl, Y); }
static ep_status run_stream(void *c, float *Y) {
    kctx *k = (kctx *)c; return ep_hashed_matmul_stream(&k->p, k->bk, k->recon, k->rl, k->X, k->N, k->bias, Y);
}
static ep_status run_expand(void *c, float *Y) { kctx *k = (kctx *)c; return ep_hashed_matmul_expand(k->hp, k->X, k->N, k->in, k->bias, Y, k->out); }
static ep_status run_dense(void *c, float *Y) { kctx *k = (kctx *)c; return ep_dense_matmul(k->X, k->N, k->in, k->W, k->out, k->bias, Y); }
static ep_status run_circ(void *c, float *Y) { kctx *k = (kctx *)c; return ep_circulant_matmul(k->cp, k->X, k->N, k->in, k->bias, Y, k->out); }
static ep_status run_ldr(void *c, float *Y) { kctx *k = (kctx *)c; return ep_ldr_matmul(k->lp, k->X, k->N, k->in, k->bias, Y, k->out); }

static void test_kernels(void) {
    unsigned s = 7;
    static const int64_t batches[] = {1, 3, 7, 13};
    float *X = rnd(1400 * 64, &s), *bias = rnd(256, &s), *bk = rnd(97, &s), *W = rnd(70 * 61, &s);
    /* recon MLP for K = 2, H = 3: W1 (3x2), b1 (3), W2 (3), b2 */
    float *recon = rnd(3 * 4 + 1, &s);
    for (int k = 1; k <= 2; k++) {
        kctx c = {{.rows = 53, .cols = 41, .num_buckets = 97, .num_hashes = k, .seed = 11, .is_signed = 1},
                  bk, k == 2 ? recon : NULL, k == 2 ? 13 : 0, X, 1, bias, NULL, NULL, NULL, NULL, 41, 53};
        same_for_threads(k == 1 ? "hashed_decode K=1" : "hashed_decode K=2", run_decode, &c, 53 * 41);
        for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
            c.N = batches[b];
            same_for_threads("hashed_matmul_stream", run_stream, &c, c.N * 53);
        }
    }
    {
        ep_hash_params p = {.rows = 70, .cols = 61, .num_buckets = 97, .num_hashes = 1, .seed = 3, .is_signed = 1};
        ep_hashed_plan *hp = NULL;
        CHECK(ep_hashed_plan_create(&p, bk, NULL, 0, &hp) == EP_OK, "plan: %s", ep_last_error());
        kctx c = {p, bk, NULL, 0, X, 1, bias, hp, W, NULL, NULL, 61, 70};
        for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
            c.N = batches[b];
            if (hp) same_for_threads("hashed_matmul_expand", run_expand, &c, c.N * 70);
            same_for_threads("dense_matmul", run_dense, &c, c.N * 70);
            c.bias = NULL;
            same_for_threads("dense_matmul (no bias)", run_dense, &c, c.N * 70);
            c.bias = bias;
        }
        ep_hashed_plan_destroy(hp);
    }
    {
        float *blocks = rnd(5 * 3 * 8, &s);
        ep_circulant_plan *cp = NULL;
        CHECK(ep_circulant_plan_create(5, 3, 8, blocks, 21, 37, &cp) == EP_OK, "circulant plan: %s", ep_last_error());
        kctx c = {{0}, NULL, NULL, 0, X, 1, bias, NULL, NULL, cp, NULL, 21, 37};
        static const int64_t cb[] = {1, 3, 9, 1400}; /* 1400 rows: more than one batch block */
        for (size_t b = 0; cp && b < sizeof cb / sizeof *cb; b++) {
            c.N = cb[b];
            same_for_threads("circulant_matmul", run_circ, &c, c.N * 37);
        }
        ep_circulant_plan_destroy(cp);
        free(blocks);
    }
    {
        float *G = rnd(3 * 16, &s), *H = rnd(3 * 16, &s);
        ep_ldr_plan *lp = NULL;
        CHECK(ep_ldr_plan_create(3, 16, G, H, 13, 11, &lp) == EP_OK, "ldr plan: %s", ep_last_error());
        kctx c = {{0}, NULL, NULL, 0, X, 1, bias, NULL, NULL, NULL, lp, 13, 11};
        static const int64_t lb[] = {1, 5, 9, 1400}; /* 1400 rows: more than one batch block */
        for (size_t b = 0; lp && b < sizeof lb / sizeof *lb; b++) {
            c.N = lb[b];
            same_for_threads("ldr_matmul", run_ldr, &c, c.N * 11);
        }
        ep_ldr_plan_destroy(lp);
        free(G); free(H);
    }
    free(X); free(bias); free(bk); free(W); free(recon);
}

int main(void) {
    test_count();
    test_cover();
    test_concurrent();
    ep_set_parallel_min_work(0); /* split every call, however small */
    for (int v = 0; v < ep_variant_count(); v++) {
        ep_set_variant(ep_variant_name(v));
        test_kernels();
    }
    ep_set_parallel_min_work(-1);
    ep_set_variant("auto");
    test_kernels(); /* the default minimum: the larger calls split, the small stay on one thread */
    printf("test_threads: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail != 0;
}
