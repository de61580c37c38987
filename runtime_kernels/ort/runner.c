/* edgepack_ort_runner: run an ONNX model through ONNX Runtime's C API with libedgepack_ort
 * registered, and print the outputs (or, with --bench, timings) as JSON. libonnxruntime is
 * dlopen'ed (no headers or import library needed), so the same binary works with any ORT >= 1.16
 * build for its architecture.
 *
 *   edgepack_ort_runner --ort libonnxruntime.so --lib libedgepack_ort.so --model m.onnx [OPTIONS]
 *   edgepack_ort_runner --bench --ort-lib libonnxruntime.so [--custom-ops libedgepack_ort.so] [OPTIONS] m.onnx
 *   OPTIONS: [--threads N] [--keep-fused]; with --bench also [--warmup N] [--runs N] [--min-seconds S]
 *
 * Decode at load (the default with --lib / --custom-ops, as onnx_session(decode_at_load=True) with
 * use_kernels): HashedWeight and expand-mode HashedMatMul nodes with constant weights are decoded
 * once, in C (decode_model.c, the kernels' decoder, within $EDGEPACK_MAX_VIRTUAL_WEIGHTS /
 * $EDGEPACK_MAX_DECODED_BYTES), and the session is built from the rewritten model, so ORT's own
 * dense kernels and fusions run; the decoded weights and the external data of the main graph's
 * initializers reach ORT as external initializers. --keep-fused (decode_at_load=False) runs the
 * file as it is, on the fused custom ops.
 *
 * (--ort/--ort-lib and --lib/--custom-ops are synonyms; the model may be positional or --model.)
 * --bench prints one JSON line in benchmarks/runner_script.py's format: status, runtime_version,
 * input_shape (the first input), init_ms (env, decode at load and session creation),
 * decode_at_load (false with --keep-fused or without --custom-ops), decoded_nodes, first_inference_ms,
 * latencies_ms (every timed run, CLOCK_MONOTONIC; runs go on until both --runs and --min-seconds
 * are reached) and peak_rss_mb (VmHWM minus VmRSS before session creation); on any failure it
 * prints {"status": "error", "error": "..."} and exits non-zero.
 *
 * Float32 inputs are filled deterministically: input k, flat element i gets
 *   ((i * 7919 + (k + 1) * 104729) mod 2001 - 1000) / 1000
 * (dynamic dims become 1), so another runtime can rebuild the same feed.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runner_common.h"
#include "ort_abi.h"

/* not declared in ort_abi.h: OrtApi slot 25, right after SetIntraOpNumThreads, same signature */
#define OrtSetInterOpNumThreads(a) ORT_SLOT(a, 25, ort_SetIntraOpNumThreads_fn)

static int bench;

static float fill_value(size_t k, size_t i) {
    unsigned long long v = ((unsigned long long)i * 7919ull + (unsigned long long)(k + 1) * 104729ull) % 2001ull;
    return (float)((double)((long long)v - 1000) / 1000.0);
}


static int parse_count(const char *flag, const char *v) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < 0 || x > INT_MAX) die(2, "%s wants a non-negative integer, got '%s'", flag, v);
    return (int)x;
}

typedef struct {
    OrtSession *sess;
    const char *const *in_names, *const *out_names;
    const OrtValue *const *inputs;
    OrtValue **outputs;
    size_t n_in, n_out;
} Feed;

/* one OrtRun; returns its wall time in ms; outputs are released unless keep */
static double run_once(const Feed *f, int keep) {
    for (size_t k = 0; k < f->n_out; k++) f->outputs[k] = NULL;
    double t = now_ms();
    check(OrtRun(api)(f->sess, NULL, f->in_names, f->inputs, f->n_in, f->out_names, f->n_out, f->outputs), "Run");
    t = now_ms() - t;
    if (!keep)
        for (size_t k = 0; k < f->n_out; k++) OrtReleaseValue(api)(f->outputs[k]);
    return t;
}

static void print_outputs(const char *version, int decode, int decoded_nodes, const Feed *f) {
    printf("{\"ort_version\": \"%s\", \"decode_at_load\": %s, \"decoded_nodes\": %d, \"outputs\": {", version,
           decode ? "true" : "false", decoded_nodes);
    for (size_t k = 0; k < f->n_out; k++) {
        OrtTensorTypeAndShapeInfo *tsi = NULL;
        size_t rank = 0, count = 0;
        int64_t dims[16];
        void *data = NULL;
        check(OrtGetTensorTypeAndShape(api)(f->outputs[k], &tsi), "GetTensorTypeAndShape");
        check(OrtGetDimensionsCount(api)(tsi, &rank), "GetDimensionsCount");
        if (rank > 16) die(1, "output %s: rank %zu > 16", f->out_names[k], rank);
        check(OrtGetDimensions(api)(tsi, dims, rank), "GetDimensions");
        check(OrtGetTensorShapeElementCount(api)(tsi, &count), "GetTensorShapeElementCount");
        OrtReleaseTensorTypeAndShapeInfo(api)(tsi);
        check(OrtGetTensorMutableData(api)(f->outputs[k], &data), "GetTensorMutableData");
        printf("%s\"%s\": {\"shape\": [", k ? ", " : "", f->out_names[k]);
        for (size_t d = 0; d < rank; d++) printf("%s%lld", d ? ", " : "", (long long)dims[d]);
        printf("], \"data\": [");
        for (size_t i = 0; i < count; i++) printf("%s%.9g", i ? ", " : "", ((const float *)data)[i]);
        printf("]}");
        OrtReleaseValue(api)(f->outputs[k]);
    }
    printf("}}\n");
}

