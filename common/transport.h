/* transport.h — moving opaque message bytes between the coordinator and its
 * workers. One interface, a table of function pointers (like redis
 * ConnectionType or a ggml backend), with three implementations chosen at
 * run time: in-process queues for tests (transport_inproc.c), ZeroMQ for
 * federated clients (transport_zmq.c) and MPI for clusters
 * (transport_mpi.c). The bytes are graft_wire_encode() output; a transport
 * never looks inside them.
 *
 * Peers are small integers. On a worker the coordinator is peer 0. On the
 * coordinator each worker is a peer >= 1: its MPI rank, the order in which a
 * new ZeroMQ routing identity (with CurveZMQ: a new pair of routing identity
 * and client key) first spoke, or its index for inproc. forget() lets a
 * ZeroMQ server give a peer's id to the next newcomer, so that ids stay as
 * small as the number of peers the caller keeps, however many come and go.
 *
 * Authenticated identity: peer_key() names the key that authenticated a
 * peer's messages (CurveZMQ), so that the coordinator can bind a worker to
 * the key it registered with. A ZeroMQ client chooses its own routing
 * identity, and ZMQ_ROUTER_HANDOVER gives a new connection under an
 * identity in use the old one's place; so a CurveZMQ client's identity
 * carries its key (graft_zmq_routing_id), and the ZeroMQ server makes a
 * connection with another key under the same identity (one set by hand) a
 * peer of its own, and sends nothing to the old peer while the identity is
 * last heard from the new one (send() gives GRAFT_EPEER, logged).
 *
 * Ownership:
 *  - send() copies or finishes with `buf` before returning; the caller keeps it.
 *  - recv() hands back a malloc'd buffer in *buf that the caller must free().
 *  - peer_name() returns a string owned by the transport, valid until destroy.
 *  - graft_transport_destroy() frees the transport and sets the pointer NULL.
 *  - next_failure() copies into the caller's graft_handshake_failure_t.
 * A transport object is used from one thread at a time (ZeroMQ sockets are
 * not thread-safe); inproc ends may each live on their own thread.
 *
 * Collectives (MPI only; the others return GRAFT_EINVAL). Aggregation can be
 * carried by reductions instead of point-to-point updates (aggregate.h):
 *  - Group GRAFT_GROUP_WORLD (0) is every rank, coordinator included.
 *  - graft_transport_split(t, color, &group) is collective over all ranks
 *    (every rank calls it, in the same order): ranks passing the same
 *    color >= 0 form one group, ordered by world rank; a rank passing
 *    GRAFT_GROUP_NONE (-1) joins none and gets group -1. The k-th split
 *    returns the same group id on every member, naming on each rank the group
 *    of its own color. For per-task cohorts call it once per task with
 *    color 0 on the coordinator and that task's workers and -1 elsewhere:
 *    the coordinator, being world rank 0, is then rank 0 (the root) of every
 *    task group.
 *  - graft_transport_ireduce_i64(t, x, n, group, &req) starts summing x
 *    (n int64) elementwise over the group's members into x on the group root
 *    (the member with the lowest world rank); x must stay untouched until
 *    graft_transport_reduce_test() says the reduction is done. The sum is
 *    MPI_SUM on MPI_INT64_T: integer addition, exact and independent of the
 *    order the library combines the members in. Every member of the group
 *    must start the same reductions in the same order, with the same n.
 *    Non-blocking, so the coordinator's event loop and the workers'
 *    heartbeats keep running while a slow rank finishes its round.
 *  - graft_transport_reduce_i64 / allreduce_i64: the blocking forms (the
 *    allreduce leaves the sum on every member).
 *  - A collective cannot be cancelled: if a member never joins, the others
 *    wait. Under mpirun ranks do not vanish silently (a dead rank makes
 *    mpirun abort the job), so the coordinator uses reductions only there.
 */#ifndef GRAFT_TRANSPORT_H
#define GRAFT_TRANSPORT_H

#include "graft.h"
#include "keys.h"

#define GRAFT_GROUP_WORLD 0
#define GRAFT_GROUP_NONE (-1)

typedef struct graft_transport graft_transport_t;
typedef struct graft_reduce graft_reduce_t; /* a reduction in flight, owned by the backend */

/* A connection that never became a peer because its handshake failed: a
 * client with another server key or a key off the allow-list never gets a
 * message through, so only this tells anyone about it. The ZeroMQ server
 * reports them (its socket's monitor and its ZAP handler); the coordinator
 * logs them, rate-limited (handshake_log.h). */
