/* resp: the incremental RESP parser (split at every byte, resumed, limits
 * checked from the headers alone, malformed input refused, inputs at the
 * end of a page followed by a PROT_NONE page) and the Redis port through
 * conn_feed over a real index: exact reply bytes, AUTH and the limits
 * before it, pipelining and batching, HTTP on the port, the output cap. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/history.h"
#include "index/table.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/resp.h"
#include "tests/check.h"

#define D1 1700000000LL
#define BRAND 600123u
#define BRAND2 700456u
/* SHA-256 of "s3cret". */
#define TOKENS_TEXT                                                          \
	"alice 1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0 " \
	"600123\n"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

/* ---- guard page -------------------------------------------------------- */

#define GUARD_MAX (1u << 20)
static char *guard_base;
static size_t guard_rw;

static const char *guard(const void *data, size_t len)
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

/* ---- parser ------------------------------------------------------------ */

static const struct resp_limits lim = { .max_args = 16, .max_arg_bytes = 64 };
static struct resp_arg args[64];

struct cmd {
	const char *name;
	const char *bytes;
	size_t len;
	uint32_t argc;
	const char *args[6];
	size_t arg_len[6];
};

#define S(lit) lit, sizeof(lit) - 1

static const struct cmd cmds[] = {
	{ "ping", S("*1\r\n$4\r\nPING\r\n"), 1, { "PING" }, { 4 } },
	{ "check", S("*4\r\n$5\r\nCHECK\r\n$13\r\n+905321234567\r\n$6\r\n600123\r\n$5\r\nMESAJ\r\n"),
	  4, { "CHECK", "+905321234567", "600123", "MESAJ" }, { 5, 13, 6, 5 } },
	{ "empty arg", S("*2\r\n$4\r\nPING\r\n$0\r\n\r\n"), 2, { "PING", "" }, { 4, 0 } },
	{ "binary arg", S("*2\r\n$4\r\nPING\r\n$4\r\n\r\n\0x\r\n"), 2,
	  { "PING", "\r\n\0x" }, { 4, 4 } },
	{ "empty array", S("*0\r\n"), 0, { 0 }, { 0 } },
	{ "null array", S("*-1\r\n"), 0, { 0 }, { 0 } },
	{ "inline", S("PING hello  world\r\n"), 3, { "PING", "hello", "world" },
	  { 4, 5, 5 } },
	{ "inline LF", S("ping\n"), 1, { "ping" }, { 4 } },
	{ "inline blank", S("\r\n"), 0, { 0 }, { 0 } },
};

static void check_args(const struct cmd *c, uint32_t argc, const char *what,
		       size_t split)
{
	CHECKF(argc == c->argc, "%s (%s %zu): argc %u", c->name, what, split,
	       argc);
	for (uint32_t i = 0; i < argc && i < c->argc; i++)
		CHECKF(args[i].len == c->arg_len[i] &&
			       memcmp(args[i].p, c->args[i], c->arg_len[i]) == 0,
		       "%s (%s %zu): arg %u", c->name, what, split, i);
}

/* Every command, fed as a prefix then whole (the parser's state carried
 * between), at every split point; the argument array is clobbered in
 * between, as another connection's command would. */
