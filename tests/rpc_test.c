/* rpc: the hand-written Request decoder and Response encoders held to
 * protobuf-c (identical bytes out, identical acceptance and meaning in),
 * then the RPC port through conn_feed over a real index: split at every
 * byte, limits before and after Auth, errors, batching, the output cap and
 * backpressure. Decoder inputs sit at the end of a page followed by a
 * PROT_NONE page, so an over-read faults at once. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "index/check.h"
#include "index/history.h"
#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/evidence.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/rpc.h"
#include "tests/check.h"
#include "tests/pb_fields.h"
#include "tests/rpc_diff.h"

#define D1 1700000000LL
#define BRAND 600123u
#define BRAND2 700456u
/* SHA-256 of "s3cret" and of "applier". */
#define TOKENS_TEXT                                                          \
	"alice 1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0 " \
	"600123\n"                                                           \
	"root 3fcabe200117fdc94335282044b396a4749a2e4fe94a445f922be658d19e7267 " \
	"* apply\n"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic, so a failure reproduces. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

/* ---- guard page -------------------------------------------------------- */

#define GUARD_MAX (1u << 20)
static uint8_t *guard_base;
static size_t guard_rw;

/* Copies data to the end of a readable region followed by PROT_NONE. */
static const uint8_t *guard(const void *data, size_t len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	if (guard_base == NULL) {
		guard_rw = (GUARD_MAX + page - 1) / page * page;
		guard_base = mmap(NULL, guard_rw + page, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (guard_base == MAP_FAILED) {
			perror("mmap");
			exit(1);
		}
		mprotect(guard_base + guard_rw, page, PROT_NONE);
	}
	if (len > guard_rw)
		abort();
	memcpy(guard_base + guard_rw - len, data, len);
	return guard_base + guard_rw - len;
}

/* ---- the oracle comparison --------------------------------------------- */

/* protobuf-c keeps strings NUL-terminated, so it sees up to the first NUL;
 * ours are the whole bytes. Equal when they agree up to that NUL. */
static bool same_string(const char *pc, const void *ours, size_t len)
{
	size_t n = strnlen((const char *)ours, len);

	return strlen(pc) == n && memcmp(pc, ours, n) == 0;
}


/* Decodes buf both ways; returns NULL when they agree, else what differs.
 * rpc_decode_checks too, with room for all checks and for one less. */
static const char *decode_diff(const uint8_t *buf, size_t len)
{
	Consent__V1__Request *m = consent__v1__request__unpack(NULL, len, buf);
	struct rpc_request req;
	const char *diff = NULL;
	int rc = rpc_decode(buf, len, &req);

	if (rc == 0 && req.kind == RPC_REQ_CHECK) {
		diff = decode_checks_diff(buf, len, req.n_checks);
		if (diff == NULL && req.n_checks > 0)
			diff = decode_checks_diff(buf, len, req.n_checks - 1);
	} else {
		diff = decode_checks_diff(buf, len, 256);
	}
	if (diff != NULL) {
		consent__v1__request__free_unpacked(m, NULL);
		return diff;
	}

	/* Our one departure from protobuf-c: a Request whose body oneof is
	 * set twice is refused (protobuf-c keeps the last member, the spec
	 * merges them). */
	int bodies = m != NULL ? pb_fields_count(buf, len, 2, 7) : 0;

	if (m != NULL && bodies > 1) {
		if (rc != RPC_DECODE_TWO_BODIES)
			diff = "two body fields, not refused as such";
		goto out;
	}
	if (rc == RPC_DECODE_TWO_BODIES) {
		diff = "refused as two bodies, but protobuf-c sees fewer";
		goto out;
	}
	if ((m == NULL) != (rc < 0)) {
		diff = m == NULL ? "protobuf-c refused, rpc_decode accepted"
				 : "protobuf-c accepted, rpc_decode refused";
		goto out;
	}
	if (m == NULL)
		return NULL;
	if (m->id != req.id) {
		diff = "id";
		goto out;
	}
	if ((int)m->body_case != req.kind) {
		diff = "body";
		goto out;
	}
	if (req.kind == RPC_REQ_AUTH &&
	    !same_string(m->auth->token, req.token, req.token_len))
		diff = "token";
	if (req.kind == RPC_REQ_STATS &&
	    !same_string(m->stats->origin, req.origin, req.origin_len))
		diff = "stats origin";
	if (req.kind == RPC_REQ_CHECK) {
		Consent__V1__CheckRequest *cr = m->check;
		struct rpc_check_iter it;
		struct check_input in;

		if (cr->n_checks != req.n_checks || cr->brand_code != req.brand_code ||
		    (int)cr->channel != req.channel ||
		    (int)cr->recipient_type != req.rtype ||
		    (int)cr->purpose != req.purpose) {
			diff = "check request fields";
			goto out;
		}
		rpc_check_iter_init(&it, &req);
		for (size_t i = 0; i < cr->n_checks; i++) {
			Consent__V1__Check *c = cr->checks[i];
			uint32_t b = c->brand_code ? c->brand_code : cr->brand_code;
			int ch = c->channel ? (int)c->channel : (int)cr->channel;
			int rt = c->recipient_type ? (int)c->recipient_type
						   : (int)cr->recipient_type;
			int pu = c->purpose ? (int)c->purpose : (int)cr->purpose;

			if (!rpc_check_next(&it, &req, &in)) {
				diff = "fewer checks";
				goto out;
			}
			if (!same_string(c->recipient, in.recipient,
					 in.recipient_len) ||
			    b != in.brand_code || ch != in.channel ||
			    rt != in.rtype || pu != in.purpose ||
			    c->as_of_time != in.as_of_time ||
			    c->as_of_sequence != in.as_of_sequence) {
				diff = "a check";
				goto out;
			}
		}
		if (rpc_check_next(&it, &req, &in))
			diff = "more checks";
	}
out:
	consent__v1__request__free_unpacked(m, NULL);
	return diff;
}

/* ---- building inputs with protobuf-c ----------------------------------- */

static const char *const recipients[] = {
	"+905321234567", "05321234567", "5321234568", "ali@example.com",
	"", "not a number", "+4915112345678", "(532) 123 45 67",
};

static size_t random_request(uint8_t *out, size_t cap)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__AuthRequest ar = CONSENT__V1__AUTH_REQUEST__INIT;
	Consent__V1__StatsRequest sr = CONSENT__V1__STATS_REQUEST__INIT;
	Consent__V1__ApplyRequest ap = CONSENT__V1__APPLY_REQUEST__INIT;
	Consent__V1__HistoryRequest hr = CONSENT__V1__HISTORY_REQUEST__INIT;
	Consent__V1__RejectRequest rj = CONSENT__V1__REJECT_REQUEST__INIT;
	Consent__V1__Consent cons[3], *consp[3];
	Consent__V1__Check checks[40], *ptrs[40];
	size_t n;

	req.id = rnd() % 4 ? rnd() >> (rnd() % 64) : 0;
	switch (rnd() % 7) {
	case 0:
	case 1:
		req.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
		req.check = &cr;
		cr.n_checks = rnd() % 40;
		cr.checks = ptrs;
		for (size_t i = 0; i < cr.n_checks; i++) {
			Consent__V1__Check c = CONSENT__V1__CHECK__INIT;

			c.recipient = (char *)recipients[rnd() % 8];
			c.brand_code = rnd() % 3 ? (uint32_t)rnd() % 1000000 : 0;
			c.channel = (Consent__V1__Channel)(rnd() % 5);
			c.recipient_type = (Consent__V1__RecipientType)(rnd() % 3);
			c.purpose = (Consent__V1__Purpose)(rnd() % 3);
			if (rnd() % 8 == 0)
				c.as_of_time = (int64_t)(rnd() >> (rnd() % 64));
			if (rnd() % 8 == 0)
				c.as_of_sequence = rnd() >> (rnd() % 64);
			checks[i] = c;
			ptrs[i] = &checks[i];
		}
		cr.brand_code = (uint32_t)rnd();
		cr.channel = (Consent__V1__Channel)(rnd() % 4);
		cr.recipient_type = (Consent__V1__RecipientType)(rnd() % 3);
		cr.purpose = (Consent__V1__Purpose)(rnd() % 3);
		break;
	case 2:
		req.body_case = CONSENT__V1__REQUEST__BODY_AUTH;
		req.auth = &ar;
		ar.token = rnd() % 2 ? "s3cret" : "";
		break;
	case 3:
		req.body_case = CONSENT__V1__REQUEST__BODY_STATS;
		req.stats = &sr;
		sr.origin = rnd() % 2 ? "iys:600123:HS" : "";
		break;
	case 4:
		req.body_case = CONSENT__V1__REQUEST__BODY_HISTORY;
		req.history = &hr;
		hr.recipient = (char *)recipients[rnd() % 8];
		hr.brand_code = (uint32_t)rnd() % 1000000;
		hr.channel = (Consent__V1__Channel)(rnd() % 4);
		hr.recipient_type = (Consent__V1__RecipientType)(rnd() % 3);
		break;
	case 5:
		req.body_case = CONSENT__V1__REQUEST__BODY_REJECT;
		req.reject = &rj;
		rj.recipient = (char *)recipients[rnd() % 8];
		rj.brand_code = (uint32_t)rnd() % 1000000;
		rj.channel = (Consent__V1__Channel)(rnd() % 4);
		rj.source = (Consent__V1__Source)(rnd() % 64);
		break;
	default:
		req.body_case = CONSENT__V1__REQUEST__BODY_APPLY;
		req.apply = &ap;
		ap.n_changes = rnd() % 3;
		ap.changes = consp;
		for (size_t i = 0; i < ap.n_changes; i++) {
			Consent__V1__Consent c = CONSENT__V1__CONSENT__INIT;

			c.recipient = "+905321234567";
			c.brand_code = 5;
			c.consent_date = -(int64_t)(rnd() % 3);
			c.sequence = rnd();
			c.transaction_id = "tx";
			cons[i] = c;
			consp[i] = &cons[i];
		}
		if (rnd() % 2) {
			ap.origin = "iys:600123:HS";
			ap.after_cursor = rnd() % 2 ? "c41" : "";
			ap.cursor = "c42";
		}
		break;
	}
	n = consent__v1__request__get_packed_size(&req);
	if (n > cap)
		abort();
	return consent__v1__request__pack(&req, out);
}

