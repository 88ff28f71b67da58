/*
 * policymap: the policy map file parser and its lookup (core/policymap.h).
 *
 * Parsing is strict, as for the token file: the map decides whose mail is
 * checked under which brand, and a typo that silently left a sender
 * unmapped would let its commercial mail through unchecked. Beyond the
 * line format:
 *   a key is printable ASCII; an address key must normalise as a
 *   recipient e-mail does
 *   (core/recipient.h: lower-cased, no spaces, one '@', at most 254
 *   bytes); a domain key is dot-separated labels of [A-Za-z0-9-], each
 *   non-empty, at most 253 bytes, lower-cased; "sasl:" is followed by
 *   1-256 printable bytes, kept as they are (SASL names may be
 *   case-sensitive); BRAND is 1-8 digits, not 0; a key appears once
 *   (after lower-casing: "A@x.com" and "a@x.com" are the same key).
 * '#' starts a comment anywhere on a line; CRLF line ends are accepted.
 *
 * The rules are kept in one array sorted by (kind, key), searched by
 * bisection: a lookup is at most three searches, no allocation.
 */
#include "core/policymap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/recipient.h"
#include "core/textfile.h"

#define POLICYMAP_FILE_MAX (64u << 20) /* a map is a few KiB to MiB */
#define POLICYMAP_BRAND_MAX 99999999u  /* brand codes have up to 8 digits */
#define POLICYMAP_DOMAIN_MAX 253
#define POLICYMAP_QUOTE_MAX 40         /* bytes of a bad field quoted back */
#define POLICYMAP_FIELDS_MAX 3

struct policymap_entry {
	struct policymap_rule rule;
	size_t key_off; /* in keys, while parsing */
	const char *key; /* keys + key_off, once the arena is final */
	size_t key_len;
};

