/* keygen.c — `graft keygen NAME`: a CurveZMQ keypair in NAME.key (secret,
 * mode 0600) and NAME.pub, for `graft coordinator --curve_secret` and
 * `graft worker --curve`, and for the coordinator's --allow list. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "graft.h"
#include "keys.h"
#include "options.h"

typedef struct {
    int force;
} keygen_opts_t;

const graft_option_t cli_keygen_options[] = {
    {"force", GRAFT_OPT_BOOL, offsetof(keygen_opts_t, force), "false", 0, -1,
     "replace an existing NAME.key and NAME.pub"},
    GRAFT_OPT_END,
};

static const char *keygen_usage =
    "usage: graft keygen NAME [--force]\n\n"
    "Writes a CurveZMQ keypair: NAME.key (secret, mode 0600) and NAME.pub\n"
    "(public, one Z85 line: append it to the coordinator's --allow file).\n"
    "NAME may hold folders (keys/alice). Refuses to replace an existing key\n"
    "unless --force is given.";

/* The one plain argument, a NAME whose file part is neither empty nor hidden;
 * NULL (logged) otherwise. */
static const char *key_name(char **args, int n) {
    if (n != 1) {
        LOG_ERROR("graft keygen: expected one NAME, got %d%s%s%s (see --help)", n,
                  n > 1 ? " ('" : "", n > 1 ? args[1] : "", n > 1 ? "' is one too many)" : "");
        return NULL;
    }
    const char *slash = strrchr(args[0], '/'), *base = slash ? slash + 1 : args[0];
    if (!*base || *base == '.') {
        LOG_ERROR("graft keygen: NAME '%s' must end in a file name that does not start with "
                  "'.' (the keys are NAME.key and NAME.pub)", args[0]);
        return NULL;
    }
    return args[0];
}

int cmd_keygen(int argc, char **argv) {
    keygen_opts_t opts;
    char **args;
    int n = 0;
    int rc = graft_options_parse_args(cli_keygen_options, &opts, argc, argv, keygen_usage, &args,
                                      &n);
    const char *name = rc ? NULL : key_name(args, n);
    free(args);
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (!name) return 2;
    graft_keypair_t kp;
    /* graft_keys_generate logs the file it could not write and why. */
    if (graft_keys_generate(name, opts.force, &kp)) return 1;
    printf("wrote %s.key and %s.pub\n", name, name);
    return 0;
}
