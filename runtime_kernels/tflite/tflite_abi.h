/* Our own minimal declaration of the TensorFlow Lite C ABI (LP64), written from the public
 * facts of tensorflow/lite/core/c/common.h (TF 2.14) and checked against LiteRT's
 * tflite/core/c/common.h (ai-edge-litert 2.x): every struct and field used here has the same
 * layout in both. Only the members we touch are named; the rest are opaque pointers or padding.
 * The static asserts pin the sizes and offsets, so a layout mistake fails the build.
 * Not TFLite's header and not a copy of it.
 */
#ifndef EDGEPACK_TFLITE_ABI_H
#define EDGEPACK_TFLITE_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

enum { kTfLiteFloat32 = 1, kTfLiteInt32 = 2, kTfLiteUInt8 = 3 };   /* TfLiteType */
enum { /* TfLiteAllocationType */
    kTfLiteMemNone = 0, kTfLiteMmapRo = 1, kTfLiteArenaRw = 2, kTfLiteArenaRwPersistent = 3, kTfLiteDynamic = 4,
    kTfLitePersistentRo = 5, kTfLiteCustom = 6, kTfLiteVariantObject = 7,
};
enum { kTfLiteOptionalTensor = -1 };
enum { kTfLiteDelegateFlagsAllowDynamicTensors = 1 };
enum { kTfLiteBuiltinCustom = 32, kTfLiteBuiltinDelegate = 51 }; /* tflite::BuiltinOperator */

typedef struct TfLiteIntArray {
    int size;
    int data[];
} TfLiteIntArray;

typedef struct TfLiteTensor {
    int type;                 /* TfLiteType */
    void *data;               /* TfLitePtrUnion */
    TfLiteIntArray *dims;
    float q_scale;            /* TfLiteQuantizationParams */
    int32_t q_zero_point;
    int allocation_type;      /* TfLiteAllocationType */
    size_t bytes;
    const void *allocation;
    const char *name;
    struct TfLiteDelegate *delegate;
    int buffer_handle;
    _Bool data_is_stale;
    _Bool is_variable;
    int quantization_type;    /* TfLiteQuantization */
    void *quantization_params;
    void *sparsity;
    const TfLiteIntArray *dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
    TfLiteIntArray *inputs;
    TfLiteIntArray *outputs;
    TfLiteIntArray *intermediates;
    TfLiteIntArray *temporaries;
    void *user_data;
    void *builtin_data;
    const void *custom_initial_data;
    int custom_initial_data_size;
    struct TfLiteDelegate *delegate;
    _Bool might_have_side_effect;
} TfLiteNode;

struct TfLiteContext;

typedef struct TfLiteRegistration {
    void *(*init)(struct TfLiteContext *context, const char *buffer, size_t length);
    void (*free)(struct TfLiteContext *context, void *buffer);
    TfLiteStatus (*prepare)(struct TfLiteContext *context, TfLiteNode *node);
    TfLiteStatus (*invoke)(struct TfLiteContext *context, TfLiteNode *node);
    const char *(*profiling_string)(const struct TfLiteContext *context, const TfLiteNode *node);
    int32_t builtin_code;
    const char *custom_name;
    int version;
    void *registration_external; /* TfLiteOperator*: must stay NULL */
    void *async_kernel;          /* function pointer we never set */
    uint64_t inplace_operator;   /* kTfLiteInplaceOpNone = 0 */
} TfLiteRegistration;

typedef struct TfLiteDelegate TfLiteDelegate;

typedef struct TfLiteContext {
    size_t tensors_size;
    TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *context, TfLiteIntArray **execution_plan);
    TfLiteTensor *tensors;
    void *impl_;
    TfLiteStatus (*ResizeTensor)(struct TfLiteContext *context, TfLiteTensor *tensor, TfLiteIntArray *new_size);
    void (*ReportError)(struct TfLiteContext *context, const char *msg, ...);
    TfLiteStatus (*AddTensors)(struct TfLiteContext *context, int tensors_to_add, int *first_new_tensor_index);
    TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *context, int node_index, TfLiteNode **node,
                                           TfLiteRegistration **registration);
    TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *context,
                                                          TfLiteRegistration registration,
                                                          const TfLiteIntArray *nodes_to_replace,
                                                          TfLiteDelegate *delegate);
    int recommended_num_threads;
    /* further members (GetExternalContext ... GetTensor ...) are not used: GetTensor is NULL
     * in 2.14, tensors are indexed directly */
} TfLiteContext;

struct TfLiteDelegate {
    void *data_;
    TfLiteStatus (*Prepare)(TfLiteContext *context, TfLiteDelegate *delegate);
    void *CopyFromBufferHandle;
    void *CopyToBufferHandle;
    void *FreeBufferHandle;
    int64_t flags;
    void *opaque_delegate_builder;
};

typedef struct TfLiteDelegateParams {
    TfLiteDelegate *delegate;
    TfLiteIntArray *nodes_to_replace;
    TfLiteIntArray *input_tensors;
    TfLiteIntArray *output_tensors;
} TfLiteDelegateParams;

#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
_Static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor is 112 bytes");
_Static_assert(offsetof(TfLiteTensor, data) == 8 && offsetof(TfLiteTensor, dims) == 16, "TfLiteTensor data/dims");
_Static_assert(offsetof(TfLiteTensor, allocation_type) == 32 && offsetof(TfLiteTensor, bytes) == 40,
               "TfLiteTensor allocation_type/bytes");
_Static_assert(offsetof(TfLiteTensor, name) == 56 && offsetof(TfLiteTensor, quantization_type) == 80 &&
               offsetof(TfLiteTensor, dims_signature) == 104, "TfLiteTensor name/quantization");
_Static_assert(sizeof(TfLiteNode) == 80 && offsetof(TfLiteNode, user_data) == 32 &&
               offsetof(TfLiteNode, custom_initial_data) == 48 && offsetof(TfLiteNode, custom_initial_data_size) == 56 &&
               offsetof(TfLiteNode, delegate) == 64, "TfLiteNode layout");
_Static_assert(sizeof(TfLiteRegistration) == 88 && offsetof(TfLiteRegistration, builtin_code) == 40 &&
               offsetof(TfLiteRegistration, custom_name) == 48 && offsetof(TfLiteRegistration, version) == 56 &&
               offsetof(TfLiteRegistration, registration_external) == 64 &&
               offsetof(TfLiteRegistration, inplace_operator) == 80, "TfLiteRegistration layout");
_Static_assert(sizeof(TfLiteDelegate) == 56 && offsetof(TfLiteDelegate, flags) == 40, "TfLiteDelegate layout");
_Static_assert(offsetof(TfLiteContext, tensors) == 16 && offsetof(TfLiteContext, ResizeTensor) == 32 &&
               offsetof(TfLiteContext, ReportError) == 40 && offsetof(TfLiteContext, GetNodeAndRegistration) == 56 &&
               offsetof(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels) == 64 &&
               offsetof(TfLiteContext, recommended_num_threads) == 72, "TfLiteContext layout");
_Static_assert(sizeof(TfLiteDelegateParams) == 32, "TfLiteDelegateParams layout");
#endif

#endif /* EDGEPACK_TFLITE_ABI_H */
