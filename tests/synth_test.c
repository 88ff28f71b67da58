/*
 * synth_test: the synthetic dataset (core/synth.c): determinism (pinned
 * digests, so a change to the dataset is a deliberate one), unique keys
 * after normalisation, absent keys really absent, plausible shares, and
 * every record valid by consent_validate.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/synth.h"
#include "tests/check.h"

#define PINNED_D1 0x1eaca23f5046eaacull
#define PINNED_D2 0x7bbeddd9c30e5726ull

struct key {
	uint32_t brand;
	uint8_t channel;
	uint8_t rtype;
	uint8_t kind;
	uint64_t phone;
	char email[RECIPIENT_EMAIL_MAX + 1];
};

static int key_cmp(const void *a, const void *b)
{
	const struct key *x = a, *y = b;
	if (x->brand != y->brand)
		return x->brand < y->brand ? -1 : 1;
	if (x->channel != y->channel)
		return x->channel < y->channel ? -1 : 1;
	if (x->rtype != y->rtype)
		return x->rtype < y->rtype ? -1 : 1;
	if (x->kind != y->kind)
		return x->kind < y->kind ? -1 : 1;
	if (x->phone != y->phone)
		return x->phone < y->phone ? -1 : 1;
	return strcmp(x->email, y->email);
}

static void to_consent(const struct synth_record *s, Consent__V1__Consent *c)
{
	consent__v1__consent__init(c);
	c->recipient = (char *)s->recipient;
	c->channel = (Consent__V1__Channel)s->channel;
	c->recipient_type = (Consent__V1__RecipientType)s->rtype;
	c->brand_code = s->brand_code;
	c->iys_code = s->iys_code;
	c->status = (Consent__V1__Status)s->status;
	c->source = (Consent__V1__Source)s->source;
	c->consent_date = s->consent_date;
	c->creation_date = s->creation_date;
}

/* The normalised key of s; fails the test if s is not a valid record. */
static void key_of(const struct synth_record *s, struct key *k)
{
	Consent__V1__Consent c;
	struct recipient r;
	const char *field = NULL, *why = NULL;

	to_consent(s, &c);
	int rc = consent_validate(&c, &r, &field, &why);
	CHECKF(rc == 0, "%s: %s: %s", s->recipient, field ? field : "",
	       why ? why : "");
	memset(k, 0, sizeof(*k));
	k->brand = s->brand_code;
	k->channel = s->channel;
	k->rtype = s->rtype;
	k->kind = (uint8_t)r.kind;
	if (r.kind == RECIPIENT_PHONE)
		k->phone = r.phone;
	else
		memcpy(k->email, r.email, r.email_len + 1u);
	/* The generator writes canonical text already. */
	char buf[RECIPIENT_TEXT_MAX];
	CHECK(recipient_format(&r, buf, sizeof(buf)) > 0);
	CHECK_STREQ(buf, s->recipient);
}

static uint64_t digest(uint64_t seed, uint64_t n, uint64_t first, uint64_t count)
{
	XXH3_state_t *st = XXH3_createState();
	XXH3_64bits_reset(st);
	for (uint64_t i = first; i < first + count; i++) {
		struct synth_record s;
		synth_record(seed, n, i, &s);
		uint64_t v[8] = { s.brand_code, s.iys_code, s.channel, s.rtype,
				  s.status, s.source, (uint64_t)s.consent_date,
				  (uint64_t)s.creation_date };
		XXH3_64bits_update(st, v, sizeof(v));
		XXH3_64bits_update(st, s.recipient, strlen(s.recipient));
	}
	uint64_t d = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return d;
}

static void test_determinism(void)
{
	struct synth_record a, b;

	for (uint64_t i = 0; i < 1000; i++) {
		synth_record(42, 100000, i * 97, &a);
		synth_record(42, 100000, i * 97, &b);
		CHECK(memcmp(&a, &b, sizeof(a)) == 0);
	}
	/* Pinned: the dataset is the same on every machine and build. A
	 * deliberate change to the generator updates these values. */
	synth_record(1, 1000000, 0, &a);
	printf("record 0 of (1, 1e6): %s %u %u %u %u %u %u %lld %lld\n",
	       a.recipient, a.brand_code, a.iys_code, a.channel, a.rtype,
	       a.status, a.source, (long long)a.consent_date,
	       (long long)a.creation_date);
	uint64_t d1 = digest(1, 1000000, 0, 2000);
	uint64_t d2 = digest(7, 123457, 1000, 2000);
	printf("digests %016llx %016llx\n", (unsigned long long)d1,
	       (unsigned long long)d2);
	CHECK(d1 == PINNED_D1);
	CHECK(d2 == PINNED_D2);
	/* Another seed, another dataset. */
	CHECK(digest(2, 1000000, 0, 2000) != d1);
}

