/* The C op layer (include/edgepack/ops.h): one reading of the attributes, one set of input checks
 * and messages, the output shape, decoded bytes, plan and run of every ai.edgepack op, driven by
 * the generated ops.inc. A new op adds its case to the switches below (docs/ops.md). */
#include "edgepack/ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define U32_MAX_I64 ((int64_t)0xFFFFFFFF)

_Static_assert(EP_LIMIT_MAX_HASHES == EP_MAX_HASHES, "ops.inc MAX_HASHES differs from EP_MAX_HASHES in kernels.h");
_Static_assert(EP_LIMIT_MAX_RANK >= 1, "ops.inc MAX_RANK must allow a 1-D shape");
/* kernels.c checks num_buckets, recon's H and FFT sizes with EP_LIMIT_*; its messages say these: */
_Static_assert(EP_LIMIT_MAX_BUCKETS == INT32_MAX, "kernels.c says num_buckets < 2^31");
_Static_assert(EP_LIMIT_MIN_POW2 == 4 && EP_LIMIT_MAX_POW2 == 1 << 30, "kernels.c says FFT sizes in [4, 2^30]");
/* kernels.c's ep_limits_from_env defaults are ops.inc's; kernels.h's public constants must agree */
_Static_assert(EP_LIMIT_DEFAULT_MAX_VIRTUAL_WEIGHTS == EP_DEFAULT_MAX_VIRTUAL_WEIGHTS &&
                   EP_LIMIT_DEFAULT_MAX_DECODED_BYTES == EP_DEFAULT_MAX_DECODED_BYTES,
               "kernels.h's EP_DEFAULT_MAX_* differ from op_spec.py's DEFAULT_MAX_* limits");
_Static_assert(EP_LIMIT_MFCC_MAX_FFT == EP_MFCC_MAX_FFT && EP_LIMIT_MFCC_MAX_MEL_BINS == EP_MFCC_MAX_MEL_BINS,
               "mfcc.h's EP_MFCC_MAX_* differ from op_spec.py's MFCC_MAX_* limits");

typedef struct attr_spec {
    ep_op op;
    const char *name;
    int is_ints, required;
    long long def, lo[2], hi[2]; /* [EP_RUNTIME_ORT], [EP_RUNTIME_TFLITE] */
} attr_spec;

static const attr_spec ATTRS[] = {
#define EP_OP_ATTR(op, name, is_ints, required, def, ort_lo, ort_hi, tflite_lo, tflite_hi) \
    {EP_OP_##op, name, is_ints, required, def, {ort_lo, tflite_lo}, {ort_hi, tflite_hi}},
#include "edgepack/ops.inc"
};

static const char *const NAMES[EP_OP_COUNT] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) #op,
#include "edgepack/ops.inc"
};

const char *ep_op_name(ep_op op) { return (unsigned)op < EP_OP_COUNT ? NAMES[op] : NULL; }

static int say(char *msg, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (cap) vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return 1;
}

/* An int attribute: its value, the default when it is optional and absent, within [lo, hi]. */
static int read_int(const attr_spec *a, ep_runtime rt, const ep_attr_reader *r, int64_t *v, char *msg, size_t cap) {
    char kind[96] = "another type";
    const long long lo = a->lo[rt], hi = a->hi[rt];
    switch (r->get_int(r->ctx, a->name, v, kind, sizeof kind)) {
    case EP_ATTR_WRONG_TYPE: return say(msg, cap, "attribute '%s' must be an int, got %s", a->name, kind);
    case EP_ATTR_MISSING:
        if (a->required)
            return say(msg, cap, "missing required int attribute '%s' (valid: %lld..%lld)", a->name, lo, hi);
        *v = a->def;
        break;
    case EP_ATTR_FOUND: break;
    }
    if (*v < lo || *v > hi)
        return say(msg, cap, "attribute '%s' = %lld; must be in [%lld, %lld]", a->name, (long long)*v, lo, hi);
    return 0;
}

/* A shape-like ints attribute: 1..MAX_RANK dims, each within [lo, hi], the product of the dims
 * after the first < 2^32 (the columns of a hashed weight). */
static int read_dims(const attr_spec *a, ep_runtime rt, const ep_attr_reader *r, int64_t *dims, size_t *rank,
                     char *msg, size_t cap) {
    char kind[96] = "another type";
    const long long lo = a->lo[rt], hi = a->hi[rt];
    size_t n = 0;
    switch (r->get_ints(r->ctx, a->name, dims, EP_LIMIT_MAX_RANK, &n, kind, sizeof kind)) {
    case EP_ATTR_WRONG_TYPE:
        return say(msg, cap, "attribute '%s' must be ints (1..%d values), got %s", a->name, EP_LIMIT_MAX_RANK, kind);
    case EP_ATTR_MISSING:
        return say(msg, cap, "missing required ints attribute '%s' (1..%d values)", a->name, EP_LIMIT_MAX_RANK);
    case EP_ATTR_FOUND: break;
    }
    if (n < 1 || n > EP_LIMIT_MAX_RANK)
        return say(msg, cap, "attribute '%s' has %zu values; must have 1..%d", a->name, n, EP_LIMIT_MAX_RANK);
    int64_t cols = 1;
    for (size_t d = 0; d < n; d++) {
        if (dims[d] < lo || dims[d] > hi || dims[d] < 1 || (d > 0 && cols > U32_MAX_I64 / dims[d]))
            return say(msg, cap, "attribute '%s' dim %zu = %lld; every dim must be in [%lld, %lld], with the "
                       "product of the dims after the first < 2^32", a->name, d, (long long)dims[d], lo, hi);
        if (d > 0) cols *= dims[d];
    }
    *rank = n;
    return 0;
}

