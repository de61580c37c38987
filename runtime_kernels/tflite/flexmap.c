/* FlexBuffers MAP reader (see flexmap.h). Layout facts (FlexBuffers spec): the last byte of the
 * buffer is the root's byte width, the one before it the root's packed type (type << 2 | log2
 * width); offsets point backwards; a map's values are preceded by [keys offset, keys byte width,
 * count] and followed by one packed-type byte per value; keys are a vector of backward offsets
 * to NUL-terminated strings. */
#include "flexmap.h"

#include <stdio.h>
#include <string.h>

enum {
    FBT_NULL = 0, FBT_INT = 1, FBT_UINT = 2, FBT_FLOAT = 3, FBT_KEY = 4, FBT_STRING = 5,
    FBT_INDIRECT_INT = 6, FBT_INDIRECT_UINT = 7, FBT_INDIRECT_FLOAT = 8, FBT_MAP = 9, FBT_VECTOR = 10,
    FBT_VECTOR_INT = 11, FBT_VECTOR_UINT = 12, FBT_VECTOR_INT2 = 16, FBT_VECTOR_UINT2 = 17,
    FBT_VECTOR_INT3 = 19, FBT_VECTOR_UINT3 = 20, FBT_VECTOR_INT4 = 22, FBT_VECTOR_UINT4 = 23,
    FBT_BLOB = 25, FBT_BOOL = 26,
};

static const char *type_name(unsigned t) {
    switch (t) {
    case FBT_NULL: return "null";
    case FBT_INT: case FBT_INDIRECT_INT: return "int";
    case FBT_UINT: case FBT_INDIRECT_UINT: return "uint";
    case FBT_FLOAT: case FBT_INDIRECT_FLOAT: return "float";
    case FBT_KEY: return "key";
    case FBT_STRING: return "string";
    case FBT_MAP: return "map";
    case FBT_BLOB: return "blob";
    case FBT_BOOL: return "bool";
    default: return t >= FBT_VECTOR && t <= 36 ? "vector" : "unknown type";
    }
}

static int width_ok(size_t w) { return w == 1 || w == 2 || w == 4 || w == 8; }

/* Unsigned little-endian read of w bytes at pos; 0 when out of bounds. */
static int rd_u(const fx_map *m, size_t pos, size_t w, uint64_t *v) {
    if (!width_ok(w) || pos > m->len || w > m->len - pos) return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < w; i++) x |= (uint64_t)m->buf[pos + i] << (8 * i);
    *v = x;
    return 1;
}

static int rd_i(const fx_map *m, size_t pos, size_t w, int64_t *v) {
    uint64_t u;
    if (!rd_u(m, pos, w, &u)) return 0;
    if (w < 8 && (u >> (8 * w - 1)) & 1) u |= ~(uint64_t)0 << (8 * w); /* sign-extend */
    memcpy(v, &u, sizeof u);
    return 1;
}

/* Follow the backward offset stored at pos (width w). */
static int deref(const fx_map *m, size_t pos, size_t w, size_t *target) {
    uint64_t off;
    if (!rd_u(m, pos, w, &off) || off > pos) return 0;
    *target = pos - (size_t)off;
    return 1;
}

#define WHY(...) (snprintf(why, cap, __VA_ARGS__), FX_MALFORMED)

fx_result fx_map_open(const void *buf, size_t len, fx_map *m, char *why, size_t cap) {
    memset(m, 0, sizeof *m);
    m->buf = (const uint8_t *)buf;
    m->len = len;
    if (!buf || len < 3) return WHY("custom options are %zu bytes; a FlexBuffers map needs more", len);
    const size_t rbw = m->buf[len - 1];
    const unsigned rtype = m->buf[len - 2];
    if (!width_ok(rbw) || rbw > len - 2) return WHY("custom options: bad root byte width %zu", rbw);
    if ((rtype >> 2) != FBT_MAP)
        return WHY("custom options: root is a FlexBuffers %s, must be a map", type_name(rtype >> 2));
    size_t data, kf;
    uint64_t n, kbw, nk;
    m->bw = (size_t)1 << (rtype & 3);
    if (!deref(m, len - 2 - rbw, rbw, &data) || data < 3 * m->bw || !rd_u(m, data - m->bw, m->bw, &n) ||
        !rd_u(m, data - 2 * m->bw, m->bw, &kbw) || !width_ok((size_t)kbw) || !deref(m, data - 3 * m->bw, m->bw, &kf))
        return WHY("custom options: map header out of bounds (truncated or not FlexBuffers)");
    if (n > len || data + n * m->bw + n > len)
        return WHY("custom options: map of %llu entries overruns the %zu-byte buffer", (unsigned long long)n, len);
    m->data = data;
    m->n = (size_t)n;
    m->keys = kf;
    m->kbw = (size_t)kbw;
    if (kf < m->kbw || !rd_u(m, kf - m->kbw, m->kbw, &nk) || nk != n || m->n * m->kbw > len - kf)
        return WHY("custom options: map keys vector out of bounds or of the wrong length");
    for (size_t i = 0; i < m->n; i++) {
        size_t s;
        if (!deref(m, kf + i * m->kbw, m->kbw, &s) || !memchr(m->buf + s, 0, len - s))
            return WHY("custom options: map key %zu is not a NUL-terminated string inside the buffer", i);
    }
    return FX_OK;
}

/* Slot index of key, or -1. */
static long find(const fx_map *m, const char *key) {
    for (size_t i = 0; i < m->n; i++) {
        size_t s;
        if (deref(m, m->keys + i * m->kbw, m->kbw, &s) && !strcmp((const char *)m->buf + s, key)) return (long)i;
    }
    return -1;
}

