/* test_pretrain.c — pretraining lowers the held-out loss, and a run killed
 * midway and resumed from its checkpoint ends bit-identical to an
 * uninterrupted run (weights and final loss). The ready hook runs once the
 * inputs are checked and before a checkpoint, never for a refused run; so
 * `graft pretrain` refused for its corpus leaves no OUT.config.txt, and
 * logs the one specific error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capture.h"
#include "gpt2.h"
#include "pretrain.h"

static char dir[256];

/* A small English-like corpus: repeated, varied sentences. */
static void write_corpus(const char *path) {
    static const char *words[] = {"the", "model", "learns", "a", "small", "text", "and",
                                  "graft", "trains", "modules", "on", "frozen", "trunk", "data"};
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    unsigned s = 12345;
    for (int i = 0; i < 6000; i++) {
        s = s * 1103515245u + 12345u;
        fprintf(f, "%s%s", words[(s >> 16) % 14], (s >> 8) % 9 == 0 ? ".\n" : " ");
    }
    fclose(f);
}

static void base_config(graft_pretrain_config_t *cfg, const char *out) {
    char *argv[] = {"pretrain", NULL};
    assert_int_equal(graft_options_parse(graft_pretrain_options, cfg, 1, argv, ""), 0);
    snprintf(cfg->preset, sizeof cfg->preset, "tiny");
    snprintf(cfg->data, sizeof cfg->data, "%s/corpus.txt", dir);
    snprintf(cfg->out, sizeof cfg->out, "%s/%s", dir, out);
    cfg->steps = 40;
    cfg->batch = 8;
    cfg->warmup = 5;
    cfg->lr = 3e-3f;
    cfg->eval_every = 1000;
    cfg->eval_batches = 4;
    cfg->checkpoint_every = 10;
    cfg->log_every = 100;
    cfg->seed = 7;
}

/* What the ready hook saw: how often it was called, whether the
 * checkpoint existed then, and the code it returns. */
typedef struct {
    const char *out;
    int calls;
    int out_existed;
    int rc;
} ready_probe_t;

static int probe_ready(void *ctx) {
    ready_probe_t *p = ctx;
    p->calls++;
    p->out_existed = access(p->out, F_OK) == 0;
    return p->rc;
}

static void load_params(const char *path, float **params, size_t *n) {
    graft_gpt2_t *m = NULL;
    assert_int_equal(graft_gpt2_load(path, &m), GRAFT_OK);
    *n = m->num_params;
    *params = malloc(*n * sizeof(float));
    memcpy(*params, m->params_memory, *n * sizeof(float));
    graft_gpt2_destroy(&m);
}

static void test_loss_falls_and_resume_is_exact(void **state) {
    (void)state;
    graft_pretrain_config_t cfg;
    graft_pretrain_result_t full, part, resumed;

    base_config(&cfg, "full.safetensors");
    ready_probe_t probe = {.out = cfg.out};
    assert_int_equal(graft_pretrain_run(&cfg, probe_ready, &probe, &full), GRAFT_OK);
    assert_int_equal(probe.calls, 1);
    assert_false(probe.out_existed); /* called before the first checkpoint */
    assert_int_equal(full.steps_done, 40);
    /* Held-out loss falls well below its starting value (about ln 260). */
    assert_true(full.final_eval_loss < 0.8f * full.first_eval_loss);

    /* Killed at step 25: its last checkpoint is the one of step 20. */
    base_config(&cfg, "killed.safetensors");
    cfg.stop_after = 25;
    assert_int_equal(graft_pretrain_run(&cfg, NULL, NULL, &part), GRAFT_OK);
    assert_int_equal(part.steps_done, 25);

    base_config(&cfg, "killed.safetensors");
    snprintf(cfg.resume, sizeof cfg.resume, "%s/killed.safetensors", dir);
    assert_int_equal(graft_pretrain_run(&cfg, NULL, NULL, &resumed), GRAFT_OK);
    assert_int_equal(resumed.steps_done, 40);
    assert_true(resumed.final_eval_loss == full.final_eval_loss);

    char a[300], b[300];
    snprintf(a, sizeof a, "%s/full.safetensors", dir);
    snprintf(b, sizeof b, "%s/killed.safetensors", dir);
    float *pa, *pb;
    size_t na, nb;
    load_params(a, &pa, &na);
    load_params(b, &pb, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, na * sizeof(float));
    free(pa);
    free(pb);
}

static void test_bad_inputs_are_refused(void **state) {
    (void)state;
    graft_pretrain_config_t cfg;
    graft_pretrain_result_t res;
    ready_probe_t probe = {0};
    base_config(&cfg, "x.safetensors");
    snprintf(cfg.preset, sizeof cfg.preset, "huge");
    assert_int_equal(graft_pretrain_run(&cfg, probe_ready, &probe, &res), GRAFT_EINVAL);
    base_config(&cfg, "x.safetensors");
    snprintf(cfg.data, sizeof cfg.data, "%s/missing.txt", dir);
    assert_true(graft_pretrain_run(&cfg, probe_ready, &probe, &res) < 0);
    base_config(&cfg, "x.safetensors");
    snprintf(cfg.resume, sizeof cfg.resume, "%s/corpus.txt", dir); /* not a checkpoint */
    assert_true(graft_pretrain_run(&cfg, probe_ready, &probe, &res) < 0);
    assert_int_equal(probe.calls, 0);
    /* A hook that fails stops the run with its error, before a checkpoint. */
    base_config(&cfg, "x.safetensors");
    probe = (ready_probe_t){.out = cfg.out, .rc = GRAFT_EIO};
    assert_int_equal(graft_pretrain_run(&cfg, probe_ready, &probe, &res), GRAFT_EIO);
    assert_int_equal(probe.calls, 1);
    assert_int_equal(access(cfg.out, F_OK), -1);
}

