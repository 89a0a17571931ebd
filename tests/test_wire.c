/* test_wire.c — every message type round trips with exact values, and every
 * kind of bad input is refused with the right code and a reason. Malformed
 * bytes that graft_wire_encode() cannot produce are written by hand with a
 * tiny protobuf writer, which also checks the schema's field numbers. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "bf16.h"
#include "rng.h"
#include "wire.h"

#define RUN 0x1234abcd5678ef01ull

/* ---- helpers ------------------------------------------------------------ */

static graft_wire_tensor_t dense(char *name, int ndim, const int64_t *shape, float *data) {
    graft_wire_tensor_t t = {.name = name, .ndim = ndim, .data = data};
    t.numel = 1;
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d], t.numel *= (size_t)shape[d];
    return t;
}

/* Encodes m, decodes it with opts into *out; returns the decode code. */
static int roundtrip(const graft_msg_t *m, graft_wire_dtype_t dtype, const graft_wire_opts_t *o,
                     graft_msg_t *out, char *why, size_t why_len) {
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(m, dtype, &buf, &len), GRAFT_OK);
    int rc = graft_wire_decode(buf, len, o, out, why, why_len);
    free(buf);
    return rc;
}

static void assert_tensor_equal(const graft_wire_tensor_t *a, const graft_wire_tensor_t *b) {
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->ndim, b->ndim);
    for (int d = 0; d < a->ndim; d++) assert_int_equal(a->shape[d], b->shape[d]);
    assert_int_equal(a->numel, b->numel);
    assert_int_equal(a->sparse, b->sparse);
    size_t count = a->sparse ? a->nnz : a->numel;
    if (a->sparse) {
        assert_int_equal(a->nnz, b->nnz);
        assert_memory_equal(a->indices, b->indices, a->nnz * sizeof(uint32_t));
    }
    assert_memory_equal(a->data, b->data, count * sizeof(float));
}

/* A rejected decode: the code, a non-empty reason holding `needle`, and an
 * output with nothing left to free. */
static void expect_reject(const uint8_t *buf, size_t len, const graft_wire_opts_t *o, int code,
                          const char *needle) {
    graft_msg_t m;
    char why[256];
    int rc = graft_wire_decode(buf, len, o, &m, why, sizeof why);
    if (rc != code) fail_msg("decode gave %d (%s), expected %d", rc, why, code);
    assert_true(strlen(why) > 0);
    if (needle && !strstr(why, needle)) fail_msg("reason '%s' does not mention '%s'", why, needle);
    assert_int_equal(m.type, GRAFT_MSG_NONE);
}

static void expect_reject_msg(const graft_msg_t *msg, graft_wire_dtype_t dtype,
                              const graft_wire_opts_t *o, int code, const char *needle) {
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(msg, dtype, &buf, &len), GRAFT_OK);
    expect_reject(buf, len, o, code, needle);
    free(buf);
}

/* ---- round trips -------------------------------------------------------- */

static void test_hello_roundtrip(void **state) {
    (void)state;
    graft_wire_shard_t shards[2] = {
        {.task = "langid", .kind = GRAFT_KIND_CLASSIFICATION, .train_examples = 90000},
        {.task = "wordnet_gloss", .kind = GRAFT_KIND_GENERATION, .train_examples = 1ull << 40},
    };
    graft_wire_setting_t settings[2] = {{.name = "method", .value = "lora"},
                                        {.name = "trunk", .value = "random init (preset tiny)"}};
    graft_msg_t m = {.type = GRAFT_MSG_HELLO, .run_id = RUN,
                     .hello = {.version = "0.1.0", .name = "hospital-7", .shards = shards,
                               .nshards = 2, .settings = settings, .nsettings = 2}};
    graft_msg_t d;
    char why[256];
    graft_wire_opts_t o = {.run_id = RUN};
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, &o, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_HELLO);
    assert_true(d.run_id == RUN);
    assert_string_equal(d.hello.version, "0.1.0");
    assert_string_equal(d.hello.name, "hospital-7");
    assert_int_equal(d.hello.nshards, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(d.hello.shards[i].task, shards[i].task);
        assert_int_equal(d.hello.shards[i].kind, shards[i].kind);
        assert_true(d.hello.shards[i].train_examples == shards[i].train_examples);
    }
    assert_int_equal(d.hello.nsettings, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(d.hello.settings[i].name, settings[i].name);
        assert_string_equal(d.hello.settings[i].value, settings[i].value);
    }
    graft_msg_free(&d);
    assert_int_equal(d.type, GRAFT_MSG_NONE);
}

