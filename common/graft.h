/* graft.h — the few things every graft module needs: error codes, the
 * always-on assertion for programmer errors, and the logging macros.
 *
 * Conventions used across the code base:
 *  - Runtime failures (I/O, bad input, a lost peer) return a negative
 *    GRAFT_E* code; graft_strerror() names it, and the function that saw
 *    the problem logs the details (file, line, peer) before returning.
 *  - Programmer errors trip GRAFT_ASSERT, which stays on in release builds.
 *  - Only main() exits.
 */
#ifndef GRAFT_H
#define GRAFT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define GRAFT_VERSION "0.5.0"

enum {
    GRAFT_OK = 0,
    GRAFT_EIO = -1,       /* a file or socket could not be read or written */
    GRAFT_EFORMAT = -2,   /* malformed input: file, config or message */
    GRAFT_ENOMEM = -3,    /* an allocation failed */
    GRAFT_EINVAL = -4,    /* an argument or option out of range */
    GRAFT_ESHAPE = -5,    /* a tensor with the wrong shape or a missing one */
    GRAFT_ETIMEOUT = -6,  /* a deadline passed */
    GRAFT_EPEER = -7,     /* a peer misbehaved or went away */
    GRAFT_ESTATE = -8,    /* a message or call that does not fit the current state */
};

const char *graft_strerror(int err);

#define GRAFT_ASSERT(cond)                                                        \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "graft: assertion failed at %s:%d: %s\n", __FILE__,   \
                    __LINE__, #cond);                                             \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* ---- logging ------------------------------------------------------------ */

typedef enum { GRAFT_LOG_DEBUG, GRAFT_LOG_INFO, GRAFT_LOG_WARN, GRAFT_LOG_ERROR } graft_log_level_t;

/* Lines below this level are not written (GRAFT_LOG_INFO unless set). */
extern graft_log_level_t graft_log_level;

/* "debug", "info", "warn" or "error" into *out; GRAFT_EINVAL for anything
 * else. */
int graft_log_level_parse(const char *name, graft_log_level_t *out);

void graft_log_write(graft_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Level-checked so that the arguments are not even evaluated when filtered. */
#define graft_log(level, ...)                                                     \
    do {                                                                          \
        if ((level) >= graft_log_level) graft_log_write((level), __VA_ARGS__);    \
    } while (0)
#define LOG_DEBUG(...) graft_log(GRAFT_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) graft_log(GRAFT_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) graft_log(GRAFT_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) graft_log(GRAFT_LOG_ERROR, __VA_ARGS__)

/* Allocation that treats out-of-memory as fatal: graft's buffers are sized
 * once at start, so there is nothing sensible to recover to. */
void *graft_xmalloc(size_t n);
void *graft_xcalloc(size_t count, size_t size);
void *graft_xrealloc(void *p, size_t n);
char *graft_xstrdup(const char *s);
/* n bytes (zeroed when zero is set) at a 64-byte boundary, where whole
 * AVX-512 vectors start; free() releases them. */
void *graft_xalloc64(size_t n, int zero);

/* Creates the directories leading to path (like mkdir -p of its dirname). */
int graft_mkdirs_for(const char *path);

/* The folder of path into dir (cap bytes): "." for a bare name, "/" for a
 * file at the root. */
void graft_path_dir(const char *path, char *dir, size_t cap);

/* fsync of the folder of path, so that a rename into it (an atomic
 * checkpoint) survives a crash; a file system that cannot sync folders
 * (EINVAL) counts as done. GRAFT_EIO with errno set on failure. */
int graft_fsync_dir_of(const char *path);

/* The whole of file path in a new buffer that the caller frees (*n bytes,
 * plus a NUL after them); NULL, with errno set (EISDIR for a directory),
 * when it cannot be read. Pipes and character devices are read to their
 * end. The caller logs the failure with the path. */
char *graft_read_file(const char *path, size_t *n);

/* Monotonic wall clock in seconds. */
double graft_now(void);

/* This process's peak resident set size in bytes (VmHWM of
 * /proc/self/status, else getrusage's ru_maxrss); 0 if neither works. */
size_t graft_peak_rss_bytes(void);

#endif
