/* aggregate.h — aggregating one scope over the replies of a round (DESIGN
 * §5): streaming, exact, and independent of the order replies arrive in.
 *
 * Streaming in fixed point. Each reply i (trained values x_i, weight w_i =
 * its sample count) becomes a *contribution*: for every element j,
 *     c_ij = w_i * round((x_ij - g_j) * 2^S),   S = GRAFT_AGG_FRAC_BITS,
 * an int64, where g is the round's global value (what every worker was
 * sent). Contributions are added into one int64 accumulator per scope as
 * replies arrive and the reply is freed: the coordinator holds the
 * accumulators and the messages in flight, not every reply. Integer
 * addition is associative, so any arrival order — and MPI_SUM over
 * MPI_INT64_T in whatever order the MPI library combines ranks — gives the
 * same bits. The mean is g_j + sum_i c_ij / (2^S sum_i w_i), rounded once
 * to float.
 *
 * Precision: round() is off by at most 1/2, so the fixed-point mean of the
 * deltas is within 2^-(S+1) = 2^-37 (about 7.3e-12) of their exact weighted
 * mean, plus double rounding (about 2^-52 relative). Against a float64
 * reference mean m = sum w_i x_i / sum w_i, the float result r therefore
 * satisfies |r - m| <= 2^-37 + 2^-52 |m| + ulp(r)/2, i.e. it is m rounded
 * to float, or the float next to it when m lies within 2^-37 of a rounding
 * boundary. S = 36 leaves 27 bits of range: |x - g| * sum w < 2^27.
 *
 * Overflow. Each contribution checks its own terms: |x - g| 2^S w < 2^62
 * with w < 2^40 (the same for LoRA products, which enter whole rather than
 * as deltas), so |c_ij| < 2^63, and records a bound
 * b_i = ceil(max_j |c_ij| / 2^20) <= 2^43. The bounds are summed with the
 * values (exact integers too); as long as sum b_i < 2^43,
 * sum_i max_j |c_ij| < 2^63 and no element can have wrapped. Otherwise the
 * scope is left unchanged for the round and the report says overflow (the
 * caller logs it as an error) — the decision depends only on the set of
 * replies, never on their order. With sample counts up to 2^20 that takes
 * a parameter moving by more than 64 in one round.
 *
 * Layout of a contribution (and of an accumulator): plan.len int64 —
 *   [0, numel)             the scope's values (deltas)
 *   [numel, numel + nprod) the product A B of every LoRA pair (whole, not
 *                          a delta), when the plan accumulates products
 *                          (lora svd, or the gap in factors mode)
 *   then three tail words: weight, overflow bound, rejected count.
 * The same function computes a contribution on the coordinator (ZeroMQ:
 * from the reply's tensors) and on an MPI worker (from its own modules, for
 * graft_transport_ireduce_i64), so both transports give the same bits.
 *
 * Strategies (option `aggregate`, a comma list):
 *   fedavg        the weighted mean above (default)
 *   fedprox       fedavg here; workers add mu/2 ||w - g||^2 to their loss
 *                 (fedprox_mu)
 *   fedavgm       server momentum on the pseudo-gradient D = mean - g, as in
 *                 Hsu et al., "Measuring the Effects of Non-Identical Data
 *                 Distribution for Federated Visual Classification":
 *                 u = server_beta1 u + D, x = g + server_lr * u (u lives
 *                 where fedadam keeps m). server_lr 1 and beta1 0 is fedavg;
 *                 server_lr > 1 with beta1 0 extrapolates the mean step.
 *   fedadam       server Adam on the pseudo-gradient D = mean - g, as in
 *                 Reddi et al., "Adaptive Federated Optimization":
 *                 m = b1 m + (1-b1) D, v = b2 v + (1-b2) D^2,
 *                 x = g + server_lr * m / (sqrt(v) + server_eps)
 *                 (no bias correction; m, v live in the scope's optimiser
 *                 state, so checkpoints carry them)
 *   median        coordinate-wise median (unweighted; even counts take the
 *                 mean of the two middle values)
 *   trimmed_mean  coordinate-wise mean after dropping floor(trim_frac * n)
 *                 values at each end (unweighted)
 *   clip          composable with all of the above: each reply's delta
 *                 x - g is scaled down to L2 norm clip_norm, per scope,
 *                 before it is averaged (or held)
 * median and trimmed_mean need every reply: the coordinator holds each
 * reply's (clipped) values until the round closes, and computes in sorted
 * order, so they are order-independent too.
 *
 * The shared scope (options shared_weight, shared_server_lr): the caller
 * may weigh its replies by task rather than by sample count (the
 * coordinator's shared_weight()), and its plan's step_scale stretches the
 * mean step, x = g + step_scale * (mean - g), before fedavgm or fedadam;
 * the LoRA products of the gap measurement keep the plain mean.
 *
 * Statistics (the scope's values from plan.stat_from on, e.g. the channels
 * method's scores) are not parameters: the clip leaves them out of the
 * norm and unscaled, and fedadam, fedavgm and step_scale leave them at the
 * plain weighted mean; median and trimmed_mean treat them like any value.
 *
 * LoRA pairs (option `lora_aggregate`): factors (average A and B as
 * above), svd (average the products A B, then truncate back to rank r —
 * lora_merge.h — and use those factors) or freeze_a (A stays at its initial
 * value, workers train only B; a reply that changed A is rejected; then
 * avg(A) avg(B) = A avg(B) = avg(A B) exactly). The report gives the
 * relative gap ||avg(A) avg(B) - avg(A B)||_F / ||avg(A B)||_F over the
 * scope's pairs: measured from accumulated products in factors and svd
 * mode, exactly 0 in freeze_a mode.
 *
 * Ownership: a plan owns its pair list and scratch buffers and borrows the
 * global values it is given for the round; every other pointer is the
 * caller's.
 */
