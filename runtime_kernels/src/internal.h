/* Internal declarations shared by the core and the per-ISA variant files. */
#ifndef EDGEPACK_INTERNAL_H
#define EDGEPACK_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

#define EP_P1 0x9E3779B1u
#define EP_P2 0x85EBCA77u
#define EP_P3 0xC2B2AE3Du
#define EP_P4 0x27D4EB2Fu
#define EP_P5 0x165667B1u

static inline uint32_t ep_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t ep_xxh_avalanche(uint32_t h) {
    h ^= h >> 15; h *= EP_P2;
    h ^= h >> 13; h *= EP_P3;
    h ^= h >> 16;
    return h;
}

/* XXH32 state after absorbing the first key word i (len 8, seed s): the per-row constant. */
static inline uint32_t ep_xxh_key_head(uint32_t i, uint32_t seed) {
    uint32_t h = seed + EP_P5 + 8u;
    return ep_rotl32(h + i * EP_P3, 17) * EP_P4;
}
static inline uint32_t ep_xxh_key_tail(uint32_t head, uint32_t j) {
    return ep_xxh_avalanche(ep_rotl32(head + j * EP_P3, 17) * EP_P4);
}

/* Everything a hashed row decoder needs. */
typedef struct ep_hcfg {
    uint32_t seed, nb;  /* nb = number of buckets */
    int k, h, sgn;      /* num_hashes, recon hidden size, signed */
    const float *buckets;
    const float *w1, *b1, *w2; /* recon parts (K > 1) */
    float b2;
} ep_hcfg;

/* A variant: the micro-kernels that differ per ISA. The core validates and drives them. */
typedef struct ep_ops {
    const char *name;
    /* Y[n*ldy + r] = X[n,:] . W[r,:] (+ bias[r]) for n < N, r < rows. */
    void (*gemm)(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                 const float *bias, float *Y, int64_t ldy);
    /* out[j] = V[i, j] for j < cols. */
    void (*hash_row)(const ep_hcfg *c, uint32_t i, int64_t cols, float *out);
    /* in-place complex FFT of m points (m power of two >= 2), unnormalised; tw: m twiddles
     * e^{-+2 pi i k/m} matching inv; tmp: 2m floats. */
    void (*cfft)(int64_t m, const float *tw, float *x, float *tmp, int inv);
    /* acc[k] += a[k] * b[k], m complex values. */
    void (*cmac)(int64_t m, const float *a, const float *b, float *acc);
} ep_ops;

extern const ep_ops ep_ops_ref;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(EP_WITH_AVX2)
#define EP_HAVE_AVX2 1
extern const ep_ops ep_ops_avx2;
#endif
#if defined(__aarch64__)
#define EP_HAVE_NEON 1
extern const ep_ops ep_ops_neon;
#endif

/* the scalar FFT stage loop, reused by SIMD variants for the stages they do not vectorise */
void ep_cfft_radix4_stage_ref(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv);
void ep_cfft_radix2_stage_ref(int64_t s, const float *a, float *b);

#endif
