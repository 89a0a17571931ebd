/* tokenizer.h — a trunk's tokenizer, one of two kinds:
 *  - byte (the default): token i < 256 is byte i, followed by four special
 *    tokens (BOS, SEP, EOS, PAD). Every byte string round trips exactly.
 *  - gpt2: GPT-2's byte-level BPE (bpe.h), read from vocab.json and
 *    merges.txt, for real GPT-2 checkpoints. It has one special token,
 *    <|endoftext|>, which serves as BOS, SEP, EOS and PAD.
 * A checkpoint's metadata names its kind ("tokenizer": "byte" or "gpt2").
 *
 * Ownership: graft_tokenizer_new_bytes() and graft_tokenizer_load_gpt2()
 * return an owned tokenizer that graft_tokenizer_destroy() frees; the trunk
 * (gpt2.h) owns its own. Callers own every buffer passed in. A tokenizer
 * is only read after it is made, so threads may share it.
 */
#ifndef GRAFT_TOKENIZER_H
#define GRAFT_TOKENIZER_H

#include "bpe.h"
#include "graft.h"

enum {
    GRAFT_TOK_BOS = 256, /* start of a sequence */
    GRAFT_TOK_SEP = 257, /* between a prompt and its target */
    GRAFT_TOK_EOS = 258, /* end of a target */
    GRAFT_TOK_PAD = 259, /* padding, never a target */
    GRAFT_BYTE_VOCAB = 260,
};

typedef enum { GRAFT_TOKENIZER_BYTE = 0, GRAFT_TOKENIZER_GPT2 = 1 } graft_tokenizer_kind_t;

typedef struct {
    graft_tokenizer_kind_t kind;
    int vocab;                 /* ids are 0..vocab-1 */
    int32_t bos, sep, eos, pad;
    graft_bpe_t *bpe;          /* gpt2: owned */
    char dir[4096];            /* gpt2: the folder its files came from */
} graft_tokenizer_t;

/* The kind's name in checkpoints and logs: "byte" or "gpt2". */
const char *graft_tokenizer_kind_name(graft_tokenizer_kind_t kind);
/* The kind of a name; GRAFT_EFORMAT for a name that is neither. */
int graft_tokenizer_kind_parse(const char *name, graft_tokenizer_kind_t *kind);

graft_tokenizer_t *graft_tokenizer_new_bytes(void);

/* GPT-2's BPE from DIR/vocab.json and DIR/merges.txt (bpe.h). */
int graft_tokenizer_load_gpt2(const char *dir, graft_tokenizer_t **out);

void graft_tokenizer_destroy(graft_tokenizer_t **self_p);

/* Writes a gpt2 tokenizer's files into DIR as vocab.json and merges.txt, so
 * that a checkpoint written there loads (nothing to do for bytes, or when
 * DIR already holds the same files; a different file there is an error). */
int graft_tokenizer_save_files(const graft_tokenizer_t *tok, const char *dir);

/* Encodes len bytes of text (no special tokens added). Writes at most cap
 * ids and returns how many the whole text needs (more than cap: the output
 * is cut). */
size_t graft_tokenizer_encode(const graft_tokenizer_t *tok, const char *text, size_t len,
                              int32_t *out, size_t cap);

/* The bytes token id stands for (*len of them; 0 for a special token or an
 * id out of range). */
const char *graft_tokenizer_token_text(const graft_tokenizer_t *tok, int32_t id, size_t *len);

/* 1 for BOS, SEP, EOS and PAD. */
int graft_tokenizer_is_special(const graft_tokenizer_t *tok, int32_t id);

/* ---- the byte tokenizer's own calls -------------------------------------- */

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
