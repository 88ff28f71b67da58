/*
 * build_test: snapshot streams (written with the stream writer) through
 * build_snapshot into a real data directory, back out with build_dump,
 * and the data directory's generations, verification and fallbacks.
 * CONSENTD_TEST_SCALE (default 1) scales the record counts.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/synth.h"
#include "index/build.h"
#include "index/generation.h"
#include "index/origins.h"
#include "index/table.h"
#include "tests/check.h"

static double scale = 1.0;
static char tmpdir[] = "/tmp/build_test.XXXXXX";
#define SEED 7

static uint64_t scaled(uint64_t n)
{
	uint64_t v = (uint64_t)((double)n * scale);
	return v ? v : 1;
}

static void tmp_path(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void to_consent(const struct synth_record *s, Consent__V1__Consent *c)
{
	consent__v1__consent__init(c);
	c->recipient = (char *)s->recipient;
	c->channel = (Consent__V1__Channel)s->channel;
	c->recipient_type = (Consent__V1__RecipientType)s->rtype;
	c->brand_code = s->brand_code;
	c->iys_code = s->iys_code;
	c->status = (Consent__V1__Status)s->status;
	c->source = (Consent__V1__Source)s->source;
	c->consent_date = s->consent_date;
	c->creation_date = s->creation_date;
}

enum damage {
	WHOLE = 0,
	BAD_RECORD,    /* record bad_at has a recipient that does not parse */
	BAD_TRAILER,   /* the trailer's checksum is off by one bit */
	NO_TRAILER,    /* the stream just stops after the last batch */
	SHORT_COUNT,   /* the trailer says a quarter of the records */
	BAD_TWO,       /* bad records at bad_at and near the end */
	BAD_AND_CUT,   /* a bad record at bad_at, and no trailer */
};

/* The header's record_count write_snapshot states (0: none). */
static uint64_t stated_count;

/* Writes records 0..n-1 of (SEED, n) to fd as a snapshot; returns 0. */
static int write_snapshot(int fd, uint64_t n, uint64_t watermark,
			  enum damage dmg, uint64_t bad_at)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	h.sequence = watermark;
	h.created_at = SYNTH_NOW;
	h.origin = "build_test";
	h.record_count = stated_count;
	struct stream_writer *w;
	int rc = stream_writer_create(fd, &h, 100, &w);
	if (rc < 0)
		return rc;
	for (uint64_t i = 0; i < n; i++) {
		struct synth_record s;
		Consent__V1__Consent c;
		synth_record(SEED, n, i, &s);
		to_consent(&s, &c);
		if ((dmg == BAD_RECORD || dmg == BAD_AND_CUT ||
		     dmg == BAD_TWO) && i == bad_at)
			c.recipient = "+90 53x";
		if (dmg == BAD_TWO && i == n - 5)
			c.recipient = "+90 53x";
		rc = stream_writer_add(w, &c);
		if (rc < 0) {
			stream_writer_destroy(w);
			return rc;
		}
	}
	/* NO_TRAILER: the caller cuts the trailer off the whole stream. */
	return stream_writer_finish(w);
}

