/* The generated X-macro header include/edgepack/ops.inc compiles, agrees with kernels.h, and
 * reads back the op spec: prints every row, which tests/runtime_kernels/test_op_spec.py compares
 * with runtime_kernels/op_spec.py. */
#include <stdio.h>

#include "edgepack/kernels.h"

#define EP_OP_LIMIT(name, value) enum { LIMIT_##name = (int)(value) };
#include "edgepack/ops.inc"
_Static_assert(LIMIT_MAX_HASHES == EP_MAX_HASHES, "op spec MAX_HASHES differs from EP_MAX_HASHES");

typedef struct { const char *name; long long value; } limit_row;
static const limit_row LIMITS[] = {
#define EP_OP_LIMIT(name, value) {#name, value},
#include "edgepack/ops.inc"
};

typedef struct { const char *op; int n_inputs, n_required, n_attributes; } op_row;
static const op_row OPS[] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) {#op, n_inputs, n_required, n_attributes},
#include "edgepack/ops.inc"
};

typedef struct { const char *op; int index; const char *name; int required; const char *kind, *dtype; } input_row;
static const input_row INPUTS[] = {
#define EP_OP_INPUT(op, index, name, required, kind, dtype) {#op, index, name, required, kind, dtype},
#include "edgepack/ops.inc"
};

typedef struct {
    const char *op, *name;
    int is_ints, required;
    long long def, ort_lo, ort_hi, tflite_lo, tflite_hi;
} attr_row;
static const attr_row ATTRS[] = {
#define EP_OP_ATTR(op, name, is_ints, required, def, ort_lo, ort_hi, tflite_lo, tflite_hi) \
    {#op, name, is_ints, required, def, ort_lo, ort_hi, tflite_lo, tflite_hi},
#include "edgepack/ops.inc"
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

int main(void) {
#define EP_OP_DOMAIN(domain, version) printf("domain %s %d\n", domain, version);
#include "edgepack/ops.inc"
    for (size_t i = 0; i < COUNT(LIMITS); i++) printf("limit %s %lld\n", LIMITS[i].name, LIMITS[i].value);
    for (size_t i = 0; i < COUNT(OPS); i++)
        printf("op %s %d %d %d\n", OPS[i].op, OPS[i].n_inputs, OPS[i].n_required, OPS[i].n_attributes);
    for (size_t i = 0; i < COUNT(INPUTS); i++)
        printf("input %s %d %s %d %s %s\n", INPUTS[i].op, INPUTS[i].index, INPUTS[i].name, INPUTS[i].required,
               INPUTS[i].kind, INPUTS[i].dtype);
    for (size_t i = 0; i < COUNT(ATTRS); i++) {
        const attr_row *a = &ATTRS[i];
        printf("attr %s %s %d %d %lld %lld %lld %lld %lld\n", a->op, a->name, a->is_ints, a->required, a->def,
               a->ort_lo, a->ort_hi, a->tflite_lo, a->tflite_hi);
    }
    return 0;
}
