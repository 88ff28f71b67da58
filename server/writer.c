/*
 * writer: the single writer thread (server/writer.h).
 *
 * Durability. A change is acknowledged only after the change log holds it
 * on disk (changelog_append: one write, one fdatasync). Requests that
 * arrive while an fdatasync runs wait in the inbox and go to disk together
 * in the next one (group commit), so the fsync cost is shared by every
 * connection that applies at once. Only after the append are the changes
 * applied to the index, and only after the index (and its header
 * watermark) holds them are the replies handed back, so a client that saw
 * an acknowledgement never reads an older state afterwards.
 *
 * Order. Workers push requests on a lock-free stack (the inbox); the
 * writer takes the whole stack at once and reverses it, which restores
 * arrival order. Without origins, within one group the changes of every
 * request are sorted by sequence; a change at or below the applied watermark, or a sequence a
 * request earlier in the group already carries, is a replay: skipped,
 * counted, and answered as processed (it is durable already). The index's
 * own order rule (index_apply_writer) makes the result independent of the
 * arrival order of different sequences for one key.
 *
 * Origins (DESIGN §8). A data directory takes one kind of change: with
 * origins (each Apply names its origin, after_cursor and cursor) or
 * without (the feeder's sequences are the log's, as above). The kind is
 * the first applied change's, kept in the log's commit records and in
 * every generation's origins file (index/origins.h), and an Apply of the
 * other kind is 409. With origins, the requests of a group are judged in
 * arrival order against the cursor table as the requests before them
 * left it (writer_move: a group's pending moves, looked up before the
 * table): one whose after_cursor is not its origin's cursor is 409 naming
 * the stored one; one that follows gets the next log positions for its
 * changes (their own sequences are ignored), or one position of its own
 * when it moves the cursor with no change, and becomes one batch of the
 * append, its commit record (origin, cursor) written after its changes in
 * the same write and fdatasync. Only once that append is durable do the
 * cursors move in the table, under origins_mu, the lock Stats takes on a
 * worker (writer_origin_cursor). The rule reads nothing but the table and
 * the request, so a replica that reads one stream in order (§9) decides
 * every batch the same way; replay needs no rule at all, since the log
 * holds only batches that passed it.
 *
 * Local rejections (§11). Origin "local" is unconditional: a batch of it
 * is applied whatever its after_cursor says (gateways take rejections
 * independently; there is no feed to follow), and its cursor becomes the
 * decimal log position of the batch (its last change's). The rule still
 * reads only the request and the position the group gives it, so it stays
 * deterministic. Each local RET is queued in the outbox (index/outbox.h)
 * and each RET of an "iys:*" origin reconciles what it matches; the
 * outbox's records are made durable after the group is applied and
 * before any of its replies goes out (outbox_commit: a second fdatasync,
 * only for groups that touched the outbox), and a crash between the two
 * is mended at open by outbox_rebuild from the change log.
 *
 * Generations. Four things make one, all on this thread; the disk's part
 * (copying a table, publishing, pruning, replaying) is index/generation.h's:
 *  - growth: at the load limit (index_apply_writer says -ENOSPC) a table
 *    1.5 times as large is filled from the served one and swapped in at
 *    once (live_publish; readers keep the old one until the RCU grace
 *    period ends), then written as a checkpoint. A mapped table (MMAP)
 *    grows into a working file (generation_grow_file), never into
 *    anonymous memory: no second table in RAM (README "Memory");
 *  - a snapshot built in the background, handed over in memory (never in
 *    DIR before this thread publishes it; where the index is mapped its
 *    table is a working file, build_index_work): the log past its
 *    watermark is replayed into it, and the served index merged in too
 *    (same order rule) when the log was dropped past that watermark; then
 *    it is written once and swapped in;
 *  - a rebuild on request (SIGUSR1): a fresh table and hash secret;
 *  - a checkpoint every so many changes and at a graceful stop.
 * A new generation's header watermark is the applied watermark. The one
 * served before stays on disk as the fallback, and the log is dropped only
 * through the fallback's watermark (generation_kept).
 *
 * Evidence (DESIGN §10, index/history.h). With history on, every change
 * the log takes is appended to DIR/history in log order (w->ptrs after
 * the group is sorted: the log's own order) right after group_append made
 * the group durable and before it is applied or answered, stamped with
 * the wall clock. history_append does not fdatasync: the log is the
 * durable copy, and history_recover at open copies back what the log
 * holds past history's end. So history_sync runs where the log may lose
 * its copy, before generation_kept drops segments, and at a graceful
 * stop. The chain head is published after every group under chain_mu
 * (40 bytes copied; Stats and /metrics read it).
 *
 * Failure. A failed append (write or fdatasync) fails the log for good
 * (never retried: the kernel may have dropped the pages). The writer then
 * refuses every Apply with 503 and the log's message, keeps serving what
 * it has, and writer_fault turns /readyz false. Restart reopens the log.
 * A failed history append or sync faults the writer the same way, for
 * the same reason: an Apply acknowledged whose change the evidence store
 * lacks would break its promise (every applied change, §10), and a
 * store that skipped one would chain a different stream from the
 * replicas' from then on. Refusing is safe: the group is durable in the
 * log (a restart applies it and history_recover copies it), and checks
 * go on being answered from what is served. A failed sync also keeps
 * the log whole (generation_kept with no log): it is history's copy.
 */
#include "server/writer.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/decimal.h"
#include "core/errmsg.h"
#include "core/stream.h"
#include "core/tokens.h"
#include "index/changelog.h"
#include "index/generation.h"
#include "index/history.h"
#include "index/origins.h"
#include "index/outbox.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "server/live.h"
#include "server/metrics.h"

#define WRITER_CHECKPOINT_MIN 1000000u /* auto checkpoint: at least this */
/* Replicated mode: the outcomes of the last stream messages processed,
 * kept for the Applies whose PubAck arrives after their message was
 * applied here (the fetch thread may well be faster than the PubAck). */
#define WRITER_OUTCOMES 1024u
#define WRITER_QUEUE_INTERNAL UINT_MAX /* a stream message's "queue" */

/* A view asked for by writer_view, on the asker's stack. */
struct writer_view_req {
	struct writer_view_req *next;
	struct writer_view *out;
	bool done;
	int rc;
	char err[512];
};

/* One Apply request, from submission to completion. */
struct writer_req {
	struct writer_req *next;  /* inbox, then its queue's done list */
	unsigned queue;
	Consent__V1__ApplyRequest *apply; /* freed once applied */
	enum origins_kind kind; /* writer_group: the kind it takes part as */
	char local_cursor[24];  /* origin "local": its batch's position */
	/* Replicated mode: a stream message's sequence and publish time
	 * (queue WRITER_QUEUE_INTERNAL), or for an Apply waiting on its
	 * message, the sequence it waits for and until when. */
	uint64_t stream_seq;
	int64_t stream_time_s;
	uint64_t deadline_ms;
	unsigned epoch; /* a stream message: the fetch run it belongs to */
	bool replayed; /* a stream message at or below the watermark */
	struct writer_reply reply;
};

/* The outcome of stream message seq, for a waiting Apply. */
struct writer_outcome {
	uint64_t seq;
	uint32_t code, applied, skipped;
	char message[256];
};

/* An origin's cursor moved by a request of the group being committed. */
struct writer_move {
	const char *origin, *cursor; /* the request's strings */
	size_t origin_len, cursor_len;
};

struct writer_queue {
	/* Pushed by the writer (release), taken whole by the worker
	 * (acquire exchange in writer_take). */
	_Alignas(64) _Atomic(struct writer_req *) done;
	int efd;
	bool wake; /* writer thread only: signal it after this group */
};

/* One change of a group, for sorting. */
struct writer_chg {
	const Consent__V1__Consent *c;
	struct writer_req *r;
	uint32_t order;
};

struct writer {
	struct writer_options opt;
	char dir[PATH_MAX];
	struct changelog *log;
	struct outbox *outbox;   /* local RETs owed to İYS */
	struct history *hist;    /* §10's evidence store; NULL: --history off */
	double hist_pruned_at;   /* clock_mono_s of the last prune */
	/* The chain head for Stats and /metrics: written by the writer
	 * thread after each group, read by any thread, under chain_mu. */
	pthread_mutex_t chain_mu;
	bool chain_any;
	uint64_t chain_seq;
	uint8_t chain[HISTORY_HASH_BYTES];
	struct metrics *m;
	struct metrics *own_metrics; /* when the options gave none (tests) */
	struct writer_queue *queues;
	int efd;
	pthread_t thread;
	bool started;
	/* Pushed by workers (release CAS), taken by the writer (acquire). */
	_Atomic(struct writer_req *) inbox;
	atomic_bool stop;
	/* Read by workers to refuse early; set by the writer (release) after
	 * cur has an index (acquire in writer_submit). */
	atomic_bool has_index;

	/* The writer thread's (writer_open's before the thread starts). */
	struct generation cur;
	bool cur_served;         /* live_publish'd: swap, never destroy */
	struct generation_keep keep; /* cur's generation on disk, fallback */
	uint64_t applied;        /* highest sequence durably processed */
	int64_t created_at;
	int64_t data_as_of;
	uint64_t since_checkpoint;
	bool need_checkpoint;
	struct writer_chg *chg;
	size_t chg_cap;
	Consent__V1__Consent **ptrs;
	size_t ptrs_cap;
	struct changelog_batch *batches; /* one group's, req_cap of them */
	struct writer_move *moves;
	size_t req_cap;
	/* Guards cur.origins (the pointer and the table) against the
	 * workers' lookups (writer_origin_cursor); the writer thread is its
	 * only mutator and reads it without the lock. */
	pthread_mutex_t origins_mu;

	/* Requests from main, under mu. */
	pthread_mutex_t mu;
	struct generation *take; /* a built snapshot, the writer's to take */
	pthread_cond_t take_cv;  /* signalled when take_done is set */
	bool take_done;          /* take_rc and take_err hold its outcome */
	int take_rc;
	char take_err[512];
	bool rebuild_pending;
	/* GET /v1/snapshot's views (writer_view): asked under mu, filled
	 * by the writer between groups, view_cv signalled. */
	struct writer_view_req *views;
	pthread_cond_t view_cv;
	bool stopped;            /* the thread is gone: views are refused */

