/* pretrain.c — the pretraining loop (see pretrain.h). */
#include "pretrain.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "adamw.h"
#include "corpus.h"
#include "gpt2.h"
#include "rng.h"
#include "shared_options.h"

#define OFF(field) offsetof(graft_pretrain_config_t, field)
const graft_option_t graft_pretrain_options[] = {
    GRAFT_OPT_PRESET(OFF(preset)),
    {"data", GRAFT_OPT_STRING, OFF(data), "data/corpus", 0, -1, "text file or directory to train on"},
    {"out", GRAFT_OPT_STRING, OFF(out), "runs/pretrain/trunk.safetensors", 0, -1,
     "checkpoint to write (atomically, every --checkpoint_every steps and at the end)"},
    GRAFT_OPT_RESUME(OFF(resume)),
    {"init", GRAFT_OPT_STRING, OFF(init), "", 0, -1,
     "start from these weights instead of random (and use their tokenizer)"},
    GRAFT_OPT_VOCAB(OFF(vocab)),
    GRAFT_OPT_STEPS(OFF(steps), "2000"),
    GRAFT_OPT_BATCH(OFF(batch)),
    GRAFT_OPT_SEQ(OFF(seq)),
    GRAFT_OPT_LR(OFF(lr), "1e-3"),
    {"min_lr_frac", GRAFT_OPT_FLOAT, OFF(min_lr_frac), "0.1", 0, 1, "cosine floor as a fraction of lr"},
    GRAFT_OPT_WARMUP(OFF(warmup), "100"),
    GRAFT_OPT_WEIGHT_DECAY(OFF(weight_decay), "0.1"),
    GRAFT_OPT_GRAD_CLIP(OFF(grad_clip)),
    GRAFT_OPT_SEED(OFF(seed), "1337"),
    GRAFT_OPT_THREADS(OFF(threads)),
    GRAFT_OPT_PRECISION(OFF(precision)),
    {"heldout", GRAFT_OPT_FLOAT, OFF(heldout), "0.05", 0.001, 0.5, "fraction of the corpus held out"},
    GRAFT_OPT_EVAL_EVERY(OFF(eval_every), "250"),
    {"eval_batches", GRAFT_OPT_INT, OFF(eval_batches), "16", 1, 1e6, "held-out batches per evaluation"},
    GRAFT_OPT_CHECKPOINT_EVERY(OFF(checkpoint_every), "500"),
    GRAFT_OPT_LOG_EVERY(OFF(log_every), "10"),
    GRAFT_OPT_LOG_LEVEL(OFF(log_level)),
    {"stop_after", GRAFT_OPT_INT, OFF(stop_after), "0", 0, 1e9,
     "stop after N steps without a final checkpoint, as if killed (for resume tests)"},
    GRAFT_OPT_END,
};
#undef OFF

typedef struct {
    const graft_pretrain_config_t *cfg;
    graft_gpt2_t *model;
    graft_corpus_t *corpus;
    graft_adamw_config_t opt;
    float *opt_state; /* m then v, 2 * num_params */
    graft_gpt2_tensor_t *named;
    int n_named;
    graft_rng_t rng;
    int step;
    int B, T;
    int32_t *inputs, *targets;
} trainer_t;

static float evaluate(trainer_t *tr) {
    size_t avail = graft_corpus_eval_batches(tr->corpus, tr->B, tr->T);
    size_t n = (size_t)tr->cfg->eval_batches < avail ? (size_t)tr->cfg->eval_batches : avail;
    if (n == 0) return NAN;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        graft_corpus_eval_batch(tr->corpus, i, tr->B, tr->T, tr->inputs, tr->targets);
        total += graft_gpt2_forward(tr->model, tr->inputs, tr->targets, tr->B, tr->T);
    }
    return (float)(total / n);
}

