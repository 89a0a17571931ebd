/* test_peft.c — the PEFT modules of common/peft.c on the `tiny` trunk:
 * LoRA (a shared and a per-task pair on all four projections), the residual
 * adapter, RED, lntune, channel deltas on chosen channels, and the
 * classification head.
 *
 *  - Identity at init: with every module at its initial value, the trunk's
 *    lnf and logits are BIT-EXACT equal to the plain trunk's, for each
 *    module alone and for all of them together. The math allows it for all:
 *      lora     B = 0: the merged weight W + scale A @ 0 is W exactly;
 *      adapter  U = 0, u = 0: h + (relu(.) @ 0 + 0) == h;
 *      red      s = 1, b = 0: 1 * y + 0 == y (with or without an FMA);
 *      lntune   the task's LayerNorm copies hold the trunk's values and go
 *               through the same kernel;
 *      channels deltas 0: y[:, S] += x @ 0 + 0;
 *      head     sits on lnf and does not enter the trunk at all.
 *    Values are compared with == (not memcmp) because -0 + 0 is +0.
 *  - Finite differences: the loss of graft_peft_classify (classification
 *    task) and graft_peft_lm (generation task) against central differences
 *    for a sample of every module tensor, after moving every module away
 *    from its initial value (B = 0, U = 0 would hide the gradients of A,
 *    D, ...). See FD_* below for the tolerance.
 *  - LoRA merge then unmerge: the weights come back within MERGE_TOL (not
 *    bit-exact in fp32: W + d - d rounds twice), the merged plain trunk
 *    gives the LoRA model's outputs within MERGED_OUT_TOL.
 *  - A frozen trunk: no weight-gradient memory, parameters untouched by
 *    training steps, for every PEFT method; `full` as the contrast.
 *  - The backward pass stops at the lowest gradient the modules need and
 *    computes nothing below it, with unchanged gradients.
 *  - PyTorch (tests/pytorch/peft_crosscheck.py, Debian's /usr/bin/python3,
 *    float64): loss, every module gradient and the Taylor channel scores,
 *    for all modules together, for lntune + channels, and for each module
 *    alone. Measured worst errors are ~1e-6 (see TORCH_TOL).
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
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adamw.h"
#include "gpt2.h"
#include "peft.h"
#include "rng.h"
#include "safetensors.h"

#define SEED 4242
#define NB 4  /* batch rows */
#define NT 16 /* tokens per row (tiny's context is 32) */
#define K 3   /* classes of the classification task */
#define TASK_CLS 0
#define TASK_GEN 1

/* Finite differences. The loss is an fp32 mean cross-entropy; taken as
 * is, its final rounding (~5e-7 near 5.6) alone puts ~3e-5 of noise into a
 * numeric gradient at eps 1e-2, so the FD loss re-takes that mean in double
 * from the per-row losses (fd_loss), which leaves ~1e-6..1e-5. The
 * truncation error (eps^2 |L'''| / 6) is of the same order at eps 1e-2.
 * An element passes when
 *   |num - ana| <= FD_RTOL * max(|num|, |ana|) + atol,
 * atol = FD_ATOL (eps 1e-2) or FD_ATOL_RELU (the adapter's eps 1e-3, ten
 * times the noise). Measured worst errors are printed per tensor: at most
 * ~0.3 of the allowance for the smooth modules, ~0.4 for the adapter. A
 * wrong term in a backward (a dropped bias sum, a missing alpha/r, a
 * gradient through the wrong activation) is off by 10% and more. Each
 * tensor's sample includes its largest analytic gradient, which must exceed
 * FD_MIN_GRAD * atol, so that no tensor passes on near-zero gradients that
 * the absolute tolerance alone would accept. */
#define FD_EPS 1e-2f
#define FD_RTOL 2e-2
#define FD_ATOL 2e-5
#define FD_ATOL_RELU 1e-4
#define FD_MIN_GRAD 25.0
#define FD_PER_TENSOR 6

/* Merge then unmerge: W + s A B - s A B. With |W + s A B| < 1 every float
 * operation rounds by at most 2^-24 per unit of magnitude, and the GEMM's
 * products are formed identically for +s and -s, so the residue is a few
 * ulps of the merged weight: ~1e-8 here (measured, printed). 2e-7 is
 * fp32's floor with a margin; forgetting to unmerge a pair leaves ~1e-2. */
#define MERGE_TOL 2e-7
/* Merged plain trunk against the unmerged LoRA model: the same function
 * summed in another order; max|diff| / max|ref| of lnf and logits. */
#define MERGED_OUT_TOL 1e-5
/* PyTorch (float64) against graft (fp32): max|diff| / max|ref| per tensor.
 * Measured: losses within 1.1e-7 relative, gradients within 1.6e-6, Taylor
 * scores within 4e-7; a missing alpha/r in dB gives 0.33..0.5, a wrong
 * ReLU mask in the adapter's backward 0.6..0.8. */
#define TORCH_TOL 1e-4

#define PATH_LEN 512

typedef struct {
    int32_t tokens[NB * NT], targets[NB * NT], pos[NB], labels[NB];
} batch_t;

static const graft_peft_task_t TASKS[2] = {{"cls", K}, {"gen", 0}};

/* ---- fixtures ------------------------------------------------------------- */

/* The tiny trunk from SEED, every tensor moved off its special initial
 * value (LayerNorm weights 1, zero biases) so that a module that read the
 * wrong LayerNorm or dropped a bias would show. Deterministic: two calls
 * give bit-identical trunks. */
static graft_gpt2_t *tiny_trunk(void) {
    graft_gpt2_config_t cfg;
    assert_int_equal(graft_gpt2_preset("tiny", &cfg), GRAFT_OK);
    graft_gpt2_t *m = graft_gpt2_new(&cfg, SEED);
    int n = graft_gpt2_num_named(&cfg);
    graft_gpt2_tensor_t *named = malloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    graft_rng_t rng;
    graft_rng_seed(&rng, SEED, 7);
    for (int i = 0; i < n; i++) {
        float std = named[i].decay ? 0.02f : 0.1f;
        float *p = m->params_memory + named[i].offset;
        for (size_t j = 0; j < named[i].numel; j++) p[j] += std * graft_rng_normal(&rng);
    }
    free(named);
    return m;
}

static void make_batch(batch_t *bt, uint64_t stream) {
    graft_rng_t rng;
    graft_rng_seed(&rng, SEED, stream);
    for (int i = 0; i < NB * NT; i++) {
        bt->tokens[i] = (int32_t)graft_rng_below(&rng, 256);
        /* about one target in four ignored, as prompt positions are */
        bt->targets[i] = graft_rng_below(&rng, 4) == 0 ? -1 : (int32_t)graft_rng_below(&rng, 256);
    }
    for (int b = 0; b < NB; b++) {
        bt->pos[b] = NT / 2 + (int32_t)graft_rng_below(&rng, NT / 2);
        bt->labels[b] = (int32_t)graft_rng_below(&rng, K);
    }
}

static graft_peft_config_t peft_config(int methods) {
    graft_peft_config_t c = {0};
    c.methods = methods | GRAFT_M_HEAD;
    c.lora_targets = (1 << GRAFT_NUM_PROJ) - 1;
    if (methods & GRAFT_M_LORA) {
        /* different ranks and alphas so that a swapped scale shows */
        c.lora_shared_rank = 4;
        c.lora_shared_alpha = 8.0f;
        c.lora_task_rank = 2;
        c.lora_task_alpha = 3.0f;
    }
    c.adapter_dim = 8;
    c.channels_k = 4;
    c.seed = SEED;
    return c;
}

