/*
 * build: a generation from a snapshot stream, and a dump back into one.
 *
 * A record's key is made with the generation's secret, which does not
 * depend on the table size, so keys can be made before the table exists.
 * The table wants the record count, which only the trailer states:
 *  - a regular file: trailer_hint reads the count from the file's end
 *    first, the table is created at once (records * 1.10, headroom for
 *    changes) and records are inserted as they are decoded, a chunk at a
 *    time with prefetching. The hint is never trusted: the reader still
 *    checks the trailer, and if the stream overflows the table the build
 *    starts again from the file's start in the second mode;
 *  - a pipe whose header states its record_count (a peer's snapshot,
 *    consentctl gen): the table is made for that many when the first
 *    records arrive and they are inserted as for a file; a table the
 *    stream overflows grows (the same secret, so the keys the workers made
 *    stay good) and the chunk is inserted again (the order rule makes
 *    that a no-op for what went in), and one that ends fuller than the
 *    stated count grows once more to the headroom a generation needs;
 *  - a pipe without (or a hint that failed): every record is staged as a
 *    32-byte item in anonymous memory that grows by mremap without
 *    copying (and e-mail addresses in a second arena), and inserted after
 *    the trailer.
 * Staging costs 32 bytes a record (3.2 GB at 10^8), direct insertion
 * nothing, and it overlaps inserting with decoding.
 * Either way a bad record or a bad trailer rejects the whole stream before
 * anything is renamed into DIR.
 *
 * Decoding (protobuf-c, two thirds of the instructions), validating,
 * normalising and keying run on a worker per online core, a chunk of
 * 16384+ records each at a time; the calling thread only inserts (or
 * stages), in stream order, as the table's one writer. See "The
 * pipeline" below, build_worker_main and read_stream.
 *
 * The result is a generation in memory (index/generation.h: the table and
 * the addresses of its e-mail keys): the server's writer takes it as it
 * is, consentctl build publishes it (generation_publish) with the
 * newest generation's origins (index/origins.h: the kind and the cursors
 * outlive a snapshot, DESIGN §8), or into an empty DIR with the origins
 * its header states (a peer's snapshot, §9 bootstrap).
 */
#include "index/build.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/enums.h"
#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "index/generation.h"
#include "index/history.h"
#include "index/origins.h"
#include "index/table.h"

#define HEADROOM_PCT 110     /* table capacity: records * 1.10 */
/* build_once's (and read_stream's) "the trailer hint was short, read the
 * stream again staging": positive, so that no -errno (a real -EAGAIN from
 * pthread_create, say) can be taken for it. */
#define BUILD_RESTART 1
#define PREFETCH_AHEAD 16    /* inserts in flight */
#define GROW_MIN (4u << 20)

/* ---- anonymous memory that grows without copying ---- */

struct grow {
	uint8_t *p;
	size_t len;
	size_t cap;
};

