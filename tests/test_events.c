/* test_events.c — the JSON-lines event log (common/events.c): one object
 * per line with ts and event first, which the caller's fields cannot
 * replace; a log that cannot be written (/dev/full) is reported by emit
 * and close, and logged once, not once per event. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unistd.h>

#include "capture.h"
#include "events.h"
#include "graft.h"

static char g_dir[64];

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/graft_test_events_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/sub/events.jsonl", g_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/sub", g_dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/stderr.log", g_dir);
    unlink(path);
    return rmdir(g_dir);
}

/* Occurrences of needle in text. */
static int count(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void test_lines(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/sub/events.jsonl", g_dir);
    graft_events_t *ev = NULL;
    assert_int_equal(graft_events_open(path, &ev), GRAFT_OK);
    assert_int_equal(graft_events_emit(ev, "round_end", json_pack("{s:i}", "round", 3)), GRAFT_OK);
    /* the caller's ts and event do not replace the log's */
    assert_int_equal(graft_events_emit(ev, "eval", json_pack("{s:s, s:s, s:i}", "ts", "x", "event",
                                                             "forged", "round", 4)),
                     GRAFT_OK);
    assert_int_equal(graft_events_emit(ev, "run_end", NULL), GRAFT_OK);
    assert_int_equal(graft_events_close(&ev), GRAFT_OK);
    assert_null(ev);

    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    const char *want[] = {"round_end", "eval", "run_end"};
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        assert_true(n < 3);
        assert_int_equal(strncmp(line, "{\"ts\":", 6), 0);
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        assert_non_null(o);
        assert_true(json_is_real(json_object_get(o, "ts")));
        assert_true(json_real_value(json_object_get(o, "ts")) > 1.6e9);
        assert_string_equal(json_string_value(json_object_get(o, "event")), want[n]);
        if (n < 2) assert_int_equal(json_integer_value(json_object_get(o, "round")), 3 + n);
        json_decref(o);
        n++;
    }
    fclose(f);
    assert_int_equal(n, 3);
    /* no log: every call is a no-op that succeeds */
    assert_int_equal(graft_events_open("", &ev), GRAFT_OK);
    assert_null(ev);
    assert_int_equal(graft_events_emit(ev, "x", json_object()), GRAFT_OK);
    assert_int_equal(graft_events_close(&ev), GRAFT_OK);
}

static void test_full_disk(void **state) {
    (void)state;
    graft_events_t *ev = NULL;
    assert_int_equal(graft_events_open("/dev/full", &ev), GRAFT_OK);
    char log[128];
    snprintf(log, sizeof log, "%s/stderr.log", g_dir);
    capture_begin(log);
    int rc[3];
    for (int i = 0; i < 3; i++) rc[i] = graft_events_emit(ev, "train", json_pack("{s:i}", "step", i));
    int crc = graft_events_close(&ev);
    char *text = capture_end();
    for (int i = 0; i < 3; i++) assert_int_equal(rc[i], GRAFT_EIO);
    assert_int_equal(crc, GRAFT_EIO);
    assert_int_equal(count(text, "/dev/full: cannot write the event log: No space left on device"),
                     1);
    assert_int_equal(count(text, "/dev/full: 3 events could not be written"), 1);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_full_disk),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
