/*
 * consentctl gen: the synthetic dataset (core/synth.h) as a snapshot
 * stream, or a change stream against it.
 *
 * Snapshot: header {format_version 1, changes false, sequence 0,
 * created_at SYNTH_NOW, origin "consentctl gen seed=S records=N",
 * record_count N}, then
 * records 0..N-1 in order, then the trailer.
 *
 * Change stream (--changes K [--from-sequence Q]): changes Q+1..Q+K, each
 * flipping ONAY<->RET on a record of the dataset (seed, N). Change s (0 for
 * sequence 1) takes record F(s mod N), F a fixed permutation of [0, N), so
 * K <= N changes touch K different records, and streams made with
 * consecutive ranges (Q=0 K=1000, then Q=1000 K=1000, ...) never flip a
 * record twice before every record was flipped once; past that the status
 * keeps alternating correctly. Change s is dated SYNTH_NOW + s + 1 seconds:
 * later than every record of the snapshot and than every earlier change,
 * so applying the streams in order never goes back in time.
 *
 * New keys (--new-keys K [--from-sequence Q]): changes Q+1..Q+K, each an
 * ONAY of a key no synthetic dataset holds, to grow a served table under
 * load (make bench): recipient +1 followed by the ten digits of
 * 2000000000 + s (synth makes Turkish numbers and e-mails only, so a load
 * generator's expected answers stay right while they are applied), MESAJ,
 * BIREYSEL, brand and İYS code of record s mod N, dated as the flips are.
 *
 * --threads T (default: the online cores) makes a snapshot's records on
 * T threads; the bytes are the same for every T (gen_snapshot_threads).
 * Change streams are made on one.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/enums.h"
#include "core/stream.h"
#include "core/synth.h"
#include "ctl/ctl.h"

static int gen_usage(void)
{
	fprintf(stderr, "usage: consentctl gen --records N [--seed S] "
			"[--changes K | --new-keys K [--from-sequence Q]] "
			"[--threads T] "
			"--out FILE|-\n");
	return 2;
}

static int parse_u64(const char *flag, const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	if (!s || !*s || *s == '-' || *s == '+') {
		fprintf(stderr, "consentctl gen: %s needs a number\n", flag);
		return -EINVAL;
	}
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end) {
		fprintf(stderr, "consentctl gen: %s: '%s' is not a number\n",
			flag, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static uint64_t gcd_u64(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* The record a change at position s flips: a stride permutation of
 * [0, n) (the stride is prime to n). */
