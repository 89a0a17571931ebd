/* eval_answers.c — see eval_answers.h. */
#include "eval_answers.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    int task;
    int state;         /* GRAFT_EVAL_WAITING or _ANSWERED */
    int has_stats;     /* answered with statistics (not refused) */
    unsigned part, parts;
    graft_eval_stats_t stats;
} entry_t;

struct graft_eval_answers {
    entry_t *v;
    size_t n, cap;
};

graft_eval_answers_t *graft_eval_answers_new(void) {
    return graft_xcalloc(1, sizeof(graft_eval_answers_t));
}

void graft_eval_answers_reset(graft_eval_answers_t *a) {
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].name);
        if (a->v[i].has_stats) graft_eval_stats_free(&a->v[i].stats);
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

static entry_t *find(const graft_eval_answers_t *a, const char *name, int t) {
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].task == t && !strcmp(a->v[i].name, name)) return &a->v[i];
    return NULL;
}

void graft_eval_answers_ask(graft_eval_answers_t *a, const char *name, int t) {
    if (find(a, name, t)) return;
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->v = graft_xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = (entry_t){.name = graft_xstrdup(name), .task = t,
                             .state = GRAFT_EVAL_WAITING};
}

int graft_eval_answers_state(const graft_eval_answers_t *a, const char *name, int t) {
    const entry_t *e = find(a, name, t);
    return e ? e->state : GRAFT_EVAL_NOT_ASKED;
}

void graft_eval_answers_add(graft_eval_answers_t *a, const char *name, int t,
                            graft_eval_stats_t *s, unsigned part, unsigned parts) {
    entry_t *e = find(a, name, t);
    GRAFT_ASSERT(e && e->state == GRAFT_EVAL_WAITING && (!s || s->task == t));
    e->state = GRAFT_EVAL_ANSWERED;
    e->part = part;
    e->parts = parts;
    if (!s) return;
    e->has_stats = 1;
    e->stats = *s;
    memset(s, 0, sizeof *s);
}

size_t graft_eval_answers_waiting(const graft_eval_answers_t *a,
                                  int (*live)(void *ctx, const char *name), void *ctx) {
    size_t n = 0;
    for (size_t i = 0; i < a->n; i++)
        n += a->v[i].state == GRAFT_EVAL_WAITING && live(ctx, a->v[i].name);
    return n;
}

static int by_name(const void *x, const void *y) {
    return strcmp((*(const entry_t *const *)x)->name, (*(const entry_t *const *)y)->name);
}

/* 1 if an earlier entry of mine[0..i) answered the same IID part. */
static int part_seen(const entry_t *const *mine, size_t i) {
    for (size_t j = 0; j < i; j++)
        if (mine[j]->has_stats && mine[j]->parts == mine[i]->parts &&
            mine[j]->part == mine[i]->part)
            return 1;
    return 0;
}

void graft_eval_answers_merge(const graft_eval_answers_t *a, int t, int split,
                              graft_task_kind_t kind, int num_labels, graft_eval_stats_t *out,
                              const char **names, const graft_eval_stats_t **each,
                              const char **missing, const char **duplicate, size_t cap,
                              graft_eval_merge_t *info) {
    const entry_t **mine = graft_xmalloc((a->n + 1) * sizeof *mine);
    size_t n = 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i].task == t) mine[n++] = &a->v[i];
    qsort(mine, n, sizeof *mine, by_name);
    memset(info, 0, sizeof *info);
    graft_eval_stats_init(out, t, split, kind, num_labels);
    unsigned parts = 0; /* the IID evaluation's number of parts (the first seen) */
    for (size_t i = 0; i < n; i++) {
        const entry_t *e = mine[i];
        if (e->state == GRAFT_EVAL_WAITING) {
            if (missing && info->missing < cap) missing[info->missing] = e->name;
            info->missing++;
            continue;
        }
        if (!e->has_stats) continue; /* refused: logged when it came */
        if (e->parts && !parts) parts = e->parts;
        if (e->parts && (e->parts != parts || part_seen(mine, i))) {
            if (duplicate && info->duplicate < cap) duplicate[info->duplicate] = e->name;
            info->duplicate++;
            continue;
        }
        graft_eval_stats_merge(out, &e->stats);
        info->own += e->parts == 0;
        if (names && info->answers < cap) names[info->answers] = e->name;
        if (each && info->answers < cap) each[info->answers] = &e->stats;
        info->answers++;
    }
    /* IID parts: 0..parts-1 once each (duplicates were skipped above). */
    if (parts) {
        size_t counted = 0;
        for (size_t i = 0; i < n; i++)
            counted += mine[i]->has_stats && mine[i]->parts == parts && !part_seen(mine, i);
        info->parts_missing = parts - counted;
    }
    info->complete = info->missing == 0 && info->parts_missing == 0;
    free(mine);
}
