/*
 * publish: a change stream to the fleet's JetStream stream (DESIGN §9):
 *   consentctl publish --nats URL[,URL...] --replica HOST:PORT
 *                      [--stream CONSENT] [--origin NAME] [--token T]
 *                      [--batch K] [--window W] [--heartbeat SEC] FILE|-
 *
 * The batches are consentctl feed's (origin "file:" + the file's base
 * name by default; cursor = the decimal file sequence of a batch's last
 * change, after_cursor = the one before), each one stream message made
 * by core/natsmsg (the encoding consentd decodes).
 *
 * Where it resumes. The stream holds proposals, not outcomes: a message
 * whose after_cursor did not follow was refused by every replica (§8),
 * and nothing in the stream says so. The stored cursor is what the
 * replicas decided, so the publisher asks a replica (--replica, its RPC
 * port: Stats{origin}), and only once that replica has processed the
 * stream through the last sequence the stream had when asked: then every
 * message of the origin that reached the stream before is judged in that
 * cursor, and the resume is exact, whether the last run was killed
 * before, during or after a publish.
 *
 * Duplicates. Nats-Msg-Id is origin ":" cursor, so a batch published
 * twice within the stream's duplicate window is stored once. A killed run
 * may have left messages that were stored but refused (one before them
 * was lost): their next publish would come back a duplicate of the
 * refused copy and be dropped. So, for the duplicate window after it
 * starts, the publisher publishes one message at a time, and a duplicate
 * PubAck for a batch past the resumed cursor is published again under a
 * fresh id (origin ":" cursor ":" this run's start). Past that window
 * (--dup-window, 130 s) it keeps up to W publishes outstanding
 * (js_PublishMsgAsync, MaxPending W).
 * Any failed publish stops it (exit 1): running it again resumes exactly.
 *
 * --heartbeat SEC: while it runs, an empty ConsentBatch on
 * consent.changes.heartbeat every SEC (freshness, §9), from its own thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "core/natsmsg.h"
#include "core/stream.h"
#include "ctl/ctl.h"
#include "ctl/rpcclient.h"
#include "proto/consent.pb-c.h"

#define PUB_BATCH_DEFAULT 1000
#define PUB_WINDOW_DEFAULT 64
#define PUB_WINDOW_MAX 4096
#define PUB_TIMEOUT_MS 10000
#define PUB_CATCH_UP_MS 60000    /* the replica reaching the stream's end */
#define PUB_DUP_WINDOW_S 130     /* the stream's (120 s) and a margin */

struct pub_opts {
	const char *nats, *replica, *stream, *token, *in;
	char origin[300];
	size_t batch;
	int window;
	int heartbeat_s;
	int dup_window_s; /* one at a time this long after the start */
	long rate;        /* changes per second at most; 0: as fast as it can */
};

struct pub {
	const struct pub_opts *o;
	natsConnection *nc;
	jsCtx *js;
	uint64_t cursor_start, cursor_sent;
	bool resumed;
	char run_id[64];
	struct timespec t0;
	/* The batch being built: copies of the changes (the reader's are
	 * valid until its next call). */
	Consent__V1__Consent **chg;
	size_t n, cap;
	uint64_t last_seq; /* file sequence of its last change */
	uint64_t sent_batches, sent_changes, skipped, republished;
	/* Async PubAcks (the library's thread). */
	atomic_uint_fast64_t acked, failed;
	char fail_text[300];
	/* Heartbeats. */
	pthread_t hb_thread;
	bool hb_started;
	atomic_bool hb_stop;
};

static double pub_elapsed(const struct pub *p)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)(ts.tv_sec - p->t0.tv_sec) +
	       (double)(ts.tv_nsec - p->t0.tv_nsec) / 1e9;
}

static const char *pub_why(natsStatus s, jsErrCode jerr, char *buf, size_t cap)
{
	const char *last = nats_GetLastError(NULL);
	snprintf(buf, cap, "%s%s", last && last[0] ? last :
		 natsStatus_GetText(s), jerr ? " (JetStream error)" : "");
	return buf;
}

