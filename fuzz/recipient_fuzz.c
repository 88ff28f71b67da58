/*
 * recipient_fuzz: recipient_normalize on arbitrary bytes. The input is
 * copied into a buffer of exactly its size, so ASan catches any read past
 * in_len. Invariants (a violation traps):
 *   - refusal: -EINVAL and a non-empty static reason naming its kind;
 *   - phone: 7 to 15 E.164 digits, first not 0, and a +90 number has
 *     exactly 10 national digits, the first not 0;
 *   - e-mail: 1-254 bytes, NUL-terminated at email_len, exactly one '@'
 *     with something on both sides, printable ASCII, no upper case;
 *   - the formatted text re-normalises to the same value, and formats to
 *     the same text (canonical form is a fixed point);
 *   - differential: recipient_normalize (fast path first) and
 *     recipient_normalize_full return the same code and reason and write
 *     byte-identical structs; recipient_canonical takes only input the
 *     full path accepts, with the same result, and leaves *out alone
 *     otherwise.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/recipient.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static int has_prefix(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static void check_phone(uint64_t v)
{
	REQUIRE(v >= 1000000ULL);         /* at least 7 digits, first not 0 */
	REQUIRE(v <= 999999999999999ULL); /* at most 15 digits */
	if (v >= 900000000000ULL && v <= 909999999999ULL) /* 12 digits, 90... */
		REQUIRE(v >= 901000000000ULL); /* national first digit not 0 */
	/* A number 90... of any other length is not a valid +90 number. */
	for (uint64_t p = 100000; p <= 10000000000000ULL; p *= 10)
		if (p != 10000000000ULL)
			REQUIRE(v / p != 90);
}

static void check_email(const struct recipient *r)
{
	size_t at = 0, n_at = 0;

	REQUIRE(r->email_len >= 3 && r->email_len <= RECIPIENT_EMAIL_MAX);
	REQUIRE(r->email[r->email_len] == 0);
	REQUIRE(strlen(r->email) == r->email_len);
	for (size_t i = 0; i < r->email_len; i++) {
		unsigned char c = (unsigned char)r->email[i];

		REQUIRE(c > 0x20 && c < 0x7f);
		REQUIRE(!(c >= 'A' && c <= 'Z'));
		if (c == '@')
			at = i, n_at++;
	}
	REQUIRE(n_at == 1 && at > 0 && at + 1 < r->email_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size ? size : 1);
	char text[RECIPIENT_TEXT_MAX], again[RECIPIENT_TEXT_MAX];
	struct recipient r, r2, r3, fill;
	const char *why = NULL, *why_full = NULL;
	int rc, rc_full, len, len2;

	if (in == NULL)
		return 0;
	if (size)
		memcpy(in, data, size);
	memset(&r, 0xa5, sizeof(r));
	memset(&r2, 0xa5, sizeof(r2));
	memset(&r3, 0xa5, sizeof(r3));
	memset(&fill, 0xa5, sizeof(fill));
	rc = recipient_normalize(in, size, &r, &why);
	rc_full = recipient_normalize_full(in, size, &r2, &why_full);
	REQUIRE(rc == rc_full && why == why_full);
	REQUIRE(memcmp(&r, &r2, sizeof(r)) == 0);
	if (recipient_canonical(in, size, &r3))
		REQUIRE(rc_full == 0 && memcmp(&r3, &r2, sizeof(r3)) == 0);
	else
		REQUIRE(memcmp(&r3, &fill, sizeof(r3)) == 0);
	if (rc != 0) {
		REQUIRE(rc == -EINVAL);
		REQUIRE(why != NULL && why[0] != 0);
		REQUIRE(has_prefix(why, "phone: ") ||
			has_prefix(why, "e-mail: ") ||
			has_prefix(why, "recipient: "));
		free(in);
		return 0;
	}
	free(in);

	REQUIRE(r.kind == RECIPIENT_PHONE || r.kind == RECIPIENT_EMAIL);
	if (r.kind == RECIPIENT_PHONE)
		check_phone(r.phone);
	else
		check_email(&r);

	len = recipient_format(&r, text, sizeof(text));
	REQUIRE(len > 0 && (size_t)len < sizeof(text));
	REQUIRE(strlen(text) == (size_t)len);
	REQUIRE(recipient_format(&r, text, (size_t)len) == -ENOSPC);

	/* The canonical text is a fixed point. Exact-size copy again. */
	in = malloc((size_t)len);
	REQUIRE(in != NULL);
	memcpy(in, text, (size_t)len);
	rc = recipient_normalize(in, (size_t)len, &r2, &why);
	free(in);
	REQUIRE(rc == 0);
	REQUIRE(r2.kind == r.kind);
	if (r.kind == RECIPIENT_PHONE) {
		REQUIRE(r2.phone == r.phone);
	} else {
		REQUIRE(r2.email_len == r.email_len);
		REQUIRE(memcmp(r2.email, r.email, r.email_len + 1) == 0);
	}
	len2 = recipient_format(&r2, again, sizeof(again));
	REQUIRE(len2 == len && memcmp(text, again, (size_t)len + 1) == 0);
	return 0;
}
