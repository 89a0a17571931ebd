/* gpt2.c — the trunk: parameter layout, forward, backward, checkpoints. */
#include "gpt2.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "ops.h"
#include "peft.h"
#include "profile.h"
#include "tokenizer.h"

int graft_gpt2_preset(const char *name, graft_gpt2_config_t *cfg) {
    static const struct {
        const char *name;
        graft_gpt2_config_t cfg;
    } presets[] = {
        {"tiny", {GRAFT_BYTE_VOCAB, 32, 2, 2, 32, GRAFT_TOKENIZER_BYTE}},
        {"small", {GRAFT_BYTE_VOCAB, 128, 4, 4, 192, GRAFT_TOKENIZER_BYTE}},
        {"base", {GRAFT_BYTE_VOCAB, 256, 6, 6, 384, GRAFT_TOKENIZER_BYTE}},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(name, presets[i].name) == 0) {
            *cfg = presets[i].cfg;
            return GRAFT_OK;
        }
    }
    return GRAFT_EINVAL;
}

/* ---- layout ------------------------------------------------------------- */

static void fill_param_sizes(size_t *sizes, const graft_gpt2_config_t *c) {
    size_t V = c->V, T = c->T, L = c->L, C = c->C;
    size_t s[GRAFT_GPT2_NUM_TENSORS] = {
        V * C,      T * C,     L * C,     L * C,         /* wte wpe ln1w ln1b */
        L * C * 3 * C, L * 3 * C, L * C * C, L * C,      /* qkvw qkvb attprojw attprojb */
        L * C,      L * C,                               /* ln2w ln2b */
        L * C * 4 * C, L * 4 * C, L * 4 * C * C, L * C,  /* fcw fcb fcprojw fcprojb */
        C,          C,                                   /* lnfw lnfb */
    };
    memcpy(sizes, s, sizeof s);
}

/* Points the float* fields of a struct of n pointers into one block. */
static void point_views(float **views, float *memory, const size_t *sizes, int n) {
    for (int i = 0; i < n; i++) {
        views[i] = memory;
        memory += sizes[i];
    }
}

static size_t sum_sizes(const size_t *sizes, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    return total;
}

static void fill_act_sizes(size_t *sizes, const graft_gpt2_config_t *c, int B, int T) {
    size_t BT = (size_t)B * T, L = c->L, C = c->C, NH = c->NH, V = c->V;
    size_t s[GRAFT_GPT2_NUM_ACTS] = {
        BT * C,                                          /* encoded */
        L * BT * C, L * BT, L * BT,                      /* ln1 ln1_mean ln1_rstd */
        L * BT * 3 * C, L * BT * C,                      /* qkv atty */
        L * B * NH * (size_t)T * T,                      /* att */
        L * BT * C, L * BT * C,                          /* attproj residual2 */
        L * BT * C, L * BT, L * BT,                      /* ln2 ln2_mean ln2_rstd */
        L * BT * 4 * C, L * BT * 4 * C,                  /* fch fch_gelu */
        L * BT * C, L * BT * C,                          /* fcproj residual3 */
        BT * C, BT, BT,                                  /* lnf lnf_mean lnf_rstd */
        BT * C, BT * V, BT * V, BT,                      /* lm_in logits probs losses */
    };
    memcpy(sizes, s, sizeof s);
}

_Static_assert(sizeof(graft_gpt2_params_t) == GRAFT_GPT2_NUM_TENSORS * sizeof(float *),
               "params struct must hold exactly the tensor views");
_Static_assert(sizeof(graft_gpt2_acts_t) == GRAFT_GPT2_NUM_ACTS * sizeof(float *),
               "acts struct must hold exactly the activation views");

/* ---- lifecycle ---------------------------------------------------------- */

static void init_weights(graft_gpt2_t *m, uint64_t seed) {
    const graft_gpt2_config_t *c = &m->cfg;
    graft_rng_t rng;
    graft_rng_seed(&rng, seed, 0x67707432u);
    graft_gpt2_params_t *p = &m->params;
    float std = 0.02f;
    /* Residual projections scaled by 1/sqrt(2L) as in GPT-2. */
    float proj_std = 0.02f / sqrtf(2.0f * c->L);
    size_t L = c->L, C = c->C;
    graft_rng_fill_normal(&rng, p->wte, (size_t)c->V * C, std);
    graft_rng_fill_normal(&rng, p->wpe, (size_t)c->T * C, 0.01f);
    for (size_t i = 0; i < L * C; i++) p->ln1w[i] = p->ln2w[i] = 1.0f;
    for (size_t i = 0; i < C; i++) p->lnfw[i] = 1.0f;
    graft_rng_fill_normal(&rng, p->qkvw, L * C * 3 * C, std);
    graft_rng_fill_normal(&rng, p->attprojw, L * C * C, proj_std);
    graft_rng_fill_normal(&rng, p->fcw, L * C * 4 * C, std);
    graft_rng_fill_normal(&rng, p->fcprojw, L * 4 * C * C, proj_std);
    /* biases and LayerNorm shifts stay zero (calloc) */
}

graft_gpt2_t *graft_gpt2_new(const graft_gpt2_config_t *cfg, uint64_t seed) {
    GRAFT_ASSERT(cfg->C % cfg->NH == 0);
    graft_gpt2_t *m = graft_xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    fill_param_sizes(m->param_sizes, cfg);
    m->num_params = sum_sizes(m->param_sizes, GRAFT_GPT2_NUM_TENSORS);
    m->params_memory = graft_xcalloc(m->num_params, sizeof(float));
    point_views((float **)&m->params, m->params_memory, m->param_sizes, GRAFT_GPT2_NUM_TENSORS);
    init_weights(m, seed);
    if (cfg->tokenizer == GRAFT_TOKENIZER_BYTE) m->tok = graft_tokenizer_new_bytes();
    m->mean_loss = -1.0f;
    return m;
}

