/*
 * replica: replicated mode on NATS JetStream (server/replica.h).
 *
 * Order. The fetch thread is the only one that hands messages to the
 * writer, in stream sequence order, each once per run: it remembers the
 * next sequence it expects (the writer's processed watermark + 1 at
 * start). A message below it was handed over already (a redelivery) and
 * is dropped; one above it means the consumer skipped something (it
 * delivered past messages a killed process fetched and never acked, or it
 * was made elsewhere): the consumer is then deleted and made again to
 * start exactly at the expected sequence ("repositioned"). The consumer
 * is this replica's own (one durable per replica: a shared one would
 * spread the stream across replicas), so deleting it touches no one else.
 * Only a stream that no longer holds the expected sequence (purged,
 * limits) is followed across the gap, loudly: such a replica needs a new
 * snapshot.
 *
 * Acks. AckAll: acking a message acks everything before it, so one ack
 * per fetched batch, sent once writer_stream_wait says the writer
 * processed the whole batch, and therefore made it durable (its group
 * commit's fdatasync returned) or found it below its watermark. A crash
 * before the ack redelivers; the writer drops what it holds already.
 *
 * Publishing. Applies are published in the order they came, without
 * waiting for each PubAck (js_PublishMsgAsync, up to REPLICA_INFLIGHT in
 * flight): one connection, so the stream takes them in that order, and
 * each is judged by every replica's cursor rule as before. libnats calls
 * replica_on_puback once per message, with its PubAck or its error (a
 * timeout after REPLICA_PUBLISH_TIMEOUT_MS included), on its own thread;
 * the Apply then waits for its writer (writer_req_await) or gets 503.
 * One Apply at a time with a synchronous publish gave 18k changes/s
 * against 263k locally (bench/results, 2026-12-08 fleet), the round trip
 * to the stream's leader and its quorum being all of it.
 *
 * Failure. libnats reconnects across node loss by itself (every URL,
 * without end); while nothing answers, Applies get 503 after
 * REPLICA_PUBLISH_TIMEOUT_MS (an Apply queued longer than that is refused
 * without being tried), checks go on with data_as_of frozen, and
 * replica_ready turns false after --max-lag. When the writer refuses
 * messages unprocessed (no generation yet, or its log failed), the run
 * starts again from its watermark.
 */
#include "server/replica.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "core/clock.h"
#include "core/errmsg.h"
#include "core/natsmsg.h"
#include "server/writer.h"

#define REPLICA_FETCH_BATCH 256
#define REPLICA_FETCH_WAIT_MS 500
#define REPLICA_FETCH_MORE_MS 5 /* a left-over message, at once */
#define REPLICA_FETCH_PULL_MS 1 /* the no-wait pull's bound */
#define REPLICA_INFO_EVERY_MS 500
#define REPLICA_QUERY_WAIT_MS 2000
#define REPLICA_QUEUE_MAX 4096 /* Applies waiting to be published */
#define REPLICA_INFLIGHT 256   /* published, their PubAck awaited */
#define REPLICA_ACK_WAIT_S 30
#define REPLICA_DUPLICATE_WINDOW_S 120 /* §9: at least 2 minutes */

struct replica_pub {
	struct writer_req *req;
	uint64_t queued_ms;
};

struct replica {
	struct replica_options opt;
	char urls[1024];
	char stream[128];
	char consumer[128];
	struct writer *w;
	natsConnection *nc;
	jsCtx *js;
	natsSubscription *sub; /* the fetch thread's */
	bool stream_ok;        /* the fetch thread's: stream and consumer set up */
	pthread_t fetch_thread, pub_thread;
	bool fetch_started, pub_started;
	atomic_bool stop;

	/* Applies to publish: a ring under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct replica_pub q[REPLICA_QUEUE_MAX];
	size_t q_head, q_len;
	char id_prefix[200]; /* unique Nats-Msg-Id prefix of this process */
	uint64_t id_counter; /* the publish thread's */

	/* Published, PubAck awaited: the publish thread adds, libnats's
	 * PubAck handler (replica_on_puback, its own thread) takes; under
	 * fly_mu. A slot is free when its msg is NULL. */
	pthread_mutex_t fly_mu;
	pthread_cond_t fly_cv; /* a slot was freed */
	struct replica_fly {
		natsMsg *msg;
		struct writer_req *req;
		uint64_t t0_us;
	} fly[REPLICA_INFLIGHT];
	unsigned n_fly;

	/* Figures (relaxed atomics: each read on its own). */
	_Atomic uint64_t stream_last_seq, stream_last_ns, applied_ns;
	_Atomic uint64_t consumer_pending, consumer_ack_floor;
	/* CLOCK_MONOTONIC ms of the stream's last answer, and of the first
	 * failure since (0: none): unreachable is judged when read, so a
	 * fetch thread stuck in a call still shows as cut off. */
	_Atomic uint64_t last_ok_ms, unreachable_since_ms;
	_Atomic uint64_t fetched, repositions, published, publish_failures;
	_Atomic uint64_t puback[REPLICA_PUBACK_BUCKETS];
	_Atomic uint64_t puback_sum_us;
	_Atomic uint64_t visible[REPLICA_PUBACK_BUCKETS];
	_Atomic uint64_t visible_sum_us;
	/* The fetch thread's: publish times (ns) of the batch handed over. */
	int64_t handed_ns[REPLICA_FETCH_BATCH];
	int n_handed;
};

