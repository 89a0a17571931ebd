/* predict.c — one task's trained model outside training: `graft predict`
 * runs it on new inputs (class and probability, or the greedy continuation
 * of a prompt); `graft export` writes it out as a plain trunk checkpoint
 * with the task's modules folded into the weights. */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commands.h"
#include "grafting.h"
#include "trainer.h"

static const char *predict_usage =
    "usage: graft predict --config RUN --resume MODULES [--task NAME] [--text TEXT] [options]\n\n"
    "Runs one task's trained modules on new inputs: --text, or else every line of\n"
    "standard input (one input a line, as a task file's text field holds it; a\n"
    "generation task's input is the prompt). Prints one line per input:\n"
    "  classification  LABEL<TAB>PROBABILITY (the most probable class)\n"
    "  generation      the greedy continuation, up to EOS or --gen_tokens tokens,\n"
    "                  with \\, TAB, CR and LF written as \\\\, \\t, \\r and \\n\n"
    "--task names the task among --tasks (needed when there are several).\n"
    "With --method graft, --resume is one mask file of `graft train --method graft`\n"
    "and the task is the mask's.";

static const char *export_usage =
    "usage: graft export --config RUN --resume MODULES [--task NAME] --file OUT.safetensors\n\n"
    "Writes one task's model as a plain trunk checkpoint (Hugging Face GPT-2 names,\n"
    "the format --trunk reads): the task's modules folded into the trunk's weights\n"
    "(LoRA pairs into their projections, RED and channel deltas into the MLP output\n"
    "projection, lntune's LayerNorms over the trunk's; the adapter does not fold and is\n"
    "refused), with --method graft (--resume MASK) the grafted trunk, with full the\n"
    "fine-tuned one. A classification task's head goes along as head.weight (C, K)\n"
    "and head.bias (K), its labels (JSON) and pooling in the metadata (graft.labels,\n"
    "graft.pool). --task as for `graft predict`.";

typedef struct {
    graft_run_config_t run; /* first: the run options' offsets hold unchanged */
    char task[GRAFT_OPT_STR];
    char text[GRAFT_OPT_STR];
    char file[GRAFT_OPT_STR];
} task_model_config_t;

/* Inputs go through the model this many at a time (a multiple of the batch). */
#define CHUNK 256

/* The run options followed by predict's (export 0) or export's (1) own;
 * owned by the caller (free). */
static graft_option_t *task_model_options(int export) {
    size_t n = 0;
    while (graft_run_options[n].name) n++;
    graft_option_t *table = graft_xmalloc((n + 3) * sizeof *table);
    memcpy(table, graft_run_options, n * sizeof *table);
    table[n] = (graft_option_t){"task", GRAFT_OPT_STRING, offsetof(task_model_config_t, task), "",
                                0, -1, "the task whose model this is (empty: the run's only one)"};
    table[n + 1] =
        export ? (graft_option_t){"file", GRAFT_OPT_STRING, offsetof(task_model_config_t, file), "",
                                  0, -1, "export: the checkpoint to write (safetensors; missing "
                                  "folders are made)"}
               : (graft_option_t){"text", GRAFT_OPT_STRING, offsetof(task_model_config_t, text), "",
                                  0, -1, "predict: one input (empty: read standard input)"};
    table[n + 2] = (graft_option_t)GRAFT_OPT_END;
    return table;
}

/* Parses a task-model command's options and sets the threads; 0: go on,
 * 1: --help printed, -1: error (logged). */
static int parse_task_model(int argc, char **argv, int export, task_model_config_t *pc) {
    graft_option_t *table = task_model_options(export);
    int rc = graft_options_parse(table, pc, argc, argv, export ? export_usage : predict_usage);
    free(table);
    if (rc == GRAFT_OPTS_HELP) return 1;
    if (rc || cli_set_log_level(pc->run.log_level)) return -1;
    cli_set_threads(pc->run.threads);
    return 0;
}

static void print_escaped(const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '\\': fputs("\\\\", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        default: putchar(*s);
        }
    }
    putchar('\n');
}

