/* task.h — a task: a name, a kind (classification or generation) and the
 * examples of its data file, encoded into byte-token model inputs.
 *
 * Data files are UTF-8 TSV (DESIGN §3), one example a line, exactly four
 * TAB-separated fields:
 *
 *     split<TAB>label<TAB>group<TAB>text
 *
 *   split  train, dev or test
 *   label  the class name (classification) or the target text (generation)
 *   group  a grouping key for non-IID sharding (may be empty)
 *   text   the input (classification) or the prompt (generation)
 *
 * Lines end with LF (the last one may lack it); a UTF-8 byte order mark at
 * the very start of the file is skipped. Every line must be an example: a
 * line with another number of fields (an empty line has one), invalid UTF-8,
 * a CR or NUL byte, an unknown split, an empty label or an empty text is an
 * error logged as "path:line: what is wrong", and a file without train
 * examples is an error too. Nothing is loaded unless the whole file is good.
 *
 * Labels of a classification task are the distinct label strings of all
 * splits in strcmp (byte, i.e. code point) order; label id = index, so every
 * process that loads the same file agrees on the ids. Groups are numbered
 * the same way.
 *
 * Ownership: graft_task_load() and graft_task_subset() return an owned task
 * that the caller frees with graft_task_destroy(), which also sets the
 * caller's pointer to NULL. Every string and graft_example_t pointer handed
 * out by an accessor is owned by the task and valid until it is destroyed.
 * A task is read-only after loading, so several threads may encode and
 * sample from it at once (each with its own graft_rng_t). Callers own every
 * buffer they pass in.
 */
#ifndef GRAFT_TASK_H
#define GRAFT_TASK_H

#include "graft.h"
#include "rng.h"
#include "tokenizer.h"

typedef struct graft_task graft_task_t;

typedef enum { GRAFT_TASK_CLASSIFY, GRAFT_TASK_GENERATE } graft_task_kind_t;

enum { GRAFT_SPLIT_TRAIN = 0, GRAFT_SPLIT_DEV = 1, GRAFT_SPLIT_TEST = 2, GRAFT_SPLIT_COUNT = 3 };

/* A generation example keeps at least this many prompt tokens (fewer if the
 * prompt is shorter or the context cannot hold them) before its target is
 * truncated; see graft_task_encode_generate(). */
#define GRAFT_TASK_MIN_PROMPT 8

typedef struct {
    const char *text;  /* input or prompt, NUL-terminated, text_len bytes */
    const char *label; /* class name or target text, NUL-terminated, label_len bytes */
    const char *group; /* grouping key, NUL-terminated (may be "") */
    size_t text_len;
    size_t label_len;
    int32_t label_id; /* index into the label set (classification); -1 for generation */
    int32_t group_id; /* index into the group set */
    size_t line;      /* 1-based line of the example in its data file */
} graft_example_t;

/* "classification" / "generation" -> kind; GRAFT_EINVAL (nothing logged:
 * the caller knows where the string came from) for anything else. */
int graft_task_kind_parse(const char *s, graft_task_kind_t *out);
const char *graft_task_kind_name(graft_task_kind_t kind);

/* "train" / "dev" / "test" -> GRAFT_SPLIT_*; GRAFT_EINVAL otherwise. */
int graft_task_split_parse(const char *s, int *out);
const char *graft_task_split_name(int split);

/* Loads every example of the data file at path. Returns GRAFT_OK and sets
 * *out, or, after logging where the problem is: GRAFT_EIO when the file
 * cannot be read, GRAFT_EFORMAT for a malformed line or a file without train
 * examples. *out is untouched on failure. */
int graft_task_load(const char *name, graft_task_kind_t kind, const char *path,
                    graft_task_t **out);

/* The same for a process that trains nothing on the task (a federated
 * coordinator): a file without train examples is fine (it may hold only
 * the evaluation rows, or rows that name the labels), and is said once. */
int graft_task_load_untrained(const char *name, graft_task_kind_t kind, const char *path,
                              graft_task_t **out);

/* A new task holding only the given train examples of t (in that order;
 * repeats allowed), every dev and test example of t (so that evaluation is
 * the same everywhere), and t's whole label and group sets (so that label
 * and group ids mean the same in both). This is how a worker holds one
 * shard. The result owns its own copy of everything and outlives t. Returns
 * NULL after logging if an index is out of range. */
graft_task_t *graft_task_subset(const graft_task_t *t, const size_t *train_indices, size_t n);

/* Renumbers the labels of classification task t against `labels`, n
 * strcmp-sorted distinct class names (the run's label set, as the
 * coordinator sends it): afterwards t's label set is exactly that list and
 * every example's label_id indexes it. This is how a worker whose shard
 * file lacks some classes agrees with the run on label ids and head size.
 * Returns GRAFT_EINVAL after logging "path:line" of the first example whose
 * label is not in the list, or when the list is not sorted and distinct;
 * t is unchanged then. A generation task has no labels: n must be 0. */
