/* Test of edgepack_tflite_decode_model (decode_model.c, included to reuse its reader on the
 * output) on the seed files of runtime_kernels/fuzz/corpus/fuzz_tflite_decode (make_seeds.py):
 * ok_* decode into a valid model with static weights and nothing left to decode (ok_int8_storage_*: the chain in
 * the exporter's order, only the filter int8 and quantized); bad_* and the
 * limits are refused with the expected words; every truncation and many corruptions of every seed
 * are refused or decoded without a memory error (run under ASan/UBSan and qemu-aarch64 by
 * ci_tflite.sh). Usage: test_tflite_decode <corpus dir>. LiteRT runs the outputs in
 * tests/runtime_kernels/test_tflite_decode_c.py. */
#include "decode_model.c"

#include <dirent.h>

static int g_failed;

#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                   \
            fprintf(stderr, __VA_ARGS__);                                          \
            fprintf(stderr, "\n");                                                 \
            g_failed++;                                                            \
        }                                                                          \
    } while (0)

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *b = (uint8_t *)malloc(1 << 16);
    *n = b ? fread(b, 1, 1 << 16, f) : 0;
    fclose(f);
    return b;
}

static int decode(const uint8_t *b, size_t n, int64_t mvw, int64_t mdb, void **out, size_t *size, char *err) {
    return edgepack_tflite_decode_model(b, n, mvw, mdb, out, size, err, 2048);
}

/* The decoded model: parses, names no ai.edgepack op it could decode, its CONV_2D / DEPTHWISE /
 * FULLY_CONNECTED filters are constants of exactly their shape's bytes (float32, or int8 with their
 * per-channel quantization, zero points 0 and no -128: every filter of an ok_int8_storage_* seed), and
 * a second decode finds nothing to do. */
static void check_output(const char *name, const uint8_t *b, size_t n) {
    dec d;
    char err[2048] = "";
    memset(&d, 0, sizeof d);
    d.b = b, d.n = n, d.err = err, d.cap = sizeof err;
    ep_limits_from_env(&d.lim);
    CHECK(!parse(&d), "%s: the decoded model does not parse: %s", name, err);
    int filters = 0, int8_filters = 0;
    for (uint32_t i = 0; i < d.no && !err[0]; i++) {
        const opr *o = &d.o[i];
        const int builtin = d.c[o->code].builtin;
        const opc *c = &d.c[o->code];
        CHECK(!(c->custom_len == strlen(PREFIX "HashedWeight") && !memcmp(b + c->custom, PREFIX "HashedWeight",
                                                                            c->custom_len)),
              "%s: node #%u is still a HashedWeight", name, i);
        if (builtin != 3 && builtin != 4 && builtin != OP_FULLY_CONNECTED) continue;
        const int32_t w = in_at(&d, o, 1);
        const size_t item = w >= 0 && d.t[w].type == TYPE_INT8 ? 1 : 4;
        CHECK(w >= 0 && d.t[w].rank >= 1 && d.bf[d.t[w].buffer].len == item * (size_t)d.t[w].count,
              "%s: node #%u's filter (tensor %d) is not a constant of its shape", name, i, w);
        if (w >= 0 && d.t[w].type == TYPE_INT8) { /* an int8-stored weight's filter keeps its quantization */
            tbl q;
            uint32_t n_scale = 0, n_zero = 0;
            size_t at = 0, zero = 0;
            uint64_t dim = 0;
            const int quantized = d.t[w].quant && table(&d, d.t[w].quant, &q) &&
                                  vec_field(&d, &q, 2, 4, &n_scale, &at) && vec_field(&d, &q, 3, 8, &n_zero, &zero) &&
                                  scalar(&d, &q, 6, 4, 0, &dim) && n_scale && n_zero == n_scale;
            CHECK(quantized, "%s: node #%u's int8 filter (tensor %d) lost its quantization", name, i, w);
            /* per channel along quantized_dimension (or per tensor), zero points 0, values in [-127, 127] */
            CHECK(!quantized || ((int)dim < d.t[w].rank && (n_scale == 1 || (int64_t)n_scale == d.t[w].dims[dim])),
                  "%s: node #%u's int8 filter: %u scales along dimension %d", name, i, (unsigned)n_scale, (int)dim);
            for (uint32_t k = 0; quantized && k < n_zero; k++) {
                uint64_t z = 1;
                CHECK(get(&d, zero + 8 * (size_t)k, 8, &z) && z == 0, "%s: node #%u's int8 filter: zero point %u "
                      "is not 0", name, i, (unsigned)k);
            }
            const bufr *buf = &d.bf[d.t[w].buffer];
            for (size_t k = 0; k < buf->len && buf->len == (size_t)d.t[w].count; k++)
                CHECK(b[buf->data + k] != 0x80, "%s: node #%u's int8 filter holds -128 at %zu", name, i, k);
            int8_filters++;
        }
        filters++;
    }
    CHECK(filters > 0 || strstr(name, "weight_output"), "%s: no convolution or FULLY_CONNECTED left", name);
    CHECK(!strstr(name, "int8_storage") || (int8_filters && int8_filters == filters),
          "%s: %d of its %d filters are int8", name, int8_filters, filters);
    free(d.t), free(d.bf), free(d.c), free(d.o), free(d.value_of), free(d.readers), free(d.consumer), free(d.producer);
    free(d.uses);
    void *again = NULL;
    size_t size = 0;
    CHECK(!decode(b, n, 0, 0, &again, &size, err) && !again, "%s: decoding the output again: %s", name, err);
    edgepack_tflite_free_model(again);
}

