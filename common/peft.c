/* peft.c — PEFT modules, their scopes and the trunk hooks (see peft.h). */
#include "peft.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ops.h"
#include "profile.h"

/* ---- parsing ------------------------------------------------------------ */

static const struct {
    const char *name;
    int bit;
} method_names[] = {
    {"full", GRAFT_M_FULL},       {"head", GRAFT_M_HEAD},     {"lora", GRAFT_M_LORA},
    {"adapter", GRAFT_M_ADAPTER}, {"red", GRAFT_M_RED},       {"lntune", GRAFT_M_LNTUNE},
    {"channels", GRAFT_M_CHANNELS}, {"graft", GRAFT_M_GRAFT},
};

static const char *proj_names[GRAFT_NUM_PROJ] = {"qkv", "attn", "fc", "fcproj"};
/* Hugging Face module names of the projections. */
static const char *proj_hf[GRAFT_NUM_PROJ] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                              "mlp.c_proj"};

const char *graft_proj_name(graft_proj_t p) { return proj_names[p]; }

/* Splits a comma list and maps each item through lookup; -1 = unknown. */
static int parse_set(const char *list, int (*lookup)(const char *), int *out, const char *what) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    int set = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", +", &save); tok;
         tok = strtok_r(NULL, ", +", &save)) {
        int bits = lookup(tok);
        if (bits < 0) {
            LOG_ERROR("unknown %s '%s'", what, tok);
            return GRAFT_EINVAL;
        }
        set |= bits;
    }
    *out = set;
    return GRAFT_OK;
}

static int lookup_method(const char *s) {
    for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
        if (!strcmp(s, method_names[i].name)) return method_names[i].bit;
    return -1;
}

static int lookup_target(const char *s) {
    if (!strcmp(s, "all")) return (1 << GRAFT_NUM_PROJ) - 1;
    for (int p = 0; p < GRAFT_NUM_PROJ; p++)
        if (!strcmp(s, proj_names[p])) return 1 << p;
    return -1;
}

int graft_peft_parse_methods(const char *list, int *methods) {
    return parse_set(list, lookup_method, methods,
                     "method (full, head, lora, adapter, red, lntune, channels, graft)");
}

int graft_peft_parse_targets(const char *list, int *targets) {
    return parse_set(list, lookup_target, targets, "LoRA target (qkv, attn, fc, fcproj, all)");
}

void graft_peft_methods_str(int methods, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
        if ((methods & method_names[i].bit) && len < n)
            len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "," : "",
                                    method_names[i].name);
}

void graft_peft_targets_str(int targets, char *buf, size_t n) {
    int all = (1 << GRAFT_NUM_PROJ) - 1;
    size_t len = 0;
    buf[0] = '\0';
    for (int p = 0; p < GRAFT_NUM_PROJ && targets != all; p++)
        if ((targets & (1 << p)) && len < n)
            len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "," : "", proj_names[p]);
    if (targets == all) snprintf(buf, n, "all");
}

/* ---- construction ------------------------------------------------------- */

static void proj_dims(const graft_gpt2_config_t *c, graft_proj_t p, int *in, int *out) {
    int C = c->C;
    static const int mult_in[GRAFT_NUM_PROJ] = {1, 1, 1, 4};
    static const int mult_out[GRAFT_NUM_PROJ] = {3, 1, 4, 1};
    *in = mult_in[p] * C;
    *out = mult_out[p] * C;
}

/* Declares L LoRA pairs per target projection; idx gets (l, proj, A/B). */
static void add_lora(graft_scope_t *s, const graft_gpt2_config_t *c, int targets, int r,
                     int *idx) {
    char nm[GRAFT_SCOPE_NAME];
    for (int l = 0; l < c->L; l++) {
        for (int p = 0; p < GRAFT_NUM_PROJ; p++) {
            int *slot = idx + (l * GRAFT_NUM_PROJ + p) * 2;
            slot[0] = slot[1] = -1;
            if (!(targets & (1 << p)) || r <= 0) continue;
            int in, out;
            proj_dims(c, p, &in, &out);
            snprintf(nm, sizeof nm, "h.%d.%s.lora_A", l, proj_hf[p]);
            slot[0] = graft_scope_add(s, nm, 2, in, r, 0);
            snprintf(nm, sizeof nm, "h.%d.%s.lora_B", l, proj_hf[p]);
            slot[1] = graft_scope_add(s, nm, 2, r, out, 0);
        }
    }
}

/* A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform as in the LoRA paper), B = 0. */
static void init_lora(graft_scope_t *s, const int *idx, int L, graft_rng_t *rng) {
    for (int i = 0; i < L * GRAFT_NUM_PROJ; i++) {
        if (idx[2 * i] < 0) continue;
        const graft_scope_tensor_t *t = &s->tensors[idx[2 * i]];
        float bound = 1.0f / sqrtf((float)t->shape[0]);
        float *A = graft_scope_ptr(s, idx[2 * i]);
        for (size_t j = 0; j < t->numel; j++) A[j] = bound * (2.0f * graft_rng_uniform(rng) - 1.0f);
    }
}

