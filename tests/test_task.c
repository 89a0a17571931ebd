/* test_task.c — task data files: loading, label and group sets, counts,
 * exact token arrays for classification and generation (with every
 * truncation rule and the target mask), batches, the sampler, shards, and
 * every malformed file refused with the file and line in the log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graft.h"
#include "task.h"
#include "tokenizer.h"

enum { BOS = GRAFT_TOK_BOS, SEP = GRAFT_TOK_SEP, EOS = GRAFT_TOK_EOS, PAD = GRAFT_TOK_PAD };

typedef struct {
    char dir[64];
    char path[128];
} fixture_t;

/* The byte tokenizer the encodings are checked with (made per test). */
static graft_tokenizer_t *bytes_tok;

static int setup(void **state) {
    fixture_t *fx = calloc(1, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/graft_test_task_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    bytes_tok = graft_tokenizer_new_bytes();
    *state = fx;
    return 0;
}

static int teardown(void **state) {
    fixture_t *fx = *state;
    unlink(fx->path);
    rmdir(fx->dir);
    free(fx);
    graft_tokenizer_destroy(&bytes_tok);
    return 0;
}

/* Writes len bytes to <dir>/<name> and returns its path (in the fixture). */
static const char *write_tsv(fixture_t *fx, const char *name, const char *data, size_t len) {
    if (fx->path[0]) unlink(fx->path);
    snprintf(fx->path, sizeof fx->path, "%s/%s", fx->dir, name);
    FILE *f = fopen(fx->path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return fx->path;
}

/* graft_task_load() with stderr captured into log (NUL-terminated). */
static int load_logged(const char *path, graft_task_kind_t kind, graft_task_t **out, char *log,
                       size_t cap) {
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    assert_true(saved >= 0 && dup2(fileno(tmp), 2) >= 0);
    int rc = graft_task_load("t", kind, path, out);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(log, 1, cap - 1, tmp);
    log[n] = '\0';
    fclose(tmp);
    return rc;
}

/* ---- names -------------------------------------------------------------- */

static void test_kind_and_split_names(void **state) {
    (void)state;
    graft_task_kind_t k;
    assert_int_equal(graft_task_kind_parse("classification", &k), GRAFT_OK);
    assert_int_equal(k, GRAFT_TASK_CLASSIFY);
    assert_int_equal(graft_task_kind_parse("generation", &k), GRAFT_OK);
    assert_int_equal(k, GRAFT_TASK_GENERATE);
    assert_int_equal(graft_task_kind_parse("Classification", &k), GRAFT_EINVAL);
    assert_int_equal(graft_task_kind_parse("", &k), GRAFT_EINVAL);
    assert_string_equal(graft_task_kind_name(GRAFT_TASK_GENERATE), "generation");
    int s;
    assert_int_equal(graft_task_split_parse("dev", &s), GRAFT_OK);
    assert_int_equal(s, GRAFT_SPLIT_DEV);
    assert_int_equal(graft_task_split_parse("valid", &s), GRAFT_EINVAL);
    assert_string_equal(graft_task_split_name(GRAFT_SPLIT_TEST), "test");
}

/* ---- classification ----------------------------------------------------- */

/* A byte order mark, UTF-8 text, an empty group, and no LF at the end. */
static const char cls_tsv[] = "\xEF\xBB\xBF"
                              "train\tspam\tg1\tBuy now\n"
                              "train\tham\tg2\thello\n"
                              "dev\tham\tg1\tmeeting at 10\n"
                              "test\tspam\tg3\tfree money\n"
                              "train\tham\t\tcaf\xC3\xA9\n"
                              "train\tbacon\tg2\tcrispy";

static graft_task_t *load_cls(fixture_t *fx) {
    const char *path = write_tsv(fx, "cls.tsv", cls_tsv, sizeof cls_tsv - 1);
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load("spam", GRAFT_TASK_CLASSIFY, path, &t), GRAFT_OK);
    assert_non_null(t);
    return t;
}

static void test_load_classification(void **state) {
    graft_task_t *t = load_cls(*state);
    assert_string_equal(graft_task_name(t), "spam");
    assert_int_equal(graft_task_kind(t), GRAFT_TASK_CLASSIFY);
    assert_int_equal(graft_task_num_labels(t), 3);
    assert_string_equal(graft_task_label_name(t, 0), "bacon");
    assert_string_equal(graft_task_label_name(t, 1), "ham");
    assert_string_equal(graft_task_label_name(t, 2), "spam");
    assert_int_equal(graft_task_label_id(t, "spam"), 2);
    assert_int_equal(graft_task_label_id(t, "eggs"), -1);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TRAIN), 4);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_DEV), 1);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TEST), 1);

    const graft_example_t *e = graft_task_example(t, GRAFT_SPLIT_TRAIN, 0);
    assert_string_equal(e->text, "Buy now");
    assert_int_equal(e->text_len, 7);
    assert_string_equal(e->label, "spam");
    assert_int_equal(e->label_len, 4);
    assert_int_equal(e->label_id, 2);
    assert_string_equal(e->group, "g1");
    assert_int_equal(e->line, 1);
    e = graft_task_example(t, GRAFT_SPLIT_TRAIN, 2);
    assert_string_equal(e->text, "caf\xC3\xA9");
    assert_int_equal(e->text_len, 5);
    assert_string_equal(e->group, "");
    assert_int_equal(e->line, 5);
    e = graft_task_example(t, GRAFT_SPLIT_TRAIN, 3);
    assert_string_equal(e->text, "crispy");
    assert_int_equal(e->label_id, 0);
    assert_int_equal(e->line, 6);
    e = graft_task_example(t, GRAFT_SPLIT_DEV, 0);
    assert_string_equal(e->text, "meeting at 10");
    assert_int_equal(e->label_id, 1);
    assert_int_equal(e->line, 3);

    /* groups "", g1, g2, g3 in strcmp order */
    assert_int_equal(graft_task_num_groups(t), 4);
    assert_string_equal(graft_task_group_name(t, 0), "");
    assert_string_equal(graft_task_group_name(t, 3), "g3");
    assert_int_equal(graft_task_group_of(t, GRAFT_SPLIT_TRAIN, 0), 1);
    assert_int_equal(graft_task_group_of(t, GRAFT_SPLIT_TRAIN, 2), 0);
    assert_int_equal(graft_task_group_of(t, GRAFT_SPLIT_TEST, 0), 3);
    graft_task_destroy(&t);
    assert_null(t);
    graft_task_destroy(&t); /* a NULL task is fine */
}

