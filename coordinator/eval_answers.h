/* eval_answers.h — the answers of one federated evaluation (--eval_on
 * workers): each worker's statistics for each task it was asked about, kept
 * by worker name and added up per task in name order, so that the merged
 * numbers depend neither on the order in which answers arrived nor on the
 * peer slots of the workers.
 *
 * Ownership: graft_eval_answers_new() returns an owned collection;
 * graft_eval_answers_add() takes over the statistics it is given;
 * graft_eval_answers_reset() and _destroy() free them. Names returned by
 * graft_eval_answers_merge() are the collection's, valid until the next
 * reset.
 */
#ifndef GRAFT_EVAL_ANSWERS_H
#define GRAFT_EVAL_ANSWERS_H

#include "trainer.h"

typedef struct graft_eval_answers graft_eval_answers_t;

graft_eval_answers_t *graft_eval_answers_new(void);
void graft_eval_answers_destroy(graft_eval_answers_t **a);
/* Forgets every answer (a new evaluation). */
void graft_eval_answers_reset(graft_eval_answers_t *a);

/* 1 if worker `name` has answered for task t. */
int graft_eval_answers_has(const graft_eval_answers_t *a, const char *name, int t);

/* Records worker name's statistics for task s->task (not yet answered:
 * asserted) and takes them over: *s is zeroed. */
void graft_eval_answers_add(graft_eval_answers_t *a, const char *name, graft_eval_stats_t *s);

/* Task t's answers added up in name order into out (initialised here for
 * the task's kind, num_labels and split), and their workers' names into
 * names[0..cap), sorted, with each one's own statistics in each[0..cap)
 * (may be NULL). Returns the number of answers. */
size_t graft_eval_answers_merge(const graft_eval_answers_t *a, int t, int split,
                                graft_task_kind_t kind, int num_labels, graft_eval_stats_t *out,
                                const char **names, const graft_eval_stats_t **each,
                                size_t cap);

#endif
