/*
 * rpc: frames, the hand-written Request decoder and Response encoders,
 * and the per-connection request handling (server/rpc.h).
 *
 * Decoding follows protobuf-c 1.4's unpacker rule for rule, because the
 * contract is "what protobuf-c would accept, with the same meaning":
 *  - a tag is a varint of at most 5 bytes, wire types 0, 1, 2 and 5
 *    only; a one-byte tag for field 0 is refused, longer ones are an
 *    unknown field;
 *  - a varint value has at most 10 bytes; uint32 and enum fields keep the
 *    low 32 bits;
 *  - a length prefix has at most 5 bytes and must fit the bytes left;
 *  - a known field with a wire type other than its own fails the message;
 *    unknown fields (field 0 included) are skipped;
 *  - oneof members replace each other (no merge), each must decode.
 * Validation runs over the whole Request first (the table-driven
 * pb_validate), so handling a request never meets a malformed byte.
 *
 * Checks from the frames of one receive are decided together: small
 * CheckRequests are decoded straight into the worker's batch (conn_ctx),
 * validation and extraction in one walk, and
 * are answered when the batch fills, another kind of request needs its
 * reply in order, or the receive is done. A CheckRequest larger than the
 * batch is decided chunk by chunk straight into the output buffer.
 */
#include "server/rpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/tokens.h"
#include "index/origins.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/evidence.h"
#include "server/metrics.h"
#include "server/reject.h"
#include "server/writer.h"

/* ---- wire reading ------------------------------------------------------ */

enum pb_wire {
	PB_VARINT = 0,
	PB_I64 = 1,
	PB_LEN = 2,
	PB_I32 = 5,
};

struct pb_field {
	uint32_t number;
	int wire;
	uint64_t v;          /* PB_VARINT: the value */
	const uint8_t *data; /* PB_LEN: the payload; others: the raw bytes */
	size_t len;
};

/* A varint of at most 10 bytes (protobuf-c's scan); 0 if unterminated. */
static inline size_t pb_varint(const uint8_t *p, const uint8_t *end,
			       uint64_t *out)
{
	size_t rem = (size_t)(end - p), max = rem < 10 ? rem : 10;
	uint64_t v = 0;

	for (size_t i = 0; i < max; i++) {
		/* Unsigned shifts only (7 * 9 = 63 keeps the 10th byte's low
		 * bit, as protobuf-c's parse_uint64 does). */
		v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*out = v;
			return i + 1;
		}
	}
	return 0;
}

/* A tag of at most 5 bytes: protobuf-c's parse_tag_and_wiretype. */
static inline size_t pb_tag(const uint8_t *p, const uint8_t *end,
			    uint32_t *number, int *wire)
{
	size_t rem = (size_t)(end - p), max = rem < 5 ? rem : 5;
	uint32_t tag;
	unsigned shift = 4;

	/* protobuf-c refuses a one-byte field number 0 (first byte < 8), but
	 * takes a longer encoding of 0 as an unknown field. */
	if (rem == 0 || (p[0] & 0xf8) == 0)
		return 0;
	*wire = p[0] & 7;
	tag = (uint32_t)(p[0] & 0x7f) >> 3;
	if (!(p[0] & 0x80)) {
		*number = tag;
		return 1;
	}
	for (size_t i = 1; i < max; i++) {
		tag |= (uint32_t)(p[i] & 0x7f) << shift;
		if (!(p[i] & 0x80)) {
			*number = tag;
			return i + 1;
		}
		shift += 7;
	}
	return 0;
}

/* One field, the general case; returns its bytes (tag included), 0 if
 * malformed. */
static size_t pb_next_slow(const uint8_t *p, const uint8_t *end,
			   struct pb_field *f)
{
	size_t n = pb_tag(p, end, &f->number, &f->wire), m;
	size_t rem;

	if (n == 0)
		return 0;
	p += n;
	rem = (size_t)(end - p);
	switch (f->wire) {
	case PB_VARINT:
		m = pb_varint(p, end, &f->v);
		if (m == 0)
			return 0;
		f->data = p;
		f->len = m;
		return n + m;
	case PB_I64:
		if (rem < 8)
			return 0;
		f->data = p;
		f->len = 8;
		return n + 8;
	case PB_I32:
		if (rem < 4)
			return 0;
		f->data = p;
		f->len = 4;
		return n + 4;
	case PB_LEN: {
		/* Length prefix: at most 5 bytes, its value not truncated
		 * and never larger than what is left (protobuf-c 1.4.1). */
		size_t max = rem < 5 ? rem : 5, i;
		uint64_t l = 0;

		for (i = 0; i < max; i++) {
			l |= (uint64_t)(p[i] & 0x7f) << (7 * i);
			if (!(p[i] & 0x80))
				break;
		}
		if (i == max)
			return 0;
		m = i + 1;
		if ((uint64_t)m + l > rem)
			return 0;
		f->data = p + m;
		f->len = (size_t)l;
		return n + m + l;
	}
	default:
		return 0; /* groups (3, 4) and 6, 7: protobuf-c refuses */
	}
}

/* One field. Fast path for what every encoder writes for our messages: a
 * one-byte tag (fields 1-15) with a varint or a one-byte length; anything
 * else takes the general path, which applies the same rules. */
static inline __attribute__((always_inline)) size_t
pb_next(const uint8_t *p, const uint8_t *end, struct pb_field *f)
{
	if (end - p >= 2 && p[0] >= 8 && p[0] < 0x80) {
		f->number = p[0] >> 3;
		f->wire = p[0] & 7;
		if (f->wire == PB_VARINT) {
			size_t m = pb_varint(p + 1, end, &f->v);

			f->data = p + 1;
			f->len = m;
			return m ? 1 + m : 0;
		}
		if (f->wire == PB_LEN && p[1] < 0x80 &&
		    (size_t)(end - p) - 2 >= p[1]) {
			f->data = p + 2;
			f->len = p[1];
			return 2 + (size_t)p[1];
		}
	}
	return pb_next_slow(p, end, f);
}

/* ---- table-driven validation ------------------------------------------ */

enum pb_kind {
	PB_K_UNKNOWN = 0,
	PB_K_VARINT,  /* int32/64, uint32/64, enum (no bool in requests) */
	PB_K_STRING,
	PB_K_MESSAGE,
};

#define PB_MAX_FIELD 16

