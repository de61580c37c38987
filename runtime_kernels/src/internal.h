/* Internal declarations shared by the core and the per-ISA variant files. */
#ifndef EDGEPACK_INTERNAL_H
#define EDGEPACK_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

#include "edgepack/kernels.h" /* ep_status (ep_fail) */

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
    int gemm_mr;        /* rows of X (broadcast) in the register tile */
    int gemm_nr;        /* rows of W in the register tile = the packed panel width (ep_gemm_pack) */
    int gemm_kr;        /* columns per step (1: one broadcast-FMA step per column) */
    int gemm_kc;        /* columns per cache block (0: the columns are not blocked) */
    int dot_mr, dot_nr; /* gemm_dot: rows of X and of W in its largest tile */
    int dot_kr, dot_kc; /* gemm_dot: columns per vector step, per cache block (0: none) */
    int pack_kr;        /* gemm_pack: columns per transpose step (1: one at a time); full panels only */
    int pack_min_n;     /* rows of X from which packing W per call pays (ep_dense_matmul, stream
                         * tiles; measured); below it gemm_dot runs on W as given (0: always) */
    int hash_row_lanes; /* columns of V decoded per step (K = 1 path) */
    int hash_dot_lanes; /* columns per main-loop step of hash_dot, K = 1 path (0: no hash_dot) */
    int fft_lanes;      /* complex values per vector in the cfft stages */
    int fft_min_m;      /* smallest m whose every cfft stage runs the vector path */
    int split_lanes;    /* bins (and as many mirrors) per step of rfft_post / irfft_pre */
    int cmac_lanes;     /* complex values per step of cmac */
    int cmac_rows_lanes; /* complex values per main step of cmac_rows (each step covers every row) */
    int cmac_rows_mr;    /* rows per register tile of cmac_rows (the rest in smaller tiles) */
    int spcb_lanes;      /* batch columns per main step of spcb_slice (then 1..4 vectors, the last masked) */
    int spcb_min_nb;     /* batch columns from which spcb_slice runs its vector path over the batch
                          * (below: the reference; the driver runs fewer rows of X one at a time) */
    int hyper_lanes;     /* groups (indices) unpacked and gathered per main step of hyper_gather */
} ep_tiles;

/* A variant: the micro-kernels that differ per ISA. The core validates and drives them. */
typedef struct ep_ops {
    const char *name;
    /* Y[n*ldy + r] = X[n,:] . W[r,:] (+ bias[r]) for n < N, r < rows, with W given packed by
     * ep_gemm_pack(tile.gemm_nr, ...): panels of nr rows, a broadcast-FMA mr x nr register tile. */
    void (*gemm)(int64_t N, int64_t rows, int64_t cols, const float *X, const float *Wp,
                 const float *bias, float *Y, int64_t ldy);
    /* the same on W[rows, cols] as given, by dot products: for a few rows of X, where packing W
     * per call would cost more than the packed kernel saves (N < tile.pack_min_n) */
    void (*gemm_dot)(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                     const float *bias, float *Y, int64_t ldy);
    /* ep_gemm_pack(tile.gemm_nr, rows, cols, W, Wp), bit for bit */
    void (*gemm_pack)(int64_t rows, int64_t cols, const float *W, float *Wp);
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
    /* acc[r*ldacc + k] = sum_{j < nj} a[j*lda + k] * B[(j*rows + r)*ldb + k], m complex values,
     * r < rows: a block of batch rows against nj weight spectra (the batch-blocked circulant's
     * output block; each spectrum read once per block of rows). */
    void (*cmac_rows)(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                      int64_t ldb, float *acc, int64_t ldacc);
    /* one slice of the sparse codebook plan (codebook.c): EP_SPCB_ROWS rows as jagged diagonals.
     * Row l has len[l] entries (len non-increasing); its entry j is e = d_j + l, where d_j = c_0 +
     * ... + c_{j-1} and c_i = #{l : len[l] > i}, with the value val[e] at the column col[e] (uint16_t,
     * int32_t when wide; col holds valid columns for EP_SPCB_ROWS entries past the slice's last too,
     * and may be read there, x at them too).
     * acc[l*ldacc + b] = sum_{j < len[l]} val[e] * xt[col[e]*ldx + b] for l < EP_SPCB_ROWS, b < nb
     * (xt: X transposed, [cols, ldx]; nb = ldx = 1: one row of X as given) */
    void (*spcb_slice)(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                       int64_t ldx, int64_t nb, float *acc, int64_t ldacc);
    /* spcb_slice for one row of X as given (nb = ldx = ldacc = 1) with x loaded by gather
     * instructions: the same sums, bit for bit; NULL where the ISA has none. Faster or slower than
     * spcb_slice by CPU, so the plan times both (codebook.c). */
    void (*spcb_gemv_gather)(const int32_t *len, const float *val, const void *col, int wide, const float *x,
                             float *acc);
    /* the HyperWeight gather: out[m*k + j] = table[v_m*k + j] for m < count, j < k (1..4), v_m the
     * bits-bit (1..24) index m of the LSB-first bit stream at `stream`, of which exactly len >=
     * ceil(count*bits/8) bytes may be read; every v_m was checked against the table */
    void (*hyper_gather)(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                         float *out);
    ep_tiles tile;
} ep_ops;

