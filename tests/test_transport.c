/* test_transport.c — the in-process and ZeroMQ transports with real threads
 * and real sockets on loopback, CurveZMQ admission by allow-list, the failed
 * handshakes the server reports (a key off the list, another server key),
 * and the key files. (The MPI transport runs under mpirun:
 * test_transport_mpi.c.) */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "capture.h"
#include "keys.h"
#include "transport.h"
#include "wire.h"

#define NWORKERS 3

/* What one worker thread saw; checked on the main thread (cmocka asserts are
 * not for other threads). */
typedef struct {
    graft_transport_t *t; /* inproc: the worker's end */
    const char *endpoint; /* zmq: where to connect */
    const char *identity;
    const graft_keypair_t *keypair;
    const graft_key_t *server_key;
    int idx, nsend, recv_timeout_ms;
    int open_rc, send_rc, recv_rc, peer;
    char got[64];
} worker_t;

/* Sends nsend "from IDX #k" messages to peer 0 and waits for one reply. */
static void worker_exchange(worker_t *w) {
    for (int k = 0; k < w->nsend; k++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "from %d #%d", w->idx, k) + 1;
        int rc = graft_transport_send(w->t, 0, msg, (size_t)n);
        if (rc) w->send_rc = rc;
    }
    uint8_t *buf;
    size_t len;
    w->recv_rc = graft_transport_recv(w->t, &w->peer, &buf, &len, w->recv_timeout_ms);
    if (w->recv_rc == GRAFT_OK) {
        snprintf(w->got, sizeof w->got, "%.*s", (int)len, (const char *)buf);
        free(buf);
    }
}

static void *inproc_worker(void *p) {
    worker_exchange(p);
    return NULL;
}

static void *zmq_worker(void *p) {
    worker_t *w = p;
    graft_zmq_opts_t o = {.endpoint = w->endpoint, .identity = w->identity,
                          .keypair = w->keypair, .server_key = w->server_key,
                          .reconnect_ivl_ms = 50, .reconnect_ivl_max_ms = 500};
    w->open_rc = graft_transport_zmq_client(&o, &w->t);
    if (w->open_rc == GRAFT_OK) worker_exchange(w);
    graft_transport_destroy(&w->t);
    return NULL;
}

/* The coordinator's half: receives `expect` messages "from IDX #k", checks
 * that each worker keeps one peer id, and answers every worker "to IDX" on the
 * peer its messages came from. peer_of[idx] is filled in. */
static void serve(graft_transport_t *t, int nworkers, int expect, int *peer_of) {
    for (int i = 0; i < nworkers; i++) peer_of[i] = -1;
    for (int m = 0; m < expect; m++) {
        int peer, idx, k;
        uint8_t *buf;
        size_t len;
        assert_int_equal(graft_transport_recv(t, &peer, &buf, &len, 10000), GRAFT_OK);
        assert_int_equal(sscanf((const char *)buf, "from %d #%d", &idx, &k), 2);
        assert_int_equal(strlen((const char *)buf) + 1, len);
        free(buf);
        assert_true(idx >= 0 && idx < nworkers && peer >= 1);
        if (peer_of[idx] < 0) peer_of[idx] = peer;
        assert_int_equal(peer_of[idx], peer);
        assert_string_not_equal(graft_transport_peer_name(t, peer), "unknown peer");
    }
    for (int i = 0; i < nworkers; i++) {
        assert_true(peer_of[i] >= 1);
        for (int j = 0; j < i; j++) assert_int_not_equal(peer_of[i], peer_of[j]);
        char msg[32];
        int n = snprintf(msg, sizeof msg, "to %d", i) + 1;
        assert_int_equal(graft_transport_send(t, peer_of[i], msg, (size_t)n), GRAFT_OK);
    }
}

static void expect_delivered(const worker_t *w) {
    char want[32];
    snprintf(want, sizeof want, "to %d", w->idx);
    assert_int_equal(w->open_rc, GRAFT_OK);
    assert_int_equal(w->send_rc, GRAFT_OK);
    assert_int_equal(w->recv_rc, GRAFT_OK);
    assert_int_equal(w->peer, 0);
    assert_string_equal(w->got, want);
}

/* ---- inproc ------------------------------------------------------------- */

