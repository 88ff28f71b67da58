/*
 * stream_test: the snapshot/change stream reader and writer (core/stream.c)
 * and consent_validate. Streams go through real fds: memfds for whole
 * inputs, pipes fed by a writer thread for input split at every byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/stream.h"
#include "tests/check.h"

/* ---- building streams ---- */

struct consent_text {
	char recipient[64];
	char txid[40];
};

/* Record i of a varied but valid test set. */
static void make_consent(uint64_t i, Consent__V1__Consent *c,
			 struct consent_text *t)
{
	consent__v1__consent__init(c);
	if (i % 5 == 4) {
		snprintf(t->recipient, sizeof(t->recipient),
			 "user%llu@example%llu.com", (unsigned long long)i,
			 (unsigned long long)(i % 7));
		c->channel = CONSENT__V1__CHANNEL__EPOSTA;
	} else {
		snprintf(t->recipient, sizeof(t->recipient), "+90532%07llu",
			 (unsigned long long)(i % 10000000));
		c->channel = i % 2 ? CONSENT__V1__CHANNEL__MESAJ
				   : CONSENT__V1__CHANNEL__ARAMA;
	}
	snprintf(t->txid, sizeof(t->txid), "tx-%016llx",
		 (unsigned long long)(i * 0x9e3779b97f4a7c15ull));
	c->recipient = t->recipient;
	c->transaction_id = i % 3 ? t->txid : (char *)"";
	c->recipient_type = i % 4 == 0 ? CONSENT__V1__RECIPIENT_TYPE__TACIR
				       : CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	c->brand_code = 100000 + (uint32_t)(i % 97);
	c->iys_code = 700000 + (uint32_t)(i % 13);
	c->status = i % 6 == 0 ? CONSENT__V1__STATUS__RET : CONSENT__V1__STATUS__ONAY;
	c->source = (Consent__V1__Source)(i % 11 == 0 ? 12 : 1 + i % 9);
	c->consent_date = 1430427600 + (int64_t)(i * 7919 % 300000000);
	c->creation_date = c->consent_date + (int64_t)(i % 1000);
	c->sequence = i % 2 ? i + 1 : 0;
}

static int memfd(void)
{
	int fd = memfd_create("stream_test", MFD_CLOEXEC);
	if (fd < 0) {
		perror("memfd_create");
		exit(1);
	}
	return fd;
}

/* The whole contents of fd (from 0), in a malloc'd buffer. */
static uint8_t *slurp(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	uint8_t *p = malloc(end > 0 ? (size_t)end : 1);
	if (!p || pread(fd, p, (size_t)end, 0) != end) {
		perror("slurp");
		exit(1);
	}
	*len = (size_t)end;
	return p;
}

/* Writes n test records (from first) as a stream; returns its bytes. */
static uint8_t *make_stream(uint64_t first, uint64_t n, size_t batch,
			    bool changes, size_t *len)
{
	int fd = memfd();
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = 1;
	h.changes = changes;
	h.sequence = changes ? 41 : 7;
	h.created_at = 1700000000;
	h.origin = (char *)"stream_test";
	struct stream_writer *w;
	int rc = stream_writer_create(fd, &h, batch, &w);
	CHECK(rc == 0);
	for (uint64_t i = first; i < first + n && rc == 0; i++) {
		Consent__V1__Consent c;
		struct consent_text t;
		make_consent(i, &c, &t);
		rc = stream_writer_add(w, &c);
		CHECK(rc == 0);
	}
	CHECK(stream_writer_finish(w) == 0);
	uint8_t *p = slurp(fd, len);
	close(fd);
	return p;
}

static int fd_of_bytes(const uint8_t *p, size_t len)
{
	int fd = memfd();
	if (len && write(fd, p, len) != (ssize_t)len) {
		perror("write");
		exit(1);
	}
	lseek(fd, 0, SEEK_SET);
	return fd;
}

struct read_result {
	int rc;
	uint64_t records;
	uint64_t fields_hash; /* over every field of every record, in order */
	bool header_seen;
	bool trailer_seen;
	char err[256];
};

static uint64_t hash_consent(uint64_t h, const Consent__V1__Consent *c)
{
	uint64_t v[9] = { c->channel, c->recipient_type, c->brand_code,
			  c->iys_code, c->status, c->source,
			  (uint64_t)c->consent_date, (uint64_t)c->creation_date,
			  c->sequence };
	h = XXH3_64bits_withSeed(v, sizeof(v), h);
	h = XXH3_64bits_withSeed(c->recipient, strlen(c->recipient) + 1, h);
	return XXH3_64bits_withSeed(c->transaction_id,
				    strlen(c->transaction_id) + 1, h);
}

