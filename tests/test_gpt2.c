/* test_gpt2.c — the trunk as a whole on the `tiny` preset: the gradient of
 * the model loss against central finite differences for a sample of every
 * named tensor, the loss at initialisation, bit-identical forward/backward
 * (run to run, and with one thread or three),
 * a smaller batch inside a larger reservation, fully ignored targets,
 * overfitting one batch with AdamW, and checkpoints (bit-exact round trip,
 * refusal of a file whose config or shapes do not match).
 *
 * Finite differences on the whole model. The loss is a mean cross-entropy
 * of about log V = 5.6 computed in fp32, and a perturbation moves every
 * downstream activation, so each evaluation carries rounding noise of
 * ~5e-7 in the loss. Measured on this test's batch: with EPS = 1e-2 the
 * numeric gradients are off by at most ~3e-5; at EPS = 3e-3 the noise
 * triples and at 1e-3 it reaches 3e-4, while at EPS = 3e-2 the truncation
 * error (EPS^2 |L'''| / 6) takes over (1.5e-4). Per-parameter gradients on
 * a B=2, T=8 batch are of order 1e-4..1e-1, so an element passes when
 *   |num - ana| <= FD_RTOL * max(|num|, |ana|) + FD_ATOL,
 * FD_RTOL = 2e-2, FD_ATOL = 1e-4 (about 3x the noise); a dropped or
 * misplaced term in a backward gives errors of 10% and more. To make the
 * check meaningful, the model is first moved away from its special initial
 * point (LayerNorm weights exactly 1, zero biases, near-uniform attention),
 * where a missing weight or bias term in a backward would go unnoticed, and
 * each tensor must show at least one sampled gradient well above FD_ATOL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <unistd.h>

#include "adamw.h"
#include "gpt2.h"
#include "rng.h"
#include "safetensors.h"

#define EPS 1e-2f
#define FD_RTOL 2e-2
#define FD_ATOL 1e-4
#define FD_PER_TENSOR 8 /* sampled elements per named tensor */

static char g_dir[64];

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/graft_test_gpt2_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (!d) return -1;
    struct dirent *de;
    char path[512];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(g_dir);
}

static graft_gpt2_t *tiny_model(uint64_t seed) {
    graft_gpt2_config_t cfg;
    assert_int_equal(graft_gpt2_preset("tiny", &cfg), GRAFT_OK);
    return graft_gpt2_new(&cfg, seed);
}

/* Random tokens (B,T) in [0, V); targets the next token, as in training. */
static void random_batch(graft_rng_t *rng, int32_t *inp, int32_t *tgt, int B, int T, int V) {
    for (int b = 0; b < B; b++) {
        int32_t prev = (int32_t)graft_rng_below(rng, V);
        for (int t = 0; t < T; t++) {
            int32_t next = (int32_t)graft_rng_below(rng, V);
            inp[b * T + t] = prev;
            tgt[b * T + t] = next;
            prev = next;
        }
    }
}

/* ---- gradients ---------------------------------------------------------- */

