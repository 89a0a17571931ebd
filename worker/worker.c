/* worker.c — the worker loop and its side of the protocol (see worker.h). */
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "contribute.h"
#include "eval_wire.h"
#include "safetensors.h"
#include "trainer.h"
#include "wire.h"

/* The pulse: a thread that heartbeats while the worker trains. One training
 * step can outlast several heartbeat intervals (a base trunk, a big batch,
 * a loaded machine), and the main thread cannot beat in the middle of a
 * matrix product; without the pulse the coordinator would take a busy
 * worker for a lost one. The thread touches the transport only while
 * `training` is set, and the main thread clears it under the same mutex
 * before it uses the transport again, so the transport is never used by two
 * threads at once (ZeroMQ sockets; MPI_THREAD_SERIALIZED). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int started, training, quit;
} pulse_t;

typedef struct {
    graft_worker_opts_t o;
    /* The shards held, in --tasks order, until the assignment hands the
     * assigned ones to the trainer (held[i] NULL once handed over). */
    graft_task_t *held[GRAFT_MAX_TASKS];
    int n_held;
    graft_trainer_t *tr; /* built at the first Assign, for exactly the assigned tasks */
    char name[GRAFT_WIRE_MAX_NAME + 1];
    uint64_t run_id; /* 0 until the coordinator assigns us */
    /* The runs the coordinator's run continues (Assign.earlier_run_ids). */
    uint64_t earlier_runs[GRAFT_WIRE_MAX_EARLIER_RUNS];
    size_t nearlier_runs;
    uint32_t id;
    size_t max_bytes; /* the run's message limit from the assignment; 0: the default */
    uint64_t stream; /* the batch sampler's stream */
    /* Each trainer task's index among the run's tasks (--tasks order): its
     * MPI group. */
    int run_task[GRAFT_MAX_TASKS];
    int n_run_tasks;
    double last_beat;
    /* graft_now() of a hello not yet answered by an Assign; 0: none pending.
     * While one is pending the worker sends no other: each stale heartbeat
     * a restarted coordinator reads earns an error asking for a hello. */
    double hello_at;
    double last_heard; /* graft_now() when the coordinator was last heard (or a round ended) */
    /* The last round trained since the coordinator last assigned us: a
     * repeated round start for it (or an older round) is dropped. */
    uint64_t trained_round;
    int warned_batch; /* the run's --batch differs from ours: said once */
    /* What the hello says must match the coordinator's (computed once: it
     * digests the trunk file). */
    graft_setting_t settings[GRAFT_MAX_SHARED_SETTINGS];
    int nsettings;
    graft_wire_schema_entry_t schema_entries[GRAFT_MAX_TASKS + 1];
    graft_wire_schema_t schema;
    /* The values each scope was sent this round (0: shared, 1 + t: task t):
     * the FedProx anchor and the base of an MPI contribution. */
    float *global[GRAFT_MAX_TASKS + 1];
    /* A personalised run (Assign.personal). In its personal rounds (phase:
     * the last round start's or evaluation request's `personal`) own[t] is
     * set once trainer task t's scope took the values the coordinator sent;
     * from then on they are this worker's own, trained here and never sent
     * back or replaced. Rounds before --personal_from clear them. */
    int personal;
    int phase;
    int own[GRAFT_MAX_TASKS];
    int keep_state; /* the last round start's keep_optimizer_state */
    /* Each trainer task's label shares over the run's training data, from
     * the assignment (owned; NULL: generation, or not sent). */
    float *run_prior[GRAFT_MAX_TASKS];
    float logit_adjust; /* the tau the heads' offsets were set for */
    graft_contributor_t *contrib; /* MPI reductions, made at first use */
    volatile sig_atomic_t *stop;
    /* The worker stops because it cannot take part: GRAFT_EINVAL (refused,
     * cannot train its assignment), GRAFT_ESTATE (the assignment changed),
     * GRAFT_EIO (an MPI reduction failed), GRAFT_ETIMEOUT (no answer to a
     * hello); 0 while it can. */
    int failed;
    pulse_t pulse;
} worker_t;

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* The last path component of a folder path ("a/client-007/" -> "client-007"). */
static void folder_name(const char *dir, char *buf, size_t n) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(buf, n, "%.*s", (int)(len - start), dir + start);
}

void graft_worker_default_name(const graft_worker_opts_t *o, char *buf, size_t n) {
    if (o->data_dir) folder_name(o->data_dir, buf, n);
    else snprintf(buf, n, "shard-%d-of-%d", o->shard_index, o->shard_count);
}

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

/* Loads the worker's data for one task into *out, or leaves it NULL when a
 * client folder has no file for the task. */
static int load_task(const worker_t *w, const graft_task_spec_t *spec, graft_task_t **out) {
    graft_task_kind_t kind;
    if (graft_task_kind_parse(spec->kind, &kind)) {
        LOG_ERROR("tasks: '%s' has unknown kind '%s'", spec->name, spec->kind);
        return GRAFT_EINVAL;
    }
    if (!w->o.data_dir) {
        int rc = graft_task_load(spec->name, kind, spec->path, out);
        if (!rc && (rc = take_shard(out, w->o.shard_index, w->o.shard_count)))
            graft_task_destroy(out);
        return rc;
    }
    char path[2 * GRAFT_OPT_STR];
    if (snprintf(path, sizeof path, "%s/%s.tsv", w->o.data_dir, spec->name) >= (int)sizeof path) {
        LOG_ERROR("worker %s: --data path %s is too long", w->name, w->o.data_dir);
        return GRAFT_EINVAL;
    }
    if (access(path, F_OK) != 0 && errno == ENOENT) {
        LOG_INFO("worker %s: no %s: task '%s' not held", w->name, path, spec->name);
        return GRAFT_OK;
    }
    return graft_task_load(spec->name, kind, path, out);
}

/* Files NAME.tsv in a client folder whose NAME is not a run task are
 * probably a mistake (another run's config?): say so. */
static void warn_unused_files(const worker_t *w, const graft_task_spec_t *specs, int n) {
    DIR *d = opendir(w->o.data_dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".tsv")) continue;
        int used = 0;
        for (int i = 0; i < n && !used; i++)
            used = strlen(specs[i].name) == len - 4 && !strncmp(specs[i].name, e->d_name, len - 4);
        if (!used)
            LOG_WARN("worker %s: %s/%s is not a task of --tasks; ignored", w->name,
                     w->o.data_dir, e->d_name);
    }
    closedir(d);
}

