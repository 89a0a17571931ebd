/* task.c — loading task data files, label and group sets, shards, and the
 * encoding of examples into model inputs (task.h). */
#include "task.h"

#include <errno.h>
#include <string.h>

#include "tokenizer.h"

struct graft_task {
    char *name;
    char *path;
    graft_task_kind_t kind;
    /* Every string of the task lives in this one block: for a loaded task it
     * is the file itself with TABs and LFs overwritten by NULs. */
    char *arena;
    graft_example_t *examples[GRAFT_SPLIT_COUNT];
    size_t count[GRAFT_SPLIT_COUNT];
    const char **labels; /* strcmp-sorted, into arena (or label_arena); NULL for generation */
    int num_labels;
    char *label_arena;   /* the label strings after graft_task_relabel(), else NULL */
    const char **groups; /* strcmp-sorted, into arena */
    size_t num_groups;
};

static const char *const split_names[GRAFT_SPLIT_COUNT] = {"train", "dev", "test"};

/* ---- names -------------------------------------------------------------- */

int graft_task_kind_parse(const char *s, graft_task_kind_t *out) {
    GRAFT_ASSERT(s && out);
    if (strcmp(s, "classification") == 0) {
        *out = GRAFT_TASK_CLASSIFY;
        return GRAFT_OK;
    }
    if (strcmp(s, "generation") == 0) {
        *out = GRAFT_TASK_GENERATE;
        return GRAFT_OK;
    }
    return GRAFT_EINVAL;
}

const char *graft_task_kind_name(graft_task_kind_t kind) {
    return kind == GRAFT_TASK_CLASSIFY ? "classification" : "generation";
}

int graft_task_split_parse(const char *s, int *out) {
    GRAFT_ASSERT(s && out);
    for (int i = 0; i < GRAFT_SPLIT_COUNT; i++) {
        if (strcmp(s, split_names[i]) == 0) {
            *out = i;
            return GRAFT_OK;
        }
    }
    return GRAFT_EINVAL;
}

const char *graft_task_split_name(int split) {
    GRAFT_ASSERT(split >= 0 && split < GRAFT_SPLIT_COUNT);
    return split_names[split];
}

/* ---- small helpers ------------------------------------------------------ */

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Byte offset of the first byte that does not start a well-formed UTF-8
 * sequence (Unicode Table 3-7: no overlongs, no surrogates, nothing above
 * U+10FFFF), or n if all n bytes are well formed. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        int need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return i;
        }
        for (int k = 1; k <= need; k++) {
            if (i + (size_t)k >= n || s[i + k] < lo || s[i + k] > hi) return i;
            lo = 0x80, hi = 0xBF;
        }
        i += (size_t)need + 1;
    }
    return n;
}

/* ---- reading and parsing ------------------------------------------------ */

typedef struct {
    graft_example_t *items;
    size_t n, cap;
} example_list_t;

static void example_list_push(example_list_t *l, const graft_example_t *ex) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->items = graft_xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->n++] = *ex;
}

/* Checks one line (n bytes at s, without its LF), cuts it into fields in
 * place and fills *ex and *split. Logs "path:line: problem" on failure. */
