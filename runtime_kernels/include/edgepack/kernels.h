/* edgepack kernels: plain C11 API for the ai.edgepack compressed-layer ops.
 *
 * Every kernel takes raw pointers + sizes, validates them before touching memory and returns
 * an ep_status. On failure ep_last_error() (thread-local) names what is wrong and what would
 * be valid. All matrices are row-major float32. Layer convention: Y[N, out] = X[N, in] * W^T + b.
 *
 * Variants: "ref" (portable C, always present), "avx2" (x86_64 with AVX2+FMA), "avx512" (x86_64 with
 * AVX-512F/DQ/VL; hashed stream and decode only, the rest is avx2), "neon"
 * (aarch64, and 32-bit ARMv7 built with -mfpu=neon). The best supported one is picked at first
 * use; EDGEPACK_KERNELS=ref (or any variant name) in the environment overrides it,
 * ep_set_variant() switches at run time.
 */
#ifndef EDGEPACK_KERNELS_H
#define EDGEPACK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EP_STATIC_BUILD)
/* the static library, linked into libedgepack_ort / the delegate: hidden there on every platform
 * (ELF's -Wl,--exclude-libs has no Mach-O counterpart in every linker) */
#define EP_API
#elif defined(_WIN32)
#define EP_API __declspec(dllexport)
#else
#define EP_API __attribute__((visibility("default")))
#endif

#define EP_VERSION_MAJOR 0
#define EP_VERSION_MINOR 1

typedef enum ep_status {
    EP_OK = 0,
    EP_ERR_NULL = 1,     /* a required pointer is NULL */
    EP_ERR_SIZE = 2,     /* a size is zero, negative, not a power of two, too large, ... */
    EP_ERR_PLAN = 3,     /* sizes passed to a plan-based call do not match the plan */
    EP_ERR_ARG = 4,      /* another argument is invalid (e.g. recon length, variant name) */
    EP_ERR_NOMEM = 5,    /* allocation failed */
    EP_ERR_OVERFLOW = 6, /* a size product overflows */
} ep_status;

EP_API const char *ep_status_str(ep_status s);
/* Message of the last failure on this thread ("" if none). */
EP_API const char *ep_last_error(void);
EP_API const char *ep_version(void);

/* ---- variants ---------------------------------------------------------------------------- */
EP_API int ep_variant_count(void);                 /* variants usable on this CPU */
EP_API const char *ep_variant_name(int index);     /* NULL when out of range */
EP_API const char *ep_variant(void);               /* the active variant */
EP_API ep_status ep_set_variant(const char *name); /* "ref", "avx2", "neon" or "auto" */

/* ---- threads ----------------------------------------------------------------------------- *
 * Threads the kernels called from the calling thread may use (thread-local; default 1, clamped
 * to [1, 64]). The drivers split GEMM weight panels, hashed rows, circulant output blocks and
 * LDR batch rows over a pool of workers created once; the output is bit-identical for any count.
 * Small calls stay on the calling thread, as do calls made while another thread uses the pool. */
EP_API void ep_set_num_threads(int n);
EP_API int ep_get_num_threads(void);

/* ---- decode limits (docs/ops.md "Limits") ------------------------------------------------ *
 * What one file may make the kernels allocate, checked before allocating: the virtual weights
 * of one node (HashedWeight: prod(shape); the matmul ops: in_features * out_features) and the
 * bytes of all decoded weights / plans of one session or interpreter (docs/ops.md gives each
 * op's count); one output tensor of a node may not exceed the byte limit either.
 * Defaults below; EDGEPACK_MAX_VIRTUAL_WEIGHTS / EDGEPACK_MAX_DECODED_BYTES override them.   */
#define EP_DEFAULT_MAX_VIRTUAL_WEIGHTS ((int64_t)1 << 28)
#define EP_DEFAULT_MAX_DECODED_BYTES ((int64_t)1 << 30)
#define EP_ENV_MAX_VIRTUAL_WEIGHTS "EDGEPACK_MAX_VIRTUAL_WEIGHTS"
#define EP_ENV_MAX_DECODED_BYTES "EDGEPACK_MAX_DECODED_BYTES"
typedef struct ep_limits {
    int64_t max_virtual_weights; /* per node */
    int64_t max_decoded_bytes;   /* per session / interpreter; also per output tensor */
} ep_limits;

