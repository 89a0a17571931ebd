/* aggregate.c — order-independent FedAvg (see aggregate.h). */
#include "aggregate.h"

#include <stdlib.h>
#include <string.h>

#include "graft.h"

static int by_key(const void *a, const void *b) {
    const graft_agg_input_t *x = a, *y = b;
    return strcmp(x->key, y->key);
}

int graft_aggregate_fedavg(graft_agg_input_t *in, int n, float *dst, size_t numel) {
    double total = 0.0;
    int used = 0;
    qsort(in, (size_t)n, sizeof *in, by_key);
    for (int i = 0; i < n; i++)
        if (in[i].weight > 0) {
            total += in[i].weight;
            used++;
        }
    if (used == 0 || total <= 0) return 0;
    double *acc = graft_xcalloc(numel, sizeof(double));
    for (int i = 0; i < n; i++) {
        if (in[i].weight <= 0) continue;
        const float *x = in[i].values;
        double w = in[i].weight / total;
        for (size_t j = 0; j < numel; j++) acc[j] += w * (double)x[j];
    }
    for (size_t j = 0; j < numel; j++) dst[j] = (float)acc[j];
    free(acc);
    return used;
}