void graft_gpt2_destroy(graft_gpt2_t **self_p) {
    graft_gpt2_t *m = *self_p;
    if (!m) return;
    free(m->params_memory);
    free(m->grads_memory);
    free(m->acts_memory);
    free(m->grads_acts_memory);
    free(m->decode_memory);
    free(m->inputs);
    free(m->targets);
    free(m->lm_pos);
    free(m->lm_targets);
    free(m->lm_losses);
    graft_bf16_scratch_free(&m->bf16);
    graft_tokenizer_destroy(&m->tok);
    free(m);
    *self_p = NULL;
}

int graft_gpt2_set_precision(graft_gpt2_t *m, const char *name) {
    if (!strcmp(name, "fp32")) {
        m->precision = GRAFT_FP32;
    } else if (!strcmp(name, "bf16")) {
        if (!graft_bf16_supported()) {
            LOG_ERROR("--precision bf16 needs a CPU with AVX512_BF16 (avx512_bf16 in "
                      "/proc/cpuinfo); this one has none: use fp32");
            return GRAFT_EINVAL;
        }
        m->precision = GRAFT_BF16;
    } else {
        LOG_ERROR("unknown --precision '%s' (fp32 or bf16)", name);
        return GRAFT_EINVAL;
    }
    return GRAFT_OK;
}

void graft_gpt2_enable_grads(graft_gpt2_t *m) {
    if (m->grads_memory) return;
    m->grads_memory = graft_xcalloc(m->num_params, sizeof(float));
    point_views((float **)&m->grads, m->grads_memory, m->param_sizes, GRAFT_GPT2_NUM_TENSORS);
}

void graft_gpt2_reserve(graft_gpt2_t *m, int B, int T) {
    GRAFT_ASSERT(T <= m->cfg.T);
    if (m->acts_memory && B <= m->B && T == m->T) return;
    free(m->acts_memory);
    free(m->grads_acts_memory);
    free(m->decode_memory);
    m->decode_memory = NULL;
    free(m->inputs);
    free(m->targets);
    free(m->lm_pos);
    free(m->lm_targets);
    free(m->lm_losses);
    m->B = B > m->B ? B : m->B;
    m->T = T;
    fill_act_sizes(m->act_sizes, &m->cfg, m->B, m->T);
    /* every activation starts at a 64-byte boundary: the kernels' vector
     * loops then run on whole aligned vectors from a row's start */
    for (int i = 0; i < GRAFT_GPT2_NUM_ACTS; i++)
        m->act_sizes[i] = (m->act_sizes[i] + 15) & ~(size_t)15;
    m->num_acts = sum_sizes(m->act_sizes, GRAFT_GPT2_NUM_ACTS);
    m->acts_memory = graft_xalloc64(m->num_acts * sizeof(float), 0);
    m->grads_acts_memory = graft_xalloc64(m->num_acts * sizeof(float), 1);
    point_views((float **)&m->acts, m->acts_memory, m->act_sizes, GRAFT_GPT2_NUM_ACTS);
    point_views((float **)&m->grads_acts, m->grads_acts_memory, m->act_sizes,
                GRAFT_GPT2_NUM_ACTS);
    m->inputs = graft_xmalloc((size_t)m->B * m->T * sizeof(int32_t));
    m->targets = graft_xmalloc((size_t)m->B * m->T * sizeof(int32_t));
    m->lm_pos = graft_xmalloc((size_t)m->B * m->T * sizeof(int32_t));
    m->lm_targets = graft_xmalloc((size_t)m->B * m->T * sizeof(int32_t));
    m->lm_losses = graft_xmalloc((size_t)m->B * m->T * sizeof(float));
}

/* ---- forward ------------------------------------------------------------ */

/* The four adaptable projections of a block, forward and backward: the
 * weight (in, out) is the trunk's or LoRA's merged one (peft_linear_weight);
 * the PEFT hooks add the channel deltas and the modules' gradients. */
static const char *const proj_prof_name[GRAFT_NUM_PROJ][2] = {
    {"fwd.qkv", "bwd.qkv"}, {"fwd.attproj", "bwd.attproj"}, {"fwd.fc", "bwd.fc"},
    {"fwd.fcproj", "bwd.fcproj"}};

/* Products below this many multiply-adds stay on sgemm at bf16 too: the
 * operand rounding and packing (three parallel regions instead of one)
 * cost more than the faster tiles save. At the tiny preset (products of
 * 0.5-1.5 M) bf16 throughout ran a training step at half the speed of
 * fp32; the small preset's products are 75-300 M. */
#define BF16_MIN_MACS (8.0 * 1024 * 1024)

static int use_bf16(const graft_gpt2_t *m, int N, int K, int M) {
    return m->precision == GRAFT_BF16 && (double)N * K * M >= BF16_MIN_MACS;
}

/* The projections' products at the model's precision (matmul_forward and
 * matmul_backward in ops.h, or their bf16 forms). */
static void product_forward(graft_gpt2_t *m, float *out, const float *inp, const float *W,
                            const float *bias, int N, int in, int odim) {
    if (use_bf16(m, N, in, odim)) bf16_matmul_forward(&m->bf16, out, inp, W, bias, N, in, odim);
    else matmul_forward(out, inp, W, bias, N, in, odim);
}

static void product_backward(graft_gpt2_t *m, float *dinp, float *dW, float *dbias,
                             const float *dout, const float *inp, const float *W, int N, int in,
                             int odim) {
    if (use_bf16(m, N, in, odim)) {
        bf16_matmul_backward(&m->bf16, dinp, dW, dout, inp, W, N, in, odim);
        if (dbias) colsum_accumulate(dbias, dout, N, odim);
    } else {
        matmul_backward(dinp, dW, dbias, dout, inp, W, N, in, odim);
    }
}

/* The LM head's products (lmhead_forward / lmhead_backward in ops.h) at
 * the model's precision: logits = inp @ wte^T is the bf16 input-gradient
 * product with wte as its (V, C) weight, dinp = dlogits @ wte the forward
 * product, and dwte += dlogits^T @ inp the weight gradient with the roles
 * of inp and dlogits swapped. */
