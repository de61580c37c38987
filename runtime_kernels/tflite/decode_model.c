/* edgepack_tflite_decode_model (edgepack_tflite_decode.h): decode at load for apps in C.
 *
 * What it rewrites, in one subgraph:
 *  - ai.edgepack.HashedWeight with constant buckets (and recon), and ai.edgepack.CodebookWeight and HyperWeight with
 *    constant inputs, are decoded by the C op layer (src/ops.c, 4 bytes per weight) and removed;
 *    the output becomes a constant tensor;
 *  - TRANSPOSE (constant int32 perm) and RESHAPE of such a constant are folded, so CONV_2D /
 *    DEPTHWISE_CONV_2D / FULLY_CONNECTED read a static filter (XNNPACK needs one);
 *  - an expand-mode ai.edgepack.HashedMatMul without a fused epilogue (activation 0, no scale)
 *    becomes FULLY_CONNECTED (keep_num_dims for inputs of rank != 2) over the decoded weight;
 *  - a MUL / ADD by a per-channel constant (a BatchNorm) and a RELU / RELU6 that alone read such a
 *    FULLY_CONNECTED, or a convolution whose filter is a decoded weight, are folded into it (its
 *    filter, a new bias and its fused activation), as TFLite's converter does for a dense model.
 *  - an int8-stored weight (docs/ops.md "int8 storage"): CAST(int8 constant -> float32) feeding HashedWeight 'buckets' or
 *    CodebookWeight 'codebook', and [TRANSPOSE / RESHAPE +] CAST(float32 -> int8) of the decoded weight, fold into
 *    one constant int8 filter that keeps its tensor's (per-channel) quantization; a CAST into any other weight
 *    input of an ai.edgepack op, a stored -128 and a decoded value that is not an integer in [-128, 127] are
 *    refused (check_casts; decode_tflite.py and exporter/validate.py in the same words);
 * Every other node, ai.edgepack ones included, is kept for its runtime or the edgepack delegate.
 *
 * How: the flatbuffer reader is hand-written (no C flatbuffers library on-device, and only seven
 * tables of the TFLite schema are read); every offset and length is checked against the buffer
 * before it is read. The output is a copy of the input with new tables appended after it: a
 * uoffset points forward, so entries of the existing operators / tensors / buffers / operator-code
 * vectors are re-pointed at the new tables, and the operators vector is shortened in place. A
 * decoded weight takes the tensor and buffer entries its node no longer needs (its buckets), so
 * no vector has to grow (when folding leaves too few entries, it decodes again without folding).
 * Limits are checked before anything is allocated.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack/ops.h"
#include "edgepack_tflite_decode.h"
#include "flexmap.h"

#define MAXR EP_LIMIT_MAX_RANK
#define PREFIX "ai.edgepack."

#define MAX_STEPS 8 /* MUL / ADD / RELU nodes folded into one convolution or FULLY_CONNECTED */

enum { TYPE_FLOAT32 = 0, TYPE_INT32 = 2, TYPE_UINT8 = 3, TYPE_INT8 = 9 };
enum {
    OP_ADD = 0, OP_CONV_2D = 3, OP_DEPTHWISE_CONV_2D = 4, OP_FULLY_CONNECTED = 9, OP_MUL = 18, OP_RELU = 19,
    OP_RELU6 = 21, OP_RESHAPE = 22, OP_CUSTOM = 32, OP_TRANSPOSE = 39, OP_CAST = 53,
};
enum { OPTIONS_CONV_2D = 1, OPTIONS_DEPTHWISE_CONV_2D = 2, OPTIONS_FULLY_CONNECTED = 8, ACT_RELU = 1, ACT_RELU6 = 3 };
enum { KEEP = 0, REMOVE = 1, TO_FC = 2, REBUILD = 3 }; /* what happens to an operator */
enum { V_DECODE = 0, V_TRANSPOSE = 1, V_RESHAPE = 2, V_BIAS = 3, V_CAST8 = 4 }; /* how a value is computed */

typedef struct tbl {
    size_t pos, vt, vt_len, t_len;
} tbl;

typedef struct ten {
    int rank; /* -1: more than MAXR dims or a negative dim */
    int64_t dims[MAXR], count;
    uint32_t type, buffer;
    size_t name, name_len, entry; /* entry: its element of the tensors vector */
    size_t quant;                 /* its QuantizationParameters table, 0 when absent */
} ten;

typedef struct bufr {
    size_t data, len, entry;
    int used; /* referenced by a tensor that keeps its table, or by metadata */
} bufr;

typedef struct opc {
    int32_t builtin;
    size_t custom, custom_len, entry;
    int kept_users;
} opc;

typedef struct opr {
    uint32_t code, n_in, n_out, n_inter;
    size_t ins, outs, inter, opts, opts_len, entry; /* inter: its intermediates (tensor indices) */
    size_t bopts;        /* its builtin options table, 0 when absent */
    uint32_t bopts_type; /* and their BuiltinOptions type */
    int state, kind;     /* kind: ep_op of an ai.edgepack op, else -1 */
    /* TO_FC (a new FULLY_CONNECTED) and REBUILD (a convolution with folded epilogues): */
    int act, out;                  /* fused activation and output tensor */
    int weight, bias;              /* the values of its weight and of its folded bias (-1: none) */
    int64_t channels;              /* its output channels */
    int n_steps, steps[MAX_STEPS]; /* the MUL / ADD / RELU nodes folded into it, in order */
    ep_op_attrs *at; /* an ai.edgepack node to decode: its attributes */
} opr;

typedef struct val {
    int kind, op, src, tensor; /* tensor: where it is materialized, -1 if nowhere */
    int rank, perm[MAXR];
    int64_t dims[MAXR], count;
    int buffer;          /* the buffer entry it takes */
    int name;            /* the tensor whose name it takes (+ suffix) */
    const char *suffix;
    float *data;
    int in_output; /* data lies in the output model (its buffer's bytes): not freed on its own */
    int int8;      /* an int8 value (an int8-stored weight): data holds its integers as floats */
    uint8_t *out8; /* where its int8 bytes go in the output model */
} val;

typedef struct dec {
    const uint8_t *b;
    size_t n;
    char *err;
    size_t cap;
    ep_limits lim;
    ten *t;
    bufr *bf;
    opc *c;
    opr *o;
    val *v;
    int *value_of, *readers, *consumer; /* per tensor: its value, readers and (last) reading node */
    int *producer, *uses; /* per tensor, in the input graph: the node writing it (-1: none), nodes / outputs reading it */
    int fold;                           /* fold epilogues (MUL / ADD / RELU) into the nodes */
    uint32_t nt, nb, nc, no, nv, n_gin, n_gout;
    size_t gin, gout, ops_vec;
} dec;

static int fail(dec *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (d->cap) vsnprintf(d->err, d->cap, fmt, ap);
    va_end(ap);
    return 1;
}

#define MALFORMED(what) \
    fail(d, "model: %s is out of bounds or malformed (truncated, or not a .tflite flatbuffer)", what)

/* ---- reading: every access bounds-checked -------------------------------------------------- */

static int get(const dec *d, size_t pos, size_t w, uint64_t *v) {
    if (pos > d->n || w > d->n - pos) return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < w; i++) x |= (uint64_t)d->b[pos + i] << (8 * i);
    *v = x;
    return 1;
}

static int table(const dec *d, size_t pos, tbl *t) {
    uint64_t so, vl, tl;
    if (pos % 4 || !get(d, pos, 4, &so)) return 0;
    const int64_t vt = (int64_t)pos - (int64_t)(int32_t)(uint32_t)so;
    if (vt < 0 || (uint64_t)vt > d->n || vt % 2 || !get(d, (size_t)vt, 2, &vl) || !get(d, (size_t)vt + 2, 2, &tl))
        return 0;
    if (vl < 4 || vl % 2 || vl > d->n - (size_t)vt || tl < 4 || tl > d->n - pos) return 0;
    t->pos = pos, t->vt = (size_t)vt, t->vt_len = (size_t)vl, t->t_len = (size_t)tl;
    return 1;
}

/* The position of field id (sz bytes) in *at, 0 when absent; 0 returned when it leaves the table. */
static int field(const dec *d, const tbl *t, int id, size_t sz, size_t *at) {
    uint64_t off = 0;
    *at = 0;
    if (4 + 2 * (size_t)id + 2 <= t->vt_len && !get(d, t->vt + 4 + 2 * (size_t)id, 2, &off)) return 0;
    if (!off) return 1;
    if (off + sz > t->t_len) return 0;
    *at = t->pos + (size_t)off;
    return 1;
}

static int scalar(const dec *d, const tbl *t, int id, size_t sz, uint64_t def, uint64_t *v) {
    size_t at;
    if (!field(d, t, id, sz, &at)) return 0;
    if (!at) {
        *v = def;
        return 1;
    }
    return get(d, at, sz, v);
}

/* The target of uoffset field id (0 when absent), or of the uoffset stored at `at`. */
static int follow(const dec *d, size_t at, size_t *target) {
    uint64_t off;
    if (!get(d, at, 4, &off) || off == 0 || off > d->n - at) return 0;
    *target = at + (size_t)off;
    return 1;
}

