/* bf16.h — the trunk's linear-layer products (the block projections and
 * the LM head) and attention's products with bf16 operands and fp32 sums
 * (`--precision bf16`), for CPUs with AVX512_BF16.
 *
 * The same three products as matmul_forward / matmul_backward in ops.h, on
 * the same fp32 tensors: each call rounds its operands to bf16 (round to
 * nearest even) into a scratch buffer, multiplies them with VDPBF16PS (two
 * bf16 products per fp32 lane and instruction, twice the fp32 FMA's rate)
 * and sums in fp32. Weights, activations, gradients and the optimizer stay
 * fp32; only the products' inputs lose precision (8 bits of mantissa, a
 * relative rounding error of at most 2^-9 per operand), as in bf16 mixed
 * precision training elsewhere.
 *
 * gpt2.c sends only linear-layer products of 8 M multiply-adds and more
 * here (BF16_MIN_MACS); smaller ones stay on sgemm. Attention runs here
 * whole at bf16 when its heads fill the tiles' panels well (gpt2.c
 * bf16_attention): each head's products are small, but a head packs its
 * own operands on its own thread, with no parallel region per product.
 *
 * Layout inside a product: C (M, N) = A (M, K) @ B (K, N) runs on 8 x 48
 * tiles of C. A row's bf16 values come in pairs along K (one 32-bit word
 * per pair, broadcast to the 16 lanes); B is packed into panels of 48
 * columns where word [p][j] holds (B[2p][j], B[2p+1][j]). Odd K is padded
 * with a zero. Results do not depend on the number of threads.
 *
 * Ownership: the caller owns a graft_bf16_scratch_t (zeroed to start) and
 * passes it to every call; the module grows its buffer as needed and
 * graft_bf16_scratch_free releases it. One scratch serves one call at a
 * time. */
#ifndef GRAFT_BF16_H
#define GRAFT_BF16_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    void *mem;
    size_t cap; /* bytes */
} graft_bf16_scratch_t;

void graft_bf16_scratch_free(graft_bf16_scratch_t *s);

/* 1 when this CPU runs the bf16 products (AVX512_BF16), else 0. */
int graft_bf16_supported(void);

/* out (N, OC) = inp (N, C) @ weight (C, OC) + bias (OC; NULL: none). */
void bf16_matmul_forward(graft_bf16_scratch_t *s, float *out, const float *inp,
                         const float *weight, const float *bias, int N, int C, int OC);

/* dinp (N, C) = dout (N, OC) @ weight^T (NULL: not wanted);
 * dweight (C, OC) += inp^T @ dout (NULL: frozen). The bias gradient is
 * not touched (colsum_accumulate in ops.h). */
void bf16_matmul_backward(graft_bf16_scratch_t *s, float *dinp, float *dweight,
                          const float *dout, const float *inp, const float *weight, int N, int C,
                          int OC);

/* Causal multi-head self-attention (attention_forward / attention_backward
 * in ops.h, same arguments) with its four products at bf16: Q K^T and P V
 * forward, dO V^T, dS K, P^T dO and dS^T Q backward. The softmax and its
 * gradient stay fp32, and so do att (B,NH,T,T) and scratch. */
void bf16_attention_forward(graft_bf16_scratch_t *s, float *out, float *att, const float *inp,
                            int B, int T, int C, int NH);
void bf16_attention_backward(graft_bf16_scratch_t *s, float *dinp, float *scratch,
                             const float *dout, const float *inp, const float *att, int B, int T,
                             int C, int NH);

/* Float <-> bfloat16 bits (the wire's bf16 tensors and the products'
 * operands): round to nearest even; a NaN stays a (quiet) NaN. */
uint16_t graft_f32_to_bf16(float x);
float graft_bf16_to_f32(uint16_t b);

/* x rounded to the nearest bf16 (ties to even), as the products see it. */
float graft_bf16_round(float x);

#endif
