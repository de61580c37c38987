/* libedgepack_ort: ONNX Runtime custom ops for the ai.edgepack domain, opset 1 (docs/ops.md).
 *
 * Ops: every op of ops.inc (HashedWeight, HashedMatMul, CirculantMatMul, LDRMatMul, CodebookWeight, HyperWeight,
 * SparseCodebookMatMul, MFCC). A thin adapter over the C op layer
 * (src/ops.c): it reads attributes through an ep_attr_reader and turns OrtValues into ep_tensor
 * views; the layer validates them before memory is touched, builds plans and runs the kernels.
 * Failures come back as an OrtStatus naming the node and what would be valid. Plans (decoded V, FFT spectra) are built
 * once at kernel creation when the weights are constant initializers and are read-only after
 * that, so concurrent Run() calls on one session are safe; otherwise they are built per run.
 *
 * Limits (docs/ops.md "Limits"): each RegisterCustomOps call (one per session options) gets its
 * own budget of decoded bytes, read from the environment (or edgepack_ort_set_limits) at that
 * moment; every kernel checks its virtual weights and reserves its decoded bytes at creation,
 * before allocating, and gives them back when ORT destroys it. The thread count of our kernels
 * (ep_set_num_threads) is fixed per registration too: edgepack_ort_set_threads (onnx_session's
 * threads=), else $EDGEPACK_NUM_THREADS, else 1; ORT's C API offers custom ops no intra-op count.
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

#define EP_OP_DOMAIN(domain, version) static const char EP_ORT_DOMAIN[] = domain;
#include "edgepack/ops.inc"

typedef struct registration registration;

typedef struct op_desc {
    OrtCustomOp base; /* first member: ORT hands our callbacks &base */
    ep_op op;
    registration *reg; /* the budget of the session options this op was registered with */
} op_desc;

/* One per RegisterCustomOps call: the ops, the limits read then and the decoded bytes held. */
struct registration {
    op_desc ops[EP_OP_COUNT];
    ep_limits lim;
    int threads; /* our kernels' threads in these sessions (ep_set_num_threads) */
    _Atomic int64_t used;
    registration *next; /* every registration stays reachable from g_registrations */
};

