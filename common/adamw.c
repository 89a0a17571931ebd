/* adamw.c — AdamW and SGD, learning-rate schedule, gradient clipping. */
#include "adamw.h"

#include <math.h>

graft_adamw_config_t graft_adamw_defaults(void) {
    return (graft_adamw_config_t){.lr = 3e-4f,
                                  .min_lr_frac = 0.1f,
                                  .warmup_steps = 0,
                                  .total_steps = 0,
                                  .beta1 = 0.9f,
                                  .beta2 = 0.999f,
                                  .eps = 1e-8f,
                                  .weight_decay = 0.0f,
                                  .grad_clip = 1.0f};
}

float graft_lr_at(const graft_adamw_config_t *cfg, int step) {
    if (cfg->warmup_steps > 0 && step < cfg->warmup_steps)
        return cfg->lr * (float)(step + 1) / (float)cfg->warmup_steps;
    if (cfg->total_steps <= cfg->warmup_steps) return cfg->lr;
    float progress = (float)(step - cfg->warmup_steps) / (float)(cfg->total_steps - cfg->warmup_steps);
    if (progress > 1.0f) progress = 1.0f;
    float floor_lr = cfg->lr * cfg->min_lr_frac;
    return floor_lr + 0.5f * (cfg->lr - floor_lr) * (1.0f + cosf(3.14159265358979f * progress));
}

void graft_grad_sumsq(const float *grads, size_t n, double *sumsq) {
    /* One thread and in double: the result must not depend on the thread
     * count. The vector lanes' partial sums are combined in a fixed order. */
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (size_t i = 0; i < n; i++) acc += (double)grads[i] * grads[i];
    *sumsq += acc;
}

float graft_clip_scale(const graft_adamw_config_t *cfg, double sumsq) {
    double norm = sqrt(sumsq);
    if (cfg->grad_clip <= 0.0f || norm <= cfg->grad_clip) return 1.0f;
    return (float)(cfg->grad_clip / (norm + 1e-6));
}

void graft_adamw_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                             float *m, float *v, size_t n, float lr, int t, float grad_scale,
                             int decay) {
    float b1 = cfg->beta1, b2 = cfg->beta2;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    float wd = decay ? cfg->weight_decay : 0.0f;
#pragma omp for simd schedule(simd : dynamic, 4096) nowait
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        float mhat = m[i] / c1, vhat = v[i] / c2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + cfg->eps) + wd * params[i]);
    }
}

void graft_sgd_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                           float *m, size_t n, float lr, float grad_scale, int decay) {
    float mu = cfg->momentum, wd = decay ? cfg->weight_decay : 0.0f;
    if (mu == 0.0f) {
#pragma omp for simd schedule(simd : dynamic, 4096) nowait
        for (size_t i = 0; i < n; i++) params[i] -= lr * (grads[i] * grad_scale + wd * params[i]);
        return;
    }
#pragma omp for simd schedule(simd : dynamic, 4096) nowait
    for (size_t i = 0; i < n; i++) {
        m[i] = mu * m[i] + grads[i] * grad_scale;
        params[i] -= lr * (m[i] + wd * params[i]);
    }
}

void graft_adamw_update(const graft_adamw_config_t *cfg, float *params, const float *grads,
                        float *m, float *v, size_t n, float lr, int t, float grad_scale,
                        int decay) {
#pragma omp parallel if (n >= GRAFT_ADAMW_PARALLEL_MIN)
    graft_adamw_update_team(cfg, params, grads, m, v, n, lr, t, grad_scale, decay);
}

void graft_optim_update_team(const graft_adamw_config_t *cfg, float *params, const float *grads,
                             float *m, float *v, size_t n, float lr, int t, float grad_scale,
                             int decay) {
    if (cfg->kind == GRAFT_SGD)
        graft_sgd_update_team(cfg, params, grads, m, n, lr, grad_scale, decay);
    else
        graft_adamw_update_team(cfg, params, grads, m, v, n, lr, t, grad_scale, decay);
}

void graft_optim_update(const graft_adamw_config_t *cfg, float *params, const float *grads,
                        float *m, float *v, size_t n, float lr, int t, float grad_scale,
                        int decay) {
#pragma omp parallel if (n >= GRAFT_ADAMW_PARALLEL_MIN)
    graft_optim_update_team(cfg, params, grads, m, v, n, lr, t, grad_scale, decay);
}
