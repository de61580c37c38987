/* The MFCC front end (include/edgepack/mfcc.h): config checks, the plan's tables in double
 * precision stored as float, and the per-frame window, rFFT, magnitude, mel, log and DCT. */
#include "edgepack/mfcc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct ep_mfcc_plan {
    ep_mfcc_config c;
    int32_t bins;         /* fft_length / 2 + 1 */
    ep_rfft_plan *fft;
    float *window;        /* [window_length] periodic Hann */
    int32_t *band_first;  /* per mel band: its first nonzero bin and how many follow */
    int32_t *band_count;
    float *band_weights;  /* each band's nonzero weights, bands one after another */
    float *dct;           /* [num_coefficients, num_mel_bins] */
};

void ep_mfcc_default_config(ep_mfcc_config *config) {
    if (!config) return;
    config->sample_rate = 16000;
    config->window_length = 480;
    config->hop_length = 320;
    config->fft_length = 512;
    config->num_mel_bins = 40;
    config->num_coefficients = 10;
    config->lower_hz = 20.0f;
    config->upper_hz = 4000.0f;
    config->log_offset = 1e-6f;
}

static ep_status check_config(const ep_mfcc_config *c) {
    if (!c) return ep_fail(EP_ERR_NULL, "ep_mfcc_plan_create: config is NULL (a valid buffer is required)");
    if (c->sample_rate < 1) return ep_fail(EP_ERR_ARG, "ep_mfcc_plan_create: sample_rate=%d; must be >= 1", c->sample_rate);
    if (c->fft_length < 4 || c->fft_length > EP_MFCC_MAX_FFT || (c->fft_length & (c->fft_length - 1)))
        return ep_fail(EP_ERR_SIZE, "ep_mfcc_plan_create: fft_length=%d; must be a power of two in [4, %d]", c->fft_length,
                       EP_MFCC_MAX_FFT);
    if (c->window_length < 1 || c->window_length > c->fft_length)
        return ep_fail(EP_ERR_SIZE, "ep_mfcc_plan_create: window_length=%d; must be in [1, fft_length=%d]", c->window_length,
                       c->fft_length);
    if (c->hop_length < 1) return ep_fail(EP_ERR_SIZE, "ep_mfcc_plan_create: hop_length=%d; must be >= 1", c->hop_length);
    if (c->num_mel_bins < 1 || c->num_mel_bins > EP_MFCC_MAX_MEL_BINS)
        return ep_fail(EP_ERR_SIZE, "ep_mfcc_plan_create: num_mel_bins=%d; must be in [1, %d]", c->num_mel_bins,
                       EP_MFCC_MAX_MEL_BINS);
    if (c->num_coefficients < 1 || c->num_coefficients > c->num_mel_bins)
        return ep_fail(EP_ERR_SIZE, "ep_mfcc_plan_create: num_coefficients=%d; must be in [1, num_mel_bins=%d]",
                       c->num_coefficients, c->num_mel_bins);
    const double nyquist = c->sample_rate / 2.0;
    if (!isfinite(c->lower_hz) || !isfinite(c->upper_hz) || !(c->lower_hz >= 0.0f) || !(c->lower_hz < c->upper_hz) ||
        !(c->upper_hz <= nyquist))
        return ep_fail(EP_ERR_ARG, "ep_mfcc_plan_create: lower_hz=%g, upper_hz=%g; need finite 0 <= lower_hz < upper_hz <= "
                       "sample_rate / 2 = %g", (double)c->lower_hz, (double)c->upper_hz, nyquist);
    if (!isfinite(c->log_offset) || !(c->log_offset >= 0.0f))
        return ep_fail(EP_ERR_ARG, "ep_mfcc_plan_create: log_offset=%g; must be finite and >= 0", (double)c->log_offset);
    return EP_OK;
}

static double hz_to_mel(double hz) { return 1127.0 * log1p(hz / 700.0); }