static void pub_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa,
			    jsPubAckErr *pae, void *closure)
{
	struct pub *p = closure;
	(void)js;
	if (pae != NULL || pa == NULL || pa->Duplicate) {
		/* The first failure's text; written before the counter is
		 * (release), read after it (acquire in pub_flush). */
		if (atomic_load_explicit(&p->failed, memory_order_relaxed) == 0)
			snprintf(p->fail_text, sizeof(p->fail_text), "%s",
				 pae != NULL ? (pae->ErrText ? pae->ErrText :
				 natsStatus_GetText(pae->Err)) :
				 "a duplicate PubAck past the resumed cursor");
		atomic_fetch_add_explicit(&p->failed, 1, memory_order_release);
	} else {
		atomic_fetch_add_explicit(&p->acked, 1, memory_order_relaxed);
	}
	natsMsg_Destroy(msg);
}

/* The message of the batch being built (origin, cursors), ready to go. */
static int pub_message(struct pub *p, const char *msg_id, natsMsg **out)
{
	Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
	struct natsmsg_out m;
	char after[24] = "", cur[24], err[200];

	if (p->cursor_sent)
		snprintf(after, sizeof(after), "%" PRIu64, p->cursor_sent);
	snprintf(cur, sizeof(cur), "%" PRIu64, p->last_seq);
	a.changes = p->chg;
	a.n_changes = p->n;
	a.origin = (char *)p->o->origin;
	a.after_cursor = after;
	a.cursor = cur;
	if (natsmsg_encode(&a, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "publish: %s\n", err);
		return -EINVAL;
	}
	natsStatus s = natsMsg_Create(out, m.subject, NULL,
				      (const char *)m.data, (int)m.len);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(*out, NATSMSG_HDR_ORIGIN, p->o->origin);
	if (s == NATS_OK && after[0])
		s = natsMsgHeader_Set(*out, NATSMSG_HDR_AFTER, after);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(*out, NATSMSG_HDR_CURSOR, cur);
	if (s == NATS_OK && msg_id == NULL)
		s = natsMsgHeader_Set(*out, NATSMSG_HDR_MSG_ID, m.msg_id);
	else if (s == NATS_OK)
		s = natsMsgHeader_Set(*out, NATSMSG_HDR_MSG_ID, msg_id);
	natsmsg_out_fini(&m);
	if (s != NATS_OK) {
		natsMsg_Destroy(*out);
		*out = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Publishes the batch being built and empties it. */
static int pub_flush(struct pub *p)
{
	natsMsg *m = NULL;
	jsErrCode jerr = 0;
	char why[300];
	int rc;

	if (p->n == 0)
		return 0;
	if (atomic_load_explicit(&p->failed, memory_order_acquire)) {
		fprintf(stderr, "publish: a publish failed: %s\n", p->fail_text);
		return -EIO;
	}
	rc = pub_message(p, NULL, &m);
	if (rc < 0)
		return rc;
	if (pub_elapsed(p) < p->o->dup_window_s) {
		/* One at a time while a killed run's messages may still be
		 * in the duplicate window (see the top). */
		jsPubAck *pa = NULL;
		jsPubOptions po;
		jsPubOptions_Init(&po);
		po.MaxWait = PUB_TIMEOUT_MS;
		natsStatus s = js_PublishMsg(&pa, p->js, m, &po, &jerr);
		natsMsg_Destroy(m);
		m = NULL;
		if (s == NATS_OK && pa->Duplicate) {
			char id[400];
			jsPubAck_Destroy(pa);
			pa = NULL;
			snprintf(id, sizeof(id), "%s:%" PRIu64 ":%s", p->o->origin,
				 p->last_seq, p->run_id);
			rc = pub_message(p, id, &m);
			if (rc < 0)
				return rc;
			s = js_PublishMsg(&pa, p->js, m, &po, &jerr);
			natsMsg_Destroy(m);
			p->republished++;
		}
		jsPubAck_Destroy(pa);
		if (s != NATS_OK) {
			fprintf(stderr, "publish: %s\n",
				pub_why(s, jerr, why, sizeof(why)));
			return -EIO;
		}
		atomic_fetch_add_explicit(&p->acked, 1, memory_order_relaxed);
	} else {
		natsStatus s = js_PublishMsgAsync(p->js, &m, NULL);
		natsMsg_Destroy(m); /* no-op once the library took it */
		if (s != NATS_OK) {
			fprintf(stderr, "publish: %s\n",
				pub_why(s, 0, why, sizeof(why)));
			return -EIO;
		}
	}
	p->cursor_sent = p->last_seq;
	p->sent_batches++;
	p->sent_changes += p->n;
	if (p->o->rate > 0) {
		/* --rate: ahead of the schedule, wait for it. */
		double ahead = (double)p->sent_changes / (double)p->o->rate -
			       pub_elapsed(p);
		if (ahead > 0) {
			struct timespec ts = { (time_t)ahead,
					       (long)((ahead - (double)(time_t)ahead) * 1e9) };
			nanosleep(&ts, NULL);
		}
	}
	for (size_t i = 0; i < p->n; i++)
		consent__v1__consent__free_unpacked(p->chg[i], NULL);
	p->n = 0;
	return 0;
}

/* A copy of c (packed and unpacked: protobuf-c owns every string). */
static int pub_add(struct pub *p, const Consent__V1__Consent *c_in)
{
	Consent__V1__Consent c = *c_in;
	uint8_t buf[CHANGE_BYTES_MAX + 64];
	int rc;

	c.sequence = 0;
	if (p->n >= p->o->batch && (rc = pub_flush(p)) < 0)
		return rc;
	size_t len = consent__v1__consent__get_packed_size(&c);
	if (len > sizeof(buf))
		return -EMSGSIZE;
	consent__v1__consent__pack(&c, buf);
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 1024;
		Consent__V1__Consent **n = realloc(p->chg, cap * sizeof(*n));
		if (n == NULL)
			return -ENOMEM;
		p->chg = n;
		p->cap = cap;
	}
	p->chg[p->n] = consent__v1__consent__unpack(NULL, len, buf);
	if (p->chg[p->n] == NULL)
		return -ENOMEM;
	p->n++;
	p->last_seq = c_in->sequence;
	return 0;
}

static int pub_stream(struct pub *p, int in_fd)
{
	struct stream_reader *r = NULL;
	struct stream_item it;
	bool header = false;
	uint64_t prev = 0;
	int rc = stream_reader_create(in_fd, STREAM_FRAME_MAX_DEFAULT, false, &r);

	if (rc < 0)
		return rc;
	while ((rc = stream_reader_next(r, &it)) > 0) {
		if (it.kind == STREAM_ITEM_HEADER) {
			if (!it.header->changes) {
				fprintf(stderr, "publish: %s: not a change "
					"stream\n", p->o->in);
				rc = -EINVAL;
				break;
			}
			if (p->resumed && it.header->sequence > p->cursor_start) {
				fprintf(stderr, "publish: origin %s is at %" PRIu64
					" but the stream follows %" PRIu64 "\n",
					p->o->origin, p->cursor_start,
					it.header->sequence);
				rc = -EINVAL;
				break;
			}
			prev = it.header->sequence;
			header = true;
			continue;
		}
		for (size_t i = 0; i < it.n_consents && rc > 0; i++) {
			const Consent__V1__Consent *c = it.consents[i];
			if (c->sequence <= prev) {
				fprintf(stderr, "publish: %s: offset %" PRIu64
					": sequence %" PRIu64 " after %" PRIu64
					"\n", p->o->in, it.offset, c->sequence,
					prev);
				rc = -EINVAL;
				break;
			}
			prev = c->sequence;
			if (c->sequence <= p->cursor_start) {
				p->skipped++;
				continue;
			}
			if (pub_add(p, c) < 0)
				rc = -EIO;
		}
		if (rc < 0)
			break;
	}
	if (rc < 0 && rc != -EINVAL && rc != -EIO) {
		const char *e = stream_reader_error(r);
		fprintf(stderr, "publish: %s: %s\n", p->o->in,
			e && e[0] ? e : strerror(-rc));
	}
	stream_reader_destroy(r);
	if (rc == 0 && !header) {
		fprintf(stderr, "publish: %s: empty stream\n", p->o->in);
		rc = -EINVAL;
	}
	if (rc < 0)
		return rc;
	rc = pub_flush(p);
	if (rc == 0) {
		jsPubOptions po;
		jsErrCode jerr = 0;
		jsPubOptions_Init(&po);
		po.MaxWait = PUB_TIMEOUT_MS * 3;
		if (js_PublishAsyncComplete(p->js, &po) != NATS_OK ||
		    atomic_load_explicit(&p->failed, memory_order_acquire)) {
			(void)jerr;
			fprintf(stderr, "publish: a publish failed: %s\n",
				p->fail_text[0] ? p->fail_text :
				"PubAcks missing after the wait");
			rc = -EIO;
		}
	}
	return rc;
}

/* A replica's Stats over its RPC port (authenticating first with token,
 * when not NULL): origin's stored cursor into cursor ("" for a new
 * origin) and its applied_sequence. 0, or -errno (printed). */
static int pub_query_replica(const char *rpc, const char *token,
			     const char *origin, int timeout_ms, char *cursor,
			     size_t cap, uint64_t *applied)
{
	struct rpcclient c;
	Consent__V1__Response *r = NULL;
	int rc = rpcclient_connect(&c, rpc, timeout_ms, "publish");

	if (rc < 0)
		return rc;
	rc = token ? rpcclient_auth(&c, token) : 0;
	if (rc == 0)
		rc = rpcclient_stats(&c, origin, &r);
	if (rc == 0) {
		*applied = r->stats->applied_sequence;
		snprintf(cursor, cap, "%s", r->stats->origin_cursor ?
			 r->stats->origin_cursor : "");
		consent__v1__response__free_unpacked(r, NULL);
	}
	rpcclient_close(&c);
	return rc;
}

/* Learns the origin's cursor from a replica that has caught up with the
 * stream's last sequence (see the top). */
static int pub_resume(struct pub *p)
{
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	char why[300], cursor[300];
	uint64_t applied = 0;
	natsStatus s;
	jsOptions jo;

	jsOptions_Init(&jo);
	jo.Wait = PUB_TIMEOUT_MS;
	s = js_GetStreamInfo(&si, p->js, p->o->stream, &jo, &jerr);
	if (s != NATS_OK) {
		fprintf(stderr, "publish: stream %s: %s\n", p->o->stream,
			pub_why(s, jerr, why, sizeof(why)));
		return -EIO;
	}
	uint64_t last = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	for (;;) {
		int rc = pub_query_replica(p->o->replica, p->o->token,
					   p->o->origin, PUB_TIMEOUT_MS, cursor,
					   sizeof(cursor), &applied);
		if (rc < 0)
			return rc;
		if (applied >= last)
			break;
		if (pub_elapsed(p) * 1000 > PUB_CATCH_UP_MS) {
			fprintf(stderr, "publish: replica %s is at %" PRIu64
				", the stream at %" PRIu64 ": not caught up in "
				"%d s\n", p->o->replica, applied, last,
				PUB_CATCH_UP_MS / 1000);
			return -ETIMEDOUT;
		}
		struct timespec ts = { 0, 50000000L };
		nanosleep(&ts, NULL);
	}
	if (cursor[0]) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(cursor, &end, 10);
		if (errno || *end || cursor[0] < '0' || cursor[0] > '9' || !v) {
			fprintf(stderr, "publish: origin %s: the stored cursor "
				"\"%s\" is not a sequence of this file (another "
				"feeder uses this origin?)\n", p->o->origin,
				cursor);
			return -EINVAL;
		}
		p->resumed = true;
		p->cursor_start = p->cursor_sent = v;
		fprintf(stderr, "publish: origin %s: resumed after cursor %"
			PRIu64 " (replica %s at sequence %" PRIu64 ")\n",
			p->o->origin, p->cursor_start, p->o->replica, applied);
	} else {
		fprintf(stderr, "publish: origin %s: new, from the start\n",
			p->o->origin);
	}
	return 0;
}

