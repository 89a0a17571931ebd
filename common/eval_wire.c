/* eval_wire.c — evaluation statistics to and from EvalResult (eval_wire.h). */
#include "eval_wire.h"

#include <stdio.h>
#include <string.h>

#include "tokenizer.h"

_Static_assert(GRAFT_WIRE_ECE_BINS == GRAFT_ECE_BINS, "ECE bins differ");
_Static_assert(GRAFT_WIRE_CHRF_ORDER == GRAFT_CHRF_ORDER, "chrF orders differ");

void graft_eval_stats_to_wire(const graft_eval_stats_t *s, const char *task, uint64_t round,
                              graft_wire_eval_result_t *out) {
    memset(out, 0, sizeof *out);
    out->round = round;
    out->task = (char *)task;
    out->split = s->split;
    out->examples = (uint64_t)s->examples;
    out->loss_sum = s->loss.loss_sum;
    out->loss_count = (uint64_t)s->loss.count;
    if (s->kind == GRAFT_TASK_CLASSIFY) {
        int K = s->cls.num_labels;
        out->nlabels = K;
        out->confusion = graft_xmalloc((size_t)K * K * sizeof *out->confusion);
        for (size_t i = 0; i < (size_t)K * K; i++)
            out->confusion[i] = (uint64_t)s->cls.confusion[i];
        for (int b = 0; b < GRAFT_ECE_BINS; b++) {
            out->ece_count[b] = (uint64_t)s->cls.bin_count[b];
            out->ece_correct[b] = (uint64_t)s->cls.bin_correct[b];
            out->ece_confidence[b] = s->cls.bin_conf[b];
        }
        return;
    }
    for (int n = 0; n < GRAFT_CHRF_ORDER; n++) {
        out->chrf_hyp[n] = (uint64_t)s->chrf.hyp[n];
        out->chrf_ref[n] = (uint64_t)s->chrf.ref[n];
        out->chrf_match[n] = (uint64_t)s->chrf.match[n];
    }
    out->decoded = (uint64_t)s->decoded;
    out->sample_prompt = (char *)s->sample_prompt;
    out->sample_output = (char *)s->sample_output;
    out->sample_reference = (char *)s->sample_reference;
}

/* src (already printable: the worker escaped it, wire.c refused control
 * bytes) into dst (cap bytes) as valid UTF-8 for the logs and JSON events:
 * ill-formed sequences become U+FFFD; cut at a character that does not fit. */
static void utf8_clean(char *dst, size_t cap, const char *src) {
    const unsigned char *s = (const unsigned char *)src;
    size_t n = strlen(src), i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        size_t used = graft_utf8_next(s + i, n - i, &cp);
        const char *piece = src + i;
        size_t plen = used;
        if (cp == 0xFFFD && !(used == 3 && s[i] == 0xEF)) piece = "\xEF\xBF\xBD", plen = 3;
        if (o + plen + 1 > cap) break;
        memcpy(dst + o, piece, plen);
        o += plen;
        i += used;
    }
    dst[o] = '\0';
}

/* Counts beyond this are no evaluation's: refused before they overflow a
 * merge. */
#define MAX_COUNT ((uint64_t)1 << 48)

static int too_large(const uint64_t *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (v[i] > MAX_COUNT) return 1;
    return 0;
}

int graft_eval_stats_from_wire(const graft_wire_eval_result_t *m, int t, graft_task_kind_t kind,
                               int num_labels, graft_eval_stats_t *s, char *why, size_t why_len) {
    memset(s, 0, sizeof *s);
    int cls = kind == GRAFT_TASK_CLASSIFY;
    if (cls != (m->nlabels > 0)) {
        snprintf(why, why_len, "a %s result for a %s task",
                 m->nlabels > 0 ? "classification" : "generation",
                 cls ? "classification" : "generation");
        return GRAFT_EINVAL;
    }
    if (cls && m->nlabels != num_labels) {
        snprintf(why, why_len, "%d labels, the task has %d", m->nlabels, num_labels);
        return GRAFT_EINVAL;
    }
    uint64_t counts[] = {m->examples, m->loss_count, m->decoded};
    if (too_large(counts, 3) || too_large(m->chrf_hyp, GRAFT_CHRF_ORDER) ||
        too_large(m->chrf_ref, GRAFT_CHRF_ORDER)) {
        snprintf(why, why_len, "counts over 2^48");
        return GRAFT_EINVAL;
    }
    graft_eval_stats_init(s, t, m->split, kind, num_labels);
    s->examples = (int64_t)m->examples;
    s->loss.loss_sum = m->loss_sum;
    s->loss.count = (int64_t)m->loss_count;
    if (cls) {
        /* wire.c checked that the counts add up to examples */
        for (size_t i = 0; i < (size_t)num_labels * num_labels; i++)
            s->cls.confusion[i] = (int64_t)m->confusion[i];
        s->cls.count = (int64_t)m->examples;
        for (int b = 0; b < GRAFT_ECE_BINS; b++) {
            s->cls.bin_count[b] = (int64_t)m->ece_count[b];
            s->cls.bin_correct[b] = (int64_t)m->ece_correct[b];
            s->cls.bin_conf[b] = m->ece_confidence[b];
        }
        return GRAFT_OK;
    }
    for (int n = 0; n < GRAFT_CHRF_ORDER; n++) {
        s->chrf.hyp[n] = (int64_t)m->chrf_hyp[n];
        s->chrf.ref[n] = (int64_t)m->chrf_ref[n];
        s->chrf.match[n] = (int64_t)m->chrf_match[n];
    }
    s->decoded = (int64_t)m->decoded;
    const char *texts[3] = {m->sample_prompt, m->sample_output, m->sample_reference};
    char *into[3] = {s->sample_prompt, s->sample_output, s->sample_reference};
    for (int i = 0; i < 3; i++) utf8_clean(into[i], GRAFT_SAMPLE_LEN, texts[i] ? texts[i] : "");
    return GRAFT_OK;
}
