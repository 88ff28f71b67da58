/*
 * feed: a change stream to a server's Apply RPC (DESIGN §3.1, §3.2, §3.6):
 *   consentctl feed --rpc HOST:PORT [--token T] [--origin NAME | --no-origin]
 *                   [--batch K] [--window W] [--timeout-ms MS] [--allow-gap]
 *                   FILE|-
 *
 * With an origin (DESIGN §8; the default: "file:" and FILE's base name,
 * "file:-" for stdin) the feed asks Stats for the origin's stored cursor,
 * skips the stream's changes whose sequence in the file is at or below it,
 * and sends each batch with after_cursor = the cursor before it and
 * cursor = the decimal file sequence of its last change, every change's
 * sequence set to 0 (the server gives log positions). Running it again on
 * the same file applies nothing twice and says it resumed; a 409 (another
 * feeder of the same origin moved the cursor) stops it. A stored cursor
 * that is not a decimal sequence belongs to another kind of feeder and
 * stops it too. --no-origin (or --origin '') feeds the old way, for data
 * directories fed without origins (the two never mix in one directory):
 *
 * Frames are a 4-byte big-endian length and a consent.v1.Request; replies
 * a Response with the same id, in order. The feed authenticates first
 * when given a token (--token, else the CONSENTD_TOKEN environment
 * variable, which keeps it out of ps), asks Stats for the server's
 * applied_sequence and skips every change at or below it, so running the
 * same feed again resumes where the last one stopped. It refuses a stream
 * that starts after the server's applied sequence (changes in between
 * would be missing) unless --allow-gap, and a stream whose sequences do
 * not increase.
 *
 * Changes go in ApplyRequests of at most K changes (default 1000) and
 * FEED_BATCH_BYTES_MAX bytes (under the server's default 1 MiB frame
 * limit); up to W requests (default 4) are in flight, each acknowledged
 * only once the server made it durable. An Error reply is printed with its
 * code and message and stops the feed (exit 1), as does a reply whose
 * applied_sequence does not cover its batch. Totals go to stderr.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/stream.h"
#include "ctl/ctl.h"
#include "server/addr.h"
#include "proto/consent.pb-c.h"

#define FEED_BATCH_DEFAULT 1000
#define FEED_WINDOW_DEFAULT 4
#define FEED_WINDOW_MAX 64
#define FEED_TIMEOUT_MS_DEFAULT 30000
/* Under the server's default frame limit (1 MiB), with room for the
 * Request's own fields. */
#define FEED_BATCH_BYTES_MAX (768u << 10)
#define FEED_RESPONSE_MAX (16u << 20)
#define VARINT_MAX 10

struct feed_opts {
	const char *rpc;
	const char *token;
	const char *in;
	size_t batch;
	int window;
	int timeout_ms;
	bool allow_gap;
	const char *origin; /* NULL: none (--no-origin) */
	char origin_buf[300];
};

/* A batch on the wire, waiting for its ApplyResponse. */
struct feed_inflight {
	uint64_t id;
	uint64_t first_seq, last_seq;
	uint32_t n;
	uint64_t cursor; /* origin mode: the cursor it moves to */
};

struct feed {
	const struct feed_opts *o;
	int fd;
	uint64_t next_id;
	/* The ApplyRequest body being built: repeated field 1 (Consent). */
	uint8_t *body;
	size_t body_len, body_cap;
	uint32_t body_n;
	uint64_t body_first, body_last;
	struct feed_inflight q[FEED_WINDOW_MAX];
	int q_head, q_len;
	/* Totals. */
	uint64_t sent, applied, skipped_server, skipped_resume;
	uint64_t applied_sequence; /* the server's, last reported */
	uint64_t last_seq_seen;    /* in the stream, for the order check */
	/* Origin mode: the stored cursor at the start (0: none, a new
	 * origin), the cursor the last batch sent moves to (the next one's
	 * after_cursor), and the last one acknowledged. */
	bool resumed;
	uint64_t cursor_start, cursor_sent, cursor_acked;
};

static int feed_connect(const char *hostport, int timeout_ms)
{
	char h[ADDR_HOST_MAX], port[8], why[ADDR_HOST_MAX + 128];
	struct addrinfo hints = { 0 }, *res, *ai;
	uint16_t port_n;
	int fd = -1, rc;

	if (addr_split(hostport, h, &port_n, why, sizeof(why)) < 0) {
		fprintf(stderr, "feed: --rpc %s\n", why);
		return -EINVAL;
	}
	snprintf(port, sizeof(port), "%u", (unsigned)port_n);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(h, port, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "feed: %s: %s\n", hostport, gai_strerror(rc));
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
	return fd >= 0 ? fd : rc;
}

