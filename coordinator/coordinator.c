/* coordinator.c — the coordinator's event loop and round state machine
 * (see coordinator.h). */
#include "coordinator.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "aggregator.h"
#include "coord_state.h"
#include "eval_answers.h"
#include "events.h"
#include "handshake_log.h"
#include "trainer.h"
#include "wire.h"

#define LOST_AFTER_BEATS 5
#define HANDSHAKE_LOG_WINDOW_S 60.0 /* repeated failed handshakes: one line a minute */

volatile sig_atomic_t graft_coordinator_stop = 0;

static const char *state_name[] = {"wait_workers", "round_open", "aggregate", "eval",
                                   "eval_wait",    "checkpoint", "done"};

/* Records why the run fails; the first reason is the one reported. */
static void set_error(coord_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(coord_t *c, const char *fmt, ...) {
    if (c->error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
}

static void set_state(coord_t *c, round_state_t s) {
    LOG_DEBUG("coordinator: %s -> %s", state_name[c->state], state_name[s]);
    c->state = s;
}

static int count_active(const coord_t *c) {
    int n = 0;
    for (int p = 0; p < MAX_PEERS; p++) n += c->w[p].state == W_ACTIVE;
    return n;
}

/* ---- sending ------------------------------------------------------------ */

int coord_send_msg(coord_t *c, int peer, graft_msg_t *m) {
    m->run_id = c->run_id;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = graft_wire_encode(m, GRAFT_DTYPE_F32, &buf, &len);
    if (!rc && len > c->max_bytes) {
        LOG_ERROR("coordinator: the %s for %s is %zu bytes, over the run's message limit of %zu "
                  "that its worker enforces; not sent (a bug: the limit is meant to cover every "
                  "message of the run)", graft_msg_type_name(m->type),
                  graft_transport_peer_name(c->o.tp, peer), len, c->max_bytes);
        rc = GRAFT_EINVAL;
    }
    if (!rc) rc = graft_transport_send(c->o.tp, peer, buf, len);
    if (!rc) c->bytes_out += len;
    else
        LOG_WARN("coordinator: cannot send %s to %s: %s", graft_msg_type_name(m->type),
                 graft_transport_peer_name(c->o.tp, peer), graft_strerror(rc));
    free(buf);
    return rc;
}

static void send_error(coord_t *c, int peer, int code, const char *text) {
    graft_msg_t m = {.type = GRAFT_MSG_ERROR};
    m.error.code = code;
    m.error.message = (char *)text;
    coord_send_msg(c, peer, &m);
}

/* The scopes worker w sends back: shared (if not empty) then its tasks',
 * which a personal round leaves out (they stay on the worker). With
 * `sending`, the scopes it is sent: those, and in a personal round its
 * tasks' until an answer shows that it holds them (has_tasks). */
static int worker_scopes(const coord_t *c, const worker_t *w, int sending, graft_scope_t **out) {
    int n = 0;
    if (c->scopes[0]->numel) out[n++] = c->scopes[0];
    if (coord_personal(c) && !(sending && !w->has_tasks)) return n;
    for (int i = 0; i < w->n_assigned; i++)
        if (c->scopes[1 + w->assigned[i]]->numel) out[n++] = c->scopes[1 + w->assigned[i]];
    return n;
}

/* The scopes worker w is sent as wire tensors into ts (GRAFT_MAX_TASKS +
 * 1), pointing at the global modules: one flat tensor per scope. */
int coord_worker_tensors(const coord_t *c, const worker_t *w, graft_wire_tensor_t *ts) {
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    int n = worker_scopes(c, w, 1, scopes);
    for (int i = 0; i < n; i++)
        ts[i] = (graft_wire_tensor_t){.name = scopes[i]->name, .ndim = 1,
                                      .shape = {(int64_t)scopes[i]->numel},
                                      .data = scopes[i]->params, .numel = scopes[i]->numel};
    return n;
}

static uint64_t shared_weight(const coord_t *c, const worker_t *w);

/* Sends the open round to peer; it is in the round once the send worked
 * (else the deadline sends it again, resend_round). */
static int send_round_start(coord_t *c, int peer) {
    worker_t *w = &c->w[peer];
    graft_wire_tensor_t ts[GRAFT_MAX_TASKS + 1];
    int n = coord_worker_tensors(c, w, ts);
    /* The run's schedule over global steps, continued across rounds
     * (rounds x local_steps fits an int: check_steps). */
    int steps = c->cfg->local_steps;
    int64_t first = (int64_t)(c->round - 1) * steps;
    float *rates = graft_xmalloc((size_t)steps * sizeof *rates);
    for (int s = 0; s < steps; s++) rates[s] = graft_trainer_lr_at(c->tr, (int)(first + s));
    graft_msg_t m = {.type = GRAFT_MSG_ROUND_START};
    graft_wire_round_start_t *rs = &m.round_start;
    rs->round = (uint64_t)c->round;
    rs->tensors = ts;
    rs->ntensors = (size_t)n;
    rs->hyper.learning_rate = rates[0];
    rs->hyper.step_lr = rates;
    rs->hyper.nstep_lr = (size_t)steps;
    rs->hyper.local_steps = (uint32_t)c->cfg->local_steps;
    rs->hyper.batch_size = (uint32_t)c->cfg->batch;
    rs->hyper.weight_decay = c->cfg->weight_decay;
    rs->hyper.fedprox_mu = c->agg_cfg.fedprox ? c->agg_cfg.fedprox_mu : 0.0f;
    rs->hyper.freeze_lora_a = c->agg_cfg.lora == GRAFT_LORA_FREEZE_A;
    const graft_peft_t *peft = graft_trainer_peft(c->tr);
    rs->hyper.head_lr_scale = graft_peft_head_lr_scale(peft);
    rs->hyper.keep_optimizer_state = c->cfg->keep_optimizer_state;
    rs->hyper.logit_adjust = c->cfg->logit_adjust;
    rs->hyper.personal = coord_personal(c);
    rs->hyper.channels_selected =
        (graft_peft_methods(peft) & GRAFT_M_CHANNELS) && graft_trainer_stage(c->tr) == 2;
    rs->reduce = (graft_wire_reduce_t){
        .collective = graft_aggregator_collective(c->agg),
        .clip_norm = c->agg_cfg.clip ? c->agg_cfg.clip_norm : 0.0f,
        .lora_products = graft_agg_wants_products(&c->agg_cfg)};
    /* Under MPI reductions the worker weighs its own contribution. */
    if (rs->reduce.collective) rs->reduce.shared_weight = shared_weight(c, w);
    /* Never 0, which the worker refuses: a round start sent at (or past)
     * the deadline must still be trained. */
    double left = (c->deadline - graft_now()) * 1000.0;
    rs->deadline_ms = left >= 1.0 ? (uint32_t)left : 1;
    int rc = coord_send_msg(c, peer, &m);
    if (!rc) w->in_round = 1;
    free(rates);
    return rc;
}

/* Is run task t among assigned[0..n)? */
static int has_task(const int *assigned, int n, int t) {
    for (int i = 0; i < n; i++)
        if (assigned[i] == t) return 1;
    return 0;
}

/* Does worker w train run task t? */
static int trains(const worker_t *w, int t) {
    return has_task(w->assigned, w->n_assigned, t);
}

/* The train examples worker w registered for its tasks (its hello's). */
static uint64_t worker_samples(const worker_t *w) {
    uint64_t n = 0;
    for (int i = 0; i < w->n_assigned; i++) n += w->train[w->assigned[i]];
    return n;
}

/* Units of one task's weight in the shared scope under shared_weight task. */
#define TASK_WEIGHT_UNIT 1048576.0

/* The weight of worker w's reply in the shared scope's mean: the train
 * examples its hello registered (as for its task scopes; not the sample
 * count its update claims), or under shared_weight task its share of every
 * task it trains — its training examples of the task over those of every
 * active worker that trains it — summed, in TASK_WEIGHT_UNITs, so that each
 * task weighs one unit however many examples and workers it has. */
static uint64_t shared_weight(const coord_t *c, const worker_t *w) {
    if (!c->agg_cfg.task_weights) return worker_samples(w);
    double share = 0.0;
    for (int i = 0; i < w->n_assigned; i++) {
        int t = w->assigned[i];
        uint64_t total = 0;
        for (int p = 0; p < MAX_PEERS; p++)
            if (c->w[p].state == W_ACTIVE && trains(&c->w[p], t)) total += c->w[p].train[t];
        if (total) share += (double)w->train[t] / (double)total;
    }
    uint64_t weight = (uint64_t)llround(share * TASK_WEIGHT_UNIT);
    return weight ? weight : 1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Fills names (MAX_PEERS slots) with the workers of this round (those
 * whose update it holds, if `replied`) that train task t (any task for
 * t < 0), sorted so that logs and events do not depend on the order in
 * which workers joined. Returns the count. */
static size_t worker_names(const coord_t *c, int t, int replied, const char **names) {
    size_t n = 0;
    for (int i = 0; replied && i < c->n_replies; i++) {
        const contribution_t *r = &c->replies[i];
        if (t < 0 || has_task(r->assigned, r->n_assigned, t)) names[n++] = r->name;
    }
    for (int p = 0; !replied && p < MAX_PEERS; p++) {
        const worker_t *w = &c->w[p];
        if (w->in_round && (t < 0 || trains(w, t))) names[n++] = w->name;
    }
    qsort(names, n, sizeof *names, by_name);
    return n;
}

/* The round's cohorts on the human log: each task's workers; a task with
 * none keeps its modules this round. */
static void log_cohorts(coord_t *c) {
    const char **names = graft_xcalloc(MAX_PEERS, sizeof *names);
    for (int t = 0; t < graft_trainer_n_tasks(c->tr); t++) {
        char line[1024] = "";
        size_t used = 0, n = worker_names(c, t, 0, names);
        for (size_t i = 0; i < n && used < sizeof line; i++)
            used += (size_t)snprintf(line + used, sizeof line - used, "%s%s", i ? ", " : "",
                                     names[i]);
        const char *task = graft_task_name(graft_trainer_task(c->tr, t));
        if (n) LOG_INFO("round %d: task %s: cohort of %zu: %s", c->round, task, n, line);
        else LOG_WARN("round %d: task %s: no worker holds it this round; its modules stay as they "
                      "are", c->round, task);
    }
    free(names);
}

/* Two-stage channels: the first round after stage 1 selects each task's
 * channels from its aggregated scores. Every worker makes the same choice
 * from the same scores when the round start says stage 2 (hyper). */
static void enter_stage2(coord_t *c) {
    int stage1 = graft_stage1_rounds(c->cfg);
    if (graft_trainer_stage(c->tr) != 1 || c->round <= stage1) return;
    graft_trainer_select_channels(c->tr);
    char digest[32];
    snprintf(digest, sizeof digest, "%016llx",
             (unsigned long long)graft_trainer_channels_digest(c->tr));
    LOG_INFO("round %d: two-stage: channels selected from the scores of %d rounds (top %d per "
             "layer, digest %s); stage 2 starts", c->round, stage1, c->cfg->channels_k, digest);
    graft_events_emit(c->ev, "stage",
                      json_pack("{s:i, s:i, s:i, s:i, s:s}", "round", c->round, "stage", 2,
                                "stage1_rounds", stage1, "channels_k", c->cfg->channels_k,
                                "channels_digest", digest));
}

/* Sends every active worker the round, then opens the aggregation (with
 * MPI reductions this joins them: the workers were sent the round first). */
static int start_round(coord_t *c) {
    enter_stage2(c);
    c->round_t0 = graft_now();
    c->deadline = c->round_t0 + c->cfg->round_timeout_ms / 1000.0;
    c->stalled_at = 0.0;
    c->bytes_in = c->bytes_out = 0;
    c->n_replies = 0;
    c->agg_ms = 0.0;
    int n = 0;
    for (int p = 0; p < MAX_PEERS; p++)
        if (c->w[p].state == W_ACTIVE) n += send_round_start(c, p) == GRAFT_OK;
    LOG_INFO("round %d/%d: started with %d workers", c->round, c->cfg->rounds, n);
    log_cohorts(c);
    if (c->agg_cfg.task_weights) {
        char line[2048] = "";
        size_t used = 0;
        for (int p = 0; p < MAX_PEERS && used < sizeof line; p++)
            if (c->w[p].state == W_ACTIVE)
                used += (size_t)snprintf(line + used, sizeof line - used, "%s%s %.3f",
                                         used ? ", " : "", c->w[p].name,
                                         (double)shared_weight(c, &c->w[p]) / TASK_WEIGHT_UNIT);
        LOG_INFO("round %d: shared scope weights (one per task): %s", c->round, line);
    }
    if (c->cfg->personalize && c->round == c->cfg->personal_from && c->round > 1)
        LOG_INFO("round %d: from now on every worker keeps its own task modules, starting from "
                 "its cohort's average of round %d (--personal_from)", c->round, c->round - 1);
    graft_aggregator_set_personal(c->agg, coord_personal(c));
    int rc = graft_aggregator_begin(c->agg);
    if (rc) LOG_ERROR("round %d: cannot start the MPI reductions: %s", c->round, graft_strerror(rc));
    set_state(c, S_ROUND_OPEN);
    return rc;
}

/* ---- handlers ------------------------------------------------------------ */

/* Each label's share of task's training split, into prior (K floats);
 * 0 when the coordinator's copy of the task has no training rows. */
static int train_prior(const graft_task_t *task, float *prior) {
    int K = graft_task_num_labels(task);
    size_t n = graft_task_count(task, GRAFT_SPLIT_TRAIN);
    if (n == 0) return 0;
    size_t *count = graft_xmalloc((size_t)K * sizeof *count);
    graft_task_label_counts(task, GRAFT_SPLIT_TRAIN, count);
    for (int k = 0; k < K; k++) prior[k] = (float)((double)count[k] / (double)n);
    free(count);
    return 1;
}

/* Assign: the worker's tasks and, for each classification task, the run's
 * label set (the worker numbers its shard's labels by it) with each
 * label's share of the training data (for --logit_adjust). */
static void send_assign(coord_t *c, int peer) {
    worker_t *w = &c->w[peer];
    char *names[GRAFT_MAX_TASKS];
    graft_wire_label_set_t sets[GRAFT_MAX_TASKS];
    int nsets = 0;
    for (int i = 0; i < w->n_assigned; i++) {
        const graft_task_t *task = graft_trainer_task(c->tr, w->assigned[i]);
        names[i] = (char *)graft_task_name(task);
        if (graft_task_kind(task) != GRAFT_TASK_CLASSIFY) continue;
        int nl = graft_task_num_labels(task);
        char **labels = graft_xmalloc((size_t)nl * sizeof *labels);
        for (int l = 0; l < nl; l++) labels[l] = (char *)graft_task_label_name(task, l);
        float *prior = graft_xmalloc((size_t)nl * sizeof *prior);
        if (!train_prior(task, prior)) {
            free(prior);
            prior = NULL;
        }
        sets[nsets++] = (graft_wire_label_set_t){names[i], labels, (size_t)nl, prior};
    }
    graft_msg_t a = {.type = GRAFT_MSG_ASSIGN};
    a.assign = (graft_wire_assign_t){.worker_id = (uint32_t)peer, .tasks = names,
                                     .ntasks = (size_t)w->n_assigned, .label_sets = sets,
                                     .nlabel_sets = (size_t)nsets,
                                     .max_message_bytes = c->max_bytes,
                                     .personal = c->cfg->personalize};
    memcpy(a.assign.earlier_runs, c->earlier_runs, sizeof c->earlier_runs);
    a.assign.nearlier_runs = c->nearlier_runs;
    w->has_tasks = 0; /* the worker may build a new trainer: send its task scopes again */
    coord_send_msg(c, peer, &a);
    for (int i = 0; i < nsets; i++) {
        free(sets[i].labels);
        free(sets[i].prior);
    }
}

/* Run task index of a hello shard the run can use, or -1 (logged). */
static int usable_shard(coord_t *c, int peer, const worker_t *w, const graft_wire_shard_t *s) {
    const char *who = graft_transport_peer_name(c->o.tp, peer);
    int t = graft_peft_find_task(graft_trainer_peft(c->tr), s->task);
    if (t < 0 || s->train_examples == 0 || w->train[t]) {
        LOG_WARN("coordinator: %s holds shard '%s' that this run does not use (unknown task, no "
                 "train example or repeated); ignored", who, s->task);
        return -1;
    }
    int cls = graft_task_kind(graft_trainer_task(c->tr, t)) == GRAFT_TASK_CLASSIFY;
    if ((s->kind == GRAFT_KIND_CLASSIFICATION) != cls) {
        LOG_WARN("coordinator: %s holds '%s' as a %s task; this run has it as %s; ignored", who,
                 s->task, s->kind == GRAFT_KIND_CLASSIFICATION ? "classification" : "generation",
                 cls ? "classification" : "generation");
        return -1;
    }
    return t;
}

/* Refuses the worker that said hello from peer: logged (why, then the
 * hint), a worker_refused event (with the differing settings, when given:
 * owned), and an Error that makes the worker stop. */
static void refuse(coord_t *c, int peer, const char *name, const char *why, const char *hint,
                   json_t *settings) {
    const char *who = graft_transport_peer_name(c->o.tp, peer);
    LOG_ERROR("coordinator: refused worker '%s' from %s: %s%s", name, who, why, hint);
    json_t *ev = json_pack("{s:i, s:s, s:s, s:s}", "round", c->round, "name", name, "peer", who,
                           "reason", why);
    if (settings) json_object_set_new(ev, "settings", settings);
    graft_events_emit(c->ev, "worker_refused", ev);
    send_error(c, peer, GRAFT_EINVAL, why);
}

/* A version "MAJOR[.MINOR[.PATCH]][SUFFIX]" into v (missing parts 0; a
 * suffix such as "-rc1" ignored): 0, or -1 when it does not start with a
 * number. */
static int parse_version(const char *s, long v[3]) {
    v[0] = v[1] = v[2] = 0;
    for (int i = 0; i < 3; i++) {
        if (!isdigit((unsigned char)*s)) return i ? 0 : -1;
        char *end;
        v[i] = strtol(s, &end, 10);
        if (*end != '.') return 0;
        s = end + 1;
    }
    return 0;
}

/* The first feature of this run that a worker of version v (same major)
 * lacks, with the release that brought it; NULL when it has them all. */
static const char *missing_feature(const coord_t *c, const long v[3]) {
    if (c->cfg->personalize && c->cfg->personal_from > 1 && v[0] == 0 && v[1] < 4)
        return "task modules averaged before they turn personal (--personal_from), which "
               "workers follow from graft 0.4.0";
    if (c->cfg->personalize && v[0] == 0 && v[1] < 3)
        return "a personalised run (--personalize), which workers follow from graft 0.3.0";
    if ((c->eval_on & EVAL_ON_WORKERS) && v[0] == 0 && v[1] < 2)
        return "evaluation on the workers (--eval_on), which workers answer from graft 0.2.0";
    return NULL;
}

/* The worker that the hello from peer (its key `key`) would impersonate
 * (1, its name and key in *other, *other_key), or 0: one registered now or
 * before under the hello's name with another CurveZMQ key, or the worker
 * this peer belongs to, if its key differs. */
static int impersonated(const coord_t *c, int peer, const char *name, const char *key,
                        const char **other, const char **other_key) {
    const worker_t *w = &c->w[peer];
    *other = w->name, *other_key = w->key;
    int found = w->state == W_ACTIVE && strcmp(w->key, key);
    for (int p = 0; !found && p < MAX_PEERS; p++) {
        *other = c->w[p].name, *other_key = c->w[p].key;
        found = c->w[p].state != W_NONE && !strcmp(*other, name) && strcmp(*other_key, key);
    }
    for (int i = 0; !found && i < c->nbound; i++) {
        *other = c->bound[i].name, *other_key = c->bound[i].key;
        found = !strcmp(*other, name) && strcmp(*other_key, key);
    }
    return found;
}

/* Worker slot p is no one's any more (lost, or re-registered under another
 * peer): its name stays bound to its key, and the transport may give its
 * peer id to a newcomer. */
static void release_slot(coord_t *c, int p) {
    worker_t *w = &c->w[p];
    int known = !*w->key;
    for (int i = 0; !known && i < c->nbound; i++) known = !strcmp(c->bound[i].name, w->name);
    if (!known) {
        c->bound = realloc(c->bound, (size_t)(c->nbound + 1) * sizeof *c->bound);
        GRAFT_ASSERT(c->bound);
        c->bound[c->nbound++] = (binding_t){0};
        snprintf(c->bound[c->nbound - 1].name, sizeof c->bound->name, "%s", w->name);
        snprintf(c->bound[c->nbound - 1].key, sizeof c->bound->key, "%s", w->key);
    }
    memset(w, 0, sizeof *w);
    graft_transport_forget(c->o.tp, p);
}

/* Refuses (returns 1) a hello that no settings could make acceptable:
 * another protocol major version, an older release without a feature the
 * run uses, no settings (nothing to check the modules against), or a
 * worker that another key registered. */
static int refuse_hello(coord_t *c, int peer, const graft_wire_hello_t *h) {
    char why[512] = "";
    const char *key = graft_transport_peer_key(c->o.tp, peer), *other, *other_key, *lacks;
    long theirs[3], ours[3];
    GRAFT_ASSERT(!parse_version(GRAFT_VERSION, ours));
    int taken = impersonated(c, peer, h->name, key, &other, &other_key);
    if (parse_version(h->version, theirs) || theirs[0] != ours[0])
        snprintf(why, sizeof why, "it speaks graft protocol %s, this coordinator %s: the major "
                 "versions differ (run the same graft release on both)", h->version,
                 GRAFT_VERSION);
    else if ((lacks = missing_feature(c, theirs)))
        snprintf(why, sizeof why, "this run uses %s, and the worker is graft %s (upgrade it)",
                 lacks, h->version);
    else if (h->nsettings == 0)
        snprintf(why, sizeof why, "its hello carries no settings (an older graft?): nothing to "
                 "check its method, trunk and tasks against");
    else if (taken)
        snprintf(why, sizeof why, "worker '%s' registered with CurveZMQ key %s, and this client's "
                 "key is %s (a worker's --name belongs to the key that registered it first)",
                 other, other_key, *key ? key : "(none)");
    if (!*why) return 0;
    refuse(c, peer, h->name, why, "", NULL);
    return 1;
}

/* Refuses (returns 1) a worker whose shared settings differ from the run's:
 * its modules would not fit, or would mean something else. */
static int refuse_settings(coord_t *c, int peer, const graft_wire_hello_t *h) {
    char why[1024] = "";
    json_t *diffs = json_array();
    int method_differs = 0;
    for (int i = 0; i < c->nsettings; i++) {
        const graft_setting_t *s = &c->settings[i];
        const char *theirs = NULL;
        for (size_t k = 0; k < h->nsettings; k++)
            if (!strcmp(h->settings[k].name, s->name)) theirs = h->settings[k].value;
        /* Another method has other sizes: the method's difference says it all. */
        if (!theirs && method_differs) continue;
        if (!theirs) theirs = "(not sent)";
        if (!strcmp(theirs, s->value)) continue;
        method_differs |= !strcmp(s->name, "method");
        size_t len = strlen(why);
        snprintf(why + len, sizeof why - len, "%s--%s differs (coordinator: %s, this worker: %s)",
                 len ? "; " : "", s->name, s->value, theirs);
        json_array_append_new(diffs, json_pack("{s:s, s:s, s:s}", "setting", s->name,
                                               "coordinator", s->value, "worker", theirs));
    }
    if (json_array_size(diffs) == 0) {
        json_decref(diffs);
        return 0;
    }
    refuse(c, peer, h->name, why, " (its modules would not match this run's; start it with the "
           "coordinator's settings)", diffs);
    return 1;
}

/* A hello from a peer already registered under the same name: a worker
 * that asked again (a restarted coordinator's errors, its own silence
 * timer), or another process with the same --name that took over the
 * connection. Answered with the same assignment and no second join. The
 * open round goes to a worker not yet sent it, and once more to one that
 * has not replied (a process restarted under the same name lost it; one
 * that trained it drops the copy): never a flood of round starts. */
static void on_hello_again(coord_t *c, int peer) {
    worker_t *w = &c->w[peer];
    LOG_WARN("coordinator: worker %d '%s' said hello again while registered (last heard %.1f s "
             "ago): a repeated hello, or another process with the same --name took over its "
             "connection; answered with its assignment", peer, w->name,
             graft_now() - w->last_seen);
    w->last_seen = graft_now();
    send_assign(c, peer);
    coord_eval_rejoin(c, peer);
    if (c->state != S_ROUND_OPEN || graft_aggregator_collective(c->agg)) return;
    if (w->in_round && (w->replied || w->resent_round == c->round)) return;
    if (w->in_round) w->resent_round = c->round;
    send_round_start(c, peer);
}

/* The open round's update from the worker named `name`, or NULL. */
static const contribution_t *contribution_of(const coord_t *c, const char *name) {
    for (int i = 0; i < c->n_replies; i++)
        if (!strcmp(c->replies[i].name, name)) return &c->replies[i];
    return NULL;
}

/* A worker registering anew whose update the open round already holds (it
 * was lost after replying, or comes back from another connection) stays in
 * the round as replied: it is not sent the round again, which it would
 * train and send a second time. */
static int rejoins_replied(coord_t *c, worker_t *w) {
    if (c->state != S_ROUND_OPEN || !contribution_of(c, w->name)) return 0;
    w->in_round = w->replied = 1;
    w->resent_round = c->round;
    LOG_INFO("coordinator: worker '%s' already replied to round %d; not sent it again", w->name,
             c->round);
    return 1;
}

static void on_hello(coord_t *c, int peer, graft_msg_t *m) {
    worker_t *w = &c->w[peer];
    const graft_wire_hello_t *h = &m->hello;
    if (refuse_hello(c, peer, h) || refuse_settings(c, peer, h)) return;
    if (w->state == W_ACTIVE && !strcmp(w->name, h->name)) {
        on_hello_again(c, peer);
        return;
    }
    /* The same worker back under a new peer id replaces its old slot (its
     * update, if any, stays in the round: rejoins_replied). */
    for (int p = 0; p < MAX_PEERS; p++)
        if (p != peer && c->w[p].state == W_ACTIVE && !strcmp(c->w[p].name, h->name)) {
            LOG_WARN("coordinator: worker '%s' re-registered from %s; dropping its old slot",
                     h->name, graft_transport_peer_name(c->o.tp, peer));
            release_slot(c, p);
        }
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", h->name);
    snprintf(w->key, sizeof w->key, "%s", graft_transport_peer_key(c->o.tp, peer));
    json_t *tasks = json_array(), *counts = json_object();
    for (size_t i = 0; i < h->nshards && i < GRAFT_MAX_TASKS; i++) {
        int t = usable_shard(c, peer, w, &h->shards[i]);
        if (t < 0) continue;
        w->train[t] = h->shards[i].train_examples;
        w->assigned[w->n_assigned++] = t;
        json_array_append_new(tasks, json_string(graft_task_name(graft_trainer_task(c->tr, t))));
        json_object_set_new(counts, graft_task_name(graft_trainer_task(c->tr, t)),
                            json_integer((json_int_t)w->train[t]));
    }
    if (w->n_assigned == 0) {
        LOG_WARN("coordinator: %s ('%s') holds no task of this run; refused",
                 graft_transport_peer_name(c->o.tp, peer), h->name);
        send_error(c, peer, GRAFT_EINVAL, "none of your shards belongs to this run");
        json_decref(tasks);
        json_decref(counts);
        return;
    }
    w->state = W_ACTIVE;
    w->last_seen = graft_now();
    send_assign(c, peer);
    char *list = json_dumps(counts, JSON_COMPACT);
    LOG_INFO("coordinator: worker %d '%s' joined from %s; assigned every task it holds (train "
             "examples): %s", peer, w->name, graft_transport_peer_name(c->o.tp, peer), list);
    free(list);
    graft_events_emit(c->ev, "worker_join",
                      json_pack("{s:i, s:i, s:s, s:o, s:o}", "round", c->round, "worker", peer,
                                "name", w->name, "tasks", tasks, "train_examples", counts));
    /* A worker joining (or coming back) mid-round takes part at once —
     * except under MPI reductions, which were sized when the round began. */
    coord_eval_rejoin(c, peer);
    if (rejoins_replied(c, w)) return;
    if (c->state == S_ROUND_OPEN && !graft_aggregator_collective(c->agg)) send_round_start(c, peer);
}

/* Every tensor of an update must be one of the scopes the worker sends back
 * (worker_scopes), each exactly once. */
static int check_update_tensors(coord_t *c, const worker_t *w, const graft_wire_update_t *u,
                                char *why, size_t n) {
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    int ns = worker_scopes(c, w, 0, scopes);
    int seen[GRAFT_MAX_TASKS + 1] = {0};
    for (size_t i = 0; i < u->ntensors; i++) {
        int k = 0;
        while (k < ns && strcmp(scopes[k]->name, u->tensors[i].name)) k++;
        if (k == ns || seen[k]++) {
            snprintf(why, n, "tensor '%s' is not a scope this worker sends back (or is "
                     "repeated)%s", u->tensors[i].name,
                     coord_personal(c) ? "; a personal round's task scopes stay on it" : "");
            return GRAFT_ESHAPE;
        }
        if (u->tensors[i].sparse) { /* a scope's values travel whole */
            snprintf(why, n, "tensor '%s' is sparse; scopes are sent dense", u->tensors[i].name);
            return GRAFT_ESHAPE;
        }
    }
    if (graft_aggregator_collective(c->agg)) ns = 0; /* the modules come by MPI reductions */
    if ((int)u->ntensors != ns) {
        snprintf(why, n, "%zu tensors, expected %d", u->ntensors, ns);
        return GRAFT_ESHAPE;
    }
    if (u->sample_count == 0 || !isfinite(u->train_loss)) {
        snprintf(why, n, "sample_count 0 or non-finite train_loss");
        return GRAFT_EFORMAT;
    }
    return GRAFT_OK;
}

static int scope_index(const coord_t *c, const char *name) {
    for (int k = 0; k <= graft_trainer_n_tasks(c->tr); k++)
        if (!strcmp(c->scopes[k]->name, name)) return k;
    return -1;
}

/* Streams a valid reply's modules into the aggregator: the shared scope
 * weighted by shared_weight, a task scope by the worker's shard of that
 * task. */
static void accumulate(coord_t *c, const worker_t *w, const graft_wire_update_t *u,
                       const char *who) {
    double t0 = graft_now();
    char why[256];
    for (size_t i = 0; i < u->ntensors; i++) {
        const graft_wire_tensor_t *t = &u->tensors[i];
        int k = scope_index(c, t->name);
        uint64_t weight = k == 0 ? shared_weight(c, w) : w->train[k - 1];
        if (graft_aggregator_add(c->agg, k, t->data, weight, why, sizeof why))
            LOG_WARN("coordinator: update from %s: scope %s left out: %s", who, t->name, why);
    }
    c->agg_ms += (graft_now() - t0) * 1000.0;
}

/* Why the open round cannot take update m from worker w (GRAFT_ESTATE: not
 * now, the wrong round or a second one; GRAFT_ESHAPE or GRAFT_EFORMAT: its
 * content), or GRAFT_OK. */
static int refuse_update(coord_t *c, const worker_t *w, const graft_msg_t *m, char *why,
                         size_t n) {
    unsigned long long round = (unsigned long long)m->update.round;
    if (c->state != S_ROUND_OPEN) {
        snprintf(why, n, "not expected now (round %llu; no round is open)", round);
        return GRAFT_ESTATE;
    }
    int rc = graft_wire_expect_round(m, (uint64_t)c->round, why, n);
    if (rc) return rc;
    if (contribution_of(c, w->name)) {
        snprintf(why, n, "'%.64s' already contributed to round %d (one update per worker "
                 "and round)", w->name, c->round);
        return GRAFT_ESTATE;
    }
    if (!w->in_round || c->n_replies == MAX_PEERS) {
        snprintf(why, n, "not expected now (round %llu)", round);
        return GRAFT_ESTATE;
    }
    return check_update_tensors(c, w, &m->update, why, n);
}

/* Validates an update and streams it into the aggregator; the caller frees
 * the message. One update per worker name and round. */
static void on_update(coord_t *c, int peer, graft_msg_t *m) {
    worker_t *w = &c->w[peer];
    char why[256];
    const char *who = graft_transport_peer_name(c->o.tp, peer);
    if (refuse_update(c, w, m, why, sizeof why)) {
        LOG_WARN("coordinator: dropping update from %s: %s", who, why);
        return;
    }
    accumulate(c, w, &m->update, who);
    contribution_t *r = &c->replies[c->n_replies++];
    snprintf(r->name, sizeof r->name, "%s", w->name);
    memcpy(r->assigned, w->assigned, sizeof r->assigned);
    r->n_assigned = w->n_assigned;
    r->samples = worker_samples(w);
    r->at = graft_now();
    r->reply = m->update;
    r->reply.tensors = NULL;
    r->reply.ntensors = 0;
    w->replied = 1;
    w->has_tasks |= coord_personal(c);
    LOG_DEBUG("coordinator: update from %s, loss %.4f", who, m->update.train_loss);
}

/* A worker's Error, logged. In a personalised run, GRAFT_ESHAPE says that
 * it lacks the task scopes we took it to hold (a process that lost them
 * without our noticing): it is sent them again at once, with the open
 * round or evaluation. Once only: the next send carries them. */
static void on_worker_error(coord_t *c, int peer, const graft_msg_t *m, const char *who) {
    worker_t *w = &c->w[peer];
    LOG_WARN("coordinator: %s reports error %d: %s", who, m->error.code, m->error.message);
    if (m->error.code != GRAFT_ESHAPE || !coord_personal(c) || !w->has_tasks) return;
    w->has_tasks = 0;
    if (c->state == S_ROUND_OPEN && w->in_round && !w->replied &&
        !graft_aggregator_collective(c->agg)) {
        LOG_INFO("round %d: sent the round again to worker %d '%s' with its task scopes",
                 c->round, peer, w->name);
        send_round_start(c, peer);
    }
    coord_eval_rejoin(c, peer);
}

static void dispatch(coord_t *c, int peer, const char *who, const uint8_t *buf, size_t len) {
    graft_wire_opts_t opts = {.run_id = c->run_id, .max_bytes = c->max_bytes,
                              .schema = &c->schema};
    graft_msg_t m;
    char why[256];
    int rc = graft_wire_decode(buf, len, &opts, &m, why, sizeof why);
    if (rc) {
        LOG_WARN("coordinator: dropping a message from %s: %s", who, why);
        /* Another run's message (a worker of this coordinator before it was
         * restarted with other job settings): it must register again now,
         * not after its silence timer. */
        if (rc == GRAFT_ESTATE)
            send_error(c, peer, GRAFT_ESTATE, "message from another run: send hello");
        return;
    }
    worker_t *w = &c->w[peer];
    const char *key = graft_transport_peer_key(c->o.tp, peer);
    if (m.type == GRAFT_MSG_HELLO) {
        on_hello(c, peer, &m);
    } else if (w->state == W_ACTIVE && strcmp(key, w->key)) {
        LOG_WARN("coordinator: dropping %s from %s: its CurveZMQ key %s is not the key %s that "
                 "worker '%s' registered with", graft_msg_type_name(m.type), who,
                 *key ? key : "(none)", *w->key ? w->key : "(none)", w->name);
    } else if (w->state != W_ACTIVE) {
        LOG_WARN("coordinator: dropping %s from %s: not registered (asked to say hello)",
                 graft_msg_type_name(m.type), who);
        send_error(c, peer, GRAFT_ESTATE, "unknown worker: send hello");
    } else {
        w->last_seen = graft_now();
        if (m.type == GRAFT_MSG_UPDATE) {
            on_update(c, peer, &m);
        } else if (m.type == GRAFT_MSG_EVAL_RESULT) {
            coord_on_eval_result(c, peer, &m);
        } else if (m.type == GRAFT_MSG_ERROR) {
            on_worker_error(c, peer, &m, who);
        } else if (m.type != GRAFT_MSG_HEARTBEAT) {
            LOG_WARN("coordinator: dropping %s from %s: not a worker message",
                     graft_msg_type_name(m.type), who);
        }
    }
    graft_msg_free(&m);
}

static void handle(coord_t *c, int peer, const uint8_t *buf, size_t len) {
    const char *who = graft_transport_peer_name(c->o.tp, peer);
    c->bytes_in += len;
    if (peer <= 0 || peer >= MAX_PEERS) {
        LOG_WARN("coordinator: dropping a message from %s: peer id %d out of range (more than "
                 "%d peers at once)", who, peer, MAX_PEERS - 1);
        graft_transport_forget(c->o.tp, peer);
        return;
    }
    dispatch(c, peer, who, buf, len);
    /* A peer that no worker holds (refused, a stranger, not registered yet)
     * is forgotten: it comes back as a new peer, maybe under another id. */
    if (c->w[peer].state == W_NONE) {
        memset(&c->w[peer], 0, sizeof c->w[peer]);
        graft_transport_forget(c->o.tp, peer);
    }
}

/* ---- timers -------------------------------------------------------------- */

static void check_lost(coord_t *c) {
    /* MPI ranks do not vanish silently (mpirun aborts the job), and a rank
     * inside a reduction is waiting by design: no losses with reductions. */
    if (graft_aggregator_collective(c->agg)) return;
    double now = graft_now(), limit = LOST_AFTER_BEATS * c->cfg->heartbeat_ms / 1000.0;
    for (int p = 0; p < MAX_PEERS; p++) {
        worker_t *w = &c->w[p];
        if (w->state != W_ACTIVE || now - w->last_seen <= limit) continue;
        int skipped = w->in_round && !w->replied;
        LOG_WARN("coordinator: worker %d '%s' lost (silent for %.1fs)%s", p, w->name,
                 now - w->last_seen, skipped ? "; its shards are skipped this round" : "");
        graft_events_emit(c->ev, "worker_lost",
                          json_pack("{s:i, s:i, s:s, s:f, s:b}", "round", c->round, "worker", p,
                                    "name", w->name, "silent_s", now - w->last_seen, "skipped",
                                    skipped));
        release_slot(c, p); /* back, it registers anew (rejoins_replied) */
    }
}

/* Clients that never got through the transport's handshake (another
 * --server_key, a key not in --allow) send nothing: only this shows them. */
static void check_handshakes(coord_t *c, int flush) {
    graft_handshake_failure_t f;
    double now = graft_now();
    while (graft_transport_next_failure(c->o.tp, &f) == 1)
        graft_handshake_log_add(c->handshakes, &f, c->round, now);
    graft_handshake_log_tick(c->handshakes, c->round, now, flush);
}

static int pending_replies(const coord_t *c) {
    int pending = 0;
    for (int p = 0; p < MAX_PEERS; p++)
        pending += c->w[p].state == W_ACTIVE && c->w[p].in_round && !c->w[p].replied;
    return pending;
}

/* The deadline passed short of --min_replies replies: one round_stalled
 * event per round for whoever watches the events, then the round waits on,
 * another round_timeout_ms at a time, up to --stall_timeout_ms past the
 * first deadline (GRAFT_ETIMEOUT: the run ends). */
static int round_stalled(coord_t *c) {
    double now = graft_now(), limit = c->o.stall_timeout_ms / 1000.0;
    if (!c->stalled_at) {
        c->stalled_at = now;
        graft_events_emit(c->ev, "round_stalled",
                          json_pack("{s:i, s:i, s:i, s:i, s:i}", "round", c->round, "replies",
                                    c->n_replies, "min_replies", c->cfg->min_replies, "workers",
                                    count_active(c), "pending", pending_replies(c)));
    }
    if (limit > 0 && now - c->stalled_at >= limit) {
        LOG_ERROR("round %d: still %d of %d replies needed %.1f s after the deadline "
                  "(--stall_timeout_ms); ending the run (restart workers, or lower "
                  "--min_replies, and --resume)", c->round, c->n_replies, c->cfg->min_replies,
                  now - c->stalled_at);
        return GRAFT_ETIMEOUT;
    }
    double wait = c->cfg->round_timeout_ms / 1000.0;
    if (limit > 0 && c->stalled_at + limit - now < wait) wait = c->stalled_at + limit - now;
    LOG_WARN("round %d: deadline passed with %d of %d replies needed; waiting %.0f ms more",
             c->round, c->n_replies, c->cfg->min_replies, wait * 1000.0);
    c->deadline = now + wait;
    return 0;
}

/* At a deadline short of replies: the round again to every live worker
 * that is not in it (its round start could not be sent) and, once per
 * round, to one that is but has not replied (its round start may have been
 * refused or lost; a worker still training it drops the copy). */
static void resend_round(coord_t *c) {
    if (graft_aggregator_collective(c->agg)) return;
    for (int p = 0; p < MAX_PEERS; p++) {
        worker_t *w = &c->w[p];
        if (w->state != W_ACTIVE || w->replied) continue;
        if (w->in_round) {
            if (w->resent_round == c->round) continue;
            w->resent_round = c->round;
        }
        LOG_INFO("round %d: sent the round again to worker %d '%s' (%s by the deadline)",
                 c->round, p, w->name, w->in_round ? "no reply" : "not sent");
        send_round_start(c, p);
    }
}

/* 1: the round can close; 0: not yet; < 0: an MPI reduction failed, or the
 * round stalled past --stall_timeout_ms. */
static int round_can_close(coord_t *c) {
    int reduced = graft_aggregator_poll(c->agg);
    if (reduced < 0) {
        set_error(c, "round %d: an MPI reduction failed (a rank ended?): %s", c->round,
                  graft_strerror(reduced));
        LOG_ERROR("%s", c->error);
        return reduced;
    }
    if (!reduced) {
        if (graft_now() >= c->deadline) {
            LOG_WARN("round %d: deadline passed while the MPI reductions wait for a rank; "
                     "waiting on (ranks do not drop out of a reduction)", c->round);
            c->deadline = graft_now() + c->cfg->round_timeout_ms / 1000.0;
        }
        return 0;
    }
    int pending = pending_replies(c);
    int enough = c->n_replies >= c->cfg->min_replies;
    if (enough && (pending == 0 || graft_now() >= c->deadline)) return 1;
    if (graft_now() >= c->deadline) {
        int rc = round_stalled(c);
        if (rc) return rc;
        resend_round(c);
    }
    return 0;
}

/* ---- aggregation, checkpoints ---------------------------------------------- */

/* Where the round's time went. round_ms runs from the round start to the
 * end of aggregation; along its critical path lie the last accepted reply's
 * local training (its worker's train_seconds), the aggregation, and
 * everything else: comm_ms = round_ms - that training - agg_ms (encoding
 * and sending the round start, transfer both ways, the worker's import and
 * encoding, decoding and validation here, the MPI reductions, and any wait
 * for a deadline). agg_ms is all of the round's aggregation work: each
 * reply's accumulation as it arrived (streaming) plus the final step. The
 * earlier replies' accumulation overlaps the last worker's training, so
 * comm_ms is net of it; with MPI reductions the sums happen inside the
 * reductions and agg_ms is the final step alone. */
typedef struct {
    double round_ms, agg_ms, comm_ms, train_ms_max, train_ms_mean, train_ms_last;
} round_times_t;

static round_times_t round_times(const coord_t *c, double agg_ms) {
    round_times_t rt = {.round_ms = (graft_now() - c->round_t0) * 1000.0, .agg_ms = agg_ms};
    double last = -1.0;
    int n = c->n_replies;
    for (int i = 0; i < n; i++) {
        const contribution_t *r = &c->replies[i];
        double ms = r->reply.train_seconds * 1000.0;
        rt.train_ms_mean += ms;
        if (ms > rt.train_ms_max) rt.train_ms_max = ms;
        if (r->at > last) last = r->at, rt.train_ms_last = ms;
    }
    if (n) rt.train_ms_mean /= n;
    rt.comm_ms = rt.round_ms - rt.train_ms_last - agg_ms;
    return rt;
}

/* names[0..n) as a JSON array. */
json_t *coord_names_json(const char **names, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_string(names[i]));
    return a;
}

/* The names of the workers that replied this round and train task t (any
 * task for t < 0), sorted, as a JSON array. */
static json_t *replied_names(const coord_t *c, int t) {
    const char **names = graft_xcalloc(MAX_PEERS, sizeof *names);
    json_t *a = coord_names_json(names, worker_names(c, t, 1, names));
    free(names);
    return a;
}

/* {task: [workers that replied with it]}: the round's aggregation cohorts. */
static json_t *cohorts_json(const coord_t *c) {
    json_t *o = json_object();
    for (int t = 0; t < graft_trainer_n_tasks(c->tr); t++)
        json_object_set_new(o, graft_task_name(graft_trainer_task(c->tr, t)), replied_names(c, t));
    return o;
}

/* The new global modules from the round's aggregation, and round_end. */
static void aggregate(coord_t *c) {
    double t0 = graft_now();
    json_t *report = graft_aggregator_finish(c->agg, c->round);
    round_times_t rt = round_times(c, c->agg_ms + (graft_now() - t0) * 1000.0);
    json_t *cohorts = cohorts_json(c), *parts = replied_names(c, -1);
    /* The round's loss: the mean weighted by the workers' train examples,
     * in name order. */
    int n = c->n_replies;
    graft_agg_input_t *in = graft_xcalloc((size_t)n + 1, sizeof *in);
    float *losses = graft_xcalloc((size_t)n + 1, sizeof *losses);
    for (int i = 0; i < n; i++) {
        const contribution_t *r = &c->replies[i];
        losses[i] = (float)r->reply.train_loss;
        in[i] = (graft_agg_input_t){.key = r->name, .weight = (double)r->samples,
                                    .values = &losses[i]};
    }
    for (int p = 0; p < MAX_PEERS; p++) c->w[p].replied = c->w[p].in_round = 0;
    float loss = NAN;
    graft_aggregate_fedavg(in, n, &loss, 1);
    double peak = (double)graft_peak_rss_bytes() / (1 << 20);
    LOG_INFO("round %d/%d: %d replies | loss %.4f | in %.1f KiB out %.1f KiB | round %.0f ms = "
             "train %.0f (max %.0f, mean %.0f) + comm %.1f + aggregate %.1f | peak RSS %.1f MiB",
             c->round, c->cfg->rounds, n, loss, c->bytes_in / 1024.0, c->bytes_out / 1024.0,
             rt.round_ms, rt.train_ms_last, rt.train_ms_max, rt.train_ms_mean, rt.comm_ms,
             rt.agg_ms, peak);
    json_t *ev = json_pack("{s:i, s:o, s:o, s:i, s:f, s:I, s:I}", "round", c->round,
                           "participants", parts, "cohorts", cohorts, "replies", n, "train_loss",
                           (double)loss, "bytes_in", (json_int_t)c->bytes_in, "bytes_out",
                           (json_int_t)c->bytes_out);
    json_object_update_new(ev, json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "round_ms",
                                         rt.round_ms, "train_ms_max", rt.train_ms_max,
                                         "train_ms_mean", rt.train_ms_mean, "train_ms_last",
                                         rt.train_ms_last, "comm_ms", rt.comm_ms, "agg_ms",
                                         rt.agg_ms, "peak_rss_mib", peak));
    json_object_update(ev, report);
    json_decref(report);
    graft_events_emit(c->ev, "round_end", ev);
    free(losses);
    free(in);
}


static int checkpoint(coord_t *c) {
    /* the trainer's step counts finished rounds here */
    graft_trainer_set_steps_done(c->tr, c->round);
    errno = 0;
    /* Only the server optimizer's moments that the strategy uses: fedavg's
     * would be zeros, twice the size of the modules. */
    int moments = c->agg_cfg.combiner == GRAFT_AGG_FEDADAM   ? 2
                  : c->agg_cfg.combiner == GRAFT_AGG_FEDAVGM ? 1
                                                             : 0;
    int rc = graft_trainer_save_moments(c->tr, c->ckpt_path, moments);
    if (rc) {
        /* The system's reason (ENOSPC, EACCES) says more than graft's code. */
        int e = errno;
        set_error(c, "checkpoint to %s: %s", c->ckpt_path, e ? strerror(e) : graft_strerror(rc));
        LOG_ERROR("round %d: %s", c->round, c->error);
        return rc;
    }
    LOG_INFO("round %d: checkpoint %s", c->round, c->ckpt_path);
    graft_events_emit(c->ev, "checkpoint",
                      json_pack("{s:i, s:s}", "round", c->round, "path", c->ckpt_path));
    return GRAFT_OK;
}

/* ---- the state machine ---------------------------------------------------- */

/* Moves through every transition that is ready; returns an error only for
 * a failure that ends the run (a checkpoint that cannot be written, an MPI
 * reduction that fails). */
static int advance(coord_t *c) {
    for (;;) {
        round_state_t before = c->state;
        const graft_run_config_t *cfg = c->cfg;
        switch (c->state) {
        case S_WAIT_WORKERS: {
            int need = c->round == c->first_round ? c->o.expected_workers : cfg->min_replies;
            if (count_active(c) >= need) {
                int rc = start_round(c);
                if (rc) return rc;
            }
            break;
        }
        case S_ROUND_OPEN: {
            int ready = round_can_close(c);
            if (ready < 0) return ready;
            if (ready) set_state(c, S_AGGREGATE);
            break;
        }
        case S_AGGREGATE:
            aggregate(c);
            set_state(c, S_EVAL);
            break;
        case S_EVAL: {
            /* The workers first: they evaluate while the coordinator does.
             * Their deadline runs from the end of the coordinator's own
             * evaluation, during which no answer is read. */
            int split = coord_split_due(c), asked = 0;
            if (split >= 0 && (c->eval_on & EVAL_ON_WORKERS))
                asked = coord_request_eval(c, split);
            if (split >= 0 && (c->eval_on & EVAL_ON_COORDINATOR)) coord_evaluate(c, split);
            if (split >= 0 && (c->eval_on & EVAL_ON_WORKERS) && !asked)
                coord_finish_worker_eval(c);
            c->eval_deadline = graft_now() + cfg->round_timeout_ms / 1000.0;
            set_state(c, asked ? S_EVAL_WAIT : S_CHECKPOINT);
            break;
        }
        case S_EVAL_WAIT:
            if (!coord_eval_pending(c) || graft_now() >= c->eval_deadline) {
                coord_finish_worker_eval(c);
                set_state(c, S_CHECKPOINT);
            }
            break;
        case S_CHECKPOINT:
            if (c->round % cfg->checkpoint_every_rounds == 0 || c->round == cfg->rounds) {
                int rc = checkpoint(c);
                if (rc) return rc;
            }
            if (c->round == cfg->rounds) {
                set_state(c, S_DONE);
            } else {
                c->round++;
                set_state(c, S_WAIT_WORKERS);
            }
            break;
        case S_DONE:
            return GRAFT_OK;
        }
        if (c->state == before) return GRAFT_OK;
    }
}

static int next_timeout_ms(const coord_t *c) {
    double ms = c->cfg->heartbeat_ms;
    /* Reductions complete without a message: once every worker has sent its
     * update (and so joined them), poll them often. */
    if (c->state == S_ROUND_OPEN && graft_aggregator_collective(c->agg) && !pending_replies(c) &&
        ms > 2)
        ms = 2;
    if (c->state == S_ROUND_OPEN || c->state == S_EVAL_WAIT) {
        double due = c->state == S_ROUND_OPEN ? c->deadline : c->eval_deadline;
        double left = (due - graft_now()) * 1000.0;
        if (left < ms) ms = left;
    }
    return ms < 1 ? 1 : (int)ms;
}

static void shutdown_workers(coord_t *c, const char *reason, int complete) {
    graft_msg_t m = {.type = GRAFT_MSG_SHUTDOWN};
    m.shutdown.reason = (char *)reason;
    m.shutdown.run_complete = complete;
    for (int p = 0; p < MAX_PEERS; p++)
        if (c->w[p].state == W_ACTIVE) coord_send_msg(c, p, &m);
}

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
    }
}

