/* test_safetensors.c — safetensors checkpoints: bit-exact round trips,
 * metadata, F16/BF16 decoding against hand-made files, and refusal of every
 * kind of malformed file with the right error code and a log line that names
 * the file and the problem. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "rng.h"
#include "safetensors.h"

static char g_dir[64];
static char g_log[128]; /* where capture_begin() sends stderr */

#define PATH_LEN 512

/* buf[PATH_LEN] = the temp dir's file `name`; returns buf. */
static const char *tmp_path(char *buf, const char *name) {
    snprintf(buf, PATH_LEN, "%s/%s", g_dir, name);
    return buf;
}

static int group_setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/graft_test_st_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_log, sizeof g_log, "%s/stderr.log", g_dir);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (!d) return -1;
    struct dirent *de;
    char path[PATH_LEN];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (unlink(tmp_path(path, de->d_name)) != 0) rmdir(path);
    }
    closedir(d);
    return rmdir(g_dir);
}

/* Number of entries in the temp dir whose name contains `needle`. */
static int count_files_with(const char *needle) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += strstr(de->d_name, needle) != NULL;
    closedir(d);
    return n;
}

static void write_bytes(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* Reads the file into buf (cap bytes); returns its size. */
static size_t read_bytes(const char *path, uint8_t *buf, size_t cap) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t size = fread(buf, 1, cap, fp);
    fclose(fp);
    return size;
}

/* The little-endian header length at the start of a file's bytes. */
static uint64_t header_len(const uint8_t *buf) {
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)buf[i] << (8 * i);
    return n;
}

/* A safetensors file from a header text and raw data (no padding, so that
 * odd header lengths are exercised too). */
