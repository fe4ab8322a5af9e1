/* Conversions between checkpoint number formats (see numeric.h). */
#include "numeric.h"

#include <math.h>

#define E4M3_ROW(hi)                                                                               \
    E4M3_VAL(hi, 0), E4M3_VAL(hi, 1), E4M3_VAL(hi, 2), E4M3_VAL(hi, 3), E4M3_VAL(hi, 4),           \
        E4M3_VAL(hi, 5), E4M3_VAL(hi, 6), E4M3_VAL(hi, 7)

/* value of sign/exponent byte-part `hi` (the top 5 bits) and mantissa m */
#define E4M3_MAG(e, m) ((e) == 0 ? (m) / 8.0f / 64.0f : (1.0f + (m) / 8.0f) * E4M3_P2((e)-7))
#define E4M3_P2(k)                                                                                 \
    ((k) >= 0 ? (float)(1u << ((k) < 0 ? 0 : (k))) : 1.0f / (float)(1u << ((k) > 0 ? 0 : -(k))))
#define E4M3_VAL(hi, m)                                                                            \
    (((hi)&15) == 15 && (m) == 7 ? NAN : ((hi)&16 ? -1.0f : 1.0f) * E4M3_MAG((hi)&15, (m)))

const float dsr1_e4m3_table[256] = {
    E4M3_ROW(0),  E4M3_ROW(1),  E4M3_ROW(2),  E4M3_ROW(3),  E4M3_ROW(4),  E4M3_ROW(5),
    E4M3_ROW(6),  E4M3_ROW(7),  E4M3_ROW(8),  E4M3_ROW(9),  E4M3_ROW(10), E4M3_ROW(11),
    E4M3_ROW(12), E4M3_ROW(13), E4M3_ROW(14), E4M3_ROW(15), E4M3_ROW(16), E4M3_ROW(17),
    E4M3_ROW(18), E4M3_ROW(19), E4M3_ROW(20), E4M3_ROW(21), E4M3_ROW(22), E4M3_ROW(23),
    E4M3_ROW(24), E4M3_ROW(25), E4M3_ROW(26), E4M3_ROW(27), E4M3_ROW(28), E4M3_ROW(29),
    E4M3_ROW(30), E4M3_ROW(31),
};

uint8_t dsr1_f32_to_e4m3(float x)
{
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e;
    /* binary search over the 127 finite non-negative patterns, which are increasing */
    int lo = 0, hi = 126;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (dsr1_e4m3_table[mid] <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    /* lo: largest pattern <= a; pick the nearer of lo, lo+1, ties to even (lower bit 0) */
    if (lo < 126) {
        float d0 = a - dsr1_e4m3_table[lo], d1 = dsr1_e4m3_table[lo + 1] - a;
        if (d1 < d0 || (d1 == d0 && (lo & 1))) lo++;
    }
    return sign | (uint8_t)lo;
}

float dsr1_f16_to_f32(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0)
        v = ldexpf((float)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexpf((float)(m | 1024), e - 25);
    return s ? -v : v;
}
