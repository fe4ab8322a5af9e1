/* Run-time choice of the kernel variant.
 *
 * Each fast variant is compiled only into the files that need its instruction set (see
 * kernels/meson.build) and is handed out only when the CPU in front of us supports it, so
 * one binary runs everywhere and takes the best path available:
 *   "avx512"      AVX-512 F/BW/VL/DQ with FMA and F16C (x86-64 builds only)
 *   "portable"    plain C, always available
 * and, never chosen automatically because it is not exact (docs/kernels.md):
 *   "bf16-tiles"  the fast precision mode (kernels/cpu/fast.h): bf16 activations and
 *                 weights, fp32 accumulation, batch-invariant; on AMX tiles where the CPU
 *                 and Linux allow them, else on vdpbf16ps (AVX512_BF16).
 *   "bf16-tiles-emulated" its tile kernels on the tile layer's software emulation (slow:
 *                 to check the AMX path's results, bit for bit, on any machine).
 *   "avx512-bf16" retired (it switched to bf16 at 16 rows, so it was not batch-invariant):
 *                 an alias of "bf16-tiles", with a warning.
 * "auto" (or NULL) picks the first available of the first two, unless the environment
 * variable DSR1_KERNELS names a variant, which then decides (an unknown or unavailable name
 * there falls back to the automatic choice with a warning, since a typo in the environment
 * must not stop a server). A name passed explicitly must be available: NULL otherwise, with
 * the reason logged. */
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
#include "cpu/fast.h"

/* The named variant if this build has it and this CPU runs it, else NULL with *why set. */
static const dsr1_kernels *by_name(const char *name, const char **why)
{
    *why = "no such variant in this build (portable, avx512 and bf16-tiles where built)";
    if (strcmp(name, "portable") == 0) return dsr1_kernels_portable();
    if (strcmp(name, "avx512-bf16") == 0) {
        DSR1_WARN("kernel variant 'avx512-bf16' is retired (not batch-invariant); using "
                  "'bf16-tiles', the fast mode (docs/kernels.md)");
        name = "bf16-tiles";
    }
    if (strcmp(name, "bf16-tiles") == 0) return dsr1__kernels_bf16_tiles(DSR1__FAST_AUTO, why);
    if (strcmp(name, "bf16-tiles-emulated") == 0)
        return dsr1__kernels_bf16_tiles(DSR1__FAST_TILE_EMU, why);
#if DSR1_HAVE_AVX512_KERNELS
    if (strcmp(name, "avx512") == 0) {
        *why = "this CPU has no AVX-512 F/BW/VL/DQ with AVX2 and FMA";
        return cpu_has_avx512() ? dsr1__kernels_avx512() : NULL;
    }
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
    const char *why;
    if (force != NULL && strcmp(force, "auto") != 0) {
        const dsr1_kernels *k = by_name(force, &why);
        if (!k) DSR1_ERROR("kernel variant '%s': %s", force, why);
        return k;
    }
    const char *env = getenv("DSR1_KERNELS");
    if (env != NULL && env[0] != '\0' && strcmp(env, "auto") != 0) {
        const dsr1_kernels *k = by_name(env, &why);
        if (k) return k;
        DSR1_WARN("DSR1_KERNELS=%s: %s; choosing automatically", env, why);
    }
    return best();
}

bool dsr1_kernels_name_is_fast(const char *name)
{
    return name != NULL &&
           (strcmp(name, "bf16-tiles") == 0 || strcmp(name, "bf16-tiles-emulated") == 0 ||
            strcmp(name, "avx512-bf16") == 0);
}
