/* bpe.c — GPT-2's byte-level BPE (see bpe.h). */
#include "bpe.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* GPT-2's pre-tokenizer (encoder.py), unchanged. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum { MAX_VOCAB = 1 << 22, MAPPED_CPS = 512 };

typedef struct {
    uint64_t key; /* left id << 32 | right id; EMPTY_KEY when free */
    int32_t rank, id;
} merge_slot_t;

#define EMPTY_KEY UINT64_MAX

struct graft_bpe {
    int n;                 /* vocabulary size */
    char *pool;            /* every token's bytes, back to back */
    size_t *start;         /* (n + 1) offsets into pool */
    int32_t *vocab_slots;  /* open-addressed: bytes -> id, -1 free */
    size_t vocab_cap;      /* a power of two */
    merge_slot_t *merges;  /* open-addressed: (left, right) -> rank, id */
    size_t merge_cap;      /* a power of two */
    int32_t byte_token[256];
    int32_t endoftext;
    pcre2_code *re;
};

/* ---- GPT-2's byte <-> code point map ------------------------------------ */

/* bytes_to_unicode() of encoder.py: printable bytes stand for themselves,
 * the others (controls, space, 0x7f-0xa0, 0xad) for 256, 257, ... in byte
 * order. byte_of[cp] inverts it (-1: no byte). */
static void byte_map(int byte_of[MAPPED_CPS]) {
    for (int c = 0; c < MAPPED_CPS; c++) byte_of[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        byte_of[printable ? b : 256 + extra++] = b;
    }
}

/* A vocabulary or merges entry (UTF-8 of mapped code points) as the bytes
 * it stands for, into dst (cap >= len). Returns the byte count, or -1 when
 * a code point stands for no byte. */
static long unmap(const int byte_of[MAPPED_CPS], const char *s, size_t len, char *dst) {
    size_t r = 0, w = 0;
    while (r < len) {
        uint32_t cp;
        r += graft_utf8_next((const unsigned char *)s + r, len - r, &cp);
        if (cp >= MAPPED_CPS || byte_of[cp] < 0) return -1;
        dst[w++] = (char)byte_of[cp];
    }
    return (long)w;
}

/* ---- hash tables ---------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* The vocabulary slot holding bytes s (n) or the free slot where they go. */
static int32_t *vocab_slot(const graft_bpe_t *b, const char *s, size_t n) {
    size_t mask = b->vocab_cap - 1;
    for (size_t i = fnv1a(s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = b->vocab_slots[i];
        if (id < 0) return &b->vocab_slots[i];
        if (b->start[id + 1] - b->start[id] == n && memcmp(b->pool + b->start[id], s, n) == 0)
            return &b->vocab_slots[i];
    }
}

static int32_t vocab_find(const graft_bpe_t *b, const char *s, size_t n) {
    return *vocab_slot(b, s, n);
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

static merge_slot_t *merge_slot(const graft_bpe_t *b, uint64_t key) {
    size_t mask = b->merge_cap - 1;
    for (size_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & mask;; i = (i + 1) & mask)
        if (b->merges[i].key == key || b->merges[i].key == EMPTY_KEY) return &b->merges[i];
}

/* ---- loading --------------------------------------------------------------- */

/* path = dir/alt when only that file exists, else dir/name; returns path. */
static char *vocab_file(char *path, size_t cap, const char *dir, const char *name,
                        const char *alt) {
    snprintf(path, cap, "%s/%s", dir, name);
    if (access(path, F_OK) != 0) {
        char other[4096];
        snprintf(other, sizeof other, "%s/%s", dir, alt);
        if (access(other, F_OK) == 0) snprintf(path, cap, "%s", other);
    }
    return path;
}

/* Fills the vocabulary from a JSON object {"token": id, ...} whose ids are
 * 0..n-1, each once. */
static int load_vocab(graft_bpe_t *b, const char *path, const int byte_of[MAPPED_CPS]) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        if (jerr.line > 0)
            LOG_ERROR("%s:%d: not GPT-2's vocabulary JSON: %s", path, jerr.line, jerr.text);
        else
            LOG_ERROR("%s: cannot read the GPT-2 vocabulary: %s", path, jerr.text);
        return GRAFT_EFORMAT;
    }
    int rc = GRAFT_EFORMAT;
    size_t n = json_is_object(root) ? json_object_size(root) : 0;
    if (n == 0 || n > MAX_VOCAB) {
        LOG_ERROR("%s: want a JSON object of 1 to %d tokens", path, MAX_VOCAB);
        goto done;
    }
    b->n = (int)n;
    const char **key_of = graft_xcalloc(n, sizeof *key_of);
    const char *key;
    json_t *value;
    size_t bytes = 0;
    json_object_foreach(root, key, value) {
        json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
        if (id < 0 || (size_t)id >= n || key_of[id]) {
            LOG_ERROR("%s: token \"%s\" has id %lld: ids must be 0..%zu, each once", path, key,
                      (long long)id, n - 1);
            goto free_keys;
        }
        key_of[id] = key;
        bytes += strlen(key);
    }
    b->pool = graft_xmalloc(bytes + 1);
    b->start = graft_xmalloc((n + 1) * sizeof *b->start);
    b->start[0] = 0;
    for (size_t id = 0; id < n; id++) {
        long len = unmap(byte_of, key_of[id], strlen(key_of[id]), b->pool + b->start[id]);
        if (len <= 0) {
            LOG_ERROR("%s: token \"%s\" (id %zu) is not in GPT-2's byte alphabet", path,
                      key_of[id], id);
            goto free_keys;
        }
        b->start[id + 1] = b->start[id] + (size_t)len;
    }
    b->vocab_cap = pow2_at_least(2 * n);
    b->vocab_slots = graft_xmalloc(b->vocab_cap * sizeof *b->vocab_slots);
    for (size_t i = 0; i < b->vocab_cap; i++) b->vocab_slots[i] = -1;
    for (size_t id = 0; id < n; id++) {
        size_t len = b->start[id + 1] - b->start[id];
        int32_t *slot = vocab_slot(b, b->pool + b->start[id], len);
        if (*slot >= 0) {
            LOG_ERROR("%s: ids %d and %zu are the same token", path, *slot, id);
            goto free_keys;
        }
        *slot = (int32_t)id;
    }
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        b->byte_token[c] = vocab_find(b, &byte, 1);
        if (b->byte_token[c] < 0) {
            LOG_ERROR("%s: no token for byte 0x%02x: not a byte-level vocabulary", path, c);
            goto free_keys;
        }
    }
    b->endoftext = vocab_find(b, "<|endoftext|>", 13);
    rc = GRAFT_OK;