static int loop(coord_t *c) {
    int rc = GRAFT_OK;
    while (!rc && c->state != S_DONE && !graft_coordinator_stop) {
        int peer = -1;
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = graft_transport_recv(c->o.tp, &peer, &buf, &len, next_timeout_ms(c));
        if (r == GRAFT_OK) {
            handle(c, peer, buf, len);
            free(buf);
        } else if (r != GRAFT_ETIMEOUT) {
            LOG_WARN("coordinator: receive failed: %s", graft_strerror(r));
        }
        check_lost(c);
        check_handshakes(c, 0);
        /* While the loop works (aggregation, evaluation, a checkpoint) it
         * reads no heartbeat: that deaf time is not the workers' silence. */
        double t0 = graft_now();
        rc = advance(c);
        if (rc) set_error(c, "round %d: %s", c->round, graft_strerror(rc));
        double deaf = graft_now() - t0;
        for (int p = 0; p < MAX_PEERS; p++)
            if (c->w[p].state == W_ACTIVE) c->w[p].last_seen += deaf;
    }
    if (!rc && graft_coordinator_stop) {
        char why[256] = "";
        if (c->o.stop_reason) c->o.stop_reason(c->o.stop_ctx, why, sizeof why);
        if (!*why)
            snprintf(why, sizeof why, "interrupted (%s)", signal_name(graft_coordinator_stop));
        set_error(c, "%s", why);
        LOG_WARN("coordinator: stopping in round %d: %s", c->round, why);
        rc = GRAFT_ESTATE;
    }
    return rc;
}

