/* test_coordinator.c — the coordinator in one process over the inproc
 * transport, with real workers (graft_worker_run) on threads:
 *  - bad input: this thread plays a second worker that answers every round
 *    with garbage, a truncated message, an oversized one, a wrong round, a
 *    NaN value, an unknown tensor, a wrong shape, a sparse scope, a NaN
 *    loss, a negative training time and another run's id before its real
 *    update, and replays that update afterwards; a third end that never
 *    said hello sends an update too, and the second worker repeats its hello
 *    at the start and twice mid-round (one join; round 1 sent once more, not
 *    once per hello). Every bad message must be dropped with a logged reason
 *    naming the peer, the run must complete with both workers in every
 *    round, and the modules must stay finite;
 *  - assignment: workers reading client folders (--data) that hold different
 *    task subsets, one of them several tasks and a shard lacking a class,
 *    and a task nobody holds: the cohorts in the events are the holders, the
 *    unheld task's modules are exactly their initial values, the others
 *    trained;
 *  - the worker's side: this thread plays the coordinator and sends a round
 *    start twice; the worker trains that round once;
 *  - churn over ZeroMQ: more identities than the worker table's slots come
 *    and go before a real worker joins, which still gets a slot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "capture.h"
#include "coordinator.h"
#include "safetensors.h"
#include "trainer.h"
#include "wire.h"
#include "worker.h"

#define ROUNDS 3
#define MARK 12345.678f

typedef struct {
    graft_coordinator_opts_t co;
    int rc;
    int done; /* set (atomically) when graft_coordinator_run returned */
} coord_arg_t;

typedef struct {
    graft_worker_opts_t wo;
    volatile sig_atomic_t *stop; /* may be NULL */
    int rc;
} worker_arg_t;

static void *coord_main(void *p) {
    coord_arg_t *a = p;
    a->rc = graft_coordinator_run(&a->co);
    __atomic_store_n(&a->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void *worker_main(void *p) {
    worker_arg_t *a = p;
    a->rc = graft_worker_run(&a->wo, a->stop);
    return NULL;
}

static void write_tasks(const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/cls.tsv", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 48; i++)
        fprintf(f, "%s\t%s\t\tword%d %s\n", i < 32 ? "train" : i < 40 ? "dev" : "test",
                i % 2 ? "odd" : "even", i, i % 2 ? "odd" : "even");
    fclose(f);
}

static void send_bytes(graft_transport_t *t, const void *buf, size_t len) {
    assert_int_equal(graft_transport_send(t, 0, buf, len), GRAFT_OK);
}

static void send_update(graft_transport_t *t, graft_msg_t *u) {
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(u, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    send_bytes(t, buf, len);
    free(buf);
}

/* Replies to one RoundStart: every kind of bad update, then the real one. */
static void answer_round(graft_transport_t *t, uint64_t run_id, graft_msg_t *rs) {
    graft_wire_round_start_t *r = &rs->round_start;
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = run_id};
    u.update = (graft_wire_update_t){.round = r->round, .worker_id = 2, .tensors = r->tensors,
                                     .ntensors = r->ntensors, .sample_count = 32,
                                     .train_loss = 0.5};
    send_bytes(t, "\xff\x01garbage", 9);
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(&u, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    send_bytes(t, buf, len / 2);                       /* truncated */
    free(buf);
    size_t big = GRAFT_WIRE_DEFAULT_MAX_BYTES + 16;     /* oversized */
    uint8_t *huge = calloc(1, big);
    send_bytes(t, huge, big);
    free(huge);
    u.update.round = r->round + 7;                      /* wrong round */
    send_update(t, &u);
    u.update.round = r->round;
    /* NaN: encode a marker value, then overwrite its bytes with a NaN. */
    float *x = r->tensors[0].data, keep = x[0];
    x[0] = MARK;
    assert_int_equal(graft_wire_encode(&u, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    x[0] = keep;
    float mark = MARK, nan = NAN;
    uint8_t *at = memmem(buf, len, &mark, 4);
    assert_non_null(at);
    memcpy(at, &nan, 4);
    send_bytes(t, buf, len);
    free(buf);
    char *name = r->tensors[0].name;                    /* unknown tensor */
    r->tensors[0].name = "task.nope";
    send_update(t, &u);
    r->tensors[0].name = name;
    r->tensors[0].shape[0] -= 1;                        /* wrong shape */
    r->tensors[0].numel -= 1;
    send_update(t, &u);
    r->tensors[0].shape[0] += 1;
    r->tensors[0].numel += 1;
    uint32_t first = 0;                                 /* sparse */
    r->tensors[0].sparse = 1;
    r->tensors[0].indices = &first;
    r->tensors[0].nnz = 1;
    send_update(t, &u);
    r->tensors[0].sparse = 0;
    r->tensors[0].indices = NULL;
    r->tensors[0].nnz = 0;
    u.update.train_loss = NAN;                          /* NaN loss */
    send_update(t, &u);
    u.update.train_loss = 0.5;
    u.update.train_seconds = -1.0;                      /* negative training time */
    send_update(t, &u);
    u.update.train_seconds = 0.25;
    u.run_id = run_id ^ 1;                              /* another run */
    send_update(t, &u);
    u.run_id = run_id;
    send_update(t, &u);                                 /* the real one */
    send_update(t, &u);                                 /* replayed */
}

/* A peer that never said hello sends an update. */
static void stranger_update(graft_transport_t *t, uint64_t run_id, graft_msg_t *rs) {
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = run_id};
    u.update = (graft_wire_update_t){.round = rs->round_start.round, .worker_id = 3,
                                     .tensors = rs->round_start.tensors,
                                     .ntensors = rs->round_start.ntensors, .sample_count = 32,
                                     .train_loss = 0.5};
    send_update(t, &u);
}

/* The settings a worker of cfg says hello with, in s (pointing into ss). */
static size_t hello_settings(const graft_run_config_t *cfg, graft_setting_t *ss,
                             graft_wire_setting_t *s) {
    int n = graft_run_shared_settings(cfg, ss);
    for (int i = 0; i < n; i++) s[i] = (graft_wire_setting_t){(char *)ss[i].name, ss[i].value};
    return (size_t)n;
}

/* Plays worker 2: hello, then answers rounds until shutdown; in round 1
 * the stranger end also sends an update. */
static int fake_worker(graft_transport_t *t, graft_transport_t *stranger,
                       const graft_run_config_t *cfg) {
    graft_wire_shard_t shard = {.task = "cls", .kind = GRAFT_KIND_CLASSIFICATION,
                                .train_examples = 32};
    graft_setting_t ss[GRAFT_MAX_SHARED_SETTINGS];
    graft_wire_setting_t settings[GRAFT_MAX_SHARED_SETTINGS];
    graft_msg_t h = {.type = GRAFT_MSG_HELLO};
    h.hello = (graft_wire_hello_t){.version = GRAFT_VERSION, .name = "fake", .shards = &shard,
                                   .nshards = 1, .settings = settings,
                                   .nsettings = hello_settings(cfg, ss, settings)};
    send_update(t, &h);
    send_update(t, &h); /* a repeated hello: no second join */
    uint64_t run_id = 0;
    int rounds = 0;
    for (;;) {
        int peer;
        uint8_t *buf;
        size_t len;
        int rc = graft_transport_recv(t, &peer, &buf, &len, 60000);
        if (rc) return -1;
        graft_msg_t m;
        char why[256];
        assert_int_equal(graft_wire_decode(buf, len, NULL, &m, why, sizeof why), GRAFT_OK);
        free(buf);
        if (m.type == GRAFT_MSG_ASSIGN) run_id = m.run_id;
        if (m.type == GRAFT_MSG_ROUND_START) {
            if (rounds == 0) {
                stranger_update(stranger, run_id, &m);
                send_update(t, &h); /* mid-round, twice: one more round start, */
                send_update(t, &h); /* not two */
            }
            answer_round(t, run_id, &m);
            rounds++;
        }
        int done = m.type == GRAFT_MSG_SHUTDOWN;
        graft_msg_free(&m);
        if (done) return rounds;
    }
}

/* A small run on the tiny trunk with output in dir/out. */
static void base_config(graft_run_config_t *cfg, const char *dir, const char *tasks) {
    char *argv[] = {"test", NULL};
    assert_int_equal(graft_options_parse(graft_run_options, cfg, 1, argv, ""), GRAFT_OPTS_OK);
    snprintf(cfg->preset, sizeof cfg->preset, "tiny");
    snprintf(cfg->tasks, sizeof cfg->tasks, "%s", tasks);
    snprintf(cfg->out, sizeof cfg->out, "%s/out", dir);
    cfg->seq = 16;
    cfg->batch = 4;
    cfg->rounds = ROUNDS;
    cfg->local_steps = 2;
    cfg->eval_max = 8;
    cfg->heartbeat_ms = 10000; /* the fake worker sends no heartbeats */
    cfg->round_timeout_ms = 30000;
}

/* A new scratch folder dir (a mkdtemp template) with the task cls, and a
 * small run of it. */
static void one_task_run(char *dir, graft_run_config_t *cfg) {
    char tasks[300];
    assert_non_null(mkdtemp(dir));
    write_tasks(dir);
    snprintf(tasks, sizeof tasks, "cls:classification:%s/cls.tsv", dir);
    base_config(cfg, dir, tasks);
}

/* Sends stderr (the logs) to dir/stderr.log; returns what to restore. */
static int stderr_to_log(const char *dir) {
    char log[300];
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    fflush(stderr);
    int saved = dup(2);
    assert_non_null(freopen(log, "w", stderr));
    return saved;
}

static void stderr_back(int saved) {
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
}

/* How many lines of dir/file match the extended regex. */
static int count_lines(const char *dir, const char *file, const char *pattern) {
    char cmd[600], out[64];
    snprintf(cmd, sizeof cmd, "grep -Eci '%s' %s/%s", pattern, dir, file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, sizeof out, p));
    pclose(p);
    return atoi(out);
}

static void remove_dir(const char *dir) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_bad_messages_dropped(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_tasks(dir);
    graft_run_config_t cfg;
    char tasks[300];
    snprintf(tasks, sizeof tasks, "cls:classification:%s/cls.tsv", dir);
    base_config(&cfg, dir, tasks);

    int saved = stderr_to_log(dir);

    graft_transport_t *ends[4];
    assert_int_equal(graft_transport_inproc_new(3, ends), GRAFT_OK);
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 2, .tp = ends[0], .mode = "inproc"}};
    worker_arg_t wa = {.wo = {.cfg = cfg, .name = "real", .shard_count = 1, .tp = ends[1]}};
    pthread_t ct, wt;
    pthread_create(&ct, NULL, coord_main, &ca);
    pthread_create(&wt, NULL, worker_main, &wa);
    int rounds = fake_worker(ends[2], ends[3], &cfg);
    pthread_join(ct, NULL);
    pthread_join(wt, NULL);
    for (int i = 0; i < 4; i++) graft_transport_destroy(&ends[i]);
    stderr_back(saved);

    assert_int_equal(ca.rc, GRAFT_OK);
    assert_int_equal(wa.rc, GRAFT_OK);
    /* Round 1 was sent once more after the mid-round hellos (not once per hello). */
    assert_int_equal(rounds, ROUNDS + 1);
    assert_int_equal(count_lines(dir, "out/events.jsonl", "\"event\":\"worker_join\""), 2);
    assert_int_equal(count_lines(dir, "stderr.log", "2 .fake. said hello again while registered"),
                     3);
    /* Every round ended with both workers, and each bad message was logged
     * once. The fake answers round 1 twice and the others once; its second
     * answer to round 1 may come while round 1 is open or after it closed,
     * which changes why its sparse update and its replays are refused but
     * not which of these patterns count them. */
    const int answers = ROUNDS + 1;
    const struct {
        const char *file, *pattern;
        int want;
    } checks[] = {
        {"out/events.jsonl", "\"replies\":", ROUNDS},
        {"out/events.jsonl", "\"replies\":2,", ROUNDS},
        {"stderr.log", "dropping a message from", 9 * answers},
        {"stderr.log", "do not unpack", 2 * answers},
        {"stderr.log", "exceeds the limit", answers},
        {"stderr.log", "value 0 is NaN", answers},
        {"stderr.log", "task.nope. is not a known tensor", answers},
        {"stderr.log", "has shape \\[[0-9]+\\], expected", answers},
        {"stderr.log", "train_loss is nan", answers},
        {"stderr.log", "train_seconds is -1", answers},
        {"stderr.log", "is from run", answers},
        {"stderr.log", "round (8|9|10)[,;)]", answers}, /* the wrong rounds */
        {"stderr.log", "is sparse", ROUNDS},
        {"stderr.log", "not registered", 1},
    };
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        int got = count_lines(dir, checks[i].file, checks[i].pattern);
        if (got != checks[i].want)
            fprintf(stdout, "pattern '%s' in %s: %d, expected %d\n", checks[i].pattern,
                    checks[i].file, got, checks[i].want);
        assert_int_equal(got, checks[i].want);
    }
    /* Refused after decoding: the wrong round, the sparse update and the
     * replay of every answer, and the real update of the second; the
     * replay of the last round may come after the run ended. */
    int refused = count_lines(dir, "stderr.log", "dropping update from worker 2");
    if (refused != 3 * answers + 1) assert_int_equal(refused, 3 * answers);
    /* The checkpoint of the aggregated modules was written and reads back. */
    char ckpt[300];
    snprintf(ckpt, sizeof ckpt, "%s/out/modules.safetensors", dir);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(ckpt, &f), GRAFT_OK);
    graft_st_close(&f);
    remove_dir(dir);
}