static void test_parse_split(void)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		const struct cmd *c = &cmds[i];

		for (size_t k = 0; k <= c->len; k++) {
			struct resp_parser ps = { 0 };
			const char *why = NULL, *p;
			uint32_t argc = 99;
			long n;

			p = guard(c->bytes, k);
			n = resp_parse(&ps, p, k, &lim, args, 64, &argc, &why);
			CHECKF(n == (k == c->len ? (long)c->len : 0),
			       "%s: prefix %zu gave %ld (%s)", c->name, k, n,
			       why ? why : "");
			memset(args, 0x5a, sizeof(args));
			p = guard(c->bytes, c->len);
			if (n == 0)
				n = resp_parse(&ps, p, c->len, &lim, args, 64,
					       &argc, &why);
			else
				n = resp_parse(&(struct resp_parser){ 0 }, p,
					       c->len, &lim, args, 64, &argc,
					       &why);
			CHECKF(n == (long)c->len, "%s: whole after %zu: %ld",
			       c->name, k, n);
			check_args(c, argc, "split", k);
		}
		/* One byte more at a time, state carried throughout. */
		{
			struct resp_parser ps = { 0 };
			const char *why;
			uint32_t argc = 0;
			long n = 0;

			for (size_t k = 1; k <= c->len && n == 0; k++) {
				n = resp_parse(&ps, guard(c->bytes, k), k, &lim,
					       args, 64, &argc, &why);
				if (n == 0)
					memset(args, 0x5a, sizeof(args));
			}
			CHECKF(n == (long)c->len, "%s: drip %ld", c->name, n);
			check_args(c, argc, "drip", 0);
		}
	}
}

/* Two commands back to back: the first is consumed alone. */
static void test_parse_pipeline(void)
{
	const char in[] = "*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n";
	struct resp_parser ps = { 0 };
	size_t pos = 0, len = sizeof(in) - 1;
	const char *why;
	uint32_t argc;
	int seen = 0;

	while (pos < len) {
		long n = resp_parse(&ps, in + pos, len - pos, &lim, args, 64,
				    &argc, &why);

		CHECK(n > 0);
		if (n <= 0)
			break;
		memset(&ps, 0, sizeof(ps));
		pos += (size_t)n;
		seen++;
	}
	CHECK(seen == 3);
}

struct bad {
	const char *name;
	const char *bytes;
	size_t len;
	long expect;
};

static const struct bad bads[] = {
	{ "count not a number", S("*x\r\n"), -EPROTO },
	{ "bulk length not a number", S("*2\r\n$abc\r\n"), -EPROTO },
	{ "bulk longer than said", S("*1\r\n$3\r\nPINGPONG\r\n"), -EPROTO },
	{ "bare LF after count", S("*1\n$4\r\nPING\r\n"), -EPROTO },
	{ "bare LF after length", S("*1\r\n$4\nPING\r\n"), -EPROTO },
	{ "CR CR", S("*1\r\r"), -EPROTO },
	{ "negative bulk", S("*1\r\n$-1\r\n"), -EPROTO },
	{ "integer instead of bulk", S("*1\r\n:3\r\n"), -EPROTO },
	{ "19 digits", S("*1000000000000000000\r\n"), -EPROTO },
	{ "header past 24 bytes", S("*000000000000000000"), 0 },
	{ "header past 24 bytes, more", S("*00000000000000000000000000"), -EPROTO },
	{ "too many arguments (header alone)", S("*17\r\n"), -E2BIG },
	{ "argument too long (header alone)", S("*1\r\n$65\r\n"), -EMSGSIZE },
	{ "inline argument too long", S("PING xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"), -EMSGSIZE },
	{ "inline too many words", S("a b c d e f g h i j k l m n o p q\r\n"), -E2BIG },
	{ "incomplete", S("*2\r\n$4\r\nPING\r\n$3\r\nab"), 0 },
};

static void test_parse_bad(void)
{
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		const struct bad *b = &bads[i];
		struct resp_parser ps = { 0 };
		const char *why = NULL;
		uint32_t argc;
		long n = resp_parse(&ps, guard(b->bytes, b->len), b->len, &lim,
				    args, 64, &argc, &why);

		CHECKF(n == b->expect, "%s: %ld, want %ld", b->name, n,
		       b->expect);
		if (n < 0)
			CHECKF(why != NULL && why[0], "%s: no reason", b->name);
	}
	/* An inline line longer than 4 arguments' worth, without its LF. */
	{
		char line[300];
		struct resp_parser ps = { 0 };
		const char *why;
		uint32_t argc;

		memset(line, 'x', sizeof(line));
		CHECK(resp_parse(&ps, guard(line, 256), 256, &lim, args, 64,
				 &argc, &why) == 0);
		CHECK(resp_parse(&ps, guard(line, 257), 257, &lim, args, 64,
				 &argc, &why) == -EMSGSIZE);
	}
}

