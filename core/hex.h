/*
 * hex: bytes as lower-case hex digits, and a digit's value, for the few
 * places that show or read a hash or a secret as text (the evidence
 * chain's head in files, JSON, metrics and consentctl; token secrets).
 * Inline and allocation-free; any thread.
 */
#ifndef CONSENTD_CORE_HEX_H
#define CONSENTD_CORE_HEX_H

#include <stddef.h>
#include <stdint.h>

/* p[0..n) as 2n lower-case digits and a terminator into out (room for
 * 2n + 1); returns out. */
static inline char *hex_put(char *out, const uint8_t *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
	return out;
}

/* A hex digit's value (either case), or -1. */
static inline int hex_digit(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif
