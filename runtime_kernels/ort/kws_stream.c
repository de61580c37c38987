/* edgepack_kws_stream: streaming keyword detection in C on ONNX Runtime's C API: our MFCC front end
 * every hop, the model on the last second, micro_speech's RecognizeCommands, one JSON line per
 * detection ({"time_s": ..., "label": ..., "score": ...}), as `edgepack kws listen` prints them.
 * libonnxruntime is dlopen'ed as in runner.c, so the same binary works with any ORT >= 1.16.
 *
 *   edgepack_kws_stream --ort LIBONNXRUNTIME [--lib LIBEDGEPACK_ORT] --model M.onnx
 *                       [--threshold 0.8] [--window-ms 1000] [--suppression-ms 1500] [--min-count 3]
 *                       [--hop-ms 20] [--threads 1] [--keep-fused] [--bench] FILE.wav|-
 *
 * With --lib the model is decoded at load as edgepack_ort_runner does (runner_common.h's
 * open_session: HashedWeight / expand-mode HashedMatMul nodes become dense constants once, and ORT
 * runs its own kernels); --keep-fused runs the file as it is, on the fused custom ops.
 *
 * FILE.wav must be 16-bit PCM mono 16 kHz (anything else is refused with a message); `-` reads raw
 * s16le 16 kHz mono PCM from stdin as it arrives. The model's one float input is MFCC features
 * [1,1,49,10] (any shape of 49×10 elements) or raw audio [1,16000]; its first output holds the 12
 * class scores (softmax applied unless they already are probabilities). The stream starts with a
 * second of silence in the ring buffer; each hop computes only the new MFCC frame(s) and shifts the
 * 49×10 window (frame k covers samples [320k, 320k + 480)), exactly as kws/detector.py.
 * --bench prints one JSON object at the end instead: per-hop latency statistics (front end, model,
 * whole hop, in ms, CLOCK_MONOTONIC), every hop's latency, the real-time factor (processing time over
 * audio time), peak_rss_mb (VmHWM over the RSS before the session, as runner.c), decode_at_load and
 * decoded_nodes (as runner.c's) and the detections.
 * The WAV parser is wav_reader.c (fuzzed by fuzz/fuzz_wav.c). Errors: {"status": "error", "error": ...}
 * on stdout, exit 2 for bad input, 1 for a runtime failure.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgepack/mfcc.h"
#include "runner_common.h"
#include "ort_abi.h"
#include "wav_reader.h"

#define SAMPLE_RATE 16000
#define CLIP 16000
#define WIN 480
#define STRIDE 320
#define FRAMES 49
#define COEFS 10
#define NUM_LABELS 12

static const char *const LABELS[NUM_LABELS] = {"silence", "unknown", "yes", "no", "up", "down",
                                               "left", "right", "on", "off", "stop", "go"};

static double parse_number(const char *flag, const char *v, double lo, double hi) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x) || x < lo || x > hi)
        die(2, "%s wants a number in [%g, %g], got '%s'", flag, lo, hi, v);
    return x;
}

/* ---- RecognizeCommands (micro_speech), as kws/detector.py ------------------------------------ */

typedef struct {
    double window_ms, threshold, suppression_ms;
    int minimum_count;
    size_t cap, head, count; /* a ring of results */
    double *times, *scores;
    int previous;            /* label index of the last detection, -1 none */
    double previous_ms;
} Recognizer;

static void recognizer_init(Recognizer *r, double hop_ms) {
    r->cap = (size_t)(r->window_ms / hop_ms) + 2;
    r->head = r->count = 0;
    r->times = xcalloc(r->cap, sizeof *r->times);
    r->scores = xcalloc(r->cap * NUM_LABELS, sizeof *r->scores);
    r->previous = -1;
    r->previous_ms = -INFINITY;
}

