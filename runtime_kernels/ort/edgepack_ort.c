/* libedgepack_ort: ONNX Runtime custom ops for the ai.edgepack domain, opset 1 (docs/ops.md).
 *
 * Ops: HashedWeight, HashedMatMul, CirculantMatMul, LDRMatMul, backed by libedgepack_kernels.
 * Every attribute and input is validated before memory is touched; failures come back as an
 * OrtStatus naming the node and what would be valid. Plans (decoded V, FFT spectra) are built
 * once at kernel creation when the weights are constant initializers and are read-only after
 * that, so concurrent Run() calls on one session are safe; otherwise they are built per run.
 *
 * Limits (docs/ops.md "Limits"): each RegisterCustomOps call (one per session options) gets its
 * own budget of decoded bytes, read from the environment (or edgepack_ort_set_limits) at that
 * moment; every kernel checks its virtual weights and reserves its decoded bytes at creation,
 * before allocating, and gives them back when ORT destroys it.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack/ops.h"
#include "ort_abi.h"

#if defined(_WIN32)
#define EP_ORT_EXPORT __declspec(dllexport)
#else
#define EP_ORT_EXPORT __attribute__((visibility("default")))
#endif

#define MAX_RANK EP_LIMIT_MAX_RANK
#define MAX_INPUTS 4

typedef enum op_kind {
    OP_HASHED_WEIGHT = EP_OP_HashedWeight,
    OP_HASHED_MATMUL = EP_OP_HashedMatMul,
    OP_CIRCULANT = EP_OP_CirculantMatMul,
    OP_LDR = EP_OP_LDRMatMul
} op_kind;
#define OP_COUNT EP_OP_COUNT

struct registration;

typedef struct op_desc {
    OrtCustomOp base; /* first member: ORT hands our callbacks &base */
    op_kind kind;
    const char *name;
    size_t n_inputs;
    const char *inputs[MAX_INPUTS];
    unsigned char optional[MAX_INPUTS];
    struct registration *reg; /* the budget of the session options this op was registered with */
} op_desc;

/* One per RegisterCustomOps call: the ops, the limits read then and the decoded bytes held. */
typedef struct registration {
    op_desc ops[OP_COUNT];
    ep_limits lim;
    _Atomic int64_t used;
    struct registration *next; /* every registration stays reachable from g_registrations */
} registration;

typedef struct tview {
    int present;
    ONNXTensorElementDataType type;
    size_t rank;
    int64_t dims[MAX_RANK];
    int64_t count;
    const float *data;
} tview;

typedef struct kernel {
    const OrtApi *api;
    const op_desc *desc;
    char node[256];         /* "HashedMatMul node 'name'", used in every message */
    int64_t in_f, out_f;    /* matmul ops */
    ep_hash_params hp;      /* hashed ops (num_buckets set per use) */
    int64_t mode;           /* HashedMatMul: 0 expand, 1 stream */
    int64_t shape[MAX_RANK];
    size_t shape_rank;      /* HashedWeight */
    /* built from constant initializers at creation, read-only afterwards */
    ep_hashed_plan *hplan;
    ep_circulant_plan *cplan;
    ep_ldr_plan *lplan;
    float *W;               /* HashedWeight decoded once */
    int64_t reserved;       /* decoded bytes counted against the registration's budget */
    char size_desc[200];    /* "shape [2, 3]" or "in_features=3 x out_features=2", for limit messages */
} kernel;

static OrtStatus *fail(const kernel *k, const char *fmt, ...) {
    char msg[1536];
    int n = snprintf(msg, sizeof msg, "edgepack %s: ", k->node);
    if (n < 0 || n >= (int)sizeof msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    return OrtCreateStatus(k->api)(ORT_INVALID_ARGUMENT, msg);
}

static OrtStatus *kernel_fail(const kernel *k, ep_status s) {
    return fail(k, "kernel error (%s): %s", ep_status_str(s), ep_last_error());
}

static int is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/* ---- limits --------------------------------------------------------------------------------- */

static OrtStatus *limit_fail(const kernel *k) { return fail(k, "%s", ep_last_error()); }

static void dims_str(const tview *t, char *buf, size_t cap);

/* "<what> of <shape>, tensor [dims]" for a limit message. */
static void describe(const kernel *k, const char *what, const tview *t, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "%s (%s", what, k->size_desc);
    if (n < 0 || n >= (int)cap) return;
    if (t) {
        n += snprintf(buf + n, cap - (size_t)n, ", input '%s' ", k->desc->inputs[1]);
        if (n < (int)cap) dims_str(t, buf + n, cap - (size_t)n);
        n = (int)strlen(buf);
    }
    if (n < (int)cap - 1) snprintf(buf + n, cap - (size_t)n, ")");
}

