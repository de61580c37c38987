/* libedgepack_tflite_delegate: the ai.edgepack ops (docs/ops.md) in TensorFlow Lite.
 *
 * Two routes to the same node code:
 *  - an external delegate (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate) that
 *    claims every CUSTOM node named "ai.edgepack.*"; one delegate kernel per partition, whose
 *    tensors produced and consumed inside the partition live in buffers of the kernel;
 *  - plain custom-op registrations (edgepack_tflite_registration), which registrar.c adds to
 *    tflite-runtime 2.14's InterpreterWithCustomOps through its exported MutableOpResolver::AddCustom.
 * A thin adapter over the C op layer (src/ops.c): options are the node's FlexBuffers map, read
 * through an ep_attr_reader at init (any problem is reported at prepare: init cannot fail
 * portably in 2.14); TfLiteTensors become ep_tensor views that the layer checks at prepare and
 * again at invoke before memory is touched; plans (decoded V, FFT spectra) are built once at
 * prepare when the weights are constant tensors, otherwise per invoke.
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

#define MAX_IN EP_OP_MAX_INPUTS
#define PREFIX "ai.edgepack."

typedef struct ep_node {
    ep_op kind;
    char label[200]; /* "HashedMatMul node #3 (output 'Y')", used in every message */
    char err[1100];  /* problem found at init, reported at prepare */
    int n_in, in[MAX_IN], out;
    ep_op_attrs at;
    ep_op_plan *plan; /* built at prepare from constant weights */
    ep_limits lim;
    int64_t reserved;           /* decoded bytes counted against budget_ctx's budget */
    const TfLiteContext *budget_ctx;
} ep_node;

