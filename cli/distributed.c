/* distributed.c — the distributed commands: `graft coordinator` and
 * `graft worker` (ZeroMQ, one process each, possibly on other machines),
 * `graft run` (a coordinator and K workers on this machine over loopback)
 * and `graft mpi` (under mpirun: rank 0 coordinates, the others work).
 *
 * Each command takes its own few flags first (cli_take_flag) and hands the
 * rest to the run option table, so every run option works everywhere. */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "coordinator.h"
#include "keys.h"
#include "worker.h"

static volatile sig_atomic_t worker_stop = 0;

static void on_signal(int sig) {
    (void)sig;
    graft_coordinator_stop = 1;
    worker_stop = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Removes `--name VALUE` (or --name=VALUE) from argv and returns VALUE, or
 * def when absent. A flag without its value is an error (*bad = 1). */
static const char *take_flag(int *argc, char **argv, const char *name, const char *def, int *bad) {
    size_t n = strlen(name);
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) || strncmp(a + 2, name, n) || (a[2 + n] && a[2 + n] != '='))
            continue;
        int used = a[2 + n] == '=' ? 1 : 2;
        const char *v = used == 1 ? a + 3 + n : (i + 1 < *argc ? argv[i + 1] : NULL);
        if (!v) {
            LOG_ERROR("--%s needs a value", name);
            *bad = 1;
            return def;
        }
        memmove(&argv[i], &argv[i + used], (size_t)(*argc - i - used + 1) * sizeof *argv);
        *argc -= used;
        return v;
    }
    return def;
}

static int has_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}


