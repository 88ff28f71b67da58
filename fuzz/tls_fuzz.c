/*
 * tls_fuzz: a client's TLS stream into server/tls.c (tests/tls_pair.h:
 * the server side driven only through tls_feed / tls_take_send /
 * conn_sent, an echo protocol behind it). The first byte picks the mode,
 * the second the piece size the bytes are fed in:
 *   0  the rest is the client's ciphertext from the first byte on (a
 *      ClientHello, noise, a plaintext client);
 *   1  a real client does the handshake, then sends the rest as
 *      application data: the echo must come back byte for byte;
 *   2  a real client does the handshake, then the rest is injected as
 *      ciphertext: nothing of it may reach the protocol unauthenticated.
 * In every mode the protocol sees bytes only on an established
 * connection. A violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"
#include "server/conn.h"
#include "server/metrics.h"
#include "server/tls.h"
#include "tests/tls_pair.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static struct server_config cfg;
static struct conn_ctx ctx;
static struct tls_server *srv;

static void fuzz_setup(void)
{
	struct tls_pair_certs pc;
	struct tls_files f;
	char err[512];

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.conn_in_cap_bytes = 1 << 16;
	REQUIRE(metrics_init(1) == 0);
	REQUIRE(conn_ctx_init(&ctx, &cfg, metrics_slot(0)) == 0);
	REQUIRE(tls_pair_make_certs(&pc) == 0);
	f = (struct tls_files){ .cert = pc.srv, .key = pc.srv_key };
	REQUIRE(tls_server_create(&f, &srv, err, sizeof(err)) == 0);
	tls_pair_remove_certs(&pc); /* loaded: the files are not needed */
}

/* Feeds data to c in pieces of split bytes, draining what c sends. */
static void fuzz_feed(struct conn *c, const uint8_t *data, size_t size,
		      size_t split)
{
	const char *p;
	size_t len;
	int err;

	for (size_t off = 0; off < size && !c->want_close;) {
		size_t k = split < size - off ? split : size - off;

		REQUIRE(tls_feed(&ctx, c, (const char *)data + off, k) == 0);
		off += k;
		while (tls_take_send(c, &p, &len, &err))
			conn_sent(c, len);
		REQUIRE(err == 0);
	}
}

static void fuzz_raw(const uint8_t *data, size_t size, size_t split)
{
	uint64_t calls = tls_echo_calls;
	struct conn c;

	REQUIRE(conn_init(&c, &tls_echo_proto, &cfg, 0) == 0);
	REQUIRE(tls_conn_create(srv, &c, 0) == 0);
	fuzz_feed(&c, data, size, split);
	/* No client can finish a handshake blind (the server's random and
	 * key share are new each time): nothing reached the protocol. */
	REQUIRE(tls_echo_calls == calls && !tls_established(c.tls));
	conn_fini(&c);
}

static void fuzz_client(const uint8_t *data, size_t size, size_t split,
			bool inject)
{
	static char got[1 << 17];
	struct tls_client cl;
	struct conn c;
	uint64_t calls;
	size_t have = 0, n;

	REQUIRE(conn_init(&c, &tls_echo_proto, &cfg, 0) == 0);
	REQUIRE(tls_conn_create(srv, &c, 0) == 0);
	REQUIRE(tls_client_init(&cl, NULL, NULL, NULL, split % 2 ?
				TLS1_2_VERSION : 0) == 0);
	REQUIRE(tls_pair_handshake(&ctx, &c, &cl, split) == 1);
	calls = tls_echo_calls;
	if (inject) {
		fuzz_feed(&c, data, size, split);
		REQUIRE(tls_echo_calls == calls);
	} else if (size > 0) {
		REQUIRE(SSL_write_ex(cl.ssl, data, size, &n) == 1 && n == size);
		for (int i = 0; i < 64 && have < size && !c.want_close;
		     i++) {
			REQUIRE(tls_pair_pump(&ctx, &c, &cl, split) == 0);
			while (have < size &&
			       SSL_read_ex(cl.ssl, got + have, size - have,
					   &n) == 1)
				have += n;
		}
		/* All of it back, unless it opens like an HTTP request
		 * (closed unanswered, as on a plaintext port) or may still
		 * (held until the method is known). */
		int http = conn_sniff_http((const char *)data,
					   size < 8 ? size : 8);

		if (http == 1)
			REQUIRE(c.want_close && have == 0);
		else if (http == -1 && size < 8)
			REQUIRE(!c.want_close && have == 0);
		else
			REQUIRE(have == size && memcmp(got, data, size) == 0);
	}
	tls_client_fini(&cl);
	conn_fini(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	size_t split;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	if (size < 2 || size > (1 << 16))
		return 0;
	split = 1 + data[1] % 64;
	switch (data[0] % 3) {
	case 0:
		fuzz_raw(data + 2, size - 2, split);
		break;
	case 1:
		fuzz_client(data + 2, size - 2, split, false);
		break;
	default:
		fuzz_client(data + 2, size - 2, split, true);
		break;
	}
	ERR_clear_error();
	return 0;
}
