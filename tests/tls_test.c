/*
 * tls: server/tls.c driven without a socket (tests/tls_pair.h): a real
 * OpenSSL client over memory BIOs on one side, the server side only
 * through tls_feed / tls_take_send / conn_sent as the loop calls them,
 * the bytes split at every size from 1 to 13 (and whole) both ways.
 * Covered: handshake and echo under every split (TLS 1.2 and 1.3),
 * replies larger than a record, a plaintext first byte, a garbage
 * handshake, a TLS 1.1 client, client certificates required, a bad record
 * after the handshake, the client's close_notify answered with ours, a
 * TLS 1.2 renegotiation refused, ALPN
 * as the protocol asks, HTTP inside TLS refused, and reload (connections
 * keep their context; a bad file keeps the old one).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"
#include "server/conn.h"
#include "server/metrics.h"
#include "server/tls.h"
#include "tests/check.h"
#include "tests/tls_pair.h"

static struct server_config cfg;
static struct conn_ctx ctx;
static struct tls_pair_certs pc;

static struct tls_server *server_on(const char *cert, const char *key,
				    const char *ca)
{
	struct tls_files f = { .cert = cert, .key = key, .ca = ca };
	struct tls_server *t = NULL;
	char err[512];

	if (tls_server_create(&f, &t, err, sizeof(err)) < 0) {
		fprintf(stderr, "tls_server_create: %s\n", err);
		return NULL;
	}
	return t;
}

static bool conn_on(struct tls_server *t, struct conn *c)
{
	return conn_init(c, &tls_echo_proto, &cfg, ctx.now_ms) == 0 &&
	       tls_conn_create(t, c, ctx.now_ms) == 0;
}

/* Client writes msg, pumps, reads the echo back: true if equal. */
static bool echo_ok(struct conn *c, struct tls_client *cl, const char *msg,
		    size_t len, size_t split)
{
	char *got = malloc(len + 1);
	size_t have = 0, n;
	bool ok;

	if (got == NULL || SSL_write_ex(cl->ssl, msg, len, &n) != 1 || n != len) {
		free(got);
		return false;
	}
	for (int i = 0; i < 64 && have < len; i++) {
		if (tls_pair_pump(&ctx, c, cl, split) < 0)
			break;
		while (have < len &&
		       SSL_read_ex(cl->ssl, got + have, len - have, &n) == 1)
			have += n;
	}
	ok = have == len && memcmp(got, msg, len) == 0;
	free(got);
	return ok;
}

static void test_echo_every_split(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	static const char msg[] = "*3\r\n$5\r\nCHECK\r\n$13\r\n+905321234567\r\n";
	uint64_t hs0 = ctx.m->tls_handshakes;
	int versions[2] = { TLS1_2_VERSION, 0 };

	CHECK(t != NULL);
	for (int v = 0; v < 2 && t; v++)
		for (size_t split = 0; split <= 13; split++) {
			struct tls_client cl;
			struct conn c;
			char cn[64];

			CHECK(conn_on(t, &c));
			CHECK(c.partial_since_ms == ctx.now_ms); /* deadline */
			CHECK(tls_client_init(&cl, pc.ca, NULL, NULL,
					      versions[v]) == 0);
			CHECKF(tls_pair_handshake(&ctx, &c, &cl, split) == 1,
			       "version %d split %zu", versions[v], split);
			CHECK(c.partial_since_ms == 0 && !c.want_close);
			CHECK(SSL_version(cl.ssl) ==
			      (versions[v] ? versions[v] : TLS1_3_VERSION));
			tls_client_peer_cn(&cl, cn, sizeof(cn));
			CHECK_STREQ(cn, "server one");
			CHECKF(echo_ok(&c, &cl, msg, sizeof(msg) - 1, split),
			       "split %zu", split);
			CHECKF(echo_ok(&c, &cl, "x", 1, split), "split %zu",
			       split);
			tls_client_fini(&cl);
			conn_fini(&c);
			CHECK(c.tls == NULL);
		}
	CHECK(ctx.m->tls_handshakes == hs0 + 28);
	tls_server_destroy(t);
}

