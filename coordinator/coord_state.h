/* coord_state.h — the coordinator's shared state, private to its .c files
 * (coordinator.c: rounds, handlers, timers, aggregation, checkpoints, the
 * state machine and setup; evaluation.c: evaluating a round on the
 * coordinator and on the workers; run_id.c: the run id and the runs it
 * continues). Nothing outside coordinator/ includes
 * it: the public interface is coordinator.h.
 *
 * It holds the run's state (coord_t), the worker table (worker_t, indexed by
 * peer id), the open round's accepted updates (contribution_t), the round
 * state machine's states and the few functions one file calls in the other
 * (coord_ prefix).
 *
 * Ownership: graft_coordinator_run() owns the one coord_t of a run, on its
 * stack, and what it points to (the worker table, the replies, the
 * bindings, the trainer with the scopes in it, the aggregator, the
 * evaluation answers, the events and the handshake log), which it frees at
 * the end; the run config (cfg) and the transport (o.tp) are the caller's.
 * The functions here borrow c for the call.
 */
#ifndef GRAFT_COORD_STATE_H
#define GRAFT_COORD_STATE_H

#include "aggregator.h"
#include "coordinator.h"
#include "eval_answers.h"
#include "events.h"
#include "handshake_log.h"
#include "keys.h"
#include "trainer.h"
#include "wire.h"

/* Peer ids index the worker table. The slot of a worker that is lost or
 * re-registers elsewhere, and the peer of a message from no registered
 * worker (a refused hello, a stranger), go back to the transport
 * (graft_transport_forget), which gives the freed ids to newcomers: ids stay
 * below the number of peers alive at once, however many come and go. Only
 * MAX_PEERS - 1 at once are served; handle() drops (and forgets) the rest. */
#define MAX_PEERS 1024

typedef enum {
    S_WAIT_WORKERS,
    S_ROUND_OPEN,
    S_AGGREGATE,
    S_EVAL,
    S_EVAL_WAIT,
    S_CHECKPOINT,
    S_DONE,
} round_state_t;

/* Where evaluations run (--eval_on): bits. */
enum { EVAL_ON_COORDINATOR = 1, EVAL_ON_WORKERS = 2 };

typedef enum { W_NONE, W_ACTIVE } worker_state_t;

typedef struct {
    worker_state_t state;
    char name[GRAFT_WIRE_MAX_NAME + 1];
    char key[GRAFT_KEY_Z85_LEN + 1]; /* the CurveZMQ key it registered with; "": none */
    uint64_t train[GRAFT_MAX_TASKS]; /* train examples the worker holds per run task */
    int assigned[GRAFT_MAX_TASKS];   /* run task indices it trains */
    int n_assigned;
    double last_seen;
    int in_round; /* was sent the open round */
    int replied;  /* its name is among the round's contributions */
    int resent_round; /* the round last sent to it again (a repeated hello, a deadline) */
    /* A personal round (coord_personal) answered since its Assign: it holds
     * its own task scopes. */
    int has_tasks;
} worker_t;

/* The CurveZMQ key that the name of a worker no longer in the table
 * registered with: the name stays that key's (impersonated()). */
typedef struct {
    char name[GRAFT_WIRE_MAX_NAME + 1];
    char key[GRAFT_KEY_Z85_LEN + 1];
} binding_t;

/* One update accepted in the open round: its modules went into the
 * aggregator, and this is what round_end reports of it. Kept by worker
 * name, not peer slot, so that a worker lost after replying that says
 * hello again, or one that re-registers from another connection, cannot
 * add a second update to the round, and round_end counts exactly the
 * updates aggregated. */
typedef struct {
    char name[GRAFT_WIRE_MAX_NAME + 1];
    int assigned[GRAFT_MAX_TASKS]; /* the run tasks it trained */
    int n_assigned;
    uint64_t samples;          /* its train examples (its hello's), the loss's weight */
    double at;                 /* graft_now() when it was accepted */
    graft_wire_update_t reply; /* its metrics (tensors NULL) */
} contribution_t;

