/* peft.h — parameter-efficient modules on a frozen trunk, in scopes.
 *
 * A graft_peft_t binds one trunk to the trainable modules of a run:
 *  - scope "shared": task-agnostic modules (the shared LoRA pair of MTLoRA,
 *    or, for method `full`, the trunk weights themselves);
 *  - scope "task.NAME" per task: the task's LoRA pair, adapter, RED vectors,
 *    LayerNorm copies (lntune), channel deltas, and its classification head.
 * Every scope is one contiguous span (scope.h), so a coordinator can send,
 * average and checkpoint it whole.
 *
 * Methods (DESIGN §4), combined as a set ("lora,red"):
 *   full     the trunk itself is trained (in the shared scope)
 *   head     only the task heads (always present for classification tasks)
 *   lora     W x + (alpha/r) B A x on chosen projections; shared and/or task
 *            pairs with their own rank and alpha; B = 0 at start
 *   adapter  per-task h + U relu(D LN(h)) after each block; U = 0 at start
 *   red      per-task per-layer h <- s * h + b on the MLP output; s=1, b=0
 *   lntune   per-task copies of every LayerNorm scale and shift
 *   channels per-task deltas on the top-k MLP-output channels by Taylor
 *            importance (two-stage, stage 2); indices saved with the task
 * With every module at its initial value the outputs equal the trunk's.
 *
 * The trunk's forward/backward (gpt2.c) calls the peft_* hooks below at
 * fixed points of each block; each hook is a no-op when nothing is
 * attached, so the plain trunk pays nothing.
 *
 * Ownership: graft_peft_new() returns an owned object holding its scopes
 * and module activations; the trunk is borrowed and must outlive it.
 *
 * The struct stays public for peft.c, the trunk's hooks, the trainer, the
 * LoRA-pair bookkeeping of aggregation (aggregate.c, contribute.c: lora_idx,
 * trunk) and the tests; everything else goes through the functions below
 * (the "interface" block after graft_peft_find_task).
 */
#ifndef GRAFT_PEFT_H
#define GRAFT_PEFT_H

#include "gpt2.h"
#include "ops.h"
#include "scope.h"

enum {
    GRAFT_M_FULL = 1 << 0,
    GRAFT_M_HEAD = 1 << 1,
    GRAFT_M_LORA = 1 << 2,
    GRAFT_M_ADAPTER = 1 << 3,
    GRAFT_M_RED = 1 << 4,
    GRAFT_M_LNTUNE = 1 << 5,
    GRAFT_M_CHANNELS = 1 << 6,
    /* Sparse grafting masks (mask.h, grafting.h): built from fully fine-tuned
     * checkpoints by `graft train --method graft`; attaches no modules. */
    GRAFT_M_GRAFT = 1 << 7,
};

/* The four adaptable projections of a block. */
typedef enum { GRAFT_PROJ_QKV, GRAFT_PROJ_ATTN, GRAFT_PROJ_FC, GRAFT_PROJ_FCPROJ, GRAFT_NUM_PROJ } graft_proj_t;

typedef struct {
    int methods;            /* GRAFT_M_* set */
    int lora_targets;       /* bit p set: adapt projection p */
    int lora_shared_rank;   /* 0: no shared pair */
    float lora_shared_alpha;
    int lora_task_rank;     /* 0: no per-task pair */
    float lora_task_alpha;
    int adapter_dim;        /* bottleneck width m */
    int channels_k;         /* channels kept per layer */
    float head_lr_scale;    /* the heads' learning rate over the modules' (0: 1) */
    graft_pool_t pool;      /* what the classification heads read (ops.h) */
    uint64_t seed;          /* for LoRA A initialisation */
} graft_peft_config_t;

