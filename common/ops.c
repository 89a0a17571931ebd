/* ops.c — the trunk's kernels (see ops.h for the conventions). */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "graft.h"

/* ---- exp for vector loops ------------------------------------------------- */

/* e^x within about 2 ulp for x in [-87.3, 88]; 0 below (e^-87.3 is the
 * smallest normal float, so -INFINITY gives an exact 0) and e^88 above. Written without library
 * calls so that `omp simd` loops using it compile to AVX-512 code; expf and
 * tanhf from libm are scalar calls and made GELU and the softmaxes the
 * slowest kernels of a step. Cephes' expf: n = round(x / ln 2), r = x - n
 * ln 2 in two parts, e^r by a degree-6 polynomial, times 2^n via the
 * exponent bits. */
static inline float vexpf(float x) {
    int underflow = x < -87.33654f;
    x = underflow ? -87.33654f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return underflow ? 0.0f : p * scale;
}

/* ---- work on the OpenMP threads ------------------------------------------ */

/* Kernels cut their rows into fixed blocks that the threads take as they
 * come free (schedule(dynamic)). On a machine shared with other processes a
 * descheduled thread then holds up only the block in its hands, where a
 * static split makes the whole team wait for that thread's share at the
 * next barrier. Blocks depend on the shapes only, never on the thread
 * count, and sums over rows go through one partial per block, added in
 * block order: results are bit-identical run to run and whatever the
 * number of threads. */
#define ROW_BLOCK 64     /* rows per block of the row-wise kernels */
#define FLAT_BLOCK 16384 /* elements per block of the element-wise kernels */

static int num_blocks(int n, int block) { return (n + block - 1) / block; }

/* Rows of C per block of a matrix product: 256 for tall products (fewer
 * blocks repack the weight less often), 64 for short ones. */
static int gemm_block_rows(int M) { return M >= 1024 ? 256 : 64; }

/* cblas_sgemm (row-major) with C's M rows in blocks on the threads: block i
 * is rows [i0, i0 + m) of op(A) and of C. OpenBLAS runs single-threaded
 * inside the parallel region, each element of C comes from one call over
 * the whole K. */
static void sgemm_rows(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc) {
    int rows = gemm_block_rows(M), nblocks = num_blocks(M, rows);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nblocks; i++) {
        int i0 = i * rows, m = M - i0 < rows ? M - i0 : rows;
        const float *Ai = ta == CblasNoTrans ? A + (size_t)i0 * lda : A + i0;
        cblas_sgemm(CblasRowMajor, ta, tb, m, N, K, alpha, Ai, lda, B, ldb, beta,
                    C + (size_t)i0 * ldc, ldc);
    }
}

/* ---- row reductions ------------------------------------------------------ */

/* The largest of x (n), the sum of x (n) and the dot product of x and y
 * (n), summed in 16 lanes. GCC's `omp simd reduction` leaves its lanes on
 * the stack and reads them back as one vector, a store-forwarding stall on
 * every call: on the softmax's rows of 128 that was a third of its time.
 * With AVX-512 the lanes stay in a register; elsewhere plain loops. */
#ifdef __AVX512F__
#include <immintrin.h>

static inline __mmask16 tail_mask(int left) { return (__mmask16)((1u << left) - 1); }

static inline float row_max(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
    if (j < n) {
        __mmask16 k = tail_mask(n - j);
        m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + j));
    }
    return _mm512_reduce_max_ps(m);
}

static inline float row_sum(const float *x, int n) {
    __m512 s = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= n; j += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + j));
    if (j < n) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask(n - j), x + j));
    return _mm512_reduce_add_ps(s);
}

static inline float row_dot(const float *x, const float *y, int n) {
    __m512 s = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= n; j += 16)
        s = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j), s);
    if (j < n) {
        __mmask16 k = tail_mask(n - j);
        s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + j), _mm512_maskz_loadu_ps(k, y + j), s);
    }
    return _mm512_reduce_add_ps(s);
}
/* Lanes k of v to p: a whole vector unmasked, since a load that soon
 * reads what a masked store wrote waits until the store retires. */