static void test_encode_classify(void **state) {
    graft_task_t *t = load_cls(*state);
    int32_t tok[12], pos, label;
    /* "Buy now" fills T = 8 exactly */
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 0, 8, tok, &pos, &label);
    const int32_t want8[8] = {BOS, 'B', 'u', 'y', ' ', 'n', 'o', 'w'};
    assert_memory_equal(tok, want8, sizeof want8);
    assert_int_equal(pos, 7);
    assert_int_equal(label, 2);
    /* padded */
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 1, 8, tok, &pos, &label);
    const int32_t hello[8] = {BOS, 'h', 'e', 'l', 'l', 'o', PAD, PAD};
    assert_memory_equal(tok, hello, sizeof hello);
    assert_int_equal(pos, 5);
    assert_int_equal(label, 1);
    /* truncated: the head of the text is kept */
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 0, 4, tok, &pos, &label);
    const int32_t want4[4] = {BOS, 'B', 'u', 'y'};
    assert_memory_equal(tok, want4, sizeof want4);
    assert_int_equal(pos, 3);
    /* bytes of UTF-8 text are unsigned token ids */
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 2, 8, tok, &pos, &label);
    const int32_t cafe[8] = {BOS, 'c', 'a', 'f', 0xC3, 0xA9, PAD, PAD};
    assert_memory_equal(tok, cafe, sizeof cafe);
    assert_int_equal(pos, 5);

    /* a batch is the same rows back to back; targets unused */
    size_t idx[2] = {1, 0};
    int32_t inputs[2 * 8], bpos[2], blabels[2];
    graft_task_batch(t, bytes_tok, GRAFT_SPLIT_TRAIN, idx, 2, 8, inputs, NULL, bpos, blabels);
    assert_memory_equal(inputs, hello, sizeof hello);
    assert_memory_equal(inputs + 8, want8, sizeof want8);
    assert_int_equal(bpos[0], 5);
    assert_int_equal(bpos[1], 7);
    assert_int_equal(blabels[0], 1);
    assert_int_equal(blabels[1], 2);
    graft_task_destroy(&t);
}

