/* libedgepack_tflite_delegate: the ai.edgepack ops (docs/ops.md) in TensorFlow Lite.
 *
 * Two routes to the same node code:
 *  - an external delegate (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate) that
 *    claims every CUSTOM node named "ai.edgepack.*"; one delegate kernel per partition, whose
 *    tensors produced and consumed inside the partition live in buffers of the kernel;
 *  - plain custom-op registrations (edgepack_tflite_registration), which registrar.c adds to
 *    tflite-runtime 2.14's InterpreterWithCustomOps through its exported MutableOpResolver::AddCustom.
 * Options are the node's FlexBuffers map; they are parsed at init and any problem is reported
 * at prepare (init cannot fail portably in 2.14). Shapes are validated at prepare and again at
 * invoke before memory is touched; plans (decoded V, FFT spectra) are built once at prepare
 * when the weights are constant tensors, otherwise per invoke.
 *
 * Tensors: a constant input (kTfLiteMmapRo / kTfLitePersistentRo) must hold exactly its shape's
 * bytes; the output must be writable (arena, dynamic or custom), never a constant.
 * Limits (docs/ops.md "Limits"): the delegate's options or the environment give the virtual
 * weights allowed per node and the decoded bytes per interpreter (TfLiteContext); prepare checks
 * both, and each output's size, before anything is allocated.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack/ops.h"
#include "edgepack_tflite.h"
#include "flexmap.h"
#include "tflite_abi.h"

#define MAX_RANK EP_LIMIT_MAX_RANK
#define MAX_IN 4
#define PREFIX "ai.edgepack."

typedef enum op_kind {
    OP_HASHED_WEIGHT = EP_OP_HashedWeight,
    OP_HASHED_MATMUL = EP_OP_HashedMatMul,
    OP_CIRCULANT = EP_OP_CirculantMatMul,
    OP_LDR = EP_OP_LDRMatMul,
    OP_COUNT = EP_OP_COUNT
} op_kind;

typedef struct op_info {
    const char *name;
    int min_in, max_in; /* inputs that must be present: the first min_in */
    const char *inputs[MAX_IN];
    const char *keys; /* for messages */
} op_info;

static const op_info g_ops[OP_COUNT] = {
    {"HashedWeight", 1, 2, {"buckets", "recon"}, "shape, num_hashes, seed, signed"},
    {"HashedMatMul", 2, 4, {"X", "buckets", "recon", "bias"},
     "in_features, out_features, num_hashes, seed, signed, mode"},
    {"CirculantMatMul", 2, 3, {"X", "blocks", "bias"}, "in_features, out_features"},
    {"LDRMatMul", 3, 4, {"X", "G", "H", "bias"}, "in_features, out_features"},
};

typedef struct ep_node {
    op_kind kind;
    char label[200]; /* "HashedMatMul node #3 (output 'Y')", used in every message */
    char err[1100];  /* problem found at init, reported at prepare */
    int n_in, in[MAX_IN], out;
    int64_t in_f, out_f, mode;
    ep_hash_params hp;
    int64_t shape[MAX_RANK];
    size_t shape_rank;
    int planned; /* plans below built from constant weights */
    ep_limits lim;
    int64_t reserved;           /* decoded bytes counted against budget_ctx's budget */
    const TfLiteContext *budget_ctx;
    ep_hashed_plan *hplan;
    ep_circulant_plan *cplan;
    ep_ldr_plan *lplan;
    float *W;
} ep_node;

typedef struct itensor { /* a tensor produced and consumed inside one delegate partition */
    int idx;
    size_t rank;
    int64_t dims[MAX_RANK];
    float *data;
    size_t cap;
} itensor;

typedef struct part {
    int n_nodes;
    ep_node *nodes;
    TfLiteIntArray *outputs; /* partition outputs; NULL: every output is a context tensor */
    itensor *ints;
    int n_ints;
} part;

typedef struct tview {
    int present, is_const;
    size_t rank;
    int64_t dims[MAX_RANK];
    int64_t count;
    const float *data;
} tview;

static TfLiteStatus fail(TfLiteContext *ctx, const ep_node *n, const char *fmt, ...) {
    char msg[1536];
    int k = snprintf(msg, sizeof msg, "edgepack %s: ", n->label);
    if (k < 0 || k >= (int)sizeof msg) k = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    ctx->ReportError(ctx, "%s\n", msg);
    return kTfLiteError;
}

static TfLiteStatus kernel_fail(TfLiteContext *ctx, const ep_node *n, ep_status s) {
    return fail(ctx, n, "kernel error (%s): %s", ep_status_str(s), ep_last_error());
}

static int is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static void set_label(ep_node *n, TfLiteContext *ctx, int node_index) {
    const char *oname = NULL;
    if (ctx && n->out >= 0 && (size_t)n->out < ctx->tensors_size) oname = ctx->tensors[n->out].name;
    char idx[24] = "";
    if (node_index >= 0) snprintf(idx, sizeof idx, " #%d", node_index);
    snprintf(n->label, sizeof n->label, "%s node%s (output '%.80s')", g_ops[n->kind].name, idx,
             oname ? oname : "?");
}

static int kind_of(const char *custom_name, op_kind *kind) {
    if (!custom_name || strncmp(custom_name, PREFIX, sizeof PREFIX - 1)) return 0;
    for (int k = 0; k < OP_COUNT; k++)
        if (!strcmp(custom_name + sizeof PREFIX - 1, g_ops[k].name)) {
            *kind = (op_kind)k;
            return 1;
        }
    return 0;
}

/* ---- options ------------------------------------------------------------------------------ */

#define ERR(...) (snprintf(n->err, sizeof n->err, __VA_ARGS__), 0)

/* ep_attr_reader over the node's FlexBuffers options map (ops.h); ctx is the fx_map. */
static ep_attr_result fx_kind_of(const fx_map *m, const char *key, fx_result r, const char *as_expected,
                                 const char *when_too_large, char *kind, size_t cap) {
    const char *k = fx_map_kind(m, key);
    if (r == FX_MISSING || !k) return EP_ATTR_MISSING;
    if (r == FX_MALFORMED) k = "an out-of-bounds FlexBuffers value";
    else if (!strcmp(k, as_expected)) k = when_too_large; /* the right type whose value does not fit */
    snprintf(kind, cap, "%s", k);
    return EP_ATTR_WRONG_TYPE;
}

