/* rng.h — a seeded, deterministic random number generator (PCG32 state
 * transition with a SplitMix64 seeder) so that every run is reproducible
 * from its seed on any machine. Value type: embed a graft_rng_t and seed it.
 */
#ifndef GRAFT_RNG_H
#define GRAFT_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state;
    uint64_t inc;
} graft_rng_t;

void graft_rng_seed(graft_rng_t *rng, uint64_t seed, uint64_t stream);
uint32_t graft_rng_u32(graft_rng_t *rng);
/* Jumps ahead as if graft_rng_u32() had been called n times, in O(log n)
 * (Brown, "Random number generation with arbitrary strides", 1994). */
void graft_rng_advance(graft_rng_t *rng, uint64_t n);
/* Uniform in [0, 1). */
float graft_rng_uniform(graft_rng_t *rng);
/* Uniform integer in [0, n). */
uint32_t graft_rng_below(graft_rng_t *rng, uint32_t n);
/* Standard normal (Box-Muller). */
float graft_rng_normal(graft_rng_t *rng);
/* Fills x[0..n) with normal(0, std). */
void graft_rng_fill_normal(graft_rng_t *rng, float *x, size_t n, float std);
/* log of a Gamma(shape, 1) draw, shape > 0 (asserted). In logs because a
 * draw for a small shape can be far below the smallest double. */
double graft_rng_log_gamma(graft_rng_t *rng, double shape);
/* A Gamma(shape, 1) draw (may underflow to 0 for shape << 1). */
double graft_rng_gamma(graft_rng_t *rng, double shape);
/* p[0..n) ~ Dirichlet(alpha, ..., alpha): non-negative, summing to 1. */
void graft_rng_dirichlet(graft_rng_t *rng, double alpha, double *p, int n);

#endif