/* Reorders the top-level fields of msg[0..n) into out (reversed, or
 * rotated by one), so fields arrive out of number order. */
struct reorder {
	const uint8_t *start[512];
	size_t len[512];
	size_t n;
};

static void reorder_cb(uint32_t number, const uint8_t *start, size_t n,
		       void *arg)
{
	struct reorder *r = arg;

	(void)number;
	if (r->n < 512) {
		r->start[r->n] = start;
		r->len[r->n++] = n;
	}
}

static size_t reorder_fields(const uint8_t *msg, size_t n, uint8_t *out)
{
	struct reorder r = { .n = 0 };
	size_t pos = 0;
	bool reverse = rnd() % 2;

	if (pb_fields_each(msg, n, reorder_cb, &r) < 0 || r.n >= 512) {
		memcpy(out, msg, n);
		return n;
	}
	for (size_t i = 0; i < r.n; i++) {
		size_t j = reverse ? r.n - 1 - i : (i + 1) % r.n;

		memcpy(out + pos, r.start[j], r.len[j]);
		pos += r.len[j];
	}
	return pos;
}

/* A valid request reshaped as a conformant encoder never writes it, but
 * a peer may: two requests concatenated (protobuf's merge: every field
 * repeated, the body set twice), or fields out of number order at the top
 * or inside the body. */
static size_t random_wire_request(uint8_t *out, size_t cap)
{
	uint8_t a[8192], b[8192];
	size_t n = random_request(a, sizeof(a)), m;

	switch (rnd() % 4) {
	case 0: /* concatenation */
		m = random_request(b, sizeof(b));
		if (rnd() % 2 && n >= 2 && a[0] == 0x08) {
			/* the same request twice: id and body repeated */
			memcpy(b, a, n);
			m = n;
		}
		if (n + m > cap)
			abort();
		memcpy(out, a, n);
		memcpy(out + n, b, m);
		return n + m;
	case 1: /* top-level fields out of order */
		return reorder_fields(a, n, out);
	case 2: { /* the body's fields out of order (same length) */
		uint8_t body[8192];
		uint64_t tag, l;
		size_t pos = 0;

		memcpy(out, a, n);
		while (pos < n) {
			size_t t = pb_fields_varint(a + pos, n - pos, &tag), k;

			if (t == 0 || (tag & 7) != 2) {
				uint64_t v;

				k = t ? pb_fields_varint(a + pos + t,
							 n - pos - t, &v) : 0;
				if (k == 0)
					break;
				pos += t + k;
				continue;
			}
			k = pb_fields_varint(a + pos + t, n - pos - t, &l);
			reorder_fields(a + pos + t + k, (size_t)l, body);
			memcpy(out + pos + t + k, body, (size_t)l);
			pos += t + k + (size_t)l;
		}
		return n;
	}
	default:
		memcpy(out, a, n);
		return n;
	}
}

/* ---- decoder tests ----------------------------------------------------- */

static void test_decode_valid(void)
{
	uint8_t buf[8192];

	for (int i = 0; i < 3000; i++) {
		size_t n = random_request(buf, sizeof(buf));
		const char *d = decode_diff(guard(buf, n), n);

		CHECKF(d == NULL, "request %d (%zu bytes): %s", i, n, d);
	}
	for (int i = 0; i < 6000; i++) {
		uint8_t w[16384];
		size_t n = random_wire_request(w, sizeof(w));
		const char *d = decode_diff(guard(w, n), n);

		CHECKF(d == NULL, "reshaped request %d (%zu bytes): %s", i, n,
		       d);
	}
}

struct edge {
	const char *name;
	const char *bytes;
	size_t len;
	int expect; /* 0 accepted, -1 refused (and protobuf-c agrees) */
};

#define E(name, lit, expect) { name, lit, sizeof(lit) - 1, expect }

