/* wire.c — graft_msg_t <-> protobuf bytes, with full validation on decode.
 *
 * Encoding builds temporary protobuf-c structs that point into the caller's
 * message (and into converted tensor buffers when needed), packs them and
 * frees the temporaries. Decoding unpacks, converts into graft's own structs
 * while checking each field, and frees the protobuf-c tree before returning,
 * so no generated type ever leaves this file.
 */
#include "wire.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "bf16.h"
#include "graft.pb-c.h"
#include "runconfig.h" /* GRAFT_MAX_TASKS */
#include "task.h"      /* GRAFT_SPLIT_* */

/* Sparse indices are uint32, so no tensor may exceed 2^32 elements. */
#define MAX_NUMEL ((uint64_t)1 << 32)

static int fail(char *why, size_t why_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *why, size_t why_len, int code, const char *fmt, ...) {
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *graft_msg_type_name(graft_msg_type_t type) {
    static const char *names[] = {"none",        "hello",       "assign",
                                  "round_start", "update",      "eval_request",
                                  "eval_result", "heartbeat",   "shutdown",
                                  "error"};
    if ((unsigned)type < sizeof names / sizeof names[0]) return names[type];
    return "unknown";
}

/* ---- values ------------------------------------------------------------- */

static size_t dtype_size(int dtype) { return dtype == GRAFT_DTYPE_BF16 ? 2 : 4; }

/* Writes n floats as little-endian dtype bytes. */
static void put_values(const float *x, size_t n, int dtype, uint8_t *out) {
    for (size_t i = 0; i < n; i++) {
        if (dtype == GRAFT_DTYPE_BF16) {
            uint16_t b = graft_f32_to_bf16(x[i]);
            out[2 * i] = (uint8_t)b;
            out[2 * i + 1] = (uint8_t)(b >> 8);
        } else {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            for (int k = 0; k < 4; k++) out[4 * i + k] = (uint8_t)(u >> (8 * k));
        }
    }
}

/* Reads n little-endian dtype values; returns the index of the first value
 * that is not finite, or n. */
static size_t get_values(const uint8_t *in, size_t n, int dtype, float *x) {
    for (size_t i = 0; i < n; i++) {
        if (dtype == GRAFT_DTYPE_BF16) {
            x[i] = graft_bf16_to_f32((uint16_t)(in[2 * i] | in[2 * i + 1] << 8));
        } else {
            const uint8_t *p = in + 4 * i;
            uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24;
            memcpy(&x[i], &u, 4);
        }
        if (!isfinite(x[i])) return i;
    }
    return n;
}

void graft_wire_tensor_densify(const graft_wire_tensor_t *t, float *out) {
    if (!t->sparse) {
        memcpy(out, t->data, t->numel * sizeof(float));
        return;
    }
    memset(out, 0, t->numel * sizeof(float));
    for (size_t k = 0; k < t->nnz; k++) out[t->indices[k]] = t->data[k];
}

/* ---- encode ------------------------------------------------------------- */

/* A repeated submessage field as protobuf-c wants it: n structs in one
 * block (items) and an array of pointers to them (ptrs). */
typedef struct {
    void *items;
    void **ptrs;
} enc_items_t;

/* Every temporary an encoding needs; enc_free releases them all. */
typedef struct {
    Graft__Envelope env;
    union {
        Graft__Hello hello;
        Graft__Assign assign;
        Graft__RoundStart round_start;
        Graft__Update update;
        Graft__EvalRequest eval_request;
        Graft__EvalResult eval_result;
        Graft__Heartbeat heartbeat;
        Graft__Shutdown shutdown;
        Graft__Error error;
    } body;
    Graft__Hyper hyper;
    Graft__Reduce reduce;
    enc_items_t tensors; /* Graft__Tensor */
    uint8_t **bufs;      /* converted tensor bytes, one per tensor (or NULL) */
    size_t ntensors;
    enc_items_t items;    /* Graft__Shard or Graft__LabelSet */
    enc_items_t settings; /* Graft__Setting: hello.settings */
    char **names;         /* assign.tasks, eval_request.tasks */
} enc_t;

/* n zeroed items of `size` bytes into it; returns the block (the caller
 * inits each item) and leaves the pointers to them in it->ptrs. */
static void *enc_items(enc_items_t *it, size_t n, size_t size) {
    it->items = graft_xcalloc(n, size);
    it->ptrs = graft_xcalloc(n, sizeof *it->ptrs);
    for (size_t i = 0; i < n; i++) it->ptrs[i] = (char *)it->items + i * size;
    return it->items;
}

static void enc_items_free(enc_items_t *it) {
    free(it->items);
    free(it->ptrs);
}

static void enc_free(enc_t *e) {
    for (size_t i = 0; i < e->ntensors; i++) free(e->bufs[i]);
    free(e->bufs);
    enc_items_free(&e->tensors);
    enc_items_free(&e->items);
    enc_items_free(&e->settings);
    free(e->names);
}

static char *str_or_empty(const char *s) { return (char *)(s ? s : ""); }

static size_t shape_numel(int ndim, const int64_t *shape) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    return n;
}

static void enc_tensor(const graft_wire_tensor_t *t, int dtype, Graft__Tensor *pb,
                       uint8_t **buf) {
    GRAFT_ASSERT(t->name && t->ndim >= 1 && t->ndim <= GRAFT_WIRE_MAX_DIMS);
    GRAFT_ASSERT(t->numel == shape_numel(t->ndim, t->shape));
    GRAFT_ASSERT(!t->sparse || t->nnz <= t->numel);
    size_t count = t->sparse ? t->nnz : t->numel;
    graft__tensor__init(pb);
    pb->name = (char *)t->name;
    pb->n_shape = (size_t)t->ndim;
    pb->shape = (int64_t *)t->shape;
    pb->dtype = dtype == GRAFT_DTYPE_BF16 ? GRAFT__DTYPE__BF16 : GRAFT__DTYPE__F32;
    pb->sparse = t->sparse ? 1 : 0;
    if (t->sparse) {
        pb->n_indices = t->nnz;
        pb->indices = t->indices;
    }
    pb->data.len = count * dtype_size(dtype);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (dtype == GRAFT_DTYPE_F32) { /* already the wire layout: no copy */
        pb->data.data = (uint8_t *)t->data;
        *buf = NULL;
        return;
    }
#endif
    *buf = graft_xmalloc(pb->data.len);
    put_values(t->data, count, dtype, *buf);
    pb->data.data = *buf;
}

static Graft__Tensor **enc_tensors(enc_t *e, const graft_wire_tensor_t *ts, size_t n, int dtype) {
    e->ntensors = n;
    Graft__Tensor *pb = enc_items(&e->tensors, n, sizeof *pb);
    e->bufs = graft_xcalloc(n, sizeof *e->bufs);
    for (size_t i = 0; i < n; i++) enc_tensor(&ts[i], dtype, &pb[i], &e->bufs[i]);
    return (Graft__Tensor **)e->tensors.ptrs;
}

/* n strings for a repeated string field; NULL goes out as "". */
static char **enc_names(enc_t *e, char *const *names, size_t n) {
    e->names = graft_xcalloc(n, sizeof *e->names);
    for (size_t i = 0; i < n; i++) e->names[i] = str_or_empty(names[i]);
    return e->names;
}

static void enc_hello(enc_t *e, const graft_wire_hello_t *m) {
    Graft__Hello *h = &e->body.hello;
    graft__hello__init(h);
    h->version = str_or_empty(m->version);
    h->name = str_or_empty(m->name);
    Graft__Shard *shards = enc_items(&e->items, m->nshards, sizeof *shards);
    for (size_t i = 0; i < m->nshards; i++) {
        graft__shard__init(&shards[i]);
        shards[i].task = str_or_empty(m->shards[i].task);
        shards[i].kind = (Graft__TaskKind)m->shards[i].kind;
        shards[i].train_examples = m->shards[i].train_examples;
    }
    h->n_shards = m->nshards;
    h->shards = (Graft__Shard **)e->items.ptrs;
    Graft__Setting *settings = enc_items(&e->settings, m->nsettings, sizeof *settings);
    for (size_t i = 0; i < m->nsettings; i++) {
        graft__setting__init(&settings[i]);
        settings[i].name = str_or_empty(m->settings[i].name);
        settings[i].value = str_or_empty(m->settings[i].value);
    }
    h->n_settings = m->nsettings;
    h->settings = (Graft__Setting **)e->settings.ptrs;
    e->env.body_case = GRAFT__ENVELOPE__BODY_HELLO;
    e->env.hello = h;
}

