/* grpc: the gRPC port through conn_feed, driven by bytes an nghttp2
 * *client* session produced (a real HTTP/2 peer, not bytes written here),
 * over a real index: a call whole and split at every byte, many calls
 * pipelined on one connection, verdicts against check_batch and the reply
 * decoded by protobuf-c, both service names, the status codes (unknown
 * method, History, Reject, undecodable, oversize, compressed, tokens and
 * the brand scope, Apply without a writer or the right), the stall
 * deadline's view of an unfinished call, the refusal bytes as a client
 * reads them, and garbage answered with a GOAWAY. */
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/check.h"
#include "index/history.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/grpc.h"
#include "server/live.h"
#include "server/metrics.h"
#include "tests/check.h"

#define BRAND 600123u
#define BRAND2 700456u
#define D1 1700000000LL

static struct server_config cfg;
static struct conn_ctx ctx;

static const char *const phones[] = { "+905321234567", "+905321234568",
				      "+905321234569" };

static void setup(void)
{
	struct index *ix;
	const char *why;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	if (metrics_init(2) != 0 || index_create(64, NULL, &ix) != 0)
		abort();
	/* ONAY, RET, and the third absent. */
	for (int i = 0; i < 2; i++) {
		struct consent_value v = { .status = (uint8_t)(1 + i),
					   .source = 6,
					   .consent_date = D1 + i };
		struct recipient r;
		struct index_key k;

		if (recipient_normalize(phones[i], strlen(phones[i]), &r,
					&why) != 0)
			abort();
		index_key_make(ix, &r, BRAND, RTYPE_BIREYSEL, CHANNEL_MESAJ, &k);
		index_apply_writer(ix, &k, &v);
	}
	live_publish(ix);
	if (conn_ctx_init(&ctx, &cfg, metrics_slot(0)) != 0)
		abort();
}

/* ---- the client -------------------------------------------------------- */

#define MAX_CALLS 256

struct call {
	int32_t id;
	char path[96];
	uint8_t *msg;        /* request: prefix + body */
	size_t msg_len, msg_off;
	int http_status;
	int grpc_status;     /* -1: none seen */
	char grpc_message[512];
	uint8_t body[8192];
	size_t body_len;
	bool closed;
	uint32_t close_error;
};

struct client {
	nghttp2_session *s;
	struct call *calls; /* MAX_CALLS */
	int n;
	bool goaway;
	uint32_t goaway_error;
	char goaway_debug[128];
	uint8_t *out;        /* client bytes to feed the server */
	size_t out_len, out_cap;
};

static struct call *call_of(struct client *cl, int32_t id)
{
	for (int i = 0; i < cl->n; i++)
		if (cl->calls[i].id == id)
			return &cl->calls[i];
	return NULL;
}

static int cb_header(nghttp2_session *s, const nghttp2_frame *f,
		     const uint8_t *name, size_t nl, const uint8_t *value,
		     size_t vl, uint8_t flags, void *user)
{
	struct call *c = call_of(user, f->hd.stream_id);

	(void)s;
	(void)flags;
	if (c == NULL)
		return 0;
	if (nl == 7 && memcmp(name, ":status", 7) == 0)
		c->http_status = atoi((const char *)value);
	else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0)
		c->grpc_status = atoi((const char *)value);
	else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0) {
		size_t n = vl < sizeof(c->grpc_message) - 1
				   ? vl : sizeof(c->grpc_message) - 1;

		memcpy(c->grpc_message, value, n);
		c->grpc_message[n] = '\0';
	}
	return 0;
}

static int cb_data(nghttp2_session *s, uint8_t flags, int32_t id,
		   const uint8_t *data, size_t len, void *user)
{
	struct call *c = call_of(user, id);

	(void)s;
	(void)flags;
	if (c == NULL || c->body_len + len > sizeof(c->body))
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	memcpy(c->body + c->body_len, data, len);
	c->body_len += len;
	return 0;
}

static int cb_close(nghttp2_session *s, int32_t id, uint32_t err, void *user)
{
	struct call *c = call_of(user, id);

	(void)s;
	if (c != NULL) {
		c->closed = true;
		c->close_error = err;
	}
	return 0;
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f,
			 void *user)
{
	struct client *cl = user;

	(void)s;
	if (f->hd.type == NGHTTP2_GOAWAY) {
		size_t n = f->goaway.opaque_data_len;

		cl->goaway = true;
		cl->goaway_error = f->goaway.error_code;
		if (n > sizeof(cl->goaway_debug) - 1)
			n = sizeof(cl->goaway_debug) - 1;
		memcpy(cl->goaway_debug, f->goaway.opaque_data, n);
		cl->goaway_debug[n] = '\0';
	}
	return 0;
}