static int send_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);

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

static int recv_all(int fd, uint8_t *p, size_t len)
{
	while (len) {
		ssize_t r = recv(fd, p, len, 0);

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

static int send_request(int fd, const Consent__V1__Request *req)
{
	size_t n = consent__v1__request__get_packed_size(req);
	uint8_t *buf = malloc(4 + n);
	int rc;

	if (!buf)
		return -ENOMEM;
	buf[0] = (uint8_t)(n >> 24);
	buf[1] = (uint8_t)(n >> 16);
	buf[2] = (uint8_t)(n >> 8);
	buf[3] = (uint8_t)n;
	consent__v1__request__pack(req, buf + 4);
	rc = send_all(fd, buf, 4 + n);
	free(buf);
	return rc;
}

/* The next Response; the caller frees it with free_unpacked. */
static int recv_response(int fd, Consent__V1__Response **out)
{
	uint8_t hdr[4], *buf;
	uint32_t n;
	int rc = recv_all(fd, hdr, 4);

	if (rc < 0)
		return rc;
	n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
	    (uint32_t)hdr[2] << 8 | hdr[3];
	if (n > FEED_RESPONSE_MAX)
		return -EMSGSIZE;
	buf = malloc(n ? n : 1);
	if (!buf)
		return -ENOMEM;
	rc = recv_all(fd, buf, n);
	if (rc == 0) {
		*out = consent__v1__response__unpack(NULL, n, buf);
		if (!*out)
			rc = -EPROTO;
	}
	free(buf);
	return rc;
}

/* Prints an Error reply or an unexpected body; always -EPROTO. */
static int reply_fault(const Consent__V1__Response *r, uint64_t want_id,
		       const char *want)
{
	if (r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR && r->error)
		fprintf(stderr, "feed: server error %" PRIu32 ": %s\n",
			r->error->code,
			r->error->message ? r->error->message : "");
	else if (r->id != want_id)
		fprintf(stderr, "feed: reply id %" PRIu64 ", expected %" PRIu64 "\n",
			r->id, want_id);
	else
		fprintf(stderr, "feed: expected a %s reply, got body %d\n", want,
			(int)r->body_case);
	return -EPROTO;
}

/* One request, one reply (for Auth and Stats, before any pipelining). */
static int call(struct feed *f, Consent__V1__Request *req,
		Consent__V1__Response **out)
{
	int rc;

	req->id = f->next_id++;
	rc = send_request(f->fd, req);
	if (rc == 0)
		rc = recv_response(f->fd, out);
	if (rc < 0)
		fprintf(stderr, "feed: %s: %s\n", f->o->rpc, strerror(-rc));
	return rc;
}

static int feed_auth(struct feed *f)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__AuthRequest a = CONSENT__V1__AUTH_REQUEST__INIT;
	Consent__V1__Response *r = NULL;
	int rc;

	a.token = (char *)f->o->token;
	req.body_case = CONSENT__V1__REQUEST__BODY_AUTH;
	req.auth = &a;
	rc = call(f, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id || r->body_case != CONSENT__V1__RESPONSE__BODY_AUTH)
		rc = reply_fault(r, req.id, "Auth");
	else
		fprintf(stderr, "feed: authenticated as %s\n",
			r->auth && r->auth->principal ? r->auth->principal : "?");
	consent__v1__response__free_unpacked(r, NULL);
	return rc;
}

static int feed_stats(struct feed *f)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__StatsRequest s = CONSENT__V1__STATS_REQUEST__INIT;
	Consent__V1__Response *r = NULL;
	int rc;

	req.body_case = CONSENT__V1__REQUEST__BODY_STATS;
	req.stats = &s;
	s.origin = f->o->origin ? (char *)f->o->origin : (char *)"";
	rc = call(f, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id || r->body_case != CONSENT__V1__RESPONSE__BODY_STATS ||
	    !r->stats) {
		rc = reply_fault(r, req.id, "Stats");
	} else {
		f->applied_sequence = r->stats->applied_sequence;
		const char *cur = r->stats->origin_cursor;
		if (f->o->origin && cur && cur[0]) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(cur, &end, 10);
			if (errno || *end || cur[0] < '0' || cur[0] > '9' || v == 0) {
				fprintf(stderr, "feed: origin %s: the stored cursor "
					"\"%s\" is not a sequence of this file "
					"(another feeder uses this origin?)\n",
					f->o->origin, cur);
				rc = -EINVAL;
			} else {
				f->resumed = true;
				f->cursor_start = f->cursor_sent =
					f->cursor_acked = v;
			}
		}
	}
	consent__v1__response__free_unpacked(r, NULL);
	return rc;
}

