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
