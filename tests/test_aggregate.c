/* test_aggregate.c — the aggregation strategies (coordinator/aggregate.c):
 *  - the fixed-point streaming mean: every arrival order (and any grouping
 *    of partial sums, as an MPI reduction tree makes) gives the same bits,
 *    although a float sum in arrival order does not; the error against a
 *    float64 reference mean stays within the bound aggregate.h states;
 *    overflow is caught (per reply, and for the sum) and leaves the scope
 *    unchanged;
 *  - clipping, median (odd and even counts), trimmed mean and one FedAdam
 *    step against hand-computed values;
 *  - LoRA: the gap avg(A)avg(B) vs avg(AB) on a hand example, the SVD
 *    truncation recovering an exactly rank-r average, freeze_a giving a gap
 *    of exactly 0 and rejecting a changed A;
 *  - the option parser, the FedProx gradient and frozen tensors in a scope,
 *    and the scalar mean used for round metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include <cmocka.h>

#include "aggregate.h"
#include "lora_merge.h"
#include "rng.h"

/* ---- helpers --------------------------------------------------------------- */

static graft_agg_config_t config(graft_agg_combiner_t combiner) {
    return (graft_agg_config_t){.combiner = combiner, .server_lr = 0.01f, .server_beta1 = 0.9f,
                                .server_beta2 = 0.99f, .server_eps = 1e-3f, .trim_frac = 0.2f};
}

/* Streams the replies in `order` into one accumulator and finishes it. */
static int stream(const graft_agg_config_t *c, graft_agg_plan_t *plan, const float *global,
                  const float *const *xs, const uint64_t *ws, const int *order, int n, float *dst,
                  float *state, graft_agg_report_t *rep) {
    graft_agg_plan_round(plan, global);
    int64_t *acc = calloc(plan->len, sizeof *acc), *one = calloc(plan->len, sizeof *one);
    char why[256];
    for (int i = 0; i < n; i++) {
        int k = order ? order[i] : i;
        if (graft_agg_contribution(plan, xs[k], ws[k], one, why, sizeof why) == GRAFT_OK)
            graft_agg_add(acc, one, plan->len);
    }
    int changed = graft_agg_finish(c, plan, acc, dst, state, rep);
    free(acc);
    free(one);
    return changed;
}

static int next_perm(int *a, int n) {
    int i = n - 2;
    while (i >= 0 && a[i] >= a[i + 1]) i--;
    if (i < 0) return 0;
    int j = n - 1;
    while (a[j] <= a[i]) j--;
    int t = a[i]; a[i] = a[j]; a[j] = t;
    for (int l = i + 1, r = n - 1; l < r; l++, r--) { t = a[l]; a[l] = a[r]; a[r] = t; }
    return 1;
}

/* ---- the fixed-point mean ---------------------------------------------------- */

#define N 5
#define NUMEL 4096

static float g_vals[NUMEL], x_vals[N][NUMEL];
static const uint64_t weights[N] = {17, 3, 1000, 250, 1};

/* Deltas of very different magnitudes, so that float addition order matters. */
static void fill(void) {
    graft_rng_t rng;
    graft_rng_seed(&rng, 42, 7);
    static const float scale[N] = {1.0f, 1e-3f, 30.0f, 1e-6f, 0.2f};
    for (int j = 0; j < NUMEL; j++) g_vals[j] = graft_rng_normal(&rng) * 0.5f;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < NUMEL; j++) x_vals[i][j] = g_vals[j] + graft_rng_normal(&rng) * scale[i];
}

static void mean_in_order(graft_agg_plan_t *plan, const int *order, float *out) {
    const float *xs[N];
    for (int i = 0; i < N; i++) xs[i] = x_vals[i];
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, plan, g_vals, xs, weights, order, N, out, NULL, &rep), 1);
    assert_int_equal(rep.weight, 17 + 3 + 1000 + 250 + 1);
    assert_int_equal(rep.rejected, 0);
    assert_int_equal(rep.overflow, 0);
}