/* Random bytes and random cuts of valid commands, at every prefix: never
 * an over-read (the guard page), a result in range. */
static void test_parse_noise(void)
{
	char buf[512];

	for (int it = 0; it < 20000; it++) {
		size_t n = rnd() % sizeof(buf);
		struct resp_parser ps = { 0 };
		const char *why;
		uint32_t argc;
		long r = 0;

		if (it % 2) {
			const struct cmd *c = &cmds[rnd() % 9];

			n = c->len;
			memcpy(buf, c->bytes, n);
			if (n)
				buf[rnd() % n] = (char)rnd();
		} else {
			for (size_t k = 0; k < n; k++)
				buf[k] = "*$\r\n0123456789-PING x"[rnd() % 21];
		}
		for (size_t k = 1; k <= n && r == 0; k++)
			r = resp_parse(&ps, guard(buf, k), k, &lim, args, 64,
				       &argc, &why);
		CHECK(r <= (long)n);
		if (r > 0)
			CHECK(argc <= lim.max_args);
	}
}

/* ---- the port ---------------------------------------------------------- */

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
	put(ix, "+905321234567", BRAND2, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_ONAY, D1 + 180);
	index_set_meta_writer(ix, 7, 42, D1, D1 + 1000);
	live_publish(ix);
	if (conn_ctx_init(&ctx, &cfg, metrics_slot(0)) < 0)
		exit(1);
}

static size_t drain(struct conn *c, char *out, size_t cap)
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
	out[total] = '\0';
	return total;
}

/* Builds a RESP array from space-separated words. */
static size_t command(char *out, const char *words)
{
	const char *w[64];
	size_t wl[64], n = 0, len = 0;
	const char *p = words;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		w[n] = p;
		while (*p && *p != ' ')
			p++;
		wl[n] = (size_t)(p - w[n]);
		n++;
	}
	len += (size_t)sprintf(out + len, "*%zu\r\n", n);
	for (size_t i = 0; i < n; i++) {
		len += (size_t)sprintf(out + len, "$%zu\r\n", wl[i]);
		memcpy(out + len, w[i], wl[i]);
		len += wl[i];
		out[len++] = '\r';
		out[len++] = '\n';
	}
	return len;
}

static char reply[1 << 20];

/* Sends one command (words) on c, returns the reply text. */
static const char *ask(struct conn *c, const char *words)
{
	char in[8192];
	size_t n = command(in, words);

	CHECK(conn_feed(&ctx, c, in, n) == 0);
	drain(c, reply, sizeof(reply) - 1);
	return reply;
}

#define ASK(c, words, want)                                              \
	do {                                                             \
		const char *got_ = ask((c), (words));                    \
		CHECKF(strcmp(got_, (want)) == 0, "%s -> %s", (words),   \
		       got_);                                            \
	} while (0)

