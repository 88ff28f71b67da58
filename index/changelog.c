/*
 * changelog: the durable change log (see index/changelog.h).
 *
 * Format. DIR/changes holds segments named by the sequence of their first
 * record, 20 decimal digits and ".log", so the names sort in log order.
 * All integers are little-endian.
 *
 *   segment = magic (8 bytes), u64 first sequence, record*
 *   record  = u32 len, u32 len_check, u64 checksum, payload[len]
 *
 * checksum is XXH3-64 of the payload; len_check is the low half of XXH3-64
 * of the four len bytes. The separate check on the length is what lets
 * open tell a torn tail from damage: without it a bit flip in the length
 * of a record in the middle would make it "run past the end" and look
 * exactly like the partial record a crash leaves, and truncating there
 * would throw away acknowledged records.
 *
 * Two versions, told by the magic; open reads both, appends write only
 * version 2 (a version 1 segment found last at open is sealed, so the next
 * append starts a version 2 one):
 *  - "CONSLOG\x01": payload is a serialized consent.v1.Consent (its
 *    sequence field is the record's sequence). Every record stands alone:
 *    such a log was fed without origins (ORIGINS_SEQUENCE).
 *  - "CONSLOG\x02": payload is a type byte and a body. 0x01: a change
 *    (body: a serialized Consent). 0x02: a commit record (body, 17 bytes
 *    then the strings: u8 kind, u16 origin_len, u16 cursor_len,
 *    u32 n_changes, u64 sequence, origin, cursor) closing the n_changes
 *    change records just before it. Every append ends each of its batches
 *    with one: a batch without origin (kind ORIGINS_SEQUENCE, no strings)
 *    or one origin's batch (ORIGINS_ORIGIN: its origin and the cursor it
 *    moves to, DESIGN §8). The commit's sequence is its last change's, or
 *    a position of its own for a batch of no change that moves a cursor,
 *    so that a generation's watermark tells which cursor moves it holds.
 *    Change records are part of the log only once their commit record
 *    is: a run of changes without one at the end of the last segment is
 *    a batch whose append never completed (never acknowledged) and open
 *    truncates it with the torn tail; anywhere else it is damage. So a
 *    batch's changes and its cursor are on disk together or not at all.
 *    One log holds one kind of commit (the kinds never mix, §8).
 *
 * What a crash can leave. An append is one pwrite of whole records then an
 * fdatasync, and nothing is acknowledged before the fdatasync returns. A
 * process killed mid-write leaves a prefix of that write: whole records,
 * then part of one (fewer than 16 header bytes, or a checked length that
 * runs past the end of the file). A power loss may also leave the last
 * record's bytes unwritten (its checksum fails) or a tail of zeros (the
 * size reached the disk before the data). Open accepts exactly those
 * shapes, at the end of the last segment only, as a torn tail and
 * truncates it; everything else is -EPROTO. A segment is created with its
 * header and first batch in one write, so a torn creation is a last
 * segment without a whole record, which open removes. New segments are
 * made durable in the directory (fsync of DIR/changes) before the append
 * that created them returns.
 *
 * Sequences increase through the log (a commit record repeats its last
 * change's): strictly from batch to batch, and within a batch of origins
 * they may stay equal, since a replicated batch (one JetStream message,
 * DESIGN §9) gives all its changes the message's stream sequence. A batch
 * is on disk whole or not at all, so a replay past a position still sees
 * whole batches. Version 2 segments written before read the same, and
 * version 1 segments (changes without commits) still need strictly
 * increasing sequences. A segment's first record carries the sequence in its
 * name; open checks both, so a segment copied from elsewhere or out
 * of order is refused too. A segment ends at a commit (one append never
 * spans two segments).
 */
#include "index/changelog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/le.h"

#define SEGMENT_MAGIC_V1 "CONSLOG\x01" /* read only */
#define SEGMENT_MAGIC "CONSLOG\x02"
#define REC_CHANGE 0x01 /* version 2 type bytes */
#define REC_COMMIT 0x02
#define COMMIT_FIXED 17 /* a commit body before its strings */
#define SEGMENT_HEADER_BYTES 16
#define RECORD_HEADER_BYTES 16
#define SEGMENT_NAME_DIGITS 20
#define SEGMENT_NAME_SUFFIX ".log"
#define SEGMENT_NAME_LEN (SEGMENT_NAME_DIGITS + 4)