static const struct edge edges[] = {
	E("empty", "", 0),
	E("id only", "\x08\x05", 0),
	E("10-byte varint id", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 0),
	E("11-byte varint", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", -1),
	E("unterminated varint", "\x08\xff", -1),
	E("field 0, one-byte tag", "\x00\x01", -1),
	E("field 0, two-byte tag (unknown)", "\x80\x00\x01", 0),
	E("field 0 length-delimited", "\x02\x00", -1),
	E("5-byte length, 5th byte 0x10", "\x82\x01\x83\x80\x80\x80\x10" "abc", -1),
	E("5-byte length 3", "\x82\x01\x83\x80\x80\x80\x00" "abc", 0),
	E("5-byte tag", "\xf8\xff\xff\xff\x0f\x01", 0),
	E("6-byte tag", "\xf8\xff\xff\xff\xff\x0f\x01", -1),
	E("group start", "\x0b", -1),
	E("group end", "\x0c", -1),
	E("wire type 6", "\x0e", -1),
	E("history as fixed64 (known field 6)", "\x31\x01\x02\x03\x04\x05\x06\x07\x08", -1),
	E("fixed64 unknown", "\x71\x01\x02\x03\x04\x05\x06\x07\x08", 0),
	E("fixed64 short", "\x71\x01\x02", -1),
	E("fixed32 unknown", "\x75\x01\x02\x03\x04", 0),
	E("id as length-delimited", "\x0a\x00", -1),
	E("check as varint", "\x10\x01", -1),
	E("empty check request", "\x12\x00", 0),
	E("length past end", "\x12\x05\x00", -1),
	E("6-byte length", "\x12\x80\x80\x80\x80\x80\x00", -1),
	E("check then stats (two bodies)", "\x12\x02\x10\x05\x2a\x00", -1),
	E("stats then check (two bodies)", "\x2a\x00\x12\x04\x0a\x02\x0a\x00", -1),
	E("apply twice (two bodies)", "\x1a\x04\x0a\x02\x58\x01\x1a\x04\x0a\x02\x58\x02", -1),
	E("bad check then stats", "\x12\x02\x10\xff\x2a\x00", -1),
	E("check with checks", "\x12\x0a\x0a\x03\x0a\x01x\x0a\x03\x10\x80\x01", 0),
	E("check: recipient as varint", "\x12\x04\x0a\x02\x08\x01", -1),
	E("check: brand as string", "\x12\x05\x0a\x03\x12\x01x", -1),
	E("check request brand 64-bit", "\x12\x0b\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 0),
	E("two check requests (two bodies)", "\x12\x02\x10\x07\x12\x02\x18\x02", -1),
	E("id twice, last wins", "\x08\x01\x2a\x00\x08\x02", 0),
	E("check: as-of fields", "\x12\x06\x0a\x04\x30\x05\x38\x06", 0),
	E("check: as_of_time as string", "\x12\x05\x0a\x03\x32\x01x", -1),
	E("check request: field 6 unknown", "\x12\x03\x32\x01x", 0),
	E("stats origin", "\x2a\x03\x0a\x01o", 0),
	E("stats origin as varint", "\x2a\x02\x08\x01", -1),
	E("apply origin and cursors", "\x1a\x09\x12\x01o\x1a\x00\x22\x02" "c1", 0),
	E("apply cursor as varint", "\x1a\x02\x20\x01", -1),
	E("history", "\x32\x05\x0a\x01x\x10\x05", 0),
	E("history: brand as string", "\x32\x03\x12\x01x", -1),
	E("reject", "\x3a\x04\x18\x02\x28\x08", 0),
	E("reject: recipient as varint", "\x3a\x02\x08\x01", -1),
	E("auth token", "\x22\x08\x0a\x06s3cret", 0),
	E("auth token twice", "\x22\x06\x0a\x01x\x0a\x01y", 0),
	E("auth token with NUL", "\x22\x05\x0a\x03" "a\x00" "b", 0),
	E("auth token as varint", "\x22\x02\x08\x01", -1),
	E("stats with unknown field", "\x2a\x02\x10\x01", 0),
	E("apply with consent", "\x1a\x06\x0a\x04\x20\x05\x40\x01", 0),
	E("apply with bad consent", "\x1a\x05\x0a\x03\x22\x01x", -1),
	E("apply consent as varint", "\x1a\x02\x08\x01", -1),
	E("unknown field 16 string", "\x82\x01\x02hi", 0),
	E("unknown length too long", "\x82\x01\x09hi", -1),
};

static void test_decode_edges(void)
{
	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
		const struct edge *e = &edges[i];
		const uint8_t *p = guard(e->bytes, e->len);
		struct rpc_request req;
		int rc = rpc_decode(p, e->len, &req);
		const char *d = decode_diff(p, e->len);

		CHECKF((rc < 0 ? -1 : 0) == e->expect, "%s: rpc_decode %d",
		       e->name, rc);
		CHECKF(d == NULL, "%s: %s", e->name, d);
	}
}

static void test_decode_semantics(void)
{
	struct rpc_request req;
	struct rpc_check_iter it;
	struct check_input in;
	/* Per-check fields win; the request's fill what a check leaves
	 * unset (built by protobuf-c: checks first, defaults after). */
	Consent__V1__Request r = CONSENT__V1__REQUEST__INIT;
	Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Check a = CONSENT__V1__CHECK__INIT;
	Consent__V1__Check b = CONSENT__V1__CHECK__INIT;
	Consent__V1__Check *ptrs[2] = { &a, &b };
	uint8_t buf[256];
	size_t n;

	a.recipient = "+905321234567";
	a.channel = CONSENT__V1__CHANNEL__ARAMA;
	b.recipient = "ali@example.com";
	b.brand_code = 99;
	cr.n_checks = 2;
	cr.checks = ptrs;
	cr.brand_code = BRAND;
	cr.channel = CONSENT__V1__CHANNEL__MESAJ;
	cr.purpose = CONSENT__V1__PURPOSE__BILGILENDIRME;
	r.id = 42;
	r.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
	r.check = &cr;
	n = consent__v1__request__pack(&r, buf);
	CHECK(rpc_decode(guard(buf, n), n, &req) == 0);
	CHECK(req.id == 42 && req.kind == RPC_REQ_CHECK && req.n_checks == 2);
	rpc_check_iter_init(&it, &req);
	CHECK(rpc_check_next(&it, &req, &in));
	CHECK(in.recipient_len == 13 && memcmp(in.recipient, "+905321234567", 13) == 0);
	CHECK(in.brand_code == BRAND);                 /* default */
	CHECK(in.channel == CHANNEL_ARAMA);            /* its own */
	CHECK(in.rtype == 0 && in.purpose == PURPOSE_BILGILENDIRME);
	CHECK(rpc_check_next(&it, &req, &in));
	CHECK(in.brand_code == 99 && in.channel == CHANNEL_MESAJ);
	CHECK(!rpc_check_next(&it, &req, &in));
}

/* Random mutations of valid requests and plain noise: rpc_decode must
 * agree with protobuf-c on every one. */
static void test_decode_mutations(void)
{
	uint8_t buf[16384], m[16500];

	for (int i = 0; i < 40000; i++) {
		size_t n = random_wire_request(buf, sizeof(buf)), k;
		const char *d;

		memcpy(m, buf, n);
		switch (rnd() % 6) {
		case 0: /* flip a byte */
			if (n)
				m[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
			break;
		case 1: /* random byte */
			if (n)
				m[rnd() % n] = (uint8_t)rnd();
			break;
		case 2: /* truncate */
			n = n ? rnd() % n : 0;
			break;
		case 3: /* insert a byte */
			k = n ? rnd() % n : 0;
			memmove(m + k + 1, m + k, n - k);
			m[k] = (uint8_t)rnd();
			n++;
			break;
		case 4: /* delete a byte */
			if (n) {
				k = rnd() % n;
				memmove(m + k, m + k + 1, n - k - 1);
				n--;
			}
			break;
		default: /* noise */
			n = rnd() % 64;
			for (k = 0; k < n; k++)
				m[k] = (uint8_t)rnd();
			break;
		}
		d = decode_diff(guard(m, n), n);
		CHECKF(d == NULL, "mutation %d (%zu bytes): %s", i, n, d);
		if (d != NULL) {
			for (k = 0; k < n; k++)
				fprintf(stderr, "%02x ", m[k]);
			fputc('\n', stderr);
			break;
		}
	}
}

/* ---- encoder tests ----------------------------------------------------- */

static const int sources[] = { 0, 1, 6, 12, 13, 32, 40, 63 };
static const char *const errors[] = {
	NULL, "", "recipient: empty", "channel: not ARAMA, MESAJ or EPOSTA",
};

static size_t pack_framed(const Consent__V1__Response *r, uint8_t *out)
{
	size_t n = consent__v1__response__pack(r, out + 4);

	out[0] = (uint8_t)(n >> 24);
	out[1] = (uint8_t)(n >> 16);
	out[2] = (uint8_t)(n >> 8);
	out[3] = (uint8_t)n;
	return n + 4;
}

static void test_encode_check(void)
{
	static struct verdict v[300];
	static Consent__V1__Verdict pv[300], *pp[300];
	static uint8_t want[65536];
	struct obuf b = { 0 };

	for (int it = 0; it < 800; it++) {
		Consent__V1__Response r = CONSENT__V1__RESPONSE__INIT;
		Consent__V1__CheckResponse cr = CONSENT__V1__CHECK_RESPONSE__INIT;
		size_t n = rnd() % 300, wn, start;
		uint64_t id = rnd() % 3 ? rnd() >> (rnd() % 64) : 0;
		uint64_t applied = rnd() % 2 ? rnd() >> (rnd() % 64) : 0;
		int64_t as_of = rnd() % 3 ? (int64_t)(rnd() % 2000000000) : 0;

		if (rnd() % 10 == 0)
			as_of = -as_of;
		for (size_t i = 0; i < n; i++) {
			Consent__V1__Verdict p = CONSENT__V1__VERDICT__INIT;

			v[i].allow = rnd() % 2;
			v[i].reason = (uint8_t)(rnd() % 9);
			v[i].status = (uint8_t)(rnd() % 3);
			v[i].source = (uint8_t)sources[rnd() % 8];
			v[i].consent_date = rnd() % 4 ? (int64_t)(rnd() % 2000000000) : 0;
			if (rnd() % 20 == 0)
				v[i].consent_date = -v[i].consent_date;
			v[i].error = errors[rnd() % 4];
			/* §10: an as-of verdict's sequence and transaction_id
			 * (NULL: a live one, neither written). */
			v[i].transaction_id = rnd() % 3 ? NULL :
					      rnd() % 2 ? "" : "tx-42";
			v[i].sequence = rnd() % 2 ? rnd() >> (rnd() % 64) : 0;
			p.allow = v[i].allow;
			p.reason = (Consent__V1__Reason)v[i].reason;
			p.status = (Consent__V1__Status)v[i].status;
			p.source = (Consent__V1__Source)v[i].source;
			p.consent_date = v[i].consent_date;
			p.error = v[i].error ? (char *)v[i].error
					     : (char *)protobuf_c_empty_string;
			p.sequence = v[i].transaction_id ? v[i].sequence : 0;
			p.transaction_id = v[i].transaction_id
				? (char *)v[i].transaction_id
				: (char *)protobuf_c_empty_string;
			pv[i] = p;
			pp[i] = &pv[i];
		}
		cr.n_verdicts = n;
		cr.verdicts = pp;
		cr.applied_sequence = applied;
		cr.data_as_of = as_of;
		r.id = id;
		r.body_case = CONSENT__V1__RESPONSE__BODY_CHECK;
		r.check = &cr;
		wn = pack_framed(&r, want);

		/* Appended after other bytes, as in a real output buffer. */
		b.len = 0;
		obuf_append(&b, "xyz", rnd() % 4);
		start = b.len;
		CHECK(rpc_encode_check(&b, id, v, n, applied, as_of) == 0);
		CHECKF(b.len - start == wn && memcmp(b.data + start, want, wn) == 0,
		       "iteration %d: %zu verdicts, %zu vs %zu bytes", it, n,
		       b.len - start, wn);
		if (b.len - start != wn)
			break;
	}
	free(b.data);
}

static void test_encode_others(void)
{
	static const char *const msgs[] = { NULL, "", "bad token",
					    "Apply is not available in this build" };
	uint8_t want[1024];
	struct obuf b = { 0 };

	for (int i = 0; i < 200; i++) {
		Consent__V1__Response r = CONSENT__V1__RESPONSE__INIT;
		Consent__V1__Error e = CONSENT__V1__ERROR__INIT;
		Consent__V1__AuthResponse a = CONSENT__V1__AUTH_RESPONSE__INIT;
		Consent__V1__StatsResponse s = CONSENT__V1__STATS_RESPONSE__INIT;
		struct rpc_stats st;
		const char *msg = msgs[rnd() % 4];
		uint64_t id = rnd() % 2 ? rnd() : 0;
		size_t wn;

		r.id = id;
		b.len = 0;
		switch (i % 3) {
		case 0:
			e.code = rnd() % 4 ? (uint32_t)(rnd() % 600) : 0;
			e.message = msg ? (char *)msg : (char *)protobuf_c_empty_string;
			r.body_case = CONSENT__V1__RESPONSE__BODY_ERROR;
			r.error = &e;
			rpc_encode_error(&b, id, e.code, msg);
			break;
		case 1:
			a.principal = msg ? (char *)msg : (char *)protobuf_c_empty_string;
			r.body_case = CONSENT__V1__RESPONSE__BODY_AUTH;
			r.auth = &a;
			rpc_encode_auth(&b, id, msg);
			break;
		default:
			st.records = rnd() % 2 ? rnd() : 0;
			st.applied_sequence = rnd() % 2 ? rnd() : 0;
			st.data_as_of = rnd() % 2 ? (int64_t)rnd() : 0;
			st.generation = rnd() % 2 ? rnd() % 100 : 0;
			st.checks_total = rnd() % 2 ? rnd() : 0;
			st.origin_cursor = msg; /* §8's field 9 */
			/* §10's fields 6 and 7. */
			st.chain = rnd() % 2;
			st.chain_sequence = rnd() % 2 ? rnd() : 0;
			for (size_t k = 0; k < sizeof(st.chain_hash); k++)
				st.chain_hash[k] = (uint8_t)rnd();
			s.chain_sequence = st.chain ? st.chain_sequence : 0;
			s.chain_hash.data = st.chain ? st.chain_hash : NULL;
			s.chain_hash.len = st.chain ? sizeof(st.chain_hash) : 0;
			s.origin_cursor = msg ? (char *)msg :
						(char *)protobuf_c_empty_string;
			s.records = st.records;
			s.applied_sequence = st.applied_sequence;
			s.data_as_of = st.data_as_of;
			s.generation = st.generation;
			s.checks_total = st.checks_total;
			r.body_case = CONSENT__V1__RESPONSE__BODY_STATS;
			r.stats = &s;
			rpc_encode_stats(&b, id, &st);
			break;
		}
		wn = pack_framed(&r, want);
		CHECKF(b.len == wn && memcmp(b.data, want, wn) == 0,
		       "case %d: %zu vs %zu bytes", i % 3, b.len, wn);
	}
	free(b.data);

	/* The static refusal is Error{503, "max connections"}. */
	{
		Consent__V1__Response *r = consent__v1__response__unpack(
			NULL, rpc_refusal_len - 4, rpc_refusal + 4);
		uint32_t len = (uint32_t)rpc_refusal[0] << 24 |
			       (uint32_t)rpc_refusal[3];

		CHECK(len == rpc_refusal_len - 4);
		CHECK(r != NULL && r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
		      r->error->code == 503 &&
		      strcmp(r->error->message, "max connections") == 0);
		consent__v1__response__free_unpacked(r, NULL);
	}
}

/* ---- the port, through conn_feed --------------------------------------- */

static struct server_config cfg, cfg_tok;
static struct conn_ctx ctx;
static struct tokens *toks;

static void put(struct index *ix, const char *rcpt, uint32_t brand,
		int channel, int rtype, int status, int64_t date)
{
	struct recipient r;
	struct index_key key;
	struct consent_value v = { .status = (uint8_t)status, .source = 6,
				   .consent_date = date };
	const char *why;

	CHECK(recipient_normalize(rcpt, strlen(rcpt), &r, &why) == 0);
	index_key_make(ix, &r, brand, rtype, channel, &key);
	CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
}

static void setup(void)
{
	struct index *ix;
	char err[200];

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg_tok = cfg;
	if (tokens_parse(TOKENS_TEXT, strlen(TOKENS_TEXT), &toks, err,
			 sizeof(err)) < 0) {
		fprintf(stderr, "tokens_parse: %s\n", err);
		exit(1);
	}
	cfg_tok.tokens = toks;
	if (metrics_init(2) < 0 || index_create(1024, NULL, &ix) < 0)
		exit(1);
	put(ix, "+905321234567", BRAND, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_ONAY, D1);
	put(ix, "+905321234568", BRAND, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_RET, D1 + 60);
	put(ix, "ali@example.com", BRAND, CHANNEL_EPOSTA, RTYPE_BIREYSEL,
	    STATUS_ONAY, D1 + 120);
	put(ix, "+905321234567", BRAND2, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_ONAY, D1 + 180);
	index_set_meta_writer(ix, 7, 42, D1, D1 + 1000);
	live_publish(ix);
	if (conn_ctx_init(&ctx, &cfg, metrics_slot(0)) < 0)
		exit(1);
}

/* Takes everything queued on c, as the loop's sends would. */
static size_t drain(struct conn *c, uint8_t *out, size_t cap)
{
	const char *p;
	size_t n, total = 0;

	while (conn_take_send(c, &p, &n)) {
		if (total + n > cap)
			abort();
		memcpy(out + total, p, n);
		total += n;
		conn_sent(c, n);
	}
	return total;
}

/* Parses the response frames in buf; returns how many (<= max). */
static size_t responses(const uint8_t *buf, size_t len,
			Consent__V1__Response **out, size_t max)
{
	size_t n = 0, pos = 0;

	while (pos + 4 <= len && n < max) {
		uint32_t fl = (uint32_t)buf[pos] << 24 | (uint32_t)buf[pos + 1] << 16 |
			      (uint32_t)buf[pos + 2] << 8 | buf[pos + 3];

		if (pos + 4 + fl > len)
			break;
		out[n] = consent__v1__response__unpack(NULL, fl, buf + pos + 4);
		CHECK(out[n] != NULL);
		if (out[n] == NULL)
			break;
		n++;
		pos += 4 + fl;
	}
	CHECKF(pos == len, "trailing %zu bytes", len - pos);
	return n;
}

static void free_responses(Consent__V1__Response **r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		consent__v1__response__free_unpacked(r[i], NULL);
}

static size_t frame(uint8_t *out, const Consent__V1__Request *r)
{
	size_t n = consent__v1__request__pack(r, out + 4);

	out[0] = (uint8_t)(n >> 24);
	out[1] = (uint8_t)(n >> 16);
	out[2] = (uint8_t)(n >> 8);
	out[3] = (uint8_t)n;
	return n + 4;
}

/* A CheckRequest frame of n checks cycling through a few recipients. */
static size_t check_frame(uint8_t *out, uint64_t id, size_t n)
{
	static Consent__V1__Check c[4096], *p[4096];
	static const char *const rc[] = { "+905321234567", "+905321234568",
					  "5329999999", "bad", "ali@example.com" };
	Consent__V1__Request r = CONSENT__V1__REQUEST__INIT;
	Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;

	for (size_t i = 0; i < n; i++) {
		Consent__V1__Check k = CONSENT__V1__CHECK__INIT;

		k.recipient = (char *)rc[i % 5];
		if (i % 5 == 4)
			k.channel = CONSENT__V1__CHANNEL__EPOSTA;
		c[i] = k;
		p[i] = &c[i];
	}
	cr.n_checks = n;
	cr.checks = p;
	cr.brand_code = BRAND;
	cr.channel = CONSENT__V1__CHANNEL__MESAJ;
	r.id = id;
	r.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
	r.check = &cr;
	return frame(out, &r);
}

/* What check i of check_frame must answer. */
static void expect_verdict(size_t i, const Consent__V1__Verdict *v)
{
	switch (i % 5) {
	case 0:
		CHECK(v->allow && v->reason == CONSENT__V1__REASON__CONSENT_GIVEN &&
		      v->status == CONSENT__V1__STATUS__ONAY && v->consent_date == D1 &&
		      v->source == 6);
		break;
	case 1:
		CHECK(!v->allow && v->reason == CONSENT__V1__REASON__CONSENT_REJECTED &&
		      v->consent_date == D1 + 60);
		break;
	case 2:
		CHECK(!v->allow && v->reason == CONSENT__V1__REASON__NO_CONSENT &&
		      v->status == 0);
		break;
	case 3:
		CHECK(!v->allow && v->reason == CONSENT__V1__REASON__INVALID_REQUEST &&
		      v->error[0] != '\0');
		break;
	default:
		CHECK(v->allow && v->consent_date == D1 + 120);
		break;
	}
}

static size_t simple_frame(uint8_t *out, uint64_t id, int kind,
			   const char *token)
{
	Consent__V1__Request r = CONSENT__V1__REQUEST__INIT;
	Consent__V1__AuthRequest a = CONSENT__V1__AUTH_REQUEST__INIT;
	Consent__V1__StatsRequest s = CONSENT__V1__STATS_REQUEST__INIT;
	Consent__V1__ApplyRequest ap = CONSENT__V1__APPLY_REQUEST__INIT;

	r.id = id;
	r.body_case = (Consent__V1__Request__BodyCase)kind;
	if (kind == RPC_REQ_AUTH) {
		a.token = (char *)token;
		r.auth = &a;
	} else if (kind == RPC_REQ_STATS) {
		r.stats = &s;
	} else if (kind == RPC_REQ_APPLY) {
		r.apply = &ap;
	}
	return frame(out, &r);
}

static void test_check_round_trip(void)
{
	static uint8_t in[1 << 16], out[1 << 20];
	Consent__V1__Response *r[8];
	struct conn c;
	size_t n, on;

	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
	n = check_frame(in, 5, 10);
	CHECK(conn_feed(&ctx, &c, (const char *)in, n) == 0);
	on = drain(&c, out, sizeof(out));
	CHECK(responses(out, on, r, 8) == 1);
	CHECK(r[0]->id == 5 && r[0]->body_case == CONSENT__V1__RESPONSE__BODY_CHECK);
	CHECK(r[0]->check->n_verdicts == 10);
	CHECK(r[0]->check->applied_sequence == 42 &&
	      r[0]->check->data_as_of == D1 + 1000);
	for (size_t i = 0; i < r[0]->check->n_verdicts; i++)
		expect_verdict(i, r[0]->check->verdicts[i]);
	free_responses(r, 1);
	CHECK(!c.want_close && c.in_len == 0);
	conn_fini(&c);
}

/* A pipeline of mixed frames gives the same bytes however it is split. */
static void test_split_every_byte(void)
{
	static uint8_t in[1 << 16], want[1 << 20], got[1 << 20];
	size_t n = 0, wn, gn;
	struct conn c;

	n += check_frame(in + n, 1, 3);
	n += simple_frame(in + n, 2, RPC_REQ_AUTH, "x");
	n += check_frame(in + n, 3, 300); /* past the batch: chunked */
	n += simple_frame(in + n, 4, RPC_REQ_APPLY, NULL);
	n += check_frame(in + n, 5, 0);
	n += simple_frame(in + n, 6, RPC_REQ_NONE, NULL);
	n += check_frame(in + n, 7, 1);

	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, (const char *)in, n) == 0);
	wn = drain(&c, want, sizeof(want));
	conn_fini(&c);
	{
		Consent__V1__Response *r[8];
		size_t k = responses(want, wn, r, 8);

		CHECK(k == 7);
		for (size_t i = 0; i < k; i++)
			CHECK(r[i]->id == i + 1);
		CHECK(k == 7 && r[1]->body_case == CONSENT__V1__RESPONSE__BODY_AUTH &&
		      strcmp(r[1]->auth->principal, "trusted") == 0);
		CHECK(k == 7 && r[2]->check->n_verdicts == 300);
		CHECK(k == 7 && r[3]->error->code == 501);
		CHECK(k == 7 && r[4]->body_case == CONSENT__V1__RESPONSE__BODY_CHECK &&
		      r[4]->check->n_verdicts == 0);
		CHECK(k == 7 && r[5]->error->code == 400);
		for (size_t i = 0; k == 7 && i < 300; i++)
			expect_verdict(i, r[2]->check->verdicts[i]);
		free_responses(r, k);
	}
	/* Two pieces, split at every byte. */
	for (size_t k = 0; k <= n; k++) {
		CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
		conn_feed(&ctx, &c, (const char *)in, k);
		conn_feed(&ctx, &c, (const char *)in + k, n - k);
		gn = drain(&c, got, sizeof(got));
		CHECKF(gn == wn && memcmp(got, want, wn) == 0, "split at %zu", k);
		conn_fini(&c);
		if (gn != wn)
			break;
	}
	/* One byte at a time. */
	CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
	for (size_t k = 0; k < n; k++)
		conn_feed(&ctx, &c, (const char *)in + k, 1);
	gn = drain(&c, got, sizeof(got));
	CHECK(gn == wn && memcmp(got, want, wn) == 0);
	CHECK(c.in_len == 0 && c.partial_since_ms == 0);
	conn_fini(&c);
}