static void enc_assign(enc_t *e, const graft_wire_assign_t *m) {
    Graft__Assign *a = &e->body.assign;
    graft__assign__init(a);
    a->worker_id = m->worker_id;
    a->n_tasks = m->ntasks;
    a->tasks = enc_names(e, m->tasks, m->ntasks);
    Graft__LabelSet *sets = enc_items(&e->items, m->nlabel_sets, sizeof *sets);
    for (size_t i = 0; i < m->nlabel_sets; i++) {
        graft__label_set__init(&sets[i]);
        sets[i].task = str_or_empty(m->label_sets[i].task);
        sets[i].n_labels = m->label_sets[i].nlabels;
        sets[i].labels = m->label_sets[i].labels;
        sets[i].n_prior = m->label_sets[i].prior ? m->label_sets[i].nlabels : 0;
        sets[i].prior = m->label_sets[i].prior;
    }
    a->n_label_sets = m->nlabel_sets;
    a->label_sets = (Graft__LabelSet **)e->items.ptrs;
    a->max_message_bytes = m->max_message_bytes;
    a->personal = m->personal != 0;
    a->n_earlier_run_ids = m->nearlier_runs;
    a->earlier_run_ids = (uint64_t *)m->earlier_runs;
    e->env.body_case = GRAFT__ENVELOPE__BODY_ASSIGN;
    e->env.assign = a;
}

static void enc_round_start(enc_t *e, const graft_wire_round_start_t *m, int dtype) {
    Graft__RoundStart *r = &e->body.round_start;
    graft__round_start__init(r);
    graft__hyper__init(&e->hyper);
    e->hyper.learning_rate = m->hyper.learning_rate;
    e->hyper.local_steps = m->hyper.local_steps;
    e->hyper.batch_size = m->hyper.batch_size;
    e->hyper.weight_decay = m->hyper.weight_decay;
    e->hyper.fedprox_mu = m->hyper.fedprox_mu;
    e->hyper.n_step_learning_rates = m->hyper.nstep_lr;
    e->hyper.step_learning_rates = m->hyper.step_lr;
    e->hyper.freeze_lora_a = m->hyper.freeze_lora_a != 0;
    e->hyper.head_lr_scale = m->hyper.head_lr_scale;
    e->hyper.keep_optimizer_state = m->hyper.keep_optimizer_state != 0;
    e->hyper.logit_adjust = m->hyper.logit_adjust;
    e->hyper.channels_selected = m->hyper.channels_selected != 0;
    e->hyper.personal = m->hyper.personal != 0;
    r->round = m->round;
    r->n_tensors = m->ntensors;
    r->tensors = enc_tensors(e, m->tensors, m->ntensors, dtype);
    r->hyper = &e->hyper;
    r->deadline_ms = m->deadline_ms;
    if (m->reduce.collective || m->reduce.clip_norm != 0 || m->reduce.lora_products ||
        m->reduce.shared_weight) {
        graft__reduce__init(&e->reduce);
        e->reduce.collective = m->reduce.collective != 0;
        e->reduce.clip_norm = m->reduce.clip_norm;
        e->reduce.lora_products = m->reduce.lora_products != 0;
        e->reduce.shared_weight = m->reduce.shared_weight;
        r->reduce = &e->reduce;
    }
    e->env.body_case = GRAFT__ENVELOPE__BODY_ROUND_START;
    e->env.round_start = r;
}

static void enc_update(enc_t *e, const graft_wire_update_t *m, int dtype) {
    Graft__Update *u = &e->body.update;
    graft__update__init(u);
    u->round = m->round;
    u->worker_id = m->worker_id;
    u->n_tensors = m->ntensors;
    u->tensors = enc_tensors(e, m->tensors, m->ntensors, dtype);
    u->sample_count = m->sample_count;
    u->train_loss = m->train_loss;
    u->train_seconds = m->train_seconds;
    e->env.body_case = GRAFT__ENVELOPE__BODY_UPDATE;
    e->env.update = u;
}

/* The C split as the wire's enum. Any other split goes out unspecified,
 * which the receiver refuses, like every other field the encoder passes on
 * unchecked. */
static Graft__Split split_to_pb(int split) {
    if (split == GRAFT_SPLIT_DEV) return GRAFT__SPLIT__DEV;
    if (split == GRAFT_SPLIT_TEST) return GRAFT__SPLIT__TEST;
    return GRAFT__SPLIT__SPLIT_UNSPECIFIED;
}

static void enc_eval_request(enc_t *e, const graft_wire_eval_request_t *m, int dtype) {
    Graft__EvalRequest *r = &e->body.eval_request;
    graft__eval_request__init(r);
    r->round = m->round;
    r->n_tensors = m->ntensors;
    r->tensors = enc_tensors(e, m->tensors, m->ntensors, dtype);
    r->n_tasks = m->ntasks;
    r->tasks = enc_names(e, m->tasks, m->ntasks);
    r->split = split_to_pb(m->split);
    r->max_examples = m->max_examples;
    r->max_decodes = m->max_decodes;
    r->gen_tokens = m->gen_tokens;
    r->personal = m->personal != 0;
    e->env.body_case = GRAFT__ENVELOPE__BODY_EVAL_REQUEST;
    e->env.eval_request = r;
}

static int any_nonzero(const uint64_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i]) return 1;
    return 0;
}

/* A classification result sends its ECE bins, a generation result its chrF
 * orders. The other kind's statistics go out too when they are not all zero,
 * so that the receiver refuses a mixed result instead of the sender dropping
 * part of it unseen. */
static void enc_eval_stats(Graft__EvalResult *r, const graft_wire_eval_result_t *m) {
    int conf = 0;
    for (int b = 0; b < GRAFT_WIRE_ECE_BINS; b++) conf |= m->ece_confidence[b] != 0;
    if (m->nlabels > 0 || conf || any_nonzero(m->ece_count, GRAFT_WIRE_ECE_BINS) ||
        any_nonzero(m->ece_correct, GRAFT_WIRE_ECE_BINS)) {
        r->n_ece_count = r->n_ece_correct = r->n_ece_confidence = GRAFT_WIRE_ECE_BINS;
        r->ece_count = (uint64_t *)m->ece_count;
        r->ece_correct = (uint64_t *)m->ece_correct;
        r->ece_confidence = (double *)m->ece_confidence;
    }
    if (m->nlabels == 0 || any_nonzero(m->chrf_hyp, GRAFT_WIRE_CHRF_ORDER) ||
        any_nonzero(m->chrf_ref, GRAFT_WIRE_CHRF_ORDER) ||
        any_nonzero(m->chrf_match, GRAFT_WIRE_CHRF_ORDER)) {
        r->n_chrf_hyp = r->n_chrf_ref = r->n_chrf_match = GRAFT_WIRE_CHRF_ORDER;
        r->chrf_hyp = (uint64_t *)m->chrf_hyp;
        r->chrf_ref = (uint64_t *)m->chrf_ref;
        r->chrf_match = (uint64_t *)m->chrf_match;
    }
}