struct pb_schema {
	uint8_t kind[PB_MAX_FIELD];
	const struct pb_schema *sub[PB_MAX_FIELD];
};

static const struct pb_schema pb_consent = {
	.kind = { [1] = PB_K_STRING, [2] = PB_K_VARINT, [3] = PB_K_VARINT,
		  [4] = PB_K_VARINT, [5] = PB_K_VARINT, [6] = PB_K_VARINT,
		  [7] = PB_K_VARINT, [8] = PB_K_VARINT, [9] = PB_K_VARINT,
		  [10] = PB_K_STRING, [11] = PB_K_VARINT },
};
static const struct pb_schema pb_apply_request = {
	.kind = { [1] = PB_K_MESSAGE, [2] = PB_K_STRING, [3] = PB_K_STRING,
		  [4] = PB_K_STRING },
	.sub = { [1] = &pb_consent },
};
static const struct pb_schema pb_stats_request = {
	.kind = { [1] = PB_K_STRING },
};
static const struct pb_schema pb_history_request = {
	.kind = { [1] = PB_K_STRING, [2] = PB_K_VARINT, [3] = PB_K_VARINT,
		  [4] = PB_K_VARINT },
};
static const struct pb_schema pb_reject_request = {
	.kind = { [1] = PB_K_STRING, [2] = PB_K_VARINT, [3] = PB_K_VARINT,
		  [4] = PB_K_VARINT, [5] = PB_K_VARINT },
};

/* 0 if protobuf-c would unpack buf as a message of schema s. Recursion is
 * bounded by the schema (3 levels), never by the input. */
static int pb_validate(const struct pb_schema *s, const uint8_t *p,
		       size_t len)
{
	const uint8_t *end = p + len;
	struct pb_field f;

	while (p < end) {
		size_t n = pb_next(p, end, &f);
		int kind;

		if (n == 0)
			return -EPROTO;
		p += n;
		kind = f.number < PB_MAX_FIELD ? s->kind[f.number]
					       : PB_K_UNKNOWN;
		switch (kind) {
		case PB_K_UNKNOWN:
			break;
		case PB_K_VARINT:
			if (f.wire != PB_VARINT)
				return -EPROTO;
			break;
		case PB_K_STRING:
			if (f.wire != PB_LEN)
				return -EPROTO;
			break;
		case PB_K_MESSAGE:
			if (f.wire != PB_LEN ||
			    pb_validate(s->sub[f.number], f.data, f.len) < 0)
				return -EPROTO;
			break;
		}
	}
	return 0;
}

/* ---- decoding ---------------------------------------------------------- */

static const uint8_t rpc_empty[1];

/* Check and CheckRequest share their shape: field 1 is length-delimited
 * (the recipient; the checks), fields 2-5 are the same four varints (in a
 * CheckRequest, defaults for its checks); a Check also has the as-of
 * varints 6 and 7 (as_of NULL for a CheckRequest, where they are unknown
 * fields). Checks f's wire type (-EPROTO if wrong), stores a field 2-7
 * into the one it names, and returns 1 for a field 1, which the caller
 * takes, else 0. */
static int rpc_take_check_field(const struct pb_field *f,
				uint32_t *brand_code, int *channel, int *rtype,
				int *purpose, struct check_input *as_of)
{
	uint32_t last = as_of != NULL ? 7 : 5;

	if (f->number >= 1 && f->number <= last &&
	    f->wire != (f->number == 1 ? PB_LEN : PB_VARINT))
		return -EPROTO;
	if (as_of != NULL && f->number == 6)
		as_of->as_of_time = (int64_t)f->v;
	else if (as_of != NULL && f->number == 7)
		as_of->as_of_sequence = f->v;
	switch (f->number) {
	case 1:
		return 1;
	case 2:
		*brand_code = (uint32_t)f->v;
		break;
	case 3:
		*channel = (int32_t)(uint32_t)f->v;
		break;
	case 4:
		*rtype = (int32_t)(uint32_t)f->v;
		break;
	case 5:
		*purpose = (int32_t)(uint32_t)f->v;
		break;
	default:
		break;
	}
	return 0;
}

/* One Check message into *out (no defaults applied): validation and
 * extraction in one walk, so rpc_decode (validating) and rpc_check_next
 * (extracting) read a check the same way. 0, or -EPROTO. */
static int rpc_check_parse(const uint8_t *p, size_t len,
			   struct check_input *out)
{
	const uint8_t *end = p + len;
	struct pb_field g;
	int rc;

	out->recipient = (const char *)rpc_empty;
	out->recipient_len = 0;
	out->brand_code = 0;
	out->channel = out->rtype = out->purpose = 0;
	out->as_of_time = 0;
	out->as_of_sequence = 0;
	while (p < end) {
		size_t m = pb_next(p, end, &g);

		if (m == 0)
			return -EPROTO;
		p += m;
		rc = rpc_take_check_field(&g, &out->brand_code, &out->channel,
					  &out->rtype, &out->purpose, out);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			out->recipient = (const char *)g.data;
			out->recipient_len = g.len;
		}
	}
	return 0;
}

/* checks[0..cap): where the checks go as they are validated, the request's
 * defaults not yet applied (they may come after the checks). */
static int rpc_decode_check_request(const uint8_t *p, size_t len,
				    struct rpc_request *req,
				    struct check_input *checks, size_t cap)
{
	const uint8_t *end = p + len;
	struct pb_field f;
	int rc;

	/* A later CheckRequest replaces an earlier one whole (oneof). */
	req->check = p;
	req->check_len = len;
	req->n_checks = 0;
	req->brand_code = 0;
	req->channel = req->rtype = req->purpose = 0;
	while (p < end) {
		size_t n = pb_next(p, end, &f);

		if (n == 0)
			return -EPROTO;
		p += n;
		rc = rpc_take_check_field(&f, &req->brand_code, &req->channel,
					  &req->rtype, &req->purpose, NULL);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			struct check_input scratch;
			struct check_input *to = req->n_checks < cap
				? &checks[req->n_checks] : &scratch;

			if (rpc_check_parse(f.data, f.len, to) < 0)
				return -EPROTO;
			req->n_checks++;
		}
	}
	return 0;
}

static int rpc_decode_auth(const uint8_t *p, size_t len,
			   struct rpc_request *req)
{
	const uint8_t *end = p + len;
	struct pb_field f;