/* A non-trivial channel choice through graft_peft_select_channels: scores
 * with ties, so the pick is neither the first k channels nor in index
 * order; checks the choice against a straightforward ranking. */
static void choose_channels(graft_peft_t *p, int task) {
    graft_peft_task_modules_t *tm = &p->tasks[task];
    int L = p->trunk->cfg.L, C = p->trunk->cfg.C, k = p->cfg.channels_k;
    for (int l = 0; l < L; l++)
        for (int c = 0; c < C; c++)
            tm->channel_scores[l * C + c] = (float)((c * 11 + 5 * l + 3 * task) % 13);
    graft_peft_select_channels(p, task);
    for (int l = 0; l < L; l++) {
        const float *s = tm->channel_scores + l * C;
        int used[256] = {0};
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int c = 0; c < C; c++)
                if (!used[c] && (best < 0 || s[c] > s[best])) best = c;
            used[best] = 1;
            assert_int_equal(tm->channels[l * k + j], best);
        }
        /* non-trivial: not simply 0..k-1 */
        int trivial = 1;
        for (int j = 0; j < k; j++) trivial &= tm->channels[l * k + j] == j;
        assert_false(trivial);
    }
}

static void perturb_scope(graft_scope_t *s, graft_rng_t *rng, float std) {
    for (size_t i = 0; i < s->numel; i++) s->params[i] += std * graft_rng_normal(rng);
}

/* Moves every module of every scope off its initial value. */
static void perturb_modules(graft_peft_t *p, uint64_t stream) {
    graft_rng_t rng;
    graft_rng_seed(&rng, SEED, stream);
    perturb_scope(p->shared, &rng, 0.1f);
    for (int t = 0; t < p->n_tasks; t++) perturb_scope(p->tasks[t].scope, &rng, 0.1f);
}

/* The tiny trunk with the modules of `methods` (channels chosen for both
 * tasks) moved off their initial values from stream; the trunk is
 * p->trunk, destroyed by the caller after p. */
static graft_peft_t *moved_modules(int methods, uint64_t stream) {
    graft_peft_config_t cfg = peft_config(methods);
    graft_peft_t *p = graft_peft_new(tiny_trunk(), &cfg, TASKS, 2);
    if (methods & GRAFT_M_CHANNELS) {
        choose_channels(p, TASK_CLS);
        choose_channels(p, TASK_GEN);
    }
    perturb_modules(p, stream);
    return p;
}

/* The generation task's lnf (NB, NT, C) over tokens, copied (caller frees). */
static float *lm_lnf(graft_peft_t *p, const int32_t *tokens) {
    graft_peft_lm(p, TASK_GEN, tokens, NULL, NB, NT, 0);
    size_t n = (size_t)NB * NT * p->trunk->cfg.C * sizeof(float);
    float *copy = malloc(n);
    memcpy(copy, p->trunk->acts.lnf, n);
    return copy;
}

static float run_loss(graft_peft_t *p, int task, const batch_t *bt, int backward) {
    if (task == TASK_CLS)
        return graft_peft_classify(p, task, bt->tokens, bt->pos, bt->labels, NB, NT, backward);
    return graft_peft_lm(p, task, bt->tokens, bt->targets, NB, NT, backward);
}

static size_t count_unequal(const float *a, const float *b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(a[i] == b[i]);
    return bad;
}

static double rel_max_diff(const float *got, const float *ref, size_t n) {
    double d = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= d)) d = e;
        if (fabs(ref[i]) > r) r = fabs(ref[i]);
    }
    return d / (r + 1e-12);
}

/* ---- identity at initial values -------------------------------------------- */

typedef struct {
    const char *name;
    int methods;
} method_case_t;

static const method_case_t IDENTITY_CASES[] = {
    {"head", 0},
    {"lora", GRAFT_M_LORA},
    {"adapter", GRAFT_M_ADAPTER},
    {"red", GRAFT_M_RED},
    {"lntune", GRAFT_M_LNTUNE},
    {"channels", GRAFT_M_CHANNELS},
    {"all", GRAFT_M_LORA | GRAFT_M_ADAPTER | GRAFT_M_RED | GRAFT_M_LNTUNE | GRAFT_M_CHANNELS},
};

static void test_identity_at_init(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 1);
    graft_gpt2_t *ref = tiny_trunk();
    float ref_loss = graft_gpt2_forward(ref, bt.tokens, bt.targets, NB, NT);
    int V = ref->cfg.V, C = ref->cfg.C;
    /* the LM head's rows: the positions with a target (the same in every run) */
    size_t n_logits = (size_t)ref->lm_rows * V, n_lnf = (size_t)NB * NT * C;
    float *ref_logits = malloc(n_logits * sizeof(float));
    memcpy(ref_logits, ref->acts.logits, n_logits * sizeof(float));
    float *ref_lnf = malloc(n_lnf * sizeof(float));
    memcpy(ref_lnf, ref->acts.lnf, n_lnf * sizeof(float));

    for (size_t i = 0; i < sizeof IDENTITY_CASES / sizeof IDENTITY_CASES[0]; i++) {
        const method_case_t *mc = &IDENTITY_CASES[i];
        graft_gpt2_t *m = tiny_trunk();
        assert_int_equal(memcmp(m->params_memory, ref->params_memory, m->num_params * 4), 0);
        graft_peft_config_t cfg = peft_config(mc->methods);
        graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
        if (mc->methods & GRAFT_M_CHANNELS) {
            choose_channels(p, TASK_CLS);
            choose_channels(p, TASK_GEN);
        }
        /* generation path: lnf, logits and the loss */
        float loss = run_loss(p, TASK_GEN, &bt, 0);
        size_t bad_logits = count_unequal(m->acts.logits, ref_logits, n_logits);
        size_t bad_lnf = count_unequal(m->acts.lnf, ref_lnf, n_lnf);
        /* classification path: lnf (the head reads it) */
        run_loss(p, TASK_CLS, &bt, 0);
        size_t bad_cls_lnf = count_unequal(m->acts.lnf, ref_lnf, n_lnf);
        printf("  identity %-9s lm loss %.7f (trunk %.7f), unequal: logits %zu lnf %zu "
               "cls lnf %zu\n",
               mc->name, loss, ref_loss, bad_logits, bad_lnf, bad_cls_lnf);
        assert_true(loss == ref_loss);
        assert_int_equal(bad_logits, 0);
        assert_int_equal(bad_lnf, 0);
        assert_int_equal(bad_cls_lnf, 0);

        /* The comparison can fail: off their initial values the modules
         * (other than the head, which is above lnf) change the outputs. */
        if (mc->methods) {
            perturb_modules(p, 2);
            run_loss(p, TASK_GEN, &bt, 0);
            assert_true(count_unequal(m->acts.lnf, ref_lnf, n_lnf) > n_lnf / 2);
        }
        graft_peft_destroy(&p);
        assert_null(m->peft);
        graft_gpt2_destroy(&m);
    }
    free(ref_logits);
    free(ref_lnf);
    graft_gpt2_destroy(&ref);
}

/* ---- finite differences ------------------------------------------------------ */

typedef struct {
    double worst_abs, worst_excess, max_grad;
    int checked, failures;
} fd_stats_t;