static inline void store_lanes(float *p, __mmask16 k, __m512 v) {
    if (k == (__mmask16)0xffff) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, k, v);
}

/* vexpf on 16 lanes, the same operations in the same order (so the same
 * bits). */
static inline __m512 vexp16(__m512 x) {
    __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps((__mmask16)~under, p, _mm512_castsi512_ps(bits));
}

/* row (n) = softmax(scale row[0, valid)) on its first valid values and 0
 * on the rest (scale > 0), in one pass of whole vectors after the max. */
static inline void row_softmax_causal(float *row, int valid, int n, float scale) {
    __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(scale * row_max(row, valid));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 kn = n - j >= 16 ? (__mmask16)0xffff : tail_mask(n - j);
        __mmask16 kv = valid - j >= 16 ? (__mmask16)0xffff
                       : valid > j     ? tail_mask(valid - j)
                                       : (__mmask16)0;
        __m512 x = _mm512_maskz_loadu_ps(kn, row + j);
        __m512 e = _mm512_maskz_mov_ps(kv, vexp16(_mm512_fmsub_ps(x, vs, vm)));
        store_lanes(row + j, kn, e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int j = 0; j < n; j += 16) {
        __mmask16 kn = n - j >= 16 ? (__mmask16)0xffff : tail_mask(n - j);
        store_lanes(row + j, kn, _mm512_mul_ps(_mm512_maskz_loadu_ps(kn, row + j), inv));
    }
}
#else
static inline float row_max(const float *x, int n) {
    float m = -INFINITY;
    for (int j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

static inline float row_sum(const float *x, int n) {
    float s = 0.0f;
    for (int j = 0; j < n; j++) s += x[j];
    return s;
}

static inline float row_dot(const float *x, const float *y, int n) {
    float s = 0.0f;
    for (int j = 0; j < n; j++) s += x[j] * y[j];
    return s;
}

static inline void row_softmax_causal(float *row, int valid, int n, float scale) {
    float maxv = scale * row_max(row, valid);
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] = j < valid ? vexpf(scale * row[j] - maxv) : 0.0f;
    float inv = 1.0f / row_sum(row, n);
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] *= inv;
}
#endif

/* y (n) = softmax(x (n)); y may equal x. Vector loops (the sums' order is
 * fixed by the code, so results repeat run to run). */
static void softmax_row(float *y, const float *x, int n) {
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int k = 0; k < n; k++) maxv = x[k] > maxv ? x[k] : maxv;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int k = 0; k < n; k++) {
        float e = vexpf(x[k] - maxv);
        y[k] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int k = 0; k < n; k++) y[k] *= inv;
}

/* ---- encoder ------------------------------------------------------------ */

void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                     int T, int C) {
#pragma omp parallel for collapse(2) schedule(dynamic, ROW_BLOCK)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *we = wte + (size_t)inp[b * T + t] * C;
            const float *pe = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        }
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                      int T, int C) {
    /* Rows of dwte may repeat within a batch, so the scatter runs serially
     * (it is a tiny share of the step). */
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *d = dout + ((size_t)b * T + t) * C;
            if (dwte) {
                float *dw = dwte + (size_t)inp[b * T + t] * C;
                for (int c = 0; c < C; c++) dw[c] += d[c];
            }
            if (dwpe) {
                float *dp = dwpe + (size_t)t * C;
                for (int c = 0; c < C; c++) dp[c] += d[c];
            }
        }
    }
}

/* ---- ordered column reductions ------------------------------------------ */

/* Sums per-block partials (nblocks, C) into acc (C) in block order so the
 * result does not depend on scheduling. */
