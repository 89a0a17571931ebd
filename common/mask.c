/* mask.c — sparse grafting masks: selection, application, overlap and
 * files (see mask.h). */
#include "mask.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* ---- groups ------------------------------------------------------------- */

static const struct {
    const char *name;
    int bit;
} group_names[] = {
    {"embed", GRAFT_MASK_EMBED},
    {"attn", GRAFT_MASK_ATTN},
    {"mlp", GRAFT_MASK_MLP},
    {"ln", GRAFT_MASK_LN},
};
#define N_GROUPS (int)(sizeof group_names / sizeof group_names[0])

int graft_mask_parse_groups(const char *list, int *groups) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    int set = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", +", &save); tok;
         tok = strtok_r(NULL, ", +", &save)) {
        int bit = !strcmp(tok, "all") ? GRAFT_MASK_ALL : 0;
        for (int i = 0; i < N_GROUPS && !bit; i++)
            if (!strcmp(tok, group_names[i].name)) bit = group_names[i].bit;
        if (!bit) {
            LOG_ERROR("unknown graft parameter group '%s' (attn, mlp, ln, embed or all)", tok);
            return GRAFT_EINVAL;
        }
        set |= bit;
    }
    if (!set) {
        LOG_ERROR("no graft parameter group given (attn, mlp, ln, embed or all)");
        return GRAFT_EINVAL;
    }
    *groups = set;
    return GRAFT_OK;
}

const char *graft_mask_groups_str(int groups, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_GROUPS; i++)
        if ((groups & group_names[i].bit) && len < n)
            len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "," : "",
                                    group_names[i].name);
    return buf;
}

int graft_mask_group_of(const char *name) {
    if (!strcmp(name, "wte.weight") || !strcmp(name, "wpe.weight")) return GRAFT_MASK_EMBED;
    if (strstr(name, "ln_")) return GRAFT_MASK_LN;
    if (strstr(name, ".attn.")) return GRAFT_MASK_ATTN;
    if (strstr(name, ".mlp.")) return GRAFT_MASK_MLP;
    return 0;
}

/* ---- layout ------------------------------------------------------------- */

void graft_mask_layout_init(graft_mask_layout_t *lay, const graft_gpt2_t *m, int groups) {
    memset(lay, 0, sizeof *lay);
    lay->cfg = m->cfg;
    lay->num_params = m->num_params;
    lay->groups = groups;
    lay->n = graft_gpt2_num_named(&m->cfg);
    lay->tensors = graft_xmalloc((size_t)lay->n * sizeof *lay->tensors);
    lay->eligible = graft_xmalloc((size_t)lay->n * sizeof *lay->eligible);
    graft_gpt2_named(m, lay->tensors);
    for (int i = 0; i < lay->n; i++) {
        lay->eligible[i] = (graft_mask_group_of(lay->tensors[i].name) & groups) != 0;
        if (lay->eligible[i]) lay->num_eligible += lay->tensors[i].numel;
    }
}

void graft_mask_layout_free(graft_mask_layout_t *lay) {
    free(lay->tensors);
    free(lay->eligible);
    memset(lay, 0, sizeof *lay);
}

/* ---- masks -------------------------------------------------------------- */

graft_mask_t *graft_mask_new(size_t k) {
    graft_mask_t *m = graft_xcalloc(1, sizeof *m);
    m->k = k;
    m->index = graft_xmalloc((k ? k : 1) * sizeof *m->index);
    m->value = graft_xmalloc((k ? k : 1) * sizeof *m->value);
    return m;
}

void graft_mask_destroy(graft_mask_t **self_p) {
    graft_mask_t *m = *self_p;
    if (!m) return;
    free(m->index);
    free(m->value);
    free(m);
    *self_p = NULL;
}

size_t graft_mask_k(double sparsity, size_t num_eligible) {
    double k = round(sparsity * (double)num_eligible);
    if (k <= 0.0) return 0;
    return k >= (double)num_eligible ? num_eligible : (size_t)k;
}

typedef struct {
    const float *pre, *ft;
} movement_t;

/* Larger movement first; equal movements by smaller offset. */
static int cmp_movement(const void *a, const void *b, void *ctx) {
    const movement_t *mv = ctx;
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    float di = fabsf(mv->ft[i] - mv->pre[i]), dj = fabsf(mv->ft[j] - mv->pre[j]);
    if (di != dj) return di > dj ? -1 : 1;
    return (i > j) - (i < j);
}

