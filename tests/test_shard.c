/* test_shard.c — non-IID shards (common/shard.c) on real task files written
 * here: every train row in exactly one client, dev and test rows dealt
 * round-robin over a task's clients, determinism per seed, label skew for a
 * small alpha, whole groups with balanced counts, the task-to-client
 * assignment, the written layout read back, the errors, and the
 * `graft data shard` command: bad options (--clients 0, an --out that is a
 * file, a plan the options cannot make) exit 2 before any table is printed,
 * a task file that cannot be read exits 1. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shard.h"

typedef struct {
    char dir[64];
    char cls[128];   /* classification: 4 skewed labels, 40 groups of 20 train rows */
    char gen[128];   /* generation: one group per row */
    char tiny[128];  /* classification: 3 train rows */
    graft_task_t *tasks[3];
} fixture_t;

enum { CLS_TRAIN = 800, CLS_EVAL = 60, GEN_TRAIN = 300 };

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* Labels a..d with 40%, 30%, 20%, 10% of the rows; group g%02d holds rows
 * 20g..20g+19, so groups mix labels. Every text is unique and names its
 * split. */
static void write_cls(const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    const char *labels = "aaaabbbccd";
    for (int i = 0; i < CLS_TRAIN; i++)
        fprintf(f, "train\t%c\tg%02d\ttrain text %d\n", labels[(i * 7) % 10], i / 20, i);
    for (int i = 0; i < CLS_EVAL; i++) {
        fprintf(f, "dev\t%c\tdev%d\tdev text %d\n", labels[i % 10], i / 10, i);
        fprintf(f, "test\t%c\ttest%d\ttest text %d\n", labels[i % 10], i / 10, i);
    }
    assert_int_equal(fclose(f), 0);
}

