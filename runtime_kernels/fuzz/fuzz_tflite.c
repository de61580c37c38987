/* libFuzzer harness: the TFLite delegate (tflite/edgepack_tflite.c) driven through a fake
 * TfLiteContext, like tflite/test_delegate.c: tensors (type, allocation type, shape, buffer
 * size), one to three nodes (op name, inputs, output, FlexBuffers options) and the route (the
 * delegate's Prepare -> kernel init/prepare/invoke/free, or the plain custom-op registration)
 * all come from the input. The fake (tflite/fake_context.h, shared with the test) behaves like
 * the runtime: arena tensors hold exactly their shape's bytes, a constant (MmapRo) tensor cannot
 * be resized, ResizeTensor owns its array.
 * Checked: ASan/UBSan; that an invoke writes nothing but the partition's outputs, and never a
 * read-only (MmapRo / PersistentRo) tensor; that a prepared node's constants hold exactly their
 * shape's bytes. */
#include "fuzz_common.h"

#include "edgepack/kernels.h"
#include "edgepack_tflite.h"
#include "fake_context.h"

#define MAX_T 8 /* at most FAKE_MAX_T */
#define MAX_N 3 /* below FAKE_MAX_N: a partition node follows */
#define CAP (1 << 14) /* floats in one runtime-allocated tensor */

static int g_verbose; /* FUZZ_VERBOSE=1: print what the delegate reports (to triage an input) */

/* TfLiteAllocationType: ArenaRw (2) twice, MmapRo (1) twice, PersistentRo (5), Dynamic (4),
 * ArenaRwPersistent (3), MemNone (0) */
static const int ALLOC[8] = {2, 2, 1, 1, 5, 4, 3, 0};
static const int HOSTILE_DIM[8] = {-1, -7, 65536, 1 << 20, 0x7FFFFFFF, (int)0x80000000u, 1 << 16, 3};

/* One tensor from the input; 0 when its runtime buffer would be larger than CAP. */
static int read_tensor(fz *in, TfLiteTensor *t) {
    const uint8_t a = fz_u8(in), r = fz_u8(in);
    t->type = a & 0x80 ? (a >> 4 & 7) : kTfLiteFloat32;
    t->allocation_type = ALLOC[a & 7];
    t->name = "t";
    const int konst = t->allocation_type == kTfLiteMmapRo || t->allocation_type == kTfLitePersistentRo;
    const int rank = r & 0x80 ? 16 + (r & 3) : r % 5;
    t->dims = fake_ints(rank, NULL);
    int64_t count = 1;
    for (int d = 0; d < rank; d++) {
        const uint8_t b = fz_u8(in);
        int v = b >= 0xF8 ? HOSTILE_DIM[b & 7] : b % 40;
        if (!konst && v < 0) v = 1; /* a runtime buffer always has a real shape */
        t->dims->data[d] = v;
        if (v < 0 || count < 0) count = -1;
        else if (v && count > CAP / v) count = (int64_t)CAP + 1;
        else count *= v;
    }
    size_t floats; /* elements */
    const size_t elem = t->type == kTfLiteUInt8 ? 1 : 4; /* float32, int32 and the rest: 4 bytes a value */
    if (konst) { /* a buffer from the file: its size need not match the shape */
        const uint8_t m = fz_u8(in);
        floats = m & 1 && count >= 0 && count <= CAP ? (size_t)count : (size_t)(m >> 1);
        if (m == 0xFE) floats = 0;
    } else {
        if (count > CAP) return 0;
        floats = (size_t)count;
    }
    const uint8_t seed = fz_u8(in);
    t->bytes = floats * elem;
    if (t->allocation_type == 0 || (!konst && seed == 0xFF)) { /* not allocated yet */
        t->data = NULL;
    } else if (t->type == kTfLiteUInt8 || t->type == kTfLiteInt32) { /* indices, row pointers, gaps: spelled out */
        t->data = malloc(t->bytes ? t->bytes : 1);
        for (size_t i = 0; i < t->bytes; i++) ((uint8_t *)t->data)[i] = fz_u8(in);
    } else {
        t->data = malloc(t->bytes ? t->bytes : 1);
        fz_fill_seeded((float *)t->data, floats, seed);
    }
    return 1;
}

/* A copy of every tensor's bytes, to see what an invoke wrote. */
typedef struct snap {
    void *data[MAX_T];
    size_t bytes[MAX_T];
} snap;