	req->token = rpc_empty;
	req->token_len = 0;
	while (p < end) {
		size_t n = pb_next(p, end, &f);

		if (n == 0)
			return -EPROTO;
		p += n;
		if (f.number == 1) {
			if (f.wire != PB_LEN)
				return -EPROTO;
			req->token = f.data;
			req->token_len = f.len;
		}
	}
	return 0;
}

/* StatsRequest: its origin (field 1), the last one written. */
static void rpc_decode_stats(const uint8_t *p, size_t len,
			     struct rpc_request *req)
{
	const uint8_t *end = p + len;
	struct pb_field f;

	req->origin = rpc_empty;
	req->origin_len = 0;
	while (p < end) {
		size_t n = pb_next(p, end, &f); /* validated: never 0 */

		if (n == 0)
			return;
		p += n;
		if (f.number == 1) {
			req->origin = f.data;
			req->origin_len = f.len;
		}
	}
}

/* Request-level defaults fill what a check left unset. */
static void rpc_check_defaults(const struct rpc_request *req,
			       struct check_input *out)
{
	if (out->brand_code == 0)
		out->brand_code = req->brand_code;
	if (out->channel == 0)
		out->channel = req->channel;
	if (out->rtype == 0)
		out->rtype = req->rtype;
	if (out->purpose == 0)
		out->purpose = req->purpose;
}

int rpc_decode(const uint8_t *buf, size_t len, struct rpc_request *req)
{
	return rpc_decode_checks(buf, len, req, NULL, 0);
}

int rpc_decode_checks(const uint8_t *buf, size_t len, struct rpc_request *req,
		      struct check_input *checks, size_t cap)
{
	const uint8_t *p = buf, *end = buf + len;
	struct pb_field f;
	int rc = 0;

	memset(req, 0, sizeof(*req));
	while (p < end) {
		size_t n = pb_next(p, end, &f);
		const struct pb_schema *body = NULL;

		if (n == 0)
			return -EPROTO;
		p += n;
		if (f.number >= 1 && f.number < RPC_REQ_END &&
		    f.wire != (f.number == 1 ? PB_VARINT : PB_LEN))
			return -EPROTO;
		switch (f.number) {
		case 1:
			req->id = f.v;
			continue;
		case RPC_REQ_CHECK:
			if (rpc_decode_check_request(f.data, f.len, req,
						     checks, cap) < 0)
				return -EPROTO;
			break;
		case RPC_REQ_APPLY:
			body = &pb_apply_request;
			break;
		case RPC_REQ_AUTH:
			if (rpc_decode_auth(f.data, f.len, req) < 0)
				return -EPROTO;
			break;
		case RPC_REQ_STATS:
			body = &pb_stats_request;
			break;
		case RPC_REQ_HISTORY:
			body = &pb_history_request;
			break;
		case RPC_REQ_REJECT:
			body = &pb_reject_request;
			break;
		default:
			continue;
		}
		if (body != NULL && pb_validate(body, f.data, f.len) < 0)
			return -EPROTO;
		/* The body is a oneof. The protobuf spec merges a message
		 * field that occurs twice; protobuf-c 1.4 instead frees the
		 * earlier member and keeps the later one. Either way a request
		 * split over two body fields would be answered for a part of
		 * it, so it is refused (after the whole frame was checked: an
		 * undecodable frame is the graver error). */
		if (req->kind != RPC_REQ_NONE) {
			req->first_kind = req->kind;
			rc = RPC_DECODE_TWO_BODIES;
		}
		req->kind = (int)f.number;
		req->body = f.data;
		req->body_len = f.len;
	}
	if (rc < 0)
		return rc;
	if (req->kind != RPC_REQ_CHECK) {
		req->check = NULL;
		req->check_len = 0;
		req->n_checks = 0;
	}
	if (req->kind == RPC_REQ_STATS)
		rpc_decode_stats(req->body, req->body_len, req);
	if (checks != NULL && req->kind == RPC_REQ_CHECK &&
	    req->n_checks <= cap) {
		for (size_t i = 0; i < req->n_checks; i++)
			rpc_check_defaults(req, &checks[i]);
		req->checks_decoded = true;
	}
	return 0;
}

void rpc_check_iter_init(struct rpc_check_iter *it,
			 const struct rpc_request *req)
{
	it->p = req->check;
	it->end = req->check + req->check_len;
}

bool rpc_check_next(struct rpc_check_iter *it, const struct rpc_request *req,
		    struct check_input *out)
{
	struct pb_field f;

	while (it->p < it->end) {
		size_t n = pb_next(it->p, it->end, &f);

		if (n == 0)
			return false; /* not reached: validated by rpc_decode */
		it->p += n;
		if (f.number != 1 || f.wire != PB_LEN)
			continue;
		rpc_check_parse(f.data, f.len, out);
		rpc_check_defaults(req, out);
		return true;
	}
	return false;
}

/* ---- encoding ---------------------------------------------------------- */

/* Room reserved in front of a CheckResponse whose size is not yet known:
 * frame length (4), Response.id tag + varint (11), Response.check tag +
 * length varint (1 + 5). */
#define RPC_HDR_MAX 21

static inline size_t pb_varint_size(uint64_t v)
{
	/* 1 byte per started 7 bits; v | 1 keeps clz defined for 0. */
	return (size_t)(63 - __builtin_clzll(v | 1)) / 7 + 1;
}

static inline uint8_t *pb_put_varint(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

static inline uint8_t *pb_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
	return p + 4;
}

/* A Verdict's fields 1-6 (a live verdict's, all it has). */
static inline __attribute__((always_inline)) size_t
rpc_verdict_size_live(const struct verdict *v)
{
	size_t n = 0;

	/* proto3: a field at its zero value is not written (protobuf-c's
	 * unlabeled_field_pack_to_buffer). */
	if (v->allow)
		n += 2;
	if (v->reason)
		n += 1 + pb_varint_size(v->reason);
	if (v->status)
		n += 1 + pb_varint_size(v->status);
	if (v->source)
		n += 1 + pb_varint_size(v->source);
	if (v->consent_date)
		n += 1 + pb_varint_size((uint64_t)v->consent_date);
	if (v->error != NULL && v->error[0] != '\0') {
		size_t el = strlen(v->error);

		n += 1 + pb_varint_size(el) + el;
	}
	return n;
}