/* Adds one result; returns the detected label index (score in *score) or -1. */
static int recognizer_process(Recognizer *r, const double *scores, double time_ms, double *score) {
    if (r->count == r->cap) { r->head = (r->head + 1) % r->cap; r->count--; }
    size_t slot = (r->head + r->count) % r->cap;
    r->times[slot] = time_ms;
    memcpy(r->scores + slot * NUM_LABELS, scores, sizeof(double) * NUM_LABELS);
    r->count++;
    while (r->times[r->head] < time_ms - r->window_ms) { r->head = (r->head + 1) % r->cap; r->count--; }
    if ((int)r->count < r->minimum_count || time_ms - r->times[r->head] < r->window_ms / 4) return -1;
    double avg[NUM_LABELS] = {0};
    for (size_t i = 0; i < r->count; i++)
        for (int c = 0; c < NUM_LABELS; c++) avg[c] += r->scores[((r->head + i) % r->cap) * NUM_LABELS + c];
    int top = 0;
    for (int c = 0; c < NUM_LABELS; c++) {
        avg[c] /= (double)r->count;
        if (avg[c] > avg[top]) top = c;
    }
    if (top < 2 || avg[top] <= r->threshold) return -1; /* silence and unknown are never reported */
    if (top == r->previous && time_ms - r->previous_ms <= r->suppression_ms) return -1;
    r->previous = top;
    r->previous_ms = time_ms;
    *score = avg[top];
    return top;
}

/* the model's outputs as probabilities: as they are when they already are, else their softmax */
static void posteriors(const float *out, double *p) {
    double sum = 0, mx = out[0];
    int probs = 1;
    for (int c = 0; c < NUM_LABELS; c++) {
        sum += out[c];
        probs &= out[c] >= 0.0f && out[c] <= 1.0f;
        if (out[c] > mx) mx = out[c];
    }
    if (probs && fabs(sum - 1.0) <= 1e-3) {
        for (int c = 0; c < NUM_LABELS; c++) p[c] = out[c];
        return;
    }
    sum = 0;
    for (int c = 0; c < NUM_LABELS; c++) sum += p[c] = exp((double)out[c] - mx);
    for (int c = 0; c < NUM_LABELS; c++) p[c] /= sum;
}