/* A snapshot file for n records, possibly damaged. */
static void snapshot_file(const char *path, uint64_t n, uint64_t watermark,
			  enum damage dmg, uint64_t bad_at)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	int rc = write_snapshot(fd, n, watermark, dmg, bad_at);
	CHECK(rc >= 0);
	off_t len = lseek(fd, 0, SEEK_END);
	if (dmg == BAD_TRAILER) {
		/* The checksum's last varint byte: flip its lowest bit. */
		uint8_t last;
		CHECK(pread(fd, &last, 1, len - 1) == 1);
		last ^= 1;
		CHECK(pwrite(fd, &last, 1, len - 1) == 1);
	} else if (dmg == NO_TRAILER || dmg == SHORT_COUNT ||
		   dmg == BAD_AND_CUT) {
		/* The trailer frame is short (< 32 bytes): find the offset at
		 * which the rest parses as exactly one frame and cut there. */
		uint8_t tail[32];
		off_t from = len - (off_t)sizeof(tail);
		CHECK(pread(fd, tail, sizeof(tail), from) == (ssize_t)sizeof(tail));
		off_t cut = -1;
		for (size_t i = 0; i < sizeof(tail) - 2; i++) {
			uint64_t flen;
			int pl = stream_varint_decode(tail + i, sizeof(tail) - i,
						      &flen);
			if (pl > 0 && i + (size_t)pl + flen == sizeof(tail) &&
			    tail[i + (size_t)pl] == 0x1a) { /* field 3, LEN */
				cut = from + (off_t)i;
				break;
			}
		}
		CHECK(cut > 0);
		if (dmg == SHORT_COUNT && cut > 0) {
			/* The same checksum, a wrong count: the builder's
			 * trailer hint sizes the table too small, and only the
			 * reader's own check may decide what is wrong. */
			uint64_t flen;
			size_t i = (size_t)(cut - from);
			int pl = stream_varint_decode(tail + i, sizeof(tail) - i,
						      &flen);
			Consent__V1__StreamFrame *f =
				consent__v1__stream_frame__unpack(
					NULL, (size_t)flen, tail + i + (size_t)pl);
			CHECK(f != NULL && f->trailer != NULL);
			if (f != NULL && f->trailer != NULL) {
				f->trailer->record_count /= 4;
				uint8_t out[64];
				size_t body = consent__v1__stream_frame__pack(
					f, out + 10);
				size_t vl = stream_varint_encode(body, out);
				memmove(out + vl, out + 10, body);
				CHECK(pwrite(fd, out, vl + body, cut) ==
				      (ssize_t)(vl + body));
				cut += (off_t)(vl + body);
			}
			consent__v1__stream_frame__free_unpacked(f, NULL);
		}
		CHECK(ftruncate(fd, cut) == 0);
	}
	close(fd);
}

static int build_file(const char *snap, const char *dir,
		      struct build_result *res, char *err, size_t cap)
{
	int fd = open(snap, O_RDONLY);
	if (fd < 0)
		return -errno;
	int rc = build_snapshot(fd, dir, res, err, cap);
	close(fd);
	return rc;
}

/* Every record of (SEED, n) looks up to its own value. */
static uint64_t count_found(const struct index *ix, uint64_t n)
{
	uint64_t ok = 0;
	for (uint64_t i = 0; i < n; i++) {
		struct synth_record s;
		struct recipient r;
		const char *why;
		synth_record(SEED, n, i, &s);
		if (recipient_normalize(s.recipient, strlen(s.recipient), &r,
					&why) < 0)
			continue;
		struct index_key key;
		struct consent_value v;
		index_key_make(ix, &r, s.brand_code, s.rtype, s.channel, &key);
		ok += index_lookup(ix, &key, &v) && v.status == s.status &&
		      v.source == s.source && v.consent_date == s.consent_date;
	}
	return ok;
}

/* ---- a stream as a sorted list of canonical lines ---- */

struct lines {
	char **v;
	size_t n, cap;
};

static void lines_add(struct lines *l, const char *recipient, int channel,
		      int rtype, uint32_t brand, int status, int source,
		      int64_t date)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 1024;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
	}
	char buf[400];
	snprintf(buf, sizeof(buf), "%s|%d|%d|%u|%d|%d|%lld", recipient, channel,
		 rtype, brand, status, source, (long long)date);
	l->v[l->n++] = strdup(buf);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void lines_free(struct lines *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

static int read_lines(const char *path, struct lines *l, uint64_t *sequence)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	struct stream_reader *r;
	int rc = stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &r);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	struct stream_item it;
	while ((rc = stream_reader_next(r, &it)) == 1) {
		if (it.kind == STREAM_ITEM_HEADER) {
			*sequence = it.header->sequence;
			continue;
		}
		for (size_t i = 0; i < it.n_consents; i++) {
			const Consent__V1__Consent *c = it.consents[i];
			lines_add(l, c->recipient, c->channel, c->recipient_type,
				  c->brand_code, c->status, c->source,
				  c->consent_date);
		}
	}
	if (rc < 0)
		fprintf(stderr, "  %s: %s\n", path, stream_reader_error(r));
	stream_reader_destroy(r);
	close(fd);
	qsort(l->v, l->n, sizeof(*l->v), cmp_str);
	return rc;
}

/* ---- tests ---- */

