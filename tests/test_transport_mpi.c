/* test_transport_mpi.c — the MPI transport under a real `mpirun -np 3`.
 * Rank 0 (the coordinator) exchanges wire messages with ranks 1..N-1,
 * including large ones sent both ways at once, and the int64 reductions give
 * exact sums over the world and over split groups, also non-blocking while
 * point-to-point messages flow. A plain main() with
 * checks: every rank counts its failures and the job fails if any rank did. */
#include <mpi.h>
#include <string.h>
#include <time.h>

#include "transport.h"
#include "wire.h"

#define RUN 77
static int rank, nranks, failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "rank %d: check failed at %s:%d: %s\n", rank, __FILE__,   \
                    __LINE__, #cond);                                                 \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static void send_msg(graft_transport_t *t, int peer, const graft_msg_t *m) {
    uint8_t *buf;
    size_t len;
    CHECK(graft_wire_encode(m, GRAFT_DTYPE_F32, &buf, &len) == GRAFT_OK);
    CHECK(graft_transport_send(t, peer, buf, len) == GRAFT_OK);
    free(buf); /* the transport kept its own copy */
}

/* Receives and decodes one message; returns the sender or -1. */
static int recv_msg(graft_transport_t *t, graft_msg_t *m) {
    int peer = -1;
    uint8_t *buf;
    size_t len;
    char why[256];
    int rc = graft_transport_recv(t, &peer, &buf, &len, 20000);
    CHECK(rc == GRAFT_OK);
    if (rc) return -1;
    rc = graft_wire_decode(buf, len, &(graft_wire_opts_t){.run_id = RUN}, m, why, sizeof why);
    free(buf);
    if (rc) fprintf(stderr, "rank %d: bad message from %d: %s\n", rank, peer, why);
    CHECK(rc == GRAFT_OK);
    return rc ? -1 : peer;
}

enum { BIG = 1 << 20 }; /* 4 MiB of floats: past any eager limit */

/* Rank 0 sends each worker a RoundStart holding a big tensor while the
 * workers send it Updates of the same size: with blocking sends this would
 * deadlock. Each worker answers with its tensor scaled by its rank. */
static void exchange(graft_transport_t *t) {
    float *x = malloc(BIG * sizeof *x);
    for (int i = 0; i < BIG; i++) x[i] = (float)(i % 1000);
    graft_wire_tensor_t tensor = {.name = "shared.w", .ndim = 1, .shape = {BIG}, .data = x,
                                  .numel = BIG};
    if (rank == 0) {
        graft_msg_t rs = {.type = GRAFT_MSG_ROUND_START, .run_id = RUN,
                          .round_start = {.round = 1, .tensors = &tensor, .ntensors = 1,
                                          .hyper = {.learning_rate = 0.1f, .local_steps = 1,
                                                    .batch_size = 1},
                                          .deadline_ms = 1000}};
        for (int r = 1; r < nranks; r++) send_msg(t, r, &rs);
        int seen = 0;
        for (int k = 1; k < nranks; k++) {
            graft_msg_t m;
            int peer = recv_msg(t, &m);
            if (peer < 0) continue;
            CHECK(m.type == GRAFT_MSG_UPDATE && m.update.worker_id == (uint32_t)peer);
            CHECK(m.update.ntensors == 1 && m.update.tensors[0].numel == BIG);
            for (int i = 0; i < BIG && m.update.ntensors == 1; i += 997)
                CHECK(m.update.tensors[0].data[i] == (float)peer * x[i]);
            CHECK(strcmp(graft_transport_peer_name(t, peer), "rank 0") != 0);
            seen |= 1 << peer;
            graft_msg_free(&m);
        }
        CHECK(seen == ((1 << nranks) - 2));
    } else {
        for (int i = 0; i < BIG; i++) x[i] *= (float)rank;
        graft_msg_t up = {.type = GRAFT_MSG_UPDATE, .run_id = RUN,
                          .update = {.round = 1, .worker_id = (uint32_t)rank, .tensors = &tensor,
                                     .ntensors = 1, .sample_count = 100}};
        send_msg(t, 0, &up); /* before receiving: both sides send at once */
        graft_msg_t m;
        CHECK(recv_msg(t, &m) == 0);
        CHECK(m.type == GRAFT_MSG_ROUND_START && m.round_start.round == 1);
        CHECK(m.round_start.ntensors == 1 && m.round_start.tensors[0].data[999] == 999.0f);
        CHECK(strcmp(graft_transport_peer_name(t, 0), "coordinator (rank 0)") == 0);
        graft_msg_free(&m);
    }
    free(x);
}

/* Small control messages: every worker reports, rank 0 answers each one. */
static void ping(graft_transport_t *t) {
    if (rank == 0) {
        for (int k = 1; k < nranks; k++) {
            graft_msg_t m;
            int peer = recv_msg(t, &m);
            if (peer < 0) continue;
            CHECK(m.type == GRAFT_MSG_HEARTBEAT && m.heartbeat.worker_id == (uint32_t)peer);
            graft_msg_free(&m);
            graft_msg_t a = {.type = GRAFT_MSG_ASSIGN, .run_id = RUN,
                             .assign = {.worker_id = (uint32_t)peer}};
            send_msg(t, peer, &a);
        }
    } else {
        graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = RUN,
                          .heartbeat = {.worker_id = (uint32_t)rank, .unix_ms = 1}};
        send_msg(t, 0, &hb);
        graft_msg_t m;
        CHECK(recv_msg(t, &m) == 0);
        CHECK(m.type == GRAFT_MSG_ASSIGN && m.assign.worker_id == (uint32_t)rank);
        graft_msg_free(&m);
    }
}

