/*
 * grpc: unary gRPC calls over an nghttp2 server session (server/grpc.h).
 *
 * Bytes: conn.c hands process() what was received; only the client's
 * 24-byte preface and whole HTTP/2 frames (9-byte header + length) go to
 * nghttp2_session_mem_recv, the unfinished rest stays in conn's carry
 * buffer (its cap and stall deadline as for any port). What the session
 * wants to send is drained with nghttp2_session_mem_send into c->out after
 * every run of frames, so it leaves with the loop's one send per turn.
 *
 * A call: on_begin_headers makes its stream record; the request headers
 * give the method (from :path), the principal (authorization) and the
 * content type; DATA gives the one length-prefixed message (gRPC's
 * 1-byte compressed flag + 4-byte big-endian length), held in a buffer
 * with room in front for the Request field tag the RPC decoder reads. A
 * call that is already refused (bad token, unknown method, oversize) is
 * answered at once and the rest of its DATA is dropped; the others are
 * answered when their END_STREAM arrives. A reply is HEADERS (:status
 * 200), one DATA message and trailers (grpc-status 0); an error is a
 * trailers-only response (HEADERS with grpc-status, grpc-message and
 * END_STREAM).
 */
#include "server/grpc.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokens.h"
#include "index/origins.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/evidence.h"
#include "server/metrics.h"
#include "server/reject.h"
#include "server/rpc.h"
#include "server/writer.h"

#define GRPC_PREFACE_LEN 24     /* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
#define GRPC_FRAME_HDR 9
#define GRPC_MAX_FRAME 16384    /* SETTINGS_MAX_FRAME_SIZE: the default */
#define GRPC_RUN_MAX (64u << 10) /* bytes per mem_recv: pausing between */
#define GRPC_MSG_HDR 5          /* compressed flag + 4-byte length */
/* Room before a message for the Request field around it: a tag byte and
 * a length varint of up to 5 bytes, less the 5-byte gRPC prefix that the
 * message already has in front of it. */
#define GRPC_HEADROOM 8
#define GRPC_TOKEN_CACHE 256    /* a connection's last good token */
#define GRPC_MSG_MAX 1024       /* grpc-message, before encoding */

enum grpc_method {
	GRPC_M_UNKNOWN = 0,
	GRPC_M_CHECK,
	GRPC_M_APPLY,
	GRPC_M_STATS,
	GRPC_M_HISTORY,
	GRPC_M_REJECT,
};

/* Method name -> the Request body field its message is (server/rpc.h). */
static const struct {
	const char *name;
	int kind;
} grpc_methods[] = {
	[GRPC_M_CHECK] = { "Check", RPC_REQ_CHECK },
	[GRPC_M_APPLY] = { "Apply", RPC_REQ_APPLY },
	[GRPC_M_STATS] = { "Stats", RPC_REQ_STATS },
	[GRPC_M_HISTORY] = { "History", RPC_REQ_HISTORY },
	[GRPC_M_REJECT] = { "Reject", RPC_REQ_REJECT },
};
#define GRPC_N_METHODS (sizeof(grpc_methods) / sizeof(grpc_methods[0]))

/* DESIGN's service name and the proto's (see grpc.h). */
static const char *const grpc_services[] = {
	"/consent.v1.Consent/",
	"/consent.v1.ConsentService/",
};

enum grpc_auth {
	GRPC_AUTH_NONE = 0, /* no authorization header (yet) */
	GRPC_AUTH_OK,
	GRPC_AUTH_BAD,      /* a header that is not a known Bearer token */
};

struct grpc_stream {
	int32_t id;
	uint8_t method;        /* enum grpc_method */
	uint8_t auth;          /* enum grpc_auth */
	bool post;             /* :method POST */
	bool grpc_type;        /* content-type application/grpc[+...|;...] */
	bool end_remote;       /* the client's END_STREAM arrived */
	bool answered;         /* a response was submitted */
	bool queued;           /* in the connection's ready list */
	bool rst_after;        /* answered early: RST_STREAM once it is sent */
	const struct principal *principal;
	struct grpc_stream *next; /* ready list */
	/* Every record of the connection: nghttp2_session_del frees its
	 * streams without on_stream_close, so grpc_fini frees them. */
	struct grpc_stream *all_prev, *all_next;

	/* The message: its 5-byte prefix first (pre), then msg, which has
	 * GRPC_HEADROOM bytes before the prefix's copy and the body. */
	uint8_t pre[GRPC_MSG_HDR];
	uint32_t pre_len;
	uint32_t msg_len;      /* from the prefix */
	uint32_t got;          /* body bytes in msg */
	uint8_t *msg;          /* GRPC_HEADROOM + GRPC_MSG_HDR + msg_len */
	uint32_t n_msgs;       /* messages begun */

	struct obuf out;       /* the reply message, prefix included */
};

/* A connection's state (its conn_proto_state holds the pointer). */
struct grpc_conn {
	nghttp2_session *s;
	struct conn_ctx *x;    /* of the current call into the session */
	struct conn *c;
	uint32_t preface_left; /* client preface bytes not yet fed */
	int32_t max_headers_id; /* the highest client stream a HEADERS named */
	int32_t apply_stream;  /* the stream whose Apply is with the writer */
	bool enomem;           /* a callback ran out of memory */
	uint32_t n_open;       /* streams with a record */
	uint32_t n_waiting;    /* ... not answered yet (calls in flight) */
	size_t in_bytes;       /* message bytes buffered over all streams */
	struct grpc_stream *ready_head, *ready_tail; /* behind an Apply */
	struct grpc_stream *all;   /* every stream record */
	/* The last token that authenticated on this connection: calls carry
	 * it each time, and hashing it each time would cost more than the
	 * check. Compared in constant time (a proxy may multiplex clients). */
	char token[GRPC_TOKEN_CACHE];
	size_t token_len;
	const struct principal *token_principal;
};

