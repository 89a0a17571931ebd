/* trainer.h — multi-task training on one machine: a trunk, the PEFT modules
 * of a run (peft.h) and its tasks (task.h). `graft train` drives it for a
 * centralized run; a worker drives the same steps on its shards for a
 * federated round; `graft eval` uses its evaluation.
 *
 * Ownership: graft_trainer_new() returns an owned, opaque trainer that
 * owns the trunk, the modules, the tasks and every buffer;
 * graft_trainer_destroy() frees all of it. The config is copied. The
 * pointers the accessors below return (trunk, modules, tasks, scopes) are
 * borrowed and live as long as the trainer.
 */
#ifndef GRAFT_TRAINER_H
#define GRAFT_TRAINER_H

#include <jansson.h>

#include "adamw.h"
#include "metrics.h"
#include "peft.h"
#include "runconfig.h"
#include "task.h"

/* Bytes of each text of an evaluation's sample (with the NUL). */
#define GRAFT_SAMPLE_LEN 160

typedef struct {
    int task;
    int split;
    int64_t examples;
    graft_task_kind_t kind;
    graft_cls_result_t cls; /* classification */
    double loss;            /* mean loss (classification: cross-entropy; generation: target tokens) */
    double perplexity;      /* generation */
    double chrf;            /* generation, 0..100, over chrf_examples greedy decodes */
    int64_t chrf_examples;
    /* generation: the first decoded example (the same one at every
     * evaluation of a split), printable (graft_text_printable); "" if none */
    char sample_prompt[GRAFT_SAMPLE_LEN], sample_output[GRAFT_SAMPLE_LEN];
    char sample_reference[GRAFT_SAMPLE_LEN];
} graft_eval_result_t;

/* The sufficient statistics of an evaluation, from which graft_eval_result_t
 * follows: graft_trainer_eval_stats adds them up over some of a split's
 * examples, graft_eval_stats_merge adds those of other workers (counts
 * exactly, the float sums in merge order: merge by worker name), and
 * graft_eval_stats_finish computes the metrics once, so that the merged
 * metrics are those of the union of the examples (not a mean of metrics).
 * Owns cls's confusion matrix (classification): init, then free. */
typedef struct {
    int task;
    int split;
    graft_task_kind_t kind;
    int64_t examples;
    /* classification: -log p(label) per example; generation: each target
     * token's loss */
    graft_lm_metrics_t loss;
    graft_cls_metrics_t cls; /* classification */
    graft_chrf_t chrf;       /* generation: over `decoded` greedy decodes */
    int64_t decoded;
    /* generation: the first decode, printable; "" if none */
    char sample_prompt[GRAFT_SAMPLE_LEN], sample_output[GRAFT_SAMPLE_LEN];
    char sample_reference[GRAFT_SAMPLE_LEN];
} graft_eval_stats_t;

void graft_eval_stats_init(graft_eval_stats_t *s, int t, int split, graft_task_kind_t kind,
                           int num_labels);
void graft_eval_stats_free(graft_eval_stats_t *s);
/* dst += src (same task, split and kind, asserted); dst keeps its sample,
 * or takes src's when it has none. */
void graft_eval_stats_merge(graft_eval_stats_t *dst, const graft_eval_stats_t *src);
void graft_eval_stats_finish(const graft_eval_stats_t *s, graft_eval_result_t *r);

typedef struct graft_trainer graft_trainer_t; /* opaque */

/* ---- what callers read and steer ------------------------------------------
 * The trainer's fields are private to trainer.c; these are the parts other
 * code works with. Pointers are borrowed: the trainer owns them. */

/* The run config the trainer was built with (its copy). */
const graft_run_config_t *graft_trainer_config(const graft_trainer_t *tr);
/* The trunk (its parameters are what `full` trains and grafting replaces). */
graft_gpt2_t *graft_trainer_trunk(const graft_trainer_t *tr);
/* The PEFT modules (peft.h) of every task. */
graft_peft_t *graft_trainer_peft(const graft_trainer_t *tr);
/* The tasks, in --tasks order: n_tasks of them, task(t) one, tasks() all. */
int graft_trainer_n_tasks(const graft_trainer_t *tr);
graft_task_t *graft_trainer_task(const graft_trainer_t *tr, int t);
graft_task_t **graft_trainer_tasks(graft_trainer_t *tr);
/* The scope of the shared modules and that of task t's own (its head, its
 * LoRA/adapters/channels): the units that travel, average and checkpoint. */
graft_scope_t *graft_trainer_shared_scope(const graft_trainer_t *tr);
graft_scope_t *graft_trainer_task_scope(const graft_trainer_t *tr, int t);
/* The index of the task named `name`, or -1. */
int graft_trainer_task_index(const graft_trainer_t *tr, const char *name);
/* Batch shape: B rows of T tokens. */
void graft_trainer_batch_shape(const graft_trainer_t *tr, int *B, int *T);

