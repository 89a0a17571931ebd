/* grafting.h — the `graft` method end to end (DESIGN §4, skill
 * localization): per task, a sparse region of a fully fine-tuned trunk is
 * grafted onto the pretrained one through a mask (mask.h) — the top k
 * parameters by movement |theta_ft - theta_pre|, optionally refined on the
 * task's training data — the grafted model is evaluated like any other, and
 * the mask is saved with the task's head.
 *
 * A graft_grafting_t owns a trainer of method `full` built from the run
 * config (the trunk is its shared scope, so a backward pass gives the
 * gradient of every trunk parameter, which refinement needs) and beside it
 * theta_pre and the theta_ft of the fine-tuned checkpoint loaded last. The
 * trunk's parameter block holds the model under evaluation — the pretrained
 * trunk, the fine-tuned one or a graft — and the task heads are the
 * fine-tuned ones (heads are task scope: grafting covers only the trunk).
 *
 * Movement locates a skill only when the fine-tuning moved parameters in
 * proportion to their gradients: the paper fine-tunes with SGD, and so
 * should the source runs here (--optimizer sgd). AdamW's normalised steps
 * move nearly every parameter by about the same amount, and top-k masks of
 * its movement recover little (README, Grafting).
 *
 * Refinement (--graft_refine_steps N > 0) searches for a better mask of the
 * same k among the top c*k parameters by movement (c = --graft_candidates).
 * Each candidate has a score, +3 for the entries of the top-k mask and -3
 * for the others; every step grafts the k best-scored candidates, runs the
 * trunk's forward and backward pass on a batch of the task's training split
 * and moves the scores by Adam with the straight-through gradient
 *     dL/ds_i = dL/dtheta_i * (theta_ft_i - theta_pre_i),
 * the derivative of the loss with respect to gamma_i taken as if the mask
 * were continuous (theta = theta_pre + gamma * (theta_ft - theta_pre)): a
 * first-order estimate of what grafting candidate i would change. The model
 * is binary at every step, so the mask trained is the mask kept. (A sigmoid
 * relaxation, theta_pre + sigmoid(s) * delta, tried first, lowered the
 * relaxed loss, but re-binarising it raised the training loss in 3 of 30
 * settings on the synthetic tasks; the straight-through search did in 1 of
 * 48, a 20-step run.) The final k best-scored candidates replace the top-k
 * mask only if they lower the training loss (mean over at most --eval_max
 * training examples); otherwise the top-k mask is kept, so refinement never
 * makes the training loss worse, and the sparsity is exactly k either way.
 *
 * Heads: a classification head is task scope, not trunk, and the
 * fine-tuned one was trained on top of the whole fine-tuned trunk; on a
 * graft (99% pretrained at 1% sparsity) it does worse than a linear probe.
 * --graft_head_steps N fits the head to the grafted trunk (the trunk's
 * backward pass skipped), and refinement then judges each candidate mask
 * with its own fitted head. --graft_tune_steps N goes beyond the paper:
 * after localisation it trains the k grafted values themselves (sparse
 * fine-tuning of the found region) with the head.
 *
 * Ownership: graft_grafting_new() returns an owned object that owns the
 * trainer (trunk, tasks, heads) and the parameter copies;
 * graft_grafting_destroy() frees all of it. Masks returned are the
 * caller's (graft_mask_destroy).
 */
#ifndef GRAFT_GRAFTING_H
#define GRAFT_GRAFTING_H

#include "mask.h"
#include "trainer.h"

typedef struct graft_grafting {
    graft_trainer_t *tr;          /* method full; its trunk holds the model under evaluation */
    graft_mask_layout_t layout;   /* eligible tensors (cfg.graft_params) */
    float *pre;                   /* (num_params) theta_pre */
    float *ft;                    /* (num_params) theta_ft of ft_path */
    int64_t *order;               /* (layout.num_eligible) offsets by movement of ft */
    char finetuned[GRAFT_OPT_STR]; /* cfg.finetuned (graft_grafting_finetuned_path) */
    char ft_path[GRAFT_OPT_STR];  /* checkpoint held in ft; "" before the first load */
    float *ft_head;               /* the fine-tuned head of task ft_head_task (its scope) */
    int ft_head_task;             /* -1 before the first load */
    uint64_t pre_digest;          /* graft_mask_digest of pre */
} graft_grafting_t;

/* Builds the trunk (cfg.trunk, or the preset from cfg.seed), the tasks and
 * their heads; the trunk becomes theta_pre. */
int graft_grafting_new(const graft_run_config_t *cfg, graft_grafting_t **out);
void graft_grafting_destroy(graft_grafting_t **self_p);