static void *pub_heartbeat_main(void *arg)
{
	struct pub *p = arg;
	uint64_t n = 0;

	for (;;) {
		for (int i = 0; i < p->o->heartbeat_s * 10; i++) {
			if (atomic_load_explicit(&p->hb_stop,
						 memory_order_acquire))
				return NULL;
			struct timespec ts = { 0, 100000000L };
			nanosleep(&ts, NULL);
		}
		Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
		struct natsmsg_out m;
		char err[200], id[400];
		natsMsg *msg = NULL;
		if (natsmsg_encode(&a, &m, err, sizeof(err)) < 0)
			continue;
		snprintf(id, sizeof(id), "heartbeat:%s:%s:%" PRIu64,
			 p->o->origin, p->run_id, ++n);
		if (natsMsg_Create(&msg, m.subject, NULL, (const char *)m.data,
				   (int)m.len) == NATS_OK &&
		    natsMsgHeader_Set(msg, NATSMSG_HDR_MSG_ID, id) == NATS_OK) {
			jsPubAck *pa = NULL;
			jsPubOptions po;
			jsPubOptions_Init(&po);
			po.MaxWait = PUB_TIMEOUT_MS;
			if (js_PublishMsg(&pa, p->js, msg, &po, NULL) != NATS_OK)
				fprintf(stderr, "publish: heartbeat: %s\n",
					nats_GetLastError(NULL));
			jsPubAck_Destroy(pa);
		}
		natsMsg_Destroy(msg);
		natsmsg_out_fini(&m);
	}
}