/* One latency into a histogram of REPLICA_PUBACK_BOUNDS_US buckets. */
static void replica_hist_add(_Atomic uint64_t *buckets, _Atomic uint64_t *sum,
			     uint64_t us)
{
	static const uint64_t bounds[] = REPLICA_PUBACK_BOUNDS_US;
	int b = 0;
	while (b < REPLICA_PUBACK_BUCKETS - 1 && us > bounds[b])
		b++;
	atomic_fetch_add_explicit(&buckets[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(sum, us, memory_order_relaxed);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "consentd: nats: %s\n", line);
}

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
#define ADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

static bool replica_stopping(struct replica *r)
{
	/* Acquire: pairs with the release store in replica_stop. */
	return atomic_load_explicit(&r->stop, memory_order_acquire);
}

static const char *nats_why(natsStatus s, jsErrCode jerr, char *buf,
			    size_t cap)
{
	const char *last = nats_GetLastError(NULL);
	if (jerr != 0)
		snprintf(buf, cap, "%s (JetStream error %d)",
			 last && last[0] ? last : natsStatus_GetText(s),
			 (int)jerr);
	else
		snprintf(buf, cap, "%s", last && last[0] ? last :
			 natsStatus_GetText(s));
	return buf;
}

static void replica_reachable(struct replica *r, bool ok)
{
	if (ok) {
		STORE(r->last_ok_ms, clock_mono_ms());
		STORE(r->unreachable_since_ms, 0);
	} else if (LOAD(r->unreachable_since_ms) == 0) {
		STORE(r->unreachable_since_ms, clock_mono_ms());
	}
}

/* How long the stream has not answered: since the first failure after
 * its last answer, or, when nothing failed but nothing answered either
 * (a call that hangs), since the answer expected after the last one. */
static uint64_t replica_unreachable_ms(struct replica *r)
{
	uint64_t now = clock_mono_ms(), since = LOAD(r->unreachable_since_ms);
	uint64_t ok = LOAD(r->last_ok_ms);
	uint64_t due = ok + REPLICA_INFO_EVERY_MS + REPLICA_QUERY_WAIT_MS;
	if (since == 0 && ok != 0 && now > due)
		since = due;
	return since != 0 && now > since ? now - since : 0;
}

/* ---- the stream and the consumer ---- */

/* Binds to the stream, or creates it: subjects consent.changes.>, file
 * storage, a duplicate window of 2 minutes, and min(3, cluster size)
 * replicas: 3 on a cluster, 1 on a server whose JetStream is not
 * clustered. A cluster that has too few peers up for 3 is waited for
 * (asked again) rather than given a stream of fewer replicas for good. */
static int replica_ensure_stream(struct replica *r)
{
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	jsOptions jo;
	char why[300];

	jsOptions_Init(&jo);
	jo.Wait = REPLICA_QUERY_WAIT_MS;
	natsStatus s = js_GetStreamInfo(&si, r->js, r->stream, &jo, &jerr);
	if (s == NATS_OK) {
		say("stream %s bound (%" PRIu64 " messages, last sequence %"
		    PRIu64 ", %" PRId64 " replicas)", r->stream,
		    si->State.Msgs, si->State.LastSeq,
		    si->Config ? si->Config->Replicas : 0);
		jsStreamInfo_Destroy(si);
		return 0;
	}
	if (s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr) {
		say("stream %s: %s", r->stream, nats_why(s, jerr, why,
							 sizeof(why)));
		return -EAGAIN;
	}
	const char *subjects[] = { NATSMSG_SUBJECTS };
	for (int reps = 3; reps >= 1; reps -= 2) {
		jsStreamConfig sc;
		jsStreamConfig_Init(&sc);
		sc.Name = r->stream;
		sc.Subjects = subjects;
		sc.SubjectsLen = 1;
		sc.Storage = js_FileStorage;
		sc.Replicas = reps;
		sc.Duplicates = (int64_t)REPLICA_DUPLICATE_WINDOW_S * 1000000000;
		jerr = 0;
		s = js_AddStream(&si, r->js, &sc, &jo, &jerr);
		if (s == NATS_OK) {
			say("stream %s created (subjects %s, file storage, "
			    "%d replicas, duplicate window %d s)", r->stream,
			    NATSMSG_SUBJECTS, reps, REPLICA_DUPLICATE_WINDOW_S);
			jsStreamInfo_Destroy(si);
			return 0;
		}
		if (jerr == JSStreamNameExistErr) /* made by a peer meanwhile */
			return replica_ensure_stream(r);
		if (jerr != JSStreamReplicasNotSupportedErr &&
		    jerr != JSClusterNotActiveErr)
			break; /* not "unclustered": wait for the peers */
	}
	say("stream %s: cannot create it yet: %s", r->stream,
	    nats_why(s, jerr, why, sizeof(why)));
	return -EAGAIN;
}

/* Creates the durable consumer starting at start (its config: pull,
 * AckAll, the whole stream). */
static int replica_create_consumer(struct replica *r, uint64_t start)
{
	jsConsumerConfig cc;
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;
	jsOptions jo;
	char why[300];

	jsOptions_Init(&jo);
	jo.Wait = REPLICA_QUERY_WAIT_MS;
	jsConsumerConfig_Init(&cc);
	cc.Durable = r->consumer;
	cc.DeliverPolicy = js_DeliverByStartSequence;
	cc.OptStartSeq = start;
	cc.AckPolicy = js_AckAll;
	cc.AckWait = (int64_t)REPLICA_ACK_WAIT_S * 1000000000;
	cc.MaxAckPending = 20000;
	cc.FilterSubject = NATSMSG_SUBJECTS;
	natsStatus s = js_AddConsumer(&ci, r->js, r->stream, &cc, &jo, &jerr);
	if (s != NATS_OK) {
		say("consumer %s: cannot create it: %s", r->consumer,
		    nats_why(s, jerr, why, sizeof(why)));
		return -EAGAIN;
	}
	jsConsumerInfo_Destroy(ci);
	return 0;
}

/* The fetch thread: the stream, the consumer (bound, or created at
 * start), and the pull subscription on it. */
static int replica_setup(struct replica *r, uint64_t start)
{
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;
	jsOptions jo;
	jsSubOptions so;
	char why[300];

	if (replica_ensure_stream(r) < 0)
		return -EAGAIN;
	jsOptions_Init(&jo);
	jo.Wait = REPLICA_QUERY_WAIT_MS;
	natsStatus s = js_GetConsumerInfo(&ci, r->js, r->stream, r->consumer,
					  &jo, &jerr);
	if (s == NATS_OK) {
		say("consumer %s bound (ack floor %" PRIu64 ", %" PRIu64
		    " pending); applying from sequence %" PRIu64, r->consumer,
		    ci->AckFloor.Stream, ci->NumPending, start);
		jsConsumerInfo_Destroy(ci);
	} else if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
		if (replica_create_consumer(r, start) < 0)
			return -EAGAIN;
		say("consumer %s created, starting at sequence %" PRIu64,
		    r->consumer, start);
	} else {
		say("consumer %s: %s", r->consumer,
		    nats_why(s, jerr, why, sizeof(why)));
		return -EAGAIN;
	}
	jsSubOptions_Init(&so);
	so.Stream = r->stream;
	so.Consumer = r->consumer;
	jerr = 0;
	/* Bound by name: destroying this subscription never deletes the
	 * consumer (it did not create it). */
	s = js_PullSubscribe(&r->sub, r->js, NATSMSG_SUBJECTS, r->consumer,
			     &jo, &so, &jerr);
	if (s != NATS_OK) {
		say("consumer %s: subscribing: %s", r->consumer,
		    nats_why(s, jerr, why, sizeof(why)));
		r->sub = NULL;
		return -EAGAIN;
	}
	r->stream_ok = true;
	return 0;
}

