/*
 * origins: the table of origins and cursors (see index/origins.h).
 *
 * The file (little-endian):
 *
 *   "CONSORG\x01" (8 bytes), u32 kind, u32 n,
 *   n x { u16 origin_len, u16 cursor_len, origin, cursor },
 *   u64 XXH3-64 of every byte before it
 *
 * Entries are in strictly increasing origin order (memcmp, then length),
 * so one table has one encoding: replicas that reach the same state write
 * the same bytes. Each origin and cursor is 1..256 bytes (origins_check_
 * text). A table of kind ORIGINS_SEQUENCE or ORIGINS_NONE holds no entry.
 * It is written inside a generation's temp directory and fsynced before
 * the directory is renamed into place (generation_publish, which encodes
 * it before it makes the directory: nothing can fail for memory then), so it is
 * whole whenever the generation is; the checksum catches later damage.
 *
 * In memory: a sorted array, binary search. Origins are few (one per
 * feeder: a brand's pull cursor, a gateway, a file), lookups come once
 * per Apply and once per Stats, insertions only for a new origin.
 */
#include "index/origins.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/le.h"

#define ORIGINS_MAGIC "CONSORG\x01"
#define ORIGINS_HEAD 16  /* magic, kind, n */
#define ORIGINS_ENTRY 4  /* the two lengths */
#define ORIGINS_SUM 8
#define ORIGINS_FILE_MAX (64u << 20) /* refuse to read more */

struct origins_entry {
	char *origin; /* origin_len bytes, then cursor_len bytes */
	uint16_t origin_len, cursor_len;
};

struct origins {
	enum origins_kind kind;
	struct origins_entry *e;
	size_t n, cap;
};

int origins_create(struct origins **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

static void origins_clear(struct origins *o)
{
	for (size_t i = 0; i < o->n; i++)
		free(o->e[i].origin);
	free(o->e);
	o->e = NULL;
	o->n = o->cap = 0;
}

void origins_destroy(struct origins *o)
{
	if (o == NULL)
		return;
	origins_clear(o);
	free(o);
}

enum origins_kind origins_kind(const struct origins *o)
{
	return o->kind;
}

void origins_set_kind(struct origins *o, enum origins_kind kind)
{
	o->kind = kind;
}

size_t origins_count(const struct origins *o)
{
	return o->n;
}

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);
	if (c != 0)
		return c;
	return alen < blen ? -1 : alen > blen;
}

/* The index of origin, or of where it would go (*found = 0). */
static size_t origins_find(const struct origins *o, const char *origin,
			   size_t len, int *found)
{
	size_t lo = 0, hi = o->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = name_cmp(o->e[mid].origin, o->e[mid].origin_len, origin,
				 len);
		if (c == 0) {
			*found = 1;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = 0;
	return lo;
}

const char *origins_get(const struct origins *o, const char *origin,
			size_t origin_len, size_t *cursor_len)
{
	int found;
	size_t i = origins_find(o, origin, origin_len, &found);
	if (!found)
		return NULL;
	*cursor_len = o->e[i].cursor_len;
	return o->e[i].origin + o->e[i].origin_len;
}

int origins_check_text(const char *s, size_t len, size_t max, int allow_empty,
		       const char **why)
{
	if (len == 0 && !allow_empty) {
		*why = "empty";
		return -EINVAL;
	}
	if (len > max) {
		*why = "too long";
		return -EINVAL;
	}
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
			*why = "holds a control byte";
			return -EINVAL;
		}
	return 0;
}

