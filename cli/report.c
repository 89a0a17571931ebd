/* report.c — `graft report`: turns the JSON-lines event files of runs
 * (`graft train`, `graft run`/`coordinator`/`mpi`, the `graft` mask method)
 * into a summary table on stdout, OUT/summary.json for scripts, and PNG
 * plots drawn by gnuplot:
 *   OUT/NAME-curves.png   training loss and dev metric per task, per run
 *   OUT/sparsity.png      test metric against mask sparsity (eval events
 *                         that carry "sparsity")
 *   OUT/overlap.png       the task-by-task mask overlap (a "mask_overlap"
 *                         event: {"tasks": [...], "jaccard": [[...]]})
 * Each plot's gnuplot script is kept next to it (NAME.gp, its messages in
 * NAME.gp.log) so it can be tweaked and redrawn.
 *
 * The metric of a task is its accuracy (classification) or chrF
 * (generation), both in points (0..100); a run's average is over its tasks.
 *
 * Ownership: every run's events live in one jansson array owned by the
 * run_t; everything else borrows from it.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "graft.h"

#define MAX_RUNS 256
#define MAX_TASKS 64

typedef struct {
    char name[256];
    json_t *events; /* array of event objects, owned */
} run_t;

static const char *usage =
    "usage: graft report [--out DIR] [--no_plots] RUN...\n\n"
    "Summarises runs from their JSON-lines event logs. Each RUN is an events.jsonl\n"
    "file or a run directory holding one. Prints one row per run: mode, method\n"
    "(+personal: a --personalize run, whose metrics are each client's own model's),\n"
    "the final test metric of every task (accuracy or chrF, in points), their\n"
    "average, the mean ECE of the classification tasks, trainable parameters per\n"
    "task and their share of the trunk, bytes sent per round (federated runs) and\n"
    "wall time. Runs of the `graft` mask method add one row per sparsity. Under the\n"
    "table, each generation task's last test sample (prompt -> output, reference),\n"
    "and for a test evaluation on the workers (--eval_on) the spread of the workers'\n"
    "own metrics on their rows: min, mean and max over the workers.\n\n"
    "Writes DIR/summary.json (the same numbers, for scripts) and, unless\n"
    "--no_plots, PNG plots drawn with gnuplot: DIR/NAME-curves.png per run (training\n"
    "loss and dev metric per task), DIR/sparsity.png (metric against mask sparsity)\n"
    "and DIR/overlap.png (task-by-task mask overlap), each with its .gp script.";

typedef struct {
    char out[GRAFT_OPT_STR];
    int no_plots;
} report_opts_t;

const graft_option_t cli_report_options[] = {
    {"out", GRAFT_OPT_STRING, offsetof(report_opts_t, out), "runs/report", 0, -1,
     "where summary.json and the plots go"},
    {"no_plots", GRAFT_OPT_BOOL, offsetof(report_opts_t, no_plots), "false", 0, -1,
     "only the table and summary.json"},
    GRAFT_OPT_ALIAS_OF("no-plots", "no_plots"),
    GRAFT_OPT_END,
};

/* ---- loading ---------------------------------------------------------- */

/* The fields the report reads and their JSON types ('n' number, 's' string,
 * 'o' object, 'a' array, 'b' boolean; upper case: the event needs it). An
 * event (NULL: any) with such a field of another type is refused. */
static const struct {
    const char *event, *field;
    char type;
} field_types[] = {
    {NULL, "step", 'n'},           {NULL, "round", 'n'},
    {"eval", "task", 'S'},         {"eval", "split", 'S'},
    {"eval", "accuracy", 'n'},     {"eval", "chrf", 'n'},
    {"eval", "loss", 'n'},         {"eval", "ece", 'n'},
    {"eval", "macro_f1", 'n'},     {"eval", "sparsity", 'n'},
    {"eval", "sample", 'o'},       {"eval", "per_worker", 'o'},
    {"train", "loss", 'n'},
    {"round_end", "train_loss", 'n'}, {"round_end", "bytes_in", 'n'},
    {"round_end", "bytes_out", 'n'},  {"run_start", "mode", 's'},
    {"run_start", "method", 's'},  {"run_start", "params", 'o'},
    {"run_start", "personalize", 'b'},
    {"run_end", "seconds", 'n'},   {"run_end", "ok", 'b'},
    {"mask", "trunk", 'n'},        {"mask", "eligible", 'n'},
    {"mask", "per_task_params", 'n'}, {"mask_overlap", "tasks", 'a'},
    {"mask_overlap", "jaccard", 'a'},
};

