/*
 * json: the ops port's JSON (DESIGN §3.4), built on jansson. Decodes a
 * POST /v1/check body (CheckRequest: {"checks":[…], "brand_code":…,
 * "channel":…, "recipient_type":…, "purpose":…}) into check_batch input,
 * and encodes verdicts, check responses, stats and errors. Field names are
 * the schema's snake_case ones (lowerCamelCase accepted on input, as the
 * proto3 JSON mapping does); enums are names (any case) or their numbers;
 * null means unset. Pure functions of their arguments; any thread.
 * Errors: -EINVAL (-EMSGSIZE for too many checks or too large a body) with
 * a message in err naming the field; -ENOMEM. Encoders return a malloc'd
 * NUL-terminated text the caller frees with free(), or NULL on ENOMEM.
 */
#ifndef CONSENTD_SERVER_JSON_H
#define CONSENTD_SERVER_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <stdbool.h>

#include "index/check.h"

#define JSON_MAX_BODY_BYTES (1u << 20) /* a POST body: 1 MiB */
#define JSON_MAX_CHECKS 10000          /* checks in one POST */

/* A decoded CheckRequest: the checks with the request-level defaults
 * applied (a check's zero brand or enum takes the request's). Recipients
 * point into the parsed document, so they live until
 * json_check_request_fini. */
struct json_check_request {
	struct check_input *checks;
	size_t n_checks;
	void *doc; /* the parsed document (a json_t) */
};

/* Decodes body[0..len) (need not be NUL-terminated). Refuses, naming what
 * was wrong: text that is not one JSON object, unknown or duplicate
 * fields, wrong types, unknown enum names or numbers, brand codes outside
 * uint32, strings with NUL bytes, a missing "checks" array, more than
 * max_checks checks (-EMSGSIZE), a body over JSON_MAX_BODY_BYTES
 * (-EMSGSIZE). Content errors a check can carry (a recipient that does not
 * normalise, a missing channel, brand 0) are left to check_batch, which
 * answers them with an INVALID_REQUEST verdict, as on every protocol. */
int json_decode_check_request(const char *body, size_t len, size_t max_checks,
			      struct json_check_request *out,
			      char *err, size_t err_cap);
void json_check_request_fini(struct json_check_request *req);

/* Which enum json_enum_text parses. */
enum json_enum {
	JSON_ENUM_CHANNEL, /* enum channel */
	JSON_ENUM_RTYPE,   /* enum rtype */
	JSON_ENUM_PURPOSE, /* enum purpose */
};

/* An enum given as text (a JSON string or a query parameter): its name in
 * any case, or its decimal number. The empty text is 0 (unset). Returns
 * the value, or -EINVAL for a name or number the schema does not define. */
int json_enum_text(enum json_enum kind, const char *s, size_t len);

/* A brand code as decimal text: 0..4294967295, digits only. Returns 0 and
 * sets *out, or -EINVAL. */
int json_brand_text(const char *s, size_t len, uint32_t *out);

/* One check field from its text form (a GET /v1/check query parameter:
 * recipient, brand_code, channel, recipient_type, purpose, as_of_time,
 * as_of_sequence, or their lowerCamelCase names), set in *c. Returns a bit unique to the field (to
 * catch a parameter given twice), or -EINVAL with a message for an unknown
 * parameter or a bad brand or enum text. val need not be NUL-terminated;
 * *c keeps pointing at it for the recipient. */
int json_check_param(struct check_input *c, const char *key, size_t key_len,
		     const char *val, size_t val_len, char *err, size_t err_cap);

/* A GET /v1/history query parameter (§10): json_check_param's recipient,
 * brand_code, channel and recipient_type; anything else is -EINVAL. */
int json_history_param(struct check_input *c, const char *key,
		       size_t key_len, const char *val, size_t val_len,
		       char *err, size_t err_cap);

/* {"allow":true,"reason":"CONSENT_GIVEN","status":"ONAY","source":"HS_WEB",
 * "consent_date":1700000000}. status, source and consent_date are omitted
 * when no record decided (the proto3 JSON convention for unset fields);
 * "error" is present only for INVALID_REQUEST. An as-of verdict (§10)
 * decided by a record adds "sequence" and "transaction_id" (its). */
