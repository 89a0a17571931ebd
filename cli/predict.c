/* predict.c — `graft predict`: one task's trained modules on new inputs
 * (class and probability, or the greedy continuation of a prompt). */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "grafting.h"
#include "trainer.h"

static const char *predict_usage =
    "usage: graft predict --config RUN --resume MODULES [--task NAME] [--text TEXT] [options]\n\n"
    "Runs one task's trained modules on new inputs: --text, or else every line of\n"
    "standard input (one input a line, as a task file's text field holds it; a\n"
    "generation task's input is the prompt). Prints one line per input:\n"
    "  classification  LABEL<TAB>PROBABILITY (the most probable class)\n"
    "  generation      the greedy continuation, up to EOS or --gen_tokens bytes,\n"
    "                  with \\, TAB, CR and LF written as \\\\, \\t, \\r and \\n\n"
    "--task names the task among --tasks (needed when there are several).\n"
    "With --method graft, --resume is one mask file of `graft train --method graft`\n"
    "and the task is the mask's.";

typedef struct {
    graft_run_config_t run; /* first: the run options' offsets hold unchanged */
    char task[GRAFT_OPT_STR];
    char text[GRAFT_OPT_STR];
} predict_config_t;

/* Inputs go through the model this many at a time (a multiple of the batch). */
#define CHUNK 256

/* The run options followed by predict's own; owned by the caller (free). */
static graft_option_t *predict_options(void) {
    size_t n = 0;
    while (graft_run_options[n].name) n++;
    graft_option_t *table = graft_xmalloc((n + 3) * sizeof *table);
    memcpy(table, graft_run_options, n * sizeof *table);
    table[n] = (graft_option_t){"task", GRAFT_OPT_STRING, offsetof(predict_config_t, task), "",
                                0, -1, "predict: the task whose modules run (empty: the only one)"};
    table[n + 1] = (graft_option_t){"text", GRAFT_OPT_STRING, offsetof(predict_config_t, text),
                                    "", 0, -1, "predict: one input (empty: read standard input)"};
    table[n + 2] = (graft_option_t)GRAFT_OPT_END;
    return table;
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
static void predict_chunk(graft_trainer_t *tr, int t, char **texts, const size_t *lens, size_t n) {
    const graft_task_t *task = tr->tasks[t];
    if (graft_task_kind(task) == GRAFT_TASK_CLASSIFY) {
        int K = graft_task_num_labels(task);
        float *probs = graft_xmalloc(n * (size_t)K * sizeof(float));
        graft_trainer_classify(tr, t, (const char *const *)texts, lens, n, probs);
        for (size_t i = 0; i < n; i++) {
            const float *p = probs + i * (size_t)K;
            int best = 0;
            for (int k = 1; k < K; k++)
                if (p[k] > p[best]) best = k;
            printf("%s\t%.4f\n", graft_task_label_name(task, best), p[best]);
        }
        free(probs);
    } else {
        size_t cap = (size_t)tr->cfg.gen_tokens + 1;
        char *memory = graft_xmalloc(n * cap);
        char **outs = graft_xmalloc(n * sizeof(char *));
        for (size_t i = 0; i < n; i++) outs[i] = memory + i * cap;
        graft_trainer_generate(tr, t, (const char *const *)texts, lens, n, outs, cap);
        for (size_t i = 0; i < n; i++) print_escaped(outs[i]);
        free(outs);
        free(memory);
    }
    fflush(stdout);
}

/* --text, or standard input CHUNK lines at a time (trailing CR/LF cut). */
static int predict_inputs(graft_trainer_t *tr, int t, const char *text) {
    if (*text) {
        char *one = (char *)text;
        size_t len = strlen(text);
        predict_chunk(tr, t, &one, &len, 1);
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
            predict_chunk(tr, t, lines, lens, n);
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
        if (tr->n_tasks == 1) return 0;
        LOG_ERROR("the run has %d tasks: name one with --task", tr->n_tasks);
        return -1;
    }
    for (int t = 0; t < tr->n_tasks; t++)
        if (!strcmp(graft_task_name(tr->tasks[t]), name)) return t;
    LOG_ERROR("--task %s: not among the run's tasks (--tasks)", name);
    return -1;
}

static int predict_graft(const predict_config_t *pc) {
    if (!*pc->run.resume || strchr(pc->run.resume, ',')) {
        LOG_ERROR("graft predict --method graft needs --resume MASK: one mask file of "
                  "`graft train --method graft`");
        return 2;
    }
    graft_grafting_t *g = NULL;
    if (graft_grafting_new(&pc->run, &g)) return 1;
    graft_mask_t *mask = NULL;
    int t = -1;
    int rc = graft_grafting_load_mask(g, pc->run.resume, &t, &mask);
    if (!rc && *pc->task && strcmp(pc->task, graft_task_name(g->tr->tasks[t]))) {
        LOG_ERROR("--task %s: the mask %s is task %s's", pc->task, pc->run.resume,
                  graft_task_name(g->tr->tasks[t]));
        rc = GRAFT_EINVAL;
    }
    if (!rc) {
        graft_grafting_use_mask(g, mask);
        rc = predict_inputs(g->tr, t, pc->text);
    }
    graft_mask_destroy(&mask);
    graft_grafting_destroy(&g);
    return rc ? 1 : 0;
}

int cmd_predict(int argc, char **argv) {
    graft_option_t *table = predict_options();
    predict_config_t pc;
    int prc = graft_options_parse(table, &pc, argc, argv, predict_usage);
    free(table);
    if (prc == GRAFT_OPTS_HELP) return 0;
    if (prc) return 2;
    cli_set_threads(pc.run.threads);
    int graft = cli_method_graft(&pc.run);
    if (graft) return graft > 0 ? predict_graft(&pc) : 2;
    if (!*pc.run.resume) {
        LOG_ERROR("graft predict needs --resume MODULES (a modules checkpoint of `graft train`, "
                  "`graft run` or `graft mpi`)");
        return 2;
    }
    graft_trainer_t *tr = NULL;
    if (graft_trainer_new(&pc.run, &tr)) return 1;
    int t = pick_task(tr, pc.task);
    int rc = t < 0 ? GRAFT_EINVAL : graft_trainer_load(tr, pc.run.resume);
    if (!rc) rc = predict_inputs(tr, t, pc.text);
    graft_trainer_destroy(&tr);
    return rc ? 1 : 0;
}