static int grow_reserve(struct grow *g, size_t more)
{
	if (g->cap - g->len >= more)
		return 0;
	size_t want = g->cap ? g->cap * 2 : GROW_MIN;
	while (want - g->len < more)
		want *= 2;
	void *p = g->cap ? mremap(g->p, g->cap, want, MREMAP_MAYMOVE)
			 : mmap(NULL, want, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	/* Huge pages: staging 10^8 records from a pipe takes 3+ GB, and a
	 * 2 MiB fault replaces 512 of 4 KiB. Advice only. */
	madvise(p, want, MADV_HUGEPAGE);
	g->p = p;
	g->cap = want;
	return 0;
}

static void grow_free(struct grow *g)
{
	if (g->cap)
		munmap(g->p, g->cap);
	memset(g, 0, sizeof(*g));
}

/* ---- staging ---- */

/* One staged record: its key and value, 32 bytes. */
struct item {
	struct index_key key;
	uint32_t date_off;  /* consent_date - INDEX_EPOCH */
	uint8_t status;
	uint8_t source;
	uint8_t is_email;   /* its address is next in the e-mail arena */
	uint8_t reserved;
};
static_assert(sizeof(struct item) == 32, "a staged record is 32 bytes");

/* E-mail arena record: brand (4, LE), rtype (1), length (1), address. */
#define EMAIL_REC_HEAD 6

/*
 * The pipeline. The reader hands batch frames out raw
 * (stream_reader_raw_batches): framing and the checksum are a small,
 * serial part of the work, decoding the large part (protobuf-c), and
 * validating, normalising and keying most of the rest. So every core runs
 * a worker (build_worker_main) that, in turn with the others, takes the
 * reader (frame_mu) long enough to copy the next run of frames into a
 * slot (CHUNK_RECORDS records or more: a hand-over costs a wake-up), then
 * decodes and stages that run on its own into 32-byte items and e-mail
 * records. Slot i holds chunks i, i + n_slots, ...; the calling thread
 * takes the chunks in stream order and inserts (direct) or stages them:
 * the table has exactly one writer (index/table.c: double hashing spreads
 * a key's probe sequence over the whole table, so no partition of the
 * buckets keeps two inserters apart), and the order of first-seen e-mail
 * addresses stays the stream's. Inserting is the light part (a prefetched
 * miss a record), so that thread mostly waits.
 *
 * Errors come out in stream order: a chunk carries the first failure in
 * it (a frame that does not decode, a bad record) after the items before
 * it, and the reader's own end (clean, or its failure) is a mark after
 * the last chunk. The first failure the inserting thread meets is the
 * build's, with the text the one-thread reader gave.
 */

/* A raw batch frame of a chunk: raw[at, at + len). */
struct chunk_frame {
	uint64_t offset;       /* in the stream */
	size_t at, len;
	size_t n_consents;     /* as the reader counted them */
};

struct chunk {
	uint64_t seq;          /* which chunk of the stream */
	bool ready;            /* staged; the inserting thread's until freed */
	uint64_t first_record; /* stream ordinal of its first record, from 0 */
	uint64_t n_records;    /* as the reader counted them */
	/* The frames, copied out of the reader: bytes and where each is. */
	uint8_t *raw;
	size_t raw_len, raw_cap;
	struct chunk_frame *frames;
	size_t n_frames, frames_cap;
	/* What staging made of them, and the first failure. */
	struct grow items;     /* struct item, n_items of them */
	struct grow emails;    /* their addresses, in the same order */
	size_t n_items;
	int rc;
	char err[512];
};

#define CHUNK_RECORDS 16384 /* records per hand-over, at least */
#define WORKERS_MAX 64

struct builder {
	/* Set before the threads start. */
	struct stream_reader *reader;
	struct index *keymaker; /* the generation's secret, one bucket */
	size_t n_slots;
	struct chunk *slot;

	/* The reader, and what it says, are frame_mu's. */
	pthread_mutex_t frame_mu;
	uint64_t next_seq;     /* the next chunk to fill */
	uint64_t next_record;
	bool have_header;
	uint64_t watermark;
	int64_t created_at;
	struct origins *origins; /* the header's (NULL: it states none) */
	uint64_t stated;         /* the header's record_count (0: none) */

	/* The slots' hand-overs, guarded by mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t freed;        /* chunks below this are inserted and free */
	bool ended;            /* the reader is done: end_seq, end_rc set */
	uint64_t end_seq;      /* chunks of the stream */
	int end_rc;            /* its result: 0, or -errno with end_err */
	char end_err[512];
	bool stop;             /* the inserting thread failed: quit */

	/* The inserting thread's. */
	struct index *direct;  /* sized from the trailer hint: insert as we go */
	bool stated_direct;    /* direct, sized from the header's count */
	bool may_state;        /* a pipe: the header's count may size it */
	const uint8_t *secret; /* the generation's (build_once's) */
	const char *work_dir;  /* tables in working files here; NULL: anon */
	struct grow items;     /* staged items (no hint) */
	struct grow emails;
	struct generation *out; /* the table, and the addresses inserted */
	const struct build_sink *sink; /* NULL: none */
	struct stream_decoder *sink_dec; /* the sink's second decode */
	uint64_t n_items;
	uint64_t n_emails;
};

/* Copies a raw batch frame into chunk c. */
static int chunk_add_frame(struct chunk *c, const struct stream_item *it)
{
	if (c->n_frames == c->frames_cap) {
		size_t nc = c->frames_cap ? c->frames_cap * 2 : 64;
		struct chunk_frame *f = realloc(c->frames, nc * sizeof(*f));
		if (f == NULL)
			return -ENOMEM;
		c->frames = f;
		c->frames_cap = nc;
	}
	if (c->raw_cap - c->raw_len < it->frame_len) {
		size_t nc = c->raw_cap ? c->raw_cap : 1 << 20;
		while (nc - c->raw_len < it->frame_len)
			nc *= 2;
		uint8_t *r = realloc(c->raw, nc);
		if (r == NULL)
			return -ENOMEM;
		c->raw = r;
		c->raw_cap = nc;
	}
	memcpy(c->raw + c->raw_len, it->frame, it->frame_len);
	c->frames[c->n_frames++] = (struct chunk_frame){
		.offset = it->offset, .at = c->raw_len, .len = it->frame_len,
		.n_consents = it->n_consents,
	};
	c->raw_len += it->frame_len;
	c->n_records += it->n_consents;
	return 0;
}

/* With frame_mu: the reader's end, after every chunk handed out. */
static void reader_ended(struct builder *b, int rc, const char *why)
{
	pthread_mutex_lock(&b->mu);
	b->ended = true;
	b->end_seq = b->next_seq;
	b->end_rc = rc;
	snprintf(b->end_err, sizeof(b->end_err), "%s", why);
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

int build_header_origins(const Consent__V1__StreamHeader *h, uint64_t offset,
			 struct origins **out, char *why, size_t why_cap)
{
	const char *bad = NULL, *field = NULL;
	size_t i = 0;

	if (h->origins_kind == ORIGINS_NONE && h->n_origins == 0)
		return 0;
	if (h->origins_kind > ORIGINS_ORIGIN) {
		snprintf(why, why_cap, "offset %" PRIu64 ": header.origins_kind "
			 "%" PRIu32 " is none of 0, 1, 2", offset, h->origins_kind);
		return -EPROTO;
	}
	if (h->n_origins > 0 && h->origins_kind != ORIGINS_ORIGIN) {
		snprintf(why, why_cap, "offset %" PRIu64 ": header.origins: "
			 "cursors listed, but origins_kind is %" PRIu32
			 " (not 2, origins)", offset, h->origins_kind);
		return -EPROTO;
	}
	struct origins *o = NULL;
	if (origins_create(&o) < 0) {
		snprintf(why, why_cap, "offset %" PRIu64 ": out of memory", offset);
		return -ENOMEM;
	}
	origins_set_kind(o, (enum origins_kind)h->origins_kind);
	for (; i < h->n_origins; i++) {
		const Consent__V1__OriginCursor *c = h->origins[i];
		size_t ol = strlen(c->origin), cl = strlen(c->cursor);
		size_t have;
		if (origins_check_text(c->origin, ol, ORIGINS_NAME_MAX, 0,
				       &bad) < 0) {
			field = "origin";
			break;
		}
		if (origins_check_text(c->cursor, cl, ORIGINS_CURSOR_MAX, 0,
				       &bad) < 0) {
			field = "cursor";
			break;
		}
		if (origins_get(o, c->origin, ol, &have) != NULL) {
			field = "origin";
			bad = "listed twice";
			break;
		}
		if (origins_set(o, c->origin, ol, c->cursor, cl) < 0) {
			origins_destroy(o);
			snprintf(why, why_cap, "offset %" PRIu64 ": out of "
				 "memory", offset);
			return -ENOMEM;
		}
	}
	if (field != NULL) {
		origins_destroy(o);
		snprintf(why, why_cap, "offset %" PRIu64 ": header.origins[%zu]"
			 ".%s: %s", offset, i, field, bad);
		return -EPROTO;
	}
	origins_destroy(*out); /* one header per stream: NULL here */
	*out = o;
	return 0;
}

/* With frame_mu: fills the slot of the next chunk with frames from the
 * reader. Returns the slot, or NULL when the stream is over (or the build
 * stops). */
static struct chunk *frame_chunk(struct builder *b)
{
	pthread_mutex_lock(&b->mu);
	bool over = b->ended || b->stop;
	uint64_t seq = b->next_seq;
	/* The slot is free once chunk seq - n_slots is inserted. */
	while (!over && seq >= b->n_slots && b->freed <= seq - b->n_slots) {
		pthread_cond_wait(&b->cv, &b->mu);
		over = b->stop;
	}
	pthread_mutex_unlock(&b->mu);
	if (over)
		return NULL;

	struct chunk *c = &b->slot[seq % b->n_slots];
	c->seq = seq;
	c->first_record = b->next_record;
	c->n_records = 0;
	c->raw_len = 0;
	c->n_frames = 0;
	struct stream_item it;
	int rc = 1;
	char why[160] = "";
	while (c->n_records < CHUNK_RECORDS &&
	       (rc = stream_reader_next(b->reader, &it)) == 1) {
		if (it.kind == STREAM_ITEM_HEADER) {
			if (it.header->changes) {
				snprintf(why, sizeof(why), "offset %" PRIu64 ": a "
					 "change stream, not a snapshot", it.offset);
				rc = -EPROTO;
				break;
			}
			b->have_header = true;
			b->watermark = it.header->sequence;
			b->created_at = it.header->created_at;
			b->stated = it.header->record_count;
			rc = build_header_origins(it.header, it.offset,
						  &b->origins, why,
						  sizeof(why));
			if (rc < 0)
				break;
			rc = 1;
			continue;
		}
		if (it.kind == STREAM_ITEM_BATCH) {
			/* Raw batches are on: a batch comes decoded only if
			 * the reader's walk of its wire refused what
			 * protobuf-c then took. Not a stream we build. */
			snprintf(why, sizeof(why), "offset %" PRIu64 ": batch "
				 "frame does not walk as one", it.offset);
			rc = -EPROTO;
			break;
		}
		if (it.n_consents == 0)
			continue;
		if (chunk_add_frame(c, &it) < 0) {
			snprintf(why, sizeof(why), "offset %" PRIu64 ": out of "
				 "memory", it.offset);
			rc = -ENOMEM;
			break;
		}
	}
	/* The frames read before a failure are still the stream's, and
	 * may hold an earlier fault: they go in, then the end after them. */
	b->next_record += c->n_records;
	if (c->n_records > 0)
		b->next_seq++;
	if (rc <= 0)
		reader_ended(b, rc, why[0] != '\0' || rc == 0
					    ? why : stream_reader_error(b->reader));
	return c->n_records > 0 ? c : NULL;
}

static int chunk_fail(struct chunk *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int chunk_fail(struct chunk *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
	c->rc = rc;
	return rc;
}

/* Frame f of chunk c decoded by dec into *batch (its consents dec's until
 * the next call); a failure says why in c->err. */
static int chunk_decode_frame(struct stream_decoder *dec, struct chunk *c,
			      size_t f, struct stream_item *batch)
{
	const struct chunk_frame *cf = &c->frames[f];
	struct stream_item raw = {
		.kind = STREAM_ITEM_RAW_BATCH, .offset = cf->offset,
		.frame = c->raw + cf->at, .frame_len = cf->len,
		.n_consents = cf->n_consents,
	};
	return stream_decoder_batch(dec, &raw, batch, c->err, sizeof(c->err));
}

/* A worker, on its own: decodes, validates, normalises, keys and stages
 * chunk c; the first failure stops it, in c->rc and c->err. */
static int chunk_stage(struct builder *b, struct chunk *c,
		       struct stream_decoder *dec)
{
	uint64_t record = c->first_record;
	c->items.len = 0;
	c->emails.len = 0;
	c->n_items = 0;
	c->rc = 0;
	c->err[0] = '\0';
	if (grow_reserve(&c->items, c->n_records * sizeof(struct item)) < 0)
		return chunk_fail(c, -ENOMEM, "out of memory staging %" PRIu64
				  " records", record);
	for (size_t f = 0; f < c->n_frames; f++) {
		struct stream_item batch;
		int rc = chunk_decode_frame(dec, c, f, &batch);
		if (rc < 0)
			return c->rc = rc;
		struct item *out = (struct item *)c->items.p + c->n_items;
		for (size_t i = 0; i < batch.n_consents; i++, record++) {
			const Consent__V1__Consent *m = batch.consents[i];
			struct recipient rcp;
			const char *field, *why;
			/* Also what makes the value fit the index. */
			if (consent_validate(m, &rcp, &field, &why) < 0)
				return chunk_fail(c, -EPROTO, "offset %" PRIu64
						  ": record %" PRIu64 ": field %s: "
						  "%s", batch.offset, record + 1,
						  field, why);
			struct item *it = &out[i];
			index_key_make(b->keymaker, &rcp, m->brand_code,
				       (int)m->recipient_type, (int)m->channel,
				       &it->key);
			it->date_off = (uint32_t)(m->consent_date - INDEX_EPOCH);
			it->status = (uint8_t)m->status;
			it->source = (uint8_t)enums_source_stored((int)m->source);
			it->is_email = rcp.kind == RECIPIENT_EMAIL;
			it->reserved = 0;
			if (!it->is_email)
				continue;
			if (grow_reserve(&c->emails,
					 EMAIL_REC_HEAD + rcp.email_len) < 0)
				return chunk_fail(c, -ENOMEM, "out of memory "
						  "staging %" PRIu64 " records",
						  record);
			uint8_t *p = c->emails.p + c->emails.len;
			uint32_t brand = m->brand_code;
			memcpy(p, &brand, 4);
			p[4] = (uint8_t)m->recipient_type;
			p[5] = (uint8_t)rcp.email_len;
			memcpy(p + EMAIL_REC_HEAD, rcp.email, rcp.email_len);
			c->emails.len += EMAIL_REC_HEAD + rcp.email_len;
		}
		c->n_items += batch.n_consents;
	}
	c->items.len = c->n_items * sizeof(struct item);
	return 0;
}

/* A worker thread: frames a chunk (taking its turn at the reader), stages
 * it, hands it over; until the stream ends or the build stops. */
static void *build_worker_main(void *arg)
{
	struct builder *b = arg;
	struct stream_decoder *dec;
	bool ok = stream_decoder_create(&dec) == 0;

	for (;;) {
		pthread_mutex_lock(&b->frame_mu);
		struct chunk *c = frame_chunk(b);
		pthread_mutex_unlock(&b->frame_mu);
		if (c == NULL)
			break;
		if (ok)
			chunk_stage(b, c, dec);
		else
			chunk_fail(c, -ENOMEM, "out of memory decoding");
		pthread_mutex_lock(&b->mu);
		c->ready = true;
		pthread_cond_broadcast(&b->cv);
		pthread_mutex_unlock(&b->mu);
	}
	stream_decoder_destroy(dec);
	return NULL;
}

/* ---- inserting ---- */

/* Inserts n items in stream order, their e-mail records at ep; the
 * addresses of e-mail keys seen for the first time go to the
 * generation's list. */
static int insert_items(struct builder *b, struct index *ix,
			const struct item *items, size_t n, const uint8_t *ep)
{
	for (size_t i = 0; i < n && i < PREFETCH_AHEAD; i++)
		index_prefetch(ix, &items[i].key);
	for (size_t i = 0; i < n; i++) {
		if (i + PREFETCH_AHEAD < n)
			index_prefetch(ix, &items[i + PREFETCH_AHEAD].key);
		const struct item *it = &items[i];
		struct consent_value v = {
			.status = it->status,
			.source = it->source,
			.consent_date = INDEX_EPOCH + (int64_t)it->date_off,
		};
		int rc = index_apply_writer(ix, &it->key, &v);
		if (rc < 0)
			return rc;
		if (!it->is_email)
			continue;
		uint32_t brand;
		memcpy(&brand, ep, 4);
		uint8_t rtype = ep[4], len = ep[5];
		const uint8_t *addr = ep + EMAIL_REC_HEAD;
		ep += EMAIL_REC_HEAD + len;
		if (rc != INDEX_INSERTED)
			continue;
		rc = generation_email_add(b->out, brand, rtype,
					  (const char *)addr, len);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static uint64_t capacity_for(uint64_t records);

/* The table for capacity records with the build's secret: anonymous, or
 * a working file of work_dir (build_index_work). */
static int table_create(struct builder *b, uint64_t capacity,
			struct index **out)
{
	if (b->work_dir == NULL)
		return index_create(capacity, b->secret, out);
	char e[512];
	int rc = generation_work_create(b->work_dir, capacity, b->keymaker,
					out, e, sizeof(e));
	if (rc < 0)
		fprintf(stderr, "consentd: build: %s\n", e);
	return rc;
}

/* The table of a stated-count build, made again for capacity records
 * with the same secret, everything inserted so far merged in (phones from
 * the table, e-mails keyed again from the list). */
static int direct_grow(struct builder *b, uint64_t capacity)
{
	struct index *n = NULL;
	int rc = table_create(b, capacity, &n);
	if (rc < 0)
		return rc;
	rc = generation_merge(n, b->out, NULL, NULL, NULL, 0);
	if (rc < 0) {
		generation_work_remove(n);
		index_destroy(n);
		return rc;
	}
	generation_work_remove(b->out->ix);
	index_destroy(b->out->ix);
	b->out->ix = b->direct = n;
	return 0;
}

/* A pipe whose header stated its count: the table, when the first chunk
 * comes (the header came before it). Not one too large to make (a count
 * that is no count): staging then, as without one. */
static void direct_from_header(struct builder *b)
{
	/* No frame_mu (a worker may hold it while it waits for a slot this
	 * thread frees): the header was read by the worker that framed the
	 * first chunk, before it handed that chunk over under mu. */
	uint64_t stated = b->stated;
	b->may_state = false;
	if (stated == 0 || table_create(b, capacity_for(stated),
					&b->out->ix) < 0)
		return;
	b->direct = b->out->ix;
	b->stated_direct = true;
}

/* The sink's part of chunk c: its frames decoded again here (the
 * workers' decoded records are gone; only the first snapshot of a data
 * directory pays this), in stream order. */
static int sink_chunk(struct builder *b, struct chunk *c)
{
	/* b->watermark: read without frame_mu, as direct_from_header reads
	 * b->stated (written before the first chunk was handed over). */
	for (size_t f = 0; f < c->n_frames; f++) {
		struct stream_item batch;
		int rc = chunk_decode_frame(b->sink_dec, c, f, &batch);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < batch.n_consents; i++)
			batch.consents[i]->sequence = b->watermark;
		rc = b->sink->records(b->sink->ctx, batch.consents,
				      batch.n_consents, c->err, sizeof(c->err));
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Takes one staged chunk: inserts it (direct) or appends it to the
 * staged items. */
static int take_chunk(struct builder *b, struct chunk *c)
{
	if (b->sink != NULL) {
		int rc = sink_chunk(b, c);
		if (rc < 0)
			return rc;
	}
	b->n_items += c->n_items;
	if (b->may_state)
		direct_from_header(b);
	if (b->stated_direct) {
		for (;;) {
			int rc = insert_items(b, b->direct,
					      (const struct item *)c->items.p,
					      c->n_items, c->emails.p);
			if (rc != -ENOSPC)
				return rc;
			struct index_info info;
			index_info(b->direct, &info);
			rc = direct_grow(b, info.capacity + info.capacity / 2);
			if (rc < 0)
				return rc;
		}
	}
	if (b->direct != NULL)
		return insert_items(b, b->direct, (const struct item *)c->items.p,
				    c->n_items, c->emails.p);
	if (grow_reserve(&b->items, c->items.len) < 0 ||
	    grow_reserve(&b->emails, c->emails.len) < 0)
		return -ENOMEM;
	memcpy(b->items.p + b->items.len, c->items.p, c->items.len);
	b->items.len += c->items.len;
	if (c->emails.len > 0)
		memcpy(b->emails.p + b->emails.len, c->emails.p, c->emails.len);
	b->emails.len += c->emails.len;
	return 0;
}

static unsigned build_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : (unsigned)n;
}

/* Runs the workers and takes what they stage in stream order. Returns 0
 * when the whole stream, trailer included, was read and every record
 * staged or inserted; BUILD_RESTART when the direct table overflowed;
 * -errno with a message. */
static int read_stream(struct builder *b, unsigned workers, char *err,
		       size_t err_cap)
{
	pthread_t th[WORKERS_MAX];
	unsigned started = 0;
	int rc = 0;

	b->n_slots = 2 * (size_t)workers;
	b->slot = calloc(b->n_slots, sizeof(*b->slot));
	if (b->slot == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	stream_reader_raw_batches(b->reader, true);
	for (; started < workers; started++) {
		rc = pthread_create(&th[started], NULL, build_worker_main, b);
		if (rc != 0)
			break;
	}
	if (started == 0)
		return errmsg_fail(err, err_cap, -rc, "cannot start the decoder "
			    "threads%s: %s", rc == EAGAIN ? " (out of memory or "
			    "threads)" : "", strerror(rc));
	rc = 0;
	const char *why = NULL;
	for (uint64_t seq = 0;; seq++) {
		struct chunk *c = &b->slot[seq % b->n_slots];
		pthread_mutex_lock(&b->mu);
		while (!(c->ready && c->seq == seq) &&
		       !(b->ended && b->end_seq == seq))
			pthread_cond_wait(&b->cv, &b->mu);
		bool end = !(c->ready && c->seq == seq);
		pthread_mutex_unlock(&b->mu);
		if (end) {
			/* ended and end_* are not written again. */
			rc = b->end_rc;
			why = b->end_err;
			break;
		}
		rc = c->rc;
		why = c->err;
		if (rc == 0) {
			c->err[0] = '\0';
			rc = take_chunk(b, c);
			/* A full table means the hint was wrong: start
			 * again. */
			if (rc == -ENOSPC && b->direct != NULL &&
			    !b->stated_direct)
				rc = BUILD_RESTART;
			/* The sink's failures say why in c->err. */
			why = c->err[0] != '\0' ? c->err : NULL;
		}
		pthread_mutex_lock(&b->mu);
		c->ready = false;
		b->freed = seq + 1;
		if (rc != 0)
			b->stop = true;
		pthread_cond_broadcast(&b->cv);
		pthread_mutex_unlock(&b->mu);
		if (rc != 0)
			break;
	}
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
	for (unsigned t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	if (rc == BUILD_RESTART)
		return rc;
	if (rc < 0) {
		if (why == NULL && rc == -ENOMEM)
			return errmsg_fail(err, err_cap, rc, "out of memory "
				    "staging %" PRIu64 " records", b->n_items);
		if (why == NULL)
			return errmsg_fail(err, err_cap, rc, "inserting: %s",
				    strerror(-rc));
		return errmsg_fail(err, err_cap, rc, "%s", why);
	}
	if (!b->have_header)
		return errmsg_fail(err, err_cap, -EPROTO, "stream has no header");
	return 0;
}

/*
 * The record count of a snapshot file, read from its trailer before the
 * stream is, so that the table can be made first and records inserted as
 * they are decoded (no staging: at 10^8 records staging costs 3 GB and a
 * second pass). Only a hint: the reader still checks the trailer, and a
 * table the stream overflows makes the build start again with staging.
 * Regular files only (a pipe is read once); false when there is none.
 */
static bool trailer_hint(int fd, uint64_t *records)
{
	struct stat st;
	off_t at = lseek(fd, 0, SEEK_CUR);
	if (at < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size <= at)
		return false;
	uint8_t tail[48];
	size_t len = (uint64_t)(st.st_size - at) < sizeof(tail)
			     ? (size_t)(st.st_size - at) : sizeof(tail);
	if (pread(fd, tail, len, st.st_size - (off_t)len) != (ssize_t)len)
		return false;
	/* The trailer frame is the one that ends exactly at the end. */
	for (size_t i = 0; i + 2 <= len; i++) {
		uint64_t flen;
		int pl = stream_varint_decode(tail + i, len - i, &flen);
		if (pl <= 0 || flen != len - i - (size_t)pl)
			continue;
		Consent__V1__StreamFrame *f = consent__v1__stream_frame__unpack(
			NULL, (size_t)flen, tail + i + pl);
		if (f == NULL)
			continue;
		bool ok = f->frame_case == CONSENT__V1__STREAM_FRAME__FRAME_TRAILER;
		uint64_t n = ok ? f->trailer->record_count : 0;
		consent__v1__stream_frame__free_unpacked(f, NULL);
		/* A record takes well over 16 bytes: a larger count is not a
		 * trailer we believe, and must not size a huge table. */
		if (ok && n <= (uint64_t)(st.st_size - at) / 16) {
			*records = n;
			return true;
		}
	}
	return false;
}

static uint64_t capacity_for(uint64_t records)
{
	return records / 100 * HEADROOM_PCT +
	       (records % 100) * HEADROOM_PCT / 100 + 1;
}

/* One attempt: with a hint (records >= 0 from trailer_hint) the table is
 * made first and filled while reading; BUILD_RESTART if the hint proved
 * short.
 * Without (hint false), records are staged and inserted after the
 * trailer. */
static int build_once(int fd, unsigned workers, bool have_hint, uint64_t hint,
		      const char *work_dir, const struct build_sink *sink,
		      struct generation *out, struct build_result *res,
		      char *err, size_t err_cap)
{
	double t0 = clock_mono_s();
	struct builder *b = calloc(1, sizeof(*b));
	struct generation g = { 0 };
	uint8_t secret[INDEX_SECRET_BYTES];
	int rc;

	if (b == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	pthread_mutex_init(&b->frame_mu, NULL);
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	b->out = &g;
	b->secret = secret;
	b->work_dir = work_dir;
	b->may_state = !have_hint;
	b->sink = sink;
	if (sink != NULL) {
		if (stream_decoder_create(&b->sink_dec) < 0) {
			rc = errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
			goto out;
		}
		rc = sink->begin(sink->ctx, err, err_cap);
		if (rc < 0)
			goto out;
	}

	/* The generation's secret, in a one-bucket index that makes keys:
	 * they are valid in the real table, created with the same secret
	 * (index/table.h) once its size is known. */
	if (getrandom(secret, sizeof(secret), 0) != sizeof(secret)) {
		rc = errmsg_fail(err, err_cap, -EIO, "getrandom failed");
		goto out;
	}
	rc = index_create(0, secret, &b->keymaker);
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "creating the key maker: %s",
			  strerror(-rc));
		goto out;
	}
	if (have_hint) {
		rc = table_create(b, capacity_for(hint), &g.ix);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "a table for %" PRIu64
				  " records: %s", capacity_for(hint),
				  strerror(-rc));
			goto out;
		}
		b->direct = g.ix;
	}
	rc = stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &b->reader);
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "stream reader: %s", strerror(-rc));
		goto out;
	}
	rc = read_stream(b, workers, err, err_cap);
	if (rc != 0)
		goto out;
	/* Direct: the table was sized for hint records; more means less
	 * headroom than a generation must have, so start again. */
	if (have_hint && b->n_items > hint) {
		rc = BUILD_RESTART;
		goto out;
	}
	double t_read = clock_mono_s();

	struct index_info di;
	if (b->stated_direct)
		index_info(b->direct, &di);
	if (b->stated_direct && (di.capacity < capacity_for(b->n_items) ||
				 di.capacity / 2 > capacity_for(b->n_items))) {
		/* More than stated (a live peer's snapshot may hold a few
		 * more): the headroom a generation must have; far fewer: no
		 * generation twice the size it needs. */
		rc = direct_grow(b, capacity_for(b->n_items));
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "a table for %" PRIu64
				  " records: %s", capacity_for(b->n_items),
				  strerror(-rc));
			goto out;
		}
	}
	if (!have_hint && !b->stated_direct) {
		rc = table_create(b, capacity_for(b->n_items), &g.ix);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "a table for %" PRIu64
				  " records: %s", capacity_for(b->n_items),
				  strerror(-rc));
			goto out;
		}
		rc = insert_items(b, g.ix, (const struct item *)b->items.p,
				  b->items.len / sizeof(struct item), b->emails.p);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "inserting: %s",
				  strerror(-rc));
			goto out;
		}
	}
	/* The state the snapshot states travels with it (NULL: none). */
	g.origins = b->origins;
	b->origins = NULL;
	/* Not a generation of any directory yet: number 0. */
	index_set_meta_writer(g.ix, 0, b->watermark, b->created_at,
			      b->created_at);
	struct index_info info;
	index_info(g.ix, &info);
	if (res != NULL) {
		res->generation = 0;
		res->records = info.n_records;
		res->stream_records = b->n_items;
		res->watermark = b->watermark;
		res->created_at = b->created_at;
		res->seconds = clock_mono_s() - t0;
		res->read_seconds = t_read - t0;
		res->bytes = info.bytes;
	}
	*out = g;
	memset(&g, 0, sizeof(g));
	rc = 0;