static uint64_t change_target(uint64_t n, uint64_t s)
{
	uint64_t a = 0x9e3779b97f4a7c15ull % n;

	if (a == 0)
		a = 1;
	while (gcd_u64(a, n) != 1)
		a++;
	return (uint64_t)(((unsigned __int128)(s % n) * a + 12345) % n);
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

static int gen_snapshot(struct stream_writer *w, uint64_t seed, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		struct synth_record s;
		Consent__V1__Consent c;
		synth_record(seed, n, i, &s);
		to_consent(&s, &c);
		int rc = stream_writer_add(w, &c);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* ---- the snapshot on several threads ----
 *
 * Making and packing a record (synth_record, consent__v1__consent__pack)
 * is the work; packers do it a block of records at a time into a ring of
 * slots, block j into slot j % n_slots, and the calling thread hands the
 * packed consents to the stream writer in record order
 * (stream_writer_add_packed): batching and the checksum stay the
 * writer's, so the bytes are those of gen_snapshot. */

#define GEN_BLOCK 16384 /* records a packer makes at a time */
#define GEN_THREADS_MAX 256

struct gen_slot {
	uint64_t block;    /* the block it holds or is being filled with */
	bool ready;        /* filled; the writer's until it clears it */
	size_t n;          /* consents in it */
	uint32_t *len;     /* their packed lengths, GEN_BLOCK */
	uint8_t *bytes;    /* packed one after another */
	size_t cap;
	int rc;            /* a packer's -ENOMEM */
};

struct gen_par {
	uint64_t seed, n, n_blocks;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t next_block;   /* the next block a packer takes */
	uint64_t written;      /* blocks the writer is done with */
	bool stop;             /* the writer failed */
	size_t n_slots;
	struct gen_slot *slot;
};

static int gen_pack_block(struct gen_par *p, struct gen_slot *sl)
{
	uint64_t first = sl->block * GEN_BLOCK;
	uint64_t end = first + GEN_BLOCK < p->n ? first + GEN_BLOCK : p->n;
	size_t used = 0;

	sl->n = 0;
	for (uint64_t i = first; i < end; i++) {
		struct synth_record s;
		Consent__V1__Consent c;
		synth_record(p->seed, p->n, i, &s);
		to_consent(&s, &c);
		size_t size = consent__v1__consent__get_packed_size(&c);
		if (sl->cap - used < size) {
			size_t nc = sl->cap ? sl->cap * 2 : (size_t)GEN_BLOCK * 128;
			while (nc - used < size)
				nc *= 2;
			uint8_t *nb = realloc(sl->bytes, nc);
			if (nb == NULL)
				return -ENOMEM;
			sl->bytes = nb;
			sl->cap = nc;
		}
		sl->len[sl->n++] = (uint32_t)consent__v1__consent__pack(
			&c, sl->bytes + used);
		used += size;
	}
	return 0;
}

static void *gen_packer_main(void *arg)
{
	struct gen_par *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		if (p->stop || p->next_block == p->n_blocks)
			break;
		uint64_t j = p->next_block++;
		struct gen_slot *sl = &p->slot[j % p->n_slots];
		/* The slot is free once the writer is done with block
		 * j - n_slots, the one it held before. */
		while (!p->stop && j >= p->n_slots && p->written <= j - p->n_slots)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		pthread_mutex_unlock(&p->mu);
		sl->block = j;
		sl->rc = gen_pack_block(p, sl);
		pthread_mutex_lock(&p->mu);
		sl->ready = true;
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int gen_snapshot_threads(struct stream_writer *w, uint64_t seed,
				uint64_t n, unsigned threads)
{
	struct gen_par p = {
		.seed = seed, .n = n,
		.n_blocks = (n + GEN_BLOCK - 1) / GEN_BLOCK,
		.n_slots = 2 * (size_t)threads,
	};
	pthread_t th[threads];
	unsigned started = 0;
	int rc = 0;

	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	p.slot = calloc(p.n_slots, sizeof(*p.slot));
	if (p.slot == NULL)
		rc = -ENOMEM;
	for (size_t i = 0; rc == 0 && i < p.n_slots; i++) {
		p.slot[i].len = malloc(GEN_BLOCK * sizeof(uint32_t));
		if (p.slot[i].len == NULL)
			rc = -ENOMEM;
	}
	for (; rc == 0 && started < threads; started++) {
		int e = pthread_create(&th[started], NULL, gen_packer_main, &p);
		if (e != 0)
			rc = -e;
	}
	for (uint64_t j = 0; rc == 0 && j < p.n_blocks; j++) {
		struct gen_slot *sl = &p.slot[j % p.n_slots];
		pthread_mutex_lock(&p.mu);
		while (!(sl->ready && sl->block == j))
			pthread_cond_wait(&p.cv, &p.mu);
		pthread_mutex_unlock(&p.mu);
		rc = sl->rc;
		const uint8_t *m = sl->bytes;
		for (size_t i = 0; rc == 0 && i < sl->n; i++) {
			rc = stream_writer_add_packed(w, m, sl->len[i]);
			m += sl->len[i];
		}
		pthread_mutex_lock(&p.mu);
		sl->ready = false;
		p.written = j + 1;
		pthread_cond_broadcast(&p.cv);
		pthread_mutex_unlock(&p.mu);
	}
	pthread_mutex_lock(&p.mu);
	p.stop = true;
	pthread_cond_broadcast(&p.cv);
	pthread_mutex_unlock(&p.mu);
	for (unsigned t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	for (size_t i = 0; p.slot != NULL && i < p.n_slots; i++) {
		free(p.slot[i].len);
		free(p.slot[i].bytes);
	}
	free(p.slot);
	pthread_mutex_destroy(&p.mu);
	pthread_cond_destroy(&p.cv);
	return rc;
}

/* Change pos (sequence pos + 1) of s, its transaction id two hashes of
 * pos. */
static int gen_put_change(struct stream_writer *w, struct synth_record *s,
			  uint64_t seed, uint64_t pos)
{
	Consent__V1__Consent c;
	char txid[33];
	to_consent(s, &c);
	snprintf(txid, sizeof(txid), "%016" PRIx64 "%016" PRIx64,
		 XXH3_64bits_withSeed(&pos, sizeof(pos), seed),
		 XXH3_64bits_withSeed(&pos, sizeof(pos), ~seed));
	c.transaction_id = txid;
	c.sequence = pos + 1;
	return stream_writer_add(w, &c);
}

static int gen_changes(struct stream_writer *w, uint64_t seed, uint64_t n,
		       uint64_t from, uint64_t k)
{
	/* Sources for a flip, by the status it moves to. */
	static const uint8_t phone_ret[4] = { 38, 32, 13, 34 };
	static const uint8_t email_ret[4] = { 39, 13, 34, 36 };
	static const uint8_t phone_onay[4] = { 6, 7, 5, 10 };
	static const uint8_t email_onay[4] = { 6, 7, 9, 5 };

	for (uint64_t j = 0; j < k; j++) {
		uint64_t pos = from + j;
		struct synth_record s;
		synth_record(seed, n, change_target(n, pos), &s);
		/* The record was flipped once per pass over the dataset
		 * before this one; this change is flip number pos/n + 1. */
		bool flipped = (pos / n + 1) % 2 == 1;
		uint8_t status = s.status;
		if (flipped)
			status = status == STATUS_ONAY ? STATUS_RET : STATUS_ONAY;
		uint64_t h = XXH3_64bits_withSeed(&pos, sizeof(pos), seed);
		bool email = s.channel == CHANNEL_EPOSTA;
		const uint8_t *t = status == STATUS_RET ? (email ? email_ret : phone_ret)
							: (email ? email_onay : phone_onay);
		s.status = status;
		s.source = t[h & 3];
		s.consent_date = SYNTH_NOW + (int64_t)pos + 1;
		s.creation_date = s.consent_date + (int64_t)(h >> 8) % 5;
		int rc = gen_put_change(w, &s, seed, pos);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int gen_new_keys(struct stream_writer *w, uint64_t seed, uint64_t n,
			uint64_t from, uint64_t k)
{
	for (uint64_t j = 0; j < k; j++) {
		uint64_t pos = from + j;
		struct synth_record s;
		synth_record(seed, n, pos % n, &s); /* its brand, İYS code */
		snprintf(s.recipient, sizeof(s.recipient), "+1%010" PRIu64,
			 2000000000u + pos);
		s.channel = CHANNEL_MESAJ;
		s.rtype = RTYPE_BIREYSEL;
		s.status = STATUS_ONAY;
		s.source = 6; /* HS_WEB */
		s.consent_date = SYNTH_NOW + (int64_t)pos + 1;
		s.creation_date = s.consent_date;
		int rc = gen_put_change(w, &s, seed, pos);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int ctl_gen(int argc, char **argv)
{
	uint64_t n = 0, seed = 1, changes = 0, from = 0, threads = 0;
	bool have_n = false, have_changes = false, have_from = false;
	bool new_keys = false;
	const char *out = NULL;

	for (int i = 1; i < argc; i += 2) {
		/* Every flag takes a value. */
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		int rc = 0;
		if (strcmp(a, "--records") == 0) {
			rc = parse_u64(a, v, &n);
			have_n = true;
		} else if (strcmp(a, "--seed") == 0) {
			rc = parse_u64(a, v, &seed);
		} else if (strcmp(a, "--changes") == 0) {
			rc = parse_u64(a, v, &changes);
			have_changes = true;
		} else if (strcmp(a, "--new-keys") == 0) {
			rc = parse_u64(a, v, &changes);
			have_changes = true;
			new_keys = true;
		} else if (strcmp(a, "--from-sequence") == 0) {
			rc = parse_u64(a, v, &from);
			have_from = true;
		} else if (strcmp(a, "--threads") == 0) {
			rc = parse_u64(a, v, &threads);
			if (rc == 0 && (threads == 0 || threads > GEN_THREADS_MAX)) {
				fprintf(stderr, "consentctl gen: --threads is 1 to "
					"%d\n", GEN_THREADS_MAX);
				rc = -EINVAL;
			}
		} else if (strcmp(a, "--out") == 0) {
			if (!v) {
				fprintf(stderr, "consentctl gen: --out needs a file\n");
				return gen_usage();
			}
			out = v;
		} else {
			fprintf(stderr, "consentctl gen: unknown argument '%s'\n", a);
			return gen_usage();
		}
		if (rc < 0)
			return gen_usage();
	}
	if (!have_n || !out)
		return gen_usage();
	if (n > SYNTH_RECORDS_MAX) {
		fprintf(stderr, "consentctl gen: --records %" PRIu64
			" is over the dataset's limit of %llu\n", n,
			(unsigned long long)SYNTH_RECORDS_MAX);
		return 2;
	}
	if (have_from && !have_changes) {
		fprintf(stderr, "consentctl gen: --from-sequence needs --changes "
				"or --new-keys\n");
		return gen_usage();
	}
	if (have_changes && n == 0) {
		fprintf(stderr, "consentctl gen: changes need a dataset "
				"(--records > 0)\n");
		return 2;
	}
	if (new_keys && (from > 7000000000u || changes > 7000000000u - from)) {
		fprintf(stderr, "consentctl gen: --new-keys: at most 7e9 keys "
				"(ten digits after +1)\n");
		return 2;
	}
	if (have_changes && (from > UINT64_MAX / 2 || changes > UINT64_MAX / 2)) {
		fprintf(stderr, "consentctl gen: sequence out of range\n");
		return 2;
	}

	if (threads == 0) {
		long online = sysconf(_SC_NPROCESSORS_ONLN);
		threads = online < 1 ? 1 : online > GEN_THREADS_MAX
					     ? GEN_THREADS_MAX : (uint64_t)online;
	}

	int fd = ctl_open_out(out);
	if (fd < 0) {
		fprintf(stderr, "consentctl gen: %s: %s\n", out, strerror(-fd));
		return 1;
	}
	char origin[160];
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	if (have_changes) {
		snprintf(origin, sizeof(origin),
			 "consentctl gen seed=%" PRIu64 " records=%" PRIu64
			 " %s=%" PRIu64 " from-sequence=%" PRIu64,
			 seed, n, new_keys ? "new-keys" : "changes", changes, from);
		h.changes = true;
		h.sequence = from;
		h.created_at = SYNTH_NOW + (int64_t)(from + changes);
	} else {
		snprintf(origin, sizeof(origin),
			 "consentctl gen seed=%" PRIu64 " records=%" PRIu64, seed, n);
		h.created_at = SYNTH_NOW;
		/* Stated, so a build reading the stream from a pipe makes
		 * its table at once rather than staging 32 bytes a record
		 * (index/build.c): 32 GB at 10^9. */
		h.record_count = n;
	}
	h.origin = origin;

	struct stream_writer *w;
	int rc = stream_writer_create(fd, &h, STREAM_BATCH_DEFAULT, &w);
	if (rc == 0) {
		if (new_keys)
			rc = gen_new_keys(w, seed, n, from, changes);
		else if (have_changes)
			rc = gen_changes(w, seed, n, from, changes);
		else if (threads > 1 && n > GEN_BLOCK)
			rc = gen_snapshot_threads(w, seed, n, (unsigned)threads);
		else
			rc = gen_snapshot(w, seed, n);
		if (rc == 0)
			rc = stream_writer_finish(w);
		else
			stream_writer_destroy(w);
	}
	/* A file is synced before we say it is whole. */
	struct stat st;
	if (rc == 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    fsync(fd) < 0)
		rc = -errno;
	if (fd != STDOUT_FILENO && close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc < 0) {
		fprintf(stderr, "consentctl gen: %s: %s\n", out, strerror(-rc));
		return 1;
	}
	return 0;
}
