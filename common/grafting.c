/* grafting.c — the `graft` method: fine-tuned checkpoints to evaluated,
 * saved sparse masks (see grafting.h). */
#include "grafting.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

/* Initial refinement scores: the top-k entries lead the other candidates
 * by 2 * 3, so that (Adam moving a score by about the learning rate a step)
 * a swap takes consistent evidence over several batches. */
#define REFINE_SCORE 3.0f

int graft_grafting_new(const graft_run_config_t *cfg, graft_grafting_t **out) {
    *out = NULL;
    int groups;
    int rc = graft_mask_parse_groups(cfg->graft_params, &groups);
    if (rc) return rc;
    graft_run_config_t full = *cfg;
    snprintf(full.method, sizeof full.method, "full");
    graft_grafting_t *g = graft_xcalloc(1, sizeof *g);
    snprintf(g->finetuned, sizeof g->finetuned, "%s", cfg->finetuned);
    rc = graft_trainer_new(&full, &g->tr);
    if (rc) {
        free(g);
        return rc;
    }
    const graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    graft_mask_layout_init(&g->layout, m, groups);
    g->pre = graft_xmalloc(m->num_params * sizeof(float));
    g->ft = graft_xmalloc(m->num_params * sizeof(float));
    memcpy(g->pre, m->params_memory, m->num_params * sizeof(float));
    g->pre_digest = graft_mask_digest(g->pre, m->num_params);
    size_t head_max = 0; /* the largest task scope, for the fine-tuned head's copy */
    for (int t = 0; t < graft_trainer_n_tasks(g->tr); t++) {
        size_t numel = graft_trainer_task_scope(g->tr, t)->numel;
        if (numel > head_max) head_max = numel;
    }
    g->ft_head = graft_xmalloc((head_max ? head_max : 1) * sizeof(float));
    g->ft_head_task = -1;
    *out = g;
    return GRAFT_OK;
}

void graft_grafting_destroy(graft_grafting_t **self_p) {
    graft_grafting_t *g = *self_p;
    if (!g) return;
    graft_trainer_destroy(&g->tr);
    graft_mask_layout_free(&g->layout);
    free(g->pre);
    free(g->ft);
    free(g->order);
    free(g->ft_head);
    free(g);
    *self_p = NULL;
}

/* ---- fine-tuned checkpoints ---------------------------------------------- */

int graft_grafting_finetuned_path(const graft_grafting_t *g, int t, char *out, size_t n) {
    const char *task = graft_task_name(graft_trainer_task(g->tr, t));
    char buf[GRAFT_OPT_STR];
    snprintf(buf, sizeof buf, "%s", g->finetuned);
    const char *found = NULL;
    int entries = 0, unnamed = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        entries++;
        char *eq = strchr(tok, '=');
        if (!eq) {
            unnamed++;
            found = tok;
            continue;
        }
        *eq = '\0';
        if (!strcmp(tok, task)) found = eq + 1;
    }
    if (entries == 0 || (unnamed && entries > 1)) {
        LOG_ERROR("--finetuned must be one checkpoint for every task, or NAME=PATH per task "
                  "(given: '%s')", g->finetuned);
        return GRAFT_EINVAL;
    }
    if (!found || !*found) {
        LOG_ERROR("--finetuned has no entry %s=PATH for task '%s'", task, task);
        return GRAFT_EINVAL;
    }
    struct stat st;
    if (stat(found, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, n, "%s/modules.safetensors", found);
    else
        snprintf(out, n, "%s", found);
    return GRAFT_OK;
}

/* A modules checkpoint of method full (before its tensors are read). */
static int check_finetuned_method(const graft_st_file_t *f) {
    const char *path = graft_st_path(f), *method = graft_st_meta(f, "train.method");
    int methods = 0;
    if (graft_st_expect_format(f, "graft-modules")) {
        LOG_ERROR("--finetuned %s: grafting needs the modules of a full fine-tuning run "
                  "(graft train --method full)", path);
        return GRAFT_EFORMAT;
    }
    if (!method || graft_peft_parse_methods(method, &methods) ||
        (methods & ~GRAFT_M_HEAD) != GRAFT_M_FULL) {
        LOG_ERROR("--finetuned %s: modules of method '%s'; grafting needs the modules of a full "
                  "fine-tuning run (graft train --method full), which hold the whole "
                  "fine-tuned trunk", path, method ? method : "?");
        return GRAFT_EFORMAT;
    }
    return GRAFT_OK;
}