static int parse_line(const char *path, size_t lineno, graft_task_kind_t kind, char *s, size_t n,
                      graft_example_t *ex, int *split) {
    const char *cr = memchr(s, '\r', n);
    if (cr) {
        LOG_ERROR("%s:%zu: carriage return at byte %zu; lines must end with LF alone "
                  "(convert CRLF line endings)", path, lineno, (size_t)(cr - s) + 1);
        return GRAFT_EFORMAT;
    }
    const char *nul = memchr(s, '\0', n);
    if (nul) {
        LOG_ERROR("%s:%zu: NUL byte at byte %zu", path, lineno, (size_t)(nul - s) + 1);
        return GRAFT_EFORMAT;
    }
    size_t bad = utf8_invalid_at((const unsigned char *)s, n);
    if (bad < n) {
        LOG_ERROR("%s:%zu: invalid UTF-8 at byte %zu (0x%02X)", path, lineno, bad + 1,
                  (unsigned)(unsigned char)s[bad]);
        return GRAFT_EFORMAT;
    }
    char *field[4];
    int nf = 0;
    field[nf++] = s;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\t') continue;
        if (nf < 4) field[nf] = s + i + 1;
        nf++;
    }
    if (nf != 4) {
        LOG_ERROR("%s:%zu: expected 4 tab-separated fields, found %d", path, lineno, nf);
        return GRAFT_EFORMAT;
    }
    s[n] = '\0';
    for (int k = 1; k < 4; k++) field[k][-1] = '\0';
    if (graft_task_split_parse(field[0], split) != GRAFT_OK) {
        LOG_ERROR("%s:%zu: unknown split \"%.40s\" (expected train, dev or test)", path, lineno,
                  field[0]);
        return GRAFT_EFORMAT;
    }
    if (field[1][0] == '\0') {
        LOG_ERROR("%s:%zu: empty label (field 2: %s)", path, lineno,
                  kind == GRAFT_TASK_CLASSIFY ? "the class name" : "the target text");
        return GRAFT_EFORMAT;
    }
    if (field[3][0] == '\0') {
        LOG_ERROR("%s:%zu: empty text (field 4: %s)", path, lineno,
                  kind == GRAFT_TASK_CLASSIFY ? "the input" : "the prompt");
        return GRAFT_EFORMAT;
    }
    memset(ex, 0, sizeof *ex);
    ex->label = field[1];
    ex->label_len = (size_t)(field[2] - 1 - field[1]);
    ex->group = field[2];
    ex->text = field[3];
    ex->text_len = (size_t)(s + n - field[3]);
    ex->label_id = -1;
    ex->line = lineno;
    return GRAFT_OK;
}

/* The distinct strings of keys[0..n), strcmp-sorted, into *table (owned). */
static size_t build_table(const char **keys, size_t n, const char ***table) {
    const char **t = graft_xmalloc(n * sizeof *t);
    memcpy(t, keys, n * sizeof *t);
    qsort(t, n, sizeof *t, cmp_str_ptr);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || strcmp(t[m - 1], t[i]) != 0) t[m++] = t[i];
    *table = t;
    return m;
}

static int32_t table_find(const char *const *table, size_t n, const char *key) {
    const char *const *hit = bsearch(&key, table, n, sizeof *table, cmp_str_ptr);
    return hit ? (int32_t)(hit - table) : -1;
}

/* Numbers the groups (and, for classification, the labels) of every example
 * and points the example's strings at the table entries. */
static void index_strings(graft_task_t *t) {
    size_t total = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) total += t->count[s];
    const char **keys = graft_xmalloc(total * sizeof *keys);
    size_t k = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++)
        for (size_t i = 0; i < t->count[s]; i++) keys[k++] = t->examples[s][i].group;
    t->num_groups = build_table(keys, total, &t->groups);
    GRAFT_ASSERT(t->num_groups <= INT32_MAX);
    if (t->kind == GRAFT_TASK_CLASSIFY) {
        k = 0;
        for (int s = 0; s < GRAFT_SPLIT_COUNT; s++)
            for (size_t i = 0; i < t->count[s]; i++) keys[k++] = t->examples[s][i].label;
        size_t nl = build_table(keys, total, &t->labels);
        GRAFT_ASSERT(nl <= INT32_MAX);
        t->num_labels = (int)nl;
    }
    free(keys);
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        for (size_t i = 0; i < t->count[s]; i++) {
            graft_example_t *ex = &t->examples[s][i];
            ex->group_id = table_find(t->groups, t->num_groups, ex->group);
            ex->group = t->groups[ex->group_id];
            if (t->kind == GRAFT_TASK_CLASSIFY) {
                ex->label_id = table_find(t->labels, (size_t)t->num_labels, ex->label);
                ex->label = t->labels[ex->label_id];
            }
        }
    }
}

/* Warnings about a label set that will train poorly; not errors, because a
 * file may legitimately be a slice of a bigger data set. */
static void check_labels(const graft_task_t *t) {
    if (t->kind != GRAFT_TASK_CLASSIFY) return;
    if (t->num_labels < 2)
        LOG_WARN("task %s: %s has only %d label(s); a classifier needs two or more", t->name,
                 t->path, t->num_labels);
    if (!t->count[GRAFT_SPLIT_TRAIN]) return; /* an untrained copy: nothing more to say */
    char *seen = graft_xcalloc((size_t)t->num_labels, 1);
    for (size_t i = 0; i < t->count[GRAFT_SPLIT_TRAIN]; i++)
        seen[t->examples[GRAFT_SPLIT_TRAIN][i].label_id] = 1;
    for (int l = 0; l < t->num_labels; l++)
        if (!seen[l])
            LOG_WARN("task %s: label \"%s\" has no train examples in %s", t->name, t->labels[l],
                     t->path);
    free(seen);
}