static void reduce_partials(float *acc, const float *partials, int nblocks, int C) {
    for (int i = 0; i < nblocks; i++) {
        const float *p = partials + (size_t)i * C;
#pragma omp simd
        for (int c = 0; c < C; c++) acc[c] += p[c];
    }
}

/* Shared body of the two column reductions: y == NULL means plain sums. */
static void colsum_impl(float *acc, const float *x, const float *y, int N, int C) {
    int nblocks = num_blocks(N, ROW_BLOCK);
    float *partials = graft_xcalloc((size_t)nblocks * C, sizeof(float));
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < nblocks; blk++) {
        float *p = partials + (size_t)blk * C;
        int end = (blk + 1) * ROW_BLOCK < N ? (blk + 1) * ROW_BLOCK : N;
        for (int i = blk * ROW_BLOCK; i < end; i++) {
            const float *xr = x + (size_t)i * C;
            if (y) {
                const float *yr = y + (size_t)i * C;
#pragma omp simd
                for (int c = 0; c < C; c++) p[c] += xr[c] * yr[c];
            } else {
#pragma omp simd
                for (int c = 0; c < C; c++) p[c] += xr[c];
            }
        }
    }
    reduce_partials(acc, partials, nblocks, C);
    free(partials);
}

void colsum_accumulate(float *acc, const float *x, int N, int C) { colsum_impl(acc, x, NULL, N, C); }

void colsum_product_accumulate(float *acc, const float *x, const float *y, int N, int C) {
    colsum_impl(acc, x, y, N, C);
}

/* ---- layernorm ---------------------------------------------------------- */

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, int N, int C) {
    const float eps = 1e-5f;
#pragma omp parallel for schedule(dynamic, ROW_BLOCK) if (N > ROW_BLOCK)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) sum += x[c];
        float m = sum / C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        v /= C;
        float s = 1.0f / sqrtf(v + eps);
        float *o = out + (size_t)i * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[i] = m;
        rstd[i] = s;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dres,
                        const float *dout, const float *inp, const float *weight,
                        const float *mean, const float *rstd, int N, int C) {
    int need_params = dweight || dbias;
    if (!dinp && !need_params) return;
    int nblocks = num_blocks(N, ROW_BLOCK);
    float *partials = need_params ? graft_xcalloc((size_t)nblocks * 2 * C, sizeof(float)) : NULL;
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < nblocks; blk++) {
        float *pw = need_params ? partials + (size_t)blk * 2 * C : NULL;
        float *pb = need_params ? pw + C : NULL;
        int end = (blk + 1) * ROW_BLOCK < N ? (blk + 1) * ROW_BLOCK : N;
        for (int i = blk * ROW_BLOCK; i < end; i++) {
            const float *d = dout + (size_t)i * C;
            const float *x = inp + (size_t)i * C;
            float m = mean[i], s = rstd[i];
            if (pw) {
#pragma omp simd
                for (int c = 0; c < C; c++) {
                    pw[c] += (x[c] - m) * s * d[c];
                    pb[c] += d[c];
                }
            }
            if (!dinp) continue;
            float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
            for (int c = 0; c < C; c++) {
                float dnorm = weight[c] * d[c];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * (x[c] - m) * s;
            }
            dnorm_mean /= C;
            dnorm_norm_mean /= C;
            float *di = dinp + (size_t)i * C;
            const float *dr = dres ? dres + (size_t)i * C : NULL;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - m) * s;
                float g = (weight[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
                di[c] = dr ? dr[c] + g : g;
            }
        }
    }
    if (need_params) {
        for (int t = 0; t < nblocks; t++) {
            const float *pw = partials + (size_t)t * 2 * C;
            if (dweight) reduce_partials(dweight, pw, 1, C);
            if (dbias) reduce_partials(dbias, pw + C, 1, C);
        }
        free(partials);
    }
}

/* ---- matmul ------------------------------------------------------------- */

