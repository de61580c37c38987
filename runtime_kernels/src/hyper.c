/* Hyper-compressed weights (kernels.h, docs/ops.md HyperWeight): the checks of the compressed form
 * and its decoder. The points are computed in float32 with each operation rounded, in the
 * contract's order, so this file is built with -ffp-contract=off (CMake, fuzz/build.sh) and writes
 * every product and sum as its own statement. A table of the (R+1)*(n+1) points is built once when
 * it is smaller than the groups, then the variant's hyper_gather unpacks and copies; otherwise each
 * group's point is computed from its index (the same operations, so the same values). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HY_CHUNK ((int64_t)1 << 14) /* groups per parallel task: a multiple of 8, so a byte boundary */

/* g, the stored groups: ceil(weights / group) */
static int64_t groups_of(const ep_hyper *w) { return w->weights / w->group + (w->weights % w->group != 0); }

static ep_status check_range(const char *name, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return EP_OK;
    return ep_fail(EP_ERR_ARG, "attribute '%s' = %lld; must be in [%lld, %lld]", name, (long long)v, (long long)lo,
                   (long long)hi);
}

ep_status ep_hyper_check_sizes(const ep_hyper *w) {
    if (!w) return ep_fail(EP_ERR_NULL, "ep_hyper_check: the hyper weight is NULL");
    ep_status s;
    if ((s = check_range("points", w->points, 1, EP_HYPER_MAX_POINTS)) ||
        (s = check_range("group", w->group, 1, EP_HYPER_MAX_GROUP)) ||
        (s = check_range("rings", w->rings, 0, EP_HYPER_MAX_RINGS)) ||
        (s = check_range("bits", w->bits, 1, EP_HYPER_MAX_BITS)))
        return s;
    if (w->weights < 1 || w->weights > INT64_MAX / 32)
        return ep_fail(EP_ERR_SIZE, "the weight has %lld values; must have 1..%lld", (long long)w->weights,
                       (long long)(INT64_MAX / 32));
    const int64_t g = groups_of(w), need = (g * w->bits + 7) / 8;
    if (w->indices_len != need)
        return ep_fail(EP_ERR_SIZE, "input 'indices' has %lld bytes; %lld groups of %d bits need ceil(%lld*%d/8) = "
                       "%lld (%s)", (long long)w->indices_len, (long long)g, w->bits, (long long)g, w->bits,
                       (long long)need, w->indices_len < need ? "truncated packed indices"
                                                              : "more bytes than the packed indices");
    if (w->center_len != w->group)
        return ep_fail(EP_ERR_SIZE, "input 'center' has %lld values; must be [group] = [%d]", (long long)w->center_len,
                       w->group);
    if (w->side_len != 1)
        return ep_fail(EP_ERR_SIZE, "input 'side' has %lld values; must be [1]", (long long)w->side_len);
    const int has_scales = w->has_scales && w->scales_len > 0; /* a zero-length scales counts as absent */
    if (w->rings > 0 && !has_scales)
        return ep_fail(EP_ERR_ARG, "input 'scales' is missing; rings = %d needs [rings] = [%d] expansion factors",
                       w->rings, w->rings);
    if (w->rings == 0 && has_scales)
        return ep_fail(EP_ERR_ARG, "input 'scales' is given but rings = 0; it must be absent when rings = 0");
    if (has_scales && w->scales_len != w->rings)
        return ep_fail(EP_ERR_SIZE, "input 'scales' has %lld values; must be [rings] = [%d]", (long long)w->scales_len,
                       w->rings);
    return EP_OK;
}

/* the largest index plus one: (rings+1)*(points+1) */
static int64_t entries_of(const ep_hyper *w) { return ((int64_t)w->rings + 1) * ((int64_t)w->points + 1); }

static ep_status check_indices(const ep_hyper *w) {
    const int64_t g = groups_of(w), len = w->indices_len, limit = entries_of(w);
    const int used = (int)((g * w->bits) & 7);
    if (used && (w->indices[len - 1] >> used))
        return ep_fail(EP_ERR_ARG, "input 'indices': the unused high bits of its last byte (byte %lld = 0x%02x) "
                       "must be 0 (%lld groups of %d bits)", (long long)(len - 1), w->indices[len - 1], (long long)g,
                       w->bits);
    if (limit >= (1ll << w->bits)) return EP_OK; /* no index can reach past the table */
    for (int64_t m = 0; m < g; m++) {
        const uint32_t v = ep_hyper_index(w->indices, len, m, w->bits);
        if (v >= (uint64_t)limit)
            return ep_fail(EP_ERR_ARG, "input 'indices': group %lld has index %u; every index must be < "
                           "(rings+1)*(points+1) = %lld", (long long)m, v, (long long)limit);
    }
    return EP_OK;
}