/* Reads a whole stream from fd. */
static void read_fd(int fd, size_t max_frame, bool require_trailer,
		    struct read_result *res)
{
	struct stream_reader *r;
	struct stream_item it;

	memset(res, 0, sizeof(*res));
	CHECK(stream_reader_create(fd, max_frame, require_trailer, &r) == 0);
	int rc;
	int guard = 0;
	while ((rc = stream_reader_next(r, &it)) == 1 && guard++ < 10000000) {
		if (it.kind == STREAM_ITEM_HEADER) {
			res->header_seen = true;
			continue;
		}
		for (size_t k = 0; k < it.n_consents; k++)
			res->fields_hash = hash_consent(res->fields_hash,
							it.consents[k]);
		res->records += it.n_consents;
	}
	res->rc = rc;
	res->trailer_seen = stream_reader_trailer(r) != NULL;
	snprintf(res->err, sizeof(res->err), "%s", stream_reader_error(r));
	/* A finished or failed reader keeps saying so. */
	CHECK(stream_reader_next(r, &it) == rc);
	stream_reader_destroy(r);
}

/* read_fd with raw batches, each decoded by a stream_decoder as it comes
 * (as the builder's workers do, in stream order): a decoder's failure
 * ends the read there, as the reader's own would. */
static void read_fd_raw(int fd, bool require_trailer, struct read_result *res)
{
	struct stream_reader *r;
	struct stream_decoder *d;
	struct stream_item it, batch;

	memset(res, 0, sizeof(*res));
	CHECK(stream_reader_create(fd, 0, require_trailer, &r) == 0);
	CHECK(stream_decoder_create(&d) == 0);
	stream_reader_raw_batches(r, true);
	int rc;
	while ((rc = stream_reader_next(r, &it)) == 1) {
		if (it.kind == STREAM_ITEM_HEADER) {
			res->header_seen = true;
			continue;
		}
		if (it.kind == STREAM_ITEM_RAW_BATCH) {
			rc = stream_decoder_batch(d, &it, &batch, res->err,
						  sizeof(res->err));
			if (rc < 0)
				break;
			CHECK(batch.offset == it.offset &&
			      batch.n_consents == it.n_consents);
			it = batch;
		}
		for (size_t k = 0; k < it.n_consents; k++)
			res->fields_hash = hash_consent(res->fields_hash,
							it.consents[k]);
		res->records += it.n_consents;
	}
	res->rc = rc;
	res->trailer_seen = stream_reader_trailer(r) != NULL;
	if (rc >= 0 || res->err[0] == '\0')
		snprintf(res->err, sizeof(res->err), "%s", stream_reader_error(r));
	stream_decoder_destroy(d);
	stream_reader_destroy(r);
}

/* Raw batches read to the same records, and fail with the same code and
 * message, as decoded ones. */
static void expect_raw_agrees(const uint8_t *p, size_t len, const char *what)
{
	struct read_result a, b;
	int fd = fd_of_bytes(p, len);
	read_fd(fd, 0, true, &a);
	lseek(fd, 0, SEEK_SET);
	read_fd_raw(fd, true, &b);
	close(fd);
	CHECKF(a.rc == b.rc && strcmp(a.err, b.err) == 0 &&
	       a.records == b.records && a.fields_hash == b.fields_hash &&
	       a.trailer_seen == b.trailer_seen,
	       "%s: decoded %d '%s' %" PRIu64 ", raw %d '%s' %" PRIu64, what,
	       a.rc, a.err, a.records, b.rc, b.err, b.records);
}

static void read_bytes(const uint8_t *p, size_t len, bool require_trailer,
		       struct read_result *res)
{
	int fd = fd_of_bytes(p, len);
	read_fd(fd, 0, require_trailer, res);
	close(fd);
}

/* Offsets of every frame's start in p, and len at the end. */
static size_t frame_offsets(const uint8_t *p, size_t len, size_t *offs,
			    size_t cap)
{
	size_t n = 0, at = 0;
	while (at < len && n < cap) {
		uint64_t flen;
		int k = stream_varint_decode(p + at, len - at, &flen);
		CHECK(k > 0);
		if (k <= 0)
			break;
		offs[n++] = at;
		at += (size_t)k + flen;
	}
	CHECK(at == len);
	if (n < cap)
		offs[n++] = len;
	return n;
}

static uint64_t expected_hash(uint64_t first, uint64_t n)
{
	uint64_t h = 0;
	for (uint64_t i = first; i < first + n; i++) {
		Consent__V1__Consent c;
		struct consent_text t;
		make_consent(i, &c, &t);
		h = hash_consent(h, &c);
	}
	return h;
}

/* ---- tests ---- */