static void test_inproc(void **state) {
    (void)state;
    graft_transport_t *ends[NWORKERS + 1];
    assert_int_equal(graft_transport_inproc_new(NWORKERS, ends), GRAFT_OK);
    worker_t w[NWORKERS];
    pthread_t th[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) {
        w[i] = (worker_t){.t = ends[i + 1], .idx = i, .nsend = 3, .recv_timeout_ms = 10000};
        pthread_create(&th[i], NULL, inproc_worker, &w[i]);
    }
    int peer_of[NWORKERS];
    serve(ends[0], NWORKERS, 3 * NWORKERS, peer_of);
    for (int i = 0; i < NWORKERS; i++) {
        pthread_join(th[i], NULL);
        expect_delivered(&w[i]);
        assert_int_equal(peer_of[i], i + 1);
    }
    assert_string_equal(graft_transport_peer_name(ends[0], 2), "worker 2");
    assert_string_equal(graft_transport_peer_name(ends[2], 0), "coordinator");

    /* Timeouts, bad peers, no collectives, and a departed worker. */
    int peer;
    uint8_t *buf;
    size_t len;
    double t0 = graft_now();
    assert_int_equal(graft_transport_recv(ends[0], &peer, &buf, &len, 50), GRAFT_ETIMEOUT);
    assert_true(graft_now() - t0 >= 0.045);
    assert_int_equal(graft_transport_recv(ends[1], &peer, &buf, &len, 0), GRAFT_ETIMEOUT);
    assert_int_equal(graft_transport_send(ends[1], 2, "x", 1), GRAFT_EINVAL);
    assert_int_equal(graft_transport_send(ends[0], NWORKERS + 1, "x", 1), GRAFT_EINVAL);
    int64_t x[2] = {1, 2};
    int g = 5;
    assert_false(graft_transport_has_collectives(ends[0]));
    assert_int_equal(graft_transport_allreduce_i64(ends[0], x, 2, GRAFT_GROUP_WORLD), GRAFT_EINVAL);
    assert_int_equal(graft_transport_split(ends[0], 0, &g), GRAFT_EINVAL);
    assert_int_equal(g, GRAFT_GROUP_NONE);
    graft_transport_destroy(&ends[3]);
    assert_null(ends[3]);
    assert_int_equal(graft_transport_send(ends[0], 3, "x", 1), GRAFT_EPEER);
    assert_int_equal(graft_transport_send(ends[1], 0, "late", 5), GRAFT_OK);
    for (int i = 0; i < NWORKERS; i++) graft_transport_destroy(&ends[i]); /* frees queued "late" */
}

/* ---- ZeroMQ ------------------------------------------------------------- */

static graft_transport_t *zmq_server(const graft_keypair_t *kp, const graft_key_t *allow,
                                     size_t nallow) {
    graft_zmq_opts_t o = {.endpoint = "tcp://127.0.0.1:*", .keypair = kp, .allow = allow,
                          .nallow = nallow};
    graft_transport_t *t = NULL;
    assert_int_equal(graft_transport_zmq_server(&o, &t), GRAFT_OK);
    assert_non_null(strstr(graft_transport_zmq_endpoint(t), "tcp://127.0.0.1:"));
    return t;
}

static void start_workers(worker_t *w, pthread_t *th, int n, const char *endpoint) {
    static const char *ids[] = {"alpha", "beta", "gamma"};
    for (int i = 0; i < n; i++) {
        w[i] = (worker_t){.endpoint = endpoint, .identity = ids[i], .idx = i, .nsend = 2,
                          .recv_timeout_ms = 10000};
        pthread_create(&th[i], NULL, zmq_worker, &w[i]);
    }
}

/* A DEALER of ctx with routing identity id, connected to ep, that has sent
 * "hi" (plain sockets: a churn of many clients is cheap in one context). */
static void *churn_client(void *ctx, const char *ep, const char *id) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id)), 0);
    assert_int_equal(zmq_connect(s, ep), 0);
    assert_int_equal(zmq_send(s, "hi", 3, 0), 3);
    return s;
}

static int recv_peer(graft_transport_t *srv) {
    int peer = -1;
    uint8_t *buf = NULL;
    size_t len;
    assert_int_equal(graft_transport_recv(srv, &peer, &buf, &len, 10000), GRAFT_OK);
    free(buf);
    return peer;
}

