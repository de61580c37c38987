/* Decode at load for ONNX in C (decode_model.h): the ModelProto rewrite of decode_onnx.py for
 * edgepack_ort_runner, which runs on devices without Python.
 *
 * The protobuf wire format is read and written by hand here because no protobuf library is on
 * the devices: a field is a varint tag (number << 3 | wire type) followed by a varint (0), 8
 * bytes (1), a varint length and that many bytes (2) or 4 bytes (5). Field numbers are those of
 * onnx.proto: ModelProto graph=7, functions=25; GraphProto node=1, initializer=5, input=11,
 * output=12, sparse_initializer=15; NodeProto input=1, output=2, name=3, op_type=4, attribute=5,
 * domain=7; AttributeProto name=1, f=2, i=3, t=5, g=6, ints=8, tensors=10, graphs=11, type=20,
 * sparse_tensor=22, sparse_tensors=23; TensorProto dims=1, data_type=2, float_data=4, name=8,
 * raw_data=9, external_data=13 (StringStringEntryProto key=1, value=2), data_location=14;
 * FunctionProto node=7; SparseTensorProto values=1, indices=2.
 * Every field the rewrite does not change is copied byte for byte (the fallback functions, the
 * opset imports, metadata, other nodes and initializers). The input is untrusted: each length is
 * checked against the bytes left before it is used, and decoded sizes against the limits before
 * anything is allocated. Hashing and decoding are the kernels' (ep_op_read_attrs,
 * ep_op_check_weights, ep_hashed_decode; CodebookWeight and HyperWeight through ep_op_run), so the weights equal
 * the custom ops' bit for bit.
 *
 * int8 storage (decode_onnx.py, docs/ops.md "int8 storage"): a HashedWeight 'buckets' or CodebookWeight
 * 'codebook' input may be the output of Cast(to=FLOAT) of a constant INT8 initializer (values in
 * [-127, 127]); a Cast(to=INT8) of the decoded weight becomes one INT8 initializer named as its output
 * (every decoded value an integer in [-128, 127]), and the Casts, the decoder's float output and the int8
 * source are dropped when nothing else reads them: a plain QDQ graph is left for ORT's int8 kernels.
 */
#define _POSIX_C_SOURCE 200809L
#include "decode_model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edgepack/ops.h"

#define MAX_DEPTH 32           /* graphs nested in attributes, scanned recursively */
#define DOMAIN "ai.edgepack"
#define ATTR_FLOAT 1
#define ATTR_INT 2
#define ATTR_INTS 7
#define TYPE_FLOAT 1
#define TYPE_INT8 3
#define CAST_TAIL "a decoder's weight input may be a Cast only to FLOAT (1) of a constant INT8 (3) initializer"

static const uint8_t EMPTY[1] = {0};

typedef struct span {
    const uint8_t *p;
    size_t n;
} span;

static span span_of(const char *s) {
    span r = {(const uint8_t *)s, strlen(s)};
    return r;
}

static int span_eq(span s, const char *c) {
    const size_t n = strlen(c);
    return s.n == n && !memcmp(s.p, c, n);
}

static int span_same(span a, span b) { return a.n == b.n && !memcmp(a.p, b.p, a.n); }

/* ---- reading the wire format -------------------------------------------------------------- */

typedef struct pb {
    const uint8_t *p, *end;
} pb;

typedef struct pb_field {
    uint32_t num;
    int wire;
    uint64_t v;  /* wire 0 */
    span s;      /* wire 1, 2 and 5: the payload */
    span whole;  /* tag and payload, for a byte-for-byte copy */
} pb_field;

static pb reader(span s) {
    pb r = {s.p, s.p + s.n};
    return r;
}

