/* test_aggregate.c — FedAvg (coordinator/aggregate.c): the weighted mean is
 * right, and its bits do not depend on the order replies arrive in (every
 * permutation of the inputs gives the same bytes), although a plain float
 * sum in arrival order does depend on it for these inputs. */
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
#include "rng.h"

#define N 4
#define NUMEL 4096

static float vals[N][NUMEL];
static const char *keys[N] = {"shard-0-of-4", "shard-1-of-4", "shard-2-of-4", "shard-3-of-4"};
static const double weights[N] = {17, 3, 1000, 250};

static void fill(void) {
    graft_rng_t rng;
    graft_rng_seed(&rng, 42, 7);
    /* Magnitudes far apart, so that float addition order matters. */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < NUMEL; j++)
            vals[i][j] = graft_rng_normal(&rng) * (i == 2 ? 1e4f : i == 1 ? 1e-3f : 1.0f);
}

static void aggregate_in_order(const int *order, float *out) {
    graft_agg_input_t in[N];
    for (int i = 0; i < N; i++)
        in[i] = (graft_agg_input_t){keys[order[i]], weights[order[i]], vals[order[i]]};
    assert_int_equal(graft_aggregate_fedavg(in, N, out, NUMEL), N);
}

/* A naive float weighted sum in arrival order, to show order matters. */
static void naive_in_order(const int *order, float *out) {
    float total = 0;
    for (int i = 0; i < N; i++) total += (float)weights[order[i]];
    for (int j = 0; j < NUMEL; j++) {
        float acc = 0;
        for (int i = 0; i < N; i++) acc += (float)weights[order[i]] / total * vals[order[i]][j];
        out[j] = acc;
    }
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

static void test_weighted_mean(void **state) {
    (void)state;
    fill();
    int order[N] = {0, 1, 2, 3};
    static float out[NUMEL];
    aggregate_in_order(order, out);
    double total = 0;
    for (int i = 0; i < N; i++) total += weights[i];
    for (int j = 0; j < NUMEL; j++) {
        double ref = 0;
        for (int i = 0; i < N; i++) ref += weights[i] * vals[i][j];
        ref /= total;
        assert_true(fabs(out[j] - ref) <= 1e-6 * (fabs(ref) + 1e-3));
    }
}

static void test_order_independent(void **state) {
    (void)state;
    fill();
    int order[N] = {0, 1, 2, 3};
    static float first[NUMEL], out[NUMEL], naive0[NUMEL], naive[NUMEL];
    aggregate_in_order(order, first);
    naive_in_order(order, naive0);
    int perms = 0, naive_differs = 0;
    while (next_perm(order, N)) {
        aggregate_in_order(order, out);
        assert_memory_equal(first, out, sizeof out);
        naive_in_order(order, naive);
        naive_differs |= memcmp(naive0, naive, sizeof naive) != 0;
        perms++;
    }
    assert_int_equal(perms, 23);
    assert_true(naive_differs); /* the inputs do exercise order sensitivity */
}

static void test_empty_and_zero_weight(void **state) {
    (void)state;
    float dst[3] = {1, 2, 3}, x[3] = {9, 9, 9}, y[3] = {4, 5, 6};
    assert_int_equal(graft_aggregate_fedavg(NULL, 0, dst, 3), 0);
    assert_true(dst[0] == 1 && dst[1] == 2 && dst[2] == 3);
    graft_agg_input_t in[2] = {{"a", 0, x}, {"b", 2, y}};
    assert_int_equal(graft_aggregate_fedavg(in, 2, dst, 3), 1);
    assert_true(dst[0] == 4 && dst[1] == 5 && dst[2] == 6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weighted_mean),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_empty_and_zero_weight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
