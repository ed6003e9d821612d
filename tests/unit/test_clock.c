/* test_clock.c - the manual clock the simulator and tests drive. */
#include "core/clock.h"

#include <criterion/criterion.h>
#include <stdint.h>

Test(clock, starts_at_zero_and_wall_start) {
    mp_manual_clock c;
    mp_manual_clock_init(&c, 1700000000000ULL);
    cr_assert_eq(mp_clock_mono_ns(&c.clock), 0);
    cr_assert_eq(mp_clock_wall_ms(&c.clock), 1700000000000ULL);
}

Test(clock, advance_moves_both_readings) {
    mp_manual_clock c;
    mp_manual_clock_init(&c, 5000);
    mp_clock *clk = &c.clock; /* as a state machine's driver sees it */
    mp_manual_clock_advance(&c, 1500 * MP_NS_PER_MS);
    cr_assert_eq(mp_clock_mono_ns(clk), 1500 * MP_NS_PER_MS);
    cr_assert_eq(mp_clock_wall_ms(clk), 6500);
    mp_manual_clock_advance(&c, 2 * MP_NS_PER_SEC);
    cr_assert_eq(mp_clock_mono_ns(clk), 3500 * MP_NS_PER_MS);
    cr_assert_eq(mp_clock_wall_ms(clk), 8500);
}

Test(clock, sub_millisecond_steps_accumulate) {
    mp_manual_clock c;
    mp_manual_clock_init(&c, 0);
    /* 999,999 ns is not yet a millisecond; one more ns is. */
    mp_manual_clock_advance(&c, MP_NS_PER_MS - 1);
    cr_assert_eq(mp_clock_wall_ms(&c.clock), 0);
    mp_manual_clock_advance(&c, 1);
    cr_assert_eq(mp_clock_wall_ms(&c.clock), 1);
    /* Many small steps add up exactly: the clock keeps nanoseconds. */
    for (int i = 0; i < 1000; i++) {
        mp_manual_clock_advance(&c, 1000);
    }
    cr_assert_eq(mp_clock_mono_ns(&c.clock), 2 * MP_NS_PER_MS);
    cr_assert_eq(mp_clock_wall_ms(&c.clock), 2);
}

Test(clock, zero_advance_and_monotonic) {
    mp_manual_clock c;
    mp_manual_clock_init(&c, 42);
    uint64_t prev = mp_clock_mono_ns(&c.clock);
    for (uint64_t step = 0; step < 100; step++) {
        mp_manual_clock_advance(&c, step * 12345);
        uint64_t now = mp_clock_mono_ns(&c.clock);
        cr_assert_geq(now, prev);
        cr_assert_eq(now - prev, step * 12345);
        prev = now;
    }
}

Test(clock, long_runs) {
    mp_manual_clock c;
    mp_manual_clock_init(&c, 1000);
    /* A hundred simulated years fit comfortably in 64-bit nanoseconds. */
    uint64_t century = 100ULL * 365 * 24 * 3600 * MP_NS_PER_SEC;
    mp_manual_clock_advance(&c, century);
    cr_assert_eq(mp_clock_mono_ns(&c.clock), century);
    cr_assert_eq(mp_clock_wall_ms(&c.clock), 1000 + century / MP_NS_PER_MS);
}

Test(clock, independent_clocks) {
    mp_manual_clock a, b;
    mp_manual_clock_init(&a, 0);
    mp_manual_clock_init(&b, 100);
    mp_manual_clock_advance(&a, 5 * MP_NS_PER_MS);
    cr_assert_eq(mp_clock_mono_ns(&b.clock), 0);
    cr_assert_eq(mp_clock_wall_ms(&a.clock), 5);
    cr_assert_eq(mp_clock_wall_ms(&b.clock), 100);
}
