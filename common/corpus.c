/* corpus.c — loading a text corpus into one byte-token stream, and drawing
 * train windows and held-out evaluation batches from it (corpus.h). */
#define _POSIX_C_SOURCE 200809L
#include "corpus.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer.h"

struct graft_corpus {
    uint16_t *tokens; /* the whole stream: train split, then held-out split */
    size_t n;         /* tokens in the stream */
    size_t n_train;   /* tokens [0, n_train) are train, [n_train, n) held out */
    size_t n_files;
};

/* ---- the file list ------------------------------------------------------ */

typedef struct {
    char **paths;
    size_t n, cap;
} path_list_t;

static void path_list_push(path_list_t *l, char *path) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->paths = graft_xrealloc(l->paths, l->cap * sizeof *l->paths);
    }
    l->paths[l->n++] = path;
}

static void path_list_free(path_list_t *l) {
    for (size_t i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    memset(l, 0, sizeof *l);
}

static char *path_join(const char *dir, const char *name) {
    size_t len = strlen(dir) + 1 + strlen(name) + 1;
    char *p = graft_xmalloc(len);
    if (len > 1 && dir[strlen(dir) - 1] == '/')
        snprintf(p, len, "%s%s", dir, name);
    else
        snprintf(p, len, "%s/%s", dir, name);
    return p;
}

/* Appends every regular file under dir (following symlinks to files but not
 * to directories, so that a link cycle cannot trap the walk). */
static int list_dir(const char *dir, path_list_t *out) {
    DIR *d = opendir(dir);
    if (!d) {
        LOG_ERROR("corpus: cannot open directory %s: %s", dir, strerror(errno));
        return GRAFT_EIO;
    }
    int rc = GRAFT_OK;
    struct dirent *e;
    errno = 0;
    while (rc == GRAFT_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue; /* ".", ".." and hidden entries */
        char *p = path_join(dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0) {
            LOG_ERROR("corpus: cannot stat %s: %s", p, strerror(errno));
            free(p);
            rc = GRAFT_EIO;
        } else if (S_ISDIR(st.st_mode)) {
            rc = list_dir(p, out);
            free(p);
        } else if (S_ISREG(st.st_mode) || (S_ISLNK(st.st_mode) && stat(p, &st) == 0 &&
                                           S_ISREG(st.st_mode))) {
            path_list_push(out, p);
        } else {
            LOG_DEBUG("corpus: skipping %s (not a regular file)", p);
            free(p);
        }
        errno = 0;
    }
    if (rc == GRAFT_OK && errno != 0) {
        LOG_ERROR("corpus: cannot read directory %s: %s", dir, strerror(errno));
        rc = GRAFT_EIO;
    }
    closedir(d);
    return rc;
}

static int cmp_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files of the corpus in stream order. */
static int list_files(const char *path, path_list_t *out) {
    struct stat st;
    if (stat(path, &st) != 0) {
        LOG_ERROR("corpus: cannot open %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    if (S_ISREG(st.st_mode)) {
        char *copy = graft_xmalloc(strlen(path) + 1);
        strcpy(copy, path);
        path_list_push(out, copy);
        return GRAFT_OK;
    }
    if (!S_ISDIR(st.st_mode)) {
        LOG_ERROR("corpus: %s is neither a regular file nor a directory", path);
        return GRAFT_EIO;
    }
    int rc = list_dir(path, out);
    if (rc == GRAFT_OK && out->n > 1) qsort(out->paths, out->n, sizeof *out->paths, cmp_paths);
    return rc;
}

/* ---- the token stream --------------------------------------------------- */

static void stream_reserve(graft_corpus_t *c, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t ncap = *cap ? *cap : 1 << 16;
    while (ncap < need) ncap *= 2;
    c->tokens = graft_xrealloc(c->tokens, ncap * sizeof *c->tokens);
    *cap = ncap;
}

/* Appends n tokens, preceded by EOS when they follow another file's. */
static void append_tokens(graft_corpus_t *c, size_t *cap, const int32_t *toks, size_t n,
                          int32_t eos, int first_of_file) {
    if (first_of_file && c->n > 0 && n > 0) {
        stream_reserve(c, cap, c->n + 1);
        c->tokens[c->n++] = (uint16_t)eos;
    }
    stream_reserve(c, cap, c->n + n);
    for (size_t i = 0; i < n; i++) c->tokens[c->n + i] = (uint16_t)toks[i];
    c->n += n;
}

/* Appends the tokens of one file; empty files add nothing. Bytes are read
 * in chunks; BPE encodes the whole text (a chunk boundary would cut words). */
static int append_file(graft_corpus_t *c, size_t *cap, const char *path,
                       const graft_tokenizer_t *tok) {
    size_t start = c->n;
    if (tok) {
        size_t n;
        char *text = graft_read_file(path, &n);
        if (!text) {
            LOG_ERROR("corpus: cannot read %s: %s", path, strerror(errno));
            return GRAFT_EIO;
        }
        int32_t *toks = graft_xmalloc((n + 1) * sizeof *toks);
        size_t k = graft_tokenizer_encode(tok, text, n, toks, n + 1);
        append_tokens(c, cap, toks, k, tok->eos, 1);
        free(toks);
        free(text);
        if (c->n > start) c->n_files++;
        return GRAFT_OK;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        LOG_ERROR("corpus: cannot open %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    char buf[8192];
    int32_t toks[sizeof buf];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        size_t k = graft_tok_encode(buf, got, toks, got);
        append_tokens(c, cap, toks, k, GRAFT_TOK_EOS, c->n == start);
    }
    int rc = GRAFT_OK;
    if (ferror(f)) {
        LOG_ERROR("corpus: cannot read %s: %s", path, strerror(errno));
        rc = GRAFT_EIO;
    }
    fclose(f);
    if (c->n > start) c->n_files++;
    return rc;
}

int graft_corpus_load(const char *path, double heldout_frac, const graft_tokenizer_t *tok,
                      graft_corpus_t **out) {
    GRAFT_ASSERT(path && out);
    if (tok && tok->kind == GRAFT_TOKENIZER_BYTE) tok = NULL; /* the chunked byte path */
    GRAFT_ASSERT(!tok || tok->vocab <= 65536);
    if (!(heldout_frac >= 0.0 && heldout_frac < 1.0)) {
        LOG_ERROR("corpus: held-out fraction %g for %s is outside [0, 1)", heldout_frac, path);
        return GRAFT_EINVAL;
    }
    path_list_t files = {0};
    graft_corpus_t *c = graft_xcalloc(1, sizeof *c);
    size_t cap = 0;
    int rc = list_files(path, &files);
    if (rc != GRAFT_OK) goto fail;
    for (size_t i = 0; i < files.n; i++) {
        rc = append_file(c, &cap, files.paths[i], tok);
        if (rc != GRAFT_OK) goto fail;
    }
    if (c->n == 0) {
        if (files.n == 0)
            LOG_ERROR("corpus: %s holds no files (hidden files and folders are skipped)", path);
        else
            LOG_ERROR("corpus: %s holds no text: its %zu file(s) are empty", path, files.n);
        rc = GRAFT_EFORMAT;
        goto fail;
    }
    size_t n_heldout = (size_t)((double)c->n * heldout_frac);
    c->n_train = c->n - n_heldout;
    LOG_INFO("corpus: %s: %zu files, %zu tokens (%zu train, %zu held out)", path, c->n_files,
             c->n, c->n_train, n_heldout);
    path_list_free(&files);
    *out = c;
    return GRAFT_OK;

fail:
    path_list_free(&files);
    graft_corpus_destroy(&c);
    return rc;
}

void graft_corpus_destroy(graft_corpus_t **self_p) {
    GRAFT_ASSERT(self_p);
    graft_corpus_t *c = *self_p;
    if (!c) return;
    free(c->tokens);
    free(c);
    *self_p = NULL;
}

size_t graft_corpus_size(const graft_corpus_t *c, int split) {
    GRAFT_ASSERT(c && (split == GRAFT_CORPUS_TRAIN || split == GRAFT_CORPUS_HELDOUT));
    return split == GRAFT_CORPUS_TRAIN ? c->n_train : c->n - c->n_train;
}

const uint16_t *graft_corpus_tokens(const graft_corpus_t *c, int split) {
    GRAFT_ASSERT(c && (split == GRAFT_CORPUS_TRAIN || split == GRAFT_CORPUS_HELDOUT));
    return split == GRAFT_CORPUS_TRAIN ? c->tokens : c->tokens + c->n_train;
}

size_t graft_corpus_files(const graft_corpus_t *c) {
    GRAFT_ASSERT(c);
    return c->n_files;
}

/* ---- windows ------------------------------------------------------------ */

/* Copies T inputs starting at src and the T targets one token later. */
static void copy_window(const uint16_t *src, int T, int32_t *inputs, int32_t *targets) {
    for (int t = 0; t < T; t++) {
        inputs[t] = src[t];
        targets[t] = src[t + 1];
    }
}

void graft_corpus_sample(const graft_corpus_t *c, graft_rng_t *rng, int B, int T,
                         int32_t *inputs, int32_t *targets) {
    GRAFT_ASSERT(c && rng && inputs && targets && B > 0 && T > 0);
    GRAFT_ASSERT(c->n_train > (size_t)T);
    /* A window needs T+1 tokens, so offsets run over [0, n_train - T). */
    size_t n_offsets = c->n_train - (size_t)T;
    GRAFT_ASSERT(n_offsets <= UINT32_MAX);
    for (int b = 0; b < B; b++) {
        size_t off = graft_rng_below(rng, (uint32_t)n_offsets);
        copy_window(c->tokens + off, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    }
}

size_t graft_corpus_eval_batches(const graft_corpus_t *c, int B, int T) {
    GRAFT_ASSERT(c && B > 0 && T > 0);
    size_t n_heldout = c->n - c->n_train;
    if (n_heldout == 0) return 0;
    return (n_heldout - 1) / ((size_t)B * (size_t)T);
}

void graft_corpus_eval_batch(const graft_corpus_t *c, size_t i, int B, int T,
                             int32_t *inputs, int32_t *targets) {
    GRAFT_ASSERT(c && inputs && targets);
    GRAFT_ASSERT(i < graft_corpus_eval_batches(c, B, T));
    const uint16_t *batch = c->tokens + c->n_train + i * (size_t)B * (size_t)T;
    for (int b = 0; b < B; b++)
        copy_window(batch + (size_t)b * T, T, inputs + (size_t)b * T, targets + (size_t)b * T);
}
