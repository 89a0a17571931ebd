/* test_ops.c — the trunk's kernels (common/ops.c): every backward against
 * central finite differences of its forward, the tiled matmul against the
 * naive reference, the gradient conventions (input gradients written,
 * parameter gradients accumulated), determinism of the row reductions,
 * causality of attention (and its blocks on a long sequence against a direct
 * evaluation), and cross-entropy's ignored rows.
 *
 * Gradient check (ggml test-backend-ops `eval_grad` style). For a forward
 * out = f(x) and a fixed random R of out's shape, the scalar loss is
 * L = sum(out * R), accumulated in double, so dL/dout = R and the analytic
 * gradient is the backward kernel fed dout = R. Each checked element x_i is
 * perturbed by +-EPS and num = (L+ - L-) / (x_i+ - x_i-), using the
 * perturbation actually representable in fp32.
 *
 * EPS = 1e-2. All inputs are O(1), so the truncation error of the central
 * difference is ~EPS^2 |f'''| / 6 ~ 1e-5, and the rounding error is
 * ~(outputs touched) * 1e-7 / EPS ~ 1e-5 (the untouched outputs round
 * identically in both evaluations and cancel). A smaller EPS (1e-3) would
 * trade truncation for ten times more rounding noise.
 *
 * Tolerance: err = |num - ana| / max(|num|, |ana|, GRAD_FLOOR) < GRAD_TOL
 * with GRAD_TOL = 1e-2 and GRAD_FLOOR = 0.1: relative for gradients of
 * ordinary size, absolute 1e-3 for gradients near zero; both sit about
 * 100x above the expected error, while a wrong term in a backward kernel
 * gives errors of order one. Small tensors are checked at every element,
 * big ones at FD_SAMPLES random elements.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "ops.h"
#include "rng.h"

#define EPS 1e-2f
#define GRAD_TOL 1e-2
#define GRAD_FLOOR 0.1
#define FD_ALL_LIMIT 512 /* tensors up to this size are checked at every element */
#define FD_SAMPLES 64

/* Small odd shapes: nothing divides anything by accident. */
enum { B = 2, T = 5, C = 12, NH = 3, V = 7, N = B * T };

/* ---- helpers ------------------------------------------------------------ */

static float *new_uniform(graft_rng_t *rng, size_t n, float lo, float hi) {
    float *x = test_malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * graft_rng_uniform(rng);
    return x;
}

static float *new_zeros(size_t n) { return test_calloc(n, sizeof(float)); }

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Checks grad[0..n) = dL/dx by central differences of loss(ctx), which must
 * read x. Returns the largest error seen, for the log. */
static double check_grad(const char *what, loss_fn loss, void *ctx, float *x, const float *grad,
                         size_t n, graft_rng_t *rng) {
    size_t checks = n <= FD_ALL_LIMIT ? n : FD_SAMPLES;
    double worst = 0.0;
    for (size_t k = 0; k < checks; k++) {
        size_t i = n <= FD_ALL_LIMIT ? k : graft_rng_below(rng, (uint32_t)n);
        float orig = x[i];
        float xp = orig + EPS, xm = orig - EPS;
        x[i] = xp;
        double lp = loss(ctx);
        x[i] = xm;
        double lm = loss(ctx);
        x[i] = orig;
        double num = (lp - lm) / ((double)xp - (double)xm);
        double ana = grad[i];
        double scale = fmax(fmax(fabs(num), fabs(ana)), GRAD_FLOOR);
        double err = fabs(num - ana) / scale;
        if (err > worst) worst = err;
        if (err >= GRAD_TOL)
            fail_msg("%s[%zu]: numeric %.6g vs analytic %.6g (err %.3g >= %g)", what, i, num,
                     ana, err, GRAD_TOL);
    }
    print_message("  %-22s %4zu checked, max err %.2e\n", what, checks, worst);
    return worst;
}

/* b == 2 a up to the rounding of one extra addition. */
static void assert_doubled(const char *what, const float *once, const float *twice, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double want = 2.0 * once[i];
        if (fabs(twice[i] - want) > 1e-6 * fabs(want) + 1e-7)
            fail_msg("%s[%zu]: after two calls %.9g, expected 2 x %.9g", what, i, twice[i],
                     once[i]);
    }
}

/* ---- encoder ------------------------------------------------------------ */

typedef struct {
    int32_t inp[N];
    float *wte, *wpe, *out, *R;
} encoder_ctx;

static double encoder_loss(void *p) {
    encoder_ctx *c = p;
    encoder_forward(c->out, c->inp, c->wte, c->wpe, B, T, C);
    return dot(c->out, c->R, (size_t)N * C);
}

