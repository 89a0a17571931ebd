/* options.c — the option table machinery of options.h. */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "graft.h"

static const graft_option_t *find_exact(const graft_option_t *table, const char *name) {
    for (const graft_option_t *o = table; o->name; o++)
        if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

const graft_option_t *graft_options_find(const graft_option_t *table, const char *name) {
    const graft_option_t *o = find_exact(table, name);
    if (o && o->type == GRAFT_OPT_ALIAS) {
        o = find_exact(table, o->def);
        GRAFT_ASSERT(o && o->type != GRAFT_OPT_ALIAS);
    }
    return o;
}

/* Says that name, as spelled in where, is an old spelling of option o. */
static void warn_alias(const graft_option_t *o, const char *name, const char *where) {
    if (strcmp(o->name, name) != 0)
        LOG_WARN("%s: option '%s' is deprecated: it is now spelled '%s' (the old spelling "
                 "still works, for now)", where, name, o->name);
}

/* 1 or 0 for a boolean word, -1 for anything else. */
static int bool_word(const char *v) {
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) return 1;
    if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off")) return 0;
    return -1;
}

static int in_bounds(const graft_option_t *o, double x) {
    return o->min > o->max || (x >= o->min && x <= o->max);
}

int graft_options_set(const graft_option_t *table, void *target, const char *name,
                      const char *value, const char *where) {
    const graft_option_t *o = graft_options_find(table, name);
    if (!o) {
        LOG_ERROR("%s: unknown option '%s' (see --help)", where, name);
        return GRAFT_EINVAL;
    }
    warn_alias(o, name, where);
    name = o->name;
    char *field = (char *)target + o->offset;
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case GRAFT_OPT_INT: {
        long x = strtol(value, &end, 10);
        if (errno || end == value || *end || x < INT_MIN || x > INT_MAX ||
            !in_bounds(o, (double)x))
            goto bad;
        *(int *)field = (int)x;
        return GRAFT_OK;
    }
    case GRAFT_OPT_FLOAT: {
        double x = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(x) || fabs(x) > FLT_MAX ||
            !in_bounds(o, x))
            goto bad;
        *(float *)field = (float)x;
        return GRAFT_OK;
    }
    case GRAFT_OPT_BOOL: {
        int x = bool_word(value);
        if (x < 0) goto bad;
        *(int *)field = x;
        return GRAFT_OK;
    }
    case GRAFT_OPT_STRING:
        if (strlen(value) >= GRAFT_OPT_STR) {
            LOG_ERROR("%s: value of '%s' is longer than %d characters", where, name,
                      GRAFT_OPT_STR - 1);
            return GRAFT_EINVAL;
        }
        strcpy(field, value);
        return GRAFT_OK;
    case GRAFT_OPT_ALIAS: break; /* graft_options_find resolved it */
    }
bad:
    if (o->min <= o->max && o->type != GRAFT_OPT_BOOL)
        LOG_ERROR("%s: '%s' for option '%s' is not a %s in [%g, %g]", where, value, name,
                  o->type == GRAFT_OPT_INT ? "whole number" : "number", o->min, o->max);
    else
        LOG_ERROR("%s: '%s' is not a valid %s for option '%s'", where, value,
                  o->type == GRAFT_OPT_BOOL ? "boolean (true/false)" : "number", name);
    return GRAFT_EINVAL;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* The set whose table has option name, or NULL. */
static const graft_option_set_t *find_set(const graft_option_set_t *sets, int nsets,
                                          const char *name) {
    for (int k = 0; k < nsets; k++)
        if (graft_options_find(sets[k].table, name)) return &sets[k];
    return NULL;
}

static int set_in_sets(const graft_option_set_t *sets, int nsets, const char *name,
                       const char *value, const char *where) {
    const graft_option_set_t *set = find_set(sets, nsets, name);
    return graft_options_set(set ? set->table : sets[0].table, set ? set->target : sets[0].target,
                             name, value, where);
}

