/* NUMA placement (common/base/numa_bind.h): node choice, binding the calling thread to a node
 * and giving its CPUs back. Node 0 exists on every machine, so the binding itself runs
 * here even on one node (where workers are never bound). */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dsr1_build_config.h"
#include "numa_bind.h"

static void test_node_for(void **state)
{
    (void)state;
    const int n0 = dsr1_numa_node_for(0), n5 = dsr1_numa_node_for(5);
    if (n0 < 0) { /* one node or no libnuma: nobody is bound */
        assert_int_equal(n5, -1);
        return;
    }
    assert_int_equal(n0, 0);
    assert_true(n5 >= 0 && n5 <= 5);
}

static void test_bind_unbind(void **state)
{
    (void)state;
    cpu_set_t before, during, after;
    assert_int_equal(sched_getaffinity(0, sizeof(before), &before), 0);
    dsr1_numa_binding prev;
    dsr1_numa_bind(-1, &prev); /* no node: nothing changes */
    assert_int_equal(prev.node, -1);
    dsr1_numa_bind(0, &prev);
    assert_int_equal(sched_getaffinity(0, sizeof(during), &during), 0);
    assert_true(CPU_COUNT(&during) > 0);
    assert_int_equal(prev.node, DSR1_HAVE_NUMA ? 0 : -1);
    dsr1_numa_unbind(&prev);
    assert_int_equal(sched_getaffinity(0, sizeof(after), &after), 0);
    assert_true(CPU_EQUAL(&before, &after));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_for),
        cmocka_unit_test(test_bind_unbind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