static void replica_unsubscribe(struct replica *r)
{
	/* Destroy, never Unsubscribe or Drain: those would delete a
	 * consumer the subscription created (tech.md §6.1). */
	natsSubscription_Destroy(r->sub);
	r->sub = NULL;
	r->stream_ok = false;
}

/* Deletes this replica's consumer and makes it again at start. */
static void replica_reposition(struct replica *r, uint64_t start,
			       const char *why)
{
	jsErrCode jerr = 0;
	jsOptions jo;

	say("consumer %s: %s: starting it again at sequence %" PRIu64,
	    r->consumer, why, start);
	replica_unsubscribe(r);
	jsOptions_Init(&jo);
	jo.Wait = REPLICA_QUERY_WAIT_MS;
	js_DeleteConsumer(r->js, r->stream, r->consumer, &jo, &jerr);
	ADD(r->repositions, 1);
	if (replica_create_consumer(r, start) == 0)
		replica_setup(r, start);
}

/* The figures of /metrics: the stream's last sequence and time, the
 * consumer's pending count and ack floor. */
static void replica_query(struct replica *r)
{
	jsStreamInfo *si = NULL;
	jsConsumerInfo *ci = NULL;
	jsErrCode jerr = 0;
	jsOptions jo;

	jsOptions_Init(&jo);
	jo.Wait = REPLICA_QUERY_WAIT_MS;
	/* The account's JetStream info comes from the meta leader: without
	 * a quorum there is none (the stream's leader may still answer its
	 * info a while, from a state that cannot move). */
	jsAccountInfo *ai = NULL;
	natsStatus s = js_GetAccountInfo(&ai, r->js, &jo, &jerr);
	jsAccountInfo_Destroy(ai);
	if (s == NATS_OK)
		s = js_GetStreamInfo(&si, r->js, r->stream, &jo, &jerr);
	if (s == NATS_OK) {
		STORE(r->stream_last_seq, si->State.LastSeq);
		STORE(r->stream_last_ns, (uint64_t)si->State.LastTime);
		jsStreamInfo_Destroy(si);
	}
	replica_reachable(r, s == NATS_OK);
	if (s != NATS_OK)
		return;
	jerr = 0;
	if (js_GetConsumerInfo(&ci, r->js, r->stream, r->consumer, &jo,
			       &jerr) == NATS_OK) {
		STORE(r->consumer_pending, ci->NumPending);
		STORE(r->consumer_ack_floor, ci->AckFloor.Stream);
		jsConsumerInfo_Destroy(ci);
	}
}

