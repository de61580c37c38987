/* Drives libedgepack_tflite_delegate's callbacks through a fake TfLiteContext built in memory:
 * delegate Prepare (claiming) -> kernel init/prepare/invoke/free, and the plain custom-op
 * registrations, for every op, a two-node partition, and malformed options / shapes (every
 * truncation and many byte mutations of the options must fail cleanly), allocation types, exact
 * buffer sizes and the decode limits (issue 9). Meant for ASan/UBSan.
 * Prints "N passed, M failed". */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack_tflite.h"
#include "fake_context.h"

static int g_pass, g_fail;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) g_pass++;                                                     \
        else {                                                                  \
            g_fail++;                                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__), printf(__VA_ARGS__), printf("\n"); \
        }                                                                       \
    } while (0)

/* ---- a tiny FlexBuffers map writer (8-byte widths, like a builder with force_min_bit_width 64) */
typedef struct entry { const char *key; char kind; int64_t v; const int64_t *vec; int nvec; } entry; /* kind i/f/v */
typedef struct fxb { uint8_t b[2048]; size_t n; } fxb;
static void put(fxb *f, uint64_t v, int w) { for (int i = 0; i < w; i++) f->b[f->n++] = (uint8_t)(v >> (8 * i)); }
static void align8(fxb *f) { while (f->n % 8) f->b[f->n++] = 0; }

static size_t flex_map(uint8_t *out, const entry *e, int n) { /* keys must be sorted */
    fxb f = {{0}, 0};
    size_t kpos[16], vpos[16];
    for (int i = 0; i < n; i++) {
        kpos[i] = f.n;
        memcpy(f.b + f.n, e[i].key, strlen(e[i].key) + 1);
        f.n += strlen(e[i].key) + 1;
    }
    for (int i = 0; i < n; i++)
        if (e[i].kind == 'v') {
            align8(&f);
            put(&f, (uint64_t)e[i].nvec, 8);
            vpos[i] = f.n;
            for (int k = 0; k < e[i].nvec; k++) put(&f, (uint64_t)e[i].vec[k], 8);
        }
    align8(&f);
    put(&f, (uint64_t)n, 8);
    size_t keys = f.n;
    for (int i = 0; i < n; i++) put(&f, f.n - kpos[i], 8);
    size_t hdr = f.n;
    put(&f, hdr - keys, 8);
    put(&f, 8, 8);
    put(&f, (uint64_t)n, 8);
    size_t data = f.n;
    for (int i = 0; i < n; i++) {
        uint64_t bits = (uint64_t)e[i].v;
        if (e[i].kind == 'f') { double d = (double)e[i].v; memcpy(&bits, &d, 8); }
        if (e[i].kind == 'v') bits = f.n - vpos[i];
        put(&f, bits, 8);
    }
    for (int i = 0; i < n; i++) f.b[f.n++] = (uint8_t)(((e[i].kind == 'i' ? 1 : e[i].kind == 'f' ? 3 : 11) << 2) | 3);
    size_t root = f.n;
    put(&f, root - data, 8);
    f.b[f.n++] = (9 << 2) | 3;
    f.b[f.n++] = 8;
    memcpy(out, f.b, f.n);
    return f.n;
}

/* ---- fake interpreter (fake_context.h) ------------------------------------------------------ */
static fake *fake_new(void) {
    fake *f = (fake *)malloc(sizeof *f);
    fake_init(f);
    return f;
}

static void fake_free(fake *f) {
    fake_release(f);
    free(f);
}

/* A float32 tensor; data (copied) makes it a constant (mmap'ed) weight. */
static int tensor(fake *f, int rank, const int *dims, const float *data) {
    TfLiteTensor *t = &f->t[f->nt];
    size_t count = 1;
    for (int d = 0; d < rank; d++) count *= (size_t)dims[d];
    t->type = kTfLiteFloat32;
    t->dims = fake_ints(rank, dims);
    t->bytes = count * sizeof(float);
    t->data = malloc(t->bytes ? t->bytes : 1);
    if (data) memcpy(t->data, data, t->bytes);
    t->allocation_type = data ? kTfLiteMmapRo : kTfLiteArenaRw;
    t->name = "t";
    f->ctx.tensors_size = (size_t)++f->nt;
    return f->nt - 1;
}