static void test_encoder_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 1, 0);
    /* Token 3 appears three times, token 5 twice, tokens 0 and 6 never. */
    encoder_ctx c = {.inp = {3, 1, 3, 5, 2, 5, 3, 4, 1, 2}};
    c.wte = new_uniform(&rng, (size_t)V * C, -1, 1);
    c.wpe = new_uniform(&rng, (size_t)T * C, -1, 1);
    c.out = new_zeros((size_t)N * C);
    c.R = new_uniform(&rng, (size_t)N * C, -1, 1);
    float *dwte = new_zeros((size_t)V * C), *dwpe = new_zeros((size_t)T * C);

    encoder_backward(dwte, dwpe, c.R, c.inp, B, T, C);
    check_grad("encoder dwte", encoder_loss, &c, c.wte, dwte, (size_t)V * C, &rng);
    check_grad("encoder dwpe", encoder_loss, &c, c.wpe, dwpe, (size_t)T * C, &rng);
    for (int ch = 0; ch < C; ch++) {
        assert_true(dwte[0 * C + ch] == 0.0f && dwte[6 * C + ch] == 0.0f);
        /* the repeated token's row sums its three positions exactly */
        float want = c.R[0 * C + ch] + c.R[2 * C + ch] + c.R[6 * C + ch];
        assert_float_equal(dwte[3 * C + ch], want, 1e-6);
    }
    test_free(c.wte), test_free(c.wpe), test_free(c.out), test_free(c.R);
    test_free(dwte), test_free(dwpe);
}

/* ---- layernorm ---------------------------------------------------------- */

typedef struct {
    int n, c;
    float *inp, *w, *b, *out, *mean, *rstd, *R;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->n, c->c);
    return dot(c->out, c->R, (size_t)c->n * c->c);
}

static ln_ctx ln_new(graft_rng_t *rng, int n, int ch) {
    ln_ctx c = {.n = n, .c = ch};
    c.inp = new_uniform(rng, (size_t)n * ch, -2, 2);
    c.w = new_uniform(rng, ch, 0.5f, 1.5f); /* not 1: a missing weight factor must show */
    c.b = new_uniform(rng, ch, -0.5f, 0.5f);
    c.out = new_zeros((size_t)n * ch);
    c.mean = new_zeros(n);
    c.rstd = new_zeros(n);
    c.R = new_uniform(rng, (size_t)n * ch, -1, 1);
    return c;
}

static void ln_free(ln_ctx *c) {
    test_free(c->inp), test_free(c->w), test_free(c->b), test_free(c->out);
    test_free(c->mean), test_free(c->rstd), test_free(c->R);
}