/* ---- the fetch thread ---- */

static const char *hdr(natsMsg *m, const char *key)
{
	const char *v = NULL;
	if (natsMsgHeader_Get(m, key, &v) != NATS_OK)
		return NULL;
	return v;
}

/* Hands one batch of fetched messages to the writer in order; *next is
 * the sequence expected. Returns the last message handed over (to ack
 * once processed), NULL if none; *gap is set when a message past *next
 * came (the consumer must be repositioned). */
static natsMsg *replica_hand_over(struct replica *r, natsMsgList *list,
				  uint64_t *next, bool *gap)
{
	natsMsg *last = NULL;
	for (int i = 0; i < list->Count && !*gap; i++) {
		natsMsg *m = list->Msgs[i];
		jsMsgMetaData *md = NULL;
		if (natsMsg_GetMetaData(&md, m) != NATS_OK)
			continue;
		uint64_t seq = md->Sequence.Stream;
		int64_t ts_ns = md->Timestamp;
		jsMsgMetaData_Destroy(md);
		if (seq < *next) {
			last = m; /* a redelivery: handed over already */
			continue;
		}
		if (seq > *next) {
			uint64_t first = 0;
			jsStreamInfo *si = NULL;
			jsErrCode jerr = 0;
			if (js_GetStreamInfo(&si, r->js, r->stream, NULL,
					     &jerr) == NATS_OK) {
				first = si->State.FirstSeq;
				jsStreamInfo_Destroy(si);
			}
			if (first <= *next) {
				*gap = true;
				break;
			}
			say("the stream no longer holds sequences %" PRIu64
			    "..%" PRIu64 " (it starts at %" PRIu64 "): this "
			    "replica misses them and needs a new snapshot",
			    *next, seq - 1, first);
		}
		char err[300] = "";
		Consent__V1__ApplyRequest *a = NULL;
		const char *subject = natsMsg_GetSubject(m);
		int rc = natsmsg_decode(subject, (const uint8_t *)
					natsMsg_GetData(m),
					(size_t)natsMsg_GetDataLength(m),
					hdr(m, NATSMSG_HDR_ORIGIN),
					hdr(m, NATSMSG_HDR_AFTER),
					hdr(m, NATSMSG_HDR_CURSOR), &a, err,
					sizeof(err));
		if (rc == -ENOMEM ||
		    writer_submit_stream(r->w, rc < 0 ? NULL : a, seq,
					 ts_ns / 1000000000, err) < 0) {
			/* Out of memory: this run stops here; the wait
			 * below sees the writer short of it. */
			*gap = true;
			break;
		}
		STORE(r->applied_ns, (uint64_t)ts_ns);
		ADD(r->fetched, 1);
		if (r->n_handed < REPLICA_FETCH_BATCH)
			r->handed_ns[r->n_handed++] = ts_ns;
		*next = seq + 1;
		last = m;
	}
	return last;
}

/* Appends list's messages to more (room for REPLICA_FETCH_BATCH - 1) and
 * frees list's array; the messages are more's now. */
static void replica_take_list(natsMsgList *more, natsMsgList *list)
{
	for (int i = 0; i < list->Count; i++) {
		if (more->Count < REPLICA_FETCH_BATCH - 1)
			more->Msgs[more->Count++] = list->Msgs[i];
		else
			natsMsg_Destroy(list->Msgs[i]);
	}
	free(list->Msgs);
	list->Msgs = NULL;
	list->Count = 0;
}

/* What else the consumer has, at once.
 *
 * libnats 3.4.1's natsSubscription_Fetch(Request) with a batch over 1 can
 * write past its array: messages an earlier pull left in the subscription
 * are taken first, the batch it asks the server for is reduced by them,
 * and its loop then runs while count != the reduced batch, so with more
 * than half the batch left over it runs past the end (ASan caught it).
 * A batch of 1 cannot overrun, and taking a left-over message costs no
 * round trip; but gathering a burst one pull at a time does (255 round
 * trips to the stream's leader per burst put publish-to-visible at 300 ms
 * p50 at 10k changes/s). So: first the left-overs, one Fetch each, until
 * the subscription holds none; then the rest in one no-wait pull of the
 * room left, which the server answers at once with what it has. Between
 * the two only a pull still open could deliver, and none is: the long
 * poll got its one message, the left-over Fetches asked for nothing (or
 * one, for a status message), a no-wait pull is over when it answers. So
 * at most a message or two can be taken first there, far under half the
 * batch, which is never asked for below REPLICA_FETCH_MIN_PULL. */
