/* test_bf16.c — the bf16 products (common/bf16.c) and a trunk running them.
 *
 * The products are checked against a double-precision evaluation of the
 * same sums on bf16-rounded operands, so the only difference left is the
 * fp32 summation: |err| <= SUM_TOL * sum_k |a_k b_k| (+ the fp32 rounding
 * of the initial value for dW), with SUM_TOL = 1e-5, about 20x the error of
 * a 2048-term fp32 sum; a wrong element, a dropped pair or an unrounded
 * operand gives errors of order 1e-3 and more. Shapes cover every tail of
 * the tiling: rows not a multiple of 8, columns not a multiple of 48 (and
 * below 16), odd K.
 *
 * The whole small trunk at bf16 against fp32 (same weights and batch of 2 x
 * 128 tokens, so every product is large enough to run at bf16; see
 * BF16_MIN_MACS in gpt2.c): the loss within 1% and every parameter
 * gradient within a cosine of 0.999 of fp32's: bf16 rounds each operand by
 * at most 2^-9 relative.
 *
 * On a CPU without AVX512_BF16 every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <omp.h>

#include "bf16.h"
#include "gpt2.h"
#include "rng.h"

#define SUM_TOL 1e-5

static void require_bf16(void) {
    if (!graft_bf16_supported()) skip();
}

static float *random_floats(graft_rng_t *rng, size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * graft_rng_uniform(rng) - 1.0f;
    return x;
}

static float r(float x) { return graft_bf16_round(x); }

static void test_round(void **state) {
    (void)state;
    assert_true(r(1.0f) == 1.0f);
    assert_true(r(-2.5f) == -2.5f);
    /* halfway between 1 and 1 + 2^-7: ties go to the even neighbour, 1 */
    assert_true(r(1.0f + 0x1p-8f) == 1.0f);
    /* halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 (even) */
    assert_true(r(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);
    /* above halfway rounds up */
    assert_true(r(1.0f + 0x1p-8f + 0x1p-12f) == 1.0f + 0x1p-7f);
    assert_true(r(3.14159265f) == 3.140625f);
    /* infinities stay; every NaN stays a NaN: rounding the bits of
     * 0x7fffffff carried into the sign (-0), of 0x7f800001 into Inf */
    assert_true(r(INFINITY) == INFINITY && r(-INFINITY) == -INFINITY);
    static const uint32_t nans[] = {0x7fc00000u, 0x7fffffffu, 0x7f800001u, 0xffffffffu,
                                    0xff800001u, 0x7fbfffffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float x;
        memcpy(&x, &nans[i], sizeof x);
        if (!isnan(r(x))) fail_msg("NaN 0x%08x rounds to %g", nans[i], (double)r(x));
    }
}

/* got (M, Nc), rows at stride ldg, against init + A @ B in double on
 * bf16-rounded operands:
 * element (i, j) of A at A[i * a_row + k * a_k], of B at B[k * b_k +
 * j * b_col]; init (NULL: 0) at init[i * init_row + j] (init_row 0: one
 * row for all, as a bias). */
static void check_product(const float *got, size_t ldg, const float *init, size_t init_row,
                          int M, int Nc, int K, const float *A, size_t a_row, size_t a_k,
                          const float *B, size_t b_k, size_t b_col) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < Nc; j++) {
            double want = init ? init[(size_t)i * init_row + j] : 0.0, mag = fabs(want);
            for (int k = 0; k < K; k++) {
                double t = (double)r(A[(size_t)i * a_row + (size_t)k * a_k]) *
                           r(B[(size_t)k * b_k + (size_t)j * b_col]);
                want += t;
                mag += fabs(t);
            }
            assert_true(fabs(got[(size_t)i * ldg + j] - want) <= SUM_TOL * mag);
        }
}

