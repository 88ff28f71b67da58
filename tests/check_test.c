/* check: check_batch end to end over a real index (index_create +
 * index_apply_writer): validation, authorisation, normalisation, the
 * batched lookup and the decision, in request order at any batch size. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index/check.h"
#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/table.h"
#include "tests/check.h"

#define D1 1700000000LL /* 2023-11-14 */
#define D2 1710000000LL

static struct index *ix;
static const struct decision_policy allow_merchants = { false };
static const struct decision_policy deny_merchants = { true };

/* Stores one record through the same normalisation a check uses. */
static void put(const char *recipient, uint32_t brand, int channel, int rtype,
		int status, int source, int64_t date)
{
	struct recipient r;
	struct index_key key;
	struct consent_value v = {
		.status = (uint8_t)status, .source = (uint8_t)source,
		.consent_date = date,
	};
	const char *why = NULL;
	int rc;

	rc = recipient_normalize(recipient, strlen(recipient), &r, &why);
	CHECKF(rc == 0, "%s: %s", recipient, why);
	index_key_make(ix, &r, brand, rtype, channel, &key);
	rc = index_apply_writer(ix, &key, &v);
	CHECKF(rc == INDEX_INSERTED, "%s: apply %d", recipient, rc);
}

static void test_setup(void)
{
	int rc = index_create(4096, NULL, &ix);

	CHECKF(rc == 0, "index_create: %d", rc);
	if (rc != 0) {
		check_summary();
		exit(1);
	}
	put("+905321234567", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL, STATUS_ONAY,
	    6, D1);
	put("+905321234567", 100, CHANNEL_MESAJ, RTYPE_TACIR, STATUS_RET, 33,
	    D2);
	put("+905321234567", 100, CHANNEL_ARAMA, RTYPE_BIREYSEL, STATUS_RET,
	    10, D2);
	put("+902121230000", 100, CHANNEL_ARAMA, RTYPE_TACIR, STATUS_ONAY, 1,
	    D1);
	put("ali.veli@example.com", 100, CHANNEL_EPOSTA, RTYPE_BIREYSEL,
	    STATUS_ONAY, 9, D1);
	put("+4915112345678", 200, CHANNEL_MESAJ, RTYPE_BIREYSEL, STATUS_ONAY,
	    7, D1);
}

static struct check_input in_of(const char *recipient, uint32_t brand,
				int channel, int rtype, int purpose)
{
	struct check_input c = {
		.recipient = recipient, .recipient_len = strlen(recipient),
		.brand_code = brand, .channel = channel, .rtype = rtype,
		.purpose = purpose,
	};
	return c;
}

static struct verdict one(const struct check_env *env, const char *recipient,
			  uint32_t brand, int channel, int rtype, int purpose)
{
	struct check_input c = in_of(recipient, brand, channel, rtype, purpose);
	struct verdict v;

	memset(&v, 0xa5, sizeof(v));
	check_batch(env, &c, 1, &v);
	return v;
}

#define ENV(policy_, principal_, stale_)                                   \
	((struct check_env){ .index = ix, .policy = (policy_),             \
			     .principal = (principal_), .stale = (stale_) })

#define EXPECT(v, allow_, reason_)                                         \
	CHECKF((v).allow == (allow_) && (v).reason == (reason_),           \
	       "got %d/%s, want %d/%s", (v).allow,                         \
	       enums_reason_name((v).reason), (allow_),                    \
	       enums_reason_name(reason_))

