/* shard.h — non-IID shards of task data for K federated clients.
 *
 * A plan splits the train rows of every task across clients, the way
 * federated data is split in practice, and deals out the dev and test rows
 * among the same clients:
 *
 *  - Tasks to clients: client c holds the M tasks (c*M + j) mod T, j < M,
 *    for T tasks. Every task gets at least one client when K*M >= T, and
 *    the numbers of clients of two tasks differ by at most one. M defaults
 *    to ceil(T/K) (1 when there are more clients than tasks).
 *  - Rows of a task to its clients, by one of:
 *      group  whole groups (the TSV's third field: a source file, a speech)
 *             go to one client; groups are dealt largest first to the
 *             client with the fewest rows (ties broken by the seed), so
 *             clients hold similar numbers of rows;
 *      label  label skew: for each label, client shares are drawn from a
 *             Dirichlet(alpha) distribution (small alpha: each label sits
 *             on few clients; large alpha: close to IID);
 *      iid    a seeded shuffle cut into equal parts (a baseline);
 *      auto   group when the task's train rows have at least as many
 *             groups as the task has clients and the groups hold at least
 *             min_group_size rows on average (groups that mean something,
 *             not one row each); otherwise label for classification and
 *             iid for generation (whose labels are free text).
 *  - Every train row goes to exactly one client of its task, and each
 *    client of a task gets at least one train row.
 *  - Dev and test rows are dealt too, so that workers can evaluate on
 *    their own rows and the coordinator add up their statistics: every
 *    dev and test row is on exactly one client of its task and their union
 *    is the whole split, so evaluation on the union equals evaluation on
 *    the whole split. Each split on its own, by eval_rows:
 *      roundrobin  the i-th row of the split (0-based, file order) goes to
 *                  the task's (i mod n)-th client of n in ascending client
 *                  index. Task files are often ordered by source or label,
 *                  so this is a stratified sample: every client's rows
 *                  follow the split's distribution; counts differ by at
 *                  most one (a client gets none when its task has fewer
 *                  such rows than clients).
 *      follow      each client's rows follow its own train rows: the rows
 *                  of label l go to the task's clients in proportion to
 *                  their train rows of label l (a smooth weighted
 *                  round-robin in file order: after j rows of the label,
 *                  client k holds within one row of j times its share);
 *                  for a generation task, or a label no client trains on,
 *                  in proportion to their train rows. Each worker's own
 *                  metrics then say how the global model serves its
 *                  distribution (per_worker in the workers' eval events).
 *
 * Everything is a function of the tasks, the config and the seed: the same
 * inputs give the same shards on every machine. Each task draws from its
 * own random stream (keyed by its name), so a task's shards do not depend
 * on the rows of the other tasks.
 *
 * Ownership: graft_shard_plan_new() returns an owned plan, freed with
 * graft_shard_plan_destroy() (which NULLs the caller's pointer). The plan
 * borrows the tasks: they must outlive it. Arrays returned by accessors are
 * owned by the plan.
 */
#ifndef GRAFT_SHARD_H
#define GRAFT_SHARD_H

#include <stdio.h>

#include "graft.h"
#include "task.h"

typedef enum {
    GRAFT_SHARD_AUTO,
    GRAFT_SHARD_GROUP,
    GRAFT_SHARD_LABEL,
    GRAFT_SHARD_IID,
} graft_shard_by_t;

typedef struct {
    int clients;          /* K >= 1 */
    int tasks_per_client; /* M in [1, T]; 0: ceil(T / K) */
    double alpha;         /* Dirichlet concentration for label skew, > 0 */
    graft_shard_by_t by;
    int min_group_size;   /* auto: mean train rows per group needed for group */
    uint64_t seed;
    int eval_follow;      /* dev/test rows: 1 follow, 0 roundrobin */
} graft_shard_config_t;

typedef struct graft_shard_plan graft_shard_plan_t;

/* "auto" / "group" / "label" / "iid" -> mode; GRAFT_EINVAL otherwise. */
int graft_shard_by_parse(const char *s, graft_shard_by_t *out);
const char *graft_shard_by_name(graft_shard_by_t by);

/* Plans the shards of tasks[0..n_tasks). Returns GRAFT_OK and sets *out, or
 * GRAFT_EINVAL after logging the problem (impossible M or K, a task with
 * fewer train rows than clients, --by group with too few groups, --by label
 * on a generation task, a label skew that leaves a client empty). */
int graft_shard_plan_new(graft_task_t *const *tasks, int n_tasks, const graft_shard_config_t *cfg,
                         graft_shard_plan_t **out);
void graft_shard_plan_destroy(graft_shard_plan_t **self_p);

int graft_shard_num_clients(const graft_shard_plan_t *p);
int graft_shard_num_tasks(const graft_shard_plan_t *p);
/* 1 if client c holds task t. */
int graft_shard_holds(const graft_shard_plan_t *p, int c, int t);
/* The mode used for task t (never AUTO). */
graft_shard_by_t graft_shard_mode(const graft_shard_plan_t *p, int t);
/* The train rows of task t held by client c, as ascending indices into the
 * task's train split; *n = their count (0 when c does not hold t). These
 * are what graft_task_subset() takes. */
const size_t *graft_shard_rows(const graft_shard_plan_t *p, int c, int t, size_t *n);
/* The same for any split (GRAFT_SPLIT_*): indices into that split of the
 * task. graft_shard_rows() is the train split. */
const size_t *graft_shard_split_rows(const graft_shard_plan_t *p, int c, int t, int split,
                                     size_t *n);

/* Writes the shards under dir:
 *   dir/client-000/NAME.tsv ...  one TSV per task the client holds, task
 *                                file format: its train rows, then its dev
 *                                rows, then its test rows (each in file
 *                                order, with its own split field);
 *   dir/shards.tsv               header "client task label count", then one
 *                                line per client, task it holds and label
 *                                (label "*" for generation tasks): counts
 *                                of train rows only.
 * Files are written to a temporary name and renamed. The task files of
 * client-NNN folders left by an earlier run are removed first, so dir holds
 * exactly this plan. Returns GRAFT_OK or GRAFT_EIO (logged with the path). */
int graft_shard_write(const graft_shard_plan_t *p, const char *dir);

/* Prints, per task, its mode, a table of labels x clients (train row
 * counts) and a line of each client's dev/test row counts. */
void graft_shard_print(const graft_shard_plan_t *p, FILE *out);

#endif
