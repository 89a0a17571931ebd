/* test_adamw.c — the optimiser (common/adamw.c): learning-rate schedule
 * values at known steps, gradient-norm clipping, and AdamW updates against
 * values worked out by hand (first and second step, bias correction, with
 * and without decoupled weight decay, gradient scaling), then against a
 * double-precision textbook AdamW over several steps; SGD with and without
 * momentum by hand, and a scope step taking SGD's path when asked.
 *
 * Tolerances: the kernels run in fp32, so values of order one are compared
 * to 1e-6 relative (a few roundings of 6e-8 each). The eps term of Adam
 * (1e-8 against |g| >= 0.25) moves results by < 1e-9, below that.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "adamw.h"
#include "scope.h"

#define assert_close(x, want, rel)                                                     \
    do {                                                                               \
        double x_ = (x), w_ = (want);                                                  \
        if (fabs(x_ - w_) > (rel) * fabs(w_) + 1e-12)                                  \
            fail_msg("%s = %.10g, expected %.10g (rel tol %g)", #x, x_, w_, (double)(rel)); \
    } while (0)

/* ---- schedule ----------------------------------------------------------- */

static graft_adamw_config_t schedule(float lr, int warmup, int total) {
    graft_adamw_config_t c = graft_adamw_defaults();
    c.lr = lr;
    c.min_lr_frac = 0.1f;
    c.warmup_steps = warmup;
    c.total_steps = total;
    return c;
}

static void test_lr_warmup_and_cosine(void **state) {
    (void)state;
    /* peak 1e-3, floor 1e-4, warmup 10 steps, cosine over steps 10..110:
     * lr(s) = 1e-3 (s+1)/10 during warmup, then
     * lr(s) = 1e-4 + 0.5 (1e-3 - 1e-4) (1 + cos(pi (s-10)/100)). */
    graft_adamw_config_t c = schedule(1e-3f, 10, 110);
    assert_close(graft_lr_at(&c, 0), 1e-4, 1e-6);
    assert_close(graft_lr_at(&c, 4), 5e-4, 1e-6);
    assert_close(graft_lr_at(&c, 9), 1e-3, 1e-6);
    assert_close(graft_lr_at(&c, 10), 1e-3, 1e-6);                   /* cos 0 = 1 */
    assert_close(graft_lr_at(&c, 35), 1e-4 + 4.5e-4 * (1 + M_SQRT1_2), 1e-6); /* pi/4 */
    assert_close(graft_lr_at(&c, 60), 5.5e-4, 1e-6);                 /* pi/2: halfway */
    assert_close(graft_lr_at(&c, 85), 1e-4 + 4.5e-4 * (1 - M_SQRT1_2), 1e-6); /* 3pi/4 */
    assert_close(graft_lr_at(&c, 110), 1e-4, 1e-6);                  /* the floor */
    assert_close(graft_lr_at(&c, 5000), 1e-4, 1e-6);                 /* and it stays there */
    /* monotone: up through warmup, down through the cosine */
    for (int s = 1; s < 10; s++) assert_true(graft_lr_at(&c, s) > graft_lr_at(&c, s - 1));
    for (int s = 11; s <= 110; s++) assert_true(graft_lr_at(&c, s) < graft_lr_at(&c, s - 1));

    /* no warmup: the cosine starts at the peak */
    c = schedule(2e-3f, 0, 100);
    assert_close(graft_lr_at(&c, 0), 2e-3, 1e-6);
    assert_close(graft_lr_at(&c, 50), 1.1e-3, 1e-6);
    assert_close(graft_lr_at(&c, 100), 2e-4, 1e-6);

    /* no schedule at all, or warmup only: constant after warmup */
    c = schedule(3e-4f, 0, 0);
    for (int s = 0; s < 1000; s += 97) assert_true(graft_lr_at(&c, s) == 3e-4f);
    c = schedule(3e-4f, 4, 4);
    assert_close(graft_lr_at(&c, 1), 1.5e-4, 1e-6);
    assert_true(graft_lr_at(&c, 4) == 3e-4f);
    assert_true(graft_lr_at(&c, 400) == 3e-4f);
}

/* ---- clipping ----------------------------------------------------------- */

