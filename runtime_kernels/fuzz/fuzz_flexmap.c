/* libFuzzer harness: the FlexBuffers options reader (tflite/flexmap.c) on arbitrary bytes.
 * The whole input is the options buffer (seeds are real options written by the exporter);
 * every key the delegate reads is looked up as an int and as an int vector. ASan/UBSan catch
 * out-of-bounds reads; the checks below catch answers that break the reader's contract. */
#include "fuzz_common.h"

#include "flexmap.h"

static const char *const KEYS[] = {"in_features", "out_features", "num_hashes", "seed", "signed", "mode",
                                   "shape", "", "a", "in_featureS"};

/* One options buffer: open it, then read every key both ways. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fx_map m;
    char why[256];
    const size_t cap = size % 7 == 0 ? 1 : sizeof why; /* a 1-byte message buffer must stay NUL-terminated */
    memset(why, 'x', sizeof why);
    if (fx_map_open(data, size, &m, why, cap) != FX_OK) {
        FZ_ASSERT(memchr(why, 0, cap), "fx_map_open left an unterminated message");
        return 0;
    }
    FZ_ASSERT(m.n <= size && m.data <= size && m.keys <= size, "fx_map_open accepted a map outside the buffer");
    const size_t max = 1 + size % 16;
    for (size_t k = 0; k < sizeof KEYS / sizeof KEYS[0]; k++) {
        int64_t v = 0, vec[16];
        size_t n = 99;
        memset(why, 'x', sizeof why);
        fx_result r = fx_map_int(&m, KEYS[k], &v, why, cap);
        FZ_ASSERT(r <= FX_MALFORMED, "fx_map_int returned %d", (int)r);
        if (r == FX_WRONG_TYPE || r == FX_MALFORMED) FZ_ASSERT(memchr(why, 0, cap), "unterminated message");
        memset(why, 'x', sizeof why);
        r = fx_map_ints(&m, KEYS[k], vec, max, &n, why, cap);
        FZ_ASSERT(r <= FX_MALFORMED, "fx_map_ints returned %d", (int)r);
        if (r == FX_OK) FZ_ASSERT(n <= max, "fx_map_ints returned %zu values, more than max %zu", n, max);
        if (r == FX_WRONG_TYPE || r == FX_MALFORMED) FZ_ASSERT(memchr(why, 0, cap), "unterminated message");
    }
    return 0;
}
