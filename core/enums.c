/*
 * enums: names <-> values of the wire enums. Each enum is a table indexed
 * by value; the static_asserts below pin every value to the protobuf-c
 * generated header, so a renumbered schema stops the build instead of
 * silently mislabelling verdicts.
 *
 * Value 0 names the schema's unspecified value ("CHANNEL_UNSPECIFIED"...),
 * so a caller printing a zero never gets NULL; parsing that name gives 0,
 * the same as an unknown name. enums_source_valid is false for 0: no
 * record has an unspecified source.
 */
#include "core/enums.h"

#include <assert.h>

#include "proto/consent.pb-c.h"

/* The C and the generated enums are distinct types; compare as ints. */
#define SAME(ours, generated) \
	static_assert((int)(ours) == (int)(generated), #ours " != " #generated)

SAME(CHANNEL_NONE, CONSENT__V1__CHANNEL__CHANNEL_UNSPECIFIED);
SAME(CHANNEL_ARAMA, CONSENT__V1__CHANNEL__ARAMA);
SAME(CHANNEL_MESAJ, CONSENT__V1__CHANNEL__MESAJ);
SAME(CHANNEL_EPOSTA, CONSENT__V1__CHANNEL__EPOSTA);

SAME(RTYPE_NONE, CONSENT__V1__RECIPIENT_TYPE__RECIPIENT_TYPE_UNSPECIFIED);
SAME(RTYPE_BIREYSEL, CONSENT__V1__RECIPIENT_TYPE__BIREYSEL);
SAME(RTYPE_TACIR, CONSENT__V1__RECIPIENT_TYPE__TACIR);

SAME(STATUS_NONE, CONSENT__V1__STATUS__STATUS_UNSPECIFIED);
SAME(STATUS_ONAY, CONSENT__V1__STATUS__ONAY);
SAME(STATUS_RET, CONSENT__V1__STATUS__RET);

SAME(PURPOSE_NONE, CONSENT__V1__PURPOSE__PURPOSE_UNSPECIFIED);
SAME(PURPOSE_TICARI, CONSENT__V1__PURPOSE__TICARI);
SAME(PURPOSE_BILGILENDIRME, CONSENT__V1__PURPOSE__BILGILENDIRME);

SAME(REASON_NONE, CONSENT__V1__REASON__REASON_UNSPECIFIED);
SAME(REASON_CONSENT_GIVEN, CONSENT__V1__REASON__CONSENT_GIVEN);
SAME(REASON_CONSENT_REJECTED, CONSENT__V1__REASON__CONSENT_REJECTED);
SAME(REASON_NO_CONSENT, CONSENT__V1__REASON__NO_CONSENT);
SAME(REASON_MERCHANT_NO_REJECTION, CONSENT__V1__REASON__MERCHANT_NO_REJECTION);
SAME(REASON_NOT_COMMERCIAL, CONSENT__V1__REASON__NOT_COMMERCIAL);
SAME(REASON_INVALID_REQUEST, CONSENT__V1__REASON__INVALID_REQUEST);
SAME(REASON_NOT_AUTHORIZED, CONSENT__V1__REASON__NOT_AUTHORIZED);
SAME(REASON_DATA_STALE, CONSENT__V1__REASON__DATA_STALE);
SAME(REASON_COUNT, REASON_DATA_STALE + 1);

SAME(SOURCE_NONE, CONSENT__V1__SOURCE__SOURCE_UNSPECIFIED);
SAME(SOURCE_HS_2015, CONSENT__V1__SOURCE__HS_2015);
SAME(SOURCE_OTHER, CONSENT__V1__SOURCE__SOURCE_OTHER);
#undef SAME

static const char *const channel_names[] = {
	[CHANNEL_NONE] = "CHANNEL_UNSPECIFIED",
	[CHANNEL_ARAMA] = "ARAMA",
	[CHANNEL_MESAJ] = "MESAJ",
	[CHANNEL_EPOSTA] = "EPOSTA",
};

static const char *const rtype_names[] = {
	[RTYPE_NONE] = "RECIPIENT_TYPE_UNSPECIFIED",
	[RTYPE_BIREYSEL] = "BIREYSEL",
	[RTYPE_TACIR] = "TACIR",
};

static const char *const status_names[] = {
	[STATUS_NONE] = "STATUS_UNSPECIFIED",
	[STATUS_ONAY] = "ONAY",
	[STATUS_RET] = "RET",
};

static const char *const purpose_names[] = {
	[PURPOSE_NONE] = "PURPOSE_UNSPECIFIED",
	[PURPOSE_TICARI] = "TICARI",
	[PURPOSE_BILGILENDIRME] = "BILGILENDIRME",
};

static const char *const reason_names[] = {
	[REASON_NONE] = "REASON_UNSPECIFIED",
	[REASON_CONSENT_GIVEN] = "CONSENT_GIVEN",
	[REASON_CONSENT_REJECTED] = "CONSENT_REJECTED",
	[REASON_NO_CONSENT] = "NO_CONSENT",
	[REASON_MERCHANT_NO_REJECTION] = "MERCHANT_NO_REJECTION",
	[REASON_NOT_COMMERCIAL] = "NOT_COMMERCIAL",
	[REASON_INVALID_REQUEST] = "INVALID_REQUEST",
	[REASON_NOT_AUTHORIZED] = "NOT_AUTHORIZED",
	[REASON_DATA_STALE] = "DATA_STALE",
};

/* Gaps (14-31, 41-62) stay NULL: not sources. */
#define SOURCE_ENTRY(name) [CONSENT__V1__SOURCE__##name] = #name
static const char *const source_names[SOURCE_OTHER + 1] = {
	[SOURCE_NONE] = "SOURCE_UNSPECIFIED",
	SOURCE_ENTRY(HS_FIZIKSEL_ORTAM),
	SOURCE_ENTRY(HS_ISLAK_IMZA),
	SOURCE_ENTRY(HS_ETKINLIK),
	SOURCE_ENTRY(HS_ATM),
	SOURCE_ENTRY(HS_EORTAM),
	SOURCE_ENTRY(HS_WEB),
	SOURCE_ENTRY(HS_MOBIL),
	SOURCE_ENTRY(HS_MESAJ),
	SOURCE_ENTRY(HS_EPOSTA),
	SOURCE_ENTRY(HS_CAGRI_MERKEZI),
	SOURCE_ENTRY(HS_SOSYAL_MEDYA),
	SOURCE_ENTRY(HS_2015),
	SOURCE_ENTRY(HS_KARAR),
	SOURCE_ENTRY(IYS_3338),
	SOURCE_ENTRY(IYS_CM),
	SOURCE_ENTRY(IYS_WEB),
	SOURCE_ENTRY(IYS_WEB_YENI),
	SOURCE_ENTRY(IYS_MOBIL),
	SOURCE_ENTRY(IYS_KISA_LINK),
	SOURCE_ENTRY(IYS_KISAMESAJ),
	SOURCE_ENTRY(IYS_EPOSTA),
	SOURCE_ENTRY(IYS_AHS_HAT_KAPATMA),
	SOURCE_ENTRY(SOURCE_OTHER),
};
#undef SOURCE_ENTRY

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char *name_of(const char *const *names, size_t n, int value)
{
	if (value < 0 || (size_t)value >= n)
		return NULL;
	return names[value];
}

/* ASCII case-insensitive equality of s[0..len) with the NUL-terminated
 * name; locale-free on purpose (a Turkish locale folds 'i' to dotless). */
static int name_eq(const char *s, size_t len, const char *name)
{
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char a = (unsigned char)s[i];
		unsigned char b = (unsigned char)name[i];

		if (b == 0)
			return 0;
		if (a >= 'a' && a <= 'z')
			a = (unsigned char)(a - 'a' + 'A');
		if (a != b)
			return 0;
	}
	return name[len] == 0;
}