static void declare_task(graft_peft_t *p, graft_peft_task_modules_t *tm,
                         const graft_peft_task_t *desc) {
    const graft_gpt2_config_t *c = &p->trunk->cfg;
    const graft_peft_config_t *cfg = &p->cfg;
    int L = c->L, C = c->C;
    char scope_name[GRAFT_SCOPE_NAME];
    snprintf(tm->name, sizeof tm->name, "%s", desc->name);
    snprintf(scope_name, sizeof scope_name, "task.%s", desc->name);
    tm->num_labels = desc->num_labels;
    graft_scope_t *s = tm->scope = graft_scope_new(scope_name);
    tm->head_w = tm->head_b = tm->red_s = tm->red_b = -1;
    tm->ln1w = tm->ln1b = tm->ln2w = tm->ln2b = tm->lnfw = tm->lnfb = -1;
    tm->ad_lnw = tm->ad_lnb = tm->ad_down = tm->ad_downb = tm->ad_up = tm->ad_upb = -1;
    tm->ch_w = tm->ch_b = tm->ch_score = -1;
    if (desc->num_labels > 0) {
        tm->head_w = graft_scope_add(s, "head.weight", 2, C, desc->num_labels, 1);
        tm->head_b = graft_scope_add(s, "head.bias", 1, desc->num_labels, 0, 0);
    }
    tm->lora_idx = graft_xmalloc((size_t)L * GRAFT_NUM_PROJ * 2 * sizeof(int));
    add_lora(s, c, (cfg->methods & GRAFT_M_LORA) ? cfg->lora_targets : 0, cfg->lora_task_rank,
             tm->lora_idx);
    if (cfg->methods & GRAFT_M_RED) {
        tm->red_s = graft_scope_add(s, "red.scale", 2, L, C, 0);
        tm->red_b = graft_scope_add(s, "red.bias", 2, L, C, 0);
    }
    if (cfg->methods & GRAFT_M_LNTUNE) {
        tm->ln1w = graft_scope_add(s, "ln_1.weight", 2, L, C, 0);
        tm->ln1b = graft_scope_add(s, "ln_1.bias", 2, L, C, 0);
        tm->ln2w = graft_scope_add(s, "ln_2.weight", 2, L, C, 0);
        tm->ln2b = graft_scope_add(s, "ln_2.bias", 2, L, C, 0);
        tm->lnfw = graft_scope_add(s, "ln_f.weight", 1, C, 0, 0);
        tm->lnfb = graft_scope_add(s, "ln_f.bias", 1, C, 0, 0);
    }
    if (cfg->methods & GRAFT_M_ADAPTER) {
        int m = cfg->adapter_dim;
        tm->ad_lnw = graft_scope_add(s, "adapter.ln.weight", 2, L, C, 0);
        tm->ad_lnb = graft_scope_add(s, "adapter.ln.bias", 2, L, C, 0);
        tm->ad_down = graft_scope_add(s, "adapter.down.weight", 2, (int64_t)L * C, m, 1);
        tm->ad_downb = graft_scope_add(s, "adapter.down.bias", 2, L, m, 0);
        tm->ad_up = graft_scope_add(s, "adapter.up.weight", 2, (int64_t)L * m, C, 1);
        tm->ad_upb = graft_scope_add(s, "adapter.up.bias", 2, L, C, 0);
    }
    if (cfg->methods & GRAFT_M_CHANNELS) {
        int k = cfg->channels_k;
        GRAFT_ASSERT(k <= C); /* graft_trainer_new refuses a wider k */
        tm->ch_w = graft_scope_add(s, "channels.weight", 2, (int64_t)L * 4 * C, k, 0);
        tm->ch_b = graft_scope_add(s, "channels.bias", 2, L, k, 0);
        tm->channels = graft_xmalloc((size_t)L * k * sizeof(int32_t));
        for (int l = 0; l < L; l++)
            for (int j = 0; j < k; j++) tm->channels[l * k + j] = j;
        /* The scores travel with the modules, so that every process that
         * selects (a federated run's coordinator and workers) ranks the
         * same, aggregated scores. */
        tm->ch_score = graft_scope_add_stat(s, "channels.score", 2, L, C);
    }
}

static void init_task(graft_peft_t *p, graft_peft_task_modules_t *tm, graft_rng_t *rng) {
    const graft_gpt2_config_t *c = &p->trunk->cfg;
    const graft_gpt2_params_t *w = &p->trunk->params;
    graft_scope_t *s = tm->scope;
    size_t LC = (size_t)c->L * c->C;
    graft_scope_alloc(s);
    graft_scope_alloc_grads(s);
    if (tm->ch_score >= 0) tm->channel_scores = graft_scope_ptr(s, tm->ch_score);
    if (tm->head_w >= 0)
        graft_rng_fill_normal(rng, graft_scope_ptr(s, tm->head_w), s->tensors[tm->head_w].numel,
                              0.02f);
    init_lora(s, tm->lora_idx, c->L, rng);
    if (tm->red_s >= 0)
        for (size_t i = 0; i < LC; i++) graft_scope_ptr(s, tm->red_s)[i] = 1.0f;
    if (tm->ln1w >= 0) {
        memcpy(graft_scope_ptr(s, tm->ln1w), w->ln1w, LC * sizeof(float));
        memcpy(graft_scope_ptr(s, tm->ln1b), w->ln1b, LC * sizeof(float));
        memcpy(graft_scope_ptr(s, tm->ln2w), w->ln2w, LC * sizeof(float));
        memcpy(graft_scope_ptr(s, tm->ln2b), w->ln2b, LC * sizeof(float));
        memcpy(graft_scope_ptr(s, tm->lnfw), w->lnfw, c->C * sizeof(float));
        memcpy(graft_scope_ptr(s, tm->lnfb), w->lnfb, c->C * sizeof(float));
    }
    if (tm->ad_lnw >= 0) {
        for (size_t i = 0; i < LC; i++) graft_scope_ptr(s, tm->ad_lnw)[i] = 1.0f;
        const graft_scope_tensor_t *d = &s->tensors[tm->ad_down];
        graft_rng_fill_normal(rng, graft_scope_ptr(s, tm->ad_down), d->numel,
                              1.0f / sqrtf((float)c->C));
        /* up-projection stays zero: the adapter starts as the identity */
    }
}

graft_peft_t *graft_peft_new(graft_gpt2_t *trunk, const graft_peft_config_t *cfg,
                             const graft_peft_task_t *tasks, int n_tasks) {
    graft_peft_t *p = graft_xcalloc(1, sizeof *p);
    p->cfg = *cfg;
    p->trunk = trunk;
    p->active = -1;
    const graft_gpt2_config_t *c = &trunk->cfg;
    graft_rng_t rng;
    graft_rng_seed(&rng, cfg->seed, 0x70656674u);

    p->shared = graft_scope_new("shared");
    p->shared_lora_idx = graft_xmalloc((size_t)c->L * GRAFT_NUM_PROJ * 2 * sizeof(int));
    if (cfg->methods & GRAFT_M_FULL) {
        /* Full fine-tuning: the trunk is the shared scope, under HF names. */
        int n = graft_gpt2_num_named(c);
        graft_gpt2_tensor_t *named = graft_xmalloc((size_t)n * sizeof *named);
        graft_gpt2_named(trunk, named);
        for (int i = 0; i < n; i++)
            graft_scope_add(p->shared, named[i].name, named[i].ndim, named[i].shape[0],
                            named[i].shape[1], named[i].decay);
        free(named);
        for (int i = 0; i < c->L * GRAFT_NUM_PROJ * 2; i++) p->shared_lora_idx[i] = -1;
        graft_gpt2_enable_grads(trunk);
        graft_scope_wrap(p->shared, trunk->params_memory);
        graft_scope_wrap_grads(p->shared, trunk->grads_memory);
    } else {
        add_lora(p->shared, c, (cfg->methods & GRAFT_M_LORA) ? cfg->lora_targets : 0,
                 cfg->lora_shared_rank, p->shared_lora_idx);
        graft_scope_alloc(p->shared);
        graft_scope_alloc_grads(p->shared);
        init_lora(p->shared, p->shared_lora_idx, c->L, &rng);
    }

    p->n_tasks = n_tasks;
    p->tasks = graft_xcalloc((size_t)n_tasks, sizeof *p->tasks);
    for (int t = 0; t < n_tasks; t++) {
        declare_task(p, &p->tasks[t], &tasks[t]);
        init_task(p, &p->tasks[t], &rng);
    }
    graft_peft_set_head_lr_scale(p, cfg->head_lr_scale);
    trunk->peft = p;
    return p;
}

