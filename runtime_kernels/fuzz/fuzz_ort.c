/* libFuzzer harness: the ORT custom-op library (ort/edgepack_ort.c) through a fake OrtApi table
 * that implements just the slots the library calls, with ONNX Runtime's semantics (scalar
 * attribute getters check the type, array getters return the list field of any attribute,
 * "buffer too small" errors, optional inputs as NULL values, statuses and shape infos that
 * must be released). Every other slot aborts, so a new dependency is noticed. The op, its
 * attributes, its inputs (type, shape, constant initializer or fed at run time) come from the
 * input; the kernel is created, run (once or twice) and destroyed. Checked: ASan/UBSan/LSan
 * (leaked statuses too), and that compute never writes into its inputs. */
#include "fuzz_common.h"

#include "edgepack/kernels.h"
#include "edgepack/ops.h"
#include "ort_abi.h"

#define N_SLOTS 260
#define MAX_IN 6
#define CAP (1 << 14) /* floats in one tensor */

OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base);

static int g_verbose; /* FUZZ_VERBOSE=1: print the statuses (to triage an input) */

/* ---- fake objects ------------------------------------------------------------------------ */
struct OrtStatus {
    OrtErrorCode code;
    char *msg;
};

typedef struct fvalue { /* an OrtValue: a dense tensor */
    ONNXTensorElementDataType type;
    size_t rank;
    int64_t dims[24];
    size_t count;
    void *data;
} fvalue;

typedef struct fshape { /* OrtTensorTypeAndShapeInfo */
    ONNXTensorElementDataType type;
    size_t rank;
    int64_t dims[24];
    size_t count;
} fshape;

enum { A_INT, A_FLOAT, A_STRING, A_INTS, A_FLOATS };
typedef struct fattr {
    const char *name;
    int type;
    int64_t i;
    float f;
    char s[32];
    int64_t ints[20];
    float floats[20];
    size_t n;
} fattr;

typedef struct finfo { /* OrtKernelInfo and OrtKernelContext in one */
    fattr attrs[8];
    int n_attrs;
    const char *node_name;
    fvalue *in[MAX_IN]; /* NULL: a missing optional input */
    int is_const[MAX_IN];
    size_t n_in;
    fvalue *out;
} finfo;

/* A heap status, as ORT's: the library must release every one it gets. */
static OrtStatus *status(OrtErrorCode code, const char *msg) {
    OrtStatus *s = (OrtStatus *)malloc(sizeof *s);
    s->code = code;
    s->msg = strdup(msg);
    return s;
}

/* ---- the slots the library uses ---------------------------------------------------------- */
static OrtStatus *f_CreateStatus(OrtErrorCode code, const char *msg) { return status(code, msg); }
static OrtErrorCode f_GetErrorCode(const OrtStatus *s) { return s->code; }
static const char *f_GetErrorMessage(const OrtStatus *s) { return s->msg; }
static void f_ReleaseStatus(void *p) {
    OrtStatus *s = (OrtStatus *)p;
    if (s) free(s->msg), free(s);
}

#define MAX_OPS 16
static const OrtCustomOp *g_ops[MAX_OPS];
static int g_nops;
static OrtStatus *f_CreateCustomOpDomain(const char *name, OrtCustomOpDomain **out) {
    FZ_ASSERT(!strcmp(name, "ai.edgepack"), "domain '%s'", name);
    static int domain;
    *out = (OrtCustomOpDomain *)(void *)&domain;
    return NULL;
}
static OrtStatus *f_CustomOpDomain_Add(OrtCustomOpDomain *d, const OrtCustomOp *op) {
    (void)d;
    if (g_nops < MAX_OPS) g_ops[g_nops++] = op;
    return NULL;
}
static OrtStatus *f_AddCustomOpDomain(OrtSessionOptions *o, OrtCustomOpDomain *d) {
    (void)o, (void)d;
    return NULL;
}

/* The node's attribute called name, or NULL. */
static const fattr *find_attr(const OrtKernelInfo *info, const char *name) {
    const finfo *k = (const finfo *)(const void *)info;
    for (int i = 0; i < k->n_attrs; i++)
        if (!strcmp(k->attrs[i].name, name)) return &k->attrs[i];
    return NULL;
}

