/* transport_zmq.c — the ZeroMQ transport for federated deployments.
 *
 * The coordinator binds a ROUTER; each worker connects a DEALER and sends
 * single-frame messages. The ROUTER sees [identity][payload]; each new
 * identity becomes a peer with the lowest free id (1, 2, ...; forget()
 * frees one). ZMQ_ROUTER_HANDOVER lets a
 * restarted worker that reuses its identity take over its old slot, and
 * ZMQ_ROUTER_MANDATORY turns a send to a vanished peer into GRAFT_EPEER
 * instead of a silent drop. Workers reconnect on their own with backoff.
 *
 * A handover costs the connection that loses the identity dearly: libzmq
 * ends its pipe but not the connection, which stays open, reading and
 * delivering nothing, until heartbeats drop it (10-20 s; never without
 * them), and only then does its client reconnect. A dead worker's
 * connection is closed already, so a restart is taken back at once; but a
 * live one would go unheard that long. So a CurveZMQ client's identity
 * starts with its public key (graft_zmq_routing_id): a client with another
 * key under a worker's --name is a connection of its own, not a takeover.
 *
 * The identity is still the client's choice (one may set another's by
 * hand), so under CurveZMQ a peer is the pair (identity, client key), the
 * key read from each message's User-Id (which the ZAP handler sets):
 * another client's connection under a worker's identity becomes a peer of
 * its own instead of that worker. The ROUTER routes by identity alone, to
 * whichever connection took it over last; so a peer whose identity was last
 * heard from another key is "superseded" and gets nothing until it speaks
 * again.
 *
 * With CurveZMQ the server runs a ZAP handler thread on
 * inproc://zeromq.zap.01 in its own context: it accepts a handshake only if
 * the client's public key is on the allow-list, and queues each refusal
 * (key and address) as a failed handshake. The context is private to one
 * transport because a context has one ZAP endpoint.
 *
 * ZeroMQ drops every other failed handshake silently (a client with another
 * server key, CurveZMQ on one side only), so the server also watches its
 * ROUTER with libzmq's socket monitor (an inproc PAIR that recv() polls
 * beside the ROUTER). A failure event does not say which connection failed;
 * libzmq's I/O thread (one, the default) sends it right before that
 * connection's DISCONNECTED, which carries the fd, and the fd's address was
 * read (getpeername) when its ACCEPTED came in, if the connection was still
 * open then.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "transport.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MONITOR_ENDPOINT "inproc://graft.monitor"
#define MONITOR_EVENTS                                                                     \
    (ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |  \
     ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#define MONITOR_BATCH 512
#define MAX_FAILURES 256
/* How long closing a socket waits to deliver what it still queues. A
 * worker's last words may go unheard. The coordinator's are the Shutdown
 * that ends every worker's run: its ROUTER waits up to SERVER_LINGER_MS
 * for a slow peer (a ROUTER drops what it queues to a disconnected one, so
 * only a connected peer that does not drain keeps it that long). */
#define LINGER_MS 1000
#define SERVER_LINGER_MS 5000
#define SEND_TIMEOUT_MS 5000
#define HEARTBEAT_IVL_MS 2000
#define HEARTBEAT_TIMEOUT_MS 10000
#define DEFAULT_MAX_MSG (((size_t)64 << 20) + ((size_t)64 << 10))

typedef struct {
    uint8_t id[256];
    size_t idlen;
    char key[GRAFT_KEY_Z85_LEN + 1]; /* the CurveZMQ client key; "" without CurveZMQ */
    int superseded; /* its identity was last heard from another key */
    int free;       /* forgotten: the slot awaits the next new peer */
    char name[160];
} zpeer_t;

/* A connection the ROUTER accepted and has not yet closed. */
typedef struct {
    int fd;
    char host[64]; /* "" when it was gone before anyone asked */
    int port;
} zconn_t;

typedef struct {
    uint16_t event;
    uint32_t value; /* the fd, an error code or a status, by event */
} zevent_t;

