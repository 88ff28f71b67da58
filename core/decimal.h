/*
 * decimal: integers as decimal text into a caller's buffer, for replies
 * built on the request path (RESP, the load generator's expected bytes)
 * and small text files. Each writes the digits at p, no terminator, and
 * returns the end; p needs 20 bytes for a u64, 20 for an i64 (the sign
 * and 19 digits). Inline: these sit inside reply loops.
 */
#ifndef CONSENTD_CORE_DECIMAL_H
#define CONSENTD_CORE_DECIMAL_H

#include <stdint.h>

static inline char *decimal_put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static inline char *decimal_put_i64(char *p, int64_t v)
{
	if (v < 0) {
		*p++ = '-';
		return decimal_put_u64(p, (uint64_t)0 - (uint64_t)v);
	}
	return decimal_put_u64(p, (uint64_t)v);
}

#endif
