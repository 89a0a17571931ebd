/* test_mask.c — sparse grafting masks (common/mask.c) and the `graft`
 * method around them (common/grafting.c, `graft train/eval --method graft`,
 * `graft mask overlap`) on the `tiny` trunk.
 *
 * Real fine-tuned models come first: group_setup writes the synthetic
 * tasks (scripts/synthetic_tasks.py) and fully fine-tunes the random tiny
 * trunk on `majority` and, separately, on `pairs` (one model per task, as
 * in the paper) with graft_trainer_* exactly as `graft train --method
 * full` does, saving each run's checkpoint. Asserted:
 *  - groups and eligibility: the default (all but the embeddings) has the
 *    closed-form count num_params - (V + T) C; k = round(sparsity * eligible);
 *  - top-k against a naive selection (repeatedly take the largest movement,
 *    smaller offset on ties) on data built to have many ties: exactly k
 *    entries, the same set, all eligible, every kept movement >= every
 *    dropped one;
 *  - an all-ones mask over every tensor gives the fine-tuned parameters and
 *    the fine-tuned model's class probabilities bit for bit; an all-zeros
 *    mask gives the trunk's; the default all-ones mask equals theta_ft
 *    except on the embeddings;
 *  - save/load: indices, values, the grafted parameters and the head come
 *    back bit-exact; a mask on another trunk, out-of-range, unsorted or
 *    unknown indices and a wrong count are refused with the file named;
 *    I64 indices are read like I32;
 *  - Jaccard: 1 for identical masks, 0 for disjoint ones, 2/4 for
 *    {1,2,3} vs {2,3,4}, 1 for two empty masks;
 *  - refinement lowers the training loss of the binary mask (its own
 *    report and an independent evaluation agree), changes some entries,
 *    and keeps exactly k entries among the candidates;
 *  - fitting the head to a graft moves only the head (the trunk gets no
 *    gradient) and lowers the training loss; tuning the grafted values
 *    keeps the offsets and lowers it again; with fitted heads refinement
 *    returns the mask (and leaves the head) of the lower loss, and two
 *    identical masks tie (their heads are fitted on the same batches);
 *  - the commands: `graft train --method graft` writes the masks, the
 *    overlap table and events; `graft mask overlap` reports the Jaccard
 *    matrix that graft_mask_jaccard computes; `graft eval --method graft`
 *    reproduces the train run's test accuracy (head fitted, values tuned);
 *    `graft mask show` reports k and how the mask was built; a missing
 *    --finetuned file, or one without a task's head or of another method,
 *    is refused before anything is written; a modules checkpoint given as
 *    a mask (and the reverse) is refused saying what the file is;
 *  - a fine-tuned model no better than the trunk (no step taken): each
 *    graft's share of the gain is n/a, null in its eval event.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capture.h"
#include "grafting.h"
#include "rng.h"
#include "synthetic.h"

#define FT_STEPS 150

static char g_dir[64];
static char g_ft[2][160];  /* the full fine-tuning checkpoints of majority and pairs */
static char g_ft_list[512]; /* --finetuned majority=DIR,pairs=DIR */
static const char *const TASKS[2] = {"majority", "pairs"};

/* A run over one task (name) or both (NULL). */
static void task_config(graft_run_config_t *cfg, const char *method, const char *only) {
    synthetic_run_config(cfg, g_dir, method, only);
    assert_int_equal(graft_options_set(graft_run_options, cfg, "lr", "3e-3", "test"), 0);
    assert_int_equal(graft_options_set(graft_run_options, cfg, "finetuned", g_ft_list, "test"), 0);
}

static void run_config(graft_run_config_t *cfg, const char *method) {
    task_config(cfg, method, NULL);
}

static void set_opt(graft_run_config_t *cfg, const char *k, const char *v) {
    assert_int_equal(graft_options_set(graft_run_options, cfg, k, v, "test"), 0);
}