typedef enum {
    GRAFT_HANDSHAKE_CRYPTO,      /* CurveZMQ could not open the client's hello: another
                                    server key */
    GRAFT_HANDSHAKE_KEY_REFUSED, /* the client's public key is not on the allow-list */
    GRAFT_HANDSHAKE_MECHANISM,   /* CurveZMQ on one side only */
    GRAFT_HANDSHAKE_PROTOCOL,    /* another ZMTP protocol error */
    GRAFT_HANDSHAKE_CLOSED,      /* the connection ended (or timed out) inside the handshake */
} graft_handshake_kind_t;

typedef struct {
    graft_handshake_kind_t kind;
    char host[64];                          /* the client's IP address; "" when unknown */
    int port;                               /* its TCP port; 0 when unknown */
    char client_key[GRAFT_KEY_Z85_LEN + 1]; /* z85 public key; "" when unknown */
    int code;  /* libzmq's value: ZMQ_PROTOCOL_ERROR_*, the ZAP status or an errno */
    int count; /* how many alike failures (kind, host, key, code) this stands for */
} graft_handshake_failure_t;

typedef struct {
    const char *name; /* "inproc", "zmq", "mpi" */
    /* GRAFT_OK, GRAFT_EINVAL (bad peer or size), GRAFT_EPEER (peer gone),
     * GRAFT_ETIMEOUT (peer not draining), GRAFT_EIO. */
    int (*send)(graft_transport_t *t, int peer, const void *buf, size_t len);
    /* Waits up to timeout_ms (< 0: forever, 0: poll) for one message.
     * GRAFT_OK with *peer, *buf (caller frees), *len; GRAFT_ETIMEOUT; or an error. */
    int (*recv)(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len, int timeout_ms);
    const char *(*peer_name)(graft_transport_t *t, int peer);
    /* The authenticated key of peer (above), or NULL: none. */
    const char *(*peer_key)(graft_transport_t *t, int peer);
    /* Collectives; NULL when unsupported. all != 0: every member gets the sum.
     * *req is the backend's handle, finished by reduce_test. */
    int (*split)(graft_transport_t *t, int color, int *group);
    int (*ireduce_i64)(graft_transport_t *t, int64_t *x, size_t n, int group, int all,
                       graft_reduce_t **req);
    /* *done = 1 (and *req freed, set NULL) once complete; 0 while in flight. */
    int (*reduce_test)(graft_transport_t *t, graft_reduce_t **req, int *done);
    /* The oldest failed handshake not yet taken: 1, or 0 when none. NULL
     * for a backend without handshakes. */
    int (*next_failure)(graft_transport_t *t, graft_handshake_failure_t *f);
    /* Drops what the transport knows of peer; NULL when peers are fixed. */
    void (*forget)(graft_transport_t *t, int peer);
    void (*destroy)(graft_transport_t *t);
} graft_transport_ops_t;

/* Backends embed this as their first member. */
struct graft_transport {
    const graft_transport_ops_t *ops;
};

int graft_transport_send(graft_transport_t *t, int peer, const void *buf, size_t len);
int graft_transport_recv(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len,
                         int timeout_ms);
/* "worker 3 (tcp://10.0.0.7:51234)", "rank 2", ...: for log lines. */
const char *graft_transport_peer_name(graft_transport_t *t, int peer);
/* The Z85 public key that authenticated peer's messages (CurveZMQ), fixed
 * for the peer's life on a ZeroMQ server; "" when the transport does not
 * authenticate peers (plain ZeroMQ, MPI, inproc unless a test set one).
 * Owned by the transport, valid until the next recv(). */
const char *graft_transport_peer_key(graft_transport_t *t, int peer);
/* Collectives (see above); GRAFT_EINVAL on a transport without them. */
int graft_transport_has_collectives(const graft_transport_t *t);
int graft_transport_split(graft_transport_t *t, int color, int *group);
int graft_transport_ireduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group,
                                graft_reduce_t **req);
/* 1 when done (*req freed and NULL), 0 while in flight, or a negative error. */
int graft_transport_reduce_test(graft_transport_t *t, graft_reduce_t **req);
int graft_transport_reduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group);
int graft_transport_allreduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group);
/* Takes the oldest failed handshake seen so far into *f: 1, or 0 when there
 * is none. recv() notices them while it waits, so a caller that drains them
 * after every recv() hears of each within one receive timeout. */
int graft_transport_next_failure(graft_transport_t *t, graft_handshake_failure_t *f);
/* The caller is done with peer (a lost or refused worker): a ZeroMQ server
 * forgets its identity and key, and the next new identity may get its id
 * (the lowest free one); a later message from it comes as a new peer.
 * Messages already sent to it are still delivered. No-op for MPI ranks and
 * inproc ends, whose ids are fixed, and for an unknown peer. */
void graft_transport_forget(graft_transport_t *t, int peer);
void graft_transport_destroy(graft_transport_t **t);