static void test_error_bound(void **state) {
    (void)state;
    fill();
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, NUMEL, NULL, 0, 0, 0.0f, 0);
    static float out[NUMEL];
    mean_in_order(&plan, NULL, out);
    double W = 0, bound = ldexp(1.0, -GRAFT_AGG_FRAC_BITS - 1);
    for (int i = 0; i < N; i++) W += (double)weights[i];
    int exact = 0;
    for (int j = 0; j < NUMEL; j++) {
        double m = 0;
        for (int i = 0; i < N; i++) m += (double)weights[i] * x_vals[i][j];
        m /= W;
        double half_ulp = (nextafterf(fabsf(out[j]), INFINITY) - fabsf(out[j])) / 2.0;
        assert_true(fabs(out[j] - m) <= bound + 0x1p-52 * fabs(m) * 4 + half_ulp);
        exact += out[j] == (float)m;
    }
    /* Off by one float only when m is within 2^-37 of a rounding boundary. */
    assert_true(exact >= NUMEL - 2);
    graft_agg_plan_free(&plan);
}

/* A naive float weighted sum in arrival order, to show order matters. */
static void naive_in_order(const int *order, float *out) {
    float total = 0;
    for (int i = 0; i < N; i++) total += (float)weights[order[i]];
    for (int j = 0; j < NUMEL; j++) {
        float acc = 0;
        for (int i = 0; i < N; i++) acc += (float)weights[order[i]] / total * x_vals[order[i]][j];
        out[j] = acc;
    }
}

static void test_order_independent(void **state) {
    (void)state;
    fill();
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, NUMEL, NULL, 0, 0, 0.0f, 0);
    int order[N] = {0, 1, 2, 3, 4};
    static float first[NUMEL], out[NUMEL], naive0[NUMEL], naive[NUMEL];
    mean_in_order(&plan, order, first);
    naive_in_order(order, naive0);
    int perms = 0, naive_differs = 0;
    while (next_perm(order, N)) {
        mean_in_order(&plan, order, out);
        assert_memory_equal(first, out, sizeof out);
        naive_in_order(order, naive);
        naive_differs |= memcmp(naive0, naive, sizeof naive) != 0;
        perms++;
    }
    assert_int_equal(perms, 119);
    assert_true(naive_differs); /* the inputs do exercise order sensitivity */

    /* A reduction tree: ({0, 3} + {4}) + ({2} + {1}) as separate partial sums. */
    graft_agg_plan_round(&plan, g_vals);
    int64_t *c[N], *left = calloc(plan.len, 8), *right = calloc(plan.len, 8);
    char why[128];
    for (int i = 0; i < N; i++) {
        c[i] = calloc(plan.len, 8);
        assert_int_equal(graft_agg_contribution(&plan, x_vals[i], weights[i], c[i], why, sizeof why),
                         GRAFT_OK);
    }
    graft_agg_add(left, c[0], plan.len);
    graft_agg_add(left, c[3], plan.len);
    graft_agg_add(left, c[4], plan.len);
    graft_agg_add(right, c[2], plan.len);
    graft_agg_add(right, c[1], plan.len);
    graft_agg_add(right, left, plan.len);
    graft_agg_config_t cfg = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(graft_agg_finish(&cfg, &plan, right, out, NULL, &rep), 1);
    assert_memory_equal(first, out, sizeof out);
    for (int i = 0; i < N; i++) free(c[i]);
    free(left);
    free(right);
    graft_agg_plan_free(&plan);
}

static void test_empty_round(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 3, NULL, 0, 0, 0.0f, 0);
    float g[3] = {1, 2, 3}, dst[3] = {7, 8, 9};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, &plan, g, NULL, NULL, NULL, 0, dst, NULL, &rep), 0);
    assert_true(dst[0] == 7 && dst[1] == 8 && dst[2] == 9);
    assert_int_equal(rep.weight, 0);
    graft_agg_plan_free(&plan);
}