/* The mel triangles, kept sparse: each band's run of nonzero bins (tf.signal's weights). A bin lies
 * inside at most two triangles, so the runs hold at most 2 * bins weights. */
static ep_status mel_bands(ep_mfcc_plan *p) {
    const ep_mfcc_config *c = &p->c;
    const int32_t M = c->num_mel_bins, bins = p->bins;
    const int64_t cap = 2 * (int64_t)bins;
    double *bin_mel = (double *)malloc(sizeof(double) * (size_t)bins);
    p->band_first = (int32_t *)calloc((size_t)M, sizeof(int32_t));
    p->band_count = (int32_t *)calloc((size_t)M, sizeof(int32_t));
    p->band_weights = (float *)calloc((size_t)cap, sizeof(float));
    if (!bin_mel || !p->band_first || !p->band_count || !p->band_weights) {
        free(bin_mel);
        return ep_fail(EP_ERR_NOMEM, "ep_mfcc_plan_create: out of memory");
    }
    for (int32_t b = 0; b < bins; b++) bin_mel[b] = hz_to_mel((double)b * (c->sample_rate / 2.0) / (bins - 1));
    const double lo = hz_to_mel(c->lower_hz), hi = hz_to_mel(c->upper_hz);
    int64_t at = 0;
    for (int32_t m = 0; m < M; m++) {
        const double left = lo + (hi - lo) * m / (M + 1), center = lo + (hi - lo) * (m + 1) / (M + 1),
                     right = lo + (hi - lo) * (m + 2) / (M + 1);
        p->band_first[m] = bins;
        for (int32_t b = 1; b < bins; b++) { /* bin 0 (DC) gets no weight */
            const double rise = (bin_mel[b] - left) / (center - left), fall = (right - bin_mel[b]) / (right - center);
            const double w = rise < fall ? rise : fall;
            if (!(w > 0.0)) continue;
            if (p->band_count[m] == 0) p->band_first[m] = b;
            const int64_t i = at + (b - p->band_first[m]);
            if (i >= cap) break; /* cannot happen for a triangle; keeps the writes in bounds */
            p->band_weights[i] = (float)w;
            p->band_count[m] = b - p->band_first[m] + 1;
        }
        at += p->band_count[m];
    }
    free(bin_mel);
    return EP_OK;
}

ep_status ep_mfcc_plan_create(const ep_mfcc_config *config, ep_mfcc_plan **out) {
    if (!out) return ep_fail(EP_ERR_NULL, "ep_mfcc_plan_create: out is NULL (a valid buffer is required)");
    *out = NULL;
    ep_status s = check_config(config);
    if (s) return s;
    ep_mfcc_plan *p = (ep_mfcc_plan *)calloc(1, sizeof *p);
    if (!p) return ep_fail(EP_ERR_NOMEM, "ep_mfcc_plan_create: out of memory");
    p->c = *config;
    p->bins = config->fft_length / 2 + 1;
    const int32_t W = config->window_length, M = config->num_mel_bins, K = config->num_coefficients;
    p->window = (float *)malloc(sizeof(float) * (size_t)W);
    p->dct = (float *)malloc(sizeof(float) * (size_t)K * (size_t)M);
    if (!p->window || !p->dct) {
        ep_mfcc_plan_destroy(p);
        return ep_fail(EP_ERR_NOMEM, "ep_mfcc_plan_create: out of memory");
    }
    const double pi = 3.14159265358979323846;
    for (int32_t n = 0; n < W; n++) p->window[n] = (float)(0.5 - 0.5 * cos(2.0 * pi * n / W));
    for (int32_t k = 0; k < K; k++)
        for (int32_t m = 0; m < M; m++)
            p->dct[(size_t)k * M + m] = (float)(sqrt(2.0 / M) * cos(pi * k * (2.0 * m + 1.0) / (2.0 * M)));
    if ((s = mel_bands(p)) || (s = ep_rfft_plan_create(config->fft_length, &p->fft))) {
        ep_mfcc_plan_destroy(p);
        return s;
    }
    *out = p;
    return EP_OK;
}

