/*
 * recipient: one pass over the input, no allocation, no locale.
 *
 * Which kind: after trimming ASCII whitespace at both ends, an '@' anywhere
 * makes it an e-mail; otherwise a first character that is a digit, '+' or
 * '(' makes it a phone; otherwise it is refused ("e-mail: missing '@'" if
 * it holds a letter, since that is what it most likely was meant to be).
 *
 * Phones. Spaces, '-', '(' and ')' are dropped anywhere; '+' may only come
 * first; nothing else is allowed. Then, counting digits d:
 *   '+' and 90...      exactly 12 digits (+90 and 10 national digits),
 *                      the first national digit not 0;
 *   '+' otherwise      E.164: 7 to 15 digits, the first not 0. Seven is
 *                      the shortest real international number (country
 *                      code and subscriber number, e.g. Niue +683 xxxx);
 *                      anything shorter is a typo, not a number;
 *   no '+', d = 10     Turkish national number, first digit not 0;
 *   no '+', d = 11     0 + 10 national digits (the trunk prefix);
 *   no '+', d = 12     90 + 10 national digits;
 *   anything else      refused: other countries need their '+'.
 * Turkish numbers are not restricted further (landlines +90212..., mobile
 * +905..., 850/444 services all pass): İYS holds all of them.
 *
 * E-mails are trimmed and lower-cased whole (ASCII only). Lower-casing the
 * local part is our choice, not İYS's documented rule: RFC 5321 lets a
 * server treat local parts case-sensitively, but no mail system a
 * gateway sends to does, and two records differing only in case would be
 * one person's consent split in two. Refused: whitespace or a control
 * byte inside, a byte >= 0x80 (İYS allows no Turkish letters), no '@' or
 * a second one, an empty local part or domain, more than 254 characters.
 * Nothing else about the characters is judged: the index builder uses
 * this same function, and a record İYS accepted must not be refused here.
 */
#include "core/recipient.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define PHONE_E164_MAX 15 /* digits, country code included */
#define PHONE_E164_MIN 7
#define PHONE_TR_NATIONAL 10
#define PHONE_TR_CC 90ULL
#define POW10_10 10000000000ULL

static int refuse(const char **why, const char *msg)
{
	if (why != NULL)
		*why = msg;
	return -EINVAL;
}

static bool is_trim_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
	       c == '\f';
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_letter(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* s[0..len) is trimmed and non-empty. */
static int normalize_phone(const char *s, size_t len, struct recipient *out,
			   const char **why)
{
	char d[PHONE_E164_MAX + 1]; /* the first digits; more means refused */
	size_t nd = 0;
	bool plus = false;
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (is_digit(c)) {
			if (nd < sizeof(d))
				d[nd] = (char)c;
			nd++;
			if (nd > sizeof(d))
				nd = sizeof(d); /* saturate: "too many" */
		} else if (c == ' ' || c == '-' || c == '(' || c == ')') {
			continue;
		} else if (c == '+') {
			if (i != 0)
				return refuse(why, "phone: '+' is allowed only "
					      "at the start");
			plus = true;
		} else {
			return refuse(why, "phone: only digits, spaces, '-', "
				      "'(' and ')' may follow an optional "
				      "leading '+'");
		}
	}
	if (nd == 0)
		return refuse(why, "phone: no digits");

	if (plus) {
		if (nd > PHONE_E164_MAX)
			return refuse(why, "phone: a '+' number has at most "
				      "15 digits");
		if (d[0] == '0')
			return refuse(why, "phone: a '+' number starts with "
				      "a country code, never 0");
		if (nd >= 2 && d[0] == '9' && d[1] == '0') {
			if (nd != 2 + PHONE_TR_NATIONAL)
				return refuse(why, "phone: a +90 number has "
					      "exactly 10 national digits");
			if (d[2] == '0')
				return refuse(why, "phone: the national "
					      "number after +90 cannot start "
					      "with 0");
		} else if (nd < PHONE_E164_MIN) {
			return refuse(why, "phone: a '+' number has at least "
				      "7 digits");
		}
		for (i = 0; i < nd; i++)
			v = v * 10 + (uint64_t)(d[i] - '0');
	} else {
		const char *nat;

		switch (nd) {
		case 10:
			if (d[0] == '0')
				return refuse(why, "phone: 10 national digits "
					      "cannot start with 0");
			nat = d;
			break;
		case 11:
			if (d[0] != '0')
				return refuse(why, "phone: 11 digits without "
					      "'+' must be 0 + 10 national "
					      "digits");
			if (d[1] == '0')
				return refuse(why, "phone: 11 digits starting "
					      "with 0 must be 0 + 10 national "
					      "digits, the first not 0");
			nat = d + 1;
			break;
		case 12:
			if (d[0] != '9' || d[1] != '0')
				return refuse(why, "phone: 12 digits without "
					      "'+' must be 90 + 10 national "
					      "digits");
			if (d[2] == '0')
				return refuse(why, "phone: the national "
					      "number after 90 cannot start "
					      "with 0");
			nat = d + 2;
			break;
		default:
			if (nd > 12 && d[0] == '0' && d[1] == '0')
				return refuse(why, "phone: write '+' instead "
					      "of the 00 international "
					      "prefix");
			return refuse(why, nd < 10 ?
				      "phone: too few digits for a Turkish "
				      "number (10 national digits); other "
				      "countries need a leading '+'" :
				      "phone: too many digits for a Turkish "
				      "number (10 national digits); other "
				      "countries need a leading '+'");
		}
		v = 0;
		for (i = 0; i < PHONE_TR_NATIONAL; i++)
			v = v * 10 + (uint64_t)(nat[i] - '0');
		v += PHONE_TR_CC * POW10_10;
	}
	out->kind = RECIPIENT_PHONE;
	out->phone = v;
	out->email_len = 0;
	out->email[0] = 0;
	return 0;
}