typedef struct kernel {
    const OrtApi *api;
    const op_desc *desc;
    char node[256];   /* "HashedMatMul node 'name'", used in every message */
    ep_op_attrs at;
    ep_op_plan *plan; /* built from constant initializers at creation, read-only afterwards */
    int64_t reserved; /* decoded bytes counted against the registration's budget */
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

/* ---- limits --------------------------------------------------------------------------------- */

/* Count `bytes` more decoded bytes (of `what`) against the session budget, or fail. */
static OrtStatus *reserve(kernel *k, int64_t bytes, const char *what) {
    registration *r = k->desc->reg;
    int64_t used = atomic_load(&r->used);
    do {
        if (ep_limits_check_bytes(&r->lim, used, bytes, what)) return fail(k, "%s", ep_last_error());
    } while (!atomic_compare_exchange_weak(&r->used, &used, used + bytes));
    k->reserved += bytes;
    return NULL;
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
    char msg[600];
    if (ep_op_read_attrs(k->desc->op, EP_RUNTIME_ORT, &reader, &k->at, msg, sizeof msg)) return fail(k, "%s", msg);
    return NULL;
}

/* ---- tensors ----------------------------------------------------------------------------- */

/* ONNX's element type as the op layer's (which checks it against the spec). */
static ep_dtype dtype_of(ONNXTensorElementDataType type) {
    switch ((int)type) {
    case 1: return EP_DTYPE_FLOAT32;
    case 2: return EP_DTYPE_UINT8;
    case 3: return EP_DTYPE_INT8;
    case 5: return EP_DTYPE_INT16;
    case 6: return EP_DTYPE_INT32;
    case 7: return EP_DTYPE_INT64;
    case 9: return EP_DTYPE_BOOL;
    case 10: return EP_DTYPE_FLOAT16;
    case 11: return EP_DTYPE_FLOAT64;
    default: return EP_DTYPE_OTHER;
    }
}

/* The view of input `idx` (v NULL: absent) with its data and element type. */
static OrtStatus *view_of(const kernel *k, const OrtValue *v, int idx, ep_tensor *t) {
    const OrtApi *a = k->api;
    const char *name = ep_op_input_name(k->desc->op, idx);
    OrtTensorTypeAndShapeInfo *ti = NULL;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    size_t count = 0;
    void *data = NULL;
    memset(t, 0, sizeof *t);
    if (!v) return NULL;
    OrtStatus *st = OrtGetTensorTypeAndShape(a)(v, &ti);
    if (!st) st = OrtGetTensorElementType(a)(ti, &type);
    if (!st) st = OrtGetDimensionsCount(a)(ti, &t->rank);
    if (!st && t->rank > EP_LIMIT_MAX_RANK) {
        OrtReleaseTensorTypeAndShapeInfo(a)(ti);
        return fail(k, "input '%s' has rank %zu; at most %d is supported", name, t->rank, EP_LIMIT_MAX_RANK);
    }
    if (!st) st = OrtGetDimensions(a)(ti, t->dims, t->rank);
    if (!st) st = OrtGetTensorShapeElementCount(a)(ti, &count);
    if (ti) OrtReleaseTensorTypeAndShapeInfo(a)(ti);
    if (st) return st;
    t->present = 1;
    t->count = (int64_t)count;
    t->dtype = dtype_of(type);
    if (t->dtype == EP_DTYPE_OTHER || t->dtype == EP_DTYPE_BOOL) /* no data to read: the layer names the type */
        return NULL;
    if ((st = OrtGetTensorMutableData(a)((OrtValue *)v, &data))) return st;
    if (!data && count) return fail(k, "input '%s' has no data", name);
    t->bytes = data;
    t->data = t->dtype == EP_DTYPE_FLOAT32 ? (const float *)data : NULL;
    return NULL;
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
        snprintf(k->node, sizeof k->node, "%s node '%s'", ep_op_name(k->desc->op), name);
    else
        snprintf(k->node, sizeof k->node, "%s node (unnamed)", ep_op_name(k->desc->op));
    free(name);
}

static void destroy_kernel(void *p) {
    kernel *k = (kernel *)p;
    if (!k) return;
    if (k->reserved) atomic_fetch_sub(&k->desc->reg->used, k->reserved);
    ep_op_plan_destroy(k->plan);
    free(k);
}

/* When every weight input is a constant initializer: check them now and build the plan once. */
static OrtStatus *prepare_constants(kernel *k, const OrtKernelInfo *info) {
    const OrtApi *a = k->api;
    const ep_op op = k->desc->op;
    ep_tensor w[EP_OP_MAX_INPUTS];
    size_t n_in = 0;
    OrtStatus *st = OrtKernelInfo_GetInputCount(a)(info, &n_in);
    if (st) return st;
    memset(w, 0, sizeof w);
    for (int i = 0; i < ep_op_n_inputs(op); i++) {
        int is_const = 0;
        const OrtValue *v = NULL;
        if (strcmp(ep_op_input_kind(op, i), "weight") || (size_t)i >= n_in) continue; /* left out: absent */
        st = OrtKernelInfoGetConstantInput_tensor(a)(info, (size_t)i, &is_const, &v);
        if (st) { OrtReleaseStatus(a)(st); return NULL; }
        if (!is_const || !v) return NULL; /* fed at run time: checked and planned per run */
        if ((st = view_of(k, v, i, &w[i]))) return st;
    }
    char msg[1100], what[512];
    if (ep_op_check_weights(op, &k->at, w, msg, sizeof msg)) return fail(k, "%s", msg);
    /* the hashed ops' bytes were counted at creation; the spectra's and the sparse plan's size come
     * with the weights */
    if ((op == EP_OP_CirculantMatMul || op == EP_OP_LDRMatMul || op == EP_OP_SparseCodebookMatMul) &&
        (st = reserve(k, ep_op_plan_bytes(op, &k->at, w, what, sizeof what), what)))
        return st;
    return ep_op_plan_create(op, &k->at, w, &k->plan, msg, sizeof msg) ? fail(k, "%s", msg) : NULL;
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    kernel *k = (kernel *)calloc(1, sizeof *k);
    if (!k) return OrtCreateStatus(api)(ORT_FAIL, "edgepack: out of memory creating a kernel");
    k->api = api;
    k->desc = (const op_desc *)op;
    ep_set_num_threads(k->desc->reg->threads); /* plans built here (decoding V) split too */
    set_node_name(k, info);
    char msg[1100], what[512];
    OrtStatus *st = read_attrs(k, info);
    if (!st && ep_op_check_virtual(k->desc->op, &k->at, &k->desc->reg->lim, msg, sizeof msg)) st = fail(k, "%s", msg);
    /* the hashed ops' decoded size is known from the attributes: count it whatever feeds them */
    const ep_op o = k->desc->op;
    if (!st && (o == EP_OP_HashedWeight || o == EP_OP_CodebookWeight || o == EP_OP_HyperWeight ||
                (o == EP_OP_HashedMatMul && k->at.mode == 0)))
        st = reserve(k, ep_op_plan_bytes(o, &k->at, NULL, what, sizeof what), what);
    if (!st) st = prepare_constants(k, info);
    if (st) {
        destroy_kernel(k);
        return st;
    }
    *out = k;
    return NULL;
}

/* ---- compute ------------------------------------------------------------------------------- */

/* The output buffer, checked to be a float32 tensor of exactly y's count before it is written
 * (a pre-bound output of another size or type must not be overrun). */
static OrtStatus *get_output(const kernel *k, OrtKernelContext *ctx, const ep_tensor *y, float **Y) {
    OrtValue *ov = NULL;
    void *data = NULL;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    OrtStatus *st = OrtKernelContext_GetOutput(k->api)(ctx, 0, y->dims, y->rank, &ov);
    if (st) return st;
    if (!ov) return fail(k, "ONNX Runtime gave no output tensor");
    OrtTensorTypeAndShapeInfo *ti = NULL;
    size_t n = 0;
    st = OrtGetTensorTypeAndShape(k->api)(ov, &ti);
    if (!st) st = OrtGetTensorElementType(k->api)(ti, &type);
    if (!st) st = OrtGetTensorShapeElementCount(k->api)(ti, &n);
    if (ti) OrtReleaseTensorTypeAndShapeInfo(k->api)(ti);
    if (st) return st;
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || (int64_t)n != y->count)
        return fail(k, "output tensor has element type %d and %zu values; must be float32 (1) with %lld values",
                    (int)type, n, (long long)y->count);
    if ((st = OrtGetTensorMutableData(k->api)(ov, &data))) return st;
    if (!data && y->count) return fail(k, "output tensor has no data");
    *Y = (float *)data;
    return NULL;
}