static OrtStatus *f_GetAttribute_float(const OrtKernelInfo *info, const char *name, float *out) {
    const fattr *a = find_attr(info, name);
    if (!a) return status(ORT_FAIL, "No attribute with this name is defined.");
    if (a->type != A_FLOAT) return status(ORT_FAIL, "Attribute name and type don't match");
    *out = a->f;
    return NULL;
}

static OrtStatus *f_GetAttribute_int64(const OrtKernelInfo *info, const char *name, int64_t *out) {
    const fattr *a = find_attr(info, name);
    if (!a) return status(ORT_FAIL, "No attribute with this name is defined.");
    if (a->type != A_INT) return status(ORT_FAIL, "Attribute name and type don't match");
    *out = a->i;
    return NULL;
}

/* ORT's copy-out convention: NULL out asks for the size; a small buffer is an error. */
static OrtStatus *copy_out(void *out, size_t *size, const void *src, size_t n, size_t elem) {
    if (!out) {
        *size = n;
        return NULL;
    }
    if (*size < n) {
        *size = n;
        return status(ORT_INVALID_ARGUMENT, "Result buffer is not large enough");
    }
    if (n) memcpy(out, src, n * elem);
    *size = n;
    return NULL;
}

static OrtStatus *f_GetAttribute_string(const OrtKernelInfo *info, const char *name, char *out, size_t *size) {
    const fattr *a = find_attr(info, name);
    if (!a) return status(ORT_FAIL, "No attribute with this name is defined.");
    if (a->type != A_STRING) return status(ORT_FAIL, "Attribute name and type don't match");
    return copy_out(out, size, a->s, strlen(a->s) + 1, 1);
}

static OrtStatus *f_GetAttributeArray_float(const OrtKernelInfo *info, const char *name, float *out, size_t *size) {
    const fattr *a = find_attr(info, name);
    if (!a) return status(ORT_FAIL, "No attribute with this name is defined.");
    return copy_out(out, size, a->floats, a->type == A_FLOATS ? a->n : 0, sizeof(float));
}

static OrtStatus *f_GetAttributeArray_int64(const OrtKernelInfo *info, const char *name, int64_t *out, size_t *size) {
    const fattr *a = find_attr(info, name);
    if (!a) return status(ORT_FAIL, "No attribute with this name is defined.");
    return copy_out(out, size, a->ints, a->type == A_INTS ? a->n : 0, sizeof(int64_t));
}

static OrtStatus *f_KernelInfo_GetInputCount(const OrtKernelInfo *info, size_t *out) {
    *out = ((const finfo *)(const void *)info)->n_in;
    return NULL;
}

static OrtStatus *f_KernelInfo_GetNodeName(const OrtKernelInfo *info, char *out, size_t *size) {
    const char *name = ((const finfo *)(const void *)info)->node_name;
    return copy_out(out, size, name, strlen(name) + 1, 1);
}

static OrtStatus *f_GetConstantInput(const OrtKernelInfo *info, size_t i, int *is_const, const OrtValue **out) {
    const finfo *k = (const finfo *)(const void *)info;
    *is_const = i < k->n_in && k->in[i] && k->is_const[i];
    *out = *is_const ? (const OrtValue *)(const void *)k->in[i] : NULL;
    return NULL;
}

static OrtStatus *f_KernelContext_GetInputCount(const OrtKernelContext *ctx, size_t *out) {
    *out = ((const finfo *)(const void *)ctx)->n_in;
    return NULL;
}

static OrtStatus *f_KernelContext_GetOutputCount(const OrtKernelContext *ctx, size_t *out) {
    (void)ctx;
    *out = 1;
    return NULL;
}

static OrtStatus *f_KernelContext_GetInput(const OrtKernelContext *ctx, size_t i, const OrtValue **out) {
    const finfo *k = (const finfo *)(const void *)ctx;
    *out = i < k->n_in ? (const OrtValue *)(const void *)k->in[i] : NULL;
    return NULL;
}

/* Allocates the output (exactly its element count) the first time; later calls must ask for the
 * same shape, as ORT's allocation planner would give back the same buffer. */