struct segment {
	uint64_t base;    /* first sequence (the name) */
	uint64_t last;    /* last sequence in it */
	uint64_t size;    /* bytes, all verified */
	uint64_t records; /* change records */
	uint64_t commits; /* commit records (version 2) */
	int version;      /* 1 or 2 */
};

struct changelog {
	char path[PATH_MAX]; /* DIR/changes */
	int dir_fd;          /* DIR/changes, flocked */
	int fd;              /* the segment appends go to (segs[n-1]), or -1 */
	struct segment *segs;
	size_t n_segs, cap_segs;
	uint64_t segment_bytes;
	uint64_t last_seq;
	uint64_t records;
	uint64_t truncated_bytes;
	uint64_t appends;
	uint64_t commits;
	enum origins_kind kind; /* of every record found or appended */
	int failed;          /* 0, or the -errno that failed an append */
	uint8_t *buf;        /* the batch being encoded */
	size_t buf_cap;
	char err[512];
};

static uint32_t len_check(const uint8_t *len_bytes)
{
	return (uint32_t)XXH3_64bits(len_bytes, 4);
}

static void segment_name(uint64_t base, char *buf, size_t cap)
{
	snprintf(buf, cap, "%020" PRIu64 SEGMENT_NAME_SUFFIX, base);
}