/* Cuts line at its comment: a # at its start or after a blank. */
static void cut_comment(char *line) {
    for (char *p = line; *p; p++)
        if (*p == '#' && (p == line || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            return;
        }
}

/* 1 when line (read by fgets into a buffer of cap bytes) is the start of a
 * longer one: the buffer is full and more of the line follows. */
static int line_cut_short(FILE *f, const char *line, size_t cap) {
    size_t len = strlen(line);
    if (len < cap - 1 || line[len - 1] == '\n') return 0;
    int c = getc(f);
    if (c == EOF) return 0;
    ungetc(c, f);
    return 1;
}

static const char *(*option_owner)(const char *name);

/* In the header line of the config files graft writes (cli_write_config). */
#define SETTINGS_MARK ": effective settings"

void graft_options_set_owner(const char *(*owner)(const char *name)) {
    option_owner = owner;
}

/* Another command's option (graft_options_set_owner): noted in skipped
 * ("name, ..."), and 1; else 0. */
static int skip_foreign(const graft_option_set_t *sets, int nsets, const char *name,
                        char *skipped, size_t n) {
    if (!option_owner || find_set(sets, nsets, name) || !option_owner(name)) return 0;
    size_t at = strlen(skipped);
    snprintf(skipped + at, n - at, "%s%s", at ? ", " : "", name);
    return 1;
}

static int load_file_sets(const graft_option_set_t *sets, int nsets, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        LOG_ERROR("%s: cannot open config file: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    /* A directory opens and reads as empty; a pipe or /dev/null is a stream. */
    struct stat st = {0};
    if (fstat(fileno(f), &st) != 0 ||
        !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode))) {
        LOG_ERROR("%s: --config needs a file of `name = value` lines; this is %s", path,
                  S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
        fclose(f);
        return GRAFT_EIO;
    }
    char line[4096], where[512], skipped[512] = "";
    int lineno = 0, rc = GRAFT_OK, written = 0;
    while (rc == GRAFT_OK && fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (line_cut_short(f, line, sizeof line)) {
            LOG_ERROR("%s: line longer than %zu characters", where, sizeof line - 2);
            rc = GRAFT_EFORMAT;
            break;
        }
        /* Written by graft (graft_options_write_sets): its first line. */
        if (lineno == 1) written = !strncmp(line, "# graft ", 8) && strstr(line, SETTINGS_MARK);
        cut_comment(line);
        char *s = trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            LOG_ERROR("%s: expected 'name = value', got '%s'", where, s);
            rc = GRAFT_EFORMAT;
            break;
        }
        *eq = '\0';
        char *name = trim(s);
        if (!written || !skip_foreign(sets, nsets, name, skipped, sizeof skipped))
            rc = set_in_sets(sets, nsets, name, trim(eq + 1), where);
    }
    fclose(f);
    if (!rc && *skipped)
        LOG_INFO("%s: skipped settings of other graft commands (not this one's): %s", path,
                 skipped);
    return rc;
}

int graft_options_load_file(const graft_option_t *table, void *target, const char *path) {
    graft_option_set_t set = {table, target};
    return load_file_sets(&set, 1, path);
}

static void set_defaults(const graft_option_t *table, void *target) {
    for (const graft_option_t *o = table; o->name; o++) {
        if (o->type == GRAFT_OPT_ALIAS) continue;
        int rc = graft_options_set(table, target, o->name, o->def, "built-in default");
        GRAFT_ASSERT(rc == GRAFT_OK);
    }
}

int graft_options_parse(const graft_option_t *table, void *target, int argc, char **argv,
                        const char *usage) {
    graft_option_set_t set = {table, target};
    return graft_options_parse_sets(&set, 1, argc, argv, usage, NULL, NULL);
}

int graft_options_parse_args(const graft_option_t *table, void *target, int argc, char **argv,
                             const char *usage, char ***args, int *nargs) {
    graft_option_set_t set = {table, target};
    *args = graft_xcalloc((size_t)argc + 1, sizeof **args);
    return graft_options_parse_sets(&set, 1, argc, argv, usage, *args, nargs);
}

/* 1 when flag argv[i] of option o takes argv[i + 1] as its value: a
 * --name without =VALUE, unless o is a boolean and argv[i + 1] no boolean
 * word. */
static int takes_next(const graft_option_t *o, int argc, char **argv, int i) {
    if (strchr(argv[i] + 2, '=') || i + 1 >= argc) return 0;
    return o->type != GRAFT_OPT_BOOL || bool_word(argv[i + 1]) >= 0;
}

/* The value of flag argv[*i] (--name or --name=value) of option o, moving *i
 * past a value taken from the next argument; NULL (logged) when missing. */
static const char *flag_value(const graft_option_t *o, int argc, char **argv, int *i) {
    const char *eq = strchr(argv[*i] + 2, '=');
    if (eq) return eq + 1;
    if (takes_next(o, argc, argv, *i)) return argv[++*i];
    if (o->type == GRAFT_OPT_BOOL) return "true";
    LOG_ERROR("option --%s needs a value", o->name);
    return NULL;
}

/* The option of flag arg (--name or --name=value) in sets, or NULL; name
 * (128 bytes) gets the name as spelled. */
