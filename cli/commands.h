/* commands.h — the subcommands of the `graft` front end. Each takes the
 * arguments after its own name (argv[0] is the subcommand) and returns the
 * process exit status. */
#ifndef GRAFT_CLI_COMMANDS_H
#define GRAFT_CLI_COMMANDS_H

#include "runconfig.h"
#include "trainer.h"

int cmd_pretrain(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_coordinator(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_mpi(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_mask(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

/* The commands' own option tables (defined in cli/). The run commands parse theirs
 * together with graft_run_options. */
extern const graft_option_t cli_bench_step_options[];
extern const graft_option_t cli_tokenize_options[];
extern const graft_option_t cli_prepare_options[];
extern const graft_option_t cli_shard_options[];
extern const graft_option_t cli_report_options[];
extern const graft_option_t cli_keygen_options[];
extern const graft_option_t cli_mask_options[];
extern const graft_option_t cli_mask_show_options[];
extern const graft_option_t cli_coordinator_options[];
extern const graft_option_t cli_worker_options[];
extern const graft_option_t cli_run_options[];
extern const graft_option_t cli_mpi_options[];

/* Every option table of every command, for tests: a command that parses
 * several tables together (its own and the run options) has an entry for
 * each, in parsing order. Ends with {NULL, NULL}. */
typedef struct {
    const char *command;
    const graft_option_t *table;
} cli_option_table_t;

extern const cli_option_table_t cli_option_tables[];

/* `graft train` and `graft eval` with --method graft (cli/graft.c). */
int cli_train_graft(const graft_run_config_t *cfg);
int cli_eval_graft(const graft_run_config_t *cfg);

/* 1 if --method is graft, 0 if another method, -1 (logged) if graft is
 * combined with other methods or the list is bad. */
int cli_method_graft(const graft_run_config_t *cfg);

/* Sets OpenBLAS and OpenMP to n threads (n <= 0: all cores); returns n used. */
int cli_set_threads(int n);

/* Sets graft_log_level from a --log_level value, or when it is empty from
 * the GRAFT_LOG_LEVEL environment variable (else info); -1 (logged) when
 * the one used is no level name. */
int cli_set_log_level(const char *level);

/* Writes the effective settings of a command (its option tables, as
 * parsed) to path (OUT/config.txt), for `graft COMMAND --config path`,
 * which repeats the run from its start: --resume is written empty. Logs the
 * path. 0, or -1 (logged) when it cannot be written. */
int cli_write_config(const char *path, const char *command, const graft_option_set_t *sets,
                     int nsets);

/* A new run must not replace another run's files: -1 (logged, naming the
 * ways on) when --out already holds modules.safetensors or events.jsonl,
 * unless the run resumes (--resume, when can_resume) a checkpoint in that
 * folder. */
int cli_check_out(const graft_run_config_t *cfg, const char *command, int can_resume);

/* cli_write_config for a command of the run options alone: OUT/config.txt. */
int cli_write_run_config(const char *command, const graft_run_config_t *cfg);

/* Prints a test result's line on stdout (flushed): the coordinator's
 * graft_coordinator_opts_t.test_result for `graft run`, `coordinator` and
 * `mpi`. */
void cli_print_test_result(void *ctx, const graft_eval_result_t *r, const char *line);

/* Parses the run options (graft_run_options) into cfg and sets the thread
 * count and the log level; 0: ok, 1: --help printed, -1: error (printed). */
int cli_parse_run(int argc, char **argv, const char *usage, graft_run_config_t *cfg);

#endif