/* A corpus shorter than a train window or one evaluation batch is refused
 * with its size and what the settings need, before a checkpoint is written. */
static void test_small_corpus_is_refused(void **state) {
    (void)state;
    char data[300], out[GRAFT_OPT_STR], log[300];
    snprintf(data, sizeof data, "%s/small.txt", dir);
    FILE *f = fopen(data, "w");
    assert_non_null(f);
    for (int i = 0; i < 12; i++) fputs("some text ", f); /* 120 bytes */
    fclose(f);
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    graft_pretrain_config_t cfg;
    graft_pretrain_result_t res;
    base_config(&cfg, "small.safetensors");
    snprintf(cfg.data, sizeof cfg.data, "%s", data);
    snprintf(out, sizeof out, "%s", cfg.out);
    cfg.batch = 4;
    cfg.seq = 16; /* 114 train tokens hold a window; 6 held out are not a batch */
    ready_probe_t probe = {0};
    capture_begin(log);
    assert_int_equal(graft_pretrain_run(&cfg, probe_ready, &probe, &res), GRAFT_EINVAL);
    assert_int_equal(probe.calls, 0);
    capture_end_expect("small.txt has 120 tokens (114 train, 6 held out); --seq 16, --batch 4 "
                       "and --heldout 0.05 need at least 17 train tokens and 65 held out");
    f = fopen(data, "w"); /* 3 bytes: not even one train window of the context */
    assert_non_null(f);
    fputs("abc", f);
    fclose(f);
    cfg.batch = 2;
    cfg.seq = 0;
    cfg.heldout = 0.5f;
    capture_begin(log);
    assert_int_equal(graft_pretrain_run(&cfg, NULL, NULL, &res), GRAFT_EINVAL);
    capture_end_expect("has 3 tokens (2 train, 1 held out); --seq 32, --batch 2 and --heldout 0.5 "
                       "need at least 33 train tokens and 65 held out (one evaluation batch), "
                       "i.e. a corpus of at least 130 tokens");
    assert_int_equal(access(out, F_OK), -1);
}

/* Runs `graft pretrain ARGS` with stderr in dir/cli.err; its exit status. */
static int run_cli(const char *args, char *err, size_t cap) {
    char cmd[2048], path[300];
    snprintf(path, sizeof path, "%s/cli.err", dir);
    snprintf(cmd, sizeof cmd, "%s/graft pretrain --preset tiny --threads 1 %s >/dev/null 2>%s",
             GRAFT_BINARY_DIR, args, path);
    int st = system(cmd);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    err[fread(err, 1, cap - 1, f)] = '\0';
    fclose(f);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* The command writes OUT.config.txt only for a run that starts; a refused
 * one leaves nothing and logs its own error, not a generic "failed" line. */
static void test_command_writes_config_only_when_it_runs(void **state) {
    (void)state;
    char args[1024], err[1 << 14], config[300];
    snprintf(config, sizeof config, "%s/tiny.txt", dir);
    FILE *f = fopen(config, "w"); /* 3 bytes: no train window */
    assert_non_null(f);
    fputs("abc", f);
    fclose(f);
    snprintf(config, sizeof config, "%s/cli/trunk.config.txt", dir);
    snprintf(args, sizeof args, "--data %s/tiny.txt --out %s/cli/trunk.safetensors", dir, dir);
    assert_int_equal(run_cli(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "corpus too small for --seq/--heldout"));
    assert_null(strstr(err, "failed"));
    assert_int_equal(access(config, F_OK), -1);
    snprintf(args, sizeof args, "--data %s/missing.txt --out %s/cli/trunk.safetensors", dir, dir);
    assert_int_equal(run_cli(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "missing.txt: No such file or directory"));
    assert_null(strstr(err, "failed"));
    assert_int_equal(access(config, F_OK), -1);
    snprintf(args, sizeof args, "--data %s/corpus.txt --out %s/cli/trunk.safetensors --steps 2 "
             "--batch 4 --eval_batches 1 --checkpoint_every 100", dir, dir);
    assert_int_equal(run_cli(args, err, sizeof err), 0);
    assert_int_equal(access(config, R_OK), 0);
    /* Resumed, it still writes the run from its start: no --resume. */
    snprintf(args, sizeof args, "--data %s/corpus.txt --out %s/cli/trunk.safetensors --steps 3 "
             "--batch 4 --eval_batches 1 --checkpoint_every 100 --resume "
             "%s/cli/trunk.safetensors", dir, dir, dir);
    assert_int_equal(run_cli(args, err, sizeof err), 0);
    f = fopen(config, "r");
    assert_non_null(f);
    char text[1 << 14];
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
    assert_non_null(strstr(text, "\nresume =\n"));
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/graft_pretrain_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    char path[300];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    write_corpus(path);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_falls_and_resume_is_exact),
        cmocka_unit_test(test_bad_inputs_are_refused),
        cmocka_unit_test(test_small_corpus_is_refused),
        cmocka_unit_test(test_command_writes_config_only_when_it_runs),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    return rc;
}