static int group_setup(void **state) {
    (void)state;
    int rc = synthetic_tasks_make(g_dir, sizeof g_dir, "mask");
    if (rc) return rc;
    /* Full fine-tuning of each task alone, as `graft train --method full`. */
    snprintf(g_ft_list, sizeof g_ft_list, "majority=%s/ft_majority,pairs=%s/ft_pairs", g_dir,
             g_dir);
    for (int t = 0; t < 2; t++) {
        snprintf(g_ft[t], sizeof g_ft[t], "%s/ft_%s/modules.safetensors", g_dir, TASKS[t]);
        graft_run_config_t cfg;
        task_config(&cfg, "full", TASKS[t]);
        char steps[16];
        snprintf(steps, sizeof steps, "%d", FT_STEPS);
        set_opt(&cfg, "steps", steps);
        graft_trainer_t *tr = NULL;
        if (graft_trainer_new(&cfg, &tr)) return -1;
        while (graft_trainer_steps_done(tr) < FT_STEPS) graft_trainer_step(tr, 0, -1.0f);
        rc = graft_trainer_save(tr, g_ft[t]);
        graft_trainer_destroy(&tr);
        if (rc) return rc;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    synthetic_tasks_remove(g_dir);
    return 0;
}

/* A grafting object of cfg with task t's theta_ft and head loaded. */
static graft_grafting_t *grafting_of(const graft_run_config_t *cfg, int t) {
    graft_grafting_t *g = NULL;
    assert_int_equal(graft_grafting_new(cfg, &g), GRAFT_OK);
    char path[256];
    assert_int_equal(graft_grafting_finetuned_path(g, t, path, sizeof path), GRAFT_OK);
    assert_string_equal(path, g_ft[t]);
    assert_int_equal(graft_grafting_load_finetuned(g, t, path), GRAFT_OK);
    return g;
}

static graft_grafting_t *grafting(const char *groups, int t) {
    graft_run_config_t cfg;
    run_config(&cfg, "graft");
    set_opt(&cfg, "graft_params", groups);
    return grafting_of(&cfg, t);
}

/* stderr of a call (tests/capture.h), in the test's folder. */
static void capture_in_dir(void) {
    char log[300];
    snprintf(log, sizeof log, "%s/stderr.log", g_dir);
    capture_begin(log);
}

static void assert_contains(const char *text, const char *needle) {
    if (!strstr(text, needle)) {
        print_error("the log lacks \"%s\"\n", needle);
        fail();
    }
}

/* ---- groups, layout, k ----------------------------------------------------- */

static void test_groups_and_k(void **state) {
    (void)state;
    int groups = 0;
    assert_int_equal(graft_mask_parse_groups("attn,mlp,ln", &groups), GRAFT_OK);
    assert_int_equal(groups, GRAFT_MASK_ATTN | GRAFT_MASK_MLP | GRAFT_MASK_LN);
    assert_int_equal(graft_mask_parse_groups("all", &groups), GRAFT_OK);
    assert_int_equal(groups, GRAFT_MASK_ALL);
    assert_int_equal(graft_mask_parse_groups("attn,bias", &groups), GRAFT_EINVAL);
    assert_int_equal(graft_mask_group_of("wpe.weight"), GRAFT_MASK_EMBED);
    assert_int_equal(graft_mask_group_of("h.1.ln_2.bias"), GRAFT_MASK_LN);
    assert_int_equal(graft_mask_group_of("ln_f.weight"), GRAFT_MASK_LN);
    assert_int_equal(graft_mask_group_of("h.0.attn.c_proj.bias"), GRAFT_MASK_ATTN);
    assert_int_equal(graft_mask_group_of("h.1.mlp.c_proj.weight"), GRAFT_MASK_MLP);

    graft_gpt2_config_t c;
    assert_int_equal(graft_gpt2_preset("tiny", &c), GRAFT_OK);
    graft_gpt2_t *m = graft_gpt2_new(&c, 1);
    graft_mask_layout_t lay;
    graft_mask_layout_init(&lay, m, GRAFT_MASK_ATTN | GRAFT_MASK_MLP | GRAFT_MASK_LN);
    assert_int_equal(lay.num_eligible, m->num_params - (size_t)(c.V + c.T) * c.C);
    size_t mlp = 0;
    for (int i = 0; i < lay.n; i++)
        if (graft_mask_group_of(lay.tensors[i].name) == GRAFT_MASK_MLP) mlp += lay.tensors[i].numel;
    assert_int_equal(mlp, (size_t)c.L * (8 * c.C * c.C + 5 * c.C));
    graft_mask_layout_free(&lay);
    graft_mask_layout_init(&lay, m, GRAFT_MASK_ALL);
    assert_int_equal(lay.num_eligible, m->num_params);
    graft_mask_layout_free(&lay);
    graft_gpt2_destroy(&m);

    assert_int_equal(graft_mask_k(0.01, 25472), 255); /* 254.72 rounds up */
    assert_int_equal(graft_mask_k(0.001, 25472), 25); /* 25.472 rounds down */
    assert_int_equal(graft_mask_k(1.0, 25472), 25472);
    assert_int_equal(graft_mask_k(1e-9, 25472), 0);

    double sp[4];
    assert_int_equal(graft_parse_sparsities("0.01, 0.001,1", sp, 4), 3);
    assert_true(sp[0] == 0.01 && sp[1] == 0.001 && sp[2] == 1.0);
    assert_int_equal(graft_parse_sparsities("0.01,0", sp, 4), GRAFT_EINVAL);
    assert_int_equal(graft_parse_sparsities("1.5", sp, 4), GRAFT_EINVAL);
    assert_int_equal(graft_parse_sparsities("x", sp, 4), GRAFT_EINVAL);
}

/* --finetuned: one checkpoint for every task, or NAME=PATH per task; a
 * directory stands for its modules.safetensors; a checkpoint of another
 * method is refused. */
static void test_finetuned_sources(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "graft");
    graft_grafting_t *g = NULL;
    assert_int_equal(graft_grafting_new(&cfg, &g), GRAFT_OK);
    char path[256], want[256];
    char *ft = g->finetuned;
    snprintf(ft, sizeof g->finetuned, "%s/ft_pairs", g_dir);
    for (int t = 0; t < 2; t++) {
        assert_int_equal(graft_grafting_finetuned_path(g, t, path, sizeof path), GRAFT_OK);
        assert_string_equal(path, g_ft[1]);
    }
    snprintf(ft, sizeof g->finetuned, "pairs=/x/p.safetensors, majority=/x/m.safetensors");
    assert_int_equal(graft_grafting_finetuned_path(g, 0, path, sizeof path), GRAFT_OK);
    assert_string_equal(path, "/x/m.safetensors");
    assert_int_equal(graft_grafting_finetuned_path(g, 1, path, sizeof path), GRAFT_OK);
    assert_string_equal(path, "/x/p.safetensors");
    snprintf(ft, sizeof g->finetuned, "pairs=/x/p.safetensors");
    assert_int_equal(graft_grafting_finetuned_path(g, 0, path, sizeof path), GRAFT_EINVAL);
    snprintf(ft, sizeof g->finetuned, "/x/a,pairs=/x/p");
    assert_int_equal(graft_grafting_finetuned_path(g, 1, path, sizeof path), GRAFT_EINVAL);

    /* A head-only run's checkpoint has no fine-tuned trunk. */
    graft_run_config_t hc;
    task_config(&hc, "head", "pairs");
    set_opt(&hc, "steps", "1");
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&hc, &tr), GRAFT_OK);
    graft_trainer_step(tr, 0, -1.0f);
    snprintf(want, sizeof want, "%s/head/modules.safetensors", g_dir);
    assert_int_equal(graft_trainer_save(tr, want), GRAFT_OK);
    graft_trainer_destroy(&tr);
    capture_in_dir();
    int rc = graft_grafting_load_finetuned(g, 1, want);
    char *log = capture_end();
    assert_true(rc < 0);
    assert_contains(log, want);
    /* Said before any tensor of the trunk is looked for. */
    assert_contains(log, "modules of method 'head'; grafting needs the modules of a full "
                         "fine-tuning run (graft train --method full)");
    assert_null(strstr(log, "shared.wte.weight"));
    free(log);

    /* The up-front check: the method, then the task's head. */
    snprintf(ft, sizeof g->finetuned, "%s", want);
    capture_in_dir();
    rc = graft_grafting_check_finetuned(g, 1);
    log = capture_end();
    assert_int_equal(rc, GRAFT_EFORMAT);
    assert_contains(log, "modules of method 'head'");
    free(log);
    snprintf(ft, sizeof g->finetuned, "%s", g_ft[0]);
    assert_int_equal(graft_grafting_check_finetuned(g, 0), GRAFT_OK);
    capture_in_dir();
    rc = graft_grafting_check_finetuned(g, 1);
    log = capture_end();
    assert_true(rc < 0);
    assert_contains(log, "has no head for task 'pairs'");
    free(log);
    graft_grafting_destroy(&g);
}

