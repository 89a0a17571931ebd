/* test_options.c — the option table (common/options.c): defaults, config
 * files (`name = value`, comments, blank lines, whitespace), command-line
 * flags overriding the file, --name=value and bare boolean flags, and the
 * refusals (out of range, malformed numbers, unknown options, bad config
 * lines, over-long strings) with a negative code and an error that names
 * where the problem is; a dump of the settings re-loads to the same digest;
 * a --config that is a directory is refused; several tables parsed at once
 * (a command's own options and the run options) with plain arguments among
 * the flags; deprecated spellings (aliases) set their option and warn; and
 * across every command's tables (cli_option_tables), an option name means
 * one thing: same type, range, help and (but for a few) default.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <unistd.h>

#include "capture.h"
#include "commands.h"
#include "graft.h"
#include "options.h"
#include "runconfig.h"
#include "shared_options.h"

typedef struct {
    int steps;   /* bounded */
    float lr;    /* bounded */
    char name[GRAFT_OPT_STR];
    int verbose; /* boolean */
    int seed;    /* unbounded */
    float scale; /* unbounded */
} settings_t;

static const graft_option_t table[] = {
    {"steps", GRAFT_OPT_INT, offsetof(settings_t, steps), "10", 1, 100, "training steps"},
    {"lr", GRAFT_OPT_FLOAT, offsetof(settings_t, lr), "0.001", 0, 1, "learning rate"},
    {"name", GRAFT_OPT_STRING, offsetof(settings_t, name), "run", 1, 0, "run name"},
    {"verbose", GRAFT_OPT_BOOL, offsetof(settings_t, verbose), "false", 1, 0, "chatty logs"},
    {"seed", GRAFT_OPT_INT, offsetof(settings_t, seed), "1234", 1, 0, "random seed"},
    {"scale", GRAFT_OPT_FLOAT, offsetof(settings_t, scale), "0.5", 1, 0, "a factor"},
    GRAFT_OPT_END,
};

#define USAGE "usage: test [options]\nA test program."
#define PATH_LEN 512

static char g_dir[64];

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/graft_test_options_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static const char *const g_files[] = {"good.conf", "bad.conf", "dump.conf", "long.conf",
                                      "stderr.log", "sets.conf", "alias.conf"};

static int group_teardown(void **state) {
    (void)state;
    char path[PATH_LEN];
    for (size_t i = 0; i < sizeof g_files / sizeof g_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", g_dir, g_files[i]);
        unlink(path);
    }
    return rmdir(g_dir);
}

