/* eval_wire.h — evaluation statistics (trainer.h's graft_eval_stats_t) to
 * and from EvalResult messages (wire.h): a worker sends the statistics of
 * its rows of a task, the coordinator adds them up over the task's workers.
 *
 * Ownership: graft_eval_stats_to_wire() fills a message that points into s
 * and at the caller's task name, except for the confusion counts, which it
 * allocates (free out->confusion). graft_eval_stats_from_wire() initialises
 * s (free it with graft_eval_stats_free) and keeps nothing of the message.
 */
#ifndef GRAFT_EVAL_WIRE_H
#define GRAFT_EVAL_WIRE_H

#include "trainer.h"
#include "wire.h"

void graft_eval_stats_to_wire(const graft_eval_stats_t *s, const char *task, uint64_t round,
                              graft_wire_eval_result_t *out);

/* The statistics of a decoded (so already validated) result m for run task
 * t of kind `kind` with num_labels labels. GRAFT_OK, or GRAFT_EINVAL with a
 * reason in why when m does not fit the task (another kind, another number
 * of labels); s then holds nothing to free. */
int graft_eval_stats_from_wire(const graft_wire_eval_result_t *m, int t, graft_task_kind_t kind,
                               int num_labels, graft_eval_stats_t *s, char *why, size_t why_len);

#endif