/* ---- assignment ------------------------------------------------------------ */

/* dir/NAME.tsv: 36 train, 6 dev, 6 test rows, labels x y z in turn; with
 * only_train, the train rows with a label before `last` only. */
static void write_cls(const char *path, int only_train, char last) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 48; i++) {
        char label = (char)('x' + i % 3);
        const char *split = i < 36 ? "train" : i < 42 ? "dev" : "test";
        if (only_train && (i >= 36 || label > last)) continue;
        fprintf(f, "%s\t%c\t\tword%d %c%c\n", split, label, i, label, label);
    }
    fclose(f);
}

/* client-000 holds a (without class z) and b, client-001 holds b, nobody
 * holds c: the cohorts are a:[000], b:[000, 001], c:[]; c's modules are
 * untouched, a's, b's and the shared ones trained. */
/* The coordinator's test results, as its test_result callback gets them. */
typedef struct {
    int n;
    char lines[GRAFT_MAX_TASKS][256];
} test_results_t;

static void collect_test_result(void *ctx, const graft_eval_result_t *r, const char *line) {
    test_results_t *tr = ctx;
    assert_true(tr->n < GRAFT_MAX_TASKS);
    assert_int_equal(r->split, GRAFT_SPLIT_TEST);
    assert_int_equal(r->task, tr->n); /* task order */
    snprintf(tr->lines[tr->n++], sizeof tr->lines[0], "%s", line);
}

