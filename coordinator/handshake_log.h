/* handshake_log.h — what the coordinator tells its users about clients that
 * never got through the transport's handshake (transport.h,
 * graft_handshake_failure_t): a worker with another --server_key, one whose
 * key is not in the --allow file, CurveZMQ on one side only. Nothing else
 * would show them, since such a client never sends a message.
 *
 * A client like that retries every 100 ms or so, so the log is rate-limited:
 * failures are filed under their kind, the client's host (IP) and its key.
 * The first of a file is logged at once, saying what to do, with a
 * handshake_failed event; the ones after it are counted, and once a window
 * (window_s) has passed since that line, one line and one event sum them up
 * ("N more ... in the last 60 s"). A file quiet for a whole window starts
 * over: its next failure is logged at once. A failure whose address is
 * unknown (the client hung up before the transport looked) is counted in a
 * file of its kind and key from any host, if there is one.
 *
 * Ownership: new() returns an owned log that borrows ev (NULL: log lines
 * only); destroy() frees it and NULLs the pointer. Times are the caller's
 * (graft_now()), so tests can feed their own.
 */
#ifndef GRAFT_HANDSHAKE_LOG_H
#define GRAFT_HANDSHAKE_LOG_H

#include "events.h"
#include "transport.h"

typedef struct graft_handshake_log graft_handshake_log_t;

graft_handshake_log_t *graft_handshake_log_new(graft_events_t *ev, double window_s);
void graft_handshake_log_destroy(graft_handshake_log_t **self_p);

/* Files f (f->count failures) seen at time now, during round. */
void graft_handshake_log_add(graft_handshake_log_t *hl, const graft_handshake_failure_t *f,
                             int round, double now);

/* Sums up the files whose window has passed; with flush, every file that
 * has counted failures (at the end of a run). */
void graft_handshake_log_tick(graft_handshake_log_t *hl, int round, double now, int flush);

#endif