void graft_peft_destroy(graft_peft_t **self_p) {
    graft_peft_t *p = *self_p;
    if (!p) return;
    if (p->trunk && p->trunk->peft == p) p->trunk->peft = NULL;
    graft_scope_destroy(&p->shared);
    for (int t = 0; t < p->n_tasks; t++) {
        graft_scope_destroy(&p->tasks[t].scope);
        free(p->tasks[t].lora_idx);
        free(p->tasks[t].channels);
        free(p->tasks[t].logit_offset);
    }
    free(p->tasks);
    free(p->shared_lora_idx);
    free(p->merged);
    free(p->merged_on);
    free(p->lora_scratch);
    free(p->acts);
    free(p->grad_scratch);
    free(p->pos);
    free(p->labels);
    free(p);
    *self_p = NULL;
}

int graft_peft_find_task(const graft_peft_t *p, const char *name) {
    for (int t = 0; t < p->n_tasks; t++)
        if (!strcmp(p->tasks[t].name, name)) return t;
    return -1;
}

int graft_peft_methods(const graft_peft_t *p) {
    return p->cfg.methods;
}

float graft_peft_head_lr_scale(const graft_peft_t *p) {
    return p->cfg.head_lr_scale;
}

int graft_peft_n_tasks(const graft_peft_t *p) {
    return p->n_tasks;
}

const char *graft_peft_task_name(const graft_peft_t *p, int task) {
    GRAFT_ASSERT(task >= 0 && task < p->n_tasks);
    return p->tasks[task].name;
}

graft_scope_t *graft_peft_shared(const graft_peft_t *p) {
    return p->shared;
}

graft_scope_t *graft_peft_task_scope(const graft_peft_t *p, int task) {
    GRAFT_ASSERT(task >= 0 && task < p->n_tasks);
    return p->tasks[task].scope;
}

int graft_peft_head(const graft_peft_t *p, int task, float **w, float **b) {
    GRAFT_ASSERT(task >= 0 && task < p->n_tasks);
    const graft_peft_task_modules_t *tm = &p->tasks[task];
    *w = *b = NULL;
    if (tm->head_w < 0) return 0;
    *w = graft_scope_ptr(tm->scope, tm->head_w);
    *b = graft_scope_ptr(tm->scope, tm->head_b);
    return 1;
}

int graft_peft_scopes(const graft_peft_t *p, int task, graft_scope_t **out) {
    int n = 0;
    if (p->shared->numel > 0) out[n++] = p->shared;
    if (task >= 0 && p->tasks[task].scope->numel > 0) out[n++] = p->tasks[task].scope;
    return n;
}

size_t graft_peft_task_params(const graft_peft_t *p, int task) {
    return p->shared->nparams + p->tasks[task].scope->nparams;
}

/* ---- module activations ------------------------------------------------- */

/* Sizes the module activations for the trunk's allocated (B, T). */
static void reserve(graft_peft_t *p) {
    graft_gpt2_t *m = p->trunk;
    if (p->acts && p->B == m->B && p->T == m->T) return;
    free(p->acts);
    free(p->grad_scratch);
    free(p->pos);
    free(p->labels);
    p->B = m->B;
    p->T = m->T;
    const graft_gpt2_config_t *c = &m->cfg;
    size_t BT = (size_t)p->B * p->T, L = c->L, C = c->C;
    size_t am = (size_t)p->cfg.adapter_dim, k = (size_t)p->cfg.channels_k;
    int red = p->cfg.methods & GRAFT_M_RED;
    int ad = p->cfg.methods & GRAFT_M_ADAPTER, ch = p->cfg.methods & GRAFT_M_CHANNELS;
    size_t K = 1;
    for (int t = 0; t < p->n_tasks; t++)
        if ((size_t)p->tasks[t].num_labels > K) K = (size_t)p->tasks[t].num_labels;
    size_t sizes[] = {
        red ? L * BT * C : 0,                        /* red_in */
        ad ? L * BT * C : 0, ad ? L * BT * C : 0,    /* ad_in ad_ln */
        ad ? L * BT : 0, ad ? L * BT : 0,            /* ad_mean ad_rstd */
        ad ? L * BT * am : 0, ad ? L * BT * am : 0,  /* ad_h ad_a */
        ch ? BT * k : 0,                             /* ch_gather */
        (size_t)p->B * C, (size_t)p->B * C,          /* pooled dpooled */
        (size_t)p->B * K, (size_t)p->B * K,          /* head_logits head_probs */
        (size_t)p->B * K, (size_t)p->B,              /* head_dlogits head_losses */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += sizes[i];
    p->acts = graft_xcalloc(total, sizeof(float));
    float *q = p->acts;
    float **views[] = {&p->red_in, &p->ad_in, &p->ad_ln, &p->ad_mean, &p->ad_rstd, &p->ad_h,
                       &p->ad_a, &p->ch_gather, &p->pooled, &p->dpooled, &p->head_logits,
                       &p->head_probs, &p->head_dlogits, &p->head_losses};
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        *views[i] = q;
        q += sizes[i];
    }
    /* Scratch for gradients flowing through a module: two (BT, 4C) slabs. */
    p->grad_scratch = graft_xmalloc(2 * BT * 4 * C * sizeof(float));
    p->pos = graft_xmalloc((size_t)p->B * sizeof(int32_t));
    p->labels = graft_xmalloc((size_t)p->B * sizeof(int32_t));
}

/* ---- hooks: how deep the backward pass goes ------------------------------ */

static int lora_on(const graft_peft_t *p, int l, graft_proj_t proj) {
    const int *slot = p->shared_lora_idx + (l * GRAFT_NUM_PROJ + proj) * 2;
    if (slot[0] >= 0) return 1;
    if (p->active < 0) return 0;
    return p->tasks[p->active].lora_idx[(l * GRAFT_NUM_PROJ + proj) * 2] >= 0;
}