/* The loss of run_loss (no backward), its final mean taken again in double
 * from the per-row losses: the fp32 mean of ~50 losses near 5.6 is
 * quantised to ~5e-7, which at eps 1e-3 alone would be 2.4e-4 of noise in
 * a numeric gradient; the double mean averages the rows' rounding instead. */
static double fd_loss(graft_peft_t *p, int task, const batch_t *bt) {
    run_loss(p, task, bt, 0);
    double sum = 0.0;
    int count = 0;
    if (task == TASK_CLS) {
        for (int b = 0; b < NB; b++) sum += p->head_losses[b];
        count = NB;
    } else {
        for (int i = 0; i < NB * NT; i++)
            if (bt->targets[i] >= 0) {
                sum += p->trunk->acts.losses[i];
                count++;
            }
    }
    return sum / count;
}

/* Central differences for a sample of each tensor of scope s, against the
 * analytic gradient `ana` (a copy of s->grads). */
static void fd_scope(graft_peft_t *p, int task, const batch_t *bt, graft_scope_t *s,
                     const float *ana, float eps, double atol, graft_rng_t *rng,
                     fd_stats_t *all) {
    for (int ti = 0; ti < s->n_tensors; ti++) {
        const graft_scope_tensor_t *t = &s->tensors[ti];
        if (t->stat) continue; /* channel scores: a statistic, no gradient */
        const float *g = ana + t->offset;
        size_t top = 0;
        for (size_t j = 1; j < t->numel; j++)
            if (fabsf(g[j]) > fabsf(g[top])) top = j;
        fd_stats_t st = {0};
        st.max_grad = fabsf(g[top]);
        for (int k = 0; k < FD_PER_TENSOR; k++) {
            size_t j = k == 0 ? top : graft_rng_below(rng, (uint32_t)t->numel);
            float *x = s->params + t->offset + j, x0 = *x;
            *x = x0 + eps;
            double lp = fd_loss(p, task, bt);
            *x = x0 - eps;
            double lm = fd_loss(p, task, bt);
            *x = x0;
            double num = (lp - lm) / (2.0 * eps), a = g[j];
            double err = fabs(num - a);
            double allowed = FD_RTOL * fmax(fabs(num), fabs(a)) + atol;
            if (err > st.worst_abs) st.worst_abs = err;
            if (err / allowed > st.worst_excess) st.worst_excess = err / allowed;
            st.checked++;
            if (!(err <= allowed)) {
                printf("    MISMATCH %s.%s[%zu]: numeric %.6e analytic %.6e\n", s->name,
                       t->name, j, num, a);
                st.failures++;
            }
        }
        printf("    %-3s %-8s %-26s max|g| %.2e worst |err| %.2e (%.2f of allowed)\n",
               task == TASK_CLS ? "cls" : "gen", s->name, t->name, st.max_grad, st.worst_abs,
               st.worst_excess);
        if (!(st.max_grad >= FD_MIN_GRAD * atol)) {
            printf("    TRIVIAL %s.%s: largest gradient %.3e\n", s->name, t->name, st.max_grad);
            st.failures++;
        }
        all->checked += st.checked;
        all->failures += st.failures;
        all->worst_excess = fmax(all->worst_excess, st.worst_excess);
    }
}

/* Returns the number of tensors checked. */
static int fd_task(graft_peft_t *p, int task, const batch_t *bt, float eps, double atol,
                   fd_stats_t *all) {
    graft_peft_zero_grad(p, task);
    run_loss(p, task, bt, 1);
    graft_scope_t *scopes[2];
    int n = graft_peft_scopes(p, task, scopes), tensors = 0;
    graft_rng_t rng;
    graft_rng_seed(&rng, SEED, 100 + (uint64_t)task);
    for (int i = 0; i < n; i++) {
        float *ana = malloc(scopes[i]->numel * sizeof(float));
        memcpy(ana, scopes[i]->grads, scopes[i]->numel * sizeof(float));
        fd_scope(p, task, bt, scopes[i], ana, eps, atol, &rng, all);
        for (int ti = 0; ti < scopes[i]->n_tensors; ti++) tensors += !scopes[i]->tensors[ti].stat;
        free(ana);
    }
    return tensors;
}

/* One module at a time (with the head on the classification task), so that
 * only the adapter's case has a ReLU. A ReLU input within eps of 0 turns a
 * central difference into nonsense (the slope jumps inside the interval):
 * with all modules together at eps 1e-2, 9 of 588 samples upstream of an
 * adapter failed that way, while PyTorch agreed with the same gradients to
 * 1e-6. The adapter's case therefore uses FD_EPS_RELU, where a crossing is
 * ten times rarer, and FD_ATOL_RELU for the larger noise. */
#define FD_EPS_RELU 1e-3f

typedef struct {
    const char *name;
    int methods;
    int tensors; /* tensors checked over both tasks: shared + each task's own */
    float eps;
    double atol;
    graft_pool_t pool; /* the classification head's pooling (0: last) */
} fd_case_t;

static const fd_case_t FD_CASES[] = {
    /* shared: L x 4 projections x (A, B) = 16; per task the same again;
     * the classification task also has the head (2). */
    {"lora", GRAFT_M_LORA, 2 * 16 + 16 + 2 + 16, FD_EPS, FD_ATOL, GRAFT_POOL_LAST},
    {"adapter", GRAFT_M_ADAPTER, 6 + 2 + 6, FD_EPS_RELU, FD_ATOL_RELU, GRAFT_POOL_LAST},
    {"red", GRAFT_M_RED, 2 + 2 + 2, FD_EPS, FD_ATOL, GRAFT_POOL_LAST},
    {"lntune", GRAFT_M_LNTUNE, 6 + 2 + 6, FD_EPS, FD_ATOL, GRAFT_POOL_LAST},
    {"channels", GRAFT_M_CHANNELS, 2 + 2 + 2, FD_EPS, FD_ATOL, GRAFT_POOL_LAST},
    /* the classification loss reaches every position of the text */
    {"red, mean pool", GRAFT_M_RED, 2 + 2 + 2, FD_EPS, FD_ATOL, GRAFT_POOL_MEAN},
};

static void test_finite_differences(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 3);
    for (size_t i = 0; i < sizeof FD_CASES / sizeof FD_CASES[0]; i++) {
        const fd_case_t *fc = &FD_CASES[i];
        graft_gpt2_t *m = tiny_trunk();
        graft_peft_config_t cfg = peft_config(fc->methods);
        cfg.pool = fc->pool;
        graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
        if (fc->methods & GRAFT_M_CHANNELS) {
            choose_channels(p, TASK_CLS);
            choose_channels(p, TASK_GEN);
        }
        perturb_modules(p, 4);
        fd_stats_t all = {0};
        printf("  fd %s (eps %.0e, atol %.0e)\n", fc->name, (double)fc->eps, fc->atol);
        int tensors = fd_task(p, TASK_CLS, &bt, fc->eps, fc->atol, &all);
        tensors += fd_task(p, TASK_GEN, &bt, fc->eps, fc->atol, &all);
        printf("  fd %s: %d tensors, %d elements, worst %.2f of allowed, %d failures\n",
               fc->name, tensors, all.checked, all.worst_excess, all.failures);
        assert_int_equal(tensors, fc->tensors);
        assert_int_equal(all.failures, 0);
        assert_null(m->grads_memory);
        graft_peft_destroy(&p);
        graft_gpt2_destroy(&m);
    }
}