/* ---- generation --------------------------------------------------------- */

static const char gen_tsv[] = "train\tab\tg\thello\n"
                              "train\tXY\tg\t0123456789abcdef\n"
                              "train\tABCDEFGHIJ\tg\t0123456789abcdef\n"
                              "dev\tZ\th\tq\n"
                              "train\tABCDEFG\tg\txy\n";

static graft_task_t *load_gen(fixture_t *fx) {
    const char *path = write_tsv(fx, "gen.tsv", gen_tsv, sizeof gen_tsv - 1);
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load("gloss", GRAFT_TASK_GENERATE, path, &t), GRAFT_OK);
    return t;
}

static void test_load_generation(void **state) {
    graft_task_t *t = load_gen(*state);
    assert_int_equal(graft_task_kind(t), GRAFT_TASK_GENERATE);
    assert_int_equal(graft_task_num_labels(t), 0);
    assert_int_equal(graft_task_label_id(t, "ab"), -1);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TRAIN), 4);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_DEV), 1);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TEST), 0);
    const graft_example_t *e = graft_task_example(t, GRAFT_SPLIT_TRAIN, 2);
    assert_string_equal(e->label, "ABCDEFGHIJ");
    assert_int_equal(e->label_len, 10);
    assert_int_equal(e->label_id, -1);
    assert_string_equal(e->text, "0123456789abcdef");
    graft_task_destroy(&t);
}

static void test_encode_generate_fits(void **state) {
    graft_task_t *t = load_gen(*state);
    int32_t in[16], tg[16], plen;
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 0, 16, in, tg, &plen);
    const int32_t want_in[16] = {BOS, 'h', 'e', 'l', 'l', 'o', SEP, 'a', 'b', EOS,
                                 PAD, PAD, PAD, PAD, PAD, PAD};
    const int32_t want_tg[16] = {-1, -1, -1, -1, -1, -1, 'a', 'b', EOS, -1,
                                 -1, -1, -1, -1, -1, -1};
    assert_memory_equal(in, want_in, sizeof want_in);
    assert_memory_equal(tg, want_tg, sizeof want_tg);
    assert_int_equal(plen, 7);

    /* exactly T+1 tokens: the EOS is only a target, never an input */
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 0, 9, in, tg, &plen);
    const int32_t in9[9] = {BOS, 'h', 'e', 'l', 'l', 'o', SEP, 'a', 'b'};
    const int32_t tg9[9] = {-1, -1, -1, -1, -1, -1, 'a', 'b', EOS};
    assert_memory_equal(in, in9, sizeof in9);
    assert_memory_equal(tg, tg9, sizeof tg9);
    assert_int_equal(plen, 7);
    graft_task_destroy(&t);
}

