/* worker.c — the worker loop and its side of the protocol (see worker.h). */
#include "worker.h"

#include <string.h>

#include "contribute.h"
#include "trainer.h"
#include "wire.h"

typedef struct {
    graft_worker_opts_t o;
    graft_trainer_t *tr;
    char name[GRAFT_WIRE_MAX_NAME + 1];
    uint64_t run_id; /* 0 until the coordinator assigns us */
    uint32_t id;
    int tasks[GRAFT_MAX_TASKS]; /* trainer task indices assigned to us */
    int n_tasks;
    double last_beat;
    graft_wire_schema_entry_t schema_entries[GRAFT_MAX_TASKS + 1];
    graft_wire_schema_t schema;
    /* The values each scope was sent this round (0: shared, 1 + t: task t):
     * the FedProx anchor and the base of an MPI contribution. */
    float *global[GRAFT_MAX_TASKS + 1];
    graft_contributor_t *contrib; /* MPI reductions, made at first use */
    volatile sig_atomic_t *stop;
    int failed;                   /* an MPI reduction failed: the worker ends */
} worker_t;

/* ---- shards ---------------------------------------------------------------- */

/* Task i's train examples k with k % n == shard (all dev and test ones). */
static int take_shard(graft_task_t **t, int shard, int n) {
    if (n <= 1) return GRAFT_OK;
    size_t total = graft_task_count(*t, GRAFT_SPLIT_TRAIN), k = 0;
    size_t *idx = graft_xmalloc((total / (size_t)n + 1) * sizeof *idx);
    for (size_t i = (size_t)shard; i < total; i += (size_t)n) idx[k++] = i;
    graft_task_t *sub = k ? graft_task_subset(*t, idx, k) : NULL;
    free(idx);
    if (!sub) {
        LOG_ERROR("worker: task '%s' has no train example in shard %d/%d", graft_task_name(*t),
                  shard, n);
        return GRAFT_EINVAL;
    }
    graft_task_destroy(t);
    *t = sub;
    return GRAFT_OK;
}

static int load_shards(worker_t *w) {
    const graft_run_config_t *cfg = &w->o.cfg;
    graft_task_spec_t specs[GRAFT_MAX_TASKS];
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    int n = graft_run_task_specs(cfg, specs, GRAFT_MAX_TASKS), rc = GRAFT_OK, i;
    if (n < 0) return n;
    for (i = 0; i < n && !rc; i++) {
        graft_task_kind_t kind;
        rc = graft_task_kind_parse(specs[i].kind, &kind);
        if (rc) LOG_ERROR("tasks: '%s' has unknown kind '%s'", specs[i].name, specs[i].kind);
        if (!rc) rc = graft_task_load(specs[i].name, kind, specs[i].path, &tasks[i]);
        if (!rc && (rc = take_shard(&tasks[i], w->o.shard_index, w->o.shard_count)))
            graft_task_destroy(&tasks[i]);
    }
    if (rc) {
        for (int j = 0; j < i - 1; j++) graft_task_destroy(&tasks[j]);
        return rc;
    }
    return graft_trainer_new_with_tasks(cfg, tasks, n, &w->tr);
}

/* ---- sending --------------------------------------------------------------- */

static int send_msg(worker_t *w, graft_msg_t *m) {
    m->run_id = w->run_id;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = graft_wire_encode(m, GRAFT_DTYPE_F32, &buf, &len);
    if (!rc) rc = graft_transport_send(w->o.tp, 0, buf, len);
    if (rc)
        LOG_WARN("worker %s: cannot send %s: %s", w->name, graft_msg_type_name(m->type),
                 graft_strerror(rc));
    free(buf);
    return rc;
}

