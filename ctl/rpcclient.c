/*
 * rpcclient: see rpcclient.h. Frames are a 4-byte big-endian length and a
 * consent.v1.Request; replies a Response with the same id, in order
 * (DESIGN §3.2). Waits are bounded by SO_RCVTIMEO/SO_SNDTIMEO, which
 * also bound connect, so a stalled server is an error, never a hang.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "ctl/rpcclient.h"
#include "server/addr.h"

int rpcclient_connect(struct rpcclient *c, const char *hostport,
		      int timeout_ms, const char *label)
{
	char h[ADDR_HOST_MAX], port[8], why[ADDR_HOST_MAX + 128];
	struct addrinfo hints = { 0 }, *res, *ai;
	uint16_t port_n;
	int fd = -1, rc;

	c->fd = -1;
	c->addr = hostport;
	c->label = label;
	if (c->next_id == 0)
		c->next_id = 1;
	if (addr_split(hostport, h, &port_n, why, sizeof(why)) < 0) {
		fprintf(stderr, "%s: %s\n", label, why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", (unsigned)port_n);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(h, port, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "%s: %s: %s\n", label, hostport, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	rc = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
		int one = 1;

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			rc = -errno;
			continue;
		}
		/* Bounded waits: SO_SNDTIMEO also bounds connect. */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		rc = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return rc;
	c->fd = fd;
	return 0;
}

void rpcclient_close(struct rpcclient *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

int rpcclient_send_all(struct rpcclient *c, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static int rpcclient_recv_all(struct rpcclient *c, uint8_t *p, size_t len)
{
	while (len) {
		ssize_t r = recv(c->fd, p, len, 0);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		if (r == 0)
			return -ECONNRESET; /* the server closed mid-exchange */
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int rpcclient_send(struct rpcclient *c, const Consent__V1__Request *req)
{
	size_t n = consent__v1__request__get_packed_size(req);
	uint8_t *buf;
	int rc;

	if (n > UINT32_MAX)
		return -EMSGSIZE;
	buf = malloc(4 + n);
	if (!buf)
		return -ENOMEM;
	buf[0] = (uint8_t)(n >> 24);
	buf[1] = (uint8_t)(n >> 16);
	buf[2] = (uint8_t)(n >> 8);
	buf[3] = (uint8_t)n;
	consent__v1__request__pack(req, buf + 4);
	rc = rpcclient_send_all(c, buf, 4 + n);
	free(buf);
	return rc;
}

int rpcclient_recv(struct rpcclient *c, Consent__V1__Response **out)
{
	uint8_t hdr[4], *buf;
	uint32_t n;
	int rc = rpcclient_recv_all(c, hdr, 4);

	if (rc < 0)
		return rc;
	n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
	    (uint32_t)hdr[2] << 8 | hdr[3];
	if (n > RPCCLIENT_RESPONSE_MAX)
		return -EMSGSIZE;
	buf = malloc(n ? n : 1);
	if (!buf)
		return -ENOMEM;
	rc = rpcclient_recv_all(c, buf, n);
	if (rc == 0) {
		*out = consent__v1__response__unpack(NULL, n, buf);
		if (!*out)
			rc = -EPROTO;
	}
	free(buf);
	return rc;
}

int rpcclient_call(struct rpcclient *c, Consent__V1__Request *req,
		   Consent__V1__Response **out)
{
	int rc;

	req->id = c->next_id++;
	rc = rpcclient_send(c, req);
	if (rc == 0)
		rc = rpcclient_recv(c, out);
	if (rc < 0)
		fprintf(stderr, "%s: %s: %s\n", c->label, c->addr, strerror(-rc));
	return rc;
}

int rpcclient_fault(const struct rpcclient *c, const Consent__V1__Response *r,
		    uint64_t want_id, const char *want, uint32_t *code)
{
	if (code)
		*code = 0;
	if (r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR && r->error) {
		if (code)
			*code = r->error->code;
		fprintf(stderr, "%s: server error %" PRIu32 ": %s\n", c->label,
			r->error->code,
			r->error->message ? r->error->message : "");
	} else if (r->id != want_id) {
		fprintf(stderr, "%s: reply id %" PRIu64 ", expected %" PRIu64 "\n",
			c->label, r->id, want_id);
	} else {
		fprintf(stderr, "%s: expected a %s reply, got body %d\n",
			c->label, want, (int)r->body_case);
	}
	return -EPROTO;
}

int rpcclient_auth(struct rpcclient *c, const char *token)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__AuthRequest a = CONSENT__V1__AUTH_REQUEST__INIT;
	Consent__V1__Response *r = NULL;
	int rc;

	a.token = (char *)token;
	req.body_case = CONSENT__V1__REQUEST__BODY_AUTH;
	req.auth = &a;
	rc = rpcclient_call(c, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id || r->body_case != CONSENT__V1__RESPONSE__BODY_AUTH)
		rc = rpcclient_fault(c, r, req.id, "Auth", NULL);
	else
		fprintf(stderr, "%s: authenticated as %s\n", c->label,
			r->auth && r->auth->principal ? r->auth->principal : "?");
	consent__v1__response__free_unpacked(r, NULL);
	return rc;
}

int rpcclient_stats(struct rpcclient *c, const char *origin,
		    Consent__V1__Response **out)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__StatsRequest s = CONSENT__V1__STATS_REQUEST__INIT;
	Consent__V1__Response *r = NULL;
	int rc;

	req.body_case = CONSENT__V1__REQUEST__BODY_STATS;
	req.stats = &s;
	s.origin = (char *)(origin ? origin : "");
	rc = rpcclient_call(c, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id || r->body_case != CONSENT__V1__RESPONSE__BODY_STATS ||
	    !r->stats) {
		rc = rpcclient_fault(c, r, req.id, "Stats", NULL);
		consent__v1__response__free_unpacked(r, NULL);
		return rc;
	}
	*out = r;
	return 0;
}
