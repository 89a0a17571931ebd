/* transport_mpi.c — the MPI transport for clusters (mpirun -np N graft ...).
 *
 * Peer id = rank on a private duplicate of MPI_COMM_WORLD; rank 0 is the
 * coordinator. Messages are MPI_BYTE point-to-point with one tag (the bytes
 * say what they are). Sends are MPI_Isend of a private copy, so that two
 * ranks sending large messages to each other at once cannot deadlock; the
 * copies are reaped as their requests complete. Receives poll
 * MPI_Improbe with short sleeps until the timeout, then MPI_Mrecv exactly the
 * probed message.
 *
 * Groups for the reductions: group 0 is the whole communicator; each
 * graft_transport_split() appends one MPI_Comm_split of it (see
 * transport.h). Reductions are MPI_Ireduce / MPI_Iallreduce of MPI_INT64_T
 * with MPI_SUM, in chunks of at most REDUCE_CHUNK elements (counts are int),
 * one request per chunk. The caller owns MPI_Init/MPI_Finalize; destroy the
 * transport on every rank before MPI_Finalize.
 */
#include <limits.h>
#include <mpi.h>
#include <string.h>
#include <time.h>

#include "transport.h"

#define GRAFT_MPI_TAG 4711
#define REDUCE_CHUNK ((size_t)1 << 26) /* int64 elements per MPI call: counts are int */
#define DRAIN_SECONDS 5.0

typedef struct {
    MPI_Request req;
    uint8_t *buf;
} pending_t;

typedef struct {
    graft_transport_t base;
    MPI_Comm comm;
    int rank, size;
    pending_t *pend;
    size_t npend, pcap;
    MPI_Comm *groups; /* groups[0] == comm; MPI_COMM_NULL where not a member */
    int ngroups, gcap;
    char (*names)[32];
} mt_t;

static int mpi_fail(const char *what, int err) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(err, msg, &n);
    LOG_ERROR("mpi: %s failed: %s", what, msg);
    return GRAFT_EIO;
}

/* Frees the copies of sends that have completed. */
static void reap(mt_t *m) {
    size_t keep = 0;
    for (size_t i = 0; i < m->npend; i++) {
        int done = 0;
        MPI_Test(&m->pend[i].req, &done, MPI_STATUS_IGNORE);
        if (done) free(m->pend[i].buf);
        else m->pend[keep++] = m->pend[i];
    }
    m->npend = keep;
}

static int mt_send(graft_transport_t *t, int peer, const void *buf, size_t len) {
    mt_t *m = (mt_t *)t;
    if (peer < 0 || peer >= m->size || peer == m->rank) return GRAFT_EINVAL;
    if (len > (size_t)INT_MAX) {
        LOG_ERROR("mpi: not sending a %zu-byte message to rank %d: MPI counts stop at %d bytes",
                  len, peer, INT_MAX);
        return GRAFT_EINVAL;
    }
    reap(m);
    if (m->npend == m->pcap) {
        m->pcap = m->pcap ? 2 * m->pcap : 16;
        m->pend = graft_xrealloc(m->pend, m->pcap * sizeof *m->pend);
    }
    pending_t *p = &m->pend[m->npend];
    p->buf = graft_xmalloc(len);
    memcpy(p->buf, buf, len);
    int err = MPI_Isend(p->buf, (int)len, MPI_BYTE, peer, GRAFT_MPI_TAG, m->comm, &p->req);
    if (err != MPI_SUCCESS) {
        free(p->buf);
        return mpi_fail("MPI_Isend", err);
    }
    m->npend++;
    return GRAFT_OK;
}

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

static int mt_recv(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len, int timeout_ms) {
    mt_t *m = (mt_t *)t;
    double until = graft_now() + timeout_ms / 1000.0;
    long sleep_ns = 20000;
    for (;;) {
        reap(m);
        int flag = 0;
        MPI_Message msg;
        MPI_Status st;
        int err = MPI_Improbe(MPI_ANY_SOURCE, GRAFT_MPI_TAG, m->comm, &flag, &msg, &st);
        if (err != MPI_SUCCESS) return mpi_fail("MPI_Improbe", err);
        if (flag) {
            int count = 0;
            MPI_Get_count(&st, MPI_BYTE, &count);
            *buf = graft_xmalloc((size_t)count);
            err = MPI_Mrecv(*buf, count, MPI_BYTE, &msg, &st);
            if (err != MPI_SUCCESS) {
                free(*buf);
                *buf = NULL;
                return mpi_fail("MPI_Mrecv", err);
            }
            *peer = st.MPI_SOURCE;
            *len = (size_t)count;
            return GRAFT_OK;
        }
        if (timeout_ms >= 0 && graft_now() >= until) return GRAFT_ETIMEOUT;
        nap(sleep_ns);
        if (sleep_ns < 1000000) sleep_ns *= 2; /* back off to 1 ms */
    }
}

static const char *mt_peer_name(graft_transport_t *t, int peer) {
    mt_t *m = (mt_t *)t;
    if (peer < 0 || peer >= m->size) return "unknown peer";
    return m->names[peer];
}

static void add_group(mt_t *m, MPI_Comm c) {
    if (m->ngroups == m->gcap) {
        m->gcap = m->gcap ? 2 * m->gcap : 8;
        m->groups = graft_xrealloc(m->groups, (size_t)m->gcap * sizeof *m->groups);
    }
    m->groups[m->ngroups++] = c;
}

