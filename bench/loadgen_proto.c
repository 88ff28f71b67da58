/*
 * loadgen_proto: requests out, replies in, for the five wire forms the
 * bench speaks. Encoders append to a buffer; decoders take one whole reply
 * off the front of the input (or say they need more) and compare every
 * field the protocol carries against the expected answer:
 *   rpc          DESIGN §3.2: allow, reason, status, source, consent_date
 *                and the echoed request id;
 *   resp-check   §3.3: [allow, reason, status or nil, consent_date or nil];
 *   resp-mcheck  §3.3: one integer 1/0 per recipient;
 *   redis-get    the stored value "STATUS:SOURCE:DATE", or nil if absent;
 *   redis-mget   one such value or nil per key.
 * A reply that decodes but disagrees is a wrong answer; bytes that are not
 * a reply at all are -EPROTO (the caller drops the connection).
 *
 * The hot path does not decode at all: lg_expect_bytes writes, from the
 * expected answers alone, the bytes a correct server sends (the Verdicts
 * as protobuf-c packs them, the RESP reply as DESIGN §3.3 and Redis shape
 * it), and lg_fast_verify compares a reply with them. Only a reply that
 * differs goes through the decoders above, which judge it by its values.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/loadgen.h"
#include "core/decimal.h"
#include "core/enums.h"
#include "proto/consent.pb-c.h"

#define LG_RPC_FRAME_MAX (64u << 20) /* far above any reply we provoke */
#define LG_RESP_DEPTH_MAX 4

/* ---- buffers ------------------------------------------------------------ */

int lg_buf_reserve(struct lg_buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	char *d = realloc(b->data, cap);
	if (!d)
		return -ENOMEM;
	b->data = d;
	b->cap = cap;
	return 0;
}