/* Feeds bytes to a fresh connection; returns responses and whether the
 * connection must close. */
static size_t exchange(struct conn *c, const uint8_t *in, size_t n,
		       Consent__V1__Response **r, size_t max)
{
	static uint8_t out[1 << 20];
	size_t on;

	CHECK(conn_feed(&ctx, c, (const char *)in, n) == 0);
	on = drain(c, out, sizeof(out));
	return responses(out, on, r, max);
}

static void test_auth_and_limits(void)
{
	static uint8_t in[1 << 16];
	Consent__V1__Response *r[8];
	struct metrics *m = metrics_slot(0);
	uint64_t oversize = m->frames_oversize, undec = m->frames_undecodable;
	struct conn c;
	size_t n, k;

	ctx.cfg = &cfg_tok;
	conn_ctx_begin_turn(&ctx);

	/* Before Auth: Check refused (401), the connection stays. */
	CHECK(conn_init(&c, &rpc_proto, &cfg_tok, ctx.now_ms) == 0);
	n = check_frame(in, 1, 2);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 1 && r[0]->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
	      r[0]->error->code == 401);
	free_responses(r, k);
	/* Stats too; a bad token is 401 and changes nothing. */
	n = simple_frame(in, 2, RPC_REQ_STATS, NULL);
	n += simple_frame(in + n, 3, RPC_REQ_AUTH, "wrong");
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 2 && r[0]->error->code == 401 && r[1]->error->code == 401);
	free_responses(r, k);
	CHECK(!c.want_close && !c.authed);
	/* A frame over the pre-Auth limit (4 KiB) closes with 413. */
	n = check_frame(in, 4, 400);
	CHECK(n - 4 > cfg_tok.max_frame_bytes_unauth);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 1 && r[0]->error->code == 413 && r[0]->error->message[0]);
	free_responses(r, k);
	CHECK(c.want_close && m->frames_oversize == oversize + 1);
	conn_fini(&c);

	/* Auth, then the same frame is fine; alice sees only her brand. */
	CHECK(conn_init(&c, &rpc_proto, &cfg_tok, ctx.now_ms) == 0);
	n = simple_frame(in, 5, RPC_REQ_AUTH, "s3cret");
	n += check_frame(in + n, 6, 400);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 2 && r[0]->body_case == CONSENT__V1__RESPONSE__BODY_AUTH &&
	      strcmp(r[0]->auth->principal, "alice") == 0);
	CHECK(k == 2 && r[1]->check->n_verdicts == 400);
	for (size_t i = 0; k == 2 && i < 400; i++)
		expect_verdict(i, r[1]->check->verdicts[i]);
	free_responses(r, k);
	{
		/* Another brand: NOT_AUTHORIZED, even though it has a record. */
		Consent__V1__Request q = CONSENT__V1__REQUEST__INIT;
		Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;
		Consent__V1__Check ck = CONSENT__V1__CHECK__INIT, *p = &ck;

		ck.recipient = "+905321234567";
		ck.brand_code = BRAND2;
		ck.channel = CONSENT__V1__CHANNEL__MESAJ;
		cr.n_checks = 1;
		cr.checks = &p;
		q.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
		q.check = &cr;
		n = frame(in, &q);
		n += simple_frame(in + n, 8, RPC_REQ_APPLY, NULL);
		k = exchange(&c, in, n, r, 8);
		CHECK(k == 2 && !r[0]->check->verdicts[0]->allow &&
		      r[0]->check->verdicts[0]->reason ==
			      CONSENT__V1__REASON__NOT_AUTHORIZED &&
		      r[0]->check->verdicts[0]->consent_date == 0);
		CHECK(k == 2 && r[1]->error->code == 403); /* no 'apply' */
		free_responses(r, k);
	}
	/* Over the authenticated limit: 413, closed. */
	cfg_tok.max_frame_bytes = 8192;
	n = check_frame(in, 9, 1000);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 1 && r[0]->error->code == 413 && c.want_close);
	free_responses(r, k);
	cfg_tok.max_frame_bytes = 1u << 20;
	conn_fini(&c);

	/* root may apply: 501, the honest "not in this build". */
	CHECK(conn_init(&c, &rpc_proto, &cfg_tok, ctx.now_ms) == 0);
	n = simple_frame(in, 1, RPC_REQ_AUTH, "applier");
	n += simple_frame(in + n, 2, RPC_REQ_APPLY, NULL);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 2 && strcmp(r[0]->auth->principal, "root") == 0 &&
	      r[1]->error->code == 501);
	free_responses(r, k);
	/* A frame that does not decode: 400, closed, later bytes ignored. */
	memcpy(in, "\x00\x00\x00\x02\x0b\x00", 6);
	n = 6 + check_frame(in + 6, 3, 1);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 1 && r[0]->error->code == 400 && c.want_close);
	CHECK(m->frames_undecodable == undec + 1);
	free_responses(r, k);
	conn_fini(&c);
	ctx.cfg = &cfg;
}