static void lmhead_product_forward(graft_gpt2_t *m, float *logits, const float *inp, int N) {
    const float *wte = m->params.wte;
    int C = m->cfg.C, V = m->cfg.V;
    if (use_bf16(m, N, C, V))
        bf16_matmul_backward(&m->bf16, logits, NULL, inp, NULL, wte, N, V, C);
    else
        lmhead_forward(logits, inp, wte, N, C, V);
}

static void lmhead_product_backward(graft_gpt2_t *m, float *dinp, float *dwte,
                                    const float *dlogits, const float *inp, int N) {
    const float *wte = m->params.wte;
    int C = m->cfg.C, V = m->cfg.V;
    if (!use_bf16(m, N, C, V)) {
        lmhead_backward(dinp, dwte, dlogits, inp, wte, N, C, V);
        return;
    }
    if (dinp) bf16_matmul_forward(&m->bf16, dinp, dlogits, wte, NULL, N, V, C);
    if (dwte) bf16_matmul_backward(&m->bf16, NULL, dwte, inp, dlogits, NULL, N, V, C);
}

/* Attention runs at bf16 when the heads fill at least 3/4 of the bf16
 * tiles' 48-wide panels, which its products over the head size use: with
 * hs = 48 (the small preset) every lane works; with hs = 64 (GPT-2 small)
 * a third of them idle, and the bf16 attention measured 5-17% slower than
 * the fp32 one (`graft bench step --trunk ... --precision bf16 --profile`). */
static int bf16_attention(const graft_gpt2_t *m) {
    int hs = m->cfg.C / m->cfg.NH, lanes = (hs + 47) / 48 * 48;
    return m->precision == GRAFT_BF16 && 4 * hs >= 3 * lanes;
}

/* Causal attention at the model's precision (attention_forward /
 * attention_backward in ops.h, or their bf16 forms). */
static void attention_fwd(graft_gpt2_t *m, float *out, float *att, const float *inp, int B, int T) {
    int C = m->cfg.C, NH = m->cfg.NH;
    if (bf16_attention(m)) bf16_attention_forward(&m->bf16, out, att, inp, B, T, C, NH);
    else attention_forward(out, att, inp, B, T, C, NH);
}

static void attention_bwd(graft_gpt2_t *m, float *dinp, float *scratch, const float *dout,
                          const float *inp, const float *att, int B, int T) {
    int C = m->cfg.C, NH = m->cfg.NH;
    if (bf16_attention(m))
        bf16_attention_backward(&m->bf16, dinp, scratch, dout, inp, att, B, T, C, NH);
    else
        attention_backward(dinp, scratch, dout, inp, att, B, T, C, NH);
}

/* out (N, odim) = inp (N, in) @ W + bias. */
static void linear_forward(graft_gpt2_t *m, int l, graft_proj_t proj, float *out,
                           const float *inp, const float *bias, size_t N, int in, int odim) {
    GRAFT_PROF(proj_prof_name[proj][0], 2.0 * N * in * odim,
               product_forward(m, out, inp, peft_linear_weight(m, l, proj), bias, N, in, odim));
    peft_linear_forward(m->peft, l, proj, out, inp, N);
}

/* dinp = dout @ W^T (NULL: not needed); the trunk's dweight, dbias += (NULL
 * when frozen). */
static void linear_backward(graft_gpt2_t *m, int l, graft_proj_t proj, float *dinp,
                            float *dweight, float *dbias, const float *dout, const float *inp,
                            size_t N, int in, int odim) {
    double flops = 2.0 * N * in * odim * ((dinp != NULL) + (dweight != NULL));
    GRAFT_PROF(proj_prof_name[proj][1], flops,
               product_backward(m, dinp, dweight, dbias, dout, inp,
                                peft_linear_weight(m, l, proj), N, in, odim));
    peft_linear_backward(m->peft, l, proj, dinp, dout, inp, N);
}

/* The LM head's input: the lnf rows of the positions with a target, in
 * order (m->lm_rows of them, their positions and targets in m->lm_pos and
 * m->lm_targets). Prompt and padding positions need no logits, and with a
 * large vocabulary the head is much of a step. When every position has a
 * target (pretraining) that is lnf itself; else the rows are gathered into
 * acts.lm_in. */
static const float *lm_gather(graft_gpt2_t *m, size_t BT) {
    size_t C = (size_t)m->cfg.C;
    int n = 0;
    for (size_t i = 0; i < BT; i++)
        if (m->targets[i] >= 0) {
            m->lm_pos[n] = (int32_t)i;
            m->lm_targets[n++] = m->targets[i];
        }
    m->lm_rows = n;
    if ((size_t)n == BT) return m->acts.lnf;
    for (int k = 0; k < n; k++)
        memcpy(m->acts.lm_in + k * C, m->acts.lnf + (size_t)m->lm_pos[k] * C, C * sizeof(float));
    return m->acts.lm_in;
}

