/* dsr1-coordinator: the coordinator process of an mpirun/Slurm cluster (MPI rank 0), for
 * launch lines in the design card's form:
 *   mpirun -np 1 dsr1-coordinator --model DIR [--pp P] ... : -np N dsr1-worker --model DIR
 * Today the coordinator runs one-shot jobs with exactly `dsr1 run`'s flags (prefill, teacher
 * forcing or greedy decode, logit dumps), coordinating the job's worker ranks; the serving
 * frontend (gRPC) will be added to this same process. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: dsr1-coordinator --model DIR --prompt-ids IDS [dsr1 run options]\n\n"
               "The coordinator of a cluster started by mpirun or srun (MPI rank 0; ranks 1..N\n"
               "are dsr1-worker processes). It takes the options of `dsr1 run` (below) and\n"
               "coordinates the job's workers: --workers is the job size minus one.\n\n");
        fflush(stdout);
    }
    /* `dsr1 run` parses from argv[1]; it names itself "dsr1 run" in its messages */
    return dsr1_cmd_run(argc, argv);
}