static void node(fake *f, const char *name, int nin, const int *in, int out, const uint8_t *opts, size_t len) {
    TfLiteNode *n = &f->nodes[f->nn];
    n->inputs = fake_ints(nin, in);
    n->outputs = fake_ints(1, &out);
    void *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, opts, len);
    n->custom_initial_data = copy;
    n->custom_initial_data_size = (int)len;
    f->regs[f->nn].builtin_code = name ? kTfLiteBuiltinCustom : 9;
    f->regs[f->nn].custom_name = name;
    f->nn++;
}

/* delegate options for the next run_delegate calls */
static char **g_keys, **g_vals;
static size_t g_nopts;

/* Claim with the delegate, then prepare + invoke the partition kernel. */
static TfLiteStatus run_delegate(fake *f, int out_tensor) {
    int order[8];
    for (int i = 0; i < f->nn; i++) order[i] = i;
    f->plan = fake_ints(f->nn, order);
    if (!f->part_out) f->part_out = fake_ints(1, &out_tensor);
    TfLiteDelegate *d = tflite_plugin_create_delegate(g_keys, g_vals, g_nopts, NULL);
    if (!d) return kTfLiteError;
    TfLiteStatus st = d->Prepare(&f->ctx, d);
    if (!st && f->replaced) {
        st = f->dreg.prepare(&f->ctx, &f->dnode);
        if (!st) st = f->dreg.prepare(&f->ctx, &f->dnode); /* TFLite may prepare again */
        if (!st) st = f->dreg.invoke(&f->ctx, &f->dnode);
        f->dreg.free(&f->ctx, f->dnode.user_data);
    }
    tflite_plugin_destroy_delegate(d);
    return st;
}

/* The same single node through the plain custom-op registration. */
static TfLiteStatus run_custom(fake *f) {
    const TfLiteRegistration *r = edgepack_tflite_registration(f->regs[0].custom_name);
    if (!r) return kTfLiteError;
    TfLiteNode *n = &f->nodes[0];
    n->user_data = r->init(&f->ctx, (const char *)n->custom_initial_data, (size_t)n->custom_initial_data_size);
    TfLiteStatus st = r->prepare(&f->ctx, n);
    if (!st) st = r->invoke(&f->ctx, n);
    r->free(&f->ctx, n->user_data);
    return st;
}

static float frand(unsigned *s) { *s = *s * 1664525u + 1013904223u; return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f; }
static void fill(float *v, size_t n, unsigned seed) { for (size_t i = 0; i < n; i++) v[i] = frand(&seed); }

static float max_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* Y[N, out] = Xpad W^T (+ bias): the dense reference, W is rows x wc (wc >= in). */
static void ref_linear(const float *X, int N, int in, const float *W, int out, int wc, const float *bias, float *Y) {
    for (int r = 0; r < N; r++)
        for (int o = 0; o < out; o++) {
            double acc = bias ? bias[o] : 0;
            for (int j = 0; j < in; j++) acc += (double)X[r * in + j] * W[o * wc + j];
            Y[r * out + o] = (float)acc;
        }
}

/* ---- cases ------------------------------------------------------------------------------------- */
static const entry HM_KEYS[] = {{"in_features", 'i', 11, 0, 0}, {"mode", 'i', 0, 0, 0}, {"num_hashes", 'i', 2, 0, 0},
                                {"out_features", 'i', 7, 0, 0}, {"seed", 'i', 4294967295LL, 0, 0}, {"signed", 'i', 1, 0, 0}};

