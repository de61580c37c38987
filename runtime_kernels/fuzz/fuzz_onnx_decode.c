/* libFuzzer harness: decode at load for ONNX (ort/decode_model.c) on arbitrary bytes as a
 * ModelProto (seeds: small models with HashedWeight / HashedMatMul nodes from make_seeds.py).
 * No model folder is given, so external data is refused without touching files. ASan/UBSan catch
 * out-of-bounds reads; the checks below catch answers that break the decoder's contract: a
 * terminated message on failure, initializers whose bytes match their shape, and a rewritten
 * model that is itself a valid protobuf (decoding it again never finds it malformed). */
#include "fuzz_common.h"

#include "decode_model.h"

static size_t elem_bytes(int32_t type) {
    switch (type) {
    case 2: case 3: case 9: case 17: case 18: case 19: case 20: return 1;
    case 4: case 5: case 10: case 16: return 2;
    case 1: case 6: case 12: return 4;
    case 7: case 11: case 13: case 14: return 8;
    case 15: return 16;
    default: return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const ep_limits lim = {1 << 16, 1 << 20}; /* small: the fuzzer explores, it does not allocate */
    ep_onnx_decoded d, again;
    char msg[512];
    memset(msg, 'x', sizeof msg);
    const int rc = ep_onnx_decode_model(data, size, NULL, &lim, &d, msg, sizeof msg);
    FZ_ASSERT(rc >= 0 && rc <= 2, "ep_onnx_decode_model returned %d", rc);
    if (rc) {
        FZ_ASSERT(memchr(msg, 0, sizeof msg) && msg[0], "failure without a terminated message");
        FZ_ASSERT(!d.model && !d.n_initializers, "failure left a result");
        return 0;
    }
    if (!d.model) {
        FZ_ASSERT(!d.n_decoded && !d.n_initializers, "nothing decoded but initializers returned");
        return 0;
    }
    FZ_ASSERT(d.n_decoded > 0 && d.decoded_bytes <= lim.max_decoded_bytes, "decoded %d nodes, %lld bytes",
              d.n_decoded, (long long)d.decoded_bytes);
    for (size_t i = 0; i < d.n_initializers; i++) {
        const ep_onnx_initializer *w = &d.initializers[i];
        size_t count = 1;
        for (size_t k = 0; k < w->rank; k++) count *= (size_t)w->dims[k];
        FZ_ASSERT(w->name && w->data && w->bytes == count * elem_bytes(w->data_type),
                  "initializer %zu: %zu bytes for its shape", i, w->bytes);
        volatile uint8_t touch = ((const uint8_t *)w->data)[w->bytes ? w->bytes - 1 : 0];
        (void)touch;
    }
    const int rc2 = ep_onnx_decode_model(d.model, d.model_size, NULL, &lim, &again, msg, sizeof msg);
    FZ_ASSERT(rc2 != 2, "the rewritten model is not a valid protobuf: %s", msg);
    ep_onnx_decoded_free(&again);
    ep_onnx_decoded_free(&d);
    return 0;
}
