/* Number formats: e4m3 decoding from the bit layout, nearest rounding to e4m3, bf16
 * round-to-nearest-even and f16 decoding, each checked against an independent
 * computation on every pattern or on random values. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "numeric.h"

static double e4m3_formula(int b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? m / 8.0 * pow(2, -6) : (1 + m / 8.0) * pow(2, e - 7);
    return s ? -v : v;
}

static void test_e4m3_table(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) {
        double want = e4m3_formula(b);
        if (isnan(want))
            assert_true(isnan(dsr1_e4m3_to_f32((uint8_t)b)));
        else
            assert_true(dsr1_e4m3_to_f32((uint8_t)b) == (float)want);
    }
    assert_true(dsr1_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(dsr1_e4m3_to_f32(0x01) == 0x1p-9f);
}

static void test_e4m3_rounding(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) { /* exact values round-trip */
        float v = dsr1_e4m3_to_f32((uint8_t)b);
        if (isnan(v) || (v == 0 && b == 0x80)) continue;
        assert_int_equal(dsr1_f32_to_e4m3(v), b);
    }
    srand(11);
    for (int i = 0; i < 200000; i++) {
        float x = (float)((rand() / (double)RAND_MAX * 2 - 1) * pow(2, rand() % 16 - 10));
        uint8_t q = dsr1_f32_to_e4m3(x);
        double err = fabs(dsr1_e4m3_to_f32(q) - (double)x);
        for (int b = 0; b < 256; b++) { /* no other finite pattern is nearer */
            float v = dsr1_e4m3_to_f32((uint8_t)b);
            if (!isnan(v)) assert_true(err <= fabs(v - (double)x));
        }
    }
    assert_int_equal(dsr1_f32_to_e4m3(1000.0f), 0x7e); /* saturates */
    assert_int_equal(dsr1_f32_to_e4m3(-1000.0f), 0xfe);
    assert_int_equal(dsr1_f32_to_e4m3(NAN) & 0x7f, 0x7f);
}

static void test_bf16(void **state)
{
    (void)state;
    srand(12);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
        float x;
        memcpy(&x, &u, 4);
        if (isnan(x)) {
            assert_true(isnan(dsr1_bf16_to_f32(dsr1_f32_to_bf16(x))));
            continue;
        }
        uint16_t h = dsr1_f32_to_bf16(x);
        /* nearest of the two neighbouring bf16 values, ties to even */
        uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        double vlo = dsr1_bf16_to_f32(lo), vhi = dsr1_bf16_to_f32(hi);
        /* past the largest finite value the next step up is infinity, at 2^128 */
        if (isinf(vhi)) vhi = copysign(ldexp(1, 128), x);
        double dlo = fabs((double)x - vlo), dhi = fabs((double)x - vhi);
        uint16_t want = dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1 ? hi : lo);
        assert_int_equal(h, want);
    }
}

static void test_f16(void **state)
{
    (void)state;
    assert_true(dsr1_f16_to_f32(0x3c00) == 1.0f);
    assert_true(dsr1_f16_to_f32(0xc000) == -2.0f);
    assert_true(dsr1_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(dsr1_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(dsr1_f16_to_f32(0x7c00)));
    assert_true(isnan(dsr1_f16_to_f32(0x7e00)));
    for (int h = 0; h < 0x7c00; h++) { /* monotonic over the positive finite range */
        assert_true(dsr1_f16_to_f32((uint16_t)h) < dsr1_f16_to_f32((uint16_t)(h + 1)));
        assert_true(dsr1_f16_to_f32((uint16_t)(h | 0x8000)) == -dsr1_f16_to_f32((uint16_t)h));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_table),
        cmocka_unit_test(test_e4m3_rounding),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
