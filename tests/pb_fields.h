/*
 * pb_fields: an independent walk over the top-level fields of a protobuf
 * message, for the RPC decoder's tests and fuzzer (the oracle side: it
 * shares no code with server/rpc.c). Only for bytes protobuf-c accepted,
 * so it checks nothing but bounds.
 */
#ifndef CONSENTD_TESTS_PB_FIELDS_H
#define CONSENTD_TESTS_PB_FIELDS_H

#include <stddef.h>
#include <stdint.h>

/* One varint at p[0..n): its value and length, 0 if it runs out. */
static inline size_t pb_fields_varint(const uint8_t *p, size_t n,
				      uint64_t *v)
{
	*v = 0;
	for (size_t i = 0; i < n && i < 10; i++) {
		*v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80))
			return i + 1;
	}
	return 0;
}

/* Calls fn(number, start, len_bytes) for each top-level field of msg (its
 * whole encoding, tag included). Returns the field count, or -1 if the
 * bytes do not walk. */
static inline int pb_fields_each(const uint8_t *msg, size_t len,
				 void (*fn)(uint32_t number,
					    const uint8_t *start, size_t n,
					    void *arg),
				 void *arg)
{
	size_t pos = 0;
	int count = 0;

	while (pos < len) {
		uint64_t tag, v;
		size_t t = pb_fields_varint(msg + pos, len - pos, &tag), m;

		if (t == 0)
			return -1;
		switch (tag & 7) {
		case 0:
			m = pb_fields_varint(msg + pos + t, len - pos - t, &v);
			if (m == 0)
				return -1;
			break;
		case 1:
			m = 8;
			break;
		case 5:
			m = 4;
			break;
		case 2: {
			size_t l = pb_fields_varint(msg + pos + t,
						    len - pos - t, &v);

			if (l == 0 || v > len - pos - t - l)
				return -1;
			m = l + (size_t)v;
			break;
		}
		default:
			return -1;
		}
		if (m > len - pos - t)
			return -1;
		if (fn != NULL)
			fn((uint32_t)(tag >> 3), msg + pos, t + m, arg);
		pos += t + m;
		count++;
	}
	return count;
}

struct pb_fields_range {
	uint32_t lo, hi;
	int n;
};

static inline void pb_fields_count_cb(uint32_t number, const uint8_t *start,
				      size_t n, void *arg)
{
	struct pb_fields_range *r = arg;

	(void)start;
	(void)n;
	if (number >= r->lo && number <= r->hi)
		r->n++;
}

/* How many top-level fields of msg are numbered lo..hi; -1 if the bytes
 * do not walk. */
static inline int pb_fields_count(const uint8_t *msg, size_t len, uint32_t lo,
				  uint32_t hi)
{
	struct pb_fields_range r = { lo, hi, 0 };

	return pb_fields_each(msg, len, pb_fields_count_cb, &r) < 0 ? -1
								    : r.n;
}

#endif
