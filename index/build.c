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
 *  - a pipe (or a hint that failed): every record is staged as a 32-byte
 *    item in anonymous memory that grows by mremap without copying (and
 *    e-mail addresses in a second arena), and inserted after the trailer.
 * Staging costs 32 bytes a record (3.2 GB at 10^8), direct insertion
 * nothing, and it overlaps inserting with decoding.
 * Either way a bad record or a bad trailer rejects the whole stream before
 * anything is renamed into DIR.
 *
 * Decoding (protobuf-c) is the expensive part, so it runs on its own
 * thread: the decoder copies each batch's fields into a compact chunk
 * (16384+ records, so that hand-overs are rare) and passes it over a
 * small ring; the stager validates, normalises, keys, stages and (direct)
 * inserts. See decode_main and read_stream.
 *
 * The result is a generation in memory (index/generation.h: the table and
 * the addresses of its e-mail keys): the server's writer takes it as it
 * is, consentctl build publishes it (generation_publish) with the
 * newest generation's origins (index/origins.h: the kind and the cursors
 * outlive a snapshot, DESIGN §8).
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

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "index/generation.h"
#include "index/table.h"

#define HEADROOM_PCT 110     /* table capacity: records * 1.10 */
/* build_once's (and read_stream's) "the trailer hint was short, read the
 * stream again staging": positive, so that no -errno (a real -EAGAIN from
 * pthread_create, say) can be taken for it. */
#define BUILD_RESTART 1
#define PREFETCH_AHEAD 16    /* inserts in flight */
#define GROW_MIN (4u << 20)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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

/* A batch as the decoder hands it over: the fields of each consent,
 * copied out of the reader's arena (valid only until its next frame). */
struct rec {
	uint64_t offset;        /* its batch frame's stream offset */
	uint32_t brand_code;
	int32_t channel, rtype, status, source;
	int64_t consent_date;
	size_t recipient_off;   /* into the chunk's text, NUL-terminated */
	size_t recipient_len;
};

struct chunk {
	uint64_t first_record; /* stream ordinal of rec[0], from 0 */
	size_t n, cap;
	struct rec *rec;
	char *text;
	size_t text_len, text_cap;
};

#define RING 4
#define CHUNK_RECORDS 16384 /* records per hand-over, at least */

struct builder {
	/* Set before the threads start. */
	struct stream_reader *reader;
	struct index *keymaker; /* the generation's secret, one bucket */

	/* The ring between decoder and stager, guarded by mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct chunk ring[RING];
	unsigned head, tail;   /* tail - head chunks are full */
	bool decoder_done;
	bool stager_failed;    /* tells the decoder to stop */
	int decode_rc;         /* the reader's final result */
	char decode_err[512];

	/* Decoder's: the header. */
	bool have_header;
	uint64_t watermark;
	int64_t created_at;

	/* Stager's. */
	struct index *direct;  /* sized from the trailer hint: insert as we go */
	struct grow items;     /* staged items (direct: this chunk's only) */
	struct grow emails;    /* their addresses, in the same order */
	struct generation *out; /* the table, and the addresses inserted */
	uint64_t n_items;
	uint64_t n_emails;
	char stage_err[512];
};

/* Appends a batch's consents to chunk c. */
static int chunk_append(struct chunk *c, const struct stream_item *it)
{
	if (c->cap - c->n < it->n_consents) {
		size_t nc = c->cap ? c->cap : CHUNK_RECORDS;
		while (nc - c->n < it->n_consents)
			nc *= 2;
		struct rec *r = realloc(c->rec, nc * sizeof(*r));
		if (r == NULL)
			return -ENOMEM;
		c->rec = r;
		c->cap = nc;
	}
	for (size_t i = 0; i < it->n_consents; i++) {
		const Consent__V1__Consent *m = it->consents[i];
		const char *s = m->recipient ? m->recipient : "";
		size_t len = strlen(s); /* < the frame limit, 64 MiB */
		if (c->text_cap - c->text_len < len + 1) {
			size_t nc = c->text_cap ? c->text_cap : 1 << 20;
			while (nc - c->text_len < len + 1)
				nc *= 2;
			char *t = realloc(c->text, nc);
			if (t == NULL)
				return -ENOMEM;
			c->text = t;
			c->text_cap = nc;
		}
		memcpy(c->text + c->text_len, s, len);
		struct rec *r = &c->rec[c->n + i];
		r->offset = it->offset;
		r->brand_code = m->brand_code;
		r->channel = (int32_t)m->channel;
		r->rtype = (int32_t)m->recipient_type;
		r->status = (int32_t)m->status;
		r->source = (int32_t)m->source;
		r->consent_date = m->consent_date;
		r->recipient_off = c->text_len;
		r->recipient_len = len;
		c->text[c->text_len + len] = '\0';
		c->text_len += len + 1;
	}
	c->n += it->n_consents;
	return 0;
}