/* More distinct identities than the coordinator's 1024 worker slots come
 * and go: each, forgotten, frees its id for the next, so ids stay at 2
 * while peer 1 keeps its own; a forgotten identity that speaks again is a
 * new peer, and sending to a free id fails. Without forget() the ids would
 * have climbed to CHURN + 1. */
static void test_zmq_forget_reuses_ids(void **state) {
    (void)state;
    enum { CHURN = 1100 };
    graft_transport_t *srv = zmq_server(NULL, NULL, 0);
    const char *ep = graft_transport_zmq_endpoint(srv);
    void *ctx = zmq_ctx_new();
    void *keeper = churn_client(ctx, ep, "keeper");
    assert_int_equal(recv_peer(srv), 1);
    void *s = NULL;
    char id[32];
    for (int i = 0; i < CHURN; i++) {
        if (s) zmq_close(s);
        snprintf(id, sizeof id, "churn-%d", i);
        s = churn_client(ctx, ep, id);
        assert_int_equal(recv_peer(srv), 2);
        graft_transport_forget(srv, 2);
    }
    assert_int_equal(graft_transport_send(srv, 2, "x", 2), GRAFT_EPEER);
    assert_string_equal(graft_transport_peer_name(srv, 2), "forgotten peer 2");
    assert_int_equal(zmq_send(s, "hi", 3, 0), 3);
    assert_int_equal(recv_peer(srv), 2); /* the last one again: a newcomer */
    assert_int_equal(graft_transport_send(srv, 2, "to last", 8), GRAFT_OK);
    assert_int_equal(graft_transport_send(srv, 1, "to keeper", 10), GRAFT_OK);
    char got[16] = "";
    assert_int_equal(zmq_recv(keeper, got, sizeof got - 1, 0), 10);
    assert_string_equal(got, "to keeper");
    assert_int_equal(zmq_recv(s, got, sizeof got - 1, 0), 8);
    assert_string_equal(got, "to last");
    graft_transport_forget(srv, 99); /* unknown: nothing happens */
    zmq_close(s);
    zmq_close(keeper);
    zmq_ctx_term(ctx);
    graft_transport_destroy(&srv);
}

static void test_zmq_router_dealers(void **state) {
    (void)state;
    graft_transport_t *srv = zmq_server(NULL, NULL, 0);
    const char *ep = graft_transport_zmq_endpoint(srv);
    worker_t w[NWORKERS];
    pthread_t th[NWORKERS];
    start_workers(w, th, NWORKERS, ep);
    int peer_of[NWORKERS];
    serve(srv, NWORKERS, 2 * NWORKERS, peer_of);
    for (int i = 0; i < NWORKERS; i++) {
        pthread_join(th[i], NULL);
        expect_delivered(&w[i]);
        assert_non_null(strstr(graft_transport_peer_name(srv, peer_of[i]), "127.0.0.1"));
    }
    /* A restarted worker with the same identity takes over its old peer id. */
    worker_t again = {.endpoint = ep, .identity = "beta", .idx = 1, .nsend = 1,
                      .recv_timeout_ms = 10000};
    pthread_t tha;
    pthread_create(&tha, NULL, zmq_worker, &again);
    int peer;
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_transport_recv(srv, &peer, &buf, &len, 10000), GRAFT_OK);
    assert_string_equal((char *)buf, "from 1 #0");
    free(buf);
    assert_int_equal(peer, peer_of[1]);
    assert_int_equal(graft_transport_send(srv, peer, "to 1", 5), GRAFT_OK);
    pthread_join(tha, NULL);
    expect_delivered(&again);

    /* Gone workers: ROUTER_MANDATORY reports them instead of dropping silently. */
    assert_int_equal(graft_transport_send(srv, 0, "x", 1), GRAFT_EINVAL);
    assert_int_equal(graft_transport_send(srv, NWORKERS + 1, "x", 1), GRAFT_EINVAL);
    int rc = GRAFT_OK;
    for (int tries = 0; tries < 300 && rc == GRAFT_OK; tries++) {
        rc = graft_transport_send(srv, peer_of[0], "x", 1);
        if (rc == GRAFT_OK) usleep(10000);
    }
    assert_int_equal(rc, GRAFT_EPEER);
    assert_int_equal(graft_transport_recv(srv, &peer, &buf, &len, 100), GRAFT_ETIMEOUT);
    graft_transport_destroy(&srv);
    assert_null(srv);
}

/* ---- CurveZMQ and key files ---------------------------------------------- */

static char tmpdir[64];

