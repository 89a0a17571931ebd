/* graft.c — the commands of the `graft` method (grafting.h): `graft train
 * --method graft` builds, refines, evaluates and saves one sparse mask per
 * task and sparsity; `graft eval --method graft` evaluates saved masks;
 * `graft mask overlap` and `graft mask show` read mask files. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "events.h"
#include "grafting.h"

#define MAX_SPARSITIES 32

/* ---- overlap reports ------------------------------------------------------ */

/* The overlap of n masks as JSON: tasks (labels), k, Jaccard and
 * intersection matrices; sparsity when one applies (> 0). */
static json_t *overlap_json(graft_mask_t *const *masks, const char *const *labels, int n,
                            double sparsity) {
    json_t *jl = json_array(), *jk = json_array(), *jj = json_array(), *ji = json_array();
    for (int i = 0; i < n; i++) {
        json_t *row = json_array(), *irow = json_array();
        for (int j = 0; j < n; j++) {
            json_array_append_new(row, json_real(graft_mask_jaccard(masks[i], masks[j])));
            json_array_append_new(
                irow, json_integer((json_int_t)graft_mask_intersection(masks[i], masks[j])));
        }
        json_array_append_new(jl, json_string(labels[i]));
        json_array_append_new(jk, json_integer((json_int_t)masks[i]->k));
        json_array_append_new(jj, row);
        json_array_append_new(ji, irow);
    }
    json_t *o = json_pack("{s:o, s:o, s:o, s:o}", "tasks", jl, "k", jk, "jaccard", jj,
                          "intersection", ji);
    if (sparsity > 0) json_object_set_new(o, "sparsity", json_real(sparsity));
    return o;
}

static int write_overlap_tsv(const char *path, json_t *o) {
    FILE *tsv = NULL;
    if (graft_mkdirs_for(path) || !(tsv = fopen(path, "w"))) {
        LOG_ERROR("%s: cannot write the overlap table", path);
        return GRAFT_EIO;
    }
    json_t *tasks = json_object_get(o, "tasks"), *jac = json_object_get(o, "jaccard");
    size_t n = json_array_size(tasks);
    fprintf(tsv, "task");
    for (size_t j = 0; j < n; j++) fprintf(tsv, "\t%s", json_string_value(json_array_get(tasks, j)));
    for (size_t i = 0; i < n; i++) {
        fprintf(tsv, "\n%s", json_string_value(json_array_get(tasks, i)));
        for (size_t j = 0; j < n; j++)
            fprintf(tsv, "\t%.6f", json_real_value(json_array_get(json_array_get(jac, i), j)));
    }
    fprintf(tsv, "\n");
    if (fclose(tsv) != 0) {
        LOG_ERROR("%s: cannot write the overlap table", path);
        return GRAFT_EIO;
    }
    return GRAFT_OK;
}

/* Prints the Jaccard matrix of n masks, writes it as PREFIX.tsv and
 * PREFIX.json (prefix not NULL), and logs it as a `mask_overlap` event (for
 * `graft report`) in ev (a no-op when NULL). */
