/* decision: every row of DESIGN §1.3, under both merchant defaults and
 * with the data fresh and stale, checked against an independent statement
 * of the table; plus the evidence each verdict carries. */
#include <stdbool.h>
#include <string.h>

#include "core/decision.h"
#include "core/enums.h"
#include "tests/check.h"

static const struct consent_value onay = {
	.status = STATUS_ONAY, .source = 6, .consent_date = 1700000000
};
static const struct consent_value ret = {
	.status = STATUS_RET, .source = 33, .consent_date = 1700000123
};

/* The table as the design states it, written out row by row. */
static void expected(bool merchant_deny, const char *invalid, bool authorized,
		     int purpose, int rtype, bool stale,
		     const struct consent_value *rec, bool *allow, int *reason)
{
	if (invalid) {
		*allow = false, *reason = REASON_INVALID_REQUEST;          /* 1 */
		return;
	}
	if (!authorized) {
		*allow = false, *reason = REASON_NOT_AUTHORIZED;           /* 2 */
		return;
	}
	if (purpose == PURPOSE_BILGILENDIRME) {
		*allow = true, *reason = REASON_NOT_COMMERCIAL;            /* 3 */
		return;
	}
	if (rec && rec->status == STATUS_ONAY)
		*allow = true, *reason = REASON_CONSENT_GIVEN;             /* 5 */
	else if (rec && rec->status == STATUS_RET)
		*allow = false, *reason = REASON_CONSENT_REJECTED;         /* 6 */
	else if (rtype == RTYPE_TACIR && !merchant_deny)
		*allow = true, *reason = REASON_MERCHANT_NO_REJECTION;     /* 7 */
	else
		*allow = false, *reason = REASON_NO_CONSENT;               /* 7, 8 */
	if (stale && *allow)
		*allow = false, *reason = REASON_DATA_STALE;               /* 4 */
}

/* Every combination of the inputs. */
static void test_exhaustive(void)
{
	const struct consent_value *recs[] = { NULL, &onay, &ret };
	const char *invalids[] = { NULL, "phone: no digits" };
	int combos = 0;

	for (int md = 0; md < 2; md++)
	for (int iv = 0; iv < 2; iv++)
	for (int au = 0; au < 2; au++)
	for (int pu = PURPOSE_NONE; pu <= PURPOSE_BILGILENDIRME; pu++)
	for (int rt = RTYPE_NONE; rt <= RTYPE_TACIR; rt++)
	for (int st = 0; st < 2; st++)
	for (int rc = 0; rc < 3; rc++) {
		struct decision_policy pol = { .merchant_default_deny = md };
		struct decision_input in = {
			.invalid = invalids[iv], .authorized = au,
			.purpose = pu, .rtype = rt, .stale = st,
			.record = recs[rc],
		};
		struct verdict v;
		bool allow;
		int reason;

		memset(&v, 0xa5, sizeof(v)); /* every field must be written */
		decision_decide(&pol, &in, &v);
		expected(md, in.invalid, au, pu, rt, st, recs[rc], &allow,
			 &reason);
		combos++;
		CHECKF(v.allow == allow && v.reason == reason,
		       "md=%d iv=%d au=%d pu=%d rt=%d st=%d rc=%d: got %d/%s "
		       "want %d/%s", md, iv, au, pu, rt, st, rc, v.allow,
		       enums_reason_name(v.reason), allow,
		       enums_reason_name(reason));
		/* Evidence: rows 1-2 carry nothing; from row 3 on, the
		 * record if there is one. */
		if (iv || !au || rc == 0) {
			CHECK(v.status == 0 && v.source == 0 &&
			      v.consent_date == 0);
		} else {
			CHECK(v.status == recs[rc]->status);
			CHECK(v.source == recs[rc]->source);
			CHECK(v.consent_date == recs[rc]->consent_date);
		}
		if (iv)
			CHECK(v.error == invalids[iv]);
		else
			CHECK(v.error == NULL);
	}
	CHECK(combos == 2 * 2 * 2 * 3 * 3 * 2 * 3);
}

static struct verdict decide(bool md, bool stale, int purpose, int rtype,
			     const struct consent_value *rec)
{
	struct decision_policy pol = { .merchant_default_deny = md };
	struct decision_input in = {
		.authorized = true, .purpose = purpose, .rtype = rtype,
		.stale = stale, .record = rec,
	};
	struct verdict v;

	decision_decide(&pol, &in, &v);
	return v;
}

