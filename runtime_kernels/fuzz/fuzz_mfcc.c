/* libFuzzer harness: the MFCC front end (edgepack/mfcc.h) with a config, sample count, output
 * length and audio from the input, under every kernel variant. An independent model of the
 * documented contract says whether the config and the sizes are valid: a valid plan / call must
 * succeed, an invalid one must fail (the plan pointer reset to NULL) before touching memory (audio
 * and out are allocated exactly as large as the call says, so ASan catches any touch beyond).
 * Finite audio with a positive log offset gives finite features, the same under every variant
 * within 1e-3. Valid calls over 2^21 FFT points are skipped. "raw" mode feeds arbitrary float
 * bits (NaN, Inf) and checks memory safety only. */
#include "fuzz_common.h"
#include "fuzz_variants.h"

#include <math.h>

#include "edgepack/mfcc.h"

#define MAX_SAMPLES 4096

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_load_variants();
    return 0;
}

static const int32_t HOSTILE[8] = {0, -1, INT32_MIN, INT32_MAX, 1 << 17, 3, 1000, 1 << 16};

/* Mostly a value near `typical` (0..2x); a byte >= 0xF8 picks a hostile value instead. */
static int32_t fz_int(fz *f, int32_t typical) {
    const uint8_t b = fz_u8(f);
    if (b >= 0xF8) return HOSTILE[b & 7];
    return (int32_t)((int64_t)b * 2 * typical / 0xF8);
}

static float fz_hz(fz *f, float nyquist) {
    const uint8_t b = fz_u8(f);
    if (b >= 0xF0) {
        static const float odd[] = {NAN, INFINITY, -INFINITY, -1.0f, 0.0f, 1e30f, -0.0f, 1e-30f};
        return odd[b & 7];
    }
    return nyquist * (float)b / 0xE0; /* up to a little above Nyquist */
}

static int config_valid(const ep_mfcc_config *c) {
    const int32_t n = c->fft_length;
    return c->sample_rate >= 1 && n >= 4 && n <= EP_MFCC_MAX_FFT && (n & (n - 1)) == 0 && c->window_length >= 1 &&
           c->window_length <= n && c->hop_length >= 1 && c->num_mel_bins >= 1 &&
           c->num_mel_bins <= EP_MFCC_MAX_MEL_BINS && c->num_coefficients >= 1 &&
           c->num_coefficients <= c->num_mel_bins && isfinite(c->lower_hz) && isfinite(c->upper_hz) &&
           c->lower_hz >= 0.0f && c->lower_hz < c->upper_hz && c->upper_hz <= c->sample_rate / 2.0 &&
           isfinite(c->log_offset) && c->log_offset >= 0.0f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz f = {data, size};
    const uint8_t flags = fz_u8(&f);
    const int raw = flags & 1;
    ep_mfcc_config c;
    c.sample_rate = fz_int(&f, 8000);
    c.fft_length = 1 << (fz_u8(&f) % 12); /* 1 .. 2048 */
    if (flags & 2) c.fft_length = fz_int(&f, 256);
    c.window_length = fz_int(&f, c.fft_length > 0 && c.fft_length < (1 << 20) ? c.fft_length / 2 : 64);
    c.hop_length = fz_int(&f, 64);
    c.num_mel_bins = fz_int(&f, 20);
    c.num_coefficients = fz_int(&f, 10);
    const float nyquist = c.sample_rate > 0 ? c.sample_rate / 2.0f : 100.0f;
    c.lower_hz = fz_hz(&f, nyquist);
    c.upper_hz = fz_hz(&f, nyquist);
    c.log_offset = (flags & 4) ? fz_hz(&f, 1.0f) : 1e-6f;

    ep_mfcc_plan *plan = (ep_mfcc_plan *)&c;
    const ep_status s = ep_mfcc_plan_create(&c, &plan);
    FZ_ASSERT((s == EP_OK) == config_valid(&c), "plan status %d for a %s config: %s", (int)s,
              config_valid(&c) ? "valid" : "invalid", ep_last_error());
    if (s) {
        FZ_ASSERT(plan == NULL, "failed plan_create left *out set");
        return 0;
    }
    const int64_t samples = (int64_t)(fz_u16(&f) % (MAX_SAMPLES + 1)) - (flags & 8 ? 100 : 0);
    const int64_t frames = samples >= c.window_length ? 1 + (samples - c.window_length) / c.hop_length : 0;
    FZ_ASSERT(ep_mfcc_num_frames(plan, samples) == frames, "num_frames(%lld)", (long long)samples);
    const int64_t want = frames * c.num_coefficients;
    const int64_t out_len = (flags & 16) ? (int64_t)fz_u16(&f) : want;
    const int valid = frames >= 1 && out_len == want;
    float *audio = (float *)malloc(sizeof(float) * (size_t)(samples > 0 ? samples : 1));
    float *out = (float *)malloc(sizeof(float) * (size_t)(out_len > 0 ? out_len : 1));
    float *first = (float *)malloc(sizeof(float) * (size_t)(out_len > 0 ? out_len : 1));
    if (samples > 0) {
        fz_fill_seeded(audio, (size_t)samples, fz_u32(&f));
        fz_fill(&f, audio, (size_t)(samples < 64 ? samples : 64), raw);
    }
    const int too_big = valid && frames * (int64_t)c.fft_length > (1 << 21); /* valid, too slow to run */
    for (int v = 0; v < g_nvar && !too_big; v++) {
        ep_set_variant(g_variants[v]);
        const ep_status r = ep_mfcc(plan, audio, samples, out, out_len);
        FZ_ASSERT((r == EP_OK) == valid, "[%s] ep_mfcc status %d, %s call (%lld samples, out_len %lld): %s",
                  g_variants[v], (int)r, valid ? "valid" : "invalid", (long long)samples, (long long)out_len,
                  ep_last_error());
        if (r || raw) continue;
        for (int64_t i = 0; i < out_len && c.log_offset > 0.0f; i++)
            FZ_ASSERT(isfinite(out[i]), "[%s] feature %lld is %g", g_variants[v], (long long)i, (double)out[i]);
        if (v == 0) {
            memcpy(first, out, sizeof(float) * (size_t)out_len);
            continue;
        }
        /* A float32 FFT's rounding (~1e-7 of the frame's peak) is large against a mel band near the
         * log offset, and the log magnifies it: variants may differ by ~1e-2 there (a tone over
         * silence). A broken kernel is off by O(1) in the log domain, far above this bound. */
        for (int64_t i = 0; i < out_len && c.log_offset >= 1e-6f; i++)
            FZ_ASSERT(fabsf(out[i] - first[i]) <= 5e-2f * (1.0f + fabsf(first[i])), "[%s] feature %lld: %g vs ref %g",
                      g_variants[v], (long long)i, (double)out[i], (double)first[i]);
    }
    ep_set_variant("auto");
    free(audio);
    free(out);
    free(first);
    ep_mfcc_plan_destroy(plan);
    return 0;
}