char *json_encode_verdict(const struct verdict *v);

/* {"verdicts":[…],"applied_sequence":…,"data_as_of":…}. Numbers are JSON
 * integers; a sequence above 2^63-1 (not reachable: it counts changes) is
 * clamped. */
char *json_encode_check_response(const struct verdict *v, size_t n,
				 uint64_t applied_sequence, int64_t data_as_of);

/* StatsResponse (DESIGN §3.1). */
struct json_stats {
	bool own_only;   /* no 'stats' right: records, generation left out */
	uint64_t records;
	uint64_t applied_sequence;
	int64_t data_as_of;
	uint64_t generation;
	uint64_t checks_total;
	/* The outbox (§11), with the 'stats' right and a writer. */
	bool outbox;
	uint64_t outbox_depth;
	int64_t outbox_oldest_age_s;
	const char *origin_cursor; /* ?origin= asked (and allowed): its cursor */
	/* §10: the chain head (history on and not empty), the hash as 64
	 * hex digits in "chain_hash". */
	bool chain;
	uint64_t chain_sequence;
	const uint8_t *chain_hash;
	uint8_t chain_head[32]; /* room chain_hash may point at */
};
char *json_encode_stats(const struct json_stats *s);

/* {"error":"msg"}. */
char *json_encode_error(const char *msg);

/* POST /v1/reject's body: {"recipient":…, "brand_code":…, "channel":…,
 * "recipient_type":…, "source":…} (names or numbers, null unset; source a
 * defined name or number). The checks' fields decode as in a CheckRequest;
 * unknown fields, bad types and unknown enum values are refused naming
 * the field. What only the rejection can judge (a recipient that does not
 * normalise, no channel, a source not a provider's) is reject_build's.
 * The recipient points into doc until json_reject_fini. */
struct json_reject {
	const char *recipient;
	size_t recipient_len;
	uint32_t brand_code;
	int channel;
	int recipient_type;
	int source;
	void *doc;
};
int json_decode_reject(const char *body, size_t len, struct json_reject *out,
		       char *err, size_t err_cap);
void json_reject_fini(struct json_reject *r);

/* POST /v1/outbox/pushed's body: {"sequence":S,"transaction_id":"…"},
 * both required, nothing else; id gets the text (id_cap with its NUL). */
int json_decode_pushed(const char *body, size_t len, uint64_t *sequence,
		       char *id, size_t id_cap, char *err, size_t err_cap);

/* ApplyResponse: {"applied_sequence":…,"applied":…,"skipped":…}. */
char *json_encode_apply(uint64_t applied_sequence, uint32_t applied,
			uint32_t skipped);

/* GET /v1/outbox: {"entries":[{"sequence":S,"recipient":…,"brand_code":…,
 * "iys_code":…,"channel":"MESAJ","recipient_type":"BIREYSEL",
 * "source":"HS_MESAJ","consent_date":T,"state":"queued"|"pushed",
 * "transaction_id":"…"}],"depth":D}; transaction_id is İYS's ("" while
 * queued). */
struct outbox_entry;
char *json_encode_outbox(const struct outbox_entry *e, size_t n,
			 uint64_t depth);

/* GET /v1/history (§10): {"entries":[{"consent":{"recipient":…,
 * "channel":…,"recipient_type":…,"brand_code":…,"iys_code":…,"status":…,
 * "source":…,"consent_date":…,"creation_date":…,"transaction_id":…,
 * "sequence":…},"applied_at":…,"chain_hash":"64 hex"}],
 * "applied_sequence":…,"total":T,"truncated":bool}: e[0..n) oldest first,
 * total the records the key holds (truncated when more than n: the
 * newest n are given). */
struct history_entry;
char *json_encode_history(const struct history_entry *e, size_t n,
			  size_t total, uint64_t applied_sequence);

/* {"sequence":S,"state":"pushed"}. */
char *json_encode_pushed(uint64_t sequence);

#endif
