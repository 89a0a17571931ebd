/* events.c — JSON-lines event log (see events.h). */
#include "events.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "graft.h"

struct graft_events {
    FILE *f;
    char *path;
    size_t lost; /* events that could not be written */
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
    ev->path = graft_xstrdup(path);
    *out = ev;
    return GRAFT_OK;
}

int graft_events_close(graft_events_t **self_p) {
    graft_events_t *ev = *self_p;
    if (!ev) return GRAFT_OK;
    int closed = fclose(ev->f) == 0;
    if (!closed) LOG_ERROR("%s: cannot close the event log: %s", ev->path, strerror(errno));
    if (ev->lost)
        LOG_ERROR("%s: %zu event%s could not be written: the log is incomplete", ev->path,
                  ev->lost, ev->lost == 1 ? "" : "s");
    int rc = ev->lost || !closed ? GRAFT_EIO : GRAFT_OK;
    free(ev->path);
    free(ev);
    *self_p = NULL;
    return rc;
}

/* Writes one line; a failure is logged the first time only. */
static int write_line(graft_events_t *ev, const char *text) {
    int ok = text && fprintf(ev->f, "%s\n", text) >= 0 && fflush(ev->f) == 0;
    if (ok) return GRAFT_OK;
    if (!ev->lost++)
        LOG_ERROR("%s: cannot write the event log: %s (later failures are counted, not "
                  "logged)", ev->path, text ? strerror(errno) : "cannot encode the event");
    clearerr(ev->f);
    return GRAFT_EIO;
}

int graft_events_emit(graft_events_t *ev, const char *event, json_t *fields) {
    if (!fields) fields = json_object();
    if (!ev) {
        json_decref(fields);
        return GRAFT_OK;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    json_t *line = json_object();
    json_object_set_new(line, "ts", json_real((double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec));
    json_object_set_new(line, "event", json_string(event));
    json_object_update_missing(line, fields); /* the caller's own ts or event does not win */
    json_decref(fields);
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(16));
    json_decref(line);
    int rc = write_line(ev, text);
    free(text);
    return rc;
}
