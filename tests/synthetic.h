/* synthetic.h — the synthetic tasks of scripts/synthetic_tasks.py (600
 * training and 100 dev and test examples per task) in a fresh temporary
 * directory, and the run settings the training tests share, for the test
 * programs that train on them (test_methods, test_mask). Header-only:
 * static functions, one copy per test program; include it after cmocka.h.
 * GRAFT_KEEP_TMP=1 keeps the directory for a look after the run.
 */
#ifndef GRAFT_TEST_SYNTHETIC_H
#define GRAFT_TEST_SYNTHETIC_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runconfig.h"

/* Makes /tmp/graft_test_NAME_XXXXXX in dir (cap bytes) and writes the task
 * files into it; 0 on success, -1 (with a message on stderr) if not. */
static int synthetic_tasks_make(char *dir, size_t cap, const char *name) {
    snprintf(dir, cap, "/tmp/graft_test_%s_XXXXXX", name);
    if (!mkdtemp(dir)) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 %s/scripts/synthetic_tasks.py %s --train 600 --eval 100 >/dev/null",
             GRAFT_SOURCE_DIR, dir);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "test_%s: '%s' failed (status %d)\n", name, cmd, rc);
        return -1;
    }
    return 0;
}

static int synthetic_remove_entry(const char *path, const struct stat *sb, int flag,
                                  struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes the directory and everything in it, unless GRAFT_KEEP_TMP is set. */
static void synthetic_tasks_remove(const char *dir) {
    if (dir[0] && !getenv("GRAFT_KEEP_TMP"))
        nftw(dir, synthetic_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* The shared settings: the tiny preset, 32 tokens, batch 16, warmup 20,
 * seed 1, whole evaluation splits; the classification tasks of dir, both
 * (only NULL) or the one named. */
static void synthetic_run_config(graft_run_config_t *cfg, const char *dir, const char *method,
                                 const char *only) {
    char *argv[] = {"test", NULL};
    assert_int_equal(graft_options_parse(graft_run_options, cfg, 1, argv, ""), GRAFT_OPTS_OK);
    char tasks[512];
    if (only)
        snprintf(tasks, sizeof tasks, "%s:classification:%s/%s.tsv", only, dir, only);
    else
        snprintf(tasks, sizeof tasks,
                 "majority:classification:%s/majority.tsv,pairs:classification:%s/pairs.tsv",
                 dir, dir);
    const char *settings[][2] = {{"preset", "tiny"}, {"seq", "32"},     {"tasks", tasks},
                                 {"method", method}, {"batch", "16"},   {"warmup", "20"},
                                 {"eval_max", "0"},  {"seed", "1"}};
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        assert_int_equal(
            graft_options_set(graft_run_options, cfg, settings[i][0], settings[i][1], "test"), 0);
}

#endif
