/* test_methods.c — every fine-tuning method learns the synthetic multi-task
 * problem (scripts/synthetic_tasks.py) better than the `head` baseline, and
 * the trainable-parameter counts equal their closed forms.
 *
 * The trunk is the `tiny` preset at random initialisation, except for RED,
 * which runs on the committed pretrained `small` trunk
 * (models/small/trunk.safetensors; see the note at METHODS), trained
 * centrally with graft_trainer_* exactly as `graft train` drives it
 * (round-robin mix, warmup + cosine schedule, two-stage channel selection
 * after a third of the steps), on the two
 * classification tasks: `majority` (4 labels: the most frequent of 12
 * letters) and `pairs` (2 labels: does the bigram "ab" occur).
 *
 * The comparison is controlled: each method runs with its own learning
 * rate, and the head baseline it must beat is run with the SAME settings
 * (trunk, learning rate, steps, batch, seed), as two `graft train` runs
 * that differ only in --method. The trainer has one learning rate for the
 * head and the modules, and the head alone wants a large one (a linear
 * probe on LayerNorm outputs needs weights of several units) while the
 * modules do not, so a single head run at one rate would either starve the
 * head inside every method or make the modules diverge.
 *
 * Asserted per method: the mean dev accuracy over the two tasks beats the
 * head baseline's by MARGIN and beats chance (each task's majority-label
 * share of the dev split, averaged); a PEFT method leaves the trunk
 * bit-identical to a fresh one (built from the seed, or read again from the
 * checkpoint); graft_peft_task_params equals the closed
 * form for every task.
 *
 * `graft` (sparse masks, grafting.h) trains nothing itself: it grafts the
 * top-k parameters of the `full` run above (saved as `graft train --method
 * full` does) onto the trunk, with that run's heads, at the sparsities of
 * GRAFTS, and must beat the head baseline of the full run's learning rate
 * by MARGIN too; its per-task count is k = round(sparsity * eligible) with
 * eligible = num_params - (V + T) C (all but the embeddings) plus the head.
 *
 * Also: settings the trunk or the option cannot take (--channels_k above
 * C, --seq above T, an unknown --mix, a task name twice) are refused;
 * module checkpoints record the settings that shape the modules and
 * loading them with other values is refused (resuming also with another
 * optimizer), while a checkpoint without that metadata still loads;
 * channel indices out of range or repeated are refused; an empty split's
 * evaluation has no metrics (JSON nulls).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <ftw.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graft.h"
#include "grafting.h"
#include "synthetic.h"
#include "trainer.h"

/* Dev accuracy a method must add to head's (mean over the two tasks). The
 * dev split has 100 examples per task, so one example is 1%; the margins
 * measured below are several times this. */
#define MARGIN 0.03

/* The committed pretrained trunk (models/README.md says how it is made). */
#define PRETRAINED GRAFT_SOURCE_DIR "/models/small/trunk.safetensors"

typedef struct {
    const char *method;
    float lr;
    const char *trunk; /* NULL: the tiny preset at random initialisation */
} method_t;

#define STEPS 300

