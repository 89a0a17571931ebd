/* test_tokenizer.c — the byte tokenizer: exact round trips in every script,
 * special tokens, and truncation at the caller's capacity. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tokenizer.h"

/* Encodes, checks that token i is byte i (unsigned), decodes, and checks the
 * bytes come back exactly, NUL-terminated. */
static void assert_round_trip(const char *text, size_t len) {
    int32_t *toks = test_malloc((len + 1) * sizeof *toks);
    char *back = test_malloc(len + 1);
    size_t n = graft_tok_encode(text, len, toks, len + 1);
    assert_int_equal(n, len);
    for (size_t i = 0; i < len; i++) {
        assert_int_equal(toks[i], (unsigned char)text[i]);
        assert_true(toks[i] >= 0 && toks[i] < 256);
    }
    size_t m = graft_tok_decode(toks, n, back, len + 1);
    assert_int_equal(m, len);
    assert_memory_equal(back, text, len);
    assert_int_equal(back[len], '\0');
    test_free(toks);
    test_free(back);
}

static void test_round_trip_scripts(void **state) {
    (void)state;
    static const char *texts[] = {
        "plain ASCII, with punctuation: (a+b)*c = 42;\tTAB\nnewline",
        "Latin: Ça déjà vu, naïve façade, Straße, Ærøskøbing, señor, Łódź, İstanbul",
        "Cyrillic: Съешь же ещё этих мягких французских булок, да выпей чаю. Ёж, Ї, Ґ",
        "CJK: 你好，世界。日本語のテキスト、カタカナ。한국어 문장입니다.",
        "Emoji: 👍🏽 🎉 👨‍👩‍👧‍👦 🇫🇷 😀 (astral plane, ZWJ sequences, flags)",
        "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        assert_round_trip(texts[i], strlen(texts[i]));
}

static void test_known_token_values(void **state) {
    (void)state;
    /* é is C3 A9 in UTF-8; a signed-char bug would give negative ids. */
    int32_t toks[8];
    assert_int_equal(graft_tok_encode("é€", strlen("é€"), toks, 8), 5);
    const int32_t want[] = {0xC3, 0xA9, 0xE2, 0x82, 0xAC};
    assert_memory_equal(toks, want, sizeof want);
}

static void test_round_trip_all_bytes(void **state) {
    (void)state;
    char bytes[512];
    for (int i = 0; i < 256; i++) bytes[i] = (char)i;
    for (int i = 0; i < 256; i++) bytes[256 + i] = (char)(255 - i);
    assert_round_trip(bytes, sizeof bytes);
    /* Invalid UTF-8 is just bytes to this tokenizer. */
    const char bad[] = {'\xff', '\xfe', '\xc3', '\x28', '\xa0', '\xa1', '\xe2', '\x28', '\x00', 'x'};
    assert_round_trip(bad, sizeof bad);
}

static void test_decode_skips_special(void **state) {
    (void)state;
    const int32_t toks[] = {GRAFT_TOK_BOS, 'h', 'i', GRAFT_TOK_SEP, 0xC3, 0xA9,
                            GRAFT_TOK_EOS, GRAFT_TOK_PAD, '!', GRAFT_TOK_PAD};
    char out[32];
    memset(out, 'Z', sizeof out);
    size_t n = graft_tok_decode(toks, sizeof toks / sizeof toks[0], out, sizeof out);
    assert_int_equal(n, 5);
    assert_string_equal(out, "hi\xc3\xa9!");
    /* Only specials: empty string. */
    const int32_t specials[] = {GRAFT_TOK_BOS, GRAFT_TOK_EOS};
    assert_int_equal(graft_tok_decode(specials, 2, out, sizeof out), 0);
    assert_string_equal(out, "");
}

static void test_encode_cap_truncates(void **state) {
    (void)state;
    int32_t toks[8];
    for (int i = 0; i < 8; i++) toks[i] = -7;
    assert_int_equal(graft_tok_encode("abcdefghij", 10, toks, 4), 4);
    assert_int_equal(toks[0], 'a');
    assert_int_equal(toks[3], 'd');
    assert_int_equal(toks[4], -7); /* nothing written past cap */
    assert_int_equal(graft_tok_encode("abc", 3, toks, 0), 0);
    assert_int_equal(toks[0], 'a');
}

static void test_decode_cap_truncates(void **state) {
    (void)state;
    const int32_t toks[] = {'a', GRAFT_TOK_SEP, 'b', 'c', 'd'};
    char out[8];
    memset(out, 'Z', sizeof out);
    /* cap 3 holds two bytes and the NUL; the special token takes no room. */
    assert_int_equal(graft_tok_decode(toks, 5, out, 3), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(out[3], 'Z');
    memset(out, 'Z', sizeof out);
    assert_int_equal(graft_tok_decode(toks, 5, out, 1), 0);
    assert_int_equal(out[0], '\0');
    assert_int_equal(out[1], 'Z');
    memset(out, 'Z', sizeof out);
    assert_int_equal(graft_tok_decode(toks, 5, out, 0), 0);
    assert_int_equal(out[0], 'Z'); /* cap 0: not even a NUL */
}

static void test_names(void **state) {
    (void)state;
    char buf[16];
    assert_string_equal(graft_tok_name(GRAFT_TOK_BOS, buf), "<|bos|>");
    assert_string_equal(graft_tok_name(GRAFT_TOK_SEP, buf), "<|sep|>");
    assert_string_equal(graft_tok_name(GRAFT_TOK_EOS, buf), "<|eos|>");
    assert_string_equal(graft_tok_name(GRAFT_TOK_PAD, buf), "<|pad|>");
    assert_string_equal(graft_tok_name('a', buf), "a");
    assert_string_equal(graft_tok_name('\n', buf), "\\x0a");
    assert_string_equal(graft_tok_name(' ', buf), "\\x20");
    assert_string_equal(graft_tok_name(0xC3, buf), "\\xc3");
    assert_string_equal(graft_tok_name(0, buf), "\\x00");
    assert_string_equal(graft_tok_name(9999, buf), "<|9999|>");
    assert_int_equal(GRAFT_BYTE_VOCAB, 260);
}

/* graft_text_printable: escapes, U+FFFD for ill-formed bytes, and cuts at
 * a character boundary with "..." only when the text does not fit. */
static void printable(const char *src, size_t len, size_t cap, const char *want) {
    char out[64];
    size_t n = graft_text_printable(out, cap, src, len);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
}

static void test_printable(void **state) {
    (void)state;
    printable("abc", 3, 64, "abc");
    printable("a\tb\nc\r\\", 7, 64, "a\\tb\\nc\\r\\\\");
    printable("x\x01\x7f", 3, 64, "x\\x01\\x7F");
    printable("\xff\xfe!", 3, 64, "\xEF\xBF\xBD\xEF\xBF\xBD!"); /* two U+FFFD */
    printable("\xEF\xBF\xBD", 3, 64, "\xEF\xBF\xBD");               /* a real U+FFFD kept */
    printable("\xC3\xA9t\xC3\xA9", 5, 64, "\xC3\xA9t\xC3\xA9");   /* "été" as it is */
    printable("abcdefgh", 8, 8, "abcd...");       /* 7 bytes and the NUL */
    printable("abcdefg", 7, 8, "abcdefg");        /* fits exactly: no cut */
    printable("\xC3\xA9\xC3\xA9\xC3\xA9", 6, 8, "\xC3\xA9\xC3\xA9\xC3\xA9"); /* fits */
    /* 8 bytes of "éééé" in 8: "éé..." (7 bytes), never half a character */
    printable("\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9", 8, 8, "\xC3\xA9\xC3\xA9...");
    printable("a\nbcdefg", 8, 8, "a\\nb...");   /* an escape counts its two bytes */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_scripts),
        cmocka_unit_test(test_known_token_values),
        cmocka_unit_test(test_round_trip_all_bytes),
        cmocka_unit_test(test_decode_skips_special),
        cmocka_unit_test(test_encode_cap_truncates),
        cmocka_unit_test(test_decode_cap_truncates),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_printable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