/* Predicts and prints inputs [0, n) of task t. */
static void predict_chunk(graft_trainer_t *tr, int t, const char *const *texts, const size_t *lens,
                          size_t n) {
    const graft_task_t *task = graft_trainer_task(tr, t);
    if (graft_task_kind(task) == GRAFT_TASK_CLASSIFY) {
        int K = graft_task_num_labels(task);
        float *probs = graft_xmalloc(n * (size_t)K * sizeof(float));
        graft_trainer_classify(tr, t, texts, lens, n, probs);
        for (size_t i = 0; i < n; i++) {
            const float *p = probs + i * (size_t)K;
            int best = 0;
            for (int k = 1; k < K; k++)
                if (p[k] > p[best]) best = k;
            printf("%s\t%.4f\n", graft_task_label_name(task, best), p[best]);
        }
        free(probs);
    } else {
        size_t cap = (size_t)graft_trainer_config(tr)->gen_tokens + 1;
        char *memory = graft_xmalloc(n * cap);
        char **outs = graft_xmalloc(n * sizeof(char *));
        for (size_t i = 0; i < n; i++) outs[i] = memory + i * cap;
        graft_trainer_generate(tr, t, texts, lens, n, outs, cap);
        for (size_t i = 0; i < n; i++) print_escaped(outs[i]);
        free(outs);
        free(memory);
    }
    fflush(stdout);
}

/* --text, or standard input CHUNK lines at a time (trailing CR/LF cut). */
static int predict_inputs(graft_trainer_t *tr, int t, const char *text) {
    if (*text) {
        size_t len = strlen(text);
        predict_chunk(tr, t, &text, &len, 1);
        return GRAFT_OK;
    }
    char *lines[CHUNK] = {0};
    size_t lens[CHUNK], caps[CHUNK] = {0};
    size_t n = 0, total = 0;
    for (;;) {
        ssize_t got = getline(&lines[n], &caps[n], stdin);
        if (got >= 0) {
            while (got > 0 && (lines[n][got - 1] == '\n' || lines[n][got - 1] == '\r'))
                lines[n][--got] = '\0';
            lens[n++] = (size_t)got;
        }
        if (n == CHUNK || (got < 0 && n > 0)) {
            predict_chunk(tr, t, (const char *const *)lines, lens, n);
            total += n;
            n = 0;
        }
        if (got < 0) break;
    }
    for (int i = 0; i < CHUNK; i++) free(lines[i]);
    if (total == 0) LOG_WARN("no input: give --text or lines on standard input");
    return GRAFT_OK;
}

/* Task index of --task, or the only task; -1 (logged) if neither. */
static int pick_task(const graft_trainer_t *tr, const char *name) {
    if (!*name) {
        if (graft_trainer_n_tasks(tr) == 1) return 0;
        LOG_ERROR("the run has %d tasks: name one with --task", graft_trainer_n_tasks(tr));
        return -1;
    }
    for (int t = 0; t < graft_trainer_n_tasks(tr); t++)
        if (!strcmp(graft_task_name(graft_trainer_task(tr, t)), name)) return t;
    LOG_ERROR("--task %s: not among the run's tasks (--tasks)", name);
    return -1;
}

/* One task's model: the grafting (--method graft, the trunk grafted with
 * the mask of --resume) or the trainer with the modules of --resume. */
typedef struct {
    graft_grafting_t *g;
    graft_trainer_t *tr; /* g->tr with a grafting; owned otherwise */
    int task;
} task_model_t;

static void task_model_close(task_model_t *tm) {
    if (tm->g) graft_grafting_destroy(&tm->g);
    else graft_trainer_destroy(&tm->tr);
}