static int value_of(const char *const *names, size_t n, const char *s,
		    size_t len)
{
	size_t v;

	unsigned char first;

	if (s == NULL || len == 0)
		return 0;
	first = (unsigned char)s[0];
	if (first >= 'a' && first <= 'z')
		first = (unsigned char)(first - 'a' + 'A');
	/* Names differ in their first letter mostly: test it before the
	 * whole comparison (name_eq would refuse the same names). */
	for (v = 0; v < n; v++)
		if (names[v] != NULL && (unsigned char)names[v][0] == first &&
		    name_eq(s, len, names[v]))
			return (int)v;
	return 0;
}

const char *enums_channel_name(int channel)
{
	return name_of(channel_names, N_OF(channel_names), channel);
}

const char *enums_rtype_name(int rtype)
{
	return name_of(rtype_names, N_OF(rtype_names), rtype);
}

const char *enums_status_name(int status)
{
	return name_of(status_names, N_OF(status_names), status);
}

const char *enums_purpose_name(int purpose)
{
	return name_of(purpose_names, N_OF(purpose_names), purpose);
}

const char *enums_reason_name(int reason)
{
	return name_of(reason_names, N_OF(reason_names), reason);
}

const char *enums_source_name(int source)
{
	const char *name = name_of(source_names, N_OF(source_names), source);

	return name != NULL ? name : source_names[SOURCE_OTHER];
}

int enums_channel_parse(const char *s, size_t len)
{
	return value_of(channel_names, N_OF(channel_names), s, len);
}

int enums_rtype_parse(const char *s, size_t len)
{
	return value_of(rtype_names, N_OF(rtype_names), s, len);
}

int enums_status_parse(const char *s, size_t len)
{
	return value_of(status_names, N_OF(status_names), s, len);
}

int enums_purpose_parse(const char *s, size_t len)
{
	return value_of(purpose_names, N_OF(purpose_names), s, len);
}

int enums_reason_parse(const char *s, size_t len)
{
	return value_of(reason_names, N_OF(reason_names), s, len);
}

/* Source is open (İYS adds sources): any non-empty name that is not a
 * known source, "SOURCE_UNSPECIFIED" included, is SOURCE_OTHER. */
int enums_source_parse(const char *s, size_t len)
{
	int v;

	if (s == NULL || len == 0)
		return SOURCE_NONE;
	v = value_of(source_names, N_OF(source_names), s, len);
	return v != SOURCE_NONE ? v : SOURCE_OTHER;
}

int enums_source_valid(int source)
{
	return source != SOURCE_NONE &&
	       name_of(source_names, N_OF(source_names), source) != NULL;
}

int enums_source_stored(int source)
{
	if (source == SOURCE_NONE || enums_source_valid(source))
		return source;
	return SOURCE_OTHER;
}
