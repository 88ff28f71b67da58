/*
 * conn: one client connection's bytes, apart from any socket. conn_feed
 * takes what a receive delivered, sniffs for HTTP on a binary port, hands
 * complete frames to the protocol (server/rpc.c, server/resp.c), carries
 * an unfinished frame over in a small per-connection buffer and queues the
 * replies in an output buffer; the loop (server/loop.c) takes the queued
 * bytes for one send per turn with conn_take_send. The loop owns the
 * socket side; this module never blocks and never touches io_uring, so
 * tests drive it with plain byte strings.
 *
 * Threads: a conn and a conn_ctx belong to one worker. Buffers are
 * allocated by conn_init (at accept) and grown only for a frame or reply
 * larger than any before on that connection, never past the caps of the
 * configuration. Errors: -ENOMEM (the loop drops the connection).
 */
#ifndef CONSENTD_SERVER_CONN_H
#define CONSENTD_SERVER_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/check.h"
#include "index/table.h"
#include "server/metrics.h"

struct server_config;
struct principal;

/* A byte buffer: data[off..len) is still to go (off only moves on the
 * buffer being sent). */
struct obuf {
	char *data;
	size_t len;
	size_t off;
	size_t cap;
};

#define CONN_OBUF_INITIAL 8192  /* each of the two output buffers */
#define CONN_IBUF_INITIAL 4096  /* the carry-over input buffer */
#define CONN_OBUF_KEEP (256u << 10) /* shrink back past this once empty */

/* Grows b so that n more bytes fit; returns where they go, or NULL on
 * ENOMEM. */
char *obuf_reserve(struct obuf *b, size_t n);
int obuf_append(struct obuf *b, const void *data, size_t n);

enum conn_proto {
	CONN_RPC = 0,  /* length-prefixed protobuf (DESIGN §3.2) */
	CONN_RESP = 1, /* Redis protocol (DESIGN §3.3) */
};

/* The incremental RESP parser's state between receives (server/resp.h). */
struct resp_parser {
	size_t pos;     /* bytes of the current command already scanned */
	uint32_t nargs; /* arguments the array announced (0: not yet) */
	uint32_t done;  /* arguments scanned whole */
};

/* One RESP argument: bytes inside the input (not NUL-terminated). */
struct resp_arg {
	const char *p;
	uint32_t len;
};

struct conn {
	enum conn_proto proto;
	bool authed;       /* AUTH done, or no token file */
	bool sniffing;     /* first bytes: may still be an HTTP request line */
	bool want_close;   /* send what is queued, then close; read no more */
	bool paused;       /* unsent output past its cap: process no input */
	bool apply_wait;   /* an Apply is with the writer: paused until its
			    * reply, so no later reply can pass it */
	uint64_t tag;      /* the worker's name for it (writer replies) */
	const struct principal *principal; /* NULL: trusted */

	char *in;          /* unprocessed input carried between receives */
	size_t in_len;
	size_t in_cap;
	struct resp_parser rp;

	struct obuf out;   /* replies being gathered this turn */
	struct obuf wire;  /* replies handed to the kernel (one send) */

	uint64_t last_rx_ms;       /* CLOCK_MONOTONIC ms of the latest bytes */
	uint64_t partial_since_ms; /* an unfinished frame waits since; 0 none */
	uint64_t stat_requests;    /* requests answered (for tests and INFO) */
};

/* One pending RPC check response in a batch: verdicts [first, first+n). */
struct conn_rpc_pending {
	uint64_t id;
	uint32_t first;
	uint32_t count;
};

#define CONN_BATCH_MAX 256 /* checks decided together across requests */

/* A worker's processing context: the configuration, its metrics slot, the
 * index of this turn and scratch space, reused by every connection. */
struct conn_ctx {
	const struct server_config *cfg;
	struct metrics *m;
	unsigned worker;        /* its writer completion queue */

	const struct index *ix; /* this turn's generation; NULL: none yet */
	struct index_info info; /* valid when ix != NULL */
	bool stale;             /* past the hard freshness bound */
	uint64_t turn_us;       /* CLOCK_MONOTONIC us when the turn began */
	uint64_t now_ms;

	/* Checks gathered from one receive, decided in one check_batch. */
	struct check_input in[CONN_BATCH_MAX];
	struct verdict out[CONN_BATCH_MAX];
	uint32_t n_in;
	struct conn_rpc_pending rpc_pending[CONN_BATCH_MAX];
	uint32_t n_rpc_pending;

	/* RESP arguments of one command (cfg->max_resp_args of them). */
	struct resp_arg *args;
	uint32_t args_cap;

	uint64_t n_requests; /* requests answered during one conn_feed */
};

int conn_ctx_init(struct conn_ctx *x, const struct server_config *cfg,
		  struct metrics *m);
void conn_ctx_fini(struct conn_ctx *x);
/* Reads the clock, the live index and its freshness for this turn (the
 * caller is an online RCU reader until its next quiescent state). */
void conn_ctx_begin_turn(struct conn_ctx *x);

int conn_init(struct conn *c, enum conn_proto proto,
	      const struct server_config *cfg, uint64_t now_ms);
void conn_fini(struct conn *c);

/* Feeds received bytes (len 0: retry the carried input, e.g. after a
 * pause ends). Returns 0, or -ENOMEM. Afterwards the caller looks at
 * want_close and paused, and sends what conn_take_send gives. */
int conn_feed(struct conn_ctx *x, struct conn *c, const char *data,
	      size_t len);

/* Bytes queued and not yet acknowledged by a send. */
static inline size_t conn_out_pending(const struct conn *c)
{
	return c->out.len + (c->wire.len - c->wire.off);
}

/* The bytes for the next send (no send may be in flight): what is left of
 * the previous one, else everything gathered since. false: nothing. */
bool conn_take_send(struct conn *c, const char **buf, size_t *len);
/* A send of n bytes completed. */
void conn_sent(struct conn *c, size_t n);

/* Check env for c in this turn. */
static inline struct check_env conn_check_env(const struct conn_ctx *x,
					      const struct conn *c,
					      const struct decision_policy *p)
{
	struct check_env env = {
		.index = x->ix,
		.policy = p,
		.principal = c->principal,
		.stale = x->stale,
	};
	return env;
}

/* For tests: the HTTP request-line sniff. 1 HTTP, 0 not, -1 undecided. */
int conn_sniff_http(const char *p, size_t n);

#endif
