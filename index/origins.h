/*
 * origins: a data directory's origins and their cursors (DESIGN §8), and
 * the kind of changes it takes. One table in memory: the kind (none yet,
 * feeder-given sequences, or origins with cursors: the two never mix) and
 * origin -> cursor, sorted by origin bytes. It is the state the cursor
 * rule reads (origins_check: a pure function of the table and a batch, so
 * every replica of one stream, §9, decides the same in stream order), it
 * is carried in every generation (the `origins` file, origins_write/read)
 * and moved forward by the change log's commit records (changelog.h).
 * Threads: none of its own; one table, one thread at a time (the server's
 * writer guards the lookups workers make with its own lock). Errors:
 * -errno; a file that does not parse is -EPROTO with a message.
 */
#ifndef CONSENTD_INDEX_ORIGINS_H
#define CONSENTD_INDEX_ORIGINS_H

#include <stddef.h>
#include <stdint.h>

/* What a data directory has taken (persisted: a kind never changes once
 * set). */
enum origins_kind {
	ORIGINS_NONE = 0,     /* no change applied yet */
	ORIGINS_SEQUENCE = 1, /* Applies without origin: sequences given */
	ORIGINS_ORIGIN = 2,   /* Applies with origin and cursors */
};

#define ORIGINS_NAME_MAX 256   /* bytes of an origin name */
#define ORIGINS_CURSOR_MAX 256 /* bytes of a cursor */
#define ORIGINS_FILE "origins" /* in a generation directory */

struct origins;

int origins_create(struct origins **out); /* empty, ORIGINS_NONE; -ENOMEM */
void origins_destroy(struct origins *o);  /* NULL is a no-op */

enum origins_kind origins_kind(const struct origins *o);
void origins_set_kind(struct origins *o, enum origins_kind kind);
size_t origins_count(const struct origins *o);

/* The stored cursor of an origin (*cursor_len bytes, not terminated;
 * valid until the table changes), or NULL when the origin is unknown. */
const char *origins_get(const struct origins *o, const char *origin,
			size_t origin_len, size_t *cursor_len);

/* Sets an origin's cursor (copied). -ENOMEM; -EINVAL for an empty or
 * oversize origin or cursor. */
int origins_set(struct origins *o, const char *origin, size_t origin_len,
		const char *cursor, size_t cursor_len);

/* dst becomes a copy of src. -ENOMEM (dst unchanged then). */
int origins_copy(struct origins *dst, const struct origins *src);

/* The i-th entry in origin order (i < origins_count). */
void origins_at(const struct origins *o, size_t i, const char **origin,
		size_t *origin_len, const char **cursor, size_t *cursor_len);

/* Checks that a name or cursor may be stored: 1 to max bytes (a cursor
 * may be empty only as an after_cursor: allow_empty), no control bytes.
 * 0, or -EINVAL with why set. */
int origins_check_text(const char *s, size_t len, size_t max, int allow_empty,
		       const char **why);

/* The file: the table's bytes, checksummed (format in origins.c). encode
 * allocates *out (the caller frees it); o NULL encodes an empty table.
 * decode replaces o's contents only when the whole input is valid:
 * -EPROTO with a message otherwise. */
int origins_encode(const struct origins *o, uint8_t **out, size_t *len);
int origins_decode(struct origins *o, const uint8_t *p, size_t len,
		   char *err, size_t err_cap);

/* Reads the file at path into o (generation_publish writes it). -ENOENT
 * when there is no file (a generation written before origins existed:
 * the caller keeps an empty table); -EPROTO when it does not parse. */
int origins_read(struct origins *o, const char *path, char *err,
		 size_t err_cap);

#endif