int main(int argc, char **argv) {
    const char *ort = "libonnxruntime.so", *lib = NULL, *model = NULL;
    int threads = 1, warmup = 10, runs = 100;
    int keep_fused = 0;
    double min_seconds = 0.0;
    program = "edgepack_ort_runner";
    for (int i = 1; i < argc; i++) bench |= !strcmp(argv[i], "--bench");
    json_errors = bench; /* errors as JSON from here on */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--bench")) continue;
        if (!strcmp(a, "--keep-fused")) {
            keep_fused = 1;
            continue;
        }
        if (strncmp(a, "--", 2)) {
            if (model) die(2, "more than one model given (%s, %s)", model, a);
            model = a;
            continue;
        }
        if (i + 1 >= argc) die(2, "%s needs a value", a);
        v = argv[++i];
        if (!strcmp(a, "--ort") || !strcmp(a, "--ort-lib")) ort = v;
        else if (!strcmp(a, "--lib") || !strcmp(a, "--custom-ops")) lib = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--threads")) threads = parse_count(a, v);
        else if (!strcmp(a, "--warmup")) warmup = parse_count(a, v);
        else if (!strcmp(a, "--runs")) runs = parse_count(a, v);
        else if (!strcmp(a, "--min-seconds")) {
            char *end;
            min_seconds = strtod(v, &end);
            if (!*v || *end || !(min_seconds >= 0.0) || !isfinite(min_seconds))
                die(2, "--min-seconds wants a non-negative number, got '%s'", v);
        } else die(2, "unknown flag %s", a);
    }
    if (!model) {
        if (!bench)
            fprintf(stderr, "usage: %s --ort LIBONNXRUNTIME --lib LIBEDGEPACK_ORT --model M.onnx [OPTIONS]\n"
                            "       %s --bench --ort-lib LIBONNXRUNTIME [--custom-ops LIBEDGEPACK_ORT] [OPTIONS] M.onnx\n"
                            "OPTIONS: [--threads N] [--keep-fused]; with --bench also [--warmup N] [--runs N]"
                            " [--min-seconds S]\n", argv[0], argv[0]);
        die(2, "no model given");
    }

    const char *version = load_ort(ort);

    OrtEnv *env = NULL;
    OrtSessionOptions *so = NULL;
    OrtAllocator *alloc = NULL;
    OrtMemoryInfo *mem = NULL;
    RunnerSession session;
    long rss_before = rss_kb("VmRSS");
    double t_init = now_ms();
    check(OrtCreateEnv(api)(ORT_LOGGING_LEVEL_WARNING, "edgepack", &env), "CreateEnv");
    check(OrtCreateSessionOptions(api)(&so), "CreateSessionOptions");
    check(OrtSetIntraOpNumThreads(api)(so, threads), "SetIntraOpNumThreads");
    if (bench) check(OrtSetInterOpNumThreads(api)(so, 1), "SetInterOpNumThreads"); /* as runner_script.py */
    if (lib) check(OrtRegisterCustomOpsLibrary_V2(api)(so, lib), "RegisterCustomOpsLibrary_V2");
    check(OrtCreateCpuMemoryInfo(api)(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");
    const int decode = lib && !keep_fused; /* as onnx_session: decode at load goes with the kernels */
    open_session(&session, env, so, mem, model, decode, threads);
    OrtSession *sess = session.sess;
    double init_ms = now_ms() - t_init;

    check(OrtGetAllocatorWithDefaultOptions(api)(&alloc), "GetAllocatorWithDefaultOptions");

    size_t n_in = 0, n_out = 0, rank0 = 0;
    int64_t dims0[16];
    check(OrtSessionGetInputCount(api)(sess, &n_in), "SessionGetInputCount");
    check(OrtSessionGetOutputCount(api)(sess, &n_out), "SessionGetOutputCount");
    char **in_names = xcalloc(n_in, sizeof *in_names), **out_names = xcalloc(n_out, sizeof *out_names);
    OrtValue **inputs = xcalloc(n_in, sizeof *inputs), **outputs = xcalloc(n_out, sizeof *outputs);
    float **buffers = xcalloc(n_in, sizeof *buffers);

    for (size_t k = 0; k < n_in; k++) {
        OrtTypeInfo *ti = NULL;
        const OrtTensorTypeAndShapeInfo *tsi = NULL;
        ONNXTensorElementDataType type;
        size_t rank = 0;
        int64_t dims[16];
        check(OrtSessionGetInputName(api)(sess, k, alloc, &in_names[k]), "SessionGetInputName");
        check(OrtSessionGetInputTypeInfo(api)(sess, k, &ti), "SessionGetInputTypeInfo");
        check(OrtCastTypeInfoToTensorInfo(api)(ti, &tsi), "CastTypeInfoToTensorInfo");
        if (!tsi) die(1, "input %s is not a tensor", in_names[k]);
        check(OrtGetTensorElementType(api)(tsi, &type), "GetTensorElementType");
        check(OrtGetDimensionsCount(api)(tsi, &rank), "GetDimensionsCount");
        if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || rank > 16)
            die(1, "input %s: only float32 inputs of rank <= 16 are supported", in_names[k]);
        check(OrtGetDimensions(api)(tsi, dims, rank), "GetDimensions");
        OrtReleaseTypeInfo(api)(ti);
        size_t count = 1;
        for (size_t d = 0; d < rank; d++) {
            if (dims[d] < 0) dims[d] = 1;
            count *= (size_t)dims[d];
        }
        if (k == 0) { rank0 = rank; memcpy(dims0, dims, sizeof(int64_t) * rank); }
        buffers[k] = xcalloc(count, sizeof(float));
        for (size_t i = 0; i < count; i++) buffers[k][i] = fill_value(k, i);
        check(OrtCreateTensorWithDataAsOrtValue(api)(mem, buffers[k], sizeof(float) * count, dims, rank,
                                                     ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[k]),
              "CreateTensorWithDataAsOrtValue");
    }
    for (size_t k = 0; k < n_out; k++)
        check(OrtSessionGetOutputName(api)(sess, k, alloc, &out_names[k]), "SessionGetOutputName");
    Feed feed = {sess, (const char *const *)in_names, (const char *const *)out_names,
                 (const OrtValue *const *)inputs, outputs, n_in, n_out};

    if (!bench) {
        run_once(&feed, 1);
        print_outputs(version, decode, session.decoded.n_decoded, &feed);
    } else {
        double first_ms = run_once(&feed, 0);
        for (int i = 0; i < warmup; i++) run_once(&feed, 0);
        size_t n = 0, cap = runs > 0 ? (size_t)runs : 64;
        double *lat = xcalloc(cap, sizeof *lat), began = now_ms();
        while (n < (size_t)runs || now_ms() - began < min_seconds * 1e3) {
            if (n == cap) {
                double *grown = realloc(lat, sizeof *lat * (cap *= 2));
                if (!grown) die(1, "out of memory");
                lat = grown;
            }
            lat[n++] = run_once(&feed, 0);
        }
        long peak = rss_kb("VmHWM") - rss_before;
        char runtime_version[256];
        snprintf(runtime_version, sizeof runtime_version, "onnxruntime %s", version);
        printf("{\"status\": \"ok\", \"runtime_version\": ");
        json_string(stdout, runtime_version);
        printf(", \"input_shape\": [");
        for (size_t d = 0; d < rank0; d++) printf("%s%lld", d ? ", " : "", (long long)dims0[d]);
        printf("], \"init_ms\": %.6f, \"decode_at_load\": %s, \"decoded_nodes\": %d, \"first_inference_ms\": %.6f, "
               "\"latencies_ms\": [", init_ms, decode ? "true" : "false", session.decoded.n_decoded, first_ms);
        for (size_t i = 0; i < n; i++) printf("%s%.6f", i ? ", " : "", lat[i]);
        printf("], \"peak_rss_mb\": %.6f}\n", (double)(peak > 0 ? peak : 0) / 1024.0);
        free(lat);
    }

    for (size_t k = 0; k < n_in; k++) {
        OrtReleaseValue(api)(inputs[k]);
        free(buffers[k]);
        check(OrtAllocatorFree(api)(alloc, in_names[k]), "AllocatorFree");
    }
    for (size_t k = 0; k < n_out; k++) check(OrtAllocatorFree(api)(alloc, out_names[k]), "AllocatorFree");
    free(in_names); free(out_names); free(inputs); free(outputs); free(buffers);
    OrtReleaseMemoryInfo(api)(mem);
    close_session(&session);
    OrtReleaseSessionOptions(api)(so);
    OrtReleaseEnv(api)(env);
    return fflush(stdout) ? 1 : 0;
}
