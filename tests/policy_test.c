/* policy: the Postfix policy parser (split at every byte, resumed, CRLF,
 * the line and attribute limits at and past their bounds, lines that are
 * not name=value, inputs at the end of a page followed by a PROT_NONE
 * page) and the port through conn_feed over a real index: the action for
 * every verdict, non-RCPT states, unmapped senders, the map's precedence,
 * pipelining in order, requests split at every byte, oversize refused with
 * a 451 and a close, stale data deferred, and the counters. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/policymap.h"
#include "core/recipient.h"
#include "index/table.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/policy.h"
#include "tests/check.h"

#define D1 1700000000LL
#define BRAND 600123u
#define BRAND2 700456u

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

/* ---- requests ---------------------------------------------------------- */

/* A request as Postfix 3.7 sends it at RCPT (abridged). */
static size_t req(char *buf, size_t cap, const char *state,
		  const char *sender, const char *rcpt, const char *sasl)
{
	int n = snprintf(buf, cap,
			 "request=smtpd_access_policy\n"
			 "protocol_state=%s\n"
			 "protocol_name=ESMTP\n"
			 "client_address=127.0.0.1\n"
			 "helo_name=localhost\n"
			 "sender=%s\n"
			 "recipient=%s\n"
			 "recipient_count=0\n"
			 "sasl_method=%s\n"
			 "sasl_username=%s\n"
			 "instance=1a2b.3c4d.5e6f.0\n"
			 "size=0\n"
			 "\n",
			 state, sender, rcpt, *sasl ? "PLAIN" : "", sasl);

	if (n < 0 || (size_t)n >= cap)
		abort();
	return (size_t)n;
}

/* ---- parser ------------------------------------------------------------ */

static const struct policy_limits lim = { .max_line_bytes = 64,
					  .max_attrs = 8 };

static bool val_is(const struct policy_value *v, const char *s)
{
	return v->p != NULL && v->len == strlen(s) &&
	       memcmp(v->p, s, v->len) == 0;
}

static void test_parse_whole_and_split(void)
{
	static const char in[] =
		"request=smtpd_access_policy\r\n"
		"protocol_state=RCPT\n"
		"sender=a@b.example\n"
		"sender=Last@B.example\n" /* the last one counts */
		"recipient=\n"
		"x=y=z\n"
		"\r\n"
		"tail";
	size_t whole = sizeof(in) - 1 - 4;
	struct policy_parser ps = { 0 };
	struct policy_request r;
	const char *why = NULL, *g;
	long n;

	g = guard(in, sizeof(in) - 1);
	n = policy_parse(&ps, g, sizeof(in) - 1, &lim, &r, &why);
	CHECK(n == (long)whole);
	CHECK(val_is(&r.request, "smtpd_access_policy"));
	CHECK(val_is(&r.protocol_state, "RCPT"));
	CHECK(val_is(&r.sender, "Last@B.example"));
	CHECK(r.recipient.p != NULL && r.recipient.len == 0);
	CHECK(r.sasl_username.p == NULL);
	CHECK(r.n_attrs == 6);
	/* Every split point: need more until the empty line, then the
	 * same request, each value inside the input. */
	for (size_t k = 0; k <= whole; k++) {
		struct policy_request p;

		memset(&ps, 0, sizeof(ps));
		g = guard(in, k);
		n = policy_parse(&ps, g, k, &lim, &p, &why);
		if (k < whole) {
			CHECKF(n == 0, "split %zu: %ld", k, n);
			/* Resume with the whole request in place. */
			g = guard(in, whole);
			n = policy_parse(&ps, g, whole, &lim, &p, &why);
		}
		CHECKF(n == (long)whole, "split %zu", k);
		CHECK(val_is(&p.sender, "Last@B.example"));
		CHECK(p.sender.p >= g && p.sender.p + p.sender.len <= g + n);
	}
	/* An empty request is a request (of no attributes). */
	memset(&ps, 0, sizeof(ps));
	g = guard("\n", 1);
	CHECK(policy_parse(&ps, g, 1, &lim, &r, &why) == 1 && r.n_attrs == 0);
}

