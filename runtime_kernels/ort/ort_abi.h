/* Our own minimal declaration of ONNX Runtime's C ABI: only what edgepack uses.
 *
 * ORT wheels and npm packages ship no headers, so these declarations were written from the facts
 * of the public onnxruntime_c_api.h (slot order, struct layouts, enum values); no code from it.
 * OrtApi is an append-only table of function pointers: we reach each function by its slot index
 * (stable across releases), through typed accessor macros. Slots verified against the public
 * header (ORT API 15+) and against the version-end offsets ORT asserts on (101, 118, ..., 161).
 */
#ifndef EDGEPACK_ORT_ABI_H
#define EDGEPACK_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_ORT_API_VERSION 16 /* the OrtApi and OrtCustomOp layouts declared below */

typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtTypeInfo OrtTypeInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtAllocator OrtAllocator; /* we only pass it back to ORT */
typedef struct OrtApi OrtApi;             /* opaque: a table of pointers, see ORT_SLOT */

typedef enum OrtErrorCode {
    ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2, ORT_NO_SUCHFILE = 3, ORT_NO_MODEL = 4,
    ORT_ENGINE_ERROR = 5, ORT_RUNTIME_EXCEPTION = 6, ORT_INVALID_PROTOBUF = 7,
    ORT_MODEL_LOADED = 8, ORT_NOT_IMPLEMENTED = 9, ORT_INVALID_GRAPH = 10, ORT_EP_FAIL = 11,
} OrtErrorCode;

typedef enum ONNXTensorElementDataType {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
} ONNXTensorElementDataType; /* other values exist; we only name the ones we use */

typedef enum OrtLoggingLevel {
    ORT_LOGGING_LEVEL_VERBOSE, ORT_LOGGING_LEVEL_INFO, ORT_LOGGING_LEVEL_WARNING,
    ORT_LOGGING_LEVEL_ERROR, ORT_LOGGING_LEVEL_FATAL,
} OrtLoggingLevel;

typedef enum OrtAllocatorType { OrtInvalidAllocator = -1, OrtDeviceAllocator = 0, OrtArenaAllocator = 1 } OrtAllocatorType;
typedef enum OrtMemType { OrtMemTypeCPUInput = -2, OrtMemTypeCPUOutput = -1, OrtMemTypeDefault = 0 } OrtMemType;

typedef enum OrtCustomOpInputOutputCharacteristic {
    INPUT_OUTPUT_REQUIRED = 0, INPUT_OUTPUT_OPTIONAL = 1, INPUT_OUTPUT_VARIADIC = 2,
} OrtCustomOpInputOutputCharacteristic;

typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

/* OrtCustomOp, layout of API version 16 (the first with the V2 create/compute callbacks). Never
 * set .version above EP_ORT_API_VERSION: ORT would read fields that are not declared here. */
typedef struct OrtCustomOp OrtCustomOp;
struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const OrtCustomOp *op);
    ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const OrtCustomOp *op);
    ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const OrtCustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *context);
    void (*KernelDestroy)(void *kernel);
    OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp *op, size_t index);
    OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp *op, size_t index);
    OrtMemType (*GetInputMemoryType)(const OrtCustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const OrtCustomOp *op);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp *op);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *context);
};
_Static_assert(offsetof(OrtCustomOp, CreateKernelV2) == 17 * sizeof(void *), "OrtCustomOp layout");
_Static_assert(sizeof(OrtCustomOp) == 19 * sizeof(void *), "OrtCustomOp layout (API 16)");

/* ---- OrtApi slots ------------------------------------------------------------------------- */
typedef void (*ort_fn)(void);
#define ORT_SLOT(api, idx, type) ((type)(((const ort_fn *)(const void *)(api))[idx]))

typedef OrtStatus *(*ort_CreateStatus_fn)(OrtErrorCode, const char *);
typedef OrtErrorCode (*ort_GetErrorCode_fn)(const OrtStatus *);
typedef const char *(*ort_GetErrorMessage_fn)(const OrtStatus *);
typedef OrtStatus *(*ort_CreateEnv_fn)(OrtLoggingLevel, const char *, OrtEnv **);
typedef OrtStatus *(*ort_CreateSession_fn)(const OrtEnv *, const char *, const OrtSessionOptions *, OrtSession **);
typedef OrtStatus *(*ort_Run_fn)(OrtSession *, const OrtRunOptions *, const char *const *, const OrtValue *const *,
                                 size_t, const char *const *, size_t, OrtValue **);
