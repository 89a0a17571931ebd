/* threads.c — one place that sets the thread count for OpenBLAS and OpenMP. */
#include <cblas.h>
#include <omp.h>

#include "commands.h"

int cli_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return n;
}