static int read_varint(pb *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return -1;
        const uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* 1 with the next field in *f, 0 at the end, -1 when the bytes are not a valid field */
static int next_field(pb *r, pb_field *f) {
    if (r->p >= r->end) return 0;
    const uint8_t *start = r->p;
    uint64_t tag, n;
    if (read_varint(r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) return -1;
    f->num = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    f->v = 0;
    f->s.p = EMPTY;
    f->s.n = 0;
    switch (f->wire) {
    case 0:
        if (read_varint(r, &f->v)) return -1;
        break;
    case 1:
    case 5:
        n = f->wire == 1 ? 8 : 4;
        if ((uint64_t)(r->end - r->p) < n) return -1;
        f->s.p = r->p;
        f->s.n = (size_t)n;
        r->p += n;
        break;
    case 2:
        if (read_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return -1;
        f->s.p = r->p;
        f->s.n = (size_t)n;
        r->p += n;
        break;
    default: return -1; /* groups (3, 4) are not used by onnx.proto */
    }
    f->whole.p = start;
    f->whole.n = (size_t)(r->p - start);
    return 1;
}

/* ---- writing -------------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    int failed; /* out of memory: every later write is dropped, checked once at the end */
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->failed || !n) return;
    if (n > SIZE_MAX - b->n) {
        b->failed = 1;
        return;
    }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap = cap > SIZE_MAX / 2 ? b->n + n : cap * 2;
        uint8_t *p = (uint8_t *)realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_varint(buf *b, uint64_t v) {
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    put(b, tmp, n);
}

static void put_int(buf *b, uint32_t num, uint64_t v) {
    put_varint(b, (uint64_t)num << 3);
    put_varint(b, v);
}

static void put_bytes(buf *b, uint32_t num, const void *d, size_t n) {
    put_varint(b, (uint64_t)num << 3 | 2);
    put_varint(b, n);
    put(b, d, n);
}

static void put_span(buf *b, uint32_t num, span s) { put_bytes(b, num, s.p, s.n); }

/* ---- the rewrite's state -------------------------------------------------------------------- */

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

typedef struct tinfo { /* one initializer of the main graph */
    span whole, name, raw;
    int32_t type;
    int64_t dims[EP_ONNX_MAX_DIMS];
    size_t rank;
    int64_t count; /* elements; -1 when the dims are invalid or too many */
    int has_raw, external, is_input, consumed;
} tinfo;

typedef struct ninfo { /* one ai.edgepack HashedWeight / HashedMatMul / CodebookWeight / HyperWeight node of the main graph */
    size_t index; /* its place among the graph's nodes */
    span whole, name, op_type, domain, out0;
    span in[EP_OP_MAX_INPUTS];
    size_t n_in, n_out;
    int decode; /* 1: decoded */
    ep_op op;
    ep_op_attrs attrs;
    size_t w[EP_OP_MAX_INPUTS]; /* initializer index of each weight slot (SIZE_MAX: none) */
    size_t cast[EP_OP_MAX_INPUTS]; /* the Cast (c->casts) a weight slot reads (SIZE_MAX: none) */
    size_t fold;    /* the Cast (c->casts) to INT8 of its output folded into an int8 initializer (SIZE_MAX: none) */
    int keep_float; /* its float output is kept: no fold, or something besides the folded Cast reads it */
} ninfo;

enum { CAST_KEEP, CAST_SOURCE, CAST_FOLD }; /* a Cast stays; feeds decoded nodes only; is folded */

typedef struct cinfo { /* one Cast node of the main graph (int8 storage) */
    size_t index;
    span name, in0, out0;
    size_t n_in, n_out, n_to; /* its inputs, outputs and 'to' attributes: one of each, else refused */
    int64_t to;
    int role;
    size_t decoder; /* CAST_FOLD: the decoded node (c->nodes) whose output it casts */
} cinfo;

typedef struct ctx {
    char *msg;
    size_t cap;
    const char *dir;
    const ep_limits *lim;
    tinfo *inits;
    size_t n_inits;
    ninfo *nodes; /* the candidates to decode only: other nodes cost no memory */
    size_t n_nodes;
    cinfo *casts; /* the main graph's Cast nodes */
    size_t n_casts;
    struct skey *cast_by_out; /* c->casts sorted by first output (find_cast) */
    spans inputs, reads, taken;
    char **owned; /* fresh names (taken points into them) */
    size_t n_owned;
    ep_onnx_decoded *out;
    size_t out_cap;
    int64_t used;
    int malformed; /* the bytes are not a valid protobuf */
} ctx;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int fail(ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (c->cap) vsnprintf(c->msg, c->cap, fmt, ap);
    va_end(ap);
    return 1;
}

static int malformed(ctx *c, const char *what) {
    c->malformed = 1;
    return fail(c, "not a valid ONNX protobuf: %s is truncated or malformed", what);
}

static int push(ctx *c, spans *l, span s) {
    if (l->n == l->cap) {
        const size_t cap = l->cap ? 2 * l->cap : 64;
        span *v = (span *)realloc(l->v, cap * sizeof *v);
        if (!v) return fail(c, "out of memory reading the model");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 0;
}

static int contains(const spans *l, span s) {
    for (size_t i = 0; i < l->n; i++)
        if (span_same(l->v[i], s)) return 1;
    return 0;
}

static void *aligned(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

/* ---- tensors -------------------------------------------------------------------------------- */

static size_t elem_size(int32_t type) {
    switch (type) {
    case 2: case 3: case 9: case 17: case 18: case 19: case 20: return 1; /* u8 i8 bool float8 */
    case 4: case 5: case 10: case 16: return 2;                          /* u16 i16 f16 bf16 */
    case 1: case 6: case 12: return 4;                                   /* f32 i32 u32 */
    case 7: case 11: case 13: case 14: return 8;                         /* i64 f64 u64 c64 */
    case 15: return 16;                                                  /* c128 */
    default: return 0; /* strings, 4-bit types, unknown */
    }
}

static int parse_tensor(ctx *c, span whole, span payload, tinfo *t) {
    memset(t, 0, sizeof *t);
    t->whole = whole;
    t->name.p = t->raw.p = EMPTY;
    int too_many = 0, bad = 0;
    pb r = reader(payload);
    pb_field f;
    int k;
    while ((k = next_field(&r, &f)) > 0) {
        if (f.num == 1 && (f.wire == 0 || f.wire == 2)) { /* dims, unpacked or packed */
            pb d = reader(f.s);
            uint64_t v = f.v;
            for (int first = 1; f.wire == 0 ? first : d.p < d.end; first = 0) {
                if (f.wire == 2 && read_varint(&d, &v)) return malformed(c, "an initializer's dims");
                if (t->rank == EP_ONNX_MAX_DIMS) too_many = 1;
                else t->dims[t->rank++] = (int64_t)v;
                bad |= (int64_t)v < 0;
            }
        } else if (f.num == 2 && f.wire == 0) t->type = (int32_t)f.v;
        else if (f.num == 8 && f.wire == 2) t->name = f.s;
        else if (f.num == 9 && f.wire == 2) { t->raw = f.s; t->has_raw = 1; }
        else if (f.num == 14 && f.wire == 0) t->external = f.v == 1;
    }
    if (k < 0) return malformed(c, "an initializer");
    t->count = 1;
    for (size_t d = 0; d < t->rank && !bad && !too_many; d++) {
        if (t->dims[d] && t->count > INT64_MAX / 16 / t->dims[d]) bad = 1;
        else t->count *= t->dims[d];
    }
    if (bad || too_many) t->count = -1;
    return 0;
}

/* "'name'" of a tensor for messages */
#define TNAME(t) (int)((t)->name.n > 200 ? 200 : (t)->name.n), (const char *)(t)->name.p

static int parse_decimal(span s, uint64_t *out) {
    uint64_t v = 0;
    if (!s.n || s.n > 18) return 1;
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9') return 1;
        v = v * 10 + (uint64_t)(s.p[i] - '0');
    }
    *out = v;
    return 0;
}

/* The bytes of an external tensor (location below the model's folder, offset, length) into a
 * new buffer of exactly `bytes`, after checking the file holds them. */
static int read_external(ctx *c, const tinfo *t, size_t bytes, void **out) {
    span location = {EMPTY, 0}, offset = {EMPTY, 0}, length = {EMPTY, 0};
    pb r = reader(t->whole);
    pb_field f, g;
    if (next_field(&r, &f) <= 0) return malformed(c, "an initializer");
    r = reader(f.s);
    while (next_field(&r, &f) > 0) {
        if (f.num != 13 || f.wire != 2) continue;
        span key = {EMPTY, 0}, value = {EMPTY, 0};
        pb e = reader(f.s);
        int k;
        while ((k = next_field(&e, &g)) > 0) {
            if (g.num == 1 && g.wire == 2) key = g.s;
            else if (g.num == 2 && g.wire == 2) value = g.s;
        }
        if (k < 0) return malformed(c, "an external_data entry");
        if (span_eq(key, "location")) location = value;
        else if (span_eq(key, "offset")) offset = value;
        else if (span_eq(key, "length")) length = value;
    }
    uint64_t off = 0, len = bytes;
    if ((offset.n && parse_decimal(offset, &off)) || (length.n && parse_decimal(length, &len)))
        return fail(c, "initializer '%.*s': external_data offset/length must be decimal byte counts", TNAME(t));
    if (len != bytes)
        return fail(c, "initializer '%.*s': external_data length %llu differs from its shape's %zu bytes", TNAME(t),
                    (unsigned long long)len, bytes);
    int bad = !location.n || location.p[0] == '/' || location.n > 1024;
    for (size_t i = 0; i < location.n && !bad; i++) {
        const int start = i == 0 || location.p[i - 1] == '/';
        bad = location.p[i] == 0 || location.p[i] == '\\' ||
              (start && location.n - i >= 2 && location.p[i] == '.' && location.p[i + 1] == '.' &&
               (location.n - i == 2 || location.p[i + 2] == '/'));
    }
    if (bad)
        return fail(c, "initializer '%.*s' keeps its data at '%.*s', outside the model's folder; external data must "
                    "be a relative path below the .onnx file's folder (no '/' at the start, no '..')", TNAME(t),
                    (int)(location.n > 200 ? 200 : location.n), (const char *)location.p);
    if (!c->dir)
        return fail(c, "initializer '%.*s' keeps its data in the file '%.*s', but the model was given without its "
                    "folder", TNAME(t), (int)location.n, (const char *)location.p);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%.*s", c->dir, (int)location.n, (const char *)location.p) >=
        sizeof path)
        return fail(c, "initializer '%.*s': the path of its external data is too long", TNAME(t));
    const int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0) return fail(c, "initializer '%.*s': cannot open its external data %s: %s", TNAME(t), path,
                            strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < off ||
        (uint64_t)st.st_size - off < (uint64_t)bytes) {
        close(fd);
        return fail(c, "initializer '%.*s': %s holds no %zu bytes at offset %llu (the file has %lld bytes)",
                    TNAME(t), path, bytes, (unsigned long long)off, (long long)st.st_size);
    }
    if (sizeof(off_t) < 8 && off + bytes > (uint64_t)INT32_MAX) {
        close(fd);
        return fail(c, "initializer '%.*s': its external data lies past 2 GiB (a 32-bit off_t)", TNAME(t));
    }
    uint8_t *data = (uint8_t *)aligned(bytes);
    if (!data) {
        close(fd);
        return fail(c, "out of memory reading %zu bytes of initializer '%.*s'", bytes, TNAME(t));
    }
    for (size_t done = 0; done < bytes;) {
        const ssize_t n = pread(fd, data + done, bytes - done, (off_t)(off + done));
        if (n <= 0) {
            free(data);
            close(fd);
            return fail(c, "initializer '%.*s': reading %s failed", TNAME(t), path);
        }
        done += (size_t)n;
    }
    close(fd);
    *out = data;
    return 0;
}

/* int32_data (field 5, packed or not) of a uint8 (item 1) or int32 (item 4) initializer into a
 * new buffer: counted, then copied. */
static int load_int32_data(ctx *c, const tinfo *t, size_t item, void **out) {
    for (int pass = 0; pass < 2; pass++) {
        pb r = reader(t->whole);
        pb_field f;
        size_t n = 0;
        if (next_field(&r, &f) <= 0) return malformed(c, "an initializer");
        r = reader(f.s);
        while (next_field(&r, &f) > 0) {
            if (f.num != 5 || (f.wire != 0 && f.wire != 2)) continue;
            pb q = reader(f.s);
            uint64_t v = f.v;
            while (f.wire == 0 || q.p < q.end) {
                if (f.wire == 2 && read_varint(&q, &v)) return malformed(c, "int32_data");
                if (pass && n < (size_t)t->count) {
                    const int32_t x = (int32_t)(uint32_t)v;
                    if (item == 1) ((uint8_t *)*out)[n] = (uint8_t)x;
                    else memcpy((uint8_t *)*out + 4 * n, &x, 4);
                }
                n++;
                if (f.wire == 0) break;
            }
        }
        if (!pass && n != (size_t)t->count)
            return fail(c, "initializer '%.*s' holds %zu values; its shape needs %lld", TNAME(t), n,
                        (long long)t->count);
        if (!pass && !(*out = aligned(item * (size_t)(t->count ? t->count : 1)))) return fail(c, "out of memory");
    }
    return 0;
}

/* An initializer's values (raw_data, float_data / int32_data or external data) into a new buffer:
 * of the spec's dtype ("float32", "uint8" or "int32"; data_type 1, 2 or 6). */
static int load_values(ctx *c, const tinfo *t, const char *slot, const char *dtype, void **out) {
    const int want = !strcmp(dtype, "uint8") ? 2 : !strcmp(dtype, "int32") ? 6 : TYPE_FLOAT;
    const size_t item = want == 2 ? 1 : 4;
    if (t->type != want || t->count < 0 || (uint64_t)t->count > SIZE_MAX / 8)
        return fail(c, "input '%s' (initializer '%.*s') must be a %s tensor (data_type %d, valid dims), got "
                    "data_type %d", slot, TNAME(t), dtype, want, (int)t->type);
    const size_t bytes = (size_t)t->count * item;
    if (t->external) return read_external(c, t, bytes, out);
    if (want != TYPE_FLOAT && !t->has_raw) return load_int32_data(c, t, item, out);
    if (t->has_raw) {
        if (t->raw.n != bytes)
            return fail(c, "initializer '%.*s': raw_data has %zu bytes; its shape needs %zu", TNAME(t), t->raw.n,
                        bytes);
        if (!(*out = aligned(bytes ? bytes : 1))) return fail(c, "out of memory");
        memcpy(*out, t->raw.p, bytes);
        return 0;
    }
    for (int pass = 0; pass < 2; pass++) { /* float_data: counted, then copied: nothing is allocated for
                                               * values the data lacks */
        pb r = reader(t->whole);
        pb_field f;
        size_t n = 0;
        if (next_field(&r, &f) <= 0) return malformed(c, "an initializer");
        r = reader(f.s);
        while (next_field(&r, &f) > 0) {
            if (f.num != 4 || (f.wire != 2 && f.wire != 5)) continue;
            if (f.s.n % 4) return malformed(c, "float_data");
            if (pass) memcpy((uint8_t *)*out + 4 * n, f.s.p, f.s.n);
            n += f.s.n / 4;
        }
        if (!pass && n != (size_t)t->count)
            return fail(c, "initializer '%.*s' holds %zu values; its shape needs %lld", TNAME(t), n,
                        (long long)t->count);
        if (!pass && !(*out = aligned(bytes ? bytes : 1))) return fail(c, "out of memory");
    }
    return 0;
}

/* An INT8 initializer's values (raw_data, int32_data or external data), checked against its shape and to be in
 * [-127, 127] (int8 storage; exporter/validate.int8_values and _check_casts say the same); *out: a new buffer
 * of them, or out NULL to check only. */
static int load_int8(ctx *c, const tinfo *t, const char *slot, int8_t **out) {
    if (t->count < 0 || (uint64_t)t->count > SIZE_MAX / 8)
        return fail(c, "initializer '%.*s' has invalid dims", TNAME(t));
    const size_t n = (size_t)t->count;
    void *q = NULL;
    const uint8_t *v;
    if (t->external) {
        if (read_external(c, t, n, &q)) return 1;
        v = (const uint8_t *)q;
    } else if (t->has_raw) {
        if (t->raw.n != n)
            return fail(c, "initializer '%.*s': raw_data has %zu bytes; its shape needs %zu", TNAME(t), t->raw.n, n);
        v = t->raw.p;
    } else {
        if (load_int32_data(c, t, 1, &q)) return 1;
        v = (const uint8_t *)q;
    }
    for (size_t i = 0; i < n; i++)
        if (v[i] == 0x80) {
            free(q);
            return fail(c, "input '%s' (Cast of INT8 initializer '%.*s'): value %zu is -128; int8-stored weights must "
                        "be in [-127, 127]", slot, TNAME(t), i);
        }
    if (!out) {
        free(q);
        return 0;
    }
    if (!q) {
        if (!(q = aligned(n ? n : 1))) return fail(c, "out of memory");
        if (n) memcpy(q, v, n);
    }
    *out = (int8_t *)q;
    return 0;
}

/* An INT8 initializer's values as float32 in a new buffer (load_int8's checks). */
static int load_int8_as_float(ctx *c, const tinfo *t, const char *slot, void **out) {
    int8_t *q = NULL;
    if (load_int8(c, t, slot, &q)) return 1;
    const size_t n = (size_t)t->count;
    float *f = (float *)aligned(4 * (n ? n : 1));
    if (!f) {
        free(q);
        return fail(c, "out of memory");
    }
    for (size_t i = 0; i < n; i++) f[i] = (float)q[i];
    free(q);
    *out = f;
    return 0;
}

/* ---- attributes: the op layer's ep_attr_reader over a NodeProto's bytes --------------------- */

typedef struct attr_ctx {
    span node;
} attr_ctx;

static const char *attr_kind(uint64_t type) {
    static const char *const kinds[] = {"an attribute without a type", "a float", "an int", "a string", "a tensor",
                                        "a graph", "floats", "ints", "strings", "tensors", "graphs"};
    return type < sizeof kinds / sizeof kinds[0] ? kinds[type] : "another type";
}

/* How many attributes named `name` the node has; the last one's payload in *a and its type in *type. */
static size_t find_attr(span node, const char *name, span *a, uint64_t *type) {
    pb r = reader(node), q;
    pb_field f, g;
    size_t found = 0;
    while (next_field(&r, &f) > 0) {
        if (f.num != 5 || f.wire != 2) continue;
        span n = {EMPTY, 0};
        uint64_t t = 0;
        q = reader(f.s);
        while (next_field(&q, &g) > 0) {
            if (g.num == 1 && g.wire == 2) n = g.s;
            else if (g.num == 20 && g.wire == 0) t = g.v;
        }
        if (span_eq(n, name)) {
            *a = f.s;
            *type = t;
            found++;
        }
    }
    return found;
}

static ep_attr_result get_int(void *vctx, const char *name, int64_t *out, char *kind, size_t cap) {
    span a;
    uint64_t type;
    if (!find_attr(((attr_ctx *)vctx)->node, name, &a, &type)) return EP_ATTR_MISSING;
    if (type != ATTR_INT) {
        snprintf(kind, cap, "%s", attr_kind(type));
        return EP_ATTR_WRONG_TYPE;
    }
    pb r = reader(a);
    pb_field f;
    *out = 0;
    while (next_field(&r, &f) > 0)
        if (f.num == 3 && f.wire == 0) *out = (int64_t)f.v;
    return EP_ATTR_FOUND;
}

static ep_attr_result get_ints(void *vctx, const char *name, int64_t *out, size_t cap, size_t *n, char *kind,
                               size_t kind_cap) {
    span a;
    uint64_t type, v;
    if (!find_attr(((attr_ctx *)vctx)->node, name, &a, &type)) return EP_ATTR_MISSING;
    if (type != ATTR_INTS) {
        snprintf(kind, kind_cap, "%s", attr_kind(type));
        return EP_ATTR_WRONG_TYPE;
    }
    pb r = reader(a);
    pb_field f;
    *n = 0;
    while (next_field(&r, &f) > 0) {
        if (f.num != 8) continue;
        if (f.wire == 0) {
            if (*n < cap) out[*n] = (int64_t)f.v;
            ++*n;
        } else if (f.wire == 2) {
            pb d = reader(f.s);
            while (d.p < d.end && !read_varint(&d, &v)) {
                if (*n < cap) out[*n] = (int64_t)v;
                ++*n;
            }
        }
    }
    return EP_ATTR_FOUND;
}

static ep_attr_result get_float(void *vctx, const char *name, float *out, char *kind, size_t cap) {
    span a;
    uint64_t type;
    if (!find_attr(((attr_ctx *)vctx)->node, name, &a, &type)) return EP_ATTR_MISSING;
    if (type != ATTR_FLOAT) {
        snprintf(kind, cap, "%s", attr_kind(type));
        return EP_ATTR_WRONG_TYPE;
    }
    pb r = reader(a);
    pb_field f;
    *out = 0.0f;
    while (next_field(&r, &f) > 0)
        if (f.num == 2 && f.wire == 5) memcpy(out, f.s.p, 4);
    return EP_ATTR_FOUND;
}

/* ---- the graph -------------------------------------------------------------------------- */

static int parse_node(ctx *c, span payload, ninfo *nd) {
    memset(nd, 0, sizeof *nd);
    nd->whole = payload;
    nd->name.p = nd->op_type.p = nd->domain.p = nd->out0.p = EMPTY;
    pb r = reader(payload);
    pb_field f;
    int k;
    while ((k = next_field(&r, &f)) > 0) {
        if (f.wire != 2) continue;
        if (f.num == 1) {
            if (nd->n_in < EP_OP_MAX_INPUTS) nd->in[nd->n_in] = f.s;
            nd->n_in++;
        } else if (f.num == 2) {
            if (!nd->n_out++) nd->out0 = f.s;
            if (push(c, &c->taken, f.s)) return 1;
        } else if (f.num == 3) nd->name = f.s;
        else if (f.num == 4) nd->op_type = f.s;
        else if (f.num == 7) nd->domain = f.s;
    }
    return k < 0 ? malformed(c, "a node") : 0;
}

/* The node's label in messages: "HashedMatMul node 'name'" (its first output when unnamed). */
static int node_fail(ctx *c, const ninfo *nd, const char *what) {
    const span label = nd->name.n ? nd->name : nd->out0;
    return fail(c, "edgepack %s node '%.*s': %s", ep_op_name(nd->op), (int)(label.n > 200 ? 200 : label.n),
                (const char *)label.p, what);
}

static size_t find_init(const ctx *c, span name) {
    for (size_t i = 0; i < c->n_inits; i++)
        if (span_same(c->inits[i].name, name)) return i;
    return SIZE_MAX;
}

/* Names sorted for lookups (ties in index order), so that Casts and decoded weights are matched in
 * O(log n) each, not by scanning every node. */
typedef struct skey {
    span key;
    size_t idx;
} skey;

static int skey_cmp(const void *a, const void *b) {
    const skey *x = (const skey *)a, *y = (const skey *)b;
    const size_t n = x->key.n < y->key.n ? x->key.n : y->key.n;
    const int r = n ? memcmp(x->key.p, y->key.p, n) : 0;
    if (r) return r;
    if (x->key.n != y->key.n) return x->key.n < y->key.n ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* The first (lowest idx) entry named `key` in v[n] sorted by skey_cmp; SIZE_MAX when none. */
static size_t skey_find(const skey *v, size_t n, span key) {
    size_t lo = 0, hi = n;
    const skey probe = {key, 0};
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (skey_cmp(&v[mid], &probe) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && span_same(v[lo].key, key) ? v[lo].idx : SIZE_MAX;
}

/* The first Cast whose first output is `name` (any output count: check_cast refuses a malformed one). */
static size_t find_cast(const ctx *c, span name) {
    return name.n && c->cast_by_out ? skey_find(c->cast_by_out, c->n_casts, name) : SIZE_MAX;
}

#define SNAME(s) (int)((s).n > 200 ? 200 : (s).n), (const char *)(s).p

/* A Cast that is not one input, one output and one 'to' attribute is refused where int8 storage reads one. */
static int cast_malformed(const cinfo *k) { return k->n_in != 1 || k->n_out != 1 || k->n_to != 1; }

#define CAST_COUNTS "%zu inputs, %zu outputs and %zu 'to' attributes; a Cast has exactly one of each"

/* An ai.edgepack weight slot s read from a Cast: only HashedWeight 'buckets' / CodebookWeight 'codebook',
 * a Cast (one input, one output, one 'to') to FLOAT of a constant INT8 initializer whose values are in
 * [-127, 127] (exporter/validate._check_casts checks the same, in the same order and words). */
static int check_cast(ctx *c, const ninfo *nd, int s) {
    const cinfo *k = &c->casts[nd->cast[s]];
    const char *slot = ep_op_input_name(nd->op, s);
    char msg[768], where[320];
    const span label = k->name.n ? k->name : k->out0, source = k->n_in ? k->in0 : span_of("");
    snprintf(where, sizeof where, "input '%s' is the output of Cast node '%.*s'", slot, SNAME(label));
    const int stored = (nd->op == EP_OP_HashedWeight && !strcmp(slot, "buckets")) ||
                       (nd->op == EP_OP_CodebookWeight && !strcmp(slot, "codebook"));
    const size_t i = find_init(c, source);
    if (!stored)
        snprintf(msg, sizeof msg, "%s; only HashedWeight 'buckets' and CodebookWeight 'codebook' may be stored as int8 "
                 "(a Cast only to FLOAT (1) of a constant INT8 (3) initializer)", where);
    else if (cast_malformed(k))
        snprintf(msg, sizeof msg, "%s, which has " CAST_COUNTS, where, k->n_in, k->n_out, k->n_to);
    else if (k->to != TYPE_FLOAT)
        snprintf(msg, sizeof msg, "%s to data_type %lld; " CAST_TAIL, where, (long long)k->to);
    else if (contains(&c->inputs, source) || i == SIZE_MAX || c->inits[i].type != TYPE_INT8) {
        char what[64];
        if (contains(&c->inputs, source)) snprintf(what, sizeof what, "a graph input");
        else if (i == SIZE_MAX) snprintf(what, sizeof what, "not an initializer");
        else snprintf(what, sizeof what, "an initializer of data_type %d", (int)c->inits[i].type);
        snprintf(msg, sizeof msg, "%s of '%.*s', which is %s; " CAST_TAIL, where, SNAME(source), what);
    } else if (load_int8(c, &c->inits[i], slot, NULL)) /* its values, whether or not the node is decoded */
        snprintf(msg, sizeof msg, "%s", c->cap ? c->msg : "");
    else return 0;
    return node_fail(c, nd, msg);
}

/* Whether the node is decoded (as decode_onnx._decodable): an ai.edgepack HashedWeight, a
 * CodebookWeight, a HyperWeight, or a HashedMatMul in expand mode without an epilogue whose weight inputs are all constant
 * initializers (or, for HashedWeight 'buckets' / CodebookWeight 'codebook', Casts of int8 ones). Its attributes are
 * then read and checked with the kernels' rules. Any ai.edgepack node's weight input read from a Cast is checked
 * (check_cast), decoded or not, as exporter/validate.py does. */
static int plan_node(ctx *c, ninfo *nd) {
    if (!span_eq(nd->domain, DOMAIN)) return 0;
    int known = 0;
    for (int o = 0; o < EP_OP_COUNT && !known; o++)
        if (span_eq(nd->op_type, ep_op_name((ep_op)o))) {
            nd->op = (ep_op)o;
            known = 1;
        }
    if (!known) return 0;
    const int candidate = nd->op == EP_OP_HashedWeight || nd->op == EP_OP_CodebookWeight ||
                          nd->op == EP_OP_HyperWeight || nd->op == EP_OP_HashedMatMul;
    if (candidate && (nd->n_out != 1 || !nd->out0.n)) {
        char m[96];
        snprintf(m, sizeof m, nd->n_out != 1 ? "has %zu outputs; takes exactly one" : "its output has an empty name",
                 nd->n_out);
        node_fail(c, nd, m);
        return -1;
    }
    attr_ctx actx = {nd->whole};
    int fused = !candidate; /* computed at run time by the kernels: not decoded */
    if (nd->op == EP_OP_HashedMatMul) {
        int64_t v = 0;
        char kind[96];
        if (get_int(&actx, "mode", &v, kind, sizeof kind) == EP_ATTR_FOUND && v != 0) fused = 1;
        if (get_int(&actx, "activation", &v, kind, sizeof kind) == EP_ATTR_FOUND && v != 0) fused = 1;
        if (nd->n_in > 4 && nd->in[4].n) fused = 1; /* scale: a fused epilogue */
    }
    const int n_slots = ep_op_n_inputs(nd->op);
    int weights = 0, casts = 0, stays = 0;
    for (int s = 0; s < EP_OP_MAX_INPUTS; s++) nd->w[s] = nd->cast[s] = SIZE_MAX;
    nd->fold = SIZE_MAX;
    for (int s = 0; s < n_slots && (size_t)s < nd->n_in; s++) {
        if (strcmp(ep_op_input_kind(nd->op, s), "weight") || !nd->in[s].n) continue;
        const size_t i = find_init(c, nd->in[s]), k = i == SIZE_MAX ? find_cast(c, nd->in[s]) : SIZE_MAX;
        if (k != SIZE_MAX) { /* int8 storage, checked below */
            nd->cast[s] = k;
            casts++;
        } else if (i == SIZE_MAX || c->inits[i].is_input) stays = 1; /* computed or overridable: stays */
        else nd->w[s] = i;
        weights++;
    }
    if (!casts && (fused || !weights || stays)) return 0;
    char msg[512];
    ep_attr_reader rd = {&actx, get_int, get_ints, get_float};
    if (nd->n_in > (size_t)n_slots) {
        snprintf(msg, sizeof msg, "has %zu inputs; at most %d", nd->n_in, n_slots);
        node_fail(c, nd, msg);
        return -1;
    }
    if (nd->op == EP_OP_HashedMatMul && (!nd->n_in || !nd->in[0].n)) {
        node_fail(c, nd, "required input 'X' is missing");
        return -1;
    }
    for (int s = 0; s < n_slots; s++) /* before the attributes, as exporter/validate.py */
        if (nd->cast[s] != SIZE_MAX && check_cast(c, nd, s)) return -1;
    if (fused) return 0; /* not reached with a Cast: check_cast refuses one into any op but a decoder */
    if (ep_op_read_attrs(nd->op, EP_RUNTIME_ORT, &rd, &nd->attrs, msg, sizeof msg)) {
        node_fail(c, nd, msg);
        return -1;
    }
    if (stays) return 0;
    for (int s = 0; s < n_slots; s++)
        if (nd->cast[s] != SIZE_MAX) {
            c->casts[nd->cast[s]].role = CAST_SOURCE;
            nd->w[s] = find_init(c, c->casts[nd->cast[s]].in0);
        }
    nd->decode = 1;
    return 1;
}

/* Names read, and external data refused, in a nested graph, a node's attributes, a tensor. */
static int scan_graph(ctx *c, span g, int depth);

static int no_external(ctx *c, span tensor, const char *where) {
    tinfo t;
    if (parse_tensor(c, tensor, tensor, &t)) return 1;
    if (!t.external) return 0;
    return fail(c, "tensor '%.*s' in %s keeps its data in an external file: decode at load reads external data of "
                "the main graph's initializers only; run with --keep-fused", TNAME(&t), where);
}

static int scan_sparse(ctx *c, span sparse, const char *where) {
    pb r = reader(sparse);
    pb_field f;
    int k;
    while ((k = next_field(&r, &f)) > 0)
        if ((f.num == 1 || f.num == 2) && f.wire == 2 && no_external(c, f.s, where)) return 1;
    return k < 0 ? malformed(c, "a sparse tensor") : 0;
}

static int scan_node(ctx *c, span node, int depth, int reads) {
    pb r = reader(node), q;
    pb_field f, g;
    int k;
    while ((k = next_field(&r, &f)) > 0) {
        if (f.wire != 2) continue;
        if (f.num == 1 && reads && push(c, &c->reads, f.s)) return 1;
        if (f.num != 5) continue;
        q = reader(f.s);
        while ((k = next_field(&q, &g)) > 0) {
            if (g.wire != 2) continue;
            if ((g.num == 5 || g.num == 10) && no_external(c, g.s, "a node attribute")) return 1;
            if ((g.num == 22 || g.num == 23) && scan_sparse(c, g.s, "a node attribute")) return 1;
            if ((g.num == 6 || g.num == 11) && scan_graph(c, g.s, depth + 1)) return 1;
        }
        if (k < 0) return malformed(c, "an attribute");
    }
    return k < 0 ? malformed(c, "a node") : 0;
}

static int scan_graph(ctx *c, span g, int depth) {
    if (depth > MAX_DEPTH) return fail(c, "graphs nested more than %d deep", MAX_DEPTH);
    pb r = reader(g);
    pb_field f;
    int k;
    while ((k = next_field(&r, &f)) > 0) {
        if (f.wire != 2) continue;
        if (f.num == 1 && scan_node(c, f.s, depth, 1)) return 1;
        if (f.num == 5 && no_external(c, f.s, "a subgraph")) return 1;
        if (f.num == 15 && scan_sparse(c, f.s, "a subgraph")) return 1;
    }
    return k < 0 ? malformed(c, "a subgraph") : 0;
}

static int value_name(ctx *c, span info, span *name) {
    pb r = reader(info);
    pb_field f;
    int k;
    name->p = EMPTY;
    name->n = 0;
    while ((k = next_field(&r, &f)) > 0)
        if (f.num == 1 && f.wire == 2) *name = f.s;
    return k < 0 ? malformed(c, "a graph input or output") : 0;
}

/* A value name like base + suffix that no value of the graph has. */
static int fresh(ctx *c, span base, const char *suffix, span *out) {
    const size_t blen = base.n > 200 ? 200 : base.n, len = blen + strlen(suffix) + 24;
    char *s = (char *)malloc(len);
    char **owned = (char **)realloc(c->owned, (c->n_owned + 1) * sizeof *owned);
    if (!s || !owned) {
        free(s);
        if (owned) c->owned = owned;
        return fail(c, "out of memory");
    }
    c->owned = owned;
    c->owned[c->n_owned++] = s;
    snprintf(s, len, "%.*s%s", (int)blen, (const char *)base.p, suffix);
    for (unsigned n = 1; contains(&c->taken, span_of(s)); n++)
        snprintf(s, len, "%.*s%s_%u", (int)blen, (const char *)base.p, suffix, n);
    *out = span_of(s);
    return push(c, &c->taken, *out);
}

/* A new entry of out->initializers (its name copied). */
static ep_onnx_initializer *add_initializer(ctx *c, span name, int32_t type, const int64_t *dims, size_t rank,
                                            void *data, size_t bytes) {
    ep_onnx_decoded *o = c->out;
    if (o->n_initializers == c->out_cap) {
        const size_t cap = c->out_cap ? 2 * c->out_cap : 16;
        ep_onnx_initializer *v = (ep_onnx_initializer *)realloc(o->initializers, cap * sizeof *v);
        if (!v) return NULL;
        o->initializers = v;
        c->out_cap = cap;
    }
    char *copy = (char *)malloc(name.n + 1);
    if (!copy) return NULL;
    memcpy(copy, name.p, name.n);
    copy[name.n] = 0;
    ep_onnx_initializer *e = &o->initializers[o->n_initializers++];
    memset(e, 0, sizeof *e);
    e->name = copy;
    e->data_type = type;
    memcpy(e->dims, dims, rank * sizeof *dims);
    e->rank = rank;
    e->data = data;
    e->bytes = bytes;
    return e;
}

/* A TensorProto whose data ORT takes from AddExternalInitializers, as a GraphProto initializer. */
static void put_placeholder(buf *g, const ep_onnx_initializer *e) {
    buf t = {0}, entry = {0};
    for (size_t d = 0; d < e->rank; d++) put_int(&t, 1, (uint64_t)e->dims[d]);
    put_int(&t, 2, (uint64_t)e->data_type);
    put_bytes(&t, 8, e->name, strlen(e->name));
    put_bytes(&entry, 1, "location", 8);
    put_bytes(&entry, 2, EP_ONNX_IN_MEMORY, strlen(EP_ONNX_IN_MEMORY));
    put_bytes(&t, 13, entry.p, entry.n);
    put_int(&t, 14, 1);
    if (t.failed || entry.failed) g->failed = 1;
    else put_bytes(g, 5, t.p, t.n);
    free(t.p);
    free(entry.p);
}

static void put_node(buf *g, const char *op, span a, span b, span out, span name) {
    buf n = {0};
    put_span(&n, 1, a);
    put_span(&n, 1, b);
    put_span(&n, 2, out);
    put_span(&n, 3, name);
    put_bytes(&n, 4, op, strlen(op));
    if (n.failed) g->failed = 1;
    else put_bytes(g, 1, n.p, n.n);
    free(n.p);
}

/* The Cast to INT8 of decoder nd's output V[n] as an INT8 initializer named as the Cast's output: every
 * value must be an integer in [-128, 127] (decode_onnx._int8_weight refuses the same, in the same words). */
static int fold_cast(ctx *c, const ninfo *nd, const float *V, size_t n, buf *tail) {
    char msg[512];
    const cinfo *ck = &c->casts[nd->fold];
    const span label = ck->name.n ? ck->name : ck->out0;
    for (size_t i = 0; i < n; i++) {
        const float v = V[i];
        if (v >= -128.0f && v <= 127.0f && (float)(int32_t)v == v) continue;
        snprintf(msg, sizeof msg, "Cast node '%.*s' to INT8 of its output: decoded value %g at index %zu is not an "
                 "integer in [-128, 127]; an int8 weight decodes exactly only from int8 buckets / codebook values "
                 "(HashedWeight with num_hashes = 1)", SNAME(label), (double)v, i);
        return node_fail(c, nd, msg);
    }
    int8_t *q = (int8_t *)aligned(n ? n : 1);
    if (!q) return node_fail(c, nd, "out of memory for the int8 weight");
    for (size_t i = 0; i < n; i++) q[i] = (int8_t)(int32_t)V[i];
    const ep_onnx_initializer *e = add_initializer(c, ck->out0, TYPE_INT8, nd->attrs.shape, nd->attrs.shape_rank, q, n);
    if (!e) {
        free(q);
        return node_fail(c, nd, "out of memory");
    }
    put_placeholder(tail, e);
    return 0;
}

/* Decode one planned node: its weight decoded by the kernels, then its replacement (nothing for
 * HashedWeight, whose output becomes an initializer; MatMul (+ Add) for HashedMatMul). */
static int decode_node(ctx *c, ninfo *nd, buf *g, buf *tail) {
    ep_tensor in[EP_OP_MAX_INPUTS];
    void *data[EP_OP_MAX_INPUTS] = {0};
    char msg[512], what[320];
    int rc = 1;
    memset(in, 0, sizeof in);
    float *V = NULL, *W = NULL;
    for (int s = 0; s < EP_OP_MAX_INPUTS; s++) {
        if (nd->w[s] == SIZE_MAX) continue;
        const tinfo *t = &c->inits[nd->w[s]];
        if (t->rank > EP_LIMIT_MAX_RANK || t->count < 0) {
            snprintf(msg, sizeof msg, "input '%s' has invalid dims", ep_op_input_name(nd->op, s));
            node_fail(c, nd, msg);
            goto done;
        }
        const char *dtype = ep_op_input_dtype(nd->op, s);
        if (nd->cast[s] != SIZE_MAX ? load_int8_as_float(c, t, ep_op_input_name(nd->op, s), &data[s])
                                    : load_values(c, t, ep_op_input_name(nd->op, s), dtype, &data[s])) {
            snprintf(msg, sizeof msg, "%s", c->cap ? c->msg : "");
            node_fail(c, nd, msg);
            goto done;
        }
        in[s].present = 1;
        in[s].bytes = data[s];
        in[s].dtype = !strcmp(dtype, "uint8") ? EP_DTYPE_UINT8 : !strcmp(dtype, "int32") ? EP_DTYPE_INT32
                                                                                          : EP_DTYPE_FLOAT32;
        in[s].data = in[s].dtype == EP_DTYPE_FLOAT32 ? (const float *)data[s] : NULL;
        in[s].rank = t->rank;
        memcpy(in[s].dims, t->dims, t->rank * sizeof t->dims[0]);
        in[s].count = t->count;
    }
    const ep_op_attrs *a = &nd->attrs;
    if (ep_op_check_weights(nd->op, a, in, msg, sizeof msg) || ep_op_check_virtual(nd->op, a, c->lim, msg, sizeof msg)) {
        node_fail(c, nd, msg);
        goto done;
    }
    if (nd->op == EP_OP_HashedMatMul && nd->n_in > 3 && nd->in[3].n) { /* a constant bias: [out_features] */
        const size_t b = find_init(c, nd->in[3]);
        if (b != SIZE_MAX && !c->inits[b].is_input && !(c->inits[b].rank == 1 && c->inits[b].count == a->out_f)) {
            snprintf(msg, sizeof msg, "input 'bias' must be [out_features] = [%lld]", (long long)a->out_f);
            node_fail(c, nd, msg);
            goto done;
        }
    }
    const int64_t bytes = ep_op_plan_bytes(nd->op, a, in, what, sizeof what);
    int64_t peak = bytes; /* HashedMatMul holds the weight and its transpose at once */
    if (nd->op == EP_OP_HashedMatMul && bytes >= 0) {
        peak = bytes > INT64_MAX / 2 ? INT64_MAX : 2 * bytes;
        const size_t wn = strlen(what);
        snprintf(what + wn, sizeof what - wn, " and its transpose");
    }
    if (bytes < 0 || ep_limits_check_bytes(c->lim, c->used, peak, what)) {
        node_fail(c, nd, bytes < 0 ? "internal error: no decoded size" : ep_last_error());
        goto done;
    }
    if ((uint64_t)bytes > SIZE_MAX / 2) { /* a 32-bit host with a raised limit */
        node_fail(c, nd, "the decoded weight does not fit in this process's address space");
        goto done;
    }
    const int64_t rows = a->hp.rows, cols = a->hp.cols;
    ep_hash_params p = a->hp;
    const int bs = nd->op == EP_OP_HashedMatMul ? 1 : 0, rs = bs + 1;
    p.num_buckets = in[bs].count;
    if (!(V = (float *)aligned((size_t)bytes))) {
        node_fail(c, nd, "out of memory for the decoded weight");
        goto done;
    }
    const int by_op = nd->op == EP_OP_CodebookWeight || nd->op == EP_OP_HyperWeight;
    if (by_op && ep_op_run(nd->op, a, NULL, in, V, msg, sizeof msg)) {
        node_fail(c, nd, msg); /* a codebook's or hyper weight's contents: the custom op's words */
        goto done;
    }
    const ep_status st = by_op ? EP_OK
                         : ep_hashed_decode(&p, in[bs].data, in[rs].present ? in[rs].data : NULL,
                                            in[rs].present ? in[rs].count : 0, V);
    if (st) {
        snprintf(msg, sizeof msg, "kernel error (%s): %s", ep_status_str(st), ep_last_error());
        node_fail(c, nd, msg);
        goto done;
    }
    c->used += bytes;
    c->out->decoded_bytes += bytes;
    if (nd->op != EP_OP_HashedMatMul) { /* a decoder: its output becomes the initializer */
        if (nd->fold != SIZE_MAX && fold_cast(c, nd, V, (size_t)bytes / 4, tail)) goto done;
        if (nd->keep_float) {
            const ep_onnx_initializer *e = add_initializer(c, nd->out0, TYPE_FLOAT, a->shape, a->shape_rank, V,
                                                           (size_t)bytes);
            if (!e) {
                node_fail(c, nd, "out of memory");
                goto done;
            }
            V = NULL;
            put_placeholder(tail, e);
        }
    } else {
        if (!(W = (float *)aligned((size_t)bytes))) {
            node_fail(c, nd, "out of memory for the transposed weight");
            goto done;
        }
        for (int64_t r0 = 0; r0 < rows; r0 += 32) /* W[in, out] = V[out, in]^T, in 32 x 32 tiles */
            for (int64_t k0 = 0; k0 < cols; k0 += 32)
                for (int64_t r = r0; r < rows && r < r0 + 32; r++)
                    for (int64_t k = k0; k < cols && k < k0 + 32; k++) W[k * rows + r] = V[r * cols + k];
        const span label = nd->name.n ? nd->name : nd->out0, bias = nd->n_in > 3 ? nd->in[3] : span_of("");
        span wname, mname, bname, product = nd->out0;
        if (fresh(c, label, "_decoded_weight", &wname) || fresh(c, label, "_matmul", &mname) ||
            (bias.n && (fresh(c, nd->out0, "_matmul", &product) || fresh(c, label, "_bias", &bname))))
            goto done;
        const int64_t dims[2] = {cols, rows};
        const ep_onnx_initializer *e = add_initializer(c, wname, TYPE_FLOAT, dims, 2, W, (size_t)bytes);
        if (!e) {
            node_fail(c, nd, "out of memory");
            goto done;
        }
        W = NULL;
        put_placeholder(tail, e);
        put_node(g, "MatMul", nd->in[0], wname, product, mname);
        if (bias.n) put_node(g, "Add", product, bias, nd->out0, bname);
    }
    c->out->n_decoded++;
    rc = 0;
done:
    for (int s = 0; s < EP_OP_MAX_INPUTS; s++) free(data[s]);
    free(V);
    free(W);
    return rc;
}

/* A kept initializer: copied as it is, or (external data) read and replaced by a placeholder. */
static int put_initializer(ctx *c, const tinfo *t, buf *g) {
    if (!t->external) {
        put(g, t->whole.p, t->whole.n);
        return 0;
    }
    const size_t es = elem_size(t->type);
    if (!es || t->count < 0 || (uint64_t)t->count > SIZE_MAX / es)
        return fail(c, "initializer '%.*s' (external data) has data_type %d or dims the decode at load cannot "
                    "hand to ONNX Runtime; run with --keep-fused", TNAME(t), (int)t->type);
    void *data = NULL;
    const size_t bytes = (size_t)t->count * es;
    if (read_external(c, t, bytes, &data)) return 1;
    const ep_onnx_initializer *e = add_initializer(c, t->name, t->type, t->dims, t->rank, data, bytes);
    if (!e) {
        free(data);
        return fail(c, "out of memory");
    }
    put_placeholder(g, e);
    return 0;
}

static int rewrite_graph(ctx *c, span graph, buf *g) {
    pb r = reader(graph);
    pb_field f;
    int k;
    /* 1. what the graph holds */
    size_t cap_n = 0, cap_i = 0, cap_c = 0, n_all = 0;
    ninfo nd;
    while ((k = next_field(&r, &f)) > 0) {
        if (f.wire != 2) continue;
        if (f.num == 1) {
            if (parse_node(c, f.s, &nd)) return 1;
            nd.index = n_all++;
            if ((!nd.domain.n || span_eq(nd.domain, "ai.onnx")) && span_eq(nd.op_type, "Cast")) {
                if (c->n_casts == cap_c) {
                    cap_c = cap_c ? 2 * cap_c : 16;
                    cinfo *v = (cinfo *)realloc(c->casts, cap_c * sizeof *v);
                    if (!v) return fail(c, "out of memory reading the model");
                    c->casts = v;
                }
                cinfo *ck = &c->casts[c->n_casts++];
                memset(ck, 0, sizeof *ck);
                attr_ctx actx = {nd.whole};
                char kind[96];
                span to_attr;
                uint64_t to_type;
                ck->index = nd.index;
                ck->name = nd.name;
                ck->in0 = nd.n_in ? nd.in[0] : span_of("");
                ck->out0 = nd.out0;
                ck->n_in = nd.n_in;
                ck->n_out = nd.n_out;
                if (get_int(&actx, "to", &ck->to, kind, sizeof kind) != EP_ATTR_FOUND) ck->to = 0;
                ck->n_to = find_attr(nd.whole, "to", &to_attr, &to_type);
                continue;
            }
            if (!span_eq(nd.domain, DOMAIN)) continue; /* every ai.edgepack node: its Cast inputs are checked */
            nd.fold = SIZE_MAX;
            if (c->n_nodes == cap_n) {
                cap_n = cap_n ? 2 * cap_n : 16;
                ninfo *v = (ninfo *)realloc(c->nodes, cap_n * sizeof *v);
                if (!v) return fail(c, "out of memory reading the model");
                c->nodes = v;
            }
            c->nodes[c->n_nodes++] = nd;
        } else if (f.num == 5) {
            if (c->n_inits == cap_i) {
                cap_i = cap_i ? 2 * cap_i : 64;
                tinfo *v = (tinfo *)realloc(c->inits, cap_i * sizeof *v);
                if (!v) return fail(c, "out of memory reading the model");
                c->inits = v;
            }
            if (parse_tensor(c, f.whole, f.s, &c->inits[c->n_inits])) return 1;
            if (push(c, &c->taken, c->inits[c->n_inits++].name)) return 1;
        } else if (f.num == 11 || f.num == 12) {
            span name;
            if (value_name(c, f.s, &name) || push(c, f.num == 11 ? &c->inputs : &c->reads, name) ||
                push(c, &c->taken, name))
                return 1;
        } else if (f.num == 15 && scan_sparse(c, f.s, "the graph's sparse initializers")) return 1;
    }
    if (k < 0) return malformed(c, "the graph");
    for (size_t i = 0; i < c->n_inits; i++) c->inits[i].is_input = contains(&c->inputs, c->inits[i].name);
    if (c->n_casts) {
        if (!(c->cast_by_out = (skey *)malloc(c->n_casts * sizeof(skey)))) return fail(c, "out of memory");
        for (size_t k2 = 0; k2 < c->n_casts; k2++) c->cast_by_out[k2] = (skey){c->casts[k2].out0, k2};
        qsort(c->cast_by_out, c->n_casts, sizeof(skey), skey_cmp);
    }
    /* 2. which nodes are decoded; what the others (and their subgraphs) read */
    int planned = 0;
    for (size_t i = 0; i < c->n_nodes; i++) {
        const int p = plan_node(c, &c->nodes[i]);
        if (p < 0) return 1;
        planned += p;
    }
    if (!planned) return 0;
    size_t n_dec = 0; /* the decoded decoders by output */
    skey *dec = (skey *)malloc((c->n_nodes ? c->n_nodes : 1) * sizeof(skey));
    if (!dec) return fail(c, "out of memory");
    for (size_t d = 0; d < c->n_nodes; d++)
        if (c->nodes[d].decode && c->nodes[d].op != EP_OP_HashedMatMul) dec[n_dec++] = (skey){c->nodes[d].out0, d};
    qsort(dec, n_dec, sizeof(skey), skey_cmp);
    for (size_t k2 = 0; k2 < c->n_casts; k2++) { /* the Cast to INT8 of a decoded weight is folded */
        cinfo *ck = &c->casts[k2];
        const size_t d = ck->n_in ? skey_find(dec, n_dec, ck->in0) : SIZE_MAX;
        if (d == SIZE_MAX) continue;
        ninfo *dn = &c->nodes[d];
        /* decode_onnx._folded_casts refuses the same, in the same order and words */
        char m[640];
        const span label = ck->name.n ? ck->name : ck->out0;
        if (cast_malformed(ck)) {
            snprintf(m, sizeof m, "Cast node '%.*s' reading its output has " CAST_COUNTS, SNAME(label), ck->n_in,
                     ck->n_out, ck->n_to);
            free(dec);
            return node_fail(c, dn, m);
        }
        if (ck->to != TYPE_INT8 || !ck->out0.n) continue;
        if (dn->fold != SIZE_MAX) {
            const cinfo *first = &c->casts[dn->fold];
            const span l0 = first->name.n ? first->name : first->out0;
            snprintf(m, sizeof m, "Cast nodes '%.*s' and '%.*s' both cast its output to INT8; decode at load folds "
                     "one Cast to INT8 per decoded weight", SNAME(l0), SNAME(label));
            free(dec);
            return node_fail(c, dn, m);
        }
        ck->role = CAST_FOLD;
        ck->decoder = d;
        dn->fold = k2;
    }
    free(dec);
    size_t ni = 0, nc = 0, cc = 0;
    r = reader(graph);
    while (next_field(&r, &f) > 0) {
        if (f.wire != 2 || f.num != 1) continue;
        const ninfo *nd = nc < c->n_nodes && c->nodes[nc].index == ni ? &c->nodes[nc++] : NULL;
        const cinfo *ck = cc < c->n_casts && c->casts[cc].index == ni ? &c->casts[cc++] : NULL;
        ni++;
        if (ck && ck->role != CAST_KEEP) continue; /* read by decoded nodes, or folded */
        if (!nd || !nd->decode) {
            if (scan_node(c, f.s, 0, 1)) return 1;
            continue;
        }
        for (int s = 0; s < EP_OP_MAX_INPUTS; s++)
            if (nd->w[s] != SIZE_MAX) c->inits[nd->w[s]].consumed = 1;
        if (nd->op == EP_OP_HashedMatMul && (push(c, &c->reads, nd->in[0]) || (nd->n_in > 3 && push(c, &c->reads, nd->in[3]))))
            return 1;
    }
    for (size_t k2 = 0; k2 < c->n_casts; k2++) { /* a Cast to FLOAT something else reads stays */
        cinfo *ck = &c->casts[k2];
        if (ck->role == CAST_SOURCE && contains(&c->reads, ck->out0)) {
            ck->role = CAST_KEEP;
            if (push(c, &c->reads, ck->in0)) return 1;
        }
    }
    for (size_t d = 0; d < c->n_nodes; d++)
        c->nodes[d].keep_float = c->nodes[d].fold == SIZE_MAX || contains(&c->reads, c->nodes[d].out0);
    /* 3. the new graph, field by field in the original order; decoded weights at the end */
    buf tail = {0};
    size_t ii = 0;
    ni = nc = cc = 0;
    r = reader(graph);
    while (next_field(&r, &f) > 0) {
        if (f.wire == 2 && f.num == 1) {
            ninfo *nd = nc < c->n_nodes && c->nodes[nc].index == ni ? &c->nodes[nc++] : NULL;
            const cinfo *ck = cc < c->n_casts && c->casts[cc].index == ni ? &c->casts[cc++] : NULL;
            ni++;
            if (ck && ck->role != CAST_KEEP) continue;
            if (!nd || !nd->decode) put(g, f.whole.p, f.whole.n);
            else if (decode_node(c, nd, g, &tail)) goto fail;
        } else if (f.wire == 2 && f.num == 5) {
            const tinfo *t = &c->inits[ii++];
            if (t->consumed && !contains(&c->reads, t->name)) continue;
            if (put_initializer(c, t, g)) goto fail;
        } else put(g, f.whole.p, f.whole.n);
    }
    put(g, tail.p, tail.n);
    if (tail.failed) g->failed = 1;
    free(tail.p);
    return 0;
fail:
    free(tail.p);
    return 1;
}

static int check_functions(ctx *c, span model) {
    pb r = reader(model), q;
    pb_field f, g;
    while (next_field(&r, &f) > 0) {
        if (f.num != 25 || f.wire != 2) continue;
        q = reader(f.s);
        int k;
        while ((k = next_field(&q, &g)) > 0)
            if (g.num == 7 && g.wire == 2 && scan_node(c, g.s, 0, 0)) return 1;
        if (k < 0) return malformed(c, "a function");
    }
    return 0;
}

void ep_onnx_decoded_free(ep_onnx_decoded *d) {
    if (!d) return;
    free(d->model);
    for (size_t i = 0; i < d->n_initializers; i++) {
        free(d->initializers[i].name);
        free(d->initializers[i].data);
    }
    free(d->initializers);
    memset(d, 0, sizeof *d);
}

int ep_onnx_decode_model(const uint8_t *model, size_t size, const char *model_dir, const ep_limits *lim,
                         ep_onnx_decoded *out, char *msg, size_t cap) {
    ctx c;
    memset(&c, 0, sizeof c);
    c.msg = msg;
    c.cap = cap;
    if (cap) msg[0] = 0;
    if (!out || !lim || (!model && size)) return fail(&c, "internal error: bad arguments to ep_onnx_decode_model");
    memset(out, 0, sizeof *out);
    c.out = out;
    c.dir = model_dir;
    c.lim = lim;
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) return fail(&c, "decode at load needs a little-endian host (raw_data is little-endian)");
    span whole = {size ? model : EMPTY, size}, graph = {EMPTY, 0};
    pb r = reader(whole);
    pb_field f;
    int k, graphs = 0;
    while ((k = next_field(&r, &f)) > 0)
        if (f.num == 7 && f.wire == 2) {
            graph = f.s;
            graphs++;
        }
    if (k < 0) return malformed(&c, "the model") + 1;
    if (graphs > 1) return fail(&c, "the model has %d graph fields; an ONNX model has one", graphs);
    buf g = {0}, m = {0};
    int rc = 1;
    if (!graphs) rc = 0;
    else if (!rewrite_graph(&c, graph, &g)) {
        rc = 0;
        if (out->n_decoded && !check_functions(&c, whole)) {
            r = reader(whole);
            while (next_field(&r, &f) > 0) {
                if (f.num == 7 && f.wire == 2) put_bytes(&m, 7, g.p, g.n);
                else put(&m, f.whole.p, f.whole.n);
            }
            if (g.failed || m.failed) rc = fail(&c, "out of memory writing the decoded model");
            else {
                out->model = m.p;
                out->model_size = m.n;
                m.p = NULL;
            }
        } else if (out->n_decoded) rc = 1;
    }
    free(g.p);
    free(m.p);
    free(c.inits);
    free(c.nodes);
    free(c.casts);
    free(c.cast_by_out);
    free(c.inputs.v);
    free(c.reads.v);
    free(c.taken.v);
    for (size_t i = 0; i < c.n_owned; i++) free(c.owned[i]);
    free(c.owned);
    if (rc || !out->model) ep_onnx_decoded_free(out);
    return rc && c.malformed ? 2 : rc;
}
