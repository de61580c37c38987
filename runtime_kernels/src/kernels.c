/* Core: errors, variant dispatch, XXH32, validation and the plan-based drivers. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepack/kernels.h"
#include "edgepack/ops.h"
#include "internal.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#if defined(_MSC_VER)
#define EP_TLS __declspec(thread)
#else
#define EP_TLS _Thread_local
#endif

/* ---- errors ------------------------------------------------------------------------------ */
static EP_TLS char g_err[1024];

const char *ep_last_error(void) { return g_err; }

ep_status ep_fail(ep_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return s;
}
const char *ep_version(void) { return "0.1"; }

const char *ep_status_str(ep_status s) {
    switch (s) {
    case EP_OK: return "ok";
    case EP_ERR_NULL: return "null pointer";
    case EP_ERR_SIZE: return "invalid size";
    case EP_ERR_PLAN: return "size does not match plan";
    case EP_ERR_ARG: return "invalid argument";
    case EP_ERR_NOMEM: return "out of memory";
    case EP_ERR_OVERFLOW: return "size overflow";
    }
    return "unknown status";
}

#define CHECK_PTR(p, what) \
    do { if (!(p)) return ep_fail(EP_ERR_NULL, "%s: %s is NULL (a valid buffer is required)", __func__, what); } while (0)

/* a*b with overflow check against a byte limit (elements of elem bytes must fit in size_t) */
static int mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return 0;
    if (a != 0 && b > (INT64_MAX / 8) / a) return 0;
    *out = a * b;
    return (uint64_t)*out <= (uint64_t)(SIZE_MAX / 8);
}

static int is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/* start of part i of `units` split into `parts` near-equal ranges (part i: [at(i), at(i + 1))) */
static int64_t split_at(int64_t units, int64_t parts, int64_t i) { return units / parts * i + (units % parts) * i / parts; }

/* a*b*c for the drivers' work estimates, saturating at INT64_MAX (operands >= 0) */
static int64_t work3(int64_t a, int64_t b, int64_t c) {
    if (a <= 0 || b <= 0 || c <= 0) return 0;
    if (b > INT64_MAX / a) return INT64_MAX;
    a *= b;
    return c > INT64_MAX / a ? INT64_MAX : a * c;
}

/* ---- decode limits ----------------------------------------------------------------------- */
#define EP_RAISE_HINT(env, kw) "; if the model is trusted, raise it with the environment variable " env \
    "=N or " kw "=N (onnx_session / tflite_interpreter, delegate option " kw ")"

ep_status ep_parse_limit(const char *name, const char *text, int64_t *out) {
    CHECK_PTR(name, "name");
    CHECK_PTR(out, "out");
    const char *p = text ? text : "";
    while (*p == ' ' || *p == '\t') p++;
    int64_t v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (v > (INT64_MAX - (*p - '0')) / 10)
            return ep_fail(EP_ERR_ARG, "%s='%.40s' is too large: must be a decimal integer in [1, %lld]", name,
                        text, (long long)INT64_MAX);
        v = v * 10 + (*p - '0');
    }
    while (*p == ' ' || *p == '\t') p++;
    if (!digits || *p || v < 1)
        return ep_fail(EP_ERR_ARG, "%s='%.40s' is not a positive decimal integer (e.g. %s=%lld)", name,
                    text ? text : "", name, (long long)EP_LIMIT_DEFAULT_MAX_VIRTUAL_WEIGHTS);
    *out = v;
    return EP_OK;
}

ep_status ep_limits_from_env(ep_limits *out) {
    CHECK_PTR(out, "out");
    ep_limits lim = {EP_LIMIT_DEFAULT_MAX_VIRTUAL_WEIGHTS, EP_LIMIT_DEFAULT_MAX_DECODED_BYTES}; /* op_spec.py's */
    const char *v = getenv(EP_ENV_MAX_VIRTUAL_WEIGHTS), *b = getenv(EP_ENV_MAX_DECODED_BYTES);
    ep_status st;
    if (v && (st = ep_parse_limit(EP_ENV_MAX_VIRTUAL_WEIGHTS, v, &lim.max_virtual_weights))) return st;
    if (b && (st = ep_parse_limit(EP_ENV_MAX_DECODED_BYTES, b, &lim.max_decoded_bytes))) return st;
    *out = lim;
    return EP_OK;
}

ep_status ep_limits_check_weights(const ep_limits *lim, int64_t virtual_weights, const char *shape) {
    CHECK_PTR(lim, "limits");
    if (virtual_weights >= 0 && virtual_weights <= lim->max_virtual_weights) return EP_OK;
    return ep_fail(EP_ERR_SIZE, "%s would decode %lld virtual weights, above the limit of %lld per node"
                EP_RAISE_HINT(EP_ENV_MAX_VIRTUAL_WEIGHTS, "max_virtual_weights"), shape ? shape : "the node",
                (long long)virtual_weights, (long long)lim->max_virtual_weights);
}

ep_status ep_limits_check_bytes(const ep_limits *lim, int64_t used, int64_t bytes, const char *what) {
    CHECK_PTR(lim, "limits");
    if (used >= 0 && bytes >= 0 && used <= lim->max_decoded_bytes && bytes <= lim->max_decoded_bytes - used)
        return EP_OK;
    if (used > 0)
        return ep_fail(EP_ERR_SIZE, "%s needs %lld bytes; with the %lld bytes already decoded in this session / "
                    "interpreter that is above the limit of %lld decoded bytes"
                    EP_RAISE_HINT(EP_ENV_MAX_DECODED_BYTES, "max_decoded_bytes"), what ? what : "the node",
                    (long long)bytes, (long long)used, (long long)lim->max_decoded_bytes);
    return ep_fail(EP_ERR_SIZE, "%s needs %lld bytes, above the limit of %lld decoded bytes"
                EP_RAISE_HINT(EP_ENV_MAX_DECODED_BYTES, "max_decoded_bytes"), what ? what : "the node",
                (long long)bytes, (long long)lim->max_decoded_bytes);
}

/* ---- variants ---------------------------------------------------------------------------- */
#if defined(EP_HAVE_AVX2)
static int cpu_has_avx2(void) {
#if defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}
#endif

#if defined(EP_HAVE_AVX512) && defined(__GNUC__)
#include <cpuid.h>
/* AVX-512F/DQ/VL in cpuid leaf 7 and the OS saving opmask + all ZMM state (XCR0 bits 1, 2, 5,
 * 6, 7), checked with XGETBV after CPUID.1 says OSXSAVE; AVX2 + FMA are checked separately.
 * (macOS may enable AVX-512 state lazily; XCR0 then says no and avx2 is used.) */
static int cpu_has_avx512(void) {
    unsigned a, b, c, d, lo, hi;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid(1, a, b, c, d);
    if (!(c & bit_OSXSAVE)) return 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 0xE6u) != 0xE6u) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned need = bit_AVX512F | bit_AVX512DQ | bit_AVX512VL;
    return (b & need) == need;
}
#elif defined(EP_HAVE_AVX512)
static int cpu_has_avx512(void) { return 0; }
#endif

static const ep_ops *g_avail[8];
static int g_navail = -1;
static const ep_ops *g_ops;

