/*
 * loadgen_keys: which keys the load generator asks about, and what the
 * answer must be.
 *
 * A request of one check draws a present record i (share --hit-ratio) or
 * an absent key j from synth_absent, each with the chosen skew over
 * [0, records). A request of several checks is a campaign: one brand, one
 * channel, one recipient type, as a gateway sends them (and as MCHECK
 * requires). For those, a pool of present and of absent keys is sampled at
 * start-up and grouped by (brand, channel, type): the first check of a
 * batch picks the group (among groups holding at least a batch of each
 * kind, when there are such), the others are drawn from that group's
 * present or absent members, distinct within the batch as a campaign's
 * list is. A group short of one kind lends the other, so the hit ratio
 * actually sent is counted and reported, not assumed.
 *
 * The expected answers follow DESIGN §1.3 with the default policy and
 * fresh data, written out here rather than calling core/decision.c: the
 * bench checks the server, not itself.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/loadgen.h"
#include "core/enums.h"

/* ---- rng: xoshiro256** seeded through splitmix64 ----------------------- */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void lg_rng_seed(struct lg_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t lg_rng_next(struct lg_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double lg_rng_unit(struct lg_rng *r)
{
	return (double)(lg_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t lg_rng_below(struct lg_rng *r, uint64_t n)
{
	/* Lemire's multiply-shift; the bias (n / 2^64) is far below noise. */
	return (uint64_t)(((unsigned __int128)lg_rng_next(r) * n) >> 64);
}

/* ---- Zipf by rejection-inversion ---------------------------------------
 * After Apache Commons RNG's RejectionInversionZipfSampler: h(x) = x^-s,
 * H its integral; draw u uniformly in [H(n + 1/2), H(3/2) - 1], invert,
 * round, and accept unless the rounding left the hat. Expected draws per
 * sample are close to 1 for any n. */

static double zipf_helper1(double x) /* log1p(x) / x */
{
	return fabs(x) > 1e-8 ? log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x));
}

static double zipf_helper2(double x) /* expm1(x) / x */
{
	return fabs(x) > 1e-8 ? expm1(x) / x :
				1 + x * 0.5 * (1 + x * (1.0 / 3) * (1 + 0.25 * x));
}

static double zipf_h(double s, double x)
{
	return exp(-s * log(x));
}

static double zipf_hint(double s, double x)
{
	double lx = log(x);
	return zipf_helper2((1 - s) * lx) * lx;
}

static double zipf_hint_inv(double s, double x)
{
	double t = x * (1 - s);
	if (t < -1)
		t = -1; /* rounding guard, as in the original */
	return exp(zipf_helper1(t) * x);
}

void lg_zipf_init(struct lg_zipf *z, uint64_t n, double exponent)
{
	z->n = n;
	z->s = exponent;
	z->h_x1 = zipf_hint(exponent, 1.5) - 1;
	z->h_n = zipf_hint(exponent, (double)n + 0.5);
	z->s_div = 2 - zipf_hint_inv(exponent,
				     zipf_hint(exponent, 2.5) - zipf_h(exponent, 2));
}

uint64_t lg_zipf_draw(const struct lg_zipf *z, struct lg_rng *r)
{
	for (int tries = 0; tries < 1000; tries++) {
		double u = z->h_n + lg_rng_unit(r) * (z->h_x1 - z->h_n);
		double x = zipf_hint_inv(z->s, u);
		uint64_t k = (uint64_t)(x + 0.5);
		if (k < 1)
			k = 1;
		else if (k > z->n)
			k = z->n;
		if ((double)k - x <= z->s_div ||
		    u >= zipf_hint(z->s, (double)k + 0.5) - zipf_h(z->s, (double)k))
			return k - 1;
	}
	return 0; /* unreachable in practice: acceptance is ~1 per draw */
}

#define LG_ZIPF_EXPONENT 0.99

/* ---- expected answers (DESIGN §1.3, default policy) -------------------- */

void lg_expect_present(uint64_t i, const struct synth_record *rec,
		       struct lg_expect *out)
{
	out->key = i;
	out->status = rec->status;
	out->source = rec->source;
	out->consent_date = rec->consent_date;
	if (rec->status == STATUS_ONAY) { /* row 5 */
		out->allow = 1;
		out->reason = REASON_CONSENT_GIVEN;
	} else { /* row 6 */
		out->allow = 0;
		out->reason = REASON_CONSENT_REJECTED;
	}
}

void lg_expect_absent(uint64_t j, const struct synth_record *rec,
		      struct lg_expect *out)
{
	out->key = LG_KEY_ABSENT | j;
	out->status = 0;
	out->source = 0;
	out->consent_date = 0;
	if (rec->rtype == RTYPE_TACIR) { /* row 7, merchant default allow */
		out->allow = 1;
		out->reason = REASON_MERCHANT_NO_REJECTION;
	} else { /* row 8 */
		out->allow = 0;
		out->reason = REASON_NO_CONSENT;
	}
}

/* ---- pools for campaign batches ---------------------------------------- */

struct lg_group {
	uint64_t key;      /* brand << 16 | channel << 8 | rtype; 0 = empty slot */
	uint32_t id;
};

/* One pool (present or absent keys), in sampling order, with a grouped
 * view: members[off[g] .. off[g + 1]) are the positions of group g's keys
 * in sampling order, ascending. */
struct lg_pool {
	uint64_t n;
	uint64_t *index;   /* record index i or absent index j, sampling order */
	uint32_t *gid;     /* the group of each */
	uint32_t *members; /* grouped positions */
	uint32_t *off;     /* n_groups + 1 offsets into members */
	struct lg_zipf zipf;
};

struct lg_keys {
	struct lg_keys_config cfg;
	struct lg_zipf zipf_all; /* over [0, records) */
	uint32_t n_groups;
	struct lg_pool present;
	struct lg_pool absent;
	uint8_t *roomy;   /* per group: a batch of each kind without repeats */
	bool any_roomy;
};

/* Tries to find a first key in a roomy group, and distinct keys in a
 * batch; past these, repeats are accepted (tiny datasets). */
#define LG_GROUP_TRIES 64
#define LG_DISTINCT_TRIES 16
#define LG_DISTINCT_MAX 1000 /* larger batches skip the O(K^2) check */

static uint64_t group_key(const struct synth_record *rec)
{
	return (uint64_t)rec->brand_code << 16 | (uint64_t)rec->channel << 8 |
	       rec->rtype;
}

/* A small open-addressing map from group key to dense id. */
struct group_map {
	struct lg_group *slots;
	uint32_t cap; /* power of two */
	uint32_t n;
};

static int group_map_id(struct group_map *m, uint64_t key, uint32_t *id)
{
	if ((m->n + 1) * 2 > m->cap) {
		uint32_t ncap = m->cap ? m->cap * 2 : 1024;
		struct lg_group *ns = calloc(ncap, sizeof(*ns));
		if (!ns)
			return -ENOMEM;
		for (uint32_t i = 0; i < m->cap; i++) {
			if (!m->slots[i].key)
				continue;
			uint32_t h = (uint32_t)(m->slots[i].key * 0x9e3779b97f4a7c15ull >> 32);
			while (ns[h & (ncap - 1)].key)
				h++;
			ns[h & (ncap - 1)] = m->slots[i];
		}
		free(m->slots);
		m->slots = ns;
		m->cap = ncap;
	}
	uint32_t h = (uint32_t)(key * 0x9e3779b97f4a7c15ull >> 32);
	for (;; h++) {
		struct lg_group *s = &m->slots[h & (m->cap - 1)];
		if (s->key == key) {
			*id = s->id;
			return 0;
		}
		if (!s->key) {
			s->key = key;
			s->id = m->n++;
			*id = s->id;
			return 0;
		}
	}
}

static void pool_fini(struct lg_pool *p)
{
	free(p->index);
	free(p->gid);
	free(p->members);
	free(p->off);
	memset(p, 0, sizeof(*p));
}

/* Samples the pool's keys and their groups (pass 1). */
static int pool_sample(struct lg_keys *k, struct lg_pool *p, bool absent,
		       uint64_t n, struct group_map *map, struct lg_rng *rng)
{
	p->n = n;
	p->index = malloc((n ? n : 1) * sizeof(*p->index));
	p->gid = malloc((n ? n : 1) * sizeof(*p->gid));
	if (!p->index || !p->gid)
		return -ENOMEM;
	uint64_t records = k->cfg.records;
	struct synth_record rec;
	for (uint64_t x = 0; x < n; x++) {
		uint64_t idx;
		if (absent) {
			idx = x;
			synth_absent(k->cfg.seed, records, idx, &rec);
		} else {
			/* The whole dataset when it fits, in order, so that
			 * Zipf's hot ranks are the same keys as for batch 1. */
			idx = n == records ? x : lg_rng_below(rng, records);
			synth_record(k->cfg.seed, records, idx, &rec);
		}
		p->index[x] = idx;
		int rc = group_map_id(map, group_key(&rec), &p->gid[x]);
		if (rc < 0)
			return rc;
	}
	lg_zipf_init(&p->zipf, n ? n : 1, LG_ZIPF_EXPONENT);
	return 0;
}

/* Builds the grouped view once every group is known (pass 2). */
static int pool_group(struct lg_pool *p, uint32_t n_groups)
{
	p->off = calloc((size_t)n_groups + 1, sizeof(*p->off));
	p->members = malloc((p->n ? p->n : 1) * sizeof(*p->members));
	if (!p->off || !p->members)
		return -ENOMEM;
	for (uint64_t x = 0; x < p->n; x++)
		p->off[p->gid[x] + 1]++;
	for (uint32_t g = 0; g < n_groups; g++)
		p->off[g + 1] += p->off[g];
	uint32_t *fill = malloc(((size_t)n_groups + 1) * sizeof(*fill));
	if (!fill)
		return -ENOMEM;
	memcpy(fill, p->off, ((size_t)n_groups + 1) * sizeof(*fill));
	for (uint64_t x = 0; x < p->n; x++)
		p->members[fill[p->gid[x]]++] = (uint32_t)x;
	free(fill);
	return 0;
}

int lg_keys_create(const struct lg_keys_config *cfg, struct lg_keys **out)
{
	if (cfg->batch == 0 || cfg->hit_ratio < 0 || cfg->hit_ratio > 1)
		return -EINVAL;
	if (cfg->pool == 0 || cfg->pool > UINT32_MAX)
		return -EINVAL;
	struct lg_keys *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->cfg = *cfg;
	lg_zipf_init(&k->zipf_all, cfg->records ? cfg->records : 1,
		     LG_ZIPF_EXPONENT);
	if (cfg->batch == 1) {
		*out = k;
		return 0;
	}

	struct group_map map = { 0 };
	struct lg_rng rng;
	lg_rng_seed(&rng, cfg->seed ^ 0x706f6f6cull);
	uint64_t n = cfg->records < cfg->pool ? cfg->records : cfg->pool;
	/* As many absent keys as present ones, and enough of them for
	 * every group to get some even in a tiny dataset. */
	uint64_t n_absent = cfg->records > 4096 ? cfg->records : 4096;
	if (n_absent > cfg->pool)
		n_absent = cfg->pool;
	int rc = pool_sample(k, &k->present, false, n, &map, &rng);
	if (rc == 0)
		rc = pool_sample(k, &k->absent, true, n_absent, &map, &rng);
	k->n_groups = map.n;
	free(map.slots);
	if (rc == 0)
		rc = pool_group(&k->present, k->n_groups);
	if (rc == 0)
		rc = pool_group(&k->absent, k->n_groups);
	if (rc == 0) {
		k->roomy = calloc(k->n_groups ? k->n_groups : 1, 1);
		rc = k->roomy ? 0 : -ENOMEM;
	}
	for (uint32_t g = 0; rc == 0 && g < k->n_groups; g++) {
		uint32_t np = k->present.off[g + 1] - k->present.off[g];
		uint32_t na = k->absent.off[g + 1] - k->absent.off[g];
		k->roomy[g] = np >= cfg->batch && na >= cfg->batch;
		k->any_roomy |= k->roomy[g];
	}
	if (rc < 0) {
		lg_keys_destroy(k);
		return rc;
	}
	*out = k;
	return 0;
}

void lg_keys_destroy(struct lg_keys *keys)
{
	if (!keys)
		return;
	pool_fini(&keys->present);
	pool_fini(&keys->absent);
	free(keys->roomy);
	free(keys);
}

static uint64_t draw(const struct lg_keys *k, const struct lg_zipf *z,
		     uint64_t n, struct lg_rng *rng)
{
	if (k->cfg.skew == LG_SKEW_ZIPF)
		return lg_zipf_draw(z, rng);
	return lg_rng_below(rng, n);
}

static void make_check(const struct lg_keys *k, bool present, uint64_t idx,
		       struct lg_check *c)
{
	if (present) {
		synth_record(k->cfg.seed, k->cfg.records, idx, &c->rec);
		lg_expect_present(idx, &c->rec, &c->expect);
	} else {
		synth_absent(k->cfg.seed, k->cfg.records, idx, &c->rec);
		lg_expect_absent(idx, &c->rec, &c->expect);
	}
}

void lg_keys_check(const struct lg_keys *keys, uint64_t key,
		   struct lg_check *out)
{
	make_check(keys, !(key & LG_KEY_ABSENT), key & ~LG_KEY_ABSENT, out);
}

/* Draws a member of group g from pool p, with the run's skew over the
 * group's members (in sampling order, so hot keys stay hot). */
static uint64_t group_draw(const struct lg_keys *k, const struct lg_pool *p,
			   const struct lg_zipf *z, uint32_t g,
			   struct lg_rng *rng)
{
	uint32_t lo = p->off[g], cnt = p->off[g + 1] - lo;
	uint64_t r = k->cfg.skew == LG_SKEW_ZIPF && cnt > 1 ?
			     lg_zipf_draw(z, rng) : lg_rng_below(rng, cnt);
	return p->index[p->members[lo + r]];
}

static bool batch_has(const struct lg_check *out, uint32_t n, bool present,
		      uint64_t idx)
{
	uint64_t key = present ? idx : LG_KEY_ABSENT | idx;
	for (uint32_t i = 0; i < n; i++)
		if (out[i].expect.key == key)
			return true;
	return false;
}

uint32_t lg_keys_next(const struct lg_keys *k, struct lg_rng *rng,
		      struct lg_check *out)
{
	uint64_t records = k->cfg.records;
	double hr = k->cfg.hit_ratio;
	bool first_hit = records > 0 && lg_rng_unit(rng) < hr;

	if (k->cfg.batch == 1) {
		make_check(k, first_hit, draw(k, &k->zipf_all,
					      records ? records : 1, rng), out);
		return first_hit;
	}

	const struct lg_pool *fp = first_hit && k->present.n ? &k->present :
							      &k->absent;
	uint64_t pos = draw(k, &fp->zipf, fp->n, rng);
	for (int t = 1; t < LG_GROUP_TRIES && k->any_roomy &&
			!k->roomy[fp->gid[pos]]; t++)
		pos = draw(k, &fp->zipf, fp->n, rng);
	uint32_t g = fp->gid[pos];
	make_check(k, fp == &k->present, fp->index[pos], &out[0]);
	uint32_t hits = fp == &k->present;

	uint32_t np = k->present.n ? k->present.off[g + 1] - k->present.off[g] : 0;
	uint32_t na = k->absent.off[g + 1] - k->absent.off[g];
	struct lg_zipf zp, za;
	if (k->cfg.skew == LG_SKEW_ZIPF) {
		lg_zipf_init(&zp, np ? np : 1, LG_ZIPF_EXPONENT);
		lg_zipf_init(&za, na ? na : 1, LG_ZIPF_EXPONENT);
	}
	bool distinct = k->cfg.batch <= LG_DISTINCT_MAX;
	for (uint32_t x = 1; x < k->cfg.batch; x++) {
		bool hit = lg_rng_unit(rng) < hr;
		if (hit && !np)
			hit = false;
		else if (!hit && !na)
			hit = true;
		const struct lg_pool *p = hit ? &k->present : &k->absent;
		const struct lg_zipf *z = hit ? &zp : &za;
		uint64_t idx = group_draw(k, p, z, g, rng);
		for (int t = 1; distinct && t < LG_DISTINCT_TRIES &&
				batch_has(out, x, hit, idx); t++)
			idx = group_draw(k, p, z, g, rng);
		make_check(k, hit, idx, &out[x]);
		hits += hit;
	}
	return hits;
}
