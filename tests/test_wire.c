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
#include "graft.pb-c.h" /* a message the encoder cannot make */
#include "rng.h"
#include "runconfig.h" /* GRAFT_MAX_TASKS */
#include "task.h"      /* GRAFT_SPLIT_* */
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

static void test_run_id_text(void **state) {
    (void)state;
    char buf[17];
    assert_string_equal(graft_run_id_text(0xe797129e6bfcf7e2ull, buf), "e797129e6bfcf7e2");
    assert_true(graft_run_id_parse(buf, 16) == 0xe797129e6bfcf7e2ull);
    assert_int_equal(graft_run_id_parse("e797129e6bfcf7e", 15), 0);  /* too short */
    assert_int_equal(graft_run_id_parse("E797129E6BFCF7E2", 16), 0); /* not as written */
    assert_int_equal(graft_run_id_parse("e797129e6bfcf7g2", 16), 0);
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
                                .max_message_bytes = 123456789, .personal = 1,
                                .earlier_runs = {0xe797129e6bfcf7e2ull, 7},
                                .nearlier_runs = 2}};
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_ASSIGN);
    assert_int_equal(d.assign.personal, 1);
    assert_int_equal(d.assign.nearlier_runs, 2);
    assert_true(d.assign.earlier_runs[0] == 0xe797129e6bfcf7e2ull);
    assert_int_equal(d.assign.earlier_runs[1], 7);
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

    /* More earlier runs than this release keeps (a later coordinator's):
     * the newest 7 count. */
    uint64_t ids[GRAFT_WIRE_MAX_EARLIER_RUNS + 2];
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) ids[i] = 100 + i;
    char *one[] = {"spam"};
    Graft__Assign pa = GRAFT__ASSIGN__INIT;
    pa.worker_id = 3;
    pa.n_tasks = 1;
    pa.tasks = one;
    pa.n_earlier_run_ids = sizeof ids / sizeof *ids;
    pa.earlier_run_ids = ids;
    Graft__Envelope pe = GRAFT__ENVELOPE__INIT;
    pe.run_id = RUN;
    pe.body_case = GRAFT__ENVELOPE__BODY_ASSIGN;
    pe.assign = &pa;
    uint8_t raw[256];
    size_t raw_len = graft__envelope__pack(&pe, raw);
    assert_true(raw_len < sizeof raw);
    assert_int_equal(graft_wire_decode(raw, raw_len, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.assign.nearlier_runs, GRAFT_WIRE_MAX_EARLIER_RUNS);
    assert_int_equal(d.assign.earlier_runs[0], 102);
    assert_int_equal(d.assign.earlier_runs[GRAFT_WIRE_MAX_EARLIER_RUNS - 1], 108);
    graft_msg_free(&d);

    /* An earlier run is a run id: never 0. */
    m.assign.earlier_runs[1] = 0;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "earlier_run_ids[1] is 0");
    m.assign.nearlier_runs = 0;

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

static char *EVAL_TASKS[2] = {"spam", "wordnet_gloss"};

/* An EvalRequest for both tasks' test rows, with t's first tensor. */
static graft_msg_t eval_request(graft_wire_tensor_t *t) {
    return (graft_msg_t){.type = GRAFT_MSG_EVAL_REQUEST, .run_id = RUN,
                         .eval_request = {.round = 8, .tensors = t, .ntensors = 1,
                                          .tasks = EVAL_TASKS, .ntasks = 2,
                                          .split = GRAFT_SPLIT_TEST, .max_examples = 500,
                                          .max_decodes = 40, .gen_tokens = 24}};
}

static void test_eval_request_roundtrip(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t m = eval_request(t);
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_EVAL_REQUEST);
    const graft_wire_eval_request_t *r = &d.eval_request;
    assert_int_equal(r->round, 8);
    assert_int_equal(r->ntasks, 2);
    assert_string_equal(r->tasks[0], "spam");
    assert_string_equal(r->tasks[1], "wordnet_gloss");
    assert_int_equal(r->split, GRAFT_SPLIT_TEST);
    assert_int_equal(r->max_examples, 500);
    assert_int_equal(r->max_decodes, 40);
    assert_int_equal(r->gen_tokens, 24);
    assert_int_equal(r->ntensors, 1);
    assert_tensor_equal(&r->tensors[0], &t[0]);
    graft_msg_free(&d);
    assert_int_equal(d.type, GRAFT_MSG_NONE);
}