static void test_commands(void)
{
	struct conn c;

	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	ASK(&c, "CHECK +905321234567 600123 MESAJ",
	    "*4\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n:1700000000\r\n");
	ASK(&c, "check 05321234568 600123 mesaj BIREYSEL TICARI",
	    "*4\r\n:0\r\n+CONSENT_REJECTED\r\n$3\r\nRET\r\n:1700000060\r\n");
	ASK(&c, "CHECK +905329999999 600123 MESAJ",
	    "*4\r\n:0\r\n+NO_CONSENT\r\n$-1\r\n$-1\r\n");
	ASK(&c, "CHECK +905329999999 600123 MESAJ TACIR",
	    "*4\r\n:1\r\n+MERCHANT_NO_REJECTION\r\n$-1\r\n$-1\r\n");
	ASK(&c, "CHECK +905321234567 600123 MESAJ BILGILENDIRME BIREYSEL",
	    "*4\r\n:1\r\n+NOT_COMMERCIAL\r\n$4\r\nONAY\r\n:1700000000\r\n");
	ask(&c, "CHECK 12 600123 MESAJ");
	CHECK(strncmp(reply, "-ERR INVALID_REQUEST ", 21) == 0);
	ASK(&c, "CHECK +905321234567 0 MESAJ",
	    "-ERR INVALID_REQUEST brand_code: missing (0 is not a brand)\r\n");
	ASK(&c, "CHECK +905321234567 6x MESAJ",
	    "-ERR INVALID_REQUEST brand_code: not a decimal number\r\n");
	ASK(&c, "CHECK +905321234567 600123 FAX",
	    "-ERR INVALID_REQUEST channel: not ARAMA, MESAJ or EPOSTA\r\n");
	ask(&c, "CHECK +905321234567 600123 MESAJ TACIR TACIR");
	CHECK(strncmp(reply, "-ERR INVALID_REQUEST ", 21) == 0);
	ask(&c, "CHECK ali@example.com 600123 MESAJ");
	CHECK(strncmp(reply, "-ERR INVALID_REQUEST channel", 28) == 0);
	ASK(&c, "CHECK a b",
	    "-ERR wrong number of arguments for 'check' command\r\n");
	ask(&c, "MCHECK 600123 MESAJ BIREYSEL TICARI +905321234567 bad "
		"5329999999 05321234568");
	CHECK(strncmp(reply, "*4\r\n:1\r\n-ERR INVALID_REQUEST ", 29) == 0);
	CHECK(strlen(reply) > 12 &&
	      strcmp(reply + strlen(reply) - 8, ":0\r\n:0\r\n") == 0);
	ASK(&c, "MCHECK 600123 MESAJ NOBODY TICARI x",
	    "-ERR INVALID_REQUEST recipient_type: not BIREYSEL or TACIR\r\n");
	ASK(&c, "MCHECK 600123 MESAJ BIREYSEL",
	    "-ERR wrong number of arguments for 'mcheck' command\r\n");
	ASK(&c, "PING", "+PONG\r\n");
	ASK(&c, "ping hi", "$2\r\nhi\r\n");
	ASK(&c, "AUTH whatever", "+OK\r\n"); /* no token file */
	ASK(&c, "CONFIG GET save", "-ERR unknown command 'CONFIG'\r\n");
	ASK(&c, "COMMAND", "-ERR unknown command 'COMMAND'\r\n");
	ask(&c, "INFO");
	CHECK(strncmp(reply, "$", 1) == 0 && strstr(reply, "records:3\r\n") &&
	      strstr(reply, "generation:7\r\n") &&
	      strstr(reply, "applied_sequence:42\r\n") &&
	      strstr(reply, "data_as_of:1700001000\r\n") &&
	      strstr(reply, "checks:"));
	CHECK(!c.want_close);
	ASK(&c, "QUIT", "+OK\r\n");
	CHECK(c.want_close);
	ASK(&c, "PING", ""); /* after QUIT: nothing more is read */
	conn_fini(&c);

	/* Inline commands, as from telnet; the unknown name is sanitised. */
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	{
		static const char in[] = "PING\r\nCHECK +905321234567 600123 "
					 "MESAJ\r\nFOO'\x01\r\n";

		conn_feed(&ctx, &c, in, sizeof(in) - 1);
	}
	drain(&c, reply, sizeof(reply) - 1);
	CHECK(strcmp(reply, "+PONG\r\n*4\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\n"
			    "ONAY\r\n:1700000000\r\n"
			    "-ERR unknown command 'FOO?\?'\r\n") == 0);
	conn_fini(&c);
}