static OrtStatus *f_KernelContext_GetOutput(OrtKernelContext *ctx, size_t i, const int64_t *dims, size_t rank,
                                            OrtValue **out) {
    finfo *k = (finfo *)(void *)ctx;
    if (i != 0) return status(ORT_INVALID_ARGUMENT, "output index out of range");
    if (rank > 24) return status(ORT_INVALID_ARGUMENT, "rank too large");
    size_t count = 1;
    for (size_t d = 0; d < rank; d++) {
        if (dims[d] < 0) return status(ORT_INVALID_ARGUMENT, "negative output dim");
        if (dims[d] && count > CAP / (size_t)dims[d]) return status(ORT_FAIL, "cannot allocate the output");
        count *= (size_t)dims[d];
    }
    if (k->out) {
        if (k->out->rank != rank || memcmp(k->out->dims, dims, sizeof(int64_t) * rank))
            return status(ORT_FAIL, "output shape differs from the first request");
    } else {
        k->out = (fvalue *)calloc(1, sizeof(fvalue));
        k->out->type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        k->out->rank = rank;
        memcpy(k->out->dims, dims, sizeof(int64_t) * rank);
        k->out->count = count;
        k->out->data = count ? malloc(count * sizeof(float)) : NULL;
    }
    *out = (OrtValue *)(void *)k->out;
    return NULL;
}

static OrtStatus *f_GetTensorTypeAndShape(const OrtValue *v, OrtTensorTypeAndShapeInfo **out) {
    const fvalue *t = (const fvalue *)(const void *)v;
    fshape *s = (fshape *)malloc(sizeof *s);
    s->type = t->type, s->rank = t->rank, s->count = t->count;
    memcpy(s->dims, t->dims, sizeof s->dims);
    *out = (OrtTensorTypeAndShapeInfo *)(void *)s;
    return NULL;
}
static void f_ReleaseTensorTypeAndShapeInfo(void *p) { free(p); }
static OrtStatus *f_GetTensorElementType(const OrtTensorTypeAndShapeInfo *i, ONNXTensorElementDataType *out) {
    *out = ((const fshape *)(const void *)i)->type;
    return NULL;
}
static OrtStatus *f_GetDimensionsCount(const OrtTensorTypeAndShapeInfo *i, size_t *out) {
    *out = ((const fshape *)(const void *)i)->rank;
    return NULL;
}
static OrtStatus *f_GetDimensions(const OrtTensorTypeAndShapeInfo *i, int64_t *out, size_t n) {
    const fshape *s = (const fshape *)(const void *)i;
    memcpy(out, s->dims, sizeof(int64_t) * (n < s->rank ? n : s->rank));
    return NULL;
}
static OrtStatus *f_GetTensorShapeElementCount(const OrtTensorTypeAndShapeInfo *i, size_t *out) {
    *out = ((const fshape *)(const void *)i)->count;
    return NULL;
}
static OrtStatus *f_GetTensorMutableData(OrtValue *v, void **out) {
    *out = ((fvalue *)(void *)v)->data;
    return NULL;
}

/* Every slot the library is not expected to call. */
static void f_unimplemented(void) {
    fprintf(stderr, "fuzz_ort: the library called an OrtApi slot the fake does not implement\n");
    abort();
}

static ort_fn g_api[N_SLOTS];
static const OrtApi *get_api(uint32_t version) {
    (void)version;
    return (const OrtApi *)(const void *)g_api;
}
static const char *get_version(void) { return "1.99.0-fake"; }

