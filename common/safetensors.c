/* safetensors.c — reading and writing safetensors checkpoints (see
 * safetensors.h for the format and the ownership rules).
 *
 * Reading loads the whole file into memory, parses the JSON header with
 * jansson and validates every entry up front, so that graft_st_read() only
 * has to find a tensor, compare shapes and convert. Writing builds the header
 * with jansson, pads it with spaces to a multiple of 8 bytes (as Hugging Face
 * does, so the data section starts aligned), lays the tensors out back to back
 * in the order given, renames a fsynced temporary file over the target and
 * fsyncs the folder (the rename is durable only then).
 */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c copies tensor data as-is and so needs a little-endian host"
#endif

/* A header longer than this is not a checkpoint (GPT-2 XL's is ~50 kB). */
#define ST_MAX_HEADER_LEN (100u * 1000u * 1000u)
#define ST_PREFIX "transformer."

static const struct {
    const char *name;
    size_t size;
    bool integer;
} st_dtypes[] = {[GRAFT_ST_F32] = {"F32", 4, false},  [GRAFT_ST_F16] = {"F16", 2, false},
                 [GRAFT_ST_BF16] = {"BF16", 2, false}, [GRAFT_ST_I32] = {"I32", 4, true},
                 [GRAFT_ST_I64] = {"I64", 8, true}};

typedef struct {
    const char *name; /* owned by the file's header JSON */
    graft_st_dtype_t dtype;
    int ndim;
    int64_t shape[GRAFT_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data section */
} st_entry_t;

struct graft_st_file {
    char *path;
    uint8_t *buf; /* the whole file */
    size_t size;
    const uint8_t *data; /* data section, inside buf */
    size_t data_size;
    json_t *header;
    json_t *meta; /* borrowed from header, may be NULL */
    st_entry_t *entries;
    int n_entries;
};

/* ---- small helpers -------------------------------------------------------- */

/* Element count of a shape; false on overflow or a negative dim. */
static bool shape_numel(const int64_t *shape, int ndim, uint64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return false;
    }
    *out = n;
    return true;
}

/* "[2, 3, 4]" into buf. */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

static float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, expo = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (expo == 0) {
        /* Zero or subnormal: mant * 2^-24 is exact in float. */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (expo == 31)
        bits = sign | 0x7f800000u | (mant << 13); /* inf, or NaN keeping its payload */
    else
        bits = sign | ((expo - 15 + 127) << 23) | (mant << 13);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* ---- writing -------------------------------------------------------------- */

/* Element count of a tensor that check_tensors() has accepted. */
static uint64_t tensor_numel(const graft_st_tensor_t *t) {
    uint64_t numel = 0;
    bool ok = shape_numel(t->shape, t->ndim, &numel);
    GRAFT_ASSERT(ok);
    return numel;
}

static size_t tensor_bytes(const graft_st_tensor_t *t) {
    return (size_t)tensor_numel(t) * st_dtypes[t->dtype].size;
}

static int check_tensor(const char *path, const graft_st_tensor_t *t, int i, uint64_t *total) {
    uint64_t numel;
    if (t->dtype != GRAFT_ST_F32 && t->dtype != GRAFT_ST_I32 && t->dtype != GRAFT_ST_I64) {
        LOG_ERROR("%s: refusing to write tensor %d ('%s'): graft writes F32, I32 and I64 only",
                  path, i, t->name ? t->name : "(null)");
        return GRAFT_EINVAL;
    }
    if (!t->name || t->ndim < 0 || t->ndim > GRAFT_ST_MAX_DIMS ||
        !shape_numel(t->shape, t->ndim, &numel) || numel > (uint64_t)INT64_MAX / 8 - *total / 8 ||
        (numel && !t->data)) {
        LOG_ERROR("%s: refusing to write tensor %d ('%s'): bad name, shape or data", path, i,
                  t->name ? t->name : "(null)");
        return GRAFT_EINVAL;
    }
    if (strcmp(t->name, "__metadata__") == 0) {
        LOG_ERROR("%s: '__metadata__' is reserved and cannot name a tensor", path);
        return GRAFT_EINVAL;
    }
    *total += numel * st_dtypes[t->dtype].size;
    return GRAFT_OK;
}

static int check_tensors(const char *path, const graft_st_tensor_t *t, int n) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        int rc = check_tensor(path, &t[i], i, &total);
        if (rc) return rc;
        for (int j = 0; j < i; j++) {
            if (strcmp(t[i].name, t[j].name) == 0) {
                LOG_ERROR("%s: refusing to write tensor '%s' twice", path, t[i].name);
                return GRAFT_EINVAL;
            }
        }
    }
    return GRAFT_OK;
}