void ep_mfcc_plan_destroy(ep_mfcc_plan *plan) {
    if (!plan) return;
    ep_rfft_plan_destroy(plan->fft);
    free(plan->window);
    free(plan->band_first);
    free(plan->band_count);
    free(plan->band_weights);
    free(plan->dct);
    free(plan);
}

const ep_mfcc_config *ep_mfcc_plan_config(const ep_mfcc_plan *plan) { return plan ? &plan->c : NULL; }

int64_t ep_mfcc_num_frames(const ep_mfcc_plan *plan, int64_t num_samples) {
    if (!plan || num_samples < plan->c.window_length) return 0;
    return 1 + (num_samples - plan->c.window_length) / plan->c.hop_length;
}

ep_status ep_mfcc(const ep_mfcc_plan *plan, const float *audio, int64_t num_samples, float *out, int64_t out_len) {
    if (!plan || !audio || !out)
        return ep_fail(EP_ERR_NULL, "ep_mfcc: %s is NULL (a valid buffer is required)",
                       !plan ? "plan" : !audio ? "audio" : "out");
    const ep_mfcc_config *c = &plan->c;
    const int64_t frames = ep_mfcc_num_frames(plan, num_samples);
    if (frames < 1)
        return ep_fail(EP_ERR_SIZE, "ep_mfcc: num_samples=%lld; must be at least one window (window_length=%d)",
                       (long long)num_samples, c->window_length);
    if (frames > INT64_MAX / c->num_coefficients)
        return ep_fail(EP_ERR_OVERFLOW, "ep_mfcc: num_samples=%lld gives too many frames", (long long)num_samples);
    if (out_len != frames * c->num_coefficients)
        return ep_fail(EP_ERR_SIZE, "ep_mfcc: out_len=%lld; %lld samples give %lld frames x %d coefficients = %lld",
                       (long long)out_len, (long long)num_samples, (long long)frames, c->num_coefficients,
                       (long long)(frames * c->num_coefficients));
    const int32_t N = c->fft_length, W = c->window_length, M = c->num_mel_bins, K = c->num_coefficients;
    float *frame = (float *)malloc(sizeof(float) * ((size_t)N + 2 * (size_t)plan->bins + (size_t)M));
    if (!frame) return ep_fail(EP_ERR_NOMEM, "ep_mfcc: out of memory");
    float *spectrum = frame + N, *log_mel = spectrum + 2 * (size_t)plan->bins;
    memset(frame, 0, sizeof(float) * (size_t)N);
    ep_status s = EP_OK;
    for (int64_t f = 0; f < frames && !s; f++) {
        const float *x = audio + f * c->hop_length;
        for (int32_t n = 0; n < W; n++) frame[n] = x[n] * plan->window[n];
        if ((s = ep_rfft(plan->fft, N, frame, spectrum))) break;
        for (int32_t b = 0; b < plan->bins; b++) {
            const double re = spectrum[2 * b], im = spectrum[2 * b + 1];
            spectrum[b] = (float)sqrt(re * re + im * im); /* in place: bin b's pair lies at or after b */
        }
        const float *w = plan->band_weights;
        for (int32_t m = 0; m < M; m++) {
            double mel = 0.0;
            const float *mag = spectrum + plan->band_first[m];
            for (int32_t i = 0; i < plan->band_count[m]; i++) mel += (double)w[i] * mag[i];
            w += plan->band_count[m];
            log_mel[m] = (float)log(mel + c->log_offset);
        }
        float *y = out + f * K;
        for (int32_t k = 0; k < K; k++) {
            double acc = 0.0;
            const float *d = plan->dct + (size_t)k * M;
            for (int32_t m = 0; m < M; m++) acc += (double)d[m] * log_mel[m];
            y[k] = (float)acc;
        }
    }
    free(frame);
    return s;
}
