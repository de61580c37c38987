/* libFuzzer harness: the streaming runner's WAV / raw PCM reader (ort/wav_reader.c) on the input as
 * a file (fmemopen). An accepted WAV must start RIFF....WAVE, stand at a 'data' chunk whose size
 * says what is read, and give exactly the file's samples at that offset, read in hops of a size
 * taken from the input's length; a refused one must say why. As raw PCM the same bytes must give
 * every whole sample, and an odd length must end in the "half a sample" error. */
#include "fuzz_common.h"

#include "wav_reader.h"

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static float sample(const uint8_t *p) { return (float)(int16_t)(uint16_t)(p[0] | p[1] << 8) / 32768.0f; }

/* Reads everything in hops of `hop` samples; checks each sample against `want` (n_want of them). */
static void read_all(ep_wav *w, const uint8_t *want, size_t n_want, size_t hop, int expect_half) {
    float *buf = malloc(hop * sizeof *buf);
    if (!buf) abort();
    size_t total = 0, got = 0;
    for (;;) {
        const int rc = ep_wav_read(w, buf, hop, &got);
        FZ_ASSERT(got <= hop && total + got <= n_want, "read %zu + %zu samples of %zu", total, got, n_want);
        for (size_t i = 0; i < got; i++)
            FZ_ASSERT(buf[i] == sample(want + 2 * (total + i)), "sample %zu differs from the file's", total + i);
        total += got;
        if (rc) {
            FZ_ASSERT(expect_half && strstr(w->error, "half a sample"), "unexpected read error: %s", w->error);
            break;
        }
        if (got < hop) {
            FZ_ASSERT(!expect_half, "odd raw PCM read without the half-sample error");
            break;
        }
    }
    FZ_ASSERT(total == n_want, "read %zu samples, the file holds %zu", total, n_want);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const size_t hop = 1 + size % 700;
    ep_wav w;
    if (size) {
        FILE *f = fmemopen((void *)data, size, "rb");
        FZ_ASSERT(f, "fmemopen failed");
        if (ep_wav_open(&w, f, "fuzz.wav") == 0) {
            const long at = ftell(f);
            FZ_ASSERT(at >= 44 && (uint64_t)at + w.left <= size && w.left >= 2 && !(w.left & 1),
                      "accepted: audio at %ld, %llu bytes, in a file of %zu", at, (unsigned long long)w.left, size);
            FZ_ASSERT(!memcmp(data, "RIFF", 4) && !memcmp(data + 8, "WAVE", 4) && !memcmp(data + at - 8, "data", 4),
                      "accepted without RIFF/WAVE or not at a 'data' chunk");
            const uint32_t promised = le32(data + at - 4);
            const uint64_t rest = size - (uint64_t)at;
            FZ_ASSERT(promised >= EP_WAV_STREAMED ? w.left == rest - (rest & 1) : promised - (promised & 1) == w.left,
                      "'data' promises %u bytes, the reader reads %llu", promised, (unsigned long long)w.left);
            read_all(&w, data + at, (size_t)(w.left / 2), hop, 0);
        } else {
            FZ_ASSERT(strstr(w.error, "fuzz.wav"), "refused without naming the file: '%s'", w.error);
        }
        fclose(f);
        f = fmemopen((void *)data, size, "rb");
        FZ_ASSERT(f, "fmemopen failed");
        ep_wav_raw(&w, f, "stdin");
        read_all(&w, data, size / 2, hop, (int)(size & 1));
        fclose(f);
    }
    return 0;
}