	/* Set once by the writer: the message first, then the flag with
	 * release (acquire in writer_fault and writer_submit). */
	atomic_bool failed;
	char fault[200];

	/* Replicated mode (NULL publish: local mode). publish and its ctx
	 * are set before the workers start and constant afterwards. */
	writer_publish_fn publish;
	void *publish_ctx;
	/* Under stream_mu: the highest stream sequence processed, whether
	 * a message handed over was refused (the fetch thread gives it
	 * again), the Applies waiting for their message, and the outcomes
	 * of the last WRITER_OUTCOMES messages (ring, by seq). */
	pthread_mutex_t stream_mu;
	pthread_cond_t stream_cv;
	uint64_t stream_done;
	uint64_t stream_start; /* stream_done at open: older is unknown */
	bool stream_refused;
	/* A fetch run: messages are given in stream order within one. Once
	 * one of a run is refused unprocessed (503), the writer thread
	 * refuses the rest of that run (stream_hold, its own) so nothing is
	 * applied past a gap; the fetch thread starts a new run from the
	 * first message not processed (writer_stream_wait's -EIO). */
	atomic_uint stream_epoch;
	unsigned stream_hold;
	struct writer_req *waiters;
	struct writer_outcome *outcomes;
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "consentd: writer: %s\n", line);
}

