/* tokenizer.c — the tokenizers of tokenizer.h. Bytes: token i < 256 is
 * byte i, so encoding is a copy and decoding drops the special tokens. */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {[GRAFT_TOKENIZER_BYTE] = "byte",
                                         [GRAFT_TOKENIZER_GPT2] = "gpt2"};

const char *graft_tokenizer_kind_name(graft_tokenizer_kind_t kind) { return kind_names[kind]; }

int graft_tokenizer_kind_parse(const char *name, graft_tokenizer_kind_t *kind) {
    for (int k = 0; k < 2; k++)
        if (strcmp(name, kind_names[k]) == 0) {
            *kind = (graft_tokenizer_kind_t)k;
            return GRAFT_OK;
        }
    return GRAFT_EFORMAT;
}

graft_tokenizer_t *graft_tokenizer_new_bytes(void) {
    graft_tokenizer_t *t = graft_xcalloc(1, sizeof *t);
    *t = (graft_tokenizer_t){.kind = GRAFT_TOKENIZER_BYTE, .vocab = GRAFT_BYTE_VOCAB,
                             .bos = GRAFT_TOK_BOS, .sep = GRAFT_TOK_SEP,
                             .eos = GRAFT_TOK_EOS, .pad = GRAFT_TOK_PAD};
    return t;
}

int graft_tokenizer_load_gpt2(const char *dir, graft_tokenizer_t **out) {
    graft_bpe_t *bpe = NULL;
    int rc = graft_bpe_load(dir, &bpe);
    if (rc) return rc;
    int32_t eot = graft_bpe_endoftext(bpe);
    if (eot < 0) {
        LOG_ERROR("%s: the vocabulary has no <|endoftext|> token, which graft needs as its "
                  "BOS, SEP, EOS and PAD", dir);
        graft_bpe_destroy(&bpe);
        return GRAFT_EFORMAT;
    }
    graft_tokenizer_t *t = graft_xcalloc(1, sizeof *t);
    *t = (graft_tokenizer_t){.kind = GRAFT_TOKENIZER_GPT2, .vocab = graft_bpe_vocab_size(bpe),
                             .bos = eot, .sep = eot, .eos = eot, .pad = eot, .bpe = bpe};
    snprintf(t->dir, sizeof t->dir, "%s", dir);
    *out = t;
    return GRAFT_OK;
}

void graft_tokenizer_destroy(graft_tokenizer_t **self_p) {
    graft_tokenizer_t *t = *self_p;
    if (!t) return;
    graft_bpe_destroy(&t->bpe);
    free(t);
    *self_p = NULL;
}

/* Copies src to dst, atomically; nothing to do when dst has the same bytes,
 * an error when it has others. */
static int copy_file(const char *src, const char *dst) {
    size_t n, m;
    char *data = graft_read_file(src, &n);
    if (!data) {
        LOG_ERROR("%s: cannot read: %s", src, strerror(errno));
        return GRAFT_EIO;
    }
    char *old = graft_read_file(dst, &m);
    int rc = GRAFT_OK;
    if (old) {
        if (m != n || memcmp(old, data, n) != 0) {
            LOG_ERROR("%s: already there and not %s: not overwritten", dst, src);
            rc = GRAFT_EINVAL;
        }
        free(old);
        free(data);
        return rc;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0 || rename(tmp, dst) != 0) {
        LOG_ERROR("%s: cannot write: %s", dst, strerror(errno));
        rc = GRAFT_EIO;
    }
    free(data);
    return rc;
}

int graft_tokenizer_save_files(const graft_tokenizer_t *tok, const char *dir) {
    if (tok->kind != GRAFT_TOKENIZER_GPT2) return GRAFT_OK;
    char vocab[4096], merges[4096], out[4200];
    graft_bpe_files(tok->dir, vocab, merges, sizeof vocab);
    snprintf(out, sizeof out, "%s/vocab.json", dir);
    int rc = copy_file(vocab, out);
    snprintf(out, sizeof out, "%s/merges.txt", dir);
    return rc ? rc : copy_file(merges, out);
}

size_t graft_tokenizer_encode(const graft_tokenizer_t *tok, const char *text, size_t len,
                              int32_t *out, size_t cap) {
    if (tok->kind == GRAFT_TOKENIZER_GPT2) return graft_bpe_encode(tok->bpe, text, len, out, cap);
    graft_tok_encode(text, len, out, cap);
    return len;
}

int graft_tokenizer_is_special(const graft_tokenizer_t *tok, int32_t id) {
    return id == tok->bos || id == tok->sep || id == tok->eos || id == tok->pad;
}

/* Byte i at all_bytes[i]: the text of the byte tokenizer's token i. */
#define R4(i) (char)(i), (char)((i) + 1), (char)((i) + 2), (char)((i) + 3)
#define R16(i) R4(i), R4((i) + 4), R4((i) + 8), R4((i) + 12)
#define R64(i) R16(i), R16((i) + 16), R16((i) + 32), R16((i) + 48)
static const char all_bytes[256] = {R64(0), R64(64), R64(128), R64(192)};

const char *graft_tokenizer_token_text(const graft_tokenizer_t *tok, int32_t id, size_t *len) {
    *len = 0;
    if (graft_tokenizer_is_special(tok, id) || id < 0 || id >= tok->vocab) return "";
    if (tok->kind == GRAFT_TOKENIZER_GPT2) return graft_bpe_token_bytes(tok->bpe, id, len);
    if (id > 255) return "";
    *len = 1;
    return &all_bytes[id];
}

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
