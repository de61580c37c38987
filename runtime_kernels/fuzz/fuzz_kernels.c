/* libFuzzer harness: every public entry point of edgepack/kernels.h with sizes, attributes,
 * NULL pointers and data from the input, run under every kernel variant this CPU has (ref,
 * avx2, avx512 / neon) and checked three ways:
 *  - an independent model of the documented contract (kernels.h) says whether a call is valid;
 *    a valid small call must succeed, an invalid one must fail before touching memory (its
 *    buffers are 1-float allocations, so ASan catches any touch);
 *  - every SIMD variant must return the ref variant's status and agree with its output (exactly
 *    where the arithmetic is exact: inputs are multiples of 1/128, so GEMM sums are exact);
 *  - ref is checked against naive references (dense GEMM in double, hashed decode from
 *    ep_hash_indices, circulant / LDR as dense matrices, the rfft round trip).
 * The first byte picks the entry point; "raw" mode feeds arbitrary float bits (NaN, Inf) and
 * only checks memory safety and statuses. */
#include "fuzz_common.h"
#include "fuzz_variants.h"

#include <math.h>

#include "edgepack/kernels.h"

#define CAP (1 << 15) /* floats per buffer of a valid call; bigger valid calls are skipped */

/* The variants this CPU runs, ref first; small decode limits. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_set_limits();
    fz_load_variants();
    fprintf(stderr, "fuzz_kernels: %d variants:", g_nvar);
    for (int i = 0; i < g_nvar; i++) fprintf(stderr, " %s", g_variants[i]);
    fprintf(stderr, "\n");
    return 0;
}

/* ---- sizes ------------------------------------------------------------------------------- */
enum { SMALL = 0, HUGE = 1, BAD = 2 }; /* valid and cheap / valid but too big to run / invalid */

static const int64_t HOSTILE[16] = {0, -1, -7, INT64_MIN, INT64_MAX, INT32_MAX, (int64_t)INT32_MAX + 1,
                                    (int64_t)UINT32_MAX, (int64_t)UINT32_MAX + 1, (int64_t)1 << 40,
                                    (int64_t)1 << 62, 1, 2, 3, 6, (int64_t)1 << 31};

/* Mostly a small value in [-1, max]; a byte >= 0xF0 picks a hostile value instead. */
static int64_t fz_size(fz *f, int64_t max) {
    const uint8_t b = fz_u8(f);
    if (b >= 0xF0) return HOSTILE[b & 15];
    return (int64_t)(b % (max + 2)) - 1;
}

/* A power of two in [4, 4096] or (byte >= 0xF0) a hostile value. */
static int64_t fz_pow2(fz *f) {
    const uint8_t b = fz_u8(f);
    if (b >= 0xF0) return HOSTILE[b & 15];
    return (int64_t)4 << (b % 11);
}

static int is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }
static int worst(int a, int b) { return a > b ? a : b; }

/* Class of a count of floats that must each fit: >= 2^61 cannot be addressed in bytes (the
 * kernels must refuse it as an overflow), more than CAP is skipped. */
static int count_class(int64_t a, int64_t b, int64_t c) {
    if (a < 0 || b < 0 || c < 0) return BAD;
    const unsigned __int128 lim = (unsigned __int128)1 << 61, ab = (unsigned __int128)a * (unsigned __int128)b;
    if (ab >= lim || ab * (unsigned __int128)c >= lim) return BAD; /* ab < 2^61: ab * c fits */
    const unsigned __int128 p = ab * (unsigned __int128)c;
    return p > CAP ? HUGE : SMALL;
}

/* ---- buffers ----------------------------------------------------------------------------- */
/* a*b*c when it is a valid small count of floats, else 0. */
static int64_t cnt(int64_t a, int64_t b, int64_t c) {
    return a > 0 && b > 0 && c > 0 && count_class(a, b, c) == SMALL ? a * b * c : 0;
}

/* Exactly count floats (an exact allocation, so ASan sees any access past it), filled from the
 * input. A buffer always has the length its call declares; when that length is not a valid
 * small count it gets 1 float, and the kernel must refuse the call without reading it. */
