/* capture.h — stderr of a call, captured into a file and read back, so that
 * a test can check that an error names the problem. Header-only: static
 * inline functions, one copy per test program; include it after cmocka.h.
 *
 *   capture_begin("/tmp/dir/stderr.log");
 *   rc = call();
 *   capture_end_expect("corpus too small");   (fails the test if absent)
 */
#ifndef GRAFT_TEST_CAPTURE_H
#define GRAFT_TEST_CAPTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_capture_path[512];
static int g_capture_saved = -1;

static inline void capture_begin(const char *path) {
    snprintf(g_capture_path, sizeof g_capture_path, "%s", path);
    fflush(stderr);
    g_capture_saved = dup(2);
    FILE *f = fopen(g_capture_path, "w");
    assert_true(f != NULL && g_capture_saved >= 0);
    assert_true(dup2(fileno(f), 2) >= 0);
    fclose(f);
}

/* Restores stderr and returns what was written to it (the caller frees);
 * the text is echoed so that it stays visible in the test log. */
static inline char *capture_end(void) {
    fflush(stderr);
    dup2(g_capture_saved, 2);
    close(g_capture_saved);
    FILE *f = fopen(g_capture_path, "r");
    assert_non_null(f);
    char *text = calloc(1, 1 << 16);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    text[n] = '\0';
    fclose(f);
    fputs(text, stderr);
    return text;
}

static inline void capture_end_expect(const char *needle) {
    char *text = capture_end();
    if (!strstr(text, needle)) fail_msg("expected '%s' in the error log", needle);
    free(text);
}

#endif
