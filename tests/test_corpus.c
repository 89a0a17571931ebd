/* test_corpus.c — loading a corpus from a temporary directory: file order,
 * EOS separators, the held-out split, sampling from a seed, evaluation
 * batches, and the errors for a missing path or an empty corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include "corpus.h"
#include "rng.h"
#include "tokenizer.h"

typedef struct {
    char dir[64];
} fixture_t;

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void make_subdir(const char *dir, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(mkdir(path, 0755), 0);
}

static int setup(void **state) {
    fixture_t *fx = malloc(sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/graft_test_corpus_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    *state = fx;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state) {
    fixture_t *fx = *state;
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

/* The mixed directory: files created out of order, a subfolder, hidden files
 * and folders, and an empty file. In strcmp order of the full path the
 * visible non-empty files are Z.txt, a.txt, b.txt, sub/c.txt. */
static void make_mixed_dir(const char *dir) {
    write_file(dir, "b.txt", "hello", 5);
    make_subdir(dir, "sub");
    write_file(dir, "sub/c.txt", "xyz", 3);
    write_file(dir, "a.txt", "AB", 2);
    write_file(dir, "Z.txt", "Q", 1);
    write_file(dir, "empty.txt", "", 0);
    write_file(dir, ".hidden", "SECRET", 6);
    write_file(dir, "sub/.h2", "no", 2);
    make_subdir(dir, ".git");
    write_file(dir, ".git/HEAD", "ref", 3);
}

static const int32_t mixed_stream[] = {'Q', GRAFT_TOK_EOS, 'A', 'B', GRAFT_TOK_EOS,
                                       'h', 'e', 'l', 'l', 'o', GRAFT_TOK_EOS,
                                       'x', 'y', 'z'};
#define MIXED_N (sizeof mixed_stream / sizeof mixed_stream[0])

static void assert_stream(const graft_corpus_t *c, const int32_t *want, size_t n) {
    size_t n_train = graft_corpus_size(c, GRAFT_CORPUS_TRAIN);
    assert_int_equal(n_train + graft_corpus_size(c, GRAFT_CORPUS_HELDOUT), n);
    const uint16_t *train = graft_corpus_tokens(c, GRAFT_CORPUS_TRAIN);
    const uint16_t *held = graft_corpus_tokens(c, GRAFT_CORPUS_HELDOUT);
    for (size_t i = 0; i < n; i++) {
        int32_t got = i < n_train ? train[i] : held[i - n_train];
        assert_int_equal(got, want[i]);
    }
}

static void test_load_dir_order_and_separators(void **state) {
    fixture_t *fx = *state;
    make_mixed_dir(fx->dir);
    graft_corpus_t *c = NULL;
    assert_int_equal(graft_corpus_load(fx->dir, 0.0, NULL, &c), GRAFT_OK);
    assert_non_null(c);
    assert_int_equal(graft_corpus_files(c), 4);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_TRAIN), MIXED_N);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_HELDOUT), 0);
    assert_int_equal(graft_corpus_eval_batches(c, 1, 1), 0);
    assert_stream(c, mixed_stream, MIXED_N);
    graft_corpus_destroy(&c);
    assert_null(c);
    graft_corpus_destroy(&c); /* destroying NULL is a no-op */

    /* A trailing slash names the same directory. */
    char slash[80];
    snprintf(slash, sizeof slash, "%s/", fx->dir);
    assert_int_equal(graft_corpus_load(slash, 0.0, NULL, &c), GRAFT_OK);
    assert_stream(c, mixed_stream, MIXED_N);
    graft_corpus_destroy(&c);
}

