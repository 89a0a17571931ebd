/* lora_merge.h — the linear algebra of averaging LoRA pairs (DESIGN §5).
 *
 * A LoRA pair adds scale * A B to a projection, with A (in, r) and B
 * (r, out) row-major, as in peft.h. Averaging the factors gives
 * avg(A) avg(B), which is not avg(A B): the cross terms differ. These
 * functions compute the products, the gap between the two, and the rank-r
 * truncation of an averaged product back into a pair (an SVD through
 * LAPACK's dgesdd_, which ships inside OpenBLAS).
 *
 * Everything is plain double arithmetic in a fixed loop order, so the same
 * inputs give the same bits on every process of a run.
 *
 * Ownership: every pointer is the caller's.
 */
#ifndef GRAFT_LORA_MERGE_H
#define GRAFT_LORA_MERGE_H

#include <stddef.h>

/* P (in, out) = A (in, r) @ B (r, out), each a double array. */
void graft_lora_product(const double *A, const double *B, int in, int r, int out, double *P);

/* Adds ||X - Y||_F^2 to *diff and ||Y||_F^2 to *norm (n elements each). */
void graft_frobenius_gap(const double *X, const double *Y, size_t n, double *diff, double *norm);

/* The best rank-r approximation of P (in, out), split evenly:
 * A = U_r sqrt(S_r) (in, r), B = sqrt(S_r) V_r^T (r, out), so that A B is
 * the truncated SVD. Singular directions beyond min(in, out) are zero.
 * *dropped gets the sum of the squared singular values left out (so the
 * truncation error is sqrt(*dropped)). Returns GRAFT_OK or GRAFT_EINVAL
 * (logged) when LAPACK fails. */
int graft_lora_truncate(const double *P, int in, int out, int r, double *A, double *B,
                        double *dropped);

#endif