static void client_init(struct client *cl)
{
	nghttp2_session_callbacks *cb;

	memset(cl, 0, sizeof(*cl));
	cl->calls = calloc(MAX_CALLS, sizeof(*cl->calls));
	if (cl->calls == NULL)
		abort();
	nghttp2_session_callbacks_new(&cb);
	nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_close);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
	if (nghttp2_session_client_new(&cl->s, cb, cl) != 0)
		abort();
	nghttp2_session_callbacks_del(cb);
	nghttp2_submit_settings(cl->s, NGHTTP2_FLAG_NONE, NULL, 0);
}

static void client_fini(struct client *cl)
{
	for (int i = 0; i < cl->n; i++)
		free(cl->calls[i].msg);
	nghttp2_session_del(cl->s);
	free(cl->calls);
	free(cl->out);
}

static ssize_t read_msg(nghttp2_session *s, int32_t id, uint8_t *buf,
			size_t length, uint32_t *flags,
			nghttp2_data_source *src, void *user)
{
	struct call *c = src->ptr;
	size_t n = c->msg_len - c->msg_off;

	(void)s;
	(void)id;
	(void)user;
	if (n > length)
		n = length;
	memcpy(buf, c->msg + c->msg_off, n);
	c->msg_off += n;
	if (c->msg_off == c->msg_len)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

/* A unary call: msg (body_len bytes, prefixed here with flag) on path. */
static struct call *client_call(struct client *cl, const char *path,
				const void *body, size_t body_len,
				uint8_t flag, const char *auth)
{
	struct call *c = &cl->calls[cl->n++];
	nghttp2_data_provider prd = { .read_callback = read_msg };
	nghttp2_nv nv[] = {
		{ (uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0 },
		{ (uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0 },
		{ (uint8_t *)":authority", (uint8_t *)"localhost", 10, 9, 0 },
		{ (uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0 },
		{ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12,
		  16, 0 },
		{ (uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0 },
		{ (uint8_t *)"authorization", (uint8_t *)auth, 13,
		  auth ? strlen(auth) : 0, 0 },
	};

	memset(c, 0, sizeof(*c));
	c->grpc_status = -1;
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->msg_len = 5 + body_len;
	c->msg = malloc(c->msg_len);
	c->msg[0] = flag;
	c->msg[1] = (uint8_t)(body_len >> 24);
	c->msg[2] = (uint8_t)(body_len >> 16);
	c->msg[3] = (uint8_t)(body_len >> 8);
	c->msg[4] = (uint8_t)body_len;
	memcpy(c->msg + 5, body, body_len);
	prd.source.ptr = c;
	c->id = nghttp2_submit_request(cl->s, NULL, nv, auth ? 7 : 6, &prd, c);
	CHECK(c->id > 0);
	return c;
}

/* What the client wants to send, appended to cl->out. */
static void client_drain(struct client *cl)
{
	const uint8_t *p;
	ssize_t n;

	while ((n = nghttp2_session_mem_send(cl->s, &p)) > 0) {
		if (cl->out_len + (size_t)n > cl->out_cap) {
			cl->out_cap = (cl->out_len + (size_t)n) * 2;
			cl->out = realloc(cl->out, cl->out_cap);
		}
		memcpy(cl->out + cl->out_len, p, (size_t)n);
		cl->out_len += (size_t)n;
	}
}

/* The server's replies, into the client session. */
static void server_to_client(struct conn *c, struct client *cl)
{
	const char *p;
	size_t n;

	while (conn_take_send(c, &p, &n)) {
		ssize_t r = nghttp2_session_mem_recv(cl->s, (const uint8_t *)p,
						     n);

		CHECKF(r == (ssize_t)n, "client mem_recv %zd of %zu", r, n);
		conn_sent(c, n);
	}
}

/* Feeds the client's bytes in pieces of step (0: whole), pumping replies
 * back (and the client's answers to them, e.g. SETTINGS ACKs) until
 * neither side has more to say. */
static void exchange(struct conn *c, struct client *cl, size_t step)
{
	for (int round = 0; round < 64; round++) {
		size_t pos = 0;

		client_drain(cl);
		if (cl->out_len == 0 && conn_out_pending(c) == 0)
			break;
		while (pos < cl->out_len) {
			size_t n = step ? step : cl->out_len - pos;

			if (n > cl->out_len - pos)
				n = cl->out_len - pos;
			conn_ctx_begin_turn(&ctx);
			CHECK(conn_feed(&ctx, c, (const char *)cl->out + pos,
					n) == 0);
			pos += n;
			if (c->paused) {
				server_to_client(c, cl);
				c->paused = false;
				CHECK(conn_feed(&ctx, c, NULL, 0) == 0);
			}
		}
		cl->out_len = 0;
		server_to_client(c, cl);
	}
}

/* ---- messages ---------------------------------------------------------- */

static size_t pack_check(uint8_t *buf, const char *const *recips, size_t n,
			 uint32_t brand)
{
	Consent__V1__CheckRequest req = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Check checks[64], *ptrs[64];

	for (size_t i = 0; i < n; i++) {
		consent__v1__check__init(&checks[i]);
		checks[i].recipient = (char *)recips[i];
		ptrs[i] = &checks[i];
	}
	req.checks = ptrs;
	req.n_checks = n;
	req.brand_code = brand;
	req.channel = CONSENT__V1__CHANNEL__MESAJ;
	return consent__v1__check_request__pack(&req, buf);
}

/* The call's reply decodes as a CheckResponse whose verdicts are
 * check_batch's for the same checks. */
static void expect_verdicts(const struct call *c, const char *const *recips,
			    size_t n, uint32_t brand,
			    const struct principal *who)
{
	struct check_input in[64];
	struct verdict out[64];
	struct check_env env = { .index = ctx.ix, .policy = &cfg.policy,
				 .principal = who };
	Consent__V1__CheckResponse *r;
	uint32_t len;

	CHECKF(c->http_status == 200 && c->grpc_status == 0,
	       "%s: status %d/%d %s", c->path, c->http_status, c->grpc_status,
	       c->grpc_message);
	CHECK(c->closed && c->close_error == 0);
	if (c->body_len < 5)
		return;
	len = (uint32_t)c->body[1] << 24 | (uint32_t)c->body[2] << 16 |
	      (uint32_t)c->body[3] << 8 | c->body[4];
	CHECK(c->body[0] == 0 && len + 5 == c->body_len);
	r = consent__v1__check_response__unpack(NULL, len, c->body + 5);
	CHECK(r != NULL);
	if (r == NULL)
		return;
	memset(in, 0, sizeof(in));
	for (size_t i = 0; i < n; i++) {
		in[i].recipient = recips[i];
		in[i].recipient_len = strlen(recips[i]);
		in[i].brand_code = brand;
		in[i].channel = CHANNEL_MESAJ;
	}
	check_batch(&env, in, n, out);
	CHECK(r->n_verdicts == n);
	for (size_t i = 0; i < n && i < r->n_verdicts; i++) {
		CHECK(r->verdicts[i]->allow == out[i].allow);
		CHECK((int)r->verdicts[i]->reason == out[i].reason);
		CHECK((int)r->verdicts[i]->status == out[i].status);
		CHECK(r->verdicts[i]->consent_date == out[i].consent_date);
	}
	CHECK(r->data_as_of == ctx.info.data_as_of);
	consent__v1__check_response__free_unpacked(r, NULL);
}

static void expect_status(const struct call *c, int status, const char *words)
{
	CHECKF(c->grpc_status == status, "%s: grpc-status %d, want %d (%s)",
	       c->path, c->grpc_status, status, c->grpc_message);
	CHECKF(strstr(c->grpc_message, words) != NULL, "%s: \"%s\" lacks \"%s\"",
	       c->path, c->grpc_message, words);
	CHECK(c->http_status == 200 && c->body_len == 0 && c->closed);
}

/* ---- tests ------------------------------------------------------------- */

static void test_one_call_whole_and_split(void)
{
	static const char *const path[] = { "/consent.v1.ConsentService/Check",
					    "/consent.v1.Consent/Check" };
	uint8_t body[512];
	size_t bl = pack_check(body, phones, 3, BRAND);

	for (size_t step = 0; step <= 1; step++)
		for (int p = 0; p < 2; p++) {
			struct client cl;
			struct conn c;
			struct call *k;

			client_init(&cl);
			CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
			k = client_call(&cl, path[p], body, bl, 0, NULL);
			exchange(&c, &cl, step);
			expect_verdicts(k, phones, 3, BRAND, NULL);
			CHECK(!c.want_close && c.in_len == 0 && !c.partial);
			CHECK(c.stat_requests == 1);
			conn_fini(&c);
			conn_fini(&c); /* twice: the fini hook is idempotent */
			client_fini(&cl);
		}
}

/* Split at every byte position into two pieces, too. */
static void test_every_split_point(void)
{
	uint8_t body[512];
	size_t bl = pack_check(body, phones, 2, BRAND);
	struct client cl0;
	size_t total;

	client_init(&cl0);
	client_call(&cl0, "/consent.v1.ConsentService/Check", body, bl, 0,
		    NULL);
	client_drain(&cl0);
	total = cl0.out_len;
	client_fini(&cl0);
	for (size_t cut = 1; cut < total; cut++) {
		struct client cl;
		struct conn c;
		struct call *k;

		client_init(&cl);
		CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
		k = client_call(&cl, "/consent.v1.ConsentService/Check", body,
				bl, 0, NULL);
		client_drain(&cl);
		CHECK(cl.out_len == total);
		conn_ctx_begin_turn(&ctx);
		CHECK(conn_feed(&ctx, &c, (const char *)cl.out, cut) == 0);
		CHECK(conn_feed(&ctx, &c, (const char *)cl.out + cut,
				total - cut) == 0);
		cl.out_len = 0;
		server_to_client(&c, &cl);
		exchange(&c, &cl, 0);
		expect_verdicts(k, phones, 2, BRAND, NULL);
		conn_fini(&c);
		client_fini(&cl);
	}
}

static void test_pipelined_streams(void)
{
	struct client cl;
	struct conn c;
	struct call *k[150];
	uint8_t body[512];
	const char *one[150][1];

	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	for (int i = 0; i < 150; i++) {
		size_t bl;

		one[i][0] = phones[i % 3];
		bl = pack_check(body, one[i], 1, i % 2 ? BRAND : BRAND2);
		k[i] = client_call(&cl, "/consent.v1.ConsentService/Check",
				   body, bl, 0, NULL);
	}
	/* More than SETTINGS_MAX_CONCURRENT_STREAMS (100): the client holds
	 * the rest until answers free streams, as a real one does. */
	exchange(&c, &cl, 0);
	for (int i = 0; i < 150; i++)
		expect_verdicts(k[i], one[i], 1, i % 2 ? BRAND : BRAND2, NULL);
	CHECK(c.stat_requests == 150);
	CHECK(ctx.m->checks[METRICS_GRPC][REASON_CONSENT_GIVEN] > 0);
	conn_fini(&c);
	client_fini(&cl);

	/* The same, split at every byte. */
	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	for (int i = 0; i < 20; i++) {
		size_t bl = pack_check(body, one[i], 1, BRAND);

		k[i] = client_call(&cl, "/consent.v1.Consent/Check", body, bl,
				   0, NULL);
	}
	exchange(&c, &cl, 1);
	for (int i = 0; i < 20; i++)
		expect_verdicts(k[i], one[i], 1, BRAND, NULL);
	conn_fini(&c);
	client_fini(&cl);
}

static void test_status_codes(void)
{
	struct client cl;
	struct conn c;
	struct call *k[10];
	uint8_t body[512], big[300];
	size_t bl = pack_check(body, phones, 1, BRAND);
	uint32_t frame_cap = cfg.max_frame_bytes;

	cfg.max_frame_bytes = 200;
	memset(big, 0, sizeof(big));
	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	k[0] = client_call(&cl, "/consent.v1.ConsentService/Nope", body, bl, 0,
			   NULL);
	k[1] = client_call(&cl, "/consent.v1.ConsentService/History", "", 0,
			   0, NULL);
	k[2] = client_call(&cl, "/consent.v1.ConsentService/Reject", "", 0, 0,
			   NULL);
	k[3] = client_call(&cl, "/consent.v1.ConsentService/Check",
			   "\x0a\x05" "ab", 4, 0, NULL);
	k[4] = client_call(&cl, "/consent.v1.ConsentService/Check", big,
			   sizeof(big), 0, NULL);
	k[5] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   1, NULL);
	k[6] = client_call(&cl, "/consent.v1.ConsentService/Apply", "", 0, 0,
			   NULL);
	k[7] = client_call(&cl, "/consent.v1.Consent/Stats", "", 0, 0, NULL);
	k[8] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, NULL);
	exchange(&c, &cl, 0);
	expect_status(k[0], GRPC_UNIMPLEMENTED, "unknown method");
	expect_status(k[1], GRPC_UNIMPLEMENTED, "history is off");
	expect_status(k[2], GRPC_UNIMPLEMENTED, "Reject");
	expect_status(k[3], GRPC_INVALID_ARGUMENT, "CheckRequest");
	expect_status(k[4], GRPC_RESOURCE_EXHAUSTED, "limit of 200 bytes");
	expect_status(k[5], GRPC_UNIMPLEMENTED, "compressed");
	expect_status(k[6], GRPC_UNIMPLEMENTED, "no change log");
	CHECK(k[7]->grpc_status == 0 && k[7]->body_len >= 5);
	expect_verdicts(k[8], phones, 1, BRAND, NULL);
	/* The connection stays: every call was answered on it. */
	CHECK(!c.want_close && c.stat_requests == 9);
	conn_fini(&c);
	client_fini(&cl);
	cfg.max_frame_bytes = frame_cap;
}

static void sha_hex(const char *tok, char *hex)
{
	uint8_t d[32];

	SHA256((const uint8_t *)tok, strlen(tok), d);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", d[i]);
}

static void test_tokens(void)
{
	char text[512], ha[65], hb[65];
	struct tokens *t;
	struct client cl;
	struct conn c;
	struct call *k[8];
	uint8_t body[512];
	size_t bl = pack_check(body, phones, 2, BRAND);
	const struct principal *alice, *bob;

	sha_hex("tok-a", ha);
	sha_hex("tok-b", hb);
	snprintf(text, sizeof(text), "alice %s %u\nbob %s %u apply\n", ha,
		 BRAND, hb, BRAND2);
	CHECK(tokens_parse(text, strlen(text), &t, NULL, 0) == 0);
	cfg.tokens = t;
	alice = tokens_authenticate(t, "tok-a", 5);
	bob = tokens_authenticate(t, "tok-b", 5);
	CHECK(alice != NULL && bob != NULL);
	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	k[0] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, NULL);
	k[1] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, "Bearer tok-x");
	k[2] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, "Bearer tok-a");
	k[3] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, "bearer tok-a"); /* the cached token */
	k[4] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, "Bearer tok-b"); /* another principal */
	k[5] = client_call(&cl, "/consent.v1.ConsentService/Apply", "", 0, 0,
			   "Bearer tok-a");
	k[6] = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl,
			   0, "tok-a"); /* no scheme */
	exchange(&c, &cl, 0);
	expect_status(k[0], GRPC_UNAUTHENTICATED, "authorization");
	expect_status(k[1], GRPC_UNAUTHENTICATED, "bad token");
	expect_verdicts(k[2], phones, 2, BRAND, alice);
	expect_verdicts(k[3], phones, 2, BRAND, alice);
	expect_verdicts(k[4], phones, 2, BRAND, bob); /* NOT_AUTHORIZED */
	expect_status(k[5], GRPC_PERMISSION_DENIED, "may not apply");
	expect_status(k[6], GRPC_UNAUTHENTICATED, "bad token");
	conn_fini(&c);
	client_fini(&cl);
	cfg.tokens = NULL;
	tokens_destroy(t);
}

