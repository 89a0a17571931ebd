/* bench.c — `graft bench step`: training-step throughput on random tokens
 * for a method (full, lora, adapter, red, lntune or a combination), built
 * and stepped through the same code as `graft train` (graft_run_peft_config,
 * graft_peft_lm, graft_modules_update), with model FLOP utilisation against
 * a cblas_sgemm peak measured here on the same threads. --profile adds a
 * per-op time table. Prints one final line `tokens_per_s=<N> mfu=<x>`. */
#include <cblas.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "options.h"
#include "profile.h"
#include "rng.h"
#include "shared_options.h"
#include "trainer.h"

typedef struct {
    char preset[GRAFT_OPT_STR];
    char trunk[GRAFT_OPT_STR];
    int seq;
    char method[GRAFT_OPT_STR];
    int threads;
    int batch;
    int untimed_steps;
    int steps;
    int seed;
    int lora_shared_rank;
    float lora_shared_alpha;
    char lora_targets[GRAFT_OPT_STR];
    int adapter_dim;
    char precision[GRAFT_OPT_STR];
    int profile;
} bench_step_config_t;

#define OFF(field) offsetof(bench_step_config_t, field)
const graft_option_t cli_bench_step_options[] = {
    GRAFT_OPT_PRESET(OFF(preset)),
    GRAFT_OPT_TRUNK(OFF(trunk)),
    GRAFT_OPT_SEQ(OFF(seq)),
    GRAFT_OPT_METHOD(OFF(method), "full"),
    GRAFT_OPT_THREADS(OFF(threads)),
    GRAFT_OPT_BATCH(OFF(batch)),
    {"untimed_steps", GRAFT_OPT_INT, OFF(untimed_steps), "3", 0, 1000,
     "steps run before the timed ones, to warm caches and threads (not an LR warmup)"},
    GRAFT_OPT_ALIAS_OF("warmup", "untimed_steps"),
    GRAFT_OPT_STEPS(OFF(steps), "10"),
    GRAFT_OPT_SEED(OFF(seed), "1"),
    GRAFT_OPT_LORA_SHARED_RANK(OFF(lora_shared_rank)),
    GRAFT_OPT_ALIAS_OF("lora_rank", "lora_shared_rank"),
    GRAFT_OPT_LORA_SHARED_ALPHA(OFF(lora_shared_alpha)),
    GRAFT_OPT_ALIAS_OF("lora_alpha", "lora_shared_alpha"),
    GRAFT_OPT_LORA_TARGETS(OFF(lora_targets)),
    GRAFT_OPT_ADAPTER_DIM(OFF(adapter_dim)),
    GRAFT_OPT_PRECISION(OFF(precision)),
    {"profile", GRAFT_OPT_BOOL, OFF(profile), "false", 0, -1,
     "print a per-op time table of the timed steps (stderr)"},
    GRAFT_OPT_END,
};
#undef OFF

/* Best GFLOP/s of 7 square products big enough to reach the plateau (the
 * first, cold one not counted): on a shared machine the best run is the
 * one least disturbed by the neighbours. cblas_sgemm for fp32; for bf16
 * the bf16 product with its operand packing. */
