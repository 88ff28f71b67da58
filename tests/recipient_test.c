/* recipient: every accepted form and every refusal of DESIGN §1.2, the
 * canonical text, and inputs ending at a page boundary (no over-read). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/recipient.h"
#include "tests/check.h"

/* Normalises s; on success formats it and compares with want. */
static void accept(const char *s, const char *want, int kind)
{
	struct recipient r;
	const char *why = NULL;
	char buf[RECIPIENT_TEXT_MAX];
	int rc = recipient_normalize(s, strlen(s), &r, &why);

	CHECKF(rc == 0, "'%s' refused: %s", s, why ? why : "(no reason)");
	if (rc != 0)
		return;
	CHECKF((int)r.kind == kind, "'%s': kind %d", s, (int)r.kind);
	rc = recipient_format(&r, buf, sizeof(buf));
	CHECKF(rc == (int)strlen(want), "'%s': format returned %d", s, rc);
	if (rc > 0)
		CHECKF(strcmp(buf, want) == 0, "'%s' -> '%s', want '%s'", s,
		       buf, want);
}

/* Normalises s and expects a refusal whose message is exactly want. */
static void refuse_len(const char *s, size_t len, const char *want)
{
	struct recipient r;
	const char *why = NULL;
	int rc = recipient_normalize(s, len, &r, &why);

	CHECKF(rc == -EINVAL, "'%.*s' gave %d, want -EINVAL", (int)len, s, rc);
	CHECKF(why != NULL && strcmp(why, want) == 0,
	       "'%.*s': why '%s', want '%s'", (int)len, s, why ? why : "(null)",
	       want);
}

static void refuse(const char *s, const char *want)
{
	refuse_len(s, strlen(s), want);
}

static void test_turkish_forms(void)
{
	const char *forms[] = {
		"+905321234567", "905321234567", "05321234567", "5321234567",
		"+90 532 123 45 67", "0 (532) 123-45-67", "(0532) 123 45 67",
		"+90-532-123-4567", "90 532 1234567", "532 123 45 67",
		"  +905321234567\t", "\r\n05321234567\n", "+90(532)1234567",
	};

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++)
		accept(forms[i], "+905321234567", RECIPIENT_PHONE);

	/* Landlines and service numbers are Turkish numbers too. */
	accept("+902121230000", "+902121230000", RECIPIENT_PHONE);
	accept("02121230000", "+902121230000", RECIPIENT_PHONE);
	accept("3121234567", "+903121234567", RECIPIENT_PHONE);
	accept("0850 123 45 67", "+908501234567", RECIPIENT_PHONE);
	accept("+90 999 999 99 99", "+909999999999", RECIPIENT_PHONE);
	accept("1000000000", "+901000000000", RECIPIENT_PHONE);
}

static void test_phone_value(void)
{
	struct recipient r;
	const char *why;

	CHECK(recipient_normalize("0532 123 45 67", 14, &r, &why) == 0);
	CHECK(r.kind == RECIPIENT_PHONE);
	CHECK(r.phone == 905321234567ULL);
	CHECK(recipient_normalize("+4915112345678", 14, &r, &why) == 0);
	CHECK(r.phone == 4915112345678ULL);
	CHECK(recipient_normalize("+999999999999999", 16, &r, &why) == 0);
	CHECK(r.phone == 999999999999999ULL);
}

static void test_other_countries(void)
{
	accept("+4915112345678", "+4915112345678", RECIPIENT_PHONE);
	accept("+1 (202) 555-0143", "+12025550143", RECIPIENT_PHONE);
	accept("+44 20 7946 0958", "+442079460958", RECIPIENT_PHONE);
	accept("+6834001", "+6834001", RECIPIENT_PHONE);     /* 7 digits */
	accept("+123456789012345", "+123456789012345", RECIPIENT_PHONE);
	accept("+1234567", "+1234567", RECIPIENT_PHONE); /* the minimum */
}

