/* profile.c — per-op wall-clock timers (see profile.h). */
#include "profile.h"

#include <stdlib.h>
#include <string.h>

#define PROF_MAX_OPS 128

typedef struct {
    const char *name;
    long calls;
    double seconds;
    double flops;
} prof_entry_t;

int graft_prof_on = 0;
static prof_entry_t prof_table[PROF_MAX_OPS];
static int prof_count = 0;

void graft_prof_enable(int on) {
    if (on) {
        memset(prof_table, 0, sizeof prof_table);
        prof_count = 0;
    }
    graft_prof_on = on;
}

static prof_entry_t *find_entry(const char *name) {
    for (int i = 0; i < prof_count; i++)
        if (prof_table[i].name == name || strcmp(prof_table[i].name, name) == 0)
            return &prof_table[i];
    if (prof_count == PROF_MAX_OPS) return NULL;
    prof_table[prof_count].name = name;
    return &prof_table[prof_count++];
}

void graft_prof_add(const char *name, double t0, double flops) {
    double dt = graft_now() - t0;
    prof_entry_t *e = find_entry(name);
    if (!e) return; /* more distinct names than the table holds: not timed */
    e->calls++;
    e->seconds += dt;
    e->flops += flops;
}

static int by_time_desc(const void *a, const void *b) {
    double x = ((const prof_entry_t *)a)->seconds, y = ((const prof_entry_t *)b)->seconds;
    return (x < y) - (x > y);
}

void graft_prof_report(FILE *out, int steps, double step_seconds) {
    prof_entry_t sorted[PROF_MAX_OPS];
    memcpy(sorted, prof_table, (size_t)prof_count * sizeof *sorted);
    qsort(sorted, (size_t)prof_count, sizeof *sorted, by_time_desc);
    double timed = 0.0;
    fprintf(out, "%-26s %8s %10s %7s %9s\n", "op", "calls", "ms/step", "share", "GFLOP/s");
    for (int i = 0; i < prof_count; i++) {
        const prof_entry_t *e = &sorted[i];
        double ms = 1e3 * e->seconds / steps;
        timed += e->seconds / steps;
        fprintf(out, "%-26s %8.1f %10.3f %6.1f%%", e->name, (double)e->calls / steps, ms,
                100.0 * e->seconds / steps / step_seconds);
        if (e->flops > 0 && e->seconds > 0)
            fprintf(out, " %9.1f\n", e->flops / e->seconds / 1e9);
        else
            fprintf(out, " %9s\n", "-");
    }
    fprintf(out, "%-26s %8s %10.3f %6.1f%%\n", "(outside timed ops)", "",
            1e3 * (step_seconds - timed), 100.0 * (step_seconds - timed) / step_seconds);
}