/* 1 and *base for a name of ours, else 0 (other files are left alone). */
static int segment_parse_name(const char *name, uint64_t *base)
{
	uint64_t v = 0;

	if (strlen(name) != SEGMENT_NAME_LEN ||
	    strcmp(name + SEGMENT_NAME_DIGITS, SEGMENT_NAME_SUFFIX) != 0)
		return 0;
	for (int i = 0; i < SEGMENT_NAME_DIGITS; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		unsigned d = (unsigned)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	*base = v;
	return 1;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

int changelog_commit_decode(const uint8_t *p, size_t len,
			    struct changelog_commit *out)
{
	if (len < COMMIT_FIXED)
		return -EPROTO;
	size_t ol = (size_t)p[1] | (size_t)p[2] << 8;
	size_t cl = (size_t)p[3] | (size_t)p[4] << 8;
	const char *why;

	memset(out, 0, sizeof(*out));
	out->kind = (enum origins_kind)p[0];
	out->n_changes = le_get32(p + 5);
	out->sequence = le_get64(p + 9);
	if (len != COMMIT_FIXED + ol + cl || out->sequence == 0)
		return -EPROTO;
	out->origin = (const char *)p + COMMIT_FIXED;
	out->origin_len = ol;
	out->cursor = out->origin + ol;
	out->cursor_len = cl;
	if (out->kind == ORIGINS_SEQUENCE)
		return ol == 0 && cl == 0 && out->n_changes > 0 ? 0 : -EPROTO;
	if (out->kind != ORIGINS_ORIGIN ||
	    origins_check_text(out->origin, ol, ORIGINS_NAME_MAX, 0, &why) < 0 ||
	    origins_check_text(out->cursor, cl, ORIGINS_CURSOR_MAX, 0, &why) < 0)
		return -EPROTO;
	return 0;
}

/* One record's payload, parsed: a change (its sequence; the Consent too
 * when c is not NULL, the caller's to free) or a commit. */
struct rec {
	int type; /* REC_CHANGE, REC_COMMIT */
	uint64_t seq;
	struct changelog_commit commit;
};

static int rec_parse(int version, const uint8_t *p, size_t len, struct rec *r,
		     Consent__V1__Consent **c)
{
	Consent__V1__Consent *x;

	if (version == 2) {
		if (len < 1)
			return -EPROTO;
		if (p[0] == REC_COMMIT) {
			r->type = REC_COMMIT;
			if (changelog_commit_decode(p + 1, len - 1,
						    &r->commit) < 0)
				return -EPROTO;
			r->seq = r->commit.sequence;
			return 0;
		}
		if (p[0] != REC_CHANGE)
			return -EPROTO;
		p++;
		len--;
	}
	r->type = REC_CHANGE;
	x = consent__v1__consent__unpack(NULL, len, p);
	if (!x)
		return -EPROTO;
	r->seq = x->sequence;
	if (c)
		*c = x;
	else
		consent__v1__consent__free_unpacked(x, NULL);
	return 0;
}

/* Folds a record's kind into the log's: -EPROTO when they differ. */
static int kind_merge(enum origins_kind *have, enum origins_kind k)
{
	if (*have != ORIGINS_NONE && *have != k)
		return -EPROTO;
	*have = k;
	return 0;
}

/*
 * Verifies one segment's bytes. prev is the last sequence before it,
 * *kind the kind of the records before it (updated). Sets *valid_end to
 * the end of the last whole record (version 1) or commit record (version
 * 2) and *seg to what that far holds; for the last segment a torn tail
 * (see the essay) stops the scan there, for any other the same shape is
 * damage. Returns 0 or -EPROTO with the message in err.
 */
static int segment_verify(const char *path, const uint8_t *p, uint64_t size,
			  uint64_t base, int is_last, uint64_t prev,
			  enum origins_kind *kind, struct segment *seg,
			  uint64_t *valid_end, char *err, size_t err_cap)
{
	uint64_t pos = SEGMENT_HEADER_BYTES;
	struct segment cur;
	uint64_t pending = 0; /* changes since the last commit (version 2) */
	int first = 1;

	memset(seg, 0, sizeof(*seg));
	seg->base = base;
	*valid_end = 0;
	if (size < SEGMENT_HEADER_BYTES ||
	    (is_last && all_zero(p, (size_t)size))) {
		if (is_last)
			return 0; /* torn creation: no record was ever acked */
		errmsg_set(err, err_cap, "%s: offset 0: segment header truncated",
			path);
		return -EPROTO;
	}
	if (memcmp(p, SEGMENT_MAGIC, 8) == 0) {
		seg->version = 2;
	} else if (memcmp(p, SEGMENT_MAGIC_V1, 8) == 0) {
		seg->version = 1;
	} else {
		errmsg_set(err, err_cap, "%s: offset 0: not a change log segment",
			path);
		return -EPROTO;
	}
	if (le_get64(p + 8) != base) {
		errmsg_set(err, err_cap,
			"%s: offset 8: header says first sequence %" PRIu64
			", the name %" PRIu64, path, le_get64(p + 8), base);
		return -EPROTO;
	}
	*valid_end = pos;
	cur = *seg;
	while (pos < size) {
		uint64_t rem = size - pos;
		const uint8_t *h = p + pos;

		if (is_last && all_zero(h, (size_t)rem))
			break;
		if (rem < RECORD_HEADER_BYTES) {
			if (is_last)
				break;
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record header truncated",
				path, pos);
			return -EPROTO;
		}
		uint32_t len = le_get32(h);

		if (le_get32(h + 4) != len_check(h)) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record length check failed",
				path, pos);
			return -EPROTO;
		}
		if (len == 0 ||
		    len > CHANGELOG_RECORD_MAX + (seg->version == 2)) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record length %" PRIu32
				" out of range", path, pos, len);
			return -EPROTO;
		}
		if (len > rem - RECORD_HEADER_BYTES) {
			if (is_last)
				break;
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record runs past the end",
				path, pos);
			return -EPROTO;
		}
		const uint8_t *payload = h + RECORD_HEADER_BYTES;
		uint64_t end = pos + RECORD_HEADER_BYTES + len;

		if (XXH3_64bits(payload, len) != le_get64(h + 8)) {
			if (is_last && end == size)
				break;
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record checksum mismatch",
				path, pos);
			return -EPROTO;
		}
		struct rec r;

		if (rec_parse(seg->version, payload, len, &r, NULL) < 0) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": record does not decode "
				"as a %s", path, pos, seg->version == 1 ?
				"Consent" : "change or a commit record");
			return -EPROTO;
		}
		if (r.type == REC_COMMIT &&
		    (r.commit.n_changes != pending ||
		     (pending > 0 ? r.seq != prev : r.seq <= prev))) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": commit record of %" PRIu32
				" changes at sequence %" PRIu64 " after %" PRIu64
				" changes through %" PRIu64, path, pos,
				r.commit.n_changes, r.seq, pending, prev);
			return -EPROTO;
		}
		/* The changes of one batch may share its position (a
		 * replicated batch is one stream message, §9): only the first
		 * change after a commit must pass the sequence before it. */
		if (r.type == REC_CHANGE &&
		    (pending > 0 ? r.seq < prev : r.seq <= prev)) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": sequence %" PRIu64
				" after %" PRIu64, path, pos, r.seq, prev);
			return -EPROTO;
		}
		if (first && r.seq != base) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": first sequence %" PRIu64
				", the name says %" PRIu64, path, pos, r.seq, base);
			return -EPROTO;
		}
		first = 0;
		prev = r.seq;
		pos = end;
		if (r.type == REC_CHANGE) {
			cur.records++;
			cur.last = r.seq;
			if (seg->version == 2) {
				pending++;
				continue;
			}
		}
		if (kind_merge(kind, r.type == REC_COMMIT ? r.commit.kind :
				     ORIGINS_SEQUENCE) < 0) {
			errmsg_set(err, err_cap,
				"%s: offset %" PRIu64 ": a change %s origin in a "
				"log of changes %s", path, pos - len -
				RECORD_HEADER_BYTES,
				*kind == ORIGINS_ORIGIN ? "without" : "with",
				*kind == ORIGINS_ORIGIN ? "with origins" :
							  "without origin");
			return -EPROTO;
		}
		if (r.type == REC_COMMIT) {
			cur.commits++;
			cur.last = r.seq;
			pending = 0;
		}
		/* A commit point: what a torn tail after it leaves. */
		*seg = cur;
		*valid_end = pos;
	}
	if (pending > 0 && !is_last && pos == size) {
		errmsg_set(err, err_cap, "%s: offset %" PRIu64 ": %" PRIu64
			" changes at the end without their commit record",
			path, *valid_end, pending);
		return -EPROTO;
	}
	return 0;
}

