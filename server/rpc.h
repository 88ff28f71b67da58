/*
 * rpc: the protobuf RPC port (DESIGN §3.2). A TCP stream of frames, each a
 * 4-byte big-endian length N and N bytes of a consent.v1.Request; replies
 * are Response frames in request order, carrying the request's id.
 *
 * The decoder is hand-written for the hot path (no allocation: strings
 * point into the frame) and accepts exactly what protobuf-c 1.4 accepts,
 * with the same meaning: unknown fields skipped, the last value of a
 * scalar wins, repeated checks concatenate, a later oneof member replaces
 * an earlier one (each must still decode), a known field with the wrong
 * wire type is an error. Strings are taken whole; protobuf-c would cut them
 * at a NUL byte (such recipients never normalise anyway). tests/rpc_test.c
 * and fuzz/rpc_fuzz.c hold it to protobuf-c; the encoders produce the
 * bytes consent__v1__response__pack produces.
 *
 * Error replies (Response.error, then the connection stays open unless
 * noted):
 *   400 the frame does not decode (closed) / the Request has no body /
 *       Apply: a change is invalid (the message names it and its field;
 *       nothing of the request is applied)
 *   401 not authenticated (Check, Stats, Apply before Auth) / bad token
 *   403 authenticated but not permitted (Apply without 'apply', Reject
 *       without 'reject', or a change for a brand outside the
 *       principal's list: nothing applied)
 *   408 a frame stalled half-sent past the deadline (closed)
 *   413 a frame over the size limit (closed) / a reply over the output cap
 *   501 Apply where no writer was configured (the module alone)
 *   503 the server is at its connection cap (closed) / Apply: the change
 *       log failed (its message) or no generation is loaded yet
 * A Reject (§11, server/reject.h) is an Apply of one local RET: 400 for
 * a bad field (named), answered with an ApplyResponse like one.
 * A History (§10, server/evidence.h) is answered with a HistoryResponse
 * (the newest EVIDENCE_MAX_ENTRIES of the key's records, oldest first),
 * or 400 a bad field, 403 a brand outside the principal's list, 501
 * history off, 503 the store failed.
 * An Apply is answered once its changes are durable (server/writer.h);
 * until then the connection processes no further input, so replies stay
 * in request order.
 * All functions are pure or act on one conn; any worker thread.
 */
#ifndef CONSENTD_SERVER_RPC_H
#define CONSENTD_SERVER_RPC_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/check.h"
#include "server/conn.h"

#define RPC_FRAME_HEADER 4

enum rpc_error_code {
	RPC_E_BAD_REQUEST = 400,
	RPC_E_UNAUTHENTICATED = 401,
	RPC_E_FORBIDDEN = 403,
	RPC_E_TIMEOUT = 408,
	RPC_E_TOO_LARGE = 413,
	RPC_E_NOT_IMPLEMENTED = 501,
	RPC_E_UNAVAILABLE = 503,
};

/* Request.body, by its field number. */
enum rpc_kind {
	RPC_REQ_NONE = 0,
	RPC_REQ_CHECK = 2,
	RPC_REQ_APPLY = 3,
	RPC_REQ_AUTH = 4,
	RPC_REQ_STATS = 5,
	RPC_REQ_HISTORY = 6,
	RPC_REQ_REJECT = 7,
	RPC_REQ_END, /* one past the last body field */
};

/* rpc_decode: the frame decodes, but carries two body fields (the oneof
 * set twice); first_kind and kind name them. Answered 400. */
#define RPC_DECODE_TWO_BODIES (-EEXIST)

struct rpc_request {
	uint64_t id;
	int kind; /* enum rpc_kind */
	/* CHECK: the CheckRequest's bytes, its check count and defaults. */
	const uint8_t *check;
	size_t check_len;
	size_t n_checks;
	uint32_t brand_code;
	int channel;
	int rtype;
	int purpose;
	/* AUTH: the token's bytes. */
	const uint8_t *token;
	size_t token_len;
	/* STATS: the origin asked about (§8), "" when none. */
	const uint8_t *origin;
	size_t origin_len;
	/* The body message's bytes (any kind), validated. */
	const uint8_t *body;
	size_t body_len;
	int first_kind; /* RPC_DECODE_TWO_BODIES: the earlier body field */
	/* rpc_decode_checks: the checks are in its array, defaults applied */
	bool checks_decoded;
};

