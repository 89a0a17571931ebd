/* test_metrics.c — accuracy, macro-F1 and ECE on a hand-computed example,
 * merging, target-token loss and perplexity, and chrF against values worked
 * out by hand and with a Python re-implementation of sacreBLEU 2.x CHRF()
 * (the two HF "metric card" examples reproduce sacreBLEU's published
 * outputs 61.576379378113785 and 84.64214891738334). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "metrics.h"

#define assert_close(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))

/* Six examples over labels 0..2 of a 4-label task (label 3 never occurs).
 *   probs                    true  pred  conf  bin (b/15, (b+1)/15]
 *   .70  .20  .10  0          0     0    .70   10  correct
 *   .10  .85  .05  0          1     1    .85   12  correct
 *   .62  .30  .08  0          1     0    .62    9  wrong
 *   .18  .18  .64  0          2     2    .64    9  correct
 *   .10  .50  .40  0          2     1    .50    7  wrong
 *   .95  .03  .02  0          0     0    .95   14  correct
 * accuracy 4/6. F1: label 0 tp 2 fp 1 fn 0 -> 4/5; label 1 tp 1 fp 1 fn 1
 * -> 1/2; label 2 tp 1 fp 0 fn 1 -> 2/3; label 3 skipped; macro 59/90.
 * ECE: bins 7: |0-.5|, 9: |1-1.26|, 10: |1-.7|, 12: |1-.85|, 14: |1-.95|
 * sum 1.26, / 6 = 0.21. */
static const float example_probs[6][4] = {
    {0.70f, 0.20f, 0.10f, 0}, {0.10f, 0.85f, 0.05f, 0}, {0.62f, 0.30f, 0.08f, 0},
    {0.18f, 0.18f, 0.64f, 0}, {0.10f, 0.50f, 0.40f, 0}, {0.95f, 0.03f, 0.02f, 0},
};
static const int example_labels[6] = {0, 1, 1, 2, 2, 0};
static const int example_preds[6] = {0, 1, 0, 2, 1, 0};

static void test_classification_hand_computed(void **state) {
    (void)state;
    graft_cls_metrics_t m;
    graft_cls_metrics_init(&m, 4);
    for (int i = 0; i < 6; i++)
        assert_int_equal(graft_cls_metrics_add(&m, example_probs[i], example_labels[i]),
                         example_preds[i]);
    const int64_t want_confusion[16] = {2, 0, 0, 0, /* true 0 */
                                        1, 1, 0, 0, /* true 1 */
                                        0, 1, 1, 0, /* true 2 */
                                        0, 0, 0, 0};
    assert_memory_equal(m.confusion, want_confusion, sizeof want_confusion);
    assert_close(graft_cls_metrics_f1(&m, 0), 0.8, 1e-12);
    assert_close(graft_cls_metrics_f1(&m, 1), 0.5, 1e-12);
    assert_close(graft_cls_metrics_f1(&m, 2), 2.0 / 3.0, 1e-12);
    assert_close(graft_cls_metrics_f1(&m, 3), -1.0, 0);
    int64_t want_bins[GRAFT_ECE_BINS] = {0};
    want_bins[7] = 1, want_bins[9] = 2, want_bins[10] = 1, want_bins[12] = 1, want_bins[14] = 1;
    assert_memory_equal(m.bin_count, want_bins, sizeof want_bins);

    graft_cls_result_t r;
    graft_cls_metrics_finish(&m, &r);
    assert_int_equal(r.count, 6);
    assert_close(r.accuracy, 4.0 / 6.0, 1e-12);
    assert_close(r.macro_f1, 59.0 / 90.0, 1e-12);
    assert_close(r.ece, 0.21, 1e-6); /* the probabilities are floats */
    graft_cls_metrics_free(&m);
    assert_null(m.confusion);
}

static void test_classification_merge_and_reset(void **state) {
    (void)state;
    graft_cls_metrics_t a, b, all;
    graft_cls_metrics_init(&a, 4);
    graft_cls_metrics_init(&b, 4);
    graft_cls_metrics_init(&all, 4);
    for (int i = 0; i < 6; i++) {
        graft_cls_metrics_add(i < 2 ? &a : &b, example_probs[i], example_labels[i]);
        graft_cls_metrics_add(&all, example_probs[i], example_labels[i]);
    }
    graft_cls_metrics_merge(&a, &b);
    graft_cls_result_t ra, rall;
    graft_cls_metrics_finish(&a, &ra);
    graft_cls_metrics_finish(&all, &rall);
    assert_int_equal(ra.count, 6);
    assert_memory_equal(a.confusion, all.confusion, 16 * sizeof(int64_t));
    assert_close(ra.accuracy, rall.accuracy, 0);
    assert_close(ra.macro_f1, rall.macro_f1, 0);
    assert_close(ra.ece, rall.ece, 1e-12);

    graft_cls_metrics_reset(&a);
    graft_cls_metrics_finish(&a, &ra);
    assert_int_equal(ra.count, 0);
    assert_close(ra.accuracy, 0, 0);
    assert_close(ra.macro_f1, 0, 0);
    assert_close(ra.ece, 0, 0);
    assert_int_equal(a.num_labels, 4);
    for (int i = 0; i < 16; i++) assert_int_equal(a.confusion[i], 0);
    graft_cls_metrics_free(&a);
    graft_cls_metrics_free(&b);
    graft_cls_metrics_free(&all);
}