static int ref(const dec *d, const tbl *t, int id, size_t *target) {
    size_t at;
    *target = 0;
    if (!field(d, t, id, 4, &at)) return 0;
    return !at || follow(d, at, target);
}

static int vector(const dec *d, size_t pos, size_t el, uint32_t *len, size_t *data) {
    uint64_t l;
    if (pos % 4 || !get(d, pos, 4, &l) || l > (d->n - pos - 4) / el) return 0;
    *len = (uint32_t)l, *data = pos + 4;
    return 1;
}

static int vec_field(const dec *d, const tbl *t, int id, size_t el, uint32_t *len, size_t *data) {
    size_t p;
    *len = 0, *data = 0;
    if (!ref(d, t, id, &p)) return 0;
    return !p || vector(d, p, el, len, data);
}

static int elem_table(const dec *d, size_t data, uint32_t i, tbl *t, size_t *entry) {
    size_t target;
    *entry = data + 4 * (size_t)i;
    return follow(d, *entry, &target) && table(d, target, t);
}

/* An int32 element of a vector checked by vector(). */
static int32_t i32(const dec *d, size_t data, uint32_t i) {
    uint64_t v = 0;
    get(d, data + 4 * (size_t)i, 4, &v);
    return (int32_t)(uint32_t)v;
}

/* ---- parsing ------------------------------------------------------------------------------- */

static int parse_buffers(dec *d, const tbl *m) {
    size_t data;
    if (!vec_field(d, m, 4, 4, &d->nb, &data)) return MALFORMED("the buffers vector");
    if (!d->nb) return fail(d, "model: no buffers vector (a .tflite needs at least the empty buffer 0)");
    d->bf = (bufr *)calloc(d->nb, sizeof *d->bf);
    if (!d->bf) return fail(d, "out of memory reading %u buffers", d->nb);
    for (uint32_t i = 0; i < d->nb; i++) {
        tbl t;
        uint32_t len;
        uint64_t offset;
        if (!elem_table(d, data, i, &t, &d->bf[i].entry) || !vec_field(d, &t, 0, 1, &len, &d->bf[i].data) ||
            !scalar(d, &t, 1, 8, 0, &offset))
            return MALFORMED("a Buffer table");
        if (offset > 1)
            return fail(d, "model: buffer %u is stored outside the flatbuffer (offset/size); decode at load reads "
                        "only buffers inside it: load the file as it is", i);
        d->bf[i].len = len;
    }
    size_t meta;
    uint32_t n_meta;
    if (!vec_field(d, m, 5, 4, &n_meta, &meta)) return MALFORMED("the metadata_buffer vector");
    for (uint32_t i = 0; i < n_meta; i++) { /* deprecated Model.metadata_buffer: buffer indices */
        const int32_t b = i32(d, meta, i);
        if (b >= 0 && (uint32_t)b < d->nb) d->bf[b].used = 1;
    }
    if (!vec_field(d, m, 6, 4, &n_meta, &meta)) return MALFORMED("the metadata vector");
    for (uint32_t i = 0; i < n_meta; i++) { /* metadata buffers keep their entries */
        tbl t;
        size_t entry;
        uint64_t b;
        if (!elem_table(d, meta, i, &t, &entry) || !scalar(d, &t, 1, 4, 0, &b)) return MALFORMED("a Metadata table");
        if (b < d->nb) d->bf[b].used = 1;
    }
    return 0;
}

static int parse_codes(dec *d, const tbl *m) {
    size_t data;
    if (!vec_field(d, m, 1, 4, &d->nc, &data)) return MALFORMED("the operator_codes vector");
    d->c = (opc *)calloc(d->nc ? d->nc : 1, sizeof *d->c);
    if (!d->c) return fail(d, "out of memory reading %u operator codes", d->nc);
    for (uint32_t i = 0; i < d->nc; i++) {
        tbl t;
        uint64_t dep, bi;
        uint32_t len;
        if (!elem_table(d, data, i, &t, &d->c[i].entry) || !scalar(d, &t, 0, 1, 0, &dep) ||
            !scalar(d, &t, 3, 4, 0, &bi) || !vec_field(d, &t, 1, 1, &len, &d->c[i].custom))
            return MALFORMED("an OperatorCode table");
        const int32_t a = (int8_t)(uint8_t)dep, b = (int32_t)(uint32_t)bi;
        d->c[i].builtin = a > b ? a : b;
        d->c[i].custom_len = len;
    }
    return 0;
}

static int parse_tensors(dec *d, const tbl *g) {
    size_t data;
    if (!vec_field(d, g, 0, 4, &d->nt, &data)) return MALFORMED("the tensors vector");
    d->t = (ten *)calloc(d->nt ? d->nt : 1, sizeof *d->t);
    d->value_of = (int *)malloc(sizeof(int) * (d->nt ? d->nt : 1));
    d->readers = (int *)calloc(d->nt ? d->nt : 1, sizeof(int));
    d->consumer = (int *)calloc(d->nt ? d->nt : 1, sizeof(int));
    d->producer = (int *)calloc(d->nt ? d->nt : 1, sizeof(int));
    d->uses = (int *)calloc(d->nt ? d->nt : 1, sizeof(int));
    if (!d->t || !d->value_of || !d->readers || !d->consumer || !d->producer || !d->uses)
        return fail(d, "out of memory reading %u tensors", d->nt);
    for (uint32_t i = 0; i < d->nt; i++) {
        ten *x = &d->t[i];
        tbl t;
        uint32_t rank, name_len;
        size_t shape;
        uint64_t type, buffer;
        d->value_of[i] = -1;
        tbl q;
        uint32_t n_scale, n_zero;
        size_t scale, zero;
        uint64_t dim;
        if (!elem_table(d, data, i, &t, &x->entry) || !vec_field(d, &t, 0, 4, &rank, &shape) ||
            !scalar(d, &t, 1, 1, 0, &type) || !scalar(d, &t, 2, 4, 0, &buffer) ||
            !vec_field(d, &t, 3, 1, &name_len, &x->name) || !ref(d, &t, 4, &x->quant))
            return MALFORMED("a Tensor table");
        /* its scale, zero_point and quantized_dimension, read again when an int8 filter copies them */
        if (x->quant && (!table(d, x->quant, &q) || !vec_field(d, &q, 2, 4, &n_scale, &scale) ||
                         !vec_field(d, &q, 3, 8, &n_zero, &zero) || !scalar(d, &q, 6, 4, 0, &dim)))
            return MALFORMED("a tensor's QuantizationParameters table (scale, zero_point, quantized_dimension)");
        if (buffer >= d->nb) return fail(d, "model: tensor %u names buffer %llu; the model has %u", i,
                                         (unsigned long long)buffer, d->nb);
        x->type = (uint32_t)type, x->buffer = (uint32_t)buffer, x->name_len = name_len;
        x->rank = rank <= MAXR ? (int)rank : -1;
        x->count = 1;
        for (uint32_t k = 0; x->rank >= 0 && k < rank; k++) {
            x->dims[k] = i32(d, shape, k);
            if (x->dims[k] < 0 || (x->dims[k] && x->count > INT64_MAX / 4 / x->dims[k])) x->rank = -1;
            else x->count *= x->dims[k];
        }
    }
    return 0;
}

static int check_index_vector(dec *d, size_t data, uint32_t n, int optional, const char *what, uint32_t which) {
    for (uint32_t k = 0; k < n; k++) {
        const int32_t i = i32(d, data, k);
        if ((i < 0 && !(optional && i == -1)) || (i >= 0 && (uint32_t)i >= d->nt))
            return fail(d, "model: %s %u names tensor %d; the model has %u tensors", what, which, i, d->nt);
    }
    return 0;
}

static int parse_ops(dec *d, const tbl *g) {
    size_t data;
    if (!vec_field(d, g, 3, 4, &d->no, &data)) return MALFORMED("the operators vector");
    d->ops_vec = data - 4;
    d->o = (opr *)calloc(d->no ? d->no : 1, sizeof *d->o);
    if (!d->o) return fail(d, "out of memory reading %u operators", d->no);
    for (uint32_t i = 0; i < d->no; i++) {
        opr *o = &d->o[i];
        tbl t;
        uint64_t code, type;
        uint32_t len;
        tbl options;
        if (!elem_table(d, data, i, &t, &o->entry) || !scalar(d, &t, 0, 4, 0, &code) ||
            !vec_field(d, &t, 1, 4, &o->n_in, &o->ins) || !vec_field(d, &t, 2, 4, &o->n_out, &o->outs) ||
            !vec_field(d, &t, 5, 1, &len, &o->opts) || !vec_field(d, &t, 8, 4, &o->n_inter, &o->inter) ||
            !scalar(d, &t, 3, 1, 0, &type) || !ref(d, &t, 4, &o->bopts) ||
            (o->bopts && !table(d, o->bopts, &options)))
            return MALFORMED("an Operator table");
        o->bopts_type = (uint32_t)type;
        if (code >= d->nc) return fail(d, "model: operator %u has opcode_index %llu; the model has %u operator codes",
                                       i, (unsigned long long)code, d->nc);
        o->code = (uint32_t)code, o->opts_len = len, o->kind = -1, o->out = -1, o->weight = -1, o->bias = -1;
        if (check_index_vector(d, o->ins, o->n_in, 1, "operator", i) ||
            check_index_vector(d, o->outs, o->n_out, 0, "operator", i) ||
            check_index_vector(d, o->inter, o->n_inter, 1, "operator", i))
            return 1;
    }
    return 0;
}

