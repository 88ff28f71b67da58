/*
 * enums: the wire enums of proto/consent.proto as small C enums, and their
 * names. Values equal the protobuf values (static_asserts in enums.c pin
 * them to the generated header). Parsing is ASCII case-insensitive and
 * takes a length (RESP and HTTP arguments are not NUL-terminated); it
 * returns the value, or 0 (the _NONE value) for a name it does not know.
 * Source is open: enums_source_parse maps an unknown non-empty name to
 * SOURCE_OTHER. Pure functions; any thread.
 */
#ifndef CONSENTD_CORE_ENUMS_H
#define CONSENTD_CORE_ENUMS_H

#include <stddef.h>

enum channel {
	CHANNEL_NONE = 0,   /* unspecified: take the request default */
	CHANNEL_ARAMA = 1,  /* call */
	CHANNEL_MESAJ = 2,  /* SMS */
	CHANNEL_EPOSTA = 3, /* e-mail */
};

enum rtype {
	RTYPE_NONE = 0,     /* unspecified: BIREYSEL in a check */
	RTYPE_BIREYSEL = 1, /* individual */
	RTYPE_TACIR = 2,    /* merchant / tradesman */
};

enum status {
	STATUS_NONE = 0,
	STATUS_ONAY = 1, /* consent */
	STATUS_RET = 2,  /* rejection */
};

enum purpose {
	PURPOSE_NONE = 0,          /* unspecified: TICARI */
	PURPOSE_TICARI = 1,        /* commercial */
	PURPOSE_BILGILENDIRME = 2, /* informational, transactional, OTP */
};

enum reason {
	REASON_NONE = 0,
	REASON_CONSENT_GIVEN = 1,
	REASON_CONSENT_REJECTED = 2,
	REASON_NO_CONSENT = 3,
	REASON_MERCHANT_NO_REJECTION = 4,
	REASON_NOT_COMMERCIAL = 5,
	REASON_INVALID_REQUEST = 6,
	REASON_NOT_AUTHORIZED = 7,
	REASON_DATA_STALE = 8,
};
#define REASON_COUNT 9

/* Source values are the wire values: provider 1-13, citizen 32-40. */
#define SOURCE_NONE 0
#define SOURCE_HS_2015 12
#define SOURCE_OTHER 63

const char *enums_channel_name(int channel);   /* "MESAJ"; NULL if unknown */
const char *enums_rtype_name(int rtype);
const char *enums_status_name(int status);
const char *enums_purpose_name(int purpose);
const char *enums_reason_name(int reason);
const char *enums_source_name(int source);     /* "SOURCE_OTHER" for unknown */

int enums_channel_parse(const char *s, size_t len);
int enums_rtype_parse(const char *s, size_t len);
int enums_status_parse(const char *s, size_t len);
int enums_purpose_parse(const char *s, size_t len);
int enums_reason_parse(const char *s, size_t len);
int enums_source_parse(const char *s, size_t len); /* never 0 for len > 0 */

/* True for a value the schema defines (source: any defined value). */
int enums_source_valid(int source);

/* The source a record keeps (DESIGN §1.1: source is open): a defined
 * value as it is, SOURCE_NONE as it is, anything else SOURCE_OTHER. */
int enums_source_stored(int source);

#endif