struct grpc_conn_state {
	struct grpc_conn *gc;
};
_Static_assert(sizeof(struct grpc_conn_state) <= CONN_PROTO_STATE_BYTES,
	       "fits the conn's protocol state");

/* Per worker: the callbacks and options every session shares. */
struct grpc_worker {
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
};

static struct grpc_conn **grpc_slot(struct conn *c)
{
	return &((struct grpc_conn_state *)c->ps.bytes)->gc;
}

enum grpc_status grpc_status_of(uint32_t code)
{
	switch (code) {
	case 0:
		return GRPC_OK;
	case 400:
		return GRPC_INVALID_ARGUMENT;
	case 401:
		return GRPC_UNAUTHENTICATED;
	case 403:
		return GRPC_PERMISSION_DENIED;
	case 409:
		return GRPC_ABORTED;
	case 413:
		return GRPC_RESOURCE_EXHAUSTED;
	case 501:
		return GRPC_UNIMPLEMENTED;
	case 503:
		return GRPC_UNAVAILABLE;
	default:
		return GRPC_UNKNOWN;
	}
}

/* ---- responses --------------------------------------------------------- */

#define GRPC_NV(n, v)                                                      \
	{ (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1,    \
	  NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE }

static const nghttp2_nv grpc_trailers_ok[] = { GRPC_NV("grpc-status", "0") };

/* grpc-message is percent-encoded: every byte outside 0x20-0x7e, and '%'
 * (gRPC PROTOCOL-HTTP2). */
static size_t grpc_pct(char *out, size_t cap, const char *msg)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)msg;
	     *p != '\0' && n + 3 < cap; p++) {
		if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
			out[n++] = (char)*p;
		} else {
			out[n++] = '%';
			out[n++] = hex[*p >> 4];
			out[n++] = hex[*p & 15];
		}
	}
	out[n] = '\0';
	return n;
}

static void grpc_answered(struct grpc_conn *gc, struct grpc_stream *st)
{
	st->answered = true;
	gc->n_waiting--;
	gc->x->n_requests++;
	gc->c->stat_requests++;
	/* The rest of a message not read yet is not wanted: ask the client
	 * to stop sending it once the response is out (RFC 9113 §8.1). */
	if (!st->end_remote)
		st->rst_after = true;
	if (st->msg != NULL) {
		gc->in_bytes -= st->msg_len;
		free(st->msg);
		st->msg = NULL;
	}
}

/* A trailers-only response: the call fails with status and message. */
static int grpc_fail_call(struct grpc_conn *gc, struct grpc_stream *st,
			  enum grpc_status status, const char *message)
{
	char code[12], enc[GRPC_MSG_MAX * 3 + 1];
	size_t el = grpc_pct(enc, sizeof(enc), message ? message : "");
	int cl = snprintf(code, sizeof(code), "%d", (int)status);
	nghttp2_nv nv[] = {
		GRPC_NV(":status", "200"),
		GRPC_NV("content-type", "application/grpc"),
		{ (uint8_t *)"grpc-status", (uint8_t *)code, 11, (size_t)cl,
		  NGHTTP2_NV_FLAG_NO_COPY_NAME },
		{ (uint8_t *)"grpc-message", (uint8_t *)enc, 12, el,
		  NGHTTP2_NV_FLAG_NO_COPY_NAME },
	};
	int rc;

	grpc_answered(gc, st);
	rc = nghttp2_submit_response(gc->s, st->id, nv,
				     el ? 4 : 3, NULL);
	if (rc == NGHTTP2_ERR_NOMEM)
		return -ENOMEM;
	return 0; /* a stream already gone: nothing to answer */
}