/* ---- setup ----------------------------------------------------------------- */

/* --eval_on as EVAL_ON_* bits; 0: unknown. */
static int eval_where(const char *s) {
    if (!strcmp(s, "coordinator")) return EVAL_ON_COORDINATOR;
    if (!strcmp(s, "workers")) return EVAL_ON_WORKERS;
    if (!strcmp(s, "both")) return EVAL_ON_COORDINATOR | EVAL_ON_WORKERS;
    return 0;
}

/* The aggregator of the strategy (agg_cfg), with MPI reductions when the
 * transport has them, the option allows, and the strategy streams. */
static void setup_aggregator(coord_t *c) {
    graft_transport_t *tp = NULL;
    if (c->cfg->mpi_collectives && graft_transport_has_collectives(c->o.tp)) {
        if (graft_agg_holds_replies(&c->agg_cfg))
            LOG_INFO("coordinator: %s needs every reply: modules travel in update messages, "
                     "not MPI reductions", c->cfg->aggregate);
        else
            tp = c->o.tp;
    }
    c->agg = graft_aggregator_new(&c->agg_cfg, graft_trainer_peft(c->tr), tp);
}

/* The run's message limit: a round start or an update of a worker that
 * holds every task carries the shared scope, every task's and the step
 * rates. Over the hard limit no message could carry them: refused. */