static void test_grad_finite_differences(void **state) {
    (void)state;
    enum { B = 2, T = 8 };
    graft_gpt2_t *m = tiny_model(42);
    graft_rng_t rng;
    graft_rng_seed(&rng, 7, 0);
    /* Away from the special initial point: every parameter gets noise. */
    for (size_t i = 0; i < m->num_params; i++) m->params_memory[i] += 0.1f * graft_rng_normal(&rng);
    int32_t inp[B * T], tgt[B * T];
    random_batch(&rng, inp, tgt, B, T, m->cfg.V);
    tgt[3] = -1; /* an ignored position on the way */

    graft_gpt2_enable_grads(m);
    graft_gpt2_forward(m, inp, tgt, B, T);
    graft_gpt2_zero_grad(m);
    graft_gpt2_backward(m);

    int n = graft_gpt2_num_named(&m->cfg);
    graft_gpt2_tensor_t *named = test_malloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    double worst = 0.0, worst_abs = 0.0;
    for (int k = 0; k < n; k++) {
        const graft_gpt2_tensor_t *t = &named[k];
        /* position embeddings beyond T get no gradient: sample rows < T */
        size_t span = strcmp(t->name, "wpe.weight") == 0 ? (size_t)T * m->cfg.C : t->numel;
        double biggest = 0.0;
        for (int s = 0; s < FD_PER_TENSOR; s++) {
            size_t i = t->offset + graft_rng_below(&rng, (uint32_t)span);
            float *p = m->params_memory + i;
            float orig = *p, xp = orig + EPS, xm = orig - EPS;
            *p = xp;
            double lp = graft_gpt2_forward(m, inp, tgt, B, T);
            *p = xm;
            double lm = graft_gpt2_forward(m, inp, tgt, B, T);
            *p = orig;
            double num = (lp - lm) / ((double)xp - (double)xm);
            double ana = m->grads_memory[i];
            double diff = fabs(num - ana), scale = fmax(fabs(num), fabs(ana));
            if (diff > FD_RTOL * scale + FD_ATOL)
                fail_msg("%s[%zu]: numeric %.6g vs analytic %.6g", t->name, i - t->offset, num,
                         ana);
            if (scale > 10 * FD_ATOL && diff / scale > worst) worst = diff / scale;
            if (diff > worst_abs) worst_abs = diff;
            if (fabs(ana) > biggest) biggest = fabs(ana);
        }
        if (biggest <= 10 * FD_ATOL)
            fail_msg("%s: no sampled gradient above %g, the check proves nothing", t->name,
                     10 * FD_ATOL);
    }
    print_message("  %d tensors x %d elements: max |num - ana| %.2e, max relative err "
                  "(|g| > %g) %.2e\n", n, FD_PER_TENSOR, worst_abs, 10 * FD_ATOL, worst);
    test_free(named);
    graft_gpt2_destroy(&m);
    assert_null(m);
}

/* ---- forward properties ------------------------------------------------- */

static void test_initial_loss(void **state) {
    (void)state;
    enum { B = 4, T = 32 };
    graft_gpt2_t *m = tiny_model(1);
    graft_rng_t rng;
    graft_rng_seed(&rng, 3, 0);
    int32_t inp[B * T], tgt[B * T];
    random_batch(&rng, inp, tgt, B, T, m->cfg.V);
    float loss = graft_gpt2_forward(m, inp, tgt, B, T);
    /* Small initial weights give near-uniform predictions. */
    print_message("  loss at init %.5f, log V = %.5f\n", loss, log(m->cfg.V));
    assert_float_equal(loss, log(m->cfg.V), 0.05);
    assert_int_equal(m->loss_count, B * T);
    /* Without targets: activations only, loss -1. */
    assert_true(graft_gpt2_forward(m, inp, NULL, B, T) == -1.0f);
    graft_gpt2_destroy(&m);
}

/* One forward + backward on a random batch (stream `seed`); copies of the
 * logits and weight gradients go into *logits, *grads (test_malloc'd) when
 * those are not NULL. Returns the loss. */
static float step_once(graft_gpt2_t *m, uint64_t seed, int B, int T, float **logits,
                       float **grads) {
    graft_rng_t rng;
    graft_rng_seed(&rng, seed, 0);
    int32_t *inp = test_malloc((size_t)B * T * sizeof(int32_t));
    int32_t *tgt = test_malloc((size_t)B * T * sizeof(int32_t));
    random_batch(&rng, inp, tgt, B, T, m->cfg.V);
    float loss = graft_gpt2_forward(m, inp, tgt, B, T);
    graft_gpt2_zero_grad(m);
    graft_gpt2_backward(m);
    size_t nlog = (size_t)B * T * m->cfg.V;
    if (logits) {
        *logits = test_malloc(nlog * sizeof(float));
        memcpy(*logits, m->acts.logits, nlog * sizeof(float));
    }
    if (grads) {
        *grads = test_malloc(m->num_params * sizeof(float));
        memcpy(*grads, m->grads_memory, m->num_params * sizeof(float));
    }
    test_free(inp), test_free(tgt);
    return loss;
}