static void test_phone_forms(void)
{
	struct check_env env = ENV(&allow_merchants, NULL, false);
	const char *forms[] = {
		"+905321234567", "905321234567", "05321234567", "5321234567",
		"+90 (532) 123-45-67", " 0532 123 45 67 ",
	};

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		struct verdict v = one(&env, forms[i], 100, CHANNEL_MESAJ,
				       RTYPE_BIREYSEL, PURPOSE_TICARI);

		EXPECT(v, true, REASON_CONSENT_GIVEN);
		CHECKF(v.status == STATUS_ONAY && v.source == 6 &&
		       v.consent_date == D1, "%s", forms[i]);
		CHECK(v.error == NULL);
		/* Unspecified type and purpose: BIREYSEL, TICARI. */
		v = one(&env, forms[i], 100, CHANNEL_MESAJ, RTYPE_NONE,
			PURPOSE_NONE);
		EXPECT(v, true, REASON_CONSENT_GIVEN);
	}
	/* Same number, other channel: its own record (RET). */
	{
		struct verdict v = one(&env, "05321234567", 100, CHANNEL_ARAMA,
				       RTYPE_BIREYSEL, PURPOSE_TICARI);

		EXPECT(v, false, REASON_CONSENT_REJECTED);
		CHECK(v.status == STATUS_RET && v.source == 10 &&
		      v.consent_date == D2);
	}
	/* Other brand, same number: no record. */
	{
		struct verdict v = one(&env, "05321234567", 101, CHANNEL_MESAJ,
				       RTYPE_BIREYSEL, PURPOSE_TICARI);

		EXPECT(v, false, REASON_NO_CONSENT);
		CHECK(v.status == 0 && v.consent_date == 0);
	}
	/* A foreign number, as is. */
	{
		struct verdict v = one(&env, "+49 151 1234 5678", 200,
				       CHANNEL_MESAJ, RTYPE_NONE, PURPOSE_NONE);

		EXPECT(v, true, REASON_CONSENT_GIVEN);
		CHECK(v.source == 7);
	}
}

static void test_email_case(void)
{
	struct check_env env = ENV(&allow_merchants, NULL, false);
	const char *forms[] = {
		"ali.veli@example.com", "Ali.Veli@Example.COM",
		"  ALI.VELI@EXAMPLE.COM\t",
	};

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		struct verdict v = one(&env, forms[i], 100, CHANNEL_EPOSTA,
				       RTYPE_NONE, PURPOSE_TICARI);

		EXPECT(v, true, REASON_CONSENT_GIVEN);
		CHECK(v.source == 9 && v.consent_date == D1);
	}
	{
		struct verdict v = one(&env, "ali.veli@example.org", 100,
				       CHANNEL_EPOSTA, RTYPE_NONE,
				       PURPOSE_TICARI);

		EXPECT(v, false, REASON_NO_CONSENT);
	}
}

static void test_tacir_vs_bireysel(void)
{
	struct check_env env = ENV(&allow_merchants, NULL, false);
	struct check_env deny = ENV(&deny_merchants, NULL, false);
	struct verdict v;

	/* The same address holds one record of each type. */
	v = one(&env, "05321234567", 100, CHANNEL_MESAJ, RTYPE_TACIR,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_CONSENT_REJECTED);
	CHECK(v.source == 33);
	v = one(&env, "05321234567", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, true, REASON_CONSENT_GIVEN);
	/* A TACIR record where the BIREYSEL one is missing. */
	v = one(&env, "02121230000", 100, CHANNEL_ARAMA, RTYPE_TACIR,
		PURPOSE_TICARI);
	EXPECT(v, true, REASON_CONSENT_GIVEN);
	v = one(&env, "02121230000", 100, CHANNEL_ARAMA, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_NO_CONSENT);
	/* No record at all: the merchant exception, per policy. */
	v = one(&env, "05559998877", 100, CHANNEL_MESAJ, RTYPE_TACIR,
		PURPOSE_TICARI);
	EXPECT(v, true, REASON_MERCHANT_NO_REJECTION);
	v = one(&deny, "05559998877", 100, CHANNEL_MESAJ, RTYPE_TACIR,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_NO_CONSENT);
	v = one(&env, "05559998877", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_NO_CONSENT);
}

