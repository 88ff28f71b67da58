/*
 * writer: the single writer (DESIGN §2 Changes and Generations). One
 * thread owns the change log and the served index. Workers hand it Apply
 * requests (writer_submit: a lock-free push and an eventfd write, never a
 * wait); it appends each group of requests that arrived together to the
 * log with one fdatasync (group commit), applies them in sequence order
 * under the index's order rule, and pushes each reply onto its worker's
 * completion queue, whose eventfd the worker's io_uring reads. It also
 * makes every new generation: when the table is full (growth), when a
 * snapshot built in the background is ready, when asked (writer_rebuild),
 * and as a checkpoint every so many changes and at a graceful stop; it
 * writes it to the data directory, swaps it in with live_publish and drops
 * the change log the generations on disk no longer need.
 *
 * Threads: writer_open/start/stop/close and writer_take_snapshot,
 * writer_rebuild from main (and its snapshot thread); writer_submit and
 * writer_take from workers, each with its own queue; writer_fault from
 * any thread. Errors: -errno with a message.
 */
#ifndef CONSENTD_SERVER_WRITER_H
#define CONSENTD_SERVER_WRITER_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics;
struct writer;

struct writer_options {
	const char *data_dir;
	int index_load;             /* enum index_load_mode */
	unsigned n_queues;          /* completion queues: one per worker */
	struct metrics *metrics;    /* a slot only the writer thread writes */
	/* Write a generation (a checkpoint, so a restart replays less) once
	 * this many changes were applied since the last one; 0: the larger
	 * of 1,000,000 and half the records. */
	uint64_t checkpoint_changes;
	uint64_t segment_bytes;     /* change log segments; 0: its default */
	/* DESIGN §10: the evidence store (index/history.h) under DIR/history,
	 * unless history_off (--history off). history_keep_s: whole segments
	 * older than this are pruned (--history-keep DAYS); 0 keeps all. */
	bool history_off;
	int64_t history_keep_s;
};

/* Opens DIR's change log (a damaged one is refused: -EPROTO, the message
 * names the file and offset), with history on DIR/history (copying in
 * what the log holds past its end; a damaged store is refused the same
 * way, a second process holding it is -EBUSY), removes what crashed
 * builds left, opens the
 * newest generation that validates, replays the change log past its
 * watermark into it and publishes it (live_publish). With no generation in
 * DIR the writer is open without an index (-ENOENT is not returned): every
 * Apply is refused with 503 until writer_take_snapshot gives it one. */
int writer_open(const struct writer_options *opt, struct writer **out,
		char *err, size_t err_cap);

/* Starts the thread. */
int writer_start(struct writer *w, char *err, size_t err_cap);

/* Finishes the requests already submitted, writes a generation if changes
 * arrived since the last one, and joins the thread. Call after the
 * workers stopped submitting. */
void writer_stop(struct writer *w);

/* Frees the writer and closes the log (after writer_stop). */
void writer_close(struct writer *w);

/* The outcome of one Apply request. */
struct writer_reply {
	uint64_t tag;              /* the submitter's (its connection) */
	uint64_t id;               /* the Request's id */
	uint32_t code;             /* 0: ApplyResponse; else Error (400, 403,
				    * 409, 503) */
	uint32_t applied;          /* changes that changed the index */
	uint32_t skipped;          /* replays, and changes older than stored */
	uint64_t applied_sequence; /* highest sequence durably processed */
	char message[1024];        /* code != 0: what went wrong */
};

/* Worker: takes an Apply the RPC decoded (apply: protobuf-c's, owned by
 * the writer from here on, freed whatever the outcome), checks that
 * principal (NULL: trusted) may write every change's brand, then every
 * change (change_validate, core/stream.h), and, with an origin set, the
 * origin and cursors' bounds (ORIGINS_NAME_MAX, ORIGINS_CURSOR_MAX), and
 * queues it for the writer. Returns 1 when queued: the reply comes back
 * through queue's completions with this tag; 0 when *now holds the reply
 * already (403 for a brand outside the principal's list, naming the
 * change, before anything else; 400 for a bad change, naming it and its
 * field, or a bad origin, after_cursor or cursor, naming the field; 503
 * when the log failed or there is no index); -ENOMEM. The writer then
 * refuses with 409 an origin's batch whose after_cursor is not the
 * stored cursor (the message names the stored one), and an Apply of the
 * kind the data directory does not take (origins and feeder-given
 * sequences never mix, DESIGN §8). Origin "local" (local rejections,
 * §11) is unconditional: applied whatever its after_cursor, its cursor
 * becoming the batch's decimal log position; it needs the principal's
 * 'reject' right (403) and at least one change, each a RET (400), and
 * each of its RETs is queued in the outbox before the reply. Nothing of
 * a refused request is applied. */