static void test_layernorm_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 2, 0);
    ln_ctx c = ln_new(&rng, N, C);
    float *dinp = new_zeros((size_t)N * C), *dw = new_zeros(C), *db = new_zeros(C);
    ln_loss(&c);
    for (int i = 0; i < N; i++) { /* the saved statistics are the row's */
        double m = 0, v = 0;
        for (int ch = 0; ch < C; ch++) m += c.inp[i * C + ch];
        m /= C;
        for (int ch = 0; ch < C; ch++) v += (c.inp[i * C + ch] - m) * (c.inp[i * C + ch] - m);
        v /= C;
        assert_float_equal(c.mean[i], m, 1e-6);
        assert_float_equal(c.rstd[i], 1.0 / sqrt(v + 1e-5), 1e-5 * c.rstd[i]);
    }
    layernorm_backward(dinp, dw, db, NULL, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    check_grad("layernorm dinp", ln_loss, &c, c.inp, dinp, (size_t)N * C, &rng);
    check_grad("layernorm dweight", ln_loss, &c, c.w, dw, C, &rng);
    check_grad("layernorm dbias", ln_loss, &c, c.b, db, C, &rng);

    /* Frozen weights: dweight and dbias NULL, dinp unchanged. */
    size_t nc = (size_t)N * C;
    float *dinp2 = new_zeros(nc);
    ln_loss(&c);
    layernorm_backward(dinp2, NULL, NULL, NULL, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    assert_memory_equal(dinp, dinp2, nc * sizeof(float));

    /* The residual stream's gradient added on the way: dinp = dres + LN's,
     * from a separate dres and in place (dres == dinp). */
    float *dres = new_uniform(&rng, nc, -1, 1), *inplace = test_malloc(nc * sizeof(float));
    memcpy(inplace, dres, nc * sizeof(float));
    layernorm_backward(dinp2, NULL, NULL, dres, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    layernorm_backward(inplace, NULL, NULL, inplace, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    for (size_t i = 0; i < nc; i++) {
        assert_true(dinp2[i] == dres[i] + dinp[i]);
        assert_true(inplace[i] == dinp2[i]);
    }
    /* Only the parameters' gradients wanted: dinp NULL. */
    float *dw2 = new_zeros(C), *db2 = new_zeros(C);
    layernorm_backward(NULL, dw2, db2, NULL, c.R, c.inp, c.w, c.mean, c.rstd, N, C);
    assert_memory_equal(dw, dw2, C * sizeof(float));
    assert_memory_equal(db, db2, C * sizeof(float));
    test_free(dinp), test_free(dinp2), test_free(dw), test_free(db);
    test_free(dres), test_free(inplace), test_free(dw2), test_free(db2);
    ln_free(&c);
}

/* ---- matmul ------------------------------------------------------------- */

typedef struct {
    int n, c, oc;
    float *inp, *w, *b, *out, *R;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    matmul_forward(c->out, c->inp, c->w, c->b, c->n, c->c, c->oc);
    return dot(c->out, c->R, (size_t)c->n * c->oc);
}

static mm_ctx mm_new(graft_rng_t *rng, int n, int ch, int oc) {
    mm_ctx c = {.n = n, .c = ch, .oc = oc};
    c.inp = new_uniform(rng, (size_t)n * ch, -1, 1);
    c.w = new_uniform(rng, (size_t)ch * oc, -1, 1);
    c.b = new_uniform(rng, oc, -1, 1);
    c.out = new_zeros((size_t)n * oc);
    c.R = new_uniform(rng, (size_t)n * oc, -1, 1);
    return c;
}

static void mm_free(mm_ctx *c) {
    test_free(c->inp), test_free(c->w), test_free(c->b), test_free(c->out), test_free(c->R);
}

static void test_matmul_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 3, 0);
    enum { OC = 9 };
    mm_ctx c = mm_new(&rng, N, C, OC);
    float *dinp = new_zeros((size_t)N * C), *dw = new_zeros((size_t)C * OC), *db = new_zeros(OC);
    matmul_backward(dinp, dw, db, c.R, c.inp, c.w, N, C, OC);
    check_grad("matmul dinp", mm_loss, &c, c.inp, dinp, (size_t)N * C, &rng);
    check_grad("matmul dweight", mm_loss, &c, c.w, dw, (size_t)C * OC, &rng);
    check_grad("matmul dbias", mm_loss, &c, c.b, db, OC, &rng);

    /* Each gradient alone (the others NULL) equals its share of the full call. */
    float *one = new_zeros((size_t)N * C); /* N*C >= C*OC >= OC */
    matmul_backward(one, NULL, NULL, c.R, c.inp, c.w, N, C, OC);
    assert_memory_equal(one, dinp, (size_t)N * C * sizeof(float));
    memset(one, 0, (size_t)N * C * sizeof(float));
    matmul_backward(NULL, one, NULL, c.R, c.inp, c.w, N, C, OC);
    assert_memory_equal(one, dw, (size_t)C * OC * sizeof(float));
    memset(one, 0, (size_t)N * C * sizeof(float));
    matmul_backward(NULL, NULL, one, c.R, c.inp, c.w, N, C, OC);
    assert_memory_equal(one, db, OC * sizeof(float));
    matmul_backward(NULL, NULL, NULL, c.R, c.inp, c.w, N, C, OC); /* all frozen: a no-op */

    /* Without a bias the output is the plain product. */
    float *nob = new_zeros((size_t)N * OC), *ref = new_zeros((size_t)N * OC);
    matmul_forward(nob, c.inp, c.w, NULL, N, C, OC);
    matmul_forward_naive(ref, c.inp, c.w, NULL, N, C, OC);
    for (int i = 0; i < N * OC; i++) assert_float_equal(nob[i], ref[i], 1e-5);
    test_free(dinp), test_free(dw), test_free(db), test_free(one), test_free(nob), test_free(ref);
    mm_free(&c);
}

/* Tiled (BLAS) against naive on odd shapes, including sizes past BLAS block
 * edges. Each element may differ by fp32 accumulation error, bounded
 * relative to the sum of the magnitudes of its terms, sum |x_c w_co| + |b|
 * (not to the result, which can cancel to near zero). */
static void test_matmul_vs_naive(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1}, {1, 7, 3}, {5, 1, 9},    {7, 13, 5},
                                    {33, 65, 17}, {129, 257, 31}, {3, 300, 301}};
    graft_rng_t rng;
    graft_rng_seed(&rng, 4, 0);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], ch = shapes[s][1], oc = shapes[s][2];
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            mm_ctx c = mm_new(&rng, n, ch, oc);
            const float *bias = with_bias ? c.b : NULL;
            float *ref = new_zeros((size_t)n * oc);
            matmul_forward(c.out, c.inp, c.w, bias, n, ch, oc);
            matmul_forward_naive(ref, c.inp, c.w, bias, n, ch, oc);
            for (int i = 0; i < n; i++) {
                for (int o = 0; o < oc; o++) {
                    double mag = bias ? fabs(bias[o]) : 0.0;
                    for (int k = 0; k < ch; k++)
                        mag += fabs((double)c.inp[i * ch + k] * c.w[(size_t)k * oc + o]);
                    double diff = fabs((double)c.out[i * oc + o] - ref[i * oc + o]);
                    if (diff > 1e-5 * mag + 1e-30)
                        fail_msg("matmul (%d,%d,%d) bias=%d at [%d,%d]: %.9g vs naive %.9g", n,
                                 ch, oc, with_bias, i, o, c.out[i * oc + o], ref[i * oc + o]);
                }
            }
            test_free(ref);
            mm_free(&c);
        }
    }
}

/* ---- lmhead ------------------------------------------------------------- */