/* A limit from text: decimal digits only (surrounding blanks allowed), 1 .. 2^63-1; otherwise
 * EP_ERR_ARG and ep_last_error() names `name` and what is valid. */
EP_API ep_status ep_parse_limit(const char *name, const char *text, int64_t *out);
/* The defaults, overridden by the two environment variables (a malformed one is an error). */
EP_API ep_status ep_limits_from_env(ep_limits *out);
/* EP_ERR_SIZE unless `virtual_weights` (of a node whose shape is described by `shape`, e.g.
 * "shape [2, 536870912]") is within lim->max_virtual_weights; the message says how to raise it. */
EP_API ep_status ep_limits_check_weights(const ep_limits *lim, int64_t virtual_weights, const char *shape);
/* EP_ERR_SIZE unless used + bytes <= lim->max_decoded_bytes ("what" describes the buffer). */
EP_API ep_status ep_limits_check_bytes(const ep_limits *lim, int64_t used, int64_t bytes, const char *what);

/* ---- XXH32 ------------------------------------------------------------------------------- */
EP_API uint32_t ep_xxh32(const void *data, size_t len, uint32_t seed);
/* XXH32 of the 8-byte key u32le(a) || u32le(b). */
EP_API uint32_t ep_xxh32_key(uint32_t a, uint32_t b, uint32_t seed);

/* ---- hashed weights (HashedNets K=1, Functional Hashing K>1) ----------------------------- *
 * key(i, j) = u32le(i) || u32le(j); h_k = XXH32(key, seed + k); bucket = h_k mod buckets;
 * sign = (signed && (h_k >> 31)) ? -1 : +1; z_k = sign_k * buckets[bucket_k].
 * Without recon (allowed for K=1 only): V_ij = z_0. With recon = [W1 (H x K), b1 (H), W2 (H), b2 (1)],
 * length H*(K+2)+1 (required for K>1, applied for K=1 too when given):
 * V_ij = b2 + sum_h W2[h] * relu(sum_k W1[h,k] z_k + b1[h]).                               */
#define EP_MAX_HASHES 64
typedef struct ep_hash_params {
    int64_t rows;        /* out_features, >= 1, < 2^32 */
    int64_t cols;        /* flattened in_features, >= 1, < 2^32 */
    int64_t num_buckets; /* >= 1, < 2^31 */
    int32_t num_hashes;  /* K, 1..EP_MAX_HASHES */
    uint32_t seed;
    int32_t is_signed;   /* 0 or 1 */
} ep_hash_params;

/* idx[rows, cols, K] bucket indices, sign[rows, cols, K] (+1/-1); sign may be NULL. */
EP_API ep_status ep_hash_indices(const ep_hash_params *p, int32_t *idx, int8_t *sign);
/* V[rows, cols] from buckets[num_buckets] (+ recon[recon_len] when K > 1, else NULL/0). */
EP_API ep_status ep_hashed_decode(const ep_hash_params *p, const float *buckets, const float *recon,
                                  int64_t recon_len, float *V);
/* Stream mode: Y[N, rows] = X[N, cols] V^T (+ bias[rows]) without materialising V:
 * O(num_buckets + 16 * cols) memory. bias may be NULL. */
EP_API ep_status ep_hashed_matmul_stream(const ep_hash_params *p, const float *buckets,
                                         const float *recon, int64_t recon_len, const float *X,
                                         int64_t N, const float *bias, float *Y);
/* Expand mode: the plan decodes V once; ep_hashed_matmul_expand then runs the dense GEMM. */
typedef struct ep_hashed_plan ep_hashed_plan;
EP_API ep_status ep_hashed_plan_create(const ep_hash_params *p, const float *buckets,
                                       const float *recon, int64_t recon_len,
                                       ep_hashed_plan **out);
EP_API void ep_hashed_plan_destroy(ep_hashed_plan *plan);
/* in_features / out_features must equal the plan's cols / rows. */
EP_API ep_status ep_hashed_matmul_expand(const ep_hashed_plan *plan, const float *X, int64_t N,
                                         int64_t in_features, const float *bias, float *Y,
                                         int64_t out_features);
/* V[rows, cols] (the plan holds it packed in GEMM panels) into V, rows*cols floats. */
EP_API ep_status ep_hashed_plan_unpack(const ep_hashed_plan *plan, float *V);

