/*
 * outbox: the durable queue of local rejections for İYS (index/outbox.h).
 *
 * Why it exists. A recipient who answers "RET" at the gateway must be
 * denied at once (DESIGN §1.3 note), and the law gives the brand three
 * business days to tell İYS. The denial is the change log's business (the
 * RET is a change of origin "local", served like any other); telling İYS
 * is the outbox's: an entry per local RET that survives crashes until
 * İYS's own copy of it comes back through the pull.
 *
 * One file, DIR/outbox: a 16-byte header ("CDOUTBOX", format version,
 * zero) and then units, each one append: a le32 payload length, the low
 * 32 bits of the payload's XXH3-64, and the payload, a run of records
 * (type byte, then fixed little-endian fields and le16-length strings):
 *   'Q' queued:     sequence, brand, iys_code, channel, recipient_type,
 *                   source, consent_date, creation_date, recipient,
 *                   transaction_id
 *   'P' pushed:     sequence, İYS's transaction id
 *   'R' reconciled: sequence, the log position of the İYS change
 *   'T' through:    the change-log position the file accounts for
 * Every unit the writer appends ends with a 'T'.
 *
 * Durability. The writer commits a group to the change log (fdatasync),
 * applies it, lets the outbox observe each change and then makes the
 * outbox's records durable with a second write and fdatasync, all before
 * any reply of the group goes out; a group that queues and reconciles
 * nothing costs no outbox write at all. A crash between the two leaves
 * changes in the log the outbox has not seen: at open the writer replays
 * the log past the file's last 'T' into it (outbox_rebuild). That range
 * is always in the log: segments are dropped only behind a published
 * generation, and generations are written between groups, after the
 * outbox of every earlier group is durable. What enters and what
 * reconciles is decided from the change and the state alone (never the
 * index's order rule), so the rebuild, a restart and every replica of one
 * stream agree.
 *
 * Torn tails. A crash can cut only the last append (each is followed by
 * fdatasync): a partial header or payload, or a complete last unit whose
 * checksum fails, or zeros to the end of the file (the length extended,
 * the data not written). Those are cut away at open. A unit that fails
 * its checksum with more data after it, or a record that does not parse
 * inside a unit whose checksum holds, is damage: -EPROTO naming the
 * offset, and the server refuses to start rather than forget rejections.
 *
 * Compaction. Reconciled entries stay in the file as records until the
 * dead records outnumber the live entries (and 256): then the live
 * entries, with their pushed ids, and the through position are written
 * as one unit of a new file (temp, fsync, rename, fsync of the directory),
 * so the file stays proportional to what is still owed to İYS.
 *
 * The pushed mark comes from the ops port (the connector, consentctl
 * pull) under the same mutex, as its own unit. It is per data directory:
 * in replicated mode every replica holds the same entries (they apply the
 * same local RETs) but only the replica the connector talks to learns
 * that one was pushed.
 */
#include "index/outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/le.h"
#include "index/changelog.h"

#define OUTBOX_MAGIC "CDOUTBOX"
#define OUTBOX_VERSION 1
#define OUTBOX_HEADER 16
#define OUTBOX_UNIT_HEADER 8
#define OUTBOX_UNIT_MAX (64u << 20)
#define OUTBOX_COMPACT_MIN 256 /* dead records before a compaction */

struct outbox {
	pthread_mutex_t mu;
	char dir[PATH_MAX];
	char path[PATH_MAX];
	int fd;                 /* -1: a parse-only state (outbox_parse) */
	bool failed;            /* a write failed: every later one refused */
	char fault[256];
	struct outbox_entry *e; /* live entries, sequence order */
	size_t n, cap;
	uint64_t through;
	uint64_t last_sequence; /* the highest entry ever queued */
	uint64_t dead;          /* records in the file of no live entry */
	uint8_t *pend;          /* observed records awaiting commit */
	size_t pend_len, pend_cap;
};

const char *outbox_state_name(enum outbox_state s)
{
	switch (s) {
	case OUTBOX_QUEUED:
		return "queued";
	case OUTBOX_PUSHED:
		return "pushed";
	case OUTBOX_RECONCILED:
		return "reconciled";
	}
	return "?";
}

uint64_t outbox_key_hash(uint32_t brand, int channel, int rtype,
			 const char *recipient, size_t len)
{
	uint64_t seed = (uint64_t)brand << 16 | (uint64_t)(channel & 0xff) << 8 |
			(uint64_t)(rtype & 0xff);
	return XXH3_64bits_withSeed(recipient, len, seed);
}

