/* Run-time choice of the kernel variant. Only the portable variant exists so far; SIMD and
 * CUDA variants register here, each guarded by a CPU-feature or device check. */
#include <string.h>

#include "kernels.h"

const dsr1_kernels *dsr1_kernels_select(const char *force)
{
    if (force == NULL || strcmp(force, "auto") == 0 || strcmp(force, "portable") == 0)
        return dsr1_kernels_portable();
    return NULL;
}