static void hashed_case(int mode, int use_custom) {
    entry e[6];
    memcpy(e, HM_KEYS, sizeof e);
    e[1].v = mode;
    uint8_t opts[1024];
    size_t len = flex_map(opts, e, 6);
    float buckets[23], recon[3 * 4 + 1], bias[7], X[3 * 11], V[7 * 11], want[3 * 7];
    fill(buckets, 23, 1), fill(recon, 13, 2), fill(bias, 7, 3), fill(X, 33, 4);
    fake *f = fake_new();
    int dx[] = {3, 11}, db[] = {23}, dr[] = {13}, dbias[] = {7}, dy[] = {1};
    int in[] = {tensor(f, 2, dx, NULL), tensor(f, 1, db, buckets), tensor(f, 1, dr, recon), tensor(f, 1, dbias, bias)};
    memcpy(f->t[in[0]].data, X, sizeof X);
    int y = tensor(f, 1, dy, NULL);
    node(f, "ai.edgepack.HashedMatMul", 4, in, y, opts, len);
    TfLiteStatus st = use_custom ? run_custom(f) : run_delegate(f, y);
    ep_hash_params p = {7, 11, 23, 2, 4294967295u, 1};
    ep_hashed_decode(&p, buckets, recon, 13, V);
    ref_linear(X, 3, 11, V, 7, 11, bias, want);
    CHECK(st == kTfLiteOk, "hashed mode %d custom %d: %s", mode, use_custom, f->err);
    CHECK(!st && f->t[y].dims->size == 2 && f->t[y].dims->data[0] == 3 && f->t[y].dims->data[1] == 7 &&
          max_diff((float *)f->t[y].data, want, 21) < 1e-4f, "hashed mode %d custom %d: wrong output", mode, use_custom);
    fake_free(f);
}

static void hashed_weight_case(void) {
    int64_t shape[] = {5, 2, 3};
    entry e[] = {{"num_hashes", 'i', 1, 0, 0}, {"seed", 'i', 9, 0, 0}, {"shape", 'v', 0, shape, 3}};
    uint8_t opts[1024];
    size_t len = flex_map(opts, e, 3);
    float buckets[10], want[30];
    fill(buckets, 10, 5);
    fake *f = fake_new();
    int db[] = {10}, dy[] = {1};
    int in[] = {tensor(f, 1, db, buckets)}, y = tensor(f, 1, dy, NULL);
    node(f, "ai.edgepack.HashedWeight", 1, in, y, opts, len);
    TfLiteStatus st = run_delegate(f, y);
    ep_hash_params p = {5, 6, 10, 1, 9, 1};
    ep_hashed_decode(&p, buckets, NULL, 0, want);
    CHECK(!st && f->t[y].dims->size == 3 && max_diff((float *)f->t[y].data, want, 30) == 0.0f, "HashedWeight: %s", f->err);
    fake_free(f);
}

static void circulant_w(const float *blocks, int p, int q, int b, float *W) { /* (p*b) x (q*b) */
    for (int i = 0; i < p; i++)
        for (int j = 0; j < q; j++)
            for (int r = 0; r < b; r++)
                for (int s = 0; s < b; s++)
                    W[(i * b + r) * (q * b) + j * b + s] = blocks[(i * q + j) * b + ((r - s) % b + b) % b];
}

static void ldr_w(const float *G, const float *H, int r, int n, float *W) {
    memset(W, 0, sizeof(float) * (size_t)(n * n));
    for (int k = 0; k < r; k++)
        for (int a = 0; a < n; a++)
            for (int c = 0; c < n; c++) {
                double acc = 0;
                for (int m = 0; m < n; m++) {
                    float z1 = a >= m ? G[k * n + a - m] : G[k * n + n + a - m];
                    float z2 = m >= c ? H[k * n + m - c] : -H[k * n + n + m - c];
                    acc += (double)z1 * z2;
                }
                W[a * n + c] += (float)acc;
            }
}

