/* events.h — the JSON-lines event log that users monitor (DESIGN §6): one
 * object per line, each with "ts" (unix seconds, float), "event" and, where
 * it applies, "round" or "step". Lines are flushed as written so `tail -f`
 * and log shippers see them at once. Built with jansson.
 *
 * Ownership: graft_events_open() returns an owned log (or NULL for a path
 * of ""/NULL, in which case every call is a no-op); graft_events_close()
 * closes it and NULLs the pointer. graft_events_emit() takes ownership of
 * the json object it is given (steals the reference).
 *
 * A line that cannot be written (a full disk) is logged the first time
 * only; emit returns GRAFT_EIO for it, and close returns GRAFT_EIO (after
 * logging how many were lost) when any was, so that a run can end with an
 * error instead of a silently incomplete log.
 */
#ifndef GRAFT_EVENTS_H
#define GRAFT_EVENTS_H

#include <jansson.h>

typedef struct graft_events graft_events_t;

/* Opens (appending) path; creates parent directories. */
int graft_events_open(const char *path, graft_events_t **out);
int graft_events_close(graft_events_t **self_p);

/* Writes "ts", "event" and then fields (a new object if NULL; its own "ts"
 * or "event" is dropped) as one line. GRAFT_EIO when it is lost. */
int graft_events_emit(graft_events_t *ev, const char *event, json_t *fields);

#endif