static void test_parse_limits(void)
{
	char line[256], buf[1024];
	struct policy_parser ps;
	struct policy_request r;
	const char *why = NULL;
	size_t n;

	/* A line of exactly max_line_bytes, with CRLF: fine; one more byte:
	 * refused, at once, without waiting for its end. */
	memset(line, 'v', sizeof(line));
	memcpy(line, "name=", 5);
	n = 64;
	memcpy(buf, line, n);
	memcpy(buf + n, "\r\n\n", 3);
	memset(&ps, 0, sizeof(ps));
	CHECK(policy_parse(&ps, guard(buf, n + 3), n + 3, &lim, &r, &why) ==
	      (long)n + 3);
	memset(&ps, 0, sizeof(ps));
	memcpy(buf + n, "v\n\n", 3);
	CHECK(policy_parse(&ps, guard(buf, n + 3), n + 3, &lim, &r, &why) ==
	      -EMSGSIZE);
	memset(&ps, 0, sizeof(ps));
	CHECK(policy_parse(&ps, guard(line, 66), 66, &lim, &r, &why) ==
	      -EMSGSIZE);
	CHECK_STREQ(why, "attribute line too long");
	memset(&ps, 0, sizeof(ps));
	CHECK(policy_parse(&ps, guard(line, 65), 65, &lim, &r, &why) == 0);
	/* max_attrs attributes: fine; one more: refused. */
	n = 0;
	for (int i = 0; i < 8; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "a%d=%d\n", i,
				      i);
	memcpy(buf + n, "\n", 1);
	memset(&ps, 0, sizeof(ps));
	CHECK(policy_parse(&ps, guard(buf, n + 1), n + 1, &lim, &r, &why) ==
	      (long)n + 1);
	CHECK(r.n_attrs == 8);
	memcpy(buf + n, "a8=8\n\n", 6);
	memset(&ps, 0, sizeof(ps));
	CHECK(policy_parse(&ps, guard(buf, n + 6), n + 6, &lim, &r, &why) ==
	      -E2BIG);
	CHECK_STREQ(why, "too many attributes");
	/* Not name=value. */
	static const char *bad[] = { "novalue\n\n", "=value\n\n",
				     "a=1\njunk\n\n" };
	for (size_t i = 0; i < 3; i++) {
		memset(&ps, 0, sizeof(ps));
		CHECKF(policy_parse(&ps, guard(bad[i], strlen(bad[i])),
				    strlen(bad[i]), &lim, &r, &why) == -EPROTO,
		       "bad %zu", i);
	}
}

/* ---- the port ---------------------------------------------------------- */

static struct server_config cfg;
static struct conn_ctx ctx;
static struct policymap *map;

static const char map_text[] =
	"sasl:robot        700456\n"
	"news@shop.example 600123\n"
	"@shop.example     600123\n"
	"info@bank.example 600123 BILGILENDIRME\n";

static void put(struct index *ix, const char *rcpt, uint32_t brand,
		int status, int64_t date)
{
	struct recipient r;
	struct index_key key;
	struct consent_value v = { .status = (uint8_t)status, .source = 6,
				   .consent_date = date };
	const char *why;

	CHECK(recipient_normalize(rcpt, strlen(rcpt), &r, &why) == 0);
	index_key_make(ix, &r, brand, RTYPE_BIREYSEL, CHANNEL_EPOSTA, &key);
	CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
}

