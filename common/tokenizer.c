/* tokenizer.c — the byte-level tokenizer of tokenizer.h: token i < 256 is
 * byte i, so encoding is a copy and decoding drops the special tokens. */
#include "tokenizer.h"

#include <stdio.h>
#include <string.h>

size_t graft_tok_encode(const char *text, size_t len, int32_t *out, size_t cap) {
    size_t n = len < cap ? len : cap;
    const unsigned char *bytes = (const unsigned char *)text;
    for (size_t i = 0; i < n; i++) out[i] = (int32_t)bytes[i];
    return n;
}

size_t graft_tok_decode(const int32_t *tokens, size_t n, char *out, size_t cap) {
    if (cap == 0) return 0;
    size_t w = 0;
    for (size_t i = 0; i < n && w + 1 < cap; i++) {
        /* Special tokens (and ids no vocabulary has) carry no text. */
        if (tokens[i] < 0 || tokens[i] > 255) continue;
        out[w++] = (char)(unsigned char)tokens[i];
    }
    out[w] = '\0';
    return w;
}

const char *graft_tok_name(int32_t token, char buf[16]) {
    switch (token) {
    case GRAFT_TOK_BOS: return "<|bos|>";
    case GRAFT_TOK_SEP: return "<|sep|>";
    case GRAFT_TOK_EOS: return "<|eos|>";
    case GRAFT_TOK_PAD: return "<|pad|>";
    default: break;
    }
    if (token < 0 || token > 255) {
        snprintf(buf, 16, "<|%d|>", (int)token);
    } else if (token > 0x20 && token < 0x7f) {
        buf[0] = (char)token;
        buf[1] = '\0';
    } else {
        /* Space, control and non-ASCII bytes are escaped so that a dump of
         * tokens stays readable and one token is one visible item. */
        snprintf(buf, 16, "\\x%02x", (unsigned)token);
    }
    return buf;
}

size_t graft_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int need;
    uint32_t v;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1, v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2, v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3, v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n || s[k] < lo || s[k] > hi) {
            *cp = 0xFFFD;
            return (size_t)k;
        }
        v = (v << 6) | (s[k] & 0x3Fu);
        lo = 0x80, hi = 0xBF;
    }
    *cp = v;
    return (size_t)need + 1;
}

size_t graft_text_printable(char *dst, size_t cap, const char *src, size_t len) {
    GRAFT_ASSERT(cap >= 8);
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;
    size_t ends[4] = {0}; /* where the last pieces written end, newest last */
    while (i < len) {
        uint32_t cp;
        size_t used = graft_utf8_next(s + i, len - i, &cp);
        char esc[8];
        const char *piece = (const char *)s + i;
        size_t plen = used;
        if (cp == 0xFFFD && !(used == 3 && s[i] == 0xEF)) {
            piece = "\xEF\xBF\xBD", plen = 3; /* an ill-formed sequence */
        } else if (cp < 0x20 || cp == 0x7F || cp == '\\') {
            const char *name = cp == '\n'   ? "\\n"
                               : cp == '\t' ? "\\t"
                               : cp == '\r' ? "\\r"
                               : cp == '\\' ? "\\\\"
                                             : NULL;
            if (name) snprintf(esc, sizeof esc, "%s", name);
            else snprintf(esc, sizeof esc, "\\x%02X", (unsigned)cp);
            piece = esc, plen = strlen(esc);
        }
        if (o + plen + 1 > cap) {
            /* cut: back to a piece's end with room for "..." and the NUL */
            int k = 3;
            while (o + 4 > cap) o = ends[k--];
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(dst + o, piece, plen);
        o += plen;
        i += used;
        memmove(ends, ends + 1, 3 * sizeof ends[0]);
        ends[3] = o;
    }
    dst[o] = '\0';
    return o;
}
