/* runconfig.c — the run option table and the task list parser. */
#include "runconfig.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "graft.h"
#include "peft.h"
#include "shared_options.h"

#define OFF(field) offsetof(graft_run_config_t, field)
const graft_option_t graft_run_options[] = {
    GRAFT_OPT_TRUNK(OFF(trunk)),
    GRAFT_OPT_PRESET(OFF(preset)),
    GRAFT_OPT_TASKS(OFF(tasks)),
    GRAFT_OPT_SEQ(OFF(seq)),
    GRAFT_OPT_METHOD(OFF(method), "lora"),
    GRAFT_OPT_LORA_TARGETS(OFF(lora_targets)),
    GRAFT_OPT_LORA_SHARED_RANK(OFF(lora_shared_rank)),
    GRAFT_OPT_LORA_SHARED_ALPHA(OFF(lora_shared_alpha)),
    {"lora_task_rank", GRAFT_OPT_INT, OFF(lora_task_rank), "4", 0, 1024,
     "rank of the per-task LoRA pair; 0: none"},
    {"lora_task_alpha", GRAFT_OPT_FLOAT, OFF(lora_task_alpha), "8", 0, 1e6, "task LoRA alpha"},
    GRAFT_OPT_ADAPTER_DIM(OFF(adapter_dim)),
    {"channels_k", GRAFT_OPT_INT, OFF(channels_k), "16", 1, 65536,
     "channels kept per layer by Taylor importance (channels), at most the trunk's width C"},
    {"stage1_steps", GRAFT_OPT_INT, OFF(stage1_steps), "0", 0, 1e9,
     "channels: steps of stage 1 (lntune) that also score channels, fewer than --steps; 0: a "
     "third of --steps (federated: the first ceil(stage1_steps / local_steps) rounds, fewer "
     "than --rounds; 0: a third of --rounds)"},
    {"pool", GRAFT_OPT_STRING, OFF(pool), "last", 0, -1,
     "what a classification head reads: last (the hidden state of the text's last token) or "
     "mean (the mean of the hidden states over the text's tokens)"},
    {"finetuned", GRAFT_OPT_STRING, OFF(finetuned), "", 0, -1,
     "graft: `graft train --method full` run directory or checkpoint, one for every task or "
     "NAME=PATH per task (comma list); heads come from it"},
    {"sparsity", GRAFT_OPT_STRING, OFF(sparsity), "0.01", 0, -1,
     "graft: fractions of the eligible trunk parameters a mask keeps, comma list "
     "(k = round(sparsity * eligible))"},
    {"graft_params", GRAFT_OPT_STRING, OFF(graft_params), "attn,mlp,ln", 0, -1,
     "graft: trunk tensors a mask may select: attn, mlp, ln, embed or all (the default leaves "
     "out the embeddings)"},
    {"graft_refine_steps", GRAFT_OPT_INT, OFF(graft_refine_steps), "0", 0, 1e9,
     "graft: steps refining each mask on the task's training data (scores per candidate, "
     "straight-through gradient, same k; kept only if it lowers the training loss); 0: plain "
     "top-k by |theta_ft - theta_pre|"},
    {"graft_refine_lr", GRAFT_OPT_FLOAT, OFF(graft_refine_lr), "0.3", 0, 1e6,
     "graft: Adam learning rate of the refinement scores (they start 6 apart)"},
    {"graft_candidates", GRAFT_OPT_INT, OFF(graft_candidates), "4", 1, 1e6,
     "graft: the refined mask chooses among the top N*k parameters by movement"},
    {"graft_head_steps", GRAFT_OPT_INT, OFF(graft_head_steps), "0", 0, 1e9,
     "graft: steps fitting each task's head to its grafted trunk (head_lr, else lr, cosine "
     "to zero); 0: keep the fine-tuned model's head, which was trained with the whole "
     "fine-tuned trunk"},
    {"graft_tune_steps", GRAFT_OPT_INT, OFF(graft_tune_steps), "0", 0, 1e9,
     "graft: after localisation, steps training the k grafted values and the head (sparse "
     "fine-tuning at lr, head_lr; cosine to zero); 0: graft theta_ft unchanged, as the paper"},
    GRAFT_OPT_STEPS(OFF(steps), "300"),
    GRAFT_OPT_BATCH(OFF(batch)),
    GRAFT_OPT_LR(OFF(lr), "2e-3"),
    {"head_lr", GRAFT_OPT_FLOAT, OFF(head_lr), "0", 0, 10,
     "peak learning rate of the classification heads, on the same schedule (0: --lr)"},
    {"optimizer", GRAFT_OPT_STRING, OFF(optimizer), "adamw", 0, -1,
     "adamw, or sgd (with --momentum): the skill-localization paper fine-tunes with SGD, whose "
     "movement follows the gradient; AdamW moves every parameter by about the same step"},
    {"momentum", GRAFT_OPT_FLOAT, OFF(momentum), "0", 0, 0.9999,
     "sgd: heavy-ball momentum (0: plain SGD)"},
    GRAFT_OPT_WEIGHT_DECAY(OFF(weight_decay), "0"),
    GRAFT_OPT_GRAD_CLIP(OFF(grad_clip)),
    GRAFT_OPT_WARMUP(OFF(warmup), "20"),
    {"mix", GRAFT_OPT_STRING, OFF(mix), "roundrobin", 0, -1,
     "task mix: roundrobin (one batch per task in turn) or proportional (by train size)"},
    GRAFT_OPT_EVAL_EVERY(OFF(eval_every), "100"),
    {"eval_max", GRAFT_OPT_INT, OFF(eval_max), "512", 0, 1e9,
     "at most N examples per task and evaluation, evenly spread over the split (0: all)"},
    {"gen_tokens", GRAFT_OPT_INT, OFF(gen_tokens), "48", 1, 4096,
     "greedy-decoding budget for generation metrics (chrF), in tokens (bytes under the byte "
     "tokenizer)"},
    {"decode_max", GRAFT_OPT_INT, OFF(decode_max), "64", 0, 1e9,
     "generation: chrF is over greedy decodes of at most N examples, evenly spread over the "
     "split (0: every evaluated one)"},
    {"out", GRAFT_OPT_STRING, OFF(out), "runs/train", 0, -1,
     "run directory: modules.safetensors checkpoint and events.jsonl"},
    GRAFT_OPT_RESUME(OFF(resume)),
    GRAFT_OPT_CHECKPOINT_EVERY(OFF(checkpoint_every), "100"),
    GRAFT_OPT_SEED(OFF(seed), "1"),
    GRAFT_OPT_THREADS(OFF(threads)),
    GRAFT_OPT_PRECISION(OFF(precision)),
    GRAFT_OPT_LOG_EVERY(OFF(log_every), "20"),
    GRAFT_OPT_LOG_LEVEL(OFF(log_level)),
    {"rounds", GRAFT_OPT_INT, OFF(rounds), "10", 1, 1e9, "federated rounds"},
    {"local_steps", GRAFT_OPT_INT, OFF(local_steps), "10", 1, 100000,
     "worker steps per round (each round start carries a learning rate per step); rounds x "
     "local_steps must fit an int"},
    {"keep_optimizer_state", GRAFT_OPT_BOOL, OFF(keep_optimizer_state), "false", 0, -1,
     "federated: each worker keeps its AdamW moments and step count from round to round "
     "(false: every round restarts them, as plain FedAvg does)"},
    {"logit_adjust", GRAFT_OPT_FLOAT, OFF(logit_adjust), "0", 0, 10,
     "federated: workers train classification heads on logits + tau (log p_shard(y) - "
     "log p_run(y)), correcting their shard's label skew (tau; 0: off)"},
    {"personalize", GRAFT_OPT_BOOL, OFF(personalize), "false", 0, -1,
     "federated: every worker keeps its own task modules (heads, task LoRA pairs, adapters, "
     "RED, LayerNorm tuning): it trains them on its own rows round after round, with their "
     "AdamW state, and never sends them back; only the shared scope is aggregated, and the "
     "evaluations run on the workers, each with its own modules"},
    {"personal_from", GRAFT_OPT_INT, OFF(personal_from), "1", 1, 1e9,
     "--personalize: the first round whose task modules stay on the workers; the rounds "
     "before it average them over their cohorts, as without --personalize, so that each "
     "worker's own modules start from its cohort's (1: personal from the start; at most "
     "--rounds)"},
    {"min_replies", GRAFT_OPT_INT, OFF(min_replies), "1", 1, 1e6,
     "replies needed to close a round at its deadline"},
    {"round_timeout_ms", GRAFT_OPT_INT, OFF(round_timeout_ms), "120000", 100, 1e9,
     "round deadline in milliseconds"},
    {"heartbeat_ms", GRAFT_OPT_INT, OFF(heartbeat_ms), "1000", 50, 1e7,
     "worker heartbeat interval; 5 missed = lost"},
    {"eval_every_rounds", GRAFT_OPT_INT, OFF(eval_every_rounds), "5", 1, 1e9,
     "evaluate every N rounds"},
    {"eval_on", GRAFT_OPT_STRING, OFF(eval_on), "", 0, -1,
     "federated: where the dev and test evaluations run: coordinator (on its copy of the "
     "--tasks files), workers (each on its own rows; the coordinator adds up their statistics "
     "per task), or both (two eval events per task, source coordinator and workers); empty: "
     "coordinator, or workers under --personalize"},
    {"checkpoint_every_rounds", GRAFT_OPT_INT, OFF(checkpoint_every_rounds), "1", 1, 1e9,
     "checkpoint every N rounds"},
    {"aggregate", GRAFT_OPT_STRING, OFF(aggregate), "fedavg", 0, -1,
     "aggregation, a comma list: one of fedavg (sample-weighted mean, streamed), fedavgm "
     "(server momentum on the mean's pseudo-gradient), fedadam (server Adam on it), median "
     "or trimmed_mean (coordinate-wise; "
     "these hold every reply until the round closes); plus fedprox (proximal term on the "
     "workers) and/or clip (clip each update's delta to clip_norm)"},
    {"fedprox_mu", GRAFT_OPT_FLOAT, OFF(fedprox_mu), "0.01", 0, 1e6,
     "fedprox: workers add mu/2 ||w - w_global||^2 to their loss"},
    {"clip_norm", GRAFT_OPT_FLOAT, OFF(clip_norm), "1.0", 0, 1e9,
     "clip: max L2 norm of each update's delta, per scope"},
    {"server_lr", GRAFT_OPT_FLOAT, OFF(server_lr), "0", 0, 10,
     "fedavgm and fedadam: server learning rate (0: 1 for fedavgm, 0.01 for fedadam)"},
    {"server_beta1", GRAFT_OPT_FLOAT, OFF(server_beta1), "0.9", 0, 0.9999,
     "fedavgm: server momentum; fedadam: beta1"},
    {"server_beta2", GRAFT_OPT_FLOAT, OFF(server_beta2), "0.99", 0, 0.999999, "fedadam: beta2"},
    {"server_eps", GRAFT_OPT_FLOAT, OFF(server_eps), "1e-3", 1e-12, 10,
     "fedadam: epsilon (the adaptivity tau)"},
    {"shared_weight", GRAFT_OPT_STRING, OFF(shared_weight), "data", 0, -1,
     "the shared scope's weights: data (each reply weighs the training examples its worker "
     "holds, as FedAvg) or task (every task weighs the same, split among its workers by their "
     "share of its examples)"},
    {"shared_server_lr", GRAFT_OPT_FLOAT, OFF(shared_server_lr), "1", 0.001, 100,
     "the shared scope moves by this times its aggregate's step (weighted mean minus global); "
     "with shared_weight task and the number of tasks here, a round adds every task's mean step, "
     "as round-robin centralized training does (not with median, trimmed_mean or lora svd)"},
    {"trim_frac", GRAFT_OPT_FLOAT, OFF(trim_frac), "0.1", 0, 0.49,
     "trimmed_mean: fraction of replies dropped at each end, per coordinate"},
    {"lora_aggregate", GRAFT_OPT_STRING, OFF(lora_aggregate), "factors", 0, -1,
     "LoRA pairs: factors (average A and B), svd (average the products B*A, truncate back to "
     "rank r), freeze_a (A stays at its initial value; only B is trained and averaged: exact; "
     "under --personalize the shared pair's A only)"},
    {"lora_gap", GRAFT_OPT_BOOL, OFF(lora_gap), "false", 0, -1,
     "factors: when on, accumulate each reply's LoRA products to log the gap between avg(B)avg(A) and "
     "avg(BA) per round (costs in*out per pair per scope)"},
    {"mpi_collectives", GRAFT_OPT_BOOL, OFF(mpi_collectives), "true", 0, -1,
     "graft mpi: sum the modules with MPI reductions (exact int64) instead of update messages, "
     "for fedavg, fedprox and fedadam"},
    GRAFT_OPT_END,
};
#undef OFF

