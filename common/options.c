/* options.c — the option table machinery of options.h. */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"

static const graft_option_t *find(const graft_option_t *table, const char *name) {
    for (const graft_option_t *o = table; o->name; o++)
        if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

static int in_bounds(const graft_option_t *o, double x) {
    return o->min > o->max || (x >= o->min && x <= o->max);
}

int graft_options_set(const graft_option_t *table, void *target, const char *name,
                      const char *value, const char *where) {
    const graft_option_t *o = find(table, name);
    if (!o) {
        LOG_ERROR("%s: unknown option '%s' (see --help)", where, name);
        return GRAFT_EINVAL;
    }
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
    case GRAFT_OPT_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes") ||
            !strcmp(value, "on")) {
            *(int *)field = 1;
        } else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no") ||
                   !strcmp(value, "off")) {
            *(int *)field = 0;
        } else {
            goto bad;
        }
        return GRAFT_OK;
    case GRAFT_OPT_STRING:
        if (strlen(value) >= GRAFT_OPT_STR) {
            LOG_ERROR("%s: value of '%s' is longer than %d characters", where, name,
                      GRAFT_OPT_STR - 1);
            return GRAFT_EINVAL;
        }
        strcpy(field, value);
        return GRAFT_OK;
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

int graft_options_load_file(const graft_option_t *table, void *target, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        LOG_ERROR("%s: cannot open config file: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    char line[4096], where[512];
    int lineno = 0, rc = GRAFT_OK;
    while (rc == GRAFT_OK && fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *s = trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            LOG_ERROR("%s: expected 'name = value', got '%s'", where, s);
            rc = GRAFT_EFORMAT;
            break;
        }
        *eq = '\0';
        rc = graft_options_set(table, target, trim(s), trim(eq + 1), where);
    }
    fclose(f);
    return rc;
}

static void set_defaults(const graft_option_t *table, void *target) {
    for (const graft_option_t *o = table; o->name; o++) {
        int rc = graft_options_set(table, target, o->name, o->def, "built-in default");
        GRAFT_ASSERT(rc == GRAFT_OK);
    }
}

int graft_options_parse(const graft_option_t *table, void *target, int argc, char **argv,
                        const char *usage) {
    set_defaults(table, target);
    /* First pass: --help and --config, so the file applies before flags. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            graft_options_usage(stdout, table, usage);
            return GRAFT_OPTS_HELP;
        }
        if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) {
            const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path) {
                LOG_ERROR("--config needs a file name");
                return GRAFT_EINVAL;
            }
            int rc = graft_options_load_file(table, target, path);
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
        if (strncmp(arg, "--", 2) != 0) {
            LOG_ERROR("unexpected argument '%s' (options are --name value; see --help)", arg);
            return GRAFT_EINVAL;
        }
        char name[128];
        const char *value = NULL;
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, arg + 2, len);
        name[len] = '\0';
        const graft_option_t *o = find(table, name);
        if (!o) {
            LOG_ERROR("command line --%s: unknown option '%s' (see --help)", name, name);
            return GRAFT_EINVAL;
        }
        if (eq) {
            value = eq + 1;
        } else if (o->type == GRAFT_OPT_BOOL &&
                   (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            value = "true";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            LOG_ERROR("option --%s needs a value", name);
            return GRAFT_EINVAL;
        }
        char where[160];
        snprintf(where, sizeof where, "command line --%s", name);
        int rc = graft_options_set(table, target, name, value, where);
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
    }
    return "?";
}

void graft_options_usage(FILE *out, const graft_option_t *table, const char *usage) {
    fprintf(out, "%s\n\nOptions (also usable as `name = value` lines in a --config file):\n",
            usage);
    fprintf(out, "  %-28s %s\n", "--config FILE", "read settings from FILE before the flags");
    fprintf(out, "  %-28s %s\n", "--help", "show this help");
    for (const graft_option_t *o = table; o->name; o++) {
        char flag[96];
        snprintf(flag, sizeof flag, "--%s %s", o->name, type_name(o->type));
        fprintf(out, "  %-28s %s (default: %s", flag, o->help, *o->def ? o->def : "none");
        if (o->min <= o->max && (o->type == GRAFT_OPT_INT || o->type == GRAFT_OPT_FLOAT))
            fprintf(out, "; range %g..%g", o->min, o->max);
        fprintf(out, ")\n");
    }
}

static void format_value(char *buf, size_t n, const graft_option_t *o, const void *target) {
    const char *field = (const char *)target + o->offset;
    switch (o->type) {
    case GRAFT_OPT_INT: snprintf(buf, n, "%d", *(const int *)field); break;
    case GRAFT_OPT_FLOAT: snprintf(buf, n, "%.9g", *(const float *)field); break;
    case GRAFT_OPT_BOOL: snprintf(buf, n, "%s", *(const int *)field ? "true" : "false"); break;
    case GRAFT_OPT_STRING: snprintf(buf, n, "%s", field); break;
    }
}

void graft_options_dump(FILE *out, const graft_option_t *table, const void *target) {
    char buf[GRAFT_OPT_STR + 32];
    for (const graft_option_t *o = table; o->name; o++) {
        format_value(buf, sizeof buf, o, target);
        fprintf(out, "%s = %s\n", o->name, buf);
    }
}

unsigned long long graft_options_digest(const graft_option_t *table, const void *target) {
    unsigned long long h = 1469598103934665603ull;
    char buf[GRAFT_OPT_STR + 32];
    for (const graft_option_t *o = table; o->name; o++) {
        format_value(buf, sizeof buf, o, target);
        for (const char *s = o->name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
        for (const char *s = buf; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}
