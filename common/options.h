/* options.h — one table of options drives a command's config file, its
 * command-line flags, its --help and the dump of the effective config
 * (the redis config.c pattern).
 *
 * A command declares a struct of settings and a table of graft_option_t
 * describing each field (name, type, offset, default, bounds, help). Config
 * files hold `name = value` lines of at most 4094 characters; a # at the
 * start of a line or after a blank starts a comment (so a value may hold a
 * # inside a word, as in `name = run#2`); blanks around names and values
 * are dropped. Flags are `--name value` or `--name=value`; booleans also
 * take a bare `--name`.
 * String fields are char[GRAFT_OPT_STR] arrays inside the struct, so the
 * struct owns everything and needs no freeing.
 *
 * An option may have older spellings: a GRAFT_OPT_ALIAS entry (made with
 * GRAFT_OPT_ALIAS_OF) names the option it stands for; a flag or config line
 * that uses it sets that option and logs a warning naming the new spelling.
 * Aliases take no field, default or place in a dump.
 *
 * A command may fill several structs from one command line and config file
 * (its own options and the shared run options: graft_option_set_t), and may
 * take plain arguments (file names) among the flags. A bare boolean flag is
 * true; the next argument is its value only when it is a boolean word.
 */
#ifndef GRAFT_OPTIONS_H
#define GRAFT_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

#define GRAFT_OPT_STR 1024

typedef enum {
    GRAFT_OPT_INT,
    GRAFT_OPT_FLOAT,
    GRAFT_OPT_STRING,
    GRAFT_OPT_BOOL,
    GRAFT_OPT_ALIAS, /* a deprecated spelling: def is the name of the option it stands for */
} graft_opt_type_t;

typedef struct {
    const char *name;
    graft_opt_type_t type;
    size_t offset;      /* offsetof(settings struct, field) */
    const char *def;    /* default, as it would be written in a config file */
    double min, max;    /* bounds for numbers (ignored when min > max) */
    const char *help;
} graft_option_t;

#define GRAFT_OPT_END {NULL, 0, 0, NULL, 0, 0, NULL}

/* The entry of the deprecated spelling `old` of the option `name` of the
 * same table. */
#define GRAFT_OPT_ALIAS_OF(old, name) {(old), GRAFT_OPT_ALIAS, 0, (name), 0, -1, NULL}

/* The option of table named name, or of which name is an alias; NULL when
 * there is none. Logs nothing. */
const graft_option_t *graft_options_find(const graft_option_t *table, const char *name);

/* Outcome of graft_options_parse. */
enum { GRAFT_OPTS_OK = 0, GRAFT_OPTS_HELP = 1 };

/* One option table and the struct it fills. */
typedef struct {
    const graft_option_t *table;
    void *target;
} graft_option_set_t;

/* Fills target with defaults, then the file named by --config (if any),
 * then the other flags. Returns GRAFT_OPTS_OK, GRAFT_OPTS_HELP after
 * printing the usage to stdout, or a negative error after logging what is
 * wrong and where (file:line or the flag). usage is the one-line synopsis
 * and description printed above the option list. Plain arguments are
 * refused. */
int graft_options_parse(const graft_option_t *table, void *target, int argc, char **argv,
                        const char *usage);

/* The same over nsets tables (an option name belongs to one of them; the
 * usage lists them in order). With args non-NULL (room for argc pointers),
 * plain arguments are collected there in order, *nargs of them (pointers
 * into argv); with args NULL they are refused. */
int graft_options_parse_sets(const graft_option_set_t *sets, int nsets, int argc, char **argv,
                             const char *usage, char **args, int *nargs);

/* graft_options_parse for a command that also takes plain arguments (file
 * names): *args is set to an array of them (pointers into argv; the caller
 * frees the array, also after an error), *nargs of them. */
int graft_options_parse_args(const graft_option_t *table, void *target, int argc, char **argv,
                             const char *usage, char ***args, int *nargs);

/* Applies one `name = value` setting (used by the parsers; exposed for
 * programs that build settings in code). `where` names the source for
 * error messages. */
int graft_options_set(const graft_option_t *table, void *target, const char *name,
                      const char *value, const char *where);

/* A config file that graft wrote may hold options of another command: the
 * config.txt of `graft run` holds run's own options (workers, shards) beside
 * the run options that eval, predict and export read. With an owner
 * function set, a line of such a file (its first line `# graft COMMAND:
 * effective settings`) whose option this command lacks but owner() names a
 * command for (non-NULL) is skipped, and the skipped names are logged once
 * per file. Any other unknown name is refused, as is every unknown name of
 * a file written by hand. Flags stay strict. owner NULL: off. */
void graft_options_set_owner(const char *(*owner)(const char *name));

/* Reads a config file of `name = value` lines into target. A directory
 * (or a block device or socket) is refused; regular files, pipes and
 * character devices such as /dev/null are read. */
int graft_options_load_file(const graft_option_t *table, void *target, const char *path);

void graft_options_usage(FILE *out, const graft_option_t *table, const char *usage);
void graft_options_usage_sets(FILE *out, const graft_option_set_t *sets, int nsets,
                              const char *usage);

/* Writes option o's value in target as it would be written in a config
 * file, e.g. to pass the effective settings on as --name=value flags. */
void graft_options_format(char *buf, size_t n, const graft_option_t *o, const void *target);

/* Writes the effective settings as a config file that --config reads back
 * to the same settings: a `name = value` line per option, in table order.
 * A value no config line can hold (a line break, blanks at either end, a #
 * that would start a comment) becomes a comment naming the option and is
 * logged. Returns the number of those. */
int graft_options_dump(FILE *out, const graft_option_t *table, const void *target);
int graft_options_dump_sets(FILE *out, const graft_option_set_t *sets, int nsets);

/* graft_options_dump_sets into the file at path (its folders made), after
 * a `# header` line, with any option named `blank` (NULL: none) written
 * empty; logs the path. GRAFT_EIO (logged) when it cannot be written. */
int graft_options_write_sets(const char *path, const char *header,
                             const graft_option_set_t *sets, int nsets, const char *blank);

/* FNV-1a digest of the effective settings, for run_start events. */
unsigned long long graft_options_digest(const graft_option_t *table, const void *target);

#endif