static int load(const char *name, graft_task_kind_t kind, const char *path, int need_train,
                graft_task_t **out) {
    GRAFT_ASSERT(name && path && out);
    GRAFT_ASSERT(kind == GRAFT_TASK_CLASSIFY || kind == GRAFT_TASK_GENERATE);
    size_t len = 0;
    char *buf = graft_read_file(path, &len);
    if (!buf) {
        LOG_ERROR("task: cannot read %s: %s", path, strerror(errno));
        return GRAFT_EIO;
    }

    int rc = GRAFT_OK;
    example_list_t lists[GRAFT_SPLIT_COUNT] = {{0}};
    size_t pos = 0, lineno = 0;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) pos = 3;
    while (pos < len) {
        char *line = buf + pos;
        char *lf = memchr(line, '\n', len - pos);
        size_t n = lf ? (size_t)(lf - line) : len - pos;
        lineno++;
        graft_example_t ex;
        int split;
        rc = parse_line(path, lineno, kind, line, n, &ex, &split);
        if (rc != GRAFT_OK) goto fail;
        example_list_push(&lists[split], &ex);
        pos += n + 1;
    }
    if (lists[GRAFT_SPLIT_TRAIN].n == 0 && need_train) {
        LOG_ERROR("%s: no train examples (%zu line(s); the first field of a train example is "
                  "\"train\")", path, lineno);
        rc = GRAFT_EFORMAT;
        goto fail;
    }

    graft_task_t *t = graft_xcalloc(1, sizeof *t);
    t->name = graft_xstrdup(name);
    t->path = graft_xstrdup(path);
    t->kind = kind;
    t->arena = buf;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) {
        t->examples[s] = lists[s].items;
        t->count[s] = lists[s].n;
    }
    index_strings(t);
    check_labels(t);
    if (!t->count[GRAFT_SPLIT_TRAIN])
        LOG_INFO("task %s: %s has no train rows (this process trains nothing on it)", name, path);
    LOG_INFO("task %s: %s, %s: %zu train, %zu dev, %zu test examples, %d labels, %zu groups",
             name, graft_task_kind_name(kind), path, t->count[0], t->count[1], t->count[2],
             t->num_labels, t->num_groups);
    *out = t;
    return GRAFT_OK;

fail:
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) free(lists[s].items);
    free(buf);
    return rc;
}

int graft_task_load(const char *name, graft_task_kind_t kind, const char *path,
                    graft_task_t **out) {
    return load(name, kind, path, 1, out);
}

int graft_task_load_untrained(const char *name, graft_task_kind_t kind, const char *path,
                              graft_task_t **out) {
    return load(name, kind, path, 0, out);
}

/* ---- shards ------------------------------------------------------------- */

/* Copies n bytes plus a NUL to *cursor and advances it. */
static const char *arena_put(char **cursor, const char *s, size_t n) {
    char *p = *cursor;
    memcpy(p, s, n);
    p[n] = '\0';
    *cursor = p + n + 1;
    return p;
}

static const char **copy_table(char **cursor, const char *const *table, size_t n) {
    const char **copy = graft_xmalloc(n * sizeof *copy);
    for (size_t i = 0; i < n; i++) copy[i] = arena_put(cursor, table[i], strlen(table[i]));
    return copy;
}

/* Copies ex into *dst with its strings in the new arena (labels and groups
 * point into the copied tables). */
static void copy_example(graft_task_t *dst, char **cursor, const graft_example_t *ex,
                         graft_example_t *out) {
    *out = *ex;
    out->text = arena_put(cursor, ex->text, ex->text_len);
    out->group = dst->groups[ex->group_id];
    if (dst->kind == GRAFT_TASK_CLASSIFY)
        out->label = dst->labels[ex->label_id];
    else
        out->label = arena_put(cursor, ex->label, ex->label_len);
}

static size_t example_bytes(const graft_task_t *t, const graft_example_t *ex) {
    return ex->text_len + 1 + (t->kind == GRAFT_TASK_GENERATE ? ex->label_len + 1 : 0);
}