static void enc_eval_result(enc_t *e, const graft_wire_eval_result_t *m) {
    Graft__EvalResult *r = &e->body.eval_result;
    graft__eval_result__init(r);
    r->round = m->round;
    r->task = str_or_empty(m->task);
    r->split = split_to_pb(m->split);
    r->examples = m->examples;
    r->loss_sum = m->loss_sum;
    r->loss_count = m->loss_count;
    if (m->nlabels > 0) {
        r->n_confusion = (size_t)m->nlabels * (size_t)m->nlabels;
        r->confusion = m->confusion;
    }
    enc_eval_stats(r, m);
    r->decoded = m->decoded;
    r->sample_prompt = str_or_empty(m->sample_prompt);
    r->sample_output = str_or_empty(m->sample_output);
    r->sample_reference = str_or_empty(m->sample_reference);
    r->part = m->part;
    r->parts = m->parts;
    e->env.body_case = GRAFT__ENVELOPE__BODY_EVAL_RESULT;
    e->env.eval_result = r;
}

static void enc_small(enc_t *e, const graft_msg_t *m) {
    switch (m->type) {
    case GRAFT_MSG_HEARTBEAT:
        graft__heartbeat__init(&e->body.heartbeat);
        e->body.heartbeat.worker_id = m->heartbeat.worker_id;
        e->body.heartbeat.unix_ms = m->heartbeat.unix_ms;
        e->env.body_case = GRAFT__ENVELOPE__BODY_HEARTBEAT;
        e->env.heartbeat = &e->body.heartbeat;
        break;
    case GRAFT_MSG_SHUTDOWN:
        graft__shutdown__init(&e->body.shutdown);
        e->body.shutdown.reason = str_or_empty(m->shutdown.reason);
        e->body.shutdown.run_complete = m->shutdown.run_complete != 0;
        e->env.body_case = GRAFT__ENVELOPE__BODY_SHUTDOWN;
        e->env.shutdown = &e->body.shutdown;
        break;
    case GRAFT_MSG_ERROR:
        graft__error__init(&e->body.error);
        e->body.error.code = m->error.code;
        e->body.error.message = str_or_empty(m->error.message);
        e->env.body_case = GRAFT__ENVELOPE__BODY_ERROR;
        e->env.error = &e->body.error;
        break;
    default:
        GRAFT_ASSERT(!"graft_wire_encode: message type not set");
    }
}

int graft_wire_encode(const graft_msg_t *msg, graft_wire_dtype_t dtype, uint8_t **buf,
                      size_t *len) {
    GRAFT_ASSERT(dtype == GRAFT_DTYPE_F32 || dtype == GRAFT_DTYPE_BF16);
    enc_t e;
    memset(&e, 0, sizeof e);
    graft__envelope__init(&e.env);
    e.env.run_id = msg->run_id;
    switch (msg->type) {
    case GRAFT_MSG_HELLO: enc_hello(&e, &msg->hello); break;
    case GRAFT_MSG_ASSIGN: enc_assign(&e, &msg->assign); break;
    case GRAFT_MSG_ROUND_START: enc_round_start(&e, &msg->round_start, dtype); break;
    case GRAFT_MSG_UPDATE: enc_update(&e, &msg->update, dtype); break;
    case GRAFT_MSG_EVAL_REQUEST: enc_eval_request(&e, &msg->eval_request, dtype); break;
    case GRAFT_MSG_EVAL_RESULT: enc_eval_result(&e, &msg->eval_result); break;
    default: enc_small(&e, msg); break;
    }
    size_t n = graft__envelope__get_packed_size(&e.env);
    *buf = graft_xmalloc(n);
    *len = graft__envelope__pack(&e.env, *buf);
    enc_free(&e);
    if (*len != n) {
        LOG_ERROR("wire: packing a %s message gave %zu bytes, expected %zu",
                  graft_msg_type_name(msg->type), *len, n);
        free(*buf);
        *buf = NULL;
        *len = 0;
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

/* ---- decode: fields ----------------------------------------------------- */

/* Text that reaches the logs (names, setting values, reasons) must be at
 * most max bytes and free of control bytes, so that it is safe to log and
 * to quote in a reason. NULL reads as "". */
static int check_text(const char *s, const char *what, size_t max, char *why, size_t why_len) {
    size_t n = s ? strlen(s) : 0;
    if (n > max)
        return fail(why, why_len, GRAFT_EFORMAT, "%s is %zu bytes long (limit %zu)", what, n, max);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return fail(why, why_len, GRAFT_EFORMAT, "%s contains control byte 0x%02x", what, c);
    }
    return GRAFT_OK;
}

/* Identifiers must also be present. */
static int check_ident(const char *s, const char *what, char *why, size_t why_len) {
    if (!s || !*s) return fail(why, why_len, GRAFT_EFORMAT, "%s is missing or empty", what);
    return check_text(s, what, GRAFT_WIRE_MAX_NAME, why, why_len);
}

/* A copy of free text (check_text) in *out. */
static int dup_text(const char *s, const char *what, size_t max, char **out, char *why,
                    size_t why_len) {
    int rc = check_text(s, what, max, why, why_len);
    if (rc == GRAFT_OK) *out = graft_xstrdup(s ? s : "");
    return rc;
}

static int dup_ident(const char *s, const char *what, char **out, char *why, size_t why_len) {
    int rc = check_ident(s, what, why, why_len);
    if (rc == GRAFT_OK) *out = graft_xstrdup(s);
    return rc;
}

/* Copies of n identifiers, the repeated string field `what`, in *out;
 * *nout is set first so that a partial result is freed whole. */
static int dup_idents(char **in, size_t n, const char *what, char ***out, size_t *nout,
                      char *why, size_t why_len) {
    *out = graft_xcalloc(n, sizeof **out);
    *nout = n;
    for (size_t i = 0; i < n; i++) {
        char item[64];
        snprintf(item, sizeof item, "%s[%zu]", what, i);
        int rc = dup_ident(in[i], item, &(*out)[i], why, why_len);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

static int check_finite(double x, const char *what, char *why, size_t why_len) {
    if (!isfinite(x)) return fail(why, why_len, GRAFT_EFORMAT, "%s is %g, not finite", what, x);
    return GRAFT_OK;
}

static int check_nonneg(double x, const char *what, char *why, size_t why_len) {
    int rc = check_finite(x, what, why, why_len);
    if (rc == GRAFT_OK && x < 0)
        rc = fail(why, why_len, GRAFT_EFORMAT, "%s is %g, must be >= 0", what, x);
    return rc;
}

static void fmt_shape(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t off = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && off < cap; d++)
        off += (size_t)snprintf(out + off, cap - off, d ? ",%" PRId64 : "%" PRId64, shape[d]);
    if (off < cap) snprintf(out + off, cap - off, "]");
}

/* ---- decode: tensors ---------------------------------------------------- */

/* ndim, dims and numel; the caller has checked the name. */
static int tensor_shape(const Graft__Tensor *pb, const char *where, graft_wire_tensor_t *t,
                        char *why, size_t why_len) {
    if (pb->n_shape < 1 || pb->n_shape > GRAFT_WIRE_MAX_DIMS)
        return fail(why, why_len, GRAFT_ESHAPE, "%s tensor '%s' has %zu dims (1..%d allowed)",
                    where, pb->name, pb->n_shape, GRAFT_WIRE_MAX_DIMS);
    uint64_t numel = 1;
    for (size_t d = 0; d < pb->n_shape; d++) {
        int64_t n = pb->shape[d];
        if (n <= 0)
            return fail(why, why_len, GRAFT_ESHAPE, "%s tensor '%s' dim %zu is %" PRId64
                        " (must be > 0)", where, pb->name, d, n);
        if ((uint64_t)n > MAX_NUMEL || numel * (uint64_t)n > MAX_NUMEL)
            return fail(why, why_len, GRAFT_ESHAPE, "%s tensor '%s' has more than 2^32 elements",
                        where, pb->name);
        numel *= (uint64_t)n;
        t->shape[d] = n;
    }
    t->ndim = (int)pb->n_shape;
    t->numel = (size_t)numel;
    return GRAFT_OK;
}

static int tensor_schema(const graft_wire_tensor_t *t, const char *where,
                         const graft_wire_schema_t *schema, char *why, size_t why_len) {
    if (!schema) return GRAFT_OK;
    for (size_t i = 0; i < schema->n; i++) {
        const graft_wire_schema_entry_t *s = &schema->entries[i];
        if (strcmp(s->name, t->name) != 0) continue;
        int same = s->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = s->shape[d] == t->shape[d];
        if (same) return GRAFT_OK;
        char got[96], want[96];
        fmt_shape(got, sizeof got, t->ndim, t->shape);
        fmt_shape(want, sizeof want, s->ndim, s->shape);
        return fail(why, why_len, GRAFT_ESHAPE, "%s tensor '%s' has shape %s, expected %s", where,
                    t->name, got, want);
    }
    return fail(why, why_len, GRAFT_ESHAPE, "%s tensor '%s' is not a known tensor", where,
                t->name);
}

static int tensor_indices(const Graft__Tensor *pb, const char *where, graft_wire_tensor_t *t,
                          char *why, size_t why_len) {
    if (!pb->sparse) {
        if (pb->n_indices)
            return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' is dense but has %zu indices",
                        where, pb->name, pb->n_indices);
        return GRAFT_OK;
    }
    for (size_t k = 0; k < pb->n_indices; k++) {
        uint32_t ix = pb->indices[k];
        if (ix >= t->numel)
            return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' index %zu is %" PRIu32
                        ", out of range for %zu elements", where, pb->name, k, ix, t->numel);
        if (k && ix <= pb->indices[k - 1])
            return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' indices not strictly "
                        "increasing at %zu (%" PRIu32 " after %" PRIu32 ")", where, pb->name, k,
                        ix, pb->indices[k - 1]);
    }
    t->sparse = 1;
    t->nnz = pb->n_indices;
    t->indices = graft_xmalloc(t->nnz * sizeof *t->indices);
    memcpy(t->indices, pb->indices, t->nnz * sizeof *t->indices);
    return GRAFT_OK;
}