float graft_gpt2_forward(graft_gpt2_t *m, const int32_t *inputs, const int32_t *targets, int B,
                         int T) {
    graft_gpt2_reserve(m, B, T);
    const graft_gpt2_config_t *c = &m->cfg;
    int L = c->L, C = c->C, NH = c->NH, V = c->V;
    /* Views are laid out for the allocated (m->B, m->T); a smaller batch uses
     * the first rows of every per-layer slab, so strides use m->B * m->T. */
    size_t BT = (size_t)B * T, slab = (size_t)m->B * m->T;
    GRAFT_ASSERT(T == m->T);
    for (size_t i = 0; i < BT; i++) GRAFT_ASSERT(inputs[i] >= 0 && inputs[i] < V);
    memcpy(m->inputs, inputs, BT * sizeof(int32_t));
    m->cur_B = B;
    m->cur_T = T;

    graft_gpt2_params_t p = m->params;
    graft_gpt2_acts_t a = m->acts;
    peft_forward_begin(m);
    GRAFT_PROF("fwd.encoder", 0, encoder_forward(a.encoded, inputs, p.wte, p.wpe, B, T, C));
    for (int l = 0; l < L; l++) {
        const float *residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * slab * C;
        float *ln1 = a.ln1 + l * slab * C;
        float *ln1_mean = a.ln1_mean + l * slab, *ln1_rstd = a.ln1_rstd + l * slab;
        float *qkv = a.qkv + l * slab * 3 * C;
        float *atty = a.atty + l * slab * C;
        float *att = a.att + l * (size_t)m->B * NH * T * T;
        float *attproj = a.attproj + l * slab * C;
        float *residual2 = a.residual2 + l * slab * C;
        float *ln2 = a.ln2 + l * slab * C;
        float *ln2_mean = a.ln2_mean + l * slab, *ln2_rstd = a.ln2_rstd + l * slab;
        float *fch = a.fch + l * slab * 4 * C;
        float *fch_gelu = a.fch_gelu + l * slab * 4 * C;
        float *fcproj = a.fcproj + l * slab * C;
        float *residual3 = a.residual3 + l * slab * C;

        const float *lnw, *lnb;
        float *dlnw, *dlnb;
        peft_ln_params(m, l, 1, &lnw, &lnb, &dlnw, &dlnb);
        GRAFT_PROF("fwd.ln1", 0, layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, lnw, lnb, BT, C));
        linear_forward(m, l, GRAFT_PROJ_QKV, qkv, ln1, p.qkvb + l * 3 * C, BT, C, 3 * C);
        GRAFT_PROF("fwd.attention", 4.0 * BT * T * C,
                   attention_fwd(m, atty, att, qkv, B, T));
        linear_forward(m, l, GRAFT_PROJ_ATTN, attproj, atty, p.attprojb + l * C, BT, C, C);
        GRAFT_PROF("fwd.residual", 0, residual_forward(residual2, residual, attproj, BT * C));
        peft_ln_params(m, l, 2, &lnw, &lnb, &dlnw, &dlnb);
        GRAFT_PROF("fwd.ln2", 0, layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, lnw, lnb, BT, C));
        linear_forward(m, l, GRAFT_PROJ_FC, fch, ln2, p.fcb + l * 4 * C, BT, C, 4 * C);
        GRAFT_PROF("fwd.gelu", 0, gelu_forward(fch_gelu, fch, BT * 4 * C));
        linear_forward(m, l, GRAFT_PROJ_FCPROJ, fcproj, fch_gelu, p.fcprojb + l * C, BT, 4 * C, C);
        peft_mlp_out_forward(m->peft, l, fcproj, fch_gelu, BT);
        GRAFT_PROF("fwd.residual", 0, residual_forward(residual3, residual2, fcproj, BT * C));
        peft_block_out_forward(m->peft, l, residual3, BT);
    }
    const float *last = a.residual3 + (L - 1) * slab * C;
    const float *lnfw, *lnfb;
    float *dlnfw, *dlnfb;
    peft_ln_params(m, -1, 0, &lnfw, &lnfb, &dlnfw, &dlnfb);
    GRAFT_PROF("fwd.lnf", 0, layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, lnfw, lnfb, BT, C));

    m->mean_loss = -1.0f;
    m->loss_count = 0;
    if (!targets) return -1.0f;
    memcpy(m->targets, targets, BT * sizeof(int32_t));
    const float *lm_in = lm_gather(m, BT);
    int N = m->lm_rows;
    if (N > 0)
        GRAFT_PROF("fwd.lmhead", 2.0 * N * C * V, lmhead_product_forward(m, a.logits, lm_in, N));
    GRAFT_PROF("fwd.crossentropy", 0,
               m->mean_loss = crossentropy_forward(m->lm_losses, a.probs, a.logits,
                                                   m->lm_targets, N, V, &m->loss_count));
    memset(a.losses, 0, BT * sizeof(float));
    for (int k = 0; k < N; k++) a.losses[m->lm_pos[k]] = m->lm_losses[k];
    return m->mean_loss;
}

/* ---- incremental decoding ----------------------------------------------- */

/* Floats per row of the decode scratch: the stream x, a LayerNorm output
 * and its mean and rstd, qkv, the attention output and projection, the
 * MLP's hidden layer before and after GELU and its output, and the
 * attention scores (NH, T). */
static size_t decode_row_floats(const graft_gpt2_t *m) {
    size_t C = m->cfg.C;
    return 2 * C + 2 + 3 * C + 2 * C + 8 * C + (size_t)m->cfg.NH * m->T;
}

