/* shard.c — task-to-client assignment, non-IID train row shards and the
 * round-robin deal of dev and test rows (shard.h). */
#include "shard.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"

/* Draws of a label skew before giving up on every client getting
 * SKEW_MIN_ROWS rows (or N/clients when that is fewer). */
#define SKEW_DRAWS 1000
#define SKEW_MIN_ROWS 10

struct graft_shard_plan {
    int K, T;
    graft_task_t **tasks;  /* T, borrowed */
    graft_shard_by_t *mode; /* T */
    size_t *train_groups;  /* T: distinct groups among the train rows */
    unsigned char *holds;  /* K*T, [c*T + t] */
    /* [split][c*T + t]: ascending indices into the task's split; NULL when
     * c does not hold t */
    size_t **rows[GRAFT_SPLIT_COUNT];
    size_t *nrows[GRAFT_SPLIT_COUNT];
};

static const char *const by_names[] = {"auto", "group", "label", "iid"};

int graft_shard_by_parse(const char *s, graft_shard_by_t *out) {
    GRAFT_ASSERT(s && out);
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, by_names[i]) == 0) {
            *out = (graft_shard_by_t)i;
            return GRAFT_OK;
        }
    }
    return GRAFT_EINVAL;
}

const char *graft_shard_by_name(graft_shard_by_t by) {
    GRAFT_ASSERT(by >= GRAFT_SHARD_AUTO && by <= GRAFT_SHARD_IID);
    return by_names[by];
}

/* ---- helpers ------------------------------------------------------------ */