#define REPLICA_FETCH_MIN_PULL 8
static void replica_fetch_more(struct replica *r, natsMsgList *more)
{
	more->Msgs = calloc(REPLICA_FETCH_BATCH - 1, sizeof(natsMsg *));
	more->Count = 0;
	if (more->Msgs == NULL)
		return;
	int pending = 0, bytes = 0;
	while (more->Count < REPLICA_FETCH_BATCH - 1 &&
	       natsSubscription_GetPending(r->sub, &pending, &bytes) ==
		       NATS_OK && pending > 0) {
		natsMsgList one = { 0 };
		if (natsSubscription_Fetch(&one, r->sub, 1, REPLICA_FETCH_MORE_MS,
					   NULL) != NATS_OK || one.Count != 1) {
			natsMsgList_Destroy(&one);
			break;
		}
		replica_take_list(more, &one);
	}
	int room = REPLICA_FETCH_BATCH - 1 - more->Count;
	if (room < REPLICA_FETCH_MIN_PULL)
		return;
	jsFetchRequest fr;
	jsFetchRequest_Init(&fr);
	fr.Batch = room;
	fr.NoWait = true;
	/* A bound only: a no-wait pull is answered at once. Over 20 ms, so
	 * libnats asks the server to end it 10 ms before it gives up. */
	fr.Expires = (int64_t)REPLICA_FETCH_PULL_MS * 1000000;
	natsMsgList list = { 0 };
	if (natsSubscription_FetchRequest(&list, r->sub, &fr) == NATS_OK)
		replica_take_list(more, &list);
	else
		natsMsgList_Destroy(&list);
}

static void *replica_fetch_main(void *arg)
{
	struct replica *r = arg;
	uint64_t next = writer_stream_done(r->w) + 1;
	uint64_t next_query = 0;

	while (!replica_stopping(r)) {
		uint64_t now = clock_mono_ms();
		writer_expire(r->w, now);
		if (now >= next_query) {
			replica_query(r);
			next_query = clock_mono_ms() + REPLICA_INFO_EVERY_MS;
		}
		if (writer_fault(r->w, NULL, 0) || !writer_has_index(r->w)) {
			/* Refused for good (serve what is), or no generation
			 * yet (a snapshot being built): nothing to apply to. */
			sleep_ms(200);
			continue;
		}
		/* A generation taken meanwhile (a snapshot) may hold more
		 * than was handed over: start after it. */
		if (writer_stream_done(r->w) + 1 > next) {
			next = writer_stream_done(r->w) + 1;
		}
		if (!r->stream_ok && replica_setup(r, next) < 0) {
			sleep_ms(250);
			continue;
		}
		/* One message, waited for (a long poll answers the moment it
		 * comes), then what else is there without waiting: a lone
		 * change is applied at once, a burst in batches. */
		natsMsgList list = { 0 }, more = { 0 };
		jsErrCode jerr = 0;
		natsStatus s = natsSubscription_Fetch(&list, r->sub, 1,
						      REPLICA_FETCH_WAIT_MS,
						      &jerr);
		if (s == NATS_TIMEOUT)
			continue;
		if (s != NATS_OK) {
			char why[300];
			if (jerr == JSConsumerNotFoundErr ||
			    s == NATS_NOT_FOUND ||
			    s == NATS_INVALID_SUBSCRIPTION) {
				say("fetch: %s: binding again",
				    nats_why(s, jerr, why, sizeof(why)));
				replica_unsubscribe(r);
			}
			replica_reachable(r, false);
			sleep_ms(100);
			continue;
		}
		replica_fetch_more(r, &more);
		bool gap = false;
		natsMsg *last = replica_hand_over(r, &list, &next, &gap);
		if (more.Count > 0 && !gap) {
			natsMsg *l2 = replica_hand_over(r, &more, &next, &gap);
			if (l2 != NULL)
				last = l2;
		}
		/* Acked only once the writer processed everything handed
		 * over (AckAll acks the messages before it too). */
		int rc = 0;
		while (!replica_stopping(r) &&
		       (rc = writer_stream_wait(r->w, next - 1, 500)) == 0)
			writer_expire(r->w, clock_mono_ms());
		if (rc == 1) {
			/* Visible here now: publish -> visible, per message. */
			struct timespec now_ts;
			clock_gettime(CLOCK_REALTIME, &now_ts);
			int64_t now_ns = (int64_t)now_ts.tv_sec * 1000000000 +
					 now_ts.tv_nsec;
			for (int i = 0; i < r->n_handed; i++)
				replica_hist_add(r->visible, &r->visible_sum_us,
						 now_ns > r->handed_ns[i] ?
						 (uint64_t)(now_ns -
							    r->handed_ns[i]) / 1000 :
						 0);
		}
		r->n_handed = 0;
		if (rc == 1 && last != NULL)
			natsMsg_Ack(last, NULL);
		natsMsgList_Destroy(&list);
		natsMsgList_Destroy(&more);
		if (rc < 0) {
			/* Refused unprocessed: again from the first one the
			 * writer has not processed. */
			next = writer_stream_done(r->w) + 1;
			sleep_ms(200);
			replica_reposition(r, next, "the writer did not take "
					   "every message");
		} else if (gap) {
			replica_reposition(r, next, "it delivered past the "
					   "next sequence expected");
		}
	}
	return NULL;
}

/* ---- the publish thread ---- */

/* Records msg → req in a free slot, waiting for one while REPLICA_INFLIGHT
 * are in flight; false when the server stops first. */