const float *graft_gpt2_decode_step(graft_gpt2_t *m, const int32_t *seq, const int32_t *tokens,
                                    const int32_t *pos, int N) {
    const graft_gpt2_config_t *c = &m->cfg;
    int L = c->L, C = c->C, NH = c->NH, T = m->T;
    size_t slab = (size_t)m->B * m->T;
    GRAFT_ASSERT(m->acts_memory && N >= 1 && N <= m->cur_B);
    for (int i = 0; i < N; i++)
        GRAFT_ASSERT(seq[i] >= 0 && seq[i] < m->cur_B && pos[i] >= 0 && pos[i] < m->cur_T &&
                     tokens[i] >= 0 && tokens[i] < c->V);
    if (!m->decode_memory)
        m->decode_memory = graft_xmalloc((size_t)m->B * decode_row_floats(m) * sizeof(float));
    /* views for N rows: x, ln (N, C); mean, rstd (N); qkv (N, 3C); atty, proj (N, C);
     * fch, fch_gelu (N, 4C); scores (N, NH, T) */
    float *x = m->decode_memory, *ln = x + (size_t)N * C;
    float *mean = ln + (size_t)N * C, *rstd = mean + N;
    float *qkv = rstd + N, *atty = qkv + (size_t)N * 3 * C, *proj = atty + (size_t)N * C;
    float *fch = proj + (size_t)N * C, *fch_gelu = fch + (size_t)N * 4 * C;
    float *scores = fch_gelu + (size_t)N * 4 * C;

    const graft_gpt2_params_t p = m->params;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++)
            x[(size_t)i * C + j] =
                p.wte[(size_t)tokens[i] * C + j] + p.wpe[(size_t)pos[i] * C + j];
    for (int l = 0; l < L; l++) {
        float *cache = m->acts.qkv + l * slab * 3 * C;
        const float *lnw, *lnb;
        float *dlnw, *dlnb;
        peft_ln_params(m, l, 1, &lnw, &lnb, &dlnw, &dlnb);
        layernorm_forward(ln, mean, rstd, x, lnw, lnb, N, C);
        linear_forward(m, l, GRAFT_PROJ_QKV, qkv, ln, p.qkvb + l * 3 * C, N, C, 3 * C);
        /* the new rows' k, v into the cache at (seq[i], pos[i]) */
        for (int i = 0; i < N; i++)
            memcpy(cache + ((size_t)seq[i] * T + pos[i]) * 3 * C + C, qkv + (size_t)i * 3 * C + C,
                   2 * (size_t)C * sizeof(float));
        attention_decode(atty, scores, qkv, cache, seq, pos, N, T, C, NH);
        linear_forward(m, l, GRAFT_PROJ_ATTN, proj, atty, p.attprojb + l * C, N, C, C);
        residual_forward(x, x, proj, (size_t)N * C);
        peft_ln_params(m, l, 2, &lnw, &lnb, &dlnw, &dlnb);
        layernorm_forward(ln, mean, rstd, x, lnw, lnb, N, C);
        linear_forward(m, l, GRAFT_PROJ_FC, fch, ln, p.fcb + l * 4 * C, N, C, 4 * C);
        gelu_forward(fch_gelu, fch, (size_t)N * 4 * C);
        linear_forward(m, l, GRAFT_PROJ_FCPROJ, proj, fch_gelu, p.fcprojb + l * C, N, 4 * C, C);
        peft_mlp_out_forward(m->peft, l, proj, fch_gelu, N);
        residual_forward(x, x, proj, (size_t)N * C);
        peft_block_out_forward(m->peft, l, x, N);
    }
    const float *lnfw, *lnfb;
    float *dlnfw, *dlnfb;
    peft_ln_params(m, -1, 0, &lnfw, &lnfb, &dlnfw, &dlnfb);
    layernorm_forward(ln, mean, rstd, x, lnfw, lnfb, N, C);
    return ln;
}

/* ---- backward ----------------------------------------------------------- */

void graft_gpt2_zero_grad(graft_gpt2_t *m) {
    /* Activation gradients are written before they are read (ops.h), so
     * only the weight gradients need zeroing. */
    if (m->grads_memory) memset(m->grads_memory, 0, m->num_params * sizeof(float));
}

void graft_gpt2_backward(graft_gpt2_t *m) {
    GRAFT_ASSERT(m->mean_loss >= 0.0f);
    int B = m->cur_B, T = m->cur_T, C = m->cfg.C, V = m->cfg.V;
    size_t BT = (size_t)B * T;
    graft_gpt2_acts_t a = m->acts, g = m->grads_acts;
    float scale = m->loss_count ? 1.0f / m->loss_count : 0.0f;
    float *dwte = m->grads_memory ? m->grads.wte : NULL;
    int N = m->lm_rows;
    /* dlogits is written (not accumulated) into the logits-gradient slab,
     * and so is dlnf: the head's rows' gradients, 0 at the other positions. */
    GRAFT_PROF("bwd.crossentropy", 0,
               crossentropy_backward(g.logits, a.probs, m->lm_targets, N, V, scale));
    if ((size_t)N == BT) {
        GRAFT_PROF("bwd.lmhead", 2.0 * N * C * V * (dwte ? 2 : 1),
                   lmhead_product_backward(m, g.lnf, dwte, g.logits, a.lnf, N));
    } else {
        if (N > 0)
            GRAFT_PROF("bwd.lmhead", 2.0 * N * C * V * (dwte ? 2 : 1),
                       lmhead_product_backward(m, g.lm_in, dwte, g.logits, a.lm_in, N));
        memset(g.lnf, 0, BT * C * sizeof(float));
        for (int k = 0; k < N; k++)
            memcpy(g.lnf + (size_t)m->lm_pos[k] * C, g.lm_in + (size_t)k * C, C * sizeof(float));
    }
    graft_gpt2_backward_from_lnf(m);
}

/* Pre-LN residual stream: with x_{l+1} = h + mlp(ln2(h)), h = x_l +
 * attn(ln1(x_l)), the gradient dL/dh is dL/dx_{l+1} plus the MLP branch's
 * contribution through ln_2, and dL/dx_l is dL/dh plus the attention
 * branch's through ln_1. Each branch output's gradient is the stream's
 * gradient itself, so residual3 (L,B,T,C) holds dL/d(block output) and
 * residual2 dL/dh; the branches read them in place and the two
 * layernorm_backward calls add their part while writing the next one. */
