/* WAV / raw PCM input of edgepack_kws_stream (wav_reader.h): header checks with named errors, then
 * samples on demand, so a stream of any length is read in constant memory. */
#define _POSIX_C_SOURCE 200809L
#include "wav_reader.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/types.h>

static const char *WANT = "kws_stream needs 16-bit PCM mono 16 kHz WAV (convert with `sox IN.wav -r 16000 -c 1 "
                          "-b 16 OUT.wav`, or use `edgepack kws listen`, which resamples)";

static uint32_t le32(const unsigned char *p) {
    return p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int fail(ep_wav *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
    return -1;
}

/* a chunk's 4-character id as text (bytes outside printable ASCII as '?') */
static void chunk_id(const unsigned char *id, char out[5]) {
    for (int i = 0; i < 4; i++) out[i] = id[i] >= 0x20 && id[i] < 0x7f ? (char)id[i] : '?';
    out[4] = 0;
}

int ep_wav_open(ep_wav *w, FILE *f, const char *name) {
    unsigned char head[12], ch[8], fmt[EP_WAV_FMT_MAX];
    int have_fmt = 0;
    w->f = f;
    w->name = name;
    w->left = 0;
    w->error[0] = 0;
    if (fseeko(f, 0, SEEK_END) != 0) return fail(w, "%s: not a seekable file (pipe raw PCM to '-' instead)", name);
    const off_t end = ftello(f);
    if (end < 0 || fseeko(f, 0, SEEK_SET) != 0) return fail(w, "%s: cannot tell its size: %s", name, strerror(errno));
    const uint64_t size = (uint64_t)end;
    const size_t got = fread(head, 1, sizeof head, f);
    if (got == 0) return fail(w, "%s: empty file; %s", name, WANT);
    if (got < 12 || memcmp(head, "RIFF", 4) || memcmp(head + 8, "WAVE", 4))
        return fail(w, "%s: not a WAV file (no RIFF/WAVE header); %s", name, WANT);
    uint64_t here = 12; /* the file position, kept here rather than asked of ftello */
    for (;;) {
        if (size - here < 8 || fread(ch, 1, 8, f) < 8)
            return fail(w, "%s: truncated or incomplete WAV: no %s chunk; %s", name, have_fmt ? "'data'" : "'fmt '",
                        WANT);
        here += 8;
        const uint32_t csize = le32(ch + 4);
        const uint64_t padded = (uint64_t)csize + (csize & 1);
        if (!memcmp(ch, "fmt ", 4)) {
            if (csize < 16 || csize > sizeof fmt)
                return fail(w, "%s: 'fmt ' chunk of %u bytes (16 to %zu expected); %s", name, (unsigned)csize,
                            sizeof fmt, WANT);
            if (size - here < padded || fread(fmt, 1, csize, f) < csize)
                return fail(w, "%s: truncated 'fmt ' chunk; %s", name, WANT);
            if ((csize & 1) && fseeko(f, 1, SEEK_CUR)) return fail(w, "%s: truncated 'fmt ' chunk", name);
            here += padded;
            unsigned tag = le16(fmt), channels = le16(fmt + 2), bits = le16(fmt + 14);
            const uint32_t rate = le32(fmt + 4);
            if (tag == 0xFFFE && csize >= 26) tag = le16(fmt + 24);
            if (tag != 1 || bits != 16 || channels != 1 || rate != EP_WAV_RATE)
                return fail(w, "%s: %s %u-bit, %u channel(s), %u Hz; %s", name,
                            tag == 1 ? "PCM" : tag == 3 ? "float" : "coded", bits, channels, (unsigned)rate, WANT);
            have_fmt = 1;
        } else if (!memcmp(ch, "data", 4)) {
            if (!have_fmt) return fail(w, "%s: 'data' chunk before the 'fmt ' chunk; %s", name, WANT);
            const uint64_t avail = size - here;
            const uint64_t want = csize >= EP_WAV_STREAMED ? avail : csize;
            if (want > avail)
                return fail(w, "%s: truncated: the header promises %llu bytes of audio but only %llu follow", name,
                            (unsigned long long)want, (unsigned long long)avail);
            if (want < 2) return fail(w, "%s: no audio samples (empty 'data' chunk)", name);
            w->left = want - (want & 1);
            return 0;
        } else {
            char id[5];
            chunk_id(ch, id);
            if (size - here < padded)
                return fail(w, "%s: truncated: chunk '%s' runs past the end of the file", name, id);
            if (fseeko(f, (off_t)padded, SEEK_CUR)) return fail(w, "%s: cannot seek past chunk '%s'", name, id);
            here += padded;
        }
    }
}

void ep_wav_raw(ep_wav *w, FILE *f, const char *name) {
    w->f = f;
    w->name = name;
    w->left = UINT64_MAX;
    w->error[0] = 0;
}

int ep_wav_read(ep_wav *w, float *out, size_t n, size_t *got) {
    unsigned char buf[2 * 4096];
    size_t done = 0;
    *got = 0;
    while (done < n && w->left > 0) {
        size_t want = (n - done) * 2;
        if (want > sizeof buf) want = sizeof buf;
        if (want > w->left) want = (size_t)w->left;
        size_t have = fread(buf, 1, want, w->f);
        if (have == 0) {
            if (ferror(w->f)) return fail(w, "%s: read error: %s", w->name, strerror(errno));
            break;
        }
        int half = 0;
        if (have & 1) { /* keep sample alignment on pipes: finish the odd byte */
            const int c = fgetc(w->f);
            if (c == EOF) half = 1;
            else buf[have++] = (unsigned char)c;
        }
        for (size_t i = 0; i < have / 2; i++) out[done + i] = (float)(int16_t)le16(buf + 2 * i) / 32768.0f;
        done += have / 2;
        if (half) {
            *got = done;
            w->left = 0;
            return fail(w, "%s: raw PCM ends in half a sample; expected s16le mono 16 kHz", w->name);
        }
        if (w->left != UINT64_MAX) w->left -= have;
    }
    *got = done;
    return 0;
}