void lg_buf_fini(struct lg_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* ---- codec scratch: protobuf-c messages and an unpack arena ------------- */

/* protobuf-c allocates every sub-message and string of a reply; a bump
 * arena reset per reply keeps malloc out of the client's hot path, so the
 * client measures the server rather than its own allocator. */
struct arena {
	char *base;
	size_t cap, used;
	void **spill; /* blocks that did not fit, freed at reset */
	size_t n_spill, cap_spill;
};

struct resp_elem {
	char type;        /* '+', '-', ':', '$', '*', or 'n' for nil */
	long long ival;   /* ':' value, '*' count */
	const char *str;  /* '+', '-', '$' */
	size_t len;
};

struct lg_codec {
	uint32_t batch;
	Consent__V1__Check *checks;
	Consent__V1__Check **check_ptrs;
	struct arena arena;
	ProtobufCAllocator alloc;
	struct resp_elem *elems; /* top level + one per array member */
};

static void *arena_alloc(void *data, size_t size)
{
	struct arena *a = data;
	size = (size + 15) & ~(size_t)15;
	if (a->used + size <= a->cap) {
		void *p = a->base + a->used;
		a->used += size;
		return p;
	}
	if (a->n_spill == a->cap_spill) {
		size_t ncap = a->cap_spill ? a->cap_spill * 2 : 16;
		void **ns = realloc(a->spill, ncap * sizeof(*ns));
		if (!ns)
			return NULL;
		a->spill = ns;
		a->cap_spill = ncap;
	}
	void *p = malloc(size);
	if (p)
		a->spill[a->n_spill++] = p;
	return p;
}

static void arena_free(void *data, void *ptr)
{
	(void)data; /* everything goes at the reset */
	(void)ptr;
}

static void arena_reset(struct arena *a)
{
	for (size_t i = 0; i < a->n_spill; i++)
		free(a->spill[i]);
	a->n_spill = 0;
	a->used = 0;
}

int lg_codec_create(uint32_t batch, struct lg_codec **out)
{
	struct lg_codec *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->batch = batch;
	c->checks = calloc(batch, sizeof(*c->checks));
	c->check_ptrs = calloc(batch, sizeof(*c->check_ptrs));
	c->elems = calloc((size_t)batch + 1, sizeof(*c->elems));
	c->arena.cap = 4096 + (size_t)batch * 160;
	c->arena.base = malloc(c->arena.cap);
	if (!c->checks || !c->check_ptrs || !c->elems || !c->arena.base) {
		lg_codec_destroy(c);
		return -ENOMEM;
	}
	c->alloc.alloc = arena_alloc;
	c->alloc.free = arena_free;
	c->alloc.allocator_data = &c->arena;
	*out = c;
	return 0;
}

void lg_codec_destroy(struct lg_codec *c)
{
	if (!c)
		return;
	arena_reset(&c->arena);
	free(c->arena.spill);
	free(c->arena.base);
	free(c->checks);
	free(c->check_ptrs);
	free(c->elems);
	free(c);
}

/* ---- text helpers ------------------------------------------------------- */

int lg_redis_key(const struct synth_record *rec, char *buf, size_t cap)
{
	size_t rlen = strlen(rec->recipient);
	if (cap < rlen + 40)
		return -ENOSPC;
	char *p = buf;
	*p++ = 'c';
	*p++ = ':';
	p = decimal_put_u64(p, rec->brand_code);
	*p++ = ':';
	p = decimal_put_u64(p, rec->channel);
	*p++ = ':';
	p = decimal_put_u64(p, rec->rtype);
	*p++ = ':';
	memcpy(p, rec->recipient, rlen);
	p += rlen;
	*p = '\0';
	return (int)(p - buf);
}

int lg_redis_value(uint8_t status, uint8_t source, int64_t consent_date,
		   char *buf, size_t cap)
{
	if (cap < 48)
		return -ENOSPC;
	char *p = buf;
	p = decimal_put_u64(p, status);
	*p++ = ':';
	p = decimal_put_u64(p, source);
	*p++ = ':';
	p = decimal_put_i64(p, consent_date);
	*p = '\0';
	return (int)(p - buf);
}

/* ---- RESP encoding ------------------------------------------------------ */

/* Room for a header or a bulk argument's framing. */
#define RESP_FRAME_SLACK 32

static char *resp_header(char *p, char kind, uint64_t n)
{
	*p++ = kind;
	p = decimal_put_u64(p, n);
	*p++ = '\r';
	*p++ = '\n';
	return p;
}

static char *resp_bulk(char *p, const char *s, size_t len)
{
	p = resp_header(p, '$', len);
	memcpy(p, s, len);
	p += len;
	*p++ = '\r';
	*p++ = '\n';
	return p;
}

static char *resp_bulk_u64(char *p, uint64_t v)
{
	char num[24];
	size_t len = (size_t)(decimal_put_u64(num, v) - num);
	return resp_bulk(p, num, len);
}

static char *resp_bulk_str(char *p, const char *s)
{
	return resp_bulk(p, s, strlen(s));
}

static int encode_resp(enum lg_proto proto, const struct lg_check *checks,
		       uint32_t n, struct lg_buf *out)
{
	/* Bound: every argument is at most a recipient or a key. */
	size_t bound = (size_t)(n + 6) * (RECIPIENT_TEXT_MAX + 64);
	int rc = lg_buf_reserve(out, bound);
	if (rc < 0)
		return rc;
	char *p = out->data + out->len;
	char key[RECIPIENT_TEXT_MAX + 64];
	const struct synth_record *r0 = &checks[0].rec;

	switch (proto) {
	case LG_PROTO_RESP_CHECK:
		p = resp_header(p, '*', 5);
		p = resp_bulk(p, "CHECK", 5);
		p = resp_bulk_str(p, r0->recipient);
		p = resp_bulk_u64(p, r0->brand_code);
		p = resp_bulk_str(p, enums_channel_name(r0->channel));
		p = resp_bulk_str(p, enums_rtype_name(r0->rtype));
		break;
	case LG_PROTO_RESP_MCHECK:
		p = resp_header(p, '*', 5 + (uint64_t)n);
		p = resp_bulk(p, "MCHECK", 6);
		p = resp_bulk_u64(p, r0->brand_code);
		p = resp_bulk_str(p, enums_channel_name(r0->channel));
		p = resp_bulk_str(p, enums_rtype_name(r0->rtype));
		p = resp_bulk(p, "TICARI", 6);
		for (uint32_t i = 0; i < n; i++)
			p = resp_bulk_str(p, checks[i].rec.recipient);
		break;
	case LG_PROTO_REDIS_GET:
	case LG_PROTO_REDIS_MGET:
		if (proto == LG_PROTO_REDIS_GET) {
			p = resp_header(p, '*', 2);
			p = resp_bulk(p, "GET", 3);
		} else {
			p = resp_header(p, '*', 1 + (uint64_t)n);
			p = resp_bulk(p, "MGET", 4);
		}
		for (uint32_t i = 0; i < n; i++) {
			int klen = lg_redis_key(&checks[i].rec, key, sizeof(key));
			if (klen < 0)
				return klen;
			p = resp_bulk(p, key, (size_t)klen);
		}
		break;
	default:
		return -EINVAL;
	}
	out->len = (size_t)(p - out->data);
	return 0;
}

/* ---- RPC encoding ------------------------------------------------------- */

static int encode_rpc(struct lg_codec *c, uint64_t id,
		      const struct lg_check *checks, uint32_t n,
		      struct lg_buf *out)
{
	Consent__V1__CheckRequest creq = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	if (n > c->batch)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		Consent__V1__Check *ck = &c->checks[i];
		consent__v1__check__init(ck);
		/* protobuf-c's char * is not const, but pack only reads it. */
		ck->recipient = (char *)checks[i].rec.recipient;
		if (n == 1) {
			ck->brand_code = checks[i].rec.brand_code;
			ck->channel = checks[i].rec.channel;
			ck->recipient_type = checks[i].rec.rtype;
		}
		c->check_ptrs[i] = ck;
	}
	if (n > 1) { /* a campaign: the request carries the shared fields */
		creq.brand_code = checks[0].rec.brand_code;
		creq.channel = checks[0].rec.channel;
		creq.recipient_type = checks[0].rec.rtype;
	}
	creq.n_checks = n;
	creq.checks = c->check_ptrs;
	req.id = id;
	req.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
	req.check = &creq;

	size_t len = consent__v1__request__get_packed_size(&req);
	if (len > LG_RPC_FRAME_MAX)
		return -EMSGSIZE;
	int rc = lg_buf_reserve(out, 4 + len);
	if (rc < 0)
		return rc;
	unsigned char *p = (unsigned char *)out->data + out->len;
	p[0] = (unsigned char)(len >> 24);
	p[1] = (unsigned char)(len >> 16);
	p[2] = (unsigned char)(len >> 8);
	p[3] = (unsigned char)len;
	consent__v1__request__pack(&req, p + 4);
	out->len += 4 + len;
	return 0;
}

