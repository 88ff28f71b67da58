/*
 * rpc_fuzz: the RPC port on arbitrary bytes, two ways.
 *  1. Differential: the input as one Request body, decoded by rpc_decode
 *     and by protobuf-c. They must accept the same inputs and agree on
 *     every field (strings compared up to a NUL, where protobuf-c's
 *     C strings end), but for one rule of ours: a Request whose body
 *     oneof is set twice is refused (RPC_DECODE_TWO_BODIES), which an
 *     independent field walk (tests/pb_fields.h) confirms. Each input is
 *     also tried reshaped: concatenated with itself (every field
 *     repeated, as protobuf's merge of two messages) and with its halves
 *     swapped (fields out of order). A copy of exactly the input's size
 *     lets ASan catch any over-read.
 *  2. The input as a byte stream on a connection (conn_feed over a small
 *     real index), cut into fragments whose sizes come from the input's
 *     own hash: whatever the server writes back must be whole Response
 *     frames that protobuf-c decodes, and a connection told to close must
 *     read nothing more.
 * A violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/rpc.h"
#include "tests/pb_fields.h"
#include "tests/rpc_diff.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static struct server_config cfg;
static struct conn_ctx ctx;

static void fuzz_setup(void)
{
	static const char *const phones[] = { "+905321234567", "+905321234568" };
	struct index *ix;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.conn_out_cap_bytes = 1 << 16; /* reach the pause paths */
	REQUIRE(metrics_init(2) == 0);
	REQUIRE(index_create(64, NULL, &ix) == 0);
	for (int i = 0; i < 2; i++) {
		struct recipient r;
		struct index_key k;
		struct consent_value v = { .status = (uint8_t)(1 + i),
					   .source = 6,
					   .consent_date = 1700000000 };
		const char *why;

		REQUIRE(recipient_normalize(phones[i], 13, &r, &why) == 0);
		index_key_make(ix, &r, 600123, RTYPE_BIREYSEL, CHANNEL_MESAJ, &k);
		index_apply_writer(ix, &k, &v);
	}
	live_publish(ix);
	REQUIRE(conn_ctx_init(&ctx, &cfg, metrics_slot(0)) == 0);
}

static int same_string(const char *pc, const void *ours, size_t len)
{
	size_t n = strnlen((const char *)ours, len);

	return strlen(pc) == n && memcmp(pc, ours, n) == 0;
}


static void fuzz_differential(const uint8_t *buf, size_t len)
{
	Consent__V1__Request *m = consent__v1__request__unpack(NULL, len, buf);
	struct rpc_request req;
	int rc = rpc_decode(buf, len, &req);

	/* Room for every check, and for fewer (the iterator's case). */
	REQUIRE(decode_checks_diff(buf, len, 300) == NULL);
	REQUIRE(decode_checks_diff(buf, len, len % 8) == NULL);

	if (m != NULL && pb_fields_count(buf, len, 2, 7) > 1) {
		REQUIRE(rc == RPC_DECODE_TWO_BODIES);
		consent__v1__request__free_unpacked(m, NULL);
		return;
	}
	REQUIRE(rc != RPC_DECODE_TWO_BODIES);
	REQUIRE((m == NULL) == (rc < 0));
	if (m == NULL)
		return;
	REQUIRE(m->id == req.id && (int)m->body_case == req.kind);
	if (req.kind == RPC_REQ_AUTH)
		REQUIRE(same_string(m->auth->token, req.token, req.token_len));
	if (req.kind == RPC_REQ_STATS)
		REQUIRE(same_string(m->stats->origin, req.origin,
				    req.origin_len));
	if (req.kind == RPC_REQ_CHECK) {
		const Consent__V1__CheckRequest *cr = m->check;
		struct rpc_check_iter it;
		struct check_input in;

		REQUIRE(cr->n_checks == req.n_checks &&
			cr->brand_code == req.brand_code &&
			(int)cr->channel == req.channel &&
			(int)cr->recipient_type == req.rtype &&
			(int)cr->purpose == req.purpose);
		rpc_check_iter_init(&it, &req);
		for (size_t i = 0; i < cr->n_checks; i++) {
			const Consent__V1__Check *c = cr->checks[i];

			REQUIRE(rpc_check_next(&it, &req, &in));
			REQUIRE(same_string(c->recipient, in.recipient,
					    in.recipient_len));
			REQUIRE(in.brand_code == (c->brand_code ? c->brand_code
								: cr->brand_code));
			REQUIRE(in.channel == (c->channel ? (int)c->channel
							  : (int)cr->channel));
			REQUIRE(in.rtype == (c->recipient_type
						     ? (int)c->recipient_type
						     : (int)cr->recipient_type));
			REQUIRE(in.purpose == (c->purpose ? (int)c->purpose
							  : (int)cr->purpose));
			REQUIRE(in.as_of_time == c->as_of_time &&
				in.as_of_sequence == c->as_of_sequence);
		}
		REQUIRE(!rpc_check_next(&it, &req, &in));
	}
	consent__v1__request__free_unpacked(m, NULL);
}

