/* test_handshake_log.c — the coordinator's rate-limited reports of failed
 * handshakes: the first of a kind from a client is logged at once (a line
 * that says what to do, a handshake_failed event), the rest are summed up
 * once a window, a quiet window starts over, failures without an address
 * join those with one, and the event file stays one JSON object a line.
 * Times are fed by the test, so the windows are exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "capture.h"
#include "handshake_log.h"

#define WINDOW 60.0
#define KEY "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"

static char tmpdir[64], events_path[128], log_path[128];

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/graft_hslog_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    snprintf(log_path, sizeof log_path, "%s/stderr.log", tmpdir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static graft_handshake_failure_t failure(graft_handshake_kind_t kind, const char *host, int port,
                                         const char *key) {
    graft_handshake_failure_t f = {.kind = kind, .port = port, .count = 1};
    snprintf(f.host, sizeof f.host, "%s", host);
    snprintf(f.client_key, sizeof f.client_key, "%s", key);
    return f;
}

/* A fresh log writing events to NAME.jsonl in the scratch folder. */
static graft_handshake_log_t *open_log(const char *name, graft_events_t **ev) {
    snprintf(events_path, sizeof events_path, "%s/%s.jsonl", tmpdir, name);
    assert_int_equal(graft_events_open(events_path, ev), GRAFT_OK);
    return graft_handshake_log_new(*ev, WINDOW);
}

/* Frees the log, closes the event file and parses every line of it (a
 * JSON array of them). */
static json_t *close_and_read(graft_handshake_log_t **hl, graft_events_t **ev) {
    graft_handshake_log_destroy(hl);
    assert_null(*hl);
    graft_events_close(ev);
    FILE *f = fopen(events_path, "r");
    assert_non_null(f);
    json_t *all = json_array();
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        if (!o) fail_msg("%s: not JSON: %s (%s)", events_path, line, err.text);
        assert_string_equal(json_string_value(json_object_get(o, "event")), "handshake_failed");
        json_array_append_new(all, o);
    }
    fclose(f);
    return all;
}