int lg_encode(struct lg_codec *c, enum lg_proto proto, uint64_t id,
	      const struct lg_check *checks, uint32_t n, struct lg_buf *out)
{
	if (n == 0)
		return -EINVAL;
	if (proto == LG_PROTO_RPC)
		return encode_rpc(c, id, checks, n, out);
	return encode_resp(proto, checks, n, out);
}

/* ---- reply checks ------------------------------------------------------- */

static void note(struct lg_reply *r, const struct lg_expect *e,
		 const char *fmt, const char *got)
{
	if (r->detail[0])
		return;
	snprintf(r->detail, sizeof(r->detail),
		 "key %s%llu: expected allow=%u reason=%s status=%u source=%u "
		 "date=%lld; %s%s%.240s",
		 e && (e->key & LG_KEY_ABSENT) ? "absent#" : "record#",
		 e ? (unsigned long long)(e->key & ~LG_KEY_ABSENT) : 0ull,
		 e ? e->allow : 0, e ? enums_reason_name(e->reason) : "-",
		 e ? e->status : 0, e ? e->source : 0,
		 e ? (long long)e->consent_date : 0ll, fmt, fmt[0] ? " " : "",
		 got ? got : "");
}

/* Names the first field (in field order) where verdict v differs from e,
 * into buf; false when they agree. */
static bool verdict_diff(const Consent__V1__Verdict *v,
			 const struct lg_expect *e, char *buf, size_t cap)
{
	if ((uint8_t)!!v->allow != e->allow)
		snprintf(buf, cap, "allow differs (expected %u, got %d)",
			 e->allow, (int)v->allow);
	else if ((int)v->reason != e->reason)
		snprintf(buf, cap, "reason differs (expected %s, got %s)",
			 enums_reason_name(e->reason),
			 enums_reason_name((int)v->reason));
	else if ((int)v->status != e->status)
		snprintf(buf, cap, "status differs (expected %u, got %d)",
			 e->status, (int)v->status);
	else if ((int)v->source != e->source)
		snprintf(buf, cap, "source differs (expected %u, got %d)",
			 e->source, (int)v->source);
	else if (v->consent_date != e->consent_date)
		snprintf(buf, cap, "consent_date differs (expected %lld, got %lld)",
			 (long long)e->consent_date, (long long)v->consent_date);
	else
		return false;
	return true;
}