static int load_shards(worker_t *w) {
    graft_task_spec_t specs[GRAFT_MAX_TASKS];
    int n = graft_run_task_specs(&w->o.cfg, specs, GRAFT_MAX_TASKS), rc = GRAFT_OK;
    if (n < 0) return n;
    struct stat st;
    int bad = w->o.data_dir && stat(w->o.data_dir, &st) ? errno : 0;
    if (w->o.data_dir && (bad || !S_ISDIR(st.st_mode))) {
        LOG_ERROR("worker %s: --data %s: %s (give a client folder, as graft data shard writes)",
                  w->name, w->o.data_dir, bad ? strerror(bad) : "not a folder");
        return GRAFT_EINVAL;
    }
    for (int i = 0; i < n && !rc; i++) {
        graft_task_t *t = NULL;
        rc = load_task(w, &specs[i], &t);
        if (t) w->held[w->n_held++] = t;
    }
    if (rc) return rc;
    if (w->o.data_dir) warn_unused_files(w, specs, n);
    if (w->n_held == 0) {
        LOG_ERROR("worker %s: %s holds none of the run's tasks (expected NAME.tsv for a NAME of "
                  "--tasks)", w->name, w->o.data_dir);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* The tasks this worker holds: its shards before the assignment, the
 * trainer's after. */
static int held_tasks(worker_t *w, graft_task_t ***out) {
    if (w->tr) {
        *out = graft_trainer_tasks(w->tr);
        return graft_trainer_n_tasks(w->tr);
    }
    *out = w->held;
    return w->n_held;
}

/* ---- sending --------------------------------------------------------------- */

static int send_msg(worker_t *w, graft_msg_t *m) {
    m->run_id = w->run_id;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = graft_wire_encode(m, GRAFT_DTYPE_F32, &buf, &len);
    size_t max = w->max_bytes ? w->max_bytes : graft_wire_default_max_bytes();
    if (!rc && len > max) {
        LOG_ERROR("worker %s: the %s is %zu bytes, over the run's message limit of %zu that the "
                  "coordinator enforces", w->name, graft_msg_type_name(m->type), len, max);
        rc = GRAFT_EINVAL;
    }
    if (!rc) rc = graft_transport_send(w->o.tp, 0, buf, len);
    if (rc)
        LOG_WARN("worker %s: cannot send %s: %s", w->name, graft_msg_type_name(m->type),
                 graft_strerror(rc));
    free(buf);
    return rc;
}

static int send_hello(worker_t *w) {
    graft_task_t **tasks;
    int n = held_tasks(w, &tasks);
    graft_wire_shard_t shards[GRAFT_MAX_TASKS];
    for (int t = 0; t < n; t++)
        shards[t] = (graft_wire_shard_t){
            .task = (char *)graft_task_name(tasks[t]),
            .kind = graft_task_kind(tasks[t]) == GRAFT_TASK_CLASSIFY ? GRAFT_KIND_CLASSIFICATION
                                                                     : GRAFT_KIND_GENERATION,
            .train_examples = graft_task_count(tasks[t], GRAFT_SPLIT_TRAIN)};
    graft_wire_setting_t settings[GRAFT_MAX_SHARED_SETTINGS];
    for (int i = 0; i < w->nsettings; i++)
        settings[i] = (graft_wire_setting_t){.name = (char *)w->settings[i].name,
                                             .value = w->settings[i].value};
    graft_msg_t m = {.type = GRAFT_MSG_HELLO};
    m.hello = (graft_wire_hello_t){.version = GRAFT_VERSION, .name = w->name, .shards = shards,
                                   .nshards = (size_t)n, .settings = settings,
                                   .nsettings = (size_t)w->nsettings};
    uint64_t run = w->run_id;
    w->run_id = 0; /* a Hello always says "new here" */
    /* The wait counts from here: a send to a coordinator that is not there
     * (or refuses our key) blocks up to the socket's send timeout. */
    w->hello_at = graft_now();
    int rc = send_msg(w, &m);
    w->run_id = run;
    return rc;
}

/* A coordinator answers a hello at once (an Assign or an error), so long
 * silence means it never got it; under CurveZMQ a refused key looks like
 * that from this side (only the coordinator logs the refusal). */
static int hello_unanswered(worker_t *w) {
    int limit = w->o.hello_timeout_ms;
    if (!w->hello_at || limit <= 0 || graft_now() - w->hello_at < limit / 1000.0) return 0;
    LOG_ERROR("worker %s: no answer from the coordinator in %.1f s after saying hello "
              "(--hello_timeout_ms %d): is it running at --connect, and (with CurveZMQ) is "
              "--server_key its public key and this worker's public key on its --allow list? "
              "(the coordinator's log says which; wait longer with --hello_timeout_ms)", w->name,
              graft_now() - w->hello_at, limit);
    return 1;
}

/* The coordinator says nothing between round starts, so a registered worker
 * cannot tell a dead one from a long round of the others; after this long
 * it asks (a hello, which a live coordinator answers with our assignment)
 * and gives up when hello_unanswered() says so. */
static int coordinator_silent(worker_t *w) {
    int limit = w->o.coordinator_timeout_ms;
    if (limit < 0) limit = 3 * w->o.cfg.round_timeout_ms;
    if (!w->id || w->hello_at || limit <= 0 || graft_now() - w->last_heard < limit / 1000.0)
        return 0;
    LOG_WARN("worker %s: coordinator silent for %.1f s; saying hello again (gives up after "
             "--hello_timeout_ms)", w->name, graft_now() - w->last_heard);
    return 1;
}

static void send_error(worker_t *w, int code, const char *text) {
    graft_msg_t m = {.type = GRAFT_MSG_ERROR};
    m.error = (graft_wire_error_t){.code = code, .message = (char *)text};
    send_msg(w, &m);
}

static void heartbeat(worker_t *w) {
    double now = graft_now();
    if (!w->id || now - w->last_beat < w->o.cfg.heartbeat_ms / 1000.0) return;
    w->last_beat = now;
    graft_msg_t m = {.type = GRAFT_MSG_HEARTBEAT};
    m.heartbeat.worker_id = w->id;
    struct timespec wall; /* graft_now() is monotonic: not a date */
    clock_gettime(CLOCK_REALTIME, &wall);
    m.heartbeat.unix_ms = (uint64_t)wall.tv_sec * 1000u + (uint64_t)wall.tv_nsec / 1000000u;
    send_msg(w, &m);
}

static void *pulse_main(void *arg) {
    worker_t *w = arg;
    pulse_t *p = &w->pulse;
    /* Wake four times per interval: beats go out at most 1.25 intervals apart. */
    long wake_ns = (long)w->o.cfg.heartbeat_ms * 250000L;
    pthread_mutex_lock(&p->mu);
    while (!p->quit) {
        if (p->training) heartbeat(w);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += wake_ns;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pulse_start(worker_t *w) {
    pulse_t *p = &w->pulse;
    if (w->o.serial_beats) return;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int e = pthread_create(&p->thread, NULL, pulse_main, w);
    p->started = e == 0;
    if (!p->started) {
        LOG_WARN("worker %s: no heartbeat thread (%s); beating between training steps only",
                 w->name, strerror(e));
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
}

static void pulse_stop(worker_t *w) {
    pulse_t *p = &w->pulse;
    if (!p->started) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    p->started = 0;
}

/* Hands the transport to the pulse (training = 1) or takes it back (0). */
static void pulse_training(worker_t *w, int training) {
    pulse_t *p = &w->pulse;
    if (!p->started) return;
    pthread_mutex_lock(&p->mu);
    p->training = training;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- scopes and personal task modules (--personalize, --save) ------------- */

/* The scope of ours named name, or NULL. */
static graft_scope_t *scope_named(worker_t *w, const char *name) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    if (!strcmp(name, graft_peft_shared(p)->name)) return graft_peft_shared(p);
    for (int t = 0; t < graft_peft_n_tasks(p); t++)
        if (!strcmp(name, graft_peft_task_scope(p, t)->name)) return graft_peft_task_scope(p, t);
    return NULL;
}

/* Scope slot (0: shared, 1 + t: trainer task t) of a scope of ours. */
static int scope_slot(const worker_t *w, const graft_scope_t *s) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    for (int t = 0; t < graft_peft_n_tasks(p); t++)
        if (s == graft_peft_task_scope(p, t)) return 1 + t;
    return 0;
}

/* A round start or evaluation request says whether its round is personal:
 * before --personal_from the task scopes are the cohort's, not ours. */
static void set_phase(worker_t *w, int personal) {
    w->phase = w->personal && personal;
    if (!w->phase) memset(w->own, 0, sizeof w->own);
}

/* Is scope s one of our own personal task scopes (see worker_t.own)? */
static int is_own(const worker_t *w, const graft_scope_t *s) {
    int k = scope_slot(w, s);
    return w->phase && k && w->own[k - 1];
}

/* Takes the values sent for scope s (a round start's or an evaluation
 * request's), unless they are our own by now (returns 0, s untouched). In a
 * personal round the first values of a task scope make it ours, with a
 * fresh optimiser state unless the run keeps it: the same as a worker
 * restarted then would have. */
static int take_values(worker_t *w, graft_scope_t *s, const float *data) {
    if (is_own(w, s)) return 0;
    graft_scope_import(s, data);
    int k = scope_slot(w, s);
    if (w->phase && k) {
        w->own[k - 1] = 1;
        if (!w->keep_state) graft_scope_reset_state(s);
    }
    return 1;
}

/* In a personalised run, the name of a task scope of ours that holds
 * neither our own values nor values sent in tensors ts (n, their scopes in
 * sent): it cannot be trained or evaluated (the coordinator sends a task
 * scope until an answer shows that we hold it). NULL when there is none. */
static const char *task_scope_missing(worker_t *w, graft_scope_t **sent, size_t n) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    for (int t = 0; w->phase && t < graft_peft_n_tasks(p); t++) {
        graft_scope_t *s = graft_peft_task_scope(p, t);
        size_t i = 0;
        while (i < n && sent[i] != s) i++;
        if (s->numel && !w->own[t] && i == n) return s->name;
    }
    return NULL;
}

/* A message of a personalised run lacks task scope `scope`, which this
 * worker does not hold yet: logged, and said to the coordinator, which
 * then sends its task scopes again (it took us for a worker that has them:
 * see coordinator.c, on_worker_error). */
static void say_missing(worker_t *w, const char *what, unsigned long long round,
                        const char *scope) {
    char text[256];
    snprintf(text, sizeof text, "a personalised run: %s %llu lacks task scope '%.64s', which "
             "this worker does not hold yet", what, round, scope);
    LOG_WARN("worker %s: dropping %s", w->name, text);
    send_error(w, GRAFT_ESHAPE, text);
}

/* Moves the --save file, another job's (why says so), to FILE.SUFFIX rather
 * than let this run overwrite it; logged. */
static void set_aside(worker_t *w, const char *suffix, const char *why) {
    const char *path = w->o.save_path;
    char aside[GRAFT_OPT_STR + 32];
    snprintf(aside, sizeof aside, "%s.%s", path, suffix);
    int moved = rename(path, aside) == 0;
    LOG_WARN("worker %s: %s %s: its task modules start over from the coordinator's; %s %s",
             w->name, path, why, moved ? "the file was moved to" : "cannot move the file aside to",
             aside);
}

/* Every scope's optimiser state back to its start. */
static void reset_states(worker_t *w) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    graft_scope_reset_state(graft_peft_shared(p));
    for (int t = 0; t < graft_peft_n_tasks(p); t++)
        graft_scope_reset_state(graft_peft_task_scope(p, t));
}

/* Is `id` (as graft_run_id_text writes it) this run's, or one it continues? */
static int of_this_run(const worker_t *w, const char *id) {
    char mine[32];
    for (size_t i = 0; i <= w->nearlier_runs; i++) {
        graft_run_id_text(i < w->nearlier_runs ? w->earlier_runs[i] : w->run_id, mine);
        if (id && !strcmp(id, mine)) return 1;
    }
    return 0;
}

/* A personalised run's worker restarted with its --save file: takes back
 * its own task modules (and their optimiser state) as of its last
 * evaluation, when the file is this job's (its run id) or of a job this one
 * continues (a coordinator resumed with other job options). Otherwise the
 * coordinator's values start them over, and a file of another job (or one
 * that cannot be read) is moved aside rather than overwritten. */
static void resume_own(worker_t *w) {
    const char *path = w->o.save_path;
    if (!w->personal || !path || access(path, F_OK)) return;
    char id[32];
    graft_run_id_text(w->run_id, id);
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    const char *run = rc ? NULL : graft_st_meta(f, "federated.run_id");
    const char *tasks = rc ? NULL : graft_st_meta(f, "federated.tasks");
    int same = of_this_run(w, run);
    /* Saved before --personal_from: the cohort's averages, which the
     * coordinator sends anew, and newer. */
    int own = same && (!tasks || !strcmp(tasks, "own")); /* 0.3.0 files: own */
    char from[96] = ""; /* the earlier run it is of */
    if (same && strcmp(run, id))
        snprintf(from, sizeof from, " in run %.32s, which this run continues", run);
    graft_st_close(&f);
    if (same && !own) {
        LOG_INFO("worker %s: %s holds its cohort's task modules of an earlier round, not its own: "
                 "it takes the coordinator's", w->name, path);
        return;
    }
    if (!same) {
        char why[96];
        snprintf(why, sizeof why, "is not a --save file of this run (run id %s)", id);
        set_aside(w, rc ? "unreadable" : "other-run", why);
        return;
    }
    graft_peft_t *p = graft_trainer_peft(w->tr);
    if ((rc = graft_trainer_load(w->tr, path))) {
        reset_states(w);
        LOG_WARN("worker %s: cannot take its task modules back from %s (%s): they start over "
                 "from the coordinator's", w->name, path, graft_strerror(rc));
        return;
    }
    for (int t = 0; t < graft_peft_n_tasks(p); t++) w->own[t] = 1;
    w->phase = 1; /* until the coordinator says otherwise */
    LOG_INFO("worker %s: took its own task modules back from %s (as of its last evaluation%s)",
             w->name, path, from);
}

/* --save: the modules just evaluated, for graft eval and graft predict; in
 * a personalised run with their optimiser state, from which a restarted
 * worker takes its own back (resume_own). A failure is logged and the run
 * goes on. */
static void save_modules(worker_t *w, uint64_t round) {
    graft_trainer_set_note(w->tr, "federated.tasks", w->phase ? "own" : "cohort");
    int rc = graft_trainer_save_moments(w->tr, w->o.save_path, w->personal ? 2 : 0);
    if (rc)
        LOG_ERROR("worker %s: round %llu: cannot write its modules to %s: %s", w->name,
                  (unsigned long long)round, w->o.save_path, graft_strerror(rc));
    else
        LOG_INFO("worker %s: round %llu: wrote the modules it evaluated to %s", w->name,
                 (unsigned long long)round, w->o.save_path);
}

/* ---- the assignment -------------------------------------------------------- */

static int assigned(const graft_wire_assign_t *a, const char *task) {
    for (size_t i = 0; i < a->ntasks; i++)
        if (!strcmp(a->tasks[i], task)) return 1;
    return 0;
}

static const graft_wire_label_set_t *labels_of(const graft_wire_assign_t *a, const char *task) {
    for (size_t i = 0; i < a->nlabel_sets; i++)
        if (!strcmp(a->label_sets[i].task, task)) return &a->label_sets[i];
    return NULL;
}

/* Gives each assigned shard the run's label set. */
static int relabel_assigned(worker_t *w, const graft_wire_assign_t *a) {
    for (int i = 0; i < w->n_held; i++) {
        graft_task_t *t = w->held[i];
        if (!assigned(a, graft_task_name(t))) continue;
        const graft_wire_label_set_t *ls = labels_of(a, graft_task_name(t));
        if (graft_task_kind(t) == GRAFT_TASK_CLASSIFY && !ls) {
            LOG_ERROR("worker %s: the assignment has no label set for classification task '%s'",
                      w->name, graft_task_name(t));
            return GRAFT_EINVAL;
        }
        int rc = graft_task_relabel(t, ls ? (const char *const *)ls->labels : NULL,
                                    ls ? (int)ls->nlabels : 0);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

static void build_schema(worker_t *w) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    int n = graft_peft_n_tasks(p);
    for (int k = 0; k <= n; k++) {
        const graft_scope_t *s = k ? graft_peft_task_scope(p, k - 1) : graft_peft_shared(p);
        w->schema_entries[k] = (graft_wire_schema_entry_t){.name = s->name, .ndim = 1,
                                                           .shape = {(int64_t)s->numel}};
    }
    w->schema = (graft_wire_schema_t){w->schema_entries, (size_t)n + 1};
}

/* Each trainer task's index among the run's tasks (the MPI groups are the
 * run's, one per run task). */
static void map_run_tasks(worker_t *w) {
    graft_task_spec_t specs[GRAFT_MAX_TASKS];
    w->n_run_tasks = graft_run_task_specs(&w->o.cfg, specs, GRAFT_MAX_TASKS);
    for (int t = 0; t < graft_trainer_n_tasks(w->tr); t++) {
        int r = 0;
        while (r < w->n_run_tasks &&
               strcmp(specs[r].name, graft_task_name(graft_trainer_task(w->tr, t))))
            r++;
        GRAFT_ASSERT(r < w->n_run_tasks); /* the shards were loaded from these specs */
        w->run_task[t] = r;
    }
}

/* Builds the trainer for the assigned tasks (in --tasks order); shards not
 * assigned are dropped. */
static int build_trainer(worker_t *w, const graft_wire_assign_t *a) {
    int rc = relabel_assigned(w, a);
    if (rc) return rc;
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    char list[512] = "";
    int n = 0;
    for (int i = 0; i < w->n_held; i++) {
        if (!assigned(a, graft_task_name(w->held[i]))) {
            LOG_WARN("worker %s: task '%s' was not assigned; its shard is not used", w->name,
                     graft_task_name(w->held[i]));
            graft_task_destroy(&w->held[i]);
            continue;
        }
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", n ? ", " : "",
                 graft_task_name(w->held[i]));
        tasks[n++] = w->held[i];
        w->held[i] = NULL;
    }
    w->n_held = 0;
    if (n == 0) {
        LOG_ERROR("worker %s: assigned none of the tasks it holds", w->name);
        return GRAFT_EINVAL;
    }
    if ((rc = graft_trainer_new_with_tasks(&w->o.cfg, tasks, n, &w->tr))) return rc;
    for (int t = 0; t < n; t++) {
        const graft_wire_label_set_t *ls = labels_of(a, graft_task_name(tasks[t]));
        if (!ls || !ls->prior) continue;
        w->run_prior[t] = graft_xmalloc(ls->nlabels * sizeof(float));
        memcpy(w->run_prior[t], ls->prior, ls->nlabels * sizeof(float));
    }
    build_schema(w);
    map_run_tasks(w);
    LOG_INFO("worker %s: registered as worker %u; trains %s%s", w->name, w->id, list,
             n > 1 ? " in turn, one task per local step" : "");
    return GRAFT_OK;
}

/* The same tasks as the trainer was built for? */
static int same_assignment(const worker_t *w, const graft_wire_assign_t *a) {
    if ((int)a->ntasks != graft_trainer_n_tasks(w->tr)) return 0;
    for (int t = 0; t < graft_trainer_n_tasks(w->tr); t++)
        if (!assigned(a, graft_task_name(graft_trainer_task(w->tr, t)))) return 0;
    return 1;
}

/* The coordinator came back under another run id (restarted with other job
 * options) and assigned us the same tasks. If its run continues the one we
 * trained in, all stays; otherwise nothing of that job does: our own task
 * modules start over from the coordinator's values, and no scope keeps
 * optimiser state (which --keep_optimizer_state would carry on). */
static void new_run(worker_t *w, uint64_t before) {
    char id[32], old[32];
    graft_run_id_text(w->run_id, id);
    graft_run_id_text(before, old);
    graft_trainer_set_note(w->tr, "federated.run_id", id);
    if (of_this_run(w, old)) {
        if (w->personal)
            LOG_INFO("worker %s: run %s continues run %s: this worker keeps its own task modules",
                     w->name, id, old);
        return;
    }
    memset(w->own, 0, sizeof w->own);
    reset_states(w);
    if (!w->personal) return;
    LOG_INFO("worker %s: run %s is a new job, not a continuation of run %s: this worker's task "
             "modules start over from the coordinator's", w->name, id, old);
    if (w->o.save_path && !access(w->o.save_path, F_OK)) {
        char why[80];
        snprintf(why, sizeof why, "holds its modules of run %s", old);
        set_aside(w, "other-run", why);
    }
}

/* Returns 1 when the worker must stop. */
static int on_assign(worker_t *w, const graft_msg_t *m) {
    /* Registered anew (the coordinator had forgotten us: a restarted one
     * redoes the rounds after its checkpoint), not a repeated answer. */
    if (!w->id || m->run_id != w->run_id) w->trained_round = 0; /* or a new job's rounds */
    w->hello_at = 0;
    uint64_t before = w->run_id;
    w->run_id = m->run_id;
    w->nearlier_runs = m->assign.nearlier_runs;
    memcpy(w->earlier_runs, m->assign.earlier_runs, sizeof w->earlier_runs);
    w->id = m->assign.worker_id;
    w->max_bytes = m->assign.max_message_bytes;
    if (m->assign.personal && !w->personal)
        LOG_INFO("worker %s: a personalised run: this worker keeps its own task modules, trains "
                 "them round after round and sends back only the shared scope", w->name);
    w->personal = m->assign.personal;
    if (w->tr) {
        if (same_assignment(w, &m->assign)) {
            LOG_INFO("worker %s: registered again as worker %u", w->name, w->id);
            if (before != w->run_id) new_run(w, before);
            return 0;
        }
        LOG_ERROR("worker %s: the coordinator now assigns other tasks than at the start; restart "
                  "this worker", w->name);
        send_error(w, GRAFT_ESTATE, "assignment changed; the worker stops");
        w->failed = GRAFT_ESTATE;
        return 1;
    }
    if (build_trainer(w, &m->assign)) {
        send_error(w, GRAFT_EINVAL, "the worker cannot train its assignment (see its log)");
        w->failed = GRAFT_EINVAL;
        return 1;
    }
    char id[32];
    graft_run_id_text(w->run_id, id);
    graft_trainer_set_note(w->tr, "federated.run_id", id);
    resume_own(w);
    return 0;
}

/* ---- a round --------------------------------------------------------------- */

/* The heads' label-shift offsets for tau (graft_peft_set_logit_offset):
 * tau (log p_shard(k) - log p_run(k)) per label k. The shard's shares are
 * smoothed by half an example: a label the shard lacks gets a large
 * negative offset, so training leaves its logit alone rather than pushing
 * it down. Without the run's shares, the uniform prior. tau 0 removes them. */
static void set_logit_offsets(worker_t *w, float tau) {
    if (tau == w->logit_adjust) return;
    w->logit_adjust = tau;
    graft_peft_t *p = graft_trainer_peft(w->tr);
    for (int t = 0; t < graft_trainer_n_tasks(w->tr); t++) {
        const graft_task_t *task = graft_trainer_task(w->tr, t);
        if (graft_task_kind(task) != GRAFT_TASK_CLASSIFY) continue;
        if (tau <= 0) {
            graft_peft_set_logit_offset(p, t, NULL);
            continue;
        }
        int K = graft_task_num_labels(task);
        size_t n = graft_task_count(task, GRAFT_SPLIT_TRAIN);
        size_t *count = graft_xmalloc((size_t)K * sizeof *count);
        graft_task_label_counts(task, GRAFT_SPLIT_TRAIN, count);
        double run_total = 0.0;
        for (int k = 0; w->run_prior[t] && k < K; k++) run_total += w->run_prior[t][k];
        float *offset = graft_xmalloc((size_t)K * sizeof(float));
        for (int k = 0; k < K; k++) {
            double local = (count[k] + 0.5) / ((double)n + 0.5 * K);
            double run = run_total > 0 ? fmax(w->run_prior[t][k] / run_total, 1e-6) : 1.0 / K;
            offset[k] = (float)(tau * (log(local) - log(run)));
        }
        graft_peft_set_logit_offset(p, t, offset);
        char line[512];
        int len = snprintf(line, sizeof line, "worker %s: task %s: label-shift offsets (tau %g):",
                           w->name, graft_task_name(task), (double)tau);
        for (int k = 0; k < K && len < (int)sizeof line; k++)
            len += snprintf(line + len, sizeof line - (size_t)len, "%s %s %+.2f", k ? "," : "",
                            graft_task_label_name(task, k), (double)offset[k]);
        LOG_INFO("%s", line);
        free(offset);
        free(count);
    }
}

/* Imports the round's modules, keeps a copy of what was sent, restarts the
 * optimiser state unless the run keeps it, and sets the round's FedProx
 * anchor, LoRA A freezing, head rate and logit offsets. A personal task
 * scope has no anchor and keeps its optimiser state: nothing replaces its
 * values between rounds. */
static void import_round(worker_t *w, const graft_wire_round_start_t *rs, graft_scope_t **sent,
                         size_t n) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    w->keep_state = rs->hyper.keep_optimizer_state;
    graft_peft_shared(p)->prox_ref = NULL;
    for (int t = 0; t < graft_peft_n_tasks(p); t++) graft_peft_task_scope(p, t)->prox_ref = NULL;
    for (size_t i = 0; i < n; i++) {
        int k = scope_slot(w, sent[i]);
        if (!take_values(w, sent[i], rs->tensors[i].data) || (w->phase && k)) continue;
        if (!w->global[k]) w->global[k] = graft_xmalloc((sent[i]->numel + 1) * sizeof(float));
        memcpy(w->global[k], rs->tensors[i].data, sent[i]->numel * sizeof(float));
        if (!rs->hyper.keep_optimizer_state) graft_scope_reset_state(sent[i]);
        sent[i]->prox_ref = w->global[k];
    }
    graft_trainer_set_prox_mu(w->tr, rs->hyper.fedprox_mu);
    /* Personal pairs are never averaged: nothing to keep exact. */
    graft_peft_freeze_lora_a(p, rs->hyper.freeze_lora_a, rs->hyper.freeze_lora_a && !w->phase);
    graft_peft_set_head_lr_scale(p, rs->hyper.head_lr_scale);
    set_logit_offsets(w, rs->hyper.logit_adjust);
}

static uint64_t task_examples(const worker_t *w, int t) {
    return graft_task_count(graft_trainer_task(w->tr, t), GRAFT_SPLIT_TRAIN);
}

static void tick(void *arg) {
    heartbeat(arg);
}

/* MPI reductions: every scope this worker trains (its trainer holds exactly
 * its assigned tasks) joins its reduction; one that was not trained
 * (trained == 0) contributes nothing but still joins, so that no rank waits
 * forever. */
static void contribute(worker_t *w, const graft_wire_round_start_t *rs, int trained) {
    graft_peft_t *p = graft_trainer_peft(w->tr);
    if (!w->contrib) w->contrib = graft_contributor_new(w->o.tp, p, w->n_run_tasks);
    graft_contribution_t parts[GRAFT_MAX_TASKS + 1];
    int assigned[GRAFT_MAX_TASKS] = {0}, n = 0;
    uint64_t samples = 0;
    for (int t = 0; t < graft_trainer_n_tasks(w->tr); t++) samples += task_examples(w, t);
    const graft_scope_t *shared = graft_peft_shared(p);
    if (shared->numel)
        parts[n++] = (graft_contribution_t){.task = -1, .global = trained ? w->global[0] : NULL,
                                            .trained = shared->params,
                                            .weight = rs->reduce.shared_weight
                                                          ? rs->reduce.shared_weight
                                                          : samples};
    for (int t = 0; t < graft_trainer_n_tasks(w->tr); t++) {
        assigned[w->run_task[t]] = 1;
        const graft_scope_t *scope = graft_peft_task_scope(p, t);
        if (!scope->numel || rs->hyper.personal) continue; /* personal: not reduced */
        parts[n++] = (graft_contribution_t){.task = t, .run_task = w->run_task[t],
                                            .global = trained ? w->global[1 + t] : NULL,
                                            .trained = scope->params,
                                            .weight = task_examples(w, t)};
    }
    int rc = graft_contributor_run(w->contrib, &rs->reduce, rs->hyper.freeze_lora_a, assigned,
                                   parts, n, tick, w, w->stop);
    if (rc) {
        LOG_ERROR("worker %s: round %llu: the MPI reduction failed: %s", w->name,
                  (unsigned long long)rs->round, graft_strerror(rc));
        w->failed = GRAFT_EIO;
    }
}

/* The scopes of the n tensors ts a message carries, into sent; NULL, or the
 * name of the first tensor that is not a scope of mine (by name and size). */
static const char *scopes_sent(worker_t *w, const graft_wire_tensor_t *ts, size_t n,
                               graft_scope_t **sent) {
    for (size_t i = 0; i < n; i++) {
        sent[i] = scope_named(w, ts[i].name);
        if (!sent[i] || sent[i]->numel != ts[i].numel || ts[i].sparse) return ts[i].name;
    }
    return NULL;
}

/* 1 (logged) when round start rs cannot be trained here; else 0 with its
 * tensors' scopes in sent. */
static int refuse_round_start(worker_t *w, const graft_wire_round_start_t *rs,
                              graft_scope_t **sent) {
    unsigned long long round = (unsigned long long)rs->round;
    if (rs->ntensors > GRAFT_MAX_TASKS + 1) {
        LOG_WARN("worker %s: dropping round_start: %zu tensors", w->name, rs->ntensors);
        return 1;
    }
    /* Its global steps (round - 1) * local_steps + s must fit an int. */
    uint32_t steps = rs->hyper.local_steps;
    if (steps && rs->round > (uint64_t)INT_MAX / steps) {
        LOG_WARN("worker %s: dropping round_start %llu: %u local steps per round take it past "
                 "global step %d", w->name, round, steps, INT_MAX);
        return 1;
    }
    const char *bad = scopes_sent(w, rs->tensors, rs->ntensors, sent);
    if (bad) {
        LOG_WARN("worker %s: dropping round_start %llu: tensor '%s' is not a scope of mine",
                 w->name, round, bad);
        return 1;
    }
    if ((bad = task_scope_missing(w, sent, rs->ntensors)))
        say_missing(w, "round_start", round, bad);
    return bad != NULL;
}

static void on_round_start(worker_t *w, const graft_msg_t *m) {
    const graft_wire_round_start_t *rs = &m->round_start;
    graft_scope_t *sent[GRAFT_MAX_TASKS + 1];
    size_t n = rs->ntensors;
    if (rs->round <= w->trained_round) {
        LOG_WARN("worker %s: dropping a repeated round_start for round %llu (already trained "
                 "round %llu)", w->name, (unsigned long long)rs->round,
                 (unsigned long long)w->trained_round);
        return;
    }
    set_phase(w, rs->hyper.personal);
    if (refuse_round_start(w, rs, sent)) {
        if (rs->reduce.collective) contribute(w, rs, 0);
        return;
    }
    import_round(w, rs, sent, n);
    w->trained_round = rs->round;
    graft_trainer_t *tr = w->tr;
    if (rs->hyper.channels_selected && graft_trainer_stage(tr) == 1) {
        /* The scores just imported are the coordinator's: the same choice. */
        graft_trainer_choose_channels(tr);
        LOG_INFO("worker %s: round %llu: two-stage: channels selected (digest %016llx); stage 2 "
                 "starts", w->name, (unsigned long long)rs->round,
                 (unsigned long long)graft_trainer_channels_digest(tr));
    } else if (!rs->hyper.channels_selected) {
        graft_trainer_restart_stage1(tr); /* a coordinator resumed from stage 1 */
    }
    int B, T;
    graft_trainer_batch_shape(tr, &B, &T);
    if (rs->hyper.batch_size != (uint32_t)B && !w->warned_batch) {
        w->warned_batch = 1;
        LOG_WARN("worker %s: the run's --batch is %u, this worker's %d: its steps are not the "
                 "run's (start it with --batch %u)", w->name, rs->hyper.batch_size, B,
                 rs->hyper.batch_size);
    }
    uint32_t steps = rs->hyper.local_steps;
    int64_t first = (int64_t)(rs->round - 1) * steps; /* refuse_round_start: fits an int */
    graft_trainer_seek_sampler(tr, w->stream, first);
    double t0 = graft_now(), loss = 0.0;
    pulse_training(w, 1);
    for (uint32_t s = 0; s < steps; s++) {
        int t = graft_trainer_task_for_step(tr, (int)(first + s));
        float lr = rs->hyper.nstep_lr ? rs->hyper.step_lr[s] : rs->hyper.learning_rate;
        loss += graft_trainer_step(tr, t, lr);
        if (!w->pulse.started) heartbeat(w);
    }
    pulse_training(w, 0);
    uint64_t samples = 0;
    for (int t = 0; t < graft_trainer_n_tasks(tr); t++) samples += task_examples(w, t);
    graft_wire_tensor_t ts[GRAFT_MAX_TASKS + 1];
    size_t back = 0; /* the scopes that go back: our own personal ones stay here */
    for (size_t i = 0; i < n; i++)
        if (!is_own(w, sent[i]))
            ts[back++] = (graft_wire_tensor_t){.name = sent[i]->name, .ndim = 1,
                                               .shape = {(int64_t)sent[i]->numel},
                                               .data = sent[i]->params, .numel = sent[i]->numel};
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE};
    /* With reductions the modules travel through MPI, not in the Update. */
    u.update = (graft_wire_update_t){.round = rs->round, .worker_id = w->id, .tensors = ts,
                                     .ntensors = rs->reduce.collective ? 0 : back,
                                     .sample_count = samples,
                                     .train_loss = steps ? loss / steps : 0.0,
                                     .train_seconds = graft_now() - t0};
    LOG_INFO("worker %s: round %llu: %u steps, loss %.4f, %.2fs", w->name,
             (unsigned long long)rs->round, steps, u.update.train_loss, u.update.train_seconds);
    if (u.update.train_seconds * 1000.0 > rs->deadline_ms)
        LOG_WARN("worker %s: round %llu: local training took %.1f s, past the round's deadline "
                 "(%.1f s after its start was sent): the update may come too late to count "
                 "(fewer --local_steps or a longer --round_timeout_ms)", w->name,
                 (unsigned long long)rs->round, u.update.train_seconds, rs->deadline_ms / 1000.0);
    send_msg(w, &u);
    if (rs->reduce.collective) contribute(w, rs, 1);
}