static void test_heldout_split_boundary(void **state) {
    fixture_t *fx = *state;
    make_mixed_dir(fx->dir);
    graft_corpus_t *c = NULL;
    /* 14 tokens, 25% held out: floor(3.5) = 3 tokens, exactly "xyz". */
    assert_int_equal(graft_corpus_load(fx->dir, 0.25, NULL, &c), GRAFT_OK);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_TRAIN), 11);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_HELDOUT), 3);
    const uint16_t *held = graft_corpus_tokens(c, GRAFT_CORPUS_HELDOUT);
    assert_int_equal(held[0], 'x');
    assert_int_equal(held[2], 'z');
    assert_int_equal(graft_corpus_tokens(c, GRAFT_CORPUS_TRAIN)[10], GRAFT_TOK_EOS);
    assert_stream(c, mixed_stream, MIXED_N);
    /* 3 held-out tokens make one (1,2) batch: inputs "xy", targets "yz". */
    assert_int_equal(graft_corpus_eval_batches(c, 1, 2), 1);
    assert_int_equal(graft_corpus_eval_batches(c, 1, 3), 0);
    int32_t in[2], tg[2];
    graft_corpus_eval_batch(c, 0, 1, 2, in, tg);
    assert_int_equal(in[0], 'x');
    assert_int_equal(in[1], 'y');
    assert_int_equal(tg[0], 'y');
    assert_int_equal(tg[1], 'z');
    graft_corpus_destroy(&c);

    /* 50% of 14 is 7: the boundary falls inside "hello". */
    assert_int_equal(graft_corpus_load(fx->dir, 0.5, NULL, &c), GRAFT_OK);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_TRAIN), 7);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_HELDOUT), 7);
    assert_int_equal(graft_corpus_tokens(c, GRAFT_CORPUS_HELDOUT)[0], 'l');
    graft_corpus_destroy(&c);
}

static void test_load_single_file(void **state) {
    fixture_t *fx = *state;
    make_mixed_dir(fx->dir);
    char path[128];
    snprintf(path, sizeof path, "%s/b.txt", fx->dir);
    graft_corpus_t *c = NULL;
    assert_int_equal(graft_corpus_load(path, 0.0, NULL, &c), GRAFT_OK);
    assert_int_equal(graft_corpus_files(c), 1);
    const int32_t want[] = {'h', 'e', 'l', 'l', 'o'};
    assert_stream(c, want, 5);
    graft_corpus_destroy(&c);
}

/* One file whose byte at position p is p, so a window's first token is its
 * offset: 250 tokens, 20% (50) held out. */
static graft_corpus_t *load_ramp(const char *dir) {
    unsigned char ramp[250];
    for (int i = 0; i < 250; i++) ramp[i] = (unsigned char)i;
    write_file(dir, "ramp.bin", ramp, sizeof ramp);
    graft_corpus_t *c = NULL;
    assert_int_equal(graft_corpus_load(dir, 0.2, NULL, &c), GRAFT_OK);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_TRAIN), 200);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_HELDOUT), 50);
    return c;
}

static void test_sample_windows_and_determinism(void **state) {
    fixture_t *fx = *state;
    graft_corpus_t *c = load_ramp(fx->dir);
    enum { B = 64, T = 8, ROUNDS = 50 };
    int32_t in[B * T], tg[B * T], in2[B * T], tg2[B * T];
    graft_rng_t rng, again, replay;
    graft_rng_seed(&rng, 42, 0);
    graft_rng_seed(&again, 42, 0);
    graft_rng_seed(&replay, 42, 0);
    int min_off = 1000, max_off = -1;
    for (int r = 0; r < ROUNDS; r++) {
        graft_corpus_sample(c, &rng, B, T, in, tg);
        graft_corpus_sample(c, &again, B, T, in2, tg2);
        assert_memory_equal(in, in2, sizeof in);
        assert_memory_equal(tg, tg2, sizeof tg);
        for (int b = 0; b < B; b++) {
            /* The offset is exactly the next draw over [0, 200 - T). */
            int off = (int)graft_rng_below(&replay, 200 - T);
            assert_int_equal(in[b * T], off);
            for (int t = 0; t < T; t++) {
                assert_int_equal(in[b * T + t], off + t);
                assert_int_equal(tg[b * T + t], off + t + 1);
            }
            assert_true(tg[b * T + T - 1] < 200); /* never reads held-out tokens */
            if (off < min_off) min_off = off;
            if (off > max_off) max_off = off;
        }
    }
    assert_int_equal(min_off, 0);
    assert_int_equal(max_off, 200 - T - 1);

    /* Another seed gives other windows. */
    graft_rng_t other;
    graft_rng_seed(&other, 43, 0);
    graft_corpus_sample(c, &other, B, T, in2, tg2);
    graft_rng_seed(&rng, 42, 0);
    graft_corpus_sample(c, &rng, B, T, in, tg);
    assert_memory_not_equal(in, in2, sizeof in);
    graft_corpus_destroy(&c);
}