static float train_step(trainer_t *tr) {
    graft_gpt2_t *m = tr->model;
    graft_corpus_sample(tr->corpus, &tr->rng, tr->B, tr->T, tr->inputs, tr->targets);
    float loss = graft_gpt2_forward(m, tr->inputs, tr->targets, tr->B, tr->T);
    graft_gpt2_zero_grad(m);
    graft_gpt2_backward(m);
    double sumsq = 0.0;
    graft_grad_sumsq(m->grads_memory, m->num_params, &sumsq);
    float scale = graft_clip_scale(&tr->opt, sumsq);
    float lr = graft_lr_at(&tr->opt, tr->step);
    size_t n = m->num_params;
    /* One update per named tensor: decay applies to matrices only. The
     * state block mirrors the parameter block (m at +0, v at +n). */
    for (int i = 0; i < tr->n_named; i++) {
        const graft_gpt2_tensor_t *t = &tr->named[i];
        graft_adamw_update(&tr->opt, m->params_memory + t->offset,
                                 m->grads_memory + t->offset, tr->opt_state + t->offset,
                                 tr->opt_state + n + t->offset, t->numel, lr, tr->step + 1, scale,
                                 t->decay);
    }
    tr->step++;
    return loss;
}

static int save_checkpoint(trainer_t *tr, const char *path) {
    size_t n = tr->model->num_params;
    graft_st_tensor_t extra[2] = {
        {.name = "optimizer.m", .ndim = 1, .shape = {(int64_t)n}, .data = tr->opt_state},
        {.name = "optimizer.v", .ndim = 1, .shape = {(int64_t)n}, .data = tr->opt_state + n},
    };
    char step[32], state[32], inc[32], seed[32];
    snprintf(step, sizeof step, "%d", tr->step);
    snprintf(state, sizeof state, "%llu", (unsigned long long)tr->rng.state);
    snprintf(inc, sizeof inc, "%llu", (unsigned long long)tr->rng.inc);
    snprintf(seed, sizeof seed, "%d", tr->cfg->seed);
    const char *keys[] = {"train.step", "train.rng_state", "train.rng_inc", "train.seed"};
    const char *vals[] = {step, state, inc, seed};
    int rc = graft_mkdirs_for(path);
    if (rc == GRAFT_OK) rc = graft_gpt2_save(tr->model, path, extra, 2, keys, vals, 4);
    if (rc == GRAFT_OK) { /* a GPT-2 tokenizer's files go beside the checkpoint */
        char dir[4096];
        graft_path_dir(path, dir, sizeof dir);
        rc = graft_tokenizer_save_files(tr->model->tok, dir);
    }
    if (rc == GRAFT_OK) LOG_INFO("checkpoint: step %d -> %s", tr->step, path);
    return rc;
}

static int parse_u64(const graft_st_file_t *f, const char *key, unsigned long long *out) {
    const char *v = graft_st_meta(f, key);
    char *end;
    if (!v || !*v) goto bad;
    *out = strtoull(v, &end, 10);
    if (*end) goto bad;
    return GRAFT_OK;
bad:
    LOG_ERROR("%s: cannot resume: metadata '%s' missing or not a number", graft_st_path(f), key);
    return GRAFT_EFORMAT;
}

/* Restores weights, optimiser state, step and sampler RNG from a checkpoint. */
static int resume_from(trainer_t *tr, const char *path) {
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    graft_gpt2_config_t cfg;
    unsigned long long step = 0, state = 0, inc = 0;
    rc = graft_gpt2_read_config(f, &cfg);
    if (!rc && memcmp(&cfg, &tr->model->cfg, sizeof cfg) != 0) {
        LOG_ERROR("%s: checkpoint model config differs from --preset %s", path, tr->cfg->preset);
        rc = GRAFT_ESHAPE;
    }
    if (!rc) rc = graft_gpt2_read_weights(tr->model, f);
    int64_t n = (int64_t)tr->model->num_params;
    if (!rc) rc = graft_st_read(f, "optimizer.m", &n, 1, tr->opt_state);
    if (!rc) rc = graft_st_read(f, "optimizer.v", &n, 1, tr->opt_state + n);
    if (!rc) rc = parse_u64(f, "train.step", &step);
    if (!rc) rc = parse_u64(f, "train.rng_state", &state);
    if (!rc) rc = parse_u64(f, "train.rng_inc", &inc);
    if (!rc) {
        tr->step = (int)step;
        tr->rng.state = state;
        tr->rng.inc = inc;
        LOG_INFO("resumed from %s at step %d", path, tr->step);
    }
    graft_st_close(&f);
    return rc;
}