/* Snapshot of every tensor's data before an invoke. */
static void take(const fake *f, snap *s) {
    for (int i = 0; i < f->nt; i++) {
        s->bytes[i] = f->t[i].data ? f->t[i].bytes : 0;
        s->data[i] = malloc(s->bytes[i] ? s->bytes[i] : 1);
        if (s->bytes[i]) memcpy(s->data[i], f->t[i].data, s->bytes[i]);
    }
}

/* Whether v is one of a's values. */
static int is_in(const TfLiteIntArray *a, int v) {
    for (int i = 0; a && i < a->size; i++)
        if (a->data[i] == v) return 1;
    return 0;
}

/* Only `writable` tensors may change, and never a read-only one. */
static void check_writes(const fake *f, snap *s, const TfLiteIntArray *writable) {
    for (int i = 0; i < f->nt; i++) {
        const TfLiteTensor *t = &f->t[i];
        const int ro = t->allocation_type == kTfLiteMmapRo || t->allocation_type == kTfLitePersistentRo;
        if (s->bytes[i] && t->data && t->bytes == s->bytes[i] && memcmp(s->data[i], t->data, s->bytes[i]))
            FZ_ASSERT(!ro && is_in(writable, i), "invoke wrote into tensor %d (allocation type %d), which is %s", i,
                      t->allocation_type, ro ? "read-only" : "not an output of the partition");
        free(s->data[i]);
    }
}

/* Whether one of nodes [first, last) produces tensor idx (the delegate keeps it in its own buffer). */
static int produced(const fake *f, int first, int last, int idx) {
    for (int k = first; k < last; k++)
        if (f->nodes[k].outputs->data[0] == idx) return 1;
    return 0;
}

/* After a successful prepare of nodes [first, last): each of their constant float32 inputs holds
 * exactly its shape's bytes (issue 9: a buffer longer or shorter than the shape is refused). */
static void check_exact_constants(const fake *f, int first, int last) {
    for (int k = first; k < last; k++) {
        const char *name = f->regs[k].custom_name;
        if (f->regs[k].builtin_code != kTfLiteBuiltinCustom || strncmp(name, "ai.edgepack.", 12)) continue;
        const TfLiteIntArray *ins = f->nodes[k].inputs;
        for (int i = 0; i < ins->size; i++) {
            const int idx = ins->data[i];
            if (idx < 0 || idx >= f->nt || produced(f, first, last, idx)) continue; /* inside the partition */
            const TfLiteTensor *t = &f->t[idx];
            if ((t->allocation_type != kTfLiteMmapRo && t->allocation_type != kTfLitePersistentRo) || !t->data ||
                (t->type != kTfLiteFloat32 && t->type != kTfLiteInt32 && t->type != kTfLiteUInt8) || !t->dims)
                continue;
            const size_t elem = t->type == kTfLiteUInt8 ? 1 : 4;
            size_t count = 1;
            for (int d = 0; d < t->dims->size && count; d++)
                count = t->dims->data[d] > 0 ? count * (size_t)t->dims->data[d] : 0;
            if (count)
                FZ_ASSERT(t->bytes == count * elem, "node %d prepared with constant input %d of %zu values "
                          "holding %zu bytes", k, idx, count, t->bytes);
        }
    }
}

/* One invoke, then the write check. */
static TfLiteStatus invoke_checked(fake *f, TfLiteStatus (*invoke)(TfLiteContext *, TfLiteNode *), TfLiteNode *node,
                                   const TfLiteIntArray *writable) {
    snap s;
    take(f, &s);
    TfLiteStatus st = invoke(&f->ctx, node);
    check_writes(f, &s, writable);
    return st;
}

#define N_NAMES 10
static const char *const NAMES[N_NAMES] = {"ai.edgepack.HashedWeight", "ai.edgepack.HashedMatMul",
                                           "ai.edgepack.CirculantMatMul", "ai.edgepack.LDRMatMul", "ai.edgepack.Bogus",
                                           "ai.edgepackHashedWeight", "ai.edgepack.MFCC", "ai.edgepack.CodebookWeight",
                                           "ai.edgepack.SparseCodebookMatMul", "ai.edgepack.HyperWeight"};
static const char *const VARIANTS[4] = {"ref", "auto", "avx2", "nope"};