static float *buf(fz *f, int64_t count, int raw) {
    float *v = (float *)malloc(sizeof(float) * (count > 0 ? (size_t)count : 1));
    if (count > 0) fz_fill(f, v, (size_t)count, raw);
    else v[0] = 0.5f;
    return v;
}

static float *outbuf(int64_t count) { return (float *)calloc(count > 0 ? (size_t)count : 1, sizeof(float)); }

/* Every value within its tolerance of ref's (NaN where ref has NaN). */
static void check_close(const char *what, const char *variant, const float *want, const float *got, size_t n,
                        const float *tol) {
    for (size_t i = 0; i < n; i++)
        FZ_ASSERT(fabsf(want[i] - got[i]) <= tol[i] || (isnan(want[i]) && isnan(got[i])),
                  "%s: %s gives %.9g at %zu, ref %.9g (tolerance %.3g)", what, variant, (double)got[i], i,
                  (double)want[i], (double)tol[i]);
}

/* A status against the contract model's class and against ref's status. */
static void check_status(const char *what, int cls, ep_status s, ep_status ref_s, const char *variant) {
    if (cls == BAD) FZ_ASSERT(s != EP_OK, "%s: %s accepted an invalid call", what, variant);
    if (cls == SMALL) FZ_ASSERT(s == EP_OK, "%s: %s refused a valid call: %s", what, variant, ep_last_error());
    FZ_ASSERT(s == ref_s, "%s: %s returned %d, ref %d", what, variant, (int)s, (int)ref_s);
}

/* NULL injection: bit i of the mask replaces pointer i by NULL. */
#define MAYBE_NULL(mask, i, p) (((mask) >> (i)) & 1 ? NULL : (p))

/* ---- hashed ------------------------------------------------------------------------------ */
typedef struct hcase {
    ep_hash_params p;
    int64_t recon_len;
    int has_recon;
    int cls; /* of the params (+ recon) alone */
} hcase;

/* Hash params and a recon length from the input, and the class the contract gives them. */
static void read_hash(fz *f, hcase *h) {
    h->p.rows = fz_size(f, 40);
    h->p.cols = fz_size(f, 40);
    h->p.num_buckets = fz_size(f, 70);
    const uint8_t k = fz_u8(f);
    h->p.num_hashes = k >= 0xF0 ? (int32_t)HOSTILE[k & 15] : (int32_t)(k % 6);
    h->p.seed = fz_u32(f);
    const uint8_t s = fz_u8(f);
    h->p.is_signed = s >= 0xF0 ? (int32_t)HOSTILE[s & 15] : s & 1;
    const uint8_t r = fz_u8(f); /* recon: absent, H*(K+2)+1 for H = 1..4, or a wrong length */
    const int64_t K = h->p.num_hashes > 0 ? h->p.num_hashes : 1;
    h->has_recon = r % 8 != 0;
    h->recon_len = r % 8 == 7 ? (int64_t)(r >> 3) : (int64_t)(r % 8 > 4 ? 1 : r % 8) * (K + 2) + 1;
    int cls = SMALL;
    if (h->p.rows < 1 || h->p.rows > UINT32_MAX || h->p.cols < 1 || h->p.cols > UINT32_MAX) cls = BAD;
    if (h->p.num_buckets < 1 || h->p.num_buckets > INT32_MAX) cls = BAD;
    if (h->p.num_hashes < 1 || h->p.num_hashes > EP_MAX_HASHES || (h->p.is_signed != 0 && h->p.is_signed != 1))
        cls = BAD;
    cls = worst(cls, count_class(h->p.rows, h->p.cols, K));
    if (h->p.num_buckets > CAP) cls = worst(cls, HUGE);
    h->cls = cls;
}

/* Class of the recon argument of a call that needs the data. */
static int recon_class(const hcase *h, int recon_null) {
    const int64_t K = h->p.num_hashes, per = K + 2;
    if (!h->has_recon || recon_null) return K > 1 ? BAD : SMALL;
    if (h->recon_len < per + 1 || (h->recon_len - 1) % per != 0) return BAD;
    return SMALL;
}

