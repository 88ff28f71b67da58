/*
 * obuf: the growable output buffer (server/obuf.h). Growth keeps every
 * byte appended and doubles from the current capacity, a reserve that
 * cannot be met leaves the buffer as it was, and obuf_trim shrinks only
 * an empty buffer that grew past OBUF_KEEP.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/obuf.h"
#include "tests/check.h"

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

static void test_init_fini(void)
{
	struct obuf b;

	CHECK(obuf_init(&b, 100) == 0);
	CHECK(b.data != NULL && b.cap == 100 && b.len == 0 && b.off == 0);
	obuf_fini(&b);
	CHECK(b.data == NULL && b.cap == 0 && b.len == 0 && b.off == 0);
	obuf_fini(&b); /* twice is harmless: conn_fini after a failed init */
	CHECK(b.data == NULL);
}

static void test_reserve(void)
{
	struct obuf b;
	char *p;

	CHECK(obuf_init(&b, 16) == 0);
	/* Room enough: where the next bytes go, nothing changes. */
	p = obuf_reserve(&b, 16);
	CHECK(p == b.data && b.cap == 16 && b.len == 0);
	memcpy(p, "0123456789", 10);
	b.len = 10;
	/* Not enough: doubled until it fits, the bytes kept. */
	p = obuf_reserve(&b, 7);
	CHECK(b.cap == 32 && p == b.data + 10 && b.len == 10);
	CHECK(memcmp(b.data, "0123456789", 10) == 0);
	p = obuf_reserve(&b, 100);
	CHECK(b.cap == 128 && p == b.data + 10);
	CHECK(memcmp(b.data, "0123456789", 10) == 0);
	/* Impossible: NULL, and the buffer is as it was. */
	b.off = 3;
	CHECK(obuf_reserve(&b, SIZE_MAX - 5) == NULL);
	CHECK(b.cap == 128 && b.len == 10 && b.off == 3);
	CHECK(memcmp(b.data, "0123456789", 10) == 0);
	CHECK(obuf_append(&b, "x", SIZE_MAX) == -ENOMEM);
	CHECK(b.cap == 128 && b.len == 10);
	obuf_fini(&b);

	/* A buffer with no storage starts at OBUF_INITIAL. */
	memset(&b, 0, sizeof(b));
	p = obuf_reserve(&b, 1);
	CHECK(p != NULL && p == b.data && b.cap == OBUF_INITIAL);
	p = obuf_reserve(&b, OBUF_INITIAL + 1);
	CHECK(p != NULL && b.cap == 2 * OBUF_INITIAL);
	obuf_fini(&b);
}

/* Random appends against a plain copy: every byte where it should be. */
static void test_append_many(void)
{
	static char ref[1 << 20], chunk[5000];
	struct obuf b = { 0 };
	size_t n = 0;

	while (n < sizeof(ref) - sizeof(chunk)) {
		size_t k = rnd() % sizeof(chunk);

		for (size_t i = 0; i < k; i++)
			chunk[i] = (char)rnd();
		CHECK(obuf_append(&b, chunk, k) == 0);
		memcpy(ref + n, chunk, k);
		n += k;
		CHECK(b.len == n);
	}
	CHECK(b.cap >= b.len && b.cap < 2 * b.len + OBUF_INITIAL);
	/* Doubling from OBUF_INITIAL: a power-of-two multiple of it. */
	CHECK(b.cap % OBUF_INITIAL == 0 &&
	      ((b.cap / OBUF_INITIAL) & (b.cap / OBUF_INITIAL - 1)) == 0);
	CHECK(memcmp(b.data, ref, n) == 0);
	CHECK(obuf_append(&b, "", 0) == 0 && b.len == n);
	obuf_fini(&b);
}

static void test_trim(void)
{
	struct obuf b;

	CHECK(obuf_init(&b, OBUF_INITIAL) == 0);
	CHECK(obuf_reserve(&b, OBUF_KEEP + 1) != NULL);
	CHECK(b.cap > OBUF_KEEP);
	/* Not empty: kept. */
	b.len = 1;
	obuf_trim(&b);
	CHECK(b.cap > OBUF_KEEP);
	/* Empty and big: back to the first size, still usable. */
	b.len = 0;
	obuf_trim(&b);
	CHECK(b.cap == OBUF_INITIAL && b.data != NULL);
	CHECK(obuf_append(&b, "abc", 3) == 0 && memcmp(b.data, "abc", 3) == 0);
	/* Empty but not past OBUF_KEEP: kept as it is. */
	b.len = 0;
	CHECK(obuf_reserve(&b, OBUF_KEEP) != NULL && b.cap == OBUF_KEEP);
	obuf_trim(&b);
	CHECK(b.cap == OBUF_KEEP);
	obuf_fini(&b);
}

int main(void)
{
	RUN(test_init_fini);
	RUN(test_reserve);
	RUN(test_append_many);
	RUN(test_trim);
	return check_summary();
}
