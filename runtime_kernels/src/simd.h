/* A few vector operations per ISA (in the style of ggml's simd-mappings), so that the FFT
 * micro-kernels in fft_simd.h and the packed GEMM in gemm_simd.h are written once: AVX2 + FMA
 * (8 floats) or NEON (4 floats, aarch64 or ARMv7); AVX-512 (16 floats, real operations only, for
 * gemm_simd.h) when the including file defines EP_SIMD_AVX512. Include after the ISA's
 * intrinsics header, in a file compiled for that ISA.
 * Complex values are interleaved (re, im): a vector holds EP_VC of them. */
#ifndef EDGEPACK_SIMD_H
#define EDGEPACK_SIMD_H

#include <string.h>

#define EP_SI static inline __attribute__((always_inline))

#if defined(EP_SIMD_AVX512)
#if !defined(__AVX512F__) || !defined(__FMA__)
#error "simd.h: EP_SIMD_AVX512 needs a file compiled with -mavx512f -mfma"
#endif
#include <immintrin.h>
#define EP_VL 16
#define EP_SIMD_REAL_ONLY 1 /* no complex operations in this mapping */
typedef __m512 ep_v;

EP_SI ep_v ep_vld(const float *p) { return _mm512_loadu_ps(p); }
EP_SI void ep_vst(float *p, ep_v v) { _mm512_storeu_ps(p, v); }
EP_SI ep_v ep_vset1(float x) { return _mm512_set1_ps(x); }
EP_SI ep_v ep_vadd(ep_v a, ep_v b) { return _mm512_add_ps(a, b); }
EP_SI ep_v ep_vsub(ep_v a, ep_v b) { return _mm512_sub_ps(a, b); }
EP_SI ep_v ep_vmul(ep_v a, ep_v b) { return _mm512_mul_ps(a, b); }
EP_SI ep_v ep_vfma(ep_v acc, ep_v a, ep_v b) { return _mm512_fmadd_ps(a, b, acc); }
/* *p in every lane */
EP_SI ep_v ep_vbcast(const float *p) { return _mm512_set1_ps(*p); }
/* the first n lanes (0 <= n <= EP_VL), prepared once for ep_vld_n / ep_vst_n */
typedef __mmask16 ep_vtail;
EP_SI ep_vtail ep_vtail_of(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }
/* the tail's lanes from p, the others 0; lanes past the tail are not read */
EP_SI ep_v ep_vld_n(const float *p, ep_vtail t) { return _mm512_maskz_loadu_ps(t, p); }
/* the tail's lanes of v to p; lanes past the tail are not written */
EP_SI void ep_vst_n(float *p, ep_v v, ep_vtail t) { _mm512_mask_storeu_ps(p, t, v); }

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EP_VL 8
typedef __m256 ep_v;

EP_SI ep_v ep_vld(const float *p) { return _mm256_loadu_ps(p); }
EP_SI void ep_vst(float *p, ep_v v) { _mm256_storeu_ps(p, v); }
EP_SI ep_v ep_vset1(float x) { return _mm256_set1_ps(x); }
EP_SI ep_v ep_vadd(ep_v a, ep_v b) { return _mm256_add_ps(a, b); }
EP_SI ep_v ep_vsub(ep_v a, ep_v b) { return _mm256_sub_ps(a, b); }
EP_SI ep_v ep_vmul(ep_v a, ep_v b) { return _mm256_mul_ps(a, b); }
/* acc + a * b */
EP_SI ep_v ep_vfma(ep_v acc, ep_v a, ep_v b) { return _mm256_fmadd_ps(a, b, acc); }
EP_SI ep_v ep_vbcast(const float *p) { return _mm256_broadcast_ss(p); }
typedef __m256i ep_vtail;
EP_SI ep_vtail ep_vtail_of(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
EP_SI ep_v ep_vld_n(const float *p, ep_vtail t) { return _mm256_maskload_ps(p, t); }
EP_SI void ep_vst_n(float *p, ep_v v, ep_vtail t) { _mm256_maskstore_ps(p, t, v); }

/* (re, im) -> (im, re) in every complex lane */
EP_SI ep_v ep_vswap(ep_v v) { return _mm256_permute_ps(v, 0xB1); }
/* the complex values in reverse order */
EP_SI ep_v ep_vcrev(ep_v v) { return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0x1B)); }
/* a sign pattern for ep_vflip: negate the real parts (re_neg) and/or the imaginary parts */
EP_SI ep_v ep_vsigns(int re_neg, int im_neg) {
    const float r = re_neg ? -0.0f : 0.0f, i = im_neg ? -0.0f : 0.0f;
    return _mm256_setr_ps(r, i, r, i, r, i, r, i);
}
EP_SI ep_v ep_vflip(ep_v v, ep_v signs) { return _mm256_xor_ps(v, signs); }
/* a + ep_vflip(b, signs) */
EP_SI ep_v ep_vaddflip(ep_v a, ep_v b, ep_v signs) { return _mm256_add_ps(a, _mm256_xor_ps(b, signs)); }

