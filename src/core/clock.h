/* clock.h - the time source interface.
 *
 * State machines take `now` as a parameter; drivers read it from an mp_clock.
 * Two readings: monotonic nanoseconds (timers, timeouts, RTTs) and wall-clock
 * milliseconds since the Unix epoch (deadlines that cross nodes, TTLs shown to
 * users). The runtime reads the OS; tests and the simulator use
 * mp_manual_clock, which moves only when told. */
#ifndef MP_CLOCK_H
#define MP_CLOCK_H

#include <stdint.h>

typedef struct mp_clock mp_clock;
struct mp_clock {
    uint64_t (*mono_ns)(mp_clock *self);
    uint64_t (*wall_ms)(mp_clock *self);
};

static inline uint64_t mp_clock_mono_ns(mp_clock *c) {
    return c->mono_ns(c);
}
static inline uint64_t mp_clock_wall_ms(mp_clock *c) {
    return c->wall_ms(c);
}

#define MP_NS_PER_MS 1000000ULL
#define MP_NS_PER_SEC 1000000000ULL

typedef struct mp_manual_clock {
    mp_clock clock; /* first member */
    uint64_t mono_ns;
    uint64_t wall_start_ms; /* wall time when mono_ns was 0 */
} mp_manual_clock;

void mp_manual_clock_init(mp_manual_clock *c, uint64_t wall_start_ms);
/* Moves both readings forward together. */
void mp_manual_clock_advance(mp_manual_clock *c, uint64_t ns);

#endif