static const char *tmp_path(char *buf, const char *name) {
    snprintf(buf, PATH_LEN, "%s/%s", g_dir, name);
    return buf;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Runs the parser on a NULL-terminated list of arguments (after argv[0]). */
static int parse(settings_t *s, const char *const *args) {
    char *argv[32] = {(char *)"test"};
    int argc = 1;
    while (args[argc - 1]) {
        assert_true(argc < 32);
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    memset(s, 0xA5, sizeof *s); /* every field must be set by the parser */
    return graft_options_parse(table, s, argc, argv, USAGE);
}
#define PARSE(s, ...) parse((s), (const char *const[]){__VA_ARGS__, NULL})

/* stderr capture (tests/capture.h), to check that errors say where the
 * problem is */
static void capture(void) {
    char path[PATH_LEN];
    capture_begin(tmp_path(path, "stderr.log"));
}

static void assert_defaults(const settings_t *s) {
    assert_int_equal(s->steps, 10);
    assert_true(s->lr == 0.001f);
    assert_string_equal(s->name, "run");
    assert_int_equal(s->verbose, 0);
    assert_int_equal(s->seed, 1234);
    assert_true(s->scale == 0.5f);
}

/* ---- accepted input ----------------------------------------------------- */

static void test_defaults(void **state) {
    (void)state;
    settings_t s;
    assert_int_equal(parse(&s, (const char *const[]){NULL}), GRAFT_OPTS_OK);
    assert_defaults(&s);
}

static const char good_conf[] = "# a comment line\n"
                                "\n"
                                "steps = 42\n"
                                "   \t\n"
                                "  lr=0.25   # a trailing comment\n"
                                "name =   my run  \n"
                                "\tverbose\t=\tyes\n"
                                "seed = -7\n";

static void assert_good_conf(const settings_t *s) {
    assert_int_equal(s->steps, 42);
    assert_true(s->lr == 0.25f);
    assert_string_equal(s->name, "my run");
    assert_int_equal(s->verbose, 1);
    assert_int_equal(s->seed, -7);
    assert_true(s->scale == 0.5f); /* not in the file: the default */
}

static void test_config_file(void **state) {
    (void)state;
    char path[PATH_LEN];
    write_text(tmp_path(path, "good.conf"), good_conf);
    settings_t s;
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_OPTS_OK);
    assert_good_conf(&s);
    char flag[PATH_LEN + 16];
    snprintf(flag, sizeof flag, "--config=%s", path);
    assert_int_equal(PARSE(&s, flag), GRAFT_OPTS_OK);
    assert_good_conf(&s);
    /* and directly, on top of what is there */
    assert_int_equal(PARSE(&s, "--scale", "2"), GRAFT_OPTS_OK);
    assert_int_equal(graft_options_load_file(table, &s, path), GRAFT_OK);
    assert_int_equal(s.steps, 42);
    assert_true(s.scale == 2.0f);
}

static void test_flags_override_file(void **state) {
    (void)state;
    char path[PATH_LEN];
    write_text(tmp_path(path, "good.conf"), good_conf);
    settings_t s;
    /* the file applies first wherever --config stands */
    assert_int_equal(PARSE(&s, "--steps", "7", "--config", path, "--name=cli"), GRAFT_OPTS_OK);
    assert_int_equal(s.steps, 7);
    assert_string_equal(s.name, "cli");
    assert_true(s.lr == 0.25f); /* from the file */
    assert_int_equal(PARSE(&s, "--config", path, "--verbose=no", "--lr", "0.5"), GRAFT_OPTS_OK);
    assert_int_equal(s.verbose, 0);
    assert_true(s.lr == 0.5f);
    assert_int_equal(s.steps, 42);
    /* a later flag wins over an earlier one */
    assert_int_equal(PARSE(&s, "--steps", "3", "--steps=4"), GRAFT_OPTS_OK);
    assert_int_equal(s.steps, 4);
}

static void test_equals_form_and_bools(void **state) {
    (void)state;
    settings_t s;
    assert_int_equal(PARSE(&s, "--steps=9", "--lr=0.125", "--name=a=b", "--seed=-1"),
                     GRAFT_OPTS_OK);
    assert_int_equal(s.steps, 9);
    assert_true(s.lr == 0.125f);
    assert_string_equal(s.name, "a=b"); /* split at the first '=' */
    assert_int_equal(s.seed, -1);
    assert_int_equal(PARSE(&s, "--name="), GRAFT_OPTS_OK); /* an empty string is a string */
    assert_string_equal(s.name, "");

    assert_int_equal(PARSE(&s, "--verbose"), GRAFT_OPTS_OK); /* bare, last */
    assert_int_equal(s.verbose, 1);
    assert_int_equal(PARSE(&s, "--verbose", "--steps", "3"), GRAFT_OPTS_OK); /* bare, then more */
    assert_int_equal(s.verbose, 1);
    assert_int_equal(s.steps, 3);
    assert_int_equal(PARSE(&s, "--verbose", "false"), GRAFT_OPTS_OK);
    assert_int_equal(s.verbose, 0);
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(PARSE(&s, "--verbose", yes[i]), GRAFT_OPTS_OK);
        assert_int_equal(s.verbose, 1);
        assert_int_equal(PARSE(&s, "--verbose", no[i]), GRAFT_OPTS_OK);
        assert_int_equal(s.verbose, 0);
    }
    assert_true(PARSE(&s, "--verbose=maybe") < 0);
    assert_true(PARSE(&s, "--verbose", "2") < 0);
    /* non-boolean options never go bare */
    assert_true(PARSE(&s, "--steps") < 0);
    assert_true(PARSE(&s, "--steps", "--verbose") < 0);
}

static void test_help(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    graft_options_usage(f, table, USAGE);
    fclose(f);
    assert_non_null(strstr(text, "usage: test [options]"));
    assert_non_null(strstr(text, "--steps N"));
    assert_non_null(strstr(text, "training steps (default: 10; range 1..100)"));
    assert_non_null(strstr(text, "--verbose [BOOL]"));
    assert_non_null(strstr(text, "--config FILE"));
    free(text);
    /* --help stops parsing with its own outcome (usage on stdout) */
    settings_t s;
    assert_int_equal(PARSE(&s, "--steps", "5", "--help"), GRAFT_OPTS_HELP);
}

/* A # starts a comment at the start of a line or after a blank only: a
 * value may hold one inside a word. */
static void test_hash_in_values(void **state) {
    (void)state;
    char path[PATH_LEN];
    write_text(tmp_path(path, "good.conf"), "name = run#2\n"
                                            "steps = 3 #three\n"
                                            "#lr = 0.5\n"
                                            "  # seed = 9\n"
                                            "seed = 4\t# tab, then a comment\n");
    settings_t s;
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_OPTS_OK);
    assert_string_equal(s.name, "run#2");
    assert_int_equal(s.steps, 3);
    assert_true(s.lr == 0.001f);
    assert_int_equal(s.seed, 4);
}

/* The first pass looks for --help and --config among the flags, not among
 * their values: `--name --help` names a run. */
