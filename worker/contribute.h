/* contribute.h — a worker's side of the MPI reductions that carry a
 * round's modules when `graft mpi` runs with mpi_collectives (the contract
 * both ends follow is in coordinator/aggregator.h).
 *
 * For each scope it trained, the worker computes the same fixed-point
 * contribution the coordinator would compute from an Update's tensors
 * (aggregate.h: w * round((x - g) 2^S), plus LoRA products and the tail
 * words), and joins the scope's reduction: the shared scope over all ranks,
 * a task scope over its task's group. The reductions are non-blocking; the
 * worker waits for them while calling a tick function (its heartbeats).
 *
 * Ownership: the contributor borrows the transport and the peft modules;
 * it owns its plans and buffers.
 */
#ifndef GRAFT_CONTRIBUTE_H
#define GRAFT_CONTRIBUTE_H

#include <signal.h>

#include "aggregate.h"
#include "transport.h"
#include "wire.h"

typedef struct graft_contributor graft_contributor_t;

/* n_run_tasks: the run's task count (one MPI group each); the worker's
 * peft may hold fewer tasks (only those it was assigned). */
graft_contributor_t *graft_contributor_new(graft_transport_t *tp, const graft_peft_t *peft,
                                           int n_run_tasks);
void graft_contributor_destroy(graft_contributor_t **self_p);

/* One scope of the round. */
typedef struct {
    int task;             /* -1: the shared scope; else the trainer's task index */
    int run_task;         /* that task's index among the run's tasks (its group) */
    const float *global;  /* the values the round sent; NULL: not trained (empty contribution) */
    const float *trained; /* the scope's values after local training */
    uint64_t weight;      /* sample count (shared) or the task's train examples */
} graft_contribution_t;

/* Joins the round's reductions for parts[0, n): the shared scope first if
 * it is not empty, then every assigned task with a non-empty scope. The
 * first call forms the groups (assigned[t] != 0: member of run task t's
 * group, n_run_tasks entries), collectively with every rank. Waits until every reduction completed,
 * calling tick(arg) between polls. Returns GRAFT_OK; GRAFT_ESTATE when *stop
 * became set while waiting (the reductions are left in flight: the caller
 * aborts the MPI job); another negative code on an MPI error. */
int graft_contributor_run(graft_contributor_t *c, const graft_wire_reduce_t *r, int freeze_a,
                          const int *assigned, const graft_contribution_t *parts, int n,
                          void (*tick)(void *), void *arg, volatile sig_atomic_t *stop);

#endif