/* ---- evaluation ------------------------------------------------------------ */

/* 1 (logged) when eval request rq cannot be served here; else 0 with its
 * tensors' scopes in sent and its tasks' trainer indices in tasks. */
static int refuse_eval_request(worker_t *w, const graft_wire_eval_request_t *rq,
                               graft_scope_t **sent, int *tasks) {
    const char *why = NULL, *what = "", *bad = NULL;
    if (rq->ntensors > GRAFT_MAX_TASKS + 1 || rq->ntasks > GRAFT_MAX_TASKS)
        why = "too many tensors or tasks";
    else if (rq->max_examples > 1000000000u || rq->max_decodes > 1000000000u ||
             rq->gen_tokens > 4096)
        why = "sizes out of range (eval_max, decode_max <= 1e9; gen_tokens <= 4096)";
    else if ((bad = scopes_sent(w, rq->tensors, rq->ntensors, sent)))
        why = "not a scope of mine: tensor ", what = bad;
    for (size_t i = 0; !why && i < rq->ntasks; i++)
        if ((tasks[i] = graft_trainer_task_index(w->tr, rq->tasks[i])) < 0)
            why = "not a task of mine: ", what = rq->tasks[i];
    if (!why && (bad = task_scope_missing(w, sent, rq->ntensors))) {
        say_missing(w, "eval_request", (unsigned long long)rq->round, bad);
        return 1;
    }
    if (!why) return 0;
    LOG_WARN("worker %s: dropping eval_request for round %llu: %s%s", w->name,
             (unsigned long long)rq->round, why, what);
    return 1;
}