static inline __attribute__((always_inline)) uint8_t *
rpc_put_verdict_live(uint8_t *p, const struct verdict *v)
{
	if (v->allow) {
		*p++ = 0x08;
		*p++ = 1;
	}
	if (v->reason) {
		*p++ = 0x10;
		p = pb_put_varint(p, v->reason);
	}
	if (v->status) {
		*p++ = 0x18;
		p = pb_put_varint(p, v->status);
	}
	if (v->source) {
		*p++ = 0x20;
		p = pb_put_varint(p, v->source);
	}
	if (v->consent_date) {
		*p++ = 0x28;
		p = pb_put_varint(p, (uint64_t)v->consent_date);
	}
	if (v->error != NULL && v->error[0] != '\0') {
		size_t el = strlen(v->error);

		*p++ = 0x32;
		p = pb_put_varint(p, el);
		memcpy(p, v->error, el);
		p += el;
	}
	return p;
}

/* An as-of verdict (§10): fields 1-6, then its sequence (7) and
 * transaction_id (8). Out of line, so the live path keeps its code. */
static __attribute__((noinline, cold)) size_t
rpc_verdict_size_as_of(const struct verdict *v)
{
	size_t n = rpc_verdict_size_live(v), tl = strlen(v->transaction_id);

	if (v->sequence)
		n += 1 + pb_varint_size(v->sequence);
	if (tl)
		n += 1 + pb_varint_size(tl) + tl;
	return n;
}

static __attribute__((noinline, cold)) uint8_t *
rpc_put_verdict_as_of(uint8_t *p, const struct verdict *v)
{
	size_t tl = strlen(v->transaction_id);

	p = rpc_put_verdict_live(p, v);
	if (v->sequence) {
		*p++ = 0x38;
		p = pb_put_varint(p, v->sequence);
	}
	if (tl) {
		*p++ = 0x42;
		p = pb_put_varint(p, tl);
		memcpy(p, v->transaction_id, tl);
		p += tl;
	}
	return p;
}

size_t rpc_verdict_size(const struct verdict *v)
{
	if (v->transaction_id != NULL)
		return rpc_verdict_size_as_of(v);
	return rpc_verdict_size_live(v);
}

/* Opens a CheckResponse frame; returns its start offset in b, or -1. */
static long rpc_check_begin(struct obuf *b)
{
	size_t start = b->len;

	if (obuf_reserve(b, RPC_HDR_MAX) == NULL)
		return -1;
	b->len += RPC_HDR_MAX;
	return (long)start;
}

/* Live verdicts (none answered as of a point): fields 1-6 only, no test
 * for the others, so a batch without an as-of check encodes as it did
 * before §10. */
static int rpc_check_verdicts_live(struct obuf *b, const struct verdict *v,
				   size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t size = rpc_verdict_size_live(&v[i]);
		size_t need = 1 + pb_varint_size(size) + size;
		uint8_t *p = (uint8_t *)obuf_reserve(b, need);

		if (p == NULL)
			return -ENOMEM;
		*p++ = 0x0a;
		p = pb_put_varint(p, size);
		b->len = (size_t)((char *)rpc_put_verdict_live(p, &v[i]) -
				  b->data);
	}
	return 0;
}

/* Any verdicts: each tested for the as-of fields. */
static __attribute__((noinline)) int
rpc_check_verdicts_any(struct obuf *b, const struct verdict *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t size = rpc_verdict_size(&v[i]);
		size_t need = 1 + pb_varint_size(size) + size;
		uint8_t *p = (uint8_t *)obuf_reserve(b, need);

		if (p == NULL)
			return -ENOMEM;
		*p++ = 0x0a;
		p = pb_put_varint(p, size);
		p = v[i].transaction_id != NULL
			    ? rpc_put_verdict_as_of(p, &v[i])
			    : rpc_put_verdict_live(p, &v[i]);
		b->len = (size_t)((char *)p - b->data);
	}
	return 0;
}

int rpc_check_verdicts(struct obuf *b, const struct verdict *v, size_t n,
		       bool as_of)
{
	return as_of ? rpc_check_verdicts_any(b, v, n)
		     : rpc_check_verdicts_live(b, v, n);
}

/* CheckResponse's scalars, after its verdicts. */
int rpc_check_tail(struct obuf *b, uint64_t applied_sequence,
		   int64_t data_as_of)
{
	uint8_t *p = (uint8_t *)obuf_reserve(b, 22);

	if (p == NULL)
		return -ENOMEM;
	if (applied_sequence) {
		*p++ = 0x10;
		p = pb_put_varint(p, applied_sequence);
	}
	if (data_as_of) {
		*p++ = 0x18;
		p = pb_put_varint(p, (uint64_t)data_as_of);
	}
	b->len = (size_t)((char *)p - b->data);
	return 0;
}

/* Closes the frame opened at start: appends the CheckResponse scalars,
 * then writes the real header and slides the body down to meet it. */
static int rpc_check_end(struct obuf *b, size_t start, uint64_t id,
			 uint64_t applied_sequence, int64_t data_as_of)
{
	uint8_t hdr[RPC_HDR_MAX], *q;
	size_t body, hdr_len, body_at = start + RPC_HDR_MAX;

	if (rpc_check_tail(b, applied_sequence, data_as_of) < 0)
		return -ENOMEM;
	body = b->len - body_at;

	q = hdr + 4;
	if (id) {
		*q++ = 0x08;
		q = pb_put_varint(q, id);
	}
	*q++ = 0x12; /* Response.check: a oneof member, written even empty */
	q = pb_put_varint(q, body);
	hdr_len = (size_t)(q - hdr);
	pb_put_be32(hdr, (uint32_t)(hdr_len - 4 + body));
	memmove(b->data + start + hdr_len, b->data + body_at, body);
	memcpy(b->data + start, hdr, hdr_len);
	b->len = start + hdr_len + body;
	return 0;
}

static int rpc_encode_check_of(struct obuf *b, uint64_t id,
			       const struct verdict *v, size_t n,
			       uint64_t applied_sequence, int64_t data_as_of,
			       bool as_of)
{
	long start = rpc_check_begin(b);

	if (start < 0 || rpc_check_verdicts(b, v, n, as_of) < 0)
		return -ENOMEM;
	return rpc_check_end(b, (size_t)start, id, applied_sequence,
			     data_as_of);
}