static void circulant_ldr_cases(void) {
    entry e[] = {{"in_features", 'i', 13, 0, 0}, {"out_features", 'i', 10, 0, 0}};
    uint8_t opts[512];
    size_t len = flex_map(opts, e, 2);
    float blocks[2 * 2 * 8], X[2 * 13], W[16 * 16], want[2 * 10];
    fill(blocks, 32, 7), fill(X, 26, 8);
    fake *f = fake_new();
    int dx[] = {2, 13}, dbl[] = {2, 2, 8}, dy[] = {1};
    int in[] = {tensor(f, 2, dx, NULL), tensor(f, 3, dbl, blocks)}, y = tensor(f, 1, dy, NULL);
    memcpy(f->t[in[0]].data, X, sizeof X);
    node(f, "ai.edgepack.CirculantMatMul", 2, in, y, opts, len);
    TfLiteStatus st = run_delegate(f, y);
    circulant_w(blocks, 2, 2, 8, W);
    ref_linear(X, 2, 13, W, 10, 16, NULL, want);
    CHECK(!st && max_diff((float *)f->t[y].data, want, 20) < 1e-4f, "circulant: %s", f->err);
    fake_free(f);

    /* LDR, explicit absent bias (-1) */
    entry l[] = {{"in_features", 'i', 12, 0, 0}, {"out_features", 'i', 9, 0, 0}};
    len = flex_map(opts, l, 2);
    float G[2 * 16], H[2 * 16], X2[3 * 12], want2[3 * 9];
    fill(G, 32, 9), fill(H, 32, 10), fill(X2, 36, 11);
    f = fake_new();
    int dx2[] = {3, 12}, dg[] = {2, 16};
    int in2[] = {tensor(f, 2, dx2, NULL), tensor(f, 2, dg, G), tensor(f, 2, dg, H), -1};
    y = tensor(f, 1, dy, NULL);
    memcpy(f->t[in2[0]].data, X2, sizeof X2);
    node(f, "ai.edgepack.LDRMatMul", 4, in2, y, opts, len);
    st = run_delegate(f, y);
    ldr_w(G, H, 2, 16, W);
    ref_linear(X2, 3, 12, W, 9, 16, NULL, want2);
    CHECK(!st && max_diff((float *)f->t[y].data, want2, 27) < 1e-3f, "ldr: %s", f->err);
    fake_free(f);
}

/* HashedMatMul -> CirculantMatMul in one partition, plus an unclaimed builtin node. */
static void chain_case(void) {
    entry h[] = {{"in_features", 'i', 6, 0, 0}, {"num_hashes", 'i', 1, 0, 0}, {"out_features", 'i', 5, 0, 0},
                 {"seed", 'i', 0, 0, 0}};
    entry c[] = {{"in_features", 'i', 5, 0, 0}, {"out_features", 'i', 4, 0, 0}};
    uint8_t o1[512], o2[512];
    size_t l1 = flex_map(o1, h, 4), l2 = flex_map(o2, c, 2);
    float buckets[9], blocks[8], X[2 * 6], V[5 * 6], mid[2 * 5], W[8 * 8], want[2 * 4];
    fill(buckets, 9, 12), fill(blocks, 8, 13), fill(X, 12, 14);
    fake *f = fake_new();
    int dx[] = {2, 6}, db[] = {9}, dbl[] = {1, 1, 8}, d1[] = {1};
    int x = tensor(f, 2, dx, NULL), b = tensor(f, 1, db, buckets), bl = tensor(f, 3, dbl, blocks);
    int m = tensor(f, 1, d1, NULL), y = tensor(f, 1, d1, NULL), z = tensor(f, 1, d1, NULL);
    memcpy(f->t[x].data, X, sizeof X);
    int i1[] = {x, b}, i2[] = {m, bl}, i3[] = {y};
    node(f, "ai.edgepack.HashedMatMul", 2, i1, m, o1, l1);
    node(f, "ai.edgepack.CirculantMatMul", 2, i2, y, o2, l2);
    node(f, NULL, 1, i3, z, NULL, 0); /* a builtin: must not be claimed */
    TfLiteStatus st = run_delegate(f, y);
    CHECK(f->replaced == 2, "chain: claimed %d nodes, want 2", f->replaced);
    ep_hash_params p = {5, 6, 9, 1, 0, 1};
    ep_hashed_decode(&p, buckets, NULL, 0, V);
    ref_linear(X, 2, 6, V, 5, 6, NULL, mid);
    circulant_w(blocks, 1, 1, 8, W);
    ref_linear(mid, 2, 5, W, 4, 8, NULL, want);
    CHECK(!st && max_diff((float *)f->t[y].data, want, 8) < 1e-4f, "chain: %s", f->err);
    CHECK(f->t[m].dims->size == 1, "chain: the intermediate tensor must stay inside the partition");
    fake_free(f);
}