static const graft_option_t *flag_option(const graft_option_set_t *sets, int nsets,
                                         const char *arg, const graft_option_set_t **set,
                                         char *name) {
    const char *eq = strchr(arg + 2, '=');
    size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    if (len >= 128) len = 127;
    memcpy(name, arg + 2, len);
    name[len] = '\0';
    *set = find_set(sets, nsets, name);
    return *set ? graft_options_find((*set)->table, name) : NULL;
}

/* A stray argv[i] right after a bare boolean flag (`--name maybe`) was
 * meant as its value: says which values a boolean takes. */
static void after_bool(const graft_option_set_t *sets, int nsets, char **argv, int i) {
    const graft_option_set_t *set;
    char name[128];
    const graft_option_t *o = i > 1 && !strncmp(argv[i - 1], "--", 2) &&
                                      !strchr(argv[i - 1], '=')
                                  ? flag_option(sets, nsets, argv[i - 1], &set, name) : NULL;
    if (o && o->type == GRAFT_OPT_BOOL)
        LOG_ERROR("--%s is a boolean: its value is one of true, false, yes, no, on, off, 1, 0 "
                  "(not '%s'); a bare --%s is true", name, argv[i], name);
}

int graft_options_parse_sets(const graft_option_set_t *sets, int nsets, int argc, char **argv,
                             const char *usage, char **args, int *nargs) {
    for (int k = 0; k < nsets; k++) set_defaults(sets[k].table, sets[k].target);
    if (nargs) *nargs = 0;
    /* First pass: --help and --config, so the file applies before flags;
     * the values of other flags are skipped (`--name --help` names a
     * run). */
    for (int i = 1; i < argc; i++) {
        const graft_option_set_t *set;
        char name[128];
        const graft_option_t *o = !strncmp(argv[i], "--", 2)
                                      ? flag_option(sets, nsets, argv[i], &set, name) : NULL;
        if (o) {
            i += takes_next(o, argc, argv, i);
            continue;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            graft_options_usage_sets(stdout, sets, nsets, usage);
            return GRAFT_OPTS_HELP;
        }
        if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) {
            const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path || !*path) {
                LOG_ERROR("--config needs a file name");
                return GRAFT_EINVAL;
            }
            int rc = load_file_sets(sets, nsets, path);
            if (rc) return rc;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(arg, "--config=", 9)) continue;
        if (strncmp(arg, "--", 2) != 0 && args && (arg[0] != '-' || !arg[1])) {
            args[(*nargs)++] = argv[i];
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            after_bool(sets, nsets, argv, i);
            LOG_ERROR("unexpected argument '%s' (options are --name value; see --help)", arg);
            return GRAFT_EINVAL;
        }
        const graft_option_set_t *set;
        char name[128];
        const graft_option_t *o = flag_option(sets, nsets, arg, &set, name);
        if (!o) {
            const char *eq = strchr(arg + 2, '=');
            int len = eq ? (int)(eq - arg - 2) : (int)strlen(arg + 2);
            LOG_ERROR("command line --%.*s: unknown option '%.*s' (see --help)", len, arg + 2,
                      len, arg + 2);
            return GRAFT_EINVAL;
        }
        const char *value = flag_value(o, argc, argv, &i);
        if (!value) return GRAFT_EINVAL;
        char where[160];
        snprintf(where, sizeof where, "command line --%s", name);
        int rc = graft_options_set(set->table, set->target, name, value, where);
        if (rc) return rc;
    }
    return GRAFT_OPTS_OK;
}

static const char *type_name(graft_opt_type_t t) {
    switch (t) {
    case GRAFT_OPT_INT: return "N";
    case GRAFT_OPT_FLOAT: return "X";
    case GRAFT_OPT_STRING: return "S";
    case GRAFT_OPT_BOOL: return "[BOOL]";
    case GRAFT_OPT_ALIAS: break;
    }
    return "?";
}

void graft_options_usage(FILE *out, const graft_option_t *table, const char *usage) {
    graft_option_set_t set = {table, NULL};
    graft_options_usage_sets(out, &set, 1, usage);
}

