/* Registrar for tflite-runtime 2.14's InterpreterWithCustomOps(custom_op_registerers=...): adds the
 * ai.edgepack custom ops through the MutableOpResolver::AddCustom symbol a loaded library exports. */
#define _GNU_SOURCE /* dl_iterate_phdr, RTLD_DEFAULT */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#if defined(__linux__)
#include <link.h>
#elif defined(__APPLE__)
#include <mach-o/dyld.h>
#endif

#include "edgepack_tflite.h"

/* tflite::MutableOpResolver::AddCustom(const char*, const TfLiteRegistration*, int) */
#define ADD_CUSTOM_SYM "_ZN6tflite17MutableOpResolver9AddCustomEPKcPK18TfLiteRegistrationi"
typedef void (*add_custom_fn)(void *self, const char *name, const TfLiteRegistration *reg, int version);

static const char k_domain[] =
#define EP_OP_DOMAIN(domain, version) domain
#include "edgepack/ops.inc"
    ;
static const char *const k_ops[] = {
#define EP_OP(op, n_inputs, n_required, n_attributes) #op,
#include "edgepack/ops.inc"
};

static char g_reg_error[512];

#if defined(__linux__)
static int find_in_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    void **found = (void **)data;
    if (!info->dlpi_name || !info->dlpi_name[0]) return 0;
    void *h = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return 0;
    *found = dlsym(h, ADD_CUSTOM_SYM);
    dlclose(h);
    return *found != NULL;
}
#elif defined(__APPLE__)
/* Mach-O has no dl_iterate_phdr: ask each image dyld has loaded (TFLite loaded RTLD_LOCAL) */
static void *find_in_images(void) {
    for (uint32_t i = 0, n = _dyld_image_count(); i < n; i++) {
        const char *name = _dyld_get_image_name(i);
        void *h = name ? dlopen(name, RTLD_LAZY | RTLD_NOLOAD) : NULL;
        if (!h) continue;
        void *sym = dlsym(h, ADD_CUSTOM_SYM);
        dlclose(h);
        if (sym) return sym;
    }
    return NULL;
}
#endif

EP_TFLITE_EXPORT const char *edgepack_tflite_registrar_error(void) { return g_reg_error; }

EP_TFLITE_EXPORT int edgepack_register_tflite_ops(void *resolver) {
    g_reg_error[0] = 0;
    if (!resolver) {
        snprintf(g_reg_error, sizeof g_reg_error, "edgepack_register_tflite_ops: resolver is NULL");
        return 1;
    }
    void *sym = dlsym(RTLD_DEFAULT, ADD_CUSTOM_SYM);
#if defined(__linux__)
    if (!sym) dl_iterate_phdr(find_in_object, &sym);
#elif defined(__APPLE__)
    if (!sym) sym = find_in_images();
#endif
    if (!sym) {
        snprintf(g_reg_error, sizeof g_reg_error,
                 "edgepack_register_tflite_ops: no loaded library exports tflite::MutableOpResolver::AddCustom "
                 "(tflite-runtime exports it; ai-edge-litert hides it: use the delegate there)");
        return 1;
    }
    enum { N_OPS = sizeof k_ops / sizeof k_ops[0] };
    const TfLiteRegistration *regs[N_OPS];
    for (size_t k = 0; k < N_OPS; k++) {
        char name[128];
        snprintf(name, sizeof name, "%s.%s", k_domain, k_ops[k]);
        regs[k] = edgepack_tflite_registration(name);
        if (!regs[k]) {
            snprintf(g_reg_error, sizeof g_reg_error, "edgepack_register_tflite_ops: no registration for '%s'", name);
            return 1;
        }
    }
    add_custom_fn add;
    memcpy(&add, &sym, sizeof add);
    for (size_t k = 0; k < N_OPS; k++) add(resolver, regs[k]->custom_name, regs[k], 1);
    return 0;
}