static void test_assign_roundtrip(void **state) {
    (void)state;
    char *tasks[] = {"spam", "sotu_era", "langid"};
    char *spam_labels[] = {"ham", "spam"}, *era_labels[] = {"1790-1860", "1861-1932", "Ära"};
    float era_prior[] = {0.25f, 0.5f, 0.25f};
    graft_wire_label_set_t sets[] = {{"sotu_era", era_labels, 3, era_prior},
                                     {"spam", spam_labels, 2, NULL}};
    graft_msg_t m = {.type = GRAFT_MSG_ASSIGN, .run_id = RUN,
                     .assign = {.worker_id = 42, .tasks = tasks, .ntasks = 3,
                                .label_sets = sets, .nlabel_sets = 2,
                                .max_message_bytes = 123456789}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_ASSIGN);
    assert_int_equal(d.assign.worker_id, 42);
    assert_int_equal(d.assign.ntasks, 3);
    for (int i = 0; i < 3; i++) assert_string_equal(d.assign.tasks[i], tasks[i]);
    assert_int_equal(d.assign.nlabel_sets, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(d.assign.label_sets[i].task, sets[i].task);
        assert_int_equal(d.assign.label_sets[i].nlabels, sets[i].nlabels);
        for (size_t l = 0; l < sets[i].nlabels; l++)
            assert_string_equal(d.assign.label_sets[i].labels[l], sets[i].labels[l]);
    }
    assert_non_null(d.assign.label_sets[0].prior);
    assert_memory_equal(d.assign.label_sets[0].prior, era_prior, sizeof era_prior);
    assert_null(d.assign.label_sets[1].prior); /* not sent: not known */
    assert_int_equal(d.assign.max_message_bytes, 123456789);
    graft_msg_free(&d);

    /* The run's message limit never exceeds what one message may carry. */
    m.assign.max_message_bytes = (uint64_t)GRAFT_WIRE_HARD_MAX_BYTES + 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "max_message_bytes");
    m.assign.max_message_bytes = 0;

    /* A prior has one finite share >= 0 per label. */
    era_prior[1] = -0.5f;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "prior[1] is -0.5");
    era_prior[1] = NAN;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "prior[1] is nan");
    era_prior[1] = 0.5f;

    /* Label sets must belong to an assigned task, once, sorted and distinct. */
    sets[1].task = "nope";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "labels for 'nope'");
    sets[1].task = "sotu_era";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "repeats the labels of 'sotu_era'");
    sets[1].task = "spam";
    char *unsorted[] = {"spam", "ham"}, *twice[] = {"ham", "ham"}, *empty[] = {"ham", ""};
    sets[1].labels = unsorted;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "sorted and distinct");
    sets[1].labels = twice;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "sorted and distinct");
    sets[1].labels = empty;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "labels[1] is missing");
}

static float A[6] = {1.5f, -2.25f, 3.0e-8f, 1.0e30f, -0.0f, 7.0f};
static float B[3] = {0.125f, -9.5f, 1.0f / 3.0f};
static uint32_t BIDX[3] = {0, 7, 11};
static float RATES[3] = {1e-4f, 2e-4f, 3e-4f};

static void make_tensors(graft_wire_tensor_t t[2]) {
    t[0] = dense("shared.lora.A", 2, (int64_t[]){2, 3}, A);
    t[1] = dense("task.spam.head", 3, (int64_t[]){2, 2, 3}, B);
    t[1].sparse = 1;
    t[1].indices = BIDX;
    t[1].nnz = 3;
}

static void test_round_start_roundtrip(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t m = {.type = GRAFT_MSG_ROUND_START, .run_id = RUN,
                     .round_start = {.round = 17, .tensors = t, .ntensors = 2,
                                     .hyper = {.learning_rate = 3e-4f, .local_steps = 3,
                                               .batch_size = 16, .weight_decay = 0.01f,
                                               .fedprox_mu = 0.5f, .step_lr = RATES,
                                               .nstep_lr = 3, .freeze_lora_a = 1,
                                               .head_lr_scale = 10.0f, .keep_optimizer_state = 1,
                                               .logit_adjust = 0.75f},
                                     .deadline_ms = 30000,
                                     .reduce = {.collective = 1, .clip_norm = 2.5f,
                                                .lora_products = 1,
                                                .shared_weight = 1572864}}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_ROUND_START);
    const graft_wire_round_start_t *r = &d.round_start;
    assert_int_equal(r->round, 17);
    assert_int_equal(r->deadline_ms, 30000);
    assert_true(r->hyper.learning_rate == 3e-4f && r->hyper.weight_decay == 0.01f);
    assert_true(r->hyper.fedprox_mu == 0.5f);
    assert_int_equal(r->hyper.local_steps, 3);
    assert_int_equal(r->hyper.nstep_lr, 3);
    assert_memory_equal(r->hyper.step_lr, RATES, sizeof RATES);
    assert_int_equal(r->hyper.freeze_lora_a, 1);
    assert_true(r->hyper.head_lr_scale == 10.0f);
    assert_int_equal(r->hyper.keep_optimizer_state, 1);
    assert_true(r->hyper.logit_adjust == 0.75f);
    assert_int_equal(r->reduce.collective, 1);
    assert_true(r->reduce.clip_norm == 2.5f);
    assert_int_equal(r->reduce.lora_products, 1);
    assert_int_equal(r->reduce.shared_weight, 1572864);
    assert_int_equal(r->hyper.batch_size, 16);
    assert_int_equal(r->ntensors, 2);
    assert_tensor_equal(&r->tensors[0], &t[0]);
    assert_tensor_equal(&r->tensors[1], &t[1]);
    assert_true(signbit(r->tensors[0].data[4])); /* -0.0 kept bit for bit */
    float full[12];
    graft_wire_tensor_densify(&r->tensors[1], full);
    for (int i = 0; i < 12; i++)
        assert_true(full[i] == (i == 0 ? B[0] : i == 7 ? B[1] : i == 11 ? B[2] : 0.0f));
    graft_msg_free(&d);
}

