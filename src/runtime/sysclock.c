/* sysclock.c - mp_clock over clock_gettime(2). */
#define _POSIX_C_SOURCE 200809L

#include "runtime/sysclock.h"

#include <time.h>

static uint64_t mp_sys_read(clockid_t id) {
    struct timespec ts;
    /* clock_gettime fails only for an unknown clock id, and both ids used
     * here exist on every POSIX system we build for. */
    if (clock_gettime(id, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * MP_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static uint64_t mp_sys_mono_ns(mp_clock *self) {
    (void)self;
    return mp_sys_read(CLOCK_MONOTONIC);
}

static uint64_t mp_sys_wall_ms(mp_clock *self) {
    (void)self;
    return mp_sys_read(CLOCK_REALTIME) / MP_NS_PER_MS;
}

static mp_clock mp_sys_clock = {mp_sys_mono_ns, mp_sys_wall_ms};

mp_clock *mp_sysclock(void) {
    return &mp_sys_clock;
}

uint64_t mp_sysclock_wall_ms(void) {
    return mp_sys_wall_ms(&mp_sys_clock);
}

uint64_t mp_sysclock_mono_ns(void) {
    return mp_sys_mono_ns(&mp_sys_clock);
}