int origins_set(struct origins *o, const char *origin, size_t origin_len,
		const char *cursor, size_t cursor_len)
{
	if (origin_len == 0 || origin_len > ORIGINS_NAME_MAX ||
	    cursor_len == 0 || cursor_len > ORIGINS_CURSOR_MAX)
		return -EINVAL;
	char *p = malloc(origin_len + cursor_len);
	if (p == NULL)
		return -ENOMEM;
	memcpy(p, origin, origin_len);
	memcpy(p + origin_len, cursor, cursor_len);
	int found;
	size_t i = origins_find(o, origin, origin_len, &found);
	if (found) {
		free(o->e[i].origin);
		o->e[i].origin = p;
		o->e[i].cursor_len = (uint16_t)cursor_len;
		return 0;
	}
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 16;
		struct origins_entry *e = realloc(o->e, cap * sizeof(*e));
		if (e == NULL) {
			free(p);
			return -ENOMEM;
		}
		o->e = e;
		o->cap = cap;
	}
	memmove(o->e + i + 1, o->e + i, (o->n - i) * sizeof(*o->e));
	o->e[i] = (struct origins_entry){ .origin = p,
					  .origin_len = (uint16_t)origin_len,
					  .cursor_len = (uint16_t)cursor_len };
	o->n++;
	return 0;
}

int origins_copy(struct origins *dst, const struct origins *src)
{
	struct origins t = { .kind = src->kind };
	if (src->n) {
		t.e = calloc(src->n, sizeof(*t.e));
		if (t.e == NULL)
			return -ENOMEM;
		t.cap = src->n;
	}
	for (size_t i = 0; i < src->n; i++) {
		size_t len = (size_t)src->e[i].origin_len + src->e[i].cursor_len;
		t.e[i] = src->e[i];
		t.e[i].origin = malloc(len);
		if (t.e[i].origin == NULL) {
			origins_clear(&t);
			return -ENOMEM;
		}
		memcpy(t.e[i].origin, src->e[i].origin, len);
		t.n++;
	}
	origins_clear(dst);
	*dst = t;
	return 0;
}

void origins_at(const struct origins *o, size_t i, const char **origin,
		size_t *origin_len, const char **cursor, size_t *cursor_len)
{
	*origin = o->e[i].origin;
	*origin_len = o->e[i].origin_len;
	*cursor = o->e[i].origin + o->e[i].origin_len;
	*cursor_len = o->e[i].cursor_len;
}

/* ---- the file ---- */

int origins_encode(const struct origins *o, uint8_t **out, size_t *len)
{
	static const struct origins none = { .kind = ORIGINS_NONE };
	size_t total = ORIGINS_HEAD + ORIGINS_SUM;

	if (o == NULL)
		o = &none;
	for (size_t i = 0; i < o->n; i++)
		total += ORIGINS_ENTRY + o->e[i].origin_len + o->e[i].cursor_len;
	uint8_t *b = malloc(total), *p = b;
	if (b == NULL)
		return -ENOMEM;
	memcpy(p, ORIGINS_MAGIC, 8);
	le_put32(p + 8, (uint32_t)o->kind);
	le_put32(p + 12, (uint32_t)o->n);
	p += ORIGINS_HEAD;
	for (size_t i = 0; i < o->n; i++) {
		size_t l = (size_t)o->e[i].origin_len + o->e[i].cursor_len;
		le_put16(p, o->e[i].origin_len);
		le_put16(p + 2, o->e[i].cursor_len);
		memcpy(p + ORIGINS_ENTRY, o->e[i].origin, l);
		p += ORIGINS_ENTRY + l;
	}
	le_put64(p, XXH3_64bits(b, (size_t)(p - b)));
	*out = b;
	*len = total;
	return 0;
}

static int bad(char *err, size_t err_cap, size_t off, const char *what)
{
	return errmsg_fail(err, err_cap, -EPROTO, "offset %zu: %s", off, what);
}