/* NULL if a name, key or value is not valid UTF-8 (jansson refuses it). */
static json_t *build_header(const graft_st_tensor_t *t, int n, const char *const *keys,
                            const char *const *values, int n_meta) {
    json_t *root = json_object();
    int bad = 0;
    if (n_meta > 0) {
        json_t *meta = json_object();
        for (int i = 0; i < n_meta; i++) {
            json_t *v = json_string(values[i]);
            bad |= !v || !keys[i] || json_object_set_new(meta, keys[i], v) != 0;
        }
        bad |= json_object_set_new(root, "__metadata__", meta) != 0;
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        uint64_t end = offset + tensor_bytes(&t[i]);
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtypes[t[i].dtype].name,
                                  "shape", shape,
                                  "data_offsets", (json_int_t)offset, (json_int_t)end);
        bad |= json_object_set_new(root, t[i].name, entry) != 0;
        offset = end;
    }
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* Serialises the header, padded with spaces to a multiple of 8 bytes. */
static char *dump_header(json_t *root, size_t *len) {
    char *json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!json) return NULL;
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    char *out = graft_xmalloc(padded);
    memcpy(out, json, n);
    memset(out + n, ' ', padded - n);
    free(json);
    *len = padded;
    return out;
}

static int write_body(FILE *fp, const char *header, size_t header_len,
                      const graft_st_tensor_t *t, int n) {
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    if (fwrite(len_le, 1, 8, fp) != 8 || fwrite(header, 1, header_len, fp) != header_len)
        return -1;
    for (int i = 0; i < n; i++) {
        size_t bytes = tensor_bytes(&t[i]);
        if (bytes && fwrite(t[i].data, 1, bytes, fp) != bytes) return -1;
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) return -1;
    return 0;
}

int graft_st_write(const char *path, const graft_st_tensor_t *tensors, int n_tensors,
                   const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    GRAFT_ASSERT(path && n_tensors >= 0 && (n_tensors == 0 || tensors) && n_meta >= 0);
    GRAFT_ASSERT(n_meta == 0 || (meta_keys && meta_values));
    int rc = check_tensors(path, tensors, n_tensors);
    if (rc) return rc;

    json_t *root = build_header(tensors, n_tensors, meta_keys, meta_values, n_meta);
    size_t header_len = 0;
    char *header = root ? dump_header(root, &header_len) : NULL;
    json_decref(root);
    if (!header) {
        LOG_ERROR("%s: cannot build the header: a tensor name or metadata string is NULL or "
                  "not valid UTF-8", path);
        return GRAFT_EINVAL;
    }

    size_t tmp_cap = strlen(path) + 32;
    char *tmp = graft_xmalloc(tmp_cap);
    snprintf(tmp, tmp_cap, "%s.tmp.%ld", path, (long)getpid());
    rc = GRAFT_EIO;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        LOG_ERROR("%s: cannot create %s: %s", path, tmp, strerror(errno));
        goto out;
    }
    int werr = write_body(fp, header, header_len, tensors, n_tensors);
    int saved = errno;
    if (fclose(fp) != 0 && werr == 0) {
        werr = -1;
        saved = errno;
    }
    if (werr) {
        LOG_ERROR("%s: writing %s failed: %s", path, tmp, strerror(saved));
    } else if (rename(tmp, path) != 0) {
        saved = errno;
        LOG_ERROR("%s: cannot rename %s over it: %s", path, tmp, strerror(saved));
    } else if (graft_fsync_dir_of(path) != GRAFT_OK) {
        /* In place, but the rename may not survive a crash. */
        saved = errno;
        LOG_ERROR("%s: written, but its folder cannot be synced: %s", path, strerror(saved));
    } else {
        rc = GRAFT_OK;
    }
    if (rc) {
        remove(tmp);
        errno = saved; /* the caller may name the system's reason */
    }