free_keys:
    free(key_of);
done:
    json_decref(root);
    return rc;
}

/* One line "left right" of the merges file: its ids and the merged token's. */
static int parse_merge(graft_bpe_t *b, const int byte_of[MAPPED_CPS], char *line, char *scratch,
                       int32_t ids[3]) {
    char *space = strchr(line, ' ');
    if (!space || space == line || !space[1] || strchr(space + 1, ' ')) return -1;
    long a = unmap(byte_of, line, (size_t)(space - line), scratch);
    long c = a > 0 ? unmap(byte_of, space + 1, strlen(space + 1), scratch + a) : -1;
    if (c <= 0) return -1;
    ids[0] = vocab_find(b, scratch, (size_t)a);
    ids[1] = vocab_find(b, scratch + a, (size_t)c);
    ids[2] = vocab_find(b, scratch, (size_t)(a + c));
    return ids[0] < 0 || ids[1] < 0 || ids[2] < 0 ? -1 : 0;
}

/* Reads the merges, ranked by their order in the file (a first line
 * "#version: ..." is a comment). */
static int load_merges(graft_bpe_t *b, const char *path, const int byte_of[MAPPED_CPS]) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        LOG_ERROR("%s: cannot open the GPT-2 merges: %s", path, strerror(errno));
        return GRAFT_EIO;
    }
    b->merge_cap = pow2_at_least(2 * (size_t)b->n);
    b->merges = graft_xmalloc(b->merge_cap * sizeof *b->merges);
    for (size_t i = 0; i < b->merge_cap; i++) b->merges[i].key = EMPTY_KEY;
    char *line = NULL, *scratch = NULL;
    size_t line_cap = 0, scratch_cap = 0, count = 0, line_no = 0;
    ssize_t got;
    int rc = GRAFT_OK;
    while ((got = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
        if (got == 0 || (line_no == 1 && strncmp(line, "#version", 8) == 0)) continue;
        if ((size_t)got + 1 > scratch_cap) { /* a token's bytes never outnumber its UTF-8 */
            free(scratch);
            scratch = graft_xmalloc(scratch_cap = (size_t)got + 1);
        }
        int32_t ids[3];
        if (parse_merge(b, byte_of, line, scratch, ids) != 0) {
            LOG_ERROR("%s:%zu: want \"LEFT RIGHT\", two tokens of the vocabulary whose join is "
                      "one too, not \"%s\"", path, line_no, line);
            rc = GRAFT_EFORMAT;
            break;
        }
        if (2 * (count + 1) > b->merge_cap) {
            LOG_ERROR("%s:%zu: more merges than the vocabulary can hold", path, line_no);
            rc = GRAFT_EFORMAT;
            break;
        }
        merge_slot_t *slot = merge_slot(b, pair_key(ids[0], ids[1]));
        if (slot->key == EMPTY_KEY) /* a repeated pair keeps its first rank */
            *slot = (merge_slot_t){pair_key(ids[0], ids[1]), (int32_t)count++, ids[2]};
    }
    if (rc == GRAFT_OK && ferror(f)) {
        LOG_ERROR("%s: read error: %s", path, strerror(errno));
        rc = GRAFT_EIO;
    }
    free(line);
    free(scratch);
    fclose(f);
    return rc;
}

