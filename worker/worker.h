/* worker.h — a worker of a federated run (DESIGN §5): holds shards of the
 * run's tasks, registers with the coordinator, trains what each round sends
 * and replies with the trained modules.
 *
 * Data. Either IID shards of the --tasks files (every N-th train example
 * from the I-th, --shard I/N), or a client folder of a shard directory
 * (--data DIR, written by `graft data shard`): the train data of task NAME
 * is the train rows of DIR/NAME.tsv, which also holds the client's share of
 * the task's dev and test rows (the worker trains on the train rows; a run
 * with --eval_on workers evaluates on its dev and test rows), and a task
 * without a file there is not held. The worker never reads the
 * --tasks file of a task it holds through --data; it takes the task's
 * label set from the coordinator (Assign), so a shard that lacks some
 * classes still numbers them, and sizes its head, as the run does.
 *
 * Protocol, from the worker's side: Hello (run id 0, the shards it holds
 * with their train example counts) -> Assign (its id, the tasks it trains,
 * their label sets, the run id, the run's message limit: the worker refuses
 * larger round starts and sends no larger update, logged); the worker then
 * builds its trainer for exactly those tasks -> for each RoundStart: import the shared and task
 * scopes, reset the optimiser state (unless the run keeps it), run
 * local_steps steps at the rates the coordinator sends (the run's
 * schedule; with the round's FedProx term toward the values it was sent,
 * and LoRA A frozen when asked), reply
 * Update (the scopes, the sample count, the mean loss, the seconds spent
 * training). When the RoundStart asks for MPI reductions the Update carries
 * no tensors and the worker then joins the reductions (contribute.h; the
 * groups are the run's tasks, so the worker maps its trainer's tasks to
 * their --tasks indices), heartbeating while it waits. A worker
 * holding several tasks trains them in turn: local step s of round r is
 * global step g = (r-1)*local_steps + s and trains the task that --mix
 * picks for step g among its own tasks (round-robin: its tasks in run
 * order, continuing across rounds). Heartbeats go out every heartbeat_ms,
 * also during training steps (from a second thread, see serial_beats), so a
 * step longer than the coordinator's silence limit is not taken for a loss.
 * An EvalRequest (--eval_on workers) carries the round's aggregated
 * modules: the worker imports them (its optimiser state untouched), and for
 * each task named evaluates its own rows of the split with the
 * coordinator's sizes — with an IID shard I/N, part I of N of the
 * evaluation the coordinator would run on the whole file (every N-th
 * evaluated example from the I-th), so the parts add up to exactly that;
 * with a client folder, the dev or test rows of its file — and answers one
 * EvalResult of sufficient statistics per task, heartbeating meanwhile.
 * Shutdown ends the loop; an Error "unknown worker" (a restarted
 * coordinator) makes it say Hello again, as does any message of another
 * run (a coordinator restarted with other job settings; while its Hello
 * is pending the worker takes the answer from any run); an Assign
 * with other tasks than the first is an error (restart the worker).
 * Reconnection and its backoff are the transport's (ZeroMQ).
 *
 * Batches: each round seeks the sampler to global step g0 = (r-1) *
 * local_steps on the worker's sampler stream (graft_trainer_seek_sampler):
 * the IID shard index I, or a hash of the --data folder's name. Batches
 * therefore depend only on (seed, stream, step): not on the worker's
 * history nor on the transport, so the same job over MPI and ZeroMQ, or a
 * resumed one, trains on the same batches; and a single worker holding all
 * the data (shard 0/1, stream 0) draws exactly the batches of `graft train`.
 *
 * Ownership: the transport is borrowed; the worker owns its shards and its
 * trainer.
 */
#ifndef GRAFT_WORKER_H
#define GRAFT_WORKER_H

#include <signal.h>

#include "runconfig.h"
#include "transport.h"

typedef struct {
    graft_run_config_t cfg;
    const char *name;     /* stable name; NULL: the --data folder's name, or "shard-I-of-N" */
    const char *data_dir; /* a client folder (DIR/NAME.tsv per task held); NULL: IID shards */
    int shard_index;      /* IID: this worker keeps train examples i, i+n, i+2n, ... */
    int shard_count;      /* 1: all the data */
    graft_transport_t *tp; /* borrowed; peer 0 is the coordinator */
    /* 1: heartbeat only between training steps, from the worker's own
     * thread (an MPI library without MPI_THREAD_SERIALIZED); 0: a thread
     * heartbeats during training too, using tp while the worker does not. */
    int serial_beats;
    /* Give up with GRAFT_ETIMEOUT when nothing came from the coordinator
     * this long after a hello (a coordinator that is not there, or that
     * refuses this worker's CurveZMQ key and so never sees the hello);
     * 0: wait forever. */
    int hello_timeout_ms;
    /* A registered worker that has heard nothing from the coordinator this
     * long says hello again (then hello_timeout_ms applies); -1: three
     * round_timeout_ms; 0: wait forever. */
    int coordinator_timeout_ms;
    /* After each evaluation the coordinator asks for, write the modules just
     * evaluated (the round's aggregated shared scope and the task scopes:
     * in a personalised run this worker's own) to this path, atomically, as
     * a modules checkpoint of its tasks (graft_trainer_save; in a
     * personalised run with the optimizer moments and the run id, and a
     * worker started with the file of the same run takes its own task
     * modules back from it); NULL: none. */
    const char *save_path;
} graft_worker_opts_t;

/* Runs until Shutdown, a fatal error, or *stop (may be NULL) becomes set.
 * Returns GRAFT_OK after the Shutdown of a complete run; GRAFT_ESTATE after
 * one of an aborted run. */
int graft_worker_run(const graft_worker_opts_t *o, volatile sig_atomic_t *stop);

/* The default worker name for opts without one, into buf. */
void graft_worker_default_name(const graft_worker_opts_t *o, char *buf, size_t n);

#endif