static int send_hello(worker_t *w) {
    graft_wire_shard_t shards[GRAFT_MAX_TASKS];
    for (int t = 0; t < w->tr->n_tasks; t++) {
        const graft_task_t *task = w->tr->tasks[t];
        shards[t] = (graft_wire_shard_t){
            .task = (char *)graft_task_name(task),
            .kind = graft_task_kind(task) == GRAFT_TASK_CLASSIFY ? GRAFT_KIND_CLASSIFICATION
                                                                 : GRAFT_KIND_GENERATION,
            .train_examples = graft_task_count(task, GRAFT_SPLIT_TRAIN),
            .test_examples = graft_task_count(task, GRAFT_SPLIT_TEST)};
    }
    graft_msg_t m = {.type = GRAFT_MSG_HELLO};
    m.hello = (graft_wire_hello_t){.version = GRAFT_VERSION, .name = w->name, .shards = shards,
                                   .nshards = (size_t)w->tr->n_tasks};
    uint64_t run = w->run_id;
    w->run_id = 0; /* a Hello always says "new here" */
    int rc = send_msg(w, &m);
    w->run_id = run;
    return rc;
}

static void heartbeat(worker_t *w) {
    double now = graft_now();
    if (!w->id || now - w->last_beat < w->o.cfg.heartbeat_ms / 1000.0) return;
    w->last_beat = now;
    graft_msg_t m = {.type = GRAFT_MSG_HEARTBEAT};
    m.heartbeat.worker_id = w->id;
    m.heartbeat.unix_ms = (uint64_t)(now * 1000.0);
    send_msg(w, &m);
}

/* ---- handlers -------------------------------------------------------------- */

static graft_scope_t *scope_named(worker_t *w, const char *name) {
    graft_peft_t *p = w->tr->peft;
    if (!strcmp(name, p->shared->name)) return p->shared;
    for (int t = 0; t < p->n_tasks; t++)
        if (!strcmp(name, p->tasks[t].scope->name)) return p->tasks[t].scope;
    return NULL;
}

