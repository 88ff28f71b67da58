/* receiptline: good lines in every accepted form (canonical recipient kept,
 * case, tabs, CR/LF), blank and comment lines, and each bad field refused
 * with its place and name. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "core/enums.h"
#include "core/receiptline.h"
#include "tests/check.h"

static int parse(const char *text, struct receiptline *l, char *err,
		 size_t cap)
{
	return receiptline_parse(text, strlen(text), l, err, cap);
}

static void test_good(void)
{
	struct receiptline l;
	char err[300];

	CHECKF(parse("+905321234567 600123 MESAJ BIREYSEL 4711\n", &l, err,
		     sizeof(err)) == 1, "%s", err);
	CHECK_STREQ(l.recipient, "+905321234567");
	CHECK(l.brand_code == 600123 && l.channel == CHANNEL_MESAJ &&
	      l.recipient_type == RTYPE_BIREYSEL && l.sequence == 4711);
	CHECK(err[0] == 0);
	CHECKF(parse("  05321234567\t1\tarama \t tacir\t18446744073709551615\r\n",
		     &l, err, sizeof(err)) == 1, "%s", err);
	CHECK_STREQ(l.recipient, "+905321234567");
	CHECK(l.brand_code == 1 && l.channel == CHANNEL_ARAMA &&
	      l.recipient_type == RTYPE_TACIR && l.sequence == UINT64_MAX);
	CHECKF(parse("Ali@Example.COM 99999999 EPOSTA BIREYSEL 1", &l, err,
		     sizeof(err)) == 1, "%s", err);
	CHECK_STREQ(l.recipient, "ali@example.com");
	memset(&l, 0x5a, sizeof(l));
	CHECK(parse("", &l, err, sizeof(err)) == 0);
	CHECK(parse(" \t\r\n", &l, err, sizeof(err)) == 0);
	CHECK(parse("  # +905321234567 600123 MESAJ BIREYSEL 4711", &l, err,
		    sizeof(err)) == 0);
	CHECK(l.brand_code == 0x5a5a5a5a); /* untouched */
}

static void test_bad(void)
{
	static const struct {
		const char *line, *msg;
	} cases[] = {
		{ "+905321234567 600123 MESAJ BIREYSEL", "field 5 (sequence) is missing" },
		{ "+905321234567", "field 2 (brand) is missing" },
		{ "+905321234567 600123 MESAJ BIREYSEL 1 x", "more than 5 fields" },
		{ "+9053 600123 MESAJ BIREYSEL 1", "field 1 (recipient): '+9053'" },
		{ "nobody 600123 MESAJ BIREYSEL 1", "field 1 (recipient)" },
		{ "+905321234567 0 MESAJ BIREYSEL 1", "field 2 (brand): '0' is not a brand code" },
		{ "+905321234567 100000000 MESAJ BIREYSEL 1", "field 2 (brand)" },
		{ "+905321234567 -5 MESAJ BIREYSEL 1", "field 2 (brand)" },
		{ "+905321234567 600123 SMS BIREYSEL 1", "field 3 (channel): 'SMS' is not ARAMA" },
		{ "+905321234567 600123 EPOSTA BIREYSEL 1", "field 3 (channel): 'EPOSTA' wants an e-mail" },
		{ "a@b.c 600123 MESAJ BIREYSEL 1", "field 3 (channel): 'MESAJ' wants a phone" },
		{ "+905321234567 600123 MESAJ KURUM 1", "field 4 (type): 'KURUM' is not BIREYSEL" },
		{ "+905321234567 600123 MESAJ BIREYSEL 0", "field 5 (sequence): '0' is not an applied_sequence" },
		{ "+905321234567 600123 MESAJ BIREYSEL 18446744073709551616", "field 5 (sequence)" },
		{ "+905321234567 600123 MESAJ BIREYSEL 12a", "field 5 (sequence)" },
		{ "+905321234567 600123 MES\x01" "AJ BIREYSEL 1", "field 3 (channel): 'MES'... holds a control" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct receiptline l;
		char err[300];
		int rc = parse(cases[i].line, &l, err, sizeof(err));
		CHECKF(rc == -EINVAL, "%s: rc %d", cases[i].line, rc);
		CHECKF(strstr(err, cases[i].msg) != NULL, "%s: '%s' lacks '%s'",
		       cases[i].line, err, cases[i].msg);
	}
	char big[RECEIPTLINE_MAX + 2];
	memset(big, ' ', sizeof(big));
	struct receiptline l;
	char err[300];
	CHECK(receiptline_parse(big, sizeof(big), &l, err, sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "line longer than") != NULL);
}

int main(void)
{
	RUN(test_good);
	RUN(test_bad);
	return check_summary();
}