/* ---- top-k ------------------------------------------------------------------ */

/* The naive reference: k times, the eligible offset of largest movement not
 * yet taken (smaller offset on ties). */
static void naive_top_k(const graft_mask_layout_t *lay, const float *pre, const float *ft,
                        size_t k, int64_t *out) {
    char *taken = calloc(lay->num_params, 1);
    for (size_t r = 0; r < k; r++) {
        int64_t best = -1;
        float bm = -1.0f;
        for (int t = 0; t < lay->n; t++) {
            if (!lay->eligible[t]) continue;
            for (size_t j = 0; j < lay->tensors[t].numel; j++) {
                int64_t i = (int64_t)(lay->tensors[t].offset + j);
                float mv = fabsf(ft[i] - pre[i]);
                if (!taken[i] && (mv > bm || (mv == bm && i < best))) {
                    best = i;
                    bm = mv;
                }
            }
        }
        taken[best] = 1;
        out[r] = best;
    }
    free(taken);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_top_k_matches_naive(void **state) {
    (void)state;
    graft_gpt2_config_t c;
    assert_int_equal(graft_gpt2_preset("tiny", &c), GRAFT_OK);
    graft_gpt2_t *m = graft_gpt2_new(&c, 7);
    size_t n = m->num_params;
    float *pre = m->params_memory, *ft = malloc(n * sizeof(float));
    graft_rng_t rng;
    graft_rng_seed(&rng, 99, 1);
    /* Movements on a coarse grid of 64 values: thousands of ties. */
    for (size_t i = 0; i < n; i++) {
        int q = (int)(graft_rng_uniform(&rng) * 64.0f);
        ft[i] = pre[i] + (graft_rng_uniform(&rng) < 0.5f ? -1.0f : 1.0f) * (float)q / 64.0f;
    }
    graft_mask_layout_t lay;
    graft_mask_layout_init(&lay, m, GRAFT_MASK_ATTN | GRAFT_MASK_MLP | GRAFT_MASK_LN);
    int64_t *order = graft_mask_rank(&lay, pre, ft);
    const size_t ks[] = {0, 1, 25, 255, 1000};
    int64_t *want = malloc(1000 * sizeof *want);
    for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
        size_t k = ks[q];
        graft_mask_t *mask = graft_mask_from_order(order, k, ft);
        assert_int_equal(mask->k, k);
        naive_top_k(&lay, pre, ft, k, want);
        qsort(want, k, sizeof *want, cmp_i64);
        for (size_t i = 0; i < k; i++) {
            assert_int_equal(mask->index[i], want[i]);
            if (i) assert_true(mask->index[i] > mask->index[i - 1]);
            assert_memory_equal(&mask->value[i], &ft[mask->index[i]], sizeof(float));
        }
        /* Every kept movement is at least every dropped eligible one. */
        float kept_min = INFINITY, dropped_max = 0.0f;
        for (size_t i = 0; i < k; i++)
            kept_min = fminf(kept_min, fabsf(ft[mask->index[i]] - pre[mask->index[i]]));
        for (size_t i = k; i < lay.num_eligible; i++)
            dropped_max = fmaxf(dropped_max, fabsf(ft[order[i]] - pre[order[i]]));
        if (k) assert_true(kept_min >= dropped_max);
        graft_mask_destroy(&mask);
    }
    /* Nothing outside the eligible tensors is ranked. */
    for (size_t i = 0; i < lay.num_eligible; i++) {
        int elig = 0;
        for (int t = 0; t < lay.n; t++)
            elig |= lay.eligible[t] && (size_t)order[i] >= lay.tensors[t].offset &&
                    (size_t)order[i] < lay.tensors[t].offset + lay.tensors[t].numel;
        assert_true(elig);
    }
    free(want);
    free(order);
    free(ft);
    graft_mask_layout_free(&lay);
    graft_gpt2_destroy(&m);
}

/* ---- all ones, all zeros ---------------------------------------------------- */

/* Class probabilities of task t on the first dev rows, for the trunk as it is. */
static void probs_of(graft_grafting_t *g, int t, float *out) {
    graft_trainer_t *tr = g->tr;
    graft_task_t *task = graft_trainer_task(tr, t);
    int B, T;
    graft_trainer_batch_shape(tr, &B, &T);
    size_t bt = (size_t)B * T, *indices = malloc((size_t)B * sizeof *indices);
    int32_t *inputs = malloc(bt * sizeof *inputs), *pos = malloc((size_t)B * sizeof *pos);
    int32_t *labels = malloc((size_t)B * sizeof *labels);
    for (int b = 0; b < B; b++) indices[b] = (size_t)b;
    graft_task_batch(task, graft_trainer_trunk(tr)->tok, GRAFT_SPLIT_DEV, indices, B, T, inputs,
                     NULL, pos, labels);
    graft_peft_t *p = graft_trainer_peft(tr);
    graft_peft_classify(p, t, inputs, pos, labels, B, T, 0);
    memcpy(out, p->head_probs, (size_t)B * graft_task_num_labels(task) * sizeof(float));
    free(indices);
    free(inputs);
    free(pos);
    free(labels);
}

