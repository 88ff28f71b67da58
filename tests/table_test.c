/*
 * table_test: index/table.c against a plain reference model, under
 * concurrent readers, through its file format and against corrupt files.
 * CONSENTD_TEST_SCALE (default 1) scales the operation counts.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/enums.h"
#include "index/table.h"
#include "tests/check.h"

static double scale = 1.0;
static char tmpdir[] = "/tmp/table_test.XXXXXX";

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t scaled(uint64_t n)
{
	uint64_t v = (uint64_t)((double)n * scale);
	return v ? v : 1;
}

/* ---- a logical key and the reference model ---- */

struct lkey {
	struct recipient r;
	uint32_t brand;
	int rtype;
	int channel;
};

struct ref {
	bool present;
	struct consent_value v;
};

static const uint32_t brands[] = { 1, 7, 123456, 99999999, 1u << 27,
				   (1u << 27) - 1, 0xffffffffu, 0x80004001u };
#define N_BRANDS (sizeof(brands) / sizeof(brands[0]))

/* Distinct by construction: i picks (recipient, brand, rtype, channel). */
static void lkey_make(uint64_t i, struct lkey *k)
{
	memset(k, 0, sizeof(*k));
	uint64_t var = i % 32, who = i / 32;
	k->brand = brands[var % N_BRANDS];
	k->rtype = (var / N_BRANDS) % 2 ? RTYPE_TACIR : RTYPE_BIREYSEL;
	bool email = (who % 5) == 4;
	if (email) {
		k->r.kind = RECIPIENT_EMAIL;
		int n = snprintf(k->r.email, sizeof(k->r.email),
				 "user.%llu@example%llu.com.tr",
				 (unsigned long long)who,
				 (unsigned long long)(who % 7));
		k->r.email_len = (uint16_t)n;
		k->channel = CHANNEL_EPOSTA;
		/* variants 16..31 repeat 0..15 for e-mails (one channel):
		 * use a different address instead. */
		if (var >= 16)
			k->r.email[0] = 'U';
	} else {
		k->r.kind = RECIPIENT_PHONE;
		/* Turkish mobiles and long foreign numbers (15 digits). */
		k->r.phone = (who % 3 == 0) ? 999999999999999ULL - who
					    : 905000000000ULL + who * 7919;
		k->channel = var >= 16 ? CHANNEL_MESAJ : CHANNEL_ARAMA;
	}
}

static const uint8_t sources[] = { 0, 1, 6, 12, 13, 32, 35, 40, 63, 20, 50, 255 };

static uint8_t norm_source(uint8_t s)
{
	if (s <= 13 || (s >= 32 && s <= 40) || s == 63)
		return s;
	return SOURCE_OTHER;
}

/* The documented dense code, for the same-date same-status tiebreak. */
static int ref_code(uint8_t s)
{
	if (s == 0)
		return 24;
	if (s <= 13)
		return s;
	if (s >= 32 && s <= 40)
		return s - 18;
	return 23;
}

/* DESIGN §2's order rule, written out plainly. */
static bool ref_newer(const struct consent_value *n, const struct consent_value *o)
{
	if (n->consent_date != o->consent_date)
		return n->consent_date > o->consent_date;
	if (n->status != o->status)
		return n->status == STATUS_RET;
	return ref_code(n->source) > ref_code(o->source);
}

static void random_value(struct consent_value *v)
{
	/* A few dates only, so equal dates with both statuses are common. */
	static const int64_t extra[] = { 0, (1LL << 31) - 1, 86400 * 3650 };
	uint64_t x = rnd();
	if (x % 50 == 0)
		v->consent_date = INDEX_EPOCH + extra[(x >> 8) % 3];
	else
		v->consent_date = INDEX_EPOCH + 1000000 + (int64_t)((x >> 8) % 6) * 3600;
	v->status = (x >> 16) & 1 ? STATUS_RET : STATUS_ONAY;
	v->source = sources[(x >> 20) % sizeof(sources)];
}

static bool value_eq(const struct consent_value *a, const struct consent_value *b)
{
	return a->status == b->status && a->source == b->source &&
	       a->consent_date == b->consent_date;
}

/* ---- tests ---- */

