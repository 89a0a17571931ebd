/* graft.c — error names, logging and the allocation helpers of graft.h. */
#define _POSIX_C_SOURCE 200809L
#include "graft.h"

#include <stdarg.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

graft_log_level_t graft_log_level = GRAFT_LOG_INFO;

const char *graft_strerror(int err) {
    switch (err) {
    case GRAFT_OK: return "success";
    case GRAFT_EIO: return "input/output error";
    case GRAFT_EFORMAT: return "malformed input";
    case GRAFT_ENOMEM: return "out of memory";
    case GRAFT_EINVAL: return "invalid argument";
    case GRAFT_ESHAPE: return "tensor shape mismatch";
    case GRAFT_ETIMEOUT: return "deadline passed";
    case GRAFT_EPEER: return "peer error";
    case GRAFT_ESTATE: return "unexpected in this state";
    default: return "unknown error";
    }
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int graft_log_level_parse(const char *name, graft_log_level_t *out) {
    for (int l = GRAFT_LOG_DEBUG; l <= GRAFT_LOG_ERROR; l++)
        if (!strcmp(name, level_names[l])) {
            *out = (graft_log_level_t)l;
            return GRAFT_OK;
        }
    return GRAFT_EINVAL;
}

void graft_log_write(graft_log_level_t level, const char *fmt, ...) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One fprintf per line so that lines from several processes do not interleave. */
    fprintf(stderr, "%s.%03ld %-5s %s\n", stamp, ts.tv_nsec / 1000000, level_names[level],
            msg);
}

void *graft_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "graft: out of memory allocating %zu bytes\n", n);
        abort();
    }
    return p;
}

void *graft_xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "graft: out of memory allocating %zu x %zu bytes\n", count, size);
        abort();
    }
    return p;
}

void *graft_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "graft: out of memory allocating %zu bytes\n", n);
        abort();
    }
    return q;
}

char *graft_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(graft_xmalloc(n), s, n);
}

void *graft_xalloc64(size_t n, int zero) {
    size_t bytes = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p) {
        fprintf(stderr, "graft: out of memory allocating %zu bytes\n", n);
        abort();
    }
    if (zero) memset(p, 0, bytes);
    return p;
}

double graft_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t graft_peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %zu kB", &kib) == 1) break;
    if (f) fclose(f);
    struct rusage ru;
    if (!kib && getrusage(RUSAGE_SELF, &ru) == 0) kib = (size_t)ru.ru_maxrss; /* KiB on Linux */
    return kib * 1024;
}

void graft_path_dir(const char *path, char *dir, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == path) snprintf(dir, cap, "/");
    else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

int graft_fsync_dir_of(const char *path) {
    char dir[4096];
    graft_path_dir(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return GRAFT_EIO;
    int rc = fsync(fd) == 0 || errno == EINVAL ? GRAFT_OK : GRAFT_EIO;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

char *graft_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
        int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
        fclose(f);
        errno = err;
        return NULL;
    }
    /* A regular file's size is a hint (it may change under us); a stream
     * grows the buffer until its end. */
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : (size_t)1 << 16, len = 0;
    char *buf = graft_xmalloc(cap);
    for (;;) {
        size_t want = cap - 1 - len, got = fread(buf + len, 1, want, f);
        len += got;
        int c = got < want ? EOF : getc(f);
        if (c == EOF) break;
        buf = graft_xrealloc(buf, cap *= 2);
        buf[len++] = (char)c;
    }
    int err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) {
        free(buf);
        errno = err;
        return NULL;
    }
    buf[len] = '\0';
    *n = len;
    return buf;
}

int graft_mkdirs_for(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            LOG_ERROR("%s: cannot create directory %s: %s", path, buf, strerror(errno));
            return GRAFT_EIO;
        }
        *p = '/';
    }
    return GRAFT_OK;
}