/* A HashedMatMul whose options / shapes are given; returns status, f->err kept in msg. */
static TfLiteStatus hm_with(const uint8_t *opts, size_t len, int x_last, int nin, int custom, char *msg, size_t cap) {
    float buckets[16], X[2 * 11];
    fill(buckets, 16, 1), fill(X, 22, 2);
    fake *f = fake_new();
    int dx[] = {2, x_last}, db[] = {16}, dy[] = {1};
    int in[] = {tensor(f, 2, dx, NULL), tensor(f, 1, db, buckets)}, y = tensor(f, 1, dy, NULL);
    node(f, "ai.edgepack.HashedMatMul", nin, in, y, opts, len);
    TfLiteStatus st = custom ? run_custom(f) : run_delegate(f, y);
    snprintf(msg, cap, "%s", f->err);
    fake_free(f);
    return st;
}

/* CirculantMatMul with the given options: sizes are bounded by the blocks, so mutated options
 * can never ask for a huge plan. */
static TfLiteStatus cm_with(const uint8_t *opts, size_t len, char *msg, size_t cap) {
    float blocks[32], X[2 * 13];
    fill(blocks, 32, 1), fill(X, 26, 2);
    fake *f = fake_new();
    int dx[] = {2, 13}, dbl[] = {2, 2, 8}, dy[] = {1};
    int in[] = {tensor(f, 2, dx, NULL), tensor(f, 3, dbl, blocks)}, y = tensor(f, 1, dy, NULL);
    memcpy(f->t[in[0]].data, X, sizeof X);
    node(f, "ai.edgepack.CirculantMatMul", 2, in, y, opts, len);
    TfLiteStatus st = run_delegate(f, y);
    snprintf(msg, cap, "%s", f->err);
    fake_free(f);
    return st;
}

static void error_cases(void) {
    entry e[6];
    memcpy(e, HM_KEYS, sizeof e);
    e[2].v = 1; /* K = 1: recon optional */
    uint8_t opts[1024], bad[1024];
    char msg[4096];
    size_t len = flex_map(opts, e, 6);
    CHECK(hm_with(opts, len, 11, 2, 0, msg, sizeof msg) == kTfLiteOk, "baseline: %s", msg);
    for (int custom = 0; custom < 2; custom++) {
        CHECK(hm_with(opts, len, 10, 2, custom, msg, sizeof msg) && strstr(msg, "in_features=11") &&
              strstr(msg, "HashedMatMul node"), "X shape: '%s'", msg);
        CHECK(hm_with(opts, len, 11, 1, custom, msg, sizeof msg) && strstr(msg, "has 1 inputs"), "count: '%s'", msg);
        entry m[5] = {e[0], e[1], e[2], e[3], e[5]}; /* no seed */
        size_t l = flex_map(bad, m, 5);
        CHECK(hm_with(bad, l, 11, 2, custom, msg, sizeof msg) && strstr(msg, "'seed'"), "missing: '%s'", msg);
        entry w[6];
        memcpy(w, e, sizeof w);
        w[0].kind = 'f';
        l = flex_map(bad, w, 6);
        CHECK(hm_with(bad, l, 11, 2, custom, msg, sizeof msg) &&
                  strstr(msg, "attribute 'in_features' must be an int, got float"),
              "wrong type: '%s'", msg);
    }
    /* every truncation fails cleanly; every single-byte mutation either works or fails cleanly */
    int trunc_ok = 1, crashes = 0;
    for (size_t cut = 0; cut < len; cut++) {
        memcpy(bad, opts + len - cut, cut); /* a suffix keeps the root bytes: the offsets go wild */
        if (hm_with(bad, cut, 11, 2, 0, msg, sizeof msg) == kTfLiteOk) trunc_ok = 0;
        if (hm_with(opts, cut, 11, 2, 0, msg, sizeof msg) == kTfLiteOk) trunc_ok = 0;
        if (!strstr(msg, "custom options")) trunc_ok = 0;
    }
    CHECK(trunc_ok, "a truncated options buffer was accepted or not reported as custom options");
    entry c[] = {{"in_features", 'i', 13, 0, 0}, {"out_features", 'i', 10, 0, 0}};
    len = flex_map(opts, c, 2);
    CHECK(cm_with(opts, len, msg, sizeof msg) == kTfLiteOk, "circulant baseline: %s", msg);
    for (size_t i = 0; i < len; i++)
        for (int v = 0; v < 256; v += 17) {
            memcpy(bad, opts, len);
            bad[i] = (uint8_t)v;
            if (cm_with(bad, len, msg, sizeof msg) && !strstr(msg, "edgepack")) crashes++;
        }
    CHECK(crashes == 0, "%d mutated options failed without an edgepack message", crashes);
}

