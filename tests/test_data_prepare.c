/* test_data_prepare.c — scripts/data/prepare_tasks.py on small fabricated
 * sources (fortune files, a WordNet data.noun, raw mail, speeches) in a temp
 * folder, so no Debian or npm package is needed: graft's loader accepts
 * every file it writes; fortunes skip off/, .dat, links and ASCII art;
 * quoted-printable, base64, charsets and HTML in mail are decoded; every
 * group sits in one split and both WordNet tasks agree on the split of a
 * synset; chunks and eras of the speeches; the quick slice; a second run
 * with unchanged inputs does nothing; and bad options (--out a file or an
 * impossible folder, --quick_rows malformed or without --quick) are named
 * without a traceback, also through graft data prepare (exit 2). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "task.h"

enum { SYNSETS = 3000 };

typedef struct {
    char dir[64];
    char out[128];
    char log[65536];
} fixture_t;

static fixture_t *g_fx;

static void put_bytes(const char *rel, const char *data, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_fx->dir, rel);
    assert_int_equal(graft_mkdirs_for(path), GRAFT_OK);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void put(const char *rel, const char *text) { put_bytes(rel, text, strlen(text)); }

static void link_to(const char *target, const char *rel) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_fx->dir, rel);
    assert_int_equal(symlink(target, path), 0);
}

static void write_fortunes(void) {
    put("fortunes/fortunes",
        "A fool and his money are soon parted.\n%\n"
        "Tab\there and\r\nCRLF there, all one line.\n%\n"
        "  /\\_/\\\n ( o.o )\n  > ^ <\n%\n"
        "_\bH_\be_\bl_\bl_\bo world, said the overstruck printer.\n%\n");
    char big[32768];
    size_t n = 0;
    for (int i = 0; i < 150; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "People entry number %d is here.\n%%\n", i);
    put("fortunes/people", big);
    put("fortunes/off/rude", "RUDE offensive words here.\n%\n");
    put("fortunes/es/off/malo.fortunes", "RUDE palabras ofensivas.\n%\n");
    put("fortunes/es/refranes.fortunes", "A quien madruga, Dios le ayuda.\n%\nMás vale tarde que nunca.\n");
    char de[4096] = "Wer zuletzt lacht, lacht am besten.\n%\n";
    for (int i = 0; i < 600; i++) strcat(de, "ä");
    strcat(de, "\n%\nDer frühe Vogel fängt den Wurm.\n");
    put("fortunes/de/witze", de);
    put_bytes("fortunes/de/witze.dat", "\x00\x00\x00\x02\xff\xfe\x00\x25", 8);
    link_to("witze", "fortunes/de/witze.u8");
    put("fortunes/it/adams", "Chi va piano va sano e va lontano.\n%\nL'abito non fa il monaco.\n");
    link_to("it/adams", "fortunes/adams");
    put("fortunes/brasil", "Quem espera sempre alcança.\n%\nDevagar se vai ao longe.\n");
    put("fortunes/cs/citace", "Kdo jinému jámu kopá, sám do ní padá.\n");
    put("fortunes/cs/klasik-sk", "SLOVAK text here, not Czech.\n");
    put("fortunes/eo/proverbaro", "Pli bona estas io ol nenio.\n");
    put("fortunes/pl/bajki", "Gdzie kucharek sześć, tam nie ma co jeść.\n");
    put("fortunes/ru/love", "Любовь зла, полюбишь и козла.\n%\n");
}

static void write_wordnet(void) {
    static char buf[SYNSETS * 96 + 1024];
    size_t n = (size_t)snprintf(buf, sizeof buf,
        "  1 This software and database is being provided to you, the LICENSEE, by  \n"
        "  2 Princeton University under the following license.  \n"
        "00001930 03 n 01 physical_entity 0 000 | an entity that has physical existence  \n"
        "09917593 18 n 02 child 0 kid 0 000 | a young person of either sex; \"she writes "
        "books for children\"  \n");
    for (int i = 0; i < SYNSETS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              "%08d %02d n 01 thing_%d 0 000 | gloss number %d  \n",
                              20000000 + i, 4 + (i % 7 ? i % 5 : (i / 7) % 25), i, i);
    put("wordnet/data.noun", buf);
}

static void write_mail(void) {
    put("spam/easy-ham-1/00001.a1.txt",
        "From someone@example.com  Thu Aug 22 12:36:23 2002\n"
        "Subject: Re: [ilug] Cafe meeting\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Meet at the caf=C3=A9 at noon=\n today.\n");
    put("spam/easy-ham-1/00001.a1.json", "{\"ignored\": true}\n");
    put("spam/easy-ham-1/00002.b2.txt",
        "Subject: Cafe meeting\n\nWho is coming to the cafe meeting?\n");
    put("spam/spam-1/00003.c3.txt",
        "Subject: Deals\nMIME-Version: 1.0\n"
        "Content-Type: multipart/alternative; boundary=\"XX\"\n\n"
        "--XX\nContent-Type: text/html; charset=us-ascii\nContent-Transfer-Encoding: base64\n\n"
        /* <html><head><title>T</title><style>p{}</style></head><body><p>Buy <b>now</b>
         * &amp; save</p><script>evil()</script></body></html> */
        "PGh0bWw+PGhlYWQ+PHRpdGxlPlQ8L3RpdGxlPjxzdHlsZT5we308L3N0eWxlPjwvaGVhZD48Ym9keT48\n"
        "cD5CdXkgPGI+bm93PC9iPiAmYW1wOyBzYXZlPC9wPjxzY3JpcHQ+ZXZpbCgpPC9zY3JpcHQ+PC9ib2R5\n"
        "PjwvaHRtbD4=\n--XX--\n");
    put("spam/spam-2/00004.d4.txt",
        "Subject: =?iso-8859-1?q?Caf=E9_deals?=\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
        "Cr\xe8me br\xfbl\xe9" "e for all.\n");
    put("spam/spam-2/00005.e5.txt",
        "Subject: =?iso-8859-1?q?Caf=E9_deals?=\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
        "Cr\xe8me br\xfbl\xe9" "e for all.\n");
    put("spam/hard-ham-1/00006.f6.txt",
        "Subject: Minutes\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
        "--B\nContent-Type: text/plain\n\nThe minutes are attached.\n"
        "--B\nContent-Type: text/plain\nContent-Disposition: attachment; filename=m.txt\n\n"
        "SECRET ATTACHMENT\n--B--\n");
}