/* Small decode limits; FUZZ_VERBOSE. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_set_limits();
    g_verbose = getenv("FUZZ_VERBOSE") != NULL;
    return 0;
}

/* flags (bit 0: custom-op route; 1: prepare twice; 2: invoke twice; 3: plugin option
 * kernels=...), tensors, nodes (op byte: bits 0-3 name, 4-6 = 7 builtin, 7 partition output). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz in = {data, size};
    static fake f;
    fake_init(&f);
    f.cap = CAP, f.verbose = g_verbose;
    const uint8_t flags = fz_u8(&in);
    const int nt = 1 + fz_u8(&in) % MAX_T;
    for (; f.nt < nt; f.nt++)
        if (!read_tensor(&in, &f.t[f.nt])) {
            f.nt++;
            fake_release(&f);
            return 0;
        }
    f.ctx.tensors_size = (size_t)f.nt;
    const int nn = 1 + fz_u8(&in) % MAX_N;
    int outs_flag = 0;
    for (; f.nn < nn; f.nn++) {
        TfLiteNode *n = &f.nodes[f.nn];
        const uint8_t op = fz_u8(&in), nin = fz_u8(&in) % 6;
        n->inputs = fake_ints(nin, NULL);
        for (int i = 0; i < nin; i++) {
            const uint8_t b = fz_u8(&in);
            n->inputs->data[i] = b == 0xFF ? kTfLiteOptionalTensor : b % (f.nt + 2);
        }
        const uint8_t o = fz_u8(&in);
        n->outputs = fake_ints(o >= 0xF0 ? 2 : 1, NULL);
        n->outputs->data[0] = o % (f.nt + 1);
        if (o >= 0xF0) n->outputs->data[1] = 0;
        outs_flag |= (op >> 7) << f.nn;
        size_t len = fz_u16(&in) % 512, got;
        const uint8_t *opts = fz_bytes(&in, len, &got);
        void *copy = malloc(got ? got : 1);
        if (got) memcpy(copy, opts, got);
        n->custom_initial_data = copy;
        n->custom_initial_data_size = (int)got;
        f.regs[f.nn].builtin_code = (op & 0x70) == 0x70 ? 9 : kTfLiteBuiltinCustom;
        f.regs[f.nn].custom_name = NAMES[(op & 15) % N_NAMES];
        f.regs[f.nn].version = 1;
    }
    TfLiteStatus st;
    if (flags & 1) { /* the plain custom-op registration, node 0 */
        const TfLiteRegistration *r = edgepack_tflite_registration(f.regs[0].custom_name);
        if (r) {
            TfLiteNode *n = &f.nodes[0];
            n->user_data = r->init(&f.ctx, (const char *)n->custom_initial_data, (size_t)n->custom_initial_data_size);
            st = r->prepare(&f.ctx, n);
            if (!st && (flags & 2)) st = r->prepare(&f.ctx, n);
            if (!st) check_exact_constants(&f, 0, 1);
            if (!st) st = invoke_checked(&f, r->invoke, n, n->outputs);
            if (g_verbose) fprintf(stderr, "custom op route: status %d\n", (int)st);
            if (!st && (flags & 4)) invoke_checked(&f, r->invoke, n, n->outputs);
            r->free(&f.ctx, n->user_data);
        }
    } else { /* the delegate claims the nodes; one partition; its outputs: the last node's + flagged ones */
        f.plan = fake_ints(f.nn, NULL);
        for (int i = 0; i < f.nn; i++) f.plan->data[i] = i;
        f.part_out = fake_ints(f.nn, NULL);
        f.part_out->size = 0;
        for (int i = 0; i < f.nn; i++)
            if (i == f.nn - 1 || (outs_flag >> i & 1)) f.part_out->data[f.part_out->size++] = f.nodes[i].outputs->data[0];
        TfLiteDelegate *d;
        if (flags & 8) {
            char *keys[1] = {"kernels"}, *vals[1] = {(char *)VARIANTS[flags >> 4 & 3]};
            d = tflite_plugin_create_delegate(keys, vals, 1, NULL);
        } else {
            d = tflite_plugin_create_delegate(NULL, NULL, 0, NULL);
        }
        if (d) {
            st = d->Prepare(&f.ctx, d);
            if (!st && f.replaced) {
                st = f.dreg.prepare(&f.ctx, &f.dnode);
                if (!st && (flags & 2)) st = f.dreg.prepare(&f.ctx, &f.dnode); /* TFLite may prepare again */
                if (!st) check_exact_constants(&f, 0, f.nn);
                if (!st) st = invoke_checked(&f, f.dreg.invoke, &f.dnode, f.part_out);
                if (!st && (flags & 4)) invoke_checked(&f, f.dreg.invoke, &f.dnode, f.part_out);
            }
            if (g_verbose) fprintf(stderr, "delegate route: %d nodes claimed, status %d\n", f.replaced, (int)st);
            if (f.replaced) f.dreg.free(&f.ctx, f.dnode.user_data);
            tflite_plugin_destroy_delegate(d);
        }
        ep_set_variant("auto");
    }
    fake_release(&f);
    return 0;
}
