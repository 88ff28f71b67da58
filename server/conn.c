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
#include "server/resp.h"
#include "server/rpc.h"

/* ---- buffers ----------------------------------------------------------- */

char *obuf_reserve(struct obuf *b, size_t n)
{
	size_t cap;
	char *p;

	if (b->cap - b->len >= n)
		return b->data + b->len;
	cap = b->cap ? b->cap : CONN_OBUF_INITIAL;
	while (cap - b->len < n) {
		if (cap > SIZE_MAX / 2)
			return NULL;
		cap *= 2;
	}
	p = realloc(b->data, cap);
	if (p == NULL)
		return NULL;
	b->data = p;
	b->cap = cap;
	return b->data + b->len;
}

int obuf_append(struct obuf *b, const void *data, size_t n)
{
	char *p = obuf_reserve(b, n);

	if (p == NULL)
		return -ENOMEM;
	memcpy(p, data, n);
	b->len += n;
	return 0;
}

/* An emptied buffer that grew for one big reply goes back to its first
 * size, so an idle connection does not keep megabytes. */
static void obuf_trim(struct obuf *b)
{
	char *p;

	if (b->len != 0 || b->cap <= CONN_OBUF_KEEP)
		return;
	p = realloc(b->data, CONN_OBUF_INITIAL);
	if (p != NULL) {
		b->data = p;
		b->cap = CONN_OBUF_INITIAL;
	}
}

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
	uint32_t n = cfg->max_resp_args > cfg->max_resp_args_unauth
			     ? cfg->max_resp_args
			     : cfg->max_resp_args_unauth;

	memset(x, 0, sizeof(*x));
	x->cfg = cfg;
	x->m = m;
	if (n < 1)
		n = 1;
	x->args = calloc(n, sizeof(*x->args));
	if (x->args == NULL)
		return -ENOMEM;
	x->args_cap = n;
	conn_ctx_begin_turn(x);
	return 0;
}

void conn_ctx_fini(struct conn_ctx *x)
{
	free(x->args);
	x->args = NULL;
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

int conn_init(struct conn *c, enum conn_proto proto,
	      const struct server_config *cfg, uint64_t now_ms)
{
	memset(c, 0, sizeof(*c));
	c->proto = proto;
	c->authed = cfg->tokens == NULL;
	c->sniffing = true;
	c->last_rx_ms = now_ms;
	c->in = malloc(CONN_IBUF_INITIAL);
	c->out.data = malloc(CONN_OBUF_INITIAL);
	c->wire.data = malloc(CONN_OBUF_INITIAL);
	if (c->in == NULL || c->out.data == NULL || c->wire.data == NULL) {
		conn_fini(c);
		return -ENOMEM;
	}
	c->in_cap = CONN_IBUF_INITIAL;
	c->out.cap = CONN_OBUF_INITIAL;
	c->wire.cap = CONN_OBUF_INITIAL;
	return 0;
}

void conn_fini(struct conn *c)
{
	free(c->in);
	free(c->out.data);
	free(c->wire.data);
	c->in = NULL;
	c->out.data = NULL;
	c->wire.data = NULL;
	c->in_len = c->in_cap = 0;
	c->out.len = c->out.cap = c->out.off = 0;
	c->wire.len = c->wire.cap = c->wire.off = 0;
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

static long conn_process(struct conn_ctx *x, struct conn *c, const char *buf,
			 size_t len)
{
	if (c->proto == CONN_RPC)
		return rpc_process(x, c, (const uint8_t *)buf, len);
	return resp_process(x, c, buf, len);
}

/* Input over the carry cap: a frame or command too large to hold. */
static int conn_too_large(struct conn_ctx *x, struct conn *c)
{
	metrics_inc(&x->m->frames_oversize);
	if (c->proto == CONN_RPC)
		return rpc_reply_fatal(x, c, RPC_E_TOO_LARGE,
				       "input over the per-connection cap");
	return resp_reply_fatal(x, c, "Protocol error: command over the "
				"per-connection input cap");
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
		n = conn_process(x, c, data, len);
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
		n = conn_process(x, c, c->in, c->in_len);
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
	if (c->in_len == 0 || c->paused)
		c->partial_since_ms = 0;
	else if (x->n_requests != before || c->partial_since_ms == 0)
		c->partial_since_ms = x->now_ms;
	if (x->n_requests != before) {
		uint64_t now = conn_clock_us();

		metrics_record_latency_n(x->m,
					 c->proto == CONN_RPC ? METRICS_RPC
							      : METRICS_RESP,
					 now - x->turn_us,
					 x->n_requests - before);
	}
	return rc;
}