static void write_speech(const char *name, int year, int words) {
    char text[8192] = "";
    size_t n = 0;
    for (int i = 0; i < words; i++) n += (size_t)snprintf(text + n, sizeof text - n, " w%d", i);
    char json[9000], rel[128];
    snprintf(json, sizeof json, "{\"year\": %d, \"name\": \"x\", \"party\": \"none\", \"text\": \"%s\"}",
             year, text + 1);
    snprintf(rel, sizeof rel, "sotu/%s.json", name);
    put(rel, json);
    snprintf(rel, sizeof rel, "sotu/%s.txt", name);
    put(rel, text + 1);
}

/* Runs a shell command; returns its exit status (as pclose gives it) and
 * keeps its output in g_fx->log. */
static int run_logged(const char *cmd) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(g_fx->log, 1, sizeof g_fx->log - 1, p);
    g_fx->log[n] = '\0';
    return pclose(p);
}

/* Runs the script on the fixture sources into out (extra: more flags). */
static int prepare(const char *out, const char *extra) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/scripts/data/prepare_tasks.py --out %s --fortunes %s/fortunes "
             "--wordnet %s/wordnet --spam %s/spam --sotu %s/sotu %s 2>&1",
             GRAFT_SOURCE_DIR, out, g_fx->dir, g_fx->dir, g_fx->dir, g_fx->dir, extra);
    return run_logged(cmd);
}

static int setup(void **state) {
    g_fx = calloc(1, sizeof *g_fx);
    snprintf(g_fx->dir, sizeof g_fx->dir, "/tmp/graft_test_prepare_XXXXXX");
    if (!mkdtemp(g_fx->dir)) return -1;
    write_fortunes();
    write_wordnet();
    write_mail();
    write_speech("1790_george_washington_n", 1790, 300);
    write_speech("1950_harry_s_truman_d", 1950, 200);
    snprintf(g_fx->out, sizeof g_fx->out, "%s/tasks", g_fx->dir);
    if (prepare(g_fx->out, "") != 0) {
        fprintf(stderr, "%s", g_fx->log);
        return -1;
    }
    *state = g_fx;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_fx->dir);
    int rc = system(cmd);
    free(g_fx);
    return rc == 0 ? 0 : -1;
}

static graft_task_t *load(const char *dir, const char *name, graft_task_kind_t kind) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.tsv", dir, name);
    graft_task_t *t = NULL;
    assert_int_equal(graft_task_load(name, kind, path, &t), GRAFT_OK);
    return t;
}

/* Every group of t in one split; returns the split of each group id
 * (malloc'ed). */