typedef struct {
    graft_transport_t base;
    void *ctx, *sock;
    int server;
    char endpoint[256];
    char coordinator_name[300]; /* client: how peer 0 shows in logs */
    size_t max_msg;             /* ZMQ_MAXMSGSIZE: larger messages are neither taken nor sent */
    zpeer_t *peers;             /* server: peer p is peers[p - 1] */
    size_t npeers, cap;
    /* CurveZMQ, server side; the ZAP thread alone touches zap. */
    void *zap;
    pthread_t zap_thread;
    int zap_running;
    graft_key_t *allow;
    size_t nallow;
    atomic_uint_fast64_t refused;
    /* Failed handshakes, server side: the monitor's end, the open
     * connections and a failure waiting for its DISCONNECTED belong to the
     * caller's thread; the queue is shared with the ZAP thread under mu. */
    void *mon;
    zconn_t *conns;
    size_t nconns, conns_cap;
    int pending, pending_event, pending_code;
    pthread_mutex_t mu;
    graft_handshake_failure_t failures[MAX_FAILURES];
    size_t nfailures;
    int warned_full;
} zt_t;

static const graft_transport_ops_t zmq_ops;

/* Reads one whole message into f[0..max); frames past max-1 overwrite the
 * last slot. Returns the frame count (the caller closes min(n, max) frames),
 * or -1 with errno set and nothing to close. */
static int recv_frames(void *sock, zmq_msg_t *f, int max, int flags) {
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t *m = &f[n < max ? n : max - 1];
        if (n >= max) zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, flags) < 0) {
            int e = errno;
            zmq_msg_close(m);
            for (int i = 0; i < (n < max ? n : max - 1); i++) zmq_msg_close(&f[i]);
            errno = e;
            return -1;
        }
        more = zmq_msg_more(m);
        n++;
    }
    return n;
}

/* ---- failed handshakes, queued for next_failure ---------------------------- */

static int same_failure(const graft_handshake_failure_t *a, const graft_handshake_failure_t *b) {
    return a->kind == b->kind && a->code == b->code && !strcmp(a->host, b->host) &&
           !strcmp(a->client_key, b->client_key);
}

/* Queues f, merged into an alike failure not yet taken: a client that
 * retries every 100 ms while nobody drains the queue takes one slot. */
static void push_failure(zt_t *z, const graft_handshake_failure_t *f) {
    pthread_mutex_lock(&z->mu);
    size_t i = 0;
    while (i < z->nfailures && !same_failure(&z->failures[i], f)) i++;
    int full = i == MAX_FAILURES, warn = full && !z->warned_full;
    if (i < z->nfailures) z->failures[i].count += f->count;
    else if (!full) z->failures[z->nfailures++] = *f;
    z->warned_full |= full;
    pthread_mutex_unlock(&z->mu);
    if (warn)
        LOG_WARN("zmq: %d kinds of failed handshakes on %s wait to be reported; dropping more",
                 MAX_FAILURES, z->endpoint);
}

/* ---- ZAP: who may connect ------------------------------------------------ */

static int key_allowed(const zt_t *z, const char *key) {
    for (size_t i = 0; i < z->nallow; i++)
        if (strcmp(z->allow[i].z85, key) == 0) return 1;
    return 0;
}

/* The ZAP address is the client's IP (no port). */
static void note_refusal(zt_t *z, const char *key, const char *addr) {
    atomic_fetch_add(&z->refused, 1);
    graft_handshake_failure_t f = {.kind = GRAFT_HANDSHAKE_KEY_REFUSED, .code = 400, .count = 1};
    snprintf(f.host, sizeof f.host, "%s", addr);
    snprintf(f.client_key, sizeof f.client_key, "%s", key);
    push_failure(z, &f);
}

static int frame_is(zmq_msg_t *f, const char *s) {
    return zmq_msg_size(f) == strlen(s) && memcmp(zmq_msg_data(f), s, strlen(s)) == 0;
}

/* Answers one ZAP request (RFC 27): frames version, request id, domain,
 * address, identity, mechanism, credentials. */
