/* What the native runners (runner.c, kws_stream.c) share: error exits as one JSON line or one
 * stderr line, ORT status checks, the clock, peak RSS, loading ONNX Runtime's C API with dlopen, and
 * the session, decoded at load (decode_model.c) or run on the fused custom ops (--keep-fused). */
#ifndef EDGEPACK_RUNNER_COMMON_H
#define EDGEPACK_RUNNER_COMMON_H

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "decode_model.h"
#include "ort_abi.h"

/* not declared in ort_abi.h: slot 8 of API 1 and slot 210, the first of API 12 */
typedef OrtStatus *(*ort_CreateSessionFromArray_fn)(const OrtEnv *, const void *, size_t, const OrtSessionOptions *,
                                                    OrtSession **);
typedef OrtStatus *(*ort_AddExternalInitializers_fn)(OrtSessionOptions *, const char *const *,
                                                     const OrtValue *const *, size_t);
#define OrtCreateSessionFromArray(a) ORT_SLOT(a, 8, ort_CreateSessionFromArray_fn)
#define OrtAddExternalInitializers(a) ORT_SLOT(a, 210, ort_AddExternalInitializers_fn)

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

/* VmRSS or VmHWM of this process in kB (0 where /proc is not there) */
static long rss_kb(const char *field) {
    char line[256];
    long kb = 0;
    size_t n = strlen(field);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') { kb = strtol(line + n + 1, NULL, 10); break; }
    fclose(f);
    return kb;
}

/* The model file decoded at load into *d (d->model stays NULL when it has nothing to decode, or is
 * no protobuf: ORT then says why it refuses the file). The file is mapped, not read: the rewrite
 * skips over the bytes it copies or drops unread. */
static void decode_at_load(const char *model, ep_onnx_decoded *d) {
    struct stat st;
    const int fd = open(model, O_RDONLY);
    if (fd < 0) die(1, "%s: cannot open the model: %s", model, strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size <= 0 || (unsigned long long)st.st_size > SIZE_MAX) {
        close(fd);
        die(1, "%s: not a non-empty regular file (expected an ONNX model)", model);
    }
    const size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die(1, "%s: cannot map the model: %s", model, strerror(errno));
    char dir[4096];
    const char *slash = strrchr(model, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if ((size_t)(slash - model) >= sizeof dir) die(1, "%s: the model's folder name is too long", model);
    else snprintf(dir, sizeof dir, "%.*s", slash == model ? 1 : (int)(slash - model), model);
    ep_limits lim;
    char msg[1536];
    if (ep_limits_from_env(&lim)) die(2, "%s", ep_last_error());
    const int failed = ep_onnx_decode_model((const uint8_t *)map, size, dir, &lim, d, msg, sizeof msg);
    munmap(map, size);
    if (failed == 1) die(1, "%s: decode at load: %s (--keep-fused runs the file on the edgepack kernels)", model, msg);
}

/* An ORT session on a model, and what decoding at load left that must outlive it. */
typedef struct {
    OrtSession *sess;
    int decode;              /* decode at load was on (custom ops given and no --keep-fused) */
    ep_onnx_decoded decoded; /* decoded.n_decoded: the nodes decoded (0 when off or nothing to decode) */
    OrtValue **weights;      /* the decoded and external initializers handed to ORT */
} RunnerSession;

/* Open `model` with options `so` (custom ops already registered). With decode (the default with
 * custom ops, as onnx_session(decode_at_load=True)), HashedWeight and expand-mode HashedMatMul nodes
 * with constant weights are decoded once in C (`threads` kernel threads, within
 * $EDGEPACK_MAX_VIRTUAL_WEIGHTS / $EDGEPACK_MAX_DECODED_BYTES) and ORT runs the rewritten model on its
 * own dense kernels; without, the file runs as it is, on the fused custom ops. */
static void open_session(RunnerSession *s, OrtEnv *env, OrtSessionOptions *so, OrtMemoryInfo *mem,
                         const char *model, int decode, int threads) {
    memset(s, 0, sizeof *s);
    s->decode = decode;
    if (decode) {
        ep_set_num_threads(threads > 0 ? threads : 1);
        decode_at_load(model, &s->decoded);
    }
    if (!s->decoded.model) {
        check(OrtCreateSession(api)(env, model, so, &s->sess), "CreateSession");
        return;
    }
    const size_t n = s->decoded.n_initializers;
    const char **names = xcalloc(n, sizeof *names);
    s->weights = xcalloc(n, sizeof *s->weights);
    for (size_t i = 0; i < n; i++) {
        ep_onnx_initializer *w = &s->decoded.initializers[i];
        names[i] = w->name;
        check(OrtCreateTensorWithDataAsOrtValue(api)(mem, w->data, w->bytes, w->dims, w->rank,
                                                     (ONNXTensorElementDataType)w->data_type, &s->weights[i]),
              "CreateTensorWithDataAsOrtValue");
    }
    if (n) check(OrtAddExternalInitializers(api)(so, names, (const OrtValue *const *)s->weights, n),
                 "AddExternalInitializers");
    free(names);
    char what[512];
    snprintf(what, sizeof what, "CreateSession (%s, decoded at load)", model);
    check(OrtCreateSessionFromArray(api)(env, s->decoded.model, s->decoded.model_size, so, &s->sess), what);
    free(s->decoded.model); /* ORT parsed it; the weights stay */
    s->decoded.model = NULL;
}

/* Release the session, then the weights it used. */
static void close_session(RunnerSession *s) {
    OrtReleaseSession(api)(s->sess);
    for (size_t i = 0; s->weights && i < s->decoded.n_initializers; i++) OrtReleaseValue(api)(s->weights[i]);
    free(s->weights);
    ep_onnx_decoded_free(&s->decoded);
    memset(s, 0, sizeof *s);
}

#endif