static void test_purpose_and_stale(void)
{
	struct check_env env = ENV(&allow_merchants, NULL, false);
	struct check_env stale = ENV(&allow_merchants, NULL, true);
	struct verdict v;

	/* Informational: allowed over a RET, which it carries. */
	v = one(&env, "05321234567", 100, CHANNEL_ARAMA, RTYPE_BIREYSEL,
		PURPOSE_BILGILENDIRME);
	EXPECT(v, true, REASON_NOT_COMMERCIAL);
	CHECK(v.status == STATUS_RET && v.consent_date == D2);
	v = one(&stale, "05321234567", 100, CHANNEL_ARAMA, RTYPE_BIREYSEL,
		PURPOSE_BILGILENDIRME);
	EXPECT(v, true, REASON_NOT_COMMERCIAL);
	/* Stale: allows become DATA_STALE, denies keep their reason. */
	v = one(&stale, "05321234567", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_DATA_STALE);
	CHECK(v.status == STATUS_ONAY && v.consent_date == D1);
	v = one(&stale, "05321234567", 100, CHANNEL_ARAMA, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_CONSENT_REJECTED);
	v = one(&stale, "05559998877", 100, CHANNEL_MESAJ, RTYPE_TACIR,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_DATA_STALE);
	v = one(&stale, "05559998877", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL,
		PURPOSE_TICARI);
	EXPECT(v, false, REASON_NO_CONSENT);
}

static void expect_invalid(const struct check_env *env, const char *rcpt,
			   uint32_t brand, int channel, int rtype, int purpose,
			   const char *why)
{
	struct verdict v = one(env, rcpt, brand, channel, rtype, purpose);

	CHECKF(!v.allow && v.reason == REASON_INVALID_REQUEST,
	       "'%s' b=%u c=%d t=%d p=%d: %s", rcpt, brand, channel, rtype,
	       purpose, enums_reason_name(v.reason));
	CHECKF(v.reason == REASON_INVALID_REQUEST && v.error != NULL &&
	       strcmp(v.error, why) == 0, "'%s': error '%s', want '%s'", rcpt,
	       v.reason == REASON_INVALID_REQUEST && v.error ? v.error : "-",
	       why);
	CHECK(v.status == 0 && v.source == 0 && v.consent_date == 0);
}

static void test_invalid(void)
{
	struct check_env env = ENV(&allow_merchants, NULL, false);
	const char *p = "05321234567", *e = "ali.veli@example.com";

	expect_invalid(&env, p, 0, CHANNEL_MESAJ, 0, 0,
		       "brand_code: missing (0 is not a brand)");
	expect_invalid(&env, p, 100000000, CHANNEL_MESAJ, 0, 0,
		       "brand_code: more than 8 digits");
	expect_invalid(&env, p, 100, CHANNEL_NONE, 0, 0,
		       "channel: missing (ARAMA, MESAJ or EPOSTA)");
	expect_invalid(&env, p, 100, 4, 0, 0,
		       "channel: not ARAMA, MESAJ or EPOSTA");
	expect_invalid(&env, p, 100, -1, 0, 0,
		       "channel: not ARAMA, MESAJ or EPOSTA");
	expect_invalid(&env, p, 100, CHANNEL_MESAJ, 3, 0,
		       "recipient_type: not BIREYSEL or TACIR");
	expect_invalid(&env, p, 100, CHANNEL_MESAJ, -2, 0,
		       "recipient_type: not BIREYSEL or TACIR");
	expect_invalid(&env, p, 100, CHANNEL_MESAJ, 0, 3,
		       "purpose: not TICARI or BILGILENDIRME");
	/* Informational does not excuse a malformed request. */
	expect_invalid(&env, e, 100, CHANNEL_MESAJ, 0, PURPOSE_BILGILENDIRME,
		       "channel: ARAMA and MESAJ need a phone number, not an "
		       "e-mail address");
	expect_invalid(&env, e, 100, CHANNEL_ARAMA, 0, 0,
		       "channel: ARAMA and MESAJ need a phone number, not an "
		       "e-mail address");
	expect_invalid(&env, p, 100, CHANNEL_EPOSTA, 0, 0,
		       "channel: EPOSTA needs an e-mail address, not a phone "
		       "number");
	expect_invalid(&env, "", 100, CHANNEL_MESAJ, 0, 0, "recipient: empty");
	expect_invalid(&env, "0532123456", 100, CHANNEL_MESAJ, 0, 0,
		       "phone: 10 national digits cannot start with 0");
	expect_invalid(&env, "ali@", 100, CHANNEL_EPOSTA, 0, 0,
		       "e-mail: empty domain");
	expect_invalid(&env, "+1234567890123456", 100, CHANNEL_MESAJ, 0, 0,
		       "phone: a '+' number has at most 15 digits");
	/* NULL recipient pointer with length 0. */
	{
		struct check_input c = { .recipient = NULL, .brand_code = 100,
					 .channel = CHANNEL_MESAJ };
		struct verdict v;

		check_batch(&env, &c, 1, &v);
		CHECK(v.reason == REASON_INVALID_REQUEST);
	}
}