/* Optimiser steps taken (a resumed trainer's count from its checkpoint).
 * The coordinator's trainer takes none and counts finished rounds instead
 * (set_steps_done) so that its checkpoint records them. */
int graft_trainer_steps_done(const graft_trainer_t *tr);
void graft_trainer_set_steps_done(graft_trainer_t *tr, int steps);
/* The two-stage channels method's stage: 1 while scoring, 2 after
 * selection (and for every other method). */
int graft_trainer_stage(const graft_trainer_t *tr);
/* Back to stage 1 (the channels method only; otherwise a no-op): a
 * federated worker whose coordinator resumed from a stage-1 checkpoint. */
void graft_trainer_restart_stage1(graft_trainer_t *tr);

/* The optimiser settings and learning-rate schedule. */
const graft_adamw_config_t *graft_trainer_optimizer(const graft_trainer_t *tr);
/* The schedule's length: a federated run's is rounds x local steps, not --steps. */
void graft_trainer_set_schedule(graft_trainer_t *tr, int total_steps);
/* The schedule's learning rate at global step s. */
float graft_trainer_lr_at(const graft_trainer_t *tr, int step);
/* FedProx's mu for the steps to come (0: none); each scope's anchor is its
 * prox_ref. */
void graft_trainer_set_prox_mu(graft_trainer_t *tr, float mu);

/* The settings a trainer checks without reading a file (the method and its
 * sizes, --pool, --optimizer, --mix), so that a command can refuse them
 * before it starts anything. GRAFT_OK or GRAFT_EINVAL (logged). */
int graft_trainer_check(const graft_run_config_t *cfg);

/* Loads the trunk (or builds it from the preset) and the tasks, and
 * attaches the modules the method asks for. */
int graft_trainer_new(const graft_run_config_t *cfg, graft_trainer_t **out);
/* Same, with tasks that the caller already loaded (ownership passes). */
int graft_trainer_new_with_tasks(const graft_run_config_t *cfg, graft_task_t **tasks,
                                 int n_tasks, graft_trainer_t **out);
void graft_trainer_destroy(graft_trainer_t **self_p);

/* The module configuration that a run's settings describe (method set,
 * LoRA targets, ranks and alphas, adapter width, k); GRAFT_EINVAL, with the
 * reason logged, when the settings do not combine. */
int graft_run_peft_config(const graft_run_config_t *cfg, graft_peft_config_t *pc);

/* The optimiser half of a step, once task t's gradients are in: FedProx's
 * term (prox_mu, 0: none), clipping by the global norm over the scopes task
 * t trains, then one AdamW step on each with learning rate lr.
 * graft_trainer_step ends with it; `graft bench step` calls it directly. */
void graft_modules_update(graft_peft_t *p, int task, const graft_adamw_config_t *opt,
                          float prox_mu, float lr);

/* The task of global step s under the configured mix. */
int graft_trainer_task_for_step(const graft_trainer_t *tr, int step);

/* Forward and backward on a fresh batch of task t's training split, with
 * the gradients of every scope task t trains zeroed first; no update.
 * Returns the batch loss. */
float graft_trainer_backward(graft_trainer_t *tr, int t);

/* One optimiser step on a fresh batch of task t's training split; returns
 * the batch loss (without the FedProx term). lr < 0: the schedule's value
 * for the current step. */
float graft_trainer_step(graft_trainer_t *tr, int t, float lr);

/* Puts the batch sampler where it would be after `steps` steps of a run
 * whose sampler was seeded on stream `stream` (0 is the stream a new
 * trainer starts on, i.e. `graft train`'s): each step draws exactly B
 * numbers, so the batches of step k depend only on (seed, stream, k).
 * A federated worker seeks to its round's first step, which makes its
 * batches independent of its history and of the transport. */
void graft_trainer_seek_sampler(graft_trainer_t *tr, uint64_t stream, int64_t steps);

/* Evaluates task t on split (GRAFT_SPLIT_DEV/TEST) over at most
 * cfg.eval_max examples, evenly strided over the split; generation also
 * decodes the first cfg.decode_max of them (strided anew) for chrF. */
void graft_trainer_evaluate(graft_trainer_t *tr, int t, int split, graft_eval_result_t *res);

/* The statistics of part `part` of `parts` of that evaluation (s is
 * initialised here; free it): the examples whose ordinal j among the
 * evaluated ones has j % parts == part, and the decodes likewise. The
 * parts of 0..parts-1 together are exactly graft_trainer_evaluate's
 * examples: a federated worker with IID shard I of N evaluates part I. */