/* ---- inproc: a coordinator end and nworkers worker ends ------------------
 * ends[0] is the coordinator; ends[i] (1..nworkers) is worker i, whose peer 0
 * is the coordinator. Each end is destroyed on its own; the shared queues go
 * with the last one. Sending to a destroyed end gives GRAFT_EPEER. */
int graft_transport_inproc_new(int nworkers, graft_transport_t **ends);
/* Tests: the key the coordinator end reports (peer_key) for the messages
 * this worker end sends from now on (at most GRAFT_KEY_Z85_LEN bytes). */
void graft_transport_inproc_set_key(graft_transport_t *end, const char *key);

/* ---- ZeroMQ -------------------------------------------------------------- */
typedef struct {
    const char *endpoint; /* server binds ("tcp://127.0.0.1:*" picks a port), client connects */
    /* CurveZMQ: leave keys NULL for plain TCP. The server needs its keypair
     * and a non-empty allow-list of client public keys; a client needs its
     * keypair and the server's public key. */
    const graft_keypair_t *keypair;
    const graft_key_t *server_key;
    const graft_key_t *allow;
    size_t nallow;
    /* Client: a stable routing identity (e.g. the worker name, 1..255
     * bytes) so that a restarted worker takes over its old peer slot on the
     * coordinator (graft_zmq_routing_id makes the socket's). */
    const char *identity;
    int reconnect_ivl_ms;     /* client: first retry after this (0: 100) */
    int reconnect_ivl_max_ms; /* client: retries back off up to this (0: 5000) */
    /* The largest message this end takes (ZMQ_MAXMSGSIZE: a larger one
     * drops the connection) or sends (send() refuses it, logged); 0: 64 MiB
     * + 64 KiB. The coordinator sets it from the run's modules. */
    size_t max_msg_bytes;
} graft_zmq_opts_t;

/* The longest ZeroMQ routing identity. */
#define GRAFT_ZMQ_MAX_ROUTING_ID 255

/* The routing identity a client's socket takes for `identity` into out
 * (GRAFT_ZMQ_MAX_ROUTING_ID + 1 bytes), returning its length (not
 * terminated). Without CurveZMQ (key NULL) it is `identity`. With it, it is
 * the client's public key, "/" and `identity` (a name too long for that
 * ends in a digest of the whole of it): ZMQ_ROUTER_HANDOVER gives a routing
 * identity to the newest connection and leaves the one it had open but
 * deaf, unheard and unreachable, until ZeroMQ's heartbeats drop it (10-20 s)
 * and it reconnects; so the identity must be one that only a restart of the
 * same client takes over. A client of another key under a worker's name
 * then gets a peer of its own (and is refused at hello), and the worker
 * keeps its connection. Only a client that sets its socket's identity by
 * hand to the worker's can still take it over (the server then supersedes
 * the worker's peer, above). */
size_t graft_zmq_routing_id(const char *identity, const graft_key_t *key, char *out);

/* The coordinator: binds a ROUTER. */
int graft_transport_zmq_server(const graft_zmq_opts_t *opts, graft_transport_t **out);
/* 1 when a server endpoint is reachable from this machine only: TCP on a
 * loopback address (127.0.0.0/8, ::1, localhost) or ipc:// (a socket file,
 * guarded by its folder's permissions); 0 for anything else: all
 * interfaces (a host of *), any other address, host or interface name,
 * other transports. Without CurveZMQ, whoever reaches it can join. */
int graft_zmq_endpoint_is_local(const char *endpoint);
/* A worker: connects a DEALER; ZeroMQ reconnects by itself. */
int graft_transport_zmq_client(const graft_zmq_opts_t *opts, graft_transport_t **out);
/* The endpoint actually bound or connected (ZMQ_LAST_ENDPOINT), owned by t. */
const char *graft_transport_zmq_endpoint(graft_transport_t *t);
/* How many CurveZMQ handshakes the server refused so far (unknown keys). */
uint64_t graft_transport_zmq_refused(graft_transport_t *t);
/* The server reports failed handshakes (next_failure): with CurveZMQ a
 * client with another server key (GRAFT_HANDSHAKE_CRYPTO, with its address
 * when recv() or next_failure() looked before the client hung up) or a key
 * off the allow-list (GRAFT_HANDSHAKE_KEY_REFUSED, with its address and
 * key); with or without CurveZMQ a client that has it when the server has
 * not, or the reverse (MECHANISM). Alike failures not yet taken are merged
 * into one with a count. */

/* ---- MPI -----------------------------------------------------------------
 * The caller has called MPI_Init (MPI_THREAD_FUNNELED or better; a worker's
 * heartbeat thread needs MPI_THREAD_SERIALIZED) and calls MPI_Finalize after
 * destroying the transport. The transport works on a
 * duplicate of MPI_COMM_WORLD; peer id = rank, rank 0 the coordinator. */
int graft_transport_mpi_new(graft_transport_t **out);

#endif