struct graft_reduce {
    MPI_Request *reqs;
    int n;
};

static int mt_ireduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group, int all,
                          graft_reduce_t **req) {
    mt_t *m = (mt_t *)t;
    if (group < 0 || group >= m->ngroups || m->groups[group] == MPI_COMM_NULL) return GRAFT_EINVAL;
    MPI_Comm c = m->groups[group];
    int grank;
    MPI_Comm_rank(c, &grank);
    graft_reduce_t *r = graft_xcalloc(1, sizeof *r);
    r->reqs = graft_xcalloc(n / REDUCE_CHUNK + 1, sizeof *r->reqs);
    for (size_t off = 0; off < n; off += REDUCE_CHUNK) {
        int cnt = (int)(n - off < REDUCE_CHUNK ? n - off : REDUCE_CHUNK);
        MPI_Request *q = &r->reqs[r->n];
        int err;
        if (all)
            err = MPI_Iallreduce(MPI_IN_PLACE, x + off, cnt, MPI_INT64_T, MPI_SUM, c, q);
        else if (grank == 0)
            err = MPI_Ireduce(MPI_IN_PLACE, x + off, cnt, MPI_INT64_T, MPI_SUM, 0, c, q);
        else
            err = MPI_Ireduce(x + off, NULL, cnt, MPI_INT64_T, MPI_SUM, 0, c, q);
        if (err != MPI_SUCCESS) {
            /* Requests already started cannot be cancelled; let them finish. */
            MPI_Waitall(r->n, r->reqs, MPI_STATUSES_IGNORE);
            free(r->reqs);
            free(r);
            return mpi_fail(all ? "MPI_Iallreduce" : "MPI_Ireduce", err);
        }
        r->n++;
    }
    *req = r;
    return GRAFT_OK;
}

static int mt_reduce_test(graft_transport_t *t, graft_reduce_t **req, int *done) {
    (void)t;
    graft_reduce_t *r = *req;
    *done = 0;
    int err = MPI_Testall(r->n, r->reqs, done, MPI_STATUSES_IGNORE);
    if (err != MPI_SUCCESS) return mpi_fail("MPI_Testall", err);
    if (*done) {
        free(r->reqs);
        free(r);
        *req = NULL;
    }
    return GRAFT_OK;
}

static int mt_split(graft_transport_t *t, int color, int *group) {
    mt_t *m = (mt_t *)t;
    MPI_Comm c = MPI_COMM_NULL;
    int err = MPI_Comm_split(m->comm, color < 0 ? MPI_UNDEFINED : color, m->rank, &c);
    if (err != MPI_SUCCESS) return mpi_fail("MPI_Comm_split", err);
    if (c != MPI_COMM_NULL) MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
    add_group(m, c); /* also when not a member, so ids agree across ranks */
    if (c != MPI_COMM_NULL) *group = m->ngroups - 1;
    return GRAFT_OK;
}

/* Gives pending sends a few seconds to complete, then cancels the rest. */
static void drain(mt_t *m) {
    double until = graft_now() + DRAIN_SECONDS;
    while (m->npend && graft_now() < until) {
        reap(m);
        if (m->npend) nap(1000000);
    }
    if (m->npend) LOG_WARN("mpi: %zu messages still unreceived at shutdown", m->npend);
    for (size_t i = 0; i < m->npend; i++) {
        MPI_Cancel(&m->pend[i].req);
        MPI_Wait(&m->pend[i].req, MPI_STATUS_IGNORE);
        free(m->pend[i].buf);
    }
    m->npend = 0;
}

static void mt_destroy(graft_transport_t *t) {
    mt_t *m = (mt_t *)t;
    drain(m);
    for (int g = 1; g < m->ngroups; g++)
        if (m->groups[g] != MPI_COMM_NULL) MPI_Comm_free(&m->groups[g]);
    MPI_Comm_free(&m->comm);
    free(m->groups);
    free(m->pend);
    free(m->names);
    free(m);
}

static const graft_transport_ops_t mpi_ops = {
    .name = "mpi",
    .send = mt_send,
    .recv = mt_recv,
    .peer_name = mt_peer_name,
    .split = mt_split,
    .ireduce_i64 = mt_ireduce_i64,
    .reduce_test = mt_reduce_test,
    .destroy = mt_destroy,
};

int graft_transport_mpi_new(graft_transport_t **out) {
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        LOG_ERROR("mpi: MPI_Init has not been called; the MPI transport needs it first");
        return GRAFT_ESTATE;
    }
    mt_t *m = graft_xcalloc(1, sizeof *m);
    m->base.ops = &mpi_ops;
    int err = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (err != MPI_SUCCESS) {
        free(m);
        return mpi_fail("MPI_Comm_dup", err);
    }
    /* Errors come back as codes, so a failed call is logged, not an abort. */
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m->comm, &m->rank);
    MPI_Comm_size(m->comm, &m->size);
    m->names = graft_xcalloc((size_t)m->size, sizeof *m->names);
    snprintf(m->names[0], sizeof m->names[0], "coordinator (rank 0)");
    for (int r = 1; r < m->size; r++) snprintf(m->names[r], sizeof m->names[r], "rank %d", r);
    add_group(m, m->comm);
    *out = &m->base;
    return GRAFT_OK;
}