static void test_build_and_dump(void)
{
	uint64_t n = scaled(30000);
	char snap[256], dir[256], dump[256], err[1024];
	tmp_path(snap, sizeof(snap), "snap");
	tmp_path(dir, sizeof(dir), "data");
	tmp_path(dump, sizeof(dump), "dump");
	snapshot_file(snap, n, 4242, WHOLE, 0);

	struct build_result res;
	int rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	CHECK(res.generation == 1 && res.records == n &&
	      res.stream_records == n && res.watermark == 4242 &&
	      res.created_at == SYNTH_NOW);
	uint64_t newest = 0;
	CHECK(generation_newest(dir, &newest) == 0 && newest == 1);

	for (int mode = INDEX_LOAD_ANON; mode <= INDEX_LOAD_MMAP; mode++) {
		struct index *ix;
		uint64_t gen = 0;
		rc = generation_open_newest(dir, (enum index_load_mode)mode, &ix,
					 &gen, err, sizeof(err));
		CHECKF(rc == 0, "%s", err);
		if (rc != 0)
			continue;
		CHECK(gen == 1);
		struct index_info info;
		index_info(ix, &info);
		CHECK(info.generation == 1 && info.watermark == 4242 &&
		      info.n_records == n && info.data_as_of == SYNTH_NOW);
		CHECK(count_found(ix, n) == n);
		/* An absent key of the same shape misses. */
		struct synth_record s;
		struct recipient r;
		const char *why;
		synth_absent(SEED, n, 3, &s);
		CHECK(recipient_normalize(s.recipient, strlen(s.recipient), &r,
					  &why) == 0);
		struct index_key key;
		struct consent_value v;
		index_key_make(ix, &r, s.brand_code, s.rtype, s.channel, &key);
		CHECK(!index_lookup(ix, &key, &v));
		index_destroy(ix);
	}
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* Dump: the same set of records (the fields the index keeps). */
	int fd = open(dump, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint64_t dumped = 0;
	rc = build_dump(dir, fd, &dumped, err, sizeof(err));
	close(fd);
	CHECKF(rc == 0, "%s", err);
	CHECK(dumped == n);
	struct lines in = { 0 }, out = { 0 };
	uint64_t seq_in = 0, seq_out = 0;
	CHECK(read_lines(snap, &in, &seq_in) == 0);
	CHECK(read_lines(dump, &out, &seq_out) == 0);
	CHECK(seq_out == 4242);
	CHECK(in.n == n && out.n == n);
	size_t diff = 0;
	for (size_t i = 0; i < in.n && i < out.n; i++)
		if (strcmp(in.v[i], out.v[i]) != 0 && diff++ < 3)
			fprintf(stderr, "  in  %s\n  out %s\n", in.v[i], out.v[i]);
	CHECKF(diff == 0, "%zu records differ", diff);
	lines_free(&in);
	lines_free(&out);

	/* The dump builds generation 2, which holds the same thing. */
	rc = build_file(dump, dir, &res, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	CHECK(res.generation == 2 && res.records == n && res.watermark == 4242);
	struct index *ix;
	uint64_t gen;
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, &gen, err,
				  sizeof(err)) == 0 && gen == 2);
	CHECK(count_found(ix, n) == n);
	index_destroy(ix);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);
}

/* No .tmp-gen directory is left behind in dir. */
static bool no_temp_dirs(const char *dir)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return false;
	bool clean = true;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, ".tmp", 4) == 0)
			clean = false;
	closedir(d);
	return clean;
}

static void test_rejected_whole(void)
{
	char snap[256], dir[256], err[1024];
	tmp_path(snap, sizeof(snap), "bad");
	tmp_path(dir, sizeof(dir), "data"); /* holds generations 1, 2 */
	uint64_t n = scaled(2000) + 300;
	struct build_result res;

	snapshot_file(snap, n, 1, BAD_RECORD, 250);
	int rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECK(rc == -EPROTO);
	CHECKF(strstr(err, "record 251: field recipient") != NULL &&
	       strstr(err, "offset ") == err, "message: %s", err);

	snapshot_file(snap, n, 1, BAD_TRAILER, 0);
	rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "offset") != NULL, "%d %s", rc, err);

	snapshot_file(snap, n, 1, NO_TRAILER, 0);
	rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "trailer") != NULL, "%d %s", rc, err);

	/* Past the builder's 16384-record hand-over, so the undersized
	 * table overflows before the reader reaches the trailer. */
	snapshot_file(snap, 40000, 1, SHORT_COUNT, 0);
	rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "record count") != NULL, "%d %s",
	       rc, err);

	/* An empty file and a change stream are not snapshots either. */
	int fd = open(snap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	close(fd);
	CHECK(build_file(snap, dir, &res, err, sizeof(err)) == -EPROTO);
	fd = open(snap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.changes = true;
	struct stream_writer *w;
	CHECK(stream_writer_create(fd, &h, 10, &w) == 0);
	CHECK(stream_writer_finish(w) == 0);
	close(fd);
	rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "change stream"), "%d %s", rc, err);

	uint64_t newest = 0;
	CHECK(generation_newest(dir, &newest) == 0 && newest == 2);
	CHECK(no_temp_dirs(dir));
	struct index *ix;
	uint64_t gen;
	CHECK(generation_open_newest(dir, INDEX_LOAD_MMAP, &ix, &gen, err,
				  sizeof(err)) == 0 && gen == 2);
	index_destroy(ix);
}