/* Opens it for command `cmd`; 0, or the exit status of the error (logged). */
static int task_model_open(const task_model_config_t *pc, const char *cmd, task_model_t *tm) {
    memset(tm, 0, sizeof *tm);
    int graft = cli_method_graft(&pc->run);
    if (graft < 0) return 2;
    if (graft && (!*pc->run.resume || strchr(pc->run.resume, ','))) {
        LOG_ERROR("graft %s --method graft needs --resume MASK: one mask file of "
                  "`graft train --method graft`", cmd);
        return 2;
    }
    if (!*pc->run.resume) {
        LOG_ERROR("graft %s needs --resume MODULES (a modules checkpoint of `graft train`, "
                  "`graft run` or `graft mpi`)", cmd);
        return 2;
    }
    if (!graft) {
        if (graft_trainer_new(&pc->run, &tm->tr)) return 1;
        tm->task = pick_task(tm->tr, pc->task);
        if (tm->task < 0 || graft_trainer_load(tm->tr, pc->run.resume)) {
            task_model_close(tm);
            return 1;
        }
        return 0;
    }
    if (graft_grafting_new(&pc->run, &tm->g)) return 1;
    tm->tr = tm->g->tr;
    graft_mask_t *mask = NULL;
    int rc = graft_grafting_load_mask(tm->g, pc->run.resume, &tm->task, &mask);
    const char *owner = rc ? "" : graft_task_name(graft_trainer_task(tm->tr, tm->task));
    if (!rc && *pc->task && strcmp(pc->task, owner)) {
        LOG_ERROR("--task %s: the mask %s is task %s's", pc->task, pc->run.resume, owner);
        rc = GRAFT_EINVAL;
    }
    if (!rc) graft_grafting_use_mask(tm->g, mask);
    graft_mask_destroy(&mask);
    if (rc) task_model_close(tm);
    return rc ? 1 : 0;
}

int cmd_predict(int argc, char **argv) {
    task_model_config_t pc;
    int prc = parse_task_model(argc, argv, 0, &pc);
    if (prc) return prc > 0 ? 0 : 2;
    task_model_t tm;
    int rc = task_model_open(&pc, "predict", &tm);
    if (rc) return rc;
    rc = predict_inputs(tm.tr, tm.task, pc.text);
    task_model_close(&tm);
    return rc ? 1 : 0;
}

/* ---- graft export ------------------------------------------------------- */

/* The trunk of tm (modules folded) with the head and the task's metadata. */
static int export_trunk(const task_model_t *tm, const task_model_config_t *pc) {
    graft_trainer_t *tr = tm->tr;
    const graft_task_t *task = graft_trainer_task(tr, tm->task);
    if (!tm->g && graft_peft_fold(graft_trainer_peft(tr), tm->task)) return GRAFT_EINVAL;
    int C = graft_trainer_trunk(tr)->cfg.C, K = graft_task_num_labels(task);
    float *head_w, *head_b;
    graft_peft_head(graft_trainer_peft(tr), tm->task, &head_w, &head_b);
    graft_st_tensor_t head[2];
    int n_head = 0;
    json_t *labels = json_array();
    if (graft_task_kind(task) == GRAFT_TASK_CLASSIFY) {
        head[0] = (graft_st_tensor_t){"head.weight", 2, {C, K}, head_w, GRAFT_ST_F32};
        head[1] = (graft_st_tensor_t){"head.bias", 1, {K}, head_b, GRAFT_ST_F32};
        n_head = 2;
        for (int k = 0; k < K; k++)
            json_array_append_new(labels, json_string(graft_task_label_name(task, k)));
    }
    char *labels_json = json_dumps(labels, JSON_COMPACT);
    json_decref(labels);
    const char *keys[] = {"graft.task", "graft.kind", "graft.method", "graft.labels", "graft.pool"};
    const char *values[] = {graft_task_name(task), n_head ? "classification" : "generation",
                            pc->run.method, labels_json, pc->run.pool};
    int rc = graft_mkdirs_for(pc->file); /* as train and pretrain make their --out */
    graft_gpt2_t *trunk = graft_trainer_trunk(tr);
    if (!rc) rc = graft_gpt2_save(trunk, pc->file, head, n_head, keys, values, 5);
    free(labels_json);
    if (!rc) { /* a gpt2 trunk loads with its vocabulary beside it */
        char dir[4096];
        graft_path_dir(pc->file, dir, sizeof dir);
        rc = graft_tokenizer_save_files(trunk->tok, dir);
    }
    if (!rc)
        LOG_INFO("exported task %s (%s) to %s", graft_task_name(task), pc->run.method, pc->file);
    return rc;
}

int cmd_export(int argc, char **argv) {
    task_model_config_t pc;
    int prc = parse_task_model(argc, argv, 1, &pc);
    if (prc) return prc > 0 ? 0 : 2;
    if (!*pc.file) {
        LOG_ERROR("graft export needs --file OUT.safetensors (where to write the model)");
        return 2;
    }
    task_model_t tm;
    int rc = task_model_open(&pc, "export", &tm);
    if (rc) return rc;
    rc = export_trunk(&tm, &pc);
    task_model_close(&tm);
    return rc ? 1 : 0;
}