static long decode_rpc(struct lg_codec *c, uint64_t id,
		       const struct lg_expect *expect, uint32_t n,
		       const char *in, size_t len, struct lg_reply *out)
{
	if (len < 4)
		return 0;
	const unsigned char *u = (const unsigned char *)in;
	uint32_t flen = (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 |
			(uint32_t)u[2] << 8 | u[3];
	if (flen > LG_RPC_FRAME_MAX)
		return -EPROTO;
	if (len < 4 + (size_t)flen)
		return 0;
	long used = 4 + (long)flen;

	arena_reset(&c->arena);
	Consent__V1__Response *resp =
		consent__v1__response__unpack(&c->alloc, flen, u + 4);
	out->checks = n;
	if (!resp) {
		out->wrong = n;
		note(out, &expect[0], "reply:", "Response did not decode");
		return used;
	}
	if (resp->id != id) {
		char got[64];
		snprintf(got, sizeof(got), "id %llu, sent %llu",
			 (unsigned long long)resp->id, (unsigned long long)id);
		out->wrong = n;
		note(out, &expect[0], "reply:", got);
		return used;
	}
	if (resp->body_case != CONSENT__V1__RESPONSE__BODY_CHECK) {
		out->wrong = n;
		note(out, &expect[0], "reply: not a CheckResponse:",
		     resp->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
				     resp->error ? resp->error->message : "?");
		return used;
	}
	const Consent__V1__CheckResponse *cr = resp->check;
	if (cr->n_verdicts != n) {
		char got[64];
		snprintf(got, sizeof(got), "%zu verdicts for %u checks",
			 cr->n_verdicts, n);
		out->wrong = n;
		note(out, &expect[0], "reply:", got);
		return used;
	}
	for (uint32_t i = 0; i < n; i++) {
		const Consent__V1__Verdict *v = cr->verdicts[i];
		const struct lg_expect *e = &expect[i];
		char diff[96];
		if (!verdict_diff(v, e, diff, sizeof(diff)))
			continue;
		out->wrong++;
		if (out->detail[0])
			continue;
		char got[240];
		snprintf(got, sizeof(got),
			 "verdict %u of %u: %s; got allow=%d reason=%s status=%d "
			 "source=%d date=%lld %.40s", i, n, diff, (int)v->allow,
			 enums_reason_name((int)v->reason), (int)v->status,
			 (int)v->source, (long long)v->consent_date,
			 v->error ? v->error : "");
		note(out, e, "", got);
	}
	return used;
}

/* Parses one RESP element at in[*pos..len). Nested arrays below the first
 * level are walked and skipped (their element is left as '*').
 * Returns 1, 0 for "need more", or -EPROTO. */
static int resp_parse(const char *in, size_t len, size_t *pos,
		      struct resp_elem *el, struct resp_elem *children,
		      uint32_t max_children, int depth)
{
	if (depth > LG_RESP_DEPTH_MAX)
		return -EPROTO;
	size_t p = *pos;
	if (p >= len)
		return 0;
	const char *eol = memchr(in + p, '\r', len - p);
	if (!eol || (size_t)(eol - in) + 1 >= len)
		return 0;
	if (eol[1] != '\n')
		return -EPROTO;
	size_t line_end = (size_t)(eol - in);
	char kind = in[p];
	const char *body = in + p + 1;
	size_t blen = line_end - p - 1;
	size_t next = line_end + 2;

	el->type = kind;
	el->str = body;
	el->len = blen;
	el->ival = 0;
	if (kind == '+' || kind == '-') {
		*pos = next;
		return 1;
	}
	if (kind == '_') { /* RESP3 null */
		el->type = 'n';
		*pos = next;
		return 1;
	}
	if (kind != ':' && kind != '$' && kind != '*')
		return -EPROTO;
	/* An integer: optional '-', 1..19 digits. */
	if (blen == 0 || blen > 20)
		return -EPROTO;
	bool neg = body[0] == '-';
	long long v = 0;
	for (size_t i = neg; i < blen; i++) {
		if (body[i] < '0' || body[i] > '9')
			return -EPROTO;
		v = v * 10 + (body[i] - '0');
	}
	if (neg)
		v = -v;
	el->ival = v;
	if (kind == ':') {
		*pos = next;
		return 1;
	}
	if (v == -1) {
		el->type = 'n';
		*pos = next;
		return 1;
	}
	if (v < 0)
		return -EPROTO;
	if (kind == '$') {
		if ((size_t)v > LG_RPC_FRAME_MAX)
			return -EPROTO;
		if (len - next < (size_t)v + 2)
			return 0;
		if (in[next + v] != '\r' || in[next + v + 1] != '\n')
			return -EPROTO;
		el->str = in + next;
		el->len = (size_t)v;
		*pos = next + (size_t)v + 2;
		return 1;
	}
	/* An array: members go to children[] while there is room, the rest
	 * (and anything deeper) is parsed and dropped. */
	size_t q = next;
	for (long long i = 0; i < v; i++) {
		struct resp_elem tmp;
		struct resp_elem *dst = children && (uint64_t)i < max_children ?
						&children[i] : &tmp;
		int rc = resp_parse(in, len, &q, dst, NULL, 0, depth + 1);
		if (rc <= 0)
			return rc;
	}
	*pos = q;
	return 1;
}

static bool elem_is(const struct resp_elem *el, char type, const char *s)
{
	size_t n = strlen(s);
	return el->type == type && el->len == n && memcmp(el->str, s, n) == 0;
}

static const char *elem_text(const struct resp_elem *el, char *buf,
			     size_t cap)
{
	switch (el->type) {
	case 'n':
		return "(nil)";
	case ':':
		snprintf(buf, cap, "(integer) %lld", el->ival);
		return buf;
	case '*':
		snprintf(buf, cap, "(array of %lld)", el->ival);
		return buf;
	default:
		snprintf(buf, cap, "%c%.*s", el->type,
			 (int)(el->len > 100 ? 100 : el->len), el->str);
		return buf;
	}
}

/* One CHECK reply: [allow, reason, status|nil, consent_date|nil]. */
static bool check_reply_ok(const struct resp_elem *top,
			   const struct resp_elem *m, const struct lg_expect *e)
{
	if (top->type != '*' || top->ival != 4)
		return false;
	if (m[0].type != ':' || m[0].ival != e->allow)
		return false;
	const char *reason = enums_reason_name(e->reason);
	if (!elem_is(&m[1], '+', reason) && !elem_is(&m[1], '$', reason))
		return false;
	if (e->status) {
		return elem_is(&m[2], '$', enums_status_name(e->status)) &&
		       m[3].type == ':' && m[3].ival == e->consent_date;
	}
	return m[2].type == 'n' && m[3].type == 'n';
}

static bool value_ok(const struct resp_elem *el, const struct lg_expect *e)
{
	if (!e->status)
		return el->type == 'n';
	char val[64];
	int vlen = lg_redis_value(e->status, e->source, e->consent_date, val,
				  sizeof(val));
	return vlen > 0 && el->type == '$' && el->len == (size_t)vlen &&
	       memcmp(el->str, val, (size_t)vlen) == 0;
}

static long decode_resp(struct lg_codec *c, enum lg_proto proto,
			const struct lg_expect *expect, uint32_t n,
			const char *in, size_t len, struct lg_reply *out)
{
	struct resp_elem top;
	struct resp_elem *m = c->elems;
	size_t pos = 0;
	uint32_t want_members = proto == LG_PROTO_RESP_CHECK ? 4 : n;
	/* CHECK has 4 members whatever the batch; elems has batch + 1 >= 2
	 * slots, so give it a local array. */
	struct resp_elem four[4] = { 0 };
	if (proto == LG_PROTO_RESP_CHECK)
		m = four;
	int rc = resp_parse(in, len, &pos, &top, m, want_members, 0);
	if (rc <= 0)
		return rc;
	out->checks = n;
	char got[160];

	if (top.type == '-') {
		out->wrong = n;
		note(out, &expect[0], "got error", elem_text(&top, got, sizeof(got)));
		return (long)pos;
	}
	switch (proto) {
	case LG_PROTO_RESP_CHECK:
		if (!check_reply_ok(&top, m, &expect[0])) {
			out->wrong = 1;
			char a[40], b[60], s[60], d[40];
			snprintf(got, sizeof(got), "[%s, %s, %s, %s]",
				 top.type == '*' && top.ival == 4 ?
					 elem_text(&m[0], a, sizeof(a)) : "?",
				 top.type == '*' && top.ival == 4 ?
					 elem_text(&m[1], b, sizeof(b)) : "?",
				 top.type == '*' && top.ival == 4 ?
					 elem_text(&m[2], s, sizeof(s)) : "?",
				 top.type == '*' && top.ival == 4 ?
					 elem_text(&m[3], d, sizeof(d)) :
					 elem_text(&top, d, sizeof(d)));
			note(out, &expect[0], "got", got);
		}
		return (long)pos;
	case LG_PROTO_REDIS_GET:
		if (!value_ok(&top, &expect[0])) {
			out->wrong = 1;
			note(out, &expect[0], "got", elem_text(&top, got, sizeof(got)));
		}
		return (long)pos;
	case LG_PROTO_RESP_MCHECK:
	case LG_PROTO_REDIS_MGET:
		if (top.type != '*' || top.ival != (long long)n) {
			out->wrong = n;
			note(out, &expect[0], "got", elem_text(&top, got, sizeof(got)));
			return (long)pos;
		}
		for (uint32_t i = 0; i < n; i++) {
			bool ok = proto == LG_PROTO_RESP_MCHECK ?
					  m[i].type == ':' && m[i].ival == expect[i].allow :
					  value_ok(&m[i], &expect[i]);
			if (ok)
				continue;
			out->wrong++;
			if (out->detail[0])
				continue;
			char el[120];
			snprintf(got, sizeof(got), "member %u of %u: %s", i, n,
				 elem_text(&m[i], el, sizeof(el)));
			note(out, &expect[i], "got", got);
		}
		return (long)pos;
	default:
		return -EINVAL;
	}
}

long lg_decode(struct lg_codec *c, enum lg_proto proto, uint64_t id,
	       const struct lg_expect *expect, uint32_t n, const char *in,
	       size_t len, struct lg_reply *out)
{
	out->wrong = 0;
	out->checks = 0;
	out->decoded = true;
	out->detail[0] = '\0';
	if (proto == LG_PROTO_RPC)
		return decode_rpc(c, id, expect, n, in, len, out);
	return decode_resp(c, proto, expect, n, in, len, out);
}

/* ---- expected reply bytes and the byte-wise verdict --------------------- */

static char *put_varint(char *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (char)(v | 0x80);
		v >>= 7;
	}
	*p++ = (char)v;
	return p;
}

