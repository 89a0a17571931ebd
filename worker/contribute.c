/* contribute.c — the worker's side of the MPI reductions (see contribute.h). */
#include "contribute.h"

#include <string.h>
#include <time.h>

#include "aggregator.h"

struct graft_contributor {
    graft_transport_t *tp;   /* borrowed */
    const graft_peft_t *peft; /* borrowed */
    int n_run_tasks;
    int grouped;
    int groups[GRAFT_MAX_TASKS]; /* by run task */
    int64_t *buf[GRAFT_MAX_TASKS + 1]; /* one contribution per scope in flight */
    graft_reduce_t *req[GRAFT_MAX_TASKS + 1];
};

graft_contributor_t *graft_contributor_new(graft_transport_t *tp, const graft_peft_t *peft,
                                           int n_run_tasks) {
    GRAFT_ASSERT(n_run_tasks >= graft_peft_n_tasks(peft) && n_run_tasks <= GRAFT_MAX_TASKS);
    graft_contributor_t *c = graft_xcalloc(1, sizeof *c);
    c->tp = tp;
    c->peft = peft;
    c->n_run_tasks = n_run_tasks;
    return c;
}

void graft_contributor_destroy(graft_contributor_t **self_p) {
    graft_contributor_t *c = *self_p;
    if (!c) return;
    /* A buffer still under a reduction (stopped mid-round) is left to MPI. */
    for (int i = 0; i <= GRAFT_MAX_TASKS; i++)
        if (!c->req[i]) free(c->buf[i]);
    free(c);
    *self_p = NULL;
}

/* Builds parts[i]'s contribution into c->buf[i] and starts its reduction. */
static int start_one(graft_contributor_t *c, const graft_wire_reduce_t *r, int freeze_a,
                     const graft_contribution_t *part, int i) {
    const graft_peft_t *p = c->peft;
    graft_agg_pair_t *pairs = graft_xcalloc((size_t)p->trunk->cfg.L * GRAFT_NUM_PROJ + 1,
                                            sizeof *pairs);
    int npairs = graft_agg_lora_pairs(p, part->task, pairs);
    const graft_scope_t *s =
        part->task < 0 ? graft_peft_shared(p) : graft_peft_task_scope(p, part->task);
    graft_agg_plan_t plan;
    graft_agg_plan_init_pairs(&plan, s->numel, pairs, npairs, r->lora_products && !freeze_a,
                              r->clip_norm, freeze_a);
    plan.stat_from = s->nparams;
    free(pairs);
    free(c->buf[i]);
    c->buf[i] = graft_xmalloc(plan.len * sizeof *c->buf[i]);
    if (part->global) {
        char why[256];
        graft_agg_plan_round(&plan, part->global);
        if (graft_agg_contribution(&plan, part->trained, part->weight, c->buf[i], why, sizeof why))
            LOG_ERROR("worker: scope %s: contribution rejected: %s", s->name, why);
    } else {
        graft_agg_contribution_empty(&plan, 1, c->buf[i]);
    }
    int group = part->task < 0 ? GRAFT_GROUP_WORLD : c->groups[part->run_task];
    int rc = graft_transport_ireduce_i64(c->tp, c->buf[i], plan.len, group, &c->req[i]);
    graft_agg_plan_free(&plan);
    return rc;
}

int graft_contributor_run(graft_contributor_t *c, const graft_wire_reduce_t *r, int freeze_a,
                          const int *assigned, const graft_contribution_t *parts, int n,
                          void (*tick)(void *), void *arg, volatile sig_atomic_t *stop) {
    GRAFT_ASSERT(n <= GRAFT_MAX_TASKS + 1);
    int rc = GRAFT_OK;
    if (!c->grouped) {
        rc = graft_aggregator_groups(c->tp, c->n_run_tasks, assigned, c->groups);
        if (rc) return rc;
        c->grouped = 1;
    }
    for (int i = 0; i < n; i++)
        if ((rc = start_one(c, r, freeze_a, &parts[i], i))) return rc;
    /* Poll with naps that back off to 2 ms: a worker that finished early
     * must not steal the cores the others still train on. */
    struct timespec nap = {0, 20000};
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++) {
            int t = graft_transport_reduce_test(c->tp, &c->req[i]);
            if (t < 0) return t;
            pending += t == 0;
        }
        if (!pending) return GRAFT_OK;
        if (stop && *stop) return GRAFT_ESTATE;
        if (tick) tick(arg);
        nanosleep(&nap, NULL);
        if (nap.tv_nsec < 2000000) nap.tv_nsec *= 2;
    }
}