static int check_finetuned(const graft_grafting_t *g, const graft_st_file_t *f) {
    const char *path = graft_st_path(f);
    /* Checkpoints from before train.optimizer was recorded were AdamW's. */
    const char *opt = graft_st_meta(f, "train.optimizer");
    if (!opt || strcmp(opt, "sgd") != 0)
        LOG_WARN("%s: fine-tuned with %s; movement localizes a skill after SGD fine-tuning "
                 "(--optimizer sgd --lr 0.1 --momentum 0.9, as the paper), and top-k masks of "
                 "AdamW's movement recover little of it", path, opt ? opt : "adamw");
    const graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    const float *ft = m->params_memory;
    for (size_t i = 0; i < m->num_params; i++) {
        if (!isfinite(ft[i])) {
            LOG_ERROR("%s: the fine-tuned trunk holds a non-finite value at offset %zu", path, i);
            return GRAFT_EFORMAT;
        }
    }
    return GRAFT_OK;
}

/* Task t's head from a fine-tuned checkpoint into t's scope. */
static int read_head(graft_grafting_t *g, int t, const graft_st_file_t *f) {
    graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    int rc = head->numel > 0 ? graft_scope_st_read(head, f) : GRAFT_OK;
    if (rc)
        LOG_ERROR("%s: has no head for task '%s' (the fine-tuning run must have had a task of "
                  "that name and kind)",
                  graft_st_path(f), graft_task_name(graft_trainer_task(g->tr, t)));
    return rc;
}

int graft_grafting_check_finetuned(graft_grafting_t *g, int t) {
    char path[GRAFT_OPT_STR + 32];
    graft_st_file_t *f = NULL;
    int rc = graft_grafting_finetuned_path(g, t, path, sizeof path);
    if (!rc) rc = graft_st_open(path, &f);
    if (!rc) rc = check_finetuned_method(f);
    if (!rc) rc = read_head(g, t, f);
    graft_st_close(&f);
    return rc;
}

int graft_grafting_load_finetuned(graft_grafting_t *g, int t, const char *path) {
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    size_t bytes = m->num_params * sizeof(float);
    graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    if (strcmp(path, g->ft_path) != 0) {
        g->ft_path[0] = '\0';
        free(g->order);
        g->order = NULL;
        /* The shared scope of method full wraps the trunk's parameters. */
        rc = check_finetuned_method(f);
        if (!rc) rc = graft_scope_st_read(graft_trainer_shared_scope(g->tr), f);
        if (!rc) rc = check_finetuned(g, f);
        if (!rc) {
            memcpy(g->ft, m->params_memory, bytes);
            g->order = graft_mask_rank(&g->layout, g->pre, g->ft);
            snprintf(g->ft_path, sizeof g->ft_path, "%s", path);
        }
        memcpy(m->params_memory, g->pre, bytes);
    }
    if (!rc) rc = read_head(g, t, f);
    if (!rc) {
        graft_scope_export(head, g->ft_head);
        g->ft_head_task = t;
    }
    graft_st_close(&f);
    return rc;
}

/* ---- models ------------------------------------------------------------- */

void graft_grafting_use_finetuned_head(graft_grafting_t *g, int t) {
    GRAFT_ASSERT(g->ft_head_task == t);
    graft_scope_import(graft_trainer_task_scope(g->tr, t), g->ft_head);
}

void graft_grafting_use_pretrained(graft_grafting_t *g) {
    graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    memcpy(m->params_memory, g->pre, m->num_params * sizeof(float));
}

void graft_grafting_use_finetuned(graft_grafting_t *g) {
    GRAFT_ASSERT(g->ft_path[0]);
    graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    memcpy(m->params_memory, g->ft, m->num_params * sizeof(float));
}

void graft_grafting_use_mask(graft_grafting_t *g, const graft_mask_t *mask) {
    graft_gpt2_t *m = graft_trainer_trunk(g->tr);
    graft_mask_apply(mask, g->pre, m->params_memory, m->num_params);
}

size_t graft_grafting_k(const graft_grafting_t *g, double sparsity) {
    return graft_mask_k(sparsity, g->layout.num_eligible);
}

graft_mask_t *graft_grafting_top_k(const graft_grafting_t *g, size_t k) {
    GRAFT_ASSERT(g->order && k <= g->layout.num_eligible);
    return graft_mask_from_order(g->order, k, g->ft);
}