static int parse(dec *d) {
    uint64_t root;
    tbl m, g;
    size_t subs, entry;
    uint32_t n_subs, n_sigs;
    if (d->n < 8 || !get(d, 0, 4, &root)) return fail(d, "model: %zu bytes is too small for a .tflite", d->n);
    if (memcmp(d->b + 4, "TFL3", 4)) return fail(d, "model: the file identifier is not TFL3 (not a .tflite)");
    if (!table(d, (size_t)root, &m)) return MALFORMED("the Model table");
    if (!vec_field(d, &m, 2, 4, &n_subs, &subs) || !vec_field(d, &m, 7, 4, &n_sigs, &entry))
        return MALFORMED("the subgraphs vector");
    if (n_subs != 1) return fail(d, "model: %u subgraphs; decode at load handles models of one", n_subs);
    if (n_sigs) return fail(d, "model: decode at load does not carry over signature defs; load the file as it is");
    if (!elem_table(d, subs, 0, &g, &entry)) return MALFORMED("the SubGraph table");
    if (parse_buffers(d, &m) || parse_codes(d, &m) || parse_tensors(d, &g) || parse_ops(d, &g)) return 1;
    if (!vec_field(d, &g, 1, 4, &d->n_gin, &d->gin) || !vec_field(d, &g, 2, 4, &d->n_gout, &d->gout))
        return MALFORMED("the subgraph's inputs / outputs");
    return check_index_vector(d, d->gin, d->n_gin, 0, "subgraph input", 0) ||
           check_index_vector(d, d->gout, d->n_gout, 0, "subgraph output", 0);
}

/* ---- the ai.edgepack nodes ------------------------------------------------------------------ */

static ep_attr_result fx_kind(const fx_map *m, const char *key, fx_result r, char *kind, size_t cap) {
    const char *k = fx_map_kind(m, key);
    if (r == FX_MISSING || !k) return EP_ATTR_MISSING;
    snprintf(kind, cap, "%s", r == FX_MALFORMED ? "an out-of-bounds FlexBuffers value" : k);
    return EP_ATTR_WRONG_TYPE;
}

static ep_attr_result fx_int(void *ctx, const char *name, int64_t *out, char *kind, size_t cap) {
    char why[160];
    const fx_result r = fx_map_int((const fx_map *)ctx, name, out, why, sizeof why);
    return r == FX_OK ? EP_ATTR_FOUND : fx_kind((const fx_map *)ctx, name, r, kind, cap);
}

static ep_attr_result fx_ints(void *ctx, const char *name, int64_t *out, size_t max, size_t *n, char *kind,
                              size_t cap) {
    char why[160];
    *n = 0;
    const fx_result r = fx_map_ints((const fx_map *)ctx, name, out, max, n, why, sizeof why);
    if (r == FX_OK || (r == FX_WRONG_TYPE && *n > max)) return EP_ATTR_FOUND;
    return fx_kind((const fx_map *)ctx, name, r, kind, cap);
}

static ep_attr_result fx_float(void *ctx, const char *name, float *out, char *kind, size_t cap) {
    (void)out;
    return fx_kind((const fx_map *)ctx, name, FX_WRONG_TYPE, kind, cap);
}

static int32_t in_at(const dec *d, const opr *o, uint32_t k) { return k < o->n_in ? i32(d, o->ins, k) : -1; }
static int32_t out_at(const dec *d, const opr *o) { return o->n_out ? i32(d, o->outs, 0) : -1; }

/* "HashedWeight node #3 (output 'W')" into buf: the delegate's label for node i. */
static void label(const dec *d, uint32_t i, char *buf, size_t cap) {
    const opr *o = &d->o[i];
    const int32_t y = out_at(d, o);
    const ten *t = y >= 0 ? &d->t[y] : NULL;
    const int len = t ? (int)(t->name_len < 80 ? t->name_len : 80) : 0;
    snprintf(buf, cap, "%s node #%u (output '%.*s')", ep_op_name((ep_op)o->kind), i, len,
             t ? (const char *)d->b + t->name : "");
}

/* A constant input of the spec's `dtype` ("float32", "int32", "uint8") as an ep_tensor over an
 * aligned copy in *copy; 0 when it is not one (another type: left to the delegate, which names it). */
static int const_view(dec *d, int32_t i, const char *dtype, ep_tensor *v, void **copy) {
    memset(v, 0, sizeof *v);
    *copy = NULL;
    if (i < 0) return 1; /* absent */
    const ten *t = &d->t[i];
    const bufr *b = &d->bf[t->buffer];
    const uint32_t want = !strcmp(dtype, "uint8") ? TYPE_UINT8 : !strcmp(dtype, "int32") ? TYPE_INT32 : TYPE_FLOAT32;
    const size_t item = want == TYPE_UINT8 ? 1 : 4;
    if (t->type != want || t->rank < 0 || (t->count && (!b->len || b->len / item < (uint64_t)t->count)))
        return 0; /* a tensor of count 0 (a fully pruned layer's indices) is a constant without a buffer */
    *copy = malloc(item * (size_t)(t->count ? t->count : 1));
    if (!*copy) return 0;
    memcpy(*copy, d->b + b->data, item * (size_t)t->count);
    v->present = 1, v->bytes = *copy, v->rank = (size_t)t->rank, v->count = t->count;
    v->dtype = want == TYPE_UINT8 ? EP_DTYPE_UINT8 : want == TYPE_INT32 ? EP_DTYPE_INT32 : EP_DTYPE_FLOAT32;
    v->data = want == TYPE_FLOAT32 ? (const float *)*copy : NULL;
    memcpy(v->dims, t->dims, sizeof(int64_t) * (size_t)t->rank);
    return 1;
}

/* Per tensor of the input graph: the node writing it (-1 when none) and how many nodes and graph outputs read it. */
static void index_graph(dec *d) {
    for (uint32_t t = 0; t < d->nt; t++) d->producer[t] = -1, d->uses[t] = 0;
    for (uint32_t i = 0; i < d->no; i++) {
        const opr *o = &d->o[i];
        for (uint32_t k = 0; k < o->n_out; k++) d->producer[i32(d, o->outs, k)] = (int)i;
        for (uint32_t k = 0; k < o->n_in; k++)
            if (in_at(d, o, k) >= 0) d->uses[in_at(d, o, k)]++;
    }
    for (uint32_t k = 0; k < d->n_gout; k++) d->uses[i32(d, d->gout, k)]++;
}

/* The CAST node writing tensor t (as its one output), or -1. */
static int32_t cast_of(const dec *d, int32_t t) {
    const int32_t p = t >= 0 ? d->producer[t] : -1;
    return p >= 0 && d->c[d->o[p].code].builtin == OP_CAST && d->o[p].n_out == 1 ? p : -1;
}

static int graph_input(const dec *d, int32_t t) {
    for (uint32_t k = 0; k < d->n_gin; k++)
        if (i32(d, d->gin, k) == t) return 1;
    return 0;
}

/* A CAST node, or a tensor, in messages (decode_tflite.py and exporter/validate.py use the same words). */
static void cast_label(const dec *d, int32_t p, char *buf, size_t cap) {
    const int32_t y = out_at(d, &d->o[p]);
    const ten *t = &d->t[y];
    snprintf(buf, cap, "CAST node #%d (output '%.*s')", p, (int)(t->name_len < 80 ? t->name_len : 80),
             (const char *)d->b + t->name);
}

#define CAST_TAIL "a CAST only to float32 of a constant int8 tensor"

/* int8 storage (docs/ops.md): a weight input of ai.edgepack node i (op) written by a CAST must be HashedWeight
 * 'buckets' or CodebookWeight 'codebook', a CAST to float32 of a constant int8 tensor whose buffer matches its
 * shape and holds no -128 (exporter/validate.py checks the same, in the same words). 1 refuses (err set). */