static ep_attr_result fx_get_int(void *ctx, const char *name, int64_t *out, char *kind, size_t cap) {
    char why[160];
    fx_result r = fx_map_int((const fx_map *)ctx, name, out, why, sizeof why);
    return r == FX_OK ? EP_ATTR_FOUND
                      : fx_kind_of((const fx_map *)ctx, name, r, "int", "an int above 2^63-1", kind, cap);
}

static ep_attr_result fx_get_ints(void *ctx, const char *name, int64_t *out, size_t max, size_t *n, char *kind,
                                  size_t cap) {
    char why[160];
    *n = 0;
    fx_result r = fx_map_ints((const fx_map *)ctx, name, out, max, n, why, sizeof why);
    if (r == FX_OK || (r == FX_WRONG_TYPE && *n > max)) return EP_ATTR_FOUND; /* the caller reports a count */
    return fx_kind_of((const fx_map *)ctx, name, r, "ints", "ints with a value above 2^63-1", kind, cap);
}

static ep_attr_result fx_get_float(void *ctx, const char *name, float *out, char *kind, size_t cap) {
    (void)out; /* no ai.edgepack op has a float attribute yet, and flexmap reads ints only */
    const char *k = fx_map_kind((const fx_map *)ctx, name);
    if (!k) return EP_ATTR_MISSING;
    snprintf(kind, cap, "%s", k);
    return EP_ATTR_WRONG_TYPE;
}

/* Parse the FlexBuffers options into n with the shared checks of src/ops.c; 0 with n->err set on failure. */
static int parse_options(ep_node *n, const void *buf, size_t len) {
    fx_map m;
    char why[200];
    if (fx_map_open(buf, len, &m, why, sizeof why))
        return ERR("%s (expected a FlexBuffers map with %s)", why, g_ops[n->kind].keys);
    const ep_attr_reader reader = {&m, fx_get_int, fx_get_ints, fx_get_float};
    ep_op_attrs at;
    if (ep_op_read_attrs((ep_op)n->kind, EP_RUNTIME_TFLITE, &reader, &at, n->err, sizeof n->err)) return 0;
    n->in_f = at.in_f;
    n->out_f = at.out_f;
    n->mode = at.mode;
    n->hp = at.hp;
    memcpy(n->shape, at.shape, sizeof n->shape);
    n->shape_rank = at.shape_rank;
    return 1;
}

/* Inputs/outputs of the node; an error goes to n->err unless one is there already. */
static int set_io(ep_node *n, const TfLiteIntArray *ins, const TfLiteIntArray *outs) {
    const op_info *op = &g_ops[n->kind];
    const int had_err = n->err[0] != 0;
    char keep[sizeof n->err];
    memcpy(keep, n->err, sizeof keep);
    n->out = outs && outs->size >= 1 ? outs->data[0] : -1;
    n->n_in = 0;
    for (int i = 0; i < MAX_IN; i++) n->in[i] = kTfLiteOptionalTensor;
    int ok = 1;
    if (!ins || !outs) ok = ERR("node has no input/output list");
    else if (outs->size != 1) ok = ERR("has %d outputs; must have exactly 1", outs->size);
    else if (ins->size < op->min_in || ins->size > op->max_in)
        ok = ERR("has %d inputs; must have %d..%d (%s%s%s%s%s%s%s)", ins->size, op->min_in, op->max_in,
                 op->inputs[0], op->inputs[1] ? ", " : "", op->inputs[1] ? op->inputs[1] : "",
                 op->inputs[2] ? ", " : "", op->inputs[2] ? op->inputs[2] : "", op->inputs[3] ? ", " : "",
                 op->inputs[3] ? op->inputs[3] : "");
    if (ok) {
        n->n_in = ins->size;
        for (int i = 0; i < ins->size; i++) n->in[i] = ins->data[i];
    }
    if (had_err) memcpy(n->err, keep, sizeof keep); /* the first problem found wins */
    return ok;
}

/* ---- decoded-bytes budgets: one per interpreter (TfLiteContext), shared by its nodes ---------- */

typedef struct budget {
    const TfLiteContext *ctx;
    int64_t used;
} budget;

static pthread_mutex_t g_budget_lock = PTHREAD_MUTEX_INITIALIZER;
static budget *g_budgets;
static int g_n_budgets, g_cap_budgets;

static budget *budget_of(const TfLiteContext *ctx, int create) { /* caller holds the lock */
    for (int i = 0; i < g_n_budgets; i++)
        if (g_budgets[i].ctx == ctx) return &g_budgets[i];
    if (!create) return NULL;
    if (g_n_budgets == g_cap_budgets) {
        const int cap = g_cap_budgets ? 2 * g_cap_budgets : 8;
        budget *grown = (budget *)realloc(g_budgets, sizeof(budget) * (size_t)cap);
        if (!grown) return NULL;
        g_budgets = grown, g_cap_budgets = cap;
    }
    budget *b = &g_budgets[g_n_budgets++];
    b->ctx = ctx, b->used = 0;
    return b;
}

static void budget_release_locked(ep_node *n) {
    budget *b = n->reserved ? budget_of(n->budget_ctx, 0) : NULL;
    if (b && (b->used -= n->reserved) <= 0) *b = g_budgets[--g_n_budgets]; /* drop empty entries */
    n->reserved = 0, n->budget_ctx = NULL;
}

static void budget_release(ep_node *n) {
    if (!n->reserved) return;
    pthread_mutex_lock(&g_budget_lock);
    budget_release_locked(n);
    pthread_mutex_unlock(&g_budget_lock);
}

/* Make n's reservation on ctx's budget exactly `bytes`: 0 when it fits, else 1 with
 * ep_last_error() set (what describes the buffer), -1 when out of memory. */