static void test_overflow(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, NULL, 0, 0, 0.0f, 0);
    float g[2] = {0, 1};
    graft_agg_plan_round(&plan, g);
    int64_t c[2 + GRAFT_AGG_TAIL];
    char why[256];
    /* One reply beyond the representable range is rejected on its own. */
    float far[2] = {0x1p27f, 1};
    assert_int_equal(graft_agg_contribution(&plan, far, 1, c, why, sizeof why), GRAFT_EINVAL);
    assert_non_null(strstr(why, "fixed-point range"));
    assert_int_equal(c[2 + 2], 1);                     /* counted as rejected */
    assert_true(c[0] == 0 && c[2] == 0);              /* weight 0 */
    float inf[2] = {INFINITY, 1};
    assert_int_equal(graft_agg_contribution(&plan, inf, 1, c, why, sizeof why), GRAFT_EINVAL);
    assert_non_null(strstr(why, "not finite"));

    /* Each delta 2^25: w * q = 2^61 fits; three sum to 3 * 2^61 < 2^63 and are exact... */
    float big[2] = {0x1p25f, 1};
    const float *xs[4] = {big, big, big, big};
    uint64_t ws[4] = {1, 1, 1, 1};
    float dst[2] = {5, 5};
    graft_agg_config_t cfg = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&cfg, &plan, g, xs, ws, NULL, 3, dst, NULL, &rep), 1);
    assert_int_equal(rep.overflow, 0);
    assert_true(dst[0] == 0x1p25f && dst[1] == 1);
    /* ...four would wrap: the bound catches it and the scope stays as it was. */
    dst[0] = dst[1] = 5;
    assert_int_equal(stream(&cfg, &plan, g, xs, ws, NULL, 4, dst, NULL, &rep), 0);
    assert_int_equal(rep.overflow, 1);
    assert_true(dst[0] == 5 && dst[1] == 5);
    graft_agg_plan_free(&plan);
}

/* ---- clipping, median, trimmed mean, FedAdam -------------------------------------- */

static void test_clip(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, NULL, 0, 0, 1.0f, 0);
    float g[2] = {1, 1}, x1[2] = {4, 5}, x2[2] = {1.3f, 1}, dst[2];
    /* x1's delta (3, 4) has norm 5: clipped to (0.6, 0.8); x2's (0.3, 0) is kept. */
    const float *xs[2] = {x1, x2};
    uint64_t ws[2] = {1, 1};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 1, dst, NULL, &rep), 1);
    assert_true(dst[0] == 1.6f && dst[1] == 1.8f);
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 2, dst, NULL, &rep), 1);
    /* mean of (0.6, 0.8) and (0.3 in float, 0) */
    assert_true(dst[0] == (float)(1.0 + (0.6 + ((double)1.3f - 1.0)) / 2) && dst[1] == 1.4f);
    /* The held values for median / trimmed mean are clipped the same way. */
    float held[2];
    char why[64];
    assert_int_equal(graft_agg_clipped(&plan, x1, held, why, sizeof why), GRAFT_OK);
    assert_true(held[0] == 1.6f && held[1] == 1.8f);
    graft_agg_plan_free(&plan);
}

static void test_median(void **state) {
    (void)state;
    graft_agg_config_t c = config(GRAFT_AGG_MEDIAN);
    /* Coordinates: odd count {3, 1, 2} -> 2, {-1, 5, 0} -> 0. */
    float a[2] = {3, -1}, b[2] = {1, 5}, d[2] = {2, 0}, dst[2];
    const float *odd[3] = {a, b, d};
    graft_agg_robust(&c, odd, 3, 2, dst);
    assert_true(dst[0] == 2 && dst[1] == 0);
    /* Even count {3, 1, 2, 4} -> (2 + 3) / 2, {-1, 5, 0, 10} -> (0 + 5) / 2. */
    float e[2] = {4, 10};
    const float *even[4] = {e, a, d, b};
    graft_agg_robust(&c, even, 4, 2, dst);
    assert_true(dst[0] == 2.5f && dst[1] == 2.5f);
}

static void test_trimmed_mean(void **state) {
    (void)state;
    graft_agg_config_t c = config(GRAFT_AGG_TRIMMED);
    float v[5][1] = {{100}, {1}, {2}, {3}, {-50}}, dst[1], again[1];
    const float *xs[5] = {v[0], v[1], v[2], v[3], v[4]};
    c.trim_frac = 0.2f; /* floor(0.2 * 5) = 1 dropped at each end: mean(1, 2, 3) */
    graft_agg_robust(&c, xs, 5, 1, dst);
    assert_true(dst[0] == 2.0f);
    const float *perm[5] = {v[3], v[0], v[4], v[2], v[1]};
    graft_agg_robust(&c, perm, 5, 1, again);
    assert_memory_equal(dst, again, sizeof dst);
    c.trim_frac = 0.1f; /* floor(0.5) = 0: the plain mean, 56 / 5 */
    graft_agg_robust(&c, xs, 5, 1, dst);
    assert_true(dst[0] == 11.2f);
}

