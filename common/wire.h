/* wire.h — graft's messages and their wire encoding (proto/graft.proto).
 *
 * This module is the only one that knows protobuf-c. Everything else builds
 * and reads graft_msg_t, a tagged union of plain C structs, and moves opaque
 * byte buffers through a transport (transport.h).
 *
 * Decoding is the trust boundary: graft_wire_decode() checks the size before
 * unpacking, then every field (run id, required fields, dtypes, data lengths,
 * shapes, sparse indices, finite values, and names and shapes against an
 * optional schema) and refuses the whole message on the first problem, with a
 * negative GRAFT_E* code and a one-line reason in the caller's `why` buffer
 * naming the field or tensor. The caller logs the reason with the peer name.
 * Codes: GRAFT_EFORMAT malformed bytes or fields, GRAFT_ESHAPE a shape that
 * is out of range or disagrees with the schema, GRAFT_ESTATE a message from
 * another run or round.
 *
 * Ownership:
 *  - A decoded graft_msg_t owns every pointer inside it (strings, arrays,
 *    tensor data and indices); release it with graft_msg_free().
 *  - For encoding, the caller builds a graft_msg_t whose pointers may point at
 *    its own memory (e.g. tensor data straight into a parameter block);
 *    graft_wire_encode() only reads it. Call graft_msg_free() on such a
 *    message only if every pointer in it came from malloc.
 *  - graft_wire_encode() returns a malloc'd buffer the caller frees.
 */
#ifndef GRAFT_WIRE_H
#define GRAFT_WIRE_H

#include "graft.h"

#define GRAFT_WIRE_MAX_DIMS 4
/* Message limits. A run's limit is derived from its modules
 * (graft_wire_max_bytes) and is at least the default, which also applies
 * before a worker knows the run's. No message may exceed the hard limit:
 * protobuf's 2 GiB for one message, and MPI's int count. */
#define GRAFT_WIRE_DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define GRAFT_WIRE_HARD_MAX_BYTES ((size_t)INT32_MAX)
/* Run ids an Assign names as continued (proto Assign.earlier_run_ids); a
 * decoder keeps the last this many of a longer list. */
#define GRAFT_WIRE_MAX_EARLIER_RUNS 7

/* A run id as checkpoints, events and logs write it: 16 lowercase hex
 * digits into buf (17 bytes), which it returns. */
const char *graft_run_id_text(uint64_t id, char *buf);
/* The run id that len bytes of s write as graft_run_id_text does; 0 when
 * they are not one. */
uint64_t graft_run_id_parse(const char *s, size_t len);
/* Identifiers (tensor, task, worker names) are at most this long and
 * printable, so that a reason naming one is safe to log. */
#define GRAFT_WIRE_MAX_NAME 255
#define GRAFT_WIRE_MAX_SETTING 1024 /* bytes of a hello setting's value */
#define GRAFT_WIRE_MAX_TEXT 2048    /* bytes of a shutdown's reason, an error's message */
#define GRAFT_WIRE_MAX_SETTINGS 64  /* settings in a hello */

typedef enum {
    GRAFT_MSG_NONE = 0,
    GRAFT_MSG_HELLO,
    GRAFT_MSG_ASSIGN,
    GRAFT_MSG_ROUND_START,
    GRAFT_MSG_UPDATE,
    GRAFT_MSG_EVAL_REQUEST,
    GRAFT_MSG_EVAL_RESULT,
    GRAFT_MSG_HEARTBEAT,
    GRAFT_MSG_SHUTDOWN,
    GRAFT_MSG_ERROR,
} graft_msg_type_t;

/* Encoding of tensor values on the wire; decoded tensors are always fp32. */
typedef enum { GRAFT_DTYPE_F32 = 1, GRAFT_DTYPE_BF16 = 2 } graft_wire_dtype_t;

typedef enum { GRAFT_KIND_CLASSIFICATION = 1, GRAFT_KIND_GENERATION = 2 } graft_wire_kind_t;

/* Dense: data holds numel values. Sparse: the dense tensor has numel
 * elements; indices[0..nnz) are flat row-major positions, strictly
 * increasing, and data[0..nnz) their values. */
typedef struct {
    char *name;
    int ndim;
    int64_t shape[GRAFT_WIRE_MAX_DIMS];
    float *data;
    size_t numel;
    uint32_t *indices;
    size_t nnz;
    int sparse;
} graft_wire_tensor_t;

typedef struct {
    char *task;
    graft_wire_kind_t kind;
    uint64_t train_examples;
} graft_wire_shard_t;

typedef struct {
    char *name;  /* an option name (identifier rules) */
    char *value; /* at most GRAFT_WIRE_MAX_SETTING bytes */
} graft_wire_setting_t;

typedef struct {
    char *version;
    char *name;
    graft_wire_shard_t *shards;
    size_t nshards;
    /* Settings that must agree with the coordinator's (name, value); none
     * from an older worker. */
    graft_wire_setting_t *settings;
    size_t nsettings;
} graft_wire_hello_t;