static int *group_splits(const graft_task_t *t) {
    size_t G = graft_task_num_groups(t);
    int *split_of = malloc(G * sizeof *split_of);
    for (size_t g = 0; g < G; g++) split_of[g] = -1;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        for (size_t i = 0; i < graft_task_count(t, s); i++) {
            int g = graft_task_group_of(t, s, i);
            if (split_of[g] != -1 && split_of[g] != s)
                fail_msg("task %s: group %s in two splits", graft_task_name(t),
                         graft_task_group_name(t, (size_t)g));
            split_of[g] = s;
        }
    }
    return split_of;
}

/* The example whose text contains needle, or NULL; *split_out its split. */
static const graft_example_t *find(const graft_task_t *t, const char *needle, int *split_out) {
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        for (size_t i = 0; i < graft_task_count(t, s); i++) {
            const graft_example_t *ex = graft_task_example(t, s, i);
            if (strstr(ex->text, needle)) {
                if (split_out) *split_out = s;
                return ex;
            }
        }
    }
    return NULL;
}

static size_t total(const graft_task_t *t) {
    return graft_task_count(t, 0) + graft_task_count(t, 1) + graft_task_count(t, 2);
}

static void test_langid(void **state) {
    fixture_t *fx = *state;
    graft_task_t *t = load(fx->out, "langid", GRAFT_TASK_CLASSIFY);
    free(group_splits(t));
    const char *want[] = {"br", "cs", "de", "en", "eo", "es", "it", "pl", "ru"};
    assert_int_equal(graft_task_num_labels(t), 9);
    for (int l = 0; l < 9; l++) assert_string_equal(graft_task_label_name(t, l), want[l]);
    /* en: 2 prose + 1 overstruck + 150 people (the cat is art); de: 3; it once */
    assert_int_equal(total(t), 3 + 150 + 2 + 3 + 2 + 2 + 1 + 1 + 1 + 1);
    assert_null(find(t, "RUDE", NULL));
    assert_null(find(t, "SLOVAK", NULL));
    assert_null(find(t, "o.o", NULL));
    assert_non_null(find(t, "Tab here and CRLF there, all one line.", NULL));
    assert_non_null(find(t, "Hello world, said", NULL));
    const graft_example_t *ex = find(t, "ääää", NULL);
    assert_non_null(ex);
    assert_true(ex->text_len <= 400 && ex->text_len >= 398);
    assert_string_equal(ex->label, "de");
    ex = find(t, "Chi va piano", NULL);
    assert_string_equal(ex->label, "it");
    assert_string_equal(ex->group, "it/adams");
    assert_string_equal(find(t, "Quem espera", NULL)->label, "br");
    assert_string_equal(find(t, "Любовь", NULL)->label, "ru");
    ex = find(t, "People entry number 7 ", NULL);
    assert_int_equal(strncmp(ex->group, "en/people#", 10), 0);
    /* 10 files, the people file (150 entries) cut into three hash buckets */
    assert_true(graft_task_num_groups(t) >= 12);
    graft_task_destroy(&t);
}

static void test_wordnet(void **state) {
    fixture_t *fx = *state;
    graft_task_t *ss = load(fx->out, "wordnet_supersense", GRAFT_TASK_CLASSIFY);
    graft_task_t *gl = load(fx->out, "wordnet_gloss", GRAFT_TASK_GENERATE);
    assert_int_equal(total(ss), SYNSETS + 2);
    assert_int_equal(total(gl), SYNSETS + 2);
    assert_int_equal(graft_task_num_labels(ss), 26);
    const graft_example_t *ex = find(ss, "physical entity: an entity", NULL);
    assert_string_equal(ex->label, "noun.Tops");
    assert_string_equal(ex->group, "n00001930");
    int s1, s2;
    ex = find(ss, "child, kid: a young person of either sex; \"she writes", &s1);
    assert_string_equal(ex->label, "noun.person");
    ex = find(gl, "child, kid", &s2);
    assert_string_equal(ex->text, "child, kid");
    assert_string_equal(ex->label, "a young person of either sex; \"she writes books for children\"");
    assert_int_equal(s1, s2);
    /* one synset, one split, in both tasks */
    int *a = group_splits(ss), *b = group_splits(gl);
    assert_int_equal(graft_task_num_groups(ss), graft_task_num_groups(gl));
    for (size_t g = 0; g < graft_task_num_groups(ss); g++) {
        assert_string_equal(graft_task_group_name(ss, g), graft_task_group_name(gl, g));
        assert_int_equal(a[g], b[g]);
    }
    /* about 80/10/10 */
    assert_true(graft_task_count(ss, GRAFT_SPLIT_TRAIN) > SYNSETS * 75 / 100);
    assert_true(graft_task_count(ss, GRAFT_SPLIT_DEV) > SYNSETS * 7 / 100);
    assert_true(graft_task_count(ss, GRAFT_SPLIT_TEST) > SYNSETS * 7 / 100);
    free(a);
    free(b);
    graft_task_destroy(&ss);
    graft_task_destroy(&gl);
}