static void misc_cases(void) {
    char *keys[] = {"bogus"}, *vals[] = {"1"};
    CHECK(tflite_plugin_create_delegate(keys, vals, 1, NULL) == NULL, "unknown delegate option accepted");
    CHECK(edgepack_tflite_registration("ai.edgepack.Nope") == NULL, "unknown registration");
    TfLiteDelegate *d = edgepack_tflite_delegate_create();
    CHECK(d && (d->flags & kTfLiteDelegateFlagsAllowDynamicTensors), "delegate flags");
    edgepack_tflite_delegate_delete(d);
    CHECK(edgepack_register_tflite_ops(NULL) == 1 && strstr(edgepack_tflite_registrar_error(), "NULL"), "registrar NULL");
}

/* ---- issue 9: allocation types, exact sizes, decode limits ---------------------------------------- */

/* A HashedWeight of `shape` reading `nb` constant buckets; the output tensor is made by `out`. */
typedef struct hw { fake *f; int y, b; } hw;
static hw hw_new(const int64_t *shape, int rank, int nb) {
    entry e[] = {{"num_hashes", 'i', 1, 0, 0}, {"seed", 'i', 3, 0, 0}, {"shape", 'v', 0, shape, rank}};
    uint8_t opts[1024];
    size_t len = flex_map(opts, e, 3);
    float buckets[64];
    fill(buckets, 64, 21);
    hw h;
    h.f = fake_new();
    int db[] = {nb}, dy[] = {1};
    h.b = tensor(h.f, 1, db, buckets);
    h.y = tensor(h.f, 1, dy, NULL);
    node(h.f, "ai.edgepack.HashedWeight", 1, &h.b, h.y, opts, len);
    return h;
}

static TfLiteStatus hw_run(hw *h, int custom) { return custom ? run_custom(h->f) : run_delegate(h->f, h->y); }

static char g_report[2048];
static void capture(const char *msg) { snprintf(g_report, sizeof g_report, "%s", msg); }