/* Learning rates picked per method from a sweep over 1e-3..1e-1 (300
 * steps, mean dev accuracy of the method / of head at the same rate):
 *   lora      3e-3: 0.855 / 0.615   (1e-2: 0.840 / 0.630; 3e-2 diverges)
 *   adapter   1e-3: 0.690 / 0.615   (3e-3: 0.675; >= 1e-2: 0.615 and less)
 *   red       3e-3: 0.615 / 0.615   (1e-3 the same; >= 1e-2: 0.55 and less)
 *   lntune    3e-2: 0.835 / 0.685   (1e-1: 0.840 / 0.790)
 *   lntune,channels 1e-2: 0.700 / 0.630
 *   full      3e-3: 0.800 / 0.615
 * RED does not beat head at any rate tried (also 600 steps, batch 32 and
 * 64): on this random trunk the residual stream has an rms of ~0.025, and
 * Adam moves RED's bias by ~lr a step, so from 1e-2 up the bias swamps the
 * residual stream (rms 0.33 after 300 steps at 3e-2) and the head's
 * features with it, while below that s and b barely leave 1 and 0 and RED
 * equals the head. A separate head rate (--head_lr) does not rescue it
 * either (300 steps, test accuracy majority / pairs): head alone at 1e-1
 * 0.89 / 0.65; RED at 3e-5 / 1e-4 / 3e-4 / 1e-3 with the head at 1e-1:
 * 0.71-0.63 / 0.63-0.68, and with --grad_clip 0 (the global norm couples
 * the head's step to RED's large gradients) 0.85 / 0.63 at 3e-5, 0.68 / 0.68
 * at 1e-3. red is therefore left out of this learning test (a known miss,
 * tracked in the PEFT issue: scaling and shifting a random trunk's MLP
 * outputs gives the head nothing better to read). RED edits the
 * representations of a pretrained model, so it is tested on the committed
 * pretrained `small` trunk instead, against head on that trunk at the same
 * rate. Test accuracy there (mean of majority / pairs, 300 steps, `graft
 * train --trunk models/small/trunk.safetensors --seq 32 --batch 16`):
 *   head 3e-3: 0.685   1e-2: 0.730   3e-2: 0.745
 *   red  3e-3: 0.730   1e-2: 0.870   3e-2: 0.925     (lora 3e-3: 0.975)
 * so RED at 1e-2 beats the best head rate by 0.125. Its gradients and
 * counts are tested in test_peft.c. */
/* Sparsities of `graft`, and refinement steps. Measured mean dev accuracy
 * (full at 3e-3: 0.800; head at 3e-3: 0.615):
 *   top-k 0.1: 0.810   top-k 0.05: 0.780   top-k 0.01: 0.650
 *   refined (100 steps) 0.01: 0.785          refined 0.001: 0.595
 * so 5% of the eligible trunk, or 1% with refinement, beats head by far;
 * 1% without refinement only by 0.035 (too close to MARGIN to assert) and
 * 0.1% does not (25 parameters per task). */
static const struct {
    double sparsity;
    int refine_steps;
} GRAFTS[] = {{0.05, 0}, {0.01, 100}};
#define N_GRAFTS (int)(sizeof GRAFTS / sizeof GRAFTS[0])

static const method_t METHODS[] = {
    {"lora", 3e-3f, NULL},   {"adapter", 1e-3f, NULL},
    {"lntune", 3e-2f, NULL}, {"lntune,channels", 1e-2f, NULL},
    {"red", 1e-2f, PRETRAINED}, {"full", 3e-3f, NULL},
};
#define N_METHODS (int)(sizeof METHODS / sizeof METHODS[0])

static char g_dir[64];
static char g_full[128]; /* the checkpoint of the `full` run */
static float g_full_lr;

static int group_setup(void **state) {
    (void)state;
    return synthetic_tasks_make(g_dir, sizeof g_dir, "methods");
}

static int group_teardown(void **state) {
    (void)state;
    synthetic_tasks_remove(g_dir);
    return 0;
}

static void run_config(graft_run_config_t *cfg, const char *method, float lr, const char *trunk) {
    synthetic_run_config(cfg, g_dir, method, NULL);
    char num[32];
#define SET(k, v) assert_int_equal(graft_options_set(graft_run_options, cfg, k, v, "test"), 0)
    if (trunk) SET("trunk", trunk);
    SET("lora_shared_rank", "4");
    SET("lora_shared_alpha", "8");
    SET("lora_task_rank", "2");
    SET("lora_task_alpha", "4");
    SET("adapter_dim", "8");
    SET("channels_k", "8");
    snprintf(num, sizeof num, "%d", STEPS);
    SET("steps", num);
    snprintf(num, sizeof num, "%.9g", lr);
    SET("lr", num);
#undef SET
}

