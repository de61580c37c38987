/* The streaming runner's audio input: a 16-bit PCM mono 16 kHz WAV file, or raw s16le PCM from a
 * pipe, read a few samples at a time. Every failure returns -1 with a message in `error` (the file
 * named, what was found and what is wanted) instead of exiting, so a fuzzer can drive it. */
#ifndef EDGEPACK_WAV_READER_H
#define EDGEPACK_WAV_READER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EP_WAV_RATE 16000
#define EP_WAV_FMT_MAX 40 /* the longest 'fmt ' chunk read (WAVE_FORMAT_EXTENSIBLE) */
/* a 'data' size from here up means "to the end of the file": what sox and espeak-ng write to a pipe
 * (0x7FFFF000) or a streamed WAV never patched (0xFFFFFFFF), as kws/wav.py reads them */
#define EP_WAV_STREAMED 0x7FFFF000u

typedef struct {
    FILE *f;
    const char *name;
    uint64_t left; /* bytes of audio still to read (UINT64_MAX: raw PCM until EOF) */
    char error[512];
} ep_wav;

/* Checks the WAV header of the seekable `f` (every chunk size against the file's length before
 * reading or seeking) and positions `f` at the audio. 0, or -1 with w->error set. */
int ep_wav_open(ep_wav *w, FILE *f, const char *name);

/* Raw s16le mono 16 kHz PCM from `f` (a pipe) until EOF. */
void ep_wav_raw(ep_wav *w, FILE *f, const char *name);

/* Reads up to n samples as float in [-1, 1) into out; *got says how many (fewer only at the end).
 * 0, or -1 with w->error set (raw PCM that ends in half a sample, a read error). */
int ep_wav_read(ep_wav *w, float *out, size_t n, size_t *got);

#endif
