/* What a server runs its steps on: the engine in this process, the embedded worker grid
 * (threads over the in-process transport or UCX), or the worker processes of an MPI job.
 * Opens the checkpoint (or makes dummy weights), sizes the paged cache, and exposes the
 * result as the scheduler's executor. */
#ifndef DSR1_BACKEND_H
#define DSR1_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster.h"
#include "model_config.h"
#include "scheduler.h"

typedef struct {
    const char *model;  /* checkpoint directory (or config with dummy) */
    bool dummy_weights; /* random weights from the config alone */
    uint64_t seed;      /* of the dummy weights */
    int layers;         /* dummy only: keep the first N layers (0: all) */
    int workers;        /* 0: the engine in this process; else N workers */
    int pp;
    int transport; /* dsr1_transport */
    int threads;
    const char *kernels; /* NULL: auto */
    int timeout_ms;
    int64_t kv_tokens;   /* cache capacity per attention rank, in tokens (0: default) */
    int block_tokens;    /* tokens per cache block (0: default 32) */
    int max_step_tokens; /* tokens of one step (0: default 512) */
    int steps_in_flight; /* grid with pp > 1: steps in flight (0: pp) */
    int replicas;        /* grid: copies of every routed expert per stage (0: 1) */
    const char *join_listen; /* grid: HOST:PORT where workers may join (cluster.h) */
} dsr1_backend_params;

typedef struct dsr1_backend dsr1_backend;

dsr1_status dsr1_backend_open(const dsr1_backend_params *p, dsr1_backend **out);
void dsr1_backend_close(dsr1_backend *b);
/* The executor to hand to dsr1_sched_create; valid while b is open. */
dsr1_executor dsr1_backend_executor(dsr1_backend *b);
const dsr1_model_config *dsr1_backend_config(const dsr1_backend *b);
const char *dsr1_backend_kernels_name(const dsr1_backend *b);
int dsr1_backend_workers(const dsr1_backend *b); /* 0: single process */
int dsr1_backend_pp(const dsr1_backend *b);

#endif
