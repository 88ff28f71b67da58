/*
 * history: the evidence store (see index/history.h).
 *
 * Why this format. The store answers three questions: what did a key's
 * consent look like at a point (a walk of that key's records), what is
 * the chain head at a sequence (a position in log order), and has any of
 * it been rewritten (a scan that recomputes the chain). Append-only
 * segments in log order answer the second and third with sequential
 * reads; a small per-key map plus a back-pointer in every record answers
 * the first without a scan. Nothing is ever rewritten in place, so a
 * record, once written, is evidence as it stands.
 *
 * Files. DIR/history holds segments named by their first global offset
 * (20 decimal digits, ".hist"), so names sort in log order, and "keys",
 * the per-key map. A global position is a segment's base plus the offset
 * in its file; the next segment's base is the previous base plus its
 * size, so positions only grow and 0 (inside the first header) is never
 * a record: a back-pointer of 0 means "none". All integers little-endian.
 *
 *   segment = header (128 bytes), record*
 *   header  = magic "CONSHIS1", u64 base, anchor[32], u64 anchor_seq,
 *             u64 prev_records, i64 prev_max_applied, zeros to 120,
 *             u64 XXH3-64 of the 120 bytes before it
 *   record  = u32 len, u32 len_check, u64 checksum, u64 sequence,
 *             i64 applied_at, u64 prev, u64 key_hash, chain[32],
 *             payload[len]
 *
 * The anchor is the chain before the segment's first record (32 zero
 * bytes for the first segment the store ever had), anchor_seq the
 * sequence of the record before it; prev_records and prev_max_applied
 * summarise the previous segment, which is sealed by then. So open learns
 * everything about a sealed segment from the next header and its own
 * first record, and reads only the newest segment whole; and after
 * history_prune removed the oldest segments, history_verify starts from
 * the first kept header's anchor. payload is the canonical bytes of the
 * change's Consent: protobuf-c packs fields in field-number order and,
 * for proto3, leaves out zero values; unknown fields are dropped; so the
 * bytes depend only on the values (tests/history_test.c checks them
 * against bytes built by hand). chain = SHA-256(previous chain ||
 * payload). len_check is the low half of XXH3-64 of the four len bytes
 * and checksum the XXH3-64 of everything after it (the change log's
 * scheme: a checked length tells a torn tail from a flipped length).
 *
 * A key's chain. key_hash is XXH3-64 over the canonical key (outbox's
 * outbox_key_hash: no secret, the same in every process), 0 read as 1.
 * prev is the global position of the newest earlier record with the
 * same key_hash. The map "keys" is an open-addressing table of {u64
 * key_hash, u64 position of its newest record} after a 4096-byte header
 * (magic, slots, used, covered, synced_end, clean, boot id), mapped
 * shared and grown by doubling into keys.new, then a rename. A walk
 * starts at the slot and follows prev until 0 or a position before the
 * first kept segment, keeping the records whose exact key (canonical
 * recipient, brand, channel, type) is the one asked: two keys whose
 * hashes collide share one chain and cost a longer walk, never a wrong
 * answer.
 *
 * The map is derived and trusted only as far as it can be. A slot is
 * set only after the write of its record returned, and "covered" (the
 * position up to which slots are set) after the slots, so after a kill
 * -9 every slot points at a whole record and open replays the records
 * past covered. A kill cannot lose page-cache writes, but an OS crash or
 * power loss can lose any of them, in any order. So the header also
 * holds the boot id it was written under and a clean flag: history_sync
 * (and close) makes segments and map durable and then sets clean, and
 * the first map change after that clears it durably (one msync of the
 * header page per sync, not per append). At open, a map that is not
 * clean and was written under another boot is rebuilt by scanning every
 * record; otherwise it is trusted and the records past covered replayed.
 *
 * What a crash leaves. An append is one pwrite of whole records (with
 * the header in front when it starts a segment). A kill mid-write leaves
 * a prefix: at the end of the newest segment, part of a record (shorter
 * than its header, or a checked length that runs past the end), or a
 * header shorter than 128 bytes for a segment being created. Open cuts
 * those. A power loss may also leave a record whose checksum fails at
 * the end, a tail of zeros, or, since appends do not fdatasync, damage
 * anywhere past the last history_sync: when the map says the previous
 * writer was not cleanly closed under another boot, open cuts at the
 * first damage at or past the map's synced_end (removing later
 * segments), and history_recover copies the lost changes back from the
 * change log, which is durable. Any other damage is -EPROTO naming the
 * file and offset. No fdatasync in history_append (the header says why:
 * the change log holds the same changes durably); history_sync is where
 * the store becomes durable, before the log may drop them.
 *
 * Threads. The writer owns the newest segment, the map's writes and its
 * own summary. Queries read: the end of finished records is published
 * with a release store after the write returns and read with acquire;
 * slots are set with release after that store (hash before position), so
 * a query that loads a slot and then the end never sees a position past
 * the end. Queries read records with pread. The segment array, the map's
 * mapping and the head_at checkpoints are guarded by qmu: a query holds
 * it for its whole walk; the writer takes it only to add a segment (a
 * roll, every segment_bytes), to swap a grown map, to prune and to
 * reset, so it never waits for more than one query, and never on the
 * common append. Readers never read the newest segment's writer-side
 * fields (its size, its last sequence): they bound it by the end. The
 * summary history_state reports sits under a second mutex, stmu, held
 * for a copy.
 */
#include "index/history.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "core/decision.h"
#include "core/enums.h"
#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/le.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "index/changelog.h"
#include "index/outbox.h"

#define SEG_MAGIC "CONSHIS1"
#define SEG_HDR 128
#define SEG_HDR_SUM 120 /* the header checksum's offset */
#define SEG_NAME_DIGITS 20
#define SEG_SUFFIX ".hist"
#define REC_HDR 80
/* A change is at most CHANGE_BYTES_MAX serialized; setting its sequence
 * adds at most 11 bytes. */
#define REC_PAYLOAD_MAX (CHANGE_BYTES_MAX + 16)
#define KEYS_FILE "keys"
#define KEYS_NEW "keys.new"
#define MAP_MAGIC "CONSHKEY"
#define MAP_HDR 4096
#define MAP_SLOTS_DEFAULT (1ull << 16)
#define BOOT_ID_MAX 47
#define CKPT_EVERY 64 /* head_at: a checkpoint every so many records */
#define SCAN_BUF (1u << 20)
#define RECOVER_GROUP 1024
#define READ_AHEAD 432 /* a query's first pread: header and 432 bytes */

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	      "the key map's slots are read in place as little-endian");
static_assert(SCAN_BUF > REC_HDR + REC_PAYLOAD_MAX, "a record fits a scan");

/* Map header offsets. */
enum {
	MH_MAGIC = 0,
	MH_SLOTS = 8,
	MH_USED = 16,
	MH_COVERED = 24,
	MH_SYNCED = 32,
	MH_CLEAN = 40,
	MH_BOOT = 48, /* BOOT_ID_MAX + 1 bytes, NUL-terminated */
};

struct ckpt {
	uint64_t seq, pos; /* a record's sequence and global position */
};

struct hseg {
	uint64_t base;        /* global position of the file's byte 0 */
	uint64_t size;        /* writer's; readers use the next base or end */
	int fd;
	uint64_t first_seq;   /* with has_first (both set under qmu) */
	bool has_first;       /* it holds a record: a snapshot's may be at 0 */
	uint64_t last_seq;    /* writer's */
	uint64_t records;     /* writer's */
	uint64_t at_last;     /* records with sequence last_seq, if scanned */
	int64_t max_applied;  /* writer's */
	bool counted;         /* at_last known */
	uint8_t anchor[HISTORY_HASH_BYTES];
	uint64_t anchor_seq;
	/* head_at's checkpoints (queries, under qmu). */
	struct ckpt *ck;
	size_t n_ck, cap_ck;
	uint64_t ck_off;      /* file offset scanned to */
	uint64_t ck_records;
};

struct hmap {
	uint8_t *mem;
	size_t bytes;
	uint64_t slots;       /* a power of two */
	int fd;
};

struct history {
	char path[PATH_MAX];  /* DIR/history */
	int dir_fd;           /* flocked */
	uint64_t segment_bytes;
	int64_t keep_seconds;
	char boot_id[BOOT_ID_MAX + 1];

	pthread_mutex_t qmu;  /* segs, map mapping, checkpoints */
	struct hseg *segs;
	size_t n_segs, cap_segs;
	struct hmap map;
	_Atomic uint64_t end; /* global end of published records */

	pthread_mutex_t stmu; /* pub, pub_first_applied, pub_first_base */
	struct history_state pub;
	int64_t pub_first_applied;
	uint64_t pub_first_base;

	/* The writer's own. */
	bool opened;
	bool map_rebuilt;
	uint64_t truncated;
	int failed;
	uint64_t first_seq, last_seq, at_last, records;
	int64_t first_applied;
	uint8_t head[HISTORY_HASH_BYTES];
	bool map_clean;       /* the map's header says clean on disk */
	size_t sync_from;     /* first segment not yet fdatasync'd */
	bool dir_dirty;
	uint8_t *wbuf;
	size_t wcap;
	uint64_t *g_hash, *g_pos; /* a group's keys, for the map after it */
	size_t g_cap;
	uint64_t *gt_key, *gt_pos; /* a group's own key table */
	uint32_t *gt_tag;
	size_t gt_cap;
	uint32_t gt_gen;
	EVP_MD *sha;
	EVP_MD_CTX *md;
};

/* ---- small helpers ---- */

uint64_t history_key_hash(uint32_t brand_code, int channel,
			  int recipient_type, const char *recipient,
			  size_t len)
{
	uint64_t k = outbox_key_hash(brand_code, channel, recipient_type,
				     recipient, len);
	return k ? k : 1; /* 0 marks an empty map slot */
}

static uint32_t len_check(const uint8_t *len_bytes)
{
	return (uint32_t)XXH3_64bits(len_bytes, 4);
}

/* The canonical key text of a Consent: its recipient normalised (the
 * writer validated every change, so it normalises; a record that does
 * not keeps its text as it is). */
static int key_text(const char *rcp, char *buf, size_t cap)
{
	struct recipient r;
	const char *why;
	const char *t = rcp ? rcp : "";
	if (recipient_normalize(t, strlen(t), &r, &why) == 0) {
		int n = recipient_format(&r, buf, cap);
		if (n >= 0)
			return n;
	}
	int n = snprintf(buf, cap, "%s", t);
	return n >= (int)cap ? (int)cap - 1 : n;
}

static uint64_t consent_key_hash(const Consent__V1__Consent *c, char *text,
				 size_t cap, int *text_len)
{
	int n = key_text(c->recipient, text, cap);
	*text_len = n;
	return history_key_hash(c->brand_code, (int)c->channel,
				(int)c->recipient_type, text, (size_t)n);
}

static void seg_name(uint64_t base, char *buf, size_t cap)
{
	snprintf(buf, cap, "%0*" PRIu64 SEG_SUFFIX, SEG_NAME_DIGITS, base);
}