/* Count `bytes` more decoded bytes against the session budget, or fail naming `what`. */
static OrtStatus *reserve(kernel *k, int64_t bytes, const char *what, const tview *t) {
    registration *r = k->desc->reg;
    int64_t used = atomic_load(&r->used);
    char desc[512];
    describe(k, what, t, desc, sizeof desc);
    do {
        if (ep_limits_check_bytes(&r->lim, used, bytes, desc)) return limit_fail(k);
    } while (!atomic_compare_exchange_weak(&r->used, &used, used + bytes));
    k->reserved += bytes;
    return NULL;
}

/* A plan built for one run only (weights fed at run time) must fit what the session has left. */
static OrtStatus *check_transient(const kernel *k, int64_t bytes, const char *what, const tview *t) {
    const registration *r = k->desc->reg;
    char desc[512];
    describe(k, what, t, desc, sizeof desc);
    return ep_limits_check_bytes(&r->lim, atomic_load(&r->used), bytes, desc) ? limit_fail(k) : NULL;
}

/* Bytes of the decoded form of a matmul op's weights (docs/ops.md "Limits"), from valid views. */
static int64_t plan_bytes(const kernel *k, const tview *w) {
    switch (k->desc->kind) {
    case OP_HASHED_MATMUL: return k->mode == 1 ? 0 : 4 * k->hp.rows * k->hp.cols;
    case OP_CIRCULANT: return 4 * w[1].dims[0] * w[1].dims[1] * (w[1].dims[2] + 2);
    case OP_LDR: return 4 * w[1].dims[0] * (4 * w[1].dims[1] + 2);
    default: return 4 * k->hp.rows * k->hp.cols;
    }
}

/* Per node: the virtual weights (HashedWeight: prod(shape); matmul ops: in * out). */
static OrtStatus *check_virtual(kernel *k) {
    char *what = k->size_desc;
    const size_t cap = sizeof k->size_desc;
    int n = 0;
    if (k->desc->kind == OP_HASHED_WEIGHT) {
        n = snprintf(what, cap, "shape [");
        for (size_t d = 0; d < k->shape_rank && n > 0 && n < (int)cap; d++)
            n += snprintf(what + n, cap - (size_t)n, d ? ", %lld" : "%lld", (long long)k->shape[d]);
        if (n > 0 && n < (int)cap) snprintf(what + n, cap - (size_t)n, "]");
    } else {
        snprintf(what, cap, "in_features=%lld x out_features=%lld", (long long)k->hp.cols,
                 (long long)k->hp.rows);
    }
    const uint64_t v = (uint64_t)k->hp.rows * (uint64_t)k->hp.cols; /* both < 2^32 */
    return ep_limits_check_weights(&k->desc->reg->lim, v > (uint64_t)INT64_MAX ? -1 : (int64_t)v, what)
               ? limit_fail(k) : NULL;
}

/* ---- attributes ------------------------------------------------------------------------- */

/* The type an attribute actually has, or NULL when the node has no such attribute. */
static const char *attr_kind(const OrtApi *a, const OrtKernelInfo *info, const char *name) {
    OrtStatus *st;
    int64_t i;
    float f;
    size_t n = 0;
    if (!(st = OrtKernelInfoGetAttribute_int64(a)(info, name, &i))) return "int";
    OrtReleaseStatus(a)(st);
    if (!(st = OrtKernelInfoGetAttribute_float(a)(info, name, &f))) return "float";
    OrtReleaseStatus(a)(st);
    if (!(st = OrtKernelInfoGetAttribute_string(a)(info, name, NULL, &n))) return "string";
    OrtReleaseStatus(a)(st);
    /* the array getters answer "0 values" for some scalar types, so probe them last */
    int empty = 0;
    if (!(st = OrtKernelInfoGetAttributeArray_int64(a)(info, name, NULL, &n))) {
        if (n) return "ints";
        empty = 1;
    } else OrtReleaseStatus(a)(st);
    if (!(st = OrtKernelInfoGetAttributeArray_float(a)(info, name, NULL, &n))) {
        if (n) return "floats";
        empty = 1;
    } else OrtReleaseStatus(a)(st);
    return empty ? "an empty list" : NULL;
}

