/* addr.c - host:port and port parsing (addr.h). */
#include "core/addr.h"

#include <string.h>

bool mp_port_parse(const char *s, size_t len, bool allow_zero, uint16_t *out) {
    if (!s || len == 0 || len > 5) {
        return false;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > 65535 || (v == 0 && !allow_zero)) {
        return false;
    }
    *out = (uint16_t)v;
    return true;
}

mpreg_err mp_addr_split(const char *addr, bool allow_port_0, char host[MP_ADDR_HOST_MAX],
                        uint16_t *port) {
    if (!addr || !host || !port) {
        return MPREG_E_INVALID;
    }
    const char *start = addr, *end, *colon;
    if (addr[0] == '[') {
        end = strchr(addr, ']');
        if (!end || end[1] != ':') {
            return MPREG_E_INVALID;
        }
        start = addr + 1;
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
            return MPREG_E_INVALID; /* no port, or an IPv6 address without brackets */
        }
        end = colon;
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= MP_ADDR_HOST_MAX ||
        !mp_port_parse(colon + 1, strlen(colon + 1), allow_port_0, port)) {
        return MPREG_E_INVALID;
    }
    memcpy(host, start, n);
    host[n] = '\0';
    return MPREG_OK;
}
