/* sysclock.c - mp_clock over clock_gettime(2). */
#define _POSIX_C_SOURCE 200809L

#include "runtime/sysclock.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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

uint64_t mp_sysclock_mono_ms(void) {
    return mp_sysclock_mono_ns() / MP_NS_PER_MS;
}

void mp_sysrand_seed(mp_xoshiro *x) {
    uint64_t state[4] = {0, 0, 0, 0};
    size_t got = 0;
    while (got < sizeof state) {
        ssize_t n = getrandom((char *)state + got, sizeof state - got, GRND_NONBLOCK);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    if (got < sizeof state) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state[0] ^= ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec;
        state[1] ^= (uint64_t)getpid() << 16;
        state[2] ^= (uint64_t)(uintptr_t)x;
        state[3] ^= mp_sysclock_mono_ns();
    }
    mp_xoshiro_seed(x, state[0] ^ state[1] ^ state[2] ^ state[3]);
    if ((state[0] | state[1] | state[2] | state[3]) != 0) {
        memcpy(x->s, state, sizeof state);
    }
}
