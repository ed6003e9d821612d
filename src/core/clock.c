/* clock.c - the manual (deterministic) clock. */
#include "core/clock.h"

static uint64_t mp_manual_mono(mp_clock *self) {
    return ((mp_manual_clock *)self)->mono_ns;
}

static uint64_t mp_manual_wall(mp_clock *self) {
    mp_manual_clock *c = (mp_manual_clock *)self;
    return c->wall_start_ms + c->mono_ns / MP_NS_PER_MS;
}

void mp_manual_clock_init(mp_manual_clock *c, uint64_t wall_start_ms) {
    c->clock.mono_ns = mp_manual_mono;
    c->clock.wall_ms = mp_manual_wall;
    c->mono_ns = 0;
    c->wall_start_ms = wall_start_ms;
}

void mp_manual_clock_advance(mp_manual_clock *c, uint64_t ns) {
    c->mono_ns += ns;
}
