/* What the kernel harnesses share: the kernel variants this build runs (the reference first),
 * read once by LLVMFuzzerInitialize, and an allocator that aborts instead of returning NULL. */
#ifndef EDGEPACK_FUZZ_VARIANTS_H
#define EDGEPACK_FUZZ_VARIANTS_H

#include <stdlib.h>

#include "edgepack/kernels.h"

#define MAX_VARIANTS 8

static const char *g_variants[MAX_VARIANTS];
static int g_nvar;

static inline void fz_load_variants(void) {
    g_nvar = ep_variant_count();
    if (g_nvar > MAX_VARIANTS) g_nvar = MAX_VARIANTS;
    for (int i = 0; i < g_nvar; i++) g_variants[i] = ep_variant_name(i);
}

static inline void *fz_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

#endif /* EDGEPACK_FUZZ_VARIANTS_H */