/* ---- LoRA merge ---------------------------------------------------------------- */

/* LoRA on the given projections: the pass's merged weights (only the
 * targets' are held: merged_c2 C^2 floats per layer) give the outputs of
 * the trunk with the pairs merged into its own weights. */
static void lora_merge_case(int targets, size_t merged_c2) {
    batch_t bt;
    make_batch(&bt, 5);
    graft_gpt2_t *m = tiny_trunk();
    graft_peft_config_t cfg = peft_config(GRAFT_M_LORA);
    cfg.lora_targets = targets;
    graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
    perturb_modules(p, 6); /* B != 0, or merging would do nothing */
    int V = m->cfg.V, C = m->cfg.C;
    size_t n_lnf = (size_t)NB * NT * C, np = m->num_params;
    float *w0 = malloc(np * sizeof(float));
    memcpy(w0, m->params_memory, np * sizeof(float));

    for (int task = 0; task < 2; task++) {
        /* outputs of the LoRA model for this task (the LM head on lnf) */
        graft_peft_lm(p, task, bt.tokens, bt.targets, NB, NT, 0);
        size_t n_logits = (size_t)m->lm_rows * V; /* the rows with a target */
        float *lora_logits = malloc(n_logits * sizeof(float));
        float *lora_lnf = malloc(n_lnf * sizeof(float));
        memcpy(lora_logits, m->acts.logits, n_logits * sizeof(float));
        memcpy(lora_lnf, m->acts.lnf, n_lnf * sizeof(float));

        graft_peft_merge_lora(p, task, +1);
        double moved = 0.0;
        for (size_t i = 0; i < np; i++) moved = fmax(moved, fabs((double)m->params_memory[i] - w0[i]));
        /* the merged weights, plain trunk (no hooks) */
        m->peft = NULL;
        graft_gpt2_forward(m, bt.tokens, bt.targets, NB, NT);
        double e_logits = rel_max_diff(m->acts.logits, lora_logits, n_logits);
        double e_lnf = rel_max_diff(m->acts.lnf, lora_lnf, n_lnf);
        m->peft = p;

        graft_peft_merge_lora(p, task, -1);
        double back = 0.0;
        size_t changed = 0;
        for (size_t i = 0; i < np; i++) {
            back = fmax(back, fabs((double)m->params_memory[i] - w0[i]));
            changed += m->params_memory[i] != w0[i];
        }
        printf("  merge task %s: weights moved by up to %.3e; merged vs LoRA outputs: logits "
               "%.2e lnf %.2e; after unmerge max|W - W0| %.3e (%zu of %zu not bit-exact)\n",
               p->tasks[task].name, moved, e_logits, e_lnf, back, changed, np);
        assert_true(moved > 1e-2);
        assert_true(e_logits <= MERGED_OUT_TOL);
        assert_true(e_lnf <= MERGED_OUT_TOL);
        assert_true(back <= MERGE_TOL);
        /* restore exactly before the next task, so errors do not add up */
        memcpy(m->params_memory, w0, np * sizeof(float));
        free(lora_logits);
        free(lora_lnf);
    }
    assert_int_equal(p->merged_n, merged_c2 * m->cfg.L * C * C);
    free(w0);
    graft_peft_destroy(&p);
    graft_gpt2_destroy(&m);
}

static void test_lora_merge(void **state) {
    (void)state;
    lora_merge_case((1 << GRAFT_NUM_PROJ) - 1, 12);
    /* apart in the trunk's order, so that each one's place counts */
    lora_merge_case(1 << GRAFT_PROJ_ATTN | 1 << GRAFT_PROJ_FCPROJ, 5);
    lora_merge_case(1 << GRAFT_PROJ_FC, 4);
}

/* ---- folding the modules into the trunk ------------------------------------- */

/* graft_peft_fold: for each module that folds (off its initial values) and
 * for all of them together, the plain trunk after folding gives the lnf of
 * the trunk with the modules within FOLD_TOL (the same function summed in
 * another order: measured ~1e-6); the adapter is refused and leaves the
 * trunk as it was. A fold that missed a module, scaled RED's bias or put a
 * channel delta in the wrong column is off by 1e-2 and more. */
#define FOLD_TOL 1e-5

static void test_fold(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 11);
    const int methods[] = {GRAFT_M_LORA, GRAFT_M_RED, GRAFT_M_LNTUNE, GRAFT_M_CHANNELS,
                           GRAFT_M_LORA | GRAFT_M_RED | GRAFT_M_LNTUNE | GRAFT_M_CHANNELS};
    const char *names[] = {"lora", "red", "lntune", "channels", "all four"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        graft_peft_t *p = moved_modules(methods[i], 4);
        graft_gpt2_t *m = p->trunk;
        size_t n_lnf = (size_t)NB * NT * m->cfg.C;
        float *ref = lm_lnf(p, bt.tokens);
        assert_int_equal(graft_peft_fold(p, TASK_GEN), GRAFT_OK);
        graft_peft_destroy(&p);
        graft_gpt2_forward(m, bt.tokens, NULL, NB, NT);
        double d = rel_max_diff(m->acts.lnf, ref, n_lnf);
        printf("  fold %-9s relative difference %.2e\n", names[i], d);
        assert_true(d < FOLD_TOL);
        free(ref);
        graft_gpt2_destroy(&m);
    }
    /* the adapter is refused, the trunk untouched */
    graft_peft_t *p = moved_modules(GRAFT_M_ADAPTER | GRAFT_M_LORA, 5);
    graft_gpt2_t *m = p->trunk, *ref = tiny_trunk();
    graft_log_level = GRAFT_LOG_ERROR + 1;
    assert_int_equal(graft_peft_fold(p, TASK_GEN), GRAFT_EINVAL);
    graft_log_level = GRAFT_LOG_INFO;
    assert_memory_equal(m->params_memory, ref->params_memory, m->num_params * sizeof(float));
    graft_peft_destroy(&p);
    graft_gpt2_destroy(&m);
    graft_gpt2_destroy(&ref);
}

/* ---- incremental decoding ---------------------------------------------------- */

/* graft_gpt2_decode_step against the full forward pass, for each module
 * (off its initial values) and all together. The reference is the lnf of
 * one forward over the whole batch. The cache comes from a forward over
 * the same rows with every position from a row's prompt length on
 * replaced by other tokens; the decode steps then feed the real tokens one
 * position at a time, rows in a shuffled order, one row dropping out
 * halfway, and each step's output rows must match the reference at their
 * (row, position) within DECODE_TOL. A step that read a stale key (the
 * replaced tokens'), attended one position too far or skipped a module's
 * hook is off by 1e-2 and more. */
#define DECODE_TOL 1e-5