static int has_type(json_t *v, char type) {
    switch (type) {
    case 'n': return json_is_number(v);
    case 's': return json_is_string(v);
    case 'o': return json_is_object(v);
    case 'a': return json_is_array(v);
    default: return json_is_boolean(v);
    }
}

static const char *type_name(char type) {
    switch (type) {
    case 'n': return "a number";
    case 's': return "a string";
    case 'o': return "an object";
    case 'a': return "an array";
    default: return "true or false";
    }
}

/* 0 when every field the report reads has its type; else -1 after logging
 * the first that does not, at where (file:line). */
static int check_fields(json_t *ev, const char *where) {
    const char *type = json_string_value(json_object_get(ev, "event"));
    for (size_t i = 0; i < sizeof field_types / sizeof field_types[0]; i++) {
        if (field_types[i].event && strcmp(field_types[i].event, type)) continue;
        char t = (char)tolower((unsigned char)field_types[i].type);
        json_t *v = json_object_get(ev, field_types[i].field);
        if (v ? has_type(v, t) : islower((unsigned char)field_types[i].type)) continue;
        LOG_ERROR("report: %s: %s event: field \"%s\" %s %s", where, type,
                  field_types[i].field, v ? "must be" : "is missing; it must be",
                  type_name(t));
        return -1;
    }
    return 0;
}

static int is_event(json_t *e, const char *type) {
    return !strcmp(json_string_value(json_object_get(e, "event")), type);
}

static int from_workers(json_t *e) {
    const char *src = json_string_value(json_object_get(e, "source"));
    return is_event(e, "eval") && src && !strcmp(src, "workers");
}

/* The coordinator's eval event of the same round, task and split as the
 * workers' w, or NULL. */
static json_t *own_twin(const run_t *run, json_t *w) {
    size_t i;
    json_t *e;
    json_array_foreach(run->events, i, e) {
        if (!is_event(e, "eval") || from_workers(e)) continue;
        if (json_equal(json_object_get(e, "round"), json_object_get(w, "round")) &&
            json_equal(json_object_get(e, "task"), json_object_get(w, "task")) &&
            json_equal(json_object_get(e, "split"), json_object_get(w, "split")))
            return e;
    }
    return NULL;
}

/* A run with --eval_on both logs each evaluation twice, from the
 * coordinator and from the workers (the same metrics up to the order of
 * float sums): the report keeps the coordinator's, with the workers' own
 * metrics (per_worker) moved onto it. A run with --eval_on workers has only
 * the workers'. */
static void drop_worker_evals(run_t *run) {
    int own = 0;
    size_t i;
    json_t *e;
    json_array_foreach(run->events, i, e) own |= is_event(e, "eval") && !from_workers(e);
    for (i = json_array_size(run->events); own && i-- > 0;) {
        e = json_array_get(run->events, i);
        if (!from_workers(e)) continue;
        json_t *twin = own_twin(run, e), *pw = json_object_get(e, "per_worker");
        if (twin && pw) json_object_set(twin, "per_worker", pw);
        json_array_remove(run->events, i);
    }
}

/* Does run_start event e start a run from scratch (not resume one)? */
static int fresh_start(json_t *e) {
    json_t *step = json_object_get(e, "step"), *round = json_object_get(e, "round");
    if (json_is_number(step)) return json_number_value(step) == 0;
    if (json_is_number(round)) return json_number_value(round) == 1;
    return 1; /* graft train --method graft: never resumed */
}

/* A folder that held several runs (graft 0.4.0 and earlier let a new run
 * write into an old one's --out) has their events one after the other:
 * keeps those of the last run started from scratch, with its resumptions. */
static void keep_last_run(run_t *run, const char *path) {
    size_t i, from = 0;
    json_t *e;
    json_array_foreach(run->events, i, e) if (is_event(e, "run_start") && fresh_start(e)) from = i;
    if (from == 0) return;
    LOG_WARN("report: %s holds other runs' events before line %zu, where its last run starts: "
             "reporting that one", path, from + 1);
    json_t *last = json_array();
    json_array_foreach(run->events, i, e) if (i >= from) json_array_append(last, e);
    json_decref(run->events);
    run->events = last;
}

/* Reads PATH (an events.jsonl or a directory holding one) into run. A
 * malformed line is an error naming file and line, except a truncated last
 * line (a run killed mid-write), which is skipped with a warning. */