/* Share of the most frequent label in task t's dev split. */
static double chance(const graft_trainer_t *tr, int t) {
    int K = graft_task_num_labels(graft_trainer_task(tr, t));
    size_t n = graft_task_count(graft_trainer_task(tr, t), GRAFT_SPLIT_DEV), counts[16] = {0},
           best = 0;
    assert_true(K <= 16);
    for (size_t i = 0; i < n; i++)
        counts[graft_task_example(graft_trainer_task(tr, t), GRAFT_SPLIT_DEV, i)->label_id]++;
    for (int k = 0; k < K; k++)
        if (counts[k] > best) best = counts[k];
    return (double)best / (double)n;
}

/* Closed form of the trainable parameters of task t (shared + own). */
static size_t closed_form(const graft_trainer_t *tr, int t) {
    const graft_gpt2_config_t *c = &graft_trainer_trunk(tr)->cfg;
    const graft_run_config_t *rc = graft_trainer_config(tr);
    size_t L = c->L, C = c->C, K = graft_task_num_labels(graft_trainer_task(tr, t));
    size_t n = C * K + K; /* the head */
    int methods;
    assert_int_equal(graft_peft_parse_methods(rc->method, &methods), GRAFT_OK);
    if (methods & GRAFT_M_FULL) n += graft_trainer_trunk(tr)->num_params;
    if (methods & GRAFT_M_LORA) {
        /* r (in + out) per adapted matrix: qkv C->3C, attn C->C, fc C->4C,
         * fcproj 4C->C, i.e. 16C per layer with all four, for each pair */
        size_t in_out[4] = {C + 3 * C, C + C, C + 4 * C, 4 * C + C};
        for (int p = 0; p < 4; p++)
            n += L * (size_t)(rc->lora_shared_rank + rc->lora_task_rank) * in_out[p];
    }
    if (methods & GRAFT_M_RED) n += 2 * L * C;
    if (methods & GRAFT_M_ADAPTER) {
        size_t m = rc->adapter_dim;
        n += L * (2 * C + C * m + m + m * C + C);
    }
    if (methods & GRAFT_M_LNTUNE) n += 2 * L * 2 * C + 2 * C;
    if (methods & GRAFT_M_CHANNELS) {
        size_t k = rc->channels_k;
        n += L * (4 * C * k + k);
    }
    return n;
}

/* Trains `method` at lr on trunk (NULL: tiny, random) and returns its mean
 * dev accuracy over the tasks. */
