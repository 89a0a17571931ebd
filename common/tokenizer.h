/* tokenizer.h — the byte-level tokenizer: token i < 256 is byte i, followed
 * by a few special tokens. Every UTF-8 string (and any byte string) round
 * trips exactly. GPT-2 BPE is a later addition behind the same calls.
 *
 * Ownership: callers own every buffer passed in; nothing is allocated here.
 */
#ifndef GRAFT_TOKENIZER_H
#define GRAFT_TOKENIZER_H

#include "graft.h"

enum {
    GRAFT_TOK_BOS = 256, /* start of a sequence */
    GRAFT_TOK_SEP = 257, /* between a prompt and its target */
    GRAFT_TOK_EOS = 258, /* end of a target */
    GRAFT_TOK_PAD = 259, /* padding, never a target */
    GRAFT_BYTE_VOCAB = 260,
};

#define GRAFT_TOKENIZER_KIND "byte"

/* Encodes len bytes of text into at most cap tokens; returns the number of
 * tokens written (== len for the byte tokenizer, truncated to cap). */
size_t graft_tok_encode(const char *text, size_t len, int32_t *out, size_t cap);

/* Decodes tokens into at most cap-1 bytes plus a NUL; special tokens are
 * skipped. Returns the number of bytes written (excluding the NUL). */
size_t graft_tok_decode(const int32_t *tokens, size_t n, char *out, size_t cap);

/* Decodes one UTF-8 code point at s (n > 0 bytes left) into *cp and
 * returns the bytes consumed. An ill-formed sequence yields U+FFFD and
 * consumes its maximal subpart (at least one byte), as Python does. */
size_t graft_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* src (len bytes, any bytes) as one printable line of valid UTF-8 in dst
 * (cap >= 8 bytes, NUL-terminated): ill-formed sequences become U+FFFD,
 * newline, tab, CR and backslash \n \t \r \\, other control bytes \xNN;
 * cut at a character with "..." when it does not fit. Returns the bytes
 * written (without the NUL). For logs and JSON events. */
size_t graft_text_printable(char *dst, size_t cap, const char *src, size_t len);

/* Printable name of a token for debugging ("<|sep|>", "a", "\\x0a"). */
const char *graft_tok_name(int32_t token, char buf[16]);

#endif
