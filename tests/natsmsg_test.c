/*
 * natsmsg_test: core/natsmsg.h, the change-stream message: subjects,
 * message ids, the payload round trip (sequences packed as 0), and the
 * decoder's refusals, each naming what was wrong.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/natsmsg.h"
#include "proto/consent.pb-c.h"
#include "tests/check.h"

static Consent__V1__Consent mk(uint32_t brand, const char *rcpt,
			       uint64_t seq)
{
	Consent__V1__Consent c = CONSENT__V1__CONSENT__INIT;
	c.recipient = (char *)rcpt;
	c.brand_code = brand;
	c.channel = CONSENT__V1__CHANNEL__MESAJ;
	c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	c.status = CONSENT__V1__STATUS__RET;
	c.source = CONSENT__V1__SOURCE__HS_WEB;
	c.consent_date = 1700000000;
	c.sequence = seq;
	return c;
}

static void test_round_trip(void)
{
	Consent__V1__Consent c[2] = { mk(600123, "+905321234567", 41),
				      mk(600123, "a@b.example", 42) };
	Consent__V1__Consent *p[2] = { &c[0], &c[1] };
	Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
	struct natsmsg_out out;
	char err[200];

	a.changes = p;
	a.n_changes = 2;
	a.origin = "iys:600123";
	a.after_cursor = "7";
	a.cursor = "9";
	CHECK(natsmsg_encode(&a, &out, err, sizeof(err)) == 0);
	CHECK_STREQ(out.subject, "consent.changes.600123");
	CHECK_STREQ(out.msg_id, "iys:600123:9");
	CHECK(c[0].sequence == 41); /* the caller's structs stay */

	Consent__V1__ApplyRequest *d = NULL;
	CHECK(natsmsg_decode(out.subject, out.data, out.len, "iys:600123",
			     "7", "9", &d, err, sizeof(err)) == 0);
	if (d != NULL) {
		CHECK(d->n_changes == 2);
		CHECK_STREQ(d->origin, "iys:600123");
		CHECK_STREQ(d->after_cursor, "7");
		CHECK_STREQ(d->cursor, "9");
		CHECK_STREQ(d->changes[1]->recipient, "a@b.example");
		CHECK(d->changes[0]->sequence == 0 &&
		      d->changes[1]->brand_code == 600123);
		consent__v1__apply_request__free_unpacked(d, NULL);
	}
	natsmsg_out_fini(&out);

	/* Two brands: .mixed; no change: .heartbeat, no id; "local": no id
	 * (its cursor is the position the stream gives it). */
	c[1].brand_code = 600124;
	CHECK(natsmsg_encode(&a, &out, err, sizeof(err)) == 0);
	CHECK_STREQ(out.subject, "consent.changes.mixed");
	natsmsg_out_fini(&out);
	a.n_changes = 0;
	a.origin = "";
	a.after_cursor = "";
	a.cursor = "";
	CHECK(natsmsg_encode(&a, &out, err, sizeof(err)) == 0);
	CHECK_STREQ(out.subject, "consent.changes.heartbeat");
	CHECK_STREQ(out.msg_id, "");
	CHECK(natsmsg_decode(out.subject, out.data, out.len, NULL, NULL, NULL,
			     &d, err, sizeof(err)) == 0);
	CHECK(d != NULL && d->n_changes == 0 && d->origin[0] == '\0');
	consent__v1__apply_request__free_unpacked(d, NULL);
	natsmsg_out_fini(&out);
	a.origin = "local";
	a.n_changes = 1;
	CHECK(natsmsg_encode(&a, &out, err, sizeof(err)) == 0);
	CHECK_STREQ(out.msg_id, "");
	CHECK(natsmsg_decode(out.subject, out.data, out.len, "local", NULL,
			     NULL, &d, err, sizeof(err)) == 0);
	consent__v1__apply_request__free_unpacked(d, NULL);
	natsmsg_out_fini(&out);
	/* A header cannot carry a line break. */
	a.origin = "a\r\nb";
	CHECK(natsmsg_encode(&a, &out, err, sizeof(err)) == -EINVAL);
}

static void test_refusals(void)
{
	Consent__V1__ApplyRequest *d = (void *)1;
	char err[200];
	static const uint8_t junk[] = { 0x0a, 0x05, 0x01 }; /* runs past */

	CHECK(natsmsg_decode("other.subject", NULL, 0, NULL, NULL, NULL, &d,
			     err, sizeof(err)) == -EPROTO);
	CHECK(d == NULL && strstr(err, "not under consent.changes.>"));
	CHECK(natsmsg_decode("consent.changes.", NULL, 0, NULL, NULL, NULL, &d,
			     err, sizeof(err)) == -EPROTO);
	CHECK(natsmsg_decode("consent.changes.1", NULL, 0, NULL, NULL, "3", &d,
			     err, sizeof(err)) == -EPROTO);
	CHECK(strstr(err, "Consent-Cursor without Consent-Origin") != NULL);
	CHECK(natsmsg_decode("consent.changes.1", NULL, 0, NULL, "2", NULL, &d,
			     err, sizeof(err)) == -EPROTO);
	CHECK(natsmsg_decode("consent.changes.1", NULL, 0, "o", "2", NULL, &d,
			     err, sizeof(err)) == -EPROTO);
	CHECK(strstr(err, "Consent-Origin without Consent-Cursor") != NULL);
	CHECK(natsmsg_decode("consent.changes.1", junk, sizeof(junk), "o",
			     NULL, "1", &d, err, sizeof(err)) == -EPROTO);
	CHECK(d == NULL && strstr(err, "not a ConsentBatch") != NULL);
}

int main(void)
{
	RUN(test_round_trip);
	RUN(test_refusals);
	return check_summary();
}