static int pub_usage(void)
{
	fprintf(stderr,
		"usage: consentctl publish --nats URL[,URL...] --replica HOST:PORT\n"
		"                          [--stream CONSENT] [--origin NAME] "
		"[--token T]\n"
		"                          [--batch K] [--window W] "
		"[--heartbeat SEC] [--dup-window SEC] FILE|-\n"
		"  --replica  a replica's RPC port: the origin's cursor is read "
		"there once it\n"
		"             has caught up with the stream (exact resume)\n"
		"  --origin   default file:BASENAME (as consentctl feed)\n"
		"  --window   async PubAcks outstanding at most (64)\n"
		"  --dup-window SEC  one message at a time for SEC after the "
		"start (130: the\n"
		"             stream's duplicate window and a margin; 0 when no "
		"earlier run\n"
		"             of this origin can have left messages in it)\n"
		"  --rate N   at most N changes a second (the bench's load)\n");
	return 2;
}

static int pub_parse(int argc, char **argv, struct pub_opts *o)
{
	bool set_origin = false;

	memset(o, 0, sizeof(*o));
	o->stream = "CONSENT";
	o->batch = PUB_BATCH_DEFAULT;
	o->window = PUB_WINDOW_DEFAULT;
	o->dup_window_s = PUB_DUP_WINDOW_S;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		long n = 0;
		if (v && (!strcmp(a, "--batch") || !strcmp(a, "--window") ||
			  !strcmp(a, "--heartbeat") ||
			  !strcmp(a, "--dup-window") || !strcmp(a, "--rate"))) {
			char *end;
			errno = 0;
			n = strtol(v, &end, 10);
			if (errno || *end || end == v ||
			    n > (strcmp(a, "--rate") ? 100000 : 100000000) ||
			    (n <= 0 && strcmp(a, "--dup-window") != 0) || n < 0) {
				fprintf(stderr, "publish: %s wants 1 to 100000\n", a);
				return -EINVAL;
			}
		}
		if (!strcmp(a, "--nats") && v) {
			o->nats = v;
		} else if (!strcmp(a, "--replica") && v) {
			o->replica = v;
		} else if (!strcmp(a, "--stream") && v) {
			o->stream = v;
		} else if (!strcmp(a, "--token") && v) {
			o->token = v;
		} else if (!strcmp(a, "--batch") && v) {
			o->batch = (size_t)n;
		} else if (!strcmp(a, "--window") && v) {
			o->window = n > PUB_WINDOW_MAX ? PUB_WINDOW_MAX : (int)n;
		} else if (!strcmp(a, "--rate") && v) {
			o->rate = n;
		} else if (!strcmp(a, "--dup-window") && v) {
			o->dup_window_s = (int)n;
		} else if (!strcmp(a, "--heartbeat") && v) {
			o->heartbeat_s = (int)n;
		} else if (!strcmp(a, "--origin") && v) {
			if (!v[0] || strlen(v) > NATSMSG_VALUE_MAX) {
				fprintf(stderr, "publish: --origin: 1 to %d bytes\n",
					NATSMSG_VALUE_MAX);
				return -EINVAL;
			}
			snprintf(o->origin, sizeof(o->origin), "%s", v);
			set_origin = true;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr, "publish: unknown option or missing "
				"value: %s\n", a);
			return -EINVAL;
		} else if (!o->in) {
			o->in = a;
			continue;
		} else {
			fprintf(stderr, "publish: one input only\n");
			return -EINVAL;
		}
		i++;
	}
	if (!o->token)
		o->token = getenv("CONSENTD_TOKEN");
	if (o->token && !o->token[0])
		o->token = NULL;
	if (!o->nats || !o->replica || !o->in)
		return -EINVAL;
	if (!set_origin) {
		const char *base = strrchr(o->in, '/');
		base = base ? base + 1 : o->in;
		if (strlen(base) + 5 > NATSMSG_VALUE_MAX) {
			fprintf(stderr, "publish: %s: name too long for an "
				"origin (give --origin)\n", o->in);
			return -EINVAL;
		}
		snprintf(o->origin, sizeof(o->origin), "file:%s", base);
	}
	return 0;
}

