/* The sparse codebook slice (ep_ops.spcb_slice, internal.h) over simd.h's vector operations: 16
 * rows stored as jagged diagonals (codebook.c's plan). One row of X (nb = 1, ldx = 1): the 16 rows
 * at once, a diagonal per step, x at its 16 columns loaded one by one into vectors and multiplied
 * into the rows' 16 sums. Many batch columns (nb >= SPCB_MIN_NB, X transposed): each entry's value
 * broadcast and multiplied into vectors of batch sums, four rows at a time for one or two vectors,
 * else row by row with up to SPCB_U vectors. Anything else takes the reference. The including variant
 * file wraps spcb_slice_simd. */
#ifndef EDGEPACK_CODEBOOK_SIMD_H
#define EDGEPACK_CODEBOOK_SIMD_H

#include "internal.h"
#include "simd.h"

#include <string.h>

#define SPCB_U 4                   /* vectors of sums per main step */
#define SPCB_LANES (SPCB_U * EP_VL) /* batch columns per main step */
#define SPCB_MIN_NB (EP_VL / 2)     /* below: a vector would hold mostly masked lanes */

/* column of entry e */
EP_SI int64_t spcb_col(const void *col, int64_t e, const int wide) {
    return wide ? ((const int32_t *)col)[e] : ((const uint16_t *)col)[e];
}

/* acc[0 .. U*EP_VL) (the last vector only the tail's lanes when masked) for row l's entries */
EP_SI void spcb_block(const int U, const int32_t *len, int l, const float *val, const void *col, const int wide,
                      const float *xt, int64_t ldx, float *acc, int masked, ep_vtail tail) {
    ep_v s[SPCB_U];
    for (int u = 0; u < U; u++) s[u] = ep_vset1(0.0f);
    const int32_t full = len[EP_SPCB_ROWS - 1]; /* diagonals every row reaches: entry j at 16 j + l */
    int64_t d = 0; /* the first entry of diagonal j */
    int c = EP_SPCB_ROWS; /* rows that reach diagonal j: len[0 .. c) */
    for (int32_t j = 0; j < len[l]; j++) {
        if (j >= full)
            while (len[c - 1] <= j) c--;
        const ep_v w = ep_vset1(val[d + l]);
        const float *x = xt + spcb_col(col, d + l, wide) * ldx;
        for (int u = 0; u < U; u++) {
            const ep_v xv = masked && u == U - 1 ? ep_vld_n(x + u * EP_VL, tail) : ep_vld(x + u * EP_VL);
            s[u] = ep_vfma(s[u], w, xv);
        }
        d += c;
    }
    for (int u = 0; u < U; u++) {
        if (masked && u == U - 1) ep_vst_n(acc + u * EP_VL, s[u], tail);
        else ep_vst(acc + u * EP_VL, s[u]);
    }
}

/* the nb batch sums of row l: SPCB_U vectors per walk over its entries, then the other 1..4 (the
 * last masked) in one more walk */
EP_SI void spcb_row_batch(const int32_t *len, int l, const float *val, const void *col, const int wide,
                          const float *xt, int64_t ldx, int64_t nb, float *acc) {
    int64_t b = 0;
    for (; b + SPCB_LANES <= nb; b += SPCB_LANES)
        spcb_block(SPCB_U, len, l, val, col, wide, xt + b, ldx, acc + b, 0, ep_vtail_of(EP_VL));
    const int64_t r = nb - b, nv = (r + EP_VL - 1) / EP_VL;
    const int masked = r % EP_VL != 0;
    const ep_vtail tail = ep_vtail_of((int)(r - (nv - 1) * EP_VL));
    switch (nv) {
    case 4: spcb_block(4, len, l, val, col, wide, xt + b, ldx, acc + b, masked, tail); break;
    case 3: spcb_block(3, len, l, val, col, wide, xt + b, ldx, acc + b, masked, tail); break;
    case 2: spcb_block(2, len, l, val, col, wide, xt + b, ldx, acc + b, masked, tail); break;
    case 1: spcb_block(1, len, l, val, col, wide, xt + b, ldx, acc + b, masked, tail); break;
    default: break;
    }
}

/* rows l .. l+3 against U (1 or 2) vectors of batch columns (the last masked when masked): 4 U
 * independent sums (one row's one vector would wait on each multiply-add) and one walk over the
 * diagonals, the four rows' entries side by side */