static void test_varint(void)
{
	const uint64_t vals[] = { 0, 1, 127, 128, 300, 16383, 16384,
				  (1ull << 32) - 1, 1ull << 35, UINT64_MAX };
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		uint8_t b[10];
		uint64_t v = 0;
		size_t n = stream_varint_encode(vals[i], b);
		CHECK(n >= 1 && n <= 10);
		CHECK(stream_varint_decode(b, n, &v) == (int)n);
		CHECK(v == vals[i]);
		/* Any proper prefix asks for more. */
		for (size_t k = 0; k < n; k++)
			CHECK(stream_varint_decode(b, k, &v) == 0);
	}
	uint8_t eleven[11];
	memset(eleven, 0x80, sizeof(eleven));
	uint64_t v;
	CHECK(stream_varint_decode(eleven, sizeof(eleven), &v) == -EPROTO);
	/* Ten bytes whose last carries more than the 64th bit. */
	uint8_t over[10];
	memset(over, 0xff, 9);
	over[9] = 0x02;
	CHECK(stream_varint_decode(over, 10, &v) == -EPROTO);
}

static void test_round_trip(void)
{
	const uint64_t n = 5003;
	size_t len;
	uint8_t *p = make_stream(0, n, 100, false, &len);
	int fd = fd_of_bytes(p, len);
	struct stream_reader *r;
	struct stream_item it;
	CHECK(stream_reader_create(fd, 0, true, &r) == 0);
	CHECK(stream_reader_next(r, &it) == 1);
	CHECK(it.kind == STREAM_ITEM_HEADER && it.offset == 0);
	CHECK(it.header->format_version == 1);
	CHECK(!it.header->changes);
	CHECK(it.header->sequence == 7);
	CHECK(it.header->created_at == 1700000000);
	CHECK_STREQ(it.header->origin, "stream_test");
	uint64_t i = 0, batches = 0, last_off = 0;
	int rc;
	while ((rc = stream_reader_next(r, &it)) == 1) {
		CHECK(it.kind == STREAM_ITEM_BATCH);
		CHECK(it.offset > last_off);
		last_off = it.offset;
		batches++;
		CHECK(it.n_consents == 100 || (it.n_consents == n % 100));
		for (size_t k = 0; k < it.n_consents; k++, i++) {
			Consent__V1__Consent e;
			struct consent_text t;
			const Consent__V1__Consent *c = it.consents[k];
			make_consent(i, &e, &t);
			CHECK_STREQ(c->recipient, e.recipient);
			CHECK_STREQ(c->transaction_id, e.transaction_id);
			CHECK(c->channel == e.channel);
			CHECK(c->recipient_type == e.recipient_type);
			CHECK(c->brand_code == e.brand_code);
			CHECK(c->iys_code == e.iys_code);
			CHECK(c->status == e.status);
			CHECK(c->source == e.source);
			CHECK(c->consent_date == e.consent_date);
			CHECK(c->creation_date == e.creation_date);
			CHECK(c->sequence == e.sequence);
		}
	}
	CHECKF(rc == 0, "rc %d: %s", rc, stream_reader_error(r));
	CHECK(i == n);
	CHECK(batches == (n + 99) / 100);
	CHECK(stream_reader_records(r) == n);
	const Consent__V1__StreamTrailer *tr = stream_reader_trailer(r);
	CHECK(tr && tr->record_count == n);
	/* The trailer's checksum is XXH3-64 of every byte before it. */
	size_t offs[200];
	size_t nf = frame_offsets(p, len, offs, 200);
	CHECK(tr && tr->checksum == XXH3_64bits(p, offs[nf - 2]));
	stream_reader_destroy(r);
	close(fd);
	free(p);

	/* An empty snapshot: a header and a trailer. */
	p = make_stream(0, 0, 10, false, &len);
	struct read_result res;
	read_bytes(p, len, true, &res);
	CHECKF(res.rc == 0, "%s", res.err);
	CHECK(res.records == 0 && res.header_seen && res.trailer_seen);
	free(p);
}

/* The reader's results equal protobuf-c's own packing of whole frames:
 * the writer's hand-framed batches are what protobuf-c would write. */