/* Two forward+backward passes on one model give identical bits. */
static void test_deterministic(void **state) {
    (void)state;
    enum { B = 3, T = 16 };
    graft_gpt2_t *m = tiny_model(5);
    graft_gpt2_enable_grads(m);
    size_t nlog = (size_t)B * T * m->cfg.V;
    float *logits, *grads;
    float loss1 = step_once(m, 4, B, T, &logits, &grads);
    float loss2 = step_once(m, 4, B, T, NULL, NULL);
    assert_memory_equal(&loss1, &loss2, sizeof loss1);
    assert_memory_equal(logits, m->acts.logits, nlog * sizeof(float));
    assert_memory_equal(grads, m->grads_memory, m->num_params * sizeof(float));

    /* and a second model from the same seed agrees with the first */
    graft_gpt2_t *m2 = tiny_model(5);
    graft_gpt2_enable_grads(m2);
    assert_memory_equal(m->params_memory, m2->params_memory, m->num_params * sizeof(float));
    float loss3 = step_once(m2, 4, B, T, NULL, NULL);
    assert_memory_equal(&loss1, &loss3, sizeof loss1);
    test_free(logits), test_free(grads);
    graft_gpt2_destroy(&m);
    graft_gpt2_destroy(&m2);
}

/* The kernels hand fixed blocks of rows to the threads and add per-block
 * partial sums in block order (ops.c), so one thread and three give the
 * same bits: loss, logits and every weight gradient. The batch is big
 * enough (256 rows) that each kernel has several blocks to share. */
static void test_threads_agree(void **state) {
    (void)state;
    enum { B = 8, T = 32 };
    graft_gpt2_t *m = tiny_model(6);
    graft_gpt2_enable_grads(m);
    size_t nlog = (size_t)B * T * m->cfg.V;
    float *logits, *grads;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    float loss1 = step_once(m, 6, B, T, &logits, &grads);
    omp_set_num_threads(3);
    float loss3 = step_once(m, 6, B, T, NULL, NULL);
    omp_set_num_threads(saved);
    assert_memory_equal(&loss1, &loss3, sizeof loss1);
    assert_memory_equal(logits, m->acts.logits, nlog * sizeof(float));
    assert_memory_equal(grads, m->grads_memory, m->num_params * sizeof(float));
    test_free(logits), test_free(grads);
    graft_gpt2_destroy(&m);
}

/* A B=2 batch run inside activations reserved for B=5 gives the same loss,
 * logits and gradients as a model that only ever saw B=2. */
static void test_smaller_batch_after_reserve(void **state) {
    (void)state;
    enum { BIG = 5, SMALL = 2, T = 12 };
    graft_gpt2_t *big = tiny_model(9), *small = tiny_model(9);
    graft_gpt2_enable_grads(big);
    graft_gpt2_enable_grads(small);
    graft_rng_t rng;
    graft_rng_seed(&rng, 5, 0);
    int32_t inp[BIG * T], tgt[BIG * T];
    random_batch(&rng, inp, tgt, BIG, T, big->cfg.V);

    graft_gpt2_reserve(big, BIG, T);
    graft_gpt2_forward(big, inp, tgt, BIG, T); /* fills every slab with the big batch */
    float *acts_before = big->acts_memory;
    float lb = graft_gpt2_forward(big, inp, tgt, SMALL, T);
    assert_ptr_equal(big->acts_memory, acts_before); /* no reallocation */
    assert_int_equal(big->B, BIG);
    graft_gpt2_zero_grad(big);
    graft_gpt2_backward(big);

    float ls = graft_gpt2_forward(small, inp, tgt, SMALL, T);
    graft_gpt2_zero_grad(small);
    graft_gpt2_backward(small);
    assert_float_equal(lb, ls, 1e-6 * ls);
    size_t nlog = (size_t)SMALL * T * big->cfg.V;
    for (size_t i = 0; i < nlog; i++)
        assert_float_equal(big->acts.logits[i], small->acts.logits[i], 1e-5);
    double gmax = 0.0;
    for (size_t i = 0; i < big->num_params; i++) gmax = fmax(gmax, fabs(small->grads_memory[i]));
    for (size_t i = 0; i < big->num_params; i++)
        assert_float_equal(big->grads_memory[i], small->grads_memory[i], 1e-5 * gmax);
    graft_gpt2_destroy(&big);
    graft_gpt2_destroy(&small);
}