#ifndef GRAFT_AGGREGATE_H
#define GRAFT_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#include "peft.h"
#include "runconfig.h"

#define GRAFT_AGG_FRAC_BITS 36
#define GRAFT_AGG_TAIL 3 /* weight, overflow bound, rejected */
#define GRAFT_AGG_BOUND_SHIFT 20
#define GRAFT_AGG_BOUND_MAX ((int64_t)1 << 43)

/* ---- strategy ------------------------------------------------------------- */

typedef enum {
    GRAFT_AGG_FEDAVG,
    GRAFT_AGG_FEDADAM,
    GRAFT_AGG_MEDIAN,
    GRAFT_AGG_TRIMMED,
    GRAFT_AGG_FEDAVGM,
} graft_agg_combiner_t;
typedef enum { GRAFT_LORA_FACTORS, GRAFT_LORA_SVD, GRAFT_LORA_FREEZE_A } graft_lora_agg_t;

typedef struct {
    graft_agg_combiner_t combiner;
    int fedprox;       /* workers add the proximal term */
    float fedprox_mu;
    int clip;          /* clip each reply's delta to clip_norm */
    float clip_norm;
    float server_lr, server_beta1, server_beta2, server_eps; /* fedavgm, fedadam */
    float trim_frac;   /* trimmed_mean */
    graft_lora_agg_t lora;
    int lora_gap;      /* factors: accumulate products to measure the gap */
    int task_weights;  /* shared scope: every task weighs the same (shared_weight task) */
    float shared_step; /* shared scope: step = shared_step * (aggregate - global) */
    int personal;      /* this round's task scopes stay on their workers: shared summed only
                          (graft_aggregator_set_personal; 0 from the parse) */
    int personal_from; /* --personalize: its first personal round; 0: not personalised */
} graft_agg_config_t;

/* Reads aggregate, fedprox_mu, clip_norm, server_*, trim_frac,
 * lora_aggregate, lora_gap, shared_weight, shared_server_lr, personalize
 * and personal_from from the run config. GRAFT_EINVAL (logged,
 * naming the option) for an unknown or contradictory choice. */
int graft_agg_config_parse(const graft_run_config_t *cfg, graft_agg_config_t *out);
/* "fedadam+clip, lora svd": for logs and events. */
void graft_agg_describe(const graft_agg_config_t *c, char *buf, size_t n);
/* 1 for median and trimmed_mean, which hold every reply. */
int graft_agg_holds_replies(const graft_agg_config_t *c);
/* 1 when contributions carry LoRA products (svd, or factors with lora_gap). */
int graft_agg_wants_products(const graft_agg_config_t *c);

/* ---- one scope's plan --------------------------------------------------------- */

/* A LoRA pair inside a scope: offsets (in floats) of A (in, r) and B (r, out). */
typedef struct {
    size_t a, b;
    int in, r, out;
} graft_agg_pair_t;

