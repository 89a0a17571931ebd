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

int graft_transport_reduce_sum(graft_transport_t *t, float *x, size_t n, int group) {
    if (!t->ops->reduce_sum) return GRAFT_EINVAL;
    return t->ops->reduce_sum(t, x, n, group, 0);
}

int graft_transport_allreduce_sum(graft_transport_t *t, float *x, size_t n, int group) {
    if (!t->ops->reduce_sum) return GRAFT_EINVAL;
    return t->ops->reduce_sum(t, x, n, group, 1);
}

void graft_transport_destroy(graft_transport_t **t) {
    if (!t || !*t) return;
    (*t)->ops->destroy(*t);
    *t = NULL;
}
