/* dsr1-coordinator: the coordinator process of an mpirun/Slurm cluster (MPI rank 0), for
 * launch lines in the design card's form:
 *   mpirun -np 1 dsr1-coordinator --model DIR [--pp P] ... : -np N dsr1-worker --model DIR
 * It serves the model over gRPC with exactly `dsr1 serve`'s flags, the job's worker ranks
 * running the steps; with --prompt-ids it runs a one-shot job with `dsr1 run`'s flags
 * instead (prefill, teacher forcing or greedy decode, logit dumps). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"

int main(int argc, char **argv)
{
    bool run = false;
    for (int i = 1; i < argc; i++)
        run |= !strcmp(argv[i], "--prompt-ids") || !strncmp(argv[i], "--prompt-ids=", 13);
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: dsr1-coordinator --model DIR [dsr1 serve options]\n"
               "       dsr1-coordinator --model DIR --prompt-ids IDS [dsr1 run options]\n\n"
               "The coordinator of a cluster started by mpirun or srun (MPI rank 0; ranks 1..N\n"
               "are dsr1-worker processes): --workers is the job size minus one. It serves the\n"
               "model over gRPC with the options of `dsr1 serve`; with --prompt-ids it runs one\n"
               "job with the options of `dsr1 run` instead (dsr1-coordinator --prompt-ids 0\n"
               "--help shows them).\n\n");
        fflush(stdout);
    }
    /* the commands parse from argv[1]; they name themselves "dsr1 serve" / "dsr1 run" */
    return run ? dsr1_cmd_run(argc, argv) : dsr1_cmd_serve(argc, argv);
}
