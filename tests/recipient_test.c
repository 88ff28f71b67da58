/* recipient: every accepted form and every refusal of DESIGN §1.2, the
 * canonical text, and inputs ending at a page boundary (no over-read). */
#include <errno.h>
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
	return check_summary();
}
