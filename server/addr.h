/*
 * addr: the one reader of "HOST:PORT" text (every --rpc, --resp, --http,
 * consentctl feed --rpc), the one writer of a bound address as text, and
 * the one bind every listener goes through (it waits out EADDRINUSE for a
 * bounded time, as after a kill -9 and an immediate restart).
 * Plain functions over caller's storage; any thread may call them. Errors
 * come back as -errno with a message naming what was wrong in err.
 */
#ifndef CONSENTD_SERVER_ADDR_H
#define CONSENTD_SERVER_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADDR_HOST_MAX 256 /* host text, with its NUL */
#define ADDR_TEXT_MAX 64  /* "[v6]:PORT" as addr_format writes it */

/* Splits text: "host:port" (a name or IPv4 address) or "[v6]:port". host
 * gets the host without brackets, *port the number (0 allowed: "any").
 * -EINVAL for an empty host or port, a port over 65535 or not a number,
 * an unbracketed IPv6 address, a '[' without its ']', junk in the host. */
int addr_split(const char *text, char host[ADDR_HOST_MAX], uint16_t *port,
	       char *err, size_t err_cap);

/* addr_split, then the host resolved for listening (a name takes its
 * first address): *ss and *len hold a sockaddr_in or sockaddr_in6. */
int addr_resolve(const char *text, struct sockaddr_storage *ss,
		 socklen_t *len, char *err, size_t err_cap);

/* "1.2.3.4:PORT" or "[v6]:PORT" of an AF_INET or AF_INET6 address into
 * out (ADDR_TEXT_MAX is always enough). Returns the length, or -EINVAL
 * for another family or too small a buffer. */
int addr_format(const struct sockaddr *sa, char *out, size_t out_cap);

/* bind(fd, sa, len); on EADDRINUSE tries again every ADDR_RETRY_MS until
 * wait_ms have passed, saying once on stderr that it waits (naming what,
 * e.g. "--rpc 127.0.0.1:7700") and once that it got the address or gave
 * up. 0, or -errno of the last bind. */
#define ADDR_RETRY_MS 50
int addr_bind(int fd, const struct sockaddr *sa, socklen_t len,
	      uint32_t wait_ms, const char *what);

#endif