static void test_phone_refusals(void)
{
	refuse("+1234567890123456", "phone: a '+' number has at most 15 digits");
	refuse("+12 3456 7890 1234 56789",
	       "phone: a '+' number has at most 15 digits");
	refuse("+123456", "phone: a '+' number has at least 7 digits");
	refuse("+9", "phone: a '+' number has at least 7 digits");
	refuse("+05321234567",
	       "phone: a '+' number starts with a country code, never 0");
	refuse("+90532123456",
	       "phone: a +90 number has exactly 10 national digits");
	refuse("+9053212345678",
	       "phone: a +90 number has exactly 10 national digits");
	refuse("+90", "phone: a +90 number has exactly 10 national digits");
	refuse("+900321234567",
	       "phone: the national number after +90 cannot start with 0");
	refuse("0532123456", "phone: 10 national digits cannot start with 0");
	refuse("15321234567",
	       "phone: 11 digits without '+' must be 0 + 10 national digits");
	refuse("00532123456",
	       "phone: 11 digits starting with 0 must be 0 + 10 national "
	       "digits, the first not 0");
	refuse("915321234567",
	       "phone: 12 digits without '+' must be 90 + 10 national digits");
	refuse("900321234567",
	       "phone: the national number after 90 cannot start with 0");
	refuse("004915112345678",
	       "phone: write '+' instead of the 00 international prefix");
	refuse("4915112345678",
	       "phone: too many digits for a Turkish number (10 national "
	       "digits); other countries need a leading '+'");
	refuse("532123456",
	       "phone: too few digits for a Turkish number (10 national "
	       "digits); other countries need a leading '+'");
	refuse("1", "phone: too few digits for a Turkish number (10 national "
	       "digits); other countries need a leading '+'");
	refuse("+", "phone: no digits");
	refuse("+( ) - ", "phone: no digits");
	refuse("()", "phone: no digits");
	refuse("0532+1234567", "phone: '+' is allowed only at the start");
	refuse("++905321234567", "phone: '+' is allowed only at the start");
	refuse("(+90) 5321234567", "phone: '+' is allowed only at the start");
	refuse("0532.123.45.67",
	       "phone: only digits, spaces, '-', '(' and ')' may follow an "
	       "optional leading '+'");
	refuse("0532/1234567",
	       "phone: only digits, spaces, '-', '(' and ')' may follow an "
	       "optional leading '+'");
	refuse("0532\t1234567",
	       "phone: only digits, spaces, '-', '(' and ')' may follow an "
	       "optional leading '+'");
	refuse("+90532123456x",
	       "phone: only digits, spaces, '-', '(' and ')' may follow an "
	       "optional leading '+'");
	refuse_len("0532123\0004567", 12,
		   "phone: only digits, spaces, '-', '(' and ')' may follow "
		   "an optional leading '+'");
	/* Very long digit runs neither overflow nor over-read. */
	{
		char big[4096];

		memset(big, '9', sizeof(big));
		big[0] = '+';
		refuse_len(big, sizeof(big),
			   "phone: a '+' number has at most 15 digits");
		big[0] = '5';
		refuse_len(big, sizeof(big),
			   "phone: too many digits for a Turkish number (10 "
			   "national digits); other countries need a leading "
			   "'+'");
	}
}

static void test_kind_refusals(void)
{
	refuse("", "recipient: empty");
	refuse("   \t\r\n", "recipient: empty");
	refuse_len(NULL, 0, "recipient: empty");
	refuse("john.example.com", "e-mail: missing '@'");
	refuse("ali", "e-mail: missing '@'");
	refuse("-", "recipient: neither a phone number nor an e-mail address");
	refuse("#!", "recipient: neither a phone number nor an e-mail address");
}

