/* mask.h — sparse grafting masks over the trunk (skill localization,
 * DESIGN §4, method `graft`).
 *
 * Given the pretrained trunk theta_pre and a fully fine-tuned copy theta_ft
 * (two parameter blocks laid out like graft_gpt2_t's one allocation), a mask
 * gamma keeps k of the trunk's *eligible* parameters and the grafted model is
 *     theta = theta_pre + gamma * (theta_ft - theta_pre),
 * that is theta_ft where gamma is 1 and theta_pre elsewhere. A binary mask is
 * applied as exactly that selection (a copy of theta_ft[i]), not by the
 * arithmetic, because pre + (ft - pre) need not round back to ft: an
 * all-ones mask then reproduces the fine-tuned weights bit for bit.
 *
 * Eligible parameters are whole trunk tensors chosen by group: `embed` (wte,
 * wpe), `attn` (c_attn and attn.c_proj, weights and biases), `mlp` (c_fc and
 * mlp.c_proj) and `ln` (every LayerNorm scale and shift). The default is all
 * but the embeddings.
 *
 * In memory a mask is its k flat offsets into the trunk's parameter block,
 * ascending, and the fine-tuned values there. A mask file holds only those:
 * per trunk tensor with at least one selected entry, "mask.NAME.index" (I32,
 * or I64 for a tensor beyond 2^31 entries: offsets within the tensor,
 * ascending) and "mask.NAME.value" (F32), plus the caller's extra tensors
 * (a task head) and metadata (format "graft-mask", the trunk config, k).
 *
 * Ownership: functions returning graft_mask_t * or int64_t * return owned
 * memory (graft_mask_destroy / free). A layout is a value type the caller
 * embeds: graft_mask_layout_init() / graft_mask_layout_free().
 */
#ifndef GRAFT_MASK_H
#define GRAFT_MASK_H

#include "gpt2.h"
#include "safetensors.h"

enum {
    GRAFT_MASK_EMBED = 1 << 0,
    GRAFT_MASK_ATTN = 1 << 1,
    GRAFT_MASK_MLP = 1 << 2,
    GRAFT_MASK_LN = 1 << 3,
    GRAFT_MASK_ALL = (1 << 4) - 1,
};

/* Parses "attn,mlp,ln" (or "all") into a group set; GRAFT_EINVAL names the
 * bad item. */
int graft_mask_parse_groups(const char *list, int *groups);
/* "attn,mlp,ln" for a group set, into buf. */
const char *graft_mask_groups_str(int groups, char *buf, size_t n);
/* The group of a trunk tensor by its Hugging Face name (0 if none). */
int graft_mask_group_of(const char *name);

/* Which trunk tensors are eligible, and where they are in the block. */
typedef struct {
    graft_gpt2_config_t cfg;
    size_t num_params;            /* length of the trunk's parameter block */
    int n;                        /* named trunk tensors */
    graft_gpt2_tensor_t *tensors; /* (n) checkpoint order, owned */
    int *eligible;                /* (n) 1 if the tensor's group is selected, owned */
    int groups;
    size_t num_eligible;          /* parameters in eligible tensors */
} graft_mask_layout_t;

void graft_mask_layout_init(graft_mask_layout_t *lay, const graft_gpt2_t *m, int groups);
void graft_mask_layout_free(graft_mask_layout_t *lay);

typedef struct graft_mask {
    size_t k;
    int64_t *index; /* (k) ascending offsets into the trunk's parameter block */
    float *value;   /* (k) theta_ft at those offsets */
} graft_mask_t;

/* An empty mask with room for k entries (index and value uninitialised). */
graft_mask_t *graft_mask_new(size_t k);
void graft_mask_destroy(graft_mask_t **self_p);

/* k = round(sparsity * num_eligible), at most num_eligible. */
size_t graft_mask_k(double sparsity, size_t num_eligible);

/* Every eligible offset ordered by movement |ft - pre| descending, ties by
 * offset ascending (a total order, so the result does not depend on the
 * sort): lay->num_eligible entries. The top k of any sparsity is a prefix. */
int64_t *graft_mask_rank(const graft_mask_layout_t *lay, const float *pre, const float *ft);

/* The mask of the first k offsets of order, with values from ft. */
graft_mask_t *graft_mask_from_order(const int64_t *order, size_t k, const float *ft);

/* theta := pre, then theta[index[i]] := value[i] (n floats). */
void graft_mask_apply(const graft_mask_t *mask, const float *pre, float *theta, size_t n);

/* |a ∩ b|, and the Jaccard overlap |a ∩ b| / |a ∪ b| (1 for two empty masks). */
size_t graft_mask_intersection(const graft_mask_t *a, const graft_mask_t *b);
double graft_mask_jaccard(const graft_mask_t *a, const graft_mask_t *b);

/* Selected entries per tensor of the layout into counts (lay->n). */
void graft_mask_tensor_counts(const graft_mask_t *mask, const graft_mask_layout_t *lay,
                              size_t *counts);

/* FNV-1a digest of a parameter block's bytes (n floats): names the trunk a
 * mask was built on, so that it is not applied to another one. */
uint64_t graft_mask_digest(const float *params, size_t n);

/* Writes the mask (atomically) with the caller's extra tensors and metadata
 * pairs after graft's own (format, config.*, mask.k, mask.groups). */
int graft_mask_save(const graft_mask_t *mask, const graft_mask_layout_t *lay, const char *path,
                    const graft_st_tensor_t *extra, int n_extra, const char *const *meta_keys,
                    const char *const *meta_values, int n_meta);

/* Reads the mask of an open file for a trunk of layout lay. Refuses (logged
 * with the file and tensor) a file that is not a graft mask, another trunk
 * config, a "mask.*" tensor this trunk lacks, index and value tensors that
 * are not 1-D of one length, offsets out of range or not ascending, and a
 * total other than the recorded mask.k. */
int graft_mask_read(const graft_st_file_t *f, const graft_mask_layout_t *lay, graft_mask_t **out);

#endif
