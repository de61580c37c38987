/* Decode at load for apps in C: a .tflite whose storage-compressed weights (ai.edgepack.HashedWeight,
 * expand-mode ai.edgepack.HashedMatMul) become constant buffers of a dense flatbuffer in memory,
 * so the interpreter runs its own builtin kernels (XNNPACK included). In
 * libedgepack_tflite_delegate; code in decode_model.c. */
#ifndef EDGEPACK_TFLITE_DECODE_H
#define EDGEPACK_TFLITE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define EP_TFLITE_DECODE_EXPORT __declspec(dllexport)
#else
#define EP_TFLITE_DECODE_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Decode model[size] (the file's bytes, untrusted). max_virtual_weights (per node) and
 * max_decoded_bytes (all decoded weights and their folded layouts together): 0 takes
 * $EDGEPACK_MAX_VIRTUAL_WEIGHTS / $EDGEPACK_MAX_DECODED_BYTES, else 2^28 and 1 GiB.
 * Returns 0 on success: *dense_out holds the rewritten model (*dense_size bytes; free it with
 * edgepack_tflite_free_model once the interpreter and model built from it are gone), or NULL when
 * there is nothing to decode (use model as it is). Returns 1, with the reason in err[errlen], for
 * a malformed file, a bad ai.edgepack node or a node above the limits. Nodes it does not decode
 * (stream mode, fused epilogues, fed weights, circulant / LDR) stay for the edgepack delegate. */
EP_TFLITE_DECODE_EXPORT int edgepack_tflite_decode_model(const void *model, size_t size, int64_t max_virtual_weights,
                                                         int64_t max_decoded_bytes, void **dense_out,
                                                         size_t *dense_size, char *err, size_t errlen);
EP_TFLITE_DECODE_EXPORT void edgepack_tflite_free_model(void *dense);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPACK_TFLITE_DECODE_H */