static void test_http_sniff(void)
{
	static const char *const http[] = { "GET / HTTP/1.1\r\n", "POST /x",
					    "OPTIONS * HTTP/1.1" };
	struct metrics *m = metrics_slot(0);
	struct conn c;

	CHECK(conn_sniff_http("GE", 2) == -1);
	CHECK(conn_sniff_http("GET ", 4) == 1);
	CHECK(conn_sniff_http("GETX", 4) == 0);
	CHECK(conn_sniff_http("\x00\x00", 2) == 0);
	CHECK(conn_sniff_http("*1\r\n", 4) == 0);
	for (size_t i = 0; i < 3; i++) {
		uint64_t before = m->http_on_binary_port;
		size_t len = strlen(http[i]);

		/* Byte by byte: undecided until the method's space. */
		CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
		for (size_t k = 0; k < len && !c.want_close; k++)
			conn_feed(&ctx, &c, http[i] + k, 1);
		CHECK(c.want_close && conn_out_pending(&c) == 0);
		CHECK(m->http_on_binary_port == before + 1);
		conn_fini(&c);
	}
}

/* A reply over the output cap is refused whole (413), the connection
 * stays; pipelined requests past the cap pause the connection until the
 * output drains, and every request is still answered in order. */
static void test_output_cap_and_backpressure(void)
{
	static uint8_t in[1 << 18], out[1 << 20];
	Consent__V1__Response *r[512];
	struct server_config small = cfg;
	struct conn c;
	size_t n = 0, on = 0, k;

	small.conn_out_cap_bytes = 4096;
	ctx.cfg = &small;
	CHECK(conn_init(&c, &rpc_proto, &small, ctx.now_ms) == 0);
	n = check_frame(in, 1, 1000);
	k = exchange(&c, in, n, r, 8);
	CHECK(k == 1 && r[0]->error->code == 413 && !c.want_close);
	free_responses(r, k);

	/* 300 requests of 10 checks: about 50 KB of replies. */
	n = 0;
	for (uint64_t i = 0; i < 300; i++)
		n += check_frame(in + n, 100 + i, 10);
	CHECK(conn_feed(&ctx, &c, (const char *)in, n) == 0);
	CHECK(c.paused && c.in_len > 0);
	for (int guard_turns = 0; guard_turns < 1000 && (c.paused || c.in_len);
	     guard_turns++) {
		on += drain(&c, out + on, sizeof(out) - on);
		c.paused = false;
		CHECK(conn_feed(&ctx, &c, NULL, 0) == 0);
	}
	on += drain(&c, out + on, sizeof(out) - on);
	k = responses(out, on, r, 512);
	CHECK(k == 300);
	for (size_t i = 0; i < k; i++) {
		CHECK(r[i]->id == 100 + i && r[i]->check->n_verdicts == 10);
		for (size_t j = 0; j < r[i]->check->n_verdicts; j++)
			expect_verdict(j, r[i]->check->verdicts[j]);
	}
	free_responses(r, k);
	conn_fini(&c);
	ctx.cfg = &cfg;
}