void matmul_forward_naive(float *out, const float *inp, const float *weight, const float *bias,
                          int N, int C, int OC) {
    for (int i = 0; i < N; i++) {
        for (int o = 0; o < OC; o++) {
            double acc = bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++) acc += (double)inp[(size_t)i * C + c] * weight[(size_t)c * OC + o];
            out[(size_t)i * OC + o] = (float)acc;
        }
    }
}

/* Columns per block of a product with a single block of rows (decoding's
 * few rows, a classification head's batch): the threads share its columns
 * instead of one thread taking it all. */
#define SHORT_BLOCK_COLS 64

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int C, int OC) {
    int rows = gemm_block_rows(N), nblocks = num_blocks(N, rows);
    /* A product of one block of rows goes in blocks of columns instead. */
    int cols = nblocks == 1 ? SHORT_BLOCK_COLS : OC, ncols = num_blocks(OC, cols);
    /* Each block starts from the bias (beta 1) or from zero (beta 0). */
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nblocks * ncols; i++) {
        int i0 = i / ncols * rows, m = N - i0 < rows ? N - i0 : rows;
        int j0 = i % ncols * cols, n = OC - j0 < cols ? OC - j0 : cols;
        float *o = out + (size_t)i0 * OC + j0;
        if (bias)
            for (int r = 0; r < m; r++)
                memcpy(o + (size_t)r * OC, bias + j0, (size_t)n * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, C, 1.0f,
                    inp + (size_t)i0 * C, C, weight + j0, OC, bias ? 1.0f : 0.0f, o, OC);
    }
}

/* Columns per block of a weight gradient: about half of OC, in whole
 * 16-float vectors, at most 512. Each block is one call over all N rows
 * that packs the whole (N, C) input, so blocks stay wide; two or more let
 * the threads share the product without OpenBLAS's own split, which ran
 * a (C, OC) = (768, 192) gradient at two thirds of the speed in isolation
 * (in a whole step, which reads its operands from memory, the difference
 * is within the noise). */
static int wgrad_block_cols(int OC) {
    int half = ((OC + 1) / 2 + 15) & ~15;
    return half < 512 ? half : 512;
}

/* dW (K, OC) += X^T (K, N) @ D (N, OC) in column blocks of wgrad_block_cols,
 * and dX (N, K) = D @ W^T (N, OC) (OC, K) in row blocks of gemm_block_rows,
 * all blocks in one parallel region: the weight-gradient blocks (the larger
 * tasks) go first and the input-gradient blocks fill in after them, so no
 * thread waits at a barrier between the two products. Each element of
 * either result comes from one call over its whole sum, and the blocks
 * depend only on the shapes: results do not depend on the threads. Either
 * dX or dW may be NULL; W is (K, OC) read transposed (tw = CblasTrans) or
 * (OC, K) as it is, at leading dimension ldw. */
static void linear_grads(float *dX, float *dW, const float *D, const float *X, const float *W,
                         CBLAS_TRANSPOSE tw, int ldw, int N, int K, int OC) {
    int cols = wgrad_block_cols(OC), ncol = dW ? num_blocks(OC, cols) : 0;
    int rows = gemm_block_rows(N), nrow = dX ? num_blocks(N, rows) : 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < ncol + nrow; i++) {
        if (i < ncol) {
            int j0 = i * cols, n = OC - j0 < cols ? OC - j0 : cols;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, n, N, 1.0f, X, K, D + j0,
                        OC, 1.0f, dW + j0, OC);
        } else {
            int i0 = (i - ncol) * rows, m = N - i0 < rows ? N - i0 : rows;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tw, m, K, OC, 1.0f, D + (size_t)i0 * OC, OC,
                        W, ldw, 0.0f, dX + (size_t)i0 * K, K);
        }
    }
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int C, int OC) {
    /* weight is (C, OC): dinp = dout @ weight^T */
    linear_grads(dinp, dweight, dout, inp, weight, CblasTrans, OC, N, C, OC);
    if (dbias) colsum_accumulate(dbias, dout, N, OC);
}