static void zap_answer(zt_t *z, zmq_msg_t *f, int n) {
    char key[GRAFT_KEY_Z85_LEN + 1] = "", addr[64] = "";
    const char *status = "400", *text = "unknown key";
    if (n >= 7 && frame_is(&f[0], "1.0") && frame_is(&f[5], "CURVE") && zmq_msg_size(&f[6]) == 32) {
        zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
        snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&f[3]), (char *)zmq_msg_data(&f[3]));
        if (key_allowed(z, key)) status = "200", text = "OK";
        else note_refusal(z, key, addr);
    } else {
        status = "500", text = "malformed ZAP request";
    }
    int ok = status[0] == '2';
    zmq_send(z->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(z->zap, n > 1 ? zmq_msg_data(&f[1]) : "", n > 1 ? zmq_msg_size(&f[1]) : 0,
             ZMQ_SNDMORE);
    zmq_send(z->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(z->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(z->zap, ok ? key : "", ok ? strlen(key) : 0, ZMQ_SNDMORE); /* becomes User-Id */
    zmq_send(z->zap, "", 0, 0);
}

static void *zap_main(void *arg) {
    zt_t *z = arg;
    for (;;) {
        zmq_msg_t f[8];
        int n = recv_frames(z->zap, f, 8, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break; /* ETERM: the transport is shutting down */
        zap_answer(z, f, n < 8 ? n : 8);
        for (int i = 0; i < (n < 8 ? n : 8); i++) zmq_msg_close(&f[i]);
    }
    zmq_close(z->zap);
    return NULL;
}

static int zap_start(zt_t *z, const graft_zmq_opts_t *o) {
    z->allow = graft_xmalloc(o->nallow * sizeof *z->allow);
    memcpy(z->allow, o->allow, o->nallow * sizeof *z->allow);
    z->nallow = o->nallow;
    z->zap = zmq_socket(z->ctx, ZMQ_REP);
    if (!z->zap || zmq_bind(z->zap, ZAP_ENDPOINT) != 0) {
        LOG_ERROR("zmq: cannot start the CurveZMQ authenticator: %s", zmq_strerror(errno));
        if (z->zap) zmq_close(z->zap);
        return GRAFT_EIO;
    }
    if (pthread_create(&z->zap_thread, NULL, zap_main, z) != 0) {
        zmq_close(z->zap);
        return GRAFT_EIO;
    }
    z->zap_running = 1;
    return GRAFT_OK;
}

/* ---- the socket monitor: handshakes that fail before ZAP ------------------- */

/* The client's address of an accepted connection, unless gone (its
 * DISCONNECTED is already queued: the fd may be closed, or another's). One
 * that closes after its batch was read leaves getpeername failing (no
 * address) or, if a new connection took the fd in the microseconds between,
 * names that one: a retrying client, nearly always the same. */
static void conn_add(zt_t *z, int fd, int gone) {
    if (z->nconns == z->conns_cap) {
        z->conns_cap = z->conns_cap ? 2 * z->conns_cap : 16;
        z->conns = realloc(z->conns, z->conns_cap * sizeof *z->conns);
        GRAFT_ASSERT(z->conns);
    }
    zconn_t *c = &z->conns[z->nconns++];
    *c = (zconn_t){.fd = fd};
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (gone || getpeername(fd, (struct sockaddr *)&sa, &len) != 0) return;
    if (sa.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &in->sin_addr, c->host, sizeof c->host);
        c->port = ntohs(in->sin_port);
    } else if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, c->host, sizeof c->host);
        c->port = ntohs(in6->sin6_port);
    }
}

static graft_handshake_kind_t failure_kind(int event, int code) {
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) return GRAFT_HANDSHAKE_CLOSED;
    if (code == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) return GRAFT_HANDSHAKE_CRYPTO;
    if (code == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) return GRAFT_HANDSHAKE_MECHANISM;
    return GRAFT_HANDSHAKE_PROTOCOL;
}

/* Connection fd closed: the failure just before it, if any, was its own. */
static void conn_closed(zt_t *z, int fd) {
    size_t i = 0;
    while (i < z->nconns && z->conns[i].fd != fd) i++;
    if (z->pending) {
        graft_handshake_failure_t f = {.kind = failure_kind(z->pending_event, z->pending_code),
                                       .code = z->pending_code, .count = 1};
        if (i < z->nconns) {
            snprintf(f.host, sizeof f.host, "%s", z->conns[i].host);
            f.port = z->conns[i].port;
        }
        push_failure(z, &f);
        z->pending = 0;
    }
    if (i < z->nconns) z->conns[i] = z->conns[--z->nconns];
}