/* ep_attr_reader over an OrtKernelInfo (ops.h); ctx is a kernel_attrs. */
typedef struct kernel_attrs {
    const OrtApi *api;
    const OrtKernelInfo *info;
} kernel_attrs;

static ep_attr_result missing_or(const kernel_attrs *c, const char *name, char *kind, size_t cap) {
    const char *k = attr_kind(c->api, c->info, name);
    if (!k) return EP_ATTR_MISSING;
    snprintf(kind, cap, "%s", k);
    return EP_ATTR_WRONG_TYPE;
}

static ep_attr_result ort_get_int(void *ctx, const char *name, int64_t *out, char *kind, size_t cap) {
    const kernel_attrs *c = (const kernel_attrs *)ctx;
    OrtStatus *st = OrtKernelInfoGetAttribute_int64(c->api)(c->info, name, out);
    if (!st) return EP_ATTR_FOUND;
    OrtReleaseStatus(c->api)(st);
    return missing_or(c, name, kind, cap);
}

static ep_attr_result ort_get_float(void *ctx, const char *name, float *out, char *kind, size_t cap) {
    const kernel_attrs *c = (const kernel_attrs *)ctx;
    OrtStatus *st = OrtKernelInfoGetAttribute_float(c->api)(c->info, name, out);
    if (!st) return EP_ATTR_FOUND;
    OrtReleaseStatus(c->api)(st);
    return missing_or(c, name, kind, cap);
}

static ep_attr_result ort_get_ints(void *ctx, const char *name, int64_t *out, size_t cap, size_t *n, char *kind,
                                   size_t kind_cap) {
    const kernel_attrs *c = (const kernel_attrs *)ctx;
    size_t size = 0;
    OrtStatus *st = OrtKernelInfoGetAttributeArray_int64(c->api)(c->info, name, NULL, &size);
    if (st) OrtReleaseStatus(c->api)(st);
    if (st || size == 0) {
        const char *k = attr_kind(c->api, c->info, name);
        if (!k) return EP_ATTR_MISSING;
        if (!strcmp(k, "an empty list")) return *n = 0, EP_ATTR_FOUND;
        if (strcmp(k, "ints")) return snprintf(kind, kind_cap, "%s", k), EP_ATTR_WRONG_TYPE;
    }
    *n = size;
    if (size > cap) return EP_ATTR_FOUND; /* too many: the caller reports the count */
    if ((st = OrtKernelInfoGetAttributeArray_int64(c->api)(c->info, name, out, &size))) {
        OrtReleaseStatus(c->api)(st);
        return snprintf(kind, kind_cap, "unreadable ints"), EP_ATTR_WRONG_TYPE;
    }
    return EP_ATTR_FOUND;
}

static OrtStatus *read_attrs(kernel *k, const OrtKernelInfo *info) {
    kernel_attrs c = {k->api, info};
    const ep_attr_reader reader = {&c, ort_get_int, ort_get_ints, ort_get_float};
    ep_op_attrs at;
    char msg[600];
    if (ep_op_read_attrs((ep_op)k->desc->kind, EP_RUNTIME_ORT, &reader, &at, msg, sizeof msg))
        return fail(k, "%s", msg);
    k->in_f = at.in_f;
    k->out_f = at.out_f;
    k->mode = at.mode;
    k->hp = at.hp;
    memcpy(k->shape, at.shape, sizeof k->shape);
    k->shape_rank = at.shape_rank;
    return NULL;
}

/* ---- tensors ----------------------------------------------------------------------------- */