ep_status ep_hyper_check(const ep_hyper *w) {
    ep_status s = ep_hyper_check_sizes(w);
    if (s) return s;
    if (!w->indices || !w->center || !w->side || (w->rings && !w->scales))
        return ep_fail(EP_ERR_NULL, "ep_hyper_check: indices, center, side or scales is NULL");
    for (int j = 0; j < w->group; j++)
        if (!isfinite(w->center[j]))
            return ep_fail(EP_ERR_ARG, "input 'center': value %d is %g; must be finite", j, (double)w->center[j]);
    if (!isfinite(w->side[0]) || !(w->side[0] > 0.0f))
        return ep_fail(EP_ERR_ARG, "input 'side' is %g; must be finite and > 0", (double)w->side[0]);
    const float span = w->side[0] * (float)w->points; /* bounds every theta*step */
    if (!isfinite(span))
        return ep_fail(EP_ERR_ARG, "input 'side' is %g; side*points overflows float32 (must be <= %g for %d points)",
                       (double)w->side[0], (double)(FLT_MAX / (float)w->points), w->points);
    for (int r = 0; r < w->rings; r++)
        if (!isfinite(w->scales[r]) || !(w->scales[r] > 0.0f))
            return ep_fail(EP_ERR_ARG, "input 'scales': value %d is %g; must be finite and > 0", r,
                           (double)w->scales[r]);
    return check_indices(w);
}

/* The trajectory's constants: c, corner_j = c_j - L*0.5f, step_j = L / (float)t^(k-j). */
typedef struct hy_geom {
    int k;
    uint32_t n1; /* points + 1 */
    float L, c[EP_HYPER_MAX_GROUP], corner[EP_HYPER_MAX_GROUP], step[EP_HYPER_MAX_GROUP];
    const float *scales;
} hy_geom;

static hy_geom geom_of(const ep_hyper *w) {
    hy_geom g;
    memset(&g, 0, sizeof g);
    g.k = w->group;
    g.n1 = (uint32_t)w->points + 1u;
    g.L = w->side[0];
    g.scales = w->scales;
    /* the smallest t >= 1 with t^k >= n: from the float root, then corrected in integers */
    int64_t t = (int64_t)pow((double)w->points, 1.0 / g.k) - 1;
    if (t < 1) t = 1;
    for (;; t++) {
        int64_t tk = 1;
        for (int j = 0; j < g.k; j++) tk *= t;
        if (tk >= w->points) break;
    }
    const float half = g.L * 0.5f;
    for (int j = 0; j < g.k; j++) {
        int64_t pw = 1;
        for (int e = 0; e < g.k - j; e++) pw *= t;
        g.c[j] = w->center[j];
        g.corner[j] = g.c[j] - half;
        g.step[j] = g.L / (float)pw;
    }
    return g;
}

/* the k values of index v */
static void point_of(const hy_geom *g, uint32_t v, float *out) {
    const uint32_t r = v / g->n1, q = v % g->n1;
    if (q == 0) {
        memcpy(out, g->c, sizeof(float) * (size_t)g->k);
    } else {
        const float theta = (float)(q - 1u);
        for (int j = 0; j < g->k; j++) {
            const float a = theta * g->step[j];
            const float m = fmodf(a, g->L);
            out[j] = m + g->corner[j];
        }
    }
    if (r == 0) return;
    const float s = g->scales[r - 1];
    for (int j = 0; j < g->k; j++) {
        const float d = out[j] - g->c[j];
        const float e = d * s;
        out[j] = e + g->c[j];
    }
}

typedef struct hy_job {
    const ep_ops *o;
    const ep_hyper *w;
    const float *table;
    int64_t full; /* whole groups */
    float *W;
} hy_job;

static void gather_task(void *ctx, int64_t task, int worker) {
    (void)worker;
    const hy_job *j = (const hy_job *)ctx;
    const int64_t m0 = task * HY_CHUNK, count = j->full - m0 < HY_CHUNK ? j->full - m0 : HY_CHUNK;
    const int64_t byte = m0 * j->w->bits / 8; /* m0 is a multiple of 8 */
    j->o->hyper_gather(count, j->w->indices + byte, j->w->indices_len - byte, j->w->bits, j->w->group, j->table,
                       j->W + m0 * j->w->group);
}

ep_status ep_hyper_decode(const ep_hyper *w, float *W) {
    ep_status s = ep_hyper_check(w);
    if (s) return s;
    if (!W) return ep_fail(EP_ERR_NULL, "ep_hyper_decode: W is NULL (need %lld floats)", (long long)w->weights);
    const hy_geom g = geom_of(w);
    const int k = w->group;
    const int64_t groups = groups_of(w), full = w->weights / k, entries = entries_of(w);
    float last[EP_HYPER_MAX_GROUP];
    if (full < groups) { /* the last group's padding is dropped */
        point_of(&g, ep_hyper_index(w->indices, w->indices_len, full, w->bits), last);
        memcpy(W + full * k, last, sizeof(float) * (size_t)(w->weights - full * k));
    }
    if (entries > full) { /* fewer groups than table points: each point from its index */
        for (int64_t m = 0; m < full; m++) point_of(&g, ep_hyper_index(w->indices, w->indices_len, m, w->bits), W + m * k);
        return EP_OK;
    }
    float *table = (float *)malloc(sizeof(float) * (size_t)(entries * k));
    if (!table)
        return ep_fail(EP_ERR_NOMEM, "ep_hyper_decode: cannot allocate the table of %lld points", (long long)entries);
    for (int64_t v = 0; v < entries; v++) point_of(&g, (uint32_t)v, table + v * k);
    hy_job job = {ep_active_ops(), w, table, full, W};
    const int64_t tasks = (full + HY_CHUNK - 1) / HY_CHUNK;
    ep_parallel_for(ep_threads_for(full * k, tasks), tasks, gather_task, &job);
    free(table);
    return EP_OK;
}