typedef struct {
    float *inp, *wte, *out, *R;
} lm_ctx;

static double lm_loss(void *p) {
    lm_ctx *c = p;
    lmhead_forward(c->out, c->inp, c->wte, N, C, V);
    return dot(c->out, c->R, (size_t)N * V);
}

static void test_lmhead_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 5, 0);
    lm_ctx c = {.inp = new_uniform(&rng, (size_t)N * C, -1, 1),
                .wte = new_uniform(&rng, (size_t)V * C, -1, 1),
                .out = new_zeros((size_t)N * V),
                .R = new_uniform(&rng, (size_t)N * V, -1, 1)};
    /* forward: logits[i,v] = <inp_i, wte_v> */
    lm_loss(&c);
    for (int i = 0; i < N; i++)
        for (int v = 0; v < V; v++)
            assert_float_equal(c.out[i * V + v], dot(c.inp + i * C, c.wte + v * C, C), 1e-5);
    float *dinp = new_zeros((size_t)N * C), *dwte = new_zeros((size_t)V * C);
    lmhead_backward(dinp, dwte, c.R, c.inp, c.wte, N, C, V);
    check_grad("lmhead dinp", lm_loss, &c, c.inp, dinp, (size_t)N * C, &rng);
    check_grad("lmhead dwte", lm_loss, &c, c.wte, dwte, (size_t)V * C, &rng);
    float *only = new_zeros((size_t)N * C); /* frozen embedding: dwte NULL */
    lmhead_backward(only, NULL, c.R, c.inp, c.wte, N, C, V);
    assert_memory_equal(only, dinp, (size_t)N * C * sizeof(float));
    test_free(c.inp), test_free(c.wte), test_free(c.out), test_free(c.R);
    test_free(dinp), test_free(dwte), test_free(only);
}

/* ---- attention ---------------------------------------------------------- */

typedef struct {
    float *inp, *out, *att, *R;
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    attention_forward(c->out, c->att, c->inp, B, T, C, NH);
    return dot(c->out, c->R, (size_t)N * C);
}

static att_ctx att_new(graft_rng_t *rng) {
    att_ctx c = {.inp = new_uniform(rng, (size_t)N * 3 * C, -1.5f, 1.5f),
                 .out = new_zeros((size_t)N * C),
                 .att = new_zeros((size_t)B * NH * T * T),
                 .R = new_uniform(rng, (size_t)N * C, -1, 1)};
    return c;
}

static void att_free(att_ctx *c) {
    test_free(c->inp), test_free(c->out), test_free(c->att), test_free(c->R);
}

static void test_attention_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 6, 0);
    att_ctx c = att_new(&rng);
    att_loss(&c);
    /* att rows are causal probability distributions */
    for (int bh = 0; bh < B * NH; bh++) {
        for (int t = 0; t < T; t++) {
            const float *row = c.att + ((size_t)bh * T + t) * T;
            double sum = 0;
            for (int j = 0; j <= t; j++) {
                assert_true(row[j] > 0.0f);
                sum += row[j];
            }
            assert_float_equal(sum, 1.0, 1e-6);
            for (int j = t + 1; j < T; j++) assert_true(row[j] == 0.0f);
        }
    }
    float *dinp = new_zeros((size_t)N * 3 * C), *scratch = new_zeros((size_t)B * NH * T * T);
    attention_backward(dinp, scratch, c.R, c.inp, c.att, B, T, C, NH);
    /* all of q, k and v: 360 elements */
    check_grad("attention dinp(q,k,v)", att_loss, &c, c.inp, dinp, (size_t)N * 3 * C, &rng);
    /* The first query attends only to itself (a softmax over one score is
     * constant), so its gradient is exactly zero. */
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++)
            assert_true(dinp[((size_t)b * T + 0) * 3 * C + ch] == 0.0f);
    test_free(dinp), test_free(scratch);
    att_free(&c);
}

/* Output at t must not change when inputs (q, k or v) at any t' > t do:
 * bit for bit, since masked probabilities are exact zeros. */
static void test_attention_causal(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 7, 0);
    att_ctx c = att_new(&rng);
    float *out0 = new_zeros((size_t)N * C);
    attention_forward(out0, c.att, c.inp, B, T, C, NH);
    float *inp0 = test_malloc((size_t)N * 3 * C * sizeof(float));
    memcpy(inp0, c.inp, (size_t)N * 3 * C * sizeof(float));
    for (int t0 = 0; t0 < T - 1; t0++) {
        memcpy(c.inp, inp0, (size_t)N * 3 * C * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = t0 + 1; t < T; t++)
                for (int k = 0; k < 3 * C; k++)
                    c.inp[((size_t)b * T + t) * 3 * C + k] = 3.0f * graft_rng_normal(&rng);
        attention_forward(c.out, c.att, c.inp, B, T, C, NH);
        for (int b = 0; b < B; b++) {
            size_t row = (size_t)b * T * C;
            assert_memory_equal(c.out + row, out0 + row, (size_t)(t0 + 1) * C * sizeof(float));
            /* and the future did change (the check can fail) */
            assert_memory_not_equal(c.out + row + (size_t)(t0 + 1) * C,
                                    out0 + row + (size_t)(t0 + 1) * C, (size_t)C * sizeof(float));
        }
    }
    test_free(out0), test_free(inp0);
    att_free(&c);
}

