/* The MFCC front end (include/edgepack/mfcc.h) against an independent double-precision reference
 * (a direct DFT, the tf.signal mel and DCT formulas written out), on noise, a tone with silence and
 * a second config, with every kernel variant; and the config / size checks with their messages. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/mfcc.h"

static int g_fail, g_pass;
#define CHECK(cond, ...) do { if (cond) g_pass++; else { g_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#define PI 3.14159265358979323846
#define TOL 1e-4

static double mel_of(double hz) { return 1127.0 * log(1.0 + hz / 700.0); }

/* out[frames * K] in double, straight from the definition. */
static void reference(const ep_mfcc_config *c, const float *audio, int64_t samples, double *out) {
    const int N = c->fft_length, W = c->window_length, M = c->num_mel_bins, K = c->num_coefficients;
    const int bins = N / 2 + 1;
    const int64_t frames = 1 + (samples - W) / c->hop_length;
    double *mag = malloc(sizeof(double) * bins), *logmel = malloc(sizeof(double) * M);
    const double lo = mel_of(c->lower_hz), hi = mel_of(c->upper_hz), step = (hi - lo) / (M + 1);
    for (int64_t f = 0; f < frames; f++) {
        for (int b = 0; b < bins; b++) {
            double re = 0, im = 0;
            for (int n = 0; n < W; n++) {
                const double x = audio[f * c->hop_length + n] * (0.5 - 0.5 * cos(2 * PI * n / W));
                re += x * cos(2 * PI * (double)b * n / N);
                im -= x * sin(2 * PI * (double)b * n / N);
            }
            mag[b] = sqrt(re * re + im * im);
        }
        for (int m = 0; m < M; m++) {
            double sum = 0;
            for (int b = 1; b < bins; b++) {
                const double mel = mel_of(b * (c->sample_rate / 2.0) / (bins - 1));
                const double up = (mel - (lo + m * step)) / step, down = ((lo + (m + 2) * step) - mel) / step;
                const double w = fmax(0.0, fmin(up, down));
                sum += w * mag[b];
            }
            logmel[m] = log(sum + (double)c->log_offset);
        }
        for (int k = 0; k < K; k++) {
            double dct = 0;
            for (int m = 0; m < M; m++) dct += 2 * logmel[m] * cos(PI * k * (2 * m + 1) / (2.0 * M));
            out[f * K + k] = dct / sqrt(2.0 * M);
        }
    }
    free(mag);
    free(logmel);
}