/* Perfect and confident: ECE 0 and F1 1; perfect but under-confident at
 * 0.5: ECE 0.5. Ties go to the first label; confidence 1 lands in the last
 * bin and a NaN row counts as confidence 0 in the first. */
static void test_classification_edges(void **state) {
    (void)state;
    graft_cls_metrics_t m;
    graft_cls_metrics_init(&m, 2);
    const float sure0[2] = {1.0f, 0.0f}, sure1[2] = {0.0f, 1.0f};
    graft_cls_metrics_add(&m, sure0, 0);
    graft_cls_metrics_add(&m, sure1, 1);
    assert_int_equal(m.bin_count[GRAFT_ECE_BINS - 1], 2);
    graft_cls_result_t r;
    graft_cls_metrics_finish(&m, &r);
    assert_close(r.accuracy, 1.0, 0);
    assert_close(r.macro_f1, 1.0, 0);
    assert_close(r.ece, 0.0, 1e-12);

    graft_cls_metrics_reset(&m);
    const float tie[2] = {0.5f, 0.5f};
    assert_int_equal(graft_cls_metrics_add(&m, tie, 0), 0);
    assert_int_equal(graft_cls_metrics_add(&m, tie, 0), 0);
    assert_int_equal(m.bin_count[7], 2); /* 0.5 is in (7/15, 8/15] */
    graft_cls_metrics_finish(&m, &r);
    assert_close(r.accuracy, 1.0, 0);
    assert_close(r.macro_f1, 1.0, 0); /* label 1 never seen: skipped */
    assert_close(r.ece, 0.5, 1e-12);

    graft_cls_metrics_reset(&m);
    const float bad[2] = {NAN, NAN};
    assert_int_equal(graft_cls_metrics_add(&m, bad, 1), 0);
    assert_int_equal(m.bin_count[0], 1);
    graft_cls_metrics_finish(&m, &r);
    assert_close(r.accuracy, 0.0, 0);
    assert_close(r.macro_f1, 0.0, 0);
    assert_close(r.ece, 0.0, 0); /* wrong with confidence 0 is calibrated */
    graft_cls_metrics_free(&m);
}

static void test_lm_loss_and_perplexity(void **state) {
    (void)state;
    graft_lm_metrics_t m, other;
    graft_lm_metrics_init(&m);
    assert_close(graft_lm_metrics_loss(&m), 0.0, 0);
    assert_close(graft_lm_metrics_perplexity(&m), 1.0, 0);
    graft_lm_metrics_add(&m, 2.0, 10);
    graft_lm_metrics_add(&m, 123.0, 0); /* a batch without targets adds nothing */
    graft_lm_metrics_init(&other);
    graft_lm_metrics_add(&other, 1.0, 30);
    graft_lm_metrics_merge(&m, &other);
    assert_int_equal(m.count, 40);
    assert_close(graft_lm_metrics_loss(&m), 1.25, 1e-12); /* (20 + 30) / 40 */
    assert_close(graft_lm_metrics_perplexity(&m), exp(1.25), 1e-12);
}

static double chrf(const char *hyp, const char *ref) {
    return graft_chrf_sentence(hyp, strlen(hyp), ref, strlen(ref));
}

static void test_chrf_extremes(void **state) {
    (void)state;
    assert_close(chrf("abc", "abc"), 100.0, 1e-12);
    assert_close(chrf("A longer sentence, with punctuation.", "A longer sentence, with punctuation."),
                 100.0, 1e-12);
    assert_close(chrf("abc", "xyz"), 0.0, 0);
    assert_close(chrf("", "abc"), 0.0, 0);
    assert_close(chrf("abc", ""), 0.0, 0);
    assert_close(chrf("", ""), 0.0, 0); /* sacreBLEU: no order counts */
    /* whitespace is removed before counting: these are identical */
    assert_close(chrf("ab ab", "abab"), 100.0, 1e-12);
}