graft_task_t *graft_task_subset(const graft_task_t *t, const size_t *train_indices, size_t n) {
    GRAFT_ASSERT(t && (train_indices || n == 0));
    size_t ntrain = t->count[GRAFT_SPLIT_TRAIN];
    size_t bytes = 0;
    for (size_t k = 0; k < n; k++) {
        if (train_indices[k] >= ntrain) {
            LOG_ERROR("task %s: shard index %zu (entry %zu) is out of range: the task has %zu "
                      "train examples", t->name, train_indices[k], k, ntrain);
            return NULL;
        }
        bytes += example_bytes(t, &t->examples[GRAFT_SPLIT_TRAIN][train_indices[k]]);
    }
    for (int s = GRAFT_SPLIT_DEV; s < GRAFT_SPLIT_COUNT; s++)
        for (size_t i = 0; i < t->count[s]; i++) bytes += example_bytes(t, &t->examples[s][i]);
    for (int l = 0; l < t->num_labels; l++) bytes += strlen(t->labels[l]) + 1;
    for (size_t g = 0; g < t->num_groups; g++) bytes += strlen(t->groups[g]) + 1;

    graft_task_t *u = graft_xcalloc(1, sizeof *u);
    u->name = graft_xstrdup(t->name);
    u->path = graft_xstrdup(t->path);
    u->kind = t->kind;
    u->arena = graft_xmalloc(bytes);
    char *cursor = u->arena;
    u->num_labels = t->num_labels;
    if (t->labels) u->labels = copy_table(&cursor, t->labels, (size_t)t->num_labels);
    u->num_groups = t->num_groups;
    u->groups = copy_table(&cursor, t->groups, t->num_groups);
    u->count[GRAFT_SPLIT_TRAIN] = n;
    u->examples[GRAFT_SPLIT_TRAIN] = graft_xmalloc(n * sizeof(graft_example_t));
    for (size_t k = 0; k < n; k++)
        copy_example(u, &cursor, &t->examples[GRAFT_SPLIT_TRAIN][train_indices[k]],
                     &u->examples[GRAFT_SPLIT_TRAIN][k]);
    for (int s = GRAFT_SPLIT_DEV; s < GRAFT_SPLIT_COUNT; s++) {
        u->count[s] = t->count[s];
        u->examples[s] = graft_xmalloc(t->count[s] * sizeof(graft_example_t));
        for (size_t i = 0; i < t->count[s]; i++)
            copy_example(u, &cursor, &t->examples[s][i], &u->examples[s][i]);
    }
    GRAFT_ASSERT((size_t)(cursor - u->arena) == bytes);
    return u;
}

/* ---- relabelling ------------------------------------------------------- */

int graft_task_relabel(graft_task_t *t, const char *const *labels, int n) {
    GRAFT_ASSERT(t && n >= 0 && (labels || n == 0));
    if (t->kind != GRAFT_TASK_CLASSIFY) {
        if (n == 0) return GRAFT_OK;
        LOG_ERROR("task %s: a generation task has no labels, %d given", t->name, n);
        return GRAFT_EINVAL;
    }
    for (int l = 1; l < n; l++)
        if (strcmp(labels[l - 1], labels[l]) >= 0) {
            LOG_ERROR("task %s: label set is not sorted and distinct at \"%s\", \"%s\"", t->name,
                      labels[l - 1], labels[l]);
            return GRAFT_EINVAL;
        }
    size_t total = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) total += t->count[s];
    int32_t *ids = graft_xmalloc((total ? total : 1) * sizeof *ids);
    size_t k = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++)
        for (size_t i = 0; i < t->count[s]; i++, k++) {
            const graft_example_t *ex = &t->examples[s][i];
            ids[k] = table_find(labels, (size_t)n, ex->label);
            if (ids[k] < 0) {
                LOG_ERROR("%s:%zu: label \"%s\" of task %s is not one of the run's %d labels",
                          t->path, ex->line, ex->label, t->name, n);
                free(ids);
                return GRAFT_EINVAL;
            }
        }
    size_t bytes = 0;
    for (int l = 0; l < n; l++) bytes += strlen(labels[l]) + 1;
    char *arena = graft_xmalloc(bytes ? bytes : 1), *cursor = arena;
    const char **table = copy_table(&cursor, labels, (size_t)n);
    k = 0;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++)
        for (size_t i = 0; i < t->count[s]; i++, k++) {
            t->examples[s][i].label_id = ids[k];
            t->examples[s][i].label = table[ids[k]];
        }
    free(ids);
    free(t->labels);
    free(t->label_arena);
    t->labels = table;
    t->label_arena = arena;
    t->num_labels = n;
    return GRAFT_OK;
}