static int budget_reserve(ep_node *n, const TfLiteContext *ctx, int64_t bytes, const char *what) {
    if (n->reserved == bytes && n->budget_ctx == ctx) return 0;
    pthread_mutex_lock(&g_budget_lock);
    budget_release_locked(n);
    int rc = 0;
    budget *b = bytes ? budget_of(ctx, 1) : NULL;
    if (bytes && !b) rc = -1;
    else if (b && ep_limits_check_bytes(&n->lim, b->used, bytes, what)) rc = 1;
    else if (b) b->used += bytes, n->reserved = bytes, n->budget_ctx = ctx;
    if (b && !b->used) *b = g_budgets[--g_n_budgets];
    pthread_mutex_unlock(&g_budget_lock);
    return rc;
}

static void release_node(ep_node *n) {
    budget_release(n);
    ep_hashed_plan_destroy(n->hplan);
    ep_circulant_plan_destroy(n->cplan);
    ep_ldr_plan_destroy(n->lplan);
    free(n->W);
    n->hplan = NULL, n->cplan = NULL, n->lplan = NULL, n->W = NULL;
}

static void free_part(part *p) {
    if (!p) return;
    for (int i = 0; i < p->n_nodes; i++) release_node(&p->nodes[i]);
    for (int i = 0; i < p->n_ints; i++) free(p->ints[i].data);
    free(p->nodes);
    free(p->ints);
    free(p->outputs);
    free(p);
}

/* ---- tensors ------------------------------------------------------------------------------ */

static itensor *find_internal(const part *p, int idx) {
    for (int i = 0; i < p->n_ints; i++)
        if (p->ints[i].idx == idx) return &p->ints[i];
    return NULL;
}

static int is_part_output(const part *p, int idx) {
    if (!p->outputs) return 1;
    for (int i = 0; i < p->outputs->size; i++)
        if (p->outputs->data[i] == idx) return 1;
    return 0;
}

static void dims_str(const tview *t, char *buf, size_t cap);

static const char *alloc_name(int type) {
    static const char *names[] = {"kTfLiteMemNone", "kTfLiteMmapRo", "kTfLiteArenaRw", "kTfLiteArenaRwPersistent",
                                  "kTfLiteDynamic", "kTfLitePersistentRo", "kTfLiteCustom", "kTfLiteVariantObject"};
    return type >= 0 && type < (int)(sizeof names / sizeof names[0]) ? names[type] : "an unknown allocation type";
}

static int is_read_only(int type) { return type == kTfLiteMmapRo || type == kTfLitePersistentRo; }
/* buffers the runtime lets an op write: its arenas, dynamic and user (custom) allocations */
static int is_writable(int type) {
    return type == kTfLiteArenaRw || type == kTfLiteArenaRwPersistent || type == kTfLiteDynamic || type == kTfLiteCustom;
}

/* View of input slot i of n (absent: present = 0). need_data: the data must be there (invoke). */
static TfLiteStatus view_of(TfLiteContext *ctx, const part *p, const ep_node *n, int i, int need_data, tview *t) {
    const char *iname = g_ops[n->kind].inputs[i];
    memset(t, 0, sizeof *t);
    const int idx = i < n->n_in ? n->in[i] : kTfLiteOptionalTensor;
    if (idx == kTfLiteOptionalTensor) return kTfLiteOk;
    const itensor *it = find_internal(p, idx);
    if (it) {
        t->present = 1;
        t->rank = it->rank;
        memcpy(t->dims, it->dims, sizeof(int64_t) * it->rank);
        t->count = 1;
        for (size_t d = 0; d < it->rank; d++) t->count *= it->dims[d];
        t->data = it->data;
        return kTfLiteOk;
    }
    if (idx < 0 || (size_t)idx >= ctx->tensors_size)
        return fail(ctx, n, "input '%s' is tensor %d; the model has %zu tensors", iname, idx, ctx->tensors_size);
    const TfLiteTensor *ts = &ctx->tensors[idx];
    if (ts->type != kTfLiteFloat32)
        return fail(ctx, n, "input '%s' (tensor %d) has TfLiteType %d; must be float32 (1)", iname, idx, ts->type);
    if (!ts->dims || ts->dims->size < 0 || ts->dims->size > MAX_RANK)
        return fail(ctx, n, "input '%s' (tensor %d) has no shape or a rank above %d", iname, idx, MAX_RANK);
    t->present = 1;
    t->rank = (size_t)ts->dims->size;
    t->count = 1;
    for (size_t d = 0; d < t->rank; d++) {
        t->dims[d] = ts->dims->data[d];
        if (t->dims[d] < 0) return fail(ctx, n, "input '%s' has a negative dim %lld", iname, (long long)t->dims[d]);
        if (t->dims[d] && t->count > INT64_MAX / 4 / t->dims[d])
            return fail(ctx, n, "input '%s' has too many elements", iname);
        t->count *= t->dims[d];
    }
    const int at = ts->allocation_type;
    if (!is_read_only(at) && !is_writable(at))
        return fail(ctx, n, "input '%s' (tensor %d) has allocation type %s; an input must be a constant "
                    "(kTfLiteMmapRo, kTfLitePersistentRo) or an arena, dynamic or custom buffer", iname, idx,
                    alloc_name(at));
    t->is_const = is_read_only(at) && ts->data;
    t->data = (const float *)ts->data;
    if (need_data || t->is_const) {
        char s[256];
        dims_str(t, s, sizeof s);
        if (!ts->data && t->count) return fail(ctx, n, "input '%s' (tensor %d) has no data", iname, idx);
        if (ts->bytes != (size_t)t->count * sizeof(float))
            return fail(ctx, n, "input '%s' (tensor %d, %s) holds %zu bytes; its shape %s needs exactly %lld",
                        iname, idx, alloc_name(at), ts->bytes, s, (long long)t->count * 4);
    }
    return kTfLiteOk;
}

static void dims_str(const tview *t, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (size_t d = 0; d < t->rank && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)t->dims[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static TfLiteStatus check_buckets(TfLiteContext *ctx, const ep_node *n, const tview *t, int i) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->rank != 1 || t->count < 1 || t->count > INT32_MAX)
        return fail(ctx, n, "input '%s' has shape %s; must be 1-D with 1 <= B < 2^31 buckets",
                    g_ops[n->kind].inputs[i], s);
    return kTfLiteOk;
}