static void path_in(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int setup_tmpdir(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/graft_keys_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The run's message limit over real sockets: both ends set from the bound
 * of the modules they carry (graft_wire_modules_bytes). An update just
 * under it arrives and decodes; a message over it is refused by the sender
 * with an error naming the limit, where the receiver's ZeroMQ would drop it
 * and the connection without a word; the decoder refuses it too. */
static void test_zmq_message_limit(void **state) {
    (void)state;
    size_t numel[1] = {(size_t)1 << 20};
    size_t max = graft_wire_modules_bytes(numel, 1, 0);
    graft_zmq_opts_t so = {.endpoint = "tcp://127.0.0.1:*", .max_msg_bytes = max};
    graft_transport_t *srv = NULL, *cli = NULL;
    assert_int_equal(graft_transport_zmq_server(&so, &srv), GRAFT_OK);
    graft_zmq_opts_t co = {.endpoint = graft_transport_zmq_endpoint(srv), .identity = "big",
                           .max_msg_bytes = max};
    assert_int_equal(graft_transport_zmq_client(&co, &cli), GRAFT_OK);

    float *data = calloc(numel[0], sizeof(float));
    graft_wire_tensor_t t = {.name = "shared", .ndim = 1, .shape = {(int64_t)numel[0]},
                             .data = data, .numel = numel[0]};
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = 7};
    u.update = (graft_wire_update_t){.round = 1, .worker_id = 1, .tensors = &t, .ntensors = 1,
                                     .sample_count = 1, .train_loss = 0.5};
    uint8_t *buf, *got;
    size_t len, glen;
    assert_int_equal(graft_wire_encode(&u, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    assert_true(len <= max && max - len < 8192);
    assert_int_equal(graft_transport_send(cli, 0, buf, len), GRAFT_OK);
    int peer;
    assert_int_equal(graft_transport_recv(srv, &peer, &got, &glen, 10000), GRAFT_OK);
    assert_int_equal(glen, len);
    graft_wire_opts_t wo = {.run_id = 7, .max_bytes = max};
    graft_msg_t d;
    char why[256];
    assert_int_equal(graft_wire_decode(got, glen, &wo, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.update.tensors[0].numel, numel[0]);
    graft_msg_free(&d);
    free(got);

    /* Exactly the limit passes; one byte over, the sender says so instead
     * of sending it, either way. */
    uint8_t *over = calloc(max + 1, 1);
    assert_int_equal(graft_transport_send(cli, 0, over, max), GRAFT_OK);
    assert_int_equal(graft_transport_recv(srv, &peer, &got, &glen, 10000), GRAFT_OK);
    assert_int_equal(glen, max);
    free(got);
    char log[128];
    snprintf(log, sizeof log, "%s/limit.log", tmpdir);
    char want[128];
    snprintf(want, sizeof want, "%zu-byte message to coordinator", max + 1);
    capture_begin(log);
    assert_int_equal(graft_transport_send(cli, 0, over, max + 1), GRAFT_EINVAL);
    capture_end_expect(want);
    snprintf(want, sizeof want, "exceeds the message limit of %zu bytes", max);
    capture_begin(log);
    assert_int_equal(graft_transport_send(srv, peer, over, max + 1), GRAFT_EINVAL);
    capture_end_expect(want);
    snprintf(want, sizeof want, "exceeds the limit of %zu", max);
    assert_int_not_equal(graft_wire_decode(over, max + 1, &wo, &d, why, sizeof why), GRAFT_OK);
    assert_non_null(strstr(why, want));
    /* The connection still works both ways. */
    assert_int_equal(graft_transport_send(srv, peer, buf, len), GRAFT_OK);
    assert_int_equal(graft_transport_recv(cli, &peer, &got, &glen, 10000), GRAFT_OK);
    assert_int_equal(glen, len);
    free(got);
    free(over);
    free(buf);
    free(data);
    graft_transport_destroy(&cli);
    graft_transport_destroy(&srv);
}

static void test_keys(void **state) {
    (void)state;
    char stem[128], path[160];
    path_in(stem, sizeof stem, "node");
    graft_keypair_t kp, back;
    assert_int_equal(graft_keys_generate(stem, 0, &kp), GRAFT_OK);
    assert_true(graft_key_valid(kp.public_key.z85) && graft_key_valid(kp.secret_key.z85));
    snprintf(path, sizeof path, "%s.key", stem);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_non_null(strstr(read_text(path), kp.secret_key.z85));
    assert_int_equal(graft_keys_load(stem, &back), GRAFT_OK);
    assert_string_equal(back.secret_key.z85, kp.secret_key.z85);
    assert_string_equal(back.public_key.z85, kp.public_key.z85);
    snprintf(path, sizeof path, "%s.pub", stem);
    graft_key_t pub;
    assert_int_equal(graft_keys_read_file(path, &pub), GRAFT_OK);
    assert_string_equal(pub.z85, kp.public_key.z85);

    /* No silent replacement; overwriting tightens a loosened mode. */
    assert_int_equal(graft_keys_generate(stem, 0, NULL), GRAFT_EIO);
    snprintf(path, sizeof path, "%s.key", stem);
    chmod(path, 0644);
    assert_int_equal(graft_keys_generate(stem, 1, &back), GRAFT_OK);
    assert_string_not_equal(back.secret_key.z85, kp.secret_key.z85);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* A .pub that does not belong to the .key is caught. */
    snprintf(path, sizeof path, "%s.pub", stem);
    char text[128];
    snprintf(text, sizeof text, "%s\n", kp.public_key.z85);
    write_text(path, text);
    assert_int_equal(graft_keys_load(stem, &back), GRAFT_EFORMAT);

    /* Allow-lists: comments, blanks, trailing notes; bad lines; no file. */
    char allow[160], list[512];
    path_in(allow, sizeof allow, "allow.txt");
    snprintf(list, sizeof list, "# clients\n\n  %s  hospital-1\n%s\n# end\n", kp.public_key.z85,
             back.public_key.z85);
    write_text(allow, list);
    graft_key_t *keys;
    size_t n;
    assert_int_equal(graft_keys_read_allow(allow, &keys, &n), GRAFT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(keys[0].z85, kp.public_key.z85);
    assert_string_equal(keys[1].z85, back.public_key.z85);
    free(keys);
    write_text(allow, "# only a comment\n");
    assert_int_equal(graft_keys_read_allow(allow, &keys, &n), GRAFT_EFORMAT);
    write_text(allow, "not-a-key\n");
    assert_int_equal(graft_keys_read_allow(allow, &keys, &n), GRAFT_EFORMAT);
    assert_null(keys);
    path_in(allow, sizeof allow, "missing.txt");
    assert_int_equal(graft_keys_read_allow(allow, &keys, &n), GRAFT_EIO);
}

/* Runs worker w against srv, which delivers nothing while w tries for
 * its recv_timeout_ms; then counts the failed handshakes srv reports by
 * kind, and copies the last of kind want that has an address into *last. */
static void try_handshakes(graft_transport_t *srv, worker_t *w, int *tally,
                           graft_handshake_failure_t *last, graft_handshake_kind_t want) {
    pthread_t th;
    pthread_create(&th, NULL, zmq_worker, w);
    int peer;
    uint8_t *buf;
    size_t len;
    int rc = graft_transport_recv(srv, &peer, &buf, &len, w->recv_timeout_ms);
    pthread_join(th, NULL);
    assert_int_equal(rc, GRAFT_ETIMEOUT);
    assert_int_equal(w->open_rc, GRAFT_OK);
    assert_int_equal(w->recv_rc, GRAFT_ETIMEOUT);
    memset(tally, 0, (GRAFT_HANDSHAKE_CLOSED + 1) * sizeof *tally);
    memset(last, 0, sizeof *last);
    graft_handshake_failure_t f;
    while (graft_transport_next_failure(srv, &f) == 1) {
        assert_true(f.kind <= GRAFT_HANDSHAKE_CLOSED && f.count >= 1);
        tally[f.kind] += f.count;
        if (f.kind == want && f.host[0]) *last = f;
    }
}

/* A new keypair NAME.key / NAME.pub in the scratch folder. */
static void new_keypair(const char *name, graft_keypair_t *kp) {
    char stem[128];
    path_in(stem, sizeof stem, name);
    assert_int_equal(graft_keys_generate(stem, 1, kp), GRAFT_OK);
}

static void test_curve(void **state) {
    (void)state;
    char allow_path[160];
    graft_keypair_t server, good, bad;
    new_keypair("coordinator", &server);
    new_keypair("good", &good);
    new_keypair("bad", &bad);
    path_in(allow_path, sizeof allow_path, "clients.allow");
    char text[128];
    snprintf(text, sizeof text, "# admitted clients\n%s good\n", good.public_key.z85);
    write_text(allow_path, text);
    graft_key_t *allow;
    size_t nallow;
    assert_int_equal(graft_keys_read_allow(allow_path, &allow, &nallow), GRAFT_OK);

    /* A server without an allow-list is refused outright. */
    graft_zmq_opts_t open_opts = {.endpoint = "tcp://127.0.0.1:*", .keypair = &server};
    graft_transport_t *t = NULL;
    assert_int_equal(graft_transport_zmq_server(&open_opts, &t), GRAFT_EINVAL);

    graft_transport_t *srv = zmq_server(&server, allow, nallow);
    free(allow);
    const char *ep = graft_transport_zmq_endpoint(srv);

    worker_t w = {.endpoint = ep, .identity = "good", .keypair = &good,
                  .server_key = &server.public_key, .idx = 0, .nsend = 1, .recv_timeout_ms = 10000};
    pthread_t th;
    pthread_create(&th, NULL, zmq_worker, &w);
    int peer_of[1];
    serve(srv, 1, 1, peer_of);
    pthread_join(th, NULL);
    expect_delivered(&w);
    assert_non_null(strstr(graft_transport_peer_name(srv, peer_of[0]), "key "));
    assert_int_equal(graft_transport_zmq_refused(srv), 0);

    graft_handshake_failure_t f;
    assert_int_equal(graft_transport_next_failure(srv, &f), 0);

    /* The unknown key: nothing gets through either way, and the server
     * names the key and its address as a failed handshake. */
    worker_t intruder = {.endpoint = ep, .identity = "mallory", .keypair = &bad,
                         .server_key = &server.public_key, .idx = 0, .nsend = 1,
                         .recv_timeout_ms = 1500};
    int tally[GRAFT_HANDSHAKE_CLOSED + 1];
    try_handshakes(srv, &intruder, tally, &f, GRAFT_HANDSHAKE_KEY_REFUSED);
    assert_true(graft_transport_zmq_refused(srv) >= 1);
    assert_true(tally[GRAFT_HANDSHAKE_KEY_REFUSED] >= 1);
    assert_string_equal(f.client_key, bad.public_key.z85);
    assert_string_equal(f.host, "127.0.0.1");
    assert_int_equal(tally[GRAFT_HANDSHAKE_CRYPTO], 0);

    /* An admitted key with another server key: the client's hello cannot be
     * opened, and ZeroMQ alone would say nothing. It retries every 50 ms;
     * the server reads each connection's address while it is open. */
    worker_t lost = {.endpoint = ep, .identity = "lost", .keypair = &good,
                     .server_key = &bad.public_key, .idx = 0, .nsend = 1,
                     .recv_timeout_ms = 1500};
    try_handshakes(srv, &lost, tally, &f, GRAFT_HANDSHAKE_CRYPTO);
    assert_true(tally[GRAFT_HANDSHAKE_CRYPTO] >= 2);
    assert_string_equal(f.host, "127.0.0.1");
    assert_true(f.port > 0);
    assert_string_equal(f.client_key, "");
    assert_int_equal(f.code, ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC);
    assert_int_equal(tally[GRAFT_HANDSHAKE_KEY_REFUSED], 0);
    graft_transport_destroy(&srv);
}

static graft_transport_t *zmq_client(const char *ep, const char *identity,
                                     const graft_keypair_t *kp, const graft_key_t *server) {
    graft_zmq_opts_t o = {.endpoint = ep, .identity = identity, .keypair = kp,
                          .server_key = server, .reconnect_ivl_ms = 50,
                          .reconnect_ivl_max_ms = 200};
    graft_transport_t *t = NULL;
    assert_int_equal(graft_transport_zmq_client(&o, &t), GRAFT_OK);
    return t;
}

/* Receives one message on t: its text must be `want`; returns the peer. */
static int recv_text(graft_transport_t *t, const char *want) {
    int peer = -1;
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_transport_recv(t, &peer, &buf, &len, 10000), GRAFT_OK);
    assert_int_equal(len, strlen(want) + 1);
    assert_string_equal((char *)buf, want);
    free(buf);
    return peer;
}

/* A CurveZMQ DEALER of ctx with key kp that sets its routing identity by
 * hand to `id` (idlen bytes), connected to ep, that has sent "f1". */
static void *forger(void *ctx, const char *ep, const graft_keypair_t *kp,
                    const graft_key_t *server, const char *id, size_t idlen) {
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server->z85, 41), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, kp->public_key.z85, 41), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, kp->secret_key.z85, 41), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, id, idlen), 0);
    assert_int_equal(zmq_connect(s, ep), 0);
    assert_int_equal(zmq_send(s, "f1", 3, 0), 3);
    return s;
}