static double measure_peak(graft_gpt2_t *m) {
    const int n = 1536;
    float *a = graft_xmalloc((size_t)n * n * sizeof(float));
    float *b = graft_xmalloc((size_t)n * n * sizeof(float));
    float *c = graft_xmalloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 0.001f * (float)(i % 1000);
    double best = 0.0;
    for (int rep = 0; rep < 8; rep++) {
        double t0 = graft_now();
        if (m->precision == GRAFT_BF16)
            bf16_matmul_forward(&m->bf16, c, a, b, NULL, n, n, n);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                        0.0f, c, n);
        double gflops = 2.0 * n * n * (double)n / (graft_now() - t0) / 1e9;
        if (rep > 0 && gflops > best) best = gflops;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Model FLOPs of one training step per token (2 per multiply-add), counting
 * only the products the method needs:
 *   forward   per block 2·C·(3C + C + 4C + 4C) = 24·C² for the four
 *             projections and 4·T·C for attention (Q K^T and P V over the
 *             full T×T, as MFU is usually counted); 2·C·V for the LM head;
 *             plus the modules' own products: LoRA 2·r·(in + out) per
 *             adapted projection, the adapter 4·C·m per block, RED none;
 *   backward  input gradients — the same products again, attention twice
 *             (dP, dV, dQ, dK) — from the LM head down to the lowest point
 *             that a trained tensor needs (peft_grad_floor), and weight
 *             gradients once more for the matrices that train: the whole
 *             trunk for full, LoRA's A and B, the adapter's D and U (the
 *             modules' backward is counted as twice their forward).
 * For full this is exactly three times the forward. */
static double step_flops_per_token(const graft_peft_t *p, int T) {
    const graft_gpt2_t *m = p->trunk;
    double C = m->cfg.C, V = m->cfg.V, L = m->cfg.L;
    double trunk_fwd = graft_gpt2_flops_per_token(&m->cfg, T);
    if (m->grads_memory) return 3.0 * trunk_fwd;

    double modules_fwd = 0.0;
    if (p->cfg.methods & GRAFT_M_LORA) {
        static const double in_mult[GRAFT_NUM_PROJ] = {1, 1, 1, 4};
        static const double out_mult[GRAFT_NUM_PROJ] = {3, 1, 4, 1};
        int ranks = p->cfg.lora_shared_rank + p->cfg.lora_task_rank;
        for (int proj = 0; proj < GRAFT_NUM_PROJ; proj++)
            if (p->cfg.lora_targets & (1 << proj))
                modules_fwd += L * 2.0 * ranks * (in_mult[proj] + out_mult[proj]) * C;
    }
    if (p->cfg.methods & GRAFT_M_ADAPTER) modules_fwd += L * 4.0 * C * p->cfg.adapter_dim;

    /* input-gradient products of one block, by the depth they produce */
    int floor_layer;
    graft_grad_depth_t floor_depth;
    peft_grad_floor(m, &floor_layer, &floor_depth);
    double input_grads = floor_layer < m->cfg.L ? 2.0 * C * V : 0.0;
    for (int l = floor_layer; l < m->cfg.L; l++) {
        graft_grad_depth_t d = l > floor_layer ? GRAFT_GRAD_BLOCK_IN : floor_depth;
        if (d >= GRAFT_GRAD_FC_OUT) input_grads += 2.0 * 4 * C * C;    /* fcproj */
        if (d >= GRAFT_GRAD_LN2_OUT) input_grads += 2.0 * C * 4 * C;   /* fc */
        if (d >= GRAFT_GRAD_QKV_OUT) input_grads += 2.0 * C * C + 8.0 * T * C; /* attn */
        if (d >= GRAFT_GRAD_LN1_OUT) input_grads += 2.0 * C * 3 * C;   /* qkv */
    }
    return trunk_fwd + 3.0 * modules_fwd + input_grads;
}

/* The run settings `graft train` would use for this benchmark. */
static int bench_run_config(const bench_step_config_t *cfg, graft_run_config_t *rc) {
    graft_options_parse(graft_run_options, rc, 0, NULL, ""); /* defaults */
    char rank[32], alpha[32], dim[32];
    snprintf(rank, sizeof rank, "%d", cfg->lora_shared_rank);
    snprintf(alpha, sizeof alpha, "%.9g", cfg->lora_shared_alpha);
    snprintf(dim, sizeof dim, "%d", cfg->adapter_dim);
    const char *settings[][2] = {
        {"preset", cfg->preset},       {"method", cfg->method},
        {"lora_shared_rank", rank},    {"lora_shared_alpha", alpha},
        {"lora_task_rank", "0"},       {"lora_targets", cfg->lora_targets},
        {"adapter_dim", dim},
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        int rc_set = graft_options_set(graft_run_options, rc, settings[i][0], settings[i][1],
                                       "graft bench step");
        if (rc_set) return rc_set;
    }
    return GRAFT_OK;
}

/* One step as graft_trainer_step takes it, on a fixed batch. */
static float bench_one_step(graft_peft_t *p, const graft_adamw_config_t *opt,
                            const int32_t *inputs, const int32_t *targets, int B, int T) {
    graft_peft_zero_grad(p, 0);
    float loss = graft_peft_lm(p, 0, inputs, targets, B, T, 1);
    graft_modules_update(p, 0, opt, 0.0f, opt->lr);
    return loss;
}

static int bench_step(int argc, char **argv) {
    bench_step_config_t cfg;
    int rc = graft_options_parse(cli_bench_step_options, &cfg, argc, argv,
                                 "usage: graft bench step [options]\n\n"
                                 "Times training steps (forward, backward, clipping, AdamW) of a\n"
                                 "method on batches of random tokens (next-token loss at every\n"
                                 "position), built as `graft train` builds it, and prints\n"
                                 "`tokens_per_s=<N> mfu=<x>` as the last line. LoRA has the\n"
                                 "one shared pair (no per-task pair); with --precision bf16 the\n"
                                 "peak for mfu is a bf16 product's.");
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc) return 2;
    graft_gpt2_t *trunk = NULL;
    if (*cfg.trunk) {
        if (graft_gpt2_load(cfg.trunk, &trunk)) return 1;
    } else {
        graft_gpt2_config_t mc;
        if (graft_gpt2_preset(cfg.preset, &mc)) {
            fprintf(stderr, "graft bench step: unknown preset '%s' (tiny, small, base)\n",
                    cfg.preset);
            return 2;
        }
        trunk = graft_gpt2_new(&mc, (uint64_t)cfg.seed);
    }
    int B = cfg.batch, T = cfg.seq ? cfg.seq : trunk->cfg.T;
    if (T > trunk->cfg.T) {
        fprintf(stderr, "graft bench step: --seq %d exceeds the model's context of %d\n", T,
                trunk->cfg.T);
        graft_gpt2_destroy(&trunk);
        return 2;
    }
    graft_run_config_t run;
    graft_peft_config_t pc;
    if (bench_run_config(&cfg, &run) || graft_run_peft_config(&run, &pc)) {
        graft_gpt2_destroy(&trunk);
        return 2;
    }
    if (pc.methods & (GRAFT_M_HEAD | GRAFT_M_CHANNELS)) {
        fprintf(stderr, "graft bench step: method '%s': head and channels need a classification "
                        "task or a stage-1 pass; benchmark full, lora, adapter, red or lntune\n",
                cfg.method);
        graft_gpt2_destroy(&trunk);
        return 2;
    }
    int threads = cli_set_threads(cfg.threads);
    if (graft_gpt2_set_precision(trunk, cfg.precision)) {
        graft_gpt2_destroy(&trunk);
        return 2;
    }
    double peak = measure_peak(trunk);
    const graft_peft_task_t task = {.name = "bench", .num_labels = 0};
    graft_peft_t *p = graft_peft_new(trunk, &pc, &task, 1);
    graft_adamw_config_t opt = graft_adamw_defaults();
    int32_t *tokens = graft_xmalloc(((size_t)B * T + 1) * sizeof(int32_t));
    graft_rng_t rng;
    graft_rng_seed(&rng, (uint64_t)cfg.seed, 7);
    for (size_t i = 0; i < (size_t)B * T + 1; i++) /* text tokens (bytes, or GPT-2's) */
        tokens[i] = (int32_t)graft_rng_below(&rng, trunk->tok->kind == GRAFT_TOKENIZER_BYTE
                                                       ? 256 : (uint32_t)trunk->tok->eos);

    for (int i = 0; i < cfg.untimed_steps; i++) bench_one_step(p, &opt, tokens, tokens + 1, B, T);
    graft_prof_enable(cfg.profile);
    double t0 = graft_now();
    float loss = 0.0f;
    for (int i = 0; i < cfg.steps; i++) loss = bench_one_step(p, &opt, tokens, tokens + 1, B, T);
    double elapsed = graft_now() - t0;
    graft_prof_enable(0);
    if (cfg.profile) graft_prof_report(stderr, cfg.steps, elapsed / cfg.steps);

    double tps = (double)cfg.steps * B * T / elapsed;
    double flops = step_flops_per_token(p, T) * tps;
    printf("%s=%s method=%s precision=%s threads=%d batch=%d seq=%d params=%zu "
           "trainable=%zu loss=%.4f step_ms=%.1f gflops=%.1f %s_peak_gflops=%.1f\n",
           *cfg.trunk ? "trunk" : "preset", *cfg.trunk ? cfg.trunk : cfg.preset, cfg.method,
           cfg.precision, threads, B, T,
           trunk->num_params,
           graft_peft_task_params(p, 0), loss, 1e3 * elapsed / cfg.steps, flops / 1e9,
           trunk->precision == GRAFT_BF16 ? "bf16" : "sgemm", peak);
    printf("tokens_per_s=%.0f mfu=%.3f\n", tps, flops / 1e9 / peak);
    free(tokens);
    graft_peft_destroy(&p);
    graft_gpt2_destroy(&trunk);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: graft bench WHAT [options]\n\n"
               "  step    training-step throughput and MFU of a method (graft bench step --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "step")) return bench_step(argc - 1, argv + 1);
    fprintf(stderr, "graft bench: unknown benchmark '%s'\n", argv[1]);
    return 2;
}