void graft_gpt2_backward_from_lnf(graft_gpt2_t *m) {
    const graft_gpt2_config_t *c = &m->cfg;
    int B = m->cur_B, T = m->cur_T, L = c->L, C = c->C, NH = c->NH;
    size_t BT = (size_t)B * T, slab = (size_t)m->B * m->T;
    /* With a frozen trunk every weight-gradient pointer is NULL. */
    int trainable = m->grads_memory != NULL;
    graft_gpt2_params_t d = trainable ? m->grads : (graft_gpt2_params_t){0};
#define DW(field, off) (trainable ? d.field + (off) : NULL)
    graft_gpt2_acts_t a = m->acts, g = m->grads_acts;
    /* The pass stops at the lowest gradient that anything trained needs. */
    int floor_layer;
    graft_grad_depth_t floor_depth;
    peft_grad_floor(m, &floor_layer, &floor_depth);
#define NEED(depth) (l > floor_layer || (depth) <= floor_depth)
    /* dS of attention: scratch shared by the layers */
    float *datt = g.att;

    const float *lnw, *lnb;
    float *dlnw, *dlnb;
    peft_ln_params(m, -1, 0, &lnw, &lnb, &dlnw, &dlnb);
    float *dlast = floor_layer < L ? g.residual3 + (L - 1) * slab * C : NULL;
    GRAFT_PROF("bwd.lnf", 0,
               layernorm_backward(dlast, dlnw, dlnb, NULL, g.lnf, a.residual3 + (L - 1) * slab * C,
                                  lnw, a.lnf_mean, a.lnf_rstd, BT, C));
    for (int l = L - 1; l >= floor_layer; l--) {
        const float *residual = l == 0 ? a.encoded : a.residual3 + (l - 1) * slab * C;
        float *dresidual = l == 0 ? g.encoded : g.residual3 + (l - 1) * slab * C;
        size_t o1 = l * slab * C, o3 = l * slab * 3 * C, o4 = l * slab * 4 * C, os = l * slab;
        float *d3 = g.residual3 + o1, *d2 = g.residual2 + o1;
        float *att = a.att + l * (size_t)m->B * NH * T * T;

        peft_block_out_backward(m->peft, l, d3, BT);
        if (!NEED(GRAFT_GRAD_MLP_OUT)) break;
        /* the MLP output projection's output gradient: d3, or RED's rescaling */
        const float *dmlp = peft_mlp_out_backward(m->peft, l, g.fcproj + o1, d3, BT);
        float *dfch_gelu = NEED(GRAFT_GRAD_FC_OUT) ? g.fch_gelu + o4 : NULL;
        linear_backward(m, l, GRAFT_PROJ_FCPROJ, dfch_gelu, DW(fcprojw, (size_t)l * 4 * C * C),
                        DW(fcprojb, l * C), dmlp, a.fch_gelu + o4, BT, 4 * C, C);
        if (!NEED(GRAFT_GRAD_FC_OUT)) break;
        /* in place: from here on the slab holds dL/d(fc output) */
        float *dfch = dfch_gelu;
        GRAFT_PROF("bwd.gelu", 0, gelu_backward(dfch, a.fch + o4, dfch_gelu, BT * 4 * C));
        float *dln2 = NEED(GRAFT_GRAD_LN2_OUT) ? g.ln2 + o1 : NULL;
        linear_backward(m, l, GRAFT_PROJ_FC, dln2, DW(fcw, (size_t)l * C * 4 * C),
                        DW(fcb, l * 4 * C), dfch, a.ln2 + o1, BT, C, 4 * C);
        if (!NEED(GRAFT_GRAD_LN2_OUT)) break;
        peft_ln_params(m, l, 2, &lnw, &lnb, &dlnw, &dlnb);
        GRAFT_PROF("bwd.ln2", 0,
                   layernorm_backward(NEED(GRAFT_GRAD_ATTN_OUT) ? d2 : NULL, dlnw, dlnb, d3, dln2,
                                      a.residual2 + o1, lnw, a.ln2_mean + os, a.ln2_rstd + os,
                                      BT, C));
        if (!NEED(GRAFT_GRAD_ATTN_OUT)) break;
        float *datty = NEED(GRAFT_GRAD_QKV_OUT) ? g.atty + o1 : NULL;
        linear_backward(m, l, GRAFT_PROJ_ATTN, datty, DW(attprojw, (size_t)l * C * C),
                        DW(attprojb, l * C), d2, a.atty + o1, BT, C, C);
        if (!NEED(GRAFT_GRAD_QKV_OUT)) break;
        GRAFT_PROF("bwd.attention", 8.0 * BT * T * C,
                   attention_bwd(m, g.qkv + o3, datt, datty, a.qkv + o3, att, B, T));
        float *dln1 = NEED(GRAFT_GRAD_LN1_OUT) ? g.ln1 + o1 : NULL;
        linear_backward(m, l, GRAFT_PROJ_QKV, dln1, DW(qkvw, (size_t)l * C * 3 * C),
                        DW(qkvb, l * 3 * C), g.qkv + o3, a.ln1 + o1, BT, C, 3 * C);
        if (!NEED(GRAFT_GRAD_LN1_OUT)) break;
        peft_ln_params(m, l, 1, &lnw, &lnb, &dlnw, &dlnb);
        GRAFT_PROF("bwd.ln1", 0,
                   layernorm_backward(NEED(GRAFT_GRAD_BLOCK_IN) ? dresidual : NULL, dlnw, dlnb, d2,
                                      dln1, residual, lnw, a.ln1_mean + os, a.ln1_rstd + os, BT,
                                      C));
    }
    if (trainable)
        GRAFT_PROF("bwd.encoder", 0, encoder_backward(d.wte, d.wpe, g.encoded, m->inputs, B, T, C));
#undef NEED
#undef DW
}

/* ---- naming and checkpoints --------------------------------------------- */

int graft_gpt2_num_named(const graft_gpt2_config_t *cfg) { return 4 + 12 * cfg->L; }