/* s[0..len) is trimmed, non-empty and holds an '@'. */
static int normalize_email(const char *s, size_t len, struct recipient *out,
			   const char **why)
{
	size_t at = len; /* position of the '@'; len: none yet */
	size_t i;

	if (len > RECIPIENT_EMAIL_MAX)
		return refuse(why, "e-mail: longer than 254 characters");
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x80)
			return refuse(why, "e-mail: non-ASCII byte");
		if (is_trim_space(c))
			return refuse(why, "e-mail: whitespace inside the "
				      "address");
		if (c < 0x20 || c == 0x7f)
			return refuse(why, "e-mail: control character");
		if (c == '@') {
			if (at != len)
				return refuse(why, "e-mail: more than one '@'");
			at = i;
		}
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		out->email[i] = (char)c;
	}
	if (at == len)
		return refuse(why, "e-mail: missing '@'");
	if (at == 0)
		return refuse(why, "e-mail: empty local part");
	if (at == len - 1)
		return refuse(why, "e-mail: empty domain");
	out->email[len] = 0;
	out->email_len = (uint16_t)len;
	out->kind = RECIPIENT_EMAIL;
	out->phone = 0;
	return 0;
}

/* ---- the fast path: input already in canonical form ------------------ */

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	      "eight_digits reads the first byte as the lowest");

static const uint64_t pow10_small[8] = { 1, 10, 100, 1000, 10000, 100000,
					 1000000, 10000000 };

/* Whether the 8 bytes of w (first byte lowest) are all '0'-'9': each
 * byte's high nibble is 3, and adding 6 does not carry into it. */
static inline bool eight_digits(uint64_t w)
{
	return ((w & 0xf0f0f0f0f0f0f0f0ULL) |
		(((w + 0x0606060606060606ULL) & 0xf0f0f0f0f0f0f0f0ULL) >>
		 4)) == 0x3333333333333333ULL;
}

/* The number the 8 digits of w spell, first byte the most significant:
 * pairs, then quads, then the eight, each step one multiply. */
static inline uint64_t eight_digits_value(uint64_t w)
{
	w = ((w & 0x0f0f0f0f0f0f0f0fULL) * 2561) >> 8;
	w = ((w & 0x00ff00ff00ff00ffULL) * 6553601) >> 16;
	return ((w & 0x0000ffff0000ffffULL) * 42949672960001ULL) >> 32;
}

/* "+" and 7 to 15 digits that normalize_phone would keep as they are: the
 * first digit not 0, and a +90 number exactly 10 national digits, the
 * first not 0. Anything else (spaces, national forms, refusals) goes the
 * general way, which then writes the same fields or the same refusal. */
static bool canonical_phone(const char *s, size_t len, struct recipient *out)
{
	uint64_t v = 0;

	if (len < 1 + PHONE_E164_MIN || len > 1 + PHONE_E164_MAX ||
	    s[0] != '+' || s[1] == '0')
		return false;
	if (s[1] == '9' && s[2] == '0' &&
	    (len != 3 + PHONE_TR_NATIONAL || s[3] == '0'))
		return false;
	if (len - 1 > 8) {
		/* 9 to 15 digits: the first 8 and the last 8 as two words,
		 * the bytes of the second that the first already holds
		 * turned into '0' (little-endian: they are its low bytes). */
		uint64_t hi, lo, o = 16 - (len - 1); /* overlap, 1..7 bytes */

		memcpy(&hi, s + 1, 8);
		memcpy(&lo, s + len - 8, 8);
		lo = (lo & (~0ULL << (8 * o))) |
		     (0x3030303030303030ULL & ~(~0ULL << (8 * o)));
		if (!eight_digits(hi) || !eight_digits(lo))
			return false;
		v = eight_digits_value(hi) * pow10_small[len - 1 - 8] +
		    eight_digits_value(lo);
	} else {
		for (size_t i = 1; i < len; i++) {
			unsigned d = (unsigned)(unsigned char)s[i] - '0';

			if (d > 9)
				return false;
			v = v * 10 + d;
		}
	}
	out->kind = RECIPIENT_PHONE;
	out->phone = v;
	out->email_len = 0;
	out->email[0] = 0;
	return true;
}

