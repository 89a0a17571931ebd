/* rng.c — PCG32 (O'Neill, pcg-random.org, "XSH RR" output). */
#include <math.h>
#include <stddef.h>

#include "rng.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void graft_rng_seed(graft_rng_t *rng, uint64_t seed, uint64_t stream) {
    uint64_t s = seed ^ (stream * 0xD1342543DE82EF95ull);
    rng->state = splitmix64(&s);
    rng->inc = (splitmix64(&s) << 1) | 1u;
}

uint32_t graft_rng_u32(graft_rng_t *rng) {
    uint64_t old = rng->state;
    rng->state = old * 6364136223846793005ull + rng->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

float graft_rng_uniform(graft_rng_t *rng) {
    return (float)(graft_rng_u32(rng) >> 8) * (1.0f / 16777216.0f);
}

uint32_t graft_rng_below(graft_rng_t *rng, uint32_t n) {
    /* Lemire's multiply-shift; the tiny bias is irrelevant at our n. */
    return (uint32_t)(((uint64_t)graft_rng_u32(rng) * n) >> 32);
}

float graft_rng_normal(graft_rng_t *rng) {
    float u1 = graft_rng_uniform(rng);
    float u2 = graft_rng_uniform(rng);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

void graft_rng_fill_normal(graft_rng_t *rng, float *x, size_t n, float std) {
    for (size_t i = 0; i < n; i++) x[i] = std * graft_rng_normal(rng);
}