void lmhead_forward(float *logits, const float *inp, const float *wte, int N, int C, int V) {
    sgemm_rows(CblasNoTrans, CblasTrans, N, V, C, 1.0f, inp, C, wte, C, 0.0f, logits, V);
}

void lmhead_backward(float *dinp, float *dwte, const float *dlogits, const float *inp,
                     const float *wte, int N, int C, int V) {
    /* logits = inp @ wte^T, so the "weight" (C, V) is wte^T: dinp = dlogits
     * @ wte, and dwte^T (C, V) += inp^T dlogits is dwte (V, C) += dlogits^T
     * inp, which has the same shape as linear_grads' product with the
     * roles of inp and dlogits swapped. */
    if (dinp) linear_grads(dinp, NULL, dlogits, inp, wte, CblasNoTrans, C, N, C, V);
    if (dwte) linear_grads(NULL, dwte, inp, dlogits, NULL, CblasNoTrans, C, N, V, C);
}

/* ---- attention ---------------------------------------------------------- */

/* Per (b,h): S = scale Q K^T, P = causal softmax(S), O = P V, all through
 * sgemm on strided views of the (B,T,3C) qkv buffer. The (b,h) pairs run in
 * parallel; OpenBLAS runs single-threaded inside an OpenMP region.
 * Causality skips the products above the diagonal: queries go in blocks of
 * ATT_BLOCK rows, and the block of rows [t0, t0 + rows) meets only the keys
 * [0, t0 + rows). With T = 128 that is 5/8 of the T x T work. Blocks of 32
 * ran the small preset's attention 6-8% faster than blocks of 64 (3/4 of the
 * work); at 16 the products get too small for sgemm to run well. */
#define ATT_BLOCK 32

/* n rounded up to whole 16-float vectors, at most limit. */
static int padded_len(int n, int limit) {
    int padded = (n + 15) & ~15;
    return padded < limit ? padded : limit;
}

void attention_softmax_rows(float *s, int t0, int t1, int keys, int T, float scale) {
    for (int t = t0; t < t1; t++) {
        /* Row t's keys [0, t] are softmaxed; its future keys [t + 1, n)
         * give exact 0 inside the same whole-vector loop. */
        float *row = s + (size_t)t * T;
        int valid = t + 1, n = padded_len(valid, keys);
        row_softmax_causal(row, valid, n, scale);
        memset(row + n, 0, (size_t)(T - n) * sizeof(float));
    }
}

void attention_softmax_grad_rows(float *ds, const float *p, int t0, int t1, int keys, int T,
                                 int zero_to, float scale) {
    for (int t = t0; t < t1; t++) {
        /* P is 0 past the diagonal: whole vectors up to n give 0 there */
        const float *prow = p + (size_t)t * T;
        float *row = ds + (size_t)t * T;
        int n = padded_len(t + 1, keys);
        float dot = row_dot(prow, row, n);
#pragma omp simd
        for (int j = 0; j < n; j++) row[j] = scale * prow[j] * (row[j] - dot);
        memset(row + n, 0, (size_t)(zero_to - n) * sizeof(float));
    }
}

void attention_forward(float *out, float *att, const float *inp, int B, int T, int C, int NH) {
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = inp + (size_t)b * T * C3 + h * hs;
            const float *k = q + C;
            const float *v = q + 2 * C;
            float *p = att + ((size_t)b * NH + h) * T * T;
            float *o = out + (size_t)b * T * C + h * hs;
            for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
                int rows = T - t0 < ATT_BLOCK ? T - t0 : ATT_BLOCK, keys = t0 + rows;
                float *pb = p + (size_t)t0 * T;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, scale,
                            q + (size_t)t0 * C3, C3, k, C3, 0.0f, pb, T);
                attention_softmax_rows(p, t0, keys, keys, T, 1.0f);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f, pb, T,
                            v, C3, 0.0f, o + (size_t)t0 * C, C);
            }
        }
    }
}