/* An int8-stored weight's chain in the input model (docs/ops.md "int8 storage"): each CAST to int8 reads a float32,
 * unquantized decoded weight (its decoder's output, or a TRANSPOSE / RESHAPE of it) and writes the quantized filter
 * of one CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (input 1), read by nothing else; no layout op reads an int8
 * tensor a CAST wrote (the order before: a second quantized copy ahead of the layout op). Returns the CASTs. */
static int check_chain(const char *name, const uint8_t *b, size_t n) {
    dec d;
    char err[2048] = "";
    memset(&d, 0, sizeof d);
    d.b = b, d.n = n, d.err = err, d.cap = sizeof err;
    ep_limits_from_env(&d.lim);
    CHECK(!parse(&d), "%s: does not parse: %s", name, err);
    int casts = 0;
    if (!err[0]) index_graph(&d);
    for (uint32_t i = 0; i < d.no && !err[0]; i++) {
        const opr *o = &d.o[i];
        const int builtin = d.c[o->code].builtin;
        const int32_t x = in_at(&d, o, 0), y = out_at(&d, o);
        if (builtin == OP_TRANSPOSE || builtin == OP_RESHAPE)
            CHECK(x < 0 || d.t[x].type != TYPE_INT8 || cast_of(&d, x) < 0,
                  "%s: layout node #%u reads the int8 output of CAST node #%d", name, i, cast_of(&d, x));
        if (builtin != OP_CAST || o->n_in != 1 || y < 0 || d.t[y].type != TYPE_INT8) continue;
        casts++;
        int32_t p = x >= 0 ? d.producer[x] : -1;
        const int layout = p >= 0 && (d.c[d.o[p].code].builtin == OP_TRANSPOSE ||
                                      d.c[d.o[p].code].builtin == OP_RESHAPE);
        const int32_t decoded = layout ? in_at(&d, &d.o[p], 0) : x;
        p = decoded >= 0 ? d.producer[decoded] : -1;
        CHECK(x >= 0 && d.t[x].type == TYPE_FLOAT32 && !d.t[x].quant && decoded >= 0 &&
                  d.t[decoded].type == TYPE_FLOAT32 && !d.t[decoded].quant && p >= 0 &&
                  d.c[d.o[p].code].builtin == OP_CUSTOM,
              "%s: CAST node #%u to int8 does not read a float32 decoder output [through one layout op]", name, i);
        int filters = 0;
        for (uint32_t k = 0; k < d.no; k++) {
            const int r = d.c[d.o[k].code].builtin;
            filters += (r == OP_CONV_2D || r == OP_DEPTHWISE_CONV_2D || r == OP_FULLY_CONNECTED) &&
                       in_at(&d, &d.o[k], 1) == y;
        }
        CHECK(d.t[y].quant && filters == 1 && d.uses[y] == 1,
              "%s: CAST node #%u's int8 output is not one quantized filter (%d readers as a filter, %d in all)", name,
              i, filters, d.uses[y]);
    }
    free(d.t), free(d.bf), free(d.c), free(d.o), free(d.value_of), free(d.readers), free(d.consumer), free(d.producer);
    free(d.uses);
    return casts;
}

