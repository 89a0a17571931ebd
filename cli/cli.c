/* cli.c — what several subcommands share: the thread count for OpenBLAS
 * and OpenMP, parsing the run options and telling --method graft apart. */
#include <cblas.h>
#include <omp.h>

#include "commands.h"
#include "peft.h"

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

int cli_method_graft(const graft_run_config_t *cfg) {
    int methods;
    if (graft_peft_parse_methods(cfg->method, &methods)) return -1;
    if (!(methods & GRAFT_M_GRAFT)) return 0;
    if (methods != GRAFT_M_GRAFT) {
        LOG_ERROR("method graft grafts parameters of a fully fine-tuned trunk and combines "
                  "with no other method (got '%s')", cfg->method);
        return -1;
    }
    return 1;
}