static bool replica_fly_add(struct replica *r, natsMsg *msg,
			    struct writer_req *req)
{
	pthread_mutex_lock(&r->fly_mu);
	while (r->n_fly == REPLICA_INFLIGHT && !replica_stopping(r))
		pthread_cond_wait(&r->fly_cv, &r->fly_mu);
	bool ok = r->n_fly < REPLICA_INFLIGHT;
	for (unsigned i = 0; ok && i < REPLICA_INFLIGHT; i++) {
		if (r->fly[i].msg == NULL) {
			r->fly[i] = (struct replica_fly){ msg, req, mono_us() };
			r->n_fly++;
			break;
		}
	}
	pthread_mutex_unlock(&r->fly_mu);
	return ok;
}

/* Takes msg's slot (the publish thread, when the publish itself failed, or
 * the PubAck handler): its entry in *out, false when there is none. */
static bool replica_fly_take(struct replica *r, const natsMsg *msg,
			     struct replica_fly *out)
{
	bool found = false;
	pthread_mutex_lock(&r->fly_mu);
	for (unsigned i = 0; i < REPLICA_INFLIGHT; i++) {
		if (r->fly[i].msg == msg) {
			*out = r->fly[i];
			r->fly[i].msg = NULL;
			r->n_fly--;
			found = true;
			pthread_cond_signal(&r->fly_cv);
			break;
		}
	}
	pthread_mutex_unlock(&r->fly_mu);
	return found;
}

static void replica_publish_failed(struct replica *r, struct writer_req *req,
				   natsStatus s, jsErrCode jerr)
{
	char why[300], msg[400];
	snprintf(msg, sizeof(msg), "the change stream cannot be reached: %s "
		 "(nothing was applied unless a retry with the same cursor "
		 "says so)", nats_why(s, jerr, why, sizeof(why)));
	ADD(r->publish_failures, 1);
	writer_req_fail(r->w, req, 503, msg);
}

/* jsPubAckHandler: libnats's thread, once per message published, with its
 * PubAck or why there is none. */
static void replica_on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa,
			      jsPubAckErr *pae, void *closure)
{
	struct replica *r = closure;
	struct replica_fly f;
	(void)js;
	bool ours = replica_fly_take(r, msg, &f);
	/* With an AckHandler the message is the handler's to destroy
	 * (libnats js.c, _handleAsyncReply). */
	natsMsg_Destroy(msg);
	if (!ours)
		return; /* failed at stop already */
	if (pa == NULL) {
		replica_publish_failed(r, f.req, pae ? pae->Err : NATS_ERR,
				       pae ? pae->ErrCode : 0);
		return;
	}
	replica_hist_add(r->puback, &r->puback_sum_us, mono_us() - f.t0_us);
	ADD(r->published, 1);
	writer_req_await(r->w, f.req, pa->Sequence,
			 clock_mono_ms() + REPLICA_APPLY_TIMEOUT_MS);
}

static void replica_publish_one(struct replica *r, struct writer_req *req)
{
	const Consent__V1__ApplyRequest *a = writer_req_apply(req);
	struct natsmsg_out out;
	natsMsg *m = NULL;
	char err[300], id[sizeof(out.msg_id)];

	if (natsmsg_encode(a, &out, err, sizeof(err)) < 0) {
		writer_req_fail(r->w, req, 400, err);
		return;
	}
	if (out.msg_id[0] == '\0') {
		/* A heartbeat, or origin "local" (its cursor is the position
		 * the stream gives it): an id of its own, unique to this
		 * process. */
		snprintf(id, sizeof(id), "%s:%" PRIu64, r->id_prefix,
			 ++r->id_counter);
	} else {
		snprintf(id, sizeof(id), "%s", out.msg_id);
	}
	bool local = a->origin != NULL &&
		     strcmp(a->origin, NATSMSG_ORIGIN_LOCAL) == 0;
	natsStatus s = natsMsg_Create(&m, out.subject, NULL,
				      (const char *)out.data, (int)out.len);
	if (s == NATS_OK && a->origin && a->origin[0])
		s = natsMsgHeader_Set(m, NATSMSG_HDR_ORIGIN, a->origin);
	if (s == NATS_OK && !local && a->after_cursor && a->after_cursor[0])
		s = natsMsgHeader_Set(m, NATSMSG_HDR_AFTER, a->after_cursor);
	if (s == NATS_OK && !local && a->cursor && a->cursor[0])
		s = natsMsgHeader_Set(m, NATSMSG_HDR_CURSOR, a->cursor);
	natsmsg_out_fini(&out);
	if (s != NATS_OK) {
		natsMsg_Destroy(m);
		replica_publish_failed(r, req, s, 0);
		return;
	}
	/* In the table before the publish: the PubAck may come first. */
	if (!replica_fly_add(r, m, req)) {
		natsMsg_Destroy(m);
		writer_req_fail(r->w, req, 503, "the server is stopping");
		return;
	}
	jsPubOptions po;
	jsPubOptions_Init(&po);
	po.MsgId = id;
	po.MaxWait = REPLICA_PUBLISH_TIMEOUT_MS; /* then the handler's error */
	natsMsg *sent = m;
	s = js_PublishMsgAsync(r->js, &m, &po);
	if (s != NATS_OK) {
		/* Not taken by libnats (m is still ours): no handler comes. */
		struct replica_fly f;
		if (replica_fly_take(r, sent, &f))
			replica_publish_failed(r, req, s, 0);
		natsMsg_Destroy(m);
	}
}