/* ---- refinement --------------------------------------------------------- */

typedef struct {
    const float *score;
} by_score_t;

/* Larger score first; equal scores by candidate rank (larger movement). */
static int cmp_score(const void *a, const void *b, void *ctx) {
    const float *s = ((const by_score_t *)ctx)->score;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (s[i] != s[j]) return s[i] > s[j] ? -1 : 1;
    return (i > j) - (i < j);
}

/* The k candidates with the largest scores, as a mask. */
static graft_mask_t *binarise(const graft_grafting_t *g, const int64_t *cand, const float *score,
                              size_t n, size_t k) {
    size_t *pos = graft_xmalloc((n ? n : 1) * sizeof *pos);
    for (size_t i = 0; i < n; i++) pos[i] = i;
    by_score_t ctx = {score};
    qsort_r(pos, n, sizeof *pos, cmp_score, &ctx);
    int64_t *order = graft_xmalloc((k ? k : 1) * sizeof *order);
    for (size_t i = 0; i < k; i++) order[i] = cand[pos[i]];
    graft_mask_t *mask = graft_mask_from_order(order, k, g->ft);
    free(order);
    free(pos);
    return mask;
}

/* Mean loss of task t's training split (at most cfg.eval_max examples)
 * with the graft of mask. */
static double train_loss(graft_grafting_t *g, int t, const graft_mask_t *mask) {
    graft_grafting_use_mask(g, mask);
    graft_eval_result_t r;
    graft_trainer_evaluate(g->tr, t, GRAFT_SPLIT_TRAIN, &r);
    return r.loss;
}

/* The learning-rate fraction of step `done` (0-based) of `steps`: a cosine
 * from 1 to 0, as the head fit and the sparse tuning use. */
static float cosine_frac(int done, int steps) {
    return 0.5f * (1.0f + cosf((float)M_PI * (float)done / (float)steps));
}

/* One optimiser step on task t's head alone (its scope) from the gradient
 * already in it, at the head's learning rate (--head_lr, else --lr) times
 * lr_frac. */
static void head_update(graft_grafting_t *g, int t, float lr_frac) {
    graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    double sumsq = 0.0;
    graft_scope_grad_sumsq(head, &sumsq);
    graft_scope_step(head, graft_trainer_optimizer(g->tr),
                     graft_trainer_config(g->tr)->lr * lr_frac,
                     graft_clip_scale(graft_trainer_optimizer(g->tr), sumsq));
}

double graft_grafting_fit_head(graft_grafting_t *g, int t, const graft_mask_t *mask, int steps) {
    graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    if (head->numel > 0 && steps > 0) {
        graft_grafting_use_mask(g, mask);
        graft_scope_reset_state(head);
        graft_trainer_peft(g->tr)->heads_only = 1;
        for (int step = 0; step < steps; step++) {
            graft_trainer_backward(g->tr, t);
            head_update(g, t, cosine_frac(step, steps));
        }
        graft_trainer_peft(g->tr)->heads_only = 0;
    }
    double loss = train_loss(g, t, mask);
    graft_grafting_use_pretrained(g);
    return loss;
}