static int check_casts(dec *d, uint32_t i, ep_op op) {
    const opr *o = &d->o[i];
    char where[200], cast[160], msg[600];
    for (int k = 0; k < ep_op_n_inputs(op); k++) {
        const int32_t t = in_at(d, o, (uint32_t)k), p = cast_of(d, t);
        if (p < 0 || strcmp(ep_op_input_kind(op, k), "weight")) continue;
        const char *slot = ep_op_input_name(op, k);
        const int32_t x = d->o[p].n_in == 1 ? in_at(d, &d->o[p], 0) : -1;
        const ten *s = x >= 0 ? &d->t[x] : NULL;
        const uint64_t len = s ? d->bf[s->buffer].len : 0;
        cast_label(d, p, cast, sizeof cast);
        const int sn = s ? (int)(s->name_len < 80 ? s->name_len : 80) : 0;
        const char *name = s ? (const char *)d->b + s->name : "";
        if (!((op == EP_OP_HashedWeight && !strcmp(slot, "buckets")) ||
              (op == EP_OP_CodebookWeight && !strcmp(slot, "codebook"))))
            snprintf(msg, sizeof msg, "input '%s' is the output of %s; only HashedWeight 'buckets' and CodebookWeight "
                     "'codebook' may be stored as int8 (" CAST_TAIL ")", slot, cast);
        else if (d->t[t].type != TYPE_FLOAT32)
            snprintf(msg, sizeof msg, "input '%s' is the output of %s to TensorType %u; a decoder's weight input may "
                     "be " CAST_TAIL, slot, cast, d->t[t].type);
        else if (!s || graph_input(d, x) || (!len && s->count) || s->type != TYPE_INT8) {
            char what[64];
            if (s && graph_input(d, x)) snprintf(what, sizeof what, "a graph input");
            else if (!s || (!len && s->count)) snprintf(what, sizeof what, "not a constant");
            else snprintf(what, sizeof what, "a constant of TensorType %u", s->type);
            snprintf(msg, sizeof msg, "input '%s' is the output of %s of tensor %d ('%.*s'), which is %s; a decoder's "
                     "weight input may be " CAST_TAIL, slot, cast, x, sn, name, what);
        } else if (s->rank < 0 || len != (uint64_t)s->count)
            snprintf(msg, sizeof msg, "input '%s' (CAST of int8 tensor %d '%.*s'): its buffer holds %llu bytes; its "
                     "shape needs %lld", slot, x, sn, name, (unsigned long long)len,
                     (long long)(s->rank < 0 ? -1 : s->count));
        else {
            const uint8_t *q = d->b + d->bf[s->buffer].data;
            const uint8_t *low = (const uint8_t *)memchr(q, 0x80, (size_t)len);
            if (!low) continue;
            snprintf(msg, sizeof msg, "input '%s' (CAST of int8 tensor %d '%.*s'): value %zu is -128; int8-stored "
                     "weights must be in [-127, 127]", slot, x, sn, name, (size_t)(low - q));
        }
        label(d, i, where, sizeof where);
        return fail(d, "edgepack %s: %s", where, msg);
    }
    return 0;
}

/* The CAST node (int8 constant -> float32 tensor t, t read by its decoder only) of an int8-stored weight, or -1;
 * check_casts has checked it. */
static int32_t storage_cast(const dec *d, int32_t t) {
    const int32_t p = cast_of(d, t);
    if (p < 0 || d->t[t].type != TYPE_FLOAT32 || d->bf[d->t[t].buffer].len || d->uses[t] != 1 || d->o[p].n_in != 1)
        return -1;
    const int32_t x = in_at(d, &d->o[p], 0);
    if (x < 0) return -1;
    const ten *s = &d->t[x];
    const bufr *b = &d->bf[s->buffer];
    if (s->type != TYPE_INT8 || s->rank < 0 || s->count != d->t[t].count || b->len != (uint64_t)s->count)
        return -1;
    return p;
}

/* const_view of a float32 weight, or of an int8 constant through its storage CAST (as float32). */
static int weight_view(dec *d, int32_t i, const char *dtype, ep_tensor *v, void **copy) {
    if (const_view(d, i, dtype, v, copy)) return 1;
    const int32_t p = strcmp(dtype, "float32") ? -1 : storage_cast(d, i);
    if (p < 0) return 0;
    const ten *s = &d->t[in_at(d, &d->o[p], 0)];
    float *f = (float *)malloc(sizeof(float) * (size_t)(s->count ? s->count : 1));
    if (!f) return 0;
    const int8_t *q = (const int8_t *)(d->b + d->bf[s->buffer].data);
    for (int64_t e = 0; e < s->count; e++) f[e] = (float)q[e];
    *copy = f;
    v->present = 1, v->bytes = f, v->data = f, v->rank = (size_t)s->rank, v->count = s->count;
    v->dtype = EP_DTYPE_FLOAT32;
    memcpy(v->dims, s->dims, sizeof(int64_t) * (size_t)s->rank);
    return 1;
}

static int add_value(dec *d, int kind, int op, int src, int tensor, int rank, const int64_t *dims) {
    val *v = &d->v[d->nv];
    memset(v, 0, sizeof *v);
    v->kind = kind, v->op = op, v->src = src, v->tensor = tensor, v->rank = rank, v->buffer = -1, v->count = 1;
    v->name = tensor;
    for (int k = 0; k < rank; k++) v->dims[k] = dims[k], v->count *= dims[k];
    if (tensor >= 0) d->value_of[tensor] = (int)d->nv;
    return (int)d->nv++;
}

/* Whether node i is an ai.edgepack op to decode: read and check it like the delegate (a bad node
 * is refused with the delegate's words); 0 leaves it, 1 refuses (err set), 2 decodes. */
static int classify_edgepack(dec *d, uint32_t i) {
    opr *o = &d->o[i];
    const opc *c = &d->c[o->code];
    const size_t plen = strlen(PREFIX);
    if (c->builtin != OP_CUSTOM || c->custom_len <= plen || memcmp(d->b + c->custom, PREFIX, plen)) return 0;
    const char *name = (const char *)d->b + c->custom + plen;
    const size_t name_len = c->custom_len - plen;
    for (int k = 0; k < EP_OP_COUNT && o->kind < 0; k++)
        if (strlen(ep_op_name((ep_op)k)) == name_len && !memcmp(name, ep_op_name((ep_op)k), name_len)) o->kind = k;
    if (o->kind < 0) return 0;
    const ep_op op = (ep_op)o->kind;
    if (op != EP_OP_HashedWeight && op != EP_OP_CodebookWeight && op != EP_OP_HyperWeight && op != EP_OP_HashedMatMul)
        return check_casts(d, i, op); /* left to the delegate, but not an int8-stored weight in a wrong place */
    char where[200], msg[1100];
    label(d, i, where, sizeof where);
    fx_map m;
    ep_op_attrs at;
    if (fx_map_open(d->b + o->opts, o->opts_len, &m, msg, sizeof msg))
        return fail(d, "edgepack %s: %s", where, msg);
    const ep_attr_reader reader = {&m, fx_int, fx_ints, fx_float};
    if (ep_op_read_attrs(op, EP_RUNTIME_TFLITE, &reader, &at, msg, sizeof msg))
        return fail(d, "edgepack %s: %s", where, msg);
    if (o->n_in < (uint32_t)ep_op_n_required(op) || o->n_in > (uint32_t)ep_op_n_inputs(op) || o->n_out != 1)
        return fail(d, "edgepack %s: has %u inputs and %u outputs; takes %d..%d inputs and one output", where,
                    o->n_in, o->n_out, ep_op_n_required(op), ep_op_n_inputs(op));
    if (check_casts(d, i, op)) return 1;
    if (op == EP_OP_HashedMatMul && (at.mode != 0 || at.activation != 0 || in_at(d, o, 4) >= 0))
        return 0; /* stream mode, or an epilogue: the delegate's kernel applies it */
    ep_tensor in[EP_OP_MAX_INPUTS];
    void *copies[EP_OP_MAX_INPUTS] = {0};
    memset(in, 0, sizeof in);
    int rc = 2;
    for (int k = 0; k < ep_op_n_inputs(op) && rc == 2; k++) {
        const int32_t t = in_at(d, o, (uint32_t)k);
        if (!strcmp(ep_op_input_kind(op, k), "weight")) {
            if (!weight_view(d, t, ep_op_input_dtype(op, k), &in[k], &copies[k]))
                rc = 0; /* fed weights, or another type: left to the delegate */
        } else if (t >= 0) {
            const ten *x = &d->t[t];
            if (x->type != TYPE_FLOAT32 || x->rank < 1) rc = 0;
            in[k].present = 1, in[k].rank = x->rank < 0 ? 0 : (size_t)x->rank, in[k].count = x->count;
            memcpy(in[k].dims, x->dims, sizeof(int64_t) * in[k].rank);
        }
    }
    const int32_t y = out_at(d, o);
    if (rc == 2 && ((op != EP_OP_HashedMatMul ? ep_op_check_weights(op, &at, in, msg, sizeof msg)
                                              : ep_op_check_inputs(op, &at, in, msg, sizeof msg)) ||
                    ep_op_check_virtual(op, &at, &d->lim, msg, sizeof msg)))
        rc = fail(d, "edgepack %s: %s", where, msg);
    else if (rc == 2 && (d->t[y].type != TYPE_FLOAT32 || d->bf[d->t[y].buffer].len))
        rc = fail(d, "edgepack %s: output (tensor %d) is %s; an op output must be a float32 tensor without a data "
                  "buffer", where, y, d->t[y].type != TYPE_FLOAT32 ? "not float32" : "a constant");
    for (int k = 0; k < EP_OP_MAX_INPUTS; k++) free(copies[k]);
    if (rc == 2 && !(o->at = (ep_op_attrs *)malloc(sizeof at))) rc = fail(d, "out of memory reading %s", where);
    if (rc == 2) *o->at = at;
    return rc;
}

/* TRANSPOSE / RESHAPE of a decoded float32 value, or CAST(float32 -> int8) of one (an int8-stored weight, after
 * its layout op: only the filter is int8), into a new value of its output; 1 when folded. An int8 value is the
 * end of its chain: no layout op, CAST or epilogue folds it further. */