void attention_backward(float *dinp, float *scratch, const float *dout, const float *inp,
                        const float *att, int B, int T, int C, int NH) {
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = inp + (size_t)b * T * C3 + h * hs;
            const float *k = q + C;
            const float *v = q + 2 * C;
            float *dq = dinp + (size_t)b * T * C3 + h * hs;
            float *dk = dq + C;
            float *dv = dq + 2 * C;
            const float *p = att + ((size_t)b * NH + h) * T * T;
            float *ds = scratch + ((size_t)b * NH + h) * T * T;
            const float *dO = dout + (size_t)b * T * C + h * hs;
            for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
                int rows = T - t0 < ATT_BLOCK ? T - t0 : ATT_BLOCK, keys = t0 + rows;
                /* dP = dO V^T, then dS = scale P (dP - rowsum(dP P)) in place
                 * (zero above the diagonal), then dQ = dS K */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, 1.0f,
                            dO + (size_t)t0 * C, C, v, C3, 0.0f, ds + (size_t)t0 * T, T);
                attention_softmax_grad_rows(ds, p, t0, keys, keys, T, keys, scale);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f,
                            ds + (size_t)t0 * T, T, k, C3, 0.0f, dq + (size_t)t0 * C3, C3);
            }
            /* Per block of keys [j0, j0 + cols), from the queries that see
             * them, [j0, T): dV = P^T dO and dK = dS^T Q. */
            for (int j0 = 0; j0 < T; j0 += ATT_BLOCK) {
                int cols = T - j0 < ATT_BLOCK ? T - j0 : ATT_BLOCK, qrows = T - j0;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hs, qrows, 1.0f,
                            p + (size_t)j0 * T + j0, T, dO + (size_t)j0 * C, C, 0.0f,
                            dv + (size_t)j0 * C3, C3);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hs, qrows, 1.0f,
                            ds + (size_t)j0 * T + j0, T, q + (size_t)j0 * C3, C3, 0.0f,
                            dk + (size_t)j0 * C3, C3);
            }
        }
    }
}

void attention_decode(float *out, float *scores, const float *q, const float *cache,
                      const int32_t *seq, const int32_t *pos, int N, int T, int C, int NH) {
    int hs = C / NH;
    int C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int i = 0; i < N; i++) {
        for (int h = 0; h < NH; h++) {
            const float *qi = q + (size_t)i * C3 + h * hs;
            const float *k = cache + (size_t)seq[i] * T * C3 + C + h * hs;
            const float *v = k + C;
            float *s = scores + ((size_t)i * NH + h) * T;
            float *o = out + (size_t)i * C + h * hs;
            int n = pos[i] + 1;
            for (int t = 0; t < n; t++) {
                const float *kt = k + (size_t)t * C3;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int j = 0; j < hs; j++) dot += qi[j] * kt[j];
                s[t] = scale * dot;
            }
            softmax_row(s, s, n);
            for (int j = 0; j < hs; j++) o[j] = 0.0f;
            for (int t = 0; t < n; t++) {
                const float *vt = v + (size_t)t * C3;
                float w = s[t];
#pragma omp simd
                for (int j = 0; j < hs; j++) o[j] += w * vt[j];
            }
        }
    }
}

/* ---- gelu --------------------------------------------------------------- */

/* GELU with the tanh approximation, through the identity
 * 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3):
 * one vexpf per element, and no cancellation in 1 + tanh(u) for x < 0. */
#define GELU_SCALING_FACTOR 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBIC 0.044715f

void gelu_forward(float *out, const float *inp, size_t N) {
#pragma omp parallel for simd schedule(simd : dynamic, FLAT_BLOCK) if (parallel : N > FLAT_BLOCK)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x * x * x);
        out[i] = x / (1.0f + vexpf(-2.0f * u));
    }
}