int graft_task_relabel(graft_task_t *t, const char *const *labels, int n);

void graft_task_destroy(graft_task_t **self_p);

const char *graft_task_name(const graft_task_t *t);
const char *graft_task_path(const graft_task_t *t);
graft_task_kind_t graft_task_kind(const graft_task_t *t);

/* Classification: number of labels and the name of label id. Generation
 * tasks have no label set (0 labels). */
int graft_task_num_labels(const graft_task_t *t);
const char *graft_task_label_name(const graft_task_t *t, int id);
/* Label id of a class name, or -1 if it is not in the set. */
int graft_task_label_id(const graft_task_t *t, const char *name);

/* Number of examples in a split (GRAFT_SPLIT_*). */
size_t graft_task_count(const graft_task_t *t, int split);

/* counts[k] (k < num_labels) = examples of label k in a split; counts are
 * the caller's. Classification only. */
void graft_task_label_counts(const graft_task_t *t, int split, size_t *counts);

/* Example i of a split; i < graft_task_count() (asserted). */
const graft_example_t *graft_task_example(const graft_task_t *t, int split, size_t i);

/* Groups: the distinct group keys of all splits, strcmp-sorted. */
size_t graft_task_num_groups(const graft_task_t *t);
const char *graft_task_group_name(const graft_task_t *t, size_t id);
int32_t graft_task_group_of(const graft_task_t *t, int split, size_t i);

/* ---- encoding into model inputs (the trunk's tokenizer, context T) ------ */

/* Classification example i of split, T >= 2:
 *   tokens (T): BOS, then the text's tokens (the first T-1 if more), then PAD;
 *   *pos: the index of the last real token, which the head pools;
 *   *label: the label id. */
void graft_task_encode_classify(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                                size_t i, int T, int32_t *tokens, int32_t *pos, int32_t *label);

/* Generation example i of split, T >= 4. The sequence is
 *     BOS prompt SEP target EOS
 * and may be up to T+1 tokens long, since the last token is only ever a
 * target:
 *   inputs (T):  sequence[t], PAD after its end;
 *   targets (T): sequence[t+1] where that is a target token or the EOS, -1
 *                everywhere else (prompt, SEP, padding), so that the loss
 *                counts target tokens only.
 * A sequence that does not fit first loses prompt tokens from the LEFT (the
 * end of a prompt is nearest its target), down to min(prompt length,
 * GRAFT_TASK_MIN_PROMPT, (T-2)/2) tokens; then the target loses tokens from
 * the right and the EOS is dropped, because the target does not end within
 * the window.
 *   *prompt_len: tokens up to and including SEP (BOS + kept prompt + SEP),
 *   always <= T-1, so that position prompt_len-1 predicts the first target
 *   token. */
void graft_task_encode_generate(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                                size_t i, int T, int32_t *inputs, int32_t *targets,
                                int32_t *prompt_len);

/* graft_task_encode_classify's encoding of a raw text (an example's text
 * field, len bytes), for inputs that are not in a task file. */
void graft_encode_classify_text(const graft_tokenizer_t *tok, const char *text, size_t len, int T,
                                int32_t *tokens, int32_t *pos);

/* A prompt (an example's text field, len bytes) alone, for greedy decoding:
 * BOS prompt SEP then PAD (T tokens), the prompt's tokens cut from the left
 * to leave at least `room` positions for generated tokens (and to keep at
 * least one prompt token: T - room >= 3, asserted). Unlike
 * graft_task_encode_generate() the cut does not depend on the length of the
 * reference target. *prompt_len as there. */
void graft_encode_prompt_text(const graft_tokenizer_t *tok, const char *text, size_t len, int T,
                              int room, int32_t *tokens, int32_t *prompt_len);

/* Encodes examples indices[0..B) of split into (B,T) row-major buffers.
 *   classification: inputs (B,T), pos (B), labels (B); targets is ignored
 *                   (pass NULL).
 *   generation:     inputs (B,T), targets (B,T); pos (B) receives each
 *                   row's prompt_len unless NULL; labels is ignored (NULL). */
void graft_task_batch(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                      const size_t *indices, int B, int T, int32_t *inputs, int32_t *targets,
                      int32_t *pos, int32_t *labels);

/* Draws B example indices of split uniformly with replacement: exactly B
 * numbers from rng, so a run is reproducible from its seed. The split must
 * not be empty (asserted). */
void graft_task_sample_indices(const graft_task_t *t, int split, graft_rng_t *rng, int B,
                               size_t *out);

#endif