static void errors(graft_transport_t *t) {
    int peer;
    uint8_t *buf;
    size_t len;
    /* Everyone has drained their messages after the barrier: nothing is left. */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = graft_now();
    CHECK(graft_transport_recv(t, &peer, &buf, &len, 100) == GRAFT_ETIMEOUT);
    CHECK(graft_now() - t0 >= 0.09);
    CHECK(graft_transport_send(t, rank, "x", 1) == GRAFT_EINVAL);
    CHECK(graft_transport_send(t, nranks, "x", 1) == GRAFT_EINVAL);
    int64_t v = 1;
    CHECK(graft_transport_allreduce_i64(t, &v, 1, 99) == GRAFT_EINVAL);
}

enum { N = 1000 };

static void reductions(graft_transport_t *t) {
    int64_t x[N];
    CHECK(graft_transport_has_collectives(t));
    /* World: sum over r of (r * 2^40 + i - 500): beyond float and int32. */
    for (int i = 0; i < N; i++) x[i] = ((int64_t)rank << 40) + i - 500;
    CHECK(graft_transport_allreduce_i64(t, x, N, GRAFT_GROUP_WORLD) == GRAFT_OK);
    int64_t rsum = (int64_t)nranks * (nranks - 1) / 2;
    for (int i = 0; i < N; i++) CHECK(x[i] == (rsum << 40) + (int64_t)nranks * (i - 500));

    /* A "task cohort": the coordinator plus the even workers. */
    int g = -2;
    CHECK(graft_transport_split(t, rank % 2 == 0 ? 0 : GRAFT_GROUP_NONE, &g) == GRAFT_OK);
    int64_t esum = 0, ecount = 0;
    for (int r = 0; r < nranks; r += 2) esum += r, ecount++;
    if (rank % 2 == 0) {
        CHECK(g == 1);
        for (int i = 0; i < N; i++) x[i] = (int64_t)(rank + 1) * i;
        CHECK(graft_transport_allreduce_i64(t, x, N, g) == GRAFT_OK);
        for (int i = 0; i < N; i++) CHECK(x[i] == (int64_t)i * (esum + ecount));
    } else {
        CHECK(g == GRAFT_GROUP_NONE);
        CHECK(graft_transport_allreduce_i64(t, x, N, 1) == GRAFT_EINVAL);
    }

    /* Two groups from one split (color = rank parity); reduce to each root. */
    CHECK(graft_transport_split(t, rank % 2, &g) == GRAFT_OK);
    CHECK(g == 2);
    for (int i = 0; i < N; i++) x[i] = rank * 10 + 1;
    CHECK(graft_transport_reduce_i64(t, x, N, g) == GRAFT_OK);
    int64_t want = 0;
    for (int r = rank % 2; r < nranks; r += 2) want += r * 10 + 1;
    if (rank < 2) /* world ranks 0 and 1 are the roots of their groups */
        for (int i = 0; i < N; i++) CHECK(x[i] == want);
    else
        for (int i = 0; i < N; i++) CHECK(x[i] == rank * 10 + 1); /* untouched */
}

/* The coordinator starts a world reduction, then keeps receiving: each
 * worker first sends a heartbeat, sleeps, and only then joins. The reduction
 * stays in flight (not done) until the last rank joined, and the messages
 * arrive meanwhile. */
static void nonblocking(graft_transport_t *t) {
    int64_t x[N];
    for (int i = 0; i < N; i++) x[i] = rank == 0 ? 0 : (int64_t)rank * i;
    graft_reduce_t *req = NULL;
    if (rank == 0) {
        CHECK(graft_transport_ireduce_i64(t, x, N, GRAFT_GROUP_WORLD, &req) == GRAFT_OK);
        int seen = 0, done_early = 0;
        while (seen < nranks - 1) {
            graft_msg_t m;
            if (recv_msg(t, &m) < 0) break;
            CHECK(m.type == GRAFT_MSG_HEARTBEAT);
            graft_msg_free(&m);
            seen++;
            if (graft_transport_reduce_test(t, &req) == 1) done_early = 1;
        }
        CHECK(!done_early);
        double t0 = graft_now();
        int rc;
        while ((rc = graft_transport_reduce_test(t, &req)) == 0 && graft_now() - t0 < 20) {
        }
        CHECK(rc == 1 && req == NULL);
        int64_t rsum = (int64_t)nranks * (nranks - 1) / 2;
        for (int i = 0; i < N; i++) CHECK(x[i] == rsum * i);
    } else {
        graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = RUN,
                          .heartbeat = {.worker_id = (uint32_t)rank, .unix_ms = 2}};
        send_msg(t, 0, &hb);
        struct timespec nap = {0, 200 * 1000000L};
        nanosleep(&nap, NULL);
        CHECK(graft_transport_reduce_i64(t, x, N, GRAFT_GROUP_WORLD) == GRAFT_OK);
    }
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    CHECK(nranks >= 2);
    graft_transport_t *t = NULL;
    CHECK(graft_transport_mpi_new(&t) == GRAFT_OK);
    if (t && nranks >= 2) {
        exchange(t);
        ping(t);
        errors(t);
        reductions(t);
        nonblocking(t);
    }
    graft_transport_destroy(&t);
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("transport_mpi: %d ranks, %d failed checks\n", nranks, total);
    MPI_Finalize();
    return total ? 1 : 0;
}