/* The reply message is in st->out: HEADERS, the DATA it reads, trailers. */
static ssize_t grpc_read_reply(nghttp2_session *s, int32_t id, uint8_t *buf,
			       size_t length, uint32_t *flags,
			       nghttp2_data_source *src, void *user)
{
	struct grpc_stream *st = src->ptr;
	size_t n = st->out.len - st->out.off;

	(void)user;
	if (n > length)
		n = length;
	memcpy(buf, st->out.data + st->out.off, n);
	st->out.off += n;
	if (st->out.off == st->out.len) {
		*flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
		if (nghttp2_submit_trailer(s, id, grpc_trailers_ok, 1) != 0)
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	return (ssize_t)n;
}

static int grpc_reply(struct grpc_conn *gc, struct grpc_stream *st)
{
	static const nghttp2_nv hdr[] = {
		GRPC_NV(":status", "200"),
		GRPC_NV("content-type", "application/grpc"),
	};
	nghttp2_data_provider prd = { .source.ptr = st,
				      .read_callback = grpc_read_reply };
	size_t body = st->out.len - GRPC_MSG_HDR;
	uint8_t *p = (uint8_t *)st->out.data;
	int rc;

	p[0] = 0; /* not compressed */
	p[1] = (uint8_t)(body >> 24);
	p[2] = (uint8_t)(body >> 16);
	p[3] = (uint8_t)(body >> 8);
	p[4] = (uint8_t)body;
	grpc_answered(gc, st);
	rc = nghttp2_submit_response(gc->s, st->id, hdr, 2, &prd);
	return rc == NGHTTP2_ERR_NOMEM ? -ENOMEM : 0;
}

/* Opens st's reply message: the prefix's room. */
static int grpc_reply_begin(struct grpc_stream *st)
{
	if (st->out.data == NULL && obuf_init(&st->out, 256) < 0)
		return -ENOMEM;
	st->out.len = st->out.off = 0;
	if (obuf_reserve(&st->out, GRPC_MSG_HDR) == NULL)
		return -ENOMEM;
	st->out.len = GRPC_MSG_HDR;
	return 0;
}

/* ---- calls ------------------------------------------------------------- */

static uint64_t grpc_applied(const struct conn_ctx *x)
{
	return x->ix ? x->info.watermark : 0;
}

static int64_t grpc_as_of(const struct conn_ctx *x)
{
	return x->ix ? x->info.data_as_of : 0;
}

/* The check path of every port (index/check.c), in batches of the
 * worker's scratch; a reply past the output cap is refused whole, as the
 * RPC's 413. */
static int grpc_check(struct grpc_conn *gc, struct grpc_stream *st,
		      const struct rpc_request *req)
{
	struct conn_ctx *x = gc->x;
	struct check_env env = {
		.index = x->ix,
		.policy = &x->cfg->policy,
		.principal = st->principal,
		.stale = x->stale,
		.history = x->history,
		.evidence = x->evidence,
	};
	struct rpc_check_iter it;
	size_t left = req->n_checks;
	char msg[128];

	if (grpc_reply_begin(st) < 0)
		return -ENOMEM;
	rpc_check_iter_init(&it, req);
	while (left > 0) {
		uint32_t k = left < CONN_BATCH_MAX ? (uint32_t)left
						   : CONN_BATCH_MAX;

		/* rpc_decode_checks put a request that fits in x->in. */
		if (!req->checks_decoded)
			for (uint32_t j = 0; j < k; j++)
				rpc_check_next(&it, req, &x->in[j]);
		size_t as_of = check_batch(&env, x->in, k, x->out);
		for (uint32_t j = 0; j < k; j++)
			metrics_inc(&x->m->checks[METRICS_GRPC]
						 [x->out[j].reason %
						  REASON_COUNT]);
		if (rpc_check_verdicts(&st->out, x->out, k, as_of > 0) < 0)
			return -ENOMEM;
		left -= k;
		if (st->out.len > x->cfg->conn_out_cap_bytes) {
			metrics_inc(&x->m->replies_too_large);
			snprintf(msg, sizeof(msg),
				 "reply to %zu checks passes the output cap "
				 "of %u bytes: send fewer per call",
				 req->n_checks, x->cfg->conn_out_cap_bytes);
			return grpc_fail_call(gc, st, GRPC_RESOURCE_EXHAUSTED,
					      msg);
		}
	}
	if (rpc_check_tail(&st->out, grpc_applied(x), grpc_as_of(x)) < 0)
		return -ENOMEM;
	return grpc_reply(gc, st);
}

static int grpc_stats(struct grpc_conn *gc, struct grpc_stream *st,
		      const struct rpc_request *req)
{
	char cursor[ORIGINS_CURSOR_MAX + 1];
	struct rpc_stats s;

	rpc_stats_gather(gc->x, st->principal, req, &s, cursor,
			 sizeof(cursor));
	if (grpc_reply_begin(st) < 0 || rpc_stats_message(&st->out, &s) < 0)
		return -ENOMEM;
	return grpc_reply(gc, st);
}

/* A history query (§10, server/evidence.h): the HistoryResponse, or the
 * status of its refusal (INVALID_ARGUMENT, PERMISSION_DENIED,
 * UNIMPLEMENTED with history off, UNAVAILABLE). */
static int grpc_history(struct grpc_conn *gc, struct grpc_stream *st,
			const struct rpc_request *req)
{
	struct evidence_answer a;
	char msg[400];
	int code = evidence_query_message(gc->x->history, st->principal,
					  req->body, req->body_len, &a, msg,
					  sizeof(msg));
	if (code != 0)
		return grpc_fail_call(gc, st, grpc_status_of((uint32_t)code),
				      msg);
	int rc = grpc_reply_begin(st) < 0 ? -ENOMEM :
		 evidence_encode(&st->out, &a, grpc_applied(gc->x));
	evidence_answer_fini(&a);
	if (rc < 0)
		return rc;
	return grpc_reply(gc, st);
}

/* The writer's reply (now, or later through reply_apply). */
static int grpc_apply_reply(struct grpc_conn *gc, struct grpc_stream *st,
			    const struct writer_reply *r)
{
	if (r->code != 0)
		return grpc_fail_call(gc, st, grpc_status_of(r->code),
				      r->message);
	if (grpc_reply_begin(st) < 0 ||
	    rpc_apply_message(&st->out, r->applied_sequence, r->applied,
			      r->skipped) < 0)
		return -ENOMEM;
	return grpc_reply(gc, st);
}

/* Hands the Apply to the single writer (server/writer.h). Its reply comes
 * back through reply_apply; until then the connection reads no more
 * input and calls completing behind it wait in the ready list. */
static int grpc_apply(struct grpc_conn *gc, struct grpc_stream *st,
		      const struct rpc_request *req)
{
	struct conn_ctx *x = gc->x;
	struct writer_reply now;
	Consent__V1__ApplyRequest *a;
	int rc;

	if (st->principal != NULL && !st->principal->may_apply)
		return grpc_fail_call(gc, st, GRPC_PERMISSION_DENIED,
				      "this principal may not apply changes");
	if (x->cfg->writer == NULL) /* the module alone: tests, fuzzers */
		return grpc_fail_call(gc, st, GRPC_UNIMPLEMENTED,
				      "Apply is not available here (no change "
				      "log)");
	/* rpc_decode checked its wire shape; the writer takes protobuf-c's
	 * message as it is. NULL here is only memory. */
	a = consent__v1__apply_request__unpack(NULL, req->body_len, req->body);
	if (a == NULL)
		return grpc_fail_call(gc, st, GRPC_UNAVAILABLE,
				      "out of memory decoding the Apply");
	rc = writer_submit(x->cfg->writer, x->worker, gc->c->tag,
			   (uint64_t)st->id, st->principal, a, &now);
	if (rc < 0)
		return rc;
	if (rc == 0) /* refused at once: a bad change, or the log failed */
		return grpc_apply_reply(gc, st, &now);
	gc->apply_stream = st->id;
	gc->c->apply_wait = true;
	gc->c->paused = true;
	return 0;
}

/* Reject (DESIGN §11): a local rejection through server/reject.h, the
 * door every port shares, answered with an ApplyResponse once the RET is
 * durable and served, through the writer like grpc_apply. */
static int grpc_reject(struct grpc_conn *gc, struct grpc_stream *st,
		       const struct rpc_request *req)
{
	struct conn_ctx *x = gc->x;
	struct writer_reply now;
	int rc;

	if (!principal_may_reject(st->principal))
		return grpc_fail_call(gc, st, GRPC_PERMISSION_DENIED,
				      "this principal may not reject (no "
				      "'reject' right)");
	if (x->cfg->writer == NULL) /* the module alone: tests, fuzzers */
		return grpc_fail_call(gc, st, GRPC_UNIMPLEMENTED,
				      "Reject is not available here (no "
				      "change log)");
	rc = reject_submit_message(x->cfg->writer, x->worker, gc->c->tag,
				   (uint64_t)st->id, st->principal, req->body,
				   req->body_len, &now);
	if (rc == -ENOMEM)
		return grpc_fail_call(gc, st, GRPC_UNAVAILABLE,
				      "out of memory decoding the Reject");
	if (rc < 0)
		return rc;
	if (rc == 0) /* refused at once: a bad field, or the log failed */
		return grpc_apply_reply(gc, st, &now);
	gc->apply_stream = st->id;
	gc->c->apply_wait = true;
	gc->c->paused = true;
	return 0;
}

/* A call whose message is complete: decode it as the RPC does, answer. */
static int grpc_call(struct grpc_conn *gc, struct grpc_stream *st)
{
	struct conn_ctx *x = gc->x;
	struct rpc_request req;
	uint8_t *body, *p;
	size_t hl;
	int kind = grpc_methods[st->method].kind, drc;

	if (st->n_msgs != 1 || st->got != st->msg_len ||
	    st->pre_len != GRPC_MSG_HDR) {
		metrics_inc(&x->m->frames_undecodable);
		return grpc_fail_call(gc, st, GRPC_INVALID_ARGUMENT,
				      st->n_msgs == 0
					      ? "a unary call carries one "
						"message: none arrived"
					      : "a unary call carries one "
						"whole message");
	}
	/* Request{<kind>: message}: the tag and length go right before the
	 * message, in the headroom and the prefix's copy. */
	body = st->msg + GRPC_HEADROOM + GRPC_MSG_HDR;
	{
		uint8_t hdr[6], *q = hdr;
		uint32_t v = st->msg_len;

		*q++ = (uint8_t)(kind << 3 | 2);
		while (v >= 0x80) {
			*q++ = (uint8_t)(v | 0x80);
			v >>= 7;
		}
		*q++ = (uint8_t)v;
		hl = (size_t)(q - hdr);
		p = body - hl;
		memcpy(p, hdr, hl);
	}
	drc = rpc_decode_checks(p, hl + st->msg_len, &req, x->in,
				CONN_BATCH_MAX);
	if (drc < 0 || req.kind != kind) {
		char msg[96];

		metrics_inc(&x->m->frames_undecodable);
		snprintf(msg, sizeof(msg), "message does not decode as a "
			 "consent.v1.%sRequest", grpc_methods[st->method].name);
		return grpc_fail_call(gc, st, GRPC_INVALID_ARGUMENT, msg);
	}
	switch (st->method) {
	case GRPC_M_CHECK:
		return grpc_check(gc, st, &req);
	case GRPC_M_STATS:
		return grpc_stats(gc, st, &req);
	case GRPC_M_APPLY:
		return grpc_apply(gc, st, &req);
	case GRPC_M_REJECT:
		return grpc_reject(gc, st, &req);
	case GRPC_M_HISTORY:
		return grpc_history(gc, st, &req);
	default:
		return grpc_fail_call(gc, st, GRPC_INTERNAL, "no handler");
	}
}

/* A call ready to be answered: now, or after the Apply ahead of it. */
static int grpc_ready(struct grpc_conn *gc, struct grpc_stream *st)
{
	if (st->answered || st->queued)
		return 0;
	if (gc->c->apply_wait) {
		st->queued = true;
		st->next = NULL;
		if (gc->ready_tail)
			gc->ready_tail->next = st;
		else
			gc->ready_head = st;
		gc->ready_tail = st;
		return 0;
	}
	return grpc_call(gc, st);
}

static void grpc_unqueue(struct grpc_conn *gc, struct grpc_stream *st)
{
	struct grpc_stream **pp = &gc->ready_head, *prev = NULL;

	while (*pp != NULL && *pp != st) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp == NULL)
		return;
	*pp = st->next;
	if (gc->ready_tail == st)
		gc->ready_tail = prev;
	st->queued = false;
}