static TfLiteStatus check_recon(TfLiteContext *ctx, const ep_node *n, const tview *t, int i) {
    const int64_t K = n->hp.num_hashes, per = K + 2;
    const char *iname = g_ops[n->kind].inputs[i];
    if (!t->present && K == 1) return kTfLiteOk; /* optional for K = 1: applied when given */
    if (!t->present)
        return fail(ctx, n, "input '%s' is required when num_hashes=%lld: the MLP [W1 (H x K), b1 (H), W2 (H), b2] "
                    "of length H*(K+2)+1", iname, (long long)K);
    if (t->rank != 1 || t->count < per + 1 || (t->count - 1) % per != 0)
        return fail(ctx, n, "input '%s' has %lld values (rank %zu); with num_hashes=%lld it must be 1-D of length "
                    "H*%lld+1 for some H >= 1 (e.g. %lld, %lld, ...)", iname, (long long)t->count, t->rank,
                    (long long)K, (long long)per, (long long)(per + 1), (long long)(2 * per + 1));
    return kTfLiteOk;
}

static TfLiteStatus check_blocks(TfLiteContext *ctx, const ep_node *n, const tview *t) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->rank != 3 || t->dims[0] < 1 || t->dims[1] < 1 || !is_pow2(t->dims[2]) || t->dims[2] < 4)
        return fail(ctx, n, "input 'blocks' has shape %s; must be [p, q, b] with p, q >= 1 and b a power of two >= 4",
                    s);
    const int64_t p = t->dims[0], q = t->dims[1], b = t->dims[2];
    if (n->in_f > q * b || n->out_f > p * b)
        return fail(ctx, n, "input 'blocks' has shape %s; need in_features=%lld <= q*b=%lld and out_features=%lld <= "
                    "p*b=%lld", s, (long long)n->in_f, (long long)(q * b), (long long)n->out_f, (long long)(p * b));
    return kTfLiteOk;
}

static TfLiteStatus check_ldr(TfLiteContext *ctx, const ep_node *n, const tview *g, const tview *h) {
    char sg[256], sh[256];
    dims_str(g, sg, sizeof sg);
    dims_str(h, sh, sizeof sh);
    if (g->rank != 2 || h->rank != 2 || g->dims[0] != h->dims[0] || g->dims[1] != h->dims[1] || g->dims[0] < 1 ||
        !is_pow2(g->dims[1]) || g->dims[1] < 4)
        return fail(ctx, n, "inputs 'G' %s and 'H' %s must both be [r, n] with r >= 1 and n a power of two >= 4", sg,
                    sh);
    if (n->in_f > g->dims[1] || n->out_f > g->dims[1])
        return fail(ctx, n, "in_features=%lld and out_features=%lld must both be <= n=%lld (G, H are %s)",
                    (long long)n->in_f, (long long)n->out_f, (long long)g->dims[1], sg);
    return kTfLiteOk;
}

static TfLiteStatus check_weights(TfLiteContext *ctx, const ep_node *n, const tview *w) {
    switch (n->kind) {
    case OP_HASHED_WEIGHT:
        return check_buckets(ctx, n, &w[0], 0) || check_recon(ctx, n, &w[1], 1) ? kTfLiteError : kTfLiteOk;
    case OP_HASHED_MATMUL:
        return check_buckets(ctx, n, &w[1], 1) || check_recon(ctx, n, &w[2], 2) ? kTfLiteError : kTfLiteOk;
    case OP_CIRCULANT: return check_blocks(ctx, n, &w[1]);
    case OP_LDR: return check_ldr(ctx, n, &w[1], &w[2]);
    default: return kTfLiteError;
    }
}

static TfLiteStatus check_x_bias(TfLiteContext *ctx, const ep_node *n, const tview *in) {
    char s[256];
    const int ib = g_ops[n->kind].max_in - 1;
    dims_str(&in[0], s, sizeof s);
    if (in[0].rank < 1 || in[0].dims[in[0].rank - 1] != n->in_f)
        return fail(ctx, n, "input 'X' has shape %s; its last axis must equal in_features=%lld", s, (long long)n->in_f);
    dims_str(&in[ib], s, sizeof s);
    if (in[ib].present && (in[ib].rank != 1 || in[ib].count != n->out_f))
        return fail(ctx, n, "input 'bias' has shape %s; must be [out_features] = [%lld]", s, (long long)n->out_f);
    return kTfLiteOk;
}

/* Plans for the matmul ops from validated weights; the caller owns what it gets. */
static TfLiteStatus build_plan(TfLiteContext *ctx, const ep_node *n, const tview *w, ep_hashed_plan **hp,
                               ep_circulant_plan **cp, ep_ldr_plan **lp) {
    ep_status s = EP_OK;
    ep_hash_params prm = n->hp;
    switch (n->kind) {
    case OP_HASHED_MATMUL:
        prm.num_buckets = w[1].count;
        s = ep_hashed_plan_create(&prm, w[1].data, w[2].data, w[2].present ? w[2].count : 0, hp);
        break;
    case OP_CIRCULANT:
        s = ep_circulant_plan_create(w[1].dims[0], w[1].dims[1], w[1].dims[2], w[1].data, n->in_f, n->out_f, cp);
        break;
    case OP_LDR: s = ep_ldr_plan_create(w[1].dims[0], w[1].dims[1], w[1].data, w[2].data, n->in_f, n->out_f, lp); break;
    default: break;
    }
    return s ? kernel_fail(ctx, n, s) : kTfLiteOk;
}

/* All inputs of n, validated (shapes; data too when need_data). */
static TfLiteStatus gather(TfLiteContext *ctx, const part *p, const ep_node *n, int need_data, tview *in) {
    const op_info *op = &g_ops[n->kind];
    for (int i = 0; i < MAX_IN; i++) {
        if (view_of(ctx, p, n, i, need_data, &in[i])) return kTfLiteError;
        if (!in[i].present && i < op->min_in) return fail(ctx, n, "required input '%s' is missing", op->inputs[i]);
    }
    if (check_weights(ctx, n, in)) return kTfLiteError;
    if (n->kind != OP_HASHED_WEIGHT && check_x_bias(ctx, n, in)) return kTfLiteError;
    return kTfLiteOk;
}