void graft_task_destroy(graft_task_t **self_p) {
    GRAFT_ASSERT(self_p);
    graft_task_t *t = *self_p;
    if (!t) return;
    for (int s = 0; s < GRAFT_SPLIT_COUNT; s++) free(t->examples[s]);
    free(t->labels);
    free(t->label_arena);
    free(t->groups);
    free(t->arena);
    free(t->name);
    free(t->path);
    free(t);
    *self_p = NULL;
}

/* ---- accessors ---------------------------------------------------------- */

const char *graft_task_name(const graft_task_t *t) { return t->name; }
const char *graft_task_path(const graft_task_t *t) { return t->path; }
graft_task_kind_t graft_task_kind(const graft_task_t *t) { return t->kind; }
int graft_task_num_labels(const graft_task_t *t) { return t->num_labels; }

const char *graft_task_label_name(const graft_task_t *t, int id) {
    GRAFT_ASSERT(id >= 0 && id < t->num_labels);
    return t->labels[id];
}

int graft_task_label_id(const graft_task_t *t, const char *name) {
    GRAFT_ASSERT(name);
    if (!t->labels) return -1;
    return table_find(t->labels, (size_t)t->num_labels, name);
}

size_t graft_task_count(const graft_task_t *t, int split) {
    GRAFT_ASSERT(split >= 0 && split < GRAFT_SPLIT_COUNT);
    return t->count[split];
}

void graft_task_label_counts(const graft_task_t *t, int split, size_t *counts) {
    int K = graft_task_num_labels(t);
    memset(counts, 0, (size_t)K * sizeof *counts);
    for (size_t i = 0; i < graft_task_count(t, split); i++)
        counts[graft_task_example(t, split, i)->label_id]++;
}

const graft_example_t *graft_task_example(const graft_task_t *t, int split, size_t i) {
    GRAFT_ASSERT(split >= 0 && split < GRAFT_SPLIT_COUNT);
    GRAFT_ASSERT(i < t->count[split]);
    return &t->examples[split][i];
}

size_t graft_task_num_groups(const graft_task_t *t) { return t->num_groups; }

const char *graft_task_group_name(const graft_task_t *t, size_t id) {
    GRAFT_ASSERT(id < t->num_groups);
    return t->groups[id];
}

int32_t graft_task_group_of(const graft_task_t *t, int split, size_t i) {
    return graft_task_example(t, split, i)->group_id;
}

/* ---- encoding ----------------------------------------------------------- */

/* text (len bytes) as tokens in a new array (*n of them; never more tokens
 * than bytes, for either tokenizer). */
static int32_t *encode_all(const graft_tokenizer_t *tok, const char *text, size_t len, size_t *n) {
    int32_t *ids = graft_xmalloc((len + 1) * sizeof *ids);
    *n = graft_tokenizer_encode(tok, text, len, ids, len + 1);
    GRAFT_ASSERT(*n <= len);
    return ids;
}

void graft_encode_classify_text(const graft_tokenizer_t *tok, const char *text, size_t len, int T,
                                int32_t *tokens, int32_t *pos) {
    GRAFT_ASSERT(tok && T >= 2 && tokens && pos);
    tokens[0] = tok->bos;
    size_t n = graft_tokenizer_encode(tok, text, len, tokens + 1, (size_t)T - 1);
    if (n > (size_t)T - 1) n = (size_t)T - 1;
    for (size_t k = n + 1; k < (size_t)T; k++) tokens[k] = tok->pad;
    *pos = (int32_t)n;
}

void graft_task_encode_classify(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                                size_t i, int T, int32_t *tokens, int32_t *pos, int32_t *label) {
    GRAFT_ASSERT(t->kind == GRAFT_TASK_CLASSIFY && label);
    const graft_example_t *ex = graft_task_example(t, split, i);
    graft_encode_classify_text(tok, ex->text, ex->text_len, T, tokens, pos);
    *label = ex->label_id;
}

/* A generation sequence after truncation: BOS, the last P prompt tokens,
 * SEP, the first G target tokens, and EOS if eos. */
typedef struct {
    const graft_tokenizer_t *tok;
    const int32_t *prompt, *target; /* all of the example's tokens */
    size_t n_prompt, P, G, len;
    int eos;
} gen_seq_t;

