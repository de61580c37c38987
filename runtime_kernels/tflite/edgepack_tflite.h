/* libedgepack_tflite_delegate: public entry points (besides the external-delegate plugin pair
 * tflite_plugin_create_delegate / tflite_plugin_destroy_delegate). */
#ifndef EDGEPACK_TFLITE_H
#define EDGEPACK_TFLITE_H

#include "tflite_abi.h"

#if defined(_WIN32)
#define EP_TFLITE_EXPORT __declspec(dllexport)
#else
#define EP_TFLITE_EXPORT __attribute__((visibility("default")))
#endif

/* The delegate (flags: AllowDynamicTensors): claims every CUSTOM node named "ai.edgepack.*". */
EP_TFLITE_EXPORT TfLiteDelegate *edgepack_tflite_delegate_create(void);
EP_TFLITE_EXPORT void edgepack_tflite_delegate_delete(TfLiteDelegate *delegate);
/* keys/values: "kernels" = auto | ref | avx2 | neon (process-wide kernel variant);
 * "max_virtual_weights" (per node) and "max_decoded_bytes" (per interpreter), positive integers
 * overriding $EDGEPACK_MAX_VIRTUAL_WEIGHTS / $EDGEPACK_MAX_DECODED_BYTES (docs/ops.md "Limits").
 * A malformed option or environment variable: NULL, with the reason passed to report_error. */
EP_TFLITE_EXPORT TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                                                void (*report_error)(const char *));
EP_TFLITE_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate);

/* Plain custom-op registration for "ai.edgepack.<Op>" (NULL for other names), e.g. for a C++
 * app's MutableOpResolver::AddCustom. */
EP_TFLITE_EXPORT const TfLiteRegistration *edgepack_tflite_registration(const char *custom_name);
/* Registrar for tflite-runtime's InterpreterWithCustomOps: adds the four ops to the
 * tflite::MutableOpResolver* through the AddCustom symbol its library exports. 0 on success,
 * else 1 and edgepack_tflite_registrar_error() says why. */
EP_TFLITE_EXPORT int edgepack_register_tflite_ops(void *resolver);
EP_TFLITE_EXPORT const char *edgepack_tflite_registrar_error(void);
/* Limits the plain custom ops created from now on use instead of the environment's (0: clear the
 * override); 0 on success, 1 for a negative value. Process-wide: set it, build the interpreter,
 * clear it. (The delegate takes its limits from its options instead.) */
EP_TFLITE_EXPORT int edgepack_tflite_set_limits(int64_t max_virtual_weights, int64_t max_decoded_bytes);

#endif /* EDGEPACK_TFLITE_H */