/* Equal keys in one snapshot: the order rule picks the survivor. */
/* Chunks of the build are 16384+ records and each worker stages its own:
 * any number of them must give the same records, the same first-seen
 * e-mail list, and the first fault in stream order. */
static void test_threads_agree(void)
{
	char snap[256], err[1024];
	tmp_path(snap, sizeof(snap), "threads");
	uint64_t n = 60000; /* 4 chunks: not scaled, the split is the point */
	snapshot_file(snap, n, 3, WHOLE, 0);
	struct generation one = { 0 };
	static const unsigned threads[] = { 1, 2, 5 };

	for (size_t k = 0; k < sizeof(threads) / sizeof(threads[0]); k++) {
		struct generation g = { 0 };
		struct build_result res;
		int fd = open(snap, O_RDONLY);
		CHECK(fd >= 0);
		int rc = build_index_threads(fd, threads[k], &g, &res, err,
					     sizeof(err));
		close(fd);
		CHECKF(rc == 0, "%u threads: %s", threads[k], err);
		if (rc != 0)
			continue;
		CHECK(res.records == n && res.stream_records == n &&
		      res.watermark == 3);
		CHECKF(count_found(g.ix, n) == n, "%u threads", threads[k]);
		if (k == 0) {
			one = g;
			continue;
		}
		CHECKF(g.extra.n == one.extra.n && g.extra.len == one.extra.len &&
		       memcmp(g.extra.p, one.extra.p, one.extra.len) == 0,
		       "%u threads: another e-mail list than one thread's",
		       threads[k]);
		generation_fini(&g);
	}
	CHECK(one.extra.n > 0);
	generation_fini(&one);

	/* Two bad records in chunks 1 and 3, or a bad record before a
	 * missing trailer: the earlier fault is the one named, whichever
	 * worker got there first. */
	for (int cut = 0; cut <= 1; cut++) {
		/* Cut: the bad record in the last chunk, the one the reader's
		 * failure ends. */
		uint64_t bad = cut ? 55000 : 20000;
		char want[64];
		snprintf(want, sizeof(want), "record %" PRIu64 ": field recipient",
			 bad + 1);
		snapshot_file(snap, n, 3, cut ? BAD_AND_CUT : BAD_TWO, bad);
		for (size_t k = 0; k < sizeof(threads) / sizeof(threads[0]); k++) {
			struct generation g = { 0 };
			int fd = open(snap, O_RDONLY);
			CHECK(fd >= 0);
			int rc = build_index_threads(fd, threads[k], &g, NULL,
						     err, sizeof(err));
			close(fd);
			CHECKF(rc == -EPROTO && strstr(err, want),
			       "%s, %u threads: %d %s", cut ? "cut" : "two",
			       threads[k], rc, err);
			CHECK(g.ix == NULL);
		}
	}
}