static void test_auth(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t refused = m->unauthenticated_refused, fails = m->auth_failures;
	char big[3000];
	struct conn c;

	ctx.cfg = &cfg_tok;
	CHECK(conn_init(&c, &resp_proto, &cfg_tok, ctx.now_ms) == 0);
	ASK(&c, "PING", "+PONG\r\n");
	ASK(&c, "CHECK +905321234567 600123 MESAJ",
	    "-NOAUTH Authentication required.\r\n");
	ASK(&c, "INFO", "-NOAUTH Authentication required.\r\n");
	ASK(&c, "CONFIG GET save", "-NOAUTH Authentication required.\r\n");
	CHECK(m->unauthenticated_refused == refused + 3);
	ASK(&c, "AUTH nope",
	    "-WRONGPASS invalid username-password pair or user is "
	    "disabled.\r\n");
	CHECK(m->auth_failures == fails + 1 && !c.authed);
	ASK(&c, "AUTH alice s3cret", "+OK\r\n");
	CHECK(c.authed);
	ASK(&c, "CHECK +905321234567 600123 MESAJ",
	    "*4\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n:1700000000\r\n");
	/* A real record of another brand: the same as no such brand. */
	ASK(&c, "CHECK +905321234567 700456 MESAJ",
	    "*4\r\n:0\r\n+NOT_AUTHORIZED\r\n$-1\r\n$-1\r\n");
	ASK(&c, "CHECK +905321234567 999 MESAJ",
	    "*4\r\n:0\r\n+NOT_AUTHORIZED\r\n$-1\r\n$-1\r\n");
	/* Authenticated limits: 9 arguments are fine. */
	ask(&c, "MCHECK 600123 MESAJ BIREYSEL TICARI 1 2 3 4");
	CHECK(strncmp(reply, "*4\r\n", 4) == 0);
	conn_fini(&c);

	/* Before AUTH: 9 arguments close the connection. */
	CHECK(conn_init(&c, &resp_proto, &cfg_tok, ctx.now_ms) == 0);
	ask(&c, "PING 1 2 3 4 5 6 7 8");
	CHECK(strcmp(reply, "-ERR Protocol error: too many arguments before "
			    "AUTH\r\n") == 0);
	CHECK(c.want_close);
	conn_fini(&c);
	/* ... and so does an argument over 1 KiB, from its header alone. */
	CHECK(conn_init(&c, &resp_proto, &cfg_tok, ctx.now_ms) == 0);
	memset(big, 'x', sizeof(big));
	conn_feed(&ctx, &c, "*2\r\n$4\r\nAUTH\r\n$2000\r\n", 21);
	drain(&c, reply, sizeof(reply) - 1);
	CHECK(strcmp(reply, "-ERR Protocol error: argument too long before "
			    "AUTH\r\n") == 0);
	CHECK(c.want_close);
	conn_fini(&c);
	ctx.cfg = &cfg;
}

/* A pipeline gives the same bytes however it is split. */
static void test_split_every_byte(void)
{
	static char in[1 << 16], want[1 << 18], got[1 << 18];
	static const char *const pipeline[] = {
		"CHECK +905321234567 600123 MESAJ", "PING",
		"CHECK bad 600123 MESAJ", "CHECK 05321234568 600123 MESAJ",
		"MCHECK 600123 MESAJ BIREYSEL TICARI +905321234567 x 5321234568",
		"NOPE", "CHECK +905329999999 600123 MESAJ TACIR",
	};
	size_t n = 0, wn, gn;
	struct conn c;

	for (size_t i = 0; i < sizeof(pipeline) / sizeof(pipeline[0]); i++)
		n += command(in + n, pipeline[i]);
	n += (size_t)sprintf(in + n, "PING inline\r\n");
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	conn_feed(&ctx, &c, in, n);
	wn = drain(&c, want, sizeof(want) - 1);
	conn_fini(&c);
	CHECK(strncmp(want, "*4\r\n:1\r\n+CONSENT_GIVEN", 22) == 0);
	CHECK(strstr(want, "$6\r\ninline\r\n") != NULL);
	for (size_t k = 0; k <= n; k++) {
		CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
		conn_feed(&ctx, &c, in, k);
		conn_feed(&ctx, &c, in + k, n - k);
		gn = drain(&c, got, sizeof(got) - 1);
		CHECKF(gn == wn && memcmp(got, want, wn) == 0, "split at %zu", k);
		conn_fini(&c);
		if (gn != wn)
			break;
	}
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	for (size_t k = 0; k < n; k++)
		conn_feed(&ctx, &c, in + k, 1);
	gn = drain(&c, got, sizeof(got) - 1);
	CHECK(gn == wn && memcmp(got, want, wn) == 0);
	CHECK(c.in_len == 0);
	conn_fini(&c);
}

