/*
 * addr: HOST:PORT text and the listeners' bind (server/addr.h).
 *
 * The split is strict so that a typo fails at start-up with a message
 * rather than binding somewhere unexpected: an IPv6 address must be in
 * brackets ("::1:7700" could be a port or part of the address), the port
 * is 1-5 decimal digits no larger than 65535, and a host holds only the
 * characters a name or a numeric address can (a scope id after '%' in
 * brackets included). Whether the host exists is getaddrinfo's call.
 */
#include "server/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"

static int addr_host_char(char c, int bracketed)
{
	if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	    (c >= 'A' && c <= 'Z') || c == '.' || c == '-' || c == '_')
		return 1;
	return bracketed && (c == ':' || c == '%');
}

int addr_split(const char *text, char host[ADDR_HOST_MAX], uint16_t *port,
	       char *err, size_t err_cap)
{
	const char *h, *p, *close = NULL;
	size_t hl;
	unsigned long v = 0;
	int bracketed = text[0] == '[';

	if (*text == '\0') {
		snprintf(err, err_cap, "empty address (want HOST:PORT)");
		return -EINVAL;
	}
	if (bracketed) {
		close = strchr(text, ']');
		if (close == NULL) {
			snprintf(err, err_cap, "%s: '[' without its ']' (want "
				 "[IPv6]:PORT)", text);
			return -EINVAL;
		}
		if (close[1] != ':') {
			snprintf(err, err_cap, "%s: no ':PORT' after ']' (want "
				 "[IPv6]:PORT)", text);
			return -EINVAL;
		}
		h = text + 1;
		hl = (size_t)(close - h);
		p = close + 2;
	} else {
		const char *colon = strrchr(text, ':');

		if (colon == NULL) {
			snprintf(err, err_cap, "%s: no port (want HOST:PORT)",
				 text);
			return -EINVAL;
		}
		if (memchr(text, ':', (size_t)(colon - text)) != NULL) {
			snprintf(err, err_cap, "%s: an IPv6 address goes in "
				 "brackets ([ADDR]:PORT)", text);
			return -EINVAL;
		}
		h = text;
		hl = (size_t)(colon - text);
		p = colon + 1;
	}
	if (hl == 0) {
		snprintf(err, err_cap, "%s: empty host", text);
		return -EINVAL;
	}
	if (hl >= ADDR_HOST_MAX) {
		snprintf(err, err_cap, "%s: host longer than %d characters",
			 text, ADDR_HOST_MAX - 1);
		return -EINVAL;
	}
	for (size_t i = 0; i < hl; i++)
		if (!addr_host_char(h[i], bracketed)) {
			snprintf(err, err_cap, "%s: character '%c' cannot be "
				 "in a host", text, h[i] >= 0x20 && h[i] < 0x7f
				 ? h[i] : '?');
			return -EINVAL;
		}
	if (bracketed && memchr(h, ':', hl) == NULL) {
		snprintf(err, err_cap, "%s: brackets hold an IPv6 address, not "
			 "'%.*s'", text, (int)hl, h);
		return -EINVAL;
	}
	if (*p == '\0') {
		snprintf(err, err_cap, "%s: empty port", text);
		return -EINVAL;
	}
	for (const char *q = p; *q; q++) {
		if (*q < '0' || *q > '9') {
			snprintf(err, err_cap, "%s: port '%s' is not a number",
				 text, p);
			return -EINVAL;
		}
		if (v <= 65535)
			v = v * 10 + (unsigned long)(*q - '0');
	}
	if (v > 65535) {
		snprintf(err, err_cap, "%s: port %s is over 65535", text, p);
		return -EINVAL;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (uint16_t)v;
	return 0;
}

int addr_resolve(const char *text, struct sockaddr_storage *ss,
		 socklen_t *len, char *err, size_t err_cap)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	char host[ADDR_HOST_MAX], service[8];
	uint16_t port;
	int rc;

	rc = addr_split(text, host, &port, err, err_cap);
	if (rc < 0)
		return rc;
	snprintf(service, sizeof(service), "%u", (unsigned)port);
	rc = getaddrinfo(host, service, &hints, &ai);
	if (rc != 0) {
		snprintf(err, err_cap, "%s: %s", text, gai_strerror(rc));
		return -EINVAL;
	}
	if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
	    ai->ai_addrlen > sizeof(*ss)) {
		freeaddrinfo(ai);
		snprintf(err, err_cap, "%s: not an IPv4 or IPv6 address", text);
		return -EINVAL;
	}
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

int addr_format(const struct sockaddr *sa, char *out, size_t out_cap)
{
	char h[INET6_ADDRSTRLEN];
	int n;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &s4->sin_addr, h, sizeof(h));
		n = snprintf(out, out_cap, "%s:%u", h,
			     (unsigned)ntohs(s4->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &s6->sin6_addr, h, sizeof(h));
		n = snprintf(out, out_cap, "[%s]:%u", h,
			     (unsigned)ntohs(s6->sin6_port));
	} else {
		return -EINVAL;
	}
	return n >= 0 && (size_t)n < out_cap ? n : -EINVAL;
}

int addr_bind(int fd, const struct sockaddr *sa, socklen_t len,
	      uint32_t wait_ms, const char *what)
{
	const struct timespec pause = { 0, ADDR_RETRY_MS * 1000000L };
	uint64_t start = 0, waited;
	int waiting = 0;

	for (;;) {
		if (bind(fd, sa, len) == 0) {
			if (waiting)
				fprintf(stderr, "consentd: %s: bound after "
					"%llu ms\n", what,
					(unsigned long long)(clock_mono_ms() -
							     start));
			return 0;
		}
		if (errno != EADDRINUSE || wait_ms == 0)
			return -errno;
		if (!waiting) {
			waiting = 1;
			start = clock_mono_ms();
			fprintf(stderr, "consentd: %s: address in use; trying "
				"again every %d ms for up to %u ms\n", what,
				ADDR_RETRY_MS, wait_ms);
		}
		waited = clock_mono_ms() - start;
		if (waited >= wait_ms) {
			fprintf(stderr, "consentd: %s: still in use after %llu "
				"ms; giving up\n", what,
				(unsigned long long)waited);
			errno = EADDRINUSE;
			return -EADDRINUSE;
		}
		nanosleep(&pause, NULL);
	}
}