static void efd_signal(int fd)
{
	uint64_t one = 1;
	/* Cannot block: an eventfd write waits only when the counter would
	 * pass 2^64 - 2, and every reader resets it. */
	while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

/* The two lock-free stacks (the inbox, each queue's done list): many
 * pushers, one taker that takes the whole stack at once. */
static void req_push(_Atomic(struct writer_req *) *stack, struct writer_req *r)
{
	struct writer_req *head = atomic_load_explicit(stack,
						       memory_order_relaxed);
	do {
		r->next = head;
		/* Release: pairs with the acquire exchange in req_take_all,
		 * which then reads the whole request (or reply). */
	} while (!atomic_compare_exchange_weak_explicit(
		stack, &head, r, memory_order_release, memory_order_relaxed));
}

/* Takes the whole stack, oldest first (a stack is newest first). */
static struct writer_req *req_take_all(_Atomic(struct writer_req *) *stack)
{
	/* Acquire: pairs with the release CAS in req_push. */
	struct writer_req *r = atomic_exchange_explicit(stack, NULL,
							memory_order_acquire);
	struct writer_req *fifo = NULL;
	while (r != NULL) {
		struct writer_req *next = r->next;
		r->next = fifo;
		fifo = r;
		r = next;
	}
	return fifo;
}

static void req_free_all(struct writer_req *r)
{
	while (r != NULL) {
		struct writer_req *next = r->next;
		consent__v1__apply_request__free_unpacked(r->apply, NULL);
		free(r);
		r = next;
	}
}

static void writer_set_fault(struct writer *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void writer_set_fault(struct writer *w, const char *fmt, ...)
{
	if (atomic_load_explicit(&w->failed, memory_order_relaxed))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->fault, sizeof(w->fault), fmt, ap);
	va_end(ap);
	/* Release: pairs with the acquire loads in writer_fault and
	 * writer_submit, which then read the complete message. */
	atomic_store_explicit(&w->failed, true, memory_order_release);
	say("%s; refusing Applies until restarted", w->fault);
}

/* ---- the evidence store ---- */

/* After history changed: its head, for writer_chain. */
static void writer_chain_publish(struct writer *w)
{
	struct history_state st;
	if (w->hist == NULL)
		return;
	history_state(w->hist, &st);
	pthread_mutex_lock(&w->chain_mu);
	w->chain_any = st.records > 0;
	w->chain_seq = st.head_sequence;
	memcpy(w->chain, st.head, sizeof(w->chain));
	pthread_mutex_unlock(&w->chain_mu);
}

/* g, about to be published with watermark wm, carries the head at wm:
 * history holds every change through wm (the writer appends each group
 * before it is applied), so that is the head unless wm is past what the
 * history holds at all (then the head is the same: the last record
 * with sequence <= wm). None when history is off or empty. */
static void writer_chain_into(struct writer *w, struct generation *g,
			      uint64_t wm)
{
	struct history_state st;
	g->has_chain = false;
	if (w->hist == NULL)
		return;
	history_state(w->hist, &st);
	if (st.records == 0)
		return;
	if (st.last_sequence <= wm) {
		memcpy(g->chain, st.head, sizeof(g->chain));
	} else if (history_head_at(w->hist, wm, g->chain) < 0) {
		return;
	}
	g->has_chain = true;
	g->chain_sequence = wm;
}

/* Makes history durable before the change log may lose its copy: 0, or
 * < 0 with the writer faulted. */
static int writer_hist_sync(struct writer *w, const char *why)
{
	char err[400];
	if (w->hist == NULL)
		return 0;
	int rc = history_sync(w->hist, err, sizeof(err));
	if (rc < 0) {
		metrics_inc(&w->m->history_failures);
		writer_set_fault(w, "history (%s): %s", why, err);
	}
	return rc;
}

/* ---- applying ---- */

/* Whether the table that replaces the served one (oi) goes into a
 * working file: always for a mapped one; under AUTO also for one in
 * anonymous memory that has outgrown the rule, which is asked again as
 * if the new table were opened now (its memory then, the served table's
 * given back). */
static bool writer_grow_mapped(const struct writer *w,
			       const struct index_info *oi)
{
	uint64_t avail;
	if (oi->mapped)
		return true;
	if (w->opt.index_load != INDEX_LOAD_AUTO)
		return false;
	if (index_mem_available(&avail) < 0)
		return true;
	return index_load_choose(oi->bytes + oi->bytes / 2,
				 avail + oi->bytes) == INDEX_LOAD_MMAP;
}

/* Copies the served index into a table for `capacity` records (0: 1.5
 * times the present capacity) and swaps it in at once (live_publish;
 * readers keep the old one until the grace period ends). A served table
 * in anonymous memory (ANON: two fit, README "Memory") grows into
 * anonymous memory with a fresh secret; a mapped one (or, under AUTO, one
 * the rule no longer lets stay anonymous) into a working file
 * (generation_grow_file), with its own secret unless this is a rebuild,
 * so that no second table is held in RAM. */
static int writer_grow(struct writer *w, uint64_t capacity, bool rebuild,
		       const char *why)
{
	char err[512];
	double t0 = clock_mono_s();
	struct index *old = NULL;
	struct index_info oi;
	index_info(w->cur.ix, &oi);
	int rc = writer_grow_mapped(w, &oi)
		? generation_grow_file(&w->cur, w->dir, capacity, rebuild, &old,
				       err, sizeof(err))
		: generation_grow(&w->cur, capacity, &old, err, sizeof(err));
	if (rc < 0) {
		say("%s: copying the table: %s", why, err);
		return rc;
	}
	double t_copy = clock_mono_s();
	w->need_checkpoint = true;
	if (w->cur_served) {
		live_publish(w->cur.ix); /* destroys old after the grace period */
		metrics_inc(&w->m->generation_swaps);
	} else {
		index_destroy(old);
	}
	struct index_info ni;
	index_info(w->cur.ix, &ni);
	say("%s: new table for %" PRIu64 " records (%" PRIu64 " held, %"
	    PRIu64 " MiB%s): copy %.2f s, swap %.2f s", why, ni.capacity,
	    ni.n_records, ni.bytes >> 20,
	    ni.mapped ? ", in a working file" : "", t_copy - t0,
	    clock_mono_s() - t_copy);
	return 0;
}

/* Applies one change to the served index, growing the table when it is
 * full. Returns INDEX_INSERTED, INDEX_UPDATED or INDEX_SKIPPED; -EINVAL
 * for a change the index cannot hold (logged, skipped by the caller);
 * -ENOMEM. */
static int writer_apply(struct writer *w, const Consent__V1__Consent *c)
{
	for (int tries = 0;; tries++) {
		int rc = generation_apply(&w->cur, c);
		if (rc != -ENOSPC || tries == 3)
			return rc;
		rc = writer_grow(w, 0, false, "load limit");
		if (rc < 0)
			return rc;
	}
}

static void writer_set_meta(struct writer *w)
{
	/* Release inside: pairs with index_info's acquire loads, so a reader
	 * that sees this watermark sees every change applied before it. */
	index_set_meta_writer(w->cur.ix, w->keep.gen, w->applied,
			      w->created_at, w->data_as_of);
}

/* ---- generations ---- */

/* After generation gen (watermark wm) was published and is served. */
static void writer_published(struct writer *w, uint64_t gen, uint64_t wm)
{
	/* The log is history's durable copy: it loses segments only once
	 * history is durable itself (else it stays whole). */
	bool synced = writer_hist_sync(w, "before the change log drops") == 0;
	generation_kept(w->dir, synced ? w->log : NULL, &w->keep, gen, wm);
	metrics_inc(&w->m->generations_built);
}

/* Writes the served index as the next generation. A failure is logged:
 * the change log keeps everything, and the next try comes after more
 * changes. */
static int writer_checkpoint(struct writer *w, const char *why)
{
	char err[512];
	double t0 = clock_mono_s();
	uint64_t gen = 0, old = w->keep.gen;
	int rc = generation_next(w->dir, &w->keep, &gen);

	w->need_checkpoint = false;
	w->since_checkpoint = 0;
	if (rc < 0) {
		snprintf(err, sizeof(err), "listing %.400s: %s", w->dir,
			 strerror(-rc));
	} else if ((rc = index_file_sync(w->cur.ix)) < 0) {
		/* A served working file: the kernel writes its pages back on
		 * its own, and a page whose writeback failed may be read back
		 * from the disk without its changes. fdatasync says so; then
		 * neither the answers nor a copy of them can be trusted:
		 * nothing is published, Applies are refused and /readyz is
		 * false (a restart opens the last generation and the log). */
		writer_set_fault(w, "the served table's working file: %s",
				 strerror(-rc));
		snprintf(err, sizeof(err), "the working file: %s",
			 strerror(-rc));
	} else {
		w->keep.gen = gen; /* the header the file gets */
		writer_set_meta(w);
		writer_chain_into(w, &w->cur, w->applied);
		rc = generation_publish(w->dir, &w->cur, err, sizeof(err));
		w->keep.gen = old;
	}
	if (rc < 0) {
		writer_set_meta(w);
		say("%s: writing generation %" PRIu64 ": %s (the change log "
		    "keeps everything; next try after more changes)", why, gen,
		    err);
		return rc;
	}
	writer_published(w, gen, w->applied);
	generation_written(&w->cur, w->dir, gen);
	struct index_info info;
	index_info(w->cur.ix, &info);
	say("%s: wrote generation %" PRIu64 " (%" PRIu64 " records, through "
	    "sequence %" PRIu64 ") in %.2f s", why, gen, info.n_records,
	    w->applied, clock_mono_s() - t0);
	return 0;
}

/* Takes the snapshot s built in memory: replays, merges if need be,
 * publishes it once as DIR's next generation and swaps it in. Frees s.
 * Returns 0, or -errno with the reason in err. */
static int writer_take_now(struct writer *w, struct generation *s,
			   char *err, size_t err_cap)
{
	struct index_info si;
	uint64_t replayed = 0;
	double t0 = clock_mono_s();
	int rc;

	bool merged = false;
	index_info(s->ix, &si);
	rc = generation_catch_up(s, w->log, w->keep.log_floor,
				 w->cur.ix != NULL ? &w->cur : NULL, &replayed,
				 &merged, err, err_cap);
	if (rc < 0)
		goto out;

	/* The writer's table is the truth, and the new generation carries
	 * it; but a first generation from a peer's snapshot (§9 bootstrap)
	 * brings the peer's table at its watermark, which the cursor rule
	 * must go on from (a log that took the other kind refuses it). */
	bool peers = s->origins != NULL && w->cur.ix == NULL &&
		     origins_kind(s->origins) != ORIGINS_NONE;
	if (peers && w->cur.origins != NULL &&
	    origins_kind(w->cur.origins) != ORIGINS_NONE &&
	    origins_kind(w->cur.origins) != origins_kind(s->origins)) {
		rc = errmsg_fail(err, err_cap, -EPROTO, "the snapshot took "
				 "changes %s origin, this data directory's "
				 "change log %s (the two never mix)",
				 origins_kind(s->origins) == ORIGINS_ORIGIN
					 ? "with" : "without",
				 origins_kind(w->cur.origins) == ORIGINS_ORIGIN
					 ? "with" : "without");
		goto out;
	}
	if (s->origins == NULL && (rc = origins_create(&s->origins)) < 0) {
		errmsg_fail(err, err_cap, rc, "out of memory");
		goto out;
	}
	if (!peers && w->cur.origins != NULL &&
	    (rc = origins_copy(s->origins, w->cur.origins)) < 0) {
		errmsg_fail(err, err_cap, rc, "out of memory");
		goto out;
	}
	uint64_t applied = si.watermark > w->applied ? si.watermark : w->applied;
	int64_t as_of = si.data_as_of;
	if (w->cur.ix != NULL && w->data_as_of > as_of)
		as_of = w->data_as_of;
	uint64_t gen;
	rc = generation_next(w->dir, &w->keep, &gen);
	if (rc < 0) {
		errmsg_fail(err, err_cap, rc, "listing %s: %s", w->dir, strerror(-rc));
		goto out;
	}
	index_set_meta_writer(s->ix, gen, applied, si.created_at, as_of);
	if (w->hist != NULL && w->cur.ix == NULL) {
		/* The first generation: the build thread put the snapshot's
		 * records into history at its watermark (after a reset); the
		 * changes the log holds past it follow them, as in the index. */
		uint64_t copied = 0;
		char he[400];
		rc = history_recover(w->hist, w->log, &copied, he, sizeof(he));
		if (rc < 0) {
			errmsg_fail(err, err_cap, rc, "history: %s", he);
			metrics_inc(&w->m->history_failures);
			writer_set_fault(w, "history: %s", he);
			goto out;
		}
		if (copied)
			say("history: %" PRIu64 " changes of the log past the "
			    "snapshot's watermark copied in", copied);
		writer_chain_publish(w);
	}
	writer_chain_into(w, s, applied);
	char e[512] = "";
	/* A working file whose writeback failed is not published (see
	 * writer_checkpoint). */
	rc = index_file_sync(s->ix);
	if (rc < 0) {
		errmsg_fail(err, err_cap, rc, "the snapshot's working file: %s",
			    strerror(-rc));
		goto out;
	}
	rc = generation_publish(w->dir, s, e, sizeof(e));
	if (rc < 0) {
		errmsg_fail(err, err_cap, rc, "writing generation %" PRIu64 ": %s",
		     gen, e);
		goto out;
	}

	double t_pub = clock_mono_s();
	/* A working file's name goes first: live_publish may release the
	 * index itself before it returns. */
	if (w->cur_served)
		generation_work_remove(w->cur.ix);
	live_publish(s->ix); /* the old index goes after the grace period */
	metrics_inc(&w->m->generation_swaps);
	if (w->cur_served)
		w->cur.ix = NULL; /* live_publish releases it */
	pthread_mutex_lock(&w->origins_mu);
	generation_fini(&w->cur);
	w->cur = *s;
	pthread_mutex_unlock(&w->origins_mu);
	memset(s, 0, sizeof(*s));
	w->cur_served = true;
	w->applied = applied;
	/* Replicated: the stream is followed from the snapshot's watermark
	 * (a message at or below it is in the snapshot already). */
	pthread_mutex_lock(&w->stream_mu);
	if (applied > w->stream_done)
		w->stream_done = applied;
	pthread_mutex_unlock(&w->stream_mu);
	/* Release: pairs with the acquire in writer_submit. Set as soon as
	 * the index is served (live_publish above: /readyz may say ready
	 * from now on), not after the checkpoint's bookkeeping below, so no
	 * Apply in between is refused as "no generation yet"; one submitted
	 * now waits in the inbox until this take is done. */
	atomic_store_explicit(&w->has_index, true, memory_order_release);
	w->created_at = si.created_at;
	w->data_as_of = as_of;
	writer_published(w, gen, applied);
	generation_written(&w->cur, w->dir, gen);
	w->since_checkpoint = 0;
	w->need_checkpoint = false;
	index_info(w->cur.ix, &si);
	say("snapshot: now serving generation %" PRIu64 ": %" PRIu64
	    " records, %" PRIu64 " changes replayed%s, through sequence %"
	    PRIu64 "; %.2f s (swap %.2f s)", gen, si.n_records, replayed,
	    merged ? ", served index merged in" : "", applied,
	    clock_mono_s() - t0, clock_mono_s() - t_pub);
out:
	generation_fini(s);
	free(s);
	return rc;
}

/* ---- the group commit ---- */

static int chg_cmp(const void *a, const void *b)
{
	const struct writer_chg *x = a, *y = b;
	if (x->c->sequence != y->c->sequence)
		return x->c->sequence < y->c->sequence ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static void reply_error(struct writer_req *r, uint32_t code, const char *msg)
{
	r->reply.code = code;
	r->reply.applied = r->reply.skipped = 0;
	snprintf(r->reply.message, sizeof(r->reply.message), "%s", msg);
}

/* After the log failed: every request of list not yet refused is. */
static void refuse_unanswered(struct writer *w, struct writer_req *list)
{
	char msg[240];
	snprintf(msg, sizeof(msg), "changes refused: %s", w->fault);
	for (struct writer_req *r = list; r != NULL; r = r->next)
		if (r->reply.code == 0)
			reply_error(r, 503, msg);
}

static int writer_reserve(struct writer *w, size_t n)
{
	if (n <= w->chg_cap)
		return 0;
	size_t cap = w->chg_cap ? w->chg_cap : 1024;
	while (cap < n)
		cap *= 2;
	struct writer_chg *c = realloc(w->chg, cap * sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	w->chg = c;
	Consent__V1__Consent **p = realloc(w->ptrs, cap * sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	w->ptrs = p;
	w->chg_cap = cap;
	return 0;
}

static int writer_reserve_reqs(struct writer *w, size_t n)
{
	if (n <= w->req_cap)
		return 0;
	size_t cap = w->req_cap ? w->req_cap : 64;
	while (cap < n)
		cap *= 2;
	struct changelog_batch *b = realloc(w->batches, cap * sizeof(*b));
	if (b == NULL)
		return -ENOMEM;
	w->batches = b;
	struct writer_move *mv = realloc(w->moves, cap * sizeof(*mv));
	if (mv == NULL)
		return -ENOMEM;
	w->moves = mv;
	w->req_cap = cap;
	return 0;
}

static void reply_errorf(struct writer_req *r, uint32_t code, const char *fmt,
			 ...) __attribute__((format(printf, 3, 4)));

static void reply_errorf(struct writer_req *r, uint32_t code, const char *fmt,
			 ...)
{
	va_list ap;
	r->reply.code = code;
	r->reply.applied = r->reply.skipped = 0;
	va_start(ap, fmt);
	vsnprintf(r->reply.message, sizeof(r->reply.message), fmt, ap);
	va_end(ap);
}

static bool has_origin(const Consent__V1__ApplyRequest *a)
{
	return a->origin != NULL && a->origin[0] != '\0';
}

static bool writer_origin_local(const char *origin, size_t len)
{
	return len == strlen(OUTBOX_ORIGIN_LOCAL) &&
	       memcmp(origin, OUTBOX_ORIGIN_LOCAL, len) == 0;
}

/* The cursor an origin has at this point of the group: the last move of
 * it earlier in the group, else the table's ("" and 0 when unknown). */
static const char *group_cursor(const struct writer *w, size_t n_moves,
				const char *origin, size_t origin_len,
				size_t *len)
{
	for (size_t i = n_moves; i-- > 0;) {
		const struct writer_move *m = &w->moves[i];
		if (m->origin_len == origin_len &&
		    memcmp(m->origin, origin, origin_len) == 0) {
			*len = m->cursor_len;
			return m->cursor;
		}
	}
	const char *c = origins_get(w->cur.origins, origin, origin_len, len);
	if (c == NULL)
		*len = 0;
	return c != NULL ? c : "";
}

/* The sequence kind: the changes of every request of the group sorted by
 * sequence, replays dropped; one batch. Returns its number of changes. */
static size_t group_sequences(struct writer *w, struct writer_req *list)
{
	size_t n = 0;
	for (struct writer_req *r = list; r != NULL; r = r->next) {
		if (r->reply.code != 0 || r->kind != ORIGINS_SEQUENCE)
			continue;
		const Consent__V1__ApplyRequest *a = r->apply;
		for (size_t i = 0; i < a->n_changes; i++) {
			if (a->changes[i]->sequence <= w->applied) {
				r->reply.skipped++;
				metrics_inc(&w->m->changes_skipped_replay);
				continue;
			}
			w->chg[n].c = a->changes[i];
			w->chg[n].r = r;
			w->chg[n].order = (uint32_t)n;
			n++;
		}
	}
	/* Sequence order across the group; a sequence twice is a replay of
	 * the first copy (two feeders of one stream). */
	if (n > 1)
		qsort(w->chg, n, sizeof(*w->chg), chg_cmp);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && w->chg[i].c->sequence == w->chg[m - 1].c->sequence) {
			w->chg[i].r->reply.skipped++;
			metrics_inc(&w->m->changes_skipped_replay);
			continue;
		}
		w->chg[m++] = w->chg[i];
	}
	for (size_t i = 0; i < m; i++)
		w->ptrs[i] = (Consent__V1__Consent *)w->chg[i].c;
	if (m > 0)
		w->batches[0] = (struct changelog_batch){
			.changes = w->ptrs, .n = m,
			.commit = { .kind = ORIGINS_SEQUENCE },
		};
	return m;
}

/* The origin kind: each request in arrival order against the cursors as
 * the requests before it in the group left them (the cursor rule, §8: a
 * pure function of the table and the request, so it is the same on every
 * replica that reads one stream in order). A request that follows gets
 * the next log positions for its changes (their own sequences are
 * ignored) and becomes one batch; one that does not is refused with 409
 * naming the stored cursor. Returns the batches; *n_chg the changes,
 * *last the last position given (w->applied when none). */
static size_t group_origins(struct writer *w, struct writer_req *list,
			    size_t *n_chg, uint64_t *last, bool *heartbeat)
{
	size_t nb = 0, m = 0;
	uint64_t next = w->applied;
	for (struct writer_req *r = list; r != NULL; r = r->next) {
		if (r->reply.code != 0 || r->kind != ORIGINS_ORIGIN)
			continue;
		const Consent__V1__ApplyRequest *a = r->apply;
		size_t ol = strlen(a->origin), al = strlen(a->after_cursor);
		size_t cl = strlen(a->cursor), sl;
		const char *stored = group_cursor(w, nb, a->origin, ol, &sl);
		const char *cursor = a->cursor;
		bool local = writer_origin_local(a->origin, ol);
		if (!local &&
		    (sl != al || memcmp(stored, a->after_cursor, al) != 0)) {
			reply_errorf(r, 409, "stored cursor \"%.*s\" of origin "
				     "\"%s\": after_cursor \"%s\" does not "
				     "follow it (nothing of this batch was "
				     "applied)", (int)sl, stored, a->origin,
				     a->after_cursor);
			metrics_inc(&w->m->applies_conflict);
			continue;
		}
		if (a->n_changes == 0 && (local || (cl == sl &&
		    memcmp(a->cursor, stored, cl) == 0))) {
			*heartbeat = true; /* the cursor stays: nothing to log */
			continue;
		}
		struct changelog_batch *b = &w->batches[nb];
		b->changes = &w->ptrs[m];
		b->n = a->n_changes;
		/* A stream message is one position, its sequence (§9): every
		 * change of it carries it. group_kind dropped the messages
		 * at or below the watermark, and they come in stream order,
		 * so positions still increase from batch to batch. */
		uint64_t at = r->stream_seq;
		if (at != 0)
			next = at - 1;
		for (size_t i = 0; i < a->n_changes; i++) {
			a->changes[i]->sequence = at != 0 ? at : ++next;
			w->chg[m].c = a->changes[i];
			w->chg[m].r = r;
			w->chg[m].order = (uint32_t)m;
			w->ptrs[m] = a->changes[i];
			m++;
		}
		if (local) {
			/* Unconditional (§11): the cursor is the batch's log
			 * position, the same on every replica. */
			cursor = r->local_cursor;
			cl = (size_t)(decimal_put_u64(r->local_cursor,
						      at != 0 ? at : next) -
				      r->local_cursor);
		}
		b->commit = (struct changelog_commit){
			.kind = ORIGINS_ORIGIN,
			.origin = a->origin, .origin_len = ol,
			.cursor = cursor, .cursor_len = cl,
			/* A cursor moved by no change has a position of its
			 * own (a heartbeat that moves it, §9's empty message). */
			.sequence = a->n_changes ? 0 : ++next,
		};
		if (at != 0)
			next = at;
		if (a->n_changes == 0)
			*heartbeat = true;
		w->moves[nb] = (struct writer_move){ a->origin, cursor, ol, cl };
		nb++;
	}
	*n_chg = m;
	*last = next;
	return nb;
}

/* After the append: the group's kind and cursor moves into the table,
 * under the lock the workers' lookups take. */
static int group_commit_origins(struct writer *w, enum origins_kind kind,
				size_t n_moves)
{
	int rc = 0;
	pthread_mutex_lock(&w->origins_mu);
	origins_set_kind(w->cur.origins, kind);
	for (size_t i = 0; i < n_moves && rc == 0; i++)
		rc = origins_set(w->cur.origins, w->moves[i].origin,
				 w->moves[i].origin_len, w->moves[i].cursor,
				 w->moves[i].cursor_len);
	pthread_mutex_unlock(&w->origins_mu);
	return rc;
}

/* The group's kind (§8: kinds never mix): the data directory's, or the
 * first request's that has one. Refuses (409) each request of the other
 * kind and any before a generation is loaded (503); notes a heartbeat
 * (an Apply with no changes and no origin, of any kind). */
static enum origins_kind group_kind(struct writer *w, struct writer_req *list,
				    bool *heartbeat)
{
	enum origins_kind kind = w->cur.origins != NULL ?
					 origins_kind(w->cur.origins) :
					 ORIGINS_NONE;

	for (struct writer_req *r = list; r != NULL; r = r->next) {
		const Consent__V1__ApplyRequest *a = r->apply;
		r->kind = ORIGINS_NONE;
		if (r->stream_seq != 0 &&
		    (r->epoch == w->stream_hold ||
		     r->epoch != atomic_load_explicit(&w->stream_epoch,
						      memory_order_relaxed))) {
			reply_error(r, 503, "a message before it was not "
				    "processed: given again");
			continue;
		}
		if (r->reply.code != 0)
			continue; /* a stream message refused as it came */
		if (w->cur.ix == NULL) {
			reply_error(r, 503, "no generation is loaded yet (a "
				    "snapshot is being built)");
			continue;
		}
		if (r->stream_seq != 0 && r->stream_seq <= w->applied) {
			/* A message this index holds already (the consumer
			 * redelivered it, or started before the watermark). */
			r->reply.skipped = (uint32_t)a->n_changes;
			metrics_add(&w->m->changes_skipped_replay, a->n_changes);
			r->replayed = true; /* nothing of it to do */
			continue;
		}
		if (r->stream_seq != 0 && a->n_changes > 0 && !has_origin(a)) {
			/* §9: the stream is the log; a feeder's own
			 * sequences have no place in it. */
			reply_error(r, 409, "a replicated change needs an "
				    "origin and cursors (nothing of this batch "
				    "was applied)");
			metrics_inc(&w->m->applies_conflict);
			continue;
		}
		if (a->n_changes == 0 && !has_origin(a)) {
			*heartbeat = true; /* any kind: it applies nothing */
			continue;
		}
		enum origins_kind k = has_origin(a) ? ORIGINS_ORIGIN :
						      ORIGINS_SEQUENCE;
		if (kind != ORIGINS_NONE && kind != k) {
			reply_errorf(r, 409, "%s", k == ORIGINS_ORIGIN ?
				     "this data directory takes changes "
				     "without origin (their sequences given "
				     "by one feeder): an Apply with an origin "
				     "is refused; origins and feeder-given "
				     "sequences never mix (nothing of this "
				     "batch was applied)" :
				     "this data directory takes changes with "
				     "origins and cursors: an Apply without "
				     "origin is refused; origins and "
				     "feeder-given sequences never mix "
				     "(nothing of this batch was applied)");
			metrics_inc(&w->m->applies_conflict);
			continue;
		}
		kind = k;
		r->kind = k;
	}
	return kind;
}

/* Makes the group's nb batches durable in one append, then moves their
 * cursors. 0, or < 0 with the writer faulted and list refused. */
static int group_append(struct writer *w, struct writer_req *list,
			enum origins_kind kind, size_t nb)
{
	int rc = changelog_append_batches(w->log, w->batches, nb);

	if (rc < 0) {
		metrics_inc(&w->m->changelog_failures);
		writer_set_fault(w, "change log: %s", changelog_error(w->log));
		refuse_unanswered(w, list);
		return rc;
	}
	metrics_inc(&w->m->changelog_appends);
	/* Durable: the cursors move now, with their changes. */
	if (group_commit_origins(w, kind, kind == ORIGINS_ORIGIN ? nb : 0) < 0) {
		writer_set_fault(w, "the origins table is out of memory");
		refuse_unanswered(w, list);
		return -ENOMEM;
	}
	return 0;
}

/* The group's m durable changes (w->ptrs: log order) into the evidence
 * store, before any of them is applied or answered. 0, or < 0 with the
 * writer faulted and list refused (the log holds them: a restart's
 * history_recover copies them). */
static int group_history(struct writer *w, struct writer_req *list, size_t m)
{
	char err[400];
	if (w->hist == NULL)
		return 0;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int rc = history_append(w->hist, w->ptrs, m, ts.tv_sec, err,
				sizeof(err));
	if (rc < 0) {
		metrics_inc(&w->m->history_failures);
		writer_set_fault(w, "history: %s", err);
		refuse_unanswered(w, list);
		return rc;
	}
	writer_chain_publish(w);
	return 0;
}

/* Applies the group's m durable changes in log order, counting each in
 * its request's reply. 0, or < 0 with the writer faulted and list
 * refused (durable but not applied: a restart replays them). */
#define WRITER_PREFETCH_AHEAD 8 /* changes whose buckets are on the way */
static int group_apply(struct writer *w, struct writer_req *list, size_t m)
{
	for (size_t i = 0; i < m && i < WRITER_PREFETCH_AHEAD; i++)
		generation_prefetch(&w->cur, w->chg[i].c);
	for (size_t i = 0; i < m; i++) {
		if (i + WRITER_PREFETCH_AHEAD < m)
			generation_prefetch(&w->cur,
					    w->chg[i + WRITER_PREFETCH_AHEAD].c);
		struct writer_req *r = w->chg[i].r;
		int rc = writer_apply(w, w->chg[i].c);
		if (rc == -EINVAL) {
			say("sequence %" PRIu64 " cannot be held by the index "
			    "(skipped)", w->chg[i].c->sequence);
			rc = INDEX_SKIPPED;
		}
		if (rc < 0) {
			writer_set_fault(w, "applying sequence %" PRIu64 ": %s",
					 w->chg[i].c->sequence, strerror(-rc));
			refuse_unanswered(w, list);
			return rc;
		}
		if (rc == INDEX_SKIPPED) {
			r->reply.skipped++;
			metrics_inc(&w->m->changes_skipped_order);
		} else {
			r->reply.applied++;
			metrics_inc(&w->m->changes_applied);
		}
		w->applied = w->chg[i].c->sequence;
	}
	return 0;
}

/* The outbox's part of the group (its changes in log order, each with
 * its batch's origin), durable before any reply. 0, or < 0 with the
 * writer faulted and list refused: the changes are in the log and the
 * index, and a restart rebuilds the outbox from the log. */
static int group_outbox(struct writer *w, struct writer_req *list, size_t m)
{
	char err[300];
	int rc = 0;
	for (size_t i = 0; i < m && rc == 0; i++) {
		const char *o = w->chg[i].r->apply->origin;
		rc = outbox_observe(w->outbox, o, strlen(o), w->chg[i].c);
	}
	if (rc == 0)
		rc = outbox_commit(w->outbox, w->applied, err, sizeof(err));
	else
		snprintf(err, sizeof(err), "out of memory");
	if (rc < 0) {
		writer_set_fault(w, "outbox: %s", err);
		refuse_unanswered(w, list);
	}
	return rc;
}

/* Appends, applies and answers the requests of list (arrival order). */
static void writer_group(struct writer *w, struct writer_req *list)
{
	size_t total = 0, n_req = 0, nb = 0, m = 0;
	bool heartbeat = false;
	uint64_t last = w->applied;

	for (struct writer_req *r = list; r != NULL; r = r->next) {
		total += r->apply->n_changes;
		n_req++;
	}
	if (writer_reserve(w, total) < 0 || writer_reserve_reqs(w, n_req) < 0) {
		for (struct writer_req *r = list; r != NULL; r = r->next)
			reply_error(r, 503, "the writer is out of memory");
		return;
	}
	if (atomic_load_explicit(&w->failed, memory_order_relaxed)) {
		refuse_unanswered(w, list);
		return;
	}
	enum origins_kind kind = group_kind(w, list, &heartbeat);
	if (kind == ORIGINS_ORIGIN) {
		nb = group_origins(w, list, &m, &last, &heartbeat);
	} else if (kind == ORIGINS_SEQUENCE) {
		m = group_sequences(w, list);
		nb = m > 0;
	}
	if (nb > 0 && group_append(w, list, kind, nb) < 0)
		return;
	if (m > 0 && group_history(w, list, m) < 0)
		return;
	if (group_apply(w, list, m) < 0)
		return;
	if (kind == ORIGINS_ORIGIN && nb > 0)
		w->applied = last; /* a cursor moved alone has a position */
	/* Replicated: every message processed used its position, whatever
	 * it did (a heartbeat or a refusal writes nothing), and the data is
	 * as fresh as the newest message's publish time (§9). */
	bool stream = false;
	int64_t as_of = 0;
	for (struct writer_req *r = list; r != NULL; r = r->next) {
		if (r->stream_seq == 0 || r->replayed || r->reply.code == 503)
			continue;
		stream = true;
		if (r->stream_seq > w->applied)
			w->applied = r->stream_seq;
		if (r->stream_time_s > as_of)
			as_of = r->stream_time_s;
	}
	/* After the positions moved: the outbox accounts for the log
	 * through w->applied. */
	if (kind == ORIGINS_ORIGIN && m > 0 && group_outbox(w, list, m) < 0)
		return;
	if (stream) {
		if (as_of > w->data_as_of)
			w->data_as_of = as_of;
	} else if (m > 0 || heartbeat) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		w->data_as_of = ts.tv_sec;
	}
	if (w->cur.ix != NULL)
		writer_set_meta(w);
	w->since_checkpoint += m;
	for (struct writer_req *r = list; r != NULL; r = r->next)
		r->reply.applied_sequence = w->applied;
}

/* A waiting Apply answered with its message's outcome o (NULL: one
 * processed before the outcomes kept), onto its worker's queue. */
static void waiter_answer(struct writer *w, struct writer_req *r,
			  const struct writer_outcome *o, uint32_t n_changes)
{
	if (o != NULL) {
		r->reply.code = o->code;
		r->reply.applied = o->applied;
		r->reply.skipped = o->skipped;
		snprintf(r->reply.message, sizeof(r->reply.message), "%s",
			 o->message);
	} else {
		r->reply.skipped = n_changes;
	}
	r->reply.applied_sequence = w->stream_done;
	req_push(&w->queues[r->queue].done, r);
	/* The caller wakes the worker (wake is the writer thread's). */
}

/* Replicated mode, after a group: the outcomes of its stream messages,
 * the waiters they answer, and the fetch thread woken. */
static void writer_stream_note(struct writer *w, struct writer_req *list)
{
	bool any = false;
	pthread_mutex_lock(&w->stream_mu);
	for (struct writer_req *r = list; r != NULL; r = r->next) {
		if (r->queue != WRITER_QUEUE_INTERNAL)
			continue;
		any = true;
		if (r->reply.code == 503) {
			/* Not processed (the log failed, or no index yet):
			 * this one and all after it in its run must come
			 * again, in a new run. */
			w->stream_hold = r->epoch;
			if (r->epoch == atomic_load_explicit(
				    &w->stream_epoch, memory_order_relaxed))
				w->stream_refused = true;
			continue;
		}
		/* A redelivery below the watermark: its first processing
		 * holds the outcome, and the watermark stays. */
		if (r->replayed || r->stream_seq <= w->stream_done)
			continue;
		struct writer_outcome *o =
			&w->outcomes[r->stream_seq % WRITER_OUTCOMES];
		o->seq = r->stream_seq;
		o->code = r->reply.code;
		o->applied = r->reply.applied;
		o->skipped = r->reply.skipped;
		snprintf(o->message, sizeof(o->message), "%.255s",
			 r->reply.message);
		w->stream_done = r->stream_seq;
	}
	if (any) {
		struct writer_req **pp = &w->waiters;
		while (*pp != NULL) {
			struct writer_req *r = *pp;
			if (r->stream_seq > w->stream_done) {
				pp = &r->next;
				continue;
			}
			*pp = r->next;
			const struct writer_outcome *o =
				&w->outcomes[r->stream_seq % WRITER_OUTCOMES];
			unsigned q = r->queue;
			waiter_answer(w, r, o->seq == r->stream_seq ? o : NULL,
				      (uint32_t)r->reply.skipped);
			w->queues[q].wake = true;
		}
		pthread_cond_broadcast(&w->stream_cv);
	}
	pthread_mutex_unlock(&w->stream_mu);
}

/* Hands every request of list back to its worker (a stream message is
 * the writer's own: freed). */
static void writer_complete(struct writer *w, struct writer_req *list)
{
	writer_stream_note(w, list);
	while (list != NULL) {
		struct writer_req *r = list;
		list = r->next;
		consent__v1__apply_request__free_unpacked(r->apply, NULL);
		r->apply = NULL;
		if (r->queue == WRITER_QUEUE_INTERNAL) {
			free(r);
			continue;
		}
		unsigned q = r->queue; /* r is the worker's once pushed */
		req_push(&w->queues[q].done, r);
		w->queues[q].wake = true;
	}
	for (unsigned i = 0; i < w->opt.n_queues; i++)
		if (w->queues[i].wake) {
			w->queues[i].wake = false;
			efd_signal(w->queues[i].efd);
		}
}

static void writer_drain(struct writer *w)
{
	struct writer_req *list;
	while ((list = req_take_all(&w->inbox)) != NULL) {
		writer_group(w, list);
		writer_complete(w, list);
	}
}

static uint64_t writer_checkpoint_every(struct writer *w)
{
	if (w->opt.checkpoint_changes)
		return w->opt.checkpoint_changes;
	struct index_info info;
	index_info(w->cur.ix, &info);
	return info.n_records / 2 > WRITER_CHECKPOINT_MIN
		       ? info.n_records / 2 : WRITER_CHECKPOINT_MIN;
}

/* Fills one view of the state between two groups (writer_view). */
static int writer_view_fill(struct writer *w, struct writer_view *v,
			    char *err, size_t err_cap)
{
	v->emails_fd = -1;
	if (w->cur.ix == NULL || !w->cur_served)
		return errmsg_fail(err, err_cap, -ENOENT, "no generation is "
				   "served yet");
	v->ref = live_acquire();
	/* The writer is the one publisher: what is published is cur. */
	if (v->ref == NULL || live_ref_index(v->ref) != w->cur.ix)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory "
				   "(the served generation cannot be held)");
	v->ix = live_ref_index(v->ref);
	v->watermark = w->applied;
	/* Between groups: history holds every change through the
	 * watermark, so its head now is the head at it. */
	struct generation cg = { 0 };
	writer_chain_into(w, &cg, v->watermark);
	v->has_chain = cg.has_chain;
	memcpy(v->chain, cg.chain, sizeof(v->chain));
	v->created_at = w->created_at;
	v->data_as_of = w->data_as_of;
	if (origins_create(&v->origins) < 0 ||
	    (w->cur.origins != NULL &&
	     origins_copy(v->origins, w->cur.origins) < 0))
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	if (w->cur.emails_dir[0] != '\0') {
		int rc = generation_emails_open(w->cur.emails_dir,
						w->cur.emails_gen, &v->emails_fd,
						v->emails_name,
						sizeof(v->emails_name), err,
						err_cap);
		if (rc < 0)
			return rc;
	}
	const struct generation_email_list *l = &w->cur.extra;
	if (l->len > 0) {
		/* The one copy the writer makes: the addresses listed since
		 * the last generation (a checkpoint's worth at most). */
		v->extra = calloc(1, sizeof(*v->extra));
		if (v->extra == NULL || (v->extra->p = malloc(l->len)) == NULL)
			return errmsg_fail(err, err_cap, -ENOMEM, "out of "
					   "memory");
		memcpy(v->extra->p, l->p, l->len);
		v->extra->len = v->extra->cap = l->len;
		v->extra->n = l->n;
	}
	return 0;
}

