/* bf16.c — bf16 products of the linear layers and of attention (see bf16.h
 * for the layout). */
#include "bf16.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"
#include "ops.h"

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

uint16_t graft_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    /* A NaN stays a NaN (quieted), as VCVTNE2PS2BF16 keeps it: rounding
     * its bits could carry into the exponent (Inf) or the sign (-0). */
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float graft_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

float graft_bf16_round(float x) { return graft_bf16_to_f32(graft_f32_to_bf16(x)); }

/* The scratch as 64-byte aligned 32-bit words: grown (never shrunk) to n. */
static uint32_t *scratch_words(graft_bf16_scratch_t *s, size_t n) {
    size_t bytes = (n * sizeof(uint32_t) + 63) & ~(size_t)63;
    if (bytes > s->cap) {
        free(s->mem);
        s->mem = graft_xalloc64(bytes, 0);
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

/* Pair p of X (K, N), rows at stride ldx, into every panel of 48 columns:
 * panel q's word [p][j] = (X[2p][48q + j], X[2p+1][48q + j]) at
 * dst[(q * P + p) * 48 + j], P = ceil(K / 2); columns past N are 0. */
BF16_TARGET static void panel_pair(uint32_t *dst, const float *X, size_t ldx, int K, int N,
                                   int p) {
    int P = (K + 1) / 2, panels = (N + NR - 1) / NR;
    for (int q = 0; q < panels; q++) {
        int j0 = q * NR, n = N - j0 < NR ? N - j0 : NR;
        uint32_t *d = dst + ((size_t)q * P + p) * NR;
        pair_row(d, X + j0, ldx, K, p, n);
        for (int j = (int)round_up((size_t)n, 16); j < NR; j++) d[j] = 0;
    }
}

/* X (K, N) packed by row pairs into panels (panel_pair). Pairs in parallel. */
static void pack_panels(uint32_t *dst, const float *X, int K, int N) {
    int P = (K + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++) panel_pair(dst, X, (size_t)N, K, N, p);
}

/* Words [k / 2, k / 2 + 16) of a row x rounded to bf16: x[k .. k + 32)
 * in pairs, values from n on read as 0. */
BF16_TARGET static inline __m512i round_words(const float *x, int n) {
    __mmask16 lo = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    __mmask16 hi = n >= 32 ? (__mmask16)0xffff : (n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0);
    __m512 a = _mm512_maskz_loadu_ps(lo, x);
    __m512 b = _mm512_maskz_loadu_ps(hi, x + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

/* Row x (K) rounded to bf16 into ceil(K / 2) words (an odd K's last word
 * padded with 0). */
BF16_TARGET static void round_row(uint32_t *d, const float *x, int K) {
    for (int k = 0; k < K; k += 32) {
        int n = K - k < 32 ? K - k : 32, words = (n + 1) / 2;
        __mmask16 wk = words >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << words) - 1);
        _mm512_mask_storeu_epi32(d + k / 2, wk, round_words(x + k, n));
    }
}

/* Rows of X (M, K) rounded to bf16 into dst at stride ceil(K / 2) words.
 * Rows in parallel. */
static void round_rows(uint32_t *dst, const float *X, int M, int K) {
    size_t P = (size_t)(K + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) round_row(dst + (size_t)m * P, X + (size_t)m * K, K);
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
            /* a whole vector goes out unmasked: loads of it that follow
             * soon (the softmax reads its scores at once) wait much longer
             * for a masked store */
            if (left >= 16) _mm512_storeu_ps(cm, r);
            else _mm512_mask_storeu_ps(cm, k, r);
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

/* ---- attention ---------------------------------------------------------- */

/* One head's products run on one thread, on operands it packs into its own
 * share of the scratch: the (b, h) pairs run in parallel, as in ops.c's
 * attention. Rows go in blocks of 8 (one tile high); a block of queries
 * [r0, t1) meets only the keys [0, t1), so the score products stop at the
 * panel holding key t1 - 1 and the products over keys stop at pair
 * ceil(t1 / 2). */

/* Rows of X (R, K) at stride ldx as the columns of panels of 48: word
 * [q][p][j] = (X[48q + j][2p], X[48q + j][2p + 1]) at dst[(q * P + p) * 48
 * + j], P = ceil(K / 2); columns from R on are 0. The B operand of
 * A @ X^T. The rows are rounded into tmp (R * P words) first, then
 * gathered 16 at a time. */
BF16_TARGET static void panel_rows_transposed(uint32_t *dst, uint32_t *tmp, const float *X,
                                              size_t ldx, int R, int K) {
    int P = (K + 1) / 2, panels = (R + NR - 1) / NR;
    for (int r = 0; r < R; r++) round_row(tmp + (size_t)r * P, X + (size_t)r * ldx, K);
    const __m512i stride = _mm512_mullo_epi32(_mm512_set1_epi32(P),
                                              _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7,
                                                               6, 5, 4, 3, 2, 1, 0));
    for (int q = 0; q < panels; q++)
        for (int v = 0; v < NR / 16; v++) {
            int r0 = q * NR + 16 * v, left = R - r0;
            __mmask16 k = left >= 16  ? (__mmask16)0xffff
                          : left <= 0 ? (__mmask16)0
                                      : (__mmask16)((1u << left) - 1);
            const uint32_t *src = tmp + (size_t)(r0 < R ? r0 : 0) * P;
            uint32_t *d = dst + (size_t)q * P * NR + 16 * v;
            for (int p = 0; p < P; p++)
                _mm512_storeu_si512(d + (size_t)p * NR,
                                    _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, stride,
                                                                src + p, 4));
        }
}

/* X (K, N), rows at stride ldx, packed by row pairs into panels
 * (panel_pair), on the calling thread. */
static void panels_serial(uint32_t *dst, const float *X, size_t ldx, int K, int N) {
    for (int p = 0; p < (K + 1) / 2; p++) panel_pair(dst, X, ldx, K, N, p);
}

/* The pointers to a tile's rows: mr rows of A from A0 at stride a_rs, the
 * rest repeating the first (computed, not stored). */
static void tile_rows(const uint32_t *a[MR], const uint32_t *A0, size_t a_rs, int mr) {
    for (int m = 0; m < MR; m++) a[m] = A0 + (size_t)(m < mr ? m : 0) * a_rs;
}

/* C (mr, N) = A @ B over all of B's panels: A's rows as tile_rows gives
 * them (word p of row m at a[m][p * a_ps]), P pairs, B's panels of Pb pairs
 * each (the first P of them used). */
static void tile_row_of_panels(int N, int P, const uint32_t *const a[MR], size_t a_ps,
                               const uint32_t *Bp, size_t Pb, float *c, size_t ldc, int mr) {
    for (int q = 0; q * NR < N; q++)
        tile_8x48(P, a, a_ps, Bp + (size_t)q * Pb * NR, c + (size_t)q * NR, ldc, mr,
                  N - q * NR < NR ? N - q * NR : NR, 0, NULL);
}

/* The keys whose scores a block of queries ending at t1 computes: its
 * score tiles end at a whole panel, or at T. */
static int computed_keys(int t1, int T) {
    int end = (t1 + NR - 1) / NR * NR;
    return end < T ? end : T;
}

/* A head's packed operands: sizes in words, each rounded to 16 (64 bytes). */
typedef struct {
    size_t rows_hs, panels_t, rows_t, panels_hs, pairs_t;
} head_words_t;

static head_words_t head_words(int T, int hs) {
    size_t Ph = (size_t)(hs + 1) / 2, Pt = (size_t)(T + 1) / 2;
    size_t nT = (size_t)(T + NR - 1) / NR, nh = (size_t)(hs + NR - 1) / NR;
    return (head_words_t){
        .rows_hs = round_up((size_t)T * Ph, 16),                      /* (T, hs) rounded rows */
        .panels_t = round_up(nT * Ph * NR, 16),                       /* (T, hs) as B^T */
        .rows_t = round_up((size_t)T * Pt, 16),                       /* (T, T) rounded rows */
        .panels_hs = round_up(nh * Pt * NR, 16),                      /* (T, hs) as B */
        .pairs_t = round_up(Pt * round_up((size_t)T, 16), 16),        /* (T, T) by row pairs */
    };
}

/* Words of scratch one thread needs for a head's backward (the larger). */
static size_t head_scratch(int T, int hs) {
    head_words_t w = head_words(T, hs);
    return 3 * w.rows_hs + w.panels_t + w.rows_t + 3 * w.panels_hs + 2 * w.pairs_t;
}

/* The pass over a head's blocks of queries that both directions share:
 * S (T, T) = A @ B^T, from A's rounded rows Ab and B's transposed panels
 * Bt; on the block's rows of S, the softmax (P NULL: S becomes P) or its
 * gradient (S = dP becomes dS, from P); then out (rows at stride ldo) =
 * S @ C, from S's rows rounded into Sb and C's row-pair panels Cp. */
static void query_blocks(const uint32_t *Ab, const uint32_t *Bt, uint32_t *Sb,
                         const uint32_t *Cp, float *S, const float *P, float *out, size_t ldo,
                         int T, int hs, float scale) {
    size_t Ph = (size_t)(hs + 1) / 2, Pt = (size_t)(T + 1) / 2;
    const uint32_t *a[MR];
    for (int r0 = 0; r0 < T; r0 += MR) {
        int mr = T - r0 < MR ? T - r0 : MR, t1 = r0 + mr, keys = computed_keys(t1, T);
        tile_rows(a, Ab + r0 * Ph, Ph, mr);
        tile_row_of_panels(t1, (int)Ph, a, 1, Bt, Ph, S + (size_t)r0 * T, (size_t)T, mr);
        if (P) attention_softmax_grad_rows(S, P, r0, t1, keys, T, T, scale);
        else attention_softmax_rows(S, r0, t1, keys, T, scale);
        for (int t = r0; t < t1; t++) round_row(Sb + t * Pt, S + (size_t)t * T, t1);
        tile_rows(a, Sb + r0 * Pt, Pt, mr);
        tile_row_of_panels(hs, (t1 + 1) / 2, a, 1, Cp, Pt, out + r0 * ldo, ldo, mr);
    }
}

/* One head: S = scale Q K^T, P = causal softmax(S) into S (T, T), O = P V
 * into o (rows at stride ldo). q, k, v rows at stride ld. */
static void head_forward(uint32_t *w, float *o, size_t ldo, float *S, const float *q,
                         const float *k, const float *v, size_t ld, int T, int hs, float scale) {
    head_words_t n = head_words(T, hs);
    size_t Ph = (size_t)(hs + 1) / 2;
    uint32_t *Qb = w, *Kt = Qb + n.rows_hs, *Pb = Kt + n.panels_t, *Vp = Pb + n.rows_t;
    uint32_t *tmp = Vp + n.panels_hs;
    for (int t = 0; t < T; t++) round_row(Qb + t * Ph, q + t * ld, hs);
    panel_rows_transposed(Kt, tmp, k, ld, T, hs);
    panels_serial(Vp, v, ld, T, hs);
    query_blocks(Qb, Kt, Pb, Vp, S, NULL, o, ldo, T, hs, scale);
}

/* One head's backward: from dO (rows at stride ldo) and P (T, T), dS (T, T)
 * = the scores' gradient, and dq, dk, dv (rows at stride ld) = the
 * gradients of q, k, v. */
static void head_backward(uint32_t *w, float *dq, float *dk, float *dv, float *dS,
                          const float *P, const float *dO, size_t ldo, const float *q,
                          const float *k, const float *v, size_t ld, int T, int hs, float scale) {
    head_words_t n = head_words(T, hs);
    size_t Ph = (size_t)(hs + 1) / 2, Pt = (size_t)(T + 1) / 2, ldT = round_up((size_t)T, 16);
    uint32_t *dOb = w, *Vt = dOb + n.rows_hs, *dSb = Vt + n.panels_t, *Kp = dSb + n.rows_t;
    uint32_t *dOp = Kp + n.panels_hs, *Qp = dOp + n.panels_hs, *Pr = Qp + n.panels_hs;
    uint32_t *dSr = Pr + n.pairs_t, *tmp = dSr + n.pairs_t;
    for (int t = 0; t < T; t++) round_row(dOb + t * Ph, dO + t * ldo, hs);
    panel_rows_transposed(Vt, tmp, v, ld, T, hs);
    panels_serial(Kp, k, ld, T, hs);
    /* per block of queries: dP = dO V^T, dS from it, dQ = dS K */
    query_blocks(dOb, Vt, dSb, Kp, dS, P, dq, ld, T, hs, scale);
    const uint32_t *a[MR];
    /* per block of keys [j0, j0 + 8), from the queries t >= j0 (pairs from
     * j0 / 2 on): dV = P^T dO, dK = dS^T Q */
    for (size_t p = 0; p < Pt; p++) {
        pair_row(Pr + p * ldT, P, (size_t)T, T, (int)p, T);
        pair_row(dSr + p * ldT, dS, (size_t)T, T, (int)p, T);
    }
    panels_serial(dOp, dO, ldo, T, hs);
    panels_serial(Qp, q, ld, T, hs);
    for (int j0 = 0; j0 < T; j0 += MR) {
        int mr = T - j0 < MR ? T - j0 : MR;
        size_t p0 = (size_t)j0 / 2;
        int pairs = (int)(Pt - p0);
        tile_rows(a, Pr + p0 * ldT + j0, 1, mr);
        tile_row_of_panels(hs, pairs, a, ldT, dOp + p0 * NR, Pt, dv + j0 * ld, ld, mr);
        tile_rows(a, dSr + p0 * ldT + j0, 1, mr);
        tile_row_of_panels(hs, pairs, a, ldT, Qp + p0 * NR, Pt, dk + j0 * ld, ld, mr);
    }
}

/* One share of the scratch per thread, of *per words each: the heads in
 * parallel each pack their operands into their thread's share. */
static uint32_t *thread_scratches(graft_bf16_scratch_t *s, int T, int hs, size_t *per) {
    *per = head_scratch(T, hs);
    return scratch_words(s, *per * (size_t)omp_get_max_threads());
}

void bf16_attention_forward(graft_bf16_scratch_t *s, float *out, float *att, const float *inp,
                            int B, int T, int C, int NH) {
    int hs = C / NH;
    size_t C3 = (size_t)3 * C, per;
    uint32_t *ws = thread_scratches(s, T, hs, &per);
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = inp + (size_t)b * T * C3 + (size_t)h * hs;
            head_forward(ws + per * (size_t)omp_get_thread_num(),
                         out + (size_t)b * T * C + (size_t)h * hs, (size_t)C,
                         att + ((size_t)b * NH + h) * T * T, q, q + C, q + 2 * C, C3, T, hs,
                         scale);
        }
}

void bf16_attention_backward(graft_bf16_scratch_t *s, float *dinp, float *scratch,
                             const float *dout, const float *inp, const float *att, int B, int T,
                             int C, int NH) {
    int hs = C / NH;
    size_t C3 = (size_t)3 * C, per;
    uint32_t *ws = thread_scratches(s, T, hs, &per);
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t o3 = (size_t)b * T * C3 + (size_t)h * hs, hh = ((size_t)b * NH + h) * T * T;
            const float *q = inp + o3;
            float *dq = dinp + o3;
            head_backward(ws + per * (size_t)omp_get_thread_num(), dq, dq + C, dq + 2 * C,
                          scratch + hh, att + hh, dout + (size_t)b * T * C + (size_t)h * hs,
                          (size_t)C, q, q + C, q + 2 * C, C3, T, hs, scale);
        }
}