#ifdef __SSE2__
/* The bytes of v that are not canonical e-mail bytes (outside 0x21-0x7e,
 * or 'A'-'Z'), and those that are '@', as bit masks. */
static inline void email_classes(__m128i v, unsigned *bad, unsigned *at)
{
	/* Signed bytes: 0x80-0xff are negative, so one compare refuses
	 * them with 0x00-0x20; 0x7f is refused alone. Upper case: shifted
	 * so 'A'..'Z' land on -128..-103, below -102 signed. */
	__m128i low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x21));
	__m128i del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
	__m128i up = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(
					    (char)(0x80 - 'A'))),
				    _mm_set1_epi8((char)(-128 + 26)));

	*bad = (unsigned)_mm_movemask_epi8(
		_mm_or_si128(_mm_or_si128(low, del), up));
	*at = (unsigned)_mm_movemask_epi8(
		_mm_cmpeq_epi8(v, _mm_set1_epi8('@')));
}

/* An e-mail normalize_email would copy unchanged: 3 to 254 bytes, each
 * printable ASCII but not upper case (so no whitespace to trim or refuse),
 * exactly one '@', neither first nor last. 16 bytes at a time, the last
 * block overlapping the one before it; never a byte past len. *out is
 * written only once the whole address passed. */
static bool canonical_email(const char *s, size_t len, struct recipient *out)
{
	unsigned bad = 0, n_at = 0;
	size_t i, at_pos = 0;

	if (len < 16 || len > RECIPIENT_EMAIL_MAX)
		return false; /* short ones: the general path is as quick */
	for (i = 0;; i += 16) {
		size_t b = i + 16 <= len ? i : len - 16;
		__m128i v = _mm_loadu_si128((const __m128i *)(s + b));
		unsigned cb, ca;

		email_classes(v, &cb, &ca);
		ca &= ~0u << (i - b); /* the overlap was counted already */
		bad |= cb;
		if (ca != 0) {
			n_at += (unsigned)__builtin_popcount(ca);
			at_pos = b + (size_t)__builtin_ctz(ca);
		}
		if (b + 16 == len)
			break;
	}
	if (bad != 0 || n_at != 1 || at_pos == 0 || at_pos == len - 1)
		return false;
	memcpy(out->email, s, len);
	out->email[len] = 0;
	out->email_len = (uint16_t)len;
	out->kind = RECIPIENT_EMAIL;
	out->phone = 0;
	return true;
}
#endif

bool recipient_canonical(const char *in, size_t in_len, struct recipient *out)
{
	if (in == NULL || in_len == 0)
		return false;
	if (in[0] == '+')
		return canonical_phone(in, in_len, out);
#ifdef __SSE2__
	return canonical_email(in, in_len, out);
#else
	return false;
#endif
}

int recipient_normalize(const char *in, size_t in_len, struct recipient *out,
			const char **why)
{
	if (recipient_canonical(in, in_len, out))
		return 0;
	return recipient_normalize_full(in, in_len, out, why);
}

int recipient_normalize_full(const char *in, size_t in_len,
			     struct recipient *out, const char **why)
{
	size_t b = 0, e = in == NULL ? 0 : in_len;
	unsigned char first;
	size_t i;

	while (b < e && is_trim_space((unsigned char)in[b]))
		b++;
	while (e > b && is_trim_space((unsigned char)in[e - 1]))
		e--;
	if (b == e)
		return refuse(why, "recipient: empty");
	if (memchr(in + b, '@', e - b) != NULL)
		return normalize_email(in + b, e - b, out, why);
	first = (unsigned char)in[b];
	if (is_digit(first) || first == '+' || first == '(')
		return normalize_phone(in + b, e - b, out, why);
	for (i = b; i < e; i++)
		if (is_letter((unsigned char)in[i]))
			return refuse(why, "e-mail: missing '@'");
	return refuse(why, "recipient: neither a phone number nor an e-mail "
		      "address");
}

int recipient_format(const struct recipient *r, char *buf, size_t cap)
{
	char digits[20];
	size_t n = 0;
	uint64_t v;

	if (r->kind == RECIPIENT_EMAIL) {
		if (r->email_len > RECIPIENT_EMAIL_MAX)
			return -EINVAL;
		if (cap < (size_t)r->email_len + 1)
			return -ENOSPC;
		memcpy(buf, r->email, r->email_len);
		buf[r->email_len] = 0;
		return r->email_len;
	}
	if (r->kind != RECIPIENT_PHONE)
		return -EINVAL;
	v = r->phone;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	if (cap < n + 2)
		return -ENOSPC;
	buf[0] = '+';
	for (size_t i = 0; i < n; i++)
		buf[1 + i] = digits[n - 1 - i];
	buf[n + 1] = 0;
	return (int)(n + 1);
}