/* ROUTER_HANDOVER gives a routing identity to the newest connection and
 * leaves the old one deaf until heartbeats drop it (10-20 s). Under
 * CurveZMQ a client's identity carries its key: another admitted key under
 * a worker's name is a peer of its own, and the worker keeps its
 * connection, reachable at once. A client that sets the worker's identity
 * by hand still takes it over: a peer of its own, with its own key, and
 * nothing goes to the worker's peer (it would reach the other connection)
 * until the worker speaks again. */
static void test_curve_identity_bound_to_key(void **state) {
    (void)state;
    graft_keypair_t server, alice, bob;
    new_keypair("idserver", &server);
    new_keypair("alice", &alice);
    new_keypair("bob", &bob);
    graft_key_t allow[2] = {alice.public_key, bob.public_key};
    graft_transport_t *srv = zmq_server(&server, allow, 2);
    const char *ep = graft_transport_zmq_endpoint(srv);

    graft_transport_t *a = zmq_client(ep, "alice", &alice, &server.public_key);
    assert_int_equal(graft_transport_send(a, 0, "a1", 3), GRAFT_OK);
    int pa = recv_text(srv, "a1");
    assert_string_equal(graft_transport_peer_key(srv, pa), alice.public_key.z85);
    assert_string_equal(graft_transport_peer_key(a, 0), "");

    /* Bob's key under the name alice: no takeover. */
    graft_transport_t *b = zmq_client(ep, "alice", &bob, &server.public_key);
    assert_int_equal(graft_transport_send(b, 0, "b1", 3), GRAFT_OK);
    int pb = recv_text(srv, "b1");
    assert_int_not_equal(pb, pa);
    assert_string_equal(graft_transport_peer_key(srv, pb), bob.public_key.z85);
    assert_string_equal(graft_transport_peer_key(srv, pa), alice.public_key.z85);
    assert_int_equal(graft_transport_send(srv, pa, "to a", 5), GRAFT_OK);
    assert_int_equal(recv_text(a, "to a"), 0);
    assert_int_equal(graft_transport_send(srv, pb, "to b", 5), GRAFT_OK);
    assert_int_equal(recv_text(b, "to b"), 0);
    assert_int_equal(graft_transport_send(a, 0, "a2", 3), GRAFT_OK);
    assert_int_equal(recv_text(srv, "a2"), pa);
    graft_transport_destroy(&b);

    /* Bob's key under alice's very routing identity, set by hand. */
    char id[GRAFT_ZMQ_MAX_ROUTING_ID + 1];
    size_t idlen = graft_zmq_routing_id("alice", &alice.public_key, id);
    void *ctx = zmq_ctx_new();
    void *f = forger(ctx, ep, &bob, &server.public_key, id, idlen);
    int pf = recv_text(srv, "f1");
    assert_int_not_equal(pf, pa);
    assert_string_equal(graft_transport_peer_key(srv, pf), bob.public_key.z85);
    assert_int_equal(graft_transport_send(srv, pa, "x", 2), GRAFT_EPEER);
    zmq_close(f);
    zmq_ctx_term(ctx);

    /* Alice restarted speaks under her identity and key: her peer again,
     * and the forger's is the superseded one. */
    graft_transport_destroy(&a);
    a = zmq_client(ep, "alice", &alice, &server.public_key);
    assert_int_equal(graft_transport_send(a, 0, "a3", 3), GRAFT_OK);
    assert_int_equal(recv_text(srv, "a3"), pa);
    assert_int_equal(graft_transport_send(srv, pf, "x", 2), GRAFT_EPEER);
    assert_int_equal(graft_transport_send(srv, pa, "to a", 5), GRAFT_OK);
    assert_int_equal(recv_text(a, "to a"), 0);
    graft_transport_destroy(&a);
    graft_transport_destroy(&srv);
}

