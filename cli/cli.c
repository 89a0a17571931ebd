/* cli.c — what several subcommands share: the thread count for OpenBLAS
 * and OpenMP, and parsing the run options. */
#include <cblas.h>
#include <omp.h>

#include "commands.h"

int cli_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return n;
}

int cli_parse_run(int argc, char **argv, const char *usage, graft_run_config_t *cfg) {
    int rc = graft_options_parse(graft_run_options, cfg, argc, argv, usage);
    if (rc == GRAFT_OPTS_HELP) return 1;
    if (rc) return -1;
    cli_set_threads(cfg->threads);
    return 0;
}
