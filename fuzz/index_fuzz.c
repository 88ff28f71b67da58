/*
 * index_fuzz: arbitrary bytes as an index file (index/table.c's
 * index_open), opened in both load modes through a memfd as
 * /proc/self/fd/N. Every outcome must be a clean -EPROTO with a message,
 * the same in both modes, or an index on which index_info, single and
 * batch lookups (which must agree), index_foreach (counting n_records)
 * and a few index_apply_writer calls work, with the same content in both
 * modes, and which index_write then writes and index_open reads back.
 *
 * Random bytes almost never pass the checksums, so there are two ways in:
 *  - an input of at least the 4096-byte header is a file: it is opened as
 *    it is, then once more with both XXH3-64 checksums recomputed, so that
 *    mutations of a valid seed reach the checks behind them;
 *  - a shorter input is a recipe (struct layout below) applied to one of
 *    a few valid small indexes built at start-up, the checksums recomputed
 *    afterwards unless the recipe says not to.
 * INDEX_FUZZ_WRITE_SEEDS=DIR writes the start-up indexes to DIR (seeds);
 * INDEX_FUZZ_VERBOSE=1 prints each open's verdict (to read a corpus).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/enums.h"
#include "index/table.h"

/* The file layout of index/table.c (struct index_file_header). */
#define HDR_BYTES 4096
#define BKT_BYTES 64
#define SLOT_BYTES 16
#define OFF_VERSION 8
#define OFF_HEADER_BYTES 12
#define OFF_BUCKET_BYTES 16
#define OFF_RESERVED0 20
#define OFF_N_BUCKETS 24
#define OFF_N_RECORDS 32
#define OFF_CAPACITY 40
#define OFF_GENERATION 48
#define OFF_WATERMARK 56
#define OFF_CREATED_AT 64
#define OFF_DATA_AS_OF 72
#define OFF_SECRET 80
#define OFF_BUCKETS_XXH3 272
#define OFF_HEADER_XXH3 280
#define DATE_MAX ((1LL << 31) - 1) /* seconds past INDEX_EPOCH, 31 bits */
/* The key bits of a val word (37-55 and the channel, 62-63; 56-61 are
 * the probe index and the overflow cells). */
#define KEYHI_MASK ((~0ULL << 37) & ~(0x3fULL << 56))

/*
 * Recipe (input shorter than the header):
 *   byte 0  bits 0-1 template; bit 2 keep header_xxh3 as the ops left it;
 *           bit 3 keep buckets_xxh3; bit 4 set n_buckets and capacity from
 *           the final length; bit 5 set n_records to the occupied slots;
 *           bits 6-7 error buffer: 0-1 256 bytes, 2 8 bytes, 3 NULL
 *   byte 1  length: bits 0-1 0 keep, 1 truncate to P % (len + 1), 2 extend
 *           by P % 1024 bytes, 3 add (int8)P buckets; bit 2 fill 0xff
 *   2-3     P, little-endian
 *   then    4-byte ops [op a b c], A = a | b << 8 (see apply_op)
 */
#define R_KEEP_HDR_SUM 0x04
#define R_KEEP_BKT_SUM 0x08
#define R_FIX_SIZES 0x10
#define R_FIX_RECORDS 0x20

#define N_TEMPLATES 4
#define MAX_DESCS 72
#define MAX_KEYS 48

/* One key of a template and the value a lookup must return for it. */
struct desc {
	struct recipient r;
	uint32_t brand;
	int rtype;
	int channel;
	struct consent_value v;
};

struct tmpl {
	uint8_t *bytes;
	size_t len;
	size_t n;
	struct desc d[MAX_DESCS];
};

static const struct {
	uint64_t capacity;
	size_t records;
} shapes[N_TEMPLATES] = {
	{ 0, 0 },    /* 2 buckets (the fewest: a prime), empty */
	{ 7, 7 },    /* 2 buckets at the limit */
	{ 24, 25 },  /* 7 buckets at the limit: long, wrapping probes */
	{ 100, 70 }, /* 29 buckets, 60% full */
};

