/* aggregate.h — FedAvg of one scope over the replies of a round.
 *
 * Each reply contributes a parameter span (the whole scope, numel floats)
 * and a weight (its sample count). The result is sum(w_i x_i) / sum(w_i),
 * summed in double in the order of the contributors' keys (the worker names),
 * never in arrival order, so the bits of the result do not depend on which
 * reply came first: a run is reproducible from its seed (DESIGN §5).
 *
 * Ownership: the caller owns every input span and the output; the
 * aggregator keeps pointers only during the call.
 */
#ifndef GRAFT_AGGREGATE_H
#define GRAFT_AGGREGATE_H

#include <stddef.h>

typedef struct {
    const char *key;     /* stable contributor name: the summation order */
    double weight;       /* > 0 (sample count) */
    const float *values; /* numel floats */
} graft_agg_input_t;

/* Writes the weighted mean of the n inputs into dst (numel floats). With no
 * input (or zero total weight) dst is left unchanged and 0 is returned;
 * otherwise the number of inputs used. The inputs array is reordered. */
int graft_aggregate_fedavg(graft_agg_input_t *in, int n, float *dst, size_t numel);

#endif