/* An MFCC attribute (already within its range, so it fits int32) into the front end's config. */
static void mfcc_field(ep_mfcc_config *c, const char *name, int64_t v) {
    if (!strcmp(name, "sample_rate")) c->sample_rate = (int32_t)v;
    else if (!strcmp(name, "window_length")) c->window_length = (int32_t)v;
    else if (!strcmp(name, "hop_length")) c->hop_length = (int32_t)v;
    else if (!strcmp(name, "fft_length")) c->fft_length = (int32_t)v;
    else if (!strcmp(name, "num_mel_bins")) c->num_mel_bins = (int32_t)v;
    else if (!strcmp(name, "num_coefficients")) c->num_coefficients = (int32_t)v;
    else if (!strcmp(name, "lower_hz")) c->lower_hz = (float)v;
    else if (!strcmp(name, "upper_hz")) c->upper_hz = (float)v;
    c->log_offset = 1e-6f;
}

/* The MFCC rules between attributes (each alone is within its range). */
static int check_mfcc(const ep_mfcc_config *c, char *msg, size_t cap) {
    if (c->fft_length & (c->fft_length - 1))
        return say(msg, cap, "attribute 'fft_length' = %d; must be a power of two", c->fft_length);
    if (c->window_length > c->fft_length)
        return say(msg, cap, "attribute 'window_length' = %d; must be <= fft_length = %d", c->window_length,
                   c->fft_length);
    if (c->num_coefficients > c->num_mel_bins)
        return say(msg, cap, "attribute 'num_coefficients' = %d; must be <= num_mel_bins = %d", c->num_coefficients,
                   c->num_mel_bins);
    if (!(c->lower_hz < c->upper_hz) || 2.0 * c->upper_hz > (double)c->sample_rate)
        return say(msg, cap, "attributes lower_hz = %.0f, upper_hz = %.0f; need lower_hz < upper_hz <= sample_rate / 2 "
                   "= %d / 2", (double)c->lower_hz, (double)c->upper_hz, c->sample_rate);
    return 0;
}

int ep_op_read_attrs(ep_op op, ep_runtime rt, const ep_attr_reader *r, ep_op_attrs *out, char *msg, size_t cap) {
    if ((unsigned)op >= EP_OP_COUNT || (rt != EP_RUNTIME_ORT && rt != EP_RUNTIME_TFLITE) || !r || !out)
        return say(msg, cap, "internal error: bad arguments to ep_op_read_attrs");
    memset(out, 0, sizeof *out);
    int64_t K = 1, seed = 0, sgn = 1;
    for (size_t i = 0; i < sizeof ATTRS / sizeof ATTRS[0]; i++) {
        const attr_spec *a = &ATTRS[i];
        if (a->op != op) continue;
        if (a->is_ints) {
            if (read_dims(a, rt, r, out->shape, &out->shape_rank, msg, cap)) return 1;
            continue;
        }
        int64_t v = 0;
        if (read_int(a, rt, r, &v, msg, cap)) return 1;
        if (!strcmp(a->name, "in_features")) out->in_f = v;
        else if (!strcmp(a->name, "out_features")) out->out_f = v;
        else if (!strcmp(a->name, "num_hashes")) K = v;
        else if (!strcmp(a->name, "seed")) seed = v;
        else if (!strcmp(a->name, "signed")) sgn = v;
        else if (!strcmp(a->name, "mode")) out->mode = v;
        else if (!strcmp(a->name, "activation")) out->activation = v;
        else if (!strcmp(a->name, "bits")) out->bits = v;
        else if (!strcmp(a->name, "points")) out->points = v;
        else if (!strcmp(a->name, "group")) out->group = v;
        else if (!strcmp(a->name, "rings")) out->rings = v;
        else if (op == EP_OP_MFCC) mfcc_field(&out->mfcc, a->name, v);
    }
    if (op == EP_OP_MFCC) return check_mfcc(&out->mfcc, msg, cap);
    if ((op == EP_OP_CodebookWeight || op == EP_OP_SparseCodebookMatMul) && (out->bits & (out->bits - 1)))
        return say(msg, cap, "attribute 'bits' = %lld; must be 1, 2, 4 or 8", (long long)out->bits);
    if (op == EP_OP_HashedWeight || op == EP_OP_CodebookWeight || op == EP_OP_HyperWeight) {
        out->hp.rows = out->shape[0];
        out->hp.cols = 1;
        for (size_t d = 1; d < out->shape_rank; d++) out->hp.cols *= out->shape[d];
    } else {
        out->hp.rows = out->out_f;
        out->hp.cols = out->in_f;
    }
    if ((op == EP_OP_CodebookWeight || op == EP_OP_SparseCodebookMatMul || op == EP_OP_HyperWeight) &&
        (uint64_t)out->hp.rows * (uint64_t)out->hp.cols > (uint64_t)INT64_MAX / 8)
        return say(msg, cap, "rows*cols = %lld*%lld is too large; must be <= %lld", (long long)out->hp.rows,
                   (long long)out->hp.cols, (long long)(INT64_MAX / 8));
    if (op == EP_OP_HashedWeight || op == EP_OP_HashedMatMul) {
        out->hp.num_hashes = (int32_t)K;
        out->hp.seed = (uint32_t)seed;
        out->hp.is_signed = (int32_t)sgn;
        if ((uint64_t)out->hp.rows * (uint64_t)out->hp.cols > (uint64_t)INT64_MAX / 8 / (uint64_t)K)
            return say(msg, cap, "rows*cols*num_hashes = %lld*%lld*%lld is too large", (long long)out->hp.rows,
                       (long long)out->hp.cols, (long long)K);
    }
    return 0;
}