static double train_method(const char *method, float lr, const char *trunk) {
    graft_run_config_t cfg;
    run_config(&cfg, method, lr, trunk);
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
    assert_int_equal(graft_trainer_n_tasks(tr), 2);

    for (int t = 0; t < graft_trainer_n_tasks(tr); t++) {
        size_t got = graft_peft_task_params(graft_trainer_peft(tr), t), want = closed_form(tr, t);
        printf("  %-16s %-9s trainable %zu (closed form %zu)\n", method,
               graft_task_name(graft_trainer_task(tr, t)), got, want);
        assert_int_equal(got, want);
    }

    int full = strcmp(method, "full") == 0;
    double t0 = graft_now();
    int stage1 = cfg.stage1_steps > 0 ? cfg.stage1_steps : cfg.steps / 3;
    while (graft_trainer_steps_done(tr) < cfg.steps) {
        if (graft_trainer_stage(tr) == 1 && graft_trainer_steps_done(tr) >= stage1)
            graft_trainer_select_channels(tr);
        int t = graft_trainer_task_for_step(tr, graft_trainer_steps_done(tr));
        graft_trainer_step(tr, t, -1.0f);
    }
    assert_int_equal(graft_trainer_stage(tr), 2);
    double seconds = graft_now() - t0;
    double acc = 0.0, ch = 0.0;
    char line[256];
    for (int t = 0; t < graft_trainer_n_tasks(tr); t++) {
        graft_eval_result_t r;
        graft_trainer_evaluate(tr, t, GRAFT_SPLIT_DEV, &r);
        graft_eval_format(tr, &r, line, sizeof line);
        printf("  %-16s %s (chance %.2f)\n", method, line, chance(tr, t));
        acc += r.cls.accuracy / graft_trainer_n_tasks(tr);
        ch += chance(tr, t) / graft_trainer_n_tasks(tr);
    }
    printf("  %-16s lr %.0e%s: mean dev accuracy %.4f (chance %.4f), %d steps in %.1fs\n", method,
           (double)lr, trunk ? " (pretrained trunk)" : "", acc, ch, graft_trainer_steps_done(tr),
           seconds);
    assert_true(acc > ch);

    /* A PEFT method leaves the trunk exactly as built from the seed or read
     * from the checkpoint. */
    graft_gpt2_t *fresh = NULL;
    if (trunk) {
        assert_int_equal(graft_gpt2_load(trunk, &fresh), GRAFT_OK);
    } else {
        graft_gpt2_config_t mc;
        assert_int_equal(graft_gpt2_preset("tiny", &mc), GRAFT_OK);
        fresh = graft_gpt2_new(&mc, (uint64_t)cfg.seed);
    }
    assert_int_equal(fresh->num_params, graft_trainer_trunk(tr)->num_params);
    int same = memcmp(fresh->params_memory, graft_trainer_trunk(tr)->params_memory,
                      fresh->num_params * sizeof(float)) == 0;
    assert_int_equal(same, !full);
    if (!full) assert_null(graft_trainer_trunk(tr)->grads_memory);
    if (full) {
        snprintf(g_full, sizeof g_full, "%s/full/modules.safetensors", g_dir);
        assert_int_equal(graft_trainer_save(tr, g_full), GRAFT_OK);
        g_full_lr = lr;
    }
    graft_gpt2_destroy(&fresh);
    graft_trainer_destroy(&tr);
    return acc;
}

/* Grafts the full run's top-k (refined for refine_steps) at sparsity onto
 * the trunk and returns the mean dev accuracy over the tasks. */
static double graft_method(double sparsity, int refine_steps) {
    graft_run_config_t cfg;
    run_config(&cfg, "graft", g_full_lr, NULL);
    char num[32];
    snprintf(num, sizeof num, "%d", refine_steps);
    assert_int_equal(graft_options_set(graft_run_options, &cfg, "graft_refine_steps", num, "t"), 0);
    assert_int_equal(graft_options_set(graft_run_options, &cfg, "finetuned", g_full, "t"), 0);
    graft_grafting_t *g = NULL;
    assert_int_equal(graft_grafting_new(&cfg, &g), GRAFT_OK);
    const graft_gpt2_config_t *c = &graft_trainer_trunk(g->tr)->cfg;
    size_t eligible = graft_trainer_trunk(g->tr)->num_params - (size_t)(c->V + c->T) * c->C;
    size_t k = (size_t)llround(sparsity * (double)eligible);
    assert_int_equal(g->layout.num_eligible, eligible);
    assert_int_equal(graft_grafting_k(g, sparsity), k);
    double acc = 0.0;
    char line[256];
    for (int t = 0; t < graft_trainer_n_tasks(g->tr); t++) {
        assert_int_equal(graft_grafting_load_finetuned(g, t, g_full), GRAFT_OK);
        size_t K = (size_t)graft_task_num_labels(graft_trainer_task(g->tr, t));
        printf("  graft %-10g %-9s trainable k %zu + head %zu\n", sparsity,
               graft_task_name(graft_trainer_task(g->tr, t)), k, c->C * K + K);
        graft_refine_stats_t st;
        graft_mask_t *mask = refine_steps ? graft_grafting_refine(g, t, k, &st)
                                          : graft_grafting_top_k(g, k);
        assert_int_equal(mask->k, k);
        graft_grafting_use_mask(g, mask);
        graft_eval_result_t r;
        graft_trainer_evaluate(g->tr, t, GRAFT_SPLIT_DEV, &r);
        graft_eval_format(g->tr, &r, line, sizeof line);
        printf("  graft %-10g %s\n", sparsity, line);
        acc += r.cls.accuracy / graft_trainer_n_tasks(g->tr);
        graft_mask_destroy(&mask);
    }
    graft_grafting_destroy(&g);
    return acc;
}

