/* pretrain.c — `graft pretrain`: the front end of common/pretrain.c. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "graft.h"
#include "pretrain.h"

/* Writes OUT.config.txt beside the checkpoint OUT.safetensors (ctx: the
 * settings), once the inputs are checked, so that a refused run leaves
 * nothing behind. */
static int write_config(void *ctx) {
    const graft_pretrain_config_t *cfg = ctx;
    char path[GRAFT_OPT_STR + 16];
    size_t n = strlen(cfg->out);
    int ext = n > 12 && !strcmp(cfg->out + n - 12, ".safetensors");
    snprintf(path, sizeof path, "%.*s.config.txt", (int)(ext ? n - 12 : n), cfg->out);
    graft_option_set_t set = {graft_pretrain_options, (void *)cfg};
    return cli_write_config(path, "pretrain", &set, 1) ? GRAFT_EIO : GRAFT_OK;
}

int cmd_pretrain(int argc, char **argv) {
    graft_pretrain_config_t cfg;
    int rc = graft_options_parse(graft_pretrain_options, &cfg, argc, argv,
                                 "usage: graft pretrain [--config FILE] [options]\n\n"
                                 "Pretrains a trunk with next-token prediction on a text corpus,\n"
                                 "evaluates on a held-out slice and writes safetensors checkpoints.\n"
                                 "Prints eval_loss=<x> on stdout at the end.");
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc || cli_set_log_level(cfg.log_level)) return 2;
    cli_set_threads(cfg.threads);
    graft_pretrain_result_t res;
    /* graft_pretrain_run logs what went wrong, naming the file or option. */
    if (graft_pretrain_run(&cfg, write_config, &cfg, &res)) return 1;
    printf("steps=%d train_loss=%.4f initial_eval_loss=%.4f eval_loss=%.4f tokens_per_s=%.0f\n",
           res.steps_done, res.final_train_loss, res.first_eval_loss, res.final_eval_loss,
           res.tokens_per_s);
    return 0;
}
