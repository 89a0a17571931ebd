/* test_eval_parts.c — federated evaluation's arithmetic: the statistics of
 * the parts of an evaluation (graft_trainer_eval_stats, part i of n), sent
 * through EvalResult messages (eval_wire.h, wire.h) and added up in worker
 * name order (coordinator/eval_answers.h) whatever order they arrive in,
 * give exactly the metrics of the whole evaluation (graft_trainer_evaluate):
 * the same counts, accuracy, macro-F1 and chrF, and loss, ECE and
 * perplexity to 1e-6 (float sums in another order). On a trained tiny trunk with a
 * classification and a generation task, under --eval_max and --decode_max
 * subsets too. And results that do not fit the task are refused.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "eval_answers.h"
#include "eval_wire.h"
#include "synthetic.h"
#include "trainer.h"
#include "wire.h"

static char g_dir[64];
static graft_trainer_t *g_tr;

/* A LoRA run on majority (classification) and shift (generation), trained
 * 30 steps so that the predictions are neither uniform nor all right. */
static int group_setup(void **state) {
    (void)state;
    if (synthetic_tasks_make(g_dir, sizeof g_dir, "eval_parts")) return -1;
    graft_run_config_t cfg;
    synthetic_run_config(&cfg, g_dir, "lora", NULL);
    char tasks[256];
    snprintf(tasks, sizeof tasks,
             "majority:classification:%s/majority.tsv,shift:generation:%s/shift.tsv", g_dir,
             g_dir);
    if (graft_options_set(graft_run_options, &cfg, "tasks", tasks, "test") ||
        graft_options_set(graft_run_options, &cfg, "gen_tokens", "8", "test") ||
        graft_trainer_new(&cfg, &g_tr))
        return -1;
    for (int s = 0; s < 30; s++) graft_trainer_step(g_tr, s % 2, 3e-3f);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    graft_trainer_destroy(&g_tr);
    synthetic_tasks_remove(g_dir);
    return 0;
}

/* Part p's statistics through an encoded and decoded EvalResult. */
static void part_over_wire(int t, int split, int p, int parts, graft_eval_stats_t *out) {
    graft_eval_stats_t s;
    graft_trainer_eval_stats(g_tr, t, split, p, parts, &s);
    const graft_task_t *task = graft_trainer_task(g_tr, t);
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = 1};
    graft_eval_stats_to_wire(&s, graft_task_name(task), 3, &m.eval_result);
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    free(m.eval_result.confusion);
    graft_msg_t d;
    char why[256] = "";
    assert_int_equal(graft_wire_decode(buf, len, NULL, &d, why, sizeof why), GRAFT_OK);
    free(buf);
    assert_int_equal(graft_eval_stats_from_wire(&d.eval_result, t, graft_task_kind(task),
                                                graft_task_num_labels(task), out, why, sizeof why),
                     GRAFT_OK);
    assert_int_equal(out->examples, s.examples);
    graft_msg_free(&d);
    graft_eval_stats_free(&s);
}

/* Float sums in another order, and under -O3 a row's float results may move
 * in the last bits with the batch it is in (the LM head multiplies only
 * the target rows: another M, another kernel path): 2e-10 relative seen. */
static void assert_close(double a, double b) {
    assert_true(fabs(a - b) <= 1e-6 * fmax(1.0, fabs(a)));
}

/* Parts 0..parts-1 of task t, arriving in reverse order from workers named
 * so that name order is neither arrival nor part order, against the whole. */