static void test_update_roundtrip(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t m = {.type = GRAFT_MSG_UPDATE, .run_id = RUN,
                     .update = {.round = 3, .worker_id = 2, .tensors = t, .ntensors = 2,
                                .sample_count = 1234, .train_loss = 2.718281828459045,
                                .train_seconds = 12.5}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    const graft_wire_update_t *u = &d.update;
    assert_int_equal(d.type, GRAFT_MSG_UPDATE);
    assert_int_equal(u->round, 3);
    assert_int_equal(u->worker_id, 2);
    assert_int_equal(u->sample_count, 1234);
    assert_true(u->train_loss == 2.718281828459045);
    assert_true(u->train_seconds == 12.5);
    assert_int_equal(u->ntensors, 2);
    assert_tensor_equal(&u->tensors[0], &t[0]);
    assert_tensor_equal(&u->tensors[1], &t[1]);
    graft_msg_free(&d);
}

static void test_eval_roundtrip(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_REQUEST, .run_id = RUN,
                     .eval_request = {.round = 8, .task = "spam", .tensors = t, .ntensors = 1}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_EVAL_REQUEST);
    assert_int_equal(d.eval_request.round, 8);
    assert_string_equal(d.eval_request.task, "spam");
    assert_int_equal(d.eval_request.ntensors, 1);
    assert_tensor_equal(&d.eval_request.tensors[0], &t[0]);
    graft_msg_free(&d);

    graft_wire_metric_t metrics[3] = {{"accuracy", 0.875}, {"macro_f1", 0.8125}, {"ece", 0.03125}};
    graft_msg_t r = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = RUN,
                     .eval_result = {.round = 8, .task = "spam", .metrics = metrics,
                                     .nmetrics = 3, .examples = 605}};
    assert_int_equal(roundtrip(&r, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_EVAL_RESULT);
    assert_int_equal(d.eval_result.round, 8);
    assert_string_equal(d.eval_result.task, "spam");
    assert_int_equal(d.eval_result.examples, 605);
    assert_int_equal(d.eval_result.nmetrics, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(d.eval_result.metrics[i].name, metrics[i].name);
        assert_true(d.eval_result.metrics[i].value == metrics[i].value);
    }
    graft_msg_free(&d);
}

static void test_small_roundtrips(void **state) {
    (void)state;
    graft_msg_t d;
    char why[256];
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = RUN,
                      .heartbeat = {.worker_id = 5, .unix_ms = 1700000000123ull}};
    assert_int_equal(roundtrip(&hb, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_HEARTBEAT);
    assert_int_equal(d.heartbeat.worker_id, 5);
    assert_true(d.heartbeat.unix_ms == 1700000000123ull);
    graft_msg_free(&d);

    graft_msg_t sd = {.type = GRAFT_MSG_SHUTDOWN, .run_id = RUN,
                      .shutdown = {.reason = "run finished after 50 rounds", .run_complete = 1}};
    assert_int_equal(roundtrip(&sd, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_SHUTDOWN);
    assert_string_equal(d.shutdown.reason, "run finished after 50 rounds");
    assert_int_equal(d.shutdown.run_complete, 1);
    graft_msg_free(&d);
    sd.shutdown = (graft_wire_shutdown_t){.reason = "coordinator stopped"};
    assert_int_equal(roundtrip(&sd, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.shutdown.run_complete, 0);
    graft_msg_free(&d);

    graft_msg_t er = {.type = GRAFT_MSG_ERROR, .run_id = RUN,
                      .error = {.code = GRAFT_ESHAPE, .message = "tensor x: wrong shape"}};
    assert_int_equal(roundtrip(&er, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_ERROR);
    assert_int_equal(d.error.code, GRAFT_ESHAPE);
    assert_string_equal(d.error.message, "tensor x: wrong shape");
    assert_string_equal(graft_msg_type_name(d.type), "error");
    graft_msg_free(&d);
}

static void test_bf16(void **state) {
    (void)state;
    /* Ties round to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7. */
    assert_true(graft_bf16_to_f32(graft_f32_to_bf16(1.0f + 0x1p-8f)) == 1.0f);
    assert_true(graft_bf16_to_f32(graft_f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f)) == 1.0f + 0x1p-6f);
    assert_true(graft_bf16_to_f32(graft_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f)) == 1.0f + 0x1p-7f);
    assert_true(isnan(graft_bf16_to_f32(graft_f32_to_bf16(NAN))));

    enum { N = 4096 };
    static float x[N];
    graft_rng_t rng;
    graft_rng_seed(&rng, 7, 0);
    graft_rng_fill_normal(&rng, x, N, 3.0f);
    graft_wire_tensor_t t = dense("shared.w", 2, (int64_t[]){64, 64}, x);
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_REQUEST, .run_id = RUN,
                     .eval_request = {.round = 1, .task = "t", .tensors = &t, .ntensors = 1}};
    uint8_t *b32, *b16;
    size_t n32, n16;
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_F32, &b32, &n32), GRAFT_OK);
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_BF16, &b16, &n16), GRAFT_OK);
    assert_true(n16 < n32 / 2 + 64 && n16 > n32 / 2 - 64);
    graft_msg_t d;
    char why[256];
    assert_int_equal(graft_wire_decode(b16, n16, NULL, &d, why, sizeof why), GRAFT_OK);
    for (int i = 0; i < N; i++) {
        float y = d.eval_request.tensors[0].data[i];
        assert_true(fabsf(y - x[i]) <= fabsf(x[i]) * 0x1p-8f); /* half a bf16 ulp */
        assert_true(y == graft_bf16_to_f32(graft_f32_to_bf16(x[i])));
    }
    graft_msg_free(&d);
    free(b32);
    free(b16);
}