static void test_encode_generate_truncates_prompt_from_left(void **state) {
    graft_task_t *t = load_gen(*state);
    int32_t in[12], tg[12], plen;
    /* 16 + 2 + 3 = 21 tokens for T+1 = 13: 8 prompt bytes go, from the left */
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 1, 12, in, tg, &plen);
    const int32_t want_in[12] = {BOS, '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', SEP, 'X', 'Y'};
    const int32_t want_tg[12] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, 'X', 'Y', EOS};
    assert_memory_equal(in, want_in, sizeof want_in);
    assert_memory_equal(tg, want_tg, sizeof want_tg);
    assert_int_equal(plen, 10);
    graft_task_destroy(&t);
}

static void test_encode_generate_truncates_target(void **state) {
    graft_task_t *t = load_gen(*state);
    int32_t in[12], tg[12], plen;
    /* 16 + 10 + 3 = 29 tokens for 13: the prompt keeps min(16, 8, (12-2)/2)
     * = 5 bytes, then the target keeps 13 - 2 - 5 = 6 bytes and no EOS */
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 2, 12, in, tg, &plen);
    const int32_t want_in[12] = {BOS, 'b', 'c', 'd', 'e', 'f', SEP, 'A', 'B', 'C', 'D', 'E'};
    const int32_t want_tg[12] = {-1, -1, -1, -1, -1, -1, 'A', 'B', 'C', 'D', 'E', 'F'};
    assert_memory_equal(in, want_in, sizeof want_in);
    assert_memory_equal(tg, want_tg, sizeof want_tg);
    assert_int_equal(plen, 7);

    /* with a roomier T the prompt keeps GRAFT_TASK_MIN_PROMPT = 8 bytes:
     * 16 + 10 + 3 = 29 for 19; 8 prompt bytes go, then the target keeps
     * 19 - 2 - 8 = 9 bytes and no EOS */
    int32_t in2[18], tg2[18];
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 2, 18, in2, tg2, &plen);
    const int32_t want_in2[18] = {BOS, '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
                                  SEP, 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'};
    const int32_t want_tg2[18] = {-1,  -1,  -1,  -1,  -1,  -1,  -1,  -1,  -1,
                                  'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I'};
    assert_memory_equal(in2, want_in2, sizeof want_in2);
    assert_memory_equal(tg2, want_tg2, sizeof want_tg2);
    assert_int_equal(plen, 10);

    /* a short prompt is never cut: "xy" + "ABCDEFG" in T = 6 keeps the whole
     * prompt and cuts the target to 7 - 2 - 2 = 3 bytes */
    int32_t in3[6], tg3[6];
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 3, 6, in3, tg3, &plen);
    const int32_t want_in3[6] = {BOS, 'x', 'y', SEP, 'A', 'B'};
    const int32_t want_tg3[6] = {-1, -1, -1, 'A', 'B', 'C'};
    assert_memory_equal(in3, want_in3, sizeof want_in3);
    assert_memory_equal(tg3, want_tg3, sizeof want_tg3);
    assert_int_equal(plen, 4);

    /* the smallest context: T = 4 keeps one prompt byte and two target bytes */
    int32_t in4[4], tg4[4];
    graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, 2, 4, in4, tg4, &plen);
    const int32_t want_in4[4] = {BOS, 'f', SEP, 'A'};
    const int32_t want_tg4[4] = {-1, -1, 'A', 'B'};
    assert_memory_equal(in4, want_in4, sizeof want_in4);
    assert_memory_equal(tg4, want_tg4, sizeof want_tg4);
    assert_int_equal(plen, 3);
    graft_task_destroy(&t);
}

