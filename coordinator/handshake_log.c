/* handshake_log.c — rate-limited reports of failed handshakes (see
 * handshake_log.h). */
#include "handshake_log.h"

#include <string.h>

#include "graft.h"

#define MAX_FILES 64

/* The failures of one kind from one host with one key. */
typedef struct {
    graft_handshake_failure_t last; /* the latest failure filed here (count unused) */
    double since;                   /* when this file's last line was written */
    long counted;                   /* failures since that line */
} file_t;

struct graft_handshake_log {
    graft_events_t *ev;
    double window_s;
    file_t files[MAX_FILES];
    int nfiles;
};

static const struct {
    const char *reason; /* the event's "reason" */
    const char *label;  /* what a summary line counts */
} kinds[] = {
    [GRAFT_HANDSHAKE_CRYPTO] = {"cryptographic_error",
                                "CurveZMQ handshake failures (cryptographic error)"},
    [GRAFT_HANDSHAKE_KEY_REFUSED] = {"key_not_allowed", "refusals of CurveZMQ client key"},
    [GRAFT_HANDSHAKE_MECHANISM] = {"mechanism_mismatch",
                                   "handshakes with CurveZMQ on one side only"},
    [GRAFT_HANDSHAKE_PROTOCOL] = {"protocol_error", "ZeroMQ handshake protocol errors"},
    [GRAFT_HANDSHAKE_CLOSED] = {"closed_in_handshake",
                                "connections closed during the ZeroMQ handshake"},
};

graft_handshake_log_t *graft_handshake_log_new(graft_events_t *ev, double window_s) {
    graft_handshake_log_t *hl = graft_xcalloc(1, sizeof *hl);
    hl->ev = ev;
    hl->window_s = window_s;
    return hl;
}

void graft_handshake_log_destroy(graft_handshake_log_t **self_p) {
    free(*self_p);
    *self_p = NULL;
}

/* "10.0.0.7:51234", "10.0.0.7" or "[::1]:51234"; "" when unknown. */
static void peer_str(const graft_handshake_failure_t *f, int with_port, char *buf, size_t n) {
    if (!with_port || !f->port || !f->host[0])
        snprintf(buf, n, "%s", f->host);
    else
        snprintf(buf, n, strchr(f->host, ':') ? "[%s]:%d" : "%s:%d", f->host, f->port);
}

/* One handshake_failed event: failures of this file in the last seconds
 * (summary), or the first one (not). */
static void emit(graft_handshake_log_t *hl, const graft_handshake_failure_t *f, int round,
                 long failures, double seconds, int summary) {
    char peer[80];
    peer_str(f, !summary, peer, sizeof peer);
    json_t *o = json_pack("{s:i, s:s, s:I, s:b}", "round", round, "reason", kinds[f->kind].reason,
                          "failures", (json_int_t)failures, "summary", summary);
    if (*peer) json_object_set_new(o, "peer", json_string(peer));
    if (f->client_key[0]) json_object_set_new(o, "client_key", json_string(f->client_key));
    if (summary) json_object_set_new(o, "seconds", json_real(seconds));
    graft_events_emit(hl->ev, "handshake_failed", o);
}

/* The first failure of a file: what happened, and what to do about it. */
static void log_first(graft_handshake_log_t *hl, const graft_handshake_failure_t *f, int round) {
    char peer[80], who[100];
    peer_str(f, 1, peer, sizeof peer);
    snprintf(who, sizeof who, *peer ? "a client at %s" : "a client (address unknown)", peer);
    switch (f->kind) {
    case GRAFT_HANDSHAKE_CRYPTO:
        LOG_WARN("coordinator: %s failed the CurveZMQ handshake (cryptographic error): does it "
                 "use this coordinator's public key? (its graft worker --server_key must be the "
                 ".pub of this coordinator's --curve_secret keypair)", who);
        break;
    case GRAFT_HANDSHAKE_KEY_REFUSED:
        LOG_WARN("coordinator: refused CurveZMQ client key %s from %s: not in the --allow file "
                 "(to admit it, add that client's .pub line there and restart the coordinator, "
                 "with --resume to keep the rounds done)", f->client_key[0] ? f->client_key : "?",
                 *peer ? peer : "an unknown address");
        break;
    case GRAFT_HANDSHAKE_MECHANISM:
        LOG_WARN("coordinator: %s failed the ZeroMQ handshake: it uses CurveZMQ and this "
                 "coordinator does not, or the reverse (give graft worker --curve and --server_key "
                 "exactly when the coordinator has --curve_secret and --allow)", who);
        break;
    case GRAFT_HANDSHAKE_PROTOCOL:
        LOG_WARN("coordinator: %s broke the ZeroMQ handshake (protocol error 0x%x): is it a graft "
                 "worker of this version?", who, (unsigned)f->code);
        break;
    case GRAFT_HANDSHAKE_CLOSED:
        LOG_INFO("coordinator: %s closed its connection during the ZeroMQ handshake: a worker "
                 "whose CurveZMQ setting differs from this coordinator's (graft worker --curve and "
                 "--server_key go with --curve_secret and --allow), one that stopped while "
                 "connecting, or not a ZeroMQ client (a port check?)", who);
        break;
    }
    emit(hl, f, round, 1, 0.0, 0);
}

