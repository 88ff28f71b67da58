/*
 * obuf: a growable output buffer, the bytes a protocol's encoders append
 * and a connection sends (server/conn.c keeps two per connection: one
 * gathering this turn's replies, one being sent).
 *
 * Threads: a buffer belongs to whoever holds it (one worker). Memory:
 * obuf_init allocates, obuf_fini frees; a buffer only grows for what is
 * appended, and obuf_trim gives an emptied big one back. Errors: NULL or
 * -ENOMEM when growing fails; the buffer is then unchanged.
 */
#ifndef CONSENTD_SERVER_OBUF_H
#define CONSENTD_SERVER_OBUF_H

#include <stddef.h>

/* A byte buffer: data[off..len) is still to go (off only moves on a
 * buffer being sent). */
struct obuf {
	char *data;
	size_t len;
	size_t off;
	size_t cap;
};

#define OBUF_INITIAL 8192     /* first size (and size after a trim) */
#define OBUF_KEEP (256u << 10) /* obuf_trim shrinks an empty one past this */

/* Allocates cap_bytes (0, -ENOMEM); the buffer starts empty. */
int obuf_init(struct obuf *b, size_t cap_bytes);
/* Frees the bytes; b is then empty with no storage. */
void obuf_fini(struct obuf *b);

/* Grows b so that n more bytes fit; returns where they go (the caller
 * then adds what it wrote to b->len), or NULL on ENOMEM. */
char *obuf_reserve(struct obuf *b, size_t n);
/* Appends n bytes: 0, or -ENOMEM. */
int obuf_append(struct obuf *b, const void *data, size_t n);

/* An empty buffer that grew past OBUF_KEEP for one big reply goes back
 * to OBUF_INITIAL bytes, so an idle connection does not keep megabytes
 * (kept as it is if that realloc fails). */
void obuf_trim(struct obuf *b);

#endif