static void test_batch_bytes_match_protobuf_c(void)
{
	size_t len;
	uint8_t *p = make_stream(10, 3, 10, false, &len);
	size_t offs[8];
	size_t nf = frame_offsets(p, len, offs, 8);
	CHECK(nf == 4); /* header, batch, trailer, end */
	Consent__V1__Consent c[3];
	Consent__V1__Consent *cp[3];
	struct consent_text t[3];
	for (int i = 0; i < 3; i++) {
		make_consent(10 + (uint64_t)i, &c[i], &t[i]);
		cp[i] = &c[i];
	}
	Consent__V1__ConsentBatch b = CONSENT__V1__CONSENT_BATCH__INIT;
	b.n_consents = 3;
	b.consents = cp;
	Consent__V1__StreamFrame f = CONSENT__V1__STREAM_FRAME__INIT;
	f.frame_case = CONSENT__V1__STREAM_FRAME__FRAME_BATCH;
	f.batch = &b;
	size_t sz = consent__v1__stream_frame__get_packed_size(&f);
	uint8_t *q = malloc(sz + 10);
	size_t pl = stream_varint_encode(sz, q);
	consent__v1__stream_frame__pack(&f, q + pl);
	CHECK(offs[2] - offs[1] == pl + sz);
	CHECK(memcmp(p + offs[1], q, pl + sz) == 0);
	free(q);
	free(p);
}

static void test_truncation(void)
{
	const uint64_t n = 40;
	for (int changes = 0; changes <= 1; changes++) {
		size_t len;
		uint8_t *p = make_stream(0, n, 7, changes, &len);
		size_t offs[32];
		size_t nf = frame_offsets(p, len, offs, 32);
		CHECK(nf == 1 + 1 + (n + 6) / 7 + 1);
		/* At every frame boundary short of the whole stream. */
		for (size_t f = 0; f + 1 < nf; f++) {
			struct read_result res;
			size_t cut = offs[f];
			read_bytes(p, cut, !changes, &res);
			if (changes && f >= 1) {
				/* A change stream may end on a boundary; the
				 * records of the whole batches are there. */
				CHECKF(res.rc == 0, "cut %zu: %s", cut, res.err);
				uint64_t want = f == 1 ? 0 : (f - 1) * 7;
				CHECK(res.records == (want > n ? n : want));
				CHECK(!res.trailer_seen);
			} else {
				CHECKF(res.rc == -EPROTO, "cut %zu rc %d", cut,
				       res.rc);
				CHECKF(strstr(res.err, "offset ") == res.err,
				       "cut %zu: '%s'", cut, res.err);
				if (f > 0)
					CHECKF(strstr(res.err, "no trailer"),
					       "cut %zu: '%s'", cut, res.err);
			}
			/* A reader that must have a trailer fails either
			 * way, at the cut. */
			read_bytes(p, cut, true, &res);
			CHECK(res.rc == -EPROTO);
			char want[64];
			snprintf(want, sizeof(want), "offset %zu:", cut);
			CHECKF(strncmp(res.err, want, strlen(want)) == 0,
			       "cut %zu: '%s'", cut, res.err);
		}
		/* Inside every frame, at every byte. */
		for (size_t f = 0; f + 1 < nf; f++) {
			for (size_t cut = offs[f] + 1; cut < offs[f + 1]; cut++) {
				struct read_result res;
				read_bytes(p, cut, false, &res);
				CHECKF(res.rc == -EPROTO, "cut %zu rc %d", cut,
				       res.rc);
				char want[64];
				snprintf(want, sizeof(want), "offset %zu:", offs[f]);
				CHECKF(strncmp(res.err, want, strlen(want)) == 0 &&
				       strstr(res.err, "truncated"),
				       "cut %zu: '%s'", cut, res.err);
			}
		}
		free(p);
	}
}

static void test_bit_flips(void)
{
	size_t len;
	uint8_t *p = make_stream(100, 30, 8, false, &len);
	uint8_t *q = malloc(len);
	int accepted = 0, tried = 0;
	for (size_t at = 0; at < len; at++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(q, p, len);
			q[at] ^= (uint8_t)(1u << bit);
			struct read_result res;
			read_bytes(q, len, true, &res);
			tried++;
			if (res.rc >= 0) {
				accepted++;
				fprintf(stderr, "flip at %zu bit %d accepted\n",
					at, bit);
			} else {
				CHECKF(strncmp(res.err, "offset ", 7) == 0,
				       "flip %zu/%d: '%s'", at, bit, res.err);
			}
		}
	}
	CHECK(accepted == 0);
	CHECK(tried == (int)len * 8);
	free(q);
	free(p);
}


/* ---- split feeds through a pipe ---- */

struct feeder {
	int fd;
	const uint8_t *p;
	size_t len;
	int mode; /* 0: one byte per write; 1: random sizes */
	unsigned seed;
};

static void *feed(void *arg)
{
	struct feeder *f = arg;
	size_t at = 0;
	while (at < f->len) {
		size_t n = 1;
		if (f->mode == 1) {
			f->seed = f->seed * 1103515245u + 12345u;
			n = 1 + (f->seed >> 8) % 9000;
		}
		if (n > f->len - at)
			n = f->len - at;
		ssize_t w = write(f->fd, f->p + at, n);
		if (w <= 0)
			break;
		at += (size_t)w;
	}
	close(f->fd);
	return NULL;
}