/* A sequence long enough for the kernels' query and key blocks (several of
 * them, the last one ragged): the output against a direct double-precision
 * evaluation of softmax(Q K^T / sqrt(hs)) V under the causal mask, and the
 * backward by finite differences in every block of rows. */
enum { LB = 1, LT = 77, LC = 6, LNH = 2, LN = LB * LT };

static double att_long_loss(void *p) {
    att_ctx *c = p;
    attention_forward(c->out, c->att, c->inp, LB, LT, LC, LNH);
    return dot(c->out, c->R, (size_t)LN * LC);
}

static void test_attention_long(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 17, 0);
    att_ctx c = {.inp = new_uniform(&rng, (size_t)LN * 3 * LC, -1.5f, 1.5f),
                 .out = new_zeros((size_t)LN * LC),
                 .att = new_zeros((size_t)LB * LNH * LT * LT),
                 .R = new_uniform(&rng, (size_t)LN * LC, -1, 1)};
    att_long_loss(&c);
    int hs = LC / LNH;
    double w[LT];
    for (int h = 0; h < LNH; h++) {
        for (int t = 0; t < LT; t++) {
            const float *q = c.inp + (size_t)t * 3 * LC + h * hs;
            double maxv = -INFINITY, sum = 0.0;
            for (int j = 0; j <= t; j++) {
                const float *k = c.inp + (size_t)j * 3 * LC + LC + h * hs;
                double sc = 0.0;
                for (int i = 0; i < hs; i++) sc += (double)q[i] * k[i];
                w[j] = sc / sqrt((double)hs);
                if (w[j] > maxv) maxv = w[j];
            }
            for (int j = 0; j <= t; j++) sum += (w[j] = exp(w[j] - maxv));
            for (int i = 0; i < hs; i++) {
                double o = 0.0;
                for (int j = 0; j <= t; j++)
                    o += w[j] / sum * c.inp[(size_t)j * 3 * LC + 2 * LC + h * hs + i];
                assert_float_equal(c.out[(size_t)t * LC + h * hs + i], o, 1e-5);
            }
        }
    }
    float *dinp = new_zeros((size_t)LN * 3 * LC);
    float *scratch = new_zeros((size_t)LB * LNH * LT * LT);
    attention_backward(dinp, scratch, c.R, c.inp, c.att, LB, LT, LC, LNH);
    for (int t0 = 0; t0 < LT; t0 += 16) {
        int rows = LT - t0 < 16 ? LT - t0 : 16;
        size_t off = (size_t)t0 * 3 * LC;
        check_grad("attention long rows", att_long_loss, &c, c.inp + off, dinp + off,
                   (size_t)rows * 3 * LC, &rng);
    }
    test_free(dinp), test_free(scratch);
    att_free(&c);
}

/* ---- gelu, residual, pool ----------------------------------------------- */

typedef struct {
    size_t n;
    float *inp, *out, *R;
} gelu_ctx;

static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    gelu_forward(c->out, c->inp, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_gelu_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 8, 0);
    enum { NG = 67 };
    gelu_ctx c = {.n = NG, .inp = new_uniform(&rng, NG, -4, 4), .out = new_zeros(NG),
                  .R = new_uniform(&rng, NG, -1, 1)};
    c.inp[0] = 0.0f; /* gelu(0) = 0, gelu'(0) = 1/2 */
    gelu_loss(&c);
    assert_true(c.out[0] == 0.0f);
    for (int i = 1; i < NG; i++) { /* the tanh form, evaluated in double */
        double x = c.inp[i];
        double want = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
        assert_float_equal(c.out[i], want, 1e-6);
    }
    float *dinp = new_zeros(NG);
    gelu_backward(dinp, c.inp, c.R, NG);
    assert_float_equal(dinp[0], 0.5 * c.R[0], 1e-7);
    check_grad("gelu dinp", gelu_loss, &c, c.inp, dinp, NG, &rng);
    test_free(c.inp), test_free(c.out), test_free(c.R), test_free(dinp);
}

typedef struct {
    size_t n;
    float *a, *b, *out, *R;
} res_ctx;

static double res_loss(void *p) {
    res_ctx *c = p;
    residual_forward(c->out, c->a, c->b, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_residual_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 9, 0);
    enum { NR = 61 };
    res_ctx c = {.n = NR, .a = new_uniform(&rng, NR, -1, 1), .b = new_uniform(&rng, NR, -1, 1),
                 .out = new_zeros(NR), .R = new_uniform(&rng, NR, -1, 1)};
    res_loss(&c);
    for (int i = 0; i < NR; i++) assert_true(c.out[i] == c.a[i] + c.b[i]);
    /* The backward is the identity on both inputs (the trunk hands dout on
     * as both gradients without a kernel). */
    check_grad("residual dinp1", res_loss, &c, c.a, c.R, NR, &rng);
    check_grad("residual dinp2", res_loss, &c, c.b, c.R, NR, &rng);
    test_free(c.a), test_free(c.b), test_free(c.out), test_free(c.R);
}