/* A classification task's labels, strcmp-sorted and distinct (checked on
 * decode); each label obeys the identifier rules. */
typedef struct {
    char *task;
    char **labels;
    size_t nlabels;
    float *prior; /* nlabels training shares (finite, >= 0), or NULL: not known */
} graft_wire_label_set_t;

typedef struct {
    uint32_t worker_id; /* >= 1; peer 0 is the coordinator */
    char **tasks;
    size_t ntasks;
    graft_wire_label_set_t *label_sets; /* for tasks of `tasks`, each at most once */
    size_t nlabel_sets;
    uint64_t max_message_bytes; /* the run's message limit; 0: not sent (the default) */
    int personal; /* --personalize: the worker keeps its task modules (proto Assign) */
    /* The runs this one continues (a coordinator resumed with other job
     * options), oldest first; each nonzero. */
    uint64_t earlier_runs[GRAFT_WIRE_MAX_EARLIER_RUNS];
    size_t nearlier_runs;
} graft_wire_assign_t;

typedef struct {
    float learning_rate;
    uint32_t local_steps;
    uint32_t batch_size;
    float weight_decay;
    float fedprox_mu;
    float *step_lr;  /* nstep_lr == local_steps rates, one per local step, or NULL/0 */
    size_t nstep_lr;
    int freeze_lora_a;
    float head_lr_scale; /* heads' rate over the modules' (0: 1) */
    int keep_optimizer_state; /* the worker keeps its AdamW state across rounds */
    float logit_adjust;       /* tau of the heads' label-shift correction (0: off) */
    int channels_selected;    /* two-stage channels: stage 2 (select from the scores sent) */
    int personal;             /* the task scopes are the worker's own this round */
} graft_wire_hyper_t;

/* How a round's modules come back (all zero: as tensors in the Update). */
typedef struct {
    int collective;    /* an Update without tensors, then MPI reductions */
    float clip_norm;   /* > 0: clip each scope's delta */
    int lora_products; /* contributions carry the LoRA products */
    uint64_t shared_weight; /* the shared contribution's weight; 0: examples held */
} graft_wire_reduce_t;

typedef struct {
    uint64_t round;
    graft_wire_tensor_t *tensors;
    size_t ntensors;
    graft_wire_hyper_t hyper;
    uint32_t deadline_ms;
    graft_wire_reduce_t reduce;
} graft_wire_round_start_t;

typedef struct {
    uint64_t round;
    uint32_t worker_id;
    graft_wire_tensor_t *tensors;
    size_t ntensors;
    uint64_t sample_count;
    double train_loss;
    double train_seconds;
} graft_wire_update_t;

/* Evaluate these modules on the worker's rows of a split (GRAFT_SPLIT_DEV or
 * GRAFT_SPLIT_TEST, task.h) of each task in tasks (distinct). */
typedef struct {
    uint64_t round;
    graft_wire_tensor_t *tensors;
    size_t ntensors;
    char **tasks;
    size_t ntasks;
    int split;
    uint64_t max_examples; /* 0: all */
    uint64_t max_decodes;  /* 0: all */
    uint32_t gen_tokens;   /* > 0 */
    int personal;          /* the task scopes are the worker's own (a personal round) */
} graft_wire_eval_request_t;

#define GRAFT_WIRE_ECE_BINS 15
#define GRAFT_WIRE_CHRF_ORDER 6
#define GRAFT_WIRE_MAX_LABELS 4096  /* K of a confusion matrix (K x K counts) */
#define GRAFT_WIRE_MAX_SAMPLE 1024  /* bytes of a sample text */
#define GRAFT_WIRE_MAX_PARTS 1000000 /* IID shards of an evaluation */

/* One task's evaluation statistics on one worker (proto/graft.proto's
 * EvalResult). Validated on decode: non-negative finite sums; a
 * classification result (nlabels > 0) has confusion counts summing to
 * examples, ECE bin counts summing to examples with at most as many correct
 * and a confidence sum in [0, count] per bin, loss_count == examples and no
 * chrF statistics; a generation result (nlabels == 0) has no confusion or
 * bins, matches <= min(hyp, ref) per order, and decoded <= examples. */
typedef struct {
    uint64_t round;
    char *task;
    int split;
    uint64_t examples;
    double loss_sum;
    uint64_t loss_count;
    int nlabels;          /* classification: K (confusion holds K * K); 0: generation */
    uint64_t *confusion;  /* [true][predicted] */
    uint64_t ece_count[GRAFT_WIRE_ECE_BINS];
    uint64_t ece_correct[GRAFT_WIRE_ECE_BINS];
    double ece_confidence[GRAFT_WIRE_ECE_BINS];
    uint64_t chrf_hyp[GRAFT_WIRE_CHRF_ORDER];
    uint64_t chrf_ref[GRAFT_WIRE_CHRF_ORDER];
    uint64_t chrf_match[GRAFT_WIRE_CHRF_ORDER];
    uint64_t decoded;
    /* Printable text (control bytes refused), or NULL/"" for none. */
    char *sample_prompt, *sample_output, *sample_reference;
    /* parts > 0: IID part `part` (< parts <= GRAFT_WIRE_MAX_PARTS) of the
     * evaluation; parts 0 (then part 0): the worker's own rows. */
    uint32_t part, parts;
} graft_wire_eval_result_t;