static void test_all_targets_ignored(void **state) {
    (void)state;
    enum { B = 2, T = 8 };
    graft_gpt2_t *m = tiny_model(11);
    graft_gpt2_enable_grads(m);
    graft_rng_t rng;
    graft_rng_seed(&rng, 6, 0);
    int32_t inp[B * T], tgt[B * T];
    random_batch(&rng, inp, tgt, B, T, m->cfg.V);
    for (int i = 0; i < B * T; i++) tgt[i] = -1;
    float loss = graft_gpt2_forward(m, inp, tgt, B, T);
    assert_true(loss == 0.0f);
    assert_int_equal(m->loss_count, 0);
    /* the backward of an empty loss is a zero gradient, not NaN */
    graft_gpt2_zero_grad(m);
    graft_gpt2_backward(m);
    for (size_t i = 0; i < m->num_params; i++) assert_true(m->grads_memory[i] == 0.0f);
    graft_gpt2_destroy(&m);
}

/* ---- training ----------------------------------------------------------- */

/* AdamW over every named tensor (decay on matrices) on one fixed batch. */
static void test_overfit_one_batch(void **state) {
    (void)state;
    enum { B = 2, T = 16, STEPS = 50 };
    graft_gpt2_t *m = tiny_model(13);
    graft_gpt2_enable_grads(m);
    graft_rng_t rng;
    graft_rng_seed(&rng, 8, 0);
    int32_t inp[B * T], tgt[B * T];
    random_batch(&rng, inp, tgt, B, T, m->cfg.V);
    int n = graft_gpt2_num_named(&m->cfg);
    graft_gpt2_tensor_t *named = test_malloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    float *mom = test_calloc(2 * m->num_params, sizeof(float)), *vel = mom + m->num_params;
    graft_adamw_config_t cfg = graft_adamw_defaults();
    cfg.lr = 1e-2f;
    cfg.weight_decay = 0.01f;

    float first = 0.0f, loss = 0.0f;
    for (int step = 1; step <= STEPS; step++) {
        loss = graft_gpt2_forward(m, inp, tgt, B, T);
        assert_true(isfinite(loss));
        if (step == 1) first = loss;
        graft_gpt2_zero_grad(m);
        graft_gpt2_backward(m);
        double sumsq = 0.0;
        graft_grad_sumsq(m->grads_memory, m->num_params, &sumsq);
        float scale = graft_clip_scale(&cfg, sumsq);
        for (int k = 0; k < n; k++) {
            size_t o = named[k].offset;
            graft_adamw_update(&cfg, m->params_memory + o, m->grads_memory + o, mom + o, vel + o,
                               named[k].numel, cfg.lr, step, scale, named[k].decay);
        }
    }
    loss = graft_gpt2_forward(m, inp, tgt, B, T);
    print_message("  loss %.4f -> %.4f after %d steps\n", first, loss, STEPS);
    assert_true(loss < 0.5f * first);
    test_free(named), test_free(mom);
    graft_gpt2_destroy(&m);
}

/* ---- checkpoints -------------------------------------------------------- */

static void test_checkpoint_round_trip(void **state) {
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/tiny.safetensors", g_dir);
    graft_gpt2_t *m = tiny_model(17);
    graft_rng_t rng;
    graft_rng_seed(&rng, 9, 0);
    /* biases and LN weights non-trivial too, so every tensor carries data */
    for (size_t i = 0; i < m->num_params; i++) m->params_memory[i] += graft_rng_normal(&rng);
    const char *keys[] = {"step"}, *vals[] = {"123"};
    assert_int_equal(graft_gpt2_save(m, path, NULL, 0, keys, vals, 1), GRAFT_OK);

    graft_gpt2_t *back = NULL;
    assert_int_equal(graft_gpt2_load(path, &back), GRAFT_OK);
    assert_non_null(back);
    assert_memory_equal(&back->cfg, &m->cfg, sizeof m->cfg);
    assert_int_equal(back->num_params, m->num_params);
    assert_memory_equal(back->params_memory, m->params_memory, m->num_params * sizeof(float));

    /* HF names, shapes and the caller's metadata are in the file */
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_int_equal(graft_st_count(f), graft_gpt2_num_named(&m->cfg));
    assert_true(graft_st_has(f, "h.1.attn.c_attn.weight"));
    assert_true(graft_st_has(f, "ln_f.bias"));
    assert_string_equal(graft_st_meta(f, "step"), "123");
    assert_string_equal(graft_st_meta(f, "config.C"), "32");
    graft_st_close(&f);
    graft_gpt2_destroy(&back);
    graft_gpt2_destroy(&m);
}