static void format_eta(char *buf, size_t n, double seconds) {
    int s = (int)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%dh%02dm", s / 3600, s / 60 % 60);
    else
        snprintf(buf, n, "%dm%02ds", s / 60, s % 60);
}

/* A train window needs T+1 tokens and an evaluation one batch of B windows
 * plus one target token; a smaller corpus would trip the sampler's assert or
 * evaluate nothing (a NaN loss), so it is refused before anything is written. */
static int check_corpus_size(const trainer_t *tr) {
    const graft_pretrain_config_t *cfg = tr->cfg;
    size_t n_train = graft_corpus_size(tr->corpus, GRAFT_CORPUS_TRAIN);
    size_t n_heldout = graft_corpus_size(tr->corpus, GRAFT_CORPUS_HELDOUT);
    size_t need_train = (size_t)tr->T + 1, need_heldout = (size_t)tr->B * tr->T + 1;
    if (n_train >= need_train && n_heldout >= need_heldout) return GRAFT_OK;
    double frac = (double)cfg->heldout;
    size_t need = (size_t)ceil((double)need_heldout / frac);
    while ((size_t)((double)need * frac) < need_heldout) need++;
    if (need < need_train + need_heldout) need = need_train + need_heldout;
    LOG_ERROR("corpus too small for --seq/--heldout: %s has %zu tokens (%zu train, %zu held out); "
              "--seq %d, --batch %d and --heldout %g need at least %zu train tokens and %zu "
              "held out (one evaluation batch), i.e. a corpus of at least %zu tokens (bytes, "
              "with the byte tokenizer): give more text, lower --seq or --batch, or raise "
              "--heldout",
              cfg->data, n_train + n_heldout, n_train, n_heldout, tr->T, tr->B, frac, need_train,
              need_heldout, need);
    return GRAFT_EINVAL;
}

static int setup(trainer_t *tr, const graft_pretrain_config_t *cfg) {
    graft_gpt2_config_t mc;
    if (graft_gpt2_preset(cfg->preset, &mc)) {
        LOG_ERROR("unknown preset '%s' (tiny, small, base)", cfg->preset);
        return GRAFT_EINVAL;
    }
    tr->cfg = cfg;
    tr->B = cfg->batch;
    tr->T = cfg->seq > 0 ? cfg->seq : mc.T;
    if (tr->T > mc.T) {
        LOG_ERROR("--seq %d exceeds the %s preset's context of %d", tr->T, cfg->preset, mc.T);
        return GRAFT_EINVAL;
    }
    int rc;
    if (*cfg->init && *cfg->vocab) {
        LOG_ERROR("--init brings its own tokenizer: drop --vocab");
        return GRAFT_EINVAL;
    }
    if (*cfg->init) {
        rc = graft_gpt2_load(cfg->init, &tr->model);
        if (rc) return rc;
    } else if (*cfg->vocab) {
        graft_tokenizer_t *tok = NULL;
        rc = graft_tokenizer_load_gpt2(cfg->vocab, &tok);
        if (rc) return rc;
        mc.V = tok->vocab;
        mc.tokenizer = GRAFT_TOKENIZER_GPT2;
        tr->model = graft_gpt2_new(&mc, (uint64_t)cfg->seed);
        tr->model->tok = tok;
    } else {
        tr->model = graft_gpt2_new(&mc, (uint64_t)cfg->seed);
    }
    rc = graft_corpus_load(cfg->data, cfg->heldout, tr->model->tok, &tr->corpus);
    if (rc) return rc;
    rc = check_corpus_size(tr);
    if (rc) return rc;
    rc = graft_gpt2_set_precision(tr->model, cfg->precision);
    if (rc) return rc;
    graft_gpt2_enable_grads(tr->model);
    graft_gpt2_reserve(tr->model, tr->B, tr->T);
    tr->opt = graft_adamw_defaults();
    tr->opt.lr = cfg->lr;
    tr->opt.min_lr_frac = cfg->min_lr_frac;
    tr->opt.warmup_steps = cfg->warmup;
    tr->opt.total_steps = cfg->steps;
    tr->opt.beta2 = 0.95f;
    tr->opt.weight_decay = cfg->weight_decay;
    tr->opt.grad_clip = cfg->grad_clip;
    tr->opt_state = graft_xcalloc(2 * tr->model->num_params, sizeof(float));
    tr->n_named = graft_gpt2_num_named(&tr->model->cfg);
    tr->named = graft_xmalloc((size_t)tr->n_named * sizeof *tr->named);
    graft_gpt2_named(tr->model, tr->named);
    graft_rng_seed(&tr->rng, (uint64_t)cfg->seed, 0x62617463u);
    tr->inputs = graft_xmalloc((size_t)tr->B * tr->T * sizeof(int32_t));
    tr->targets = graft_xmalloc((size_t)tr->B * tr->T * sizeof(int32_t));
    if (*cfg->resume) return resume_from(tr, cfg->resume);
    return GRAFT_OK;
}