static int compile_pattern(graft_bpe_t *b) {
    int err;
    PCRE2_SIZE at;
    b->re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at, NULL);
    if (!b->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        LOG_ERROR("PCRE2 cannot compile GPT-2's pattern at %zu: %s", (size_t)at, (char *)msg);
        return GRAFT_EINVAL;
    }
    pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE); /* without JIT it only runs slower */
    return GRAFT_OK;
}

void graft_bpe_files(const char *dir, char *vocab, char *merges, size_t cap) {
    vocab_file(vocab, cap, dir, "vocab.json", "encoder.json");
    vocab_file(merges, cap, dir, "merges.txt", "vocab.bpe");
}

int graft_bpe_load(const char *dir, graft_bpe_t **out) {
    int byte_of[MAPPED_CPS];
    byte_map(byte_of);
    graft_bpe_t *b = graft_xcalloc(1, sizeof *b);
    char vocab[4096], merges[4096];
    graft_bpe_files(dir, vocab, merges, sizeof vocab);
    int rc = load_vocab(b, vocab, byte_of);
    if (rc == GRAFT_OK) rc = load_merges(b, merges, byte_of);
    if (rc == GRAFT_OK) rc = compile_pattern(b);
    if (rc != GRAFT_OK) {
        graft_bpe_destroy(&b);
        return rc;
    }
    *out = b;
    return GRAFT_OK;
}

void graft_bpe_destroy(graft_bpe_t **self_p) {
    graft_bpe_t *b = *self_p;
    if (!b) return;
    free(b->pool);
    free(b->start);
    free(b->vocab_slots);
    free(b->merges);
    pcre2_code_free(b->re);
    free(b);
    *self_p = NULL;
}

int graft_bpe_vocab_size(const graft_bpe_t *b) { return b->n; }

int32_t graft_bpe_endoftext(const graft_bpe_t *b) { return b->endoftext; }

const char *graft_bpe_token_bytes(const graft_bpe_t *b, int32_t id, size_t *len) {
    if (id < 0 || id >= b->n) return NULL;
    *len = b->start[id + 1] - b->start[id];
    return b->pool + b->start[id];
}

/* ---- encoding -------------------------------------------------------------- */

/* Appends sym[0..m) at out[w..] (those past cap counted, not written). */
static size_t put_tokens(const int32_t *sym, size_t m, int32_t *out, size_t cap, size_t w) {
    for (size_t i = 0; i < m; i++, w++)
        if (w < cap) out[w] = sym[i];
    return w;
}

/* A piece's BPE: its bytes, then the lowest-ranked adjacent pair merged
 * (the leftmost of equals) until no pair is a merge. Merging one pair at a
 * time gives encoder.py's result, which merges every occurrence of the
 * pair in one pass: a pair built from a merged token always ranks after
 * it. Two implementations of that rule: a rescan of all pairs per merge
 * for the short pieces that are nearly all of them, and a heap for long
 * ones (a run of thousands of letters would be quadratic). */

/* Short pieces: sym (m) merged in place; returns the tokens left. */
static size_t merge_by_scan(const graft_bpe_t *b, int32_t *sym, size_t m) {
    for (;;) {
        const merge_slot_t *best = NULL;
        size_t at = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            const merge_slot_t *s = merge_slot(b, pair_key(sym[i], sym[i + 1]));
            if (s->key != EMPTY_KEY && (!best || s->rank < best->rank)) {
                best = s;
                at = i;
            }
        }
        if (!best) return m;
        sym[at] = best->id;
        memmove(sym + at + 1, sym + at + 2, (m - at - 2) * sizeof *sym);
        m--;
    }
}