/* a twiddle vector prepared for ep_vcmul: real parts and imaginary parts, each duplicated */
typedef struct { ep_v r, i; } ep_vtw;
/* one complex value w[0..1] in every lane */
EP_SI ep_vtw ep_vtw_bcast(const float *w) {
    const ep_v v = _mm256_castpd_ps(_mm256_broadcast_sd((const double *)w));
    ep_vtw t = {_mm256_moveldup_ps(v), _mm256_movehdup_ps(v)};
    return t;
}
/* per-lane twiddles w (interleaved), or their conjugates */
EP_SI ep_vtw ep_vtw_of(ep_v w) {
    ep_vtw t = {_mm256_moveldup_ps(w), _mm256_movehdup_ps(w)};
    return t;
}
EP_SI ep_vtw ep_vtw_conj_of(ep_v w) {
    ep_vtw t = {_mm256_moveldup_ps(w), _mm256_xor_ps(_mm256_movehdup_ps(w), _mm256_set1_ps(-0.0f))};
    return t;
}
/* per-lane twiddles given already split: re_dup = (r0, r0, r1, r1, ..), im_dup likewise */
EP_SI ep_vtw ep_vtw_split(ep_v re_dup, ep_v im_dup) {
    ep_vtw t = {re_dup, im_dup};
    return t;
}
/* v * w lane by lane (complex) */
EP_SI ep_v ep_vcmul(ep_v v, ep_vtw w) { return _mm256_fmaddsub_ps(v, w.r, _mm256_mul_ps(ep_vswap(v), w.i)); }
/* a weight prepared for ep_vcmac: real parts duplicated, imaginary parts duplicated with the
 * real lanes negated */
EP_SI ep_vtw ep_vtw_acc_of(ep_v w) {
    ep_vtw t = {_mm256_moveldup_ps(w), _mm256_xor_ps(_mm256_movehdup_ps(w), ep_vsigns(1, 0))};
    return t;
}