/* The deepest gradient that layer l's modules need, or -1 for none. */
static int layer_grad_depth(const graft_peft_t *p, int l) {
    static const graft_grad_depth_t proj_depth[GRAFT_NUM_PROJ] = {
        GRAFT_GRAD_QKV_OUT, GRAFT_GRAD_ATTN_OUT, GRAFT_GRAD_FC_OUT, GRAFT_GRAD_MLP_OUT};
    int d = -1;
    for (int proj = 0; proj < GRAFT_NUM_PROJ; proj++)
        if (lora_on(p, l, proj) && (int)proj_depth[proj] > d) d = proj_depth[proj];
    if (p->active >= 0) {
        const graft_peft_task_modules_t *tm = &p->tasks[p->active];
        if (tm->ad_lnw >= 0 && d < GRAFT_GRAD_BLOCK_OUT) d = GRAFT_GRAD_BLOCK_OUT;
        if ((tm->red_s >= 0 || tm->ch_w >= 0) && d < GRAFT_GRAD_MLP_OUT) d = GRAFT_GRAD_MLP_OUT;
        if (tm->ln1w >= 0) d = GRAFT_GRAD_LN1_OUT;
    }
    return d;
}

void peft_grad_floor(const graft_gpt2_t *m, int *layer, graft_grad_depth_t *depth) {
    const graft_peft_t *p = m->peft;
    *layer = 0;
    *depth = GRAFT_GRAD_BLOCK_IN;
    if (!p || m->grads_memory) return;
    for (int l = 0; l < m->cfg.L; l++) {
        int d = layer_grad_depth(p, l);
        if (d >= 0) {
            *layer = l;
            *depth = (graft_grad_depth_t)d;
            return;
        }
    }
    *layer = m->cfg.L;
    *depth = GRAFT_GRAD_BLOCK_OUT;
}

/* ---- hooks: LayerNorm parameters ---------------------------------------- */

void peft_ln_params(const graft_gpt2_t *m, int l, int which, const float **w, const float **b,
                    float **dw, float **db) {
    const graft_peft_t *p = m->peft;
    int C = m->cfg.C;
    size_t off = l < 0 ? 0 : (size_t)l * C;
    if (p && p->active >= 0 && p->tasks[p->active].ln1w >= 0) {
        const graft_peft_task_modules_t *tm = &p->tasks[p->active];
        int iw = l < 0 ? tm->lnfw : which == 1 ? tm->ln1w : tm->ln2w;
        int ib = l < 0 ? tm->lnfb : which == 1 ? tm->ln1b : tm->ln2b;
        *w = graft_scope_ptr(tm->scope, iw) + off;
        *b = graft_scope_ptr(tm->scope, ib) + off;
        *dw = graft_scope_grad(tm->scope, iw) + off;
        *db = graft_scope_grad(tm->scope, ib) + off;
        return;
    }
    const graft_gpt2_params_t *P = &m->params;
    const float *tw = l < 0 ? P->lnfw : which == 1 ? P->ln1w + off : P->ln2w + off;
    const float *tb = l < 0 ? P->lnfb : which == 1 ? P->ln1b + off : P->ln2b + off;
    *w = tw;
    *b = tb;
    if (m->grads_memory) {
        const graft_gpt2_params_t *G = &m->grads;
        *dw = l < 0 ? G->lnfw : which == 1 ? G->ln1w + off : G->ln2w + off;
        *db = l < 0 ? G->lnfb : which == 1 ? G->ln1b + off : G->ln2b + off;
    } else {
        *dw = *db = NULL;
    }
}

/* ---- hooks: LoRA and channel deltas on the projections ------------------- */

/* The LoRA pair (shared: pair 0, task: pair 1) on (l, proj), or 0 if none. */
static int lora_pair(const graft_peft_t *p, int l, graft_proj_t proj, int pair, graft_lora_t *out) {
    const graft_scope_t *s;
    const int *idx;
    float alpha;
    int r;
    if (pair == 0) {
        s = p->shared;
        idx = p->shared_lora_idx;
        r = p->cfg.lora_shared_rank;
        alpha = p->cfg.lora_shared_alpha;
    } else {
        if (p->active < 0) return 0;
        s = p->tasks[p->active].scope;
        idx = p->tasks[p->active].lora_idx;
        r = p->cfg.lora_task_rank;
        alpha = p->cfg.lora_task_alpha;
    }
    const int *slot = idx + (l * GRAFT_NUM_PROJ + proj) * 2;
    if (slot[0] < 0) return 0;
    out->A = graft_scope_ptr(s, slot[0]);
    out->B = graft_scope_ptr(s, slot[1]);
    /* A frozen A (lora_aggregate freeze_a) needs no gradient. */
    out->dA = s->tensors[slot[0]].frozen ? NULL : graft_scope_grad(s, slot[0]);
    out->dB = graft_scope_grad(s, slot[1]);
    out->r = r;
    out->scale = alpha / (float)r;
    return 1;
}

static const graft_peft_task_modules_t *active_channels(const graft_peft_t *p) {
    if (p->active < 0 || p->tasks[p->active].ch_w < 0) return NULL;
    return &p->tasks[p->active];
}

/* The trunk's weight (in, out) of projection proj in layer l. */
static float *proj_weight(graft_gpt2_t *m, int l, graft_proj_t proj) {
    size_t C = m->cfg.C;
    switch (proj) {
    case GRAFT_PROJ_QKV: return m->params.qkvw + l * C * 3 * C;
    case GRAFT_PROJ_ATTN: return m->params.attprojw + l * C * C;
    case GRAFT_PROJ_FC: return m->params.fcw + l * C * 4 * C;
    default: return m->params.fcprojw + l * 4 * C * C;
    }
}

/* A layer's weights of the LoRA targets among the projections before
 * proj (all of them: GRAFT_NUM_PROJ), in units of C^2. */
static size_t targets_c2(const graft_peft_t *p, int proj) {
    static const size_t per_layer[GRAFT_NUM_PROJ] = {3, 1, 4, 4}; /* qkv, attn, fc, fcproj */
    size_t n = 0;
    for (int q = 0; q < proj; q++)
        if (p->cfg.lora_targets & (1 << q)) n += per_layer[q];
    return n;
}

/* Where (l, proj)'s merged weight lives in p->merged: the targeted
 * projections' tensors back to back, each laid out like the trunk's. */
static float *merged_weight(const graft_peft_t *p, int l, graft_proj_t proj) {
    GRAFT_ASSERT(p->cfg.lora_targets & (1 << proj));
    size_t C = p->trunk->cfg.C, L = p->trunk->cfg.L;
    size_t before = targets_c2(p, proj), layer = targets_c2(p, proj + 1) - before;
    return p->merged + (before * L + layer * (size_t)l) * C * C;
}

