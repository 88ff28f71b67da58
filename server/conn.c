/*
 * conn: the socket-free half of a connection (server/conn.h).
 *
 * Input: a receive's bytes are handed to the protocol in place when
 * nothing is carried over (the common case: whole frames, no copy); the
 * unfinished tail is copied into the connection's carry buffer so the
 * provided buffer can go back to the kernel at once. When something is
 * carried, the new bytes are appended and the protocol runs on the carry
 * buffer. The carry buffer never grows past cfg->conn_in_cap_bytes (plus
 * conn_out_cap_bytes while an Apply waits for the writer).
 *
 * Output: two buffers. `out` gathers this turn's replies; `wire` is what
 * the kernel is sending. conn_take_send swaps them when the previous send
 * is done, so replies can keep being gathered (and `out` can grow) while a
 * send is in flight, without copying.
 */
#include "server/conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/config.h"
#include "server/live.h"
#include "server/tls.h"

/* ---- context ----------------------------------------------------------- */

static uint64_t conn_clock_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int conn_ctx_init(struct conn_ctx *x, const struct server_config *cfg,
		  struct metrics *m)
{
	memset(x, 0, sizeof(*x));
	x->cfg = cfg;
	x->m = m;
	/* As-of verdicts' strings (§10): only with history on. */
	if (cfg != NULL && cfg->history != NULL) {
		x->history = cfg->history;
		x->evidence = calloc(CONN_BATCH_MAX, sizeof(*x->evidence));
		if (x->evidence == NULL)
			return -ENOMEM;
	}
	conn_ctx_begin_turn(x);
	return 0;
}

void conn_ctx_fini(struct conn_ctx *x)
{
	for (uint32_t i = 0; i < x->n_protos; i++)
		if (x->protos[i].proto->ctx_destroy != NULL)
			x->protos[i].proto->ctx_destroy(x->protos[i].state);
	x->n_protos = 0;
	free(x->evidence);
	x->evidence = NULL;
}

int conn_ctx_add(struct conn_ctx *x, const struct conn_proto *p)
{
	void *state = NULL;

	for (uint32_t i = 0; i < x->n_protos; i++)
		if (x->protos[i].proto == p)
			return 0;
	if (x->n_protos == CONN_PROTOS_MAX)
		return -ENOMEM;
	if (p->ctx_create != NULL) {
		state = p->ctx_create(x->cfg);
		if (state == NULL)
			return -ENOMEM;
	}
	x->protos[x->n_protos].proto = p;
	x->protos[x->n_protos].state = state;
	x->n_protos++;
	return 0;
}

void *conn_ctx_state_create(struct conn_ctx *x, const struct conn_proto *p)
{
	if (conn_ctx_add(x, p) < 0)
		return NULL;
	return x->protos[x->n_protos - 1].state;
}

void conn_ctx_begin_turn(struct conn_ctx *x)
{
	struct timespec wall;

	x->turn_us = conn_clock_us();
	x->now_ms = x->turn_us / 1000u;
	/* Read once per turn: the generation stays valid until this
	 * worker's next quiescent state (server/live.h). */
	x->ix = live_index();
	x->stale = false;
	if (x->ix != NULL) {
		index_info(x->ix, &x->info);
		if (x->cfg->stale_hard_s > 0) {
			clock_gettime(CLOCK_REALTIME, &wall);
			x->stale = wall.tv_sec - x->info.data_as_of >
				   x->cfg->stale_hard_s;
		}
	}
}

/* ---- connections ------------------------------------------------------- */

int conn_init(struct conn *c, const struct conn_proto *proto,
	      const struct server_config *cfg, uint64_t now_ms)
{
	int rc_out, rc_wire;

	memset(c, 0, sizeof(*c));
	c->proto = proto;
	c->authed = cfg->tokens == NULL;
	c->sniffing = !proto->speaks_http;
	c->last_rx_ms = now_ms;
	c->in = malloc(CONN_IBUF_INITIAL);
	rc_out = obuf_init(&c->out, OBUF_INITIAL);
	rc_wire = obuf_init(&c->wire, OBUF_INITIAL);
	if (c->in == NULL || rc_out < 0 || rc_wire < 0) {
		conn_fini(c);
		return -ENOMEM;
	}
	c->in_cap = CONN_IBUF_INITIAL;
	return 0;
}

void conn_fini(struct conn *c)
{
	tls_conn_destroy(c);
	if (c->proto != NULL && c->proto->fini != NULL)
		c->proto->fini(c);
	free(c->in);
	c->in = NULL;
	c->in_len = c->in_cap = 0;
	obuf_fini(&c->out);
	obuf_fini(&c->wire);
}

bool conn_take_send(struct conn *c, const char **buf, size_t *len)
{
	struct obuf t;

	if (c->wire.off == c->wire.len) {
		if (c->out.len == 0)
			return false;
		c->wire.len = c->wire.off = 0;
		t = c->wire;
		c->wire = c->out;
		c->out = t;
	}
	*buf = c->wire.data + c->wire.off;
	*len = c->wire.len - c->wire.off;
	return true;
}

