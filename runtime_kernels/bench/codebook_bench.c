/* codebook-bench: the fused sparse codebook matmul (ep_sparse_codebook_matmul) against the dense
 * kernel (ep_dense_matmul) on the same weight, single thread, in interleaved rounds in one
 * process; prints the median (and the fastest) time per call of each and the ratio dense / sparse.
 *   codebook-bench [--rounds 9] [--shape 784x300] [--density 4] [--batch 1]
 * Shapes 784x300 (LeNet-300-100's first layer, out x in = 300 x 784) and 1024x1024, densities
 * 2, 4, 5, 10 %, batch 1, 8 and 32 (each option keeps only the one named), a 16-value codebook at
 * 4 bits. */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgepack/kernels.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint32_t g_rng = 12345;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 17; g_rng ^= g_rng << 5;
    return g_rng;
}
static float rnd(void) { return (float)(rnd_u32() >> 8) / 8388608.0f - 1.0f; }

/* seconds per call: enough calls for ~20 ms */
static double time_calls(int sparse, const ep_codebook_plan *plan, const float *W, const float *X, int64_t N,
                         int64_t in, int64_t out, float *Y, int calls) {
    const double t0 = now_s();
    for (int i = 0; i < calls; i++) {
        ep_status s = sparse ? ep_sparse_codebook_matmul(plan, X, N, in, NULL, Y, out)
                             : ep_dense_matmul(X, N, in, W, out, NULL, Y);
        if (s) { fprintf(stderr, "error: %s\n", ep_last_error()); exit(1); }
    }
    return (now_s() - t0) / calls;
}

int main(int argc, char **argv) {
    int rounds = 9;
    const char *only_shape = NULL;
    double only_density = 0;
    int64_t only_batch = 0;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--shape")) only_shape = argv[i + 1];
        if (!strcmp(argv[i], "--density")) only_density = atof(argv[i + 1]) / 100.0;
        if (!strcmp(argv[i], "--batch")) only_batch = atoll(argv[i + 1]);
    }
    if (rounds < 1 || rounds > 101) rounds = 9;
    ep_set_num_threads(1);
    const int64_t shapes[2][2] = {{784, 300}, {1024, 1024}}; /* in, out */
    const double dens[] = {0.02, 0.04, 0.05, 0.10};
    const int64_t batches[] = {1, 8, 32};
    printf("variant %s, 1 thread, %d interleaved rounds, median per call\n", ep_variant(), rounds);
    printf("%-10s %7s %5s %12s %12s %8s %18s\n", "in x out", "density", "N", "dense us", "sparse us", "speed-up",
           "fastest d/s (us)");
    for (int s = 0; s < 2; s++) {
        const int64_t in = shapes[s][0], out = shapes[s][1];
        char name[32];
        snprintf(name, sizeof name, "%lldx%lld", (long long)in, (long long)out);
        if (only_shape && strcmp(only_shape, name)) continue;
        for (size_t di = 0; di < sizeof dens / sizeof dens[0]; di++) {
            if (only_density > 0 && (only_density < dens[di] - 1e-9 || only_density > dens[di] + 1e-9)) continue;
            float cb[16];
            cb[0] = 0.0f;
            for (int j = 1; j < 16; j++) cb[j] = rnd();
            float *W = (float *)calloc((size_t)(in * out), sizeof(float));
            uint8_t *gaps = (uint8_t *)malloc((size_t)(in * out)), *idx = (uint8_t *)malloc((size_t)(in * out));
            int32_t *row_ptr = (int32_t *)malloc(sizeof(int32_t) * (size_t)(out + 1));
            int64_t n = 0;
            row_ptr[0] = 0;
            for (int64_t r = 0; r < out; r++) {
                int64_t last = -1;
                for (int64_t c = 0; c < in; c++) {
                    if ((double)rnd_u32() / 4294967296.0 >= dens[di]) continue;
                    int64_t gap = c - last;
                    for (; gap > 255; gap -= 255) { idx[n] = 0; gaps[n++] = 255; } /* fillers (value 0) */
                    idx[n] = (uint8_t)(1 + rnd_u32() % 15);
                    gaps[n++] = (uint8_t)gap;
                    W[r * in + c] = cb[idx[n - 1]];
                    last = c;
                }
                row_ptr[r + 1] = (int32_t)n;
            }
            uint8_t *packed = (uint8_t *)calloc((size_t)((n * 4 + 7) / 8 + 1), 1);
            for (int64_t k = 0; k < n; k++) packed[k / 2] |= (uint8_t)(idx[k] << (k % 2 * 4));
            ep_codebook w = {out, in, 4, cb, 16, packed, (n * 4 + 7) / 8, row_ptr, out + 1, gaps, n};
            ep_codebook_plan *plan = NULL;
            if (ep_codebook_plan_create(&w, &plan)) { fprintf(stderr, "plan: %s\n", ep_last_error()); return 1; }
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
                const int64_t N = batches[bi];
                if (only_batch && N != only_batch) continue;
                float *X = (float *)malloc(sizeof(float) * (size_t)(N * in));
                float *Y = (float *)malloc(sizeof(float) * (size_t)(N * out));
                for (int64_t i = 0; i < N * in; i++) X[i] = rnd();
                const double est = time_calls(0, plan, W, X, N, in, out, Y, 3);
                const int calls = est > 0 ? (int)(0.02 / est) + 1 : 100;
                double td[101], ts[101];
                for (int k = 0; k < rounds; k++) {
                    td[k] = time_calls(0, plan, W, X, N, in, out, Y, calls);
                    ts[k] = time_calls(1, plan, W, X, N, in, out, Y, calls * 4);
                }
                qsort(td, (size_t)rounds, sizeof(double), cmp_d);
                qsort(ts, (size_t)rounds, sizeof(double), cmp_d);
                const double md = td[rounds / 2], ms = ts[rounds / 2];
                printf("%4lldx%-5lld %6.0f%% %5lld %12.2f %12.2f %7.2fx %8.2f / %-8.2f\n", (long long)in,
                       (long long)out, 100 * dens[di], (long long)N, 1e6 * md, 1e6 * ms, md / ms, 1e6 * td[0],
                       1e6 * ts[0]);
                free(X); free(Y);
            }
            ep_codebook_plan_destroy(plan);
            free(W); free(gaps); free(idx); free(row_ptr); free(packed);
        }
    }
    return 0;
}