EP_SI void spcb_quad(const int U, const int32_t *len, int l, const float *val, const void *col, const int wide,
                     const float *xt, int64_t ldx, float *acc, int64_t ldacc, const int masked, ep_vtail tail) {
    ep_v s[4][2];
    for (int k = 0; k < 4; k++)
        for (int u = 0; u < U; u++) s[k][u] = ep_vset1(0.0f);
    const int32_t full = len[EP_SPCB_ROWS - 1];
    int64_t d = 0;
    int32_t j = 0;
    for (; j < full; j++, d += EP_SPCB_ROWS)
        for (int k = 0; k < 4; k++) {
            const float *x = xt + spcb_col(col, d + l + k, wide) * ldx;
            const ep_v w = ep_vset1(val[d + l + k]);
            for (int u = 0; u < U; u++)
                s[k][u] = ep_vfma(s[k][u], w, masked && u == U - 1 ? ep_vld_n(x + u * EP_VL, tail) : ep_vld(x + u * EP_VL));
        }
    int c = EP_SPCB_ROWS; /* rows that reach diagonal j: len[0 .. c) */
    for (; j < len[l]; j++) {
        while (len[c - 1] <= j) c--;
        for (int k = 0; k < 4 && l + k < c; k++) {
            const float *x = xt + spcb_col(col, d + l + k, wide) * ldx;
            const ep_v w = ep_vset1(val[d + l + k]);
            for (int u = 0; u < U; u++)
                s[k][u] = ep_vfma(s[k][u], w, masked && u == U - 1 ? ep_vld_n(x + u * EP_VL, tail) : ep_vld(x + u * EP_VL));
        }
        d += c;
    }
    for (int k = 0; k < 4; k++)
        for (int u = 0; u < U; u++) {
            if (masked && u == U - 1) ep_vst_n(acc + (l + k) * ldacc + u * EP_VL, s[k][u], tail);
            else ep_vst(acc + (l + k) * ldacc + u * EP_VL, s[k][u]);
        }
}

#if defined(EP_SIMD_AVX512) || defined(__AVX2__)
/* x at the columns of entries e .. e+3, by scalar loads: on the CPU measured (AMD EPYC, AVX-512)
 * faster than a gather instruction (0.7 vs 1.3 cycles per float, x in L1) */
EP_SI __m128 spcb_x4(const float *x, const void *col, int64_t e, const int wide) {
    if (!wide) {
        uint64_t w;
        memcpy(&w, (const uint16_t *)col + e, 8);
        __m128 v = _mm_load_ss(x + (w & 0xFFFF));
        v = _mm_insert_ps(v, _mm_load_ss(x + ((w >> 16) & 0xFFFF)), 0x10);
        v = _mm_insert_ps(v, _mm_load_ss(x + ((w >> 32) & 0xFFFF)), 0x20);
        return _mm_insert_ps(v, _mm_load_ss(x + (w >> 48)), 0x30);
    }
    __m128 v = _mm_load_ss(x + spcb_col(col, e, wide));
    v = _mm_insert_ps(v, _mm_load_ss(x + spcb_col(col, e + 1, wide)), 0x10);
    v = _mm_insert_ps(v, _mm_load_ss(x + spcb_col(col, e + 2, wide)), 0x20);
    return _mm_insert_ps(v, _mm_load_ss(x + spcb_col(col, e + 3, wide)), 0x30);
}
#endif

#if defined(EP_SIMD_AVX512)
EP_SI __m512 spcb_x16(const float *x, const void *col, int64_t d, const int wide) {
    __m512 v = _mm512_castps128_ps512(spcb_x4(x, col, d, wide));
    v = _mm512_insertf32x4(v, spcb_x4(x, col, d + 4, wide), 1);
    v = _mm512_insertf32x4(v, spcb_x4(x, col, d + 8, wide), 2);
    return _mm512_insertf32x4(v, spcb_x4(x, col, d + 12, wide), 3);
}

/* the same 16 floats by one gather instruction */
EP_SI __m512 spcb_x16_gather(const float *x, const void *col, int64_t d, const int wide) {
    const __m512i i = wide ? _mm512_loadu_si512((const int32_t *)col + d)
                           : _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)col + d)));
    return _mm512_i32gather_ps(i, x, 4);
}

/* the 16 rows' sums against one row of X: full diagonals two at a time (two sums), then the
 * shorter ones, their sums masked to the rows that reach them (the others read x at the valid
 * columns that follow and add nothing); x by lane loads or by gathers (the same sums) */
EP_SI void spcb_gemv_by(const int32_t *len, const float *val, const void *col, const int wide, const float *x,
                        float *acc, const int gather) {
#define SPCB_X16(d) (gather ? spcb_x16_gather(x, col, d, wide) : spcb_x16(x, col, d, wide))
    const __m512i lv = _mm512_loadu_si512((const void *)len);
    const int32_t full = len[EP_SPCB_ROWS - 1], n = len[0];
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t d = 0;
    int32_t j = 0;
    for (; j + 2 <= full; j += 2, d += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + d), SPCB_X16(d), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + d + 16), SPCB_X16(d + 16), s1);
    }
    for (; j < n; j++) {
        const __mmask16 k = _mm512_cmpgt_epi32_mask(lv, _mm512_set1_epi32(j));
        s0 = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(k, val + d), SPCB_X16(d), s0, k);
        d += __builtin_ctz(~(unsigned)k);
    }
#undef SPCB_X16
    _mm512_storeu_ps(acc, _mm512_add_ps(s0, s1));
}

EP_SI void spcb_gemv(const int32_t *len, const float *val, const void *col, const int wide, const float *x,
                     float *acc) {
    spcb_gemv_by(len, val, col, wide, x, acc, 0);
}
#elif defined(__AVX2__)
EP_SI __m256 spcb_x8(const float *x, const void *col, int64_t d, const int wide) {
    return _mm256_set_m128(spcb_x4(x, col, d + 4, wide), spcb_x4(x, col, d, wide));
}

