/* metrics.c — classification metrics (accuracy, macro-F1, ECE), target-token
 * loss and perplexity, and sacreBLEU-compatible chrF (metrics.h). */
#include "metrics.h"

#include "tokenizer.h"

#include <math.h>
#include <string.h>

/* ---- classification ----------------------------------------------------- */

void graft_cls_metrics_init(graft_cls_metrics_t *m, int num_labels) {
    GRAFT_ASSERT(m && num_labels > 0);
    memset(m, 0, sizeof *m);
    m->num_labels = num_labels;
    m->confusion = graft_xcalloc((size_t)num_labels * (size_t)num_labels, sizeof *m->confusion);
}

void graft_cls_metrics_free(graft_cls_metrics_t *m) {
    free(m->confusion);
    memset(m, 0, sizeof *m);
}

void graft_cls_metrics_reset(graft_cls_metrics_t *m) {
    int K = m->num_labels;
    int64_t *conf = m->confusion;
    memset(conf, 0, (size_t)K * (size_t)K * sizeof *conf);
    memset(m, 0, sizeof *m);
    m->num_labels = K;
    m->confusion = conf;
}

/* Bin b holds confidences in (b/15, (b+1)/15]; 0 goes to bin 0. */
static int ece_bin(double conf) {
    int b = (int)ceil(conf * GRAFT_ECE_BINS) - 1;
    if (b < 0) b = 0;
    if (b > GRAFT_ECE_BINS - 1) b = GRAFT_ECE_BINS - 1;
    return b;
}

int graft_cls_metrics_add(graft_cls_metrics_t *m, const float *probs, int label) {
    int K = m->num_labels;
    GRAFT_ASSERT(probs && label >= 0 && label < K);
    int pred = 0;
    for (int k = 1; k < K; k++)
        if (probs[k] > probs[pred]) pred = k;
    double conf = probs[pred];
    if (!(conf >= 0.0)) conf = 0.0; /* negative or NaN */
    if (conf > 1.0) conf = 1.0;
    int b = ece_bin(conf);
    m->confusion[(size_t)label * (size_t)K + (size_t)pred]++;
    m->count++;
    m->bin_count[b]++;
    m->bin_correct[b] += pred == label;
    m->bin_conf[b] += conf;
    return pred;
}

void graft_cls_metrics_merge(graft_cls_metrics_t *dst, const graft_cls_metrics_t *src) {
    GRAFT_ASSERT(dst->num_labels == src->num_labels);
    size_t KK = (size_t)dst->num_labels * (size_t)dst->num_labels;
    for (size_t i = 0; i < KK; i++) dst->confusion[i] += src->confusion[i];
    dst->count += src->count;
    for (int b = 0; b < GRAFT_ECE_BINS; b++) {
        dst->bin_count[b] += src->bin_count[b];
        dst->bin_correct[b] += src->bin_correct[b];
        dst->bin_conf[b] += src->bin_conf[b];
    }
}

double graft_cls_metrics_f1(const graft_cls_metrics_t *m, int label) {
    int K = m->num_labels;
    GRAFT_ASSERT(label >= 0 && label < K);
    int64_t tp = m->confusion[(size_t)label * (size_t)K + (size_t)label];
    int64_t row = 0, col = 0; /* true label == label, predicted == label */
    for (int k = 0; k < K; k++) {
        row += m->confusion[(size_t)label * (size_t)K + (size_t)k];
        col += m->confusion[(size_t)k * (size_t)K + (size_t)label];
    }
    int64_t fn = row - tp, fp = col - tp;
    if (tp + fn + fp == 0) return -1.0;
    return 2.0 * (double)tp / (double)(2 * tp + fp + fn);
}

void graft_cls_metrics_finish(const graft_cls_metrics_t *m, graft_cls_result_t *out) {
    memset(out, 0, sizeof *out);
    out->count = m->count;
    if (m->count == 0) return;
    int K = m->num_labels;
    int64_t correct = 0;
    for (int k = 0; k < K; k++) correct += m->confusion[(size_t)k * (size_t)K + (size_t)k];
    out->accuracy = (double)correct / (double)m->count;
    double f1_sum = 0.0;
    int present = 0;
    for (int k = 0; k < K; k++) {
        double f1 = graft_cls_metrics_f1(m, k);
        if (f1 < 0.0) continue;
        f1_sum += f1;
        present++;
    }
    out->macro_f1 = present ? f1_sum / present : 0.0;
    /* sum_b |B_b|/N |acc_b - conf_b| = sum_b |correct_b - conf_sum_b| / N */
    double ece = 0.0;
    for (int b = 0; b < GRAFT_ECE_BINS; b++)
        if (m->bin_count[b] > 0) ece += fabs((double)m->bin_correct[b] - m->bin_conf[b]);
    out->ece = ece / (double)m->count;
}

/* ---- target-token loss -------------------------------------------------- */

void graft_lm_metrics_init(graft_lm_metrics_t *m) { memset(m, 0, sizeof *m); }

void graft_lm_metrics_add(graft_lm_metrics_t *m, double mean_loss, int64_t count) {
    GRAFT_ASSERT(count >= 0);
    if (count == 0) return;
    m->loss_sum += mean_loss * (double)count;
    m->count += count;
}

