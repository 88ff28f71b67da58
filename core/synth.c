/*
 * synth: the deterministic synthetic dataset (see core/synth.h).
 *
 * How keys stay unique. Record i of (seed, n) takes the key index
 * k = P(i), P a keyed permutation of [0, n), so every k in [0, n) is used
 * exactly once (P only shuffles the order records come out in). The key
 * channel slot is t = k mod 10 (5 MESAJ, 3 ARAMA, 2 EPOSTA); k / 10 falls
 * into one contiguous range per brand, sized by the brand's Zipf weight,
 * so channel and brand shares are exact, not sampled. With q the offset
 * of k / 10 in its brand's range, the recipient number rid is the rank of
 * (q, t) among the brand's keys of t's channel (q * 5 + t for MESAJ, ...):
 * (brand, channel, rid) is a bijection of k. The recipient is then Q(rid), Q a keyed permutation of the phone (or
 * e-mail) space, formatted injectively: distinct rids give distinct
 * recipients, so distinct records have distinct keys whatever their
 * recipient type, which is just a function of k.
 *
 * Misses. Records only use rid < half the phone (e-mail) space, which
 * holds for n <= SYNTH_RECORDS_MAX (the biggest brand holds 13.3% of the
 * records, half of those are MESAJ: 2^31 * 0.067 = 1.4e8 < 2.1e8).
 * synth_absent takes rid from the upper half, so Q maps it onto a
 * recipient no record of that brand and channel has.
 *
 * Permutations are a 4-round unbalanced Feistel network over the smallest
 * power of two holding the domain, with cycle walking back into it (fewer
 * than two rounds of walking on average). Everything is integer
 * arithmetic on fixed-width types: the same on every machine.
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "core/decision.h"
#include "core/enums.h"
#include "core/synth.h"

#define IYS_LAUNCH 1590958800	/* 2020-06-01: records older than İYS
				 * were loaded into it after this */
#define DAY 86400

/* Seed tags: every use of the seed gets its own keys. */
enum {
	TAG_ORDER = 1,	/* record order: i -> k */
	TAG_PHONE,	/* phone numbers: rid -> number */
	TAG_EMAIL,	/* e-mail addresses: rid -> address */
	TAG_ATTR,	/* status, source, dates, recipient type */
	TAG_BRAND,	/* synth_brand draws */
	TAG_ABSENT,	/* synth_absent draws */
};