static OrtStatus *view_of(const kernel *k, const OrtValue *v, size_t idx, tview *t) {
    const OrtApi *a = k->api;
    OrtTensorTypeAndShapeInfo *ti = NULL;
    size_t count = 0;
    void *data = NULL;
    memset(t, 0, sizeof *t);
    if (!v) return NULL;
    OrtStatus *st = OrtGetTensorTypeAndShape(a)(v, &ti);
    if (!st) st = OrtGetTensorElementType(a)(ti, &t->type);
    if (!st) st = OrtGetDimensionsCount(a)(ti, &t->rank);
    if (!st && t->rank > MAX_RANK) {
        OrtReleaseTensorTypeAndShapeInfo(a)(ti);
        return fail(k, "input '%s' has rank %zu; at most %d is supported", k->desc->inputs[idx], t->rank, MAX_RANK);
    }
    if (!st) st = OrtGetDimensions(a)(ti, t->dims, t->rank);
    if (!st) st = OrtGetTensorShapeElementCount(a)(ti, &count);
    if (ti) OrtReleaseTensorTypeAndShapeInfo(a)(ti);
    if (st) return st;
    t->present = 1;
    t->count = (int64_t)count;
    if (t->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        return fail(k, "input '%s' has element type %d; must be float32 (1)", k->desc->inputs[idx], (int)t->type);
    if ((st = OrtGetTensorMutableData(a)((OrtValue *)v, &data))) return st;
    if (!data && count) return fail(k, "input '%s' has no data", k->desc->inputs[idx]);
    t->data = (const float *)data;
    return NULL;
}

static void dims_str(const tview *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (size_t d = 0; d < t->rank && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)t->dims[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static OrtStatus *check_buckets(const kernel *k, const tview *t, size_t idx) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->rank != 1 || t->count < 1 || t->count > INT32_MAX)
        return fail(k, "input '%s' has shape %s; must be 1-D with 1 <= B < 2^31 buckets", k->desc->inputs[idx], s);
    return NULL;
}

static OrtStatus *check_recon(const kernel *k, const tview *t, size_t idx) {
    const int64_t K = k->hp.num_hashes, per = K + 2;
    if (!t->present && K == 1) return NULL; /* optional for K = 1: applied when given */
    if (!t->present)
        return fail(k, "input '%s' is required when num_hashes=%lld: the MLP [W1 (H x K), b1 (H), W2 (H), b2] "
                    "of length H*(K+2)+1", k->desc->inputs[idx], (long long)K);
    if (t->rank != 1 || t->count < per + 1 || (t->count - 1) % per != 0)
        return fail(k, "input '%s' has %lld values (rank %zu); with num_hashes=%lld it must be 1-D of length "
                    "H*%lld+1 for some H >= 1 (e.g. %lld, %lld, ...)", k->desc->inputs[idx], (long long)t->count,
                    t->rank, (long long)K, (long long)per, (long long)(per + 1), (long long)(2 * per + 1));
    return NULL;
}

static OrtStatus *check_blocks(const kernel *k, const tview *t, size_t idx) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->rank != 3 || t->dims[0] < 1 || t->dims[1] < 1 || !is_pow2(t->dims[2]) || t->dims[2] < 4)
        return fail(k, "input '%s' has shape %s; must be [p, q, b] with p, q >= 1 and b a power of two >= 4",
                    k->desc->inputs[idx], s);
    const int64_t p = t->dims[0], q = t->dims[1], b = t->dims[2];
    if (k->in_f > q * b || k->out_f > p * b)
        return fail(k, "input '%s' has shape %s; need in_features=%lld <= q*b=%lld and out_features=%lld <= "
                    "p*b=%lld", k->desc->inputs[idx], s, (long long)k->in_f, (long long)(q * b),
                    (long long)k->out_f, (long long)(p * b));
    return NULL;
}

static OrtStatus *check_ldr(const kernel *k, const tview *g, const tview *h) {
    char sg[256], sh[256];
    dims_str(g, sg, sizeof sg);
    dims_str(h, sh, sizeof sh);
    if (g->rank != 2 || h->rank != 2 || g->dims[0] != h->dims[0] || g->dims[1] != h->dims[1] || g->dims[0] < 1 ||
        !is_pow2(g->dims[1]) || g->dims[1] < 4)
        return fail(k, "inputs 'G' %s and 'H' %s must both be [r, n] with r >= 1 and n a power of two >= 4", sg, sh);
    if (k->in_f > g->dims[1] || k->out_f > g->dims[1])
        return fail(k, "in_features=%lld and out_features=%lld must both be <= n=%lld (G, H are %s)",
                    (long long)k->in_f, (long long)k->out_f, (long long)g->dims[1], sg);
    return NULL;
}

static OrtStatus *check_bias(const kernel *k, const tview *t, size_t idx) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->present && (t->rank != 1 || t->count != k->out_f))
        return fail(k, "input '%s' has shape %s; must be [out_features] = [%lld]", k->desc->inputs[idx], s,
                    (long long)k->out_f);
    return NULL;
}

static OrtStatus *check_x(const kernel *k, const tview *t) {
    char s[256];
    dims_str(t, s, sizeof s);
    if (t->rank < 1 || t->dims[t->rank - 1] != k->in_f)
        return fail(k, "input 'X' has shape %s; its last axis must equal in_features=%lld", s, (long long)k->in_f);
    return NULL;
}