/* Many CHECKs in one receive are batched yet answered in order, with
 * other commands in between. */
static void test_pipeline_batching(void)
{
	static char in[1 << 18], out[1 << 20];
	size_t n = 0, on;
	struct conn c;
	const char *p;
	int checks = 0, pongs = 0;

	for (int i = 0; i < 1000; i++)
		n += command(in + n, i % 7 == 6 ? "PING"
				     : i % 2 ? "CHECK +905321234568 600123 MESAJ"
					     : "CHECK +905321234567 600123 MESAJ");
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, in, n) == 0);
	on = drain(&c, out, sizeof(out) - 1);
	p = out;
	for (int i = 0; i < 1000; i++) {
		const char *want = i % 7 == 6 ? "+PONG\r\n"
				   : i % 2 ? "*4\r\n:0\r\n+CONSENT_REJECTED\r\n$3\r\nRET\r\n:1700000060\r\n"
					   : "*4\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n:1700000000\r\n";

		CHECKF(strncmp(p, want, strlen(want)) == 0, "reply %d", i);
		if (strncmp(p, want, strlen(want)) != 0)
			break;
		p += strlen(want);
		if (i % 7 == 6)
			pongs++;
		else
			checks++;
	}
	CHECK(p == out + on && c.stat_requests == 1000);
	conn_fini(&c);
}

static void test_http_on_port(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t before = m->http_on_binary_port;
	struct conn c;

	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	conn_feed(&ctx, &c, "POS", 3);
	CHECK(!c.want_close);
	conn_feed(&ctx, &c, "T / HTTP/1.1\r\nHost: x\r\n\r\n", 25);
	CHECK(c.want_close && conn_out_pending(&c) == 0);
	CHECK(m->http_on_binary_port == before + 1);
	conn_fini(&c);
	/* "GETX" is not a method: an ordinary unknown inline command. */
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	conn_feed(&ctx, &c, "GETX\r\n", 6);
	drain(&c, reply, sizeof(reply) - 1);
	CHECK(strcmp(reply, "-ERR unknown command 'GETX'\r\n") == 0);
	conn_fini(&c);
}

static void test_output_cap(void)
{
	static char in[1 << 18], out[1 << 20];
	struct server_config small = cfg;
	struct conn c;
	size_t n = 0, on = 0;
	int turns = 0;

	small.conn_out_cap_bytes = 2048;
	ctx.cfg = &small;
	/* An MCHECK whose reply passes the cap is refused whole. */
	CHECK(conn_init(&c, &resp_proto, &small, ctx.now_ms) == 0);
	n = (size_t)sprintf(in, "MCHECK 600123 MESAJ BIREYSEL TICARI");
	for (int i = 0; i < 300; i++)
		n += (size_t)sprintf(in + n, " bad%d", i);
	in[n++] = '\r';
	in[n++] = '\n';
	small.max_resp_arg_bytes = 1 << 14; /* inline line room */
	conn_feed(&ctx, &c, in, n);
	drain(&c, reply, sizeof(reply) - 1);
	CHECK(strncmp(reply, "-ERR reply passes the output cap", 32) == 0);
	CHECK(!c.want_close);
	/* 500 pipelined CHECKs (~25 KB of replies): paused, then resumed
	 * as the output drains; every one answered. */
	n = 0;
	for (int i = 0; i < 500; i++)
		n += command(in + n, "CHECK +905321234567 600123 MESAJ");
	conn_feed(&ctx, &c, in, n);
	CHECK(c.paused);
	while ((c.paused || c.in_len) && turns++ < 1000) {
		on += drain(&c, out + on, sizeof(out) - on - 1);
		c.paused = false;
		conn_feed(&ctx, &c, NULL, 0);
	}
	on += drain(&c, out + on, sizeof(out) - on - 1);
	CHECK(on == 500 * strlen("*4\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n"
				 ":1700000000\r\n"));
	conn_fini(&c);
	ctx.cfg = &cfg;
}