/* ---- the state ---- */

static struct outbox_entry *outbox_find(struct outbox *ob, uint64_t seq)
{
	size_t lo = 0, hi = ob->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ob->e[mid].sequence < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ob->n && ob->e[lo].sequence == seq ? &ob->e[lo] : NULL;
}

static int outbox_grow(struct outbox *ob)
{
	if (ob->n < ob->cap)
		return 0;
	size_t cap = ob->cap ? ob->cap * 2 : 64;
	struct outbox_entry *e = realloc(ob->e, cap * sizeof(*e));
	if (e == NULL)
		return -ENOMEM;
	ob->e = e;
	ob->cap = cap;
	return 0;
}

static void outbox_remove(struct outbox *ob, struct outbox_entry *x)
{
	size_t i = (size_t)(x - ob->e);
	memmove(&ob->e[i], &ob->e[i + 1], (ob->n - i - 1) * sizeof(*x));
	ob->n--;
}

/* ---- records ---- */

struct outbox_rd {
	const uint8_t *p, *end;
	bool bad;
};

static const uint8_t *rd_take(struct outbox_rd *r, size_t n)
{
	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	return p;
}

static uint64_t rd_u64(struct outbox_rd *r)
{
	const uint8_t *p = rd_take(r, 8);
	return p ? le_get64(p) : 0;
}

static uint32_t rd_u32(struct outbox_rd *r)
{
	const uint8_t *p = rd_take(r, 4);
	return p ? le_get32(p) : 0;
}

static uint8_t rd_u8(struct outbox_rd *r)
{
	const uint8_t *p = rd_take(r, 1);
	return p ? p[0] : 0;
}

/* A le16-length string into buf (cap bytes with the NUL). */
static size_t rd_str(struct outbox_rd *r, char *buf, size_t cap)
{
	const uint8_t *lp = rd_take(r, 2);
	size_t len = lp ? le_get16(lp) : 0;
	const uint8_t *s = rd_take(r, len);
	if (s == NULL || len >= cap || memchr(s, 0, len) != NULL) {
		r->bad = true;
		buf[0] = '\0';
		return 0;
	}
	memcpy(buf, s, len);
	buf[len] = '\0';
	return len;
}

/* Applies one record to the state. 0, or -EPROTO with *why. */
static int outbox_apply_record(struct outbox *ob, struct outbox_rd *r,
			       const char **why)
{
	uint8_t type = rd_u8(r);
	struct outbox_entry *x;

	switch (type) {
	case 'Q': {
		struct outbox_entry e;
		memset(&e, 0, sizeof(e));
		e.sequence = rd_u64(r);
		e.brand_code = rd_u32(r);
		e.iys_code = rd_u32(r);
		e.channel = rd_u8(r);
		e.recipient_type = rd_u8(r);
		e.source = rd_u8(r);
		e.consent_date = (int64_t)rd_u64(r);
		e.creation_date = (int64_t)rd_u64(r);
		size_t rl = rd_str(r, e.recipient, sizeof(e.recipient));
		rd_str(r, e.transaction_id, sizeof(e.transaction_id));
		if (r->bad) {
			*why = "a queued record is cut short or holds a bad "
			       "string";
			return -EPROTO;
		}
		if (e.sequence == 0 || e.sequence <= ob->last_sequence) {
			*why = "a queued record's sequence does not follow the "
			       "previous one";
			return -EPROTO;
		}
		if (outbox_grow(ob) < 0) {
			*why = "out of memory";
			return -ENOMEM;
		}
		e.state = OUTBOX_QUEUED;
		e.key_hash = outbox_key_hash(e.brand_code, e.channel,
					     e.recipient_type, e.recipient, rl);
		ob->e[ob->n++] = e;
		ob->last_sequence = e.sequence;
		return 0;
	}
	case 'P': {
		char id[OUTBOX_TXID_MAX + 1];
		uint64_t seq = rd_u64(r);
		size_t len = rd_str(r, id, sizeof(id));
		if (r->bad || len == 0) {
			*why = "a pushed record is cut short or holds a bad id";
			return -EPROTO;
		}
		x = outbox_find(ob, seq);
		if (x == NULL) {
			*why = "a pushed record names no live entry";
			return -EPROTO;
		}
		if (x->state == OUTBOX_PUSHED)
			ob->dead++; /* the earlier mark (compaction keeps one) */
		x->state = OUTBOX_PUSHED;
		memcpy(x->pushed_id, id, len + 1);
		return 0;
	}
	case 'R': {
		uint64_t seq = rd_u64(r);
		uint64_t by = rd_u64(r);
		if (r->bad || by <= seq) {
			*why = "a reconciled record is cut short or reconciles "
			       "by an earlier change";
			return -EPROTO;
		}
		x = outbox_find(ob, seq);
		if (x == NULL) {
			*why = "a reconciled record names no live entry";
			return -EPROTO;
		}
		/* Its Q, its P (if any) and the R itself. */
		ob->dead += 2 + (x->state == OUTBOX_PUSHED);
		outbox_remove(ob, x);
		return 0;
	}
	case 'T': {
		uint64_t t = rd_u64(r);
		if (r->bad || t < ob->through) {
			*why = "a through record is cut short or goes back";
			return -EPROTO;
		}
		ob->through = t;
		ob->dead++;
		return 0;
	}
	default:
		*why = "unknown record type";
		return -EPROTO;
	}
}