static void test_decode_step(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 9);
    for (size_t i = 0; i < sizeof IDENTITY_CASES / sizeof IDENTITY_CASES[0]; i++) {
        const method_case_t *mc = &IDENTITY_CASES[i];
        graft_peft_t *p = moved_modules(mc->methods, 3);
        graft_gpt2_t *m = p->trunk;
        int C = m->cfg.C;
        float *ref = lm_lnf(p, bt.tokens);

        /* prompts of different lengths; the rest of each row overwritten */
        int32_t start[NB], stale[NB * NT];
        memcpy(stale, bt.tokens, sizeof stale);
        for (int b = 0; b < NB; b++) {
            start[b] = 2 + 3 * b;
            for (int t = start[b]; t < NT; t++) stale[b * NT + t] = (stale[b * NT + t] + 77) % 256;
        }
        graft_peft_lm(p, TASK_GEN, stale, NULL, NB, NT, 0);
        double worst = 0.0;
        int steps = 0;
        for (int s = 0;; s++) {
            int32_t seq[NB], tok[NB], at[NB];
            int n = 0;
            for (int j = 0; j < NB; j++) {
                int b = (j * 3 + s) % NB; /* a different row order each step */
                int t = start[b] + s;
                if (t >= NT || (b == 1 && s >= NT / 4)) continue;
                seq[n] = b;
                tok[n] = bt.tokens[b * NT + t];
                at[n++] = t;
            }
            if (n == 0) break;
            const float *h = graft_gpt2_decode_step(m, seq, tok, at, n);
            for (int k = 0; k < n; k++) {
                double d = rel_max_diff(h + (size_t)k * C, ref + ((size_t)seq[k] * NT + at[k]) * C,
                                        (size_t)C);
                if (d > worst) worst = d;
            }
            steps++;
        }
        printf("  decode %-9s %d steps, worst relative difference %.2e\n", mc->name, steps,
               worst);
        assert_true(steps >= NT - start[NB - 1]);
        assert_true(worst < DECODE_TOL);
        free(ref);
        graft_peft_destroy(&p);
        graft_gpt2_destroy(&m);
    }
}

/* ---- frozen trunk ------------------------------------------------------------ */

static const method_case_t FROZEN_CASES[] = {
    {"head", 0},
    {"lora", GRAFT_M_LORA},
    {"adapter", GRAFT_M_ADAPTER},
    {"red", GRAFT_M_RED},
    {"lntune", GRAFT_M_LNTUNE},
    {"lntune,channels", GRAFT_M_LNTUNE | GRAFT_M_CHANNELS},
    {"full", GRAFT_M_FULL},
};

/* A few AdamW steps on both tasks, as the trainer takes them. */
static void train_steps(graft_peft_t *p, const batch_t *bt, int steps) {
    graft_adamw_config_t opt = graft_adamw_defaults();
    for (int s = 0; s < steps; s++) {
        int task = s % 2;
        graft_peft_zero_grad(p, task);
        run_loss(p, task, bt, 1);
        graft_scope_t *scopes[2];
        int n = graft_peft_scopes(p, task, scopes);
        for (int i = 0; i < n; i++) graft_scope_step(scopes[i], &opt, 1e-2f, 1.0f);
    }
}

/* --head_lr: the heads step at head_lr_scale times the modules' rate, the
 * modules as before. Adam's first step moves a parameter by about
 * lr * sign(g), so from the same start and batch every head value moves 10
 * times as far with scale 10 (up to fp32 rounding), and every RED value
 * moves the same. */
static void test_head_lr_scale(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 11);
    float *moved[2];
    size_t n = 0, head_lo = 0, head_hi = 0; /* the head's span [lo, hi) of the task scope */
    for (int run = 0; run < 2; run++) {
        graft_gpt2_t *m = tiny_trunk();
        graft_peft_config_t cfg = peft_config(GRAFT_M_RED);
        cfg.head_lr_scale = run ? 10.0f : 0.0f; /* 0: 1 */
        graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
        const graft_peft_task_modules_t *tm = &p->tasks[TASK_CLS];
        graft_scope_t *s = tm->scope;
        const graft_scope_tensor_t *hw = &s->tensors[tm->head_w], *hb = &s->tensors[tm->head_b];
        assert_true(hw->lr_scale == (run ? 10.0f : 1.0f));
        assert_true(s->tensors[tm->red_s].lr_scale == 1.0f);
        assert_int_equal(hb->offset, hw->offset + hw->numel); /* weight then bias */
        n = s->numel;
        head_lo = hw->offset;
        head_hi = hb->offset + hb->numel;
        moved[run] = malloc(n * sizeof(float));
        memcpy(moved[run], s->params, n * sizeof(float));
        graft_adamw_config_t opt = graft_adamw_defaults();
        graft_peft_zero_grad(p, TASK_CLS);
        run_loss(p, TASK_CLS, &bt, 1);
        graft_scope_step(s, &opt, 1e-3f, 1.0f);
        for (size_t i = 0; i < n; i++) moved[run][i] = s->params[i] - moved[run][i];
        graft_peft_destroy(&p);
        graft_gpt2_destroy(&m);
    }
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        double want = i >= head_lo && i < head_hi ? 10.0 : 1.0;
        if (moved[0][i] == 0.0f) { /* no gradient: no move either way */
            assert_true(moved[1][i] == 0.0f);
            continue;
        }
        nonzero++;
        double ratio = (double)moved[1][i] / moved[0][i];
        if (fabs(ratio - want) > 1e-3 * want)
            fail_msg("value %zu moved %g then %g: ratio %g, expected %g", i, moved[0][i],
                     moved[1][i], ratio, want);
    }
    assert_true(nonzero > (head_hi - head_lo)); /* the head and RED both moved */
    free(moved[0]);
    free(moved[1]);
}

/* A logit offset: the training loss and the head bias's gradient are those
 * of softmax cross-entropy on logits + offset (by hand from the raw logits),
 * and evaluation (backward 0) ignores it. */
static void test_logit_offset(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 5);
    graft_gpt2_t *m = tiny_trunk();
    graft_peft_config_t cfg = peft_config(GRAFT_M_RED);
    graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
    const graft_peft_task_modules_t *tm = &p->tasks[TASK_CLS];
    float raw[NB * K];
    float plain = run_loss(p, TASK_CLS, &bt, 0);
    memcpy(raw, p->head_logits, sizeof raw);

    float offset[K];
    for (int k = 0; k < K; k++) offset[k] = k == 1 ? -6.0f : 0.5f * (float)k;
    graft_peft_set_logit_offset(p, TASK_CLS, offset);
    assert_true(run_loss(p, TASK_CLS, &bt, 0) == plain); /* evaluation: no offset */
    graft_peft_zero_grad(p, TASK_CLS);
    float adjusted = run_loss(p, TASK_CLS, &bt, 1);

    double want = 0.0, dbias[K] = {0};
    for (int i = 0; i < NB; i++) {
        double z[K], mx = -1e30, sum = 0.0;
        for (int k = 0; k < K; k++) {
            z[k] = (double)raw[i * K + k] + offset[k];
            if (z[k] > mx) mx = z[k];
        }
        for (int k = 0; k < K; k++) sum += exp(z[k] - mx);
        want += (mx + log(sum) - z[bt.labels[i]]) / NB;
        for (int k = 0; k < K; k++)
            dbias[k] += (exp(z[k] - mx) / sum - (k == bt.labels[i])) / NB;
    }
    assert_true(fabs(adjusted - want) < 1e-5 * fabs(want));
    assert_true(fabs(adjusted - plain) > 1e-3); /* the offset matters */
    const float *gb = graft_scope_grad(tm->scope, tm->head_b);
    for (int k = 0; k < K; k++) assert_true(fabs(gb[k] - dbias[k]) < 1e-5);

    graft_peft_set_logit_offset(p, TASK_CLS, NULL); /* removed: training is plain again */
    graft_peft_zero_grad(p, TASK_CLS);
    assert_true(run_loss(p, TASK_CLS, &bt, 1) == plain);
    graft_peft_destroy(&p);
    graft_gpt2_destroy(&m);
}