static OrtStatus *compute(void *p, OrtKernelContext *ctx) {
    const kernel *k = (const kernel *)p;
    const ep_op op = k->desc->op;
    const registration *r = k->desc->reg;
    ep_tensor in[EP_OP_MAX_INPUTS], y;
    size_t n_in = 0;
    OrtStatus *st = OrtKernelContext_GetInputCount(k->api)(ctx, &n_in);
    if (st) return st;
    memset(in, 0, sizeof in);
    for (int i = 0; i < ep_op_n_inputs(op); i++) {
        const OrtValue *v = NULL;
        if ((size_t)i < n_in && (st = OrtKernelContext_GetInput(k->api)(ctx, (size_t)i, &v))) return st;
        if ((st = view_of(k, v, i, &in[i]))) return st;
    }
    char msg[1100], what[512];
    if (ep_op_check_inputs(op, &k->at, in, msg, sizeof msg) || ep_op_output_shape(op, &k->at, in, &y, msg, sizeof msg) ||
        ep_op_check_output(&r->lim, &y, msg, sizeof msg))
        return fail(k, "%s", msg);
    float *Y = NULL;
    if ((st = get_output(k, ctx, &y, &Y))) return st;
    if (y.count == 0) return NULL;
    /* weights fed at run time: the spectra built for this run must fit what the session has left */
    if (!k->plan && (op == EP_OP_CirculantMatMul || op == EP_OP_LDRMatMul || op == EP_OP_SparseCodebookMatMul) &&
        ep_limits_check_bytes(&r->lim, atomic_load(&r->used), ep_op_plan_bytes(op, &k->at, in, what, sizeof what),
                              what))
        return fail(k, "%s", ep_last_error());
    ep_set_num_threads(r->threads);
    return ep_op_run(op, &k->at, k->plan, in, Y, msg, sizeof msg) ? fail(k, "%s", msg) : NULL;
}

/* ---- op descriptions ----------------------------------------------------------------------- */