static int load_run(const char *arg, run_t *run) {
    char path[4096];
    struct stat st;
    if (stat(arg, &st) != 0) {
        LOG_ERROR("report: %s: %s", arg, strerror(errno));
        return GRAFT_EIO;
    }
    if (S_ISDIR(st.st_mode)) snprintf(path, sizeof path, "%s/events.jsonl", arg);
    else snprintf(path, sizeof path, "%s", arg);
    FILE *f = fopen(path, "r");
    if (!f) {
        LOG_ERROR("report: %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    /* The run's name: its directory relative to where the user pointed. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", S_ISDIR(st.st_mode) ? arg : path);
    if (!S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, sizeof dir, ".");
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') dir[--n] = '\0';
    const char *base = strrchr(dir, '/');
    /* A longer name is cut to fit: it only labels the run in the report. */
    snprintf(run->name, sizeof run->name, "%.*s", (int)sizeof run->name - 1,
             base ? base + 1 : dir);
    for (char *c = run->name; *c; c++)
        if (*c == ' ' || *c == '"' || *c == '\'') *c = '_';

    run->events = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = GRAFT_OK;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        int complete = line[len - 1] == '\n';
        json_error_t err;
        json_t *ev = json_loads(line, 0, &err);
        if (!ev || !json_is_object(ev) || !json_is_string(json_object_get(ev, "event"))) {
            json_decref(ev);
            if (!complete) {
                LOG_WARN("report: %s:%d: truncated last line skipped", path, lineno);
                break;
            }
            LOG_ERROR("report: %s:%d: not an event object (%s)", path, lineno,
                      ev ? "no \"event\" field" : err.text);
            rc = GRAFT_EFORMAT;
            break;
        }
        char where[4200];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (check_fields(ev, where)) {
            json_decref(ev);
            rc = GRAFT_EFORMAT;
            break;
        }
        json_array_append_new(run->events, ev);
    }
    free(line);
    fclose(f);
    if (!rc) keep_last_run(run, path);
    if (!rc) drop_worker_evals(run);
    if (!rc && json_array_size(run->events) == 0) {
        LOG_ERROR("report: %s: no events", path);
        rc = GRAFT_EFORMAT;
    }
    return rc;
}

/* ---- queries over one run's events ------------------------------------ */

static const char *ev_type(json_t *e) { return json_string_value(json_object_get(e, "event")); }

static double num(json_t *o, const char *key, double dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static const char *str(json_t *o, const char *key, const char *dflt) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

/* The x of an event: its optimiser step (graft train) or round (federated). */
static double ev_x(json_t *e) {
    json_t *v = json_object_get(e, "step");
    if (!json_is_number(v)) v = json_object_get(e, "round");
    return json_is_number(v) ? json_number_value(v) : 0.0;
}

static int is_generation(json_t *e) { return json_object_get(e, "chrf") != NULL; }

/* Task metric in points: accuracy x 100 or chrF. */
static double ev_metric(json_t *e) {
    return is_generation(e) ? num(e, "chrf", NAN) : 100.0 * num(e, "accuracy", NAN);
}

static json_t *first_event(const run_t *r, const char *type) {
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) if (!strcmp(ev_type(e), type)) return e;
    return NULL;
}

static json_t *last_event(const run_t *r, const char *type) {
    json_t *last = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) if (!strcmp(ev_type(e), type)) last = e;
    return last;
}

static int is_eval(json_t *e, const char *split) {
    return !strcmp(ev_type(e), "eval") && !strcmp(str(e, "split", ""), split);
}

/* Tasks in order of their first eval event. */
static int run_tasks(const run_t *r, const char **tasks) {
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) {
        if (strcmp(ev_type(e), "eval")) continue;
        const char *t = str(e, "task", NULL);
        if (!t) continue;
        int seen = 0;
        for (int k = 0; k < n && !seen; k++) seen = !strcmp(tasks[k], t);
        if (!seen && n < MAX_TASKS) tasks[n++] = t;
    }
    return n;
}

/* The last test eval of task at the given sparsity (NAN: not a mask eval). */
static json_t *final_test(const run_t *r, const char *task, double sparsity) {
    json_t *last = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) {
        if (!is_eval(e, "test") || strcmp(str(e, "task", ""), task)) continue;
        double s = num(e, "sparsity", NAN);
        if (isnan(sparsity) ? isnan(s) : s == sparsity) last = e;
    }
    return last;
}