/* A scalar int stored inline (width w) or indirectly (width cw) at pos. */
static fx_result scalar(const fx_map *m, unsigned t, size_t pos, size_t w, size_t cw, int64_t *out) {
    uint64_t u;
    size_t p = pos;
    if (t == FBT_INDIRECT_INT || t == FBT_INDIRECT_UINT) {
        if (!deref(m, pos, w, &p)) return FX_MALFORMED;
        w = cw;
    }
    switch (t) {
    case FBT_INT: case FBT_INDIRECT_INT: return rd_i(m, p, w, out) ? FX_OK : FX_MALFORMED;
    case FBT_UINT: case FBT_INDIRECT_UINT: case FBT_BOOL:
        if (!rd_u(m, p, w, &u)) return FX_MALFORMED;
        if (u > (uint64_t)INT64_MAX) return FX_WRONG_TYPE;
        *out = (int64_t)u;
        return FX_OK;
    default: return FX_WRONG_TYPE;
    }
}

fx_result fx_map_int(const fx_map *m, const char *key, int64_t *out, char *why, size_t cap) {
    long i = find(m, key);
    if (i < 0) return FX_MISSING;
    const unsigned pt = m->buf[m->data + m->n * m->bw + (size_t)i], t = pt >> 2;
    fx_result r = scalar(m, t, m->data + (size_t)i * m->bw, m->bw, (size_t)1 << (pt & 3), out);
    if (r == FX_WRONG_TYPE) snprintf(why, cap, "is a FlexBuffers %s, must be an int", type_name(t));
    if (r == FX_MALFORMED) snprintf(why, cap, "has an out-of-bounds value");
    return r;
}

fx_result fx_map_ints(const fx_map *m, const char *key, int64_t *out, size_t max, size_t *n, char *why, size_t cap) {
    long i = find(m, key);
    if (i < 0) return FX_MISSING;
    const unsigned pt = m->buf[m->data + m->n * m->bw + (size_t)i], t = pt >> 2;
    const size_t cw = (size_t)1 << (pt & 3);
    size_t p;
    uint64_t cnt = 0;
    unsigned et = FBT_INT;
    switch (t) {
    case FBT_VECTOR_INT2: case FBT_VECTOR_UINT2: cnt = 2; break;
    case FBT_VECTOR_INT3: case FBT_VECTOR_UINT3: cnt = 3; break;
    case FBT_VECTOR_INT4: case FBT_VECTOR_UINT4: cnt = 4; break;
    case FBT_VECTOR_INT: case FBT_VECTOR_UINT: case FBT_VECTOR: break;
    default: snprintf(why, cap, "is a FlexBuffers %s, must be a vector of ints", type_name(t)); return FX_WRONG_TYPE;
    }
    if (t == FBT_VECTOR_UINT || t == FBT_VECTOR_UINT2 || t == FBT_VECTOR_UINT3 || t == FBT_VECTOR_UINT4) et = FBT_UINT;
    if (!deref(m, m->data + (size_t)i * m->bw, m->bw, &p) ||
        (!cnt && (p < cw || !rd_u(m, p - cw, cw, &cnt))) || cnt > m->len || p + cnt * cw > m->len ||
        (t == FBT_VECTOR && p + cnt * cw + cnt > m->len)) {
        snprintf(why, cap, "has an out-of-bounds vector");
        return FX_MALFORMED;
    }
    if (cnt > max) {
        *n = (size_t)cnt;
        snprintf(why, cap, "has %llu values; at most %zu are supported", (unsigned long long)cnt, max);
        return FX_WRONG_TYPE;
    }
    for (size_t k = 0; k < cnt; k++) {
        if (t == FBT_VECTOR) et = m->buf[p + (size_t)cnt * cw + k] >> 2;
        if (et != FBT_INT && et != FBT_UINT) {
            snprintf(why, cap, "element %zu is a FlexBuffers %s, must be an int", k, type_name(et));
            return FX_WRONG_TYPE;
        }
        fx_result r = scalar(m, et, p + k * cw, cw, cw, &out[k]);
        if (r) {
            snprintf(why, cap, r == FX_MALFORMED ? "has an out-of-bounds element %zu" : "element %zu is too large", k);
            return r;
        }
    }
    *n = (size_t)cnt;
    return FX_OK;
}

const char *fx_map_kind(const fx_map *m, const char *key) {
    long i = find(m, key);
    if (i < 0) return NULL;
    switch (m->buf[m->data + m->n * m->bw + (size_t)i] >> 2) {
    case FBT_INT: case FBT_INDIRECT_INT: case FBT_UINT: case FBT_INDIRECT_UINT: case FBT_BOOL: return "int";
    case FBT_FLOAT: case FBT_INDIRECT_FLOAT: return "float";
    case FBT_KEY: case FBT_STRING: return "string";
    case FBT_VECTOR_INT: case FBT_VECTOR_UINT: case FBT_VECTOR_INT2: case FBT_VECTOR_UINT2: case FBT_VECTOR_INT3:
    case FBT_VECTOR_UINT3: case FBT_VECTOR_INT4: case FBT_VECTOR_UINT4: return "ints";
    case 13: case 18: case 21: case 24: return "floats"; /* typed float vectors */
    case FBT_VECTOR: return "a list";
    case FBT_MAP: return "a map";
    case FBT_NULL: return "null";
    default: return "another FlexBuffers type";
    }
}