static void test_encode_prompt_and_batch(void **state) {
    graft_task_t *t = load_gen(*state);
    int32_t tok[12], plen;
    const graft_example_t *ex = graft_task_example(t, GRAFT_SPLIT_TRAIN, 0);
    graft_encode_prompt_text(bytes_tok, ex->text, ex->text_len, 12, 4, tok, &plen);
    const int32_t want[12] = {BOS, 'h', 'e', 'l', 'l', 'o', SEP, PAD, PAD, PAD, PAD, PAD};
    assert_memory_equal(tok, want, sizeof want);
    assert_int_equal(plen, 7);
    /* room 4 in T = 12 leaves 6 bytes for the 16-byte prompt */
    ex = graft_task_example(t, GRAFT_SPLIT_TRAIN, 1);
    graft_encode_prompt_text(bytes_tok, ex->text, ex->text_len, 12, 4, tok, &plen);
    const int32_t cut[12] = {BOS, 'a', 'b', 'c', 'd', 'e', 'f', SEP, PAD, PAD, PAD, PAD};
    assert_memory_equal(tok, cut, sizeof cut);
    assert_int_equal(plen, 8);

    size_t idx[2] = {0, 1};
    int32_t in[2 * 12], tg[2 * 12], pos[2];
    graft_task_batch(t, bytes_tok, GRAFT_SPLIT_TRAIN, idx, 2, 12, in, tg, pos, NULL);
    int32_t rin[12], rtg[12], rplen;
    for (int b = 0; b < 2; b++) {
        graft_task_encode_generate(t, bytes_tok, GRAFT_SPLIT_TRAIN, idx[b], 12, rin, rtg, &rplen);
        assert_memory_equal(in + 12 * b, rin, sizeof rin);
        assert_memory_equal(tg + 12 * b, rtg, sizeof rtg);
        assert_int_equal(pos[b], rplen);
    }
    assert_int_equal(pos[0], 7);
    assert_int_equal(pos[1], 10);
    graft_task_destroy(&t);
}

/* ---- sampling and shards ------------------------------------------------ */

static void test_sample_indices(void **state) {
    graft_task_t *t = load_cls(*state);
    size_t a[64], b[64];
    graft_rng_t r1, r2, r3;
    graft_rng_seed(&r1, 42, 0);
    graft_rng_seed(&r2, 42, 0);
    graft_rng_seed(&r3, 42, 0);
    graft_task_sample_indices(t, GRAFT_SPLIT_TRAIN, &r1, 64, a);
    graft_task_sample_indices(t, GRAFT_SPLIT_TRAIN, &r2, 64, b);
    assert_memory_equal(a, b, sizeof a);
    int seen[4] = {0};
    for (int i = 0; i < 64; i++) {
        assert_true(a[i] < 4);
        assert_int_equal(a[i], graft_rng_below(&r3, 4)); /* one draw per index */
        seen[a[i]]++;
    }
    for (int i = 0; i < 4; i++) assert_true(seen[i] > 0);
    graft_rng_seed(&r1, 43, 0);
    graft_task_sample_indices(t, GRAFT_SPLIT_TRAIN, &r1, 64, b);
    assert_memory_not_equal(a, b, sizeof a);
    graft_task_destroy(&t);
}