static bool seg_parse_name(const char *name, uint64_t *base)
{
	if (strlen(name) != SEG_NAME_DIGITS + strlen(SEG_SUFFIX) ||
	    strcmp(name + SEG_NAME_DIGITS, SEG_SUFFIX) != 0)
		return false;
	uint64_t v = 0;
	for (int i = 0; i < SEG_NAME_DIGITS; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	*base = v;
	return true;
}

static int read_boot_id(char *out)
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	out[0] = '\0';
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, out, BOOT_ID_MAX);
	int e = errno;
	close(fd);
	if (n < 0)
		return -e;
	out[n] = '\0';
	while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
		out[--n] = '\0';
	return 0;
}

static int sha_chain(EVP_MD_CTX *md, const EVP_MD *sha,
		     const uint8_t prev[HISTORY_HASH_BYTES],
		     const uint8_t *payload, size_t len,
		     uint8_t out[HISTORY_HASH_BYTES])
{
	unsigned olen = 0;
	if (EVP_DigestInit_ex(md, sha, NULL) != 1 ||
	    EVP_DigestUpdate(md, prev, HISTORY_HASH_BYTES) != 1 ||
	    EVP_DigestUpdate(md, payload, len) != 1 ||
	    EVP_DigestFinal_ex(md, out, &olen) != 1 ||
	    olen != HISTORY_HASH_BYTES)
		return -EIO;
	return 0;
}

static Consent__V1__Consent canonical_of(const Consent__V1__Consent *c)
{
	Consent__V1__Consent k = *c;
	/* Unknown fields are not part of the value (DESIGN §10). */
	k.base.n_unknown_fields = 0;
	k.base.unknown_fields = NULL;
	return k;
}

/* ---- records ---- */

/* As history_record_decode, but -EBADMSG (out->payload_len set) for a
 * record whose framing holds and whose checksum fails: the one shape of
 * damage a torn tail may have besides a short record. */
static int rec_decode(const uint8_t *p, size_t len, struct history_record *out,
		      const char **why)
{
	if (len < 8)
		return 0;
	uint32_t plen = le_get32(p);
	if (len_check(p) != le_get32(p + 4)) {
		*why = "record length check fails";
		return -EPROTO;
	}
	if (plen == 0 || plen > REC_PAYLOAD_MAX) {
		*why = "record length out of range";
		return -EPROTO;
	}
	if (len < (size_t)REC_HDR + plen)
		return 0;
	out->payload_len = plen;
	if (XXH3_64bits(p + 16, REC_HDR - 16 + (size_t)plen) != le_get64(p + 8)) {
		*why = "record checksum mismatch";
		return -EBADMSG;
	}
	out->sequence = le_get64(p + 16);
	out->applied_at = (int64_t)le_get64(p + 24);
	out->prev = le_get64(p + 32);
	out->key_hash = le_get64(p + 40);
	memcpy(out->chain, p + 48, HISTORY_HASH_BYTES);
	out->payload = p + REC_HDR;
	return (int)(REC_HDR + plen);
}

int history_record_decode(const uint8_t *p, size_t len,
			  struct history_record *out, const char **why)
{
	int rc = rec_decode(p, len, out, why);
	return rc == -EBADMSG ? -EPROTO : rc;
}

static void rec_encode_header(uint8_t *p, uint32_t plen, uint64_t seq,
			      int64_t applied_at, uint64_t prev, uint64_t kh,
			      const uint8_t chain[HISTORY_HASH_BYTES])
{
	le_put32(p, plen);
	le_put32(p + 4, len_check(p));
	le_put64(p + 16, seq);
	le_put64(p + 24, (uint64_t)applied_at);
	le_put64(p + 32, prev);
	le_put64(p + 40, kh);
	memcpy(p + 48, chain, HISTORY_HASH_BYTES);
	le_put64(p + 8, XXH3_64bits(p + 16, REC_HDR - 16 + (size_t)plen));
}

static void seg_header_encode(uint8_t *p, uint64_t base,
			      const uint8_t anchor[HISTORY_HASH_BYTES],
			      uint64_t anchor_seq, uint64_t prev_records,
			      int64_t prev_max_applied)
{
	memset(p, 0, SEG_HDR);
	memcpy(p, SEG_MAGIC, 8);
	le_put64(p + 8, base);
	memcpy(p + 16, anchor, HISTORY_HASH_BYTES);
	le_put64(p + 48, anchor_seq);
	le_put64(p + 56, prev_records);
	le_put64(p + 64, (uint64_t)prev_max_applied);
	le_put64(p + SEG_HDR_SUM, XXH3_64bits(p, SEG_HDR_SUM));
}

struct seg_header {
	uint64_t base;
	uint8_t anchor[HISTORY_HASH_BYTES];
	uint64_t anchor_seq, prev_records;
	int64_t prev_max_applied;
};

static int seg_header_decode(const uint8_t *p, struct seg_header *h,
			     const char **why)
{
	if (memcmp(p, SEG_MAGIC, 8) != 0) {
		*why = "not a history segment (magic)";
		return -EPROTO;
	}
	if (XXH3_64bits(p, SEG_HDR_SUM) != le_get64(p + SEG_HDR_SUM)) {
		*why = "segment header checksum mismatch";
		return -EPROTO;
	}
	h->base = le_get64(p + 8);
	memcpy(h->anchor, p + 16, HISTORY_HASH_BYTES);
	h->anchor_seq = le_get64(p + 48);
	h->prev_records = le_get64(p + 56);
	h->prev_max_applied = (int64_t)le_get64(p + 64);
	return 0;
}

/* A sequential reader of one file's records [off, stop). */
struct scan {
	int fd;
	uint8_t *buf;
	size_t have, at;   /* buf[at..have) unread */
	uint64_t buf_off;  /* file offset of buf[0] */
	uint64_t stop;
};

static int scan_init(struct scan *s, int fd, uint64_t off, uint64_t stop)
{
	s->buf = malloc(SCAN_BUF);
	if (s->buf == NULL)
		return -ENOMEM;
	s->fd = fd;
	s->have = s->at = 0;
	s->buf_off = off;
	s->stop = stop;
	return 0;
}

static void scan_fini(struct scan *s)
{
	free(s->buf);
	s->buf = NULL;
}

/* 1 and the record at *off; 0 at stop; -EAGAIN for a partial record
 * running to stop; -EPROTO/-EBADMSG (*why) for damage; -errno. *off is
 * the record's file offset in every case but 0. */
static int scan_next(struct scan *s, struct history_record *r, uint64_t *off,
		     const char **why)
{
	for (;;) {
		*off = s->buf_off + s->at;
		if (*off >= s->stop)
			return 0;
		int rc = rec_decode(s->buf + s->at, s->have - s->at, r, why);
		if (rc > 0) {
			s->at += (size_t)rc;
			return 1;
		}
		if (rc < 0)
			return rc;
		/* More bytes needed: refill, keeping the unread part. */
		if (s->buf_off + s->have >= s->stop)
			return -EAGAIN;
		memmove(s->buf, s->buf + s->at, s->have - s->at);
		s->buf_off += s->at;
		s->have -= s->at;
		s->at = 0;
		uint64_t want = s->stop - (s->buf_off + s->have);
		if (want > SCAN_BUF - s->have)
			want = SCAN_BUF - s->have;
		ssize_t n = pread(s->fd, s->buf + s->have, (size_t)want,
				  (off_t)(s->buf_off + s->have));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EAGAIN; /* the file is shorter than stop */
		s->have += (size_t)n;
	}
}

/* Reads the record at file offset off of fd (whole, checksum checked)
 * into *buf (grown as needed). */
static int read_record(int fd, uint64_t off, uint8_t **buf, size_t *cap,
		       struct history_record *r, const char **why)
{
	if (*cap < REC_HDR + REC_PAYLOAD_MAX) {
		uint8_t *nb = realloc(*buf, REC_HDR + REC_PAYLOAD_MAX);
		if (nb == NULL)
			return -ENOMEM;
		*buf = nb;
		*cap = REC_HDR + REC_PAYLOAD_MAX;
	}
	/* One pread for the header and a typical payload (a Consent is
	 * ~100 bytes), a second only for a longer one. */
	ssize_t n = pread(fd, *buf, REC_HDR + READ_AHEAD, (off_t)off);
	if (n < 0)
		return -errno;
	if (n < REC_HDR) {
		*why = "record past the end of the file";
		return -EPROTO;
	}
	uint32_t plen = le_get32(*buf);
	if (plen <= REC_PAYLOAD_MAX && plen > 0 &&
	    (size_t)n < REC_HDR + (size_t)plen) {
		size_t have = (size_t)n - REC_HDR;
		n = pread(fd, *buf + REC_HDR + have, plen - have,
			  (off_t)(off + REC_HDR + have));
		if (n < 0)
			return -errno;
		if ((size_t)n < plen - have) {
			*why = "record past the end of the file";
			return -EPROTO;
		}
	}
	int rc = rec_decode(*buf, REC_HDR + (size_t)plen, r, why);
	if (rc == 0) {
		*why = "record past the end of the file";
		return -EPROTO;
	}
	return rc < 0 ? -EPROTO : 0;
}

static bool all_zero_from(int fd, uint64_t off, uint64_t stop)
{
	uint8_t b[4096];
	while (off < stop) {
		size_t want = stop - off > sizeof(b) ? sizeof(b)
						     : (size_t)(stop - off);
		ssize_t n = pread(fd, b, want, (off_t)off);
		if (n <= 0)
			return false;
		for (ssize_t i = 0; i < n; i++)
			if (b[i] != 0)
				return false;
		off += (uint64_t)n;
	}
	return true;
}

/* ---- the key map ---- */

static _Atomic uint64_t *map_slot(const struct hmap *m, uint64_t i)
{
	return (_Atomic uint64_t *)(void *)(m->mem + MAP_HDR) + 2 * i;
}

/* The newest record's position of key hash kh, or 0. Any thread (the
 * mapping held under qmu by queries). */
static uint64_t map_find(const struct hmap *m, uint64_t kh)
{
	uint64_t mask = m->slots - 1;
	for (uint64_t i = kh & mask, n = 0; n < m->slots; i = (i + 1) & mask, n++) {
		_Atomic uint64_t *s = map_slot(m, i);
		/* Acquire: pairs with map_set's release of the position,
		 * which it stores after the hash. */
		uint64_t pos = atomic_load_explicit(&s[1], memory_order_acquire);
		if (pos == 0)
			return 0;
		if (atomic_load_explicit(&s[0], memory_order_relaxed) == kh)
			return pos;
	}
	return 0;
}