/* The calls that waited behind an Apply, in arrival order, until another
 * Apply holds the connection again. */
static int grpc_drain_ready(struct grpc_conn *gc)
{
	int rc = 0;

	while (rc == 0 && gc->ready_head != NULL && !gc->c->apply_wait) {
		struct grpc_stream *st = gc->ready_head;

		gc->ready_head = st->next;
		if (gc->ready_head == NULL)
			gc->ready_tail = NULL;
		st->queued = false;
		rc = grpc_call(gc, st);
	}
	return rc;
}

/* What the headers allow: answered now when they already refuse the call.
 * Before any message byte, so a refused call's message is never held. */
static int grpc_headers_done(struct grpc_conn *gc, struct grpc_stream *st)
{
	struct conn_ctx *x = gc->x;

	if (!st->post || !st->grpc_type) {
		static const nghttp2_nv nv[] = { GRPC_NV(":status", "415") };

		/* Not a gRPC request (gRPC PROTOCOL-HTTP2: 415). */
		grpc_answered(gc, st);
		return nghttp2_submit_response(gc->s, st->id, nv, 1, NULL) ==
				       NGHTTP2_ERR_NOMEM
			       ? -ENOMEM
			       : 0;
	}
	if (st->method == GRPC_M_UNKNOWN)
		return grpc_fail_call(gc, st, GRPC_UNIMPLEMENTED,
				      "unknown method: the service "
				      "consent.v1.ConsentService has Check, "
				      "Apply, Stats, History and Reject");
	if (x->cfg->tokens != NULL && st->auth != GRPC_AUTH_OK) {
		if (st->auth == GRPC_AUTH_BAD) {
			metrics_inc(&x->m->auth_failures);
			return grpc_fail_call(gc, st, GRPC_UNAUTHENTICATED,
					      "bad token");
		}
		metrics_inc(&x->m->unauthenticated_refused);
		return grpc_fail_call(gc, st, GRPC_UNAUTHENTICATED,
				      "authenticate: metadata authorization: "
				      "Bearer TOKEN");
	}
	return 0;
}

