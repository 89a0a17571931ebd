/* test_coordinator.c — the coordinator under bad input, in one process over
 * the inproc transport: a real worker (graft_worker_run) on one thread, the
 * coordinator on another, and this thread playing a second worker that
 * answers every round with garbage, a truncated message, an oversized one,
 * a wrong round, a NaN value, an unknown tensor, a wrong shape and a sparse
 * scope before its real update. Every bad message must be dropped with a
 * logged reason naming the peer, the run must complete with both workers in
 * every round, and the modules must stay finite. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "coordinator.h"
#include "safetensors.h"
#include "wire.h"
#include "worker.h"

#define ROUNDS 3
#define MARK 12345.678f

typedef struct {
    graft_coordinator_opts_t co;
    int rc;
} coord_arg_t;

typedef struct {
    graft_worker_opts_t wo;
    int rc;
} worker_arg_t;

static void *coord_main(void *p) {
    coord_arg_t *a = p;
    a->rc = graft_coordinator_run(&a->co);
    return NULL;
}

static void *worker_main(void *p) {
    worker_arg_t *a = p;
    a->rc = graft_worker_run(&a->wo, NULL);
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
    send_update(t, &u);                                 /* the real one */
}

/* Plays worker 2: hello, then answers rounds until shutdown. */
static int fake_worker(graft_transport_t *t) {
    graft_wire_shard_t shard = {.task = "cls", .kind = GRAFT_KIND_CLASSIFICATION,
                                .train_examples = 32, .test_examples = 8};
    graft_msg_t h = {.type = GRAFT_MSG_HELLO};
    h.hello = (graft_wire_hello_t){.version = "test", .name = "fake", .shards = &shard,
                                   .nshards = 1};
    send_update(t, &h);
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
            answer_round(t, run_id, &m);
            rounds++;
        }
        int done = m.type == GRAFT_MSG_SHUTDOWN;
        graft_msg_free(&m);
        if (done) return rounds;
    }
}

static void test_bad_messages_dropped(void **state) {
    (void)state;
    char dir[] = "/tmp/graft_test_coordinator_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_tasks(dir);
    graft_run_config_t cfg;
    char *argv[] = {"test", NULL};
    assert_int_equal(graft_options_parse(graft_run_options, &cfg, 1, argv, ""), GRAFT_OPTS_OK);
    snprintf(cfg.preset, sizeof cfg.preset, "tiny");
    snprintf(cfg.tasks, sizeof cfg.tasks, "cls:classification:%s/cls.tsv", dir);
    snprintf(cfg.out, sizeof cfg.out, "%s/out", dir);
    cfg.seq = 16;
    cfg.batch = 4;
    cfg.rounds = ROUNDS;
    cfg.local_steps = 2;
    cfg.eval_max = 8;
    cfg.heartbeat_ms = 10000; /* the fake worker sends no heartbeats */
    cfg.round_timeout_ms = 30000;

    char log[300];
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    fflush(stderr);
    int saved = dup(2);
    assert_non_null(freopen(log, "w", stderr));

    graft_transport_t *ends[3];
    assert_int_equal(graft_transport_inproc_new(2, ends), GRAFT_OK);
    coord_arg_t ca = {.co = {.cfg = cfg, .expected_workers = 2, .tp = ends[0], .mode = "inproc"}};
    worker_arg_t wa = {.wo = {.cfg = cfg, .name = "real", .shard_count = 1, .tp = ends[1]}};
    pthread_t ct, wt;
    pthread_create(&ct, NULL, coord_main, &ca);
    pthread_create(&wt, NULL, worker_main, &wa);
    int rounds = fake_worker(ends[2]);
    pthread_join(ct, NULL);
    pthread_join(wt, NULL);
    for (int i = 0; i < 3; i++) graft_transport_destroy(&ends[i]);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    assert_int_equal(ca.rc, GRAFT_OK);
    assert_int_equal(wa.rc, GRAFT_OK);
    assert_int_equal(rounds, ROUNDS);
    /* Every round ended with both workers; each bad message was logged. */
    char cmd[600], out[64];
    const char *greps[] = {"\"replies\":2", "dropping a message from", "wrong round|round 10|round 8|round 9",
                           "NaN|not finite", "nope", "shape", "is sparse"};
    const char *files[] = {"out/events.jsonl", "stderr.log", "stderr.log", "stderr.log",
                           "stderr.log", "stderr.log", "stderr.log"};
    int want[] = {ROUNDS, 3 * ROUNDS, 1, 1, 1, 1, 1};
    for (int i = 0; i < 7; i++) {
        snprintf(cmd, sizeof cmd, "grep -Eci '%s' %s/%s", greps[i], dir, files[i]);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        assert_non_null(fgets(out, sizeof out, p));
        pclose(p);
        if (atoi(out) < want[i]) fprintf(stdout, "pattern '%s' in %s: %d < %d\n", greps[i],
                                         files[i], atoi(out), want[i]);
        assert_true(atoi(out) >= want[i]);
    }
    /* The checkpoint of the aggregated modules was written and reads back. */
    char ckpt[300];
    snprintf(ckpt, sizeof ckpt, "%s/out/modules.safetensors", dir);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(ckpt, &f), GRAFT_OK);
    graft_st_close(&f);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    /* Coordinator and worker share this process: one thread each, so that
     * their OpenMP teams do not fight over the cores. */
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_messages_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