static void test_subset(void **state) {
    fixture_t *fx = *state;
    graft_task_t *t = load_cls(fx);
    size_t idx[3] = {3, 0, 0};
    graft_task_t *s = graft_task_subset(t, idx, 3);
    assert_non_null(s);
    const graft_example_t *want3 = graft_task_example(t, GRAFT_SPLIT_TRAIN, 3);
    int32_t want_tok[8], want_pos, want_label;
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 3, 8, want_tok, &want_pos, &want_label);
    size_t want_line = want3->line;
    graft_task_destroy(&t); /* the shard owns its own copy */

    assert_string_equal(graft_task_name(s), "spam");
    assert_int_equal(graft_task_count(s, GRAFT_SPLIT_TRAIN), 3);
    assert_int_equal(graft_task_count(s, GRAFT_SPLIT_DEV), 1);
    assert_int_equal(graft_task_count(s, GRAFT_SPLIT_TEST), 1);
    assert_int_equal(graft_task_num_labels(s), 3);
    assert_string_equal(graft_task_label_name(s, 0), "bacon");
    assert_string_equal(graft_task_label_name(s, 2), "spam");
    assert_int_equal(graft_task_num_groups(s), 4);
    const graft_example_t *e = graft_task_example(s, GRAFT_SPLIT_TRAIN, 0);
    assert_string_equal(e->text, "crispy");
    assert_string_equal(e->label, "bacon");
    assert_int_equal(e->label_id, 0);
    assert_string_equal(e->group, "g2");
    assert_int_equal(e->line, want_line);
    int32_t tok[8], pos, label;
    graft_task_encode_classify(s, bytes_tok, GRAFT_SPLIT_TRAIN, 0, 8, tok, &pos, &label);
    assert_memory_equal(tok, want_tok, sizeof tok);
    assert_int_equal(pos, want_pos);
    assert_int_equal(label, want_label);
    assert_string_equal(graft_task_example(s, GRAFT_SPLIT_TRAIN, 1)->text, "Buy now");
    assert_string_equal(graft_task_example(s, GRAFT_SPLIT_TRAIN, 2)->label, "spam");
    assert_int_equal(graft_task_group_of(s, GRAFT_SPLIT_TRAIN, 2), 1);
    assert_string_equal(graft_task_example(s, GRAFT_SPLIT_TEST, 0)->text, "free money");
    assert_int_equal(graft_task_example(s, GRAFT_SPLIT_TEST, 0)->label_id, 2);

    size_t bad[2] = {0, 3};
    graft_task_t *none = graft_task_subset(s, bad, 2); /* s has 3 train examples */
    assert_null(none);
    graft_task_destroy(&s);

    /* a generation shard copies its targets */
    graft_task_t *g = load_gen(fx);
    size_t gidx[1] = {2};
    graft_task_t *gs = graft_task_subset(g, gidx, 1);
    graft_task_destroy(&g);
    assert_non_null(gs);
    assert_int_equal(graft_task_count(gs, GRAFT_SPLIT_TRAIN), 1);
    assert_string_equal(graft_task_example(gs, GRAFT_SPLIT_TRAIN, 0)->label, "ABCDEFGHIJ");
    assert_string_equal(graft_task_example(gs, GRAFT_SPLIT_DEV, 0)->label, "Z");
    graft_task_destroy(&gs);
}

/* A client's shard file that lacks a class takes the run's label set: ids
 * and the head size then agree with the coordinator's. */
static void test_relabel(void **state) {
    fixture_t *fx = *state;
    static const char shard[] = "train\tspam\tc1\tBuy now\ntrain\tham\tc1\tlunch?\n";
    const char *path = write_tsv(fx, "shard.tsv", shard, sizeof shard - 1);
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load("spam", GRAFT_TASK_CLASSIFY, path, &t), GRAFT_OK);
    assert_int_equal(graft_task_num_labels(t), 2);
    assert_int_equal(graft_task_example(t, GRAFT_SPLIT_TRAIN, 0)->label_id, 1);

    const char *run[] = {"bacon", "ham", "spam"};
    assert_int_equal(graft_task_relabel(t, run, 3), GRAFT_OK);
    assert_int_equal(graft_task_num_labels(t), 3);
    assert_string_equal(graft_task_label_name(t, 0), "bacon");
    assert_int_equal(graft_task_label_id(t, "spam"), 2);
    const graft_example_t *e = graft_task_example(t, GRAFT_SPLIT_TRAIN, 0);
    assert_int_equal(e->label_id, 2);
    assert_string_equal(e->label, "spam");
    int32_t tok[8], pos, label;
    graft_task_encode_classify(t, bytes_tok, GRAFT_SPLIT_TRAIN, 1, 8, tok, &pos, &label);
    assert_int_equal(label, 1);
    /* A subset of a relabelled task keeps the run's set. */
    size_t idx[1] = {0};
    graft_task_t *sub = graft_task_subset(t, idx, 1);
    assert_int_equal(graft_task_num_labels(sub), 3);
    assert_int_equal(graft_task_example(sub, GRAFT_SPLIT_TRAIN, 0)->label_id, 2);
    graft_task_destroy(&sub);

    /* Refused, and t unchanged: a label outside the set; an unsorted set. */
    const char *missing[] = {"bacon", "ham"};
    const char *unsorted[] = {"spam", "ham", "bacon"};
    assert_int_equal(graft_task_relabel(t, missing, 2), GRAFT_EINVAL);
    assert_int_equal(graft_task_relabel(t, unsorted, 3), GRAFT_EINVAL);
    assert_int_equal(graft_task_num_labels(t), 3);
    assert_int_equal(graft_task_example(t, GRAFT_SPLIT_TRAIN, 0)->label_id, 2);
    graft_task_destroy(&t);
}