/* forward, dinp and dW of one shape against the double evaluation. */
static void check_shape(int N, int C, int OC) {
    graft_rng_t rng;
    graft_rng_seed(&rng, (uint64_t)(N * 1000003 + C * 1009 + OC), 3);
    float *inp = random_floats(&rng, (size_t)N * C), *W = random_floats(&rng, (size_t)C * OC);
    float *bias = random_floats(&rng, (size_t)OC), *dout = random_floats(&rng, (size_t)N * OC);
    float *dW = random_floats(&rng, (size_t)C * OC), *dW0 = malloc((size_t)C * OC * sizeof(float));
    memcpy(dW0, dW, (size_t)C * OC * sizeof(float));
    float *out = malloc((size_t)N * OC * sizeof(float));
    float *dinp = malloc((size_t)N * C * sizeof(float));
    graft_bf16_scratch_t s = {0};
    bf16_matmul_forward(&s, out, inp, W, bias, N, C, OC);
    bf16_matmul_backward(&s, dinp, dW, dout, inp, W, N, C, OC);

    /* out = inp @ W + bias; dinp = dout @ W^T; dW = dW0 + inp^T @ dout */
    check_product(out, OC, bias, 0, N, OC, C, inp, C, 1, W, OC, 1);
    check_product(dinp, C, NULL, 0, N, C, OC, dout, OC, 1, W, 1, OC);
    check_product(dW, OC, dW0, OC, C, OC, N, inp, 1, C, dout, OC, 1);
    graft_bf16_scratch_free(&s);
    free(inp), free(W), free(bias), free(dout), free(dW), free(dW0), free(out), free(dinp);
}

static void test_products(void **state) {
    (void)state;
    require_bf16();
    check_shape(37, 21, 53);   /* every tail at once */
    check_shape(17, 7, 100);   /* K odd and tiny; 100 = 2 panels + 4 */
    check_shape(9, 2, 1);      /* one column */
    check_shape(64, 192, 576); /* the small trunk's qkv, whole tiles */
    check_shape(130, 96, 40);  /* N past a 64-row block, one short panel */
}

/* Results do not depend on the threads: the same bits at 1 and 2. */
static void test_threads(void **state) {
    (void)state;
    require_bf16();
    const int N = 300, C = 64, OC = 200;
    graft_rng_t rng;
    graft_rng_seed(&rng, 11, 3);
    float *inp = random_floats(&rng, (size_t)N * C), *W = random_floats(&rng, (size_t)C * OC);
    float *dout = random_floats(&rng, (size_t)N * OC);
    float *out[2], *dinp[2], *dW[2];
    graft_bf16_scratch_t s = {0};
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        out[k] = malloc((size_t)N * OC * sizeof(float));
        dinp[k] = malloc((size_t)N * C * sizeof(float));
        dW[k] = calloc((size_t)C * OC, sizeof(float));
        bf16_matmul_forward(&s, out[k], inp, W, NULL, N, C, OC);
        bf16_matmul_backward(&s, dinp[k], dW[k], dout, inp, W, N, C, OC);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(out[0], out[1], (size_t)N * OC * sizeof(float));
    assert_memory_equal(dinp[0], dinp[1], (size_t)N * C * sizeof(float));
    assert_memory_equal(dW[0], dW[1], (size_t)C * OC * sizeof(float));
    for (int k = 0; k < 2; k++) free(out[k]), free(dinp[k]), free(dW[k]);
    graft_bf16_scratch_free(&s);
    free(inp), free(W), free(dout);
}

/* max |got - want| over n values, against tol * max |want|. */
static void check_close(const float *got, const double *want, size_t n, double tol,
                        const char *what) {
    double err = 0.0, mag = 0.0;
    for (size_t i = 0; i < n; i++) {
        err = fmax(err, fabs(got[i] - want[i]));
        mag = fmax(mag, fabs(want[i]));
    }
    if (err > tol * mag) fail_msg("%s: max error %.3g against max %.3g", what, err, mag);
}

/* The bf16 attention of one shape: its softmax P (att) and score gradient
 * dS (scratch) against double evaluations from bf16-rounded q, k, v and
 * dO, within 1e-4 of their largest value (fp32 sums and exp); out, dq, dk
 * and dv against the double products of the kernel's own P and dS, rounded
 * to bf16, with the products' tolerance. The same bits at 1 and 2
 * threads. */