static void test_methods_beat_head(void **state) {
    (void)state;
    /* head baselines by trunk and learning rate, each trained once */
    method_t head[N_METHODS];
    double head_acc[N_METHODS];
    int n_head = 0, failures = 0;
    for (int i = 0; i < N_METHODS; i++) {
        const method_t *mt = &METHODS[i];
        int h = 0;
        while (h < n_head && (head[h].lr != mt->lr || head[h].trunk != mt->trunk)) h++;
        if (h == n_head) {
            head[n_head] = (method_t){"head", mt->lr, mt->trunk};
            head_acc[n_head++] = train_method("head", mt->lr, mt->trunk);
        }
        double acc = train_method(mt->method, mt->lr, mt->trunk);
        int ok = acc >= head_acc[h] + MARGIN;
        printf("  %-16s %.4f vs head %.4f at lr %.0e%s: %s\n", mt->method, acc, head_acc[h],
               (double)mt->lr, mt->trunk ? " (pretrained trunk)" : "",
               ok ? "beats head" : "DOES NOT beat head");
        failures += !ok;
    }
    int h = 0;
    while (h < n_head && (head[h].lr != g_full_lr || head[h].trunk)) h++;
    assert_true(h < n_head && g_full[0]);
    for (int i = 0; i < N_GRAFTS; i++) {
        double acc = graft_method(GRAFTS[i].sparsity, GRAFTS[i].refine_steps);
        int ok = acc >= head_acc[h] + MARGIN;
        printf("  graft %g (%d refinement steps) %.4f vs head %.4f at lr %.0e: %s\n",
               GRAFTS[i].sparsity, GRAFTS[i].refine_steps, acc, head_acc[h], (double)g_full_lr,
               ok ? "beats head" : "DOES NOT beat head");
        failures += !ok;
    }
    assert_int_equal(failures, 0);
}

/* --optimizer: sgd (with --momentum) reaches the trainer's optimiser
 * config; an unknown name is refused before anything is built. */
static void test_optimizer_option(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "full", 0.1f, NULL);
    graft_trainer_t *tr = NULL;
    snprintf(cfg.optimizer, sizeof cfg.optimizer, "adam");
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_EINVAL);
    assert_null(tr);
    snprintf(cfg.optimizer, sizeof cfg.optimizer, "sgd");
    cfg.momentum = 0.9f;
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
    assert_int_equal(graft_trainer_optimizer(tr)->kind, GRAFT_SGD);
    assert_true(graft_trainer_optimizer(tr)->momentum == 0.9f);
    graft_trainer_destroy(&tr);
}

static void set(graft_run_config_t *cfg, const char *key, const char *value) {
    assert_int_equal(graft_options_set(graft_run_options, cfg, key, value, "test"), 0);
}

/* A trainer of base with key = value: graft_trainer_new's verdict; with a
 * path, the verdict of loading it into the trainer (graft_trainer_resume
 * when resume, else graft_trainer_load). */
static int settings_rc(const graft_run_config_t *base, const char *key, const char *value,
                       const char *path, int resume) {
    graft_run_config_t cfg = *base;
    set(&cfg, key, value);
    graft_trainer_t *tr = NULL;
    int rc = graft_trainer_new(&cfg, &tr);
    assert_true(rc == GRAFT_OK ? tr != NULL : tr == NULL);
    if (path) {
        assert_int_equal(rc, GRAFT_OK);
        rc = resume ? graft_trainer_resume(tr, path) : graft_trainer_load(tr, path);
    }
    graft_trainer_destroy(&tr);
    return rc;
}