static void test_flag_values_are_not_flags(void **state) {
    (void)state;
    settings_t s;
    assert_int_equal(PARSE(&s, "--name", "--help", "--steps", "3"), GRAFT_OPTS_OK);
    assert_string_equal(s.name, "--help");
    assert_int_equal(s.steps, 3);
    assert_int_equal(PARSE(&s, "--name", "-h"), GRAFT_OPTS_OK);
    assert_string_equal(s.name, "-h");
    assert_int_equal(PARSE(&s, "--name", "--config"), GRAFT_OPTS_OK);
    assert_string_equal(s.name, "--config");
    /* a boolean takes only a boolean word: --help after it is the flag */
    assert_int_equal(PARSE(&s, "--verbose", "--help"), GRAFT_OPTS_HELP);
    assert_int_equal(PARSE(&s, "--verbose=yes", "--help"), GRAFT_OPTS_HELP);
}

/* ---- refused input ------------------------------------------------------ */

static void test_numbers_refused(void **state) {
    (void)state;
    settings_t s;
    /* bounds are inclusive */
    assert_int_equal(PARSE(&s, "--steps", "1", "--lr", "0"), GRAFT_OPTS_OK);
    assert_int_equal(PARSE(&s, "--steps", "100", "--lr", "1"), GRAFT_OPTS_OK);
    static const char *const bad_steps[] = {"0", "101", "-5", "12abc", "", " ", "1.5", "0x10",
                                            "1e2", "ten", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_steps / sizeof bad_steps[0]; i++)
        if (PARSE(&s, "--steps", bad_steps[i]) >= 0)
            fail_msg("--steps '%s' accepted", bad_steps[i]);
    static const char *const bad_lr[] = {"-0.1", "1.5", "nan", "inf", "-inf", "0.5x", "",
                                         "1e400", "--"};
    for (size_t i = 0; i < sizeof bad_lr / sizeof bad_lr[0]; i++)
        if (PARSE(&s, "--lr", bad_lr[i]) >= 0) fail_msg("--lr '%s' accepted", bad_lr[i]);
    /* unbounded numbers still have to be numbers, and finite */
    assert_true(PARSE(&s, "--seed", "12x") < 0);
    assert_true(PARSE(&s, "--scale", "nan") < 0);
    assert_true(PARSE(&s, "--scale", "1e999") < 0);
    assert_int_equal(PARSE(&s, "--seed", "-2147483648", "--scale", "-3.5e10"), GRAFT_OPTS_OK);
    assert_int_equal(s.seed, -2147483648);
    assert_true(s.scale == -3.5e10f);

    capture();
    int rc = PARSE(&s, "--steps", "500");
    capture_end_expect("command line --steps");
    assert_int_equal(rc, GRAFT_EINVAL);
}

static void test_unknown_and_stray_refused(void **state) {
    (void)state;
    settings_t s;
    capture();
    int rc = PARSE(&s, "--nope", "1");
    capture_end_expect("unknown option 'nope'");
    assert_int_equal(rc, GRAFT_EINVAL);
    /* Last on the line, an unknown flag is still unknown, not short of a value. */
    capture();
    rc = PARSE(&s, "--steps", "3", "--nope");
    capture_end_expect("unknown option 'nope'");
    assert_int_equal(rc, GRAFT_EINVAL);
    assert_true(PARSE(&s, "--nope=1") < 0);
    assert_true(PARSE(&s, "--Steps", "3") < 0); /* names are case-sensitive */
    assert_true(PARSE(&s, "stray") < 0);
    assert_true(PARSE(&s, "-steps", "3") < 0);
    assert_true(PARSE(&s, "--config") < 0);
    char path[PATH_LEN];
    assert_int_equal(PARSE(&s, "--config", tmp_path(path, "missing.conf")), GRAFT_EIO);
}

/* One bad line in a config file: its code, and an error naming file:line. */
static void expect_bad_conf(const char *text, int code, const char *needle) {
    char path[PATH_LEN], where[PATH_LEN + 32];
    write_text(tmp_path(path, "bad.conf"), text);
    snprintf(where, sizeof where, "%s:%s", path, needle);
    settings_t s;
    capture();
    int rc = PARSE(&s, "--config", path);
    capture_end_expect(where);
    assert_int_equal(rc, code);
}

static void test_bad_config_lines(void **state) {
    (void)state;
    expect_bad_conf("steps = 5\nsteps 6\n", GRAFT_EFORMAT, "2: expected 'name = value'");
    expect_bad_conf("# fine\n\nbogus = 1\n", GRAFT_EINVAL, "3: unknown option 'bogus'");
    expect_bad_conf("steps = 5\nlr = 0.1\nsteps = 1000\n", GRAFT_EINVAL, "3:");
    expect_bad_conf("lr = fast\n", GRAFT_EINVAL, "1:");
    expect_bad_conf("verbose = sometimes\n", GRAFT_EINVAL, "1:");
    expect_bad_conf("= 5\n", GRAFT_EINVAL, "1:");
    /* a bad file stops parsing even when the flags are fine */
    char path[PATH_LEN];
    write_text(tmp_path(path, "bad.conf"), "steps = zero\n");
    settings_t s;
    assert_true(PARSE(&s, "--steps", "5", "--config", path) < 0);
    assert_int_equal(graft_options_load_file(table, &s, path), GRAFT_EINVAL);
}

