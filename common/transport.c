/* transport.c — the dispatch side of transport.h: each call goes through the
 * backend's table of operations. */
#include "transport.h"

int graft_transport_send(graft_transport_t *t, int peer, const void *buf, size_t len) {
    return t->ops->send(t, peer, buf, len);
}

int graft_transport_recv(graft_transport_t *t, int *peer, uint8_t **buf, size_t *len,
                         int timeout_ms) {
    *buf = NULL;
    *len = 0;
    return t->ops->recv(t, peer, buf, len, timeout_ms);
}

const char *graft_transport_peer_name(graft_transport_t *t, int peer) {
    return t->ops->peer_name(t, peer);
}

const char *graft_transport_peer_key(graft_transport_t *t, int peer) {
    const char *key = t->ops->peer_key ? t->ops->peer_key(t, peer) : NULL;
    return key ? key : "";
}

int graft_transport_has_collectives(const graft_transport_t *t) {
    return t->ops->split && t->ops->ireduce_i64 && t->ops->reduce_test;
}

int graft_transport_split(graft_transport_t *t, int color, int *group) {
    *group = GRAFT_GROUP_NONE;
    if (!graft_transport_has_collectives(t)) return GRAFT_EINVAL;
    return t->ops->split(t, color, group);
}

int graft_transport_ireduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group,
                                graft_reduce_t **req) {
    *req = NULL;
    if (!graft_transport_has_collectives(t)) return GRAFT_EINVAL;
    return t->ops->ireduce_i64(t, x, n, group, 0, req);
}

int graft_transport_reduce_test(graft_transport_t *t, graft_reduce_t **req) {
    if (!*req) return 1;
    int done = 0;
    int rc = t->ops->reduce_test(t, req, &done);
    return rc ? rc : done;
}

static int reduce_blocking(graft_transport_t *t, int64_t *x, size_t n, int group, int all) {
    if (!graft_transport_has_collectives(t)) return GRAFT_EINVAL;
    graft_reduce_t *req = NULL;
    int rc = t->ops->ireduce_i64(t, x, n, group, all, &req);
    while (!rc && (rc = graft_transport_reduce_test(t, &req)) == 0) {
    }
    return rc < 0 ? rc : GRAFT_OK;
}

int graft_transport_reduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group) {
    return reduce_blocking(t, x, n, group, 0);
}

int graft_transport_allreduce_i64(graft_transport_t *t, int64_t *x, size_t n, int group) {
    return reduce_blocking(t, x, n, group, 1);
}

int graft_transport_next_failure(graft_transport_t *t, graft_handshake_failure_t *f) {
    return t->ops->next_failure ? t->ops->next_failure(t, f) : 0;
}

void graft_transport_forget(graft_transport_t *t, int peer) {
    if (t->ops->forget) t->ops->forget(t, peer);
}

void graft_transport_destroy(graft_transport_t **t) {
    if (!t || !*t) return;
    (*t)->ops->destroy(*t);
    *t = NULL;
}
