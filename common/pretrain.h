/* pretrain.h — language-model pretraining of the trunk in one process:
 * sample batches from a corpus, AdamW with warmup + cosine, gradient
 * clipping, periodic held-out evaluation, atomic checkpoints that carry the
 * optimiser state and the sampler's RNG so that a resumed run ends exactly
 * where an uninterrupted one would.
 *
 * The settings struct is described by graft_pretrain_options (one table for
 * the config file, the flags and --help). All memory is owned internally.
 */
#ifndef GRAFT_PRETRAIN_H
#define GRAFT_PRETRAIN_H

#include "options.h"

typedef struct {
    char preset[GRAFT_OPT_STR];
    char data[GRAFT_OPT_STR];
    char out[GRAFT_OPT_STR];
    char resume[GRAFT_OPT_STR];
    char init[GRAFT_OPT_STR];
    char vocab[GRAFT_OPT_STR]; /* GPT-2's BPE files; empty: bytes (or --init's tokenizer) */
    int steps;
    int batch;
    int seq;
    float lr;
    float min_lr_frac;
    int warmup;
    float weight_decay;
    float grad_clip;
    int seed;
    int threads;
    char precision[GRAFT_OPT_STR]; /* fp32 or bf16 (graft_gpt2_set_precision) */
    float heldout;
    int eval_every;
    int eval_batches;
    int checkpoint_every;
    int log_every;
    char log_level[GRAFT_OPT_STR]; /* error, warn, info, debug; empty: GRAFT_LOG_LEVEL */
    int stop_after; /* testing aid: stop (as if killed) after this many steps */
} graft_pretrain_config_t;

extern const graft_option_t graft_pretrain_options[];

typedef struct {
    int steps_done;
    float final_train_loss;
    float first_eval_loss; /* held-out loss before training (or at resume) */
    float final_eval_loss;
    double tokens_per_s;
} graft_pretrain_result_t;

/* Called once the settings, the corpus and any --init or --resume file are
 * checked and before anything is written, so that a caller's own output
 * (the CLI's OUT.config.txt) is not left behind by a refused run. A
 * non-zero return stops the run and is returned. */
typedef int (*graft_pretrain_ready_fn)(void *ctx);

/* Runs (or resumes) pretraining as configured; logs progress on stderr.
 * ready (may be NULL) is called with ctx as described above. */
int graft_pretrain_run(const graft_pretrain_config_t *cfg, graft_pretrain_ready_fn ready,
                       void *ctx, graft_pretrain_result_t *result);

#endif
