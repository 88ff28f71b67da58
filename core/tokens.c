/*
 * tokens: the token file parser and the two questions asked of it on the
 * request path (who is this token? may they ask about this brand?), and
 * the per-principal count of checks answered, for a partner's own stats.
 *
 * The file holds digests, never tokens, so reading it gives nothing away.
 * Authentication hashes the offered token once and compares the digest
 * with every principal's, always all of them and each with CRYPTO_memcmp,
 * so the time taken says nothing about which (or whether any) principal
 * matched, nor how many digest bytes did.
 *
 * Parsing is strict: a token file is a security boundary, and a typo that
 * silently widened or narrowed someone's rights would be worse than a
 * start-up that stops and names the line. Beyond the line format:
 *   NAME       1-63 of [A-Za-z0-9._-] (it appears in logs and replies);
 *   SHA256HEX  64 hex digits, either case; not the SHA-256 of the empty
 *              token (that would let an empty AUTH in);
 *   BRANDS     '*' alone, or codes of 1-8 digits, not 0, comma-separated
 *              without spaces; sorted and deduplicated for the search;
 *   flags      'apply', 'stats' and 'reject', in any order, each at most
 *              once;
 *   names and digests are unique; a file without a principal is refused
 *   (it would lock every client out, which is never what was meant).
 * '#' starts a comment anywhere on a line; CRLF line ends are accepted.
 */
#include "core/tokens.h"

#include "core/errmsg.h"
#include "core/hex.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "core/textfile.h"

#define TOKENS_FILE_MAX (16u << 20) /* a token file is a few KiB */
#define TOKENS_BRAND_MAX 99999999u  /* brand codes have up to 8 digits */
#define TOKENS_QUOTE_MAX 32         /* bytes of a bad field quoted back */
#define TOKENS_FIELDS_MAX 6

/* A principal's check counter, alone on its cache line: two workers
 * answering two partners never write the same line. */
struct tokens_counter {
	_Alignas(64) _Atomic uint64_t checks;
};

struct tokens {
	struct principal *p;
	size_t n;
	struct tokens_counter *counters; /* n, one per principal */
};

static bool name_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

/* Parses BRANDS into p (brands allocated here). Returns 0 or -EINVAL /
 * -ENOMEM with err set. */
static int parse_brands(const struct textfile_field *f, struct principal *p,
			size_t line, char *err, size_t err_cap)
{
	char q[TOKENS_QUOTE_MAX + 4];
	size_t cap = 1, i, start, n = 0;

	if (f->len == 1 && f->s[0] == '*') {
		p->all_brands = true;
		return 0;
	}
	for (i = 0; i < f->len; i++)
		cap += f->s[i] == ',';
	p->brands = malloc(cap * sizeof(*p->brands));
	if (p->brands == NULL) {
		errmsg_set(err, err_cap, "tokens line %zu: out of memory", line);
		return -ENOMEM;
	}
	start = 0;
	for (i = 0; i <= f->len; i++) {
		const char *e = f->s + start;
		size_t len = i - start, k;
		uint32_t v = 0;

		if (i < f->len && f->s[i] != ',')
			continue;
		start = i + 1;
		if (len == 0) {
			errmsg_set(err, err_cap, "tokens line %zu: brand list: "
				"empty entry (a stray comma, or a space after "
				"one?)", line);
			return -EINVAL;
		}
		if (len == 1 && e[0] == '*') {
			errmsg_set(err, err_cap, "tokens line %zu: brand list: "
				"'*' must stand alone", line);
			return -EINVAL;
		}
		for (k = 0; k < len && k < 9; k++) {
			if (e[k] < '0' || e[k] > '9')
				break;
			v = v * 10 + (uint32_t)(e[k] - '0');
		}
		if (k != len || len > 8 || v == 0) {
			errmsg_set(err, err_cap, "tokens line %zu: brand list: "
				"'%s' is not a brand code (1 to 99999999)",
				line, textfile_quote(e, len,
					TOKENS_QUOTE_MAX, q, sizeof(q)));
			return -EINVAL;
		}
		p->brands[n++] = v;
	}
	qsort(p->brands, n, sizeof(*p->brands), cmp_u32);
	p->n_brands = 0;
	for (i = 0; i < n; i++)
		if (p->n_brands == 0 || p->brands[p->n_brands - 1] != p->brands[i])
			p->brands[p->n_brands++] = p->brands[i];
	return 0;
}