static void test_large_replies(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	struct tls_client cl;
	struct conn c;
	size_t len = 200000;
	char *big = malloc(len);

	CHECK(t != NULL && big != NULL);
	if (t == NULL || big == NULL)
		goto out;
	for (size_t i = 0; i < len; i++)
		big[i] = (char)('a' + i % 26);
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	/* Many records each way, sent back in pieces of 1000 bytes. */
	CHECK(echo_ok(&c, &cl, big, len, 1000));
	CHECK(echo_ok(&c, &cl, big, len, 0));
	tls_client_fini(&cl);
	conn_fini(&c);
out:
	free(big);
	tls_server_destroy(t);
}

static void test_plaintext_refused(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	uint64_t n0 = ctx.m->tls_not_tls, calls = tls_echo_calls;
	const char *p;
	size_t len;
	int err;
	struct conn c;

	CHECK(t != NULL && conn_on(t, &c));
	CHECK(tls_feed(&ctx, &c, "*1\r\n$4\r\nPING\r\n", 14) == 0);
	CHECK(c.want_close && ctx.m->tls_not_tls == n0 + 1);
	CHECK(tls_echo_calls == calls); /* the protocol saw nothing */
	CHECK(!tls_take_send(&c, &p, &len, &err) && err == 0);
	conn_fini(&c);
	tls_server_destroy(t);
}

static void test_garbage_handshake_refused(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	uint64_t n0 = ctx.m->tls_handshake_failures;
	char junk[300] = "\x16\x03\x01\x01\x00";
	const char *p;
	size_t len;
	int err;
	struct conn c;

	for (size_t i = 5; i < sizeof(junk); i++)
		junk[i] = (char)(i * 37 + 11);
	CHECK(t != NULL && conn_on(t, &c));
	for (size_t i = 0; i < sizeof(junk) && !c.want_close; i += 7)
		CHECK(tls_feed(&ctx, &c, junk + i,
			       sizeof(junk) - i < 7 ? sizeof(junk) - i : 7) == 0);
	CHECK(c.want_close && ctx.m->tls_handshake_failures == n0 + 1);
	CHECK(!tls_established(c.tls));
	/* The refusal is an alert record, nothing else. */
	CHECK(tls_take_send(&c, &p, &len, &err) && p[0] == 0x15);
	conn_fini(&c);
	tls_server_destroy(t);
}

static void test_old_version_refused(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	uint64_t n0 = ctx.m->tls_handshake_failures;
	struct tls_client cl;
	struct conn c;

	CHECK(t != NULL && conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, TLS1_1_VERSION) == 0);
	SSL_CTX_set_security_level(cl.ctx, 0);
	SSL_set_security_level(cl.ssl, 0);
	SSL_set_min_proto_version(cl.ssl, TLS1_VERSION);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 3) == 0);
	CHECK(c.want_close && ctx.m->tls_handshake_failures == n0 + 1);
	tls_client_fini(&cl);
	conn_fini(&c);
	tls_server_destroy(t);
}

static void test_client_certificates(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, pc.ca);
	uint64_t n0 = ctx.m->tls_handshake_failures, calls;
	struct tls_client cl;
	struct conn c;

	CHECK(t != NULL);
	if (t == NULL)
		return;
	/* Without a certificate: TLS 1.3 clients finish first, so the
	 * refusal comes when the server reads their (empty) Certificate. */
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	calls = tls_echo_calls;
	tls_pair_handshake(&ctx, &c, &cl, 5);
	SSL_write(cl.ssl, "x", 1);
	tls_pair_pump(&ctx, &c, &cl, 5);
	CHECK(c.want_close && !tls_established(c.tls));
	CHECK(ctx.m->tls_handshake_failures == n0 + 1);
	CHECK(tls_echo_calls == calls);
	tls_client_fini(&cl);
	conn_fini(&c);
	/* With one the CA signed. */
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, pc.cli, pc.cli_key, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 5) == 1);
	CHECK(echo_ok(&c, &cl, "hello\n", 6, 2));
	tls_client_fini(&cl);
	conn_fini(&c);
	tls_server_destroy(t);
}