static void test_assignment_by_holdings(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX", path[300], tasks[600];
    assert_non_null(mkdtemp(dir));
    const char *names[] = {"a", "b", "c"};
    for (int t = 0; t < 3; t++) {
        snprintf(path, sizeof path, "%s/%s.tsv", dir, names[t]);
        write_cls(path, 0, 'z');
    }
    snprintf(path, sizeof path, "%s/client-000", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/client-001", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/client-000/a.tsv", dir);
    write_cls(path, 1, 'y');
    snprintf(path, sizeof path, "%s/client-000/b.tsv", dir);
    write_cls(path, 1, 'z');
    snprintf(path, sizeof path, "%s/client-001/b.tsv", dir);
    write_cls(path, 1, 'z');
    snprintf(tasks, sizeof tasks, "a:classification:%s/a.tsv, b:classification:%s/b.tsv, "
             "c:classification:%s/c.tsv", dir, dir, dir);
    graft_run_config_t cfg;
    base_config(&cfg, dir, tasks);
    cfg.heartbeat_ms = 500;

    char data0[300], data1[300];
    snprintf(data0, sizeof data0, "%s/client-000", dir);
    snprintf(data1, sizeof data1, "%s/client-001/", dir); /* a trailing slash is fine */
    int saved = stderr_to_log(dir);
    graft_transport_t *ends[3];
    assert_int_equal(graft_transport_inproc_new(2, ends), GRAFT_OK);
    test_results_t results = {0};
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 2, .tp = ends[0], .mode = "inproc",
                             .test_result = collect_test_result, .test_result_ctx = &results}};
    worker_arg_t wa[2] = {{.wo = {.cfg = cfg, .data_dir = data0, .shard_count = 1, .tp = ends[1]}},
                          {.wo = {.cfg = cfg, .data_dir = data1, .shard_count = 1, .tp = ends[2]}}};
    pthread_t ct, wt[2];
    pthread_create(&ct, NULL, coord_main, &ca);
    for (int i = 0; i < 2; i++) pthread_create(&wt[i], NULL, worker_main, &wa[i]);
    pthread_join(ct, NULL);
    for (int i = 0; i < 2; i++) pthread_join(wt[i], NULL);
    for (int i = 0; i < 3; i++) graft_transport_destroy(&ends[i]);
    stderr_back(saved);

    assert_int_equal(ca.rc, GRAFT_OK);
    assert_int_equal(wa[0].rc, GRAFT_OK);
    assert_int_equal(wa[1].rc, GRAFT_OK);
    assert_int_equal(count_lines(dir, "out/events.jsonl",
                                 "\"cohorts\":\\{\"a\":\\[\"client-000\"\\],"
                                 "\"b\":\\[\"client-000\",\"client-001\"\\],\"c\":\\[\\]\\}"),
                     ROUNDS);
    assert_int_equal(
        count_lines(dir, "out/events.jsonl", "\"train_examples\":\\{\"a\":24,\"b\":36\\}"), 1);
    assert_true(count_lines(dir, "stderr.log", "task c: no worker holds it") >= ROUNDS);
    /* The test results go to the callback, one line per task, each named. */
    assert_int_equal(results.n, 3);
    for (int t = 0; t < 3; t++) assert_non_null(strstr(results.lines[t], names[t]));

    /* Modules: the checkpoint against a fresh (initial) set. */
    graft_trainer_t *init = NULL, *fin = NULL;
    assert_int_equal(graft_trainer_new(&cfg, &init), GRAFT_OK);
    assert_int_equal(graft_trainer_new(&cfg, &fin), GRAFT_OK);
    snprintf(path, sizeof path, "%s/out/modules.safetensors", dir);
    assert_int_equal(graft_trainer_load(fin, path), GRAFT_OK);
    graft_scope_t *before[4] = {graft_trainer_shared_scope(init)},
                  *after[4] = {graft_trainer_shared_scope(fin)};
    for (int t = 0; t < 3; t++) {
        before[1 + t] = graft_trainer_task_scope(init, t);
        after[1 + t] = graft_trainer_task_scope(fin, t);
    }
    for (int k = 0; k < 4; k++) {
        int same = !memcmp(before[k]->params, after[k]->params, before[k]->numel * sizeof(float));
        if (same != (k == 3)) fprintf(stdout, "scope %s: %s\n", after[k]->name,
                                      same ? "unchanged" : "changed");
        assert_int_equal(same, k == 3);
    }
    graft_trainer_destroy(&init);
    graft_trainer_destroy(&fin);
    remove_dir(dir);
}

/* Settings that cannot work are refused before OUT/events.jsonl exists:
 * more --min_replies than workers (a round could never close), and a
 * --resume checkpoint that already holds --rounds rounds. */
static void test_unworkable_settings_refused(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_tasks(dir);
    char tasks[300], log[300], events[300], ckpt[300];
    snprintf(tasks, sizeof tasks, "cls:classification:%s/cls.tsv", dir);
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    snprintf(events, sizeof events, "%s/out/events.jsonl", dir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
    graft_transport_t *ends[2] = {NULL};
    assert_int_equal(graft_transport_inproc_new(1, ends), GRAFT_OK);
    coord_arg_t a = {.co = {.expected_workers = 1, .tp = ends[0], .mode = "inproc"}};
    base_config(&a.co.cfg, dir, tasks);
    a.co.cfg.min_replies = 3;
    capture_begin(log);
    assert_int_equal(graft_coordinator_run(&a.co), GRAFT_EINVAL);
    capture_end_expect("--min_replies 3 is more than the 1 worker of the run");
    assert_int_equal(graft_coordinator_check(&a.co.cfg, 3), GRAFT_OK);
    assert_int_equal(access(events, F_OK), -1);

    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&a.co.cfg, &tr), GRAFT_OK);
    graft_trainer_set_steps_done(tr, 6); /* rounds done */
    assert_int_equal(graft_trainer_save(tr, ckpt), GRAFT_OK);
    graft_trainer_destroy(&tr);
    a.co.cfg.min_replies = 1;
    snprintf(a.co.cfg.resume, sizeof a.co.cfg.resume, "%s", ckpt);
    capture_begin(log);
    assert_int_equal(graft_coordinator_run(&a.co), GRAFT_EINVAL);
    capture_end_expect("already holds 6 rounds, and --rounds is 3");
    assert_int_equal(access(events, F_OK), -1);
    for (int i = 0; i < 2; i++) graft_transport_destroy(&ends[i]);
    remove_dir(dir);
}

/* The next message that reaches t within timeout_ms, decoded into *m (the
 * caller frees it): 0, or -1 when none came. */
static int recv_message(graft_transport_t *t, int timeout_ms, graft_msg_t *m) {
    int peer;
    uint8_t *buf;
    size_t len;
    if (timeout_ms <= 0 || graft_transport_recv(t, &peer, &buf, &len, timeout_ms)) return -1;
    char why[256];
    assert_int_equal(graft_wire_decode(buf, len, NULL, m, why, sizeof why), GRAFT_OK);
    free(buf);
    return 0;
}

/* The next message that reaches t, decoded (the caller frees it). */
static graft_msg_t next_message(graft_transport_t *t) {
    graft_msg_t m;
    assert_int_equal(recv_message(t, 60000, &m), 0);
    return m;
}

/* Says hello from t as `name` (settings: n of s) and returns the answer. */
static graft_msg_t hello_answer(graft_transport_t *t, const char *name, const char *version,
                                graft_wire_setting_t *s, size_t n) {
    graft_wire_shard_t shard = {.task = "cls", .kind = GRAFT_KIND_CLASSIFICATION,
                                .train_examples = 32};
    graft_msg_t h = {.type = GRAFT_MSG_HELLO};
    h.hello = (graft_wire_hello_t){.version = (char *)version, .name = (char *)name,
                                   .shards = &shard, .nshards = 1, .settings = s,
                                   .nsettings = n};
    send_update(t, &h);
    return next_message(t);
}

/* An Error answer holding `needle`. */
static void expect_refusal(graft_msg_t m, const char *needle) {
    assert_int_equal(m.type, GRAFT_MSG_ERROR);
    assert_int_equal(m.error.code, GRAFT_EINVAL);
    if (!strstr(m.error.message, needle))
        fail_msg("refusal '%s' does not say '%s'", m.error.message, needle);
    graft_msg_free(&m);
}

/* An Assign answer; returns the run id. */
static uint64_t expect_assign(graft_msg_t m) {
    assert_int_equal(m.type, GRAFT_MSG_ASSIGN);
    uint64_t run_id = m.run_id;
    graft_msg_free(&m);
    return run_id;
}

