/*
 * policy_fuzz: the Postfix policy port and its map parser on arbitrary
 * bytes.
 *  1. policy_parse on a copy of exactly the input's size (ASan catches
 *     any over-read), fed as growing prefixes with the parser's state
 *     carried between calls: the result must be the same as parsing the
 *     whole input at once (same length, same values), and every value
 *     must lie inside the request.
 *  2. conn_feed of the input in fragments whose sizes come from the
 *     input's own hash, against feeding it whole: the replies must be
 *     byte for byte the same, and each is "action=...\n\n".
 *  3. policymap_parse of the input as a map file: success or a message
 *     naming a line; a map that parses finds each of its own rules.
 * A violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/policymap.h"
#include "core/recipient.h"
#include "index/table.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/policy.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static struct server_config cfg;
static struct conn_ctx ctx;
static const struct policy_limits lim = { .max_line_bytes = 200,
					  .max_attrs = 16 };

static const char map_text[] =
	"sasl:robot 700456\n"
	"news@shop.example 600123\n"
	"@shop.example 600123\n"
	"info@bank.example 600123 BILGILENDIRME\n";

static void fuzz_setup(void)
{
	static const char *const rcpts[] = { "yes@mail.example",
					     "no@mail.example" };
	struct policymap *map;
	struct index *ix;
	const char *why;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.policy_max_line_bytes = lim.max_line_bytes;
	cfg.policy_max_attrs = lim.max_attrs;
	cfg.conn_in_cap_bytes = 1 << 16;
	cfg.conn_out_cap_bytes = 1 << 14;
	REQUIRE(metrics_init(2) == 0);
	REQUIRE(policymap_parse(map_text, sizeof(map_text) - 1, &map, NULL,
				0) == 0);
	cfg.policy_map = map;
	REQUIRE(index_create(64, NULL, &ix) == 0);
	for (int i = 0; i < 2; i++) {
		struct consent_value v = { .status = (uint8_t)(1 + i),
					   .source = 6,
					   .consent_date = 1700000000 };
		struct recipient r;
		struct index_key k;

		REQUIRE(recipient_normalize(rcpts[i], strlen(rcpts[i]), &r,
					    &why) == 0);
		index_key_make(ix, &r, 600123, RTYPE_BIREYSEL, CHANNEL_EPOSTA,
			       &k);
		index_apply_writer(ix, &k, &v);
	}
	live_publish(ix);
	REQUIRE(conn_ctx_init(&ctx, &cfg, metrics_slot(0)) == 0);
}

static bool same_value(const struct policy_value *a,
		       const struct policy_value *b)
{
	return a->p == b->p && a->len == b->len;
}

static void inside(const struct policy_value *v, const char *buf, long n)
{
	if (v->p != NULL)
		REQUIRE(v->p >= buf && v->p + v->len <= buf + n);
}

static void fuzz_parse(const char *buf, size_t len)
{
	struct policy_parser ps = { 0 };
	struct policy_request whole, part;
	const char *why;
	long n_whole, n = 0;

	n_whole = policy_parse(&ps, buf, len, &lim, &whole, &why);
	REQUIRE(n_whole <= (long)len);
	memset(&ps, 0, sizeof(ps));
	for (size_t k = 1; k <= len && n == 0; k++)
		n = policy_parse(&ps, buf, k, &lim, &part, &why);
	if (len == 0)
		return;
	REQUIRE((n < 0) == (n_whole < 0) && (n == 0) == (n_whole == 0));
	if (n_whole > 0) {
		REQUIRE(n == n_whole);
		REQUIRE(same_value(&part.request, &whole.request));
		REQUIRE(same_value(&part.protocol_state,
				   &whole.protocol_state));
		REQUIRE(same_value(&part.sender, &whole.sender));
		REQUIRE(same_value(&part.recipient, &whole.recipient));
		REQUIRE(same_value(&part.sasl_username, &whole.sasl_username));
		REQUIRE(part.n_attrs == whole.n_attrs &&
			part.n_attrs <= lim.max_attrs);
		inside(&part.request, buf, n);
		inside(&part.protocol_state, buf, n);
		inside(&part.sender, buf, n);
		inside(&part.recipient, buf, n);
		inside(&part.sasl_username, buf, n);
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

	REQUIRE(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	while (pos < len) {
		size_t n = max_frag ? 1 + (size_t)(h % max_frag) : len;

		h = h * 6364136223846793005ull + 1442695040888963407ull;
		if (n > len - pos)
			n = len - pos;
		REQUIRE(conn_feed(&ctx, &c, buf + pos, n) == 0);
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
	conn_fini(&c);
	return on;
}

/* Every reply is "action=<no LF>\n\n". */
static void fuzz_replies(const char *out, size_t n)
{
	size_t pos = 0;

	while (pos < n) {
		const char *nl;

		REQUIRE(n - pos >= 9 && memcmp(out + pos, "action=", 7) == 0);
		nl = memchr(out + pos, '\n', n - pos);
		REQUIRE(nl != NULL && (size_t)(nl - out) + 1 < n &&
			nl[1] == '\n');
		pos = (size_t)(nl - out) + 2;
	}
}

static void fuzz_map(const char *buf, size_t len)
{
	struct policymap *m = NULL;
	char err[256];
	size_t pos = 0;

	if (policymap_parse(buf, len, &m, err, sizeof(err)) < 0) {
		REQUIRE(m == NULL);
		REQUIRE(strncmp(err, "policy map", 10) == 0);
		return;
	}
	REQUIRE(m != NULL);
	/* Each line's key, looked up as what it names, finds a rule. */
	while (pos < len) {
		const char *s = buf + pos, *nl = memchr(s, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - s) : len - pos, k = 0;
		const struct policymap_rule *r;

		pos += ll + (nl != NULL);
		while (k < ll && (s[k] == ' ' || s[k] == '\t'))
			k++;
		s += k;
		ll -= k;
		for (k = 0; k < ll && s[k] != ' ' && s[k] != '\t' &&
			    s[k] != '#' && s[k] != '\r'; k++)
			;
		if (k == 0 || memchr(s, '#', k) != NULL)
			continue;
		if (k > 5 && memcmp(s, "sasl:", 5) == 0)
			r = policymap_lookup(m, s + 5, k - 5, "", 0);
		else if (memchr(s, '@', k) == NULL || s[0] == '@') {
			char sender[300] = "x@";
			size_t dl = s[0] == '@' ? k - 1 : k;

			if (dl > sizeof(sender) - 3)
				continue;
			memcpy(sender + 2, s[0] == '@' ? s + 1 : s, dl);
			r = policymap_lookup(m, "", 0, sender, dl + 2);
		} else {
			r = policymap_lookup(m, "", 0, s, k);
		}
		REQUIRE(r != NULL && r->brand_code > 0 &&
			r->brand_code <= 99999999u);
		REQUIRE(r->purpose == PURPOSE_TICARI ||
			r->purpose == PURPOSE_BILGILENDIRME);
	}
	policymap_destroy(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static char a[1 << 20], b[1 << 20];
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
	fuzz_replies(a, an);
	REQUIRE(an == bn && memcmp(a, b, an) == 0);
	fuzz_map(copy, size);
	free(copy);
	return 0;
}
