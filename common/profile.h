/* profile.h — per-op wall-clock timers, for `graft bench step --profile`.
 *
 * The trunk's forward and backward (gpt2.c) and the PEFT hooks (peft.c) wrap
 * each kernel call as GRAFT_PROF("bwd.fc.dinp", flops, call). While timing
 * is off (the default) that costs one well-predicted branch per call.
 * graft_prof_enable(1) starts adding, per name, the number of calls, the
 * seconds spent and the matmul FLOPs the call site declared; the report
 * prints them per step, slowest first.
 *
 * The table is process-wide state in this module and is only touched from
 * the thread that drives the model (kernels parallelise inside the call),
 * which is how every graft command runs a model. Names must be string
 * literals (the table keeps the pointers).
 */
#ifndef GRAFT_PROFILE_H
#define GRAFT_PROFILE_H

#include <stdio.h>

#include "graft.h"

/* Non-zero while timing; read by GRAFT_PROF, written by graft_prof_enable. */
extern int graft_prof_on;

/* Starts (on != 0) or stops collecting; starting clears the table. */
void graft_prof_enable(int on);

/* Adds one call of `name` that started at t0 (graft_now()) and did `flops`
 * floating-point operations of matrix products (0 for other kernels). */
void graft_prof_add(const char *name, double t0, double flops);

/* Prints the table divided by `steps`, slowest op first, with each op's
 * share of `step_seconds` (the measured time of one step) and, for ops that
 * declared FLOPs, their rate. */
void graft_prof_report(FILE *out, int steps, double step_seconds);

/* For a timed region that is not one call: t0 = graft_prof_start(); ...;
 * graft_prof_stop("name", t0, flops). */
static inline double graft_prof_start(void) { return graft_prof_on ? graft_now() : 0.0; }
static inline void graft_prof_stop(const char *name, double t0, double flops) {
    if (graft_prof_on) graft_prof_add(name, t0, flops);
}

#define GRAFT_PROF(name, flops, call)                         \
    do {                                                      \
        double graft_prof_t0_ = graft_prof_start();           \
        call;                                                 \
        graft_prof_stop((name), graft_prof_t0_, (flops));     \
    } while (0)

#endif