/* the 16 rows' sums against one row of X: rows 0-7 and 8-15 in two vectors, a diagonal per step;
 * on the shorter diagonals the rows past their end read x at the valid columns that follow, masked
 * to 0 (0 * 0 adds nothing, whatever x holds) */
EP_SI void spcb_gemv(const int32_t *len, const float *val, const void *col, const int wide, const float *x,
                     float *acc) {
    const __m256i lv0 = _mm256_loadu_si256((const __m256i *)len), lv1 = _mm256_loadu_si256((const __m256i *)(len + 8));
    const int32_t full = len[EP_SPCB_ROWS - 1], n = len[0];
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t d = 0;
    int32_t j = 0;
    for (; j < full; j++, d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + d), spcb_x8(x, col, d, wide), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + d + 8), spcb_x8(x, col, d + 8, wide), s1);
    }
    for (; j < n; j++) {
        const __m256i jv = _mm256_set1_epi32(j);
        const __m256i m0 = _mm256_cmpgt_epi32(lv0, jv), m1 = _mm256_cmpgt_epi32(lv1, jv);
        const __m256 x0 = _mm256_and_ps(spcb_x8(x, col, d, wide), _mm256_castsi256_ps(m0));
        const __m256 x1 = _mm256_and_ps(spcb_x8(x, col, d + 8, wide), _mm256_castsi256_ps(m1));
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(val + d, m0), x0, s0);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(val + d + 8, m1), x1, s1);
        const unsigned k = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m0)) |
                           (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m1)) << 8;
        d += __builtin_ctz(~k);
    }
    _mm256_storeu_ps(acc, s0);
    _mm256_storeu_ps(acc + 8, s1);
}
#else
/* the 16 rows' sums against one row of X: full diagonals as four 4-lane vectors of lane loads,
 * then the shorter diagonals row by row (no gather instruction) */
EP_SI void spcb_gemv(const int32_t *len, const float *val, const void *col, const int wide, const float *x,
                     float *acc) {
    const int32_t full = len[EP_SPCB_ROWS - 1], n = len[0];
    ep_v s[4];
    for (int q = 0; q < 4; q++) s[q] = ep_vset1(0.0f);
    int64_t d = 0;
    int32_t j = 0;
    for (; j < full; j++, d += 16)
        for (int q = 0; q < 4; q++) {
            float xs[4];
            for (int i = 0; i < 4; i++) xs[i] = x[spcb_col(col, d + 4 * q + i, wide)];
            s[q] = ep_vfma(s[q], ep_vld(val + d + 4 * q), ep_vld(xs));
        }
    for (int q = 0; q < 4; q++) ep_vst(acc + 4 * q, s[q]);
    int c = EP_SPCB_ROWS;
    for (; j < n; j++) {
        while (len[c - 1] <= j) c--;
        for (int l = 0; l < c; l++) acc[l] += val[d + l] * x[spcb_col(col, d + l, wide)];
        d += c;
    }
}
#endif

static void spcb_slice_simd(const int32_t *len, const float *val, const void *col, int wide, const float *xt,
                            int64_t ldx, int64_t nb, float *acc, int64_t ldacc) {
    if (nb == 1 && ldx == 1) { /* one row of X as given */
        float a[EP_SPCB_ROWS];
        float *out = ldacc == 1 ? acc : a;
        if (wide) spcb_gemv(len, val, col, 1, xt, out);
        else spcb_gemv(len, val, col, 0, xt, out);
        if (out != acc)
            for (int l = 0; l < EP_SPCB_ROWS; l++) acc[l * ldacc] = a[l];
        return;
    }
    if (nb < SPCB_MIN_NB) {
        ep_spcb_slice_ref(len, val, col, wide, xt, ldx, nb, acc, ldacc);
        return;
    }
    if (nb <= 2 * EP_VL) { /* one or two vectors of batch columns: four rows at a time */
        const int masked = nb % EP_VL != 0;
        const ep_vtail tail = ep_vtail_of((int)(nb - (nb - 1) / EP_VL * EP_VL));
        for (int l = 0; l < EP_SPCB_ROWS; l += 4) {
            if (nb <= EP_VL && wide) spcb_quad(1, len, l, val, col, 1, xt, ldx, acc, ldacc, masked, tail);
            else if (nb <= EP_VL) spcb_quad(1, len, l, val, col, 0, xt, ldx, acc, ldacc, masked, tail);
            else if (wide) spcb_quad(2, len, l, val, col, 1, xt, ldx, acc, ldacc, masked, tail);
            else spcb_quad(2, len, l, val, col, 0, xt, ldx, acc, ldacc, masked, tail);
        }
        return;
    }
    for (int l = 0; l < EP_SPCB_ROWS; l++) {
        if (wide) spcb_row_batch(len, l, val, col, 1, xt, ldx, nb, acc + l * ldacc);
        else spcb_row_batch(len, l, val, col, 0, xt, ldx, nb, acc + l * ldacc);
    }
}

#endif
