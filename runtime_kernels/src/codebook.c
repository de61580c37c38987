/* Codebook weights (kernels.h, docs/ops.md CodebookWeight / SparseCodebookMatMul): the checks of
 * the compressed form, its decoder, and the fused sparse matmul that runs on it without a dense W:
 * a plan of the rows sorted by length in slices of EP_SPCB_ROWS stored as jagged diagonals (values
 * looked up, absolute columns), run by the variant's spcb_slice micro-kernel on each row of X
 * (few rows) or on X transposed in blocks of batch rows. */
#define _POSIX_C_SOURCE 200112L /* clock_gettime, for the gather-or-lane-loads choice */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define SPCB_NB 64 /* batch rows per transposed block of X: 64 x cols floats */

static int valid_bits(int32_t bits) { return bits == 1 || bits == 2 || bits == 4 || bits == 8; }

/* index k of the packed indices */
static inline unsigned index_at(const uint8_t *ind, int64_t k, int32_t bits) {
    const int64_t bit = k * bits;
    return (unsigned)(ind[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

/* n, the stored entries: rows*cols (dense form) or col_gaps_len (sparse form); -1 when too many */
static int64_t entries(const ep_codebook *w) {
    if (w->col_gaps) return w->col_gaps_len <= INT64_MAX / 8 ? w->col_gaps_len : -1;
    return w->rows <= INT64_MAX / 8 / w->cols ? w->rows * w->cols : -1;
}

static ep_status check_indices(const ep_codebook *w, int64_t n) {
    const int64_t need = (n * w->bits + 7) / 8;
    const int used = (int)((n * w->bits) & 7);
    if (used && (w->indices[need - 1] >> used))
        return ep_fail(EP_ERR_ARG, "input 'indices': the unused high bits of its last byte (byte %lld = 0x%02x) "
                       "must be 0 (%lld entries of %d bits)", (long long)(need - 1), w->indices[need - 1],
                       (long long)n, w->bits);
    if (w->codebook_len >= (1ll << w->bits)) return EP_OK; /* no index can reach past the codebook */
    for (int64_t k = 0; k < n; k++) {
        const unsigned i = index_at(w->indices, k, w->bits);
        if (i >= (unsigned)w->codebook_len)
            return ep_fail(EP_ERR_ARG, "input 'indices': entry %lld is index %u, but the codebook has %lld values; "
                           "every index must be < %lld", (long long)k, i, (long long)w->codebook_len,
                           (long long)w->codebook_len);
    }
    return EP_OK;
}

static ep_status check_sparse(const ep_codebook *w, int64_t n) {
    const int32_t *rp = w->row_ptr;
    if (rp[0] != 0) return ep_fail(EP_ERR_ARG, "input 'row_ptr' starts at %d; must start at 0", rp[0]);
    for (int64_t r = 0; r < w->rows; r++)
        if (rp[r + 1] < rp[r])
            return ep_fail(EP_ERR_ARG, "input 'row_ptr' decreases at row %lld: row_ptr[%lld] = %d > row_ptr[%lld] = "
                           "%d; row pointers must never decrease", (long long)r, (long long)r, rp[r],
                           (long long)(r + 1), rp[r + 1]);
    if (rp[w->rows] != n)
        return ep_fail(EP_ERR_ARG, "input 'row_ptr' ends at %d; must end at n = %lld, the length of 'col_gaps' "
                       "(an nnz that disagrees with the entries)", rp[w->rows], (long long)n);
    for (int64_t r = 0; r < w->rows; r++) {
        int64_t col = -1;
        for (int64_t m = rp[r]; m < rp[r + 1]; m++) {
            if (w->col_gaps[m] == 0)
                return ep_fail(EP_ERR_ARG, "input 'col_gaps': entry %lld (row %lld) is 0; every gap must be >= 1",
                               (long long)m, (long long)r);
            col += w->col_gaps[m];
            if (col >= w->cols)
                return ep_fail(EP_ERR_ARG, "input 'col_gaps': entry %lld puts row %lld at column %lld; columns must be "
                               "< cols = %lld", (long long)m, (long long)r, (long long)col, (long long)w->cols);
        }
    }
    return EP_OK;
}

ep_status ep_codebook_check_sizes(const ep_codebook *w) {
    if (!w) return ep_fail(EP_ERR_NULL, "ep_codebook_check: the codebook weight is NULL");
    if (!valid_bits(w->bits))
        return ep_fail(EP_ERR_ARG, "attribute 'bits' = %d; must be 1, 2, 4 or 8", w->bits);
    if (w->codebook_len < 1 || w->codebook_len > EP_CODEBOOK_MAX)
        return ep_fail(EP_ERR_SIZE, "input 'codebook' has %lld values; must have 1..%d", (long long)w->codebook_len,
                       EP_CODEBOOK_MAX);
    if (w->rows < 1 || w->cols < 1)
        return ep_fail(EP_ERR_SIZE, "the weight has %lld rows and %lld cols; both must be >= 1", (long long)w->rows,
                       (long long)w->cols);
    if (w->rows > INT64_MAX / 8 / w->cols)
        return ep_fail(EP_ERR_OVERFLOW, "the weight has %lld rows and %lld cols; rows*cols must be <= %lld",
                       (long long)w->rows, (long long)w->cols, (long long)(INT64_MAX / 8));
    if (!w->row_ptr != !w->col_gaps || (!w->row_ptr && (w->row_ptr_len || w->col_gaps_len)))
        return ep_fail(EP_ERR_ARG, "only one of 'row_ptr' / 'col_gaps' is given; the sparse form needs both, the "
                       "dense form neither");
    const int64_t n = entries(w);
    if (n < 0) return ep_fail(EP_ERR_OVERFLOW, "the weight has too many entries (%lld x %lld, %lld gaps)",
                              (long long)w->rows, (long long)w->cols, (long long)w->col_gaps_len);
    const int64_t need = (n * w->bits + 7) / 8;
    if (w->indices_len != need)
        return ep_fail(EP_ERR_SIZE, "input 'indices' has %lld bytes; %lld entries of %d bits need ceil(%lld*%d/8) = "
                       "%lld (an nnz that disagrees with the indices)", (long long)w->indices_len, (long long)n,
                       w->bits, (long long)n, w->bits, (long long)need);
    if (w->row_ptr && w->row_ptr_len != w->rows + 1)
        return ep_fail(EP_ERR_SIZE, "input 'row_ptr' has %lld values; must have rows+1 = %lld", (long long)w->row_ptr_len,
                       (long long)(w->rows + 1));
    return EP_OK;
}

ep_status ep_codebook_check(const ep_codebook *w) {
    ep_status s = ep_codebook_check_sizes(w);
    if (s) return s;
    const int64_t n = entries(w);
    if (!w->codebook || (n && !w->indices))
        return ep_fail(EP_ERR_NULL, "ep_codebook_check: the codebook or the indices are NULL (need %lld floats, %lld "
                       "bytes)", (long long)w->codebook_len, (long long)w->indices_len);
    s = check_indices(w, n);
    if (!s && w->row_ptr) s = check_sparse(w, n);
    return s;
}

ep_status ep_codebook_decode(const ep_codebook *w, float *W) {
    ep_status s = ep_codebook_check(w);
    if (s) return s;
    if (!W) return ep_fail(EP_ERR_NULL, "ep_codebook_decode: W is NULL (need %lld x %lld floats)", (long long)w->rows,
                           (long long)w->cols);
    const float *cb = w->codebook;
    if (!w->row_ptr) {
        const int64_t n = w->rows * w->cols;
        for (int64_t k = 0; k < n; k++) W[k] = cb[index_at(w->indices, k, w->bits)];
        return EP_OK;
    }
    memset(W, 0, sizeof(float) * (size_t)(w->rows * w->cols));
    for (int64_t r = 0; r < w->rows; r++) {
        float *row = W + r * w->cols;
        int64_t col = -1;
        for (int64_t m = w->row_ptr[r]; m < w->row_ptr[r + 1]; m++) {
            col += w->col_gaps[m];
            row[col] = cb[index_at(w->indices, m, w->bits)];
        }
    }
    return EP_OK;
}

/* The plan: the rows sorted by entry count (longest first), cut into S = ceil(rows/16) slices of
 * EP_SPCB_ROWS; sorted row i is row perm[i] (row r sorted row pos[r]) with len[i] entries (len[i]
 * = 0 for i >= rows). Slice
 * s's entries start at start[s], stored diagonal by diagonal (spcb_slice's layout), each entry as
 * its codebook value and its absolute column (uint16_t when cols <= 65536, else int32_t;
 * EP_SPCB_ROWS columns 0 follow the last entry, for the micro-kernels' reads past it). gather:
 * one row of X runs the variant's spcb_gemv_gather (timed faster at plan time). */
struct ep_codebook_plan {
    int64_t rows, cols, n, slices;
    int wide, gather;
    const int32_t *perm, *pos, *len, *start;
    const float *val;
    const void *col;
};

static int64_t slices_of(int64_t rows) { return (rows + EP_SPCB_ROWS - 1) / EP_SPCB_ROWS; }

int64_t ep_codebook_plan_bytes(const ep_codebook *w) {
    if (!w || w->rows < 0 || w->cols < 0 || w->col_gaps_len < 0 || w->rows > INT64_MAX / 64 ||
        w->col_gaps_len > INT64_MAX / 16)
        return -1;
    const int64_t col_bytes = w->cols <= 65536 ? 2 : 4;
    return 8 * w->rows + 4 * EP_SPCB_ROWS * slices_of(w->rows) + 4 * (slices_of(w->rows) + 1) + 4 * w->col_gaps_len +
           col_bytes * (w->col_gaps_len + EP_SPCB_ROWS);
}

#if defined(EP_WITH_AVX512)
static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Whether one row of X runs faster with the variant's gathers than with its lane loads: measured
 * faster on Intel Sapphire Rapids (1.3-1.5x), slower on AMD EPYC, so the plan times both on its first
 * slices (up to 32, x = 0, fastest of 5 interleaved rounds; at most ~1 ms) and keeps the faster.
 * Both give the same sums bit for bit: the choice changes the speed only. */
static int gather_is_faster(const ep_codebook_plan *p, const ep_ops *o) {
    const int64_t S = p->slices < 32 ? p->slices : 32;
    if (!o->spcb_gemv_gather || p->wide || !p->n) return 0;
    float *x = (float *)calloc((size_t)p->cols, sizeof(float)), acc[EP_SPCB_ROWS];
    if (!x) return 0;
    double best[2] = {1e30, 1e30};
    for (int round = 0; round < 5; round++)
        for (int g = 0; g < 2; g++) {
            const double t0 = seconds();
            for (int64_t s = 0; s < S; s++) {
                const int32_t *len = p->len + EP_SPCB_ROWS * s;
                const float *val = p->val + p->start[s];
                const uint16_t *col = (const uint16_t *)p->col + p->start[s];
                if (g) o->spcb_gemv_gather(len, val, col, 0, x, acc);
                else o->spcb_slice(len, val, col, 0, x, 1, 1, acc, 1);
            }
            const double t = seconds() - t0;
            if (t < best[g]) best[g] = t;
        }
    free(x);
    return best[1] < best[0];
}
#else
static int gather_is_faster(const ep_codebook_plan *p, const ep_ops *o) { (void)p; (void)o; return 0; }
#endif

static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

ep_status ep_codebook_plan_create(const ep_codebook *w, ep_codebook_plan **out) {
    if (!out) return ep_fail(EP_ERR_NULL, "ep_codebook_plan_create: out is NULL");
    *out = NULL;
    ep_status s = ep_codebook_check(w);
    if (s) return s;
    if (!w->row_ptr)
        return ep_fail(EP_ERR_ARG, "ep_codebook_plan_create: the fused matmul needs the sparse form (inputs 'row_ptr' "
                       "and 'col_gaps')");
    if (w->cols > INT32_MAX || w->rows > INT32_MAX)
        return ep_fail(EP_ERR_SIZE, "ep_codebook_plan_create: the weight has %lld rows and %lld cols; the fused matmul "
                       "needs both <= %d", (long long)w->rows, (long long)w->cols, INT32_MAX);
    const int64_t n = w->col_gaps_len, rows = w->rows, S = slices_of(rows), bytes = ep_codebook_plan_bytes(w);
    if (bytes < 0 || (uint64_t)bytes > (uint64_t)(SIZE_MAX - sizeof(ep_codebook_plan)) ||
        (uint64_t)rows > SIZE_MAX / sizeof(int64_t))
        return ep_fail(EP_ERR_OVERFLOW, "ep_codebook_plan_create: the plan needs %lld bytes, more than this platform "
                       "can allocate", (long long)bytes);
    ep_codebook_plan *p = (ep_codebook_plan *)malloc(sizeof *p + (size_t)bytes);
    int64_t *key = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows);
    if (!p || !key) {
        free(p); free(key);
        return ep_fail(EP_ERR_NOMEM, "ep_codebook_plan_create: cannot allocate %lld bytes", (long long)bytes);
    }
    int32_t *perm = (int32_t *)(p + 1), *pos = perm + rows, *len = pos + rows, *start = len + EP_SPCB_ROWS * S;
    float *val = (float *)(start + S + 1);
    void *col = val + n;
    const int wide = w->cols > 65536;
    /* longest first, ties in row order: key = (n - count) * 2^31 + row */
    for (int64_t r = 0; r < rows; r++) key[r] = (int64_t)(n - (w->row_ptr[r + 1] - w->row_ptr[r])) * 2147483648ll + r;
    qsort(key, (size_t)rows, sizeof(int64_t), cmp_i64);
    memset(len, 0, sizeof(int32_t) * (size_t)(EP_SPCB_ROWS * S));
    for (int64_t i = 0; i < rows; i++) {
        perm[i] = (int32_t)(key[i] & 2147483647ll);
        pos[perm[i]] = (int32_t)i;
        len[i] = w->row_ptr[perm[i] + 1] - w->row_ptr[perm[i]];
    }
    free(key);
    for (int64_t sl = 0, e = 0; sl <= S; sl++) {
        start[sl] = (int32_t)e;
        for (int l = 0; sl < S && l < EP_SPCB_ROWS; l++) e += len[EP_SPCB_ROWS * sl + l];
    }
    /* each row's values and running sums of gaps, written at its entries' places */
    for (int64_t sl = 0; sl < S; sl++) {
        const int32_t *ln = len + EP_SPCB_ROWS * sl;
        for (int l = 0; l < EP_SPCB_ROWS && ln[l]; l++) {
            const int64_t m0 = w->row_ptr[perm[EP_SPCB_ROWS * sl + l]];
            int64_t d = start[sl], column = -1;
            int c = EP_SPCB_ROWS;
            for (int32_t j = 0; j < ln[l]; j++) {
                while (ln[c - 1] <= j) c--;
                column += w->col_gaps[m0 + j];
                val[d + l] = w->codebook[index_at(w->indices, m0 + j, w->bits)];
                if (wide) ((int32_t *)col)[d + l] = (int32_t)column;
                else ((uint16_t *)col)[d + l] = (uint16_t)column;
                d += c;
            }
        }
    }
    if (wide) memset((int32_t *)col + n, 0, sizeof(int32_t) * EP_SPCB_ROWS);
    else memset((uint16_t *)col + n, 0, sizeof(uint16_t) * EP_SPCB_ROWS);
    p->rows = rows; p->cols = w->cols; p->n = n; p->slices = S; p->wide = wide;
    p->perm = perm; p->pos = pos; p->len = len; p->start = start; p->val = val; p->col = col;
    p->gather = gather_is_faster(p, ep_active_ops());
    *out = p;
    return EP_OK;
}

void ep_codebook_plan_destroy(ep_codebook_plan *plan) { free(plan); }

typedef struct spcb_job {
    const ep_ops *o;
    const ep_codebook_plan *p;
    const float *xt, *bias;
    int64_t ldx, nb;
    float *ys; /* nb > 1: the block's sums in sorted row order, [16 S, nb] */
    float *Y;  /* the block's first row of Y */
    int parts;
} spcb_job;

/* slices [S*task/parts, S*(task+1)/parts) of one batch block into ys, or of one row of X into Y:
 * SPCB_NB slices at a time into acc before their sums go to Y (a sum read back right after the
 * micro-kernel's vector store of it would wait on that store) */
static void spcb_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const spcb_job *j = (const spcb_job *)ctx;
    const ep_codebook_plan *p = j->p;
    const int64_t s0 = p->slices * task / j->parts, s1 = p->slices * (task + 1) / j->parts, nb = j->nb;
    const size_t cb = p->wide ? 4 : 2;
    if (nb > 1) {
        for (int64_t s = s0; s < s1; s++) {
            const int64_t e = p->start[s];
            j->o->spcb_slice(p->len + EP_SPCB_ROWS * s, p->val + e, (const char *)p->col + cb * (size_t)e, p->wide,
                             j->xt, j->ldx, nb, j->ys + EP_SPCB_ROWS * s * nb, nb);
        }
        return;
    }
    float acc[EP_SPCB_ROWS * SPCB_NB];
    for (int64_t c0 = s0; c0 < s1; c0 += SPCB_NB) {
        const int64_t c1 = s1 - c0 < SPCB_NB ? s1 : c0 + SPCB_NB;
        for (int64_t s = c0; s < c1; s++) {
            const int64_t e = p->start[s];
            const int32_t *len = p->len + EP_SPCB_ROWS * s;
            const void *col = (const char *)p->col + cb * (size_t)e;
            if (p->gather && j->o->spcb_gemv_gather)
                j->o->spcb_gemv_gather(len, p->val + e, col, p->wide, j->xt, acc + (s - c0) * EP_SPCB_ROWS);
            else
                j->o->spcb_slice(len, p->val + e, col, p->wide, j->xt, 1, 1, acc + (s - c0) * EP_SPCB_ROWS, 1);
        }
        const int64_t i0 = EP_SPCB_ROWS * c0, i1 = p->rows < EP_SPCB_ROWS * c1 ? p->rows : EP_SPCB_ROWS * c1;
        if (j->bias)
            for (int64_t i = i0; i < i1; i++) j->Y[p->perm[i]] = acc[i - i0] + j->bias[p->perm[i]];
        else
            for (int64_t i = i0; i < i1; i++) j->Y[p->perm[i]] = acc[i - i0] + 0.0f;
    }
}

/* rows [R*task/parts, R*(task+1)/parts) of Y (R = S 16-row groups) from ys: 16 rows at a time, so
 * each of the nb rows of Y gets 16 consecutive floats (one float per row of Y at a stride of 4 KB
 * for 1024 outputs would keep hitting one cache set) */
static void spcb_out_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const spcb_job *j = (const spcb_job *)ctx;
    const ep_codebook_plan *p = j->p;
    const int64_t g0 = p->slices * task / j->parts, g1 = p->slices * (task + 1) / j->parts, nb = j->nb;
    for (int64_t r0 = EP_SPCB_ROWS * g0; r0 < EP_SPCB_ROWS * g1 && r0 < p->rows; r0 += EP_SPCB_ROWS) {
        const int64_t r1 = p->rows - r0 < EP_SPCB_ROWS ? p->rows : r0 + EP_SPCB_ROWS;
        for (int64_t k = 0; k < nb; k++)
            for (int64_t r = r0; r < r1; r++)
                j->Y[k * p->rows + r] = j->ys[(int64_t)p->pos[r] * nb + k] + (j->bias ? j->bias[r] : 0.0f);
    }
}