/* Hellos that cannot be let in: another protocol major version, no
 * settings, a name that another CurveZMQ key registered; and a registered
 * worker's messages under another key are dropped. The transport reports
 * each message's key (inproc: set by the test). */
static void test_hello_identity(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    graft_run_config_t cfg;
    one_task_run(dir, &cfg);
    graft_setting_t ss[GRAFT_MAX_SHARED_SETTINGS];
    graft_wire_setting_t set[GRAFT_MAX_SHARED_SETTINGS];
    size_t nset = hello_settings(&cfg, ss, set);
    const char *k1 = "k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1";
    const char *k2 = "k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2";
    int saved = stderr_to_log(dir);
    graft_transport_t *ends[3];
    assert_int_equal(graft_transport_inproc_new(2, ends), GRAFT_OK);
    graft_transport_inproc_set_key(ends[1], k1);
    graft_transport_inproc_set_key(ends[2], k2);
    /* Three workers never come: no round starts while the hellos go on. */
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 3, .tp = ends[0], .mode = "inproc"}};
    pthread_t ct;
    pthread_create(&ct, NULL, coord_main, &ca);

    uint64_t run_id = expect_assign(hello_answer(ends[1], "alice", GRAFT_VERSION, set, nset));
    char why[256];
    snprintf(why, sizeof why, "worker 'alice' registered with CurveZMQ key %s, and this client's "
             "key is %s", k1, k2);
    expect_refusal(hello_answer(ends[2], "alice", GRAFT_VERSION, set, nset), why);
    snprintf(why, sizeof why, "it speaks graft protocol 1.0.0, this coordinator %s: the major "
             "versions differ", GRAFT_VERSION);
    expect_refusal(hello_answer(ends[2], "bob", "1.0.0", set, nset), why);
    expect_refusal(hello_answer(ends[2], "bob", "dev", set, nset), "graft protocol dev");
    expect_refusal(hello_answer(ends[2], "bob", GRAFT_VERSION, set, 0), "carries no settings");
    expect_assign(hello_answer(ends[2], "bob", GRAFT_VERSION, set, nset));
    /* Alice's connection now carries bob's key: neither her heartbeat nor
     * a hello gets through; under her own key again, she is answered. */
    graft_transport_inproc_set_key(ends[1], k2);
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = run_id,
                      .heartbeat = {.worker_id = 1, .unix_ms = 1}};
    send_update(ends[1], &hb);
    expect_refusal(hello_answer(ends[1], "carol", GRAFT_VERSION, set, nset),
                   "worker 'alice' registered with CurveZMQ key");
    graft_transport_inproc_set_key(ends[1], k1);
    expect_assign(hello_answer(ends[1], "alice", GRAFT_VERSION, set, nset));

    graft_coordinator_stop = SIGTERM;
    pthread_join(ct, NULL);
    graft_coordinator_stop = 0;
    for (int i = 0; i < 3; i++) graft_transport_destroy(&ends[i]);
    stderr_back(saved);
    assert_int_equal(ca.rc, GRAFT_ESTATE);
    assert_int_equal(count_lines(dir, "out/events.jsonl", "\"event\":\"worker_refused\""), 5);
    assert_int_equal(count_lines(dir, "out/events.jsonl", "\"event\":\"worker_join\""), 2);
    assert_int_equal(count_lines(dir, "stderr.log", "dropping heartbeat from worker 1: its "
                                 "CurveZMQ key k2k2.* is not the key k1k1.* that worker .alice. "
                                 "registered with"), 1);
    remove_dir(dir);
}

/* Older releases of the same major version are let in unless the run uses
 * a feature they lack: evaluation on the workers (0.2.0), --personalize
 * (0.3.0), --personal_from after round 1 (0.4.0). Each refusal names the
 * feature and the worker's version. */
static void test_hello_features(void **state) {
    (void)state;
    struct {
        const char *eval_on;
        int personal_from; /* 0: not --personalize */
        const char *version, *refusal; /* NULL: let in */
    } cases[] = {
        {"coordinator", 0, "0.1.0", NULL},
        {"workers", 0, "0.1.9", "evaluation on the workers (--eval_on), which workers answer "
                                "from graft 0.2.0, and the worker is graft 0.1.9"},
        {"workers", 0, "0.2.0", NULL},
        {"", 1, "0.2.7", "a personalised run (--personalize), which workers follow from graft "
                         "0.3.0, and the worker is graft 0.2.7 (upgrade it)"},
        {"", 1, "0.3.0-rc1", NULL},
        {"", 2, "0.3.9", "task modules averaged before they turn personal (--personal_from), "
                         "which workers follow from graft 0.4.0, and the worker is graft 0.3.9"},
        {"", 1, GRAFT_VERSION, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
        graft_run_config_t cfg;
        one_task_run(dir, &cfg);
        snprintf(cfg.eval_on, sizeof cfg.eval_on, "%s", cases[i].eval_on);
        cfg.personalize = cases[i].personal_from > 0;
        cfg.personal_from = cfg.personalize ? cases[i].personal_from : 1;
        graft_setting_t ss[GRAFT_MAX_SHARED_SETTINGS];
        graft_wire_setting_t set[GRAFT_MAX_SHARED_SETTINGS];
        size_t nset = hello_settings(&cfg, ss, set);
        int saved = stderr_to_log(dir);
        graft_transport_t *ends[2];
        assert_int_equal(graft_transport_inproc_new(1, ends), GRAFT_OK);
        coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 2, .tp = ends[0],
                                 .mode = "inproc"}};
        pthread_t ct;
        pthread_create(&ct, NULL, coord_main, &ca);
        graft_msg_t m = hello_answer(ends[1], "w", cases[i].version, set, nset);
        if (cases[i].refusal) expect_refusal(m, cases[i].refusal);
        else expect_assign(m);
        graft_coordinator_stop = SIGTERM;
        /* A message wakes the coordinator's poll to see the flag. */
        graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .heartbeat = {.worker_id = 1}};
        send_update(ends[1], &hb);
        pthread_join(ct, NULL);
        graft_coordinator_stop = 0;
        for (int e = 0; e < 2; e++) graft_transport_destroy(&ends[e]);
        stderr_back(saved);
        remove_dir(dir);
    }
}

/* ---- fake workers: this thread plays workers whose updates it writes ------- */

/* A worker played by this thread on one inproc end: it holds 32 train
 * examples of task cls and replies with the modules it was sent, every
 * value moved by a delta the test chooses, so that the aggregate says
 * exactly which updates were counted and with what weight. */
typedef struct {
    graft_transport_t *tp;
    const char *name;
    const graft_run_config_t *cfg; /* the run's, for the hello's settings */
    uint64_t run_id;               /* from its Assign */
    uint32_t id;
} fake_t;

static void fake_hello(fake_t *f) {
    graft_wire_shard_t shard = {.task = "cls", .kind = GRAFT_KIND_CLASSIFICATION,
                                .train_examples = 32};
    graft_setting_t ss[GRAFT_MAX_SHARED_SETTINGS];
    graft_wire_setting_t settings[GRAFT_MAX_SHARED_SETTINGS];
    graft_msg_t h = {.type = GRAFT_MSG_HELLO};
    h.hello = (graft_wire_hello_t){.version = GRAFT_VERSION, .name = (char *)f->name,
                                   .shards = &shard, .nshards = 1, .settings = settings,
                                   .nsettings = hello_settings(f->cfg, ss, settings)};
    send_update(f->tp, &h);
}

/* Waits up to timeout_ms for the next message of `type` (an Assign on the
 * way sets the run and worker ids; other types are skipped and counted in
 * *skipped[type] when skipped is not NULL). 0 with *m to free, or -1. */