graft_mask_t *graft_grafting_refine(graft_grafting_t *g, int t, size_t k,
                                    graft_refine_stats_t *stats) {
    GRAFT_ASSERT(g->order && k <= g->layout.num_eligible);
    const graft_run_config_t *cfg = graft_trainer_config(g->tr);
    graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    int head_steps = head->numel > 0 ? cfg->graft_head_steps : 0;
    size_t n = (size_t)cfg->graft_candidates * k;
    if (n > g->layout.num_eligible) n = g->layout.num_eligible;
    const int64_t *cand = g->order; /* the top n by movement */
    /* One block: scores, their gradients, Adam's m and v, the movements,
     * and the head fitted to the top-k mask. */
    float *block = graft_xcalloc(5 * (n ? n : 1) + head->numel, sizeof(float));
    float *score = block, *grad = block + n, *adam_m = block + 2 * n, *adam_v = block + 3 * n;
    float *delta = block + 4 * n, *head_topk = block + 5 * n;
    for (size_t i = 0; i < n; i++) {
        score[i] = i < k ? REFINE_SCORE : -REFINE_SCORE;
        delta[i] = g->ft[cand[i]] - g->pre[cand[i]];
    }
    memset(stats, 0, sizeof *stats);
    stats->steps = cfg->graft_refine_steps;
    stats->candidates = n;
    stats->head_steps = head_steps;
    /* The baseline: the top-k mask with its head fitted (or the fine-tuned one). */
    graft_grafting_use_finetuned_head(g, t);
    graft_mask_t *top = graft_grafting_top_k(g, k);
    graft_trainer_seek_sampler(g->tr, 0, 0); /* both fits see the same batches */
    stats->train_loss_topk = graft_grafting_fit_head(g, t, top, head_steps);
    graft_scope_export(head, head_topk);
    /* The search; with head fitting on, the head follows the mask (to
     * steer the scores only). */
    graft_adamw_config_t opt = graft_adamw_defaults();
    opt.weight_decay = 0.0f;
    const float *dtheta = graft_trainer_trunk(g->tr)->grads_memory;
    graft_scope_reset_state(head);
    for (int step = 1; step <= cfg->graft_refine_steps; step++) {
        graft_mask_t *cur = binarise(g, cand, score, n, k);
        graft_grafting_use_mask(g, cur);
        graft_mask_destroy(&cur);
        double loss = graft_trainer_backward(g->tr, t);
        if (step == 1) stats->first_loss = loss;
        stats->last_loss = loss;
        /* Straight through the binarisation: d theta_i / d gamma_i = delta_i. */
        for (size_t i = 0; i < n; i++) grad[i] = dtheta[cand[i]] * delta[i];
        graft_adamw_update(&opt, score, grad, adam_m, adam_v, n, cfg->graft_refine_lr, step,
                           1.0f, 0);
        if (head_steps > 0) head_update(g, t, 1.0f);
    }
    graft_mask_t *mask = binarise(g, cand, score, n, k);
    /* The refined mask's head is fitted afresh like the top-k one's, on
     * the same batches, so that neither mask wins on extra head training
     * (identical masks tie, and the top-k one is kept). */
    if (head_steps > 0) {
        graft_grafting_use_finetuned_head(g, t);
        graft_trainer_seek_sampler(g->tr, 0, 0);
    }
    stats->train_loss_refined = head_steps > 0 ? graft_grafting_fit_head(g, t, mask, head_steps)
                                               : train_loss(g, t, mask);
    stats->accepted = stats->train_loss_refined < stats->train_loss_topk;
    if (!stats->accepted) {
        graft_mask_t *tmp = mask;
        mask = top;
        top = tmp;
        graft_scope_import(head, head_topk);
    }
    stats->changed = k - graft_mask_intersection(mask, top);
    graft_mask_destroy(&top);
    graft_grafting_use_pretrained(g);
    free(block);
    return mask;
}

/* ---- tuning the grafted region ------------------------------------------ */

double graft_grafting_tune(graft_grafting_t *g, int t, graft_mask_t *mask, int steps) {
    graft_trainer_t *tr = g->tr;
    graft_scope_t *head = graft_trainer_task_scope(tr, t);
    float *theta = graft_trainer_trunk(tr)->params_memory;
    const float *dtheta = graft_trainer_trunk(tr)->grads_memory;
    size_t k = mask->k;
    /* One block: the values' gradients and the optimiser's m and v. */
    float *block = graft_xcalloc(3 * (k ? k : 1), sizeof(float));
    float *grad = block, *opt_m = block + k, *opt_v = block + 2 * k;
    graft_grafting_use_mask(g, mask);
    graft_scope_reset_state(head);
    for (int step = 1; step <= steps; step++) {
        graft_trainer_backward(tr, t);
        /* (k) the trunk gradient at the grafted offsets; clipping over
         * them and the head together. */
        double sumsq = 0.0;
        for (size_t i = 0; i < k; i++) grad[i] = dtheta[mask->index[i]];
        graft_grad_sumsq(grad, k, &sumsq);
        graft_scope_grad_sumsq(head, &sumsq);
        float scale = graft_clip_scale(graft_trainer_optimizer(tr), sumsq);
        float frac = cosine_frac(step - 1, steps);
        graft_optim_update(graft_trainer_optimizer(tr), mask->value, grad, opt_m, opt_v, k,
                           graft_trainer_config(tr)->lr * frac, step, scale, 0);
        for (size_t i = 0; i < k; i++) theta[mask->index[i]] = mask->value[i];
        graft_scope_step(head, graft_trainer_optimizer(tr), graft_trainer_config(tr)->lr * frac,
                         scale);
    }
    free(block);
    double loss = train_loss(g, t, mask);
    graft_grafting_use_pretrained(g);
    return loss;
}