static void write_gen(const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < GEN_TRAIN; i++) fprintf(f, "train\ttarget %d\tr%d\tprompt %d\n", i, i, i);
    fprintf(f, "dev\ttarget dev\trdev\tprompt dev\ntest\ttarget test\trtest\tprompt test\n");
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state) {
    fixture_t *fx = calloc(1, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/graft_test_shard_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    snprintf(fx->cls, sizeof fx->cls, "%s/cls.tsv", fx->dir);
    snprintf(fx->gen, sizeof fx->gen, "%s/gen.tsv", fx->dir);
    snprintf(fx->tiny, sizeof fx->tiny, "%s/tiny.tsv", fx->dir);
    write_cls(fx->cls);
    write_gen(fx->gen);
    write_file(fx->tiny, "train\ta\tx\tone\ntrain\tb\ty\ttwo\ntrain\ta\tz\tthree\n");
    if (graft_task_load("cls", GRAFT_TASK_CLASSIFY, fx->cls, &fx->tasks[0]) ||
        graft_task_load("gen", GRAFT_TASK_GENERATE, fx->gen, &fx->tasks[1]) ||
        graft_task_load("tiny", GRAFT_TASK_CLASSIFY, fx->tiny, &fx->tasks[2]))
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fixture_t *fx = *state;
    for (int i = 0; i < 3; i++) graft_task_destroy(&fx->tasks[i]);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", fx->dir);
    int rc = system(cmd);
    free(fx);
    return rc == 0 ? 0 : -1;
}

static graft_shard_config_t config(int clients, graft_shard_by_t by, double alpha, int seed) {
    return (graft_shard_config_t){.clients = clients, .alpha = alpha, .by = by,
                                  .min_group_size = 10, .seed = (uint64_t)seed};
}

static graft_shard_plan_t *plan_of(fixture_t *fx, int n_tasks, graft_shard_config_t cfg) {
    graft_shard_plan_t *p = NULL;
    assert_int_equal(graft_shard_plan_new(fx->tasks, n_tasks, &cfg, &p), GRAFT_OK);
    assert_non_null(p);
    return p;
}

/* Rows of task t per client: each train row in exactly one client of t,
 * indices ascending, none in a client that does not hold t. */
static void check_partition(const graft_shard_plan_t *p, const graft_task_t *task, int t) {
    size_t N = graft_task_count(task, GRAFT_SPLIT_TRAIN);
    int *seen = calloc(N, sizeof *seen);
    for (int c = 0; c < graft_shard_num_clients(p); c++) {
        size_t n;
        const size_t *rows = graft_shard_rows(p, c, t, &n);
        if (!graft_shard_holds(p, c, t)) {
            assert_int_equal(n, 0);
            continue;
        }
        assert_true(n >= 1);
        for (size_t k = 0; k < n; k++) {
            assert_true(rows[k] < N);
            if (k) assert_true(rows[k] > rows[k - 1]);
            seen[rows[k]]++;
        }
    }
    for (size_t i = 0; i < N; i++) assert_int_equal(seen[i], 1);
    free(seen);
}

static void test_every_row_once_in_every_mode(void **state) {
    fixture_t *fx = *state;
    const graft_shard_by_t modes[] = {GRAFT_SHARD_AUTO, GRAFT_SHARD_GROUP, GRAFT_SHARD_LABEL,
                                      GRAFT_SHARD_IID};
    for (int m = 0; m < 4; m++) {
        for (int K = 1; K <= 7; K += 3) {
            graft_shard_config_t cfg = config(K, modes[m], 0.3, 9);
            graft_shard_plan_t *p = plan_of(fx, 1, cfg);
            check_partition(p, fx->tasks[0], 0);
            graft_shard_plan_destroy(&p);
            assert_null(p);
        }
    }
    graft_shard_plan_t *p = plan_of(fx, 2, config(5, GRAFT_SHARD_AUTO, 0.5, 1));
    check_partition(p, fx->tasks[0], 0);
    check_partition(p, fx->tasks[1], 1);
    graft_shard_plan_destroy(&p);
}

/* Row i of split goes to the task's (i mod K_t)-th client; every row is on
 * exactly one client of the task, none on another client; counts differ
 * by at most one; each client's indices ascend. */
static void check_eval_deal(const graft_shard_plan_t *p, const graft_task_t *task, int t,
                            int split) {
    int K = graft_shard_num_clients(p), clients[64], Kt = 0;
    for (int c = 0; c < K; c++)
        if (graft_shard_holds(p, c, t)) clients[Kt++] = c;
    size_t N = graft_task_count(task, split), lo = SIZE_MAX, hi = 0;
    int *where = malloc(N * sizeof *where);
    for (size_t i = 0; i < N; i++) where[i] = -1;
    for (int c = 0; c < K; c++) {
        size_t n;
        const size_t *rows = graft_shard_split_rows(p, c, t, split, &n);
        if (!graft_shard_holds(p, c, t)) {
            assert_int_equal(n, 0);
            continue;
        }
        lo = n < lo ? n : lo;
        hi = n > hi ? n : hi;
        for (size_t k = 0; k < n; k++) {
            assert_true(rows[k] < N);
            if (k) assert_true(rows[k] > rows[k - 1]);
            assert_int_equal(where[rows[k]], -1);
            where[rows[k]] = c;
        }
    }
    for (size_t i = 0; i < N; i++) assert_int_equal(where[i], clients[i % (size_t)Kt]);
    assert_true(hi - lo <= 1);
    free(where);
}

static void test_dev_test_dealt_round_robin(void **state) {
    fixture_t *fx = *state;
    const graft_shard_by_t modes[] = {GRAFT_SHARD_GROUP, GRAFT_SHARD_LABEL, GRAFT_SHARD_IID};
    for (int m = 0; m < 3; m++) {
        for (int K = 2; K <= 7; K += 5) { /* 60 dev rows: 30 each; 8 or 9 each */
            graft_shard_plan_t *p = plan_of(fx, 1, config(K, modes[m], 0.5, 4));
            check_eval_deal(p, fx->tasks[0], 0, GRAFT_SPLIT_DEV);
            check_eval_deal(p, fx->tasks[0], 0, GRAFT_SPLIT_TEST);
            graft_shard_plan_destroy(&p);
        }
    }
    /* 5 clients, 2 tasks: cls on c0, c2, c4 and gen on c1, c3 (M = 1). Gen
     * has one dev row: c1 gets it, c3 gets none. */
    graft_shard_plan_t *p = plan_of(fx, 2, config(5, GRAFT_SHARD_IID, 0.5, 1));
    for (int split = GRAFT_SPLIT_DEV; split <= GRAFT_SPLIT_TEST; split++) {
        check_eval_deal(p, fx->tasks[0], 0, split);
        check_eval_deal(p, fx->tasks[1], 1, split);
        size_t n;
        graft_shard_split_rows(p, 0, 0, split, &n);
        assert_int_equal(n, 20); /* 60 rows over 3 clients */
        graft_shard_split_rows(p, 1, 1, split, &n);
        assert_int_equal(n, 1);
        graft_shard_split_rows(p, 3, 1, split, &n);
        assert_int_equal(n, 0);
    }
    /* The train split is what graft_shard_rows() gives. */
    size_t na, nb;
    const size_t *a = graft_shard_rows(p, 2, 0, &na);
    const size_t *b = graft_shard_split_rows(p, 2, 0, GRAFT_SPLIT_TRAIN, &nb);
    assert_true(a == b && na == nb);
    graft_shard_plan_destroy(&p);
}

/* eval_rows follow: under label skew every dev and test row is on exactly
 * one client of its task, and each client's rows of a label are its share
 * of the label's train rows (within one row), so its evaluation rows follow
 * its own training distribution. */
static void test_dev_test_follow_train(void **state) {
    fixture_t *fx = *state;
    const graft_task_t *task = fx->tasks[0];
    graft_shard_config_t cfg = config(4, GRAFT_SHARD_LABEL, 0.3, 5);
    cfg.eval_follow = 1;
    graft_shard_plan_t *p = plan_of(fx, 1, cfg);
    int L = graft_task_num_labels(task), K = 4;
    size_t train[4][8] = {{0}}, label_train[8] = {0};
    for (int c = 0; c < K; c++) {
        size_t n;
        const size_t *rows = graft_shard_rows(p, c, 0, &n);
        for (size_t k = 0; k < n; k++) {
            int l = graft_task_example(task, GRAFT_SPLIT_TRAIN, rows[k])->label_id;
            train[c][l]++;
            label_train[l]++;
        }
    }
    int skewed = 0;
    for (int split = GRAFT_SPLIT_DEV; split <= GRAFT_SPLIT_TEST; split++) {
        size_t N = graft_task_count(task, split), label_eval[8] = {0};
        int *seen = calloc(N, sizeof *seen);
        for (size_t i = 0; i < N; i++) label_eval[graft_task_example(task, split, i)->label_id]++;
        for (int c = 0; c < K; c++) {
            size_t n, count[8] = {0};
            const size_t *rows = graft_shard_split_rows(p, c, 0, split, &n);
            for (size_t k = 0; k < n; k++) {
                seen[rows[k]]++;
                count[graft_task_example(task, split, rows[k])->label_id]++;
            }
            for (int l = 0; l < L; l++) {
                double want = (double)label_eval[l] * (double)train[c][l] / (double)label_train[l];
                assert_true(fabs((double)count[l] - want) < 1.0 + 1e-9);
                /* its share of the label is far from the split's */
                skewed |= n && fabs((double)count[l] / (double)n - (double)label_eval[l] / N) > 0.2;
            }
        }
        for (size_t i = 0; i < N; i++) assert_int_equal(seen[i], 1);
        free(seen);
    }
    assert_true(skewed); /* alpha 0.3: some client's rows are far from the split's mix */
    graft_shard_plan_destroy(&p);
}

static int same_plan(const graft_shard_plan_t *a, const graft_shard_plan_t *b, int T) {
    for (int c = 0; c < graft_shard_num_clients(a); c++) {
        for (int t = 0; t < T; t++) {
            size_t na, nb;
            const size_t *ra = graft_shard_rows(a, c, t, &na), *rb = graft_shard_rows(b, c, t, &nb);
            if (na != nb || (na && memcmp(ra, rb, na * sizeof *ra) != 0)) return 0;
        }
    }
    return 1;
}

static void test_deterministic_per_seed(void **state) {
    fixture_t *fx = *state;
    const graft_shard_by_t modes[] = {GRAFT_SHARD_GROUP, GRAFT_SHARD_LABEL, GRAFT_SHARD_IID};
    for (int m = 0; m < 3; m++) {
        graft_shard_plan_t *a = plan_of(fx, 1, config(4, modes[m], 0.5, 7));
        graft_shard_plan_t *b = plan_of(fx, 1, config(4, modes[m], 0.5, 7));
        graft_shard_plan_t *c = plan_of(fx, 1, config(4, modes[m], 0.5, 8));
        assert_true(same_plan(a, b, 1));
        assert_false(same_plan(a, c, 1));
        graft_shard_plan_destroy(&a);
        graft_shard_plan_destroy(&b);
        graft_shard_plan_destroy(&c);
    }
}

/* Mean over clients of the share of a client's rows in its most common
 * label, and the largest gap between a client's label share and the
 * task's. */
static void label_spread(const graft_shard_plan_t *p, const graft_task_t *task, double *top,
                         double *gap) {
    int K = graft_shard_num_clients(p), L = graft_task_num_labels(task);
    size_t N = graft_task_count(task, GRAFT_SPLIT_TRAIN), global[8] = {0};
    for (size_t i = 0; i < N; i++) global[graft_task_example(task, GRAFT_SPLIT_TRAIN, i)->label_id]++;
    *top = 0;
    *gap = 0;
    for (int c = 0; c < K; c++) {
        size_t n, count[8] = {0}, most = 0;
        const size_t *rows = graft_shard_rows(p, c, 0, &n);
        for (size_t k = 0; k < n; k++)
            count[graft_task_example(task, GRAFT_SPLIT_TRAIN, rows[k])->label_id]++;
        for (int l = 0; l < L; l++) {
            most = count[l] > most ? count[l] : most;
            double d = (double)count[l] / (double)n - (double)global[l] / (double)N;
            *gap = fabs(d) > *gap ? fabs(d) : *gap;
        }
        *top += (double)most / (double)n / K;
    }
}

static void test_label_skew_follows_alpha(void **state) {
    fixture_t *fx = *state;
    double top_small = 0, gap_small = 0, top_big = 0, gap_big = 0;
    for (int seed = 1; seed <= 5; seed++) {
        double top, gap;
        graft_shard_plan_t *p = plan_of(fx, 1, config(4, GRAFT_SHARD_LABEL, 0.1, seed));
        label_spread(p, fx->tasks[0], &top, &gap);
        top_small += top / 5;
        gap_small += gap / 5;
        graft_shard_plan_destroy(&p);
        p = plan_of(fx, 1, config(4, GRAFT_SHARD_LABEL, 1000.0, seed));
        label_spread(p, fx->tasks[0], &top, &gap);
        top_big += top / 5;
        gap_big += gap / 5;
        graft_shard_plan_destroy(&p);
    }
    /* The task's top label holds 40% of the rows. */
    assert_true(top_small > 0.75);
    assert_true(gap_small > 0.3);
    assert_true(top_big < 0.5);
    assert_true(gap_big < 0.08);
}

static void test_whole_groups_balanced(void **state) {
    fixture_t *fx = *state;
    const graft_task_t *task = fx->tasks[0];
    graft_shard_plan_t *p = plan_of(fx, 1, config(6, GRAFT_SHARD_AUTO, 0.5, 3));
    assert_int_equal(graft_shard_mode(p, 0), GRAFT_SHARD_GROUP);
    int owner[64];
    memset(owner, -1, sizeof owner);
    size_t lo = SIZE_MAX, hi = 0;
    for (int c = 0; c < 6; c++) {
        size_t n;
        const size_t *rows = graft_shard_rows(p, c, 0, &n);
        lo = n < lo ? n : lo;
        hi = n > hi ? n : hi;
        for (size_t k = 0; k < n; k++) {
            int g = graft_task_group_of(task, GRAFT_SPLIT_TRAIN, rows[k]);
            assert_true(owner[g] == -1 || owner[g] == c);
            owner[g] = c;
        }
    }
    /* 40 groups of 20 rows over 6 clients: 6 or 7 groups each. */
    assert_true(hi - lo <= 20);
    graft_shard_plan_destroy(&p);
}

static void test_auto_picks_by_group_size(void **state) {
    fixture_t *fx = *state;
    graft_shard_config_t cfg = config(3, GRAFT_SHARD_AUTO, 0.5, 1);
    graft_shard_plan_t *p = plan_of(fx, 2, cfg);
    assert_int_equal(graft_shard_mode(p, 0), GRAFT_SHARD_GROUP); /* 20 rows a group */
    assert_int_equal(graft_shard_mode(p, 1), GRAFT_SHARD_IID);   /* generation, 1 a group */
    graft_shard_plan_destroy(&p);
    cfg.min_group_size = 21;
    p = plan_of(fx, 1, cfg);
    assert_int_equal(graft_shard_mode(p, 0), GRAFT_SHARD_LABEL);
    graft_shard_plan_destroy(&p);
    cfg.min_group_size = 10;
    cfg.clients = 41; /* more clients than the 40 groups */
    p = plan_of(fx, 1, cfg);
    assert_int_equal(graft_shard_mode(p, 0), GRAFT_SHARD_LABEL);
    graft_shard_plan_destroy(&p);
}

/* Client c holds M tasks; each task has at least one client; clients per
 * task differ by at most one. */
static void check_assignment(fixture_t *fx, int K, int M, int T, int want_m) {
    graft_shard_config_t cfg = config(K, GRAFT_SHARD_IID, 0.5, 1);
    cfg.tasks_per_client = M;
    graft_shard_plan_t *p = plan_of(fx, T, cfg);
    int per_task[3] = {0};
    for (int c = 0; c < K; c++) {
        int held = 0;
        for (int t = 0; t < T; t++) {
            held += graft_shard_holds(p, c, t);
            per_task[t] += graft_shard_holds(p, c, t);
        }
        assert_int_equal(held, want_m);
    }
    int lo = K, hi = 0;
    for (int t = 0; t < T; t++) {
        lo = per_task[t] < lo ? per_task[t] : lo;
        hi = per_task[t] > hi ? per_task[t] : hi;
    }
    assert_true(lo >= 1 && hi - lo <= 1);
    graft_shard_plan_destroy(&p);
}

static void test_task_assignment(void **state) {
    fixture_t *fx = *state;
    check_assignment(fx, 3, 0, 3, 1); /* default M = ceil(3/3) */
    check_assignment(fx, 2, 0, 3, 2); /* default M = ceil(3/2) */
    check_assignment(fx, 3, 2, 3, 2);
    check_assignment(fx, 3, 3, 3, 3);
    check_assignment(fx, 2, 0, 2, 1);
    graft_shard_config_t cfg = config(3, GRAFT_SHARD_IID, 0.5, 1);
    graft_shard_plan_t *p = plan_of(fx, 3, cfg);
    /* client c holds task (c*M) mod T with M = 1 */
    for (int c = 0; c < 3; c++)
        for (int t = 0; t < 3; t++) assert_int_equal(graft_shard_holds(p, c, t), c == t);
    graft_shard_plan_destroy(&p);
}

static void test_refuses_impossible_plans(void **state) {
    fixture_t *fx = *state;
    graft_shard_plan_t *p = NULL;
    graft_shard_config_t cfg = config(2, GRAFT_SHARD_AUTO, 0.5, 1);
    cfg.tasks_per_client = 1; /* 2 slots for 3 tasks */
    assert_int_equal(graft_shard_plan_new(fx->tasks, 3, &cfg, &p), GRAFT_EINVAL);
    cfg.tasks_per_client = 4; /* more than the 3 tasks */
    assert_int_equal(graft_shard_plan_new(fx->tasks, 3, &cfg, &p), GRAFT_EINVAL);
    cfg = config(4, GRAFT_SHARD_AUTO, 0.5, 1); /* tiny: 3 rows for 4 clients */
    assert_int_equal(graft_shard_plan_new(fx->tasks + 2, 1, &cfg, &p), GRAFT_EINVAL);
    cfg = config(41, GRAFT_SHARD_GROUP, 0.5, 1); /* 40 groups */
    assert_int_equal(graft_shard_plan_new(fx->tasks, 1, &cfg, &p), GRAFT_EINVAL);
    cfg = config(2, GRAFT_SHARD_LABEL, 0.5, 1); /* generation has no label set */
    assert_int_equal(graft_shard_plan_new(fx->tasks + 1, 1, &cfg, &p), GRAFT_EINVAL);
    cfg = config(2, GRAFT_SHARD_AUTO, 0.0, 1);
    assert_int_equal(graft_shard_plan_new(fx->tasks, 1, &cfg, &p), GRAFT_EINVAL);
    assert_null(p);
}

/* ---- the written layout ---------------------------------------------------- */

/* Number of lines of path that equal line (without its LF); -1 if absent. */
static int count_lines(const char *path, const char *prefix, int *total) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[512];
    int hits = 0;
    *total = 0;
    while (fgets(buf, sizeof buf, f)) {
        (*total)++;
        hits += strncmp(buf, prefix, strlen(prefix)) == 0;
    }
    fclose(f);
    return hits;
}

