/* adamw.h — the optimiser: AdamW with decoupled weight decay (the default)
 * or SGD with heavy-ball momentum, a warmup plus cosine learning-rate
 * schedule, and global-norm gradient clipping.
 *
 * The optimiser works on spans: a parameter block, its gradient block and
 * its state block (m then v, 2n floats, one allocation owned by the caller;
 * SGD keeps its momentum in m and leaves v alone), so that a whole scope is
 * updated with one call per decay class.
 */
#ifndef GRAFT_ADAMW_H
#define GRAFT_ADAMW_H

#include <stddef.h>

typedef enum { GRAFT_ADAMW = 0, GRAFT_SGD } graft_optimizer_t;

typedef struct {
    graft_optimizer_t kind;
    float lr;           /* peak learning rate */
    float min_lr_frac;  /* cosine decays to lr * min_lr_frac */
    int warmup_steps;   /* linear warmup from lr / warmup_steps */
    int total_steps;    /* end of the cosine */
    float beta1, beta2, eps;
    float momentum;     /* SGD: m = momentum * m + g; 0 is plain SGD */
    float weight_decay; /* applied to spans flagged for decay */
    float grad_clip;    /* max global L2 norm; <= 0 disables clipping */
} graft_adamw_config_t;

/* Sensible defaults for small transformers. */
graft_adamw_config_t graft_adamw_defaults(void);

/* Learning rate at step (0-based): linear warmup, then cosine to the floor. */
float graft_lr_at(const graft_adamw_config_t *cfg, int step);

/* Global L2 norm of grads[0..n) accumulated into *sumsq (double, in order). */
void graft_grad_sumsq(const float *grads, size_t n, double *sumsq);
/* Multiplier that brings a global norm down to cfg->grad_clip (1 if below). */
float graft_clip_scale(const graft_adamw_config_t *cfg, double sumsq);

/* One AdamW update of params[0..n) in place with moments m, v (n each);
 * t is the 1-based step count for bias correction; grad_scale multiplies
 * every gradient (clipping); decay selects weight decay. */
void graft_adamw_update(const graft_adamw_config_t *cfg, float *params, const float *grads,
                        float *m, float *v, size_t n, float lr, int t, float grad_scale,
                        int decay);

/* The same as a worksharing loop for the threads of an enclosing OpenMP
 * parallel region, each of which must call it (outside a region: on the
 * calling thread alone); no barrier at its end. Several spans then share
 * one parallel region (graft_scope_step) instead of one region each. */
void graft_adamw_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                             float *m, float *v, size_t n, float lr, int t, float grad_scale,
                             int decay);

/* One SGD update, p -= lr * (m + wd * p) with m = momentum * m + g (m is
 * not touched when momentum is 0), as a worksharing loop like the above. */
void graft_sgd_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                           float *m, size_t n, float lr, float grad_scale, int decay);

/* One step of cfg->kind's optimiser on a span: graft_sgd_update_team or
 * graft_adamw_update_team (same arguments; SGD ignores v and t). The
 * _team form is a worksharing loop as above; graft_optim_update opens its
 * own parallel region for long spans. */
void graft_optim_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                             float *m, float *v, size_t n, float lr, int t, float grad_scale,
                             int decay);
void graft_optim_update(const graft_adamw_config_t *cfg, float *params, const float *grads,
                        float *m, float *v, size_t n, float lr, int t, float grad_scale,
                        int decay);

/* Spans shorter than this are updated on one thread: starting the team
 * costs more than it saves. */
#define GRAFT_ADAMW_PARALLEL_MIN 32768

#endif