/* complex transpose store: for each complex lane c, y0[c] y1[c] y2[c] y3[c] to o + 8c */
EP_SI void ep_vst_ct4(float *o, ep_v y0, ep_v y1, ep_v y2, ep_v y3) {
    const __m256d a = _mm256_castps_pd(y0), b = _mm256_castps_pd(y1);
    const __m256d c = _mm256_castps_pd(y2), d = _mm256_castps_pd(y3);
    const __m256d t0 = _mm256_unpacklo_pd(a, b), t1 = _mm256_unpackhi_pd(a, b);
    const __m256d t2 = _mm256_unpacklo_pd(c, d), t3 = _mm256_unpackhi_pd(c, d);
    double *q = (double *)o;
    _mm256_storeu_pd(q, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(q + 4, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(q + 8, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(q + 12, _mm256_permute2f128_pd(t1, t3, 0x31));
}

#elif defined(__aarch64__) || (defined(__arm__) && defined(__ARM_NEON))
#include <arm_neon.h>
#define EP_VL 4
typedef float32x4_t ep_v;

EP_SI ep_v ep_vld(const float *p) { return vld1q_f32(p); }
EP_SI void ep_vst(float *p, ep_v v) { vst1q_f32(p, v); }
EP_SI ep_v ep_vset1(float x) { return vdupq_n_f32(x); }
EP_SI ep_v ep_vadd(ep_v a, ep_v b) { return vaddq_f32(a, b); }
EP_SI ep_v ep_vsub(ep_v a, ep_v b) { return vsubq_f32(a, b); }
EP_SI ep_v ep_vmul(ep_v a, ep_v b) { return vmulq_f32(a, b); }
#if defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
EP_SI ep_v ep_vfma(ep_v acc, ep_v a, ep_v b) { return vfmaq_f32(acc, a, b); }
#else /* ARMv7 without VFPv4: multiply then add */
EP_SI ep_v ep_vfma(ep_v acc, ep_v a, ep_v b) { return vmlaq_f32(acc, a, b); }
#endif
EP_SI ep_v ep_vbcast(const float *p) { return vld1q_dup_f32(p); }
typedef int ep_vtail; /* the lane count */
EP_SI ep_vtail ep_vtail_of(int n) { return n; }
EP_SI ep_v ep_vld_n(const float *p, ep_vtail n) {
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(t, p, sizeof(float) * (size_t)n);
    return vld1q_f32(t);
}
EP_SI void ep_vst_n(float *p, ep_v v, ep_vtail n) {
    float t[4];
    vst1q_f32(t, v);
    memcpy(p, t, sizeof(float) * (size_t)n);
}

EP_SI ep_v ep_vswap(ep_v v) { return vrev64q_f32(v); }
EP_SI ep_v ep_vcrev(ep_v v) { return vextq_f32(v, v, 2); }
/* signs are +-1 factors here: a multiply (or multiply-add) applies them in one instruction */
EP_SI ep_v ep_vsigns(int re_neg, int im_neg) {
    const float r = re_neg ? -1.0f : 1.0f, i = im_neg ? -1.0f : 1.0f;
    const float s[4] = {r, i, r, i};
    return vld1q_f32(s);
}
EP_SI ep_v ep_vflip(ep_v v, ep_v signs) { return vmulq_f32(v, signs); }
EP_SI ep_v ep_vaddflip(ep_v a, ep_v b, ep_v signs) { return ep_vfma(a, b, signs); }

/* prepared twiddles: real parts duplicated, imaginary parts duplicated with the real lanes
 * negated, so that v * w = v * r + swap(v) * i */
typedef struct { ep_v r, i; } ep_vtw;
#if defined(__aarch64__)
EP_SI ep_v ep_vdup_re(ep_v v) { return vtrn1q_f32(v, v); }
EP_SI ep_v ep_vdup_im(ep_v v) { return vtrn2q_f32(v, v); }
#else
EP_SI ep_v ep_vdup_re(ep_v v) { return vtrnq_f32(v, v).val[0]; }
EP_SI ep_v ep_vdup_im(ep_v v) { return vtrnq_f32(v, v).val[1]; }
#endif
EP_SI ep_vtw ep_vtw_split(ep_v re_dup, ep_v im_dup) {
    ep_vtw t = {re_dup, ep_vflip(im_dup, ep_vsigns(1, 0))};
    return t;
}
EP_SI ep_vtw ep_vtw_bcast(const float *w) {
    const ep_v v = vreinterpretq_f32_u64(vld1q_dup_u64((const uint64_t *)w));
    return ep_vtw_split(ep_vdup_re(v), ep_vdup_im(v));
}
EP_SI ep_vtw ep_vtw_of(ep_v w) { return ep_vtw_split(ep_vdup_re(w), ep_vdup_im(w)); }
EP_SI ep_vtw ep_vtw_conj_of(ep_v w) {
    ep_vtw t = {ep_vdup_re(w), ep_vflip(ep_vdup_im(w), ep_vsigns(0, 1))};
    return t;
}
EP_SI ep_v ep_vcmul(ep_v v, ep_vtw w) { return ep_vfma(vmulq_f32(v, w.r), vrev64q_f32(v), w.i); }
/* ep_vtw_of's form is already the one ep_vcmac needs */
EP_SI ep_vtw ep_vtw_acc_of(ep_v w) { return ep_vtw_of(w); }

EP_SI void ep_vst_ct4(float *o, ep_v y0, ep_v y1, ep_v y2, ep_v y3) {
#if defined(__aarch64__)
#define EP_ZIP64(a, b, n) vreinterpretq_f32_f64(vzip##n##q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)))
    vst1q_f32(o, EP_ZIP64(y0, y1, 1));
    vst1q_f32(o + 4, EP_ZIP64(y2, y3, 1));
    vst1q_f32(o + 8, EP_ZIP64(y0, y1, 2));
    vst1q_f32(o + 12, EP_ZIP64(y2, y3, 2));
#undef EP_ZIP64
#else
    vst1q_f32(o, vcombine_f32(vget_low_f32(y0), vget_low_f32(y1)));
    vst1q_f32(o + 4, vcombine_f32(vget_low_f32(y2), vget_low_f32(y3)));
    vst1q_f32(o + 8, vcombine_f32(vget_high_f32(y0), vget_high_f32(y1)));
    vst1q_f32(o + 12, vcombine_f32(vget_high_f32(y2), vget_high_f32(y3)));
#endif
}

#else
#error "simd.h: no vector mapping for this target (needs AVX2+FMA or NEON)"
#endif

#define EP_VC (EP_VL / 2) /* complex values per vector */

#if !defined(EP_SIMD_REAL_ONLY)
/* acc + v * w lane by lane (complex), w from ep_vtw_acc_of: two multiply-adds */
EP_SI ep_v ep_vcmac(ep_v acc, ep_v v, ep_vtw w) { return ep_vfma(ep_vfma(acc, v, w.r), ep_vswap(v), w.i); }
#endif

#endif
