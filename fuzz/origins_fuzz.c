/*
 * origins_fuzz: the on-disk bytes of DESIGN §8's origins, through their
 * parsers. The first byte picks what the rest is:
 *   0: a generation's origins file (index/origins.c, origins_decode);
 *   1: a change log segment (index/changelog.c: changelog_open verifies
 *      it, version 1 or 2 with its change and commit records; then
 *      changelog_replay_all reads it back);
 *   2: a commit record's body (changelog_commit_decode).
 * Checksums stop random bytes at the door, so files (0, 1) are tried as
 * they are and once more with every checksum recomputed (a segment's
 * records are walked by their length fields), so that mutations of a
 * valid seed reach the rules behind them. Invariants (a violation traps):
 *   - origins: failure is -EPROTO with a message and leaves the table as
 *     it was; success encodes back to exactly the input (one table, one
 *     encoding) and every entry passes origins_check_text, in order;
 *   - segment: open either fails with -EPROTO naming the segment, or
 *     succeeds, and a replay then sees as many changes and commits as
 *     changelog_stats counts, commit records closing exactly the changes
 *     before them, every batch's first sequence above the one before (a
 *     batch's changes may share one), and a kind that
 *     matches changelog_kind;
 *   - commit body: success means the lengths add up and the strings are
 *     what an origin and a cursor may be.
 * ORIGINS_FUZZ_WRITE_SEEDS=DIR writes valid seeds (made with the real
 * writers: origins_encode, changelog_append_batches) to DIR.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/fsutil.h"
#include "index/changelog.h"
#include "index/origins.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static char dir[64];

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ---- 0: the origins file ---- */

static void fuzz_origins(const uint8_t *p, size_t len)
{
	struct origins *o;
	char err[200] = "";
	uint8_t *enc;
	size_t enc_len;

	if (origins_create(&o) < 0)
		return;
	REQUIRE(origins_set(o, "keep", 4, "me", 2) == 0);
	int rc = origins_decode(o, p, len, err, sizeof(err));
	if (rc < 0) {
		REQUIRE(rc == -EPROTO || rc == -ENOMEM);
		REQUIRE(rc == -ENOMEM || err[0] != '\0');
		size_t cl;
		const char *c = origins_get(o, "keep", 4, &cl);
		REQUIRE(c != NULL && cl == 2 && memcmp(c, "me", 2) == 0);
		REQUIRE(origins_count(o) == 1);
		origins_destroy(o);
		return;
	}
	for (size_t i = 0; i < origins_count(o); i++) {
		const char *on, *cu, *why, *pon;
		size_t ol, cl, pol, pcl;
		origins_at(o, i, &on, &ol, &cu, &cl);
		REQUIRE(origins_check_text(on, ol, ORIGINS_NAME_MAX, 0, &why) == 0);
		REQUIRE(origins_check_text(cu, cl, ORIGINS_CURSOR_MAX, 0, &why) == 0);
		if (i > 0) {
			origins_at(o, i - 1, &pon, &pol, &cu, &pcl);
			int c = memcmp(pon, on, pol < ol ? pol : ol);
			REQUIRE(c < 0 || (c == 0 && pol < ol));
		}
	}
	REQUIRE(origins_count(o) == 0 || origins_kind(o) == ORIGINS_ORIGIN);
	if (origins_encode(o, &enc, &enc_len) == 0) {
		REQUIRE(enc_len == len && memcmp(enc, p, len) == 0);
		free(enc);
	}
	origins_destroy(o);
}

/* ---- 1: a change log segment ---- */

struct walk {
	uint64_t changes, commits, pending, prev;
	enum origins_kind kind;
};

static int walk_change(const Consent__V1__Consent *c, void *arg)
{
	struct walk *w = arg;
	/* A batch's changes may share its position (§9), never go back. */
	REQUIRE(w->pending ? c->sequence >= w->prev : c->sequence > w->prev);
	w->prev = c->sequence;
	w->changes++;
	w->pending++;
	return 0;
}

