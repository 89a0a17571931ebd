/* bf16.c — bf16 products of the linear layers (see bf16.h for the layout). */
#include "bf16.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

#define MR 8  /* rows of a tile of C */
#define NR 48 /* columns of a tile of C: three vectors of 16 floats */
#define RB 64 /* rows of C per task on the threads (8 tiles) */

void graft_bf16_scratch_free(graft_bf16_scratch_t *s) {
    free(s->mem);
    s->mem = NULL;
    s->cap = 0;
}

int graft_bf16_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

float graft_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The scratch as 64-byte aligned 32-bit words: grown (never shrunk) to n. */
static uint32_t *scratch_words(graft_bf16_scratch_t *s, size_t n) {
    size_t bytes = (n * sizeof(uint32_t) + 63) & ~(size_t)63;
    if (bytes > s->cap) {
        free(s->mem);
        s->mem = aligned_alloc(64, bytes);
        if (!s->mem) {
            fprintf(stderr, "graft: out of memory allocating %zu bytes of bf16 scratch\n", bytes);
            abort();
        }
        s->cap = bytes;
    }
    return s->mem;
}

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* ---- packing ------------------------------------------------------------ */

/* 16 floats of a (with lanes past n read as 0) and 16 of b rounded to bf16
 * and interleaved: word j of the result is (a[j], b[j]), a in the low half. */
BF16_TARGET static inline __m512i pair_words(const float *a, const float *b, int n) {
    __mmask16 k = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    __m512 va = _mm512_maskz_loadu_ps(k, a);
    __m512 vb = b ? _mm512_maskz_loadu_ps(k, b) : _mm512_setzero_ps();
    /* cvtne2ps puts its second operand in the low 16 halves */
    __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(vb, va);
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                         16, 0);
    return _mm512_permutexvar_epi16(idx, ab);
}

/* Word j < round_up(n, 16) of pair p: (X[2p][j], X[2p+1][j]), columns
 * from n on 0 and X's row K, past an odd K, read as 0. Rows at stride ldx. */
BF16_TARGET static inline void pair_row(uint32_t *dst, const float *X, size_t ldx, int K, int p,
                                        int n) {
    const float *x0 = X + (size_t)2 * p * ldx;
    const float *x1 = 2 * p + 1 < K ? x0 + ldx : NULL;
    for (int j = 0; j < n; j += 16)
        _mm512_storeu_si512(dst + j, pair_words(x0 + j, x1 ? x1 + j : NULL, n - j));
}

/* X (K, n) packed by row pairs, whole rows: word [p][j] at dst[p * ldd + j]
 * (ldd >= round_up(n, 16)). Pairs in parallel. */
BF16_TARGET static void pack_row_pairs(uint32_t *dst, size_t ldd, const float *X, int K, int n) {
    int P = (K + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++) pair_row(dst + (size_t)p * ldd, X, (size_t)n, K, p, n);
}

/* X (K, N) packed by row pairs into panels of 48 columns: panel q's word
 * [p][j] = (X[2p][48q + j], X[2p+1][48q + j]) at dst[(q * P + p) * 48 + j],
 * P = ceil(K / 2). Pairs in parallel. */
BF16_TARGET static void pack_panels(uint32_t *dst, const float *X, int K, int N) {
    int P = (K + 1) / 2, panels = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++)
        for (int q = 0; q < panels; q++) {
            int j0 = q * NR;
            uint32_t *d = dst + ((size_t)q * P + p) * NR;
            pair_row(d, X + j0, (size_t)N, K, p, N - j0 < NR ? N - j0 : NR);
            for (int j = (int)round_up((size_t)(N - j0 < NR ? N - j0 : NR), 16); j < NR; j++)
                d[j] = 0;
        }
}

/* Rows of X (M, K) rounded to bf16 into dst at stride
 * ceil(K / 2) words (an odd K's last word padded with 0). Rows in
 * parallel. */
BF16_TARGET static void round_rows(uint32_t *dst, const float *X, int M, int K) {
    size_t ldx = (size_t)K;
    size_t P = (size_t)(K + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        const float *x = X + (size_t)m * ldx;
        uint32_t *d = dst + (size_t)m * P;
        for (int k = 0; k < K; k += 32) {
            int n = K - k < 32 ? K - k : 32;
            __mmask16 lo = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
            __mmask16 hi = n >= 32 ? (__mmask16)0xffff
                                   : (n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0);
            __m512 a = _mm512_maskz_loadu_ps(lo, x + k);
            __m512 b = _mm512_maskz_loadu_ps(hi, x + k + 16);
            __m512i w = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            int words = (n + 1) / 2;
            __mmask16 wk = words >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << words) - 1);
            _mm512_mask_storeu_epi32(d + k / 2, wk, w);
        }
    }
}

/* B panels of W^T for dinp = dout @ W^T, W (C, OC): panel q holds columns
 * [48q, 48q + 48) of W^T (rows of W), word [p][j] = (W[j][2p], W[j][2p+1]).
 * Wb is W rounded by round_rows (stride ceil(OC / 2) words). */
