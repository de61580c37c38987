/* Shared helpers of the libFuzzer harnesses: a reader that turns the fuzz input into sizes,
 * flags and floats (reading past the end yields zeros, so every input is usable), and the
 * decode limits every harness sets before the first run. */
#ifndef EDGEPACK_FUZZ_COMMON_H
#define EDGEPACK_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* setenv; include this header first */
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fz {
    const uint8_t *p;
    size_t n;
} fz;

static inline uint8_t fz_u8(fz *f) {
    if (!f->n) return 0;
    f->n--;
    return *f->p++;
}

/* Little-endian; one read per statement, so the byte order does not depend on the compiler. */
static inline uint16_t fz_u16(fz *f) {
    const uint16_t lo = fz_u8(f);
    return (uint16_t)(lo | (fz_u8(f) << 8));
}

static inline uint32_t fz_u32(fz *f) {
    const uint32_t lo = fz_u16(f);
    return lo | ((uint32_t)fz_u16(f) << 16);
}

static inline uint64_t fz_u64(fz *f) {
    const uint64_t lo = fz_u32(f);
    return lo | ((uint64_t)fz_u32(f) << 32);
}

/* Up to want bytes of the input (fewer when it runs out); *got says how many. */
static inline const uint8_t *fz_bytes(fz *f, size_t want, size_t *got) {
    const uint8_t *p = f->p;
    *got = want < f->n ? want : f->n;
    f->p += *got;
    f->n -= *got;
    return p;
}

/* A float in [-1, 1] (a multiple of 1/128): finite, so outputs can be compared. */
static inline float fz_unit(fz *f) { return (float)(int8_t)fz_u8(f) / 128.0f; }

/* count floats: in [-1, 1] from the input, or (raw) any 32-bit pattern, NaN and Inf included. */
static inline void fz_fill(fz *f, float *v, size_t count, int raw) {
    for (size_t i = 0; i < count; i++) {
        if (raw) {
            uint32_t u = fz_u32(f);
            memcpy(&v[i], &u, sizeof u);
        } else {
            v[i] = fz_unit(f);
        }
    }
}

/* Deterministic [-1, 1) floats from a seed, for bulk data the input does not spell out. */
static inline void fz_fill_seeded(float *v, size_t count, uint32_t seed) {
    for (size_t i = 0; i < count; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
}

/* An invariant the code under test broke: print it and abort so libFuzzer saves the input. */
#define FZ_ASSERT(cond, ...)                                                         \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz invariant failed at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, "\n");                                                   \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* Small decode limits, so a hostile size is refused (or stays cheap) instead of allocating
 * gigabytes; variables the libraries do not read are harmless. */
static inline void fz_set_limits(void) {
    setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "1048576", 0);
    setenv("EDGEPACK_MAX_DECODED_BYTES", "16777216", 0);
}

#endif /* EDGEPACK_FUZZ_COMMON_H */