typedef struct {
    int32_t pos[B];
    graft_pool_t how;
    float *hidden, *pooled, *R;
} pool_ctx;

static double pool_loss(void *p) {
    pool_ctx *c = p;
    pool_forward(c->pooled, c->hidden, c->pos, B, T, C, c->how);
    return dot(c->pooled, c->R, (size_t)B * C);
}

/* Both poolings: values against their definition (row 0 pools positions
 * 0..3 of T = 5, row 1 only position 0, so padding never enters), and the
 * backward by finite differences. */
static void test_pool_grad(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 10, 0);
    pool_ctx c = {.pos = {3, 0}, .hidden = new_uniform(&rng, (size_t)N * C, -1, 1),
                  .pooled = new_zeros((size_t)B * C), .R = new_uniform(&rng, (size_t)B * C, -1, 1)};
    float *dh = new_zeros((size_t)N * C);
    c.how = GRAFT_POOL_LAST;
    pool_loss(&c);
    for (int b = 0; b < B; b++)
        assert_memory_equal(c.pooled + b * C, c.hidden + ((size_t)b * T + c.pos[b]) * C,
                            C * sizeof(float));
    pool_backward(dh, c.R, c.pos, B, T, C, c.how);
    check_grad("pool last dhidden", pool_loss, &c, c.hidden, dh, (size_t)N * C, &rng);

    c.how = GRAFT_POOL_MEAN;
    pool_loss(&c);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++) {
            double mean = 0;
            for (int t = 0; t <= c.pos[b]; t++) mean += c.hidden[((size_t)b * T + t) * C + ch];
            mean /= c.pos[b] + 1;
            assert_float_equal(c.pooled[b * C + ch], mean, 1e-6);
        }
    pool_backward(dh, c.R, c.pos, B, T, C, c.how);
    assert_float_equal(dh[(size_t)1 * C], c.R[0] / 4.0f, 1e-7); /* row 0, t = 1 */
    assert_float_equal(dh[(size_t)4 * C], 0.0f, 0.0f);          /* row 0, t = 4: padding */
    check_grad("pool mean dhidden", pool_loss, &c, c.hidden, dh, (size_t)N * C, &rng);
    test_free(c.hidden), test_free(c.pooled), test_free(c.R), test_free(dh);
}

/* ---- softmax and cross-entropy ------------------------------------------ */

typedef struct {
    int32_t targets[N];
    float *logits, *losses, *probs;
    int count;
} ce_ctx;

/* The summed loss (not the mean), so that its gradient is probs - onehot
 * with scale 1 and of order one. */
static double ce_loss(void *p) {
    ce_ctx *c = p;
    crossentropy_forward(c->losses, c->probs, c->logits, c->targets, N, V, &c->count);
    double sum = 0;
    for (int i = 0; i < N; i++) sum += c->losses[i];
    return sum;
}

static void test_crossentropy(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 11, 0);
    ce_ctx c = {.targets = {2, -1, 0, 6, -1, 3, 3, -1, 1, 5}};
    c.logits = new_uniform(&rng, (size_t)N * V, -3, 3);
    c.losses = new_zeros(N);
    c.probs = new_zeros((size_t)N * V);

    double mean = crossentropy_forward(c.losses, c.probs, c.logits, c.targets, N, V, &c.count);
    assert_int_equal(c.count, 7);
    double total = 0;
    for (int i = 0; i < N; i++) {
        if (c.targets[i] < 0) {
            assert_true(c.losses[i] == 0.0f);
            continue;
        }
        const float *x = c.logits + i * V;
        double lse = 0; /* -log softmax in double */
        for (int v = 0; v < V; v++) lse += exp(x[v]);
        double want = log(lse) - x[c.targets[i]];
        assert_float_equal(c.losses[i], want, 1e-5);
        total += want;
    }
    assert_float_equal(mean, total / 7, 1e-5);

    /* dlogits of the summed loss: scale 1. */
    float *dl = new_uniform(&rng, (size_t)N * V, -9, 9); /* garbage: written, not accumulated */
    crossentropy_backward(dl, c.probs, c.targets, N, V, 1.0f);
    for (int i = 0; i < N; i++)
        if (c.targets[i] < 0)
            for (int v = 0; v < V; v++) assert_true(dl[i * V + v] == 0.0f);
    check_grad("crossentropy dlogits", ce_loss, &c, c.logits, dl, (size_t)N * V, &rng);

    /* The mean's gradient is the same times 1/count. */
    float *dmean = new_zeros((size_t)N * V);
    ce_loss(&c);
    crossentropy_backward(dmean, c.probs, c.targets, N, V, 1.0f / 7);
    for (int i = 0; i < N * V; i++) assert_float_equal(dmean[i], dl[i] / 7, 1e-7);

    /* Every target ignored: loss 0, count 0, zero gradient. */
    int32_t none[N];
    for (int i = 0; i < N; i++) none[i] = -1;
    int count = -5;
    assert_true(crossentropy_forward(c.losses, c.probs, c.logits, none, N, V, &count) == 0.0f);
    assert_int_equal(count, 0);
    crossentropy_backward(dl, c.probs, none, N, V, 1.0f);
    for (int i = 0; i < N * V; i++) assert_true(dl[i] == 0.0f);
    test_free(c.logits), test_free(c.losses), test_free(c.probs), test_free(dl), test_free(dmean);
}