static int tensor_values(const Graft__Tensor *pb, const char *where, graft_wire_tensor_t *t,
                         char *why, size_t why_len) {
    if (pb->dtype != GRAFT__DTYPE__F32 && pb->dtype != GRAFT__DTYPE__BF16)
        return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' has unknown dtype %d", where,
                    pb->name, (int)pb->dtype);
    int dtype = pb->dtype == GRAFT__DTYPE__BF16 ? GRAFT_DTYPE_BF16 : GRAFT_DTYPE_F32;
    size_t count = t->sparse ? t->nnz : t->numel;
    size_t want = count * dtype_size(dtype);
    if (pb->data.len != want)
        return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' has %zu data bytes, expected %zu"
                    " (%zu %s values)", where, pb->name, pb->data.len, want, count,
                    dtype == GRAFT_DTYPE_BF16 ? "bf16" : "f32");
    t->data = graft_xmalloc(count * sizeof(float));
    size_t bad = get_values(pb->data.data, count, dtype, t->data);
    if (bad < count)
        return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' value %zu is %s", where,
                    pb->name, bad, isnan(t->data[bad]) ? "NaN" : "Inf");
    return GRAFT_OK;
}

static int tensor_from_pb(const Graft__Tensor *pb, const char *where, size_t i,
                          const graft_wire_schema_t *schema, graft_wire_tensor_t *t, char *why,
                          size_t why_len) {
    char what[80];
    snprintf(what, sizeof what, "%s tensor #%zu name", where, i);
    int rc = dup_ident(pb->name, what, &t->name, why, why_len);
    if (rc == GRAFT_OK) rc = tensor_shape(pb, where, t, why, why_len);
    if (rc == GRAFT_OK) rc = tensor_schema(t, where, schema, why, why_len);
    if (rc == GRAFT_OK) rc = tensor_indices(pb, where, t, why, why_len);
    if (rc == GRAFT_OK) rc = tensor_values(pb, where, t, why, why_len);
    return rc;
}

static int tensors_from_pb(Graft__Tensor **pbs, size_t n, const char *where,
                           const graft_wire_schema_t *schema, graft_wire_tensor_t **out,
                           size_t *nout, char *why, size_t why_len) {
    *out = graft_xcalloc(n, sizeof **out);
    *nout = n; /* so that a partial result is freed whole */
    for (size_t i = 0; i < n; i++) {
        int rc = tensor_from_pb(pbs[i], where, i, schema, &(*out)[i], why, why_len);
        if (rc) return rc;
        for (size_t j = 0; j < i; j++)
            if (strcmp((*out)[j].name, (*out)[i].name) == 0)
                return fail(why, why_len, GRAFT_EFORMAT, "%s tensor '%s' appears twice", where,
                            (*out)[i].name);
    }
    return GRAFT_OK;
}

static void tensors_free(graft_wire_tensor_t *ts, size_t n) {
    for (size_t i = 0; ts && i < n; i++) {
        free(ts[i].name);
        free(ts[i].data);
        free(ts[i].indices);
    }
    free(ts);
}

/* ---- decode: messages --------------------------------------------------- */

/* A hello's settings: named like options, values of bounded length
 * without control characters (they reach the logs), no name twice. */
static int dec_settings(const Graft__Hello *pb, graft_wire_hello_t *m, char *why,
                        size_t why_len) {
    if (pb->n_settings > GRAFT_WIRE_MAX_SETTINGS)
        return fail(why, why_len, GRAFT_EFORMAT, "hello has %zu settings, at most %d",
                    pb->n_settings, GRAFT_WIRE_MAX_SETTINGS);
    m->settings = graft_xcalloc(pb->n_settings, sizeof *m->settings);
    m->nsettings = pb->n_settings;
    for (size_t i = 0; i < pb->n_settings; i++) {
        const Graft__Setting *s = pb->settings[i];
        char what[48];
        snprintf(what, sizeof what, "hello.settings[%zu].name", i);
        int rc = dup_ident(s->name, what, &m->settings[i].name, why, why_len);
        if (rc) return rc;
        char vwhat[GRAFT_WIRE_MAX_NAME + 32];
        snprintf(vwhat, sizeof vwhat, "hello setting '%s'", s->name);
        rc = dup_text(s->value, vwhat, GRAFT_WIRE_MAX_SETTING, &m->settings[i].value, why,
                      why_len);
        if (rc) return rc;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->settings[j].name, s->name))
                return fail(why, why_len, GRAFT_EFORMAT, "hello setting '%s' appears twice",
                            s->name);
    }
    return GRAFT_OK;
}

static int dec_hello(const Graft__Hello *pb, graft_wire_hello_t *m, char *why, size_t why_len) {
    int rc = dup_ident(pb->version, "hello.version", &m->version, why, why_len);
    if (rc == GRAFT_OK) rc = dup_ident(pb->name, "hello.name", &m->name, why, why_len);
    if (rc) return rc;
    m->shards = graft_xcalloc(pb->n_shards, sizeof *m->shards);
    m->nshards = pb->n_shards;
    for (size_t i = 0; i < pb->n_shards; i++) {
        const Graft__Shard *s = pb->shards[i];
        char what[48];
        snprintf(what, sizeof what, "hello.shards[%zu].task", i);
        rc = dup_ident(s->task, what, &m->shards[i].task, why, why_len);
        if (rc) return rc;
        if (s->kind != GRAFT__TASK_KIND__CLASSIFICATION && s->kind != GRAFT__TASK_KIND__GENERATION)
            return fail(why, why_len, GRAFT_EFORMAT, "hello shard '%s' has unknown kind %d",
                        s->task, (int)s->kind);
        m->shards[i].kind = (graft_wire_kind_t)s->kind;
        m->shards[i].train_examples = s->train_examples;
    }
    return dec_settings(pb, m, why, why_len);
}

/* Label set i of an Assign: for one of its tasks, not repeated, labels
 * strictly increasing in strcmp order. */