/* ---- malformed files ---------------------------------------------------- */

typedef struct {
    const char *data;
    size_t len; /* 0: strlen(data) */
    const char *where; /* expected "file:line:" suffix after the directory */
    const char *what;  /* expected words of the message */
} bad_case_t;

#define OK_LINE "train\tham\tg\tfine\n"

static void test_malformed_files_are_refused(void **state) {
    fixture_t *fx = *state;
    static const char nul_line[] = OK_LINE "train\tham\tg\tnul\0byte\n";
    const bad_case_t cases[] = {
        {OK_LINE "train\tham\tg\n", 0, "bad.tsv:2:", "expected 4 tab-separated fields, found 3"},
        {OK_LINE OK_LINE "train\tham\tg\tx\ty\n", 0, "bad.tsv:3:",
         "expected 4 tab-separated fields, found 5"},
        {OK_LINE "\n" OK_LINE, 0, "bad.tsv:2:", "expected 4 tab-separated fields, found 1"},
        {"train\tham\tg\tfine\r\n", 0, "bad.tsv:1:", "carriage return"},
        {OK_LINE "train\tham\tg\tbad\xff\n", 0, "bad.tsv:2:", "invalid UTF-8 at byte 16 (0xFF)"},
        {OK_LINE "train\tham\tg\t\xc0\xaf overlong\n", 0, "bad.tsv:2:", "invalid UTF-8"},
        {OK_LINE "train\tham\tg\tsurrogate \xed\xa0\x80\n", 0, "bad.tsv:2:", "invalid UTF-8"},
        {OK_LINE "train\tham\tg\tcut \xe2\x82", 0, "bad.tsv:2:", "invalid UTF-8"},
        {OK_LINE "valid\tham\tg\tx\n", 0, "bad.tsv:2:", "unknown split \"valid\""},
        {OK_LINE "Train\tham\tg\tx\n", 0, "bad.tsv:2:", "unknown split"},
        {OK_LINE OK_LINE "dev\tham\tg\t\n", 0, "bad.tsv:3:", "empty text"},
        {"train\t\tg\tx\n", 0, "bad.tsv:1:", "empty label"},
        {nul_line, sizeof nul_line - 1, "bad.tsv:2:", "NUL byte"},
        {"dev\tham\tg\tx\ntest\tspam\tg\ty\n", 0, "bad.tsv:", "no train examples"},
        {"", 0, "bad.tsv:", "no train examples"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len = cases[c].len ? cases[c].len : strlen(cases[c].data);
        const char *path = write_tsv(fx, "bad.tsv", cases[c].data, len);
        graft_task_t *t = NULL;
        char log[4096];
        int rc = load_logged(path, GRAFT_TASK_CLASSIFY, &t, log, sizeof log);
        if (rc != GRAFT_EFORMAT || !strstr(log, cases[c].where) || !strstr(log, cases[c].what))
            fail_msg("case %zu: rc %d, log: %s", c, rc, log);
        assert_null(t);
        /* the message starts with the path */
        assert_non_null(strstr(log, fx->dir));
    }
    /* generation files are checked the same way */
    static const char short_line[] = OK_LINE "train\tham\tg\n";
    const char *path = write_tsv(fx, "bad.tsv", short_line, sizeof short_line - 1);
    graft_task_t *t = NULL;
    char log[4096];
    assert_int_equal(load_logged(path, GRAFT_TASK_GENERATE, &t, log, sizeof log), GRAFT_EFORMAT);
    assert_non_null(strstr(log, "bad.tsv:2: expected 4 tab-separated fields, found 3"));
    assert_null(t);

    assert_int_equal(load_logged("/nonexistent/graft/task.tsv", GRAFT_TASK_CLASSIFY, &t, log,
                                 sizeof log),
                     GRAFT_EIO);
    assert_non_null(strstr(log, "/nonexistent/graft/task.tsv"));
    assert_null(t);
}

/* A process that trains nothing on a task (a federated coordinator) takes a
 * file without train rows: its labels come from the other splits. */
static void test_untrained_file(void **state) {
    fixture_t *fx = *state;
    static const char data[] = "dev\tham\tg\tx\ntest\tspam\tg\ty\n";
    const char *path = write_tsv(fx, "labels.tsv", data, sizeof data - 1);
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load_untrained("mail", GRAFT_TASK_CLASSIFY, path, &t), GRAFT_OK);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TRAIN), 0);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_DEV), 1);
    assert_int_equal(graft_task_num_labels(t), 2);
    assert_string_equal(graft_task_label_name(t, 1), "spam");
    graft_task_destroy(&t);
    /* a malformed line is still refused */
    static const char bad[] = "dev\tham\tg\n";
    path = write_tsv(fx, "bad.tsv", bad, sizeof bad - 1);
    assert_int_equal(graft_task_load_untrained("mail", GRAFT_TASK_CLASSIFY, path, &t),
                     GRAFT_EFORMAT);
    assert_null(t);
}