/* Hands the chunk at tail to the stager. */
static void ring_publish(struct builder *b)
{
	pthread_mutex_lock(&b->mu);
	b->tail++;
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

/* Decoder thread: reads frames, fills ring chunks. */
static void *decode_main(void *arg)
{
	struct builder *b = arg;
	struct stream_item it;
	struct chunk *cur = NULL;
	uint64_t records = 0;
	int rc;

	while ((rc = stream_reader_next(b->reader, &it)) == 1) {
		if (it.kind == STREAM_ITEM_HEADER) {
			if (it.header->changes) {
				rc = -EPROTO;
				snprintf(b->decode_err, sizeof(b->decode_err),
					 "offset %" PRIu64 ": a change stream, "
					 "not a snapshot", it.offset);
				break;
			}
			b->have_header = true;
			b->watermark = it.header->sequence;
			b->created_at = it.header->created_at;
			continue;
		}
		if (it.n_consents == 0)
			continue;
		if (cur == NULL) {
			pthread_mutex_lock(&b->mu);
			while (b->tail - b->head == RING && !b->stager_failed)
				pthread_cond_wait(&b->cv, &b->mu);
			bool stop = b->stager_failed;
			pthread_mutex_unlock(&b->mu);
			if (stop) {
				rc = 0;
				break;
			}
			/* The slot at tail is ours until ring_publish. */
			cur = &b->ring[b->tail % RING];
			cur->n = 0;
			cur->text_len = 0;
			cur->first_record = records;
		}
		rc = chunk_append(cur, &it);
		if (rc < 0) {
			snprintf(b->decode_err, sizeof(b->decode_err),
				 "offset %" PRIu64 ": out of memory", it.offset);
			break;
		}
		records += it.n_consents;
		/* Big chunks: a hand-over costs a wake-up (tens of µs on a
		 * VM), so it must be rare next to the work it carries. */
		if (cur->n >= CHUNK_RECORDS) {
			ring_publish(b);
			cur = NULL;
		}
	}
	if (rc == 0 && cur != NULL)
		ring_publish(b);
	if (rc < 0 && b->decode_err[0] == '\0')
		snprintf(b->decode_err, sizeof(b->decode_err), "%s",
			 stream_reader_error(b->reader));
	pthread_mutex_lock(&b->mu);
	b->decode_rc = rc;
	b->decoder_done = true;
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

static int stage_fail(struct builder *b, const struct chunk *c, size_t i,
		      const char *field, const char *why)
{
	snprintf(b->stage_err, sizeof(b->stage_err),
		 "offset %" PRIu64 ": record %" PRIu64 ": field %s: %s",
		 c->rec[i].offset, c->first_record + i + 1, field, why);
	return -EPROTO;
}

/* Stager: validates, normalises, keys and stages one chunk. */
static int stage_chunk(struct builder *b, const struct chunk *c)
{
	int rc = grow_reserve(&b->items, c->n * sizeof(struct item));
	if (rc < 0)
		return rc;
	struct item *out = (struct item *)(b->items.p + b->items.len);
	for (size_t i = 0; i < c->n; i++) {
		const struct rec *r = &c->rec[i];
		/* consent_validate reads a message; give it one. */
		Consent__V1__Consent m = CONSENT__V1__CONSENT__INIT;
		m.recipient = c->text + r->recipient_off;
		m.channel = (Consent__V1__Channel)r->channel;
		m.recipient_type = (Consent__V1__RecipientType)r->rtype;
		m.brand_code = r->brand_code;
		m.status = (Consent__V1__Status)r->status;
		m.source = (Consent__V1__Source)r->source;
		m.consent_date = r->consent_date;

		struct recipient rcp;
		const char *field, *why;
		/* Also what makes the value fit the index. */
		if (consent_validate(&m, &rcp, &field, &why) < 0)
			return stage_fail(b, c, i, field, why);

		struct item *it = &out[i];
		index_key_make(b->keymaker, &rcp, r->brand_code, r->rtype,
			       r->channel, &it->key);
		it->date_off = (uint32_t)(r->consent_date - INDEX_EPOCH);
		it->status = (uint8_t)r->status;
		it->source = (uint8_t)enums_source_stored(r->source);
		it->is_email = rcp.kind == RECIPIENT_EMAIL;
		it->reserved = 0;
		if (it->is_email) {
			rc = grow_reserve(&b->emails,
					  EMAIL_REC_HEAD + rcp.email_len);
			if (rc < 0)
				return rc;
			uint8_t *p = b->emails.p + b->emails.len;
			memcpy(p, &r->brand_code, 4);
			p[4] = (uint8_t)r->rtype;
			p[5] = (uint8_t)rcp.email_len;
			memcpy(p + EMAIL_REC_HEAD, rcp.email, rcp.email_len);
			b->emails.len += EMAIL_REC_HEAD + rcp.email_len;
			b->n_emails++;
		}
	}
	b->items.len += c->n * sizeof(struct item);
	b->n_items += c->n;
	return 0;
}

/* ---- inserting ---- */

/* Inserts the staged items in stream order; the addresses of e-mail keys
 * seen for the first time go to the generation's list. Then forgets
 * them. */
static int insert_staged(struct builder *b, struct index *ix)
{
	const struct item *items = (const struct item *)b->items.p;
	const uint8_t *ep = b->emails.p;
	size_t n = b->items.len / sizeof(struct item);

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
	b->items.len = 0;
	b->emails.len = 0;
	return 0;
}

/* Runs the decoder thread and stages (direct: inserts) what it hands
 * over. Returns 0 when the whole stream, trailer included, was read and
 * every record staged or inserted; BUILD_RESTART when the direct table
 * overflowed; -errno with a message. */
static int read_stream(struct builder *b, char *err, size_t err_cap)
{
	pthread_t th;
	int rc = pthread_create(&th, NULL, decode_main, b);
	if (rc != 0)
		return errmsg_fail(err, err_cap, -rc, "cannot start the decoder "
			    "thread%s: %s", rc == EAGAIN ? " (out of memory or "
			    "threads)" : "", strerror(rc));
	int stage_rc = 0;
	for (;;) {
		pthread_mutex_lock(&b->mu);
		while (b->tail == b->head && !b->decoder_done)
			pthread_cond_wait(&b->cv, &b->mu);
		bool have = b->tail != b->head;
		pthread_mutex_unlock(&b->mu);
		if (!have)
			break;
		/* The slot at head is ours until we release it below. */
		stage_rc = stage_chunk(b, &b->ring[b->head % RING]);
		pthread_mutex_lock(&b->mu);
		b->head++;
		if (stage_rc < 0)
			b->stager_failed = true;
		pthread_cond_broadcast(&b->cv);
		pthread_mutex_unlock(&b->mu);
		/* Direct: insert while the decoder works on the next chunk.
		 * A full table means the hint was wrong: start again. */
		if (stage_rc == 0 && b->direct != NULL) {
			stage_rc = insert_staged(b, b->direct);
			if (stage_rc == -ENOSPC)
				stage_rc = BUILD_RESTART;
		}
		if (stage_rc == 0)
			continue;
		pthread_mutex_lock(&b->mu);
		b->stager_failed = true;
		pthread_cond_broadcast(&b->cv);
		pthread_mutex_unlock(&b->mu);
		break;
	}
	pthread_join(th, NULL);
	if (stage_rc == BUILD_RESTART)
		return stage_rc;
	if (stage_rc < 0) {
		if (stage_rc == -ENOMEM)
			return errmsg_fail(err, err_cap, stage_rc,
				    "out of memory staging %" PRIu64 " records",
				    b->n_items);
		return errmsg_fail(err, err_cap, stage_rc, "%s", b->stage_err);
	}
	if (b->decode_rc < 0)
		return errmsg_fail(err, err_cap, b->decode_rc, "%s", b->decode_err);
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
static int build_once(int fd, bool have_hint, uint64_t hint,
		      struct generation *out, struct build_result *res,
		      char *err, size_t err_cap)
{
	double t0 = now_s();
	struct builder *b = calloc(1, sizeof(*b));
	struct generation g = { 0 };
	uint8_t secret[INDEX_SECRET_BYTES];
	int rc;

	if (b == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	b->out = &g;

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
		rc = index_create(capacity_for(hint), secret, &g.ix);
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
	rc = read_stream(b, err, err_cap);
	if (rc != 0)
		goto out;
	/* Direct: the table was sized for hint records; more means less
	 * headroom than a generation must have, so start again. */
	if (have_hint && b->n_items > hint) {
		rc = BUILD_RESTART;
		goto out;
	}
	double t_read = now_s();

	if (!have_hint) {
		rc = index_create(capacity_for(b->n_items), secret, &g.ix);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "a table for %" PRIu64
				  " records: %s", capacity_for(b->n_items),
				  strerror(-rc));
			goto out;
		}
		rc = insert_staged(b, g.ix);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "inserting: %s",
				  strerror(-rc));
			goto out;
		}
	}
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
		res->seconds = now_s() - t0;
		res->read_seconds = t_read - t0;
		res->bytes = info.bytes;
	}
	*out = g;
	memset(&g, 0, sizeof(g));
	rc = 0;