static int fold_layout(dec *d, uint32_t i) {
    const opr *o = &d->o[i];
    const int32_t x = in_at(d, o, 0), y = out_at(d, o);
    const int builtin = d->c[o->code].builtin;
    if (builtin == OP_CAST && x >= 0 && d->value_of[x] >= 0 && o->n_out == 1 && d->value_of[y] < 0 &&
        !d->v[d->value_of[x]].int8 && d->t[y].type == TYPE_INT8 && d->t[y].rank == d->v[d->value_of[x]].rank &&
        d->t[y].count == d->v[d->value_of[x]].count) { /* float32 -> int8: an int8-stored weight */
        const int v = add_value(d, V_CAST8, (int)i, d->value_of[x], y, d->v[d->value_of[x]].rank,
                                d->v[d->value_of[x]].dims);
        d->v[v].int8 = 1;
        return 1;
    }
    if ((builtin != OP_TRANSPOSE && builtin != OP_RESHAPE) || x < 0 || d->value_of[x] < 0 || o->n_out != 1 ||
        d->value_of[y] >= 0 || d->v[d->value_of[x]].int8 || d->t[y].type != TYPE_FLOAT32)
        return 0;
    const int src = d->value_of[x];
    const val s = d->v[src];
    if (builtin == OP_RESHAPE) {
        const ten *t = &d->t[y];
        if (t->rank < 0 || t->count != s.count) return 0;
        add_value(d, V_RESHAPE, (int)i, src, y, t->rank, t->dims);
        return 1;
    }
    const int32_t p = in_at(d, o, 1);
    if (p < 0) return 0;
    const ten *pt = &d->t[p];
    const bufr *pb = &d->bf[pt->buffer];
    if (pt->type != TYPE_INT32 || pt->rank != 1 || pt->count != s.rank || pb->len < 4 * (size_t)s.rank) return 0;
    int perm[MAXR], seen[MAXR] = {0};
    int64_t dims[MAXR];
    for (int k = 0; k < s.rank; k++) {
        uint64_t v = 0;
        get(d, pb->data + 4 * (size_t)k, 4, &v);
        const int32_t a = (int32_t)(uint32_t)v;
        if (a < 0 || a >= s.rank || seen[a]++) return 0;
        perm[k] = a, dims[k] = s.dims[a];
    }
    const int v = add_value(d, V_TRANSPOSE, (int)i, src, y, s.rank, dims);
    memcpy(d->v[v].perm, perm, sizeof perm);
    return 1;
}

/* The operator code FULLY_CONNECTED runs under: an existing one, else a code no kept node uses
 * (returned negated - 1: its entry gets a new table); d->nc when none is free. */
static int64_t fc_code(dec *d) {
    for (uint32_t c = 0; c < d->nc; c++)
        if (d->c[c].builtin == OP_FULLY_CONNECTED) return c;
    for (uint32_t c = 0; c < d->nc; c++) d->c[c].kept_users = 0;
    for (uint32_t i = 0; i < d->no; i++)
        if (d->o[i].state == KEEP || d->o[i].state == REBUILD) d->c[d->o[i].code].kept_users++;
    for (uint32_t c = 0; c < d->nc; c++)
        if (!d->c[c].kept_users) return -(int64_t)c - 1;
    return d->nc;
}

/* A builtin options field (sz bytes, default def) of node o; def when the node has no options. */
static uint64_t option(const dec *d, const opr *o, int id, size_t sz, uint64_t def) {
    tbl t;
    uint64_t v = def;
    if (o->bopts && table(d, o->bopts, &t) && scalar(d, &t, id, sz, def, &v)) return v;
    return def;
}

/* Whether tensor t is a float32 constant that broadcasts over the last axis only of a rank-`rank`
 * output with C channels ([C], [1, .., C] or one value); its values into c[C] when c is given. */
static int channel_const(const dec *d, int32_t t, int64_t C, int rank, float *c) {
    if (t < 0) return 0;
    const ten *x = &d->t[t];
    const bufr *b = &d->bf[x->buffer];
    if (x->type != TYPE_FLOAT32 || x->rank < 0 || x->rank > rank || !b->len || b->len / 4 < (uint64_t)x->count ||
        (x->count != 1 && x->count != C))
        return 0;
    for (int k = 0; x->count != 1 && k + 1 < x->rank; k++)
        if (x->dims[k] != 1) return 0;
    for (int64_t e = 0; c && e < C; e++) {
        uint64_t v = 0;
        get(d, b->data + 4 * (size_t)(x->count == 1 ? 0 : e), 4, &v);
        const uint32_t u = (uint32_t)v;
        memcpy(&c[e], &u, 4);
    }
    return 1;
}

/* Fold the MUL / ADD by per-channel constants and the RELU / RELU6 that alone read node i's output
 * (a new FULLY_CONNECTED, or a convolution whose filter is a decoded weight no one else reads)
 * into it, as TFLite's converter does for a dense model. */
static void fold_epilogue(dec *d, uint32_t i) {
    opr *o = &d->o[i];
    const int b = d->c[o->code].builtin;
    int32_t bias = -1;
    if (o->state == TO_FC) {
        o->channels = o->at->out_f, bias = in_at(d, o, 3);
    } else if (o->state == KEEP && (b == OP_CONV_2D || b == OP_DEPTHWISE_CONV_2D) && o->n_out == 1 &&
               (o->n_in == 2 || o->n_in == 3) && o->bopts &&
               o->bopts_type == (b == OP_CONV_2D ? OPTIONS_CONV_2D : OPTIONS_DEPTHWISE_CONV_2D) &&
               !option(d, o, b == OP_CONV_2D ? 3 : 4, 1, 0)) {
        const int32_t w = in_at(d, o, 1);
        if (w < 0 || d->value_of[w] < 0 || d->readers[w] != 1 || d->v[d->value_of[w]].rank != 4 ||
            d->v[d->value_of[w]].int8)
            return;
        o->weight = d->value_of[w], o->act = 0, o->out = out_at(d, o), bias = in_at(d, o, 2);
        o->channels = d->v[o->weight].dims[b == OP_CONV_2D ? 0 : 3];
    } else {
        return;
    }
    const int bias_ok = bias < 0 || (d->t[bias].rank == 1 && channel_const(d, bias, o->channels, 1, NULL) &&
                                     d->t[bias].count == o->channels);
    int32_t y = o->out;
    while (o->n_steps < MAX_STEPS && y >= 0 && d->readers[y] == 1 && d->consumer[y] >= 0) {
        opr *e = &d->o[d->consumer[y]];
        const int eb = d->c[e->code].builtin;
        const int32_t z = e->n_out == 1 ? out_at(d, e) : -1;
        if (e->state != KEEP || z < 0 || in_at(d, e, 0) != y || d->t[z].type != TYPE_FLOAT32 ||
            d->t[z].rank != d->t[y].rank || o->act)
            break;
        if (eb == OP_RELU || eb == OP_RELU6) {
            if (e->n_in != 1) break;
            o->act = eb == OP_RELU ? ACT_RELU : ACT_RELU6;
        } else if (eb != OP_MUL && eb != OP_ADD) {
            break;
        } else if (!bias_ok || e->n_in != 2 || option(d, e, 0, 1, 0) ||
                   !channel_const(d, in_at(d, e, 1), o->channels, d->t[y].rank, NULL)) {
            break;
        }
        e->state = REMOVE;
        o->steps[o->n_steps++] = d->consumer[y];
        y = z;
    }
    o->out = y;
    if (o->state == KEEP && o->n_steps) o->state = REBUILD;
}

/* The weight and bias of a node with folded MUL / ADD steps: w *= c per output channel (axis 0, or
 * the last axis of a depthwise filter), bias = (bias * c) + a in the order of the steps. */
static int apply_steps(dec *d, const opr *o) {
    val *w = &d->v[o->weight], *bv = o->bias >= 0 ? &d->v[o->bias] : NULL;
    const int64_t C = o->channels, inner = w->count / C;
    const int last_axis = d->c[o->code].builtin == OP_DEPTHWISE_CONV_2D && o->state == REBUILD;
    float *c = (float *)malloc(sizeof(float) * (size_t)C);
    if (!c) return fail(d, "out of memory folding node #%d's epilogue", (int)(o - d->o));
    for (int k = 0; k < o->n_steps; k++) {
        const opr *e = &d->o[o->steps[k]];
        const int eb = d->c[e->code].builtin;
        if (eb != OP_MUL && eb != OP_ADD) continue;
        channel_const(d, in_at(d, e, 1), C, MAXR, c);
        for (int64_t ch = 0; bv && ch < C; ch++)
            bv->data[ch] = eb == OP_MUL ? bv->data[ch] * c[ch] : bv->data[ch] + c[ch];
        for (int64_t el = 0; eb == OP_MUL && el < w->count; el++) w->data[el] *= c[last_axis ? el % C : el / inner];
    }
    free(c);
    return 0;
}

/* ---- writing: tables appended after the copy, uoffsets pointing forward ---------------------- */

typedef struct wbuf {
    uint8_t *b;
    size_t n, cap;
    int full; /* a write did not fit: an internal error */
} wbuf;