static uint64_t name_stream(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void shuffle(graft_rng_t *rng, size_t *a, size_t n) {
    GRAFT_ASSERT(n <= UINT32_MAX);
    for (size_t i = n; i > 1; i--) {
        size_t j = graft_rng_below(rng, (uint32_t)i);
        size_t tmp = a[i - 1];
        a[i - 1] = a[j];
        a[j] = tmp;
    }
}

static size_t *iota(size_t n) {
    size_t *a = graft_xmalloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = i;
    return a;
}

static size_t train_rows(const graft_task_t *task) {
    return graft_task_count(task, GRAFT_SPLIT_TRAIN);
}

/* Rows per group id among the train rows (calloc'ed, num_groups long); the
 * number of non-empty groups in *used. */
static size_t *group_sizes(const graft_task_t *task, size_t *used) {
    size_t *size = graft_xcalloc(graft_task_num_groups(task), sizeof *size);
    *used = 0;
    for (size_t i = 0; i < train_rows(task); i++) {
        size_t g = (size_t)graft_task_group_of(task, GRAFT_SPLIT_TRAIN, i);
        if (size[g]++ == 0) (*used)++;
    }
    return size;
}

/* ---- the three ways to split one task's rows over its n clients -------- */

typedef struct {
    size_t size;
    uint32_t tie;
    size_t id;
} group_order_t;

static int cmp_group_order(const void *a, const void *b) {
    const group_order_t *x = a, *y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    if (x->tie != y->tie) return x->tie < y->tie ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Whole groups, largest first, each to the client with the fewest rows so
 * far; the seed breaks ties between equal groups and permutes the clients. */
static void split_by_group(const graft_task_t *task, int n, graft_rng_t *rng, int *owner) {
    size_t ng = graft_task_num_groups(task), used;
    size_t *size = group_sizes(task, &used);
    group_order_t *order = graft_xmalloc(ng * sizeof *order);
    size_t m = 0;
    for (size_t g = 0; g < ng; g++) {
        uint32_t tie = graft_rng_u32(rng); /* drawn for every group: same stream for all */
        if (size[g]) order[m++] = (group_order_t){size[g], tie, g};
    }
    qsort(order, m, sizeof *order, cmp_group_order);
    size_t *load = graft_xcalloc((size_t)n, sizeof *load);
    int *bin = graft_xmalloc(ng * sizeof *bin);
    for (size_t k = 0; k < m; k++) {
        int best = 0;
        for (int c = 1; c < n; c++)
            if (load[c] < load[best]) best = c;
        bin[order[k].id] = best;
        load[best] += order[k].size;
    }
    size_t *perm = iota((size_t)n);
    shuffle(rng, perm, (size_t)n);
    for (size_t i = 0; i < train_rows(task); i++)
        owner[i] = (int)perm[bin[graft_task_group_of(task, GRAFT_SPLIT_TRAIN, i)]];
    free(perm);
    free(bin);
    free(load);
    free(order);
    free(size);
}

/* A seeded shuffle cut into n nearly equal parts. */
static void split_iid(const graft_task_t *task, int n, graft_rng_t *rng, int *owner) {
    size_t N = train_rows(task);
    size_t *perm = iota(N);
    shuffle(rng, perm, N);
    for (int c = 0; c < n; c++)
        for (size_t k = N * (size_t)c / (size_t)n; k < N * (size_t)(c + 1) / (size_t)n; k++)
            owner[perm[k]] = c;
    free(perm);
}

/* One draw of a label skew: each label's (shuffled) rows cut at the
 * cumulative Dirichlet shares. Returns the fewest rows any client got. */
static size_t skew_draw(const size_t *by_label, const size_t *start, int L, int n, double alpha,
                        graft_rng_t *rng, double *share, int *owner, size_t *load) {
    memset(load, 0, (size_t)n * sizeof *load);
    for (int l = 0; l < L; l++) {
        size_t count = start[l + 1] - start[l];
        if (count == 0) continue;
        graft_rng_dirichlet(rng, alpha, share, n);
        double cum = 0.0;
        size_t from = 0;
        for (int c = 0; c < n; c++) {
            cum += share[c];
            size_t to = c == n - 1 ? count : (size_t)(cum * (double)count + 0.5);
            if (to > count) to = count;
            for (size_t k = from; k < to; k++) owner[by_label[start[l] + k]] = c;
            load[c] += to > from ? to - from : 0;
            if (to > from) from = to;
        }
    }
    size_t fewest = load[0];
    for (int c = 1; c < n; c++)
        if (load[c] < fewest) fewest = load[c];
    return fewest;
}

/* Dirichlet label skew, redrawn until every client has a few rows. */
static int split_by_label(const graft_task_t *task, int n, double alpha, graft_rng_t *rng,
                          int *owner) {
    size_t N = train_rows(task);
    int L = graft_task_num_labels(task);
    size_t *start = graft_xcalloc((size_t)L + 1, sizeof *start);
    graft_task_label_counts(task, GRAFT_SPLIT_TRAIN, start + 1);
    for (int l = 0; l < L; l++) start[l + 1] += start[l];
    size_t *by_label = graft_xmalloc(N * sizeof *by_label), *fill = graft_xmalloc((size_t)L * sizeof *fill);
    memcpy(fill, start, (size_t)L * sizeof *fill);
    for (size_t i = 0; i < N; i++)
        by_label[fill[graft_task_example(task, GRAFT_SPLIT_TRAIN, i)->label_id]++] = i;
    for (int l = 0; l < L; l++) shuffle(rng, by_label + start[l], start[l + 1] - start[l]);

    size_t want = N / (size_t)n < SKEW_MIN_ROWS ? N / (size_t)n : SKEW_MIN_ROWS;
    double *share = graft_xmalloc((size_t)n * sizeof *share);
    size_t *load = graft_xmalloc((size_t)n * sizeof *load);
    int *draw = graft_xmalloc(N * sizeof *draw);
    size_t best = 0;
    int have = 0, draws = 0;
    while (draws < SKEW_DRAWS && (!have || best < want)) {
        size_t fewest = skew_draw(by_label, start, L, n, alpha, rng, share, draw, load);
        draws++;
        if (!have || fewest > best) {
            memcpy(owner, draw, N * sizeof *owner);
            best = fewest;
            have = 1;
        }
    }
    int rc = GRAFT_OK;
    if (best == 0) {
        LOG_ERROR("task %s: label skew with alpha %g left a client without rows in %d draws "
                  "(%d labels over %d clients); raise --alpha, use fewer clients or --by iid",
                  graft_task_name(task), alpha, draws, L, n);
        rc = GRAFT_EINVAL;
    } else if (best < want) {
        LOG_WARN("task %s: label skew with alpha %g: the smallest shard has %zu rows after %d "
                 "draws", graft_task_name(task), alpha, best, draws);
    }
    free(draw);
    free(load);
    free(share);
    free(fill);
    free(by_label);
    free(start);
    return rc;
}

/* ---- planning ----------------------------------------------------------- */

static int resolve_mode(const graft_shard_config_t *cfg, const graft_task_t *task, int n,
                        size_t groups, graft_shard_by_t *mode) {
    const char *name = graft_task_name(task);
    int classify = graft_task_kind(task) == GRAFT_TASK_CLASSIFY;
    size_t N = train_rows(task);
    *mode = cfg->by;
    if (cfg->by == GRAFT_SHARD_AUTO) {
        int meaningful = groups >= (size_t)n && N >= groups * (size_t)cfg->min_group_size;
        *mode = meaningful ? GRAFT_SHARD_GROUP : classify ? GRAFT_SHARD_LABEL : GRAFT_SHARD_IID;
    } else if (cfg->by == GRAFT_SHARD_GROUP && groups < (size_t)n) {
        LOG_ERROR("task %s: --by group needs a group per client: %zu groups in the train rows "
                  "of %s for %d clients", name, groups, graft_task_path(task), n);
        return GRAFT_EINVAL;
    } else if (cfg->by == GRAFT_SHARD_LABEL && !classify) {
        LOG_ERROR("task %s: --by label needs a classification task (%s is generation: its "
                  "labels are free text)", name, graft_task_path(task));
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* Stores owner[i] (an index into clients[0..n)) of each of the N rows of
 * split as the rows of each client, ascending. */
static void keep_owners(graft_shard_plan_t *p, int t, int split, const int *clients, int n,
                        const int *owner, size_t N) {
    for (int k = 0; k < n; k++) {
        size_t cell = (size_t)clients[k] * (size_t)p->T + (size_t)t, m = 0;
        for (size_t i = 0; i < N; i++) m += owner[i] == k;
        p->rows[split][cell] = graft_xmalloc((m ? m : 1) * sizeof(size_t));
        p->nrows[split][cell] = 0;
        for (size_t i = 0; i < N; i++)
            if (owner[i] == k) p->rows[split][cell][p->nrows[split][cell]++] = i;
    }
}

/* The next client of a smooth weighted round-robin over weight[0..n)
 * (total > 0): every client gains its weight, the richest is picked and
 * pays the total; ties go to the lowest index. After j picks client k has
 * been picked within one of j * weight[k] / total times. */
static int weighted_next(int64_t *credit, const size_t *weight, int n, size_t total) {
    int best = 0;
    for (int k = 0; k < n; k++) {
        credit[k] += (int64_t)weight[k];
        if (credit[k] > credit[best]) best = k;
    }
    credit[best] -= (int64_t)total;
    return best;
}

/* owner[0..N) of the rows of a dev or test split under eval_rows follow:
 * the rows of each label in proportion to the clients' train rows of that
 * label (train_owner: the train rows' owners), or to their train rows when
 * the task is a generation task or no client trains on the label. */
static void follow_owners(const graft_task_t *task, int split, int n, const int *train_owner,
                          int *owner) {
    int cls = graft_task_kind(task) == GRAFT_TASK_CLASSIFY;
    int L = cls ? graft_task_num_labels(task) : 1;
    size_t *weight = graft_xcalloc((size_t)(L + 1) * (size_t)n, sizeof *weight);
    size_t *total = graft_xcalloc((size_t)L + 1, sizeof *total);
    int64_t *credit = graft_xcalloc((size_t)(L + 1) * (size_t)n, sizeof *credit);
    size_t *all = weight + (size_t)L * n; /* row L: every train row */
    for (size_t i = 0, N = graft_task_count(task, GRAFT_SPLIT_TRAIN); i < N; i++) {
        int l = cls ? graft_task_example(task, GRAFT_SPLIT_TRAIN, i)->label_id : 0;
        weight[(size_t)l * n + train_owner[i]]++;
        total[l]++;
        all[train_owner[i]]++;
        total[L]++;
    }
    for (size_t i = 0, N = graft_task_count(task, split); i < N; i++) {
        int l = cls ? graft_task_example(task, split, i)->label_id : 0;
        if (!total[l]) l = L;
        owner[i] = weighted_next(credit + (size_t)l * n, weight + (size_t)l * n, n, total[l]);
    }
    free(weight);
    free(total);
    free(credit);
}

/* Dev and test rows, each split on its own, by cfg->eval_follow (shard.h):
 * round-robin in file order over the task's clients (ascending index), or
 * following each client's train rows. The union is the whole split either
 * way: federated evaluation adds up the clients' statistics, and that sum
 * must equal an evaluation on the whole split. */
static void deal_eval_rows(graft_shard_plan_t *p, int t, const int *clients, int n,
                           const int *train_owner, int follow) {
    for (int split = GRAFT_SPLIT_DEV; split <= GRAFT_SPLIT_TEST; split++) {
        size_t N = graft_task_count(p->tasks[t], split);
        int *owner = graft_xmalloc((N ? N : 1) * sizeof *owner);
        if (follow) follow_owners(p->tasks[t], split, n, train_owner, owner);
        else
            for (size_t i = 0; i < N; i++) owner[i] = (int)(i % (size_t)n);
        keep_owners(p, t, split, clients, n, owner, N);
        free(owner);
    }
}

static int shard_task(graft_shard_plan_t *p, int t, const graft_shard_config_t *cfg) {
    const graft_task_t *task = p->tasks[t];
    int *clients = graft_xmalloc((size_t)p->K * sizeof *clients), n = 0;
    for (int c = 0; c < p->K; c++)
        if (p->holds[c * p->T + t]) clients[n++] = c;
    size_t N = train_rows(task), used;
    free(group_sizes(task, &used));
    p->train_groups[t] = used;
    int rc = GRAFT_OK;
    if (N < (size_t)n) {
        LOG_ERROR("task %s: %s has %zu train rows for %d clients; each client needs one",
                  graft_task_name(task), graft_task_path(task), N, n);
        rc = GRAFT_EINVAL;
    }
    if (!rc) rc = resolve_mode(cfg, task, n, used, &p->mode[t]);
    int *owner = graft_xmalloc((N ? N : 1) * sizeof *owner);
    graft_rng_t rng;
    graft_rng_seed(&rng, cfg->seed, name_stream(graft_task_name(task)));
    if (!rc && p->mode[t] == GRAFT_SHARD_GROUP) split_by_group(task, n, &rng, owner);
    if (!rc && p->mode[t] == GRAFT_SHARD_IID) split_iid(task, n, &rng, owner);
    if (!rc && p->mode[t] == GRAFT_SHARD_LABEL)
        rc = split_by_label(task, n, cfg->alpha, &rng, owner);
    if (!rc) {
        keep_owners(p, t, GRAFT_SPLIT_TRAIN, clients, n, owner, N);
        deal_eval_rows(p, t, clients, n, owner, cfg->eval_follow);
    }
    free(owner);
    free(clients);
    return rc;
}

static int check_config(const graft_shard_config_t *cfg, int T, int *M) {
    if (cfg->clients < 1 || T < 1) {
        LOG_ERROR("shard: need at least one client and one task (--clients %d, %d tasks)",
                  cfg->clients, T);
        return GRAFT_EINVAL;
    }
    if (!(cfg->alpha > 0.0)) {
        LOG_ERROR("shard: --alpha must be > 0 (got %g)", cfg->alpha);
        return GRAFT_EINVAL;
    }
    *M = cfg->tasks_per_client ? cfg->tasks_per_client : (T + cfg->clients - 1) / cfg->clients;
    if (*M < 1 || *M > T) {
        LOG_ERROR("shard: --tasks_per_client %d is out of range: there are %d tasks", *M, T);
        return GRAFT_EINVAL;
    }
    if ((long)cfg->clients * *M < T) {
        LOG_ERROR("shard: %d clients x %d tasks each = %ld task slots for %d tasks; every task "
                  "needs a client (raise --clients or --tasks_per_client)", cfg->clients, *M,
                  (long)cfg->clients * *M, T);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

int graft_shard_plan_new(graft_task_t *const *tasks, int n_tasks, const graft_shard_config_t *cfg,
                         graft_shard_plan_t **out) {
    GRAFT_ASSERT(tasks && cfg && out);
    int M;
    int rc = check_config(cfg, n_tasks, &M);
    for (int t = 0; t < n_tasks && !rc; t++) {
        const char *name = graft_task_name(tasks[t]);
        if (name[0] == '.' || name[0] == '\0' ||
            strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
                strlen(name)) {
            LOG_ERROR("shard: task name '%s' cannot name a file (use letters, digits, '_', "
                      "'-', '.')", name);
            rc = GRAFT_EINVAL;
        }
    }
    if (rc) return rc;
    graft_shard_plan_t *p = graft_xcalloc(1, sizeof *p);
    p->K = cfg->clients;
    p->T = n_tasks;
    size_t cells = (size_t)p->K * (size_t)p->T;
    p->tasks = graft_xmalloc((size_t)p->T * sizeof *p->tasks);
    memcpy(p->tasks, tasks, (size_t)p->T * sizeof *p->tasks);
    p->mode = graft_xcalloc((size_t)p->T, sizeof *p->mode);
    p->train_groups = graft_xcalloc((size_t)p->T, sizeof *p->train_groups);
    p->holds = graft_xcalloc(cells, 1);
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        p->rows[s] = graft_xcalloc(cells, sizeof *p->rows[s]);
        p->nrows[s] = graft_xcalloc(cells, sizeof *p->nrows[s]);
    }
    for (int c = 0; c < p->K; c++)
        for (int j = 0; j < M; j++) p->holds[c * p->T + (c * M + j) % p->T] = 1;
    for (int t = 0; t < p->T && !rc; t++) rc = shard_task(p, t, cfg);
    if (rc) {
        graft_shard_plan_destroy(&p);
        return rc;
    }
    *out = p;
    return GRAFT_OK;
}

void graft_shard_plan_destroy(graft_shard_plan_t **self_p) {
    GRAFT_ASSERT(self_p);
    graft_shard_plan_t *p = *self_p;
    if (!p) return;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        for (size_t k = 0; k < (size_t)p->K * (size_t)p->T; k++) free(p->rows[s][k]);
        free(p->rows[s]);
        free(p->nrows[s]);
    }
    free(p->holds);
    free(p->train_groups);
    free(p->mode);
    free(p->tasks);
    free(p);
    *self_p = NULL;
}

/* ---- accessors ---------------------------------------------------------- */

int graft_shard_num_clients(const graft_shard_plan_t *p) { return p->K; }
int graft_shard_num_tasks(const graft_shard_plan_t *p) { return p->T; }

int graft_shard_holds(const graft_shard_plan_t *p, int c, int t) {
    GRAFT_ASSERT(c >= 0 && c < p->K && t >= 0 && t < p->T);
    return p->holds[c * p->T + t];
}

graft_shard_by_t graft_shard_mode(const graft_shard_plan_t *p, int t) {
    GRAFT_ASSERT(t >= 0 && t < p->T);
    return p->mode[t];
}

const size_t *graft_shard_split_rows(const graft_shard_plan_t *p, int c, int t, int split,
                                     size_t *n) {
    GRAFT_ASSERT(n && c >= 0 && c < p->K && t >= 0 && t < p->T);
    GRAFT_ASSERT(split >= 0 && split < GRAFT_SPLIT_COUNT);
    size_t cell = (size_t)c * (size_t)p->T + (size_t)t;
    *n = p->nrows[split][cell];
    return p->rows[split][cell];
}

const size_t *graft_shard_rows(const graft_shard_plan_t *p, int c, int t, size_t *n) {
    return graft_shard_split_rows(p, c, t, GRAFT_SPLIT_TRAIN, n);
}

/* Rows of label l (or of every label when l < 0) that client c holds of t. */
static size_t count_label(const graft_shard_plan_t *p, int c, int t, int l) {
    size_t n, m = 0;
    const size_t *rows = graft_shard_rows(p, c, t, &n);
    if (l < 0) return n;
    for (size_t k = 0; k < n; k++)
        m += graft_task_example(p->tasks[t], GRAFT_SPLIT_TRAIN, rows[k])->label_id == l;
    return m;
}

/* ---- output ------------------------------------------------------------- */

/* Removes the *.tsv files of dir/client-NNN folders and the folders. */
static void remove_old_clients(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "client-", 7) != 0 ||
            strspn(e->d_name + 7, "0123456789") != strlen(e->d_name + 7) || !e->d_name[7])
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        DIR *s = opendir(sub);
        if (!s) continue;
        for (struct dirent *f; (f = readdir(s));) {
            size_t len = strlen(f->d_name);
            if (len > 4 && strcmp(f->d_name + len - 4, ".tsv") == 0) {
                char path[8192];
                snprintf(path, sizeof path, "%s/%s", sub, f->d_name);
                unlink(path);
            }
        }
        closedir(s);
        if (rmdir(sub) != 0)
            LOG_WARN("shard: %s holds files other than task files; left in place", sub);
    }
    closedir(d);
}

/* The client's train rows, then its dev rows, then its test rows, each
 * split in the order of the task's file: grouping by split is what the
 * plan holds, and the loader does not care about the order. */
static int write_client_task(const graft_shard_plan_t *p, int c, int t, FILE *f) {
    const graft_task_t *task = p->tasks[t];
    for (int split = 0; split < GRAFT_SPLIT_COUNT; split++) {
        size_t n;
        const size_t *rows = graft_shard_split_rows(p, c, t, split, &n);
        for (size_t k = 0; k < n; k++) {
            const graft_example_t *ex = graft_task_example(task, split, rows[k]);
            fprintf(f, "%s\t", graft_task_split_name(split));
            fwrite(ex->label, 1, ex->label_len, f);
            fprintf(f, "\t%s\t", ex->group);
            fwrite(ex->text, 1, ex->text_len, f);
            fputc('\n', f);
        }
    }
    return ferror(f) ? GRAFT_EIO : GRAFT_OK;
}

static int write_summary(const graft_shard_plan_t *p, FILE *f) {
    fputs("client\ttask\tlabel\tcount\n", f);
    for (int c = 0; c < p->K; c++) {
        for (int t = 0; t < p->T; t++) {
            if (!p->holds[c * p->T + t]) continue;
            const graft_task_t *task = p->tasks[t];
            int L = graft_task_num_labels(task);
            if (L == 0)
                fprintf(f, "client-%03d\t%s\t*\t%zu\n", c, graft_task_name(task),
                        count_label(p, c, t, -1));
            for (int l = 0; l < L; l++)
                fprintf(f, "client-%03d\t%s\t%s\t%zu\n", c, graft_task_name(task),
                        graft_task_label_name(task, l), count_label(p, c, t, l));
        }
    }
    return ferror(f) ? GRAFT_EIO : GRAFT_OK;
}

/* Writes path through path.tmp and a rename; c < 0 writes the summary. */
static int write_file(const graft_shard_plan_t *p, const char *path, int c, int t) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (graft_mkdirs_for(path)) return GRAFT_EIO;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        LOG_ERROR("shard: cannot create %s: %s", tmp, strerror(errno));
        return GRAFT_EIO;
    }
    int rc = c < 0 ? write_summary(p, f) : write_client_task(p, c, t, f);
    if (fclose(f) != 0) rc = GRAFT_EIO;
    if (!rc && rename(tmp, path) != 0) rc = GRAFT_EIO;
    if (rc) {
        LOG_ERROR("shard: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    return rc;
}

int graft_shard_write(const graft_shard_plan_t *p, const char *dir) {
    GRAFT_ASSERT(p && dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/shards.tsv", dir);
    if (graft_mkdirs_for(path)) return GRAFT_EIO;
    remove_old_clients(dir);
    int rc = GRAFT_OK;
    for (int c = 0; c < p->K && !rc; c++) {
        for (int t = 0; t < p->T && !rc; t++) {
            if (!p->holds[c * p->T + t]) continue;
            snprintf(path, sizeof path, "%s/client-%03d/%s.tsv", dir, c,
                     graft_task_name(p->tasks[t]));
            rc = write_file(p, path, c, t);
        }
    }
    snprintf(path, sizeof path, "%s/shards.tsv", dir);
    return rc ? rc : write_file(p, path, -1, -1);
}

static void print_task(const graft_shard_plan_t *p, int t, FILE *out) {
    const graft_task_t *task = p->tasks[t];
    int L = graft_task_num_labels(task), width = 5;
    for (int l = 0; l < L; l++) {
        int len = (int)strlen(graft_task_label_name(task, l));
        if (len > width) width = len;
    }
    fprintf(out, "\n%s (%s): by %s, %zu train rows in %zu groups\n", graft_task_name(task),
            graft_task_kind_name(graft_task_kind(task)), graft_shard_by_name(p->mode[t]),
            train_rows(task), p->train_groups[t]);
    fprintf(out, "  %-*s", width, "label");
    for (int c = 0; c < p->K; c++) {
        char head[16];
        snprintf(head, sizeof head, "c%d", c);
        if (p->holds[c * p->T + t]) fprintf(out, "  %7s", head);
    }
    fprintf(out, "  %8s\n", "total");
    for (int l = 0; l <= L; l++) {
        int all = l == L; /* the last row: every label (the only row of generation) */
        fprintf(out, "  %-*s", width, all ? "total" : graft_task_label_name(task, l));
        size_t total = 0;
        for (int c = 0; c < p->K; c++) {
            if (!p->holds[c * p->T + t]) continue;
            size_t m = count_label(p, c, t, all ? -1 : l);
            total += m;
            fprintf(out, "  %7zu", m);
        }
        fprintf(out, "  %8zu\n", total);
    }
    fputs("  dev/test rows per client:", out);
    for (int c = 0, first = 1; c < p->K; c++) {
        if (!p->holds[c * p->T + t]) continue;
        size_t dev, test;
        graft_shard_split_rows(p, c, t, GRAFT_SPLIT_DEV, &dev);
        graft_shard_split_rows(p, c, t, GRAFT_SPLIT_TEST, &test);
        fprintf(out, "%s c%d %zu/%zu", first ? "" : ",", c, dev, test);
        first = 0;
    }
    fputc('\n', out);
}

void graft_shard_print(const graft_shard_plan_t *p, FILE *out) {
    GRAFT_ASSERT(p && out);
    fprintf(out, "%d clients, %d tasks; client c holds:", p->K, p->T);
    for (int c = 0; c < p->K; c++) {
        fprintf(out, "%s c%d=", c ? "," : "", c);
        for (int t = 0, first = 1; t < p->T; t++) {
            if (!p->holds[c * p->T + t]) continue;
            fprintf(out, "%s%s", first ? "" : "+", graft_task_name(p->tasks[t]));
            first = 0;
        }
    }
    fputc('\n', out);
    for (int t = 0; t < p->T; t++) print_task(p, t, out);
}