/* Each client file of cls read back: its train rows, then CLS_EVAL/K (or
 * one more) dev and test rows each; every row keeps its split. Over the
 * clients, each dev and test text of the task appears exactly once, and
 * the i-th dev row is on client i mod K (cls is the only task). */
static void check_written(fixture_t *fx, const char *out, int K) {
    char path[256];
    int rows = 0, lines, dev_seen[CLS_EVAL] = {0}, test_seen[CLS_EVAL] = {0};
    for (int c = 0; c < K; c++) {
        snprintf(path, sizeof path, "%s/client-%03d/cls.tsv", out, c);
        int train = count_lines(path, "train\t", &lines);
        int dev = count_lines(path, "dev\t", &lines), test = count_lines(path, "test\t", &lines);
        assert_true(train >= 1);
        assert_int_equal(train + dev + test, lines);
        assert_true(dev == CLS_EVAL / K || dev == CLS_EVAL / K + 1);
        assert_int_equal(test, dev);
        rows += train;
        graft_task_t *t = NULL;
        assert_int_equal(graft_task_load("cls", GRAFT_TASK_CLASSIFY, path, &t), GRAFT_OK);
        assert_int_equal(graft_task_count(t, GRAFT_SPLIT_DEV), (size_t)dev);
        assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TEST), (size_t)test);
        for (size_t i = 0; i < graft_task_count(t, GRAFT_SPLIT_TRAIN); i++)
            assert_non_null(strstr(graft_task_example(t, GRAFT_SPLIT_TRAIN, i)->text, "train text"));
        for (int split = GRAFT_SPLIT_DEV; split <= GRAFT_SPLIT_TEST; split++) {
            int *seen = split == GRAFT_SPLIT_DEV ? dev_seen : test_seen;
            const char *fmt = split == GRAFT_SPLIT_DEV ? "dev text %d" : "test text %d";
            for (size_t i = 0; i < graft_task_count(t, split); i++) {
                const graft_example_t *ex = graft_task_example(t, split, i);
                int row = -1;
                assert_int_equal(sscanf(ex->text, fmt, &row), 1);
                assert_true(row >= 0 && row < CLS_EVAL);
                assert_int_equal(row % K, c);
                seen[row]++;
            }
        }
        graft_task_destroy(&t);
    }
    assert_int_equal(rows, CLS_TRAIN);
    for (int i = 0; i < CLS_EVAL; i++) {
        assert_int_equal(dev_seen[i], 1);
        assert_int_equal(test_seen[i], 1);
    }
    snprintf(path, sizeof path, "%s/client-%03d", out, K);
    assert_int_not_equal(access(path, F_OK), 0);

    snprintf(path, sizeof path, "%s/shards.tsv", out);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[256];
    assert_non_null(fgets(buf, sizeof buf, f));
    assert_string_equal(buf, "client\ttask\tlabel\tcount\n");
    long sum = 0;
    int n = 0;
    while (fgets(buf, sizeof buf, f)) {
        char client[32], task[32], label[32];
        long count;
        assert_int_equal(sscanf(buf, "%31[^\t]\t%31[^\t]\t%31[^\t]\t%ld", client, task, label, &count), 4);
        assert_string_equal(task, "cls");
        sum += count;
        n++;
    }
    fclose(f);
    assert_int_equal(n, K * 4); /* every client x the 4 labels */
    assert_int_equal(sum, CLS_TRAIN); /* train rows only */
    (void)fx;
}