out:
	generation_fini(&g);
	index_destroy(b->keymaker);
	origins_destroy(b->origins);
	if (b->sink_dec != NULL)
		stream_decoder_destroy(b->sink_dec);
	if (b->reader != NULL)
		stream_reader_destroy(b->reader);
	for (size_t i = 0; b->slot != NULL && i < b->n_slots; i++) {
		free(b->slot[i].raw);
		free(b->slot[i].frames);
		grow_free(&b->slot[i].items);
		grow_free(&b->slot[i].emails);
	}
	free(b->slot);
	grow_free(&b->items);
	grow_free(&b->emails);
	pthread_mutex_destroy(&b->frame_mu);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cv);
	free(b);
	explicit_bzero(secret, sizeof(secret));
	return rc;
}

int build_index(int fd, struct generation *out, struct build_result *res,
		char *err, size_t err_cap)
{
	return build_index_threads(fd, 0, out, res, err, err_cap);
}

static int build_run(int fd, unsigned threads, const char *work_dir,
		     const struct build_sink *sink, struct generation *out,
		     struct build_result *res, char *err, size_t err_cap);

int build_index_sink(int fd, const struct build_sink *sink,
		     struct generation *out, struct build_result *res,
		     char *err, size_t err_cap)
{
	return build_run(fd, 0, NULL, sink, out, res, err, err_cap);
}