int rpc_encode_check(struct obuf *b, uint64_t id, const struct verdict *v,
		     size_t n, uint64_t applied_sequence, int64_t data_as_of)
{
	return rpc_encode_check_of(b, id, v, n, applied_sequence, data_as_of,
				   true);
}

/* Appends a Response frame whose body is one message field `tag` holding
 * `inner` bytes (already encoded). */
static int rpc_encode_simple(struct obuf *b, uint64_t id, uint8_t tag,
			     const uint8_t *inner, size_t inner_len)
{
	size_t resp = (id ? 1 + pb_varint_size(id) : 0) + 1 +
		      pb_varint_size(inner_len) + inner_len;
	uint8_t *p = (uint8_t *)obuf_reserve(b, 4 + resp);

	if (p == NULL)
		return -ENOMEM;
	p = pb_put_be32(p, (uint32_t)resp);
	if (id) {
		*p++ = 0x08;
		p = pb_put_varint(p, id);
	}
	*p++ = tag;
	p = pb_put_varint(p, inner_len);
	memcpy(p, inner, inner_len);
	b->len += 4 + resp;
	return 0;
}

/* Error messages and principal names are short; a 409 names an origin's
 * stored cursor and the after_cursor given (ORIGINS_CURSOR_MAX each). */
#define RPC_MSG_MAX 1024

int rpc_encode_error(struct obuf *b, uint64_t id, uint32_t code,
		     const char *message)
{
	uint8_t inner[RPC_MSG_MAX + 16], *p = inner;
	size_t ml = message ? strlen(message) : 0;

	if (ml > RPC_MSG_MAX)
		ml = RPC_MSG_MAX;
	if (code) {
		*p++ = 0x08;
		p = pb_put_varint(p, code);
	}
	if (ml) {
		*p++ = 0x12;
		p = pb_put_varint(p, ml);
		memcpy(p, message, ml);
		p += ml;
	}
	return rpc_encode_simple(b, id, 0x7a /* field 15, LEN */, inner,
				 (size_t)(p - inner));
}

int rpc_encode_auth(struct obuf *b, uint64_t id, const char *principal)
{
	uint8_t inner[RPC_MSG_MAX + 16], *p = inner;
	size_t pl = principal ? strlen(principal) : 0;

	if (pl > RPC_MSG_MAX)
		pl = RPC_MSG_MAX;
	if (pl) {
		*p++ = 0x0a;
		p = pb_put_varint(p, pl);
		memcpy(p, principal, pl);
		p += pl;
	}
	return rpc_encode_simple(b, id, 0x22 /* field 4 */, inner,
				 (size_t)(p - inner));
}

/* ApplyResponse's bytes into inner (RPC_APPLY_MAX); returns their count. */
#define RPC_APPLY_MAX 32
static size_t rpc_apply_inner(uint8_t *inner, uint64_t applied_sequence,
			      uint32_t applied, uint32_t skipped)
{
	uint8_t *p = inner;

	if (applied_sequence) {
		*p++ = 0x08;
		p = pb_put_varint(p, applied_sequence);
	}
	if (applied) {
		*p++ = 0x10;
		p = pb_put_varint(p, applied);
	}
	if (skipped) {
		*p++ = 0x18;
		p = pb_put_varint(p, skipped);
	}
	return (size_t)(p - inner);
}

int rpc_encode_apply(struct obuf *b, uint64_t id, uint64_t applied_sequence,
		     uint32_t applied, uint32_t skipped)
{
	uint8_t inner[RPC_APPLY_MAX];
	size_t n = rpc_apply_inner(inner, applied_sequence, applied, skipped);

	return rpc_encode_simple(b, id, 0x1a /* field 3 */, inner, n);
}

int rpc_apply_message(struct obuf *b, uint64_t applied_sequence,
		      uint32_t applied, uint32_t skipped)
{
	uint8_t inner[RPC_APPLY_MAX];
	size_t n = rpc_apply_inner(inner, applied_sequence, applied, skipped);

	return obuf_append(b, inner, n);
}

int rpc_reply_apply(struct obuf *b, const struct writer_reply *r)
{
	if (r->code != 0)
		return rpc_encode_error(b, r->id, r->code, r->message);
	return rpc_encode_apply(b, r->id, r->applied_sequence, r->applied,
				r->skipped);
}

/* StatsResponse's bytes into inner (RPC_STATS_MAX); returns their count. */
#define RPC_STATS_MAX (64 + 48 + ORIGINS_CURSOR_MAX)
static size_t rpc_stats_inner(uint8_t *inner, const struct rpc_stats *s)
{
	uint8_t *p = inner;
	size_t cl = s->origin_cursor ? strlen(s->origin_cursor) : 0;

	if (s->records) {
		*p++ = 0x08;
		p = pb_put_varint(p, s->records);
	}
	if (s->applied_sequence) {
		*p++ = 0x10;
		p = pb_put_varint(p, s->applied_sequence);
	}
	if (s->data_as_of) {
		*p++ = 0x18;
		p = pb_put_varint(p, (uint64_t)s->data_as_of);
	}
	if (s->generation) {
		*p++ = 0x20;
		p = pb_put_varint(p, s->generation);
	}
	if (s->checks_total) {
		*p++ = 0x28;
		p = pb_put_varint(p, s->checks_total);
	}
	if (s->chain) {
		if (s->chain_sequence) {
			*p++ = 0x30; /* field 6: chain_sequence */
			p = pb_put_varint(p, s->chain_sequence);
		}
		*p++ = 0x3a; /* field 7, LEN: chain_hash */
		*p++ = (uint8_t)sizeof(s->chain_hash);
		memcpy(p, s->chain_hash, sizeof(s->chain_hash));
		p += sizeof(s->chain_hash);
	}
	if (cl > ORIGINS_CURSOR_MAX)
		cl = ORIGINS_CURSOR_MAX;
	if (cl) {
		*p++ = 0x4a; /* field 9, LEN: origin_cursor */
		p = pb_put_varint(p, cl);
		memcpy(p, s->origin_cursor, cl);
		p += cl;
	}
	return (size_t)(p - inner);
}

int rpc_encode_stats(struct obuf *b, uint64_t id, const struct rpc_stats *s)
{
	uint8_t inner[RPC_STATS_MAX];
	size_t n = rpc_stats_inner(inner, s);

	return rpc_encode_simple(b, id, 0x2a /* field 5 */, inner, n);
}