/* ---- rejection ------------------------------------------------------------ */

static void encode_update(graft_wire_tensor_t *t, size_t n, uint8_t **buf, size_t *len) {
    graft_msg_t m = {.type = GRAFT_MSG_UPDATE, .run_id = RUN,
                     .update = {.round = 1, .worker_id = 1, .tensors = t, .ntensors = n,
                                .sample_count = 10, .train_loss = 1.0, .train_seconds = 0.5}};
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_F32, buf, len), GRAFT_OK);
}

static void test_truncated(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    uint8_t *buf;
    size_t len;
    encode_update(t, 2, &buf, &len);
    graft_wire_opts_t o = {.run_id = RUN};
    for (size_t cut = 0; cut < len; cut++) expect_reject(buf, cut, &o, GRAFT_EFORMAT, NULL);
    expect_reject(buf, len - 1, &o, GRAFT_EFORMAT, "unpack");
    free(buf);
}

static void test_garbage(void **state) {
    (void)state;
    graft_rng_t rng;
    graft_rng_seed(&rng, 99, 1);
    uint8_t buf[512];
    graft_wire_opts_t o = {.run_id = RUN};
    for (int trial = 0; trial < 2000; trial++) {
        size_t len = 1 + graft_rng_below(&rng, sizeof buf);
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)graft_rng_u32(&rng);
        graft_msg_t m;
        char why[256];
        int rc = graft_wire_decode(buf, len, &o, &m, why, sizeof why);
        assert_true(rc < 0);
        assert_true(strlen(why) > 0);
    }
    memset(buf, 0xff, 64);
    expect_reject(buf, 64, &o, GRAFT_EFORMAT, "unpack");
}

static void test_oversized(void **state) {
    (void)state;
    static float big[1024];
    graft_wire_tensor_t t = dense("w", 1, (int64_t[]){1024}, big);
    uint8_t *buf;
    size_t len;
    encode_update(&t, 1, &buf, &len);
    graft_wire_opts_t o = {.run_id = RUN, .max_bytes = 4000};
    expect_reject(buf, len, &o, GRAFT_EFORMAT, "exceeds the limit of 4000");
    o.max_bytes = len;
    graft_msg_t m;
    char why[256];
    assert_int_equal(graft_wire_decode(buf, len, &o, &m, why, sizeof why), GRAFT_OK);
    graft_msg_free(&m);
    free(buf);
    /* The default limit, 64 MiB, is checked before a byte is read. */
    size_t huge = GRAFT_WIRE_DEFAULT_MAX_BYTES + 1;
    uint8_t *hb = calloc(huge, 1);
    assert_non_null(hb);
    expect_reject(hb, huge, NULL, GRAFT_EFORMAT, "exceeds");
    free(hb);
}

/* A name of GRAFT_WIRE_MAX_NAME bytes, the longest the wire allows. */
static char *long_name(char c) {
    static char names[4][GRAFT_WIRE_MAX_NAME + 1];
    char *s = names[c % 4];
    memset(s, c, GRAFT_WIRE_MAX_NAME);
    s[GRAFT_WIRE_MAX_NAME] = '\0';
    return s;
}

/* The bound of graft_wire_modules_bytes holds for the largest fields the
 * wire allows and is tight: every message the coordinator and the workers
 * send fits the limit derived from the modules, and the limit is not much
 * more than that. */