static void on_assign(worker_t *w, const graft_msg_t *m) {
    w->run_id = m->run_id;
    w->id = m->assign.worker_id;
    w->n_tasks = 0;
    for (size_t i = 0; i < m->assign.ntasks && w->n_tasks < GRAFT_MAX_TASKS; i++) {
        int t = graft_peft_find_task(w->tr->peft, m->assign.tasks[i]);
        if (t >= 0) w->tasks[w->n_tasks++] = t;
        else LOG_WARN("worker %s: assigned unknown task '%s'; ignored", w->name, m->assign.tasks[i]);
    }
    LOG_INFO("worker %s: registered as worker %u with %d tasks", w->name, w->id, w->n_tasks);
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Scope slot (0: shared, 1 + t: trainer task t) of a scope of ours. */
static int scope_slot(const worker_t *w, const graft_scope_t *s) {
    graft_peft_t *p = w->tr->peft;
    for (int t = 0; t < p->n_tasks; t++)
        if (s == p->tasks[t].scope) return 1 + t;
    return 0;
}

/* Imports the round's modules, keeps a copy of what was sent, and sets
 * the round's FedProx anchor and LoRA A freezing. */
static void import_round(worker_t *w, const graft_wire_round_start_t *rs, graft_scope_t **sent,
                         size_t n) {
    graft_peft_t *p = w->tr->peft;
    p->shared->prox_ref = NULL;
    for (int t = 0; t < p->n_tasks; t++) p->tasks[t].scope->prox_ref = NULL;
    for (size_t i = 0; i < n; i++) {
        int k = scope_slot(w, sent[i]);
        if (!w->global[k]) w->global[k] = graft_xmalloc((sent[i]->numel + 1) * sizeof(float));
        memcpy(w->global[k], rs->tensors[i].data, sent[i]->numel * sizeof(float));
        graft_scope_import(sent[i], w->global[k]);
        graft_scope_reset_state(sent[i]);
        sent[i]->prox_ref = w->global[k];
    }
    w->tr->prox_mu = rs->hyper.fedprox_mu;
    graft_peft_freeze_lora_a(p, rs->hyper.freeze_lora_a);
}

static uint64_t task_examples(const worker_t *w, int t) {
    return graft_task_count(w->tr->tasks[t], GRAFT_SPLIT_TRAIN);
}

static void tick(void *arg) {
    heartbeat(arg);
}

/* MPI reductions: every scope this worker is assigned joins its reduction;
 * one that was not trained (trained == 0) contributes nothing but still
 * joins, so that no rank waits forever. */
static void contribute(worker_t *w, const graft_wire_round_start_t *rs, int trained) {
    graft_peft_t *p = w->tr->peft;
    if (!w->contrib) w->contrib = graft_contributor_new(w->o.tp, p);
    graft_contribution_t parts[GRAFT_MAX_TASKS + 1];
    int assigned[GRAFT_MAX_TASKS] = {0}, n = 0;
    uint64_t samples = 0;
    for (int i = 0; i < w->n_tasks; i++) samples += task_examples(w, w->tasks[i]);
    if (p->shared->numel)
        parts[n++] = (graft_contribution_t){.task = -1, .global = trained ? w->global[0] : NULL,
                                            .trained = p->shared->params, .weight = samples};
    for (int i = 0; i < w->n_tasks; i++) {
        int t = w->tasks[i];
        assigned[t] = 1;
        if (!p->tasks[t].scope->numel) continue;
        parts[n++] = (graft_contribution_t){.task = t, .global = trained ? w->global[1 + t] : NULL,
                                            .trained = p->tasks[t].scope->params,
                                            .weight = task_examples(w, t)};
    }
    int rc = graft_contributor_run(w->contrib, &rs->reduce, rs->hyper.freeze_lora_a, assigned,
                                   parts, n, tick, w, w->stop);
    if (rc) {
        LOG_ERROR("worker %s: round %llu: the MPI reduction failed: %s", w->name,
                  (unsigned long long)rs->round, graft_strerror(rc));
        w->failed = 1;
    }
}

static void on_round_start(worker_t *w, const graft_msg_t *m) {
    const graft_wire_round_start_t *rs = &m->round_start;
    graft_scope_t *sent[GRAFT_MAX_TASKS + 1];
    size_t n = rs->ntensors;
    const char *bad = NULL;
    if (n > GRAFT_MAX_TASKS + 1) {
        LOG_WARN("worker %s: dropping round_start: %zu tensors", w->name, n);
        bad = "too many tensors";
    }
    for (size_t i = 0; i < n && !bad; i++) {
        sent[i] = scope_named(w, rs->tensors[i].name);
        if (!sent[i] || sent[i]->numel != rs->tensors[i].numel || rs->tensors[i].sparse) {
            LOG_WARN("worker %s: dropping round_start %llu: tensor '%s' is not a scope of mine",
                     w->name, (unsigned long long)rs->round, rs->tensors[i].name);
            bad = "a tensor that is not a scope of this worker";
        }
    }
    if (bad) {
        if (rs->reduce.collective) contribute(w, rs, 0);
        return;
    }
    import_round(w, rs, sent, n);
    graft_trainer_t *tr = w->tr;
    graft_rng_seed(&tr->rng, (uint64_t)w->o.cfg.seed,
                   name_hash(w->name) ^ (rs->round * 0x9E3779B97F4A7C15ull));
    double t0 = graft_now(), loss = 0.0;
    uint32_t steps = rs->hyper.local_steps;
    for (uint32_t s = 0; s < steps; s++) {
        loss += graft_trainer_step(tr, w->tasks[s % (uint32_t)w->n_tasks], rs->hyper.learning_rate);
        heartbeat(w);
    }
    uint64_t samples = 0;
    for (int i = 0; i < w->n_tasks; i++) samples += task_examples(w, w->tasks[i]);
    graft_wire_tensor_t ts[GRAFT_MAX_TASKS + 1];
    for (size_t i = 0; i < n; i++)
        ts[i] = (graft_wire_tensor_t){.name = sent[i]->name, .ndim = 1,
                                      .shape = {(int64_t)sent[i]->numel},
                                      .data = sent[i]->params, .numel = sent[i]->numel};
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE};
    /* With reductions the modules travel through MPI, not in the Update. */
    u.update = (graft_wire_update_t){.round = rs->round, .worker_id = w->id, .tensors = ts,
                                     .ntensors = rs->reduce.collective ? 0 : n,
                                     .sample_count = samples,
                                     .train_loss = steps ? loss / steps : 0.0,
                                     .train_tokens = (uint64_t)steps * tr->B * tr->T,
                                     .train_seconds = graft_now() - t0};
    LOG_INFO("worker %s: round %llu: %u steps, loss %.4f, %.2fs", w->name,
             (unsigned long long)rs->round, steps, u.update.train_loss, u.update.train_seconds);
    send_msg(w, &u);
    if (rs->reduce.collective) contribute(w, rs, 1);
}