static void init_variants(void) {
    if (g_navail >= 0) return;
    int n = 0;
    g_avail[n++] = &ep_ops_ref;
#if defined(EP_HAVE_AVX2)
    if (cpu_has_avx2()) g_avail[n++] = &ep_ops_avx2;
#if defined(EP_HAVE_AVX512)
    if (cpu_has_avx2() && cpu_has_avx512()) g_avail[n++] = &ep_ops_avx512; /* last: the default */
#endif
#endif
#if defined(EP_HAVE_NEON)
    g_avail[n++] = &ep_ops_neon;
#endif
    const ep_ops *best = g_avail[n - 1];
    const char *env = getenv("EDGEPACK_KERNELS");
    if (env && *env && strcmp(env, "auto") != 0) {
        for (int i = 0; i < n; i++)
            if (strcmp(env, g_avail[i]->name) == 0) best = g_avail[i];
        if (strcmp(env, best->name) != 0) {
            fprintf(stderr, "edgepack: EDGEPACK_KERNELS=%s is not available here; using ref\n", env);
            best = &ep_ops_ref;
        }
    }
    g_ops = best;
    g_navail = n;
}

static const ep_ops *ops(void) {
    if (!g_ops) init_variants();
    return g_ops;
}

const ep_ops *ep_active_ops(void) { return ops(); }

int ep_variant_count(void) { init_variants(); return g_navail; }
const char *ep_variant_name(int i) {
    init_variants();
    return (i >= 0 && i < g_navail) ? g_avail[i]->name : NULL;
}
const char *ep_variant(void) { return ops()->name; }

ep_status ep_set_variant(const char *name) {
    init_variants();
    CHECK_PTR(name, "name");
    if (strcmp(name, "auto") == 0) { g_ops = g_avail[g_navail - 1]; return EP_OK; }
    for (int i = 0; i < g_navail; i++)
        if (strcmp(name, g_avail[i]->name) == 0) { g_ops = g_avail[i]; return EP_OK; }
    char list[128] = "auto";
    for (int i = 0; i < g_navail; i++) {
        strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, g_avail[i]->name, sizeof list - strlen(list) - 1);
    }
    return ep_fail(EP_ERR_ARG, "ep_set_variant: unknown or unsupported variant '%s' (available: %s)", name, list);
}

/* ---- XXH32: hand-written so the library has no external C dependency (NDK/Xcode/cross) ---- */
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint32_t xxh_round(uint32_t acc, uint32_t in) { return ep_rotl32(acc + in * EP_P2, 13) * EP_P1; }

uint32_t ep_xxh32(const void *data, size_t len, uint32_t seed) {
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    uint32_t h;
    if (!p) { p = end = (const uint8_t *)""; len = 0; }
    if (len >= 16) {
        uint32_t v1 = seed + EP_P1 + EP_P2, v2 = seed + EP_P2, v3 = seed, v4 = seed - EP_P1;
        for (; end - p >= 16; p += 16) {
            v1 = xxh_round(v1, rd32(p)); v2 = xxh_round(v2, rd32(p + 4));
            v3 = xxh_round(v3, rd32(p + 8)); v4 = xxh_round(v4, rd32(p + 12));
        }
        h = ep_rotl32(v1, 1) + ep_rotl32(v2, 7) + ep_rotl32(v3, 12) + ep_rotl32(v4, 18);
    } else {
        h = seed + EP_P5;
    }
    h += (uint32_t)len;
    for (; end - p >= 4; p += 4) h = ep_rotl32(h + rd32(p) * EP_P3, 17) * EP_P4;
    for (; p < end; p++) h = ep_rotl32(h + (*p) * EP_P5, 11) * EP_P1;
    return ep_xxh_avalanche(h);
}

uint32_t ep_xxh32_key(uint32_t a, uint32_t b, uint32_t seed) {
    return ep_xxh_key_tail(ep_xxh_key_head(a, seed), b);
}

/* ---- hashed ------------------------------------------------------------------------------ */
/* The K = 1 identity MLP [W1 = (1, -1), b1 = 0, W2 = (1, -1), b2 = 0] the exporter always passes
 * (docs/ops.md): a fallback function body cannot branch on whether an optional input is present. */
static int is_identity_recon(const float *r, int64_t len) {
    static const float identity[7] = {1.0f, -1.0f, 0.0f, 0.0f, 1.0f, -1.0f, 0.0f};
    return len == 7 && memcmp(r, identity, sizeof identity) == 0;
}

static ep_status check_hash(const char *fn, const ep_hash_params *p, const float *buckets,
                            const float *recon, int64_t recon_len, ep_hcfg *c, int need_data) {
    int64_t tmp;
    if (!p) return ep_fail(EP_ERR_NULL, "%s: params is NULL", fn);
    if (p->rows <= 0 || p->cols <= 0 || p->rows > UINT32_MAX || p->cols > UINT32_MAX)
        return ep_fail(EP_ERR_SIZE, "%s: rows=%lld, cols=%lld; both must be in [1, 2^32)", fn,
                    (long long)p->rows, (long long)p->cols);
    if (!mul_ok(p->rows, p->cols, &tmp) || !mul_ok(tmp, p->num_hashes > 0 ? p->num_hashes : 1, &tmp))
        return ep_fail(EP_ERR_OVERFLOW, "%s: rows*cols*num_hashes = %lld*%lld*%d overflows", fn,
                    (long long)p->rows, (long long)p->cols, p->num_hashes);
    if (p->num_buckets <= 0 || p->num_buckets > EP_LIMIT_MAX_BUCKETS)
        return ep_fail(EP_ERR_SIZE, "%s: num_buckets=%lld; must be in [1, 2^31)", fn, (long long)p->num_buckets);
    if (p->num_hashes < 1 || p->num_hashes > EP_MAX_HASHES)
        return ep_fail(EP_ERR_SIZE, "%s: num_hashes=%d; must be in [1, %d]", fn, p->num_hashes, EP_MAX_HASHES);
    if (p->is_signed != 0 && p->is_signed != 1)
        return ep_fail(EP_ERR_ARG, "%s: is_signed=%d; must be 0 or 1", fn, p->is_signed);
    memset(c, 0, sizeof *c);
    c->seed = p->seed; c->nb = (uint32_t)p->num_buckets; c->k = p->num_hashes; c->sgn = p->is_signed;
    c->buckets = buckets;
    if (!buckets && need_data)
        return ep_fail(EP_ERR_NULL, "%s: buckets is NULL (need %lld floats)", fn, (long long)p->num_buckets);
    if (c->k == 1 && recon && is_identity_recon(recon, recon_len))
        recon = NULL; /* relu(z) - relu(-z) == z exactly: the exporter's K = 1 stand-in, skip it */
    if ((c->k > 1 || recon) && need_data) { /* K = 1 applies the MLP only when one is given */
        const int64_t per = c->k + 2;
        if (!recon) return ep_fail(EP_ERR_NULL, "%s: recon is NULL but num_hashes=%d > 1 needs the reconstruction MLP "
                                "[W1 (H x K), b1 (H), W2 (H), b2] of length H*(K+2)+1", fn, c->k);
        if (recon_len < per + 1 || (recon_len - 1) % per != 0 || (recon_len - 1) / per > EP_LIMIT_MAX_RECON_HIDDEN)
            return ep_fail(EP_ERR_ARG, "%s: recon_len=%lld is not H*(K+2)+1 for an integer H >= 1 with K=%d "
                        "(valid: %lld, %lld, ...)", fn, (long long)recon_len, c->k,
                        (long long)(per + 1), (long long)(2 * per + 1));
        c->h = (int)((recon_len - 1) / per);
        c->w1 = recon; c->b1 = recon + (int64_t)c->h * c->k; c->w2 = c->b1 + c->h; c->b2 = c->w2[c->h];
    }
    return EP_OK;
}