static void test_duplicates(void)
{
	char snap[256], dir[256], err[1024];
	tmp_path(snap, sizeof(snap), "dups");
	tmp_path(dir, sizeof(dir), "dupdata");
	int fd = open(snap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	struct stream_writer *w;
	CHECK(stream_writer_create(fd, &h, 2, &w) == 0);
	struct {
		const char *rcp;
		int ch, st, src;
		int64_t date;
	} recs[] = {
		{ "0532 123 45 67", CHANNEL_MESAJ, STATUS_ONAY, 6, 1600000000 },
		{ "+905321234567", CHANNEL_MESAJ, STATUS_RET, 34, 1500000000 },
		{ "905321234567", CHANNEL_MESAJ, STATUS_RET, 34, 1600000000 },
		{ "5321234567", CHANNEL_MESAJ, STATUS_ONAY, 7, 1600000000 },
		{ " A@Example.COM ", CHANNEL_EPOSTA, STATUS_ONAY, 6, 1600000000 },
		{ "a@example.com", CHANNEL_EPOSTA, STATUS_ONAY, 250, 1700000000 },
	};
	for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
		Consent__V1__Consent c = CONSENT__V1__CONSENT__INIT;
		c.recipient = (char *)recs[i].rcp;
		c.channel = (Consent__V1__Channel)recs[i].ch;
		c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
		c.brand_code = 77;
		c.status = (Consent__V1__Status)recs[i].st;
		c.source = (Consent__V1__Source)recs[i].src;
		c.consent_date = recs[i].date;
		CHECK(stream_writer_add(w, &c) == 0);
	}
	CHECK(stream_writer_finish(w) == 0);
	close(fd);
	struct build_result res;
	int rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	CHECK(res.records == 2 && res.stream_records == 6);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	struct index *ix;
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, NULL, err,
				  sizeof(err)) == 0);
	struct recipient r;
	const char *why;
	struct index_key key;
	struct consent_value v;
	recipient_normalize("+905321234567", 13, &r, &why);
	index_key_make(ix, &r, 77, RTYPE_BIREYSEL, CHANNEL_MESAJ, &key);
	CHECK(index_lookup(ix, &key, &v) && v.status == STATUS_RET &&
	      v.source == 34 && v.consent_date == 1600000000);
	recipient_normalize("a@example.com", 13, &r, &why);
	index_key_make(ix, &r, 77, RTYPE_BIREYSEL, CHANNEL_EPOSTA, &key);
	CHECK(index_lookup(ix, &key, &v) && v.status == STATUS_ONAY &&
	      v.source == SOURCE_OTHER && v.consent_date == 1700000000);
	index_destroy(ix);
	/* The e-mail key is listed once, normalised. */
	char path[512];
	snprintf(path, sizeof(path), "%s/gen-00000000000000000001/emails", dir);
	FILE *f = fopen(path, "r");
	char buf[256] = "";
	CHECK(f != NULL && fgets(buf, sizeof(buf), f) != NULL);
	CHECK_STREQ(buf, "77 BIREYSEL EPOSTA a@example.com\n");
	CHECK(fgets(buf, sizeof(buf), f) == NULL);
	if (f != NULL)
		fclose(f);
}

/* A snapshot through a pipe, as `consentctl build --snapshot -` reads it. */
struct pipe_arg {
	int fd;
	uint64_t n;
	int rc;
};

static void *pipe_writer(void *p)
{
	struct pipe_arg *a = p;
	a->rc = write_snapshot(a->fd, a->n, 9, WHOLE, 0);
	close(a->fd);
	return NULL;
}

static void test_pipe(void)
{
	char dir[256], err[1024];
	tmp_path(dir, sizeof(dir), "pipedata");
	int fds[2];
	CHECK(pipe(fds) == 0);
	struct pipe_arg a = { .fd = fds[1], .n = scaled(20000) };
	pthread_t th;
	CHECK(pthread_create(&th, NULL, pipe_writer, &a) == 0);
	struct build_result res;
	int rc = build_snapshot(fds[0], dir, &res, err, sizeof(err));
	pthread_join(th, NULL);
	close(fds[0]);
	CHECKF(rc == 0, "%s", err);
	CHECK(a.rc == 0 && res.records == a.n && res.watermark == 9);
	struct index *ix;
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, NULL, err,
				  sizeof(err)) == 0);
	CHECK(count_found(ix, a.n) == a.n);
	index_destroy(ix);
}

/* A pipe whose header states its record count is inserted as it comes
 * (no staging): stated right, far too low (the table grows, the same
 * secret, while records arrive), far too high (made again to the size a
 * generation needs) or 1: the same generation as from a file, whole
 * (generation_verify: every e-mail address in its index). */
static void test_pipe_stated(void)
{
	char dir[256], err[1024];
	uint64_t n = scaled(20000);
	const uint64_t stated[] = { n, n / 10, n * 8, 1 };
	for (size_t k = 0; k < sizeof(stated) / sizeof(stated[0]); k++) {
		char name[64];
		snprintf(name, sizeof(name), "pipe-stated-%zu", k);
		tmp_path(dir, sizeof(dir), name);
		int fds[2];
		CHECK(pipe(fds) == 0);
		stated_count = stated[k];
		struct pipe_arg a = { .fd = fds[1], .n = n };
		pthread_t th;
		CHECK(pthread_create(&th, NULL, pipe_writer, &a) == 0);
		struct build_result res;
		int rc = build_snapshot(fds[0], dir, &res, err, sizeof(err));
		pthread_join(th, NULL);
		close(fds[0]);
		stated_count = 0;
		CHECKF(rc == 0, "stated %" PRIu64 ": %s", stated[k], err);
		CHECK(a.rc == 0 && res.records == n && res.watermark == 9);
		struct index *ix;
		CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, NULL, err,
					     sizeof(err)) == 0);
		struct index_info info;
		index_info(ix, &info);
		CHECKF(count_found(ix, n) == n, "stated %" PRIu64, stated[k]);
		/* Room for the headroom a generation needs, not 8 times it. */
		CHECKF(info.capacity >= n + n / 20 && info.capacity <= 2 * n + 4096,
		       "stated %" PRIu64 ": capacity %" PRIu64, stated[k],
		       info.capacity);
		index_destroy(ix);
		CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);
	}
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b = 0;
	CHECK(fd >= 0 && pread(fd, &b, 1, off) == 1);
	b ^= 0x04;
	CHECK(pwrite(fd, &b, 1, off) == 1);
	close(fd);
}