static void test_all_ones_all_zeros(void **state) {
    (void)state;
    graft_grafting_t *g = grafting("all", 0);
    int B, T;
    graft_trainer_batch_shape(g->tr, &B, &T);
    size_t n = graft_trainer_trunk(g->tr)->num_params, nprob = (size_t)B * 4;
    float *want = malloc(nprob * sizeof(float)), *got = malloc(nprob * sizeof(float));
    const float *theta = graft_trainer_trunk(g->tr)->params_memory;

    /* Fine-tuning moved the trunk, so the comparisons below can fail. */
    assert_true(memcmp(g->pre, g->ft, n * sizeof(float)) != 0);

    graft_mask_t *ones = graft_grafting_top_k(g, g->layout.num_eligible);
    assert_int_equal(ones->k, n);
    graft_grafting_use_finetuned(g);
    probs_of(g, 0, want);
    graft_grafting_use_pretrained(g);
    probs_of(g, 0, got);
    assert_true(memcmp(want, got, nprob * sizeof(float)) != 0);
    graft_grafting_use_mask(g, ones);
    assert_memory_equal(theta, g->ft, n * sizeof(float));
    probs_of(g, 0, got);
    assert_memory_equal(got, want, nprob * sizeof(float));

    graft_mask_t *zeros = graft_grafting_top_k(g, 0);
    graft_grafting_use_pretrained(g);
    probs_of(g, 0, want);
    graft_grafting_use_finetuned(g);
    graft_grafting_use_mask(g, zeros);
    assert_memory_equal(theta, g->pre, n * sizeof(float));
    probs_of(g, 0, got);
    assert_memory_equal(got, want, nprob * sizeof(float));
    graft_mask_destroy(&ones);
    graft_mask_destroy(&zeros);
    graft_grafting_destroy(&g);

    /* The default groups leave the embeddings at theta_pre. */
    g = grafting("attn,mlp,ln", 0);
    ones = graft_grafting_top_k(g, g->layout.num_eligible);
    graft_grafting_use_mask(g, ones);
    theta = graft_trainer_trunk(g->tr)->params_memory;
    size_t emb = (size_t)(g->layout.cfg.V + g->layout.cfg.T) * g->layout.cfg.C, moved = 0;
    for (int t = 0; t < g->layout.n; t++) {
        const graft_gpt2_tensor_t *nt = &g->layout.tensors[t];
        const float *src = g->layout.eligible[t] ? g->ft : g->pre;
        assert_memory_equal(theta + nt->offset, src + nt->offset, nt->numel * sizeof(float));
        if (!g->layout.eligible[t]) moved += nt->numel;
    }
    assert_int_equal(moved, emb);
    graft_mask_destroy(&ones);
    graft_grafting_destroy(&g);
    free(want);
    free(got);
}

/* ---- files ------------------------------------------------------------------ */

static void test_save_load_roundtrip(void **state) {
    (void)state;
    graft_grafting_t *g = grafting("attn,mlp,ln", 1);
    size_t n = graft_trainer_trunk(g->tr)->num_params;
    size_t k = graft_grafting_k(g, 0.05);
    graft_mask_t *mask = graft_grafting_top_k(g, k);
    char path[256];
    snprintf(path, sizeof path, "%s/rt/mask.pairs.safetensors", g_dir);
    assert_int_equal(graft_grafting_save(g, 1, mask, 0.05, 0, path), GRAFT_OK);
    graft_grafting_use_mask(g, mask);
    float *grafted = malloc(n * sizeof(float));
    memcpy(grafted, graft_trainer_trunk(g->tr)->params_memory, n * sizeof(float));
    graft_scope_t *head = graft_trainer_task_scope(g->tr, 1);
    float *head_ft = malloc(head->numel * sizeof(float));
    memcpy(head_ft, head->params, head->numel * sizeof(float));

    /* The file holds indices and values only: far smaller than the trunk. */
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_string_equal(graft_st_meta(f, "mask.task"), "pairs");
    assert_string_equal(graft_st_meta(f, "mask.finetuned"), g_ft[1]);
    size_t stored = 0;
    for (int i = 0; i < graft_st_count(f); i++) {
        int64_t shape[GRAFT_ST_MAX_DIMS];
        int nd;
        assert_int_equal(graft_st_shape(f, graft_st_name(f, i), shape, &nd), GRAFT_OK);
        if (!strncmp(graft_st_name(f, i), "mask.", 5)) stored += (size_t)shape[0];
    }
    assert_int_equal(stored, 2 * k);
    graft_st_close(&f);

    /* A fresh object on the same trunk, head scrambled, reads it back. */
    graft_grafting_t *h = grafting("attn,mlp,ln", 0);
    graft_scope_t *h_head = graft_trainer_task_scope(h->tr, 1);
    memset(h_head->params, 0, h_head->numel * sizeof(float));
    graft_mask_t *back = NULL;
    int t = -1;
    assert_int_equal(graft_grafting_load_mask(h, path, &t, &back), GRAFT_OK);
    assert_int_equal(t, 1);
    assert_int_equal(back->k, k);
    assert_memory_equal(back->index, mask->index, k * sizeof(int64_t));
    assert_memory_equal(back->value, mask->value, k * sizeof(float));
    assert_memory_equal(h_head->params, head_ft, h_head->numel * sizeof(float));
    graft_grafting_use_mask(h, back);
    assert_memory_equal(graft_trainer_trunk(h->tr)->params_memory, grafted, n * sizeof(float));
    graft_mask_destroy(&back);
    graft_grafting_destroy(&h);

    /* Another trunk (seed 2) refuses the mask by its digest. */
    graft_run_config_t cfg;
    run_config(&cfg, "graft");
    set_opt(&cfg, "seed", "2");
    assert_int_equal(graft_grafting_new(&cfg, &h), GRAFT_OK);
    capture_in_dir();
    int rc = graft_grafting_load_mask(h, path, &t, &back);
    char *log = capture_end();
    assert_int_equal(rc, GRAFT_EINVAL);
    assert_null(back);
    assert_contains(log, path);
    assert_contains(log, "mask built on a trunk with digest");
    free(log);
    graft_grafting_destroy(&h);
    graft_mask_destroy(&mask);
    free(grafted);
    free(head_ft);
    graft_grafting_destroy(&g);
}

/* A hand-made mask file on the tiny layout: one tensor part. */
static void write_mask_file(const char *path, const char *tensor, const void *index,
                            graft_st_dtype_t dtype, const float *value, int64_t n, const char *k) {
    char iname[128], vname[128];
    snprintf(iname, sizeof iname, "mask.%s.index", tensor);
    snprintf(vname, sizeof vname, "mask.%s.value", tensor);
    const graft_st_tensor_t ts[] = {{iname, 1, {n}, index, dtype},
                                    {vname, 1, {n}, value, GRAFT_ST_F32}};
    const char *keys[] = {"format", "config.V", "config.T", "config.L", "config.NH", "config.C",
                          "mask.k"};
    const char *vals[] = {"graft-mask", "260", "32", "2", "2", "32", k};
    assert_int_equal(graft_st_write(path, ts, 2, keys, vals, 7), GRAFT_OK);
}