/* Validate the weight inputs (everything but X and bias) of w[]. */
static OrtStatus *check_weights(const kernel *k, const tview *w) {
    OrtStatus *st = NULL;
    switch (k->desc->kind) {
    case OP_HASHED_WEIGHT:
        if (!(st = check_buckets(k, &w[0], 0))) st = check_recon(k, &w[1], 1);
        break;
    case OP_HASHED_MATMUL:
        if (!(st = check_buckets(k, &w[1], 1))) st = check_recon(k, &w[2], 2);
        break;
    case OP_CIRCULANT: st = check_blocks(k, &w[1], 1); break;
    case OP_LDR: st = check_ldr(k, &w[1], &w[2]); break;
    }
    return st;
}

/* Build the plan of a matmul op from validated weights; the caller owns the plan it gets. */
static OrtStatus *build_plan(const kernel *k, const tview *w, ep_hashed_plan **hp, ep_circulant_plan **cp,
                             ep_ldr_plan **lp) {
    ep_status s = EP_OK;
    ep_hash_params p = k->hp;
    switch (k->desc->kind) {
    case OP_HASHED_MATMUL:
        p.num_buckets = w[1].count;
        s = ep_hashed_plan_create(&p, w[1].data, w[2].data, w[2].present ? w[2].count : 0, hp);
        break;
    case OP_CIRCULANT:
        s = ep_circulant_plan_create(w[1].dims[0], w[1].dims[1], w[1].dims[2], w[1].data, k->in_f, k->out_f, cp);
        break;
    case OP_LDR:
        s = ep_ldr_plan_create(w[1].dims[0], w[1].dims[1], w[1].data, w[2].data, k->in_f, k->out_f, lp);
        break;
    case OP_HASHED_WEIGHT: break;
    }
    return s ? kernel_fail(k, s) : NULL;
}

/* ---- kernel lifetime ----------------------------------------------------------------------- */

static void set_node_name(kernel *k, const OrtKernelInfo *info) {
    const OrtApi *a = k->api;
    size_t size = 0;
    char *name = NULL;
    OrtStatus *st = OrtKernelInfo_GetNodeName(a)(info, NULL, &size);
    if (!st && size > 1 && (name = (char *)malloc(size)) != NULL)
        st = OrtKernelInfo_GetNodeName(a)(info, name, &size);
    if (st) OrtReleaseStatus(a)(st);
    if (!st && name && name[0])
        snprintf(k->node, sizeof k->node, "%s node '%s'", k->desc->name, name);
    else
        snprintf(k->node, sizeof k->node, "%s node (unnamed)", k->desc->name);
    free(name);
}

static void destroy_kernel(void *p) {
    kernel *k = (kernel *)p;
    if (!k) return;
    if (k->reserved) atomic_fetch_sub(&k->desc->reg->used, k->reserved);
    ep_hashed_plan_destroy(k->hplan);
    ep_circulant_plan_destroy(k->cplan);
    ep_ldr_plan_destroy(k->lplan);
    free(k->W);
    free(k);
}

