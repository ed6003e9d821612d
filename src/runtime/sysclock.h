/* sysclock.h - the operating system's clock behind the mp_clock interface.
 *
 * The runtime's one source of time: monotonic nanoseconds from
 * CLOCK_MONOTONIC (timers, timeouts, round trips: never jumps) and wall-clock
 * milliseconds from CLOCK_REALTIME (deadlines and TTLs that other nodes must
 * read the same way). Tests and the simulator use mp_manual_clock instead. */
#ifndef MP_SYSCLOCK_H
#define MP_SYSCLOCK_H

#include "core/clock.h"

/* The process-wide system clock. It has no state, so one instance serves
 * every caller and every thread. */
mp_clock *mp_sysclock(void);

/* Shorthands for mp_clock_wall_ms(mp_sysclock()) and mp_clock_mono_ns(...). */
uint64_t mp_sysclock_wall_ms(void);
uint64_t mp_sysclock_mono_ns(void);

#endif