#define SLOT(i, fn) g_api[i] = (ort_fn)(void (*)(void))(fn)
/* The table: the slots of ort_abi.h the library uses, the rest trap. */
static void init_api(void) {
    for (int i = 0; i < N_SLOTS; i++) g_api[i] = f_unimplemented;
    SLOT(0, f_CreateStatus);
    SLOT(1, f_GetErrorCode);
    SLOT(2, f_GetErrorMessage);
    SLOT(26, f_CreateCustomOpDomain);
    SLOT(27, f_CustomOpDomain_Add);
    SLOT(28, f_AddCustomOpDomain);
    SLOT(51, f_GetTensorMutableData);
    SLOT(60, f_GetTensorElementType);
    SLOT(61, f_GetDimensionsCount);
    SLOT(62, f_GetDimensions);
    SLOT(64, f_GetTensorShapeElementCount);
    SLOT(65, f_GetTensorTypeAndShape);
    SLOT(85, f_GetAttribute_float);
    SLOT(86, f_GetAttribute_int64);
    SLOT(87, f_GetAttribute_string);
    SLOT(88, f_KernelContext_GetInputCount);
    SLOT(89, f_KernelContext_GetOutputCount);
    SLOT(90, f_KernelContext_GetInput);
    SLOT(91, f_KernelContext_GetOutput);
    SLOT(93, f_ReleaseStatus);
    SLOT(99, f_ReleaseTensorTypeAndShapeInfo);
    SLOT(162, f_GetAttributeArray_float);
    SLOT(163, f_GetAttributeArray_int64);
    SLOT(230, f_KernelInfo_GetInputCount);
    SLOT(244, f_KernelInfo_GetNodeName);
    SLOT(249, f_GetConstantInput);
}

/* Registers the ops once, as ORT does per session options. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_set_limits();
    g_verbose = getenv("FUZZ_VERBOSE") != NULL;
    init_api();
    static const OrtApiBase base = {get_api, get_version};
    static int options;
    OrtStatus *st = RegisterCustomOps((OrtSessionOptions *)(void *)&options, &base);
    FZ_ASSERT(!st && g_nops == EP_OP_COUNT, "RegisterCustomOps failed (%s) or added %d ops", st ? st->msg : "ok", g_nops);
    return 0;
}

/* ---- the input --------------------------------------------------------------------------- */
#define N_ATTR_NAMES 15
static const char *const ATTR_NAMES[N_ATTR_NAMES] = {"in_features", "out_features", "num_hashes", "seed", "signed",
                                                     "mode", "shape", "bogus", "", "Shape", "bits", "activation",
                                                     "points", "group", "rings"};
static const int64_t HOSTILE[16] = {0, -1, -7, INT64_MIN, INT64_MAX, INT32_MAX, (int64_t)INT32_MAX + 1,
                                    (int64_t)UINT32_MAX, (int64_t)UINT32_MAX + 1, (int64_t)1 << 40,
                                    (int64_t)1 << 62, 65536, 1 << 20, 4096, 1 << 28, 64};

/* A small int (-8..215), a hostile value (0xF0..0xFF) or 8 raw bytes (0xEF). */
static int64_t read_int(fz *in) {
    const uint8_t b = fz_u8(in);
    if (b >= 0xF0) return HOSTILE[b & 15];
    if (b == 0xEF) return (int64_t)fz_u64(in);
    return (int64_t)b - 8;
}

/* One attribute: a name (known, unknown or empty), a type and a value. */
static void read_attr(fz *in, fattr *a) {
    a->name = ATTR_NAMES[fz_u8(in) % N_ATTR_NAMES];
    a->type = fz_u8(in) % 5;
    switch (a->type) {
    case A_INT: a->i = read_int(in); break;
    case A_FLOAT: a->f = (float)fz_u8(in) / 4.0f; break;
    case A_STRING: {
        size_t n = fz_u8(in) % sizeof a->s, got;
        const uint8_t *p = fz_bytes(in, n, &got);
        memcpy(a->s, p, got);
        a->s[got] = 0;
        break;
    }
    default:
        a->n = fz_u8(in) % 20;
        for (size_t i = 0; i < a->n; i++) {
            if (a->type == A_INTS) a->ints[i] = read_int(in);
            else a->floats[i] = (float)fz_u8(in) / 4.0f;
        }
    }
}

static const ONNXTensorElementDataType TYPES[8] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
    7 /* int64 */, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};

static size_t elem_size(ONNXTensorElementDataType t) {
    return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ? 1 : t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ||
                                                          t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? 4 : 8;
}

/* One input tensor (type: bits 2-3 and 7 of its first byte); 0 when it would hold more than CAP
 * values. float32 data from a seed, uint8 / int32 data spelled out by the input (codebook indices,
 * row pointers, gaps), the others filled with 0x3F bytes. */