struct policymap {
	struct policymap_entry *e; /* sorted by (kind, key) */
	size_t n;
	char *keys; /* every key's bytes, back to back */
};

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* A domain: labels of [A-Za-z0-9-], each non-empty, dot-separated. */
static const char *domain_problem(const char *s, size_t len)
{
	size_t label = 0;

	if (len == 0)
		return "empty domain";
	if (len > POLICYMAP_DOMAIN_MAX)
		return "domain longer than 253 bytes";
	for (size_t i = 0; i < len; i++) {
		char c = lower(s[i]);

		if (c == '.') {
			if (label == 0)
				return "empty label in the domain";
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-'))
			return "domain holds a byte other than letters, "
			       "digits, '-' and '.'";
		label++;
	}
	return label == 0 ? "empty label in the domain" : NULL;
}

/* Parses KEY into its kind and canonical bytes (into buf, at least
 * POLICYMAP_KEY_MAX + 1 bytes). Returns NULL, or what is wrong. */
static const char *parse_key(const struct textfile_field *f,
			     enum policymap_kind *kind,
			     char *buf, size_t *klen)
{
	const char *at = memchr(f->s, '@', f->len);
	struct recipient r;
	const char *why;

	/* Printable ASCII only: recipient_normalize would trim a control
	 * byte away, and a key should be exactly what the file says. */
	for (size_t i = 0; i < f->len; i++) {
		unsigned char c = (unsigned char)f->s[i];

		if (c < 0x21 || c > 0x7e)
			return "a byte other than printable ASCII";
	}
	if (f->len > 5 && strncmp(f->s, "sasl:", 5) == 0) {
		if (f->len - 5 > POLICYMAP_KEY_MAX)
			return "SASL user longer than 256 bytes";
		*kind = POLICYMAP_SASL;
		*klen = f->len - 5;
		memcpy(buf, f->s + 5, *klen);
		return NULL;
	}
	if (f->len == 5 && strncmp(f->s, "sasl:", 5) == 0)
		return "empty SASL user after 'sasl:'";
	if (at == f->s || at == NULL) {
		const char *d = at == NULL ? f->s : f->s + 1;
		size_t dl = at == NULL ? f->len : f->len - 1;

		why = domain_problem(d, dl);
		if (why != NULL)
			return why;
		*kind = POLICYMAP_DOMAIN;
		*klen = dl;
		for (size_t i = 0; i < dl; i++)
			buf[i] = lower(d[i]);
		return NULL;
	}
	if (recipient_normalize(f->s, f->len, &r, &why) < 0)
		return why;
	if (r.kind != RECIPIENT_EMAIL)
		return "not an e-mail address";
	*kind = POLICYMAP_ADDRESS;
	*klen = r.email_len;
	memcpy(buf, r.email, r.email_len);
	return NULL;
}

static const char *parse_brand(const struct textfile_field *f, uint32_t *out)
{
	uint32_t v = 0;

	if (f->len > 8)
		return "brand code: more than 8 digits";
	for (size_t i = 0; i < f->len; i++) {
		if (f->s[i] < '0' || f->s[i] > '9')
			return "brand code: not a decimal number";
		v = v * 10 + (uint32_t)(f->s[i] - '0');
	}
	if (v == 0)
		return "brand code: 0 is not a brand";
	*out = v;
	return NULL;
}

static int entry_cmp_key(enum policymap_kind ka, const char *a, size_t al,
			 enum policymap_kind kb, const char *b, size_t bl)
{
	int c;

	if (ka != kb)
		return ka < kb ? -1 : 1;
	c = memcmp(a, b, al < bl ? al : bl);
	if (c != 0)
		return c;
	return (al > bl) - (al < bl);
}

static int entry_cmp(const void *pa, const void *pb)
{
	const struct policymap_entry *a = pa, *b = pb;

	return entry_cmp_key(a->rule.kind, a->key, a->key_len, b->rule.kind,
			     b->key, b->key_len);
}

/* Appends one entry; -ENOMEM. */
static int add_entry(struct policymap *m, size_t *cap, size_t *keys_len,
		     size_t *keys_cap, const struct policymap_rule *rule,
		     const char *key, size_t klen)
{
	if (m->n == *cap) {
		size_t ncap = *cap ? 2 * *cap : 16;
		struct policymap_entry *ne = realloc(m->e, ncap * sizeof(*ne));

		if (ne == NULL)
			return -ENOMEM;
		m->e = ne;
		*cap = ncap;
	}
	if (*keys_len + klen + 1 > *keys_cap) {
		size_t ncap = *keys_cap ? 2 * *keys_cap : 1024;
		char *nk;

		while (ncap < *keys_len + klen + 1)
			ncap *= 2;
		nk = realloc(m->keys, ncap);
		if (nk == NULL)
			return -ENOMEM;
		m->keys = nk;
		*keys_cap = ncap;
	}
	memcpy(m->keys + *keys_len, key, klen);
	m->keys[*keys_len + klen] = '\0';
	m->e[m->n].rule = *rule;
	m->e[m->n].key_off = *keys_len;
	m->e[m->n].key_len = klen;
	m->n++;
	*keys_len += klen + 1;
	return 0;
}

static const char *kind_name(enum policymap_kind k)
{
	return k == POLICYMAP_SASL ? "SASL user"
	       : k == POLICYMAP_ADDRESS ? "address" : "domain";
}

int policymap_parse(const char *text, size_t len, struct policymap **out,
		    char *err, size_t err_cap)
{
	struct textfile_field f[POLICYMAP_FIELDS_MAX + 1];
	char key[POLICYMAP_KEY_MAX + 1], q[POLICYMAP_QUOTE_MAX + 4];
	size_t cap = 0, keys_len = 0, keys_cap = 0, pos = 0, line = 0;
	struct policymap *m;
	int rc = 0;

	*out = NULL;
	errmsg_set(err, err_cap, "%s", "");
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		errmsg_set(err, err_cap, "policy map: out of memory");
		return -ENOMEM;
	}
	const char *s;
	size_t llen;

	while (textfile_line(text, len, &pos, &s, &llen)) {
		struct policymap_rule rule = { .purpose = PURPOSE_TICARI };
		const char *why = NULL;
		size_t nf, klen = 0;

		line++;
		if (memchr(s, '\0', llen) != NULL) {
			errmsg_set(err, err_cap, "policy map line %zu: a NUL byte",
				line);
			rc = -EINVAL;
			goto fail;
		}
		nf = textfile_fields(s, llen, f, POLICYMAP_FIELDS_MAX + 1);
		if (nf == 0)
			continue;
		if (nf < 2 || nf > POLICYMAP_FIELDS_MAX) {
			errmsg_set(err, err_cap, "policy map line %zu: %s fields: "
				"the format is KEY BRAND [TICARI|BILGILENDIRME]",
				line, nf < 2 ? "too few" : "too many");
			rc = -EINVAL;
			goto fail;
		}
		why = parse_key(&f[0], &rule.kind, key, &klen);
		if (why != NULL) {
			errmsg_set(err, err_cap, "policy map line %zu: key '%s': "
				"%s", line, textfile_quote(f[0].s, f[0].len,
					POLICYMAP_QUOTE_MAX, q,
						   sizeof(q)), why);
			rc = -EINVAL;
			goto fail;
		}
		why = parse_brand(&f[1], &rule.brand_code);
		if (why == NULL && nf == 3 &&
		    !(rule.purpose = enums_purpose_parse(f[2].s, f[2].len)))
			why = "purpose: not TICARI or BILGILENDIRME";
		if (why != NULL) {
			errmsg_set(err, err_cap, "policy map line %zu: %s", line,
				why);
			rc = -EINVAL;
			goto fail;
		}
		rule.line = line;
		if (add_entry(m, &cap, &keys_len, &keys_cap, &rule, key,
			      klen) < 0) {
			errmsg_set(err, err_cap, "policy map: out of memory");
			rc = -ENOMEM;
			goto fail;
		}
	}
	for (size_t i = 0; i < m->n; i++)
		m->e[i].key = m->keys + m->e[i].key_off;
	if (m->n > 1)
		qsort(m->e, m->n, sizeof(*m->e), entry_cmp);
	for (size_t i = 1; i < m->n; i++) {
		const struct policymap_entry *a = &m->e[i - 1], *b = &m->e[i];

		if (entry_cmp(a, b) == 0) {
			size_t first = a->rule.line < b->rule.line
					       ? a->rule.line : b->rule.line;
			size_t second = a->rule.line < b->rule.line
						? b->rule.line : a->rule.line;

			errmsg_set(err, err_cap, "policy map line %zu: %s '%s' "
				"already mapped on line %zu", second,
				kind_name(b->rule.kind),
				textfile_quote(b->key, b->key_len,
					POLICYMAP_QUOTE_MAX, q,
				      sizeof(q)), first);
			rc = -EINVAL;
			goto fail;
		}
	}
	*out = m;
	return 0;
fail:
	policymap_destroy(m);
	return rc;
}