static void test_reference_model(void)
{
	uint64_t pool = scaled(150000);
	uint64_t ops = scaled(1200000);
	struct index *ix;
	CHECK(index_create(pool, NULL, &ix) == 0);
	struct ref *ref = calloc(pool, sizeof(*ref));
	struct lkey *lk = malloc(sizeof(*lk));
	uint64_t present = 0, mismatches = 0, inserted = 0, updated = 0,
		 skipped = 0, equal_date_ret = 0;

	for (uint64_t op = 0; op < ops; op++) {
		uint64_t i = rnd() % pool;
		lkey_make(i, lk);
		struct index_key key;
		index_key_make(ix, &lk->r, lk->brand, lk->rtype, lk->channel, &key);
		if (rnd() % 4 == 0) {
			struct consent_value got;
			bool f = index_lookup(ix, &key, &got);
			if (f != ref[i].present ||
			    (f && !value_eq(&got, &ref[i].v)))
				mismatches++;
			continue;
		}
		struct consent_value v;
		random_value(&v);
		int want;
		if (!ref[i].present)
			want = INDEX_INSERTED;
		else if (ref_newer(&v, &ref[i].v))
			want = INDEX_UPDATED;
		else
			want = INDEX_SKIPPED;
		if (ref[i].present && v.consent_date == ref[i].v.consent_date &&
		    v.status == STATUS_RET && ref[i].v.status == STATUS_ONAY)
			equal_date_ret++;
		int rc = index_apply_writer(ix, &key, &v);
		CHECKF(rc == want, "op %llu key %llu: apply %d, want %d",
		       (unsigned long long)op, (unsigned long long)i, rc, want);
		if (rc != want)
			break;
		if (want != INDEX_SKIPPED) {
			present += !ref[i].present;
			ref[i].present = true;
			ref[i].v = v;
			ref[i].v.source = norm_source(v.source);
		}
		inserted += rc == INDEX_INSERTED;
		updated += rc == INDEX_UPDATED;
		skipped += rc == INDEX_SKIPPED;
	}
	CHECKF(mismatches == 0, "%llu lookups disagreed",
	       (unsigned long long)mismatches);
	CHECK(updated > 0 && skipped > 0 && equal_date_ret > 0);

	/* Every key, present or not, once more, singly and in batches. */
	struct index_info info;
	index_info(ix, &info);
	CHECK(info.n_records == present);
	uint64_t bad = 0;
	enum { B = 77 };
	struct index_key keys[B];
	struct consent_value vals[B];
	bool found[B];
	for (uint64_t base = 0; base < pool; base += B) {
		size_t n = pool - base < B ? pool - base : B;
		for (size_t j = 0; j < n; j++) {
			lkey_make(base + j, lk);
			index_key_make(ix, &lk->r, lk->brand, lk->rtype,
				       lk->channel, &keys[j]);
		}
		index_lookup_batch(ix, keys, n, vals, found);
		for (size_t j = 0; j < n; j++) {
			struct consent_value one;
			bool f1 = index_lookup(ix, &keys[j], &one);
			const struct ref *r = &ref[base + j];
			if (f1 != r->present || found[j] != r->present ||
			    (f1 && (!value_eq(&one, &r->v) ||
				    !value_eq(&vals[j], &r->v))))
				bad++;
		}
	}
	CHECKF(bad == 0, "%llu keys wrong in the final sweep",
	       (unsigned long long)bad);
	fprintf(stderr, "  %llu ops: %llu inserted, %llu updated, %llu skipped; "
		"load %.3f, %.1f bytes/record\n", (unsigned long long)ops,
		(unsigned long long)inserted, (unsigned long long)updated,
		(unsigned long long)skipped,
		(double)info.n_records / (double)(info.n_buckets * 4),
		(double)info.bytes / (double)info.n_records);
	free(lk);
	free(ref);
	index_destroy(ix);
}

/* foreach gives phones back whole and counts e-mails. */
struct visit {
	struct index *ix;
	uint64_t phones, emails, bad;
};

static int visit_entry(const struct index_entry *e, void *arg)
{
	struct visit *vs = arg;
	if (e->is_email) {
		vs->emails++;
		if (e->channel != CHANNEL_EPOSTA)
			vs->bad++;
		return 0;
	}
	vs->phones++;
	struct recipient r = { .kind = RECIPIENT_PHONE, .phone = e->phone };
	struct index_key key;
	struct consent_value v;
	index_key_make(vs->ix, &r, e->brand_code, e->rtype, e->channel, &key);
	if (!index_lookup(vs->ix, &key, &v) || !value_eq(&v, &e->value))
		vs->bad++;
	return 0;
}

static void fill(struct index *ix, uint64_t n, uint64_t salt)
{
	struct lkey lk;
	for (uint64_t i = 0; i < n; i++) {
		lkey_make(i, &lk);
		struct index_key key;
		struct consent_value v = {
			.status = (i + salt) % 3 ? STATUS_ONAY : STATUS_RET,
			.source = sources[(i + salt) % sizeof(sources)],
			.consent_date = INDEX_EPOCH + (int64_t)((i * 7 + salt) % 100000000),
		};
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
	}
}

static uint64_t count_matching(struct index *ix, uint64_t n, uint64_t salt)
{
	struct lkey lk;
	uint64_t ok = 0;
	for (uint64_t i = 0; i < n; i++) {
		lkey_make(i, &lk);
		struct index_key key;
		struct consent_value v, want = {
			.status = (i + salt) % 3 ? STATUS_ONAY : STATUS_RET,
			.source = norm_source(sources[(i + salt) % sizeof(sources)]),
			.consent_date = INDEX_EPOCH + (int64_t)((i * 7 + salt) % 100000000),
		};
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		ok += index_lookup(ix, &key, &v) && value_eq(&v, &want);
	}
	return ok;
}

static void test_foreach(void)
{
	uint64_t n = scaled(20000);
	struct index *ix;
	CHECK(index_create(n, NULL, &ix) == 0);
	fill(ix, n, 0);
	struct visit vs = { .ix = ix };
	CHECK(index_foreach(ix, visit_entry, &vs) == 0);
	CHECK(vs.phones + vs.emails == n);
	CHECK(vs.emails > 0 && vs.phones > 0);
	CHECK(vs.bad == 0);
	index_destroy(ix);
}