/* Evaluates the modules sent (the round's aggregated ones; in a
 * personalised run, the shared scope with our own task scopes) on this
 * worker's rows of the split: with an IID shard I/N, part I of N of the evaluation
 * the coordinator would run on the whole file (so the parts add up to it);
 * with a client folder, every row of its file. Answers one EvalResult per
 * task. The import leaves the optimiser state and the FedProx anchor alone:
 * the next round start imports its modules anew. */
static void on_eval_request(worker_t *w, const graft_msg_t *m) {
    const graft_wire_eval_request_t *rq = &m->eval_request;
    graft_scope_t *sent[GRAFT_MAX_TASKS + 1];
    int tasks[GRAFT_MAX_TASKS];
    set_phase(w, rq->personal);
    if (refuse_eval_request(w, rq, sent, tasks)) return;
    for (size_t i = 0; i < rq->ntensors; i++) take_values(w, sent[i], rq->tensors[i].data);
    graft_trainer_set_eval_sizes(w->tr, (int)rq->max_examples, (int)rq->max_decodes,
                                 (int)rq->gen_tokens);
    int part = w->o.data_dir ? 0 : w->o.shard_index, parts = w->o.data_dir ? 1 : w->o.shard_count;
    if (parts < 1) part = 0, parts = 1;
    graft_eval_stats_t stats[GRAFT_MAX_TASKS];
    double t0 = graft_now();
    pulse_training(w, 1); /* evaluation, decoding above all, can take a while */
    for (size_t i = 0; i < rq->ntasks; i++)
        graft_trainer_eval_stats(w->tr, tasks[i], rq->split, part, parts, &stats[i]);
    pulse_training(w, 0);
    char line[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < rq->ntasks; i++) {
        graft_msg_t r = {.type = GRAFT_MSG_EVAL_RESULT};
        graft_eval_stats_to_wire(&stats[i], rq->tasks[i], rq->round, &r.eval_result);
        r.eval_result.part = w->o.data_dir ? 0 : (uint32_t)part; /* IID part, or own files */
        r.eval_result.parts = w->o.data_dir ? 0 : (uint32_t)parts;
        send_msg(w, &r);
        free(r.eval_result.confusion);
        if (used < sizeof line)
            used += (size_t)snprintf(line + used, sizeof line - used, "%s%.64s %lld",
                                     i ? ", " : "", rq->tasks[i], (long long)stats[i].examples);
        graft_eval_stats_free(&stats[i]);
    }
    LOG_INFO("worker %s: round %llu: evaluated its %s rows in %.2f s: %s", w->name,
             (unsigned long long)rq->round, graft_task_split_name(rq->split), graft_now() - t0,
             line);
    if (w->o.save_path) save_modules(w, rq->round);
}

