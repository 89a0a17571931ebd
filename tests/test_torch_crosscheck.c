/* test_torch_crosscheck.c — graft's whole trunk against a PyTorch reference
 * (tests/pytorch/gpt2_ref.py, run by tests/pytorch/crosscheck.py with
 * Debian's /usr/bin/python3): logits, loss, the gradient of every parameter,
 * and the parameters after three AdamW steps with and without clipping.
 *
 * The `tiny` preset is built from a fixed seed and every parameter is
 * perturbed with noise (so biases and LayerNorm parameters are not 0 / 1 and
 * their paths are exercised). graft_gpt2_save writes the weights, with the
 * batch (B=4, T=tiny's T, random tokens, some targets -1 = ignored) as two
 * extra tensors, into a temporary directory; the script writes reference
 * values computed in float64 next to it.
 *
 * Metric, per tensor: err = max|graft - ref| / (max|ref| + 1e-6), i.e. the
 * worst absolute error in units of the tensor's scale. Per-element relative
 * error would be meaningless for entries that are zero up to rounding (the
 * gradient of the key bias is exactly 0 mathematically). For the optimiser,
 * the compared tensor is the update (params after the steps minus before):
 * comparing the parameters themselves would hide a wrong update behind the
 * parameter's much larger magnitude.
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
#include "rng.h"
#include "safetensors.h"

/* Logits, loss, gradients, per-step loss / gradient norm / clip scale:
 * fp32 against a float64 reference. Measured worst errors are < 1e-6 (see
 * the printed table); 1e-4 leaves room for other BLAS builds and thread
 * counts, while a GELU derivative off by 1% already shows as 3e-4 to 4e-3
 * and a dropped term (bias gradient, LayerNorm mean) as > 1e-1. */
#define TOL 1e-4
/* AdamW updates: 1e-3, looser on purpose. Adam divides each gradient by
 * its own running magnitude, so an element whose gradient is ~1e-6 of the
 * tensor's largest (there are some; the key bias's gradient is exactly 0 in
 * exact arithmetic) turns fp32 rounding of that gradient into an O(lr)
 * change of its update. This is fp32's floor, not graft's: PyTorch run in
 * float32 (crosscheck.py --dtype float32) differs from its own float64
 * updates by up to 1.6e-4 on this model (7e-4 with eps 1e-8), and graft by
 * 1.4e-4. Mistakes still stand out: dropping the weight decay of the
 * matrices moves their updates by 9e-3 to 3e-2; a wrong bias correction, a
 * misplaced eps or a missing clip already fail the per-step loss, norm and
 * clip-scale checks. */
#define TOL_UPDATE 1e-3 /* also used for the parameters themselves */
#define BATCH 4
#define SEED 1234
#define STEPS 3
#define PATH_LEN 512

/* One optimiser scenario; the same settings go to the script. */
typedef struct {
    const char *name;
    const char *ref_file;
    float lr, weight_decay, grad_clip, eps;
    int expect_clip; /* 1: the clip must trigger on every step, 0: never */
} scenario_t;

/* tiny's gradient norm on this batch is ~0.5-0.75 over the three steps
 * (printed by the script), so a clip of 0.25 triggers on every step and one
 * of 100 never does; both branches of graft_clip_scale are exercised and the
 * tests assert which one ran. lr 1e-2 (not 1e-3) keeps the updates well
 * above fp32 storage rounding of parameters near 1 (LayerNorm weights).
 * eps 1e-6 instead of the default 1e-8 keeps Adam's amplification of
 * rounding in near-zero gradients (up to lr * rounding / eps) small; eps
 * still matters there, so a lost or misplaced eps fails the test. */
static const scenario_t CLIPPED = {"clipped", "ref_clipped.safetensors", 1e-2f, 0.1f, 0.25f,
                                   1e-6f, 1};
static const scenario_t UNCLIPPED = {"unclipped", "ref_unclipped.safetensors", 1e-2f, 0.1f,
                                     100.0f, 1e-6f, 0};