/* Garbage of every length at the port: an Error and a close, or waiting
 * for more; never a crash (ASan) or a reply that does not parse. */
static void test_garbage(void)
{
	static uint8_t in[4096], out[1 << 16];
	Consent__V1__Response *r[4];

	for (int i = 0; i < 3000; i++) {
		size_t n = rnd() % sizeof(in), on, k;
		struct conn c;

		for (size_t j = 0; j < n; j++)
			in[j] = (uint8_t)rnd();
		if (i % 2 && n >= 4) { /* a plausible length */
			uint32_t fl = (uint32_t)(n - 4);

			in[0] = 0;
			in[1] = (uint8_t)(fl >> 16);
			in[2] = (uint8_t)(fl >> 8);
			in[3] = (uint8_t)fl;
		}
		CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
		CHECK(conn_feed(&ctx, &c, (const char *)in, n) == 0);
		on = drain(&c, out, sizeof(out));
		k = responses(out, on, r, 4);
		free_responses(r, k);
		conn_fini(&c);
	}
}

/* ---- §10: as-of checks and History against a real evidence store ---- */

static Consent__V1__Consent hist_change(const char *rcpt, uint32_t brand,
					int status, int64_t date, uint64_t seq,
					const char *tx)
{
	Consent__V1__Consent c = CONSENT__V1__CONSENT__INIT;

	c.recipient = (char *)rcpt;
	c.channel = CONSENT__V1__CHANNEL__MESAJ;
	c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	c.brand_code = brand;
	c.status = (Consent__V1__Status)status;
	c.source = CONSENT__V1__SOURCE__HS_WEB;
	c.consent_date = date;
	c.creation_date = date + 5;
	c.transaction_id = (char *)tx;
	c.sequence = seq;
	return c;
}

