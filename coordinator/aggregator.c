/* aggregator.c — the coordinator's aggregation of one round (see
 * aggregator.h). */
#include "aggregator.h"

#include <math.h>
#include <string.h>

typedef struct {
    graft_scope_t *scope; /* borrowed from the peft modules */
    graft_agg_plan_t plan;
    int64_t *sum;         /* plan.len: the accumulator (the reduction's buffer) */
    graft_reduce_t *req;  /* the reduction in flight */
    int group;            /* its MPI group */
    float **held;         /* median / trimmed mean: one copy per reply */
    int nheld, capheld;
    int held_rejected;    /* replies refused while holding */
} scope_agg_t;

struct graft_aggregator {
    graft_agg_config_t cfg;
    graft_peft_t *peft;
    graft_transport_t *tp; /* non-NULL: reductions */
    int nscopes;           /* 1 + tasks */
    scope_agg_t *s;
    int64_t *scratch;      /* one contribution, the longest plan */
    int grouped;
};

graft_aggregator_t *graft_aggregator_new(const graft_agg_config_t *c, graft_peft_t *peft,
                                         graft_transport_t *tp) {
    graft_aggregator_t *a = graft_xcalloc(1, sizeof *a);
    a->cfg = *c;
    a->peft = peft;
    a->tp = tp && !graft_agg_holds_replies(c) ? tp : NULL;
    a->nscopes = 1 + graft_peft_n_tasks(peft);
    a->s = graft_xcalloc((size_t)a->nscopes, sizeof *a->s);
    size_t longest = 0;
    for (int k = 0; k < a->nscopes; k++) {
        scope_agg_t *s = &a->s[k];
        s->scope = k == 0 ? graft_peft_shared(peft) : graft_peft_task_scope(peft, k - 1);
        s->group = k == 0 ? GRAFT_GROUP_WORLD : GRAFT_GROUP_NONE;
        graft_agg_plan_init(&s->plan, c, peft, k - 1);
        s->sum = graft_xcalloc(s->plan.len, sizeof *s->sum);
        if (s->plan.len > longest) longest = s->plan.len;
    }
    a->scratch = graft_xcalloc(longest, sizeof *a->scratch);
    return a;
}

static void drop_held(scope_agg_t *s) {
    for (int i = 0; i < s->nheld; i++) free(s->held[i]);
    s->nheld = 0;
}

void graft_aggregator_destroy(graft_aggregator_t **self_p) {
    graft_aggregator_t *a = *self_p;
    if (!a) return;
    for (int k = 0; k < a->nscopes; k++) {
        scope_agg_t *s = &a->s[k];
        /* A reduction still in flight (the run stopped mid-round) owns its
         * buffer until it completes; leak it rather than free it under MPI. */
        if (!s->req) free(s->sum);
        drop_held(s);
        free(s->held);
        graft_agg_plan_free(&s->plan);
    }
    free(a->s);
    free(a->scratch);
    free(a);
    *self_p = NULL;
}

int graft_aggregator_collective(const graft_aggregator_t *a) {
    return a->tp != NULL;
}

