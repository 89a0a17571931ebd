/* lora_merge.c — LoRA products, their gap and rank-r truncation (see
 * lora_merge.h). */
#include "lora_merge.h"

#include <math.h>
#include <string.h>

#include "graft.h"

/* LAPACK from OpenBLAS (no LAPACKE header on the build machines). The
 * trailing size_t is the hidden length of the character argument that
 * gfortran-compiled LAPACK expects. */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *iwork, int *info, size_t jobz_len);

void graft_lora_product(const double *A, const double *B, int in, int r, int out, double *P) {
    for (int i = 0; i < in; i++) {
        double *row = P + (size_t)i * out;
        memset(row, 0, (size_t)out * sizeof *row);
        for (int k = 0; k < r; k++) {
            double a = A[(size_t)i * r + k];
            const double *b = B + (size_t)k * out;
            for (int j = 0; j < out; j++) row[j] += a * b[j];
        }
    }
}

void graft_frobenius_gap(const double *X, const double *Y, size_t n, double *diff, double *norm) {
    double d = 0.0, y = 0.0;
    for (size_t i = 0; i < n; i++) {
        d += (X[i] - Y[i]) * (X[i] - Y[i]);
        y += Y[i] * Y[i];
    }
    *diff += d;
    *norm += y;
}

int graft_lora_truncate(const double *P, int in, int out, int r, double *A, double *B,
                        double *dropped) {
    /* Row-major P (in, out) is column-major X = P^T (out, in); X = U S VT
     * gives P = VT^T S U^T: A[i][t] = sqrt(s_t) VT[t, i], B[t][j] =
     * sqrt(s_t) U[j, t]. */
    int m = out, n = in, k = in < out ? in : out, info = 0, lwork = -1;
    double *x = graft_xmalloc((size_t)m * n * sizeof *x);
    memcpy(x, P, (size_t)m * n * sizeof *x);
    double *s = graft_xmalloc((size_t)k * sizeof *s);
    double *u = graft_xmalloc((size_t)m * k * sizeof *u);
    double *vt = graft_xmalloc((size_t)k * n * sizeof *vt);
    int *iwork = graft_xmalloc((size_t)8 * k * sizeof *iwork);
    double query = 0.0;
    dgesdd_("S", &m, &n, x, &m, s, u, &m, vt, &k, &query, &lwork, iwork, &info, 1);
    double *work = NULL;
    if (info == 0) {
        lwork = (int)query;
        work = graft_xmalloc((size_t)lwork * sizeof *work);
        dgesdd_("S", &m, &n, x, &m, s, u, &m, vt, &k, work, &lwork, iwork, &info, 1);
    }
    if (info == 0) {
        *dropped = 0.0;
        for (int t = r; t < k; t++) *dropped += s[t] * s[t];
        for (int t = 0; t < r; t++) {
            double root = t < k ? sqrt(s[t]) : 0.0;
            for (int i = 0; i < in; i++) A[(size_t)i * r + t] = t < k ? root * vt[t + (size_t)i * k] : 0.0;
            for (int j = 0; j < out; j++) B[(size_t)t * out + j] = t < k ? root * u[j + (size_t)t * m] : 0.0;
        }
    } else {
        LOG_ERROR("lora svd: LAPACK dgesdd failed on a %dx%d product (info %d)", in, out, info);
    }
    free(work);
    free(iwork);
    free(vt);
    free(u);
    free(s);
    free(x);
    return info == 0 ? GRAFT_OK : GRAFT_EINVAL;
}
