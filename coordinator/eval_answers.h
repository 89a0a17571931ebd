/* eval_answers.h — one federated evaluation's bookkeeping (--eval_on
 * workers): which worker was asked about which task, and each answer's
 * statistics, kept by worker name (not peer slot: a worker that reconnects
 * or re-registers during the evaluation keeps its place). Answers are added
 * up per task in name order, so the merged numbers depend neither on the
 * order in which they arrived nor on the peer slots.
 *
 * Coverage. A worker with an IID shard answers for part `part` of `parts`
 * of the coordinator's evaluation; the parts of a task must each be
 * answered once: a part answered twice (two workers with the same shard)
 * is counted once (the first name) and a missing part makes the result
 * incomplete. A worker evaluating its own files (parts 0) counts as is.
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
/* Forgets every question and answer (a new evaluation). */
void graft_eval_answers_reset(graft_eval_answers_t *a);

/* Records that worker `name` was asked about task t (again: no change). */
void graft_eval_answers_ask(graft_eval_answers_t *a, const char *name, int t);

enum { GRAFT_EVAL_NOT_ASKED, GRAFT_EVAL_WAITING, GRAFT_EVAL_ANSWERED };
/* Where worker name's answer for task t stands. */
int graft_eval_answers_state(const graft_eval_answers_t *a, const char *name, int t);

/* Records worker name's answer for task s->task, which must be WAITING
 * (asserted), and takes the statistics over (*s is zeroed). s NULL: an
 * answer that was refused (it counts as answered, with no rows). part,
 * parts: which rows (see Coverage). */
void graft_eval_answers_add(graft_eval_answers_t *a, const char *name, int t,
                            graft_eval_stats_t *s, unsigned part, unsigned parts);

/* The questions still WAITING whose worker `live` says is alive (1). */
size_t graft_eval_answers_waiting(const graft_eval_answers_t *a,
                                  int (*live)(void *ctx, const char *name), void *ctx);

typedef struct {
    size_t answers;   /* answers added up (names[0..answers), each[...]) */
    size_t missing;   /* workers asked who did not answer (missing[0..)) */
    size_t duplicate; /* IID parts answered again, not counted (duplicate[0..)) */
    size_t parts_missing; /* IID parts of the evaluation no worker answered for */
    size_t own;       /* counted answers on the workers' own files (parts 0) */
    int complete;     /* no worker missing, every IID part once */
} graft_eval_merge_t;

/* Task t's answers added up in name order into out (initialised here for
 * the task's kind, num_labels and split). names[0..cap) and each[0..cap)
 * (may be NULL) get the counted workers' names, sorted, and their own
 * statistics; missing[0..cap) and duplicate[0..cap) (may be NULL) the
 * names of those asked who did not answer and of those whose IID part was
 * already counted. */
void graft_eval_answers_merge(const graft_eval_answers_t *a, int t, int split,
                              graft_task_kind_t kind, int num_labels, graft_eval_stats_t *out,
                              const char **names, const graft_eval_stats_t **each,
                              const char **missing, const char **duplicate, size_t cap,
                              graft_eval_merge_t *info);

#endif