ep_status ep_hash_indices(const ep_hash_params *p, int32_t *idx, int8_t *sign) {
    ep_hcfg c;
    ep_status st = check_hash("ep_hash_indices", p, NULL, NULL, 0, &c, 0);
    if (st) return st;
    CHECK_PTR(idx, "idx");
    int64_t t = 0;
    for (int64_t i = 0; i < p->rows; i++) {
        uint32_t head[EP_MAX_HASHES];
        for (int k = 0; k < c.k; k++) head[k] = ep_xxh_key_head((uint32_t)i, c.seed + (uint32_t)k);
        for (int64_t j = 0; j < p->cols; j++)
            for (int k = 0; k < c.k; k++, t++) {
                uint32_t h = ep_xxh_key_tail(head[k], (uint32_t)j);
                idx[t] = (int32_t)(h % c.nb);
                if (sign) sign[t] = (c.sgn && (h >> 31)) ? -1 : 1;
            }
    }
    return EP_OK;
}

/* ep_hashed_decode's rows, in `parts` ranges */
typedef struct { const ep_ops *o; const ep_hcfg *c; int64_t cols; float *V; int64_t rows; int parts; } hash_rows_job;
static void hash_rows_task(void *ctx, int64_t t, int w) {
    const hash_rows_job *j = (const hash_rows_job *)ctx;
    (void)w;
    for (int64_t i = split_at(j->rows, j->parts, t); i < split_at(j->rows, j->parts, t + 1); i++)
        j->o->hash_row(j->c, (uint32_t)i, j->cols, j->V + i * j->cols);
}

ep_status ep_hashed_decode(const ep_hash_params *p, const float *buckets, const float *recon,
                           int64_t recon_len, float *V) {
    ep_hcfg c;
    ep_status st = check_hash("ep_hashed_decode", p, buckets, recon, recon_len, &c, 1);
    if (st) return st;
    CHECK_PTR(V, "V");
    hash_rows_job j = {ops(), &c, p->cols, V, p->rows, ep_threads_for(work3(p->rows, p->cols, c.k), p->rows)};
    ep_parallel_for(j.parts, j.parts, hash_rows_task, &j);
    return EP_OK;
}

static ep_status check_mm(const char *fn, const float *X, int64_t N, const float *Y) {
    CHECK_PTR(X, "X");
    CHECK_PTR(Y, "Y");
    if (N <= 0) return ep_fail(EP_ERR_SIZE, "%s: batch N=%lld; must be >= 1", fn, (long long)N);
    return EP_OK;
}

/* n floats on a 64-byte boundary (a cache line: the GEMM's panel loads never split); *raw is
 * the block to free. NULL when out of memory or n is above the byte limit mul_ok allows. */
static float *alloc_panels(int64_t n, void **raw) {
    *raw = n >= 0 && (uint64_t)n <= (uint64_t)(SIZE_MAX / 8) ? malloc(sizeof(float) * (size_t)n + 64) : NULL;
    return *raw ? (float *)(((uintptr_t)*raw + 63) & ~(uintptr_t)63) : NULL;
}

/* ep_gemm_packed_floats(nr, rows, cols) without overflow: -1 when it would pass mul_ok's limit */
static int64_t packed_floats(int64_t nr, int64_t rows, int64_t cols) {
    int64_t n;
    return rows <= INT64_MAX - nr && mul_ok((rows + nr - 1) / nr * nr, cols, &n) ? n : -1;
}

#define EP_STREAM_TILE 16
/* ep_hashed_matmul_stream split by rows of V: `parts` ranges of rows (fused path) or of T-row
 * tiles, each part with its own tile + packed buffer of per floats in mem */
typedef struct {
    const ep_ops *o; const ep_hcfg *c; const ep_hash_params *p; const float *X; int64_t N; const float *bias; float *Y;
    int parts; float *mem; int64_t per, T;
} stream_job;

static void stream_dot_task(void *ctx, int64_t t, int w) {
    const stream_job *j = (const stream_job *)ctx;
    const int64_t rows = j->p->rows;
    (void)w;
    for (int64_t r = split_at(rows, j->parts, t); r < split_at(rows, j->parts, t + 1); r++)
        j->o->hash_dot(j->c, (uint32_t)r, j->p->cols, j->X, (int)j->N, j->bias ? j->bias[r] : 0.0f, j->Y + r, rows);
}

static void stream_tile_task(void *ctx, int64_t t, int w) {
    const stream_job *j = (const stream_job *)ctx;
    const ep_ops *o = j->o;
    const int64_t rows = j->p->rows, cols = j->p->cols, T = j->T, tiles = (rows + T - 1) / T;
    float *packed = j->mem + j->per * w, *tile = packed + T * cols;
    for (int64_t r0 = split_at(tiles, j->parts, t) * T; r0 < split_at(tiles, j->parts, t + 1) * T && r0 < rows; r0 += T) {
        int64_t nt = rows - r0 < T ? rows - r0 : T;
        for (int64_t r = 0; r < nt; r++) o->hash_row(j->c, (uint32_t)(r0 + r), cols, tile + r * cols);
        const float *b = j->bias ? j->bias + r0 : NULL;
        if (j->N < o->tile.pack_min_n) { /* few rows of X: packing the tile would cost more than it saves */
            o->gemm_dot(j->N, nt, cols, j->X, tile, b, j->Y + r0, rows);
            continue;
        }
        o->gemm_pack(nt, cols, tile, packed);
        o->gemm(j->N, nt, cols, j->X, packed, b, j->Y + r0, rows);
    }
}