typedef struct {
    char dir[64];
    graft_gpt2_t *model;
    graft_gpt2_tensor_t *named;
    int n_named;
    float *params0; /* the perturbed initial parameters */
    int32_t *inputs, *targets;
    int B, T;
} fixture_t;

/* ---- helpers -------------------------------------------------------------- */

static const char *path_in(const fixture_t *fx, const char *name, char *buf) {
    snprintf(buf, PATH_LEN, "%s/%s", fx->dir, name);
    return buf;
}

static float max_abs_diff(const float *a, const float *b, size_t n, float *max_ref) {
    float d = 0.0f, r = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float e = fabsf(a[i] - b[i]);
        if (!(e <= d)) d = e; /* NaN wins */
        if (fabsf(b[i]) > r) r = fabsf(b[i]);
    }
    *max_ref = r;
    return d;
}

static double tensor_err(const float *got, const float *ref, size_t n) {
    float max_ref;
    float d = max_abs_diff(got, ref, n, &max_ref);
    return d / ((double)max_ref + 1e-6);
}

/* Worst error per group (the tensor name without its "h.N." layer prefix). */
typedef struct {
    char group[64];
    double worst;
    char where[64];
} group_worst_t;

typedef struct {
    group_worst_t g[32];
    int n;
    int failures;
    double tol;
} report_t;

static void report_add(report_t *r, const char *name, double err) {
    const char *group = name;
    if (strncmp(name, "h.", 2) == 0) {
        const char *dot = strchr(name + 2, '.');
        if (dot) group = dot + 1;
    }
    int i = 0;
    while (i < r->n && strcmp(r->g[i].group, group) != 0) i++;
    if (i == r->n) {
        assert_true(r->n < (int)(sizeof r->g / sizeof r->g[0]));
        snprintf(r->g[r->n].group, sizeof r->g[0].group, "%s", group);
        r->g[r->n].worst = -1.0;
        r->n++;
    }
    if (!(err <= r->g[i].worst)) {
        r->g[i].worst = err;
        snprintf(r->g[i].where, sizeof r->g[i].where, "%s", name);
    }
    if (!(err <= r->tol)) {
        printf("  MISMATCH %-28s err %.3e > %.1e\n", name, err, r->tol);
        r->failures++;
    }
}

static void report_print(const report_t *r, const char *what) {
    for (int i = 0; i < r->n; i++)
        printf("  %-8s %-20s worst err %.3e (%s)\n", what, r->g[i].group, r->g[i].worst,
               r->g[i].where);
}

/* Compares got[0..n) with reference tensor `name` of the given shape. */
static double compare_tensor(const graft_st_file_t *f, const char *name, const int64_t *shape,
                             int ndim, const float *got, size_t n) {
    float *ref = malloc(n * sizeof(float));
    assert_non_null(ref);
    assert_int_equal(graft_st_read(f, name, shape, ndim, ref), GRAFT_OK);
    double err = tensor_err(got, ref, n);
    free(ref);
    return err;
}

static void read_vector(const graft_st_file_t *f, const char *name, int64_t n, float *dst) {
    assert_int_equal(graft_st_read(f, name, &n, 1, dst), GRAFT_OK);
}

/* Runs crosscheck.py for a scenario; 0 on success. */
static int run_reference(const fixture_t *fx, const scenario_t *s) {
    graft_adamw_config_t d = graft_adamw_defaults();
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/tests/pytorch/crosscheck.py --dir %s --out %s --steps %d "
             "--lr %.9g --weight_decay %.9g --grad_clip %.9g --beta1 %.9g --beta2 %.9g "
             "--eps %.9g",
             GRAFT_SOURCE_DIR, fx->dir, s->ref_file, STEPS, s->lr, s->weight_decay,
             s->grad_clip, d.beta1, d.beta2, s->eps);
    fflush(stdout); /* keep this program's lines before the script's */
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "test_torch_crosscheck: reference failed (status %d): %s\n", rc, cmd);
        return -1;
    }
    return 0;
}