struct principal;
typedef struct Consent__V1__ApplyRequest Consent__V1__ApplyRequest;
int writer_submit(struct writer *w, unsigned queue, uint64_t tag, uint64_t id,
		  const struct principal *principal,
		  Consent__V1__ApplyRequest *apply, struct writer_reply *now);

/* Worker: the eventfd that turns readable when queue has completions. */
int writer_queue_fd(const struct writer *w, unsigned queue);

/* Worker: calls fn for every completed request of queue, oldest first,
 * and frees them. */
void writer_take(struct writer *w, unsigned queue,
		 void (*fn)(const struct writer_reply *r, void *arg), void *arg);

/* The snapshot thread: hands over a snapshot built in memory (build_index:
 * the table and its e-mail addresses; the writer owns it from here on and
 * frees it). The writer replays the change log past the snapshot's
 * watermark into it, merges the served index when the log no longer
 * reaches back to that watermark, publishes the result once as DIR's next
 * generation and swaps it in. Nothing of it is on disk before that, so a
 * crash meanwhile leaves DIR as it was. Waits until the writer took it
 * (one snapshot at a time; never call it from the writer's own thread or
 * after writer_stop): 0, or -errno with the reason in err (the served
 * generation, if any, stays). */
struct generation;
int writer_take_snapshot(struct writer *w, struct generation *built,
			 char *err, size_t err_cap);

/* Rebuilds the served index into a fresh table (a new hash secret) and
 * swaps it in, writing it as a new generation (main: SIGUSR1). Returns at
 * once. */
void writer_rebuild(struct writer *w);

/* Any thread (a worker answering Stats): the stored cursor of origin
 * into buf (cap bytes, terminated), "" when unknown. Returns 1 when the
 * origin is known, 0 when not. Takes a lock the writer holds only while
 * it moves cursors. */
int writer_origin_cursor(struct writer *w, const char *origin,
			 size_t origin_len, char *buf, size_t cap);

/* Any thread: the data directory's outbox of local rejections
 * (index/outbox.h: its list and pushed mark are thread-safe), or NULL for
 * a NULL writer. Lives until writer_close. */
struct outbox;
struct outbox *writer_outbox(struct writer *w);
/* The served state for GET /v1/snapshot, taken by the writer between
 * two groups so that its parts agree: the served index held by a
 * reference (server/live.h; the writer goes on changing it in place, and
 * a swap retires it, but it stays whole until released), the applied
 * watermark it holds, a copy of the kind and the cursors at that
 * watermark, the emails file of its generation opened (a prune cannot
 * take it away) and a copy of the addresses listed since. What the
 * writer applies after the view may show in the index as it is read;
 * every change through the watermark does. */
struct origins;
struct live_ref;
struct writer_view {
	struct live_ref *ref;
	const struct index *ix;     /* live_ref_index(ref) */
	uint64_t watermark;
	int64_t created_at, data_as_of;
	struct origins *origins;    /* a copy */
	int emails_fd;              /* -1: no file */
	char emails_name[PATH_MAX];
	struct generation_email_list *extra; /* a copy, NULL when empty */
	bool has_chain;             /* §10: the chain head at watermark */
	uint8_t chain[32];
};

/* Any thread but the writer's, and not inside an RCU read side (the
 * writer may publish before it gets to the request). Waits for the
 * writer's next turn: 0, or -ENOENT when nothing is served yet,
 * -ESHUTDOWN when the writer stopped, -ENOMEM, -errno, with a message. */
int writer_view(struct writer *w, struct writer_view *out, char *err,
		size_t err_cap);
/* Releases what a view holds (the reference, the copies, the file). */
void writer_view_release(struct writer_view *v);
/* ---- Replicated mode (DESIGN §9; server/replica.h drives it) ----
 *
 * The stream is the log of the whole fleet: a local Apply is not queued
 * for this writer but published, and every replica's writer applies the
 * stream's messages in stream order, each as one batch whose changes all
 * take the message's stream sequence as their log position, under the
 * same cursor rule as a local Apply (group_origins). A heartbeat message
 * (no change, no origin) moves applied_sequence to its sequence and
 * data_as_of to its publish time, in memory and in the generations
 * written after, but writes nothing to the log: after a restart the
 * heartbeats past the log's last position are fetched again and change
 * nothing else. A message refused by the cursor rule (409) or malformed
 * (400) likewise uses its position and writes nothing. */
