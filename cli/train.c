/* train.c — `graft train` (centralized multi-task training), `graft eval`
 * (evaluate saved modules) and `graft inspect` (trainable parameter counts). */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "events.h"
#include "grafting.h"
#include "safetensors.h"
#include "trainer.h"

static const char *train_usage =
    "usage: graft train --config RUN [options]\n\n"
    "Centralized multi-task training on this machine: the tasks in --tasks share one\n"
    "trunk; the modules of --method are trained with a round-robin or proportional\n"
    "mix of batches, evaluated on each task's dev split every --eval_every steps and\n"
    "checkpointed to OUT/modules.safetensors. Ends with test metrics per task.\n\n"
    "--method graft trains nothing: for each task it grafts the top-k trunk parameters\n"
    "by movement of a full fine-tuning run (--finetuned; its heads too) onto the trunk\n"
    "for each --sparsity (k = round(sparsity * eligible); eligible: --graft_params,\n"
    "by default every trunk matrix and vector but the embeddings), optionally refines\n"
    "each mask on the task's training data (--graft_refine_steps), evaluates the\n"
    "fine-tuned, pretrained and grafted models on the test split, writes\n"
    "OUT/mask.TASK.sSPARSITY.safetensors (indices and values only) and, for several\n"
    "tasks, the Jaccard overlap of their masks (OUT/overlap.sSPARSITY.tsv/.json).";

static void evaluate_all(graft_trainer_t *tr, graft_events_t *ev, int split, int step) {
    char line[256];
    for (int t = 0; t < graft_trainer_n_tasks(tr); t++) {
        graft_eval_result_t r;
        graft_trainer_evaluate(tr, t, split, &r);
        graft_eval_format(tr, &r, line, sizeof line);
        LOG_INFO("eval step %d: %s", step, line);
        graft_eval_log_sample(tr, &r);
        json_t *o = graft_eval_json(tr, &r);
        json_object_set_new(o, "step", json_integer(step));
        graft_events_emit(ev, "eval", o);
        if (split == GRAFT_SPLIT_TEST) printf("%s\n", line);
    }
}

/* The two-stage channels method selects its channels after stage1 steps:
 * a run must reach stage 2 to train them. */
