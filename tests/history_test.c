/*
 * history_test: the evidence store (index/history.h) on real files. A
 * property test over random histories against a reference model written
 * apart from the store (plain arrays, linear scans, its own order rule
 * and its own SHA-256 chain), before and after reopen and after
 * history_recover from a real change log; torn tails at every byte; the
 * key map trusted, rebuilt under another boot id and grown; prune then
 * verify; tampering of every kind named by file and offset; equal heads
 * in two stores; canonical bytes against bytes built by hand; the order
 * rule against index_apply_writer; a query thread against an appending
 * writer; and the cost of an append (printed, never asserted).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include <openssl/evp.h>

#include "core/decision.h"
#include "core/enums.h"
#include "core/recipient.h"
#include "index/changelog.h"
#include "index/history.h"
#include "index/table.h"
#include "tests/check.h"

static char dir[256];
static char err[1024];

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void rm_dir(const char *d)
{
	nftw(d, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void fresh_dir(void)
{
	if (dir[0])
		rm_dir(dir);
	snprintf(dir, sizeof(dir), "/tmp/history_test.XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
}

/* xorshift: the tests' own random numbers, seeded for repeatability. */
static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}
static uint64_t rnd_below(uint64_t n)
{
	return rnd() % n;
}

/* ---- the reference model ---- */

#define MAX_KEYS 64
#define MAX_RECS 20000

struct mkey {
	char canon[32];    /* canonical recipient */
	char alt[32];      /* the same in another form (phones) */
	uint32_t brand;
	int channel, rtype;
	int64_t date;      /* the generator's current date */
};

struct mrec {
	int key;
	uint64_t seq;
	int64_t applied_at;
	int status, source;
	int64_t consent_date, creation_date;
	uint32_t iys;
	char recipient[32]; /* as sent: canonical or the other form */
	char tx[40];
	uint8_t chain[32];
};

static struct mkey keys[MAX_KEYS];
static int n_keys;
static struct mrec recs[MAX_RECS];
static size_t n_recs;

/* The model's order rule, stated on its own: date, then RET, then the
 * source by its place in (1..13, 32..40, other, 0). */
static int model_source_place(int s)
{
	if (s >= 1 && s <= 13)
		return s;
	if (s >= 32 && s <= 40)
		return 100 + s;
	if (s == 0)
		return 1000;
	return 500;
}

static bool model_newer(const struct mrec *a, const struct mrec *b)
{
	if (a->consent_date != b->consent_date)
		return a->consent_date > b->consent_date;
	if ((a->status == 2) != (b->status == 2))
		return a->status == 2;
	return model_source_place(a->source) > model_source_place(b->source);
}

static void model_consent(const struct mrec *r, Consent__V1__Consent *c)
{
	consent__v1__consent__init(c);
	c->recipient = (char *)r->recipient;
	c->channel = keys[r->key].channel;
	c->recipient_type = keys[r->key].rtype;
	c->brand_code = keys[r->key].brand;
	c->iys_code = r->iys;
	c->status = r->status;
	c->source = r->source;
	c->consent_date = r->consent_date;
	c->creation_date = r->creation_date;
	c->transaction_id = (char *)r->tx;
	c->sequence = r->seq;
}

/* The model's chain: SHA-256 over the previous and protobuf-c's bytes. */
static void model_chain(const uint8_t prev[32], const struct mrec *r,
			uint8_t out[32])
{
	Consent__V1__Consent c;
	model_consent(r, &c);
	uint8_t buf[1024];
	size_t len = consent__v1__consent__pack(&c, buf);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned ol;
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	EVP_DigestUpdate(md, prev, 32);
	EVP_DigestUpdate(md, buf, len);
	EVP_DigestFinal_ex(md, out, &ol);
	EVP_MD_CTX_free(md);
}

/* Model as-of: index of the deciding record, or -1. */
static long model_as_of(int key, enum history_as_of_kind kind, uint64_t pt)
{
	long best = -1;
	for (size_t i = 0; i < n_recs; i++) {
		const struct mrec *r = &recs[i];
		if (r->key != key)
			continue;
		if (kind == HISTORY_AT_SEQUENCE ? r->seq > pt
						: r->consent_date > (int64_t)pt)
			continue;
		if (best < 0 || model_newer(r, &recs[best]))
			best = (long)i;
	}
	return best;
}

