/*
 * decision: DESIGN §1.3, rows 1-8, first match wins. The record travels
 * with every verdict from row 3 on (for row 3 as information, for rows
 * 4-8 as the evidence), so an audit can see what the answer rested on.
 */
#include "core/decision.h"

#include <stddef.h>

#include "core/enums.h"

void decision_decide(const struct decision_policy *policy,
		     const struct decision_input *in, struct verdict *out)
{
	const struct consent_value *rec = in->record;

	out->allow = false;
	out->status = 0;
	out->source = 0;
	out->consent_date = 0;
	out->error = NULL;
	out->transaction_id = NULL; /* a live verdict; check_as_of sets it */

	/* Row 1: malformed. */
	if (in->invalid != NULL) {
		out->reason = REASON_INVALID_REQUEST;
		out->error = in->invalid;
		return;
	}
	/* Row 2: not this caller's brand (no record: that would leak). */
	if (!in->authorized) {
		out->reason = REASON_NOT_AUTHORIZED;
		return;
	}

	if (rec != NULL) {
		out->status = rec->status;
		out->source = rec->source;
		out->consent_date = rec->consent_date;
	}

	/* Row 3: informational messages need no consent, stale or not. */
	if (in->purpose == PURPOSE_BILGILENDIRME) {
		out->allow = true;
		out->reason = REASON_NOT_COMMERCIAL;
		return;
	}

	/* Rows 5-8. */
	if (rec != NULL && rec->status == STATUS_ONAY) {
		out->allow = true;
		out->reason = REASON_CONSENT_GIVEN;
	} else if (rec != NULL) {
		/* RET, and anything that is not a consent, denies. */
		out->reason = REASON_CONSENT_REJECTED;
	} else if (in->rtype == RTYPE_TACIR) {
		if (policy != NULL && policy->merchant_default_deny) {
			out->reason = REASON_NO_CONSENT;
		} else {
			out->allow = true;
			out->reason = REASON_MERCHANT_NO_REJECTION;
		}
	} else {
		out->reason = REASON_NO_CONSENT;
	}

	/* Row 4: past the hard bound an allow may rest on a consent that
	 * has since been withdrawn; a deny is still safe to serve. */
	if (in->stale && out->allow) {
		out->allow = false;
		out->reason = REASON_DATA_STALE;
	}
}

/* The source's place in the order: index/table.c's source_code, whose
 * dense codes are ordered exactly so. */
static unsigned decision_source_rank(uint8_t wire)
{
	if (wire >= 1 && wire <= 13)
		return wire;
	if (wire >= 32 && wire <= 40)
		return wire - 18u;
	if (wire == 0)
		return 24;
	return 23;
}

bool consent_value_newer(const struct consent_value *a,
			 const struct consent_value *b)
{
	if (a->consent_date != b->consent_date)
		return a->consent_date > b->consent_date;
	bool ra = a->status == STATUS_RET, rb = b->status == STATUS_RET;
	if (ra != rb)
		return ra;
	return decision_source_rank(a->source) > decision_source_rank(b->source);
}
