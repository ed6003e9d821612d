/* check.h - the one assertion macro: MP_ASSERT(invariant).
 *
 * Invariants are written beside the state they constrain and checked in
 * every build, as Redis's and libuv's assert() are: a router that goes on
 * with corrupt state does more harm than one that stops. A failure prints
 * the expression and where it is to stderr and aborts, so that the
 * simulator turns silent corruption into a seed that replays it. Checks
 * must be cheap (a compare, not a walk) and free of side effects. */
#ifndef MP_CHECK_H
#define MP_CHECK_H

#define MP_ASSERT(cond) ((cond) ? (void)0 : mp_assert_fail(#cond, __FILE__, __LINE__))

_Noreturn void mp_assert_fail(const char *expr, const char *file, int line);

#endif
