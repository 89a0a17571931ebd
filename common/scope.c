/* scope.c — contiguous families of trainable tensors (see scope.h). */
#include "scope.h"

#include <string.h>

graft_scope_t *graft_scope_new(const char *name) {
    graft_scope_t *s = graft_xcalloc(1, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

void graft_scope_destroy(graft_scope_t **self_p) {
    graft_scope_t *s = *self_p;
    if (!s) return;
    if (s->owns_params) free(s->params);
    if (s->owns_grads) free(s->grads);
    free(s->state);
    free(s->tensors);
    free(s);
    *self_p = NULL;
}

static int add_tensor(graft_scope_t *s, const char *name, int ndim, int64_t d0, int64_t d1,
                      int decay) {
    GRAFT_ASSERT(!s->params && ndim >= 1 && ndim <= 2 && d0 > 0 && (ndim == 1 || d1 > 0));
    if (s->n_tensors == s->cap_tensors) {
        s->cap_tensors = s->cap_tensors ? 2 * s->cap_tensors : 16;
        s->tensors = graft_xrealloc(s->tensors, (size_t)s->cap_tensors * sizeof *s->tensors);
    }
    graft_scope_tensor_t *t = &s->tensors[s->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 0;
    t->numel = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
    t->offset = s->numel;
    t->decay = decay;
    t->lr_scale = 1.0f;
    s->numel += t->numel;
    return s->n_tensors++;
}

int graft_scope_add(graft_scope_t *s, const char *name, int ndim, int64_t d0, int64_t d1,
                    int decay) {
    GRAFT_ASSERT(s->nparams == s->numel); /* parameters come before statistics */
    int i = add_tensor(s, name, ndim, d0, d1, decay);
    s->nparams = s->numel;
    return i;
}

int graft_scope_add_stat(graft_scope_t *s, const char *name, int ndim, int64_t d0, int64_t d1) {
    int i = add_tensor(s, name, ndim, d0, d1, 0);
    s->tensors[i].frozen = s->tensors[i].stat = 1;
    return i;
}

void graft_scope_alloc(graft_scope_t *s) {
    GRAFT_ASSERT(!s->params);
    s->params = graft_xcalloc(s->numel, sizeof(float));
    s->owns_params = 1;
}

void graft_scope_wrap(graft_scope_t *s, float *params) {
    GRAFT_ASSERT(!s->params);
    s->params = params;
    s->owns_params = 0;
}

void graft_scope_wrap_grads(graft_scope_t *s, float *grads) {
    GRAFT_ASSERT(!s->grads);
    s->grads = grads;
    s->owns_grads = 0;
    s->state = graft_xcalloc(2 * s->numel, sizeof(float));
}

void graft_scope_alloc_grads(graft_scope_t *s) {
    if (s->grads) return;
    s->grads = graft_xcalloc(s->numel, sizeof(float));
    s->owns_grads = 1;
    s->state = graft_xcalloc(2 * s->numel, sizeof(float));
}

float *graft_scope_ptr(const graft_scope_t *s, int index) {
    GRAFT_ASSERT(s->params && index >= 0 && index < s->n_tensors);
    return s->params + s->tensors[index].offset;
}

float *graft_scope_grad(const graft_scope_t *s, int index) {
    GRAFT_ASSERT(index >= 0 && index < s->n_tensors);
    return s->grads ? s->grads + s->tensors[index].offset : NULL;
}

int graft_scope_find(const graft_scope_t *s, const char *name) {
    for (int i = 0; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, name) == 0) return i;
    return -1;
}

void graft_scope_zero_grad(graft_scope_t *s) {
    if (s->grads) memset(s->grads, 0, s->numel * sizeof(float));
}

void graft_scope_grad_sumsq(const graft_scope_t *s, double *sumsq) {
    if (!s->grads) return;
    int frozen = 0;
    for (int i = 0; i < s->n_tensors; i++) frozen |= s->tensors[i].frozen;
    if (!frozen) { /* one pass: the same bits as before freezing existed */
        graft_grad_sumsq(s->grads, s->numel, sumsq);
        return;
    }
    for (int i = 0; i < s->n_tensors; i++)
        if (!s->tensors[i].frozen)
            graft_grad_sumsq(s->grads + s->tensors[i].offset, s->tensors[i].numel, sumsq);
}

void graft_scope_step(graft_scope_t *s, const graft_adamw_config_t *cfg, float lr,
                      float grad_scale) {
    GRAFT_ASSERT(s->grads);
    s->step++;
    /* One parallel region for the whole scope; the tensors are disjoint, so
     * the threads go from one to the next without waiting. */
#pragma omp parallel if (s->numel >= GRAFT_ADAMW_PARALLEL_MIN)
    for (int i = 0; i < s->n_tensors; i++) {
        const graft_scope_tensor_t *t = &s->tensors[i];
        if (t->frozen) continue;
        graft_optim_update_team(cfg, s->params + t->offset, s->grads + t->offset,
                                s->state + t->offset, s->state + s->numel + t->offset, t->numel,
                                lr * t->lr_scale, s->step, grad_scale, t->decay);
    }
}

void graft_scope_prox_grad(graft_scope_t *s, float mu) {
    if (!s->prox_ref || mu == 0 || !s->grads) return;
    for (int i = 0; i < s->n_tensors; i++) {
        const graft_scope_tensor_t *t = &s->tensors[i];
        if (t->frozen) continue;
        float *g = s->grads + t->offset;
        const float *w = s->params + t->offset, *ref = s->prox_ref + t->offset;
        for (size_t j = 0; j < t->numel; j++) g[j] += mu * (w[j] - ref[j]);
    }
}

void graft_scope_reset_state(graft_scope_t *s) {
    if (s->state) memset(s->state, 0, 2 * s->numel * sizeof(float));
    s->step = 0;
}

void graft_scope_export(const graft_scope_t *s, float *dst) {
    memcpy(dst, s->params, s->numel * sizeof(float));
}

void graft_scope_import(graft_scope_t *s, const float *src) {
    memcpy(s->params, src, s->numel * sizeof(float));
}

int graft_scope_st_entries(const graft_scope_t *s, graft_st_tensor_t *out, char *names) {
    for (int i = 0; i < s->n_tensors; i++) {
        const graft_scope_tensor_t *t = &s->tensors[i];
        char *nm = names + (size_t)i * 2 * GRAFT_SCOPE_NAME;
        snprintf(nm, 2 * GRAFT_SCOPE_NAME, "%s.%s", s->name, t->name);
        out[i] = (graft_st_tensor_t){.name = nm, .ndim = t->ndim, .data = s->params + t->offset};
        out[i].shape[0] = t->shape[0];
        out[i].shape[1] = t->shape[1];
    }
    return s->n_tensors;
}

int graft_scope_st_read(graft_scope_t *s, const graft_st_file_t *f) {
    char nm[2 * GRAFT_SCOPE_NAME];
    for (int i = 0; i < s->n_tensors; i++) {
        const graft_scope_tensor_t *t = &s->tensors[i];
        snprintf(nm, sizeof nm, "%s.%s", s->name, t->name);
        if (t->stat && !graft_st_has(f, nm)) {
            memset(s->params + t->offset, 0, t->numel * sizeof(float));
            continue;
        }
        int rc = graft_st_read(f, nm, t->shape, t->ndim, s->params + t->offset);
        if (rc) return rc;
    }
    return GRAFT_OK;
}