typedef OrtStatus *(*ort_CreateSessionOptions_fn)(OrtSessionOptions **);
typedef OrtStatus *(*ort_SetIntraOpNumThreads_fn)(OrtSessionOptions *, int);
typedef OrtStatus *(*ort_CreateCustomOpDomain_fn)(const char *, OrtCustomOpDomain **);
typedef OrtStatus *(*ort_CustomOpDomain_Add_fn)(OrtCustomOpDomain *, const OrtCustomOp *);
typedef OrtStatus *(*ort_AddCustomOpDomain_fn)(OrtSessionOptions *, OrtCustomOpDomain *);
typedef OrtStatus *(*ort_SessionGetCount_fn)(const OrtSession *, size_t *);
typedef OrtStatus *(*ort_SessionGetTypeInfo_fn)(const OrtSession *, size_t, OrtTypeInfo **);
typedef OrtStatus *(*ort_SessionGetName_fn)(const OrtSession *, size_t, OrtAllocator *, char **);
typedef OrtStatus *(*ort_CreateTensorWithDataAsOrtValue_fn)(const OrtMemoryInfo *, void *, size_t, const int64_t *,
                                                            size_t, ONNXTensorElementDataType, OrtValue **);
typedef OrtStatus *(*ort_GetTensorMutableData_fn)(OrtValue *, void **);
typedef OrtStatus *(*ort_CastTypeInfoToTensorInfo_fn)(const OrtTypeInfo *, const OrtTensorTypeAndShapeInfo **);
typedef OrtStatus *(*ort_GetTensorElementType_fn)(const OrtTensorTypeAndShapeInfo *, ONNXTensorElementDataType *);
typedef OrtStatus *(*ort_GetDimensionsCount_fn)(const OrtTensorTypeAndShapeInfo *, size_t *);
typedef OrtStatus *(*ort_GetDimensions_fn)(const OrtTensorTypeAndShapeInfo *, int64_t *, size_t);
typedef OrtStatus *(*ort_GetTensorShapeElementCount_fn)(const OrtTensorTypeAndShapeInfo *, size_t *);
typedef OrtStatus *(*ort_GetTensorTypeAndShape_fn)(const OrtValue *, OrtTensorTypeAndShapeInfo **);
typedef OrtStatus *(*ort_CreateCpuMemoryInfo_fn)(OrtAllocatorType, OrtMemType, OrtMemoryInfo **);
typedef OrtStatus *(*ort_AllocatorFree_fn)(OrtAllocator *, void *);
typedef OrtStatus *(*ort_GetAllocatorWithDefaultOptions_fn)(OrtAllocator **);
typedef OrtStatus *(*ort_KernelInfoGetAttribute_float_fn)(const OrtKernelInfo *, const char *, float *);
typedef OrtStatus *(*ort_KernelInfoGetAttribute_int64_fn)(const OrtKernelInfo *, const char *, int64_t *);
typedef OrtStatus *(*ort_KernelInfoGetAttribute_string_fn)(const OrtKernelInfo *, const char *, char *, size_t *);
typedef OrtStatus *(*ort_KernelContext_GetCount_fn)(const OrtKernelContext *, size_t *);
typedef OrtStatus *(*ort_KernelContext_GetInput_fn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*ort_KernelContext_GetOutput_fn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef void (*ort_Release_fn)(void *);
typedef OrtStatus *(*ort_KernelInfoGetAttributeArray_float_fn)(const OrtKernelInfo *, const char *, float *, size_t *);
typedef OrtStatus *(*ort_KernelInfoGetAttributeArray_int64_fn)(const OrtKernelInfo *, const char *, int64_t *, size_t *);
typedef OrtStatus *(*ort_RegisterCustomOpsLibrary_V2_fn)(OrtSessionOptions *, const char *);
typedef OrtStatus *(*ort_KernelInfo_GetInputCount_fn)(const OrtKernelInfo *, size_t *);
typedef OrtStatus *(*ort_KernelInfo_GetNodeName_fn)(const OrtKernelInfo *, char *, size_t *);
typedef OrtStatus *(*ort_KernelInfoGetConstantInput_tensor_fn)(const OrtKernelInfo *, size_t, int *, const OrtValue **);

#define OrtCreateStatus(a) ORT_SLOT(a, 0, ort_CreateStatus_fn)
#define OrtGetErrorCode(a) ORT_SLOT(a, 1, ort_GetErrorCode_fn)
#define OrtGetErrorMessage(a) ORT_SLOT(a, 2, ort_GetErrorMessage_fn)
#define OrtCreateEnv(a) ORT_SLOT(a, 3, ort_CreateEnv_fn)
#define OrtCreateSession(a) ORT_SLOT(a, 7, ort_CreateSession_fn)
#define OrtRun(a) ORT_SLOT(a, 9, ort_Run_fn)
#define OrtCreateSessionOptions(a) ORT_SLOT(a, 10, ort_CreateSessionOptions_fn)
#define OrtSetIntraOpNumThreads(a) ORT_SLOT(a, 24, ort_SetIntraOpNumThreads_fn)
#define OrtCreateCustomOpDomain(a) ORT_SLOT(a, 26, ort_CreateCustomOpDomain_fn)
#define OrtCustomOpDomain_Add(a) ORT_SLOT(a, 27, ort_CustomOpDomain_Add_fn)
#define OrtAddCustomOpDomain(a) ORT_SLOT(a, 28, ort_AddCustomOpDomain_fn)
#define OrtSessionGetInputCount(a) ORT_SLOT(a, 30, ort_SessionGetCount_fn)
#define OrtSessionGetOutputCount(a) ORT_SLOT(a, 31, ort_SessionGetCount_fn)
#define OrtSessionGetInputTypeInfo(a) ORT_SLOT(a, 33, ort_SessionGetTypeInfo_fn)
#define OrtSessionGetInputName(a) ORT_SLOT(a, 36, ort_SessionGetName_fn)
#define OrtSessionGetOutputName(a) ORT_SLOT(a, 37, ort_SessionGetName_fn)
#define OrtCreateTensorWithDataAsOrtValue(a) ORT_SLOT(a, 49, ort_CreateTensorWithDataAsOrtValue_fn)
#define OrtGetTensorMutableData(a) ORT_SLOT(a, 51, ort_GetTensorMutableData_fn)
#define OrtCastTypeInfoToTensorInfo(a) ORT_SLOT(a, 55, ort_CastTypeInfoToTensorInfo_fn)
#define OrtGetTensorElementType(a) ORT_SLOT(a, 60, ort_GetTensorElementType_fn)
#define OrtGetDimensionsCount(a) ORT_SLOT(a, 61, ort_GetDimensionsCount_fn)
#define OrtGetDimensions(a) ORT_SLOT(a, 62, ort_GetDimensions_fn)
#define OrtGetTensorShapeElementCount(a) ORT_SLOT(a, 64, ort_GetTensorShapeElementCount_fn)
#define OrtGetTensorTypeAndShape(a) ORT_SLOT(a, 65, ort_GetTensorTypeAndShape_fn)
#define OrtCreateCpuMemoryInfo(a) ORT_SLOT(a, 69, ort_CreateCpuMemoryInfo_fn)
#define OrtAllocatorFree(a) ORT_SLOT(a, 76, ort_AllocatorFree_fn)
#define OrtGetAllocatorWithDefaultOptions(a) ORT_SLOT(a, 78, ort_GetAllocatorWithDefaultOptions_fn)
#define OrtKernelInfoGetAttribute_float(a) ORT_SLOT(a, 85, ort_KernelInfoGetAttribute_float_fn)
#define OrtKernelInfoGetAttribute_int64(a) ORT_SLOT(a, 86, ort_KernelInfoGetAttribute_int64_fn)
#define OrtKernelInfoGetAttribute_string(a) ORT_SLOT(a, 87, ort_KernelInfoGetAttribute_string_fn)
#define OrtKernelContext_GetInputCount(a) ORT_SLOT(a, 88, ort_KernelContext_GetCount_fn)
#define OrtKernelContext_GetOutputCount(a) ORT_SLOT(a, 89, ort_KernelContext_GetCount_fn)
#define OrtKernelContext_GetInput(a) ORT_SLOT(a, 90, ort_KernelContext_GetInput_fn)
#define OrtKernelContext_GetOutput(a) ORT_SLOT(a, 91, ort_KernelContext_GetOutput_fn)
#define OrtReleaseEnv(a) ORT_SLOT(a, 92, ort_Release_fn)
#define OrtReleaseStatus(a) ORT_SLOT(a, 93, ort_Release_fn)
#define OrtReleaseMemoryInfo(a) ORT_SLOT(a, 94, ort_Release_fn)
#define OrtReleaseSession(a) ORT_SLOT(a, 95, ort_Release_fn)
#define OrtReleaseValue(a) ORT_SLOT(a, 96, ort_Release_fn)
#define OrtReleaseTypeInfo(a) ORT_SLOT(a, 98, ort_Release_fn)
#define OrtReleaseTensorTypeAndShapeInfo(a) ORT_SLOT(a, 99, ort_Release_fn)
#define OrtReleaseSessionOptions(a) ORT_SLOT(a, 100, ort_Release_fn)
#define OrtKernelInfoGetAttributeArray_float(a) ORT_SLOT(a, 162, ort_KernelInfoGetAttributeArray_float_fn)
#define OrtKernelInfoGetAttributeArray_int64(a) ORT_SLOT(a, 163, ort_KernelInfoGetAttributeArray_int64_fn)
#define OrtRegisterCustomOpsLibrary_V2(a) ORT_SLOT(a, 228, ort_RegisterCustomOpsLibrary_V2_fn)
#define OrtKernelInfo_GetInputCount(a) ORT_SLOT(a, 230, ort_KernelInfo_GetInputCount_fn)
#define OrtKernelInfo_GetNodeName(a) ORT_SLOT(a, 244, ort_KernelInfo_GetNodeName_fn)
#define OrtKernelInfoGetConstantInput_tensor(a) ORT_SLOT(a, 249, ort_KernelInfoGetConstantInput_tensor_fn)

#ifdef __cplusplus
}
#endif
#endif /* EDGEPACK_ORT_ABI_H */
