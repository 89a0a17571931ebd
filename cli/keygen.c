/* keygen.c — `graft keygen NAME`: a CurveZMQ keypair in NAME.key (secret,
 * mode 0600) and NAME.pub, for `graft coordinator --curve-secret` and
 * `graft worker --curve`, and for the coordinator's --allow list. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "graft.h"
#include "keys.h"

int cmd_keygen(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: graft keygen NAME [--force]\n\n"
               "Writes a CurveZMQ keypair: NAME.key (secret, mode 0600) and NAME.pub\n"
               "(public, one Z85 line: append it to the coordinator's --allow file).\n"
               "Refuses to replace an existing key unless --force is given.\n");
        return argc < 2 ? 2 : 0;
    }
    int force = argc > 2 && !strcmp(argv[2], "--force");
    graft_keypair_t kp;
    int rc = graft_keys_generate(argv[1], force, &kp);
    if (rc) {
        fprintf(stderr, "graft keygen: failed: %s\n", graft_strerror(rc));
        return 1;
    }
    printf("wrote %s.key and %s.pub\n", argv[1], argv[1]);
    return 0;
}
