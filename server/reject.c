/*
 * reject: local rejections into the writer (server/reject.h).
 */
#include "server/reject.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "index/outbox.h"
#include "proto/consent.pb-c.h"
#include "server/writer.h"

#define REJECT_SOURCE_DEFAULT 8 /* HS_MESAJ */
#define REJECT_SOURCE_PROVIDER_MAX 13 /* HS_KARAR: the last HS_* */

static void reject_free(Consent__V1__ApplyRequest *a)
{
	if (a != NULL)
		consent__v1__apply_request__free_unpacked(a, NULL);
}

int reject_build(const struct reject_input *in, int64_t now,
		 Consent__V1__ApplyRequest **out, char *err, size_t err_cap)
{
	struct recipient r;
	char text[RECIPIENT_TEXT_MAX];
	const char *why = NULL;

	*out = NULL;
	if (recipient_normalize(in->recipient, in->recipient_len, &r, &why) < 0)
		return errmsg_fail(err, err_cap, -EINVAL, "recipient: %s",
				   why ? why : "does not normalise");
	int source = in->source ? in->source : REJECT_SOURCE_DEFAULT;
	/* İYS takes a provider's write only with a provider source, and
	 * HS_2015's date is 2015-05-01, never now (domain: H119, V155). */
	if (source < 1 || source > REJECT_SOURCE_PROVIDER_MAX ||
	    source == SOURCE_HS_2015)
		return errmsg_fail(err, err_cap, -EINVAL, "source: %s is not a "
				   "provider's source for a rejection taken now "
				   "(HS_MESAJ, HS_CAGRI_MERKEZI, ...; not "
				   "HS_2015 nor an IYS_ one)",
				   enums_source_valid(source) ?
					   enums_source_name(source) :
					   "an unknown value");
	int tl = recipient_format(&r, text, sizeof(text));
	if (tl < 0)
		return errmsg_fail(err, err_cap, -EINVAL, "recipient: too long");

	Consent__V1__ApplyRequest *a = malloc(sizeof(*a));
	Consent__V1__Consent *c = malloc(sizeof(*c));
	Consent__V1__Consent **changes = malloc(sizeof(*changes));
	if (a != NULL)
		consent__v1__apply_request__init(a);
	if (c != NULL)
		consent__v1__consent__init(c);
	if (a == NULL || c == NULL || changes == NULL) {
		free(a);
		free(c);
		free(changes);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	changes[0] = c;
	a->changes = changes;
	a->n_changes = 1;
	/* Every string malloc'd, as unpack leaves them: free_unpacked frees
	 * each. */
	a->origin = strdup(OUTBOX_ORIGIN_LOCAL);
	a->after_cursor = strdup("");
	a->cursor = strdup(OUTBOX_ORIGIN_LOCAL); /* the writer sets it */
	c->recipient = strdup(text);
	c->transaction_id = strdup("");
	if (a->origin == NULL || a->after_cursor == NULL || a->cursor == NULL ||
	    c->recipient == NULL || c->transaction_id == NULL) {
		reject_free(a);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	c->channel = (Consent__V1__Channel)in->channel;
	c->recipient_type = (Consent__V1__RecipientType)(
		in->recipient_type ? in->recipient_type : RTYPE_BIREYSEL);
	c->brand_code = in->brand_code;
	c->iys_code = 0;
	c->status = CONSENT__V1__STATUS__RET;
	c->source = (Consent__V1__Source)source;
	c->consent_date = now;
	c->creation_date = now;
	/* The checks' own validation (channel against the recipient, enum
	 * values, brand 0), so the message names the field as a check's. */
	const char *field = NULL;
	if (consent_validate(c, NULL, &field, &why) < 0) {
		errmsg_fail(err, err_cap, -EINVAL, "%s: %s", field, why);
		reject_free(a);
		return -EINVAL;
	}
	*out = a;
	return 0;
}

int reject_submit(struct writer *w, unsigned queue, uint64_t tag, uint64_t id,
		  const struct principal *principal,
		  const struct reject_input *in, struct writer_reply *now)
{
	Consent__V1__ApplyRequest *a = NULL;
	char err[sizeof(now->message)];
	int rc = reject_build(in, (int64_t)time(NULL), &a, err, sizeof(err));

	if (rc == -EINVAL) {
		memset(now, 0, sizeof(*now));
		now->tag = tag;
		now->id = id;
		now->code = 400;
		snprintf(now->message, sizeof(now->message), "%s", err);
		return 0;
	}
	if (rc < 0)
		return rc;
	return writer_submit(w, queue, tag, id, principal, a, now);
}

int reject_submit_message(struct writer *w, unsigned queue, uint64_t tag,
			  uint64_t id, const struct principal *principal,
			  const uint8_t *msg, size_t msg_len,
			  struct writer_reply *now)
{
	Consent__V1__RejectRequest *rr =
		consent__v1__reject_request__unpack(NULL, msg_len, msg);
	if (rr == NULL)
		return -ENOMEM; /* the caller validated its wire shape */
	struct reject_input in = {
		.recipient = rr->recipient ? rr->recipient : "",
		.recipient_len = rr->recipient ? strlen(rr->recipient) : 0,
		.brand_code = rr->brand_code,
		.channel = (int)rr->channel,
		.recipient_type = (int)rr->recipient_type,
		.source = (int)rr->source,
	};
	int rc = reject_submit(w, queue, tag, id, principal, &in, now);
	consent__v1__reject_request__free_unpacked(rr, NULL);
	return rc;
}
