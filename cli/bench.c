/* bench.c — `graft bench step`: training-step throughput on random tokens,
 * with model FLOP utilisation against a cblas_sgemm peak measured here on
 * the same threads. Prints one final line `tokens_per_s=<N> mfu=<x>`. */
#include <cblas.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "adamw.h"
#include "commands.h"
#include "gpt2.h"
#include "options.h"
#include "rng.h"

typedef struct {
    char preset[GRAFT_OPT_STR];
    char method[GRAFT_OPT_STR];
    int threads;
    int batch;
    int warmup;
    int steps;
    int seed;
} bench_step_config_t;

#define OFF(field) offsetof(bench_step_config_t, field)
static const graft_option_t bench_step_options[] = {
    {"preset", GRAFT_OPT_STRING, OFF(preset), "small", 0, -1, "model preset: tiny, small, base"},
    {"method", GRAFT_OPT_STRING, OFF(method), "full", 0, -1, "what is trained: full"},
    {"threads", GRAFT_OPT_INT, OFF(threads), "0", 0, 1024, "threads (0: all cores)"},
    {"batch", GRAFT_OPT_INT, OFF(batch), "16", 1, 4096, "sequences per step"},
    {"warmup", GRAFT_OPT_INT, OFF(warmup), "3", 0, 1000, "untimed warm-up steps"},
    {"steps", GRAFT_OPT_INT, OFF(steps), "10", 1, 100000, "timed steps"},
    {"seed", GRAFT_OPT_INT, OFF(seed), "1", 0, 2147483647, "seed"},
    GRAFT_OPT_END,
};
#undef OFF

/* Best-of-3 GFLOP/s of a square sgemm big enough to reach the plateau. */
static double measure_sgemm_peak(void) {
    const int n = 1536;
    float *a = graft_xmalloc((size_t)n * n * sizeof(float));
    float *b = graft_xmalloc((size_t)n * n * sizeof(float));
    float *c = graft_xmalloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 0.001f * (float)(i % 1000);
    double best = 0.0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = graft_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double gflops = 2.0 * n * n * (double)n / (graft_now() - t0) / 1e9;
        if (rep > 0 && gflops > best) best = gflops;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

typedef struct {
    graft_gpt2_t *model;
    graft_adamw_config_t opt;
    float *m, *v;
} full_trainer_t;

static void full_step(full_trainer_t *tr, const int32_t *inputs, const int32_t *targets, int B,
                      int T, int t) {
    graft_gpt2_t *model = tr->model;
    graft_gpt2_forward(model, inputs, targets, B, T);
    graft_gpt2_zero_grad(model);
    graft_gpt2_backward(model);
    double sumsq = 0.0;
    graft_grad_sumsq(model->grads_memory, model->num_params, &sumsq);
    float scale = graft_clip_scale(&tr->opt, sumsq);
    graft_adamw_update(&tr->opt, model->params_memory, model->grads_memory, tr->m, tr->v,
                       model->num_params, tr->opt.lr, t, scale, 1);
}

static int bench_step(int argc, char **argv) {
    bench_step_config_t cfg;
    int rc = graft_options_parse(bench_step_options, &cfg, argc, argv,
                                 "usage: graft bench step [options]\n\n"
                                 "Times training steps (forward, backward, AdamW) on random tokens\n"
                                 "and prints `tokens_per_s=<N> mfu=<x>` as the last line.");
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc) return 2;
    graft_gpt2_config_t mc;
    if (graft_gpt2_preset(cfg.preset, &mc)) {
        fprintf(stderr, "graft bench step: unknown preset '%s'\n", cfg.preset);
        return 2;
    }
    if (strcmp(cfg.method, "full") != 0) {
        fprintf(stderr, "graft bench step: unknown method '%s' (full)\n", cfg.method);
        return 2;
    }
    int threads = cli_set_threads(cfg.threads);
    double peak = measure_sgemm_peak();
    int B = cfg.batch, T = mc.T;
    full_trainer_t tr = {.model = graft_gpt2_new(&mc, (uint64_t)cfg.seed),
                         .opt = graft_adamw_defaults()};
    graft_gpt2_enable_grads(tr.model);
    tr.m = graft_xcalloc(tr.model->num_params, sizeof(float));
    tr.v = graft_xcalloc(tr.model->num_params, sizeof(float));
    int32_t *tokens = graft_xmalloc(((size_t)B * T + 1) * sizeof(int32_t));
    graft_rng_t rng;
    graft_rng_seed(&rng, (uint64_t)cfg.seed, 7);
    for (size_t i = 0; i < (size_t)B * T + 1; i++) tokens[i] = (int32_t)graft_rng_below(&rng, 256);

    for (int i = 0; i < cfg.warmup; i++) full_step(&tr, tokens, tokens + 1, B, T, i + 1);
    double t0 = graft_now();
    for (int i = 0; i < cfg.steps; i++)
        full_step(&tr, tokens, tokens + 1, B, T, cfg.warmup + i + 1);
    double elapsed = graft_now() - t0;
    double tps = (double)cfg.steps * B * T / elapsed;
    double flops = 3.0 * graft_gpt2_flops_per_token(&mc, T) * tps;
    printf("preset=%s method=%s threads=%d batch=%d seq=%d params=%zu step_ms=%.1f "
           "gflops=%.1f sgemm_peak_gflops=%.1f\n",
           cfg.preset, cfg.method, threads, B, T, tr.model->num_params,
           1e3 * elapsed / cfg.steps, flops / 1e9, peak);
    printf("tokens_per_s=%.0f mfu=%.3f\n", tps, flops / 1e9 / peak);
    free(tokens);
    free(tr.m);
    free(tr.v);
    graft_gpt2_destroy(&tr.model);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: graft bench WHAT [options]\n\n"
               "  step    training-step throughput and MFU (graft bench step --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "step")) return bench_step(argc - 1, argv + 1);
    fprintf(stderr, "graft bench: unknown benchmark '%s'\n", argv[1]);
    return 2;
}
