/* What the native runners (runner.c, kws_stream.c) share: error exits as one JSON line or one
 * stderr line, ORT status checks, the clock, and loading ONNX Runtime's C API with dlopen. */
#ifndef EDGEPACK_RUNNER_COMMON_H
#define EDGEPACK_RUNNER_COMMON_H

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ort_abi.h"

static const OrtApi *api;
static const char *program = "edgepack";  /* the name on stderr error lines */
static int json_errors;                  /* 1: errors are {"status": "error", ...} lines on stdout */

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if it is not one. */
static int utf8_length(const unsigned char *s) {
    int n = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

/* Messages can quote bytes from a corrupt model file: anything that is not well-formed UTF-8 is
 * written as \ufffd, so the output stays valid JSON. */
static void json_string(FILE *out, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    fputc('"', out);
    while (*s) {
        if (*s == '"' || *s == '\\') fprintf(out, "\\%c", *s++);
        else if (*s < 0x20) fprintf(out, "\\u%04x", *s++);
        else if (*s < 0x80) fputc(*s++, out);
        else {
            int n = utf8_length(s);
            if (n) { fwrite(s, 1, (size_t)n, out); s += n; }
            else { fputs("\\ufffd", out); s++; }
        }
    }
    fputc('"', out);
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static _Noreturn void die(int code, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (json_errors) {
        fputs("{\"status\": \"error\", \"error\": ", stdout);
        json_string(stdout, msg);
        fputs("}\n", stdout);
        fflush(stdout);
    } else {
        fprintf(stderr, "%s: %s\n", program, msg);
    }
    exit(code);
}

static void check(OrtStatus *st, const char *what) {
    if (!st) return;
    char msg[1800];
    snprintf(msg, sizeof msg, "%s", OrtGetErrorMessage(api)(st));
    OrtReleaseStatus(api)(st);
    die(1, "%s: %s", what, msg);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die(1, "out of memory");
    return p;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* dlopen libonnxruntime at `path`, set `api`; returns ORT's version string. */
static const char *load_ort(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) die(1, "dlopen %s: %s", path, dlerror());
    const OrtApiBase *(*get_base)(void) = NULL;
    *(void **)&get_base = dlsym(h, "OrtGetApiBase");
    if (!get_base) die(1, "OrtGetApiBase not found in %s", path);
    const OrtApiBase *base = get_base();
    const char *version = base->GetVersionString();
    api = base->GetApi(EP_ORT_API_VERSION);
    if (!api) die(1, "ORT %s lacks C API %d", version, EP_ORT_API_VERSION);
    return version;
}

#endif