static int trainer_rc(const graft_run_config_t *base, const char *key, const char *value) {
    return settings_rc(base, key, value, NULL, 0);
}

/* Settings the tiny trunk (T = C = 32) or the option's own values cannot
 * take are refused before anything is built. */
static void test_settings_refused(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "lntune,channels", 1e-2f, NULL);
    assert_int_equal(trainer_rc(&cfg, "channels_k", "32"), GRAFT_OK);
    assert_int_equal(trainer_rc(&cfg, "channels_k", "33"), GRAFT_EINVAL);
    assert_int_equal(trainer_rc(&cfg, "seq", "32"), GRAFT_OK);
    assert_int_equal(trainer_rc(&cfg, "seq", "33"), GRAFT_EINVAL);
    assert_int_equal(trainer_rc(&cfg, "mix", "proportional"), GRAFT_OK);
    assert_int_equal(trainer_rc(&cfg, "mix", "foo"), GRAFT_EINVAL);
    char tasks[512];
    snprintf(tasks, sizeof tasks,
             "majority:classification:%s/majority.tsv,majority:classification:%s/pairs.tsv",
             g_dir, g_dir);
    assert_int_equal(trainer_rc(&cfg, "tasks", tasks), GRAFT_EINVAL);
    graft_task_spec_t specs[4];
    assert_int_equal(graft_task_specs_parse("a:generation:x,b:generation:x", specs, 4), 2);
    assert_int_equal(graft_task_specs_parse("a:generation:x,a:classification:y", specs, 4),
                     GRAFT_EINVAL);
}

/* A copy of the checkpoint at src with metadata keys[0..n) only: the
 * value of vals[i] where it is not NULL, else src's. */
static void copy_checkpoint(const char *src, const char *dst, const char *const *keys,
                            const char *const *vals, int n) {
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(src, &f), GRAFT_OK);
    int nt = graft_st_count(f);
    graft_st_tensor_t *ts = calloc((size_t)nt, sizeof *ts);
    float **data = calloc((size_t)nt, sizeof *data);
    for (int i = 0; i < nt; i++) {
        ts[i].name = graft_st_name(f, i);
        assert_int_equal(graft_st_shape(f, ts[i].name, ts[i].shape, &ts[i].ndim), GRAFT_OK);
        int64_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= ts[i].shape[d];
        data[i] = malloc((size_t)numel * sizeof(float));
        assert_int_equal(graft_st_read(f, ts[i].name, ts[i].shape, ts[i].ndim, data[i]), 0);
        ts[i].data = data[i];
    }
    const char *v[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        v[i] = vals && vals[i] ? vals[i] : graft_st_meta(f, keys[i]);
        assert_non_null(v[i]);
    }
    assert_int_equal(graft_st_write(dst, ts, nt, keys, v, n), GRAFT_OK);
    for (int i = 0; i < nt; i++) free(data[i]);
    free(data);
    free(ts);
    graft_st_close(&f);
}

static const char *const PROGRESS_KEYS[] = {"train.step", "train.stage", "train.rng_state",
                                            "train.rng_inc", "format"};

/* A copy of the checkpoint at src with only the metadata graft wrote
 * before the module settings were recorded. */
static void write_old_checkpoint(const char *src, const char *dst) {
    const char *keys[] = {PROGRESS_KEYS[0], PROGRESS_KEYS[1], PROGRESS_KEYS[2], PROGRESS_KEYS[3],
                          PROGRESS_KEYS[4], "train.method", "train.optimizer"};
    copy_checkpoint(src, dst, keys, NULL, 7);
}