static void expect_refused(const graft_mask_layout_t *lay, const char *path, const char *needle) {
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    graft_mask_t *m = NULL;
    capture_in_dir();
    int rc = graft_mask_read(f, lay, &m);
    char *log = capture_end();
    assert_true(rc < 0);
    assert_null(m);
    assert_contains(log, path);
    assert_contains(log, needle);
    free(log);
    graft_st_close(&f);
}

static void test_bad_mask_files(void **state) {
    (void)state;
    graft_gpt2_config_t c;
    assert_int_equal(graft_gpt2_preset("tiny", &c), GRAFT_OK);
    graft_gpt2_t *m = graft_gpt2_new(&c, 1);
    graft_mask_layout_t lay;
    graft_mask_layout_init(&lay, m, GRAFT_MASK_ALL);
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", g_dir);
    const float v[3] = {1.0f, 2.0f, 3.0f};

    /* I64 indices read like I32 ones, at the tensor's offset. */
    const int64_t i64[3] = {0, 5, 31};
    write_mask_file(path, "h.1.ln_2.bias", i64, GRAFT_ST_I64, v, 3, "3");
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    graft_mask_t *mask = NULL;
    assert_int_equal(graft_mask_read(f, &lay, &mask), GRAFT_OK);
    graft_st_close(&f);
    size_t off = 0;
    for (int t = 0; t < lay.n; t++)
        if (!strcmp(lay.tensors[t].name, "h.1.ln_2.bias")) off = lay.tensors[t].offset;
    assert_true(off > 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mask->index[i], (int64_t)off + i64[i]);
        assert_true(mask->value[i] == v[i]);
    }
    graft_mask_destroy(&mask);

    const int32_t unsorted[3] = {4, 2, 9}, out_of_range[3] = {0, 1, 32}, ok[3] = {0, 1, 2};
    write_mask_file(path, "h.1.ln_2.bias", unsorted, GRAFT_ST_I32, v, 3, "3");
    expect_refused(&lay, path, "'mask.h.1.ln_2.bias.index'[1] = 2 is out of range [0, 32) or not ascending");
    write_mask_file(path, "h.1.ln_2.bias", out_of_range, GRAFT_ST_I32, v, 3, "3");
    expect_refused(&lay, path, "'mask.h.1.ln_2.bias.index'[2] = 32 is out of range");
    write_mask_file(path, "h.1.ln_2.bias", ok, GRAFT_ST_I32, v, 3, "4");
    expect_refused(&lay, path, "the mask tensors hold 3 entries but mask.k is 4");
    write_mask_file(path, "h.7.ln_2.bias", ok, GRAFT_ST_I32, v, 3, "3");
    expect_refused(&lay, path, "tensor 'mask.h.7.ln_2.bias.index' is not a mask part of any tensor");
    write_mask_file(path, "h.1.ln_2.bias", v, GRAFT_ST_F32, v, 3, "3");
    expect_refused(&lay, path, "has dtype F32 where integers (I32 or I64) are expected");

    /* A trunk checkpoint is not a mask. */
    snprintf(path, sizeof path, "%s/trunk.safetensors", g_dir);
    assert_int_equal(graft_gpt2_save(m, path, NULL, 0, NULL, NULL, 0), GRAFT_OK);
    expect_refused(&lay, path,
                   "is a trunk (of graft pretrain or graft export), not a sparse grafting mask");
    graft_mask_layout_free(&lay);
    graft_gpt2_destroy(&m);
}

/* ---- Jaccard ---------------------------------------------------------------- */

static graft_mask_t *mask_of(const int64_t *idx, size_t k) {
    graft_mask_t *m = graft_mask_new(k);
    for (size_t i = 0; i < k; i++) {
        m->index[i] = idx[i];
        m->value[i] = 0.0f;
    }
    return m;
}

static void test_jaccard(void **state) {
    (void)state;
    const int64_t a[] = {1, 2, 3}, b[] = {2, 3, 4}, c[] = {10, 20, 30, 40};
    graft_mask_t *ma = mask_of(a, 3), *mb = mask_of(b, 3), *mc = mask_of(c, 4);
    graft_mask_t *e1 = mask_of(a, 0), *e2 = mask_of(b, 0);
    assert_true(graft_mask_jaccard(ma, ma) == 1.0);
    assert_true(graft_mask_jaccard(ma, mc) == 0.0);
    assert_true(graft_mask_jaccard(mc, ma) == 0.0);
    assert_true(graft_mask_jaccard(ma, mb) == 0.5);
    assert_int_equal(graft_mask_intersection(ma, mb), 2);
    assert_true(graft_mask_jaccard(e1, e2) == 1.0);
    assert_true(graft_mask_jaccard(e1, ma) == 0.0);
    graft_mask_destroy(&ma);
    graft_mask_destroy(&mb);
    graft_mask_destroy(&mc);
    graft_mask_destroy(&e1);
    graft_mask_destroy(&e2);
    assert_null(ma);

    /* A real top-k mask is identical with itself. */
    graft_grafting_t *g = grafting("attn,mlp,ln", 0);
    graft_mask_t *x = graft_grafting_top_k(g, 300), *y = graft_grafting_top_k(g, 300);
    assert_true(graft_mask_jaccard(x, y) == 1.0);
    graft_mask_destroy(&x);
    graft_mask_destroy(&y);
    graft_grafting_destroy(&g);
}

/* ---- refinement ------------------------------------------------------------- */

static double train_loss(graft_grafting_t *g, int t, const graft_mask_t *mask) {
    graft_grafting_use_mask(g, mask);
    graft_eval_result_t r;
    graft_trainer_evaluate(g->tr, t, GRAFT_SPLIT_TRAIN, &r);
    assert_int_equal(r.examples, 600);
    return r.loss;
}

