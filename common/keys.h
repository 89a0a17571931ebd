/* keys.h — CurveZMQ key files for federated deployments (`graft keygen`).
 *
 * A keypair NAME is two files: NAME.key holds the z85 secret key (mode 0600,
 * never leaves the machine) and NAME.pub the z85 public key (handed to the
 * other side). An allow-list file holds client public keys, one z85 key per
 * line; blank lines and lines starting with '#' are ignored, as is anything
 * after the key on a line. Key files may also carry '#' comment lines.
 *
 * Ownership: keys are fixed-size value types; graft_keys_read_allow() returns
 * a malloc'd array the caller frees. Errors are logged naming the file and
 * line and returned as GRAFT_EIO (cannot read or write) or GRAFT_EFORMAT.
 */
#ifndef GRAFT_KEYS_H
#define GRAFT_KEYS_H

#include "graft.h"

#define GRAFT_KEY_Z85_LEN 40

typedef struct {
    char z85[GRAFT_KEY_Z85_LEN + 1];
} graft_key_t;

typedef struct {
    graft_key_t public_key;
    graft_key_t secret_key;
} graft_keypair_t;

/* Generates a keypair into NAME.key and NAME.pub. Refuses to replace an
 * existing NAME.key unless overwrite is set. kp may be NULL. */
int graft_keys_generate(const char *name, int overwrite, graft_keypair_t *kp);

/* Reads NAME.key and derives the public key; if NAME.pub exists it must match. */
int graft_keys_load(const char *name, graft_keypair_t *kp);

/* Reads a single z85 key from a file (a .pub or .key file). */
int graft_keys_read_file(const char *path, graft_key_t *key);

/* Reads an allow-list into a malloc'd array (*keys, *n); an empty list is an error. */
int graft_keys_read_allow(const char *path, graft_key_t **keys, size_t *n);

/* 1 if s is a well-formed z85 CurveZMQ key (40 chars that decode to 32 bytes). */
int graft_key_valid(const char *s);

#endif
