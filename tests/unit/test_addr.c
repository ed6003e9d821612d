/* test_addr.c - the one host:port and port parser (core/addr.h). */
#include "core/addr.h"

#include <criterion/criterion.h>
#include <string.h>

Test(addr, ports) {
    uint16_t p = 7;
    cr_assert(mp_port_parse("1", 1, false, &p) && p == 1);
    cr_assert(mp_port_parse("65535", 5, false, &p) && p == 65535);
    cr_assert(mp_port_parse("0", 1, true, &p) && p == 0);
    p = 7;
    const char *bad[] = {"", "0", "65536", "99999", "123456", "-1", "+1", "1a", " 1", "1 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_not(mp_port_parse(bad[i], strlen(bad[i]), false, &p), "accepted '%s'", bad[i]);
    }
    cr_assert_eq(p, 7, "a refused port leaves the output alone");
    cr_assert_not(mp_port_parse("80", 0, false, &p), "the length is what counts");
    cr_assert(mp_port_parse("8080xyz", 4, false, &p) && p == 8080);
    cr_assert_not(mp_port_parse(NULL, 0, true, &p));
}

Test(addr, split) {
    char host[MP_ADDR_HOST_MAX];
    uint16_t port = 0;
    cr_assert_eq(mp_addr_split("127.0.0.1:6464", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 6464);
    cr_assert_eq(mp_addr_split("[::1]:80", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 80);
    cr_assert_eq(mp_addr_split("node.example:1", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "node.example");
    cr_assert_eq(mp_addr_split("h:0", true, host, &port), MPREG_OK);
    cr_assert_eq(port, 0);
    const char *bad[] = {"h:0",  "h",     "h:",      ":80",  "::1:80", "[::1]80",
                         "[::1", "[]:80", "h:65536", "h:8o", NULL};
    for (size_t i = 0; bad[i]; i++) {
        cr_assert_eq(mp_addr_split(bad[i], false, host, &port), MPREG_E_INVALID, "accepted '%s'",
                     bad[i]);
    }
    char longhost[MP_ADDR_HOST_MAX + 8];
    memset(longhost, 'a', MP_ADDR_HOST_MAX);
    strcpy(longhost + MP_ADDR_HOST_MAX, ":1");
    cr_assert_eq(mp_addr_split(longhost, false, host, &port), MPREG_E_INVALID);
    longhost[MP_ADDR_HOST_MAX - 1] = '\0';
    longhost[MP_ADDR_HOST_MAX - 2] = '1';
    longhost[MP_ADDR_HOST_MAX - 3] = ':';
    cr_assert_eq(mp_addr_split(longhost, false, host, &port), MPREG_OK, "the longest host fits");
    cr_assert_eq(mp_addr_split(NULL, false, host, &port), MPREG_E_INVALID);
}