int build_index_threads(int fd, unsigned threads, struct generation *out,
			struct build_result *res, char *err, size_t err_cap)
{
	return build_run(fd, threads, NULL, NULL, out, res, err, err_cap);
}

int build_index_work(int fd, const char *work_dir,
		     const struct build_sink *sink, struct generation *out,
		     struct build_result *res, char *err, size_t err_cap)
{
	return build_run(fd, 0, work_dir, sink, out, res, err, err_cap);
}

static int build_run(int fd, unsigned threads, const char *work_dir,
		     const struct build_sink *sink, struct generation *out,
		     struct build_result *res, char *err, size_t err_cap)
{
	unsigned workers = threads == 0 ? build_workers()
				: threads > WORKERS_MAX ? WORKERS_MAX : threads;
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	off_t start = lseek(fd, 0, SEEK_CUR);
	uint64_t hint = 0;
	bool have_hint = trailer_hint(fd, &hint);
	int rc = build_once(fd, workers, have_hint, hint, work_dir, sink, out,
			    res, err, err_cap);
	if (rc == BUILD_RESTART) {
		/* The hint was wrong (the reader would have refused a stream
		 * whose trailer disagrees with it, so this is a trailer we
		 * misread): the file is seekable, read it again, staging. */
		if (lseek(fd, start, SEEK_SET) != start)
			return errmsg_fail(err, err_cap, -errno, "seek: %s",
				    strerror(errno));
		if (err != NULL && err_cap > 0)
			err[0] = '\0';
		rc = build_once(fd, workers, false, 0, work_dir, sink, out, res,
				err, err_cap);
		/* Without a hint nothing is inserted before the trailer. */
		assert(rc != BUILD_RESTART);
	}
	return rc;
}

