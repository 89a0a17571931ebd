/* evaluation.c — evaluating a round, on the coordinator's own copy of the
 * tasks and on the workers (--eval_on; see coordinator.h): the questions
 * sent, the answers taken in, and the eval events (coord_state.h). */
#include "coord_state.h"

#include <stdio.h>
#include <string.h>

#include "eval_answers.h"
#include "eval_wire.h"
#include "events.h"
#include "trainer.h"
#include "wire.h"

/* A test-split result goes to the caller's test_result, if any. */
static void report_test_result(coord_t *c, const graft_eval_result_t *r, const char *line) {
    if (c->o.test_result) c->o.test_result(c->o.test_result_ctx, r, line);
}

/* One task's result on the log, as an eval event and, for the test split,
 * to the caller. `workers`: the names of the workers whose rows it adds up
 * (a JSON array), per_worker their own metrics (an object) and extra more
 * fields for the event (an object), all taken over; NULL for the
 * coordinator's own. */
static void report_eval(coord_t *c, const graft_eval_result_t *r, json_t *workers,
                        json_t *per_worker, json_t *extra) {
    char line[320];
    graft_eval_format(c->tr, r, line, sizeof line);
    if (workers) {
        size_t len = strlen(line);
        snprintf(line + len, sizeof line - len, "  (workers: %zu)", json_array_size(workers));
    }
    LOG_INFO("eval round %d: %s", c->round, line);
    graft_eval_log_sample(c->tr, r);
    json_t *o = graft_eval_json(c->tr, r);
    json_object_set_new(o, "round", json_integer(c->round));
    json_object_set_new(o, "source", json_string(workers ? "workers" : "coordinator"));
    if (workers) json_object_set_new(o, "workers", workers);
    if (per_worker) json_object_set_new(o, "per_worker", per_worker);
    if (extra) json_object_update(o, extra);
    json_decref(extra);
    graft_events_emit(c->ev, "eval", o);
    if (r->split == GRAFT_SPLIT_TEST) report_test_result(c, r, line);
}

/* Dev split during the run; the test split after the last round, reported. */
void coord_evaluate(coord_t *c, int split) {
    double t0 = graft_now();
    for (int t = 0; t < graft_trainer_n_tasks(c->tr); t++) {
        graft_eval_result_t r;
        graft_trainer_evaluate(c->tr, t, split, &r);
        report_eval(c, &r, NULL, NULL, NULL);
    }
    LOG_INFO("eval round %d: the coordinator's evaluation took %.0f ms", c->round,
             (graft_now() - t0) * 1000.0);
}

/* The split to evaluate after this round: test after the last, dev every
 * eval_every_rounds; -1: none. */
int coord_split_due(const coord_t *c) {
    if (c->round == c->cfg->rounds) return GRAFT_SPLIT_TEST;
    if (c->round % c->cfg->eval_every_rounds == 0) return GRAFT_SPLIT_DEV;
    return -1;
}

/* Sends peer's worker an EvalRequest for the open evaluation: the
 * aggregated modules of its scopes and those of its tasks that its name is
 * asked about and has not answered (all of them when ask is set, which
 * first records them as asked). Returns how many tasks it asked for. */
static int send_eval_request(coord_t *c, int peer, int ask) {
    const graft_run_config_t *cfg = c->cfg;
    worker_t *w = &c->w[peer];
    char *tasks[GRAFT_MAX_TASKS];
    int n = 0;
    for (int i = 0; i < w->n_assigned; i++) {
        int t = w->assigned[i];
        if (ask || graft_eval_answers_state(c->answers, w->name, t) == GRAFT_EVAL_WAITING)
            tasks[n++] = (char *)graft_task_name(graft_trainer_task(c->tr, t));
    }
    if (!n) return 0;
    graft_wire_tensor_t ts[GRAFT_MAX_TASKS + 1];
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_REQUEST};
    m.eval_request = (graft_wire_eval_request_t){
        .round = (uint64_t)c->round, .tensors = ts,
        .ntensors = (size_t)coord_worker_tensors(c, w, ts), .tasks = tasks,
        .ntasks = (size_t)n, .split = c->eval_split,
        .max_examples = (uint64_t)cfg->eval_max, .max_decodes = (uint64_t)cfg->decode_max,
        .gen_tokens = (uint32_t)cfg->gen_tokens, .personal = coord_personal(c)};
    if (coord_send_msg(c, peer, &m)) return 0;
    for (int i = 0; ask && i < w->n_assigned; i++)
        graft_eval_answers_ask(c->answers, w->name, w->assigned[i]);
    return n;
}

/* --eval_on workers: asks every live worker to evaluate the round's
 * aggregated modules on its own rows of split, for each task it trains,
 * with the run's evaluation sizes. Returns how many were asked. */