/* Tolerance of each decoded weight: exact without the MLP, else bounded by the MLP's L1 size. */
static float decode_tol(const hcase *h, int with_mlp) {
    if (!with_mlp) return 0.0f;
    const int64_t H = (h->recon_len - 1) / (h->p.num_hashes + 2);
    return 1e-6f * (float)(1 + H * (h->p.num_hashes + 1));
}

/* ep_hash_indices: indices in range, signs +-1, index 0 equal to XXH32 of the key. */
static void run_hash_indices(fz *f) {
    hcase h;
    read_hash(f, &h);
    const uint8_t nulls = fz_u8(f) & 3; /* idx, sign */
    int cls = h.cls;
    if (nulls & 1) cls = BAD;
    if (cls == HUGE) return;
    const int64_t total = cls == SMALL ? h.p.rows * h.p.cols * h.p.num_hashes : 1;
    int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)total);
    int8_t *sign = (int8_t *)malloc((size_t)total);
    ep_status st = ep_hash_indices(&h.p, MAYBE_NULL(nulls, 0, idx), MAYBE_NULL(nulls, 1, sign));
    check_status("ep_hash_indices", cls, st, st, "core");
    if (!st) {
        for (int64_t t = 0; t < total; t++) {
            FZ_ASSERT(idx[t] >= 0 && idx[t] < h.p.num_buckets, "ep_hash_indices: index %d out of [0, %lld)", idx[t],
                      (long long)h.p.num_buckets);
            if (!(nulls & 2)) FZ_ASSERT(sign[t] == 1 || (h.p.is_signed && sign[t] == -1), "bad sign %d", sign[t]);
        }
        /* spot check against XXH32 of the 8-byte key u32le(i) || u32le(j) */
        const uint8_t key[8] = {0};
        const uint32_t hh = ep_xxh32(key, 8, h.p.seed);
        FZ_ASSERT(idx[0] == (int32_t)(hh % (uint32_t)h.p.num_buckets), "index 0 is not XXH32(key, seed) mod B");
        FZ_ASSERT(ep_xxh32_key(0, 0, h.p.seed) == hh, "ep_xxh32_key differs from ep_xxh32");
    }
    free(idx);
    free(sign);
}

