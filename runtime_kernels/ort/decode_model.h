/* Decode at load for ONNX in C: rewrite a serialized ModelProto so that every HashedWeight and
 * expand-mode HashedMatMul with constant weights becomes a dense constant (HashedMatMul becomes
 * MatMul (+ Add) on the decoded weight, transposed to [in, out]), as decode_onnx.py does in Python.
 * The decoded weights, and the main graph's initializers kept in external data files, are not
 * copied into the protobuf: the rewritten model holds placeholders for them and the caller hands
 * the buffers to ONNX Runtime with AddExternalInitializers (edgepack_ort_runner does). */
#ifndef EDGEPACK_ORT_DECODE_MODEL_H
#define EDGEPACK_ORT_DECODE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "edgepack/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The external_data location of every placeholder (the same marker as decode_onnx.IN_MEMORY). */
#define EP_ONNX_IN_MEMORY "edgepack-decoded-in-memory"
#define EP_ONNX_MAX_DIMS 16

/* One tensor the session needs from memory: name, ONNX data type, shape and its bytes (malloc'd,
 * 64-byte aligned; it must outlive the session that uses it). */
typedef struct ep_onnx_initializer {
    char *name;
    int32_t data_type;
    int64_t dims[EP_ONNX_MAX_DIMS];
    size_t rank;
    void *data;
    size_t bytes;
} ep_onnx_initializer;

typedef struct ep_onnx_decoded {
    uint8_t *model;   /* the rewritten ModelProto; NULL when nothing was decoded (run the file as it is) */
    size_t model_size;
    ep_onnx_initializer *initializers;
    size_t n_initializers;
    int n_decoded;    /* nodes decoded */
    int64_t decoded_bytes;
} ep_onnx_decoded;

/* Rewrite the ModelProto model[size]. model_dir: the folder external data locations are relative
 * to (NULL: a model that keeps data outside is refused). lim bounds each node's virtual weights
 * and all decoded bytes, checked before allocating. Returns 0 (out filled; free it with
 * ep_onnx_decoded_free), 1 with the reason in msg[cap], or 2 (reason in msg) when the bytes are not
 * a valid protobuf at all (decode_onnx.py then leaves the file to the runtime, which says why it
 * refuses it). The input is untrusted: every length is checked before it is read. */
int ep_onnx_decode_model(const uint8_t *model, size_t size, const char *model_dir, const ep_limits *lim,
                         ep_onnx_decoded *out, char *msg, size_t cap);
void ep_onnx_decoded_free(ep_onnx_decoded *d);

#ifdef __cplusplus
}
#endif
#endif /* EDGEPACK_ORT_DECODE_MODEL_H */