static void test_spam(void **state) {
    fixture_t *fx = *state;
    graft_task_t *t = load(fx->out, "spam", GRAFT_TASK_CLASSIFY);
    free(group_splits(t));
    assert_int_equal(total(t), 5); /* 6 mails, one a duplicate */
    const graft_example_t *ex = find(t, "Meet at the café at noon today.", NULL);
    assert_non_null(ex);
    assert_string_equal(ex->label, "ham");
    assert_string_equal(ex->group, "thread:cafe meeting");
    assert_string_equal(find(t, "Who is coming", NULL)->group, "thread:cafe meeting");
    ex = find(t, "Buy now & save", NULL);
    assert_non_null(ex);
    assert_string_equal(ex->label, "spam");
    assert_null(strstr(ex->text, "evil"));
    assert_null(strstr(ex->text, "<"));
    assert_null(strstr(ex->text, "p{}"));
    ex = find(t, "Café deals Crème brûlée for all.", NULL);
    assert_non_null(ex);
    assert_string_equal(ex->label, "spam");
    assert_non_null(find(t, "Minutes The minutes are attached.", NULL));
    assert_null(find(t, "SECRET", NULL));
    graft_task_destroy(&t);
}

static void test_sotu(void **state) {
    fixture_t *fx = *state;
    graft_task_t *t = load(fx->out, "sotu_era", GRAFT_TASK_CLASSIFY);
    free(group_splits(t));
    assert_int_equal(total(t), 4);
    assert_int_equal(graft_task_num_labels(t), 2);
    assert_string_equal(graft_task_label_name(t, 0), "1790-1860");
    assert_string_equal(graft_task_label_name(t, 1), "1946-1950");
    /* 300 words: 128 + 172 (a 44-word tail joins); 200 words: 128 + 72 */
    const char *starts[] = {"w0 ", "w128 ", "w0 ", "w128 "};
    const int words[] = {128, 172, 128, 72};
    const char *groups[] = {"1790_george_washington_n", "1790_george_washington_n",
                            "1950_harry_s_truman_d", "1950_harry_s_truman_d"};
    int seen = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        for (size_t i = 0; i < graft_task_count(t, s); i++) {
            const graft_example_t *ex = graft_task_example(t, s, i);
            int k = (strcmp(ex->group, groups[0]) ? 2 : 0) + (strncmp(ex->text, "w0 ", 3) != 0);
            assert_int_equal(strncmp(ex->text, starts[k], strlen(starts[k])), 0);
            int n = 1;
            for (const char *c = ex->text; *c; c++) n += *c == ' ';
            assert_int_equal(n, words[k]);
            assert_string_equal(ex->label, k < 2 ? "1790-1860" : "1946-1950");
            /* Splits are stratified by era: an era's only speech lies at the
             * middle of its words, inside the first 80% (train). */
            assert_int_equal(s, GRAFT_SPLIT_TRAIN);
            seen |= 1 << k;
        }
    }
    assert_int_equal(seen, 15);
    graft_task_destroy(&t);
}

static void test_quick_slice(void **state) {
    fixture_t *fx = *state;
    char quick[160];
    snprintf(quick, sizeof quick, "%s/quick", fx->dir);
    assert_int_equal(prepare(quick, "--quick"), 0);
    graft_task_t *q = load(quick, "wordnet_supersense", GRAFT_TASK_CLASSIFY);
    graft_task_t *full = load(fx->out, "wordnet_supersense", GRAFT_TASK_CLASSIFY);
    size_t caps[3] = {2000, 200, 200};
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        size_t n = graft_task_count(q, s);
        assert_true(n <= caps[s]);
        assert_true(n >= caps[s] * 9 / 10 || n == graft_task_count(full, s));
        /* each quick row is a full row of the same split */
        for (size_t i = 0; i < n; i++) {
            int s2 = -1;
            const graft_example_t *ex = graft_task_example(q, s, i);
            assert_non_null(find(full, ex->text, &s2));
            assert_int_equal(s2, s);
        }
    }
    /* every label with train rows in the full file keeps some */
    assert_int_equal(graft_task_num_labels(q), graft_task_num_labels(full));
    free(group_splits(q));
    graft_task_destroy(&q);
    graft_task_destroy(&full);
    graft_task_t *gl = load(quick, "wordnet_gloss", GRAFT_TASK_GENERATE);
    assert_int_equal(graft_task_count(gl, GRAFT_SPLIT_TRAIN), 2000);
    graft_task_destroy(&gl);
}

