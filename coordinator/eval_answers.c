/* eval_answers.c — see eval_answers.h. */
#include "eval_answers.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    graft_eval_stats_t stats;
} answer_t;

struct graft_eval_answers {
    answer_t *v;
    size_t n, cap;
};

graft_eval_answers_t *graft_eval_answers_new(void) {
    return graft_xcalloc(1, sizeof(graft_eval_answers_t));
}

void graft_eval_answers_reset(graft_eval_answers_t *a) {
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].name);
        graft_eval_stats_free(&a->v[i].stats);
    }
    a->n = 0;
}

void graft_eval_answers_destroy(graft_eval_answers_t **a) {
    if (!*a) return;
    graft_eval_answers_reset(*a);
    free((*a)->v);
    free(*a);
    *a = NULL;
}

int graft_eval_answers_has(const graft_eval_answers_t *a, const char *name, int t) {
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].stats.task == t && !strcmp(a->v[i].name, name)) return 1;
    return 0;
}

void graft_eval_answers_add(graft_eval_answers_t *a, const char *name, graft_eval_stats_t *s) {
    GRAFT_ASSERT(!graft_eval_answers_has(a, name, s->task));
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->v = graft_xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = (answer_t){.name = graft_xstrdup(name), .stats = *s};
    memset(s, 0, sizeof *s);
}

static int by_name(const void *x, const void *y) {
    return strcmp((*(const answer_t *const *)x)->name, (*(const answer_t *const *)y)->name);
}

size_t graft_eval_answers_merge(const graft_eval_answers_t *a, int t, int split,
                                graft_task_kind_t kind, int num_labels, graft_eval_stats_t *out,
                                const char **names, const graft_eval_stats_t **each,
                                size_t cap) {
    const answer_t **mine = graft_xmalloc((a->n + 1) * sizeof *mine);
    size_t n = 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].stats.task == t) mine[n++] = &a->v[i];
    qsort(mine, n, sizeof *mine, by_name);
    graft_eval_stats_init(out, t, split, kind, num_labels);
    for (size_t i = 0; i < n; i++) {
        graft_eval_stats_merge(out, &mine[i]->stats);
        if (i < cap) names[i] = mine[i]->name;
        if (i < cap && each) each[i] = &mine[i]->stats;
    }
    free(mine);
    return n;
}