int graft_aggregator_groups(graft_transport_t *tp, int n_tasks, const int *member, int *groups) {
    for (int t = 0; t < n_tasks; t++) {
        int rc = graft_transport_split(tp, member[t] ? 0 : GRAFT_GROUP_NONE, &groups[t]);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

/* Is scope k summed this round? Not an empty one, nor a task scope of a
 * personalised run (its values stay on the workers). */
static int aggregated(const graft_aggregator_t *a, int k) {
    return a->s[k].scope->numel && !(k > 0 && a->cfg.personal);
}

static int start_reductions(graft_aggregator_t *a) {
    if (!a->grouped) {
        int member[GRAFT_MAX_TASKS], groups[GRAFT_MAX_TASKS];
        for (int t = 0; t < a->nscopes - 1; t++) member[t] = 1;
        int rc = graft_aggregator_groups(a->tp, a->nscopes - 1, member, groups);
        if (rc) return rc;
        for (int t = 0; t < a->nscopes - 1; t++) a->s[1 + t].group = groups[t];
        a->grouped = 1;
    }
    for (int k = 0; k < a->nscopes; k++) {
        scope_agg_t *s = &a->s[k];
        if (!aggregated(a, k)) continue;
        int rc = graft_transport_ireduce_i64(a->tp, s->sum, s->plan.len, s->group, &s->req);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

void graft_aggregator_set_personal(graft_aggregator_t *a, int personal) {
    a->cfg.personal = personal;
}

int graft_aggregator_begin(graft_aggregator_t *a) {
    for (int k = 0; k < a->nscopes; k++) {
        scope_agg_t *s = &a->s[k];
        GRAFT_ASSERT(!s->req);
        memset(s->sum, 0, s->plan.len * sizeof *s->sum);
        drop_held(s);
        s->held_rejected = 0;
        graft_agg_plan_round(&s->plan, s->scope->params);
    }
    return a->tp ? start_reductions(a) : GRAFT_OK;
}

int graft_aggregator_add(graft_aggregator_t *a, int k, const float *x, uint64_t w, char *why,
                         size_t why_len) {
    GRAFT_ASSERT(!a->tp && k >= 0 && k < a->nscopes && aggregated(a, k));
    scope_agg_t *s = &a->s[k];
    if (!graft_agg_holds_replies(&a->cfg)) {
        /* A refused reply adds the empty contribution that counts it, as an
         * MPI worker's would. */
        int rc = graft_agg_contribution(&s->plan, x, w, a->scratch, why, why_len);
        graft_agg_add(s->sum, a->scratch, s->plan.len);
        return rc;
    }
    float *copy = graft_xmalloc((s->plan.numel + 1) * sizeof *copy);
    int rc = graft_agg_clipped(&s->plan, x, copy, why, why_len);
    if (rc) {
        free(copy);
        s->held_rejected++;
        return rc;
    }
    if (s->nheld == s->capheld) {
        s->capheld = s->capheld ? 2 * s->capheld : 8;
        s->held = graft_xrealloc(s->held, (size_t)s->capheld * sizeof *s->held);
    }
    s->held[s->nheld++] = copy;
    return GRAFT_OK;
}

int graft_aggregator_poll(graft_aggregator_t *a) {
    int done = 1;
    for (int k = 0; k < a->nscopes; k++) {
        if (!a->s[k].req) continue;
        int rc = graft_transport_reduce_test(a->tp, &a->s[k].req);
        if (rc < 0) return rc;
        done &= rc;
    }
    return done;
}

/* The new values of one scope; fills rep. Returns 1 when they changed. */
static int finish_scope(graft_aggregator_t *a, scope_agg_t *s, graft_agg_report_t *rep) {
    if (!graft_agg_holds_replies(&a->cfg))
        return graft_agg_finish(&a->cfg, &s->plan, s->sum, s->scope->params, s->scope->state, rep);
    *rep = (graft_agg_report_t){.weight = (uint64_t)s->nheld, .rejected = s->held_rejected,
                                .lora_gap = NAN, .svd_residual = NAN};
    if (!s->nheld) return 0;
    graft_agg_robust(&a->cfg, (const float *const *)s->held, s->nheld, s->plan.numel,
                     s->scope->params);
    drop_held(s);
    return 1;
}

json_t *graft_aggregator_finish(graft_aggregator_t *a, int round) {
    json_t *out = json_object(), *gap = json_object(), *svd = json_object(), *over = json_array();
    json_int_t rejected = 0, reduced = 0;
    for (int k = 0; k < a->nscopes; k++) {
        scope_agg_t *s = &a->s[k];
        if (!aggregated(a, k)) continue;
        reduced += (json_int_t)(s->plan.len * sizeof *s->sum);
        GRAFT_ASSERT(!s->req);
        graft_agg_report_t rep;
        finish_scope(a, s, &rep);
        const char *name = s->scope->name;
        if (rep.overflow) {
            LOG_ERROR("round %d: scope %s: the fixed-point sums could overflow (a parameter moved "
                      "by more than 2^%d / total weight); it keeps its previous value this round",
                      round, name, 63 - GRAFT_AGG_FRAC_BITS);
            json_array_append_new(over, json_string(name));
        }
        if (rep.rejected && a->tp)
            LOG_WARN("round %d: scope %s: %lld contributions were rejected by their workers "
                     "(see their logs)", round, name, (long long)rep.rejected);
        rejected += rep.rejected;
        if (!isnan(rep.lora_gap)) json_object_set_new(gap, name, json_real(rep.lora_gap));
        if (!isnan(rep.svd_residual)) json_object_set_new(svd, name, json_real(rep.svd_residual));
    }
    if (json_object_size(gap)) json_object_set(out, "lora_gap", gap);
    if (json_object_size(svd)) json_object_set(out, "svd_residual", svd);
    if (json_array_size(over)) json_object_set(out, "overflow", over);
    if (rejected) json_object_set_new(out, "rejected", json_integer(rejected));
    if (a->tp) json_object_set_new(out, "reduce_bytes", json_integer(reduced));
    json_decref(gap);
    json_decref(svd);
    json_decref(over);
    return out;
}