static int weights_const(const ep_node *n, const tview *in) {
    switch (n->kind) {
    case OP_HASHED_WEIGHT: return in[0].is_const && (!in[1].present || in[1].is_const);
    case OP_HASHED_MATMUL: return in[1].is_const && (!in[2].present || in[2].is_const);
    case OP_CIRCULANT: return in[1].is_const;
    case OP_LDR: return in[1].is_const && in[2].is_const;
    default: return 0;
    }
}

/* Output dims of n from its validated inputs. */
static TfLiteStatus out_dims(TfLiteContext *ctx, const ep_node *n, const tview *in, int64_t *dims, size_t *rank) {
    if (n->kind == OP_HASHED_WEIGHT) {
        *rank = n->shape_rank;
        memcpy(dims, n->shape, sizeof(int64_t) * n->shape_rank);
        return kTfLiteOk;
    }
    *rank = in[0].rank;
    memcpy(dims, in[0].dims, sizeof(int64_t) * in[0].rank);
    dims[*rank - 1] = n->out_f;
    int64_t c = 1;
    for (size_t d = 0; d < *rank; d++) {
        if (dims[d] && c > INT32_MAX / dims[d]) return fail(ctx, n, "output 'Y' would have more than 2^31 elements");
        c *= dims[d];
    }
    return kTfLiteOk;
}

/* "shape [2, 3]" (HashedWeight) or "in_features=3 x out_features=2", for limit messages. */
static void size_desc(const ep_node *n, char *buf, size_t cap) {
    if (n->kind != OP_HASHED_WEIGHT) {
        snprintf(buf, cap, "in_features=%lld x out_features=%lld", (long long)n->in_f, (long long)n->out_f);
        return;
    }
    tview t;
    t.rank = n->shape_rank;
    memcpy(t.dims, n->shape, sizeof(int64_t) * n->shape_rank);
    int k = snprintf(buf, cap, "shape ");
    if (k > 0 && k < (int)cap) dims_str(&t, buf + k, cap - (size_t)k);
}

/* Bytes of n's decoded weights / plan (docs/ops.md "Limits"), from validated inputs. */
static int64_t node_bytes(const ep_node *n, const tview *in) {
    switch (n->kind) {
    case OP_HASHED_WEIGHT: return 4 * n->hp.rows * n->hp.cols;
    case OP_HASHED_MATMUL: return n->mode == 1 ? 0 : 4 * n->hp.rows * n->hp.cols;
    case OP_CIRCULANT: return 4 * in[1].dims[0] * in[1].dims[1] * (in[1].dims[2] + 2);
    case OP_LDR: return 4 * in[1].dims[0] * (4 * in[1].dims[1] + 2);
    default: return 0;
    }
}

/* The node's virtual weights, its decoded bytes (counted against the interpreter's budget) and
 * its output's bytes, all checked before anything is allocated. */
static TfLiteStatus check_limits(TfLiteContext *ctx, ep_node *n, const tview *in, const int64_t *dims, size_t rank) {
    char sd[200], what[512];
    size_desc(n, sd, sizeof sd);
    const uint64_t v = (uint64_t)n->hp.rows * (uint64_t)n->hp.cols; /* both < 2^32 */
    if (ep_limits_check_weights(&n->lim, v > (uint64_t)INT64_MAX ? -1 : (int64_t)v, sd))
        return fail(ctx, n, "%s", ep_last_error());
    const int64_t bytes = node_bytes(n, in);
    if (n->kind == OP_HASHED_WEIGHT) snprintf(what, sizeof what, "the decoded weight (%s)", sd);
    else if (n->kind == OP_HASHED_MATMUL) snprintf(what, sizeof what, "the expanded weight (mode 0, %s)", sd);
    else {
        char ws[256];
        dims_str(&in[1], ws, sizeof ws);
        snprintf(what, sizeof what, "the %s spectra (%s, input '%s' %s)", n->kind == OP_CIRCULANT ? "block" : "LDR",
                 sd, g_ops[n->kind].inputs[1], ws);
    }
    const int rc = budget_reserve(n, ctx, bytes, what);
    if (rc < 0) return fail(ctx, n, "out of memory");
    if (rc) return fail(ctx, n, "%s", ep_last_error());
    tview y;
    y.rank = rank;
    memcpy(y.dims, dims, sizeof(int64_t) * rank);
    int64_t count = 1;
    for (size_t d = 0; d < rank; d++) count *= dims[d]; /* < 2^31: out_dims checked it */
    int k = snprintf(what, sizeof what, "output 'Y' of shape ");
    dims_str(&y, what + k, sizeof what - (size_t)k);
    if (ep_limits_check_bytes(&n->lim, 0, 4 * count, what)) return fail(ctx, n, "%s", ep_last_error());
    return kTfLiteOk;
}

/* The node's output when it is an interpreter tensor: float32 and writable (never a constant). */
static TfLiteStatus check_output(TfLiteContext *ctx, const ep_node *n) {
    if (n->out < 0 || (size_t)n->out >= ctx->tensors_size)
        return fail(ctx, n, "output is tensor %d; the model has %zu tensors", n->out, ctx->tensors_size);
    const TfLiteTensor *ot = &ctx->tensors[n->out];
    if (ot->type != kTfLiteFloat32)
        return fail(ctx, n, "output (tensor %d) has TfLiteType %d; must be float32 (1)", n->out, ot->type);
    if (!is_writable(ot->allocation_type))
        return fail(ctx, n, "output (tensor %d) has allocation type %s; an op output must be a writable arena, "
                    "dynamic or custom buffer, not a constant%s", n->out, alloc_name(ot->allocation_type),
                    is_read_only(ot->allocation_type) ? " (the model gives this tensor a data buffer)" : "");
    return kTfLiteOk;
}