static void test_clipping(void **state) {
    (void)state;
    const float g[] = {3.0f, 4.0f, -12.0f};
    double sumsq = 1.0; /* accumulates onto what is there */
    graft_grad_sumsq(g, 3, &sumsq);
    assert_true(sumsq == 170.0);
    double parts = 0.0; /* one span at a time gives the same total */
    graft_grad_sumsq(g, 1, &parts);
    graft_grad_sumsq(g + 1, 2, &parts);
    assert_true(parts == 169.0);

    graft_adamw_config_t c = graft_adamw_defaults();
    c.grad_clip = 1.0f;
    assert_close(graft_clip_scale(&c, 25.0), 1.0 / (5.0 + 1e-6), 1e-6); /* norm 5 -> 1 */
    assert_true(graft_clip_scale(&c, 0.81) == 1.0f);                   /* below: untouched */
    assert_true(graft_clip_scale(&c, 1.0) == 1.0f);                    /* at the limit */
    assert_true(graft_clip_scale(&c, 0.0) == 1.0f);
    c.grad_clip = 2.0f;
    assert_close(graft_clip_scale(&c, 169.0), 2.0 / (13.0 + 1e-6), 1e-6);
    /* the scaled norm is the limit */
    assert_close(sqrt(169.0) * graft_clip_scale(&c, 169.0), 2.0, 1e-6);
    c.grad_clip = 0.0f; /* disabled */
    assert_true(graft_clip_scale(&c, 1e12) == 1.0f);
    c.grad_clip = -1.0f;
    assert_true(graft_clip_scale(&c, 1e12) == 1.0f);
}

/* ---- updates by hand ---------------------------------------------------- */

/* 1 - beta2 with beta2 = 0.999 as stored in fp32 (0.99900001): 0.00099998713,
 * which is what the second moment is built from. Bias correction divides
 * by the same quantity at step 1, so the step itself does not see it. */
#define ONE_MINUS_B2 (1.0 - (double)0.999f)

static graft_adamw_config_t hand_config(void) {
    graft_adamw_config_t c = graft_adamw_defaults();
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 0.1f;
    return c;
}

/* lr 0.01, wd 0.1, betas 0.9 / 0.999.
 * Step 1: m = 0.1 g, v = 0.001 g^2, bias correction divides them by 0.1 and
 * 0.001, so mhat/sqrt(vhat) = g/|g| = sign(g) (0 for g = 0), and
 *   p1 = p0 - lr (sign(g) + wd p0).
 * Step 2 for element 0 (g = 0.5 then -0.5):
 *   m2 = 0.9 * 0.05 - 0.05 = -0.005, v2 = 0.999 * 0.00025 + 0.00025 = 0.00049975,
 *   mhat = -0.005 / 0.19, vhat = 0.00049975 / 0.001999 = 0.25 exactly,
 *   so the step is lr (-0.05263157894737 + wd p1).
 * Element 3 (g = 2 twice): mhat = 2, vhat = 4, step lr (1 + wd p1). */
static void test_update_by_hand(void **state) {
    (void)state;
    graft_adamw_config_t c = hand_config();
    const float lr = 0.01f;
    float p[4] = {1.0f, -2.0f, 0.5f, 0.0f};
    float m[4] = {0}, v[4] = {0};
    const float g1[4] = {0.5f, -0.25f, 0.0f, 2.0f};

    graft_adamw_update(&c, p, g1, m, v, 4, lr, 1, 1.0f, 1);
    assert_close(m[0], 0.05, 1e-6);
    assert_close(m[1], -0.025, 1e-6);
    assert_true(m[2] == 0.0f && v[2] == 0.0f);
    assert_close(v[0], ONE_MINUS_B2 * 0.25, 1e-6);
    assert_close(v[3], ONE_MINUS_B2 * 4.0, 1e-6);
    assert_close(p[0], 1.0 - 0.01 * (1 + 0.1 * 1.0), 1e-6);    /* 0.989 */
    assert_close(p[1], -2.0 - 0.01 * (-1 + 0.1 * -2.0), 1e-6); /* -1.988 */
    assert_close(p[2], 0.5 - 0.01 * (0 + 0.1 * 0.5), 1e-6);    /* 0.4995: decay only */
    assert_close(p[3], 0.0 - 0.01 * (1 + 0.0), 1e-6);          /* -0.01 */

    const float g2[4] = {-0.5f, -0.25f, 1.0f, 2.0f};
    float p1_0 = p[0], p1_3 = p[3];
    graft_adamw_update(&c, p, g2, m, v, 4, lr, 2, 1.0f, 1);
    assert_close(m[0], -0.005, 1e-5);
    assert_close(v[0], 0.999 * ONE_MINUS_B2 * 0.25 + ONE_MINUS_B2 * 0.25, 1e-6); /* ~0.00049975 */
    assert_close(p[0], p1_0 - 0.01 * (-0.005 / 0.19 / 0.5 + 0.1 * p1_0), 1e-6);
    assert_close(p[0], 0.9885373158, 1e-6);
    /* The fp32 bias correction 1 - powf(0.999, 2) = 0.001999 keeps only
     * ~4.5 significant digits of the rounded power, so vhat is off by up to
     * ~3e-5 and the step by ~1.5e-5 relative: 1.5e-7 on a step of 0.01,
     * 7.5e-6 relative to this small parameter. */
    assert_close(p[3], p1_3 - 0.01 * (1.0 + 0.1 * p1_3), 2e-5); /* -0.01999 */
    assert_close(p[3], -0.01999, 2e-5);
}