static void check_attention(int B, int T, int C, int NH) {
    int hs = C / NH;
    size_t C3 = (size_t)3 * C, nq = (size_t)B * T * C3, no = (size_t)B * T * C;
    size_t na = (size_t)B * NH * T * T;
    double scale = 1.0 / sqrt((double)hs);
    graft_rng_t rng;
    graft_rng_seed(&rng, (uint64_t)(T * 1009 + C), 9);
    float *inp = random_floats(&rng, nq), *dout = random_floats(&rng, no);
    float *out[2], *att[2], *dinp[2], *ds[2];
    graft_bf16_scratch_t s = {0};
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        out[k] = malloc(no * sizeof(float)), dinp[k] = malloc(nq * sizeof(float));
        att[k] = malloc(na * sizeof(float)), ds[k] = malloc(na * sizeof(float));
        bf16_attention_forward(&s, out[k], att[k], inp, B, T, C, NH);
        bf16_attention_backward(&s, dinp[k], ds[k], dout, inp, att[k], B, T, C, NH);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(out[0], out[1], no * sizeof(float));
    assert_memory_equal(att[0], att[1], na * sizeof(float));
    assert_memory_equal(dinp[0], dinp[1], nq * sizeof(float));

    double *want = malloc((size_t)T * T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = inp + (size_t)b * T * C3 + (size_t)h * hs, *kk = q + C, *v = q + 2 * C;
            const float *dO = dout + (size_t)b * T * C + (size_t)h * hs;
            const float *P = att[0] + ((size_t)b * NH + h) * T * T;
            const float *dS = ds[0] + ((size_t)b * NH + h) * T * T;
            float *o = out[0] + (size_t)b * T * C + (size_t)h * hs;
            float *dq = dinp[0] + (size_t)b * T * C3 + (size_t)h * hs;
            /* P = causal softmax(scale q k^T), 0 past the diagonal */
            for (int t = 0; t < T; t++) {
                double *row = want + (size_t)t * T, mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < T; j++) {
                    double d = 0.0;
                    for (int c = 0; c < hs; c++)
                        d += (double)r(q[(size_t)t * C3 + c]) * r(kk[(size_t)j * C3 + c]);
                    row[j] = scale * d;
                    if (j <= t) mx = fmax(mx, row[j]);
                }
                for (int j = 0; j < T; j++) sum += j <= t ? exp(row[j] - mx) : 0.0;
                for (int j = 0; j < T; j++) row[j] = j <= t ? exp(row[j] - mx) / sum : 0.0;
            }
            check_close(P, want, (size_t)T * T, 1e-4, "attention P");
            /* dS = scale P (dP - rowsum(P dP)), dP = dO v^T */
            for (int t = 0; t < T; t++) {
                double *row = want + (size_t)t * T, dot = 0.0;
                for (int j = 0; j < T; j++) {
                    double d = 0.0;
                    for (int c = 0; c < hs; c++)
                        d += (double)r(dO[(size_t)t * C + c]) * r(v[(size_t)j * C3 + c]);
                    row[j] = d;
                    dot += P[(size_t)t * T + j] * d;
                }
                for (int j = 0; j < T; j++)
                    row[j] = scale * P[(size_t)t * T + j] * (row[j] - dot);
            }
            check_close(dS, want, (size_t)T * T, 1e-4, "attention dS");
            /* out = P v; dq = dS k; dk = dS^T q; dv = P^T dO */
            check_product(o, C, NULL, 0, T, hs, T, P, T, 1, v, C3, 1);
            check_product(dq, C3, NULL, 0, T, hs, T, dS, T, 1, kk, C3, 1);
            check_product(dq + C, C3, NULL, 0, T, hs, T, dS, 1, T, q, C3, 1);
            check_product(dq + 2 * C, C3, NULL, 0, T, hs, T, P, 1, T, dO, C, 1);
        }
    free(want);
    for (int k = 0; k < 2; k++) free(out[k]), free(att[k]), free(dinp[k]), free(ds[k]);
    graft_bf16_scratch_free(&s);
    free(inp), free(dout);
}