#define EP_SPCB_ROWS 16 /* rows per slice of the sparse codebook plan */
/* spcb_slice's scalar definition, also the SIMD variants' path for few batch columns */
void ep_spcb_slice_ref(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                       int64_t ldx, int64_t nb, float *acc, int64_t ldacc);

/* index m (bits <= 24) of an LSB-first bit stream of len bytes, reading no byte past len */
static inline uint32_t ep_hyper_index(const uint8_t *stream, int64_t len, int64_t m, int bits) {
    const int64_t bit = m * bits, byte = bit >> 3;
    uint32_t word = 0;
    for (int b = 0; b < 4 && byte + b < len; b++) word |= (uint32_t)stream[byte + b] << (8 * b);
    return (word >> (bit & 7)) & ((1u << bits) - 1u);
}
/* hyper_gather's scalar definition, also the SIMD variants' tail */
void ep_hyper_gather_ref(int64_t count, const uint8_t *stream, int64_t len, int bits, int k, const float *table,
                         float *out);

extern const ep_ops ep_ops_ref;

/* Packed GEMM weights (BLIS / XNNPACK style): W[rows, cols] as ceil(rows/nr) panels of nr rows,
 * each stored column by column (Wp[p*nr*cols + k*nr + j] = W[p*nr + j, k]), the last panel
 * zero-padded, so a micro-kernel reads nr weights of one column with aligned-stride loads. */
static inline int64_t ep_gemm_packed_floats(int nr, int64_t rows, int64_t cols) {
    return (rows + nr - 1) / nr * nr * cols;
}
void ep_gemm_pack(int nr, int64_t rows, int64_t cols, const float *W, float *Wp);
/* its inverse: W[rows, cols] from Wp */
void ep_gemm_unpack(int nr, int64_t rows, int64_t cols, const float *Wp, float *W);
#if (defined(__x86_64__) || defined(_M_X64)) && defined(EP_WITH_AVX2)
#define EP_HAVE_AVX2 1
extern const ep_ops ep_ops_avx2;
/* the AVX2 micro-kernels, reused by the avx512 table */
void ep_gemm_dot_avx2(int64_t N, int64_t rows, int64_t cols, const float *X, const float *W,
                      const float *bias, float *Y, int64_t ldy);
/* ep_gemm_pack for nr a multiple of 8, by 8 x 8 transposes */
void ep_gemm_pack_avx2(int nr, int64_t rows, int64_t cols, const float *W, float *Wp);
void ep_hash_row_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, float *out);
void ep_hash_dot_avx2(const ep_hcfg *c, uint32_t i, int64_t cols, const float *X, int N, float bias,
                      float *y, int64_t ldy);
void ep_cfft_avx2(int64_t m, const float *tw, const float *src, float *dst, float *tmp, int inv);
void ep_rfft_post_avx2(int64_t m, const float *rt, float *X);
void ep_irfft_pre_avx2(int64_t m, const float *rt, const float *X, float *Z);
void ep_cmac_avx2(int64_t m, const float *a, const float *b, float *acc);
void ep_cmac_rows_avx2(int64_t m, int64_t nj, int64_t rows, const float *a, int64_t lda, const float *B,
                       int64_t ldb, float *acc, int64_t ldacc);
#if defined(EP_WITH_AVX512)
/* AVX-512F/DQ/VL (+ AVX2/FMA): the avx2 table with its own GEMM tile, a 16-lane fused stream
 * kernel and K=1 row decoder; chosen only after cpuid + XGETBV say the CPU and OS support it */
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

/* the variant the kernels use now (ep_set_variant, EDGEPACK_KERNELS), for the other source files */
const ep_ops *ep_active_ops(void);

/* sets ep_last_error() to the formatted message and returns s (for the other source files: mfcc.c) */
ep_status ep_fail(ep_status s, const char *fmt, ...);

/* ---- threads (threadpool.c) ---- */
#define EP_MAX_THREADS 64
#define EP_PAR_MIN_WORK ((int64_t)1 << 17) /* multiply-adds below which a driver stays on one thread */
/* task i of a parallel loop, run by participant worker (0: the caller, < the threads asked for) */
typedef void (*ep_task_fn)(void *ctx, int64_t task, int worker);
/* fn(ctx, i, w) for every i < n_tasks, on up to `threads` threads (the caller included); runs on the
 * calling thread when threads <= 1 or the pool is busy. Returns the participants used. */
int ep_parallel_for(int threads, int64_t n_tasks, ep_task_fn fn, void *ctx);
/* the threads a driver uses: ep_get_num_threads(), at most n_tasks, 1 when work < the minimum */
int ep_threads_for(int64_t work, int64_t n_tasks);
/* tests: the minimum work to split (negative: the default EP_PAR_MIN_WORK) */
void ep_set_parallel_min_work(int64_t work);

#endif