static int setup_message_limit(coord_t *c) {
    size_t numel[GRAFT_MAX_TASKS + 1], tasks = 0;
    for (int k = 0; k <= graft_trainer_n_tasks(c->tr); k++) numel[k] = c->scopes[k]->numel;
    for (int k = 1; k <= graft_trainer_n_tasks(c->tr); k++) tasks += numel[k];
    size_t steps = (size_t)c->cfg->local_steps;
    if (!graft_wire_max_bytes(numel, (size_t)graft_trainer_n_tasks(c->tr) + 1, steps,
                              &c->max_bytes)) {
        LOG_INFO("coordinator: message limit %zu bytes (%.1f MiB), from the run's modules",
                 c->max_bytes, (double)c->max_bytes / (1 << 20));
        return GRAFT_OK;
    }
    LOG_ERROR("coordinator: method %s makes round messages of up to %.2f GiB (the shared scope: "
              "%zu parameters, the task scopes: %zu, %zu step rates), over the %.0f GiB that one "
              "message may carry (protobuf's limit): train fewer parameters (e.g. --method lora "
              "instead of full), fewer tasks or fewer --local_steps", c->cfg->method,
              (double)c->max_bytes / (1 << 30), numel[0], tasks, steps,
              (double)GRAFT_WIRE_HARD_MAX_BYTES / (1 << 30));
    return GRAFT_EINVAL;
}