static void setup(void)
{
	struct index *ix;
	char err[200];

	server_config_defaults(&cfg);
	cfg.workers = 1;
	if (policymap_parse(map_text, strlen(map_text), &map, err,
			    sizeof(err)) < 0) {
		fprintf(stderr, "policymap_parse: %s\n", err);
		exit(1);
	}
	cfg.policy_map = map;
	if (metrics_init(2) < 0 || index_create(1024, NULL, &ix) < 0)
		exit(1);
	put(ix, "yes@mail.example", BRAND, STATUS_ONAY, D1);
	put(ix, "no@mail.example", BRAND, STATUS_RET, D1 + 60);
	/* Brand 2 (the SASL robot's) has a consent where brand 1 has none. */
	put(ix, "other@mail.example", BRAND2, STATUS_ONAY, D1);
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
		if (total + n >= cap)
			abort();
		memcpy(out + total, p, n);
		total += n;
		conn_sent(c, n);
	}
	out[total] = '\0';
	return total;
}

/* One request on a fresh connection; its reply into out. */
static void ask(const char *state, const char *sender, const char *rcpt,
		const char *sasl, char *out, size_t cap)
{
	char buf[2048];
	size_t n = req(buf, sizeof(buf), state, sender, rcpt, sasl);
	struct conn c;

	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, buf, n) == 0);
	CHECK(!c.want_close && c.in_len == 0);
	drain(&c, out, cap);
	conn_fini(&c);
}

#define DUNNO "action=DUNNO\n\n"
#define REJECTED                                                           \
	"action=550 5.7.1 CONSENT_REJECTED: the recipient rejected "        \
	"commercial e-mail from this sender (\xc4\xb0YS)\n\n"
#define NO_CONSENT                                                         \
	"action=550 5.7.1 NO_CONSENT: no commercial e-mail consent from "   \
	"the recipient (\xc4\xb0YS)\n\n"
#define STALE "action=451 4.7.1 DATA_STALE: consent data stale (\xc4\xb0YS)\n\n"