static char *put_lit(char *p, const char *s)
{
	size_t n = strlen(s);
	memcpy(p, s, n);
	return p + n;
}

/* One RESP value in Redis's RESP2 form: "$LEN\r\nSTATUS:SOURCE:DATE\r\n",
 * or the nil bulk string for a key that has no record. */
static char *expect_value(char *p, const struct lg_expect *e)
{
	if (!e->status)
		return put_lit(p, "$-1\r\n");
	char val[64];
	int vlen = lg_redis_value(e->status, e->source, e->consent_date, val,
				  sizeof(val));
	return resp_bulk(p, val, (size_t)vlen);
}

int lg_expect_bytes(enum lg_proto proto, const struct lg_expect *expect,
		    uint32_t n, struct lg_buf *out)
{
	/* Per check: a Verdict is at most 2 + 2 + 2 + 3 + 11 bytes plus its
	 * tag and length; a CHECK reply is at most about 80 bytes. */
	int rc = lg_buf_reserve(out, 32 + (size_t)n * 96);
	if (rc < 0)
		return rc;
	char *p = out->data + out->len;

	switch (proto) {
	case LG_PROTO_RPC:
		for (uint32_t i = 0; i < n; i++) {
			const struct lg_expect *e = &expect[i];
			Consent__V1__Verdict v = CONSENT__V1__VERDICT__INIT;
			v.allow = e->allow;
			v.reason = (Consent__V1__Reason)e->reason;
			v.status = (Consent__V1__Status)e->status;
			v.source = (Consent__V1__Source)e->source;
			v.consent_date = e->consent_date;
			size_t size = consent__v1__verdict__get_packed_size(&v);
			if (size > 64)
				return -EMSGSIZE;
			*p++ = 0x0a; /* CheckResponse.verdicts, LEN */
			p = put_varint(p, size);
			p += consent__v1__verdict__pack(&v, (uint8_t *)p);
		}
		break;
	case LG_PROTO_RESP_CHECK: {
		/* DESIGN §3.3: [allow, reason (simple string), status (bulk)
		 * or nil, consent_date (integer) or nil]. */
		const struct lg_expect *e = &expect[0];
		p = put_lit(p, e->allow ? "*4\r\n:1\r\n+" : "*4\r\n:0\r\n+");
		p = put_lit(p, enums_reason_name(e->reason));
		p = put_lit(p, "\r\n");
		if (e->status) {
			p = resp_bulk_str(p, enums_status_name(e->status));
			*p++ = ':';
			p = decimal_put_i64(p, e->consent_date);
			p = put_lit(p, "\r\n");
		} else {
			p = put_lit(p, "$-1\r\n$-1\r\n");
		}
		break;
	}
	case LG_PROTO_RESP_MCHECK:
		p = resp_header(p, '*', n);
		for (uint32_t i = 0; i < n; i++)
			p = put_lit(p, expect[i].allow ? ":1\r\n" : ":0\r\n");
		break;
	case LG_PROTO_REDIS_GET:
		p = expect_value(p, &expect[0]);
		break;
	case LG_PROTO_REDIS_MGET:
		p = resp_header(p, '*', n);
		for (uint32_t i = 0; i < n; i++)
			p = expect_value(p, &expect[i]);
		break;
	default:
		return -EINVAL;
	}
	out->len = (size_t)(p - out->data);
	return 0;
}

