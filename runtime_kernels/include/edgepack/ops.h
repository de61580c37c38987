/* The C op layer: every ai.edgepack op's attributes (read through a small callback struct),
 * input checks, output shape, decoded-byte count, plan and run, written once with the defaults
 * and limits of ops.inc (generated from runtime_kernels/op_spec.py). The ORT library and the
 * TFLite delegate are adapters: they turn their runtime's tensors into ep_tensor views, call
 * this layer, and so give the same message for the same bad node, e.g.
 * "attribute 'mode' = 3; must be in [0, 1]" or "input 'X' has shape [4, 9]; ...". */
#ifndef EDGEPACK_OPS_H
#define EDGEPACK_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "edgepack/kernels.h"
#include "edgepack/mfcc.h"

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
    int64_t bits;             /* codebook ops: bits per packed index (1, 2, 4 or 8); HyperWeight: 1..24 */
    int64_t points, group, rings; /* HyperWeight */
    int64_t mode;             /* HashedMatMul: 0 expand, 1 stream */
    int64_t activation;       /* matmul ops' epilogue after the bias: 0 none, 1 ReLU, 2 ReLU6 */
    ep_hash_params hp;        /* rows, cols (every op with a weight) and the hash attributes; num_buckets left 0 */
    int64_t shape[EP_LIMIT_MAX_RANK];
    size_t shape_rank;        /* HashedWeight */
    ep_mfcc_config mfcc;      /* MFCC (log_offset fixed at 1e-6) */
} ep_op_attrs;

/* Read and check op's attributes with runtime's ranges. 0 when valid; otherwise 1 with the
 * message (without the node label) in msg[cap]. */
int ep_op_read_attrs(ep_op op, ep_runtime runtime, const ep_attr_reader *r, ep_op_attrs *out, char *msg,
                     size_t cap);

/* The op's name ("HashedMatMul"), or NULL. */
const char *ep_op_name(ep_op op);

/* ---- inputs (ops.inc's EP_OP_INPUT rows) ---------------------------------------------------- */

#define EP_OP_MAX_INPUTS 7 /* most input slots of any op (checked against ops.inc in ops.c) */

int ep_op_n_inputs(ep_op op);   /* its input slots */
int ep_op_n_required(ep_op op); /* the leading slots that must be present */
const char *ep_op_input_name(ep_op op, int index); /* "X", "buckets", ...; NULL out of range */
const char *ep_op_input_kind(ep_op op, int index); /* "activation", "weight", "bias"; NULL out of range */
const char *ep_op_input_dtype(ep_op op, int index); /* "float32", "uint8", "int32"; NULL out of range */
/* "in_features, out_features, ..." (its attributes, for messages) into buf[cap]. */
void ep_op_attr_names(ep_op op, char *buf, size_t cap);

/* Element types the adapters map their runtime's onto (so both name a wrong one alike). */
typedef enum ep_dtype {
    EP_DTYPE_FLOAT32 = 0, EP_DTYPE_UINT8, EP_DTYPE_INT32, EP_DTYPE_INT8, EP_DTYPE_INT16, EP_DTYPE_INT64,
    EP_DTYPE_FLOAT16, EP_DTYPE_FLOAT64, EP_DTYPE_BOOL, EP_DTYPE_OTHER
} ep_dtype;
const char *ep_dtype_name(ep_dtype t); /* "float32", ...; "another type" for EP_DTYPE_OTHER */
size_t ep_dtype_size(ep_dtype t);      /* bytes per element; 0 for EP_DTYPE_OTHER */

/* A runtime's tensor as the layer sees it. count = prod(dims) (1 for rank 0); the adapter checks
 * that bytes holds count elements of dtype. data: the same memory when dtype is float32 (else
 * NULL). The op layer checks dtype against the spec. An absent optional input: present 0. */
typedef struct ep_tensor {
    int present;
    const float *data;
    int64_t dims[EP_LIMIT_MAX_RANK];
    size_t rank;
    int64_t count;
    ep_dtype dtype;
    const void *bytes;
} ep_tensor;

/* "[2, 3]" into buf[cap]. */
void ep_tensor_dims_str(const ep_tensor *t, char *buf, size_t cap);

/* in[] below has one view per input slot (EP_OP_MAX_INPUTS). Each check returns 0 when valid,
 * otherwise 1 with the message (without the node label) in msg[cap]. */

/* The weight inputs (buckets, recon, blocks, G, H, codebook, ...) against the attributes: their
 * dtypes and shapes (O(1); a codebook weight's contents are checked by its plan or decode); for
 * plans from constant weights, before the activations are known. */
int ep_op_check_weights(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap);
/* Every input: the required ones present, the weights, X and bias. */
int ep_op_check_inputs(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *msg, size_t cap);

/* ---- output, limits and plans -------------------------------------------------------------- */

/* Y's shape (dims, rank, count; data NULL) from checked inputs; 1 with msg when 4*count would
 * overflow int64. */
int ep_op_output_shape(ep_op op, const ep_op_attrs *a, const ep_tensor *in, ep_tensor *y, char *msg, size_t cap);
/* The node's virtual weights (HashedWeight: prod(shape); matmul ops: in*out) against
 * lim->max_virtual_weights; 1 with msg (the limit message of kernels.c) when above. */
int ep_op_check_virtual(ep_op op, const ep_op_attrs *a, const ep_limits *lim, char *msg, size_t cap);
/* Y's bytes against lim->max_decoded_bytes; 1 with msg when above. */
int ep_op_check_output(const ep_limits *lim, const ep_tensor *y, char *msg, size_t cap);
/* Bytes of the decoded form of the weights (docs/ops.md "Limits"): HashedWeight's W, mode 0's V,
 * the circulant / LDR spectra; 0 for stream mode. The hashed ops need no inputs (in may be NULL);
 * the others return -1 until their checked weights are given. what[cap] gets a description for
 * the budget's limit message, e.g. "the block spectra (in_features=16 x out_features=16, input
 * 'blocks' [2, 2, 8])". */
int64_t ep_op_plan_bytes(ep_op op, const ep_op_attrs *a, const ep_tensor *in, char *what, size_t cap);

/* What ep_op_run needs that depends on the weights only: the hashed plan (V), the FFT spectra, or
 * HashedWeight's decoded W; nothing for stream mode. Read-only once built, so runs may share it. */
typedef struct ep_op_plan ep_op_plan;

/* The plan of checked weight inputs in[] (ep_op_plan_bytes(...) bytes); 1 with msg on failure. */
int ep_op_plan_create(ep_op op, const ep_op_attrs *a, const ep_tensor *in, ep_op_plan **out, char *msg,
                      size_t cap);
void ep_op_plan_destroy(ep_op_plan *plan);

/* Y = the op on checked inputs in[]; Y holds ep_op_output_shape's count floats. plan: from
 * ep_op_plan_create for these weights, or NULL to build one for this run only (the caller has
 * counted its bytes). 1 with msg on a kernel error. */
int ep_op_run(ep_op op, const ep_op_attrs *a, const ep_op_plan *plan, const ep_tensor *in, float *Y, char *msg,
              size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPACK_OPS_H */