static void test_fedadam_step(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, NULL, 0, 0, 0.0f, 0);
    float g[2] = {1.0f, -2.0f}, x[2] = {1.5f, -2.25f}, dst[2];
    float st[4] = {0.1f, 0.0f, 0.04f, 0.01f}; /* m then v from earlier rounds */
    const float *xs[1] = {x};
    uint64_t ws[1] = {40};
    graft_agg_config_t c = config(GRAFT_AGG_FEDADAM);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 1, dst, st, &rep), 1);
    /* By hand: D = (0.5, -0.25); m = 0.9 m + 0.1 D = (0.14, -0.025);
     * v = 0.99 v + 0.01 D^2 = (0.0421, 0.010525);
     * x = g + 0.01 m / (sqrt(v) + 0.001). */
    assert_true(fabsf(st[0] - 0.14f) < 1e-7f && fabsf(st[1] + 0.025f) < 1e-8f);
    assert_true(fabsf(st[2] - 0.0421f) < 1e-8f && fabsf(st[3] - 0.010525f) < 1e-8f);
    double want0 = 1.0 + 0.01 * 0.14 / (sqrt(0.0421) + 0.001);
    double want1 = -2.0 + 0.01 * -0.025 / (sqrt(0.010525) + 0.001);
    assert_true(fabs(dst[0] - want0) < 1e-6 && fabs(dst[1] - want1) < 1e-6);
    assert_true(dst[0] > 1.0067f && dst[0] < 1.0069f); /* 1.006790... */
    graft_agg_plan_free(&plan);
}

/* Two rounds of server momentum by hand; then beta 0 at rate 1 is fedavg. */
static void test_fedavgm_steps(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, NULL, 0, 0, 0.0f, 0);
    float g[2] = {1.0f, -2.0f}, x[2] = {1.5f, -2.25f}, dst[2];
    float st[4] = {0};
    const float *xs[1] = {x};
    uint64_t ws[1] = {40};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVGM);
    c.server_lr = 2.0f;
    graft_agg_report_t rep;
    /* Round 1: D = (0.5, -0.25), u = D, x = g + 2 u = (2, -2.5). */
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 1, dst, st, &rep), 1);
    assert_true(st[0] == 0.5f && st[1] == -0.25f);
    assert_true(dst[0] == 2.0f && dst[1] == -2.5f);
    /* Round 2 from g' = (2, -2.5), replies x' = (2.25, -2.5): D = (0.25, 0),
     * u = 0.9 u + D = (0.7, -0.225), x = g' + 2 u = (3.4, -2.95). */
    float g2[2] = {2.0f, -2.5f}, x2[2] = {2.25f, -2.5f};
    const float *xs2[1] = {x2};
    assert_int_equal(stream(&c, &plan, g2, xs2, ws, NULL, 1, dst, st, &rep), 1);
    assert_true(fabsf(st[0] - 0.7f) < 1e-7f && fabsf(st[1] + 0.225f) < 1e-7f);
    assert_true(fabsf(dst[0] - 3.4f) < 1e-6f && fabsf(dst[1] + 2.95f) < 1e-6f);
    /* beta 0, rate 1: the plain mean, whatever u held. */
    c.server_beta1 = 0.0f;
    c.server_lr = 1.0f;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 1, dst, st, &rep), 1);
    assert_true(dst[0] == 1.5f && dst[1] == -2.25f);
    graft_agg_plan_free(&plan);
}

/* ---- LoRA ---------------------------------------------------------------------------- */

/* The pair A (1, 1), B (1, 1): A = (1, 3), B = (2, 4) over two equal
 * replies. avg(A) avg(B) = 2 * 3 = 6, avg(AB) = (2 + 12) / 2 = 7: gap 1/7. */
static void test_gap_by_hand(void **state) {
    (void)state;
    graft_agg_pair_t pair = {.a = 0, .b = 1, .in = 1, .r = 1, .out = 1};
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, &pair, 1, 1, 0.0f, 0);
    float g[2] = {0.5f, 0}, x1[2] = {1, 2}, x2[2] = {3, 4}, dst[2];
    const float *xs[2] = {x1, x2};
    uint64_t ws[2] = {5, 5};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 2, dst, NULL, &rep), 1);
    assert_true(dst[0] == 2 && dst[1] == 3); /* factors: averaged */
    assert_true(fabs(rep.lora_gap - 1.0 / 7.0) < 1e-9);
    assert_true(isnan(rep.svd_residual));
    /* svd: the pair becomes the rank-1 product 7: A B = 7, split evenly. */
    c.lora = GRAFT_LORA_SVD;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 2, dst, NULL, &rep), 1);
    assert_true(fabsf(dst[0] * dst[1] - 7.0f) < 1e-5f && fabsf(fabsf(dst[0]) - sqrtf(7.0f)) < 1e-5f);
    assert_true(rep.svd_residual < 1e-12);
    graft_agg_plan_free(&plan);
}