int graft_run_task_specs(const graft_run_config_t *cfg, graft_task_spec_t *specs, int max) {
    return graft_task_specs_parse(cfg->tasks, specs, max);
}

int graft_task_specs_parse(const char *list, graft_task_spec_t *specs, int max) {
    char buf[GRAFT_OPT_STR];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
        if (n == max) {
            LOG_ERROR("tasks: more than %d tasks", max);
            return GRAFT_EINVAL;
        }
        char *c1 = strchr(tok, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c1 || !c2 || c1 == tok || c2 == c1 + 1 || !c2[1]) {
            LOG_ERROR("tasks: '%s' is not NAME:KIND:PATH", tok);
            return GRAFT_EINVAL;
        }
        *c1 = *c2 = '\0';
        for (int i = 0; i < n; i++) {
            if (!strcmp(specs[i].name, tok)) {
                LOG_ERROR("tasks: task name '%s' is given twice (each task needs its own name: "
                          "its modules, events and outputs are named after it)", tok);
                return GRAFT_EINVAL;
            }
        }
        graft_task_spec_t *s = &specs[n++];
        snprintf(s->name, sizeof s->name, "%s", tok);
        snprintf(s->kind, sizeof s->kind, "%s", c1 + 1);
        snprintf(s->path, sizeof s->path, "%s", c2 + 1);
    }
    if (n == 0) LOG_ERROR("no tasks given (--tasks NAME:KIND:PATH,...)");
    return n ? n : GRAFT_EINVAL;
}