out:
    free(tmp);
    free(header);
    return rc;
}

/* ---- reading -------------------------------------------------------------- */

static int parse_dtype(const graft_st_file_t *f, const char *name, json_t *entry,
                       graft_st_dtype_t *out) {
    const char *dtype = json_string_value(json_object_get(entry, "dtype"));
    if (!dtype) {
        LOG_ERROR("%s: tensor '%s' has no \"dtype\" string", f->path, name);
        return GRAFT_EFORMAT;
    }
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++) {
        if (strcmp(dtype, st_dtypes[i].name) == 0) {
            *out = (graft_st_dtype_t)i;
            return GRAFT_OK;
        }
    }
    LOG_ERROR("%s: tensor '%s' has dtype %s; graft reads only F32, F16, BF16, I32 and I64",
              f->path, name, dtype);
    return GRAFT_EFORMAT;
}

static int parse_shape(const graft_st_file_t *f, const char *name, json_t *entry,
                       st_entry_t *e) {
    json_t *shape = json_object_get(entry, "shape");
    if (!json_is_array(shape)) {
        LOG_ERROR("%s: tensor '%s' has no \"shape\" array", f->path, name);
        return GRAFT_EFORMAT;
    }
    if (json_array_size(shape) > GRAFT_ST_MAX_DIMS) {
        LOG_ERROR("%s: tensor '%s' has %zu dims; graft handles at most %d", f->path, name,
                  json_array_size(shape), GRAFT_ST_MAX_DIMS);
        return GRAFT_EFORMAT;
    }
    e->ndim = (int)json_array_size(shape);
    for (int d = 0; d < e->ndim; d++) {
        json_t *dim = json_array_get(shape, (size_t)d);
        if (!json_is_integer(dim) || json_integer_value(dim) < 0) {
            LOG_ERROR("%s: tensor '%s' has a bad dim %d (not a non-negative integer)", f->path,
                      name, d);
            return GRAFT_EFORMAT;
        }
        e->shape[d] = json_integer_value(dim);
    }
    return GRAFT_OK;
}

static int parse_offsets(const graft_st_file_t *f, const char *name, json_t *entry,
                         st_entry_t *e) {
    json_t *offs = json_object_get(entry, "data_offsets");
    json_t *b = json_array_get(offs, 0), *end = json_array_get(offs, 1);
    if (json_array_size(offs) != 2 || !json_is_integer(b) || !json_is_integer(end) ||
        json_integer_value(b) < 0 || json_integer_value(end) < json_integer_value(b)) {
        LOG_ERROR("%s: tensor '%s' needs \"data_offsets\": [begin, end] with 0 <= begin <= end",
                  f->path, name);
        return GRAFT_EFORMAT;
    }
    e->begin = (uint64_t)json_integer_value(b);
    e->end = (uint64_t)json_integer_value(end);
    if (e->end > f->data_size) {
        LOG_ERROR("%s: tensor '%s' ends at byte %llu but the data section has only %zu bytes "
                  "(truncated file?)",
                  f->path, name, (unsigned long long)e->end, f->data_size);
        return GRAFT_EFORMAT;
    }
    return GRAFT_OK;
}