static int report_overlap(graft_mask_t *const *masks, const char *const *labels, int n,
                          double sparsity, const char *prefix, graft_events_t *ev) {
    json_t *o = overlap_json(masks, labels, n, sparsity);
    json_t *jac = json_object_get(o, "jaccard");
    int w = 8;
    for (int j = 0; j < n; j++) w = (int)strlen(labels[j]) > w ? (int)strlen(labels[j]) : w;
    printf("%-*s", w + 2, "jaccard");
    for (int j = 0; j < n; j++) printf(" %*s", w, labels[j]);
    for (int i = 0; i < n; i++) {
        printf("\n%-*s", w + 2, labels[i]);
        for (int j = 0; j < n; j++)
            printf(" %*.4f", w, json_real_value(json_array_get(json_array_get(jac, (size_t)i), (size_t)j)));
    }
    printf("\n");
    int rc = GRAFT_OK;
    if (prefix) {
        char path[GRAFT_OPT_STR + 64];
        snprintf(path, sizeof path, "%s.tsv", prefix);
        rc = write_overlap_tsv(path, o);
        snprintf(path, sizeof path, "%s.json", prefix);
        if (!rc && json_dump_file(o, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0) {
            LOG_ERROR("%s: cannot write the overlap report", path);
            rc = GRAFT_EIO;
        }
        if (!rc) printf("wrote %s.tsv and %s.json\n", prefix, prefix);
    }
    graft_events_emit(ev, "mask_overlap", o);
    return rc;
}

/* ---- graft train --method graft ------------------------------------------- */

typedef struct {
    graft_grafting_t *g;
    graft_events_t *ev;
    int t;
    graft_eval_result_t pre, ft; /* reference points of the task */
} task_run_t;

/* The score evaluations are compared by: accuracy for classification,
 * minus the loss for generation (higher is better either way). */
static double score(const task_run_t *run, const graft_eval_result_t *r) {
    return run->pre.kind == GRAFT_TASK_CLASSIFY ? r->cls.accuracy : -r->loss;
}

/* Whether fine-tuning beat the pretrained trunk: without a gain, the share
 * of it that a graft recovers means nothing (dividing by a loss gives
 * nonsense such as 300% for a graft worse than both). */
static int has_gain(const task_run_t *run) {
    double gain = score(run, &run->ft) - score(run, &run->pre);
    return isfinite(gain) && gain > 1e-12;
}

/* Share of the fine-tuned gain over the pretrained trunk that r recovers;
 * NAN without a gain (has_gain) or with a non-finite score of r. */
static double recovered(const task_run_t *run, const graft_eval_result_t *r) {
    if (!has_gain(run)) return NAN;
    double a = score(run, &run->pre);
    return (score(run, r) - a) / (score(run, &run->ft) - a);
}

/* What a graft is (evaluate() takes NULL for the fine-tuned and pretrained models). */
typedef struct {
    double sparsity;
    size_t k;
    int refined;
} graft_point_t;

/* Evaluates the trunk as it stands on task t's test split; prints and logs
 * it under `model` (with the sparsity and k of a graft). */
static void evaluate(task_run_t *run, const char *model, const graft_point_t *gp,
                     graft_eval_result_t *r) {
    graft_trainer_t *tr = run->g->tr;
    graft_trainer_evaluate(tr, run->t, GRAFT_SPLIT_TEST, r);
    char line[256], label[64];
    graft_eval_format(tr, r, line, sizeof line);
    json_t *o = graft_eval_json(tr, r);
    json_object_set_new(o, "model", json_string(model));
    if (!gp) {
        /* Not "eval": `graft report` reads a graft run's evals as its masks'. */
        printf("%-28s %s\n", model, line);
        graft_events_emit(run->ev, "eval_reference", o);
        return;
    }
    snprintf(label, sizeof label, "%s %g (k=%zu)", model, gp->sparsity, gp->k);
    double rec = recovered(run, r);
    json_object_set_new(o, "sparsity", json_real(gp->sparsity));
    json_object_set_new(o, "k", json_integer((json_int_t)gp->k));
    json_object_set_new(o, "refined", json_boolean(gp->refined));
    if (isfinite(rec)) {
        json_object_set_new(o, "recovered", json_real(rec));
        printf("%-28s %s  recovers %.1f%% of the fine-tuned gain\n", label, line, 100.0 * rec);
    } else {
        json_object_set_new(o, "recovered", json_null());
        printf("%-28s %s  recovered: n/a (%s)\n", label, line,
               has_gain(run) ? "the graft's loss is not finite"
                             : "fine-tuning did not beat the pretrained trunk");
    }
    graft_events_emit(run->ev, "eval", o);
}

/* Builds (and refines) the mask of one sparsity; evaluates and saves it. */
static int graft_one(task_run_t *run, double sparsity, graft_mask_t **out) {
    graft_grafting_t *g = run->g;
    const graft_run_config_t *cfg = graft_trainer_config(g->tr);
    const char *task = graft_task_name(graft_trainer_task(g->tr, run->t));
    size_t k = graft_grafting_k(g, sparsity);
    /* Each sparsity starts afresh: the fine-tuned head and the first
     * batches, so a mask does not depend on the other sparsities asked for. */
    graft_grafting_use_finetuned_head(g, run->t);
    graft_trainer_seek_sampler(g->tr, 0, 0);
    graft_mask_t *mask = graft_grafting_top_k(g, k);
    int refined = cfg->graft_refine_steps > 0;
    json_t *info = json_pack("{s:s, s:f, s:I, s:I, s:I}", "task", task, "sparsity", sparsity,
                             "k", (json_int_t)k, "eligible", (json_int_t)g->layout.num_eligible,
                             "trunk", (json_int_t)g->layout.num_params);
    if (refined) {
        graft_refine_stats_t st;
        graft_mask_t *better = graft_grafting_refine(g, run->t, k, &st);
        LOG_INFO("%s sparsity %g: refined %d steps over %zu candidates (batch loss %.4f -> %.4f); "
                 "train loss %.4f (top-k) vs %.4f (refined)%s: %s, %zu of k=%zu entries changed",
                 task, sparsity, st.steps, st.candidates, st.first_loss, st.last_loss,
                 st.train_loss_topk, st.train_loss_refined,
                 st.head_steps ? ", each with a fitted head" : "",
                 st.accepted ? "refined mask kept" : "top-k mask kept", st.changed, k);
        json_object_set_new(info, "refine_steps", json_integer(st.steps));
        json_object_set_new(info, "candidates", json_integer((json_int_t)st.candidates));
        json_object_set_new(info, "train_loss_topk", json_real(st.train_loss_topk));
        json_object_set_new(info, "train_loss_refined", json_real(st.train_loss_refined));
        json_object_set_new(info, "accepted", json_boolean(st.accepted));
        json_object_set_new(info, "changed", json_integer((json_int_t)st.changed));
        json_object_set_new(info, "head_steps", json_integer(st.head_steps));
        refined = st.accepted;
        graft_mask_destroy(&mask);
        mask = better;
    } else if (cfg->graft_head_steps > 0 && graft_trainer_task_scope(g->tr, run->t)->numel > 0) {
        double loss = graft_grafting_fit_head(g, run->t, mask, cfg->graft_head_steps);
        LOG_INFO("%s sparsity %g: head fitted to the top-k graft in %d steps, train loss %.4f",
                 task, sparsity, cfg->graft_head_steps, loss);
        json_object_set_new(info, "head_steps", json_integer(cfg->graft_head_steps));
        json_object_set_new(info, "train_loss_topk", json_real(loss));
    }
    if (cfg->graft_tune_steps > 0) {
        double loss = graft_grafting_tune(g, run->t, mask, cfg->graft_tune_steps);
        LOG_INFO("%s sparsity %g: the k=%zu grafted values and the head tuned in %d steps, "
                 "train loss %.4f", task, sparsity, k, cfg->graft_tune_steps, loss);
        json_object_set_new(info, "tune_steps", json_integer(cfg->graft_tune_steps));
        json_object_set_new(info, "train_loss_tuned", json_real(loss));
    }
    graft_grafting_use_mask(g, mask);
    graft_eval_result_t r;
    graft_point_t gp = {sparsity, k, refined};
    evaluate(run, "graft", &gp, &r);
    char path[2 * GRAFT_OPT_STR];
    snprintf(path, sizeof path, "%s/mask.%s.s%g.safetensors", cfg->out, task, sparsity);
    int rc = graft_grafting_save(g, run->t, mask, sparsity, cfg->graft_refine_steps, path);
    json_object_set_new(info, "path", json_string(path));
    graft_events_emit(run->ev, "mask", info);
    if (rc) {
        graft_mask_destroy(&mask);
        return rc;
    }
    *out = mask;
    return GRAFT_OK;
}

static int graft_task(task_run_t *run, const double *sp, int nsp, graft_mask_t **masks) {
    graft_grafting_t *g = run->g;
    char path[GRAFT_OPT_STR + 32];
    int rc = graft_grafting_finetuned_path(g, run->t, path, sizeof path);
    if (!rc) rc = graft_grafting_load_finetuned(g, run->t, path);
    if (rc) return rc;
    graft_grafting_use_finetuned(g);
    evaluate(run, "finetuned", NULL, &run->ft);
    graft_grafting_use_pretrained(g);
    evaluate(run, "pretrained", NULL, &run->pre);
    for (int s = 0; s < nsp && !rc; s++) rc = graft_one(run, sp[s], &masks[s]);
    graft_grafting_use_pretrained(g);
    return rc;
}

static int overlaps(const graft_grafting_t *g, const double *sp, int nsp, graft_mask_t **masks,
                    graft_events_t *ev) {
    int n = graft_trainer_n_tasks(g->tr), rc = GRAFT_OK;
    const char *labels[GRAFT_MAX_TASKS];
    for (int t = 0; t < n; t++) labels[t] = graft_task_name(graft_trainer_task(g->tr, t));
    for (int s = 0; s < nsp && !rc; s++) {
        char prefix[GRAFT_OPT_STR + 32];
        snprintf(prefix, sizeof prefix, "%s/overlap.s%g", graft_trainer_config(g->tr)->out, sp[s]);
        printf("\nmask overlap at sparsity %g (k=%zu):\n", sp[s], masks[s * n]->k);
        rc = report_overlap(masks + (size_t)s * n, labels, n, sp[s], prefix, ev);
    }
    return rc;
}

int cli_train_graft(const graft_run_config_t *cfg) {
    double sp[MAX_SPARSITIES];
    int nsp = graft_parse_sparsities(cfg->sparsity, sp, MAX_SPARSITIES);
    if (nsp < 0) return 2;
    if (!*cfg->finetuned) {
        LOG_ERROR("method graft needs --finetuned: the run directory or checkpoint of "
                  "`graft train --method full` (one, or NAME=PATH per task)");
        return 2;
    }
    graft_grafting_t *g = NULL;
    if (graft_grafting_new(cfg, &g)) return 1;
    for (int t = 0; t < graft_trainer_n_tasks(g->tr); t++) {
        if (graft_grafting_check_finetuned(g, t)) {
            graft_grafting_destroy(&g);
            return 1;
        }
    }
    char path[2 * GRAFT_OPT_STR], groups[64];
    snprintf(path, sizeof path, "%s/events.jsonl", cfg->out);
    graft_events_t *ev = NULL;
    if (cli_write_run_config("train", cfg) || graft_events_open(path, &ev)) {
        graft_grafting_destroy(&g);
        return 1;
    }
    int n = graft_trainer_n_tasks(g->tr);
    graft_mask_layout_t *lay = &g->layout;
    graft_mask_groups_str(lay->groups, groups, sizeof groups);
    char digest[32];
    snprintf(digest, sizeof digest, "%016llx", graft_options_digest(graft_run_options, cfg));
    graft_events_emit(ev, "run_start",
                      json_pack("{s:s, s:s, s:i, s:s, s:s, s:I, s:I}", "mode", "graft",
                                "config_digest", digest, "seed", cfg->seed, "method", cfg->method,
                                "graft_params", groups, "eligible", (json_int_t)lay->num_eligible,
                                "trunk_params", (json_int_t)lay->num_params));
    LOG_INFO("graft: %d tasks; masks over %s: %zu eligible of %zu trunk parameters; sparsities %s",
             n, groups, lay->num_eligible, lay->num_params, cfg->sparsity);
    if (n > 1 && !strchr(cfg->finetuned, '=') && cfg->graft_refine_steps == 0)
        LOG_INFO("graft: every task grafts from one fine-tuned checkpoint; without "
                 "--graft_refine_steps their masks are the same top-k");
    graft_mask_t **masks = graft_xcalloc((size_t)nsp * n, sizeof *masks);
    graft_mask_t **each = graft_xcalloc((size_t)nsp, sizeof *each);
    double t0 = graft_now();
    int rc = GRAFT_OK;
    for (int t = 0; t < n && !rc; t++) {
        task_run_t run = {.g = g, .ev = ev, .t = t};
        memset(each, 0, (size_t)nsp * sizeof *each);
        rc = graft_task(&run, sp, nsp, each);
        for (int s = 0; s < nsp; s++) masks[(size_t)s * n + t] = each[s];
    }
    if (!rc && n > 1) rc = overlaps(g, sp, nsp, masks, ev);
    graft_events_emit(ev, "run_end", json_pack("{s:f, s:b}", "seconds", graft_now() - t0, "ok",
                                               rc == 0));
    for (int i = 0; i < nsp * n; i++) graft_mask_destroy(&masks[i]);
    free(masks);
    free(each);
    int erc = graft_events_close(&ev); /* a lost event line fails the run (logged) */
    graft_grafting_destroy(&g);
    return rc || erc ? 1 : 0;
}

/* ---- graft eval --method graft -------------------------------------------- */

int cli_eval_graft(const graft_run_config_t *cfg) {
    if (!*cfg->resume) {
        LOG_ERROR("graft eval --method graft needs --resume MASK[,MASK...] (mask files of "
                  "`graft train --method graft`)");
        return 2;
    }
    graft_grafting_t *g = NULL;
    if (graft_grafting_new(cfg, &g)) return 1;
    char buf[GRAFT_OPT_STR];
    snprintf(buf, sizeof buf, "%s", cfg->resume);
    int rc = GRAFT_OK;
    for (char *save = NULL, *file = strtok_r(buf, ", ", &save); file && !rc;
         file = strtok_r(NULL, ", ", &save)) {
        graft_mask_t *mask = NULL;
        int t = -1;
        rc = graft_grafting_load_mask(g, file, &t, &mask);
        if (rc) break;
        graft_grafting_use_mask(g, mask);
        graft_eval_result_t r;
        graft_trainer_evaluate(g->tr, t, GRAFT_SPLIT_TEST, &r);
        char line[256];
        graft_eval_format(g->tr, &r, line, sizeof line);
        printf("%s  (k=%zu, %s)\n", line, mask->k, file);
        graft_mask_destroy(&mask);
    }
    graft_grafting_destroy(&g);
    return rc ? 1 : 0;
}

/* ---- graft mask overlap | show -------------------------------------------- */

typedef struct {
    char out[GRAFT_OPT_STR];
} mask_opts_t;

const graft_option_t cli_mask_options[] = {
    {"out", GRAFT_OPT_STRING, offsetof(mask_opts_t, out), "", 0, -1,
     "overlap: also write the matrix to OUT/overlap.tsv and OUT/overlap.json, and a "
     "mask_overlap event to OUT/events.jsonl (for graft report)"},
    GRAFT_OPT_END,
};

static const char *mask_usage =
    "usage: graft mask overlap [--out DIR] MASK MASK...\n"
    "       graft mask show MASK...\n\n"
    "Reads mask files of `graft train --method graft` (no trunk needed: the layout\n"
    "comes from the trunk config they record). `overlap` prints the task-by-task\n"
    "Jaccard overlap |A n B| / |A u B| of the masks' parameter sets (and writes it as\n"
    "TSV and JSON for plotting); `show` prints each mask's task, sparsity, k and how\n"
    "many of its parameters fall in each trunk tensor.";

/* A mask file read without a trunk: the layout comes from a model of the
 * recorded config (its weights are not used). */
typedef struct {
    graft_mask_layout_t lay;
    graft_mask_t *mask;
    char task[128];
    char sparsity[32];
    char digest[32];
    char built[96];  /* "; refined R, head fitted H, tuned U steps" ("" in older files) */
    char label[192]; /* the task, with the sparsity when masks of several are compared */
} mask_file_t;

static int read_mask_file(const char *path, mask_file_t *mf) {
    memset(mf, 0, sizeof *mf);
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    graft_gpt2_config_t c;
    int groups = GRAFT_MASK_ALL;
    const char *gs = graft_st_meta(f, "mask.groups"), *t = graft_st_meta(f, "mask.task");
    const char *d = graft_st_meta(f, "mask.trunk_digest"), *sp = graft_st_meta(f, "mask.sparsity");
    rc = graft_st_expect_format(f, "graft-mask");
    if (!rc) rc = graft_gpt2_read_config(f, &c);
    if (!rc && gs) rc = graft_mask_parse_groups(gs, &groups);
    if (!rc) {
        graft_gpt2_t *m = graft_gpt2_new(&c, 0);
        graft_mask_layout_init(&mf->lay, m, groups);
        graft_gpt2_destroy(&m);
        rc = graft_mask_read(f, &mf->lay, &mf->mask);
        if (rc) graft_mask_layout_free(&mf->lay);
    }
    snprintf(mf->task, sizeof mf->task, "%s", t ? t : path);
    snprintf(mf->digest, sizeof mf->digest, "%s", d ? d : "?");
    snprintf(mf->sparsity, sizeof mf->sparsity, "%s", sp ? sp : "?");
    const char *rs = graft_st_meta(f, "mask.refine_steps");
    const char *hs = graft_st_meta(f, "mask.head_steps"), *ts = graft_st_meta(f, "mask.tune_steps");
    if (rs && hs && ts)
        snprintf(mf->built, sizeof mf->built, "; refined %s, head fitted %s, tuned %s steps", rs,
                 hs, ts);
    graft_st_close(&f);
    return rc;
}

static void free_mask_file(mask_file_t *mf) {
    graft_mask_destroy(&mf->mask);
    graft_mask_layout_free(&mf->lay);
}

static int mask_show(const char *path) {
    mask_file_t mf;
    int rc = read_mask_file(path, &mf);
    if (rc) return rc;
    const graft_mask_layout_t *lay = &mf.lay;
    printf("%s: task %s, k=%zu of %zu eligible (%.4f%%), %zu trunk parameters, trunk %s%s\n",
           path, mf.task, mf.mask->k, lay->num_eligible,
           100.0 * mf.mask->k / (lay->num_eligible ? lay->num_eligible : 1), lay->num_params,
           mf.digest, mf.built);
    size_t *counts = graft_xmalloc((size_t)lay->n * sizeof *counts);
    graft_mask_tensor_counts(mf.mask, lay, counts);
    printf("  %-28s %10s %10s %9s\n", "tensor", "selected", "of", "share");
    for (int i = 0; i < lay->n; i++)
        if (counts[i])
            printf("  %-28s %10zu %10zu %8.3f%%\n", lay->tensors[i].name, counts[i],
                   lay->tensors[i].numel, 100.0 * counts[i] / lay->tensors[i].numel);
    free(counts);
    free_mask_file(&mf);
    return GRAFT_OK;
}

static int mask_overlap(char **files, int n, const char *out) {
    mask_file_t *mf = graft_xcalloc((size_t)n, sizeof *mf);
    graft_mask_t **masks = graft_xcalloc((size_t)n, sizeof *masks);
    const char **labels = graft_xcalloc((size_t)n, sizeof *labels);
    int rc = GRAFT_OK, read = 0;
    for (; read < n && !rc; read++) {
        rc = read_mask_file(files[read], &mf[read]);
        if (rc) break;
        masks[read] = mf[read].mask;
        if (memcmp(&mf[read].lay.cfg, &mf[0].lay.cfg, sizeof mf[0].lay.cfg) != 0) {
            LOG_ERROR("%s: mask of another trunk shape than %s's; overlaps compare parameter "
                      "positions of one trunk", files[read], files[0]);
            rc = GRAFT_ESHAPE;
        } else if (strcmp(mf[read].digest, mf[0].digest) != 0) {
            LOG_WARN("%s: built on trunk %s, %s on trunk %s", files[read], mf[read].digest,
                     files[0], mf[0].digest);
        }
    }
    int mixed = 0;
    for (int i = 0; i < read; i++) mixed |= strcmp(mf[i].sparsity, mf[0].sparsity) != 0;
    for (int i = 0; i < read; i++) {
        snprintf(mf[i].label, sizeof mf[i].label, mixed ? "%s@%s" : "%s", mf[i].task,
                 mf[i].sparsity);
        labels[i] = mf[i].label;
    }
    if (!rc && !*out) {
        rc = report_overlap(masks, labels, n, 0, NULL, NULL);
    } else if (!rc) {
        char path[GRAFT_OPT_STR + 32];
        snprintf(path, sizeof path, "%s/events.jsonl", out);
        graft_events_t *ev = NULL;
        rc = graft_events_open(path, &ev);
        if (!rc) {
            graft_events_emit(ev, "run_start", json_pack("{s:s, s:i}", "mode", "mask_overlap",
                                                         "masks", n));
            snprintf(path, sizeof path, "%s/overlap", out);
            rc = report_overlap(masks, labels, n, 0, path, ev);
            graft_events_emit(ev, "run_end", json_pack("{s:b}", "ok", rc == 0));
        }
        int erc = graft_events_close(&ev);
        if (!rc) rc = erc;
    }
    for (int i = 0; i < read; i++) free_mask_file(&mf[i]);
    free(mf);
    free(masks);
    free(labels);
    return rc;
}

const graft_option_t cli_mask_show_options[] = {GRAFT_OPT_END};

int cmd_mask(int argc, char **argv) {
    const char *sub = argc > 1 ? argv[1] : "";
    int overlap = !strcmp(sub, "overlap"), show = !strcmp(sub, "show");
    if (!overlap && !show) {
        int help = !strcmp(sub, "--help") || !strcmp(sub, "-h");
        if (!help && *sub) fprintf(stderr, "graft mask: unknown subcommand '%s'\n\n", sub);
        graft_options_usage(help ? stdout : stderr, cli_mask_options, mask_usage);
        return help ? 0 : 2;
    }
    /* `show` takes no options, so a --out there is refused as unknown. */
    mask_opts_t opts;
    char **files;
    int nfiles = 0;
    const graft_option_t *table = overlap ? cli_mask_options : cli_mask_show_options;
    int rc = graft_options_parse_args(table, &opts, argc - 1, argv + 1, mask_usage, &files,
                                      &nfiles);
    int status = rc == GRAFT_OPTS_HELP ? 0 : rc ? 2 : -1;
    if (status < 0 && nfiles < (overlap ? 2 : 1)) {
        LOG_ERROR("graft mask %s: give %s mask files", sub, overlap ? "two or more" : "one or more");
        status = 2;
    }
    if (status < 0 && overlap) status = mask_overlap(files, nfiles, opts.out) ? 1 : 0;
    for (int i = 0; status < 0 && show && i < nfiles; i++)
        if (mask_show(files[i])) status = 1;
    free(files);
    return status < 0 ? 0 : status;
}
