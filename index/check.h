/*
 * check: the query layer over the index (index/table.h), the one path
 * from a raw check to a verdict, shared by every
 * protocol (RPC, RESP, HTTP) and consentctl: validate (row 1), authorise
 * (row 2), normalise the recipient, batch-look-up the index, decide
 * (core/decision.h). Any thread may call it on an index it holds (for the
 * server: inside its RCU read side). No allocation; verdict error strings
 * are static.
 */
#ifndef CONSENTD_CORE_CHECK_H
#define CONSENTD_CORE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"

struct index;
struct principal;

/* One check as the client sent it, with request defaults already applied
 * by the protocol (CheckRequest fields, RESP arguments). Zero enums mean
 * unspecified: recipient type BIREYSEL, purpose TICARI; a zero channel or
 * brand is INVALID_REQUEST. Enum values outside the schema are
 * INVALID_REQUEST too. */
struct check_input {
	const char *recipient;
	size_t recipient_len;
	uint32_t brand_code;
	int channel; /* enum channel */
	int rtype;   /* enum rtype */
	int purpose; /* enum purpose */
	/* §10 as-of: at most one non-zero (Unix seconds / log position). */
	int64_t as_of_time;
	uint64_t as_of_sequence;
};

struct check_env {
	const struct index *index;           /* the served generation */
	const struct decision_policy *policy;
	const struct principal *principal;   /* NULL: trusted caller */
	bool stale;                          /* past the hard freshness bound */
};

/* Decides in[0..n) into out[0..n), in order; any n (batched internally by
 * CHECK_BATCH_MAX for the index's prefetching lookup). */
#define CHECK_BATCH_MAX 32
void check_batch(const struct check_env *env, const struct check_input *in,
		 size_t n, struct verdict *out);

#endif