/* LoRA is merged: the trunk's forward and backward multiply by
 * W' = W + sum over the active pairs of scale A B, which is exactly the
 * adapted layer, so LoRA adds no products of its own to the forward pass
 * or to the input gradient. W' costs one copy of W and an (in, r, out)
 * product per pass; the unmerged form costs (N, in, r) and (N, r, out)
 * products and an extra pass over the (N, out) output, both ways. */
void peft_forward_begin(graft_gpt2_t *m) {
    graft_peft_t *p = m->peft;
    if (!p || !(p->cfg.methods & GRAFT_M_LORA)) return;
    const graft_gpt2_config_t *c = &m->cfg;
    if (!p->merged) {
        p->merged_n = targets_c2(p, GRAFT_NUM_PROJ) * c->L * c->C * c->C;
        p->merged = graft_xmalloc(p->merged_n * sizeof(float));
        p->merged_on = graft_xcalloc((size_t)c->L * GRAFT_NUM_PROJ, sizeof(int));
    }
    double t0 = graft_prof_start();
    double flops = 0.0;
    /* The (layer, projection) merges are independent: one per thread at a time. */
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : flops)
    for (int i = 0; i < c->L * GRAFT_NUM_PROJ; i++) {
        int l = i / GRAFT_NUM_PROJ, proj = i % GRAFT_NUM_PROJ, in, odim, on = 0;
        proj_dims(c, proj, &in, &odim);
        float *w = NULL; /* only LoRA targets have a place in p->merged */
        graft_lora_t lo;
        for (int pair = 0; pair < 2; pair++) {
            if (!lora_pair(p, l, proj, pair, &lo)) continue;
            if (!on) {
                w = merged_weight(p, l, proj);
                memcpy(w, proj_weight(m, l, proj), (size_t)in * odim * sizeof(float));
            }
            on = 1;
            /* W' (in,odim) += scale * A (in,r) @ B (r,odim) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, odim, lo.r, lo.scale,
                        lo.A, lo.r, lo.B, odim, 1.0f, w, odim);
            flops += 2.0 * in * lo.r * odim;
        }
        p->merged_on[i] = on;
    }
    graft_prof_stop("fwd.lora_merge", t0, flops);
}

const float *peft_linear_weight(const graft_gpt2_t *m, int l, graft_proj_t proj) {
    const graft_peft_t *p = m->peft;
    if (p && p->merged_on && p->merged_on[l * GRAFT_NUM_PROJ + proj])
        return merged_weight(p, l, proj);
    return proj_weight((graft_gpt2_t *)m, l, proj);
}

void peft_linear_forward(graft_peft_t *p, int l, graft_proj_t proj, float *out, const float *inp,
                         int N) {
    if (!p) return;
    const graft_peft_task_modules_t *tm = active_channels(p);
    if (proj == GRAFT_PROJ_FCPROJ && tm) {
        /* g (N,k) = fch_gelu (N,4C) @ W (4C,k) + b; out[:, S] += g */
        int in, odim;
        proj_dims(&p->trunk->cfg, proj, &in, &odim);
        int k = p->cfg.channels_k, C = p->trunk->cfg.C;
        const float *W = graft_scope_ptr(tm->scope, tm->ch_w) + (size_t)l * 4 * C * k;
        const float *b = graft_scope_ptr(tm->scope, tm->ch_b) + (size_t)l * k;
        const int32_t *S = tm->channels + (size_t)l * k;
        float *g = p->ch_gather;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, k, in, 1.0f, inp, in, W, k,
                    0.0f, g, k);
#pragma omp parallel for schedule(dynamic, 64)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < k; j++) out[(size_t)i * odim + S[j]] += g[(size_t)i * k + j] + b[j];
    }
}

/* Rows per block of LoRA's backward (see lora_backward). */
#define LORA_ROWS 128

/* A scratch block of at least n floats, kept between calls (owned by p). */
static float *lora_scratch(graft_peft_t *p, size_t n) {
    if (p->lora_scratch_n < n) {
        free(p->lora_scratch);
        p->lora_scratch = graft_xmalloc(n * sizeof(float));
        p->lora_scratch_n = n;
    }
    return p->lora_scratch;
}

/* One pair's weight gradients from the projection's input inp (N,in) and
 * output gradient dout (N,odim):
 *   u = inp A (N,r), dB += scale u^T dout, du = scale dout B^T, dA += inp^T du.
 * (The input gradient's part, du A^T, is already in dinp: the trunk's
 * backward multiplied by the merged weight.) The rank-r products are thin:
 * over the whole batch each would stream (and OpenBLAS would pack) inp or
 * dout from memory, twice each. In blocks of LORA_ROWS rows, a block of inp
 * and dout is read once and its two products reuse it from cache. Blocks go
 * to the OpenMP threads as they come free (OpenBLAS single-threaded
 * inside); each block's dA, dB parts are added up in block order, so the
 * sums do not depend on the threads. */
static void lora_backward(graft_peft_t *p, const graft_lora_t *lo, const float *inp,
                          const float *dout, int N, int in, int odim) {
    int r = lo->r, nblocks = (N + LORA_ROWS - 1) / LORA_ROWS;
    size_t per_block = (size_t)2 * LORA_ROWS * r + (size_t)in * r + (size_t)r * odim;
    float *scratch = lora_scratch(p, (size_t)nblocks * per_block);
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < nblocks; blk++) {
        float *u = scratch + (size_t)blk * per_block;
        float *du = u + (size_t)LORA_ROWS * r;
        float *dA = du + (size_t)LORA_ROWS * r, *dB = dA + (size_t)in * r;
        int i0 = blk * LORA_ROWS, n = N - i0 < LORA_ROWS ? N - i0 : LORA_ROWS;
        const float *x = inp + (size_t)i0 * in, *d = dout + (size_t)i0 * odim;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, r, in, 1.0f, x, in, lo->A, r,
                    0.0f, u, r);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, odim, n, lo->scale, u, r, d,
                    odim, 0.0f, dB, odim);
        if (!lo->dA) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, odim, lo->scale, d, odim,
                    lo->B, odim, 0.0f, du, r);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, r, n, 1.0f, x, in, du, r, 0.0f,
                    dA, r);
    }
    for (int blk = 0; blk < nblocks; blk++) {
        const float *dA = scratch + (size_t)blk * per_block + (size_t)2 * LORA_ROWS * r;
        const float *dB = dA + (size_t)in * r;
        if (lo->dA)
            for (size_t i = 0; i < (size_t)in * r; i++) lo->dA[i] += dA[i];
        for (size_t i = 0; i < (size_t)r * odim; i++) lo->dB[i] += dB[i];
    }
}