int policymap_load(const char *path, struct policymap **out, char *err,
		   size_t err_cap)
{
	char *buf;
	size_t got;
	int rc;

	*out = NULL;
	rc = textfile_read("policy map", path, POLICYMAP_FILE_MAX, &buf, &got,
			   err, err_cap);
	if (rc < 0)
		return rc;
	rc = policymap_parse(buf, got, out, err, err_cap);
	free(buf);
	return rc;
}

void policymap_destroy(struct policymap *m)
{
	if (m == NULL)
		return;
	free(m->e);
	free(m->keys);
	free(m);
}

size_t policymap_count(const struct policymap *m)
{
	return m->n;
}

static const struct policymap_rule *find(const struct policymap *m,
					 enum policymap_kind kind,
					 const char *key, size_t klen)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct policymap_entry *e = &m->e[mid];
		int c = entry_cmp_key(kind, key, klen, e->rule.kind, e->key,
				      e->key_len);

		if (c == 0)
			return &e->rule;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct policymap_rule *policymap_lookup(const struct policymap *m,
					      const char *sasl,
					      size_t sasl_len,
					      const char *sender,
					      size_t sender_len)
{
	char buf[RECIPIENT_EMAIL_MAX + 1];
	const struct policymap_rule *r;
	const char *at = NULL;

	if (sasl_len > 0 && sasl_len <= POLICYMAP_KEY_MAX &&
	    (r = find(m, POLICYMAP_SASL, sasl, sasl_len)) != NULL)
		return r;
	if (sender_len == 0 || sender_len > RECIPIENT_EMAIL_MAX)
		return NULL;
	for (size_t i = 0; i < sender_len; i++) {
		buf[i] = lower(sender[i]);
		if (buf[i] == '@')
			at = buf + i;
	}
	r = find(m, POLICYMAP_ADDRESS, buf, sender_len);
	if (r != NULL || at == NULL)
		return r;
	return find(m, POLICYMAP_DOMAIN, at + 1,
		    sender_len - (size_t)(at + 1 - buf));
}