static void test_unique_and_absent(void)
{
	const uint64_t n = 200000;
	const uint64_t seed = 9;
	struct key *keys = malloc(n * sizeof(*keys));
	uint64_t phones = 0, mobiles = 0, emails = 0, ret = 0, tacir = 0;
	uint64_t hs2015 = 0, top_brand = 0, arama = 0, mesaj = 0;
	int bad_dates = 0;

	for (uint64_t i = 0; i < n; i++) {
		struct synth_record s;
		synth_record(seed, n, i, &s);
		key_of(&s, &keys[i]);
		if (s.channel == CHANNEL_EPOSTA) {
			emails++;
		} else {
			phones++;
			mobiles += strncmp(s.recipient, "+905", 4) == 0;
			arama += s.channel == CHANNEL_ARAMA;
			mesaj += s.channel == CHANNEL_MESAJ;
		}
		ret += s.status == STATUS_RET;
		tacir += s.rtype == RTYPE_TACIR;
		top_brand += s.brand_code == synth_brand_code(0);
		if (s.source == SOURCE_HS_2015) {
			hs2015++;
			CHECK(s.consent_date == CONSENT_DATE_MIN);
			CHECK(s.status == STATUS_ONAY);
		}
		bad_dates += s.consent_date < CONSENT_DATE_MIN || s.consent_date > SYNTH_NOW ||
			     s.creation_date < s.consent_date ||
			     s.creation_date > SYNTH_NOW;
		bad_dates += s.brand_code < 100000 || s.brand_code > 9999999 ||
			     s.iys_code < 100000 || s.iys_code > 999999;
		bad_dates += !enums_source_valid(s.source) ||
			     s.source == SOURCE_OTHER;
	}
	CHECK(bad_dates == 0);
	qsort(keys, n, sizeof(*keys), key_cmp);
	uint64_t dups = 0;
	for (uint64_t i = 1; i < n; i++)
		dups += key_cmp(&keys[i - 1], &keys[i]) == 0;
	CHECKF(dups == 0, "%llu duplicate keys", (unsigned long long)dups);

	/* Shares. */
	double f = (double)n;
	fprintf(stderr, "phones %.3f (mobile %.3f) e-mails %.3f RET %.3f "
		"TACIR %.3f HS_2015 %.3f top brand %.3f\n",
		phones / f, mobiles / (double)phones, emails / f, ret / f,
		tacir / f, hs2015 / f, top_brand / f);
	CHECK(phones / f > 0.78 && phones / f < 0.82);
	CHECK(emails / f > 0.18 && emails / f < 0.22);
	CHECK(mobiles > phones / 2);
	CHECK(mobiles < phones); /* some landlines */
	CHECK(arama > phones / 4 && mesaj > phones / 2);
	CHECK(ret / f > 0.14 && ret / f < 0.19);
	CHECK(tacir / f > 0.08 && tacir / f < 0.2);
	CHECK(hs2015 / f > 0.015 && hs2015 / f < 0.025);
	CHECK(top_brand / f > 0.10 && top_brand / f < 0.17);

	/* Absent keys: same validity, never in the dataset. */
	uint64_t found = 0, absent_emails = 0;
	for (uint64_t j = 0; j < 50000; j++) {
		struct synth_record s;
		struct key k;
		synth_absent(seed, n, j, &s);
		key_of(&s, &k);
		absent_emails += s.channel == CHANNEL_EPOSTA;
		found += bsearch(&k, keys, n, sizeof(*keys), key_cmp) != NULL;
		/* Not even with the other recipient type. */
		k.rtype = k.rtype == RTYPE_TACIR ? RTYPE_BIREYSEL : RTYPE_TACIR;
		found += bsearch(&k, keys, n, sizeof(*keys), key_cmp) != NULL;
	}
	CHECK(found == 0);
	CHECK(absent_emails > 8000 && absent_emails < 12000);
	/* The check above can fail: the same keys are present for a key of
	 * the dataset. */
	struct synth_record s;
	struct key k;
	synth_record(seed, n, 12345, &s);
	key_of(&s, &k);
	CHECK(bsearch(&k, keys, n, sizeof(*keys), key_cmp) != NULL);
	free(keys);
}

static void test_small_datasets(void)
{
	for (uint64_t n = 1; n <= 64; n++) {
		struct key keys[64];
		for (uint64_t i = 0; i < n; i++) {
			struct synth_record s;
			synth_record(3, n, i, &s);
			key_of(&s, &keys[i]);
		}
		qsort(keys, n, sizeof(keys[0]), key_cmp);
		for (uint64_t i = 1; i < n; i++)
			CHECK(key_cmp(&keys[i - 1], &keys[i]) != 0);
	}
}

static void test_brands(void)
{
	/* Codes are distinct and 6-7 digits. */
	static uint32_t codes[SYNTH_BRANDS];
	for (unsigned b = 0; b < SYNTH_BRANDS; b++) {
		codes[b] = synth_brand_code(b);
		CHECK(codes[b] >= 100000 && codes[b] <= 9999999);
		for (unsigned c = 0; c < b; c++)
			CHECK(codes[c] != codes[b]);
	}
	/* synth_brand draws with the same skew. */
	uint64_t top = 0, second = 0, known = 0;
	const uint64_t draws = 100000;
	for (uint64_t j = 0; j < draws; j++) {
		uint32_t b = synth_brand(5, j);
		top += b == codes[0];
		second += b == codes[1];
		for (unsigned c = 0; c < 16; c++)
			if (b == codes[c]) {
				known++;
				break;
			}
	}
	CHECK(top > draws / 10 && top < draws / 6);
	CHECK(second > top / 3 && second < top * 2 / 3);
	CHECK(known > draws / 3 && known < draws * 3 / 4);
	CHECK(synth_brand(5, 77) == synth_brand(5, 77));
}

int main(void)
{
	RUN(test_determinism);
	RUN(test_unique_and_absent);
	RUN(test_small_datasets);
	RUN(test_brands);
	return check_summary();
}
