/* rng.c — PCG32 (O'Neill, pcg-random.org, "XSH RR" output), and normal, Gamma and
 * Dirichlet draws built on it. */
#include <math.h>
#include <stddef.h>

#include "rng.h"

#include "graft.h"

#define PCG_MULT 6364136223846793005ull

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
    rng->state = old * PCG_MULT + rng->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

void graft_rng_advance(graft_rng_t *rng, uint64_t n) {
    /* state_n = A state + C, with (A, C) built by squaring the one-step map. */
    uint64_t mult = PCG_MULT, plus = rng->inc, acc_mult = 1, acc_plus = 0;
    for (; n; n >>= 1) {
        if (n & 1) {
            acc_mult *= mult;
            acc_plus = acc_plus * mult + plus;
        }
        plus = (mult + 1) * plus;
        mult *= mult;
    }
    rng->state = acc_mult * rng->state + acc_plus;
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

/* Uniform in (0, 1), never 0 or 1 (logs of it are finite), 32 random bits. */
static double uniform_open(graft_rng_t *rng) {
    return ((double)graft_rng_u32(rng) + 0.5) * (1.0 / 4294967296.0);
}

static double normal_double(graft_rng_t *rng) {
    double u1 = uniform_open(rng), u2 = uniform_open(rng);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Marsaglia and Tsang, "A simple method for generating gamma variables"
 * (2000), for shape >= 1; a smaller shape draws Gamma(shape + 1) and
 * multiplies by U^(1/shape) (their section 6). */
double graft_rng_log_gamma(graft_rng_t *rng, double shape) {
    GRAFT_ASSERT(shape > 0.0);
    double boost = 0.0;
    if (shape < 1.0) {
        boost = log(uniform_open(rng)) / shape;
        shape += 1.0;
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = normal_double(rng);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = uniform_open(rng);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return log(d * v) + boost;
    }
}

double graft_rng_gamma(graft_rng_t *rng, double shape) {
    return exp(graft_rng_log_gamma(rng, shape));
}

void graft_rng_dirichlet(graft_rng_t *rng, double alpha, double *p, int n) {
    GRAFT_ASSERT(p && n >= 1);
    double top = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = graft_rng_log_gamma(rng, alpha);
        if (p[i] > top) top = p[i];
    }
    for (int i = 0; i < n; i++) sum += (p[i] = exp(p[i] - top));
    for (int i = 0; i < n; i++) p[i] /= sum;
}