void graft_gpt2_named(const graft_gpt2_t *m, graft_gpt2_tensor_t *out) {
    const graft_gpt2_config_t *c = &m->cfg;
    size_t C = c->C;
    /* Offsets of each stacked tensor in the block, in struct order. */
    size_t base[GRAFT_GPT2_NUM_TENSORS];
    size_t off = 0;
    for (int i = 0; i < GRAFT_GPT2_NUM_TENSORS; i++) {
        base[i] = off;
        off += m->param_sizes[i];
    }
    int n = 0;
#define ADD(nm, idx, layer_stride, r, cols)                                                     \
    do {                                                                                        \
        graft_gpt2_tensor_t *t = &out[n++];                                                     \
        snprintf(t->name, sizeof t->name, "%s", nm);                                            \
        t->ndim = (r) > 0 ? 2 : 1;                                                              \
        t->shape[0] = (r) > 0 ? (int64_t)(r) : (int64_t)(cols);                                 \
        t->shape[1] = (int64_t)(cols);                                                          \
        t->numel = (r) > 0 ? (size_t)(r) * (cols) : (size_t)(cols);                             \
        t->offset = base[idx] + (layer_stride);                                                 \
        t->decay = (r) > 0;                                                                     \
    } while (0)
    ADD("wte.weight", 0, 0, c->V, C);
    ADD("wpe.weight", 1, 0, c->T, C);
    char nm[64];
    for (int l = 0; l < c->L; l++) {
#define LAYER(suffix, idx, r, cols)                                                             \
    do {                                                                                        \
        snprintf(nm, sizeof nm, "h.%d.%s", l, suffix);                                          \
        size_t per = (r) > 0 ? (size_t)(r) * (cols) : (size_t)(cols);                           \
        ADD(nm, idx, l * per, r, cols);                                                         \
    } while (0)
        LAYER("ln_1.weight", 2, 0, C);
        LAYER("ln_1.bias", 3, 0, C);
        LAYER("attn.c_attn.weight", 4, C, 3 * C);
        LAYER("attn.c_attn.bias", 5, 0, 3 * C);
        LAYER("attn.c_proj.weight", 6, C, C);
        LAYER("attn.c_proj.bias", 7, 0, C);
        LAYER("ln_2.weight", 8, 0, C);
        LAYER("ln_2.bias", 9, 0, C);
        LAYER("mlp.c_fc.weight", 10, C, 4 * C);
        LAYER("mlp.c_fc.bias", 11, 0, 4 * C);
        LAYER("mlp.c_proj.weight", 12, 4 * C, C);
        LAYER("mlp.c_proj.bias", 13, 0, C);
#undef LAYER
    }
    ADD("ln_f.weight", 14, 0, 0, C);
    ADD("ln_f.bias", 15, 0, 0, C);
#undef ADD
    GRAFT_ASSERT(n == graft_gpt2_num_named(c));
}

int graft_gpt2_save(const graft_gpt2_t *m, const char *path, const graft_st_tensor_t *extra,
                    int n_extra, const char *const *meta_keys, const char *const *meta_values,
                    int n_meta) {
    int n = graft_gpt2_num_named(&m->cfg);
    graft_gpt2_tensor_t *named = graft_xmalloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    graft_st_tensor_t *ts = graft_xmalloc((size_t)(n + n_extra) * sizeof *ts);
    for (int i = 0; i < n; i++) {
        ts[i] = (graft_st_tensor_t){.name = named[i].name, .ndim = named[i].ndim,
                                    .data = m->params_memory + named[i].offset};
        ts[i].shape[0] = named[i].shape[0];
        ts[i].shape[1] = named[i].shape[1];
    }
    for (int i = 0; i < n_extra; i++) ts[n + i] = extra[i];

    enum { OWN_META = 7 };
    char vals[OWN_META][32];
    const char *keys[OWN_META] = {"config.V", "config.T", "config.L", "config.NH", "config.C",
                                  "tokenizer", "format"};
    snprintf(vals[0], 32, "%d", m->cfg.V);
    snprintf(vals[1], 32, "%d", m->cfg.T);
    snprintf(vals[2], 32, "%d", m->cfg.L);
    snprintf(vals[3], 32, "%d", m->cfg.NH);
    snprintf(vals[4], 32, "%d", m->cfg.C);
    snprintf(vals[5], 32, "%s", graft_tokenizer_kind_name(m->cfg.tokenizer));
    snprintf(vals[6], 32, "graft-gpt2");
    const char **mk = graft_xmalloc((size_t)(OWN_META + n_meta) * sizeof *mk);
    const char **mv = graft_xmalloc((size_t)(OWN_META + n_meta) * sizeof *mv);
    for (int i = 0; i < OWN_META; i++) {
        mk[i] = keys[i];
        mv[i] = vals[i];
    }
    for (int i = 0; i < n_meta; i++) {
        mk[OWN_META + i] = meta_keys[i];
        mv[OWN_META + i] = meta_values[i];
    }
    int rc = graft_st_write(path, ts, n + n_extra, mk, mv, OWN_META + n_meta);
    free(mk);
    free(mv);
    free(ts);
    free(named);
    return rc;
}

static int meta_int(const graft_st_file_t *f, const char *key, int *out) {
    const char *v = graft_st_meta(f, key);
    if (!v) return GRAFT_EFORMAT;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x <= 0 || x > 1 << 24) {
        LOG_ERROR("%s: metadata %s = '%s' is not a positive integer", graft_st_path(f), key, v);
        return GRAFT_EFORMAT;
    }
    *out = (int)x;
    return GRAFT_OK;
}

/* A positive integer of a Hugging Face config.json, under key (or alt when
 * key is missing) into *out; GRAFT_EFORMAT when neither is one. */
static int hf_int(json_t *root, const char *key, const char *alt, int *out) {
    json_t *v = json_object_get(root, key);
    if (!v && alt) v = json_object_get(root, alt);
    json_int_t x = json_is_integer(v) ? json_integer_value(v) : 0;
    if (x <= 0 || x > 1 << 24) return GRAFT_EFORMAT;
    *out = (int)x;
    return GRAFT_OK;
}

/* The config of a checkpoint without graft's metadata, from the config.json
 * Hugging Face keeps beside model.safetensors; the tokenizer is GPT-2's. */