/* When every weight input is a constant initializer: validate now and build the plan once. */
static OrtStatus *prepare_constants(kernel *k, const OrtKernelInfo *info) {
    const OrtApi *a = k->api;
    const op_desc *d = k->desc;
    tview w[MAX_INPUTS];
    size_t n_in = 0;
    OrtStatus *st = OrtKernelInfo_GetInputCount(a)(info, &n_in);
    if (st) return st;
    memset(w, 0, sizeof w);
    /* weight inputs: HashedWeight 0-1 (buckets, recon); matmul ops 1-2 (buckets/G, recon/H) */
    size_t first = d->kind == OP_HASHED_WEIGHT ? 0 : 1, last = first + (d->kind != OP_CIRCULANT);
    for (size_t i = first; i <= last; i++) {
        int is_const = 0;
        const OrtValue *v = NULL;
        if (i >= n_in) continue; /* trailing input left out: absent */
        st = OrtKernelInfoGetConstantInput_tensor(a)(info, i, &is_const, &v);
        if (st) { OrtReleaseStatus(a)(st); return NULL; }
        if (!is_const || !v) return NULL; /* fed at run time: validate and build per run */
        if ((st = view_of(k, v, i, &w[i]))) return st;
    }
    if ((st = check_weights(k, w))) return st;
    if ((d->kind == OP_CIRCULANT || d->kind == OP_LDR) &&
        (st = reserve(k, plan_bytes(k, w), d->kind == OP_CIRCULANT ? "the block spectra" : "the LDR spectra", &w[1])))
        return st;
    if (d->kind == OP_HASHED_WEIGHT) {
        ep_hash_params p = k->hp;
        p.num_buckets = w[0].count;
        k->W = (float *)malloc(sizeof(float) * (size_t)(p.rows * p.cols));
        if (!k->W) return fail(k, "cannot allocate the %lld x %lld weight", (long long)p.rows, (long long)p.cols);
        ep_status s = ep_hashed_decode(&p, w[0].data, w[1].data, w[1].present ? w[1].count : 0, k->W);
        return s ? kernel_fail(k, s) : NULL;
    }
    if (d->kind == OP_HASHED_MATMUL && k->mode == 1) return NULL; /* stream: nothing to cache */
    return build_plan(k, w, &k->hplan, &k->cplan, &k->lplan);
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    kernel *k = (kernel *)calloc(1, sizeof *k);
    if (!k) return OrtCreateStatus(api)(ORT_FAIL, "edgepack: out of memory creating a kernel");
    k->api = api;
    k->desc = (const op_desc *)op;
    set_node_name(k, info);
    OrtStatus *st = read_attrs(k, info);
    if (!st) st = check_virtual(k);
    /* the hashed ops' decoded size is known from the attributes: count it whatever feeds them */
    if (!st && (k->desc->kind == OP_HASHED_WEIGHT || (k->desc->kind == OP_HASHED_MATMUL && k->mode == 0)))
        st = reserve(k, plan_bytes(k, NULL), k->desc->kind == OP_HASHED_WEIGHT ? "the decoded weight" : "the expanded weight (mode 0)", NULL);
    if (!st) st = prepare_constants(k, info);
    if (st) {
        destroy_kernel(k);
        return st;
    }
    *out = k;
    return NULL;
}

/* ---- compute ------------------------------------------------------------------------------- */

/* The output buffer, checked to be a float32 tensor of exactly `count` values before it is written
 * (a pre-bound output of another size or type must not be overrun). */
static OrtStatus *get_output(const kernel *k, OrtKernelContext *ctx, const int64_t *dims, size_t rank,
                             int64_t count, float **y) {
    OrtValue *ov = NULL;
    void *data = NULL;
    tview t;
    OrtStatus *st = OrtKernelContext_GetOutput(k->api)(ctx, 0, dims, rank, &ov);
    if (st) return st;
    if (!ov) return fail(k, "ONNX Runtime gave no output tensor");
    OrtTensorTypeAndShapeInfo *ti = NULL;
    size_t n = 0;
    st = OrtGetTensorTypeAndShape(k->api)(ov, &ti);
    if (!st) st = OrtGetTensorElementType(k->api)(ti, &t.type);
    if (!st) st = OrtGetTensorShapeElementCount(k->api)(ti, &n);
    if (ti) OrtReleaseTensorTypeAndShapeInfo(k->api)(ti);
    if (st) return st;
    if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || (int64_t)n != count)
        return fail(k, "output tensor has element type %d and %zu values; must be float32 (1) with %lld values",
                    (int)t.type, n, (long long)count);
    if ((st = OrtGetTensorMutableData(k->api)(ov, &data))) return st;
    if (!data && count) return fail(k, "output tensor has no data");
    *y = (float *)data;
    return NULL;
}

