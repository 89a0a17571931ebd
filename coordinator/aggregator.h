/* aggregator.h — one round's aggregation on the coordinator, over every
 * scope (shared, then each task's): the state between RoundStart and the
 * new global modules. Three ways in, one way out:
 *
 *  - streaming (fedavg, fedprox, fedadam; the default): each reply's
 *    tensors are turned into a fixed-point contribution and added to the
 *    scope's int64 accumulator as it arrives (graft_aggregator_add); the
 *    caller frees the reply at once. Memory: one accumulator per scope plus
 *    one scratch contribution, whatever the number of workers.
 *  - held (median, trimmed_mean): graft_aggregator_add keeps a copy of each
 *    reply's (clipped) values until the round closes — these strategies
 *    need every value of a coordinate at once.
 *  - reductions (graft mpi with mpi_collectives, streaming strategies
 *    only): graft_aggregator_begin starts one non-blocking MPI_SUM of int64
 *    per scope, into which the workers contribute the same fixed-point
 *    numbers (worker/contribute.h); the coordinator contributes zeros.
 *
 * Because the contribution is the same function of the same bits in every
 * case, and int64 sums do not depend on order, ZeroMQ and MPI runs of one
 * job produce bit-identical modules.
 *
 * The MPI contract (both ends must follow it, or a reduction never ends):
 *  - groups: once, at the first round that uses reductions, every rank
 *    calls graft_aggregator_groups() with the run's task count — one
 *    MPI_Comm_split per task, in task order; the coordinator is a member of
 *    every group, a worker of the groups of the tasks it was assigned. The
 *    coordinator does so right after sending that round's RoundStarts; a
 *    worker on receiving it.
 *  - each round: the shared scope (if not empty) is reduced over the world,
 *    each non-empty task scope over its task's group (none in a
 *    personalised run: graft_agg_config_t.personal), contribution length
 *    graft_agg_plan_t.len. A worker sends its Update (metrics, no tensors)
 *    before joining, and joins every reduction it belongs to even when it
 *    could not train (with an empty, rejected contribution).
 *  - no timeouts: a reduction cannot be cancelled, so the round waits for
 *    every rank. Under mpirun ranks do not vanish silently — a rank that
 *    dies makes mpirun abort the whole job — so the coordinator does not
 *    declare MPI workers lost; the deadline only logs that the round is
 *    still waiting.
 *
 * Ownership: the aggregator borrows the peft modules (the global values
 * live in its scopes) and the transport; it owns its accumulators and held
 * copies. graft_aggregator_finish returns a new JSON reference.
 */
#ifndef GRAFT_AGGREGATOR_H
#define GRAFT_AGGREGATOR_H

#include <jansson.h>

#include "aggregate.h"
#include "transport.h"

typedef struct graft_aggregator graft_aggregator_t;

/* tp != NULL: reductions over tp (which must have collectives) for the
 * streaming strategies. */
graft_aggregator_t *graft_aggregator_new(const graft_agg_config_t *c, graft_peft_t *peft,
                                         graft_transport_t *tp);
void graft_aggregator_destroy(graft_aggregator_t **self_p);

/* 1 when the round's modules come through reductions. */
int graft_aggregator_collective(const graft_aggregator_t *a);

/* The MPI groups (see above): member[t] != 0 joins task t's group; groups[t]
 * gets its id (GRAFT_GROUP_NONE when not a member). Collective over all
 * ranks. */
int graft_aggregator_groups(graft_transport_t *tp, int n_tasks, const int *member, int *groups);

/* Opens a round: the scopes' current values are its global values. With
 * reductions, forms the groups (first time) and starts the reductions. */
int graft_aggregator_begin(graft_aggregator_t *a);
/* Whether the next rounds leave the task scopes out (a personal round of a
 * --personalize run; not until set). Before begin. */
void graft_aggregator_set_personal(graft_aggregator_t *a, int personal);

/* One reply's values (numel floats) for scope k (0: shared, 1 + t: task t;
 * not a task in a personalised run) with weight w: accumulated or held.
 * GRAFT_EINVAL with the reason in why when the reply cannot be used for
 * this scope (the other scopes of the reply may still count). Not with
 * reductions. */
int graft_aggregator_add(graft_aggregator_t *a, int k, const float *x, uint64_t w, char *why,
                         size_t why_len);

/* 1 when the round's sums are complete (always, without reductions), 0
 * while reductions are in flight, or a negative error. */
int graft_aggregator_poll(graft_aggregator_t *a);

/* Writes the round's new values into the scopes and returns the report for
 * round_end: {"lora_gap": {scope: x}, "svd_residual": {...},
 * "rejected": n, "overflow": [scope, ...], "reduce_bytes": n} (members only
 * when they apply; reduce_bytes is the size of one rank's contribution to
 * the round's reductions, summed over scopes).
 * Logs overflows and rejections. Call once per round, after poll said 1. */
json_t *graft_aggregator_finish(graft_aggregator_t *a, int round);

#endif