void peft_linear_backward(graft_peft_t *p, int l, graft_proj_t proj, float *dinp,
                          const float *dout, const float *inp, int N) {
    if (!p) return;
    int in, odim;
    proj_dims(&p->trunk->cfg, proj, &in, &odim);
    graft_lora_t lo;
    for (int pair = 0; pair < 2; pair++) {
        if (!lora_pair(p, l, proj, pair, &lo)) continue;
        double t0 = graft_prof_start();
        lora_backward(p, &lo, inp, dout, N, in, odim);
        graft_prof_stop("bwd.lora", t0, 4.0 * N * lo.r * (in + odim));
    }
    const graft_peft_task_modules_t *tm = active_channels(p);
    if (proj == GRAFT_PROJ_FCPROJ && tm) {
        int k = p->cfg.channels_k, C = p->trunk->cfg.C;
        const float *W = graft_scope_ptr(tm->scope, tm->ch_w) + (size_t)l * 4 * C * k;
        float *dW = graft_scope_grad(tm->scope, tm->ch_w) + (size_t)l * 4 * C * k;
        float *db = graft_scope_grad(tm->scope, tm->ch_b) + (size_t)l * k;
        const int32_t *S = tm->channels + (size_t)l * k;
        float *g = p->ch_gather; /* dout[:, S] (N,k) */
#pragma omp parallel for schedule(dynamic, 64)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < k; j++) g[(size_t)i * k + j] = dout[(size_t)i * odim + S[j]];
        colsum_accumulate(db, g, N, k);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, k, N, 1.0f, inp, in, g, k, 1.0f,
                    dW, k);
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, in, k, 1.0f, g, k, W, k, 1.0f,
                        dinp, in);
    }
}

/* ---- hooks: RED on the MLP output --------------------------------------- */

void peft_mlp_out_forward(graft_peft_t *p, int l, float *out, const float *fch_gelu, int N) {
    (void)fch_gelu;
    if (!p || p->active < 0 || p->tasks[p->active].red_s < 0) return;
    double t0 = graft_prof_start();
    const graft_peft_task_modules_t *tm = &p->tasks[p->active];
    int C = p->trunk->cfg.C;
    size_t BT = (size_t)p->B * p->T;
    const float *s = graft_scope_ptr(tm->scope, tm->red_s) + (size_t)l * C;
    const float *b = graft_scope_ptr(tm->scope, tm->red_b) + (size_t)l * C;
    float *saved = p->red_in + (size_t)l * BT * C;
    memcpy(saved, out, (size_t)N * C * sizeof(float));
#pragma omp parallel for schedule(dynamic, 64)
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) out[(size_t)i * C + c] = s[c] * out[(size_t)i * C + c] + b[c];
    graft_prof_stop("fwd.red", t0, 0);
}

const float *peft_mlp_out_backward(graft_peft_t *p, int l, float *dmm, const float *dout,
                                  int N) {
    if (!p || p->active < 0 || p->tasks[p->active].red_s < 0) return dout;
    double t0 = graft_prof_start();
    const graft_peft_task_modules_t *tm = &p->tasks[p->active];
    int C = p->trunk->cfg.C;
    size_t BT = (size_t)p->B * p->T;
    const float *s = graft_scope_ptr(tm->scope, tm->red_s) + (size_t)l * C;
    float *ds = graft_scope_grad(tm->scope, tm->red_s) + (size_t)l * C;
    float *db = graft_scope_grad(tm->scope, tm->red_b) + (size_t)l * C;
    const float *saved = p->red_in + (size_t)l * BT * C;
    colsum_product_accumulate(ds, dout, saved, N, C);
    colsum_accumulate(db, dout, N, C);
#pragma omp parallel for schedule(dynamic, 64)
    for (int i = 0; i < N; i++)
#pragma omp simd
        for (int c = 0; c < C; c++) dmm[(size_t)i * C + c] = s[c] * dout[(size_t)i * C + c];
    graft_prof_stop("bwd.red", t0, 0);
    return dmm;
}

/* ---- hooks: the residual adapter after each block ------------------------ */

typedef struct {
    const float *lnw, *lnb, *down, *downb, *up, *upb;
    float *dlnw, *dlnb, *ddown, *ddownb, *dup, *dupb;
} adapter_view_t;

static int adapter_at(const graft_peft_t *p, int l, adapter_view_t *v) {
    if (!p || p->active < 0 || p->tasks[p->active].ad_lnw < 0) return 0;
    const graft_peft_task_modules_t *tm = &p->tasks[p->active];
    const graft_scope_t *s = tm->scope;
    size_t C = p->trunk->cfg.C, m = p->cfg.adapter_dim;
    v->lnw = graft_scope_ptr(s, tm->ad_lnw) + l * C;
    v->lnb = graft_scope_ptr(s, tm->ad_lnb) + l * C;
    v->down = graft_scope_ptr(s, tm->ad_down) + l * C * m;
    v->downb = graft_scope_ptr(s, tm->ad_downb) + l * m;
    v->up = graft_scope_ptr(s, tm->ad_up) + l * m * C;
    v->upb = graft_scope_ptr(s, tm->ad_upb) + l * C;
    v->dlnw = graft_scope_grad(s, tm->ad_lnw) + l * C;
    v->dlnb = graft_scope_grad(s, tm->ad_lnb) + l * C;
    v->ddown = graft_scope_grad(s, tm->ad_down) + l * C * m;
    v->ddownb = graft_scope_grad(s, tm->ad_downb) + l * m;
    v->dup = graft_scope_grad(s, tm->ad_up) + l * m * C;
    v->dupb = graft_scope_grad(s, tm->ad_upb) + l * C;
    return 1;
}

void peft_block_out_forward(graft_peft_t *p, int l, float *h, int N) {
    adapter_view_t v;
    if (!adapter_at(p, l, &v)) return;
    double t0 = graft_prof_start();
    int C = p->trunk->cfg.C, m = p->cfg.adapter_dim;
    size_t BT = (size_t)p->B * p->T, off = (size_t)l * BT;
    float *in = p->ad_in + off * C, *ln = p->ad_ln + off * C;
    float *hh = p->ad_h + off * m, *a = p->ad_a + off * m;
    /* h <- h + relu(LN(h) @ D + d) @ U + u */
    memcpy(in, h, (size_t)N * C * sizeof(float));
    layernorm_forward(ln, p->ad_mean + off, p->ad_rstd + off, in, v.lnw, v.lnb, N, C);
    matmul_forward(hh, ln, v.down, v.downb, N, C, m);
#pragma omp parallel for simd schedule(simd : dynamic, 16384)
    for (size_t i = 0; i < (size_t)N * m; i++) a[i] = hh[i] > 0.0f ? hh[i] : 0.0f;
    matmul_forward(p->grad_scratch, a, v.up, v.upb, N, m, C);
    residual_forward(h, in, p->grad_scratch, (size_t)N * C);
    graft_prof_stop("fwd.adapter", t0, 4.0 * N * C * m);
}

