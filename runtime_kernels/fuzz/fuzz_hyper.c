/* libFuzzer harness: the hyper-compressed weights of edgepack/kernels.h (ep_hyper_check, _decode)
 * on arbitrary bytes: the weight count, points, group, rings, bits, every input's length, the
 * packed indices and the float inputs (any bit pattern: NaN, Inf, negative, subnormal) all come
 * from the input, consistent or not. Checked two ways:
 *  - an independent model of the contract (docs/ops.md HyperWeight) says whether the weight is
 *    valid; ep_hyper_check must agree, and an invalid weight must leave W untouched (every buffer
 *    is allocated exactly as large as its length says, so ASan catches any touch beyond);
 *  - a valid weight decodes under every variant bit for bit to the harness's own decode (each
 *    float operation rounded on its own: volatile, never fused). */
#include "fuzz_common.h"
#include "fuzz_variants.h"

#include <math.h>

#include "edgepack/kernels.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_load_variants();
    return 0;
}

/* index m of the bit stream, bit by bit */
static uint32_t index_at(const uint8_t *s, int64_t m, int bits) {
    uint32_t v = 0;
    for (int i = 0; i < bits; i++) {
        const int64_t b = m * bits + i;
        v |= (uint32_t)(s[b / 8] >> (b % 8) & 1u) << i;
    }
    return v;
}

static int64_t groups(const ep_hyper *w) { return (w->weights + w->group - 1) / w->group; }

/* The contract, written again: 1 when w is a valid hyper weight. */
static int model_valid(const ep_hyper *w) {
    if (w->points < 1 || w->points > 65536 || w->group < 1 || w->group > 4 || w->rings < 0 || w->rings > 15 ||
        w->bits < 1 || w->bits > 24 || w->weights < 1)
        return 0;
    const int64_t g = groups(w), limit = ((int64_t)w->rings + 1) * ((int64_t)w->points + 1);
    if (w->indices_len != (g * w->bits + 7) / 8 || w->center_len != w->group || w->side_len != 1) return 0;
    const int has_scales = w->has_scales && w->scales_len > 0; /* a zero-length scales is absent */
    if (has_scales != (w->rings > 0) || (has_scales && w->scales_len != w->rings)) return 0;
    for (int j = 0; j < w->group; j++)
        if (!isfinite(w->center[j])) return 0;
    if (!isfinite(w->side[0]) || !(w->side[0] > 0.0f)) return 0;
    volatile float span = w->side[0] * (float)w->points;
    if (!isfinite(span)) return 0;
    for (int r = 0; r < w->rings; r++)
        if (!isfinite(w->scales[r]) || !(w->scales[r] > 0.0f)) return 0;
    if ((g * w->bits) % 8 && w->indices[w->indices_len - 1] >> ((g * w->bits) % 8)) return 0;
    for (int64_t m = 0; m < g; m++)
        if (index_at(w->indices, m, w->bits) >= (uint64_t)limit) return 0;
    return 1;
}

/* W from a valid weight, by the contract's words */
static void model_decode(const ep_hyper *w, float *W) {
    const int k = w->group;
    int64_t t = 1;
    for (;; t++) {
        int64_t p = 1;
        for (int j = 0; j < k; j++) p *= t;
        if (p >= w->points) break;
    }
    const float L = w->side[0];
    volatile float half = L * 0.5f;
    for (int64_t m = 0; m < groups(w); m++) {
        const uint32_t v = index_at(w->indices, m, w->bits), n1 = (uint32_t)w->points + 1u;
        const uint32_t r = v / n1, q = v % n1;
        for (int j = 0; j < k && m * k + j < w->weights; j++) {
            int64_t pw = 1;
            for (int e = 0; e < k - j; e++) pw *= t;
            volatile float c = w->center[j], corner = c - half, step = L / (float)pw, p = c;
            if (q) {
                volatile float a = (float)(q - 1u) * step;
                volatile float f = fmodf(a, L);
                p = f + corner;
            }
            if (r) {
                volatile float d = p - c;
                volatile float e = d * w->scales[r - 1];
                p = e + c;
            }
            W[m * k + j] = p;
        }
    }
}

