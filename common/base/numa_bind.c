/* NUMA placement of workers (numa_bind.h), with libnuma when the build has it. */
#include "numa_bind.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "dsr1_build_config.h"
#include "log.h"

#if DSR1_HAVE_NUMA
#include <numa.h>
#endif

/* The machine's NUMA nodes, found once per process (a fact about the hardware: written
 * by the first dsr1_numa_node_for only, through pthread_once). */
static pthread_once_t nodes_once = PTHREAD_ONCE_INIT;
static int nodes = 1;

static void find_nodes(void)
{
#if DSR1_HAVE_NUMA
    if (numa_available() >= 0) nodes = numa_num_configured_nodes();
    if (nodes > 1)
        DSR1_INFO("NUMA: %d nodes; worker i runs on node i mod %d, its weights faulted in "
                  "there",
                  nodes, nodes);
    else
        DSR1_DEBUG("NUMA: one node; threads and memory are not bound");
#else
    DSR1_DEBUG("NUMA: built without libnuma; threads and memory are not bound");
#endif
}

int dsr1_numa_node_for(int worker)
{
    pthread_once(&nodes_once, find_nodes);
    return nodes > 1 ? worker % nodes : -1;
}

void dsr1_numa_bind(int node, dsr1_numa_binding *prev)
{
    if (prev) prev->node = -1;
#if DSR1_HAVE_NUMA
    if (node < 0) return;
    if (prev && sched_getaffinity(0, sizeof(prev->cpus), &prev->cpus) == 0) prev->node = node;
    if (numa_run_on_node(node) != 0)
        DSR1_WARN("NUMA: cannot run on node %d: %s", node, strerror(errno));
    numa_set_preferred(node);
#else
    (void)node;
#endif
}

void dsr1_numa_unbind(const dsr1_numa_binding *prev)
{
    if (!prev || prev->node < 0) return;
#if DSR1_HAVE_NUMA
    if (sched_setaffinity(0, sizeof(prev->cpus), &prev->cpus) != 0)
        DSR1_WARN("NUMA: cannot restore the thread's CPUs: %s", strerror(errno));
    numa_set_localalloc();
#endif
}