void graft_lm_metrics_merge(graft_lm_metrics_t *dst, const graft_lm_metrics_t *src) {
    dst->loss_sum += src->loss_sum;
    dst->count += src->count;
}

double graft_lm_metrics_loss(const graft_lm_metrics_t *m) {
    return m->count ? m->loss_sum / (double)m->count : 0.0;
}

double graft_lm_metrics_perplexity(const graft_lm_metrics_t *m) {
    return exp(graft_lm_metrics_loss(m));
}

/* ---- chrF --------------------------------------------------------------- */

/* Python's str.isspace(), which is what sacreBLEU's "".join(s.split())
 * removes. */
static int is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The code points of s without whitespace; *len of them, caller frees. */
static uint32_t *chrf_chars(const char *s, size_t n, size_t *len) {
    uint32_t *out = graft_xmalloc((n ? n : 1) * sizeof *out);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, m = 0;
    while (i < n) {
        uint32_t cp;
        i += graft_utf8_next(u + i, n - i, &cp);
        if (!is_space(cp)) out[m++] = cp;
    }
    *len = m;
    return out;
}

typedef struct {
    uint32_t c[GRAFT_CHRF_ORDER]; /* unused tail stays 0 */
} ngram_t;

/* Any total order will do: only equal runs matter. */
static int cmp_ngram(const void *a, const void *b) { return memcmp(a, b, sizeof(ngram_t)); }

static ngram_t *sorted_ngrams(const uint32_t *s, size_t count, int n) {
    ngram_t *g = graft_xcalloc(count, sizeof *g);
    for (size_t i = 0; i < count; i++) memcpy(g[i].c, s + i, (size_t)n * sizeof *s);
    qsort(g, count, sizeof *g, cmp_ngram);
    return g;
}

static size_t run_length(const ngram_t *g, size_t count, size_t i) {
    size_t j = i + 1;
    while (j < count && cmp_ngram(&g[i], &g[j]) == 0) j++;
    return j - i;
}

/* Clipped matches between the order-n n-grams of h and r. */
static int64_t ngram_matches(const uint32_t *h, size_t nh, const uint32_t *r, size_t nr, int n) {
    size_t ch = nh + 1 - (size_t)n, cr = nr + 1 - (size_t)n;
    ngram_t *a = sorted_ngrams(h, ch, n), *b = sorted_ngrams(r, cr, n);
    int64_t match = 0;
    size_t i = 0, j = 0;
    while (i < ch && j < cr) {
        int c = cmp_ngram(&a[i], &b[j]);
        if (c < 0) {
            i++;
        } else if (c > 0) {
            j++;
        } else {
            size_t ri = run_length(a, ch, i), rj = run_length(b, cr, j);
            match += (int64_t)(ri < rj ? ri : rj);
            i += ri, j += rj;
        }
    }
    free(a);
    free(b);
    return match;
}

void graft_chrf_init(graft_chrf_t *c) { memset(c, 0, sizeof *c); }

void graft_chrf_add(graft_chrf_t *c, const char *hyp, size_t hyp_len, const char *ref,
                    size_t ref_len) {
    GRAFT_ASSERT((hyp || hyp_len == 0) && (ref || ref_len == 0));
    size_t nh, nr;
    uint32_t *h = chrf_chars(hyp, hyp_len, &nh), *r = chrf_chars(ref, ref_len, &nr);
    for (int k = 0; k < GRAFT_CHRF_ORDER; k++) {
        size_t n = (size_t)k + 1;
        size_t ch = nh >= n ? nh - n + 1 : 0, cr = nr >= n ? nr - n + 1 : 0;
        c->hyp[k] += (int64_t)ch;
        c->ref[k] += (int64_t)cr;
        if (ch && cr) c->match[k] += ngram_matches(h, nh, r, nr, k + 1);
    }
    free(h);
    free(r);
}

void graft_chrf_merge(graft_chrf_t *dst, const graft_chrf_t *src) {
    for (int k = 0; k < GRAFT_CHRF_ORDER; k++) {
        dst->hyp[k] += src->hyp[k];
        dst->ref[k] += src->ref[k];
        dst->match[k] += src->match[k];
    }
}

double graft_chrf_score(const graft_chrf_t *c) {
    double avg_p = 0.0, avg_r = 0.0;
    int effective = 0;
    for (int k = 0; k < GRAFT_CHRF_ORDER; k++) {
        if (c->hyp[k] == 0 || c->ref[k] == 0) continue;
        avg_p += (double)c->match[k] / (double)c->hyp[k];
        avg_r += (double)c->match[k] / (double)c->ref[k];
        effective++;
    }
    if (effective == 0) return 0.0;
    avg_p /= effective;
    avg_r /= effective;
    if (avg_p + avg_r == 0.0) return 0.0;
    double b2 = GRAFT_CHRF_BETA * GRAFT_CHRF_BETA;
    return 100.0 * (1.0 + b2) * avg_p * avg_r / (b2 * avg_p + avg_r);
}

double graft_chrf_sentence(const char *hyp, size_t hyp_len, const char *ref, size_t ref_len) {
    graft_chrf_t c;
    graft_chrf_init(&c);
    graft_chrf_add(&c, hyp, hyp_len, ref, ref_len);
    return graft_chrf_score(&c);
}
