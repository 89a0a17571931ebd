/* test_rng.c — the seeded generator: reproducibility, jumping ahead (which
 * the federated workers' batch sampler relies on), and the moments of the
 * Gamma and Dirichlet draws that data sharding relies on. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rng.h"

static void test_same_seed_same_stream(void **state) {
    (void)state;
    graft_rng_t a, b, c;
    graft_rng_seed(&a, 42, 7);
    graft_rng_seed(&b, 42, 7);
    graft_rng_seed(&c, 42, 8);
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t x = graft_rng_u32(&a);
        assert_int_equal(x, graft_rng_u32(&b));
        differ += x != graft_rng_u32(&c);
    }
    assert_true(differ > 90);
}

/* Jumping ahead n draws lands exactly where n calls would. */
static void test_advance(void **state) {
    (void)state;
    const uint64_t jumps[] = {0, 1, 2, 3, 17, 1000, 65537};
    for (size_t j = 0; j < sizeof jumps / sizeof jumps[0]; j++) {
        graft_rng_t walk, jump;
        graft_rng_seed(&walk, 11, 0x7472616e);
        jump = walk;
        for (uint64_t i = 0; i < jumps[j]; i++) graft_rng_u32(&walk);
        graft_rng_advance(&jump, jumps[j]);
        assert_true(jump.state == walk.state && jump.inc == walk.inc);
        assert_int_equal(graft_rng_u32(&jump), graft_rng_u32(&walk));
    }
    /* A full period (2^64 steps) comes back to the start. */
    graft_rng_t r, start;
    graft_rng_seed(&r, 5, 9);
    start = r;
    graft_rng_advance(&r, UINT64_MAX);
    graft_rng_u32(&r);
    assert_true(r.state == start.state);
}

/* Sample mean and variance of Gamma(k, 1) are k and k: checked to within
 * five standard errors (the variance of the sample variance of a Gamma is
 * about (6k + 2k^2) / n). */
static void check_gamma(double k) {
    enum { N = 200000 };
    graft_rng_t rng;
    graft_rng_seed(&rng, 3, (uint64_t)(k * 1000));
    double sum = 0, sum2 = 0;
    for (int i = 0; i < N; i++) {
        double x = graft_rng_gamma(&rng, k);
        assert_true(x >= 0 && isfinite(x));
        sum += x;
        sum2 += x * x;
    }
    double mean = sum / N, var = sum2 / N - mean * mean;
    assert_true(fabs(mean - k) < 5 * sqrt(k / N));
    assert_true(fabs(var - k) < 5 * sqrt((6 * k + 2 * k * k) / N));
}

static void test_gamma_moments(void **state) {
    (void)state;
    check_gamma(0.1);
    check_gamma(0.5);
    check_gamma(1.0);
    check_gamma(4.5);
    check_gamma(30.0);
}

/* A shape far below 1 gives draws below the smallest double: the log stays
 * finite and the Dirichlet built on it still sums to 1. */
static void test_tiny_shape_in_logs(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 5, 0);
    double p[6];
    for (int i = 0; i < 1000; i++) {
        assert_true(isfinite(graft_rng_log_gamma(&rng, 1e-4)));
        graft_rng_dirichlet(&rng, 1e-4, p, 6);
        double s = 0;
        for (int j = 0; j < 6; j++) {
            assert_true(p[j] >= 0 && p[j] <= 1);
            s += p[j];
        }
        assert_true(fabs(s - 1) < 1e-12);
    }
}

/* Dirichlet(alpha): each share has mean 1/n; a small alpha puts nearly all
 * mass on one share, a large alpha spreads it evenly. */
static double mean_top_share(double alpha, int n) {
    graft_rng_t rng;
    graft_rng_seed(&rng, 11, 0);
    double p[8], top = 0, first = 0;
    const int draws = 20000;
    for (int i = 0; i < draws; i++) {
        graft_rng_dirichlet(&rng, alpha, p, n);
        double m = 0;
        for (int j = 0; j < n; j++) m = p[j] > m ? p[j] : m;
        top += m;
        first += p[0];
    }
    assert_true(fabs(first / draws - 1.0 / n) < 0.01);
    return top / draws;
}

static void test_dirichlet_concentration(void **state) {
    (void)state;
    assert_true(mean_top_share(0.05, 5) > 0.85);
    double even = mean_top_share(1000.0, 5);
    assert_true(even > 0.2 && even < 0.22);
    double mid = mean_top_share(1.0, 5);
    assert_true(mid > 0.4 && mid < 0.5); /* E[max] of a flat Dirichlet(5) is 0.4567 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_seed_same_stream),
        cmocka_unit_test(test_advance),
        cmocka_unit_test(test_gamma_moments),
        cmocka_unit_test(test_tiny_shape_in_logs),
        cmocka_unit_test(test_dirichlet_concentration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