static void test_email_forms(void)
{
	accept("ali@example.com", "ali@example.com", RECIPIENT_EMAIL);
	accept("  Ali.Veli@Example.COM \t", "ali.veli@example.com",
	       RECIPIENT_EMAIL);
	accept("ALI+promo@EXAMPLE.com.tr", "ali+promo@example.com.tr",
	       RECIPIENT_EMAIL);
	accept("a@b", "a@b", RECIPIENT_EMAIL);
	/* Digits-only local parts are e-mail: the '@' decides. */
	accept("5321234567@sms.example", "5321234567@sms.example",
	       RECIPIENT_EMAIL);
	/* Characters are not judged beyond the listed refusals. */
	accept("o'brien!#$%&*=?^_`{|}~@x.y", "o'brien!#$%&*=?^_`{|}~@x.y",
	       RECIPIENT_EMAIL);

	{
		struct recipient r;
		const char *why;

		CHECK(recipient_normalize(" A@B.C ", 7, &r, &why) == 0);
		CHECK(r.kind == RECIPIENT_EMAIL);
		CHECK(r.email_len == 5);
		CHECK(strcmp(r.email, "a@b.c") == 0);
	}
}

static void test_email_length(void)
{
	char addr[300];
	struct recipient r;
	const char *why;

	/* 254 characters is the most an address may have. */
	memset(addr, 'a', sizeof(addr));
	addr[64] = '@';
	memcpy(addr + 250, ".com", 4);
	CHECK(recipient_normalize(addr, 254, &r, &why) == 0);
	CHECK(r.email_len == 254);
	CHECK(r.email[254] == 0);
	refuse_len(addr, 255, "e-mail: longer than 254 characters");
	/* Surrounding whitespace does not count toward the 254. */
	{
		char padded[300];

		padded[0] = ' ';
		memcpy(padded + 1, addr, 254);
		padded[255] = '\n';
		CHECK(recipient_normalize(padded, 256, &r, &why) == 0);
	}
	{
		char buf[RECIPIENT_TEXT_MAX];

		CHECK(recipient_normalize(addr, 254, &r, &why) == 0);
		CHECK(recipient_format(&r, buf, sizeof(buf)) == 254);
		CHECK(recipient_format(&r, buf, 254) == -ENOSPC);
		CHECK(recipient_format(&r, buf, 255) == 254);
	}
}

static void test_email_refusals(void)
{
	refuse("ali veli@example.com", "e-mail: whitespace inside the address");
	refuse("ali@example .com", "e-mail: whitespace inside the address");
	refuse("ali@exa\tmple.com", "e-mail: whitespace inside the address");
	refuse("ali@@example.com", "e-mail: more than one '@'");
	refuse("ali@x@example.com", "e-mail: more than one '@'");
	refuse("@example.com", "e-mail: empty local part");
	refuse("  @example.com", "e-mail: empty local part");
	refuse("ali@", "e-mail: empty domain");
	refuse("ali@  ", "e-mail: empty domain");
	refuse("@", "e-mail: empty local part");
	refuse("ali@\xc3\xb6rnek.com", "e-mail: non-ASCII byte");
	refuse("\xc3\xa7i\xc3\xa7""ek@example.com", "e-mail: non-ASCII byte");
	refuse("ali@exam\x01ple.com", "e-mail: control character");
	refuse("ali@example.com\x7f", "e-mail: control character");
	refuse_len("ali\0@example.com", 16, "e-mail: control character");
	{
		char addr[400];

		memset(addr, 'b', sizeof(addr));
		addr[10] = '@';
		refuse_len(addr, sizeof(addr),
			   "e-mail: longer than 254 characters");
	}
}

static void test_format(void)
{
	struct recipient r = { .kind = RECIPIENT_PHONE, .phone = 905321234567ULL };
	char buf[32];

	CHECK(recipient_format(&r, buf, sizeof(buf)) == 13);
	CHECK(strcmp(buf, "+905321234567") == 0);
	CHECK(recipient_format(&r, buf, 14) == 13); /* exactly enough */
	CHECK(recipient_format(&r, buf, 13) == -ENOSPC);
	r.kind = 0;
	CHECK(recipient_format(&r, buf, sizeof(buf)) == -EINVAL);
}

/* Inputs that end right before an inaccessible page: any read past the
 * given length faults at once. */