static int dec_label_set(const Graft__LabelSet *pb, size_t i, graft_wire_assign_t *m,
                         graft_wire_label_set_t *out, char *why, size_t why_len) {
    char what[96];
    snprintf(what, sizeof what, "assign.label_sets[%zu].task", i);
    int rc = dup_ident(pb->task, what, &out->task, why, why_len);
    if (rc) return rc;
    size_t t = 0;
    while (t < m->ntasks && strcmp(m->tasks[t], out->task)) t++;
    if (t == m->ntasks)
        return fail(why, why_len, GRAFT_EFORMAT, "assign has labels for '%s', not one of its tasks",
                    out->task);
    for (size_t k = 0; k < i; k++)
        if (!strcmp(m->label_sets[k].task, out->task))
            return fail(why, why_len, GRAFT_EFORMAT, "assign repeats the labels of '%s'",
                        out->task);
    out->labels = graft_xcalloc(pb->n_labels, sizeof *out->labels);
    out->nlabels = pb->n_labels;
    for (size_t l = 0; l < pb->n_labels; l++) {
        snprintf(what, sizeof what, "assign.label_sets[%zu].labels[%zu]", i, l);
        if ((rc = dup_ident(pb->labels[l], what, &out->labels[l], why, why_len))) return rc;
        if (l > 0 && strcmp(out->labels[l - 1], out->labels[l]) >= 0)
            return fail(why, why_len, GRAFT_EFORMAT, "%s is not after \"%s\" (labels must be "
                        "sorted and distinct)", what, out->labels[l - 1]);
    }
    if (pb->n_prior && pb->n_prior != pb->n_labels)
        return fail(why, why_len, GRAFT_EFORMAT, "assign.label_sets[%zu] has %zu prior values "
                    "for %zu labels", i, pb->n_prior, pb->n_labels);
    for (size_t l = 0; l < pb->n_prior; l++) {
        snprintf(what, sizeof what, "assign.label_sets[%zu].prior[%zu]", i, l);
        if ((rc = check_nonneg(pb->prior[l], what, why, why_len))) return rc;
    }
    if (pb->n_prior) {
        out->prior = graft_xmalloc(pb->n_prior * sizeof *out->prior);
        memcpy(out->prior, pb->prior, pb->n_prior * sizeof *out->prior);
    }
    return GRAFT_OK;
}

const char *graft_run_id_text(uint64_t id, char *buf) {
    snprintf(buf, 17, "%016" PRIx64, id);
    return buf;
}

uint64_t graft_run_id_parse(const char *s, size_t len) {
    uint64_t id = 0;
    if (len != 16) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return 0;
        id = id << 4 | (uint64_t)d;
    }
    return id;
}

static int dec_assign(const Graft__Assign *pb, graft_wire_assign_t *m, char *why, size_t why_len) {
    if (pb->worker_id == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "assign.worker_id is 0 (workers start at 1)");
    if (pb->max_message_bytes > GRAFT_WIRE_HARD_MAX_BYTES)
        return fail(why, why_len, GRAFT_EFORMAT, "assign.max_message_bytes is %" PRIu64
                    ", over the hard limit of %zu", pb->max_message_bytes,
                    GRAFT_WIRE_HARD_MAX_BYTES);
    for (size_t i = 0; i < pb->n_earlier_run_ids; i++)
        if (pb->earlier_run_ids[i] == 0)
            return fail(why, why_len, GRAFT_EFORMAT, "assign.earlier_run_ids[%zu] is 0", i);
    m->worker_id = pb->worker_id;
    m->max_message_bytes = pb->max_message_bytes;
    m->personal = pb->personal;
    /* The newest: a later coordinator may name more. */
    size_t skip = pb->n_earlier_run_ids > GRAFT_WIRE_MAX_EARLIER_RUNS
                      ? pb->n_earlier_run_ids - GRAFT_WIRE_MAX_EARLIER_RUNS : 0;
    m->nearlier_runs = pb->n_earlier_run_ids - skip;
    for (size_t i = 0; i < m->nearlier_runs; i++)
        m->earlier_runs[i] = pb->earlier_run_ids[skip + i];
    int rc = dup_idents(pb->tasks, pb->n_tasks, "assign.tasks", &m->tasks, &m->ntasks, why,
                        why_len);
    if (rc) return rc;
    m->label_sets = graft_xcalloc(pb->n_label_sets, sizeof *m->label_sets);
    m->nlabel_sets = pb->n_label_sets;
    for (size_t i = 0; i < pb->n_label_sets; i++) {
        rc = dec_label_set(pb->label_sets[i], i, m, &m->label_sets[i], why, why_len);
        if (rc) return rc;
    }
    return GRAFT_OK;
}

static int dec_hyper(const Graft__Hyper *pb, graft_wire_hyper_t *h, char *why, size_t why_len) {
    if (!pb) return fail(why, why_len, GRAFT_EFORMAT, "round_start.hyper is missing");
    int rc = check_nonneg(pb->learning_rate, "round_start.hyper.learning_rate", why, why_len);
    if (rc == GRAFT_OK)
        rc = check_nonneg(pb->weight_decay, "round_start.hyper.weight_decay", why, why_len);
    if (rc == GRAFT_OK)
        rc = check_nonneg(pb->fedprox_mu, "round_start.hyper.fedprox_mu", why, why_len);
    if (rc == GRAFT_OK)
        rc = check_nonneg(pb->head_lr_scale, "round_start.hyper.head_lr_scale", why, why_len);
    if (rc == GRAFT_OK)
        rc = check_nonneg(pb->logit_adjust, "round_start.hyper.logit_adjust", why, why_len);
    if (rc) return rc;
    if (pb->local_steps == 0 || pb->batch_size == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "round_start.hyper has local_steps %" PRIu32
                    " and batch_size %" PRIu32 " (both must be > 0)", pb->local_steps,
                    pb->batch_size);
    if (pb->n_step_learning_rates && pb->n_step_learning_rates != pb->local_steps)
        return fail(why, why_len, GRAFT_EFORMAT, "round_start.hyper has %zu step learning rates "
                    "for %" PRIu32 " local steps", pb->n_step_learning_rates, pb->local_steps);
    for (size_t i = 0; i < pb->n_step_learning_rates; i++) {
        char what[64];
        snprintf(what, sizeof what, "round_start.hyper.step_learning_rates[%zu]", i);
        if ((rc = check_nonneg(pb->step_learning_rates[i], what, why, why_len))) return rc;
    }
    if (pb->n_step_learning_rates) {
        h->step_lr = graft_xmalloc(pb->n_step_learning_rates * sizeof *h->step_lr);
        memcpy(h->step_lr, pb->step_learning_rates, pb->n_step_learning_rates * sizeof(float));
        h->nstep_lr = pb->n_step_learning_rates;
    }
    h->learning_rate = pb->learning_rate;
    h->local_steps = pb->local_steps;
    h->batch_size = pb->batch_size;
    h->weight_decay = pb->weight_decay;
    h->fedprox_mu = pb->fedprox_mu;
    h->freeze_lora_a = pb->freeze_lora_a;
    h->head_lr_scale = pb->head_lr_scale;
    h->keep_optimizer_state = pb->keep_optimizer_state;
    h->logit_adjust = pb->logit_adjust;
    h->channels_selected = pb->channels_selected;
    h->personal = pb->personal;
    return GRAFT_OK;
}

static int dec_round_start(const Graft__RoundStart *pb, const graft_wire_opts_t *o,
                           graft_wire_round_start_t *m, char *why, size_t why_len) {
    m->round = pb->round;
    m->deadline_ms = pb->deadline_ms;
    if (pb->deadline_ms == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "round_start.deadline_ms is 0");
    int rc = dec_hyper(pb->hyper, &m->hyper, why, why_len);
    if (rc) return rc;
    if (pb->reduce) {
        rc = check_nonneg(pb->reduce->clip_norm, "round_start.reduce.clip_norm", why, why_len);
        if (rc) return rc;
        m->reduce = (graft_wire_reduce_t){.collective = pb->reduce->collective,
                                          .clip_norm = pb->reduce->clip_norm,
                                          .lora_products = pb->reduce->lora_products,
                                          .shared_weight = pb->reduce->shared_weight};
    }
    return tensors_from_pb(pb->tensors, pb->n_tensors, "round_start", o->schema, &m->tensors,
                           &m->ntensors, why, why_len);
}