static void test_update_without_decay_and_scaled(void **state) {
    (void)state;
    graft_adamw_config_t c = hand_config(); /* weight_decay 0.1, but decay = 0 */
    float p[3] = {1.0f, -2.0f, 3.0f};
    float m[3] = {0}, v[3] = {0};
    const float g[3] = {0.5f, 0.0f, -4.0f};
    graft_adamw_update(&c, p, g, m, v, 3, 0.01f, 1, 1.0f, 0);
    assert_close(p[0], 0.99, 1e-6);
    assert_true(p[1] == -2.0f); /* no gradient, no decay: untouched */
    assert_close(p[2], 3.01, 1e-6);

    /* grad_scale multiplies the gradient before the moments; Adam's first
     * step is scale-invariant, the moments are not. */
    float q[3] = {1.0f, -2.0f, 3.0f};
    float mq[3] = {0}, vq[3] = {0};
    graft_adamw_update(&c, q, g, mq, vq, 3, 0.01f, 1, 0.5f, 0);
    assert_close(mq[0], 0.1 * 0.25, 1e-6);
    assert_close(vq[0], ONE_MINUS_B2 * 0.0625, 1e-6);
    assert_close(mq[2], 0.1 * -2.0, 1e-6);
    assert_close(q[0], 0.99, 1e-6);
    assert_close(q[2], 3.01, 1e-6);

    /* lr 0: nothing moves, whatever the decay */
    float r[1] = {5.0f}, mr[1] = {0}, vr[1] = {0};
    const float gr[1] = {1.0f};
    graft_adamw_update(&c, r, gr, mr, vr, 1, 0.0f, 1, 1.0f, 1);
    assert_true(r[0] == 5.0f);
}

/* Double-precision textbook AdamW (Loshchilov & Hutter, decoupled decay
 * scaled by lr as in PyTorch), for several steps on random-ish data. */
static void test_update_matches_reference(void **state) {
    (void)state;
    enum { NP = 37, STEPS = 5 };
    graft_adamw_config_t c = hand_config();
    c.beta1 = 0.8f;
    c.beta2 = 0.95f;
    c.eps = 1e-6f;
    c.weight_decay = 0.05f;
    float p[NP], m[NP] = {0}, v[NP] = {0};
    double rp[NP], rm[NP] = {0}, rv[NP] = {0};
    for (int i = 0; i < NP; i++) rp[i] = p[i] = sinf(1.7f * i) * 2.0f;
    for (int t = 1; t <= STEPS; t++) {
        float g[NP];
        for (int i = 0; i < NP; i++) g[i] = cosf(0.37f * i * t + 0.1f * t) * (1 + i % 3);
        float lr = 0.02f / t, scale = 0.75f;
        int decay = t % 2; /* alternate, so both paths enter the history */
        graft_adamw_update(&c, p, g, m, v, NP, lr, t, scale, decay);
        double b1 = c.beta1, b2 = c.beta2;
        for (int i = 0; i < NP; i++) {
            double gi = (double)g[i] * scale;
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            double mhat = rm[i] / (1 - pow(b1, t)), vhat = rv[i] / (1 - pow(b2, t));
            rp[i] -= lr * (mhat / (sqrt(vhat) + c.eps) + (decay ? c.weight_decay : 0.0) * rp[i]);
        }
        for (int i = 0; i < NP; i++) { /* absolute floors for values that pass near 0 */
            if (fabs(m[i] - rm[i]) > 1e-5 * fabs(rm[i]) + 1e-8 ||
                fabs(p[i] - rp[i]) > 1e-6 * fabs(rp[i]) + 1e-8)
                fail_msg("step %d [%d]: p %.9g m %.9g, reference p %.9g m %.9g", t, i, p[i],
                         m[i], rp[i], rm[i]);
        }
    }
}

/* ---- SGD ----------------------------------------------------------------- */