/* Reads a whole file image into ob (empty). 0 with *good the valid
 * prefix's bytes; -EPROTO with err. */
static int outbox_load(struct outbox *ob, const uint8_t *buf, size_t len,
		       size_t *good, char *err, size_t err_cap)
{
	*good = 0;
	if (len == 0)
		return 0; /* created, header not yet written (cut) */
	if (len < OUTBOX_HEADER) {
		/* A header is written with the file's creation, before any
		 * unit: a short one is that first write cut, if it is a
		 * prefix of a header. */
		if (memcmp(buf, OUTBOX_MAGIC, len < 8 ? len : 8) == 0)
			return 0;
		return errmsg_fail(err, err_cap, -EPROTO, "offset 0: not an "
				   "outbox file (no CDOUTBOX header)");
	}
	if (memcmp(buf, OUTBOX_MAGIC, 8) != 0)
		return errmsg_fail(err, err_cap, -EPROTO, "offset 0: not an "
				   "outbox file (no CDOUTBOX header)");
	if (le_get32(buf + 8) != OUTBOX_VERSION)
		return errmsg_fail(err, err_cap, -EPROTO, "offset 8: format "
				   "version %" PRIu32 ", this consentd reads %d",
				   le_get32(buf + 8), OUTBOX_VERSION);
	size_t off = OUTBOX_HEADER;
	*good = off;
	while (off < len) {
		size_t left = len - off;
		if (left < OUTBOX_UNIT_HEADER)
			return 0; /* a unit's header cut: torn */
		uint32_t plen = le_get32(buf + off);
		uint32_t check = le_get32(buf + off + 4);
		if (plen == 0) {
			/* Zeros to the end: space allocated, data never
			 * written. Anything else after it is damage. */
			for (size_t i = off; i < len; i++)
				if (buf[i] != 0)
					return errmsg_fail(err, err_cap, -EPROTO,
							   "offset %zu: a unit of "
							   "length 0", off);
			return 0;
		}
		if (plen > OUTBOX_UNIT_MAX || plen > left - OUTBOX_UNIT_HEADER)
			return 0; /* runs past the end: the last append cut */
		const uint8_t *p = buf + off + OUTBOX_UNIT_HEADER;
		if ((uint32_t)XXH3_64bits(p, plen) != check) {
			if (off + OUTBOX_UNIT_HEADER + plen == len)
				return 0; /* the last unit, torn */
			return errmsg_fail(err, err_cap, -EPROTO, "offset %zu: "
					   "checksum mismatch with %zu bytes "
					   "after it", off,
					   len - off - OUTBOX_UNIT_HEADER - plen);
		}
		struct outbox_rd r = { p, p + plen, false };
		while (r.p < r.end) {
			const char *why = NULL;
			size_t at = off + OUTBOX_UNIT_HEADER + (size_t)(r.p - p);
			int rc = outbox_apply_record(ob, &r, &why);
			if (rc < 0)
				return errmsg_fail(err, err_cap, rc, "offset %zu: "
						   "%s", at, why);
		}
		off += OUTBOX_UNIT_HEADER + plen;
		*good = off;
	}
	return 0;
}