static int open_reference(const fixture_t *fx, const scenario_t *s, graft_st_file_t **f) {
    char path[PATH_LEN];
    return graft_st_open(path_in(fx, s->ref_file, path), f);
}

/* ---- fixture ---------------------------------------------------------------- */

static void perturb(fixture_t *fx, graft_rng_t *rng) {
    /* Matrices get noise on the init's scale; vectors (biases, LayerNorm)
     * get enough that a dropped bias or a LayerNorm weight taken as 1 shows. */
    for (int i = 0; i < fx->n_named; i++) {
        const graft_gpt2_tensor_t *t = &fx->named[i];
        float std = t->decay ? 0.02f : 0.1f;
        float *p = fx->model->params_memory + t->offset;
        for (size_t j = 0; j < t->numel; j++) p[j] += std * graft_rng_normal(rng);
    }
}

static void make_batch(fixture_t *fx, graft_rng_t *rng) {
    size_t n = (size_t)fx->B * fx->T;
    int V = fx->model->cfg.V;
    fx->inputs = malloc(n * sizeof(int32_t));
    fx->targets = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) {
        fx->inputs[i] = (int32_t)graft_rng_below(rng, (uint32_t)V);
        /* about one target in five is ignored; always the first and last */
        int ignored = graft_rng_below(rng, 5) == 0 || i == 0 || i == n - 1;
        fx->targets[i] = ignored ? -1 : (int32_t)graft_rng_below(rng, (uint32_t)V);
    }
}

static int save_inputs(fixture_t *fx) {
    size_t n = (size_t)fx->B * fx->T;
    float *in = malloc(n * sizeof(float)), *tg = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        in[i] = (float)fx->inputs[i];
        tg[i] = (float)fx->targets[i];
    }
    graft_st_tensor_t extra[2] = {
        {.name = "batch.inputs", .ndim = 2, .shape = {fx->B, fx->T}, .data = in},
        {.name = "batch.targets", .ndim = 2, .shape = {fx->B, fx->T}, .data = tg},
    };
    char path[PATH_LEN];
    int rc = graft_gpt2_save(fx->model, path_in(fx, "model.safetensors", path), extra, 2, NULL,
                             NULL, 0);
    free(in);
    free(tg);
    return rc;
}