static int segs_push(struct changelog *log, const struct segment *s)
{
	if (log->n_segs == log->cap_segs) {
		size_t cap = log->cap_segs ? log->cap_segs * 2 : 16;
		struct segment *n = realloc(log->segs, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		log->segs = n;
		log->cap_segs = cap;
	}
	log->segs[log->n_segs++] = *s;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The bases of the segment files in the directory, sorted. */
static int list_segments(struct changelog *log, uint64_t **out, size_t *n_out,
			 char *err, size_t err_cap)
{
	int fd = dup(log->dir_fd);
	DIR *d;
	struct dirent *e;
	uint64_t *v = NULL;
	size_t n = 0, cap = 0;

	if (fd < 0 || !(d = fdopendir(fd))) {
		int rc = -errno;

		if (fd >= 0)
			close(fd);
		errmsg_set(err, err_cap, "%s: %s", log->path, strerror(-rc));
		return rc;
	}
	rewinddir(d);
	while ((errno = 0, e = readdir(d))) {
		uint64_t base;

		if (!segment_parse_name(e->d_name, &base))
			continue;
		if (n == cap) {
			size_t c = cap ? cap * 2 : 16;
			uint64_t *nv = realloc(v, c * sizeof(*nv));

			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
			cap = c;
		}
		v[n++] = base;
	}
	if (errno) {
		int rc = -errno;

		errmsg_set(err, err_cap, "%s: %s", log->path, strerror(errno));
		free(v);
		closedir(d);
		return rc;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_u64);
	*out = v;
	*n_out = n;
	return 0;
}

/* Opens and verifies one segment; the last one is repaired in place. */
static int open_segment(struct changelog *log, uint64_t base, int is_last,
			char *err, size_t err_cap)
{
	char name[SEGMENT_NAME_LEN + 1], path[PATH_MAX + 64];
	struct stat st;
	struct segment seg;
	uint64_t valid_end;
	uint8_t *map = NULL;
	int fd, rc;

	segment_name(base, name, sizeof(name));
	snprintf(path, sizeof(path), "%s/%s", log->path, name);
	fd = openat(log->dir_fd, name, (is_last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		rc = -errno;
		errmsg_set(err, err_cap, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			map = NULL;
			rc = -errno;
			errmsg_set(err, err_cap, "%s: mmap: %s", path, strerror(errno));
			goto out;
		}
	}
	rc = segment_verify(path, map, (uint64_t)st.st_size, base, is_last,
			    log->last_seq, &log->kind, &seg, &valid_end, err,
			    err_cap);
	if (map)
		munmap(map, (size_t)st.st_size);
	if (rc < 0)
		goto out;
	if (seg.records + seg.commits == 0 && !is_last) {
		errmsg_set(err, err_cap, "%s: offset %d: segment holds no record",
			path, SEGMENT_HEADER_BYTES);
		rc = -EPROTO;
		goto out;
	}
	if (seg.records + seg.commits == 0) {
		/* A torn creation: the file never held an acknowledged record. */
		log->truncated_bytes += (uint64_t)st.st_size;
		if (unlinkat(log->dir_fd, name, 0) < 0 || fsync(log->dir_fd) < 0) {
			rc = -errno;
			errmsg_set(err, err_cap, "%s: removing a torn segment: %s",
				path, strerror(errno));
		}
		goto out;
	}
	if (valid_end < (uint64_t)st.st_size) {
		/* A torn tail: cut it, durably, before anything is appended
		 * after it (else a later append would sit behind garbage). */
		if (ftruncate(fd, (off_t)valid_end) < 0 || fdatasync(fd) < 0) {
			rc = -errno;
			errmsg_set(err, err_cap, "%s: truncating a torn tail: %s",
				path, strerror(errno));
			goto out;
		}
		log->truncated_bytes += (uint64_t)st.st_size - valid_end;
	}
	seg.size = valid_end;
	rc = segs_push(log, &seg);
	if (rc < 0)
		goto out;
	log->last_seq = seg.last;
	log->records += seg.records;
	log->commits += seg.commits;
	/* Appends continue in the last segment only when it is version 2. */
	if (is_last && seg.version == 2 && seg.size < log->segment_bytes) {
		log->fd = fd; /* appends continue here */
		return 0;
	}
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

int changelog_open(const char *dir, const struct changelog_options *opt,
		   struct changelog **out, char *err, size_t err_cap)
{
	struct changelog *log;
	uint64_t *bases = NULL;
	size_t n = 0;
	int rc;

	errmsg_set(err, err_cap, "%s", "");
	log = calloc(1, sizeof(*log));
	if (!log)
		return -ENOMEM;
	log->dir_fd = -1;
	log->fd = -1;
	log->segment_bytes = opt && opt->segment_bytes ?
				     opt->segment_bytes :
				     CHANGELOG_SEGMENT_BYTES_DEFAULT;
	if ((size_t)snprintf(log->path, sizeof(log->path), "%s/%s", dir,
			     CHANGELOG_DIR) >= sizeof(log->path)) {
		rc = -ENAMETOOLONG;
		errmsg_set(err, err_cap, "%s: path too long", dir);
		goto fail;
	}
	if (mkdir(log->path, 0755) == 0) {
		/* The new directory's entry must survive a crash too. */
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (dfd < 0 || fsync(dfd) < 0) {
			rc = -errno;
			if (dfd >= 0)
				close(dfd);
			errmsg_set(err, err_cap, "%s: %s", dir, strerror(-rc));
			goto fail;
		}
		close(dfd);
	} else if (errno != EEXIST) {
		rc = -errno;
		errmsg_set(err, err_cap, "%s: %s", log->path, strerror(errno));
		goto fail;
	}
	log->dir_fd = open(log->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (log->dir_fd < 0) {
		rc = -errno;
		errmsg_set(err, err_cap, "%s: %s", log->path, strerror(errno));
		goto fail;
	}
	if (flock(log->dir_fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		errmsg_set(err, err_cap, "%s: %s", log->path,
			rc == -EBUSY ? "another process holds the change log" :
				       strerror(errno));
		goto fail;
	}
	rc = list_segments(log, &bases, &n, err, err_cap);
	if (rc < 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		rc = open_segment(log, bases[i], i + 1 == n, err, err_cap);
		if (rc < 0)
			goto fail;
	}
	free(bases);
	*out = log;
	return 0;
fail:
	free(bases);
	changelog_close(log);
	return rc;
}

void changelog_close(struct changelog *log)
{
	if (!log)
		return;
	if (log->fd >= 0)
		close(log->fd);
	if (log->dir_fd >= 0)
		close(log->dir_fd); /* releases the flock */
	free(log->segs);
	free(log->buf);
	free(log);
}

enum origins_kind changelog_kind(const struct changelog *log)
{
	return log->kind;
}

uint64_t changelog_last_sequence(const struct changelog *log)
{
	return log->last_seq;
}

const char *changelog_error(const struct changelog *log)
{
	return log->err;
}

void changelog_stats(const struct changelog *log, struct changelog_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->segments = log->n_segs;
	for (size_t i = 0; i < log->n_segs; i++)
		out->bytes += log->segs[i].size;
	out->records = log->records;
	out->first_sequence = log->n_segs ? log->segs[0].base : 0;
	out->last_sequence = log->last_seq;
	out->truncated_bytes = log->truncated_bytes;
	out->appends = log->appends;
	out->commits = log->commits;
	out->failed = log->failed != 0;
}

/* Marks the log failed; every later append returns rc. */
static int append_fail(struct changelog *log, int rc, const char *what)
{
	log->failed = rc;
	errmsg_set(log->err, sizeof(log->err),
		"%s: %s: %s; the change log takes no more appends until reopened",
		log->path, what, strerror(-rc));
	return rc;
}

static size_t commit_bytes(const struct changelog_commit *k)
{
	return RECORD_HEADER_BYTES + 1 + COMMIT_FIXED + k->origin_len +
	       k->cursor_len;
}

/* Writes one record's header for the payload already at p + 16. */
static uint8_t *rec_seal(uint8_t *p, size_t len)
{
	le_put32(p, (uint32_t)len);
	le_put32(p + 4, len_check(p));
	le_put64(p + 8, XXH3_64bits(p + RECORD_HEADER_BYTES, len));
	return p + RECORD_HEADER_BYTES + len;
}

int changelog_append(struct changelog *log, Consent__V1__Consent *const *changes,
		     size_t n)
{
	struct changelog_batch b = {
		.changes = changes, .n = n,
		.commit = { .kind = ORIGINS_SEQUENCE },
	};

	return n == 0 ? changelog_append_batches(log, NULL, 0) :
			changelog_append_batches(log, &b, 1);
}

int changelog_append_batches(struct changelog *log,
			     const struct changelog_batch *batches,
			     size_t n_batches)
{
	uint64_t prev = log->last_seq, first_seq = 0;
	size_t total = 0, n = 0;
	enum origins_kind kind = log->kind;
	int roll, rc;

	if (log->failed) {
		errmsg_set(log->err, sizeof(log->err),
			"%s: an earlier append failed (%s); reopen the change log",
			log->path, strerror(-log->failed));
		return log->failed;
	}
	if (n_batches == 0)
		return 0;
	/* The format's guard, not a validation (the caller ran
	 * change_validate): nothing out of order or oversize is stored, and
	 * everything is checked before anything is written. */
	for (size_t j = 0; j < n_batches; j++) {
		const struct changelog_batch *bt = &batches[j];
		const struct changelog_commit *k = &bt->commit;
		const char *why;

		if (k->kind != ORIGINS_SEQUENCE && k->kind != ORIGINS_ORIGIN) {
			errmsg_set(log->err, sizeof(log->err),
				"batch %zu: no kind", j);
			return -EINVAL;
		}
		if (kind_merge(&kind, k->kind) < 0) {
			errmsg_set(log->err, sizeof(log->err),
				"batch %zu: the log holds changes %s", j,
				kind == ORIGINS_ORIGIN ? "with origins" :
							 "without origin");
			return -EINVAL;
		}
		if (k->kind == ORIGINS_SEQUENCE ?
			    bt->n == 0 || k->origin_len || k->cursor_len :
			    origins_check_text(k->origin, k->origin_len,
					       ORIGINS_NAME_MAX, 0, &why) < 0 ||
				    origins_check_text(k->cursor, k->cursor_len,
						       ORIGINS_CURSOR_MAX, 0,
						       &why) < 0) {
			errmsg_set(log->err, sizeof(log->err),
				"batch %zu: a commit record of %s", j,
				k->kind == ORIGINS_SEQUENCE ?
					"no change, or with an origin" :
					"a bad origin or cursor");
			return -EINVAL;
		}
		if (bt->n > UINT32_MAX) {
			errmsg_set(log->err, sizeof(log->err),
				"batch %zu: %zu changes", j, bt->n);
			return -EINVAL;
		}
		for (size_t i = 0; i < bt->n; i++) {
			const Consent__V1__Consent *c = bt->changes[i];
			uint64_t seq = c->sequence;
			size_t len = consent__v1__consent__get_packed_size(c);

			if (seq == 0) {
				errmsg_set(log->err, sizeof(log->err),
					"change %zu: sequence 0 (a change needs "
					"one)", n + i);
				return -EINVAL;
			}
			/* Within a batch of origins a change may repeat the
			 * position before it (a replicated batch: all its
			 * changes at its stream sequence); a batch's first
			 * change, and any of a batch without origin, must
			 * pass it. */
			if ((i > 0 && k->kind == ORIGINS_ORIGIN) ? seq < prev :
								    seq <= prev) {
				errmsg_set(log->err, sizeof(log->err),
					"sequence %" PRIu64 " after %" PRIu64,
					seq, prev);
				return -EINVAL;
			}
			if (len > CHANGELOG_RECORD_MAX) {
				errmsg_set(log->err, sizeof(log->err),
					"sequence %" PRIu64 ": record of %zu "
					"bytes over %u", seq, len,
					CHANGELOG_RECORD_MAX);
				return -EMSGSIZE;
			}
			prev = seq;
			total += RECORD_HEADER_BYTES + 1 + len;
		}
		if (bt->n == 0) {
			/* A cursor moved by no change: a position of its own. */
			if (k->sequence <= prev) {
				errmsg_set(log->err, sizeof(log->err),
					"batch %zu: commit at sequence %" PRIu64
					" after %" PRIu64, j, k->sequence, prev);
				return -EINVAL;
			}
			prev = k->sequence;
		}
		if (first_seq == 0)
			first_seq = bt->n ? bt->changes[0]->sequence :
					    k->sequence;
		n += bt->n;
		total += commit_bytes(k);
	}
	roll = log->fd < 0;
	if (!roll && log->segs[log->n_segs - 1].size >= log->segment_bytes)
		roll = 1;
	if (roll)
		total += SEGMENT_HEADER_BYTES;
	if (total > log->buf_cap) {
		uint8_t *b = realloc(log->buf, total);

		if (!b) {
			errmsg_set(log->err, sizeof(log->err), "out of memory");
			return -ENOMEM;
		}
		log->buf = b;
		log->buf_cap = total;
	}
	if (roll && log->n_segs == log->cap_segs) {
		/* Grow now so that nothing can fail after the file exists. */
		struct segment dummy = { 0 };

		if (segs_push(log, &dummy) < 0) {
			errmsg_set(log->err, sizeof(log->err), "out of memory");
			return -ENOMEM;
		}
		log->n_segs--;
	}

	uint8_t *p = log->buf;
	uint64_t base = first_seq, seq = log->last_seq;

	if (roll) {
		memcpy(p, SEGMENT_MAGIC, 8);
		le_put64(p + 8, base);
		p += SEGMENT_HEADER_BYTES;
	}
	for (size_t j = 0; j < n_batches; j++) {
		const struct changelog_batch *bt = &batches[j];
		const struct changelog_commit *k = &bt->commit;
		uint8_t *q;

		for (size_t i = 0; i < bt->n; i++) {
			q = p + RECORD_HEADER_BYTES;
			q[0] = REC_CHANGE;
			size_t len = consent__v1__consent__pack(bt->changes[i],
								 q + 1);

			p = rec_seal(p, len + 1);
			seq = bt->changes[i]->sequence;
		}
		if (bt->n == 0)
			seq = k->sequence;
		q = p + RECORD_HEADER_BYTES;
		q[0] = REC_COMMIT;
		q[1] = (uint8_t)k->kind;
		q[2] = (uint8_t)k->origin_len;
		q[3] = (uint8_t)(k->origin_len >> 8);
		q[4] = (uint8_t)k->cursor_len;
		q[5] = (uint8_t)(k->cursor_len >> 8);
		le_put32(q + 6, (uint32_t)bt->n);
		le_put64(q + 10, seq);
		if (k->origin_len)
			memcpy(q + 1 + COMMIT_FIXED, k->origin, k->origin_len);
		if (k->cursor_len)
			memcpy(q + 1 + COMMIT_FIXED + k->origin_len, k->cursor,
			       k->cursor_len);
		p = rec_seal(p, 1 + COMMIT_FIXED + k->origin_len +
				     k->cursor_len);
	}

	if (roll) {
		char name[SEGMENT_NAME_LEN + 1];
		int fd;

		segment_name(base, name, sizeof(name));
		fd = openat(log->dir_fd, name,
			    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0)
			return append_fail(log, -errno, "creating a segment");
		rc = fsutil_pwrite_all(fd, log->buf, total, 0);
		if (rc < 0) {
			close(fd);
			unlinkat(log->dir_fd, name, 0); /* best effort */
			return append_fail(log, rc, "write");
		}
		if (fdatasync(fd) < 0) {
			rc = -errno;
			close(fd);
			return append_fail(log, rc, "fdatasync");
		}
		/* The file's directory entry: without this a power loss may
		 * lose the whole new segment after we acknowledged it. */
		if (fsync(log->dir_fd) < 0) {
			rc = -errno;
			close(fd);
			return append_fail(log, rc, "fsync of the directory");
		}
		if (log->fd >= 0)
			close(log->fd);
		log->fd = fd;
		struct segment seg = { .base = base, .size = 0, .version = 2 };

		segs_push(log, &seg); /* cannot fail: grown above */
		log->segs[log->n_segs - 1].size = SEGMENT_HEADER_BYTES;
		total -= SEGMENT_HEADER_BYTES;
	} else {
		struct segment *s = &log->segs[log->n_segs - 1];

		rc = fsutil_pwrite_all(log->fd, log->buf, total, s->size);
		if (rc < 0) {
			/* Best effort: a partial record would be cut as a torn
			 * tail at the next open anyway. */
			if (ftruncate(log->fd, (off_t)s->size) < 0) {
				/* nothing more to do: the log is failed */
			}
			return append_fail(log, rc, "write");
		}
		if (fdatasync(log->fd) < 0)
			return append_fail(log, -errno, "fdatasync");
	}
	struct segment *s = &log->segs[log->n_segs - 1];

	s->size += total;
	s->last = prev;
	s->records += n;
	s->commits += n_batches;
	log->records += n;
	log->commits += n_batches;
	log->last_seq = prev;
	log->kind = kind;
	log->appends++;
	return 0;
}

int changelog_replay(struct changelog *log, uint64_t after,
		     changelog_replay_fn fn, void *arg)
{
	return changelog_replay_all(log, after, fn, NULL, arg);
}

int changelog_replay_all(struct changelog *log, uint64_t after,
			 changelog_replay_fn fn, changelog_commit_fn commit_fn,
			 void *arg)
{
	for (size_t i = 0; i < log->n_segs; i++) {
		const struct segment *s = &log->segs[i];
		char name[SEGMENT_NAME_LEN + 1];
		uint8_t *map;
		int fd, rc = 0;

		if (s->last <= after)
			continue;
		segment_name(s->base, name, sizeof(name));
		fd = openat(log->dir_fd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			errmsg_set(log->err, sizeof(log->err), "%s/%s: %s",
				log->path, name, strerror(errno));
			return rc;
		}
		map = mmap(NULL, (size_t)s->size, PROT_READ, MAP_PRIVATE, fd, 0);
		close(fd);
		if (map == MAP_FAILED) {
			rc = -errno;
			errmsg_set(log->err, sizeof(log->err), "%s/%s: mmap: %s",
				log->path, name, strerror(errno));
			return rc;
		}
		/* Open verified these bytes; check again, cheaply, since the
		 * file may have been damaged since. */
		uint64_t pos = SEGMENT_HEADER_BYTES;

		while (pos < s->size && rc == 0) {
			const uint8_t *h = map + pos;
			uint32_t len = le_get32(h);
			Consent__V1__Consent *c = NULL;
			struct rec r;

			if (s->size - pos < RECORD_HEADER_BYTES ||
			    le_get32(h + 4) != len_check(h) || len == 0 ||
			    len > s->size - pos - RECORD_HEADER_BYTES ||
			    XXH3_64bits(h + RECORD_HEADER_BYTES, len) !=
				    le_get64(h + 8) ||
			    rec_parse(s->version, h + RECORD_HEADER_BYTES, len,
				      &r, &c) < 0) {
				errmsg_set(log->err, sizeof(log->err),
					"%s/%s: offset %" PRIu64
					": record damaged since open",
					log->path, name, pos);
				rc = -EPROTO;
				break;
			}
			if (r.type == REC_CHANGE) {
				if (r.seq > after && fn)
					rc = fn(c, arg);
				consent__v1__consent__free_unpacked(c, NULL);
			} else if (r.seq > after && commit_fn) {
				rc = commit_fn(&r.commit, arg);
			}
			pos += RECORD_HEADER_BYTES + len;
		}
		munmap(map, (size_t)s->size);
		if (rc)
			return rc;
	}
	return 0;
}

int changelog_drop_through(struct changelog *log, uint64_t watermark)
{
	size_t n_drop = 0;
	int rc = 0;

	while (n_drop < log->n_segs && log->segs[n_drop].last <= watermark) {
		const struct segment *s = &log->segs[n_drop];
		char name[SEGMENT_NAME_LEN + 1];

		if (n_drop + 1 == log->n_segs) {
			/* The newest segment stays, so the last sequence
			 * survives a restart; sealed, the next append starts
			 * a new segment and a later drop removes this one. */
			if (log->fd >= 0)
				close(log->fd);
			log->fd = -1;
			break;
		}
		segment_name(s->base, name, sizeof(name));
		if (unlinkat(log->dir_fd, name, 0) < 0) {
			rc = -errno;
			errmsg_set(log->err, sizeof(log->err), "%s/%s: unlink: %s",
				log->path, name, strerror(errno));
			break;
		}
		log->records -= s->records;
		log->commits -= s->commits;
		n_drop++;
	}
	if (n_drop) {
		memmove(log->segs, log->segs + n_drop,
			(log->n_segs - n_drop) * sizeof(*log->segs));
		log->n_segs -= n_drop;
		if (fsync(log->dir_fd) < 0 && rc == 0) {
			rc = -errno;
			errmsg_set(log->err, sizeof(log->err), "%s: fsync: %s",
				log->path, strerror(errno));
		}
	}
	return rc < 0 ? rc : (int)n_drop;
}
