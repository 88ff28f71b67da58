/*
 * obuf: the growable output buffer (server/obuf.h). Growth doubles from
 * the current capacity (OBUF_INITIAL for a buffer with none), so a reply
 * of n bytes costs O(log n) reallocs on a connection's first big reply
 * and none afterwards.
 */
#include "server/obuf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int obuf_init(struct obuf *b, size_t cap_bytes)
{
	memset(b, 0, sizeof(*b));
	b->data = malloc(cap_bytes);
	if (b->data == NULL)
		return -ENOMEM;
	b->cap = cap_bytes;
	return 0;
}

void obuf_fini(struct obuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

char *obuf_reserve(struct obuf *b, size_t n)
{
	size_t cap;
	char *p;

	if (b->cap - b->len >= n)
		return b->data + b->len;
	cap = b->cap ? b->cap : OBUF_INITIAL;
	while (cap - b->len < n) {
		if (cap > SIZE_MAX / 2)
			return NULL;
		cap *= 2;
	}
	p = realloc(b->data, cap);
	if (p == NULL)
		return NULL;
	b->data = p;
	b->cap = cap;
	return b->data + b->len;
}

int obuf_append(struct obuf *b, const void *data, size_t n)
{
	char *p = obuf_reserve(b, n);

	if (p == NULL)
		return -ENOMEM;
	memcpy(p, data, n);
	b->len += n;
	return 0;
}

void obuf_trim(struct obuf *b)
{
	char *p;

	if (b->len != 0 || b->cap <= OBUF_KEEP)
		return;
	p = realloc(b->data, OBUF_INITIAL);
	if (p != NULL) {
		b->data = p;
		b->cap = OBUF_INITIAL;
	}
}