static struct tmpl tmpls[N_TEMPLATES];
static int memfd = -1;
static bool verbose;
static char rt_dir[64]; /* where index_write's round trips go (tmpfs) */
static char memfd_path[64];
static const uint8_t source_list[] = { 0, 1, 12, 13, 32, 40, 63 };

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static void wr64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint64_t limit_for(uint64_t n_buckets)
{
	return n_buckets * 4 * 92 / 100;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static bool source_ok(uint8_t s)
{
	return s <= 13 || (s >= 32 && s <= 40) || s == SOURCE_OTHER;
}

static void gen_desc(unsigned t, size_t i, struct desc *d)
{
	static const uint32_t brands[] = { 1, 7, 16383, 16384, 123456,
					   0x3ffff, 0xfffffffe, 0xffffffff };
	memset(d, 0, sizeof(*d));
	d->brand = brands[(i + t) % 8];
	d->rtype = (i & 1) ? RTYPE_TACIR : RTYPE_BIREYSEL;
	if (i % 4 == 3) {
		d->r.kind = RECIPIENT_EMAIL;
		d->r.email_len = (uint16_t)snprintf(d->r.email,
			sizeof(d->r.email), "user%zu.t%u@example.com.tr", i, t);
		d->channel = CHANNEL_EPOSTA;
	} else {
		d->r.kind = RECIPIENT_PHONE;
		d->r.phone = i % 5 == 4 ? 999999999999999ULL - i
					: 905320000000ULL + i * 7919;
		d->channel = i % 4 == 1 ? CHANNEL_MESAJ : CHANNEL_ARAMA;
	}
	d->v.status = i % 3 == 0 ? STATUS_RET : STATUS_ONAY;
	d->v.source = source_list[i % sizeof(source_list)];
	d->v.consent_date = i == 0 ? INDEX_EPOCH
			    : i == 1 ? INDEX_EPOCH + DATE_MAX
				     : INDEX_EPOCH + 86400 * (int64_t)(i * 37 + 1);
}

static void key_of(const struct index *ix, const struct desc *d,
		   struct index_key *k)
{
	index_key_make(ix, &d->r, d->brand, d->rtype, d->channel, k);
}

static bool same_value(const struct consent_value *a,
		       const struct consent_value *b)
{
	return a->status == b->status && a->source == b->source &&
	       a->consent_date == b->consent_date;
}

/* Builds template t with index_create/apply/write and keeps its bytes. */
static void build_template(unsigned t)
{
	struct tmpl *tp = &tmpls[t];
	uint8_t secret[INDEX_SECRET_BYTES];
	struct index *ix;
	struct index_key k;

	for (size_t i = 0; i < sizeof(secret); i++)
		secret[i] = (uint8_t)(i * 37 + 11 + t);
	if (index_create(shapes[t].capacity, secret, &ix) != 0)
		abort();
	tp->n = shapes[t].records;
	for (size_t i = 0; i < tp->n; i++) {
		struct desc *d = &tp->d[i];
		gen_desc(t, i, d);
		key_of(ix, d, &k);
		struct consent_value older = d->v;
		older.consent_date -= 1;
		if (i % 3 == 2) { /* older first: insert, then update */
			if (index_apply_writer(ix, &k, &older) != INDEX_INSERTED ||
			    index_apply_writer(ix, &k, &d->v) != INDEX_UPDATED)
				abort();
		} else if (index_apply_writer(ix, &k, &d->v) != INDEX_INSERTED ||
			   index_apply_writer(ix, &k, &d->v) != INDEX_SKIPPED) {
			abort();
		}
	}
	index_set_meta_writer(ix, t + 1, 1000 + t, 1700000000, 1700000000 + t);

	char dir[] = "/tmp/index_fuzz.XXXXXX", path[64];
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(path, sizeof(path), "%s/index", dir);
	if (index_write(ix, path) != 0)
		abort();
	index_destroy(ix);
	FILE *f = fopen(path, "rb");
	struct stat st;
	if (f == NULL || fstat(fileno(f), &st) < 0)
		abort();
	tp->len = (size_t)st.st_size;
	tp->bytes = malloc(tp->len);
	if (tp->bytes == NULL || fread(tp->bytes, 1, tp->len, f) != tp->len)
		abort();
	fclose(f);
	unlink(path);
	rmdir(dir);

	const char *seeds = getenv("INDEX_FUZZ_WRITE_SEEDS");
	if (seeds != NULL) {
		snprintf(path, sizeof(path), "%.40s/template-%u", seeds, t);
		f = fopen(path, "wb");
		if (f == NULL || fwrite(tp->bytes, 1, tp->len, f) != tp->len)
			abort();
		fclose(f);
	}
}

static void load(const uint8_t *p, size_t len)
{
	if (ftruncate(memfd, 0) < 0)
		abort();
	size_t at = 0;
	while (at < len) {
		ssize_t n = pwrite(memfd, p + at, len - at, (off_t)at);
		if (n <= 0)
			abort();
		at += (size_t)n;
	}
}

/* ---- what an accepted index must do ---- */

struct visit {
	uint64_t count;
	uint64_t stop_at; /* return 7 at this entry; 0: never */
	uint64_t hash;
	size_t n_phones;
	struct index_entry phones[16];
};

static int visit(const struct index_entry *e, void *arg)
{
	struct visit *v = arg;

	if (e->channel < CHANNEL_ARAMA || e->channel > CHANNEL_EPOSTA ||
	    e->is_email != (e->channel == CHANNEL_EPOSTA))
		abort();
	if (e->is_email && (e->phone != 0 || e->brand_code != 0 || e->rtype))
		abort();
	if (!e->is_email && ((e->phone >> 50) != 0 ||
			     (e->rtype != RTYPE_BIREYSEL &&
			      e->rtype != RTYPE_TACIR)))
		abort();
	if ((e->value.status != STATUS_ONAY && e->value.status != STATUS_RET) ||
	    !source_ok(e->value.source) ||
	    e->value.consent_date < INDEX_EPOCH ||
	    e->value.consent_date > INDEX_EPOCH + DATE_MAX)
		abort();
	uint64_t f[8] = { e->is_email, e->phone, e->brand_code, e->rtype,
			  e->channel, e->value.status, e->value.source,
			  (uint64_t)e->value.consent_date };
	v->hash = XXH3_64bits_withSeed(f, sizeof(f), v->hash);
	if (!e->is_email && v->n_phones < 16)
		v->phones[v->n_phones++] = *e;
	if (++v->count == v->stop_at)
		return 7;
	return 0;
}

static uint64_t check_foreach(const struct index *ix, uint64_t n_records,
			      uint64_t *rng, struct visit *out)
{
	memset(out, 0, sizeof(*out));
	if (index_foreach(ix, visit, out) != 0 || out->count != n_records)
		abort();
	/* A visitor's non-zero return stops the walk and comes back. */
	struct visit s;
	memset(&s, 0, sizeof(s));
	s.stop_at = 1 + splitmix(rng) % (n_records + 2);
	int rc = index_foreach(ix, visit, &s);
	if (s.stop_at <= n_records ? (rc != 7 || s.count != s.stop_at)
				   : (rc != 0 || s.count != n_records))
		abort();
	return out->hash;
}

/* Looks every key up alone and as one batch; both must agree. */
static void lookup_all(const struct index *ix, const struct index_key *keys,
		       size_t n, struct consent_value *vals, bool *found)
{
	struct consent_value bv[MAX_KEYS];
	bool bf[MAX_KEYS];

	for (size_t i = 0; i < n; i++) {
		index_prefetch(ix, &keys[i]);
		found[i] = index_lookup(ix, &keys[i], &vals[i]);
	}
	index_lookup_batch(ix, keys, n, bv, bf);
	for (size_t i = 0; i < n; i++)
		if (bf[i] != found[i] ||
		    (found[i] && !same_value(&bv[i], &vals[i])))
			abort();
}

static void random_desc(uint64_t *rng, struct desc *d)
{
	uint64_t r = splitmix(rng);
	memset(d, 0, sizeof(*d));
	d->brand = (uint32_t)(r >> 32);
	d->rtype = (r & 1) ? RTYPE_TACIR : RTYPE_BIREYSEL;
	if ((r & 6) == 6) {
		d->r.kind = RECIPIENT_EMAIL;
		d->r.email_len = (uint16_t)snprintf(d->r.email,
			sizeof(d->r.email), "r%llu@x.tr",
			(unsigned long long)(r >> 40));
		d->channel = CHANNEL_EPOSTA;
	} else {
		d->r.kind = RECIPIENT_PHONE;
		d->r.phone = splitmix(rng) % 1000000000000000ULL;
		d->channel = (r & 8) ? CHANNEL_MESAJ : CHANNEL_ARAMA;
	}
}

/* A few applies: each result must match what lookups see afterwards. */
static void check_writer(struct index *ix, const struct tmpl *tp,
			 uint64_t *rng)
{
	int n_w = 1 + (int)(splitmix(rng) % 6);

	for (int w = 0; w < n_w; w++) {
		struct desc d;
		struct index_key k;
		struct consent_value v, got;
		struct index_info a, b;
		uint64_t r = splitmix(rng);

		if (tp->n > 0 && r % 3 == 0)
			d = tp->d[(r >> 8) % tp->n];
		else
			random_desc(rng, &d);
		r = splitmix(rng);
		v.status = (r & 1) ? STATUS_RET : STATUS_ONAY;
		v.source = source_list[(r >> 1) % sizeof(source_list)];
		v.consent_date = INDEX_EPOCH + (int64_t)((r >> 8) %
							 (DATE_MAX + 1));
		bool invalid = (r >> 60) == 0;
		if (invalid) {
			switch ((r >> 56) & 3) {
			case 0: v.status = (r & 1) ? STATUS_NONE : 3; break;
			case 1: v.consent_date = INDEX_EPOCH - 1; break;
			case 2: v.consent_date = INDEX_EPOCH + DATE_MAX + 1; break;
			default: /* a phone key on EPOSTA is never stored */
				d.r.kind = RECIPIENT_PHONE;
				d.channel = CHANNEL_EPOSTA;
				break;
			}
		}
		key_of(ix, &d, &k);
		index_info(ix, &a);
		int rc = index_apply_writer(ix, &k, &v);
		index_info(ix, &b);
		bool hit = index_lookup(ix, &k, &got);
		if (invalid) {
			if (rc != -EINVAL || b.n_records != a.n_records)
				abort();
			continue;
		}
		switch (rc) {
		case INDEX_INSERTED:
			if (a.n_records >= a.capacity ||
			    b.n_records != a.n_records + 1 || !hit ||
			    !same_value(&got, &v))
				abort();
			break;
		case INDEX_UPDATED:
			if (b.n_records != a.n_records || !hit ||
			    !same_value(&got, &v))
				abort();
			break;
		case INDEX_SKIPPED:
			if (b.n_records != a.n_records || !hit ||
			    got.consent_date < v.consent_date)
				abort();
			break;
		case -ENOSPC:
			if (a.n_records < a.capacity ||
			    b.n_records != a.n_records)
				abort();
			break;
		default:
			abort();
		}
	}
}

/* What open accepted and the writer changed, index_write writes and
 * index_open reads back the same. */
static void round_trip(const struct index *ix, const struct index_info *info,
		       uint64_t hash, uint64_t *rng)
{
	char path[96], err[256] = "";
	struct index *back = NULL;
	struct index_info bi;
	struct visit v;

	snprintf(path, sizeof(path), "%s/index", rt_dir);
	if (index_write(ix, path) != 0 ||
	    index_open(path, INDEX_LOAD_MMAP, &back, err, sizeof(err)) != 0)
		abort();
	index_info(back, &bi);
	if (bi.n_records != info->n_records || bi.n_buckets != info->n_buckets ||
	    bi.capacity != info->capacity || bi.generation != info->generation ||
	    bi.watermark != info->watermark ||
	    bi.created_at != info->created_at ||
	    bi.data_as_of != info->data_as_of ||
	    check_foreach(back, bi.n_records, rng, &v) != hash)
		abort();
	index_destroy(back);
	unlink(path);
}

static void remove_rt_dir(void)
{
	rmdir(rt_dir);
}

/* The template whose secret and bucket array file has, or -1. */
static int intact_template(const uint8_t *file, size_t len)
{
	for (int t = 0; t < N_TEMPLATES; t++)
		if (tmpls[t].len == len &&
		    memcmp(file + OFF_SECRET, tmpls[t].bytes + OFF_SECRET,
			   INDEX_SECRET_BYTES) == 0 &&
		    memcmp(file + HDR_BYTES, tmpls[t].bytes + HDR_BYTES,
			   len - HDR_BYTES) == 0)
			return t;
	return -1;
}

struct outcome {
	int rc;
	char msg[256];
	uint64_t hash_before; /* foreach hash as opened */
	uint64_t hash_after;  /* and after the writer's applies */
};

static void exercise(struct index *ix, enum index_load_mode mode,
		     const uint8_t *file, size_t len, unsigned t,
		     uint64_t seed, struct outcome *res)
{
	struct index_info info;
	uint64_t rng = seed;

	/* Accepted: the header's sizes must describe the file exactly. */
	index_info(ix, &info);
	if (len < HDR_BYTES + BKT_BYTES || (len - HDR_BYTES) % BKT_BYTES)
		abort();
	uint64_t nb = (len - HDR_BYTES) / BKT_BYTES;
	if (info.n_buckets != nb || info.bytes != nb * BKT_BYTES ||
	    info.capacity != limit_for(nb) || info.capacity >= nb * 4 ||
	    info.n_records > info.capacity ||
	    info.n_records != rd64(file + OFF_N_RECORDS) ||
	    info.generation != rd64(file + OFF_GENERATION) ||
	    info.watermark != rd64(file + OFF_WATERMARK) ||
	    info.created_at != (int64_t)rd64(file + OFF_CREATED_AT) ||
	    info.data_as_of != (int64_t)rd64(file + OFF_DATA_AS_OF) ||
	    (mode == INDEX_LOAD_MMAP && info.huge_pages))
		abort();

	struct visit v;
	res->hash_before = check_foreach(ix, info.n_records, &rng, &v);

	int it = intact_template(file, len);
	const struct tmpl *tp = &tmpls[it >= 0 ? (unsigned)it : t];
	struct index_key keys[MAX_KEYS];
	struct consent_value vals[MAX_KEYS];
	bool found[MAX_KEYS];
	size_t n = 0;

	/* An untouched bucket array: every template record is there. */
	if (it >= 0) {
		if (v.count != tp->n)
			abort();
		for (size_t i = 0; i < tp->n; i += MAX_KEYS) {
			size_t m = tp->n - i < MAX_KEYS ? tp->n - i : MAX_KEYS;
			for (size_t j = 0; j < m; j++)
				key_of(ix, &tp->d[i + j], &keys[j]);
			lookup_all(ix, keys, m, vals, found);
			for (size_t j = 0; j < m; j++)
				if (!found[j] ||
				    !same_value(&vals[j], &tp->d[i + j].v))
					abort();
		}
	}

	/* Phones come back whole from foreach: look them up again. */
	for (size_t i = 0; i < v.n_phones; i++) {
		const struct index_entry *e = &v.phones[i];
		struct recipient r = { .kind = RECIPIENT_PHONE,
				       .phone = e->phone };
		index_key_make(ix, &r, e->brand_code, e->rtype, e->channel,
			       &keys[n++]);
	}
	size_t n_entries = n;
	for (int i = 0; i < 12 && tp->n > 0; i++)
		key_of(ix, &tp->d[splitmix(&rng) % tp->n], &keys[n++]);
	for (int i = 0; i < 6; i++) {
		struct desc d;
		random_desc(&rng, &d);
		key_of(ix, &d, &keys[n++]);
	}
	/* Keys this index did not make: any hash, any key bits. */
	for (int i = 0; i < 4; i++) {
		keys[n].bits[0] = splitmix(&rng);
		keys[n].bits[1] = splitmix(&rng) & KEYHI_MASK;
		keys[n++].hash = splitmix(&rng);
	}
	lookup_all(ix, keys, n, vals, found);
	if (it >= 0)
		for (size_t i = 0; i < n_entries; i++)
			if (!found[i] || !same_value(&vals[i], &v.phones[i].value))
				abort();

	check_writer(ix, tp, &rng);
	index_info(ix, &info);
	res->hash_after = check_foreach(ix, info.n_records, &rng, &v);
	if (mode == INDEX_LOAD_ANON)
		round_trip(ix, &info, res->hash_after, &rng);
}

/* Opens the memfd in one mode and checks whatever comes back. */
static void open_one(enum index_load_mode mode, unsigned err_mode,
		     const uint8_t *file, size_t len, unsigned t,
		     uint64_t seed, struct outcome *res)
{
	size_t cap = err_mode <= 1 ? 256 : err_mode == 2 ? 8 : 0;
	char *err = cap ? malloc(cap) : NULL; /* exact size: ASan sees more */
	struct index *ix = NULL;

	if (err != NULL)
		memset(err, 'x', cap);
	memset(res, 0, sizeof(*res));
	res->rc = index_open(memfd_path, mode, &ix, err, cap);
	if (res->rc < 0) {
		/* Content faults are -EPROTO; -ENOMEM only if memory ran out. */
		if (res->rc != -EPROTO && res->rc != -ENOMEM)
			abort();
		if (err != NULL) {
			if (memchr(err, '\0', cap) == NULL || err[0] == '\0')
				abort();
			snprintf(res->msg, sizeof(res->msg), "%s", err);
		}
	} else {
		if (res->rc != 0 || ix == NULL)
			abort();
		exercise(ix, mode, file, len, t, seed, res);
		index_destroy(ix);
	}
	free(err);
}

/* Both modes must agree on the verdict, the message and the content. */
static void open_both(const uint8_t *file, size_t len, unsigned t,
		      unsigned err_mode, uint64_t seed)
{
	struct outcome a, m;

	load(file, len);
	open_one(INDEX_LOAD_ANON, err_mode, file, len, t, seed, &a);
	open_one(INDEX_LOAD_MMAP, err_mode, file, len, t, seed, &m);
	if (verbose)
		fprintf(stderr, "index_fuzz: %zu bytes: rc %d %s\n", len, a.rc,
			a.rc == 0 ? "(accepted)" : a.msg);
	if (a.rc != m.rc || strcmp(a.msg, m.msg) != 0 ||
	    a.hash_before != m.hash_before || a.hash_after != m.hash_after)
		abort();
}

static void fix_checksums(uint8_t *f, size_t len, bool header, bool buckets)
{
	if (buckets && len >= HDR_BYTES)
		wr64(f + OFF_BUCKETS_XXH3,
		     XXH3_64bits(f + HDR_BYTES, len - HDR_BYTES));
	if (header && len >= OFF_HEADER_XXH3 + 8)
		wr64(f + OFF_HEADER_XXH3, XXH3_64bits(f, OFF_HEADER_XXH3));
}

/* ---- recipes ---- */

static const uint32_t field_off[] = {
	0, OFF_VERSION, OFF_HEADER_BYTES, OFF_BUCKET_BYTES, OFF_RESERVED0,
	OFF_N_BUCKETS, OFF_N_RECORDS, OFF_CAPACITY, OFF_GENERATION,
	OFF_WATERMARK, OFF_CREATED_AT, OFF_DATA_AS_OF, OFF_BUCKETS_XXH3,
	OFF_HEADER_XXH3,
};
#define N_FIELDS (sizeof(field_off) / sizeof(field_off[0]))

static uint64_t interesting(uint8_t b, const uint8_t *f, size_t len)
{
	uint64_t nb = len >= OFF_N_BUCKETS + 8 ? rd64(f + OFF_N_BUCKETS) : 0;
	uint64_t nr = len >= OFF_N_RECORDS + 8 ? rd64(f + OFF_N_RECORDS) : 0;
	const uint64_t v[] = {
		0, 1, 2, 3, 4, 63, 64, 65, 4095, 4096, 4097,
		nb, nb * 4, limit_for(nb), nr, limit_for(nb) + 1,
		UINT32_MAX, 1ULL << 32, INT64_MAX, 1ULL << 63, UINT64_MAX,
		UINT64_MAX / 64, UINT64_MAX / 64 + 1, UINT64_MAX / 4 + 1,
		1ULL << 58,
	};
	return v[b % (sizeof(v) / sizeof(v[0]))];
}

/* Slot i's two words: key at +0, val at +8. */
static uint8_t *slot_at(uint8_t *f, uint64_t i)
{
	return f + HDR_BYTES + i * SLOT_BYTES;
}

static void apply_op(uint8_t *f, size_t len, const uint8_t op[4])
{
	uint32_t a = op[1] | (uint32_t)op[2] << 8;
	uint8_t c = op[3];
	uint64_t n_slots = len > HDR_BYTES ? (len - HDR_BYTES) / SLOT_BYTES : 0;

	switch (op[0] & 7) {
	case 1: { /* a header field := an interesting value + (int8)c */
		uint32_t off = field_off[op[1] % N_FIELDS];
		uint64_t val = interesting(op[2], f, len) + (uint64_t)(int64_t)(int8_t)c;
		bool wide = off == 0 || off >= OFF_N_BUCKETS;
		if (off + (wide ? 8u : 4u) > len)
			return;
		if (wide) {
			wr64(f + off, val);
		} else {
			uint32_t v32 = (uint32_t)val;
			memcpy(f + off, &v32, 4);
		}
		return;
	}
	case 2: { /* one slot's fields */
		if (n_slots == 0)
			return;
		uint8_t *s = slot_at(f, a % n_slots);
		uint8_t *o = slot_at(f, (a % n_slots + 1 + (c >> 3)) % n_slots);
		uint64_t val = rd64(s + 8), x = c >> 3;
		uint8_t tmp[SLOT_BYTES];
		switch (c & 7) {
		case 0: /* source code */
			wr64(s + 8, (val & ~(0x1fULL << 1)) | (x & 0x1f) << 1);
			break;
		case 1: /* channel */
			wr64(s + 8, (val & ~(3ULL << 62)) | (x & 3) << 62);
			break;
		case 2: /* date */
			x = x == 0 ? 0 : x == 1 ? DATE_MAX : x * 0x3456789;
			wr64(s + 8, (val & ~(DATE_MAX << 6)) |
				    (x & DATE_MAX) << 6);
			break;
		case 3: /* empty the slot: a hole in front of later ones */
			memset(s, 0, SLOT_BYTES);
			break;
		case 4: /* val only: a key word in an empty slot */
			wr64(s + 8, 0);
			break;
		case 5: /* copy another slot: a duplicate key */
			memcpy(s, o, SLOT_BYTES);
			break;
		case 6: /* swap with another slot: a key off its path */
			memcpy(tmp, s, SLOT_BYTES);
			memcpy(s, o, SLOT_BYTES);
			memcpy(o, tmp, SLOT_BYTES);
			break;
		default: /* flip key bits */
			wr64(s + (x & 1) * 8, rd64(s + (x & 1) * 8) ^
					      1ULL << (x * 2 % 64));
			break;
		}
		return;
	}
	case 3: { /* add (int8)c to an aligned word */
		if (len < 8)
			return;
		uint32_t off = (uint32_t)((a % (len - 7)) & ~7u);
		wr64(f + off, rd64(f + off) + (uint64_t)(int64_t)(int8_t)c);
		return;
	}
	case 4: /* set a byte */
		if (len > 0)
			f[a % len] = c;
		return;
	case 5: { /* swap two buckets */
		uint64_t nb = n_slots / 4;
		if (nb < 2)
			return;
		uint8_t tmp[BKT_BYTES];
		uint8_t *p = f + HDR_BYTES + (op[1] % nb) * BKT_BYTES;
		uint8_t *q = f + HDR_BYTES + (op[2] % nb) * BKT_BYTES;
		memcpy(tmp, p, BKT_BYTES);
		memmove(p, q, BKT_BYTES);
		memcpy(q, tmp, BKT_BYTES);
		return;
	}
	default: /* xor a byte */
		if (len > 0)
			f[a % len] ^= c;
		return;
	}
}

static void run_recipe(const uint8_t *data, size_t size, uint64_t seed)
{
	uint8_t flags = size > 0 ? data[0] : 0;
	uint8_t lop = size > 1 ? data[1] : 0;
	uint32_t p = (size > 2 ? data[2] : 0) |
		     (uint32_t)(size > 3 ? data[3] : 0) << 8;
	unsigned t = flags & 3;
	const struct tmpl *tp = &tmpls[t];
	size_t len = tp->len;

	switch (lop & 3) {
	case 1: len = p % (tp->len + 1); break;
	case 2: len = tp->len + p % 1024; break;
	case 3: {
		int64_t d = (int64_t)(int8_t)(uint8_t)p * BKT_BYTES;
		len = (int64_t)tp->len + d < HDR_BYTES ? HDR_BYTES
						       : (size_t)((int64_t)tp->len + d);
		break;
	}
	default: break;
	}
	/* Exactly len bytes, so a read past the file's end is an error. */
	uint8_t *f = malloc(len ? len : 1);
	if (f == NULL)
		abort();
	size_t keep = len < tp->len ? len : tp->len;
	memcpy(f, tp->bytes, keep);
	memset(f + keep, (lop & 4) ? 0xff : 0, len - keep);

	for (size_t i = 4; i + 4 <= size; i += 4)
		apply_op(f, len, data + i);
	if ((flags & R_FIX_SIZES) && len >= OFF_CAPACITY + 8) {
		uint64_t nb = len > HDR_BYTES ? (len - HDR_BYTES) / BKT_BYTES : 0;
		wr64(f + OFF_N_BUCKETS, nb);
		wr64(f + OFF_CAPACITY, limit_for(nb));
	}
	if ((flags & R_FIX_RECORDS) && len >= OFF_N_RECORDS + 8) {
		uint64_t occupied = 0;
		for (size_t off = HDR_BYTES; off + SLOT_BYTES <= len;
		     off += SLOT_BYTES)
			occupied += rd64(f + off + 8) != 0;
		wr64(f + OFF_N_RECORDS, occupied);
	}
	fix_checksums(f, len, !(flags & R_KEEP_HDR_SUM),
		      !(flags & R_KEEP_BKT_SUM));
	open_both(f, len, t, flags >> 6, seed);
	free(f);
}

/* Start-up: the templates, and that each opens whole in both modes. */
static void init(void)
{
	verbose = getenv("INDEX_FUZZ_VERBOSE") != NULL;
	memfd = memfd_create("index_fuzz", MFD_CLOEXEC);
	if (memfd < 0)
		abort();
	snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	snprintf(rt_dir, sizeof(rt_dir), "/dev/shm/index_fuzz.XXXXXX");
	if (mkdtemp(rt_dir) == NULL) {
		snprintf(rt_dir, sizeof(rt_dir), "/tmp/index_fuzz.XXXXXX");
		if (mkdtemp(rt_dir) == NULL)
			abort();
	}
	atexit(remove_rt_dir);
	for (unsigned t = 0; t < N_TEMPLATES; t++) {
		build_template(t);
		struct outcome a;
		load(tmpls[t].bytes, tmpls[t].len);
		open_one(INDEX_LOAD_ANON, 0, tmpls[t].bytes, tmpls[t].len, t,
			 t, &a);
		if (a.rc != 0)
			abort();
	}
	/* Not a regular file, and no file: errors with a message. */
	struct index *ix;
	char err[256] = "";
	if (index_open("/", INDEX_LOAD_ANON, &ix, err, sizeof(err)) != -EPROTO ||
	    err[0] == '\0')
		abort();
	err[0] = '\0';
	if (index_open("/nonexistent/index", INDEX_LOAD_MMAP, &ix, err,
		       sizeof(err)) != -ENOENT || err[0] == '\0')
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memfd < 0)
		init();
	uint64_t seed = XXH3_64bits(data, size);

	if (size < HDR_BYTES) {
		run_recipe(data, size, seed);
		return 0;
	}
	/* A file: as it is, then with its checksums made right. */
	uint8_t *f = malloc(size);
	if (f == NULL)
		abort();
	memcpy(f, data, size);
	open_both(f, size, (unsigned)(seed % N_TEMPLATES), 0, seed);
	uint64_t hs = rd64(f + OFF_HEADER_XXH3), bs = rd64(f + OFF_BUCKETS_XXH3);
	fix_checksums(f, size, true, true);
	if (rd64(f + OFF_HEADER_XXH3) != hs || rd64(f + OFF_BUCKETS_XXH3) != bs)
		open_both(f, size, (unsigned)(seed % N_TEMPLATES), 0, seed);
	free(f);
	return 0;
}
