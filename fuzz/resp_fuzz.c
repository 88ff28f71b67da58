/*
 * resp_fuzz: the Redis port on arbitrary bytes.
 *  1. resp_parse on a copy of exactly the input's size (ASan catches any
 *     over-read), fed as growing prefixes with the parser's state carried
 *     between calls: the result must be the same as parsing the whole
 *     input at once (same length, same arguments), and every argument
 *     must lie inside the input and within the limits.
 *  2. conn_feed of the input in fragments whose sizes come from the
 *     input's own hash, against feeding it whole: the replies must be
 *     byte for byte the same (unless INFO, whose counters move, is in
 *     play), and every reply ends in CRLF.
 * CHECK ... AT / ATSEQ and HISTORY (§10) reach a real evidence store made
 * once in a temporary directory (two records of the key the index holds),
 * which they only read, so replies stay deterministic.
 * A violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "index/history.h"
#include "index/table.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/resp.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static struct server_config cfg;
static struct conn_ctx ctx;
static struct resp_arg whole[64], part[64];
static const struct resp_limits lim = { .max_args = 64, .max_arg_bytes = 200 };

static void fuzz_setup(void)
{
	struct index *ix;
	struct recipient r;
	struct index_key k;
	struct consent_value v = { .status = 1, .source = 6,
				   .consent_date = 1700000000 };
	const char *why;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.max_resp_args = 64;
	cfg.conn_in_cap_bytes = 1 << 16;
	cfg.conn_out_cap_bytes = 1 << 14;
	REQUIRE(metrics_init(2) == 0);
	REQUIRE(index_create(64, NULL, &ix) == 0);
	REQUIRE(recipient_normalize("+905321234567", 13, &r, &why) == 0);
	index_key_make(ix, &r, 600123, RTYPE_BIREYSEL, CHANNEL_MESAJ, &k);
	index_apply_writer(ix, &k, &v);
	live_publish(ix);

	/* §10: the store (left behind in /tmp by a campaign: it is small). */
	static char dir[] = "/tmp/resp_fuzz_hist.XXXXXX";
	struct history *h = NULL;
	char err[256];
	REQUIRE(mkdtemp(dir) != NULL);
	REQUIRE(history_open(dir, NULL, &h, err, sizeof(err)) == 0);
	Consent__V1__Consent ch[2], *cp[2] = { &ch[0], &ch[1] };
	for (int i = 0; i < 2; i++) {
		consent__v1__consent__init(&ch[i]);
		ch[i].recipient = "+905321234567";
		ch[i].channel = CONSENT__V1__CHANNEL__MESAJ;
		ch[i].recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
		ch[i].brand_code = 600123;
		ch[i].status = (Consent__V1__Status)(1 + i);
		ch[i].source = CONSENT__V1__SOURCE__HS_WEB;
		ch[i].consent_date = 1700000000 + 100 * i;
		ch[i].transaction_id = "tx";
		ch[i].sequence = 5 + (uint64_t)i;
	}
	REQUIRE(history_append(h, cp, 2, 1700000300, err, sizeof(err)) == 0);
	cfg.history = h;
	REQUIRE(conn_ctx_init(&ctx, &cfg, metrics_slot(0)) == 0);
}

static void fuzz_parse(const char *buf, size_t len)
{
	struct resp_parser ps = { 0 };
	const char *why;
	uint32_t argc_whole = 0, argc = 0;
	long n_whole, n = 0;

	n_whole = resp_parse(&ps, buf, len, &lim, whole, 64, &argc_whole, &why);
	REQUIRE(n_whole <= (long)len);
	memset(&ps, 0, sizeof(ps));
	for (size_t k = 1; k <= len && n == 0; k++)
		n = resp_parse(&ps, buf, k, &lim, part, 64, &argc, &why);
	if (len == 0)
		return;
	/* Errors are local (a bad byte, a header over its bound), so the
	 * prefixes meet them too; success must match exactly. */
	REQUIRE((n < 0) == (n_whole < 0) && (n == 0) == (n_whole == 0));
	if (n_whole > 0) {
		REQUIRE(n == n_whole && argc == argc_whole);
		for (uint32_t i = 0; i < argc; i++) {
			REQUIRE(part[i].p == whole[i].p &&
				part[i].len == whole[i].len);
			REQUIRE(part[i].p >= buf &&
				part[i].p + part[i].len <= buf + n);
			REQUIRE(part[i].len <= lim.max_arg_bytes);
		}
		REQUIRE(argc <= lim.max_args);
	}
}

static size_t fuzz_take(struct conn *c, char *out, size_t cap)
{
	const char *p;
	size_t n, total = 0;

	while (conn_take_send(c, &p, &n)) {
		REQUIRE(total + n <= cap);
		memcpy(out + total, p, n);
		total += n;
		conn_sent(c, n);
	}
	return total;
}

/* Feeds buf in fragments (max_frag 0: whole); returns reply bytes. */
static size_t fuzz_feed(const char *buf, size_t len, uint64_t h,
			size_t max_frag, char *out, size_t cap)
{
	struct conn c;
	size_t pos = 0, on = 0;

	REQUIRE(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	while (pos < len) {
		size_t n = max_frag ? 1 + (size_t)(h % max_frag) : len;

		h = h * 6364136223846793005ull + 1442695040888963407ull;
		if (n > len - pos)
			n = len - pos;
		REQUIRE(conn_feed(&ctx, &c, buf + pos, n) == 0);
		pos += n;
		/* Drain and resume as the loop would. */
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
	conn_fini(&c);
	return on;
}

static int fuzz_has_info(const char *buf, size_t len)
{
	for (size_t i = 0; i + 4 <= len; i++)
		if (strncasecmp(buf + i, "INFO", 4) == 0)
			return 1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static char a[1 << 22], b[1 << 22];
	char *copy = malloc(size ? size : 1);
	uint64_t h = 1469598103934665603ull;
	size_t an, bn;

	if (!ready) {
		fuzz_setup();
		ready = 1;
	}
	memcpy(copy, data, size);
	fuzz_parse(copy, size);

	for (size_t i = 0; i < size && i < 16; i++)
		h = (h ^ data[i]) * 1099511628211ull;
	conn_ctx_begin_turn(&ctx);
	an = fuzz_feed(copy, size, h, 0, a, sizeof(a));
	bn = fuzz_feed(copy, size, h, 1 + h % 31, b, sizeof(b));
	REQUIRE(an == 0 || a[an - 1] == '\n');
	if (!fuzz_has_info(copy, size))
		REQUIRE(an == bn && memcmp(a, b, an) == 0);
	free(copy);
	return 0;
}
