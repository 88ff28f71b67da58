/*
 * replica: replicated mode (DESIGN §9, consentd --nats). The one module
 * that holds libnats. It keeps a connection to the NATS cluster (every
 * URL given, reconnecting without end), makes sure the change stream
 * exists (creating it when absent), and runs two threads:
 *  - publish: every Apply that writer_submit routes here (its checks
 *    passed on this replica) becomes one stream message (core/natsmsg.h);
 *    after the PubAck the request waits for this replica's writer to
 *    apply that sequence (writer_req_await), or is answered 503 when the
 *    stream cannot be reached within REPLICA_PUBLISH_TIMEOUT_MS;
 *  - fetch: a durable pull consumer of this replica (explicit ack, bound
 *    to when it exists, never deleted on shutdown) that starts after the
 *    index's watermark; messages go to the writer strictly in stream
 *    order (writer_submit_stream) and are acked once the writer
 *    processed them (durable in its log when they changed anything).
 * Threads: replica_start/stop from main; replica_stats and replica_ready
 * from any thread (the ops port). Errors: -errno with a message.
 */
#ifndef CONSENTD_SERVER_REPLICA_H
#define CONSENTD_SERVER_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct replica;
struct writer;

#define REPLICA_PUBLISH_TIMEOUT_MS 5000 /* an Apply's wait for its PubAck */
#define REPLICA_APPLY_TIMEOUT_MS 15000  /* then for its writer to apply it */
#define REPLICA_PUBACK_BUCKETS 12
#define REPLICA_PUBACK_BOUNDS_US \
	{ 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 500000, \
	  1000000 }

struct replica_options {
	const char *urls;      /* "nats://h:p,nats://h:p" */
	const char *stream;    /* CONSENT */
	const char *consumer;  /* this replica's durable (default: host name) */
	uint32_t max_lag_s;    /* readiness off further behind; 0: off */
};

/* Connects (in the background when no server answers yet: the threads
 * retry) and starts both threads, and routes w's Applies to the stream
 * (writer_set_publisher). Call after writer_start, before the workers. */
int replica_start(const struct replica_options *opt, struct writer *w,
		  struct replica **out, char *err, size_t err_cap);

/* Stops both threads (Applies still queued are answered 503) and closes
 * the connection; the durable consumer stays on the servers. NULL: no-op.
 * Call after the workers stopped, before writer_stop. */
void replica_stop(struct replica *r);

struct replica_stats {
	bool connected;             /* the NATS connection is up */
	bool stream_reachable;      /* the last stream query answered */
	uint64_t unreachable_ms;    /* how long it has not (0: it has) */
	uint64_t stream_last_seq;   /* the stream's, as last asked */
	uint64_t applied_seq;       /* processed here (writer_stream_done) */
	uint64_t lag_messages;      /* stream_last_seq - applied_seq */
	double lag_seconds;         /* publish-time span not applied yet */
	uint64_t consumer_pending;  /* the consumer's NumPending */
	uint64_t consumer_ack_floor;/* its AckFloor.Stream */
	uint64_t messages_fetched;  /* given to the writer */
	uint64_t repositions;       /* the consumer moved back to the watermark */
	uint64_t published;         /* Applies published (PubAck'ed) */
	uint64_t publish_failures;  /* Applies answered 503 before a PubAck */
	uint64_t puback_buckets[REPLICA_PUBACK_BUCKETS]; /* cumulative-less */
	uint64_t puback_sum_us;
	/* Publish -> visible here: a message's stream timestamp to the end
	 * of the writer's processing of it (the same bucket bounds). */
	uint64_t visible_buckets[REPLICA_PUBACK_BUCKETS];
	uint64_t visible_sum_us;
};
void replica_stats(struct replica *r, struct replica_stats *out);

/* false, with the reason in why, while --max-lag is set and the replica
 * is further behind than that, or has not reached the stream for longer. */
bool replica_ready(struct replica *r, char *why, size_t cap);

#endif