static int read_value(fz *in, fvalue *v) {
    const uint8_t k = fz_u8(in);
    v->type = TYPES[(k >> 2 & 3) | (k >> 5 & 4)];
    const int r = k >> 4 & 7;
    v->rank = r <= 4 ? (size_t)r : 16 + (size_t)r;
    v->count = 1;
    for (size_t d = 0; d < v->rank; d++) {
        v->dims[d] = fz_u8(in) % 40;
        if (v->dims[d] && v->count > CAP / (size_t)v->dims[d]) return 0;
        v->count *= (size_t)v->dims[d];
    }
    const size_t elem = elem_size(v->type);
    v->data = v->count ? malloc(v->count * elem) : NULL;
    if (v->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        fz_fill_seeded((float *)v->data, v->count, fz_u8(in));
    } else if (v->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || v->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
        for (size_t i = 0; i < v->count * elem; i++) ((uint8_t *)v->data)[i] = fz_u8(in);
    } else if (v->count) {
        memset(v->data, 0x3F, v->count * elem);
    }
    return 1;
}

/* Release a status the library returned (printing it with FUZZ_VERBOSE). */
static void release(const char *what, OrtStatus *st) {
    if (g_verbose) fprintf(stderr, "%s: %s\n", what, st ? st->msg : "ok");
    f_ReleaseStatus(st);
}

/* One KernelComputeV2 call, checking that the inputs stay unchanged. */
static void run_compute(const OrtCustomOp *op, void *kernel, finfo *k) {
    void *copy[MAX_IN];
    for (size_t i = 0; i < k->n_in; i++) { /* compute must not write its inputs */
        const fvalue *v = k->in[i];
        copy[i] = v && v->count ? malloc(v->count * 8) : NULL;
        if (copy[i]) memcpy(copy[i], v->data, v->count * elem_size(v->type));
    }
    release("compute", op->KernelComputeV2(kernel, (OrtKernelContext *)(void *)k));
    for (size_t i = 0; i < k->n_in; i++) {
        const fvalue *v = k->in[i];
        if (copy[i])
            FZ_ASSERT(!memcmp(copy[i], v->data, v->count * elem_size(v->type)),
                      "compute wrote into input %zu", i);
        free(copy[i]);
    }
}

/* op, flags (bit 0: compute twice; bits 2-3: node name), attributes, inputs. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz in = {data, size};
    finfo k;
    memset(&k, 0, sizeof k);
    const OrtCustomOp *op = g_ops[fz_u8(&in) % g_nops]; /* every op, MFCC included */
    const uint8_t flags = fz_u8(&in);
    static const char *const NODE_NAMES[4] = {"", "node_0", "a node with a rather long name for the message", "n"};
    k.node_name = NODE_NAMES[flags >> 2 & 3];
    k.n_attrs = fz_u8(&in) % 9;
    for (int i = 0; i < k.n_attrs; i++) read_attr(&in, &k.attrs[i]);
    k.n_in = fz_u8(&in) % (MAX_IN + 1);
    int ok = 1;
    for (size_t i = 0; i < k.n_in; i++) {
        const uint8_t m = fz_u8(&in);
        k.is_const[i] = m >> 1 & 1;
        if (!(m & 1)) continue; /* a missing optional input */
        k.in[i] = (fvalue *)calloc(1, sizeof(fvalue));
        if (!read_value(&in, k.in[i])) ok = 0;
    }
    if (ok) {
        void *kernel = NULL;
        OrtStatus *st = op->CreateKernelV2(op, (const OrtApi *)(const void *)g_api,
                                           (const OrtKernelInfo *)(const void *)&k, &kernel);
        if (st) {
            FZ_ASSERT(st->msg && *st->msg, "an error status without a message");
            release("create", st);
        } else {
            run_compute(op, kernel, &k);
            if (flags & 1) run_compute(op, kernel, &k);
            op->KernelDestroy(kernel);
        }
    }
    for (size_t i = 0; i < k.n_in; i++)
        if (k.in[i]) free(k.in[i]->data), free(k.in[i]);
    if (k.out) free(k.out->data), free(k.out);
    return 0;
}