/* ---- dense ------------------------------------------------------------------------------- */
/* Y[N, rows] = X[N, cols] W[rows, cols]^T (+ bias[rows]); bias may be NULL. */
EP_API ep_status ep_dense_matmul(const float *X, int64_t N, int64_t cols, const float *W,
                                 int64_t rows, const float *bias, float *Y);

/* ---- real FFT ---------------------------------------------------------------------------- *
 * n a power of two >= 4. rfft: x[n] -> X[n/2+1] complex interleaved (re, im), numpy.fft.rfft
 * convention. irfft: X[n/2+1] -> x[n], scaled by 1/n (numpy.fft.irfft; the imaginary parts
 * of bins 0 and n/2 are ignored).                                                            */
typedef struct ep_rfft_plan ep_rfft_plan;
EP_API ep_status ep_rfft_plan_create(int64_t n, ep_rfft_plan **out);
EP_API void ep_rfft_plan_destroy(ep_rfft_plan *plan);
EP_API ep_status ep_rfft(const ep_rfft_plan *plan, int64_t n, const float *x, float *X);
EP_API ep_status ep_irfft(const ep_rfft_plan *plan, int64_t n, const float *X, float *x);

/* ---- block-circulant --------------------------------------------------------------------- *
 * blocks[p, q, b]: block (i, j) is the b x b circulant with first column c = blocks[i, j, :],
 * C[r, s] = c[(r - s) mod b]. W_full is (p*b) x (q*b); in_features <= q*b, out_features <= p*b.
 * X[N, in] is zero-padded to q*b; Y[N, out] = (X_pad W_full^T)[:, :out] + bias.              */
typedef struct ep_circulant_plan ep_circulant_plan;
EP_API ep_status ep_circulant_plan_create(int64_t p, int64_t q, int64_t b, const float *blocks,
                                          int64_t in_features, int64_t out_features,
                                          ep_circulant_plan **out);
EP_API void ep_circulant_plan_destroy(ep_circulant_plan *plan);
EP_API ep_status ep_circulant_matmul(const ep_circulant_plan *plan, const float *X, int64_t N,
                                     int64_t in_features, const float *bias, float *Y,
                                     int64_t out_features);

/* ---- low displacement rank --------------------------------------------------------------- *
 * G[r, n], H[r, n]; W = sum_i Z1(g_i) Z-1(h_i), Z_f(v)[a, c] = v[a-c] (a >= c) else
 * f * v[n+a-c]. n a power of two >= 4, in_features, out_features <= n.                       */
typedef struct ep_ldr_plan ep_ldr_plan;
EP_API ep_status ep_ldr_plan_create(int64_t r, int64_t n, const float *G, const float *H,
                                    int64_t in_features, int64_t out_features, ep_ldr_plan **out);
EP_API void ep_ldr_plan_destroy(ep_ldr_plan *plan);
EP_API ep_status ep_ldr_matmul(const ep_ldr_plan *plan, const float *X, int64_t N,
                               int64_t in_features, const float *bias, float *Y,
                               int64_t out_features);

/* ---- codebook weights (soft weight-sharing, Deep Compression; docs/ops.md) --------------- *
 * W[rows, cols] from a codebook of 1..256 floats and n indices of `bits` bits (1, 2, 4 or 8),
 * packed LSB first: entry k in byte k*bits/8 at bit (k*bits)%8; the unused high bits of the last
 * byte are 0 and every index is < codebook_len. Dense form (row_ptr and col_gaps NULL with length
 * 0): n = rows*cols, W.flat[k] = codebook[idx[k]]. Sparse form (CSR): row_ptr[rows+1] starts at 0,
 * never decreases, ends at n = col_gaps_len; within row r the column of its m-th entry is
 * col_gaps[row_ptr[r]] + ... + col_gaps[row_ptr[r]+m] - 1 (gaps >= 1, columns < cols); positions
 * not listed are 0. Every check runs before anything is written; the message names the input. */
#define EP_CODEBOOK_MAX 256
typedef struct ep_codebook {
    int64_t rows, cols; /* >= 1 each */
    int32_t bits;       /* 1, 2, 4 or 8 */
    const float *codebook;
    int64_t codebook_len;
    const uint8_t *indices;
    int64_t indices_len; /* bytes: ceil(n * bits / 8) */
    const int32_t *row_ptr;
    int64_t row_ptr_len; /* rows + 1; 0 with row_ptr NULL: dense form */
    const uint8_t *col_gaps;
    int64_t col_gaps_len; /* n; 0 with col_gaps NULL: dense form */
} ep_codebook;