/* Answers every view asked for: filled now, or refused with rc < 0. */
static void writer_views(struct writer *w, int refuse)
{
	pthread_mutex_lock(&w->mu);
	struct writer_view_req *list = w->views;
	w->views = NULL;
	if (refuse)
		w->stopped = true;
	pthread_mutex_unlock(&w->mu);
	for (struct writer_view_req *r = list; r != NULL; r = r->next) {
		memset(r->out, 0, sizeof(*r->out));
		r->out->emails_fd = -1;
		r->rc = refuse ? errmsg_fail(r->err, sizeof(r->err), refuse,
					     "the server is stopping")
			       : writer_view_fill(w, r->out, r->err,
						  sizeof(r->err));
		if (r->rc < 0)
			writer_view_release(r->out);
	}
	pthread_mutex_lock(&w->mu);
	for (struct writer_view_req *r = list; r != NULL; r = r->next)
		r->done = true;
	pthread_cond_broadcast(&w->view_cv);
	pthread_mutex_unlock(&w->mu);
}

/* --history-keep: at most once a minute (a prune removes whole segments,
 * so finer is pointless). A failure is said and tried again later: what
 * is kept too long costs disk, never evidence. */
#define WRITER_PRUNE_EVERY_S 60.0
static void writer_hist_prune(struct writer *w)
{
	if (w->hist == NULL || w->opt.history_keep_s <= 0)
		return;
	double now = clock_mono_s();
	if (w->hist_pruned_at != 0 &&
	    now - w->hist_pruned_at < WRITER_PRUNE_EVERY_S)
		return;
	w->hist_pruned_at = now;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	unsigned removed = 0;
	char err[400];
	if (history_prune(w->hist, ts.tv_sec, &removed, err, sizeof(err)) < 0)
		say("history: pruning: %s (tried again later)", err);
	else if (removed)
		say("history: %u segment(s) older than %" PRId64 " days "
		    "removed (--history-keep)", removed,
		    w->opt.history_keep_s / 86400);
	if (removed)
		writer_chain_publish(w);
}

