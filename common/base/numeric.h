/* Number formats of the checkpoints: float8 e4m3fn, bfloat16, float16 <-> float32.
 *
 * float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; S.1111.111 is
 * NaN; exponent 0 is subnormal (m/8 * 2^-6); largest finite 448. Every e4m3 value is exact
 * in float32, and so is its product with a float32 block scale, which is why dequantising
 * on the fly gives bit-identical weights to dequantising at load time. */
#ifndef DSR1_NUMERIC_H
#define DSR1_NUMERIC_H

#include <stdint.h>
#include <string.h>

/* The 256 float32 values of e4m3 bit patterns (index = byte); NaN for 0x7f and 0xff. */
extern const float dsr1_e4m3_table[256];

static inline float dsr1_e4m3_to_f32(uint8_t b)
{
    return dsr1_e4m3_table[b];
}

/* Round to the nearest e4m3 value (ties to even mantissa); |x| > 448 saturates to +-448,
 * NaN stays NaN. */
uint8_t dsr1_f32_to_e4m3(float x);

static inline float dsr1_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t dsr1_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dsr1_f16_to_f32(uint16_t h);

#endif