static void monitor_handle(zt_t *z, const zevent_t *ev, int n, int i) {
    int fd = (int)ev[i].value, gone = 0;
    switch (ev[i].event) {
    case ZMQ_EVENT_ACCEPTED:
        for (int j = i + 1; j < n && !gone; j++)
            gone = ev[j].event == ZMQ_EVENT_DISCONNECTED && (int)ev[j].value == fd;
        conn_add(z, fd, gone);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        z->pending = 1;
        z->pending_event = ev[i].event;
        z->pending_code = (int)ev[i].value;
        break;
    case ZMQ_EVENT_DISCONNECTED:
        conn_closed(z, fd);
        break;
    }
}

/* One event: 0, 1 for a malformed one (skipped), -1 when none is waiting.
 * Frames: event (u16) and value (u32), then the bound endpoint. */
static int monitor_read(void *mon, zevent_t *e) {
    zmq_msg_t f[2];
    int n = recv_frames(mon, f, 2, ZMQ_DONTWAIT);
    if (n < 0) return -1;
    int ok = n == 2 && zmq_msg_size(&f[0]) == 6;
    if (ok) {
        memcpy(&e->event, zmq_msg_data(&f[0]), 2);
        memcpy(&e->value, (uint8_t *)zmq_msg_data(&f[0]) + 2, 4);
    }
    for (int i = 0; i < (n < 2 ? n : 2); i++) zmq_msg_close(&f[i]);
    return ok ? 0 : 1;
}

/* Handles every event waiting, a batch at a time: an ACCEPTED looks ahead
 * in its batch for its own DISCONNECTED. */
static void monitor_drain(zt_t *z) {
    zevent_t ev[MONITOR_BATCH];
    int n, r;
    do {
        n = 0;
        while (n < MONITOR_BATCH && (r = monitor_read(z->mon, &ev[n])) >= 0) n += r == 0;
        for (int i = 0; i < n; i++) monitor_handle(z, ev, n, i);
    } while (n == MONITOR_BATCH);
}

/* Before the bind: no event may find the PAIR unconnected, since libzmq's
 * I/O thread would block sending it. RCVHWM 0 lifts the pipe's limit for
 * the same reason: a coordinator busy aggregating must not stall every
 * connection; a client retrying every 100 ms adds about 30 small events a
 * second until recv() or next_failure() drains them. */
static int monitor_start(zt_t *z) {
    if (zmq_socket_monitor(z->sock, MONITOR_ENDPOINT, MONITOR_EVENTS) != 0) return -1;
    z->mon = zmq_socket(z->ctx, ZMQ_PAIR);
    if (!z->mon) return -1;
    int zero = 0;
    int rc = zmq_setsockopt(z->mon, ZMQ_RCVHWM, &zero, sizeof zero);
    rc |= zmq_setsockopt(z->mon, ZMQ_LINGER, &zero, sizeof zero);
    return rc | zmq_connect(z->mon, MONITOR_ENDPOINT);
}

static int zt_next_failure(graft_transport_t *t, graft_handshake_failure_t *f) {
    zt_t *z = (zt_t *)t;
    if (z->mon) monitor_drain(z);
    pthread_mutex_lock(&z->mu);
    /* Those with an address first: the failures of a client that was gone
     * before anyone looked can then count toward the ones that name it. */
    size_t i = 0;
    while (i < z->nfailures && !z->failures[i].host[0]) i++;
    if (i == z->nfailures) i = 0;
    int got = z->nfailures > 0;
    if (got) {
        *f = z->failures[i];
        memmove(&z->failures[i], &z->failures[i + 1],
                (--z->nfailures - i) * sizeof *z->failures);
    }
    pthread_mutex_unlock(&z->mu);
    return got;
}

/* ---- sockets --------------------------------------------------------------- */

