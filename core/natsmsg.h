/*
 * natsmsg: one change-stream message on NATS JetStream (DESIGN §9), the
 * one encoding both consentd (a replica's Apply, its fetch thread) and
 * consentctl publish use. A message is a serialized ConsentBatch (§3.5)
 * on consent.changes.<brand_code> when all its changes have one brand,
 * consent.changes.mixed when they have several, consent.changes.heartbeat
 * when it has none; headers Consent-Origin, Consent-After-Cursor and
 * Consent-Cursor carry §8's rule, Nats-Msg-Id = origin ":" cursor (the
 * stream's de-duplication key). No libnats here: the caller moves the
 * strings and bytes, so the decoder can be fuzzed alone.
 * Threads: pure functions. Errors: -errno with a message in err.
 */
#ifndef CONSENTD_CORE_NATSMSG_H
#define CONSENTD_CORE_NATSMSG_H

#include <stddef.h>
#include <stdint.h>

#include "proto/consent.pb-c.h"

#define NATSMSG_SUBJECT_PREFIX "consent.changes."
#define NATSMSG_SUBJECTS "consent.changes.>"
#define NATSMSG_SUBJECT_HEARTBEAT "consent.changes.heartbeat"
#define NATSMSG_SUBJECT_MIXED "consent.changes.mixed"
#define NATSMSG_HDR_ORIGIN "Consent-Origin"
#define NATSMSG_HDR_AFTER "Consent-After-Cursor"
#define NATSMSG_HDR_CURSOR "Consent-Cursor"
#define NATSMSG_HDR_MSG_ID "Nats-Msg-Id"
/* The origin whose cursor is the log position the stream assigns (local
 * rejections, DESIGN §11): published without cursor headers. */
#define NATSMSG_ORIGIN_LOCAL "local"
#define NATSMSG_SUBJECT_MAX 48 /* "consent.changes." + a u32 or a word */
#define NATSMSG_VALUE_MAX 256  /* a header value (ORIGINS_*_MAX) */

/* What to publish: its subject, its Nats-Msg-Id ("" when the caller must
 * make one: a heartbeat, or origin "local") and its payload (malloc'd). */
struct natsmsg_out {
	char subject[NATSMSG_SUBJECT_MAX];
	char msg_id[2 * NATSMSG_VALUE_MAX + 2];
	uint8_t *data;
	size_t len;
};

/* Encodes a's changes as the payload (each change's sequence is packed as
 * 0: the stream's sequence is their position) and picks the subject and
 * message id. a's strings NULL or "" mean absent. 0, -ENOMEM, or -EINVAL
 * for an origin or cursor over NATSMSG_VALUE_MAX or with a byte a NATS
 * header cannot carry (CR, LF, NUL). Free out with natsmsg_out_fini. */
int natsmsg_encode(const Consent__V1__ApplyRequest *a, struct natsmsg_out *out,
		   char *err, size_t err_cap);
void natsmsg_out_fini(struct natsmsg_out *out);

/* Decodes a message (its subject, payload, and header values: NULL when
 * absent) into an ApplyRequest the writer takes (protobuf-c's default
 * allocator: free with consent__v1__apply_request__free_unpacked). The
 * rules: the subject is under consent.changes.; the payload decodes as a
 * ConsentBatch; a cursor or after-cursor needs an origin; an origin other
 * than "local" needs a cursor. The cursor rule and the changes' validation
 * are the writer's. 0, -ENOMEM, or -EPROTO naming what was wrong. */
int natsmsg_decode(const char *subject, const uint8_t *data, size_t len,
		   const char *origin, const char *after_cursor,
		   const char *cursor, Consent__V1__ApplyRequest **out,
		   char *err, size_t err_cap);

#endif