static void test_limits(void)
{
	struct index *ix;
	CHECK(index_create(1000, NULL, &ix) == 0);
	struct index_info info;
	index_info(ix, &info);
	CHECK(info.capacity >= 1000);
	CHECK(info.capacity <= info.n_buckets * 4 * 92 / 100);
	CHECK(info.huge_pages);
	struct lkey lk;
	uint64_t i = 0;
	int rc = 0;
	for (; i < 10000; i++) {
		lkey_make(i, &lk);
		struct index_key key;
		struct consent_value v = { STATUS_ONAY, 6, INDEX_EPOCH + 5 };
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		rc = index_apply_writer(ix, &key, &v);
		if (rc != INDEX_INSERTED)
			break;
	}
	CHECK(rc == -ENOSPC);
	CHECK(i == info.capacity);
	index_info(ix, &info);
	CHECK(info.n_records == info.capacity);
	/* Full, but updates still go in and every key is still there. */
	lkey_make(3, &lk);
	struct index_key key;
	index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
	struct consent_value ret = { STATUS_RET, 40, INDEX_EPOCH + 6 }, got;
	CHECK(index_apply_writer(ix, &key, &ret) == INDEX_UPDATED);
	CHECK(index_lookup(ix, &key, &got) && value_eq(&got, &ret));
	uint64_t found = 0;
	for (uint64_t j = 0; j < i; j++) {
		lkey_make(j, &lk);
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		found += index_lookup(ix, &key, &got);
	}
	CHECK(found == i);
	/* Misses in a full table still end. */
	lkey_make(i + 5, &lk);
	index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
	CHECK(!index_lookup(ix, &key, &got));

	/* index_value_fits at its edges: the date range, the statuses. */
	struct consent_value f = { STATUS_RET, 6, CONSENT_DATE_MIN };
	CHECK(index_value_fits(&f));
	f.consent_date = CONSENT_DATE_MAX;
	CHECK(index_value_fits(&f));
	f.consent_date = CONSENT_DATE_MAX + 1;
	CHECK(!index_value_fits(&f));
	f.consent_date = CONSENT_DATE_MIN - 1;
	CHECK(!index_value_fits(&f));
	f.consent_date = CONSENT_DATE_MIN;
	f.status = STATUS_NONE;
	CHECK(!index_value_fits(&f));

	/* Values the entry cannot hold, keys nobody should make. */
	struct consent_value v = { STATUS_ONAY, 6, INDEX_EPOCH - 1 };
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	v.consent_date = INDEX_EPOCH + (1LL << 31);
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	v.consent_date = INDEX_EPOCH;
	v.status = STATUS_NONE;
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	v.status = 3;
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	index_destroy(ix);

	CHECK(index_create(10, NULL, &ix) == 0);
	struct recipient phone = { .kind = RECIPIENT_PHONE, .phone = 905321234567ULL };
	struct recipient mail = { .kind = RECIPIENT_EMAIL, .email = "a@b.c",
				  .email_len = 5 };
	v.status = STATUS_ONAY;
	index_key_make(ix, &phone, 5, RTYPE_BIREYSEL, CHANNEL_EPOSTA, &key);
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	CHECK(!index_lookup(ix, &key, &got));
	index_key_make(ix, &mail, 5, RTYPE_BIREYSEL, CHANNEL_MESAJ, &key);
	CHECK(index_apply_writer(ix, &key, &v) == -EINVAL);
	/* The same phone on each channel and rtype is four keys. */
	int ch[] = { CHANNEL_ARAMA, CHANNEL_MESAJ };
	int rt[] = { RTYPE_BIREYSEL, RTYPE_TACIR };
	for (int c = 0; c < 2; c++)
		for (int t = 0; t < 2; t++) {
			index_key_make(ix, &phone, 5, rt[t], ch[c], &key);
			v.consent_date = INDEX_EPOCH + c * 2 + t;
			CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
		}
	for (int c = 0; c < 2; c++)
		for (int t = 0; t < 2; t++) {
			index_key_make(ix, &phone, 5, rt[t], ch[c], &key);
			CHECK(index_lookup(ix, &key, &got) &&
			      got.consent_date == INDEX_EPOCH + c * 2 + t);
		}
	/* rtype NONE is BIREYSEL. */
	index_key_make(ix, &phone, 5, RTYPE_NONE, CHANNEL_ARAMA, &key);
	CHECK(index_lookup(ix, &key, &got) && got.consent_date == INDEX_EPOCH);
	index_destroy(ix);
}

/* Keys made with the same secret are interchangeable between indexes. */
static void test_secret(void)
{
	uint8_t secret[INDEX_SECRET_BYTES];
	for (size_t i = 0; i < sizeof(secret); i++)
		secret[i] = (uint8_t)rnd();
	struct index *a, *b, *c;
	CHECK(index_create(10, secret, &a) == 0);
	CHECK(index_create(100000, secret, &b) == 0);
	CHECK(index_create(10, NULL, &c) == 0);
	struct recipient mail = { .kind = RECIPIENT_EMAIL, .email = "x@y.z",
				  .email_len = 5 };
	struct index_key ka, kb, kc;
	index_key_make(a, &mail, 9, RTYPE_TACIR, CHANNEL_EPOSTA, &ka);
	index_key_make(b, &mail, 9, RTYPE_TACIR, CHANNEL_EPOSTA, &kb);
	index_key_make(c, &mail, 9, RTYPE_TACIR, CHANNEL_EPOSTA, &kc);
	CHECK(memcmp(&ka, &kb, sizeof(ka)) == 0);
	CHECK(memcmp(&ka, &kc, sizeof(ka)) != 0);
	index_destroy(a);
	index_destroy(b);
	index_destroy(c);
}

/*
 * Readers against the writer. Value number c of key k is self-checking:
 * date = EPOCH + c * NK + k, source and status are functions of c, so a
 * value torn between two writes, or another key's value, is detected;
 * c never goes back for a reader, and a key once found stays found.
 */
#define NK 64
static const uint8_t thread_sources[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
					  12, 13, 32, 33, 34, 35, 36, 37, 38,
					  39, 40, 63, 0 };
#define N_TS (sizeof(thread_sources) / sizeof(thread_sources[0]))

struct race {
	struct index *ix;
	struct index_key keys[NK];
	atomic_bool done;
	atomic_int ready;
	uint64_t writes;
};

struct reader_result {
	uint64_t lookups, found, torn, backwards, vanished;
};

static bool value_ok(const struct consent_value *v, uint64_t k, uint64_t *c)
{
	int64_t d = v->consent_date - INDEX_EPOCH;
	if (d < 0 || (uint64_t)d % NK != k)
		return false;
	*c = (uint64_t)d / NK;
	return v->source == thread_sources[*c % N_TS] &&
	       v->status == ((*c % 3 == 0) ? STATUS_RET : STATUS_ONAY);
}

static void *reader_main(void *arg)
{
	struct race *rc = arg;
	struct reader_result *res = calloc(1, sizeof(*res));
	uint64_t *last = calloc(NK, sizeof(*last)); /* c + 1, 0 = unseen */
	uint64_t x = (uint64_t)(uintptr_t)res;
	enum { W = 16 };
	struct index_key batch[W];
	uint64_t idx[W];
	struct consent_value vals[W];
	bool found[W];
	atomic_fetch_add_explicit(&rc->ready, 1, memory_order_relaxed);
	/* Always one full pass after the writer finishes. */
	for (int final = 0; final < 2;) {
		if (atomic_load_explicit(&rc->done, memory_order_acquire))
			final++;
		for (int j = 0; j < W; j++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			idx[j] = (x >> 33) % NK;
			batch[j] = rc->keys[idx[j]];
		}
		if ((x >> 20) & 1) {
			index_lookup_batch(rc->ix, batch, W, vals, found);
		} else {
			for (int j = 0; j < W; j++)
				found[j] = index_lookup(rc->ix, &batch[j], &vals[j]);
		}
		for (int j = 0; j < W; j++) {
			uint64_t k = idx[j], c;
			res->lookups++;
			if (!found[j]) {
				res->vanished += last[k] != 0;
				continue;
			}
			res->found++;
			if (!value_ok(&vals[j], k, &c)) {
				res->torn++;
				continue;
			}
			res->backwards += c + 1 < last[k];
			last[k] = c + 1;
		}
	}
	free(last);
	return res;
}

