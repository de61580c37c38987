/* edgepack_ort_runner: run an ONNX model through ONNX Runtime's C API with libedgepack_ort
 * registered, and print the outputs as JSON. libonnxruntime is dlopen'ed (no headers or import
 * library needed), so the same binary works with any ORT >= 1.16 build for its architecture.
 *
 *   edgepack_ort_runner --ort libonnxruntime.so --lib libedgepack_ort.so --model m.onnx [--threads N]
 *
 * Float32 inputs are filled deterministically: input k, flat element i gets
 *   ((i * 7919 + (k + 1) * 104729) mod 2001 - 1000) / 1000
 * (dynamic dims become 1), so another runtime can rebuild the same feed.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort_abi.h"

static const OrtApi *api;

static void check(OrtStatus *st, const char *what) {
    if (!st) return;
    fprintf(stderr, "edgepack_ort_runner: %s: %s\n", what, OrtGetErrorMessage(api)(st));
    OrtReleaseStatus(api)(st);
    exit(1);
}

static float fill_value(size_t k, size_t i) {
    unsigned long long v = ((unsigned long long)i * 7919ull + (unsigned long long)(k + 1) * 104729ull) % 2001ull;
    return (float)((double)((long long)v - 1000) / 1000.0);
}

int main(int argc, char **argv) {
    const char *ort = "libonnxruntime.so", *lib = NULL, *model = NULL;
    int threads = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ort")) ort = argv[i + 1];
        else if (!strcmp(argv[i], "--lib")) lib = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else { fprintf(stderr, "edgepack_ort_runner: unknown flag %s\n", argv[i]); return 2; }
    }
    if (!model) {
        fprintf(stderr, "usage: %s --ort LIBONNXRUNTIME --lib LIBEDGEPACK_ORT --model M.onnx [--threads N]\n", argv[0]);
        return 2;
    }
    void *h = dlopen(ort, RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "edgepack_ort_runner: dlopen %s: %s\n", ort, dlerror()); return 1; }
    const OrtApiBase *(*get_base)(void) = NULL;
    *(void **)&get_base = dlsym(h, "OrtGetApiBase");
    if (!get_base) { fprintf(stderr, "edgepack_ort_runner: OrtGetApiBase not found in %s\n", ort); return 1; }
    const OrtApiBase *base = get_base();
    api = base->GetApi(EP_ORT_API_VERSION);
    if (!api) { fprintf(stderr, "edgepack_ort_runner: ORT %s lacks C API %d\n", base->GetVersionString(), EP_ORT_API_VERSION); return 1; }

    OrtEnv *env = NULL;
    OrtSessionOptions *so = NULL;
    OrtSession *sess = NULL;
    check(OrtCreateEnv(api)(ORT_LOGGING_LEVEL_WARNING, "edgepack", &env), "CreateEnv");
    check(OrtCreateSessionOptions(api)(&so), "CreateSessionOptions");
    check(OrtSetIntraOpNumThreads(api)(so, threads), "SetIntraOpNumThreads");
    if (lib) check(OrtRegisterCustomOpsLibrary_V2(api)(so, lib), "RegisterCustomOpsLibrary_V2");
    check(OrtCreateSession(api)(env, model, so, &sess), "CreateSession");

    OrtAllocator *alloc = NULL;
    OrtMemoryInfo *mem = NULL;
    check(OrtGetAllocatorWithDefaultOptions(api)(&alloc), "GetAllocatorWithDefaultOptions");
    check(OrtCreateCpuMemoryInfo(api)(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");

    size_t n_in = 0, n_out = 0;
    check(OrtSessionGetInputCount(api)(sess, &n_in), "SessionGetInputCount");
    check(OrtSessionGetOutputCount(api)(sess, &n_out), "SessionGetOutputCount");
    char **in_names = calloc(n_in + 1, sizeof *in_names), **out_names = calloc(n_out + 1, sizeof *out_names);
    OrtValue **inputs = calloc(n_in + 1, sizeof *inputs), **outputs = calloc(n_out + 1, sizeof *outputs);
    float **buffers = calloc(n_in + 1, sizeof *buffers);
    if (!in_names || !out_names || !inputs || !outputs || !buffers) return 1;

    for (size_t k = 0; k < n_in; k++) {
        OrtTypeInfo *ti = NULL;
        const OrtTensorTypeAndShapeInfo *tsi = NULL;
        ONNXTensorElementDataType type;
        size_t rank = 0;
        int64_t dims[16];
        check(OrtSessionGetInputName(api)(sess, k, alloc, &in_names[k]), "SessionGetInputName");
        check(OrtSessionGetInputTypeInfo(api)(sess, k, &ti), "SessionGetInputTypeInfo");
        check(OrtCastTypeInfoToTensorInfo(api)(ti, &tsi), "CastTypeInfoToTensorInfo");
        check(OrtGetTensorElementType(api)(tsi, &type), "GetTensorElementType");
        check(OrtGetDimensionsCount(api)(tsi, &rank), "GetDimensionsCount");
        if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || rank > 16) {
            fprintf(stderr, "edgepack_ort_runner: input %s: only float32 inputs of rank <= 16 are supported\n", in_names[k]);
            return 1;
        }
        check(OrtGetDimensions(api)(tsi, dims, rank), "GetDimensions");
        OrtReleaseTypeInfo(api)(ti);
        size_t count = 1;
        for (size_t d = 0; d < rank; d++) {
            if (dims[d] < 0) dims[d] = 1;
            count *= (size_t)dims[d];
        }
        buffers[k] = malloc(sizeof(float) * (count ? count : 1));
        if (!buffers[k]) return 1;
        for (size_t i = 0; i < count; i++) buffers[k][i] = fill_value(k, i);
        check(OrtCreateTensorWithDataAsOrtValue(api)(mem, buffers[k], sizeof(float) * count, dims, rank,
                                                     ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[k]),
              "CreateTensorWithDataAsOrtValue");
    }
    for (size_t k = 0; k < n_out; k++)
        check(OrtSessionGetOutputName(api)(sess, k, alloc, &out_names[k]), "SessionGetOutputName");
    check(OrtRun(api)(sess, NULL, (const char *const *)in_names, (const OrtValue *const *)inputs, n_in,
                      (const char *const *)out_names, n_out, outputs), "Run");

    printf("{\"ort_version\": \"%s\", \"outputs\": {", base->GetVersionString());
    for (size_t k = 0; k < n_out; k++) {
        OrtTensorTypeAndShapeInfo *tsi = NULL;
        size_t rank = 0, count = 0;
        int64_t dims[16];
        void *data = NULL;
        check(OrtGetTensorTypeAndShape(api)(outputs[k], &tsi), "GetTensorTypeAndShape");
        check(OrtGetDimensionsCount(api)(tsi, &rank), "GetDimensionsCount");
        if (rank > 16) return 1;
        check(OrtGetDimensions(api)(tsi, dims, rank), "GetDimensions");
        check(OrtGetTensorShapeElementCount(api)(tsi, &count), "GetTensorShapeElementCount");
        OrtReleaseTensorTypeAndShapeInfo(api)(tsi);
        check(OrtGetTensorMutableData(api)(outputs[k], &data), "GetTensorMutableData");
        printf("%s\"%s\": {\"shape\": [", k ? ", " : "", out_names[k]);
        for (size_t d = 0; d < rank; d++) printf("%s%lld", d ? ", " : "", (long long)dims[d]);
        printf("], \"data\": [");
        for (size_t i = 0; i < count; i++) printf("%s%.9g", i ? ", " : "", ((const float *)data)[i]);
        printf("]}");
        OrtReleaseValue(api)(outputs[k]);
    }
    printf("}}\n");

    for (size_t k = 0; k < n_in; k++) {
        OrtReleaseValue(api)(inputs[k]);
        free(buffers[k]);
        check(OrtAllocatorFree(api)(alloc, in_names[k]), "AllocatorFree");
    }
    for (size_t k = 0; k < n_out; k++) check(OrtAllocatorFree(api)(alloc, out_names[k]), "AllocatorFree");
    free(in_names); free(out_names); free(inputs); free(outputs); free(buffers);
    OrtReleaseMemoryInfo(api)(mem);
    OrtReleaseSession(api)(sess);
    OrtReleaseSessionOptions(api)(so);
    OrtReleaseEnv(api)(env);
    return 0;
}