void peft_block_out_backward(graft_peft_t *p, int l, float *dh, int N) {
    adapter_view_t v;
    if (!adapter_at(p, l, &v)) return;
    double t0 = graft_prof_start();
    int C = p->trunk->cfg.C, m = p->cfg.adapter_dim;
    size_t BT = (size_t)p->B * p->T, off = (size_t)l * BT;
    const float *in = p->ad_in + off * C, *ln = p->ad_ln + off * C;
    const float *hh = p->ad_h + off * m, *a = p->ad_a + off * m;
    float *da = p->grad_scratch;                   /* (N, m) */
    float *dln = p->grad_scratch + (size_t)BT * 4 * C; /* (N, C) */
    matmul_backward(da, v.dup, v.dupb, dh, a, v.up, N, m, C);
#pragma omp parallel for simd schedule(simd : dynamic, 16384)
    for (size_t i = 0; i < (size_t)N * m; i++) da[i] = hh[i] > 0.0f ? da[i] : 0.0f;
    matmul_backward(dln, v.ddown, v.ddownb, da, ln, v.down, N, C, m);
    /* dh is the gradient of the output: the identity path keeps it, the
     * adapter's path adds through its LayerNorm (dres = dinp: in place). */
    layernorm_backward(dh, v.dlnw, v.dlnb, dh, dln, in, v.lnw, p->ad_mean + off,
                       p->ad_rstd + off, N, C);
    graft_prof_stop("bwd.adapter", t0, 8.0 * N * C * m);
}

/* ---- entry points ------------------------------------------------------- */

void graft_peft_zero_grad(graft_peft_t *p, int task) {
    graft_scope_t *scopes[2];
    int n = graft_peft_scopes(p, task, scopes);
    for (int i = 0; i < n; i++) graft_scope_zero_grad(scopes[i]);
}

/* Does anything below the head train for this task? (If not, the trunk's
 * backward pass is skipped altogether: the `head` baseline.) */
static int trunk_needs_backward(const graft_peft_t *p, int task) {
    const graft_peft_task_modules_t *tm = &p->tasks[task];
    if (p->heads_only) return 0;
    return p->shared->nparams > 0 || tm->scope->nparams > (tm->head_w >= 0 ?
        tm->scope->tensors[tm->head_w].numel + tm->scope->tensors[tm->head_b].numel : 0);
}

float graft_peft_classify(graft_peft_t *p, int task, const int32_t *tokens, const int32_t *pos,
                          const int32_t *labels, int B, int T, int backward) {
    graft_gpt2_t *m = p->trunk;
    const graft_peft_task_modules_t *tm = &p->tasks[task];
    GRAFT_ASSERT(tm->num_labels > 0);
    int C = m->cfg.C, K = tm->num_labels;
    p->active = task;
    m->peft = p;
    graft_gpt2_reserve(m, B, T);
    reserve(p);
    graft_gpt2_forward(m, tokens, NULL, B, T);
    memcpy(p->pos, pos, (size_t)B * sizeof(int32_t));
    pool_forward(p->pooled, m->acts.lnf, pos, B, T, C, p->cfg.pool);
    const float *W = graft_scope_ptr(tm->scope, tm->head_w);
    const float *b = graft_scope_ptr(tm->scope, tm->head_b);
    matmul_forward(p->head_logits, p->pooled, W, b, B, C, K);
    if (backward && tm->logit_offset)
        for (int i = 0; i < B; i++)
            for (int k = 0; k < K; k++) p->head_logits[(size_t)i * K + k] += tm->logit_offset[k];
    float loss = 0.0f;
    if (labels) {
        memcpy(p->labels, labels, (size_t)B * sizeof(int32_t));
        int count = 0;
        loss = crossentropy_forward(p->head_losses, p->head_probs, p->head_logits, labels, B, K,
                                    &count);
        if (backward && count > 0) {
            crossentropy_backward(p->head_dlogits, p->head_probs, labels, B, K, 1.0f / count);
            matmul_backward(p->dpooled, graft_scope_grad(tm->scope, tm->head_w),
                            graft_scope_grad(tm->scope, tm->head_b), p->head_dlogits, p->pooled,
                            W, B, C, K);
            if (trunk_needs_backward(p, task)) {
                pool_backward(m->grads_acts.lnf, p->dpooled, pos, B, T, C, p->cfg.pool);
                graft_gpt2_backward_from_lnf(m);
            }
        }
    } else {
        softmax_rows(p->head_probs, p->head_logits, B, K);
    }
    return loss;
}

float graft_peft_lm(graft_peft_t *p, int task, const int32_t *inputs, const int32_t *targets,
                    int B, int T, int backward) {
    graft_gpt2_t *m = p->trunk;
    p->active = task;
    m->peft = p;
    graft_gpt2_reserve(m, B, T);
    reserve(p);
    float loss = graft_gpt2_forward(m, inputs, targets, B, T);
    if (backward && m->loss_count > 0) graft_gpt2_backward(m);
    return loss;
}

/* ---- two-stage channel selection ---------------------------------------- */

void graft_peft_accumulate_channel_scores(graft_peft_t *p, int task) {
    graft_peft_task_modules_t *tm = &p->tasks[task];
    GRAFT_ASSERT(tm->channel_scores);
    graft_gpt2_t *m = p->trunk;
    int C = m->cfg.C, N = m->cur_B * m->cur_T;
    size_t slab = (size_t)m->B * m->T;
    float *dot = graft_xcalloc((size_t)C, sizeof(float));
    /* h is the MLP output before RED: with RED it is saved in red_in, while
     * acts.fcproj holds s * h + b. Its gradient, after the backward pass,
     * is what peft_mlp_out_backward returned: RED's s * dL/d(output) in
     * grads_acts.fcproj, or without RED dL/d(output) itself, which is the
     * block output's gradient in grads_acts.residual3. */
    const float *h = tm->red_s >= 0 ? p->red_in : m->acts.fcproj;
    const float *dh = tm->red_s >= 0 ? m->grads_acts.fcproj : m->grads_acts.residual3;
    for (int l = 0; l < m->cfg.L; l++) {
        memset(dot, 0, (size_t)C * sizeof(float));
        colsum_product_accumulate(dot, dh + l * slab * C, h + l * slab * C, N, C);
        for (int c = 0; c < C; c++) tm->channel_scores[(size_t)l * C + c] += fabsf(dot[c]);
    }
    free(dot);
}