ep_status ep_hashed_matmul_stream(const ep_hash_params *p, const float *buckets, const float *recon,
                                  int64_t recon_len, const float *X, int64_t N, const float *bias, float *Y) {
    ep_hcfg c;
    int64_t tmp;
    ep_status st = check_hash("ep_hashed_matmul_stream", p, buckets, recon, recon_len, &c, 1);
    if (st || (st = check_mm("ep_hashed_matmul_stream", X, N, Y))) return st;
    if (!mul_ok(N, p->cols, &tmp) || !mul_ok(N, p->rows, &tmp))
        return ep_fail(EP_ERR_OVERFLOW, "ep_hashed_matmul_stream: N*cols or N*rows overflows (N=%lld)", (long long)N);
    const ep_ops *o = ops();
    const int64_t work = work3(N + c.k, p->rows, p->cols);
    stream_job j = {o, &c, p, X, N, bias, Y, 0, NULL, 0, 0};
    if (o->hash_dot && N <= EP_HASH_DOT_MAXN) { /* fused: hash, gather and dot in registers, O(1) memory */
        j.parts = ep_threads_for(work, p->rows);
        ep_parallel_for(j.parts, j.parts, stream_dot_task, &j);
        return EP_OK;
    }
    const int64_t nr = o->tile.gemm_nr;
    j.T = (EP_STREAM_TILE + nr - 1) / nr * nr; /* whole panels */
    j.parts = ep_threads_for(work, (p->rows + j.T - 1) / j.T);
    const int64_t pf = packed_floats(nr, j.T, p->cols);
    j.per = pf < 0 || pf > INT64_MAX / 4 ? -1 : (2 * pf + 15) & ~(int64_t)15; /* each part's on a 64-byte line */
    void *raw;
    j.mem = j.per < 0 || j.per > INT64_MAX / j.parts ? NULL : alloc_panels(j.per * j.parts, &raw);
    if (!j.mem) return ep_fail(EP_ERR_NOMEM, "ep_hashed_matmul_stream: cannot allocate %d tiles of %lld x %lld", j.parts, (long long)j.T, (long long)p->cols);
    ep_parallel_for(j.parts, j.parts, stream_tile_task, &j);
    free(raw);
    return EP_OK;
}

/* Expand mode: V decoded once and kept packed for the variant current at creation (o), which
 * then runs every ep_hashed_matmul_expand; V itself is unpacked only if asked for. */
struct ep_hashed_plan { int64_t rows, cols; const ep_ops *o; float *Wp; void *raw; /* Wp's block */ };

ep_status ep_hashed_plan_create(const ep_hash_params *p, const float *buckets, const float *recon,
                                int64_t recon_len, ep_hashed_plan **out) {
    ep_hcfg c;
    ep_status st = check_hash("ep_hashed_plan_create", p, buckets, recon, recon_len, &c, 1);
    if (st) return st;
    CHECK_PTR(out, "out");
    *out = NULL;
    const ep_ops *o = ops();
    const int nr = o->tile.gemm_nr;
    ep_hashed_plan *pl = (ep_hashed_plan *)calloc(1, sizeof *pl);
    float *rowbuf = (float *)malloc(sizeof(float) * (size_t)nr * (size_t)p->cols);
    if (pl) pl->Wp = alloc_panels(packed_floats(nr, p->rows, p->cols), &pl->raw);
    if (!pl || !pl->Wp || !rowbuf) {
        if (pl) free(pl->raw);
        free(pl); free(rowbuf);
        return ep_fail(EP_ERR_NOMEM, "ep_hashed_plan_create: cannot allocate %lld x %lld weights", (long long)p->rows, (long long)p->cols);
    }
    pl->rows = p->rows; pl->cols = p->cols; pl->o = o;
    for (int64_t r0 = 0; r0 < p->rows; r0 += nr) { /* one panel at a time: no unpacked copy of V */
        const int64_t nt = p->rows - r0 < nr ? p->rows - r0 : nr;
        for (int64_t r = 0; r < nt; r++) o->hash_row(&c, (uint32_t)(r0 + r), p->cols, rowbuf + r * p->cols);
        o->gemm_pack(nt, p->cols, rowbuf, pl->Wp + r0 * p->cols);
    }
    free(rowbuf);
    *out = pl;
    return EP_OK;
}

void ep_hashed_plan_destroy(ep_hashed_plan *pl) { if (pl) { free(pl->raw); free(pl); } }

ep_status ep_hashed_plan_unpack(const ep_hashed_plan *pl, float *V) {
    CHECK_PTR(pl, "plan");
    CHECK_PTR(V, "V");
    ep_gemm_unpack(pl->o->tile.gemm_nr, pl->rows, pl->cols, pl->Wp, V);
    return EP_OK;
}

/* A GEMM split by W rows into `parts` ranges of whole nr-row panels (so every panel, and every
 * output, is computed exactly as by one call): Wp pre-packed, or W packed chunk rows at a time
 * into each part's own per floats of mem, or (mem NULL, Wp NULL) W read by gemm_dot. */
typedef struct {
    const ep_ops *o; const float *X; int64_t N, cols, rows; const float *Wp, *W, *bias; float *Y;
    int parts; int64_t chunk; float *mem; int64_t per;
} gemm_job;

static void gemm_packed_task(void *ctx, int64_t t, int w) {
    const gemm_job *j = (const gemm_job *)ctx;
    const int64_t nr = j->o->tile.gemm_nr, panels = (j->rows + nr - 1) / nr;
    const int64_t r0 = split_at(panels, j->parts, t) * nr, r1e = split_at(panels, j->parts, t + 1) * nr;
    const int64_t r1 = r1e < j->rows ? r1e : j->rows;
    (void)w;
    if (r1 > r0)
        j->o->gemm(j->N, r1 - r0, j->cols, j->X, j->Wp + r0 * j->cols, j->bias ? j->bias + r0 : NULL, j->Y + r0, j->rows);
}

static void gemm_dense_task(void *ctx, int64_t t, int w) {
    const gemm_job *j = (const gemm_job *)ctx;
    const ep_ops *o = j->o;
    const int64_t nr = o->tile.gemm_nr, panels = (j->rows + nr - 1) / nr;
    const int64_t r0 = split_at(panels, j->parts, t) * nr, r1e = split_at(panels, j->parts, t + 1) * nr;
    const int64_t r1 = r1e < j->rows ? r1e : j->rows;
    if (!j->mem) {
        if (r1 > r0) o->gemm_dot(j->N, r1 - r0, j->cols, j->X, j->W + r0 * j->cols, j->bias ? j->bias + r0 : NULL, j->Y + r0, j->rows);
        return;
    }
    float *Wp = j->mem + j->per * w;
    for (int64_t a = r0; a < r1; a += j->chunk) {
        const int64_t nt = r1 - a < j->chunk ? r1 - a : j->chunk;
        o->gemm_pack(nt, j->cols, j->W + a * j->cols, Wp);
        o->gemm(j->N, nt, j->cols, j->X, Wp, j->bias ? j->bias + a : NULL, j->Y + a, j->rows);
    }
}

ep_status ep_hashed_matmul_expand(const ep_hashed_plan *pl, const float *X, int64_t N, int64_t in,
                                  const float *bias, float *Y, int64_t out) {
    CHECK_PTR(pl, "plan");
    ep_status st = check_mm("ep_hashed_matmul_expand", X, N, Y);
    if (st) return st;
    if (in != pl->cols || out != pl->rows)
        return ep_fail(EP_ERR_PLAN, "ep_hashed_matmul_expand: in_features=%lld, out_features=%lld but the plan was made "
                    "for in=%lld, out=%lld", (long long)in, (long long)out, (long long)pl->cols, (long long)pl->rows);
    int64_t t;
    if (!mul_ok(N, pl->cols, &t) || !mul_ok(N, pl->rows, &t))
        return ep_fail(EP_ERR_OVERFLOW, "ep_hashed_matmul_expand: N*in or N*out overflows (N=%lld)", (long long)N);
    const int64_t nr = pl->o->tile.gemm_nr;
    gemm_job j = {pl->o, X, N, pl->cols, pl->rows, pl->Wp, NULL, bias, Y, 0, 0, NULL, 0};
    j.parts = ep_threads_for(work3(N, pl->rows, pl->cols), (pl->rows + nr - 1) / nr);
    ep_parallel_for(j.parts, j.parts, gemm_packed_task, &j);
    return EP_OK;
}