/* Plain SGD (momentum 0): p -= lr (scale g + wd p); the momentum buffer is
 * not touched. With decay 0 the decay term is left out. */
static void test_sgd_plain(void **state) {
    (void)state;
    graft_adamw_config_t c = graft_adamw_defaults();
    c.kind = GRAFT_SGD;
    c.weight_decay = 0.1f;
    float p[3] = {1.0f, -2.0f, 0.5f}, m[3] = {7, 7, 7};
    const float g[3] = {0.5f, -0.25f, 0.0f};
    graft_sgd_update_team(&c, p, g, m, 3, 0.1f, 0.5f, 1);
    assert_close(p[0], 1.0 - 0.1 * (0.25 + 0.1), 1e-6);     /* 0.965 */
    assert_close(p[1], -2.0 - 0.1 * (-0.125 - 0.2), 1e-6);  /* -1.9675 */
    assert_close(p[2], 0.5 - 0.1 * 0.05, 1e-6);             /* decay only: 0.495 */
    assert_true(m[0] == 7 && m[1] == 7 && m[2] == 7);
    float q[1] = {2.0f}, mq[1] = {0};
    const float gq[1] = {1.0f};
    graft_sgd_update_team(&c, q, gq, mq, 1, 0.1f, 1.0f, 0);
    assert_close(q[0], 1.9, 1e-6);
}

/* Heavy ball, momentum 0.9: m1 = g1, p1 = p0 - lr m1; m2 = 0.9 m1 + g2,
 * p2 = p1 - lr m2. For g = 1 then -0.5 at lr 0.1 from 0: m = 1, 0.4 and
 * p = -0.1, -0.14. */
static void test_sgd_momentum(void **state) {
    (void)state;
    graft_adamw_config_t c = graft_adamw_defaults();
    c.kind = GRAFT_SGD;
    c.momentum = 0.9f;
    float p[1] = {0.0f}, m[1] = {0.0f};
    const float g1[1] = {1.0f}, g2[1] = {-0.5f};
    graft_sgd_update_team(&c, p, g1, m, 1, 0.1f, 1.0f, 0);
    assert_close(m[0], 1.0, 1e-6);
    assert_close(p[0], -0.1, 1e-6);
    graft_sgd_update_team(&c, p, g2, m, 1, 0.1f, 1.0f, 0);
    assert_close(m[0], 0.4, 1e-6);
    assert_close(p[0], -0.14, 1e-6);
}

/* graft_scope_step dispatches on cfg->kind: the same gradient moves a
 * parameter by lr * g under SGD and by lr * sign(g) under Adam's first step;
 * a frozen tensor stays put either way. */
static void test_scope_step_kinds(void **state) {
    (void)state;
    for (int kind = GRAFT_ADAMW; kind <= GRAFT_SGD; kind++) {
        graft_scope_t *s = graft_scope_new("shared");
        int a = graft_scope_add(s, "A", 1, 2, 0, 0), b = graft_scope_add(s, "B", 1, 1, 0, 0);
        graft_scope_alloc(s);
        graft_scope_alloc_grads(s);
        float *pa = graft_scope_ptr(s, a), *ga = graft_scope_grad(s, a);
        pa[0] = 1.0f, pa[1] = 1.0f, ga[0] = 0.25f, ga[1] = -4.0f;
        s->tensors[b].frozen = 1;
        graft_scope_ptr(s, b)[0] = 3.0f;
        graft_scope_grad(s, b)[0] = 1.0f;
        graft_adamw_config_t c = graft_adamw_defaults();
        c.kind = (graft_optimizer_t)kind;
        graft_scope_step(s, &c, 0.1f, 1.0f);
        if (kind == GRAFT_SGD) {
            assert_close(pa[0], 1.0 - 0.025, 1e-6);
            assert_close(pa[1], 1.0 + 0.4, 1e-6);
        } else {
            assert_close(pa[0], 0.9, 1e-6);
            assert_close(pa[1], 1.1, 1e-6);
        }
        assert_true(graft_scope_ptr(s, b)[0] == 3.0f);
        graft_scope_destroy(&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_warmup_and_cosine),
        cmocka_unit_test(test_clipping),
        cmocka_unit_test(test_update_by_hand),
        cmocka_unit_test(test_update_without_decay_and_scaled),
        cmocka_unit_test(test_update_matches_reference),
        cmocka_unit_test(test_sgd_plain),
        cmocka_unit_test(test_sgd_momentum),
        cmocka_unit_test(test_scope_step_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