/* ep_hashed_decode (op 0), ep_hashed_matmul_stream (op 1), plan + expand (op 2). */
static void run_hashed(fz *f, int op) {
    hcase h;
    read_hash(f, &h);
    const int raw = fz_u8(f) & 1;
    const uint8_t nulls = fz_u8(f) & (op ? 0x3F : 0x0F); /* buckets, recon, V/Y, X, bias, plan-out */
    const int64_t N = fz_size(f, 6);
    int64_t in = h.p.cols, out = h.p.rows;
    if (op == 2) { /* expand with sizes that may not match the plan */
        const uint8_t m = fz_u8(f);
        if (m & 1) in ^= m >> 1 & 3;
        if (m & 8) out ^= m >> 4 & 3;
    }
    int cls = worst(h.cls, recon_class(&h, nulls & 2));
    if (nulls & 1) cls = BAD;
    const int need_v = op == 0 || op == 2;
    if (op == 0 && (nulls & 4)) cls = BAD;
    if (op == 1 && ((nulls & 4) || (nulls & 8) || N < 1)) cls = BAD;
    if (op == 1) cls = worst(cls, worst(count_class(N, h.p.cols, 1), count_class(N, h.p.rows, 1)));
    if (op == 2 && (nulls & 32)) cls = BAD;
    if (cls == HUGE) return;
    if (op == 2 && cls == SMALL && N >= 1 && count_class(N, in > out ? in : out, 1) != SMALL) return;
    const int small = cls == SMALL;
    float *buckets = buf(f, cnt(h.p.num_buckets, 1, 1), raw);
    float *recon = buf(f, h.has_recon ? cnt(h.recon_len, 1, 1) : 0, raw);
    const int with_mlp = small && h.has_recon && !(nulls & 2);
    const int64_t vcount = need_v ? cnt(h.p.rows, h.p.cols, 1) : cnt(N, h.p.rows, 1);
    float *X = op ? buf(f, cnt(N, h.p.cols, 1), raw) : NULL, *bias = op ? buf(f, cnt(h.p.rows, 1, 1), raw) : NULL;
    float *want = outbuf(vcount), *got = outbuf(vcount), *tol = outbuf(vcount);
    const float dtol = decode_tol(&h, with_mlp);
    ep_status ref_st = EP_OK;
    for (int v = 0; v < g_nvar; v++) {
        ep_set_variant(g_variants[v]);
        float *dst = v == 0 ? want : got;
        ep_status st;
        const float *B = MAYBE_NULL(nulls, 0, buckets), *R = MAYBE_NULL(nulls, 1, h.has_recon ? recon : NULL);
        const int64_t rl = h.has_recon ? h.recon_len : 0;
        if (op == 0) {
            st = ep_hashed_decode(&h.p, B, R, rl, MAYBE_NULL(nulls, 2, dst));
        } else if (op == 1) {
            st = ep_hashed_matmul_stream(&h.p, B, R, rl, MAYBE_NULL(nulls, 3, X), N, MAYBE_NULL(nulls, 4, bias),
                                         MAYBE_NULL(nulls, 2, dst));
        } else {
            ep_hashed_plan *plan = NULL;
            st = ep_hashed_plan_create(&h.p, B, R, rl, MAYBE_NULL(nulls, 5, &plan));
            if (!st) {
                const int mm_ok = N >= 1 && in == h.p.cols && out == h.p.rows && !(nulls & 8) && !(nulls & 4);
                float *Y = outbuf(cnt(N, out, 1)), *Xb = buf(f, cnt(N, in, 1), raw);
                ep_status ms = ep_hashed_matmul_expand(plan, MAYBE_NULL(nulls, 3, Xb), N, in,
                                                       MAYBE_NULL(nulls, 4, bias), MAYBE_NULL(nulls, 2, Y), out);
                FZ_ASSERT((ms == EP_OK) == mm_ok, "ep_hashed_matmul_expand: status %d for N=%lld in=%lld out=%lld",
                          (int)ms, (long long)N, (long long)in, (long long)out);
                if (small) FZ_ASSERT(ep_hashed_plan_unpack(plan, dst) == EP_OK, "ep_hashed_plan_unpack failed");
                free(Y);
                free(Xb);
            }
            ep_hashed_plan_destroy(plan);
        }
        if (v == 0) ref_st = st;
        check_status(op == 0 ? "ep_hashed_decode" : op == 1 ? "ep_hashed_matmul_stream" : "ep_hashed_plan_create",
                     cls, st, ref_st, g_variants[v]);
        if (!small || raw) continue;
        if (v == 0) {
            if (op == 1) { /* tolerance per output: the L1 size of its dot product */
                for (int64_t n = 0; n < N; n++)
                    for (int64_t r = 0; r < h.p.rows; r++) {
                        float s = 0;
                        for (int64_t c = 0; c < h.p.cols; c++) s += fabsf(X[n * h.p.cols + c]);
                        tol[n * h.p.rows + r] = 2e-6f * (1 + s) * (1 + dtol * 1e6f) + 1e-6f;
                    }
            } else {
                for (int64_t t = 0; t < vcount; t++) tol[t] = dtol;
            }
            if (!with_mlp && op != 1) { /* V[i, j] = sign * buckets[index] exactly (K = 1 without recon) */
                ep_hash_params p1 = h.p;
                p1.num_hashes = 1;
                int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)vcount);
                int8_t *sg = (int8_t *)malloc((size_t)vcount);
                FZ_ASSERT(ep_hash_indices(&p1, idx, sg) == EP_OK, "ep_hash_indices refused valid params");
                for (int64_t t = 0; t < vcount; t++)
                    FZ_ASSERT(want[t] == (float)sg[t] * buckets[idx[t]], "decode differs from ep_hash_indices at %lld",
                              (long long)t);
                free(idx);
                free(sg);
            }
        } else {
            check_close("hashed", g_variants[v], want, got, (size_t)vcount, tol);
        }
    }
    ep_set_variant("ref");
    free(buckets), free(recon), free(X), free(bias), free(want), free(got), free(tol);
}