static void read_through_pipe(const uint8_t *p, size_t len, int mode,
			      bool require_trailer, struct read_result *res)
{
	int fds[2];
	CHECK(pipe(fds) == 0);
	struct feeder f = { fds[1], p, len, mode, 12345u + (unsigned)len };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, feed, &f) == 0);
	read_fd(fds[0], 0, require_trailer, res);
	/* Drain so the feeder never blocks on a reader that stopped early. */
	char sink[4096];
	while (read(fds[0], sink, sizeof(sink)) > 0)
		;
	pthread_join(t, NULL);
	close(fds[0]);
}

static void test_split_feeds(void)
{
	const uint64_t n = 2500;
	size_t len;
	uint8_t *p = make_stream(3, n, 250, false, &len);
	uint64_t want = expected_hash(3, n);
	for (int mode = 0; mode <= 1; mode++) {
		struct read_result res;
		read_through_pipe(p, len, mode, true, &res);
		CHECKF(res.rc == 0, "mode %d: %s", mode, res.err);
		CHECK(res.records == n);
		CHECK(res.fields_hash == want);
		CHECK(res.trailer_seen);
		/* Cut mid-stream through a pipe: an error at a frame. */
		read_through_pipe(p, len / 2, mode, true, &res);
		CHECK(res.rc == -EPROTO && strstr(res.err, "truncated"));
	}
	/* Larger frames than the reader's first buffer (64 KiB): it grows. */
	free(p);
	p = make_stream(0, 6000, 6000, false, &len);
	struct read_result res;
	read_through_pipe(p, len, 1, true, &res);
	CHECKF(res.rc == 0, "%s", res.err);
	CHECK(res.records == 6000 && res.fields_hash == expected_hash(0, 6000));
	free(p);
}

static size_t varint_len_test(uint64_t v)
{
	uint8_t b[10];
	return stream_varint_encode(v, b);
}

/* A frame of `body` (already a StreamFrame) with its length prefix. */
static size_t put_frame(uint8_t *out, const uint8_t *body, size_t n)
{
	size_t k = stream_varint_encode(n, out);
	memcpy(out + k, body, n);
	return k + n;
}

static size_t pack_frame(uint8_t *out, const Consent__V1__StreamFrame *f)
{
	uint8_t tmp[4096];
	size_t n = consent__v1__stream_frame__pack(f, tmp);
	return put_frame(out, tmp, n);
}

static size_t header_frame(uint8_t *out, uint32_t version, bool changes)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = version;
	h.changes = changes;
	Consent__V1__StreamFrame f = CONSENT__V1__STREAM_FRAME__INIT;
	f.frame_case = CONSENT__V1__STREAM_FRAME__FRAME_HEADER;
	f.header = &h;
	return pack_frame(out, &f);
}

static size_t trailer_frame(uint8_t *out, uint64_t count, uint64_t sum)
{
	Consent__V1__StreamTrailer t = CONSENT__V1__STREAM_TRAILER__INIT;
	t.record_count = count;
	t.checksum = sum;
	Consent__V1__StreamFrame f = CONSENT__V1__STREAM_FRAME__INIT;
	f.frame_case = CONSENT__V1__STREAM_FRAME__FRAME_TRAILER;
	f.trailer = &t;
	return pack_frame(out, &f);
}

/* Every bit flip of a stream, and the stream whole, read alike with raw
 * batches; and a batch that walks but does not decode (a consent with
 * wire type 7 inside) fails in the decoder with the reader's message. */
static void test_raw_batches(void)
{
	size_t len;
	uint8_t *p = make_stream(100, 30, 8, false, &len);
	uint8_t *q = malloc(len);
	char what[64];
	expect_raw_agrees(p, len, "whole");
	for (size_t at = 0; at < len; at++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(q, p, len);
			q[at] ^= (uint8_t)(1u << bit);
			snprintf(what, sizeof(what), "flip %zu/%d", at, bit);
			expect_raw_agrees(q, len, what);
		}
	}
	free(q);
	free(p);

	uint8_t b[256];
	size_t n = header_frame(b, 1, false);
	/* StreamFrame{batch: ConsentBatch{consents: [0x0f]}} */
	static const uint8_t bad[] = { 0x12, 0x03, 0x0a, 0x01, 0x0f };
	size_t at = n;
	n += put_frame(b + n, bad, sizeof(bad));
	n += trailer_frame(b + n, 1, 0);
	expect_raw_agrees(b, n, "undecodable consent");
	struct read_result res;
	int fd = fd_of_bytes(b, n);
	read_fd_raw(fd, true, &res);
	close(fd);
	snprintf(what, sizeof(what), "offset %zu: frame does not decode", at);
	CHECKF(res.rc == -EPROTO && strstr(res.err, what) == res.err, "'%s'",
	       res.err);
}

