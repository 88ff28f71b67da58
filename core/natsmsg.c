/*
 * natsmsg: a change-stream message on JetStream (core/natsmsg.h).
 */
#include "core/natsmsg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/decimal.h"
#include "core/errmsg.h"

static bool natsmsg_present(const char *s)
{
	return s != NULL && s[0] != '\0';
}

/* A header value NATS carries as it is: bounded, no line breaks or NUL. */
static bool natsmsg_value_ok(const char *s)
{
	size_t n = strlen(s);
	return n <= NATSMSG_VALUE_MAX && strpbrk(s, "\r\n") == NULL;
}

int natsmsg_encode(const Consent__V1__ApplyRequest *a, struct natsmsg_out *out,
		   char *err, size_t err_cap)
{
	Consent__V1__ConsentBatch b = CONSENT__V1__CONSENT_BATCH__INIT;
	const char *origin = a->origin, *cursor = a->cursor;

	memset(out, 0, sizeof(*out));
	if ((natsmsg_present(origin) && !natsmsg_value_ok(origin)) ||
	    (natsmsg_present(cursor) && !natsmsg_value_ok(cursor)) ||
	    (natsmsg_present(a->after_cursor) &&
	     !natsmsg_value_ok(a->after_cursor)))
		return errmsg_fail(err, err_cap, -EINVAL, "an origin or cursor "
				   "over %d bytes or with a line break",
				   NATSMSG_VALUE_MAX);
	/* The subject: one brand, several, or none. */
	uint32_t brand = a->n_changes ? a->changes[0]->brand_code : 0;
	bool one = a->n_changes > 0;
	for (size_t i = 1; i < a->n_changes && one; i++)
		one = a->changes[i]->brand_code == brand;
	if (a->n_changes == 0) {
		snprintf(out->subject, sizeof(out->subject), "%s",
			 NATSMSG_SUBJECT_HEARTBEAT);
	} else if (one) {
		char *p = out->subject + strlen(NATSMSG_SUBJECT_PREFIX);
		memcpy(out->subject, NATSMSG_SUBJECT_PREFIX,
		       strlen(NATSMSG_SUBJECT_PREFIX));
		*decimal_put_u64(p, brand) = '\0';
	} else {
		snprintf(out->subject, sizeof(out->subject), "%s",
			 NATSMSG_SUBJECT_MIXED);
	}
	if (natsmsg_present(origin) && natsmsg_present(cursor) &&
	    strcmp(origin, NATSMSG_ORIGIN_LOCAL) != 0)
		snprintf(out->msg_id, sizeof(out->msg_id), "%s:%s", origin,
			 cursor);

	/* Sequences go out as 0: the stream's sequence is every change's
	 * position (§9). The caller's structs are left as they were. */
	Consent__V1__Consent *copies = NULL;
	if (a->n_changes) {
		copies = malloc(a->n_changes * sizeof(*copies));
		b.consents = malloc(a->n_changes * sizeof(*b.consents));
		if (copies == NULL || b.consents == NULL)
			goto nomem;
		for (size_t i = 0; i < a->n_changes; i++) {
			copies[i] = *a->changes[i];
			copies[i].sequence = 0;
			b.consents[i] = &copies[i];
		}
		b.n_consents = a->n_changes;
	}
	out->len = consent__v1__consent_batch__get_packed_size(&b);
	out->data = malloc(out->len ? out->len : 1);
	if (out->data == NULL)
		goto nomem;
	consent__v1__consent_batch__pack(&b, out->data);
	free(b.consents);
	free(copies);
	return 0;
nomem:
	free(b.consents);
	free(copies);
	return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
}

void natsmsg_out_fini(struct natsmsg_out *out)
{
	free(out->data);
	out->data = NULL;
	out->len = 0;
}

/* A string field of the ApplyRequest: absent stays protobuf-c's empty
 * default (which free_unpacked leaves alone), present is a malloc'd copy. */
static int natsmsg_set(char **field, const char *v)
{
	if (!natsmsg_present(v))
		return 0;
	*field = strdup(v);
	return *field != NULL ? 0 : -ENOMEM;
}

int natsmsg_decode(const char *subject, const uint8_t *data, size_t len,
		   const char *origin, const char *after_cursor,
		   const char *cursor, Consent__V1__ApplyRequest **out,
		   char *err, size_t err_cap)
{
	size_t pl = strlen(NATSMSG_SUBJECT_PREFIX);

	*out = NULL;
	if (subject == NULL || strncmp(subject, NATSMSG_SUBJECT_PREFIX, pl) ||
	    subject[pl] == '\0')
		return errmsg_fail(err, err_cap, -EPROTO, "subject \"%.64s\" is "
				   "not under %s", subject ? subject : "",
				   NATSMSG_SUBJECTS);
	if (!natsmsg_present(origin) &&
	    (natsmsg_present(cursor) || natsmsg_present(after_cursor)))
		return errmsg_fail(err, err_cap, -EPROTO, "%s without %s",
				   natsmsg_present(cursor) ? NATSMSG_HDR_CURSOR :
				   NATSMSG_HDR_AFTER, NATSMSG_HDR_ORIGIN);
	if (natsmsg_present(origin) && !natsmsg_present(cursor) &&
	    strcmp(origin, NATSMSG_ORIGIN_LOCAL) != 0)
		return errmsg_fail(err, err_cap, -EPROTO, "%s without %s",
				   NATSMSG_HDR_ORIGIN, NATSMSG_HDR_CURSOR);
	Consent__V1__ConsentBatch *b =
		consent__v1__consent_batch__unpack(NULL, len, data);
	if (b == NULL)
		return errmsg_fail(err, err_cap, -EPROTO, "the payload (%zu "
				   "bytes) is not a ConsentBatch", len);
	Consent__V1__ApplyRequest *a = malloc(sizeof(*a));
	if (a == NULL) {
		consent__v1__consent_batch__free_unpacked(b, NULL);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	consent__v1__apply_request__init(a);
	/* The changes move from the batch to the request: both are
	 * protobuf-c's default allocator's. */
	a->changes = b->consents;
	a->n_changes = b->n_consents;
	b->consents = NULL;
	b->n_consents = 0;
	consent__v1__consent_batch__free_unpacked(b, NULL);
	if (natsmsg_set(&a->origin, origin) < 0 ||
	    natsmsg_set(&a->after_cursor, after_cursor) < 0 ||
	    natsmsg_set(&a->cursor, cursor) < 0) {
		consent__v1__apply_request__free_unpacked(a, NULL);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	*out = a;
	return 0;
}