static int set_int(void *s, int opt, int v) { return zmq_setsockopt(s, opt, &v, sizeof v); }

static int common_opts(zt_t *z, const graft_zmq_opts_t *o) {
    z->max_msg = o->max_msg_bytes ? o->max_msg_bytes : DEFAULT_MAX_MSG;
    int64_t max = (int64_t)z->max_msg;
    int rc = set_int(z->sock, ZMQ_LINGER, LINGER_MS);
    rc |= set_int(z->sock, ZMQ_SNDTIMEO, SEND_TIMEOUT_MS);
    rc |= zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &max, sizeof max);
    rc |= set_int(z->sock, ZMQ_HEARTBEAT_IVL, HEARTBEAT_IVL_MS);
    rc |= set_int(z->sock, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS);
    return rc;
}

static int server_opts(zt_t *z, const graft_zmq_opts_t *o) {
    int rc = common_opts(z, o);
    rc |= set_int(z->sock, ZMQ_ROUTER_HANDOVER, 1);
    rc |= set_int(z->sock, ZMQ_ROUTER_MANDATORY, 1);
    if (o->keypair) {
        rc |= set_int(z->sock, ZMQ_CURVE_SERVER, 1);
        rc |= zmq_setsockopt(z->sock, ZMQ_CURVE_SECRETKEY, o->keypair->secret_key.z85, 41);
        rc |= zmq_setsockopt(z->sock, ZMQ_ZAP_DOMAIN, "graft", 5);
    }
    return rc;
}