static TfLiteStatus prepare_node(TfLiteContext *ctx, part *p, ep_node *n) {
    if (n->err[0]) {
        ctx->ReportError(ctx, "edgepack %s: %s\n", n->label, n->err);
        return kTfLiteError;
    }
    tview in[MAX_IN];
    if (gather(ctx, p, n, 0, in)) return kTfLiteError;
    int64_t dims[MAX_RANK];
    size_t rank = 0;
    if (out_dims(ctx, n, in, dims, &rank) || check_limits(ctx, n, in, dims, rank)) return kTfLiteError;
    if (is_part_output(p, n->out) && check_output(ctx, n)) return kTfLiteError;
    if (!n->planned && weights_const(n, in)) {
        if (n->kind == OP_HASHED_WEIGHT) {
            ep_hash_params prm = n->hp;
            prm.num_buckets = in[0].count;
            n->W = (float *)malloc(sizeof(float) * (size_t)(prm.rows * prm.cols));
            if (!n->W) return fail(ctx, n, "cannot allocate the %lld x %lld weight", (long long)prm.rows,
                                   (long long)prm.cols);
            ep_status s = ep_hashed_decode(&prm, in[0].data, in[1].data, in[1].present ? in[1].count : 0, n->W);
            if (s) return kernel_fail(ctx, n, s);
        } else if (!(n->kind == OP_HASHED_MATMUL && n->mode == 1) &&
                   build_plan(ctx, n, in, &n->hplan, &n->cplan, &n->lplan)) {
            return kTfLiteError;
        }
        n->planned = 1;
    }
    size_t count = 1;
    for (size_t d = 0; d < rank; d++) count *= (size_t)dims[d];
    if (!is_part_output(p, n->out)) { /* lives inside the partition */
        itensor *it = find_internal(p, n->out);
        if (!it) {
            itensor *grown = (itensor *)realloc(p->ints, sizeof(itensor) * (size_t)(p->n_ints + 1));
            if (!grown) return fail(ctx, n, "out of memory");
            p->ints = grown;
            it = &p->ints[p->n_ints++];
            memset(it, 0, sizeof *it);
            it->idx = n->out;
        }
        if (count > it->cap) {
            float *d = (float *)realloc(it->data, sizeof(float) * count);
            if (!d) return fail(ctx, n, "cannot allocate %zu floats for an intermediate tensor", count);
            it->data = d, it->cap = count;
        }
        it->rank = rank;
        memcpy(it->dims, dims, sizeof(int64_t) * rank);
        return kTfLiteOk;
    }
    TfLiteTensor *ot = &ctx->tensors[n->out];
    TfLiteIntArray *sz = (TfLiteIntArray *)malloc(sizeof(int) * (rank + 1)); /* ResizeTensor owns it */
    if (!sz) return fail(ctx, n, "out of memory");
    sz->size = (int)rank;
    for (size_t d = 0; d < rank; d++) sz->data[d] = (int)dims[d];
    return ctx->ResizeTensor(ctx, ot, sz);
}

static TfLiteStatus invoke_node(TfLiteContext *ctx, part *p, const ep_node *n) {
    tview in[MAX_IN];
    if (n->err[0]) return fail(ctx, n, "%s", n->err);
    if (gather(ctx, p, n, 1, in)) return kTfLiteError;
    int64_t dims[MAX_RANK];
    size_t rank = 0;
    if (out_dims(ctx, n, in, dims, &rank)) return kTfLiteError;
    size_t count = 1;
    for (size_t d = 0; d < rank; d++) count *= (size_t)dims[d];
    float *Y = NULL;
    itensor *it = find_internal(p, n->out);
    if (it) {
        if (it->cap < count) return fail(ctx, n, "intermediate output was not prepared for this shape");
        Y = it->data;
        it->rank = rank;
        memcpy(it->dims, dims, sizeof(int64_t) * rank);
    } else {
        if (check_output(ctx, n)) return kTfLiteError;
        const TfLiteTensor *ot = &ctx->tensors[n->out];
        if ((count && !ot->data) || ot->bytes != count * sizeof(float))
            return fail(ctx, n, "output (tensor %d) holds %zu bytes%s; it must be an allocated buffer of exactly %zu "
                        "(%zu float32 values)", n->out, ot->bytes, ot->data ? "" : " and no data", count * 4, count);
        Y = (float *)ot->data;
    }
    if (!count) return kTfLiteOk;
    ep_status s = EP_OK;
    if (n->kind == OP_HASHED_WEIGHT) {
        if (n->W) {
            memcpy(Y, n->W, sizeof(float) * count);
            return kTfLiteOk;
        }
        ep_hash_params prm = n->hp;
        prm.num_buckets = in[0].count;
        s = ep_hashed_decode(&prm, in[0].data, in[1].data, in[1].present ? in[1].count : 0, Y);
        return s ? kernel_fail(ctx, n, s) : kTfLiteOk;
    }
    const int ib = g_ops[n->kind].max_in - 1;
    const int64_t N = in[0].count / n->in_f;
    const float *X = in[0].data, *bias = in[ib].data;
    if (n->kind == OP_HASHED_MATMUL && n->mode == 1) {
        ep_hash_params prm = n->hp;
        prm.num_buckets = in[1].count;
        s = ep_hashed_matmul_stream(&prm, in[1].data, in[2].data, in[2].present ? in[2].count : 0, X, N, bias, Y);
        return s ? kernel_fail(ctx, n, s) : kTfLiteOk;
    }
    ep_hashed_plan *hp = n->hplan;
    ep_circulant_plan *cp = n->cplan;
    ep_ldr_plan *lp = n->lplan;
    const int own = !n->planned; /* weights computed at run time: a plan for this run only */
    if (own && build_plan(ctx, n, in, &hp, &cp, &lp)) return kTfLiteError;
    switch (n->kind) {
    case OP_HASHED_MATMUL: s = ep_hashed_matmul_expand(hp, X, N, n->in_f, bias, Y, n->out_f); break;
    case OP_CIRCULANT: s = ep_circulant_matmul(cp, X, N, n->in_f, bias, Y, n->out_f); break;
    case OP_LDR: s = ep_ldr_matmul(lp, X, N, n->in_f, bias, Y, n->out_f); break;
    default: break;
    }
    if (own) {
        ep_hashed_plan_destroy(hp);
        ep_circulant_plan_destroy(cp);
        ep_ldr_plan_destroy(lp);
    }
    return s ? kernel_fail(ctx, n, s) : kTfLiteOk;
}

/* ---- limits ------------------------------------------------------------------------------------ */