static void tensor_cases(void) {
    int64_t shape[] = {3, 4};
    for (int custom = 0; custom < 2; custom++) {
        /* a constant (read-only) output: refused at prepare, never written */
        hw h = hw_new(shape, 2, 8);
        int d34[] = {3, 4};
        free(h.f->t[h.y].dims);
        h.f->t[h.y].dims = fake_ints(2, d34);
        h.f->t[h.y].bytes = 48;
        h.f->t[h.y].data = realloc(h.f->t[h.y].data, 48);
        h.f->t[h.y].allocation_type = kTfLiteMmapRo;
        CHECK(hw_run(&h, custom) && strstr(h.f->err, "output (tensor 1) has allocation type kTfLiteMmapRo") &&
              strstr(h.f->err, "HashedWeight node"), "const output, custom %d: '%s'", custom, h.f->err);
        fake_free(h.f);
        h = hw_new(shape, 2, 8);
        h.f->t[h.y].allocation_type = kTfLitePersistentRo;
        CHECK(hw_run(&h, custom) && strstr(h.f->err, "kTfLitePersistentRo"), "persistent-ro output: '%s'", h.f->err);
        fake_free(h.f);
        h = hw_new(shape, 2, 8);
        h.f->t[h.y].allocation_type = kTfLiteDynamic;
        CHECK(!hw_run(&h, custom), "dynamic output must work: '%s'", h.f->err);
        fake_free(h.f);
        /* a constant input whose buffer is longer / shorter than its shape */
        for (int extra = -4; extra <= 4; extra += 8) {
            h = hw_new(shape, 2, 8);
            h.f->t[h.b].bytes = (size_t)(32 + extra);
            if (extra > 0) h.f->t[h.b].data = realloc(h.f->t[h.b].data, 36);
            char want[128];
            snprintf(want, sizeof want, "holds %d bytes; its shape [8] needs exactly 32", 32 + extra);
            CHECK(hw_run(&h, custom) && strstr(h.f->err, want), "const input %+d bytes: '%s'", extra, h.f->err);
            fake_free(h.f);
        }
        h = hw_new(shape, 2, 8);
        h.f->t[h.b].allocation_type = kTfLiteMemNone;
        CHECK(hw_run(&h, custom) && strstr(h.f->err, "allocation type kTfLiteMemNone"), "MemNone input: '%s'", h.f->err);
        fake_free(h.f);
    }
    /* an arena output whose buffer does not match its shape at invoke */
    hw h = hw_new(shape, 2, 8);
    int order[] = {0};
    h.f->plan = fake_ints(1, order);
    h.f->part_out = fake_ints(1, &h.y);
    TfLiteDelegate *d = tflite_plugin_create_delegate(NULL, NULL, 0, NULL);
    TfLiteStatus st = d->Prepare(&h.f->ctx, d);
    if (!st) st = h.f->dreg.prepare(&h.f->ctx, &h.f->dnode);
    CHECK(!st, "prepare: '%s'", h.f->err);
    h.f->t[h.y].bytes = 40;
    CHECK(h.f->dreg.invoke(&h.f->ctx, &h.f->dnode) && strstr(h.f->err, "holds 40 bytes") &&
          strstr(h.f->err, "exactly 48"), "short output: '%s'", h.f->err);
    h.f->dreg.free(&h.f->ctx, h.f->dnode.user_data);
    tflite_plugin_destroy_delegate(d);
    fake_free(h.f);
}