int graft_run_load_tasks(const char *list, graft_task_t **tasks, int max, int untrained) {
    graft_task_spec_t specs[GRAFT_MAX_TASKS];
    int n = graft_task_specs_parse(list, specs, max < GRAFT_MAX_TASKS ? max : GRAFT_MAX_TASKS);
    for (int i = 0; i < n; i++) {
        graft_task_kind_t kind;
        int rc = graft_task_kind_parse(specs[i].kind, &kind);
        if (rc)
            LOG_ERROR("tasks: '%s' has unknown kind '%s' (classification or generation)",
                      specs[i].name, specs[i].kind);
        if (!rc)
            rc = (untrained ? graft_task_load_untrained : graft_task_load)(specs[i].name, kind,
                                                                         specs[i].path, &tasks[i]);
        if (rc) {
            for (int j = 0; j < i; j++) graft_task_destroy(&tasks[j]);
            return rc;
        }
    }
    return n;
}

/* The trunk's identity: FNV-1a over the file's bytes (the same file gives
 * the same digest on every machine, wherever it lies), or the preset and
 * seed a random trunk is drawn from. */
static void trunk_identity(const graft_run_config_t *cfg, char *buf, size_t n) {
    if (!*cfg->trunk) {
        snprintf(buf, n, "random init (preset %.64s, seed %d)", cfg->preset, cfg->seed);
        return;
    }
    FILE *f = fopen(cfg->trunk, "rb");
    if (!f) {
        snprintf(buf, n, "unreadable (%s)", strerror(errno));
        return;
    }
    enum { CHUNK = 1 << 20 };
    unsigned char *chunk = graft_xmalloc(CHUNK);
    uint64_t h = 1469598103934665603ull, bytes = 0;
    size_t got;
    while ((got = fread(chunk, 1, CHUNK, f)) > 0) {
        for (size_t i = 0; i < got; i++) h = (h ^ chunk[i]) * 1099511628211ull;
        bytes += got;
    }
    int bad = ferror(f);
    fclose(f);
    free(chunk);
    if (bad) snprintf(buf, n, "unreadable (read error)");
    else snprintf(buf, n, "file digest %016llx (%llu bytes)", (unsigned long long)h,
                  (unsigned long long)bytes);
}

