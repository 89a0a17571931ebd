/* distributed.c — the distributed commands: `graft coordinator` and
 * `graft worker` (ZeroMQ, one process each, possibly on other machines),
 * `graft run` (a coordinator and K workers on this machine over an ipc://
 * socket in a private folder) and `graft mpi` (under mpirun: rank 0
 * coordinates, the others work).
 *
 * Plain ZeroMQ authenticates nobody: whoever reaches the coordinator's
 * socket can join, receive the modules and send updates. So graft run
 * listens on a socket file in a fresh 0700 folder (removed at exit), and
 * graft coordinator binds a non-loopback address only with CurveZMQ, or
 * when --insecure says the network is trusted.
 *
 * Each command has a small option table of its own (endpoints, keys, worker
 * counts, shards) parsed together with the run option table, so every
 * option is a flag or a config line and every run option works everywhere. */
#include <ctype.h>
#include <errno.h>
#include <mpi.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "coordinator.h"
#include "keys.h"
#include "shared_options.h"
#include "wire.h"
#include "worker.h"

static volatile sig_atomic_t worker_stop = 0;

static void on_signal(int sig) {
    graft_coordinator_stop = sig;
    worker_stop = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

/* Parses a command's own options (table into own) and the run options
 * into cfg, and sets the thread count; 0: ok, 1: --help printed, -1: error
 * (printed). */
static int parse_command(const graft_option_t *table, void *own, int argc, char **argv,
                         const char *usage, graft_run_config_t *cfg) {
    graft_option_set_t sets[] = {{table, own}, {graft_run_options, cfg}};
    int rc = graft_options_parse_sets(sets, 2, argc, argv, usage, NULL, NULL);
    if (rc == GRAFT_OPTS_HELP) return 1;
    if (rc || cli_set_log_level(cfg->log_level)) return -1;
    cli_set_threads(cfg->threads);
    return 0;
}

/* "I/N" with 0 <= I < N, digits only. */
static int parse_shard(const char *s, int *i, int *n) {
    char *slash = NULL, *end = NULL;
    long a = isdigit((unsigned char)s[0]) ? strtol(s, &slash, 10) : -1;
    long b = a >= 0 && *slash == '/' && isdigit((unsigned char)slash[1])
                 ? strtol(slash + 1, &end, 10) : -1;
    if (b < 1 || *end || a >= b || b > 1000000) {
        LOG_ERROR("--shard '%s': expected I/N with 0 <= I < N (whole numbers)", s);
        return GRAFT_EINVAL;
    }
    *i = (int)a;
    *n = (int)b;
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
    "                         [--curve_secret NAME.key --allow FILE | --insecure]\n"
    "                         [run options]\n\n"
    "Coordinates a federated run over ZeroMQ: binds a ROUTER socket, waits for N\n"
    "workers (graft worker), then runs --rounds rounds: sends each worker the shared\n"
    "and task modules, aggregates the replies as they arrive (--aggregate: exact\n"
    "fixed-point sums, independent of arrival order; median and trimmed_mean hold\n"
    "every reply until the round closes), evaluates every --eval_every_rounds,\n"
    "checkpoints to OUT/modules.safetensors, and logs OUT/events.jsonl.\n"
    "--curve_secret turns on CurveZMQ with the keypair NAME.key / NAME.pub; --allow\n"
    "lists the client public keys that may join. Without them, plain ZeroMQ lets\n"
    "anyone who reaches --bind join the run, read its modules and send updates: a\n"
    "--bind other than loopback (127.0.0.1, ::1, localhost) or ipc:// is refused\n"
    "unless --insecure says the network is trusted.";

typedef struct {
    char bind[GRAFT_OPT_STR];
    int workers;
    char curve_secret[GRAFT_OPT_STR];
    char allow[GRAFT_OPT_STR];
    int insecure;
    int stall_timeout_ms;
} coordinator_opts_t;

#define OFF(field) offsetof(coordinator_opts_t, field)
const graft_option_t cli_coordinator_options[] = {
    {"bind", GRAFT_OPT_STRING, OFF(bind), "tcp://*:5555", 0, -1, "ZeroMQ endpoint to bind"},
    GRAFT_OPT_WORKERS(OFF(workers), "1"),
    {"curve_secret", GRAFT_OPT_STRING, OFF(curve_secret), "", 0, -1,
     "CurveZMQ: this coordinator's keypair NAME (NAME.key and NAME.pub, graft keygen); "
     "with --allow"},
    GRAFT_OPT_ALIAS_OF("curve-secret", "curve_secret"),
    {"allow", GRAFT_OPT_STRING, OFF(allow), "", 0, -1,
     "CurveZMQ: file of the client public keys that may join (one Z85 line each)"},
    {"insecure", GRAFT_OPT_BOOL, OFF(insecure), "false", 0, 0,
     "bind a non-loopback --bind without CurveZMQ: anyone who reaches it can join the run, read "
     "its modules and send updates (only on a network you trust)"},
    {"stall_timeout_ms", GRAFT_OPT_INT, OFF(stall_timeout_ms), "0", 0, 1e9,
     "end the run with an error (exit 1) when a round still lacks --min_replies replies N ms "
     "after its deadline; 0: wait forever"},
    GRAFT_OPT_END,
};
#undef OFF

/* The coordinator's ZeroMQ server, bound once the run's message limit is
 * known (graft_coordinator_opts_t.open_transport); `started`, when set,
 * then starts what must follow the bind (graft run's workers). */
typedef struct {
    graft_zmq_opts_t zo;
    graft_transport_t *tp;
    int (*started)(void *ctx, const char *endpoint);
    void *started_ctx;
} zmq_server_t;

static int open_zmq_server(void *ctx, size_t max_msg_bytes, graft_transport_t **tp) {
    zmq_server_t *s = ctx;
    s->zo.max_msg_bytes = max_msg_bytes;
    int rc = graft_transport_zmq_server(&s->zo, &s->tp);
    if (rc) return rc;
    *tp = s->tp;
    const char *ep = graft_transport_zmq_endpoint(s->tp);
    LOG_INFO("coordinator: listening on %s%s", ep, s->zo.keypair ? " (CurveZMQ)" : "");
    return s->started ? s->started(s->started_ctx, ep) : GRAFT_OK;
}

/* The command of a coordinator mode (zmq: graft coordinator). */
static const char *mode_command(const char *mode) {
    return strcmp(mode, "zmq") ? mode : "coordinator";
}

/* Runs the coordinator (mode: zmq for graft coordinator, run or mpi) over
 * `tp`, or with zs over a ZeroMQ server it opens, after writing the
 * effective settings, own (the command's options) and cfg, to
 * OUT/config.txt. */
static int run_coordinator(const graft_run_config_t *cfg, graft_option_set_t own,
                           graft_transport_t *tp, zmq_server_t *zs, int workers,
                           const char *mode, void (*stop_reason)(void *, char *, size_t),
                           void *stop_ctx, int stall_timeout_ms) {
    if (graft_coordinator_check(cfg, workers)) return GRAFT_EINVAL; /* cmd_* checked --out */
    char path[GRAFT_OPT_STR + 16];
    snprintf(path, sizeof path, "%s/config.txt", cfg->out);
    graft_option_set_t sets[] = {own, {graft_run_options, (void *)cfg}};
    if (cli_write_config(path, mode_command(mode), sets, 2))
        return GRAFT_EIO;
    graft_coordinator_opts_t co = {.cfg = *cfg, .expected_workers = workers, .tp = tp,
                                   .mode = mode, .stop_reason = stop_reason,
                                   .stop_ctx = stop_ctx, .stall_timeout_ms = stall_timeout_ms,
                                   .test_result = cli_print_test_result};
    if (zs) {
        co.open_transport = open_zmq_server;
        co.open_ctx = zs;
    }
    return graft_coordinator_run(&co);
}

/* Plain ZeroMQ on `bind`: refused (1) off this machine unless insecure;
 * otherwise said, since anyone who reaches it can join. */
static int refuse_plaintext(const char *bind, int insecure) {
    const char *who = "any user of this machine";
    if (!graft_zmq_endpoint_is_local(bind)) {
        if (!insecure) {
            LOG_ERROR("coordinator: --bind %s without --curve_secret would let anyone who reaches "
                      "it join the run, read its modules and send updates: give --curve_secret "
                      "and --allow (graft keygen; cluster/federated/README.md), bind a loopback "
                      "address (tcp://127.0.0.1:5555), or add --insecure on a network you trust",
                      bind);
            return 1;
        }
        who = "anyone who reaches it (--insecure)";
    }
    LOG_WARN("coordinator: --bind %s is plain ZeroMQ, neither authenticated nor encrypted: %s can "
             "join the run, read its modules and send updates (--curve_secret and --allow admit "
             "only your clients)", bind, who);
    return 0;
}

int cmd_coordinator(int argc, char **argv) {
    coordinator_opts_t co;
    graft_run_config_t cfg;
    int prc = parse_command(cli_coordinator_options, &co, argc, argv, coordinator_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    if (co.workers < 1) {
        LOG_ERROR("graft coordinator --workers %d: it needs at least 1 worker to wait for",
                  co.workers);
        return 2;
    }
    const char *bind = co.bind, *secret = *co.curve_secret ? co.curve_secret : NULL;
    const char *allow_path = *co.allow ? co.allow : NULL;
    if (!secret != !allow_path) {
        LOG_ERROR("--curve_secret and --allow go together: give both for CurveZMQ, or neither");
        return 2;
    }
    if (!secret && refuse_plaintext(bind, co.insecure)) return 2;
    if (graft_coordinator_check(&cfg, co.workers) || cli_check_out(&cfg, "coordinator", 1))
        return 2;
    graft_keypair_t kp;
    graft_key_t *allow = NULL;
    size_t nallow = 0;
    if (secret && (load_keypair(secret, &kp) || graft_keys_read_allow(allow_path, &allow, &nallow)))
        return 1;
    zmq_server_t zs = {.zo = {.endpoint = bind, .keypair = secret ? &kp : NULL, .allow = allow,
                              .nallow = nallow}};
    install_signals();
    int rc = run_coordinator(&cfg, (graft_option_set_t){cli_coordinator_options, &co}, NULL, &zs,
                             co.workers, "zmq", NULL, NULL, co.stall_timeout_ms);
    graft_transport_destroy(&zs.tp);
    free(allow);
    return rc ? 1 : 0;
}

/* ---- graft worker ----------------------------------------------------------- */

static const char *worker_usage =
    "usage: graft worker --connect tcp://HOST:5555 --config RUN [--shard I/N | --data DIR]\n"
    "                    [--name NAME] [--curve NAME.key --server_key SERVER.pub] [run options]\n\n"
    "A federated worker: holds train data of the tasks of --tasks, registers with the\n"
    "coordinator, trains the modules it is sent each round and replies.\n"
    "--shard I/N: every N-th train example of each --tasks file from the I-th (IID).\n"
    "--data DIR: a client folder of a shard directory (graft data shard): the train\n"
    "rows of DIR/NAME.tsv are its data for task NAME; tasks without a file there are\n"
    "not held (non-IID). The coordinator sends the label sets, so the --tasks files\n"
    "of those tasks are not read. --name is its stable identity (default: the folder\n"
    "name, or shard-I-of-N): a restarted worker with the same name takes its place.";

typedef struct {
    char connect[GRAFT_OPT_STR];
    char shard[GRAFT_OPT_STR];
    char data[GRAFT_OPT_STR];
    char name[GRAFT_OPT_STR];
    char curve[GRAFT_OPT_STR];
    char server_key[GRAFT_OPT_STR];
    int hello_timeout_ms;
    int coordinator_timeout_ms;
    char save[GRAFT_OPT_STR];
} worker_cli_t;

#define OFF(field) offsetof(worker_cli_t, field)
const graft_option_t cli_worker_options[] = {
    {"connect", GRAFT_OPT_STRING, OFF(connect), "", 0, -1,
     "the coordinator's ZeroMQ endpoint, tcp://HOST:PORT (required)"},
    {"shard", GRAFT_OPT_STRING, OFF(shard), "", 0, -1,
     "I/N: hold every N-th train example of each --tasks file from the I-th (empty: 0/1)"},
    {"data", GRAFT_OPT_STRING, OFF(data), "", 0, -1,
     "a client folder of a shard directory instead of --shard (non-IID)"},
    {"name", GRAFT_OPT_STRING, OFF(name), "", 0, -1,
     "stable identity (empty: the --data folder's name, or shard-I-of-N)"},
    {"curve", GRAFT_OPT_STRING, OFF(curve), "", 0, -1,
     "CurveZMQ: this worker's keypair NAME (NAME.key and NAME.pub); with --server_key"},
    {"server_key", GRAFT_OPT_STRING, OFF(server_key), "", 0, -1,
     "CurveZMQ: the coordinator's public key file (SERVER.pub)"},
    GRAFT_OPT_ALIAS_OF("server-key", "server_key"),
    {"hello_timeout_ms", GRAFT_OPT_INT, OFF(hello_timeout_ms), "120000", 0, 1e9,
     "give up (exit 1) when the coordinator has not answered this worker's hello within N ms: "
     "it is not running there, it refuses this worker's CurveZMQ key (its --allow list), or "
     "--server_key is not its key (its log says which); 0: wait forever"},
    {"coordinator_timeout_ms", GRAFT_OPT_INT, OFF(coordinator_timeout_ms), "-1", -1, 1e9,
     "once registered, say hello again when the coordinator has been silent for N ms, and exit "
     "1 if that hello is not answered within --hello_timeout_ms (the coordinator is gone); "
     "-1: three round_timeout_ms; 0: wait forever"},
    {"save", GRAFT_OPT_STRING, OFF(save), "", 0, -1,
     "after each evaluation the coordinator asks for, write the modules this worker evaluated "
     "to FILE (atomic; a modules checkpoint of its tasks for graft eval and graft predict "
     "--resume): the round's aggregated shared scope and its task scopes, which under "
     "--personalize are its own, and then also their optimizer state: a worker restarted "
     "with the file of the same run takes its own task modules back (empty: none)"},
    GRAFT_OPT_END,
};
#undef OFF

int cmd_worker(int argc, char **argv) {
    worker_cli_t wc;
    graft_run_config_t cfg;
    int prc = parse_command(cli_worker_options, &wc, argc, argv, worker_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    const char *curve = *wc.curve ? wc.curve : NULL, *server_pub = wc.server_key;
    graft_worker_opts_t wo = {.cfg = cfg, .name = *wc.name ? wc.name : NULL,
                              .data_dir = *wc.data ? wc.data : NULL,
                              .hello_timeout_ms = wc.hello_timeout_ms,
                              .coordinator_timeout_ms = wc.coordinator_timeout_ms,
                              .save_path = *wc.save ? wc.save : NULL};
    int bad = !*wc.connect || !curve != !*server_pub || (*wc.shard && wo.data_dir);
    if (!*wc.connect) LOG_ERROR("--connect tcp://HOST:PORT is required");
    if (!curve != !*server_pub)
        LOG_ERROR("--curve and --server_key go together: give both for CurveZMQ, or neither");
    if (*wc.shard && wo.data_dir) LOG_ERROR("--shard and --data exclude each other");
    if (bad || parse_shard(*wc.shard ? wc.shard : "0/1", &wo.shard_index, &wo.shard_count))
        return 2;
    char ident[GRAFT_OPT_STR];
    if (wo.name) snprintf(ident, sizeof ident, "%s", wo.name);
    else graft_worker_default_name(&wo, ident, sizeof ident);
    graft_keypair_t kp;
    graft_key_t server_key;
    if (curve && (load_keypair(curve, &kp) || graft_keys_read_file(server_pub, &server_key)))
        return 1;
    /* The run's own limit comes with the assignment (the worker checks
     * messages against it); the socket takes any message the protocol allows. */
    graft_zmq_opts_t zo = {.endpoint = wc.connect, .identity = ident,
                           .keypair = curve ? &kp : NULL, .server_key = curve ? &server_key : NULL,
                           .max_msg_bytes = GRAFT_WIRE_HARD_MAX_BYTES};
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
    "(this process) and K worker processes over ZeroMQ on an ipc:// socket in a new\n"
    "folder only this user may enter (in $TMPDIR or /tmp; removed at exit). Worker i\n"
    "holds shard i/K of every task's train data (IID; K defaults to 2), or with\n"
    "--shards the client folder DIR/client-i of a shard directory (graft data shard;\n"
    "K defaults to its number of client folders and may not exceed it). The\n"
    "coordinator evaluates on the full dev/test splits of the --tasks files, or with\n"
    "--eval_on workers the workers on their own rows. With --personalize every\n"
    "worker keeps its own task modules and saves them to OUT/workers/NAME.safetensors.\n"
    "Prints per-task test metrics at the end; stops if a worker process dies.";

static volatile sig_atomic_t child_exited = 0;

static void on_child(int sig) {
    child_exited = 1;
    graft_coordinator_stop = sig;
}

/* graft run's worker processes, for naming the one that died. */
typedef struct {
    pid_t *pids;
    int *status; /* wait status of a process reaped early; -1: not reaped */
    int k;
    const char *shards;
    const graft_run_config_t *cfg;
    int died; /* child_reason named a process that ended before the run */
} children_t;

/* The coordinator's stop_reason: which worker process ended, and how. */
static void child_reason(void *ctx, char *buf, size_t n) {
    children_t *ch = ctx;
    for (int i = 0; i < ch->k && child_exited; i++) {
        int st;
        if (ch->pids[i] <= 0 || waitpid(ch->pids[i], &st, WNOHANG) != ch->pids[i]) continue;
        ch->status[i] = st;
        char data[2 * GRAFT_OPT_STR], name[GRAFT_OPT_STR];
        if (ch->shards) client_dir(ch->shards, i, data, sizeof data);
        graft_worker_opts_t wo = {.shard_index = i, .shard_count = ch->k,
                                  .data_dir = ch->shards ? data : NULL};
        graft_worker_default_name(&wo, name, sizeof name);
        ch->died = 1;
        if (WIFSIGNALED(st))
            snprintf(buf, n, "worker %.200s died (signal %d)", name, WTERMSIG(st));
        else
            snprintf(buf, n, "worker %.200s exited with status %d before the run ended", name,
                     WEXITSTATUS(st));
        return;
    }
}

/* Under --personalize, where a worker of graft run or graft mpi saves the
 * modules it evaluated (--save): OUT/workers/NAME.safetensors. Its own task
 * modules exist nowhere else. NULL for other runs. */
static const char *personal_save_path(const graft_run_config_t *cfg,
                                      const graft_worker_opts_t *wo, char *buf, size_t n) {
    if (!cfg->personalize) return NULL;
    char name[GRAFT_OPT_STR];
    graft_worker_default_name(wo, name, sizeof name);
    snprintf(buf, n, "%s/workers/%s.safetensors", cfg->out, name);
    return buf;
}

/* Starts `graft worker --connect ep (--shard i/k | --data DIR/client-i)
 * [--save FILE] --NAME=VALUE...` with every run option's effective value,
 * as a child that dies with us. */
static pid_t spawn_worker(const char *ep, int i, int k, const char *shards,
                          const graft_run_config_t *cfg) {
    char shard[32], data[2 * GRAFT_OPT_STR], save[3 * GRAFT_OPT_STR];
    snprintf(shard, sizeof shard, "%d/%d", i, k);
    if (shards) client_dir(shards, i, data, sizeof data);
    graft_worker_opts_t wo = {.shard_index = i, .shard_count = k,
                              .data_dir = shards ? data : NULL};
    size_t nopts = 0;
    while (graft_run_options[nopts].name) nopts++;
    char **av = graft_xcalloc(nopts + 10, sizeof *av);
    char *flags = graft_xmalloc(nopts * (GRAFT_OPT_STR + 64));
    int n = 0;
    av[n++] = "graft";
    av[n++] = "worker";
    av[n++] = "--connect";
    av[n++] = (char *)ep;
    av[n++] = shards ? "--data" : "--shard";
    av[n++] = shards ? data : shard;
    if (personal_save_path(cfg, &wo, save, sizeof save)) {
        av[n++] = "--save";
        av[n++] = save;
    }
    for (size_t j = 0; j < nopts; j++) {
        const graft_option_t *o = &graft_run_options[j];
        char *flag = flags + j * (GRAFT_OPT_STR + 64), value[GRAFT_OPT_STR + 32];
        graft_options_format(value, sizeof value, o, cfg);
        snprintf(flag, GRAFT_OPT_STR + 64, "--%s=%s", o->name, value);
        av[n++] = flag;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execv("/proc/self/exe", av);
        _exit(127);
    }
    free(av);
    free(flags);
    if (pid < 0) LOG_ERROR("run: cannot start worker %d", i);
    return pid;
}

/* Once the coordinator listens on ep: its K worker processes. */
static int start_workers(void *ctx, const char *ep) {
    children_t *ch = ctx;
    LOG_INFO("run: coordinator on %s, starting %d workers%s%s", ep, ch->k,
             ch->shards ? " on " : "", ch->shards ? ch->shards : "");
    for (int i = 0; i < ch->k; i++)
        if ((ch->pids[i] = spawn_worker(ep, i, ch->k, ch->shards, ch->cfg)) < 0) return GRAFT_EIO;
    return GRAFT_OK;
}

typedef struct {
    int workers;
    char shards[GRAFT_OPT_STR];
} run_cli_t;

const graft_option_t cli_run_options[] = {
    GRAFT_OPT_WORKERS(offsetof(run_cli_t, workers), "0"),
    GRAFT_OPT_SHARDS(offsetof(run_cli_t, shards)),
    GRAFT_OPT_END,
};

/* The socket file graft run listens on: `coordinator` in a new folder
 * DIR/graft-run-XXXXXX (mode 0700, so that no other user can connect) of
 * $TMPDIR, or of /tmp when $TMPDIR's path would not fit a socket's. */
static int private_socket(char *dir, size_t dn, char *path, size_t pn) {
    const char *tmp = getenv("TMPDIR");
    const char *bases[] = {tmp && *tmp ? tmp : "/tmp", "/tmp"};
    for (int i = 0; i < 2; i++) {
        /* sockaddr_un's sun_path holds 108 bytes with the NUL. */
        if (strlen(bases[i]) + sizeof "/graft-run-XXXXXX/coordinator" > 108) continue;
        snprintf(dir, dn, "%s/graft-run-XXXXXX", bases[i]);
        if (!mkdtemp(dir)) {
            LOG_ERROR("run: cannot create a folder for the coordinator's socket in %s: %s",
                      bases[i], strerror(errno));
            return GRAFT_EIO;
        }
        snprintf(path, pn, "%s/coordinator", dir);
        return GRAFT_OK;
    }
    LOG_ERROR("run: $TMPDIR %s is too long a path for a socket file, and so is /tmp", tmp);
    return GRAFT_EINVAL;
}

static void remove_private_socket(const char *dir, const char *path) {
    if (unlink(path) != 0 && errno != ENOENT)
        LOG_WARN("run: cannot remove %s: %s", path, strerror(errno));
    if (rmdir(dir) != 0) LOG_WARN("run: cannot remove %s: %s", dir, strerror(errno));
}

/* K for graft run: --workers, or the shard directory's client count. */
static int run_workers(int workers, const char *shards) {
    int clients = shards ? count_clients(shards) : 0;
    if (clients < 0) return -1;
    int k = workers ? workers : shards ? clients : 2;
    if (shards && k > clients) {
        LOG_ERROR("--workers %d but %s has only %d client folders (client-000 .. client-%03d)", k,
                  shards, clients, clients - 1);
        return -1;
    }
    return k;
}

int cmd_run(int argc, char **argv) {
    run_cli_t rcli;
    graft_run_config_t cfg;
    int prc = parse_command(cli_run_options, &rcli, argc, argv, run_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    const char *shards = *rcli.shards ? rcli.shards : NULL;
    int k = run_workers(rcli.workers, shards);
    if (k < 0 || graft_coordinator_check(&cfg, k) || cli_check_out(&cfg, "run", 1)) return 2;
    install_signals();
    char dir[GRAFT_OPT_STR], sock[GRAFT_OPT_STR + 32], ep[GRAFT_OPT_STR + 64];
    if (private_socket(dir, sizeof dir, sock, sizeof sock)) return 1;
    snprintf(ep, sizeof ep, "ipc://%s", sock);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    pid_t *pids = graft_xcalloc((size_t)k, sizeof *pids);
    int *status = graft_xmalloc((size_t)k * sizeof *status);
    for (int i = 0; i < k; i++) status[i] = -1;
    children_t children = {.pids = pids, .status = status, .k = k, .shards = shards,
                           .cfg = &cfg};
    zmq_server_t zs = {.zo = {.endpoint = ep}, .started = start_workers,
                       .started_ctx = &children};
    int rc = run_coordinator(&cfg, (graft_option_set_t){cli_run_options, &rcli}, NULL, &zs, k,
                             "run", child_reason, &children, 0);
    if (rc && children.died) LOG_ERROR("run: a worker process ended before the run did (its log "
                                      "is above); stopped");
    signal(SIGCHLD, SIG_DFL);
    graft_transport_destroy(&zs.tp);
    remove_private_socket(dir, sock);
    for (int i = 0; i < k; i++) {
        if (pids[i] <= 0) continue;
        int st = status[i];
        if (st < 0) {
            if (rc) kill(pids[i], SIGTERM);
            waitpid(pids[i], &st, 0);
        }
        /* After a finished run every worker exits 0; one that did not (a
         * failed shutdown, a sanitizer report) fails the command. */
        int failed = WIFSIGNALED(st) || WEXITSTATUS(st);
        if (WIFSIGNALED(st)) LOG_ERROR("run: worker %d ended by signal %d", i, WTERMSIG(st));
        else if (WEXITSTATUS(st)) LOG_ERROR("run: worker %d exited with %d", i, WEXITSTATUS(st));
        if (failed && !rc) rc = GRAFT_EPEER;
    }
    free(pids);
    free(status);
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

typedef struct {
    char shards[GRAFT_OPT_STR];
} mpi_cli_t;

const graft_option_t cli_mpi_options[] = {
    GRAFT_OPT_SHARDS(offsetof(mpi_cli_t, shards)),
    GRAFT_OPT_END,
};

int cmd_mpi(int argc, char **argv) {
    mpi_cli_t mcli;
    graft_run_config_t cfg;
    int prc = parse_command(cli_mpi_options, &mcli, argc, argv, mpi_usage, &cfg);
    if (prc) return prc > 0 ? 0 : 2;
    const char *shards = *mcli.shards ? mcli.shards : NULL;
    int provided = 0, rank = 0, size = 1;
    int mrc = MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    if (mrc != MPI_SUCCESS) {
        char why[MPI_MAX_ERROR_STRING] = "";
        int len = 0;
        MPI_Error_string(mrc, why, &len);
        LOG_ERROR("graft mpi: MPI_Init_thread failed (%s): start it with mpirun -np N", why);
        return 1;
    }
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
    /* Rank 0 owns --out. A refusal on any rank stops every rank before
     * anything runs, alike (each would otherwise wait for the others). */
    int refused = rc || (rank == 0 && cli_check_out(&cfg, "mpi", 1));
    MPI_Allreduce(MPI_IN_PLACE, &refused, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (refused) {
        MPI_Finalize();
        return 2;
    }
    char data[2 * GRAFT_OPT_STR];
    if (shards && rank > 0) client_dir(shards, rank - 1, data, sizeof data);
    graft_transport_t *tp = NULL;
    rc = graft_transport_mpi_new(&tp);
    if (!rc) {
        install_signals();
        if (rank == 0) {
            rc = run_coordinator(&cfg, (graft_option_set_t){cli_mpi_options, &mcli}, tp,
                                 NULL, size - 1, "mpi", NULL, NULL, 0);
        } else {
            graft_worker_opts_t wo = {.cfg = cfg, .shard_index = rank - 1,
                                      .shard_count = size - 1, .tp = tp,
                                      .data_dir = shards ? data : NULL,
                                      .serial_beats = provided < MPI_THREAD_SERIALIZED};
            char save[3 * GRAFT_OPT_STR];
            wo.save_path = personal_save_path(&cfg, &wo, save, sizeof save);
            rc = graft_worker_run(&wo, &worker_stop);
        }
    }
    graft_transport_destroy(&tp);
    if (rc && size >= 2) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
    return rc ? 1 : 0;
}