/* d/dx x s(2u) = s + 2 x s (1 - s) u', s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 0.044715 x^2) */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t N) {
#pragma omp parallel for simd schedule(simd : dynamic, FLAT_BLOCK)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x * x * x);
        float s = 1.0f / (1.0f + vexpf(-2.0f * u));
        float du = GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] = (s + 2.0f * x * s * (1.0f - s) * du) * dout[i];
    }
}

/* ---- residual ----------------------------------------------------------- */

void residual_forward(float *out, const float *inp1, const float *inp2, size_t N) {
#pragma omp parallel for simd schedule(simd : dynamic, FLAT_BLOCK) if (parallel : N > FLAT_BLOCK)
    for (size_t i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];
}

/* ---- softmax / cross-entropy -------------------------------------------- */

void softmax_rows(float *out, const float *inp, int N, int K) {
#pragma omp parallel for schedule(dynamic, ROW_BLOCK) if (N > ROW_BLOCK)
    for (int i = 0; i < N; i++) softmax_row(out + (size_t)i * K, inp + (size_t)i * K, K);
}

float crossentropy_forward(float *losses, float *probs, const float *logits,
                           const int32_t *targets, int N, int V, int *count) {
    softmax_rows(probs, logits, N, V);
    double total = 0.0;
    int n = 0;
    for (int i = 0; i < N; i++) {
        int32_t y = targets[i];
        if (y < 0) {
            losses[i] = 0.0f;
            continue;
        }
        GRAFT_ASSERT(y < V);
        losses[i] = -logf(fmaxf(probs[(size_t)i * V + y], 1e-30f));
        total += losses[i];
        n++;
    }
    if (count) *count = n;
    return n ? (float)(total / n) : 0.0f;
}

void crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets, int N,
                           int V, float scale) {
#pragma omp parallel for schedule(dynamic, ROW_BLOCK)
    for (int i = 0; i < N; i++) {
        float *d = dlogits + (size_t)i * V;
        const float *p = probs + (size_t)i * V;
        int32_t y = targets[i];
        if (y < 0) {
            memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        for (int v = 0; v < V; v++) d[v] = p[v] * scale;
        d[y] -= scale;
    }
}

/* ---- pooling for the classification head -------------------------------- */

void pool_forward(float *pooled, const float *hidden, const int32_t *pos, int B, int T, int C,
                  graft_pool_t how) {
    for (int b = 0; b < B; b++) {
        GRAFT_ASSERT(pos[b] >= 0 && pos[b] < T);
        const float *h = hidden + (size_t)b * T * C;
        float *o = pooled + (size_t)b * C;
        if (how == GRAFT_POOL_LAST) {
            memcpy(o, h + (size_t)pos[b] * C, (size_t)C * sizeof(float));
            continue;
        }
        memset(o, 0, (size_t)C * sizeof(float));
        for (int t = 0; t <= pos[b]; t++) {
            const float *ht = h + (size_t)t * C;
#pragma omp simd
            for (int c = 0; c < C; c++) o[c] += ht[c];
        }
        float inv = 1.0f / (float)(pos[b] + 1);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] *= inv;
    }
}

void pool_backward(float *dhidden, const float *dpooled, const int32_t *pos, int B, int T, int C,
                   graft_pool_t how) {
    memset(dhidden, 0, (size_t)B * T * C * sizeof(float));
    for (int b = 0; b < B; b++) {
        float *dh = dhidden + (size_t)b * T * C;
        const float *dp = dpooled + (size_t)b * C;
        if (how == GRAFT_POOL_LAST) {
            memcpy(dh + (size_t)pos[b] * C, dp, (size_t)C * sizeof(float));
            continue;
        }
        float inv = 1.0f / (float)(pos[b] + 1);
        for (int t = 0; t <= pos[b]; t++) {
            float *dht = dh + (size_t)t * C;
#pragma omp simd
            for (int c = 0; c < C; c++) dht[c] = dp[c] * inv;
        }
    }
}
