/* transport_inproc.c — the in-process transport of the tests (graft run,
 * the embedded single-machine run, uses ZeroMQ on loopback): one
 * coordinator end and N worker ends sharing a hub of queues, one inbox per
 * end, guarded by one mutex, each inbox with its own condition variable so
 * that every end can block on its own thread.
 *
 * The hub lives until the last end is destroyed; a destroyed end's inbox is
 * freed at once and later sends to it fail with GRAFT_EPEER.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "transport.h"

typedef struct qmsg {
    struct qmsg *next;
    int from;
    char key[GRAFT_KEY_Z85_LEN + 1]; /* the sender's key when it sent */
    uint8_t *buf;
    size_t len;
} qmsg_t;

typedef struct {
    pthread_cond_t cond;
    qmsg_t *head, *tail;
    int alive;
    char name[32];
    char key[GRAFT_KEY_Z85_LEN + 1];      /* this end's key (tests) */
    char recv_key[GRAFT_KEY_Z85_LEN + 1]; /* of this end's last message received */
} inbox_t;

typedef struct {
    pthread_mutex_t mu;
    int nends; /* coordinator + workers */
    int live;
    inbox_t *inbox;
} hub_t;

typedef struct {
    graft_transport_t base;
    hub_t *hub;
    int id; /* 0 = coordinator, 1..n = worker */
} inproc_t;

static void inbox_clear(inbox_t *in) {
    while (in->head) {
        qmsg_t *m = in->head;
        in->head = m->next;
        free(m->buf);
        free(m);
    }
    in->tail = NULL;
}

/* Peer ids are relative: a worker's peer 0 is the coordinator (end 0). */
static int inproc_send(graft_transport_t *t, int peer, const void *buf, size_t len) {
    inproc_t *e = (inproc_t *)t;
    hub_t *h = e->hub;
    int ok_peer = e->id == 0 ? peer >= 1 && peer < h->nends : peer == 0;
    if (!ok_peer) return GRAFT_EINVAL;
    qmsg_t *m = graft_xmalloc(sizeof *m);
    m->next = NULL;
    m->from = e->id;
    m->buf = graft_xmalloc(len);
    memcpy(m->buf, buf, len);
    m->len = len;
    pthread_mutex_lock(&h->mu);
    memcpy(m->key, h->inbox[e->id].key, sizeof m->key);
    inbox_t *in = &h->inbox[peer];
    int alive = in->alive;
    if (alive) {
        if (in->tail) in->tail->next = m;
        else in->head = m;
        in->tail = m;
        pthread_cond_signal(&in->cond);
    }
    pthread_mutex_unlock(&h->mu);
    if (!alive) {
        free(m->buf);
        free(m);
        return GRAFT_EPEER;
    }
    return GRAFT_OK;
}

static struct timespec deadline_after(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static int inproc_recv(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len,
                       int timeout_ms) {
    inproc_t *e = (inproc_t *)t;
    hub_t *h = e->hub;
    inbox_t *in = &h->inbox[e->id];
    struct timespec until = deadline_after(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&h->mu);
    int rc = 0;
    while (!in->head && rc != ETIMEDOUT) {
        if (timeout_ms < 0) rc = pthread_cond_wait(&in->cond, &h->mu);
        else if (timeout_ms == 0) rc = ETIMEDOUT;
        else rc = pthread_cond_timedwait(&in->cond, &h->mu, &until);
    }
    qmsg_t *m = in->head;
    if (m) {
        in->head = m->next;
        if (!in->head) in->tail = NULL;
        memcpy(h->inbox[m->from].recv_key, m->key, sizeof m->key);
    }
    pthread_mutex_unlock(&h->mu);
    if (!m) return GRAFT_ETIMEOUT;
    *peer = e->id == 0 ? m->from : 0;
    *buf = m->buf;
    *len = m->len;
    free(m);
    return GRAFT_OK;
}

static const char *inproc_peer_name(graft_transport_t *t, int peer) {
    inproc_t *e = (inproc_t *)t;
    int end = e->id == 0 ? peer : (peer == 0 ? 0 : -1);
    if (end < 0 || end >= e->hub->nends) return "unknown peer";
    return e->hub->inbox[end].name;
}

static const char *inproc_peer_key(graft_transport_t *t, int peer) {
    inproc_t *e = (inproc_t *)t;
    if (e->id != 0 || peer < 1 || peer >= e->hub->nends) return NULL;
    return e->hub->inbox[peer].recv_key;
}

void graft_transport_inproc_set_key(graft_transport_t *end, const char *key) {
    inproc_t *e = (inproc_t *)end;
    GRAFT_ASSERT(end->ops->peer_key == inproc_peer_key && strlen(key) <= GRAFT_KEY_Z85_LEN);
    pthread_mutex_lock(&e->hub->mu);
    snprintf(e->hub->inbox[e->id].key, sizeof e->hub->inbox[e->id].key, "%s", key);
    pthread_mutex_unlock(&e->hub->mu);
}

static void hub_free(hub_t *h) {
    for (int i = 0; i < h->nends; i++) pthread_cond_destroy(&h->inbox[i].cond);
    pthread_mutex_destroy(&h->mu);
    free(h->inbox);
    free(h);
}

static void inproc_destroy(graft_transport_t *t) {
    inproc_t *e = (inproc_t *)t;
    hub_t *h = e->hub;
    pthread_mutex_lock(&h->mu);
    h->inbox[e->id].alive = 0;
    inbox_clear(&h->inbox[e->id]);
    int last = --h->live == 0;
    pthread_mutex_unlock(&h->mu);
    if (last) hub_free(h);
    free(e);
}

static const graft_transport_ops_t inproc_ops = {
    .name = "inproc",
    .send = inproc_send,
    .recv = inproc_recv,
    .peer_name = inproc_peer_name,
    .peer_key = inproc_peer_key,
    .destroy = inproc_destroy,
};

int graft_transport_inproc_new(int nworkers, graft_transport_t **ends) {
    if (nworkers < 1) return GRAFT_EINVAL;
    hub_t *h = graft_xcalloc(1, sizeof *h);
    h->nends = h->live = nworkers + 1;
    h->inbox = graft_xcalloc((size_t)h->nends, sizeof *h->inbox);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    for (int i = 0; i < h->nends; i++) {
        inbox_t *in = &h->inbox[i];
        pthread_cond_init(&in->cond, &ca);
        in->alive = 1;
        if (i == 0) snprintf(in->name, sizeof in->name, "coordinator");
        else snprintf(in->name, sizeof in->name, "worker %d", i);
        inproc_t *e = graft_xcalloc(1, sizeof *e);
        e->base.ops = &inproc_ops;
        e->hub = h;
        e->id = i;
        ends[i] = &e->base;
    }
    pthread_condattr_destroy(&ca);
    return GRAFT_OK;
}