static void write_raw(const char *path, const char *header, const void *data, size_t data_len) {
    size_t n = strlen(header);
    uint8_t *buf = malloc(8 + n + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    if (data_len) memcpy(buf + 8 + n, data, data_len);
    write_bytes(path, buf, 8 + n + data_len);
    free(buf);
}

static char *read_text(const char *path) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = calloc(1, 1 << 16);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

/* Captures stderr (where graft logs) into a file between the two calls. */
static int g_saved_stderr = -1;

static void capture_begin(void) {
    fflush(stderr);
    g_saved_stderr = dup(STDERR_FILENO);
    int fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(g_saved_stderr >= 0 && fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Returns the captured text (caller frees) and echoes it to the real stderr. */
static char *capture_end(void) {
    fflush(stderr);
    dup2(g_saved_stderr, STDERR_FILENO);
    close(g_saved_stderr);
    char *log = read_text(g_log);
    unlink(g_log);
    fprintf(stderr, "%s", log);
    return log;
}

static void assert_contains(const char *text, const char *needle) {
    if (!strstr(text, needle)) {
        print_error("the log above lacks \"%s\"\n", needle);
        fail();
    }
}

/* graft_st_open must fail with want_rc, return no object, and log a line
 * naming the path and containing `needle`. */
static void expect_open_refused(const char *path, int want_rc, const char *needle) {
    graft_st_file_t *f = (graft_st_file_t *)&f; /* not NULL, to see it cleared */
    capture_begin();
    int rc = graft_st_open(path, &f);
    char *log = capture_end();
    assert_int_equal(rc, want_rc);
    assert_null(f);
    assert_contains(log, path);
    assert_contains(log, needle);
    free(log);
}

static void expect_read_refused(const graft_st_file_t *f, const char *name, const int64_t *shape,
                                int ndim, float *dst, const char *needle) {
    capture_begin();
    int rc = graft_st_read(f, name, shape, ndim, dst);
    char *log = capture_end();
    assert_int_equal(rc, GRAFT_ESHAPE);
    assert_contains(log, graft_st_path(f));
    assert_contains(log, needle);
    free(log);
}

/* ---- round trips ------------------------------------------------------------ */

static float bits_to_float(uint32_t bits) {
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static void fill_tricky(float *x, size_t n, uint64_t seed) {
    graft_rng_t rng;
    graft_rng_seed(&rng, seed, 1);
    for (size_t i = 0; i < n; i++) x[i] = graft_rng_normal(&rng) * 3.0f;
    const float specials[] = {-0.0f, 0.0f, FLT_TRUE_MIN, -FLT_TRUE_MIN, 1e-40f, FLT_MIN,
                              FLT_MAX, -FLT_MAX, 1e30f, -3.4e38f, INFINITY, -INFINITY,
                              bits_to_float(0x7fc00123u)};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && i < n; i++)
        x[(i * 11) % n] = specials[i]; /* 11 is coprime to every n used */
}

static void test_roundtrip_bit_exact(void **state) {
    (void)state;
    float a[3 * 5], b[7], c[1], d[2 * 1 * 3 * 2];
    fill_tricky(a, 15, 1);
    fill_tricky(b, 7, 2);
    c[0] = -0.0f;
    fill_tricky(d, 12, 3);
    const graft_st_tensor_t t[] = {
        {"wte.weight", 2, {3, 5}, a, GRAFT_ST_F32},
        {"h.0.ln_1.bias", 1, {7}, b, GRAFT_ST_F32},
        {"scalar", 0, {0}, c, GRAFT_ST_F32},
        {"h.0.attn.c_attn.weight", 4, {2, 1, 3, 2}, d, GRAFT_ST_F32},
        {"empty", 2, {0, 4}, NULL, GRAFT_ST_F32},
    };
    char path[PATH_LEN];
    tmp_path(path, "rt.safetensors");
    assert_int_equal(graft_st_write(path, t, 5, NULL, NULL, 0), GRAFT_OK);
    assert_int_equal(count_files_with(".tmp"), 0);

    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_string_equal(graft_st_path(f), path);
    assert_int_equal(graft_st_count(f), 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(graft_st_name(f, i), t[i].name);
        assert_true(graft_st_has(f, t[i].name));
    }
    assert_false(graft_st_has(f, "wpe.weight"));
    assert_null(graft_st_meta(f, "anything"));

    float out[32];
    for (int i = 0; i < 4; i++) {
        uint64_t n = 1;
        for (int k = 0; k < t[i].ndim; k++) n *= (uint64_t)t[i].shape[k];
        memset(out, 0xAB, sizeof out);
        assert_int_equal(graft_st_read(f, t[i].name, t[i].shape, t[i].ndim, out), GRAFT_OK);
        assert_memory_equal(out, t[i].data, n * sizeof(float));
        assert_int_equal(((uint8_t *)out)[n * sizeof(float)], 0xAB); /* no overrun */
    }
    assert_int_equal(graft_st_read(f, "empty", t[4].shape, 2, NULL), GRAFT_OK);
    graft_st_close(&f);
    assert_null(f);
    graft_st_close(&f); /* closing NULL is a no-op */
}

/* The layout on disk: LE header length, header padded to a multiple of 8
 * with spaces, tensors back to back in the given order. */
static void test_file_layout(void **state) {
    (void)state;
    const float a[3] = {1, 2, 3}, b[2] = {4, 5};
    const graft_st_tensor_t t[] = {{"zz", 1, {3}, a, GRAFT_ST_F32}, {"aa", 1, {2}, b, GRAFT_ST_F32}};
    char path[PATH_LEN];
    tmp_path(path, "layout.safetensors");
    const char *key = "k", *val = "v";
    assert_int_equal(graft_st_write(path, t, 2, &key, &val, 1), GRAFT_OK);

    uint8_t buf[1024];
    size_t size = read_bytes(path, buf, sizeof buf);
    uint64_t n = header_len(buf);
    assert_int_equal(n % 8, 0);
    assert_int_equal(size, 8 + n + 5 * sizeof(float));
    assert_memory_equal(buf + 8 + n, a, sizeof a);
    assert_memory_equal(buf + 8 + n + sizeof a, b, sizeof b);
    assert_int_equal(buf[8], '{');
    assert_non_null(memmem(buf + 8, n, "\"zz\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}", 52));
    assert_non_null(memmem(buf + 8, n, "\"data_offsets\":[12,20]", 22));
}

/* Integer tensors (the indices of sparse masks) next to float ones: I32 and
 * I64 round trip through graft_st_read_int, and each reader refuses the other
 * kind with an error that names the tensor and its dtype. */
static void test_integer_tensors(void **state) {
    (void)state;
    const int32_t i32[4] = {0, -1, INT32_MAX, INT32_MIN};
    const int64_t i64[3] = {INT64_MAX, -7, (int64_t)1 << 40};
    const float x[2] = {1.5f, -2.0f};
    const graft_st_tensor_t t[] = {
        {"idx32", 1, {4}, i32, GRAFT_ST_I32},
        {"w", 1, {2}, x, GRAFT_ST_F32},
        {"idx64", 2, {3, 1}, i64, GRAFT_ST_I64},
    };
    char path[PATH_LEN];
    tmp_path(path, "ints.safetensors");
    assert_int_equal(graft_st_write(path, t, 3, NULL, NULL, 0), GRAFT_OK);

    uint8_t buf[1024];
    size_t size = read_bytes(path, buf, sizeof buf);
    uint64_t n = header_len(buf);
    assert_int_equal(size, 8 + n + sizeof i32 + sizeof x + sizeof i64);
    const char *e32 = "\"idx32\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}";
    const char *e64 = "\"idx64\":{\"dtype\":\"I64\",\"shape\":[3,1],\"data_offsets\":[24,48]}";
    assert_non_null(memmem(buf + 8, n, e32, strlen(e32)));
    assert_non_null(memmem(buf + 8, n, e64, strlen(e64)));

    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    int64_t got[4], shape[GRAFT_ST_MAX_DIMS];
    int ndim = -1;
    assert_int_equal(graft_st_shape(f, "idx64", shape, &ndim), GRAFT_OK);
    assert_int_equal(ndim, 2);
    assert_int_equal(shape[0], 3);
    assert_int_equal(shape[1], 1);
    assert_int_equal(graft_st_read_int(f, "idx32", t[0].shape, 1, got), GRAFT_OK);
    for (int i = 0; i < 4; i++) assert_int_equal(got[i], i32[i]);
    assert_int_equal(graft_st_read_int(f, "idx64", t[2].shape, 2, got), GRAFT_OK);
    assert_memory_equal(got, i64, sizeof i64);
    float fx[2];
    assert_int_equal(graft_st_read(f, "w", t[1].shape, 1, fx), GRAFT_OK);
    assert_memory_equal(fx, x, sizeof x);

    capture_begin();
    int rc = graft_st_read(f, "idx32", t[0].shape, 1, fx);
    char *log = capture_end();
    assert_int_equal(rc, GRAFT_EFORMAT);
    assert_contains(log, path);
    assert_contains(log, "tensor 'idx32' has dtype I32 where floats are expected");
    free(log);
    capture_begin();
    rc = graft_st_read_int(f, "w", t[1].shape, 1, got);
    log = capture_end();
    assert_int_equal(rc, GRAFT_EFORMAT);
    assert_contains(log, "tensor 'w' has dtype F32 where integers (I32 or I64) are expected");
    free(log);
    capture_begin();
    rc = graft_st_shape(f, "nope", shape, &ndim);
    log = capture_end();
    assert_int_equal(rc, GRAFT_ESHAPE);
    assert_contains(log, "missing tensor 'nope'");
    free(log);
    graft_st_close(&f);

    /* graft writes no half-precision tensors. */
    const graft_st_tensor_t half = {"h", 1, {1}, x, GRAFT_ST_F16};
    capture_begin();
    rc = graft_st_write(path, &half, 1, NULL, NULL, 0);
    log = capture_end();
    assert_int_equal(rc, GRAFT_EINVAL);
    assert_contains(log, "graft writes F32, I32 and I64 only");
    free(log);
}

static void test_metadata_roundtrip(void **state) {
    (void)state;
    const float x[2] = {0.5f, -1.5f};
    const graft_st_tensor_t t[] = {{"x", 1, {2}, x, GRAFT_ST_F32}};
    const char *keys[] = {"format", "graft.preset", "note"};
    const char *vals[] = {"pt", "tiny", "quotes \" and \\ and ünïcode"};
    char path[PATH_LEN];
    tmp_path(path, "meta.safetensors");
    /* Write twice: the second, atomic write replaces the first. */
    assert_int_equal(graft_st_write(path, t, 1, keys, vals, 1), GRAFT_OK);
    assert_int_equal(graft_st_write(path, t, 1, keys, vals, 3), GRAFT_OK);
    assert_int_equal(count_files_with(".tmp"), 0);

    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_int_equal(graft_st_count(f), 1);
    for (int i = 0; i < 3; i++) assert_string_equal(graft_st_meta(f, keys[i]), vals[i]);
    assert_null(graft_st_meta(f, "missing"));
    graft_st_close(&f);
}

/* ---- F16 and BF16 ---------------------------------------------------------- */

static void read_halves(const char *name, const char *dtype, const uint16_t *h, int n, float *out) {
    char header[256];
    snprintf(header, sizeof header,
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"t\":{\"dtype\":\"%s\",\"shape\":[%d],\"data_offsets\":[0,%d]}}",
             dtype, n, 2 * n);
    uint8_t data[64];
    for (int i = 0; i < n; i++) {
        data[2 * i] = (uint8_t)(h[i] & 0xff);
        data[2 * i + 1] = (uint8_t)(h[i] >> 8);
    }
    char path[PATH_LEN];
    tmp_path(path, name);
    write_raw(path, header, data, (size_t)(2 * n));
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    int64_t shape[1] = {n};
    assert_int_equal(graft_st_read(f, "t", shape, 1, out), GRAFT_OK);
    graft_st_close(&f);
}

static void assert_same_bits(const float *got, const float *want, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t g, w;
        memcpy(&g, &got[i], 4);
        memcpy(&w, &want[i], 4);
        if (g != w) fail_msg("element %d: got %a (0x%08x), want %a (0x%08x)", i, got[i], g, want[i], w);
    }
}

static void test_read_f16(void **state) {
    (void)state;
    const uint16_t h[] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x8000,
                          0x7C00, 0xFC00, 0x3555, 0x8001, 0x0000};
    const float want[] = {1.0f, -2.5f, 65504.0f, 0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f, -0.0f,
                          INFINITY, -INFINITY, 0.333251953125f, -0x1p-24f, 0.0f};
    const int n = (int)(sizeof h / sizeof h[0]);
    float out[16];
    read_halves("f16.safetensors", "F16", h, n, out);
    assert_same_bits(out, want, n);

    const uint16_t nan_h[] = {0x7E00, 0xFC01};
    read_halves("f16nan.safetensors", "F16", nan_h, 2, out);
    assert_true(isnan(out[0]) && isnan(out[1]));
    assert_true(signbit(out[1]));
}

static void test_read_bf16(void **state) {
    (void)state;
    const uint16_t h[] = {0x3F80, 0xC020, 0x7F7F, 0x0001, 0x8000, 0x7F80, 0xFF80, 0x4049};
    const float want[] = {1.0f, -2.5f, 0x1.fep127f, 0x1p-133f, -0.0f, INFINITY, -INFINITY,
                          3.140625f};
    const int n = (int)(sizeof h / sizeof h[0]);
    float out[16];
    read_halves("bf16.safetensors", "BF16", h, n, out);
    assert_same_bits(out, want, n);

    const uint16_t nan_h[] = {0x7FC0};
    read_halves("bf16nan.safetensors", "BF16", nan_h, 1, out);
    assert_true(isnan(out[0]));
}

/* ---- names and shapes when reading ------------------------------------------- */

static void test_transformer_prefix(void **state) {
    (void)state;
    const float w[4] = {1, 2, 3, 4}, other[4] = {9, 9, 9, 9};
    const graft_st_tensor_t t[] = {{"transformer.wte.weight", 2, {2, 2}, w, GRAFT_ST_F32},
                                   {"transformer.h.0.ln_1.weight", 1, {4}, other, GRAFT_ST_F32},
                                   {"h.0.ln_1.weight", 1, {4}, w, GRAFT_ST_F32}};
    char path[PATH_LEN];
    tmp_path(path, "prefix.safetensors");
    assert_int_equal(graft_st_write(path, t, 3, NULL, NULL, 0), GRAFT_OK);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    assert_true(graft_st_has(f, "wte.weight"));
    assert_true(graft_st_has(f, "transformer.wte.weight"));
    assert_false(graft_st_has(f, "wpe.weight"));
    float out[4];
    int64_t s22[2] = {2, 2}, s4[1] = {4};
    assert_int_equal(graft_st_read(f, "wte.weight", s22, 2, out), GRAFT_OK);
    assert_memory_equal(out, w, sizeof w);
    /* An exact name wins over a prefixed one. */
    assert_int_equal(graft_st_read(f, "h.0.ln_1.weight", s4, 1, out), GRAFT_OK);
    assert_memory_equal(out, w, sizeof w);
    graft_st_close(&f);
}

static void test_missing_and_wrong_shape(void **state) {
    (void)state;
    const float x[6] = {1, 2, 3, 4, 5, 6};
    const graft_st_tensor_t t[] = {{"h.0.ln_1.weight", 2, {2, 3}, x, GRAFT_ST_F32}};
    char path[PATH_LEN];
    tmp_path(path, "shape.safetensors");
    assert_int_equal(graft_st_write(path, t, 1, NULL, NULL, 0), GRAFT_OK);
    graft_st_file_t *f = NULL;
    assert_int_equal(graft_st_open(path, &f), GRAFT_OK);
    float out[8] = {0};
    int64_t s32[2] = {3, 2}, s6[1] = {6}, s23[2] = {2, 3}, s231[3] = {2, 3, 1};
    expect_read_refused(f, "h.0.ln_2.weight", s23, 2, out, "missing tensor 'h.0.ln_2.weight'");
    expect_read_refused(f, "h.0.ln_1.weight", s32, 2, out,
                        "tensor 'h.0.ln_1.weight' has shape [2, 3] but the model expects [3, 2]");
    expect_read_refused(f, "h.0.ln_1.weight", s6, 1, out, "has shape [2, 3] but the model expects [6]");
    expect_read_refused(f, "h.0.ln_1.weight", s231, 3, out, "expects [2, 3, 1]");
    expect_read_refused(f, "h.0.ln_1.weight", s23, 1, out, "expects [2]"); /* a prefix is not enough */
    for (int i = 0; i < 8; i++) assert_true(out[i] == 0.0f); /* refusals write nothing */
    assert_int_equal(graft_st_read(f, "h.0.ln_1.weight", s23, 2, out), GRAFT_OK);
    assert_memory_equal(out, x, sizeof x);
    graft_st_close(&f);
}

/* ---- malformed files ------------------------------------------------------------ */

static void test_refuse_short_and_bad_length(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "bad.safetensors");
    char missing[PATH_LEN];
    tmp_path(missing, "does-not-exist.safetensors");
    expect_open_refused(missing, GRAFT_EIO, "cannot open");

    write_bytes(path, "\x02\x00\x00", 3);
    expect_open_refused(path, GRAFT_EFORMAT, "too short");

    /* Header length 64 but only 10 header bytes follow. */
    uint8_t buf[18] = {64, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    write_bytes(path, buf, sizeof buf);
    expect_open_refused(path, GRAFT_EFORMAT, "header length 64");

    /* An absurd header length: 2^40. */
    uint8_t huge[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    write_bytes(path, huge, sizeof huge);
    expect_open_refused(path, GRAFT_EFORMAT, "absurd");
}

static void test_refuse_bad_header(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "bad.safetensors");
    const float d[2] = {1, 2};
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "not valid JSON");

    write_raw(path, "[1, 2]", NULL, 0);
    expect_open_refused(path, GRAFT_EFORMAT, "not a JSON object");

    write_raw(path, "{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "'x' has no \"dtype\"");

    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "'x' has no \"shape\"");

    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "data_offsets");

    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "data_offsets");

    write_raw(path, "{\"x\":[1]}", NULL, 0);
    expect_open_refused(path, GRAFT_EFORMAT, "not an object");

    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "not valid JSON"); /* duplicate key */

    write_raw(path, "{\"__metadata__\":{\"n\":3},"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "metadata value for 'n' is not a string");

    write_raw(path, "{\"__metadata__\":[\"a\"],"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "\"__metadata__\" is not an object");
}