int64_t *graft_mask_rank(const graft_mask_layout_t *lay, const float *pre, const float *ft) {
    int64_t *order = graft_xmalloc((lay->num_eligible ? lay->num_eligible : 1) * sizeof *order);
    size_t n = 0;
    for (int t = 0; t < lay->n; t++) {
        if (!lay->eligible[t]) continue;
        for (size_t j = 0; j < lay->tensors[t].numel; j++)
            order[n++] = (int64_t)(lay->tensors[t].offset + j);
    }
    GRAFT_ASSERT(n == lay->num_eligible);
    movement_t mv = {pre, ft};
    qsort_r(order, n, sizeof *order, cmp_movement, &mv);
    return order;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

graft_mask_t *graft_mask_from_order(const int64_t *order, size_t k, const float *ft) {
    graft_mask_t *m = graft_mask_new(k);
    memcpy(m->index, order, k * sizeof *m->index);
    qsort(m->index, k, sizeof *m->index, cmp_i64);
    for (size_t i = 0; i < k; i++) m->value[i] = ft[m->index[i]];
    return m;
}

void graft_mask_apply(const graft_mask_t *mask, const float *pre, float *theta, size_t n) {
    if (theta != pre) memcpy(theta, pre, n * sizeof(float));
    for (size_t i = 0; i < mask->k; i++) {
        GRAFT_ASSERT(mask->index[i] >= 0 && (size_t)mask->index[i] < n);
        theta[mask->index[i]] = mask->value[i];
    }
}

size_t graft_mask_intersection(const graft_mask_t *a, const graft_mask_t *b) {
    size_t i = 0, j = 0, common = 0;
    while (i < a->k && j < b->k) {
        if (a->index[i] < b->index[j]) {
            i++;
        } else if (a->index[i] > b->index[j]) {
            j++;
        } else {
            common++;
            i++;
            j++;
        }
    }
    return common;
}

double graft_mask_jaccard(const graft_mask_t *a, const graft_mask_t *b) {
    size_t common = graft_mask_intersection(a, b), uni = a->k + b->k - common;
    return uni ? (double)common / (double)uni : 1.0;
}

/* First position in the ascending index[0..k) whose offset is >= off. */
static size_t lower_bound(const graft_mask_t *m, int64_t off) {
    size_t lo = 0, hi = m->k;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->index[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void graft_mask_tensor_counts(const graft_mask_t *mask, const graft_mask_layout_t *lay,
                              size_t *counts) {
    for (int t = 0; t < lay->n; t++) {
        int64_t off = (int64_t)lay->tensors[t].offset;
        counts[t] = lower_bound(mask, off + (int64_t)lay->tensors[t].numel) -
                    lower_bound(mask, off);
    }
}

uint64_t graft_mask_digest(const float *params, size_t n) {
    const uint8_t *p = (const uint8_t *)params;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n * sizeof(float); i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- files -------------------------------------------------------------- */

#define NAME_CAP 96

/* The per-tensor pieces of a mask for writing: local offsets (I32 or I64)
 * and values, pointing into one allocation. */
typedef struct {
    graft_st_tensor_t *ts;
    char *names;
    void *local; /* int32_t or int64_t per tensor, back to back */
    int n;
} mask_entries_t;

static void mask_entries(const graft_mask_t *mask, const graft_mask_layout_t *lay,
                         mask_entries_t *e) {
    size_t *counts = graft_xmalloc((size_t)lay->n * sizeof *counts);
    graft_mask_tensor_counts(mask, lay, counts);
    e->ts = graft_xcalloc((size_t)lay->n * 2 + 1, sizeof *e->ts);
    e->names = graft_xcalloc((size_t)lay->n * 2, NAME_CAP);
    e->local = graft_xmalloc((mask->k ? mask->k : 1) * sizeof(int64_t));
    e->n = 0;
    uint8_t *local = e->local;
    /* Tensors in checkpoint order, which is not the order of their offsets
     * (the block stacks each kind over layers). */
    for (int t = 0; t < lay->n; t++) {
        if (!counts[t]) continue;
        const graft_gpt2_tensor_t *nt = &lay->tensors[t];
        size_t at = lower_bound(mask, (int64_t)nt->offset);
        int wide = nt->numel > (size_t)INT32_MAX;
        for (size_t j = 0; j < counts[t]; j++) {
            int64_t v = mask->index[at + j] - (int64_t)nt->offset;
            if (wide) {
                memcpy(local, &v, sizeof v);
                local += sizeof v;
            } else {
                int32_t v32 = (int32_t)v;
                memcpy(local, &v32, sizeof v32);
                local += sizeof v32;
            }
        }
        for (int part = 0; part < 2; part++) {
            char *nm = e->names + (size_t)e->n * NAME_CAP;
            snprintf(nm, NAME_CAP, "mask.%s.%s", nt->name, part ? "value" : "index");
            graft_st_tensor_t *st = &e->ts[e->n++];
            st->name = nm;
            st->ndim = 1;
            st->shape[0] = (int64_t)counts[t];
            st->dtype = part ? GRAFT_ST_F32 : wide ? GRAFT_ST_I64 : GRAFT_ST_I32;
            st->data = part ? (const void *)(mask->value + at)
                            : (const void *)(local - counts[t] * (wide ? 8 : 4));
        }
    }
    free(counts);
}

int graft_mask_save(const graft_mask_t *mask, const graft_mask_layout_t *lay, const char *path,
                    const graft_st_tensor_t *extra, int n_extra, const char *const *meta_keys,
                    const char *const *meta_values, int n_meta) {
    mask_entries_t e;
    mask_entries(mask, lay, &e);
    graft_st_tensor_t *ts = graft_xmalloc((size_t)(e.n + n_extra + 1) * sizeof *ts);
    memcpy(ts, e.ts, (size_t)e.n * sizeof *ts);
    if (n_extra) memcpy(ts + e.n, extra, (size_t)n_extra * sizeof *ts);

    enum { OWN = 10 };
    char vals[OWN][64];
    const char *keys[OWN] = {"format",    "config.V",      "config.T",    "config.L",
                             "config.NH", "config.C",      "mask.k",      "mask.groups",
                             "mask.num_params", "tokenizer"};
    snprintf(vals[0], 64, "graft-mask");
    snprintf(vals[1], 64, "%d", lay->cfg.V);
    snprintf(vals[2], 64, "%d", lay->cfg.T);
    snprintf(vals[3], 64, "%d", lay->cfg.L);
    snprintf(vals[4], 64, "%d", lay->cfg.NH);
    snprintf(vals[5], 64, "%d", lay->cfg.C);
    snprintf(vals[6], 64, "%zu", mask->k);
    graft_mask_groups_str(lay->groups, vals[7], 64);
    snprintf(vals[8], 64, "%zu", lay->num_params);
    snprintf(vals[9], 64, "%s", graft_tokenizer_kind_name(lay->cfg.tokenizer));
    const char **mk = graft_xmalloc((size_t)(OWN + n_meta) * sizeof *mk);
    const char **mv = graft_xmalloc((size_t)(OWN + n_meta) * sizeof *mv);
    for (int i = 0; i < OWN; i++) {
        mk[i] = keys[i];
        mv[i] = vals[i];
    }
    for (int i = 0; i < n_meta; i++) {
        mk[OWN + i] = meta_keys[i];
        mv[OWN + i] = meta_values[i];
    }
    int rc = graft_mkdirs_for(path);
    if (!rc) rc = graft_st_write(path, ts, e.n + n_extra, mk, mv, OWN + n_meta);
    free(mk);
    free(mv);
    free(ts);
    free(e.ts);
    free(e.names);
    free(e.local);
    return rc;
}

static int check_header(const graft_st_file_t *f, const graft_mask_layout_t *lay, size_t *k) {
    const char *path = graft_st_path(f);
    int rc = graft_st_expect_format(f, "graft-mask");
    if (rc) return rc;
    graft_gpt2_config_t c;
    rc = graft_gpt2_read_config(f, &c);
    if (rc) return rc;
    if (memcmp(&c, &lay->cfg, sizeof c) != 0) {
        LOG_ERROR("%s: mask for a trunk with V=%d T=%d L=%d NH=%d C=%d (%s tokenizer); this trunk "
                  "has V=%d T=%d L=%d NH=%d C=%d (%s)", path, c.V, c.T, c.L, c.NH, c.C,
                  graft_tokenizer_kind_name(c.tokenizer), lay->cfg.V, lay->cfg.T, lay->cfg.L,
                  lay->cfg.NH, lay->cfg.C, graft_tokenizer_kind_name(lay->cfg.tokenizer));
        return GRAFT_ESHAPE;
    }
    const char *ks = graft_st_meta(f, "mask.k");
    char *end = NULL;
    unsigned long long kv = ks ? strtoull(ks, &end, 10) : 0;
    if (!ks || !*ks || *end) {
        LOG_ERROR("%s: metadata 'mask.k' missing or not a number", path);
        return GRAFT_EFORMAT;
    }
    *k = (size_t)kv;
    /* Every "mask.*" tensor must name a tensor of this trunk. */
    char nm[NAME_CAP];
    for (int i = 0; i < graft_st_count(f); i++) {
        const char *name = graft_st_name(f, i);
        if (strncmp(name, "mask.", 5) != 0) continue;
        int known = 0;
        for (int t = 0; t < lay->n && !known; t++)
            for (int part = 0; part < 2 && !known; part++) {
                snprintf(nm, sizeof nm, "mask.%s.%s", lay->tensors[t].name,
                         part ? "value" : "index");
                known = !strcmp(nm, name);
            }
        if (!known) {
            LOG_ERROR("%s: tensor '%s' is not a mask part of any tensor of this trunk", path, name);
            return GRAFT_ESHAPE;
        }
    }
    return GRAFT_OK;
}

/* Reads one trunk tensor's part of the mask into index/value at *at. */
static int read_part(const graft_st_file_t *f, const graft_gpt2_tensor_t *nt, graft_mask_t *m,
                     size_t *at) {
    const char *path = graft_st_path(f);
    char iname[NAME_CAP], vname[NAME_CAP];
    snprintf(iname, sizeof iname, "mask.%s.index", nt->name);
    snprintf(vname, sizeof vname, "mask.%s.value", nt->name);
    int has_i = graft_st_has(f, iname), has_v = graft_st_has(f, vname);
    if (!has_i && !has_v) return GRAFT_OK;
    int64_t shape[GRAFT_ST_MAX_DIMS];
    int ndim = 0;
    int rc = graft_st_shape(f, has_i ? iname : vname, shape, &ndim);
    if (rc) return rc;
    if (ndim != 1 || !has_i || !has_v || (size_t)shape[0] > m->k - *at) {
        LOG_ERROR("%s: mask of tensor '%s' needs 1-D '%s' and '%s' of one length, %zu entries "
                  "in all", path, nt->name, iname, vname, m->k);
        return GRAFT_EFORMAT;
    }
    rc = graft_st_read_int(f, iname, shape, 1, m->index + *at);
    if (!rc) rc = graft_st_read(f, vname, shape, 1, m->value + *at);
    if (rc) return rc;
    int64_t prev = -1;
    for (int64_t j = 0; j < shape[0]; j++) {
        int64_t v = m->index[*at + j];
        if (v <= prev || (size_t)v >= nt->numel) {
            LOG_ERROR("%s: '%s'[%lld] = %lld is out of range [0, %zu) or not ascending", path,
                      iname, (long long)j, (long long)v, nt->numel);
            return GRAFT_EFORMAT;
        }
        prev = v;
        m->index[*at + j] = v + (int64_t)nt->offset;
    }
    *at += (size_t)shape[0];
    return GRAFT_OK;
}

/* Ascending by offset: the per-tensor parts in the order of their offsets. */
static int cmp_tensor_offset(const void *a, const void *b) {
    const graft_gpt2_tensor_t *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

int graft_mask_read(const graft_st_file_t *f, const graft_mask_layout_t *lay, graft_mask_t **out) {
    *out = NULL;
    size_t k = 0;
    int rc = check_header(f, lay, &k);
    if (rc) return rc;
    if (k > lay->num_params) {
        LOG_ERROR("%s: mask.k = %zu exceeds the trunk's %zu parameters", graft_st_path(f), k,
                  lay->num_params);
        return GRAFT_EFORMAT;
    }
    graft_gpt2_tensor_t *by_offset = graft_xmalloc((size_t)lay->n * sizeof *by_offset);
    memcpy(by_offset, lay->tensors, (size_t)lay->n * sizeof *by_offset);
    qsort(by_offset, (size_t)lay->n, sizeof *by_offset, cmp_tensor_offset);
    graft_mask_t *m = graft_mask_new(k);
    size_t at = 0;
    for (int t = 0; t < lay->n && !rc; t++) rc = read_part(f, &by_offset[t], m, &at);
    free(by_offset);
    if (!rc && at != k) {
        LOG_ERROR("%s: the mask tensors hold %zu entries but mask.k is %zu", graft_st_path(f), at,
                  k);
        rc = GRAFT_EFORMAT;
    }
    if (rc) {
        graft_mask_destroy(&m);
        return rc;
    }
    *out = m;
    return GRAFT_OK;
}