void graft_trainer_eval_stats(graft_trainer_t *tr, int t, int split, int part, int parts,
                              graft_eval_stats_t *s);

/* Sets the evaluation sizes (cfg.eval_max, decode_max: 0 all; gen_tokens
 * > 0): a worker evaluates with its coordinator's. */
void graft_trainer_set_eval_sizes(graft_trainer_t *tr, int eval_max, int decode_max,
                                  int gen_tokens);

/* Inference on new inputs with task t's modules, a batch (B) at a time; text i
 * (lens[i] bytes) is what an example's text field would hold and is
 * encoded as training encodes it.
 * Generation: out[i] (cap bytes) = the greedy continuation of prompt i,
 * NUL-terminated, up to EOS or cfg.gen_tokens bytes (and the context).
 * Classification: probs (n, K) = the head's class probabilities. */
void graft_trainer_generate(graft_trainer_t *tr, int t, const char *const *prompts,
                            const size_t *lens, size_t n, char **out, size_t cap);
void graft_trainer_classify(graft_trainer_t *tr, int t, const char *const *texts,
                            const size_t *lens, size_t n, float *probs);

/* Ends stage 1 of the two-stage method: picks channels from the scores. */
void graft_trainer_select_channels(graft_trainer_t *tr);
/* The same choice, the deltas left as they are: a federated worker in its
 * first stage-2 round, from the aggregated scores and deltas it was sent. */
void graft_trainer_choose_channels(graft_trainer_t *tr);
/* A digest of every task's channel indices (FNV-1a), for logs: the
 * coordinator and each worker print it when they select, and must agree. */
uint64_t graft_trainer_channels_digest(const graft_trainer_t *tr);
/* Federated runs: the rounds of stage 1 of the two-stage channels method,
 * ceil(stage1_steps / local_steps), or rounds / 3 without stage1_steps. */
int graft_stage1_rounds(const graft_run_config_t *cfg);

/* Checkpoints every scope (and the trainer's progress) into one
 * safetensors file, atomically, with the settings that shape the modules
 * (the method, --pool, the LoRA targets, ranks and alphas, --adapter_dim,
 * --channels_k: those of the methods in use) and the optimizer as
 * metadata "train.NAME". Reading restores them exactly: graft_trainer_load
 * for inference (eval, predict, export), graft_trainer_resume to train on.
 * Either refuses (GRAFT_EINVAL, logged with the option, its recorded value
 * and this run's) a checkpoint whose recorded settings differ from the
 * run's, resume also a different optimizer; settings an older checkpoint
 * does not record are not checked. Channel indices out of 0..C-1 or
 * repeated within a layer are refused (GRAFT_EFORMAT). */
int graft_trainer_save(graft_trainer_t *tr, const char *path);
/* As graft_trainer_save with only the first n_moments (0, 1 or 2: m, then
 * v) of each scope's optimizer state: the coordinator's state is its
 * server optimizer's, which fedavg never uses (0) and fedavgm keeps in m
 * (1). A moment the file lacks is read back as zero, its initial value. */
int graft_trainer_save_moments(graft_trainer_t *tr, const char *path, int n_moments);
int graft_trainer_load(graft_trainer_t *tr, const char *path);
int graft_trainer_resume(graft_trainer_t *tr, const char *path);
/* Metadata that the checkpoints this trainer writes carry besides their
 * own (key under 64 bytes, value under 128; copied; a key set again takes
 * the new value; at most GRAFT_TRAINER_MAX_NOTES keys). A coordinator
 * notes its run id ("federated.run_id") and the runs it continues
 * ("federated.earlier_runs"); a personalised run's also "personal.tasks"
 * (its task scopes are not the trained ones, the workers keep theirs), on
 * which graft_trainer_load warns. Its workers note the run id and whether
 * the task scopes were their own ("federated.tasks"). */
#define GRAFT_TRAINER_MAX_NOTES 5
void graft_trainer_set_note(graft_trainer_t *tr, const char *key, const char *value);

/* One-line human summary of an evaluation. */
void graft_eval_format(const graft_trainer_t *tr, const graft_eval_result_t *r, char *buf,
                       size_t n);

/* Logs a generation result's sample (prompt -> output, and the reference)
 * as one info line; nothing for classification. */
void graft_eval_log_sample(const graft_trainer_t *tr, const graft_eval_result_t *r);

/* The same as a JSON object for `eval` events (new reference, owned by the
 * caller, e.g. handed to graft_events_emit). */
json_t *graft_eval_json(const graft_trainer_t *tr, const graft_eval_result_t *r);

/* Trainable parameter counts for `run_start` events (new reference):
 * {"trunk": N, "shared": n, "tasks": {NAME: own, ...}, "per_task": {NAME: shared + own}}. */
json_t *graft_trainer_params_json(const graft_trainer_t *tr);

#endif