static void test_refine_lowers_train_loss(void **state) {
    (void)state;
    for (int t = 0; t < 2; t++) {
        graft_run_config_t cfg;
        run_config(&cfg, "graft");
        set_opt(&cfg, "graft_refine_steps", "60");
        set_opt(&cfg, "graft_candidates", "4");
        graft_grafting_t *g = grafting_of(&cfg, t);
        size_t k = graft_grafting_k(g, 0.01);
        graft_mask_t *top = graft_grafting_top_k(g, k);
        graft_refine_stats_t st;
        graft_mask_t *ref = graft_grafting_refine(g, t, k, &st);
        assert_memory_equal(graft_trainer_trunk(g->tr)->params_memory, g->pre,
                            graft_trainer_trunk(g->tr)->num_params * sizeof(float));
        double before = train_loss(g, t, top), after = train_loss(g, t, ref);
        printf("  %s: k=%zu, %zu candidates, %zu entries changed; batch loss %.4f -> %.4f; "
               "train loss of the binary mask %.4f -> %.4f (reported %.4f -> %.4f)\n",
               TASKS[t], k, st.candidates, st.changed, st.first_loss, st.last_loss, before,
               after, st.train_loss_topk, st.train_loss_refined);
        assert_true(before == st.train_loss_topk);
        assert_true(after == st.train_loss_refined);
        assert_true(st.accepted);
        assert_true(after < before);
        assert_int_equal(ref->k, k);
        assert_int_equal(st.candidates, 4 * k);
        assert_true(st.changed > 0);
        /* Every entry is a candidate (the top 4k by movement), ascending,
         * with its fine-tuned value. */
        for (size_t i = 0; i < k; i++) {
            int found = 0;
            for (size_t j = 0; j < st.candidates && !found; j++) found = g->order[j] == ref->index[i];
            assert_true(found);
            if (i) assert_true(ref->index[i] > ref->index[i - 1]);
            assert_memory_equal(&ref->value[i], &g->ft[ref->index[i]], sizeof(float));
        }
        graft_mask_destroy(&top);
        graft_mask_destroy(&ref);
        graft_grafting_destroy(&g);
    }
}

/* ---- head fitting and sparse tuning ---------------------------------------- */

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

static void test_head_fit_and_tune(void **state) {
    (void)state;
    for (int t = 0; t < 2; t++) {
        graft_run_config_t cfg;
        run_config(&cfg, "graft");
        set_opt(&cfg, "head_lr", "2e-2");
        graft_grafting_t *g = grafting_of(&cfg, t);
        const graft_gpt2_t *m = graft_trainer_trunk(g->tr);
        graft_scope_t *head = graft_trainer_task_scope(g->tr, t);
        float *ft_head = malloc(head->numel * sizeof(float));
        graft_scope_export(head, ft_head);
        size_t k = graft_grafting_k(g, 0.01);
        graft_mask_t *mask = graft_grafting_top_k(g, k);
        double with_ft_head = train_loss(g, t, mask);

        /* The head fit: only the head moves (the trunk's backward is
         * skipped, so its gradient stays zero), and it lowers the loss it
         * reports, which an independent evaluation reproduces. */
        double fitted = graft_grafting_fit_head(g, t, mask, 60);
        assert_memory_equal(m->params_memory, g->pre, m->num_params * sizeof(float));
        assert_true(all_zero(m->grads_memory, m->num_params));
        assert_true(memcmp(head->params, ft_head, head->numel * sizeof(float)) != 0);
        assert_true(fitted == train_loss(g, t, mask));
        assert_true(fitted < with_ft_head);

        /* Sparse tuning: the same offsets, new values, a lower loss again;
         * the graft of the tuned mask is pre outside it. */
        graft_mask_t *tuned = graft_grafting_top_k(g, k);
        double after = graft_grafting_tune(g, t, tuned, 60);
        printf("  %s: k=%zu train loss %.4f (fine-tuned head) -> %.4f (fitted head) -> %.4f "
               "(values tuned)\n", TASKS[t], k, with_ft_head, fitted, after);
        assert_memory_equal(m->params_memory, g->pre, m->num_params * sizeof(float));
        assert_memory_equal(tuned->index, mask->index, k * sizeof(int64_t));
        size_t moved = 0;
        for (size_t i = 0; i < k; i++) moved += tuned->value[i] != mask->value[i];
        assert_true(moved > k / 2);
        assert_true(after == train_loss(g, t, tuned));
        assert_true(after < fitted);

        /* The fine-tuned head comes back bit for bit. */
        graft_grafting_use_finetuned_head(g, t);
        assert_memory_equal(head->params, ft_head, head->numel * sizeof(float));

        /* Refinement with fitted heads: each mask judged with its own head,
         * the one returned left in place. */
        set_opt(&cfg, "graft_refine_steps", "30");
        set_opt(&cfg, "graft_head_steps", "60");
        graft_grafting_t *g2 = grafting_of(&cfg, t);
        graft_refine_stats_t st;
        graft_mask_t *ref = graft_grafting_refine(g2, t, k, &st);
        assert_int_equal(st.head_steps, 60);
        assert_true(fabs(st.train_loss_topk - fitted) < 1e-12); /* same batches, same head fit */
        double kept = train_loss(g2, t, ref);
        assert_true(kept == (st.accepted ? st.train_loss_refined : st.train_loss_topk));
        assert_true(kept <= st.train_loss_topk);
        graft_mask_destroy(&ref);
        /* Both heads are fitted on the same batches: with k = 0 the two
         * masks are the same and tie, and the top-k one is kept. */
        ref = graft_grafting_refine(g2, t, 0, &st);
        assert_true(st.train_loss_refined == st.train_loss_topk);
        assert_false(st.accepted);
        assert_int_equal(ref->k, 0);
        graft_mask_destroy(&ref);
        graft_grafting_destroy(&g2);

        graft_mask_destroy(&mask);
        graft_mask_destroy(&tuned);
        free(ft_head);
        graft_grafting_destroy(&g);
    }
}

/* ---- the commands ----------------------------------------------------------- */

static void run(const char *cmd) {
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        print_error("'%s' failed (status %d)\n", cmd, rc);
        fail();
    }
}

/* A command's output file in g_dir, as a string. */
static void read_output(const char *name, char *text, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    text[fread(text, 1, n - 1, fp)] = '\0';
    fclose(fp);
}

/* Runs cmd, which must exit with `status` and print (stdout or stderr)
 * every one of the n needles. */