static bool model_head_at(uint64_t seq, uint8_t out[32])
{
	bool any = false;
	for (size_t i = 0; i < n_recs && recs[i].seq <= seq; i++) {
		memcpy(out, recs[i].chain, 32);
		any = true;
	}
	return any;
}

/* ---- the generator ---- */

static void key_new(void)
{
	struct mkey *k = &keys[n_keys];
	int i = n_keys++;
	k->brand = 600000 + (uint32_t)rnd_below(3);
	k->rtype = 1 + (int)rnd_below(2);
	if (i % 4 == 3) {
		snprintf(k->canon, sizeof(k->canon), "user%d@example.com", i);
		snprintf(k->alt, sizeof(k->alt), "User%d@Example.com", i);
		k->channel = CONSENT__V1__CHANNEL__EPOSTA;
	} else {
		unsigned n = 1000000u + (unsigned)i * 7919u;
		snprintf(k->canon, sizeof(k->canon), "+90532%07u", n);
		snprintf(k->alt, sizeof(k->alt), "0532 %07u", n);
		k->channel = i % 4 == 1 ? CONSENT__V1__CHANNEL__ARAMA
					: CONSENT__V1__CHANNEL__MESAJ;
	}
	k->date = 1600000000 + (int64_t)rnd_below(1000000);
}

static const int sources[] = { 0, 1, 5, 12, 13, 32, 38, 40 };

/* One random change of key k (flips, older dates, equal dates). */
static void rec_make(struct mrec *r, int k, uint64_t seq, int64_t applied)
{
	struct mkey *key = &keys[k];
	memset(r, 0, sizeof(*r));
	r->key = k;
	r->seq = seq;
	r->applied_at = applied;
	switch (rnd_below(6)) {
	case 0: /* older: skipped by the order rule, still evidence */
		r->consent_date = key->date - 1 - (int64_t)rnd_below(5000);
		break;
	case 1: /* equal */
		r->consent_date = key->date;
		break;
	default:
		key->date += 1 + (int64_t)rnd_below(5000);
		r->consent_date = key->date;
	}
	r->status = 1 + (int)rnd_below(2);
	r->source = sources[rnd_below(sizeof(sources) / sizeof(sources[0]))];
	r->creation_date = r->consent_date + (int64_t)rnd_below(100);
	r->iys = 700000 + (uint32_t)rnd_below(10);
	snprintf(r->recipient, sizeof(r->recipient), "%s",
		 rnd_below(3) == 0 && key->alt[0] ? key->alt : key->canon);
	snprintf(r->tx, sizeof(r->tx), "tx-%" PRIu64 "-%zu", seq, n_recs);
}

/* Appends recs[from..to) to h (and, when log is set, to the log as one
 * origins batch: the sequences may repeat inside it). */
static int append_range(struct history *h, struct changelog *log, size_t from,
			size_t to, int64_t applied)
{
	Consent__V1__Consent cs[512], *ps[512];
	size_t n = to - from;
	if (n > 512)
		abort();
	for (size_t i = 0; i < n; i++) {
		model_consent(&recs[from + i], &cs[i]);
		ps[i] = &cs[i];
	}
	int rc = history_append(h, ps, n, applied, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "append: %s\n", err);
	if (rc == 0 && log != NULL) {
		char cursor[32];
		snprintf(cursor, sizeof(cursor), "c%zu", to);
		struct changelog_batch b = {
			.changes = ps,
			.n = n,
			.commit = { .kind = ORIGINS_ORIGIN,
				    .origin = "test",
				    .origin_len = 4,
				    .cursor = cursor,
				    .cursor_len = strlen(cursor) },
		};
		rc = changelog_append_batches(log, &b, 1);
		if (rc < 0)
			fprintf(stderr, "log: %s\n", changelog_error(log));
	}
	return rc;
}

/* ---- comparing store and model ---- */