typedef struct {
    graft_coordinator_opts_t o;
    const graft_run_config_t *cfg;
    graft_trainer_t *tr;
    graft_events_t *ev;
    graft_handshake_log_t *handshakes;
    uint64_t run_id;
    /* The runs this one continues (--resume of another job's checkpoint),
     * oldest first: each Assign names them. */
    uint64_t earlier_runs[GRAFT_WIRE_MAX_EARLIER_RUNS];
    size_t nearlier_runs;
    round_state_t state;
    int first_round, round;
    double run_t0, round_t0, deadline;
    double stalled_at; /* graft_now() when this round's deadline passed short of replies; 0 */
    uint64_t bytes_in, bytes_out;
    contribution_t *replies; /* the open round's, n_replies of them (MAX_PEERS slots) */
    int n_replies;
    worker_t *w; /* indexed by peer id */
    binding_t *bound; /* names of released keyed workers, nbound of them */
    int nbound;
    /* scopes[0] is shared, scopes[1 + t] task t's; schema names them. */
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    graft_wire_schema_entry_t schema_entries[GRAFT_MAX_TASKS + 1];
    graft_wire_schema_t schema;
    size_t max_bytes; /* the run's message limit (graft_wire_max_bytes) */
    char ckpt_path[2 * GRAFT_OPT_STR];
    graft_agg_config_t agg_cfg;
    graft_aggregator_t *agg;
    double agg_ms; /* this round's time in aggregation (streaming and final) */
    /* The settings every worker's hello must match (graft_run_shared_settings). */
    graft_setting_t settings[GRAFT_MAX_SHARED_SETTINGS];
    int nsettings;
    char error[512]; /* why the run failed (the first reason), for run_end */
    /* Evaluation on the workers (EVAL_ON_WORKERS): the split asked for
     * (S_EVAL_WAIT), when it was asked and when answers stop counting, and
     * the answers so far. */
    int eval_on; /* EVAL_ON_* bits */
    int eval_split;
    double eval_t0, eval_deadline;
    uint64_t eval_bytes_in, eval_bytes_out; /* the counters when it was asked */
    int said_caps; /* the note on per-client caps under --eval_on both is logged */
    graft_eval_answers_t *answers;
} coord_t;

/* ---- coordinator.c ------------------------------------------------------ */

/* Sends m to peer, stamped with the run id; GRAFT_OK or an error, logged. */
int coord_send_msg(coord_t *c, int peer, graft_msg_t *m);
/* The scopes worker w is sent, as wire tensors into ts (GRAFT_MAX_TASKS + 1)
 * that point at the global modules; returns how many. */
int coord_worker_tensors(const coord_t *c, const worker_t *w, graft_wire_tensor_t *ts);
/* names[0..n) as a new JSON array (owned by the caller). */
json_t *coord_names_json(const char **names, size_t n);

/* Does the open round keep the task scopes on the workers (--personalize,
 * from --personal_from on)? */
static inline int coord_personal(const coord_t *c) {
    return graft_run_personal_round(c->cfg, c->round);
}

/* ---- run_id.c ----------------------------------------------------------- */

/* Reads the runs that --resume's checkpoint continues into earlier_runs,
 * and notes them and this run's id in the checkpoints to come (logged). */
void coord_note_lineage(coord_t *c);

/* ---- evaluation.c ------------------------------------------------------- */

/* The split to evaluate after this round (GRAFT_SPLIT_*), or -1: none. */
int coord_split_due(const coord_t *c);
/* The coordinator's own evaluation of split, reported. */
void coord_evaluate(coord_t *c, int split);
/* --eval_on workers: asks every live worker; returns how many were asked. */
int coord_request_eval(coord_t *c, int split);
/* A worker registering (again): during S_EVAL_WAIT it is asked what its
 * name has not answered; otherwise nothing. */
void coord_eval_rejoin(coord_t *c, int peer);
/* How many questions to live workers are still unanswered. */
size_t coord_eval_pending(coord_t *c);
/* A worker's EvalResult, taken in or refused (logged). */
void coord_on_eval_result(coord_t *c, int peer, const graft_msg_t *m);
/* The workers' answers added up and reported, one eval event per task. */
void coord_finish_worker_eval(coord_t *c);

#endif