out:
	generation_fini(&g);
	index_destroy(b->keymaker);
	if (b->reader != NULL)
		stream_reader_destroy(b->reader);
	for (int i = 0; i < RING; i++) {
		free(b->ring[i].rec);
		free(b->ring[i].text);
	}
	grow_free(&b->items);
	grow_free(&b->emails);
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cv);
	free(b);
	explicit_bzero(secret, sizeof(secret));
	return rc;
}

int build_index(int fd, struct generation *out, struct build_result *res,
		char *err, size_t err_cap)
{
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	off_t start = lseek(fd, 0, SEEK_CUR);
	uint64_t hint = 0;
	bool have_hint = trailer_hint(fd, &hint);
	int rc = build_once(fd, have_hint, hint, out, res, err, err_cap);
	if (rc == BUILD_RESTART) {
		/* The hint was wrong (the reader would have refused a stream
		 * whose trailer disagrees with it, so this is a trailer we
		 * misread): the file is seekable, read it again, staging. */
		if (lseek(fd, start, SEEK_SET) != start)
			return errmsg_fail(err, err_cap, -errno, "seek: %s",
				    strerror(errno));
		if (err != NULL && err_cap > 0)
			err[0] = '\0';
		rc = build_once(fd, false, 0, out, res, err, err_cap);
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
	double t0 = now_s();

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", dir, strerror(errno));
	int rc = build_index(fd, &g, &r, err, err_cap);
	if (rc < 0)
		return rc;
	rc = generation_newest(dir, &gen);
	if (rc < 0) {
		generation_fini(&g);
		return errmsg_fail(err, err_cap, rc, "%s: listing its generations: %s",
			    dir, strerror(-rc));
	}
	/* The origins' cursors and the kind outlive a new snapshot (DESIGN
	 * §8): the newest generation's go into the new one. */
	if (gen > 0) {
		char e[400] = "";
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
	r.seconds = now_s() - t0;
	if (res != NULL)
		*res = r;
	return 0;
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

int build_dump(const char *dir, int fd, uint64_t *records, char *err,
	       size_t err_cap)
{
	struct index *ix;
	uint64_t gen;
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	int rc = generation_open_newest(dir, INDEX_LOAD_MMAP, &ix, &gen, err,
				     err_cap);
	if (rc < 0)
		return rc;
	struct index_info info;
	index_info(ix, &info);

	char origin[64];
	snprintf(origin, sizeof(origin), "dump of generation %" PRIu64, gen);
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	h.changes = false;
	h.sequence = info.watermark;
	h.created_at = info.data_as_of;
	h.origin = origin;
	struct dump_ctx d = { .ix = ix };
	rc = stream_writer_create(fd, &h, STREAM_BATCH_DEFAULT, &d.w);
	if (rc < 0) {
		index_destroy(ix);
		return errmsg_fail(err, err_cap, rc, "writing the stream: %s",
			    strerror(-rc));
	}
	rc = index_foreach(ix, dump_phone, &d);
	if (rc == 0)
		rc = generation_emails_foreach(dir, gen, dump_email, &d, err,
					    err_cap);
	if (rc < 0) {
		stream_writer_destroy(d.w);
		index_destroy(ix);
		if (d.missing)
			return errmsg_fail(err, err_cap, -EPROTO, "generation %" PRIu64
				    ": an e-mail of its emails file is not in "
				    "its index", gen);
		if (err != NULL && err[0] == '\0')
			errmsg_fail(err, err_cap, rc, "writing the stream: %s",
			     strerror(-rc));
		return rc;
	}
	rc = stream_writer_finish(d.w);
	index_destroy(ix);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "writing the stream: %s",
			    strerror(-rc));
	if (records != NULL)
		*records = d.records;
	return 0;
}
