/*
 * iysapi: consentctl pull's client of İYS's HTTP API (DESIGN §12;
 * reference: İYS's developer documentation as summarised in the README's
 * "Following İYS"): the OAuth2 password grant and its refresh, a request
 * rate never exceeded, and retries with jittered exponential backoff.
 * One thread per struct iysapi (it owns one libcurl handle, reused so the
 * connection is kept). Bodies returned are malloc'd and the caller's.
 * Errors: -errno with a message printed on stderr ("pull: ..."):
 * -EACCES İYS refused the credentials (a password grant answered 401/400,
 * or a fresh token refused at once), -EINTR the stop flag was raised,
 * -EAGAIN (only where a function says so) the outcome is unknown.
 */
#ifndef CONSENTD_CTL_IYSAPI_H
#define CONSENTD_CTL_IYSAPI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/iyscred.h"

struct iysapi_opts {
	const char *base_url;       /* http(s)://HOST[:PORT][/PREFIX] */
	uint32_t iys_code;          /* the path's {iysCode} */
	const char *ca_file;        /* NULL: the system's CAs */
	double rate_per_min;        /* requests of every kind, never more */
	int timeout_ms;             /* one HTTP exchange */
	int retry_min_ms;           /* the first backoff */
	int retry_max_ms;           /* backoff cap (Retry-After may exceed it) */
	const struct iyscred *cred; /* kept by the caller while in use */
	volatile sig_atomic_t *stop; /* raised: return -EINTR soon */
};

/* An answer that is neither retried nor a success: the status and İYS's
 * first error (code and message of {"errors":[...]}, empty if none). */
struct iysapi_reply {
	long status;
	char *body; /* NUL-terminated */
	size_t len;
	char code[32];
	char message[256];
};

struct iysapi;

int iysapi_create(const struct iysapi_opts *o, struct iysapi **out);
void iysapi_destroy(struct iysapi *a);
void iysapi_reply_fini(struct iysapi_reply *r);

/*
 * GET /sps/{iysCode}/brands/{brand}/consents/changes?source=&after=&limit=
 * (after omitted when empty). Retries transport failures, 401 (with a new
 * token), 429 and 5xx until an answer or the stop flag. Returns 0 with
 * *r (status 200 and the page; or another 4xx for the caller to report).
 */
int iysapi_changes(struct iysapi *a, uint32_t brand, const char *source,
		   const char *after, unsigned limit, struct iysapi_reply *r);

/* POST /sps/{iysCode}/brands/{brand}/consents/status with json, as
 * iysapi_changes (a query: retried freely). */
int iysapi_status(struct iysapi *a, uint32_t brand, const char *json,
		  struct iysapi_reply *r);

/* POST /sps/{iysCode}/brands/{brand}/consents with json (add one
 * consent). Retried only where İYS surely did not take it (no connection
 * made, 401, 429); a failure after the request may have reached İYS
 * (timeout, connection lost, 5xx) returns -EAGAIN: the caller must ask
 * İYS before sending it again. Else 0 with *r (200 or a 4xx). */
int iysapi_add(struct iysapi *a, uint32_t brand, const char *json,
	       struct iysapi_reply *r);

/* The requests made and the backoffs taken, for the progress log. */
void iysapi_counts(const struct iysapi *a, uint64_t *requests,
		   uint64_t *retries);

/* Sleeps ms, waking early (false) when the stop flag is raised. */
bool iysapi_sleep_ms(volatile sig_atomic_t *stop, int64_t ms);

#endif