static void outbox_free_state(struct outbox *ob)
{
	free(ob->e);
	free(ob->pend);
	pthread_mutex_destroy(&ob->mu);
	free(ob);
}

static struct outbox *outbox_new(void)
{
	struct outbox *ob = calloc(1, sizeof(*ob));
	if (ob == NULL)
		return NULL;
	ob->fd = -1;
	pthread_mutex_init(&ob->mu, NULL);
	return ob;
}

int outbox_parse(const uint8_t *buf, size_t len, size_t *good, size_t *live,
		 char *err, size_t err_cap)
{
	struct outbox *ob = outbox_new();
	if (ob == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	int rc = outbox_load(ob, buf, len, good, err, err_cap);
	*live = ob->n;
	outbox_free_state(ob);
	return rc;
}

/* ---- writing ---- */

static int pend_reserve(struct outbox *ob, size_t n)
{
	if (ob->pend_len + n <= ob->pend_cap)
		return 0;
	size_t cap = ob->pend_cap ? ob->pend_cap : 4096;
	while (cap < ob->pend_len + n)
		cap *= 2;
	uint8_t *p = realloc(ob->pend, cap);
	if (p == NULL)
		return -ENOMEM;
	ob->pend = p;
	ob->pend_cap = cap;
	return 0;
}

/* Appends records to a buffer: the caller reserved room. */
static uint8_t *put_str(uint8_t *p, const char *s, size_t len)
{
	le_put16(p, (uint16_t)len);
	memcpy(p + 2, s, len);
	return p + 2 + len;
}

static size_t q_size(const struct outbox_entry *e)
{
	return 1 + 8 + 4 + 4 + 3 + 8 + 8 + 2 + strlen(e->recipient) + 2 +
	       strlen(e->transaction_id);
}

static uint8_t *put_q(uint8_t *p, const struct outbox_entry *e)
{
	*p++ = 'Q';
	le_put64(p, e->sequence);
	le_put32(p + 8, e->brand_code);
	le_put32(p + 12, e->iys_code);
	p[16] = (uint8_t)e->channel;
	p[17] = (uint8_t)e->recipient_type;
	p[18] = (uint8_t)e->source;
	le_put64(p + 19, (uint64_t)e->consent_date);
	le_put64(p + 27, (uint64_t)e->creation_date);
	p += 35;
	p = put_str(p, e->recipient, strlen(e->recipient));
	return put_str(p, e->transaction_id, strlen(e->transaction_id));
}

static uint8_t *put_p(uint8_t *p, uint64_t seq, const char *id, size_t len)
{
	*p++ = 'P';
	le_put64(p, seq);
	return put_str(p + 8, id, len);
}

static uint8_t *put_r(uint8_t *p, uint64_t seq, uint64_t by)
{
	*p++ = 'R';
	le_put64(p, seq);
	le_put64(p + 8, by);
	return p + 16;
}

static uint8_t *put_t(uint8_t *p, uint64_t through)
{
	*p++ = 'T';
	le_put64(p, through);
	return p + 8;
}

/* Frames payload as one unit and appends it with one write and one
 * fdatasync. Fails the outbox for good on error. */
static int outbox_write_unit(struct outbox *ob, uint8_t *unit, size_t plen,
			     char *err, size_t err_cap)
{
	le_put32(unit, (uint32_t)plen);
	le_put32(unit + 4, (uint32_t)XXH3_64bits(unit + OUTBOX_UNIT_HEADER, plen));
	int rc = fsutil_write_all(ob->fd, unit, OUTBOX_UNIT_HEADER + plen);
	if (rc == 0 && fdatasync(ob->fd) < 0)
		rc = -errno;
	if (rc < 0) {
		ob->failed = true;
		snprintf(ob->fault, sizeof(ob->fault), "%.160s: %s", ob->path,
			 strerror(-rc));
		return errmsg_fail(err, err_cap, rc, "%s", ob->fault);
	}
	return 0;
}

static int outbox_create_file(const char *path, const uint8_t *body,
			      size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	uint8_t h[OUTBOX_HEADER] = { 0 };
	memcpy(h, OUTBOX_MAGIC, 8);
	le_put32(h + 8, OUTBOX_VERSION);
	int rc = fsutil_write_all(fd, h, sizeof(h));
	if (rc == 0 && len > 0)
		rc = fsutil_write_all(fd, body, len);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Rewrites the file as the live entries and the through position (temp,
 * fsync, rename, fsync dir), then appends to the new one. */
static int outbox_compact(struct outbox *ob, char *err, size_t err_cap)
{
	size_t plen = 9;
	for (size_t i = 0; i < ob->n; i++)
		plen += q_size(&ob->e[i]) +
			(ob->e[i].state == OUTBOX_PUSHED ?
				 11 + strlen(ob->e[i].pushed_id) : 0);
	uint8_t *unit = malloc(OUTBOX_UNIT_HEADER + plen);
	if (unit == NULL)
		return 0; /* compaction is an economy: try next time */
	uint8_t *p = unit + OUTBOX_UNIT_HEADER;
	for (size_t i = 0; i < ob->n; i++) {
		p = put_q(p, &ob->e[i]);
		if (ob->e[i].state == OUTBOX_PUSHED)
			p = put_p(p, ob->e[i].sequence, ob->e[i].pushed_id,
				  strlen(ob->e[i].pushed_id));
	}
	put_t(p, ob->through);
	le_put32(unit, (uint32_t)plen);
	le_put32(unit + 4, (uint32_t)XXH3_64bits(unit + OUTBOX_UNIT_HEADER, plen));

	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", ob->path);
	int rc = outbox_create_file(tmp, unit, OUTBOX_UNIT_HEADER + plen);
	free(unit);
	if (rc == 0 && rename(tmp, ob->path) < 0)
		rc = -errno;
	if (rc < 0) {
		unlink(tmp);
		/* The old file is whole and still ours: go on with it. */
		fprintf(stderr, "consentd: outbox: compaction of %s: %s (kept "
			"the file as it is)\n", ob->path, strerror(-rc));
		return 0;
	}
	/* Renamed: from here the new file is the outbox, and a failure to
	 * make the rename durable or to append to it fails the outbox. */
	int fd = open(ob->path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0 || (rc = fsutil_fsync_dir(ob->dir)) < 0) {
		rc = fd < 0 ? -errno : rc;
		if (fd >= 0)
			close(fd);
		ob->failed = true;
		snprintf(ob->fault, sizeof(ob->fault), "%.160s: after compaction: "
			 "%s", ob->path, strerror(-rc));
		return errmsg_fail(err, err_cap, rc, "%s", ob->fault);
	}
	close(ob->fd);
	ob->fd = fd;
	ob->dead = 1; /* the T */
	return 0;
}

int outbox_open(const char *dir, struct outbox **out, uint64_t *truncated,
		char *err, size_t err_cap)
{
	struct outbox *ob = outbox_new();
	uint8_t *buf = NULL;
	int rc;

	if (truncated != NULL)
		*truncated = 0;
	if (ob == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	if (snprintf(ob->dir, sizeof(ob->dir), "%s", dir) >= (int)sizeof(ob->dir) ||
	    snprintf(ob->path, sizeof(ob->path), "%s/%s", dir, OUTBOX_FILE) >=
		    (int)sizeof(ob->path)) {
		rc = errmsg_fail(err, err_cap, -ENAMETOOLONG, "%s: path too long",
				 dir);
		goto fail;
	}
	int fd = open(ob->path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		rc = outbox_create_file(ob->path, NULL, 0);
		if (rc == 0)
			rc = fsutil_fsync_dir(dir);
		if (rc < 0) {
			rc = errmsg_fail(err, err_cap, rc, "%s: %s", ob->path,
					 strerror(-rc));
			goto fail;
		}
		fd = open(ob->path, O_RDWR | O_CLOEXEC);
	}
	if (fd < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", ob->path,
				 strerror(errno));
		goto fail;
	}
	ob->fd = fd;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", ob->path,
				 strerror(errno));
		goto fail;
	}
	size_t len = (size_t)st.st_size;
	buf = malloc(len ? len : 1);
	if (buf == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t got = 0; got < len;) {
		ssize_t r = pread(fd, buf + got, len - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = errmsg_fail(err, err_cap, r < 0 ? -errno : -EIO,
					 "%s: reading: %s", ob->path,
					 r < 0 ? strerror(errno) : "short read");
			goto fail;
		}
		got += (size_t)r;
	}
	size_t good = 0;
	char e[256];
	rc = outbox_load(ob, buf, len, &good, e, sizeof(e));
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "%s: %s", ob->path, e);
		goto fail;
	}
	if (good < OUTBOX_HEADER) {
		/* The creation's header write was cut: write it again. */
		rc = outbox_create_file(ob->path, NULL, 0);
		good = OUTBOX_HEADER;
	} else if (good < len) {
		/* The torn tail goes, durably, before anything is appended
		 * after it. */
		rc = ftruncate(fd, (off_t)good) < 0 || fsync(fd) < 0 ? -errno : 0;
	}
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "%s: cutting a torn tail: %s",
				 ob->path, strerror(-rc));
		goto fail;
	}
	if (truncated != NULL && len > good)
		*truncated = len - good;
	free(buf);
	buf = NULL;
	close(fd);
	ob->fd = open(ob->path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (ob->fd < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", ob->path,
				 strerror(errno));
		goto fail;
	}
	*out = ob;
	return 0;