/* Distinct sparsities of the run's test evals, ascending. */
static int run_sparsities(const run_t *r, double *out, int max) {
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) {
        double s = num(e, "sparsity", NAN);
        if (!is_eval(e, "test") || isnan(s)) continue;
        int seen = 0;
        for (int k = 0; k < n && !seen; k++) seen = out[k] == s;
        if (!seen && n < max) out[n++] = s;
    }
    for (int a = 1; a < n; a++) /* insertion sort: a handful of values */
        for (int b = a; b > 0 && out[b - 1] > out[b]; b--) {
            double t = out[b];
            out[b] = out[b - 1];
            out[b - 1] = t;
        }
    return n;
}

/* ---- summary ---------------------------------------------------------- */

/* One summary row: the run's final test metrics (at one sparsity or none). */
static json_t *summary_row(const run_t *r, double sparsity) {
    const char *tasks[MAX_TASKS];
    int nt = run_tasks(r, tasks);
    json_t *start = first_event(r, "run_start"), *end = last_event(r, "run_end");
    json_t *row = json_object(), *per = json_object();
    json_object_set_new(row, "run", json_string(r->name));
    json_object_set_new(row, "mode", json_string(start ? str(start, "mode", "?") : "?"));
    json_object_set_new(row, "method", json_string(start ? str(start, "method", "?") : "?"));
    /* Personal task modules: the metrics are each client's own model's. */
    if (start && json_is_true(json_object_get(start, "personalize")))
        json_object_set_new(row, "personalize", json_true());
    if (!isnan(sparsity)) json_object_set_new(row, "sparsity", json_real(sparsity));
    double msum = 0, esum = 0;
    int mn = 0, en = 0;
    for (int t = 0; t < nt; t++) {
        json_t *e = final_test(r, tasks[t], sparsity);
        if (!e) continue;
        json_t *o = json_object();
        double m = ev_metric(e);
        json_object_set_new(o, "metric", json_real(m));
        json_object_set_new(o, "metric_name", json_string(is_generation(e) ? "chrf" : "accuracy"));
        json_object_set_new(o, "loss", json_real(num(e, "loss", NAN)));
        if (!is_generation(e)) {
            double ece = num(e, "ece", NAN);
            json_object_set_new(o, "ece", json_real(ece));
            json_object_set_new(o, "macro_f1", json_real(num(e, "macro_f1", NAN)));
            if (!isnan(ece)) esum += ece, en++;
        }
        json_t *pw = json_object_get(e, "per_worker"), *m_pw = json_object();
        const char *worker;
        json_t *v;
        json_object_foreach(pw, worker, v) {
            double wm = ev_metric(v);
            json_object_set_new(m_pw, worker, isnan(wm) ? json_null() : json_real(wm));
        }
        if (pw) json_object_set_new(o, "per_worker", m_pw);
        else json_decref(m_pw);
        json_object_set_new(per, tasks[t], o);
        if (!isnan(m)) msum += m, mn++;
    }
    json_object_set_new(row, "tasks", per);
    json_object_set_new(row, "avg", mn ? json_real(msum / mn) : json_null());
    json_object_set_new(row, "ece", en ? json_real(esum / en) : json_null());

    json_t *params = start ? json_object_get(start, "params") : NULL;
    json_t *mask = !isnan(sparsity) ? first_event(r, "mask") : NULL;
    double trunk = params ? num(params, "trunk", NAN) : NAN;
    double per_task = NAN;
    if (mask) {
        per_task = num(mask, "per_task_params", NAN);
        if (isnan(trunk)) trunk = num(mask, "trunk", NAN);
        if (!isnan(num(mask, "eligible", NAN)) && isnan(per_task))
            per_task = round(sparsity * num(mask, "eligible", NAN));
    } else if (params && json_object_size(json_object_get(params, "per_task"))) {
        const char *k;
        json_t *v;
        double s = 0;
        json_object_foreach(json_object_get(params, "per_task"), k, v) s += json_number_value(v);
        per_task = s / (double)json_object_size(json_object_get(params, "per_task"));
    }
    json_object_set_new(row, "trunk_params", isnan(trunk) ? json_null() : json_real(trunk));
    json_object_set_new(row, "params_per_task", isnan(per_task) ? json_null() : json_real(per_task));
    json_object_set_new(row, "share",
                        isnan(per_task) || isnan(trunk) ? json_null() : json_real(per_task / trunk));

    double bytes = 0;
    int rounds = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) if (!strcmp(ev_type(e), "round_end")) {
        bytes += num(e, "bytes_in", 0) + num(e, "bytes_out", 0);
        rounds++;
    }
    json_object_set_new(row, "bytes_per_round", rounds ? json_real(bytes / rounds) : json_null());
    json_object_set_new(row, "rounds", json_integer(rounds));
    json_object_set_new(row, "seconds", end ? json_real(num(end, "seconds", NAN)) : json_null());
    json_object_set_new(row, "ok", json_boolean(end && json_is_true(json_object_get(end, "ok"))));
    return row;
}