static void test_bad_record_and_close_notify(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	uint64_t n0 = ctx.m->tls_record_errors, calls;
	struct tls_client cl;
	struct conn c;
	char buf[256];
	const char *p;
	size_t len;
	int n, err;

	CHECK(t != NULL && conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	/* One flipped bit in an application record: closed, not fed. */
	SSL_write(cl.ssl, "hello", 5);
	n = BIO_read(cl.out, buf, sizeof(buf));
	CHECK(n > 10);
	buf[n - 3] ^= 4;
	calls = tls_echo_calls;
	CHECK(tls_feed(&ctx, &c, buf, (size_t)n) == 0);
	CHECK(c.want_close && ctx.m->tls_record_errors == n0 + 1);
	CHECK(tls_echo_calls == calls);
	tls_client_fini(&cl);
	conn_fini(&c);

	/* The client's close_notify: what came before is answered, then
	 * ours goes out last. */
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	SSL_write(cl.ssl, "bye", 3);
	SSL_shutdown(cl.ssl);
	while ((n = BIO_read(cl.out, buf, sizeof(buf))) > 0)
		CHECK(tls_feed(&ctx, &c, buf, (size_t)n) == 0);
	CHECK(c.want_close);
	while (tls_take_send(&c, &p, &len, &err)) {
		BIO_write(cl.in, p, (int)len);
		conn_sent(&c, len);
	}
	n = SSL_read(cl.ssl, buf, sizeof(buf));
	CHECK(n == 3 && memcmp(buf, "bye", 3) == 0);
	CHECK(SSL_read(cl.ssl, buf, sizeof(buf)) == 0 &&
	      SSL_get_error(cl.ssl, 0) == SSL_ERROR_ZERO_RETURN);
	tls_client_fini(&cl);
	conn_fini(&c);
	tls_server_destroy(t);
}

static const struct conn_proto h2_proto = {
	.name = "h2echo",
	.metrics = METRICS_RPC,
	.process = tls_echo_process,
	.reply_fatal = tls_echo_fatal,
	.alpn = "h2",
};

/* ALPN as the connection's protocol asks (gRPC's "h2"), HTTP inside TLS
 * refused as on a plaintext port. */
static void test_alpn_and_http_sniff(void)
{
	static const unsigned char h2_and_1[] = "\x08http/1.1\x02h2";
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	uint64_t http0 = ctx.m->http_on_binary_port;
	const unsigned char *sel;
	unsigned int sel_len;
	struct tls_client cl;
	struct conn c;

	CHECK(t != NULL);
	if (t == NULL)
		return;
	/* A protocol with an id: the client's h2 is selected. */
	CHECK(conn_init(&c, &h2_proto, &cfg, 0) == 0 &&
	      tls_conn_create(t, &c, 0) == 0);
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	SSL_set_alpn_protos(cl.ssl, h2_and_1, sizeof(h2_and_1) - 1);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 4) == 1);
	SSL_get0_alpn_selected(cl.ssl, &sel, &sel_len);
	CHECK(sel_len == 2 && memcmp(sel, "h2", 2) == 0);
	tls_client_fini(&cl);
	conn_fini(&c);
	/* ... a client offering only others is refused. */
	CHECK(conn_init(&c, &h2_proto, &cfg, 0) == 0 &&
	      tls_conn_create(t, &c, 0) == 0);
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	SSL_set_alpn_protos(cl.ssl, h2_and_1, 9);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 4) == 0);
	CHECK(c.want_close);
	tls_client_fini(&cl);
	conn_fini(&c);
	/* A protocol without one selects none, and a client asking h2
	 * goes on without it. */
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	SSL_set_alpn_protos(cl.ssl, h2_and_1, sizeof(h2_and_1) - 1);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 4) == 1);
	SSL_get0_alpn_selected(cl.ssl, &sel, &sel_len);
	CHECK(sel_len == 0);
	/* HTTP inside the TLS: closed before the protocol sees it. */
	SSL_write(cl.ssl, "GET / HTTP/1.1\r\n", 16);
	CHECK(tls_pair_pump(&ctx, &c, &cl, 4) == 0);
	CHECK(c.want_close && ctx.m->http_on_binary_port == http0 + 1);
	tls_client_fini(&cl);
	conn_fini(&c);
	tls_server_destroy(t);
}

