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

#define EP_HASH_DOT_MAXN 4 /* above it the X rows fall out of L1: the tile + gemm path is faster */

/* Everything a hashed row decoder needs. */
typedef struct ep_hcfg {
    uint32_t seed, nb;  /* nb = number of buckets */
    int k, h, sgn;      /* num_hashes, recon hidden size, signed */
    const float *buckets;
    const float *w1, *b1, *w2; /* recon parts (K > 1) */
    float b2;
} ep_hcfg;

/* A variant's declared tiles: how its micro-kernels block their loops (XNNPACK's discipline).
 * tests/test_microkernels.c derives its sizes from them (1, t-1, t, t+1, 2t, 2t+1, 3t-1), so
 * each number must be what the code does; 1 means one element per step (scalar). */
typedef struct ep_tiles {
    int gemm_mr;        /* rows of X in the largest register tile */
    int gemm_nr;        /* rows of W in the largest register tile */
    int gemm_kr;        /* columns per vector step; the rest is a masked or scalar tail */
    int gemm_kc;        /* columns per cache block (0: the columns are not blocked) */
    int hash_row_lanes; /* columns of V decoded per step (K = 1 path) */
    int hash_dot_lanes; /* columns per main-loop step of hash_dot, K = 1 path (0: no hash_dot) */
    int fft_lanes;      /* complex values per vector in the cfft stages */
    int fft_min_m;      /* smallest m whose every cfft stage runs the vector path */
    int split_lanes;    /* bins (and as many mirrors) per step of rfft_post / irfft_pre */
    int cmac_lanes;     /* complex values per step of cmac */
} ep_tiles;

/* A variant: the micro-kernels that differ per ISA. The core validates and drives them. */
typedef struct ep_ops {
    const char *name;
    /* Y[n*ldy + r] = X[n,:] . W[r,:] (+ bias[r]) for n < N, r < rows. */
    void (*gemm)(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                 const float *bias, float *Y, int64_t ldy);
    /* out[j] = V[i, j] for j < cols. */
    void (*hash_row)(const ep_hcfg *c, uint32_t i, int64_t cols, float *out);
    /* optional (NULL: the core decodes rows into a tile and calls gemm). Fused stream row:
     * y[n*ldy] = bias + X[n,:] . V[i,:] for n < N, 1 <= N <= EP_HASH_DOT_MAXN, V not stored. */
    void (*hash_dot)(const ep_hcfg *c, uint32_t i, int64_t cols, const float *X, int N, float bias,
                     float *y, int64_t ldy);
    /* complex FFT of m points (m power of two >= 2), unnormalised, dst = FFT(src) (src may equal
     * dst; src is not written otherwise); tw: ep_tw_floats(m) floats, the m twiddles
     * e^{-+2 pi i k/m} matching inv followed by the first-stage table (see ep_tw_floats);
     * tmp: 2m floats. */
    void (*cfft)(int64_t m, const float *tw, const float *src, float *dst, float *tmp, int inv);
    /* real-FFT split pass: X[0..m] (2m+2 floats) from Z = FFT_m(x[2k] + i x[2k+1]) held in
     * X[0..m); rt[k] = e^{-2 pi i k/(2m)}, k < m. */
    void (*rfft_post)(int64_t m, const float *rt, float *X);
    /* its inverse (unnormalised, x2): Z[0..m) from X[0..m]; X is read only. */
    void (*irfft_pre)(int64_t m, const float *rt, const float *X, float *Z);
    /* acc[k] += a[k] * b[k], m complex values. */
    void (*cmac)(int64_t m, const float *a, const float *b, float *acc);
    ep_tiles tile;
} ep_ops;

extern const ep_ops ep_ops_ref;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(EP_WITH_AVX2)
#define EP_HAVE_AVX2 1
extern const ep_ops ep_ops_avx2;
/* the AVX2 micro-kernels, reused by the avx512 table */
void ep_gemm_avx2(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                  const float *bias, float *Y, int64_t ldy);
void ep_hash_row_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, float *out);
void ep_hash_dot_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, const float *X, int N, float bias,
                      float *y, int64_t ldy);
void ep_cfft_avx2(int64_t m, const float *tw, const float *src, float *dst, float *tmp, int inv);
void ep_rfft_post_avx2(int64_t m, const float *rt, float *X);
void ep_irfft_pre_avx2(int64_t m, const float *rt, const float *X, float *Z);
void ep_cmac_avx2(int64_t m, const float *a, const float *b, float *acc);
#if defined(EP_WITH_AVX512)
/* AVX-512F/DQ/VL (+ AVX2/FMA): the avx2 table with a 16-lane fused stream kernel and K=1 row
 * decoder; chosen only after cpuid + XGETBV say the CPU and OS support it */
#define EP_HAVE_AVX512 1
extern const ep_ops ep_ops_avx512;
#endif
#endif
#if defined(__aarch64__) || (defined(__arm__) && defined(__ARM_NEON))
#define EP_HAVE_NEON 1
extern const ep_ops ep_ops_neon;
#endif

/* Twiddle table of an m-point complex FFT, in floats: 2m (w^k, k < m) and, when m >= 16, the
 * first radix-4 stage's per-p twiddles for SIMD: for each block of 4 p (p < m/4), 48 floats
 * = 6 x 8: w^p re dup, w^p im dup, w^2p re dup, w^2p im dup, w^3p re dup, w^3p im dup
 * ("re dup" = r(p0) r(p0) r(p1) r(p1) r(p2) r(p2) r(p3) r(p3)). */
#define EP_TW1_MIN 16
static inline int64_t ep_tw_floats(int64_t m) { return 2 * m + (m >= EP_TW1_MIN ? 3 * m : 0); }

/* the scalar FFT stage loop, reused by SIMD variants for the stages they do not vectorise */
void ep_cfft_radix4_stage_ref(int64_t L, int64_t s, const float *tw, const float *a, float *b, int inv);
void ep_cfft_radix2_stage_ref(int64_t s, const float *a, float *b);
/* scalar split passes for bins k0..m/2 and their mirrors (bin 0 too when k0 == 1), reused
 * for the SIMD variants' remainders */
void ep_rfft_post_ref(int64_t m, const float *rt, float *X, int64_t k0);
void ep_irfft_pre_ref(int64_t m, const float *rt, const float *X, float *Z, int64_t k0);

#endif
