/* worker.h — a worker of a federated run (DESIGN §5): holds shards of the
 * run's tasks, registers with the coordinator, trains what each round sends
 * and replies with the trained modules.
 *
 * Protocol, from the worker's side: Hello (run id 0, the shards it holds)
 * -> Assign (its id and tasks, and the run id) -> for each RoundStart:
 * import the shared and task scopes, reset the optimiser state, run
 * local_steps steps round-robin over the tasks it was sent (with the
 * round's FedProx term toward the values it was sent, and LoRA A frozen
 * when asked), reply Update (the scopes, the sample count, the mean loss).
 * When the RoundStart asks for MPI reductions the Update carries no
 * tensors and the worker then joins the reductions (contribute.h),
 * heartbeating while it waits. Heartbeats go out every
 * heartbeat_ms, also between training steps. Shutdown ends the loop; an
 * Error "unknown worker" (a restarted coordinator) makes it say Hello
 * again. Reconnection and its backoff are the transport's (ZeroMQ).
 *
 * Each round reseeds the batch sampler from (seed, worker name, round), so
 * a worker's batches do not depend on its history or on the transport: the
 * same job over MPI and ZeroMQ trains on the same batches.
 *
 * Ownership: the transport is borrowed; the worker owns its trainer.
 */
#ifndef GRAFT_WORKER_H
#define GRAFT_WORKER_H

#include <signal.h>

#include "runconfig.h"
#include "transport.h"

typedef struct {
    graft_run_config_t cfg;
    const char *name;    /* stable name; NULL: "shard-I-of-N" */
    int shard_index;     /* this worker keeps train examples i, i+n, i+2n, ... */
    int shard_count;     /* 1: all the data */
    graft_transport_t *tp; /* borrowed; peer 0 is the coordinator */
} graft_worker_opts_t;

/* Runs until Shutdown, a fatal error, or *stop (may be NULL) becomes set.
 * Returns GRAFT_OK after a Shutdown. */
int graft_worker_run(const graft_worker_opts_t *o, volatile sig_atomic_t *stop);

#endif
