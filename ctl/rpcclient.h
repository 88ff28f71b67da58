/*
 * rpcclient: consentctl's client of consentd's framed RPC (DESIGN §3.2),
 * shared by feed and pull: connect with bounded waits, a frame out (a
 * Request packed, or bytes the caller framed itself), a Response in, and
 * the calls both make (Auth, Stats with an origin, Apply). One thread per
 * struct rpcclient; the Response a call returns is the caller's, freed with
 * consent__v1__response__free_unpacked. Errors: -errno; what went wrong is
 * printed on stderr prefixed with the label given at connect ("feed",
 * "pull") unless a function says otherwise.
 */
#ifndef CONSENTD_CTL_RPCCLIENT_H
#define CONSENTD_CTL_RPCCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "proto/consent.pb-c.h"

#define RPCCLIENT_RESPONSE_MAX (16u << 20)

struct rpcclient {
	int fd;           /* -1 when not connected */
	uint64_t next_id; /* the next Request.id */
	const char *addr; /* HOST:PORT, for messages */
	const char *label;
};

/* Connects to HOST:PORT (server/addr's syntax); sends and receives time
 * out after timeout_ms. -EINVAL for a bad address (said on stderr). */
int rpcclient_connect(struct rpcclient *c, const char *hostport,
		      int timeout_ms, const char *label);
void rpcclient_close(struct rpcclient *c);

/* Sends len bytes whole; -ETIMEDOUT past the deadline. Silent. */
int rpcclient_send_all(struct rpcclient *c, const uint8_t *p, size_t len);
/* Frames and sends req as it is (its id too). Silent. */
int rpcclient_send(struct rpcclient *c, const Consent__V1__Request *req);
/* The next Response (-ECONNRESET if the server closed). Silent. */
int rpcclient_recv(struct rpcclient *c, Consent__V1__Response **out);
/* req gets the next id; one request, one reply. A failure is printed. */
int rpcclient_call(struct rpcclient *c, Consent__V1__Request *req,
		   Consent__V1__Response **out);

/* Prints an Error reply (code and message) or an unexpected body or id;
 * returns -EPROTO. *code (if not NULL) gets the Error's code, else 0. */
int rpcclient_fault(const struct rpcclient *c, const Consent__V1__Response *r,
		    uint64_t want_id, const char *want, uint32_t *code);

/* Auth with token; prints "LABEL: authenticated as NAME". */
int rpcclient_auth(struct rpcclient *c, const char *token);
/* Stats asking for origin's cursor ("" for none): *out is the caller's. */
int rpcclient_stats(struct rpcclient *c, const char *origin,
		    Consent__V1__Response **out);

#endif