/* A varint at p (at most 10 bytes, before end); its length, 0 if none. */
static size_t get_varint(const unsigned char *p, const unsigned char *end,
			 uint64_t *out)
{
	uint64_t v = 0;
	for (size_t i = 0; i < 10 && p + i < end; i++) {
		v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*out = v;
			return i + 1;
		}
	}
	return 0;
}

/* A Response frame that is exactly: id (field 1, once), then one
 * CheckResponse (field 2) holding the expected verdicts and after them
 * nothing but applied_sequence and data_as_of (fields 2 and 3, varints).
 * Anything else (another field, a repeat, another order) may still be a
 * right answer, so it is left to the decoder. */
static long fast_rpc(uint64_t id, const char *exp, size_t exp_len,
		     const char *in, size_t len)
{
	if (len < 4)
		return 0;
	const unsigned char *u = (const unsigned char *)in;
	uint32_t flen = (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 |
			(uint32_t)u[2] << 8 | u[3];
	if (flen > LG_RPC_FRAME_MAX)
		return LG_FAST_UNSURE;
	if (len < 4 + (size_t)flen)
		return 0;
	const unsigned char *p = u + 4, *end = p + flen;
	uint64_t v;
	size_t m;

	if (p == end || *p++ != 0x08)
		return LG_FAST_UNSURE;
	if (!(m = get_varint(p, end, &v)) || v != id)
		return LG_FAST_UNSURE;
	p += m;
	if (p == end || *p++ != 0x12)
		return LG_FAST_UNSURE;
	if (!(m = get_varint(p, end, &v)) || v != (uint64_t)(end - p - m))
		return LG_FAST_UNSURE;
	p += m; /* the CheckResponse runs to the end of the frame */
	if ((size_t)(end - p) < exp_len || memcmp(p, exp, exp_len) != 0)
		return LG_FAST_UNSURE;
	p += exp_len;
	while (p < end) {
		if (*p != 0x10 && *p != 0x18)
			return LG_FAST_UNSURE;
		if (!(m = get_varint(p + 1, end, &v)))
			return LG_FAST_UNSURE;
		p += 1 + m;
	}
	return 4 + (long)flen;
}

long lg_fast_verify(enum lg_proto proto, uint64_t id, const char *exp,
		    size_t exp_len, const char *in, size_t len)
{
	if (proto == LG_PROTO_RPC)
		return fast_rpc(id, exp, exp_len, in, len);
	/* RESP is self-delimiting: when the input starts with the whole
	 * expected reply, that is the reply, whatever follows it. */
	if (len >= exp_len)
		return memcmp(in, exp, exp_len) == 0 ? (long)exp_len :
						       LG_FAST_UNSURE;
	return memcmp(in, exp, len) == 0 ? 0 : LG_FAST_UNSURE;
}