/* The connection: every URL, reconnecting without end. */
static int pub_connect(struct pub *p)
{
	natsOptions *no = NULL;
	char urls[2048], why[300];
	const char *servers[32];
	int n = 0;

	snprintf(urls, sizeof(urls), "%s", p->o->nats);
	for (char *save = NULL, *t = strtok_r(urls, ",", &save);
	     t != NULL && n < 32; t = strtok_r(NULL, ",", &save))
		servers[n++] = t;
	natsStatus s = natsOptions_Create(&no);
	if (s == NATS_OK)
		s = natsOptions_SetServers(no, servers, n);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(no, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(no, 250);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(no, 2000);
	if (s == NATS_OK)
		s = natsConnection_Connect(&p->nc, no);
	natsOptions_Destroy(no);
	if (s == NATS_OK) {
		jsOptions jo;
		jsOptions_Init(&jo);
		jo.Wait = PUB_TIMEOUT_MS;
		jo.PublishAsync.MaxPending = p->o->window;
		jo.PublishAsync.AckHandler = pub_ack_handler;
		jo.PublishAsync.AckHandlerClosure = p;
		s = natsConnection_JetStream(&p->js, p->nc, &jo);
	}
	if (s != NATS_OK) {
		fprintf(stderr, "publish: --nats %s: %s\n", p->o->nats,
			pub_why(s, 0, why, sizeof(why)));
		return -EIO;
	}
	return 0;
}

int ctl_publish(int argc, char **argv)
{
	struct pub_opts o;
	struct pub p;
	int in_fd, rc;

	if (pub_parse(argc, argv, &o) < 0)
		return pub_usage();
	memset(&p, 0, sizeof(p));
	p.o = &o;
	atomic_init(&p.acked, 0);
	atomic_init(&p.failed, 0);
	atomic_init(&p.hb_stop, false);
	clock_gettime(CLOCK_MONOTONIC, &p.t0);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	snprintf(p.run_id, sizeof(p.run_id), "%" PRId64 ".%09ld.%d",
		 (int64_t)now.tv_sec, now.tv_nsec, (int)getpid());
	in_fd = ctl_open_in(o.in);
	if (in_fd < 0) {
		fprintf(stderr, "publish: %s: %s\n", o.in, strerror(-in_fd));
		return 1;
	}
	rc = pub_connect(&p);
	if (rc == 0)
		rc = pub_resume(&p);
	if (rc == 0 && o.heartbeat_s > 0) {
		if (pthread_create(&p.hb_thread, NULL, pub_heartbeat_main, &p) == 0)
			p.hb_started = true;
	}
	if (rc == 0) {
		rc = pub_stream(&p, in_fd);
		fprintf(stderr, "publish: %s: origin %s: %" PRIu64 " changes "
			"in %" PRIu64 " messages published (%" PRIu64 " PubAcks"
			", %" PRIu64 " republished under a fresh id), %" PRIu64
			" at or below the resumed cursor; cursor %" PRIu64 "\n",
			rc == 0 ? "done" : "stopped", o.origin, p.sent_changes,
			p.sent_batches,
			(uint64_t)atomic_load(&p.acked), p.republished,
			p.skipped, p.cursor_sent);
	}
	if (p.hb_started) {
		atomic_store_explicit(&p.hb_stop, true, memory_order_release);
		pthread_join(p.hb_thread, NULL);
	}
	for (size_t i = 0; i < p.n; i++)
		consent__v1__consent__free_unpacked(p.chg[i], NULL);
	free(p.chg);
	jsCtx_Destroy(p.js);
	natsConnection_Destroy(p.nc);
	nats_CloseAndWait(2000);
	if (in_fd != STDIN_FILENO)
		close(in_fd);
	return rc == 0 ? 0 : 1;
}
