/*
 * decision: DESIGN §1.3, the one place the decision table lives. Every
 * protocol reaches it through check_batch (index/check.h); consentctl check
 * too. Pure function of its arguments; any thread.
 */
#ifndef CONSENTD_CORE_DECISION_H
#define CONSENTD_CORE_DECISION_H

#include <stdbool.h>
#include <stdint.h>

/* The range of a consent date (DESIGN §1.1), the one definition of it:
 * none is older than İYS, 2015-05-01 00:00:00 Turkey time (UTC+3), and
 * the index stores a date as 31 bits of seconds past that floor, so none
 * may be later than 2^31 - 1 seconds after it (2083-05-19). */
#define CONSENT_DATE_MIN 1430427600LL
#define CONSENT_DATE_MAX (CONSENT_DATE_MIN + 2147483647LL)

/* What a lookup found: the stored value of one consent key. */
struct consent_value {
	uint8_t status;       /* STATUS_ONAY or STATUS_RET */
	uint8_t source;       /* wire Source value */
	int64_t consent_date; /* Unix seconds UTC */
};

/* One check, after validation and authorisation (rows 1-2 are decided by
 * the caller's flags: invalid set means row 1, authorized false row 2). */
struct decision_input {
	const char *invalid; /* non-NULL: the request is malformed, this says why */
	bool authorized;     /* the caller may ask about this brand */
	int purpose;         /* enum purpose; PURPOSE_NONE means TICARI */
	int rtype;           /* enum rtype; RTYPE_NONE means BIREYSEL */
	bool stale;          /* data past the hard freshness bound (row 4) */
	const struct consent_value *record; /* NULL: no record */
};

struct decision_policy {
	bool merchant_default_deny; /* --merchant-default deny (row 7) */
};

/* The answer and the evidence for it. From row 3 on, status, source and
 * consent_date are the record's when there is one (row 3 carries it for
 * information); they are 0 when there is none or rows 1-2 decided. */
struct verdict {
	bool allow;
	uint8_t reason;       /* enum reason */
	uint8_t status;       /* enum status of the deciding record, or 0 */
	uint8_t source;       /* its source, or 0 */
	int64_t consent_date; /* its consent date (Unix seconds UTC), or 0 */
	const char *error;    /* INVALID_REQUEST: static text saying what was wrong */
	/* §10: set (non-NULL, "" when the record has none) only for a
	 * verdict answered as of a past point (index/check.h), with the
	 * deciding record's log sequence (0: no record); NULL for every
	 * live verdict, so encoders test this one field. */
	const char *transaction_id;
	uint64_t sequence;
};

/* The order rule (DESIGN §2), the one statement of it: true when a
 * replaces b, that is when a ranks above b by consent_date, then status
 * (RET above ONAY), then source (wire 1-13, then 32-40, then any other
 * value, then 0: the index's dense source codes in order). Equal values
 * do not replace each other. index_apply_writer (index/table.c) keeps
 * the same rule on its packed values; a unit test compares the
 * two over random values (tests/history_test.c). Sources as stored
 * (enums_source_stored). */
bool consent_value_newer(const struct consent_value *a,
			 const struct consent_value *b);

void decision_decide(const struct decision_policy *policy,
		     const struct decision_input *in, struct verdict *out);

#endif