static void run_refused(const char *cmd, int status, const char *const *needles, int n) {
    char full[4096];
    snprintf(full, sizeof full, "%s >%s/refused.out 2>&1", cmd, g_dir);
    int rc = system(full);
    char text[8192];
    read_output("refused.out", text, sizeof text);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != status) {
        print_error("'%s': status %d, want exit %d; output:\n%s\n", cmd, rc, status, text);
        fail();
    }
    for (int i = 0; i < n; i++) assert_contains(text, needles[i]);
}

/* The "accuracy" of the first eval event of `model` and task in an events file. */
static double event_accuracy(const char *events, const char *model, const char *task) {
    FILE *fp = fopen(events, "r");
    assert_non_null(fp);
    char line[4096];
    double acc = -1.0;
    while (acc < 0 && fgets(line, sizeof line, fp)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        const char *ev = json_string_value(json_object_get(o, "event"));
        const char *m = json_string_value(json_object_get(o, "model"));
        const char *t = json_string_value(json_object_get(o, "task"));
        if (ev && m && t && !strcmp(ev, "eval") && !strcmp(m, model) && !strcmp(t, task))
            acc = json_real_value(json_object_get(o, "accuracy"));
        json_decref(o);
    }
    fclose(fp);
    assert_true(acc >= 0);
    return acc;
}

static void test_commands(void **state) {
    (void)state;
    char cmd[4096], common[1536], out[256], text[8192];
    snprintf(out, sizeof out, "%s/graftrun", g_dir);
    snprintf(common, sizeof common,
             "%s/graft %%s --preset tiny --seq 32 --seed 1 --eval_max 0 --threads 1 --tasks "
             "majority:classification:%s/majority.tsv,pairs:classification:%s/pairs.tsv "
             "--method graft", GRAFT_BINARY_DIR, g_dir, g_dir);
    char base[2048];
    snprintf(base, sizeof base, common, "train");
    /* With the head fitted and the values tuned, so that the eval below
     * checks that a mask file carries both. */
    snprintf(cmd, sizeof cmd,
             "%s --finetuned %s --sparsity 0.05,0.01 --graft_head_steps 20 --graft_tune_steps 20 "
             "--out %s >%s/train.out 2>&1", base, g_ft_list, out, g_dir);
    run(cmd);
    const char *files[] = {"mask.majority.s0.05.safetensors", "mask.pairs.s0.05.safetensors",
                           "mask.majority.s0.01.safetensors", "mask.pairs.s0.01.safetensors",
                           "overlap.s0.05.tsv", "overlap.s0.01.json", "events.jsonl"};
    char path[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        assert_int_equal(access(path, R_OK), 0);
    }

    /* graft mask overlap agrees with graft_mask_jaccard on the same files. */
    snprintf(cmd, sizeof cmd,
             "%s/graft mask overlap --out %s/ov %s/mask.majority.s0.05.safetensors "
             "%s/mask.pairs.s0.05.safetensors >/dev/null", GRAFT_BINARY_DIR, g_dir, out, out);
    run(cmd);
    graft_grafting_t *g = grafting("attn,mlp,ln", 0);
    graft_mask_t *m[2];
    for (int i = 0; i < 2; i++) {
        int t;
        snprintf(path, sizeof path, "%s/mask.%s.s0.05.safetensors", out, i ? "pairs" : "majority");
        assert_int_equal(graft_grafting_load_mask(g, path, &t, &m[i]), GRAFT_OK);
        assert_int_equal(t, i);
    }
    snprintf(path, sizeof path, "%s/ov/overlap.json", g_dir);
    json_t *o = json_load_file(path, 0, NULL);
    assert_non_null(o);
    json_t *jac = json_object_get(o, "jaccard");
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "tasks"), 1)), "pairs");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            double want = graft_mask_jaccard(m[i], m[j]);
            double got = json_real_value(json_array_get(json_array_get(jac, (size_t)i), (size_t)j));
            assert_true(fabs(got - want) < 1e-12);
        }
    /* Different tasks' models: different regions. */
    assert_true(json_real_value(json_array_get(json_array_get(jac, 0), 1)) < 0.5);
    json_decref(o);
    graft_mask_destroy(&m[0]);
    graft_mask_destroy(&m[1]);
    graft_grafting_destroy(&g);

    /* show takes no --out (it would be ignored), and a bogus subcommand is named. */
    snprintf(cmd, sizeof cmd, "%s/graft mask show --out %s/show %s/mask.pairs.s0.05.safetensors "
             ">/dev/null 2>%s/show.err", GRAFT_BINARY_DIR, g_dir, out, g_dir);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    read_output("show.err", text, sizeof text);
    assert_contains(text, "unknown option 'out'");
    snprintf(path, sizeof path, "%s/show", g_dir);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(cmd, sizeof cmd, "%s/graft mask bogus 2>%s/bogus.err", GRAFT_BINARY_DIR, g_dir);
    st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    read_output("bogus.err", text, sizeof text);
    assert_contains(text, "graft mask: unknown subcommand 'bogus'");

    /* graft report reads the run: one row per sparsity (no base row), and
     * the overlap matrix of the train run or of graft mask overlap. */
    snprintf(cmd, sizeof cmd, "%s/graft report --no_plots --out %s/report %s %s/ov >/dev/null 2>&1",
             GRAFT_BINARY_DIR, g_dir, out, g_dir);
    run(cmd);
    snprintf(path, sizeof path, "%s/report/summary.json", g_dir);
    json_t *sum = json_load_file(path, 0, NULL);
    assert_non_null(sum);
    json_t *rows = json_object_get(sum, "runs");
    int graft_rows = 0;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        if (!strcmp(json_string_value(json_object_get(row, "method")), "graft")) {
            assert_true(json_is_number(json_object_get(row, "sparsity")));
            graft_rows++;
        }
    }
    assert_int_equal(graft_rows, 2);
    assert_non_null(json_object_get(json_object_get(sum, "mask_overlap"), "jaccard"));
    json_decref(sum);

    /* graft inspect --method graft: k = round(sparsity * eligible) per task. */
    snprintf(base, sizeof base, common, "inspect");
    snprintf(cmd, sizeof cmd, "%s --sparsity 0.01,0.001 >%s/inspect.out 2>&1", base, g_dir);
    run(cmd);
    read_output("inspect.out", text, sizeof text);
    assert_contains(text, "masks over attn,mlp,ln: 25472 eligible parameters");
    assert_contains(text, "0.01                  255");
    assert_contains(text, "0.001                  25");
    assert_contains(text, "task.majority                head                132");
    /* majority at 0.01: 255 + 4 * 32 + 4 */
    assert_contains(text, "majority                     0.01                  387");

    /* graft eval --method graft: the saved mask gives the train run's accuracy. */
    snprintf(base, sizeof base, common, "eval");
    snprintf(cmd, sizeof cmd, "%s --resume %s/mask.pairs.s0.05.safetensors >%s/eval.out 2>&1",
             base, out, g_dir);
    run(cmd);
    snprintf(path, sizeof path, "%s/eval.out", g_dir);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[1024];
    double acc = -1.0;
    while (fgets(line, sizeof line, fp)) {
        const char *at = strstr(line, " acc ");
        if (at && strstr(line, "pairs")) acc = atof(at + 5);
    }
    fclose(fp);
    snprintf(path, sizeof path, "%s/events.jsonl", out);
    double want = event_accuracy(path, "graft", "pairs");
    printf("  pairs at sparsity 0.05: train run %.4f, graft eval %.4f\n", want, acc);
    assert_true(fabs(acc - want) < 5e-5); /* printed with 4 decimals */

    /* graft mask show: k, and how the mask was built. */
    snprintf(cmd, sizeof cmd,
             "%s/graft mask show %s/mask.pairs.s0.05.safetensors >%s/show.out 2>&1",
             GRAFT_BINARY_DIR, out, g_dir);
    run(cmd);
    read_output("show.out", text, sizeof text);
    assert_contains(text, "task pairs, k=1274 of 25472 eligible");
    assert_contains(text, "refined 0, head fitted 20, tuned 20 steps");

    /* Refusals name the file and the problem, and leave no run folder. */
    char bad[256];
    snprintf(bad, sizeof bad, "%s/refused_run", g_dir);
    snprintf(base, sizeof base, common, "train");
    snprintf(cmd, sizeof cmd, "%s --finetuned %s/nonexistent --out %s", base, g_dir, bad);
    const char *no_file[] = {"/nonexistent: cannot open"};
    run_refused(cmd, 1, no_file, 1);
    assert_int_equal(access(bad, F_OK), -1);
    snprintf(cmd, sizeof cmd, "%s --finetuned %s --out %s", base, g_ft[0], bad);
    const char *no_head[] = {"has no head for task 'pairs'"};
    run_refused(cmd, 1, no_head, 1);
    assert_int_equal(access(bad, F_OK), -1);
    /* A modules checkpoint is not a mask, and a mask is not modules. */
    snprintf(cmd, sizeof cmd, "%s/graft mask show %s", GRAFT_BINARY_DIR, g_ft[0]);
    const char *show[] = {"modules.safetensors: is a modules checkpoint (of graft train, graft "
                          "run or graft mpi), not a sparse grafting mask"};
    run_refused(cmd, 1, show, 1);
    snprintf(base, sizeof base, common, "eval");
    snprintf(cmd, sizeof cmd, "%s --resume %s", base, g_ft[0]);
    const char *eval_modules[] = {"is a modules checkpoint",
                                  "--method graft takes the mask files of `graft train --method "
                                  "graft`; a modules checkpoint goes with the --method it was "
                                  "trained with"};
    run_refused(cmd, 1, eval_modules, 2);
    snprintf(cmd, sizeof cmd, "%s --method full --resume %s/mask.pairs.s0.05.safetensors", base,
             out);
    const char *eval_mask[] = {"mask.pairs.s0.05.safetensors: is a sparse grafting mask (of graft "
                               "train --method graft), not a modules checkpoint",
                               "a mask goes with --method graft (this run's method is full)"};
    run_refused(cmd, 1, eval_mask, 2);
}