static void *replica_pub_main(void *arg)
{
	struct replica *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		while (r->q_len == 0 && !replica_stopping(r))
			pthread_cond_wait(&r->cv, &r->mu);
		if (r->q_len == 0)
			break;
		struct replica_pub p = r->q[r->q_head];
		r->q_head = (r->q_head + 1) % REPLICA_QUEUE_MAX;
		r->q_len--;
		pthread_mutex_unlock(&r->mu);
		if (replica_stopping(r)) {
			writer_req_fail(r->w, p.req, 503, "the server is "
					"stopping");
		} else if (clock_mono_ms() - p.queued_ms >
			   REPLICA_PUBLISH_TIMEOUT_MS) {
			/* Waited its whole bound behind others (the stream
			 * is unreachable): not tried, so the bound holds. */
			ADD(r->publish_failures, 1);
			writer_req_fail(r->w, p.req, 503, "the change stream "
					"cannot be reached (queued past the "
					"publish timeout; nothing was "
					"applied)");
		} else {
			replica_publish_one(r, p.req);
		}
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* writer_publish_fn: a worker hands an Apply over. */
static int replica_enqueue(void *ctx, struct writer_req *req)
{
	struct replica *r = ctx;
	int rc = 0;

	pthread_mutex_lock(&r->mu);
	if (replica_stopping(r)) {
		rc = -ESHUTDOWN;
	} else if (r->q_len == REPLICA_QUEUE_MAX) {
		rc = -EAGAIN;
	} else {
		r->q[(r->q_head + r->q_len) % REPLICA_QUEUE_MAX] =
			(struct replica_pub){ req, clock_mono_ms() };
		r->q_len++;
		pthread_cond_signal(&r->cv);
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* ---- main's side ---- */

/* "a,b,c" into servers[] (pointers into buf). */
static int replica_split(char *buf, const char **servers, int cap)
{
	int n = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t != NULL;
	     t = strtok_r(NULL, ",", &save)) {
		while (*t == ' ')
			t++;
		if (*t == '\0')
			continue;
		if (n == cap)
			return -E2BIG;
		servers[n++] = t;
	}
	return n;
}

int replica_start(const struct replica_options *opt, struct writer *w,
		  struct replica **out, char *err, size_t err_cap)
{
	struct replica *r = calloc(1, sizeof(*r));
	natsOptions *no = NULL;
	const char *servers[32];
	int n, rc;

	if (r == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	r->opt = *opt;
	r->w = w;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	pthread_mutex_init(&r->fly_mu, NULL);
	pthread_cond_init(&r->fly_cv, NULL);
	atomic_init(&r->stop, false);
	STORE(r->last_ok_ms, clock_mono_ms()); /* judged from the start */
	snprintf(r->stream, sizeof(r->stream), "%s", opt->stream);
	snprintf(r->consumer, sizeof(r->consumer), "%s", opt->consumer);
	if (snprintf(r->urls, sizeof(r->urls), "%s", opt->urls) >=
	    (int)sizeof(r->urls) ||
	    (n = replica_split(r->urls, servers, 32)) <= 0) {
		rc = errmsg_fail(err, err_cap, -EINVAL, "--nats: give 1 to 32 "
				 "URLs separated by commas");
		goto fail;
	}
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	/* Unique across this consumer's processes: its name, the start
	 * time and the pid. */
	snprintf(r->id_prefix, sizeof(r->id_prefix), "local:%s:%" PRId64
		 ".%09ld:%d", r->consumer, (int64_t)now.tv_sec, now.tv_nsec,
		 (int)getpid());

	natsStatus s = natsOptions_Create(&no);
	if (s == NATS_OK)
		s = natsOptions_SetServers(no, servers, n);
	if (s == NATS_OK) /* every URL, in order: the cluster's nodes */
		s = natsOptions_SetNoRandomize(no, false);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(no, -1); /* without end */
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(no, 250);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(no, 2000);
	if (s == NATS_OK) /* a cluster not up yet: connect in the back */
		s = natsOptions_SetRetryOnFailedConnect(no, true, NULL, NULL);
	if (s == NATS_OK) {
		s = natsConnection_Connect(&r->nc, no);
		if (s == NATS_NOT_YET_CONNECTED)
			s = NATS_OK;
	}
	if (s == NATS_OK) {
		jsOptions jo;
		jsOptions_Init(&jo);
		jo.Wait = REPLICA_PUBLISH_TIMEOUT_MS;
		jo.PublishAsync.MaxPending = REPLICA_INFLIGHT;
		jo.PublishAsync.AckHandler = replica_on_puback;
		jo.PublishAsync.AckHandlerClosure = r;
		/* The slots (replica_fly_add) hold the publish thread back
		 * first; this is only a bound. */
		jo.PublishAsync.StallWait = REPLICA_PUBLISH_TIMEOUT_MS;
		s = natsConnection_JetStream(&r->js, r->nc, &jo);
	}
	natsOptions_Destroy(no);
	if (s != NATS_OK) {
		char why[300];
		rc = errmsg_fail(err, err_cap, -EIO, "--nats %s: %s", opt->urls,
				 nats_why(s, 0, why, sizeof(why)));
		goto fail;
	}
	say("connecting to %s (stream %s, consumer %s)", opt->urls, r->stream,
	    r->consumer);
	writer_set_publisher(w, replica_enqueue, r);
	if ((rc = pthread_create(&r->pub_thread, NULL, replica_pub_main, r))) {
		rc = errmsg_fail(err, err_cap, -rc, "publish thread: %s",
				 strerror(rc));
		goto fail;
	}
	r->pub_started = true;
	if ((rc = pthread_create(&r->fetch_thread, NULL, replica_fetch_main,
				 r))) {
		rc = errmsg_fail(err, err_cap, -rc, "fetch thread: %s",
				 strerror(rc));
		goto fail;
	}
	r->fetch_started = true;
	*out = r;
	return 0;
fail:
	replica_stop(r);
	return rc;
}

void replica_stop(struct replica *r)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	/* Release: pairs with the acquire in replica_stopping. */
	atomic_store_explicit(&r->stop, true, memory_order_release);
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	/* The publish thread may wait for a slot. */
	pthread_mutex_lock(&r->fly_mu);
	pthread_cond_broadcast(&r->fly_cv);
	pthread_mutex_unlock(&r->fly_mu);
	if (r->pub_started)
		pthread_join(r->pub_thread, NULL);
	if (r->fetch_started)
		pthread_join(r->fetch_thread, NULL);
	/* The consumer stays on the servers (only the subscription goes). */
	/* The PubAcks still owed get a moment, then 503: past this point
	 * no handler runs (the connection is gone). */
	if (r->js != NULL) {
		jsPubOptions po;
		jsPubOptions_Init(&po);
		po.MaxWait = 1000;
		js_PublishAsyncComplete(r->js, &po);
	}
	natsSubscription_Destroy(r->sub);
	jsCtx_Destroy(r->js);
	natsConnection_Destroy(r->nc);
	nats_CloseAndWait(2000);
	for (unsigned i = 0; i < REPLICA_INFLIGHT; i++) {
		if (r->fly[i].msg != NULL)
			writer_req_fail(r->w, r->fly[i].req, 503, "the server is "
					"stopping (the stream's answer did not "
					"come; a retry with the same cursor "
					"tells whether it was applied)");
	}
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->fly_mu);
	pthread_cond_destroy(&r->fly_cv);
	free(r);
}

void replica_stats(struct replica *r, struct replica_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->connected = r->nc != NULL &&
			 natsConnection_Status(r->nc) == NATS_CONN_STATUS_CONNECTED;
	out->unreachable_ms = replica_unreachable_ms(r);
	out->stream_reachable = out->unreachable_ms == 0;
	out->stream_last_seq = LOAD(r->stream_last_seq);
	out->applied_seq = writer_stream_done(r->w);
	if (out->stream_last_seq > out->applied_seq) {
		out->lag_messages = out->stream_last_seq - out->applied_seq;
		uint64_t last_ns = LOAD(r->stream_last_ns);
		uint64_t applied_ns = LOAD(r->applied_ns);
		out->lag_seconds = last_ns > applied_ns ?
			(double)(last_ns - applied_ns) / 1e9 : 0;
		if (applied_ns == 0) { /* nothing applied by this process */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			double now = (double)ts.tv_sec + ts.tv_nsec / 1e9;
			out->lag_seconds = now - (double)last_ns / 1e9;
			if (out->lag_seconds < 0)
				out->lag_seconds = 0;
		}
	}
	out->consumer_pending = LOAD(r->consumer_pending);
	out->consumer_ack_floor = LOAD(r->consumer_ack_floor);
	out->messages_fetched = LOAD(r->fetched);
	out->repositions = LOAD(r->repositions);
	out->published = LOAD(r->published);
	out->publish_failures = LOAD(r->publish_failures);
	for (int i = 0; i < REPLICA_PUBACK_BUCKETS; i++)
		out->puback_buckets[i] = LOAD(r->puback[i]);
	out->puback_sum_us = LOAD(r->puback_sum_us);
	for (int i = 0; i < REPLICA_PUBACK_BUCKETS; i++)
		out->visible_buckets[i] = LOAD(r->visible[i]);
	out->visible_sum_us = LOAD(r->visible_sum_us);
}

bool replica_ready(struct replica *r, char *why, size_t cap)
{
	struct replica_stats st;

	if (r == NULL || r->opt.max_lag_s == 0)
		return true;
	replica_stats(r, &st);
	if (st.unreachable_ms > (uint64_t)r->opt.max_lag_s * 1000u) {
		snprintf(why, cap, "the change stream unreachable for %" PRIu64
			 " ms (--max-lag %" PRIu32 " s)", st.unreachable_ms,
			 r->opt.max_lag_s);
		return false;
	}
	if (st.lag_seconds > (double)r->opt.max_lag_s) {
		snprintf(why, cap, "%.1f s (%" PRIu64 " messages) behind the "
			 "change stream (--max-lag %" PRIu32 " s)",
			 st.lag_seconds, st.lag_messages, r->opt.max_lag_s);
		return false;
	}
	return true;
}