/* Waits for the oldest in-flight batch's reply. */
static int feed_wait_one(struct feed *f)
{
	struct feed_inflight *b = &f->q[f->q_head];
	Consent__V1__Response *r = NULL;
	int rc = recv_response(f->fd, &r);

	if (rc < 0) {
		fprintf(stderr, "feed: %s: waiting for the reply to %" PRIu64
			"..%" PRIu64 ": %s\n", f->o->rpc, b->first_seq,
			b->last_seq, strerror(-rc));
		return rc;
	}
	if (r->id != b->id || r->body_case != CONSENT__V1__RESPONSE__BODY_APPLY ||
	    !r->apply) {
		rc = reply_fault(r, b->id, "Apply");
	} else if (f->o->origin) {
		/* The server's positions are its own: its count is the check. */
		if ((uint64_t)r->apply->applied + r->apply->skipped != b->n) {
			fprintf(stderr, "feed: the server processed %" PRIu32
				" of the %" PRIu32 " changes of %" PRIu64 "..%"
				PRIu64 "\n", r->apply->applied +
				r->apply->skipped, b->n, b->first_seq,
				b->last_seq);
			rc = -EPROTO;
		} else {
			f->applied += r->apply->applied;
			f->skipped_server += r->apply->skipped;
			f->applied_sequence = r->apply->applied_sequence;
			f->cursor_acked = b->cursor;
		}
	} else if (r->apply->applied_sequence < b->last_seq) {
		fprintf(stderr,
			"feed: the server acknowledged through %" PRIu64
			" but the batch ended at %" PRIu64 "\n",
			r->apply->applied_sequence, b->last_seq);
		rc = -EPROTO;
	} else {
		f->applied += r->apply->applied;
		f->skipped_server += r->apply->skipped;
		f->applied_sequence = r->apply->applied_sequence;
	}
	consent__v1__response__free_unpacked(r, NULL);
	f->q_head = (f->q_head + 1) % FEED_WINDOW_MAX;
	f->q_len--;
	return rc;
}

/* Sends the batch being built as one ApplyRequest. */
static int feed_flush(struct feed *f)
{
	uint8_t head[4 + 1 + VARINT_MAX + 1 + VARINT_MAX];
	size_t req_len, h = 4;
	int rc;

	if (f->body_n == 0)
		return 0;
	if (f->q_len == f->o->window) {
		rc = feed_wait_one(f);
		if (rc < 0)
			return rc;
	}
	if (f->o->origin) {
		/* ApplyRequest.origin = 2, after_cursor = 3, cursor = 4. */
		char after[24] = "", cur[24];
		size_t ol = strlen(f->o->origin);
		size_t need = 3 * (1 + VARINT_MAX) + ol + 2 * sizeof(cur);
		if (f->cursor_sent)
			snprintf(after, sizeof(after), "%" PRIu64, f->cursor_sent);
		snprintf(cur, sizeof(cur), "%" PRIu64, f->body_last);
		if (f->body_cap - f->body_len < need) {
			uint8_t *nb = realloc(f->body, f->body_len + need);
			if (!nb)
				return -ENOMEM;
			f->body = nb;
			f->body_cap = f->body_len + need;
		}
		const char *v[3] = { f->o->origin, after, cur };
		for (int k = 0; k < 3; k++) {
			size_t l = strlen(v[k]);
			if (l == 0)
				continue;
			f->body[f->body_len++] = (uint8_t)((k + 2) << 3 | 2);
			f->body_len += stream_varint_encode(l, f->body + f->body_len);
			memcpy(f->body + f->body_len, v[k], l);
			f->body_len += l;
		}
		f->cursor_sent = f->body_last;
	}
	/* Request{id = 1; apply = 3 {body}} by hand: byte for byte what
	 * protobuf-c packs, without copying the changes into structs. */
	uint64_t id = f->next_id++;
	uint8_t idv[VARINT_MAX], lenv[VARINT_MAX];
	size_t idn = stream_varint_encode(id, idv);
	size_t lenn = stream_varint_encode(f->body_len, lenv);

	req_len = 1 + idn + 1 + lenn + f->body_len;
	if (req_len > UINT32_MAX)
		return -EMSGSIZE;
	head[0] = (uint8_t)(req_len >> 24);
	head[1] = (uint8_t)(req_len >> 16);
	head[2] = (uint8_t)(req_len >> 8);
	head[3] = (uint8_t)req_len;
	head[h++] = 0x08; /* Request.id: field 1, varint */
	memcpy(head + h, idv, idn);
	h += idn;
	head[h++] = 0x1a; /* Request.apply: field 3, length-delimited */
	memcpy(head + h, lenv, lenn);
	h += lenn;
	rc = send_all(f->fd, head, h);
	if (rc == 0)
		rc = send_all(f->fd, f->body, f->body_len);
	if (rc < 0) {
		fprintf(stderr, "feed: %s: send: %s\n", f->o->rpc, strerror(-rc));
		return rc;
	}
	struct feed_inflight *b = &f->q[(f->q_head + f->q_len) % FEED_WINDOW_MAX];

	b->id = id;
	b->first_seq = f->body_first;
	b->last_seq = f->body_last;
	b->n = f->body_n;
	b->cursor = f->body_last;
	f->q_len++;
	f->sent += f->body_n;
	f->body_len = 0;
	f->body_n = 0;
	return 0;
}