static int read_hf_config(const graft_st_file_t *f, graft_gpt2_config_t *cfg) {
    char dir[4096], path[4200];
    graft_path_dir(graft_st_path(f), dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) {
        LOG_ERROR("%s: no graft model config in the metadata (config.V, config.T, config.L, "
                  "config.NH, config.C), and no Hugging Face config beside it: %s: %s",
                  graft_st_path(f), path, err.text);
        return GRAFT_EFORMAT;
    }
    int rc = GRAFT_OK;
    if (hf_int(root, "vocab_size", NULL, &cfg->V) || hf_int(root, "n_positions", "n_ctx", &cfg->T) ||
        hf_int(root, "n_layer", NULL, &cfg->L) || hf_int(root, "n_head", NULL, &cfg->NH) ||
        hf_int(root, "n_embd", NULL, &cfg->C)) {
        LOG_ERROR("%s: want positive integers vocab_size, n_positions, n_layer, n_head and n_embd "
                  "(a GPT-2 config)", path);
        rc = GRAFT_EFORMAT;
    }
    cfg->tokenizer = GRAFT_TOKENIZER_GPT2;
    /* What graft computes; a config that asks for something else is refused. */
    const char *act = json_string_value(json_object_get(root, "activation_function"));
    json_t *eps = json_object_get(root, "layer_norm_epsilon"), *inner = json_object_get(root, "n_inner");
    if (rc == GRAFT_OK && ((act && strcmp(act, "gelu_new") != 0) ||
                           (json_is_number(eps) && fabs(json_number_value(eps) - 1e-5) > 1e-12) ||
                           (json_is_integer(inner) && json_integer_value(inner) != 4 * cfg->C))) {
        LOG_ERROR("%s: graft's GPT-2 has activation_function gelu_new, layer_norm_epsilon 1e-5 "
                  "and n_inner 4 x n_embd; this config differs", path);
        rc = GRAFT_EFORMAT;
    }
    json_decref(root);
    return rc;
}

int graft_gpt2_read_config(const graft_st_file_t *f, graft_gpt2_config_t *cfg) {
    static const char *const keys[] = {"config.V", "config.T", "config.L", "config.NH",
                                       "config.C"};
    int *fields[] = {&cfg->V, &cfg->T, &cfg->L, &cfg->NH, &cfg->C};
    int found = 0, rc = GRAFT_OK;
    for (int i = 0; i < 5; i++) found += graft_st_meta(f, keys[i]) != NULL;
    if (found == 0) {
        rc = read_hf_config(f, cfg);
    } else {
        for (int i = 0; i < 5 && rc == GRAFT_OK; i++) rc = meta_int(f, keys[i], fields[i]);
        if (rc) {
            LOG_ERROR("%s: no complete graft model config in the metadata (config.V, config.T, "
                      "config.L, config.NH, config.C)", graft_st_path(f));
            return GRAFT_EFORMAT;
        }
        const char *tok = graft_st_meta(f, "tokenizer");
        cfg->tokenizer = GRAFT_TOKENIZER_BYTE;
        if (tok && graft_tokenizer_kind_parse(tok, &cfg->tokenizer) != GRAFT_OK) {
            LOG_ERROR("%s: tokenizer '%s' is not one graft has (byte, gpt2)", graft_st_path(f),
                      tok);
            return GRAFT_EFORMAT;
        }
    }
    if (rc == GRAFT_OK && cfg->C % cfg->NH != 0) {
        LOG_ERROR("%s: width C=%d is not a multiple of the head count NH=%d", graft_st_path(f),
                  cfg->C, cfg->NH);
        return GRAFT_EFORMAT;
    }
    return rc;
}

int graft_gpt2_read_weights(graft_gpt2_t *m, const graft_st_file_t *f) {
    int n = graft_gpt2_num_named(&m->cfg);
    graft_gpt2_tensor_t *named = graft_xmalloc((size_t)n * sizeof *named);
    graft_gpt2_named(m, named);
    int rc = GRAFT_OK;
    for (int i = 0; i < n && rc == GRAFT_OK; i++)
        rc = graft_st_read(f, named[i].name, named[i].shape, named[i].ndim,
                           m->params_memory + named[i].offset);
    free(named);
    return rc;
}

/* GPT-2's BPE from the files beside checkpoint path, for model m. */
static int load_gpt2_tokenizer(graft_gpt2_t *m, const char *path) {
    char dir[4096];
    graft_path_dir(path, dir, sizeof dir);
    int rc = graft_tokenizer_load_gpt2(dir, &m->tok);
    if (rc) {
        LOG_ERROR("%s: a gpt2-tokenizer checkpoint needs GPT-2's vocab.json and merges.txt beside "
                  "it (scripts/fetch-gpt2-vocab.sh DIR writes them)", path);
    }
    return rc;
}

int graft_gpt2_load(const char *path, graft_gpt2_t **out) {
    graft_st_file_t *f = NULL;
    int rc = graft_st_open(path, &f);
    if (rc) return rc;
    graft_gpt2_config_t cfg;
    rc = graft_gpt2_read_config(f, &cfg);
    if (rc == GRAFT_OK) {
        graft_gpt2_t *m = graft_gpt2_new(&cfg, 0);
        rc = graft_gpt2_read_weights(m, f);
        if (rc == GRAFT_OK && cfg.tokenizer == GRAFT_TOKENIZER_GPT2) rc = load_gpt2_tokenizer(m, path);
        if (rc == GRAFT_OK && cfg.V < m->tok->vocab) {
            LOG_ERROR("%s: an embedding of V=%d rows, fewer than the %d tokens of its %s "
                      "tokenizer", path, cfg.V, m->tok->vocab,
                      graft_tokenizer_kind_name(cfg.tokenizer));
            rc = GRAFT_ESHAPE;
        }
        if (rc == GRAFT_OK)
            *out = m;
        else
            graft_gpt2_destroy(&m);
    }
    graft_st_close(&f);
    return rc;
}

double graft_gpt2_flops_per_token(const graft_gpt2_config_t *c, int T) {
    double C = c->C;
    double per_layer = 24.0 * C * C + 4.0 * T * C; /* projections + QK^T and PV */
    return c->L * per_layer + 2.0 * C * c->V;
}