/* ---- mask files --------------------------------------------------------- */

int graft_grafting_save(const graft_grafting_t *g, int t, const graft_mask_t *mask,
                        double sparsity, int refine_steps, const char *path) {
    const graft_run_config_t *cfg = graft_trainer_config(g->tr);
    char head_steps[32], tune_steps[32];
    snprintf(head_steps, sizeof head_steps, "%d", cfg->graft_head_steps);
    snprintf(tune_steps, sizeof tune_steps, "%d", cfg->graft_tune_steps);
    const graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
    graft_st_tensor_t *extra = graft_xcalloc((size_t)head->n_tensors + 1, sizeof *extra);
    char *names = graft_xcalloc((size_t)head->n_tensors + 1, 2 * GRAFT_SCOPE_NAME);
    int n_extra = head->numel ? graft_scope_st_entries(head, extra, names) : 0;
    char trunk[GRAFT_OPT_STR + 64], sp[32], digest[32], steps[32], eligible[32];
    if (*cfg->trunk)
        snprintf(trunk, sizeof trunk, "%s", cfg->trunk);
    else
        snprintf(trunk, sizeof trunk, "preset %s, seed %d", cfg->preset, cfg->seed);
    snprintf(sp, sizeof sp, "%.9g", sparsity);
    snprintf(digest, sizeof digest, "%016" PRIx64, g->pre_digest);
    snprintf(steps, sizeof steps, "%d", refine_steps);
    snprintf(eligible, sizeof eligible, "%zu", g->layout.num_eligible);
    const char *keys[] = {"mask.task",         "mask.sparsity",    "mask.eligible",
                          "mask.trunk",        "mask.trunk_digest", "mask.finetuned",
                          "mask.refine_steps", "mask.head_steps",  "mask.tune_steps"};
    const char *vals[] = {graft_task_name(graft_trainer_task(g->tr, t)),
                          sp,
                          eligible,
                          trunk,
                          digest,
                          g->ft_path,
                          steps,
                          head_steps,
                          tune_steps};
    int rc = graft_mask_save(mask, &g->layout, path, extra, n_extra, keys, vals,
                             (int)(sizeof keys / sizeof keys[0]));
    free(extra);
    free(names);
    return rc;
}

int graft_grafting_load_mask(graft_grafting_t *g, const char *path, int *task,
                             graft_mask_t **out) {
    *out = NULL;
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    const char *name = graft_st_meta(f, "mask.task");
    const char *digest = graft_st_meta(f, "mask.trunk_digest");
    char mine[32];
    snprintf(mine, sizeof mine, "%016" PRIx64, g->pre_digest);
    int t = name ? graft_peft_find_task(graft_trainer_peft(g->tr), name) : -1;
    if ((rc = graft_st_expect_format(f, "graft-mask"))) {
        LOG_ERROR("--method graft takes the mask files of `graft train --method graft`; a "
                  "modules checkpoint goes with the --method it was trained with");
    } else if (t < 0) {
        LOG_ERROR("%s: mask for task '%s', which is not in --tasks", path, name ? name : "?");
        rc = GRAFT_EINVAL;
    } else if (!digest || strcmp(digest, mine) != 0) {
        LOG_ERROR("%s: mask built on a trunk with digest %s, but this trunk's is %s (give the "
                  "--trunk, or --preset and --seed, it was built with)", path,
                  digest ? digest : "(none)", mine);
        rc = GRAFT_EINVAL;
    }
    if (!rc) rc = graft_mask_read(f, &g->layout, out);
    graft_scope_t *head = t >= 0 ? graft_trainer_task_scope(g->tr, t) : NULL;
    if (!rc && head->numel > 0) rc = graft_scope_st_read(head, f);
    graft_st_close(&f);
    if (rc) {
        graft_mask_destroy(out);
        return rc;
    }
    *task = t;
    return GRAFT_OK;
}

int graft_parse_sparsities(const char *list, double *out, int max) {
    char buf[GRAFT_OPT_STR];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        char *end;
        double v = strtod(tok, &end);
        if (*end || !(v > 0.0 && v <= 1.0) || n == max) {
            LOG_ERROR("--sparsity: '%s' is not a fraction in (0, 1] (at most %d of them)", tok,
                      max);
            return GRAFT_EINVAL;
        }
        out[n++] = v;
    }
    if (!n) LOG_ERROR("--sparsity: no value given");
    return n ? n : GRAFT_EINVAL;
}