/* ---- dense ------------------------------------------------------------------------------- */
static void run_dense(fz *f) {
    const int64_t N = fz_size(f, 8), rows = fz_size(f, 40), cols = fz_size(f, 40);
    const int raw = fz_u8(f) & 1;
    const uint8_t nulls = fz_u8(f) & 15; /* X, W, bias, Y */
    int cls = (N < 1 || rows < 1 || cols < 1 || (nulls & 1) || (nulls & 2) || (nulls & 8)) ? BAD : SMALL;
    cls = worst(cls, worst(count_class(rows, cols, 1), worst(count_class(N, cols, 1), count_class(N, rows, 1))));
    if (cls == HUGE) return;
    const int small = cls == SMALL;
    float *X = buf(f, cnt(N, cols, 1), raw), *W = buf(f, cnt(rows, cols, 1), raw), *bias = buf(f, cnt(rows, 1, 1), raw);
    const size_t ny = small ? (size_t)(N * rows) : 1;
    float *want = outbuf(cnt(N, rows, 1)), *got = outbuf(cnt(N, rows, 1)), *zero = outbuf(cnt(N, rows, 1));
    if (small && !raw) /* exact: products of multiples of 1/128 are multiples of 2^-14, sums stay exact */
        for (int64_t n = 0; n < N; n++)
            for (int64_t r = 0; r < rows; r++) {
                double acc = (nulls & 4) ? 0.0 : bias[r];
                for (int64_t c = 0; c < cols; c++) acc += (double)X[n * cols + c] * W[r * cols + c];
                want[n * rows + r] = (float)acc;
            }
    ep_status ref_st = EP_OK;
    for (int v = 0; v < g_nvar; v++) {
        ep_set_variant(g_variants[v]);
        ep_status st = ep_dense_matmul(MAYBE_NULL(nulls, 0, X), N, cols, MAYBE_NULL(nulls, 1, W), rows,
                                       MAYBE_NULL(nulls, 2, bias), MAYBE_NULL(nulls, 3, got));
        if (v == 0) ref_st = st;
        check_status("ep_dense_matmul", cls, st, ref_st, g_variants[v]);
        if (small && !raw) check_close("ep_dense_matmul vs double", g_variants[v], want, got, ny, zero);
    }
    ep_set_variant("ref");
    free(X), free(W), free(bias), free(want), free(got), free(zero);
}

/* ---- rfft -------------------------------------------------------------------------------- */
static void run_rfft(fz *f) {
    const int64_t n = fz_pow2(f);
    const uint8_t m = fz_u8(f);
    const int raw = m & 1;
    const int64_t n_call = m & 2 ? n : n ^ 8; /* a size that does not match the plan */
    const uint8_t nulls = fz_u8(f) & 7;     /* plan-out, x, X */
    int cls = (n < 4 || !is_pow2(n)) ? BAD : n > 4096 ? HUGE : SMALL;
    if (nulls & 1) cls = BAD;
    if (cls == HUGE) return;
    ep_rfft_plan *plan = NULL;
    ep_status st = ep_rfft_plan_create(n, MAYBE_NULL(nulls, 0, &plan));
    check_status("ep_rfft_plan_create", cls, st, st, "core");
    if (st) return;
    const int call_ok = n_call == n && !(nulls & 6);
    float *x = buf(f, n, raw), *X = (float *)malloc(sizeof(float) * (size_t)(n + 2));
    float *want = (float *)malloc(sizeof(float) * (size_t)(n + 2)), *back = (float *)malloc(sizeof(float) * (size_t)n);
    float *tol = (float *)malloc(sizeof(float) * (size_t)(n + 2));
    float l1 = 0;
    for (int64_t k = 0; k < n; k++) l1 += fabsf(x[k]);
    for (int64_t k = 0; k < n + 2; k++) tol[k] = 1e-6f * (1 + l1) * (float)(1 + log2((double)n));
    for (int v = 0; v < g_nvar; v++) {
        ep_set_variant(g_variants[v]);
        float *dst = v == 0 ? want : X;
        st = ep_rfft(plan, n_call, MAYBE_NULL(nulls, 1, x), MAYBE_NULL(nulls, 2, dst));
        FZ_ASSERT((st == EP_OK) == call_ok, "ep_rfft: status %d, expected %s", (int)st, call_ok ? "ok" : "an error");
        if (st) continue;
        if (v > 0 && !raw) check_close("ep_rfft", g_variants[v], want, X, (size_t)(n + 2), tol);
        st = ep_irfft(plan, n, dst, back);
        FZ_ASSERT(st == EP_OK, "ep_irfft refused a valid call: %s", ep_last_error());
        if (!raw) check_close("irfft(rfft(x))", g_variants[v], x, back, (size_t)n, tol);
    }
    ep_set_variant("ref");
    ep_rfft_plan_destroy(plan);
    free(x), free(X), free(want), free(back), free(tol);
}