/* A "fine-tuned" model that took no step is the trunk itself: there is no
 * gain for a graft to recover, so each graft says n/a (not a share of
 * nothing), its eval event has "recovered": null, and graft report reads it. */
static void test_no_gain_to_recover(void **state) {
    (void)state;
    char ft[256], cmd[4096], out[256], text[8192], path[512];
    snprintf(ft, sizeof ft, "%s/ft_none/modules.safetensors", g_dir);
    graft_run_config_t cfg;
    task_config(&cfg, "full", "majority");
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
    assert_int_equal(graft_trainer_save(tr, ft), GRAFT_OK);
    graft_trainer_destroy(&tr);
    snprintf(out, sizeof out, "%s/nogain", g_dir);
    snprintf(cmd, sizeof cmd,
             "%s/graft train --preset tiny --seq 32 --seed 1 --eval_max 0 --threads 1 --tasks "
             "majority:classification:%s/majority.tsv --method graft --finetuned "
             "majority=%s/ft_none --sparsity 0.05 --out %s >%s/nogain.out 2>&1",
             GRAFT_BINARY_DIR, g_dir, g_dir, out, g_dir);
    run(cmd);
    read_output("nogain.out", text, sizeof text);
    assert_contains(text, "recovered: n/a (fine-tuning did not beat the pretrained trunk)");
    assert_null(strstr(text, "of the fine-tuned gain"));
    snprintf(path, sizeof path, "%s/events.jsonl", out);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[4096];
    int evals = 0;
    while (fgets(line, sizeof line, fp)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        if (!strcmp(json_string_value(json_object_get(o, "event")), "eval")) {
            assert_true(json_is_null(json_object_get(o, "recovered")));
            evals++;
        }
        json_decref(o);
    }
    fclose(fp);
    assert_int_equal(evals, 1);
    snprintf(cmd, sizeof cmd, "%s/graft report --no_plots --out %s/nogain_report %s >/dev/null",
             GRAFT_BINARY_DIR, g_dir, out);
    run(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups_and_k),
        cmocka_unit_test(test_finetuned_sources),
        cmocka_unit_test(test_top_k_matches_naive),
        cmocka_unit_test(test_all_ones_all_zeros),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_bad_mask_files),
        cmocka_unit_test(test_jaccard),
        cmocka_unit_test(test_refine_lowers_train_loss),
        cmocka_unit_test(test_head_fit_and_tune),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_no_gain_to_recover),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