int build_snapshot(int fd, const char *dir, struct build_result *res,
		   char *err, size_t err_cap)
{
	struct build_result r;
	struct generation g;
	struct index_info info;
	uint64_t gen;
	double t0 = clock_mono_s();

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", dir, strerror(errno));
	int rc = generation_newest(dir, &gen);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: listing its generations: %s",
			    dir, strerror(-rc));
	/* §10: the snapshot a data directory begins from goes into its
	 * evidence store, as the server's first build does (a later one is
	 * not evidence of any change: README, Decisions). */
	struct history *h = NULL;
	struct build_history_sink hs;
	if (gen == 0) {
		char e[400];
		rc = history_open(dir, NULL, &h, e, sizeof(e));
		if (rc < 0)
			return errmsg_fail(err, err_cap, rc, "history: %s", e);
		build_history_sink_init(&hs, h, (int64_t)time(NULL));
	}
	rc = build_index_sink(fd, h != NULL ? &hs.sink : NULL, &g, &r, err,
			      err_cap);
	if (rc == 0 && h != NULL) {
		char e[400];
		/* The generation carries the head at its watermark. */
		struct history_state st;
		history_state(h, &st);
		if (st.records > 0) {
			g.has_chain = true;
			g.chain_sequence = r.watermark;
			memcpy(g.chain, st.head, sizeof(g.chain));
		}
		rc = history_sync(h, e, sizeof(e));
		if (rc < 0) {
			generation_fini(&g);
			errmsg_fail(err, err_cap, rc, "history: %s", e);
		}
	}
	history_close(h);
	if (rc < 0)
		return rc;
	/* The origins' cursors and the kind outlive a new snapshot (DESIGN
	 * §8): the newest generation's go into the new one. */
	if (gen > 0) {
		char e[400] = "";
		/* DIR's own state goes on with its own change log: a state
		 * the snapshot stated gives way to it. */
		origins_destroy(g.origins);
		g.origins = NULL;
		rc = generation_origins(dir, gen, &g.origins, e, sizeof(e));
		if (rc < 0) {
			generation_fini(&g);
			return errmsg_fail(err, err_cap, rc, "generation %" PRIu64
				    ": its origins cannot be carried over: %s",
				    gen, e);
		}
	}
	gen++;
	index_info(g.ix, &info);
	index_set_meta_writer(g.ix, gen, info.watermark, info.created_at,
			      info.data_as_of);
	rc = generation_publish(dir, &g, err, err_cap);
	generation_fini(&g);
	if (rc < 0)
		return rc;
	r.generation = gen;
	r.seconds = clock_mono_s() - t0;
	if (res != NULL)
		*res = r;
	return 0;
}