/* Writes the file's summary line, if it counted any, and opens a new window. */
static void sum_up(graft_handshake_log_t *hl, file_t *fl, int round, double now) {
    if (fl->counted) {
        double s = now - fl->since;
        const char *host = fl->last.host[0] ? fl->last.host : "unknown addresses";
        const char *key = fl->last.client_key;
        graft_log(fl->last.kind == GRAFT_HANDSHAKE_CLOSED ? GRAFT_LOG_INFO : GRAFT_LOG_WARN,
                  "coordinator: %ld more %s%s%s from %s in the last %.0f s", fl->counted,
                  kinds[fl->last.kind].label, *key ? " " : "", key, host, s);
        emit(hl, &fl->last, round, fl->counted, s, 1);
    }
    fl->counted = 0;
    fl->since = now;
}

enum { FILE_FOUND, FILE_NEW, FILE_ADDRESSED };

static int same_kind(const file_t *fl, const graft_handshake_failure_t *f) {
    return fl->last.kind == f->kind && !strcmp(fl->last.client_key, f->client_key);
}

/* The file f belongs in (*how FILE_FOUND); a file of its kind without an
 * address, which f gives one (FILE_ADDRESSED); or a new one (FILE_NEW: the
 * oldest is summed up and reused when all are taken). */
static file_t *find_file(graft_handshake_log_t *hl, const graft_handshake_failure_t *f, int round,
                         double now, int *how) {
    *how = FILE_FOUND;
    for (int i = 0; i < hl->nfiles; i++) {
        file_t *fl = &hl->files[i];
        if (same_kind(fl, f) && (!f->host[0] || !strcmp(fl->last.host, f->host))) return fl;
    }
    *how = FILE_ADDRESSED;
    for (int i = 0; i < hl->nfiles; i++)
        if (same_kind(&hl->files[i], f) && !hl->files[i].last.host[0]) return &hl->files[i];
    *how = FILE_NEW;
    if (hl->nfiles < MAX_FILES) return &hl->files[hl->nfiles++];
    file_t *oldest = &hl->files[0];
    for (int i = 1; i < MAX_FILES; i++)
        if (hl->files[i].since < oldest->since) oldest = &hl->files[i];
    sum_up(hl, oldest, round, now);
    return oldest;
}

void graft_handshake_log_add(graft_handshake_log_t *hl, const graft_handshake_failure_t *f,
                             int round, double now) {
    int how;
    file_t *fl = find_file(hl, f, round, now, &how);
    if (how != FILE_NEW && now - fl->since >= hl->window_s) {
        if (!fl->counted) how = FILE_NEW; /* quiet for a whole window: say what to do again */
        sum_up(hl, fl, round, now);
    }
    if (how == FILE_NEW) {
        *fl = (file_t){.last = *f, .since = now, .counted = f->count - 1};
        log_first(hl, f, round);
        return;
    }
    if (f->host[0]) fl->last = *f; /* the latest address, for the summary */
    fl->counted += f->count;
    if (how == FILE_ADDRESSED) { /* the line said "address unknown": now it is known */
        fl->counted--;
        log_first(hl, f, round);
    }
}

void graft_handshake_log_tick(graft_handshake_log_t *hl, int round, double now, int flush) {
    for (int i = 0; i < hl->nfiles; i++) {
        file_t *fl = &hl->files[i];
        if (fl->counted && (flush || now - fl->since >= hl->window_s)) sum_up(hl, fl, round, now);
    }
}