int rpc_stats_message(struct obuf *b, const struct rpc_stats *s)
{
	uint8_t inner[RPC_STATS_MAX];
	size_t n = rpc_stats_inner(inner, s);

	return obuf_append(b, inner, n);
}

/* Response{error{code 503, "max connections"}}, framed. */
const uint8_t rpc_refusal[] = {
	0x00, 0x00, 0x00, 0x16,
	0x7a, 0x14,
	0x08, 0xf7, 0x03,
	0x12, 0x0f, 'm', 'a', 'x', ' ', 'c', 'o', 'n', 'n', 'e', 'c', 't',
	'i', 'o', 'n', 's',
};
const size_t rpc_refusal_len = sizeof(rpc_refusal);

/* ---- handling ---------------------------------------------------------- */

/* One CheckRequest waiting in the worker's check batch for its verdicts
 * [first, first + count). */
struct rpc_pending {
	uint64_t id;
	uint32_t first;
	uint32_t count;
};

/* The worker's RPC state (conn_ctx_state): the check replies queued in
 * its batch, in request order. Empty between rpc_process calls. */
struct rpc_worker {
	struct rpc_pending pending[CONN_BATCH_MAX];
	uint32_t n_pending;
};

static void *rpc_ctx_create(const struct server_config *cfg)
{
	(void)cfg;
	return calloc(1, sizeof(struct rpc_worker));
}

static uint64_t rpc_applied(const struct conn_ctx *x)
{
	return x->ix ? x->info.watermark : 0;
}

static int64_t rpc_as_of(const struct conn_ctx *x)
{
	return x->ix ? x->info.data_as_of : 0;
}

/* Decides the queued checks and writes their responses, in order. */
static int rpc_flush(struct conn_ctx *x, struct conn *c)
{
	struct rpc_worker *rw = conn_ctx_state(x, &rpc_proto);
	struct check_env env;
	int rc = 0;

	if (rw == NULL)
		return -ENOMEM;
	if (rw->n_pending == 0)
		return 0;
	env = conn_check_env(x, c, &x->cfg->policy);
	size_t as_of = 0; /* as-of verdicts in the batch (§10) */
	if (x->n_in)
		as_of = check_batch(&env, x->in, x->n_in, x->out);
	for (uint32_t i = 0; i < x->n_in; i++)
		metrics_inc(&x->m->checks[METRICS_RPC]
					 [x->out[i].reason % REASON_COUNT]);
	for (uint32_t i = 0; i < rw->n_pending && rc == 0; i++) {
		const struct rpc_pending *p = &rw->pending[i];

		rc = rpc_encode_check_of(&c->out, p->id, x->out + p->first,
					 p->count, rpc_applied(x), rpc_as_of(x),
					 as_of > 0);
	}
	x->n_in = 0;
	rw->n_pending = 0;
	return rc;
}

/* A CheckRequest too big for the shared batch: chunk by chunk into the
 * output, refused whole (413) if its reply passes the output cap. */
static int rpc_check_large(struct conn_ctx *x, struct conn *c,
			   const struct rpc_request *req)
{
	struct check_env env = conn_check_env(x, c, &x->cfg->policy);
	uint64_t by_reason[REASON_COUNT] = { 0 };
	struct rpc_check_iter it;
	size_t left = req->n_checks;
	long start = rpc_check_begin(&c->out);
	char msg[128];

	if (start < 0)
		return -ENOMEM;
	rpc_check_iter_init(&it, req);
	while (left > 0) {
		uint32_t k = left < CONN_BATCH_MAX ? (uint32_t)left
						   : CONN_BATCH_MAX;

		for (uint32_t j = 0; j < k; j++)
			rpc_check_next(&it, req, &x->in[j]);
		size_t as_of = check_batch(&env, x->in, k, x->out);
		for (uint32_t j = 0; j < k; j++)
			by_reason[x->out[j].reason % REASON_COUNT]++;
		if (rpc_check_verdicts(&c->out, x->out, k, as_of > 0) < 0)
			return -ENOMEM;
		left -= k;
		if (c->out.len - (size_t)start > x->cfg->conn_out_cap_bytes) {
			c->out.len = (size_t)start;
			metrics_inc(&x->m->replies_too_large);
			snprintf(msg, sizeof(msg),
				 "reply to %zu checks passes the output cap "
				 "of %u bytes: send fewer per request",
				 req->n_checks, x->cfg->conn_out_cap_bytes);
			return rpc_encode_error(&c->out, req->id,
						RPC_E_TOO_LARGE, msg);
		}
	}
	for (unsigned r = 0; r < REASON_COUNT; r++)
		if (by_reason[r])
			metrics_add(&x->m->checks[METRICS_RPC][r],
				    by_reason[r]);
	return rpc_check_end(&c->out, (size_t)start, req->id, rpc_applied(x),
			     rpc_as_of(x));
}

static int rpc_check(struct conn_ctx *x, struct rpc_worker *rw,
		     struct conn *c, const struct rpc_request *req)
{
	struct rpc_check_iter it;
	struct rpc_pending *p;

	/* rpc_process decoded the checks in place, at x->in + x->n_in. */
	if (req->checks_decoded && rw->n_pending < CONN_BATCH_MAX) {
		p = &rw->pending[rw->n_pending++];
		p->id = req->id;
		p->first = x->n_in;
		p->count = (uint32_t)req->n_checks;
		x->n_in += (uint32_t)req->n_checks;
		if (x->n_in == CONN_BATCH_MAX)
			return rpc_flush(x, c);
		return 0;
	}
	if (req->n_checks > CONN_BATCH_MAX - x->n_in ||
	    rw->n_pending == CONN_BATCH_MAX) {
		int rc = rpc_flush(x, c);

		if (rc < 0)
			return rc;
		if (req->n_checks > CONN_BATCH_MAX)
			return rpc_check_large(x, c, req);
	}
	p = &rw->pending[rw->n_pending++];
	p->id = req->id;
	p->first = x->n_in;
	p->count = (uint32_t)req->n_checks;
	rpc_check_iter_init(&it, req);
	for (size_t j = 0; j < req->n_checks; j++)
		rpc_check_next(&it, req, &x->in[x->n_in++]);
	if (x->n_in == CONN_BATCH_MAX)
		return rpc_flush(x, c);
	return 0;
}

/* Without the 'stats' right (core/tokens.h) a principal's reply holds
 * only what is its own or says how fresh the answers are: records and
 * generation stay 0 and checks_total is its own count. An origin's
 * cursor (§8: where its feeder resumes) goes to a principal that may
 * apply or has the stats right; "" for an unknown origin. */
