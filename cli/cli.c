/* cli.c — what several subcommands share: the thread count for OpenBLAS
 * and OpenMP, the log level, parsing the run options, writing the
 * effective config, telling --method graft apart and printing the
 * coordinator's test results. */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "peft.h"
#include "pretrain.h"

const cli_option_table_t cli_option_tables[] = {
    {"pretrain", graft_pretrain_options},
    {"bench step", cli_bench_step_options},
    {"train", graft_run_options}, /* also eval, predict, export, inspect */
    {"keygen", cli_keygen_options},
    {"coordinator", cli_coordinator_options},
    {"coordinator", graft_run_options},
    {"worker", cli_worker_options},
    {"worker", graft_run_options},
    {"run", cli_run_options},
    {"run", graft_run_options},
    {"mpi", cli_mpi_options},
    {"mpi", graft_run_options},
    {"report", cli_report_options},
    {"data prepare", cli_prepare_options},
    {"data shard", cli_shard_options},
    {"mask overlap", cli_mask_options},
    {"mask show", cli_mask_show_options},
    {"tokenize", cli_tokenize_options},
    {NULL, NULL},
};

int cli_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return n;
}

void cli_print_test_result(void *ctx, const graft_eval_result_t *r, const char *line) {
    (void)ctx;
    (void)r;
    printf("%s\n", line);
    fflush(stdout);
}

int cli_set_log_level(const char *level) {
    const char *env = getenv("GRAFT_LOG_LEVEL");
    const char *name = *level ? level : env && *env ? env : "info";
    graft_log_level_t l;
    if (graft_log_level_parse(name, &l)) {
        LOG_ERROR("%s '%s': expected error, warn, info or debug",
                  *level ? "--log_level" : "GRAFT_LOG_LEVEL", name);
        return -1;
    }
    graft_log_level = l;
    return 0;
}

int cli_write_config(const char *path, const char *command, const graft_option_set_t *sets,
                     int nsets) {
    char header[160];
    snprintf(header, sizeof header, "graft %s: effective settings (graft %s --config FILE)",
             command, command);
    /* The file repeats the run from its start, not from the checkpoint this
     * process resumed (which would already hold the run's steps). */
    return graft_options_write_sets(path, header, sets, nsets, "resume") ? -1 : 0;
}

/* Is `path` a regular file? */
static int regular_file(const char *path) {
    struct stat st;
    return !stat(path, &st) && S_ISREG(st.st_mode);
}

/* Is file in folder dir (both named any way: resolved)? */
static int in_folder(const char *file, const char *dir) {
    char f[PATH_MAX], d[PATH_MAX];
    if (!realpath(file, f) || !realpath(dir, d)) return 0;
    char *slash = strrchr(f, '/');
    if (!slash) return 0;
    *slash = '\0';
    return !strcmp(*f ? f : "/", d);
}

int cli_check_out(const graft_run_config_t *cfg, const char *command, int can_resume) {
    char ckpt[GRAFT_OPT_STR + 32], events[GRAFT_OPT_STR + 32];
    snprintf(ckpt, sizeof ckpt, "%s/modules.safetensors", cfg->out);
    snprintf(events, sizeof events, "%s/events.jsonl", cfg->out);
    int has_ckpt = regular_file(ckpt);
    if (!has_ckpt && !regular_file(events)) return 0;
    /* Resuming a checkpoint of this folder continues its run. */
    if (can_resume && *cfg->resume && in_folder(cfg->resume, cfg->out)) return 0;
    char how[GRAFT_OPT_STR + 64] = "";
    if (can_resume && has_ckpt) snprintf(how, sizeof how, "continue it with --resume %s, ", ckpt);
    LOG_ERROR("graft %s: --out %s already holds a run (%s), which this one would replace: "
              "%sgive another --out, or remove %s first", command, cfg->out,
              has_ckpt ? ckpt : events, how, cfg->out);
    return -1;
}

int cli_write_run_config(const char *command, const graft_run_config_t *cfg) {
    char path[GRAFT_OPT_STR + 16];
    snprintf(path, sizeof path, "%s/config.txt", cfg->out);
    graft_option_set_t set = {graft_run_options, (void *)cfg};
    return cli_write_config(path, command, &set, 1);
}

int cli_parse_run(int argc, char **argv, const char *usage, graft_run_config_t *cfg) {
    int rc = graft_options_parse(graft_run_options, cfg, argc, argv, usage);
    if (rc == GRAFT_OPTS_HELP) return 1;
    if (rc || cli_set_log_level(cfg->log_level)) return -1;
    cli_set_threads(cfg->threads);
    return 0;
}

int cli_method_graft(const graft_run_config_t *cfg) {
    int methods;
    if (graft_peft_parse_methods(cfg->method, &methods)) return -1;
    if (!(methods & GRAFT_M_GRAFT)) return 0;
    if (methods != GRAFT_M_GRAFT) {
        LOG_ERROR("method graft grafts parameters of a fully fine-tuned trunk and combines "
                  "with no other method (got '%s')", cfg->method);
        return -1;
    }
    return 1;
}