static void pack_transposed(uint32_t *dst, const uint32_t *Wb, int C, int OC) {
    size_t P = (size_t)(OC + 1) / 2;
    int panels = (C + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (int q = 0; q < panels; q++) {
        uint32_t *d = dst + (size_t)q * P * NR;
        for (size_t p = 0; p < P; p++)
            for (int j = 0; j < NR; j++) {
                int c = q * NR + j;
                d[p * NR + j] = c < C ? Wb[(size_t)c * P + p] : 0u;
            }
    }
}

/* ---- the tile ----------------------------------------------------------- */

/* C (mr, n) (+)= A (mr, 2P) @ B (2P, 48), mr <= 8, n <= 48. Word p of A's
 * row m is a[m][p * a_ps]; B is one packed panel. accumulate: add to C;
 * else write it (plus bias (n) when not NULL). C at row stride ldc. Rows
 * past mr reuse row 0 and are not stored. */
BF16_TARGET static void tile_8x48(int P, const uint32_t *const a[MR], size_t a_ps,
                                  const uint32_t *b, float *c, size_t ldc, int mr, int n,
                                  int accumulate, const float *bias) {
    __m512 acc[MR][3];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
        for (int v = 0; v < 3; v++) acc[m][v] = _mm512_setzero_ps();
    for (int p = 0; p < P; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR + 16);
        __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR + 32);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m512bh w = (__m512bh)_mm512_set1_epi32((int)a[m][(size_t)p * a_ps]);
            acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w, b0);
            acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w, b1);
            acc[m][2] = _mm512_dpbf16_ps(acc[m][2], w, b2);
        }
    }
    for (int v = 0; v < 3; v++) {
        int left = n - 16 * v;
        if (left <= 0) break;
        __mmask16 k = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * v) : _mm512_setzero_ps();
        for (int m = 0; m < mr; m++) {
            float *cm = c + (size_t)m * ldc + 16 * v;
            __m512 r = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(k, cm), acc[m][v])
                                  : _mm512_add_ps(bv, acc[m][v]);
            _mm512_mask_storeu_ps(cm, k, r);
        }
    }
}

/* C (M, N) (+)= A @ B over tasks of 64 rows x one 48-column panel, in
 * parallel (panel-major within a row block, so a block of A stays in
 * cache). A's row m, word p at A[m * a_rs + p * a_ps]; Bp the panels of
 * ceil(K / 2) = P words each. */
static void gemm_panels(int M, int N, int P, const uint32_t *A, size_t a_rs, size_t a_ps,
                        const uint32_t *Bp, float *C, size_t ldc, int accumulate,
                        const float *bias) {
    int panels = (N + NR - 1) / NR, blocks = (M + RB - 1) / RB;
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < blocks * panels; t++) {
        int i0 = t / panels * RB, q = t % panels, j0 = q * NR;
        int rows = M - i0 < RB ? M - i0 : RB, n = N - j0 < NR ? N - j0 : NR;
        for (int r = 0; r < rows; r += MR) {
            int mr = rows - r < MR ? rows - r : MR;
            const uint32_t *a[MR];
            for (int m = 0; m < MR; m++) a[m] = A + (size_t)(i0 + r + (m < mr ? m : 0)) * a_rs;
            tile_8x48(P, a, a_ps, Bp + (size_t)q * P * NR, C + (size_t)(i0 + r) * ldc + j0, ldc,
                      mr, n, accumulate, bias ? bias + j0 : NULL);
        }
    }
}

/* ---- the linear layer's products ---------------------------------------- */

void bf16_matmul_forward(graft_bf16_scratch_t *s, float *out, const float *inp,
                         const float *weight, const float *bias, int N, int C, int OC) {
    size_t P = (size_t)(C + 1) / 2, panels = (size_t)(OC + NR - 1) / NR;
    uint32_t *Ab = scratch_words(s, (size_t)N * P + panels * P * NR);
    uint32_t *Bp = Ab + (size_t)N * P;
    round_rows(Ab, inp, N, C);
    pack_panels(Bp, weight, C, OC);
    gemm_panels(N, OC, (int)P, Ab, P, 1, Bp, out, OC, 0, bias);
}

void bf16_matmul_backward(graft_bf16_scratch_t *s, float *dinp, float *dweight,
                          const float *dout, const float *inp, const float *weight, int N, int C,
                          int OC) {
    if (dinp) {
        /* dinp (N, C) = dout (N, OC) @ W^T: K = OC */
        size_t P = (size_t)(OC + 1) / 2, panels = (size_t)(C + NR - 1) / NR;
        uint32_t *Ab = scratch_words(s, (size_t)N * P + (size_t)C * P + panels * P * NR);
        uint32_t *Wb = Ab + (size_t)N * P, *Bp = Wb + (size_t)C * P;
        round_rows(Ab, dout, N, OC);
        round_rows(Wb, weight, C, OC);
        pack_transposed(Bp, Wb, C, OC);
        gemm_panels(N, C, (int)P, Ab, P, 1, Bp, dinp, C, 0, NULL);
    }
    if (dweight) {
        /* dW (C, OC) += inp^T (C, N) @ dout (N, OC): K = N. A's word p of
         * row c is (inp[2p][c], inp[2p+1][c]): inp packed by row pairs at
         * stride lda words. */
        size_t P = (size_t)(N + 1) / 2, panels = (size_t)(OC + NR - 1) / NR;
        size_t lda = round_up((size_t)C, 16);
        uint32_t *Ap = scratch_words(s, P * lda + panels * P * NR);
        uint32_t *Bp = Ap + P * lda;
        pack_row_pairs(Ap, lda, inp, N, C);
        pack_panels(Bp, dout, N, OC);
        gemm_panels(C, OC, (int)P, Ap, 1, lda, Bp, dweight, OC, 1, NULL);
    }
}
