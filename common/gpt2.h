/* gpt2.h — the frozen trunk: a GPT-2 style transformer (token + learned
 * position embeddings, L pre-LN blocks of causal multi-head attention and a
 * GELU MLP 4x, final LayerNorm, LM head tied to the token embedding).
 *
 * Memory (as in llm.c): parameters live in ONE allocation with named views
 * into it (graft_gpt2_params_t), and so do their gradients, the activations
 * and the activation gradients. Tensors of one kind are stacked over layers
 * ((L, ...) arrays), so a layer's view is a fixed offset. The trunk is one
 * contiguous span: it can be checkpointed, sent or averaged as a whole.
 *
 * Ownership: graft_gpt2_new() returns an owned model; graft_gpt2_destroy()
 * frees it and everything it points to and NULLs the caller's pointer.
 * Gradient memory exists only after graft_gpt2_enable_grads() (full
 * fine-tuning and pretraining); a frozen trunk never has weight gradients.
 * Activations are (re)allocated for the largest batch seen.
 */
#ifndef GRAFT_GPT2_H
#define GRAFT_GPT2_H

#include "bf16.h"
#include "graft.h"
#include "rng.h"
#include "safetensors.h"
#include "tokenizer.h"

typedef struct {
    int V;  /* vocabulary size */
    int T;  /* maximum context length */
    int L;  /* layers */
    int NH; /* attention heads */
    int C;  /* width */
    graft_tokenizer_kind_t tokenizer; /* byte (0, the presets') or gpt2 */
} graft_gpt2_config_t;

/* Fills cfg from a preset name ("tiny", "small", "base"); GRAFT_EINVAL if unknown. */
int graft_gpt2_preset(const char *name, graft_gpt2_config_t *cfg);

#define GRAFT_GPT2_NUM_TENSORS 16

/* Named views into the one parameter block. Linear weights are [in, out]. */
typedef struct {
    float *wte;      /* (V, C) */
    float *wpe;      /* (T, C) */
    float *ln1w;     /* (L, C) */
    float *ln1b;     /* (L, C) */
    float *qkvw;     /* (L, C, 3C) */
    float *qkvb;     /* (L, 3C) */
    float *attprojw; /* (L, C, C) */
    float *attprojb; /* (L, C) */
    float *ln2w;     /* (L, C) */
    float *ln2b;     /* (L, C) */
    float *fcw;      /* (L, C, 4C) */
    float *fcb;      /* (L, 4C) */
    float *fcprojw;  /* (L, 4C, C) */
    float *fcprojb;  /* (L, C) */
    float *lnfw;     /* (C) */
    float *lnfb;     /* (C) */
} graft_gpt2_params_t;

#define GRAFT_GPT2_NUM_ACTS 23

/* Named views into the one activation block; B,T are the allocated batch. */
typedef struct {
    float *encoded;   /* (B, T, C) */
    float *ln1;       /* (L, B, T, C) */
    float *ln1_mean;  /* (L, B, T) */
    float *ln1_rstd;  /* (L, B, T) */
    float *qkv;       /* (L, B, T, 3C) */
    float *atty;      /* (L, B, T, C) */
    float *att;       /* (L, B, NH, T, T) */
    float *attproj;   /* (L, B, T, C) */
    float *residual2; /* (L, B, T, C) */
    float *ln2;       /* (L, B, T, C) */
    float *ln2_mean;  /* (L, B, T) */
    float *ln2_rstd;  /* (L, B, T) */
    float *fch;       /* (L, B, T, 4C) */
    float *fch_gelu;  /* (L, B, T, 4C) */
    float *fcproj;    /* (L, B, T, C) */
    float *residual3; /* (L, B, T, C) */
    float *lnf;       /* (B, T, C) */
    float *lnf_mean;  /* (B, T) */
    float *lnf_rstd;  /* (B, T) */
    /* The LM head runs only on the positions that have a target: lm_in holds
     * their lnf rows in order (unused when every position has one: the head
     * reads lnf), and logits and probs their first lm_rows rows. */
    float *lm_in;     /* (lm_rows, C) of (B, T, C) */
    float *logits;    /* (lm_rows, V) of (B, T, V) */
    float *probs;     /* (lm_rows, V) of (B, T, V) */
    float *losses;    /* (B, T): each position's loss, 0 without a target */
} graft_gpt2_acts_t;