/* ---- the evidence store's sink ---- */

static int history_sink_begin(void *ctx, char *err, size_t err_cap)
{
	struct build_history_sink *s = ctx;
	char e[400];
	int rc = history_reset(s->h, e, sizeof(e));
	if (rc < 0)
		errmsg_fail(err, err_cap, rc, "history: %s", e);
	return rc;
}

static int history_sink_records(void *ctx, Consent__V1__Consent *const *records,
				size_t n, char *err, size_t err_cap)
{
	struct build_history_sink *s = ctx;
	char e[400];
	if (n == 0)
		return 0;
	int rc = history_append(s->h, records, n, s->applied_at, e, sizeof(e));
	if (rc < 0)
		errmsg_fail(err, err_cap, rc, "history: %s", e);
	return rc;
}

void build_history_sink_init(struct build_history_sink *s, struct history *h,
			     int64_t applied_at)
{
	*s = (struct build_history_sink){
		.h = h, .applied_at = applied_at,
		.sink = { .begin = history_sink_begin,
			  .records = history_sink_records, .ctx = s },
	};
}

/* ---- dump ---- */

struct dump_ctx {
	struct stream_writer *w;
	const struct index *ix;
	uint64_t records;
	uint64_t missing; /* e-mail lines whose key is not in the index */
};