/* Returns 1 when the worker should stop. */
static int handle(worker_t *w, const uint8_t *buf, size_t len) {
    /* The answer to a hello sets the run, which may be another (a
     * coordinator restarted with other job settings): while a hello is
     * pending, every run's messages are read. */
    graft_wire_opts_t opts = {.run_id = w->hello_at ? 0 : w->run_id, .max_bytes = w->max_bytes,
                              .schema = w->tr ? &w->schema : NULL};
    graft_msg_t m;
    char why[256];
    int rc = graft_wire_decode(buf, len, &opts, &m, why, sizeof why);
    if (rc == GRAFT_ESTATE) { /* another run's message: register with it */
        LOG_WARN("worker %s: %s: the coordinator was restarted with other settings? saying "
                 "hello", w->name, why);
        w->id = 0;
        send_hello(w);
        return 0;
    }
    if (rc) {
        LOG_WARN("worker %s: dropping a message from the coordinator: %s", w->name, why);
        return 0;
    }
    int stop = 0;
    switch (m.type) {
    case GRAFT_MSG_ASSIGN: stop = on_assign(w, &m); break;
    case GRAFT_MSG_ROUND_START:
        if (w->id && w->tr) on_round_start(w, &m);
        else LOG_WARN("worker %s: round_start before assignment; dropped", w->name);
        break;
    case GRAFT_MSG_EVAL_REQUEST:
        if (w->id && w->tr) on_eval_request(w, &m);
        else LOG_WARN("worker %s: eval_request before assignment; dropped", w->name);
        break;
    case GRAFT_MSG_SHUTDOWN:
        LOG_INFO("worker %s: shutdown: %s", w->name, m.shutdown.reason);
        if (!m.shutdown.run_complete) {
            LOG_ERROR("worker %s: the run did not complete; exiting with an error", w->name);
            w->failed = GRAFT_ESTATE;
        }
        stop = 1;
        break;
    case GRAFT_MSG_ERROR:
        LOG_WARN("worker %s: coordinator error %d: %s", w->name, m.error.code, m.error.message);
        if (m.error.code == GRAFT_ESTATE) {
            w->id = 0;
            if (!w->hello_at) send_hello(w); /* else the pending hello answers it too */
        } else if (!w->id && m.error.code == GRAFT_EINVAL) {
            LOG_ERROR("worker %s: refused by the coordinator: %s; stopping", w->name,
                      m.error.message);
            w->failed = GRAFT_EINVAL;
            stop = 1;
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
    else graft_worker_default_name(o, w.name, sizeof w.name);
    char folder[GRAFT_WIRE_MAX_NAME + 1] = "";
    if (o->data_dir) folder_name(o->data_dir, folder, sizeof folder);
    w.stream = o->data_dir ? name_hash(folder) : (uint64_t)o->shard_index;
    int rc = load_shards(&w);
    if (!rc) w.nsettings = graft_run_shared_settings(&o->cfg, w.settings);
    int done = 0;
    if (!rc) pulse_start(&w);
    if (!rc) {
        if (o->data_dir) LOG_INFO("worker %s: %d tasks from %s, saying hello", w.name, w.n_held,
                                  o->data_dir);
        else LOG_INFO("worker %s: %d tasks (shard %d/%d), saying hello", w.name, w.n_held,
                      o->shard_index, o->shard_count);
        send_hello(&w);
    }
    while (!rc && !done && !w.failed && !(stop && *stop)) {
        int peer;
        uint8_t *buf = NULL;
        size_t len = 0;
        int r = graft_transport_recv(o->tp, &peer, &buf, &len, o->cfg.heartbeat_ms);
        if (r == GRAFT_OK) {
            if (peer == 0) {
                done = handle(&w, buf, len);
                w.last_heard = graft_now(); /* after any training it started */
            }
            free(buf);
        } else if (r != GRAFT_ETIMEOUT) {
            LOG_WARN("worker %s: receive failed: %s", w.name, graft_strerror(r));
        }
        if (coordinator_silent(&w)) send_hello(&w);
        if (hello_unanswered(&w)) w.failed = GRAFT_ETIMEOUT;
        heartbeat(&w);
    }
    pulse_stop(&w);
    for (int i = 0; i < w.n_held; i++) graft_task_destroy(&w.held[i]);
    graft_contributor_destroy(&w.contrib);
    for (int k = 0; k <= GRAFT_MAX_TASKS; k++) free(w.global[k]);
    for (int t = 0; t < GRAFT_MAX_TASKS; t++) free(w.run_prior[t]);
    graft_trainer_destroy(&w.tr);
    if (rc) return rc;
    if (w.failed) return w.failed;
    return done ? GRAFT_OK : GRAFT_ESTATE;
}