static int add_option(const graft_run_config_t *cfg, const char *name, graft_setting_t *out,
                      int n) {
    for (const graft_option_t *o = graft_run_options; o->name; o++)
        if (!strcmp(o->name, name)) {
            out[n].name = o->name;
            graft_options_format(out[n].value, sizeof out[n].value, o, cfg);
            return n + 1;
        }
    GRAFT_ASSERT(0 && "no such run option");
    return n;
}

int graft_run_module_settings(const graft_run_config_t *cfg, int optimizer,
                              graft_setting_t *out) {
    int methods = 0, n = 0;
    out[n].name = "method";
    if (graft_peft_parse_methods(cfg->method, &methods) == GRAFT_OK) {
        graft_peft_methods_str(methods, out[n].value, sizeof out[n].value);
    } else {
        snprintf(out[n].value, sizeof out[n].value, "%s", cfg->method);
        methods = 0;
    }
    n = add_option(cfg, "pool", out, n + 1);
    if (optimizer) n = add_option(cfg, "optimizer", out, n);
    if (methods & GRAFT_M_LORA) {
        int targets = 0;
        out[n].name = "lora_targets";
        if (graft_peft_parse_targets(cfg->lora_targets, &targets) == GRAFT_OK)
            graft_peft_targets_str(targets, out[n].value, sizeof out[n].value);
        else snprintf(out[n].value, sizeof out[n].value, "%s", cfg->lora_targets);
        n = add_option(cfg, "lora_shared_rank", out, n + 1);
        n = add_option(cfg, "lora_shared_alpha", out, n);
        n = add_option(cfg, "lora_task_rank", out, n);
        n = add_option(cfg, "lora_task_alpha", out, n);
    }
    if (methods & GRAFT_M_ADAPTER) n = add_option(cfg, "adapter_dim", out, n);
    if (methods & GRAFT_M_CHANNELS) n = add_option(cfg, "channels_k", out, n);
    GRAFT_ASSERT(n <= GRAFT_MAX_SHARED_SETTINGS);
    return n;
}