/* Room after the struct, zeroed: fields a newer runtime may append read as NULL / 0. */
#define EP_DELEGATE_MAGIC 0x65706467u
typedef struct ep_delegate {
    TfLiteDelegate base;
    void *reserved[16];
    uint32_t magic;
    ep_limits lim;  /* what this delegate's partitions may decode */
    char err[1100]; /* a malformed limit in the environment, reported at Prepare */
} ep_delegate;

/* Limits the plain custom ops use instead of the environment's (0: no override). */
static int64_t g_max_virtual_weights, g_max_decoded_bytes;

EP_TFLITE_EXPORT int edgepack_tflite_set_limits(int64_t max_virtual_weights, int64_t max_decoded_bytes) {
    if (max_virtual_weights < 0 || max_decoded_bytes < 0) return 1;
    pthread_mutex_lock(&g_budget_lock);
    g_max_virtual_weights = max_virtual_weights, g_max_decoded_bytes = max_decoded_bytes;
    pthread_mutex_unlock(&g_budget_lock);
    return 0;
}

/* n's limits: the delegate's, else the environment's with edgepack_tflite_set_limits' override. */
static void node_limits(ep_node *n, const TfLiteDelegate *delegate) {
    const ep_delegate *d = (const ep_delegate *)delegate;
    if (d && d->magic == EP_DELEGATE_MAGIC) {
        n->lim = d->lim;
        return;
    }
    if (ep_limits_from_env(&n->lim)) {
        n->lim.max_virtual_weights = n->lim.max_decoded_bytes = 0;
        if (!n->err[0]) snprintf(n->err, sizeof n->err, "%s", ep_last_error());
    }
    pthread_mutex_lock(&g_budget_lock);
    if (g_max_virtual_weights) n->lim.max_virtual_weights = g_max_virtual_weights;
    if (g_max_decoded_bytes) n->lim.max_decoded_bytes = g_max_decoded_bytes;
    pthread_mutex_unlock(&g_budget_lock);
}

/* ---- delegate kernel: one per partition ------------------------------------------------------ */

static void *dk_init(TfLiteContext *ctx, const char *buffer, size_t length) {
    (void)length;
    const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)(const void *)buffer;
    part *p = (part *)calloc(1, sizeof *p);
    if (!p || !params || !params->nodes_to_replace || !params->output_tensors) return p;
    const int nn = params->nodes_to_replace->size > 0 ? params->nodes_to_replace->size : 0;
    p->nodes = (ep_node *)calloc((size_t)(nn ? nn : 1), sizeof(ep_node));
    p->outputs = (TfLiteIntArray *)malloc(sizeof(int) * (size_t)(params->output_tensors->size + 1));
    if (!p->nodes || !p->outputs) {
        free_part(p);
        return NULL;
    }
    p->outputs->size = params->output_tensors->size;
    memcpy(p->outputs->data, params->output_tensors->data, sizeof(int) * (size_t)p->outputs->size);
    p->n_nodes = nn;
    for (int i = 0; i < nn; i++) {
        ep_node *n = &p->nodes[i];
        const int ni = params->nodes_to_replace->data[i];
        TfLiteNode *node = NULL;
        TfLiteRegistration *reg = NULL;
        n->out = -1;
        if (ctx->GetNodeAndRegistration(ctx, ni, &node, &reg) || !node || !reg) {
            snprintf(n->label, sizeof n->label, "node #%d", ni);
            snprintf(n->err, sizeof n->err, "cannot read the node from the interpreter");
            continue;
        }
        if (!kind_of(reg->custom_name, &n->kind)) { /* claimed by prefix, but not one of ours */
            snprintf(n->label, sizeof n->label, "node #%d", ni);
            snprintf(n->err, sizeof n->err, "unknown custom op '%.100s'; this library implements " PREFIX
                     "HashedWeight, " PREFIX "HashedMatMul, " PREFIX "CirculantMatMul and " PREFIX "LDRMatMul",
                     reg->custom_name ? reg->custom_name : "?");
            continue;
        }
        const size_t len = node->custom_initial_data_size > 0 ? (size_t)node->custom_initial_data_size : 0;
        node_limits(n, params->delegate);
        if (set_io(n, node->inputs, node->outputs)) parse_options(n, node->custom_initial_data, len);
        set_label(n, ctx, ni);
    }
    return p;
}

static void dk_free(TfLiteContext *ctx, void *buffer) {
    (void)ctx;
    free_part((part *)buffer);
}

static TfLiteStatus dk_prepare(TfLiteContext *ctx, TfLiteNode *node) {
    part *p = (part *)node->user_data;
    if (!p || !p->nodes) {
        ctx->ReportError(ctx, "edgepack delegate: kernel initialisation failed (out of memory or no node list)");
        return kTfLiteError;
    }
    for (int i = 0; i < p->n_nodes; i++)
        if (prepare_node(ctx, p, &p->nodes[i])) return kTfLiteError;
    return kTfLiteOk;
}

static TfLiteStatus dk_invoke(TfLiteContext *ctx, TfLiteNode *node) {
    part *p = (part *)node->user_data;
    if (!p || !p->nodes) return kTfLiteError;
    for (int i = 0; i < p->n_nodes; i++)
        if (invoke_node(ctx, p, &p->nodes[i])) return kTfLiteError;
    return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext *ctx, TfLiteDelegate *delegate) {
    const ep_delegate *d = (const ep_delegate *)delegate;
    if (d && d->err[0]) {
        ctx->ReportError(ctx, "edgepack delegate: %s", d->err);
        return kTfLiteError;
    }
    TfLiteIntArray *plan = NULL;
    if (ctx->GetExecutionPlan(ctx, &plan) || !plan) {
        ctx->ReportError(ctx, "edgepack delegate: cannot read the execution plan");
        return kTfLiteError;
    }
    const int total = plan->size > 0 ? plan->size : 0;
    TfLiteIntArray *claim = (TfLiteIntArray *)malloc(sizeof(int) * (size_t)(total + 1));
    int *order = (int *)malloc(sizeof(int) * (size_t)(total + 1));
    if (!claim || !order) {
        free(claim);
        free(order);
        ctx->ReportError(ctx, "edgepack delegate: out of memory");
        return kTfLiteError;
    }
    memcpy(order, plan->data, sizeof(int) * (size_t)total); /* the plan may be invalidated below */
    claim->size = 0;
    for (int i = 0; i < total; i++) {
        TfLiteNode *node = NULL;
        TfLiteRegistration *reg = NULL;
        if (ctx->GetNodeAndRegistration(ctx, order[i], &node, &reg) || !reg) continue;
        if (reg->builtin_code == kTfLiteBuiltinCustom && reg->custom_name &&
            !strncmp(reg->custom_name, PREFIX, sizeof PREFIX - 1))
            claim->data[claim->size++] = order[i];
    }
    free(order);
    TfLiteStatus st = kTfLiteOk;
    if (claim->size) {
        TfLiteRegistration r;
        memset(&r, 0, sizeof r);
        r.init = dk_init;
        r.free = dk_free;
        r.prepare = dk_prepare;
        r.invoke = dk_invoke;
        r.builtin_code = kTfLiteBuiltinDelegate;
        r.custom_name = "EdgepackDelegate";
        r.version = 1;
        st = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, r, claim, delegate);
    }
    free(claim);
    return st;
}