static bool entry_equals(const struct history_entry *e, const struct mrec *r,
			 bool applied_exact, int64_t applied_lo)
{
	const Consent__V1__Consent *c = &e->consent;
	const struct mkey *k = &keys[r->key];
	bool ok = c->sequence == r->seq && (int)c->status == r->status &&
		  (int)c->source == r->source &&
		  c->consent_date == r->consent_date &&
		  c->creation_date == r->creation_date && c->iys_code == r->iys &&
		  c->brand_code == k->brand && (int)c->channel == k->channel &&
		  (int)c->recipient_type == k->rtype &&
		  strcmp(c->recipient, r->recipient) == 0 &&
		  strcmp(c->transaction_id, r->tx) == 0 &&
		  memcmp(e->chain, r->chain, 32) == 0;
	if (applied_exact)
		ok = ok && e->applied_at == r->applied_at;
	else
		ok = ok && e->applied_at >= applied_lo;
	return ok;
}

/* Everything the store answers, against the model. applied_lo < 0:
 * applied_at exact; else each record's applied_at is exact up to
 * recs[exact_upto] and at least applied_lo after. */
static int check_all(struct history *h, size_t exact_upto, int64_t applied_lo)
{
	int bad = 0;
	struct history_state st;
	history_state(h, &st);
	CHECK(st.records == n_recs);
	CHECK(st.first_sequence == recs[0].seq);
	CHECK(st.last_sequence == recs[n_recs - 1].seq);
	CHECK(memcmp(st.head, recs[n_recs - 1].chain, 32) == 0);
	uint64_t last = recs[n_recs - 1].seq;
	/* as-of at every sequence, for every key */
	for (uint64_t s = recs[0].seq; s <= last; s++) {
		uint8_t hd[32], mh[32];
		int rc = history_head_at(h, s, hd);
		bool m = model_head_at(s, mh);
		CHECKF(rc == 0 && m && memcmp(hd, mh, 32) == 0,
		       "head_at %" PRIu64 ": rc %d", s, rc);
		for (int k = 0; k < n_keys; k++) {
			struct history_entry e;
			long want = model_as_of(k, HISTORY_AT_SEQUENCE, s);
			rc = history_as_of(h, keys[k].alt[0] && k % 2 ? keys[k].alt
								    : keys[k].canon,
					   keys[k].brand, keys[k].channel,
					   keys[k].rtype, HISTORY_AT_SEQUENCE,
					   s, &e, err, sizeof(err));
			bool ok = want < 0 ? rc == 0
					   : rc == 1 &&
						     entry_equals(&e, &recs[want],
								  (size_t)want < exact_upto,
								  applied_lo);
			if (!ok && bad++ < 5)
				fprintf(stderr,
					"as_of seq %" PRIu64 " key %d: rc %d want %ld got seq %" PRIu64 " tx %s/%s applied %" PRId64 "/%" PRId64 " (%s)\n",
					s, k, rc, want, rc == 1 ? e.consent.sequence : 0,
					rc == 1 ? e.consent.transaction_id : "",
					want >= 0 ? recs[want].tx : "",
					rc == 1 ? e.applied_at : 0,
					want >= 0 ? recs[want].applied_at : 0,
					rc < 0 ? err : "");
		}
	}
	CHECK(history_head_at(h, recs[0].seq - 1, (uint8_t[32]){ 0 }) == -ERANGE);
	CHECK(history_head_at(h, last + 1, (uint8_t[32]){ 0 }) == -ERANGE);
	/* as-of at times */
	for (int k = 0; k < n_keys; k++) {
		for (int t = 0; t < 30; t++) {
			int64_t T;
			size_t pick = rnd_below(n_recs);
			T = recs[pick].consent_date + (int64_t)rnd_below(3) - 1;
			if (t == 0)
				T = 1000;
			struct history_entry e;
			long want = model_as_of(k, HISTORY_AT_TIME, (uint64_t)T);
			int rc = history_as_of(h, keys[k].canon, keys[k].brand,
					       keys[k].channel, keys[k].rtype,
					       HISTORY_AT_TIME, (uint64_t)T, &e,
					       err, sizeof(err));
			bool ok = want < 0 ? rc == 0
					   : rc == 1 &&
						     entry_equals(&e, &recs[want],
								  (size_t)want < exact_upto,
								  applied_lo);
			if (!ok && bad++ < 10)
				fprintf(stderr, "as_of time %" PRId64 " key %d: rc %d want %ld\n",
					T, k, rc, want);
		}
	}
	/* history_key: exactly the model's records, in order */
	static struct history_entry out[MAX_RECS];
	for (int k = 0; k < n_keys; k++) {
		size_t n = 0;
		int rc = history_key(h, keys[k].alt[0] ? keys[k].alt : keys[k].canon,
				     keys[k].brand, keys[k].channel, keys[k].rtype,
				     out, MAX_RECS, &n, err, sizeof(err));
		size_t j = 0;
		bool ok = rc == 0;
		for (size_t i = 0; ok && i < n_recs; i++) {
			if (recs[i].key != k)
				continue;
			ok = j < n && entry_equals(&out[j], &recs[i],
						   i < exact_upto, applied_lo);
			j++;
		}
		ok = ok && j == n;
		if (!ok && bad++ < 15)
			fprintf(stderr, "history_key %d: rc %d n %zu want %zu\n", k, rc,
				n, j);
		/* a short buffer gets the newest, oldest first */
		if (ok && n >= 3) {
			struct history_entry two[2];
			size_t n2 = 0;
			rc = history_key(h, keys[k].canon, keys[k].brand,
					 keys[k].channel, keys[k].rtype, two, 2,
					 &n2, err, sizeof(err));
			CHECK(rc == 0 && n2 == n);
			CHECK(two[0].consent.sequence == out[n - 2].consent.sequence &&
			      strcmp(two[1].consent.transaction_id,
				     out[n - 1].consent.transaction_id) == 0);
		}
	}
	CHECKF(bad == 0, "%d mismatches against the model", bad);
	return bad;
}

