/* NUMA placement of a worker's threads and weights.
 *
 * On a machine with several NUMA nodes, a worker that reads its weights across the
 * interconnect loses a large share of its memory bandwidth, which is what decode is bound
 * by. With libnuma (an optional build dependency, DSR1_HAVE_NUMA) and more than one node, a
 * worker is given a node (worker index mod nodes): the thread that loads its slice runs
 * there while the slice is faulted in, so the pages land in that node's memory (first
 * touch; pages already in the page cache stay where they are), and its thread pool and
 * serving thread run on that node's CPUs. With one node, or without libnuma, nothing is
 * bound, and one debug line says so. */
#ifndef DSR1_NUMA_BIND_H
#define DSR1_NUMA_BIND_H

#include <sched.h>

/* The node for worker `worker`, or -1 when there is nothing to choose (one node, no
 * libnuma). The first call looks at the machine and logs what it found, once. */
int dsr1_numa_node_for(int worker);

/* What dsr1_numa_bind changed, to undo it. */
typedef struct {
    int node; /* -1: nothing was changed */
    cpu_set_t cpus;
} dsr1_numa_binding;

/* Run the calling thread (and the threads it creates from then on) on node's CPUs, its
 * memory preferably from node. node -1: no-op. prev (may be NULL) receives what
 * dsr1_numa_unbind needs. A failure to bind is logged, not fatal: placement is an
 * optimisation. */
void dsr1_numa_bind(int node, dsr1_numa_binding *prev);
/* Give the calling thread back its CPUs and the default (local) memory policy. */
void dsr1_numa_unbind(const dsr1_numa_binding *prev);

#endif