static long count_of(const char *haystack, const char *needle) {
    long n = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static const char *str(json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

static long num(json_t *o, const char *k) {
    return (long)json_integer_value(json_object_get(o, k));
}

/* A client with another server key retrying every 125 ms for 150 s: four
 * lines, not 1200 (a failure at the very end of a window counts in the
 * next); then a quiet window, and it is logged at once again. */
static void test_first_then_summaries(void **state) {
    (void)state;
    graft_events_t *ev;
    graft_handshake_log_t *hl = open_log("crypto", &ev);
    capture_begin(log_path);
    for (int i = 0; i < 1200; i++) {
        double now = 1000.0 + 0.125 * i;
        graft_handshake_failure_t f = failure(GRAFT_HANDSHAKE_CRYPTO, "10.0.0.7", 40000 + i, "");
        graft_handshake_log_add(hl, &f, 2, now);
        graft_handshake_log_tick(hl, 2, now, 0);
    }
    graft_handshake_log_tick(hl, 3, 1170.0, 0); /* 50 s after the last summary: not yet */
    graft_handshake_log_tick(hl, 3, 1210.0, 0); /* 90 s: the last 240, then nothing */
    graft_handshake_log_tick(hl, 3, 1400.0, 0);
    graft_handshake_failure_t again = failure(GRAFT_HANDSHAKE_CRYPTO, "10.0.0.7", 41000, "");
    graft_handshake_log_add(hl, &again, 4, 1400.0);
    char *log = capture_end();
    assert_int_equal(count_of(log, "\n"), 5);
    assert_int_equal(count_of(log, "a client at 10.0.0.7:40000 failed the CurveZMQ handshake "
                                   "(cryptographic error): does it use this coordinator's "
                                   "public key? (its graft worker --server_key"), 1);
    assert_int_equal(count_of(log, "coordinator: 479 more CurveZMQ handshake failures "
                                   "(cryptographic error) from 10.0.0.7 in the last 60 s"), 1);
    assert_int_equal(count_of(log, "coordinator: 480 more CurveZMQ handshake failures "
                                   "(cryptographic error) from 10.0.0.7 in the last 60 s"), 1);
    assert_int_equal(count_of(log, "coordinator: 240 more CurveZMQ handshake failures "
                                   "(cryptographic error) from 10.0.0.7 in the last 90 s"), 1);
    assert_int_equal(count_of(log, "a client at 10.0.0.7:41000 failed the CurveZMQ"), 1);
    free(log);
    json_t *all = close_and_read(&hl, &ev);
    assert_int_equal(json_array_size(all), 5);
    long total = 0;
    for (size_t i = 0; i < 5; i++) {
        json_t *o = json_array_get(all, i);
        assert_string_equal(str(o, "reason"), "cryptographic_error");
        assert_null(json_object_get(o, "client_key"));
        int summary = json_is_true(json_object_get(o, "summary"));
        assert_int_equal(summary, i >= 1 && i <= 3);
        assert_string_equal(str(o, "peer"), i == 0   ? "10.0.0.7:40000"
                                            : i == 4 ? "10.0.0.7:41000"
                                                     : "10.0.0.7");
        assert_int_equal(json_object_get(o, "seconds") != NULL, summary);
        if (i < 4) total += num(o, "failures");
    }
    assert_int_equal(total, 1200);
    assert_int_equal(num(json_array_get(all, 0), "round"), 2);
    assert_int_equal(num(json_array_get(all, 3), "round"), 3);
    assert_true(json_real_value(json_object_get(json_array_get(all, 3), "seconds")) > 89.0);
    json_decref(all);
}

/* The refused key is named in the line and the event; a batch of alike
 * failures (count 5) is one line and four counted; another key, another
 * host and another kind are each their own file; flush sums up everything
 * still counted. Without an event file there are lines only. */
static void test_files_and_flush(void **state) {
    (void)state;
    graft_events_t *ev;
    graft_handshake_log_t *hl = open_log("files", &ev);
    capture_begin(log_path);
    graft_handshake_failure_t f = failure(GRAFT_HANDSHAKE_KEY_REFUSED, "10.0.0.8", 0, KEY);
    f.count = 5;
    graft_handshake_log_add(hl, &f, 1, 10.0);
    f.count = 1;
    graft_handshake_log_add(hl, &f, 1, 11.0);
    graft_handshake_failure_t other_key = failure(GRAFT_HANDSHAKE_KEY_REFUSED, "10.0.0.8", 0,
                                                  "0000000000000000000000000000000000000000");
    graft_handshake_log_add(hl, &other_key, 1, 12.0);
    graft_handshake_failure_t mech = failure(GRAFT_HANDSHAKE_MECHANISM, "10.0.0.9", 5000, "");
    graft_handshake_log_add(hl, &mech, 1, 13.0);
    graft_handshake_log_tick(hl, 1, 20.0, 0);
    graft_handshake_log_tick(hl, 1, 20.0, 1);
    char *log = capture_end();
    assert_int_equal(count_of(log, "\n"), 4);
    assert_int_equal(count_of(log, "refused CurveZMQ client key " KEY " from 10.0.0.8: not in "
                                   "the --allow file"), 1);
    assert_int_equal(count_of(log, "5 more refusals of CurveZMQ client key " KEY " from "
                                   "10.0.0.8 in the last 10 s"), 1);
    assert_int_equal(count_of(log, "refused CurveZMQ client key 0000"), 1);
    assert_int_equal(count_of(log, "a client at 10.0.0.9:5000 failed the ZeroMQ handshake: it "
                                   "uses CurveZMQ and this coordinator does not"), 1);
    free(log);
    json_t *all = close_and_read(&hl, &ev);
    assert_int_equal(json_array_size(all), 4);
    json_t *first = json_array_get(all, 0), *sum = json_array_get(all, 3);
    assert_string_equal(str(first, "reason"), "key_not_allowed");
    assert_string_equal(str(first, "client_key"), KEY);
    assert_string_equal(str(first, "peer"), "10.0.0.8");
    assert_int_equal(num(first, "failures"), 1);
    assert_string_equal(str(sum, "client_key"), KEY);
    assert_int_equal(num(sum, "failures"), 5);
    assert_true(json_is_true(json_object_get(sum, "summary")));
    assert_string_equal(str(json_array_get(all, 2), "reason"), "mechanism_mismatch");
    json_decref(all);

    hl = graft_handshake_log_new(NULL, WINDOW);
    capture_begin(log_path);
    graft_handshake_log_add(hl, &mech, 1, 0.0);
    capture_end_expect("a client at 10.0.0.9:5000 failed the ZeroMQ handshake");
    graft_handshake_log_destroy(&hl);
}

/* A failure whose address is unknown joins a file of its kind that has one;
 * a file begun without an address logs once more when one comes, and its
 * count goes on. */
static void test_unknown_addresses(void **state) {
    (void)state;
    graft_events_t *ev;
    graft_handshake_log_t *hl = open_log("unknown", &ev);
    capture_begin(log_path);
    graft_handshake_failure_t nowhere = failure(GRAFT_HANDSHAKE_CRYPTO, "", 0, "");
    graft_handshake_failure_t known = failure(GRAFT_HANDSHAKE_CRYPTO, "10.0.0.7", 40001, "");
    graft_handshake_log_add(hl, &nowhere, 1, 0.0);
    graft_handshake_log_add(hl, &nowhere, 1, 0.1);
    graft_handshake_log_add(hl, &known, 1, 0.2);
    graft_handshake_log_add(hl, &nowhere, 1, 0.3);
    graft_handshake_log_add(hl, &known, 1, 0.4);
    graft_handshake_log_tick(hl, 1, 61.0, 0);
    char *log = capture_end();
    assert_int_equal(count_of(log, "\n"), 3);
    assert_int_equal(count_of(log, "a client (address unknown) failed the CurveZMQ handshake"),
                     1);
    assert_int_equal(count_of(log, "a client at 10.0.0.7:40001 failed the CurveZMQ handshake"),
                     1);
    assert_int_equal(count_of(log, "3 more CurveZMQ handshake failures (cryptographic error) "
                                   "from 10.0.0.7 in the last 61 s"), 1);
    free(log);
    json_t *all = close_and_read(&hl, &ev);
    assert_int_equal(json_array_size(all), 3);
    assert_null(json_object_get(json_array_get(all, 0), "peer"));
    assert_string_equal(str(json_array_get(all, 1), "peer"), "10.0.0.7:40001");
    assert_int_equal(num(json_array_get(all, 2), "failures"), 3);
    json_decref(all);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_then_summaries),
        cmocka_unit_test(test_files_and_flush),
        cmocka_unit_test(test_unknown_addresses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