/* A TLS 1.2 client asking to renegotiate: refused (this fails with
 * SSL_OP_ALLOW_CLIENT_RENEGOTIATION set in server/tls.c). */
static void test_renegotiation_refused(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	struct tls_client cl;
	struct conn c;
	uint64_t hs;
	int e = SSL_ERROR_WANT_READ;

	CHECK(t != NULL && conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, TLS1_2_VERSION) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	hs = ctx.m->tls_handshakes;
	CHECK(SSL_renegotiate(cl.ssl) == 1);
	for (int i = 0; i < 8 && e == SSL_ERROR_WANT_READ; i++) {
		int r = SSL_do_handshake(cl.ssl);

		e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(cl.ssl, r);
		CHECK(tls_pair_pump(&ctx, &c, &cl, 3) == 0);
	}
	/* The server answered no_renegotiation; the client gave up. */
	CHECK(e == SSL_ERROR_SSL);
	CHECK(ctx.m->tls_handshakes == hs);
	tls_client_fini(&cl);
	conn_fini(&c);
	tls_server_destroy(t);
}

/* A copy of src at dst (the reload reads the same path again). */
static int copy_file(const char *src, const char *dst)
{
	char buf[8192];
	FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
	size_t n;
	int rc = in && out ? 0 : -1;

	while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
		if (fwrite(buf, 1, n, out) != n)
			rc = -1;
	if (in)
		fclose(in);
	if (out && fclose(out) != 0)
		rc = -1;
	return rc;
}

static void test_reload(void)
{
	char cert[128], key[128], err[512], cn[64];
	struct tls_server *t;
	struct tls_client old_cl, cl;
	struct conn old_c, c;

	snprintf(cert, sizeof(cert), "%s/live-cert.pem", pc.dir);
	snprintf(key, sizeof(key), "%s/live-key.pem", pc.dir);
	CHECK(copy_file(pc.srv, cert) == 0 && copy_file(pc.srv_key, key) == 0);
	t = server_on(cert, key, NULL);
	CHECK(t != NULL);
	if (t == NULL)
		return;
	/* A connection accepted before the reload, its handshake half done. */
	CHECK(conn_on(t, &old_c));
	CHECK(tls_client_init(&old_cl, pc.ca, NULL, NULL, 0) == 0);
	SSL_do_handshake(old_cl.ssl);
	CHECK(tls_pair_pump(&ctx, &old_c, &old_cl, 0) == 0);

	CHECK(copy_file(pc.srv2, cert) == 0 && copy_file(pc.srv2_key, key) == 0);
	CHECK(tls_server_reload(t, err, sizeof(err)) == 0);
	CHECK(tls_pair_handshake(&ctx, &old_c, &old_cl, 0) == 1);
	tls_client_peer_cn(&old_cl, cn, sizeof(cn));
	CHECK_STREQ(cn, "server one");
	CHECK(echo_ok(&old_c, &old_cl, "still", 5, 2));

	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	tls_client_peer_cn(&cl, cn, sizeof(cn));
	CHECK_STREQ(cn, "server two");
	tls_client_fini(&cl);
	conn_fini(&c);

	/* A key that is not one: refused with the file's name, and the
	 * context stays the renewed one. */
	CHECK(copy_file(pc.ca, key) == 0);
	CHECK(tls_server_reload(t, err, sizeof(err)) < 0);
	CHECKF(strstr(err, key) != NULL, "%s", err);
	CHECK(conn_on(t, &c));
	CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
	CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
	tls_client_peer_cn(&cl, cn, sizeof(cn));
	CHECK_STREQ(cn, "server two");
	tls_client_fini(&cl);
	conn_fini(&c);

	/* The old connection outlives the server's own reference. */
	tls_server_destroy(t);
	CHECK(echo_ok(&old_c, &old_cl, "after", 5, 0));
	tls_client_fini(&old_cl);
	conn_fini(&old_c);
}