size_t graft_zmq_routing_id(const char *identity, const graft_key_t *key, char *out) {
    if (!key) {
        size_t n = strlen(identity);
        memcpy(out, identity, n);
        return n;
    }
    int n = snprintf(out, GRAFT_ZMQ_MAX_ROUTING_ID + 1, "%s/%s", key->z85, identity);
    if (n <= GRAFT_ZMQ_MAX_ROUTING_ID) return (size_t)n;
    /* A long name: its head and a digest of all of it (FNV-1a, 64 bits). */
    uint64_t h = 14695981039346656037ull;
    for (const char *s = identity; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    snprintf(out + GRAFT_ZMQ_MAX_ROUTING_ID - 17, 18, "#%016llx", (unsigned long long)h);
    return GRAFT_ZMQ_MAX_ROUTING_ID;
}

static int client_opts(zt_t *z, const graft_zmq_opts_t *o) {
    int rc = common_opts(z, o);
    rc |= set_int(z->sock, ZMQ_RECONNECT_IVL, o->reconnect_ivl_ms ? o->reconnect_ivl_ms : 100);
    rc |= set_int(z->sock, ZMQ_RECONNECT_IVL_MAX,
                  o->reconnect_ivl_max_ms ? o->reconnect_ivl_max_ms : 5000);
    if (o->identity) {
        char id[GRAFT_ZMQ_MAX_ROUTING_ID + 1];
        size_t n = graft_zmq_routing_id(o->identity, o->keypair ? &o->keypair->public_key : NULL,
                                        id);
        rc |= zmq_setsockopt(z->sock, ZMQ_ROUTING_ID, id, n);
    }
    if (o->keypair) {
        rc |= zmq_setsockopt(z->sock, ZMQ_CURVE_SERVERKEY, o->server_key->z85, 41);
        rc |= zmq_setsockopt(z->sock, ZMQ_CURVE_PUBLICKEY, o->keypair->public_key.z85, 41);
        rc |= zmq_setsockopt(z->sock, ZMQ_CURVE_SECRETKEY, o->keypair->secret_key.z85, 41);
    }
    return rc;
}

static void zt_free(zt_t *z) {
    /* The monitor first: its events must not find our end closed. */
    if (z->sock && z->server) zmq_socket_monitor(z->sock, NULL, 0);
    if (z->mon) zmq_close(z->mon);
    if (z->sock && z->server) set_int(z->sock, ZMQ_LINGER, SERVER_LINGER_MS);
    if (z->sock) zmq_close(z->sock);
    if (z->zap_running) {
        zmq_ctx_shutdown(z->ctx); /* wakes the ZAP thread with ETERM */
        pthread_join(z->zap_thread, NULL);
    }
    if (z->ctx) zmq_ctx_term(z->ctx);
    free(z->peers);
    free(z->allow);
    free(z->conns);
    pthread_mutex_destroy(&z->mu);
    free(z);
}

static void zmq_destroy(graft_transport_t *t) { zt_free((zt_t *)t); }

static int check_opts(const graft_zmq_opts_t *o, int server) {
    if (!o->endpoint) return GRAFT_EINVAL;
    size_t idlen = o->identity ? strlen(o->identity) : 1;
    if (idlen == 0 || idlen > GRAFT_ZMQ_MAX_ROUTING_ID) {
        LOG_ERROR("zmq: identity must be 1..%d bytes", GRAFT_ZMQ_MAX_ROUTING_ID);
        return GRAFT_EINVAL;
    }
    if (!o->keypair) return GRAFT_OK;
    if (server && (!o->allow || o->nallow == 0)) {
        LOG_ERROR("zmq: a CurveZMQ server needs an allow-list of client public keys "
                  "(graft keygen writes NAME.pub; list one per line)");
        return GRAFT_EINVAL;
    }
    if (!server && !o->server_key) {
        LOG_ERROR("zmq: a CurveZMQ client needs the coordinator's public key");
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

static int zt_open(const graft_zmq_opts_t *o, int server, graft_transport_t **out) {
    *out = NULL;
    int rc = check_opts(o, server);
    if (rc) return rc;
    zt_t *z = graft_xcalloc(1, sizeof *z);
    z->base.ops = &zmq_ops;
    z->server = server;
    pthread_mutex_init(&z->mu, NULL);
    z->ctx = zmq_ctx_new();
    if (server && o->keypair && (rc = zap_start(z, o)) != GRAFT_OK) goto fail;
    z->sock = zmq_socket(z->ctx, server ? ZMQ_ROUTER : ZMQ_DEALER);
    rc = GRAFT_EIO;
    if (!z->sock || (server ? server_opts(z, o) : client_opts(z, o)) != 0 ||
        (server && monitor_start(z) != 0)) {
        LOG_ERROR("zmq: cannot set up a socket for %s: %s", o->endpoint, zmq_strerror(errno));
        goto fail;
    }
    if ((server ? zmq_bind(z->sock, o->endpoint) : zmq_connect(z->sock, o->endpoint)) != 0) {
        LOG_ERROR("zmq: cannot %s %s: %s", server ? "bind" : "connect to", o->endpoint,
                  zmq_strerror(errno));
        goto fail;
    }
    size_t n = sizeof z->endpoint;
    if (zmq_getsockopt(z->sock, ZMQ_LAST_ENDPOINT, z->endpoint, &n) != 0)
        snprintf(z->endpoint, sizeof z->endpoint, "%s", o->endpoint);
    snprintf(z->coordinator_name, sizeof z->coordinator_name, "coordinator (%s)", z->endpoint);
    *out = &z->base;
    return GRAFT_OK;
fail:
    zt_free(z);
    return rc;
}

int graft_transport_zmq_server(const graft_zmq_opts_t *opts, graft_transport_t **out) {
    return zt_open(opts, 1, out);
}

int graft_transport_zmq_client(const graft_zmq_opts_t *opts, graft_transport_t **out) {
    return zt_open(opts, 0, out);
}

/* "HOST" of tcp://HOST:PORT, brackets of [IPv6] removed, into buf; 0 if
 * not of that form. */
static int tcp_host(const char *endpoint, char *buf, size_t n) {
    if (strncmp(endpoint, "tcp://", 6) != 0) return 0;
    const char *host = endpoint + 6, *colon = strrchr(host, ':');
    if (!colon || colon == host) return 0;
    size_t len = (size_t)(colon - host);
    if (host[0] == '[' && host[len - 1] == ']') host++, len -= 2;
    if (len == 0 || len >= n) return 0;
    memcpy(buf, host, len);
    buf[len] = '\0';
    return 1;
}

int graft_zmq_endpoint_is_local(const char *endpoint) {
    if (strncmp(endpoint, "ipc://", 6) == 0) return 1;
    char host[256];
    if (!tcp_host(endpoint, host, sizeof host)) return 0;
    if (!strcmp(host, "localhost")) return 1;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

const char *graft_transport_zmq_endpoint(graft_transport_t *t) {
    GRAFT_ASSERT(t->ops == &zmq_ops);
    return ((zt_t *)t)->endpoint;
}

uint64_t graft_transport_zmq_refused(graft_transport_t *t) {
    GRAFT_ASSERT(t->ops == &zmq_ops);
    return atomic_load(&((zt_t *)t)->refused);
}

/* ---- messages ------------------------------------------------------------ */

static int send_errno(zt_t *z, int peer) {
    int e = errno;
    if (e == EHOSTUNREACH) return GRAFT_EPEER;
    if (e == EAGAIN) return GRAFT_ETIMEOUT;
    LOG_ERROR("zmq: send to peer %d on %s failed: %s", peer, z->endpoint, zmq_strerror(e));
    return GRAFT_EIO;
}

static const char *zt_peer_name(graft_transport_t *t, int peer);

/* A receiver with our limit would drop the message and the connection
 * without a word, and the sender would wait for an answer forever. */
static int too_large(zt_t *z, int peer, size_t len) {
    if (len <= z->max_msg) return 0;
    LOG_ERROR("zmq: not sending a %zu-byte message to %s: it exceeds the message limit of %zu "
              "bytes on %s", len, zt_peer_name(&z->base, peer), z->max_msg, z->endpoint);
    return 1;
}

static int zt_send(graft_transport_t *t, int peer, const void *buf, size_t len) {
    zt_t *z = (zt_t *)t;
    if (too_large(z, peer, len)) return GRAFT_EINVAL;
    if (!z->server) {
        if (peer != 0) return GRAFT_EINVAL;
        return zmq_send(z->sock, buf, len, 0) < 0 ? send_errno(z, peer) : GRAFT_OK;
    }
    if (peer < 1 || (size_t)peer > z->npeers) return GRAFT_EINVAL;
    zpeer_t *p = &z->peers[peer - 1];
    if (p->free || p->superseded) return GRAFT_EPEER; /* gone, or it would reach the other key */
    if (zmq_send(z->sock, p->id, p->idlen, ZMQ_SNDMORE) < 0) return send_errno(z, peer);
    return zmq_send(z->sock, buf, len, 0) < 0 ? send_errno(z, peer) : GRAFT_OK;
}

static int same_id(const zpeer_t *p, zmq_msg_t *id) {
    return !p->free && p->idlen == zmq_msg_size(id) &&
           memcmp(p->id, zmq_msg_data(id), p->idlen) == 0;
}

/* The message came on identity `id` from `key`: every other peer of that
 * identity is superseded (the ROUTER now routes it here), logged once. */
static void supersede(zt_t *z, size_t self, zmq_msg_t *id) {
    z->peers[self].superseded = 0;
    for (size_t i = 0; i < z->npeers; i++) {
        if (i == self || !same_id(&z->peers[i], id) || z->peers[i].superseded) continue;
        z->peers[i].superseded = 1;
        LOG_WARN("zmq: %s took over the routing identity of %s with another key; nothing goes "
                 "to %s until it speaks again", z->peers[self].name, z->peers[i].name,
                 z->peers[i].name);
    }
}

/* A slot for a new peer: the lowest forgotten one, else a new one. */
static size_t new_peer_slot(zt_t *z) {
    for (size_t i = 0; i < z->npeers; i++)
        if (z->peers[i].free) return i;
    if (z->npeers == z->cap) {
        z->cap = z->cap ? 2 * z->cap : 8;
        z->peers = realloc(z->peers, z->cap * sizeof *z->peers);
        GRAFT_ASSERT(z->peers);
    }
    return z->npeers++;
}

/* The peer id of a ROUTER identity and client key, adding a peer for a new
 * pair. */
static int peer_of(zt_t *z, zmq_msg_t *id, zmq_msg_t *body) {
    const char *user = zmq_msg_gets(body, "User-Id");
    const char *key = user ? user : "";
    size_t i = 0;
    while (i < z->npeers && !(same_id(&z->peers[i], id) && !strcmp(z->peers[i].key, key))) i++;
    if (i == z->npeers) {
        i = new_peer_slot(z);
        zpeer_t *p = &z->peers[i];
        *p = (zpeer_t){.idlen = zmq_msg_size(id)};
        memcpy(p->id, zmq_msg_data(id), p->idlen);
        snprintf(p->key, sizeof p->key, "%s", key);
    }
    /* Refreshed on every message: a worker that rejoins may come from elsewhere. */
    const char *addr = zmq_msg_gets(body, "Peer-Address");
    snprintf(z->peers[i].name, sizeof z->peers[i].name, "worker %zu (%s%s%.8s)", i + 1,
             addr ? addr : "?", *key ? ", key " : "", key);
    supersede(z, i, id);
    return (int)i + 1;
}

static int zt_recv(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len, int timeout_ms) {
    zt_t *z = (zt_t *)t;
    double until = graft_now() + timeout_ms / 1000.0;
    for (;;) {
        int wait = timeout_ms < 0 ? -1 : (int)((until - graft_now()) * 1000.0);
        zmq_pollitem_t it[2] = {{z->sock, 0, ZMQ_POLLIN, 0}, {z->mon, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, z->mon ? 2 : 1, timeout_ms < 0 ? -1 : (wait > 0 ? wait : 0));
        if (rc == 0 || (rc < 0 && errno == EINTR)) return GRAFT_ETIMEOUT;
        if (rc < 0) return GRAFT_EIO;
        /* Read at once: the address of a new connection is there only while it is open. */
        if (it[1].revents & ZMQ_POLLIN) monitor_drain(z);
        if (!(it[0].revents & ZMQ_POLLIN)) continue;
        zmq_msg_t f[2];
        int want = z->server ? 2 : 1;
        int n = recv_frames(z->sock, f, 2, ZMQ_DONTWAIT);
        if (n < 0) continue; /* raced with nothing to read */
        if (n == want) {
            zmq_msg_t *body = &f[want - 1];
            *peer = z->server ? peer_of(z, &f[0], body) : 0;
            *len = zmq_msg_size(body);
            *buf = graft_xmalloc(*len);
            memcpy(*buf, zmq_msg_data(body), *len);
        } else {
            LOG_WARN("zmq: dropped a %d-frame message on %s (graft sends one frame)", n,
                     z->endpoint);
        }
        for (int i = 0; i < (n < 2 ? n : 2); i++) zmq_msg_close(&f[i]);
        if (n == want) return GRAFT_OK;
    }
}

static const char *zt_peer_name(graft_transport_t *t, int peer) {
    zt_t *z = (zt_t *)t;
    if (!z->server) return peer == 0 ? z->coordinator_name : "unknown peer";
    if (peer < 1 || (size_t)peer > z->npeers) return "unknown peer";
    return z->peers[peer - 1].name;
}

static const char *zt_peer_key(graft_transport_t *t, int peer) {
    zt_t *z = (zt_t *)t;
    if (!z->server || peer < 1 || (size_t)peer > z->npeers) return NULL;
    return z->peers[peer - 1].key;
}

/* The slot keeps nothing of the peer: its id goes to the next newcomer, and
 * the identity, should it speak again, is a newcomer too. */
static void zt_forget(graft_transport_t *t, int peer) {
    zt_t *z = (zt_t *)t;
    if (!z->server || peer < 1 || (size_t)peer > z->npeers) return;
    z->peers[peer - 1] = (zpeer_t){.free = 1};
    snprintf(z->peers[peer - 1].name, sizeof z->peers[peer - 1].name, "forgotten peer %d", peer);
}

static const graft_transport_ops_t zmq_ops = {
    .name = "zmq",
    .send = zt_send,
    .recv = zt_recv,
    .peer_name = zt_peer_name,
    .peer_key = zt_peer_key,
    .next_failure = zt_next_failure,
    .forget = zt_forget,
    .destroy = zmq_destroy,
};