/* A CurveZMQ client's routing identity: its key, "/" and the name; a name
 * too long for that ends in a digest of all of it, so that two long names
 * with the same head differ. Without CurveZMQ, the name itself. */
static void test_routing_id(void **state) {
    (void)state;
    graft_key_t k;
    memset(k.z85, 'K', GRAFT_KEY_Z85_LEN);
    k.z85[GRAFT_KEY_Z85_LEN] = '\0';
    char id[GRAFT_ZMQ_MAX_ROUTING_ID + 1], id2[GRAFT_ZMQ_MAX_ROUTING_ID + 1];
    size_t n = graft_zmq_routing_id("w1", NULL, id);
    assert_int_equal(n, 2);
    assert_memory_equal(id, "w1", 2);
    n = graft_zmq_routing_id("w1", &k, id);
    assert_int_equal(n, GRAFT_KEY_Z85_LEN + 3);
    assert_memory_equal(id, k.z85, GRAFT_KEY_Z85_LEN);
    assert_memory_equal(id + GRAFT_KEY_Z85_LEN, "/w1", 3);
    char name[GRAFT_ZMQ_MAX_ROUTING_ID + 1];
    memset(name, 'n', GRAFT_ZMQ_MAX_ROUTING_ID);
    name[GRAFT_ZMQ_MAX_ROUTING_ID] = '\0';
    n = graft_zmq_routing_id(name, &k, id);
    assert_int_equal(n, GRAFT_ZMQ_MAX_ROUTING_ID);
    name[GRAFT_ZMQ_MAX_ROUTING_ID - 1] = 'm'; /* past the part that fits */
    assert_int_equal(graft_zmq_routing_id(name, &k, id2), GRAFT_ZMQ_MAX_ROUTING_ID);
    assert_int_equal(id[GRAFT_ZMQ_MAX_ROUTING_ID - 17], '#');
    assert_memory_equal(id, id2, GRAFT_ZMQ_MAX_ROUTING_ID - 16);
    assert_memory_not_equal(id, id2, GRAFT_ZMQ_MAX_ROUTING_ID);
}