static void test_concurrent_readers(void)
{
	struct race *rc = calloc(1, sizeof(*rc));
	CHECK(index_create(NK, NULL, &rc->ix) == 0);
	for (uint64_t k = 0; k < NK; k++) {
		struct lkey lk;
		lkey_make(k * 37, &lk);
		index_key_make(rc->ix, &lk.r, lk.brand, lk.rtype, lk.channel,
			       &rc->keys[k]);
	}
	pthread_t th[2];
	for (int t = 0; t < 2; t++)
		CHECK(pthread_create(&th[t], NULL, reader_main, rc) == 0);

	/* Start once both readers run (bounded wait, ~1 s at most). */
	for (int spin = 0; spin < 100000 &&
	     atomic_load_explicit(&rc->ready, memory_order_relaxed) < 2; spin++)
		usleep(10);

	/* The writer inserts keys one by one while updating the ones it has,
	 * each update one step later in date (so it always wins). */
	uint64_t rounds = scaled(1000000) / NK + 2;
	uint64_t cnt[NK] = { 0 };
	for (uint64_t r = 0; r < rounds; r++) {
		for (uint64_t k = 0; k < NK; k++) {
			if (r == 0 && k % 2)
				continue; /* odd keys appear in round 1 */
			uint64_t c = ++cnt[k];
			struct consent_value v = {
				.status = (c % 3 == 0) ? STATUS_RET : STATUS_ONAY,
				.source = thread_sources[c % N_TS],
				.consent_date = INDEX_EPOCH + (int64_t)(c * NK + k),
			};
			int got = index_apply_writer(rc->ix, &rc->keys[k], &v);
			CHECK(got == (c == 1 ? INDEX_INSERTED : INDEX_UPDATED));
			rc->writes++;
		}
	}
	atomic_store_explicit(&rc->done, true, memory_order_release);
	struct reader_result sum = { 0 };
	for (int t = 0; t < 2; t++) {
		struct reader_result *res;
		CHECK(pthread_join(th[t], (void **)&res) == 0);
		sum.lookups += res->lookups;
		sum.found += res->found;
		sum.torn += res->torn;
		sum.backwards += res->backwards;
		sum.vanished += res->vanished;
		free(res);
	}
	CHECKF(sum.torn == 0, "%llu torn or foreign values",
	       (unsigned long long)sum.torn);
	CHECKF(sum.backwards == 0, "%llu values went back in time",
	       (unsigned long long)sum.backwards);
	CHECKF(sum.vanished == 0, "%llu keys vanished",
	       (unsigned long long)sum.vanished);
	CHECK(sum.found > 0);
	fprintf(stderr, "  %llu writes, %llu reads (%llu found)\n",
		(unsigned long long)rc->writes, (unsigned long long)sum.lookups,
		(unsigned long long)sum.found);
	index_destroy(rc->ix);
	free(rc);
}

/* ---- files ---- */

/*
 * Buckets read per lookup, at the build load (the builder's records *
 * 1.10 sizing) and at the 0.92 limit, for absent keys (never inserted:
 * indexes past the inserted range) and present ones, directly and after
 * a write and reopen (open validates the cells and extends the escaped
 * entries'). A structural property of the layout, so it is asserted:
 * a miss reads at most 1.5 buckets on average even at the limit.
 */
static void path_in_tmp(char *buf, size_t cap, const char *name);

static double mean_probe(const struct index *ix, uint64_t from, uint64_t n)
{
	uint64_t sum = 0;
	struct lkey lk;
	for (uint64_t i = from; i < from + n; i++) {
		struct index_key key;
		lkey_make(i, &lk);
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		sum += index_probe_buckets(ix, &key);
	}
	return (double)sum / (double)n;
}

static void test_probe_lengths(void)
{
	/* Not scaled: a mean over too few keys would be noise. */
	uint64_t n = 200000, probes = 100000;
	char path[256];
	path_in_tmp(path, sizeof(path), "probe.index");
	for (int at_limit = 0; at_limit < 2; at_limit++) {
		struct index *ix;
		CHECK(index_create(at_limit ? n : n + n / 10, NULL, &ix) == 0);
		struct index_info info;
		index_info(ix, &info);
		fill(ix, info.capacity < n ? info.capacity : n, 5);
		index_info(ix, &info);
		double load = (double)info.n_records /
			      (double)(info.n_buckets * 4);
		double miss = mean_probe(ix, n, probes);
		double hit = mean_probe(ix, 0, info.n_records);
		CHECK(index_write(ix, path) == 0);
		struct index *rd;
		CHECK(index_open(path, INDEX_LOAD_ANON, &rd, NULL, 0) == 0);
		double miss_rd = mean_probe(rd, n, probes);
		CHECK(count_matching(rd, info.n_records, 5) == info.n_records);
		/* and the absent keys stay absent, in both */
		uint64_t ghosts = 0;
		struct lkey lk;
		for (uint64_t i = n; i < n + probes; i++) {
			struct index_key key;
			struct consent_value got;
			lkey_make(i, &lk);
			index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel,
				       &key);
			ghosts += index_lookup(ix, &key, &got);
			ghosts += index_lookup(rd, &key, &got);
		}
		CHECK(ghosts == 0);
		fprintf(stderr, "  load %.3f: buckets per miss %.3f (%.3f "
			"reopened), per hit %.3f; %.2f bytes/record\n", load,
			miss, miss_rd, hit,
			(double)info.bytes / (double)info.n_records);
		CHECK(at_limit ? load > 0.915 : load > 0.8);
		CHECKF(miss <= 1.5 && miss_rd <= 1.5, "misses read %.3f and "
		       "%.3f buckets at load %.3f", miss, miss_rd, load);
		CHECK(hit < 2.0);
		CHECK(at_limit || (double)info.bytes / (double)info.n_records <= 20);
		index_destroy(rd);
		index_destroy(ix);
	}
	unlink(path);
}