static OrtStatus *compute(void *p, OrtKernelContext *ctx) {
    const kernel *k = (const kernel *)p;
    const op_desc *d = k->desc;
    tview in[MAX_INPUTS];
    size_t n_in = 0;
    OrtStatus *st = OrtKernelContext_GetInputCount(k->api)(ctx, &n_in);
    if (st) return st;
    memset(in, 0, sizeof in);
    for (size_t i = 0; i < d->n_inputs; i++) {
        const OrtValue *v = NULL;
        if (i < n_in && (st = OrtKernelContext_GetInput(k->api)(ctx, i, &v))) return st;
        if ((st = view_of(k, v, i, &in[i]))) return st;
        if (!in[i].present && !d->optional[i]) return fail(k, "required input '%s' is missing", d->inputs[i]);
    }
    if ((st = check_weights(k, in))) return st;

    if (d->kind == OP_HASHED_WEIGHT) {
        float *W = NULL;
        if ((st = get_output(k, ctx, k->shape, k->shape_rank, k->hp.rows * k->hp.cols, &W))) return st;
        size_t n = (size_t)(k->hp.rows * k->hp.cols);
        if (k->W) {
            memcpy(W, k->W, sizeof(float) * n);
            return NULL;
        }
        ep_hash_params hp = k->hp;
        hp.num_buckets = in[0].count;
        ep_status s = ep_hashed_decode(&hp, in[0].data, in[1].data, in[1].present ? in[1].count : 0, W);
        return s ? kernel_fail(k, s) : NULL;
    }

    /* matmul ops: X [..., in] -> Y [..., out] */
    const size_t ib = d->n_inputs - 1; /* bias is the last input */
    if ((st = check_x(k, &in[0])) || (st = check_bias(k, &in[ib], ib))) return st;
    int64_t ydims[MAX_RANK];
    memcpy(ydims, in[0].dims, sizeof(int64_t) * in[0].rank);
    ydims[in[0].rank - 1] = k->out_f;
    const int64_t N = in[0].count / k->in_f;
    if (N > k->desc->reg->lim.max_decoded_bytes / 4 / k->out_f) {
        char what[320];
        tview yv = in[0];
        yv.dims[yv.rank - 1] = k->out_f;
        int n = snprintf(what, sizeof what, "output 'Y' of shape ");
        dims_str(&yv, what + n, sizeof what - (size_t)n);
        const uint64_t bytes = (uint64_t)N * 4u * (uint64_t)k->out_f;
        (void)ep_limits_check_bytes(&k->desc->reg->lim, 0, bytes > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)bytes,
                                    what);
        return limit_fail(k);
    }
    float *Y = NULL;
    if ((st = get_output(k, ctx, ydims, in[0].rank, N * k->out_f, &Y))) return st;
    if (N == 0) return NULL;
    const float *X = in[0].data, *bias = in[ib].data;

    ep_hashed_plan *hp = k->hplan;
    ep_circulant_plan *cp = k->cplan;
    ep_ldr_plan *lp = k->lplan;
    ep_status s = EP_OK;
    if (d->kind == OP_HASHED_MATMUL && k->mode == 1) {
        ep_hash_params p = k->hp;
        p.num_buckets = in[1].count;
        s = ep_hashed_matmul_stream(&p, in[1].data, in[2].data, in[2].present ? in[2].count : 0, X, N, bias, Y);
        return s ? kernel_fail(k, s) : NULL;
    }
    const int own = !hp && !cp && !lp; /* weights fed at run time: plan for this run only */
    if (own && d->kind != OP_HASHED_MATMUL && (st = check_transient(k, plan_bytes(k, in), "this run's spectra", &in[1])))
        return st;
    if (own && (st = build_plan(k, in, &hp, &cp, &lp))) return st;
    switch (d->kind) {
    case OP_HASHED_MATMUL: s = ep_hashed_matmul_expand(hp, X, N, k->in_f, bias, Y, k->out_f); break;
    case OP_CIRCULANT: s = ep_circulant_matmul(cp, X, N, k->in_f, bias, Y, k->out_f); break;
    case OP_LDR: s = ep_ldr_matmul(lp, X, N, k->in_f, bias, Y, k->out_f); break;
    case OP_HASHED_WEIGHT: break;
    }
    if (own) {
        ep_hashed_plan_destroy(hp);
        ep_circulant_plan_destroy(cp);
        ep_ldr_plan_destroy(lp);
    }
    return s ? kernel_fail(k, s) : NULL;
}

/* ---- op descriptions ----------------------------------------------------------------------- */