static void test_unfinished_call_and_frame(void)
{
	struct client cl;
	struct conn c;
	uint8_t body[512];
	size_t bl = pack_check(body, phones, 3, BRAND);

	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	client_call(&cl, "/consent.v1.ConsentService/Check", body, bl, 0,
		    NULL);
	client_drain(&cl);
	/* All but the last DATA frame's last byte: a frame unfinished. */
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_feed(&ctx, &c, (const char *)cl.out, cl.out_len - 1) == 0);
	CHECK(c.in_len > 0 && c.partial_since_ms != 0);
	CHECK(grpc_proto.reply_fatal(&ctx, &c, CONN_FATAL_STALLED) == 0);
	CHECK(c.want_close);
	c.in_len = 0;
	server_to_client(&c, &cl);
	CHECK(cl.goaway && strstr(cl.goaway_debug, "incomplete") != NULL);
	conn_fini(&c);
	client_fini(&cl);

	/* Whole frames, but the message's DATA not all sent yet: the call is
	 * unfinished inside the protocol (conn's partial). */
	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	{
		nghttp2_nv nv[] = {
			{ (uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0 },
			{ (uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0 },
			{ (uint8_t *)":authority", (uint8_t *)"x", 10, 1, 0 },
			{ (uint8_t *)":path",
			  (uint8_t *)"/consent.v1.Consent/Check", 5, 25, 0 },
			{ (uint8_t *)"content-type",
			  (uint8_t *)"application/grpc", 12, 16, 0 },
		};
		int32_t id = nghttp2_submit_headers(cl.s, NGHTTP2_FLAG_NONE, -1,
						    NULL, nv, 5, NULL);

		CHECK(id > 0);
	}
	exchange(&c, &cl, 0);
	CHECK(c.in_len == 0 && c.partial && c.partial_since_ms != 0);
	CHECK(!c.want_close);
	conn_fini(&c);
	client_fini(&cl);
}

/* gRPC's C core cancels a call that took a stream id but has not sent its
 * headers with an RST_STREAM on that idle stream (grpc/grpc#19655), a
 * connection error by RFC 9113: the connection and its other calls must
 * live on. */
static void test_rst_on_idle_stream(void)
{
	static const uint8_t rst[] = { 0, 0, 4, NGHTTP2_RST_STREAM, 0, 0, 0, 0,
				       3, 0, 0, 0, NGHTTP2_CANCEL };
	struct client cl;
	struct conn c;
	struct call *a, *b;
	uint8_t body[512];
	size_t bl = pack_check(body, phones, 1, BRAND);

	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	a = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl, 0,
			NULL);
	client_drain(&cl);
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_feed(&ctx, &c, (const char *)cl.out, cl.out_len) == 0);
	cl.out_len = 0;
	/* RST_STREAM(3) before stream 3's HEADERS, split across receives. */
	CHECK(conn_feed(&ctx, &c, (const char *)rst, 5) == 0);
	CHECK(conn_feed(&ctx, &c, (const char *)rst + 5, sizeof(rst) - 5) == 0);
	b = client_call(&cl, "/consent.v1.ConsentService/Check", body, bl, 0,
			NULL);
	CHECK(b->id == 3);
	exchange(&c, &cl, 0);
	expect_verdicts(a, phones, 1, BRAND, NULL);
	expect_verdicts(b, phones, 1, BRAND, NULL);
	CHECK(!cl.goaway && !c.want_close);
	conn_fini(&c);
	client_fini(&cl);
}

