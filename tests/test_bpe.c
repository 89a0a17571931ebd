/* test_bpe.c — GPT-2's BPE tokenizer (common/bpe.c).
 *
 * On a small vocabulary written here: merges by rank, every byte string
 * round trips (invalid UTF-8 too), and malformed vocabulary files are
 * refused. With GRAFT_BPE_VOCAB (GPT-2's vocab.json and merges.txt) and
 * GRAFT_BPE_EXPECTED (texts with the ids of the JavaScript reference
 * encoder, written by tests/bpe/encode_ref.js) set, as tests/test_bpe.sh
 * does: every text encodes to the reference's ids and decodes back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "bpe.h"

/* ---- a small vocabulary on disk ------------------------------------------ */

/* GPT-2's printable stand-in for byte b, as UTF-8 into out (NUL-ended). */
static void mapped_byte(int b, char out[4]) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    int cp = b;
    if (!printable) {
        cp = 256;
        for (int c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae)) cp++;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = '\0';
    }
}

static char dir_template[] = "/tmp/graft-test-bpe-XXXXXX";
static const char *dir;

static void write_file(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* vocab.json: the 256 bytes (ids 0..255), then "Ġt" (256), "he" (257),
 * "Ġthe" (258), "ab" (259), "<|endoftext|>" (260); merges.txt ranks
 * "h e" < "Ġ t" < "Ġt he" < "a b". */
static void write_small_vocab(void) {
    char *json = malloc(16384), *p = json;
    p += sprintf(p, "{");
    for (int b = 0; b < 256; b++) {
        char m[4];
        mapped_byte(b, m);
        const char *escape = b == '"' || b == '\\' ? "\\" : "";
        p += sprintf(p, "%s\"%s%s\": %d", b ? ", " : "", escape, m, b);
    }
    sprintf(p, ", \"\xc4\xa0t\": 256, \"he\": 257, \"\xc4\xa0the\": 258, \"ab\": 259, "
               "\"<|endoftext|>\": 260}");
    write_file("vocab.json", json);
    free(json);
    write_file("merges.txt", "#version: 0.2\nh e\n\xc4\xa0 t\n\xc4\xa0t he\na b\n");
}

static int setup(void **state) {
    (void)state;
    dir = mkdtemp(dir_template);
    return dir ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The bytes of ids, joined, are text (len bytes). */
static void check_decode(const graft_bpe_t *b, const int32_t *ids, size_t n, const char *text,
                         size_t len) {
    char *back = malloc(len + 1);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const char *s = graft_bpe_token_bytes(b, ids[i], &k);
        assert_non_null(s);
        assert_true(w + k <= len);
        memcpy(back + w, s, k);
        w += k;
    }
    assert_int_equal(w, len);
    assert_memory_equal(back, text, len);
    free(back);
}

/* Encodes text (len bytes), checks the n_want ids (their values too unless
 * want is NULL) and decodes them back. */
static void check_encode(const graft_bpe_t *b, const char *text, size_t len, const int32_t *want,
                         size_t n_want) {
    int32_t *ids = malloc((len + 1) * sizeof *ids); /* never more ids than bytes */
    size_t n = graft_bpe_encode(b, text, len, ids, len + 1);
    assert_int_equal(n, n_want);
    if (want) assert_memory_equal(ids, want, n * sizeof *ids);
    check_decode(b, ids, n, text, len);
    free(ids);
}

static void test_small_vocab_merges(void **state) {
    (void)state;
    write_small_vocab();
    graft_bpe_t *b = NULL;
    assert_int_equal(graft_bpe_load(dir, &b), GRAFT_OK);
    assert_int_equal(graft_bpe_vocab_size(b), 261);
    assert_int_equal(graft_bpe_endoftext(b), 260);
    /* " the": "h e" first, then "Ġ t", then "Ġt he" */
    check_encode(b, " the", 4, (const int32_t[]){258}, 1);
    /* "the" alone: "h e" only, "t" stays a byte */
    check_encode(b, "the", 3, (const int32_t[]){'t', 257}, 2);
    /* pieces: "ababa" (merged twice, "a" left) and " the" */
    check_encode(b, "ababa the", 9, (const int32_t[]){259, 259, 'a', 258}, 4);
    /* "aaab" : only the last pair is a merge */
    check_encode(b, "aaab", 4, (const int32_t[]){'a', 'a', 259}, 3);
    /* A piece longer than the rescan limit takes the heap: "ab" x 150 merges
     * into 150 tokens, and "hehe...h" into "he" tokens and a last "h". */
    char longp[301];
    int32_t want[150];
    for (int i = 0; i < 300; i++) longp[i] = i % 2 ? 'b' : 'a';
    for (int i = 0; i < 150; i++) want[i] = 259;
    check_encode(b, longp, 300, want, 150);
    for (int i = 0; i < 301; i++) longp[i] = i % 2 ? 'e' : 'h';
    int32_t want_he[151];
    for (int i = 0; i < 150; i++) want_he[i] = 257;
    want_he[150] = 'h';
    check_encode(b, longp, 301, want_he, 151);
    /* The literal text of the special token is text, not the token. */
    int32_t ids[32];
    size_t n = graft_bpe_encode(b, "<|endoftext|>", 13, ids, 32);
    for (size_t i = 0; i < n; i++) assert_int_not_equal(ids[i], 260);
    /* Output past cap is counted, not written. */
    ids[1] = -7;
    assert_int_equal(graft_bpe_encode(b, "x y z", 5, ids, 1), 5);
    assert_int_equal(ids[0], 'x');
    assert_int_equal(ids[1], -7);
    graft_bpe_destroy(&b);
    assert_null(b);
}

static void test_any_bytes_round_trip(void **state) {
    (void)state;
    write_small_vocab();
    graft_bpe_t *b = NULL;
    assert_int_equal(graft_bpe_load(dir, &b), GRAFT_OK);
    char bytes[256];
    for (int i = 0; i < 256; i++) bytes[i] = (char)(255 - i); /* mostly invalid UTF-8 */
    check_encode(b, bytes, sizeof bytes, NULL, 256);
    const char mixed[] = "ok \xff\xfe then \xc3\x28 and \xe2\x82 end \xf0\x9f\x98\x80";
    int32_t ids[64];
    size_t n = graft_bpe_encode(b, mixed, sizeof mixed - 1, ids, 64);
    assert_true(n <= 64);
    check_decode(b, ids, n, mixed, sizeof mixed - 1);
    check_encode(b, "", 0, NULL, 0);
    graft_bpe_destroy(&b);
}

/* Loading fails with code want when one file is replaced by text. */
static void assert_refused(const char *name, const char *text, int want) {
    write_small_vocab();
    write_file(name, text);
    graft_bpe_t *b = NULL;
    assert_int_equal(graft_bpe_load(dir, &b), want);
    assert_null(b);
}

static void test_malformed_files(void **state) {
    (void)state;
    assert_refused("vocab.json", "{\"a\": 0", GRAFT_EFORMAT);            /* not JSON */
    assert_refused("vocab.json", "[1, 2]", GRAFT_EFORMAT);               /* not an object */
    assert_refused("vocab.json", "{\"a\": 0, \"b\": 5}", GRAFT_EFORMAT);  /* ids not dense */
    assert_refused("vocab.json", "{\"a\": 0, \"b\": 0}", GRAFT_EFORMAT);  /* an id twice */
    assert_refused("vocab.json", "{\"a\": 0, \"b\": 1}", GRAFT_EFORMAT);  /* bytes missing */
    assert_refused("merges.txt", "#version: 0.2\nh e\nq zz\n", GRAFT_EFORMAT); /* unknown */
    assert_refused("merges.txt", "#version: 0.2\nh e extra\n", GRAFT_EFORMAT);
    assert_refused("merges.txt", "#version: 0.2\nhe\n", GRAFT_EFORMAT); /* one token */
    char path[256];
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    remove(path);
    graft_bpe_t *b = NULL;
    assert_int_equal(graft_bpe_load(dir, &b), GRAFT_EIO);
    assert_null(b);
}

/* ---- GPT-2's vocabulary against the reference encoder ---------------------- */

static void test_gpt2_against_reference(void **state) {
    (void)state;
    const char *vocab = getenv("GRAFT_BPE_VOCAB"), *expected = getenv("GRAFT_BPE_EXPECTED");
    if (!vocab || !expected) {
        print_message("GRAFT_BPE_VOCAB/GRAFT_BPE_EXPECTED not set: run tests/test_bpe.sh\n");
        skip();
    }
    graft_bpe_t *b = NULL;
    assert_int_equal(graft_bpe_load(vocab, &b), GRAFT_OK);
    assert_int_equal(graft_bpe_vocab_size(b), 50257);
    assert_int_equal(graft_bpe_endoftext(b), 50256);
    json_error_t err;
    json_t *cases = json_load_file(expected, 0, &err);
    assert_non_null(cases);
    size_t n_cases = json_array_size(cases), bad = 0, tokens = 0;
    assert_true(n_cases > 100);
    int32_t *ids = malloc(1 << 20);
    for (size_t c = 0; c < n_cases; c++) {
        json_t *item = json_array_get(cases, c), *want = json_object_get(item, "ids");
        const char *text = json_string_value(json_object_get(item, "text"));
        size_t len = json_string_length(json_object_get(item, "text"));
        size_t n = graft_bpe_encode(b, text, len, ids, (1 << 20) / sizeof *ids);
        int same = n == json_array_size(want);
        for (size_t i = 0; same && i < n; i++)
            same = ids[i] == json_integer_value(json_array_get(want, i));
        if (!same && bad++ < 5)
            print_message("case %zu: %zu ids, the reference %zu: \"%.60s\"\n", c, n,
                          json_array_size(want), text);
        tokens += n;
        check_decode(b, ids, n, text, len);
    }
    print_message("%zu texts, %zu tokens, %zu differ from the reference\n", n_cases, tokens, bad);
    assert_int_equal(bad, 0);
    free(ids);
    json_decref(cases);
    graft_bpe_destroy(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_vocab_merges),
        cmocka_unit_test(test_any_bytes_round_trip),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_gpt2_against_reference),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