/* One as-of check of +905321234567 at BRAND on conn c. */
static Consent__V1__Response *as_of_check(struct conn *c, uint64_t id,
					  uint32_t brand, int64_t t,
					  uint64_t seq)
{
	static uint8_t in[4096];
	Consent__V1__Request r = CONSENT__V1__REQUEST__INIT;
	Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Check k = CONSENT__V1__CHECK__INIT, *kp = &k;
	Consent__V1__Response *out[2];

	k.recipient = "+905321234567";
	k.brand_code = brand;
	k.channel = CONSENT__V1__CHANNEL__MESAJ;
	k.as_of_time = t;
	k.as_of_sequence = seq;
	cr.n_checks = 1;
	cr.checks = &kp;
	r.id = id;
	r.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
	r.check = &cr;
	size_t n = exchange(c, in, frame(in, &r), out, 2);
	CHECK(n == 1 && out[0]->body_case == CONSENT__V1__RESPONSE__BODY_CHECK &&
	      out[0]->check->n_verdicts == 1);
	return n == 1 ? out[0] : NULL;
}

static Consent__V1__Response *history_call(struct conn *c, uint64_t id,
					   uint32_t brand, const char *rcpt)
{
	static uint8_t in[4096];
	Consent__V1__Request r = CONSENT__V1__REQUEST__INIT;
	Consent__V1__HistoryRequest h = CONSENT__V1__HISTORY_REQUEST__INIT;
	Consent__V1__Response *out[2];

	h.recipient = (char *)rcpt;
	h.brand_code = brand;
	h.channel = CONSENT__V1__CHANNEL__MESAJ;
	r.id = id;
	r.body_case = CONSENT__V1__REQUEST__BODY_HISTORY;
	r.history = &h;
	size_t n = exchange(c, in, frame(in, &r), out, 2);
	CHECK(n == 1 && out[0]->id == id);
	return n == 1 ? out[0] : NULL;
}