void conn_sent(struct conn *c, size_t n)
{
	c->wire.off += n;
	if (c->wire.off > c->wire.len)
		c->wire.off = c->wire.len;
	if (c->wire.off == c->wire.len) {
		c->wire.off = c->wire.len = 0;
		obuf_trim(&c->wire);
	}
}

/* ---- input ------------------------------------------------------------- */

/* HTTP methods that start a request line (RFC 9110 plus PATCH). */
static const char *const conn_http_methods[] = {
	"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
	"CONNECT ", "TRACE ",
};

int conn_sniff_http(const char *p, size_t n)
{
	bool maybe = false;

	for (size_t i = 0; i < sizeof(conn_http_methods) /
				    sizeof(conn_http_methods[0]); i++) {
		const char *m = conn_http_methods[i];
		size_t ml = strlen(m), k = n < ml ? n : ml;

		if (memcmp(p, m, k) != 0)
			continue;
		if (k == ml)
			return 1;
		maybe = true;
	}
	return maybe ? -1 : 0;
}

/* Input over the carry cap: a frame or command too large to hold. */
static int conn_too_large(struct conn_ctx *x, struct conn *c)
{
	metrics_inc(&x->m->frames_oversize);
	return c->proto->reply_fatal(x, c, CONN_FATAL_TOO_LARGE);
}

/* Appends data to the carry buffer (cap-checked). */
static int conn_carry(struct conn_ctx *x, struct conn *c, const char *data,
		      size_t len)
{
	size_t need = c->in_len + len, cap = c->in_cap;
	/* Behind an Apply waiting for the writer, the requests a client
	 * pipelined may also take what its unsent replies could. */
	size_t limit = (size_t)x->cfg->conn_in_cap_bytes +
		       (c->apply_wait ? x->cfg->conn_out_cap_bytes : 0);
	char *p;

	if (need > limit) {
		c->in_len = 0;
		if (c->paused) {
			/* A client that pipelines without reading: the output
			 * cap already stopped us, now the input cap is full. */
			metrics_inc(&x->m->closed_slow_reader);
			c->want_close = true;
			c->out.len = 0;
			return 0;
		}
		return conn_too_large(x, c);
	}
	if (need > cap) {
		while (cap < need)
			cap = cap * 2 < need ? need : cap * 2;
		if (cap > limit)
			cap = limit;
		p = realloc(c->in, cap);
		if (p == NULL)
			return -ENOMEM;
		c->in = p;
		c->in_cap = cap;
	}
	memcpy(c->in + c->in_len, data, len);
	c->in_len += len;
	return 0;
}

/* Decides whether the first bytes are an HTTP request line. Returns 1 when
 * the caller should go on parsing, 0 when it must stop (closed, or the
 * bytes were kept to decide later). */
static int conn_sniff(struct conn_ctx *x, struct conn *c, const char *data,
		      size_t len, int *err)
{
	char head[8];
	size_t n = 0;
	int r;

	*err = 0;
	for (size_t i = 0; i < c->in_len && n < sizeof(head); i++)
		head[n++] = c->in[i];
	for (size_t i = 0; i < len && n < sizeof(head); i++)
		head[n++] = data[i];
	r = conn_sniff_http(head, n);
	if (r == 0 || n == sizeof(head)) {
		c->sniffing = false;
		if (r <= 0)
			return 1;
	}
	if (r == 1) {
		metrics_inc(&x->m->http_on_binary_port);
		c->want_close = true;
		c->in_len = 0;
		return 0;
	}
	/* Undecided: keep the bytes until the method is known. */
	*err = conn_carry(x, c, data, len);
	return 0;
}

int conn_feed(struct conn_ctx *x, struct conn *c, const char *data,
	      size_t len)
{
	uint64_t before = x->n_requests;
	long n;
	int rc = 0;

	if (c->want_close)
		return 0;
	if (len > 0)
		c->last_rx_ms = x->now_ms;
	if (c->sniffing && len > 0 && !conn_sniff(x, c, data, len, &rc))
		return rc;
	if (c->in_len == 0 && !c->paused) {
		/* Nothing carried: parse the receive in place. */
		n = c->proto->process(x, c, data, len);
		if (n < 0)
			return (int)n;
		data += n;
		len -= (size_t)n;
		if (len > 0 && !c->want_close)
			rc = conn_carry(x, c, data, len);
	} else {
		if (len > 0)
			rc = conn_carry(x, c, data, len);
		if (rc < 0 || c->want_close || c->paused)
			goto out;
		n = c->proto->process(x, c, c->in, c->in_len);
		if (n < 0)
			return (int)n;
		if (c->want_close)
			c->in_len = 0;
		else if (n > 0) {
			memmove(c->in, c->in + n, c->in_len - (size_t)n);
			c->in_len -= (size_t)n;
		}
	}
out:
	if (c->want_close)
		c->in_len = 0;
	/* An unfinished frame has waited since the last one completed. */
	if ((c->in_len == 0 && !c->partial) || c->paused)
		c->partial_since_ms = 0;
	else if (x->n_requests != before || c->partial_since_ms == 0)
		c->partial_since_ms = x->now_ms;
	if (x->n_requests != before) {
		uint64_t now = conn_clock_us();

		metrics_record_latency_n(x->m, c->proto->metrics,
					 now - x->turn_us,
					 x->n_requests - before);
	}
	return rc;
}
