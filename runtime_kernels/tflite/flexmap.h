/* A small bounds-checked reader for a FlexBuffers MAP of ints / int vectors (TFLite
 * custom_options). Every offset is checked against the buffer size before it is read. */
#ifndef EDGEPACK_FLEXMAP_H
#define EDGEPACK_FLEXMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct fx_map {
    const uint8_t *buf;
    size_t len;
    size_t data; /* first value slot */
    size_t bw;   /* byte width of the value slots */
    size_t n;    /* number of entries */
    size_t keys; /* first key slot */
    size_t kbw;  /* byte width of the key slots */
} fx_map;

typedef enum fx_result { FX_OK = 0, FX_MISSING = 1, FX_WRONG_TYPE = 2, FX_MALFORMED = 3 } fx_result;

/* Open the root map. On failure returns FX_MALFORMED and writes why into why[cap]. */
fx_result fx_map_open(const void *buf, size_t len, fx_map *m, char *why, size_t cap);
/* An int (INT, UINT, BOOL or their indirect forms). */
fx_result fx_map_int(const fx_map *m, const char *key, int64_t *out, char *why, size_t cap);
/* A vector of ints (typed, fixed-size typed, or untyped with int elements) of at most max values;
 * with more, FX_WRONG_TYPE with *n set to the count. */
fx_result fx_map_ints(const fx_map *m, const char *key, int64_t *out, size_t max, size_t *n, char *why, size_t cap);
/* What key holds, in ONNX attribute words ("int", "float", "string", "ints", "floats", "a list",
 * ...), or NULL when the map has no such key. */
const char *fx_map_kind(const fx_map *m, const char *key);

#endif /* EDGEPACK_FLEXMAP_H */