static int dec_update(const Graft__Update *pb, const graft_wire_opts_t *o, graft_wire_update_t *m,
                      char *why, size_t why_len) {
    if (pb->worker_id == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "update.worker_id is 0 (workers start at 1)");
    if (pb->sample_count == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "update.sample_count is 0");
    int rc = check_nonneg(pb->train_loss, "update.train_loss", why, why_len);
    if (rc == GRAFT_OK) rc = check_nonneg(pb->train_seconds, "update.train_seconds", why, why_len);
    if (rc) return rc;
    m->round = pb->round;
    m->worker_id = pb->worker_id;
    m->sample_count = pb->sample_count;
    m->train_loss = pb->train_loss;
    m->train_seconds = pb->train_seconds;
    return tensors_from_pb(pb->tensors, pb->n_tensors, "update", o->schema, &m->tensors,
                           &m->ntensors, why, why_len);
}

/* The wire's split as the C split (task.h); unspecified or unknown is refused. */
static int dec_split(Graft__Split s, const char *what, int *out, char *why, size_t why_len) {
    switch (s) {
    case GRAFT__SPLIT__DEV: *out = GRAFT_SPLIT_DEV; return GRAFT_OK;
    case GRAFT__SPLIT__TEST: *out = GRAFT_SPLIT_TEST; return GRAFT_OK;
    default:
        return fail(why, why_len, GRAFT_EFORMAT, "%s is %d (1 dev or 2 test expected)", what,
                    (int)s);
    }
}

/* At least one task, at most a run's worth, each an identifier, none twice. */
static int dec_eval_tasks(const Graft__EvalRequest *pb, graft_wire_eval_request_t *m, char *why,
                          size_t why_len) {
    if (pb->n_tasks == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_request.tasks is empty");
    if (pb->n_tasks > GRAFT_MAX_TASKS)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_request has %zu tasks, at most %d",
                    pb->n_tasks, GRAFT_MAX_TASKS);
    int rc = dup_idents(pb->tasks, pb->n_tasks, "eval_request.tasks", &m->tasks, &m->ntasks, why,
                        why_len);
    if (rc) return rc;
    for (size_t i = 0; i < m->ntasks; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(m->tasks[j], m->tasks[i]))
                return fail(why, why_len, GRAFT_EFORMAT, "eval_request task '%s' appears twice",
                            m->tasks[i]);
    return GRAFT_OK;
}

static int dec_eval_request(const Graft__EvalRequest *pb, const graft_wire_opts_t *o,
                            graft_wire_eval_request_t *m, char *why, size_t why_len) {
    m->round = pb->round;
    m->max_examples = pb->max_examples;
    m->max_decodes = pb->max_decodes;
    m->gen_tokens = pb->gen_tokens;
    m->personal = pb->personal;
    int rc = dec_eval_tasks(pb, m, why, why_len);
    if (rc == GRAFT_OK) rc = dec_split(pb->split, "eval_request.split", &m->split, why, why_len);
    if (rc) return rc;
    if (pb->gen_tokens == 0)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_request.gen_tokens is 0");
    return tensors_from_pb(pb->tensors, pb->n_tensors, "eval_request", o->schema, &m->tensors,
                           &m->ntensors, why, why_len);
}

/* n counts that must add up to want (the result's examples), summed without
 * wrapping around: a peer could otherwise make huge counts sum to anything. */
static int check_sum(const uint64_t *x, size_t n, uint64_t want, const char *what, char *why,
                     size_t why_len) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (x[i] > UINT64_MAX - sum)
            return fail(why, why_len, GRAFT_EFORMAT, "%s counts overflow 64 bits", what);
        sum += x[i];
    }
    if (sum != want)
        return fail(why, why_len, GRAFT_EFORMAT, "%s sums to %" PRIu64 ", examples is %" PRIu64,
                    what, sum, want);
    return GRAFT_OK;
}

/* K x K counts with 1 <= K <= GRAFT_WIRE_MAX_LABELS, or none (generation);
 * sets nlabels to K. */
static int dec_confusion(const Graft__EvalResult *pb, graft_wire_eval_result_t *m, char *why,
                         size_t why_len) {
    size_t n = pb->n_confusion, k = 1;
    if (n == 0) return GRAFT_OK;
    if (n > (size_t)GRAFT_WIRE_MAX_LABELS * GRAFT_WIRE_MAX_LABELS)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.confusion has %zu counts, more "
                    "than %d x %d", n, GRAFT_WIRE_MAX_LABELS, GRAFT_WIRE_MAX_LABELS);
    while (k * k < n) k++;
    if (k * k != n)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.confusion has %zu counts, not K x K",
                    n);
    m->confusion = graft_xmalloc(n * sizeof *m->confusion);
    memcpy(m->confusion, pb->confusion, n * sizeof *m->confusion);
    m->nlabels = (int)k;
    return GRAFT_OK;
}

/* A bin's summed confidence is at most its count, each confidence being a
 * probability. The worker sums float softmax maxima, which can round a few
 * ulps (2^-23 each) above 1, so each example may add 1e-6 more, and 1e-9
 * absolute covers an empty bin's rounding; one example too many is far
 * beyond this slack. */
static int check_bin(const Graft__EvalResult *pb, int b, char *why, size_t why_len) {
    uint64_t count = pb->ece_count[b];
    if (pb->ece_correct[b] > count)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.ece_correct[%d] is %" PRIu64
                    ", more than ece_count[%d] %" PRIu64, b, pb->ece_correct[b], b, count);
    char what[48];
    snprintf(what, sizeof what, "eval_result.ece_confidence[%d]", b);
    int rc = check_nonneg(pb->ece_confidence[b], what, why, why_len);
    if (rc == GRAFT_OK && pb->ece_confidence[b] > (double)count * (1.0 + 1e-6) + 1e-9)
        rc = fail(why, why_len, GRAFT_EFORMAT, "%s is %g, more than ece_count[%d] %" PRIu64, what,
                  pb->ece_confidence[b], b, count);
    return rc;
}

/* nlabels > 0: confusion and 15 ECE bins that account for every example,
 * one loss term per example, no chrF statistics. */
static int dec_classification(const Graft__EvalResult *pb, graft_wire_eval_result_t *m,
                              char *why, size_t why_len) {
    const size_t n[3] = {pb->n_ece_count, pb->n_ece_correct, pb->n_ece_confidence};
    static const char *names[3] = {"ece_count", "ece_correct", "ece_confidence"};
    for (int k = 0; k < 3; k++)
        if (n[k] != GRAFT_WIRE_ECE_BINS)
            return fail(why, why_len, GRAFT_EFORMAT, "eval_result.%s has %zu bins, expected %d",
                        names[k], n[k], GRAFT_WIRE_ECE_BINS);
    size_t kk = (size_t)m->nlabels * (size_t)m->nlabels;
    int rc = check_sum(m->confusion, kk, m->examples, "eval_result.confusion", why, why_len);
    if (rc == GRAFT_OK)
        rc = check_sum(pb->ece_count, GRAFT_WIRE_ECE_BINS, m->examples, "eval_result.ece_count",
                       why, why_len);
    for (int b = 0; rc == GRAFT_OK && b < GRAFT_WIRE_ECE_BINS; b++)
        rc = check_bin(pb, b, why, why_len);
    if (rc) return rc;
    if (pb->loss_count != pb->examples)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.loss_count is %" PRIu64 ", examples "
                    "is %" PRIu64 " (one loss term per row)", pb->loss_count, pb->examples);
    if (pb->n_chrf_hyp || pb->n_chrf_ref || pb->n_chrf_match || pb->decoded)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result has a confusion matrix and chrF "
                    "statistics or decodes (classification has none)");
    memcpy(m->ece_count, pb->ece_count, sizeof m->ece_count);
    memcpy(m->ece_correct, pb->ece_correct, sizeof m->ece_correct);
    memcpy(m->ece_confidence, pb->ece_confidence, sizeof m->ece_confidence);
    return GRAFT_OK;
}