/* Decodes one Request (the frame's body). 0; -EPROTO when protobuf-c
 * would refuse it; RPC_DECODE_TWO_BODIES when it decodes but sets the
 * body oneof more than once (protobuf-c would keep the last, the spec
 * would merge them: neither is what the client meant to be answered). */
int rpc_decode(const uint8_t *buf, size_t len, struct rpc_request *req);

/* rpc_decode, and a CheckRequest of at most cap checks also lands in
 * checks[0..n_checks), with the request's defaults applied, exactly as
 * rpc_check_next would give them (req->checks_decoded true). checks[] is
 * scratch otherwise, whatever the result. */
int rpc_decode_checks(const uint8_t *buf, size_t len, struct rpc_request *req,
		      struct check_input *checks, size_t cap);

/* Walks the checks of a decoded CHECK request in order, with the request's
 * defaults applied to fields a check leaves at zero. */
struct rpc_check_iter {
	const uint8_t *p;
	const uint8_t *end;
};
void rpc_check_iter_init(struct rpc_check_iter *it,
			 const struct rpc_request *req);
bool rpc_check_next(struct rpc_check_iter *it, const struct rpc_request *req,
		    struct check_input *out);

/* Encoders append one whole Response frame (length prefix included) to b.
 * 0, or -ENOMEM. */
int rpc_encode_check(struct obuf *b, uint64_t id, const struct verdict *v,
		     size_t n, uint64_t applied_sequence, int64_t data_as_of);
int rpc_encode_error(struct obuf *b, uint64_t id, uint32_t code,
		     const char *message);
int rpc_encode_auth(struct obuf *b, uint64_t id, const char *principal);
int rpc_encode_apply(struct obuf *b, uint64_t id, uint64_t applied_sequence,
		     uint32_t applied, uint32_t skipped);
/* The writer's reply to an Apply: an ApplyResponse, or its Error. */
struct writer_reply;
int rpc_reply_apply(struct obuf *b, const struct writer_reply *r);
struct rpc_stats {
	uint64_t records;
	uint64_t applied_sequence;
	int64_t data_as_of;
	uint64_t generation;
	uint64_t checks_total;
	const char *origin_cursor; /* §8: the asked origin's ("" or NULL: none) */
	/* §10: the evidence chain's head (writer_chain), fields 6 and 7;
	 * chain false: history off or empty, both left out. */
	bool chain;
	uint64_t chain_sequence;
	uint8_t chain_hash[32];
};
int rpc_encode_stats(struct obuf *b, uint64_t id, const struct rpc_stats *s);

/* The bare messages, without a Response around them or a frame, for a
 * protocol that frames messages itself (server/grpc.c): the same bytes
 * the Response frames above carry in their body field. A CheckResponse is
 * rpc_check_verdicts (any number of times, in order) then rpc_check_tail.
 * 0, or -ENOMEM. */
/* as_of: whether any of v[0..n) was answered as of a point (check_batch's
 * count > 0); false encodes them as live verdicts, with no test for the
 * §10 fields. */
int rpc_check_verdicts(struct obuf *b, const struct verdict *v, size_t n,
		       bool as_of);
int rpc_check_tail(struct obuf *b, uint64_t applied_sequence,
		   int64_t data_as_of);
int rpc_apply_message(struct obuf *b, uint64_t applied_sequence,
		      uint32_t applied, uint32_t skipped);
int rpc_stats_message(struct obuf *b, const struct rpc_stats *s);

/* What a Stats request (req: its origin) answers to principal who (NULL:
 * trusted) in this turn: the 'stats' right decides what is fleet-wide.
 * s->origin_cursor points into cursor (cursor_cap bytes). */
struct principal;
void rpc_stats_gather(const struct conn_ctx *x, const struct principal *who,
		      const struct rpc_request *req, struct rpc_stats *s,
		      char *cursor, size_t cursor_cap);

/* Bytes of a Verdict message's encoding (without its tag and length). */
size_t rpc_verdict_size(const struct verdict *v);

/* The whole refusal sent at the connection cap (Error 503, id 0). */
extern const uint8_t rpc_refusal[];
extern const size_t rpc_refusal_len;

/* The port, for conn and loop (server/conn.h): process handles the
 * complete frames of a receive (replies appended to c->out, in request
 * order); reply_fatal answers a frame stalled past the deadline (408) or
 * input over the cap (413), then closes; reply_apply sends the writer's
 * reply to an Apply. */
extern const struct conn_proto rpc_proto;

#endif