/* Parses "lora,red" into a method set; GRAFT_EINVAL names the bad item. */
int graft_peft_parse_methods(const char *list, int *methods);
/* Parses "qkv,attn,fc,fcproj" (or "all") into a projection set. */
int graft_peft_parse_targets(const char *list, int *targets);
const char *graft_proj_name(graft_proj_t p);
/* A projection set as "qkv,fc" (or "all"), what the parser reads back. */
void graft_peft_targets_str(int targets, char *buf, size_t n);
/* A method set as a comma list in one fixed order (e.g. "lntune,channels"
 * for "channels,lntune"). */
void graft_peft_methods_str(int methods, char *buf, size_t n);

/* One LoRA pair on one projection: views into a scope. */
typedef struct {
    float *A, *dA; /* (in, r); dA NULL while A is frozen */
    float *B, *dB; /* (r, out) */
    int r;
    float scale;   /* alpha / r */
} graft_lora_t;

/* Per-task description handed to graft_peft_new. */
typedef struct {
    const char *name;
    int num_labels; /* > 0: classification head with this many classes; 0: generation */
} graft_peft_task_t;

/* A task's modules: views into its scope (NULL when the method is off). */
typedef struct {
    char name[64];
    int num_labels;
    graft_scope_t *scope;
    int *lora_idx;                     /* (L, proj, A/B) scope indices, -1: none; owned */
    int head_w, head_b;                /* (C, K), (K) */
    int red_s, red_b;                  /* (L, C) */
    int ln1w, ln1b, ln2w, ln2b, lnfw, lnfb; /* (L, C) / (C) */
    int ad_lnw, ad_lnb, ad_down, ad_downb, ad_up, ad_upb; /* (L,C) (L,C) (L,C,m) (L,m) (L,m,C) (L,C) */
    int ch_w, ch_b;                    /* (L, 4C, k), (L, k) */
    int ch_score;                      /* (L, C) statistic "channels.score" */
    int32_t *channels;                 /* (L, k) chosen channel indices, owned */
    float *channel_scores;             /* (L, C) accumulated Taylor importance: a view of
                                          the scope's statistic ch_score */
    float *logit_offset;               /* (K) added to the head's logits in training; owned,
                                          NULL: none (graft_peft_set_logit_offset) */
} graft_peft_task_modules_t;

typedef struct graft_peft {
    graft_peft_config_t cfg;
    graft_gpt2_t *trunk; /* borrowed */
    graft_scope_t *shared;
    int *shared_lora_idx; /* (L, proj, A/B) scope indices, -1: none; owned */
    int n_tasks;
    graft_peft_task_modules_t *tasks;
    int active; /* task of the current batch, -1: none */
    int heads_only; /* 1: only the heads train, the trunk's backward is skipped
                     * (grafting fits a head on a fixed grafted trunk) */

    /* Module activations for the trunk's allocated (B, T), one block. */
    int B, T;
    float *acts;          /* owned */
    float *grad_scratch;  /* owned: 2 x (B*T, 4C) scratch */
    float *lora_scratch;  /* owned: LoRA backward's per-block parts, lora_scratch_n floats */
    size_t lora_scratch_n;
    /* LoRA merged into the weights a pass multiplies by (peft_forward_begin):
     * W + scale A B for every adapted (layer, projection); owned, NULL
     * without LoRA. Holds the LoRA targets among the trunk's (L,C,3C)
     * (L,C,C) (L,C,4C) (L,4C,C) projection weights, in that order and
     * layout (merged_n floats); merged_on (L, proj) marks the ones in use. */
    float *merged;
    size_t merged_n;
    int *merged_on;
    float *red_in;        /* (L, BT, C) MLP output before RED */
    float *ad_in, *ad_ln, *ad_mean, *ad_rstd, *ad_h, *ad_a; /* adapter activations */
    float *ch_gather;     /* (BT, k) */
    /* Classification head activations. */
    float *pooled, *dpooled, *head_logits, *head_probs, *head_dlogits, *head_losses;
    int32_t *pos, *labels;
} graft_peft_t;

graft_peft_t *graft_peft_new(graft_gpt2_t *trunk, const graft_peft_config_t *cfg,
                             const graft_peft_task_t *tasks, int n_tasks);