static void test_modules_bound(void **state) {
    (void)state;
    size_t numel[3] = {1000, 1, 70000};
    float *data = calloc(70000, sizeof(float));
    for (int i = 0; i < 70000; i++) data[i] = -1.0f / (float)(i + 3);
    graft_wire_tensor_t t[3];
    t[0] = dense(long_name('a'), 4, (int64_t[]){10, 10, 5, 2}, data);
    t[1] = dense(long_name('b'), 1, (int64_t[]){1}, data);
    t[2] = dense(long_name('c'), 1, (int64_t[]){70000}, data);
    float rates[500];
    for (int i = 0; i < 500; i++) rates[i] = 1e-4f * (float)(i + 1);
    graft_msg_t m = {.type = GRAFT_MSG_ROUND_START, .run_id = UINT64_MAX};
    m.round_start = (graft_wire_round_start_t){
        .round = UINT64_MAX, .tensors = t, .ntensors = 3, .deadline_ms = UINT32_MAX,
        .hyper = {.learning_rate = 3e-4f, .local_steps = UINT32_MAX, .batch_size = UINT32_MAX,
                  .weight_decay = 0.1f, .fedprox_mu = 0.5f, .step_lr = rates, .nstep_lr = 500,
                  .freeze_lora_a = 1, .head_lr_scale = 10.0f, .keep_optimizer_state = 1,
                  .logit_adjust = 1.5f, .channels_selected = 1},
        .reduce = {.collective = 1, .clip_norm = 2.5f, .lora_products = 1,
                   .shared_weight = UINT64_MAX}};
    size_t bound = graft_wire_modules_bytes(numel, 3, 500);
    assert_int_equal(bound - graft_wire_modules_bytes(numel, 3, 0), 500 * sizeof(float));
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    assert_true(len <= bound);
    assert_true(bound - len < 8192);
    free(buf);
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = UINT64_MAX};
    u.update = (graft_wire_update_t){.round = UINT64_MAX, .worker_id = UINT32_MAX, .tensors = t,
                                     .ntensors = 3, .sample_count = UINT64_MAX,
                                     .train_loss = 1e300, .train_seconds = 1e300};
    assert_int_equal(graft_wire_encode(&u, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    assert_true(len <= graft_wire_modules_bytes(numel, 3, 0));
    free(buf);
    free(data);
}

/* The run's limit: the default for small modules, the modules' bound for
 * large ones (GPT-2 small fully fine-tuned is about 500 MB), refused past
 * the hard limit; the default moves only for tests, within bounds. */
static void test_max_bytes(void **state) {
    (void)state;
    size_t max = 0, small[2] = {4096, 10};
    assert_int_equal(graft_wire_max_bytes(small, 2, 10, &max), GRAFT_OK);
    assert_int_equal(max, GRAFT_WIRE_DEFAULT_MAX_BYTES);
    size_t gpt2[3] = {124439808, 768 * 4 + 4, 768 * 2 + 2};
    assert_int_equal(graft_wire_max_bytes(gpt2, 3, 10, &max), GRAFT_OK);
    assert_int_equal(max, graft_wire_modules_bytes(gpt2, 3, 10));
    assert_true(max > (size_t)124439808 * 4 && max > GRAFT_WIRE_DEFAULT_MAX_BYTES);
    size_t large[2] = {(size_t)1 << 29, 0}; /* 2 GiB of fp32 values */
    assert_int_equal(graft_wire_max_bytes(large, 2, 1, &max), GRAFT_EINVAL);
    assert_true(max > GRAFT_WIRE_HARD_MAX_BYTES);
    large[0] = ((size_t)1 << 29) - 4096;
    assert_int_equal(graft_wire_max_bytes(large, 2, 1, &max), GRAFT_OK);
    size_t steps = (size_t)1 << 29; /* the rates alone */
    assert_int_equal(graft_wire_max_bytes(small, 2, steps, &max), GRAFT_EINVAL);

    assert_int_equal(graft_wire_default_max_bytes(), GRAFT_WIRE_DEFAULT_MAX_BYTES);
    setenv("GRAFT_TEST_DEFAULT_MAX_BYTES", "65536", 1);
    assert_int_equal(graft_wire_default_max_bytes(), 65536);
    size_t tiny_full[2] = {40000, 10}; /* the tiny trunk's 160 KB outgrow it */
    assert_int_equal(graft_wire_max_bytes(tiny_full, 2, 10, &max), GRAFT_OK);
    assert_int_equal(max, graft_wire_modules_bytes(tiny_full, 2, 10));
    assert_int_equal(graft_wire_max_bytes(small, 2, 10, &max), GRAFT_OK);
    assert_int_equal(max, 65536);
    const char *ignored[] = {"100", "65536x", "", "-1", "999999999999"};
    for (size_t i = 0; i < sizeof ignored / sizeof *ignored; i++) {
        setenv("GRAFT_TEST_DEFAULT_MAX_BYTES", ignored[i], 1);
        assert_int_equal(graft_wire_default_max_bytes(), GRAFT_WIRE_DEFAULT_MAX_BYTES);
    }
    unsetenv("GRAFT_TEST_DEFAULT_MAX_BYTES");
}

static void test_non_finite(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4};
    graft_wire_tensor_t t = dense("task.spam.red.s", 1, (int64_t[]){4}, x);
    x[2] = NAN;
    graft_msg_t m = {.type = GRAFT_MSG_UPDATE, .run_id = RUN,
                     .update = {.round = 1, .worker_id = 1, .tensors = &t, .ntensors = 1,
                                .sample_count = 10}};
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "'task.spam.red.s' value 2 is NaN");
    expect_reject_msg(&m, GRAFT_DTYPE_BF16, NULL, GRAFT_EFORMAT, "NaN");
    x[2] = 3;
    x[3] = -INFINITY;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "value 3 is Inf");
    x[3] = 3.4e38f; /* finite in f32, rounds to Inf in bf16 */
    expect_reject_msg(&m, GRAFT_DTYPE_BF16, NULL, GRAFT_EFORMAT, "Inf");
    x[3] = 4;
    m.update.train_loss = NAN;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "update.train_loss");
}