/* Between groups: what main asked for, and checkpoints. */
static void writer_housekeeping(struct writer *w)
{
	struct generation *take;
	bool rebuild;

	writer_views(w, 0);
	pthread_mutex_lock(&w->mu);
	take = w->take;
	rebuild = w->rebuild_pending;
	w->take = NULL;
	w->rebuild_pending = false;
	pthread_mutex_unlock(&w->mu);

	if (take != NULL) {
		char err[512] = "";
		int rc = writer_take_now(w, take, err, sizeof(err));
		pthread_mutex_lock(&w->mu);
		w->take_rc = rc;
		snprintf(w->take_err, sizeof(w->take_err), "%s", err);
		w->take_done = true;
		pthread_cond_broadcast(&w->take_cv);
		pthread_mutex_unlock(&w->mu);
	}
	/* Not before a generation: the build thread may be putting the
	 * first snapshot into history (writer_history). */
	if (w->cur.ix == NULL)
		return;
	writer_hist_prune(w);
	if (rebuild) {
		struct index_info info;
		double t0 = clock_mono_s();
		index_info(w->cur.ix, &info);
		uint64_t cap = info.n_records + info.n_records / 10 +
			       GENERATION_GROW_MIN;
		if (cap < info.capacity)
			cap = info.capacity;
		if (writer_grow(w, cap, true, "rebuild") == 0 &&
		    writer_checkpoint(w, "rebuild") == 0)
			say("rebuild: %" PRIu64 " records rebuilt, written and "
			    "swapped in %.2f s", info.n_records,
			    clock_mono_s() - t0);
	}
	if (w->need_checkpoint ||
	    w->since_checkpoint >= writer_checkpoint_every(w))
		writer_checkpoint(w, w->need_checkpoint ? "growth"
				     : "checkpoint");
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (;;) {
		uint64_t v;
		ssize_t rd = read(w->efd, &v, sizeof(v));
		if (rd < 0 && errno != EINTR)
			say("eventfd: %s", strerror(errno));
		writer_drain(w);
		/* A growth asked for a checkpoint: it is written here,
		 * once the replies of its group are out. */
		writer_housekeeping(w);
		/* Acquire: pairs with the release store in writer_stop. */
		if (atomic_load_explicit(&w->stop, memory_order_acquire))
			break;
	}
	writer_drain(w);
	writer_views(w, -ESHUTDOWN);
	if (w->cur.ix != NULL && w->applied > w->keep.watermark &&
	    !atomic_load_explicit(&w->failed, memory_order_relaxed))
		writer_checkpoint(w, "shutdown");
	/* A graceful stop leaves history durable (the checkpoint synced it
	 * only when it wrote one). */
	writer_hist_sync(w, "at stop");
	return NULL;
}