/* Adds one change to the batch (packing it now: the reader's records are
 * only valid until its next call). */
static int feed_add(struct feed *f, const Consent__V1__Consent *c_in)
{
	Consent__V1__Consent copy = *c_in;
	const Consent__V1__Consent *c = &copy;

	if (f->o->origin)
		copy.sequence = 0; /* the server's position, not the file's */
	size_t size = consent__v1__consent__get_packed_size(c);
	size_t need = 1 + VARINT_MAX + size;
	int rc;

	if (f->body_n && (f->body_n >= f->o->batch ||
			  f->body_len + need > FEED_BATCH_BYTES_MAX)) {
		rc = feed_flush(f);
		if (rc < 0)
			return rc;
	}
	if (f->body_cap - f->body_len < need) {
		size_t cap = f->body_cap * 2 > f->body_len + need ?
				     f->body_cap * 2 : f->body_len + need;
		uint8_t *nb = realloc(f->body, cap);

		if (!nb)
			return -ENOMEM;
		f->body = nb;
		f->body_cap = cap;
	}
	f->body[f->body_len++] = 0x0a; /* ApplyRequest.changes: field 1 */
	f->body_len += stream_varint_encode(size, f->body + f->body_len);
	f->body_len += consent__v1__consent__pack(c, f->body + f->body_len);
	if (f->body_n == 0)
		f->body_first = c_in->sequence;
	f->body_last = c_in->sequence;
	f->body_n++;
	return 0;
}

static int feed_stream(struct feed *f, int in_fd)
{
	struct stream_reader *r = NULL;
	struct stream_item it;
	bool header = false, reader_failed = false;
	int rc;

	rc = stream_reader_create(in_fd, STREAM_FRAME_MAX_DEFAULT, false, &r);
	if (rc < 0)
		return rc;
	for (;;) {
		rc = stream_reader_next(r, &it);
		if (rc <= 0) {
			reader_failed = rc < 0;
			break;
		}
		if (it.kind == STREAM_ITEM_HEADER) {
			const Consent__V1__StreamHeader *h = it.header;

			if (!h->changes) {
				fprintf(stderr, "feed: %s: not a change stream "
					"(a snapshot? build it with consentd "
					"--snapshot)\n", f->o->in);
				rc = -EINVAL;
				break;
			}
			if (f->o->origin) {
				/* A new origin starts at the file's beginning;
				 * a known one must not skip part of it. */
				if (f->resumed && h->sequence > f->cursor_start &&
				    !f->o->allow_gap) {
					fprintf(stderr,
						"feed: origin %s is at %" PRIu64
						" but the stream follows %" PRIu64
						" (--allow-gap to feed anyway)\n",
						f->o->origin, f->cursor_start,
						h->sequence);
					rc = -EINVAL;
					break;
				}
			} else if (h->sequence > f->applied_sequence &&
				   !f->o->allow_gap) {
				fprintf(stderr,
					"feed: the server has applied through %" PRIu64
					" but the stream follows %" PRIu64
					": changes %" PRIu64 "..%" PRIu64
					" would be missing (--allow-gap to feed "
					"anyway)\n", f->applied_sequence,
					h->sequence, f->applied_sequence + 1,
					h->sequence);
				rc = -EINVAL;
				break;
			}
			f->last_seq_seen = h->sequence;
			header = true;
			continue;
		}
		for (size_t i = 0; i < it.n_consents && rc >= 0; i++) {
			const Consent__V1__Consent *c = it.consents[i];

			if (c->sequence <= f->last_seq_seen) {
				fprintf(stderr,
					"feed: %s: offset %" PRIu64 ": sequence %"
					PRIu64 " after %" PRIu64 "\n", f->o->in,
					it.offset, c->sequence, f->last_seq_seen);
				rc = -EINVAL;
				break;
			}
			f->last_seq_seen = c->sequence;
			if (c->sequence <= (f->o->origin ? f->cursor_start :
							   f->applied_sequence)) {
				f->skipped_resume++;
				continue;
			}
			rc = feed_add(f, c);
		}
		if (rc < 0)
			break;
	}
	if (rc < 0 && reader_failed) {
		const char *e = stream_reader_error(r);

		fprintf(stderr, "feed: %s: %s\n", f->o->in,
			e && e[0] ? e : strerror(-rc));
	} else if (rc == -ENOMEM) {
		fprintf(stderr, "feed: out of memory\n");
	}
	if (rc == 0 && !header) {
		fprintf(stderr, "feed: %s: empty stream\n", f->o->in);
		rc = -EINVAL;
	}
	stream_reader_destroy(r);
	if (rc < 0)
		return rc;
	rc = feed_flush(f);
	while (rc == 0 && f->q_len)
		rc = feed_wait_one(f);
	return rc;
}

