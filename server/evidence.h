/*
 * evidence: a history query (DESIGN §10: HistoryRequest, RESP HISTORY,
 * GET /v1/history) as every port answers it: the same validation as a
 * check's row 1 (index/check.h), the same brand rights as a check's row 2
 * (core/tokens.h: a partner sees only its brands' history, refused the
 * same whether or not the brand has records), then the key's records
 * from the evidence store (index/history.h: disk reads through the page
 * cache, off the check path), oldest first, at most EVIDENCE_MAX_ENTRIES
 * (the newest ones; the answer's total says how many the key holds).
 * Any thread (the ports' workers, the ops thread). The answer owns its
 * entries (evidence_answer_fini). Errors: an HTTP-like code with a
 * message naming what was wrong.
 */
#ifndef CONSENTD_SERVER_EVIDENCE_H
#define CONSENTD_SERVER_EVIDENCE_H

#include <stddef.h>
#include <stdint.h>

#define EVIDENCE_MAX_ENTRIES 1000

struct history;
struct history_entry;
struct principal;
struct obuf;

struct evidence_query {
	const char *recipient;
	size_t recipient_len;
	uint32_t brand_code;
	int channel; /* enum channel */
	int rtype;   /* enum rtype; 0: BIREYSEL */
};

struct evidence_answer {
	struct history_entry *entries; /* [0, n), oldest first */
	size_t n;
	size_t total; /* the key's records (> n: the newest n given) */
};

/* 0 with *out filled; else the code with the reason in msg: 400 a field
 * that is wrong (named, as a check's INVALID_REQUEST names it), 403 a
 * brand outside principal's list (NULL principal: trusted), 501 history
 * off (h NULL), 503 the store failed or memory ran out. */
int evidence_query(struct history *h, const struct principal *principal,
		   const struct evidence_query *q, struct evidence_answer *out,
		   char *msg, size_t msg_cap);
void evidence_answer_fini(struct evidence_answer *a);

/* The HistoryResponse message's bytes (no Response around it), appended
 * to b. 0, or -ENOMEM. */
int evidence_encode(struct obuf *b, const struct evidence_answer *a,
		    uint64_t applied_sequence);

/* evidence_query for a HistoryRequest's bytes (RPC body 6, gRPC
 * History): 400 when they do not decode. */
int evidence_query_message(struct history *h,
			   const struct principal *principal,
			   const uint8_t *buf, size_t len,
			   struct evidence_answer *out, char *msg,
			   size_t msg_cap);

#endif