/* ---- main's side ---- */

int writer_open(const struct writer_options *opt, struct writer **out,
		char *err, size_t err_cap)
{
	struct writer *w = calloc(1, sizeof(*w));
	int rc;

	if (w == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	w->opt = *opt;
	w->efd = -1;
	pthread_mutex_init(&w->mu, NULL);
	pthread_mutex_init(&w->origins_mu, NULL);
	pthread_mutex_init(&w->chain_mu, NULL);
	pthread_cond_init(&w->take_cv, NULL);
	pthread_cond_init(&w->view_cv, NULL);
	pthread_mutex_init(&w->stream_mu, NULL);
	atomic_init(&w->stream_epoch, 1);
	pthread_cond_init(&w->stream_cv, NULL);
	atomic_init(&w->inbox, NULL);
	atomic_init(&w->stop, false);
	atomic_init(&w->has_index, false);
	atomic_init(&w->failed, false);
	w->m = opt->metrics;
	if (w->m == NULL) /* checked with the queues below */
		w->m = w->own_metrics = calloc(1, sizeof(*w->own_metrics));
	if (snprintf(w->dir, sizeof(w->dir), "%s", opt->data_dir) >=
	    (int)sizeof(w->dir)) {
		rc = errmsg_fail(err, err_cap, -ENAMETOOLONG, "%s: path too long",
			  opt->data_dir);
		goto fail_free;
	}
	w->opt.data_dir = w->dir;
	if (mkdir(w->dir, 0755) < 0 && errno != EEXIST) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", w->dir,
			  strerror(errno));
		goto fail_free;
	}
	/* Cache-line aligned: each queue's head is its worker's and the
	 * writer's, nobody else's. */
	size_t qbytes = (opt->n_queues ? opt->n_queues : 1) * sizeof(*w->queues);
	w->queues = aligned_alloc(64, (qbytes + 63) & ~(size_t)63);
	if (w->queues == NULL || w->m == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
		goto fail_free;
	}
	memset(w->queues, 0, qbytes);
	for (unsigned i = 0; i < opt->n_queues; i++)
		w->queues[i].efd = -1;
	w->efd = eventfd(0, EFD_CLOEXEC);
	for (unsigned i = 0; i < opt->n_queues && w->efd >= 0; i++) {
		atomic_init(&w->queues[i].done, NULL);
		if ((w->queues[i].efd = eventfd(0, EFD_CLOEXEC)) < 0)
			break;
	}
	if (w->efd < 0 ||
	    (opt->n_queues && w->queues[opt->n_queues - 1].efd < 0)) {
		rc = errmsg_fail(err, err_cap, -errno, "eventfd: %s", strerror(errno));
		goto fail_free;
	}

	struct changelog_options lo = { .segment_bytes = opt->segment_bytes };
	char lerr[512];
	rc = changelog_open(w->dir, &lo, &w->log, lerr, sizeof(lerr));
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "change log: %s", lerr);
		goto fail_free;
	}
	struct changelog_stats ls;
	changelog_stats(w->log, &ls);
	if (ls.truncated_bytes)
		say("change log: removed a torn tail of %" PRIu64 " bytes "
		    "(an append a crash interrupted, never acknowledged)",
		    ls.truncated_bytes);
	generation_remove_leftovers(w->dir);
	w->applied = changelog_last_sequence(w->log);

	if (!opt->history_off) {
		struct history_options ho = {
			.keep_seconds = opt->history_keep_s,
		};
		uint64_t copied = 0;
		rc = history_open(w->dir, &ho, &w->hist, lerr, sizeof(lerr));
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "history: %s", lerr);
			goto fail_free;
		}
		rc = history_recover(w->hist, w->log, &copied, lerr,
				     sizeof(lerr));
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "history: %s", lerr);
			goto fail_free;
		}
		struct history_state hs;
		history_state(w->hist, &hs);
		say("history: %" PRIu64 " records (sequences %" PRIu64 "-%"
		    PRIu64 "), %" PRIu64 " copied from the change log%s",
		    hs.records, hs.first_sequence, hs.last_sequence, copied,
		    hs.map_rebuilt ? "; its key map was rebuilt by a scan" :
		    "");
		if (hs.truncated_bytes)
			say("history: removed a torn tail of %" PRIu64 " bytes "
			    "(an append a crash interrupted; the change log "
			    "holds it)", hs.truncated_bytes);
		writer_chain_publish(w);
	}

	uint64_t cut = 0;
	rc = outbox_open(w->dir, &w->outbox, &cut, lerr, sizeof(lerr));
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "outbox: %s", lerr);
		goto fail_free;
	}
	if (cut)
		say("outbox: removed a torn tail of %" PRIu64 " bytes (an "
		    "append a crash interrupted, never acknowledged)", cut);
	rc = outbox_rebuild(w->outbox, w->log, lerr, sizeof(lerr));
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "outbox: %s", lerr);
		goto fail_free;
	}
	if (rc > 0)
		say("outbox: %d local rejection(s) recovered from the change "
		    "log (a crash fell between the two)", rc);

	uint64_t gen = 0, replayed = 0;
	bool grown = false;
	double t0 = clock_mono_s();
	rc = generation_open_replay(w->dir, (enum index_load_mode)opt->index_load,
				    w->log, &w->cur, &gen, &replayed, &grown,
				    err, err_cap);
	if (rc == -ENOENT) {
		/* The log's kind still binds the generation to come. */
		if (origins_create(&w->cur.origins) < 0) {
			rc = errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
			goto fail_free;
		}
		origins_set_kind(w->cur.origins, changelog_kind(w->log));
		say("%s has no generation yet; Applies wait for a snapshot",
		    w->dir);
		w->stream_done = w->stream_start = w->applied;
		*out = w;
		return 0;
	}
	if (rc < 0)
		goto fail_free;
	/* The kind: the generation's (it outlives dropped logs), and the
	 * log's (a version 1 log was fed without origins). */
	enum origins_kind gk = origins_kind(w->cur.origins),
			  lk = changelog_kind(w->log);
	if (gk != ORIGINS_NONE && lk != ORIGINS_NONE && gk != lk) {
		rc = errmsg_fail(err, err_cap, -EPROTO, "%s: its generation %" PRIu64
			  " took changes %s origin, its change log %s (the two "
			  "never mix)", w->dir, gen,
			  gk == ORIGINS_ORIGIN ? "with" : "without",
			  lk == ORIGINS_ORIGIN ? "with" : "without");
		goto fail_free;
	}
	if (gk == ORIGINS_NONE)
		origins_set_kind(w->cur.origins, lk);

	struct index_info info;
	index_info(w->cur.ix, &info);
	w->keep.gen = gen;
	w->keep.watermark = info.watermark;
	w->keep.log_floor = info.watermark;
	w->created_at = info.created_at;
	w->data_as_of = info.data_as_of;
	if (info.watermark > w->applied)
		w->applied = info.watermark;
	/* A table grown during the replay is written at once: the next
	 * restart would otherwise grow it again. */
	w->need_checkpoint = grown;
	w->since_checkpoint = replayed;
	writer_set_meta(w);
	if (replayed)
		say("generation %" PRIu64 ": replayed %" PRIu64 " changes from "
		    "the log in %.2f s (through sequence %" PRIu64 ")", gen,
		    replayed, clock_mono_s() - t0, w->applied);
	live_publish(w->cur.ix);
	w->cur_served = true;
	atomic_store_explicit(&w->has_index, true, memory_order_release);
	w->stream_done = w->stream_start = w->applied;
	*out = w;
	return 0;