int coord_request_eval(coord_t *c, int split) {
    graft_eval_answers_reset(c->answers);
    c->eval_split = split;
    c->eval_t0 = graft_now();
    c->eval_bytes_in = c->bytes_in;
    c->eval_bytes_out = c->bytes_out;
    int asked = 0;
    for (int p = 0; p < MAX_PEERS; p++)
        if (c->w[p].state == W_ACTIVE) asked += send_eval_request(c, p, 1) > 0;
    LOG_INFO("eval round %d: asked %d workers to evaluate on their %s rows", c->round, asked,
             graft_task_split_name(split));
    return asked;
}

/* A worker registering (again) while the workers evaluate is sent the
 * questions its name has not answered: a process that reconnected, or was
 * restarted, still answers for its rows. */
void coord_eval_rejoin(coord_t *c, int peer) {
    if (c->state != S_EVAL_WAIT) return;
    int n = send_eval_request(c, peer, 0);
    if (n)
        LOG_INFO("eval round %d: asked worker '%s' again for its %d unanswered tasks", c->round,
                 c->w[peer].name, n);
}

/* Is a worker of that name registered? (The questions of a lost worker are
 * not waited for.) */
static int name_alive(void *ctx, const char *name) {
    const coord_t *c = ctx;
    for (int p = 0; p < MAX_PEERS; p++)
        if (c->w[p].state == W_ACTIVE && !strcmp(c->w[p].name, name)) return 1;
    return 0;
}

size_t coord_eval_pending(coord_t *c) {
    return graft_eval_answers_waiting(c->answers, name_alive, c);
}

/* 0 and the result's statistics in *s; 1 with the reason in why (not
 * counted); 2 with the reason: its content does not fit the task, and it
 * counts as answered with no rows (the worker would only send it again). */
static int refuse_eval_result(coord_t *c, const worker_t *w, const graft_wire_eval_result_t *r,
                              graft_eval_stats_t *s, char *why, size_t n) {
    int t = graft_trainer_task_index(c->tr, r->task);
    int state = t < 0 ? GRAFT_EVAL_NOT_ASKED : graft_eval_answers_state(c->answers, w->name, t);
    if (c->state != S_EVAL_WAIT || r->round != (uint64_t)c->round)
        snprintf(why, n, "not expected now (round %llu; too late?)", (unsigned long long)r->round);
    else if (r->split != c->eval_split)
        snprintf(why, n, "the %s split; the %s split was asked for",
                 graft_task_split_name(r->split), graft_task_split_name(c->eval_split));
    else if (state == GRAFT_EVAL_NOT_ASKED)
        snprintf(why, n, "worker '%.64s' was not asked about task '%.64s'", w->name, r->task);
    else if (state == GRAFT_EVAL_ANSWERED)
        snprintf(why, n, "task '%.64s' already answered", r->task);
    else {
        const graft_task_t *task = graft_trainer_task(c->tr, t);
        char detail[160];
        if (!graft_eval_stats_from_wire(r, t, graft_task_kind(task), graft_task_num_labels(task), s,
                                        detail, sizeof detail))
            return 0;
        snprintf(why, n, "task '%.64s': %.120s; counted as answered with no rows", r->task,
                 detail);
        return 2;
    }
    return 1;
}

void coord_on_eval_result(coord_t *c, int peer, const graft_msg_t *m) {
    worker_t *w = &c->w[peer];
    const graft_wire_eval_result_t *r = &m->eval_result;
    graft_eval_stats_t s;
    char why[256];
    int refused = refuse_eval_result(c, w, r, &s, why, sizeof why);
    /* An answer to this round's evaluation after it closed (its worker was
     * slower than --round_timeout_ms, which the closing already logged):
     * info, not one warning per task. */
    int late = c->state != S_EVAL_WAIT && r->round == (uint64_t)c->round;
    if (refused && late)
        LOG_INFO("coordinator: eval_result from %s for task '%.64s' came after the evaluation "
                 "closed; ignored", graft_transport_peer_name(c->o.tp, peer), r->task);
    else if (refused)
        LOG_WARN("coordinator: dropping eval_result from %s: %s",
                 graft_transport_peer_name(c->o.tp, peer), why);
    if (refused == 1) return;
    graft_eval_answers_add(c->answers, w->name, graft_trainer_task_index(c->tr, r->task),
                           refused ? NULL : &s, r->part, r->parts);
    w->has_tasks |= coord_personal(c); /* it evaluated with its own modules */
}

/* Each worker's own metrics of task t (its answer's statistics alone), for
 * the eval event ({name: {examples, loss, accuracy...}}) and, with two or
 * more, one log line: how the clients differ. */
