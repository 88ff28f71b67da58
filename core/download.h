/*
 * download: a peer's snapshot (GET /v1/snapshot, DESIGN §9 "Bootstrap
 * from a peer") by libcurl, on a thread of its own, into a file
 * descriptor: a pipe that a builder reads as it comes (consentd
 * --bootstrap-from), or a file (consentctl dump --from). Nothing is held
 * in memory but curl's buffer: a reader that is slower than the network
 * holds the download back through the blocking writes.
 *
 * The peer is a base URL, http://HOST:PORT or https://HOST:PORT (a path
 * is kept: "/v1/snapshot" is appended to it). Only HTTP(S) is followed,
 * no redirects. With a token, the request carries "Authorization: Bearer
 * TOKEN" (the peer's --tokens: a principal with brands '*' and 'stats').
 * A connection that cannot be made in 10 s, or a transfer that moves no
 * byte for 60 s, fails.
 *
 * Threads: download_start and download_finish on one thread; the
 * transfer on the download's own. Errors: -errno with a message naming
 * what failed (curl's words, or the peer's HTTP status and its error).
 */
#ifndef CONSENTD_CORE_DOWNLOAD_H
#define CONSENTD_CORE_DOWNLOAD_H

#include <stddef.h>
#include <stdint.h>

struct download;

/* Checks base (http:// or https://, a host) and makes the snapshot URL
 * into url. 0, or -EINVAL with why in err. */
int download_snapshot_url(const char *base, char *url, size_t url_cap,
			  char *err, size_t err_cap);

/* Starts fetching url (token NULL: none) into fd, which the download owns
 * from here on and closes when the transfer ends, however it ends (so a
 * reader of a pipe sees the end). -ENOMEM, -EAGAIN (no thread), -EINVAL
 * (curl refused the options), with a message; fd is closed then too. */
int download_start(const char *url, const char *token, int fd,
		   struct download **out, char *err, size_t err_cap);

/* Waits for the transfer to end and frees d. 0 when the peer answered
 * 200 and the whole body was written; else -EIO (transfer: curl's
 * message), -EPROTO (an HTTP status other than 200, with the start of the
 * peer's answer), -EPIPE (the reader stopped taking it) or a write's
 * -errno. *bytes (may be NULL) gets the body bytes written. */
int download_finish(struct download *d, uint64_t *bytes, char *err,
		    size_t err_cap);

#endif