/* ---- dense ------------------------------------------------------------------------------- */
#define EP_PACK_CHUNK (16 * 1024) /* floats of W packed per call of the GEMM: stays in L2 */
ep_status ep_dense_matmul(const float *X, int64_t N, int64_t cols, const float *W, int64_t rows,
                          const float *bias, float *Y) {
    int64_t t;
    ep_status st = check_mm("ep_dense_matmul", X, N, Y);
    if (st) return st;
    CHECK_PTR(W, "W");
    if (rows <= 0 || cols <= 0)
        return ep_fail(EP_ERR_SIZE, "ep_dense_matmul: rows=%lld, cols=%lld; both must be >= 1", (long long)rows, (long long)cols);
    if (!mul_ok(rows, cols, &t) || !mul_ok(N, cols, &t) || !mul_ok(N, rows, &t))
        return ep_fail(EP_ERR_OVERFLOW, "ep_dense_matmul: N=%lld, rows=%lld, cols=%lld overflow", (long long)N, (long long)rows, (long long)cols);
    const ep_ops *o = ops();
    const int64_t nr = o->tile.gemm_nr;
    gemm_job j = {o, X, N, cols, rows, NULL, W, bias, Y, 0, 0, NULL, 0};
    j.parts = ep_threads_for(work3(N, rows, cols), (rows + nr - 1) / nr);
    if (N < o->tile.pack_min_n) { ep_parallel_for(j.parts, j.parts, gemm_dense_task, &j); return EP_OK; }
    j.chunk = EP_PACK_CHUNK / (nr * cols) * nr; /* W packed a few panels at a time */
    if (j.chunk < nr) j.chunk = nr;
    if (j.chunk > rows) j.chunk = rows;
    const int64_t pf = packed_floats(nr, j.chunk, cols);
    j.per = pf < 0 ? -1 : (pf + 15) & ~(int64_t)15; /* each part's Wp on a 64-byte line */
    void *raw;
    j.mem = j.per < 0 || j.per > INT64_MAX / j.parts ? NULL : alloc_panels(j.per * j.parts, &raw);
    if (!j.mem) return ep_fail(EP_ERR_NOMEM, "ep_dense_matmul: cannot allocate %lld x %lld packed weights", (long long)j.chunk, (long long)cols);
    ep_parallel_for(j.parts, j.parts, gemm_dense_task, &j);
    free(raw);
    return EP_OK;
}

/* ---- real FFT: hand-written (no external C dependency; builds with NDK/Xcode/cross-gcc).
 * rfft of n = complex Stockham radix-4 FFT of m = n/2 on (x[2k] + i x[2k+1]) + a split pass. */
typedef struct cplan { int64_t m; float *tw, *twi; } cplan; /* m twiddles e^{-2 pi i k/m} / conj */

static void tw_fill(float *t, int64_t m, double sg) { /* sg = -1 forward, +1 inverse */
    for (int64_t k = 0; k < m; k++) {
        double a = sg * 2.0 * M_PI * (double)k / (double)m;
        t[2 * k] = (float)cos(a); t[2 * k + 1] = (float)sin(a);
    }
    if (m < EP_TW1_MIN) return;
    float *f = t + 2 * m; /* first radix-4 stage: w^(t p), t = 1..3, blocks of 4 p, re/im duplicated */
    for (int64_t p0 = 0; p0 < m / 4; p0 += 4, f += 48)
        for (int t1 = 1; t1 <= 3; t1++)
            for (int64_t u = 0; u < 4; u++) {
                double a = sg * 2.0 * M_PI * (double)((int64_t)t1 * (p0 + u)) / (double)m;
                float *re = f + 16 * (t1 - 1), *im = re + 8;
                re[2 * u] = re[2 * u + 1] = (float)cos(a);
                im[2 * u] = im[2 * u + 1] = (float)sin(a);
            }
}

static int cplan_init(cplan *c, int64_t m) {
    const int64_t nt = ep_tw_floats(m);
    c->m = m;
    c->tw = (float *)malloc(sizeof(float) * 2 * (size_t)nt);
    if (!c->tw) return 0;
    c->twi = c->tw + nt;
    tw_fill(c->tw, m, -1.0);
    tw_fill(c->twi, m, 1.0);
    return 1;
}

struct ep_rfft_plan { int64_t n, m; cplan c; float *rt; /* e^{-2 pi i k/n}, k < m */ };

static ep_status check_pow2(const char *fn, const char *what, int64_t n) {
    if (n < EP_LIMIT_MIN_POW2 || !is_pow2(n) || n > EP_LIMIT_MAX_POW2)
        return ep_fail(EP_ERR_SIZE, "%s: %s=%lld; must be a power of two in [4, 2^30]", fn, what, (long long)n);
    return EP_OK;
}

static ep_status rfft_init(const char *fn, ep_rfft_plan *p, int64_t n) {
    p->n = n; p->m = n / 2;
    p->rt = (float *)malloc(sizeof(float) * 2 * (size_t)p->m);
    if (!p->rt || !cplan_init(&p->c, p->m)) {
        free(p->rt); p->rt = NULL;
        return ep_fail(EP_ERR_NOMEM, "%s: cannot allocate FFT tables for n=%lld", fn, (long long)n);
    }
    for (int64_t k = 0; k < p->m; k++) {
        double a = -2.0 * M_PI * (double)k / (double)n;
        p->rt[2 * k] = (float)cos(a); p->rt[2 * k + 1] = (float)sin(a);
    }
    return EP_OK;
}
static void rfft_free(ep_rfft_plan *p) { free(p->rt); free(p->c.tw); }

ep_status ep_rfft_plan_create(int64_t n, ep_rfft_plan **out) {
    ep_status st = check_pow2("ep_rfft_plan_create", "n", n);
    if (st) return st;
    CHECK_PTR(out, "out");
    *out = NULL;
    ep_rfft_plan *p = (ep_rfft_plan *)calloc(1, sizeof *p);
    if (!p) return ep_fail(EP_ERR_NOMEM, "ep_rfft_plan_create: out of memory");
    if ((st = rfft_init("ep_rfft_plan_create", p, n))) { free(p); return st; }
    *out = p;
    return EP_OK;
}
void ep_rfft_plan_destroy(ep_rfft_plan *p) { if (p) { rfft_free(p); free(p); } }

/* X[0..m] (2m+2 floats) = rfft(x[0..n)); tmp: 2m floats. */
static void rfft_run(const ep_ops *o, const ep_rfft_plan *p, const float *x, float *X, float *tmp) {
    o->cfft(p->m, p->c.tw, x, X, tmp, 0);
    o->rfft_post(p->m, p->rt, X);
}

/* x[0..n) = m * irfft(X) (unnormalised); X is read only; tmp: 2m floats */
static void irfft_run(const ep_ops *o, const ep_rfft_plan *p, const float *X, float *x, float *tmp) {
    o->irfft_pre(p->m, p->rt, X, x);
    o->cfft(p->m, p->c.twi, x, x, tmp, 1);
}