struct reloader {
	struct tls_server *t;
	int n_ok;
};

static void *reload_thread(void *arg)
{
	struct reloader *r = arg;
	char err[512];

	for (int i = 0; i < 30; i++)
		r->n_ok += tls_server_reload(r->t, err, sizeof(err)) == 0;
	return NULL;
}

/* Reloads (main's thread) while connections are accepted (a worker's):
 * every connection gets a whole context, old or new, and outlives it
 * (run under TSan by make test-tsan). */
static void test_reload_while_accepting(void)
{
	struct tls_server *t = server_on(pc.srv, pc.srv_key, NULL);
	struct reloader r = { .t = t };
	static struct conn cs[64];
	pthread_t th;

	CHECK(t != NULL);
	if (t == NULL)
		return;
	CHECK(pthread_create(&th, NULL, reload_thread, &r) == 0);
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < 64; i++)
			CHECK(conn_on(t, &cs[i]));
		for (int i = 0; i < 64; i++)
			conn_fini(&cs[i]);
	}
	pthread_join(th, NULL);
	CHECK(r.n_ok == 30);
	/* After the last reload, a handshake on the final context. */
	{
		struct tls_client cl;
		struct conn c;

		CHECK(conn_on(t, &c));
		CHECK(tls_client_init(&cl, pc.ca, NULL, NULL, 0) == 0);
		CHECK(tls_pair_handshake(&ctx, &c, &cl, 0) == 1);
		tls_client_fini(&cl);
		conn_fini(&c);
	}
	tls_server_destroy(t);
}

static void test_bad_files(void)
{
	struct tls_files f = { .cert = pc.srv, .key = pc.cli_key };
	struct tls_server *t = NULL;
	char err[512];

	CHECK(tls_server_create(&f, &t, err, sizeof(err)) < 0 && t == NULL);
	CHECKF(strstr(err, pc.cli_key) != NULL, "%s", err);
	f.key = pc.srv_key;
	f.cert = "/nonexistent/cert.pem";
	CHECK(tls_server_create(&f, &t, err, sizeof(err)) < 0);
	CHECKF(strstr(err, "/nonexistent/cert.pem") != NULL, "%s", err);
	f.cert = pc.srv;
	f.ca = pc.srv_key;
	CHECK(tls_server_create(&f, &t, err, sizeof(err)) < 0);
	CHECKF(strstr(err, pc.srv_key) != NULL, "%s", err);
}

int main(void)
{
	int rc;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	if (metrics_init(1) < 0 || conn_ctx_init(&ctx, &cfg, metrics_slot(0)) < 0)
		return 1;
	if (tls_pair_make_certs(&pc) < 0) {
		fprintf(stderr, "could not make test certificates\n");
		return 1;
	}
	RUN(test_echo_every_split);
	RUN(test_large_replies);
	RUN(test_plaintext_refused);
	RUN(test_garbage_handshake_refused);
	RUN(test_old_version_refused);
	RUN(test_client_certificates);
	RUN(test_bad_record_and_close_notify);
	RUN(test_alpn_and_http_sniff);
	RUN(test_renegotiation_refused);
	RUN(test_reload);
	RUN(test_reload_while_accepting);
	RUN(test_bad_files);
	rc = check_summary();
	tls_pair_remove_certs(&pc);
	conn_ctx_fini(&ctx);
	return rc;
}