static void expect_error(const uint8_t *p, size_t len, bool require_trailer,
			 int code, const char *text)
{
	struct read_result res;
	read_bytes(p, len, require_trailer, &res);
	CHECKF(res.rc == code, "rc %d want %d: '%s'", res.rc, code, res.err);
	CHECKF(strstr(res.err, text) != NULL, "'%s' lacks '%s'", res.err, text);
}

static void test_structure_errors(void)
{
	uint8_t b[8192];
	size_t n;

	memset(b, 0, sizeof(b));
	expect_error(b, 0, false, -EPROTO, "offset 0: empty stream");

	/* A batch first. */
	size_t slen;
	uint8_t *s = make_stream(0, 3, 10, false, &slen);
	size_t offs[8];
	frame_offsets(s, slen, offs, 8);
	expect_error(s + offs[1], slen - offs[1], false, -EPROTO,
		     "offset 0: first frame is not a header");

	/* A second header. */
	n = header_frame(b, 1, true);
	size_t second = n;
	n += header_frame(b + n, 1, true);
	char want[64];
	snprintf(want, sizeof(want), "offset %zu: second header", second);
	expect_error(b, n, false, -EPROTO, want);

	/* An unknown format version. */
	n = header_frame(b, 2, false);
	expect_error(b, n, false, -EPROTO, "offset 0: header format_version 2");

	/* A frame that is not a StreamFrame (a field 2 varint claiming a
	 * sub-message, then garbage). */
	n = header_frame(b, 1, true);
	const uint8_t junk[] = { 0x12, 0x05, 0xff, 0xff, 0xff };
	size_t junk_at = n;
	n += put_frame(b + n, junk, sizeof(junk));
	snprintf(want, sizeof(want),
		 "offset %zu: frame does not decode as StreamFrame", junk_at);
	expect_error(b, n, false, -EPROTO, want);

	/* An empty frame holds nothing. */
	n = header_frame(b, 1, true);
	b[n++] = 0;
	expect_error(b, n, false, -EPROTO, "holds no header, batch or trailer");

	/* Trailer faults: count, checksum, bytes after. */
	n = header_frame(b, 1, false);
	uint64_t sum = XXH3_64bits(b, n);
	size_t tat = n;
	size_t good = n + trailer_frame(b + n, 0, sum);
	struct read_result res;
	read_bytes(b, good, true, &res);
	CHECKF(res.rc == 0, "%s", res.err);
	n = tat + trailer_frame(b + tat, 5, sum);
	snprintf(want, sizeof(want),
		 "offset %zu: trailer record count 5 != 0 records read", tat);
	expect_error(b, n, true, -EPROTO, want);
	n = tat + trailer_frame(b + tat, 0, sum ^ 1);
	expect_error(b, n, true, -EPROTO, "trailer checksum 0x");
	n = tat + trailer_frame(b + tat, 0, sum);
	CHECK(n == good);
	b[n++] = 0;
	snprintf(want, sizeof(want), "offset %zu: bytes after the trailer", good);
	expect_error(b, n, true, -EPROTO, want);

	/* A snapshot header needs a trailer even if the caller did not ask. */
	n = header_frame(b, 1, false);
	expect_error(b, n, false, -EPROTO, "no trailer (truncated stream)");
	/* A change stream may end without one. */
	n = header_frame(b, 1, true);
	read_bytes(b, n, false, &res);
	CHECKF(res.rc == 0 && res.header_seen, "%s", res.err);

	/* A frame that sets its oneof twice (two batches in one frame: the
	 * spec merges them, protobuf-c keeps the last): refused, naming it. */
	{
		uint64_t plen = 0;
		size_t vl = 0;
		const uint8_t *f = s + offs[1];

		while (f[vl] & 0x80) {
			plen |= (uint64_t)(f[vl] & 0x7f) << (7 * vl);
			vl++;
		}
		plen |= (uint64_t)f[vl] << (7 * vl);
		vl++;
		uint8_t *twice = malloc(2 * plen);
		memcpy(twice, f + vl, plen);
		memcpy(twice + plen, f + vl, plen);
		memcpy(b, s, offs[1]);
		n = offs[1] + put_frame(b + offs[1], twice, 2 * plen);
		snprintf(want, sizeof(want), "offset %zu: frame sets header, "
			 "batch or trailer more than once", offs[1]);
		expect_error(b, n, false, -EPROTO, want);
		free(twice);
	}

	/* A length prefix over 10 bytes. */
	memset(b, 0x80, 11);
	b[11] = 0;
	expect_error(b, 12, false, -EPROTO, "offset 0: frame length prefix");
	free(s);
}

