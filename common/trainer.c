/* trainer.c — multi-task training and evaluation on one machine. */
#include "trainer.h"

#include <math.h>
#include <string.h>

#include "ops.h"
#include "profile.h"
#include "tokenizer.h"

struct graft_trainer {
    graft_run_config_t cfg;
    graft_gpt2_t *trunk;
    graft_peft_t *peft;
    int n_tasks;
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    graft_adamw_config_t opt;
    graft_rng_t rng;
    int step;      /* optimiser steps taken */
    float prox_mu; /* FedProx: > 0 adds mu/2 ||w - scope->prox_ref||^2 per scope */
    int stage;     /* two-stage channels: 1 while scoring, 2 after selection */
    /* graft_trainer_set_note: extra metadata of the checkpoints written. */
    char note_key[GRAFT_TRAINER_MAX_NOTES][64], note_value[GRAFT_TRAINER_MAX_NOTES][128];
    int n_notes;
    int B, T;
    int32_t *inputs, *targets, *pos, *labels;
    size_t *indices;
};

/* The batch sampler's PCG stream ("tran"); workers offset it by their own. */
#define SAMPLER_STREAM 0x7472616eull

int graft_run_peft_config(const graft_run_config_t *cfg, graft_peft_config_t *pc) {
    memset(pc, 0, sizeof *pc);
    int rc = graft_peft_parse_methods(cfg->method, &pc->methods);
    if (!rc) rc = graft_peft_parse_targets(cfg->lora_targets, &pc->lora_targets);
    if (rc) return rc;
    if (pc->methods & GRAFT_M_GRAFT) {
        LOG_ERROR("method graft trains no modules: it builds sparse masks from fully fine-tuned "
                  "checkpoints with `graft train --method graft --finetuned RUN` (or evaluates "
                  "them with `graft eval --method graft`) and does not combine with other "
                  "methods or run distributed");
        return GRAFT_EINVAL;
    }
    pc->lora_shared_rank = cfg->lora_shared_rank;
    pc->lora_shared_alpha = cfg->lora_shared_alpha;
    pc->lora_task_rank = cfg->lora_task_rank;
    pc->lora_task_alpha = cfg->lora_task_alpha;
    pc->adapter_dim = cfg->adapter_dim;
    pc->channels_k = cfg->channels_k;
    if (!strcmp(cfg->pool, "last")) {
        pc->pool = GRAFT_POOL_LAST;
    } else if (!strcmp(cfg->pool, "mean")) {
        pc->pool = GRAFT_POOL_MEAN;
    } else {
        LOG_ERROR("unknown --pool '%s' (last or mean)", cfg->pool);
        return GRAFT_EINVAL;
    }
    pc->head_lr_scale = cfg->head_lr > 0 && cfg->lr > 0 ? cfg->head_lr / cfg->lr : 1.0f;
    pc->seed = (uint64_t)cfg->seed;
    if ((pc->methods & GRAFT_M_LORA) && pc->lora_shared_rank == 0 && pc->lora_task_rank == 0) {
        LOG_ERROR("method lora needs --lora_shared_rank or --lora_task_rank > 0");
        return GRAFT_EINVAL;
    }
    if ((pc->methods & GRAFT_M_FULL) && pc->methods != GRAFT_M_FULL &&
        pc->methods != (GRAFT_M_FULL | GRAFT_M_HEAD)) {
        LOG_ERROR("method full trains the whole trunk and does not combine with other modules");
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

static int load_trunk(const graft_run_config_t *cfg, graft_gpt2_t **out) {
    if (*cfg->trunk) {
        int rc = graft_gpt2_load(cfg->trunk, out);
        if (rc) return rc;
        const graft_gpt2_config_t *c = &(*out)->cfg;
        LOG_INFO("trunk %s: V=%d T=%d L=%d NH=%d C=%d, %zu parameters, %s tokenizer%s%s",
                 cfg->trunk, c->V, c->T, c->L, c->NH, c->C, (*out)->num_params,
                 graft_tokenizer_kind_name(c->tokenizer), *(*out)->tok->dir ? " from " : "",
                 (*out)->tok->dir);
    } else {
        graft_gpt2_config_t mc;
        if (graft_gpt2_preset(cfg->preset, &mc)) {
            LOG_ERROR("unknown preset '%s' (tiny, small, base)", cfg->preset);
            return GRAFT_EINVAL;
        }
        LOG_WARN("no --trunk given: using a randomly initialised %s trunk", cfg->preset);
        *out = graft_gpt2_new(&mc, (uint64_t)cfg->seed);
    }
    int rc = graft_gpt2_set_precision(*out, cfg->precision);
    if (rc) graft_gpt2_destroy(out);
    return rc;
}

static int parse_optimizer(const graft_run_config_t *cfg, graft_optimizer_t *out) {
    if (!strcmp(cfg->optimizer, "adamw")) {
        *out = GRAFT_ADAMW;
    } else if (!strcmp(cfg->optimizer, "sgd")) {
        *out = GRAFT_SGD;
    } else {
        LOG_ERROR("unknown --optimizer '%s' (adamw or sgd)", cfg->optimizer);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

static int check_mix(const graft_run_config_t *cfg) {
    if (strcmp(cfg->mix, "roundrobin") != 0 && strcmp(cfg->mix, "proportional") != 0) {
        LOG_ERROR("unknown --mix '%s' (roundrobin or proportional)", cfg->mix);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* The settings that only the trunk can check: the context and the width. */
static int check_fits_trunk(const graft_run_config_t *cfg, const graft_peft_config_t *pc,
                            const graft_gpt2_t *m) {
    const char *trunk = *cfg->trunk ? cfg->trunk : cfg->preset;
    if (cfg->seq > m->cfg.T) {
        LOG_ERROR("--seq %d exceeds the context of trunk %s (T=%d tokens)", cfg->seq, trunk,
                  m->cfg.T);
        return GRAFT_EINVAL;
    }
    if ((pc->methods & GRAFT_M_CHANNELS) && pc->channels_k > m->cfg.C) {
        LOG_ERROR("--channels_k %d exceeds the width of trunk %s: a layer has C=%d MLP-output "
                  "channels to choose from", pc->channels_k, trunk, m->cfg.C);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

static int load_tasks(const graft_run_config_t *cfg, graft_task_t **tasks, int *n_tasks) {
    int n = graft_run_load_tasks(cfg->tasks, tasks, GRAFT_MAX_TASKS, 0);
    if (n < 0) return n;
    *n_tasks = n;
    return GRAFT_OK;
}

int graft_trainer_check(const graft_run_config_t *cfg) {
    graft_peft_config_t pc;
    graft_optimizer_t kind;
    int rc = graft_run_peft_config(cfg, &pc);
    if (!rc) rc = parse_optimizer(cfg, &kind);
    if (!rc) rc = check_mix(cfg);
    return rc;
}

int graft_trainer_new(const graft_run_config_t *cfg, graft_trainer_t **out) {
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    int n = 0;
    int rc = graft_trainer_check(cfg); /* before the (slow) task files */
    if (!rc) rc = load_tasks(cfg, tasks, &n);
    if (rc) return rc;
    return graft_trainer_new_with_tasks(cfg, tasks, n, out);
}

int graft_trainer_new_with_tasks(const graft_run_config_t *cfg, graft_task_t **tasks,
                                 int n_tasks, graft_trainer_t **out) {
    graft_trainer_t *tr = graft_xcalloc(1, sizeof *tr);
    tr->cfg = *cfg;
    tr->n_tasks = n_tasks;
    for (int i = 0; i < n_tasks; i++) tr->tasks[i] = tasks[i];
    graft_peft_config_t pc;
    graft_optimizer_t kind = GRAFT_ADAMW;
    int rc = graft_run_peft_config(cfg, &pc);
    if (!rc) rc = parse_optimizer(cfg, &kind);
    if (!rc) rc = check_mix(cfg);
    if (!rc) rc = load_trunk(cfg, &tr->trunk);
    if (!rc) rc = check_fits_trunk(cfg, &pc, tr->trunk);
    if (rc) {
        graft_trainer_destroy(&tr);
        return rc;
    }
    tr->T = cfg->seq > 0 ? cfg->seq : tr->trunk->cfg.T;
    tr->B = cfg->batch;
    graft_peft_task_t descs[GRAFT_MAX_TASKS];
    for (int i = 0; i < n_tasks; i++) {
        descs[i].name = graft_task_name(tasks[i]);
        descs[i].num_labels = graft_task_kind(tasks[i]) == GRAFT_TASK_CLASSIFY
                                  ? graft_task_num_labels(tasks[i]) : 0;
    }
    tr->peft = graft_peft_new(tr->trunk, &pc, descs, n_tasks);
    /* Said up front for the evaluations this process runs: not a federated
     * coordinator's under --eval_on workers (its workers evaluate). */
    int evaluates = strcmp(graft_run_eval_on(cfg), "workers") != 0;
    for (int i = 0; i < n_tasks && evaluates; i++)
        for (int split = GRAFT_SPLIT_DEV; split <= GRAFT_SPLIT_TEST; split++)
            if (graft_task_count(tasks[i], split) == 0)
                LOG_WARN("task %s has no %s rows: its %s evaluations report no metrics",
                         descs[i].name, graft_task_split_name(split),
                         graft_task_split_name(split));
    tr->opt = graft_adamw_defaults();
    tr->opt.lr = cfg->lr;
    tr->opt.warmup_steps = cfg->warmup;
    tr->opt.total_steps = cfg->steps;
    tr->opt.weight_decay = cfg->weight_decay;
    tr->opt.grad_clip = cfg->grad_clip;
    tr->opt.kind = kind;
    tr->opt.momentum = cfg->momentum;
    tr->stage = (pc.methods & GRAFT_M_CHANNELS) ? 1 : 2;
    graft_trainer_seek_sampler(tr, 0, 0);
    size_t BT = (size_t)tr->B * tr->T;
    tr->inputs = graft_xmalloc(BT * sizeof(int32_t));
    tr->targets = graft_xmalloc(BT * sizeof(int32_t));
    tr->pos = graft_xmalloc((size_t)tr->B * sizeof(int32_t));
    tr->labels = graft_xmalloc((size_t)tr->B * sizeof(int32_t));
    tr->indices = graft_xmalloc((size_t)tr->B * sizeof(size_t));
    *out = tr;
    return GRAFT_OK;
}

void graft_trainer_destroy(graft_trainer_t **self_p) {
    graft_trainer_t *tr = *self_p;
    if (!tr) return;
    graft_peft_destroy(&tr->peft);
    graft_gpt2_destroy(&tr->trunk);
    for (int i = 0; i < tr->n_tasks; i++) graft_task_destroy(&tr->tasks[i]);
    free(tr->inputs);
    free(tr->targets);
    free(tr->pos);
    free(tr->labels);
    free(tr->indices);
    free(tr);
    *self_p = NULL;
}

int graft_trainer_task_for_step(const graft_trainer_t *tr, int step) {
    if (strcmp(tr->cfg.mix, "proportional") != 0) return step % tr->n_tasks;
    /* Deterministic proportional mix: the task whose share of steps so far
     * lags its share of training examples the most (smooth weighted
     * round-robin), computed from the step number alone. */
    size_t total = 0;
    for (int t = 0; t < tr->n_tasks; t++) total += graft_task_count(tr->tasks[t], GRAFT_SPLIT_TRAIN);
    double best = -1e300;
    int pick = 0;
    for (int t = 0; t < tr->n_tasks; t++) {
        double share = (double)graft_task_count(tr->tasks[t], GRAFT_SPLIT_TRAIN) / (double)total;
        double frac = (step + 1) * share - floor(step * share);
        if (frac > best + 1e-12) {
            best = frac;
            pick = t;
        }
    }
    return pick;
}

/* ---- training ----------------------------------------------------------- */

static float forward_backward(graft_trainer_t *tr, int t, int split, int backward) {
    graft_task_t *task = tr->tasks[t];
    if (graft_task_kind(task) == GRAFT_TASK_CLASSIFY) {
        graft_task_batch(task, tr->trunk->tok, split, tr->indices, tr->B, tr->T, tr->inputs, NULL,
                         tr->pos, tr->labels);
        return graft_peft_classify(tr->peft, t, tr->inputs, tr->pos, tr->labels, tr->B, tr->T,
                                   backward);
    }
    graft_task_batch(task, tr->trunk->tok, split, tr->indices, tr->B, tr->T, tr->inputs,
                     tr->targets, NULL, NULL);
    return graft_peft_lm(tr->peft, t, tr->inputs, tr->targets, tr->B, tr->T, backward);
}

float graft_trainer_backward(graft_trainer_t *tr, int t) {
    graft_task_sample_indices(tr->tasks[t], GRAFT_SPLIT_TRAIN, &tr->rng, tr->B, tr->indices);
    graft_peft_zero_grad(tr->peft, t);
    return forward_backward(tr, t, GRAFT_SPLIT_TRAIN, 1);
}

float graft_trainer_step(graft_trainer_t *tr, int t, float lr) {
    graft_peft_t *p = tr->peft;
    float loss = graft_trainer_backward(tr, t);
    graft_peft_task_modules_t *tm = &p->tasks[t];
    if (tr->stage == 1 && tm->ch_w >= 0) {
        /* Stage 1 scores channels; their deltas are not trained yet. */
        graft_peft_accumulate_channel_scores(p, t);
        memset(graft_scope_grad(tm->scope, tm->ch_w), 0,
               tm->scope->tensors[tm->ch_w].numel * sizeof(float));
        memset(graft_scope_grad(tm->scope, tm->ch_b), 0,
               tm->scope->tensors[tm->ch_b].numel * sizeof(float));
    }
    if (lr < 0) lr = graft_lr_at(&tr->opt, tr->step);
    graft_modules_update(p, t, &tr->opt, tr->prox_mu, lr);
    tr->step++;
    return loss;
}

void graft_trainer_seek_sampler(graft_trainer_t *tr, uint64_t stream, int64_t steps) {
    uint64_t s = SAMPLER_STREAM ^ (stream * 0x9E3779B97F4A7C15ull);
    graft_rng_seed(&tr->rng, (uint64_t)tr->cfg.seed, s);
    graft_rng_advance(&tr->rng, (uint64_t)steps * (uint64_t)tr->B);
}

void graft_modules_update(graft_peft_t *p, int task, const graft_adamw_config_t *opt,
                          float prox_mu, float lr) {
    graft_scope_t *scopes[2];
    int n = graft_peft_scopes(p, task, scopes);
    for (int i = 0; i < n; i++) graft_scope_prox_grad(scopes[i], prox_mu);
    double sumsq = 0.0;
    GRAFT_PROF("opt.grad_norm", 0,
               for (int i = 0; i < n; i++) graft_scope_grad_sumsq(scopes[i], &sumsq));
    float scale = graft_clip_scale(opt, sumsq);
    GRAFT_PROF("opt.adamw", 0,
               for (int i = 0; i < n; i++) graft_scope_step(scopes[i], opt, lr, scale));
}

void graft_trainer_select_channels(graft_trainer_t *tr) {
    for (int t = 0; t < tr->n_tasks; t++)
        if (tr->peft->tasks[t].ch_w >= 0) graft_peft_select_channels(tr->peft, t);
    tr->stage = 2;
}

void graft_trainer_choose_channels(graft_trainer_t *tr) {
    for (int t = 0; t < tr->n_tasks; t++)
        if (tr->peft->tasks[t].ch_w >= 0) graft_peft_choose_channels(tr->peft, t);
    tr->stage = 2;
}

uint64_t graft_trainer_channels_digest(const graft_trainer_t *tr) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the indices, task by task */
    size_t n = (size_t)tr->trunk->cfg.L * (size_t)tr->peft->cfg.channels_k;
    for (int t = 0; t < tr->n_tasks; t++) {
        const int32_t *S = tr->peft->tasks[t].channels;
        for (size_t i = 0; S && i < n; i++) {
            h ^= (uint64_t)(uint32_t)S[i];
            h *= 1099511628211ull;
        }
    }
    return h;
}

int graft_stage1_rounds(const graft_run_config_t *cfg) {
    if (cfg->stage1_steps <= 0) return cfg->rounds / 3;
    return (cfg->stage1_steps + cfg->local_steps - 1) / cfg->local_steps;
}

/* ---- evaluation --------------------------------------------------------- */

/* The most likely next token of the tokenizer's V of a row of logits (an
 * embedding may have more rows than tokens): EOS or a token with text,
 * never BOS, SEP or PAD; EOS on a tie with it, else the lowest id. */
static int greedy_token(const graft_tokenizer_t *tok, const float *logits, int V) {
    int best = tok->eos;
    for (int v = 0; v < V; v++)
        if (logits[v] > logits[best] && !graft_tokenizer_is_special(tok, v)) best = v;
    return best;
}

/* Greedy decoding of task t's rows [0,B) from their prompts: tokens (B,T)
 * holds row b's prompt at positions [0, cur[b]). Writes each row's
 * generated bytes (up to EOS, at most gen_tokens and the context) into
 * out[b] (cap bytes). One forward pass over the prompts fills every
 * position's keys and values and gives each row's first token; then each
 * step feeds only the rows still going, one token each, through
 * graft_gpt2_decode_step (the KV cache). */
static void greedy_decode(graft_trainer_t *tr, int t, int B, const int32_t *tokens,
                          const int32_t *cur, char **out, size_t cap) {
    graft_gpt2_t *m = tr->trunk;
    const graft_tokenizer_t *tok = m->tok;
    int T = tr->T, C = m->cfg.C, V = m->cfg.V;
    float *logits = graft_xmalloc((size_t)B * V * sizeof(float));
    float *first = graft_xmalloc((size_t)B * C * sizeof(float)); /* last prompt positions */
    int32_t *seq = graft_xmalloc((size_t)B * sizeof(int32_t));  /* rows going, in order */
    int32_t *next = graft_xmalloc((size_t)B * sizeof(int32_t)); /* their new tokens */
    int32_t *at = graft_xmalloc((size_t)B * sizeof(int32_t));   /* and its positions */
    size_t *len = graft_xcalloc((size_t)B, sizeof(size_t));
    graft_peft_lm(tr->peft, t, tokens, NULL, B, T, 0);
    for (int b = 0; b < B; b++) {
        seq[b] = b;
        memcpy(first + (size_t)b * C, m->acts.lnf + ((size_t)b * T + cur[b] - 1) * C,
               (size_t)C * sizeof(float));
    }
    const float *h = first; /* (N, C): row i's final hidden state after its last token */
    int N = B;
    for (int s = 0; s < tr->cfg.gen_tokens && N > 0; s++) {
        lmhead_forward(logits, h, m->params.wte, N, C, V);
        int going = 0;
        for (int i = 0; i < N; i++) {
            int b = seq[i];
            int best = greedy_token(tok, logits + (size_t)i * V, tok->vocab);
            int p = s == 0 ? cur[b] : at[i] + 1; /* where the new token goes */
            if (best == tok->eos || p >= T) continue;
            size_t k;
            const char *bytes = graft_tokenizer_token_text(tok, best, &k);
            if (len[b] + k < cap) {
                memcpy(out[b] + len[b], bytes, k);
                len[b] += k;
            }
            if (p + 1 >= T) continue; /* the context is full */
            seq[going] = b;
            next[going] = best;
            at[going++] = p;
        }
        N = going;
        if (N > 0 && s + 1 < tr->cfg.gen_tokens) h = graft_gpt2_decode_step(m, seq, next, at, N);
    }
    for (int b = 0; b < B; b++) out[b][len[b]] = '\0';
    free(logits);
    free(first);
    free(seq);
    free(next);
    free(at);
    free(len);
}

void graft_trainer_generate(graft_trainer_t *tr, int t, const char *const *prompts,
                            const size_t *lens, size_t n, char **out, size_t cap) {
    GRAFT_ASSERT(graft_task_kind(tr->tasks[t]) == GRAFT_TASK_GENERATE);
    int room = tr->cfg.gen_tokens < tr->T - 3 ? tr->cfg.gen_tokens : tr->T - 3;
    for (size_t i = 0; i < n; i += (size_t)tr->B) {
        int rows = (size_t)tr->B < n - i ? tr->B : (int)(n - i);
        for (int b = 0; b < rows; b++)
            graft_encode_prompt_text(tr->trunk->tok, prompts[i + b], lens[i + b], tr->T, room,
                                     tr->inputs + (size_t)b * tr->T, &tr->pos[b]);
        greedy_decode(tr, t, rows, tr->inputs, tr->pos, out + i, cap);
    }
}

void graft_trainer_classify(graft_trainer_t *tr, int t, const char *const *texts,
                            const size_t *lens, size_t n, float *probs) {
    int K = graft_task_num_labels(tr->tasks[t]);
    GRAFT_ASSERT(graft_task_kind(tr->tasks[t]) == GRAFT_TASK_CLASSIFY);
    for (size_t i = 0; i < n; i += (size_t)tr->B) {
        int rows = (size_t)tr->B < n - i ? tr->B : (int)(n - i);
        for (int b = 0; b < rows; b++)
            graft_encode_classify_text(tr->trunk->tok, texts[i + b], lens[i + b], tr->T,
                                       tr->inputs + (size_t)b * tr->T, &tr->pos[b]);
        graft_peft_classify(tr->peft, t, tr->inputs, tr->pos, NULL, rows, tr->T, 0);
        memcpy(probs + i * (size_t)K, tr->peft->head_probs, (size_t)rows * K * sizeof(float));
    }
}

/* The j-th of n evaluated examples out of a split of `total`: evenly strided
 * over the whole split, so that an --eval_max subset is not just the head of
 * the file (task files are often ordered by source, hence by label). */
static size_t eval_index(size_t j, size_t n, size_t total) {
    return (size_t)((unsigned __int128)j * total / n);
}

/* The examples of part `part` of `parts` among the first n of `total`
 * (ordinals j < cap, j % parts == part), into a new array; their count in
 * *count. */
static size_t *eval_indices(size_t total, size_t cap, int part, int parts, size_t *count) {
    size_t n = cap && cap < total ? cap : total;
    size_t *idx = graft_xmalloc((n / (size_t)parts + 1) * sizeof *idx);
    size_t k = 0;
    for (size_t j = (size_t)part; j < n; j += (size_t)parts) idx[k++] = eval_index(j, n, total);
    *count = k;
    return idx;
}

/* Fills the batch with examples idx[i..i+B) (rows past n repeat the first
 * ones, so every batch is full) and returns the number of real rows. */
static int eval_batch(graft_trainer_t *tr, const size_t *idx, size_t n, size_t i) {
    for (int b = 0; b < tr->B; b++) tr->indices[b] = idx[(i + (size_t)b) % n];
    return (size_t)tr->B < n - i ? tr->B : (int)(n - i);
}

static void eval_generation(graft_trainer_t *tr, int t, int split, int part, int parts,
                            graft_eval_stats_t *s) {
    graft_task_t *task = tr->tasks[t];
    size_t total = graft_task_count(task, split), n, n_dec;
    size_t *idx = eval_indices(total, (size_t)tr->cfg.eval_max, part, parts, &n);
    for (size_t i = 0; i < n; i += (size_t)tr->B) {
        int rows = eval_batch(tr, idx, n, i);
        forward_backward(tr, t, split, 0);
        /* (B, T), 0 without a target; the activations are allocated lazily */
        const float *losses = tr->trunk->acts.losses;
        for (int b = 0; b < rows; b++)
            for (int j = 0; j < tr->T; j++)
                if (tr->targets[(size_t)b * tr->T + j] >= 0)
                    graft_lm_metrics_add(&s->loss, losses[(size_t)b * tr->T + j], 1);
    }
    s->examples = (int64_t)n;
    free(idx);

    /* Greedy decodes of the first --decode_max of the n, strided anew. */
    size_t cap = (size_t)tr->cfg.decode_max, evaluated = tr->cfg.eval_max > 0 &&
        (size_t)tr->cfg.eval_max < total ? (size_t)tr->cfg.eval_max : total;
    idx = eval_indices(total, cap && cap < evaluated ? cap : evaluated, part, parts, &n_dec);
    const char **prompts = graft_xmalloc((n_dec + 1) * sizeof(char *));
    size_t *lens = graft_xmalloc((n_dec + 1) * sizeof(size_t));
    char **outs = graft_xmalloc((n_dec + 1) * sizeof(char *));
    size_t out_cap = (size_t)tr->cfg.gen_tokens + 1;
    char *out_memory = graft_xmalloc(n_dec * out_cap + 1);
    for (size_t i = 0; i < n_dec; i++) {
        const graft_example_t *ex = graft_task_example(task, split, idx[i]);
        prompts[i] = ex->text;
        lens[i] = ex->text_len;
        outs[i] = out_memory + i * out_cap;
    }
    graft_trainer_generate(tr, t, prompts, lens, n_dec, outs, out_cap);
    for (size_t i = 0; i < n_dec; i++) {
        const graft_example_t *ex = graft_task_example(task, split, idx[i]);
        graft_chrf_add(&s->chrf, outs[i], strlen(outs[i]), ex->label, ex->label_len);
    }
    if (n_dec > 0) {
        const graft_example_t *ex = graft_task_example(task, split, idx[0]);
        graft_text_printable(s->sample_prompt, GRAFT_SAMPLE_LEN, prompts[0], lens[0]);
        graft_text_printable(s->sample_output, GRAFT_SAMPLE_LEN, outs[0], strlen(outs[0]));
        graft_text_printable(s->sample_reference, GRAFT_SAMPLE_LEN, ex->label, ex->label_len);
    }
    s->decoded = (int64_t)n_dec;
    free(idx);
    free(prompts);
    free(lens);
    free(outs);
    free(out_memory);
}

static void eval_classification(graft_trainer_t *tr, int t, int split, int part, int parts,
                                graft_eval_stats_t *s) {
    int K = graft_task_num_labels(tr->tasks[t]);
    size_t n;
    size_t *idx = eval_indices(graft_task_count(tr->tasks[t], split), (size_t)tr->cfg.eval_max,
                               part, parts, &n);
    for (size_t i = 0; i < n; i += (size_t)tr->B) {
        int rows = eval_batch(tr, idx, n, i);
        forward_backward(tr, t, split, 0);
        for (int b = 0; b < rows; b++) {
            const float *probs = tr->peft->head_probs + (size_t)b * K;
            graft_cls_metrics_add(&s->cls, probs, tr->labels[b]);
            graft_lm_metrics_add(&s->loss, -log(fmax(probs[tr->labels[b]], 1e-30)), 1);
        }
    }
    s->examples = (int64_t)n;
    free(idx);
}

void graft_eval_stats_init(graft_eval_stats_t *s, int t, int split, graft_task_kind_t kind,
                           int num_labels) {
    memset(s, 0, sizeof *s);
    s->task = t;
    s->split = split;
    s->kind = kind;
    graft_lm_metrics_init(&s->loss);
    graft_chrf_init(&s->chrf);
    if (kind == GRAFT_TASK_CLASSIFY) graft_cls_metrics_init(&s->cls, num_labels);
}

void graft_eval_stats_free(graft_eval_stats_t *s) {
    if (s->kind == GRAFT_TASK_CLASSIFY) graft_cls_metrics_free(&s->cls);
    memset(s, 0, sizeof *s);
}

void graft_eval_stats_merge(graft_eval_stats_t *dst, const graft_eval_stats_t *src) {
    GRAFT_ASSERT(dst->kind == src->kind && dst->task == src->task && dst->split == src->split);
    dst->examples += src->examples;
    graft_lm_metrics_merge(&dst->loss, &src->loss);
    if (dst->kind == GRAFT_TASK_CLASSIFY) graft_cls_metrics_merge(&dst->cls, &src->cls);
    graft_chrf_merge(&dst->chrf, &src->chrf);
    if (dst->decoded == 0 && src->decoded > 0) {
        memcpy(dst->sample_prompt, src->sample_prompt, GRAFT_SAMPLE_LEN);
        memcpy(dst->sample_output, src->sample_output, GRAFT_SAMPLE_LEN);
        memcpy(dst->sample_reference, src->sample_reference, GRAFT_SAMPLE_LEN);
    }
    dst->decoded += src->decoded;
}

void graft_eval_stats_finish(const graft_eval_stats_t *s, graft_eval_result_t *r) {
    memset(r, 0, sizeof *r);
    r->task = s->task;
    r->split = s->split;
    r->kind = s->kind;
    r->examples = s->examples;
    if (s->examples == 0) return;
    r->loss = graft_lm_metrics_loss(&s->loss);
    if (s->kind == GRAFT_TASK_CLASSIFY) {
        graft_cls_metrics_finish(&s->cls, &r->cls);
        return;
    }
    r->perplexity = graft_lm_metrics_perplexity(&s->loss);
    r->chrf = graft_chrf_score(&s->chrf);
    r->chrf_examples = s->decoded;
    memcpy(r->sample_prompt, s->sample_prompt, GRAFT_SAMPLE_LEN);
    memcpy(r->sample_output, s->sample_output, GRAFT_SAMPLE_LEN);
    memcpy(r->sample_reference, s->sample_reference, GRAFT_SAMPLE_LEN);
}

void graft_trainer_eval_stats(graft_trainer_t *tr, int t, int split, int part, int parts,
                              graft_eval_stats_t *s) {
    GRAFT_ASSERT(parts >= 1 && part >= 0 && part < parts);
    graft_task_t *task = tr->tasks[t];
    graft_eval_stats_init(s, t, split, graft_task_kind(task), graft_task_num_labels(task));
    if (s->kind == GRAFT_TASK_CLASSIFY) eval_classification(tr, t, split, part, parts, s);
    else eval_generation(tr, t, split, part, parts, s);
}

void graft_trainer_evaluate(graft_trainer_t *tr, int t, int split, graft_eval_result_t *res) {
    graft_eval_stats_t s;
    graft_trainer_eval_stats(tr, t, split, 0, 1, &s);
    graft_eval_stats_finish(&s, res);
    graft_eval_stats_free(&s);
}

void graft_trainer_set_eval_sizes(graft_trainer_t *tr, int eval_max, int decode_max,
                                  int gen_tokens) {
    GRAFT_ASSERT(eval_max >= 0 && decode_max >= 0 && gen_tokens > 0);
    tr->cfg.eval_max = eval_max;
    tr->cfg.decode_max = decode_max;
    tr->cfg.gen_tokens = gen_tokens;
}

void graft_eval_format(const graft_trainer_t *tr, const graft_eval_result_t *r, char *buf,
                       size_t n) {
    const char *name = graft_task_name(tr->tasks[r->task]);
    if (r->examples == 0)
        snprintf(buf, n, "%-20s %-5s n=0     empty split: no metrics", name,
                 graft_task_split_name(r->split));
    else if (r->kind == GRAFT_TASK_CLASSIFY)
        snprintf(buf, n, "%-20s %-5s n=%-5lld acc %.4f  macro-F1 %.4f  ECE %.4f  loss %.4f",
                 name, graft_task_split_name(r->split), (long long)r->examples, r->cls.accuracy,
                 r->cls.macro_f1, r->cls.ece, r->loss);
    else
        snprintf(buf, n, "%-20s %-5s n=%-5lld chrF %.2f (n=%lld)  loss %.4f  ppl %.2f", name,
                 graft_task_split_name(r->split), (long long)r->examples, r->chrf,
                 (long long)r->chrf_examples, r->loss, r->perplexity);
}

void graft_eval_log_sample(const graft_trainer_t *tr, const graft_eval_result_t *r) {
    if (r->kind != GRAFT_TASK_GENERATE || r->chrf_examples == 0) return;
    LOG_INFO("  %s %s sample: %s -> %s  (reference: %s)", graft_task_name(tr->tasks[r->task]),
             graft_task_split_name(r->split), r->sample_prompt, r->sample_output,
             r->sample_reference);
}

/* A metric of r, or null when r's split is empty (no number to report). */
static json_t *metric_json(const graft_eval_result_t *r, double v) {
    return r->examples > 0 ? json_real(v) : json_null();
}

json_t *graft_eval_json(const graft_trainer_t *tr, const graft_eval_result_t *r) {
    json_t *o = json_pack("{s:s, s:s, s:I, s:o}", "task", graft_task_name(tr->tasks[r->task]),
                          "split", graft_task_split_name(r->split), "examples",
                          (json_int_t)r->examples, "loss", metric_json(r, r->loss));
    if (r->kind == GRAFT_TASK_CLASSIFY) {
        json_object_set_new(o, "accuracy", metric_json(r, r->cls.accuracy));
        json_object_set_new(o, "macro_f1", metric_json(r, r->cls.macro_f1));
        json_object_set_new(o, "ece", metric_json(r, r->cls.ece));
    } else {
        /* no decodes (a worker's part under a small --decode_max): no chrF */
        json_object_set_new(o, "chrf", r->chrf_examples > 0 ? json_real(r->chrf) : json_null());
        json_object_set_new(o, "chrf_examples", json_integer((json_int_t)r->chrf_examples));
        if (r->chrf_examples > 0)
            json_object_set_new(o, "sample",
                                json_pack("{s:s, s:s, s:s}", "prompt", r->sample_prompt, "output",
                                          r->sample_output, "reference", r->sample_reference));
        json_object_set_new(o, "perplexity", metric_json(r, r->perplexity));
    }
    return o;
}

/* ---- checkpoints -------------------------------------------------------- */

/* All scopes of the run: shared first, then each task's. */
static int all_scopes(const graft_trainer_t *tr, graft_scope_t **out) {
    int n = 0;
    out[n++] = tr->peft->shared;
    for (int t = 0; t < tr->n_tasks; t++) out[n++] = tr->peft->tasks[t].scope;
    return n;
}

int graft_trainer_save(graft_trainer_t *tr, const char *path) {
    return graft_trainer_save_moments(tr, path, 2);
}

int graft_trainer_save_moments(graft_trainer_t *tr, const char *path, int n_moments) {
    GRAFT_ASSERT(n_moments >= 0 && n_moments <= 2);
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    int ns = all_scopes(tr, scopes);
    int total = 0;
    for (int i = 0; i < ns; i++) total += scopes[i]->n_tensors + n_moments;
    total += tr->n_tasks; /* channel indices */
    graft_st_tensor_t *ts = graft_xcalloc((size_t)total, sizeof *ts);
    char *names = graft_xcalloc((size_t)total, 2 * GRAFT_SCOPE_NAME);
    float **tmp = graft_xcalloc((size_t)tr->n_tasks, sizeof(float *));
    int k = 0;
    for (int i = 0; i < ns; i++) {
        graft_scope_t *s = scopes[i];
        if (s->numel == 0) continue;
        k += graft_scope_st_entries(s, ts + k, names + (size_t)k * 2 * GRAFT_SCOPE_NAME);
        for (int j = 0; j < n_moments; j++) {
            char *nm = names + (size_t)k * 2 * GRAFT_SCOPE_NAME;
            snprintf(nm, 2 * GRAFT_SCOPE_NAME, "optimizer.%s.%s", s->name, j ? "v" : "m");
            /* The moments of the parameters (statistics have none). */
            ts[k] = (graft_st_tensor_t){.name = nm, .ndim = 1, .shape = {(int64_t)s->nparams},
                                        .data = s->state + (size_t)j * s->numel};
            k++;
        }
    }
    int L = tr->trunk->cfg.L, kc = tr->cfg.channels_k;
    for (int t = 0; t < tr->n_tasks; t++) {
        const graft_peft_task_modules_t *tm = &tr->peft->tasks[t];
        if (!tm->channels) continue;
        tmp[t] = graft_xmalloc((size_t)L * kc * sizeof(float));
        for (int i = 0; i < L * kc; i++) tmp[t][i] = (float)tm->channels[i];
        char *nm = names + (size_t)k * 2 * GRAFT_SCOPE_NAME;
        snprintf(nm, 2 * GRAFT_SCOPE_NAME, "%s.channels.index", tm->scope->name);
        ts[k++] = (graft_st_tensor_t){.name = nm, .ndim = 2, .shape = {L, kc}, .data = tmp[t]};
    }
    enum { PROGRESS = 5, NOTES = GRAFT_TRAINER_MAX_NOTES };
    char progress[PROGRESS - 1][32], keys[GRAFT_MAX_SHARED_SETTINGS][64];
    snprintf(progress[0], 32, "%d", tr->step);
    snprintf(progress[1], 32, "%d", tr->stage);
    snprintf(progress[2], 32, "%llu", (unsigned long long)tr->rng.state);
    snprintf(progress[3], 32, "%llu", (unsigned long long)tr->rng.inc);
    const char *mk[PROGRESS + NOTES + GRAFT_MAX_SHARED_SETTINGS] = {
        "train.step", "train.stage", "train.rng_state", "train.rng_inc", "format"};
    const char *mv[PROGRESS + NOTES + GRAFT_MAX_SHARED_SETTINGS] = {
        progress[0], progress[1], progress[2], progress[3], "graft-modules"};
    int nm = PROGRESS;
    for (int i = 0; i < tr->n_notes; i++, nm++) {
        mk[nm] = tr->note_key[i];
        mv[nm] = tr->note_value[i];
    }
    /* The settings that shape the modules, with the optimizer whose state
     * the checkpoint holds. */
    graft_setting_t set[GRAFT_MAX_SHARED_SETTINGS];
    int nset = graft_run_module_settings(&tr->cfg, 1, set);
    for (int i = 0; i < nset; i++, nm++) {
        snprintf(keys[i], sizeof keys[i], "train.%s", set[i].name);
        mk[nm] = keys[i];
        mv[nm] = set[i].value;
    }
    int rc = graft_mkdirs_for(path);
    if (!rc) rc = graft_st_write(path, ts, k, mk, mv, nm);
    for (int t = 0; t < tr->n_tasks; t++) free(tmp[t]);
    free(tmp);
    free(names);
    free(ts);
    return rc;
}

static int meta_u64(const graft_st_file_t *f, const char *key, unsigned long long *out) {
    const char *v = graft_st_meta(f, key);
    char *end;
    if (v && *v) {
        *out = strtoull(v, &end, 10);
        if (!*end) return GRAFT_OK;
    }
    LOG_ERROR("%s: metadata '%s' missing or not a number", graft_st_path(f), key);
    return GRAFT_EFORMAT;
}

/* Refuses modules trained with other settings than this run's (a setting
 * the checkpoint does not record, from an older graft, is not checked;
 * the method always is). Older checkpoints recorded the values as given
 * (--method red,lora, alphas with %g): each is read back into its
 * canonical form before the comparison. */
static int check_settings(const graft_trainer_t *tr, const graft_st_file_t *f, int optimizer) {
    graft_setting_t set[GRAFT_MAX_SHARED_SETTINGS];
    int n = graft_run_module_settings(&tr->cfg, optimizer, set);
    char key[80], where[GRAFT_OPT_STR + 96], canon[GRAFT_OPT_STR];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "train.%s", set[i].name);
        const char *stored = graft_st_meta(f, key);
        if (!stored && strcmp(set[i].name, "method") != 0) continue;
        snprintf(where, sizeof where, "%s: metadata %s", graft_st_path(f), key);
        if (!stored || graft_run_setting_canonical(&tr->cfg, set[i].name, stored, canon,
                                                   sizeof canon, where) != GRAFT_OK ||
            strcmp(canon, set[i].value) != 0) {
            LOG_ERROR("%s: the modules were trained with --%s %s, this run gives --%s %s (give "
                      "the value they were trained with)", graft_st_path(f), set[i].name,
                      stored ? stored : "(not recorded)", set[i].name, set[i].value);
            return GRAFT_EINVAL;
        }
    }
    return GRAFT_OK;
}

/* Reads task tm's channel indices (L, k) from tensor `name` of f: each a
 * channel 0..C-1, none twice in a layer. */
static int read_channels(const graft_trainer_t *tr, const graft_st_file_t *f, const char *name,
                         graft_peft_task_modules_t *tm) {
    int L = tr->trunk->cfg.L, C = tr->trunk->cfg.C, k = tr->peft->cfg.channels_k;
    int64_t shape[2] = {L, k};
    float *idx = graft_xmalloc((size_t)L * k * sizeof(float));
    int rc = graft_st_read(f, name, shape, 2, idx);
    for (int i = 0; i < L * k && !rc; i++) {
        int l = i / k, dup = 0;
        for (int j = l * k; j < i; j++) dup |= idx[j] == idx[i];
        if (!(idx[i] >= 0 && idx[i] < C && idx[i] == floorf(idx[i]))) {
            LOG_ERROR("%s: tensor '%s' holds channel %g at layer %d; this trunk's are 0 to %d",
                      graft_st_path(f), name, (double)idx[i], l, C - 1);
            rc = GRAFT_EFORMAT;
        } else if (dup) {
            LOG_ERROR("%s: tensor '%s' holds channel %g twice at layer %d", graft_st_path(f),
                      name, (double)idx[i], l);
            rc = GRAFT_EFORMAT;
        }
        tm->channels[i] = (int32_t)idx[i];
    }
    free(idx);
    return rc;
}

static int load_modules(graft_trainer_t *tr, const char *path, int resume) {
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    rc = graft_st_expect_format(f, "graft-modules");
    const char *format = graft_st_meta(f, "format");
    if (rc && format && !strcmp(format, "graft-mask"))
        LOG_ERROR("a mask goes with --method graft (this run's method is %s)", tr->cfg.method);
    if (!rc) rc = check_settings(tr, f, resume);
    /* Fine to resume the personalised run itself; not to use its task
     * scopes as trained ones. */
    if (!rc && graft_st_meta(f, "personal.tasks") && !(resume && tr->cfg.personalize))
        LOG_WARN("%s is the coordinator's checkpoint of a personalised run (--personalize): its "
                 "task modules are not the trained ones (their initial values, or the cohorts' "
                 "averages before --personal_from); each worker's own are in the file of its "
                 "--save (graft run: OUT/workers/NAME.safetensors)", path);
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    int ns = all_scopes(tr, scopes);
    char nm[2 * GRAFT_SCOPE_NAME];
    for (int i = 0; i < ns && !rc; i++) {
        graft_scope_t *s = scopes[i];
        if (s->numel == 0) continue;
        rc = graft_scope_st_read(s, f);
        int64_t n = (int64_t)s->nparams;
        for (int j = 0; j < 2 && !rc; j++) {
            snprintf(nm, sizeof nm, "optimizer.%s.%s", s->name, j ? "v" : "m");
            if (graft_st_has(f, nm))
                rc = graft_st_read(f, nm, &n, 1, s->state + (size_t)j * s->numel);
        }
    }
    for (int t = 0; t < tr->n_tasks && !rc; t++) {
        graft_peft_task_modules_t *tm = &tr->peft->tasks[t];
        if (!tm->channels) continue;
        snprintf(nm, sizeof nm, "%s.channels.index", tm->scope->name);
        rc = read_channels(tr, f, nm, tm);
    }
    unsigned long long step = 0, stage = 2, rs = 0, ri = 0;
    if (!rc) rc = meta_u64(f, "train.step", &step);
    if (!rc) rc = meta_u64(f, "train.stage", &stage);
    if (!rc) rc = meta_u64(f, "train.rng_state", &rs);
    if (!rc) rc = meta_u64(f, "train.rng_inc", &ri);
    if (!rc) {
        tr->step = (int)step;
        tr->stage = (int)stage;
        tr->rng.state = rs;
        tr->rng.inc = ri;
        /* Scope step counters drive AdamW bias correction: each scope was
         * stepped once per step of its tasks; recount them. */
        for (int i = 0; i < ns; i++) scopes[i]->step = 0;
        for (int s = 0; s < tr->step; s++) {
            int t = graft_trainer_task_for_step(tr, s);
            tr->peft->shared->step++;
            tr->peft->tasks[t].scope->step++;
        }
    }
    graft_st_close(&f);
    return rc;
}

int graft_trainer_load(graft_trainer_t *tr, const char *path) {
    return load_modules(tr, path, 0);
}

int graft_trainer_resume(graft_trainer_t *tr, const char *path) {
    return load_modules(tr, path, 1);
}

json_t *graft_trainer_params_json(const graft_trainer_t *tr) {
    const graft_peft_t *p = tr->peft;
    json_t *own = json_object(), *per_task = json_object();
    for (int t = 0; t < p->n_tasks; t++) {
        json_object_set_new(own, p->tasks[t].name,
                            json_integer((json_int_t)p->tasks[t].scope->nparams));
        json_object_set_new(per_task, p->tasks[t].name,
                            json_integer((json_int_t)graft_peft_task_params(p, t)));
    }
    return json_pack("{s:I, s:I, s:o, s:o}", "trunk", (json_int_t)tr->trunk->num_params, "shared",
                     (json_int_t)p->shared->nparams, "tasks", own, "per_task", per_task);
}

/* ---- accessors --------------------------------------------------------------- */

const graft_run_config_t *graft_trainer_config(const graft_trainer_t *tr) {
    return &tr->cfg;
}

graft_gpt2_t *graft_trainer_trunk(const graft_trainer_t *tr) {
    return tr->trunk;
}

graft_peft_t *graft_trainer_peft(const graft_trainer_t *tr) {
    return tr->peft;
}

void graft_trainer_set_note(graft_trainer_t *tr, const char *key, const char *value) {
    int i = 0;
    while (i < tr->n_notes && strcmp(tr->note_key[i], key)) i++;
    GRAFT_ASSERT(i < GRAFT_TRAINER_MAX_NOTES && strlen(key) < sizeof tr->note_key[i] &&
                 strlen(value) < sizeof tr->note_value[i]);
    if (i == tr->n_notes) tr->n_notes++;
    snprintf(tr->note_key[i], sizeof tr->note_key[i], "%s", key);
    snprintf(tr->note_value[i], sizeof tr->note_value[i], "%s", value);
}

int graft_trainer_n_tasks(const graft_trainer_t *tr) {
    return tr->n_tasks;
}

int graft_trainer_task_index(const graft_trainer_t *tr, const char *name) {
    for (int t = 0; t < tr->n_tasks; t++)
        if (!strcmp(graft_task_name(tr->tasks[t]), name)) return t;
    return -1;
}

graft_task_t *graft_trainer_task(const graft_trainer_t *tr, int t) {
    GRAFT_ASSERT(t >= 0 && t < tr->n_tasks);
    return tr->tasks[t];
}

graft_task_t **graft_trainer_tasks(graft_trainer_t *tr) {
    return tr->tasks;
}

graft_scope_t *graft_trainer_shared_scope(const graft_trainer_t *tr) {
    return graft_peft_shared(tr->peft);
}

graft_scope_t *graft_trainer_task_scope(const graft_trainer_t *tr, int t) {
    return graft_peft_task_scope(tr->peft, t);
}

void graft_trainer_batch_shape(const graft_trainer_t *tr, int *B, int *T) {
    *B = tr->B;
    *T = tr->T;
}

int graft_trainer_steps_done(const graft_trainer_t *tr) {
    return tr->step;
}

void graft_trainer_set_steps_done(graft_trainer_t *tr, int steps) {
    tr->step = steps;
}

int graft_trainer_stage(const graft_trainer_t *tr) {
    return tr->stage;
}

void graft_trainer_restart_stage1(graft_trainer_t *tr) {
    if (tr->peft->cfg.methods & GRAFT_M_CHANNELS) tr->stage = 1;
}

const graft_adamw_config_t *graft_trainer_optimizer(const graft_trainer_t *tr) {
    return &tr->opt;
}

void graft_trainer_set_schedule(graft_trainer_t *tr, int total_steps) {
    tr->opt.total_steps = total_steps;
}

float graft_trainer_lr_at(const graft_trainer_t *tr, int step) {
    return graft_lr_at(&tr->opt, step);
}

void graft_trainer_set_prox_mu(graft_trainer_t *tr, float mu) {
    tr->prox_mu = mu;
}
