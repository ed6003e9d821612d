/* sysclock.h - the operating system's clock behind the mp_clock interface.
 *
 * The runtime's one source of time: monotonic nanoseconds from
 * CLOCK_MONOTONIC (timers, timeouts, round trips: never jumps) and wall-clock
 * milliseconds from CLOCK_REALTIME (deadlines and TTLs that other nodes must
 * read the same way). Tests and the simulator use mp_manual_clock instead. */
#ifndef MP_SYSCLOCK_H
#define MP_SYSCLOCK_H

#include "core/clock.h"
#include "core/rng.h"

/* The process-wide system clock. It has no state, so one instance serves
 * every caller and every thread. */
mp_clock *mp_sysclock(void);

/* Shorthands for mp_clock_wall_ms(mp_sysclock()) and mp_clock_mono_ns(...),
 * and monotonic milliseconds. */
uint64_t mp_sysclock_wall_ms(void);
uint64_t mp_sysclock_mono_ns(void);
uint64_t mp_sysclock_mono_ms(void);

/* Seeds a generator from the operating system's random source (all 256
 * bits of its state): ids drawn from it must not collide with another
 * process's. With no entropy yet (early boot) it falls back to time, pid
 * and an address, unique enough for ids, which need not be secret. The
 * runtime's one source of randomness, for the node and the client alike. */
void mp_sysrand_seed(mp_xoshiro *x);

#endif
