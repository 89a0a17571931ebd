/* runconfig.h — the settings of a fine-tuning run, shared by `graft train`
 * (centralized), `graft eval`, `graft inspect`, and the distributed commands
 * (`graft run`, `graft coordinator`, `graft worker`, `graft mpi`). One
 * option table (graft_run_options) drives the config file, the flags,
 * --help and the dump at start. The struct owns all its strings.
 */
#ifndef GRAFT_RUNCONFIG_H
#define GRAFT_RUNCONFIG_H

#include "options.h"
#include "task.h"

#define GRAFT_MAX_TASKS 16

typedef struct {
    /* model and data */
    char trunk[GRAFT_OPT_STR];
    char preset[GRAFT_OPT_STR];
    char tasks[GRAFT_OPT_STR];
    int seq;
    /* method */
    char method[GRAFT_OPT_STR];
    char lora_targets[GRAFT_OPT_STR];
    int lora_shared_rank;
    float lora_shared_alpha;
    int lora_task_rank;
    float lora_task_alpha;
    int adapter_dim;
    int channels_k;
    int stage1_steps;
    char pool[GRAFT_OPT_STR]; /* classification heads: last or mean */
    /* method graft (grafting.h) */
    char finetuned[GRAFT_OPT_STR];
    char sparsity[GRAFT_OPT_STR];
    char graft_params[GRAFT_OPT_STR];
    int graft_refine_steps;
    float graft_refine_lr;
    int graft_candidates;
    int graft_head_steps;
    int graft_tune_steps;
    /* optimisation */
    int steps;
    int batch;
    float lr;
    float head_lr; /* 0: lr */
    int keep_optimizer_state; /* federated: workers keep AdamW state across rounds */
    float logit_adjust;       /* federated: tau of the heads' label-shift correction */
    int personalize;          /* federated: task modules stay on their workers */
    int personal_from;        /* personalize: from this round on */
    char optimizer[GRAFT_OPT_STR]; /* adamw or sgd */
    float momentum;                /* sgd */
    float weight_decay;
    float grad_clip;
    int warmup;
    char mix[GRAFT_OPT_STR];
    /* evaluation, checkpoints, logs */
    int eval_every;
    int eval_max;
    int gen_tokens;
    int decode_max;
    char out[GRAFT_OPT_STR];
    char resume[GRAFT_OPT_STR];
    int checkpoint_every;
    int seed;
    int threads;
    char precision[GRAFT_OPT_STR]; /* fp32 or bf16 (graft_gpt2_set_precision) */
    int log_every;
    char log_level[GRAFT_OPT_STR]; /* error, warn, info, debug; empty: GRAFT_LOG_LEVEL */
    /* distributed */
    int rounds;
    int local_steps;
    int min_replies;
    int round_timeout_ms;
    int heartbeat_ms;
    int eval_every_rounds;
    char eval_on[GRAFT_OPT_STR]; /* coordinator, workers or both; empty: by personalize */
    int checkpoint_every_rounds;
    char aggregate[GRAFT_OPT_STR];
    float fedprox_mu;
    float clip_norm;
    float server_lr;
    float server_beta1;
    float server_beta2;
    float server_eps;
    char shared_weight[GRAFT_OPT_STR];
    float shared_server_lr;
    float trim_frac;
    char lora_aggregate[GRAFT_OPT_STR];
    int lora_gap;
    int mpi_collectives;
} graft_run_config_t;

extern const graft_option_t graft_run_options[];

/* One setting that every process of a federated run must share. */
typedef struct {
    const char *name; /* the option's name (static) */
    char value[GRAFT_OPT_STR];
} graft_setting_t;

#define GRAFT_MAX_SHARED_SETTINGS 16

/* The settings the modules' tensors and meaning depend on: the method and
 * the heads' pooling, with `optimizer` also the optimizer (whose state a
 * checkpoint holds), and the LoRA targets, sizes, ranks and alphas of the
 * methods in use. Method sets and LoRA targets are written in one order, so
 * that lists naming the same set agree. Module checkpoints record these
 * (metadata train.NAME). Fills out[0..n) and returns n. */
int graft_run_module_settings(const graft_run_config_t *cfg, int optimizer,
                              graft_setting_t *out);

/* The settings every worker must share with the coordinator (the hello
 * carries them): the trunk's identity (a digest of the trunk file's bytes,
 * or the preset and seed of a random one; not its path), seq, then the
 * module settings without the optimizer. Not the tasks: a worker may hold
 * some of them, and the coordinator checks each held task's kind itself.
 * Per-machine settings (threads, data paths, precision, out) are not among
 * them. Fills out[0..n) and returns n. Reads the trunk file whole: call
 * once. */
int graft_run_shared_settings(const graft_run_config_t *cfg, graft_setting_t *out);

/* Where a federated run evaluates (--eval_on): its value, or when empty
 * "workers" under --personalize (only they hold the task modules) and
 * "coordinator" otherwise. A static string or cfg's own. */
const char *graft_run_eval_on(const graft_run_config_t *cfg);

/* 1 when round `round` of a federated run keeps the task modules on the
 * workers: --personalize, from --personal_from on. */
int graft_run_personal_round(const graft_run_config_t *cfg, int round);

/* Module setting `name` with the value `value` (as given or as an older
 * checkpoint recorded it: "red,lora", "0.1") in the form
 * graft_run_module_settings writes it, the other settings taken from cfg,
 * into out (cap bytes). GRAFT_EINVAL (logged, naming `where`) when the
 * value does not parse or name is not a module setting of such a run. */
int graft_run_setting_canonical(const graft_run_config_t *cfg, const char *name,
                                const char *value, char *out, size_t cap, const char *where);

/* One entry of the `tasks` list: NAME:KIND:PATH. */
typedef struct {
    char name[64];
    char kind[32];
    char path[GRAFT_OPT_STR];
} graft_task_spec_t;

/* Parses cfg->tasks ("name:kind:path, ...") into specs; returns the count or
 * a negative error naming the bad entry. */
int graft_run_task_specs(const graft_run_config_t *cfg, graft_task_spec_t *specs, int max);

/* The same for a list string (the value of a --tasks flag). */
int graft_task_specs_parse(const char *list, graft_task_spec_t *specs, int max);

/* Parses a --tasks list and loads every task file into tasks[0..n); returns
 * n, or a negative error after logging which entry or file is bad (nothing
 * is left loaded then). The caller owns the tasks. untrained: the process
 * trains none of them, and files without train rows are fine
 * (graft_task_load_untrained); else they are refused. */
int graft_run_load_tasks(const char *list, graft_task_t **tasks, int max, int untrained);

#endif