static void test_write_layout(void **state) {
    fixture_t *fx = *state;
    char out[128];
    snprintf(out, sizeof out, "%s/shards", fx->dir);
    graft_shard_plan_t *p = plan_of(fx, 1, config(5, GRAFT_SHARD_LABEL, 0.5, 2));
    assert_int_equal(graft_shard_write(p, out), GRAFT_OK);
    check_written(fx, out, 5);
    graft_shard_plan_destroy(&p);
    /* Rewriting with fewer clients leaves no stale client folder behind. */
    p = plan_of(fx, 1, config(3, GRAFT_SHARD_GROUP, 0.5, 2));
    assert_int_equal(graft_shard_write(p, out), GRAFT_OK);
    check_written(fx, out, 3);
    graft_shard_plan_destroy(&p);
}

/* ---- the command ------------------------------------------------------------- */

/* Runs cmd, its output into out; its exit status. */
static int run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_command(void **state) {
    fixture_t *fx = *state;
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof cmd,
             "%s/graft data shard --tasks cls:classification:%s,gen:generation:%s --clients 4 "
             "--tasks_per_client 1 --by label --alpha 0.2 --seed 3 --out %s/cmd 2>&1",
             GRAFT_BINARY_DIR, fx->cls, fx->gen, fx->dir);
    /* --by label on the generation task is refused, naming its file */
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, fx->gen));
    snprintf(cmd, sizeof cmd,
             "%s/graft data shard --tasks cls:classification:%s,gen:generation:%s --clients 4 "
             "--seed 3 --out %s/cmd 2>&1",
             GRAFT_BINARY_DIR, fx->cls, fx->gen, fx->dir);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "cls (classification): by group"));
    assert_non_null(strstr(out, "gen (generation): by iid"));
    /* M = 1: cls on c0, c2 (30 dev and 30 test rows each), gen on c1, c3
     * (its one dev and one test row on c1). */
    assert_non_null(strstr(out, "  dev/test rows per client: c0 30/30, c2 30/30\n"));
    assert_non_null(strstr(out, "  dev/test rows per client: c1 1/1, c3 0/0\n"));
    char path[256];
    int lines;
    snprintf(path, sizeof path, "%s/cmd/client-001/gen.tsv", fx->dir);
    assert_true(count_lines(path, "train\t", &lines) > 0);
    assert_int_equal(count_lines(path, "dev\tt", &lines), 1);
    assert_int_equal(count_lines(path, "test\tt", &lines), 1);
    snprintf(path, sizeof path, "%s/cmd/client-003/gen.tsv", fx->dir);
    int train = count_lines(path, "train\t", &lines);
    assert_int_equal(train, lines); /* nothing but train rows */
    snprintf(cmd, sizeof cmd, "%s/graft data shard --tasks cls:classification:%s/missing.tsv "
             "--clients 2 --out %s/cmd 2>&1", GRAFT_BINARY_DIR, fx->dir, fx->dir);
    assert_int_equal(run(cmd, out, sizeof out), 1);
    assert_non_null(strstr(out, "missing.tsv"));
    snprintf(cmd, sizeof cmd, "%s/graft data shard --tasks cls:classification:%s --clients 0 "
             "--out %s/cmd 2>&1", GRAFT_BINARY_DIR, fx->cls, fx->dir);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "--clients must be at least 1"));
    /* An --out that is a file (the task file itself) is refused up front:
     * no table, nothing written. */
    snprintf(cmd, sizeof cmd, "%s/graft data shard --tasks cls:classification:%s --clients 2 "
             "--out %s 2>&1", GRAFT_BINARY_DIR, fx->cls, fx->cls);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "exists and is not a folder"));
    assert_null(strstr(out, "by group"));
    snprintf(cmd, sizeof cmd, "%s/graft data shard --tasks cls:classification:%s --clients 2 "
             "--out %s/sub/dir 2>&1", GRAFT_BINARY_DIR, fx->cls, fx->cls);
    assert_int_equal(run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "cannot make the folder"));
    assert_null(strstr(out, "by group"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_row_once_in_every_mode),
        cmocka_unit_test(test_dev_test_dealt_round_robin),
        cmocka_unit_test(test_dev_test_follow_train),
        cmocka_unit_test(test_deterministic_per_seed),
        cmocka_unit_test(test_label_skew_follows_alpha),
        cmocka_unit_test(test_whole_groups_balanced),
        cmocka_unit_test(test_auto_picks_by_group_size),
        cmocka_unit_test(test_task_assignment),
        cmocka_unit_test(test_refuses_impossible_plans),
        cmocka_unit_test(test_write_layout),
        cmocka_unit_test(test_command),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