/* The modules of a trainer of cfg after one step, saved at path. */
static void save_one_step(const graft_run_config_t *cfg, const char *path) {
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(cfg, &tr), GRAFT_OK);
    graft_trainer_step(tr, 0, -1.0f);
    assert_int_equal(graft_trainer_save(tr, path), GRAFT_OK);
    graft_trainer_destroy(&tr);
}

/* Module checkpoints record the settings that shape the modules; loading
 * them with other values is refused, resuming also with another
 * optimizer; a checkpoint from before they were recorded still loads. */
static void test_checkpoint_settings(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "lora", 3e-3f, NULL);
    char path[256], old[256];
    snprintf(path, sizeof path, "%s/settings/modules.safetensors", g_dir);
    snprintf(old, sizeof old, "%s/settings/old.safetensors", g_dir);
    save_one_step(&cfg, path);

    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    const char *want[][2] = {{"train.method", "lora"},         {"train.pool", "last"},
                             {"train.optimizer", "adamw"},     {"train.lora_targets", "all"},
                             {"train.lora_shared_rank", "4"},  {"train.lora_shared_alpha", "8"},
                             {"train.lora_task_rank", "2"},    {"train.lora_task_alpha", "4"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_string_equal(graft_st_meta(f, want[i][0]), want[i][1]);
    assert_null(graft_st_meta(f, "train.channels_k")); /* not a method of the run */
    assert_null(graft_st_meta(f, "train.adapter_dim"));
    graft_st_close(&f);

    assert_int_equal(settings_rc(&cfg, "seed", "1", path, 1), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "lora_targets", "qkv,attn,fc,fcproj", path, 0), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "lora_shared_rank", "0", path, 0), GRAFT_EINVAL);
    assert_int_equal(settings_rc(&cfg, "lora_targets", "qkv", path, 0), GRAFT_EINVAL);
    assert_int_equal(settings_rc(&cfg, "lora_task_alpha", "2", path, 0), GRAFT_EINVAL);
    assert_int_equal(settings_rc(&cfg, "pool", "mean", path, 0), GRAFT_EINVAL);
    assert_int_equal(settings_rc(&cfg, "optimizer", "sgd", path, 0), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "optimizer", "sgd", path, 1), GRAFT_EINVAL);
    write_old_checkpoint(path, old);
    assert_int_equal(settings_rc(&cfg, "pool", "mean", old, 0), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "lora_task_alpha", "2", old, 1), GRAFT_OK);
}

/* The checkpoint's settings are compared as the hello compares them
 * (graft_run_shared_settings): --method lora,red resumes as red,lora. A
 * checkpoint written before that recorded the raw flags (--method as
 * given, alphas with %g); they still load, read the same way. */
static void test_checkpoint_settings_canonical(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "lora,red", 3e-3f, NULL);
    set(&cfg, "lora_task_alpha", "0.1");
    set(&cfg, "lora_targets", "fc,qkv");
    char path[256], raw[256];
    snprintf(path, sizeof path, "%s/canonical/modules.safetensors", g_dir);
    snprintf(raw, sizeof raw, "%s/canonical/raw.safetensors", g_dir);
    save_one_step(&cfg, path);
    assert_int_equal(settings_rc(&cfg, "method", "red,lora", path, 1), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "method", " red , lora", path, 0), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "lora_targets", "qkv,fc", path, 1), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "method", "lora", path, 0), GRAFT_EINVAL);
    assert_int_equal(settings_rc(&cfg, "lora_task_alpha", "0.2", path, 0), GRAFT_EINVAL);

    const char *keys[] = {PROGRESS_KEYS[0], PROGRESS_KEYS[1], PROGRESS_KEYS[2],
                          PROGRESS_KEYS[3], PROGRESS_KEYS[4], "train.method",
                          "train.pool", "train.optimizer", "train.lora_targets",
                          "train.lora_shared_rank", "train.lora_shared_alpha",
                          "train.lora_task_rank", "train.lora_task_alpha"};
    const char *vals[] = {NULL, NULL, NULL, NULL, NULL, "red,lora", NULL, NULL, "fc,qkv",
                          NULL, NULL, NULL, "0.1"};
    copy_checkpoint(path, raw, keys, vals, 13);
    assert_int_equal(settings_rc(&cfg, "method", "lora,red", raw, 1), GRAFT_OK);
    assert_int_equal(settings_rc(&cfg, "lora_task_alpha", "0.2", raw, 0), GRAFT_EINVAL);
    vals[5] = "lora,bogus";
    copy_checkpoint(path, raw, keys, vals, 13);
    assert_int_equal(settings_rc(&cfg, "method", "lora,red", raw, 0), GRAFT_EINVAL);
}

