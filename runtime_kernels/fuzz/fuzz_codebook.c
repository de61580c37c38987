/* libFuzzer harness: the codebook weights of edgepack/kernels.h (ep_codebook_check, _decode,
 * _plan_create, ep_sparse_codebook_matmul) on arbitrary bytes: sizes, bits, codebook length,
 * packed indices, row pointers and gaps all come from the input, consistent or not. Checked three
 * ways:
 *  - an independent model of the contract (docs/ops.md CodebookWeight) says whether the weight is
 *    valid; ep_codebook_check must agree, and an invalid weight must leave W untouched (every
 *    buffer is allocated exactly as large as its length says, so ASan catches any touch beyond);
 *  - a valid weight decodes bit for bit to the harness's own decode;
 *  - the fused matmul under every variant equals the dense product exactly (codebook values, X and
 *    bias are multiples of 1/128, so every sum is exact in float32). */
#include "fuzz_common.h"
#include "fuzz_variants.h"

#include "edgepack/kernels.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_load_variants();
    return 0;
}

static unsigned index_at(const uint8_t *ind, int64_t k, int bits) {
    return (unsigned)(ind[k * bits / 8] >> (k * bits % 8)) & ((1u << bits) - 1u);
}

/* The contract, written again: 1 when w is a valid codebook weight. */
static int model_valid(const ep_codebook *w) {
    const int b = w->bits;
    if (b != 1 && b != 2 && b != 4 && b != 8) return 0;
    if (w->codebook_len < 1 || w->codebook_len > 256 || w->rows < 1 || w->cols < 1) return 0;
    const int sparse = w->row_ptr != NULL;
    if (sparse != (w->col_gaps != NULL)) return 0;
    const int64_t n = sparse ? w->col_gaps_len : w->rows * w->cols;
    if (w->indices_len != (n * b + 7) / 8) return 0;
    if ((n * b) % 8 && (w->indices[w->indices_len - 1] >> ((n * b) % 8))) return 0;
    for (int64_t k = 0; k < n; k++)
        if (index_at(w->indices, k, b) >= (unsigned)w->codebook_len) return 0;
    if (!sparse) return 1;
    if (w->row_ptr_len != w->rows + 1 || w->row_ptr[0] != 0 || w->row_ptr[w->rows] != n) return 0;
    for (int64_t r = 0; r < w->rows; r++)
        if (w->row_ptr[r + 1] < w->row_ptr[r]) return 0;
    for (int64_t r = 0; r < w->rows; r++) {
        int64_t col = -1;
        for (int64_t m = w->row_ptr[r]; m < w->row_ptr[r + 1]; m++) {
            if (w->col_gaps[m] == 0 || (col += w->col_gaps[m]) >= w->cols) return 0;
        }
    }
    return 1;
}

/* W from a valid weight, by the contract's words (positions not listed are 0) */
static void model_decode(const ep_codebook *w, float *W) {
    const int64_t total = w->rows * w->cols;
    if (!w->row_ptr) {
        for (int64_t k = 0; k < total; k++) W[k] = w->codebook[index_at(w->indices, k, w->bits)];
        return;
    }
    for (int64_t k = 0; k < total; k++) W[k] = 0.0f;
    for (int64_t r = 0; r < w->rows; r++) {
        int64_t col = -1;
        for (int64_t m = w->row_ptr[r]; m < w->row_ptr[r + 1]; m++) {
            col += w->col_gaps[m];
            W[r * w->cols + col] = w->codebook[index_at(w->indices, m, w->bits)];
        }
    }
}