/* Task files are read whole (graft_read_file): a pipe longer than the
 * first buffer is read to its end, an empty file is empty, and a directory
 * is refused with the system's reason. */
static void test_read_file_streams(void **state) {
    fixture_t *fx = *state;
    enum { ROWS = 5000 }; /* about 100 kB: more than the first 64 kB buffer */
    snprintf(fx->path, sizeof fx->path, "%s/fifo.tsv", fx->dir);
    assert_int_equal(mkfifo(fx->path, 0600), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = fopen(fx->path, "w");
        for (int i = 0; f && i < ROWS; i++)
            fprintf(f, "%s\t%s\tg%d\ttext number %d of the pipe\n", i % 10 ? "train" : "test",
                    i % 3 ? "ham" : "spam", i % 7, i);
        _exit(f && fclose(f) == 0 ? 0 : 1);
    }
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load("pipe", GRAFT_TASK_CLASSIFY, fx->path, &t), GRAFT_OK);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(graft_task_count(t, GRAFT_SPLIT_TRAIN) + graft_task_count(t, GRAFT_SPLIT_TEST),
                     ROWS);
    assert_string_equal(graft_task_example(t, GRAFT_SPLIT_TEST, ROWS / 10 - 1)->text,
                        "text number 4990 of the pipe");
    graft_task_destroy(&t);

    size_t n = 1;
    char *buf = graft_read_file(write_tsv(fx, "empty.tsv", "", 0), &n);
    assert_non_null(buf);
    assert_int_equal(n, 0);
    assert_int_equal(buf[0], '\0');
    free(buf);
    errno = 0;
    assert_null(graft_read_file(fx->dir, &n));
    assert_int_equal(errno, EISDIR);
    char log[1024];
    assert_int_equal(load_logged(fx->dir, GRAFT_TASK_CLASSIFY, &t, log, sizeof log), GRAFT_EIO);
    assert_non_null(strstr(log, "Is a directory"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_and_split_names),
        cmocka_unit_test_setup_teardown(test_load_classification, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_classify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_generation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_generate_fits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_generate_truncates_prompt_from_left, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_encode_generate_truncates_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_prompt_and_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample_indices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relabel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_files_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_file_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrained_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
