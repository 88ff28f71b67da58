/*
 * reject: a local rejection (DESIGN §11), the one place every port turns
 * one into a write. A recipient's "RET" taken at the gateway becomes an
 * ApplyRequest of one RET change, origin "local" (the writer applies it
 * unconditionally and queues it in the outbox for İYS), and enters
 * writer_submit like any Apply, so the brand-scope check, the change
 * log's group commit and the reply after the index holds it are the
 * same for RPC, RESP, HTTP and gRPC.
 *
 * The change: recipient normalised as for checks (core/recipient), the
 * channel, recipient_type (unset: BIREYSEL), source (unset: HS_MESAJ;
 * only provider sources HS_*, never an İYS one, and not HS_2015, whose
 * date is fixed in the past), status RET, consent_date and creation_date
 * now (Unix s UTC), iys_code 0 and transaction_id "" (İYS gives the
 * transaction id when the connector pushes it, recorded in the outbox;
 * the connector knows its own iysCode).
 *
 * Who may: the protocol asks principal_may_reject first (403 without the
 * 'reject' right, like Apply without 'apply'); writer_submit then bounds
 * the brand by the principal's list (403) before anything else.
 * Pure but for the clock; any thread. Errors: -errno; a bad input is a
 * 400 reply with the field named.
 */
#ifndef CONSENTD_SERVER_REJECT_H
#define CONSENTD_SERVER_REJECT_H

#include <stddef.h>
#include <stdint.h>

struct principal;
struct writer;
struct writer_reply;
typedef struct Consent__V1__ApplyRequest Consent__V1__ApplyRequest;

struct reject_input {
	const char *recipient;  /* not NUL-terminated: recipient_len bytes */
	size_t recipient_len;
	uint32_t brand_code;
	int channel;            /* enum channel; 0 is refused */
	int recipient_type;     /* enum rtype; 0: BIREYSEL */
	int source;             /* wire value; 0: HS_MESAJ */
};

/* Builds the ApplyRequest of in, dated now (malloc'd as protobuf-c's
 * unpack would, so consent__v1__apply_request__free_unpacked(a, NULL)
 * frees it). 0; -EINVAL with "FIELD: what" in err; -ENOMEM. */
int reject_build(const struct reject_input *in, int64_t now,
		 Consent__V1__ApplyRequest **out, char *err, size_t err_cap);

/* reject_build, then writer_submit (server/writer.h: the same queue, tag,
 * id and principal, and the same results). A bad input is 0 with *now
 * holding a 400 that names the field. */
int reject_submit(struct writer *w, unsigned queue, uint64_t tag, uint64_t id,
		  const struct principal *principal,
		  const struct reject_input *in, struct writer_reply *now);

/* reject_submit of a serialized RejectRequest (msg_len bytes) whose wire
 * shape the protocol validated already (the RPC's and gRPC's decoder):
 * the same results; -ENOMEM also when protobuf-c cannot unpack it. */
int reject_submit_message(struct writer *w, unsigned queue, uint64_t tag,
			  uint64_t id, const struct principal *principal,
			  const uint8_t *msg, size_t msg_len,
			  struct writer_reply *now);

#endif
