/*
 * conn: one client connection's bytes, apart from any socket. conn_feed
 * takes what a receive delivered, sniffs for HTTP on a binary port, hands
 * complete frames to the connection's protocol (struct conn_proto, the
 * table each protocol module exports), carries
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

#include "index/check.h"
#include "index/table.h"
#include "server/metrics.h"
#include "server/obuf.h"

struct server_config;
struct principal;
struct writer_reply;
struct tls_conn;
struct conn;
struct conn_ctx;

#define CONN_IBUF_INITIAL 4096  /* the carry-over input buffer */

/* Why a connection is closed with a last error reply (reply_fatal). */
enum conn_fatal {
	CONN_FATAL_TOO_LARGE, /* a frame or command over the input cap */
	CONN_FATAL_STALLED,   /* one stalled half-sent past
			       * cfg->partial_timeout_ms */
};

/*
 * A protocol, as the connection and the loop see it: a constant table
 * each protocol module exports (rpc_proto in server/rpc.h, resp_proto in
 * server/resp.h) and the listener it was accepted on names. conn.c and
 * loop.c call only through it, so they name no protocol.
 */
struct conn_proto {
	const char *name;          /* "rpc", "resp": logs */
	enum metrics_proto metrics; /* its latency and check counters */
	/* Processes the complete frames at the start of buf[0..len) for c,
	 * appending replies to c->out. Returns the bytes consumed (the
	 * caller carries the rest over), or -ENOMEM. Stops early and sets
	 * c->paused when c's output is over its cap (or c->apply_wait);
	 * sets c->want_close when c must close (all of buf then counts as
	 * consumed). */
	long (*process)(struct conn_ctx *x, struct conn *c, const char *buf,
			size_t len);
	/* Flushes what is queued, appends the protocol's error for why and
	 * sets c->want_close. 0, or -ENOMEM. */
	int (*reply_fatal)(struct conn_ctx *x, struct conn *c,
			   enum conn_fatal why);
	/* The writer's reply to an Apply this protocol submitted (c was
	 * apply_wait); NULL for a protocol that submits none. */
	int (*reply_apply)(struct conn_ctx *x, struct conn *c,
			   const struct writer_reply *r);
	/* Per-worker state its connections share (scratch), made by
	 * conn_ctx_add (or conn_ctx_state on first use) and destroyed by
	 * conn_ctx_fini; both NULL if it needs none. */
	void *(*ctx_create)(const struct server_config *cfg);
	void (*ctx_destroy)(void *state);
	/* The whole reply sent, before closing, to a connection refused at
	 * the connection cap. */
	const char *refusal;
	size_t refusal_len;
	/* On a TLS port (server/tls.h): the ALPN protocol id selected when
	 * the client offers it ("h2" for gRPC; a client offering others only
	 * is refused); NULL: none selected, any offer ignored. */
	const char *alpn;
	/* The protocol is HTTP itself (HTTP/2: its preface starts "PRI *
	 * HTTP/2.0"), so conn.c does not sniff for an HTTP request line. */
	bool speaks_http;
	/* Frees what the protocol keeps per connection outside its
	 * conn_proto_state (conn_fini calls it); NULL if nothing. */
	void (*fini)(struct conn *c);
};

/* A protocol's per-connection state, inside struct conn so that no
 * connection costs another allocation: each protocol casts it to its own
 * struct and static_asserts that the struct fits. Zeroed by conn_init. */
#define CONN_PROTO_STATE_BYTES 32
union conn_proto_state {
	unsigned char bytes[CONN_PROTO_STATE_BYTES];
	uint64_t align_u64;
	void *align_ptr;
};

struct conn {
	const struct conn_proto *proto; /* the listener's; set by conn_init */
	bool authed;       /* AUTH done, or no token file */
	bool sniffing;     /* first bytes: may still be an HTTP request line */
	bool want_close;   /* send what is queued, then close; read no more */
	bool paused;       /* unsent output past its cap: process no input */
	bool apply_wait;   /* an Apply is with the writer: paused until its
			    * reply, so no later reply can pass it */
	bool partial;      /* the protocol holds an unfinished request of its
			    * own (not in `in`): the stall deadline runs */
	uint64_t tag;      /* the worker's name for it (writer replies) */
	const struct principal *principal; /* NULL: trusted */
	struct tls_conn *tls; /* NULL: plaintext; else server/tls.h's, and
			       * wire holds ciphertext */

	char *in;          /* unprocessed input carried between receives */
	size_t in_len;
	size_t in_cap;
	union conn_proto_state ps; /* the protocol's (struct conn_proto) */

	struct obuf out;   /* replies being gathered this turn */
	struct obuf wire;  /* replies handed to the kernel (one send) */

	uint64_t last_rx_ms;       /* CLOCK_MONOTONIC ms of the latest bytes */
	uint64_t partial_since_ms; /* an unfinished frame waits since; 0 none */
	uint64_t stat_requests;    /* requests answered (for tests and INFO) */
};

#define CONN_BATCH_MAX 256 /* checks decided together across requests */
#define CONN_PROTOS_MAX 8  /* protocols one worker serves */

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
	/* As-of verdicts' strings, one per slot of in (NULL: history off),
	 * and the store that answers them (cfg->history). */
	struct check_evidence *evidence;
	struct history *history;
	uint32_t n_in;

	/* Each protocol's per-worker state (conn_ctx_state). */
	struct {
		const struct conn_proto *proto;
		void *state;
	} protos[CONN_PROTOS_MAX];
	uint32_t n_protos;

	uint64_t n_requests; /* requests answered during one conn_feed */
};

int conn_ctx_init(struct conn_ctx *x, const struct server_config *cfg,
		  struct metrics *m);
void conn_ctx_fini(struct conn_ctx *x);
/* Reads the clock, the live index and its freshness for this turn (the
 * caller is an online RCU reader until its next quiescent state). */
void conn_ctx_begin_turn(struct conn_ctx *x);

/* Makes protocol p's per-worker state now, if it has none yet: a worker
 * does so for each of its listeners at start-up, so that running out of
 * memory stops the start rather than a connection. 0, or -ENOMEM (also
 * past CONN_PROTOS_MAX protocols). */
int conn_ctx_add(struct conn_ctx *x, const struct conn_proto *p);
/* The per-worker state of protocol p (p->ctx_create's): NULL for a
 * protocol without one, or if conn_ctx_add fails when it is made here on
 * first use. */
void *conn_ctx_state_create(struct conn_ctx *x, const struct conn_proto *p);
static inline void *conn_ctx_state(struct conn_ctx *x,
				   const struct conn_proto *p)
{
	for (uint32_t i = 0; i < x->n_protos; i++)
		if (x->protos[i].proto == p)
			return x->protos[i].state;
	return conn_ctx_state_create(x, p);
}

/* A connection accepted on a listener of protocol proto. */
int conn_init(struct conn *c, const struct conn_proto *proto,
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
		.history = x->history,
		.evidence = x->evidence,
	};
	return env;
}

/* For tests: the HTTP request-line sniff. 1 HTTP, 0 not, -1 undecided. */
int conn_sniff_http(const char *p, size_t n);

#endif