/* ---- inputs ------------------------------------------------------------------------------ */

typedef struct input_spec {
    ep_op op;
    int index;
    const char *name;
    int required;
    const char *kind, *dtype;
} input_spec;

static const char *const DTYPE_NAMES[] = {"float32", "uint8", "int32", "int8", "int16", "int64", "float16", "float64",
                                          "bool", "another type"};
static const unsigned char DTYPE_SIZES[] = {4, 1, 4, 1, 2, 8, 2, 8, 1, 0};
_Static_assert(sizeof DTYPE_NAMES / sizeof DTYPE_NAMES[0] == EP_DTYPE_OTHER + 1, "one name per ep_dtype");

const char *ep_dtype_name(ep_dtype t) { return (unsigned)t <= EP_DTYPE_OTHER ? DTYPE_NAMES[t] : DTYPE_NAMES[EP_DTYPE_OTHER]; }
size_t ep_dtype_size(ep_dtype t) { return (unsigned)t <= EP_DTYPE_OTHER ? DTYPE_SIZES[t] : 0; }

static const input_spec INPUTS[] = {
#define EP_OP_INPUT(op, index, name, required, kind, dtype) {EP_OP_##op, index, name, required, kind, dtype},
#include "edgepack/ops.inc"
};

static const int N_INPUTS[EP_OP_COUNT] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) n_inputs,
#include "edgepack/ops.inc"
};

static const int N_REQUIRED[EP_OP_COUNT] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) n_required,
#include "edgepack/ops.inc"
};