int feed_query(const char *rpc, const char *token, const char *origin,
	       int timeout_ms, char *cursor, size_t cap, uint64_t *applied)
{
	struct feed_opts o = { .rpc = rpc, .token = token, .origin = origin };
	struct feed f = { .o = &o, .next_id = 1 };
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__StatsRequest s = CONSENT__V1__STATS_REQUEST__INIT;
	Consent__V1__Response *r = NULL;
	int rc;

	f.fd = feed_connect(rpc, timeout_ms);
	if (f.fd < 0)
		return f.fd;
	rc = token ? feed_auth(&f) : 0;
	if (rc == 0) {
		req.body_case = CONSENT__V1__REQUEST__BODY_STATS;
		req.stats = &s;
		s.origin = (char *)origin;
		rc = call(&f, &req, &r);
	}
	if (rc == 0) {
		if (r->id != req.id ||
		    r->body_case != CONSENT__V1__RESPONSE__BODY_STATS ||
		    !r->stats) {
			rc = reply_fault(r, req.id, "Stats");
		} else {
			*applied = r->stats->applied_sequence;
			snprintf(cursor, cap, "%s", r->stats->origin_cursor ?
				 r->stats->origin_cursor : "");
		}
		consent__v1__response__free_unpacked(r, NULL);
	}
	close(f.fd);
	return rc;
}

static int feed_usage(void)
{
	fprintf(stderr,
		"usage: consentctl feed --rpc HOST:PORT [--token T] "
		"[--origin NAME | --no-origin] [--batch K] [--window W] "
		"[--timeout-ms MS] [--allow-gap] FILE|-\n"
		"  --origin NAME  resume from NAME's cursor (default: file:BASENAME)\n"
		"  --no-origin    (or --origin '') the old way: the file's sequences\n"
		"                 are the server's, resume after its applied_sequence\n");
	return 2;
}