static TfLiteDelegate *delegate_new(const ep_limits *lim, const char *err) {
    ep_delegate *d = (ep_delegate *)calloc(1, sizeof *d);
    if (!d) return NULL;
    d->base.Prepare = delegate_prepare;
    d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
    d->magic = EP_DELEGATE_MAGIC;
    if (lim) d->lim = *lim;
    if (err) snprintf(d->err, sizeof d->err, "%s", err);
    return &d->base;
}

EP_TFLITE_EXPORT TfLiteDelegate *edgepack_tflite_delegate_create(void) {
    ep_limits lim;
    return ep_limits_from_env(&lim) ? delegate_new(NULL, ep_last_error()) : delegate_new(&lim, NULL);
}

EP_TFLITE_EXPORT void edgepack_tflite_delegate_delete(TfLiteDelegate *d) { free(d); }

EP_TFLITE_EXPORT TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                                                void (*report_error)(const char *)) {
    char msg[1200];
    ep_limits lim;
    if (ep_limits_from_env(&lim)) {
        snprintf(msg, sizeof msg, "edgepack delegate: %s", ep_last_error());
        if (report_error) report_error(msg);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *k = keys && keys[i] ? keys[i] : "", *v = values && values[i] ? values[i] : "";
        if (!strcmp(k, "kernels")) {
            if (ep_set_variant(v) == EP_OK) continue;
            snprintf(msg, sizeof msg, "edgepack delegate: option kernels='%.100s' is not usable here (%s)", v,
                     ep_last_error());
        } else if (!strcmp(k, "max_virtual_weights") || !strcmp(k, "max_decoded_bytes")) {
            int64_t *dst = k[4] == 'v' ? &lim.max_virtual_weights : &lim.max_decoded_bytes;
            if (ep_parse_limit(k, v, dst) == EP_OK) continue;
            snprintf(msg, sizeof msg, "edgepack delegate: option %s", ep_last_error());
        } else {
            snprintf(msg, sizeof msg, "edgepack delegate: unknown option '%.100s'; valid: kernels (auto, ref, avx2, "
                     "neon), max_virtual_weights, max_decoded_bytes (positive integers)", k);
        }
        if (report_error) report_error(msg);
        return NULL;
    }
    TfLiteDelegate *d = delegate_new(&lim, NULL);
    if (!d && report_error) report_error("edgepack delegate: out of memory");
    return d;
}

EP_TFLITE_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate *d) { edgepack_tflite_delegate_delete(d); }

/* ---- plain custom ops for MutableOpResolver::AddCustom ------------------------------------------ */

static void *op_init(op_kind kind, const char *buffer, size_t length) {
    part *p = (part *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nodes = (ep_node *)calloc(1, sizeof(ep_node));
    if (!p->nodes) {
        free(p);
        return NULL;
    }
    p->n_nodes = 1;
    ep_node *n = &p->nodes[0];
    n->kind = kind;
    node_limits(n, NULL);
    parse_options(n, buffer, length);
    return p;
}

static TfLiteStatus op_prepare(TfLiteContext *ctx, TfLiteNode *node) {
    part *p = (part *)node->user_data;
    if (!p || !p->nodes) {
        ctx->ReportError(ctx, "edgepack custom op: kernel initialisation failed (out of memory)");
        return kTfLiteError;
    }
    ep_node *n = &p->nodes[0];
    set_io(n, node->inputs, node->outputs);
    set_label(n, ctx, -1);
    return prepare_node(ctx, p, n);
}

static TfLiteStatus op_invoke(TfLiteContext *ctx, TfLiteNode *node) {
    part *p = (part *)node->user_data;
    return p && p->nodes ? invoke_node(ctx, p, &p->nodes[0]) : kTfLiteError;
}

static void op_free(TfLiteContext *ctx, void *buffer) {
    (void)ctx;
    free_part((part *)buffer);
}

static void *init_hw(TfLiteContext *c, const char *b, size_t l) { (void)c; return op_init(OP_HASHED_WEIGHT, b, l); }
static void *init_hm(TfLiteContext *c, const char *b, size_t l) { (void)c; return op_init(OP_HASHED_MATMUL, b, l); }
static void *init_cm(TfLiteContext *c, const char *b, size_t l) { (void)c; return op_init(OP_CIRCULANT, b, l); }
static void *init_ld(TfLiteContext *c, const char *b, size_t l) { (void)c; return op_init(OP_LDR, b, l); }

#define EP_REG(INIT, NAME) \
    { .init = INIT, .free = op_free, .prepare = op_prepare, .invoke = op_invoke, \
      .builtin_code = kTfLiteBuiltinCustom, .custom_name = PREFIX NAME, .version = 1 }
static const TfLiteRegistration g_regs[OP_COUNT] = {
    EP_REG(init_hw, "HashedWeight"), EP_REG(init_hm, "HashedMatMul"),
    EP_REG(init_cm, "CirculantMatMul"), EP_REG(init_ld, "LDRMatMul"),
};

EP_TFLITE_EXPORT const TfLiteRegistration *edgepack_tflite_registration(const char *custom_name) {
    op_kind k;
    return kind_of(custom_name, &k) ? &g_regs[k] : NULL;
}