static int group_setup(void **state) {
    fixture_t *fx = calloc(1, sizeof *fx);
    *state = fx;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/graft_test_torch_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    graft_gpt2_config_t cfg;
    if (graft_gpt2_preset("tiny", &cfg) != GRAFT_OK) return -1;
    fx->model = graft_gpt2_new(&cfg, SEED);
    graft_gpt2_enable_grads(fx->model);
    fx->n_named = graft_gpt2_num_named(&cfg);
    fx->named = malloc((size_t)fx->n_named * sizeof *fx->named);
    graft_gpt2_named(fx->model, fx->named);
    fx->B = BATCH;
    fx->T = cfg.T;

    graft_rng_t rng;
    graft_rng_seed(&rng, SEED, 99);
    perturb(fx, &rng);
    make_batch(fx, &rng);
    fx->params0 = malloc(fx->model->num_params * sizeof(float));
    memcpy(fx->params0, fx->model->params_memory, fx->model->num_params * sizeof(float));
    if (save_inputs(fx) != GRAFT_OK) return -1;
    printf("crosscheck: tiny preset, %zu parameters, batch %dx%d, reference in %s\n",
           fx->model->num_params, fx->B, fx->T, fx->dir);
    if (run_reference(fx, &CLIPPED) || run_reference(fx, &UNCLIPPED)) return -1;
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_teardown(void **state) {
    fixture_t *fx = *state;
    if (!fx) return 0;
    /* GRAFT_KEEP_TMP=1 keeps the files to rerun the script by hand. */
    if (fx->dir[0] && !getenv("GRAFT_KEEP_TMP"))
        nftw(fx->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    graft_gpt2_destroy(&fx->model);
    free(fx->named);
    free(fx->params0);
    free(fx->inputs);
    free(fx->targets);
    free(fx);
    return 0;
}

/* Restores the initial parameters so that every test starts from them. */
static void reset_params(fixture_t *fx) {
    memcpy(fx->model->params_memory, fx->params0, fx->model->num_params * sizeof(float));
}

/* ---- tests -------------------------------------------------------------------- */

static void test_logits_and_loss(void **state) {
    fixture_t *fx = *state;
    reset_params(fx);
    graft_st_file_t *f = NULL;
    assert_int_equal(open_reference(fx, &CLIPPED, &f), GRAFT_OK);
    graft_gpt2_t *m = fx->model;
    float loss = graft_gpt2_forward(m, fx->inputs, fx->targets, fx->B, fx->T);

    int64_t shape[3] = {fx->B, fx->T, m->cfg.V};
    float *ref = malloc((size_t)fx->B * fx->T * m->cfg.V * sizeof(float));
    assert_int_equal(graft_st_read(f, "logits", shape, 3, ref), GRAFT_OK);
    /* graft's LM head runs on the positions with a target only: its rows of
     * PyTorch's logits, gathered in order */
    size_t V = (size_t)m->cfg.V;
    float *ref_rows = malloc((size_t)m->lm_rows * V * sizeof(float));
    for (int k = 0; k < m->lm_rows; k++)
        memcpy(ref_rows + k * V, ref + (size_t)m->lm_pos[k] * V, V * sizeof(float));
    double err_logits = tensor_err(m->acts.logits, ref_rows, (size_t)m->lm_rows * V);
    free(ref_rows);
    free(ref);
    float ref_loss;
    read_vector(f, "loss", 1, &ref_loss);
    double err_loss = fabs((double)loss - ref_loss) / fabs(ref_loss);
    printf("  logits   worst err %.3e\n  loss     %.7f vs PyTorch %.7f, rel err %.3e\n",
           err_logits, loss, ref_loss, err_loss);
    assert_true(err_logits <= TOL);
    assert_true(err_loss <= TOL);
    /* The ignored targets must not count: a loss over all positions differs. */
    int counted = 0;
    for (int i = 0; i < fx->B * fx->T; i++) counted += fx->targets[i] >= 0;
    assert_int_equal(m->loss_count, counted);
    assert_int_equal(m->lm_rows, counted);
    assert_true(counted < fx->B * fx->T);
    graft_st_close(&f);
}

static void test_gradients(void **state) {
    fixture_t *fx = *state;
    reset_params(fx);
    graft_st_file_t *f = NULL;
    assert_int_equal(open_reference(fx, &CLIPPED, &f), GRAFT_OK);
    graft_gpt2_t *m = fx->model;
    graft_gpt2_forward(m, fx->inputs, fx->targets, fx->B, fx->T);
    graft_gpt2_zero_grad(m);
    graft_gpt2_backward(m);

    report_t r = {.tol = TOL};
    char name[96];
    for (int i = 0; i < fx->n_named; i++) {
        const graft_gpt2_tensor_t *t = &fx->named[i];
        snprintf(name, sizeof name, "grad.%s", t->name);
        double err = compare_tensor(f, name, t->shape, t->ndim, m->grads_memory + t->offset,
                                    t->numel);
        report_add(&r, t->name, err);
    }
    report_print(&r, "grad");
    assert_int_equal(r.n, 16);
    assert_int_equal(r.failures, 0);
    graft_st_close(&f);
}

/* STEPS AdamW steps on the batch, as common/pretrain.c's train_step does
 * them (one update per named tensor, decay on matrices only, constant lr),
 * checking each step's loss, gradient norm and clip scale on the way. */
static void check_adamw(fixture_t *fx, const scenario_t *s) {
    reset_params(fx);
    graft_st_file_t *f = NULL;
    assert_int_equal(open_reference(fx, s, &f), GRAFT_OK);
    graft_gpt2_t *m = fx->model;
    size_t n = m->num_params;
    graft_adamw_config_t opt = graft_adamw_defaults();
    opt.lr = s->lr;
    opt.weight_decay = s->weight_decay;
    opt.grad_clip = s->grad_clip;
    opt.eps = s->eps;
    float *state = calloc(2 * n, sizeof(float));
    float ref_loss[STEPS], ref_norm[STEPS], ref_scale[STEPS];
    read_vector(f, "step.loss", STEPS, ref_loss);
    read_vector(f, "step.grad_norm", STEPS, ref_norm);
    read_vector(f, "step.clip_scale", STEPS, ref_scale);

    for (int step = 0; step < STEPS; step++) {
        float loss = graft_gpt2_forward(m, fx->inputs, fx->targets, fx->B, fx->T);
        graft_gpt2_zero_grad(m);
        graft_gpt2_backward(m);
        double sumsq = 0.0;
        graft_grad_sumsq(m->grads_memory, n, &sumsq);
        float scale = graft_clip_scale(&opt, sumsq);
        for (int i = 0; i < fx->n_named; i++) {
            const graft_gpt2_tensor_t *t = &fx->named[i];
            graft_adamw_update(&opt, m->params_memory + t->offset, m->grads_memory + t->offset,
                               state + t->offset, state + n + t->offset, t->numel, opt.lr,
                               step + 1, scale, t->decay);
        }
        double norm = sqrt(sumsq);
        printf("  %-9s step %d: loss %.6f (PyTorch %.6f) grad norm %.5f (%.5f) clip scale "
               "%.5f (%.5f)\n",
               s->name, step + 1, loss, ref_loss[step], norm, ref_norm[step], scale,
               ref_scale[step]);
        assert_true(fabs(loss - ref_loss[step]) <= TOL * fabs(ref_loss[step]));
        assert_true(fabs(norm - ref_norm[step]) <= TOL * ref_norm[step]);
        assert_true(fabs(scale - ref_scale[step]) <= TOL * ref_scale[step]);
        /* The scenario must exercise the branch it claims to. */
        assert_int_equal(scale < 1.0f, s->expect_clip);
        assert_int_equal(ref_scale[step] < 1.0f, s->expect_clip);
    }

    report_t r_upd = {.tol = TOL_UPDATE}, r_par = {.tol = TOL_UPDATE};
    char name[96];
    for (int i = 0; i < fx->n_named; i++) {
        const graft_gpt2_tensor_t *t = &fx->named[i];
        const float *p = m->params_memory + t->offset, *p0 = fx->params0 + t->offset;
        float *ref = malloc(t->numel * sizeof(float)), *delta = malloc(t->numel * sizeof(float));
        snprintf(name, sizeof name, "update.%s", t->name);
        assert_int_equal(graft_st_read(f, name, t->shape, t->ndim, ref), GRAFT_OK);
        for (size_t j = 0; j < t->numel; j++) delta[j] = p[j] - p0[j];
        report_add(&r_upd, t->name, tensor_err(delta, ref, t->numel));
        snprintf(name, sizeof name, "adamw.%s", t->name);
        report_add(&r_par, t->name, compare_tensor(f, name, t->shape, t->ndim, p, t->numel));
        free(ref);
        free(delta);
    }
    report_print(&r_upd, "update");
    report_print(&r_par, "params");
    assert_int_equal(r_upd.failures, 0);
    assert_int_equal(r_par.failures, 0);
    free(state);
    graft_st_close(&f);
}

static void test_adamw_clipped(void **state) { check_adamw(*state, &CLIPPED); }
static void test_adamw_unclipped(void **state) { check_adamw(*state, &UNCLIPPED); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_and_loss),
        cmocka_unit_test(test_gradients),
        cmocka_unit_test(test_adamw_clipped),
        cmocka_unit_test(test_adamw_unclipped),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