void rpc_stats_gather(const struct conn_ctx *x, const struct principal *who,
		      const struct rpc_request *req, struct rpc_stats *s,
		      char *cursor, size_t cursor_cap)
{
	bool fleet = principal_may_stats(who);
	struct metrics sum;

	memset(s, 0, sizeof(*s));
	if (cursor_cap > 0)
		cursor[0] = '\0';
	if (req->origin_len > 0 && x->cfg->writer != NULL &&
	    (who == NULL || who->may_apply || fleet)) {
		writer_origin_cursor(x->cfg->writer, (const char *)req->origin,
				     req->origin_len, cursor, cursor_cap);
		s->origin_cursor = cursor;
	}

	if (x->ix) {
		s->records = fleet ? x->info.n_records : 0;
		s->applied_sequence = x->info.watermark;
		s->data_as_of = x->info.data_as_of;
		s->generation = fleet ? x->info.generation : 0;
	}
	/* The chain head says nothing of any brand: every principal may
	 * check a receipt against it. */
	s->chain = writer_chain(x->cfg->writer, &s->chain_sequence,
				s->chain_hash);
	if (fleet) {
		metrics_sum(&sum);
		s->checks_total = metrics_checks_total(&sum);
	} else {
		s->checks_total = principal_checks(who);
	}
}

static int rpc_stats(struct conn_ctx *x, struct conn *c,
		     const struct rpc_request *req)
{
	struct rpc_stats s;
	char cursor[ORIGINS_CURSOR_MAX + 1];

	rpc_stats_gather(x, c->principal, req, &s, cursor, sizeof(cursor));
	return rpc_encode_stats(&c->out, req->id, &s);
}

static int rpc_auth(struct conn_ctx *x, struct conn *c,
		    const struct rpc_request *req)
{
	const struct principal *p;

	if (x->cfg->tokens == NULL)
		return rpc_encode_auth(&c->out, req->id, "trusted");
	p = tokens_authenticate(x->cfg->tokens, (const char *)req->token,
				req->token_len);
	if (p == NULL) {
		metrics_inc(&x->m->auth_failures);
		return rpc_encode_error(&c->out, req->id,
					RPC_E_UNAUTHENTICATED, "bad token");
	}
	c->principal = p;
	c->authed = true;
	return rpc_encode_auth(&c->out, req->id, p->name);
}

/* Hands an Apply to the single writer. Its reply comes back through the
 * worker's completion queue (server/loop.c); until then the connection
 * processes no more input (apply_wait), so no later reply can pass it. */
static int rpc_apply(struct conn_ctx *x, struct conn *c,
		     const struct rpc_request *req)
{
	struct writer_reply now;
	int rc;

	if (x->cfg->writer == NULL) /* the module alone: tests, fuzzers */
		return rpc_encode_error(&c->out, req->id,
					RPC_E_NOT_IMPLEMENTED,
					"Apply is not available here (no "
					"change log)");
	/* The one decode of the Apply (rpc_decode checked its wire shape):
	 * the writer takes the message as it is. NULL here is only memory. */
	Consent__V1__ApplyRequest *a = consent__v1__apply_request__unpack(
		NULL, req->body_len, req->body);
	if (a == NULL)
		return rpc_encode_error(&c->out, req->id, RPC_E_UNAVAILABLE,
					"out of memory decoding the Apply");
	rc = writer_submit(x->cfg->writer, x->worker, c->tag, req->id,
			   c->principal, a, &now);
	if (rc < 0)
		return rc;
	if (rc == 0) /* refused at once: a bad change, or the log failed */
		return rpc_reply_apply(&c->out, &now);
	c->apply_wait = true;
	c->paused = true;
	return 0;
}

/* A local rejection (§11): one RET of origin "local" through the writer,
 * answered like an Apply (server/reject.h). */
static int rpc_reject(struct conn_ctx *x, struct conn *c,
		      const struct rpc_request *req)
{
	struct writer_reply now;
	int rc;

	if (x->cfg->writer == NULL)
		return rpc_encode_error(&c->out, req->id,
					RPC_E_NOT_IMPLEMENTED,
					"Reject is not available here (no "
					"change log)");
	rc = reject_submit_message(x->cfg->writer, x->worker, c->tag, req->id,
				   c->principal, req->body, req->body_len, &now);
	if (rc == -ENOMEM)
		return rpc_encode_error(&c->out, req->id, RPC_E_UNAVAILABLE,
					"out of memory decoding the Reject");
	if (rc < 0)
		return rc;
	if (rc == 0)
		return rpc_reply_apply(&c->out, &now);
	c->apply_wait = true;
	c->paused = true;
	return 0;
}

/* A history query (§10, server/evidence.h): a HistoryResponse, or an
 * Error (400 a bad field, 403 a brand outside the principal's list, 501
 * history off, 503 the store failed). */
static int rpc_history(struct conn_ctx *x, struct conn *c,
		       const struct rpc_request *req)
{
	struct evidence_answer a;
	struct obuf tmp = { 0 };
	char msg[400];
	int code = evidence_query_message(x->history, c->principal, req->body,
					  req->body_len, &a, msg, sizeof(msg));
	if (code != 0)
		return rpc_encode_error(&c->out, req->id, (uint32_t)code, msg);
	int rc = evidence_encode(&tmp, &a, rpc_applied(x));
	evidence_answer_fini(&a);
	if (rc == 0)
		rc = rpc_encode_simple(&c->out, req->id, 0x32 /* field 6 */,
				       tmp.len ? (const uint8_t *)tmp.data
					       : rpc_empty, tmp.len);
	free(tmp.data);
	return rc;
}

static const char *rpc_kind_name(int kind)
{
	static const char *const names[RPC_REQ_END] = {
		[RPC_REQ_CHECK] = "check",     [RPC_REQ_APPLY] = "apply",
		[RPC_REQ_AUTH] = "auth",       [RPC_REQ_STATS] = "stats",
		[RPC_REQ_HISTORY] = "history", [RPC_REQ_REJECT] = "reject",
	};

	return kind > 0 && kind < RPC_REQ_END && names[kind] ? names[kind]
							     : "?";
}

static int rpc_handle(struct conn_ctx *x, struct rpc_worker *rw,
		      struct conn *c, const struct rpc_request *req)
{
	int rc;

