/* The C op layer's attribute half: every ai.edgepack op's attributes read through a small
 * callback struct and validated once, with the defaults and limits of ops.inc (generated from
 * runtime_kernels/op_spec.py), so the ORT library and the TFLite delegate give the same message
 * for the same bad node: "<attribute> = <value>; must be in [<lo>, <hi>]". */
#ifndef EDGEPACK_OPS_H
#define EDGEPACK_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "edgepack/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The ops, in ops.inc's order. */
typedef enum ep_op {
#define EP_OP(op, n_inputs, n_required, n_attributes) EP_OP_##op,
#include "edgepack/ops.inc"
    EP_OP_COUNT
} ep_op;

/* The spec's limits as constants: EP_LIMIT_MAX_RANK, EP_LIMIT_MAX_HASHES, ... (all fit an int). */
enum ep_op_limit {
#define EP_OP_LIMIT(name, value) EP_LIMIT_##name = (int)(value),
#include "edgepack/ops.inc"
};

/* Which runtime's ranges apply (ops.inc has one range per runtime). */
typedef enum ep_runtime { EP_RUNTIME_ORT = 0, EP_RUNTIME_TFLITE = 1 } ep_runtime;

typedef enum ep_attr_result { EP_ATTR_FOUND = 0, EP_ATTR_MISSING = 1, EP_ATTR_WRONG_TYPE = 2 } ep_attr_result;

/* One runtime's attribute access. On EP_ATTR_WRONG_TYPE each getter writes what the attribute
 * is instead ("float", "ints", "a string", ...) into kind[kind_cap]. get_ints writes at most cap
 * values and sets *n to the attribute's full count, which may exceed cap. */
typedef struct ep_attr_reader {
    void *ctx;
    ep_attr_result (*get_int)(void *ctx, const char *name, int64_t *out, char *kind, size_t kind_cap);
    ep_attr_result (*get_ints)(void *ctx, const char *name, int64_t *out, size_t cap, size_t *n, char *kind,
                               size_t kind_cap);
    ep_attr_result (*get_float)(void *ctx, const char *name, float *out, char *kind, size_t kind_cap);
} ep_attr_reader;

/* Every attribute of one op node, validated. */
typedef struct ep_op_attrs {
    int64_t in_f, out_f;      /* matmul ops */
    int64_t mode;             /* HashedMatMul: 0 expand, 1 stream */
    ep_hash_params hp;        /* rows, cols and the hash attributes; num_buckets left 0 */
    int64_t shape[EP_LIMIT_MAX_RANK];
    size_t shape_rank;        /* HashedWeight */
} ep_op_attrs;

/* Read and check op's attributes with runtime's ranges. 0 when valid; otherwise 1 with the
 * message (without the node label) in msg[cap]. */
int ep_op_read_attrs(ep_op op, ep_runtime runtime, const ep_attr_reader *r, ep_op_attrs *out, char *msg,
                     size_t cap);

/* The op's name ("HashedMatMul"), or NULL. */
const char *ep_op_name(ep_op op);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPACK_OPS_H */