static int walk_commit(const struct changelog_commit *k, void *arg)
{
	struct walk *w = arg;
	REQUIRE(k->n_changes == w->pending);
	REQUIRE(k->n_changes ? k->sequence == w->prev : k->sequence > w->prev);
	REQUIRE(w->kind == ORIGINS_NONE || w->kind == k->kind);
	w->kind = k->kind;
	w->prev = k->sequence;
	w->pending = 0;
	w->commits++;
	return 0;
}

static void open_segment(const uint8_t *p, size_t len)
{
	char sub[128], path[200];
	uint64_t base = len >= 16 ? get_u64(p + 8) : 1;

	snprintf(sub, sizeof(sub), "%s/" CHANGELOG_DIR, dir);
	snprintf(path, sizeof(path), "%s/%020" PRIu64 ".log", sub, base);
	fsutil_rm_tree(sub);
	REQUIRE(mkdir(sub, 0755) == 0);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(fsutil_write_all(fd, p, len) == 0);
	close(fd);

	struct changelog *log = NULL;
	char err[512] = "";
	int rc = changelog_open(dir, NULL, &log, err, sizeof(err));
	if (rc < 0) {
		REQUIRE(rc == -EPROTO || rc == -ENOMEM);
		REQUIRE(rc == -ENOMEM || strstr(err, ".log") != NULL);
		return;
	}
	struct changelog_stats st;
	struct walk w = { .kind = ORIGINS_NONE };
	changelog_stats(log, &st);
	REQUIRE(changelog_replay_all(log, 0, walk_change, walk_commit, &w) == 0);
	REQUIRE(w.changes == st.records && w.commits == st.commits);
	REQUIRE(w.prev == changelog_last_sequence(log));
	/* Version 2 keeps no change without its commit; version 1 has no
	 * commit at all and is of the sequence kind. */
	REQUIRE(w.pending == 0 || w.commits == 0);
	if (w.commits == 0 && w.changes > 0)
		REQUIRE(changelog_kind(log) == ORIGINS_SEQUENCE);
	else
		REQUIRE(changelog_kind(log) == w.kind);
	changelog_close(log);
}

/* Every record's length check and checksum recomputed, walking records
 * by their length fields; 0 when nothing changed. */
static int reseal_segment(uint8_t *p, size_t len)
{
	size_t pos = 16;
	int changed = 0;
	while (pos + 16 <= len) {
		uint32_t rl = (uint32_t)p[pos] | (uint32_t)p[pos + 1] << 8 |
			      (uint32_t)p[pos + 2] << 16 |
			      (uint32_t)p[pos + 3] << 24;
		if (rl > len - pos - 16)
			break;
		uint8_t h[12];
		memcpy(h, p + pos + 4, 12);
		put_u32(p + pos + 4, (uint32_t)XXH3_64bits(p + pos, 4));
		put_u64(p + pos + 8, XXH3_64bits(p + pos + 16, rl));
		changed |= memcmp(h, p + pos + 4, 12) != 0;
		pos += 16 + rl;
	}
	return changed;
}

static void fuzz_segment(const uint8_t *p, size_t len)
{
	open_segment(p, len);
	uint8_t *q = malloc(len ? len : 1);
	if (q == NULL)
		return;
	memcpy(q, p, len);
	if (reseal_segment(q, len))
		open_segment(q, len);
	free(q);
}

/* ---- 2: a commit record's body ---- */

static void fuzz_commit(const uint8_t *p, size_t len)
{
	struct changelog_commit k;
	const char *why;
	if (changelog_commit_decode(p, len, &k) < 0)
		return;
	REQUIRE(17 + k.origin_len + k.cursor_len == len);
	REQUIRE(k.sequence > 0);
	if (k.kind == ORIGINS_SEQUENCE) {
		REQUIRE(k.origin_len == 0 && k.cursor_len == 0 && k.n_changes);
		return;
	}
	REQUIRE(k.kind == ORIGINS_ORIGIN);
	REQUIRE(origins_check_text(k.origin, k.origin_len, ORIGINS_NAME_MAX, 0,
				   &why) == 0);
	REQUIRE(origins_check_text(k.cursor, k.cursor_len, ORIGINS_CURSOR_MAX,
				   0, &why) == 0);
}

