/* Codebook weights (kernels.h, docs/ops.md CodebookWeight / SparseCodebookMatMul): the checks of
 * the compressed form, its decoder, and the fused sparse matmul that runs on it without a dense W
 * (the variant's spcb_row micro-kernel over X transposed in blocks of batch rows). */
#include <stdlib.h>
#include <string.h>

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

struct ep_codebook_plan {
    int64_t rows, cols, n;
    const float *cb;
    const int32_t *row_ptr;
    const uint8_t *idx, *gaps;
};

int64_t ep_codebook_plan_bytes(const ep_codebook *w) {
    if (!w || w->codebook_len < 0 || w->rows < 0 || w->col_gaps_len < 0 || w->codebook_len > INT64_MAX / 16 ||
        w->rows > INT64_MAX / 16 || w->col_gaps_len > INT64_MAX / 16)
        return -1;
    return 4 * w->codebook_len + 4 * (w->rows + 1) + 2 * w->col_gaps_len;
}

ep_status ep_codebook_plan_create(const ep_codebook *w, ep_codebook_plan **out) {
    if (!out) return ep_fail(EP_ERR_NULL, "ep_codebook_plan_create: out is NULL");
    *out = NULL;
    ep_status s = ep_codebook_check(w);
    if (s) return s;
    if (!w->row_ptr)
        return ep_fail(EP_ERR_ARG, "ep_codebook_plan_create: the fused matmul needs the sparse form (inputs 'row_ptr' "
                       "and 'col_gaps')");
    const int64_t n = w->col_gaps_len, bytes = ep_codebook_plan_bytes(w);
    if (bytes < 0 || (uint64_t)bytes > (uint64_t)(SIZE_MAX - sizeof(ep_codebook_plan)))
        return ep_fail(EP_ERR_OVERFLOW, "ep_codebook_plan_create: the plan needs %lld bytes, more than this platform "
                       "can allocate", (long long)bytes);
    ep_codebook_plan *p = (ep_codebook_plan *)malloc(sizeof *p + (size_t)bytes);
    if (!p) return ep_fail(EP_ERR_NOMEM, "ep_codebook_plan_create: cannot allocate %lld bytes", (long long)bytes);
    float *cb = (float *)(p + 1);
    int32_t *rp = (int32_t *)(cb + w->codebook_len);
    uint8_t *idx = (uint8_t *)(rp + w->rows + 1), *gaps = idx + n;
    memcpy(cb, w->codebook, sizeof(float) * (size_t)w->codebook_len);
    memcpy(rp, w->row_ptr, sizeof(int32_t) * (size_t)(w->rows + 1));
    for (int64_t k = 0; k < n; k++) idx[k] = (uint8_t)index_at(w->indices, k, w->bits);
    if (n) memcpy(gaps, w->col_gaps, (size_t)n);
    p->rows = w->rows; p->cols = w->cols; p->n = n;
    p->cb = cb; p->row_ptr = rp; p->idx = idx; p->gaps = gaps;
    *out = p;
    return EP_OK;
}

void ep_codebook_plan_destroy(ep_codebook_plan *plan) { free(plan); }

typedef struct spcb_job {
    const ep_ops *o;
    const ep_codebook_plan *p;
    const float *xt, *bias;
    int64_t ldx, nb;
    float *Y; /* the block's first row of Y */
    int parts;
} spcb_job;

#define SPCB_RT 16 /* output rows gathered before they are written: Y's rows get 16 floats at a time */

/* rows [rows*task/parts, rows*(task+1)/parts) of one batch block, SPCB_RT rows at a time into a
 * tile, so Y is written in runs of consecutive floats (not one float per row of Y: a stride of
 * 4 KB for 1024 outputs keeps hitting one cache set) */
static void spcb_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const spcb_job *j = (const spcb_job *)ctx;
    const ep_codebook_plan *p = j->p;
    const int64_t r0 = p->rows * task / j->parts, r1 = p->rows * (task + 1) / j->parts;
    float tile[SPCB_RT][SPCB_NB];
    for (int64_t t0 = r0; t0 < r1; t0 += SPCB_RT) {
        const int64_t t1 = r1 - t0 < SPCB_RT ? r1 : t0 + SPCB_RT;
        for (int64_t r = t0; r < t1; r++) {
            const int64_t start = p->row_ptr[r], count = p->row_ptr[r + 1] - start;
            j->o->spcb_row(count, p->cb, p->idx + start, p->gaps + start, j->xt, j->ldx, j->nb, tile[r - t0]);
        }
        for (int64_t i = 0; i < j->nb; i++)
            for (int64_t r = t0; r < t1; r++) j->Y[i * p->rows + r] = tile[r - t0][i] + (j->bias ? j->bias[r] : 0.0f);
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
    const int64_t cols = plan->cols, block = N < SPCB_NB ? N : SPCB_NB;
    if (block > 1 && (uint64_t)cols > SIZE_MAX / sizeof(float) / (uint64_t)block)
        return ep_fail(EP_ERR_OVERFLOW, "ep_sparse_codebook_matmul: a block of %lld x %lld floats is more than this "
                       "platform can allocate", (long long)block, (long long)cols);
    float *xt = block > 1 ? (float *)malloc(sizeof(float) * (size_t)(block * cols)) : NULL;
    if (block > 1 && !xt)
        return ep_fail(EP_ERR_NOMEM, "ep_sparse_codebook_matmul: cannot allocate %lld x %lld floats", (long long)cols,
                       (long long)block);
    spcb_job j = {ep_active_ops(), plan, NULL, bias, 0, 0, NULL, 1};
    for (int64_t n0 = 0; n0 < N; n0 += block) {
        j.nb = N - n0 < block ? N - n0 : block;
        const float *x = X + n0 * cols;
        if (j.nb == 1) {
            j.xt = x;
            j.ldx = 1;
        } else {
            for (int64_t i = 0; i < j.nb; i++)
                for (int64_t c = 0; c < cols; c++) xt[c * j.nb + i] = x[i * cols + c];
            j.xt = xt;
            j.ldx = j.nb;
        }
        j.Y = Y + n0 * plan->rows;
        j.parts = ep_threads_for(j.nb * (plan->n + plan->rows), plan->rows);
        ep_parallel_for(j.parts, j.parts, spcb_task, &j);
    }
    free(xt);
    return EP_OK;
}