/* a float from the input: any bit pattern (raw), else a tame value from make(byte) */
static float read_float(fz *f, int raw, float base, float scale) {
    if (raw) {
        const uint32_t u = fz_u32(f);
        float x;
        memcpy(&x, &u, 4);
        return x;
    }
    return base + (float)fz_u8(f) * scale;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz f = {data, size};
    const uint8_t flags = fz_u8(&f), more = fz_u8(&f);
    ep_hyper w;
    memset(&w, 0, sizeof w);
    w.weights = more & 1 ? (int64_t)(int16_t)fz_u16(&f) : 1 + fz_u16(&f) % 4096;
    w.points = flags & 1 ? (int32_t)fz_u32(&f) : 1 + fz_u16(&f) % 65536;
    w.group = flags & 2 ? (int8_t)fz_u8(&f) : 1 + fz_u8(&f) % 4;
    w.rings = flags & 2 ? (int8_t)fz_u8(&f) : fz_u8(&f) % 16;
    const int64_t limit = (w.rings >= 0 && w.rings <= 15 && w.points >= 1 && w.points <= 65536)
                              ? ((int64_t)w.rings + 1) * ((int64_t)w.points + 1) : 2;
    int need_bits = 1;
    while (((int64_t)1 << need_bits) < limit) need_bits++;
    w.bits = flags & 4 ? (int8_t)fz_u8(&f) : need_bits + fz_u8(&f) % 3;
    if (!(flags & 4) && w.bits > 24) w.bits = 24;
    const int raw = (flags & 16) != 0, k = w.group >= 1 && w.group <= 4 ? w.group : 2;
    w.center_len = flags & 8 ? fz_u8(&f) % 6 : k;
    float *center = (float *)fz_alloc(sizeof(float) * (size_t)w.center_len);
    for (int64_t j = 0; j < w.center_len; j++) center[j] = read_float(&f, raw && (more & 2), -1.0f, 1.0f / 128.0f);
    w.side_len = flags & 8 ? fz_u8(&f) % 3 : 1;
    float *side = (float *)fz_alloc(sizeof(float) * (size_t)w.side_len);
    for (int64_t j = 0; j < w.side_len; j++) side[j] = read_float(&f, raw && (more & 4), 1.0f / 64.0f, 1.0f / 32.0f);
    w.has_scales = flags & 32 ? fz_u8(&f) & 1 : w.rings > 0;
    float *scales = NULL;
    if (w.has_scales) {
        w.scales_len = flags & 8 ? fz_u8(&f) % 17 : (w.rings > 0 ? w.rings : 0);
        scales = (float *)fz_alloc(sizeof(float) * (size_t)w.scales_len);
        for (int64_t r = 0; r < w.scales_len; r++) scales[r] = read_float(&f, raw && (more & 8), 1.0f, 1.0f / 64.0f);
    }
    const int bits_for_len = w.bits >= 1 && w.bits <= 24 ? w.bits : 8;
    const int64_t g = w.weights >= 1 ? (w.weights + k - 1) / k : 0, need = (g * bits_for_len + 7) / 8;
    w.indices_len = need + (flags & 64 ? (int64_t)(fz_u8(&f) % 5) - 2 : 0);
    if (w.indices_len < 0) w.indices_len = 0;
    uint8_t *ind = (uint8_t *)fz_alloc((size_t)w.indices_len);
    memset(ind, 0, (size_t)w.indices_len);
    if (flags & 128) {
        for (int64_t b = 0; b < w.indices_len; b++) ind[b] = fz_u8(&f);
    } else { /* indices below the limit, some at it (out of range) when more & 16 */
        for (int64_t m = 0; m < g; m++) {
            uint32_t v = (uint32_t)(fz_u32(&f) % (uint64_t)limit);
            if ((more & 16) && m == g / 2) v = (uint32_t)limit;
            for (int i = 0; i < bits_for_len; i++)
                if (v >> i & 1u && (m * bits_for_len + i) / 8 < w.indices_len)
                    ind[(m * bits_for_len + i) / 8] |= (uint8_t)(1u << ((m * bits_for_len + i) % 8));
        }
    }
    w.indices = ind;
    w.center = center;
    w.side = side;
    w.scales = scales;

    const int valid = w.weights >= 1 && model_valid(&w);
    const ep_status s = ep_hyper_check(&w);
    FZ_ASSERT((s == EP_OK) == valid, "check says %d (%s), the contract says valid=%d", (int)s, ep_last_error(), valid);
    const int64_t total = w.weights > 0 ? w.weights : 0;
    float *W = (float *)fz_alloc(sizeof(float) * (size_t)total), *want = (float *)fz_alloc(sizeof(float) * (size_t)total);
    for (int64_t i = 0; i < total; i++) W[i] = 7.0f;
    if (!valid) {
        const ep_status d = ep_hyper_decode(&w, W);
        FZ_ASSERT(d == s, "decode status %d, check status %d", (int)d, (int)s);
        for (int64_t i = 0; i < total; i++) FZ_ASSERT(W[i] == 7.0f, "an invalid weight wrote W[%lld]", (long long)i);
    } else {
        model_decode(&w, want);
        for (int v = 0; v < g_nvar; v++) {
            FZ_ASSERT(ep_set_variant(g_variants[v]) == EP_OK, "variant %s", g_variants[v]);
            FZ_ASSERT(ep_hyper_decode(&w, W) == EP_OK, "decode of a valid weight: %s", ep_last_error());
            FZ_ASSERT(!memcmp(W, want, sizeof(float) * (size_t)total), "%s: decode differs from the contract's",
                      g_variants[v]);
        }
        ep_set_variant("auto");
    }
    free(W); free(want); free(center); free(side); free(scales); free(ind);
    return 0;
}