static void test_no_overread(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	const char *inputs[] = {
		"+905321234567", "5321234567", "ali@example.com ", "  ",
		"ali@", "(0532) 123", "+", "x", "@",
		/* the fast path's 16-byte blocks: 16, 17, 31, 32 bytes */
		"ali.veli@ex.com1", "ali.veli@exam.com", "+447911123456",
		"ali.veli.deli.42@example.com.tr", "ali.veli.deli.420@example.com.tr",
	};

	CHECK(map != MAP_FAILED);
	if (map == MAP_FAILED)
		return;
	CHECK(mprotect(map + page, (size_t)page, PROT_NONE) == 0);
	for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
		size_t len = strlen(inputs[i]);
		char *p = map + page - len;
		struct recipient r;
		const char *why;

		memcpy(p, inputs[i], len);
		(void)recipient_normalize(p, len, &r, &why);
	}
	munmap(map, 2 * (size_t)page);
}

/* ---- the fast path against the general one ---------------------------- */

static uint64_t diff_rng = 0x9e3779b97f4a7c15ULL;

static uint64_t diff_next(void)
{
	/* xorshift64*: fixed seed, the same inputs every run */
	diff_rng ^= diff_rng >> 12;
	diff_rng ^= diff_rng << 25;
	diff_rng ^= diff_rng >> 27;
	return diff_rng * 2685821657736338717ULL;
}

static unsigned diff_below(unsigned n)
{
	return (unsigned)(diff_next() % n);
}

static size_t diff_digits(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (char)('0' + diff_below(10));
	return n;
}

static size_t diff_chars(char *p, size_t n, const char *alphabet)
{
	size_t k = strlen(alphabet);

	for (size_t i = 0; i < n; i++)
		p[i] = alphabet[diff_below((unsigned)k)];
	return n;
}

/* One generated input into buf (up to 320 bytes); returns its length.
 * Canonical forms first, then near-canonical ones, then mutations. */
static size_t diff_input(char *buf)
{
	static const char *const mail = "abcdefghijklmnopqrstuvwxyz0123456789"
					".-_+";
	static const char *const junk = "aZ09@.+- \t()\x7f\x01\x80\xc4\xb0"
					"\xff\r\n\v\f";
	size_t n = 0, k;

	switch (diff_below(8)) {
	case 0: /* +90 and 10 national digits, the first maybe 0 */
		n = (size_t)(stpcpy(buf, "+90") - buf);
		n += diff_digits(buf + n, 10);
		break;
	case 1: /* +90 with 8 to 12 national digits */
		n = (size_t)(stpcpy(buf, "+90") - buf);
		n += diff_digits(buf + n, 8 + diff_below(5));
		break;
	case 2: /* another country: '+' and 1 to 17 digits */
		buf[n++] = '+';
		n += diff_digits(buf + n, 1 + diff_below(17));
		break;
	case 3: /* national forms, no '+' */
		n = diff_digits(buf, 9 + diff_below(5));
		break;
	case 4: /* a lower-case e-mail, 1 to 300 bytes */
		k = 1 + diff_below(299);
		n = diff_chars(buf, k, mail);
		buf[diff_below((unsigned)k)] = '@';
		break;
	case 5: /* an e-mail with upper case */
		k = 1 + diff_below(80);
		n = diff_chars(buf, k, "abcXYZ09.");
		buf[diff_below((unsigned)k)] = '@';
		break;
	case 6: /* anything from the troublesome bytes */
		n = diff_chars(buf, 1 + diff_below(40), junk);
		break;
	default: /* a canonical e-mail of 16 to 254 bytes */
		k = 16 + diff_below(239);
		n = diff_chars(buf, k, mail);
		buf[1 + diff_below((unsigned)k - 2)] = '@';
		break;
	}
	/* Near-canonical: a space, dash, parenthesis, control or high byte
	 * (U+0130, İ, in UTF-8 is c4 b0) put in or written over, an
	 * upper-case letter, a second '@', whitespace around it. */
	for (unsigned m = diff_below(2) ? 0 : 1 + diff_below(3); m > 0 && n < 300; m--) {
		size_t at = diff_below((unsigned)n + 1);

		if (diff_below(2)) {
			memmove(buf + at + 1, buf + at, n - at);
			n++;
		} else if (at == n) {
			n++;
		}
		buf[at] = junk[diff_below((unsigned)strlen(junk) + 1)];
		if (buf[at] == 0)
			buf[at] = (char)('A' + diff_below(26));
	}
	return n;
}

