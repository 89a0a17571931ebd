/* events.c — JSON-lines event log (see events.h). */
#include "events.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "graft.h"

struct graft_events {
    FILE *f;
};

int graft_events_open(const char *path, graft_events_t **out) {
    *out = NULL;
    if (!path || !*path) return GRAFT_OK;
    int rc = graft_mkdirs_for(path);
    if (rc) return rc;
    FILE *f = fopen(path, "a");
    if (!f) {
        LOG_ERROR("%s: cannot open the event log: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    graft_events_t *ev = graft_xcalloc(1, sizeof *ev);
    ev->f = f;
    *out = ev;
    return GRAFT_OK;
}

void graft_events_close(graft_events_t **self_p) {
    graft_events_t *ev = *self_p;
    if (!ev) return;
    fclose(ev->f);
    free(ev);
    *self_p = NULL;
}

void graft_events_emit(graft_events_t *ev, const char *event, json_t *fields) {
    if (!fields) fields = json_object();
    if (!ev) {
        json_decref(fields);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    json_t *line = json_object();
    json_object_set_new(line, "ts", json_real((double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec));
    json_object_set_new(line, "event", json_string(event));
    json_object_update(line, fields);
    json_decref(fields);
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(16));
    json_decref(line);
    if (text) {
        fprintf(ev->f, "%s\n", text);
        fflush(ev->f);
        free(text);
    }
}