static void copy_file(const char *from, const char *to)
{
	FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
	CHECK(a != NULL && b != NULL);
	char buf[65536];
	size_t n;
	while (a && b && (n = fread(buf, 1, sizeof(buf), a)) > 0)
		CHECK(fwrite(buf, 1, n, b) == n);
	if (a)
		fclose(a);
	if (b)
		fclose(b);
}

static void test_verify_and_fallback(void)
{
	char dir[256], idx[512], emails[512], saved[512], err[1024];
	tmp_path(dir, sizeof(dir), "data"); /* generations 1 and 2 */
	snprintf(idx, sizeof(idx), "%s/gen-00000000000000000002/index", dir);
	snprintf(emails, sizeof(emails), "%s/gen-00000000000000000002/emails", dir);
	tmp_path(saved, sizeof(saved), "saved");
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* A flipped bit in the newest index: verify fails, naming it, and
	 * opening falls back to generation 1. */
	copy_file(idx, saved);
	struct stat st;
	CHECK(stat(idx, &st) == 0);
	flip_byte(idx, st.st_size / 2);
	int rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "gen-00000000000000000002") &&
	       strstr(err, "1 of 2"), "%d %s", rc, err);
	struct index *ix;
	uint64_t gen = 0;
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, &gen, err,
				  sizeof(err)) == 0);
	CHECK(gen == 1);
	index_destroy(ix);
	copy_file(saved, idx);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* The emails file: a line lost, a line changed, a line doubled. */
	copy_file(emails, saved);
	FILE *f = fopen(emails, "r");
	char *text = calloc(1, (size_t)64 << 20);
	size_t len = f ? fread(text, 1, ((size_t)64 << 20) - 1, f) : 0;
	if (f)
		fclose(f);
	char *second = strchr(text, '\n') + 1;
	char *third = strchr(second, '\n') + 1;

	f = fopen(emails, "w"); /* without the first line */
	fwrite(second, 1, len - (size_t)(second - text), f);
	fclose(f);
	rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "lines"), "lost: %d %s", rc, err);

	f = fopen(emails, "w"); /* the first line twice, the second gone */
	fwrite(text, 1, (size_t)(second - text), f);
	fwrite(text, 1, (size_t)(second - text), f);
	fwrite(third, 1, len - (size_t)(third - text), f);
	fclose(f);
	rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "twice"), "doubled: %d %s", rc, err);

	copy_file(saved, emails);
	char *at = strchr(text, '@');
	*(at - 1) ^= 1; /* another address, same shape */
	f = fopen(emails, "w");
	fwrite(text, 1, len, f);
	fclose(f);
	rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "not in the index"), "changed: %d %s",
	       rc, err);

	f = fopen(emails, "w");
	fwrite(text, 1, len - 1, f); /* no final newline */
	fclose(f);
	rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "newline"), "cut: %d %s", rc, err);
	free(text);

	copy_file(saved, emails);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* A generation directory under the wrong number is broken. */
	char g3[512], g2[512];
	snprintf(g2, sizeof(g2), "%s/gen-00000000000000000002", dir);
	snprintf(g3, sizeof(g3), "%s/gen-00000000000000000003", dir);
	CHECK(rename(g2, g3) == 0);
	rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "generation 2"), "%d %s", rc, err);
	CHECK(rename(g3, g2) == 0);

	/* Nothing valid at all. */
	char empty[256];
	tmp_path(empty, sizeof(empty), "empty");
	mkdir(empty, 0755);
	CHECK(generation_open_newest(empty, INDEX_LOAD_ANON, &ix, &gen, err,
				  sizeof(err)) == -ENOENT);
	CHECK(generation_verify(empty, err, sizeof(err)) == -ENOENT);
	uint64_t newest = 1;
	CHECK(generation_newest(empty, &newest) == 0 && newest == 0);
	CHECK(generation_newest("/nonexistent/x", &newest) == -ENOENT);
	char buf[16];
	CHECK(generation_path("/x", 5, buf, sizeof(buf)) == -ENAMETOOLONG);
}