static void test_schema(void **state) {
    (void)state;
    static const graft_wire_schema_entry_t entries[] = {
        {"shared.lora.A", 2, {2, 3}},
        {"task.spam.head", 3, {2, 2, 3}},
    };
    graft_wire_schema_t schema = {entries, 2};
    graft_wire_opts_t o = {.run_id = RUN, .schema = &schema};
    graft_wire_tensor_t t[2];
    make_tensors(t);
    uint8_t *buf;
    size_t len;
    encode_update(t, 2, &buf, &len);
    graft_msg_t m;
    char why[256];
    assert_int_equal(graft_wire_decode(buf, len, &o, &m, why, sizeof why), GRAFT_OK);
    graft_msg_free(&m);
    free(buf);

    t[1].name = "task.evil.head";
    encode_update(t, 2, &buf, &len);
    expect_reject(buf, len, &o, GRAFT_ESHAPE, "'task.evil.head' is not a known tensor");
    free(buf);

    make_tensors(t);
    t[0] = dense("shared.lora.A", 2, (int64_t[]){3, 2}, A);
    encode_update(t, 2, &buf, &len);
    expect_reject(buf, len, &o, GRAFT_ESHAPE, "'shared.lora.A' has shape [3,2], expected [2,3]");
    free(buf);

    t[0] = dense("shared.lora.A", 1, (int64_t[]){6}, A);
    encode_update(t, 2, &buf, &len);
    expect_reject(buf, len, &o, GRAFT_ESHAPE, "has shape [6], expected [2,3]");
    free(buf);
}

static void test_run_id(void **state) {
    (void)state;
    graft_wire_opts_t o = {.run_id = RUN};
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT, .run_id = RUN + 1,
                      .heartbeat = {.worker_id = 1, .unix_ms = 5}};
    expect_reject_msg(&hb, GRAFT_DTYPE_F32, &o, GRAFT_ESTATE, "from run");
    hb.run_id = 0; /* only a Hello may come without a run */
    expect_reject_msg(&hb, GRAFT_DTYPE_F32, &o, GRAFT_ESTATE, "this run is 1234abcd5678ef01");

    graft_msg_t hello = {.type = GRAFT_MSG_HELLO, .run_id = 0,
                         .hello = {.version = "0.1.0", .name = "w"}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&hello, GRAFT_DTYPE_F32, &o, &d, why, sizeof why), GRAFT_OK);
    graft_msg_free(&d);
    hello.run_id = 77; /* a stale worker from another run */
    expect_reject_msg(&hello, GRAFT_DTYPE_F32, &o, GRAFT_ESTATE, "hello message is from run");
}

static void test_sparse_indices(void **state) {
    (void)state;
    float v[3] = {1, 2, 3};
    uint32_t idx[3] = {1, 5, 12};
    graft_wire_tensor_t t = dense("s", 2, (int64_t[]){3, 4}, v);
    t.sparse = 1;
    t.indices = idx;
    t.nnz = 3;
    uint8_t *buf;
    size_t len;
    encode_update(&t, 1, &buf, &len);
    expect_reject(buf, len, NULL, GRAFT_EFORMAT, "'s' index 2 is 12, out of range for 12");
    free(buf);
    idx[2] = 5;
    encode_update(&t, 1, &buf, &len);
    expect_reject(buf, len, NULL, GRAFT_EFORMAT, "not strictly increasing at 2");
    free(buf);
    idx[1] = 0;
    idx[2] = 3;
    encode_update(&t, 1, &buf, &len);
    expect_reject(buf, len, NULL, GRAFT_EFORMAT, "not strictly increasing at 1");
    free(buf);

    /* A big, dense-packed sparse tensor in bf16 (the tightest legitimate
     * wire-to-memory ratio) stays within the unpacking budget. */
    enum { NNZ = 200000 };
    float *vals = malloc(NNZ * sizeof *vals);
    uint32_t *ix = malloc(NNZ * sizeof *ix);
    for (uint32_t k = 0; k < NNZ; k++) vals[k] = (float)(k % 256), ix[k] = k;
    graft_wire_tensor_t big = dense("g", 2, (int64_t[]){1024, 1024}, vals);
    big.sparse = 1;
    big.indices = ix;
    big.nnz = NNZ;
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_REQUEST, .run_id = RUN,
                     .eval_request = {.round = 1, .task = "t", .tensors = &big, .ntensors = 1}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_BF16, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_tensor_equal(&d.eval_request.tensors[0], &big);
    graft_msg_free(&d);
    free(vals);
    free(ix);
}