#define IN 6
#define R 2
#define OUT 5
#define NA (IN * R)
#define NB (R * OUT)
#define NV (NA + NB + 3) /* A, B, then three plain values */

static void matmul(const float *A, const float *B, int in, int r, int out, double *P) {
    for (int i = 0; i < in; i++)
        for (int j = 0; j < out; j++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += (double)A[i * r + k] * B[k * out + j];
            P[i * out + j] = s;
        }
}

/* A small integer in [-k, k]. */
static float small_int(graft_rng_t *rng, int k) {
    return (float)((int)(graft_rng_uniform(rng) * (2 * k + 1)) - k);
}

/* Four replies whose products A_i B_i = A0 (M_i B_i) all share the column
 * space of A0: their weighted mean is exactly rank R. A0 and M_i hold
 * small dyadic numbers, so that A_i = A0 M_i is exact in float and the
 * column space is shared exactly, not up to rounding. */
static void make_rank_r_replies(float x[4][NV], float *g, uint64_t *ws) {
    graft_rng_t rng;
    graft_rng_seed(&rng, 5, 11);
    float A0[NA];
    for (int j = 0; j < NA; j++) A0[j] = small_int(&rng, 4) / 8.0f;
    for (int j = 0; j < NV; j++) g[j] = graft_rng_normal(&rng) * 0.3f;
    for (int i = 0; i < 4; i++) {
        float M[R * R];
        for (int j = 0; j < R * R; j++) M[j] = small_int(&rng, 2) + (j % 3 == 0 ? 3.0f : 0.0f);
        for (int a = 0; a < IN; a++)
            for (int k = 0; k < R; k++) {
                double s = 0;
                for (int l = 0; l < R; l++) s += (double)A0[a * R + l] * M[l * R + k];
                x[i][a * R + k] = (float)s;
            }
        for (int j = NA; j < NV; j++) x[i][j] = graft_rng_normal(&rng);
        ws[i] = (uint64_t)(10 + 7 * i);
    }
}

static double rel_err(const double *X, const double *Y, int n) {
    double d = 0, y = 0;
    for (int i = 0; i < n; i++) d += (X[i] - Y[i]) * (X[i] - Y[i]), y += Y[i] * Y[i];
    return sqrt(d / y);
}

/* The weighted mean of the four replies' products into ref, in double;
 * returns the total weight. */
static double mean_product(float x[4][NV], const uint64_t *ws, double *ref) {
    double P[IN * OUT], W = 0;
    memset(ref, 0, IN * OUT * sizeof *ref);
    for (int i = 0; i < 4; i++) {
        matmul(x[i], x[i] + NA, IN, R, OUT, P);
        for (int j = 0; j < IN * OUT; j++) ref[j] += (double)ws[i] * P[j];
        W += (double)ws[i];
    }
    for (int j = 0; j < IN * OUT; j++) ref[j] /= W;
    return W;
}

/* Streams the four replies through a plan with the one pair, under `lora`. */
static void stream_pair(graft_lora_agg_t lora, float x[4][NV], const float *g,
                        const uint64_t *ws, float *dst, graft_agg_report_t *rep) {
    graft_agg_pair_t pair = {.a = 0, .b = NA, .in = IN, .r = R, .out = OUT};
    graft_agg_plan_t plan;
    int freeze = lora == GRAFT_LORA_FREEZE_A;
    graft_agg_plan_init_pairs(&plan, NV, &pair, 1, !freeze, 0.0f, freeze);
    const float *xs[4] = {x[0], x[1], x[2], x[3]};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    c.lora = lora;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 4, dst, NULL, rep), 1);
    graft_agg_plan_free(&plan);
}