static json_t *per_worker(coord_t *c, const char **names, const graft_eval_stats_t **each,
                          size_t n) {
    json_t *o = json_object();
    char line[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        graft_eval_result_t r;
        graft_eval_stats_finish(each[i], &r);
        json_t *m = graft_eval_json(c->tr, &r);
        json_object_del(m, "task");
        json_object_del(m, "split");
        json_object_del(m, "sample");
        json_object_set_new(o, names[i], m);
        int cls = r.kind == GRAFT_TASK_CLASSIFY, none = cls ? !r.examples : !r.chrf_examples;
        char metric[32] = "-";
        if (!none) snprintf(metric, sizeof metric, "%.4g", cls ? r.cls.accuracy : r.chrf);
        if (used < sizeof line)
            used += (size_t)snprintf(line + used, sizeof line - used, "%s%.64s %s %s (n=%lld)",
                                     i ? ", " : "", names[i], cls ? "acc" : "chrF", metric,
                                     (long long)r.examples);
    }
    if (n > 1 && each[0])
        LOG_INFO("eval round %d: %s per worker: %s", c->round,
                 graft_task_name(graft_trainer_task(c->tr, each[0]->task)), line);
    return o;
}

/* The workers' answers, added up per task in name order: one eval event per
 * task (source workers, with each worker's own metrics), also for a task no
 * worker answered for (examples 0). Coverage problems are logged and go
 * into the event: workers that did not answer ("missing": their rows are
 * left out), IID parts answered twice ("duplicate": counted once) or by
 * no one; "complete" says whether the rows are those the run asked for. */
void coord_finish_worker_eval(coord_t *c) {
    const char **names = graft_xcalloc(4 * (size_t)MAX_PEERS, sizeof *names);
    const char **missing = names + MAX_PEERS, **duplicate = names + 2 * MAX_PEERS;
    const graft_eval_stats_t **each = graft_xcalloc(MAX_PEERS, sizeof *each);
    for (int t = 0; t < graft_trainer_n_tasks(c->tr); t++) {
        const graft_task_t *task = graft_trainer_task(c->tr, t);
        const char *name = graft_task_name(task);
        graft_eval_stats_t s;
        graft_eval_merge_t info;
        graft_eval_answers_merge(c->answers, t, c->eval_split, graft_task_kind(task),
                                 graft_task_num_labels(task), &s, names, each, missing,
                                 duplicate, MAX_PEERS, &info);
        size_t n = info.answers < MAX_PEERS ? info.answers : MAX_PEERS;
        size_t nm = info.missing < MAX_PEERS ? info.missing : MAX_PEERS;
        size_t nd = info.duplicate < MAX_PEERS ? info.duplicate : MAX_PEERS;
        for (size_t i = 0; i < nm; i++)
            LOG_WARN("eval round %d: %s: no answer from worker '%s' (lost, or past "
                     "--round_timeout_ms): its rows are left out", c->round, name, missing[i]);
        for (size_t i = 0; i < nd; i++)
            LOG_WARN("eval round %d: %s: worker '%s' evaluated an IID part that another worker "
                     "already did (the same --shard twice?): counted once", c->round, name,
                     duplicate[i]);
        if (info.parts_missing)
            LOG_WARN("eval round %d: %s: %zu IID parts of the evaluation had no worker: their "
                     "rows are left out", c->round, name, info.parts_missing);
        if (info.own && c->eval_on == (EVAL_ON_COORDINATOR | EVAL_ON_WORKERS) && !c->said_caps &&
            (c->cfg->eval_max || c->cfg->decode_max)) {
            c->said_caps = 1;
            LOG_INFO("eval round %d: workers with their own files apply --eval_max %d and "
                     "--decode_max %d to their own rows: the two evaluations cover different "
                     "rows (0 for both: every row, and they agree)", c->round, c->cfg->eval_max,
                     c->cfg->decode_max);
        }
        json_t *workers = per_worker(c, names, each, n);
        graft_eval_result_t r;
        graft_eval_stats_finish(&s, &r);
        graft_eval_stats_free(&s);
        json_t *extra = json_pack("{s:b, s:o, s:o, s:I}", "complete", info.complete, "missing",
                                  coord_names_json(missing, nm), "duplicate",
                                  coord_names_json(duplicate, nd), "parts_missing",
                                  (json_int_t)info.parts_missing);
        report_eval(c, &r, coord_names_json(names, n), workers, extra);
    }
    free(names);
    free(each);
    graft_eval_answers_reset(c->answers);
    LOG_INFO("eval round %d: the workers' evaluation took %.0f ms (out %.1f KiB, in %.1f KiB)",
             c->round, (graft_now() - c->eval_t0) * 1000.0,
             (double)(c->bytes_out - c->eval_bytes_out) / 1024.0,
             (double)(c->bytes_in - c->eval_bytes_in) / 1024.0);
}