/* A candidate merge of the pair that starts at symbol pos, by rank then pos. */
typedef struct {
    int32_t rank;
    uint32_t pos;
} candidate_t;

static int candidate_before(candidate_t a, candidate_t b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(candidate_t *h, size_t *n, candidate_t c) {
    size_t i = (*n)++;
    for (; i > 0 && candidate_before(c, h[(i - 1) / 2]); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = c;
}

static candidate_t heap_pop(candidate_t *h, size_t *n) {
    candidate_t top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && candidate_before(h[c + 1], h[c])) c++;
        if (!candidate_before(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Long pieces: symbols in a linked list (next, prev; a merged-away symbol
 * has id -1), candidates in a heap; a candidate whose pair has changed
 * since it was pushed is dropped when it comes up. Returns the tokens left,
 * compacted to the front of sym. */
static size_t merge_by_heap(const graft_bpe_t *b, int32_t *sym, size_t m) {
    uint32_t *next = graft_xmalloc(m * sizeof *next), *prev = graft_xmalloc(m * sizeof *prev);
    candidate_t *heap = graft_xmalloc(m * 2 * sizeof *heap); /* m - 1 pairs + one per merge */
    size_t n = 0;
    for (size_t i = 0; i < m; i++) {
        next[i] = (uint32_t)(i + 1);
        prev[i] = (uint32_t)(i - 1); /* prev[0] wraps: never read */
    }
    for (size_t i = 0; i + 1 < m; i++) {
        const merge_slot_t *s = merge_slot(b, pair_key(sym[i], sym[i + 1]));
        if (s->key != EMPTY_KEY) heap_push(heap, &n, (candidate_t){s->rank, (uint32_t)i});
    }
    while (n > 0) {
        candidate_t c = heap_pop(heap, &n);
        uint32_t i = c.pos, j = next[i];
        if (sym[i] < 0 || j >= m) continue;
        const merge_slot_t *s = merge_slot(b, pair_key(sym[i], sym[j]));
        if (s->key == EMPTY_KEY || s->rank != c.rank) continue; /* the pair has changed */
        sym[i] = s->id;
        sym[j] = -1;
        next[i] = next[j];
        if (next[i] < m) prev[next[i]] = i;
        if (i > 0 && sym[prev[i]] >= 0) {
            const merge_slot_t *l = merge_slot(b, pair_key(sym[prev[i]], sym[i]));
            if (l->key != EMPTY_KEY) heap_push(heap, &n, (candidate_t){l->rank, prev[i]});
        }
        if (next[i] < m) {
            const merge_slot_t *r = merge_slot(b, pair_key(sym[i], sym[next[i]]));
            if (r->key != EMPTY_KEY) heap_push(heap, &n, (candidate_t){r->rank, i});
        }
    }
    size_t left = 0;
    for (size_t i = 0; i < m; i++)
        if (sym[i] >= 0) sym[left++] = sym[i];
    free(next);
    free(prev);
    free(heap);
    return left;
}

/* Pieces up to this many bytes are merged by rescanning. */
#define SCAN_MAX 128

/* One piece's tokens appended at out[w..] (those past cap counted). */
static size_t encode_piece(const graft_bpe_t *b, const unsigned char *p, size_t n, int32_t *out,
                           size_t cap, size_t w) {
    int32_t local[SCAN_MAX];
    int32_t *sym = n <= SCAN_MAX ? local : graft_xmalloc(n * sizeof *sym);
    for (size_t i = 0; i < n; i++) sym[i] = b->byte_token[p[i]];
    size_t m = n <= SCAN_MAX ? merge_by_scan(b, sym, n) : merge_by_heap(b, sym, n);
    w = put_tokens(sym, m, out, cap, w);
    if (sym != local) free(sym);
    return w;
}

size_t graft_bpe_encode(const graft_bpe_t *b, const char *text, size_t len, int32_t *out,
                        size_t cap) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(b->re, NULL);
    GRAFT_ASSERT(md);
    const unsigned char *s = (const unsigned char *)text;
    size_t at = 0, w = 0;
    while (at < len) {
        size_t from = len, to = len; /* the next match; none: the rest is unmatched */
        if (pcre2_match(b->re, s, len, at, 0, md, NULL) > 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            from = ov[0];
            to = ov[1];
        }
        if (from > at) w = encode_piece(b, s + at, from - at, out, cap, w); /* not UTF-8 */
        if (to > from) w = encode_piece(b, s + from, to - from, out, cap, w);
        at = to > at ? to : len;
    }
    pcre2_match_data_free(md);
    return w;
}