static void test_verdicts(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t given = m->checks[METRICS_POLICY][REASON_CONSENT_GIVEN];
	uint64_t notcomm = m->checks[METRICS_POLICY][REASON_NOT_COMMERCIAL];
	uint64_t rejected = m->policy_rejected, reqs = m->policy_requests;
	char out[512];

	ask("RCPT", "news@shop.example", "Yes@Mail.Example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	CHECK(m->checks[METRICS_POLICY][REASON_CONSENT_GIVEN] == given + 1);
	ask("RCPT", "news@shop.example", "no@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, REJECTED);
	ask("RCPT", "news@shop.example", "nobody@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, NO_CONSENT);
	CHECK(m->policy_rejected == rejected + 2);
	/* Not an address: INVALID_REQUEST, refused with what was wrong. */
	ask("RCPT", "news@shop.example", "two words@mail.example", "", out,
	    sizeof(out));
	CHECKF(strncmp(out, "action=550 5.7.1 INVALID_REQUEST: ", 34) == 0 &&
	       strstr(out, "(\xc4\xb0YS)\n\n") != NULL, "%s", out);
	CHECK(m->checks[METRICS_POLICY][REASON_INVALID_REQUEST] >= 1);
	/* An informational sender: NOT_COMMERCIAL, DUNNO. */
	ask("RCPT", "INFO@bank.example", "nobody@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	CHECK(m->checks[METRICS_POLICY][REASON_NOT_COMMERCIAL] == notcomm + 1);
	CHECK(m->policy_requests == reqs + 5);
}

static void test_states_and_unmapped(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t checks = metrics_checks_total(m), unmapped = m->policy_unmapped;
	static const char *states[] = { "CONNECT", "EHLO", "HELO", "MAIL",
					"VRFY", "ETRN", "DATA",
					"END-OF-MESSAGE" };
	char out[512];

	/* A denied recipient, but not at RCPT: DUNNO, nothing checked. */
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		ask(states[i], "news@shop.example", "no@mail.example", "", out,
		    sizeof(out));
		CHECKF(strcmp(out, DUNNO) == 0, "%s: %s", states[i], out);
	}
	CHECK(metrics_checks_total(m) == checks);
	/* Unmapped senders (the null sender among them): DUNNO, counted. */
	ask("RCPT", "x@elsewhere.example", "no@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	ask("RCPT", "", "no@mail.example", "", out, sizeof(out));
	CHECK_STREQ(out, DUNNO);
	ask("RCPT", "x@sub.shop.example", "no@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	CHECK(m->policy_unmapped == unmapped + 3);
	CHECK(metrics_checks_total(m) == checks);
	/* Another request kind: DUNNO. */
	{
		static const char other[] =
			"request=junk\nprotocol_state=RCPT\n"
			"sender=news@shop.example\nrecipient=no@mail.example\n\n";
		struct conn c;

		CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
		CHECK(conn_feed(&ctx, &c, other, sizeof(other) - 1) == 0);
		drain(&c, out, sizeof(out));
		CHECK_STREQ(out, DUNNO);
		conn_fini(&c);
	}
	CHECK(metrics_checks_total(m) == checks);
}

static void test_precedence(void)
{
	char out[512];

	/* The domain maps to BRAND (no record for other@: NO_CONSENT); the
	 * SASL user maps to BRAND2, which has the consent. */
	ask("RCPT", "anyone@shop.example", "other@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, NO_CONSENT);
	ask("RCPT", "anyone@shop.example", "other@mail.example", "robot", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	/* SASL alone, with the null sender. */
	ask("RCPT", "", "other@mail.example", "robot", out, sizeof(out));
	CHECK_STREQ(out, DUNNO);
	ask("RCPT", "", "yes@mail.example", "robot", out, sizeof(out));
	CHECK_STREQ(out, NO_CONSENT);
	/* An unknown SASL user falls through to the sender. */
	ask("RCPT", "news@SHOP.example", "yes@mail.example", "human", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	ask("RCPT", "news@shop.example", "no@mail.example", "human", out,
	    sizeof(out));
	CHECK_STREQ(out, REJECTED);
}

/* Mixed requests in one receive, then the same bytes one at a time: the
 * same replies, in order. */
static void test_pipelined_and_split(void)
{
	static char in[8192];
	char want[2048], out[4096];
	size_t n = 0;
	struct conn c;

	n += req(in + n, sizeof(in) - n, "RCPT", "news@shop.example",
		 "yes@mail.example", "");
	n += req(in + n, sizeof(in) - n, "MAIL", "news@shop.example", "", "");
	n += req(in + n, sizeof(in) - n, "RCPT", "news@shop.example",
		 "no@mail.example", "");
	n += req(in + n, sizeof(in) - n, "RCPT", "x@elsewhere.example",
		 "no@mail.example", "");
	n += req(in + n, sizeof(in) - n, "RCPT", "a@shop.example",
		 "nobody@mail.example", "");
	n += req(in + n, sizeof(in) - n, "DATA", "news@shop.example", "", "");
	snprintf(want, sizeof(want), "%s%s%s%s%s%s", DUNNO, DUNNO, REJECTED,
		 DUNNO, NO_CONSENT, DUNNO);

	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, in, n) == 0);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, want);
	CHECK(c.stat_requests == 6);
	/* Two more rounds on the same connection (Postfix keeps it). */
	for (size_t i = 0; i < n; i++)
		CHECK(conn_feed(&ctx, &c, in + i, 1) == 0);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, want);
	CHECK(conn_feed(&ctx, &c, in, 700) == 0);
	CHECK(conn_feed(&ctx, &c, in + 700, n - 700) == 0);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, want);
	CHECK(!c.want_close && c.in_len == 0 && c.stat_requests == 18);
	conn_fini(&c);
}

static void test_oversize_closes(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t oversize = m->frames_oversize;
	uint64_t undecodable = m->frames_undecodable;
	char buf[8192], out[1024], want[512];
	size_t n;
	struct conn c;

	/* A good request, then a line over the bound: the first answered,
	 * then the 451, then the connection closes. */
	n = req(buf, sizeof(buf), "RCPT", "news@shop.example",
		"no@mail.example", "");
	memcpy(buf + n, "ccert_subject=", 14);
	memset(buf + n + 14, 'x', 4200);
	n += 14 + 4200;
	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, buf, n) == 0);
	CHECK(c.want_close);
	drain(&c, out, sizeof(out));
	snprintf(want, sizeof(want), "%saction=451 4.3.0 consentd: policy "
		 "request refused: attribute line too long\n\n", REJECTED);
	CHECK_STREQ(out, want);
	CHECK(m->frames_oversize == oversize + 1);
	/* Closing: nothing more is read. */
	CHECK(conn_feed(&ctx, &c, "request=x\n\n", 11) == 0);
	CHECK(conn_out_pending(&c) == 0);
	conn_fini(&c);

	/* Too many attributes, dripping in. */
	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	for (int i = 0; i < 101 && !c.want_close; i++)
		CHECK(conn_feed(&ctx, &c, "a=b\n", 4) == 0);
	CHECK(c.want_close);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "action=451 4.3.0 consentd: policy request refused: "
		    "too many attributes\n\n");
	conn_fini(&c);

	/* Not name=value. */
	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, "hello\n", 6) == 0);
	CHECK(c.want_close);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "action=451 4.3.0 consentd: policy request refused: "
		    "a line that is not name=value\n\n");
	CHECK(m->frames_undecodable == undecodable + 1);
	conn_fini(&c);

	/* The per-connection input cap (conn.c) answers the same way. */
	cfg.conn_in_cap_bytes = 2048;
	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	for (int i = 0; i < 80 && !c.want_close; i++)
		CHECK(conn_feed(&ctx, &c, "attribute=0123456789abcdef\n",
				27) == 0);
	CHECK(c.want_close);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "action=451 4.3.0 consentd: policy request over the "
		    "per-connection input cap\n\n");
	conn_fini(&c);
	cfg.conn_in_cap_bytes = (1u << 20) + 4;
}