/* ---- seeds ---- */

static void seed(const char *out, const char *name, uint8_t mode,
		 const uint8_t *p, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", out, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		return;
	fwrite(&mode, 1, 1, f);
	fwrite(p, 1, len, f);
	fclose(f);
}

static void write_seeds(const char *out)
{
	struct origins *o;
	uint8_t *b;
	size_t len;
	if (origins_create(&o) < 0)
		return;
	origins_set_kind(o, ORIGINS_ORIGIN);
	origins_set(o, "iys:600123", 10, "2026-11-30T10:00:00Z", 20);
	origins_set(o, "file:changes.bin", 16, "4000", 4);
	if (origins_encode(o, &b, &len) == 0) {
		seed(out, "origins-two", 0, b, len);
		free(b);
	}
	origins_destroy(o);
	if (origins_encode(NULL, &b, &len) == 0) {
		seed(out, "origins-empty", 0, b, len);
		free(b);
	}

	/* A segment: a batch of two changes and a cursor, a cursor moved
	 * alone. */
	struct changelog *log;
	char err[256];
	if (changelog_open(dir, NULL, &log, err, sizeof(err)) < 0)
		return;
	Consent__V1__Consent c[2];
	Consent__V1__Consent *v[2] = { &c[0], &c[1] };
	for (int i = 0; i < 2; i++) {
		consent__v1__consent__init(&c[i]);
		c[i].recipient = i ? "user@example.com" : "+905321234567";
		c[i].channel = i ? CONSENT__V1__CHANNEL__EPOSTA :
				   CONSENT__V1__CHANNEL__MESAJ;
		c[i].recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
		c[i].brand_code = 600123;
		c[i].status = CONSENT__V1__STATUS__RET;
		c[i].consent_date = 1700000000;
		c[i].sequence = (uint64_t)i + 1;
	}
	struct changelog_batch bt[2] = {
		{ .changes = v, .n = 2,
		  .commit = { .kind = ORIGINS_ORIGIN, .origin = "gw",
			      .origin_len = 2, .cursor = "c2", .cursor_len = 2 } },
		{ .changes = NULL, .n = 0,
		  .commit = { .kind = ORIGINS_ORIGIN, .origin = "gw",
			      .origin_len = 2, .cursor = "c3", .cursor_len = 2,
			      .sequence = 3 } },
	};
	int rc = changelog_append_batches(log, bt, 2);
	changelog_close(log);
	char path[200];
	snprintf(path, sizeof(path), "%s/" CHANGELOG_DIR "/%020d.log", dir, 1);
	FILE *f = rc == 0 ? fopen(path, "rb") : NULL;
	if (f != NULL) {
		uint8_t buf[4096];
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		seed(out, "segment-origins", 1, buf, len);
		/* The commit record's body: the last record, after its
		 * 16-byte header and its type byte. */
		size_t pos = 16, last = 16;
		while (pos + 16 <= len) {
			last = pos;
			pos += 16 + (buf[pos] | buf[pos + 1] << 8);
		}
		if (last + 17 < len)
			seed(out, "commit-body", 2, buf + last + 17,
			     len - last - 17);
	}
}

static void remove_dir(void)
{
	fsutil_rm_tree(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/tmp/origins_fuzz.XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(remove_dir);
	const char *out = getenv("ORIGINS_FUZZ_WRITE_SEEDS");
	if (out != NULL)
		write_seeds(out);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	/* An exact-size copy: ASan sees any over-read. */
	uint8_t *p = malloc(size - 1 ? size - 1 : 1);
	if (p == NULL)
		return 0;
	memcpy(p, data + 1, size - 1);
	switch (data[0] % 3) {
	case 0:
		fuzz_origins(p, size - 1);
		if (size - 1 >= 24) { /* and with its checksum made right */
			put_u64(p + size - 9, XXH3_64bits(p, size - 9));
			fuzz_origins(p, size - 1);
		}
		break;
	case 1:
		fuzz_segment(p, size - 1);
		break;
	default:
		fuzz_commit(p, size - 1);
	}
	free(p);
	return 0;
}