static void test_eval_batches_exact(void **state) {
    fixture_t *fx = *state;
    graft_corpus_t *c = load_ramp(fx->dir);
    /* 50 held-out tokens (values 200..249); a (2,4) batch needs 8 + 1. */
    enum { B = 2, T = 4 };
    size_t nb = graft_corpus_eval_batches(c, B, T);
    assert_int_equal(nb, 6); /* (50 - 1) / 8 */
    int32_t in[B * T], tg[B * T];
    for (size_t i = 0; i < nb; i++) {
        graft_corpus_eval_batch(c, i, B, T, in, tg);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                int want = 200 + (int)i * B * T + b * T + t;
                assert_int_equal(in[b * T + t], want);
                assert_int_equal(tg[b * T + t], want + 1);
            }
    }
    /* Exactly one 49-token batch fits, a 50-token one does not (needs 51). */
    assert_int_equal(graft_corpus_eval_batches(c, 7, 7), 1);
    assert_int_equal(graft_corpus_eval_batches(c, 5, 10), 0);
    assert_int_equal(graft_corpus_eval_batches(c, 1, 49), 1);
    graft_corpus_destroy(&c);
}

static void test_errors(void **state) {
    fixture_t *fx = *state;
    graft_corpus_t *c = NULL;
    char path[128];

    snprintf(path, sizeof path, "%s/no/such/path", fx->dir);
    assert_int_equal(graft_corpus_load(path, 0.05, NULL, &c), GRAFT_EIO);
    assert_null(c);

    /* An empty directory, then one with only empty and hidden files. */
    assert_int_equal(graft_corpus_load(fx->dir, 0.05, NULL, &c), GRAFT_EFORMAT);
    assert_null(c);
    write_file(fx->dir, "empty.txt", "", 0);
    write_file(fx->dir, ".hidden", "text", 4);
    make_subdir(fx->dir, "sub");
    assert_int_equal(graft_corpus_load(fx->dir, 0.05, NULL, &c), GRAFT_EFORMAT);
    assert_null(c);
    snprintf(path, sizeof path, "%s/empty.txt", fx->dir);
    assert_int_equal(graft_corpus_load(path, 0.05, NULL, &c), GRAFT_EFORMAT);
    assert_null(c);

    /* Held-out fractions outside [0, 1). */
    write_file(fx->dir, "a.txt", "abc", 3);
    assert_int_equal(graft_corpus_load(fx->dir, 1.0, NULL, &c), GRAFT_EINVAL);
    assert_int_equal(graft_corpus_load(fx->dir, -0.1, NULL, &c), GRAFT_EINVAL);
    assert_null(c);

    /* An unreadable file (root reads everything, so only as a user). */
    if (geteuid() != 0) {
        snprintf(path, sizeof path, "%s/a.txt", fx->dir);
        assert_int_equal(chmod(path, 0), 0);
        assert_int_equal(graft_corpus_load(fx->dir, 0.05, NULL, &c), GRAFT_EIO);
        assert_null(c);
        assert_int_equal(chmod(path, 0644), 0);
    }
    assert_int_equal(graft_corpus_load(fx->dir, 0.0, NULL, &c), GRAFT_OK);
    assert_int_equal(graft_corpus_size(c, GRAFT_CORPUS_TRAIN), 3);
    graft_corpus_destroy(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_dir_order_and_separators, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heldout_split_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_single_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample_windows_and_determinism, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval_batches_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