/* The owner hook (graft_options_set_owner): "other" is another command's. */
static const char *owner_of(const char *name) {
    return !strcmp(name, "other") ? "elsewhere" : NULL;
}

/* A file graft wrote skips another command's options, with a note; a file
 * written by hand refuses them, as it does names nobody knows; flags stay
 * strict; without the hook nothing is skipped. */
static void test_other_commands_settings(void **state) {
    (void)state;
    char path[PATH_LEN];
    settings_t s;
    const char *written = "# graft run: effective settings (graft run --config FILE)\n"
                          "other = 3\nsteps = 7\n";
    graft_options_set_owner(owner_of);
    write_text(tmp_path(path, "written.conf"), written);
    capture();
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_OPTS_OK);
    capture_end_expect("skipped settings of other graft commands (not this one's): other");
    assert_int_equal(s.steps, 7);
    write_text(tmp_path(path, "written.conf"),
               "# graft run: effective settings (graft run --config FILE)\nothr = 3\n");
    assert_true(PARSE(&s, "--config", path) < 0); /* a typo is still a typo */
    expect_bad_conf("other = 3\nsteps = 7\n", GRAFT_EINVAL, "1: unknown option 'other'");
    assert_true(PARSE(&s, "--other", "3") < 0);
    graft_options_set_owner(NULL);
    write_text(tmp_path(path, "written.conf"), written);
    assert_true(PARSE(&s, "--config", path) < 0);
}

/* A config line longer than the reader's buffer is refused (file:line)
 * rather than read as two lines; the longest that fits is read, also as
 * the last line without its LF. */
static void test_long_config_line(void **state) {
    (void)state;
    enum { LONGEST = 4094 }; /* characters before the LF */
    char *text = malloc(2 * LONGEST + 64), path[PATH_LEN];
    int n = snprintf(text, 8, "# ");
    memset(text + n, 'c', LONGEST - n);
    n = LONGEST;
    n += sprintf(text + n, "\nsteps = 6\n");
    write_text(tmp_path(path, "long.conf"), text);
    settings_t s;
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_OPTS_OK);
    assert_int_equal(s.steps, 6);
    /* the same comment one character longer: its tail used to become a line */
    text[0] = '#';
    text[1] = ' ';
    memset(text + 2, 'c', LONGEST - 2);
    sprintf(text + LONGEST, "csteps = 7\n");
    expect_bad_conf(text, GRAFT_EFORMAT, "1: line longer than 4094 characters");
    /* the last line, at the longest, without an LF */
    n = sprintf(text, "steps = 8");
    memset(text + n, ' ', LONGEST + 1 - n);
    text[LONGEST + 1] = '\0';
    write_text(path, text);
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_OPTS_OK);
    assert_int_equal(s.steps, 8);
    free(text);
}