static const char *op_name(const OrtCustomOp *op) { return ((const op_desc *)op)->name; }
static const char *op_ep(const OrtCustomOp *op) { (void)op; return NULL; /* CPU */ }
static ONNXTensorElementDataType op_type(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t op_n_inputs(const OrtCustomOp *op) { return ((const op_desc *)op)->n_inputs; }
static size_t op_n_outputs(const OrtCustomOp *op) { (void)op; return 1; }
static OrtCustomOpInputOutputCharacteristic op_in_char(const OrtCustomOp *op, size_t i) {
    const op_desc *d = (const op_desc *)op;
    return i < d->n_inputs && d->optional[i] ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
static OrtCustomOpInputOutputCharacteristic op_out_char(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType op_mem(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }
static int op_one(const OrtCustomOp *op) { (void)op; return 1; }

#define EP_OP(KIND, NAME, N, ...)                                                                   \
    { .base = { .version = EP_ORT_API_VERSION, .GetName = op_name, .GetExecutionProviderType = op_ep, \
                .GetInputType = op_type, .GetInputTypeCount = op_n_inputs, .GetOutputType = op_type,  \
                .GetOutputTypeCount = op_n_outputs, .KernelDestroy = destroy_kernel,                  \
                .GetInputCharacteristic = op_in_char, .GetOutputCharacteristic = op_out_char,         \
                .GetInputMemoryType = op_mem, .GetVariadicInputMinArity = op_one,                     \
                .GetVariadicInputHomogeneity = op_one, .GetVariadicOutputMinArity = op_one,           \
                .GetVariadicOutputHomogeneity = op_one, .CreateKernelV2 = create_kernel,              \
                .KernelComputeV2 = compute },                                                         \
      .kind = KIND, .name = NAME, .n_inputs = N, __VA_ARGS__ }

static const op_desc g_ops[OP_COUNT] = {
    EP_OP(OP_HASHED_WEIGHT, "HashedWeight", 2, .inputs = {"buckets", "recon"}, .optional = {0, 1}),
    EP_OP(OP_HASHED_MATMUL, "HashedMatMul", 4, .inputs = {"X", "buckets", "recon", "bias"}, .optional = {0, 0, 1, 1}),
    EP_OP(OP_CIRCULANT, "CirculantMatMul", 3, .inputs = {"X", "blocks", "bias"}, .optional = {0, 0, 1}),
    EP_OP(OP_LDR, "LDRMatMul", 4, .inputs = {"X", "G", "H", "bias"}, .optional = {0, 0, 0, 1}),
};

/* Limits for the registrations that follow, over the environment's (0: no override). */
static _Atomic int64_t g_max_virtual_weights, g_max_decoded_bytes;
static registration *_Atomic g_registrations;

/* Set (or with 0, clear) the limits later RegisterCustomOps calls use instead of the environment's;
 * 0 on success, 1 for a negative value. Process-wide: set it, register, clear it. */
EP_ORT_EXPORT int edgepack_ort_set_limits(int64_t max_virtual_weights, int64_t max_decoded_bytes) {
    if (max_virtual_weights < 0 || max_decoded_bytes < 0) return 1;
    atomic_store(&g_max_virtual_weights, max_virtual_weights);
    atomic_store(&g_max_decoded_bytes, max_decoded_bytes);
    return 0;
}

/* Entry point ORT looks up after loading the library (register_custom_ops_library). The domain
 * and our registration (ops + budget) must outlive every session made from these options and ORT
 * owns neither, so they are never released (a few hundred bytes per registration). */
EP_ORT_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = base ? base->GetApi(EP_ORT_API_VERSION) : NULL;
    if (!api) {
        /* older ORT: API 1 still has CreateStatus at slot 0, enough to say what is wrong */
        const OrtApi *api1 = base ? base->GetApi(1) : NULL;
        char msg[256];
        snprintf(msg, sizeof msg, "libedgepack_ort needs ONNX Runtime >= 1.16 (C API %d); this is ONNX Runtime %s",
                 EP_ORT_API_VERSION, base && base->GetVersionString ? base->GetVersionString() : "?");
        if (api1) return OrtCreateStatus(api1)(ORT_FAIL, msg);
        fprintf(stderr, "edgepack: %s\n", msg);
        return NULL;
    }
    ep_limits lim;
    if (ep_limits_from_env(&lim)) {
        char msg[1100];
        snprintf(msg, sizeof msg, "edgepack: %s", ep_last_error());
        return OrtCreateStatus(api)(ORT_INVALID_ARGUMENT, msg);
    }
    const int64_t vw = atomic_load(&g_max_virtual_weights), db = atomic_load(&g_max_decoded_bytes);
    if (vw > 0) lim.max_virtual_weights = vw;
    if (db > 0) lim.max_decoded_bytes = db;
    registration *reg = (registration *)calloc(1, sizeof *reg);
    if (!reg) return OrtCreateStatus(api)(ORT_FAIL, "edgepack: out of memory registering the custom ops");
    memcpy(reg->ops, g_ops, sizeof g_ops);
    reg->lim = lim;
    atomic_init(&reg->used, 0);
    reg->next = atomic_load(&g_registrations);
    while (!atomic_compare_exchange_weak(&g_registrations, &reg->next, reg)) {
    }
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = OrtCreateCustomOpDomain(api)("ai.edgepack", &domain);
    for (size_t i = 0; !st && i < OP_COUNT; i++) {
        reg->ops[i].reg = reg;
        st = OrtCustomOpDomain_Add(api)(domain, &reg->ops[i].base);
    }
    if (!st) st = OrtAddCustomOpDomain(api)(options, domain);
    return st;
}
