/* ops.h — the trunk's kernels: plain functions over float arrays, each
 * forward beside its backward, shapes in the comments (B batch, T time,
 * C channels, OC output channels, NH heads, V vocabulary).
 *
 * Conventions (llm.c's, except for activation gradients):
 *  - Forward kernels write their outputs. Backward kernels WRITE (=) the
 *    gradient of their input activations (dinp) and ACCUMULATE (+=) into
 *    the gradients of parameters (dweight, dbias, ...): parameter gradients
 *    are zeroed once a step (or once per accumulation window), activation
 *    gradients never need zeroing — a step does not sweep the whole
 *    activation-gradient block with memset.
 *  - A NULL gradient pointer means "not needed": frozen weights never get
 *    their weight gradient computed, and no input gradient is computed
 *    where nothing below trains.
 *  - Linear weights are stored [in, out] (Hugging Face GPT-2 Conv1D layout),
 *    so a linear layer is out = inp @ w + b.
 *  - Kernels parallelise with OpenMP over fixed blocks of rows that the
 *    threads take as they come free (work of a single block stays on the
 *    calling thread, without a parallel region: decoding's few rows);
 *    graft's sums over rows go through per-block partials added in block
 *    order, so results are bit-identical run to run and do not depend on
 *    the thread count (see ops.c).
 * No kernel allocates except where noted (the row-summing kernels take a
 * small buffer of per-block partials, N/64 rows of C floats, per call);
 * the caller owns all buffers.
 */
#ifndef GRAFT_OPS_H
#define GRAFT_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out (B,T,C) = wte[inp] + wpe[t]; inp (B,T) token ids. */
void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                     int T, int C);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                      int T, int C);

/* out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, int N, int C);
/* dinp (N,C) = dres + the LayerNorm's input gradient for dout (N,C): the
 * residual stream's gradient and the branch's, in one pass. dres may be
 * NULL (nothing to add) or equal dinp (add in place). With dweight or
 * dbias it allocates the per-block partials of their sums (2C floats per
 * 64 rows) for the call. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dres,
                        const float *dout, const float *inp, const float *weight,
                        const float *mean, const float *rstd, int N, int C);

/* out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC); bias may be NULL. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int C, int OC);
/* The obviously-correct triple loop, kept to test matmul_forward against. */
void matmul_forward_naive(float *out, const float *inp, const float *weight, const float *bias,
                          int N, int C, int OC);
/* dinp (N,C) = dout @ weight^T; dweight (C,OC) += inp^T @ dout; dbias (OC)
 * += column sums of dout. Any of dinp, dweight, dbias may be NULL. */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int C, int OC);

/* Causal multi-head self-attention.
 * inp (B,T,3C) holds q,k,v; out (B,T,C); att (B,NH,T,T) keeps the softmax
 * probabilities for the backward pass (zero above the diagonal). */
void attention_forward(float *out, float *att, const float *inp, int B, int T, int C, int NH);
/* dinp (B,T,3C) =; scratch (B,NH,T,T) is overwritten. */
void attention_backward(float *dinp, float *scratch, const float *dout, const float *inp,
                        const float *att, int B, int T, int C, int NH);

/* One head's softmax between its two products, on rows [t0, t1) of its
 * (T, T) scores, of which keys [0, keys) are computed (keys >= t1; the
 * vector loops run to whole vectors within them): scale (1: none), keys
 * past each row's position masked, softmax in place, zeros up to T. Shared
 * by attention_forward and bf16.c's form of it. */
void attention_softmax_rows(float *s, int t0, int t1, int keys, int T, float scale);
/* Its backward on the same rows: ds holds dP = dO V^T on entry and
 * dS = scale P (dP - rowsum(dP P)) on return, 0 past the diagonal up to
 * zero_to. p holds P. */
void attention_softmax_grad_rows(float *ds, const float *p, int t0, int t1, int keys, int T,
                                 int zero_to, float scale);

/* Incremental decoding: one new query per row against cached keys and
 * values. Row i is position pos[i] of sequence seq[i]: q (N,3C) holds its
 * q,k,v (only q is read); cache (B,T,3C) holds every sequence's q,k,v by
 * position, the new row's k,v already at pos[i]. out (N,C) = softmax(q k^T
 * / sqrt(hs)) v over positions 0..pos[i]; scores (N,NH,T) is scratch. The
 * same numbers as attention_forward's row pos[i], up to summation order. */
void attention_decode(float *out, float *scores, const float *q, const float *cache,
                      const int32_t *seq, const int32_t *pos, int N, int T, int C, int NH);

/* GELU, tanh approximation (GPT-2). out, inp (N). dinp may equal dout. */
void gelu_forward(float *out, const float *inp, size_t N);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t N);

/* out (N) = inp1 + inp2. Its backward is the identity on both inputs: the
 * trunk's backward hands the residual stream's gradient on as it is and
 * adds each branch's through layernorm_backward's dres. */
void residual_forward(float *out, const float *inp1, const float *inp2, size_t N);

/* Tied language-model head: logits (N,V) = inp (N,C) @ wte (V,C)^T.
 * Backward: dinp = dlogits @ wte; dwte += dlogits^T @ inp (either NULL). */
void lmhead_forward(float *logits, const float *inp, const float *wte, int N, int C, int V);
void lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                     const float *wte, int N, int C, int V);

/* Softmax cross-entropy: probs (N,V) = softmax(logits);
 * losses (N) = -log probs[target]; targets < 0 are ignored (loss 0).
 * Returns the mean loss over the non-ignored positions (0 if none) and
 * stores their count in *count. */
float crossentropy_forward(float *losses, float *probs, const float *logits,
                           const int32_t *targets, int N, int V, int *count);
/* dlogits (N,V) = (probs - onehot(target)) * scale for non-ignored rows,
 * 0 elsewhere (written, not accumulated: dlogits is a scratch buffer). */
void crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N,
                           int V, float scale);

/* Classification head on a pooled hidden state; pos[b] is the last real
 * token of row b (the rest is padding).
 * GRAFT_POOL_LAST: pooled (B,C) = hidden (B,T,C) at position pos[b].
 * GRAFT_POOL_MEAN: pooled (B,C) = the mean of hidden over positions
 *   0..pos[b] of each row (in position order).
 * Backward writes dhidden (B,T,C): dpooled, or dpooled / (pos[b] + 1) at
 * every pooled position, zero elsewhere. */
typedef enum { GRAFT_POOL_LAST, GRAFT_POOL_MEAN } graft_pool_t;
void pool_forward(float *pooled, const float *hidden, const int32_t *pos, int B, int T, int C,
                  graft_pool_t how);
void pool_backward(float *dhidden, const float *dpooled, const int32_t *pos, int B, int T, int C,
                   graft_pool_t how);

/* Ordered column reductions (bit-identical whatever the thread count's
 * scheduling): acc (C) += sum over rows of x (N,C), or of x * y. They
 * allocate the per-block partials (C floats per 64 rows) for the call. */
void colsum_accumulate(float *acc, const float *x, int N, int C);
void colsum_product_accumulate(float *acc, const float *x, const float *y, int N, int C);

/* Row-wise softmax over K classes, in place safe (out may equal inp). */
void softmax_rows(float *out, const float *inp, int N, int K);

#endif