struct writer_req;

/* The replica's publisher: called by writer_submit (a worker) for every
 * Apply that passed the principal's and the changes' checks. Returns 0
 * when it took req (then it must end it with writer_req_fail or
 * writer_req_await), or -errno (writer_submit answers 503 at once). */
typedef int (*writer_publish_fn)(void *ctx, struct writer_req *req);

/* Main, before the workers start: route every Apply to fn. */
void writer_set_publisher(struct writer *w, writer_publish_fn fn, void *ctx);

/* The publisher: the request it took (valid until it ends it). */
const Consent__V1__ApplyRequest *writer_req_apply(const struct writer_req *r);

/* The publisher: ends req with an Error (code, msg), e.g. 503 when the
 * stream could not be reached in time. */
void writer_req_fail(struct writer *w, struct writer_req *req, uint32_t code,
		     const char *msg);

/* The publisher, after the PubAck gave stream sequence seq: req is
 * answered with the outcome of message seq as this writer decides it
 * (applied and skipped counts, or its 409), once it did, or with 503 if
 * it has not by deadline_ms (CLOCK_MONOTONIC; see writer_expire). A
 * message older than the outcomes kept (WRITER_OUTCOMES) or processed
 * before this process started is answered as processed, all its changes
 * counted as skipped (a duplicate publish). */
void writer_req_await(struct writer *w, struct writer_req *req, uint64_t seq,
		      uint64_t deadline_ms);

/* The fetch thread: queues message seq (a, owned by the writer from
 * here on; NULL with bad naming why it cannot be read: it is then
 * refused with 400 in its place) published at published_s. Messages must
 * come in strictly increasing order of seq; one at or below the applied
 * watermark is answered as a replay. 0, or -ENOMEM. */
int writer_submit_stream(struct writer *w, Consent__V1__ApplyRequest *a,
			 uint64_t seq, int64_t published_s, const char *bad);

/* The fetch thread: waits until every message through seq was processed
 * (durable in the log when it changed anything: it may be acked), up to
 * timeout_ms. 1 when it was, 0 on timeout, -EIO when the writer refused
 * a message it was given (its log failed, or no generation is loaded
 * yet): messages from the first one not processed must be given again. */
int writer_stream_wait(struct writer *w, uint64_t seq, int timeout_ms);

/* Any thread: true once a generation is served (before it, stream
 * messages would be refused unprocessed: the fetch thread waits). */
bool writer_has_index(const struct writer *w);

/* Any thread: the highest stream sequence processed (at start: the
 * served index's watermark, where the consumer starts after). */
uint64_t writer_stream_done(struct writer *w);

/* The fetch thread, now and then: answers 503 to the requests waiting
 * past their deadline (writer_req_await). */
void writer_expire(struct writer *w, uint64_t now_ms);

/* ---- The evidence store (DESIGN §10) ----
 *
 * With history on, the writer owns DIR/history: opened at writer_open
 * (after the change log; history_recover copies what the log holds past
 * its end), every group's changes appended in log order once the log
 * made them durable and before any reply, made durable before the log
 * may drop a segment and at a graceful stop, pruned by --history-keep.
 * A failure of it faults the writer as a failed log does. */
struct history;

/* Any thread: the store, for queries (history_key, history_as_of are
 * any-thread), or NULL with history off (or a NULL writer). The build
 * thread of a data directory without a generation also appends its
 * first snapshot to it (history_reset first), before it hands the
 * result over with writer_take_snapshot. Lives until writer_close. */
struct history *writer_history(struct writer *w);

/* Any thread: the chain head as the writer last published it (after
 * every group and snapshot): true with *sequence (its last record's) and
 * head[32] filled; false with history off or empty. A mutex the writer
 * holds for a copy of 40 bytes. */
bool writer_chain(struct writer *w, uint64_t *sequence, uint8_t head[32]);

/* Any thread: true once the change log failed (Applies are refused since;
 * the state served stays). msg gets the reason. For /readyz. */
bool writer_fault(const struct writer *w, char *msg, size_t cap);

#endif
