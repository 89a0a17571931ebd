/* scope.h — a scope is a named family of trainable tensors that moves as
 * one: "shared" (task-agnostic, averaged over all workers), "task.NAME"
 * (one task's modules, averaged over its cohort) or "trunk" (the frozen
 * weights, trainable only for full fine-tuning).
 *
 * A scope owns three contiguous blocks of the same length: parameters,
 * gradients, and the AdamW moments (m then v in one allocation). Tensors are
 * named views at fixed offsets, so a scope can be exported, imported,
 * averaged, sent and checkpointed as one span (llm.c's one-allocation
 * pattern, per scope).
 *
 * A scope may end with statistics (graft_scope_add_stat): tensors that
 * travel, average and checkpoint with the modules but are not parameters
 * (e.g. the channels method's importance scores). They come after every
 * parameter, so the parameters are the span [0, nparams). Statistics are
 * never trained (frozen), never counted as parameters, left out of
 * clipping and server optimizers (a plain mean), and read as zeros from an
 * older checkpoint that lacks them.
 *
 * Life cycle: graft_scope_new(name); graft_scope_add() for every tensor
 * (returns its index), then graft_scope_add_stat(); graft_scope_alloc()
 * once; then graft_scope_ptr() gives stable pointers. graft_scope_destroy()
 * frees everything. A scope may also wrap memory it does not own
 * (graft_scope_wrap), e.g. the trunk's parameter block; then destroy leaves
 * that block alone.
 */
#ifndef GRAFT_SCOPE_H
#define GRAFT_SCOPE_H

#include "adamw.h"
#include "graft.h"
#include "safetensors.h"

#define GRAFT_SCOPE_NAME 96

typedef struct {
    char name[GRAFT_SCOPE_NAME]; /* e.g. "h.0.attn.c_attn.lora_A" (scope name not included) */
    int ndim;
    int64_t shape[2];
    size_t offset; /* floats from the start of the block */
    size_t numel;
    int decay;     /* AdamW weight decay applies */
    int frozen;    /* not trained: AdamW and the gradient norm skip it */
    int stat;      /* a statistic, not a parameter (frozen too; see above) */
    float lr_scale; /* AdamW uses lr * lr_scale for this tensor (1 unless set, e.g. --head_lr) */
} graft_scope_tensor_t;

typedef struct graft_scope {
    char name[GRAFT_SCOPE_NAME];
    int n_tensors, cap_tensors;
    graft_scope_tensor_t *tensors;
    size_t numel;
    size_t nparams; /* floats of parameters: [0, nparams); statistics follow */
    float *params; /* numel */
    float *grads;  /* numel, NULL until graft_scope_alloc_grads */
    float *state;  /* 2 * numel: AdamW m then v, NULL until graft_scope_alloc_grads */
    int owns_params;
    int owns_grads;
    int step;      /* optimiser steps taken */
    const float *prox_ref; /* FedProx anchor (numel floats, borrowed), NULL: none */
} graft_scope_t;

graft_scope_t *graft_scope_new(const char *name);
void graft_scope_destroy(graft_scope_t **self_p);

/* Declares a tensor (before alloc); returns its index. */
int graft_scope_add(graft_scope_t *s, const char *name, int ndim, int64_t d0, int64_t d1,
                    int decay);
/* Declares a statistic (after every parameter); returns its index. */
int graft_scope_add_stat(graft_scope_t *s, const char *name, int ndim, int64_t d0, int64_t d1);
/* Allocates the parameter block (zeroed). */
void graft_scope_alloc(graft_scope_t *s);
/* Uses an existing block of s->numel floats as parameters (not owned). */
void graft_scope_wrap(graft_scope_t *s, float *params);
/* Uses an existing gradient block (not owned) and allocates the state. */
void graft_scope_wrap_grads(graft_scope_t *s, float *grads);
/* Allocates zeroed gradient and optimiser-state blocks. */
void graft_scope_alloc_grads(graft_scope_t *s);

float *graft_scope_ptr(const graft_scope_t *s, int index);
float *graft_scope_grad(const graft_scope_t *s, int index);
int graft_scope_find(const graft_scope_t *s, const char *name);

void graft_scope_zero_grad(graft_scope_t *s);
/* Adds this scope's squared gradient norm (frozen tensors left out) to
 * *sumsq (for global clipping). */
void graft_scope_grad_sumsq(const graft_scope_t *s, double *sumsq);
/* One optimiser step (cfg->kind: AdamW or SGD) over the whole scope,
 * tensor by tensor (decay and learning-rate scale per tensor; frozen tensors
 * keep their values). */
void graft_scope_step(graft_scope_t *s, const graft_adamw_config_t *cfg, float lr,
                      float grad_scale);
/* FedProx: the gradient of mu/2 ||params - prox_ref||^2, added to every
 * trained tensor's gradient (nothing when prox_ref is NULL or mu is 0). */
void graft_scope_prox_grad(graft_scope_t *s, float mu);
/* Resets the optimiser state (after a new value arrives from a coordinator). */
void graft_scope_reset_state(graft_scope_t *s);

/* Copies the parameter block out / in (n must equal s->numel). */
void graft_scope_export(const graft_scope_t *s, float *dst);
void graft_scope_import(graft_scope_t *s, const float *src);

/* Adds this scope's tensors to a safetensors list under "<scope>.<tensor>"
 * names (names are written into the caller's names buffer, which must stay
 * alive until the write: n_tensors * GRAFT_SCOPE_NAME * 2 bytes). */
int graft_scope_st_entries(const graft_scope_t *s, graft_st_tensor_t *out, char *names);
/* Reads every tensor of the scope from an open checkpoint by the same names;
 * a statistic the checkpoint lacks (written before it existed) reads as
 * zeros. */
int graft_scope_st_read(graft_scope_t *s, const graft_st_file_t *f);

#endif