/* Writer: sets kh's slot to pos (room ensured by map_reserve). */
static void map_set(struct hmap *m, uint64_t kh, uint64_t pos)
{
	uint64_t mask = m->slots - 1;
	for (uint64_t i = kh & mask;; i = (i + 1) & mask) {
		_Atomic uint64_t *s = map_slot(m, i);
		/* Relaxed loads: only this thread writes slots. */
		uint64_t p = atomic_load_explicit(&s[1], memory_order_relaxed);
		if (p == 0) {
			atomic_store_explicit(&s[0], kh, memory_order_relaxed);
			/* Release: pairs with map_find's acquire; publishes
			 * the hash stored just before. */
			atomic_store_explicit(&s[1], pos, memory_order_release);
			le_put64(m->mem + MH_USED, le_get64(m->mem + MH_USED) + 1);
			return;
		}
		if (atomic_load_explicit(&s[0], memory_order_relaxed) == kh) {
			/* Release: as above. */
			atomic_store_explicit(&s[1], pos, memory_order_release);
			return;
		}
	}
}

static void map_close(struct hmap *m)
{
	if (m->mem != NULL && m->mem != MAP_FAILED)
		munmap(m->mem, m->bytes);
	if (m->fd >= 0)
		close(m->fd);
	m->mem = NULL;
	m->fd = -1;
}

static int map_map(struct hmap *m)
{
	m->mem = mmap(NULL, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		      m->fd, 0);
	if (m->mem == MAP_FAILED) {
		m->mem = NULL;
		return -errno;
	}
	return 0;
}

/* A new, empty map file at name (replacing one there). */
static int map_create(struct history *h, const char *name, uint64_t slots,
		      struct hmap *m)
{
	m->fd = -1;
	m->mem = NULL;
	m->slots = slots;
	m->bytes = MAP_HDR + (size_t)slots * 16;
	unlinkat(h->dir_fd, name, 0);
	m->fd = openat(h->dir_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
		       0644);
	if (m->fd < 0)
		return -errno;
	int rc = 0;
	if (ftruncate(m->fd, (off_t)m->bytes) != 0 || (rc = map_map(m)) < 0) {
		rc = rc < 0 ? rc : -errno;
		map_close(m);
		return rc;
	}
	memcpy(m->mem + MH_MAGIC, MAP_MAGIC, 8);
	le_put64(m->mem + MH_SLOTS, slots);
	snprintf((char *)m->mem + MH_BOOT, BOOT_ID_MAX + 1, "%s", h->boot_id);
	h->dir_dirty = true;
	return 0;
}

/* The existing map, if it is well formed: 0, or -EPROTO / -errno (the
 * caller then rebuilds). */
static int map_open(struct history *h, struct hmap *m)
{
	m->mem = NULL;
	m->fd = openat(h->dir_fd, KEYS_FILE, O_RDWR | O_CLOEXEC);
	if (m->fd < 0)
		return -errno;
	struct stat st;
	uint8_t hd[64];
	if (fstat(m->fd, &st) != 0 || pread(m->fd, hd, sizeof(hd), 0) != 64 ||
	    memcmp(hd, MAP_MAGIC, 8) != 0) {
		map_close(m);
		return -EPROTO;
	}
	m->slots = le_get64(hd + MH_SLOTS);
	if (m->slots == 0 || (m->slots & (m->slots - 1)) != 0 ||
	    m->slots > (1ull << 40) ||
	    (uint64_t)st.st_size != MAP_HDR + m->slots * 16) {
		map_close(m);
		return -EPROTO;
	}
	m->bytes = (size_t)st.st_size;
	int rc = map_map(m);
	if (rc < 0)
		map_close(m);
	return rc;
}

/* Writer: clears the clean flag durably before the first map change
 * after a sync (so that a crash never leaves "clean" over slots that
 * went on changing). */
static int map_dirty(struct history *h)
{
	if (!h->map_clean)
		return 0;
	le_put32(h->map.mem + MH_CLEAN, 0);
	if (msync(h->map.mem, MAP_HDR, MS_SYNC) != 0)
		return -errno;
	h->map_clean = false;
	return 0;
}

/* Writer: room for n more keys at a load of at most one half, growing by
 * doubling into keys.new, renamed over keys, swapped under qmu. */
static int map_reserve(struct history *h, uint64_t n)
{
	uint64_t used = le_get64(h->map.mem + MH_USED);
	if ((used + n) * 2 <= h->map.slots)
		return 0;
	uint64_t slots = h->map.slots;
	while ((used + n) * 2 > slots)
		slots *= 2;
	struct hmap nm;
	int rc = map_create(h, KEYS_NEW, slots, &nm);
	if (rc < 0)
		return rc;
	for (uint64_t i = 0; i < h->map.slots; i++) {
		_Atomic uint64_t *s = map_slot(&h->map, i);
		uint64_t p = atomic_load_explicit(&s[1], memory_order_relaxed);
		if (p != 0)
			map_set(&nm, atomic_load_explicit(&s[0],
							  memory_order_relaxed),
				p);
	}
	le_put64(nm.mem + MH_COVERED, le_get64(h->map.mem + MH_COVERED));
	le_put64(nm.mem + MH_SYNCED, le_get64(h->map.mem + MH_SYNCED));
	if (renameat(h->dir_fd, KEYS_NEW, h->dir_fd, KEYS_FILE) != 0) {
		rc = -errno;
		map_close(&nm);
		unlinkat(h->dir_fd, KEYS_NEW, 0);
		return rc;
	}
	struct hmap old = h->map;
	pthread_mutex_lock(&h->qmu);
	h->map = nm;
	pthread_mutex_unlock(&h->qmu);
	map_close(&old);
	h->map_clean = false; /* a new file, header clean = 0 */
	return 0;
}

/* ---- state ---- */

static void publish(struct history *h)
{
	uint64_t bytes = h->map.bytes;
	for (size_t i = 0; i < h->n_segs; i++)
		bytes += h->segs[i].size;
	pthread_mutex_lock(&h->stmu);
	h->pub.first_sequence = h->first_seq;
	h->pub.last_sequence = h->last_seq;
	h->pub.head_sequence = h->last_seq;
	h->pub.records = h->records;
	h->pub.bytes = bytes;
	memcpy(h->pub.head, h->head, HISTORY_HASH_BYTES);
	h->pub_first_applied = h->first_applied;
	h->pub_first_base = h->n_segs ? h->segs[0].base : 0;
	h->pub.map_rebuilt = h->map_rebuilt;
	h->pub.truncated_bytes = h->truncated;
	pthread_mutex_unlock(&h->stmu);
}

void history_state(struct history *h, struct history_state *out)
{
	pthread_mutex_lock(&h->stmu);
	*out = h->pub;
	pthread_mutex_unlock(&h->stmu);
}

static int seg_add(struct history *h, const struct hseg *s)
{
	if (h->n_segs == h->cap_segs) {
		size_t nc = h->cap_segs ? 2 * h->cap_segs : 16;
		struct hseg *n = malloc(nc * sizeof(*n));
		if (n == NULL)
			return -ENOMEM;
		/* Readers hold qmu while they use segs (and extend their
		 * checkpoints in it): copied under it too. */
		pthread_mutex_lock(&h->qmu);
		if (h->n_segs)
			memcpy(n, h->segs, h->n_segs * sizeof(*n));
		struct hseg *old = h->segs;
		h->segs = n;
		h->cap_segs = nc;
		h->segs[h->n_segs++] = *s;
		pthread_mutex_unlock(&h->qmu);
		free(old);
		return 0;
	}
	pthread_mutex_lock(&h->qmu);
	h->segs[h->n_segs++] = *s;
	pthread_mutex_unlock(&h->qmu);
	return 0;
}

static void seg_free(struct hseg *s)
{
	if (s->fd >= 0)
		close(s->fd);
	free(s->ck);
	s->fd = -1;
	s->ck = NULL;
}

/* The first record's sequence and applied_at of segment s (0 when it
 * has none). */
static int seg_first(struct hseg *s, uint64_t *seq, int64_t *applied)
{
	uint8_t b[REC_HDR];
	*seq = 0;
	*applied = 0;
	ssize_t n = pread(s->fd, b, REC_HDR, SEG_HDR);
	if (n < 0)
		return -errno;
	if (n < REC_HDR)
		return 0;
	*seq = le_get64(b + 16);
	*applied = (int64_t)le_get64(b + 24);
	return 0;
}

/* ---- open ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The segment bases in DIR/history, sorted. */
static int list_segments(struct history *h, uint64_t **out, size_t *n)
{
	int fd = dup(h->dir_fd);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		int e = errno;
		close(fd);
		return -e;
	}
	rewinddir(d);
	uint64_t *v = NULL;
	size_t nv = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t base;
		if (!seg_parse_name(de->d_name, &base))
			continue;
		if (nv == cap) {
			cap = cap ? 2 * cap : 16;
			uint64_t *nb = realloc(v, cap * sizeof(*v));
			if (nb == NULL) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nb;
		}
		v[nv++] = base;
	}
	closedir(d);
	if (nv)
		qsort(v, nv, sizeof(*v), cmp_u64);
	*out = v;
	*n = nv;
	return 0;
}

static void seg_path(const struct history *h, uint64_t base, char *buf,
		     size_t cap)
{
	char name[64];
	seg_name(base, name, sizeof(name));
	snprintf(buf, cap, "%s/%s", h->path, name);
}

/* Removes segments [from, n_segs). */
static void drop_segments_from(struct history *h, size_t from)
{
	while (h->n_segs > from) {
		char name[64];
		pthread_mutex_lock(&h->qmu);
		struct hseg s = h->segs[h->n_segs - 1];
		h->n_segs--;
		pthread_mutex_unlock(&h->qmu);
		seg_name(s.base, name, sizeof(name));
		seg_free(&s);
		unlinkat(h->dir_fd, name, 0);
		h->dir_dirty = true;
	}
}

/* Scans segment i whole: its records, sequences in order, the map
 * updated for records at or past map_from; a torn tail (or, past
 * suspect_from, any damage) cut. *cut is set when the scan cut. */