/* The transport, when the caller opens it once the message limit is known. */
static int open_transport(coord_t *c) {
    if (!c->o.open_transport) return GRAFT_OK;
    return c->o.open_transport(c->o.open_ctx, c->max_bytes, &c->o.tp);
}

/* The run's trainer: the global modules, and the coordinator's copy of the
 * tasks, which needs no train rows (it trains nothing): their label sets
 * and, for --eval_on coordinator, the dev and test rows. */
static int new_trainer(coord_t *c) {
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    int n = graft_run_load_tasks(c->cfg->tasks, tasks, GRAFT_MAX_TASKS, 1);
    for (int t = 0; t < n && c->cfg->logit_adjust > 0; t++)
        if (graft_task_kind(tasks[t]) == GRAFT_TASK_CLASSIFY &&
            graft_task_count(tasks[t], GRAFT_SPLIT_TRAIN) == 0)
            LOG_WARN("task %s: no train rows here, so --logit_adjust takes the run's label "
                     "shares as uniform (give the coordinator the train rows for the real "
                     "shares)", graft_task_name(tasks[t]));
    return n < 0 ? n : graft_trainer_new_with_tasks(c->cfg, tasks, n, &c->tr);
}

static int setup(coord_t *c) {
    int rc = new_trainer(c);
    if (!rc) rc = graft_agg_config_parse(c->cfg, &c->agg_cfg);
    if (rc) return rc;
    c->nsettings = graft_run_shared_settings(c->cfg, c->settings);
    if (c->cfg->personalize)
        graft_trainer_set_note(c->tr, "personal.tasks",
                               "not the trained ones: each worker keeps its own");
    graft_trainer_set_schedule(c->tr, c->cfg->rounds * c->cfg->local_steps); /* check_steps */
    c->scopes[0] = graft_trainer_shared_scope(c->tr);
    for (int t = 0; t < graft_trainer_n_tasks(c->tr); t++)
        c->scopes[1 + t] = graft_trainer_task_scope(c->tr, t);
    for (int k = 0; k <= graft_trainer_n_tasks(c->tr); k++)
        c->schema_entries[k] = (graft_wire_schema_entry_t){
            .name = c->scopes[k]->name, .ndim = 1, .shape = {(int64_t)c->scopes[k]->numel}};
    c->schema = (graft_wire_schema_t){c->schema_entries, (size_t)graft_trainer_n_tasks(c->tr) + 1};
    if ((rc = setup_message_limit(c))) return rc;
    snprintf(c->ckpt_path, sizeof c->ckpt_path, "%s/modules.safetensors", c->cfg->out);
    if (*c->cfg->resume) {
        if ((rc = graft_trainer_resume(c->tr, c->cfg->resume))) return rc;
        LOG_INFO("coordinator: resumed from %s after round %d", c->cfg->resume,
                 graft_trainer_steps_done(c->tr));
    }
    coord_note_lineage(c);
    c->first_round = c->round = graft_trainer_steps_done(c->tr) + 1;
    if (c->round > c->cfg->rounds) {
        LOG_ERROR("coordinator: --resume %s already holds %d rounds, and --rounds is %d: nothing "
                  "to do (raise --rounds)", c->cfg->resume, c->round - 1, c->cfg->rounds);
        return GRAFT_EINVAL;
    }
    if ((rc = open_transport(c))) return rc;
    setup_aggregator(c);
    c->eval_on = eval_where(graft_run_eval_on(c->cfg));
    c->answers = graft_eval_answers_new();
    char path[2 * GRAFT_OPT_STR];
    snprintf(path, sizeof path, "%s/events.jsonl", c->cfg->out);
    rc = graft_events_open(path, &c->ev);
    if (!rc) c->handshakes = graft_handshake_log_new(c->ev, HANDSHAKE_LOG_WINDOW_S);
    return rc;
}