static int fake_next(fake_t *f, graft_msg_type_t type, int timeout_ms, graft_msg_t *m,
                     int *skipped) {
    double until = graft_now() + timeout_ms / 1000.0;
    for (;;) {
        if (recv_message(f->tp, (int)((until - graft_now()) * 1000.0), m)) return -1;
        if (m->type == GRAFT_MSG_ASSIGN) {
            f->run_id = m->run_id;
            f->id = m->assign.worker_id;
        }
        if (m->type == type) return 0;
        if (skipped) skipped[m->type]++;
        graft_msg_free(m);
    }
}

static void fake_beat(fake_t *f) {
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = f->run_id};
    hb.heartbeat = (graft_wire_heartbeat_t){.worker_id = f->id, .unix_ms = 1};
    send_update(f->tp, &hb);
}

/* Heartbeats every 20 ms for ms milliseconds. */
static void fake_beat_for(fake_t *f, int ms) {
    for (double until = graft_now() + ms / 1000.0; graft_now() < until; usleep(20000))
        fake_beat(f);
}

/* The update to round start rs: every value sent plus delta, train_loss
 * 1 + delta, and the sample count the worker claims. */
static void fake_reply(fake_t *f, const graft_msg_t *rs, float delta, uint64_t samples) {
    const graft_wire_round_start_t *r = &rs->round_start;
    graft_wire_tensor_t ts[GRAFT_MAX_TASKS + 1];
    assert_true(r->ntensors <= GRAFT_MAX_TASKS + 1);
    for (size_t i = 0; i < r->ntensors; i++) {
        ts[i] = r->tensors[i];
        float *x = malloc(ts[i].numel * sizeof *x);
        for (size_t j = 0; j < ts[i].numel; j++) x[j] = r->tensors[i].data[j] + delta;
        ts[i].data = x;
    }
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = f->run_id};
    u.update = (graft_wire_update_t){.round = r->round, .worker_id = f->id, .tensors = ts,
                                     .ntensors = r->ntensors, .sample_count = samples,
                                     .train_loss = 1.0 + delta, .train_seconds = 0.01};
    send_update(f->tp, &u);
    for (size_t i = 0; i < r->ntensors; i++) free(ts[i].data);
}

/* A coordinator (1 round of task cls) on ends[0] with workers-many fake
 * ends, its log in dir/stderr.log. */
typedef struct {
    char dir[64];
    graft_run_config_t cfg;
    graft_transport_t *ends[8];
    int nends;
    coord_arg_t ca;
    pthread_t ct;
    int saved_stderr;
} fake_run_t;

static void fake_run_config(fake_run_t *r, int ends) {
    snprintf(r->dir, sizeof r->dir, "/tmp/graft_test_coordinator_XXXXXX");
    one_task_run(r->dir, &r->cfg);
    r->cfg.rounds = 1;
    r->nends = ends + 1;
    r->ca = (coord_arg_t){.co = {.expected_workers = 2, .mode = "inproc"}};
}

static void fake_run_start(fake_run_t *r) {
    r->saved_stderr = stderr_to_log(r->dir);
    assert_int_equal(graft_transport_inproc_new(r->nends - 1, r->ends), GRAFT_OK);
    r->ca.co.cfg = r->cfg;
    r->ca.co.tp = r->ends[0];
    pthread_create(&r->ct, NULL, coord_main, &r->ca);
}

static void fake_run_join(fake_run_t *r) {
    pthread_join(r->ct, NULL);
    for (int i = 0; i < r->nends; i++) graft_transport_destroy(&r->ends[i]);
    stderr_back(r->saved_stderr);
}

/* The mean of (checkpointed - initial) over scope k (0: shared, 1: task cls). */
static double scope_shift(const fake_run_t *r, int k) {
    graft_trainer_t *init = NULL, *fin = NULL;
    assert_int_equal(graft_trainer_new(&r->cfg, &init), GRAFT_OK);
    assert_int_equal(graft_trainer_new(&r->cfg, &fin), GRAFT_OK);
    char path[300];
    snprintf(path, sizeof path, "%s/out/modules.safetensors", r->dir);
    assert_int_equal(graft_trainer_load(fin, path), GRAFT_OK);
    graft_scope_t *a = k ? graft_trainer_task_scope(init, 0) : graft_trainer_shared_scope(init);
    graft_scope_t *b = k ? graft_trainer_task_scope(fin, 0) : graft_trainer_shared_scope(fin);
    assert_true(a->numel > 0);
    double sum = 0.0;
    for (size_t i = 0; i < a->numel; i++) sum += (double)b->params[i] - a->params[i];
    double mean = sum / (double)a->numel;
    graft_trainer_destroy(&init);
    graft_trainer_destroy(&fin);
    return mean;
}

/* Both scopes of the one-round run moved by `want` on average. */
static void expect_shift(const fake_run_t *r, double want) {
    for (int k = 0; k < 2; k++) {
        double got = scope_shift(r, k);
        if (fabs(got - want) > 1e-4)
            fprintf(stdout, "scope %d moved by %.4f, expected %.4f\n", k, got, want);
        assert_true(fabs(got - want) <= 1e-4);
    }
}

/* Fake workers a and b (ends 1 and 2) say hello and are sent round 1. */
static void fake_pair_join(fake_run_t *r, fake_t *a, fake_t *b, graft_msg_t *rs_a,
                           graft_msg_t *rs_b) {
    *a = (fake_t){r->ends[1], "a", &r->cfg, 0, 0};
    *b = (fake_t){r->ends[2], "b", &r->cfg, 0, 0};
    fake_hello(a);
    fake_hello(b);
    assert_int_equal(fake_next(a, GRAFT_MSG_ROUND_START, 30000, rs_a, NULL), 0);
    assert_int_equal(fake_next(b, GRAFT_MSG_ROUND_START, 30000, rs_b, NULL), 0);
}

/* f waits for the shutdown (counting what it skips on the way in
 * skipped[type]), then the coordinator is joined; frees rs_a and rs_b. */
static void fake_run_finish(fake_run_t *r, fake_t *f, int *skipped, graft_msg_t *rs_a,
                            graft_msg_t *rs_b) {
    graft_msg_t m;
    assert_int_equal(fake_next(f, GRAFT_MSG_SHUTDOWN, 30000, &m, skipped), 0);
    graft_msg_free(&m);
    graft_msg_free(rs_a);
    graft_msg_free(rs_b);
    fake_run_join(r);
}

/* The update of a personalised run's worker: the shared scope only (the
 * first tensor of round start rs), moved by delta. */
static void fake_reply_shared(fake_t *f, const graft_msg_t *rs, float delta) {
    graft_msg_t one = *rs;
    one.round_start.ntensors = 1;
    fake_reply(f, &one, delta, 32);
}

/* --personalize: round 1 carries the task scope, round 2 (after the
 * worker's update) only the shared one, and an update with the task scope
 * is refused; a worker that says it lacks its task scope (GRAFT_ESHAPE) is
 * sent the round again with it; the task scope never moves. */