/* ---- statistics for --bench --------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_stats(const char *name, double *v, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    qsort(v, n, sizeof *v, cmp_double);
#define PCT(q) (n ? v[(size_t)((q) * (double)(n - 1) + 0.5)] : 0.0)
    printf("\"%s\": {\"mean\": %.6f, \"median\": %.6f, \"p90\": %.6f, \"p99\": %.6f, \"max\": %.6f}", name,
           n ? sum / (double)n : 0.0, PCT(0.5), PCT(0.9), PCT(0.99), n ? v[n - 1] : 0.0);
#undef PCT
}

int main(int argc, char **argv) {
    const char *ort = "libonnxruntime.so", *lib = NULL, *model = NULL, *input = NULL;
    int threads = 1, bench = 0, keep_fused = 0;
    double hop_ms = 20;
    Recognizer rec = {.window_ms = 1000, .threshold = 0.8, .suppression_ms = 1500, .minimum_count = 3};
    json_errors = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--bench")) { bench = 1; continue; }
        if (!strcmp(a, "--keep-fused")) { keep_fused = 1; continue; }
        if (strncmp(a, "--", 2) || !strcmp(a, "-")) {
            if (input) die(2, "more than one audio input given (%s, %s)", input, a);
            input = a;
            continue;
        }
        if (i + 1 >= argc) die(2, "%s needs a value", a);
        v = argv[++i];
        if (!strcmp(a, "--ort") || !strcmp(a, "--ort-lib")) ort = v;
        else if (!strcmp(a, "--lib") || !strcmp(a, "--custom-ops")) lib = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--threads")) threads = (int)parse_number(a, v, 1, 256);
        else if (!strcmp(a, "--threshold")) rec.threshold = parse_number(a, v, 0, 1);
        else if (!strcmp(a, "--window-ms")) rec.window_ms = parse_number(a, v, 1, 60000);
        else if (!strcmp(a, "--suppression-ms")) rec.suppression_ms = parse_number(a, v, 0, 3.6e6);
        else if (!strcmp(a, "--min-count")) rec.minimum_count = (int)parse_number(a, v, 1, 100000);
        else if (!strcmp(a, "--hop-ms")) hop_ms = parse_number(a, v, 20, 1000);
        else die(2, "unknown flag %s", a);
    }
    if (!model || !input)
        die(2, "usage: %s --ort LIBONNXRUNTIME [--lib LIBEDGEPACK_ORT] --model M.onnx [--threshold T] "
               "[--window-ms MS] [--suppression-ms MS] [--min-count N] [--hop-ms MS] [--threads N] [--keep-fused] [--bench] "
               "FILE.wav|-", argv[0]);
    int hop = (int)hop_ms * SAMPLE_RATE / 1000;
    if (hop_ms != floor(hop_ms) || hop % STRIDE)
        die(2, "--hop-ms must be a multiple of the 20 ms MFCC stride, got %g", hop_ms);
    int new_frames = hop / STRIDE;
    if (new_frames > FRAMES) die(2, "--hop-ms %g is longer than the 1 s window", hop_ms);
    recognizer_init(&rec, hop_ms);

    /* the front end: the window's 49 frames of the silent start, then one hop's frames at a time */
    ep_mfcc_config cfg;
    ep_mfcc_default_config(&cfg);
    ep_mfcc_plan *plan = NULL;
    if (ep_mfcc_plan_create(&cfg, &plan) != EP_OK) die(1, "ep_mfcc_plan_create: %s", ep_last_error());
    static float ring[CLIP], features[FRAMES * COEFS], hop_buf[CLIP];
    if (ep_mfcc_num_frames(plan, CLIP) != FRAMES || cfg.num_coefficients != COEFS)
        die(1, "the MFCC front end gives %lld x %d features per second, not %d x %d",
            (long long)ep_mfcc_num_frames(plan, CLIP), (int)cfg.num_coefficients, FRAMES, COEFS);
    if (ep_mfcc(plan, ring, CLIP, features, FRAMES * COEFS) != EP_OK) die(1, "ep_mfcc: %s", ep_last_error());

    const char *version = load_ort(ort);
    const long rss_before = rss_kb("VmRSS");

    OrtEnv *env = NULL;
    OrtSessionOptions *so = NULL;
    OrtAllocator *alloc = NULL;
    OrtMemoryInfo *mem = NULL;
    RunnerSession session;
    check(OrtCreateEnv(api)(ORT_LOGGING_LEVEL_WARNING, "edgepack", &env), "CreateEnv");
    check(OrtCreateSessionOptions(api)(&so), "CreateSessionOptions");
    check(OrtSetIntraOpNumThreads(api)(so, threads), "SetIntraOpNumThreads");
    if (lib) check(OrtRegisterCustomOpsLibrary_V2(api)(so, lib), "RegisterCustomOpsLibrary_V2");
    check(OrtCreateCpuMemoryInfo(api)(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");
    open_session(&session, env, so, mem, model, lib && !keep_fused, threads);
    OrtSession *sess = session.sess;
    check(OrtGetAllocatorWithDefaultOptions(api)(&alloc), "GetAllocatorWithDefaultOptions");
    size_t n_in = 0, n_out = 0, rank = 0;
    check(OrtSessionGetInputCount(api)(sess, &n_in), "SessionGetInputCount");
    check(OrtSessionGetOutputCount(api)(sess, &n_out), "SessionGetOutputCount");
    if (n_in != 1 || n_out < 1) die(2, "%s: the model has %zu inputs and %zu outputs; want one input", model, n_in, n_out);
    char *in_name = NULL, *out_name = NULL;
    check(OrtSessionGetInputName(api)(sess, 0, alloc, &in_name), "SessionGetInputName");
    check(OrtSessionGetOutputName(api)(sess, 0, alloc, &out_name), "SessionGetOutputName");
    OrtTypeInfo *ti = NULL;
    const OrtTensorTypeAndShapeInfo *tsi = NULL;
    ONNXTensorElementDataType type;
    int64_t dims[16];
    check(OrtSessionGetInputTypeInfo(api)(sess, 0, &ti), "SessionGetInputTypeInfo");
    check(OrtCastTypeInfoToTensorInfo(api)(ti, &tsi), "CastTypeInfoToTensorInfo");
    if (!tsi) die(2, "%s: input %s is not a tensor", model, in_name);
    check(OrtGetTensorElementType(api)(tsi, &type), "GetTensorElementType");
    check(OrtGetDimensionsCount(api)(tsi, &rank), "GetDimensionsCount");
    if (rank < 1 || rank > 16) die(2, "%s: input %s has rank %zu", model, in_name, rank);
    check(OrtGetDimensions(api)(tsi, dims, rank), "GetDimensions");
    OrtReleaseTypeInfo(api)(ti);
    char shape[256] = "";
    size_t count = 1;
    for (size_t d = 0; d < rank; d++) {
        size_t len = strlen(shape);
        snprintf(shape + len, sizeof shape - len, "%s%lld", d ? ", " : "", (long long)dims[d]);
        if (dims[d] <= 0) dims[d] = 1;
        count *= (size_t)dims[d];
    }
    int audio_input;
    if (rank >= 2 && dims[rank - 2] == FRAMES && dims[rank - 1] == COEFS && count == FRAMES * COEFS) audio_input = 0;
    else if (dims[rank - 1] == CLIP && count == CLIP) audio_input = 1;
    else die(2, "%s: model input %s has shape [%s]; the streaming detector feeds MFCC features [1, 1, 49, 10] or "
                "raw audio [1, 16000]", model, in_name, shape);
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) die(2, "%s: input %s is not float32", model, in_name);
    float *feed = audio_input ? ring : features;
    OrtValue *in_value = NULL;
    check(OrtCreateTensorWithDataAsOrtValue(api)(mem, feed, sizeof(float) * count, dims, rank,
                                                 ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in_value),
          "CreateTensorWithDataAsOrtValue");

    ep_wav audio;
    if (!strcmp(input, "-")) ep_wav_raw(&audio, stdin, "stdin");
    else {
        FILE *f = fopen(input, "rb");
        if (!f) die(2, "%s: cannot open: %s", input, strerror(errno));
        if (ep_wav_open(&audio, f, input)) die(2, "%s", audio.error);
    }

    size_t cap = 1024, n = 0;
    double *t_front = xcalloc(cap, sizeof(double)), *t_model = xcalloc(cap, sizeof(double));
    double *t_hop = xcalloc(cap, sizeof(double));
    size_t det_cap = 64, n_det = 0;
    int *det_label = xcalloc(det_cap, sizeof(int));
    double *det_time = xcalloc(det_cap, sizeof(double)), *det_score = xcalloc(det_cap, sizeof(double));
    uint64_t samples = 0;
    const int end = (FRAMES - 1) * STRIDE + WIN, start = end - WIN - (new_frames - 1) * STRIDE;
    size_t got = 0;
    while (ep_wav_read(&audio, hop_buf, (size_t)hop, &got) == 0 && got == (size_t)hop) {
        double t0 = now_ms();
        samples += (uint64_t)hop;
        memmove(ring, ring + hop, sizeof(float) * (CLIP - hop));
        memcpy(ring + CLIP - hop, hop_buf, sizeof(float) * hop);
        if (!audio_input) { /* a raw-audio model computes its own front end */
            memmove(features, features + new_frames * COEFS, sizeof(float) * (FRAMES - new_frames) * COEFS);
            if (ep_mfcc(plan, ring + start, end - start, features + (FRAMES - new_frames) * COEFS,
                        (int64_t)new_frames * COEFS) != EP_OK)
                die(1, "ep_mfcc: %s", ep_last_error());
        }
        double t1 = now_ms();
        OrtValue *out_value = NULL;
        check(OrtRun(api)(sess, NULL, (const char *const *)&in_name, (const OrtValue *const *)&in_value, 1,
                          (const char *const *)&out_name, 1, &out_value), "Run");
        double t2 = now_ms();
        OrtTensorTypeAndShapeInfo *oi = NULL;
        size_t n_scores = 0;
        float *out = NULL;
        check(OrtGetTensorTypeAndShape(api)(out_value, &oi), "GetTensorTypeAndShape");
        check(OrtGetTensorShapeElementCount(api)(oi, &n_scores), "GetTensorShapeElementCount");
        check(OrtGetTensorElementType(api)(oi, &type), "GetTensorElementType");
        OrtReleaseTensorTypeAndShapeInfo(api)(oi);
        if (n_scores != NUM_LABELS || type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
            die(2, "%s: output %s has %zu elements; the detector wants the %d float class scores (silence, unknown, "
                   "yes, ..., go)", model, out_name, n_scores, NUM_LABELS);
        check(OrtGetTensorMutableData(api)(out_value, (void **)&out), "GetTensorMutableData");
        double p[NUM_LABELS], score = 0;
        posteriors(out, p);
        OrtReleaseValue(api)(out_value);
        double time_ms = (double)samples * 1000.0 / SAMPLE_RATE;
        int label = recognizer_process(&rec, p, time_ms, &score);
        double t3 = now_ms();
        if (label >= 0) {
            if (!bench) {
                printf("{\"time_s\": %.3f, \"label\": \"%s\", \"score\": %.4f}\n", time_ms / 1000.0, LABELS[label], score);
                fflush(stdout);
            } else {
                if (n_det == det_cap) {
                    det_cap *= 2;
                    int *l = realloc(det_label, det_cap * sizeof *l);
                    double *t = realloc(det_time, det_cap * sizeof *t), *s = realloc(det_score, det_cap * sizeof *s);
                    if (!l || !t || !s) die(1, "out of memory");
                    det_label = l; det_time = t; det_score = s;
                }
                det_label[n_det] = label; det_time[n_det] = time_ms / 1000.0; det_score[n_det++] = score;
            }
        }
        if (bench) {
            if (n == cap) {
                cap *= 2;
                double *a = realloc(t_front, cap * sizeof *a), *b = realloc(t_model, cap * sizeof *b),
                       *c = realloc(t_hop, cap * sizeof *c);
                if (!a || !b || !c) die(1, "out of memory");
                t_front = a; t_model = b; t_hop = c;
            }
            t_front[n] = t1 - t0; t_model[n] = t2 - t1; t_hop[n] = t3 - t0;
            n++;
        }
    }
    if (audio.error[0]) die(2, "%s", audio.error);
    if (audio.f != stdin) fclose(audio.f);
    if (bench) {
        const long peak = rss_kb("VmHWM") - rss_before;
        double busy = 0;
        for (size_t i = 0; i < n; i++) busy += t_hop[i];
        printf("{\"status\": \"ok\", \"runtime_version\": \"onnxruntime %s\", \"input\": \"%s\", \"hops\": %zu, "
               "\"hop_ms\": %g, \"audio_s\": %.3f, \"real_time_factor\": %.6g, \"peak_rss_mb\": %.6f, "
               "\"decode_at_load\": %s, \"decoded_nodes\": %d, \"hop_latencies_ms\": [", version,
               audio_input ? "audio" : "features", n, hop_ms, (double)samples / SAMPLE_RATE,
               samples ? busy / ((double)samples * 1000.0 / SAMPLE_RATE) : 0.0, (double)(peak > 0 ? peak : 0) / 1024.0,
               session.decode ? "true" : "false", session.decoded.n_decoded);
        for (size_t i = 0; i < n; i++) printf("%s%.6f", i ? ", " : "", t_hop[i]);
        printf("], ");
        print_stats("frontend_ms", t_front, n);
        printf(", ");
        print_stats("model_ms", t_model, n);
        printf(", ");
        print_stats("hop_total_ms", t_hop, n);
        printf(", \"detections\": [");
        for (size_t i = 0; i < n_det; i++)
            printf("%s{\"time_s\": %.3f, \"label\": \"%s\", \"score\": %.4f}", i ? ", " : "", det_time[i],
                   LABELS[det_label[i]], det_score[i]);
        printf("]}\n");
    }
    free(t_front); free(t_model); free(t_hop); free(det_label); free(det_time); free(det_score);
    free(rec.times); free(rec.scores);
    OrtReleaseValue(api)(in_value);
    check(OrtAllocatorFree(api)(alloc, in_name), "AllocatorFree");
    check(OrtAllocatorFree(api)(alloc, out_name), "AllocatorFree");
    OrtReleaseMemoryInfo(api)(mem);
    close_session(&session);
    OrtReleaseSessionOptions(api)(so);
    OrtReleaseEnv(api)(env);
    ep_mfcc_plan_destroy(plan);
    return fflush(stdout) ? 1 : 0;
}