/* The fine-tuned checkpoint that g->finetuned (cfg.finetuned) names for task t: the one
 * entry for every task, or the entry NAME=PATH for t's name; a directory
 * stands for its modules.safetensors. */
int graft_grafting_finetuned_path(const graft_grafting_t *g, int t, char *out, size_t n);

/* Loads theta_ft from a `graft train --method full` checkpoint (unless it
 * is the one already loaded) and task t's head from it. The trunk is left
 * holding theta_pre. */
int graft_grafting_load_finetuned(graft_grafting_t *g, int t, const char *path);

/* Checks, without reading the trunk, that task t's fine-tuned checkpoint
 * is one of method full with a head for t (the head is read into t's
 * scope); a failure is logged with the file and what is wrong. For
 * `graft train --method graft` to refuse a bad --finetuned before it
 * writes anything. */
int graft_grafting_check_finetuned(graft_grafting_t *g, int t);

/* Task t's head := the fine-tuned one (t must be the task loaded last). */
void graft_grafting_use_finetuned_head(graft_grafting_t *g, int t);

/* The trunk := theta_pre, theta_ft, or the graft of mask. */
void graft_grafting_use_pretrained(graft_grafting_t *g);
void graft_grafting_use_finetuned(graft_grafting_t *g);
void graft_grafting_use_mask(graft_grafting_t *g, const graft_mask_t *mask);

/* k for a sparsity over the eligible parameters. */
size_t graft_grafting_k(const graft_grafting_t *g, double sparsity);

/* The top-k mask of the loaded theta_ft. */
graft_mask_t *graft_grafting_top_k(const graft_grafting_t *g, size_t k);

typedef struct {
    int steps;
    size_t candidates;        /* parameters with a score */
    double first_loss;        /* batch loss of the first step's mask */
    double last_loss;         /* batch loss of the last step's mask */
    double train_loss_topk;   /* training loss of the top-k mask */
    double train_loss_refined; /* training loss of the refined mask */
    int head_steps;           /* steps fitting the head to each mask (0: the fine-tuned head) */
    int accepted;             /* the refined mask lowered the training loss and is returned */
    size_t changed;           /* entries of the top-k mask the returned one does not have */
} graft_refine_stats_t;

/* Fits task t's head (classification; a no-op for generation), from the
 * one in place, to the graft of mask: `steps` AdamW steps on training batches at the head's
 * learning rate (--head_lr, else --lr) decaying to zero on a cosine, the
 * trunk fixed (its backward pass skipped). Returns the training loss of
 * the graft with the fitted head; the trunk is left holding theta_pre. */
double graft_grafting_fit_head(graft_grafting_t *g, int t, const graft_mask_t *mask, int steps);

/* Refines the top-k mask of task t for cfg.graft_refine_steps steps (see
 * the header comment) and returns the refined mask, or the top-k one if
 * refining did not lower the training loss; the trunk is left holding
 * theta_pre. With cfg.graft_head_steps > 0 each of the two masks is
 * judged with a head fitted to it from the fine-tuned one
 * (graft_grafting_fit_head, the same steps for both), the head trains
 * along with the scores during the search to steer them, and task t's
 * head is left as the one fitted to the mask returned. */
graft_mask_t *graft_grafting_refine(graft_grafting_t *g, int t, size_t k,
                                    graft_refine_stats_t *stats);

/* Sparse fine-tuning of the localised region: trains the k values of mask
 * (from theta_ft) and task t's head together for `steps` AdamW steps on
 * training batches at --lr (the head at --head_lr) decaying to zero on a
 * cosine, every other trunk parameter fixed at theta_pre. The mask keeps
 * its offsets and takes the trained values. Returns the training loss; the
 * trunk is left holding theta_pre. (Not part of the paper's grafting,
 * which transplants theta_ft unchanged: `--graft_tune_steps`.) */
double graft_grafting_tune(graft_grafting_t *g, int t, graft_mask_t *mask, int steps);

/* Writes mask with task t's head and metadata (task, sparsity, the trunk
 * and fine-tuned sources, the trunk digest, refinement, head-fit and tuning
 * steps). */
int graft_grafting_save(const graft_grafting_t *g, int t, const graft_mask_t *mask,
                        double sparsity, int refine_steps, const char *path);

/* Reads a mask file: refuses one built on another trunk (digest) or for a
 * task not in the run; sets that task's head from it and returns the task
 * index and the mask. Applying it (graft_grafting_use_mask) reproduces the
 * grafted model bit for bit. */
int graft_grafting_load_mask(graft_grafting_t *g, const char *path, int *task,
                             graft_mask_t **out);

/* Parses a comma list of sparsities in (0, 1]; returns the count or a
 * negative error naming the bad item. */
int graft_parse_sparsities(const char *list, double *out, int max);

#endif
