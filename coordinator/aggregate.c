/* aggregate.c — streaming, exact, order-free aggregation of a scope (see
 * aggregate.h). */
#include "aggregate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"
#include "lora_merge.h"

/* ---- strategy ------------------------------------------------------------------ */

/* Indexed by graft_agg_combiner_t. */
static const char *combiner_name[] = {"fedavg", "fedadam", "median", "trimmed_mean", "fedavgm"};
#define NUM_COMBINERS ((int)(sizeof combiner_name / sizeof *combiner_name))
static const char *lora_name[] = {"factors", "svd", "freeze_a"};

static int parse_aggregate(const char *list, graft_agg_config_t *c) {
    char buf[GRAFT_OPT_STR];
    snprintf(buf, sizeof buf, "%s", list);
    int combiners = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        if (!strcmp(tok, "fedprox")) {
            c->fedprox = 1;
        } else if (!strcmp(tok, "clip")) {
            c->clip = 1;
        } else {
            int k = 0;
            while (k < NUM_COMBINERS && strcmp(tok, combiner_name[k])) k++;
            if (k == NUM_COMBINERS) {
                LOG_ERROR("aggregate: unknown strategy '%s' (fedavg, fedavgm, fedadam, median, "
                          "trimmed_mean, fedprox, clip)", tok);
                return GRAFT_EINVAL;
            }
            c->combiner = (graft_agg_combiner_t)k;
            combiners++;
        }
    }
    if (combiners > 1) {
        LOG_ERROR("aggregate: '%s' names more than one of fedavg, fedavgm, fedadam, median, "
                  "trimmed_mean", list);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

int graft_agg_config_parse(const graft_run_config_t *cfg, graft_agg_config_t *out) {
    graft_agg_config_t c = {.combiner = GRAFT_AGG_FEDAVG,
                            .fedprox_mu = cfg->fedprox_mu,
                            .clip_norm = cfg->clip_norm,
                            .server_lr = cfg->server_lr,
                            .server_beta1 = cfg->server_beta1,
                            .server_beta2 = cfg->server_beta2,
                            .server_eps = cfg->server_eps,
                            .trim_frac = cfg->trim_frac,
                            .lora_gap = cfg->lora_gap,
                            .shared_step = cfg->shared_server_lr,
                            .personal_from = cfg->personalize ? cfg->personal_from : 0};
    int rc = parse_aggregate(cfg->aggregate, &c);
    if (rc) return rc;
    int k = 0;
    while (k < 3 && strcmp(cfg->lora_aggregate, lora_name[k])) k++;
    if (k == 3) {
        LOG_ERROR("lora_aggregate: unknown mode '%s' (factors, svd, freeze_a)", cfg->lora_aggregate);
        return GRAFT_EINVAL;
    }
    c.lora = (graft_lora_agg_t)k;
    if (c.server_lr <= 0) c.server_lr = c.combiner == GRAFT_AGG_FEDADAM ? 0.01f : 1.0f;
    if (c.fedprox && c.fedprox_mu <= 0) {
        LOG_ERROR("aggregate: fedprox needs fedprox_mu > 0");
        return GRAFT_EINVAL;
    }
    if (c.clip && c.clip_norm <= 0) {
        LOG_ERROR("aggregate: clip needs clip_norm > 0");
        return GRAFT_EINVAL;
    }
    if (c.lora == GRAFT_LORA_SVD && graft_agg_holds_replies(&c)) {
        LOG_ERROR("lora_aggregate svd averages products: it works with fedavg, fedavgm, "
                  "fedadam and fedprox, not with %s", combiner_name[c.combiner]);
        return GRAFT_EINVAL;
    }
    if (!strcmp(cfg->shared_weight, "task")) {
        c.task_weights = 1;
    } else if (strcmp(cfg->shared_weight, "data")) {
        LOG_ERROR("shared_weight: unknown mode '%s' (data, task)", cfg->shared_weight);
        return GRAFT_EINVAL;
    }
    if (c.shared_step != 1.0f && (graft_agg_holds_replies(&c) || c.lora == GRAFT_LORA_SVD)) {
        LOG_ERROR("shared_server_lr scales the shared scope's mean step: it works with fedavg, "
                  "fedavgm, fedadam and fedprox and LoRA factors or freeze_a, not with %s",
                  c.lora == GRAFT_LORA_SVD ? "lora_aggregate svd" : combiner_name[c.combiner]);
        return GRAFT_EINVAL;
    }
    *out = c;
    return GRAFT_OK;
}

void graft_agg_describe(const graft_agg_config_t *c, char *buf, size_t n) {
    int len = snprintf(buf, n, "%s%s%s, lora %s", c->fedprox ? "fedprox+" : "",
                       combiner_name[c->combiner], c->clip ? "+clip" : "", lora_name[c->lora]);
    if ((c->task_weights || c->shared_step != 1.0f) && len >= 0 && (size_t)len < n)
        len += snprintf(buf + len, n - (size_t)len, ", shared scope: %s weights, step x%g",
                        c->task_weights ? "task" : "data", (double)c->shared_step);
    if (c->personal_from == 1 && len >= 0 && (size_t)len < n)
        snprintf(buf + len, n - (size_t)len, ", task scopes personal (not aggregated)");
    else if (c->personal_from > 1 && len >= 0 && (size_t)len < n)
        snprintf(buf + len, n - (size_t)len, ", task scopes averaged until round %d, then "
                 "personal", c->personal_from - 1);
}

int graft_agg_holds_replies(const graft_agg_config_t *c) {
    return c->combiner == GRAFT_AGG_MEDIAN || c->combiner == GRAFT_AGG_TRIMMED;
}

int graft_agg_wants_products(const graft_agg_config_t *c) {
    if (graft_agg_holds_replies(c)) return 0;
    return c->lora == GRAFT_LORA_SVD || (c->lora == GRAFT_LORA_FACTORS && c->lora_gap);
}

/* ---- plans ---------------------------------------------------------------------- */

void graft_agg_plan_init_pairs(graft_agg_plan_t *plan, size_t numel, const graft_agg_pair_t *pairs,
                               int npairs, int products, float clip_norm, int freeze_a) {
    memset(plan, 0, sizeof *plan);
    plan->numel = numel;
    plan->npairs = npairs;
    plan->pairs = graft_xcalloc((size_t)npairs + 1, sizeof *plan->pairs);
    if (npairs) memcpy(plan->pairs, pairs, (size_t)npairs * sizeof *pairs);
    plan->products = products && npairs > 0;
    plan->clip_norm = clip_norm;
    plan->freeze_a = freeze_a;
    plan->step_scale = 1.0;
    plan->stat_from = numel;
    size_t biggest = 0;
    for (int i = 0; i < npairs; i++) {
        size_t sz = (size_t)pairs[i].in * pairs[i].out;
        if (plan->products) plan->nprod += sz;
        if (sz > biggest) biggest = sz;
        size_t fac = (size_t)pairs[i].in * pairs[i].r + (size_t)pairs[i].r * pairs[i].out;
        if (fac > biggest) biggest = fac;
    }
    plan->len = numel + plan->nprod + GRAFT_AGG_TAIL;
    plan->work = graft_xcalloc(numel + 2 * biggest + 1, sizeof *plan->work);
}

int graft_agg_lora_pairs(const graft_peft_t *p, int task, graft_agg_pair_t *out) {
    const graft_scope_t *s = task < 0 ? graft_peft_shared(p) : graft_peft_task_scope(p, task);
    const int *idx = task < 0 ? p->shared_lora_idx : p->tasks[task].lora_idx;
    int slots = p->trunk->cfg.L * GRAFT_NUM_PROJ, n = 0;
    for (int i = 0; i < slots && idx; i++) {
        if (idx[2 * i] < 0) continue;
        const graft_scope_tensor_t *A = &s->tensors[idx[2 * i]], *B = &s->tensors[idx[2 * i + 1]];
        out[n++] = (graft_agg_pair_t){.a = A->offset, .b = B->offset, .in = (int)A->shape[0],
                                      .r = (int)A->shape[1], .out = (int)B->shape[1]};
    }
    return n;
}

void graft_agg_plan_init(graft_agg_plan_t *plan, const graft_agg_config_t *c,
                         const graft_peft_t *p, int task) {
    const graft_scope_t *s = task < 0 ? graft_peft_shared(p) : graft_peft_task_scope(p, task);
    graft_agg_pair_t *pairs = graft_xcalloc((size_t)p->trunk->cfg.L * GRAFT_NUM_PROJ + 1,
                                            sizeof *pairs);
    int n = graft_agg_lora_pairs(p, task, pairs);
    graft_agg_plan_init_pairs(plan, s->numel, pairs, n, graft_agg_wants_products(c),
                              c->clip ? c->clip_norm : 0.0f, c->lora == GRAFT_LORA_FREEZE_A);
    if (task < 0) plan->step_scale = c->shared_step;
    plan->stat_from = s->nparams;
    free(pairs);
}

void graft_agg_plan_free(graft_agg_plan_t *plan) {
    free(plan->pairs);
    free(plan->work);
    memset(plan, 0, sizeof *plan);
}

/* The product of pair k of values v (double, numel) into P. */
static void pair_product(const graft_agg_plan_t *plan, int k, const double *v, double *P) {
    const graft_agg_pair_t *pr = &plan->pairs[k];
    graft_lora_product(v + pr->a, v + pr->b, pr->in, pr->r, pr->out, P);
}

void graft_agg_plan_round(graft_agg_plan_t *plan, const float *global) {
    plan->global = global;
}

/* ---- contributions --------------------------------------------------------------- */

/* d = clip(x - g) into plan->work; GRAFT_EINVAL with a reason for a value
 * that is not finite or an A that changed under freeze_a. */
static int clipped_delta(graft_agg_plan_t *plan, const float *x, char *why, size_t why_len) {
    const float *g = plan->global;
    double *d = plan->work, sumsq = 0.0;
    for (size_t j = 0; j < plan->numel; j++) {
        if (!isfinite(x[j])) {
            snprintf(why, why_len, "value %zu is not finite", j);
            return GRAFT_EINVAL;
        }
        d[j] = (double)x[j] - (double)g[j];
        if (j < plan->stat_from) sumsq += d[j] * d[j];
    }
    for (int k = 0; k < plan->npairs && plan->freeze_a; k++) {
        const graft_agg_pair_t *pr = &plan->pairs[k];
        for (size_t j = 0; j < (size_t)pr->in * pr->r; j++)
            if (d[pr->a + j] != 0.0) {
                snprintf(why, why_len, "lora_A of pair %d changed although lora_aggregate is "
                         "freeze_a", k);
                return GRAFT_EINVAL;
            }
    }
    double norm = sqrt(sumsq);
    if (plan->clip_norm > 0 && norm > plan->clip_norm) {
        double scale = plan->clip_norm / norm;
        for (size_t j = 0; j < plan->stat_from; j++) d[j] *= scale;
    }
    return GRAFT_OK;
}

/* round(s), halves away from zero (llround), without a library call:
 * truncation and the remainder are both exact for |s| < 2^63. */
static inline int64_t round_half_away(double s) {
    int64_t q = (int64_t)s;
    double f = s - (double)q;
    return q + (f >= 0.5) - (f <= -0.5);
}

/* out[j] = w * round(d[j] * 2^S), tracking the largest |out[j]| in *peak.
 * A term is representable when |d| 2^S w < 2^62 (and w < 2^40), so that
 * |out[j]| < 2^62 + w / 2 never overflows; the range check runs first, as
 * one flag over the block, so that the conversion loop has no exits. */
static int quantize(const double *d, size_t n, uint64_t w, int64_t *out, int64_t *peak, char *why,
                    size_t why_len) {
    const double scale = 0x1p36, limit = 0x1p62 / (double)w;
    _Static_assert(GRAFT_AGG_FRAC_BITS == 36, "scale is 2^GRAFT_AGG_FRAC_BITS");
    int bad = w >= ((uint64_t)1 << 40);
    for (size_t j = 0; j < n; j++) bad |= !(fabs(d[j] * scale) < limit);
    if (bad) {
        size_t j = 0;
        while (j < n && fabs(d[j] * scale) < limit) j++;
        snprintf(why, why_len, "delta %.3g at %zu times weight %llu is beyond the fixed-point "
                 "range", j < n ? d[j] : 0.0, j, (unsigned long long)w);
        return GRAFT_EINVAL;
    }
    int64_t top = *peak, iw = (int64_t)w;
    for (size_t j = 0; j < n; j++) {
        int64_t c = round_half_away(d[j] * scale) * iw;
        out[j] = c;
        int64_t a = c < 0 ? -c : c;
        top = a > top ? a : top;
    }
    *peak = top;
    return GRAFT_OK;
}

void graft_agg_contribution_empty(const graft_agg_plan_t *plan, int rejected, int64_t *out) {
    memset(out, 0, plan->len * sizeof *out);
    out[plan->len - 1] = rejected ? 1 : 0;
}

/* The products of the clipped factors, whole (not as deltas: LoRA products
 * are small, and the plan then needs no copy of the global products). */
static int quantize_products(graft_agg_plan_t *plan, uint64_t w, int64_t *out, int64_t *peak,
                             char *why, size_t why_len) {
    const float *g = plan->global;
    double *d = plan->work, *P = plan->work + plan->numel;
    /* work[0, numel) holds the clipped delta; each pair's clipped factors
     * g + d go into scratch after P (the plan sized work for both). */
    for (int k = 0; k < plan->npairs; k++) {
        const graft_agg_pair_t *pr = &plan->pairs[k];
        size_t na = (size_t)pr->in * pr->r, nb = (size_t)pr->r * pr->out;
        size_t np = (size_t)pr->in * pr->out;
        double *fa = P + np, *fb = fa + na;
        for (size_t j = 0; j < na; j++) fa[j] = (double)g[pr->a + j] + d[pr->a + j];
        for (size_t j = 0; j < nb; j++) fb[j] = (double)g[pr->b + j] + d[pr->b + j];
        graft_lora_product(fa, fb, pr->in, pr->r, pr->out, P);
        int rc = quantize(P, np, w, out, peak, why, why_len);
        if (rc) return rc;
        out += np;
    }
    return GRAFT_OK;
}

int graft_agg_contribution(graft_agg_plan_t *plan, const float *x, uint64_t w, int64_t *out,
                           char *why, size_t why_len) {
    GRAFT_ASSERT(plan->global && w >= 1);
    int64_t peak = 0;
    int rc = clipped_delta(plan, x, why, why_len);
    if (!rc) rc = quantize(plan->work, plan->numel, w, out, &peak, why, why_len);
    if (!rc && plan->products)
        rc = quantize_products(plan, w, out + plan->numel, &peak, why, why_len);
    if (rc) {
        graft_agg_contribution_empty(plan, 1, out);
        return GRAFT_EINVAL;
    }
    int64_t *tail = out + plan->len - GRAFT_AGG_TAIL;
    tail[0] = (int64_t)w;
    tail[1] = (peak + ((int64_t)1 << GRAFT_AGG_BOUND_SHIFT) - 1) >> GRAFT_AGG_BOUND_SHIFT;
    tail[2] = 0;
    return GRAFT_OK;
}

void graft_agg_add(int64_t *acc, const int64_t *c, size_t len) {
    /* Unsigned arithmetic wraps by definition; the bound word says whether
     * the true sums fit, in which case the wrapped result is exact. */
    uint64_t *a = (uint64_t *)acc;
    const uint64_t *b = (const uint64_t *)c;
    for (size_t j = 0; j < len; j++) a[j] += b[j];
}

/* ---- results ---------------------------------------------------------------------- */

/* The averaged products, their gap to the product of the averaged factors,
 * and (svd) the truncated factors written into xbar. */
static int merge_lora(const graft_agg_config_t *c, graft_agg_plan_t *plan, const int64_t *sum,
                      double inv, double *xbar, graft_agg_report_t *rep) {
    const int64_t *ps = sum + plan->numel;
    double gap = 0.0, norm = 0.0, dropped = 0.0;
    for (int k = 0; k < plan->npairs; k++) {
        const graft_agg_pair_t *pr = &plan->pairs[k];
        size_t np = (size_t)pr->in * pr->out;
        double *avgP = plan->work, *fac = avgP + np;
        for (size_t j = 0; j < np; j++) avgP[j] = (double)ps[j] * inv;
        pair_product(plan, k, xbar, fac);
        graft_frobenius_gap(fac, avgP, np, &gap, &norm);
        if (c->lora == GRAFT_LORA_SVD) {
            double d = 0.0;
            if (graft_lora_truncate(avgP, pr->in, pr->out, pr->r, xbar + pr->a, xbar + pr->b, &d))
                return GRAFT_EINVAL;
            dropped += d;
        }
        ps += np;
    }
    rep->lora_gap = norm > 0 ? sqrt(gap / norm) : 0.0;
    if (c->lora == GRAFT_LORA_SVD) rep->svd_residual = norm > 0 ? sqrt(dropped / norm) : 0.0;
    return GRAFT_OK;
}

/* m and v: the moments of the n values (the scope's state holds m then v,
 * each as long as the whole scope). */
static void server_adam(const graft_agg_config_t *c, const float *g, const double *xbar,
                        size_t n, float *m, float *v, float *dst) {
    double b1 = c->server_beta1, b2 = c->server_beta2;
    for (size_t j = 0; j < n; j++) {
        double gj = g[j], delta = xbar[j] - gj;
        double mj = b1 * m[j] + (1.0 - b1) * delta;
        double vj = b2 * v[j] + (1.0 - b2) * delta * delta;
        m[j] = (float)mj;
        v[j] = (float)vj;
        dst[j] = (float)(gj + c->server_lr * (double)m[j] / (sqrt((double)v[j]) + c->server_eps));
    }
}

static void server_momentum(const graft_agg_config_t *c, const float *g, const double *xbar,
                            size_t n, float *u, float *dst) {
    double beta = c->server_beta1;
    for (size_t j = 0; j < n; j++) {
        u[j] = (float)(beta * u[j] + (xbar[j] - g[j]));
        dst[j] = (float)(g[j] + c->server_lr * (double)u[j]);
    }
}

int graft_agg_finish(const graft_agg_config_t *c, graft_agg_plan_t *plan, const int64_t *sum,
                     float *dst, float *state, graft_agg_report_t *rep) {
    const int64_t *tail = sum + plan->len - GRAFT_AGG_TAIL;
    *rep = (graft_agg_report_t){.weight = (uint64_t)tail[0], .rejected = tail[2],
                                .lora_gap = NAN, .svd_residual = NAN};
    if (tail[0] <= 0) return 0;
    if (tail[1] < 0 || tail[1] >= GRAFT_AGG_BOUND_MAX) {
        rep->overflow = 1;
        return 0;
    }
    double inv = ldexp(1.0, -GRAFT_AGG_FRAC_BITS) / (double)tail[0];
    const float *g = plan->global;
    size_t n = plan->stat_from, numel = plan->numel;
    double *xbar = graft_xmalloc((numel + 1) * sizeof *xbar);
    /* The (scaled) mean step; products and statistics keep the plain mean. */
    double step = inv * plan->step_scale;
    for (size_t j = 0; j < n; j++) xbar[j] = (double)g[j] + (double)sum[j] * step;
    for (size_t j = n; j < numel; j++) xbar[j] = (double)g[j] + (double)sum[j] * inv;
    if (plan->freeze_a && plan->npairs) rep->lora_gap = 0.0;
    if (plan->products && merge_lora(c, plan, sum, inv, xbar, rep)) {
        free(xbar);
        return 0;
    }
    if (c->combiner == GRAFT_AGG_FEDADAM) {
        GRAFT_ASSERT(state);
        server_adam(c, g, xbar, n, state, state + numel, dst);
    } else if (c->combiner == GRAFT_AGG_FEDAVGM) {
        GRAFT_ASSERT(state);
        server_momentum(c, g, xbar, n, state, dst);
    } else {
        for (size_t j = 0; j < n; j++) dst[j] = (float)xbar[j];
    }
    for (size_t j = n; j < numel; j++) dst[j] = (float)xbar[j];
    free(xbar);
    return 1;
}

/* ---- median and trimmed mean -------------------------------------------------------- */

int graft_agg_clipped(graft_agg_plan_t *plan, const float *x, float *out, char *why,
                      size_t why_len) {
    GRAFT_ASSERT(plan->global);
    int rc = clipped_delta(plan, x, why, why_len);
    if (rc) return rc;
    for (size_t j = 0; j < plan->numel; j++)
        out[j] = (float)((double)plan->global[j] + plan->work[j]);
    return GRAFT_OK;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void graft_agg_robust(const graft_agg_config_t *c, const float *const *xs, int n, size_t numel,
                      float *dst) {
    GRAFT_ASSERT(n >= 1 && graft_agg_holds_replies(c));
    float *col = graft_xmalloc((size_t)n * sizeof *col);
    int drop = c->combiner == GRAFT_AGG_TRIMMED ? (int)floor(c->trim_frac * n) : 0;
    if (2 * drop >= n) drop = (n - 1) / 2;
    for (size_t j = 0; j < numel; j++) {
        for (int i = 0; i < n; i++) col[i] = xs[i][j];
        qsort(col, (size_t)n, sizeof *col, by_value);
        if (c->combiner == GRAFT_AGG_MEDIAN) {
            dst[j] = n % 2 ? col[n / 2] : (float)(((double)col[n / 2 - 1] + col[n / 2]) / 2.0);
        } else {
            double s = 0.0;
            for (int i = drop; i < n - drop; i++) s += col[i];
            dst[j] = (float)(s / (n - 2 * drop));
        }
    }
    free(col);
}

/* ---- scalars ------------------------------------------------------------------------- */

static int by_key(const void *a, const void *b) {
    const graft_agg_input_t *x = a, *y = b;
    return strcmp(x->key, y->key);
}

int graft_aggregate_fedavg(graft_agg_input_t *in, int n, float *dst, size_t numel) {
    double total = 0.0;
    int used = 0;
    if (n > 1) qsort(in, (size_t)n, sizeof *in, by_key); /* in may be NULL when n is 0 */
    for (int i = 0; i < n; i++)
        if (in[i].weight > 0) {
            total += in[i].weight;
            used++;
        }
    if (used == 0 || total <= 0) return 0;
    double *acc = graft_xcalloc(numel, sizeof(double));
    for (int i = 0; i < n; i++) {
        if (in[i].weight <= 0) continue;
        const float *x = in[i].values;
        double w = in[i].weight / total;
        for (size_t j = 0; j < numel; j++) acc[j] += w * (double)x[j];
    }
    for (size_t j = 0; j < numel; j++) dst[j] = (float)acc[j];
    free(acc);
    return used;
}