fail_free:
	w->cur_served = false;
	writer_close(w);
	return rc;
}

int writer_start(struct writer *w, char *err, size_t err_cap)
{
	int rc = pthread_create(&w->thread, NULL, writer_main, w);
	if (rc != 0)
		return errmsg_fail(err, err_cap, -rc, "writer thread: %s",
			    strerror(rc));
	w->started = true;
	return 0;
}

void writer_stop(struct writer *w)
{
	if (w == NULL || !w->started)
		return;
	/* Release: pairs with the acquire load in writer_main. */
	atomic_store_explicit(&w->stop, true, memory_order_release);
	efd_signal(w->efd);
	pthread_join(w->thread, NULL);
	w->started = false;
}

void writer_close(struct writer *w)
{
	if (w == NULL)
		return;
	writer_stop(w);
	/* Requests never processed, replies no worker took, and Applies
	 * still waiting for their message. */
	req_free_all(req_take_all(&w->inbox));
	req_free_all(w->waiters);
	for (unsigned i = 0; w->queues != NULL && i < w->opt.n_queues; i++) {
		req_free_all(req_take_all(&w->queues[i].done));
		if (w->queues[i].efd >= 0)
			close(w->queues[i].efd);
	}
	if (w->cur_served) {
		generation_work_remove(w->cur.ix);
		live_publish(NULL); /* destroys it after the grace period */
		w->cur.ix = NULL;
	}
	generation_fini(&w->cur);
	if (w->take != NULL) { /* a snapshot handed over too late */
		generation_fini(w->take);
		free(w->take);
	}
	changelog_close(w->log);
	outbox_close(w->outbox);
	history_close(w->hist);
	if (w->efd >= 0)
		close(w->efd);
	free(w->queues);
	free(w->chg);
	free(w->ptrs);
	free(w->batches);
	free(w->moves);
	free(w->own_metrics);
	pthread_mutex_destroy(&w->mu);
	pthread_mutex_destroy(&w->origins_mu);
	pthread_mutex_destroy(&w->chain_mu);
	pthread_cond_destroy(&w->take_cv);
	pthread_cond_destroy(&w->view_cv);
	pthread_mutex_destroy(&w->stream_mu);
	pthread_cond_destroy(&w->stream_cv);
	free(w->outcomes);
	free(w);
}

/* ---- workers' side ---- */