static void fmt_num(char *buf, size_t n, json_t *v, const char *fmt) {
    if (json_is_number(v)) snprintf(buf, n, fmt, json_number_value(v));
    else snprintf(buf, n, "-");
}

/* Under the table: each generation task's last test sample (prompt ->
 * output, and the reference) per run, as the run's log printed it. */
static void print_samples(const run_t *runs, int nr) {
    for (int k = 0; k < nr; k++) {
        const char *tasks[MAX_TASKS];
        int nt = run_tasks(&runs[k], tasks);
        for (int t = 0; t < nt; t++) {
            json_t *e = final_test(&runs[k], tasks[t], NAN);
            json_t *sample = e ? json_object_get(e, "sample") : NULL;
            if (!sample) continue;
            printf("sample %s %s: %s -> %s  (reference: %s)\n", runs[k].name, tasks[t],
                   str(sample, "prompt", ""), str(sample, "output", ""),
                   str(sample, "reference", ""));
        }
    }
}

/* Under the table: for each task whose final test evaluation ran on the
 * workers (--eval_on workers|both), the spread of the workers' own metrics
 * on their rows (points): how differently the clients fare. */
static void print_worker_spread(json_t *rows) {
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *task;
        json_t *o;
        json_object_foreach(json_object_get(row, "tasks"), task, o) {
            json_t *pw = json_object_get(o, "per_worker");
            if (json_object_size(pw) < 2) continue;
            const char *worker, *lo = NULL, *hi = NULL;
            json_t *v;
            double sum = 0, min = INFINITY, max = -INFINITY;
            size_t n = 0;
            json_object_foreach(pw, worker, v) {
                double m = json_is_number(v) ? json_number_value(v) : NAN;
                if (isnan(m)) continue; /* a worker without that metric (no decodes) */
                n++;
                sum += m;
                if (m < min) min = m, lo = worker;
                if (m > max) max = m, hi = worker;
            }
            if (n < 2) continue;
            printf("workers %s %s: %zu workers, min %.2f (%s), mean %.2f, max %.2f (%s)\n",
                   str(row, "run", "?"), task, n, min, lo, sum / (double)n, max, hi);
        }
    }
}

static void print_table(json_t *rows) {
    /* Columns: the union of the rows' tasks, in first-seen order. */
    const char *tasks[MAX_TASKS];
    int nt = 0;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(row, "tasks"), k, v) {
            int seen = 0;
            for (int t = 0; t < nt && !seen; t++) seen = !strcmp(tasks[t], k);
            if (!seen && nt < MAX_TASKS) tasks[nt++] = k;
        }
    }
    printf("%-28s %-6s %-20s", "run", "mode", "method");
    for (int t = 0; t < nt; t++) printf(" %12.12s", tasks[t]);
    printf(" %7s %6s %10s %8s %10s %8s\n", "avg", "ECE", "params", "share", "B/round", "seconds");
    json_array_foreach(rows, i, row) {
        char name[64], b[32];
        double sp = num(row, "sparsity", NAN);
        if (isnan(sp)) snprintf(name, sizeof name, "%s", str(row, "run", "?"));
        else snprintf(name, sizeof name, "%s@%g%%", str(row, "run", "?"), 100.0 * sp);
        char method[64];
        snprintf(method, sizeof method, "%s%s", str(row, "method", "?"),
                 json_is_true(json_object_get(row, "personalize")) ? "+personal" : "");
        printf("%-28.28s %-6.6s %-20.20s", name, str(row, "mode", "?"), method);
        for (int t = 0; t < nt; t++) {
            json_t *o = json_object_get(json_object_get(row, "tasks"), tasks[t]);
            fmt_num(b, sizeof b, o ? json_object_get(o, "metric") : NULL, "%.2f");
            printf(" %12s", b);
        }
        fmt_num(b, sizeof b, json_object_get(row, "avg"), "%.2f");
        printf(" %7s", b);
        fmt_num(b, sizeof b, json_object_get(row, "ece"), "%.3f");
        printf(" %6s", b);
        fmt_num(b, sizeof b, json_object_get(row, "params_per_task"), "%.0f");
        printf(" %10s", b);
        json_t *share = json_object_get(row, "share");
        if (json_is_number(share)) snprintf(b, sizeof b, "%.3f%%", 100.0 * json_number_value(share));
        else snprintf(b, sizeof b, "-");
        printf(" %8s", b);
        fmt_num(b, sizeof b, json_object_get(row, "bytes_per_round"), "%.0f");
        printf(" %10s", b);
        fmt_num(b, sizeof b, json_object_get(row, "seconds"), "%.1f");
        printf(" %8s\n", b);
    }
}