static int parse_shard(const char *s, int *i, int *n) {
    if (sscanf(s, "%d/%d", i, n) != 2 || *n < 1 || *i < 0 || *i >= *n) {
        LOG_ERROR("--shard '%s': expected I/N with 0 <= I < N", s);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* ---- shard directories (graft data shard): DIR/client-000, client-001, ... */

static void client_dir(const char *dir, int i, char *buf, size_t n) {
    snprintf(buf, n, "%s/client-%03d", dir, i);
}

/* The number of client folders client-000 .. client-(K-1) in a shard
 * directory, or -1 (logged) when it has none. */
static int count_clients(const char *dir) {
    char path[2 * GRAFT_OPT_STR];
    struct stat st;
    int k = 0;
    for (;; k++) {
        client_dir(dir, k, path, sizeof path);
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) break;
    }
    if (k == 0)
        LOG_ERROR("--shards %s: no client-000 folder there (a shard directory holds client-000, "
                  "client-001, ... as written by `graft data shard`)", dir);
    return k ? k : -1;
}

/* "server" or "server.key" -> the keypair NAME for graft_keys_load. */
static int load_keypair(const char *arg, graft_keypair_t *kp) {
    char name[GRAFT_OPT_STR];
    snprintf(name, sizeof name, "%s", arg);
    size_t n = strlen(name);
    if (n > 4 && !strcmp(name + n - 4, ".key")) name[n - 4] = '\0';
    return graft_keys_load(name, kp);
}

/* ---- graft coordinator ------------------------------------------------------ */

static const char *coordinator_usage =
    "usage: graft coordinator --config RUN [--bind tcp://*:5555] [--workers N]\n"
    "                         [--curve-secret NAME.key --allow FILE] [run options]\n\n"
    "Coordinates a federated run over ZeroMQ: binds a ROUTER socket, waits for N\n"
    "workers (graft worker), then runs --rounds rounds: sends each worker the shared\n"
    "and task modules, aggregates the replies as they arrive (--aggregate: exact\n"
    "fixed-point sums, independent of arrival order; median and trimmed_mean hold\n"
    "every reply until the round closes), evaluates every --eval_every_rounds,\n"
    "checkpoints to OUT/modules.safetensors, and logs OUT/events.jsonl.\n"
    "--curve-secret turns on CurveZMQ with the keypair NAME.key / NAME.pub; --allow\n"
    "lists the client public keys that may join.";

static int run_coordinator(const graft_run_config_t *cfg, graft_transport_t *tp, int workers,
                           const char *mode) {
    graft_coordinator_opts_t co = {.cfg = *cfg, .expected_workers = workers, .tp = tp,
                                   .mode = mode};
    return graft_coordinator_run(&co);
}

int cmd_coordinator(int argc, char **argv) {
    int bad = 0;
    const char *bind = take_flag(&argc, argv, "bind", "tcp://*:5555", &bad);
    const char *workers_s = take_flag(&argc, argv, "workers", "1", &bad);
    const char *secret = take_flag(&argc, argv, "curve-secret", NULL, &bad);
    const char *allow_path = take_flag(&argc, argv, "allow", NULL, &bad);
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv, coordinator_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int workers = atoi(workers_s);
    if (bad || workers < 1 || (!secret != !allow_path)) {
        if (!bad) LOG_ERROR("--workers must be >= 1; --curve-secret and --allow go together");
        return 2;
    }
    graft_keypair_t kp;
    graft_key_t *allow = NULL;
    size_t nallow = 0;
    if (secret && (load_keypair(secret, &kp) || graft_keys_read_allow(allow_path, &allow, &nallow)))
        return 1;
    graft_zmq_opts_t zo = {.endpoint = bind, .keypair = secret ? &kp : NULL, .allow = allow,
                           .nallow = nallow};
    graft_transport_t *tp = NULL;
    int rc = graft_transport_zmq_server(&zo, &tp);
    if (!rc) {
        LOG_INFO("coordinator: listening on %s%s", graft_transport_zmq_endpoint(tp),
                 secret ? " (CurveZMQ)" : "");
        install_signals();
        rc = run_coordinator(&cfg, tp, workers, "zmq");
    }
    graft_transport_destroy(&tp);
    free(allow);
    return rc ? 1 : 0;
}

/* ---- graft worker ----------------------------------------------------------- */

static const char *worker_usage =
    "usage: graft worker --connect tcp://HOST:5555 --config RUN [--shard I/N | --data DIR]\n"
    "                    [--name NAME] [--curve NAME.key --server-key SERVER.pub] [run options]\n\n"
    "A federated worker: holds train data of the tasks of --tasks, registers with the\n"
    "coordinator, trains the modules it is sent each round and replies.\n"
    "--shard I/N: every N-th train example of each --tasks file from the I-th (IID).\n"
    "--data DIR: a client folder of a shard directory (graft data shard): the train\n"
    "rows of DIR/NAME.tsv are its data for task NAME; tasks without a file there are\n"
    "not held (non-IID). The coordinator sends the label sets, so the --tasks files\n"
    "of those tasks are not read. --name is its stable identity (default: the folder\n"
    "name, or shard-I-of-N): a restarted worker with the same name takes its place.";

int cmd_worker(int argc, char **argv) {
    int bad = 0;
    const char *connect = take_flag(&argc, argv, "connect", NULL, &bad);
    const char *shard = take_flag(&argc, argv, "shard", NULL, &bad);
    const char *data = take_flag(&argc, argv, "data", NULL, &bad);
    const char *name = take_flag(&argc, argv, "name", NULL, &bad);
    const char *curve = take_flag(&argc, argv, "curve", NULL, &bad);
    const char *server_pub = take_flag(&argc, argv, "server-key", NULL, &bad);
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv, worker_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    graft_worker_opts_t wo = {.cfg = cfg, .name = name, .data_dir = data};
    if (bad || !connect || parse_shard(shard ? shard : "0/1", &wo.shard_index, &wo.shard_count) ||
        (!curve != !server_pub) || (shard && data)) {
        if (!connect) LOG_ERROR("--connect tcp://HOST:PORT is required");
        if (!curve != !server_pub) LOG_ERROR("--curve and --server-key go together");
        if (shard && data) LOG_ERROR("--shard and --data exclude each other");
        return 2;
    }
    char ident[GRAFT_OPT_STR];
    if (name) snprintf(ident, sizeof ident, "%s", name);
    else graft_worker_default_name(&wo, ident, sizeof ident);
    graft_keypair_t kp;
    graft_key_t server_key;
    if (curve && (load_keypair(curve, &kp) || graft_keys_read_file(server_pub, &server_key)))
        return 1;
    graft_zmq_opts_t zo = {.endpoint = connect, .identity = ident,
                           .keypair = curve ? &kp : NULL, .server_key = curve ? &server_key : NULL};
    int rc = graft_transport_zmq_client(&zo, &wo.tp);
    if (!rc) {
        install_signals();
        rc = graft_worker_run(&wo, &worker_stop);
    }
    graft_transport_destroy(&wo.tp);
    return rc ? 1 : 0;
}

/* ---- graft run -------------------------------------------------------------- */

static const char *run_usage =
    "usage: graft run --config RUN [--workers K] [--shards DIR] [run options]\n\n"
    "A federated multi-task run on this machine with no other setup: a coordinator\n"
    "(this process) and K worker processes over ZeroMQ on loopback. Worker i holds\n"
    "shard i/K of every task's train data (IID; K defaults to 2), or with --shards\n"
    "the client folder DIR/client-i of a shard directory (graft data shard; K\n"
    "defaults to its number of client folders and may not exceed it). The\n"
    "coordinator evaluates on the full dev/test splits of the --tasks files.\n"
    "Prints per-task test metrics at the end; stops if a worker process dies.";

static volatile sig_atomic_t child_exited = 0;

static void on_child(int sig) {
    (void)sig;
    child_exited = 1;
    graft_coordinator_stop = 1;
}

/* Starts `graft worker --connect ep (--shard i/k | --data DIR/client-i)
 * ARGS...` as a child that dies with us. */
static pid_t spawn_worker(const char *ep, int i, int k, const char *shards, int argc,
                          char **argv) {
    char shard[32], data[2 * GRAFT_OPT_STR];
    snprintf(shard, sizeof shard, "%d/%d", i, k);
    if (shards) client_dir(shards, i, data, sizeof data);
    char **av = graft_xcalloc((size_t)argc + 8, sizeof *av);
    int n = 0;
    av[n++] = "graft";
    av[n++] = "worker";
    av[n++] = "--connect";
    av[n++] = (char *)ep;
    av[n++] = shards ? "--data" : "--shard";
    av[n++] = shards ? data : shard;
    for (int j = 1; j < argc; j++) av[n++] = argv[j];
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execv("/proc/self/exe", av);
        _exit(127);
    }
    free(av);
    if (pid < 0) LOG_ERROR("run: cannot start worker %d", i);
    return pid;
}

