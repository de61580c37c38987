/* edgepack MFCC front end: the keyword-spotting features of MLPerf Tiny KWS (tf.signal), on the
 * kernels' real FFT (docs/ops.md "MFCC"; the same definition as kws/frontend.py and the
 * ai.edgepack.MFCC op).
 *
 * Frames of window_length samples every hop_length (no padding: 1 + (samples - window) / hop
 * frames); each times a periodic Hann window, zero-padded to fft_length, real FFT, magnitude;
 * mel weights as tf.signal.linear_to_mel_weight_matrix (HTK mel 1127 ln(1 + f/700), num_mel_bins
 * triangles with edges evenly spaced in mel over [lower_hz, upper_hz], the DC bin excluded);
 * log(mel + log_offset); DCT-II scaled as tf.signal.mfccs_from_log_mel_spectrograms,
 * c_k = sqrt(2/M) sum_m x_m cos(pi k (2m+1) / 2M); the first num_coefficients.
 * Errors follow kernels.h: an ep_status, and ep_last_error() names the field and what is valid. */
#ifndef EDGEPACK_MFCC_H
#define EDGEPACK_MFCC_H

#include <stdint.h>

#include "edgepack/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EP_MFCC_MAX_FFT ((int32_t)1 << 16)   /* largest fft_length */
#define EP_MFCC_MAX_MEL_BINS ((int32_t)1024) /* most num_mel_bins */

typedef struct ep_mfcc_config {
    int32_t sample_rate;      /* Hz, >= 1 */
    int32_t window_length;    /* samples per frame, 1..fft_length */
    int32_t hop_length;       /* samples between frame starts, >= 1 */
    int32_t fft_length;       /* a power of two, 4..EP_MFCC_MAX_FFT */
    int32_t num_mel_bins;     /* 1..EP_MFCC_MAX_MEL_BINS */
    int32_t num_coefficients; /* 1..num_mel_bins */
    float lower_hz, upper_hz; /* finite, 0 <= lower_hz < upper_hz <= sample_rate / 2 */
    float log_offset;         /* finite, >= 0 */
} ep_mfcc_config;

/* The MLPerf Tiny KWS values: 16000 Hz, 480 / 320 samples (30 / 20 ms), 512-point FFT, 40 mel
 * bins over 20..4000 Hz, 10 coefficients, log offset 1e-6 (1 s of audio gives 49 x 10). */
EP_API void ep_mfcc_default_config(ep_mfcc_config *config);

/* The window, mel weights and DCT matrix of a checked config. Read-only once made: threads may
 * share one plan. */
typedef struct ep_mfcc_plan ep_mfcc_plan;
EP_API ep_status ep_mfcc_plan_create(const ep_mfcc_config *config, ep_mfcc_plan **out);
EP_API void ep_mfcc_plan_destroy(ep_mfcc_plan *plan);
/* The plan's config (NULL plan: NULL). */
EP_API const ep_mfcc_config *ep_mfcc_plan_config(const ep_mfcc_plan *plan);

/* Frames in num_samples samples: 1 + (num_samples - window_length) / hop_length, 0 when shorter
 * than one window (or plan is NULL). */
EP_API int64_t ep_mfcc_num_frames(const ep_mfcc_plan *plan, int64_t num_samples);

/* out[frames, num_coefficients] (row-major) of audio[num_samples]; num_samples must hold at least
 * one window and out_len must equal ep_mfcc_num_frames(plan, num_samples) * num_coefficients. */
EP_API ep_status ep_mfcc(const ep_mfcc_plan *plan, const float *audio, int64_t num_samples, float *out,
                         int64_t out_len);

#ifdef __cplusplus
}
#endif
#endif /* EDGEPACK_MFCC_H */