static int w_room(wbuf *w, size_t k) {
    if (k <= w->cap - w->n) return 1;
    w->full = 1;
    return 0;
}

static void put32(uint8_t *b, size_t pos, uint32_t v) {
    for (int i = 0; i < 4; i++) b[pos + (size_t)i] = (uint8_t)(v >> (8 * i));
}

static void w_pad(wbuf *w, size_t align, size_t offset) { /* until (n + offset) % align == 0 */
    while ((w->n + offset) % align && w_room(w, 1)) w->b[w->n++] = 0;
}

static void w_u32(wbuf *w, uint32_t v) {
    if (!w_room(w, 4)) return;
    put32(w->b, w->n, v);
    w->n += 4;
}

/* The uoffset at `at` (< target) now points at target. */
static void point(wbuf *w, size_t at, size_t target) { put32(w->b, at, (uint32_t)(target - at)); }

/* A table of n 4-byte slots for fields ids[] with values vals[]; slot[k] gets each slot's position
 * (a uoffset slot is patched with point() once its child is written). Returns the table's position. */
static size_t w_table(wbuf *w, int n, const int *ids, const uint32_t *vals, size_t *slot) {
    int max_id = 0;
    for (int k = 0; k < n; k++) max_id = ids[k] > max_id ? ids[k] : max_id;
    const size_t vt_len = 4 + 2 * (size_t)(max_id + 1);
    w_pad(w, 4, vt_len);
    if (!w_room(w, vt_len + 4 + 4 * (size_t)n)) return 0;
    const size_t vt = w->n;
    memset(w->b + vt, 0, vt_len);
    w->b[vt] = (uint8_t)vt_len, w->b[vt + 2] = (uint8_t)(4 + 4 * n);
    for (int k = 0; k < n; k++) w->b[vt + 4 + 2 * (size_t)ids[k]] = (uint8_t)(4 + 4 * k);
    w->n += vt_len;
    const size_t t = w->n;
    w_u32(w, (uint32_t)(t - vt)); /* soffset: the vtable precedes the table */
    for (int k = 0; k < n; k++) {
        if (slot) slot[k] = w->n;
        w_u32(w, vals[k]);
    }
    return t;
}

static size_t w_ints(wbuf *w, int n, const int64_t *v) {
    w_pad(w, 4, 0);
    const size_t at = w->n;
    w_u32(w, (uint32_t)n);
    for (int k = 0; k < n; k++) w_u32(w, (uint32_t)(int32_t)v[k]);
    return at;
}

static size_t w_string(wbuf *w, const char *a, size_t na, const char *b) {
    const size_t nb = b ? strlen(b) : 0;
    w_pad(w, 4, 0);
    const size_t at = w->n;
    if (!w_room(w, 4 + na + nb + 1)) return at;
    w_u32(w, (uint32_t)(na + nb));
    memcpy(w->b + w->n, a, na);
    if (nb) memcpy(w->b + w->n + na, b, nb);
    w->n += na + nb;
    w->b[w->n++] = 0;
    return at;
}

/* A copy of vector bytes (n elements of el bytes at data in the input), its data aligned to el. */
static size_t w_copy(const dec *d, wbuf *w, uint32_t n, size_t el, size_t data) {
    w_pad(w, el > 4 ? el : 4, 4);
    const size_t at = w->n;
    if (!w_room(w, 4 + el * (size_t)n)) return at;
    w_u32(w, n);
    memcpy(w->b + w->n, d->b + data, el * (size_t)n);
    w->n += el * (size_t)n;
    return at;
}

/* A QuantizationParameters table copied from the input's at q (scale, zero_point, quantized_dimension). */
static size_t w_quant(const dec *d, wbuf *w, size_t q) {
    tbl t;
    uint32_t n_scale = 0, n_zero = 0;
    size_t scale = 0, zero = 0;
    uint64_t dim = 0;
    if (!table(d, q, &t) || !vec_field(d, &t, 2, 4, &n_scale, &scale) || !vec_field(d, &t, 3, 8, &n_zero, &zero) ||
        !scalar(d, &t, 6, 4, 0, &dim))
        return 0;
    const int ids[] = {2, 3, 6};
    const uint32_t vals[] = {0, 0, (uint32_t)dim};
    size_t slot[3];
    const size_t at = w_table(w, 3, ids, vals, slot);
    if (!at) return 0;
    point(w, slot[0], w_copy(d, w, n_scale, 4, scale));
    point(w, slot[1], w_copy(d, w, n_zero, 8, zero));
    return at;
}

/* A Tensor table (shape, type, buffer, name + suffix, the quantization at quant when not 0) that entry `entry`
 * now points at. */
static void w_tensor(const dec *d, wbuf *w, size_t entry, int rank, const int64_t *dims, uint32_t type,
                     uint32_t buffer, const char *name, size_t name_len, const char *suffix, size_t quant) {
    const int ids[] = {0, 1, 2, 3, 4};
    const uint32_t vals[] = {0, type, buffer, 0, 0};
    size_t slot[5];
    const size_t t = w_table(w, quant ? 5 : 4, ids, vals, slot);
    if (!t) return;
    point(w, entry, t);
    point(w, slot[0], w_ints(w, rank, dims));
    point(w, slot[3], w_string(w, name, name_len, suffix));
    if (quant) {
        const size_t q = w_quant(d, w, quant);
        if (q) point(w, slot[4], q);
        else w->full = 1;
    }
}

/* ---- the rewrite ----------------------------------------------------------------------------- */

static size_t value_bytes(const val *v) { return 4 * (size_t)v->count; }
static size_t stored_bytes(const val *v) { return (v->int8 ? 1 : 4) * (size_t)v->count; }

/* Node o as a new Operator table its entry points at: a FULLY_CONNECTED (TO_FC) under code, or
 * the convolution with its folded bias, output and activation (REBUILD), options copied. */
static void w_op(dec *d, wbuf *w, const opr *o, uint32_t code) {
    const int fc = o->state == TO_FC, dw = d->c[o->code].builtin == OP_DEPTHWISE_CONV_2D;
    const int ids[] = {0, 1, 2, 3, 4};
    const uint32_t vals[] = {fc ? code : o->code, 0, 0, fc ? OPTIONS_FULLY_CONNECTED : o->bopts_type, 0};
    size_t slot[5];
    const size_t t = w_table(w, 5, ids, vals, slot);
    if (!t) return;
    point(w, o->entry, t);
    const int32_t bias = o->bias >= 0 ? d->v[o->bias].tensor : in_at(d, o, fc ? 3 : 2);
    const int64_t ins[3] = {in_at(d, o, 0), fc ? d->v[o->weight].tensor : in_at(d, o, 1), bias}, out = o->out;
    point(w, slot[1], w_ints(w, fc || o->bias >= 0 ? 3 : (int)o->n_in, ins));
    point(w, slot[2], w_ints(w, 1, &out));
    if (fc) {
        const int fids[] = {0, 2};
        const uint32_t fvals[] = {(uint32_t)o->act, d->t[in_at(d, o, 0)].rank != 2};
        point(w, slot[4], w_table(w, 2, fids, fvals, NULL));
        return;
    }
    /* Conv2DOptions: padding, stride_w, stride_h, activation, dilation_w, dilation_h; the depthwise
     * ones have depth_multiplier before the activation */
    static const size_t size[2][7] = {{1, 4, 4, 1, 4, 4, 0}, {1, 4, 4, 4, 1, 4, 4}};
    static const uint64_t def[2][7] = {{0, 0, 0, 0, 1, 1, 0}, {0, 0, 0, 0, 0, 1, 1}};
    const int n = dw ? 7 : 6, act_id = dw ? 4 : 3, fids[] = {0, 1, 2, 3, 4, 5, 6};
    uint32_t fvals[7];
    for (int k = 0; k < n; k++)
        fvals[k] = k == act_id ? (uint32_t)o->act : (uint32_t)option(d, o, k, size[dw][k], def[dw][k]);
    point(w, slot[4], w_table(w, n, fids, fvals, NULL));
}