/* The two-stage channels method selects its channels after stage 1's
 * rounds: a run must reach stage 2 to train them. */
static int check_stages(const graft_run_config_t *cfg) {
    int methods, stage1 = graft_stage1_rounds(cfg);
    if (graft_peft_parse_methods(cfg->method, &methods)) return GRAFT_EINVAL;
    if ((methods & GRAFT_M_CHANNELS) && stage1 >= cfg->rounds) {
        LOG_ERROR("--stage1_steps %d with --local_steps %d makes %d rounds of stage 1, which "
                  "leaves no stage 2 in --rounds %d: the channels would be scored but never "
                  "selected or trained (give fewer --stage1_steps or more --rounds)",
                  cfg->stage1_steps, cfg->local_steps, stage1, cfg->rounds);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* Global steps (rounds x local_steps) are ints: the schedule, the task mix
 * and the sampler index by them. */
static int check_steps(const graft_run_config_t *cfg) {
    int64_t total = (int64_t)cfg->rounds * cfg->local_steps;
    if (total <= INT_MAX) return GRAFT_OK;
    LOG_ERROR("--rounds %d x --local_steps %d is %lld steps, more than the %d a run can count; "
              "give fewer --rounds or --local_steps", cfg->rounds, cfg->local_steps,
              (long long)total, INT_MAX);
    return GRAFT_EINVAL;
}

/* What --personalize cannot go with: an evaluation on the coordinator,
 * which does not hold the task modules; the label-shift correction, which
 * fits a head to the run's labels, not the worker's own; the two-stage
 * channels method, whose channels the coordinator chooses for everyone. */
static int check_personal(const graft_run_config_t *cfg) {
    int methods;
    if (!cfg->personalize && cfg->personal_from != 1) {
        LOG_ERROR("coordinator: --personal_from %d goes with --personalize, which this run does "
                  "not set", cfg->personal_from);
        return GRAFT_EINVAL;
    }
    if (!cfg->personalize || graft_peft_parse_methods(cfg->method, &methods)) return GRAFT_OK;
    const char *why = NULL;
    if (eval_where(graft_run_eval_on(cfg)) & EVAL_ON_COORDINATOR)
        why = "--eval_on coordinator or both: the coordinator does not hold the workers' task "
              "modules (use --eval_on workers, the default under --personalize)";
    else if (cfg->logit_adjust > 0)
        why = "--logit_adjust: it fits every worker's head to the run's label shares, and a "
              "personal head serves its worker's own";
    else if (methods & GRAFT_M_CHANNELS)
        why = "--method channels: its channels are chosen once for every worker";
    else if (cfg->personal_from > cfg->rounds)
        why = "--personal_from after the last round (--rounds): no round would be personal";
    if (!why) return GRAFT_OK;
    LOG_ERROR("coordinator: --personalize does not go with %s", why);
    return GRAFT_EINVAL;
}

int graft_coordinator_check(const graft_run_config_t *cfg, int workers) {
    if (graft_trainer_check(cfg) || check_steps(cfg) || check_stages(cfg)) return GRAFT_EINVAL;
    if (!eval_where(graft_run_eval_on(cfg))) {
        LOG_ERROR("coordinator: unknown --eval_on '%s' (coordinator, workers or both)",
                  cfg->eval_on);
        return GRAFT_EINVAL;
    }
    if (check_personal(cfg)) return GRAFT_EINVAL;
    if (cfg->min_replies <= workers) return GRAFT_OK;
    LOG_ERROR("coordinator: --min_replies %d is more than the %d worker%s of the run: a round "
              "could never close; min_replies must be <= workers", cfg->min_replies, workers,
              workers == 1 ? "" : "s");
    return GRAFT_EINVAL;
}

int graft_coordinator_run(const graft_coordinator_opts_t *o) {
    int rc = graft_coordinator_check(&o->cfg, o->expected_workers);
    if (rc) return rc;
    coord_t c = {.o = *o, .cfg = &o->cfg};
    c.w = graft_xcalloc(MAX_PEERS, sizeof *c.w);
    c.replies = graft_xcalloc(MAX_PEERS, sizeof *c.replies);
    c.run_id = graft_run_id(&o->cfg);
    c.run_t0 = graft_now();
    rc = setup(&c);
    if (!rc) {
        char digest[32], strategy[128], id[17];
        snprintf(digest, sizeof digest, "%016llx",
                 graft_options_digest(graft_run_options, &o->cfg));
        graft_agg_describe(&c.agg_cfg, strategy, sizeof strategy);
        int reduce = graft_aggregator_collective(c.agg);
        json_t *start = json_pack("{s:s, s:s, s:i, s:s, s:i, s:i, s:i, s:o, s:s, s:b, s:b}",
                                  "mode", o->mode ? o->mode : "?", "config_digest", digest,
                                  "seed", o->cfg.seed, "method", o->cfg.method, "round",
                                  c.round, "rounds", o->cfg.rounds, "workers",
                                  o->expected_workers, "params", graft_trainer_params_json(c.tr),
                                  "aggregate", strategy, "mpi_reductions", reduce,
                                  "personalize", o->cfg.personalize);
        json_object_set_new(start, "run_id", json_string(graft_run_id_text(c.run_id, id)));
        json_t *earlier = json_array();
        for (size_t i = 0; i < c.nearlier_runs; i++)
            json_array_append_new(earlier, json_string(graft_run_id_text(c.earlier_runs[i], id)));
        json_object_set_new(start, "earlier_runs", earlier);
        graft_events_emit(c.ev, "run_start", start);
        LOG_INFO("coordinator: %d tasks, method %s, aggregate %s%s, rounds %d..%d, waiting for "
                 "%d workers", graft_trainer_n_tasks(c.tr), o->cfg.method, strategy,
                 reduce ? " (MPI reductions)" : "", c.round, o->cfg.rounds, o->expected_workers);
        rc = loop(&c);
        check_handshakes(&c, 1);
        shutdown_workers(&c, rc ? "coordinator stopped" : "run complete", rc == 0);
        json_t *end = json_pack("{s:i, s:f, s:b, s:f}", "round", c.round, "seconds",
                                graft_now() - c.run_t0, "ok", rc == 0, "peak_rss_mib",
                                (double)graft_peak_rss_bytes() / (1 << 20));
        if (rc) {
            set_error(&c, "%s", graft_strerror(rc));
            json_object_set_new(end, "error", json_string(c.error));
            LOG_ERROR("coordinator: the run failed in round %d: %s", c.round, c.error);
        }
        graft_events_emit(c.ev, "run_end", end);
    }
    free(c.w);
    free(c.bound);
    free(c.replies);
    graft_aggregator_destroy(&c.agg);
    graft_eval_answers_destroy(&c.answers);
    graft_handshake_log_destroy(&c.handshakes);
    graft_events_close(&c.ev);
    graft_trainer_destroy(&c.tr);
    return rc;
}