static uint64_t CONFUSION[9] = {3, 1, 0, 0, 2, 1, 1, 0, 2}; /* 10 rows, 7 right */

/* A classification result: K = 3, 10 test rows in four ECE bins. */
static graft_msg_t class_result(void) {
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = RUN};
    graft_wire_eval_result_t *r = &m.eval_result;
    *r = (graft_wire_eval_result_t){.round = 8, .task = "spam", .split = GRAFT_SPLIT_TEST,
                                    .examples = 10, .loss_sum = 6.25, .loss_count = 10,
                                    .nlabels = 3, .confusion = CONFUSION};
    r->ece_count[5] = 1, r->ece_correct[5] = 0, r->ece_confidence[5] = 0.35;
    r->ece_count[7] = 2, r->ece_correct[7] = 1, r->ece_confidence[7] = 1.05;
    r->ece_count[10] = 3, r->ece_correct[10] = 2, r->ece_confidence[10] = 2.2;
    r->ece_count[14] = 4, r->ece_correct[14] = 4, r->ece_confidence[14] = 3.875;
    return m;
}

/* A generation result: 5 dev rows, 3 of them decoded. */
static graft_msg_t gen_result(void) {
    graft_msg_t m = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = RUN};
    m.eval_result = (graft_wire_eval_result_t){
        .round = 9, .task = "wordnet_gloss", .split = GRAFT_SPLIT_DEV, .examples = 5,
        .loss_sum = 123.5, .loss_count = 80, .chrf_hyp = {50, 45, 40, 35, 30, 25},
        .chrf_ref = {52, 47, 42, 37, 32, 27}, .chrf_match = {40, 30, 20, 10, 5, 1}, .decoded = 3,
        .sample_prompt = "Define: \xc3\xa4ngstlich", .sample_output = "anxious, fearful",
        .sample_reference = "full of anxiety (\xe2\x80\x9c""afraid\xe2\x80\x9d)"};
    return m;
}

static void assert_eval_result_equal(const graft_wire_eval_result_t *a,
                                     const graft_wire_eval_result_t *b) {
    assert_int_equal(a->round, b->round);
    assert_string_equal(a->task, b->task);
    assert_int_equal(a->split, b->split);
    assert_int_equal(a->examples, b->examples);
    assert_true(a->loss_sum == b->loss_sum);
    assert_int_equal(a->loss_count, b->loss_count);
    assert_int_equal(a->nlabels, b->nlabels);
    if (a->nlabels)
        assert_memory_equal(a->confusion, b->confusion,
                            (size_t)a->nlabels * (size_t)a->nlabels * sizeof(uint64_t));
    else
        assert_null(b->confusion);
    assert_memory_equal(a->ece_count, b->ece_count, sizeof a->ece_count);
    assert_memory_equal(a->ece_correct, b->ece_correct, sizeof a->ece_correct);
    assert_memory_equal(a->ece_confidence, b->ece_confidence, sizeof a->ece_confidence);
    assert_memory_equal(a->chrf_hyp, b->chrf_hyp, sizeof a->chrf_hyp);
    assert_memory_equal(a->chrf_ref, b->chrf_ref, sizeof a->chrf_ref);
    assert_memory_equal(a->chrf_match, b->chrf_match, sizeof a->chrf_match);
    assert_int_equal(a->decoded, b->decoded);
    /* decoded samples are always strings: "" for none */
    assert_string_equal(a->sample_prompt ? a->sample_prompt : "", b->sample_prompt);
    assert_string_equal(a->sample_output ? a->sample_output : "", b->sample_output);
    assert_string_equal(a->sample_reference ? a->sample_reference : "", b->sample_reference);
}