static int compute(dec *d, val *v) {
    char msg[1100];
    if (!v->data) v->data = (float *)malloc(value_bytes(v) ? value_bytes(v) : 4);
    if (!v->data) return fail(d, "out of memory: cannot allocate %zu bytes for a decoded weight", value_bytes(v));
    if (v->kind == V_RESHAPE) {
        memcpy(v->data, d->v[v->src].data, value_bytes(v));
        return 0;
    }
    if (v->kind == V_CAST8) { /* exact: every decoded value an integer in [-128, 127] (decode_tflite.py: the same) */
        const float *s = d->v[v->src].data;
        for (int64_t e = 0; e < v->count; e++) {
            if (s[e] >= -128.0f && s[e] <= 127.0f && (float)(int32_t)s[e] == s[e]) {
                v->data[e] = s[e];
                continue;
            }
            int src = v->src;
            while (d->v[src].kind != V_DECODE) src = d->v[src].src; /* through TRANSPOSE / RESHAPE */
            char where[200], cast[160];
            label(d, (uint32_t)d->v[src].op, where, sizeof where);
            cast_label(d, v->op, cast, sizeof cast);
            return fail(d, "edgepack %s: %s to int8 of its output: decoded value %g at index %lld is not an integer "
                        "in [-128, 127]; an int8 weight decodes exactly only from int8 buckets / codebook values "
                        "(HashedWeight with num_hashes = 1)", where, cast, (double)s[e], (long long)e);
        }
        return 0;
    }
    if (v->kind == V_BIAS) { /* the node's bias (or zeros), folded by apply_steps */
        const opr *o = &d->o[v->op];
        if (!channel_const(d, in_at(d, o, o->state == TO_FC ? 3 : 2), v->count, 1, v->data))
            memset(v->data, 0, value_bytes(v));
        return 0;
    }
    if (v->kind == V_TRANSPOSE) {
        const val *s = &d->v[v->src];
        int64_t stride[MAXR], idx[MAXR] = {0}, off = 0;
        for (int k = s->rank - 1; k >= 0; k--) stride[k] = k == s->rank - 1 ? 1 : stride[k + 1] * s->dims[k + 1];
        for (int64_t e = 0; e < v->count; e++) {
            v->data[e] = s->data[off];
            for (int k = v->rank - 1; k >= 0; k--) {
                off += stride[v->perm[k]];
                if (++idx[k] < v->dims[k]) break;
                off -= v->dims[k] * stride[v->perm[k]];
                idx[k] = 0;
            }
        }
        return 0;
    }
    /* a decode: CodebookWeight's, HyperWeight's, HashedWeight's own, or HashedMatMul's weight [out, in]
     * through HashedWeight's decoder */
    const opr *o = &d->o[v->op];
    const ep_op op = o->kind == EP_OP_CodebookWeight || o->kind == EP_OP_HyperWeight ? (ep_op)o->kind
                                                                                      : EP_OP_HashedWeight;
    const int first = o->kind == EP_OP_HashedMatMul ? 1 : 0;
    ep_tensor in[EP_OP_MAX_INPUTS];
    void *copies[EP_OP_MAX_INPUTS] = {0};
    memset(in, 0, sizeof in);
    int rc = 0;
    for (int k = 0; k < ep_op_n_inputs(op) && !rc; k++)
        rc = !weight_view(d, in_at(d, o, (uint32_t)(first + k)), ep_op_input_dtype(op, k), &in[k], &copies[k]);
    char where[200];
    label(d, (uint32_t)v->op, where, sizeof where);
    if (rc) rc = fail(d, "out of memory copying the weights of node #%d", v->op);
    else if (ep_op_run(op, o->at, NULL, in, v->data, msg, sizeof msg))
        rc = fail(d, "edgepack %s: %s", where, msg); /* the delegate's words (a codebook's contents) */
    for (int k = 0; k < EP_OP_MAX_INPUTS; k++) free(copies[k]);
    return rc;
}

/* How many nodes that stay (and graph outputs) read each tensor, and the last such node. */
static void count_readers(dec *d) {
    memset(d->readers, 0, sizeof(int) * d->nt);
    for (uint32_t t = 0; t < d->nt; t++) d->consumer[t] = -1;
    for (uint32_t i = 0; i < d->no; i++) {
        const opr *o = &d->o[i];
        if (o->state == REMOVE) continue;
        for (uint32_t k = 0; k < o->n_in; k++) {
            const int32_t t = in_at(d, o, k);
            const int bias = o->state == TO_FC ? 3 : 2;
            if (t < 0 || (o->state == TO_FC && (k == 1 || k == 2)) || (k == (uint32_t)bias && o->bias >= 0))
                continue; /* a new FULLY_CONNECTED's buckets / recon, a folded bias */
            d->readers[t]++, d->consumer[t] = (int)i;
        }
        for (uint32_t k = 0; k < o->n_inter; k++) { /* its intermediates keep their entries */
            const int32_t t = i32(d, o->inter, k);
            if (t >= 0) d->readers[t]++;
        }
    }
    for (uint32_t k = 0; k < d->n_gout; k++) d->readers[i32(d, d->gout, k)]++;
}