/* Returns 1 when the worker should stop. */
static int handle(worker_t *w, const uint8_t *buf, size_t len) {
    graft_wire_opts_t opts = {.run_id = w->run_id, .schema = &w->schema};
    graft_msg_t m;
    char why[256];
    int rc = graft_wire_decode(buf, len, &opts, &m, why, sizeof why);
    if (rc) {
        LOG_WARN("worker %s: dropping a message from the coordinator: %s", w->name, why);
        return 0;
    }
    int stop = 0;
    switch (m.type) {
    case GRAFT_MSG_ASSIGN: on_assign(w, &m); break;
    case GRAFT_MSG_ROUND_START:
        if (w->id && w->n_tasks) on_round_start(w, &m);
        else LOG_WARN("worker %s: round_start before assignment; dropped", w->name);
        break;
    case GRAFT_MSG_SHUTDOWN:
        LOG_INFO("worker %s: shutdown: %s", w->name, m.shutdown.reason);
        stop = 1;
        break;
    case GRAFT_MSG_ERROR:
        LOG_WARN("worker %s: coordinator error %d: %s", w->name, m.error.code, m.error.message);
        if (m.error.code == GRAFT_ESTATE) {
            w->id = 0;
            send_hello(w);
        }
        break;
    default:
        LOG_WARN("worker %s: dropping unexpected %s", w->name, graft_msg_type_name(m.type));
    }
    graft_msg_free(&m);
    return stop;
}

int graft_worker_run(const graft_worker_opts_t *o, volatile sig_atomic_t *stop) {
    worker_t w = {.o = *o, .stop = stop};
    if (o->name && *o->name) snprintf(w.name, sizeof w.name, "%s", o->name);
    else snprintf(w.name, sizeof w.name, "shard-%d-of-%d", o->shard_index, o->shard_count);
    int rc = load_shards(&w);
    if (rc) return rc;
    graft_peft_t *p = w.tr->peft;
    w.schema_entries[0] = (graft_wire_schema_entry_t){.name = p->shared->name, .ndim = 1,
                                                      .shape = {(int64_t)p->shared->numel}};
    for (int t = 0; t < p->n_tasks; t++)
        w.schema_entries[1 + t] = (graft_wire_schema_entry_t){
            .name = p->tasks[t].scope->name, .ndim = 1, .shape = {(int64_t)p->tasks[t].scope->numel}};
    w.schema = (graft_wire_schema_t){w.schema_entries, (size_t)p->n_tasks + 1};
    LOG_INFO("worker %s: %d tasks (shard %d/%d), saying hello", w.name, w.tr->n_tasks,
             o->shard_index, o->shard_count);
    rc = send_hello(&w);
    int done = 0;
    while (!done && !w.failed && !(stop && *stop)) {
        int peer;
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = graft_transport_recv(o->tp, &peer, &buf, &len, o->cfg.heartbeat_ms);
        if (r == GRAFT_OK) {
            if (peer == 0) done = handle(&w, buf, len);
            free(buf);
        } else if (r != GRAFT_ETIMEOUT) {
            LOG_WARN("worker %s: receive failed: %s", w.name, graft_strerror(r));
        }
        heartbeat(&w);
    }
    graft_contributor_destroy(&w.contrib);
    for (int k = 0; k <= GRAFT_MAX_TASKS; k++) free(w.global[k]);
    graft_trainer_destroy(&w.tr);
    return w.failed ? GRAFT_EIO : done ? GRAFT_OK : GRAFT_ESTATE;
}
