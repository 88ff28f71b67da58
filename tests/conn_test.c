/*
 * conn: the connection's byte handling through struct conn_proto, with a
 * toy line protocol written here (each '\n'-terminated line is answered
 * with "<n>:<line>\n", n counting the connection's lines), so what is
 * tested is conn.c's side of the interface: whole lines handed over in
 * place or from the carry buffer, the rest carried, input over the cap
 * answered through reply_fatal, HTTP refused before the protocol sees a
 * byte, per-connection state zeroed at conn_init and kept between
 * receives, per-worker state made once per protocol (at most
 * CONN_PROTOS_MAX) and destroyed by conn_ctx_fini.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"
#include "server/conn.h"
#include "server/metrics.h"
#include "tests/check.h"

struct line_conn {
	uint32_t lines; /* answered on this connection */
};

struct line_worker {
	uint32_t calls; /* process calls on this worker */
};

static int n_created, n_destroyed;
static enum conn_fatal last_fatal;
static int n_fatal;

static void *line_ctx_create(const struct server_config *cfg)
{
	(void)cfg;
	n_created++;
	return calloc(1, sizeof(struct line_worker));
}

static void line_ctx_destroy(void *state)
{
	n_destroyed++;
	free(state);
}

static long line_process(struct conn_ctx *x, struct conn *c, const char *buf,
			 size_t len);

static int line_fatal(struct conn_ctx *x, struct conn *c, enum conn_fatal why)
{
	(void)x;
	n_fatal++;
	last_fatal = why;
	c->want_close = true;
	return obuf_append(&c->out, "fatal\n", 6);
}

static const struct conn_proto line_proto = {
	.name = "line",
	.metrics = METRICS_RESP,
	.process = line_process,
	.reply_fatal = line_fatal,
	.ctx_create = line_ctx_create,
	.ctx_destroy = line_ctx_destroy,
	.refusal = "busy\n",
	.refusal_len = 5,
};

/* A second protocol with no per-worker state. */
static const struct conn_proto bare_proto = {
	.name = "bare",
	.metrics = METRICS_RPC,
	.process = line_process,
	.reply_fatal = line_fatal,
};

static long line_process(struct conn_ctx *x, struct conn *c, const char *buf,
			 size_t len)
{
	struct line_conn *lc = (struct line_conn *)c->ps.bytes;
	struct line_worker *lw = conn_ctx_state(x, c->proto);
	size_t pos = 0;

	if (c->proto == &line_proto) {
		if (lw == NULL)
			return -ENOMEM;
		lw->calls++;
	}
	for (;;) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		char head[16];
		int hn;

		if (nl == NULL)
			break;
		hn = snprintf(head, sizeof(head), "%u:", ++lc->lines);
		if (obuf_append(&c->out, head, (size_t)hn) < 0 ||
		    obuf_append(&c->out, buf + pos,
				(size_t)(nl - (buf + pos)) + 1) < 0)
			return -ENOMEM;
		x->n_requests++;
		pos = (size_t)(nl - buf) + 1;
	}
	return (long)pos;
}

static struct server_config cfg;
static struct conn_ctx ctx;

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

static void test_lines_split_and_carried(void)
{
	static const char in[] = "alpha\nbeta\ngamma\n";
	char out[256];
	struct conn c;

	CHECK(conn_init(&c, &line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(c.proto == &line_proto && c.authed && c.sniffing);
	CHECK(((struct line_conn *)c.ps.bytes)->lines == 0);
	/* Split inside "beta": "alpha" answered in place, "be" carried. */
	CHECK(conn_feed(&ctx, &c, in, 8) == 0);
	CHECK(c.in_len == 2 && memcmp(c.in, "be", 2) == 0);
	CHECK(c.partial_since_ms == ctx.now_ms);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "1:alpha\n");
	/* The rest, one byte at a time: every line once, in order. */
	for (size_t i = 8; i < sizeof(in) - 1; i++)
		CHECK(conn_feed(&ctx, &c, in + i, 1) == 0);
	CHECK(c.in_len == 0 && c.partial_since_ms == 0);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "2:beta\n3:gamma\n");
	CHECK(((struct line_conn *)c.ps.bytes)->lines == 3);
	CHECK(!c.want_close && n_fatal == 0);
	conn_fini(&c);
	CHECK(c.in == NULL && c.out.data == NULL && c.wire.data == NULL);
}