#define EP_STACK_TMP 2048 /* floats of FFT scratch kept on the stack (m <= 1024) */
ep_status ep_rfft(const ep_rfft_plan *p, int64_t n, const float *x, float *X) {
    CHECK_PTR(p, "plan"); CHECK_PTR(x, "x"); CHECK_PTR(X, "X");
    if (n != p->n) return ep_fail(EP_ERR_PLAN, "ep_rfft: n=%lld but the plan was made for n=%lld", (long long)n, (long long)p->n);
    float stk[EP_STACK_TMP];
    float *tmp = 2 * p->m <= EP_STACK_TMP ? stk : (float *)malloc(sizeof(float) * 2 * (size_t)p->m);
    if (!tmp) return ep_fail(EP_ERR_NOMEM, "ep_rfft: out of memory");
    rfft_run(ops(), p, x, X, tmp);
    if (tmp != stk) free(tmp);
    return EP_OK;
}

ep_status ep_irfft(const ep_rfft_plan *p, int64_t n, const float *X, float *x) {
    CHECK_PTR(p, "plan"); CHECK_PTR(x, "x"); CHECK_PTR(X, "X");
    if (n != p->n) return ep_fail(EP_ERR_PLAN, "ep_irfft: n=%lld but the plan was made for n=%lld", (long long)n, (long long)p->n);
    float stk[EP_STACK_TMP];
    float *tmp = 2 * p->m <= EP_STACK_TMP ? stk : (float *)malloc(sizeof(float) * 2 * (size_t)p->m);
    if (!tmp) return ep_fail(EP_ERR_NOMEM, "ep_irfft: out of memory");
    irfft_run(ops(), p, X, x, tmp);
    if (tmp != stk) free(tmp);
    const float s = 1.0f / (float)p->m;
    for (int64_t k = 0; k < n; k++) x[k] *= s;
    return EP_OK;
}

/* sum_k a[k] b[k] in four partial sums (a float reduction the compiler keeps serial) */
static float dot4(const float *a, const float *b, int64_t n) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += a[k] * b[k]; s1 += a[k + 1] * b[k + 1];
        s2 += a[k + 2] * b[k + 2]; s3 += a[k + 3] * b[k + 3];
    }
    for (; k < n; k++) s0 += a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

static void add_bias_slice(float *y, const float *src, int64_t cnt, const float *bias) {
    for (int64_t k = 0; k < cnt; k++) y[k] = src[k] + (bias ? bias[k] : 0.0f);
}

/* Rows per batch block of the circulant / LDR drivers: their per-row spectra (row_floats each)
 * take at most EP_BATCH_FLOATS floats (256 KiB, to stay in L2 while every weight spectrum is
 * read once per block), or one row when a row alone is larger, so the per-call scratch is
 * bounded by the layer's size, never by the batch size N. */
#define EP_BATCH_FLOATS (64 * 1024)
static int64_t batch_rows(int64_t N, int64_t row_floats) {
    const int64_t nb = EP_BATCH_FLOATS / row_floats;
    return nb < 1 ? 1 : nb > N ? N : nb;
}

/* the stride of scratch spectra of cs floats: whole 64-byte lines, so no vector access splits one */
static int64_t line_stride(int64_t cs) { return (cs + 15) & ~(int64_t)15; }
/* p rounded up to a 64-byte boundary (the scratch is allocated 16 floats larger) */
static float *line_align(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* ---- block circulant --------------------------------------------------------------------- */
struct ep_circulant_plan {
    int64_t p, q, b, in, out;
    ep_rfft_plan f;
    /* the block spectra scaled by 2/b (so the inverse can stay unnormalised), split for
     * ep_ops.cmac_rows: spec [p, q, b/2] complex = bins 0..b/2-1 (64-byte aligned), ny [p, q]
     * the Nyquist bins (real); both in mem, p*q*(b+1) + 16 floats */
    float *mem, *spec, *ny;
};

ep_status ep_circulant_plan_create(int64_t p, int64_t q, int64_t b, const float *blocks,
                                   int64_t in, int64_t out, ep_circulant_plan **res) {
    const char *fn = "ep_circulant_plan_create";
    int64_t t;
    CHECK_PTR(blocks, "blocks"); CHECK_PTR(res, "out");
    *res = NULL;
    ep_status st = check_pow2(fn, "block size b", b);
    if (st) return st;
    if (p <= 0 || q <= 0) return ep_fail(EP_ERR_SIZE, "%s: p=%lld, q=%lld block counts; both must be >= 1", fn, (long long)p, (long long)q);
    if (!mul_ok(p, q, &t) || !mul_ok(t, b + 2, &t) || !mul_ok(p, b, &t) || !mul_ok(q, b, &t))
        return ep_fail(EP_ERR_OVERFLOW, "%s: p*q*b = %lld*%lld*%lld overflows", fn, (long long)p, (long long)q, (long long)b);
    if (in < 1 || in > q * b || out < 1 || out > p * b)
        return ep_fail(EP_ERR_SIZE, "%s: in_features=%lld, out_features=%lld; need 1 <= in <= q*b=%lld and 1 <= out <= p*b=%lld",
                    fn, (long long)in, (long long)out, (long long)(q * b), (long long)(p * b));
    ep_circulant_plan *pl = (ep_circulant_plan *)calloc(1, sizeof *pl);
    if (!pl) return ep_fail(EP_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = rfft_init(fn, &pl->f, b))) { free(pl); return st; }
    const int64_t m = b / 2;
    pl->mem = (float *)malloc(sizeof(float) * (size_t)(p * q * (2 * m + 1) + 16));
    float *tmp = (float *)malloc(sizeof(float) * (size_t)(4 * m + 2)), *S = tmp + 2 * m;
    if (!pl->mem || !tmp) {
        free(tmp); ep_circulant_plan_destroy(pl);
        return ep_fail(EP_ERR_NOMEM, "%s: cannot allocate spectra for p=%lld q=%lld b=%lld", fn, (long long)p, (long long)q, (long long)b);
    }
    pl->p = p; pl->q = q; pl->b = b; pl->in = in; pl->out = out;
    const ep_ops *o = ops();
    const float s = 1.0f / (float)m;
    pl->spec = line_align(pl->mem);
    pl->ny = pl->spec + p * q * 2 * m;
    for (int64_t k = 0; k < p * q; k++) {
        rfft_run(o, &pl->f, blocks + k * b, S, tmp);
        for (int64_t u = 0; u < 2 * m; u++) pl->spec[k * 2 * m + u] = S[u] * s;
        pl->ny[k] = S[2 * m] * s;
    }
    free(tmp);
    *res = pl;
    return EP_OK;
}

void ep_circulant_plan_destroy(ep_circulant_plan *pl) {
    if (!pl) return;
    rfft_free(&pl->f); free(pl->mem); free(pl);
}

static ep_status check_plan_io(const char *fn, int64_t in, int64_t out, int64_t pin, int64_t pout) {
    if (in != pin || out != pout)
        return ep_fail(EP_ERR_PLAN, "%s: in_features=%lld, out_features=%lld but the plan was made for in=%lld, out=%lld",
                    fn, (long long)in, (long long)out, (long long)pin, (long long)pout);
    return EP_OK;
}