static void test_second_run_does_nothing(void **state) {
    fixture_t *fx = *state;
    char path[256];
    snprintf(path, sizeof path, "%s/langid.tsv", fx->out);
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    assert_int_equal(prepare(fx->out, ""), 0);
    assert_non_null(strstr(fx->log, "up to date"));
    assert_non_null(strstr(fx->log, "langid (classification"));
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
    assert_int_equal(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
    /* a changed input is noticed */
    put("fortunes/eo/proverbaro", "Pli bona estas io ol nenio.\n%\nNova proverbo aperis hodiau.\n");
    assert_int_equal(prepare(fx->out, ""), 0);
    assert_null(strstr(fx->log, "up to date"));
    graft_task_t *t = load(fx->out, "langid", GRAFT_TASK_CLASSIFY);
    assert_non_null(find(t, "Nova proverbo", NULL));
    graft_task_destroy(&t);
}

static void test_missing_source_is_named(void **state) {
    fixture_t *fx = *state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/scripts/data/prepare_tasks.py --out %s/none --fortunes "
             "%s/fortunes --wordnet %s/nowhere --spam %s/spam --sotu %s/sotu 2>&1",
             GRAFT_SOURCE_DIR, fx->dir, fx->dir, fx->dir, fx->dir, fx->dir);
    assert_int_not_equal(run_logged(cmd), 0);
    assert_non_null(strstr(fx->log, "nowhere/data.noun not found (Debian package wordnet-base)"));
}

/* Options that cannot work are named before any source is read, without a
 * Python traceback, and leave no folder behind. */
static void expect_refused(const char *out, const char *extra, const char *needle) {
    assert_int_not_equal(prepare(out, extra), 0);
    if (!strstr(g_fx->log, needle)) fail_msg("expected '%s' in: %s", needle, g_fx->log);
    assert_null(strstr(g_fx->log, "Traceback"));
}

static void test_bad_options_are_named(void **state) {
    fixture_t *fx = *state;
    char file[256], fresh[256], needle[512], cmd[1024];
    snprintf(file, sizeof file, "%s/fortunes/fortunes", fx->dir); /* a file, not a folder */
    snprintf(needle, sizeof needle, "prepare: error: --out %s exists and is not a folder", file);
    expect_refused(file, "", needle);
    expect_refused("/proc/graft_tasks", "", "--out /proc/graft_tasks: cannot make the folder");
    snprintf(fresh, sizeof fresh, "%s/fresh/tasks", fx->dir);
    expect_refused(fresh, "--quick --quick_rows=-5,10,10",
                   "--quick_rows '-5,10,10': expected TRAIN,DEV,TEST, three whole numbers above 0");
    expect_refused(fresh, "--quick_rows=10,10,10",
                   "--quick_rows '10,10,10' applies only with --quick");
    snprintf(file, sizeof file, "%s/fresh", fx->dir);
    assert_int_equal(access(file, F_OK), -1); /* the --out check made nothing that stays */
    /* graft data prepare hands --quick_rows and --out over to the script's
     * checks, and exits 2 for them as for its own bad options */
    snprintf(cmd, sizeof cmd, "%s/graft data prepare --offline --out %s --quick_rows 10,10,10 "
             "2>&1", GRAFT_BINARY_DIR, fresh);
    int st = run_logged(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_non_null(strstr(fx->log, "--quick_rows '10,10,10' applies only with --quick"));
    snprintf(file, sizeof file, "%s/fortunes/fortunes", fx->dir);
    snprintf(cmd, sizeof cmd, "%s/graft data prepare --offline --out %s 2>&1", GRAFT_BINARY_DIR,
             file);
    st = run_logged(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_non_null(strstr(fx->log, "exists and is not a folder"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_langid),
        cmocka_unit_test(test_wordnet),
        cmocka_unit_test(test_spam),
        cmocka_unit_test(test_sotu),
        cmocka_unit_test(test_quick_slice),
        cmocka_unit_test(test_second_run_does_nothing),
        cmocka_unit_test(test_missing_source_is_named),
        cmocka_unit_test(test_bad_options_are_named),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