static int scan_segment(struct history *h, size_t i, uint64_t map_from,
			uint64_t suspect_from, uint64_t *prev_seq, bool *cut,
			char *err, size_t err_cap)
{
	struct hseg *s = &h->segs[i];
	struct scan sc;
	struct history_record r;
	uint64_t off;
	const char *why = "";
	int rc = scan_init(&sc, s->fd, SEG_HDR, s->size);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "history: out of memory");
	s->records = 0;
	s->first_seq = 0;
	s->has_first = false;
	s->last_seq = s->anchor_seq;
	s->at_last = 0;
	s->max_applied = INT64_MIN;
	*cut = false;
	while ((rc = scan_next(&sc, &r, &off, &why)) == 1) {
		if (r.sequence < *prev_seq) {
			why = "sequence below the previous record's";
			rc = -EPROTO;
			break;
		}
		*prev_seq = r.sequence;
		if (s->records == 0) {
			s->first_seq = r.sequence;
			s->has_first = true;
		}
		if (r.sequence == s->last_seq && s->records > 0)
			s->at_last++;
		else
			s->at_last = 1;
		s->last_seq = r.sequence;
		s->records++;
		if (r.applied_at > s->max_applied)
			s->max_applied = r.applied_at;
		memcpy(h->head, r.chain, HISTORY_HASH_BYTES);
		uint64_t pos = s->base + off;
		if (pos >= map_from) {
			int mr = map_reserve(h, 1);
			if (mr < 0) {
				scan_fini(&sc);
				return errmsg_fail(err, err_cap, mr,
						   "history: key map: %s",
						   strerror(-mr));
			}
			map_set(&h->map, r.key_hash, pos);
		}
	}
	scan_fini(&sc);
	s->counted = true;
	if (rc == 0)
		return 0;
	bool last = i + 1 == h->n_segs;
	bool torn;
	if (rc == -EAGAIN)
		torn = last;
	else if (rc == -EBADMSG)
		torn = last && off + REC_HDR + r.payload_len == s->size;
	else if (rc == -EPROTO)
		torn = last && all_zero_from(s->fd, off, s->size);
	else
		return errmsg_fail(err, err_cap, rc, "%s: read: %s", h->path,
				   strerror(-rc));
	/* Past the last sync of a writer an OS crash stopped, any damage
	 * is what the crash left (see the essay). */
	if (s->base + off >= suspect_from)
		torn = true;
	if (!torn) {
		char p[PATH_MAX + 64];
		seg_path(h, s->base, p, sizeof(p));
		return errmsg_fail(err, err_cap, -EPROTO,
				   "%s: offset %" PRIu64 ": %s", p, off, why);
	}
	if (ftruncate(s->fd, (off_t)off) != 0)
		return errmsg_fail(err, err_cap, -errno, "%s: truncate: %s",
				   h->path, strerror(errno));
	h->truncated += s->size - off;
	for (size_t j = i + 1; j < h->n_segs; j++)
		h->truncated += h->segs[j].size;
	s->size = off;
	*cut = true;
	h->dir_dirty = true;
	drop_segments_from(h, i + 1);
	return 0;
}

/* How many records of segment i have sequence seq (a scan). */
static int seg_count_seq(struct history *h, size_t i, uint64_t seq,
			 uint64_t *count)
{
	struct hseg *s = &h->segs[i];
	struct scan sc;
	struct history_record r;
	uint64_t off;
	const char *why;
	int rc = scan_init(&sc, s->fd, SEG_HDR, s->size);
	*count = 0;
	if (rc < 0)
		return rc;
	while ((rc = scan_next(&sc, &r, &off, &why)) == 1)
		if (r.sequence == seq)
			(*count)++;
	scan_fini(&sc);
	return rc < 0 ? -EPROTO : 0;
}

static int open_segments(struct history *h, char *err, size_t err_cap)
{
	uint64_t *bases = NULL;
	size_t nb = 0;
	int rc = list_segments(h, &bases, &nb);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: list: %s", h->path,
				   strerror(-rc));
	for (size_t i = 0; i < nb; i++) {
		char name[64], p[PATH_MAX + 64];
		seg_name(bases[i], name, sizeof(name));
		snprintf(p, sizeof(p), "%s/%s", h->path, name);
		struct hseg s;
		memset(&s, 0, sizeof(s));
		s.base = bases[i];
		s.fd = openat(h->dir_fd, name, O_RDWR | O_CLOEXEC);
		if (s.fd < 0) {
			rc = errmsg_fail(err, err_cap, -errno, "%s: %s", p,
					 strerror(errno));
			goto out;
		}
		struct stat st;
		uint8_t hb[SEG_HDR];
		struct seg_header sh;
		const char *why = "segment header shorter than its size";
		if (fstat(s.fd, &st) != 0) {
			rc = errmsg_fail(err, err_cap, -errno, "%s: %s", p,
					 strerror(errno));
			close(s.fd);
			goto out;
		}
		s.size = (uint64_t)st.st_size;
		bool ok = s.size >= SEG_HDR &&
			  pread(s.fd, hb, SEG_HDR, 0) == SEG_HDR &&
			  seg_header_decode(hb, &sh, &why) == 0;
		if (!ok) {
			/* A segment whose creation a crash cut: the last,
			 * with a short header or none (zeros). */
			if (i + 1 == nb &&
			    (s.size < SEG_HDR ||
			     all_zero_from(s.fd, 0, SEG_HDR))) {
				close(s.fd);
				unlinkat(h->dir_fd, name, 0);
				h->dir_dirty = true;
				break;
			}
			rc = errmsg_fail(err, err_cap, -EPROTO,
					 "%s: offset 0: %s", p, why);
			close(s.fd);
			goto out;
		}
		if (sh.base != s.base) {
			rc = errmsg_fail(err, err_cap, -EPROTO,
					 "%s: offset 0: header says base %" PRIu64,
					 p, sh.base);
			close(s.fd);
			goto out;
		}
		if (h->n_segs > 0) {
			const struct hseg *pv = &h->segs[h->n_segs - 1];
			if (s.base != pv->base + pv->size) {
				rc = errmsg_fail(err, err_cap, -EPROTO,
						 "%s: offset 0: base does not follow the previous segment's end %" PRIu64,
						 p, pv->base + pv->size);
				close(s.fd);
				goto out;
			}
		}
		memcpy(s.anchor, sh.anchor, HISTORY_HASH_BYTES);
		s.anchor_seq = sh.anchor_seq;
		if (h->n_segs > 0) {
			struct hseg *pv = &h->segs[h->n_segs - 1];
			pv->last_seq = sh.anchor_seq;
			pv->records = sh.prev_records;
			pv->max_applied = sh.prev_max_applied;
		}
		rc = seg_add(h, &s);
		if (rc < 0) {
			close(s.fd);
			goto out;
		}
	}
	rc = 0;
out:
	free(bases);
	return rc;
}

static int history_load(struct history *h, uint64_t map_slots, char *err,
			size_t err_cap)
{
	int rc = open_segments(h, err, err_cap);
	if (rc < 0)
		return rc;

	/* The map: trusted, or rebuilt (see the essay). */
	uint64_t total_end = h->n_segs ? h->segs[h->n_segs - 1].base +
						 h->segs[h->n_segs - 1].size
				       : 0;
	bool trust = false;
	uint64_t suspect_from = UINT64_MAX, covered = 0;
	if (map_open(h, &h->map) == 0) {
		bool clean = le_get32(h->map.mem + MH_CLEAN) == 1;
		char boot[BOOT_ID_MAX + 1];
		memcpy(boot, h->map.mem + MH_BOOT, BOOT_ID_MAX);
		boot[BOOT_ID_MAX] = '\0';
		bool same_boot = strcmp(boot, h->boot_id) == 0;
		covered = le_get64(h->map.mem + MH_COVERED);
		trust = (clean || same_boot) && covered <= total_end;
		if (!clean && !same_boot)
			suspect_from = le_get64(h->map.mem + MH_SYNCED);
	}

	/* The newest segment always, and every segment from the one that
	 * holds covered (all of them for a rebuild), are scanned. */
	size_t from = h->n_segs;
	if (h->n_segs > 0) {
		from = h->n_segs - 1;
		if (!trust || suspect_from != UINT64_MAX)
			from = 0;
		else
			while (from > 0 && h->segs[from].base > covered)
				from--;
	}
	for (;;) {
		if (!trust) {
			map_close(&h->map);
			rc = map_create(h, KEYS_FILE, map_slots, &h->map);
			if (rc < 0)
				return errmsg_fail(err, err_cap, rc,
						   "%s/%s: %s", h->path,
						   KEYS_FILE, strerror(-rc));
			covered = 0;
			h->map_rebuilt = true;
		}
		uint64_t prev_seq = from > 0 ? h->segs[from].anchor_seq : 0;
		bool cut = false;
		for (size_t i = from; i < h->n_segs && !cut; i++) {
			rc = scan_segment(h, i, covered, suspect_from,
					  &prev_seq, &cut, err, err_cap);
			if (rc < 0)
				return rc;
		}
		uint64_t end = h->n_segs ? h->segs[h->n_segs - 1].base +
						   h->segs[h->n_segs - 1].size
					 : 0;
		if (trust && covered > end) {
			trust = false; /* the cut went below it: rebuild */
			from = 0;
			continue;
		}
		break;
	}

	/* Sealed segments not scanned: first records. */
	h->first_seq = 0;
	h->records = 0;
	h->last_seq = 0;
	h->at_last = 0;
	for (size_t i = 0; i < h->n_segs; i++) {
		struct hseg *s = &h->segs[i];
		if (!s->counted) {
			int64_t a;
			rc = seg_first(s, &s->first_seq, &a);
			if (rc < 0)
				return errmsg_fail(err, err_cap, rc, "%s: %s",
						   h->path, strerror(-rc));
			s->has_first = s->records > 0;
		}
		h->records += s->records;
	}
	if (h->n_segs > 0) {
		struct hseg *nw = &h->segs[h->n_segs - 1];
		h->last_seq = nw->records ? nw->last_seq : nw->anchor_seq;
		/* head: the newest segment was scanned. */
		if (nw->records == 0)
			memcpy(h->head, nw->anchor, HISTORY_HASH_BYTES);
		/* How many records share the last sequence, back through
		 * segments a long run of one sequence spans. */
		for (size_t i = h->n_segs; i-- > 0;) {
			struct hseg *s = &h->segs[i];
			if (s->records == 0)
				continue;
			if (s->last_seq != h->last_seq)
				break;
			uint64_t c = s->at_last;
			if (!s->counted) {
				rc = seg_count_seq(h, i, h->last_seq, &c);
				if (rc < 0)
					return errmsg_fail(err, err_cap, rc,
							   "%s: %s", h->path,
							   strerror(-rc));
			}
			h->at_last += c;
			if (s->first_seq != h->last_seq)
				break;
		}
		for (size_t i = 0; i < h->n_segs; i++) {
			if (h->segs[i].records == 0)
				continue;
			uint64_t sq;
			rc = seg_first(&h->segs[i], &sq, &h->first_applied);
			if (rc < 0)
				return errmsg_fail(err, err_cap, rc, "%s: %s",
						   h->path, strerror(-rc));
			h->first_seq = sq;
			break;
		}
	}
	uint64_t end = h->n_segs ? h->segs[h->n_segs - 1].base +
					   h->segs[h->n_segs - 1].size
				 : 0;
	atomic_store_explicit(&h->end, end, memory_order_release);
	le_put64(h->map.mem + MH_COVERED, end);
	/* This writer's boot, and not clean while it runs. */
	snprintf((char *)h->map.mem + MH_BOOT, BOOT_ID_MAX + 1, "%s",
		 h->boot_id);
	le_put32(h->map.mem + MH_CLEAN, 0);
	if (msync(h->map.mem, MAP_HDR, MS_SYNC) != 0)
		return errmsg_fail(err, err_cap, -errno, "%s/%s: msync: %s",
				   h->path, KEYS_FILE, strerror(errno));
	h->map_clean = false;
	h->sync_from = h->n_segs ? h->n_segs - 1 : 0;
	publish(h);
	return 0;
}