static void teardown(trainer_t *tr) {
    graft_gpt2_destroy(&tr->model);
    graft_corpus_destroy(&tr->corpus);
    free(tr->opt_state);
    free(tr->named);
    free(tr->inputs);
    free(tr->targets);
}

int graft_pretrain_run(const graft_pretrain_config_t *cfg, graft_pretrain_ready_fn ready,
                       void *ctx, graft_pretrain_result_t *result) {
    trainer_t tr = {0};
    memset(result, 0, sizeof *result);
    int rc = setup(&tr, cfg);
    if (!rc && ready) rc = ready(ctx);
    if (rc) {
        teardown(&tr);
        return rc;
    }
    const graft_gpt2_config_t *mc = &tr.model->cfg;
    LOG_INFO("pretrain: preset %s (V=%d T=%d L=%d NH=%d C=%d, %zu parameters), batch %dx%d, "
             "corpus %zu train / %zu held-out tokens",
             cfg->preset, mc->V, mc->T, mc->L, mc->NH, mc->C, tr.model->num_params, tr.B, tr.T,
             graft_corpus_size(tr.corpus, 0), graft_corpus_size(tr.corpus, 1));
    result->first_eval_loss = evaluate(&tr);
    LOG_INFO("eval: step %d held-out loss %.4f", tr.step, result->first_eval_loss);
    int start = tr.step;
    double t0 = graft_now(), tlog = t0;
    int log_start = tr.step;
    float loss = NAN;
    while (tr.step < cfg->steps) {
        loss = train_step(&tr);
        if (!isfinite(loss)) {
            LOG_ERROR("training diverged at step %d (loss %f); lower --lr", tr.step, loss);
            rc = GRAFT_EINVAL;
            break;
        }
        if (tr.step % cfg->log_every == 0 || tr.step == cfg->steps) {
            double now = graft_now();
            double tps = (double)(tr.step - log_start) * tr.B * tr.T / (now - tlog);
            char eta[32];
            format_eta(eta, sizeof eta, (cfg->steps - tr.step) * (double)tr.B * tr.T / tps);
            LOG_INFO("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s", tr.step, cfg->steps,
                     loss, graft_lr_at(&tr.opt, tr.step - 1), tps, eta);
            tlog = now;
            log_start = tr.step;
        }
        if (cfg->stop_after && tr.step - start >= cfg->stop_after) {
            LOG_WARN("stopping after %d steps as asked (--stop_after)", cfg->stop_after);
            break;
        }
        if (tr.step % cfg->eval_every == 0 && tr.step < cfg->steps)
            LOG_INFO("eval: step %d held-out loss %.4f", tr.step, evaluate(&tr));
        if (tr.step % cfg->checkpoint_every == 0 || tr.step == cfg->steps) {
            rc = save_checkpoint(&tr, cfg->out);
            if (rc) break;
        }
    }
    double elapsed = graft_now() - t0;
    result->steps_done = tr.step;
    result->final_train_loss = loss;
    result->tokens_per_s = elapsed > 0 ? (tr.step - start) * (double)tr.B * tr.T / elapsed : 0;
    if (rc == GRAFT_OK) {
        result->final_eval_loss = evaluate(&tr);
        LOG_INFO("eval: step %d held-out loss %.4f (was %.4f)", tr.step, result->final_eval_loss,
                 result->first_eval_loss);
    }
    teardown(&tr);
    return rc;
}
