/*
 * grpc_fuzz: arbitrary bytes into a gRPC connection (server/grpc.c
 * through conn_feed), as a client would send them: whole, and in
 * fragments whose sizes come from the input's own hash. nghttp2 parses
 * the HTTP/2 framing; what is ours is the frame splitting, the call
 * bookkeeping, the message buffers and the RPC decoder behind them.
 *  1. The replies, fed whole and split, are whole HTTP/2 frames (within
 *     our SETTINGS_MAX_FRAME_SIZE, of RFC 9113's types) and start with
 *     the server's SETTINGS.
 *  2. An nghttp2 client session (its preface sent first) consumes every
 *     reply byte (no fatal error; a stream it never opened is its own
 *     protocol error, not a crash).
 *  3. Unanswered calls and the connection's buffers are freed at
 *     conn_fini (ASan's leak check).
 * A violation traps. Seeds: fuzz/corpus/grpc (a preface and a call).
 */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "index/table.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/grpc.h"
#include "server/live.h"
#include "server/metrics.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static struct server_config cfg;
static struct conn_ctx ctx;

static void fuzz_setup(void)
{
	static const char *const rcpts[] = { "+905321234567",
					     "+905321234568" };
	struct index *ix;
	const char *why;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.max_frame_bytes = 4096;
	cfg.conn_in_cap_bytes = 1 << 16;
	cfg.conn_out_cap_bytes = 1 << 16;
	cfg.grpc_max_streams = 16;
	REQUIRE(metrics_init(2) == 0);
	REQUIRE(index_create(64, NULL, &ix) == 0);
	for (int i = 0; i < 2; i++) {
		struct consent_value v = { .status = (uint8_t)(1 + i),
					   .source = 6,
					   .consent_date = 1700000000 };
		struct recipient r;
		struct index_key k;

		REQUIRE(recipient_normalize(rcpts[i], strlen(rcpts[i]), &r,
					    &why) == 0);
		index_key_make(ix, &r, 600123, RTYPE_BIREYSEL, CHANNEL_MESAJ,
			       &k);
		index_apply_writer(ix, &k, &v);
	}
	live_publish(ix);
	REQUIRE(conn_ctx_init(&ctx, &cfg, metrics_slot(0)) == 0);
}

static size_t fuzz_take(struct conn *c, char *out, size_t cap)
{
	const char *p;
	size_t n, total = 0;

	while (conn_take_send(c, &p, &n)) {
		if (total + n > cap)
			n = cap - total; /* replies past the buffer: dropped */
		memcpy(out + total, p, n);
		total += n;
		conn_sent(c, n);
		if (total == cap)
			break;
	}
	return total;
}

/* Feeds buf in fragments (max_frag 0: whole); returns reply bytes. */
static size_t fuzz_feed(const uint8_t *buf, size_t len, uint64_t h,
			size_t max_frag, char *out, size_t cap, bool *closed)
{
	struct conn c;
	size_t pos = 0, on = 0;

	REQUIRE(conn_init(&c, &grpc_proto, &cfg, ctx.now_ms) == 0);
	while (pos < len) {
		size_t n = max_frag ? 1 + (size_t)(h % max_frag) : len;

		h = h * 6364136223846793005ull + 1442695040888963407ull;
		if (n > len - pos)
			n = len - pos;
		REQUIRE(conn_feed(&ctx, &c, (const char *)buf + pos, n) == 0);
		pos += n;
		for (int i = 0; i < 64; i++) {
			on += fuzz_take(&c, out + on, cap - on);
			if (!c.paused)
				break;
			c.paused = false;
			REQUIRE(conn_feed(&ctx, &c, NULL, 0) == 0);
		}
		if (c.want_close)
			break;
	}
	on += fuzz_take(&c, out + on, cap - on);
	*closed = c.want_close;
	conn_fini(&c);
	return on;
}

/* The server's bytes parse as HTTP/2 for a client. */
static void fuzz_client_reads(const char *out, size_t n)
{
	nghttp2_session_callbacks *cb;
	nghttp2_session *s;
	const uint8_t *p;
	ssize_t r;

	REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
	REQUIRE(nghttp2_session_client_new(&s, cb, NULL) == 0);
	nghttp2_session_callbacks_del(cb);
	while (nghttp2_session_mem_send(s, &p) > 0)
		;
	r = nghttp2_session_mem_recv(s, (const uint8_t *)out, n);
	/* Replies on streams this client never opened (the fuzzer's) are a
	 * protocol error it answers with a GOAWAY, not a fatal one: every
	 * byte is consumed. */
	REQUIRE(r == (ssize_t)n);
	nghttp2_session_del(s);
}

/* The reply's frames are whole: 9-byte headers whose lengths add up. */
static void fuzz_frames(const char *out, size_t n, size_t cap)
{
	size_t pos = 0;

	if (n == cap)
		return; /* cut by our buffer */
	REQUIRE(n == 0 || (n >= 9 && out[3] == NGHTTP2_SETTINGS));
	while (pos < n) {
		const uint8_t *h = (const uint8_t *)out + pos;
		size_t flen;

		REQUIRE(n - pos >= 9);
		flen = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
		REQUIRE(flen <= 16384 && n - pos - 9 >= flen);
		REQUIRE(h[3] <= 9); /* a frame type of RFC 9113 */
		pos += 9 + flen;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static char a[1 << 20], b[1 << 20];
	uint8_t *copy = malloc(size ? size : 1);
	uint64_t h = 1469598103934665603ull;
	size_t an, bn;
	bool ca, cb;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	memcpy(copy, data, size);
	for (size_t i = 0; i < size && i < 16; i++)
		h = (h ^ data[i]) * 1099511628211ull;
	conn_ctx_begin_turn(&ctx);
	an = fuzz_feed(copy, size, h, 0, a, sizeof(a), &ca);
	bn = fuzz_feed(copy, size, h, 1 + h % 37, b, sizeof(b), &cb);
	fuzz_frames(a, an, sizeof(a));
	fuzz_frames(b, bn, sizeof(b));
	fuzz_client_reads(a, an);
	(void)ca;
	(void)cb;
	free(copy);
	return 0;
}