static void test_string_length(void **state) {
    (void)state;
    char longest[GRAFT_OPT_STR], too_long[GRAFT_OPT_STR + 1];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0'; /* GRAFT_OPT_STR - 1 characters: fits */
    memset(too_long, 'y', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0'; /* one more: does not */
    settings_t s;
    assert_int_equal(PARSE(&s, "--name", longest), GRAFT_OPTS_OK);
    assert_string_equal(s.name, longest);
    capture();
    int rc = PARSE(&s, "--name", too_long);
    char needle[64];
    snprintf(needle, sizeof needle, "longer than %d characters", GRAFT_OPT_STR - 1);
    capture_end_expect(needle);
    assert_int_equal(rc, GRAFT_EINVAL);
    assert_string_equal(s.name, "run"); /* the default, not a truncated value */
    assert_int_equal(graft_options_set(table, &s, "name", too_long, "code"), GRAFT_EINVAL);

    char path[PATH_LEN], text[GRAFT_OPT_STR + 32];
    snprintf(text, sizeof text, "name = %s\n", too_long);
    write_text(tmp_path(path, "long.conf"), text);
    assert_int_equal(PARSE(&s, "--config", path), GRAFT_EINVAL);
}

/* A directory opens and reads as an empty file: it must be refused. */
static void test_config_directory_refused(void **state) {
    (void)state;
    settings_t s;
    capture();
    int rc = PARSE(&s, "--config", g_dir, "--steps", "5");
    capture_end_expect("--config needs a file of `name = value` lines; this is a directory");
    assert_int_equal(rc, GRAFT_EIO);
    assert_int_equal(PARSE(&s, "--config", "/dev/null", "--steps", "5"), GRAFT_OPTS_OK);
}

/* ---- several tables and plain arguments ---------------------------------- */

typedef struct {
    int workers;
    char bind[GRAFT_OPT_STR];
} extra_t;

static const graft_option_t extra_table[] = {
    {"workers", GRAFT_OPT_INT, offsetof(extra_t, workers), "1", 1, 256, "workers"},
    {"bind", GRAFT_OPT_STRING, offsetof(extra_t, bind), "tcp://*:5555", 1, 0, "endpoint"},
    GRAFT_OPT_END,
};

/* Parses args (NULL-terminated) over both tables; with want_args the plain
 * arguments go to files. */
static int parse_sets(settings_t *s, extra_t *e, const char *const *args, char **files,
                      int *nfiles) {
    char *argv[32] = {(char *)"test"};
    int argc = 1;
    while (args[argc - 1]) argv[argc] = (char *)args[argc - 1], argc++;
    graft_option_set_t sets[] = {{extra_table, e}, {table, s}};
    return graft_options_parse_sets(sets, 2, argc, argv, USAGE, files, nfiles);
}
#define PARSE_SETS(files, n, ...) \
    parse_sets(&s, &e, (const char *const[]){__VA_ARGS__, NULL}, (files), (n))

static void test_sets_and_plain_arguments(void **state) {
    (void)state;
    settings_t s;
    extra_t e;
    char *files[32];
    int n = -1;
    char path[PATH_LEN];
    write_text(tmp_path(path, "good.conf"), "workers = 3\nsteps = 5\nbind = tcp://h:1\n");
    assert_int_equal(PARSE_SETS(files, &n, "a.json", "--config", path, "--verbose", "b.json",
                                "--bind=tcp://x:2", "-"),
                     GRAFT_OPTS_OK);
    assert_int_equal(e.workers, 3);
    assert_int_equal(s.steps, 5);
    assert_string_equal(e.bind, "tcp://x:2");
    assert_int_equal(s.verbose, 1); /* bare: b.json is not a boolean, so an argument */
    assert_int_equal(n, 3);
    assert_string_equal(files[0], "a.json");
    assert_string_equal(files[1], "b.json");
    assert_string_equal(files[2], "-");
    assert_int_equal(PARSE_SETS(files, &n, "--verbose", "false", "x"), GRAFT_OPTS_OK);
    assert_int_equal(s.verbose, 0);
    assert_int_equal(n, 1);
    /* given twice, the last one wins, as for every option */
    assert_int_equal(PARSE_SETS(NULL, NULL, "--workers", "2", "--workers=4"), GRAFT_OPTS_OK);
    assert_int_equal(e.workers, 4);
    capture();
    int rc = PARSE_SETS(NULL, NULL, "--workers", "2x");
    capture_end_expect("command line --workers: '2x' for option 'workers' is not a whole number "
                       "in [1, 256]");
    assert_int_equal(rc, GRAFT_EINVAL);
    capture();
    rc = PARSE_SETS(NULL, NULL, "--steps", "5", "stray");
    capture_end_expect("unexpected argument 'stray'");
    assert_int_equal(rc, GRAFT_EINVAL);
    capture();
    rc = PARSE_SETS(files, &n, "-x");
    capture_end_expect("unexpected argument '-x'");
    assert_int_equal(rc, GRAFT_EINVAL);
}

/* ---- dump --------------------------------------------------------------- */

/* The settings a worker's hello carries, for a run given by flags. */
static int shared_settings(char **argv, int argc, graft_setting_t *out) {
    graft_run_config_t cfg;
    assert_int_equal(graft_options_parse(graft_run_options, &cfg, argc, argv, "usage"), GRAFT_OK);
    return graft_run_shared_settings(&cfg, out);
}

/* The same method set or LoRA targets in another order are the same
 * settings; another rank is not. */
static void test_shared_settings_canonical(void **state) {
    (void)state;
    char *a[] = {"t", "--method", "lora,channels,lntune", "--lora_targets", "fc,qkv"};
    char *b[] = {"t", "--method", "lntune,lora,channels", "--lora_targets", "qkv,fc"};
    char *c[] = {"t", "--method", "lntune,lora,channels", "--lora_targets", "qkv,fc",
                 "--lora_task_rank", "2"};
    graft_setting_t sa[GRAFT_MAX_SHARED_SETTINGS], sb[GRAFT_MAX_SHARED_SETTINGS];
    graft_setting_t sc[GRAFT_MAX_SHARED_SETTINGS];
    int na = shared_settings(a, 5, sa), nb = shared_settings(b, 5, sb);
    int nc = shared_settings(c, 7, sc);
    assert_int_equal(na, nb);
    assert_int_equal(na, nc);
    int differ = 0;
    for (int i = 0; i < na; i++) {
        assert_string_equal(sa[i].name, sb[i].name);
        assert_string_equal(sa[i].value, sb[i].value);
        if (!strcmp(sa[i].name, "method")) assert_string_equal(sa[i].value, "lora,lntune,channels");
        if (!strcmp(sa[i].name, "lora_targets")) assert_string_equal(sa[i].value, "qkv,fc");
        differ += strcmp(sa[i].value, sc[i].value) != 0;
    }
    assert_int_equal(differ, 1);
}

static void test_dump_reload_digest(void **state) {
    (void)state;
    settings_t s, back;
    assert_int_equal(PARSE(&s, "--steps", "77", "--lr", "0.1", "--name", "runs/with space",
                           "--verbose", "--seed", "-3", "--scale", "1e-7"),
                     GRAFT_OPTS_OK);
    unsigned long long digest = graft_options_digest(table, &s);

    char path[PATH_LEN];
    FILE *f = fopen(tmp_path(path, "dump.conf"), "w");
    assert_non_null(f);
    graft_options_dump(f, table, &s);
    assert_int_equal(fclose(f), 0);

    assert_int_equal(PARSE(&back, "--config", path), GRAFT_OPTS_OK);
    assert_true(graft_options_digest(table, &back) == digest);
    /* field by field: floats such as 0.1 survive the text exactly */
    assert_int_equal(back.steps, 77);
    assert_memory_equal(&back.lr, &s.lr, sizeof s.lr);
    assert_memory_equal(&back.scale, &s.scale, sizeof s.scale);
    assert_string_equal(back.name, "runs/with space");
    assert_int_equal(back.verbose, 1);
    assert_int_equal(back.seed, -3);

    /* floats in their shortest exact form (0.1, not 0.100000001); the next
     * float up needs eight digits and keeps them */
    char buf[64];
    graft_options_format(buf, sizeof buf, &table[1], &s);
    assert_string_equal(buf, "0.1");
    uint32_t bits;
    memcpy(&bits, &s.lr, sizeof bits);
    bits++;
    memcpy(&back.lr, &bits, sizeof bits);
    graft_options_format(buf, sizeof buf, &table[1], &back);
    assert_string_equal(buf, "0.10000001");
    assert_int_equal(graft_options_set(table, &s, "lr", buf, "test"), GRAFT_OK);
    assert_memory_equal(&back.lr, &s.lr, sizeof s.lr);

    /* the digest sees every option */
    settings_t d;
    assert_int_equal(parse(&d, (const char *const[]){NULL}), GRAFT_OPTS_OK);
    unsigned long long base = graft_options_digest(table, &d);
    assert_true(base != digest);
    static const char *const one_change[][2] = {{"steps", "11"}, {"lr", "0.002"}, {"name", "run2"},
                                                {"verbose", "true"}, {"seed", "1235"},
                                                {"scale", "0.25"}};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(PARSE(&d, "--config", "/dev/null"), GRAFT_OPTS_OK);
        assert_true(graft_options_digest(table, &d) == base);
        assert_int_equal(graft_options_set(table, &d, one_change[i][0], one_change[i][1], "test"),
                         GRAFT_OK);
        if (graft_options_digest(table, &d) == base)
            fail_msg("changing %s leaves the digest unchanged", one_change[i][0]);
    }
}