static int parse_entry(const graft_st_file_t *f, const char *name, json_t *entry,
                       st_entry_t *e) {
    e->name = name;
    if (!json_is_object(entry)) {
        LOG_ERROR("%s: header entry '%s' is not an object", f->path, name);
        return GRAFT_EFORMAT;
    }
    int rc = parse_dtype(f, name, entry, &e->dtype);
    if (!rc) rc = parse_shape(f, name, entry, e);
    if (!rc) rc = parse_offsets(f, name, entry, e);
    if (rc) return rc;
    uint64_t numel, bytes;
    if (!shape_numel(e->shape, e->ndim, &numel) ||
        __builtin_mul_overflow(numel, (uint64_t)st_dtypes[e->dtype].size, &bytes) ||
        bytes != e->end - e->begin) {
        char s[128];
        LOG_ERROR("%s: tensor '%s' of dtype %s and shape %s does not fit its %llu data bytes",
                  f->path, name, st_dtypes[e->dtype].name, shape_str(e->shape, e->ndim, s, sizeof s),
                  (unsigned long long)(e->end - e->begin));
        return GRAFT_EFORMAT;
    }
    return GRAFT_OK;
}

static int parse_metadata(const graft_st_file_t *f, json_t *meta) {
    const char *key;
    json_t *value;
    if (!json_is_object(meta)) {
        LOG_ERROR("%s: \"__metadata__\" is not an object", f->path);
        return GRAFT_EFORMAT;
    }
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value)) {
            LOG_ERROR("%s: metadata value for '%s' is not a string", f->path, key);
            return GRAFT_EFORMAT;
        }
    }
    return GRAFT_OK;
}