static int feed_parse_args(int argc, char **argv, struct feed_opts *o)
{
	bool set_origin = false;

	memset(o, 0, sizeof(*o));
	o->batch = FEED_BATCH_DEFAULT;
	o->window = FEED_WINDOW_DEFAULT;
	o->timeout_ms = FEED_TIMEOUT_MS_DEFAULT;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char *end = NULL;
		long n = 0;

		if (v && (strcmp(a, "--batch") == 0 || strcmp(a, "--window") == 0 ||
			  strcmp(a, "--timeout-ms") == 0)) {
			errno = 0;
			n = strtol(v, &end, 10);
			if (errno || *end || end == v || n <= 0) {
				fprintf(stderr, "feed: %s wants a positive number\n", a);
				return -EINVAL;
			}
		}
		if (strcmp(a, "--rpc") == 0 && v) {
			o->rpc = v;
		} else if (strcmp(a, "--token") == 0 && v) {
			o->token = v;
		} else if (strcmp(a, "--batch") == 0 && v) {
			if (n > 100000) {
				fprintf(stderr, "feed: --batch at most 100000\n");
				return -EINVAL;
			}
			o->batch = (size_t)n;
		} else if (strcmp(a, "--window") == 0 && v) {
			if (n > FEED_WINDOW_MAX) {
				fprintf(stderr, "feed: --window at most %d\n",
					FEED_WINDOW_MAX);
				return -EINVAL;
			}
			o->window = (int)n;
		} else if (strcmp(a, "--timeout-ms") == 0 && v) {
			if (n > 3600 * 1000) {
				fprintf(stderr, "feed: --timeout-ms at most 3600000\n");
				return -EINVAL;
			}
			o->timeout_ms = (int)n;
		} else if (strcmp(a, "--origin") == 0 && v) {
			if (strlen(v) >= sizeof(o->origin_buf) - 6) {
				fprintf(stderr, "feed: --origin too long\n");
				return -EINVAL;
			}
			snprintf(o->origin_buf, sizeof(o->origin_buf), "%s", v);
			set_origin = true;
		} else if (strcmp(a, "--no-origin") == 0) {
			o->origin_buf[0] = '\0';
			set_origin = true;
			continue;
		} else if (strcmp(a, "--allow-gap") == 0) {
			o->allow_gap = true;
			continue;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr, "feed: unknown option or missing value: %s\n", a);
			return -EINVAL;
		} else if (!o->in) {
			o->in = a;
			continue;
		} else {
			fprintf(stderr, "feed: one input only\n");
			return -EINVAL;
		}
		i++;
	}
	if (!o->token)
		o->token = getenv("CONSENTD_TOKEN");
	if (o->token && !o->token[0])
		o->token = NULL;
	if (!o->rpc || !o->in)
		return -EINVAL;
	if (!set_origin) {
		const char *base = strrchr(o->in, '/');

		base = base ? base + 1 : o->in;
		if (strlen(base) + 5 >= sizeof(o->origin_buf)) {
			fprintf(stderr, "feed: %s: name too long for an origin "
				"(give --origin)\n", o->in);
			return -EINVAL;
		}
		snprintf(o->origin_buf, sizeof(o->origin_buf), "file:%s", base);
	}
	o->origin = o->origin_buf[0] ? o->origin_buf : NULL;
	return 0;
}

int ctl_feed(int argc, char **argv)
{
	struct feed_opts o;
	struct feed f = { 0 };
	int in_fd, rc;

	if (feed_parse_args(argc, argv, &o) < 0)
		return feed_usage();
	f.o = &o;
	f.next_id = 1;
	in_fd = ctl_open_in(o.in);
	if (in_fd < 0) {
		fprintf(stderr, "feed: %s: %s\n", o.in, strerror(-in_fd));
		return 1;
	}
	f.fd = feed_connect(o.rpc, o.timeout_ms);
	if (f.fd < 0) {
		if (f.fd != -EINVAL) /* that one said why already */
			fprintf(stderr, "feed: %s: %s\n", o.rpc,
				strerror(-f.fd));
		rc = f.fd;
		goto out;
	}
	rc = o.token ? feed_auth(&f) : 0;
	if (rc == 0)
		rc = feed_stats(&f);
	if (rc == 0) {
		uint64_t start = f.applied_sequence;

		if (o.origin && f.resumed)
			fprintf(stderr, "feed: origin %s: resumed after cursor %"
				PRIu64 "\n", o.origin, f.cursor_start);
		else if (o.origin)
			fprintf(stderr, "feed: origin %s: new, from the start\n",
				o.origin);
		if (o.origin)
			start = f.cursor_start;
		rc = feed_stream(&f, in_fd);
		if (o.origin)
			fprintf(stderr, "feed: origin %s: cursor %" PRIu64 "\n",
				o.origin, f.cursor_acked);
		fprintf(stderr,
			"feed: %s: sent %" PRIu64 ", applied %" PRIu64
			", skipped %" PRIu64 " by the server and %" PRIu64
			" already applied (at or below %" PRIu64 "); "
			"applied_sequence %" PRIu64 "\n",
			rc == 0 ? "done" : "stopped", f.sent, f.applied,
			f.skipped_server, f.skipped_resume, start,
			f.applied_sequence);
	}
	close(f.fd);
out:
	if (in_fd != STDIN_FILENO)
		close(in_fd);
	free(f.body);
	return rc == 0 ? 0 : 1;
}