static void test_svd_recovers_rank_r(void **state) {
    (void)state;
    float x[4][NV], g[NV], dst[NV];
    uint64_t ws[4];
    make_rank_r_replies(x, g, ws);
    /* The reference: the weighted mean of the products, in double. */
    double ref[IN * OUT];
    double W = mean_product(x, ws, ref);
    graft_agg_report_t rep;
    stream_pair(GRAFT_LORA_SVD, x, g, ws, dst, &rep);
    double got[IN * OUT];
    matmul(dst, dst + NA, IN, R, OUT, got);
    assert_true(rel_err(got, ref, IN * OUT) < 1e-6);  /* exact up to float rounding */
    assert_true(rep.svd_residual < 1e-9);             /* nothing beyond rank R */
    /* Averaging the factors instead misses the mean product by the logged gap. */
    double fa[NA + NB] = {0}, fac[IN * OUT];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < NA + NB; j++) fa[j] += (double)ws[i] * x[i][j] / W;
    graft_lora_product(fa, fa + NA, IN, R, OUT, fac);
    double gap = rel_err(fac, ref, IN * OUT);
    assert_true(gap > 0.05);
    assert_true(fabs(rep.lora_gap - gap) < 1e-6 * gap);
    /* The plain values are averaged as usual. */
    for (int j = NA + NB; j < NV; j++) {
        double m = 0;
        for (int i = 0; i < 4; i++) m += (double)ws[i] * x[i][j] / W;
        assert_true(fabs(dst[j] - m) < 1e-6);
    }
}

static void test_freeze_a(void **state) {
    (void)state;
    float x[4][NV], g[NV], dst[NV];
    uint64_t ws[4];
    make_rank_r_replies(x, g, ws);
    for (int i = 0; i < 4; i++) memcpy(x[i], g, NA * sizeof(float)); /* A as sent */
    graft_agg_report_t rep;
    stream_pair(GRAFT_LORA_FREEZE_A, x, g, ws, dst, &rep);
    assert_int_equal(rep.rejected, 0);
    assert_true(rep.lora_gap == 0.0);
    assert_memory_equal(dst, g, NA * sizeof(float)); /* A unchanged, bit for bit */
    /* The same gap computed densely: zero up to double rounding. */
    double fb[NB] = {0}, fa[NA], avgP[IN * OUT], fac[IN * OUT];
    double W = mean_product(x, ws, avgP);
    for (int j = 0; j < NA; j++) fa[j] = g[j];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < NB; j++) fb[j] += (double)ws[i] * x[i][NA + j] / W;
    graft_lora_product(fa, fb, IN, R, OUT, fac);
    assert_true(rel_err(fac, avgP, IN * OUT) < 1e-12);
    /* A reply that moved A is refused. */
    graft_agg_pair_t pair = {.a = 0, .b = NA, .in = IN, .r = R, .out = OUT};
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, NV, &pair, 1, 0, 0.0f, 1);
    graft_agg_plan_round(&plan, g);
    x[2][3] += 0.25f;
    int64_t *one = calloc(plan.len, 8);
    char why[256];
    assert_int_equal(graft_agg_contribution(&plan, x[2], 1, one, why, sizeof why), GRAFT_EINVAL);
    assert_non_null(strstr(why, "freeze_a"));
    free(one);
    graft_agg_plan_free(&plan);
}

/* ---- options, FedProx, frozen tensors, scalar means ----------------------------------- */

static int parse_shared(const char *aggregate, const char *lora, const char *shared_weight,
                        float shared_server_lr, graft_agg_config_t *c) {
    graft_run_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.aggregate, sizeof cfg.aggregate, "%s", aggregate);
    snprintf(cfg.lora_aggregate, sizeof cfg.lora_aggregate, "%s", lora);
    snprintf(cfg.shared_weight, sizeof cfg.shared_weight, "%s", shared_weight);
    cfg.shared_server_lr = shared_server_lr;
    cfg.fedprox_mu = 0.01f;
    cfg.clip_norm = 2.0f;
    cfg.trim_frac = 0.1f;
    return graft_agg_config_parse(&cfg, c);
}

static int parse(const char *aggregate, const char *lora, graft_agg_config_t *c) {
    return parse_shared(aggregate, lora, "data", 1.0f, c);
}