static void test_refuse_unknown_dtype(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "bad.safetensors");
    const uint8_t d[16] = {0};
    write_raw(path, "{\"h.0.mlp.c_fc.weight\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
              d, 16);
    expect_open_refused(path, GRAFT_EFORMAT, "tensor 'h.0.mlp.c_fc.weight' has dtype F64");
    write_raw(path, "{\"q\":{\"dtype\":\"I8\",\"shape\":[16],\"data_offsets\":[0,16]}}", d, 16);
    expect_open_refused(path, GRAFT_EFORMAT, "tensor 'q' has dtype I8");
}

static void test_refuse_bad_shape(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "bad.safetensors");
    const uint8_t d[64] = {0};
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "bad dim 0");
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2, 1.5],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "bad dim 1");
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "5 dims");
    /* Shape says 3 floats (12 bytes), offsets span 8. */
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "does not fit its 8 data bytes");
    /* Same for a half type: 4 halves are 8 bytes, not 16. */
    write_raw(path, "{\"x\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 16);
    expect_open_refused(path, GRAFT_EFORMAT, "does not fit its 16 data bytes");
    /* A shape whose element count overflows 64 bits. */
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
                    "\"data_offsets\":[0,8]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "does not fit");
}

static void test_refuse_offsets(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "bad.safetensors");
    const uint8_t d[64] = {0};
    /* Truncated: the tensor wants 16 bytes, only 12 are there. */
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 12);
    expect_open_refused(path, GRAFT_EFORMAT, "truncated");
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "0 <= begin <= end");
    write_raw(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", d, 8);
    expect_open_refused(path, GRAFT_EFORMAT, "0 <= begin <= end");
    write_raw(path,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
              d, 16);
    expect_open_refused(path, GRAFT_EFORMAT, "tensors 'a' and 'b' overlap");
    write_raw(path,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
              d, 20);
    expect_open_refused(path, GRAFT_EFORMAT, "gap of 4 bytes");
    write_raw(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 12);
    expect_open_refused(path, GRAFT_EFORMAT, "4 unused bytes");
}

