/*
 * check: the query layer over the index (index/table.h), the one path
 * from a raw check to a verdict, shared by every
 * protocol (RPC, RESP, HTTP) and consentctl: validate (row 1), authorise
 * (row 2), normalise the recipient, batch-look-up the index, decide
 * (core/decision.h). Any thread may call it on an index it holds (for the
 * server: inside its RCU read side). No allocation; verdict error strings
 * are static, or (as-of checks) in the caller's evidence slots.
 *
 * As-of checks (DESIGN §10): a check with as_of_time or as_of_sequence set
 * is answered from the evidence store (index/history.h, history_as_of:
 * disk reads through the page cache, never the index) by the same rows:
 * validation (both set is row 1; so is a point before the history's
 * start, its start named, and a server with history off), authorisation,
 * purpose, the merchant rule; never staleness (the past does not go
 * stale). The verdict carries the deciding record's sequence and
 * transaction_id. The live path pays one test of the two fields (and
 * decision_decide one store, NULL into verdict.transaction_id; the RPC
 * and gRPC encoders test it only in a batch check_batch says holds an
 * as-of verdict, RESP's once per reply).
 */
#ifndef CONSENTD_CORE_CHECK_H
#define CONSENTD_CORE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"

struct index;
struct principal;
struct history;

/* Where an as-of verdict's strings live (its transaction_id, and the
 * error naming the history's start), one slot per check of a batch. */
#define CHECK_TXID_MAX 256
struct check_evidence {
	char transaction_id[CHECK_TXID_MAX];
	char error[256];
};

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
	/* §10: answers as-of checks (NULL: history is off, and they are
	 * INVALID_REQUEST saying so). */
	struct history *history;
	/* One slot per check of a check_batch call (evidence[i] for in[i]),
	 * holding what out[i] points at until the next call; NULL: as-of
	 * checks are INVALID_REQUEST (a caller that cannot keep them). */
	struct check_evidence *evidence;
};

/* Row 1 alone, for a query that names a key as a check does (a history
 * query, server/evidence.h): NULL when c is well formed (its as-of
 * fields are not looked at), with *r its recipient normalised; else the
 * static reason, naming the field. */
struct recipient;
const char *check_validate_key(const struct check_input *c,
			       struct recipient *r);

/* Decides in[0..n) into out[0..n), in order; any n (batched internally by
 * CHECK_BATCH_MAX for the index's prefetching lookup). Returns how many
 * were answered as of a point (their transaction_id set): an encoder of
 * a batch without any skips the §10 fields' test per verdict. */
#define CHECK_BATCH_MAX 32
size_t check_batch(const struct check_env *env, const struct check_input *in,
		   size_t n, struct verdict *out);

#endif