static void test_config(void **state) {
    (void)state;
    graft_agg_config_t c;
    assert_int_equal(parse("fedadam,clip", "factors", &c), GRAFT_OK);
    assert_true(c.combiner == GRAFT_AGG_FEDADAM && c.clip && c.clip_norm == 2.0f && !c.fedprox);
    assert_int_equal(parse("fedprox", "freeze_a", &c), GRAFT_OK);
    assert_true(c.combiner == GRAFT_AGG_FEDAVG && c.fedprox && c.lora == GRAFT_LORA_FREEZE_A);
    assert_int_equal(parse("trimmed_mean, clip", "factors", &c), GRAFT_OK);
    assert_true(graft_agg_holds_replies(&c) && !graft_agg_wants_products(&c));
    char d[128];
    graft_agg_describe(&c, d, sizeof d);
    assert_string_equal(d, "trimmed_mean+clip, lora factors");
    assert_int_equal(parse("median,fedadam", "factors", &c), GRAFT_EINVAL);
    /* server_lr 0 (the option's default) is the strategy's own rate. */
    assert_int_equal(parse("fedavgm", "svd", &c), GRAFT_OK);
    assert_true(c.combiner == GRAFT_AGG_FEDAVGM && c.server_lr == 1.0f);
    assert_int_equal(parse("fedadam", "factors", &c), GRAFT_OK);
    assert_true(c.server_lr == 0.01f);
    assert_int_equal(parse("fedavgm,fedavg", "factors", &c), GRAFT_EINVAL);
    assert_int_equal(parse("fedsgd", "factors", &c), GRAFT_EINVAL);
    assert_int_equal(parse("median", "svd", &c), GRAFT_EINVAL);
    assert_int_equal(parse("fedavg", "average", &c), GRAFT_EINVAL);
    /* The shared scope's weights and step. */
    assert_int_equal(parse("fedavg", "factors", &c), GRAFT_OK);
    assert_true(!c.task_weights && c.shared_step == 1.0f);
    assert_int_equal(parse_shared("fedavg", "factors", "task", 5.0f, &c), GRAFT_OK);
    assert_true(c.task_weights && c.shared_step == 5.0f);
    graft_agg_describe(&c, d, sizeof d);
    assert_string_equal(d, "fedavg, lora factors, shared scope: task weights, step x5");
    assert_int_equal(parse_shared("fedavg", "factors", "tasks", 1.0f, &c), GRAFT_EINVAL);
    assert_int_equal(parse_shared("median", "factors", "task", 1.0f, &c), GRAFT_OK);
    assert_int_equal(parse_shared("median", "factors", "data", 2.0f, &c), GRAFT_EINVAL);
    assert_int_equal(parse_shared("fedavg", "svd", "data", 2.0f, &c), GRAFT_EINVAL);
}

/* shared_server_lr: the plan's step_scale stretches the mean step, and
 * only the shared scope's plan gets it. g = (1, -2), one reply x = (1.5,
 * -2.25): the mean step is (0.5, -0.25), times 2.5 from g is (2.25, -2.625). */
static void test_shared_step(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 2, NULL, 0, 0, 0.0f, 0);
    assert_true(plan.step_scale == 1.0);
    plan.step_scale = 2.5;
    float g[2] = {1.0f, -2.0f}, x[2] = {1.5f, -2.25f}, dst[2];
    const float *xs[1] = {x};
    uint64_t ws[1] = {40};
    graft_agg_config_t c = config(GRAFT_AGG_FEDAVG);
    graft_agg_report_t rep;
    assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 1, dst, NULL, &rep), 1);
    assert_true(dst[0] == 2.25f && dst[1] == -2.625f);
    graft_agg_plan_free(&plan);
}

static void test_prox_and_frozen(void **state) {
    (void)state;
    graft_scope_t *s = graft_scope_new("shared");
    int a = graft_scope_add(s, "A", 1, 2, 0, 0), b = graft_scope_add(s, "B", 1, 2, 0, 0);
    graft_scope_alloc(s);
    graft_scope_alloc_grads(s);
    float *pa = graft_scope_ptr(s, a), *pb = graft_scope_ptr(s, b);
    pa[0] = 1, pa[1] = 2, pb[0] = 3, pb[1] = -1;
    float ref[4] = {0, 2, 1, 1};
    s->prox_ref = ref;
    s->tensors[a].frozen = 1;
    graft_scope_prox_grad(s, 0.5f);
    float *ga = graft_scope_grad(s, a), *gb = graft_scope_grad(s, b);
    assert_true(ga[0] == 0 && ga[1] == 0);        /* frozen: no proximal pull */
    assert_true(gb[0] == 1.0f && gb[1] == -1.0f); /* 0.5 * (3 - 1), 0.5 * (-1 - 1) */
    ga[0] = 100; /* a gradient on a frozen tensor neither counts nor moves it */
    double sumsq = 0;
    graft_scope_grad_sumsq(s, &sumsq);
    assert_true(sumsq == 2.0);
    graft_adamw_config_t opt = graft_adamw_defaults();
    graft_scope_step(s, &opt, 0.1f, 1.0f);
    assert_true(pa[0] == 1 && pa[1] == 2);
    assert_true(pb[0] < 3 && pb[1] > -1);
    graft_scope_destroy(&s);
}

