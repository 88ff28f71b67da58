/*
 * recipient: normalising a recipient address (DESIGN §1.2).
 * Phones: spaces, dashes and parentheses are stripped; Turkish numbers in
 * the forms +905321234567, 905321234567, 05321234567 and 5321234567
 * canonicalise to +90 and ten national digits; any other "+" E.164 number
 * (at most 15 digits, first digit not 0) is kept as is. E-mails: trimmed,
 * lower-cased whole (ASCII), refused for whitespace inside, a missing or
 * second '@', an empty local part or domain, non-ASCII bytes, or a length
 * over 254. Pure functions; any thread; no allocation.
 * Errors: -EINVAL and *why set to a static message naming what was wrong.
 */
#ifndef CONSENTD_CORE_RECIPIENT_H
#define CONSENTD_CORE_RECIPIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECIPIENT_EMAIL_MAX 254
#define RECIPIENT_TEXT_MAX 256 /* room for any formatted recipient + NUL */

enum recipient_kind {
	RECIPIENT_PHONE = 1, /* phone: the E.164 digits as a number */
	RECIPIENT_EMAIL = 2, /* e-mail: the normalised address */
};

struct recipient {
	enum recipient_kind kind;
	uint64_t phone;     /* PHONE: 905321234567 for +905321234567 */
	uint16_t email_len; /* EMAIL: bytes in email, without the NUL */
	char email[RECIPIENT_EMAIL_MAX + 1]; /* EMAIL: NUL-terminated */
};

/* Normalises in[0..in_len) into *out. Returns 0, or -EINVAL with *why.
 * Input already in canonical form takes recipient_canonical, the rest
 * recipient_normalize_full; either way the result is the full path's. */
int recipient_normalize(const char *in, size_t in_len, struct recipient *out,
			const char **why);

/* The fast path alone: true, with *out exactly as recipient_normalize_full
 * would write it, when in[0..in_len) is already canonical ("+" and E.164
 * digits; an e-mail of printable ASCII without upper case, one '@' inside,
 * at most 254 bytes); false, *out untouched, for anything else. */
bool recipient_canonical(const char *in, size_t in_len, struct recipient *out);

/* The general path alone (every form, every refusal). For the fast path's
 * differential test and fuzzer; callers use recipient_normalize. */
int recipient_normalize_full(const char *in, size_t in_len,
			     struct recipient *out, const char **why);

/* Writes the canonical text ("+905321234567" or the e-mail) and a NUL into
 * buf; returns its length (without the NUL), or -ENOSPC if cap is short. */
int recipient_format(const struct recipient *r, char *buf, size_t cap);

#endif