static void test_refusal_and_garbage(void)
{
	struct client cl;
	struct conn c;
	ssize_t r;
	static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\nmore bytes";

	/* The refusal, read by a client after its own preface. */
	client_init(&cl);
	client_drain(&cl);
	r = nghttp2_session_mem_recv(cl.s, (const uint8_t *)grpc_proto.refusal,
				     grpc_proto.refusal_len);
	CHECK(r == (ssize_t)grpc_proto.refusal_len);
	CHECK(cl.goaway && cl.goaway_error == NGHTTP2_ENHANCE_YOUR_CALM &&
	      strcmp(cl.goaway_debug, "max connections") == 0);
	client_fini(&cl);

	/* Not HTTP/2: no sniff in conn.c (speaks_http), nghttp2 refuses it:
	 * a GOAWAY, and closed. */
	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	CHECK(!c.sniffing);
	CHECK(conn_feed(&ctx, &c, junk, sizeof(junk) - 1) == 0);
	CHECK(c.want_close);
	client_drain(&cl);
	server_to_client(&c, &cl);
	CHECK(cl.goaway && cl.goaway_error == NGHTTP2_PROTOCOL_ERROR);
	conn_fini(&c);
	client_fini(&cl);
}

/* §10: History and an as-of Check over a real evidence store. */
static void test_history(void)
{
	char dir[] = "/tmp/grpc_test_hist.XXXXXX", err[300];
	struct history *h = NULL;
	struct server_config hcfg = cfg;
	struct client cl;
	struct conn c;
	struct call *k[4];
	uint8_t body[512];

	CHECK(mkdtemp(dir) != NULL);
	CHECKF(history_open(dir, NULL, &h, err, sizeof(err)) == 0, "%s", err);
	if (h == NULL)
		return;
	Consent__V1__Consent x = CONSENT__V1__CONSENT__INIT, *xp = &x;
	x.recipient = (char *)phones[0];
	x.channel = CONSENT__V1__CHANNEL__MESAJ;
	x.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	x.brand_code = BRAND;
	x.status = CONSENT__V1__STATUS__ONAY;
	x.source = CONSENT__V1__SOURCE__HS_WEB;
	x.consent_date = D1;
	x.transaction_id = "tx-g";
	x.sequence = 9;
	CHECKF(history_append(h, &xp, 1, D1 + 3, err, sizeof(err)) == 0, "%s",
	       err);
	hcfg.history = h;
	struct conn_ctx saved = ctx;
	CHECK(conn_ctx_init(&ctx, &hcfg, metrics_slot(1)) == 0);
	conn_ctx_begin_turn(&ctx);

	Consent__V1__HistoryRequest hq = CONSENT__V1__HISTORY_REQUEST__INIT;
	hq.recipient = (char *)phones[0];
	hq.brand_code = BRAND;
	hq.channel = CONSENT__V1__CHANNEL__MESAJ;
	size_t hl = consent__v1__history_request__pack(&hq, body);
	Consent__V1__CheckRequest cq = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Check ck = CONSENT__V1__CHECK__INIT, *ckp = &ck;
	ck.recipient = (char *)phones[0];
	ck.brand_code = BRAND;
	ck.channel = CONSENT__V1__CHANNEL__MESAJ;
	ck.as_of_sequence = 9;
	cq.checks = &ckp;
	cq.n_checks = 1;
	uint8_t cbody[256];
	size_t cl_len = consent__v1__check_request__pack(&cq, cbody);

	client_init(&cl);
	CHECK(conn_init(&c, &grpc_proto, &hcfg, ctx.now_ms) == 0);
	k[0] = client_call(&cl, "/consent.v1.Consent/History", body, hl, 0,
			   NULL);
	k[1] = client_call(&cl, "/consent.v1.ConsentService/Check", cbody,
			   cl_len, 0, NULL);
	hq.brand_code = 0;
	hl = consent__v1__history_request__pack(&hq, body);
	k[2] = client_call(&cl, "/consent.v1.ConsentService/History", body, hl,
			   0, NULL);
	exchange(&c, &cl, 0);
	CHECKF(k[0]->grpc_status == 0 && k[0]->body_len > 5, "%d %s",
	       k[0]->grpc_status, k[0]->grpc_message);
	if (k[0]->body_len > 5) {
		Consent__V1__HistoryResponse *r =
			consent__v1__history_response__unpack(
				NULL, k[0]->body_len - 5, k[0]->body + 5);
		CHECK(r != NULL && r->n_entries == 1);
		if (r != NULL && r->n_entries == 1) {
			struct history_state st;
			history_state(h, &st);
			CHECK(r->entries[0]->consent->sequence == 9 &&
			      r->entries[0]->applied_at == D1 + 3 &&
			      strcmp(r->entries[0]->consent->transaction_id,
				     "tx-g") == 0 &&
			      r->entries[0]->chain_hash.len == 32 &&
			      memcmp(r->entries[0]->chain_hash.data, st.head,
				     32) == 0);
		}
		consent__v1__history_response__free_unpacked(r, NULL);
	}
	CHECK(k[1]->grpc_status == 0 && k[1]->body_len > 5);
	if (k[1]->body_len > 5) {
		Consent__V1__CheckResponse *r = consent__v1__check_response__unpack(
			NULL, k[1]->body_len - 5, k[1]->body + 5);
		CHECK(r != NULL && r->n_verdicts == 1 &&
		      r->verdicts[0]->allow && r->verdicts[0]->sequence == 9 &&
		      strcmp(r->verdicts[0]->transaction_id, "tx-g") == 0);
		consent__v1__check_response__free_unpacked(r, NULL);
	}
	expect_status(k[2], GRPC_INVALID_ARGUMENT, "brand_code");
	conn_fini(&c);
	client_fini(&cl);
	conn_ctx_fini(&ctx);
	ctx = saved;
	history_close(h);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	setup();
	RUN(test_one_call_whole_and_split);
	RUN(test_every_split_point);
	RUN(test_pipelined_streams);
	RUN(test_status_codes);
	RUN(test_tokens);
	RUN(test_unfinished_call_and_frame);
	RUN(test_rst_on_idle_stream);
	RUN(test_refusal_and_garbage);
	RUN(test_history);
	conn_ctx_fini(&ctx);
	return check_summary();
}