void graft_peft_destroy(graft_peft_t **self_p);

int graft_peft_find_task(const graft_peft_t *p, const char *name);

/* ---- the interface for code outside the trainer and the kernels ----------
 * Coordinator, worker, aggregation and the CLI use these (and the
 * functions below) rather than the struct's fields; the fields are for
 * peft.c, the trunk's hooks (gpt2.c), the trainer and the tests. Pointers
 * are borrowed from p. */

/* The method set (GRAFT_M_*) and the heads' learning-rate scale. */
int graft_peft_methods(const graft_peft_t *p);
float graft_peft_head_lr_scale(const graft_peft_t *p);
/* The tasks: how many, and task t's name. */
int graft_peft_n_tasks(const graft_peft_t *p);
const char *graft_peft_task_name(const graft_peft_t *p, int task);
/* The shared scope, and task t's own. */
graft_scope_t *graft_peft_shared(const graft_peft_t *p);
graft_scope_t *graft_peft_task_scope(const graft_peft_t *p, int task);
/* Task t's classification head, views into its scope: *w (C, K) and *b
 * (K). 0, both NULL, for a generation task (no head). */
int graft_peft_head(const graft_peft_t *p, int task, float **w, float **b);

/* Every trainable scope of task t: shared (when not empty) then the task's
 * own; returns the count written into out (at most 2). */
int graft_peft_scopes(const graft_peft_t *p, int task, graft_scope_t **out);

/* ---- training and inference entry points -------------------------------- */

/* Classification: loss of task t on a batch of token rows (B,T) pooled at
 * pos (B) with labels (B); fills p->head_probs (B,K). With backward != 0
 * the scopes' gradients are accumulated (the caller zeroes them), and the
 * loss and probabilities are those of the logits plus the task's
 * logit_offset, when it has one. */
float graft_peft_classify(graft_peft_t *p, int task, const int32_t *tokens, const int32_t *pos,
                          const int32_t *labels, int B, int T, int backward);

/* Generation: next-token loss of task t over targets >= 0. */
float graft_peft_lm(graft_peft_t *p, int task, const int32_t *inputs, const int32_t *targets,
                    int B, int T, int backward);

/* Zero the gradients of every scope that task t trains (and the trunk's
 * activation gradients). */
void graft_peft_zero_grad(graft_peft_t *p, int task);

/* ---- hooks called by the trunk (gpt2.c) ----------------------------------- */

/* The lowest gradient the backward pass must produce for what trains now
 * (the trunk, or the shared modules and those of the active task): layer
 * *layer at *depth; layers below it need no gradient at all. A trainable
 * trunk or a trunk without modules: layer 0, GRAFT_GRAD_BLOCK_IN. Nothing
 * trains below the final LayerNorm: *layer = L. */
void peft_grad_floor(const graft_gpt2_t *m, int *layer, graft_grad_depth_t *depth);
/* LayerNorm parameters for layer l (which = 1, 2) or the final one (l < 0). */
void peft_ln_params(const graft_gpt2_t *m, int l, int which, const float **w, const float **b,
                    float **dw, float **db);
/* At the start of every forward pass: merges the LoRA pairs in use (the
 * shared ones and the active task's) into p->merged. */
void peft_forward_begin(graft_gpt2_t *m);
/* The weight (in, out) that projection proj of layer l multiplies by, in
 * the forward pass and for the input gradient: the trunk's, or with LoRA
 * on it the merged W + scale A B. */
const float *peft_linear_weight(const graft_gpt2_t *m, int l, graft_proj_t proj);
/* out (N, out) += the channel deltas (MLP output projection). */
void peft_linear_forward(graft_peft_t *p, int l, graft_proj_t proj, float *out, const float *inp,
                         int N);
/* The LoRA and channel-delta gradients of projection proj from its output
 * gradient dout and input inp; dinp (N, in) += the channel deltas' part
 * (LoRA's part is in the merged weight), or NULL when not needed. */