int history_open(const char *dir, const struct history_options *opt,
		 struct history **out, char *err, size_t err_cap)
{
	struct history *h = calloc(1, sizeof(*h));
	int rc;
	*out = NULL;
	if (h == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "history: out of memory");
	h->dir_fd = -1;
	h->map.fd = -1;
	pthread_mutex_init(&h->qmu, NULL);
	pthread_mutex_init(&h->stmu, NULL);
	h->segment_bytes = opt && opt->segment_bytes ? opt->segment_bytes
						     : HISTORY_SEGMENT_BYTES_DEFAULT;
	h->keep_seconds = opt ? opt->keep_seconds : 0;
	uint64_t map_slots = opt && opt->map_slots ? opt->map_slots
						   : MAP_SLOTS_DEFAULT;
	if ((map_slots & (map_slots - 1)) != 0 || map_slots < 4) {
		rc = errmsg_fail(err, err_cap, -EINVAL,
				 "history: map_slots %" PRIu64 " is not a power of two >= 4",
				 map_slots);
		goto fail;
	}
	if (opt && opt->boot_id)
		snprintf(h->boot_id, sizeof(h->boot_id), "%s", opt->boot_id);
	else
		read_boot_id(h->boot_id); /* none: "" (never trusted as same) */
	if (snprintf(h->path, sizeof(h->path), "%s/%s", dir, HISTORY_DIR) >=
	    (int)sizeof(h->path)) {
		rc = errmsg_fail(err, err_cap, -ENAMETOOLONG,
				 "history: %s: path too long", dir);
		goto fail;
	}
	if (mkdir(h->path, 0755) == 0) {
		/* Durable in DIR before anything goes in: the snapshot's
		 * records are nowhere else. */
		rc = fsutil_fsync_dir(dir);
		if (rc < 0) {
			errmsg_set(err, err_cap, "%s: fsync: %s", dir,
				   strerror(-rc));
			goto fail;
		}
	} else if (errno != EEXIST) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: mkdir: %s", h->path,
				 strerror(errno));
		goto fail;
	}
	h->dir_fd = open(h->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (h->dir_fd < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", h->path,
				 strerror(errno));
		goto fail;
	}
	if (flock(h->dir_fd, LOCK_EX | LOCK_NB) != 0) {
		rc = errno == EWOULDBLOCK
			     ? errmsg_fail(err, err_cap, -EBUSY,
					   "%s: held by another process",
					   h->path)
			     : errmsg_fail(err, err_cap, -errno, "%s: flock: %s",
					   h->path, strerror(errno));
		goto fail;
	}
	unlinkat(h->dir_fd, KEYS_NEW, 0); /* a growth a crash interrupted */
	h->sha = EVP_MD_fetch(NULL, "SHA256", NULL);
	h->md = EVP_MD_CTX_new();
	if (h->sha == NULL || h->md == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOMEM,
				 "history: libcrypto has no SHA-256");
		goto fail;
	}
	rc = history_load(h, map_slots, err, err_cap);
	if (rc < 0)
		goto fail;
	h->opened = true;
	*out = h;
	return 0;
fail:
	history_close(h);
	return rc;
}

/* ---- sync, close ---- */

static int do_sync(struct history *h, char *err, size_t err_cap)
{
	if (h->failed)
		return errmsg_fail(err, err_cap, h->failed,
				   "history: failed earlier: %s",
				   strerror(-h->failed));
	for (size_t i = h->sync_from; i < h->n_segs; i++) {
		if (fdatasync(h->segs[i].fd) != 0) {
			h->failed = -errno;
			return errmsg_fail(err, err_cap, h->failed,
					   "%s: fdatasync: %s", h->path,
					   strerror(errno));
		}
	}
	h->sync_from = h->n_segs ? h->n_segs - 1 : 0;
	if (h->dir_dirty) {
		int rc = fsutil_fsync_dir(h->path);
		if (rc < 0) {
			h->failed = rc;
			return errmsg_fail(err, err_cap, rc, "%s: fsync: %s",
					   h->path, strerror(-rc));
		}
		h->dir_dirty = false;
	}
	/* The slots first, then the header that calls them clean. */
	uint64_t end = atomic_load_explicit(&h->end, memory_order_relaxed);
	if (msync(h->map.mem, h->map.bytes, MS_SYNC) != 0)
		return errmsg_fail(err, err_cap, -errno, "%s/%s: msync: %s",
				   h->path, KEYS_FILE, strerror(errno));
	le_put64(h->map.mem + MH_COVERED, end);
	le_put64(h->map.mem + MH_SYNCED, end);
	le_put32(h->map.mem + MH_CLEAN, 1);
	if (msync(h->map.mem, MAP_HDR, MS_SYNC) != 0)
		return errmsg_fail(err, err_cap, -errno, "%s/%s: msync: %s",
				   h->path, KEYS_FILE, strerror(errno));
	h->map_clean = true;
	return 0;
}

int history_sync(struct history *h, char *err, size_t err_cap)
{
	return do_sync(h, err, err_cap);
}

void history_close(struct history *h)
{
	if (h == NULL)
		return;
	if (h->opened && !h->failed)
		do_sync(h, NULL, 0);
	map_close(&h->map);
	for (size_t i = 0; i < h->n_segs; i++)
		seg_free(&h->segs[i]);
	free(h->segs);
	if (h->dir_fd >= 0)
		close(h->dir_fd); /* releases the flock */
	free(h->wbuf);
	free(h->g_hash);
	free(h->g_pos);
	free(h->gt_key);
	free(h->gt_pos);
	free(h->gt_tag);
	EVP_MD_CTX_free(h->md);
	EVP_MD_free(h->sha);
	pthread_mutex_destroy(&h->qmu);
	pthread_mutex_destroy(&h->stmu);
	free(h);
}

/* ---- append ---- */

static int reserve_buf(struct history *h, size_t len)
{
	if (len <= h->wcap)
		return 0;
	size_t nc = h->wcap ? h->wcap : 1 << 16;
	while (nc < len)
		nc *= 2;
	uint8_t *nb = realloc(h->wbuf, nc);
	if (nb == NULL)
		return -ENOMEM;
	h->wbuf = nb;
	h->wcap = nc;
	return 0;
}

static int reserve_group(struct history *h, size_t n)
{
	if (n > h->g_cap) {
		uint64_t *a = realloc(h->g_hash, n * sizeof(*a));
		if (a == NULL)
			return -ENOMEM;
		h->g_hash = a;
		uint64_t *b = realloc(h->g_pos, n * sizeof(*b));
		if (b == NULL)
			return -ENOMEM;
		h->g_pos = b;
		h->g_cap = n;
	}
	size_t t = 16;
	while (t < 2 * n)
		t *= 2;
	if (t > h->gt_cap) {
		free(h->gt_key);
		free(h->gt_pos);
		free(h->gt_tag);
		h->gt_key = malloc(t * sizeof(uint64_t));
		h->gt_pos = malloc(t * sizeof(uint64_t));
		h->gt_tag = calloc(t, sizeof(uint32_t));
		h->gt_cap = h->gt_key && h->gt_pos && h->gt_tag ? t : 0;
		h->gt_gen = 0;
		if (h->gt_cap == 0)
			return -ENOMEM;
	}
	if (++h->gt_gen == 0) { /* wrapped: every tag stale again */
		memset(h->gt_tag, 0, h->gt_cap * sizeof(uint32_t));
		h->gt_gen = 1;
	}
	return 0;
}

/* The group's own newest record of kh (so that a key twice in one group
 * links to itself before the map hears of either), then pos as its
 * newest. Returns the previous position (0: none in the group). */
static uint64_t group_swap(struct history *h, uint64_t kh, uint64_t pos)
{
	size_t mask = h->gt_cap - 1;
	for (size_t i = kh & mask;; i = (i + 1) & mask) {
		if (h->gt_tag[i] != h->gt_gen) {
			h->gt_tag[i] = h->gt_gen;
			h->gt_key[i] = kh;
			h->gt_pos[i] = pos;
			return 0;
		}
		if (h->gt_key[i] == kh) {
			uint64_t p = h->gt_pos[i];
			h->gt_pos[i] = pos;
			return p;
		}
	}
}