/* K for graft run: --workers, or the shard directory's client count. */
static int run_workers(const char *workers_s, const char *shards) {
    int clients = shards ? count_clients(shards) : 0;
    if (clients < 0) return -1;
    int k = workers_s ? atoi(workers_s) : shards ? clients : 2;
    if (k < 1 || k > 256) {
        LOG_ERROR("--workers must be 1..256");
        return -1;
    }
    if (shards && k > clients) {
        LOG_ERROR("--workers %d but %s has only %d client folders (client-000 .. client-%03d)", k,
                  shards, clients, clients - 1);
        return -1;
    }
    return k;
}

int cmd_run(int argc, char **argv) {
    int bad = 0;
    const char *workers_s = take_flag(&argc, argv, "workers", NULL, &bad);
    const char *shards = take_flag(&argc, argv, "shards", NULL, &bad);
    graft_run_config_t cfg;
    int prc = cli_parse_run(argc, argv, run_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int k = bad ? -1 : run_workers(workers_s, shards);
    if (k < 0 || graft_coordinator_check(&cfg, k)) return 2;
    graft_zmq_opts_t zo = {.endpoint = "tcp://127.0.0.1:*"};
    graft_transport_t *tp = NULL;
    if (graft_transport_zmq_server(&zo, &tp)) return 1;
    char ep[256];
    snprintf(ep, sizeof ep, "%s", graft_transport_zmq_endpoint(tp));
    LOG_INFO("run: coordinator on %s, starting %d workers%s%s", ep, k, shards ? " on " : "",
             shards ? shards : "");
    install_signals();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    pid_t *pids = graft_xcalloc((size_t)k, sizeof *pids);
    int rc = GRAFT_OK;
    for (int i = 0; i < k && !rc; i++)
        if ((pids[i] = spawn_worker(ep, i, k, shards, argc, argv)) < 0) rc = GRAFT_EIO;
    if (!rc) rc = run_coordinator(&cfg, tp, k, "run");
    if (rc && child_exited) LOG_ERROR("run: a worker process ended before the run did (its log "
                                      "is above); stopped");
    signal(SIGCHLD, SIG_DFL);
    graft_transport_destroy(&tp);
    for (int i = 0; i < k; i++) {
        if (pids[i] <= 0) continue;
        if (rc) kill(pids[i], SIGTERM);
        int st = 0;
        waitpid(pids[i], &st, 0);
        if (WIFSIGNALED(st)) LOG_WARN("run: worker %d ended by signal %d", i, WTERMSIG(st));
        else if (WEXITSTATUS(st)) LOG_WARN("run: worker %d exited with %d", i, WEXITSTATUS(st));
    }
    free(pids);
    return rc ? 1 : 0;
}

/* ---- graft mpi -------------------------------------------------------------- */

static const char *mpi_usage =
    "usage: mpirun -np N graft mpi --config RUN [--shards DIR] [run options]\n\n"
    "A federated run over MPI: rank 0 coordinates, ranks 1..N-1 are workers holding\n"
    "shard (rank-1)/(N-1) of every task's train data, or with --shards the client\n"
    "folder DIR/client-(rank-1) of a shard directory (N-1 may not exceed its client\n"
    "folders). Same protocol, aggregation and events as the ZeroMQ commands, so the\n"
    "same seeded job gives the same modules.\n"
    "With fedavg, fedprox and fedadam (and --mpi_collectives, the default) the modules\n"
    "are summed by exact int64 MPI reductions: the shared ones over all ranks, each\n"
    "task's over a communicator of its workers. A reduction waits for every rank;\n"
    "if a rank dies, mpirun aborts the job.";

int cmd_mpi(int argc, char **argv) {
    if (has_help(argc, argv)) {
        graft_options_usage(stdout, graft_run_options, mpi_usage);
        return 0;
    }
    int bad = 0;
    const char *shards = take_flag(&argc, argv, "shards", NULL, &bad);
    graft_run_config_t cfg;
    int prc = bad ? -1 : cli_parse_run(argc, argv, mpi_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    int provided = 0, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = GRAFT_OK;
    if (size < 2) {
        LOG_ERROR("graft mpi needs at least 2 ranks (mpirun -np N, N >= 2)");
        rc = GRAFT_EINVAL;
    }
    int clients = shards && !rc ? count_clients(shards) : 0;
    if (clients < 0 || (shards && !rc && size - 1 > clients)) {
        if (clients > 0 && rank == 0)
            LOG_ERROR("--shards %s has %d client folders for %d worker ranks (mpirun -np %d)",
                      shards, clients, size - 1, clients + 1);
        rc = GRAFT_EINVAL;
    }
    char data[2 * GRAFT_OPT_STR];
    if (shards && rank > 0) client_dir(shards, rank - 1, data, sizeof data);
    graft_transport_t *tp = NULL;
    if (!rc) rc = graft_transport_mpi_new(&tp);
    if (!rc) {
        install_signals();
        if (rank == 0) {
            rc = run_coordinator(&cfg, tp, size - 1, "mpi");
        } else {
            graft_worker_opts_t wo = {.cfg = cfg, .shard_index = rank - 1,
                                      .shard_count = size - 1, .tp = tp,
                                      .data_dir = shards ? data : NULL,
                                      .serial_beats = provided < MPI_THREAD_SERIALIZED};
            rc = graft_worker_run(&wo, &worker_stop);
        }
    }
    graft_transport_destroy(&tp);
    if (rc && size >= 2) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
    return rc ? 1 : 0;
}