static void test_history_and_as_of(void)
{
	char dir[] = "/tmp/rpc_test_hist.XXXXXX", err[300];
	struct history *h = NULL;
	struct server_config hcfg = cfg, htok = cfg_tok;
	struct conn_ctx hx;
	struct conn c;
	static uint8_t in[4096];
	Consent__V1__Response *r;

	CHECK(mkdtemp(dir) != NULL);
	CHECKF(history_open(dir, NULL, &h, err, sizeof(err)) == 0, "%s", err);
	if (h == NULL)
		return;
	/* +905321234567: ONAY at 40 (consent D1), RET at 41 (D1 + 100),
	 * and one change of another key between them. */
	Consent__V1__Consent ch[3] = {
		hist_change("+905321234567", BRAND, STATUS_ONAY, D1, 40, "tx-a"),
		hist_change("+905321234599", BRAND, STATUS_ONAY, D1, 40, "tx-b"),
		hist_change("+905321234567", BRAND, STATUS_RET, D1 + 100, 41,
			    "tx-c"),
	};
	Consent__V1__Consent *cp[3] = { &ch[0], &ch[1], &ch[2] };
	CHECKF(history_append(h, cp, 3, D1 + 7, err, sizeof(err)) == 0, "%s",
	       err);
	struct history_state st;
	history_state(h, &st);

	hcfg.history = h;
	htok.history = h;
	CHECK(conn_ctx_init(&hx, &hcfg, metrics_slot(1)) == 0);
	struct conn_ctx saved = ctx;
	ctx = hx; /* exchange() feeds through ctx */
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &rpc_proto, &hcfg, ctx.now_ms) == 0);

	/* As of 40: the ONAY, with its sequence and transaction_id. */
	r = as_of_check(&c, 1, BRAND, 0, 40);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(v->allow && v->reason == CONSENT__V1__REASON__CONSENT_GIVEN &&
		      v->consent_date == D1 && v->sequence == 40 &&
		      strcmp(v->transaction_id, "tx-a") == 0);
		consent__v1__response__free_unpacked(r, NULL);
	}
	/* As of 41 and as of the time after the RET: the RET. */
	r = as_of_check(&c, 2, BRAND, 0, 41);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(!v->allow && v->reason == CONSENT__V1__REASON__CONSENT_REJECTED &&
		      v->sequence == 41 && strcmp(v->transaction_id, "tx-c") == 0);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = as_of_check(&c, 3, BRAND, D1 + 50, 0);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(v->allow && v->sequence == 40);
		consent__v1__response__free_unpacked(r, NULL);
	}
	/* Before the history's start: INVALID_REQUEST naming it; both set:
	 * INVALID_REQUEST; another brand with no record: NO_CONSENT. */
	r = as_of_check(&c, 4, BRAND, 0, 39);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECKF(v->reason == CONSENT__V1__REASON__INVALID_REQUEST &&
		       strstr(v->error, "40") != NULL, "%s", v->error);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = as_of_check(&c, 5, BRAND, D1, 40);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(v->reason == CONSENT__V1__REASON__INVALID_REQUEST &&
		      strstr(v->error, "at most one") != NULL);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = as_of_check(&c, 6, BRAND2, 0, 41);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(v->reason == CONSENT__V1__REASON__NO_CONSENT &&
		      v->sequence == 0 && v->transaction_id[0] == '\0');
		consent__v1__response__free_unpacked(r, NULL);
	}

	/* History: both records of the key, oldest first, all fields, the
	 * chain after each (the last one is the head). */
	r = history_call(&c, 7, BRAND, "05321234567");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_HISTORY);
		const Consent__V1__HistoryResponse *hr = r->history;
		CHECK(hr->n_entries == 2 && hr->applied_sequence == 42);
		for (size_t i = 0; hr->n_entries == 2 && i < 2; i++) {
			const Consent__V1__HistoryEntry *e = hr->entries[i];
			const Consent__V1__Consent *want = &ch[i == 0 ? 0 : 2];
			CHECK(e->applied_at == D1 + 7 &&
			      e->chain_hash.len == 32);
			CHECK(strcmp(e->consent->recipient, "+905321234567") == 0 &&
			      e->consent->status == want->status &&
			      e->consent->consent_date == want->consent_date &&
			      e->consent->creation_date == want->creation_date &&
			      e->consent->sequence == want->sequence &&
			      strcmp(e->consent->transaction_id,
				     want->transaction_id) == 0);
		}
		if (hr->n_entries == 2)
			CHECK(memcmp(hr->entries[1]->chain_hash.data, st.head,
				     32) == 0);
		consent__v1__response__free_unpacked(r, NULL);
	}
	/* An empty answer at sequence 0 packs to no bytes at all, and is
	 * still a HistoryResponse. */
	{
		struct evidence_answer none = { 0 };
		struct obuf eb = { 0 };
		CHECK(evidence_encode(&eb, &none, 0) == 0 && eb.len == 0);
		free(eb.data);
	}
	r = history_call(&c, 70, BRAND, "+905329999999");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_HISTORY &&
		      r->history->n_entries == 0);
		consent__v1__response__free_unpacked(r, NULL);
	}
	/* A bad recipient is 400 naming the field. */
	r = history_call(&c, 8, BRAND, "not a number");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
		      r->error->code == 400);
		consent__v1__response__free_unpacked(r, NULL);
	}
	conn_fini(&c);

	/* A partner (alice: BRAND only): another brand's history is 403,
	 * refused as its checks are (NOT_AUTHORIZED), whether it holds
	 * records or not. */
	ctx.cfg = &htok;
	CHECK(conn_init(&c, &rpc_proto, &htok, ctx.now_ms) == 0);
	size_t n = simple_frame(in, 9, RPC_REQ_AUTH, "s3cret");
	Consent__V1__Response *a[2];
	CHECK(exchange(&c, in, n, a, 2) == 1);
	free_responses(a, 1);
	r = history_call(&c, 10, BRAND2, "+905321234567");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
		      r->error->code == 403);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = as_of_check(&c, 11, BRAND2, 0, 41);
	if (r != NULL) {
		CHECK(r->check->verdicts[0]->reason ==
		      CONSENT__V1__REASON__NOT_AUTHORIZED);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = history_call(&c, 12, BRAND, "+905321234567");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_HISTORY &&
		      r->history->n_entries == 2);
		consent__v1__response__free_unpacked(r, NULL);
	}
	conn_fini(&c);
	conn_ctx_fini(&ctx);
	ctx = saved;

	/* History off (the module's ctx has no store): as-of checks are
	 * INVALID_REQUEST saying so, History is 501. */
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
	r = as_of_check(&c, 13, BRAND, 0, 41);
	if (r != NULL) {
		const Consent__V1__Verdict *v = r->check->verdicts[0];
		CHECK(v->reason == CONSENT__V1__REASON__INVALID_REQUEST &&
		      strstr(v->error, "history is off") != NULL);
		consent__v1__response__free_unpacked(r, NULL);
	}
	r = history_call(&c, 14, BRAND, "+905321234567");
	if (r != NULL) {
		CHECK(r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
		      r->error->code == 501);
		consent__v1__response__free_unpacked(r, NULL);
	}
	conn_fini(&c);
	history_close(h);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	setup();
	RUN(test_decode_valid);
	RUN(test_decode_edges);
	RUN(test_decode_semantics);
	RUN(test_decode_mutations);
	RUN(test_encode_check);
	RUN(test_encode_others);
	RUN(test_check_round_trip);
	RUN(test_split_every_byte);
	RUN(test_auth_and_limits);
	RUN(test_http_sniff);
	RUN(test_output_cap_and_backpressure);
	RUN(test_garbage);
	RUN(test_history_and_as_of);
	conn_ctx_fini(&ctx);
	live_publish(NULL);
	tokens_destroy(toks);
	return check_summary();
}