int history_append(struct history *h, Consent__V1__Consent *const *changes,
		   size_t n, int64_t applied_at, char *err, size_t err_cap)
{
	if (h->failed)
		return errmsg_fail(err, err_cap, h->failed,
				   "history: failed earlier: %s",
				   strerror(-h->failed));
	if (n == 0)
		return 0;
	uint64_t prev = h->last_seq;
	size_t total = 0;
	if (reserve_group(h, n) < 0)
		return errmsg_fail(err, err_cap, -ENOMEM, "history: out of memory");
	/* Each key's map slot is a cache miss (the map is as large as the
	 * keys): its hash first and the slot prefetched, for the whole
	 * group, so the loop below finds them in cache. */
	uint64_t mask = h->map.slots - 1;
	for (size_t i = 0; i < n; i++) {
		uint64_t s = changes[i]->sequence;
		if (s < prev)
			return errmsg_fail(err, err_cap, -EINVAL,
					   "history: sequence %" PRIu64 " after %" PRIu64,
					   s, prev);
		prev = s;
		Consent__V1__Consent c = canonical_of(changes[i]);
		size_t len = consent__v1__consent__get_packed_size(&c);
		if (len == 0 || len > REC_PAYLOAD_MAX)
			return errmsg_fail(err, err_cap, -EMSGSIZE,
					   "history: change %" PRIu64 " is %zu bytes",
					   s, len);
		total += REC_HDR + len;
		char text[RECIPIENT_TEXT_MAX];
		int tl;
		h->g_hash[i] = consent_key_hash(&c, text, sizeof(text), &tl);
		if (h->map.mem != NULL)
			__builtin_prefetch(map_slot(&h->map,
						    h->g_hash[i] & mask));
	}
	struct hseg *cur = h->n_segs ? &h->segs[h->n_segs - 1] : NULL;
	bool roll = cur == NULL ||
		    (cur->records > 0 && cur->size + total > h->segment_bytes);
	size_t hdr = roll ? SEG_HDR : 0;
	int rc = reserve_buf(h, hdr + total);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "history: out of memory");
	uint64_t base = cur == NULL ? 0 : roll ? cur->base + cur->size : cur->base;
	uint64_t at = roll ? SEG_HDR : cur->size; /* file offset */
	if (roll)
		seg_header_encode(h->wbuf, base, h->head, h->last_seq,
				  cur ? cur->records : 0,
				  cur ? cur->max_applied : 0);

	uint8_t chain[HISTORY_HASH_BYTES];
	memcpy(chain, h->head, HISTORY_HASH_BYTES);
	size_t o = hdr;
	for (size_t i = 0; i < n; i++) {
		Consent__V1__Consent c = canonical_of(changes[i]);
		uint8_t *p = h->wbuf + o;
		size_t len = consent__v1__consent__pack(&c, p + REC_HDR);
		uint64_t kh = h->g_hash[i];
		uint64_t pos = base + at + (o - hdr);
		uint64_t bp = group_swap(h, kh, pos);
		if (bp == 0)
			bp = map_find(&h->map, kh);
		rc = sha_chain(h->md, h->sha, chain, p + REC_HDR, len, chain);
		if (rc < 0)
			return errmsg_fail(err, err_cap, rc,
					   "history: SHA-256 failed");
		rec_encode_header(p, (uint32_t)len, c.sequence, applied_at, bp,
				  kh, chain);
		h->g_pos[i] = pos;
		o += REC_HDR + len;
	}

	if (roll) {
		char name[64];
		seg_name(base, name, sizeof(name));
		struct hseg s;
		memset(&s, 0, sizeof(s));
		s.base = base;
		memcpy(s.anchor, h->head, HISTORY_HASH_BYTES);
		s.anchor_seq = h->last_seq;
		s.fd = openat(h->dir_fd, name,
			      O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (s.fd < 0) {
			h->failed = -errno;
			return errmsg_fail(err, err_cap, h->failed,
					   "%s/%s: create: %s", h->path, name,
					   strerror(errno));
		}
		rc = fsutil_pwrite_all(s.fd, h->wbuf, o, 0);
		if (rc == 0)
			rc = seg_add(h, &s);
		if (rc < 0) {
			close(s.fd);
			unlinkat(h->dir_fd, name, 0);
			h->failed = rc;
			return errmsg_fail(err, err_cap, rc, "%s/%s: write: %s",
					   h->path, name, strerror(-rc));
		}
		h->dir_dirty = true;
		cur = &h->segs[h->n_segs - 1];
		cur->size = SEG_HDR;
		cur->last_seq = h->last_seq;
		cur->max_applied = INT64_MIN;
		cur->counted = true;
	} else {
		rc = fsutil_pwrite_all(cur->fd, h->wbuf, o, cur->size);
		if (rc < 0) {
			h->failed = rc;
			return errmsg_fail(err, err_cap, rc, "%s: write: %s",
					   h->path, strerror(-rc));
		}
	}

	/* The write returned: the writer's summary, then the end, then
	 * the map (the essay's order). */
	if (cur->records == 0) {
		pthread_mutex_lock(&h->qmu); /* head_at reads first_seq */
		cur->first_seq = changes[0]->sequence;
		cur->has_first = true;
		pthread_mutex_unlock(&h->qmu);
	}
	if (h->records == 0) {
		h->first_seq = changes[0]->sequence;
		h->first_applied = applied_at;
	}
	cur->size += o - hdr;
	cur->records += n;
	if (applied_at > cur->max_applied)
		cur->max_applied = applied_at;
	uint64_t last = changes[n - 1]->sequence;
	uint64_t same = 0;
	for (size_t i = n; i-- > 0 && changes[i]->sequence == last;)
		same++;
	h->at_last = last == h->last_seq ? h->at_last + same : same;
	cur->at_last = last == cur->last_seq && cur->records > n
			       ? cur->at_last + same
			       : same;
	h->last_seq = last;
	cur->last_seq = last;
	h->records += n;
	memcpy(h->head, chain, HISTORY_HASH_BYTES);
	uint64_t end = cur->base + cur->size;
	/* Release: pairs with the queries' acquire of end; the records
	 * below it are written. */
	atomic_store_explicit(&h->end, end, memory_order_release);

	rc = map_dirty(h);
	if (rc == 0)
		rc = map_reserve(h, n);
	if (rc < 0) {
		h->failed = rc;
		return errmsg_fail(err, err_cap, rc, "%s/%s: %s", h->path,
				   KEYS_FILE, strerror(-rc));
	}
	for (size_t i = 0; i < n; i++)
		map_set(&h->map, h->g_hash[i], h->g_pos[i]);
	le_put64(h->map.mem + MH_COVERED, end);
	publish(h);
	return 0;
}

/* ---- recover, reset, prune ---- */

struct recover_ctx {
	struct history *h;
	uint64_t skip_seq, skip_left;
	uint8_t *buf;        /* packed changes */
	size_t len, cap;
	size_t *offs;        /* start of each in buf */
	size_t n, ncap;
	uint64_t copied;
	bool append_failed; /* err holds history_append's message */
	int64_t now;
	char *err;
	size_t err_cap;
};

static int recover_flush(struct recover_ctx *r)
{
	if (r->n == 0)
		return 0;
	Consent__V1__Consent **v = calloc(r->n, sizeof(*v));
	int rc = v ? 0 : -ENOMEM;
	for (size_t i = 0; i < r->n && rc == 0; i++) {
		size_t e = i + 1 < r->n ? r->offs[i + 1] : r->len;
		v[i] = consent__v1__consent__unpack(NULL, e - r->offs[i],
						    r->buf + r->offs[i]);
		if (v[i] == NULL)
			rc = -ENOMEM;
	}
	if (rc == 0)
		rc = history_append(r->h, v, r->n, r->now, r->err, r->err_cap);
	else
		errmsg_set(r->err, r->err_cap, "history: out of memory");
	r->append_failed = rc < 0;
	if (rc == 0)
		r->copied += r->n;
	for (size_t i = 0; v && i < r->n; i++)
		if (v[i])
			consent__v1__consent__free_unpacked(v[i], NULL);
	free(v);
	r->n = 0;
	r->len = 0;
	return rc;
}

static int recover_one(const Consent__V1__Consent *c, void *arg)
{
	struct recover_ctx *r = arg;
	if (c->sequence == r->skip_seq && r->skip_left > 0) {
		r->skip_left--; /* held already: one of a shared sequence */
		return 0;
	}
	if (c->sequence < r->skip_seq)
		return 0;
	size_t len = consent__v1__consent__get_packed_size(c);
	if (r->len + len > r->cap) {
		size_t nc = r->cap ? r->cap : 1 << 16;
		while (nc < r->len + len)
			nc *= 2;
		uint8_t *nb = realloc(r->buf, nc);
		if (nb == NULL)
			return -ENOMEM;
		r->buf = nb;
		r->cap = nc;
	}
	if (r->n == r->ncap) {
		size_t nc = r->ncap ? 2 * r->ncap : 256;
		size_t *no = realloc(r->offs, nc * sizeof(*no));
		if (no == NULL)
			return -ENOMEM;
		r->offs = no;
		r->ncap = nc;
	}
	r->offs[r->n++] = r->len;
	r->len += consent__v1__consent__pack(c, r->buf + r->len);
	if (r->n >= RECOVER_GROUP)
		return recover_flush(r);
	return 0;
}

int history_recover(struct history *h, struct changelog *log,
		    uint64_t *copied, char *err, size_t err_cap)
{
	struct recover_ctx r;
	memset(&r, 0, sizeof(r));
	r.h = h;
	r.skip_seq = h->last_seq;
	r.skip_left = h->at_last;
	r.err = err;
	r.err_cap = err_cap;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	r.now = ts.tv_sec;
	*copied = 0;
	/* From the last sequence held on: its records held are skipped by
	 * count (several changes may share it). */
	uint64_t after = h->last_seq ? h->last_seq - 1 : 0;
	int rc = changelog_replay(log, after, recover_one, &r);
	if (rc == 0)
		rc = recover_flush(&r);
	else if (rc == -ENOMEM && !r.append_failed)
		errmsg_set(err, err_cap, "history: out of memory");
	else if (!r.append_failed)
		errmsg_set(err, err_cap, "history: recover: %s",
			   changelog_error(log));
	*copied = r.copied;
	free(r.buf);
	free(r.offs);
	return rc;
}

int history_reset(struct history *h, char *err, size_t err_cap)
{
	struct hmap nm;
	int rc = map_create(h, KEYS_NEW, h->map.slots, &nm);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s/%s: %s", h->path,
				   KEYS_NEW, strerror(-rc));
	/* Queries wait for the empty store (qmu), then find nothing. */
	pthread_mutex_lock(&h->qmu);
	struct hseg *old_segs = h->segs;
	size_t n_old = h->n_segs;
	struct hmap old = h->map;
	h->segs = NULL;
	h->n_segs = h->cap_segs = 0;
	h->map = nm;
	atomic_store_explicit(&h->end, 0, memory_order_release);
	pthread_mutex_unlock(&h->qmu);
	map_close(&old);
	for (size_t i = 0; i < n_old; i++) {
		char name[64];
		seg_name(old_segs[i].base, name, sizeof(name));
		seg_free(&old_segs[i]);
		if (unlinkat(h->dir_fd, name, 0) != 0 && rc == 0)
			rc = -errno;
	}
	free(old_segs);
	if (rc == 0 && renameat(h->dir_fd, KEYS_NEW, h->dir_fd, KEYS_FILE) != 0)
		rc = -errno;
	h->map_clean = false;
	h->first_seq = h->last_seq = h->at_last = h->records = 0;
	h->first_applied = 0;
	memset(h->head, 0, HISTORY_HASH_BYTES);
	h->sync_from = 0;
	if (rc == 0)
		rc = fsutil_fsync_dir(h->path);
	if (rc < 0) {
		h->failed = rc;
		return errmsg_fail(err, err_cap, rc, "%s: reset: %s", h->path,
				   strerror(-rc));
	}
	h->dir_dirty = false;
	publish(h);
	return 0;
}

int history_prune(struct history *h, int64_t now, unsigned *removed,
		  char *err, size_t err_cap)
{
	*removed = 0;
	if (h->keep_seconds <= 0)
		return 0;
	int64_t cutoff = now - h->keep_seconds;
	while (h->n_segs > 1 && h->segs[0].max_applied < cutoff) {
		pthread_mutex_lock(&h->qmu);
		struct hseg s = h->segs[0];
		memmove(h->segs, h->segs + 1, (h->n_segs - 1) * sizeof(*h->segs));
		h->n_segs--;
		pthread_mutex_unlock(&h->qmu);
		char name[64];
		seg_name(s.base, name, sizeof(name));
		h->records -= s.records;
		seg_free(&s);
		if (unlinkat(h->dir_fd, name, 0) != 0)
			return errmsg_fail(err, err_cap, -errno, "%s/%s: %s",
					   h->path, name, strerror(errno));
		if (h->sync_from > 0)
			h->sync_from--;
		(*removed)++;
	}
	if (*removed == 0)
		return 0;
	uint64_t sq = 0;
	int64_t ap = 0;
	for (size_t i = 0; i < h->n_segs; i++) {
		if (h->segs[i].records == 0)
			continue;
		int rc = seg_first(&h->segs[i], &sq, &ap);
		if (rc < 0)
			return errmsg_fail(err, err_cap, rc, "%s: %s", h->path,
					   strerror(-rc));
		break;
	}
	h->first_seq = sq;
	h->first_applied = ap;
	int rc = fsutil_fsync_dir(h->path);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: fsync: %s", h->path,
				   strerror(-rc));
	publish(h);
	return 0;
}

/* ---- queries ---- */