/* Parses one line's fields into *p. */
static int parse_principal(const struct textfile_field *f, size_t nf,
			   struct principal *p, size_t line,
			   const uint8_t empty_digest[32], char *err,
			   size_t err_cap)
{
	char q[TOKENS_QUOTE_MAX + 4];
	size_t i;
	int rc;

	memset(p, 0, sizeof(*p));
	if (nf < 3 || nf > TOKENS_FIELDS_MAX) {
		errmsg_set(err, err_cap, "tokens line %zu: %s fields: the format "
			"is NAME SHA256HEX BRANDS [apply] [stats] [reject]", line,
			nf < 3 ? "too few" : "too many");
		return -EINVAL;
	}

	if (f[0].len > TOKENS_NAME_MAX) {
		errmsg_set(err, err_cap, "tokens line %zu: name: longer than %d "
			"characters", line, TOKENS_NAME_MAX);
		return -EINVAL;
	}
	for (i = 0; i < f[0].len; i++) {
		if (!name_char_ok((unsigned char)f[0].s[i])) {
			errmsg_set(err, err_cap, "tokens line %zu: name: '%s' "
				"holds a character other than letters, digits, "
				"'.', '_' and '-'", line,
				textfile_quote(f[0].s, f[0].len,
					TOKENS_QUOTE_MAX, q, sizeof(q)));
			return -EINVAL;
		}
	}
	memcpy(p->name, f[0].s, f[0].len);
	p->name[f[0].len] = 0;

	if (f[1].len != 2 * sizeof(p->digest)) {
		errmsg_set(err, err_cap, "tokens line %zu: digest: %zu "
			"characters, a SHA-256 in hex has 64", line, f[1].len);
		return -EINVAL;
	}
	for (i = 0; i < sizeof(p->digest); i++) {
		int hi = hex_digit((unsigned char)f[1].s[2 * i]);
		int lo = hex_digit((unsigned char)f[1].s[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			errmsg_set(err, err_cap, "tokens line %zu: digest: not "
				"hexadecimal (character %zu)", line,
				2 * i + (hi < 0 ? 1 : 2));
			return -EINVAL;
		}
		p->digest[i] = (uint8_t)(hi << 4 | lo);
	}
	if (memcmp(p->digest, empty_digest, sizeof(p->digest)) == 0) {
		errmsg_set(err, err_cap, "tokens line %zu: digest: this is the "
			"SHA-256 of the empty token", line);
		return -EINVAL;
	}

	/* Brands before the flag: "1, 2" then reads as a stray comma, not
	 * as a flag named "2". On failure p->brands is the caller's to free. */
	rc = parse_brands(&f[2], p, line, err, err_cap);
	if (rc < 0)
		return rc;
	for (i = 3; i < nf; i++) {
		bool is_apply = f[i].len == 5 && !memcmp(f[i].s, "apply", 5);
		bool is_stats = f[i].len == 5 && !memcmp(f[i].s, "stats", 5);
		bool is_reject = f[i].len == 6 && !memcmp(f[i].s, "reject", 6);
		bool *flag = is_apply ? &p->may_apply :
			     is_stats ? &p->may_stats :
			     is_reject ? &p->may_reject : NULL;

		if (flag == NULL) {
			errmsg_set(err, err_cap, "tokens line %zu: '%s' is not a "
				"flag (they are 'apply', 'stats' and 'reject')", line,
				textfile_quote(f[i].s, f[i].len,
					TOKENS_QUOTE_MAX, q, sizeof(q)));
			return -EINVAL;
		}
		if (*flag) {
			errmsg_set(err, err_cap, "tokens line %zu: flag '%s' "
				"given twice", line,
				textfile_quote(f[i].s, f[i].len,
					TOKENS_QUOTE_MAX, q, sizeof(q)));
			return -EINVAL;
		}
		*flag = true;
	}
	return 0;
}

/* Refuses a name or digest that an earlier principal already has. The
 * line numbers of earlier principals are in lines[]. */
static int check_unique(const struct tokens *t, const size_t *lines,
			const struct principal *p, size_t line, char *err,
			size_t err_cap)
{
	size_t i;

	for (i = 0; i < t->n; i++) {
		if (strcmp(t->p[i].name, p->name) == 0) {
			errmsg_set(err, err_cap, "tokens line %zu: name '%s' "
				"already used on line %zu", line, p->name,
				lines[i]);
			return -EINVAL;
		}
		if (memcmp(t->p[i].digest, p->digest, sizeof(p->digest)) == 0) {
			errmsg_set(err, err_cap, "tokens line %zu: digest already "
				"used on line %zu (one token, two principals)",
				line, lines[i]);
			return -EINVAL;
		}
	}
	return 0;
}

int tokens_parse(const char *text, size_t len, struct tokens **out,
		 char *err, size_t err_cap)
{
	struct textfile_field f[TOKENS_FIELDS_MAX + 1];
	uint8_t empty_digest[32];
	struct tokens *t;
	size_t *lines = NULL; /* line number of each principal */
	size_t cap = 0, pos = 0, line = 0;
	int rc;

	*out = NULL;
	errmsg_set(err, err_cap, "%s", "");
	SHA256((const unsigned char *)"", 0, empty_digest);
	t = calloc(1, sizeof(*t));
	if (t == NULL) {
		errmsg_set(err, err_cap, "tokens: out of memory");
		return -ENOMEM;
	}
	const char *s;
	size_t llen;

	while (textfile_line(text, len, &pos, &s, &llen)) {
		struct principal p;
		size_t nf;

		line++;
		nf = textfile_fields(s, llen, f, TOKENS_FIELDS_MAX + 1);
		if (nf == 0)
			continue;

		rc = parse_principal(f, nf, &p, line, empty_digest, err,
				     err_cap);
		if (rc == 0)
			rc = check_unique(t, lines, &p, line, err, err_cap);
		if (rc == 0 && t->n == cap) {
			size_t ncap = cap ? 2 * cap : 8;
			struct principal *np;
			size_t *nl2;

			np = realloc(t->p, ncap * sizeof(*np));
			if (np != NULL)
				t->p = np;
			nl2 = np != NULL ? realloc(lines, ncap * sizeof(*nl2))
					 : NULL;
			if (nl2 != NULL)
				lines = nl2;
			if (np == NULL || nl2 == NULL) {
				errmsg_set(err, err_cap, "tokens: out of memory");
				rc = -ENOMEM;
			} else {
				cap = ncap;
			}
		}
		if (rc < 0) {
			free(p.brands);
			goto fail;
		}
		lines[t->n] = line;
		t->p[t->n++] = p;
	}
	if (t->n == 0) {
		errmsg_set(err, err_cap, "tokens: no principals in the file "
			"(every client would be refused)");
		rc = -EINVAL;
		goto fail;
	}
	t->counters = aligned_alloc(_Alignof(struct tokens_counter),
				    t->n * sizeof(*t->counters));
	if (t->counters == NULL) {
		errmsg_set(err, err_cap, "tokens: out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < t->n; i++) {
		atomic_init(&t->counters[i].checks, 0);
		t->p[i].checks = &t->counters[i].checks;
	}
	free(lines);
	*out = t;
	return 0;
fail:
	free(lines);
	tokens_destroy(t);
	return rc;
}

int tokens_load(const char *path, struct tokens **out, char *err,
		size_t err_cap)
{
	char *buf;
	size_t got;
	int rc;

	*out = NULL;
	rc = textfile_read("tokens", path, TOKENS_FILE_MAX, &buf, &got, err,
			   err_cap);
	if (rc < 0)
		return rc;
	rc = tokens_parse(buf, got, out, err, err_cap);
	free(buf);
	return rc;
}

void tokens_destroy(struct tokens *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; i < t->n; i++)
		free(t->p[i].brands);
	free(t->p);
	free(t->counters);
	free(t);
}

const struct principal *tokens_authenticate(const struct tokens *t,
					    const char *token, size_t len)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	uintptr_t hit = 0;
	size_t i;

	if (t == NULL || (token == NULL && len != 0))
		return NULL;
	SHA256((const unsigned char *)(token != NULL ? token : ""), len, md);
	/* Every principal, every byte: no early exit on a match, and the
	 * match is selected with a mask, not a branch. Digests are unique
	 * (tokens_parse refuses duplicates), so at most one mask is set. */
	for (i = 0; i < t->n; i++) {
		uintptr_t eq = (uintptr_t)(CRYPTO_memcmp(md, t->p[i].digest,
							 sizeof(md)) == 0);

		hit |= ((uintptr_t)0 - eq) & (uintptr_t)&t->p[i];
	}
	OPENSSL_cleanse(md, sizeof(md));
	return (const struct principal *)hit;
}

bool principal_may_check(const struct principal *p, uint32_t brand_code)
{
	size_t lo, hi;

	if (p == NULL || p->all_brands)
		return true;
	lo = 0;
	hi = p->n_brands;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->brands[mid] < brand_code)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < p->n_brands && p->brands[lo] == brand_code;
}

bool principal_may_stats(const struct principal *p)
{
	return p == NULL || p->may_stats;
}

bool principal_may_reject(const struct principal *p)
{
	return p == NULL || p->may_reject;
}

void principal_count_checks(const struct principal *p, uint64_t n)
{
	if (p != NULL && p->checks != NULL)
		atomic_fetch_add_explicit(p->checks, n, memory_order_relaxed);
}

uint64_t principal_checks(const struct principal *p)
{
	if (p == NULL || p->checks == NULL)
		return 0;
	return atomic_load_explicit(p->checks, memory_order_relaxed);
}