static int submit_error(struct writer_reply *now, uint32_t code,
			const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int submit_error(struct writer_reply *now, uint32_t code,
			const char *fmt, ...)
{
	va_list ap;
	now->code = code;
	va_start(ap, fmt);
	vsnprintf(now->message, sizeof(now->message), fmt, ap);
	va_end(ap);
	return (int)code;
}

static int submit_checks(Consent__V1__ApplyRequest *a,
			 struct writer_reply *now);

/* Why a request is refused before it is queued (the code, *now holding
 * the reply), or 0. */
static int submit_refusal(const struct writer *w,
			  const struct principal *principal,
			  Consent__V1__ApplyRequest *a,
			  struct writer_reply *now)
{
	/* Acquire: pairs with the release in writer_set_fault. */
	if (atomic_load_explicit(&w->failed, memory_order_acquire))
		return submit_error(now, 503, "changes refused: %s", w->fault);
	/* Acquire: pairs with the release stores of has_index. */
	if (!atomic_load_explicit(&w->has_index, memory_order_acquire))
		return submit_error(now, 503, "no generation is loaded yet (a "
				    "snapshot is being built)");
	/* The principal's brands bound what it may write, as they bound what
	 * it may read: one change outside them refuses the whole request,
	 * before anything else is looked at, so the reply is the same whether
	 * the brand exists or not and tells nothing about its records. */
	for (size_t i = 0; i < a->n_changes; i++)
		if (!principal_may_check(principal, a->changes[i]->brand_code))
			return submit_error(now, 403, "changes[%zu]: brand_code %"
					    PRIu32 " is not among this "
					    "principal's brands (nothing of "
					    "this request was applied)", i,
					    a->changes[i]->brand_code);
	if (has_origin(a) && writer_origin_local(a->origin, strlen(a->origin)) &&
	    !principal_may_reject(principal))
		return submit_error(now, 403, "origin \"local\" is for local "
				    "rejections: this principal may not "
				    "reject");
	if (w->publish != NULL && a->n_changes > 0 && !has_origin(a))
		return submit_error(now, 409, "replicated mode takes changes "
				    "with an origin and cursors only (DESIGN "
				    "§8, §9; nothing of this batch was "
				    "applied)");
	return submit_checks(a, now);
}

/* The origin, cursors and changes of a request (a local Apply's or a
 * stream message's): the code with *now holding the reply, or 0. */
static int submit_checks(Consent__V1__ApplyRequest *a,
			 struct writer_reply *now)
{
	const char *why_text;
	if (has_origin(a)) {
		/* Bounded, so a cursor fits the 409 that names it and a
		 * commit record stays small. */
		if (origins_check_text(a->origin, strlen(a->origin),
				       ORIGINS_NAME_MAX, 0, &why_text) < 0)
			return submit_error(now, 400, "origin: %s (1 to %d "
					    "bytes, no control bytes)",
					    why_text, ORIGINS_NAME_MAX);
		/* Origin "local" is unconditional: its cursors are not read
		 * (the writer sets the cursor to the batch's position), and
		 * a stream message of it carries none (§9). */
		bool local = writer_origin_local(a->origin, strlen(a->origin));
		if (!local &&
		    origins_check_text(a->after_cursor, strlen(a->after_cursor),
				       ORIGINS_CURSOR_MAX, 1, &why_text) < 0)
			return submit_error(now, 400, "after_cursor: %s (up to "
					    "%d bytes, no control bytes)",
					    why_text, ORIGINS_CURSOR_MAX);
		if (!local &&
		    origins_check_text(a->cursor, strlen(a->cursor),
				       ORIGINS_CURSOR_MAX, 0, &why_text) < 0)
			return submit_error(now, 400, "cursor: %s (1 to %d "
					    "bytes, no control bytes)",
					    why_text, ORIGINS_CURSOR_MAX);
		/* The changes' own sequences are ignored (§8): the writer
		 * gives them log positions. Placeholders that increase and
		 * take the most bytes a position can let change_validate
		 * check the rest, size included. */
		for (size_t i = 0; i < a->n_changes; i++)
			a->changes[i]->sequence = UINT64_MAX - a->n_changes + 1 + i;
		if (local) {
			/* A local batch skips the cursor rule and feeds the
			 * outbox: only as RETs (§11); who may send one is
			 * submit_refusal's. */
			if (a->n_changes == 0)
				return submit_error(now, 400, "origin \"local\": "
						    "a batch without changes");
			for (size_t i = 0; i < a->n_changes; i++)
				if (a->changes[i]->status != CONSENT__V1__STATUS__RET)
					return submit_error(now, 400, "changes[%zu]: "
							    "status: origin "
							    "\"local\" takes "
							    "RET only", i);
		}
	} else if ((a->after_cursor && a->after_cursor[0]) ||
		   (a->cursor && a->cursor[0])) {
		return submit_error(now, 400, "%s: set without origin",
				    a->cursor && a->cursor[0] ? "cursor" :
				    "after_cursor");
	}
	uint64_t prev = 0;
	for (size_t i = 0; i < a->n_changes; i++) {
		const Consent__V1__Consent *c = a->changes[i];
		const char *field;
		char why[160];

		if (change_validate(c, prev, NULL, &field, why,
				    sizeof(why)) < 0) {
			if (has_origin(a))
				return submit_error(now, 400, "changes[%zu]: "
						    "%s: %s", i, field, why);
			if (strcmp(field, "sequence") == 0)
				return submit_error(now, 400, "changes[%zu]: "
						    "sequence: %s", i, why);
			return submit_error(now, 400, "changes[%zu] (sequence %"
					    PRIu64 "): %s: %s", i, c->sequence,
					    field, why);
		}
		prev = c->sequence;
	}
	return 0;
}

int writer_submit(struct writer *w, unsigned queue, uint64_t tag, uint64_t id,
		  const struct principal *principal,
		  Consent__V1__ApplyRequest *a, struct writer_reply *now)
{
	memset(now, 0, sizeof(*now));
	now->tag = tag;
	now->id = id;
	struct writer_req *req = NULL;
	if (submit_refusal(w, principal, a, now) != 0 ||
	    (req = calloc(1, sizeof(*req))) == NULL) {
		consent__v1__apply_request__free_unpacked(a, NULL);
		return now->code != 0 ? 0 : -ENOMEM;
	}
	req->queue = queue < w->opt.n_queues ? queue : 0;
	req->apply = a;
	req->reply.tag = tag;
	req->reply.id = id;
	if (w->publish != NULL) {
		/* Replicated (§9): the stream is the log. The checks above
		 * (the principal's brands first) held on this replica; the
		 * message's outcome comes back through writer_req_await. */
		int rc = w->publish(w->publish_ctx, req);
		if (rc < 0) {
			*now = req->reply;
			submit_error(now, 503, "the change stream cannot take "
				     "it now: %s", strerror(-rc));
			consent__v1__apply_request__free_unpacked(a, NULL);
			free(req);
			return 0;
		}
		return 1;
	}
	req_push(&w->inbox, req);
	efd_signal(w->efd);
	return 1;
}

/* ---- replicated mode ---- */

void writer_set_publisher(struct writer *w, writer_publish_fn fn, void *ctx)
{
	w->publish = fn;
	w->publish_ctx = ctx;
	if (w->outcomes == NULL)
		w->outcomes = calloc(WRITER_OUTCOMES, sizeof(*w->outcomes));
}

const Consent__V1__ApplyRequest *writer_req_apply(const struct writer_req *r)
{
	return r->apply;
}

void writer_req_fail(struct writer *w, struct writer_req *req, uint32_t code,
		     const char *msg)
{
	consent__v1__apply_request__free_unpacked(req->apply, NULL);
	req->apply = NULL;
	reply_error(req, code, msg);
	unsigned q = req->queue; /* req is the worker's once pushed */
	req_push(&w->queues[q].done, req);
	efd_signal(w->queues[q].efd);
}

void writer_req_await(struct writer *w, struct writer_req *req, uint64_t seq,
		      uint64_t deadline_ms)
{
	uint32_t n = (uint32_t)req->apply->n_changes;
	consent__v1__apply_request__free_unpacked(req->apply, NULL);
	req->apply = NULL;
	req->stream_seq = seq;
	req->deadline_ms = deadline_ms;
	req->reply.skipped = n; /* what a duplicate of an old one says */
	pthread_mutex_lock(&w->stream_mu);
	if (seq > w->stream_done) {
		req->next = w->waiters;
		w->waiters = req;
		pthread_mutex_unlock(&w->stream_mu);
		return;
	}
	const struct writer_outcome *o =
		w->outcomes != NULL ? &w->outcomes[seq % WRITER_OUTCOMES] : NULL;
	unsigned q = req->queue;
	waiter_answer(w, req, o != NULL && o->seq == seq ? o : NULL, n);
	pthread_mutex_unlock(&w->stream_mu);
	efd_signal(w->queues[q].efd);
}

void writer_expire(struct writer *w, uint64_t now_ms)
{
	pthread_mutex_lock(&w->stream_mu);
	struct writer_req **pp = &w->waiters;
	while (*pp != NULL) {
		struct writer_req *r = *pp;
		if (r->deadline_ms > now_ms) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		reply_errorf(r, 503, "published as stream sequence %" PRIu64
			     " but not applied on this replica in time (it "
			     "is behind the stream or cut off from it; the "
			     "change stays in the stream)", r->stream_seq);
		r->reply.applied_sequence = w->stream_done;
		unsigned q = r->queue; /* r is the worker's once pushed */
		req_push(&w->queues[q].done, r);
		efd_signal(w->queues[q].efd);
	}
	pthread_mutex_unlock(&w->stream_mu);
}

int writer_submit_stream(struct writer *w, Consent__V1__ApplyRequest *a,
			 uint64_t seq, int64_t published_s, const char *bad)
{
	struct writer_req *req = calloc(1, sizeof(*req));
	if (req == NULL) {
		if (a != NULL)
			consent__v1__apply_request__free_unpacked(a, NULL);
		return -ENOMEM;
	}
	req->queue = WRITER_QUEUE_INTERNAL;
	req->epoch = atomic_load_explicit(&w->stream_epoch,
					  memory_order_relaxed);
	req->stream_seq = seq;
	req->stream_time_s = published_s;
	if (a == NULL) {
		a = malloc(sizeof(*a));
		if (a == NULL) {
			free(req);
			return -ENOMEM;
		}
		consent__v1__apply_request__init(a);
		reply_errorf(req, 400, "stream sequence %" PRIu64 ": %s", seq,
			     bad ? bad : "unreadable");
	} else {
		/* The same checks as a local Apply's, but the principal's:
		 * the stream is trusted, and every replica judges alike. */
		struct writer_reply now = { 0 };
		if (submit_checks(a, &now) != 0)
			reply_errorf(req, now.code, "%s", now.message);
	}
	req->apply = a;
	req_push(&w->inbox, req);
	efd_signal(w->efd);
	return 0;
}

int writer_stream_wait(struct writer *w, uint64_t seq, int timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	int rc = 0;
	pthread_mutex_lock(&w->stream_mu);
	for (;;) {
		if (w->stream_refused) {
			/* Told once: the fetch thread gives them again, in
			 * a new run (the writer refuses what is left of
			 * this one). */
			w->stream_refused = false;
			atomic_fetch_add_explicit(&w->stream_epoch, 1,
						  memory_order_relaxed);
			rc = -EIO;
			break;
		}
		if (w->stream_done >= seq) {
			rc = 1;
			break;
		}
		if (pthread_cond_timedwait(&w->stream_cv, &w->stream_mu,
					   &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&w->stream_mu);
	return rc;
}

bool writer_has_index(const struct writer *w)
{
	/* Acquire: pairs with the release stores of has_index. */
	return atomic_load_explicit(&w->has_index, memory_order_acquire);
}

uint64_t writer_stream_done(struct writer *w)
{
	pthread_mutex_lock(&w->stream_mu);
	uint64_t v = w->stream_done;
	pthread_mutex_unlock(&w->stream_mu);
	return v;
}

int writer_queue_fd(const struct writer *w, unsigned queue)
{
	return queue < w->opt.n_queues ? w->queues[queue].efd : -1;
}

void writer_take(struct writer *w, unsigned queue,
		 void (*fn)(const struct writer_reply *r, void *arg), void *arg)
{
	if (queue >= w->opt.n_queues)
		return;
	struct writer_req *fifo = req_take_all(&w->queues[queue].done);
	while (fifo != NULL) {
		struct writer_req *next = fifo->next;
		fn(&fifo->reply, arg);
		free(fifo);
		fifo = next;
	}
}

int writer_take_snapshot(struct writer *w, struct generation *built,
			 char *err, size_t err_cap)
{
	pthread_mutex_lock(&w->mu);
	w->take = built;
	w->take_done = false;
	pthread_mutex_unlock(&w->mu);
	efd_signal(w->efd);
	pthread_mutex_lock(&w->mu);
	while (!w->take_done)
		pthread_cond_wait(&w->take_cv, &w->mu);
	int rc = w->take_rc;
	errmsg_fail(err, err_cap, rc, "%s", w->take_err);
	pthread_mutex_unlock(&w->mu);
	return rc;
}

int writer_view(struct writer *w, struct writer_view *out, char *err,
		size_t err_cap)
{
	struct writer_view_req r = { .out = out };

	pthread_mutex_lock(&w->mu);
	if (w->stopped) {
		pthread_mutex_unlock(&w->mu);
		return errmsg_fail(err, err_cap, -ESHUTDOWN, "the server is "
				   "stopping");
	}
	r.next = w->views;
	w->views = &r;
	pthread_mutex_unlock(&w->mu);
	efd_signal(w->efd);
	pthread_mutex_lock(&w->mu);
	while (!r.done)
		pthread_cond_wait(&w->view_cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
	if (r.rc < 0)
		errmsg_fail(err, err_cap, r.rc, "%s", r.err);
	return r.rc;
}

void writer_view_release(struct writer_view *v)
{
	live_release(v->ref);
	origins_destroy(v->origins);
	if (v->emails_fd >= 0)
		close(v->emails_fd);
	if (v->extra != NULL)
		free(v->extra->p);
	free(v->extra);
	memset(v, 0, sizeof(*v));
	v->emails_fd = -1;
}

void writer_rebuild(struct writer *w)
{
	pthread_mutex_lock(&w->mu);
	w->rebuild_pending = true;
	pthread_mutex_unlock(&w->mu);
	efd_signal(w->efd);
}

int writer_origin_cursor(struct writer *w, const char *origin,
			 size_t origin_len, char *buf, size_t cap)
{
	size_t len = 0;
	int found = 0;
	if (cap == 0)
		return -EINVAL;
	pthread_mutex_lock(&w->origins_mu);
	const char *c = w->cur.origins != NULL ?
				origins_get(w->cur.origins, origin, origin_len,
					    &len) : NULL;
	if (c != NULL) {
		found = 1;
		if (len >= cap)
			len = cap - 1;
		memcpy(buf, c, len);
	}
	pthread_mutex_unlock(&w->origins_mu);
	buf[len] = '\0';
	return found;
}

struct history *writer_history(struct writer *w)
{
	return w != NULL ? w->hist : NULL;
}

bool writer_chain(struct writer *w, uint64_t *sequence, uint8_t head[32])
{
	if (w == NULL || w->hist == NULL)
		return false;
	pthread_mutex_lock(&w->chain_mu);
	bool any = w->chain_any;
	*sequence = w->chain_seq;
	memcpy(head, w->chain, HISTORY_HASH_BYTES);
	pthread_mutex_unlock(&w->chain_mu);
	return any;
}

struct outbox *writer_outbox(struct writer *w)
{
	return w != NULL ? w->outbox : NULL;
}

bool writer_fault(const struct writer *w, char *msg, size_t cap)
{
	if (w == NULL ||
	    !atomic_load_explicit(&w->failed, memory_order_acquire))
		return false;
	if (msg != NULL && cap > 0)
		snprintf(msg, cap, "%s", w->fault);
	return true;
}