static int rewrite(dec *d, void **dense_out, size_t *dense_size) {
    /* which nodes go: decodable ai.edgepack nodes, and the layout ops of their weights */
    int n_hmm = 0;
    index_graph(d);
    for (uint32_t i = 0; i < d->no; i++) {
        opr *o = &d->o[i];
        const int rc = classify_edgepack(d, i);
        if (rc == 1) return 1;
        if (rc == 2 && (o->kind == EP_OP_HashedWeight || o->kind == EP_OP_CodebookWeight ||
                        o->kind == EP_OP_HyperWeight)) {
            const int64_t *s = o->at->shape;
            if (d->value_of[out_at(d, o)] >= 0)
                return fail(d, "model: tensor %d is the output of two decoded nodes", out_at(d, o));
            add_value(d, V_DECODE, (int)i, -1, out_at(d, o), (int)o->at->shape_rank, s);
            o->state = REMOVE;
        } else if (rc == 2) {
            o->state = TO_FC, o->out = out_at(d, o), n_hmm++;
        } else if (fold_layout(d, i)) {
            o->state = REMOVE;
        }
    }
    count_readers(d);
    for (uint32_t i = 0; i < d->no && d->fold; i++) fold_epilogue(d, i);
    int64_t fc = d->nc;
    if (n_hmm) fc = fc_code(d);
    for (uint32_t i = 0; i < d->no && fc == (int64_t)d->nc; i++) { /* no code to run them under: left as they are */
        opr *o = &d->o[i];
        if (o->state != TO_FC) continue;
        for (int k = 0; k < o->n_steps; k++) d->o[o->steps[k]].state = KEEP;
        o->state = KEEP, o->act = 0, o->out = out_at(d, o), o->n_steps = 0;
    }
    for (uint32_t i = 0; i < d->no; i++) { /* the CAST of a decoded node's int8-stored weight goes too */
        const opr *o = &d->o[i];
        if (!o->at || (o->state != REMOVE && o->state != TO_FC)) continue;
        for (int k = 0; k < ep_op_n_inputs((ep_op)o->kind); k++) {
            if (strcmp(ep_op_input_kind((ep_op)o->kind, k), "weight")) continue; /* not X or a bias */
            const int32_t p = storage_cast(d, in_at(d, o, (uint32_t)k));
            if (p >= 0) d->o[p].state = REMOVE;
        }
    }
    for (uint32_t i = 0; i < d->no; i++) { /* each FULLY_CONNECTED's weight and each folded bias, placed below */
        opr *o = &d->o[i];
        if (o->state == TO_FC) {
            const int64_t dims[2] = {o->at->out_f, o->at->in_f};
            o->weight = add_value(d, V_DECODE, (int)i, -1, -1, 2, dims);
            d->v[o->weight].name = out_at(d, o), d->v[o->weight].suffix = "_decoded_weight";
        }
        int scales = 0;
        for (int k = 0; k < o->n_steps; k++) scales |= d->c[d->o[o->steps[k]].code].builtin != OP_RELU &&
                                                       d->c[d->o[o->steps[k]].code].builtin != OP_RELU6;
        if (scales) {
            o->bias = add_value(d, V_BIAS, (int)i, -1, -1, 1, &o->channels);
            d->v[o->bias].name = out_at(d, o), d->v[o->bias].suffix = "_folded_bias";
        }
    }
    if (!d->nv) return 0; /* nothing to decode */
    count_readers(d);
    for (uint32_t k = 0; k < d->n_gin; k++) d->readers[i32(d, d->gin, k)]++;
    for (uint32_t i = 0; i < d->no; i++) {
        const opr *o = &d->o[i];
        if (o->state == REMOVE) continue;
        const int rebuilt = o->state == TO_FC || o->state == REBUILD;
        for (uint32_t k = 0; k < o->n_out; k++) {
            const int32_t t = rebuilt ? o->out : i32(d, o->outs, k);
            if (d->value_of[t] >= 0)
                return fail(d, "model: tensor %d is written by node #%u and by the node it is decoded from", t, i);
            d->readers[t]++;
        }
    }
    /* tensors that stay as they are keep their buffers; dead ones with a buffer are re-pointed at
     * an empty tensor, so their buffers (and their entries) are free for the decoded weights */
    int *free_t = (int *)malloc(sizeof(int) * d->nt), *free_b = (int *)malloc(sizeof(int) * d->nb);
    int n_free_t = 0, n_free_b = 0, rc = 0;
    if (!free_t || !free_b) rc = fail(d, "out of memory");
    for (uint32_t t = 0; !rc && t < d->nt; t++) {
        const int v = d->value_of[t];
        if (v >= 0 && d->readers[t]) continue;                       /* a materialized value: new table */
        if (d->readers[t]) d->bf[d->t[t].buffer].used = 1;           /* stays as it is */
        else if (d->t[t].buffer || v >= 0) free_t[n_free_t++] = (int)t; /* dead: its entry can be reused */
        else d->readers[t] = -1;                                     /* dead without a buffer: left as it is */
    }
    for (uint32_t b = 1; !rc && b < d->nb; b++)
        if (!d->bf[b].used) free_b[n_free_b++] = (int)b;
    /* the values to write: those read by a kept node (or a graph output), every FC weight */
    int next_t = 0, next_b = 0;
    int64_t used = 0;
    size_t extra = 1024;
    for (uint32_t k = 0; !rc && k < d->nv; k++) {
        val *v = &d->v[k];
        char what[320], shape[256];
        ep_tensor s;
        s.rank = (size_t)v->rank;
        memcpy(s.dims, v->dims, sizeof(int64_t) * s.rank);
        ep_tensor_dims_str(&s, shape, sizeof shape);
        snprintf(what, sizeof what, "the decoded weight %s of node #%d", shape, v->op);
        if ((uint64_t)v->count > SIZE_MAX / 8) {
            rc = fail(d, "model: %s does not fit this host's memory", what);
            break;
        }
        if (ep_limits_check_bytes(&d->lim, used, (int64_t)value_bytes(v), what)) {
            rc = fail(d, "%s", ep_last_error());
            break;
        }
        used += (int64_t)value_bytes(v);
        if (v->tensor >= 0 && d->readers[v->tensor] <= 0) continue; /* nobody reads it */
        if (v->tensor < 0 && next_t < n_free_t) v->tensor = free_t[next_t++];
        if (v->tensor < 0 || next_b >= n_free_b) {
            rc = d->fold ? 2
                         : fail(d, "model: no unused tensor / buffer entry left for the decoded weight of node #%d; "
                                "re-export the model with this version of edgepack (each node's buckets in a tensor "
                                "of their own)", v->op);
            break;
        }
        v->buffer = free_b[next_b++];
        extra += stored_bytes(v) + 192 + 4 * (size_t)v->rank + d->t[v->name].name_len;
        if (v->int8 && d->t[v->tensor].quant) { /* its quantization table, copied: bounded by the input's size */
            tbl q;
            uint32_t n_scale = 0, n_zero = 0;
            size_t at;
            if (table(d, d->t[v->tensor].quant, &q) && vec_field(d, &q, 2, 4, &n_scale, &at) &&
                vec_field(d, &q, 3, 8, &n_zero, &at))
                extra += 64 + 4 * (size_t)n_scale + 8 * (size_t)n_zero;
        }
    }
    for (uint32_t i = 0; i < d->no; i++) extra += d->o[i].state == TO_FC || d->o[i].state == REBUILD ? 256 : 0;
    if (!rc && (size_t)used > SIZE_MAX / 2 - d->n - extra)
        rc = fail(d, "model: the decoded model would not fit in memory");
    wbuf w = {NULL, 0, 0, 0};
    if (!rc) {
        w.cap = ((d->n + 15) & ~(size_t)15) + extra;
        w.b = (uint8_t *)malloc(w.cap);
        if (!w.b) rc = fail(d, "out of memory: cannot allocate the %zu-byte decoded model", w.cap);
    }
    if (!rc) {
        memcpy(w.b, d->b, d->n);
        w.n = d->n;
        for (uint32_t k = 0; k < d->nv; k++) { /* Buffer {data} and Tensor tables of the written values */
            val *v = &d->v[k];
            if (v->buffer < 0) continue;
            const int ids[] = {0};
            const uint32_t vals[] = {0};
            size_t slot;
            const size_t t = w_table(&w, 1, ids, vals, &slot);
            w_pad(&w, 16, 4); /* the data 16-byte aligned, as TFLite's converter writes it */
            if (!t || !w_room(&w, 4 + stored_bytes(v))) break;
            point(&w, d->bf[v->buffer].entry, t);
            point(&w, slot, w.n);
            w_u32(&w, (uint32_t)stored_bytes(v));
            if (v->int8) v->out8 = w.b + w.n; /* computed in floats, stored below */
            else v->data = (float *)(void *)(w.b + w.n), v->in_output = 1; /* decoded in place below */
            memset(w.b + w.n, 0, stored_bytes(v));
            w.n += stored_bytes(v);
            const ten *named = &d->t[v->name];
            w_tensor(d, &w, d->t[v->tensor].entry, v->rank, v->dims, v->int8 ? TYPE_INT8 : TYPE_FLOAT32,
                     (uint32_t)v->buffer, (const char *)d->b + named->name, named->name_len, v->suffix,
                     v->int8 ? d->t[v->tensor].quant : 0);
        }
        size_t dead = 0;
        for (int k = next_t; k < n_free_t; k++) { /* dead tensors: one shared empty table */
            const int64_t none = 0;
            if (!dead) {
                const int ids[] = {0, 1, 3};
                const uint32_t vals[] = {0, TYPE_FLOAT32, 0};
                size_t slot[3];
                dead = w_table(&w, 3, ids, vals, slot);
                if (!dead) break;
                point(&w, slot[0], w_ints(&w, 1, &none));
                point(&w, slot[2], w_string(&w, "unused", 6, NULL));
            }
            point(&w, d->t[free_t[k]].entry, dead);
        }
        if (fc < 0) { /* a code no kept node uses becomes FULLY_CONNECTED */
            const uint32_t c = (uint32_t)(-fc - 1);
            const int ids[] = {0, 2, 3};
            const uint32_t vals[] = {OP_FULLY_CONNECTED, 1, OP_FULLY_CONNECTED};
            const size_t t = w_table(&w, 3, ids, vals, NULL);
            if (t) point(&w, d->c[c].entry, t);
            fc = c;
        }
        uint32_t kept = 0;
        for (uint32_t i = 0; i < d->no; i++) { /* shorten the operators vector in place */
            opr *o = &d->o[i];
            if (o->state == REMOVE) continue;
            size_t target = 0;
            follow(d, o->entry, &target);
            o->entry = d->ops_vec + 4 + 4 * (size_t)kept++;
            point(&w, o->entry, target);
            if (o->state == TO_FC || o->state == REBUILD) w_op(d, &w, o, (uint32_t)fc);
        }
        put32(w.b, d->ops_vec, kept);
        if (w.full) rc = fail(d, "internal error: the decoded model overran its buffer");
    }
    /* the values, decoded straight into their buffers (a weight no node reads as it is, e.g. before a
     * folded TRANSPOSE, in memory of its own), then the folded epilogues */
    for (uint32_t k = 0; !rc && k < d->nv; k++) {
        val *v = &d->v[k];
        rc = compute(d, v);
        for (int64_t e = 0; !rc && v->out8 && e < v->count; e++) v->out8[e] = (uint8_t)(int8_t)v->data[e];
    }
    for (uint32_t i = 0; !rc && i < d->no; i++)
        if (d->o[i].bias >= 0) rc = apply_steps(d, &d->o[i]);
    if (!rc) {
        *dense_out = w.b, *dense_size = w.n;
        w.b = NULL;
    }
    free(w.b);
    free(free_t);
    free(free_b);
    return rc;
}

/* One parse and rewrite; 2 (no message) when folding epilogues left no entry for a weight. */
static int decode_once(dec *d, void **dense_out, size_t *dense_size) {
    int rc = parse(d);
    if (!rc) {
        d->v = (val *)calloc((size_t)d->no * 2 + 1, sizeof *d->v); /* at most two values per node */
        rc = d->v ? rewrite(d, dense_out, dense_size) : fail(d, "out of memory");
    }
    for (uint32_t k = 0; k < d->nv; k++)
        if (!d->v[k].in_output) free(d->v[k].data);
    free(d->v);
    free(d->t);
    free(d->bf);
    free(d->c);
    for (uint32_t i = 0; d->o && i < d->no; i++) free(d->o[i].at);
    free(d->o);
    free(d->value_of);
    free(d->readers);
    free(d->consumer);
    free(d->producer);
    free(d->uses);
    return rc;
}

EP_TFLITE_DECODE_EXPORT int edgepack_tflite_decode_model(const void *model, size_t size, int64_t max_virtual_weights,
                                                         int64_t max_decoded_bytes, void **dense_out,
                                                         size_t *dense_size, char *err, size_t errlen) {
    dec d;
    memset(&d, 0, sizeof d);
    d.b = (const uint8_t *)model, d.n = size, d.err = err, d.cap = errlen;
    if (errlen) err[0] = 0;
    if (!dense_out || !dense_size || (!model && size)) return fail(&d, "edgepack_tflite_decode_model: NULL argument");
    *dense_out = NULL, *dense_size = 0;
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1)
        return fail(&d, "edgepack_tflite_decode_model: decode at load needs a little-endian host (flatbuffers are "
                    "little-endian); load the file as it is");
    if (max_virtual_weights < 0 || max_decoded_bytes < 0)
        return fail(&d, "edgepack_tflite_decode_model: limits must be positive (0: the environment's or the default)");
    if (ep_limits_from_env(&d.lim)) return fail(&d, "%s", ep_last_error());
    if (max_virtual_weights) d.lim.max_virtual_weights = max_virtual_weights;
    if (max_decoded_bytes) d.lim.max_decoded_bytes = max_decoded_bytes;
    const dec fresh = d;
    d.fold = 1;
    int rc = decode_once(&d, dense_out, dense_size);
    if (rc == 2) { /* again without folding: each weight then takes its own node's entries */
        d = fresh;
        rc = decode_once(&d, dense_out, dense_size);
    }
    return rc;
}

EP_TFLITE_DECODE_EXPORT void edgepack_tflite_free_model(void *dense) { free(dense); }