static unsigned g_rng = 12345u;
static float uniform(void) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)((g_rng >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* ep_mfcc of audio with config c, every variant, against the reference. */
static void check_against_reference(const char *what, const ep_mfcc_config *c, const float *audio, int64_t samples) {
    ep_mfcc_plan *plan = NULL;
    ep_status s = ep_mfcc_plan_create(c, &plan);
    CHECK(s == EP_OK, "%s: plan: %s", what, ep_last_error());
    if (s) return;
    const int64_t frames = ep_mfcc_num_frames(plan, samples), n = frames * c->num_coefficients;
    CHECK(frames == 1 + (samples - c->window_length) / c->hop_length, "%s: %lld frames", what, (long long)frames);
    double *want = malloc(sizeof(double) * (size_t)n);
    float *got = malloc(sizeof(float) * (size_t)n);
    reference(c, audio, samples, want);
    for (int v = 0; v < ep_variant_count(); v++) {
        ep_set_variant(ep_variant_name(v));
        s = ep_mfcc(plan, audio, samples, got, n);
        CHECK(s == EP_OK, "%s [%s]: %s", what, ep_variant_name(v), ep_last_error());
        double worst = 0;
        for (int64_t i = 0; i < n; i++) { /* NaN counts as worst */
            const double d = fabs(got[i] - want[i]);
            if (!(d <= worst)) worst = d;
        }
        CHECK(worst <= TOL, "%s [%s]: max |C - reference| = %g > %g", what, ep_variant_name(v), worst, TOL);
    }
    ep_set_variant("auto");
    free(want);
    free(got);
    ep_mfcc_plan_destroy(plan);
}

static void test_values(void) {
    ep_mfcc_config c;
    ep_mfcc_default_config(&c);
    CHECK(c.sample_rate == 16000 && c.window_length == 480 && c.hop_length == 320 && c.fft_length == 512 &&
          c.num_mel_bins == 40 && c.num_coefficients == 10 && c.lower_hz == 20.0f && c.upper_hz == 4000.0f &&
          c.log_offset == 1e-6f, "default config");
    float *audio = malloc(sizeof(float) * 16000);
    for (int i = 0; i < 16000; i++) audio[i] = uniform();
    check_against_reference("noise", &c, audio, 16000);
    /* a gliding tone over a -45 dB noise floor (a pure tone's far bands lie below float32's FFT
     * rounding, where no float implementation matches the log within 1e-4), silent in its second half */
    for (int i = 0; i < 16000; i++)
        audio[i] = i < 8000 ? 0.5f * (float)sin(2 * PI * (300.0 + 0.1 * i) * i / 16000.0) + 3e-3f * uniform() : 0.0f;
    check_against_reference("tone and silence", &c, audio, 16000);
    check_against_reference("one window", &c, audio, 480);
    ep_mfcc_config other = {8000, 200, 80, 256, 26, 13, 0.0f, 4000.0f, 1e-3f};
    check_against_reference("8 kHz config", &other, audio, 3000);
    free(audio);
}

static void expect(ep_status got, ep_status want, const char *needle, const char *what) {
    CHECK(got == want, "%s: status %d, want %d (%s)", what, (int)got, (int)want, ep_last_error());
    CHECK(strstr(ep_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what, ep_last_error(), needle);
}

static void bad_config(void (*edit)(ep_mfcc_config *), ep_status want, const char *needle) {
    ep_mfcc_config c;
    ep_mfcc_default_config(&c);
    edit(&c);
    ep_mfcc_plan *plan = (ep_mfcc_plan *)&c; /* must be reset to NULL */
    expect(ep_mfcc_plan_create(&c, &plan), want, needle, needle);
    CHECK(plan == NULL, "%s: plan not reset", needle);
}
static void nan_lower(ep_mfcc_config *c) { c->lower_hz = NAN; }
static void inf_offset(ep_mfcc_config *c) { c->log_offset = INFINITY; }
static void upper_above_nyquist(ep_mfcc_config *c) { c->upper_hz = 9000.0f; }
static void fft_not_pow2(ep_mfcc_config *c) { c->fft_length = 500; }
static void window_too_long(ep_mfcc_config *c) { c->window_length = 513; }
static void zero_hop(ep_mfcc_config *c) { c->hop_length = 0; }
static void too_many_coefficients(ep_mfcc_config *c) { c->num_coefficients = 41; }
static void no_mel_bins(ep_mfcc_config *c) { c->num_mel_bins = 0; }
static void zero_rate(ep_mfcc_config *c) { c->sample_rate = 0; }

static void test_errors(void) {
    bad_config(nan_lower, EP_ERR_ARG, "lower_hz=nan");
    bad_config(inf_offset, EP_ERR_ARG, "log_offset=inf");
    bad_config(upper_above_nyquist, EP_ERR_ARG, "upper_hz <= sample_rate / 2 = 8000");
    bad_config(fft_not_pow2, EP_ERR_SIZE, "fft_length=500; must be a power of two");
    bad_config(window_too_long, EP_ERR_SIZE, "window_length=513; must be in [1, fft_length=512]");
    bad_config(zero_hop, EP_ERR_SIZE, "hop_length=0");
    bad_config(too_many_coefficients, EP_ERR_SIZE, "num_coefficients=41; must be in [1, num_mel_bins=40]");
    bad_config(no_mel_bins, EP_ERR_SIZE, "num_mel_bins=0");
    bad_config(zero_rate, EP_ERR_ARG, "sample_rate=0");
    expect(ep_mfcc_plan_create(NULL, NULL), EP_ERR_NULL, "out is NULL", "NULL out");

    ep_mfcc_config c;
    ep_mfcc_default_config(&c);
    ep_mfcc_plan *plan = NULL;
    CHECK(ep_mfcc_plan_create(&c, &plan) == EP_OK, "default plan: %s", ep_last_error());
    if (!plan) return;
    CHECK(ep_mfcc_num_frames(plan, 479) == 0 && ep_mfcc_num_frames(plan, 480) == 1 &&
          ep_mfcc_num_frames(plan, 799) == 1 && ep_mfcc_num_frames(plan, 800) == 2 &&
          ep_mfcc_num_frames(plan, 16000) == 49 && ep_mfcc_num_frames(NULL, 16000) == 0 &&
          ep_mfcc_num_frames(plan, -5) == 0, "num_frames");
    CHECK(ep_mfcc_plan_config(plan)->hop_length == 320 && ep_mfcc_plan_config(NULL) == NULL, "plan config");
    float audio[800] = {0}, out[20];
    expect(ep_mfcc(plan, audio, 479, out, 10), EP_ERR_SIZE, "num_samples=479; must be at least one window", "short");
    expect(ep_mfcc(plan, audio, 800, out, 10), EP_ERR_SIZE, "out_len=10; 800 samples give 2 frames", "out_len");
    expect(ep_mfcc(plan, NULL, 800, out, 20), EP_ERR_NULL, "audio is NULL", "NULL audio");
    expect(ep_mfcc(NULL, audio, 800, out, 20), EP_ERR_NULL, "plan is NULL", "NULL plan");
    CHECK(ep_mfcc(plan, audio, 800, out, 20) == EP_OK, "silence: %s", ep_last_error());
    /* silence: every log-mel is log(1e-6), so c_0 = sqrt(2/40) * 40 * log(1e-6), the rest 0 */
    CHECK(fabs(out[0] - sqrt(2.0 / 40) * 40 * log((double)1e-6f)) < TOL && fabs(out[1]) < TOL, "silence: %g %g",
          out[0], out[1]);
    ep_mfcc_plan_destroy(plan);
    ep_mfcc_plan_destroy(NULL);
    ep_mfcc_default_config(NULL);
}

int main(void) {
    test_values();
    test_errors();
    printf("test_mfcc: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
