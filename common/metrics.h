/* metrics.h — evaluation metrics of DESIGN §3, as accumulators: add one
 * example (or one batch) at a time, merge accumulators computed on different
 * shards or workers, then finish. Merging adds integer counts exactly; the
 * few floating-point sums (ECE confidences, losses) depend on the merge
 * order, so merge in a fixed order (by worker) for reproducible numbers.
 *
 * Classification (graft_cls_metrics_t):
 *   prediction  argmax of the probability row (the first on ties);
 *   accuracy    correct / count;
 *   macro-F1    mean over labels of F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k),
 *               skipping labels with no true and no predicted example (they
 *               have no defined F1; this is scikit-learn's f1_score(...,
 *               average="macro") when labels are not given explicitly);
 *   ECE         15 equal-width confidence bins, bin b = (b/15, (b+1)/15]
 *               (a confidence of exactly 0 goes to bin 0), confidence = the
 *               predicted label's probability:
 *                 ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|
 *               (Guo et al. 2017). Probabilities are clamped to [0, 1] and
 *               a NaN confidence counts as 0, so a diverged model yields a
 *               number, not a crash.
 *   With count == 0 every metric is 0.
 *
 * Generation:
 *   graft_lm_metrics_t  mean next-token loss over target tokens and its
 *                       perplexity exp(loss) (0 and 1 with no tokens).
 *   graft_chrf_t        chrF as in sacreBLEU 2.x with its defaults (CHRF():
 *                       char_order 6, word_order 0, beta 2, case kept,
 *                       whitespace=False, eps_smoothing=False):
 *     - text is decoded from UTF-8 to code points (an invalid sequence
 *       becomes one U+FFFD per maximal ill-formed subpart, as Python's
 *       errors="replace" does) and every Unicode whitespace character
 *       (Python's str.isspace()) is removed;
 *     - for n = 1..6 the statistics are: hypothesis n-grams, reference
 *       n-grams and matches = sum over n-grams of min(hyp count, ref count);
 *     - the score averages precision and recall over the orders n whose
 *       hypothesis and reference counts are both non-zero (sacreBLEU's
 *       "effective order"), then returns 100 * (1+b^2) P R / (b^2 P + R)
 *       with b = 2, or 0 when P + R = 0 or no order counts (so two empty
 *       strings score 0, as in sacreBLEU).
 *     The corpus score sums the statistics over all sentence pairs first
 *     and then computes the score once (sacreBLEU's corpus_score), which is
 *     not the mean of the sentence scores.
 *
 * Ownership: graft_cls_metrics_t owns its confusion matrix; init allocates
 * it and free releases it. The other accumulators are plain values with no
 * heap memory. Callers own the strings and rows they pass in.
 */
#ifndef GRAFT_METRICS_H
#define GRAFT_METRICS_H

#include "graft.h"

#define GRAFT_ECE_BINS 15

typedef struct {
    int num_labels;
    int64_t *confusion; /* (K, K): [true label][predicted label] */
    int64_t count;
    int64_t bin_count[GRAFT_ECE_BINS];
    int64_t bin_correct[GRAFT_ECE_BINS];
    double bin_conf[GRAFT_ECE_BINS]; /* sum of confidences in the bin */
} graft_cls_metrics_t;

typedef struct {
    double accuracy; /* in [0, 1] */
    double macro_f1; /* in [0, 1] */
    double ece;      /* in [0, 1] */
    int64_t count;
} graft_cls_result_t;

void graft_cls_metrics_init(graft_cls_metrics_t *m, int num_labels);
void graft_cls_metrics_free(graft_cls_metrics_t *m);
void graft_cls_metrics_reset(graft_cls_metrics_t *m);

/* Adds one example: probs is its row of K class probabilities, label its
 * true label in [0, K) (asserted). Returns the predicted label. */
int graft_cls_metrics_add(graft_cls_metrics_t *m, const float *probs, int label);

/* dst += src; both must have the same number of labels (asserted). */
void graft_cls_metrics_merge(graft_cls_metrics_t *dst, const graft_cls_metrics_t *src);

void graft_cls_metrics_finish(const graft_cls_metrics_t *m, graft_cls_result_t *out);

/* F1 of one label, or -1 if it has no true and no predicted example. */
double graft_cls_metrics_f1(const graft_cls_metrics_t *m, int label);

/* ---- generation --------------------------------------------------------- */

typedef struct {
    double loss_sum; /* sum of per-token losses */
    int64_t count;   /* target tokens */
} graft_lm_metrics_t;

void graft_lm_metrics_init(graft_lm_metrics_t *m);
/* Adds a batch whose mean loss over count target tokens is mean_loss (what
 * graft_gpt2_forward() returns, with loss_count tokens). */
void graft_lm_metrics_add(graft_lm_metrics_t *m, double mean_loss, int64_t count);
void graft_lm_metrics_merge(graft_lm_metrics_t *dst, const graft_lm_metrics_t *src);
double graft_lm_metrics_loss(const graft_lm_metrics_t *m);
double graft_lm_metrics_perplexity(const graft_lm_metrics_t *m);

#define GRAFT_CHRF_ORDER 6
#define GRAFT_CHRF_BETA 2.0

typedef struct {
    int64_t hyp[GRAFT_CHRF_ORDER];   /* hypothesis n-grams of order n+1 */
    int64_t ref[GRAFT_CHRF_ORDER];   /* reference n-grams */
    int64_t match[GRAFT_CHRF_ORDER]; /* clipped matches */
} graft_chrf_t;

void graft_chrf_init(graft_chrf_t *c);
/* Adds the statistics of one hypothesis/reference pair (byte strings with
 * lengths: decodes may hold any byte). */
void graft_chrf_add(graft_chrf_t *c, const char *hyp, size_t hyp_len, const char *ref,
                    size_t ref_len);
void graft_chrf_merge(graft_chrf_t *dst, const graft_chrf_t *src);
/* The chrF of the accumulated statistics, in [0, 100]. */
double graft_chrf_score(const graft_chrf_t *c);
/* Sentence-level chrF of one pair, in [0, 100]. */
double graft_chrf_sentence(const char *hyp, size_t hyp_len, const char *ref, size_t ref_len);

#endif
