/* addr.h - the one parser of "host:port" and ports, for every address a
 * user or a peer gives (mpregd's --listen, --peer and --advertise,
 * membership addresses, the transport's dials, the client's URL).
 *
 * Forms: "host:port", "[ipv6]:port" (brackets dropped from the host). An
 * IPv6 address without brackets is refused, since its colons are
 * ambiguous. Nothing is resolved here: the host is text. */
#ifndef MP_ADDR_H
#define MP_ADDR_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest host mp_addr_split hands back, NUL included. */
#define MP_ADDR_HOST_MAX 256

/* s[0..len) as a port: decimal digits only, 1..65535 (0 too when
 * allow_zero). false for anything else, *out untouched. */
bool mp_port_parse(const char *s, size_t len, bool allow_zero, uint16_t *out);

/* Splits "host:port" or "[ipv6]:port" into host and port. MPREG_E_INVALID
 * for no port, an empty host, an IPv6 address without brackets, a host of
 * MP_ADDR_HOST_MAX bytes or more, a bad port (0 only with allow_port_0). */
mpreg_err mp_addr_split(const char *addr, bool allow_port_0, char host[MP_ADDR_HOST_MAX],
                        uint16_t *port);

#endif