/* nlabels == 0: no ECE bins; chrF statistics for every order, or none
 * (then no decodes); matches <= min(hyp, ref); decoded <= examples. */
static int dec_generation(const Graft__EvalResult *pb, graft_wire_eval_result_t *m, char *why,
                          size_t why_len) {
    if (pb->n_ece_count || pb->n_ece_correct || pb->n_ece_confidence)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result has ECE bins but no confusion "
                    "matrix (generation has no bins)");
    size_t n = pb->n_chrf_hyp;
    if ((n != 0 && n != GRAFT_WIRE_CHRF_ORDER) || pb->n_chrf_ref != n || pb->n_chrf_match != n)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result has %zu chrf_hyp, %zu chrf_ref and "
                    "%zu chrf_match values (%d each, or none)", n, pb->n_chrf_ref,
                    pb->n_chrf_match, GRAFT_WIRE_CHRF_ORDER);
    if (n == 0 && pb->decoded)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.decoded is %" PRIu64 " without chrF "
                    "statistics", pb->decoded);
    if (pb->decoded > pb->examples)
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result.decoded is %" PRIu64 ", more than "
                    "examples %" PRIu64, pb->decoded, pb->examples);
    for (size_t i = 0; i < n; i++) {
        uint64_t lo = pb->chrf_hyp[i] < pb->chrf_ref[i] ? pb->chrf_hyp[i] : pb->chrf_ref[i];
        if (pb->chrf_match[i] > lo)
            return fail(why, why_len, GRAFT_EFORMAT, "eval_result.chrf_match[%zu] is %" PRIu64
                        ", more than min(chrf_hyp, chrf_ref) %" PRIu64, i, pb->chrf_match[i], lo);
        m->chrf_hyp[i] = pb->chrf_hyp[i];
        m->chrf_ref[i] = pb->chrf_ref[i];
        m->chrf_match[i] = pb->chrf_match[i];
    }
    return GRAFT_OK;
}

/* Samples: printable text of bounded length, decoded as malloc'd strings
 * ("" for none). */
static int dec_samples(const Graft__EvalResult *pb, graft_wire_eval_result_t *m, char *why,
                       size_t why_len) {
    int rc = dup_text(pb->sample_prompt, "eval_result.sample_prompt", GRAFT_WIRE_MAX_SAMPLE,
                      &m->sample_prompt, why, why_len);
    if (rc == GRAFT_OK)
        rc = dup_text(pb->sample_output, "eval_result.sample_output", GRAFT_WIRE_MAX_SAMPLE,
                      &m->sample_output, why, why_len);
    if (rc == GRAFT_OK)
        rc = dup_text(pb->sample_reference, "eval_result.sample_reference",
                      GRAFT_WIRE_MAX_SAMPLE, &m->sample_reference, why, why_len);
    return rc;
}

static int dec_eval_result(const Graft__EvalResult *pb, graft_wire_eval_result_t *m, char *why,
                           size_t why_len) {
    m->round = pb->round;
    m->examples = pb->examples;
    m->loss_sum = pb->loss_sum;
    m->loss_count = pb->loss_count;
    m->decoded = pb->decoded;
    m->part = pb->part;
    m->parts = pb->parts;
    if (pb->parts > GRAFT_WIRE_MAX_PARTS || (pb->parts ? pb->part >= pb->parts : pb->part != 0))
        return fail(why, why_len, GRAFT_EFORMAT, "eval_result part %u of %u (part < parts <= %d, "
                    "or 0 of 0)", pb->part, pb->parts, GRAFT_WIRE_MAX_PARTS);
    int rc = dup_ident(pb->task, "eval_result.task", &m->task, why, why_len);
    if (rc == GRAFT_OK) rc = dec_split(pb->split, "eval_result.split", &m->split, why, why_len);
    if (rc == GRAFT_OK) rc = check_nonneg(pb->loss_sum, "eval_result.loss_sum", why, why_len);
    if (rc == GRAFT_OK) rc = dec_samples(pb, m, why, why_len);
    if (rc == GRAFT_OK) rc = dec_confusion(pb, m, why, why_len);
    if (rc) return rc;
    return m->nlabels > 0 ? dec_classification(pb, m, why, why_len)
                          : dec_generation(pb, m, why, why_len);
}

static int dec_small(const Graft__Envelope *env, graft_msg_t *m, char *why, size_t why_len) {
    switch (env->body_case) {
    case GRAFT__ENVELOPE__BODY_HEARTBEAT:
        if (env->heartbeat->worker_id == 0)
            return fail(why, why_len, GRAFT_EFORMAT, "heartbeat.worker_id is 0");
        m->heartbeat.worker_id = env->heartbeat->worker_id;
        m->heartbeat.unix_ms = env->heartbeat->unix_ms;
        return GRAFT_OK;
    case GRAFT__ENVELOPE__BODY_SHUTDOWN:
        m->shutdown.run_complete = env->shutdown->run_complete;
        return dup_text(env->shutdown->reason, "shutdown.reason", GRAFT_WIRE_MAX_TEXT,
                        &m->shutdown.reason, why, why_len);
    case GRAFT__ENVELOPE__BODY_ERROR:
        m->error.code = env->error->code;
        return dup_text(env->error->message, "error.message", GRAFT_WIRE_MAX_TEXT,
                        &m->error.message, why, why_len);
    default:
        return fail(why, why_len, GRAFT_EFORMAT, "message has no body (field %d)",
                    (int)env->body_case);
    }
}

static graft_msg_type_t type_of(Graft__Envelope__BodyCase c) {
    switch (c) {
    case GRAFT__ENVELOPE__BODY_HELLO: return GRAFT_MSG_HELLO;
    case GRAFT__ENVELOPE__BODY_ASSIGN: return GRAFT_MSG_ASSIGN;
    case GRAFT__ENVELOPE__BODY_ROUND_START: return GRAFT_MSG_ROUND_START;
    case GRAFT__ENVELOPE__BODY_UPDATE: return GRAFT_MSG_UPDATE;
    case GRAFT__ENVELOPE__BODY_EVAL_REQUEST: return GRAFT_MSG_EVAL_REQUEST;
    case GRAFT__ENVELOPE__BODY_EVAL_RESULT: return GRAFT_MSG_EVAL_RESULT;
    case GRAFT__ENVELOPE__BODY_HEARTBEAT: return GRAFT_MSG_HEARTBEAT;
    case GRAFT__ENVELOPE__BODY_SHUTDOWN: return GRAFT_MSG_SHUTDOWN;
    case GRAFT__ENVELOPE__BODY_ERROR: return GRAFT_MSG_ERROR;
    default: return GRAFT_MSG_NONE;
    }
}

static int check_run(const Graft__Envelope *env, graft_msg_type_t type, uint64_t want, char *why,
                     size_t why_len) {
    if (want == 0 || env->run_id == want) return GRAFT_OK;
    if (type == GRAFT_MSG_HELLO && env->run_id == 0) return GRAFT_OK; /* a worker joining */
    return fail(why, why_len, GRAFT_ESTATE, "%s message is from run %016" PRIx64
                ", this run is %016" PRIx64, graft_msg_type_name(type), env->run_id, want);
}

static int from_envelope(const Graft__Envelope *env, const graft_wire_opts_t *o, graft_msg_t *m,
                         char *why, size_t why_len) {
    m->type = type_of(env->body_case);
    m->run_id = env->run_id;
    if (m->type == GRAFT_MSG_NONE)
        return fail(why, why_len, GRAFT_EFORMAT, "message has no body");
    int rc = check_run(env, m->type, o->run_id, why, why_len);
    if (rc) return rc;
    switch (m->type) {
    case GRAFT_MSG_HELLO: return dec_hello(env->hello, &m->hello, why, why_len);
    case GRAFT_MSG_ASSIGN: return dec_assign(env->assign, &m->assign, why, why_len);
    case GRAFT_MSG_ROUND_START:
        return dec_round_start(env->round_start, o, &m->round_start, why, why_len);
    case GRAFT_MSG_UPDATE: return dec_update(env->update, o, &m->update, why, why_len);
    case GRAFT_MSG_EVAL_REQUEST:
        return dec_eval_request(env->eval_request, o, &m->eval_request, why, why_len);
    case GRAFT_MSG_EVAL_RESULT:
        return dec_eval_result(env->eval_result, &m->eval_result, why, why_len);
    default: return dec_small(env, m, why, why_len);
    }
}