static void test_not_authorized(void)
{
	uint32_t brands[] = { 100, 300 }; /* sorted, as tokens_parse leaves */
	struct principal p = {
		.name = "partner", .brands = brands, .n_brands = 2,
	};
	struct check_env env = ENV(&allow_merchants, &p, false);
	struct verdict listed, unlisted, nonexistent, blank;

	listed = one(&env, "05321234567", 100, CHANNEL_MESAJ, 0, 0);
	EXPECT(listed, true, REASON_CONSENT_GIVEN);
	/* Listed brand without records: authorised, no record. */
	blank = one(&env, "05321234567", 300, CHANNEL_MESAJ, 0, 0);
	EXPECT(blank, false, REASON_NO_CONSENT);
	/* Brand 200 has records, 999 has none: the answers are identical,
	 * byte for byte, informational or not, TACIR or not. */
	unlisted = one(&env, "+4915112345678", 200, CHANNEL_MESAJ, 0, 0);
	nonexistent = one(&env, "+4915112345678", 999, CHANNEL_MESAJ, 0, 0);
	EXPECT(unlisted, false, REASON_NOT_AUTHORIZED);
	EXPECT(nonexistent, false, REASON_NOT_AUTHORIZED);
	CHECK(unlisted.status == 0 && unlisted.source == 0 &&
	      unlisted.consent_date == 0 && unlisted.error == NULL);
	CHECK(unlisted.allow == nonexistent.allow &&
	      unlisted.reason == nonexistent.reason &&
	      unlisted.status == nonexistent.status &&
	      unlisted.source == nonexistent.source &&
	      unlisted.consent_date == nonexistent.consent_date &&
	      unlisted.error == nonexistent.error);
	unlisted = one(&env, "+4915112345678", 200, CHANNEL_MESAJ, RTYPE_TACIR,
		       PURPOSE_BILGILENDIRME);
	EXPECT(unlisted, false, REASON_NOT_AUTHORIZED);
	/* Malformed beats unauthorised. */
	expect_invalid(&env, "x", 200, CHANNEL_MESAJ, 0, 0,
		       "e-mail: missing '@'");
	/* '*' allows every brand. */
	p.all_brands = true;
	unlisted = one(&env, "+4915112345678", 200, CHANNEL_MESAJ, 0, 0);
	EXPECT(unlisted, true, REASON_CONSENT_GIVEN);
}

/* The expected verdict of check i of the big batch, stated directly. */
static void big_expect(size_t i, bool *allow, int *reason, int64_t *date)
{
	*date = 0;
	switch (i % 5) {
	case 0: /* stored ONAY */
		*allow = true, *reason = REASON_CONSENT_GIVEN;
		*date = D1 + (int64_t)i;
		break;
	case 1: /* stored RET */
		*allow = false, *reason = REASON_CONSENT_REJECTED;
		*date = D1 + (int64_t)i;
		break;
	case 2: /* not stored, BIREYSEL */
		*allow = false, *reason = REASON_NO_CONSENT;
		break;
	case 3: /* malformed */
		*allow = false, *reason = REASON_INVALID_REQUEST;
		break;
	default: /* not stored, TACIR */
		*allow = true, *reason = REASON_MERCHANT_NO_REJECTION;
		break;
	}
}

