/* run_id.c — which federated job a coordinator runs: the run id, a digest
 * of the options that define the job, which every message carries; and the
 * runs it continues, when it was resumed from a checkpoint of a job with
 * other options (their ids ride in the checkpoint's metadata and in each
 * Assign, so that personalised workers keep their own modules). */
#include <string.h>

#include "coord_state.h"
#include "coordinator.h"
#include "safetensors.h"
#include "trainer.h"
#include "wire.h"

/* The options that define a federated job, which the run id digests: the
 * trunk and the data (trunk, preset, tasks, seq), the modules (the method
 * and its sizes), how the workers train (seed, batch, the optimizer, the
 * learning-rate schedule over rounds x local_steps, the task mix, FedProx,
 * logit adjustment, the optimizer state kept; personalize and
 * personal_from when on, below) and the aggregation. Not the operational
 * ones, which a resumed coordinator may change and still talk to its
 * workers: timeouts and heartbeats, min_replies, how often to evaluate,
 * checkpoint and log, evaluation sizes, log_level, lora_gap (a
 * measurement), mpi_collectives (the same sums), threads, precision (each
 * process's own), paths (out, resume); nor those of `graft train` alone
 * (steps, eval_every, checkpoint_every) and of method graft, which does not
 * run federated. */
static const char *const job_options[] = {
    "trunk", "preset", "tasks", "seq",
    "method", "lora_targets", "lora_shared_rank", "lora_shared_alpha", "lora_task_rank",
    "lora_task_alpha", "adapter_dim", "channels_k", "stage1_steps", "pool",
    "seed", "batch", "lr", "head_lr", "optimizer", "momentum", "weight_decay", "grad_clip",
    "warmup", "mix", "rounds", "local_steps", "keep_optimizer_state", "logit_adjust",
    "aggregate", "fedprox_mu", "clip_norm", "server_lr", "server_beta1", "server_beta2",
    "server_eps", "shared_weight", "shared_server_lr", "trim_frac", "lora_aggregate",
};

#define N_JOB_OPTIONS (sizeof job_options / sizeof *job_options)

uint64_t graft_run_id(const graft_run_config_t *cfg) {
    graft_option_t table[N_JOB_OPTIONS + 1];
    size_t n = 0;
    for (const graft_option_t *o = graft_run_options; o->name; o++)
        for (size_t i = 0; i < N_JOB_OPTIONS; i++)
            if (!strcmp(o->name, job_options[i])) table[n++] = *o;
    GRAFT_ASSERT(n == N_JOB_OPTIONS); /* each is an option of graft_run_options */
    table[n] = (graft_option_t)GRAFT_OPT_END;
    uint64_t id = graft_options_digest(table, cfg);
    /* Personalisation joins the digest only when on: the ids of other jobs
     * stay those of the releases before it. */
    for (const char *s = cfg->personalize ? "personalize" : ""; *s; s++)
        id = (id ^ (unsigned char)*s) * 1099511628211ull;
    for (int r = cfg->personalize ? cfg->personal_from : 0; r > 0; r /= 256)
        id = (id ^ (unsigned)(r & 255)) * 1099511628211ull;
    return id ? id : 1;
}

/* ---- the runs this one continues ------------------------------------------ */

/* Appends id to ids[*n] unless it is 0, this run's, or there already; the
 * oldest goes when full. */
static void add_run(const coord_t *c, uint64_t *ids, size_t *n, uint64_t id) {
    if (!id || id == c->run_id) return;
    for (size_t i = 0; i < *n; i++)
        if (ids[i] == id) return;
    if (*n == GRAFT_WIRE_MAX_EARLIER_RUNS) memmove(ids, ids + 1, --*n * sizeof *ids);
    ids[(*n)++] = id;
}

/* A coordinator resumed from a checkpoint of another job (other job
 * options: more --rounds, say) runs under another run id, while its
 * personalised workers' --save files carry the earlier one. The checkpoint
 * names the run it is of ("federated.run_id") and the runs that one
 * continued ("federated.earlier_runs", oldest first): those become this
 * run's earlier runs, which each Assign passes on. */
void coord_note_lineage(coord_t *c) {
    uint64_t *ids = c->earlier_runs;
    graft_st_file_t *f = NULL;
    if (*c->cfg->resume && !graft_st_open(c->cfg->resume, &f)) {
        const char *s = graft_st_meta(f, "federated.earlier_runs");
        while (s && *s) {
            size_t len = strcspn(s, ",");
            add_run(c, ids, &c->nearlier_runs, graft_run_id_parse(s, len));
            s += len + (s[len] == ',');
        }
        const char *theirs = graft_st_meta(f, "federated.run_id");
        uint64_t id = theirs ? graft_run_id_parse(theirs, strlen(theirs)) : 0;
        if (!id && c->cfg->personalize)
            LOG_WARN("coordinator: %s names no run (a checkpoint of graft 0.4.0 or earlier, or "
                     "of graft train): should this run's options differ from its run's, the "
                     "workers cannot tell that it continues theirs, and their task modules "
                     "start over (their --save files are kept aside)", c->cfg->resume);
        add_run(c, ids, &c->nearlier_runs, id);
        char mine[17], its[17];
        if (id && id != c->run_id)
            LOG_INFO("coordinator: run %s continues run %s of %s (other job options): "
                     "personalised workers take back their --save files of it",
                     graft_run_id_text(c->run_id, mine), graft_run_id_text(id, its), c->cfg->resume);
        graft_st_close(&f);
    }
    char note[GRAFT_WIRE_MAX_EARLIER_RUNS * 17 + 1] = "", id[17];
    for (size_t i = 0, at = 0; i < c->nearlier_runs; i++)
        at += (size_t)snprintf(note + at, sizeof note - at, "%s%s", i ? "," : "",
                               graft_run_id_text(ids[i], id));
    if (*note) graft_trainer_set_note(c->tr, "federated.earlier_runs", note);
    graft_trainer_set_note(c->tr, "federated.run_id", graft_run_id_text(c->run_id, id));
}
