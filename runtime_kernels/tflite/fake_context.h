/* A fake TfLiteContext in memory that drives the delegate's and custom ops' callbacks without
 * TFLite, shared by tflite/test_delegate.c and fuzz/fuzz_tflite.c. It behaves like the runtime:
 * ResizeTensor refuses a constant (MmapRo) tensor or a negative dim and gives the tensor a fresh
 * zeroed buffer of exactly its shape's bytes (owning the dims array, freed on failure too);
 * ReplaceNodeSubsetsWithDelegateKernels runs the partition kernel's init with part_out as the
 * partition's outputs; ReportError appends every message (formatted, so bad arguments show). */
#ifndef EDGEPACK_FAKE_CONTEXT_H
#define EDGEPACK_FAKE_CONTEXT_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tflite_abi.h"

#define FAKE_MAX_T 32
#define FAKE_MAX_N 8

typedef struct fake {
    TfLiteContext ctx; /* first: callbacks cast back */
    TfLiteTensor t[FAKE_MAX_T];
    int nt;
    TfLiteNode nodes[FAKE_MAX_N];
    TfLiteRegistration regs[FAKE_MAX_N];
    int nn;
    TfLiteIntArray *plan;
    TfLiteIntArray *part_out; /* what the runtime would compute as the partition's outputs */
    TfLiteNode dnode;         /* the partition's delegate kernel node */
    TfLiteRegistration dreg;
    int replaced;   /* nodes claimed */
    size_t cap;     /* most floats ResizeTensor gives a tensor; 0: no limit */
    int verbose;    /* also print each reported message to stderr */
    char err[4096]; /* the reported messages */
} fake;

/* A TfLiteIntArray of n values copied from v (zeroed when v is NULL), freed with free as TFLite's. */
static inline TfLiteIntArray *fake_ints(int n, const int *v) {
    TfLiteIntArray *a = (TfLiteIntArray *)calloc((size_t)n + 1, sizeof(int));
    a->size = n;
    if (v && n) memcpy(a->data, v, sizeof(int) * (size_t)n);
    return a;
}

static inline void fake_report(TfLiteContext *c, const char *fmt, ...) {
    fake *f = (fake *)c;
    const size_t k = strlen(f->err);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->err + k, sizeof f->err - k, fmt, ap);
    va_end(ap);
    if (f->verbose) fprintf(stderr, "ReportError: %s\n", f->err + k);
}

static inline TfLiteStatus fake_plan(TfLiteContext *c, TfLiteIntArray **p) {
    *p = ((fake *)c)->plan;
    return kTfLiteOk;
}

static inline TfLiteStatus fake_node(TfLiteContext *c, int i, TfLiteNode **n, TfLiteRegistration **r) {
    fake *f = (fake *)c;
    if (i < 0 || i >= f->nn) return kTfLiteError;
    *n = &f->nodes[i], *r = &f->regs[i];
    return kTfLiteOk;
}

static inline TfLiteStatus fake_resize(TfLiteContext *c, TfLiteTensor *t, TfLiteIntArray *dims) {
    const fake *f = (const fake *)c;
    size_t count = 1;
    int ok = t->allocation_type != kTfLiteMmapRo && dims->size >= 0;
    for (int d = 0; ok && d < dims->size; d++) {
        if (dims->data[d] < 0 || (f->cap && dims->data[d] && count > f->cap / (size_t)dims->data[d])) ok = 0;
        else count *= (size_t)dims->data[d];
    }
    if (!ok || (f->cap && count > f->cap)) {
        free(dims);
        return kTfLiteError;
    }
    free(t->dims);
    t->dims = dims;
    t->bytes = count * sizeof(float);
    free(t->data);
    t->data = calloc(count ? count : 1, sizeof(float));
    return kTfLiteOk;
}

/* One partition of every claimed node: the delegate kernel's init runs here, as in TFLite. */
static inline TfLiteStatus fake_replace(TfLiteContext *c, TfLiteRegistration r, const TfLiteIntArray *nodes,
                                        TfLiteDelegate *d) {
    fake *f = (fake *)c;
    static const TfLiteIntArray empty = {0};
    TfLiteDelegateParams params = {d, (TfLiteIntArray *)nodes, (TfLiteIntArray *)&empty, f->part_out};
    f->dreg = r;
    f->replaced = nodes->size;
    f->dnode.user_data = r.init(c, (const char *)&params, 0);
    return kTfLiteOk;
}

/* An empty fake with its callbacks set. */
static inline void fake_init(fake *f) {
    memset(f, 0, sizeof *f);
    f->ctx.tensors = f->t;
    f->ctx.GetExecutionPlan = fake_plan;
    f->ctx.ReportError = fake_report;
    f->ctx.GetNodeAndRegistration = fake_node;
    f->ctx.ResizeTensor = fake_resize;
    f->ctx.ReplaceNodeSubsetsWithDelegateKernels = fake_replace;
}

/* Everything the fake's tensors, nodes, plan and partition outputs hold. */
static inline void fake_release(fake *f) {
    for (int i = 0; i < f->nt; i++) free(f->t[i].dims), free(f->t[i].data);
    for (int i = 0; i < f->nn; i++) {
        free(f->nodes[i].inputs);
        free(f->nodes[i].outputs);
        free((void *)f->nodes[i].custom_initial_data);
    }
    free(f->plan);
    free(f->part_out);
}

#endif /* EDGEPACK_FAKE_CONTEXT_H */