static void test_state_per_protocol(void)
{
	struct line_worker *lw;
	struct conn a, b;
	char out[64];
	int created = n_created;

	/* Two connections of one protocol share its worker state. */
	CHECK(conn_init(&a, &line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_init(&b, &line_proto, &cfg, ctx.now_ms) == 0);
	lw = conn_ctx_state(&ctx, &line_proto);
	CHECK(lw != NULL);
	uint32_t calls = lw ? lw->calls : 0;
	CHECK(conn_feed(&ctx, &a, "x\n", 2) == 0);
	CHECK(conn_feed(&ctx, &b, "y\n", 2) == 0);
	CHECK(conn_ctx_state(&ctx, &line_proto) == lw);
	CHECK(lw != NULL && lw->calls == calls + 2);
	CHECK(n_created == created);
	/* Per-connection state is each connection's own. */
	drain(&a, out, sizeof(out));
	CHECK_STREQ(out, "1:x\n");
	drain(&b, out, sizeof(out));
	CHECK_STREQ(out, "1:y\n");
	conn_fini(&a);
	conn_fini(&b);
	/* A protocol without ctx_create has a NULL state, registered once. */
	uint32_t n = ctx.n_protos;
	CHECK(conn_ctx_state(&ctx, &bare_proto) == NULL);
	CHECK(conn_ctx_state(&ctx, &bare_proto) == NULL);
	CHECK(ctx.n_protos == n + 1);
	CHECK(conn_init(&a, &bare_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &a, "z\n", 2) == 0);
	drain(&a, out, sizeof(out));
	CHECK_STREQ(out, "1:z\n");
	conn_fini(&a);
}

static void test_over_the_cap(void)
{
	static char big[4096];
	struct metrics *m = metrics_slot(0);
	uint64_t oversize = m->frames_oversize;
	char out[64];
	struct conn c;

	memset(big, 'q', sizeof(big));
	cfg.conn_in_cap_bytes = 1000;
	CHECK(conn_init(&c, &line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, big, 600) == 0);
	CHECK(c.in_len == 600 && n_fatal == 0);
	CHECK(conn_feed(&ctx, &c, big, 600) == 0);
	CHECK(n_fatal == 1 && last_fatal == CONN_FATAL_TOO_LARGE);
	CHECK(c.want_close && c.in_len == 0);
	CHECK(m->frames_oversize == oversize + 1);
	drain(&c, out, sizeof(out));
	CHECK_STREQ(out, "fatal\n");
	/* Closing: nothing more is processed. */
	CHECK(conn_feed(&ctx, &c, "late\n", 5) == 0);
	CHECK(conn_out_pending(&c) == 0);
	conn_fini(&c);
	cfg.conn_in_cap_bytes = (1u << 20) + 4;
	n_fatal = 0;
}

static void test_http_never_reaches_the_protocol(void)
{
	struct line_worker *lw = conn_ctx_state(&ctx, &line_proto);
	uint32_t calls = lw ? lw->calls : 0;
	struct conn c;

	CHECK(conn_init(&c, &line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, "GE", 2) == 0); /* undecided: kept */
	CHECK(!c.want_close && c.in_len == 2);
	CHECK(conn_feed(&ctx, &c, "T / HTTP/1.1\n", 13) == 0);
	CHECK(c.want_close && conn_out_pending(&c) == 0 && c.in_len == 0);
	CHECK(lw != NULL && lw->calls == calls);
	conn_fini(&c);
}

/* A protocol that is HTTP itself: no sniff, its bytes reach it; its
 * per-connection fini hook runs at conn_fini. */
static int n_conn_fini;

static void http_line_fini(struct conn *c)
{
	(void)c;
	n_conn_fini++;
}

static const struct conn_proto http_line_proto = {
	.name = "http-line",
	.metrics = METRICS_RPC,
	.process = line_process,
	.reply_fatal = line_fatal,
	.speaks_http = true,
	.fini = http_line_fini,
};

static void test_http_protocol_is_not_sniffed(void)
{
	struct conn c;
	const char *p;
	size_t n;

	CHECK(conn_init(&c, &http_line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(!c.sniffing);
	CHECK(conn_feed(&ctx, &c, "GET / HTTP/1.1\n", 15) == 0);
	CHECK(!c.want_close && conn_take_send(&c, &p, &n));
	CHECK(n == 17 && memcmp(p, "1:GET / HTTP/1.1\n", 17) == 0);
	CHECK(n_conn_fini == 0);
	conn_fini(&c);
	CHECK(n_conn_fini == 1);
}

/* An unfinished request the protocol holds itself (conn.partial) starts
 * the stall clock like carried bytes do. */
static void test_partial_held_by_the_protocol(void)
{
	struct conn c;

	CHECK(conn_init(&c, &line_proto, &cfg, ctx.now_ms) == 0);
	CHECK(conn_feed(&ctx, &c, "a\n", 2) == 0);
	CHECK(c.partial_since_ms == 0);
	c.partial = true;
	CHECK(conn_feed(&ctx, &c, "b\n", 2) == 0);
	CHECK(c.in_len == 0 && c.partial_since_ms == ctx.now_ms);
	c.partial = false;
	CHECK(conn_feed(&ctx, &c, "c\n", 2) == 0);
	CHECK(c.partial_since_ms == 0);
	conn_fini(&c);
}

static void test_fini_destroys_states(void)
{
	int destroyed = n_destroyed;

	static struct conn_proto many[CONN_PROTOS_MAX + 1];
	void *state;

	conn_ctx_fini(&ctx);
	CHECK(n_destroyed == destroyed + 1); /* line_proto's; bare has none */
	CHECK(ctx.n_protos == 0);
	/* Made again, eagerly by conn_ctx_add, once. */
	CHECK(conn_ctx_add(&ctx, &line_proto) == 0);
	CHECK(n_created == 2);
	CHECK(conn_ctx_add(&ctx, &line_proto) == 0);
	state = conn_ctx_state(&ctx, &line_proto);
	CHECK(state != NULL && n_created == 2 && ctx.n_protos == 1);
	/* At most CONN_PROTOS_MAX protocols per worker. */
	for (unsigned i = 0; i < CONN_PROTOS_MAX + 1; i++)
		many[i] = bare_proto;
	for (unsigned i = 1; i < CONN_PROTOS_MAX; i++)
		CHECK(conn_ctx_add(&ctx, &many[i]) == 0);
	CHECK(conn_ctx_add(&ctx, &many[0]) == -ENOMEM);
	CHECK(conn_ctx_state(&ctx, &line_proto) == state);
	conn_ctx_fini(&ctx);
	CHECK(n_destroyed == destroyed + 2);
}

int main(void)
{
	server_config_defaults(&cfg);
	cfg.workers = 1;
	if (metrics_init(1) < 0 || conn_ctx_init(&ctx, &cfg, metrics_slot(0)) < 0)
		return 1;
	RUN(test_lines_split_and_carried);
	RUN(test_state_per_protocol);
	RUN(test_over_the_cap);
	RUN(test_http_never_reaches_the_protocol);
	RUN(test_http_protocol_is_not_sniffed);
	RUN(test_partial_held_by_the_protocol);
	RUN(test_fini_destroys_states);
	return check_summary();
}