/* The effective settings of several tables, written as a command writes
 * OUT/config.txt, read back to the same; a value a config line cannot hold
 * is left out as a comment, and counted. */
static void test_dump_sets_and_unwritable(void **state) {
    (void)state;
    settings_t s, s2;
    extra_t e, e2;
    assert_int_equal(PARSE_SETS(NULL, NULL, "--workers", "7", "--bind", "tcp://h:9", "--lr",
                                "0.1", "--name", "run#2"),
                     GRAFT_OPTS_OK);
    char path[PATH_LEN], flag[PATH_LEN + 16];
    graft_option_set_t sets[] = {{extra_table, &e}, {table, &s}};
    assert_int_equal(graft_options_write_sets(tmp_path(path, "sets.conf"), "test: a header", sets,
                                              2, NULL), GRAFT_OK);
    snprintf(flag, sizeof flag, "--config=%s", path);
    assert_int_equal(parse_sets(&s2, &e2, (const char *const[]){flag, NULL}, NULL, NULL),
                     GRAFT_OPTS_OK);
    assert_true(graft_options_digest(table, &s2) == graft_options_digest(table, &s));
    assert_true(graft_options_digest(extra_table, &e2) == graft_options_digest(extra_table, &e));
    assert_string_equal(s2.name, "run#2");
    assert_int_equal(e2.workers, 7);
    /* A blanked option is written empty: the file reads it back empty. */
    assert_int_equal(graft_options_write_sets(path, "test: a header", sets, 2, "name"), GRAFT_OK);
    assert_int_equal(parse_sets(&s2, &e2, (const char *const[]){flag, NULL}, NULL, NULL),
                     GRAFT_OPTS_OK);
    assert_string_equal(s2.name, "");
    assert_true(s2.lr == s.lr);

    static const char *const bad[] = {"a #b", "#b", " lead", "trail\t", "two\nlines"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(s.name, sizeof s.name, "%s", bad[i]);
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        capture();
        assert_int_equal(graft_options_dump(f, table, &s), 1);
        capture_end_expect("the value of --name holds");
        fclose(f);
        assert_non_null(strstr(text, "# name: its value holds"));
        assert_null(strstr(text, "\nname ="));
        free(text);
    }
}