/* Builds a random history: a snapshot part of nsnap records sharing
 * one sequence W, then groups with strictly increasing sequences across
 * groups and some shared inside one. Only the model is filled. Returns
 * the index where the change log's part starts. */
static size_t gen_history(size_t nsnap, size_t ngroups, size_t *group_end)
{
	n_keys = 0;
	n_recs = 0;
	for (int i = 0; i < 12; i++)
		key_new();
	uint64_t seq = 1000;
	int64_t applied = 1700000000;
	for (size_t i = 0; i < nsnap; i++) {
		rec_make(&recs[n_recs], (int)rnd_below((uint64_t)n_keys), seq,
			 applied);
		n_recs++;
	}
	size_t snap_end = n_recs;
	for (size_t g = 0; g < ngroups; g++) {
		size_t n = 1 + rnd_below(8);
		applied += (int64_t)rnd_below(3);
		for (size_t i = 0; i < n; i++) {
			if (i == 0 || rnd_below(3) != 0)
				seq++;
			if (n_keys < MAX_KEYS && rnd_below(20) == 0)
				key_new();
			rec_make(&recs[n_recs], (int)rnd_below((uint64_t)n_keys),
				 seq, applied);
			n_recs++;
		}
		group_end[g] = n_recs;
	}
	uint8_t prev[32] = { 0 };
	for (size_t i = 0; i < n_recs; i++) {
		model_chain(prev, &recs[i], recs[i].chain);
		memcpy(prev, recs[i].chain, 32);
	}
	return snap_end;
}

static struct history *open_h(const struct history_options *o)
{
	struct history *h = NULL;
	int rc = history_open(dir, o, &h, err, sizeof(err));
	CHECKF(rc == 0, "history_open: %d %s", rc, err);
	return h;
}