/* Batches longer than CHECK_BATCH_MAX, and every length around it, keep
 * request order; each verdict matches the same check made alone. */
static void test_big_batches(void)
{
	enum { N = 4 * CHECK_BATCH_MAX + 7 };
	static char rcpt[N][40];
	static struct check_input in[N];
	static struct verdict out[N];
	struct check_env env = ENV(&allow_merchants, NULL, false);
	size_t lens[] = { 0, 1, CHECK_BATCH_MAX - 1, CHECK_BATCH_MAX,
			  CHECK_BATCH_MAX + 1, 2 * CHECK_BATCH_MAX, N };

	for (size_t i = 0; i < N; i++) {
		int rtype = i % 5 == 4 ? RTYPE_TACIR : RTYPE_BIREYSEL;

		/* Every fifth-plus-three is a 9-digit number: malformed. */
		snprintf(rcpt[i], sizeof(rcpt[i]), i % 5 == 3 ? "54%07zu" :
			 "0 54 %08zu", i);
		in[i] = in_of(rcpt[i], 500, CHANNEL_MESAJ, rtype,
			      PURPOSE_TICARI);
		if (i % 5 < 2)
			put(rcpt[i], 500, CHANNEL_MESAJ, rtype,
			    i % 5 == 0 ? STATUS_ONAY : STATUS_RET, 6,
			    D1 + (int64_t)i);
	}
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
		size_t n = lens[k];

		memset(out, 0xa5, sizeof(out));
		check_batch(&env, in, n, out);
		for (size_t i = 0; i < n; i++) {
			struct verdict alone;
			bool allow;
			int reason;
			int64_t date;

			big_expect(i, &allow, &reason, &date);
			CHECKF(out[i].allow == allow && out[i].reason == reason
			       && out[i].consent_date == date,
			       "n=%zu i=%zu (%s): got %d/%s/%lld", n, i,
			       rcpt[i], out[i].allow,
			       enums_reason_name(out[i].reason),
			       (long long)out[i].consent_date);
			check_batch(&env, &in[i], 1, &alone);
			CHECK(alone.allow == out[i].allow &&
			      alone.reason == out[i].reason &&
			      alone.status == out[i].status &&
			      alone.consent_date == out[i].consent_date);
		}
		/* Nothing past n is written. */
		if (n < N)
			CHECK(out[n].reason == 0xa5);
	}
}

/* No index loaded: nothing is allowed on no data. */
static void test_no_index(void)
{
	struct check_env env = {
		.index = NULL, .policy = &allow_merchants, .principal = NULL,
		.stale = false,
	};
	struct verdict v;

	v = one(&env, "05321234567", 100, CHANNEL_MESAJ, RTYPE_TACIR, 0);
	EXPECT(v, false, REASON_DATA_STALE);
	v = one(&env, "05321234567", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL, 0);
	EXPECT(v, false, REASON_NO_CONSENT);
	v = one(&env, "05321234567", 100, CHANNEL_MESAJ, 0,
		PURPOSE_BILGILENDIRME);
	EXPECT(v, true, REASON_NOT_COMMERCIAL);
	v = one(&env, "0532", 100, CHANNEL_MESAJ, 0, 0);
	EXPECT(v, false, REASON_INVALID_REQUEST);
}

int main(void)
{
	RUN(test_setup);
	RUN(test_phone_forms);
	RUN(test_email_case);
	RUN(test_tacir_vs_bireysel);
	RUN(test_purpose_and_stale);
	RUN(test_invalid);
	RUN(test_not_authorized);
	RUN(test_big_batches);
	RUN(test_no_index);
	index_destroy(ix);
	return check_summary();
}