static int check_stages(const graft_run_config_t *cfg, int stage1) {
    int methods;
    if (graft_peft_parse_methods(cfg->method, &methods)) return GRAFT_EINVAL;
    if ((methods & GRAFT_M_CHANNELS) && stage1 >= cfg->steps) {
        LOG_ERROR("--stage1_steps %d leaves no stage 2 in --steps %d: the channels would be "
                  "scored but never selected or trained (give fewer --stage1_steps or more "
                  "--steps)", stage1, cfg->steps);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

int cmd_train(int argc, char **argv) {
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv, train_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int graft = cli_method_graft(&cfg);
    if (graft < 0 || cli_check_out(&cfg, "train", !graft)) return 2;
    if (graft) return cli_train_graft(&cfg);
    int stage1 = cfg.stage1_steps > 0 ? cfg.stage1_steps : cfg.steps / 3;
    if (check_stages(&cfg, stage1)) return 2;
    graft_trainer_t *tr = NULL;
    int rc = graft_trainer_new(&cfg, &tr);
    if (rc) return 1;
    if (*cfg.resume && !(rc = graft_trainer_resume(tr, cfg.resume)) &&
        graft_trainer_steps_done(tr) >= cfg.steps) {
        LOG_ERROR("%s: the checkpoint already holds %d steps (--steps %d): give more --steps "
                  "to train on", cfg.resume, graft_trainer_steps_done(tr), cfg.steps);
        rc = GRAFT_EINVAL;
    }
    if (rc) {
        graft_trainer_destroy(&tr);
        return 1;
    }
    char path[2 * GRAFT_OPT_STR];
    snprintf(path, sizeof path, "%s/events.jsonl", cfg.out);
    graft_events_t *ev = NULL;
    if (cli_write_run_config("train", &cfg) || graft_events_open(path, &ev)) {
        graft_trainer_destroy(&tr);
        return 1;
    }
    char digest[32];
    snprintf(digest, sizeof digest, "%016llx", graft_options_digest(graft_run_options, &cfg));
    graft_events_emit(ev, "run_start",
                      json_pack("{s:s, s:s, s:i, s:s, s:i, s:o}", "mode", "train", "config_digest",
                                digest, "seed", cfg.seed, "method", cfg.method, "step",
                                graft_trainer_steps_done(tr), "params",
                                graft_trainer_params_json(tr)));
    int B, T;
    graft_trainer_batch_shape(tr, &B, &T);
    LOG_INFO("train: %d tasks, method %s, %d steps of %dx%d from step %d",
             graft_trainer_n_tasks(tr), cfg.method, cfg.steps, B, T, graft_trainer_steps_done(tr));
    snprintf(path, sizeof path, "%s/modules.safetensors", cfg.out);
    double t0 = graft_now();
    int start = graft_trainer_steps_done(tr);
    while (graft_trainer_steps_done(tr) < cfg.steps) {
        if (graft_trainer_stage(tr) == 1 && graft_trainer_steps_done(tr) >= stage1) {
            graft_trainer_select_channels(tr);
            LOG_INFO("two-stage: channels selected after %d steps; stage 2 starts",
                     graft_trainer_steps_done(tr));
        }
        int t = graft_trainer_task_for_step(tr, graft_trainer_steps_done(tr));
        float loss = graft_trainer_step(tr, t, -1.0f);
        if (graft_trainer_steps_done(tr) % cfg.log_every == 0 ||
            graft_trainer_steps_done(tr) == cfg.steps) {
            double el = graft_now() - t0;
            double sps = (graft_trainer_steps_done(tr) - start) / el;
            LOG_INFO("step %d/%d | task %s | loss %.4f | %.1f steps/s | ETA %.0fs",
                     graft_trainer_steps_done(tr), cfg.steps,
                     graft_task_name(graft_trainer_task(tr, t)), loss, sps,
                     (cfg.steps - graft_trainer_steps_done(tr)) / sps);
            graft_events_emit(ev, "train",
                              json_pack("{s:i, s:s, s:f, s:f}", "step",
                                        graft_trainer_steps_done(tr), "task",
                                        graft_task_name(graft_trainer_task(tr, t)), "loss",
                                        (double)loss, "seconds", el));
        }
        if (graft_trainer_steps_done(tr) % cfg.eval_every == 0 &&
            graft_trainer_steps_done(tr) < cfg.steps)
            evaluate_all(tr, ev, GRAFT_SPLIT_DEV, graft_trainer_steps_done(tr));
        if (graft_trainer_steps_done(tr) % cfg.checkpoint_every == 0 ||
            graft_trainer_steps_done(tr) == cfg.steps) {
            if ((rc = graft_trainer_save(tr, path))) break;
            graft_events_emit(
                ev, "checkpoint",
                json_pack("{s:i, s:s}", "step", graft_trainer_steps_done(tr), "path", path));
        }
    }
    if (!rc) evaluate_all(tr, ev, GRAFT_SPLIT_TEST, graft_trainer_steps_done(tr));
    graft_events_emit(ev, "run_end",
                      json_pack("{s:i, s:f, s:b}", "step", graft_trainer_steps_done(tr), "seconds",
                                graft_now() - t0, "ok", rc == 0));
    int erc = graft_events_close(&ev); /* a lost event line fails the run (logged) */
    graft_trainer_destroy(&tr);
    return rc || erc ? 1 : 0;
}

/* A trunk that `graft export` wrote for a classification task carries its
 * head (head.weight, head.bias), which the trainer does not read: said, so
 * that a fresh head's accuracy is not taken for the export's. */
static void warn_exported_head(const graft_run_config_t *cfg) {
    graft_st_file_t *f = NULL;
    if (!*cfg->trunk || graft_st_open(cfg->trunk, &f)) return;
    const char *kind = graft_st_meta(f, "graft.kind"), *task = graft_st_meta(f, "graft.task");
    if (kind && !strcmp(kind, "classification"))
        LOG_WARN("%s is graft export's model of task %s with its head, which graft eval does not "
                 "load: the head evaluated is --resume's, or a new one", cfg->trunk,
                 task ? task : "?");
    graft_st_close(&f);
}

int cmd_eval(int argc, char **argv) {
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv,
                        "usage: graft eval --config RUN --resume MODULES [options]\n\n"
                        "Evaluates saved modules (--resume) on every task's test split.\n"
                        "With --method graft, --resume takes mask files of `graft train\n"
                        "--method graft` (comma list): each is applied to the trunk with its\n"
                        "task's head and evaluated on that task.",
                        &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int graft = cli_method_graft(&cfg);
    if (graft) return graft > 0 ? cli_eval_graft(&cfg) : 2;
    graft_trainer_t *tr = NULL;
    if (graft_trainer_new(&cfg, &tr)) return 1;
    warn_exported_head(&cfg);
    int rc = *cfg.resume ? graft_trainer_load(tr, cfg.resume) : GRAFT_OK;
    if (!*cfg.resume) LOG_WARN("no --resume given: evaluating modules at their initial values");
    if (!rc) evaluate_all(tr, NULL, GRAFT_SPLIT_TEST, graft_trainer_steps_done(tr));
    graft_trainer_destroy(&tr);
    return rc ? 1 : 0;
}

/* The method a module tensor belongs to, from its name within its scope. */
static const char *module_of(const graft_scope_t *s, const char *tensor) {
    if (strstr(tensor, "lora_")) return "lora";
    if (!strncmp(tensor, "head.", 5)) return "head";
    if (!strncmp(tensor, "red.", 4)) return "red";
    if (!strncmp(tensor, "adapter.", 8)) return "adapter";
    if (!strncmp(tensor, "channels.", 9)) return "channels";
    if (!strncmp(tensor, "ln_", 3) && !strncmp(s->name, "task.", 5)) return "lntune";
    return "full"; /* the trunk's own tensors in the shared scope */
}

#define N_MODULES 7
static const char *const module_names[N_MODULES] = {"full", "head", "lora", "adapter", "red",
                                                    "lntune", "channels"};

static int module_index(const char *name) {
    for (int i = 0; i < N_MODULES; i++)
        if (!strcmp(module_names[i], name)) return i;
    GRAFT_ASSERT(!"unknown module");
    return -1;
}

/* Rows "scope module params share" for every module of every scope, then
 * the totals per method over all scopes. */
static void print_modules(const graft_peft_t *p, size_t trunk) {
    graft_scope_t *scopes[GRAFT_MAX_TASKS + 1];
    int ns = 0;
    scopes[ns++] = graft_peft_shared(p);
    for (int t = 0; t < graft_peft_n_tasks(p); t++) scopes[ns++] = graft_peft_task_scope(p, t);
    size_t per_method[N_MODULES] = {0};
    printf("%-28s %-10s %12s %9s\n", "scope", "method", "params", "of trunk");
    for (int i = 0; i < ns; i++) {
        const graft_scope_t *s = scopes[i];
        size_t per[N_MODULES] = {0};
        for (int j = 0; j < s->n_tensors; j++) /* statistics are not parameters */
            if (!s->tensors[j].stat)
                per[module_index(module_of(s, s->tensors[j].name))] += s->tensors[j].numel;
        for (int m = 0; m < N_MODULES; m++) {
            if (!per[m]) continue;
            printf("%-28s %-10s %12zu %8.3f%%\n", s->name, module_names[m], per[m],
                   100.0 * per[m] / trunk);
            per_method[m] += per[m];
        }
        printf("%-28s %-10s %12zu %8.3f%%\n", s->name, "(all)", s->nparams,
               100.0 * s->nparams / trunk);
    }
    printf("\n%-28s %12s %9s\n", "per method (all scopes)", "params", "of trunk");
    for (int m = 0; m < N_MODULES; m++)
        if (per_method[m])
            printf("%-28s %12zu %8.3f%%\n", module_names[m], per_method[m],
                   100.0 * per_method[m] / trunk);
}

/* graft: no modules; per task a mask of k trunk parameters and the head. */
static int inspect_graft(const graft_run_config_t *cfg) {
    double sp[32];
    int nsp = graft_parse_sparsities(cfg->sparsity, sp, 32), groups;
    if (nsp < 0 || graft_mask_parse_groups(cfg->graft_params, &groups)) return 2;
    graft_run_config_t heads = *cfg;
    snprintf(heads.method, sizeof heads.method, "head");
    graft_trainer_t *tr = NULL;
    if (graft_trainer_new(&heads, &tr)) return 1;
    const graft_gpt2_t *m = graft_trainer_trunk(tr);
    graft_mask_layout_t lay;
    graft_mask_layout_init(&lay, m, groups);
    char gs[64];
    printf("trunk: V=%d T=%d L=%d NH=%d C=%d, %s tokenizer, %zu parameters (frozen; masks graft "
           "fine-tuned values onto it)\n", m->cfg.V, m->cfg.T, m->cfg.L, m->cfg.NH, m->cfg.C,
           graft_tokenizer_kind_name(m->cfg.tokenizer), m->num_params);
    printf("method: graft, masks over %s: %zu eligible parameters (%.3f%% of the trunk)\n\n",
           graft_mask_groups_str(groups, gs, sizeof gs), lay.num_eligible,
           100.0 * lay.num_eligible / m->num_params);
    printf("%-12s %12s %9s %12s\n", "sparsity", "k per task", "of trunk", "of eligible");
    for (int i = 0; i < nsp; i++) {
        size_t k = graft_mask_k(sp[i], lay.num_eligible);
        printf("%-12g %12zu %8.4f%% %11.4f%%\n", sp[i], k, 100.0 * k / m->num_params,
               100.0 * k / lay.num_eligible);
    }
    printf("\n");
    print_modules(graft_trainer_peft(tr), m->num_params);
    printf("\n%-28s %-12s %12s %9s\n", "per task (mask + head)", "sparsity", "params",
           "of trunk");
    for (int t = 0; t < graft_trainer_n_tasks(tr); t++)
        for (int i = 0; i < nsp; i++) {
            size_t n = graft_mask_k(sp[i], lay.num_eligible) +
                       graft_peft_task_params(graft_trainer_peft(tr), t);
            printf("%-28s %-12g %12zu %8.4f%%\n", graft_peft_task_name(graft_trainer_peft(tr), t),
                   sp[i], n, 100.0 * n / m->num_params);
        }
    graft_mask_layout_free(&lay);
    graft_trainer_destroy(&tr);
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv,
                        "usage: graft inspect --config RUN [options]\n\n"
                        "Prints the exact number of trainable parameters per scope and per\n"
                        "method, per task, and their share of the trunk. For --method graft:\n"
                        "the eligible trunk parameters and k = round(sparsity * eligible)\n"
                        "per task for each --sparsity, plus the heads.",
                        &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int graft = cli_method_graft(&cfg);
    if (graft) return graft > 0 ? inspect_graft(&cfg) : 2;
    graft_trainer_t *tr = NULL;
    if (graft_trainer_new(&cfg, &tr)) return 1;
    const graft_gpt2_t *m = graft_trainer_trunk(tr);
    const graft_peft_t *p = graft_trainer_peft(tr);
    printf("trunk: V=%d T=%d L=%d NH=%d C=%d, %s tokenizer, %zu parameters (frozen%s)\n", m->cfg.V,
           m->cfg.T, m->cfg.L, m->cfg.NH, m->cfg.C, graft_tokenizer_kind_name(m->cfg.tokenizer),
           m->num_params,
           (graft_peft_methods(p) & GRAFT_M_FULL) ? " except under method full" : "");
    printf("method: %s\n\n", cfg.method);
    print_modules(p, m->num_params);
    printf("\n%-28s %12s %9s\n", "per task (shared + own)", "params", "of trunk");
    for (int t = 0; t < graft_peft_n_tasks(p); t++) {
        size_t n = graft_peft_task_params(p, t);
        printf("%-28s %12zu %8.3f%%\n", graft_peft_task_name(p, t), n, 100.0 * n / m->num_params);
    }
    graft_trainer_destroy(&tr);
    return 0;
}