static void test_property(void)
{
	for (int round = 0; round < 3; round++) {
		fresh_dir();
		size_t group_end[200];
		size_t ngroups = 120;
		size_t snap = gen_history(40, ngroups, group_end);
		struct history_options o = { .segment_bytes = 2048,
					     .map_slots = 8 };
		struct history *h = open_h(&o);
		struct changelog *log = NULL;
		CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
		if (!h || !log)
			return;
		/* the snapshot, in pieces of one sequence, not in the log */
		for (size_t i = 0; i < snap; i += 7)
			CHECK(append_range(h, NULL, i, i + 7 < snap ? i + 7 : snap,
					   recs[i].applied_at) == 0);
		size_t from = snap;
		for (size_t g = 0; g < ngroups; g++) {
			CHECK(append_range(h, log, from, group_end[g],
					   recs[from].applied_at) == 0);
			from = group_end[g];
			if (g % 40 == 39) { /* re-appends after reopen */
				history_close(h);
				h = open_h(&o);
				if (!h)
					return;
			}
		}
		check_all(h, n_recs, -1);
		history_close(h);
		h = open_h(&o);
		if (!h)
			return;
		check_all(h, n_recs, -1);
		history_close(h);

		/* Recover: a store holding the snapshot and a prefix that
		 * ends inside a group, filled from the log. */
		for (int cut_try = 0; cut_try < 2; cut_try++) {
			char hp[300];
			snprintf(hp, sizeof(hp), "%s/%s", dir, HISTORY_DIR);
			rm_dir(hp);
			h = open_h(&o);
			if (!h)
				return;
			size_t cut = snap + (cut_try == 0 ? 0
							  : rnd_below(n_recs - snap));
			/* a cut inside a shared sequence where there is one */
			for (size_t i = cut; i + 1 < n_recs && cut_try; i++)
				if (recs[i].seq == recs[i + 1].seq &&
				    recs[i].seq != recs[snap - 1].seq) {
					cut = i + 1;
					break;
				}
			/* pieces of up to 5 of one applied_at */
			for (size_t i = 0, j; i < cut; i = j) {
				for (j = i + 1; j < cut && j - i < 5 &&
						recs[j].applied_at == recs[i].applied_at;)
					j++;
				CHECK(append_range(h, NULL, i, j,
						   recs[i].applied_at) == 0);
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t copied = 0;
			int rc = history_recover(h, log, &copied, err, sizeof(err));
			CHECKF(rc == 0, "recover: %s", err);
			CHECKF(copied == n_recs - cut, "copied %" PRIu64 " of %zu",
			       copied, n_recs - cut);
			check_all(h, cut, ts.tv_sec);
			/* recovering again copies nothing */
			rc = history_recover(h, log, &copied, err, sizeof(err));
			CHECK(rc == 0 && copied == 0);
			history_close(h);
		}
		changelog_close(log);
	}
}

/* ---- canonical bytes ---- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static size_t put_str(uint8_t *p, int field, const char *s)
{
	size_t n = put_varint(p, (uint64_t)field << 3 | 2);
	n += put_varint(p + n, strlen(s));
	memcpy(p + n, s, strlen(s));
	return n + strlen(s);
}

static size_t put_int(uint8_t *p, int field, uint64_t v)
{
	size_t n = put_varint(p, (uint64_t)field << 3);
	return n + put_varint(p + n, v);
}

static void test_canonical_bytes(void)
{
	fresh_dir();
	struct history *h = open_h(NULL);
	if (!h)
		return;
	/* Fields set in an order unlike the field numbers, and one unknown
	 * field: the record must hold fields 1..11 in order and no more. */
	Consent__V1__Consent c;
	consent__v1__consent__init(&c);
	c.sequence = 77;
	c.transaction_id = "tx-1";
	c.creation_date = 1700000100;
	c.consent_date = 1700000000;
	c.source = CONSENT__V1__SOURCE__HS_WEB;
	c.status = CONSENT__V1__STATUS__RET;
	c.iys_code = 700001;
	c.brand_code = 600001;
	c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__TACIR;
	c.channel = CONSENT__V1__CHANNEL__MESAJ;
	c.recipient = "+905321234567";
	ProtobufCMessageUnknownField unk = {
		.tag = 99, .wire_type = PROTOBUF_C_WIRE_TYPE_VARINT,
		.len = 1, .data = (uint8_t[]){ 5 } };
	c.base.n_unknown_fields = 1;
	c.base.unknown_fields = &unk;
	uint8_t want[256];
	size_t n = 0;
	n += put_str(want + n, 1, "+905321234567");
	n += put_int(want + n, 2, CONSENT__V1__CHANNEL__MESAJ);
	n += put_int(want + n, 3, CONSENT__V1__RECIPIENT_TYPE__TACIR);
	n += put_int(want + n, 4, 600001);
	n += put_int(want + n, 5, 700001);
	n += put_int(want + n, 6, CONSENT__V1__STATUS__RET);
	n += put_int(want + n, 7, CONSENT__V1__SOURCE__HS_WEB);
	n += put_int(want + n, 8, 1700000000);
	n += put_int(want + n, 9, 1700000100);
	n += put_str(want + n, 10, "tx-1");
	n += put_int(want + n, 11, 77);
	Consent__V1__Consent *pc = &c;
	CHECK(history_append(h, &pc, 1, 5, err, sizeof(err)) == 0);
	history_close(h);
	char p[400];
	snprintf(p, sizeof(p), "%s/%s/%020d.hist", dir, HISTORY_DIR, 0);
	int fd = open(p, O_RDONLY);
	uint8_t file[4096];
	ssize_t got = pread(fd, file, sizeof(file), 0);
	close(fd);
	CHECK(got > 128);
	struct history_record r;
	const char *why = "";
	int rc = history_record_decode(file + 128, (size_t)got - 128, &r, &why);
	CHECKF(rc > 0, "decode: %d %s", rc, why);
	if (rc > 0) {
		CHECK(r.payload_len == n && memcmp(r.payload, want, n) == 0);
		CHECK(r.sequence == 77 && r.applied_at == 5 && r.prev == 0);
		/* the chain: SHA-256 of 32 zero bytes and those bytes */
		uint8_t buf[32 + 256] = { 0 }, md[32];
		memcpy(buf + 32, want, n);
		unsigned ol;
		EVP_Digest(buf, 32 + n, md, &ol, EVP_sha256(), NULL);
		CHECK(memcmp(md, r.chain, 32) == 0);
	}
}