typedef struct {
    size_t numel;            /* the scope's values */
    graft_agg_pair_t *pairs; /* owned */
    int npairs;
    int products;            /* accumulate A B of every pair */
    size_t nprod;            /* sum of in * out over the pairs, when products */
    size_t len;              /* int64 per contribution */
    float clip_norm;         /* > 0: clip deltas to this L2 norm */
    int freeze_a;            /* reject replies whose A changed */
    double step_scale;       /* new = global + step_scale * (aggregate - global); 1 */
    size_t stat_from;        /* [stat_from, numel): statistics (graft_scope_add_stat),
                                not clipped, a plain mean under any server optimizer;
                                numel unless set */
    const float *global;     /* borrowed: this round's global values */
    double *work;            /* owned scratch: numel + 2 * max pair size */
} graft_agg_plan_t;

/* The LoRA pairs of one scope of p (`task` < 0: shared) into out (room for
 * L * GRAFT_NUM_PROJ); returns their count. */
int graft_agg_lora_pairs(const graft_peft_t *p, int task, graft_agg_pair_t *out);
/* The plan for one scope of p: `task` < 0 for the shared scope, else the
 * task's. products, the clip and freeze_a come from the config, and for the
 * shared scope step_scale (shared_step). */
void graft_agg_plan_init(graft_agg_plan_t *plan, const graft_agg_config_t *c,
                         const graft_peft_t *p, int task);
/* The same from explicit pairs (for tests and tools). */
void graft_agg_plan_init_pairs(graft_agg_plan_t *plan, size_t numel, const graft_agg_pair_t *pairs,
                               int npairs, int products, float clip_norm, int freeze_a);
void graft_agg_plan_free(graft_agg_plan_t *plan);
/* Sets the round's global values (borrowed until the next call). */
void graft_agg_plan_round(graft_agg_plan_t *plan, const float *global);

/* ---- contributions ------------------------------------------------------------ */

/* One reply's contribution (plan->len int64) from its trained values x
 * (numel floats) and weight w >= 1. A reply that cannot be represented
 * (non-finite, out of range) or breaks freeze_a gives GRAFT_EINVAL with the
 * reason in why; out is then the empty contribution with rejected = 1. */
int graft_agg_contribution(graft_agg_plan_t *plan, const float *x, uint64_t w, int64_t *out,
                           char *why, size_t why_len);
/* An empty contribution (weight 0), optionally counted as rejected. */
void graft_agg_contribution_empty(const graft_agg_plan_t *plan, int rejected, int64_t *out);
/* acc[0, len) += c: two's-complement addition, exact and order-free as long
 * as the final sums fit (the bound word checks that). */
void graft_agg_add(int64_t *acc, const int64_t *c, size_t len);

/* ---- results ------------------------------------------------------------------ */

typedef struct {
    uint64_t weight;     /* summed weight of the accepted contributions */
    int64_t rejected;    /* contributions rejected by their senders' checks */
    int overflow;        /* the sums may have wrapped: scope left unchanged */
    double lora_gap;     /* relative gap (see above); NAN when not measured */
    double svd_residual; /* svd: relative truncation error; NAN otherwise */
} graft_agg_report_t;

/* From the summed contributions (plan->len int64) to the scope's new
 * values in dst (numel floats; may be the global values themselves).
 * state (2 * numel floats: m then v) is used and updated by fedadam (m and
 * v) and fedavgm (u in m), and may be NULL otherwise. Returns 1 when dst
 * was written, 0 when left unchanged (no weight, or overflow). */
int graft_agg_finish(const graft_agg_config_t *c, graft_agg_plan_t *plan, const int64_t *sum,
                     float *dst, float *state, graft_agg_report_t *rep);

/* median / trimmed_mean: one reply's values as held, g + clip(x - g), with
 * the same checks as a contribution. */
int graft_agg_clipped(graft_agg_plan_t *plan, const float *x, float *out, char *why,
                      size_t why_len);
/* Coordinate-wise median or trimmed mean (c->combiner) of n held replies
 * (each numel floats) into dst. n >= 1. */
void graft_agg_robust(const graft_agg_config_t *c, const float *const *xs, int n, size_t numel,
                      float *dst);

/* ---- scalars ------------------------------------------------------------------ */

typedef struct {
    const char *key;     /* stable contributor name: the summation order */
    double weight;       /* > 0 (sample count) */
    const float *values; /* numel floats */
} graft_agg_input_t;

/* The weighted mean of n small inputs, summed in double in key order (for
 * round metrics such as the train loss). With no input (or zero total
 * weight) dst is left unchanged and 0 is returned; otherwise the number of
 * inputs used. The inputs array is reordered. */
int graft_aggregate_fedavg(graft_agg_input_t *in, int n, float *dst, size_t numel);

#endif
