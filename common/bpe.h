/* bpe.h — GPT-2's byte-level BPE tokenizer, read from the vocabulary files
 * that come with a GPT-2 checkpoint: Hugging Face's vocab.json and
 * merges.txt, or OpenAI's original names for the same files, encoder.json
 * and vocab.bpe.
 *
 * Encoding follows GPT-2's encoder.py:
 *  - The text is cut into pieces by GPT-2's pattern (contractions, letter
 *    runs, digit runs, other symbols, whitespace), matched with PCRE2 and
 *    Unicode properties.
 *  - Each piece's UTF-8 bytes start as one token per byte.
 *  - The adjacent pair with the lowest merge rank is merged until no pair
 *    has a rank.
 * Bytes that are not valid UTF-8 match no pattern; each such run becomes a
 * piece of its own, so every byte string encodes, and decoding gives back
 * exactly the bytes that were encoded.
 *
 * Ownership: graft_bpe_load() returns an owned tokenizer; graft_bpe_destroy()
 * frees it. Encoding and decoding only read it, so one tokenizer may serve
 * several threads.
 */
#ifndef GRAFT_BPE_H
#define GRAFT_BPE_H

#include "graft.h"

typedef struct graft_bpe graft_bpe_t;

/* The two files graft_bpe_load(dir) reads: DIR/vocab.json, or
 * DIR/encoder.json when only that exists; DIR/merges.txt, or DIR/vocab.bpe
 * when only that exists. Each path is at most cap bytes. */
void graft_bpe_files(const char *dir, char *vocab, char *merges, size_t cap);

/* Reads the files of graft_bpe_files(). Errors name the file and, for
 * merges, the line. */
int graft_bpe_load(const char *dir, graft_bpe_t **out);
void graft_bpe_destroy(graft_bpe_t **self_p);

/* Number of tokens in the vocabulary (50257 for GPT-2). */
int graft_bpe_vocab_size(const graft_bpe_t *b);

/* Id of "<|endoftext|>", or -1 when the vocabulary has none. */
int32_t graft_bpe_endoftext(const graft_bpe_t *b);

/* Encodes len bytes of text. Writes at most cap ids and returns how many
 * the whole text needs (more than cap: the output is cut). */
size_t graft_bpe_encode(const graft_bpe_t *b, const char *text, size_t len, int32_t *out,
                        size_t cap);

/* The bytes of token id (*len of them); NULL for an id out of range. */
const char *graft_bpe_token_bytes(const graft_bpe_t *b, int32_t id, size_t *len);

#endif
