/* One JSON string writer for the native runners: messages can quote bytes from a corrupt model
 * file, so anything that is not well-formed UTF-8 is written as \ufffd (the output stays valid
 * JSON that any parser reads). */
#ifndef EDGEPACK_JSON_STRING_H
#define EDGEPACK_JSON_STRING_H

#include <stdio.h>

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if it is not one. */
static int utf8_length(const unsigned char *s) {
    int n = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

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

#endif