void graft_peft_choose_channels(graft_peft_t *p, int task) {
    graft_peft_task_modules_t *tm = &p->tasks[task];
    int C = p->trunk->cfg.C, k = p->cfg.channels_k;
    for (int l = 0; l < p->trunk->cfg.L; l++) {
        const float *score = tm->channel_scores + (size_t)l * C;
        int32_t *S = tm->channels + (size_t)l * k;
        /* Partial selection sort: k is small. Ties go to the lower index. */
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int c = 0; c < C; c++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= S[i] == c;
                if (!taken && (best < 0 || score[c] > score[best])) best = c;
            }
            S[j] = best;
        }
    }
}

void graft_peft_select_channels(graft_peft_t *p, int task) {
    graft_peft_task_modules_t *tm = &p->tasks[task];
    graft_peft_choose_channels(p, task);
    memset(graft_scope_ptr(tm->scope, tm->ch_w), 0,
           tm->scope->tensors[tm->ch_w].numel * sizeof(float));
    memset(graft_scope_ptr(tm->scope, tm->ch_b), 0,
           tm->scope->tensors[tm->ch_b].numel * sizeof(float));
}

/* ---- LoRA merge ---------------------------------------------------------- */

void graft_peft_merge_lora(graft_peft_t *p, int task, int sign) {
    int saved = p->active;
    p->active = task;
    graft_lora_t lo;
    for (int l = 0; l < p->trunk->cfg.L; l++)
        for (int proj = 0; proj < GRAFT_NUM_PROJ; proj++) {
            int in, odim;
            proj_dims(&p->trunk->cfg, proj, &in, &odim);
            for (int pair = 0; pair < 2; pair++) {
                if (!lora_pair(p, l, proj, pair, &lo)) continue;
                /* W (in,odim) += sign * scale * A (in,r) @ B (r,odim) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, odim, lo.r,
                            (float)sign * lo.scale, lo.A, lo.r, lo.B, odim, 1.0f,
                            proj_weight(p->trunk, l, proj), odim);
            }
        }
    p->active = saved;
}

int graft_peft_fold(graft_peft_t *p, int task) {
    const graft_peft_task_modules_t *tm = &p->tasks[task];
    graft_gpt2_t *m = p->trunk;
    if (tm->ad_lnw >= 0) {
        LOG_ERROR("task %s: the adapter (h + U relu(D LN(h))) does not fold into the trunk's "
                  "weights; export needs a method without it", tm->name);
        return GRAFT_EINVAL;
    }
    graft_peft_merge_lora(p, task, +1);
    size_t L = m->cfg.L, C = m->cfg.C, k = (size_t)p->cfg.channels_k;
    const graft_scope_t *s = tm->scope;
    for (size_t l = 0; l < L; l++) {
        float *W = m->params.fcprojw + l * 4 * C * C, *b = m->params.fcprojb + l * C;
        if (tm->ch_w >= 0) {
            /* W[:, S[j]] += Wk[:, j], b[S[j]] += bk[j]; Wk (4C, k) */
            const float *Wk = graft_scope_ptr(s, tm->ch_w) + l * 4 * C * k;
            const float *bk = graft_scope_ptr(s, tm->ch_b) + l * k;
            const int32_t *S = tm->channels + l * k;
            for (size_t j = 0; j < k; j++) {
                for (size_t i = 0; i < 4 * C; i++) W[i * C + S[j]] += Wk[i * k + j];
                b[S[j]] += bk[j];
            }
        }
        if (tm->red_s >= 0) {
            const float *rs = graft_scope_ptr(s, tm->red_s) + l * C;
            const float *rb = graft_scope_ptr(s, tm->red_b) + l * C;
            for (size_t i = 0; i < 4 * C; i++)
                for (size_t c = 0; c < C; c++) W[i * C + c] *= rs[c];
            for (size_t c = 0; c < C; c++) b[c] = rs[c] * b[c] + rb[c];
        }
    }
    if (tm->ln1w >= 0) {
        graft_gpt2_params_t *P = &m->params;
        memcpy(P->ln1w, graft_scope_ptr(s, tm->ln1w), L * C * sizeof(float));
        memcpy(P->ln1b, graft_scope_ptr(s, tm->ln1b), L * C * sizeof(float));
        memcpy(P->ln2w, graft_scope_ptr(s, tm->ln2w), L * C * sizeof(float));
        memcpy(P->ln2b, graft_scope_ptr(s, tm->ln2b), L * C * sizeof(float));
        memcpy(P->lnfw, graft_scope_ptr(s, tm->lnfw), C * sizeof(float));
        memcpy(P->lnfb, graft_scope_ptr(s, tm->lnfb), C * sizeof(float));
    }
    return GRAFT_OK;
}

static void freeze_a(graft_scope_t *s, const int *idx, int slots, int frozen) {
    for (int i = 0; i < slots; i++)
        if (idx[2 * i] >= 0) s->tensors[idx[2 * i]].frozen = frozen;
}

void graft_peft_set_logit_offset(graft_peft_t *p, int task, const float *offset) {
    graft_peft_task_modules_t *tm = &p->tasks[task];
    GRAFT_ASSERT(tm->num_labels > 0);
    free(tm->logit_offset);
    tm->logit_offset = NULL;
    if (!offset) return;
    tm->logit_offset = graft_xmalloc((size_t)tm->num_labels * sizeof(float));
    memcpy(tm->logit_offset, offset, (size_t)tm->num_labels * sizeof(float));
}

void graft_peft_set_head_lr_scale(graft_peft_t *p, float scale) {
    if (scale <= 0) scale = 1.0f;
    p->cfg.head_lr_scale = scale;
    for (int t = 0; t < p->n_tasks; t++) {
        graft_peft_task_modules_t *tm = &p->tasks[t];
        if (tm->head_w < 0) continue;
        tm->scope->tensors[tm->head_w].lr_scale = scale;
        tm->scope->tensors[tm->head_b].lr_scale = scale;
    }
}

void graft_peft_freeze_lora_a(graft_peft_t *p, int shared, int tasks) {
    int slots = p->trunk->cfg.L * GRAFT_NUM_PROJ;
    freeze_a(p->shared, p->shared_lora_idx, slots, shared);
    for (int t = 0; t < p->n_tasks; t++)
        freeze_a(p->tasks[t].scope, p->tasks[t].lora_idx, slots, tasks);
}