/* protobuf-c allocates per submessage, so a few bytes on the wire (an empty
 * repeated message) can cost a hundred in memory. Unpacking gets a budget a
 * legitimate message never needs (packed 1-byte indices become 4 bytes) and
 * fails cleanly past it instead of letting a peer exhaust the coordinator. */
typedef struct {
    size_t used, budget;
    int exhausted;
} budget_t;

static void *budget_alloc(void *data, size_t size) {
    budget_t *b = data;
    if (size > b->budget - b->used) {
        b->exhausted = 1;
        return NULL;
    }
    b->used += size;
    return malloc(size);
}

static void budget_free(void *data, void *p) {
    (void)data;
    free(p);
}

/* ---- message limits ------------------------------------------------------ */

/* Protobuf's framing around one tensor, at most: the submessage's tag and
 * length, the name (tag, length, GRAFT_WIRE_MAX_NAME bytes), the packed
 * shape (tag, length, 10-byte varints), dtype, sparse, and the data's tag
 * and length; 512 with room to spare. */
#define TENSOR_FRAMING 512
/* Everything else of a RoundStart or Update (the envelope, round, hyper,
 * reduce, the rates' tag and length) is under 300 bytes; of an EvalRequest,
 * its task names (a tag, a 2-byte length and at most GRAFT_WIRE_MAX_NAME
 * bytes each) and under 100 bytes more. */
#define MESSAGE_FRAMING (1024 + GRAFT_MAX_TASKS * (GRAFT_WIRE_MAX_NAME + 3))
#define MIN_TEST_MAX_BYTES 4096

size_t graft_wire_modules_bytes(const size_t *numel, size_t n, size_t nsteps) {
    size_t bytes = MESSAGE_FRAMING + nsteps * sizeof(float);
    for (size_t i = 0; i < n; i++) bytes += TENSOR_FRAMING + numel[i] * sizeof(float);
    return bytes;
}

size_t graft_wire_default_max_bytes(void) {
    const char *s = getenv("GRAFT_TEST_DEFAULT_MAX_BYTES");
    char *end = NULL;
    unsigned long long v = s && *s ? strtoull(s, &end, 10) : 0;
    if (v >= MIN_TEST_MAX_BYTES && v <= GRAFT_WIRE_DEFAULT_MAX_BYTES && end && !*end)
        return (size_t)v;
    return GRAFT_WIRE_DEFAULT_MAX_BYTES;
}

int graft_wire_max_bytes(const size_t *numel, size_t n, size_t nsteps, size_t *max) {
    size_t bytes = graft_wire_modules_bytes(numel, n, nsteps);
    size_t floor = graft_wire_default_max_bytes();
    *max = bytes > floor ? bytes : floor;
    return *max > GRAFT_WIRE_HARD_MAX_BYTES ? GRAFT_EINVAL : GRAFT_OK;
}

int graft_wire_decode(const uint8_t *buf, size_t len, const graft_wire_opts_t *opts,
                      graft_msg_t *out, char *why, size_t why_len) {
    static const graft_wire_opts_t defaults = {0, 0, NULL};
    const graft_wire_opts_t *o = opts ? opts : &defaults;
    size_t max = o->max_bytes ? o->max_bytes : graft_wire_default_max_bytes();
    memset(out, 0, sizeof *out);
    if (why && why_len) why[0] = '\0';
    if (len > max)
        return fail(why, why_len, GRAFT_EFORMAT, "message of %zu bytes exceeds the limit of %zu",
                    len, max);
    budget_t budget = {0, 8 * len + (64 << 10), 0};
    ProtobufCAllocator alloc = {budget_alloc, budget_free, &budget};
    Graft__Envelope *env = graft__envelope__unpack(&alloc, len, buf);
    if (!env && budget.exhausted)
        return fail(why, why_len, GRAFT_EFORMAT, "message of %zu bytes needs more than %zu bytes "
                    "to unpack (a flood of empty fields?)", len, budget.budget);
    if (!env)
        return fail(why, why_len, GRAFT_EFORMAT, "not a graft message: %zu bytes that do not "
                    "unpack (truncated or garbage)", len);
    int rc = from_envelope(env, o, out, why, why_len);
    graft__envelope__free_unpacked(env, &alloc);
    if (rc) graft_msg_free(out);
    return rc;
}

/* ---- after decode ------------------------------------------------------- */

void graft_msg_free(graft_msg_t *m) {
    if (!m) return;
    switch (m->type) {
    case GRAFT_MSG_HELLO:
        free(m->hello.version);
        free(m->hello.name);
        for (size_t i = 0; m->hello.shards && i < m->hello.nshards; i++)
            free(m->hello.shards[i].task);
        free(m->hello.shards);
        for (size_t i = 0; m->hello.settings && i < m->hello.nsettings; i++) {
            free(m->hello.settings[i].name);
            free(m->hello.settings[i].value);
        }
        free(m->hello.settings);
        break;
    case GRAFT_MSG_ASSIGN:
        for (size_t i = 0; m->assign.tasks && i < m->assign.ntasks; i++) free(m->assign.tasks[i]);
        free(m->assign.tasks);
        for (size_t i = 0; m->assign.label_sets && i < m->assign.nlabel_sets; i++) {
            graft_wire_label_set_t *ls = &m->assign.label_sets[i];
            for (size_t l = 0; ls->labels && l < ls->nlabels; l++) free(ls->labels[l]);
            free(ls->labels);
            free(ls->prior);
            free(ls->task);
        }
        free(m->assign.label_sets);
        break;
    case GRAFT_MSG_ROUND_START:
        tensors_free(m->round_start.tensors, m->round_start.ntensors);
        free(m->round_start.hyper.step_lr);
        break;
    case GRAFT_MSG_UPDATE: tensors_free(m->update.tensors, m->update.ntensors); break;
    case GRAFT_MSG_EVAL_REQUEST:
        for (size_t i = 0; m->eval_request.tasks && i < m->eval_request.ntasks; i++)
            free(m->eval_request.tasks[i]);
        free(m->eval_request.tasks);
        tensors_free(m->eval_request.tensors, m->eval_request.ntensors);
        break;
    case GRAFT_MSG_EVAL_RESULT:
        free(m->eval_result.task);
        free(m->eval_result.confusion);
        free(m->eval_result.sample_prompt);
        free(m->eval_result.sample_output);
        free(m->eval_result.sample_reference);
        break;
    case GRAFT_MSG_SHUTDOWN: free(m->shutdown.reason); break;
    case GRAFT_MSG_ERROR: free(m->error.message); break;
    default: break;
    }
    memset(m, 0, sizeof *m);
}

int graft_wire_expect_round(const graft_msg_t *m, uint64_t round, char *why, size_t why_len) {
    uint64_t got;
    switch (m->type) {
    case GRAFT_MSG_ROUND_START: got = m->round_start.round; break;
    case GRAFT_MSG_UPDATE: got = m->update.round; break;
    case GRAFT_MSG_EVAL_REQUEST: got = m->eval_request.round; break;
    case GRAFT_MSG_EVAL_RESULT: got = m->eval_result.round; break;
    default:
        return fail(why, why_len, GRAFT_EINVAL, "%s message carries no round",
                    graft_msg_type_name(m->type));
    }
    if (got == round) return GRAFT_OK;
    return fail(why, why_len, GRAFT_ESTATE, "%s message is for round %" PRIu64
                ", the current round is %" PRIu64, graft_msg_type_name(m->type), got, round);
}