/* ---- circulant and LDR ------------------------------------------------------------------- */
/* Y = X W^T with W given densely (rows x wc, the first `in` columns used): ref for both ops. */
static void dense_ref(const float *X, int64_t N, int64_t in, const float *W, int64_t out, int64_t wc,
                      const float *bias, float *Y, float *tol, double eps) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < out; o++) {
            double acc = bias ? bias[o] : 0, l1 = 1;
            for (int64_t j = 0; j < in; j++) {
                acc += (double)X[n * in + j] * W[o * wc + j];
                l1 += fabs((double)X[n * in + j]) * fabs((double)W[o * wc + j]);
            }
            Y[n * out + o] = (float)acc;
            tol[n * out + o] = (float)(eps * l1);
        }
}

/* Circulant (ldr = 0) or LDR plan + matmul under every variant, against the dense matrix. */
static void run_structured(fz *f, int ldr) {
    int64_t p = 0, q = 0, r = 0;
    if (ldr) r = fz_size(f, 4);
    else p = fz_size(f, 4), q = fz_size(f, 4);
    const int64_t b = fz_pow2(f); /* block size b, or LDR's n */
    const int64_t in = fz_size(f, 80), out = fz_size(f, 80), N = fz_size(f, 4);
    const uint8_t m = fz_u8(f);
    const int raw = m & 1;
    const int64_t in_call = m & 2 ? in : in ^ 1, out_call = m & 4 ? out : out ^ 2;
    const uint8_t nulls = fz_u8(f) & 0x3F; /* weights A, weights B (LDR), plan-out, X, bias, Y */
    int cls = (b < 4 || !is_pow2(b)) ? BAD : b > 4096 ? HUGE : SMALL;
    if (ldr) {
        if (r < 1 || in < 1 || out < 1 || in > b || out > b || (nulls & 3)) cls = BAD;
        cls = worst(cls, count_class(r, b, 1));
    } else {
        if (p < 1 || q < 1 || in < 1 || out < 1 || (nulls & 1)) cls = BAD;
        cls = worst(cls, count_class(p, q, b));
        if (cls != BAD && (in > q * b || out > p * b)) cls = BAD;
    }
    if (nulls & 4) cls = BAD;
    if (cls == HUGE) return;
    if (cls == SMALL && N >= 1 && count_class(N, in > out ? in : out, 2) != SMALL) return; /* a huge batch */
    const int small = cls == SMALL;
    float *A = buf(f, ldr ? cnt(r, b, 1) : cnt(p, q, b), raw), *Bw = buf(f, ldr ? cnt(r, b, 1) : 0, raw);
    const int mm_ok = N >= 1 && in_call == in && out_call == out && !(nulls & 0x28);
    const int64_t nyc = cnt(N, out_call, 1);
    const size_t ny = nyc > 0 ? (size_t)nyc : 1;
    float *X = buf(f, cnt(N, in_call, 1), raw), *bias = buf(f, cnt(out_call, 1, 1), raw);
    float *want = outbuf(nyc), *got = outbuf(nyc), *naive = outbuf(nyc), *tol = outbuf(nyc);
    const float *bias_arg = MAYBE_NULL(nulls, 4, bias);
    const int check_naive = small && mm_ok && !raw && b * b * (ldr ? r * b : p * q) <= (1 << 18);
    if (check_naive) { /* the dense matrix, from the definitions in kernels.h */
        const int64_t rows = ldr ? b : p * b, wc = ldr ? b : q * b;
        float *W = (float *)calloc((size_t)(rows * wc), sizeof(float));
        if (ldr) {
            for (int64_t k = 0; k < r; k++)
                for (int64_t a = 0; a < b; a++)
                    for (int64_t c = 0; c < b; c++) {
                        double acc = 0;
                        for (int64_t t = 0; t < b; t++) { /* Z1(g)[a, t] * Z-1(h)[t, c] */
                            const double z1 = a >= t ? A[k * b + a - t] : A[k * b + b + a - t];
                            const double z2 = t >= c ? Bw[k * b + t - c] : -Bw[k * b + b + t - c];
                            acc += z1 * z2;
                        }
                        W[a * wc + c] += (float)acc;
                    }
        } else {
            for (int64_t i = 0; i < p; i++)
                for (int64_t j = 0; j < q; j++)
                    for (int64_t u = 0; u < b; u++)
                        for (int64_t s = 0; s < b; s++)
                            W[(i * b + u) * wc + j * b + s] = A[(i * q + j) * b + ((u - s) % b + b) % b];
        }
        dense_ref(X, N, in, W, out, wc, bias_arg, naive, tol, 4e-6 * (1 + log2((double)b)) * (ldr ? (double)b : 1));
        free(W);
    }
    ep_status ref_st = EP_OK;
    for (int v = 0; v < g_nvar; v++) {
        ep_set_variant(g_variants[v]);
        float *dst = v == 0 ? want : got;
        ep_status st, ms = EP_OK;
        if (ldr) {
            ep_ldr_plan *plan = NULL;
            st = ep_ldr_plan_create(r, b, MAYBE_NULL(nulls, 0, A), MAYBE_NULL(nulls, 1, Bw), in, out,
                                    MAYBE_NULL(nulls, 2, &plan));
            if (!st) ms = ep_ldr_matmul(plan, MAYBE_NULL(nulls, 3, X), N, in_call, bias_arg, MAYBE_NULL(nulls, 5, dst),
                                        out_call);
            ep_ldr_plan_destroy(plan);
        } else {
            ep_circulant_plan *plan = NULL;
            st = ep_circulant_plan_create(p, q, b, MAYBE_NULL(nulls, 0, A), in, out, MAYBE_NULL(nulls, 2, &plan));
            if (!st) ms = ep_circulant_matmul(plan, MAYBE_NULL(nulls, 3, X), N, in_call, bias_arg,
                                              MAYBE_NULL(nulls, 5, dst), out_call);
            ep_circulant_plan_destroy(plan);
        }
        const char *what = ldr ? "ep_ldr_plan_create" : "ep_circulant_plan_create";
        if (v == 0) ref_st = st;
        check_status(what, cls, st, ref_st, g_variants[v]);
        if (st) continue;
        FZ_ASSERT((ms == EP_OK) == mm_ok, "%s matmul: status %d, expected %s", what, (int)ms, mm_ok ? "ok" : "an error");
        if (ms || raw) continue;
        if (check_naive) check_close(ldr ? "LDR vs dense" : "circulant vs dense", g_variants[v], naive, dst, ny, tol);
        else if (v > 0) {
            for (size_t t = 0; t < ny; t++) tol[t] = 1e-3f * (float)(ldr ? r * b : q * b);
            check_close(ldr ? "ep_ldr_matmul" : "ep_circulant_matmul", g_variants[v], want, got, ny, tol);
        }
    }
    ep_set_variant("ref");
    free(A), free(Bw), free(X), free(bias), free(want), free(got), free(naive), free(tol);
}