static int dump_emit(struct dump_ctx *d, const char *recipient, int channel,
		     int rtype, uint32_t brand, const struct consent_value *v)
{
	Consent__V1__Consent m = CONSENT__V1__CONSENT__INIT;
	m.recipient = (char *)recipient;
	m.channel = (Consent__V1__Channel)channel;
	m.recipient_type = (Consent__V1__RecipientType)rtype;
	m.brand_code = brand;
	m.status = (Consent__V1__Status)v->status;
	m.source = (Consent__V1__Source)v->source;
	m.consent_date = v->consent_date;
	int rc = stream_writer_add(d->w, &m);
	if (rc == 0)
		d->records++;
	return rc;
}

static int dump_phone(const struct index_entry *e, void *arg)
{
	if (e->is_email)
		return 0;
	char text[24];
	snprintf(text, sizeof(text), "+%" PRIu64, e->phone);
	return dump_emit(arg, text, e->channel, e->rtype, e->brand_code,
			 &e->value);
}

static int dump_email(const struct generation_email *e, void *arg)
{
	struct dump_ctx *d = arg;
	struct index_key key;
	struct consent_value v;
	index_key_make(d->ix, &e->recipient, e->brand_code, e->rtype,
		       e->channel, &key);
	if (!index_lookup(d->ix, &key, &v)) {
		d->missing++;
		return -EPROTO;
	}
	return dump_emit(d, e->recipient.email, e->channel, e->rtype,
			 e->brand_code, &v);
}