static void test_log_level_names(void **state) {
    (void)state;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    graft_log_level_t l;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(graft_log_level_parse(names[i], &l), GRAFT_OK);
        assert_int_equal(l, i);
    }
    assert_int_equal(graft_log_level_parse("verbose", &l), GRAFT_EINVAL);
    assert_int_equal(graft_log_level_parse("", &l), GRAFT_EINVAL);
    assert_int_equal(graft_log_level_parse("INFO", &l), GRAFT_EINVAL);
}

/* ---- one meaning per name across the commands ---------------------------- */

/* Options whose default is each command's own choice (how long to train,
 * how fast, which seed, what to read and write); the rest of their entry
 * is shared. */
static const char *const per_command_default[] = {
    "seed", "steps", "lr", "warmup", "weight_decay", "eval_every", "checkpoint_every",
    "log_every", "method", "workers", "out", "data", NULL};

/* Options whose help says what this command does with a path: what it
 * writes (out), what it reads (data), and tokenize reads only a trunk's
 * tokenizer. */
static const char *const per_command_help[] = {"out", "data", "trunk", NULL};

static int listed(const char *const *list, const char *name) {
    for (; *list; list++)
        if (!strcmp(*list, name)) return 1;
    return 0;
}

/* Number of ways in which entries a and b of the same name differ (each
 * printed with the commands that have them). */
static int entry_drift(const cli_option_table_t *ta, const graft_option_t *a,
                       const cli_option_table_t *tb, const graft_option_t *b) {
    int bad = 0;
    const char *what[4] = {NULL};
    if (a->type != b->type) what[bad++] = "type";
    if (a->min != b->min || a->max != b->max) what[bad++] = "range";
    if (strcmp(a->help, b->help) && !listed(per_command_help, a->name)) what[bad++] = "help";
    if (strcmp(a->def, b->def) && !listed(per_command_default, a->name)) what[bad++] = "default";
    for (int k = 0; k < bad; k++)
        print_error("option '%s': %s differs between graft %s and graft %s\n", a->name,
                    what[k], ta->command, tb->command);
    return bad;
}

/* 1 when t's table is listed before t (another command that parses it). */
static int seen_before(const cli_option_table_t *t) {
    for (const cli_option_table_t *u = cli_option_tables; u < t; u++)
        if (u->table == t->table) return 1;
    return 0;
}

static void test_shared_options_agree(void **state) {
    (void)state;
    int bad = 0, shared = 0;
    for (const cli_option_table_t *ta = cli_option_tables; ta->command; ta++)
        for (const cli_option_table_t *tb = ta + 1; tb->command; tb++) {
            if (tb->table == ta->table || seen_before(ta) || seen_before(tb)) continue;
            for (const graft_option_t *a = ta->table; a->name; a++)
                for (const graft_option_t *b = tb->table; b->name; b++) {
                    if (a->type == GRAFT_OPT_ALIAS || b->type == GRAFT_OPT_ALIAS ||
                        strcmp(a->name, b->name))
                        continue;
                    shared++;
                    bad += entry_drift(ta, a, tb, b);
                }
        }
    assert_true(shared > 15); /* the tables were read: threads, seed, batch, ... */
    assert_int_equal(bad, 0);
}

/* Option names in one style (lower case, digits, underscores); a command's
 * tables name each option once; every alias stands for an option of its
 * own table. */