/* Noise at the port: replies are error lines or nothing; never a crash. */
static void test_garbage(void)
{
	static char in[4096], out[1 << 16];

	for (int i = 0; i < 3000; i++) {
		size_t n = rnd() % sizeof(in), on;
		struct conn c;

		for (size_t j = 0; j < n; j++)
			in[j] = (char)rnd();
		if (i % 2 && n > 0)
			in[0] = '*';
		CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
		conn_feed(&ctx, &c, in, n);
		on = drain(&c, out, sizeof(out) - 1);
		CHECK(on == 0 || out[on - 1] == '\n');
		conn_fini(&c);
	}
}

/* §10: CHECK ... AT / ATSEQ and HISTORY against a real evidence store. */
static void test_history(void)
{
	char dir[] = "/tmp/resp_test_hist.XXXXXX", err[300];
	struct history *h = NULL;
	struct server_config hcfg = cfg, htok = cfg_tok;
	struct conn c;

	CHECK(mkdtemp(dir) != NULL);
	CHECKF(history_open(dir, NULL, &h, err, sizeof(err)) == 0, "%s", err);
	if (h == NULL)
		return;
	Consent__V1__Consent ch[2];
	for (int i = 0; i < 2; i++) {
		Consent__V1__Consent x = CONSENT__V1__CONSENT__INIT;
		x.recipient = "+905321234567";
		x.channel = CONSENT__V1__CHANNEL__MESAJ;
		x.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
		x.brand_code = BRAND;
		x.status = i == 0 ? CONSENT__V1__STATUS__ONAY
				  : CONSENT__V1__STATUS__RET;
		x.source = i == 0 ? CONSENT__V1__SOURCE__HS_WEB
				  : CONSENT__V1__SOURCE__HS_MESAJ;
		x.consent_date = D1 + 100 * i;
		x.creation_date = D1 + 100 * i + 5;
		x.transaction_id = i == 0 ? "tx-a" : "";
		x.sequence = 40 + (uint64_t)i;
		ch[i] = x;
	}
	Consent__V1__Consent *cp[2] = { &ch[0], &ch[1] };
	CHECKF(history_append(h, cp, 2, D1 + 7, err, sizeof(err)) == 0, "%s",
	       err);
	hcfg.history = htok.history = h;
	struct conn_ctx saved = ctx;
	CHECK(conn_ctx_init(&ctx, &hcfg, metrics_slot(1)) == 0);
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &resp_proto, &hcfg, ctx.now_ms) == 0);
	/* As of a sequence, of a time: the four fields and the sequence. */
	ASK(&c, "CHECK +905321234567 600123 MESAJ ATSEQ 40",
	    "*5\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n:1700000000\r\n"
	    ":40\r\n");
	ASK(&c, "CHECK 05321234567 600123 MESAJ BIREYSEL ATSEQ 41",
	    "*5\r\n:0\r\n+CONSENT_REJECTED\r\n$3\r\nRET\r\n:1700000100\r\n"
	    ":41\r\n");
	ASK(&c, "CHECK +905321234567 600123 MESAJ at 1700000050 TICARI",
	    "*5\r\n:1\r\n+CONSENT_GIVEN\r\n$4\r\nONAY\r\n:1700000000\r\n"
	    ":40\r\n");
	/* No record then: nil sequence. */
	ASK(&c, "CHECK +905321234567 600123 MESAJ AT 1600000000",
	    "*5\r\n:0\r\n+NO_CONSENT\r\n$-1\r\n$-1\r\n$-1\r\n");
	/* Before the history's start, both, and bad values. */
	ask(&c, "CHECK +905321234567 600123 MESAJ ATSEQ 39");
	CHECKF(strncmp(reply, "-ERR INVALID_REQUEST as_of_sequence", 35) == 0 &&
	       strstr(reply, "40") != NULL, "%s", reply);
	ask(&c, "CHECK +905321234567 600123 MESAJ AT 1700000050 ATSEQ 40");
	CHECKF(strstr(reply, "at most one") != NULL, "%s", reply);
	ASK(&c, "CHECK +905321234567 600123 MESAJ ATSEQ",
	    "-ERR INVALID_REQUEST ATSEQ: a sequence must follow\r\n");
	ask(&c, "CHECK +905321234567 600123 MESAJ ATSEQ 0");
	CHECKF(strncmp(reply, "-ERR INVALID_REQUEST ATSEQ: not", 31) == 0,
	       "%s", reply);
	ask(&c, "CHECK +905321234567 600123 MESAJ AT -5");
	CHECKF(strncmp(reply, "-ERR INVALID_REQUEST AT: not", 28) == 0, "%s",
	       reply);
	ask(&c, "CHECK +905321234567 600123 MESAJ AT 1 AT 2");
	CHECKF(strstr(reply, "AT: given twice") != NULL, "%s", reply);
	/* HISTORY: every field, oldest first. */
	ASK(&c, "HISTORY 05321234567 600123 MESAJ",
	    "*2\r\n"
	    "*7\r\n:40\r\n$4\r\nONAY\r\n$6\r\nHS_WEB\r\n:1700000000\r\n"
	    ":1700000005\r\n$4\r\ntx-a\r\n:1700000007\r\n"
	    "*7\r\n:41\r\n$3\r\nRET\r\n$8\r\nHS_MESAJ\r\n:1700000100\r\n"
	    ":1700000105\r\n$0\r\n\r\n:1700000007\r\n");
	ASK(&c, "HISTORY +905321234567 600123 MESAJ TACIR", "*0\r\n");
	ASK(&c, "HISTORY +905321234567 600123",
	    "-ERR wrong number of arguments for 'history' command\r\n");
	ASK(&c, "HISTORY +905321234567 600123 MESAJ NOBODY",
	    "-ERR INVALID_REQUEST recipient_type: not BIREYSEL or TACIR\r\n");
	ask(&c, "HISTORY ali@example.com 600123 MESAJ");
	CHECK(strncmp(reply, "-ERR INVALID_REQUEST channel", 28) == 0);
	conn_fini(&c);

	/* A partner sees only its brands' history. */
	ctx.cfg = &htok;
	CHECK(conn_init(&c, &resp_proto, &htok, ctx.now_ms) == 0);
	ASK(&c, "AUTH s3cret", "+OK\r\n");
	ask(&c, "HISTORY +905321234567 700456 MESAJ");
	CHECKF(strncmp(reply, "-NOPERM ", 8) == 0, "%s", reply);
	ask(&c, "HISTORY +905321234567 600123 MESAJ");
	CHECK(strncmp(reply, "*2\r\n", 4) == 0);
	conn_fini(&c);
	conn_ctx_fini(&ctx);
	ctx = saved;

	/* History off. */
	conn_ctx_begin_turn(&ctx);
	CHECK(conn_init(&c, &resp_proto, &cfg, ctx.now_ms) == 0);
	ask(&c, "CHECK +905321234567 600123 MESAJ ATSEQ 40");
	CHECKF(strstr(reply, "history is off") != NULL, "%s", reply);
	ask(&c, "HISTORY +905321234567 600123 MESAJ");
	CHECKF(strncmp(reply, "-ERR history is off", 19) == 0, "%s", reply);
	conn_fini(&c);
	history_close(h);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	setup();
	RUN(test_parse_split);
	RUN(test_parse_pipeline);
	RUN(test_parse_bad);
	RUN(test_parse_noise);
	RUN(test_commands);
	RUN(test_auth);
	RUN(test_split_every_byte);
	RUN(test_pipeline_batching);
	RUN(test_http_on_port);
	RUN(test_output_cap);
	RUN(test_garbage);
	RUN(test_history);
	conn_ctx_fini(&ctx);
	live_publish(NULL);
	tokens_destroy(toks);
	return check_summary();
}