static void test_softmax_rows(void **state) {
    (void)state;
    enum { K = 9, NS = 4 };
    graft_rng_t rng;
    graft_rng_seed(&rng, 12, 0);
    float *x = new_uniform(&rng, NS * K, -5, 5);
    x[K + 2] = 1000.0f; /* large logits must not overflow */
    x[K + 3] = 999.0f;
    float *y = new_zeros(NS * K);
    softmax_rows(y, x, NS, K);
    for (int i = 0; i < NS; i++) {
        double mx = -INFINITY, z = 0;
        for (int k = 0; k < K; k++) mx = fmax(mx, x[i * K + k]);
        for (int k = 0; k < K; k++) z += exp(x[i * K + k] - mx);
        for (int k = 0; k < K; k++) {
            double want = exp(x[i * K + k] - mx) / z;
            assert_float_equal(y[i * K + k], want, 1e-6);
        }
    }
    assert_float_equal(y[K + 2], 1.0 / (1.0 + exp(-1.0)), 1e-6);
    softmax_rows(x, x, NS, K); /* in place */
    assert_memory_equal(x, y, NS * K * sizeof(float));
    test_free(x), test_free(y);
}

/* ---- accumulation and determinism --------------------------------------- */

/* The gradient conventions of ops.h: a backward writes its input gradients
 * (the first n_in buffers: prefilled with garbage, two calls give what one
 * gives) and adds into its parameter gradients (the others: two calls give
 * twice one call). */
static void test_backward_write_and_accumulate(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 13, 0);
    size_t nc = (size_t)N * C;
    float *dout = new_uniform(&rng, nc * 4, -1, 1); /* big enough for every dout below */
    float *g1[3], *g2[3];
    size_t sz[3];
#define RUN_TWICE(what, n_in, call)                                              \
    do {                                                                         \
        float **g = g1;                                                          \
        for (int i = 0; i < 3; i++) {                                            \
            g1[i] = new_zeros(sz[i]), g2[i] = new_zeros(sz[i]);                  \
            for (size_t j = 0; i < (n_in) && j < sz[i]; j++)                     \
                g1[i][j] = g2[i][j] = 7.0f;                                      \
        }                                                                        \
        call;                                                                    \
        g = g2;                                                                  \
        call;                                                                    \
        call;                                                                    \
        for (int i = 0; i < 3; i++) {                                            \
            if (i < (n_in))                                                      \
                assert_memory_equal(g1[i], g2[i], sz[i] * sizeof(float));        \
            else                                                                 \
                assert_doubled(what, g1[i], g2[i], sz[i]);                       \
            test_free(g1[i]), test_free(g2[i]);                                  \
        }                                                                        \
    } while (0)

    int32_t tok[N] = {3, 1, 3, 5, 2, 5, 3, 4, 1, 2};
    sz[0] = (size_t)V * C, sz[1] = (size_t)T * C, sz[2] = 1;
    RUN_TWICE("encoder", 0, encoder_backward(g[0], g[1], dout, tok, B, T, C));

    ln_ctx ln = ln_new(&rng, N, C);
    ln_loss(&ln);
    sz[0] = nc, sz[1] = C, sz[2] = C;
    RUN_TWICE("layernorm", 1, layernorm_backward(g[0], g[1], g[2], NULL, dout, ln.inp, ln.w,
                                                 ln.mean, ln.rstd, N, C));
    ln_free(&ln);

    enum { OC = 9 };
    mm_ctx mm = mm_new(&rng, N, C, OC);
    sz[0] = nc, sz[1] = (size_t)C * OC, sz[2] = OC;
    RUN_TWICE("matmul", 1, matmul_backward(g[0], g[1], g[2], dout, mm.inp, mm.w, N, C, OC));
    mm_free(&mm);

    float *x = new_uniform(&rng, nc, -1, 1), *wte = new_uniform(&rng, (size_t)V * C, -1, 1);
    sz[0] = nc, sz[1] = (size_t)V * C, sz[2] = 1;
    RUN_TWICE("lmhead", 1, lmhead_backward(g[0], g[1], dout, x, wte, N, C, V));

    att_ctx at = att_new(&rng);
    att_loss(&at);
    float *scratch = new_zeros((size_t)B * NH * T * T);
    sz[0] = nc * 3, sz[1] = 1, sz[2] = 1;
    RUN_TWICE("attention", 1,
              attention_backward(g[0], scratch, dout, at.inp, at.att, B, T, C, NH));
    att_free(&at);

    sz[0] = nc, sz[1] = 1, sz[2] = 1;
    RUN_TWICE("gelu", 1, gelu_backward(g[0], x, dout, nc));
    int32_t pos[B] = {4, 2};
    RUN_TWICE("pool last", 1, pool_backward(g[0], dout, pos, B, T, C, GRAFT_POOL_LAST));
    RUN_TWICE("pool mean", 1, pool_backward(g[0], dout, pos, B, T, C, GRAFT_POOL_MEAN));
    sz[0] = C, sz[1] = C, sz[2] = 1;
    RUN_TWICE("colsum", 0, (colsum_accumulate(g[0], dout, N, C),
                            colsum_product_accumulate(g[1], dout, x, N, C)));
