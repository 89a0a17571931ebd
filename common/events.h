/* events.h — the JSON-lines event log that users monitor (DESIGN §6): one
 * object per line, each with "ts" (unix seconds, float), "event" and, where
 * it applies, "round" or "step". Lines are flushed as written so `tail -f`
 * and log shippers see them at once. Built with jansson.
 *
 * Ownership: graft_events_open() returns an owned log (or NULL for a path
 * of ""/NULL, in which case every call is a no-op); graft_events_close()
 * closes it and NULLs the pointer. graft_events_emit() takes ownership of
 * the json object it is given (steals the reference).
 */
#ifndef GRAFT_EVENTS_H
#define GRAFT_EVENTS_H

#include <jansson.h>

typedef struct graft_events graft_events_t;

/* Opens (appending) path; creates parent directories. */
int graft_events_open(const char *path, graft_events_t **out);
void graft_events_close(graft_events_t **self_p);

/* Adds "ts" and "event" to fields (a new object if NULL) and writes it. */
void graft_events_emit(graft_events_t *ev, const char *event, json_t *fields);

#endif