static void test_stale_defers(void)
{
	struct metrics *m = metrics_slot(0);
	uint64_t deferred = m->policy_deferred;
	char out[512];

	cfg.stale_hard_s = 60; /* the index's data is from 2023 */
	conn_ctx_begin_turn(&ctx);
	CHECK(ctx.stale);
	ask("RCPT", "news@shop.example", "yes@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, STALE);
	CHECK(m->policy_deferred == deferred + 1);
	/* A known RET stays a 550 (denies stay servable). */
	ask("RCPT", "news@shop.example", "no@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, REJECTED);
	/* Informational mail is not judged on freshness (row 3). */
	ask("RCPT", "info@bank.example", "yes@mail.example", "", out,
	    sizeof(out));
	CHECK_STREQ(out, DUNNO);
	cfg.stale_hard_s = 0;
	conn_ctx_begin_turn(&ctx);
	CHECK(!ctx.stale);
}

static void test_http_refused(void)
{
	struct conn c;

	CHECK(conn_init(&c, &policy_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, "GET / HTTP/1.1\r\n", 16) == 0);
	CHECK(c.want_close && conn_out_pending(&c) == 0);
	conn_fini(&c);
	CHECK(strncmp(policy_proto.refusal, "action=451 4.3.0 ", 17) == 0);
	CHECK(policy_proto.refusal[policy_proto.refusal_len - 1] == '\n' &&
	      policy_proto.refusal[policy_proto.refusal_len - 2] == '\n');
}

int main(void)
{
	RUN(test_parse_whole_and_split);
	RUN(test_parse_limits);
	setup();
	RUN(test_verdicts);
	RUN(test_states_and_unmapped);
	RUN(test_precedence);
	RUN(test_pipelined_and_split);
	RUN(test_oversize_closes);
	RUN(test_stale_defers);
	RUN(test_http_refused);
	live_publish(NULL);
	policymap_destroy(map);
	return check_summary();
}