static void test_personal_task_scopes(void **state) {
    (void)state;
    fake_run_t r;
    fake_run_config(&r, 1);
    r.cfg.rounds = 2;
    r.cfg.personalize = 1;
    r.cfg.round_timeout_ms = 300; /* the final evaluation waits for no answer */
    r.ca.co.expected_workers = 1;
    fake_run_start(&r);
    fake_t a = {r.ends[1], "a", &r.cfg, 0, 0};
    fake_hello(&a);
    graft_msg_t rs, err = {.type = GRAFT_MSG_ERROR};
    assert_int_equal(fake_next(&a, GRAFT_MSG_ROUND_START, 30000, &rs, NULL), 0);
    assert_int_equal(rs.round_start.ntensors, 2);
    assert_string_equal(rs.round_start.tensors[1].name, "task.cls");
    fake_reply(&a, &rs, 0.5f, 32); /* both scopes back: refused */
    fake_reply_shared(&a, &rs, 0.5f);
    graft_msg_free(&rs);
    assert_int_equal(fake_next(&a, GRAFT_MSG_ROUND_START, 30000, &rs, NULL), 0);
    assert_int_equal(rs.round_start.round, 2);
    assert_int_equal(rs.round_start.ntensors, 1);
    graft_msg_free(&rs);
    err.run_id = a.run_id;
    err.error = (graft_wire_error_t){.code = GRAFT_ESHAPE, .message = "lacks task.cls"};
    send_update(a.tp, &err);
    assert_int_equal(fake_next(&a, GRAFT_MSG_ROUND_START, 30000, &rs, NULL), 0);
    assert_int_equal(rs.round_start.round, 2);
    assert_int_equal(rs.round_start.ntensors, 2);
    fake_reply_shared(&a, &rs, 0.5f);
    graft_msg_t m;
    assert_int_equal(fake_next(&a, GRAFT_MSG_SHUTDOWN, 30000, &m, NULL), 0);
    graft_msg_free(&m);
    graft_msg_free(&rs);
    fake_run_join(&r);
    assert_int_equal(count_lines(r.dir, "stderr.log", "tensor .task.cls. is not a scope this "
                                 "worker sends back.*task scopes stay on it"), 1);
    assert_int_equal(count_lines(r.dir, "stderr.log", "round 2: sent the round again to worker "
                                 "1 .a. with its task scopes"), 1);
    assert_true(fabs(scope_shift(&r, 0) - 1.0) <= 1e-4); /* two rounds of +0.5 */
    assert_true(fabs(scope_shift(&r, 1)) <= 1e-7);
    remove_dir(r.dir);
}

/* b replied +1 twice and a -1: the round kept b's first update only, so it
 * has 2 replies and the modules did not move; b was not sent the round
 * again (skipped: what b skipped after the first update) and its second
 * update was refused. */
static void expect_b_counted_once(const fake_run_t *r, const int *skipped) {
    assert_int_equal(r->ca.rc, GRAFT_OK);
    expect_shift(r, 0.0);
    assert_int_equal(count_lines(r->dir, "out/events.jsonl",
                                 "\"participants\":\\[\"a\",\"b\"\\].*\"replies\":2"), 1);
    assert_int_equal(skipped[GRAFT_MSG_ROUND_START], 0);
    assert_int_equal(count_lines(r->dir, "stderr.log", ".b. already contributed to round 1"), 1);
}

/* Worker b replies +1, goes silent until the coordinator loses it, says
 * hello again mid-round and (as a worker that forgot it replied would)
 * sends a second +1; a replies -1. The coordinator keeps b's first update
 * only: the round has 2 replies and the modules did not move. */
static void test_rejoined_worker_counted_once(void **state) {
    (void)state;
    fake_run_t r;
    fake_run_config(&r, 2);
    r.cfg.heartbeat_ms = 100; /* lost after 500 ms */
    fake_run_start(&r);
    fake_t a, b;
    graft_msg_t rs_a, rs_b, m;
    fake_pair_join(&r, &a, &b, &rs_a, &rs_b);
    fake_reply(&b, &rs_b, 1.0f, 32);
    /* b's heartbeat is answered with "send hello" once it is lost. */
    int lost = 0;
    for (int tries = 0; !lost && tries < 20; tries++) {
        fake_beat_for(&a, 700);
        fake_beat(&b);
        lost = fake_next(&b, GRAFT_MSG_ERROR, 100, &m, NULL) == 0;
        if (lost) graft_msg_free(&m);
    }
    int skipped[GRAFT_MSG_ERROR + 1] = {0};
    if (lost) {
        fake_hello(&b);
        assert_int_equal(fake_next(&b, GRAFT_MSG_ASSIGN, 30000, &m, skipped), 0);
        graft_msg_free(&m);
        fake_reply(&b, &rs_b, 1.0f, 32);
    }
    fake_reply(&a, &rs_a, -1.0f, 32);
    fake_run_finish(&r, &b, skipped, &rs_a, &rs_b);

    assert_true(lost);
    expect_b_counted_once(&r, skipped);
    assert_int_equal(count_lines(r.dir, "out/events.jsonl", "\"event\":\"worker_lost\""), 1);
    remove_dir(r.dir);
}

/* The same with b's second update from another connection under b's name
 * (another process started with the same --name): still one update. */
static void test_same_name_new_peer_counted_once(void **state) {
    (void)state;
    fake_run_t r;
    fake_run_config(&r, 3);
    fake_run_start(&r);
    fake_t a, b, b2 = {r.ends[3], "b", &r.cfg, 0, 0};
    graft_msg_t rs_a, rs_b, m;
    fake_pair_join(&r, &a, &b, &rs_a, &rs_b);
    fake_reply(&b, &rs_b, 1.0f, 32);
    fake_hello(&b2);
    int skipped[GRAFT_MSG_ERROR + 1] = {0};
    assert_int_equal(fake_next(&b2, GRAFT_MSG_ASSIGN, 30000, &m, skipped), 0);
    graft_msg_free(&m);
    fake_reply(&b2, &rs_b, 1.0f, 32);
    fake_reply(&a, &rs_a, -1.0f, 32);
    fake_run_finish(&r, &b2, skipped, &rs_a, &rs_b);

    expect_b_counted_once(&r, skipped);
    assert_int_equal(count_lines(r.dir, "stderr.log", "worker .b. re-registered"), 1);
    remove_dir(r.dir);
}

/* a claims 2^20 samples in its update, b 32; both said 32 train examples
 * in their hello, which is what weighs: the shared scope (like the task
 * scope) is the plain mean of +1 and -1, and so is the round's loss. */
static void test_claimed_sample_count_ignored(void **state) {
    (void)state;
    fake_run_t r;
    fake_run_config(&r, 2);
    fake_run_start(&r);
    fake_t a, b;
    graft_msg_t rs_a, rs_b;
    fake_pair_join(&r, &a, &b, &rs_a, &rs_b);
    fake_reply(&a, &rs_a, 1.0f, (uint64_t)1 << 20);
    fake_reply(&b, &rs_b, -1.0f, 32);
    fake_run_finish(&r, &a, NULL, &rs_a, &rs_b);

    assert_int_equal(r.ca.rc, GRAFT_OK);
    expect_shift(&r, 0.0);
    assert_int_equal(count_lines(r.dir, "out/events.jsonl", "\"train_loss\":1\\.0,"), 1);
    remove_dir(r.dir);
}

/* The only worker drops its round start (as it does one with deadline_ms
 * 0, or one lost on the way) and keeps beating: at the deadline the
 * coordinator sends it the round once more, instead of waiting for
 * --stall_timeout_ms, and the run completes. */
static void test_unanswered_round_start_resent(void **state) {
    (void)state;
    fake_run_t r;
    fake_run_config(&r, 1);
    r.cfg.round_timeout_ms = 300;
    r.ca.co.expected_workers = 1;
    r.ca.co.stall_timeout_ms = 4000;
    fake_run_start(&r);
    fake_t a = {r.ends[1], "a", &r.cfg, 0, 0};
    graft_msg_t rs;
    fake_hello(&a);
    assert_int_equal(fake_next(&a, GRAFT_MSG_ROUND_START, 30000, &rs, NULL), 0);
    graft_msg_free(&rs); /* dropped */
    int again = fake_next(&a, GRAFT_MSG_ROUND_START, 3000, &rs, NULL);
    int skipped[GRAFT_MSG_ERROR + 1] = {0};
    if (again == 0) {
        assert_true(rs.round_start.deadline_ms >= 1);
        fake_reply(&a, &rs, 0.5f, 32);
        fake_run_finish(&r, &a, skipped, &rs, NULL);
    } else {
        fake_run_join(&r);
    }

    assert_int_equal(again, 0);
    assert_int_equal(r.ca.rc, GRAFT_OK);
    assert_int_equal(skipped[GRAFT_MSG_ROUND_START], 0); /* once more, not a flood */
    assert_int_equal(count_lines(r.dir, "stderr.log", "round 1: sent the round again to worker "
                                                      "1 .a."), 1);
    expect_shift(&r, 0.5);
    remove_dir(r.dir);
}