/* ep_circulant_matmul on one block of rows [n0, n0 + rows): phase 0 transforms the rows' input
 * blocks (split over row x block pairs), phase 1 makes the output blocks (split over blocks) */
typedef struct {
    const ep_circulant_plan *pl; const ep_ops *o; const float *X, *bias; float *Y;
    int64_t in, out, qa, pa, ld, nb, priv, n0, rows;
    float *xs, *ny, *own;
    int parts, phase;
} circ_job;

static void circ_task(void *ctx, int64_t t, int w) {
    const circ_job *jb = (const circ_job *)ctx;
    const ep_circulant_plan *pl = jb->pl;
    const ep_ops *o = jb->o;
    const int64_t b = pl->b, m = b / 2, ld = jb->ld, qa = jb->qa, rows = jb->rows, in = jb->in, out = jb->out;
    float *acc = jb->own + jb->priv * w, *xb = acc + jb->nb * ld, *tmp = xb + b;
    if (jb->phase == 0) {
        for (int64_t u = split_at(rows * qa, jb->parts, t); u < split_at(rows * qa, jb->parts, t + 1); u++) {
            const int64_t r = u / qa, j = u % qa;
            const float *x = jb->X + (jb->n0 + r) * in + j * b;
            const int64_t c = in - j * b < b ? in - j * b : b;
            if (c < b) {
                memcpy(xb, x, sizeof(float) * (size_t)c);
                memset(xb + c, 0, sizeof(float) * (size_t)(b - c));
                x = xb;
            }
            rfft_run(o, &pl->f, x, jb->xs + (j * rows + r) * ld, tmp);
            jb->ny[r * qa + j] = jb->xs[(j * rows + r) * ld + 2 * m];
        }
        return;
    }
    for (int64_t i = split_at(jb->pa, jb->parts, t); i < split_at(jb->pa, jb->parts, t + 1); i++) {
        /* bins 0..m-1 (whole vectors for b >= 16), then the Nyquist bin (real) */
        o->cmac_rows(m, qa, rows, pl->spec + i * pl->q * 2 * m, 2 * m, jb->xs, ld, acc, ld);
        for (int64_t r = 0; r < rows; r++) acc[r * ld + 2 * m] = dot4(pl->ny + i * pl->q, jb->ny + r * qa, qa);
        const int64_t c = out - i * b < b ? out - i * b : b;
        for (int64_t r = 0; r < rows; r++) {
            float *y = jb->Y + (jb->n0 + r) * out + i * b, *dst = c == b ? y : xb;
            irfft_run(o, &pl->f, acc + r * ld, dst, tmp);
            if (dst != y || jb->bias) add_bias_slice(y, dst, c, jb->bias ? jb->bias + i * b : NULL);
        }
    }
}

/* The shared checks of the FFT matmuls: pointers, the plan's in/out, N*in and N*out in int64. */
static ep_status check_fft_matmul(const char *fn, const float *X, int64_t N, int64_t in, const float *Y, int64_t out,
                                  int64_t plan_in, int64_t plan_out) {
    int64_t t;
    ep_status st = check_mm(fn, X, N, Y);
    if (st || (st = check_plan_io(fn, in, out, plan_in, plan_out))) return st;
    if (!mul_ok(N, in, &t) || !mul_ok(N, out, &t))
        return ep_fail(EP_ERR_OVERFLOW, "%s: N=%lld rows of in=%lld, out=%lld overflow", fn, (long long)N, (long long)in,
                    (long long)out);
    return EP_OK;
}

ep_status ep_circulant_matmul(const ep_circulant_plan *pl, const float *X, int64_t N, int64_t in,
                              const float *bias, float *Y, int64_t out) {
    const char *fn = "ep_circulant_matmul";
    int64_t t;
    CHECK_PTR(pl, "plan");
    ep_status st = check_fft_matmul(fn, X, N, in, Y, out, pl->in, pl->out);
    if (st) return st;
    const int64_t b = pl->b, cs = b + 2, ld = line_stride(cs);
    const int64_t qa = (in + b - 1) / b, pa = (out + b - 1) / b; /* blocks that touch data */
    circ_job j = {pl, ops(), X, bias, Y, in, out, qa, pa, ld, 0, 0, 0, 0, NULL, NULL, NULL, 0, 0};
    j.nb = batch_rows(N, qa * ld + ld + qa);
    j.parts = ep_threads_for(work3(N, pa * qa, b), pa);
    j.priv = line_stride(j.nb * ld + 2 * b);
    if (!mul_ok(j.nb, qa * ld + qa, &t) || !mul_ok(j.parts, j.priv, &t) || !mul_ok(j.nb, qa * ld + qa + j.parts * j.priv + 16, &t))
        return ep_fail(EP_ERR_OVERFLOW, "%s: scratch for %lld rows of %lld input blocks of b=%lld overflows", fn,
                    (long long)j.nb, (long long)qa, (long long)b);
    /* shared: xs[j][r], the spectrum of row r's input block j (ny[r][j]: its Nyquist bin, real);
     * each part's own: acc[r], row r's output block spectrum, then xb and tmp (b floats each) */
    float *mem = (float *)malloc(sizeof(float) * (size_t)(j.nb * (qa * ld + qa) + j.parts * j.priv + 32));
    if (!mem) return ep_fail(EP_ERR_NOMEM, "%s: out of memory", fn);
    j.xs = line_align(mem);
    j.own = line_align(j.xs + j.nb * qa * ld);
    j.ny = j.own + j.parts * j.priv;
    for (j.n0 = 0; j.n0 < N; j.n0 += j.nb) {
        j.rows = N - j.n0 < j.nb ? N - j.n0 : j.nb;
        j.phase = 0;
        ep_parallel_for(j.parts, j.parts, circ_task, &j);
        j.phase = 1;
        ep_parallel_for(j.parts, j.parts, circ_task, &j);
    }
    free(mem);
    return EP_OK;
}

/* ---- LDR: y = sum_i Z1(g_i) (Z-1(h_i) x). Z-1(h) = D^-1 Circ(D h) D, D = diag(w^k),
 * w = e^{i pi/n}: the skew product is a complex circular convolution of twisted inputs. */
struct ep_ldr_plan {
    int64_t r, n, in, out;
    ep_rfft_plan f;  /* real n-point */
    cplan c;         /* complex n-point */
    float *tw;       /* w^k, k < n (complex) */
    float *gs;       /* [r, n/2+1] rfft(g_i) * 2/n */
    float *hs;       /* [r, n] FFT(D h_i) / n */
};