/* A snapshot built into a data directory keeps the kind and the cursors
 * of its newest generation (DESIGN §8); a damaged origins file there
 * stops the build rather than lose them. */
static void test_origins_carried(void)
{
	char snap[256], dir[256], err[1024], p[600];
	tmp_path(snap, sizeof(snap), "snap-origins");
	tmp_path(dir, sizeof(dir), "data-origins");
	snapshot_file(snap, 100, 7, WHOLE, 0);
	struct build_result res;
	CHECKF(build_file(snap, dir, &res, err, sizeof(err)) == 0, "%s", err);
	/* Give generation 1 cursors, as a server feeding origins would. */
	struct origins *o = NULL;
	CHECK(origins_create(&o) == 0);
	origins_set_kind(o, ORIGINS_ORIGIN);
	CHECK(origins_set(o, "iys:1", 5, "c42", 3) == 0);
	uint8_t *b;
	size_t len;
	CHECK(origins_encode(o, &b, &len) == 0);
	origins_destroy(o);
	snprintf(p, sizeof(p), "%s/gen-%020d/" ORIGINS_FILE, dir, 1);
	FILE *f = fopen(p, "wb");
	CHECK(f != NULL && fwrite(b, 1, len, f) == len);
	fclose(f);
	free(b);

	CHECKF(build_file(snap, dir, &res, err, sizeof(err)) == 0, "%s", err);
	CHECK(res.generation == 2);
	o = NULL;
	CHECK(generation_origins(dir, 2, &o, err, sizeof(err)) == 0);
	size_t cl = 0;
	const char *c = o ? origins_get(o, "iys:1", 5, &cl) : NULL;
	CHECK(c != NULL && cl == 3 && memcmp(c, "c42", 3) == 0);
	CHECK(o && origins_kind(o) == ORIGINS_ORIGIN);
	origins_destroy(o);

	snprintf(p, sizeof(p), "%s/gen-%020d/" ORIGINS_FILE, dir, 2);
	flip_byte(p, 9);
	int rc = build_file(snap, dir, &res, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, "origins"), "%d %s", rc, err);
	uint64_t newest = 0;
	CHECK(generation_newest(dir, &newest) == 0 && newest == 2);
}

/* A snapshot file of 50 records whose header states §8's state: kind
 * and n origins (name i: "o<i>", cursor "c<i>"), or a header bent by bad
 * (1: kind 3, 2: origins with kind 1, 3: an origin twice, 4: an empty
 * cursor, 5: a control byte in an origin). */
static void origins_snapshot(const char *path, uint32_t kind, size_t n,
			     int bad)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	Consent__V1__OriginCursor oc[8], *ptrs[8];
	char names[8][24], curs[8][24];
	h.format_version = STREAM_FORMAT_VERSION;
	h.sequence = 77;
	h.created_at = SYNTH_NOW;
	h.origin = "build_test origins";
	h.origins_kind = bad == 1 ? 3 : bad == 2 ? 1 : kind;
	for (size_t i = 0; i < n; i++) {
		consent__v1__origin_cursor__init(&oc[i]);
		snprintf(names[i], sizeof(names[i]), "o%zu", bad == 3 ? 0 : i);
		snprintf(curs[i], sizeof(curs[i]), "c%zu", i);
		if (bad == 4 && i == n - 1)
			curs[i][0] = '\0';
		if (bad == 5 && i == n - 1)
			names[i][0] = '\t';
		oc[i].origin = names[i];
		oc[i].cursor = curs[i];
		ptrs[i] = &oc[i];
	}
	h.origins = ptrs;
	h.n_origins = n;
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	struct stream_writer *w;
	CHECK(stream_writer_create(fd, &h, 100, &w) == 0);
	for (uint64_t i = 0; i < 50; i++) {
		struct synth_record sr;
		Consent__V1__Consent c;
		synth_record(SEED, 50, i, &sr);
		to_consent(&sr, &c);
		CHECK(stream_writer_add(w, &c) == 0);
	}
	CHECK(stream_writer_finish(w) == 0);
	close(fd);
}