/* The segment holding global position pos (under qmu), or -1. */
static ssize_t seg_of(const struct history *h, uint64_t pos)
{
	size_t lo = 0, hi = h->n_segs;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (h->segs[mid].base <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == 0 ? -1 : (ssize_t)lo - 1;
}

static int query_fail(const struct history *h, size_t seg, uint64_t off,
		      const char *why, char *err, size_t err_cap)
{
	char p[PATH_MAX + 64];
	seg_path(h, h->segs[seg].base, p, sizeof(p));
	return errmsg_fail(err, err_cap, -EPROTO, "%s: offset %" PRIu64 ": %s",
			   p, off, why);
}

static void entry_fill(struct history_entry *e, const struct history_record *r,
		       const Consent__V1__Consent *c)
{
	memset(e, 0, sizeof(*e));
	consent__v1__consent__init(&e->consent);
	e->consent.channel = c->channel;
	e->consent.recipient_type = c->recipient_type;
	e->consent.brand_code = c->brand_code;
	e->consent.iys_code = c->iys_code;
	e->consent.status = c->status;
	e->consent.source = c->source;
	e->consent.consent_date = c->consent_date;
	e->consent.creation_date = c->creation_date;
	e->consent.sequence = r->sequence;
	snprintf(e->recipient, sizeof(e->recipient), "%s",
		 c->recipient ? c->recipient : "");
	snprintf(e->transaction_id, sizeof(e->transaction_id), "%s",
		 c->transaction_id ? c->transaction_id : "");
	e->applied_at = r->applied_at;
	memcpy(e->chain, r->chain, HISTORY_HASH_BYTES);
}

static void entry_point(struct history_entry *e)
{
	e->consent.recipient = e->recipient;
	e->consent.transaction_id = e->transaction_id;
}

struct qkey {
	char text[RECIPIENT_TEXT_MAX];
	size_t len;
	uint32_t brand;
	int channel, rtype;
	uint64_t kh;
};

static int qkey_make(struct qkey *k, const char *recipient, uint32_t brand,
		     int channel, int rtype, char *err, size_t err_cap)
{
	struct recipient r;
	const char *why;
	const char *t = recipient ? recipient : "";
	if (recipient_normalize(t, strlen(t), &r, &why) < 0)
		return errmsg_fail(err, err_cap, -EINVAL, "recipient: %s", why);
	int n = recipient_format(&r, k->text, sizeof(k->text));
	if (n < 0)
		return errmsg_fail(err, err_cap, -EINVAL, "recipient: too long");
	k->len = (size_t)n;
	k->brand = brand;
	k->channel = channel;
	k->rtype = rtype;
	k->kh = history_key_hash(brand, channel, rtype, k->text, k->len);
	return 0;
}

/* One of a key's records, newest first; nonzero stops the walk. */
typedef int (*walk_fn)(const struct history_record *r,
		       const Consent__V1__Consent *c, void *arg);

/* Walks k's records newest first (holding qmu). */
static int walk_key(struct history *h, const struct qkey *k, walk_fn fn,
		    void *arg, char *err, size_t err_cap)
{
	uint8_t *buf = NULL;
	size_t cap = 0;
	int rc = 0;
	pthread_mutex_lock(&h->qmu);
	if (h->n_segs == 0)
		goto out;
	uint64_t pos = map_find(&h->map, k->kh);
	/* Acquire: pairs with history_append's release; loaded after the
	 * slot, so pos is below it (the slot was set after end). */
	uint64_t end = atomic_load_explicit(&h->end, memory_order_acquire);
	uint64_t first = h->segs[0].base;
	while (pos != 0 && pos >= first) {
		ssize_t si = seg_of(h, pos);
		uint64_t off = si < 0 ? 0 : pos - h->segs[si].base;
		if (si < 0 || pos >= end) {
			rc = errmsg_fail(err, err_cap, -EPROTO,
					 "%s: position %" PRIu64 " past the end %" PRIu64,
					 h->path, pos, end);
			break;
		}
		struct history_record r;
		const char *why = "";
		rc = read_record(h->segs[si].fd, off, &buf, &cap, &r, &why);
		if (rc == -EPROTO)
			rc = query_fail(h, (size_t)si, off, why, err, err_cap);
		if (rc < 0)
			break;
		if (r.prev >= pos) {
			rc = query_fail(h, (size_t)si, off,
					"back-pointer does not point back",
					err, err_cap);
			break;
		}
		if (r.key_hash == k->kh) {
			Consent__V1__Consent *c = consent__v1__consent__unpack(
				NULL, r.payload_len, r.payload);
			if (c == NULL) {
				rc = query_fail(h, (size_t)si, off,
						"payload is no Consent", err,
						err_cap);
				break;
			}
			char text[RECIPIENT_TEXT_MAX];
			int tl = key_text(c->recipient, text, sizeof(text));
			if (c->brand_code == k->brand &&
			    (int)c->channel == k->channel &&
			    (int)c->recipient_type == k->rtype &&
			    (size_t)tl == k->len &&
			    memcmp(text, k->text, k->len) == 0)
				rc = fn(&r, c, arg);
			consent__v1__consent__free_unpacked(c, NULL);
			if (rc != 0)
				break;
		}
		pos = r.prev;
	}
out:
	pthread_mutex_unlock(&h->qmu);
	free(buf);
	return rc < 0 ? rc : 0;
}

struct key_ctx {
	struct history_entry *out;
	size_t cap, n;
};

static int key_one(const struct history_record *r,
		   const Consent__V1__Consent *c, void *arg)
{
	struct key_ctx *x = arg;
	/* Newest first: the first cap go to the end of out, newest last. */
	if (x->n < x->cap)
		entry_fill(&x->out[x->cap - 1 - x->n], r, c);
	x->n++;
	return 0;
}

int history_key(struct history *h, const char *recipient, uint32_t brand_code,
		int channel, int recipient_type, struct history_entry *out,
		size_t cap, size_t *n, char *err, size_t err_cap)
{
	struct qkey k;
	*n = 0;
	int rc = qkey_make(&k, recipient, brand_code, channel, recipient_type,
			   err, err_cap);
	if (rc < 0)
		return rc;
	struct key_ctx x = { .out = out, .cap = cap };
	rc = walk_key(h, &k, key_one, &x, err, err_cap);
	if (rc < 0)
		return rc;
	size_t m = x.n < cap ? x.n : cap;
	if (m < cap && m > 0)
		memmove(out, out + (cap - m), m * sizeof(*out));
	for (size_t i = 0; i < m; i++)
		entry_point(&out[i]);
	*n = (size_t)x.n;
	return 0;
}

struct asof_ctx {
	enum history_as_of_kind kind;
	uint64_t point;
	bool found;
	struct consent_value best;
	struct history_entry *out;
};

static int asof_one(const struct history_record *r,
		    const Consent__V1__Consent *c, void *arg)
{
	struct asof_ctx *x = arg;
	if (x->kind == HISTORY_AT_SEQUENCE ? r->sequence > x->point
					   : c->consent_date < 0 ||
						     (uint64_t)c->consent_date > x->point)
		return 0;
	struct consent_value v = {
		.status = (uint8_t)c->status,
		.source = (uint8_t)enums_source_stored(c->source),
		.consent_date = c->consent_date,
	};
	/* Newest first, so an equal value replaces the best found: the
	 * oldest of equals decides, as the index keeps the first of them
	 * (an identical value is skipped there). */
	if (!x->found || !consent_value_newer(&x->best, &v)) {
		x->found = true;
		x->best = v;
		entry_fill(x->out, r, c);
	}
	return 0;
}

int history_as_of(struct history *h, const char *recipient,
		  uint32_t brand_code, int channel, int recipient_type,
		  enum history_as_of_kind kind, uint64_t point,
		  struct history_entry *out, char *err, size_t err_cap)
{
	struct qkey k;
	int rc = qkey_make(&k, recipient, brand_code, channel, recipient_type,
			   err, err_cap);
	if (rc < 0)
		return rc;
	struct history_state st;
	int64_t first_applied;
	uint64_t first_base;
	pthread_mutex_lock(&h->stmu);
	st = h->pub;
	first_applied = h->pub_first_applied;
	first_base = h->pub_first_base;
	pthread_mutex_unlock(&h->stmu);
	if (kind == HISTORY_AT_SEQUENCE) {
		if (st.records == 0)
			return errmsg_fail(err, err_cap, -ERANGE,
					   "the history is empty");
		if (point < st.first_sequence)
			return errmsg_fail(err, err_cap, -ERANGE,
					   "the history starts at sequence %" PRIu64,
					   st.first_sequence);
		if (point > st.last_sequence)
			return errmsg_fail(err, err_cap, -ERANGE,
					   "the history ends at sequence %" PRIu64,
					   st.last_sequence);
	} else if (kind == HISTORY_AT_TIME) {
		/* Complete from the data directory's start unless pruned;
		 * then it starts with its oldest record kept. */
		if (first_base > 0 && st.records > 0 &&
		    (int64_t)point < first_applied)
			return errmsg_fail(err, err_cap, -ERANGE,
					   "the history starts at time %" PRId64
					   " (sequence %" PRIu64 ")",
					   first_applied, st.first_sequence);
	} else {
		return errmsg_fail(err, err_cap, -EINVAL, "as-of: unknown kind");
	}
	struct asof_ctx x = { .kind = kind, .point = point, .out = out };
	rc = walk_key(h, &k, asof_one, &x, err, err_cap);
	if (rc < 0)
		return rc;
	if (!x.found)
		return 0;
	entry_point(out);
	return 1;
}

/* Extends segment i's checkpoints to end_off (under qmu). */
static int ckpt_extend(struct history *h, size_t i, uint64_t end_off)
{
	struct hseg *s = &h->segs[i];
	if (s->ck_off == 0)
		s->ck_off = SEG_HDR;
	if (s->ck_off >= end_off)
		return 0;
	struct scan sc;
	struct history_record r;
	uint64_t off;
	const char *why;
	int rc = scan_init(&sc, s->fd, s->ck_off, end_off);
	if (rc < 0)
		return rc;
	while ((rc = scan_next(&sc, &r, &off, &why)) == 1) {
		if (s->ck_records % CKPT_EVERY == 0) {
			if (s->n_ck == s->cap_ck) {
				size_t nc = s->cap_ck ? 2 * s->cap_ck : 64;
				struct ckpt *nk = realloc(s->ck, nc * sizeof(*nk));
				if (nk == NULL) {
					rc = -ENOMEM;
					break;
				}
				s->ck = nk;
				s->cap_ck = nc;
			}
			s->ck[s->n_ck++] = (struct ckpt){ r.sequence,
							  s->base + off };
		}
		s->ck_records++;
		s->ck_off = off + REC_HDR + r.payload_len;
	}
	scan_fini(&sc);
	return rc < 0 ? (rc == -ENOMEM ? rc : -EPROTO) : 0;
}

int history_head_at(struct history *h, uint64_t seq,
		    uint8_t out[HISTORY_HASH_BYTES])
{
	struct history_state st;
	history_state(h, &st);
	if (st.records == 0 || seq < st.first_sequence || seq > st.last_sequence)
		return -ERANGE;
	if (seq == st.last_sequence) {
		memcpy(out, st.head, HISTORY_HASH_BYTES);
		return 0;
	}
	int rc = -ERANGE;
	pthread_mutex_lock(&h->qmu);
	uint64_t end = atomic_load_explicit(&h->end, memory_order_acquire);
	/* The last segment whose first record is at or before seq. */
	ssize_t si = -1;
	for (size_t i = 0; i < h->n_segs; i++)
		if (h->segs[i].has_first && h->segs[i].first_seq <= seq)
			si = (ssize_t)i;
	if (si < 0)
		goto out;
	struct hseg *s = &h->segs[si];
	uint64_t stop = (size_t)si + 1 < h->n_segs ? h->segs[si + 1].base
						    : end;
	if (stop <= s->base + SEG_HDR)
		goto out; /* not published yet */
	rc = ckpt_extend(h, (size_t)si, stop - s->base);
	if (rc < 0 || s->n_ck == 0) {
		rc = rc < 0 ? rc : -EPROTO;
		goto out;
	}
	size_t lo = 0, hi = s->n_ck; /* the last checkpoint with seq <= seq */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->ck[mid].seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t k = lo - 1;
	struct scan sc;
	struct history_record r;
	uint64_t off;
	const char *why;
	rc = scan_init(&sc, s->fd, s->ck[k].pos - s->base, stop - s->base);
	if (rc < 0)
		goto out;
	bool any = false;
	while ((rc = scan_next(&sc, &r, &off, &why)) == 1 && r.sequence <= seq) {
		memcpy(out, r.chain, HISTORY_HASH_BYTES);
		any = true;
	}
	scan_fini(&sc);
	rc = rc < 0 ? -EPROTO : any ? 0 : -EPROTO;
out:
	pthread_mutex_unlock(&h->qmu);
	return rc;
}

/* ---- verify ---- */

/* verify's own key table: key hash -> its newest position. */
struct vmap {
	uint64_t *k, *p;
	size_t cap, n;
};

static int vmap_put(struct vmap *m, uint64_t kh, uint64_t pos, uint64_t *old)
{
	if ((m->n + 1) * 2 > m->cap) {
		size_t nc = m->cap ? 2 * m->cap : 1024;
		uint64_t *nk = calloc(nc, sizeof(*nk)), *np = calloc(nc, sizeof(*np));
		if (nk == NULL || np == NULL) {
			free(nk);
			free(np);
			return -ENOMEM;
		}
		for (size_t i = 0; i < m->cap; i++) {
			if (m->p[i] == 0)
				continue;
			size_t j = m->k[i] & (nc - 1);
			while (np[j] != 0)
				j = (j + 1) & (nc - 1);
			nk[j] = m->k[i];
			np[j] = m->p[i];
		}
		free(m->k);
		free(m->p);
		m->k = nk;
		m->p = np;
		m->cap = nc;
	}
	size_t j = kh & (m->cap - 1);
	while (m->p[j] != 0 && m->k[j] != kh)
		j = (j + 1) & (m->cap - 1);
	*old = m->p[j];
	if (m->p[j] == 0)
		m->n++;
	m->k[j] = kh;
	m->p[j] = pos;
	return 0;
}

int history_verify(const char *dir, uint64_t *head_sequence,
		   uint8_t head[HISTORY_HASH_BYTES], uint64_t *records,
		   char *err, size_t err_cap)
{
	struct history hv; /* for its path, dir_fd and list_segments */
	memset(&hv, 0, sizeof(hv));
	*head_sequence = 0;
	*records = 0;
	memset(head, 0, HISTORY_HASH_BYTES);
	if (snprintf(hv.path, sizeof(hv.path), "%s/%s", dir, HISTORY_DIR) >=
	    (int)sizeof(hv.path))
		return errmsg_fail(err, err_cap, -ENAMETOOLONG,
				   "%s: path too long", dir);
	hv.dir_fd = open(hv.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (hv.dir_fd < 0)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", hv.path,
				   strerror(errno));
	uint64_t *bases = NULL;
	size_t nb = 0;
	int rc = list_segments(&hv, &bases, &nb);
	if (rc < 0) {
		close(hv.dir_fd);
		return errmsg_fail(err, err_cap, rc, "%s: list: %s", hv.path,
				   strerror(-rc));
	}
	EVP_MD *sha = EVP_MD_fetch(NULL, "SHA256", NULL);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct vmap vm = { 0 };
	uint8_t chain[HISTORY_HASH_BYTES] = { 0 }, pkb[REC_PAYLOAD_MAX];
	uint64_t first_base = 0, prev_end = 0, last_seq = 0, n_rec = 0;
	uint64_t seg_records = 0;
	int64_t seg_max = INT64_MIN;
	char p[PATH_MAX + 64];
	if (sha == NULL || md == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOMEM, "libcrypto: no SHA-256");
		goto out;
	}
	for (size_t i = 0; i < nb; i++) {
		char name[64];
		seg_name(bases[i], name, sizeof(name));
		snprintf(p, sizeof(p), "%s/%s", hv.path, name);
		int fd = openat(hv.dir_fd, name, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) != 0) {
			rc = errmsg_fail(err, err_cap, -errno, "%s: %s", p,
					 strerror(errno));
			if (fd >= 0)
				close(fd);
			goto out;
		}
		uint64_t size = (uint64_t)st.st_size;
		uint8_t hb[SEG_HDR];
		struct seg_header sh;
		memset(&sh, 0, sizeof(sh));
		const char *why = "segment shorter than its header";
		if (size < SEG_HDR && i + 1 == nb && i > 0) {
			close(fd); /* being created by a running server */
			break;
		}
		if (size < SEG_HDR || pread(fd, hb, SEG_HDR, 0) != SEG_HDR ||
		    seg_header_decode(hb, &sh, &why) < 0 || sh.base != bases[i]) {
			if (size >= SEG_HDR && sh.base != bases[i] &&
			    memcmp(hb, SEG_MAGIC, 8) == 0 &&
			    XXH3_64bits(hb, SEG_HDR_SUM) == le_get64(hb + SEG_HDR_SUM))
				why = "header's base is not the file's name";
			rc = errmsg_fail(err, err_cap, -EPROTO,
					 "%s: offset 0 (after sequence %" PRIu64 "): %s",
					 p, last_seq, why);
			close(fd);
			goto out;
		}
		const char *bad = NULL;
		if (i == 0) {
			first_base = sh.base;
			memcpy(chain, sh.anchor, HISTORY_HASH_BYTES);
			last_seq = sh.anchor_seq;
			static const uint8_t zero[HISTORY_HASH_BYTES];
			if (sh.base == 0 &&
			    (memcmp(sh.anchor, zero, HISTORY_HASH_BYTES) != 0 ||
			     sh.anchor_seq != 0))
				bad = "the first segment's anchor is not zero";
		} else if (sh.base != prev_end) {
			bad = "segment does not follow the previous one's end";
		} else if (memcmp(sh.anchor, chain, HISTORY_HASH_BYTES) != 0) {
			bad = "anchor is not the previous segment's chain";
		} else if (sh.anchor_seq != last_seq ||
			   sh.prev_records != seg_records ||
			   sh.prev_max_applied != seg_max) {
			bad = "header's summary of the previous segment does not match it";
		}
		if (bad) {
			rc = errmsg_fail(err, err_cap, -EPROTO,
					 "%s: offset 0 (after sequence %" PRIu64 "): %s",
					 p, last_seq, bad);
			close(fd);
			goto out;
		}
		seg_records = 0;
		seg_max = INT64_MIN;
		struct scan sc;
		struct history_record r;
		uint64_t off;
		rc = scan_init(&sc, fd, SEG_HDR, size);
		if (rc < 0) {
			close(fd);
			errmsg_set(err, err_cap, "out of memory");
			goto out;
		}
		while ((rc = scan_next(&sc, &r, &off, &why)) == 1) {
			uint64_t pos = sh.base + off;
			Consent__V1__Consent *c = NULL;
			char text[RECIPIENT_TEXT_MAX];
			int tl;
			uint64_t old = 0;
			uint8_t nc[HISTORY_HASH_BYTES];
			bad = NULL;
			if (r.sequence < last_seq)
				bad = "sequence below the previous record's";
			else if ((c = consent__v1__consent__unpack(
					  NULL, r.payload_len, r.payload)) == NULL)
				bad = "payload is no Consent";
			else if (c->sequence != r.sequence)
				bad = "payload's sequence is not the record's";
			else if (c->base.n_unknown_fields != 0 ||
				 consent__v1__consent__get_packed_size(c) !=
					 r.payload_len ||
				 consent__v1__consent__pack(c, pkb) != r.payload_len ||
				 memcmp(pkb, r.payload, r.payload_len) != 0)
				bad = "payload is not canonical";
			else if (consent_key_hash(c, text, sizeof(text), &tl) !=
				 r.key_hash)
				bad = "key hash is not the payload's key's";
			else if ((rc = vmap_put(&vm, r.key_hash, pos, &old)) < 0)
				bad = "out of memory";
			else if (old != 0 ? r.prev != old
					  : r.prev != 0 && r.prev >= first_base)
				bad = "back-pointer is not the key's previous record";
			else if (sha_chain(md, sha, chain, r.payload,
					   r.payload_len, nc) < 0)
				bad = "SHA-256 failed";
			else if (memcmp(nc, r.chain, HISTORY_HASH_BYTES) != 0)
				bad = "chain hash does not match";
			if (c)
				consent__v1__consent__free_unpacked(c, NULL);
			if (bad) {
				rc = errmsg_fail(err, err_cap, -EPROTO,
						 "%s: offset %" PRIu64 " (sequence %" PRIu64 "): %s",
						 p, off, r.sequence, bad);
				break;
			}
			memcpy(chain, nc, HISTORY_HASH_BYTES);
			last_seq = r.sequence;
			seg_records++;
			if (r.applied_at > seg_max)
				seg_max = r.applied_at;
			n_rec++;
		}
		scan_fini(&sc);
		close(fd);
		if (rc == -EAGAIN && i + 1 == nb)
			rc = 0; /* a tail being written (or torn): not held */
		if (rc < 0) {
			if (rc == -EBADMSG || rc == -EAGAIN ||
			    (rc == -EPROTO && bad == NULL))
				rc = errmsg_fail(err, err_cap, -EPROTO,
						 "%s: offset %" PRIu64 " (after sequence %" PRIu64 "): %s",
						 p, off, last_seq,
						 rc == -EAGAIN ? "record runs past the end of a sealed segment"
							       : why);
			else if (rc != -EPROTO)
				errmsg_set(err, err_cap, "%s: %s", p,
					   strerror(-rc));
			goto out;
		}
		prev_end = sh.base + size;
	}
	*head_sequence = last_seq;
	memcpy(head, chain, HISTORY_HASH_BYTES);
	*records = n_rec;
	rc = 0;
out:
	free(vm.k);
	free(vm.p);
	free(bases);
	EVP_MD_CTX_free(md);
	EVP_MD_free(sha);
	close(hv.dir_fd);
	return rc;
}