/* Global steps are ints: --rounds x --local_steps above INT_MAX is refused
 * (naming both), up to it is fine, and --local_steps (a learning rate per
 * step in every round start) stops at 100000. */
static void test_step_counts_bounded(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX", log[300];
    assert_non_null(mkdtemp(dir));
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    graft_run_config_t cfg;
    base_config(&cfg, dir, "cls:classification:/tmp/cls.tsv");
    cfg.rounds = 21475;
    cfg.local_steps = 100000;
    capture_begin(log);
    assert_int_equal(graft_coordinator_check(&cfg, 1), GRAFT_EINVAL);
    capture_end_expect("--rounds 21475 x --local_steps 100000 is 2147500000 steps");
    cfg.rounds = 21474;
    assert_int_equal(graft_coordinator_check(&cfg, 1), GRAFT_OK);
    capture_begin(log);
    assert_int_equal(graft_options_set(graft_run_options, &cfg, "local_steps", "100001", "test"),
                     GRAFT_EINVAL);
    capture_end_expect("'100001' for option 'local_steps' is not a whole number in [1, 100000]");
    remove_dir(dir);
}

/* ---- the worker's side ------------------------------------------------------ */

static void send_to_worker(graft_transport_t *t, graft_msg_t *m) {
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(m, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    assert_int_equal(graft_transport_send(t, 1, buf, len), GRAFT_OK);
    free(buf);
}

/* From the next message of `type` from the worker (others skipped): an
 * Update's round or a Heartbeat's unix_ms; 0 when none comes within 10 s. */
static uint64_t next_from_worker(graft_transport_t *t, graft_msg_type_t type) {
    for (;;) {
        graft_msg_t m;
        if (recv_message(t, 10000, &m)) return 0;
        uint64_t v = m.type != type                 ? 0
                     : type == GRAFT_MSG_HEARTBEAT ? m.heartbeat.unix_ms
                                                   : m.update.round;
        graft_msg_free(&m);
        if (v) return v;
    }
}

static uint64_t next_update_round(graft_transport_t *t) {
    return next_from_worker(t, GRAFT_MSG_UPDATE);
}

/* Plays the coordinator of run 42 to the worker on end t's peer 1: reads
 * its hello and assigns it task cls. */
static void assign_run_42(graft_transport_t *t) {
    int peer;
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_transport_recv(t, &peer, &buf, &len, 60000), GRAFT_OK);
    free(buf); /* the hello */
    char *names[] = {"cls"}, *labels[] = {"even", "odd"};
    graft_wire_label_set_t set = {"cls", labels, 2, NULL};
    graft_msg_t a = {.type = GRAFT_MSG_ASSIGN, .run_id = 42};
    a.assign = (graft_wire_assign_t){.worker_id = 1, .tasks = names, .ntasks = 1,
                                     .label_sets = &set, .nlabel_sets = 1};
    send_to_worker(t, &a);
}

/* This thread plays the coordinator to a real worker: a round start whose
 * global steps pass INT_MAX (round 2^40), then round 1's start twice (as a
 * restarted coordinator flooded with hellos once did), then round 2's, with
 * another --batch and a 1 ms deadline. The worker drops the first, trains
 * round 1 once: its updates are for rounds 1 and 2, and it logs the drops,
 * the batch (once) and the missed deadline. Its heartbeats carry the wall
 * clock. */
static void test_repeated_round_start_dropped(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    graft_run_config_t cfg;
    one_task_run(dir, &cfg);
    cfg.heartbeat_ms = 50;
    graft_trainer_t *tr = NULL;
    assert_int_equal(graft_trainer_new(&cfg, &tr), GRAFT_OK);
    int saved = stderr_to_log(dir);
    graft_transport_t *ends[2];
    assert_int_equal(graft_transport_inproc_new(1, ends), GRAFT_OK);
    worker_arg_t wa = {.wo = {.cfg = cfg, .name = "real", .shard_count = 1, .tp = ends[1]}};
    pthread_t wt;
    pthread_create(&wt, NULL, worker_main, &wa);
    assign_run_42(ends[0]);
    graft_scope_t *scopes[2] = {graft_trainer_shared_scope(tr), graft_trainer_task_scope(tr, 0)};
    graft_wire_tensor_t ts[2];
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        if (scopes[k]->numel)
            ts[n++] = (graft_wire_tensor_t){.name = scopes[k]->name, .ndim = 1,
                                            .shape = {(int64_t)scopes[k]->numel},
                                            .data = scopes[k]->params, .numel = scopes[k]->numel};
    graft_msg_t rs = {.type = GRAFT_MSG_ROUND_START, .run_id = 42};
    rs.round_start = (graft_wire_round_start_t){.round = 1, .tensors = ts, .ntensors = n,
                                                .deadline_ms = 30000};
    rs.round_start.hyper = (graft_wire_hyper_t){.learning_rate = 1e-3f, .local_steps = 2,
                                                .batch_size = 4, .head_lr_scale = 1.0f};
    rs.round_start.round = (uint64_t)1 << 40;
    send_to_worker(ends[0], &rs);
    rs.round_start.round = 1;
    send_to_worker(ends[0], &rs);
    send_to_worker(ends[0], &rs);
    rs.round_start.round = 2;
    rs.round_start.deadline_ms = 1;
    rs.round_start.hyper.local_steps = 200; /* well past 1 ms, even at -O3 */
    rs.round_start.hyper.batch_size = 8;
    send_to_worker(ends[0], &rs);
    uint64_t first = next_update_round(ends[0]), second = next_update_round(ends[0]);
    uint64_t beat_ms = next_from_worker(ends[0], GRAFT_MSG_HEARTBEAT), now_ms = (uint64_t)time(NULL) * 1000u;
    graft_msg_t sd = {.type = GRAFT_MSG_SHUTDOWN, .run_id = 42};
    sd.shutdown = (graft_wire_shutdown_t){.reason = "run complete", .run_complete = 1};
    send_to_worker(ends[0], &sd);
    pthread_join(wt, NULL);
    for (int i = 0; i < 2; i++) graft_transport_destroy(&ends[i]);
    stderr_back(saved);
    graft_trainer_destroy(&tr);

    assert_int_equal(wa.rc, GRAFT_OK);
    assert_int_equal(first, 1);
    assert_int_equal(second, 2);
    assert_true(beat_ms + 60000u > now_ms && beat_ms < now_ms + 60000u); /* not monotonic */
    assert_int_equal(count_lines(dir, "stderr.log", "the run.s --batch is 8, this worker.s 4"), 1);
    assert_int_equal(count_lines(dir, "stderr.log", "round 2: local training took .* past the "
                                                    "round.s deadline"), 1);
    assert_int_equal(count_lines(dir, "stderr.log", "round 1: local training took"), 0);
    assert_int_equal(count_lines(dir, "stderr.log", "dropping a repeated round_start for round 1"),
                     1);
    assert_int_equal(count_lines(dir, "stderr.log", "dropping round_start 1099511627776: 2 local "
                                                    "steps per round take it past global step"),
                     1);
    remove_dir(dir);
}

/* The run id digests the settings that define the job, not the
 * operational ones a resumed coordinator may change. */