/*
 * Inserts while readers run, up to the load limit: the writer publishes
 * "keys below N are in" (release) after inserting key N-1, so a reader
 * that reads N (acquire) and then misses a key below it has been given a
 * wrong answer for an old key (an overflow cell not yet visible, say).
 * Keys at or past N may or may not be found, but only with their value;
 * keys never inserted (past the table's capacity) are never found.
 */
struct grow {
	struct index *ix;
	uint64_t cap;
	_Atomic uint64_t published;
	atomic_bool done;
};

static void grow_value(uint64_t i, struct consent_value *v)
{
	v->status = i % 3 ? STATUS_ONAY : STATUS_RET;
	v->source = (uint8_t)(1 + i % 13);
	v->consent_date = INDEX_EPOCH + (int64_t)i;
}

static void *grow_reader(void *arg)
{
	struct grow *g = arg;
	uint64_t *bad = calloc(1, sizeof(*bad));
	uint64_t x = (uint64_t)(uintptr_t)bad | 1;
	enum { W = 8 };
	struct index_key keys[W];
	uint64_t idx[W];
	struct consent_value vals[W];
	bool found[W];
	struct lkey lk;
	while (!atomic_load_explicit(&g->done, memory_order_acquire)) {
		/* Acquire: pairs with the writer's release of published. */
		uint64_t pub = atomic_load_explicit(&g->published,
						    memory_order_acquire);
		for (int j = 0; j < W; j++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			/* old keys, the ones being inserted, absent ones */
			uint64_t i = j < 4 && pub > 0 ? x % pub
				   : j < 6 ? pub + x % 64 : g->cap * 2 + x % 1000;
			idx[j] = i;
			lkey_make(i, &lk);
			index_key_make(g->ix, &lk.r, lk.brand, lk.rtype,
				       lk.channel, &keys[j]);
		}
		index_lookup_batch(g->ix, keys, W, vals, found);
		for (int j = 0; j < W; j++) {
			struct consent_value one, want;
			bool f1 = index_lookup(g->ix, &keys[j], &one);
			grow_value(idx[j], &want);
			if (idx[j] < pub && (!f1 || !found[j]))
				(*bad)++;
			if (idx[j] >= g->cap && (f1 || found[j]))
				(*bad)++;
			if ((f1 && !value_eq(&one, &want)) ||
			    (found[j] && !value_eq(&vals[j], &want)))
				(*bad)++;
		}
	}
	return bad;
}

static void test_concurrent_inserts(void)
{
	struct grow *g = calloc(1, sizeof(*g));
	CHECK(index_create(scaled(30000), NULL, &g->ix) == 0);
	struct index_info info;
	index_info(g->ix, &info);
	g->cap = info.capacity;
	pthread_t th[2];
	for (int t = 0; t < 2; t++)
		CHECK(pthread_create(&th[t], NULL, grow_reader, g) == 0);
	struct lkey lk;
	for (uint64_t i = 0; i < g->cap; i++) {
		struct index_key key;
		struct consent_value v;
		lkey_make(i, &lk);
		index_key_make(g->ix, &lk.r, lk.brand, lk.rtype, lk.channel,
			       &key);
		grow_value(i, &v);
		CHECK(index_apply_writer(g->ix, &key, &v) == INDEX_INSERTED);
		/* Release: pairs with the readers' acquire. */
		atomic_store_explicit(&g->published, i + 1,
				      memory_order_release);
		if (i % 64 == 0)
			sched_yield();
	}
	atomic_store_explicit(&g->done, true, memory_order_release);
	uint64_t bad = 0;
	for (int t = 0; t < 2; t++) {
		uint64_t *res;
		CHECK(pthread_join(th[t], (void **)&res) == 0);
		bad += *res;
		free(res);
	}
	CHECKF(bad == 0, "%llu wrong answers under concurrent inserts",
	       (unsigned long long)bad);
	index_destroy(g->ix);
	free(g);
}

static void path_in_tmp(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static void test_round_trip(void)
{
	char path[256];
	path_in_tmp(path, sizeof(path), "rt.index");
	uint64_t n = scaled(30000);
	struct index *ix;
	CHECK(index_create(n + n / 10, NULL, &ix) == 0);
	fill(ix, n, 11);
	index_set_meta_writer(ix, 42, 777, 1700000000, 1700000100);
	CHECK(index_write(ix, path) == 0);
	struct index_info w;
	index_info(ix, &w);
	CHECK(w.generation == 42 && w.watermark == 777 &&
	      w.created_at == 1700000000 && w.data_as_of == 1700000100);

	for (int mode = INDEX_LOAD_ANON; mode <= INDEX_LOAD_MMAP; mode++) {
		struct index *rd;
		char err[256];
		int rc = index_open(path, (enum index_load_mode)mode, &rd, err,
				    sizeof(err));
		CHECKF(rc == 0, "mode %d: %s", mode, err);
		if (rc != 0)
			continue;
		struct index_info r;
		index_info(rd, &r);
		CHECK(r.n_records == n && r.n_buckets == w.n_buckets &&
		      r.capacity == w.capacity && r.generation == 42 &&
		      r.watermark == 777 && r.created_at == 1700000000 &&
		      r.data_as_of == 1700000100 && r.bytes == w.bytes);
		CHECK(r.huge_pages == (mode == INDEX_LOAD_ANON));
		CHECK(count_matching(rd, n, 11) == n);
		/* The loaded index is writable (MMAP: copy on write). */
		struct lkey lk;
		lkey_make(n + 1, &lk);
		struct index_key key;
		struct consent_value v = { STATUS_RET, 33, INDEX_EPOCH + 9 }, got;
		index_key_make(rd, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		CHECK(index_apply_writer(rd, &key, &v) == INDEX_INSERTED);
		CHECK(index_lookup(rd, &key, &got) && value_eq(&got, &v));
		index_destroy(rd);
	}
	/* The file did not change under the MMAP writer. */
	struct index *rd;
	CHECK(index_open(path, INDEX_LOAD_MMAP, &rd, NULL, 0) == 0);
	struct index_info r;
	index_info(rd, &r);
	CHECK(r.n_records == n);
	index_destroy(rd);
	index_destroy(ix);
	/* No temp file is left behind. */
	char tmp[300];
	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	CHECK(access(tmp, F_OK) != 0);
	/* Writing into a missing directory fails cleanly. */
	path_in_tmp(path, sizeof(path), "nodir/x.index");
	CHECK(index_create(10, NULL, &ix) == 0);
	CHECK(index_write(ix, path) == -ENOENT);
	index_destroy(ix);
}

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc(*len);
	if (fread(p, 1, *len, f) != *len) {
		free(p);
		p = NULL;
	}
	fclose(f);
	return p;
}

static void spit(const char *path, const uint8_t *p, size_t len)
{
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL && fwrite(p, 1, len, f) == len);
	fclose(f);
}