/* A real checkpoint cut short, as after a crash of a non-atomic writer. */
static void test_refuse_truncated_checkpoint(void **state) {
    (void)state;
    float x[64];
    fill_tricky(x, 64, 7);
    const graft_st_tensor_t t[] = {{"a", 1, {32}, x, GRAFT_ST_F32}, {"b", 2, {8, 4}, x + 32, GRAFT_ST_F32}};
    char path[PATH_LEN];
    tmp_path(path, "trunc.safetensors");
    assert_int_equal(graft_st_write(path, t, 2, NULL, NULL, 0), GRAFT_OK);
    uint8_t buf[2048];
    size_t size = read_bytes(path, buf, sizeof buf);
    write_bytes(path, buf, size - 1);
    expect_open_refused(path, GRAFT_EFORMAT, "tensor 'b' ends at byte 256");
}

/* ---- durability ---------------------------------------------------------------- */

/* graft_core is a static library, so its fsync calls land here: a
 * directory's is counted, with whether the file named g_sync_target was in
 * it by then (the rename comes first). */
static const char *g_sync_target;
static int g_dir_syncs, g_dir_syncs_after_rename;
static ino_t g_synced_dir;

int fsync(int fd) {
    struct stat st, target;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        g_dir_syncs++;
        g_synced_dir = st.st_ino;
        g_dir_syncs_after_rename += g_sync_target && stat(g_sync_target, &target) == 0;
    }
    return fdatasync(fd);
}