static void test_frozen_trunk(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 7);
    for (size_t i = 0; i < sizeof FROZEN_CASES / sizeof FROZEN_CASES[0]; i++) {
        const method_case_t *mc = &FROZEN_CASES[i];
        int full = mc->methods == GRAFT_M_FULL;
        graft_gpt2_t *m = tiny_trunk();
        graft_peft_config_t cfg = peft_config(mc->methods);
        graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
        if (mc->methods & GRAFT_M_CHANNELS) choose_channels(p, TASK_CLS);
        size_t np = m->num_params;
        float *w0 = malloc(np * sizeof(float));
        memcpy(w0, m->params_memory, np * sizeof(float));
        float *task0 = malloc(p->tasks[TASK_CLS].scope->numel * sizeof(float));
        memcpy(task0, p->tasks[TASK_CLS].scope->params,
               p->tasks[TASK_CLS].scope->numel * sizeof(float));
        train_steps(p, &bt, 6);
        size_t trunk_changed = count_unequal(m->params_memory, w0, np);
        size_t module_changed = count_unequal(p->tasks[TASK_CLS].scope->params, task0,
                                              p->tasks[TASK_CLS].scope->numel);
        printf("  frozen %-16s trunk grads %s, trunk values changed %zu of %zu, cls-scope "
               "values changed %zu of %zu\n",
               mc->name, m->grads_memory ? "allocated" : "none", trunk_changed, np,
               module_changed, p->tasks[TASK_CLS].scope->numel);
        if (full) {
            assert_non_null(m->grads_memory);
            assert_true(trunk_changed > np / 2);
        } else {
            assert_null(m->grads_memory);
            assert_int_equal(trunk_changed, 0);
            assert_true(module_changed > p->tasks[TASK_CLS].scope->numel / 2);
        }
        free(w0);
        free(task0);
        graft_peft_destroy(&p);
        graft_gpt2_destroy(&m);
    }
}

/* ---- where the backward pass stops -------------------------------------------- */

/* With only modules training, the backward pass stops at the lowest
 * gradient a module needs (peft_grad_floor). Each case checks the reported
 * floor; that layer 0's ln_1 output gradient is never computed (the
 * activation gradients are filled with NaN first and it stays NaN) while
 * layer 1's is; and that stopping changes no gradient: the same modules
 * with lntune added (its LayerNorm copies start as the trunk's, so the
 * forward pass is the same, and it pulls the floor down to layer 0's ln_1)
 * give bit-identical gradients for every tensor they share. */
typedef struct {
    const char *name;
    int methods;
    int lora_targets;
    graft_grad_depth_t depth; /* expected at layer 0 */
} floor_case_t;

static const floor_case_t FLOOR_CASES[] = {
    {"lora qkv", GRAFT_M_LORA, 1 << GRAFT_PROJ_QKV, GRAFT_GRAD_QKV_OUT},
    {"lora attn", GRAFT_M_LORA, 1 << GRAFT_PROJ_ATTN, GRAFT_GRAD_ATTN_OUT},
    {"lora fc", GRAFT_M_LORA, 1 << GRAFT_PROJ_FC, GRAFT_GRAD_FC_OUT},
    {"lora fcproj", GRAFT_M_LORA, 1 << GRAFT_PROJ_FCPROJ, GRAFT_GRAD_MLP_OUT},
    {"red", GRAFT_M_RED, 0, GRAFT_GRAD_MLP_OUT},
    {"adapter", GRAFT_M_ADAPTER, 0, GRAFT_GRAD_BLOCK_OUT},
    {"channels", GRAFT_M_CHANNELS, 0, GRAFT_GRAD_MLP_OUT},
};

static graft_peft_t *floor_model(const floor_case_t *fc, int extra_methods) {
    graft_peft_config_t cfg = peft_config(fc->methods | extra_methods);
    if (fc->lora_targets) cfg.lora_targets = fc->lora_targets;
    graft_peft_t *p = graft_peft_new(tiny_trunk(), &cfg, TASKS, 2);
    if (fc->methods & GRAFT_M_CHANNELS) {
        choose_channels(p, TASK_CLS);
        choose_channels(p, TASK_GEN);
    }
    return p;
}

/* Copies every tensor of scope src into the same-named tensor of dst. */
static void copy_scope_values(graft_scope_t *dst, const graft_scope_t *src) {
    for (int i = 0; i < src->n_tensors; i++) {
        int j = graft_scope_find(dst, src->tensors[i].name);
        assert_true(j >= 0);
        memcpy(graft_scope_ptr(dst, j), graft_scope_ptr(src, i),
               src->tensors[i].numel * sizeof(float));
    }
}

static size_t count_nan(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += isnan(x[i]) != 0;
    return k;
}

static void test_backward_floor(void **state) {
    (void)state;
    batch_t bt;
    make_batch(&bt, 8);
    for (size_t i = 0; i < sizeof FLOOR_CASES / sizeof FLOOR_CASES[0]; i++) {
        const floor_case_t *fc = &FLOOR_CASES[i];
        graft_peft_t *p = floor_model(fc, 0), *q = floor_model(fc, GRAFT_M_LNTUNE);
        perturb_modules(p, 9);
        copy_scope_values(q->shared, p->shared);
        for (int t = 0; t < 2; t++) copy_scope_values(q->tasks[t].scope, p->tasks[t].scope);
        graft_gpt2_t *m = p->trunk;
        size_t slab_c = (size_t)NB * NT * m->cfg.C;
        for (int task = 0; task < 2; task++) {
            run_loss(p, task, &bt, 0); /* sizes the activations */
            for (size_t j = 0; j < m->num_acts; j++) m->grads_acts_memory[j] = NAN;
            int layer;
            graft_grad_depth_t depth;
            peft_grad_floor(m, &layer, &depth);
            graft_peft_zero_grad(p, task);
            run_loss(p, task, &bt, 1);
            size_t nan0 = count_nan(m->grads_acts.ln1, slab_c);
            size_t nan1 = count_nan(m->grads_acts.ln1 + (size_t)m->B * m->T * m->cfg.C, slab_c);

            graft_peft_zero_grad(q, task);
            run_loss(q, task, &bt, 1);
            int q_layer;
            graft_grad_depth_t q_depth;
            peft_grad_floor(q->trunk, &q_layer, &q_depth);
            graft_scope_t *scopes[2];
            int n = graft_peft_scopes(p, task, scopes);
            size_t differ = 0, compared = 0;
            for (int k = 0; k < n; k++) {
                graft_scope_t *qs = scopes[k] == p->shared ? q->shared : q->tasks[task].scope;
                for (int ti = 0; ti < scopes[k]->n_tensors; ti++) {
                    const graft_scope_tensor_t *t = &scopes[k]->tensors[ti];
                    const float *a = graft_scope_grad(scopes[k], ti);
                    const float *b = graft_scope_grad(qs, graft_scope_find(qs, t->name));
                    differ += count_unequal(a, b, t->numel);
                    compared += t->numel;
                }
            }
            printf("  floor %-11s %s: layer %d depth %d (with lntune %d/%d); layer-0 ln_1 "
                   "gradient NaN %zu of %zu, layer 1 %zu; %zu of %zu module gradients differ "
                   "from the deeper pass\n",
                   fc->name, task == TASK_CLS ? "cls" : "gen", layer, (int)depth, q_layer,
                   (int)q_depth, nan0, slab_c, nan1, differ, compared);
            assert_int_equal(layer, 0);
            assert_int_equal(depth, fc->depth);
            assert_int_equal(q_layer, 0);
            assert_int_equal(q_depth, GRAFT_GRAD_LN1_OUT);
            assert_int_equal(nan0, slab_c);
            assert_int_equal(nan1, 0);
            assert_true(compared > 0);
            assert_int_equal(differ, 0);
        }
        graft_gpt2_t *qm = q->trunk;
        graft_peft_destroy(&p);
        graft_peft_destroy(&q);
        graft_gpt2_destroy(&m);
        graft_gpt2_destroy(&qm);
    }
}