/* Header fields the test rewrites (offsets pinned by table.c's asserts). */
#define OFF_VERSION 8
#define OFF_N_RECORDS 32
#define OFF_BUCKETS_SUM 272
#define OFF_HEADER_SUM 280

static void reseal_header(uint8_t *p)
{
	uint64_t h = XXH3_64bits(p, OFF_HEADER_SUM);
	memcpy(p + OFF_HEADER_SUM, &h, 8);
}

static void reseal_buckets(uint8_t *p, size_t len)
{
	uint64_t h = XXH3_64bits(p + 4096, len - 4096);
	memcpy(p + OFF_BUCKETS_SUM, &h, 8);
	reseal_header(p);
}

/* Opens a damaged copy in both modes: -EPROTO and a message with `word`. */
static void expect_proto(const char *what, const uint8_t *p, size_t len,
			 const char *word)
{
	char path[256];
	path_in_tmp(path, sizeof(path), "bad.index");
	spit(path, p, len);
	for (int mode = INDEX_LOAD_ANON; mode <= INDEX_LOAD_MMAP; mode++) {
		struct index *ix = NULL;
		char err[512] = "";
		int rc = index_open(path, (enum index_load_mode)mode, &ix, err,
				    sizeof(err));
		CHECKF(rc == -EPROTO, "%s (mode %d): rc %d", what, mode, rc);
		CHECKF(strstr(err, word) != NULL,
		       "%s (mode %d): message \"%s\" lacks \"%s\"", what, mode,
		       err, word);
		if (rc == 0)
			index_destroy(ix);
	}
}

static void test_corrupt_files(void)
{
	char path[256];
	path_in_tmp(path, sizeof(path), "good.index");
	struct index *ix;
	CHECK(index_create(5000, NULL, &ix) == 0);
	fill(ix, 4000, 3);
	CHECK(index_write(ix, path) == 0);
	index_destroy(ix);
	size_t len;
	uint8_t *good = slurp(path, &len);
	CHECK(good != NULL && len > 4096);
	if (good == NULL)
		return;
	uint8_t *p = malloc(len);

	expect_proto("empty", good, 0, "shorter");
	expect_proto("half a header", good, 100, "shorter");
	expect_proto("truncated by a bucket", good, len - 64, "truncated");
	expect_proto("truncated by a byte", good, len - 1, "truncated");

	memcpy(p, good, len);
	p[0] ^= 1;
	expect_proto("magic", p, len, "magic");

	memcpy(p, good, len);
	p[OFF_VERSION] = 3;
	reseal_header(p);
	expect_proto("version", p, len, "version");
	memcpy(p, good, len);
	p[OFF_VERSION] = 1;
	reseal_header(p);
	expect_proto("version 1", p, len, "rebuild");

	static const size_t header_bits[] = { 24 * 8 + 3, 32 * 8, 48 * 8 + 1,
					      100 * 8 + 7, 272 * 8, 283 * 8 + 2 };
	for (size_t i = 0; i < sizeof(header_bits) / sizeof(header_bits[0]); i++) {
		memcpy(p, good, len);
		p[header_bits[i] / 8] ^= (uint8_t)(1u << (header_bits[i] % 8));
		char what[64];
		snprintf(what, sizeof(what), "header bit %zu", header_bits[i]);
		expect_proto(what, p, len, "checksum");
	}
	memcpy(p, good, len);
	p[3000] ^= 0x10;
	expect_proto("padding bit", p, len, "padding");

	/* Bit flips in the buckets: the checksum catches every one. */
	for (int i = 0; i < 8; i++) {
		memcpy(p, good, len);
		size_t off = 4096 + rnd() % (len - 4096);
		p[off] ^= (uint8_t)(1u << (rnd() % 8));
		char what[64];
		snprintf(what, sizeof(what), "bucket byte %zu", off);
		expect_proto(what, p, len, "checksum");
	}

	/* Consistent checksums, inconsistent content. */
	memcpy(p, good, len);
	uint64_t nr;
	memcpy(&nr, p + OFF_N_RECORDS, 8);
	nr--;
	memcpy(p + OFF_N_RECORDS, &nr, 8);
	reseal_header(p);
	expect_proto("record count", p, len, "occupied");

	/* An entry with source code 31 (invalid), checksums redone. */
	memcpy(p, good, len);
	size_t slot;
	for (slot = 4096; slot < len; slot += 16) {
		uint64_t v;
		memcpy(&v, p + slot + 8, 8);
		if (v != 0) {
			v |= 0x1fULL << 1;
			memcpy(p + slot + 8, &v, 8);
			break;
		}
	}
	reseal_buckets(p, len);
	expect_proto("invalid source", p, len, "invalid entry");

	/* A hole inside a bucket: an empty slot before an occupied one. */
	memcpy(p, good, len);
	for (slot = 4096; slot < len; slot += 64) {
		uint64_t v0, v1;
		memcpy(&v0, p + slot + 8, 8);
		memcpy(&v1, p + slot + 24, 8);
		if (v0 != 0 && v1 != 0) {
			memset(p + slot, 0, 16);
			break;
		}
	}
	uint64_t nr2;
	memcpy(&nr2, p + OFF_N_RECORDS, 8);
	nr2--;
	memcpy(p + OFF_N_RECORDS, &nr2, 8);
	reseal_buckets(p, len);
	expect_proto("hole in a bucket", p, len, "invalid entry");

	/* Overflow cells. A displaced entry (probe field 1..6, val bits
	 * 56-58) whose home's cell is cleared: every cell of every full
	 * bucket cleared, so the entry's home has none. */
	memcpy(p, good, len);
	bool displaced = false;
	for (slot = 4096; slot < len; slot += 16) {
		uint64_t v;
		memcpy(&v, p + slot + 8, 8);
		uint64_t f = (v >> 56) & 7;
		displaced |= f >= 1 && f <= 6;
		v &= ~(7ULL << 59);
		memcpy(p + slot + 8, &v, 8);
	}
	CHECK(displaced);
	reseal_buckets(p, len);
	expect_proto("overflow cells cleared", p, len, "overflow cell");

	/* A cell in a bucket that is not full. */
	memcpy(p, good, len);
	for (slot = 4096; slot < len; slot += 64) {
		uint64_t v0, v3;
		memcpy(&v0, p + slot + 8, 8);
		memcpy(&v3, p + slot + 56, 8);
		if (v0 != 0 && v3 == 0) {
			v0 |= 1ULL << 60;
			memcpy(p + slot + 8, &v0, 8);
			break;
		}
	}
	reseal_buckets(p, len);
	expect_proto("cell in a bucket with room", p, len, "invalid entry");

	/* A bucket count that is not prime (one bucket more, sizes redone). */
	memcpy(p, good, len);
	uint64_t nb;
	memcpy(&nb, p + 24, 8);
	CHECK(nb % 2 == 1);
	uint8_t *q = calloc(1, len + 64);
	memcpy(q, p, len);
	nb++;
	memcpy(q + 24, &nb, 8);
	reseal_buckets(q, len + 64);
	expect_proto("bucket count", q, len + 64, "prime");
	free(q);

	/* And the pristine copy still opens (the test's own control). */
	spit(path, good, len);
	char err[256];
	CHECK(index_open(path, INDEX_LOAD_ANON, &ix, err, sizeof(err)) == 0);
	index_destroy(ix);
	CHECK(index_open("/nonexistent/x", INDEX_LOAD_ANON, &ix, err,
			 sizeof(err)) == -ENOENT);
	free(p);
	free(good);
}