/* Statistics (a scope's values from stat_from on, e.g. channel scores) are
 * a plain weighted mean whatever the strategy: out of the clip's norm and
 * unscaled, untouched by the server optimizers, which keep no moments for
 * them. So the aggregated scores rank channels as their sum over workers. */
static void test_statistics_plain_mean(void **state) {
    (void)state;
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, 4, NULL, 0, 0, 1.0f, 0);
    plan.stat_from = 2;
    /* Parameters: x1's delta (3, 4) clips to (0.6, 0.8); x2's is 0. The
     * statistics' deltas (6, 2) and (2, 4) would dominate the norm. */
    float g[4] = {1, 1, 0, 0}, x1[4] = {4, 5, 6, 2}, x2[4] = {1, 1, 2, 4}, dst[4];
    const float *xs[2] = {x1, x2};
    uint64_t ws[2] = {1, 3};
    graft_agg_report_t rep;
    graft_agg_config_t avg = config(GRAFT_AGG_FEDAVG);
    assert_int_equal(stream(&avg, &plan, g, xs, ws, NULL, 2, dst, NULL, &rep), 1);
    assert_true(fabsf(dst[0] - 1.15f) < 1e-6f && fabsf(dst[1] - 1.2f) < 1e-6f);
    assert_true(dst[2] == 3.0f && dst[3] == 3.5f); /* (6 + 3 * 2) / 4, (2 + 3 * 4) / 4 */
    for (int combiner = 0; combiner < 2; combiner++) {
        graft_agg_config_t c = config(combiner ? GRAFT_AGG_FEDAVGM : GRAFT_AGG_FEDADAM);
        float st[8] = {0};
        assert_int_equal(stream(&c, &plan, g, xs, ws, NULL, 2, dst, st, &rep), 1);
        assert_true(dst[2] == 3.0f && dst[3] == 3.5f);
        assert_true(st[2] == 0 && st[3] == 0 && st[6] == 0 && st[7] == 0);
        assert_true(st[0] != 0 && dst[0] != 1.15f); /* the parameters did take the server step */
    }
    /* The scores rank the same as their sum; the held (clipped) values for
     * median and trimmed mean keep the statistics whole too. */
    float held[4];
    char why[64];
    assert_int_equal(graft_agg_clipped(&plan, x1, held, why, sizeof why), GRAFT_OK);
    assert_true(held[0] == 1.6f && held[1] == 1.8f && held[2] == 6.0f && held[3] == 2.0f);
    graft_agg_plan_free(&plan);
}

static void test_scalar_mean(void **state) {
    (void)state;
    float dst[3] = {1, 2, 3}, x[3] = {9, 9, 9}, y[3] = {4, 5, 6};
    assert_int_equal(graft_aggregate_fedavg(NULL, 0, dst, 3), 0);
    assert_true(dst[0] == 1 && dst[1] == 2 && dst[2] == 3);
    graft_agg_input_t in[2] = {{"a", 0, x}, {"b", 2, y}};
    assert_int_equal(graft_aggregate_fedavg(in, 2, dst, 3), 1);
    assert_true(dst[0] == 4 && dst[1] == 5 && dst[2] == 6);
    graft_agg_input_t two[2] = {{"b", 3, x}, {"a", 1, y}};
    assert_int_equal(graft_aggregate_fedavg(two, 2, dst, 1), 2);
    assert_true(dst[0] == 7.75f); /* (3 * 9 + 4) / 4 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_bound),     cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_empty_round),     cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_clip),            cmocka_unit_test(test_median),
        cmocka_unit_test(test_trimmed_mean),    cmocka_unit_test(test_fedadam_step),
        cmocka_unit_test(test_fedavgm_steps),   cmocka_unit_test(test_shared_step),
        cmocka_unit_test(test_gap_by_hand),     cmocka_unit_test(test_svd_recovers_rank_r),
        cmocka_unit_test(test_freeze_a),        cmocka_unit_test(test_config),
        cmocka_unit_test(test_prox_and_frozen), cmocka_unit_test(test_scalar_mean),
        cmocka_unit_test(test_statistics_plain_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