/* Plain ZeroMQ authenticates nobody: no key, and one peer per identity. */
static void test_plain_has_no_key(void **state) {
    (void)state;
    graft_transport_t *srv = zmq_server(NULL, NULL, 0);
    graft_transport_t *a = zmq_client(graft_transport_zmq_endpoint(srv), "w", NULL, NULL);
    assert_int_equal(graft_transport_send(a, 0, "a1", 3), GRAFT_OK);
    int pa = recv_text(srv, "a1");
    assert_string_equal(graft_transport_peer_key(srv, pa), "");
    assert_string_equal(graft_transport_peer_key(srv, pa + 1), "");
    graft_transport_destroy(&a);
    graft_transport_destroy(&srv);
}

/* Which endpoints plain ZeroMQ may listen on without --insecure. */
static void test_endpoint_is_local(void **state) {
    (void)state;
    const char *local[] = {"tcp://127.0.0.1:5555", "tcp://127.4.3.2:*", "tcp://localhost:1",
                           "tcp://[::1]:5555", "ipc:///tmp/graft-run-x/coordinator"};
    const char *network[] = {"tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://10.0.0.7:5555",
                             "tcp://[::]:5555", "tcp://[::ffff:127.0.0.1]:1", "tcp://eth0:5555",
                             "tcp://coordinator.example:5555", "tcp://128.0.0.1:1",
                             "tcp://127.0.0.1", "ws://127.0.0.1:5555", "pgm://eth0;239.1.1.1:1",
                             "tcp://:5555", ""};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++)
        if (!graft_zmq_endpoint_is_local(local[i])) fail_msg("%s is local", local[i]);
    for (size_t i = 0; i < sizeof network / sizeof *network; i++)
        if (graft_zmq_endpoint_is_local(network[i])) fail_msg("%s is not local", network[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inproc),
        cmocka_unit_test(test_zmq_router_dealers),
        cmocka_unit_test(test_zmq_forget_reuses_ids),
        cmocka_unit_test(test_zmq_message_limit),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_curve_identity_bound_to_key),
        cmocka_unit_test(test_routing_id),
        cmocka_unit_test(test_plain_has_no_key),
        cmocka_unit_test(test_endpoint_is_local),
    };
    return cmocka_run_group_tests(tests, setup_tmpdir, teardown_tmpdir);
}