/* The memory rule: ANON only where 2.5 tables and the reserve fit. */
static void test_load_choose(void)
{
	const uint64_t G = 1ull << 30, R = INDEX_LOAD_RESERVE_BYTES;
	/* 10^9 records, ~18 GiB, on a 24 GiB machine: mapped. */
	CHECK(index_load_choose(18 * G, 23 * G) == INDEX_LOAD_MMAP);
	/* 10^8, ~1.8 GiB: anonymous. */
	CHECK(index_load_choose(1843ull << 20, 23 * G) == INDEX_LOAD_ANON);
	/* The edge: 2.5 tables plus the reserve exactly, and a byte less. */
	CHECK(index_load_choose(4 * G, 10 * G + R) == INDEX_LOAD_ANON);
	CHECK(index_load_choose(4 * G, 10 * G + R - 1) == INDEX_LOAD_MMAP);
	/* Less than the reserve available, or nothing: mapped. */
	CHECK(index_load_choose(1, R - 1) == INDEX_LOAD_MMAP);
	CHECK(index_load_choose(0, 0) == INDEX_LOAD_MMAP);
	CHECK(index_load_choose(0, R) == INDEX_LOAD_ANON);
	/* Sizes whose 2.5 times would overflow: mapped, not wrapped. */
	CHECK(index_load_choose(UINT64_MAX / 2, UINT64_MAX) == INDEX_LOAD_MMAP);
	uint64_t avail = 0;
	CHECK(index_mem_available(&avail) == 0 && avail > 0);
	/* AUTO opens in the mode the rule gives for this machine. */
	struct index *ix, *rd;
	char path[256], err[256];
	CHECK(index_create(1000, NULL, &ix) == 0);
	path_in_tmp(path, sizeof(path), "rt.index");
	CHECK(index_write(ix, path) == 0);
	CHECK(index_open(path, INDEX_LOAD_AUTO, &rd, err, sizeof(err)) == 0);
	struct index_info a, b;
	index_info(ix, &a);
	index_info(rd, &b);
	CHECK(index_mem_available(&avail) == 0);
	CHECK(b.mapped == (index_load_choose(a.bytes, avail) == INDEX_LOAD_MMAP));
	index_destroy(rd);
	index_destroy(ix);
}

/* A table in its file: filled, looked up and changed as any index, its
 * stores in the file itself (MAP_SHARED), released pages faulted back,
 * and a copy written by index_write that opens whole. */