void graft_options_usage_sets(FILE *out, const graft_option_set_t *sets, int nsets,
                              const char *usage) {
    fprintf(out, "%s\n\nOptions (also usable as `name = value` lines in a --config file):\n",
            usage);
    fprintf(out, "  %-28s %s\n", "--config FILE", "read settings from FILE before the flags");
    fprintf(out, "  %-28s %s\n", "--help", "show this help");
    for (int k = 0; k < nsets; k++)
        for (const graft_option_t *o = sets[k].table; o->name; o++) {
            char flag[96];
            if (o->type == GRAFT_OPT_ALIAS) {
                snprintf(flag, sizeof flag, "--%s", o->name);
                fprintf(out, "  %-28s deprecated spelling of --%s\n", flag, o->def);
                continue;
            }
            snprintf(flag, sizeof flag, "--%s %s", o->name, type_name(o->type));
            fprintf(out, "  %-28s %s (default: %s", flag, o->help, *o->def ? o->def : "none");
            if (o->min <= o->max && (o->type == GRAFT_OPT_INT || o->type == GRAFT_OPT_FLOAT))
                fprintf(out, "; range %g..%g", o->min, o->max);
            fprintf(out, ")\n");
        }
}

void graft_options_format(char *buf, size_t n, const graft_option_t *o, const void *target) {
    const char *field = (const char *)target + o->offset;
    switch (o->type) {
    case GRAFT_OPT_INT: snprintf(buf, n, "%d", *(const int *)field); break;
    case GRAFT_OPT_FLOAT: {
        /* The shortest of %g's forms that the parser reads back as the same
         * float (0.1, not 0.100000001); nine digits always do. */
        float x = *(const float *)field;
        for (int digits = 6; digits <= 9; digits++) {
            snprintf(buf, n, "%.*g", digits, (double)x);
            if ((float)strtod(buf, NULL) == x) break;
        }
        break;
    }
    case GRAFT_OPT_BOOL: snprintf(buf, n, "%s", *(const int *)field ? "true" : "false"); break;
    case GRAFT_OPT_STRING: snprintf(buf, n, "%s", field); break;
    case GRAFT_OPT_ALIAS: GRAFT_ASSERT(!"an alias has no value"); break;
    }
}

/* Why value cannot be a config line's value, or NULL when it can. */
static const char *unwritable(const char *value) {
    size_t n = strlen(value);
    if (strpbrk(value, "\n\r")) return "a line break";
    if (n && (isspace((unsigned char)value[0]) || isspace((unsigned char)value[n - 1])))
        return "blanks at an end";
    for (size_t i = 0; i < n; i++)
        if (value[i] == '#' && (i == 0 || isspace((unsigned char)value[i - 1])))
            return "a # that would start a comment";
    return NULL;
}

/* graft_options_dump_sets, with any option named `blank` (NULL: none)
 * written empty. */
static int dump_sets(FILE *out, const graft_option_set_t *sets, int nsets, const char *blank) {
    char buf[GRAFT_OPT_STR + 32];
    int bad = 0;
    for (int k = 0; k < nsets; k++)
        for (const graft_option_t *o = sets[k].table; o->name; o++) {
            if (o->type == GRAFT_OPT_ALIAS) continue;
            graft_options_format(buf, sizeof buf, o, sets[k].target);
            if (blank && !strcmp(o->name, blank)) buf[0] = '\0';
            const char *why = unwritable(buf);
            if (!why) {
                fprintf(out, "%s =%s%s\n", o->name, *buf ? " " : "", buf);
                continue;
            }
            fprintf(out, "# %s: its value holds %s, which a config line cannot\n", o->name, why);
            LOG_WARN("config: the value of --%s holds %s, which a config file cannot hold: "
                     "left out", o->name, why);
            bad++;
        }
    return bad;
}

int graft_options_dump_sets(FILE *out, const graft_option_set_t *sets, int nsets) {
    return dump_sets(out, sets, nsets, NULL);
}

int graft_options_dump(FILE *out, const graft_option_t *table, const void *target) {
    graft_option_set_t set = {table, (void *)target};
    return graft_options_dump_sets(out, &set, 1);
}

int graft_options_write_sets(const char *path, const char *header,
                             const graft_option_set_t *sets, int nsets, const char *blank) {
    if (graft_mkdirs_for(path)) return GRAFT_EIO;
    FILE *f = fopen(path, "w");
    if (!f) {
        LOG_ERROR("%s: cannot write the config: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    fprintf(f, "# %s\n", header);
    dump_sets(f, sets, nsets, blank);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        LOG_ERROR("%s: cannot write the config: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    LOG_INFO("config: the effective settings are in %s (reload with --config)", path);
    return GRAFT_OK;
}

unsigned long long graft_options_digest(const graft_option_t *table, const void *target) {
    unsigned long long h = 1469598103934665603ull;
    char buf[GRAFT_OPT_STR + 32];
    for (const graft_option_t *o = table; o->name; o++) {
        if (o->type == GRAFT_OPT_ALIAS) continue;
        graft_options_format(buf, sizeof buf, o, target);
        for (const char *s = o->name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
        for (const char *s = buf; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}
