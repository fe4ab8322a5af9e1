/* Run-time choice of the kernel variant.
 *
 * Each fast variant is compiled only into the files that need its instruction set (see
 * kernels/meson.build) and is handed out only when the CPU in front of us supports it, so
 * one binary runs everywhere and takes the best path available:
 *   "avx512"   AVX-512 F/BW/VL/DQ with FMA and F16C (x86-64 builds only)
 *   "portable" plain C, always available.
 * "auto" (or NULL) picks the first available of those, unless the environment variable
 * DSR1_KERNELS names a variant, which then decides (an unknown or unavailable name there
 * falls back to the automatic choice with a warning, since a typo in the environment must
 * not stop a server). A name passed explicitly must be available: NULL otherwise. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "log.h"

#if DSR1_HAVE_AVX512_KERNELS
const dsr1_kernels *dsr1__kernels_avx512(void);

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* The named variant if this build has it and this CPU runs it, else NULL. */
static const dsr1_kernels *by_name(const char *name)
{
    if (strcmp(name, "portable") == 0) return dsr1_kernels_portable();
#if DSR1_HAVE_AVX512_KERNELS
    if (strcmp(name, "avx512") == 0) return cpu_has_avx512() ? dsr1__kernels_avx512() : NULL;
#endif
    return NULL;
}

static const dsr1_kernels *best(void)
{
#if DSR1_HAVE_AVX512_KERNELS
    if (cpu_has_avx512()) return dsr1__kernels_avx512();
#endif
    return dsr1_kernels_portable();
}

const dsr1_kernels *dsr1_kernels_select(const char *force)
{
    if (force != NULL && strcmp(force, "auto") != 0) return by_name(force);
    const char *env = getenv("DSR1_KERNELS");
    if (env != NULL && env[0] != '\0' && strcmp(env, "auto") != 0) {
        const dsr1_kernels *k = by_name(env);
        if (k) return k;
        DSR1_WARN("DSR1_KERNELS=%s: no such kernel variant on this machine; choosing "
                  "automatically",
                  env);
    }
    return best();
}