/* ---- PyTorch cross-check ------------------------------------------------------ */

static char g_dir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Writes the trunk, every scope, the channel indices, the batch and the
 * module config into DIR/NAME.safetensors. */
static void save_case(graft_peft_t *p, const batch_t *bt, const char *name) {
    graft_scope_t *scopes[3] = {p->shared, p->tasks[0].scope, p->tasks[1].scope};
    int total = 4 + p->n_tasks;
    for (int i = 0; i < 3; i++) total += scopes[i]->n_tensors;
    graft_st_tensor_t *ts = calloc((size_t)total, sizeof *ts);
    char *names = calloc((size_t)total, 2 * GRAFT_SCOPE_NAME);
    int n = 0;
    for (int i = 0; i < 3; i++)
        n += graft_scope_st_entries(scopes[i], ts + n, names + (size_t)n * 2 * GRAFT_SCOPE_NAME);
    int L = p->trunk->cfg.L, k = p->cfg.channels_k;
    float *idx[2] = {NULL, NULL};
    for (int t = 0; t < p->n_tasks; t++) {
        if (!p->tasks[t].channels) continue;
        idx[t] = malloc((size_t)L * k * sizeof(float));
        for (int j = 0; j < L * k; j++) idx[t][j] = (float)p->tasks[t].channels[j];
        char *nm = names + (size_t)n * 2 * GRAFT_SCOPE_NAME;
        snprintf(nm, 2 * GRAFT_SCOPE_NAME, "%s.channels.index", p->tasks[t].scope->name);
        ts[n++] = (graft_st_tensor_t){.name = nm, .ndim = 2, .shape = {L, k}, .data = idx[t]};
    }
    float tok[NB * NT], tgt[NB * NT], pos[NB], lab[NB];
    for (int i = 0; i < NB * NT; i++) {
        tok[i] = (float)bt->tokens[i];
        tgt[i] = (float)bt->targets[i];
    }
    for (int b = 0; b < NB; b++) {
        pos[b] = (float)bt->pos[b];
        lab[b] = (float)bt->labels[b];
    }
    ts[n++] = (graft_st_tensor_t){.name = "batch.tokens", .ndim = 2, .shape = {NB, NT}, .data = tok};
    ts[n++] = (graft_st_tensor_t){.name = "batch.targets", .ndim = 2, .shape = {NB, NT}, .data = tgt};
    ts[n++] = (graft_st_tensor_t){.name = "batch.pos", .ndim = 1, .shape = {NB}, .data = pos};
    ts[n++] = (graft_st_tensor_t){.name = "batch.labels", .ndim = 1, .shape = {NB}, .data = lab};

    const graft_peft_config_t *c = &p->cfg;
    char v[8][32];
    snprintf(v[0], 32, "%d", c->lora_shared_rank);
    snprintf(v[1], 32, "%.9g", c->lora_shared_alpha);
    snprintf(v[2], 32, "%d", c->lora_task_rank);
    snprintf(v[3], 32, "%.9g", c->lora_task_alpha);
    snprintf(v[4], 32, "%d", c->adapter_dim);
    snprintf(v[5], 32, "%d", c->channels_k);
    snprintf(v[6], 32, "cls:%d,gen:0", K);
    snprintf(v[7], 32, "%d", c->lora_targets);
    const char *keys[8] = {"peft.lora_shared_rank", "peft.lora_shared_alpha",
                           "peft.lora_task_rank",   "peft.lora_task_alpha",
                           "peft.adapter_dim",      "peft.channels_k",
                           "peft.tasks",            "peft.lora_targets"};
    const char *vals[8] = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/%s.safetensors", g_dir, name);
    assert_int_equal(graft_gpt2_save(p->trunk, path, ts, n, keys, vals, 8), GRAFT_OK);
    free(idx[0]);
    free(idx[1]);
    free(names);
    free(ts);
}

static int run_reference(const char *name) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/tests/pytorch/peft_crosscheck.py --in %s/%s.safetensors "
             "--out %s/%s.ref.safetensors",
             GRAFT_SOURCE_DIR, g_dir, name, g_dir, name);
    fflush(stdout);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "test_peft: reference failed (status %d): %s\n", rc, cmd);
        return -1;
    }
    return 0;
}

static double compare_ref(const graft_st_file_t *f, const char *name, const int64_t *shape,
                          int ndim, const float *got, size_t n, double *max_ref) {
    float *ref = malloc(n * sizeof(float));
    assert_non_null(ref);
    if (graft_st_read(f, name, shape, ndim, ref) != GRAFT_OK) fail_msg("no tensor %s", name);
    double r = 0.0;
    for (size_t i = 0; i < n; i++) r = fmax(r, fabs(ref[i]));
    *max_ref = r;
    double err = rel_max_diff(got, ref, n);
    free(ref);
    return err;
}

/* Forward and backward of one task against the reference; with scores,
 * also the Taylor channel scores of that backward. Returns mismatches. */
static int check_task(graft_peft_t *p, int task, const batch_t *bt, const graft_st_file_t *f,
                      int scores) {
    const char *tn = p->tasks[task].name;
    graft_peft_zero_grad(p, task);
    float loss = run_loss(p, task, bt, 1);
    char name[512];
    snprintf(name, sizeof name, "%s.loss", tn);
    float ref_loss;
    int64_t one = 1;
    assert_int_equal(graft_st_read(f, name, &one, 1, &ref_loss), GRAFT_OK);
    double e_loss = fabs((double)loss - ref_loss) / fabs(ref_loss);
    printf("  torch %-3s loss %.7f vs PyTorch %.7f, rel err %.2e\n", tn, loss, ref_loss, e_loss);
    int failures = !(e_loss <= TORCH_TOL);

    graft_scope_t *scopes[2];
    int ns = graft_peft_scopes(p, task, scopes);
    double worst = 0.0;
    for (int i = 0; i < ns; i++) {
        graft_scope_t *s = scopes[i];
        for (int ti = 0; ti < s->n_tensors; ti++) {
            const graft_scope_tensor_t *t = &s->tensors[ti];
            if (t->stat) continue; /* channel scores: a statistic, no gradient */
            snprintf(name, sizeof name, "%s.grad.%s.%s", tn, s->name, t->name);
            double max_ref;
            double err = compare_ref(f, name, t->shape, t->ndim, s->grads + t->offset, t->numel,
                                     &max_ref);
            worst = fmax(worst, err);
            /* every module gradient must be non-trivial and match */
            if (!(err <= TORCH_TOL) || !(max_ref > 1e-6)) {
                printf("    MISMATCH %s: err %.3e (max|ref| %.3e)\n", name, err, max_ref);
                failures++;
            }
        }
    }
    printf("  torch %-3s gradients: worst err %.3e over %d scopes\n", tn, worst, ns);

    if (scores) {
        graft_peft_task_modules_t *tm = &p->tasks[task];
        int L = p->trunk->cfg.L, C = p->trunk->cfg.C;
        memset(tm->channel_scores, 0, (size_t)L * C * sizeof(float));
        graft_peft_accumulate_channel_scores(p, task);
        /* a second accumulation of the same batch doubles them */
        float *once = malloc((size_t)L * C * sizeof(float));
        memcpy(once, tm->channel_scores, (size_t)L * C * sizeof(float));
        graft_peft_accumulate_channel_scores(p, task);
        for (int i = 0; i < L * C; i++) assert_true(tm->channel_scores[i] == 2.0f * once[i]);
        snprintf(name, sizeof name, "%s.scores", tn);
        int64_t shape[2] = {L, C};
        double max_ref;
        double err = compare_ref(f, name, shape, 2, once, (size_t)L * C, &max_ref);
        printf("  torch %-3s Taylor channel scores: err %.3e (max %.3e)\n", tn, err, max_ref);
        if (!(err <= TORCH_TOL) || !(max_ref > 0.0)) failures++;
        free(once);
    }
    return failures;
}