static void test_oversize(void)
{
	uint8_t b[64];
	/* A 2^62-byte frame: refused from its prefix alone. Were it
	 * allocated first, the result would be -ENOMEM, not -EMSGSIZE. */
	size_t n = stream_varint_encode(1ull << 62, b);
	expect_error(b, n, false, -EMSGSIZE,
		     "offset 0: frame length 4611686018427387904 over the "
		     "67108864-byte limit");
	/* A caller's limit applies to every frame, header included. */
	size_t len;
	uint8_t *p = make_stream(0, 50, 50, false, &len);
	size_t offs[8];
	frame_offsets(p, len, offs, 8);
	int fd = fd_of_bytes(p, len);
	struct read_result res;
	read_fd(fd, offs[2] - offs[1] - 3, true, &res);
	close(fd);
	char want[64];
	snprintf(want, sizeof(want), "offset %zu: frame length", offs[1]);
	CHECKF(res.rc == -EMSGSIZE && strstr(res.err, want), "%s", res.err);
	free(p);

	/* A frame of 200000 empty consents (2 bytes each on the wire) would
	 * decode to over 20 MB: refused by the arena bound. */
	const size_t k = 200000;
	size_t body = 2 * k;
	uint8_t *big = malloc(body + 64);
	size_t h = header_frame(big, 1, true);
	size_t at = h;
	at += stream_varint_encode(1 + varint_len_test(body) + body, big + at);
	big[at++] = 0x12;
	at += stream_varint_encode(body, big + at);
	for (size_t i = 0; i < k; i++) {
		big[at++] = 0x0a;
		big[at++] = 0x00;
	}
	expect_error(big, at, false, -EMSGSIZE, "frame decodes to more than");
	free(big);
}

static void test_writer_errors(void)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	struct stream_writer *w = NULL;
	/* A closed pipe: -EPIPE (SIGPIPE is ignored in main). */
	int fds[2];
	CHECK(pipe(fds) == 0);
	close(fds[0]);
	CHECK(stream_writer_create(fds[1], &h, 10, &w) == -EPIPE);
	close(fds[1]);
	/* An fd not open for writing. */
	int fd = open("/dev/null", O_RDONLY);
	CHECK(stream_writer_create(fd, &h, 10, &w) == -EBADF);
	close(fd);
	/* Failing mid-stream: the error sticks and finish reports it. */
	CHECK(pipe(fds) == 0);
	CHECK(stream_writer_create(fds[1], &h, 2, &w) == 0);
	close(fds[0]);
	Consent__V1__Consent c;
	struct consent_text t;
	make_consent(1, &c, &t);
	CHECK(stream_writer_add(w, &c) == 0);
	CHECK(stream_writer_add(w, &c) == -EPIPE);
	CHECK(stream_writer_add(w, &c) == -EPIPE);
	CHECK(stream_writer_finish(w) == -EPIPE);
	close(fds[1]);
	/* A header left at format_version 0 is written as version 1. */
	fd = memfd();
	CHECK(stream_writer_create(fd, &h, 2, &w) == 0);
	CHECK(stream_writer_finish(w) == 0);
	lseek(fd, 0, SEEK_SET);
	struct read_result res;
	read_fd(fd, 0, true, &res);
	CHECKF(res.rc == 0, "%s", res.err);
	close(fd);
}