static int parse_header(graft_st_file_t *f) {
    if (f->size < 8) {
        LOG_ERROR("%s: file is %zu bytes, too short for a safetensors header", f->path, f->size);
        return GRAFT_EFORMAT;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)f->buf[i] << (8 * i);
    if (n > ST_MAX_HEADER_LEN || n > f->size - 8) {
        LOG_ERROR("%s: header length %llu is beyond the file's %zu bytes or absurd; "
                  "not a safetensors file?",
                  f->path, (unsigned long long)n, f->size);
        return GRAFT_EFORMAT;
    }
    f->data = f->buf + 8 + n;
    f->data_size = f->size - 8 - (size_t)n;
    json_error_t err;
    f->header = json_loadb((const char *)f->buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!f->header) {
        LOG_ERROR("%s: header is not valid JSON: %s (at byte %d)", f->path, err.text, err.position);
        return GRAFT_EFORMAT;
    }
    if (!json_is_object(f->header)) {
        LOG_ERROR("%s: header is not a JSON object", f->path);
        return GRAFT_EFORMAT;
    }
    f->meta = json_object_get(f->header, "__metadata__");
    f->entries = graft_xcalloc(json_object_size(f->header), sizeof *f->entries);
    const char *key;
    json_t *value;
    json_object_foreach(f->header, key, value) {
        int rc = strcmp(key, "__metadata__") == 0
                     ? parse_metadata(f, value)
                     : parse_entry(f, key, value, &f->entries[f->n_entries++]);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const st_entry_t *x = *(st_entry_t *const *)a, *y = *(st_entry_t *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* The tensors must tile the data section exactly: no overlap, no gap, no tail. */
static int check_layout(const graft_st_file_t *f) {
    const st_entry_t **order = graft_xcalloc((size_t)f->n_entries, sizeof *order);
    for (int i = 0; i < f->n_entries; i++) order[i] = &f->entries[i];
    qsort(order, (size_t)f->n_entries, sizeof *order, cmp_by_offset);
    int rc = GRAFT_OK;
    uint64_t next = 0;
    for (int i = 0; i < f->n_entries && !rc; i++) {
        if (order[i]->begin < next) {
            LOG_ERROR("%s: tensors '%s' and '%s' overlap in the data section", f->path,
                      order[i - 1]->name, order[i]->name);
            rc = GRAFT_EFORMAT;
        } else if (order[i]->begin > next) {
            LOG_ERROR("%s: gap of %llu bytes in the data section before tensor '%s'", f->path,
                      (unsigned long long)(order[i]->begin - next), order[i]->name);
            rc = GRAFT_EFORMAT;
        }
        next = order[i]->end;
    }
    if (!rc && next != f->data_size) {
        LOG_ERROR("%s: %llu unused bytes after the last tensor in the data section", f->path,
                  (unsigned long long)(f->data_size - next));
        rc = GRAFT_EFORMAT;
    }
    free(order);
    return rc;
}

int graft_st_open(const char *path, graft_st_file_t **out) {
    GRAFT_ASSERT(path && out);
    *out = NULL;
    graft_st_file_t *f = graft_xcalloc(1, sizeof *f);
    f->path = graft_xstrdup(path);
    f->buf = (uint8_t *)graft_read_file(path, &f->size);
    int rc = f->buf ? GRAFT_OK : GRAFT_EIO;
    if (rc) LOG_ERROR("%s: cannot open: %s", path, strerror(errno));
    if (!rc) rc = parse_header(f);
    if (!rc) rc = check_layout(f);
    if (rc) {
        graft_st_close(&f);
        return rc;
    }
    *out = f;
    return GRAFT_OK;
}

void graft_st_close(graft_st_file_t **self_p) {
    GRAFT_ASSERT(self_p);
    graft_st_file_t *f = *self_p;
    if (!f) return;
    json_decref(f->header);
    free(f->entries);
    free(f->buf);
    free(f->path);
    free(f);
    *self_p = NULL;
}

int graft_st_count(const graft_st_file_t *f) { return f->n_entries; }

const char *graft_st_name(const graft_st_file_t *f, int i) {
    GRAFT_ASSERT(i >= 0 && i < f->n_entries);
    return f->entries[i].name;
}

const char *graft_st_path(const graft_st_file_t *f) { return f->path; }

const char *graft_st_meta(const graft_st_file_t *f, const char *key) {
    return json_string_value(json_object_get(f->meta, key));
}

static const struct {
    const char *format, *what;
} graft_formats[] = {
    {"graft-gpt2", "a trunk (of graft pretrain or graft export)"},
    {"graft-modules", "a modules checkpoint (of graft train, graft run or graft mpi)"},
    {"graft-mask", "a sparse grafting mask (of graft train --method graft)"},
};

static const char *format_what(const char *format) {
    for (size_t i = 0; i < sizeof graft_formats / sizeof graft_formats[0]; i++)
        if (format && !strcmp(format, graft_formats[i].format)) return graft_formats[i].what;
    return NULL;
}

int graft_st_expect_format(const graft_st_file_t *f, const char *want) {
    const char *format = graft_st_meta(f, "format");
    if (format && !strcmp(format, want)) return GRAFT_OK;
    const char *is = format_what(format), *wanted = format_what(want);
    GRAFT_ASSERT(wanted);
    if (is)
        LOG_ERROR("%s: is %s, not %s", f->path, is, wanted);
    else
        LOG_ERROR("%s: not %s (its metadata 'format' is '%s', not '%s')", f->path, wanted,
                  format ? format : "missing", want);
    return GRAFT_EFORMAT;
}

/* The entry called `name`, or else "transformer.<name>"; NULL if neither. */
static const st_entry_t *find_entry(const graft_st_file_t *f, const char *name) {
    const size_t plen = strlen(ST_PREFIX);
    const st_entry_t *prefixed = NULL;
    for (int i = 0; i < f->n_entries; i++) {
        const char *n = f->entries[i].name;
        if (strcmp(n, name) == 0) return &f->entries[i];
        if (!prefixed && strncmp(n, ST_PREFIX, plen) == 0 && strcmp(n + plen, name) == 0)
            prefixed = &f->entries[i];
    }
    return prefixed;
}

int graft_st_has(const graft_st_file_t *f, const char *name) {
    return find_entry(f, name) != NULL;
}

static bool same_shape(const st_entry_t *e, const int64_t *shape, int ndim) {
    if (e->ndim != ndim) return false;
    for (int d = 0; d < ndim; d++)
        if (e->shape[d] != shape[d]) return false;
    return true;
}

/* The entry `name` if it exists, has the given shape and is of the wanted
 * kind (integer or float); else logs why not and returns NULL with *rc set. */
static const st_entry_t *checked_entry(const graft_st_file_t *f, const char *name,
                                       const int64_t *shape, int ndim, bool integer, int *rc) {
    GRAFT_ASSERT(f && name && ndim >= 0 && (ndim == 0 || shape));
    const st_entry_t *e = find_entry(f, name);
    *rc = GRAFT_ESHAPE;
    if (!e) {
        LOG_ERROR("%s: missing tensor '%s' (nor is there '" ST_PREFIX "%s')", f->path, name, name);
        return NULL;
    }
    if (!same_shape(e, shape, ndim)) {
        char have[128], want[128];
        LOG_ERROR("%s: tensor '%s' has shape %s but the model expects %s", f->path, e->name,
                  shape_str(e->shape, e->ndim, have, sizeof have),
                  shape_str(shape, ndim, want, sizeof want));
        return NULL;
    }
    if (st_dtypes[e->dtype].integer != integer) {
        LOG_ERROR("%s: tensor '%s' has dtype %s where %s are expected", f->path, e->name,
                  st_dtypes[e->dtype].name, integer ? "integers (I32 or I64)" : "floats");
        *rc = GRAFT_EFORMAT;
        return NULL;
    }
    *rc = GRAFT_OK;
    return e;
}

int graft_st_shape(const graft_st_file_t *f, const char *name, int64_t *shape, int *ndim) {
    const st_entry_t *e = find_entry(f, name);
    if (!e) {
        LOG_ERROR("%s: missing tensor '%s' (nor is there '" ST_PREFIX "%s')", f->path, name, name);
        return GRAFT_ESHAPE;
    }
    *ndim = e->ndim;
    memcpy(shape, e->shape, sizeof e->shape);
    return GRAFT_OK;
}

int graft_st_read_int(const graft_st_file_t *f, const char *name, const int64_t *shape, int ndim,
                      int64_t *dst) {
    int rc;
    const st_entry_t *e = checked_entry(f, name, shape, ndim, true, &rc);
    if (!e) return rc;
    const uint8_t *src = f->data + e->begin;
    size_t n = (size_t)(e->end - e->begin) / st_dtypes[e->dtype].size;
    GRAFT_ASSERT(n == 0 || dst);
    if (e->dtype == GRAFT_ST_I64) {
        if (n) memcpy(dst, src, n * sizeof(int64_t));
    } else {
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, src + 4 * i, sizeof v);
            dst[i] = v;
        }
    }
    return GRAFT_OK;
}

int graft_st_read(const graft_st_file_t *f, const char *name, const int64_t *shape, int ndim,
                  float *dst) {
    int rc;
    const st_entry_t *e = checked_entry(f, name, shape, ndim, false, &rc);
    if (!e) return rc;
    const uint8_t *src = f->data + e->begin;
    size_t n = (size_t)(e->end - e->begin) / st_dtypes[e->dtype].size;
    GRAFT_ASSERT(n == 0 || dst);
    switch (e->dtype) {
    case GRAFT_ST_F32:
        if (n) memcpy(dst, src, n * sizeof(float));
        break;
    case GRAFT_ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_float(load_u16(src + 2 * i));
        break;
    case GRAFT_ST_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_float(load_u16(src + 2 * i));
        break;
    default:
        GRAFT_ASSERT(!"integer dtype reached the float reader");
    }
    return GRAFT_OK;
}