typedef struct {
    uint32_t worker_id;
    uint64_t unix_ms;
} graft_wire_heartbeat_t;

typedef struct {
    char *reason;
    int run_complete; /* 0: the coordinator stopped before the last round */
} graft_wire_shutdown_t;

typedef struct {
    int32_t code; /* a GRAFT_E* code */
    char *message;
} graft_wire_error_t;

/* One message. `type` says which union member is live. A worker that does
 * not know the run yet sends its Hello with run_id 0. */
typedef struct {
    graft_msg_type_t type;
    uint64_t run_id;
    union {
        graft_wire_hello_t hello;
        graft_wire_assign_t assign;
        graft_wire_round_start_t round_start;
        graft_wire_update_t update;
        graft_wire_eval_request_t eval_request;
        graft_wire_eval_result_t eval_result;
        graft_wire_heartbeat_t heartbeat;
        graft_wire_shutdown_t shutdown;
        graft_wire_error_t error;
    };
} graft_msg_t;

/* The tensors a receiver expects: every received tensor's name must be in
 * the table and its shape equal. Entries point at the caller's memory. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[GRAFT_WIRE_MAX_DIMS];
} graft_wire_schema_entry_t;

typedef struct {
    const graft_wire_schema_entry_t *entries;
    size_t n;
} graft_wire_schema_t;

typedef struct {
    uint64_t run_id;                   /* expected run; 0 accepts any */
    size_t max_bytes;                  /* 0: graft_wire_default_max_bytes() */
    const graft_wire_schema_t *schema; /* NULL: names and shapes unchecked */
} graft_wire_opts_t;

/* "hello", "update", ... for logs. */
const char *graft_msg_type_name(graft_msg_type_t type);

/* Encodes msg into a new malloc'd buffer (*buf, *len). Tensor values go out
 * as `dtype`: GRAFT_DTYPE_BF16 rounds to nearest even and halves the bytes.
 * Returns GRAFT_OK, or GRAFT_EINVAL (logged) for a message that cannot be
 * encoded. A malformed msg (bad type, ndim, numel) is a programmer error. */
int graft_wire_encode(const graft_msg_t *msg, graft_wire_dtype_t dtype, uint8_t **buf,
                      size_t *len);

/* Decodes and validates len bytes into *out (zeroed first; on failure *out
 * holds nothing to free). opts may be NULL for the defaults. Returns GRAFT_OK
 * or a negative code with the reason in why[why_len]. Extra rule: when
 * opts->run_id is set, a Hello with run_id 0 is accepted (a worker joining);
 * any other mismatch is refused with GRAFT_ESTATE (the only failure with
 * that code: a well-formed message of another run). */
int graft_wire_decode(const uint8_t *buf, size_t len, const graft_wire_opts_t *opts,
                      graft_msg_t *out, char *why, size_t why_len);

/* An upper bound on the encoded size of a RoundStart, an Update or an
 * EvalRequest that carries n dense tensors of numel[i] fp32 values (names of
 * at most GRAFT_WIRE_MAX_NAME bytes, one dimension or up to
 * GRAFT_WIRE_MAX_DIMS) and nsteps per-step learning rates (none in an
 * EvalRequest), every other field included: an EvalRequest's up to
 * GRAFT_MAX_TASKS task names of GRAFT_WIRE_MAX_NAME bytes are in the
 * constant overhead. */
size_t graft_wire_modules_bytes(const size_t *numel, size_t n, size_t nsteps);

/* The message limit of a run whose largest messages carry those tensors
 * and rates: graft_wire_modules_bytes, and at least the default limit (for
 * the messages without modules: hello, assign, errors), into *max. GRAFT_OK,
 * or GRAFT_EINVAL when it exceeds GRAFT_WIRE_HARD_MAX_BYTES (*max is set
 * all the same, for the caller's message). */
int graft_wire_max_bytes(const size_t *numel, size_t n, size_t nsteps, size_t *max);

/* The default limit: GRAFT_WIRE_DEFAULT_MAX_BYTES, or for tests the value
 * of the environment variable GRAFT_TEST_DEFAULT_MAX_BYTES (bytes, >= 4096),
 * which lets a tiny trunk's modules outgrow it. */
size_t graft_wire_default_max_bytes(void);

/* Frees everything a decoded message owns and zeroes it. NULL-safe. */
void graft_msg_free(graft_msg_t *msg);

/* For messages that carry a round (round_start, update, eval_request,
 * eval_result): GRAFT_OK if it is `round`, else GRAFT_ESTATE with a reason.
 * GRAFT_EINVAL, with a reason, for a message type without a round. */
int graft_wire_expect_round(const graft_msg_t *msg, uint64_t round, char *why, size_t why_len);

/* Writes the dense form of t (numel floats) into out. */
void graft_wire_tensor_densify(const graft_wire_tensor_t *t, float *out);

#endif
