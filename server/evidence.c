/*
 * evidence: the history query every port answers (server/evidence.h).
 *
 * The entries are read into memory the query allocates: a query is an
 * audit's, not a gateway's hot path, and a key holds a handful of records
 * (one per consent given or withdrawn). One that holds more than the
 * first room is read once more with room for it, at most
 * EVIDENCE_MAX_ENTRIES (its newest), so an answer is bounded whatever
 * the key's history.
 */
#include "server/evidence.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/check.h"
#include "index/history.h"
#include "proto/consent.pb-c.h"
#include "server/obuf.h"

#define EVIDENCE_FIRST_ROOM 16 /* most keys hold fewer records */

void evidence_answer_fini(struct evidence_answer *a)
{
	free(a->entries);
	memset(a, 0, sizeof(*a));
}

/* The key's records into a->entries: history_key gives the newest cap
 * of them (oldest first) and says how many there are, so a key with more
 * than the first room is read once more with room for what is given. */
static int evidence_read(struct history *h, const char *text,
			 const struct evidence_query *q, int rtype,
			 struct evidence_answer *a, char *msg, size_t msg_cap)
{
	size_t cap = EVIDENCE_FIRST_ROOM, n = 0;
	char err[256];

	for (int round = 0; round < 2; round++) {
		struct history_entry *e = malloc(cap * sizeof(*e));
		if (e == NULL) {
			snprintf(msg, msg_cap, "out of memory for %zu history "
				 "entries", cap);
			return 503;
		}
		int rc = history_key(h, text, q->brand_code, q->channel, rtype,
				     e, cap, &n, err, sizeof(err));
		if (rc < 0) {
			free(e);
			snprintf(msg, msg_cap, "history cannot be read: %s",
				 err);
			return 503;
		}
		if (n <= cap || cap == EVIDENCE_MAX_ENTRIES || round == 1) {
			a->entries = e;
			a->n = n < cap ? n : cap;
			a->total = n;
			return 0;
		}
		free(e);
		cap = n < EVIDENCE_MAX_ENTRIES ? n : EVIDENCE_MAX_ENTRIES;
	}
	return 503; /* not reached */
}

int evidence_query(struct history *h, const struct principal *principal,
		   const struct evidence_query *q, struct evidence_answer *out,
		   char *msg, size_t msg_cap)
{
	struct check_input c = {
		.recipient = q->recipient, .recipient_len = q->recipient_len,
		.brand_code = q->brand_code, .channel = q->channel,
		.rtype = q->rtype,
	};
	struct recipient r;
	char text[RECIPIENT_TEXT_MAX];

	memset(out, 0, sizeof(*out));
	if (h == NULL) {
		snprintf(msg, msg_cap, "history is off (--history off)");
		return 501;
	}
	/* Row 1, then row 2, as for a check. */
	const char *why = check_validate_key(&c, &r);
	if (why != NULL) {
		snprintf(msg, msg_cap, "%s", why);
		return 400;
	}
	if (!principal_may_check(principal, q->brand_code)) {
		snprintf(msg, msg_cap, "brand_code %" PRIu32 " is not among "
			 "this principal's brands", q->brand_code);
		return 403;
	}
	recipient_format(&r, text, sizeof(text));
	return evidence_read(h, text, q, q->rtype ? q->rtype : RTYPE_BIREYSEL,
			     out, msg, msg_cap);
}

int evidence_query_message(struct history *h,
			   const struct principal *principal,
			   const uint8_t *buf, size_t len,
			   struct evidence_answer *out, char *msg,
			   size_t msg_cap)
{
	memset(out, 0, sizeof(*out));
	Consent__V1__HistoryRequest *m =
		consent__v1__history_request__unpack(NULL, len, buf);
	if (m == NULL) {
		snprintf(msg, msg_cap, "HistoryRequest does not decode");
		return 400;
	}
	struct evidence_query q = {
		.recipient = m->recipient,
		.recipient_len = m->recipient ? strlen(m->recipient) : 0,
		.brand_code = m->brand_code,
		.channel = (int)m->channel,
		.rtype = (int)m->recipient_type,
	};
	int code = evidence_query(h, principal, &q, out, msg, msg_cap);
	consent__v1__history_request__free_unpacked(m, NULL);
	return code;
}

int evidence_encode(struct obuf *b, const struct evidence_answer *a,
		    uint64_t applied_sequence)
{
	Consent__V1__HistoryResponse resp = CONSENT__V1__HISTORY_RESPONSE__INIT;
	Consent__V1__HistoryEntry *ents = NULL, **ptrs = NULL;
	int rc = 0;

	if (a->n > 0) {
		ents = calloc(a->n, sizeof(*ents));
		ptrs = calloc(a->n, sizeof(*ptrs));
		if (ents == NULL || ptrs == NULL) {
			rc = -ENOMEM;
			goto out;
		}
	}
	for (size_t i = 0; i < a->n; i++) {
		struct history_entry *e = &a->entries[i];
		consent__v1__history_entry__init(&ents[i]);
		ents[i].consent = &e->consent;
		ents[i].applied_at = e->applied_at;
		ents[i].chain_hash.data = e->chain;
		ents[i].chain_hash.len = HISTORY_HASH_BYTES;
		ptrs[i] = &ents[i];
	}
	resp.n_entries = a->n;
	resp.entries = ptrs;
	resp.applied_sequence = applied_sequence;
	size_t need = consent__v1__history_response__get_packed_size(&resp);
	if (need == 0)
		goto out; /* no entries at sequence 0: no bytes at all */
	uint8_t *p = (uint8_t *)obuf_reserve(b, need);
	if (p == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	b->len += consent__v1__history_response__pack(&resp, p);
out:
	free(ents);
	free(ptrs);
	return rc;
}