static void test_fields(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t u = {.type = GRAFT_MSG_UPDATE, .run_id = RUN,
                     .update = {.round = 1, .worker_id = 0, .tensors = t, .ntensors = 2,
                                .sample_count = 10}};
    expect_reject_msg(&u, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "update.worker_id");
    u.update.worker_id = 1;
    u.update.sample_count = 0;
    expect_reject_msg(&u, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "sample_count");
    u.update.sample_count = 1;
    t[1].name = "shared.lora.A";
    expect_reject_msg(&u, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "'shared.lora.A' appears twice");
    t[1].name = "bad\nname";
    expect_reject_msg(&u, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "update tensor #1 name");

    graft_msg_t h = {.type = GRAFT_MSG_HELLO, .run_id = RUN, .hello = {.version = "0.1.0"}};
    expect_reject_msg(&h, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "hello.name is missing");
    graft_wire_setting_t set[2] = {{.name = "seq", .value = "32"}, {.name = "seq", .value = "8"}};
    h.hello = (graft_wire_hello_t){.version = "0.1.0", .name = "w", .settings = set,
                                   .nsettings = 2};
    expect_reject_msg(&h, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "setting 'seq' appears twice");
    set[1] = (graft_wire_setting_t){.name = "pool", .value = "mean\n"};
    expect_reject_msg(&h, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "setting 'pool' contains control byte 0x0a");

    graft_msg_t r = {.type = GRAFT_MSG_ROUND_START, .run_id = RUN,
                     .round_start = {.round = 1, .deadline_ms = 100,
                                     .hyper = {.learning_rate = 0.1f, .batch_size = 8}}};
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "local_steps 0");
    r.round_start.hyper.local_steps = 1;
    r.round_start.hyper.learning_rate = -1;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "learning_rate is -1");
    r.round_start.hyper.learning_rate = 0.1f;
    float rates[3] = {0.1f, NAN, 0.3f};
    r.round_start.hyper.step_lr = rates;
    r.round_start.hyper.nstep_lr = 3;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "3 step learning rates for 1");
    r.round_start.hyper.local_steps = 3;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "step_learning_rates[1] is nan");
    rates[1] = 0.2f;
    r.round_start.hyper.head_lr_scale = NAN;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "head_lr_scale is nan");
    r.round_start.hyper.head_lr_scale = 0;
    r.round_start.hyper.logit_adjust = -1;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "logit_adjust is -1");
    r.round_start.hyper.logit_adjust = 0;
    r.round_start.reduce.clip_norm = -2;
    expect_reject_msg(&r, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "clip_norm is -2");

    graft_wire_metric_t met = {"ppl", INFINITY};
    graft_msg_t e = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = RUN,
                     .eval_result = {.round = 1, .task = "t", .metrics = &met, .nmetrics = 1}};
    expect_reject_msg(&e, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "metric 'ppl'");
    graft_wire_metric_t twice[2] = {{"acc", 0.5}, {"acc", 0.9}};
    e.eval_result.metrics = twice;
    e.eval_result.nmetrics = 2;
    expect_reject_msg(&e, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result metric 'acc' appears twice");

    /* a shutdown's reason and an error's message reach the logs as they
     * are: printable and bounded, like names (empty is fine) */
    char long_text[GRAFT_WIRE_MAX_TEXT + 2];
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    graft_msg_t sd = {.type = GRAFT_MSG_SHUTDOWN, .run_id = RUN,
                      .shutdown = {.reason = "done\x1b[2J"}};
    expect_reject_msg(&sd, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "shutdown.reason contains control byte 0x1b");
    sd.shutdown.reason = long_text;
    expect_reject_msg(&sd, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "shutdown.reason is 2049 bytes long (limit 2048)");
    long_text[GRAFT_WIRE_MAX_TEXT] = '\0';
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&sd, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(strlen(d.shutdown.reason), GRAFT_WIRE_MAX_TEXT);
    graft_msg_free(&d);
    graft_msg_t er = {.type = GRAFT_MSG_ERROR, .run_id = RUN,
                      .error = {.code = 1, .message = "two\nlines"}};
    expect_reject_msg(&er, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "error.message contains control byte 0x0a");
    er.error.message = "";
    assert_int_equal(roundtrip(&er, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_string_equal(d.error.message, "");
    graft_msg_free(&d);
}

static void test_expect_round(void **state) {
    (void)state;
    graft_msg_t m = {.type = GRAFT_MSG_UPDATE, .update = {.round = 4}};
    char why[128] = "";
    assert_int_equal(graft_wire_expect_round(&m, 4, why, sizeof why), GRAFT_OK);
    assert_int_equal(graft_wire_expect_round(&m, 5, why, sizeof why), GRAFT_ESTATE);
    assert_non_null(strstr(why, "update message is for round 4, the current round is 5"));
    m.type = GRAFT_MSG_EVAL_RESULT;
    m.eval_result.round = 9;
    assert_int_equal(graft_wire_expect_round(&m, 9, why, sizeof why), GRAFT_OK);
    graft_msg_t hb = {.type = GRAFT_MSG_HEARTBEAT};
    assert_int_equal(graft_wire_expect_round(&hb, 1, why, sizeof why), GRAFT_EINVAL);
}

/* ---- hand-written protobuf for what the encoder never emits ------------- */

typedef struct {
    uint8_t b[1024];
    size_t n;
} pbw_t;

static void pb_varint(pbw_t *w, uint64_t v) {
    do {
        uint8_t c = v & 0x7f;
        v >>= 7;
        w->b[w->n++] = (uint8_t)(c | (v ? 0x80 : 0));
    } while (v);
}

static void pb_uint(pbw_t *w, int field, uint64_t v) {
    pb_varint(w, (uint64_t)field << 3);
    pb_varint(w, v);
}

static void pb_bytes(pbw_t *w, int field, const void *p, size_t n) {
    pb_varint(w, (uint64_t)field << 3 | 2);
    pb_varint(w, n);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

/* Envelope{run_id, update{round 1, worker 1, one tensor, sample_count 10}}. */
static pbw_t envelope_with(const char *name, const int64_t *shape, int ndim, int dtype,
                           const void *data, size_t dlen, const uint32_t *idx, size_t nidx,
                           int sparse) {
    pbw_t t = {.n = 0}, u = {.n = 0}, env = {.n = 0};
    pb_bytes(&t, 1, name, strlen(name));
    for (int d = 0; d < ndim; d++) pb_uint(&t, 2, (uint64_t)shape[d]);
    pb_uint(&t, 3, (uint64_t)dtype);
    pb_bytes(&t, 4, data, dlen);
    if (sparse) pb_uint(&t, 5, 1);
    for (size_t k = 0; k < nidx; k++) pb_uint(&t, 6, idx[k]);
    pb_uint(&u, 1, 1);
    pb_uint(&u, 2, 1);
    pb_bytes(&u, 3, t.b, t.n);
    pb_uint(&u, 4, 10);
    pb_uint(&env, 1, RUN);
    pb_bytes(&env, 5, u.b, u.n);
    return env;
}

static void test_handmade(void **state) {
    (void)state;
    float v[6] = {1, 2, 3, 4, 5, 6};
    uint32_t idx[2] = {0, 3};
    graft_wire_opts_t o = {.run_id = RUN};
    /* The writer agrees with the schema: a well-formed tensor decodes. */
    pbw_t e = envelope_with("w", (int64_t[]){2, 3}, 2, 1, v, 24, NULL, 0, 0);
    graft_msg_t m;
    char why[256];
    assert_int_equal(graft_wire_decode(e.b, e.n, &o, &m, why, sizeof why), GRAFT_OK);
    assert_true(m.update.tensors[0].data[5] == 6.0f && m.update.sample_count == 10);
    graft_msg_free(&m);

    e = envelope_with("w", (int64_t[]){2, 3}, 2, 1, v, 20, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "'w' has 20 data bytes, expected 24");
    e = envelope_with("w", (int64_t[]){2, 3}, 2, 2, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "has 24 data bytes, expected 12");
    e = envelope_with("w", (int64_t[]){2, 3}, 2, 7, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "unknown dtype 7");
    e = envelope_with("w", (int64_t[]){2, 3}, 2, 0, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "unknown dtype 0");
    e = envelope_with("w", (int64_t[]){2, 0}, 2, 1, v, 0, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_ESHAPE, "dim 1 is 0");
    e = envelope_with("w", (int64_t[]){-2, 3}, 2, 1, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_ESHAPE, "dim 0 is -2");
    e = envelope_with("w", (int64_t[]){1, 1, 1, 2, 3}, 5, 1, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_ESHAPE, "5 dims");
    e = envelope_with("w", NULL, 0, 1, v, 4, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_ESHAPE, "0 dims");
    e = envelope_with("w", (int64_t[]){65536, 65536, 2}, 3, 1, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_ESHAPE, "2^32");
    e = envelope_with("w", (int64_t[]){2, 3}, 2, 1, v, 24, idx, 2, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "dense but has 2 indices");
    e = envelope_with("w", (int64_t[]){2, 3}, 2, 1, v, 12, idx, 2, 1);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "has 12 data bytes, expected 8");
    e = envelope_with("", (int64_t[]){2, 3}, 2, 1, v, 24, NULL, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "tensor #0 name is missing");
    /* A flood of empty tensors: 2 bytes each on the wire, far more unpacked. */
    static uint8_t flood[300000];
    size_t n = 0, body = 2 * 100000;
    flood[n++] = 5 << 3 | 2; /* Envelope.update */
    for (size_t v = body; v; v >>= 7) flood[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    for (int i = 0; i < 100000; i++) flood[n++] = 3 << 3 | 2, flood[n++] = 0;
    expect_reject(flood, n, NULL, GRAFT_EFORMAT, "needs more than");
    /* An envelope without a body. */
    pbw_t bare = {.n = 0};
    pb_uint(&bare, 1, RUN);
    expect_reject(bare.b, bare.n, &o, GRAFT_EFORMAT, "no body");
}

int main(void) {
    graft_log_level = GRAFT_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_roundtrip),  cmocka_unit_test(test_assign_roundtrip),
        cmocka_unit_test(test_round_start_roundtrip), cmocka_unit_test(test_update_roundtrip),
        cmocka_unit_test(test_eval_roundtrip),   cmocka_unit_test(test_small_roundtrips),
        cmocka_unit_test(test_bf16),             cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage),          cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_non_finite),       cmocka_unit_test(test_schema),
        cmocka_unit_test(test_run_id),           cmocka_unit_test(test_sparse_indices),
        cmocka_unit_test(test_fields),           cmocka_unit_test(test_expect_round),
        cmocka_unit_test(test_handmade),         cmocka_unit_test(test_modules_bound),
        cmocka_unit_test(test_max_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