fail:
	free(buf);
	if (ob->fd >= 0)
		close(ob->fd);
	outbox_free_state(ob);
	return rc;
}

void outbox_close(struct outbox *ob)
{
	if (ob == NULL)
		return;
	if (ob->fd >= 0)
		close(ob->fd);
	outbox_free_state(ob);
}

uint64_t outbox_through(const struct outbox *ob)
{
	return ob->through; /* the writer's own field: no lock needed */
}

/* ---- the writer's side ---- */

int outbox_observe(struct outbox *ob, const char *origin, size_t origin_len,
		   const Consent__V1__Consent *c)
{
	bool local = origin_len == strlen(OUTBOX_ORIGIN_LOCAL) &&
		     memcmp(origin, OUTBOX_ORIGIN_LOCAL, origin_len) == 0;
	bool iys = origin_len > strlen(OUTBOX_ORIGIN_IYS) &&
		   memcmp(origin, OUTBOX_ORIGIN_IYS, strlen(OUTBOX_ORIGIN_IYS)) == 0;
	struct recipient r;
	const char *why;
	char text[RECIPIENT_TEXT_MAX];
	int rc = 0;

	if ((!local && !iys) || c->status != CONSENT__V1__STATUS__RET)
		return 0;
	if (iys && ob->n == 0)
		return 0; /* nothing to reconcile: the common case of a pull */
	const char *rt = c->recipient ? c->recipient : "";
	/* The writer validated every change (change_validate), so it
	 * normalises; the same key needs the same text whatever form İYS
	 * or the gateway sent. */
	if (recipient_normalize(rt, strlen(rt), &r, &why) < 0)
		return 0;
	int tl = recipient_format(&r, text, sizeof(text));
	if (tl < 0)
		return 0;
	uint64_t h = outbox_key_hash(c->brand_code, (int)c->channel,
				     (int)c->recipient_type, text, (size_t)tl);

	pthread_mutex_lock(&ob->mu);
	if (local) {
		struct outbox_entry e;
		memset(&e, 0, sizeof(e));
		e.sequence = c->sequence;
		e.brand_code = c->brand_code;
		e.iys_code = c->iys_code;
		e.channel = (int)c->channel;
		e.recipient_type = (int)c->recipient_type;
		e.source = (int)c->source;
		e.consent_date = c->consent_date;
		e.creation_date = c->creation_date;
		e.state = OUTBOX_QUEUED;
		e.key_hash = h;
		memcpy(e.recipient, text, (size_t)tl + 1);
		const char *tx = c->transaction_id ? c->transaction_id : "";
		snprintf(e.transaction_id, sizeof(e.transaction_id), "%.*s",
			 OUTBOX_TXID_MAX, tx);
		if (e.sequence <= ob->last_sequence) {
			rc = 0; /* seen already (a rebuild's overlap) */
		} else if ((rc = outbox_grow(ob)) == 0 &&
			   (rc = pend_reserve(ob, q_size(&e))) == 0) {
			ob->pend_len = (size_t)(put_q(ob->pend + ob->pend_len,
						      &e) - ob->pend);
			ob->e[ob->n++] = e;
			ob->last_sequence = e.sequence;
		}
	} else {
		for (size_t i = 0; i < ob->n && rc == 0;) {
			struct outbox_entry *x = &ob->e[i];
			if (x->key_hash != h || x->brand_code != c->brand_code ||
			    x->channel != (int)c->channel ||
			    x->recipient_type != (int)c->recipient_type ||
			    strcmp(x->recipient, text) != 0 ||
			    c->consent_date < x->consent_date ||
			    c->sequence <= x->sequence) {
				i++;
				continue;
			}
			if ((rc = pend_reserve(ob, 17)) < 0)
				break;
			ob->pend_len = (size_t)(put_r(ob->pend + ob->pend_len,
						      x->sequence, c->sequence) -
						ob->pend);
			ob->dead += 2 + (x->state == OUTBOX_PUSHED);
			outbox_remove(ob, x);
		}
	}
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

int outbox_commit(struct outbox *ob, uint64_t through, char *err,
		  size_t err_cap)
{
	int rc = 0;

	pthread_mutex_lock(&ob->mu);
	if (ob->pend_len == 0) {
		pthread_mutex_unlock(&ob->mu);
		return 0;
	}
	if (ob->failed) {
		ob->pend_len = 0;
		rc = errmsg_fail(err, err_cap, -EIO, "%s", ob->fault);
		pthread_mutex_unlock(&ob->mu);
		return rc;
	}
	/* Room for the unit header in front and the T behind: the records
	 * move once, into one buffer written with one call. */
	size_t plen = ob->pend_len + 9;
	uint8_t *unit = malloc(OUTBOX_UNIT_HEADER + plen);
	if (unit == NULL) {
		ob->failed = true;
		snprintf(ob->fault, sizeof(ob->fault), "out of memory");
		ob->pend_len = 0;
		pthread_mutex_unlock(&ob->mu);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	memcpy(unit + OUTBOX_UNIT_HEADER, ob->pend, ob->pend_len);
	put_t(unit + OUTBOX_UNIT_HEADER + ob->pend_len, through);
	ob->pend_len = 0;
	rc = outbox_write_unit(ob, unit, plen, err, err_cap);
	free(unit);
	if (rc == 0) {
		if (through > ob->through)
			ob->through = through;
		ob->dead++;
		if (ob->dead >= OUTBOX_COMPACT_MIN && ob->dead > ob->n)
			rc = outbox_compact(ob, err, err_cap);
	}
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

/* The rebuild's walk: a batch's changes arrive before its commit record,
 * which names the origin; the changes are copied until then. */
struct outbox_walk {
	struct outbox *ob;
	Consent__V1__Consent **chg;
	size_t n, cap;
	int rc;
	int added;
};

static int walk_change(const Consent__V1__Consent *c, void *arg)
{
	struct outbox_walk *wk = arg;
	if (c->status != CONSENT__V1__STATUS__RET)
		return 0; /* only RETs ever matter */
	if (wk->n == wk->cap) {
		size_t cap = wk->cap ? wk->cap * 2 : 64;
		Consent__V1__Consent **p = realloc(wk->chg, cap * sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		wk->chg = p;
		wk->cap = cap;
	}
	Consent__V1__Consent *copy = malloc(sizeof(*copy));
	char *rcp = strdup(c->recipient ? c->recipient : "");
	char *tx = strdup(c->transaction_id ? c->transaction_id : "");
	if (copy == NULL || rcp == NULL || tx == NULL) {
		free(copy);
		free(rcp);
		free(tx);
		return -ENOMEM;
	}
	*copy = *c;
	copy->recipient = rcp;
	copy->transaction_id = tx;
	wk->chg[wk->n++] = copy;
	return 0;
}

static void walk_clear(struct outbox_walk *wk)
{
	for (size_t i = 0; i < wk->n; i++) {
		free(wk->chg[i]->recipient);
		free(wk->chg[i]->transaction_id);
		free(wk->chg[i]);
	}
	wk->n = 0;
}

static int walk_commit(const struct changelog_commit *cm, void *arg)
{
	struct outbox_walk *wk = arg;
	int rc = 0;
	size_t before = wk->ob->n;
	if (cm->kind == ORIGINS_ORIGIN)
		for (size_t i = 0; i < wk->n && rc == 0; i++)
			rc = outbox_observe(wk->ob, cm->origin, cm->origin_len,
					    wk->chg[i]);
	if (wk->ob->n > before)
		wk->added += (int)(wk->ob->n - before);
	walk_clear(wk);
	return rc;
}

int outbox_rebuild(struct outbox *ob, struct changelog *log, char *err,
		   size_t err_cap)
{
	struct outbox_walk wk = { .ob = ob };
	int rc = changelog_replay_all(log, ob->through, walk_change, walk_commit,
				      &wk);
	walk_clear(&wk);
	free(wk.chg);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "rebuilding the outbox from "
				   "the change log: %s", rc == -ENOMEM ?
				   "out of memory" : changelog_error(log));
	/* Through the log's end even when nothing was owed, so the next
	 * open walks only what is new. */
	uint64_t last = changelog_last_sequence(log);
	if (last > ob->through) {
		pthread_mutex_lock(&ob->mu);
		rc = pend_reserve(ob, 9);
		if (rc == 0 && ob->pend_len == 0)
			ob->pend_len = (size_t)(put_t(ob->pend, last) - ob->pend);
		pthread_mutex_unlock(&ob->mu);
		if (rc < 0)
			return errmsg_fail(err, err_cap, rc, "out of memory");
	}
	rc = outbox_commit(ob, last > ob->through ? last : ob->through, err,
			   err_cap);
	return rc < 0 ? rc : wk.added;
}

/* ---- the ops port's side ---- */

int outbox_mark_pushed(struct outbox *ob, uint64_t sequence, const char *id,
		       size_t id_len, char *err, size_t err_cap)
{
	if (id_len == 0 || id_len > OUTBOX_TXID_MAX)
		return errmsg_fail(err, err_cap, -EINVAL, "transaction_id: %s",
				   id_len ? "longer than 128 bytes" : "empty");
	for (size_t i = 0; i < id_len; i++)
		if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f)
			return errmsg_fail(err, err_cap, -EINVAL, "transaction_id: "
					   "holds a control byte");
	int rc;
	pthread_mutex_lock(&ob->mu);
	struct outbox_entry *x = outbox_find(ob, sequence);
	if (x == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOENT, "sequence %" PRIu64
				 ": no entry waiting for İYS (unknown or "
				 "reconciled)", sequence);
	} else if (x->state == OUTBOX_PUSHED) {
		bool same = strlen(x->pushed_id) == id_len &&
			    memcmp(x->pushed_id, id, id_len) == 0;
		rc = same ? 0 : errmsg_fail(err, err_cap, -EEXIST, "sequence %"
					    PRIu64 " was pushed with "
					    "transaction_id \"%s\"", sequence,
					    x->pushed_id);
	} else if (ob->failed) {
		rc = errmsg_fail(err, err_cap, -EIO, "%s", ob->fault);
	} else {
		uint8_t unit[OUTBOX_UNIT_HEADER + 11 + OUTBOX_TXID_MAX];
		size_t plen = (size_t)(put_p(unit + OUTBOX_UNIT_HEADER, sequence,
					     id, id_len) -
				       (unit + OUTBOX_UNIT_HEADER));
		rc = outbox_write_unit(ob, unit, plen, err, err_cap);
		if (rc == 0) {
			x->state = OUTBOX_PUSHED;
			memcpy(x->pushed_id, id, id_len);
			x->pushed_id[id_len] = '\0';
		}
	}
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

size_t outbox_list(struct outbox *ob,
		   bool (*keep)(const struct outbox_entry *e, const void *arg),
		   const void *arg, struct outbox_entry *out, size_t max,
		   uint64_t *depth)
{
	size_t n = 0;
	uint64_t d = 0;
	pthread_mutex_lock(&ob->mu);
	for (size_t i = 0; i < ob->n; i++) {
		if (keep != NULL && !keep(&ob->e[i], arg))
			continue;
		if (n < max)
			out[n++] = ob->e[i];
		d++;
	}
	pthread_mutex_unlock(&ob->mu);
	if (depth != NULL)
		*depth = d;
	return n;
}

bool outbox_get(struct outbox *ob, uint64_t sequence, struct outbox_entry *out)
{
	pthread_mutex_lock(&ob->mu);
	const struct outbox_entry *x = outbox_find(ob, sequence);
	if (x != NULL)
		*out = *x;
	pthread_mutex_unlock(&ob->mu);
	return x != NULL;
}

void outbox_stats(struct outbox *ob, uint64_t *depth, int64_t *oldest)
{
	pthread_mutex_lock(&ob->mu);
	*depth = ob->n;
	*oldest = 0;
	for (size_t i = 0; i < ob->n; i++)
		if (*oldest == 0 || ob->e[i].consent_date < *oldest)
			*oldest = ob->e[i].consent_date;
	pthread_mutex_unlock(&ob->mu);
}