int graft_run_shared_settings(const graft_run_config_t *cfg, graft_setting_t *out) {
    out[0].name = "trunk";
    trunk_identity(cfg, out[0].value, sizeof out[0].value);
    /* Not the tasks: a worker may hold some of them (each task's modules
     * are a scope of their own), and the coordinator checks each held
     * task's kind at hello. */
    int n = add_option(cfg, "seq", out, 1);
    n += graft_run_module_settings(cfg, 0, out + n);
    GRAFT_ASSERT(n <= GRAFT_MAX_SHARED_SETTINGS);
    return n;
}

int graft_run_setting_canonical(const graft_run_config_t *cfg, const char *name,
                                const char *value, char *out, size_t cap, const char *where) {
    graft_run_config_t *tmp = graft_xmalloc(sizeof *tmp);
    *tmp = *cfg;
    int rc = graft_options_set(graft_run_options, tmp, name, value, where);
    if (!rc) {
        graft_setting_t set[GRAFT_MAX_SHARED_SETTINGS];
        int n = graft_run_module_settings(tmp, 1, set), i = 0;
        while (i < n && strcmp(set[i].name, name) != 0) i++;
        if (i < n) snprintf(out, cap, "%s", set[i].value);
        else LOG_ERROR("%s: '%s' is not a setting of this run's modules", where, name);
        rc = i < n ? GRAFT_OK : GRAFT_EINVAL;
    }
    free(tmp);
    return rc;
}

const char *graft_run_eval_on(const graft_run_config_t *cfg) {
    if (*cfg->eval_on) return cfg->eval_on;
    return cfg->personalize ? "workers" : "coordinator";
}

int graft_run_personal_round(const graft_run_config_t *cfg, int round) {
    return cfg->personalize && round >= cfg->personal_from;
}
