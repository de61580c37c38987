/* The attribute half of the C op layer (include/edgepack/ops.h): one reading and one set of
 * checks and messages for every ai.edgepack op, driven by the generated ops.inc. */
#include "edgepack/ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define U32_MAX_I64 ((int64_t)0xFFFFFFFF)

_Static_assert(EP_LIMIT_MAX_HASHES == EP_MAX_HASHES, "ops.inc MAX_HASHES differs from EP_MAX_HASHES in kernels.h");
_Static_assert(EP_LIMIT_MAX_RANK >= 1, "ops.inc MAX_RANK must allow a 1-D shape");
/* kernels.c checks num_buckets, recon's H and FFT sizes with EP_LIMIT_*; its messages say these: */
_Static_assert(EP_LIMIT_MAX_BUCKETS == INT32_MAX, "kernels.c says num_buckets < 2^31");
_Static_assert(EP_LIMIT_MIN_POW2 == 4 && EP_LIMIT_MAX_POW2 == 1 << 30, "kernels.c says FFT sizes in [4, 2^30]");

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
    }
    if (op == EP_OP_HashedWeight) {
        out->hp.rows = out->shape[0];
        out->hp.cols = 1;
        for (size_t d = 1; d < out->shape_rank; d++) out->hp.cols *= out->shape[d];
    } else {
        out->hp.rows = out->out_f;
        out->hp.cols = out->in_f;
    }
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