typedef struct itensor { /* a tensor produced and consumed inside one delegate partition */
    int idx;
    size_t rank;
    int64_t dims[EP_LIMIT_MAX_RANK];
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

static void set_label(ep_node *n, TfLiteContext *ctx, int node_index) {
    const char *oname = NULL;
    if (ctx && n->out >= 0 && (size_t)n->out < ctx->tensors_size) oname = ctx->tensors[n->out].name;
    char idx[24] = "";
    if (node_index >= 0) snprintf(idx, sizeof idx, " #%d", node_index);
    snprintf(n->label, sizeof n->label, "%s node%s (output '%.80s')", ep_op_name(n->kind), idx,
             oname ? oname : "?");
}

static int kind_of(const char *custom_name, ep_op *kind) {
    if (!custom_name || strncmp(custom_name, PREFIX, sizeof PREFIX - 1)) return 0;
    for (int k = 0; k < EP_OP_COUNT; k++)
        if (!strcmp(custom_name + sizeof PREFIX - 1, ep_op_name((ep_op)k))) {
            *kind = (ep_op)k;
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
    char why[200], keys[200];
    ep_op_attr_names(n->kind, keys, sizeof keys);
    if (fx_map_open(buf, len, &m, why, sizeof why))
        return ERR("%s (expected a FlexBuffers map with %s)", why, keys);
    const ep_attr_reader reader = {&m, fx_get_int, fx_get_ints, fx_get_float};
    return !ep_op_read_attrs(n->kind, EP_RUNTIME_TFLITE, &reader, &n->at, n->err, sizeof n->err);
}

/* Inputs/outputs of the node; an error goes to n->err unless one is there already. */
static int set_io(ep_node *n, const TfLiteIntArray *ins, const TfLiteIntArray *outs) {
    const int min_in = ep_op_n_required(n->kind), max_in = ep_op_n_inputs(n->kind);
    const int had_err = n->err[0] != 0;
    char keep[sizeof n->err], names[200];
    memcpy(keep, n->err, sizeof keep);
    n->out = outs && outs->size >= 1 ? outs->data[0] : -1;
    n->n_in = 0;
    for (int i = 0; i < MAX_IN; i++) n->in[i] = kTfLiteOptionalTensor;
    size_t len = 0;
    names[0] = 0;
    for (int i = 0; i < max_in && len < sizeof names; i++)
        len += (size_t)snprintf(names + len, sizeof names - len, i ? ", %s" : "%s", ep_op_input_name(n->kind, i));
    int ok = 1;
    if (!ins || !outs) ok = ERR("node has no input/output list");
    else if (outs->size != 1) ok = ERR("has %d outputs; must have exactly 1", outs->size);
    else if (ins->size < min_in || ins->size > max_in)
        ok = ERR("has %d inputs; must have %d..%d (%s)", ins->size, min_in, max_in, names);
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
    ep_op_plan_destroy(n->plan);
    n->plan = NULL;
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

/* TFLite's element type as the op layer's (which checks it against the spec). */
static ep_dtype dtype_of(int type) {
    switch (type) {
    case 1: return EP_DTYPE_FLOAT32;
    case 2: return EP_DTYPE_INT32;
    case 3: return EP_DTYPE_UINT8;
    case 4: return EP_DTYPE_INT64;
    case 6: return EP_DTYPE_BOOL;
    case 7: return EP_DTYPE_INT16;
    case 9: return EP_DTYPE_INT8;
    case 10: return EP_DTYPE_FLOAT16;
    case 11: return EP_DTYPE_FLOAT64;
    default: return EP_DTYPE_OTHER;
    }
}

/* View of input slot i of n (absent: present = 0), and whether it is a constant. need_data: the
 * data must be there (invoke). */
static TfLiteStatus view_of(TfLiteContext *ctx, const part *p, const ep_node *n, int i, int need_data, ep_tensor *t,
                            int *is_const) {
    const char *iname = ep_op_input_name(n->kind, i);
    memset(t, 0, sizeof *t);
    *is_const = 0;
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
    t->dtype = dtype_of(ts->type);
    const size_t item = ep_dtype_size(t->dtype);
    if (!ts->dims || ts->dims->size < 0 || ts->dims->size > EP_LIMIT_MAX_RANK)
        return fail(ctx, n, "input '%s' (tensor %d) has no shape or a rank above %d", iname, idx, EP_LIMIT_MAX_RANK);
    t->present = 1;
    t->rank = (size_t)ts->dims->size;
    t->count = 1;
    for (size_t d = 0; d < t->rank; d++) {
        t->dims[d] = ts->dims->data[d];
        if (t->dims[d] < 0) return fail(ctx, n, "input '%s' has a negative dim %lld", iname, (long long)t->dims[d]);
        if (t->dims[d] && t->count > INT64_MAX / 8 / t->dims[d])
            return fail(ctx, n, "input '%s' has too many elements", iname);
        t->count *= t->dims[d];
    }
    const int at = ts->allocation_type;
    if (!is_read_only(at) && !is_writable(at))
        return fail(ctx, n, "input '%s' (tensor %d) has allocation type %s; an input must be a constant "
                    "(kTfLiteMmapRo, kTfLitePersistentRo) or an arena, dynamic or custom buffer", iname, idx,
                    alloc_name(at));
    *is_const = is_read_only(at) && ts->data;
    if (!item || t->dtype == EP_DTYPE_BOOL) return kTfLiteOk; /* no data to read: the layer names the type */
    t->bytes = ts->data;
    t->data = t->dtype == EP_DTYPE_FLOAT32 ? (const float *)ts->data : NULL;
    if (need_data || *is_const) {
        char s[256];
        ep_tensor_dims_str(t, s, sizeof s);
        if (!ts->data && t->count) return fail(ctx, n, "input '%s' (tensor %d) has no data", iname, idx);
        if (ts->bytes != (size_t)t->count * item)
            return fail(ctx, n, "input '%s' (tensor %d, %s) holds %zu bytes; its shape %s needs exactly %lld",
                        iname, idx, alloc_name(at), ts->bytes, s, (long long)t->count * (long long)item);
    }
    return kTfLiteOk;
}

/* All inputs of n, checked by the op layer (shapes; data too when need_data), and its output's
 * shape y (a matmul's fewer than 2^31 elements). *weights_const: every weight given is a constant. */
static TfLiteStatus gather(TfLiteContext *ctx, const part *p, const ep_node *n, int need_data, ep_tensor *in,
                           ep_tensor *y, int *weights_const) {
    char msg[1100];
    *weights_const = 1;
    for (int i = 0; i < MAX_IN; i++) {
        int is_const = 0;
        if (view_of(ctx, p, n, i, need_data, &in[i], &is_const)) return kTfLiteError;
        if (in[i].present && !is_const && i < ep_op_n_inputs(n->kind) && !strcmp(ep_op_input_kind(n->kind, i), "weight"))
            *weights_const = 0;
    }
    if (ep_op_check_inputs(n->kind, &n->at, in, msg, sizeof msg) || ep_op_output_shape(n->kind, &n->at, in, y, msg,
                                                                                        sizeof msg))
        return fail(ctx, n, "%s", msg);
    if (n->kind != EP_OP_HashedWeight && n->kind != EP_OP_CodebookWeight && n->kind != EP_OP_HyperWeight &&
        y->count > INT32_MAX) /* decoders: their limits */
        return fail(ctx, n, "output 'Y' would have more than 2^31 elements");
    return kTfLiteOk;
}

/* The node's virtual weights, its decoded bytes (counted against the interpreter's budget) and
 * its output's bytes, all checked before anything is allocated. */
static TfLiteStatus check_limits(TfLiteContext *ctx, ep_node *n, const ep_tensor *in, const ep_tensor *y) {
    char msg[1100], what[512];
    if (ep_op_check_virtual(n->kind, &n->at, &n->lim, msg, sizeof msg)) return fail(ctx, n, "%s", msg);
    const int rc = budget_reserve(n, ctx, ep_op_plan_bytes(n->kind, &n->at, in, what, sizeof what), what);
    if (rc < 0) return fail(ctx, n, "out of memory");
    if (rc) return fail(ctx, n, "%s", ep_last_error());
    if (ep_op_check_output(&n->lim, y, msg, sizeof msg)) return fail(ctx, n, "%s", msg);
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
    ep_tensor in[MAX_IN], y;
    int weights_const = 0;
    char msg[1100];
    if (gather(ctx, p, n, 0, in, &y, &weights_const) || check_limits(ctx, n, in, &y)) return kTfLiteError;
    if (is_part_output(p, n->out) && check_output(ctx, n)) return kTfLiteError;
    if (!n->plan && weights_const && ep_op_plan_create(n->kind, &n->at, in, &n->plan, msg, sizeof msg))
        return fail(ctx, n, "%s", msg);
    const size_t count = (size_t)y.count;
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
        it->rank = y.rank;
        memcpy(it->dims, y.dims, sizeof(int64_t) * y.rank);
        return kTfLiteOk;
    }
    TfLiteTensor *ot = &ctx->tensors[n->out];
    TfLiteIntArray *sz = (TfLiteIntArray *)malloc(sizeof(int) * (y.rank + 1)); /* ResizeTensor owns it */
    if (!sz) return fail(ctx, n, "out of memory");
    sz->size = (int)y.rank;
    for (size_t d = 0; d < y.rank; d++) sz->data[d] = (int)y.dims[d];
    return ctx->ResizeTensor(ctx, ot, sz);
}

static TfLiteStatus invoke_node(TfLiteContext *ctx, part *p, const ep_node *n) {
    ep_tensor in[MAX_IN], y;
    int weights_const = 0;
    char msg[1100];
    if (n->err[0]) return fail(ctx, n, "%s", n->err);
    if (gather(ctx, p, n, 1, in, &y, &weights_const)) return kTfLiteError;
    const size_t count = (size_t)y.count;
    float *Y = NULL;
    itensor *it = find_internal(p, n->out);
    if (it) {
        if (it->cap < count) return fail(ctx, n, "intermediate output was not prepared for this shape");
        Y = it->data;
        it->rank = y.rank;
        memcpy(it->dims, y.dims, sizeof(int64_t) * y.rank);
    } else {
        if (check_output(ctx, n)) return kTfLiteError;
        const TfLiteTensor *ot = &ctx->tensors[n->out];
        if ((count && !ot->data) || ot->bytes != count * sizeof(float))
            return fail(ctx, n, "output (tensor %d) holds %zu bytes%s; it must be an allocated buffer of exactly %zu "
                        "(%zu float32 values)", n->out, ot->bytes, ot->data ? "" : " and no data", count * 4, count);
        Y = (float *)ot->data;
    }
    if (!count) return kTfLiteOk;
    /* the interpreter's thread count (num_threads; -1: not set, one thread) for our kernels too */
    ep_set_num_threads(ctx->recommended_num_threads > 0 ? ctx->recommended_num_threads : 1);
    /* weights computed at run time (no plan from prepare): the layer plans for this run only */
    return ep_op_run(n->kind, &n->at, n->plan, in, Y, msg, sizeof msg) ? fail(ctx, n, "%s", msg) : kTfLiteOk;
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
            int len = snprintf(n->err, sizeof n->err, "unknown custom op '%.100s'; this library implements",
                               reg->custom_name ? reg->custom_name : "?");
            for (int k = 0; k < EP_OP_COUNT && len > 0 && (size_t)len < sizeof n->err; k++)
                len += snprintf(n->err + len, sizeof n->err - (size_t)len, "%s " PREFIX "%s",
                                k == 0 ? "" : k == EP_OP_COUNT - 1 ? " and" : ",", ep_op_name((ep_op)k));
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

static void *op_init(ep_op kind, const char *buffer, size_t length) {
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

#define EP_OP(op, n_inputs, n_required, n_attributes) \
    static void *init_##op(TfLiteContext *c, const char *b, size_t l) { (void)c; return op_init(EP_OP_##op, b, l); }
#include "edgepack/ops.inc"

#define EP_OP(op, n_inputs, n_required, n_attributes)                                                \
    {.init = init_##op, .free = op_free, .prepare = op_prepare, .invoke = op_invoke,                  \
     .builtin_code = kTfLiteBuiltinCustom, .custom_name = PREFIX #op, .version = 1},
static const TfLiteRegistration g_regs[EP_OP_COUNT] = {
#include "edgepack/ops.inc"
};

EP_TFLITE_EXPORT const TfLiteRegistration *edgepack_tflite_registration(const char *custom_name) {
    ep_op k;
    return kind_of(custom_name, &k) ? &g_regs[k] : NULL;
}