/* A checkpoint's rename is made durable: its folder is fsynced after it. */
static void test_write_syncs_folder(void **state) {
    (void)state;
    char path[PATH_LEN];
    g_sync_target = tmp_path(path, "durable.safetensors");
    g_dir_syncs = g_dir_syncs_after_rename = 0;
    const float x[2] = {1, 2};
    const graft_st_tensor_t ok[] = {{"a", 1, {2}, x, GRAFT_ST_F32}};
    assert_int_equal(graft_st_write(path, ok, 1, NULL, NULL, 0), GRAFT_OK);
    struct stat dir;
    assert_int_equal(stat(g_dir, &dir), 0);
    assert_int_equal(g_dir_syncs, 1);
    assert_int_equal(g_dir_syncs_after_rename, 1);
    assert_true(g_synced_dir == dir.st_ino);
    g_sync_target = NULL;
}

/* ---- refused writes ------------------------------------------------------------- */

static void test_refuse_bad_writes(void **state) {
    (void)state;
    char path[PATH_LEN];
    tmp_path(path, "w.safetensors");
    const float x[2] = {1, 2};
    const graft_st_tensor_t dup[] = {{"a", 1, {2}, x, GRAFT_ST_F32}, {"a", 1, {2}, x, GRAFT_ST_F32}};
    assert_int_equal(graft_st_write(path, dup, 2, NULL, NULL, 0), GRAFT_EINVAL);
    const graft_st_tensor_t neg[] = {{"a", 1, {-2}, x, GRAFT_ST_F32}};
    assert_int_equal(graft_st_write(path, neg, 1, NULL, NULL, 0), GRAFT_EINVAL);
    const graft_st_tensor_t nodata[] = {{"a", 1, {2}, NULL, GRAFT_ST_F32}};
    assert_int_equal(graft_st_write(path, nodata, 1, NULL, NULL, 0), GRAFT_EINVAL);
    const char *key = "k", *bad_utf8 = "\xff\xfe";
    const graft_st_tensor_t ok[] = {{"a", 1, {2}, x, GRAFT_ST_F32}};
    assert_int_equal(graft_st_write(path, ok, 1, &key, &bad_utf8, 1), GRAFT_EINVAL);
    assert_int_equal(count_files_with("w.safetensors"), 0);

    snprintf(path, sizeof path, "%s/no-such-dir/w.safetensors", g_dir);
    assert_int_equal(graft_st_write(path, ok, 1, NULL, NULL, 0), GRAFT_EIO);

    /* The temporary file is fully written, then rename() over a directory
     * fails: the temporary must be removed. */
    assert_int_equal(mkdir(tmp_path(path, "isdir.safetensors"), 0700), 0);
    assert_int_equal(graft_st_write(path, ok, 1, NULL, NULL, 0), GRAFT_EIO);
    assert_int_equal(count_files_with(".tmp"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_bit_exact),
        cmocka_unit_test(test_file_layout),
        cmocka_unit_test(test_metadata_roundtrip),
        cmocka_unit_test(test_integer_tensors),
        cmocka_unit_test(test_read_f16),
        cmocka_unit_test(test_read_bf16),
        cmocka_unit_test(test_transformer_prefix),
        cmocka_unit_test(test_missing_and_wrong_shape),
        cmocka_unit_test(test_refuse_short_and_bad_length),
        cmocka_unit_test(test_refuse_bad_header),
        cmocka_unit_test(test_refuse_unknown_dtype),
        cmocka_unit_test(test_refuse_bad_shape),
        cmocka_unit_test(test_refuse_offsets),
        cmocka_unit_test(test_refuse_truncated_checkpoint),
        cmocka_unit_test(test_refuse_bad_writes),
        cmocka_unit_test(test_write_syncs_folder),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