void peft_linear_backward(graft_peft_t *p, int l, graft_proj_t proj, float *dinp,
                          const float *dout, const float *inp, int N);
/* MLP output (N, C): RED, in place. fch_gelu (N, 4C). */
void peft_mlp_out_forward(graft_peft_t *p, int l, float *out, const float *fch_gelu, int N);
/* From dout (N, C), the gradient w.r.t. the MLP output, the gradient w.r.t.
 * the output projection's product: with RED s * dout, written into dmm
 * (N, C) and returned; without, dout itself. */
const float *peft_mlp_out_backward(graft_peft_t *p, int l, float *dmm, const float *dout,
                                   int N);
/* Block output (N, C): the adapter, in place. */
void peft_block_out_forward(graft_peft_t *p, int l, float *h, int N);
void peft_block_out_backward(graft_peft_t *p, int l, float *dh, int N);

/* ---- two-stage channel selection ------------------------------------------ */

/* After a backward pass: adds |sum over tokens of dL/dh_c * h_c| per MLP
 * output channel of every layer to task t's scores (first-order Taylor). */
void graft_peft_accumulate_channel_scores(graft_peft_t *p, int task);
/* Keeps the top cfg.channels_k channels per layer by score (ties: lower
 * index first) as the task's channels; deltas restart at zero. */
void graft_peft_select_channels(graft_peft_t *p, int task);
/* The same choice, deltas left as they are (a federated worker choosing
 * from the aggregated scores it was sent, with the deltas it was sent). */
void graft_peft_choose_channels(graft_peft_t *p, int task);

/* ---- LoRA merge ----------------------------------------------------------- */

/* W += scale * A B for every LoRA pair of task t (and shared) — and back. */
void graft_peft_merge_lora(graft_peft_t *p, int task, int sign);

/* Folds task t's modules into the trunk's own weights, so that the plain
 * trunk computes what the trunk with those modules did (the same function,
 * summed in another order): the LoRA pairs (shared and the task's) into
 * their projections, the channel deltas into the chosen columns of the MLP
 * output projection and its bias, RED's scale and bias into that
 * projection's columns and bias (s (x W + b) + b' = x W diag(s) + s b + b'),
 * lntune's LayerNorms over the trunk's. The adapter is nonlinear and does
 * not fold: GRAFT_EINVAL (logged), with the trunk untouched. The heads stay
 * in the task's scope. Afterwards p must not run again (its LoRA would be
 * counted twice): destroy it. */
int graft_peft_fold(graft_peft_t *p, int task);

/* The classification heads train at scale times the modules' learning rate
 * (scale <= 0: 1). A linear probe wants a far larger rate than most modules
 * (--head_lr). */
void graft_peft_set_head_lr_scale(graft_peft_t *p, float scale);

/* Training of task t's head (backward passes only, never evaluation) sees
 * its logits plus offset (K floats, copied; NULL: none). A federated worker
 * sets offset_k = tau (log p_local(k) - log p_run(k)): under label shift
 * p_local(y | x) is proportional to p_run(y | x) p_local(y) / p_run(y), so
 * the head fits the run's posterior from a shard with skewed labels
 * instead of the shard's own (logit adjustment, Menon et al. 2021, applied
 * to label-skewed clients as in FedLC, Zhang et al. 2022). */
void graft_peft_set_logit_offset(graft_peft_t *p, int task, const float *offset);

/* Marks the LoRA A factors of the shared scope (shared) and of every task
 * scope (tasks) frozen (1) or trained (0): with frozen A only B is trained
 * (lora_aggregate freeze_a, which averages B exactly). */
void graft_peft_freeze_lora_a(graft_peft_t *p, int shared, int tasks);

/* Exact count of trainable parameters of a task (shared + own scope) and of
 * the shared scope alone. */
size_t graft_peft_task_params(const graft_peft_t *p, int task);

#endif