int origins_decode(struct origins *o, const uint8_t *p, size_t len,
		   char *err, size_t err_cap)
{
	if (len < ORIGINS_HEAD + ORIGINS_SUM)
		return bad(err, err_cap, 0, "origins file truncated");
	if (memcmp(p, ORIGINS_MAGIC, 8) != 0)
		return bad(err, err_cap, 0, "not an origins file");
	size_t body = len - ORIGINS_SUM;
	if (XXH3_64bits(p, body) != le_get64(p + body))
		return bad(err, err_cap, body, "origins file checksum mismatch");
	uint32_t kind = le_get32(p + 8), n = le_get32(p + 12);
	if (kind > ORIGINS_ORIGIN)
		return bad(err, err_cap, 8, "unknown kind");
	if (n > 0 && kind != ORIGINS_ORIGIN)
		return bad(err, err_cap, 12, "entries in a table without "
			   "origins");
	/* Each entry takes at least 6 bytes: bound n before allocating. */
	if (n > (body - ORIGINS_HEAD) / (ORIGINS_ENTRY + 2))
		return bad(err, err_cap, 12, "more entries than bytes");
	struct origins t = { .kind = (enum origins_kind)kind };
	size_t pos = ORIGINS_HEAD;
	int rc = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (body - pos < ORIGINS_ENTRY) {
			rc = bad(err, err_cap, pos, "entry truncated");
			break;
		}
		size_t ol = le_get16(p + pos), cl = le_get16(p + pos + 2);
		const char *s = (const char *)p + pos + ORIGINS_ENTRY;
		const char *why;
		if (ol + cl > body - pos - ORIGINS_ENTRY) {
			rc = bad(err, err_cap, pos, "entry runs past the end");
			break;
		}
		if (origins_check_text(s, ol, ORIGINS_NAME_MAX, 0, &why) < 0 ||
		    origins_check_text(s + ol, cl, ORIGINS_CURSOR_MAX, 0,
				       &why) < 0) {
			rc = bad(err, err_cap, pos, "origin or cursor empty, "
				 "too long or with a control byte");
			break;
		}
		if (t.n > 0 && name_cmp(t.e[t.n - 1].origin,
					t.e[t.n - 1].origin_len, s, ol) >= 0) {
			rc = bad(err, err_cap, pos, "origins out of order");
			break;
		}
		rc = origins_set(&t, s, ol, s + ol, cl);
		if (rc < 0) {
			errmsg_set(err, err_cap, "out of memory reading the "
				   "origins");
			break;
		}
		pos += ORIGINS_ENTRY + ol + cl;
	}
	if (rc == 0 && pos != body)
		rc = bad(err, err_cap, pos, "bytes after the last entry");
	if (rc < 0) {
		origins_clear(&t);
		return rc;
	}
	origins_clear(o);
	*o = t;
	return 0;
}

int origins_read(struct origins *o, const char *path, char *err,
		 size_t err_cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	int rc;
	if (fd < 0) {
		rc = -errno;
		errmsg_set(err, err_cap, "%s: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		close(fd);
		errmsg_set(err, err_cap, "%s: %s", path, strerror(-rc));
		return rc;
	}
	if (st.st_size > ORIGINS_FILE_MAX) {
		close(fd);
		errmsg_set(err, err_cap, "%s: %lld bytes, over the limit", path,
			 (long long)st.st_size);
		return -EPROTO;
	}
	size_t len = (size_t)st.st_size, got = 0;
	uint8_t *b = malloc(len ? len : 1);
	if (b == NULL) {
		close(fd);
		errmsg_set(err, err_cap, "%s: out of memory", path);
		return -ENOMEM;
	}
	while (got < len) {
		ssize_t r = read(fd, b + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = r < 0 ? -errno : -EPROTO;
			close(fd);
			free(b);
			errmsg_set(err, err_cap, "%s: %s", path,
				 rc == -EPROTO ? "shrank while read" :
						 strerror(-rc));
			return rc;
		}
		got += (size_t)r;
	}
	close(fd);
	char e[200] = "";
	rc = origins_decode(o, b, len, e, sizeof(e));
	free(b);
	if (rc < 0)
		errmsg_set(err, err_cap, "%s: %s", path, e);
	return rc;
}