static void check_parts(int t, int split, int parts) {
    graft_eval_result_t whole, merged;
    graft_trainer_evaluate(g_tr, t, split, &whole);
    graft_eval_answers_t *a = graft_eval_answers_new();
    for (int p = 0; p < parts; p++) {
        char name[16];
        snprintf(name, sizeof name, "w%d", (p * 7) % parts);
        graft_eval_answers_ask(a, name, t);
        assert_int_equal(graft_eval_answers_state(a, name, t), GRAFT_EVAL_WAITING);
    }
    for (int p = parts - 1; p >= 0; p--) {
        graft_eval_stats_t s;
        part_over_wire(t, split, p, parts, &s);
        char name[16];
        snprintf(name, sizeof name, "w%d", (p * 7) % parts);
        graft_eval_answers_add(a, name, t, &s, (unsigned)p, (unsigned)parts);
        assert_int_equal(graft_eval_answers_state(a, name, t), GRAFT_EVAL_ANSWERED);
    }
    const graft_task_t *task = graft_trainer_task(g_tr, t);
    graft_eval_stats_t sum;
    const char *names[8];
    graft_eval_merge_t info;
    graft_eval_answers_merge(a, t, split, graft_task_kind(task), graft_task_num_labels(task),
                             &sum, names, NULL, NULL, NULL, 8, &info);
    assert_int_equal(info.answers, parts);
    assert_true(info.complete);
    for (int i = 1; i < parts; i++) assert_true(strcmp(names[i - 1], names[i]) < 0);
    graft_eval_stats_finish(&sum, &merged);
    graft_eval_stats_free(&sum);
    graft_eval_answers_destroy(&a);
    assert_true(whole.examples > 0);
    assert_int_equal(merged.examples, whole.examples);
    assert_close(merged.loss, whole.loss);
    if (graft_task_kind(task) == GRAFT_TASK_CLASSIFY) {
        assert_true(merged.cls.accuracy == whole.cls.accuracy);
        assert_true(merged.cls.macro_f1 == whole.cls.macro_f1);
        assert_close(merged.cls.ece, whole.cls.ece);
        /* not a degenerate model: some right, some wrong */
        assert_true(whole.cls.accuracy > 0.0 && whole.cls.accuracy < 1.0);
    } else {
        assert_int_equal(merged.chrf_examples, whole.chrf_examples);
        assert_true(merged.chrf == whole.chrf);
        assert_close(merged.perplexity, whole.perplexity);
        assert_true(whole.chrf > 0.0);
    }
}

static void test_parts_add_up(void **state) {
    (void)state;
    for (int t = 0; t < 2; t++)
        for (int parts = 1; parts <= 4; parts++) {
            check_parts(t, GRAFT_SPLIT_DEV, parts);
            check_parts(t, GRAFT_SPLIT_TEST, parts);
        }
}

/* Subsets: 37 of the 100 examples, strided; 5 decodes. */
static void test_parts_add_up_on_subsets(void **state) {
    (void)state;
    graft_trainer_set_eval_sizes(g_tr, 37, 5, 8);
    for (int t = 0; t < 2; t++) check_parts(t, GRAFT_SPLIT_TEST, 3);
    graft_trainer_set_eval_sizes(g_tr, 0, 0, 8);
}

/* A part with no example (more parts than examples) adds nothing. */
static void test_empty_part(void **state) {
    (void)state;
    graft_trainer_set_eval_sizes(g_tr, 2, 0, 8);
    graft_eval_stats_t s;
    graft_trainer_eval_stats(g_tr, 0, GRAFT_SPLIT_TEST, 2, 3, &s);
    assert_int_equal(s.examples, 0);
    graft_eval_result_t r;
    graft_eval_stats_finish(&s, &r);
    assert_int_equal(r.examples, 0);
    assert_true(r.cls.accuracy == 0.0);
    graft_eval_stats_free(&s);
    graft_trainer_set_eval_sizes(g_tr, 0, 0, 8);
}

static int alive_but_b(void *ctx, const char *name) {
    (void)ctx;
    return strcmp(name, "b") != 0;
}

/* Coverage: of 3 IID parts, "a" answers part 0, "c" answers part 0 again
 * (counted once), "d" answers part 2, "b" (lost) never answers, "e"'s
 * answer was refused; part 1 is missing. The merge counts a and d only,
 * names b as missing and c as a duplicate, and is not complete. */
