/* main.c — the `graft` front end: dispatches to subcommands. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "graft.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"pretrain", cmd_pretrain, "pretrain a trunk on a text corpus (single process)"},
    {"train", cmd_train, "centralized multi-task PEFT training on this machine"},
    {"eval", cmd_eval, "evaluate saved modules on each task's test split"},
    {"predict", cmd_predict, "run one task's trained modules on new inputs (stdin or --text)"},
    {"export", cmd_export, "write one task's model as a plain trunk checkpoint (modules folded)"},
    {"inspect", cmd_inspect, "count trainable parameters per scope, task and method"},
    {"run", cmd_run, "federated run on this machine: a coordinator and K workers (ZeroMQ)"},
    {"coordinator", cmd_coordinator, "coordinate a federated run over ZeroMQ (binds)"},
    {"worker", cmd_worker, "a federated worker: trains its shards for a coordinator"},
    {"mpi", cmd_mpi, "federated run under mpirun: rank 0 coordinates, the rest work"},
    {"data", cmd_data, "task data: `data prepare` (the real tasks), `data shard` (client shards)"},
    {"mask", cmd_mask, "sparse grafting masks: `graft mask overlap` (Jaccard matrix), `show`"},
    {"tokenize", cmd_tokenize, "token ids of texts under a trunk's tokenizer (byte or GPT-2 BPE)"},
    {"keygen", cmd_keygen, "write a CurveZMQ keypair for a coordinator or a worker"},
    {"report", cmd_report, "summary table and PNG plots from runs' JSON-lines event logs"},
    {"bench", cmd_bench, "benchmarks: `graft bench step` (training step throughput)"},
};
#define NUM_COMMANDS (sizeof commands / sizeof commands[0])

/* The command that has option `name` among its own (not the run options,
 * which the commands reading config files share), or NULL: config files
 * that other commands wrote (OUT/config.txt) skip those settings. */
static const char *option_owner(const char *name) {
    for (const cli_option_table_t *t = cli_option_tables; t->command; t++)
        if (t->table != graft_run_options && graft_options_find(t->table, name))
            return t->command;
    return NULL;
}

static void usage(FILE *out) {
    fprintf(out,
            "graft %s — multi-task and federated parameter-efficient fine-tuning\n\n"
            "usage: graft COMMAND [options]   (graft COMMAND --help for its options)\n\n"
            "commands:\n",
            GRAFT_VERSION);
    for (size_t i = 0; i < NUM_COMMANDS; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("graft %s\n", GRAFT_VERSION);
        return 0;
    }
    if (cli_set_log_level("")) return 2; /* GRAFT_LOG_LEVEL; --log_level may override it */
    graft_options_set_owner(option_owner);
    for (size_t i = 0; i < NUM_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "graft: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