/* ---- nghttp2 callbacks ------------------------------------------------- */

static void grpc_stream_free(struct grpc_conn *gc, struct grpc_stream *st)
{
	if (st->all_prev != NULL)
		st->all_prev->all_next = st->all_next;
	else
		gc->all = st->all_next;
	if (st->all_next != NULL)
		st->all_next->all_prev = st->all_prev;
	if (st->msg != NULL) {
		gc->in_bytes -= st->msg_len;
		free(st->msg);
	}
	if (!st->answered)
		gc->n_waiting--;
	obuf_fini(&st->out);
	free(st);
	gc->n_open--;
}

static int grpc_cb_result(struct grpc_conn *gc, int rc)
{
	if (rc == -ENOMEM) {
		gc->enomem = true;
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	return 0;
}

static int grpc_on_begin_headers(nghttp2_session *s, const nghttp2_frame *f,
				 void *user)
{
	struct grpc_conn *gc = user;
	struct grpc_stream *st;

	if (f->hd.type != NGHTTP2_HEADERS ||
	    f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return grpc_cb_result(gc, -ENOMEM);
	st->id = f->hd.stream_id;
	if (nghttp2_session_set_stream_user_data(s, st->id, st) != 0) {
		free(st);
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	st->all_next = gc->all;
	if (gc->all != NULL)
		gc->all->all_prev = st;
	gc->all = st;
	gc->n_open++;
	gc->n_waiting++;
	return 0;
}

static bool grpc_eq(const uint8_t *p, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static uint8_t grpc_method_of(const uint8_t *path, size_t n)
{
	for (size_t k = 0; k < sizeof(grpc_services) / sizeof(grpc_services[0]);
	     k++) {
		size_t sl = strlen(grpc_services[k]);

		if (n <= sl || memcmp(path, grpc_services[k], sl) != 0)
			continue;
		for (size_t m = 1; m < GRPC_N_METHODS; m++)
			if (grpc_eq(path + sl, n - sl, grpc_methods[m].name))
				return (uint8_t)m;
	}
	return GRPC_M_UNKNOWN;
}

static void grpc_authorize(struct grpc_conn *gc, struct grpc_stream *st,
			   const uint8_t *v, size_t n)
{
	const struct tokens *t = gc->x->cfg->tokens;
	const struct principal *p;

	st->auth = GRPC_AUTH_BAD;
	if (t == NULL) {
		st->auth = GRPC_AUTH_OK;
		return;
	}
	if (n < 7 || strncasecmp((const char *)v, "bearer ", 7) != 0)
		return;
	v += 7;
	n -= 7;
	if (n == gc->token_len && n > 0 &&
	    CRYPTO_memcmp(v, gc->token, n) == 0) {
		st->principal = gc->token_principal;
		st->auth = GRPC_AUTH_OK;
		return;
	}
	p = tokens_authenticate(t, (const char *)v, n);
	if (p == NULL)
		return;
	st->principal = p;
	st->auth = GRPC_AUTH_OK;
	if (n <= sizeof(gc->token)) {
		memcpy(gc->token, v, n);
		gc->token_len = n;
		gc->token_principal = p;
	}
}

static int grpc_on_header(nghttp2_session *s, const nghttp2_frame *f,
			  const uint8_t *name, size_t namelen,
			  const uint8_t *value, size_t valuelen, uint8_t flags,
			  void *user)
{
	struct grpc_conn *gc = user;
	struct grpc_stream *st;

	(void)flags;
	if (f->hd.type != NGHTTP2_HEADERS ||
	    f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0; /* trailers from a client: nothing we read */
	st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (st == NULL)
		return 0;
	if (grpc_eq(name, namelen, ":path"))
		st->method = grpc_method_of(value, valuelen);
	else if (grpc_eq(name, namelen, ":method"))
		st->post = grpc_eq(value, valuelen, "POST");
	else if (grpc_eq(name, namelen, "content-type"))
		st->grpc_type =
			valuelen >= 16 &&
			memcmp(value, "application/grpc", 16) == 0 &&
			(valuelen == 16 || value[16] == '+' || value[16] == ';');
	else if (grpc_eq(name, namelen, "authorization"))
		grpc_authorize(gc, st, value, valuelen);
	return 0;
}

static int grpc_on_frame_recv(nghttp2_session *s, const nghttp2_frame *f,
			      void *user)
{
	struct grpc_conn *gc = user;
	struct grpc_stream *st;
	int rc = 0;

	if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
		return 0;
	st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (st == NULL)
		return 0;
	if (f->hd.type == NGHTTP2_HEADERS &&
	    f->headers.cat == NGHTTP2_HCAT_REQUEST && !st->answered)
		rc = grpc_headers_done(gc, st);
	if (rc == 0 && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		st->end_remote = true;
		st->rst_after = false;
		if (!st->answered)
			rc = grpc_ready(gc, st);
	}
	return grpc_cb_result(gc, rc);
}

/* Message bytes of a call: the prefix, then the body into a buffer sized
 * by it; the limits are checked as soon as the prefix is known. */
static int grpc_take(struct grpc_conn *gc, struct grpc_stream *st,
		     const uint8_t *p, size_t n)
{
	const struct server_config *cfg = gc->x->cfg;
	char msg[160];

	while (n > 0 && !st->answered) {
		if (st->pre_len == GRPC_MSG_HDR && st->got == st->msg_len) {
			/* A second message in a unary call. */
			st->n_msgs++;
			metrics_inc(&gc->x->m->frames_undecodable);
			return grpc_fail_call(gc, st, GRPC_INVALID_ARGUMENT,
					      "a unary call carries one "
					      "message: a second arrived");
		}
		if (st->pre_len < GRPC_MSG_HDR) {
			uint32_t limit = cfg->max_frame_bytes;

			if (st->pre_len == 0)
				st->n_msgs++;
			st->pre[st->pre_len++] = *p++;
			n--;
			if (st->pre_len < GRPC_MSG_HDR)
				continue;
			st->msg_len = (uint32_t)st->pre[1] << 24 |
				      (uint32_t)st->pre[2] << 16 |
				      (uint32_t)st->pre[3] << 8 | st->pre[4];
			if (st->pre[0] != 0)
				return grpc_fail_call(
					gc, st, GRPC_UNIMPLEMENTED,
					"compressed messages are not "
					"supported (send grpc-encoding "
					"identity)");
			if (st->msg_len > limit) {
				metrics_inc(&gc->x->m->frames_oversize);
				snprintf(msg, sizeof(msg),
					 "message of %u bytes is over the "
					 "limit of %u bytes", st->msg_len,
					 limit);
				return grpc_fail_call(
					gc, st, GRPC_RESOURCE_EXHAUSTED, msg);
			}
			if (gc->in_bytes + st->msg_len >
			    cfg->conn_in_cap_bytes) {
				metrics_inc(&gc->x->m->frames_oversize);
				snprintf(msg, sizeof(msg),
					 "message of %u bytes: the calls in "
					 "flight on this connection would "
					 "hold more than %u bytes",
					 st->msg_len, cfg->conn_in_cap_bytes);
				return grpc_fail_call(
					gc, st, GRPC_RESOURCE_EXHAUSTED, msg);
			}
			st->msg = malloc(GRPC_HEADROOM + GRPC_MSG_HDR +
					 (size_t)st->msg_len);
			if (st->msg == NULL)
				return -ENOMEM;
			gc->in_bytes += st->msg_len;
			memcpy(st->msg + GRPC_HEADROOM, st->pre, GRPC_MSG_HDR);
			continue;
		}
		{
			size_t k = st->msg_len - st->got;

			if (k > n)
				k = n;
			memcpy(st->msg + GRPC_HEADROOM + GRPC_MSG_HDR +
				       st->got, p, k);
			st->got += (uint32_t)k;
			p += k;
			n -= k;
		}
	}
	return 0;
}

static int grpc_on_data_chunk(nghttp2_session *s, uint8_t flags,
			      int32_t id, const uint8_t *data, size_t len,
			      void *user)
{
	struct grpc_conn *gc = user;
	struct grpc_stream *st = nghttp2_session_get_stream_user_data(s, id);

	(void)flags;
	if (st == NULL || st->answered)
		return 0; /* dropped: flow control was credited by nghttp2 */
	return grpc_cb_result(gc, grpc_take(gc, st, data, len));
}

static int grpc_on_frame_send(nghttp2_session *s, const nghttp2_frame *f,
			      void *user)
{
	struct grpc_stream *st;

	(void)user;
	if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (st != NULL && st->rst_after) {
		st->rst_after = false;
		nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id,
					  NGHTTP2_NO_ERROR);
	}
	return 0;
}

static int grpc_on_stream_close(nghttp2_session *s, int32_t id,
				uint32_t error_code, void *user)
{
	struct grpc_conn *gc = user;
	struct grpc_stream *st = nghttp2_session_get_stream_user_data(s, id);

	(void)error_code;
	if (st == NULL)
		return 0;
	/* A call cancelled (RST_STREAM) before it was answered: an Apply with
	 * the writer still completes (it is durable), its reply is dropped. */
	if (st->queued)
		grpc_unqueue(gc, st);
	if (gc->apply_stream == id)
		gc->apply_stream = 0;
	grpc_stream_free(gc, st);
	nghttp2_session_set_stream_user_data(s, id, NULL);
	return 0;
}

/* ---- the connection ---------------------------------------------------- */

static void *grpc_ctx_create(const struct server_config *cfg)
{
	struct grpc_worker *gw = calloc(1, sizeof(*gw));
	nghttp2_session_callbacks *cb;

	(void)cfg;
	if (gw == NULL)
		return NULL;
	if (nghttp2_session_callbacks_new(&gw->cb) != 0 ||
	    nghttp2_option_new(&gw->opt) != 0) {
		if (gw->cb)
			nghttp2_session_callbacks_del(gw->cb);
		free(gw);
		return NULL;
	}
	cb = gw->cb;
	nghttp2_session_callbacks_set_on_begin_headers_callback(
		cb, grpc_on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, grpc_on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(
		cb, grpc_on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
		cb, grpc_on_data_chunk);
	nghttp2_session_callbacks_set_on_frame_send_callback(
		cb, grpc_on_frame_send);
	nghttp2_session_callbacks_set_on_stream_close_callback(
		cb, grpc_on_stream_close);
	return gw;
}

static void grpc_ctx_destroy(void *state)
{
	struct grpc_worker *gw = state;

	if (gw == NULL)
		return;
	nghttp2_session_callbacks_del(gw->cb);
	nghttp2_option_del(gw->opt);
	free(gw);
}

static void grpc_fini(struct conn *c)
{
	struct grpc_conn **slot = grpc_slot(c), *gc = *slot;

	if (gc == NULL)
		return;
	nghttp2_session_del(gc->s);
	while (gc->all != NULL)
		grpc_stream_free(gc, gc->all);
	free(gc);
	*slot = NULL;
}

static struct grpc_conn *grpc_get(struct conn_ctx *x, struct conn *c)
{
	struct grpc_conn **slot = grpc_slot(c), *gc = *slot;
	struct grpc_worker *gw;
	nghttp2_settings_entry set[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
		  x->cfg->grpc_max_streams },
		{ NGHTTP2_SETTINGS_MAX_FRAME_SIZE, GRPC_MAX_FRAME },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16384 },
	};

	if (gc != NULL) {
		gc->x = x;
		return gc;
	}
	gw = conn_ctx_state(x, &grpc_proto);
	if (gw == NULL)
		return NULL;
	gc = calloc(1, sizeof(*gc));
	if (gc == NULL)
		return NULL;
	gc->x = x;
	gc->c = c;
	gc->preface_left = GRPC_PREFACE_LEN;
	if (nghttp2_session_server_new2(&gc->s, gw->cb, gc, gw->opt) != 0) {
		free(gc);
		return NULL;
	}
	if (nghttp2_submit_settings(gc->s, NGHTTP2_FLAG_NONE, set,
				    sizeof(set) / sizeof(set[0])) != 0) {
		nghttp2_session_del(gc->s);
		free(gc);
		return NULL;
	}
	*slot = gc;
	return gc;
}

/* What the session wants to send, into c->out. */
static int grpc_flush(struct grpc_conn *gc)
{
	for (;;) {
		const uint8_t *p;
		ssize_t n = nghttp2_session_mem_send(gc->s, &p);

		if (n < 0)
			return n == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EPROTO;
		if (n == 0)
			break;
		if (obuf_append(&gc->c->out, p, (size_t)n) < 0)
			return -ENOMEM;
	}
	if (gc->enomem)
		return -ENOMEM;
	if (!nghttp2_session_want_read(gc->s) &&
	    !nghttp2_session_want_write(gc->s))
		gc->c->want_close = true;
	return 0;
}

/* Ends the connection with a GOAWAY (after what is queued). */
static int grpc_goaway(struct grpc_conn *gc, uint32_t error,
		       const char *why)
{
	nghttp2_submit_goaway(gc->s, NGHTTP2_FLAG_NONE,
			      nghttp2_session_get_last_proc_stream_id(gc->s),
			      error, (const uint8_t *)why, strlen(why));
	int rc = grpc_flush(gc);

	gc->c->want_close = true;
	return rc;
}

/* The preface and the whole frames at the start of p[0..n): the bytes to
 * hand nghttp2 now (a frame over our SETTINGS_MAX_FRAME_SIZE goes as its
 * header alone: nghttp2 refuses it from that).
 *
 * One frame is never handed over: an RST_STREAM for a client stream no
 * HEADERS opened yet (an idle stream). RFC 9113 §6.4 makes it a connection
 * error, and nghttp2 ends the connection for it, but gRPC's own C core
 * (grpcio, C++, C#) sends exactly that when a call is cancelled between
 * taking its stream id and writing its headers (grpc/grpc#19655, #38758):
 * one cancelled call would fail every call on the connection. *skip then
 * gets the frame's bytes (with a run of 0), dropped by the caller; the
 * call's HEADERS, if they come after it, open a call that is answered to
 * nobody. */
static size_t grpc_run(struct grpc_conn *gc, const uint8_t *p, size_t n,
		       size_t *skip)
{
	size_t off = 0;

	*skip = 0;
	if (gc->preface_left > 0)
		return n < gc->preface_left ? 0 : gc->preface_left;
	while (n - off >= GRPC_FRAME_HDR && off < GRPC_RUN_MAX) {
		const uint8_t *h = p + off;
		uint32_t flen = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 |
				h[2];
		int32_t id = (int32_t)((uint32_t)(h[5] & 0x7f) << 24 |
				       (uint32_t)h[6] << 16 |
				       (uint32_t)h[7] << 8 | h[8]);

		if (flen > GRPC_MAX_FRAME)
			return off + GRPC_FRAME_HDR;
		if (n - off - GRPC_FRAME_HDR < flen)
			break;
		if (h[3] == NGHTTP2_RST_STREAM && (id & 1) &&
		    id > gc->max_headers_id) {
			if (off == 0)
				*skip = GRPC_FRAME_HDR + flen;
			return off;
		}
		if (h[3] == NGHTTP2_HEADERS && (id & 1) &&
		    id > gc->max_headers_id)
			gc->max_headers_id = id;
		off += GRPC_FRAME_HDR + flen;
	}
	return off;
}

static long grpc_process(struct conn_ctx *x, struct conn *c, const char *in,
			 size_t len)
{
	const uint8_t *buf = (const uint8_t *)in;
	struct grpc_conn *gc = grpc_get(x, c);
	size_t pos = 0;
	int rc;

	if (gc == NULL)
		return -ENOMEM;
	rc = grpc_drain_ready(gc);
	while (rc == 0 && !c->want_close && !c->apply_wait && pos < len) {
		size_t run, skip;
		ssize_t r;

		if (conn_out_pending(c) > x->cfg->conn_out_cap_bytes) {
			c->paused = true;
			break;
		}
		run = grpc_run(gc, buf + pos, len - pos, &skip);
		if (skip > 0) {
			pos += skip; /* an idle stream's RST_STREAM (above) */
			continue;
		}
		if (run == 0)
			break;
		r = nghttp2_session_mem_recv(gc->s, buf + pos, run);
		if (gc->enomem)
			return -ENOMEM;
		if (r < 0) {
			/* Not HTTP/2 (bad preface), a flood, a broken frame:
			 * nghttp2 gives up on the connection. */
			metrics_inc(&x->m->frames_undecodable);
			rc = grpc_goaway(gc, NGHTTP2_PROTOCOL_ERROR,
					 nghttp2_strerror((int)r));
			pos = len;
			break;
		}
		if (gc->preface_left > 0)
			gc->preface_left -= (uint32_t)run;
		pos += run;
		rc = grpc_flush(gc);
	}
	if (rc == 0)
		rc = grpc_flush(gc);
	if (rc == -ENOMEM)
		return rc;
	if (rc < 0)
		c->want_close = true;
	/* A call whose message is still arriving is an unfinished request:
	 * conn.c times it with the stall deadline. */
	c->partial = gc->n_waiting > 0;
	return c->want_close ? (long)len : (long)pos;
}

static int grpc_proto_fatal(struct conn_ctx *x, struct conn *c,
			    enum conn_fatal why)
{
	struct grpc_conn *gc = grpc_get(x, c);
	char msg[96];

	if (gc == NULL) {
		c->want_close = true;
		return 0;
	}
	if (why == CONN_FATAL_TOO_LARGE)
		return grpc_goaway(gc, NGHTTP2_ENHANCE_YOUR_CALM,
				   "input over the per-connection cap");
	snprintf(msg, sizeof(msg), "incomplete frame or call after %u ms",
		 x->cfg->partial_timeout_ms);
	return grpc_goaway(gc, NGHTTP2_NO_ERROR, msg);
}

static int grpc_proto_apply(struct conn_ctx *x, struct conn *c,
			    const struct writer_reply *r)
{
	struct grpc_conn *gc = grpc_get(x, c);
	struct grpc_stream *st;
	int rc = 0;

	if (gc == NULL)
		return -ENOMEM;
	st = gc->apply_stream == (int32_t)r->id
		     ? nghttp2_session_get_stream_user_data(gc->s,
							    (int32_t)r->id)
		     : NULL;
	gc->apply_stream = 0;
	if (st != NULL) /* else cancelled meanwhile: the reply is dropped */
		rc = grpc_apply_reply(gc, st, r);
	if (rc == 0)
		rc = grpc_flush(gc);
	return rc;
}

/* SETTINGS (empty) + GOAWAY(last stream 0, ENHANCE_YOUR_CALM,
 * "max connections"). */
static const char grpc_refusal[] = {
	0, 0, 0, 4, 0, 0, 0, 0, 0,
	0, 0, 23, 7, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 11,
	'm', 'a', 'x', ' ', 'c', 'o', 'n', 'n', 'e', 'c', 't', 'i', 'o', 'n',
	's',
};

const struct conn_proto grpc_proto = {
	.name = "grpc",
	.alpn = "h2", /* grpcio refuses a TLS server that selects none */
	.metrics = METRICS_GRPC,
	.process = grpc_process,
	.reply_fatal = grpc_proto_fatal,
	.reply_apply = grpc_proto_apply,
	.ctx_create = grpc_ctx_create,
	.ctx_destroy = grpc_ctx_destroy,
	.refusal = grpc_refusal,
	.refusal_len = sizeof(grpc_refusal),
	.speaks_http = true,
	.fini = grpc_fini,
};