static const char *op_name(const OrtCustomOp *op) { return ep_op_name(((const op_desc *)op)->op); }
static const char *op_ep(const OrtCustomOp *op) { (void)op; return NULL; /* CPU */ }
static ONNXTensorElementDataType op_type(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
/* Inputs of any element type: the op layer checks each against the spec (float32, uint8 or int32),
 * so a wrong one gets the message the delegate gives, not ORT's own type error. */
static ONNXTensorElementDataType op_input_type(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
static size_t op_n_inputs(const OrtCustomOp *op) { return (size_t)ep_op_n_inputs(((const op_desc *)op)->op); }
static size_t op_n_outputs(const OrtCustomOp *op) { (void)op; return 1; }
static OrtCustomOpInputOutputCharacteristic op_in_char(const OrtCustomOp *op, size_t i) {
    const ep_op o = ((const op_desc *)op)->op;
    return i < (size_t)ep_op_n_inputs(o) && i >= (size_t)ep_op_n_required(o) ? INPUT_OUTPUT_OPTIONAL
                                                                               : INPUT_OUTPUT_REQUIRED;
}
static OrtCustomOpInputOutputCharacteristic op_out_char(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType op_mem(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }
static int op_one(const OrtCustomOp *op) { (void)op; return 1; }

#define EP_ORT_OP(OP)                                                                               \
    { .base = { .version = EP_ORT_API_VERSION, .GetName = op_name, .GetExecutionProviderType = op_ep, \
                .GetInputType = op_input_type, .GetInputTypeCount = op_n_inputs, .GetOutputType = op_type,  \
                .GetOutputTypeCount = op_n_outputs, .KernelDestroy = destroy_kernel,                  \
                .GetInputCharacteristic = op_in_char, .GetOutputCharacteristic = op_out_char,         \
                .GetInputMemoryType = op_mem, .GetVariadicInputMinArity = op_one,                     \
                .GetVariadicInputHomogeneity = op_one, .GetVariadicOutputMinArity = op_one,           \
                .GetVariadicOutputHomogeneity = op_one, .CreateKernelV2 = create_kernel,              \
                .KernelComputeV2 = compute },                                                         \
      .op = EP_OP_##OP },

static const op_desc g_ops[EP_OP_COUNT] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) EP_ORT_OP(op)
#include "edgepack/ops.inc"
};

/* Limits for the registrations that follow, over the environment's (0: no override). */
static _Atomic int64_t g_max_virtual_weights, g_max_decoded_bytes;
static _Atomic int g_threads;

/* Set (or with 0, clear) the thread count our kernels use in sessions of later RegisterCustomOps
 * calls, instead of $EDGEPACK_NUM_THREADS (default 1); 0 on success, 1 for a negative value.
 * Process-wide like edgepack_ort_set_limits: onnx_session(threads=N) sets it, registers, clears it. */
EP_ORT_EXPORT int edgepack_ort_set_threads(int threads) {
    if (threads < 0) return 1;
    atomic_store(&g_threads, threads);
    return 0;
}
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
    long threads = 1;
    const char *env_threads = getenv("EDGEPACK_NUM_THREADS");
    if (env_threads) {
        char *end;
        threads = strtol(env_threads, &end, 10);
        if (end == env_threads || *end || threads < 1) {
            char msg[256];
            snprintf(msg, sizeof msg, "edgepack: EDGEPACK_NUM_THREADS='%.40s' is not a positive integer "
                     "(the threads our kernels use, e.g. EDGEPACK_NUM_THREADS=2)", env_threads);
            return OrtCreateStatus(api)(ORT_INVALID_ARGUMENT, msg);
        }
    }
    if (atomic_load(&g_threads) > 0) threads = atomic_load(&g_threads);
    const int64_t vw = atomic_load(&g_max_virtual_weights), db = atomic_load(&g_max_decoded_bytes);
    if (vw > 0) lim.max_virtual_weights = vw;
    if (db > 0) lim.max_decoded_bytes = db;
    registration *reg = (registration *)calloc(1, sizeof *reg);
    if (!reg) return OrtCreateStatus(api)(ORT_FAIL, "edgepack: out of memory registering the custom ops");
    memcpy(reg->ops, g_ops, sizeof g_ops);
    reg->lim = lim;
    reg->threads = threads > 64 ? 64 : (int)threads;
    atomic_init(&reg->used, 0);
    reg->next = atomic_load(&g_registrations);
    while (!atomic_compare_exchange_weak(&g_registrations, &reg->next, reg)) {
    }
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = OrtCreateCustomOpDomain(api)(EP_ORT_DOMAIN, &domain);
    for (size_t i = 0; !st && i < EP_OP_COUNT; i++) {
        reg->ops[i].reg = reg;
        st = OrtCustomOpDomain_Add(api)(domain, &reg->ops[i].base);
    }
    if (!st) st = OrtAddCustomOpDomain(api)(options, domain);
    return st;
}