/* recipient_normalize (fast path first) and recipient_normalize_full give
 * byte-identical results on every generated input: return code, reason
 * and the whole struct, both started from the same fill. */
static void test_fast_path_differential(void)
{
	char buf[320];
	size_t fast = 0, slow_ok = 0, refused = 0;

	for (int i = 0; i < 300000; i++) {
		size_t n = diff_input(buf);
		struct recipient a, b, c;
		const char *wa = "unset", *wb = "unset";
		int ra, rb;
		bool took;

		memset(&a, 0xa5, sizeof(a));
		memset(&b, 0xa5, sizeof(b));
		memset(&c, 0xa5, sizeof(c));
		took = recipient_canonical(buf, n, &c);
		ra = recipient_normalize(buf, n, &a, &wa);
		rb = recipient_normalize_full(buf, n, &b, &wb);
		CHECKF(ra == rb && wa == wb, "'%.*s': %d '%s' vs %d '%s'",
		       (int)n, buf, ra, wa, rb, wb);
		CHECKF(memcmp(&a, &b, sizeof(a)) == 0, "'%.*s': results differ",
		       (int)n, buf);
		if (took) {
			fast++;
			CHECKF(rb == 0 && memcmp(&c, &b, sizeof(c)) == 0,
			       "'%.*s': fast path took a non-canonical input",
			       (int)n, buf);
		} else {
			struct recipient untouched;

			memset(&untouched, 0xa5, sizeof(untouched));
			CHECK(memcmp(&c, &untouched, sizeof(c)) == 0);
			if (rb == 0)
				slow_ok++;
			else
				refused++;
		}
	}
	/* Each of the three outcomes was met often: the generator covers
	 * the fast path, what it declines, and refusals. */
	CHECKF(fast > 30000 && slow_ok > 30000 && refused > 30000,
	       "fast %zu, slow %zu, refused %zu", fast, slow_ok, refused);
}

/* Canonical input takes the fast path; the near misses do not. */
static void test_fast_path_taken(void)
{
	const char *taken[] = {
		"+905321234567", "+4479111234", "+1234567",
		"+123456789012345", "ali.veli@example.com", "a@bcdefghijklmno",
		"0123456789@12345",
	};
	const char *declined[] = {
		"905321234567", "+90532123456", "+9053212345678",
		"+900321234567", "+90 532 123 45 67", "+123456", "+0123456789",
		"+1234567890123456", "Ali.veli@example.com", "ali@example.co",
		" ali.veli@example.com", "ali.veli@example.com ", "ali@veli@example.com",
		"@alivelideli.com", "alivelideli.com@", "ali.veli@exam\xc4\xb0le.com",
		"ali.veli@exam\x7fle.com", "ali@x.com",
	};
	struct recipient r;

	for (size_t i = 0; i < sizeof(taken) / sizeof(taken[0]); i++)
		CHECKF(recipient_canonical(taken[i], strlen(taken[i]), &r),
		       "'%s' declined", taken[i]);
	for (size_t i = 0; i < sizeof(declined) / sizeof(declined[0]); i++)
		CHECKF(!recipient_canonical(declined[i], strlen(declined[i]),
					    &r), "'%s' taken", declined[i]);
}

int main(void)
{
	RUN(test_turkish_forms);
	RUN(test_phone_value);
	RUN(test_other_countries);
	RUN(test_phone_refusals);
	RUN(test_kind_refusals);
	RUN(test_email_forms);
	RUN(test_email_length);
	RUN(test_email_refusals);
	RUN(test_format);
	RUN(test_no_overread);
	RUN(test_fast_path_differential);
	RUN(test_fast_path_taken);
	return check_summary();
}