/* The header's origins and origins_kind from o (NULL: none stated):
 * h->origins gets an array the caller frees with header_origins_free. */
static int header_origins_fill(Consent__V1__StreamHeader *h,
			       const struct origins *o)
{
	size_t n = o != NULL ? origins_count(o) : 0;
	h->origins_kind = o != NULL ? (uint32_t)origins_kind(o) : 0;
	h->n_origins = 0;
	h->origins = NULL;
	if (n == 0)
		return 0;
	/* One block: the pointers, the messages, then the strings. */
	size_t bytes = n * (sizeof(Consent__V1__OriginCursor *) +
			    sizeof(Consent__V1__OriginCursor) + 2);
	for (size_t i = 0; i < n; i++) {
		const char *on, *cu;
		size_t ol, cl;
		origins_at(o, i, &on, &ol, &cu, &cl);
		bytes += ol + cl;
	}
	uint8_t *p = malloc(bytes);
	if (p == NULL)
		return -ENOMEM;
	Consent__V1__OriginCursor **ptrs = (Consent__V1__OriginCursor **)p;
	Consent__V1__OriginCursor *msgs =
		(Consent__V1__OriginCursor *)(p + n * sizeof(*ptrs));
	char *text = (char *)(msgs + n);
	for (size_t i = 0; i < n; i++) {
		const char *on, *cu;
		size_t ol, cl;
		origins_at(o, i, &on, &ol, &cu, &cl);
		msgs[i] = (Consent__V1__OriginCursor)CONSENT__V1__ORIGIN_CURSOR__INIT;
		msgs[i].origin = text;
		memcpy(text, on, ol);
		text[ol] = '\0';
		text += ol + 1;
		msgs[i].cursor = text;
		memcpy(text, cu, cl);
		text[cl] = '\0';
		text += cl + 1;
		ptrs[i] = &msgs[i];
	}
	h->origins = ptrs;
	h->n_origins = n;
	return 0;
}

int build_dump_source(const struct build_dump_source *src, int fd,
		      uint64_t *records, char *err, size_t err_cap)
{
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	h.changes = false;
	h.sequence = src->watermark;
	h.created_at = src->created_at;
	h.origin = (char *)(src->origin != NULL ? src->origin : "");
	/* What the table holds now: a reader of a pipe sizes its table by
	 * it (a few more may come from a table the writer still fills). */
	struct index_info info;
	index_info(src->ix, &info);
	h.record_count = info.n_records;
	if (src->chain_hash != NULL) {
		h.chain_hash.data = (uint8_t *)src->chain_hash;
		h.chain_hash.len = GENERATION_CHAIN_BYTES;
	}
	if (header_origins_fill(&h, src->origins) < 0)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	struct dump_ctx d = { .ix = src->ix };
	int rc = stream_writer_create(fd, &h, STREAM_BATCH_DEFAULT, &d.w);
	free(h.origins);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "writing the stream: %s",
				   strerror(-rc));
	rc = index_foreach(src->ix, dump_phone, &d);
	if (rc == 0 && src->emails_fd >= 0)
		rc = generation_emails_foreach_fd(src->emails_fd,
						  src->emails_name, dump_email,
						  &d, err, err_cap);
	if (rc == 0 && src->extra != NULL)
		rc = generation_email_list_foreach(src->extra, dump_email, &d);
	if (rc < 0) {
		stream_writer_destroy(d.w);
		if (d.missing)
			return errmsg_fail(err, err_cap, -EPROTO, "an e-mail "
					   "address of the generation is not in "
					   "its index");
		if (err != NULL && err[0] == '\0')
			errmsg_fail(err, err_cap, rc, "writing the stream: %s",
				    strerror(-rc));
		return rc;
	}
	rc = stream_writer_finish(d.w);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "writing the stream: %s",
				   strerror(-rc));
	if (records != NULL)
		*records = d.records;
	return 0;
}

int build_dump(const char *dir, int fd, uint64_t *records, char *err,
	       size_t err_cap)
{
	struct index *ix;
	struct origins *o = NULL;
	uint64_t gen;
	char origin[64], name[4096];
	int efd = -1;
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	int rc = generation_open_newest(dir, INDEX_LOAD_MMAP, &ix, &gen, err,
				     err_cap);
	if (rc < 0)
		return rc;
	struct index_info info;
	index_info(ix, &info);
	uint64_t chain_seq = 0;
	uint8_t chain[GENERATION_CHAIN_BYTES];
	rc = generation_origins(dir, gen, &o, err, err_cap);
	int has_chain = 0;
	if (rc == 0)
		rc = has_chain = generation_chain(dir, gen, &chain_seq, chain,
						  err, err_cap);
	if (rc >= 0)
		rc = generation_emails_open(dir, gen, &efd, name, sizeof(name),
					    err, err_cap); /* 0 on success */
	if (rc == 0) {
		snprintf(origin, sizeof(origin), "dump of generation %" PRIu64,
			 gen);
		struct build_dump_source src = {
			.ix = ix, .emails_fd = efd, .emails_name = name,
			.watermark = info.watermark,
			.created_at = info.data_as_of, .origins = o,
			.origin = origin,
			/* The head at the generation's watermark only. */
			.chain_hash = has_chain == 1 &&
					      chain_seq == info.watermark
				      ? chain : NULL,
		};
		rc = build_dump_source(&src, fd, records, err, err_cap);
	}
	if (efd >= 0)
		close(efd);
	origins_destroy(o);
	index_destroy(ix);
	return rc;
}