ep_status ep_sparse_codebook_matmul(const ep_codebook_plan *plan, const float *X, int64_t N, int64_t in_features,
                                    const float *bias, float *Y, int64_t out_features) {
    if (!plan || (!X && N) || (!Y && N))
        return ep_fail(EP_ERR_NULL, "ep_sparse_codebook_matmul: plan, X or Y is NULL");
    if (N < 0 || in_features != plan->cols || out_features != plan->rows)
        return ep_fail(EP_ERR_PLAN, "ep_sparse_codebook_matmul: N=%lld, in_features=%lld, out_features=%lld; the plan "
                       "is for in_features=%lld, out_features=%lld (N >= 0)", (long long)N, (long long)in_features,
                       (long long)out_features, (long long)plan->cols, (long long)plan->rows);
    if (N > INT64_MAX / 4 / (in_features > out_features ? in_features : out_features))
        return ep_fail(EP_ERR_OVERFLOW, "ep_sparse_codebook_matmul: N=%lld rows overflow", (long long)N);
    if (N == 0) return EP_OK;
    const ep_ops *o = ep_active_ops();
    const int64_t cols = plan->cols, block = N < o->tile.spcb_min_nb ? 1 : N < SPCB_NB ? N : SPCB_NB;
    const int64_t per = cols + EP_SPCB_ROWS * plan->slices; /* floats per batch row: X transposed, sums */
    if (block > 1 && (uint64_t)per > SIZE_MAX / sizeof(float) / (uint64_t)block)
        return ep_fail(EP_ERR_OVERFLOW, "ep_sparse_codebook_matmul: a block of %lld x %lld floats is more than this "
                       "platform can allocate", (long long)block, (long long)per);
    float *xt = block > 1 ? (float *)malloc(sizeof(float) * (size_t)(block * per)) : NULL;
    if (block > 1 && !xt)
        return ep_fail(EP_ERR_NOMEM, "ep_sparse_codebook_matmul: cannot allocate %lld x %lld floats", (long long)block,
                       (long long)per);
    spcb_job j = {o, plan, NULL, bias, 0, 0, xt ? xt + block * cols : NULL, NULL, 1};
    for (int64_t n0 = 0; n0 < N;) {
        const int64_t left = N - n0;
        j.nb = left < block ? left : block;
        if (j.nb < o->tile.spcb_min_nb) j.nb = 1; /* the last few rows: one at a time, as given */
        const float *x = X + n0 * cols;
        if (j.nb == 1) {
            j.xt = x;
            j.ldx = 1;
        } else {
            for (int64_t c = 0; c < cols; c++) /* nb sequential reads, one sequential write */
                for (int64_t i = 0; i < j.nb; i++) xt[c * j.nb + i] = x[i * cols + c];
            j.xt = xt;
            j.ldx = j.nb;
        }
        j.Y = Y + n0 * plan->rows;
        j.parts = ep_threads_for(j.nb * (plan->n + plan->rows), plan->slices);
        ep_parallel_for(j.parts, j.parts, spcb_task, &j);
        if (j.nb > 1) ep_parallel_for(j.parts, j.parts, spcb_out_task, &j);
        n0 += j.nb;
    }
    free(xt);
    return EP_OK;
}