static void test_run_id_digests_the_job(void **state) {
    (void)state;
    graft_run_config_t base, cfg;
    base_config(&base, "/tmp", "cls:classification:/tmp/cls.tsv");
    uint64_t id = graft_run_id(&base);
    const char *same[][2] = {
        {"heartbeat_ms", "200"}, {"round_timeout_ms", "5000"}, {"min_replies", "2"},
        {"eval_every_rounds", "2"}, {"checkpoint_every_rounds", "4"}, {"log_every", "3"},
        {"eval_max", "9"}, {"threads", "2"}, {"precision", "bf16"}, {"out", "/tmp/x"},
        {"resume", "/tmp/x/modules.safetensors"}, {"lora_gap", "true"},
        {"mpi_collectives", "false"}, {"steps", "7"}, {"log_level", "debug"}};
    const char *other[][2] = {
        {"lr", "1e-3"}, {"seed", "7"}, {"rounds", "4"}, {"local_steps", "3"},
        {"method", "adapter"}, {"lora_task_rank", "2"}, {"batch", "8"}, {"aggregate", "fedadam"},
        {"tasks", "cls:classification:/tmp/other.tsv"}, {"shared_weight", "task"}};
    for (size_t i = 0; i < sizeof same / sizeof *same + sizeof other / sizeof *other; i++) {
        int kept = i < sizeof same / sizeof *same;
        const char *const *kv = kept ? same[i] : other[i - sizeof same / sizeof *same];
        cfg = base;
        assert_int_equal(graft_options_set(graft_run_options, &cfg, kv[0], kv[1], "test"),
                         GRAFT_OK);
        if ((graft_run_id(&cfg) == id) != kept)
            fprintf(stdout, "--%s %s %s the run id\n", kv[0], kv[1], kept ? "changed" : "kept");
        assert_int_equal(graft_run_id(&cfg) == id, kept);
    }
    /* Personalisation changes the job, and so does where it starts; off, it
     * leaves the id as the releases before it computed it (graft 0.2.0's id
     * of this job, pinned). */
    assert_int_equal(id, 0xe797129e6bfcf7e2ull);
    cfg = base;
    cfg.personalize = 1;
    uint64_t personal = graft_run_id(&cfg);
    cfg.personal_from = 2;
    assert_true(personal != id && graft_run_id(&cfg) != personal && graft_run_id(&cfg) != id);
}

/* Waits up to `seconds` for the coordinator thread ct to finish (else
 * stops it and the worker thread wt: the worker never joined), joins both;
 * returns whether it had finished. */
static int join_run(coord_arg_t *ca, pthread_t ct, pthread_t wt, volatile sig_atomic_t *stop,
                    int seconds) {
    for (int i = 0; i < 20 * seconds && !__atomic_load_n(&ca->done, __ATOMIC_SEQ_CST); i++)
        usleep(50000);
    int done = __atomic_load_n(&ca->done, __ATOMIC_SEQ_CST);
    if (!done) {
        graft_coordinator_stop = SIGTERM;
        *stop = 1;
    }
    pthread_join(ct, NULL);
    pthread_join(wt, NULL);
    graft_coordinator_stop = 0;
    return done;
}

/* A coordinator restarted with other job settings has another run id. A
 * worker registered under the old one (played here: its Assign said run
 * 42) joins the new run at once — its heartbeats are answered with an
 * error, it says hello and takes the new run's Assign — rather than after
 * its silence timer (3 x round_timeout_ms = 90 s) or never. */
static void test_worker_follows_new_run(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    graft_run_config_t cfg;
    one_task_run(dir, &cfg);
    cfg.rounds = 1;
    cfg.heartbeat_ms = 100;
    int saved = stderr_to_log(dir);
    graft_transport_t *ends[2];
    assert_int_equal(graft_transport_inproc_new(1, ends), GRAFT_OK);
    volatile sig_atomic_t stop = 0;
    worker_arg_t wa = {.wo = {.cfg = cfg, .name = "real", .shard_count = 1, .tp = ends[1]},
                       .stop = &stop};
    pthread_t wt, ct;
    pthread_create(&wt, NULL, worker_main, &wa);
    assign_run_42(ends[0]);
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 1, .tp = ends[0], .mode = "inproc"}};
    pthread_create(&ct, NULL, coord_main, &ca);
    int done = join_run(&ca, ct, wt, &stop, 15);
    for (int i = 0; i < 2; i++) graft_transport_destroy(&ends[i]);
    stderr_back(saved);

    assert_true(done);
    assert_int_equal(ca.rc, GRAFT_OK);
    assert_int_equal(wa.rc, GRAFT_OK);
    assert_true(count_lines(dir, "stderr.log", "is from run 000000000000002a") >= 1);
    assert_int_equal(count_lines(dir, "out/events.jsonl", "\"event\":\"worker_join\""), 1);
    remove_dir(dir);
}

/* Over ZeroMQ, CHURN > MAX_PEERS (1024) distinct identities each send a
 * heartbeat of another run, are told to say hello and go away; then a real
 * worker joins and the run completes. The coordinator forgets each
 * stranger's peer, so the worker's id is small; before it did, stranger
 * 1024 got no answer (its peer id was out of range). */
static void test_churn_beyond_max_peers(void **state) {
    (void)state;
    enum { CHURN = 1100 };
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    graft_run_config_t cfg;
    one_task_run(dir, &cfg);
    cfg.rounds = 1;
    cfg.heartbeat_ms = 200;
    int saved = stderr_to_log(dir);
    graft_zmq_opts_t so = {.endpoint = "tcp://127.0.0.1:*"};
    graft_transport_t *srv = NULL;
    assert_int_equal(graft_transport_zmq_server(&so, &srv), GRAFT_OK);
    const char *ep = graft_transport_zmq_endpoint(srv);
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 1, .tp = srv, .mode = "zmq"}};
    pthread_t ct, wt;
    pthread_create(&ct, NULL, coord_main, &ca);
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = 42};
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(&hb, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    void *ctx = zmq_ctx_new();
    int answered = 0, ms = 10000;
    for (int i = 0; i == answered && i < CHURN; i++) {
        char id[32], reply[512];
        snprintf(id, sizeof id, "stranger-%d", i);
        void *s = zmq_socket(ctx, ZMQ_DEALER);
        zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id));
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms);
        zmq_connect(s, ep);
        zmq_send(s, buf, len, 0);
        answered += zmq_recv(s, reply, sizeof reply, 0) > 0; /* "send hello" */
        zmq_close(s);
    }
    zmq_ctx_term(ctx);
    free(buf);
    if (answered < CHURN) fprintf(stdout, "stranger %d got no answer\n", answered);
    graft_zmq_opts_t wo = {.endpoint = ep, .identity = "real"};
    graft_transport_t *cli = NULL;
    assert_int_equal(graft_transport_zmq_client(&wo, &cli), GRAFT_OK);
    volatile sig_atomic_t stop = 0;
    worker_arg_t wa = {.wo = {.cfg = cfg, .name = "real", .shard_count = 1, .tp = cli},
                       .stop = &stop};
    pthread_create(&wt, NULL, worker_main, &wa);
    int done = join_run(&ca, ct, wt, &stop, 30);
    graft_transport_destroy(&cli);
    graft_transport_destroy(&srv);
    stderr_back(saved);

    assert_int_equal(answered, CHURN);
    assert_true(done);
    assert_int_equal(ca.rc, GRAFT_OK);
    assert_int_equal(wa.rc, GRAFT_OK);
    assert_int_equal(count_lines(dir, "stderr.log", "out of range"), 0);
    assert_int_equal(count_lines(dir, "out/events.jsonl", "\"event\":\"worker_join\""), 1);
    remove_dir(dir);
}

int main(void) {
    /* Coordinator and worker share this process: one thread each, so that
     * their OpenMP teams do not fight over the cores. */
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_messages_dropped),
        cmocka_unit_test(test_assignment_by_holdings),
        cmocka_unit_test(test_unworkable_settings_refused),
        cmocka_unit_test(test_hello_identity),
        cmocka_unit_test(test_hello_features),
        cmocka_unit_test(test_personal_task_scopes),
        cmocka_unit_test(test_repeated_round_start_dropped),
        cmocka_unit_test(test_rejoined_worker_counted_once),
        cmocka_unit_test(test_same_name_new_peer_counted_once),
        cmocka_unit_test(test_claimed_sample_count_ignored),
        cmocka_unit_test(test_unanswered_round_start_resent),
        cmocka_unit_test(test_step_counts_bounded),
        cmocka_unit_test(test_run_id_digests_the_job),
        cmocka_unit_test(test_worker_follows_new_run),
        cmocka_unit_test(test_churn_beyond_max_peers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