static void test_attention(void **state) {
    (void)state;
    require_bf16();
    check_attention(2, 37, 60, 3);   /* T not a multiple of 8 or 48, hs = 20 */
    check_attention(1, 50, 30, 2);   /* hs = 15: odd, under one vector */
    check_attention(2, 128, 192, 4); /* the small trunk's heads, hs = 48 */
    check_attention(1, 100, 128, 2); /* hs = 64: a panel and a third */
}

/* The small trunk's loss and gradients at bf16 next to fp32. */
static void test_trunk(void **state) {
    (void)state;
    require_bf16();
    graft_gpt2_config_t cfg;
    assert_int_equal(graft_gpt2_preset("small", &cfg), GRAFT_OK);
    graft_gpt2_t *m[2];
    const int B = 2, T = cfg.T;
    int32_t *inp = malloc((size_t)B * T * sizeof(int32_t));
    int32_t *tgt = malloc((size_t)B * T * sizeof(int32_t));
    graft_rng_t rng;
    graft_rng_seed(&rng, 5, 1);
    for (int i = 0; i < B * T; i++) {
        inp[i] = (int32_t)graft_rng_below(&rng, (uint32_t)cfg.V);
        tgt[i] = (int32_t)graft_rng_below(&rng, (uint32_t)cfg.V);
    }
    float loss[2];
    for (int k = 0; k < 2; k++) {
        m[k] = graft_gpt2_new(&cfg, 42);
        assert_int_equal(graft_gpt2_set_precision(m[k], k ? "bf16" : "fp32"), GRAFT_OK);
        graft_gpt2_enable_grads(m[k]);
        loss[k] = graft_gpt2_forward(m[k], inp, tgt, B, T);
        graft_gpt2_zero_grad(m[k]);
        graft_gpt2_backward(m[k]);
    }
    assert_true(fabsf(loss[1] - loss[0]) < 0.01f * loss[0]);
    /* every tensor's gradient: cosine to fp32's */
    int n = graft_gpt2_num_named(&cfg);
    graft_gpt2_tensor_t *g0 = calloc((size_t)n, sizeof *g0);
    graft_gpt2_named(m[0], g0);
    for (int t = 0; t < n; t++) {
        size_t off = g0[t].offset, cnt = g0[t].numel;
        const float *a = m[0]->grads_memory + off, *b = m[1]->grads_memory + off;
        double ab = 0, aa = 0, bb = 0;
        for (size_t i = 0; i < cnt; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i],
                                         bb += (double)b[i] * b[i];
        if (aa == 0.0) continue;
        double cosine = ab / sqrt(aa * bb);
        if (cosine < 0.999) fail_msg("%s: gradient cosine %.5f to fp32", g0[t].name, cosine);
    }
    free(g0), free(inp), free(tgt);
    graft_gpt2_destroy(&m[0]);
    graft_gpt2_destroy(&m[1]);
}

/* An unknown precision and (where the CPU lacks it) bf16 are refused. */
static void test_set_precision(void **state) {
    (void)state;
    graft_gpt2_config_t cfg;
    assert_int_equal(graft_gpt2_preset("tiny", &cfg), GRAFT_OK);
    graft_gpt2_t *m = graft_gpt2_new(&cfg, 1);
    graft_log_level = GRAFT_LOG_ERROR + 1; /* the refusals log errors */
    assert_int_equal(graft_gpt2_set_precision(m, "fp16"), GRAFT_EINVAL);
    assert_int_equal(graft_gpt2_set_precision(m, "bf16"),
                     graft_bf16_supported() ? GRAFT_OK : GRAFT_EINVAL);
    graft_log_level = GRAFT_LOG_INFO;
    assert_int_equal(graft_gpt2_set_precision(m, "fp32"), GRAFT_OK);
    assert_int_equal(m->precision, GRAFT_FP32);
    graft_gpt2_destroy(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round),
        cmocka_unit_test(test_products),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_trunk),
        cmocka_unit_test(test_set_precision),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