static uint64_t mix64(uint64_t x)
{
	/* splitmix64's finaliser: a bijection that spreads every bit. */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t hash2(uint64_t seed, uint64_t tag, uint64_t x)
{
	return mix64(mix64(seed ^ (tag * 0x9e3779b97f4a7c15ull)) + x);
}

/* ---- keyed permutations of [0, n) ---- */

struct perm {
	uint64_t n;
	unsigned rbits;
	uint64_t lmask, rmask;
	uint64_t key[4];
};

static void perm_init(struct perm *p, uint64_t seed, uint64_t tag, uint64_t n)
{
	unsigned bits = 2;

	while (bits < 64 && (1ull << bits) < n)
		bits++;
	p->n = n;
	p->rbits = bits / 2;
	p->rmask = (1ull << p->rbits) - 1;
	p->lmask = (1ull << (bits - p->rbits)) - 1;
	/* Round keys only need to differ: mix64 scrambles whatever it gets. */
	uint64_t base = hash2(seed, tag, 0x51ed2700u);
	for (int r = 0; r < 4; r++)
		p->key[r] = base + (uint64_t)r * 0x9e3779b97f4a7c15ull;
}

static uint64_t perm_apply(const struct perm *p, uint64_t x)
{
	/* Each round changes one half by a function of the other, so each
	 * round, and the network, is a bijection on the power-of-two space;
	 * walking until back inside [0, n) makes it one on [0, n). */
	do {
		uint64_t l = x >> p->rbits, r = x & p->rmask;
		l ^= mix64(r ^ p->key[0]) & p->lmask;
		r ^= mix64(l ^ p->key[1]) & p->rmask;
		l ^= mix64(r ^ p->key[2]) & p->lmask;
		r ^= mix64(l ^ p->key[3]) & p->rmask;
		x = l << p->rbits | r;
	} while (x >= p->n);
	return x;
}

/* ---- brands ---- */

/* cum[b] / 2^32 is the share of records in brands 0..b-1 (weight of brand
 * b is 1 / (b + 1), a Zipf skew). Integer arithmetic only, filled once. */
static uint64_t brand_cum[SYNTH_BRANDS + 1];
static pthread_once_t brand_once = PTHREAD_ONCE_INIT;

static void brand_init(void)
{
	uint64_t w[SYNTH_BRANDS + 1], total = 0;

	for (unsigned b = 0; b < SYNTH_BRANDS; b++) {
		w[b] = (1ull << 40) / (b + 1);
		total += w[b];
	}
	uint64_t acc = 0;
	for (unsigned b = 0; b < SYNTH_BRANDS; b++) {
		brand_cum[b] = (uint64_t)(((unsigned __int128)acc << 32) / total);
		acc += w[b];
	}
	brand_cum[SYNTH_BRANDS] = 1ull << 32;
}

uint32_t synth_brand_code(unsigned idx)
{
	/* 7368787 is prime to 9900000: distinct codes, 6 or 7 digits. */
	return 100000u + (uint32_t)(((uint64_t)idx * 7368787u + 1234567u) % 9900000u);
}

static uint32_t iys_code_of(unsigned idx)
{
	/* The 32 biggest brands have a provider each; smaller ones share
	 * one per four. 104729 is prime to 400000: distinct, 6 digits. */
	unsigned p = idx < 32 ? idx : 32 + (idx - 32) / 4;
	return 600000u + (uint32_t)(((uint64_t)p * 104729u + 4321u) % 400000u);
}

static uint64_t brand_start(uint64_t n, unsigned b)
{
	return (uint64_t)(((unsigned __int128)n * brand_cum[b]) >> 32);
}

/* The last b with cum[b] <= u (u < 2^32). */
static unsigned brand_of_share(uint64_t u)
{
	unsigned lo = 0, hi = SYNTH_BRANDS;

	while (hi - lo > 1) {
		unsigned mid = (lo + hi) / 2;
		if (brand_cum[mid] <= u)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* The brand whose range of [0, n) holds k, and k's offset in it. */
static unsigned brand_of_key(uint64_t n, uint64_t k, uint64_t *off)
{
	unsigned lo = 0, hi = SYNTH_BRANDS;

	while (hi - lo > 1) {
		unsigned mid = (lo + hi) / 2;
		if (brand_start(n, mid) <= k)
			lo = mid;
		else
			hi = mid;
	}
	*off = k - brand_start(n, lo);
	return lo;
}

uint32_t synth_brand(uint64_t seed, uint64_t j)
{
	pthread_once(&brand_once, brand_init);
	return synth_brand_code(brand_of_share(hash2(seed, TAG_BRAND, j) >> 32));
}

/* ---- recipients ---- */

/* 34 mobile prefixes (Türk Telekom 50x/55x, Turkcell 53x/561, Vodafone
 * 54x) and 8 landline area codes: 81% of numbers are mobile. */
static const uint16_t phone_prefix[] = {
	501, 502, 503, 504, 505, 506, 507, 551, 552, 553, 554, 555, 559,
	530, 531, 532, 533, 534, 535, 536, 537, 538, 539, 561,
	540, 541, 542, 543, 544, 545, 546, 547, 548, 549,
	212, 216, 232, 312, 224, 242, 322, 262,
};
#define N_PREFIX (sizeof(phone_prefix) / sizeof(phone_prefix[0]))
#define PHONE_SUBSCRIBERS 10000000ull
#define PHONE_SPACE (N_PREFIX * PHONE_SUBSCRIBERS)

static const char *const first_names[64] = {
	"ayse", "fatma", "emine", "hatice", "zeynep", "elif", "meryem",
	"sultan", "hanife", "zehra", "esra", "merve", "busra", "ozlem",
	"derya", "gamze", "ebru", "seda", "tugba", "ceren", "deniz", "burcu",
	"sibel", "yasemin", "melike", "irem", "ecem", "nur", "asli", "dilek",
	"gulsen", "songul", "mehmet", "mustafa", "ahmet", "ali", "huseyin",
	"hasan", "ibrahim", "ismail", "osman", "yusuf", "murat", "omer",
	"ramazan", "halil", "suleyman", "abdullah", "mahmut", "recep", "emre",
	"burak", "kemal", "serkan", "hakan", "volkan", "onur", "baris",
	"tolga", "cem", "kaan", "efe", "arda", "berk",
};

/* No first name + last name concatenation equals another (tested). */
static const char *const last_names[64] = {
	"yilmaz", "kaya", "demir", "sahin", "celik", "yildiz", "yildirim",
	"ozturk", "aydin", "ozdemir", "arslan", "dogan", "kilic", "aslan",
	"cetin", "kara", "koc", "kurt", "ozkan", "simsek", "polat", "ozcan",
	"korkmaz", "cakir", "erdogan", "yavuz", "acar", "aktas", "guler",
	"yalcin", "gunes", "bozkurt", "bulut", "keskin", "unal", "turan",
	"gul", "ozer", "isik", "kaplan", "avci", "sari", "tekin", "tas",
	"kose", "yuksel", "ates", "aksoy", "uysal", "tuncer", "karaca",
	"basaran", "coskun", "akin", "erdem", "sonmez", "ozgur", "toprak",
	"duman", "bayram", "ekinci", "altun", "tuna", "uzun",
};

static const char *const domains[16] = {
	"gmail.com", "hotmail.com", "yahoo.com", "outlook.com", "icloud.com",
	"yandex.com", "mynet.com", "hotmail.com.tr", "outlook.com.tr",
	"yahoo.com.tr", "windowslive.com", "live.com", "msn.com",
	"superonline.com", "ttmail.com", "turk.net",
};

/* "first.last", "firstlast", "first_last": only the first has a dot and
 * only the last an underscore, and names hold neither, so the format,
 * the names and (digits only at the end) the number all parse back. */
#define EMAIL_FORMATS 3
#define EMAIL_NUMBERS 1000 /* 0 means none, else 1..999 */
#define EMAIL_SPACE (64ull * 64 * EMAIL_FORMATS * EMAIL_NUMBERS * 16)

static char *put_str(char *p, const char *s)
{
	while (*s)
		*p++ = *s++;
	return p;
}

static char *put_digits(char *p, uint64_t v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + width;
}

static void format_phone(uint64_t x, char *out)
{
	char *p = out;

	*p++ = '+';
	*p++ = '9';
	*p++ = '0';
	p = put_digits(p, phone_prefix[x / PHONE_SUBSCRIBERS], 3);
	p = put_digits(p, x % PHONE_SUBSCRIBERS, 7);
	*p = '\0';
}

static void format_email(uint64_t x, char *out)
{
	unsigned dom = (unsigned)(x % 16);
	x /= 16;
	unsigned num = (unsigned)(x % EMAIL_NUMBERS);
	x /= EMAIL_NUMBERS;
	unsigned fmt = (unsigned)(x % EMAIL_FORMATS);
	x /= EMAIL_FORMATS;
	unsigned last = (unsigned)(x % 64);
	unsigned first = (unsigned)(x / 64);
	char *p = out;

	p = put_str(p, first_names[first]);
	if (fmt == 0)
		*p++ = '.';
	else if (fmt == 2)
		*p++ = '_';
	p = put_str(p, last_names[last]);
	if (num > 0)
		p = put_digits(p, num, num >= 100 ? 3 : num >= 10 ? 2 : 1);
	*p++ = '@';
	p = put_str(p, domains[dom]);
	*p = '\0';
}

/* ---- attributes ---- */

/* Sources by channel and status, 16 each, repeats giving the weights. */
static const uint8_t src_mesaj_onay[16] = { 6, 6, 6, 7, 7, 7, 8, 8, 1, 1, 2, 5, 3, 11, 33, 38 };
static const uint8_t src_arama_onay[16] = { 10, 10, 10, 6, 6, 7, 7, 1, 1, 2, 5, 3, 4, 11, 33, 6 };
static const uint8_t src_eposta_onay[16] = { 6, 6, 6, 7, 7, 9, 9, 5, 5, 1, 2, 3, 11, 34, 36, 6 };
static const uint8_t src_phone_ret[16] = { 38, 38, 32, 37, 34, 36, 33, 13, 13, 40, 35, 8, 6, 7, 10, 38 };
static const uint8_t src_eposta_ret[16] = { 39, 39, 34, 36, 35, 13, 13, 9, 6, 7, 34, 39, 36, 13, 9, 6 };

/* Everything but the key, from one hash of the key index. */
static void fill_attrs(uint64_t h, struct synth_record *out)
{
	uint64_t h2 = mix64(h ^ 0x6a09e667f3bcc908ull); /* for the delay */

	out->rtype = (h & 7) == 0 ? RTYPE_TACIR : RTYPE_BIREYSEL; /* 12.5% */
	h >>= 3;
	bool hs2015 = h % 50 == 0; /* 2% */
	h /= 50;
	bool ret = !hs2015 && h % 6 == 0; /* 1/6 of the rest */
	h /= 6;
	unsigned pick = (unsigned)(h & 15);
	h >>= 4;
	uint64_t span = SYNTH_NOW - CONSENT_DATE_MIN;

	out->status = ret ? STATUS_RET : STATUS_ONAY;
	if (hs2015) {
		out->source = SOURCE_HS_2015;
		out->consent_date = CONSENT_DATE_MIN;
	} else {
		const uint8_t *t;
		if (out->channel == CHANNEL_EPOSTA)
			t = ret ? src_eposta_ret : src_eposta_onay;
		else if (ret)
			t = src_phone_ret;
		else
			t = out->channel == CHANNEL_MESAJ ? src_mesaj_onay
							  : src_arama_onay;
		out->source = t[pick];
		out->consent_date = CONSENT_DATE_MIN + 1 + (int64_t)(h % span);
	}
	/* İYS recorded a consent within three days, or, for one older than
	 * İYS, in the months after it opened. Never past the dataset's now. */
	int64_t created = out->consent_date < IYS_LAUNCH
				  ? IYS_LAUNCH + (int64_t)(h2 % (180 * DAY))
				  : out->consent_date + (int64_t)(h2 % (3 * DAY));
	out->creation_date = created < SYNTH_NOW ? created : SYNTH_NOW;
	if (out->creation_date < out->consent_date)
		out->creation_date = out->consent_date;
}

/* The key for brand idx, channel slot t (o mod 10) and recipient number
 * rid; rid_base and space are where the recipient is drawn from. */
static void fill_key(uint64_t seed, unsigned idx, unsigned t, uint64_t rid,
		     struct synth_record *out)
{
	out->brand_code = synth_brand_code(idx);
	out->iys_code = iys_code_of(idx);
	struct perm q;
	if (t < 8) {
		out->channel = t < 5 ? CHANNEL_MESAJ : CHANNEL_ARAMA;
		perm_init(&q, seed, TAG_PHONE, PHONE_SPACE);
		format_phone(perm_apply(&q, rid), out->recipient);
	} else {
		out->channel = CHANNEL_EPOSTA;
		perm_init(&q, seed, TAG_EMAIL, EMAIL_SPACE);
		format_email(perm_apply(&q, rid), out->recipient);
	}
}

void synth_record(uint64_t seed, uint64_t n, uint64_t i, struct synth_record *out)
{
	pthread_once(&brand_once, brand_init);
	if (n == 0)
		n = 1; /* no records: any answer is as good */
	struct perm order;
	perm_init(&order, seed, TAG_ORDER, n);
	uint64_t k = perm_apply(&order, i % n);
	/* k -> (t, k / 10) is a bijection; the brand comes from k / 10 so
	 * that channel shares are exact even for brands with few records. */
	unsigned t = (unsigned)(k % 10);
	uint64_t q;
	unsigned idx = brand_of_key((n + 9) / 10, k / 10, &q);
	/* rid: the rank of (q, t) among this brand's keys of t's channel. */
	uint64_t rid = t < 5 ? q * 5 + t : t < 8 ? q * 3 + (t - 5) : q * 2 + (t - 8);

	memset(out, 0, sizeof(*out));
	fill_key(seed, idx, t, rid, out);
	fill_attrs(hash2(seed, TAG_ATTR, k), out);
}

void synth_absent(uint64_t seed, uint64_t n, uint64_t j, struct synth_record *out)
{
	(void)n; /* absent from every dataset of this seed up to the max */
	pthread_once(&brand_once, brand_init);
	uint64_t h = hash2(seed, TAG_ABSENT, j);
	unsigned idx = brand_of_share(h >> 32);
	unsigned t = (unsigned)((h & 0xffffffffu) % 10);
	uint64_t space = t < 8 ? PHONE_SPACE : EMAIL_SPACE;
	uint64_t half = space / 2;
	uint64_t rid = half + hash2(seed, TAG_ABSENT, ~j) % (space - half);

	memset(out, 0, sizeof(*out));
	fill_key(seed, idx, t, rid, out);
	fill_attrs(hash2(seed, TAG_ATTR ^ 0x40, j), out);
}
