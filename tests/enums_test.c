/* enums: every name round-trips, parsing is case-insensitive and takes a
 * length, unknown names are 0 (source: SOURCE_OTHER). */
#include <string.h>

#include "core/enums.h"
#include "proto/consent.pb-c.h"
#include "tests/check.h"

typedef const char *(*name_fn)(int value);
typedef int (*parse_fn)(const char *s, size_t len);

static int parse_z(parse_fn parse, const char *s)
{
	return parse(s, strlen(s));
}

/* Every value 1..max has a name that parses back to it; max + 1 has none. */
static void round_trip(name_fn name, parse_fn parse, int max)
{
	for (int v = 1; v <= max; v++) {
		const char *n = name(v);

		CHECKF(n != NULL, "value %d has no name", v);
		if (n != NULL)
			CHECKF(parse_z(parse, n) == v, "%s -> %d", n,
			       parse_z(parse, n));
	}
	CHECK(name(max + 1) == NULL);
	CHECK(name(-1) == NULL);
	CHECK(name(0) != NULL); /* the _UNSPECIFIED name, never NULL */
	if (name(0) != NULL)
		CHECK(parse_z(parse, name(0)) == 0);
}

static void test_round_trips(void)
{
	round_trip(enums_channel_name, enums_channel_parse, CHANNEL_EPOSTA);
	round_trip(enums_rtype_name, enums_rtype_parse, RTYPE_TACIR);
	round_trip(enums_status_name, enums_status_parse, STATUS_RET);
	round_trip(enums_purpose_name, enums_purpose_parse,
		   PURPOSE_BILGILENDIRME);
	round_trip(enums_reason_name, enums_reason_parse, REASON_DATA_STALE);
}

static void test_names(void)
{
	CHECK_STREQ(enums_channel_name(CHANNEL_MESAJ), "MESAJ");
	CHECK_STREQ(enums_channel_name(CHANNEL_ARAMA), "ARAMA");
	CHECK_STREQ(enums_channel_name(CHANNEL_EPOSTA), "EPOSTA");
	CHECK_STREQ(enums_rtype_name(RTYPE_TACIR), "TACIR");
	CHECK_STREQ(enums_status_name(STATUS_RET), "RET");
	CHECK_STREQ(enums_purpose_name(PURPOSE_BILGILENDIRME), "BILGILENDIRME");
	CHECK_STREQ(enums_reason_name(REASON_MERCHANT_NO_REJECTION),
		    "MERCHANT_NO_REJECTION");
	CHECK_STREQ(enums_reason_name(REASON_DATA_STALE), "DATA_STALE");
	CHECK(REASON_COUNT == 9);
}

static void test_parse_case_and_length(void)
{
	CHECK(parse_z(enums_channel_parse, "mesaj") == CHANNEL_MESAJ);
	CHECK(parse_z(enums_channel_parse, "Eposta") == CHANNEL_EPOSTA);
	CHECK(parse_z(enums_rtype_parse, "tacir") == RTYPE_TACIR);
	CHECK(parse_z(enums_purpose_parse, "bilgilendirme") ==
	      PURPOSE_BILGILENDIRME);
	/* Length, not NUL, ends the name: "MESAJX" with len 5 is MESAJ. */
	CHECK(enums_channel_parse("MESAJX", 5) == CHANNEL_MESAJ);
	CHECK(enums_channel_parse("MESAJ", 4) == 0);
	CHECK(enums_channel_parse("MESAJ", 0) == 0);
	CHECK(enums_channel_parse(NULL, 0) == 0);
	CHECK(parse_z(enums_channel_parse, "MESAJ ") == 0);
	CHECK(parse_z(enums_channel_parse, "SMS") == 0);
	CHECK(parse_z(enums_status_parse, "onay") == STATUS_ONAY);
	CHECK(parse_z(enums_status_parse, "ONAYX") == 0);
	/* Dotless and dotted Turkish i are not ASCII letters. */
	CHECK(parse_z(enums_rtype_parse, "TAC\xc4\xb0R") == 0);
	/* An embedded NUL is a byte like any other. */
	CHECK(enums_channel_parse("MES\0AJ", 6) == 0);
}

static void test_sources(void)
{
	static const struct {
		const char *name;
		int value;
	} known[] = {
		{ "HS_FIZIKSEL_ORTAM", 1 }, { "HS_ISLAK_IMZA", 2 },
		{ "HS_ETKINLIK", 3 },       { "HS_ATM", 4 },
		{ "HS_EORTAM", 5 },         { "HS_WEB", 6 },
		{ "HS_MOBIL", 7 },          { "HS_MESAJ", 8 },
		{ "HS_EPOSTA", 9 },         { "HS_CAGRI_MERKEZI", 10 },
		{ "HS_SOSYAL_MEDYA", 11 },  { "HS_2015", 12 },
		{ "HS_KARAR", 13 },         { "IYS_3338", 32 },
		{ "IYS_CM", 33 },           { "IYS_WEB", 34 },
		{ "IYS_WEB_YENI", 35 },     { "IYS_MOBIL", 36 },
		{ "IYS_KISA_LINK", 37 },    { "IYS_KISAMESAJ", 38 },
		{ "IYS_EPOSTA", 39 },       { "IYS_AHS_HAT_KAPATMA", 40 },
		{ "SOURCE_OTHER", 63 },
	};
	int n_valid = 0;

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		CHECK_STREQ(enums_source_name(known[i].value), known[i].name);
		CHECKF(parse_z(enums_source_parse, known[i].name) ==
			       known[i].value, "%s", known[i].name);
		CHECK(enums_source_valid(known[i].value));
	}
	for (int v = -5; v < 300; v++)
		n_valid += enums_source_valid(v);
	CHECKF(n_valid == 23, "%d valid sources", n_valid);
	CHECK(!enums_source_valid(0));
	CHECK(!enums_source_valid(14));
	CHECK(!enums_source_valid(41));
	CHECK(!enums_source_valid(64));
	/* What a record keeps: defined values and none as they are. */
	for (int v = -5; v < 300; v++)
		CHECK(enums_source_stored(v) ==
		      (v == SOURCE_NONE || enums_source_valid(v) ? v
							  : SOURCE_OTHER));
	CHECK(enums_source_stored(14) == SOURCE_OTHER);
	CHECK(enums_source_stored(SOURCE_NONE) == SOURCE_NONE);
	/* Open set: unknown names are SOURCE_OTHER, never 0. */
	CHECK(parse_z(enums_source_parse, "IYS_NEW_THING") == SOURCE_OTHER);
	CHECK(parse_z(enums_source_parse, "SOURCE_UNSPECIFIED") == SOURCE_OTHER);
	CHECK(parse_z(enums_source_parse, "x") == SOURCE_OTHER);
	CHECK(parse_z(enums_source_parse, "hs_web") == 6);
	CHECK(enums_source_parse("", 0) == SOURCE_NONE);
	CHECK_STREQ(enums_source_name(20), "SOURCE_OTHER");
	CHECK_STREQ(enums_source_name(-1), "SOURCE_OTHER");
	CHECK_STREQ(enums_source_name(1000), "SOURCE_OTHER");
	CHECK(enums_source_name(SOURCE_HS_2015) != NULL);
	CHECK(SOURCE_HS_2015 == CONSENT__V1__SOURCE__HS_2015);
}

int main(void)
{
	RUN(test_round_trips);
	RUN(test_names);
	RUN(test_parse_case_and_length);
	RUN(test_sources);
	return check_summary();
}