/* Refused or decoded, never a memory error: every prefix, and every byte flipped three ways. */
static void corrupt(const uint8_t *b, size_t n) {
    uint8_t *c = (uint8_t *)malloc(n ? n : 1);
    char err[2048];
    for (size_t k = 0; k < n; k++) {
        void *out = NULL;
        size_t size = 0;
        memcpy(c, b, k);
        CHECK(decode(c, k, 0, 0, &out, &size, err) == 1 || k > 0, "empty input accepted");
        edgepack_tflite_free_model(out);
    }
    static const uint8_t flips[] = {0xFF, 0x01, 0x80};
    for (size_t k = 0; k < n; k++)
        for (size_t f = 0; f < sizeof flips; f++) {
            void *out = NULL;
            size_t size = 0;
            memcpy(c, b, n);
            c[k] ^= flips[f];
            const int rc = decode(c, n, 1 << 20, 1 << 24, &out, &size, err);
            CHECK(rc == 0 || rc == 1, "flip at %zu: rc %d", k, rc);
            CHECK(rc == 0 || err[0], "flip at %zu: refused without a message", k);
            edgepack_tflite_free_model(out);
        }
    free(c);
}

static const struct {
    const char *name, *words;
} REFUSED[] = {
    {"bad_num_hashes", "edgepack HashedWeight node #0 (output 'w'): attribute 'num_hashes' = 65; must be in [1, 64]"},
    {"bad_bomb", "shape [2, 2147483647] would decode 4294967294 virtual weights"},
    {"bad_constant_output", "output (tensor 2) is a constant"},
    /* int8 storage (docs/ops.md): decode_tflite.py and exporter/validate.py refuse these in the same words */
    {"bad_int8_minus_128", "edgepack HashedWeight node #1 (output 'w'): input 'buckets' (CAST of int8 tensor 1 'q'): "
                           "value 2 is -128; int8-stored weights must be in [-127, 127]"},
    {"bad_int8_short", "input 'buckets' (CAST of int8 tensor 1 'q'): its buffer holds 5 bytes; its shape needs 6"},
    {"bad_int8_graph_input", "input 'buckets' is the output of CAST node #0 (output 'qf') of tensor 1 ('q'), which is "
                             "a graph input; a decoder's weight input may be a CAST only to float32 of a constant int8 "
                             "tensor"},
    {"bad_int8_recon", "edgepack HashedWeight node #1 (output 'w'): input 'recon' is the output of CAST node #0 "
                       "(output 'recon'); only HashedWeight 'buckets' and CodebookWeight 'codebook' may be stored as "
                       "int8"},
    {"bad_int8_matmul_buckets", "edgepack HashedMatMul node #1 (output 'y'): input 'buckets' is the output of CAST "
                                "node #0 (output 'qf'); only HashedWeight 'buckets'"},
    {"bad_int8_not_integer", "edgepack HashedWeight node #0 (output 'w'): CAST node #1 (output 'wq') to int8 of its "
                             "output: decoded value 0.5 at index 0 is not an integer in [-128, 127]"},
};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <corpus dir: runtime_kernels/fuzz/corpus/fuzz_tflite_decode> [more ok models]\n",
                argv[0]);
        return 2;
    }
    for (int a = 2; a < argc; a++) { /* e.g. an int8-stored model from `edgepack convert` (under 64 KiB) */
        size_t n = 0;
        char err[2048];
        uint8_t *b = read_file(argv[a], &n);
        void *out = NULL;
        size_t size = 0;
        CHECK(b && n > 0 && n < (1 << 16), "cannot read %s (or it is 64 KiB or more)", argv[a]);
        if (!b) continue;
        check_chain(argv[a], b, n);
        CHECK(!decode(b, n, 0, 0, &out, &size, err) && out, "%s: not decoded: %s", argv[a], err);
        if (out) check_output(argv[a], (const uint8_t *)out, size);
        edgepack_tflite_free_model(out);
        corrupt(b, n);
        free(b);
    }
    DIR *dir = opendir(argv[1]);
    if (!dir) {
        fprintf(stderr, "%s: cannot open %s\n", argv[0], argv[1]);
        return 2;
    }
    int ok = 0, bad = 0;
    struct dirent *e;
    char path[4096], err[2048];
    while ((e = readdir(dir))) {
        const int is_ok = !strncmp(e->d_name, "ok_", 3), is_bad = !strncmp(e->d_name, "bad_", 4);
        if (!is_ok && !is_bad) continue;
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        size_t n = 0;
        uint8_t *b = read_file(path, &n);
        CHECK(b && n > 0, "cannot read %s", path);
        if (!b) continue;
        void *out = NULL;
        size_t size = 0;
        const int rc = decode(b, n, 0, 0, &out, &size, err);
        if (is_ok) {
            ok++;
            CHECK(!strstr(e->d_name, "int8_storage") || check_chain(e->d_name, b, n) > 0,
                  "%s: no int8-stored weight", e->d_name);
            CHECK(rc == 0 && out && size > n, "%s: not decoded: %s", e->d_name, err);
            if (!rc && out) check_output(e->d_name, (const uint8_t *)out, size);
            edgepack_tflite_free_model(out);
            /* limits: one virtual weight per node, or 4 decoded bytes in all, refuse every ok_ seed */
            CHECK(decode(b, n, 1, 0, &out, &size, err) == 1 && strstr(err, "virtual weights") &&
                      strstr(err, "limit of 1 per node"), "%s: max_virtual_weights=1 not refused: %s", e->d_name, err);
            CHECK(decode(b, n, 0, 4, &out, &size, err) == 1 && strstr(err, "the decoded weight") &&
                      strstr(err, "limit of 4"), "%s: max_decoded_bytes=4 not refused: %s", e->d_name, err);
        } else {
            bad++;
            const char *words = NULL;
            for (size_t k = 0; k < sizeof REFUSED / sizeof REFUSED[0]; k++)
                if (!strcmp(REFUSED[k].name, e->d_name)) words = REFUSED[k].words;
            CHECK(words, "%s: no expected message in REFUSED[]", e->d_name);
            CHECK(rc == 1 && !out && words && strstr(err, words), "%s: got rc %d '%s', want '%s'", e->d_name, rc,
                  err, words ? words : "?");
        }
        corrupt(b, n);
        free(b);
    }
    closedir(dir);
    CHECK(ok >= 5 && bad >= 3, "found %d ok_ and %d bad_ seeds in %s (run make_seeds.py)", ok, bad, argv[1]);
    void *out = NULL;
    size_t size = 0;
    CHECK(decode(NULL, 0, 0, 0, &out, &size, err) == 1, "NULL model accepted");
    CHECK(decode((const uint8_t *)"12345678", 8, -1, 0, &out, &size, err) == 1 && strstr(err, "positive"),
          "negative limit accepted");
    printf("test_tflite_decode: %d ok and %d refused models, their truncations and corruptions: %s\n", ok, bad,
           g_failed ? "FAILED" : "OK");
    return g_failed ? 1 : 0;
}