/* ---- plots ------------------------------------------------------------ */

/* Runs gnuplot on OUT/NAME.gp; the script is kept. */
static int gnuplot(const char *out, const char *name, const char *script) {
    char path[4096], cmd[8400];
    snprintf(path, sizeof path, "%s/%s.gp", out, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        LOG_ERROR("report: cannot write %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    fputs(script, f);
    fclose(f);
    /* gnuplot's chatter (empty-range warnings) goes to NAME.gp.log. */
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2> '%s.log'", path, path);
    if (system(cmd) != 0) {
        LOG_ERROR("report: gnuplot failed on %s, see %s.log (is gnuplot installed? "
                  "scripts/install-deps.sh installs gnuplot-nox)",
                  path, path);
        return GRAFT_EIO;
    }
    LOG_INFO("report: wrote %s/%s.png", out, name);
    return GRAFT_OK;
}

/* A growable string for gnuplot scripts. */
typedef struct {
    char *s;
    size_t len, cap;
} buf_t;

static void bprintf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(buf_t *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (b->s && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = 2 * b->cap + (size_t)n + 256;
        char *s = graft_xmalloc(b->cap);
        if (b->s) memcpy(s, b->s, b->len + 1);
        else s[0] = '\0';
        free(b->s);
        b->s = s;
    }
}

static void plot_header(buf_t *b, const char *out, const char *name, int w, int h) {
    bprintf(b,
            "set terminal pngcairo size %d,%d font 'Sans,10' noenhanced\nset output '%s/%s.png'\n"
            "set grid\nset key outside right top\n",
            w, h, out, name);
}

/* Training loss (train events or round_end) and, per task, the dev metric
 * as a line and the final test metric as a dot in the same colour. */
static int plot_curves(const char *out, const run_t *r) {
    const char *tasks[MAX_TASKS];
    int nt = run_tasks(r, tasks);
    buf_t b = {0};
    char name[sizeof r->name + 8];
    snprintf(name, sizeof name, "%.255s-curves", r->name);
    plot_header(&b, out, name, 1200, 450);
    int federated = first_event(r, "round_end") != NULL;
    const char *xl = federated ? "round" : "step";
    bprintf(&b, "$loss << EOD\n");
    size_t i;
    json_t *e;
    int nloss = 0;
    json_array_foreach(r->events, i, e) {
        const char *t = ev_type(e);
        double loss = num(e, !strcmp(t, "round_end") ? "train_loss" : "loss", NAN);
        if ((!strcmp(t, "train") || !strcmp(t, "round_end")) && !isnan(loss)) {
            bprintf(&b, "%g %g\n", ev_x(e), loss);
            nloss++;
        }
    }
    bprintf(&b, "EOD\n");
    int has_dev[MAX_TASKS] = {0}, has_test[MAX_TASKS] = {0};
    for (int t = 0; t < nt; t++) {
        for (int split = 0; split < 2; split++) {
            bprintf(&b, "$%s%d << EOD\n", split ? "test" : "task", t);
            json_array_foreach(r->events, i, e) {
                if (!is_eval(e, split ? "test" : "dev") || strcmp(str(e, "task", ""), tasks[t]))
                    continue;
                /* A graft run's masks, and an empty split's evaluation (no metric). */
                if (!isnan(num(e, "sparsity", NAN)) || isnan(ev_metric(e))) continue;
                bprintf(&b, "%g %g\n", ev_x(e), ev_metric(e));
                (split ? has_test : has_dev)[t] = 1;
            }
            bprintf(&b, "EOD\n");
        }
    }
    bprintf(&b, "set multiplot layout 1,2 title '%s'\n", r->name);
    bprintf(&b, "set xlabel '%s'\nset ylabel 'training loss'\nunset key\n", xl);
    if (nloss) bprintf(&b, "plot $loss using 1:2 with lines lw 1.5 title 'loss'\n");
    else bprintf(&b, "set label 1 'no training-loss events' at graph 0.3,0.5\n"
                     "plot [0:1][0:1] -1 notitle\nunset label 1\n");
    bprintf(&b, "set key bottom right\n"
                "set ylabel 'dev metric, final test as a dot (accuracy %% or chrF)'\n");
    int any = 0;
    for (int t = 0; t < nt; t++) {
        if (has_dev[t]) {
            bprintf(&b, "%s $task%d using 1:2 with linespoints lt %d lw 1.5 title '%s'",
                    any ? ", \\\n    " : "plot", t, t + 1, tasks[t]);
            any = 1;
        }
        if (has_test[t]) {
            bprintf(&b, "%s $test%d using 1:2 with points lt %d pt 7 ps 1.5 %s",
                    any ? ", \\\n    " : "plot", t, t + 1,
                    has_dev[t] ? "notitle" : "title 'test'");
            any = 1;
        }
    }
    if (!any)
        bprintf(&b, "set label 2 'no dev evaluations' at graph 0.35,0.5\nplot [0:1][0:1] -1 notitle");
    bprintf(&b, "\nunset multiplot\n");
    int rc = gnuplot(out, name, b.s);
    free(b.s);
    return rc;
}

/* Test metric against sparsity, one line per (run, task): one colour per
 * task, and a task's second and later runs (e.g. other options) dashed. */
static int plot_sparsity(const char *out, const run_t *runs, int n) {
    buf_t b = {0};
    plot_header(&b, out, "sparsity", 900, 550);
    bprintf(&b, "set logscale x\nset xlabel 'mask sparsity (fraction of trunk parameters kept)'\n"
                "set ylabel 'test metric (accuracy %% or chrF)'\n");
    int series = 0, n_seen = 0, drawn[MAX_TASKS] = {0};
    const char *seen[MAX_TASKS];
    buf_t plot = {0};
    for (int k = 0; k < n; k++) {
        double sp[64];
        int ns = run_sparsities(&runs[k], sp, 64);
        if (!ns) continue;
        const char *tasks[MAX_TASKS];
        int nt = run_tasks(&runs[k], tasks);
        for (int t = 0; t < nt; t++) {
            bprintf(&b, "$s%d << EOD\n", series);
            for (int s = 0; s < ns; s++) {
                json_t *e = final_test(&runs[k], tasks[t], sp[s]);
                if (e) bprintf(&b, "%g %g\n", sp[s], ev_metric(e));
            }
            bprintf(&b, "EOD\n");
            int c = 0;
            while (c < n_seen && strcmp(seen[c], tasks[t]) != 0) c++;
            if (c == n_seen && n_seen < MAX_TASKS) seen[n_seen++] = tasks[t];
            int dash = c < MAX_TASKS ? ++drawn[c] : 1;
            bprintf(&plot, "%s $s%d using 1:2 with linespoints lw 1.5 lc %d dt %d pt %d "
                    "title '%s%s%s'", series ? ", \\\n    " : "plot", series, c + 1, dash,
                    dash == 1 ? 7 : 4, n > 1 ? runs[k].name : "", n > 1 ? ": " : "", tasks[t]);
            series++;
        }
    }
    int rc = GRAFT_OK;
    if (series) {
        bprintf(&b, "%s\n", plot.s);
        rc = gnuplot(out, "sparsity", b.s);
    }
    free(plot.s);
    free(b.s);
    return rc;
}

/* The last mask_overlap event of any run, as a heat map with values. */
static int plot_overlap(const char *out, const run_t *runs, int n) {
    json_t *ov = NULL;
    for (int k = 0; k < n; k++) {
        json_t *e = last_event(&runs[k], "mask_overlap");
        if (e) ov = e;
    }
    if (!ov) return GRAFT_OK;
    json_t *tasks = json_object_get(ov, "tasks"), *m = json_object_get(ov, "jaccard");
    size_t nt = json_array_size(tasks);
    if (!nt || json_array_size(m) != nt) {
        LOG_WARN("report: mask_overlap event without a square jaccard matrix; no overlap plot");
        return GRAFT_OK;
    }
    buf_t b = {0};
    plot_header(&b, out, "overlap", 700, 600);
    bprintf(&b, "unset key\nunset grid\nset title 'mask overlap (Jaccard)'\nset cbrange [0:1]\n"
                "set palette defined (0 '#ffffff', 0.5 '#74a9cf', 1 '#0570b0')\nset xtics rotate by -30 (");
    for (size_t i = 0; i < nt; i++)
        bprintf(&b, "%s'%s' %zu", i ? ", " : "", json_string_value(json_array_get(tasks, i)), i);
    bprintf(&b, ")\nset ytics (");
    for (size_t i = 0; i < nt; i++)
        bprintf(&b, "%s'%s' %zu", i ? ", " : "", json_string_value(json_array_get(tasks, i)), i);
    bprintf(&b, ")\nset xrange [-0.5:%zu.5]\nset yrange [%zu.5:-0.5]\n$m << EOD\n", nt - 1, nt - 1);
    for (size_t i = 0; i < nt; i++) {
        json_t *row = json_array_get(m, i);
        for (size_t j = 0; j < nt; j++)
            bprintf(&b, "%zu %zu %g\n", j, i, json_number_value(json_array_get(row, j)));
    }
    bprintf(&b, "EOD\nplot $m using 1:2:3 with image, $m using 1:2:(sprintf('%%.3f',$3)) "
                "with labels font 'Sans,9'\n");
    int rc = gnuplot(out, "overlap", b.s);
    free(b.s);
    return rc;
}

/* ---- command ---------------------------------------------------------- */

int cmd_report(int argc, char **argv) {
    report_opts_t opts;
    char **args;
    int nr = 0;
    int rc = graft_options_parse_args(cli_report_options, &opts, argc, argv, usage, &args, &nr);
    if (rc == GRAFT_OPTS_OK && nr == 0) LOG_ERROR("graft report: no RUN given (see --help)");
    if (rc == GRAFT_OPTS_OK && nr > MAX_RUNS)
        LOG_ERROR("graft report: %d runs, more than %d", nr, MAX_RUNS);
    if (rc || nr == 0 || nr > MAX_RUNS) {
        free(args);
        return rc == GRAFT_OPTS_HELP ? 0 : 2;
    }
    static run_t runs[MAX_RUNS];
    const char *out = opts.out;
    int plots = !opts.no_plots, loaded = 0;
    for (; loaded < nr && !rc; loaded++) rc = load_run(args[loaded], &runs[loaded]);
    free(args);
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.json", out);
    if (!rc && graft_mkdirs_for(path)) rc = GRAFT_EIO;
    json_t *rows = json_array();
    for (int k = 0; k < nr && !rc; k++) {
        double sp[64];
        int ns = run_sparsities(&runs[k], sp, 64);
        json_t *row = summary_row(&runs[k], NAN);
        /* A mask run's rows are its sparsities; an empty base row says nothing. */
        /* Nor does a mask overlap's log: its matrix has a section of its own. */
        int empty = json_object_size(json_object_get(row, "tasks")) == 0;
        if (empty && (ns || first_event(&runs[k], "mask_overlap"))) json_decref(row);
        else json_array_append_new(rows, row);
        for (int s = 0; s < ns; s++) json_array_append_new(rows, summary_row(&runs[k], sp[s]));
    }
    if (!rc) {
        print_table(rows);
        print_samples(runs, nr);
        print_worker_spread(rows);
        json_t *doc = json_pack("{s:O}", "runs", rows);
        for (int k = 0; k < nr; k++) { /* the overlap matrix travels too */
            json_t *ov = last_event(&runs[k], "mask_overlap");
            if (ov) json_object_set(doc, "mask_overlap", ov);
        }
        if (json_dump_file(doc, path, JSON_INDENT(1) | JSON_REAL_PRECISION(8))) {
            LOG_ERROR("report: cannot write %s", path);
            rc = GRAFT_EIO;
        }
        json_decref(doc);
    }
    json_decref(rows);
    if (!rc && plots) {
        for (int k = 0; k < nr && !rc; k++) rc = plot_curves(out, &runs[k]);
        if (!rc) rc = plot_sparsity(out, runs, nr);
        if (!rc) rc = plot_overlap(out, runs, nr);
    }
    for (int k = 0; k < loaded; k++) json_decref(runs[k].events);
    return rc ? 1 : 0;
}
