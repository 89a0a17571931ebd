/* keys.c — CurveZMQ keypair and allow-list files (see keys.h). */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

int graft_key_valid(const char *s) {
    if (!s || strlen(s) != GRAFT_KEY_Z85_LEN) return 0;
    uint8_t raw[32];
    return zmq_z85_decode(raw, s) != NULL;
}

/* Writes text to path with the given mode (applied even if the file existed). */
static int write_file(const char *path, const char *text, mode_t mode, int overwrite) {
    int flags = O_WRONLY | O_CREAT | O_TRUNC | (overwrite ? 0 : O_EXCL);
    int fd = open(path, flags, mode);
    if (fd < 0 && errno == EEXIST) {
        LOG_ERROR("keys: %s already exists: not replaced (graft keygen --force replaces the "
                  "keypair)", path);
        return GRAFT_EIO;
    }
    if (fd < 0) {
        LOG_ERROR("keys: cannot create %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    size_t n = strlen(text);
    int ok = fchmod(fd, mode) == 0 && write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    int err = errno;
    if (close(fd) != 0) ok = 0;
    if (!ok) {
        LOG_ERROR("keys: cannot write %s: %s", path, strerror(err));
        return GRAFT_EIO;
    }
    return GRAFT_OK;
}

int graft_keys_generate(const char *name, int overwrite, graft_keypair_t *kp) {
    graft_keypair_t k;
    if (zmq_curve_keypair(k.public_key.z85, k.secret_key.z85) != 0) {
        LOG_ERROR("keys: cannot generate a keypair for %s: %s (libzmq without CurveZMQ?)", name,
                  zmq_strerror(errno));
        return GRAFT_EINVAL;
    }
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s.key", name);
    snprintf(text, sizeof text, "# graft CurveZMQ secret key: keep private\n%s\n",
             k.secret_key.z85);
    int rc = write_file(path, text, 0600, overwrite);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s.pub", name);
    snprintf(text, sizeof text, "# graft CurveZMQ public key\n%s\n", k.public_key.z85);
    rc = write_file(path, text, 0644, 1);
    if (rc == GRAFT_OK && kp) *kp = k;
    return rc;
}

/* The next line of f that holds a key: skips blanks and '#' comments, cuts
 * the line at the first blank. Returns 1 with the token in tok, 0 at EOF. */
static int next_key(FILE *f, char *tok, size_t cap, int *lineno) {
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        (*lineno)++;
        char *s = line + strspn(line, " \t\r\n");
        if (*s == '\0' || *s == '#') continue;
        size_t n = strcspn(s, " \t\r\n");
        if (n >= cap) n = cap - 1;
        memcpy(tok, s, n);
        tok[n] = '\0';
        return 1;
    }
    return 0;
}

static int parse_key(const char *tok, const char *path, int lineno, graft_key_t *key) {
    if (!graft_key_valid(tok)) {
        LOG_ERROR("keys: %s:%d: not a z85 CurveZMQ key (want %d characters of z85)", path,
                  lineno, GRAFT_KEY_Z85_LEN);
        return GRAFT_EFORMAT;
    }
    memcpy(key->z85, tok, GRAFT_KEY_Z85_LEN + 1);
    return GRAFT_OK;
}

int graft_keys_read_file(const char *path, graft_key_t *key) {
    FILE *f = fopen(path, "r");
    if (!f) {
        LOG_ERROR("keys: cannot open %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    char tok[128];
    int lineno = 0;
    int rc;
    if (next_key(f, tok, sizeof tok, &lineno)) {
        rc = parse_key(tok, path, lineno, key);
    } else {
        LOG_ERROR("keys: %s holds no key", path);
        rc = GRAFT_EFORMAT;
    }
    fclose(f);
    return rc;
}

int graft_keys_load(const char *name, graft_keypair_t *kp) {
    char path[4096];
    snprintf(path, sizeof path, "%s.key", name);
    int rc = graft_keys_read_file(path, &kp->secret_key);
    if (rc) return rc;
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        LOG_WARN("keys: %s is readable by others (mode %03o); chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    if (zmq_curve_public(kp->public_key.z85, kp->secret_key.z85) != 0) {
        LOG_ERROR("keys: cannot derive the public key from %s: %s", path, zmq_strerror(errno));
        return GRAFT_EFORMAT;
    }
    snprintf(path, sizeof path, "%s.pub", name);
    if (access(path, F_OK) != 0) return GRAFT_OK;
    graft_key_t pub;
    rc = graft_keys_read_file(path, &pub);
    if (rc == GRAFT_OK && strcmp(pub.z85, kp->public_key.z85) != 0) {
        LOG_ERROR("keys: %s does not match the secret key in %s.key", path, name);
        rc = GRAFT_EFORMAT;
    }
    return rc;
}

int graft_keys_read_allow(const char *path, graft_key_t **keys, size_t *n) {
    *keys = NULL;
    *n = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        LOG_ERROR("keys: cannot open allow-list %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    char tok[128];
    int lineno = 0, rc = GRAFT_OK;
    size_t cap = 0;
    while (rc == GRAFT_OK && next_key(f, tok, sizeof tok, &lineno)) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            *keys = graft_xrealloc(*keys, cap * sizeof **keys);
        }
        rc = parse_key(tok, path, lineno, &(*keys)[*n]);
        if (rc == GRAFT_OK) (*n)++;
    }
    fclose(f);
    if (rc == GRAFT_OK && *n == 0) {
        LOG_ERROR("keys: allow-list %s holds no keys", path);
        rc = GRAFT_EFORMAT;
    }
    if (rc) {
        free(*keys);
        *keys = NULL;
        *n = 0;
    }
    return rc;
}