static void test_coverage(void **state) {
    (void)state;
    graft_eval_answers_t *a = graft_eval_answers_new();
    const char *who[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++) graft_eval_answers_ask(a, who[i], 0);
    assert_int_equal(graft_eval_answers_state(a, "z", 0), GRAFT_EVAL_NOT_ASKED);
    graft_eval_stats_t s0, s0b, s2;
    graft_trainer_eval_stats(g_tr, 0, GRAFT_SPLIT_TEST, 0, 3, &s0);
    graft_trainer_eval_stats(g_tr, 0, GRAFT_SPLIT_TEST, 0, 3, &s0b);
    graft_trainer_eval_stats(g_tr, 0, GRAFT_SPLIT_TEST, 2, 3, &s2);
    int64_t want = s0.examples + s2.examples;
    graft_eval_answers_add(a, "d", 0, &s2, 2, 3);
    graft_eval_answers_add(a, "c", 0, &s0b, 0, 3);
    graft_eval_answers_add(a, "a", 0, &s0, 0, 3);
    graft_eval_answers_add(a, "e", 0, NULL, 0, 0);
    /* b is asked and waiting, but lost: nothing to wait for */
    assert_int_equal(graft_eval_answers_waiting(a, alive_but_b, NULL), 0);
    graft_eval_stats_t sum;
    const char *names[8], *missing[8], *dup[8];
    graft_eval_merge_t info;
    graft_eval_answers_merge(a, 0, GRAFT_SPLIT_TEST, GRAFT_TASK_CLASSIFY,
                             graft_task_num_labels(graft_trainer_task(g_tr, 0)), &sum, names,
                             NULL, missing, dup, 8, &info);
    assert_int_equal(info.answers, 2);
    assert_string_equal(names[0], "a");
    assert_string_equal(names[1], "d");
    assert_int_equal(info.missing, 1);
    assert_string_equal(missing[0], "b");
    assert_int_equal(info.duplicate, 1);
    assert_string_equal(dup[0], "c");
    assert_int_equal(info.parts_missing, 1);
    assert_false(info.complete);
    assert_int_equal(sum.examples, want);
    graft_eval_stats_free(&sum);
    graft_eval_answers_destroy(&a);
}

/* A result for another kind of task, or with another number of labels. */
static void test_misfits_refused(void **state) {
    (void)state;
    graft_eval_stats_t s, out;
    graft_trainer_eval_stats(g_tr, 0, GRAFT_SPLIT_DEV, 0, 1, &s);
    graft_wire_eval_result_t m;
    graft_eval_stats_to_wire(&s, "majority", 1, &m);
    char why[160];
    assert_int_equal(graft_eval_stats_from_wire(&m, 1, GRAFT_TASK_GENERATE, 0, &out, why,
                                                sizeof why), GRAFT_EINVAL);
    assert_string_equal(why, "a classification result for a generation task");
    int K = s.cls.num_labels;
    assert_int_equal(graft_eval_stats_from_wire(&m, 0, GRAFT_TASK_CLASSIFY, K + 1, &out, why,
                                                sizeof why), GRAFT_EINVAL);
    char want[64];
    snprintf(want, sizeof want, "%d labels, the task has %d", K, K + 1);
    assert_string_equal(why, want);
    free(m.confusion);
    graft_eval_stats_free(&s);

    /* A generation result's samples reach the logs and JSON events as
     * valid UTF-8: an ill-formed byte becomes U+FFFD, the worker's own
     * escapes (a backslash) stay as they are. */
    graft_eval_stats_t g;
    graft_eval_stats_init(&g, 1, GRAFT_SPLIT_DEV, GRAFT_TASK_GENERATE, 0);
    graft_eval_stats_to_wire(&g, "shift", 1, &m);
    m.sample_prompt = "caf\xc3\xa9 \\n";
    m.sample_output = "bad \xff byte";
    assert_int_equal(graft_eval_stats_from_wire(&m, 1, GRAFT_TASK_GENERATE, 0, &out, why,
                                                sizeof why), GRAFT_OK);
    assert_string_equal(out.sample_prompt, "caf\xc3\xa9 \\n");
    assert_string_equal(out.sample_output, "bad \xef\xbf\xbd byte");
    assert_string_equal(out.sample_reference, "");
    graft_eval_stats_free(&out);
    graft_eval_stats_free(&g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts_add_up),
        cmocka_unit_test(test_parts_add_up_on_subsets),
        cmocka_unit_test(test_empty_part),
        cmocka_unit_test(test_misfits_refused),
        cmocka_unit_test(test_coverage),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