/* Channel indices of a checkpoint: 0..C-1, none twice in a layer. */
static void test_channel_indices_checked(void **state) {
    (void)state;
    graft_run_config_t cfg;
    run_config(&cfg, "lntune,channels", 1e-2f, NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/channels/modules.safetensors", g_dir);
    /* Before selection layer l holds channels 0..k-1 (k = 8): entry 9 is
     * layer 1's channel 1, and 0 there repeats the layer's first. */
    const struct {
        int entry, value;
    } bad[] = {{0, -1}, {0, 32}, {9, 0}};
    for (size_t i = 0; i <= sizeof bad / sizeof bad[0]; i++) {
        graft_trainer_t *tr = NULL;
        assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
        int32_t *ch = graft_trainer_peft(tr)->tasks[1].channels;
        if (i < sizeof bad / sizeof bad[0]) ch[bad[i].entry] = bad[i].value;
        assert_int_equal(graft_trainer_save(tr, path), GRAFT_OK);
        graft_trainer_destroy(&tr);
        assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
        int rc = graft_trainer_load(tr, path);
        assert_int_equal(rc, i < sizeof bad / sizeof bad[0] ? GRAFT_EFORMAT : GRAFT_OK);
        if (!rc) assert_int_equal(graft_trainer_peft(tr)->tasks[1].channels[9], 1);
        graft_trainer_destroy(&tr);
    }
}

/* An empty split is reported as such: no metrics, JSON nulls. */
static void test_empty_split(void **state) {
    (void)state;
    char path[256], tasks[320];
    snprintf(path, sizeof path, "%s/train_only.tsv", g_dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("train\ta\tg1\tabc\ntrain\tb\tg2\tbcd\n", fp);
    fclose(fp);
    snprintf(tasks, sizeof tasks, "only:classification:%s", path);
    graft_run_config_t cfg;
    run_config(&cfg, "head", 3e-3f, NULL);
    set(&cfg, "tasks", tasks);
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
    graft_eval_result_t r;
    graft_trainer_evaluate(tr, 0, GRAFT_SPLIT_TEST, &r);
    assert_int_equal(r.examples, 0);
    char line[256];
    graft_eval_format(tr, &r, line, sizeof line);
    assert_string_equal(line, "only                 test  n=0     empty split: no metrics");
    json_t *o = graft_eval_json(tr, &r);
    const char *keys[] = {"loss", "accuracy", "macro_f1", "ece"};
    for (int i = 0; i < 4; i++) assert_true(json_is_null(json_object_get(o, keys[i])));
    assert_int_equal(json_integer_value(json_object_get(o, "examples")), 0);
    json_decref(o);
    graft_trainer_destroy(&tr);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settings_refused),
        cmocka_unit_test(test_checkpoint_settings),
        cmocka_unit_test(test_checkpoint_settings_canonical),
        cmocka_unit_test(test_channel_indices_checked),
        cmocka_unit_test(test_empty_split),
        cmocka_unit_test(test_optimizer_option),
        cmocka_unit_test(test_methods_beat_head),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