#define EP_OP(op, n_inputs, n_required, n_attributes) \
    _Static_assert(n_inputs <= EP_OP_MAX_INPUTS, #op " has more inputs than EP_OP_MAX_INPUTS");
#include "edgepack/ops.inc"

int ep_op_n_inputs(ep_op op) { return (unsigned)op < EP_OP_COUNT ? N_INPUTS[op] : 0; }
int ep_op_n_required(ep_op op) { return (unsigned)op < EP_OP_COUNT ? N_REQUIRED[op] : 0; }

static const input_spec *input_at(ep_op op, int index) {
    for (size_t i = 0; i < sizeof INPUTS / sizeof INPUTS[0]; i++)
        if (INPUTS[i].op == op && INPUTS[i].index == index) return &INPUTS[i];
    return NULL;
}

const char *ep_op_input_name(ep_op op, int index) {
    const input_spec *s = input_at(op, index);
    return s ? s->name : NULL;
}

const char *ep_op_input_kind(ep_op op, int index) {
    const input_spec *s = input_at(op, index);
    return s ? s->kind : NULL;
}

const char *ep_op_input_dtype(ep_op op, int index) {
    const input_spec *s = input_at(op, index);
    return s ? s->dtype : NULL;
}

/* The slot of op's input `name`, or -1 when it has none. */
static int slot(ep_op op, const char *name) {
    for (size_t i = 0; i < sizeof INPUTS / sizeof INPUTS[0]; i++)
        if (INPUTS[i].op == op && !strcmp(INPUTS[i].name, name)) return INPUTS[i].index;
    return -1;
}

void ep_op_attr_names(ep_op op, char *buf, size_t cap) {
    size_t n = 0;
    if (cap) buf[0] = 0;
    for (size_t i = 0; i < sizeof ATTRS / sizeof ATTRS[0] && n < cap; i++)
        if (ATTRS[i].op == op) n += (size_t)snprintf(buf + n, cap - n, n ? ", %s" : "%s", ATTRS[i].name);
}

void ep_tensor_dims_str(const ep_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (size_t d = 0; d < t->rank && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)t->dims[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static int is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/* The checks run at every invoke: a shape is formatted only for a message. */
static int check_buckets(const ep_tensor *t, char *msg, size_t cap) {
    if (t->rank == 1 && t->count >= 1 && t->count <= EP_LIMIT_MAX_BUCKETS) return 0;
    char s[256];
    ep_tensor_dims_str(t, s, sizeof s);
    return say(msg, cap, "input 'buckets' has shape %s; must be 1-D with 1 <= B < 2^31 buckets", s);
}

static int check_recon(const ep_op_attrs *a, const ep_tensor *t, char *msg, size_t cap) {
    const long long K = a->hp.num_hashes, per = K + 2;
    if (!t->present && K == 1) return 0; /* optional for K = 1: applied when given */
    if (!t->present)
        return say(msg, cap, "input 'recon' is required when num_hashes=%lld: the MLP [W1 (H x K), b1 (H), W2 (H), "
                   "b2] of length H*(K+2)+1", K);
    if (t->rank != 1 || t->count < per + 1 || (t->count - 1) % per != 0)
        return say(msg, cap, "input 'recon' has %lld values (rank %zu); with num_hashes=%lld it must be 1-D of "
                   "length H*%lld+1 for some H >= 1 (e.g. %lld, %lld, ...)", (long long)t->count, t->rank, K, per,
                   per + 1, 2 * per + 1);
    return 0;
}

static int check_blocks(const ep_op_attrs *a, const ep_tensor *t, char *msg, size_t cap) {
    const int shape_ok = t->rank == 3 && t->dims[0] >= 1 && t->dims[1] >= 1 && is_pow2(t->dims[2]) &&
                         t->dims[2] >= EP_LIMIT_MIN_POW2; /* then p*q*b is a real tensor's count: no overflow */
    if (shape_ok && a->in_f <= t->dims[1] * t->dims[2] && a->out_f <= t->dims[0] * t->dims[2]) return 0;
    char s[256];
    ep_tensor_dims_str(t, s, sizeof s);
    if (!shape_ok)
        return say(msg, cap, "input 'blocks' has shape %s; must be [p, q, b] with p, q >= 1 and b a power of two "
                   ">= %d", s, EP_LIMIT_MIN_POW2);
    const int64_t p = t->dims[0], q = t->dims[1], b = t->dims[2];
    return say(msg, cap, "input 'blocks' has shape %s; need in_features=%lld <= q*b=%lld and out_features=%lld "
               "<= p*b=%lld", s, (long long)a->in_f, (long long)(q * b), (long long)a->out_f, (long long)(p * b));
}

static int check_ldr(const ep_op_attrs *a, const ep_tensor *g, const ep_tensor *h, char *msg, size_t cap) {
    const int shapes_ok = g->rank == 2 && h->rank == 2 && g->dims[0] == h->dims[0] && g->dims[1] == h->dims[1] &&
                          g->dims[0] >= 1 && is_pow2(g->dims[1]) && g->dims[1] >= EP_LIMIT_MIN_POW2;
    if (shapes_ok && a->in_f <= g->dims[1] && a->out_f <= g->dims[1]) return 0;
    char sg[256], sh[256];
    ep_tensor_dims_str(g, sg, sizeof sg);
    ep_tensor_dims_str(h, sh, sizeof sh);
    if (!shapes_ok)
        return say(msg, cap, "inputs 'G' %s and 'H' %s must both be [r, n] with r >= 1 and n a power of two >= %d", sg,
                   sh, EP_LIMIT_MIN_POW2);
    return say(msg, cap, "in_features=%lld and out_features=%lld must both be <= n=%lld (G, H are %s)",
               (long long)a->in_f, (long long)a->out_f, (long long)g->dims[1], sg);
}

/* The required inputs present, and every present one of the spec's dtype. */
static int check_missing(ep_op op, const ep_tensor *in, int weights_only, char *msg, size_t cap) {
    for (int i = 0; i < N_INPUTS[op]; i++) {
        const input_spec *s = input_at(op, i);
        if (weights_only && strcmp(s->kind, "weight")) continue;
        if (!in[i].present && i < N_REQUIRED[op]) return say(msg, cap, "required input '%s' is missing", s->name);
        if (in[i].present && strcmp(ep_dtype_name(in[i].dtype), s->dtype))
            return say(msg, cap, "input '%s' has element type %s; must be %s", s->name, ep_dtype_name(in[i].dtype),
                       s->dtype);
    }
    return 0;
}

/* The codebook weight of a CodebookWeight (rows, cols from `shape`) or SparseCodebookMatMul node
 * (out_features x in_features) over its inputs' data. */
static ep_codebook codebook_of(ep_op op, const ep_op_attrs *a, const ep_tensor *in) {
    const ep_tensor *cb = &in[slot(op, "codebook")], *ind = &in[slot(op, "indices")];
    const ep_tensor *rp = &in[slot(op, "row_ptr")], *cg = &in[slot(op, "col_gaps")];
    ep_codebook w;
    memset(&w, 0, sizeof w);
    w.rows = a->hp.rows;
    w.cols = a->hp.cols;
    w.bits = (int32_t)a->bits;
    w.codebook = cb->data;
    w.codebook_len = cb->count;
    w.indices = (const uint8_t *)ind->bytes;
    w.indices_len = ind->count;
    static const int32_t no_rows[1];
    static const uint8_t no_gaps[1];
    if (rp->present) { /* an empty tensor may have no data: present all the same */
        w.row_ptr = rp->bytes ? (const int32_t *)rp->bytes : no_rows;
        w.row_ptr_len = rp->count;
    }
    if (cg->present) {
        w.col_gaps = cg->bytes ? (const uint8_t *)cg->bytes : no_gaps;
        w.col_gaps_len = cg->count;
    }
    return w;
}

/* A codebook node's weight inputs: 1-D, and their sizes (ep_codebook_check_sizes). */
static int check_codebook(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap) {
    static const char *const names[] = {"codebook", "indices", "row_ptr", "col_gaps"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const ep_tensor *t = &in[slot(op, names[k])];
        if (!t->present || t->rank == 1) continue;
        char s[256];
        ep_tensor_dims_str(t, s, sizeof s);
        return say(msg, cap, "input '%s' has shape %s; must be 1-D", names[k], s);
    }
    const ep_codebook w = codebook_of(op, a, in);
    return ep_codebook_check_sizes(&w) ? say(msg, cap, "%s", ep_last_error()) : 0;
}

/* The hyper weight of a HyperWeight node (V = prod(shape)) over its inputs' data. */
static ep_hyper hyper_of(const ep_op_attrs *a, const ep_tensor *in) {
    const ep_op op = EP_OP_HyperWeight;
    const ep_tensor *ind = &in[slot(op, "indices")], *c = &in[slot(op, "center")], *sd = &in[slot(op, "side")];
    const ep_tensor *sc = &in[slot(op, "scales")];
    static const float none[1];
    ep_hyper w;
    memset(&w, 0, sizeof w);
    w.weights = a->hp.rows * a->hp.cols;
    w.points = (int32_t)a->points;
    w.group = (int32_t)a->group;
    w.rings = (int32_t)a->rings;
    w.bits = (int32_t)a->bits;
    w.indices = (const uint8_t *)ind->bytes;
    w.indices_len = ind->count;
    w.center = c->data;
    w.center_len = c->count;
    w.side = sd->data;
    w.side_len = sd->count;
    if (sc->present) { /* an empty tensor may have no data: present all the same */
        w.has_scales = 1;
        w.scales = sc->data ? sc->data : none;
        w.scales_len = sc->count;
    }
    return w;
}

/* A HyperWeight node's inputs: 1-D, and their sizes (ep_hyper_check_sizes). */
static int check_hyper(const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap) {
    static const char *const names[] = {"indices", "center", "side", "scales"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const ep_tensor *t = &in[slot(EP_OP_HyperWeight, names[k])];
        if (!t->present || t->rank == 1 || (k == 3 && t->count == 0)) continue; /* empty scales: absent */
        char s[256];
        ep_tensor_dims_str(t, s, sizeof s);
        return say(msg, cap, "input '%s' has shape %s; must be 1-D", names[k], s);
    }
    const ep_hyper w = hyper_of(a, in);
    return ep_hyper_check_sizes(&w) ? say(msg, cap, "%s", ep_last_error()) : 0;
}

static int bad_args(ep_op op, const ep_op_attrs *a, const void *in, char *msg, size_t cap) {
    if ((unsigned)op < EP_OP_COUNT && a && in) return 0;
    return say(msg, cap, "internal error: bad arguments to the op layer");
}

int ep_op_check_weights(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap) {
    if (bad_args(op, a, in, msg, cap) || check_missing(op, in, 1, msg, cap)) return 1;
    switch (op) {
    case EP_OP_HashedWeight:
    case EP_OP_HashedMatMul:
        return check_buckets(&in[slot(op, "buckets")], msg, cap) || check_recon(a, &in[slot(op, "recon")], msg, cap);
    case EP_OP_CirculantMatMul: return check_blocks(a, &in[slot(op, "blocks")], msg, cap);
    case EP_OP_LDRMatMul: return check_ldr(a, &in[slot(op, "G")], &in[slot(op, "H")], msg, cap);
    case EP_OP_CodebookWeight:
    case EP_OP_SparseCodebookMatMul: return check_codebook(op, a, in, msg, cap);
    case EP_OP_HyperWeight: return check_hyper(a, in, msg, cap);
    case EP_OP_MFCC: return 0; /* no weights */
    case EP_OP_COUNT: break;
    }
    return 1;
}

int ep_op_check_inputs(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap) {
    if (bad_args(op, a, in, msg, cap) || check_missing(op, in, 0, msg, cap) || ep_op_check_weights(op, a, in, msg, cap))
        return 1;
    char s[256];
    if (op == EP_OP_MFCC) {
        const ep_tensor *t = &in[slot(op, "audio")];
        if (t->rank >= 1 && t->rank < EP_LIMIT_MAX_RANK && t->dims[t->rank - 1] >= a->mfcc.window_length) return 0;
        ep_tensor_dims_str(t, s, sizeof s);
        return say(msg, cap, "input 'audio' has shape %s; must be [..., samples] (rank 1..%d) with at least one "
                   "window of window_length=%d samples", s, EP_LIMIT_MAX_RANK - 1, a->mfcc.window_length);
    }
    const int x = slot(op, "X");
    if (x >= 0 && (in[x].rank < 1 || in[x].dims[in[x].rank - 1] != a->in_f)) {
        ep_tensor_dims_str(&in[x], s, sizeof s);
        return say(msg, cap, "input 'X' has shape %s; its last axis must equal in_features=%lld", s,
                   (long long)a->in_f);
    }
    static const char *const per_row[] = {"bias", "scale"};
    for (size_t k = 0; k < sizeof per_row / sizeof per_row[0]; k++) {
        const int b = slot(op, per_row[k]);
        if (b < 0 || !in[b].present || (in[b].rank == 1 && in[b].count == a->out_f)) continue;
        ep_tensor_dims_str(&in[b], s, sizeof s);
        return say(msg, cap, "input '%s' has shape %s; must be [out_features] = [%lld]", per_row[k], s,
                   (long long)a->out_f);
    }
    return 0;
}

/* ---- output, limits and plans ------------------------------------------------------------ */

int ep_op_output_shape(ep_op op, const ep_op_attrs *a, const ep_tensor *in, ep_tensor *y, char *msg, size_t cap) {
    if (bad_args(op, a, y, msg, cap)) return 1;
    memset(y, 0, sizeof *y);
    y->present = 1;
    if (op == EP_OP_HashedWeight || op == EP_OP_CodebookWeight || op == EP_OP_HyperWeight) {
        y->rank = a->shape_rank;
        memcpy(y->dims, a->shape, sizeof(int64_t) * a->shape_rank);
        y->count = a->hp.rows * a->hp.cols; /* ep_op_read_attrs bounds it by INT64_MAX / 8 */
        return 0;
    }
    if (op == EP_OP_MFCC) {
        const ep_tensor *t = in ? &in[slot(op, "audio")] : NULL;
        if (!t || t->rank < 1 || t->rank >= EP_LIMIT_MAX_RANK || t->dims[t->rank - 1] < a->mfcc.window_length)
            return say(msg, cap, "internal error: output shape of unchecked inputs");
        const int64_t samples = t->dims[t->rank - 1], rows = samples ? t->count / samples : 0;
        const int64_t frames = 1 + (samples - a->mfcc.window_length) / a->mfcc.hop_length;
        y->rank = t->rank + 1;
        memcpy(y->dims, t->dims, sizeof(int64_t) * t->rank);
        y->dims[t->rank - 1] = frames;
        y->dims[t->rank] = a->mfcc.num_coefficients;
        if (rows && frames > INT64_MAX / 4 / a->mfcc.num_coefficients / rows) {
            char s[256];
            ep_tensor_dims_str(y, s, sizeof s);
            return say(msg, cap, "output 'Y' of shape %s would have more than 2^61 elements", s);
        }
        y->count = rows * frames * a->mfcc.num_coefficients;
        return 0;
    }
    const ep_tensor *x = in ? &in[slot(op, "X")] : NULL;
    if (!x || x->rank < 1 || a->in_f < 1) return say(msg, cap, "internal error: output shape of unchecked inputs");
    y->rank = x->rank;
    memcpy(y->dims, x->dims, sizeof(int64_t) * x->rank);
    y->dims[y->rank - 1] = a->out_f;
    const int64_t N = x->count / a->in_f;
    if (N > INT64_MAX / 4 / a->out_f) {
        char s[256];
        ep_tensor_dims_str(y, s, sizeof s);
        return say(msg, cap, "output 'Y' of shape %s would have more than 2^61 elements", s);
    }
    y->count = N * a->out_f;
    return 0;
}

/* "shape [2, 3]" (HashedWeight, CodebookWeight) or "in_features=3 x out_features=2": the node's size
 * in messages. */
static void size_str(ep_op op, const ep_op_attrs *a, char *buf, size_t cap) {
    if (op != EP_OP_HashedWeight && op != EP_OP_CodebookWeight && op != EP_OP_HyperWeight) {
        snprintf(buf, cap, "in_features=%lld x out_features=%lld", (long long)a->in_f, (long long)a->out_f);
        return;
    }
    ep_tensor t;
    t.rank = a->shape_rank;
    memcpy(t.dims, a->shape, sizeof(int64_t) * a->shape_rank);
    int n = snprintf(buf, cap, "shape ");
    if (n > 0 && (size_t)n < cap) ep_tensor_dims_str(&t, buf + n, cap - (size_t)n);
}

int ep_op_check_virtual(ep_op op, const ep_op_attrs *a, const ep_limits *lim, char *msg, size_t cap) {
    if (bad_args(op, a, lim, msg, cap)) return 1;
    char desc[200];
    size_str(op, a, desc, sizeof desc);
    const uint64_t v = (uint64_t)a->hp.rows * (uint64_t)a->hp.cols; /* both < 2^32 */
    if (ep_limits_check_weights(lim, v > (uint64_t)INT64_MAX ? -1 : (int64_t)v, desc))
        return say(msg, cap, "%s", ep_last_error());
    return 0;
}

int ep_op_check_output(const ep_limits *lim, const ep_tensor *y, char *msg, size_t cap) {
    if (!lim || !y || y->count < 0 || y->count > INT64_MAX / 4)
        return say(msg, cap, "internal error: bad arguments to ep_op_check_output");
    if (4 * y->count <= lim->max_decoded_bytes) return 0; /* every run: no message to format */
    char what[320], s[256];
    ep_tensor_dims_str(y, s, sizeof s);
    snprintf(what, sizeof what, "output 'Y' of shape %s", s);
    if (ep_limits_check_bytes(lim, 0, 4 * y->count, what)) return say(msg, cap, "%s", ep_last_error());
    return 0;
}

int64_t ep_op_plan_bytes(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *what, size_t cap) {
    char desc[200], s[256];
    if (cap) what[0] = 0;
    if ((unsigned)op >= EP_OP_COUNT || !a) return -1;
    size_str(op, a, desc, sizeof desc);
    switch (op) {
    case EP_OP_HashedWeight:
    case EP_OP_CodebookWeight:
    case EP_OP_HyperWeight:
        snprintf(what, cap, "the decoded weight (%s)", desc);
        return 4 * a->hp.rows * a->hp.cols;
    case EP_OP_SparseCodebookMatMul: {
        if (!in || !in[slot(op, "codebook")].present || !in[slot(op, "col_gaps")].present) return -1;
        const ep_codebook w = codebook_of(op, a, in);
        snprintf(what, cap, "the sparse codebook plan (%s, %lld entries)", desc, (long long)w.col_gaps_len);
        return ep_codebook_plan_bytes(&w);
    }
    case EP_OP_HashedMatMul:
        if (a->mode == 1) return 0;
        snprintf(what, cap, "the expanded weight (mode 0) (%s)", desc);
        return 4 * a->hp.rows * a->hp.cols;
    case EP_OP_CirculantMatMul:
    case EP_OP_LDRMatMul: {
        const char *name = op == EP_OP_CirculantMatMul ? "blocks" : "G";
        const int w = slot(op, name);
        if (!in || !in[w].present) return -1;
        const int64_t *d = in[w].dims;
        ep_tensor_dims_str(&in[w], s, sizeof s);
        snprintf(what, cap, "the %s spectra (%s, input '%s' %s)", op == EP_OP_CirculantMatMul ? "block" : "LDR", desc,
                 name, s);
        return op == EP_OP_CirculantMatMul ? 4 * d[0] * d[1] * (d[2] + 2) : 4 * d[0] * (4 * d[1] + 2);
    }
    case EP_OP_MFCC: {
        const ep_mfcc_config *c = &a->mfcc;
        snprintf(what, cap, "the MFCC tables (fft_length=%d, num_mel_bins=%d)", c->fft_length, c->num_mel_bins);
        return 4 * ((int64_t)c->window_length + 2 * (c->fft_length / 2 + 1) + 2 * (int64_t)c->num_mel_bins +
                    (int64_t)c->num_mel_bins * c->num_coefficients);
    }
    case EP_OP_COUNT: break;
    }
    return -1;
}

struct ep_op_plan {
    ep_hashed_plan *hashed;
    ep_circulant_plan *circulant;
    ep_ldr_plan *ldr;
    ep_mfcc_plan *mfcc;
    ep_codebook_plan *codebook;
    float *W; /* HashedWeight, CodebookWeight, HyperWeight: decoded */
};

/* A codebook kernel's failure: its message names the input (the same words in every runtime). */
static int codebook_error(ep_status s, char *msg, size_t cap) {
    return s == EP_ERR_NOMEM ? say(msg, cap, "out of memory: %s", ep_last_error()) : say(msg, cap, "%s", ep_last_error());
}

static int kernel_error(ep_status s, char *msg, size_t cap) {
    return say(msg, cap, "kernel error (%s): %s", ep_status_str(s), ep_last_error());
}

/* The hash parameters with B from the checked buckets; recon's length (0 when absent) in *n_recon. */
static ep_hash_params hash_params(ep_op op, const ep_op_attrs *a, const ep_tensor *in, const float **recon,
                                  int64_t *n_recon) {
    const ep_tensor *r = &in[slot(op, "recon")];
    ep_hash_params p = a->hp;
    p.num_buckets = in[slot(op, "buckets")].count;
    *recon = r->present ? r->data : NULL;
    *n_recon = r->present ? r->count : 0;
    return p;
}

int ep_op_plan_create(ep_op op, const ep_op_attrs *a, const ep_tensor *in, ep_op_plan **out, char *msg, size_t cap) {
    if (bad_args(op, a, in, msg, cap) || !out) return 1;
    *out = NULL;
    ep_op_plan *plan = (ep_op_plan *)calloc(1, sizeof *plan);
    if (!plan) return say(msg, cap, "out of memory creating a plan");
    ep_status s = EP_OK;
    const float *recon = NULL;
    int64_t n_recon = 0;
    switch (op) {
    case EP_OP_HashedWeight: {
        const ep_hash_params p = hash_params(op, a, in, &recon, &n_recon);
        plan->W = (float *)malloc(sizeof(float) * (size_t)(p.rows * p.cols));
        if (!plan->W) {
            free(plan);
            return say(msg, cap, "cannot allocate the %lld x %lld weight", (long long)p.rows, (long long)p.cols);
        }
        s = ep_hashed_decode(&p, in[slot(op, "buckets")].data, recon, n_recon, plan->W);
        break;
    }
    case EP_OP_HashedMatMul:
        if (a->mode == 1) break; /* stream: hashes on the fly, nothing to keep */
        {
            const ep_hash_params p = hash_params(op, a, in, &recon, &n_recon);
            s = ep_hashed_plan_create(&p, in[slot(op, "buckets")].data, recon, n_recon, &plan->hashed);
        }
        break;
    case EP_OP_CirculantMatMul: {
        const ep_tensor *w = &in[slot(op, "blocks")];
        s = ep_circulant_plan_create(w->dims[0], w->dims[1], w->dims[2], w->data, a->in_f, a->out_f, &plan->circulant);
        break;
    }
    case EP_OP_LDRMatMul: {
        const ep_tensor *g = &in[slot(op, "G")], *h = &in[slot(op, "H")];
        s = ep_ldr_plan_create(g->dims[0], g->dims[1], g->data, h->data, a->in_f, a->out_f, &plan->ldr);
        break;
    }
    case EP_OP_MFCC: s = ep_mfcc_plan_create(&a->mfcc, &plan->mfcc); break;
    case EP_OP_CodebookWeight:
    case EP_OP_SparseCodebookMatMul: {
        const ep_codebook w = codebook_of(op, a, in);
        if (op == EP_OP_SparseCodebookMatMul) {
            s = ep_codebook_plan_create(&w, &plan->codebook);
        } else if ((s = ep_codebook_check(&w)) == EP_OK) {
            plan->W = (float *)malloc(sizeof(float) * (size_t)(w.rows * w.cols));
            if (!plan->W) {
                ep_op_plan_destroy(plan);
                return say(msg, cap, "cannot allocate the %lld x %lld weight", (long long)w.rows, (long long)w.cols);
            }
            s = ep_codebook_decode(&w, plan->W);
        }
        if (s) {
            ep_op_plan_destroy(plan);
            return codebook_error(s, msg, cap);
        }
        break;
    }
    case EP_OP_HyperWeight: {
        const ep_hyper w = hyper_of(a, in);
        if ((s = ep_hyper_check(&w)) == EP_OK) {
            plan->W = (float *)malloc(sizeof(float) * (size_t)w.weights);
            if (!plan->W) {
                ep_op_plan_destroy(plan);
                return say(msg, cap, "cannot allocate the weight of %lld values", (long long)w.weights);
            }
            s = ep_hyper_decode(&w, plan->W);
        }
        if (s) {
            ep_op_plan_destroy(plan);
            return codebook_error(s, msg, cap);
        }
        break;
    }
    case EP_OP_COUNT: break;
    }
    if (s) {
        ep_op_plan_destroy(plan);
        return kernel_error(s, msg, cap);
    }
    *out = plan;
    return 0;
}

void ep_op_plan_destroy(ep_op_plan *plan) {
    if (!plan) return;
    ep_hashed_plan_destroy(plan->hashed);
    ep_circulant_plan_destroy(plan->circulant);
    ep_ldr_plan_destroy(plan->ldr);
    ep_mfcc_plan_destroy(plan->mfcc);
    ep_codebook_plan_destroy(plan->codebook);
    free(plan->W);
    free(plan);
}

/* The fused epilogue over rows x cols of Y, one row at a time: y = y*scale + bias (when scale is
 * given; else the kernel added the bias), then ReLU (activation 1) or ReLU6 (2). */
static void epilogue(int64_t activation, const float *scale, const float *bias, float *Y, int64_t rows,
                     int64_t cols) {
    if (!scale && activation != 1 && activation != 2) return;
    for (int64_t r = 0; r < rows; r++) {
        float *y = Y + r * cols;
        if (scale)
            for (int64_t c = 0; c < cols; c++) y[c] = y[c] * scale[c] + (bias ? bias[c] : 0.0f);
        if (activation == 1)
            for (int64_t c = 0; c < cols; c++) y[c] = y[c] > 0.0f ? y[c] : 0.0f;
        else if (activation == 2)
            for (int64_t c = 0; c < cols; c++) y[c] = y[c] > 0.0f ? (y[c] < 6.0f ? y[c] : 6.0f) : 0.0f;
    }
}

/* MFCC of each row of the checked audio [..., samples] into Y [..., frames, num_coefficients]. */
static int run_mfcc(const ep_op_attrs *a, const ep_op_plan *plan, const ep_tensor *audio, float *Y, char *msg,
                    size_t cap) {
    const int64_t samples = audio->dims[audio->rank - 1], rows = samples ? audio->count / samples : 0;
    if (rows == 0) return 0;
    ep_op_plan *own = NULL;
    if ((!plan || !plan->mfcc) && ep_op_plan_create(EP_OP_MFCC, a, audio, &own, msg, cap)) return 1;
    const ep_mfcc_plan *p = own ? own->mfcc : plan->mfcc;
    const int64_t per_row = ep_mfcc_num_frames(p, samples) * a->mfcc.num_coefficients;
    ep_status s = EP_OK;
    for (int64_t r = 0; r < rows && !s; r++) s = ep_mfcc(p, audio->data + r * samples, samples, Y + r * per_row, per_row);
    ep_op_plan_destroy(own);
    return s ? kernel_error(s, msg, cap) : 0;
}

int ep_op_run(ep_op op, const ep_op_attrs *a, const ep_op_plan *plan, const ep_tensor *in, float *Y, char *msg,
              size_t cap) {
    if (bad_args(op, a, in, msg, cap)) return 1;
    const float *recon = NULL;
    int64_t n_recon = 0;
    ep_status s = EP_OK;
    if (op == EP_OP_HashedWeight) {
        const ep_hash_params p = hash_params(op, a, in, &recon, &n_recon);
        if (plan && plan->W) {
            memcpy(Y, plan->W, sizeof(float) * (size_t)(p.rows * p.cols));
            return 0;
        }
        s = ep_hashed_decode(&p, in[slot(op, "buckets")].data, recon, n_recon, Y);
        return s ? kernel_error(s, msg, cap) : 0;
    }
    if (op == EP_OP_MFCC) return run_mfcc(a, plan, &in[slot(op, "audio")], Y, msg, cap);
    if (op == EP_OP_CodebookWeight) {
        if (plan && plan->W) {
            memcpy(Y, plan->W, sizeof(float) * (size_t)(a->hp.rows * a->hp.cols));
            return 0;
        }
        const ep_codebook w = codebook_of(op, a, in);
        s = ep_codebook_decode(&w, Y);
        return s ? codebook_error(s, msg, cap) : 0;
    }
    if (op == EP_OP_HyperWeight) {
        if (plan && plan->W) {
            memcpy(Y, plan->W, sizeof(float) * (size_t)(a->hp.rows * a->hp.cols));
            return 0;
        }
        const ep_hyper w = hyper_of(a, in);
        s = ep_hyper_decode(&w, Y);
        return s ? codebook_error(s, msg, cap) : 0;
    }
    const int64_t N = in[slot(op, "X")].count / a->in_f;
    if (N == 0) return 0;
    const ep_tensor *b = &in[slot(op, "bias")], *sc = &in[slot(op, "scale")];
    const float *X = in[slot(op, "X")].data, *scale = sc->present ? sc->data : NULL;
    const float *given = b->present ? b->data : NULL, *bias = scale ? NULL : given; /* after scale: epilogue */
    if (op == EP_OP_HashedMatMul && a->mode == 1) {
        const ep_hash_params p = hash_params(op, a, in, &recon, &n_recon);
        s = ep_hashed_matmul_stream(&p, in[slot(op, "buckets")].data, recon, n_recon, X, N, bias, Y);
        if (s) return kernel_error(s, msg, cap);
        epilogue(a->activation, scale, given, Y, N, a->out_f);
        return 0;
    }
    ep_op_plan *own = NULL; /* weights fed at run time: a plan for this run only */
    if (!plan && ep_op_plan_create(op, a, in, &own, msg, cap)) return 1;
    const ep_op_plan *use = plan ? plan : own;
    switch (op) {
    case EP_OP_HashedMatMul: s = ep_hashed_matmul_expand(use->hashed, X, N, a->in_f, bias, Y, a->out_f); break;
    case EP_OP_CirculantMatMul: s = ep_circulant_matmul(use->circulant, X, N, a->in_f, bias, Y, a->out_f); break;
    case EP_OP_LDRMatMul: s = ep_ldr_matmul(use->ldr, X, N, a->in_f, bias, Y, a->out_f); break;
    case EP_OP_SparseCodebookMatMul:
        s = ep_sparse_codebook_matmul(use->codebook, X, N, a->in_f, bias, Y, a->out_f);
        break;
    default: break;
    }
    ep_op_plan_destroy(own);
    if (s) return kernel_error(s, msg, cap);
    epilogue(a->activation, scale, given, Y, N, a->out_f);
    return 0;
}