static void test_validate(void)
{
	Consent__V1__Consent c;
	struct consent_text t;
	struct recipient rc;
	const char *field, *why;

	make_consent(1, &c, &t); /* phone, MESAJ */
	CHECK(consent_validate(&c, &rc, &field, &why) == 0);
	CHECK(rc.kind == RECIPIENT_PHONE && rc.phone == 905320000001ull);
	make_consent(4, &c, &t); /* e-mail */
	CHECK(consent_validate(&c, &rc, &field, &why) == 0);
	CHECK(rc.kind == RECIPIENT_EMAIL);
	CHECK(consent_validate(&c, NULL, &field, &why) == 0);
	/* A national-form phone normalises. */
	make_consent(1, &c, &t);
	c.recipient = (char *)"0532 000 00 01";
	CHECK(consent_validate(&c, &rc, &field, &why) == 0);
	CHECK(rc.phone == 905320000001ull);

	struct {
		int which;
		const char *field;
	} faults[] = {
		{ 0, "recipient" }, { 1, "recipient" }, { 2, "channel" },
		{ 3, "channel" },   { 4, "channel" },   { 5, "channel" },
		{ 6, "recipient_type" }, { 7, "recipient_type" },
		{ 8, "status" },    { 9, "status" },    { 10, "brand_code" },
		{ 11, "consent_date" }, { 12, "consent_date" },
	};
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
		make_consent(1, &c, &t);
		switch (faults[i].which) {
		case 0: c.recipient = (char *)""; break;
		case 1: c.recipient = (char *)"not a recipient"; break;
		case 2: c.channel = CONSENT__V1__CHANNEL__EPOSTA; break;
		case 3: c.channel = 0; break;
		case 4: c.channel = (Consent__V1__Channel)9; break;
		case 5:
			c.recipient = (char *)"a@b.com";
			c.channel = CONSENT__V1__CHANNEL__MESAJ;
			break;
		case 6: c.recipient_type = 0; break;
		case 7: c.recipient_type = (Consent__V1__RecipientType)3; break;
		case 8: c.status = 0; break;
		case 9: c.status = (Consent__V1__Status)7; break;
		case 10: c.brand_code = 0; break;
		case 11: c.consent_date = 1430427599; break;
		case 12: c.consent_date = time(NULL) + 3 * 86400; break;
		}
		field = why = NULL;
		CHECKF(consent_validate(&c, &rc, &field, &why) == -EINVAL,
		       "fault %d", faults[i].which);
		CHECKF(field && strcmp(field, faults[i].field) == 0,
		       "fault %d: field %s", faults[i].which,
		       field ? field : "(null)");
		CHECK(why && *why);
	}
	/* The edges that pass: exactly 2015-05-01 00:00:00 +03:00, an
	 * unknown source, TACIR, RET. */
	make_consent(1, &c, &t);
	c.consent_date = 1430427600;
	c.source = (Consent__V1__Source)50;
	c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__TACIR;
	c.status = CONSENT__V1__STATUS__RET;
	CHECK(consent_validate(&c, &rc, &field, &why) == 0);
	c.consent_date = time(NULL);
	CHECK(consent_validate(&c, &rc, &field, &why) == 0);
	c.recipient = NULL;
	CHECK(consent_validate(&c, &rc, &field, &why) == -EINVAL);
}

/* change_validate: the sequence rules, consent_validate's, the size. */
static void test_change_validate(void)
{
	Consent__V1__Consent c;
	struct consent_text t;
	struct recipient rc;
	const char *field = NULL;
	char why[160];

	make_consent(1, &c, &t);
	c.sequence = 5;
	CHECK(change_validate(&c, 0, &rc, &field, why, sizeof(why)) == 0);
	CHECK(rc.kind == RECIPIENT_PHONE);
	CHECK(change_validate(&c, 4, NULL, &field, why, sizeof(why)) == 0);
	CHECK(change_validate(&c, 5, NULL, &field, why, sizeof(why)) == -EINVAL);
	CHECK(strcmp(field, "sequence") == 0 && strstr(why, "5 after 5") &&
	      strstr(why, "must increase"));
	c.sequence = 0;
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) == -EINVAL);
	CHECK(strcmp(field, "sequence") == 0 && strstr(why, "is 0"));
	c.sequence = 6;
	c.brand_code = 0;
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) == -EINVAL);
	CHECK(strcmp(field, "brand_code") == 0 && strcmp(why, "is 0") == 0);
	c.brand_code = 7;
	c.consent_date = CONSENT_DATE_MIN - 1;
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) == -EINVAL);
	CHECK(strcmp(field, "consent_date") == 0);
	c.consent_date = CONSENT_DATE_MIN;
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) == 0);
	/* One byte over the limit, then exactly at it. */
	static char pad[CHANGE_BYTES_MAX + 16];
	memset(pad, 'x', sizeof(pad) - 1);
	c.transaction_id = pad;
	size_t base = consent__v1__consent__get_packed_size(&c);
	size_t cut = sizeof(pad) - 1 - (base - CHANGE_BYTES_MAX);
	pad[cut] = '\0';
	CHECK(consent__v1__consent__get_packed_size(&c) == CHANGE_BYTES_MAX);
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) == 0);
	pad[cut] = 'x';
	pad[cut + 1] = '\0';
	CHECK(consent__v1__consent__get_packed_size(&c) == CHANGE_BYTES_MAX + 1);
	CHECK(change_validate(&c, 0, NULL, &field, why, sizeof(why)) ==
	      -EMSGSIZE);
	CHECK(strcmp(field, "size") == 0 && strstr(why, "over"));
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	RUN(test_varint);
	RUN(test_round_trip);
	RUN(test_batch_bytes_match_protobuf_c);
	RUN(test_truncation);
	RUN(test_bit_flips);
	RUN(test_raw_batches);
	RUN(test_split_feeds);
	RUN(test_structure_errors);
	RUN(test_oversize);
	RUN(test_writer_errors);
	RUN(test_validate);
	RUN(test_change_validate);
	return check_summary();
}