/* A peer's snapshot states its kind and cursors at its watermark (header
 * origins 7, origins_kind 8): built, they are the generation's (into an
 * empty DIR, the origins file); a dump states them again; a header that
 * states them wrongly is refused whole, naming the field. */
static void test_header_origins(void)
{
	char snap[256], dir[256], dump[256], err[1024];
	struct build_result res;
	tmp_path(snap, sizeof(snap), "snap-hdr-origins");
	tmp_path(dir, sizeof(dir), "data-hdr-origins");
	tmp_path(dump, sizeof(dump), "dump-hdr-origins");
	origins_snapshot(snap, ORIGINS_ORIGIN, 3, 0);
	CHECKF(build_file(snap, dir, &res, err, sizeof(err)) == 0, "%s", err);
	CHECK(res.watermark == 77);
	struct origins *o = NULL;
	CHECK(generation_origins(dir, 1, &o, err, sizeof(err)) == 0);
	CHECK(o != NULL && origins_kind(o) == ORIGINS_ORIGIN &&
	      origins_count(o) == 3);
	size_t cl = 0;
	const char *c = o ? origins_get(o, "o2", 2, &cl) : NULL;
	CHECK(c != NULL && cl == 2 && memcmp(c, "c2", 2) == 0);
	origins_destroy(o);

	/* The dump says them back, with the watermark. */
	int fd = open(dump, O_RDWR | O_CREAT | O_TRUNC, 0644);
	uint64_t n = 0;
	CHECKF(build_dump(dir, fd, &n, err, sizeof(err)) == 0, "%s", err);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	struct stream_reader *r;
	struct stream_item it;
	CHECK(stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &r) == 0);
	CHECK(stream_reader_next(r, &it) == 1 && it.kind == STREAM_ITEM_HEADER);
	CHECK(it.header->sequence == 77 && it.header->origins_kind == 2 &&
	      it.header->n_origins == 3);
	for (size_t i = 0; i < it.header->n_origins && i < 3; i++) {
		char want[24];
		snprintf(want, sizeof(want), "o%zu", i);
		CHECK_STREQ(it.header->origins[i]->origin, want);
		snprintf(want, sizeof(want), "c%zu", i);
		CHECK_STREQ(it.header->origins[i]->cursor, want);
	}
	while (stream_reader_next(r, &it) == 1)
		;
	CHECK(stream_reader_records(r) == n && n > 0);
	stream_reader_destroy(r);
	close(fd);

	/* Kind 1 without cursors is a state too. */
	struct generation g;
	origins_snapshot(snap, ORIGINS_SEQUENCE, 0, 0);
	fd = open(snap, O_RDONLY);
	CHECKF(build_index(fd, &g, &res, err, sizeof(err)) == 0, "%s", err);
	close(fd);
	CHECK(g.origins != NULL && origins_kind(g.origins) == ORIGINS_SEQUENCE);
	generation_fini(&g);
	/* A header stating nothing leaves the table unset. */
	origins_snapshot(snap, ORIGINS_NONE, 0, 0);
	fd = open(snap, O_RDONLY);
	CHECKF(build_index(fd, &g, &res, err, sizeof(err)) == 0, "%s", err);
	close(fd);
	CHECK(g.origins == NULL);
	generation_fini(&g);

	static const char *const want[] = {
		NULL, "header.origins_kind 3", "origins_kind is 1",
		"header.origins[1].origin: listed twice",
		"header.origins[1].cursor", "header.origins[1].origin",
	};
	for (int bad = 1; bad <= 5; bad++) {
		origins_snapshot(snap, ORIGINS_ORIGIN, 2, bad);
		fd = open(snap, O_RDONLY);
		int rc = build_index(fd, &g, &res, err, sizeof(err));
		close(fd);
		CHECKF(rc == -EPROTO && strstr(err, want[bad]) &&
		       strstr(err, "offset 0"), "bad %d: %d %s", bad, rc, err);
	}
}

int main(void)
{
	const char *s = getenv("CONSENTD_TEST_SCALE");
	if (s != NULL && atof(s) > 0)
		scale = atof(s);
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_build_and_dump);
	RUN(test_rejected_whole);
	RUN(test_threads_agree);
	RUN(test_duplicates);
	RUN(test_pipe);
	RUN(test_pipe_stated);
	RUN(test_verify_and_fallback);
	RUN(test_origins_carried);
	RUN(test_header_origins);
	int rc = check_summary();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return rc;
}