/* The rows one by one, as literal expectations. */
static void test_rows(void)
{
	struct verdict v;

	/* Row 1 beats everything, even an informational check. */
	{
		struct decision_input in = {
			.invalid = "e-mail: empty domain", .authorized = false,
			.purpose = PURPOSE_BILGILENDIRME, .record = &onay,
		};
		decision_decide(&(struct decision_policy){ 0 }, &in, &v);
		CHECK(!v.allow && v.reason == REASON_INVALID_REQUEST);
		CHECK_STREQ(v.error, "e-mail: empty domain");
		CHECK(v.status == 0);
	}
	/* Row 2 beats row 3 and hides the record. */
	{
		struct decision_input in = {
			.authorized = false, .purpose = PURPOSE_BILGILENDIRME,
			.record = &onay,
		};
		decision_decide(&(struct decision_policy){ 0 }, &in, &v);
		CHECK(!v.allow && v.reason == REASON_NOT_AUTHORIZED);
		CHECK(v.status == 0 && v.consent_date == 0);
	}
	/* Row 3: allowed with a RET on file and with stale data; the RET
	 * travels with it for information. */
	v = decide(false, true, PURPOSE_BILGILENDIRME, RTYPE_BIREYSEL, &ret);
	CHECK(v.allow && v.reason == REASON_NOT_COMMERCIAL);
	CHECK(v.status == STATUS_RET && v.consent_date == 1700000123);
	v = decide(true, false, PURPOSE_BILGILENDIRME, RTYPE_NONE, NULL);
	CHECK(v.allow && v.reason == REASON_NOT_COMMERCIAL && v.status == 0);
	/* Row 5, fresh and stale (row 4 keeps the evidence). */
	v = decide(false, false, PURPOSE_TICARI, RTYPE_BIREYSEL, &onay);
	CHECK(v.allow && v.reason == REASON_CONSENT_GIVEN);
	CHECK(v.status == STATUS_ONAY && v.source == 6);
	v = decide(false, true, PURPOSE_NONE, RTYPE_BIREYSEL, &onay);
	CHECK(!v.allow && v.reason == REASON_DATA_STALE);
	CHECK(v.status == STATUS_ONAY && v.consent_date == 1700000000);
	/* Row 6: a deny keeps its own reason when stale. */
	v = decide(false, true, PURPOSE_TICARI, RTYPE_TACIR, &ret);
	CHECK(!v.allow && v.reason == REASON_CONSENT_REJECTED);
	CHECK(v.status == STATUS_RET && v.source == 33);
	/* Row 7 under both defaults, fresh and stale. */
	v = decide(false, false, PURPOSE_TICARI, RTYPE_TACIR, NULL);
	CHECK(v.allow && v.reason == REASON_MERCHANT_NO_REJECTION);
	v = decide(true, false, PURPOSE_TICARI, RTYPE_TACIR, NULL);
	CHECK(!v.allow && v.reason == REASON_NO_CONSENT);
	v = decide(false, true, PURPOSE_TICARI, RTYPE_TACIR, NULL);
	CHECK(!v.allow && v.reason == REASON_DATA_STALE);
	v = decide(true, true, PURPOSE_TICARI, RTYPE_TACIR, NULL);
	CHECK(!v.allow && v.reason == REASON_NO_CONSENT);
	/* Row 8: unspecified recipient type is BIREYSEL. */
	v = decide(false, false, PURPOSE_TICARI, RTYPE_NONE, NULL);
	CHECK(!v.allow && v.reason == REASON_NO_CONSENT);
	v = decide(false, true, PURPOSE_TICARI, RTYPE_BIREYSEL, NULL);
	CHECK(!v.allow && v.reason == REASON_NO_CONSENT);
	/* A TACIR with a record follows the record, not the exception. */
	v = decide(false, false, PURPOSE_TICARI, RTYPE_TACIR, &ret);
	CHECK(!v.allow && v.reason == REASON_CONSENT_REJECTED);
}

/* A NULL policy is the default policy (merchant default allow). */
static void test_null_policy(void)
{
	struct decision_input in = {
		.authorized = true, .purpose = PURPOSE_TICARI,
		.rtype = RTYPE_TACIR,
	};
	struct verdict v;

	decision_decide(NULL, &in, &v);
	CHECK(v.allow && v.reason == REASON_MERCHANT_NO_REJECTION);
}

int main(void)
{
	RUN(test_exhaustive);
	RUN(test_rows);
	RUN(test_null_policy);
	return check_summary();
}