static void test_file_table(void)
{
	char path[256], copy[256], err[256];
	struct index *ix, *rd, *like;
	uint64_t n = scaled(20000);
	struct lkey lk;
	struct index_key key;
	struct consent_value v, got;

	path_in_tmp(path, sizeof(path), "work.index");
	path_in_tmp(copy, sizeof(copy), "good.index");
	unlink(path);
	CHECK(index_create(10, NULL, &like) == 0);
	CHECK(index_create_file(n, like, path, &ix) == 0);
	CHECK(strcmp(index_file_path(ix), path) == 0);
	CHECK(index_file_path(like) == NULL);
	/* The name is taken: a second one there is refused. */
	CHECK(index_create_file(n, NULL, path, &rd) == -EEXIST);
	struct index_info info;
	index_info(ix, &info);
	CHECK(info.mapped && !info.huge_pages && info.capacity >= n);
	struct stat st;
	CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == 4096 + info.bytes);
	/* Same secret: keys made with one index serve the other. */
	lkey_make(1, &lk);
	struct index_key k1, k2;
	index_key_make(like, &lk.r, lk.brand, lk.rtype, lk.channel, &k1);
	index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &k2);
	CHECK(memcmp(&k1, &k2, sizeof(k1)) == 0);

	for (uint64_t i = 0; i < n; i++) {
		lkey_make(i, &lk);
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		v.status = STATUS_ONAY;
		v.source = 1;
		v.consent_date = INDEX_EPOCH + (int64_t)i;
		CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
		if (i == n / 2)
			index_file_release(ix, info.n_buckets / 2);
	}
	index_file_release(ix, info.n_buckets);
	/* The stores are in the file: some bucket's bytes read back. */
	uint8_t page[4096];
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0 && pread(fd, page, sizeof(page), 4096) == sizeof(page));
	close(fd);
	bool nonzero = false;
	for (size_t i = 0; i < sizeof(page); i++)
		nonzero |= page[i] != 0;
	CHECK(nonzero);
	/* Released pages come back on a lookup and on an update. */
	uint64_t bad = 0;
	for (uint64_t i = 0; i < n; i++) {
		lkey_make(i, &lk);
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		if (!index_lookup(ix, &key, &got) ||
		    got.consent_date != INDEX_EPOCH + (int64_t)i)
			bad++;
		if (i % 7 == 0) {
			v.status = STATUS_RET;
			v.source = 2;
			v.consent_date = INDEX_EPOCH + (int64_t)i;
			CHECK(index_apply_writer(ix, &key, &v) == INDEX_UPDATED);
		}
	}
	CHECKF(bad == 0, "%llu keys wrong", (unsigned long long)bad);
	index_set_meta_writer(ix, 7, 99, 1000, 2000);
	CHECK(index_write(ix, copy) == 0);
	CHECK(index_open(copy, INDEX_LOAD_MMAP, &rd, err, sizeof(err)) == 0);
	index_info(rd, &info);
	CHECK(info.n_records == n && info.generation == 7 &&
	      info.watermark == 99);
	for (uint64_t i = 0; i < n; i += 7) {
		lkey_make(i, &lk);
		index_key_make(rd, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		CHECK(index_lookup(rd, &key, &got) && got.status == STATUS_RET);
	}
	index_destroy(rd);
	index_destroy(ix);
	index_destroy(like);
	unlink(path);
	unlink(copy);
}

/* RssAnon of this process, in kB. */
static long rss_anon_kb(void)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	long kb = -1;
	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
			break;
	if (f != NULL)
		fclose(f);
	return kb;
}

/* MMAP shares the page cache: opening (and validating) a mapped table
 * adds next to no anonymous memory, where ANON adds the whole table (a
 * private writable mapping populated for writing would copy it all).
 * Not under a sanitizer: its shadow of every byte read is anonymous. */
static void test_mmap_no_copy(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	fprintf(stderr, "  (skipped: a sanitizer's shadow memory is "
		"anonymous)\n");
	return;
#endif
	char path[256], err[256];
	struct index *ix, *rd;
	struct lkey lk;
	struct index_key key;
	struct consent_value v = { .status = STATUS_ONAY, .source = 1,
				   .consent_date = INDEX_EPOCH + 5 };
	const uint64_t n = 1500000; /* ~32 MiB of buckets */

	CHECK(index_create(n, NULL, &ix) == 0);
	for (uint64_t i = 0; i < n; i += 3) {
		lkey_make(i, &lk);
		index_key_make(ix, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
		CHECK(index_apply_writer(ix, &key, &v) == INDEX_INSERTED);
	}
	path_in_tmp(path, sizeof(path), "rt.index");
	CHECK(index_write(ix, path) == 0);
	struct index_info info;
	index_info(ix, &info);
	index_destroy(ix);
	long table_kb = (long)(info.bytes >> 10);

	long a0 = rss_anon_kb();
	CHECK(index_open(path, INDEX_LOAD_MMAP, &rd, err, sizeof(err)) == 0);
	long a1 = rss_anon_kb();
	CHECKF(a1 - a0 < table_kb / 8, "MMAP open: RssAnon %ld -> %ld kB, "
	       "table %ld kB", a0, a1, table_kb);
	/* A change copies its page only. */
	lkey_make(0, &lk);
	index_key_make(rd, &lk.r, lk.brand, lk.rtype, lk.channel, &key);
	v.consent_date++;
	CHECK(index_apply_writer(rd, &key, &v) == INDEX_UPDATED);
	CHECK(rss_anon_kb() - a0 < table_kb / 8);
	index_destroy(rd);
	a0 = rss_anon_kb();
	CHECK(index_open(path, INDEX_LOAD_ANON, &rd, err, sizeof(err)) == 0);
	a1 = rss_anon_kb();
	CHECKF(a1 - a0 > table_kb / 2, "ANON open: RssAnon %ld -> %ld kB, "
	       "table %ld kB", a0, a1, table_kb);
	index_destroy(rd);
	unlink(path);
}

static void rm_tmpdir(void)
{
	const char *names[] = { "rt.index", "bad.index", "good.index",
				"work.index" };
	char path[256];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		path_in_tmp(path, sizeof(path), names[i]);
		unlink(path);
	}
	rmdir(tmpdir);
}

int main(void)
{
	const char *s = getenv("CONSENTD_TEST_SCALE");
	if (s != NULL && atof(s) > 0)
		scale = atof(s);
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_reference_model);
	RUN(test_foreach);
	RUN(test_limits);
	RUN(test_secret);
	RUN(test_concurrent_readers);
	RUN(test_concurrent_inserts);
	RUN(test_probe_lengths);
	RUN(test_round_trip);
	RUN(test_corrupt_files);
	RUN(test_load_choose);
	RUN(test_file_table);
	RUN(test_mmap_no_copy);
	rm_tmpdir();
	return check_summary();
}
