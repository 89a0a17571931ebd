/* coordinator.h — the coordinator of a federated multi-task run (DESIGN §5).
 *
 * A single-threaded event loop over one transport (ZeroMQ ROUTER, MPI rank
 * 0 or inproc): it polls with a timeout equal to the next deadline,
 * dispatches each message to a handler, fires timers (round deadline, lost
 * workers) and checks a stop flag that a signal handler only sets. Rounds
 * are an explicit state machine:
 *
 *   WAIT_WORKERS -> ROUND_OPEN -> AGGREGATE -> [EVAL -> [EVAL_WAIT]] -> [CHECKPOINT]
 *        ^                                                                 |
 *        +------------------- next round (or DONE) <-----------------------+
 *
 * Workers say Hello with the shards they hold (task, kind, train examples)
 * and the settings that must match the run's; a hello of another protocol
 * major version or without settings is refused (worker_refused), as is one
 * naming a worker that another CurveZMQ key registered (the transport's
 * peer_key): a worker is bound to its key, and a registered worker's
 * messages under another key are dropped. Each worker is assigned every run
 * task it holds train data for, and the Assign
 * carries each classification task's label set so that a shard lacking
 * classes agrees on label ids. Workers hold different task subsets; a
 * worker holding several trains them in turn (worker.h). A round sends each
 * worker the shared scope and its tasks' scopes (each scope travels as one
 * flat tensor named after the scope) with the schedule's learning rate for
 * each local step, collects Updates (one per worker name) until every
 * live participant replied or the deadline passed with at least
 * min_replies, and aggregates them (aggregator.h, strategies in
 * aggregate.h): the shared scope over all replies weighted by the train
 * examples each worker registered in its Hello, each task scope over that
 * task's cohort weighted by its shard size. A task whose cohort is empty keeps its
 * modules. Each Update is streamed into the aggregation when it arrives and
 * freed; with MPI reductions the Updates carry only metrics and the round
 * also waits for the reductions (no worker is declared lost then: under
 * mpirun a dead rank aborts the job). Clients that fail the transport's
 * handshake (another --server_key, a key not in --allow) are logged,
 * rate-limited, with handshake_failed events (handshake_log.h). Each round
 * logs the cohorts; round_end carries them (names sorted), the
 * aggregation's report, the round's time split (round_ms = train_ms_last +
 * comm_ms + agg_ms, agg_ms counting each reply's accumulation as it
 * arrived; see round_times) and the peak RSS; run_end the peak RSS.
 *
 * Message limit: a round start or an update of a worker holding every task
 * carries the shared scope, every task's and the step rates; the largest
 * such message (graft_wire_max_bytes) is the run's limit. The coordinator
 * decodes and sends nothing larger, a ZeroMQ transport it opens takes
 * nothing larger (open_transport), and the Assign tells each worker. A run
 * whose limit exceeds GRAFT_WIRE_HARD_MAX_BYTES is refused before the
 * transport opens.
 *
 * The global modules live in a graft_trainer_t built from the run config
 * with every task's files (train rows optional: the coordinator trains
 * nothing; it needs the label sets, and the evaluation rows for --eval_on
 * coordinator), which also evaluates them and checkpoints them
 * (graft_trainer_save; the number of finished rounds is stored as the
 * trainer's step).
 *
 * Evaluation (the dev split every eval_every_rounds, the test split after
 * the last round) runs where --eval_on says. coordinator: on the trainer's
 * copy of the tasks. workers: EVAL sends every live worker an EvalRequest
 * with the aggregated modules of its scopes, its tasks and the run's
 * evaluation sizes; EVAL_WAIT collects one EvalResult per worker and task
 * (sufficient statistics, eval_wire.h) until every asked worker answered,
 * was lost, or round_timeout_ms passed (counted from the end of the
 * coordinator's own evaluation, when it does one); a worker that registers
 * again meanwhile is asked again for what its name has not answered. Then
 * each task's answers are added up in worker-name order (eval_answers.h:
 * an IID part answered twice counts once) and reported like the
 * coordinator's own, with source "workers", the names, each worker's own
 * metrics and the coverage (complete, missing, duplicate, parts_missing)
 * in the eval event. both: the workers are asked first and evaluate while
 * the coordinator does.
 *
 * Ownership: the transport is borrowed (or opened by the caller's
 * open_transport and kept by the caller); everything else is internal.
 */
#ifndef GRAFT_COORDINATOR_H
#define GRAFT_COORDINATOR_H

#include <signal.h>

#include "runconfig.h"
#include "trainer.h"
#include "transport.h"

typedef struct {
    graft_run_config_t cfg;
    int expected_workers;  /* rounds start once this many have registered */
    graft_transport_t *tp; /* borrowed; NULL: open_transport opens it */
    /* Opens the transport into *tp once the coordinator has built the run's
     * modules and knows its message limit, max_msg_bytes (a ZeroMQ server
     * takes no larger message): after the settings are checked and before
     * OUT/events.jsonl is written. The caller keeps *tp (through ctx) and
     * destroys it after graft_coordinator_run. GRAFT_OK or an error, logged. */
    int (*open_transport)(void *ctx, size_t max_msg_bytes, graft_transport_t **tp);
    void *open_ctx;
    const char *mode;      /* "zmq", "mpi", ... for the run_start event */
    /* When the stop flag is seen: names why into buf (e.g. "worker shard-1-of-2
     * died (signal 9)"), or leaves it empty for a signal; may be NULL. */
    void (*stop_reason)(void *ctx, char *buf, size_t n);
    void *stop_ctx;
    /* A round still short of min_replies this long after its deadline ends
     * the run with GRAFT_ETIMEOUT; 0: it waits forever. */
    int stall_timeout_ms;
    /* After the last round, each task's test-split result in task order: r
     * and its one-line summary (graft_eval_format), both valid for the call.
     * The CLI prints the lines (cli_print_test_result). NULL: not reported
     * (the eval events and log lines still carry them). */
    void (*test_result)(void *ctx, const graft_eval_result_t *r, const char *line);
    void *test_result_ctx;
} graft_coordinator_opts_t;

/* Set by a signal handler to the signal's number: the loop stops at the
 * next iteration, and run_end's error names the signal (or stop_reason's
 * text). */
extern volatile sig_atomic_t graft_coordinator_stop;

/* Runs the whole job; reports per-task test metrics at the end through
 * o->test_result.
 * Returns GRAFT_OK or a negative error (logged). Settings that cannot work
 * (graft_coordinator_check, a --resume checkpoint that already holds
 * --rounds rounds) are refused before OUT/events.jsonl is created. */
int graft_coordinator_run(const graft_coordinator_opts_t *o);

/* Checks the settings before anything starts: those graft_trainer_check
 * refuses, --rounds x --local_steps above INT_MAX (global steps are ints),
 * the two stages of the channels method, and --min_replies
 * against the workers (a round closes at its deadline only with
 * --min_replies replies, so more than the workers would wait forever).
 * GRAFT_OK or GRAFT_EINVAL (logged). */
int graft_coordinator_check(const graft_run_config_t *cfg, int workers);

/* The run id every message of this run carries: a digest of the settings
 * that define the job, not of the operational ones (timeouts, heartbeats,
 * evaluation and checkpoint intervals, paths, threads; coordinator.c lists
 * both), so a coordinator resumed with those changed keeps it. Messages of
 * another run are answered with an error that makes their worker say
 * hello again. Never 0. */
uint64_t graft_run_id(const graft_run_config_t *cfg);

#endif