/* Token j of the sequence; PAD past its end. */
static int32_t gen_seq_at(const gen_seq_t *q, size_t j) {
    if (j == 0) return q->tok->bos;
    if (j <= q->P) return q->prompt[q->n_prompt - q->P + j - 1];
    if (j == q->P + 1) return q->tok->sep;
    if (j < q->P + 2 + q->G) return q->target[j - q->P - 2];
    if (j < q->len) return q->tok->eos;
    return q->tok->pad;
}

void graft_task_encode_generate(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                                size_t i, int T, int32_t *inputs, int32_t *targets,
                                int32_t *prompt_len) {
    GRAFT_ASSERT(t->kind == GRAFT_TASK_GENERATE);
    GRAFT_ASSERT(tok && T >= 4 && inputs && targets && prompt_len);
    const graft_example_t *ex = graft_task_example(t, split, i);
    gen_seq_t q = {.tok = tok, .eos = 1};
    int32_t *prompt = encode_all(tok, ex->text, ex->text_len, &q.n_prompt);
    int32_t *target = encode_all(tok, ex->label, ex->label_len, &q.G);
    q.prompt = prompt;
    q.target = target;
    q.P = q.n_prompt;
    size_t cap = (size_t)T + 1; /* the last token is only ever a target */
    if (q.P + q.G + 3 > cap) {
        size_t keep = q.P;
        if (keep > GRAFT_TASK_MIN_PROMPT) keep = GRAFT_TASK_MIN_PROMPT;
        if (keep > ((size_t)T - 2) / 2) keep = ((size_t)T - 2) / 2;
        size_t excess = q.P + q.G + 3 - cap;
        q.P -= q.P - keep < excess ? q.P - keep : excess;
        if (q.P + q.G + 3 > cap) {
            q.eos = 0;
            q.G = cap - 2 - q.P;
        }
    }
    q.len = q.P + q.G + 2 + (size_t)q.eos;
    size_t plen = q.P + 2;
    for (size_t j = 0; j < (size_t)T; j++) {
        inputs[j] = gen_seq_at(&q, j);
        targets[j] = (j + 1 >= plen && j + 1 < q.len) ? gen_seq_at(&q, j + 1) : -1;
    }
    *prompt_len = (int32_t)plen;
    free(prompt);
    free(target);
}

void graft_encode_prompt_text(const graft_tokenizer_t *tok, const char *text, size_t len, int T,
                              int room, int32_t *tokens, int32_t *prompt_len) {
    GRAFT_ASSERT(tok && room >= 0 && T - room >= 3 && tokens && prompt_len);
    size_t n;
    int32_t *prompt = encode_all(tok, text, len, &n);
    size_t max_p = (size_t)(T - room - 2);
    size_t P = n < max_p ? n : max_p;
    tokens[0] = tok->bos;
    memcpy(tokens + 1, prompt + n - P, P * sizeof *tokens);
    tokens[P + 1] = tok->sep;
    for (size_t k = P + 2; k < (size_t)T; k++) tokens[k] = tok->pad;
    *prompt_len = (int32_t)(P + 2);
    free(prompt);
}

void graft_task_batch(const graft_task_t *t, const graft_tokenizer_t *tok, int split,
                      const size_t *indices, int B, int T, int32_t *inputs, int32_t *targets,
                      int32_t *pos, int32_t *labels) {
    GRAFT_ASSERT(indices && inputs && B >= 0);
    for (int b = 0; b < B; b++) {
        int32_t *row = inputs + (size_t)b * (size_t)T;
        if (t->kind == GRAFT_TASK_CLASSIFY) {
            GRAFT_ASSERT(pos && labels);
            graft_task_encode_classify(t, tok, split, indices[b], T, row, &pos[b], &labels[b]);
        } else {
            GRAFT_ASSERT(targets);
            int32_t plen;
            graft_task_encode_generate(t, tok, split, indices[b], T, row,
                                       targets + (size_t)b * (size_t)T, &plen);
            if (pos) pos[b] = plen;
        }
    }
}

void graft_task_sample_indices(const graft_task_t *t, int split, graft_rng_t *rng, int B,
                               size_t *out) {
    size_t n = graft_task_count(t, split);
    GRAFT_ASSERT(n > 0 && n <= UINT32_MAX && rng && out && B >= 0);
    for (int b = 0; b < B; b++) out[b] = graft_rng_below(rng, (uint32_t)n);
}