ep_status ep_ldr_plan_create(int64_t r, int64_t n, const float *G, const float *H, int64_t in,
                             int64_t out, ep_ldr_plan **res) {
    const char *fn = "ep_ldr_plan_create";
    int64_t t;
    CHECK_PTR(G, "G"); CHECK_PTR(H, "H"); CHECK_PTR(res, "out");
    *res = NULL;
    ep_status st = check_pow2(fn, "n", n);
    if (st) return st;
    if (r < 1 || !mul_ok(r, 2 * n + 2, &t))
        return ep_fail(EP_ERR_SIZE, "%s: rank r=%lld; must be >= 1 (and r*n must not overflow)", fn, (long long)r);
    if (in < 1 || in > n || out < 1 || out > n)
        return ep_fail(EP_ERR_SIZE, "%s: in_features=%lld, out_features=%lld; both must be in [1, n=%lld]", fn,
                    (long long)in, (long long)out, (long long)n);
    ep_ldr_plan *pl = (ep_ldr_plan *)calloc(1, sizeof *pl);
    if (!pl) return ep_fail(EP_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = rfft_init(fn, &pl->f, n))) { free(pl); return st; }
    const int64_t m = n / 2;
    pl->r = r; pl->n = n; pl->in = in; pl->out = out;
    int ok = cplan_init(&pl->c, n);
    pl->tw = (float *)malloc(sizeof(float) * 2 * (size_t)n);
    pl->gs = (float *)malloc(sizeof(float) * (size_t)(r * (2 * m + 2)));
    pl->hs = (float *)malloc(sizeof(float) * (size_t)(r * 2 * n));
    float *tmp = (float *)malloc(sizeof(float) * 2 * (size_t)n);
    if (!ok || !pl->tw || !pl->gs || !pl->hs || !tmp) {
        free(tmp); ep_ldr_plan_destroy(pl);
        return ep_fail(EP_ERR_NOMEM, "%s: cannot allocate tables for r=%lld n=%lld", fn, (long long)r, (long long)n);
    }
    for (int64_t k = 0; k < n; k++) {
        double a = M_PI * (double)k / (double)n;
        pl->tw[2 * k] = (float)cos(a); pl->tw[2 * k + 1] = (float)sin(a);
    }
    const ep_ops *o = ops();
    for (int64_t i = 0; i < r; i++) {
        float *gs = pl->gs + i * (2 * m + 2), *hs = pl->hs + i * 2 * n;
        rfft_run(o, &pl->f, G + i * n, gs, tmp);
        for (int64_t u = 0; u < 2 * m + 2; u++) gs[u] *= 1.0f / (float)m;
        for (int64_t k = 0; k < n; k++) {
            hs[2 * k] = H[i * n + k] * pl->tw[2 * k] / (float)n;
            hs[2 * k + 1] = H[i * n + k] * pl->tw[2 * k + 1] / (float)n;
        }
        o->cfft(n, pl->c.tw, hs, hs, tmp, 0);
    }
    free(tmp);
    *res = pl;
    return EP_OK;
}

void ep_ldr_plan_destroy(ep_ldr_plan *pl) {
    if (!pl) return;
    rfft_free(&pl->f); free(pl->c.tw); free(pl->tw); free(pl->gs); free(pl->hs); free(pl);
}

/* ep_ldr_matmul split by batch rows (each row's output depends on that row alone): `parts`
 * ranges of rows, each run in blocks of nb rows with its own priv floats of scratch in mem */
typedef struct {
    const ep_ldr_plan *pl; const ep_ops *o; const float *X, *bias; float *Y;
    int64_t in, out, N, nb, priv; float *mem; int parts;
} ldr_job;

static void ldr_task(void *ctx, int64_t t, int w) {
    const ldr_job *j = (const ldr_job *)ctx;
    const ep_ldr_plan *pl = j->pl;
    const ep_ops *o = j->o;
    const int64_t n = pl->n, m = n / 2, cs = 2 * m + 2, nb = j->nb, in = j->in, out = j->out;
    /* xt[r]: FFT of row r's twisted input, acc[r]: its output spectrum; u, tmp, ur, us: one row's */
    float *xt = j->mem + j->priv * w;
    float *acc = xt + nb * 2 * n, *u = acc + nb * cs, *tmp = u + 2 * n, *ur = tmp + 2 * n, *us = ur + n;
    const int64_t end = split_at(j->N, j->parts, t + 1);
    for (int64_t n0 = split_at(j->N, j->parts, t); n0 < end; n0 += nb) {
        const int64_t rows = end - n0 < nb ? end - n0 : nb;
        for (int64_t r = 0; r < rows; r++) {
            const float *x = j->X + (n0 + r) * in;
            float *xr = xt + r * 2 * n;
            for (int64_t k = 0; k < n; k++) {
                const float v = k < in ? x[k] : 0.0f;
                xr[2 * k] = v * pl->tw[2 * k]; xr[2 * k + 1] = v * pl->tw[2 * k + 1];
            }
            o->cfft(n, pl->c.tw, xr, xr, tmp, 0);
        }
        memset(acc, 0, sizeof(float) * (size_t)(rows * cs));
        for (int64_t i = 0; i < pl->r; i++) /* generator pair i, read once per block of rows */
            for (int64_t r = 0; r < rows; r++) {
                o->cmac_rows(n, 1, 1, pl->hs + i * 2 * n, 2 * n, xt + r * 2 * n, 2 * n, u, 2 * n); /* u = hs_i xt_r */
                o->cfft(n, pl->c.twi, u, u, tmp, 1);
                for (int64_t k = 0; k < n; k++) /* Re(conj(w^k) u_k) */
                    ur[k] = u[2 * k] * pl->tw[2 * k] + u[2 * k + 1] * pl->tw[2 * k + 1];
                rfft_run(o, &pl->f, ur, us, tmp);
                o->cmac(m + 1, pl->gs + i * cs, us, acc + r * cs);
            }
        for (int64_t r = 0; r < rows; r++) {
            float *y = j->Y + (n0 + r) * out, *dst = out == n ? y : u;
            irfft_run(o, &pl->f, acc + r * cs, dst, tmp);
            if (dst != y || j->bias) add_bias_slice(y, dst, out, j->bias);
        }
    }
}

ep_status ep_ldr_matmul(const ep_ldr_plan *pl, const float *X, int64_t N, int64_t in,
                        const float *bias, float *Y, int64_t out) {
    const char *fn = "ep_ldr_matmul";
    int64_t t;
    CHECK_PTR(pl, "plan");
    ep_status st = check_fft_matmul(fn, X, N, in, Y, out, pl->in, pl->out);
    if (st) return st;
    const int64_t n = pl->n, cs = n + 2;
    ldr_job j = {pl, ops(), X, bias, Y, in, out, N, 0, 0, NULL, 0};
    j.nb = batch_rows(N, 2 * n + cs);
    j.parts = ep_threads_for(work3(N, pl->r, n * 4), N);
    j.priv = line_stride(j.nb * (2 * n + cs) + 2 * n * 2 + n + cs);
    if (!mul_ok(j.nb, 2 * n + cs + 5 * n + cs, &t) || !mul_ok(j.parts, j.priv, &t))
        return ep_fail(EP_ERR_OVERFLOW, "%s: scratch for %lld rows of n=%lld overflows", fn, (long long)j.nb, (long long)n);
    j.mem = (float *)malloc(sizeof(float) * (size_t)(j.parts * j.priv));
    if (!j.mem) return ep_fail(EP_ERR_NOMEM, "%s: out of memory", fn);
    ep_parallel_for(j.parts, j.parts, ldr_task, &j);
    free(j.mem);
    return EP_OK;
}