/* Every variant's fused matmul on N rows against the dense product (exact). */
static void check_matmul(const ep_codebook *w, const float *W, fz *f) {
    const int64_t rows = w->rows, cols = w->cols;
    int64_t N = 1 + fz_u8(f) % 70; /* past 64: two batch blocks */
    while (N > 1 && N * rows * cols > (1 << 16)) N /= 2; /* keep the dense checks cheap */
    float *X = (float *)fz_alloc(sizeof(float) * (size_t)(N * cols)), *bias = (float *)fz_alloc(sizeof(float) * (size_t)rows);
    float *Y = (float *)fz_alloc(sizeof(float) * (size_t)(N * rows));
    fz_fill_seeded(X, (size_t)(N * cols), fz_u32(f));
    for (int64_t i = 0; i < N * cols; i++) X[i] = (float)(int)(X[i] * 128.0f) / 128.0f;
    for (int64_t r = 0; r < rows; r++) bias[r] = fz_unit(f);
    for (int v = 0; v < g_nvar; v++) {
        ep_codebook_plan *plan = NULL;
        FZ_ASSERT(ep_set_variant(g_variants[v]) == EP_OK, "variant %s", g_variants[v]);
        FZ_ASSERT(ep_codebook_plan_create(w, &plan) == EP_OK && plan, "plan of a valid weight: %s", ep_last_error());
        FZ_ASSERT(ep_sparse_codebook_matmul(plan, X, N, cols, bias, Y, rows) == EP_OK, "matmul: %s", ep_last_error());
        for (int64_t i = 0; i < N; i++)
            for (int64_t r = 0; r < rows; r++) {
                double want = bias[r];
                for (int64_t c = 0; c < cols; c++) want += (double)X[i * cols + c] * W[r * cols + c];
                FZ_ASSERT(Y[i * rows + r] == (float)want, "%s: Y[%lld, %lld] = %g, dense %g", g_variants[v],
                          (long long)i, (long long)r, (double)Y[i * rows + r], want);
            }
        ep_codebook_plan_destroy(plan);
    }
    ep_set_variant("auto");
    free(X); free(bias); free(Y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz f = {data, size};
    const uint8_t flags = fz_u8(&f);
    static const int32_t BITS[8] = {1, 2, 4, 8, 8, 4, 0, 3};
    ep_codebook w;
    memset(&w, 0, sizeof w);
    w.rows = 1 + fz_u8(&f) % 40;
    w.cols = 1 + fz_u16(&f) % 700;
    w.bits = BITS[fz_u8(&f) & 7];
    w.codebook_len = fz_u16(&f) % 260;
    float *cb = (float *)fz_alloc(sizeof(float) * (size_t)w.codebook_len);
    for (int64_t j = 0; j < w.codebook_len; j++) cb[j] = fz_unit(&f);
    w.codebook = cb;
    int32_t *row_ptr = NULL;
    uint8_t *gaps = NULL;
    int64_t n = w.rows * w.cols;
    if (flags & 1) { /* sparse: per-row counts (consistent row pointers) or raw ones */
        w.row_ptr_len = flags & 2 ? fz_u8(&f) % (w.rows + 3) : w.rows + 1;
        row_ptr = (int32_t *)fz_alloc(sizeof(int32_t) * (size_t)w.row_ptr_len);
        for (int64_t r = 0; r < w.row_ptr_len; r++)
            row_ptr[r] = flags & 4 ? (int32_t)fz_u32(&f) : (r ? row_ptr[r - 1] + fz_u8(&f) % 12 : 0);
        n = w.row_ptr_len && !(flags & 8) ? (row_ptr[w.row_ptr_len - 1] < 0 ? 0 : row_ptr[w.row_ptr_len - 1] % 4096)
                                         : fz_u16(&f) % 4096;
        gaps = (uint8_t *)fz_alloc((size_t)n);
        for (int64_t m = 0; m < n; m++) gaps[m] = flags & 16 ? fz_u8(&f) : (uint8_t)(1 + fz_u8(&f) % 40);
        w.row_ptr = flags & 32 ? NULL : row_ptr; /* only one of the two: invalid */
        w.col_gaps = gaps;
        w.col_gaps_len = n;
    }
    w.indices_len = (n * (w.bits > 0 ? w.bits : 8) + 7) / 8 + (flags & 64 ? (int64_t)(fz_u8(&f) % 5) - 2 : 0);
    if (w.indices_len < 0) w.indices_len = 0;
    uint8_t *ind = (uint8_t *)fz_alloc((size_t)w.indices_len);
    for (int64_t k = 0; k < w.indices_len; k++) ind[k] = flags & 128 ? fz_u8(&f) : 0;
    if (!(flags & 128) && w.bits > 0 && w.codebook_len > 0) /* mostly valid indices */
        for (int64_t k = 0; k < n && (k * w.bits) / 8 < w.indices_len; k++)
            ind[k * w.bits / 8] |= (uint8_t)((fz_u8(&f) % w.codebook_len % (1 << w.bits)) << (k * w.bits % 8));
    w.indices = ind;

    const int valid = model_valid(&w);
    const ep_status s = ep_codebook_check(&w);
    FZ_ASSERT((s == EP_OK) == valid, "check says %d (%s), the contract says valid=%d", (int)s, ep_last_error(), valid);
    const int64_t total = w.rows * w.cols;
    float *W = (float *)fz_alloc(sizeof(float) * (size_t)total), *want = (float *)fz_alloc(sizeof(float) * (size_t)total);
    for (int64_t k = 0; k < total; k++) W[k] = 7.0f;
    const ep_status d = ep_codebook_decode(&w, W);
    FZ_ASSERT(d == s, "decode status %d, check status %d", (int)d, (int)s);
    if (!valid) {
        for (int64_t k = 0; k < total; k++) FZ_ASSERT(W[k] == 7.0f, "an invalid weight wrote W[%lld]", (long long)k);
        ep_codebook_plan *plan = (ep_codebook_plan *)&w; /* must be reset to NULL */
        FZ_ASSERT(ep_codebook_plan_create(&w, &plan) != EP_OK && !plan, "a plan of an invalid weight");
    } else {
        model_decode(&w, want);
        FZ_ASSERT(!memcmp(W, want, sizeof(float) * (size_t)total), "decode differs from the contract's");
        if (w.row_ptr) check_matmul(&w, W, &f);
    }
    free(W); free(want); free(cb); free(row_ptr); free(gaps); free(ind);
    return 0;
}