static void limit_cases(void) {
    int64_t bomb[] = {2, 2147483647};
    for (int custom = 0; custom < 2; custom++) {
        hw h = hw_new(bomb, 2, 8);
        CHECK(hw_run(&h, custom) && strstr(h.f->err, "shape [2, 2147483647] would decode 4294967294 virtual weights") &&
              strstr(h.f->err, "limit of 268435456") && strstr(h.f->err, "EDGEPACK_MAX_VIRTUAL_WEIGHTS"),
              "bomb, custom %d: '%s'", custom, h.f->err);
        fake_free(h.f);
    }
    int64_t s105[] = {7, 15};
    char *k1[] = {"max_virtual_weights"}, *v104[] = {"104"}, *v105[] = {" 105 "};
    g_keys = k1, g_vals = v104, g_nopts = 1;
    hw h = hw_new(s105, 2, 8);
    CHECK(hw_run(&h, 0) && strstr(h.f->err, "105 virtual weights, above the limit of 104"), "option 104: '%s'", h.f->err);
    fake_free(h.f);
    g_vals = v105;
    h = hw_new(s105, 2, 8);
    CHECK(!hw_run(&h, 0), "option 105: '%s'", h.f->err);
    fake_free(h.f);
    g_keys = g_vals = NULL, g_nopts = 0;

    /* the environment: custom ops read it at init, a malformed value fails prepare / create */
    setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "104", 1);
    h = hw_new(s105, 2, 8);
    CHECK(hw_run(&h, 1) && strstr(h.f->err, "limit of 104"), "env 104: '%s'", h.f->err);
    fake_free(h.f);
    CHECK(edgepack_tflite_set_limits(105, 0) == 0 && edgepack_tflite_set_limits(-1, 0) == 1, "set_limits");
    h = hw_new(s105, 2, 8);
    CHECK(!hw_run(&h, 1), "override 105: '%s'", h.f->err);
    fake_free(h.f);
    edgepack_tflite_set_limits(0, 0);
    const char *bad[] = {"", "0", "12x", "-1", "0x10", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", bad[i], 1);
        h = hw_new(s105, 2, 8);
        CHECK(hw_run(&h, 1) && strstr(h.f->err, "EDGEPACK_MAX_VIRTUAL_WEIGHTS"), "bad env '%s': '%s'", bad[i], h.f->err);
        fake_free(h.f);
        g_report[0] = 0;
        CHECK(!tflite_plugin_create_delegate(NULL, NULL, 0, capture) && strstr(g_report, "EDGEPACK_MAX_VIRTUAL_WEIGHTS"),
              "delegate, bad env '%s': '%s'", bad[i], g_report);
        TfLiteDelegate *d = edgepack_tflite_delegate_create();
        h = hw_new(s105, 2, 8);
        int order[] = {0};
        h.f->plan = fake_ints(1, order);
        CHECK(d && d->Prepare(&h.f->ctx, d) && strstr(h.f->err, "EDGEPACK_MAX_VIRTUAL_WEIGHTS"),
              "delegate_create, bad env '%s': '%s'", bad[i], h.f->err);
        edgepack_tflite_delegate_delete(d);
        fake_free(h.f);
    }
    unsetenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS");
    char *k2[] = {"max_decoded_bytes"}, *vbad[] = {"1e6"};
    g_report[0] = 0;
    CHECK(!tflite_plugin_create_delegate(k2, vbad, 1, capture) && strstr(g_report, "max_decoded_bytes='1e6'"),
          "bad option: '%s'", g_report);

    /* the decoded-bytes budget is shared by the nodes of one interpreter */
    int64_t s100[] = {10, 10};
    entry e[] = {{"num_hashes", 'i', 1, 0, 0}, {"seed", 'i', 3, 0, 0}, {"shape", 'v', 0, s100, 2}};
    uint8_t opts[1024];
    size_t len = flex_map(opts, e, 3);
    char *v799[] = {"799"}, *v800[] = {"800"};
    for (int budget = 799; budget <= 800; budget++) {
        float buckets[8];
        fill(buckets, 8, 4);
        fake *f = fake_new();
        int db[] = {8}, dy[] = {1};
        int b = tensor(f, 1, db, buckets), y0 = tensor(f, 1, dy, NULL), y1 = tensor(f, 1, dy, NULL);
        node(f, "ai.edgepack.HashedWeight", 1, &b, y0, opts, len);
        node(f, "ai.edgepack.HashedWeight", 1, &b, y1, opts, len);
        int outs[] = {y0, y1};
        f->part_out = fake_ints(2, outs);
        g_keys = k2, g_vals = budget == 799 ? v799 : v800, g_nopts = 1;
        TfLiteStatus st = run_delegate(f, y0);
        if (budget == 799)
            CHECK(st && strstr(f->err, "needs 400 bytes; with the 400 bytes already decoded") &&
                  strstr(f->err, "limit of 799"), "budget 799: '%s'", f->err);
        else
            CHECK(!st, "budget 800: '%s'", f->err);
        fake_free(f);
    }
    g_keys = g_vals = NULL, g_nopts = 0;
}

int main(void) {
    for (int mode = 0; mode < 2; mode++)
        for (int custom = 0; custom < 2; custom++) hashed_case(mode, custom);
    hashed_weight_case();
    circulant_ldr_cases();
    chain_case();
    error_cases();
    misc_cases();
    tensor_cases();
    limit_cases();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