/* ---- the order rule: consent_value_newer against index_apply_writer ---- */

static void test_order_rule_matches_index(void)
{
	struct index *ix = NULL;
	CHECK(index_create(1024, NULL, &ix) == 0);
	if (!ix)
		return;
	struct recipient rc;
	const char *why;
	static const uint8_t srcs[] = { 0, 1, 2, 12, 13, 32, 35, 40, 63 };
	for (int i = 0; i < 20000; i++) {
		struct index_key key;
		char phone[32];
		snprintf(phone, sizeof(phone), "+90532%07d", i);
		CHECK(recipient_normalize(phone, strlen(phone), &rc, &why) == 0);
		index_key_make(ix, &rc, 600000, RTYPE_BIREYSEL, CHANNEL_MESAJ,
			       &key);
		struct consent_value a = {
			.status = rnd_below(2) ? STATUS_RET : STATUS_ONAY,
			.source = srcs[rnd_below(sizeof(srcs))],
			.consent_date = CONSENT_DATE_MIN + (int64_t)rnd_below(3),
		};
		struct consent_value b = {
			.status = rnd_below(2) ? STATUS_RET : STATUS_ONAY,
			.source = srcs[rnd_below(sizeof(srcs))],
			.consent_date = CONSENT_DATE_MIN + (int64_t)rnd_below(3),
		};
		CHECK(index_apply_writer(ix, &key, &b) == INDEX_INSERTED);
		int r = index_apply_writer(ix, &key, &a);
		CHECKF((r == INDEX_UPDATED) == consent_value_newer(&a, &b),
		       "a %d/%d/%" PRId64 " b %d/%d/%" PRId64 ": index %d",
		       a.status, a.source, a.consent_date, b.status, b.source,
		       b.consent_date, r);
		if (i % 1000 == 999) {
			index_destroy(ix);
			ix = NULL;
			CHECK(index_create(1024, NULL, &ix) == 0);
			if (!ix)
				return;
		}
	}
	index_destroy(ix);
}

int main(void)
{
	RUN(test_canonical_bytes);
	RUN(test_order_rule_matches_index);
	RUN(test_property);
	if (dir[0])
		rm_dir(dir);
	return check_summary();
}