static void test_eval_result_roundtrip(void **state) {
    (void)state;
    graft_msg_t d;
    char why[256];
    graft_msg_t c = class_result();
    assert_int_equal(roundtrip(&c, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.type, GRAFT_MSG_EVAL_RESULT);
    assert_eval_result_equal(&c.eval_result, &d.eval_result);
    assert_string_equal(d.eval_result.sample_output, "");
    graft_msg_free(&d);

    graft_msg_t g = gen_result();
    assert_int_equal(roundtrip(&g, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_eval_result_equal(&g.eval_result, &d.eval_result);
    assert_string_equal(d.eval_result.sample_prompt, "Define: \xc3\xa4ngstlich");
    graft_msg_free(&d);
    assert_int_equal(d.type, GRAFT_MSG_NONE);

    /* A worker without rows: no statistics at all, in either kind. */
    graft_msg_t z = {.type = GRAFT_MSG_EVAL_RESULT, .run_id = RUN,
                     .eval_result = {.round = 1, .task = "t", .split = GRAFT_SPLIT_DEV}};
    assert_int_equal(roundtrip(&z, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_eval_result_equal(&z.eval_result, &d.eval_result);
    graft_msg_free(&d);
    uint64_t zeros[4] = {0};
    z.eval_result.nlabels = 2;
    z.eval_result.confusion = zeros;
    assert_int_equal(roundtrip(&z, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_eval_result_equal(&z.eval_result, &d.eval_result);
    graft_msg_free(&d);
}

static void test_eval_request_refused(void **state) {
    (void)state;
    graft_wire_tensor_t t[2];
    make_tensors(t);
    graft_msg_t m = eval_request(t);
    graft_wire_eval_request_t *r = &m.eval_request;
    r->ntasks = 0;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_request.tasks is empty");
    char *many[GRAFT_MAX_TASKS + 1];
    char names[GRAFT_MAX_TASKS + 1][8];
    for (int i = 0; i <= GRAFT_MAX_TASKS; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        many[i] = names[i];
    }
    r->tasks = many;
    r->ntasks = GRAFT_MAX_TASKS;
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    graft_msg_free(&d);
    r->ntasks = GRAFT_MAX_TASKS + 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "has 17 tasks, at most 16");
    char *bad[2] = {"spam", ""};
    r->tasks = bad;
    r->ntasks = 2;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_request.tasks[1] is missing or empty");
    bad[1] = "sp\tam";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_request.tasks[1] contains control byte 0x09");
    bad[1] = "spam";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_request task 'spam' appears twice");
    r->tasks = EVAL_TASKS;
    r->split = GRAFT_SPLIT_TRAIN; /* goes out unspecified */
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_request.split is 0");
    r->split = GRAFT_SPLIT_DEV;
    r->gen_tokens = 0;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_request.gen_tokens is 0");
    r->gen_tokens = 1;

    /* Tensors as in a RoundStart: against the schema, finite. */
    static const graft_wire_schema_entry_t entries[] = {{"shared.lora.A", 2, {2, 3}}};
    graft_wire_schema_t schema = {entries, 1};
    graft_wire_opts_t o = {.run_id = RUN, .schema = &schema};
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, &o, &d, why, sizeof why), GRAFT_OK);
    graft_msg_free(&d);
    r->tensors = &t[1];
    expect_reject_msg(&m, GRAFT_DTYPE_F32, &o, GRAFT_ESHAPE,
                      "eval_request tensor 'task.spam.head' is not a known tensor");
    float x[6] = {1, 2, 3, 4, INFINITY, 6};
    t[0] = dense("shared.lora.A", 2, (int64_t[]){2, 3}, x);
    r->tensors = t;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, &o, GRAFT_EFORMAT,
                      "eval_request tensor 'shared.lora.A' value 4 is Inf");
}

/* Every rule of a classification result (nlabels > 0). */
/* Which rows: an IID part below its count, or 0 of 0 (own files). */
static void test_eval_result_parts(void **state) {
    (void)state;
    graft_msg_t m = class_result();
    graft_wire_eval_result_t *r = &m.eval_result;
    r->part = 2;
    r->parts = 3;
    uint8_t *buf;
    size_t len;
    assert_int_equal(graft_wire_encode(&m, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    graft_msg_t d;
    char why[256];
    assert_int_equal(graft_wire_decode(buf, len, NULL, &d, why, sizeof why), GRAFT_OK);
    free(buf);
    assert_int_equal(d.eval_result.part, 2);
    assert_int_equal(d.eval_result.parts, 3);
    graft_msg_free(&d);
    r->part = 3;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result part 3 of 3");
    r->parts = 0;
    r->part = 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result part 1 of 0");
    r->part = 0;
    r->parts = GRAFT_WIRE_MAX_PARTS + 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "part < parts <= 1000000");
}

static void test_eval_result_class_refused(void **state) {
    (void)state;
    graft_msg_t m = class_result();
    graft_wire_eval_result_t *r = &m.eval_result;
    r->task = "";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result.task is missing");
    r->task = "spam";
    r->split = GRAFT_SPLIT_TRAIN;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result.split is 0");
    r->split = GRAFT_SPLIT_DEV;
    r->loss_sum = -1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result.loss_sum is -1");
    r->loss_sum = NAN;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "eval_result.loss_sum is nan");
    r->loss_sum = 6.25;

    /* the counts account for every row, without wrapping around */
    r->examples = 11;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.confusion sums to 10, examples is 11");
    r->examples = 10;
    uint64_t wrap[9] = {UINT64_MAX, 11, 0, 0, 0, 0, 0, 0, 0}; /* 10 modulo 2^64 */
    r->confusion = wrap;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.confusion counts overflow 64 bits");
    r->confusion = CONFUSION;
    r->ece_count[0] = 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.ece_count sums to 11, examples is 10");
    r->ece_count[0] = 0;
    r->ece_correct[5] = 2;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.ece_correct[5] is 2, more than ece_count[5] 1");
    r->ece_correct[5] = 0;

    /* a bin's confidence sum is in [0, count], with float rounding's slack */
    r->ece_confidence[7] = NAN;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.ece_confidence[7] is nan");
    r->ece_confidence[7] = -0.5;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.ece_confidence[7] is -0.5, must be >= 0");
    r->ece_confidence[7] = 2.01;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.ece_confidence[7] is 2.01, more than ece_count[7] 2");
    r->ece_confidence[7] = 2.0 * (1 + 5e-7); /* two softmax maxima of 1 + 4 float ulps */
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    graft_msg_free(&d);
    r->ece_confidence[7] = 1.05;

    r->loss_count = 9;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.loss_count is 9, examples is 10");
    r->loss_count = 10;
    r->chrf_match[5] = 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "chrF statistics or decodes");
    r->chrf_match[5] = 0;
    r->decoded = 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "chrF statistics or decodes");
    r->decoded = 0;

    /* K is at most GRAFT_WIRE_MAX_LABELS (a square count is checked by hand
     * in test_handmade: the encoder always sends K x K) */
    size_t k = GRAFT_WIRE_MAX_LABELS + 1;
    uint64_t *big = calloc(k * k, sizeof *big);
    assert_non_null(big);
    r->nlabels = (int)k;
    r->confusion = big;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.confusion has 16785409 counts, more than 4096 x 4096");
    free(big);
}

/* Every rule of a generation result (nlabels == 0) and of the samples. */
static void test_eval_result_gen_refused(void **state) {
    (void)state;
    graft_msg_t m = gen_result();
    graft_wire_eval_result_t *r = &m.eval_result;
    r->ece_count[3] = 1;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT, "ECE bins but no confusion");
    r->ece_count[3] = 0;
    r->chrf_match[2] = 41; /* hyp 40, ref 42 */
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.chrf_match[2] is 41, more than min(chrf_hyp, chrf_ref) 40");
    r->chrf_match[2] = 20;
    r->chrf_ref[0] = 39; /* match 40 */
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.chrf_match[0] is 40, more than min(chrf_hyp, chrf_ref) 39");
    r->chrf_ref[0] = 52;
    r->decoded = 6;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.decoded is 6, more than examples 5");
    r->decoded = 3;

    /* samples: printable (UTF-8 is fine), at most GRAFT_WIRE_MAX_SAMPLE bytes */
    char text[GRAFT_WIRE_MAX_SAMPLE + 2];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    r->sample_output = text;
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.sample_output is 1025 bytes long (limit 1024)");
    text[GRAFT_WIRE_MAX_SAMPLE] = '\0';
    graft_msg_t d;
    char why[256];
    assert_int_equal(roundtrip(&m, GRAFT_DTYPE_F32, NULL, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(strlen(d.eval_result.sample_output), GRAFT_WIRE_MAX_SAMPLE);
    graft_msg_free(&d);
    r->sample_reference = "two\nlines";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.sample_reference contains control byte 0x0a");
    r->sample_reference = NULL;
    r->sample_prompt = "del\x7f";
    expect_reject_msg(&m, GRAFT_DTYPE_F32, NULL, GRAFT_EFORMAT,
                      "eval_result.sample_prompt contains control byte 0x7f");
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
    graft_msg_t m = eval_request(&t);
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
    /* An EvalRequest carries the same tensors and up to GRAFT_MAX_TASKS
     * names of the longest kind: it fits the same bound, and decodes. */
    char names[GRAFT_MAX_TASKS][GRAFT_WIRE_MAX_NAME + 1];
    char *tasks[GRAFT_MAX_TASKS];
    for (int i = 0; i < GRAFT_MAX_TASKS; i++) {
        memset(names[i], 'a' + i, GRAFT_WIRE_MAX_NAME);
        names[i][GRAFT_WIRE_MAX_NAME] = '\0';
        tasks[i] = names[i];
    }
    graft_msg_t ev = {.type = GRAFT_MSG_EVAL_REQUEST, .run_id = UINT64_MAX};
    ev.eval_request = (graft_wire_eval_request_t){
        .round = UINT64_MAX, .tensors = t, .ntensors = 3, .tasks = tasks,
        .ntasks = GRAFT_MAX_TASKS, .split = GRAFT_SPLIT_TEST, .max_examples = UINT64_MAX,
        .max_decodes = UINT64_MAX, .gen_tokens = UINT32_MAX};
    assert_int_equal(graft_wire_encode(&ev, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    size_t ebound = graft_wire_modules_bytes(numel, 3, 0);
    assert_true(len <= ebound);
    graft_wire_opts_t o = {.max_bytes = ebound};
    graft_msg_t d;
    char why[256];
    assert_int_equal(graft_wire_decode(buf, len, &o, &d, why, sizeof why), GRAFT_OK);
    assert_int_equal(d.eval_request.ntasks, GRAFT_MAX_TASKS);
    graft_msg_free(&d);
    free(buf);
    /* without tensors, whose framing has slack, the names alone must fit */
    ev.eval_request.ntensors = 0;
    assert_int_equal(graft_wire_encode(&ev, GRAFT_DTYPE_F32, &buf, &len), GRAFT_OK);
    assert_true(len > (size_t)GRAFT_MAX_TASKS * GRAFT_WIRE_MAX_NAME);
    assert_true(len <= graft_wire_modules_bytes(NULL, 0, 0));
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
    graft_msg_t m = eval_request(&big);
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

static void pb_double(pbw_t *w, int field, double x) {
    uint64_t u;
    memcpy(&u, &x, 8);
    pb_varint(w, (uint64_t)field << 3 | 1);
    for (int k = 0; k < 8; k++) w->b[w->n++] = (uint8_t)(u >> (8 * k));
}

/* Envelope{eval_result{task "t", split, 4 rows, loss_count 4, nconf
 * confusion counts (the first 4), nbins of each ECE array (all 4 rows in
 * bin 0, none right, confidence 0), norders of each chrF array (3, 3, 1),
 * decoded}}: the lengths the encoder never gets wrong. */
static pbw_t eval_result_with(int split, size_t nconf, size_t nbins, size_t norders,
                              uint64_t decoded) {
    pbw_t r = {.n = 0}, env = {.n = 0};
    pb_uint(&r, 1, 1);
    pb_bytes(&r, 2, "t", 1);
    pb_uint(&r, 4, 4);
    pb_uint(&r, 5, (uint64_t)split);
    pb_uint(&r, 7, 4);
    for (size_t i = 0; i < nconf; i++) pb_uint(&r, 8, i ? 0 : 4);
    for (size_t b = 0; b < nbins; b++) pb_uint(&r, 9, b ? 0 : 4);
    for (size_t b = 0; b < nbins; b++) pb_uint(&r, 10, 0);
    for (size_t b = 0; b < nbins; b++) pb_double(&r, 11, 0.0);
    for (size_t i = 0; i < norders; i++) pb_uint(&r, 12, 3);
    for (size_t i = 0; i < norders; i++) pb_uint(&r, 13, 3);
    for (size_t i = 0; i < norders; i++) pb_uint(&r, 14, 1);
    pb_uint(&r, 15, decoded);
    pb_uint(&env, 1, RUN);
    pb_bytes(&env, 7, r.b, r.n);
    return env;
}

/* Envelope{eval_request{tasks ["t"], split, gen_tokens 1}}. */
static pbw_t eval_request_with(int split) {
    pbw_t r = {.n = 0}, env = {.n = 0};
    pb_bytes(&r, 4, "t", 1);
    pb_uint(&r, 5, (uint64_t)split);
    pb_uint(&r, 8, 1);
    pb_uint(&env, 1, RUN);
    pb_bytes(&env, 6, r.b, r.n);
    return env;
}

/* What only a hand-written EvalRequest or EvalResult can hold: unknown
 * splits, a non-square confusion, arrays of the wrong length. */
static void test_handmade_eval(void **state) {
    (void)state;
    graft_wire_opts_t o = {.run_id = RUN};
    graft_msg_t m;
    char why[256];
    /* The writer agrees with the schema: well-formed results decode. */
    pbw_t e = eval_result_with(2, 1, GRAFT_WIRE_ECE_BINS, 0, 0);
    assert_int_equal(graft_wire_decode(e.b, e.n, &o, &m, why, sizeof why), GRAFT_OK);
    assert_int_equal(m.eval_result.nlabels, 1);
    assert_int_equal(m.eval_result.ece_count[0], 4);
    assert_int_equal(m.eval_result.split, GRAFT_SPLIT_TEST);
    graft_msg_free(&m);
    e = eval_result_with(1, 0, 0, GRAFT_WIRE_CHRF_ORDER, 2);
    assert_int_equal(graft_wire_decode(e.b, e.n, &o, &m, why, sizeof why), GRAFT_OK);
    assert_int_equal(m.eval_result.nlabels, 0);
    assert_int_equal(m.eval_result.chrf_match[5], 1);
    assert_int_equal(m.eval_result.decoded, 2);
    assert_int_equal(m.eval_result.split, GRAFT_SPLIT_DEV);
    graft_msg_free(&m);
    e = eval_result_with(1, 0, 0, 0, 0); /* generation without decodes */
    assert_int_equal(graft_wire_decode(e.b, e.n, &o, &m, why, sizeof why), GRAFT_OK);
    graft_msg_free(&m);

    e = eval_result_with(3, 1, GRAFT_WIRE_ECE_BINS, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.split is 3");
    e = eval_result_with(0, 1, GRAFT_WIRE_ECE_BINS, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.split is 0");
    e = eval_result_with(2, 2, GRAFT_WIRE_ECE_BINS, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.confusion has 2 counts, not K x K");
    e = eval_result_with(2, 5, GRAFT_WIRE_ECE_BINS, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.confusion has 5 counts, not K x K");
    e = eval_result_with(2, 1, GRAFT_WIRE_ECE_BINS - 1, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.ece_count has 14 bins, expected 15");
    e = eval_result_with(2, 1, 0, 0, 0);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.ece_count has 0 bins, expected 15");
    e = eval_result_with(2, 0, 0, GRAFT_WIRE_CHRF_ORDER - 1, 2);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "has 5 chrf_hyp, 5 chrf_ref and 5 chrf_match");
    e = eval_result_with(2, 0, 0, 0, 2);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_result.decoded is 2 without chrF");

    e = eval_request_with(2);
    assert_int_equal(graft_wire_decode(e.b, e.n, &o, &m, why, sizeof why), GRAFT_OK);
    assert_int_equal(m.eval_request.split, GRAFT_SPLIT_TEST);
    assert_string_equal(m.eval_request.tasks[0], "t");
    graft_msg_free(&m);
    e = eval_request_with(7);
    expect_reject(e.b, e.n, &o, GRAFT_EFORMAT, "eval_request.split is 7");
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
        cmocka_unit_test(test_run_id_text),
        cmocka_unit_test(test_round_start_roundtrip), cmocka_unit_test(test_update_roundtrip),
        cmocka_unit_test(test_eval_request_roundtrip),
        cmocka_unit_test(test_eval_result_roundtrip),
        cmocka_unit_test(test_eval_request_refused),
        cmocka_unit_test(test_eval_result_parts),
        cmocka_unit_test(test_eval_result_class_refused),
        cmocka_unit_test(test_eval_result_gen_refused),
        cmocka_unit_test(test_small_roundtrips),
        cmocka_unit_test(test_bf16),             cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage),          cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_non_finite),       cmocka_unit_test(test_schema),
        cmocka_unit_test(test_run_id),           cmocka_unit_test(test_sparse_indices),
        cmocka_unit_test(test_fields),           cmocka_unit_test(test_expect_round),
        cmocka_unit_test(test_handmade),         cmocka_unit_test(test_handmade_eval),
        cmocka_unit_test(test_modules_bound),
        cmocka_unit_test(test_max_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