#undef RUN_TWICE
    test_free(dout), test_free(x), test_free(wte), test_free(scratch);
}

/* The row reductions (layernorm dweight/dbias, matmul dbias, the colsum
 * helpers) and the BLAS calls give bit-identical results on repeated calls,
 * on shapes big enough to be split across threads. */
static void test_backward_deterministic(void **state) {
    (void)state;
    enum { NB = 301, CB = 67, OB = 45, REPEATS = 5 };
    graft_rng_t rng;
    graft_rng_seed(&rng, 14, 0);
    float *dout = new_uniform(&rng, (size_t)NB * OB, -1, 1);
    ln_ctx ln = ln_new(&rng, NB, CB);
    ln_loss(&ln);
    mm_ctx mm = mm_new(&rng, NB, CB, OB);
    mm_loss(&mm); /* mm.out: a second (N,OB) operand for the product sums */
    size_t sizes[6] = {(size_t)NB * CB, CB, CB, (size_t)NB * CB, (size_t)CB * OB, OB};
    float *first[6], *again[6];
    for (int i = 0; i < 6; i++) first[i] = new_zeros(sizes[i]), again[i] = new_zeros(sizes[i]);
    layernorm_backward(first[0], first[1], first[2], NULL, ln.R, ln.inp, ln.w, ln.mean, ln.rstd,
                       NB, CB);
    matmul_backward(first[3], first[4], first[5], dout, mm.inp, mm.w, NB, CB, OB);
    for (int r = 0; r < REPEATS; r++) {
        for (int i = 0; i < 6; i++) memset(again[i], 0, sizes[i] * sizeof(float));
        layernorm_backward(again[0], again[1], again[2], NULL, ln.R, ln.inp, ln.w, ln.mean,
                           ln.rstd, NB, CB);
        matmul_backward(again[3], again[4], again[5], dout, mm.inp, mm.w, NB, CB, OB);
        for (int i = 0; i < 6; i++)
            assert_memory_equal(first[i], again[i], sizes[i] * sizeof(float));
    }
    /* the sums are the right ones, not just repeatable */
    for (int ch = 0; ch < CB; ch++) {
        double db = 0;
        for (int i = 0; i < NB; i++) db += ln.R[(size_t)i * CB + ch];
        assert_float_equal(first[2][ch], db, 1e-4);
    }
    for (int o = 0; o < OB; o++) {
        double db = 0;
        for (int i = 0; i < NB; i++) db += dout[(size_t)i * OB + o];
        assert_float_equal(first[5][o], db, 1e-4);
    }
    /* the shared column reductions behind them */
    float *cs = new_zeros(OB), *cs2 = new_zeros(OB);
    colsum_product_accumulate(cs, dout, mm.out, NB, OB);
    for (int r = 0; r < REPEATS; r++) {
        memset(cs2, 0, OB * sizeof(float));
        colsum_product_accumulate(cs2, dout, mm.out, NB, OB);
        assert_memory_equal(cs, cs2, OB * sizeof(float));
    }
    for (int o = 0; o < OB; o++) {
        double want = 0;
        for (int i = 0; i < NB; i++)
            want += (double)dout[(size_t)i * OB + o] * mm.out[(size_t)i * OB + o];
        assert_float_equal(cs[o], want, 1e-4);
    }
    test_free(cs), test_free(cs2);
    for (int i = 0; i < 6; i++) test_free(first[i]), test_free(again[i]);
    test_free(dout);
    ln_free(&ln);
    mm_free(&mm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoder_grad),
        cmocka_unit_test(test_layernorm_grad),
        cmocka_unit_test(test_matmul_grad),
        cmocka_unit_test(test_matmul_vs_naive),
        cmocka_unit_test(test_lmhead_grad),
        cmocka_unit_test(test_attention_grad),
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_long),
        cmocka_unit_test(test_gelu_grad),
        cmocka_unit_test(test_residual_grad),
        cmocka_unit_test(test_pool_grad),
        cmocka_unit_test(test_crossentropy),
        cmocka_unit_test(test_softmax_rows),
        cmocka_unit_test(test_backward_write_and_accumulate),
        cmocka_unit_test(test_backward_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