/* ---- misc: variants, XXH32, statuses ----------------------------------------------------- */
static void run_misc(fz *f, const uint8_t *rest, size_t n) {
    const uint32_t seed = fz_u32(f);
    const uint32_t h = ep_xxh32(rest, n, seed);
    FZ_ASSERT(h == ep_xxh32(rest, n, seed), "ep_xxh32 is not deterministic");
    if (n == 8) {
        uint32_t a, b;
        memcpy(&a, rest, 4), memcpy(&b, rest + 4, 4);
        FZ_ASSERT(ep_xxh32_key(a, b, seed) == h, "ep_xxh32_key(a, b) != ep_xxh32(u32le(a) || u32le(b))");
    }
    char name[16];
    const size_t len = n < sizeof name - 1 ? n : sizeof name - 1;
    memcpy(name, rest, len);
    name[len] = 0;
    const ep_status st = ep_set_variant(name);
    int known = !strcmp(name, "auto");
    for (int v = 0; v < g_nvar; v++) known |= !strcmp(name, g_variants[v]);
    FZ_ASSERT((st == EP_OK) == known, "ep_set_variant('%s') returned %d", name, (int)st);
    FZ_ASSERT(ep_set_variant(NULL) == EP_ERR_NULL, "ep_set_variant(NULL)");
    FZ_ASSERT(ep_variant_name(-1) == NULL && ep_variant_name(g_nvar) == NULL, "ep_variant_name out of range");
    FZ_ASSERT(ep_status_str((ep_status)(seed % 9)) != NULL && ep_last_error() != NULL, "status strings");
    ep_set_variant("ref");
}