/* Writes model m's tensors with a metadata config that may lie about them. */
static void write_with_config(const graft_gpt2_t *m, const char *path, const char *const *vals,
                              int n_meta) {
    static const char *keys[] = {"config.V", "config.T", "config.L", "config.NH", "config.C"};
    int n = graft_gpt2_num_named(&m->cfg);
    graft_gpt2_tensor_t *named = test_malloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    graft_st_tensor_t *ts = test_calloc((size_t)n, sizeof *ts);
    for (int i = 0; i < n; i++) {
        ts[i].name = named[i].name;
        ts[i].ndim = named[i].ndim;
        ts[i].shape[0] = named[i].shape[0];
        ts[i].shape[1] = named[i].shape[1];
        ts[i].data = m->params_memory + named[i].offset;
    }
    assert_int_equal(graft_st_write(path, ts, n, keys, vals, n_meta), GRAFT_OK);
    test_free(ts), test_free(named);
}

static void test_checkpoint_mismatch_refused(void **state) {
    (void)state;
    char path[256];
    graft_gpt2_t *m = tiny_model(19), *out = NULL;

    /* the metadata claims a wider model than the tensors hold */
    snprintf(path, sizeof path, "%s/wrong_width.safetensors", g_dir);
    const char *wide[] = {"260", "32", "2", "2", "64"};
    write_with_config(m, path, wide, 5);
    assert_int_equal(graft_gpt2_load(path, &out), GRAFT_ESHAPE);
    assert_null(out);

    /* one layer more than the file has: a missing tensor */
    snprintf(path, sizeof path, "%s/wrong_depth.safetensors", g_dir);
    const char *deep[] = {"260", "32", "3", "2", "32"};
    write_with_config(m, path, deep, 5);
    assert_int_equal(graft_gpt2_load(path, &out), GRAFT_ESHAPE);
    assert_null(out);

    /* heads that do not divide the width, and no config at all */
    snprintf(path, sizeof path, "%s/bad_heads.safetensors", g_dir);
    const char *heads[] = {"260", "32", "2", "3", "32"};
    write_with_config(m, path, heads, 5);
    assert_int_equal(graft_gpt2_load(path, &out), GRAFT_EFORMAT);
    snprintf(path, sizeof path, "%s/no_config.safetensors", g_dir);
    write_with_config(m, path, heads, 0);
    assert_int_equal(graft_gpt2_load(path, &out), GRAFT_EFORMAT);
    assert_null(out);

    /* reading a good file into a model of another shape */
    snprintf(path, sizeof path, "%s/good.safetensors", g_dir);
    assert_int_equal(graft_gpt2_save(m, path, NULL, 0, NULL, NULL, 0), GRAFT_OK);
    graft_gpt2_config_t other = m->cfg;
    other.C = 16;
    graft_gpt2_t *narrow = graft_gpt2_new(&other, 0);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_int_equal(graft_gpt2_read_weights(narrow, f), GRAFT_ESHAPE);
    graft_st_close(&f);
    graft_gpt2_destroy(&narrow);
    graft_gpt2_destroy(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_finite_differences),
        cmocka_unit_test(test_initial_loss),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_threads_agree),
        cmocka_unit_test(test_smaller_batch_after_reserve),
        cmocka_unit_test(test_all_targets_ignored),
        cmocka_unit_test(test_overfit_one_batch),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_checkpoint_mismatch_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