/* Every reply byte must be whole Response frames. */
static void fuzz_replies(struct conn *c)
{
	const char *p;
	size_t n;

	while (conn_take_send(c, &p, &n)) {
		size_t pos = 0;

		while (pos < n) {
			uint32_t fl;
			Consent__V1__Response *r;

			REQUIRE(n - pos >= 4);
			fl = (uint32_t)(uint8_t)p[pos] << 24 |
			     (uint32_t)(uint8_t)p[pos + 1] << 16 |
			     (uint32_t)(uint8_t)p[pos + 2] << 8 |
			     (uint8_t)p[pos + 3];
			REQUIRE(n - pos - 4 >= fl);
			r = consent__v1__response__unpack(
				NULL, fl, (const uint8_t *)p + pos + 4);
			REQUIRE(r != NULL);
			consent__v1__response__free_unpacked(r, NULL);
			pos += 4 + fl;
		}
		conn_sent(c, n);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	uint8_t *copy = malloc(size ? size : 1);
	uint64_t h = 1469598103934665603ull;
	struct conn c;
	size_t pos = 0;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	memcpy(copy, data, size);
	fuzz_differential(copy, size);
	if (size > 0 && size <= 4096) {
		uint8_t *twice = malloc(2 * size);

		memcpy(twice, data, size);
		memcpy(twice + size, data, size);
		fuzz_differential(twice, 2 * size);
		/* halves swapped, in an exact-size copy */
		memcpy(twice, data + size / 2, size - size / 2);
		memcpy(twice + (size - size / 2), data, size / 2);
		memcpy(copy, twice, size);
		fuzz_differential(copy, size);
		memcpy(copy, data, size);
		free(twice);
	}

	for (size_t i = 0; i < size && i < 16; i++)
		h = (h ^ data[i]) * 1099511628211ull;
	conn_ctx_begin_turn(&ctx);
	REQUIRE(conn_init(&c, &rpc_proto, &cfg, ctx.now_ms) == 0);
	while (pos < size) {
		size_t n = 1 + (size_t)(h % 97);

		h = h * 6364136223846793005ull + 1442695040888963407ull;
		if (n > size - pos)
			n = size - pos;
		REQUIRE(conn_feed(&ctx, &c, (const char *)copy + pos, n) == 0);
		pos += n;
		fuzz_replies(&c);
		if (c.paused) {
			c.paused = false;
			REQUIRE(conn_feed(&ctx, &c, NULL, 0) == 0);
			fuzz_replies(&c);
		}
		if (c.want_close) {
			REQUIRE(c.in_len == 0);
			break;
		}
	}
	REQUIRE(c.in_len <= cfg.conn_in_cap_bytes);
	conn_fini(&c);
	free(copy);
	return 0;
}
