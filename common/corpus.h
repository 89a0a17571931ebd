/* corpus.h — a pretraining text corpus for language-model training of the
 * trunk. A file, or every regular file under a directory (recursively,
 * hidden files and folders skipped, in strcmp order of the full path so that
 * the stream is the same on every machine), is tokenized into one token
 * stream with the trunk's tokenizer (bytes, or GPT-2's BPE file by file),
 * with its EOS between consecutive files. The last heldout_frac of the stream is the held-out split; the rest
 * is the train split.
 *
 *   train: random windows, graft_corpus_sample()
 *   held out: fixed consecutive windows, graft_corpus_eval_batch(), so that
 *             every evaluation sees exactly the same tokens.
 *
 * Ownership: graft_corpus_load() returns an owned corpus that the caller
 * frees with graft_corpus_destroy(), which also sets the caller's pointer to
 * NULL. The corpus is read-only after loading, so several threads may sample
 * from it at once (each with its own graft_rng_t). Callers own every buffer
 * they pass in.
 */
#ifndef GRAFT_CORPUS_H
#define GRAFT_CORPUS_H

#include "graft.h"
#include "rng.h"
#include "tokenizer.h"

typedef struct graft_corpus graft_corpus_t;

enum { GRAFT_CORPUS_TRAIN = 0, GRAFT_CORPUS_HELDOUT = 1 };

/* Loads path (a text file or a directory) with tokenizer tok (NULL: the
 * byte tokenizer; ids must fit 16 bits) and splits it; heldout_frac is in
 * [0, 1). Returns GRAFT_OK and sets *out, or a negative GRAFT_E* code after
 * logging what went wrong and where: GRAFT_EIO for a missing or unreadable
 * path, GRAFT_EFORMAT for a corpus with no bytes in it, GRAFT_EINVAL for a
 * bad heldout_frac. *out is untouched on failure. */
int graft_corpus_load(const char *path, double heldout_frac, const graft_tokenizer_t *tok,
                      graft_corpus_t **out);

void graft_corpus_destroy(graft_corpus_t **self_p);

/* Number of tokens in a split (GRAFT_CORPUS_TRAIN or GRAFT_CORPUS_HELDOUT). */
size_t graft_corpus_size(const graft_corpus_t *c, int split);

/* The tokens of a split (graft_corpus_size() of them), owned by the corpus
 * and valid until it is destroyed. */
const uint16_t *graft_corpus_tokens(const graft_corpus_t *c, int split);

/* Number of non-empty files that went into the stream. */
size_t graft_corpus_files(const graft_corpus_t *c);

/* Fills inputs and targets, each (B,T), with B windows of the train split at
 * uniformly random offsets; targets[b][t] = inputs[b][t+1] in the stream.
 * Needs graft_corpus_size(c, GRAFT_CORPUS_TRAIN) > T (asserted): callers
 * check it once after loading. Draws exactly B numbers from rng. */
void graft_corpus_sample(const graft_corpus_t *c, graft_rng_t *rng, int B, int T,
                         int32_t *inputs, int32_t *targets);

/* Number of whole (B,T) evaluation batches in the held-out split. Batch i
 * covers held-out tokens [i*B*T, (i+1)*B*T + 1): row b of inputs starts at
 * i*B*T + b*T, targets are shifted by one. Batches never overlap (apart from
 * that one extra target token) and the tail that does not fill a batch is
 * not used. */
size_t graft_corpus_eval_batches(const graft_corpus_t *c, int B, int T);
void graft_corpus_eval_batch(const graft_corpus_t *c, size_t i, int B, int T,
                             int32_t *inputs, int32_t *targets);

#endif