static void torch_case(const char *name, int methods, int scores) {
    batch_t bt;
    make_batch(&bt, 9);
    graft_gpt2_t *m = tiny_trunk();
    graft_peft_config_t cfg = peft_config(methods);
    graft_peft_t *p = graft_peft_new(m, &cfg, TASKS, 2);
    if (methods & GRAFT_M_CHANNELS) {
        choose_channels(p, TASK_CLS);
        choose_channels(p, TASK_GEN);
    }
    perturb_modules(p, 10);
    save_case(p, &bt, name);
    assert_int_equal(run_reference(name), 0);
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/%s.ref.safetensors", g_dir, name);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    printf("  torch case %s\n", name);
    int failures = check_task(p, TASK_CLS, &bt, f, scores);
    failures += check_task(p, TASK_GEN, &bt, f, scores);
    graft_st_close(&f);
    graft_peft_destroy(&p);
    graft_gpt2_destroy(&m);
    assert_int_equal(failures, 0);
}

/* Every module at once (their interactions: LoRA and channels on the same
 * projection, RED after both, the adapter after the block, lntune). */
static void test_torch_all(void **state) {
    (void)state;
    torch_case("all", GRAFT_M_LORA | GRAFT_M_ADAPTER | GRAFT_M_RED | GRAFT_M_LNTUNE |
                          GRAFT_M_CHANNELS, 1);
}

/* The two-stage method as trained: lntune + channels, Taylor scores. */
static void test_torch_lntune_channels(void **state) {
    (void)state;
    torch_case("lntune_channels", GRAFT_M_LNTUNE | GRAFT_M_CHANNELS, 1);
}

/* Each remaining module alone, so that a mistake cannot hide behind another
 * module's contribution. */
static void test_torch_each(void **state) {
    (void)state;
    torch_case("lora", GRAFT_M_LORA, 0);
    torch_case("adapter", GRAFT_M_ADAPTER, 0);
    torch_case("red", GRAFT_M_RED, 0);
    torch_case("head", 0, 0);
}

/* ---- channel scores in federated runs ------------------------------------------ */

/* The scores are the statistic task.X.channels.score: not a parameter (the
 * counts leave it out), travelling with the scope, so that a second process
 * that imports the scope chooses the same channels; choose keeps the deltas
 * it was sent, select restarts them; a checkpoint from before the
 * statistic existed reads as zero scores. */
static void test_channel_scores_travel(void **state) {
    (void)state;
    graft_gpt2_t *m = tiny_trunk();
    graft_peft_config_t cfg = peft_config(GRAFT_M_LNTUNE | GRAFT_M_CHANNELS);
    graft_peft_t *a = graft_peft_new(m, &cfg, TASKS, 2), *b = graft_peft_new(m, &cfg, TASKS, 2);
    int L = m->cfg.L, C = m->cfg.C, k = cfg.channels_k;
    graft_peft_task_modules_t *ta = &a->tasks[TASK_GEN], *tb = &b->tasks[TASK_GEN];
    graft_scope_t *s = ta->scope;
    const graft_scope_tensor_t *st = &s->tensors[ta->ch_score];
    assert_true(st->stat && st->frozen && st->numel == (size_t)L * C);
    assert_ptr_equal(ta->channel_scores, graft_scope_ptr(s, ta->ch_score));
    assert_int_equal(s->nparams, s->numel - (size_t)L * C);
    assert_int_equal(graft_peft_task_params(a, TASK_GEN), a->shared->nparams + s->nparams);

    choose_channels(a, TASK_GEN); /* scores with ties, a non-trivial choice */
    float *w = graft_scope_ptr(s, ta->ch_w);
    for (size_t j = 0; j < s->tensors[ta->ch_w].numel; j++) w[j] = 0.25f;
    graft_scope_import(tb->scope, s->params); /* what a worker receives */
    graft_peft_choose_channels(b, TASK_GEN);
    assert_memory_equal(tb->channels, ta->channels, (size_t)L * k * sizeof(int32_t));
    assert_true(graft_scope_ptr(tb->scope, tb->ch_w)[0] == 0.25f);
    graft_peft_select_channels(b, TASK_GEN);
    assert_memory_equal(tb->channels, ta->channels, (size_t)L * k * sizeof(int32_t));
    assert_true(graft_scope_ptr(tb->scope, tb->ch_w)[0] == 0.0f);

    /* An older checkpoint: every tensor of the scope but the scores. */
    graft_st_tensor_t *ts = calloc((size_t)s->n_tensors, sizeof *ts);
    char *names = calloc((size_t)s->n_tensors, 2 * GRAFT_SCOPE_NAME), path[128];
    int n = graft_scope_st_entries(s, ts, names);
    assert_int_equal(ta->ch_score, n - 1); /* statistics come last */
    snprintf(path, sizeof path, "%s/old_channels.safetensors", g_dir);
    assert_int_equal(graft_st_write(path, ts, n - 1, NULL, NULL, 0), GRAFT_OK);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_int_equal(graft_scope_st_read(tb->scope, f), GRAFT_OK);
    graft_st_close(&f);
    for (int i = 0; i < L * C; i++) assert_true(tb->channel_scores[i] == 0.0f);
    assert_true(graft_scope_ptr(tb->scope, tb->ch_w)[0] == 0.25f);
    free(ts);
    free(names);
    graft_peft_destroy(&b);
    graft_peft_destroy(&a);
    graft_gpt2_destroy(&m);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/graft_test_peft_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    if (g_dir[0] && !getenv("GRAFT_KEEP_TMP")) nftw(g_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_at_init),
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_lora_merge),
        cmocka_unit_test(test_decode_step),
        cmocka_unit_test(test_fold),
        cmocka_unit_test(test_frozen_trunk),
        cmocka_unit_test(test_channel_scores_travel),
        cmocka_unit_test(test_head_lr_scale),
        cmocka_unit_test(test_logit_offset),
        cmocka_unit_test(test_backward_floor),
        cmocka_unit_test(test_torch_all),
        cmocka_unit_test(test_torch_lntune_channels),
        cmocka_unit_test(test_torch_each),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