static void test_option_names(void **state) {
    (void)state;
    for (const cli_option_table_t *t = cli_option_tables; t->command; t++)
        for (const graft_option_t *o = t->table; o->name; o++) {
            if (o->type == GRAFT_OPT_ALIAS) {
                const graft_option_t *to = graft_options_find(t->table, o->name);
                assert_non_null(to);
                assert_string_equal(to->name, o->def);
                continue;
            }
            if (strspn(o->name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(o->name))
                fail_msg("graft %s: option '%s' is not spelled like the others "
                         "(lower_case_with_underscores)", t->command, o->name);
            for (const cli_option_table_t *u = cli_option_tables; u <= t; u++) {
                if (strcmp(u->command, t->command)) continue;
                for (const graft_option_t *p = u->table; p->name && p != o; p++)
                    if (!strcmp(p->name, o->name))
                        fail_msg("graft %s: option '%s' twice", t->command, o->name);
            }
        }
}

/* The struct of one of cli_option_tables' tables, read through offsets. */
static _Alignas(max_align_t) char any_settings[1 << 17];

/* The option `name` of table in any_settings, formatted. */
static const char *value_of(const graft_option_t *table, const char *name) {
    static char buf[GRAFT_OPT_STR + 32];
    const graft_option_t *o = graft_options_find(table, name);
    assert_non_null(o);
    graft_options_format(buf, sizeof buf, o, any_settings);
    return buf;
}

static int parse_any(const graft_option_t *table, const char *const *flags) {
    char *argv[16] = {"graft"};
    int argc = 1;
    for (; *flags; flags++) argv[argc++] = (char *)*flags;
    graft_option_set_t set = {table, any_settings};
    return graft_options_parse_sets(&set, 1, argc, argv, USAGE, NULL, NULL);
}

/* Old spellings still work: hyphenated names of the service files
 * (--curve-secret, --server-key, --no-plots) and bench's renamed --warmup
 * (untimed steps) and --lora_rank / --lora_alpha; each warns. */
static void test_deprecated_aliases(void **state) {
    (void)state;
    capture();
    assert_int_equal(parse_any(cli_bench_step_options,
                               (const char *const[]){"--warmup", "5", "--lora_rank=4",
                                                     "--lora_alpha", "2", NULL}),
                     GRAFT_OPTS_OK);
    char *text = capture_end();
    assert_non_null(strstr(text, "option 'warmup' is deprecated: it is now spelled "
                                 "'untimed_steps'"));
    assert_non_null(strstr(text, "'lora_rank' is deprecated"));
    free(text);
    assert_string_equal(value_of(cli_bench_step_options, "untimed_steps"), "5");
    assert_string_equal(value_of(cli_bench_step_options, "lora_shared_rank"), "4");
    assert_string_equal(value_of(cli_bench_step_options, "lora_shared_alpha"), "2");

    capture();
    assert_int_equal(parse_any(cli_coordinator_options,
                               (const char *const[]){"--curve-secret", "keys/c", NULL}),
                     GRAFT_OPTS_OK);
    capture_end_expect("command line --curve-secret: option 'curve-secret' is deprecated");
    assert_string_equal(value_of(cli_coordinator_options, "curve_secret"), "keys/c");
    assert_int_equal(parse_any(cli_report_options, (const char *const[]){"--no-plots", NULL}),
                     GRAFT_OPTS_OK);
    assert_string_equal(value_of(cli_report_options, "no_plots"), "true");

    /* In a config file too, naming the file and line. */
    char path[PATH_LEN];
    tmp_path(path, "alias.conf");
    write_text(path, "# an old service file\nserver-key = keys/coordinator.pub\n");
    capture();
    assert_int_equal(parse_any(cli_worker_options, (const char *const[]){"--config", path, NULL}),
                     GRAFT_OPTS_OK);
    capture_end_expect("alias.conf:2: option 'server-key' is deprecated");
    assert_string_equal(value_of(cli_worker_options, "server_key"), "keys/coordinator.pub");

    /* The new spelling is quiet; --help lists the old one; a dump writes the new one. */
    capture();
    assert_int_equal(parse_any(cli_worker_options,
                               (const char *const[]){"--server_key", "s.pub", NULL}),
                     GRAFT_OPTS_OK);
    text = capture_end();
    assert_null(strstr(text, "deprecated"));
    free(text);
    char *out = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&out, &len);
    graft_options_usage(mem, cli_worker_options, USAGE);
    graft_options_dump(mem, cli_worker_options, any_settings);
    fclose(mem);
    assert_non_null(strstr(out, "--server-key"));
    assert_non_null(strstr(out, "deprecated spelling of --server_key"));
    assert_non_null(strstr(out, "\nserver_key = s.pub\n"));
    assert_null(strstr(out, "\nserver-key ="));
    free(out);
}

/* The shared entries are what the tables hold (not a copy that drifted). */
static void test_shared_entries_used(void **state) {
    (void)state;
    static const graft_option_t threads[] = {GRAFT_OPT_THREADS(0), GRAFT_OPT_END};
    for (const cli_option_table_t *t = cli_option_tables; t->command; t++) {
        const graft_option_t *o = graft_options_find(t->table, "threads");
        if (!o) continue;
        assert_string_equal(o->help, threads[0].help);
        assert_true(o->max == threads[0].max);
    }
    const graft_option_t *w = graft_options_find(graft_run_options, "warmup");
    assert_non_null(w);
    assert_non_null(strstr(w->help, "learning-rate warmup"));
    assert_ptr_equal(graft_options_find(cli_bench_step_options, "lora_rank"),
                     graft_options_find(cli_bench_step_options, "lora_shared_rank"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_shared_settings_canonical),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_flags_override_file),
        cmocka_unit_test(test_equals_form_and_bools),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_hash_in_values),
        cmocka_unit_test(test_flag_values_are_not_flags),
        cmocka_unit_test(test_long_config_line),
        cmocka_unit_test(test_dump_sets_and_unwritable),
        cmocka_unit_test(test_log_level_names),
        cmocka_unit_test(test_numbers_refused),
        cmocka_unit_test(test_unknown_and_stray_refused),
        cmocka_unit_test(test_bad_config_lines),
        cmocka_unit_test(test_other_commands_settings),
        cmocka_unit_test(test_string_length),
        cmocka_unit_test(test_dump_reload_digest),
        cmocka_unit_test(test_config_directory_refused),
        cmocka_unit_test(test_sets_and_plain_arguments),
        cmocka_unit_test(test_shared_options_agree),
        cmocka_unit_test(test_option_names),
        cmocka_unit_test(test_deprecated_aliases),
        cmocka_unit_test(test_shared_entries_used),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