static void test_chrf_hand_checked(void **state) {
    (void)state;
    /* "thecat" vs "thehat": matches 5/6, 3/5, 1/4, then 0 of 3, 2, 1.
     * P = R = (5/6 + 3/5 + 1/4) / 6 = 101/360, so chrF = 100 * 101/360. */
    assert_close(chrf("the cat", "the hat"), 10100.0 / 360.0, 1e-9);
    /* "aab" vs "ab": unigrams P 2/3 R 1; bigrams P 1/2 R 1; trigrams have no
     * reference n-gram so they do not count. P = 7/12, R = 1,
     * F2 = 5 P R / (4 P + R) = 35/40. */
    assert_close(chrf("aab", "ab"), 87.5, 1e-9);
    graft_chrf_t c;
    graft_chrf_init(&c);
    graft_chrf_add(&c, "aab", 3, "ab", 2);
    const int64_t want_hyp[6] = {3, 2, 1, 0, 0, 0}, want_ref[6] = {2, 1, 0, 0, 0, 0},
                  want_match[6] = {2, 1, 0, 0, 0, 0};
    assert_memory_equal(c.hyp, want_hyp, sizeof want_hyp);
    assert_memory_equal(c.ref, want_ref, sizeof want_ref);
    assert_memory_equal(c.match, want_match, sizeof want_match);
}

/* Values from the Python re-implementation of sacreBLEU 2.x (n-grams of
 * code points, not bytes). */
static void test_chrf_matches_sacrebleu(void **state) {
    (void)state;
    assert_close(chrf("The relationship between Obama and Netanyahu is not exactly friendly.",
                      "The ties between Obama and Netanyahu are not particularly friendly."),
                 61.576379378113785, 1e-9);
    assert_close(chrf("héllo wörld", "hello world"), 31.22354497354498, 1e-9);
    assert_close(chrf("a", "abcdefgh"), 15.151515151515152, 1e-9);

    const char *hyps[2] = {"The relationship between cats and dogs is not exactly friendly.",
                           "a good bookshop is just a genteel black hole that knows how to read."};
    const char *refs[2] = {"The relationship between dogs and cats is not exactly friendly.",
                           "A good bookshop is just a genteel Black Hole that knows how to read."};
    graft_chrf_t corpus, part;
    graft_chrf_init(&corpus);
    graft_chrf_init(&part);
    graft_chrf_add(&corpus, hyps[0], strlen(hyps[0]), refs[0], strlen(refs[0]));
    graft_chrf_add(&part, hyps[1], strlen(hyps[1]), refs[1], strlen(refs[1]));
    graft_chrf_merge(&corpus, &part);
    /* corpus statistics first, not the mean of 84.4113... and 84.8670... */
    assert_close(graft_chrf_score(&corpus), 84.64214891738334, 1e-9);
    assert_close(chrf(hyps[0], refs[0]), 84.41131092011065, 1e-9);
    assert_close(chrf(hyps[1], refs[1]), 84.8670547262852, 1e-9);
}

/* Unicode whitespace (EM SPACE, NO-BREAK SPACE) is removed like ASCII
 * space, and ill-formed bytes become U+FFFD per maximal subpart, as Python's
 * decode(errors="replace") does: E0 A0 is one, FF one, ED A0 80 three. */
static void test_chrf_unicode_and_invalid_bytes(void **state) {
    (void)state;
    const char hyp[] = "ab\xe2\x80\x83" "cd\xe0\xa0 \xff\xc2\xa0" "e";
    const char ref[] = "ab cd\xef\xbf\xbd\xef\xbf\xbd" "e";
    graft_chrf_t c;
    graft_chrf_init(&c);
    graft_chrf_add(&c, hyp, sizeof hyp - 1, ref, sizeof ref - 1);
    const int64_t want[6] = {7, 6, 5, 4, 3, 2};
    assert_memory_equal(c.hyp, want, sizeof want);
    assert_memory_equal(c.ref, want, sizeof want);
    assert_memory_equal(c.match, want, sizeof want);
    assert_close(graft_chrf_score(&c), 100.0, 1e-12);

    const char surrogate[] = "x\xe0\xa0y\xed\xa0\x80z";
    const char replaced[] = "x\xef\xbf\xbdy\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz";
    graft_chrf_init(&c);
    graft_chrf_add(&c, surrogate, sizeof surrogate - 1, replaced, sizeof replaced - 1);
    assert_int_equal(c.hyp[0], 7);
    assert_int_equal(c.match[5], 2);
    assert_close(graft_chrf_score(&c), 100.0, 1e-12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classification_hand_computed),
        cmocka_unit_test(test_classification_merge_and_reset),
        cmocka_unit_test(test_classification_edges),
        cmocka_unit_test(test_lm_loss_and_perplexity),
        cmocka_unit_test(test_chrf_extremes),
        cmocka_unit_test(test_chrf_hand_checked),
        cmocka_unit_test(test_chrf_matches_sacrebleu),
        cmocka_unit_test(test_chrf_unicode_and_invalid_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