/* EP_OK when w satisfies every rule above; else EP_ERR_NULL / EP_ERR_SIZE / EP_ERR_ARG and
 * ep_last_error() names the input and what would be valid. */
EP_API ep_status ep_codebook_check(const ep_codebook *w);
/* Only the O(1) rules: bits, the codebook's length, the form, every input's length (no contents;
 * codebook and indices may still be NULL, as at a TFLite prepare before the data is there). */
EP_API ep_status ep_codebook_check_sizes(const ep_codebook *w);
/* W[rows*cols] = the decoded weight (checked first; W untouched on error). */
EP_API ep_status ep_codebook_decode(const ep_codebook *w, float *W);

/* The sparse form's fused matmul: Y[N, rows] = X[N, cols] W^T (+ bias[rows]) without W. The plan
 * keeps the rows sorted by length in S = ceil(rows/16) slices of 16 (the order and its inverse,
 * each slice's row lengths and first entry) and per entry its codebook value and its column (c = 2
 * bytes when cols <= 65536, else 4; 16 more columns after the last entry): ep_codebook_plan_bytes(w)
 * = 8*rows + 64*S + 4*(S+1) + 4*n + c*(n+16) bytes. It needs rows and cols <= 2^31 - 1. */
typedef struct ep_codebook_plan ep_codebook_plan;
EP_API int64_t ep_codebook_plan_bytes(const ep_codebook *w);
EP_API ep_status ep_codebook_plan_create(const ep_codebook *w, ep_codebook_plan **out);
EP_API void ep_codebook_plan_destroy(ep_codebook_plan *plan);
/* in_features / out_features must equal the plan's cols / rows; bias may be NULL. */
EP_API ep_status ep_sparse_codebook_matmul(const ep_codebook_plan *plan, const float *X, int64_t N,
                                           int64_t in_features, const float *bias, float *Y,
                                           int64_t out_features);

/* ---- hyper-compressed weights (Hyper-Compression, Fan et al. 2024; docs/ops.md HyperWeight) --- *
 * W.flat[0 .. weights) from g = ceil(weights/group) indices of `bits` bits (a bit stream, LSB first:
 * index m is stream bits m*bits .. m*bits+bits-1, stream bit b is bit b%8 of byte b/8; the unused
 * high bits of the last byte 0), each < (rings+1)*(points+1): ring r = v/(points+1), point
 * q = v%(points+1) of the trajectory in the square of side side[0] around center[group], ring r >= 1
 * scaled by scales[r-1]. Decoded in float32 with each operation rounded, in the contract's order
 * (no fused multiply-add: hyper.c is built with -ffp-contract=off). Every check runs before
 * anything is written; the message names the input or attribute. */
#define EP_HYPER_MAX_POINTS 65536
#define EP_HYPER_MAX_GROUP 4
#define EP_HYPER_MAX_RINGS 15
#define EP_HYPER_MAX_BITS 24
typedef struct ep_hyper {
    int64_t weights;                     /* V = prod(shape), >= 1 */
    int32_t points, group, rings, bits;  /* n in [1, 65536], k in [1, 4], R in [0, 15], bits in [1, 24] */
    const uint8_t *indices;
    int64_t indices_len;                 /* bytes: ceil(g * bits / 8) */
    const float *center;
    int64_t center_len;                  /* k */
    const float *side;
    int64_t side_len;                    /* 1 */
    int32_t has_scales;                  /* 1 iff rings > 0 (0, or scales_len 0: absent) */
    const float *scales;
    int64_t scales_len;                  /* R */
} ep_hyper;

/* EP_OK when w satisfies every rule above (side[0] * (float)points finite too; has_scales with
 * scales_len 0 counts as absent); else EP_ERR_NULL / EP_ERR_SIZE / EP_ERR_ARG and ep_last_error()
 * names the input or attribute and what would be valid. */
EP_API ep_status ep_hyper_check(const ep_hyper *w);
/* Only the O(1) rules: the attributes and every input's length (no contents; the data pointers
 * may still be NULL, as at a TFLite prepare before the data is there). */
EP_API ep_status ep_hyper_check_sizes(const ep_hyper *w);
/* W[weights] = the decoded weight (checked first; W untouched on error). */
EP_API ep_status ep_hyper_decode(const ep_hyper *w, float *W);

#ifdef __cplusplus
}
#endif
#endif /* EDGEPACK_KERNELS_H */