struct graft_peft;

/* Points of one block's backward pass, top first: the gradient w.r.t. ...
 * Training only modules on a frozen trunk, the backward pass stops at the
 * lowest point whose gradient a trained tensor needs (peft_grad_floor). */
typedef enum {
    GRAFT_GRAD_BLOCK_OUT, /* ... the block output (adapters) */
    GRAFT_GRAD_MLP_OUT,   /* ... the MLP output (RED, channel deltas, LoRA on fcproj) */
    GRAFT_GRAD_FC_OUT,    /* ... the fc output (LoRA on fc) */
    GRAFT_GRAD_LN2_OUT,   /* ... ln_2's output (lntune's ln_2, then the fc input) */
    GRAFT_GRAD_ATTN_OUT,  /* ... the attention projection's output (LoRA on attn) */
    GRAFT_GRAD_QKV_OUT,   /* ... the qkv output (LoRA on qkv) */
    GRAFT_GRAD_LN1_OUT,   /* ... ln_1's output (lntune's ln_1) */
    GRAFT_GRAD_BLOCK_IN,  /* ... the block input (the layers below train) */
} graft_grad_depth_t;

/* Arithmetic of the four block projections' products (qkv, attention
 * output, MLP in and out) and the LM head's. Everything else, and all
 * storage, is fp32. */
typedef enum {
    GRAFT_FP32, /* cblas_sgemm */
    GRAFT_BF16, /* bf16 operands, fp32 sums (bf16.h; needs AVX512_BF16) */
} graft_precision_t;

typedef struct graft_gpt2 {
    graft_gpt2_config_t cfg;
    graft_precision_t precision; /* GRAFT_FP32 unless set (graft_gpt2_set_precision) */
    graft_bf16_scratch_t bf16;   /* owned: the bf16 products' packed operands */
    /* Owned: the byte tokenizer from graft_gpt2_new(), GPT-2's from
     * graft_gpt2_load() (NULL for a gpt2 config built by graft_gpt2_new(),
     * which has no vocabulary files to read). */
    graft_tokenizer_t *tok;
    /* Modules attached by peft.c (borrowed; NULL for the plain trunk). The
     * forward and backward passes call its hooks at fixed points. */
    struct graft_peft *peft;
    size_t param_sizes[GRAFT_GPT2_NUM_TENSORS];
    size_t num_params;
    float *params_memory;
    graft_gpt2_params_t params;
    float *grads_memory; /* NULL while the trunk is frozen */
    graft_gpt2_params_t grads;

    int B, T; /* allocated activation shape */
    size_t act_sizes[GRAFT_GPT2_NUM_ACTS];
    size_t num_acts;
    float *acts_memory;
    graft_gpt2_acts_t acts;
    float *grads_acts_memory;
    graft_gpt2_acts_t grads_acts;
    float *decode_memory; /* owned: graft_gpt2_decode_step's rows (up to B) */
    int32_t *inputs;  /* (B, T) copy of the last forward's inputs */
    int32_t *targets; /* (B, T) copy of the last forward's targets, -1 = ignored */
    int lm_rows;         /* positions with a target in the last forward */
    int32_t *lm_pos;     /* (B, T): their positions, in order */
    int32_t *lm_targets; /* (B, T): their targets */
    float *lm_losses;    /* (B, T): their losses */

    /* Shape of the last forward pass (b <= B, t <= T). */
    int cur_B, cur_T;
    float mean_loss; /* of the last forward with targets; -1 without */
    int loss_count;  /* non-ignored targets in it */
} graft_gpt2_t;

/* A model with parameters initialised GPT-2 style from the seed. */
graft_gpt2_t *graft_gpt2_new(const graft_gpt2_config_t *cfg, uint64_t seed);
void graft_gpt2_destroy(graft_gpt2_t **self_p);

/* Sets the projections' precision from its name, "fp32" or "bf16";
 * GRAFT_EINVAL (logged) for another name or bf16 on a CPU without
 * AVX512_BF16. */
int graft_gpt2_set_precision(graft_gpt2_t *m, const char *name);

/* Allocates (zeroed) weight-gradient memory: the trunk becomes trainable. */
void graft_gpt2_enable_grads(graft_gpt2_t *m);