#ifdef EP_DEFAULT_MAX_VIRTUAL_WEIGHTS
/* ---- decode limits: the parser and the checks against their documented contract ---------- */
static void run_limits(fz *f) {
    ep_limits lim;
    uint64_t raw = fz_u64(f);
    lim.max_virtual_weights = (int64_t)(raw >> (fz_u8(f) % 64));
    raw = fz_u64(f);
    lim.max_decoded_bytes = (int64_t)(raw >> (fz_u8(f) % 64));
    const int64_t v = (int64_t)fz_u64(f), used = (int64_t)fz_u64(f), bytes = (int64_t)fz_u64(f);
    ep_status st = ep_limits_check_weights(&lim, v, "shape [fuzz %s %n]");
    FZ_ASSERT((st == EP_OK) == (v >= 0 && v <= lim.max_virtual_weights), "ep_limits_check_weights(%lld) = %d",
              (long long)v, (int)st);
    const __int128 sum = (__int128)used + bytes;
    st = ep_limits_check_bytes(&lim, used, bytes, NULL);
    FZ_ASSERT((st == EP_OK) == (used >= 0 && bytes >= 0 && sum <= lim.max_decoded_bytes),
              "ep_limits_check_bytes(%lld, %lld) = %d", (long long)used, (long long)bytes, (int)st);
    FZ_ASSERT(ep_limits_check_bytes(NULL, 0, 0, "x") == EP_ERR_NULL, "NULL limits accepted");
    char text[64];
    size_t n;
    const uint8_t *p = fz_bytes(f, sizeof text - 1, &n);
    memcpy(text, p, n);
    text[n] = 0;
    int64_t got = -5;
    st = ep_parse_limit("EDGEPACK_MAX_DECODED_BYTES", text, &got);
    /* the contract: blanks, decimal digits, blanks; a value in [1, 2^63 - 1] */
    const char *q = text;
    while (*q == ' ' || *q == '\t') q++;
    unsigned __int128 want = 0;
    int digits = 0;
    for (; *q >= '0' && *q <= '9'; q++, digits++)
        if (want <= ((unsigned __int128)1 << 64)) want = want * 10 + (unsigned)(*q - '0');
    while (*q == ' ' || *q == '\t') q++;
    const int valid = digits && !*q && want >= 1 && want <= (unsigned __int128)INT64_MAX;
    FZ_ASSERT((st == EP_OK) == valid, "ep_parse_limit('%s') returned %d", text, (int)st);
    if (valid) FZ_ASSERT(got == (int64_t)want, "ep_parse_limit('%s') gave %lld", text, (long long)got);
    else FZ_ASSERT(got == -5, "ep_parse_limit('%s') wrote its output on failure", text);
}
#else
static void run_limits(fz *f) { (void)f; }
#endif

/* The first byte picks the entry point. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz f = {data, size};
    switch (fz_u8(&f) % 11) {
    case 0: run_hash_indices(&f); break;
    case 1: run_hashed(&f, 0); break;
    case 2: run_hashed(&f, 1); break;
    case 3: run_hashed(&f, 2); break;
    case 4: run_dense(&f); break;
    case 5: run_rfft(&f); break;
    case 6: run_structured(&f, 0); break;
    case 7: run_structured(&f, 1); break;
    case 9: run_limits(&f); break;
    default: {
        fz g = {data + 1 < data + size ? data + 1 : data, size ? size - 1 : 0};
        fz_u32(&g);
        run_misc(&f, g.p, g.n);
    }
    }
    return 0;
}