	x->n_requests++;
	c->stat_requests++;
	if (req->kind == RPC_REQ_CHECK && c->authed)
		return rpc_check(x, rw, c, req);
	/* Every other reply goes after the queued check replies. */
	rc = rpc_flush(x, c);
	if (rc < 0)
		return rc;
	if (!c->authed && req->kind != RPC_REQ_AUTH &&
	    req->kind != RPC_REQ_NONE) {
		metrics_inc(&x->m->unauthenticated_refused);
		return rpc_encode_error(&c->out, req->id,
					RPC_E_UNAUTHENTICATED,
					"authenticate first (Auth)");
	}
	switch (req->kind) {
	case RPC_REQ_AUTH:
		return rpc_auth(x, c, req);
	case RPC_REQ_STATS:
		return rpc_stats(x, c, req);
	case RPC_REQ_APPLY:
		if (c->principal != NULL && !c->principal->may_apply)
			return rpc_encode_error(&c->out, req->id,
						RPC_E_FORBIDDEN,
						"this principal may not apply "
						"changes");
		return rpc_apply(x, c, req);
	case RPC_REQ_REJECT:
		if (!principal_may_reject(c->principal))
			return rpc_encode_error(&c->out, req->id,
						RPC_E_FORBIDDEN,
						"this principal may not reject "
						"(no 'reject' right)");
		return rpc_reject(x, c, req);
	case RPC_REQ_HISTORY:
		return rpc_history(x, c, req);
	default:
		return rpc_encode_error(&c->out, req->id, RPC_E_BAD_REQUEST,
					"Request has no body (check, apply, "
					"auth or stats)");
	}
}

/* Replies with an error (id 0) after what is queued, then closes. */
static int rpc_reply_fatal(struct conn_ctx *x, struct conn *c, uint32_t code,
			   const char *message)
{
	int rc = rpc_flush(x, c);

	c->want_close = true;
	if (rc < 0)
		return rc;
	return rpc_encode_error(&c->out, 0, code, message);
}

static uint32_t rpc_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static long rpc_process(struct conn_ctx *x, struct conn *c,
			const char *in, size_t len)
{
	const struct server_config *cfg = x->cfg;
	const uint8_t *buf = (const uint8_t *)in;
	struct rpc_worker *rw = conn_ctx_state(x, &rpc_proto);
	struct rpc_request req;
	size_t pos = 0;
	char msg[128];
	int rc = 0;

	if (rw == NULL)
		return -ENOMEM;
	while (!c->want_close && !c->apply_wait && rc == 0) {
		uint32_t flen, limit;

		if (len - pos < RPC_FRAME_HEADER)
			break;
		if (conn_out_pending(c) > cfg->conn_out_cap_bytes) {
			c->paused = true;
			break;
		}
		flen = rpc_be32(buf + pos);
		limit = c->authed ? cfg->max_frame_bytes
				  : cfg->max_frame_bytes_unauth;
		if (limit > cfg->conn_in_cap_bytes - RPC_FRAME_HEADER)
			limit = cfg->conn_in_cap_bytes - RPC_FRAME_HEADER;
		if (flen > limit) {
			metrics_inc(&x->m->frames_oversize);
			snprintf(msg, sizeof(msg),
				 "frame of %u bytes is over the limit of %u "
				 "bytes%s", flen, limit,
				 c->authed ? "" : " before Auth");
			rc = rpc_reply_fatal(x, c, RPC_E_TOO_LARGE, msg);
			break;
		}
		if (len - pos - RPC_FRAME_HEADER < flen)
			break;
		/* A CheckRequest that fits the batch decodes straight into
		 * it: one walk validates and extracts (rpc_check). */
		int drc = rpc_decode_checks(buf + pos + RPC_FRAME_HEADER, flen,
					    &req, x->in + x->n_in,
					    CONN_BATCH_MAX - x->n_in);

		if (drc == RPC_DECODE_TWO_BODIES) {
			/* Well framed and decodable: refuse this request
			 * only, and go on with the next. */
			pos += RPC_FRAME_HEADER + flen;
			rc = rpc_flush(x, c);
			if (rc < 0)
				break;
			metrics_inc(&x->m->frames_undecodable);
			snprintf(msg, sizeof(msg),
				 "Request: body fields %d (%s) and %d (%s) are "
				 "both set; a Request carries one body (nothing "
				 "of it was done)", req.first_kind,
				 rpc_kind_name(req.first_kind), req.kind,
				 rpc_kind_name(req.kind));
			rc = rpc_encode_error(&c->out, req.id,
					      RPC_E_BAD_REQUEST, msg);
			continue;
		}
		if (drc < 0) {
			metrics_inc(&x->m->frames_undecodable);
			rc = rpc_reply_fatal(x, c, RPC_E_BAD_REQUEST,
					     "frame does not decode as a "
					     "consent.v1.Request");
			break;
		}
		pos += RPC_FRAME_HEADER + flen;
		rc = rpc_handle(x, rw, c, &req);
	}
	if (rc == 0)
		rc = rpc_flush(x, c);
	if (rc < 0)
		return rc;
	return c->want_close ? (long)len : (long)pos;
}

/* ---- the protocol ------------------------------------------------------ */

static int rpc_proto_fatal(struct conn_ctx *x, struct conn *c,
			   enum conn_fatal why)
{
	char msg[96];

	if (why == CONN_FATAL_TOO_LARGE)
		return rpc_reply_fatal(x, c, RPC_E_TOO_LARGE,
				       "input over the per-connection cap");
	snprintf(msg, sizeof(msg), "incomplete frame after %u ms",
		 x->cfg->partial_timeout_ms);
	return rpc_reply_fatal(x, c, RPC_E_TIMEOUT, msg);
}

static int rpc_proto_apply(struct conn_ctx *x, struct conn *c,
			   const struct writer_reply *r)
{
	(void)x;
	return rpc_reply_apply(&c->out, r);
}

const struct conn_proto rpc_proto = {
	.name = "rpc",
	.metrics = METRICS_RPC,
	.process = rpc_process,
	.reply_fatal = rpc_proto_fatal,
	.reply_apply = rpc_proto_apply,
	.ctx_create = rpc_ctx_create,
	.ctx_destroy = free,
	.refusal = (const char *)rpc_refusal,
	.refusal_len = sizeof(rpc_refusal),
};