/* Makes sure activations fit a (B, T) batch. */
void graft_gpt2_reserve(graft_gpt2_t *m, int B, int T);

/* Forward over inputs (B,T) up to the final LayerNorm (acts.lnf); then, if
 * targets (B,T) is not NULL, the LM head and the mean cross-entropy over
 * targets >= 0 (returned; -1 when targets is NULL). */
float graft_gpt2_forward(graft_gpt2_t *m, const int32_t *inputs, const int32_t *targets, int B,
                         int T);

/* Incremental (KV-cached) decoding after a graft_gpt2_forward: row i feeds
 * token tokens[i] at position pos[i] of sequence seq[i] (< the forward's B
 * and T) through every block, attending to that sequence's keys and values
 * at positions 0..pos[i] in acts.qkv. Those of earlier positions must be
 * the sequence's real tokens' (from the forward or earlier steps); the
 * step writes its own at pos[i]. Other activations of the forward are
 * left as they are, but the modules' saved inputs are overwritten (no
 * backward pass after decoding). Returns the rows' final-LayerNorm output
 * (N, C), owned by m and valid until the next call: the same numbers as
 * the forward's acts.lnf at (seq[i], pos[i]) over the same tokens, up to
 * summation order. N <= the forward's B; sequences must differ. */
const float *graft_gpt2_decode_step(graft_gpt2_t *m, const int32_t *seq, const int32_t *tokens,
                                    const int32_t *pos, int N);

/* Zeroes the weight gradients (activation gradients need no zeroing). */
void graft_gpt2_zero_grad(graft_gpt2_t *m);

/* Backward of the LM loss of the last forward (mean over counted targets). */
void graft_gpt2_backward(graft_gpt2_t *m);

/* Backward from a gradient that the caller wrote into grads_acts.lnf
 * (B,T,C), e.g. from a classification head. */
void graft_gpt2_backward_from_lnf(graft_gpt2_t *m);

/* ---- naming: Hugging Face GPT-2 tensor names and shapes ----------------- */

/* One named tensor of the trunk: a view into some block laid out like the
 * parameters (the parameters themselves, their gradients, optimiser state). */
typedef struct {
    char name[64];
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats, from the start of the block */
    size_t numel;
    int decay;     /* 1 for matrices (weight decay applies), 0 for vectors */
} graft_gpt2_tensor_t;

/* Number of named tensors: 4 + 12 L + ... (2 + 12 L + 2). */
int graft_gpt2_num_named(const graft_gpt2_config_t *cfg);
/* Fills out[0 .. graft_gpt2_num_named) in checkpoint order. */
void graft_gpt2_named(const graft_gpt2_t *m, graft_gpt2_tensor_t *out);

/* Checkpoints: the trunk in safetensors with HF GPT-2 names, plus metadata
 * (the config and the tokenizer kind, then the caller's pairs) and any
 * extra tensors (optimiser state, say) in the same atomically written file. */
int graft_gpt2_save(const graft_gpt2_t *m, const char *path, const graft_st_tensor_t *extra,
                    int n_extra, const char *const *meta_keys, const char *const *meta_values,
                    int n_meta);
/* Reads the config from a checkpoint's metadata (graft's "config.*" keys and
 * "tokenizer"). A file without them, such as a Hugging Face GPT-2
 * model.safetensors, takes n_embd, n_head, n_layer, n_positions and
 * vocab_size from the config.json beside it and GPT-2's BPE tokenizer. */
int graft_gpt2_read_config(const graft_st_file_t *f, graft_gpt2_config_t *cfg);
/* Fills m's weights from an open checkpoint; every tensor must be present
 * with the model's shape. */
int graft_gpt2_read_weights(graft_gpt2_t *m, const graft_st_file_t *f);
/* Opens path, builds the model its metadata describes and fills the
 * weights; a gpt2 tokenizer comes from vocab.json and merges.txt beside
 * path. The embedding's V rows must cover the tokenizer's tokens. *out is
 * owned by the caller. */
int graft_gpt2_load(const char *path, graft_gpt2_t **out);

/* Forward FLOPs per token of the model at context T (matmuls only, 2 per MAC);
 * a training step costs 3x (forward + backward). */
double graft_gpt2_flops_per_token(const graft_gpt2_config_t *cfg, int T);

#endif
