/* policymap: the map file (every key kind, purposes, comments, CRLF), its
 * strictness (each bad line refused with its line number, duplicates after
 * lower-casing), the lookup precedence (SASL user, then address, then
 * domain), case rules, and policymap_load on real files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/policymap.h"
#include "tests/check.h"

static const char good[] =
	"# consentd policy map\n"
	"\n"
	"sasl:Campaigns   600123            # the marketing robot\n"
	"news@Shop.example   600123 TICARI\n"
	"orders@shop.example 600123 bilgilendirme\r\n"
	"@shop.example       700456\n"
	"other.example       800789 BILGILENDIRME\n"
	"\t  \t\n"
	"sasl:bob@realm 12345678";

static const struct policymap_rule *look(const struct policymap *m,
					 const char *sasl, const char *sender)
{
	return policymap_lookup(m, sasl, strlen(sasl), sender, strlen(sender));
}

static void test_good_file(void)
{
	char err[256];
	struct policymap *m;
	const struct policymap_rule *r;

	CHECKF(policymap_parse(good, sizeof(good) - 1, &m, err, sizeof(err))
		       == 0, "%s", err);
	if (m == NULL)
		return;
	CHECK(policymap_count(m) == 6);
	/* The SASL user first, whatever the sender. */
	r = look(m, "Campaigns", "orders@shop.example");
	CHECK(r && r->kind == POLICYMAP_SASL && r->brand_code == 600123 &&
	      r->purpose == PURPOSE_TICARI && r->line == 3);
	/* SASL names are exact: a case change is another user, and an
	 * unmapped SASL user falls through to the sender. */
	r = look(m, "campaigns", "orders@shop.example");
	CHECK(r && r->kind == POLICYMAP_ADDRESS &&
	      r->purpose == PURPOSE_BILGILENDIRME && r->line == 5);
	/* The address before its domain; addresses without case. */
	r = look(m, "", "NEWS@shop.EXAMPLE");
	CHECK(r && r->kind == POLICYMAP_ADDRESS && r->line == 4 &&
	      r->purpose == PURPOSE_TICARI);
	r = look(m, "", "someone@SHOP.example");
	CHECK(r && r->kind == POLICYMAP_DOMAIN && r->brand_code == 700456 &&
	      r->purpose == PURPOSE_TICARI);
	r = look(m, "", "x@other.example");
	CHECK(r && r->brand_code == 800789 &&
	      r->purpose == PURPOSE_BILGILENDIRME);
	r = look(m, "bob@realm", "");
	CHECK(r && r->brand_code == 12345678 && r->line == 9);
	/* Unmapped: the null sender, a subdomain, a parent, no '@'. */
	CHECK(look(m, "", "") == NULL);
	CHECK(look(m, "", "x@mail.shop.example") == NULL);
	CHECK(look(m, "", "x@example") == NULL);
	CHECK(look(m, "", "shop.example") == NULL);
	CHECK(look(m, "nobody", "x@elsewhere.example") == NULL);
	/* The domain is after the last '@'. */
	r = look(m, "", "\"a@b\"@shop.example");
	CHECK(r && r->kind == POLICYMAP_DOMAIN);
	policymap_destroy(m);

	CHECK(policymap_parse("# nothing\n\n", 11, &m, err, sizeof(err)) == 0);
	CHECK(m != NULL && policymap_count(m) == 0);
	if (m)
		CHECK(look(m, "a", "b@c.example") == NULL);
	policymap_destroy(m);
}

struct bad {
	const char *text;
	const char *want; /* in the message */
};

static void test_bad_lines(void)
{
	static const struct bad bad[] = {
		{ "a@b.example\n", "line 1: too few fields" },
		{ "\n\na@b.example 1 TICARI x\n", "line 3: too many fields" },
		{ "a@b.example 0\n", "line 1: brand code: 0 is not a brand" },
		{ "a@b.example 123456789\n", "more than 8 digits" },
		{ "a@b.example 12a\n", "not a decimal number" },
		{ "a@b.example -5\n", "not a decimal number" },
		{ "a@b.example 5 KUTLAMA\n", "purpose: not TICARI" },
		{ "a@b.example 5 BIREYSEL\n", "purpose: not TICARI" },
		{ "sasl: 5\n", "empty SASL user" },
		{ "sasl:\x01x 5\n", "other than printable ASCII" },
		{ "\x0c\x0cyes@mail.example 5\n", "other than printable" },
		{ "@ 5\n", "empty domain" },
		{ "a..example 5\n", "empty label" },
		{ "example. 5\n", "empty label" },
		{ ".example 5\n", "empty label" },
		{ "ex_ample.com 5\n", "other than letters" },
		{ "a@b@c.example 5\n", "key 'a@b@c.example'" },
		{ "a@ 5\n", "key 'a@'" },
		{ "ok.example 5\nx@\xc3\xa7.example 6\n", "line 2: key" },
		{ "a@b.example 5\nA@B.example 6\n",
		  "line 2: address 'a@b.example' already mapped on line 1" },
		{ "b.example 5\n# c\n@B.EXAMPLE 6\n",
		  "line 3: domain 'b.example' already mapped on line 1" },
		{ "sasl:u 5\nsasl:u 5\n", "line 2: SASL user 'u' already" },
		{ "x.example 5\nx.ex\0ample 6\n", "line 2: a NUL byte" },
	};
	char err[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct policymap *m = (struct policymap *)err;
		size_t len = strlen(bad[i].text);

		if (strstr(bad[i].text, "x.ex") != NULL)
			len = 24; /* the one with a NUL inside */
		CHECKF(policymap_parse(bad[i].text, len, &m, err,
				       sizeof(err)) == -EINVAL, "case %zu", i);
		CHECK(m == NULL);
		CHECKF(strstr(err, bad[i].want) != NULL, "case %zu: '%s'", i,
		       err);
	}
	/* Different kinds with the same text are different keys. */
	{
		struct policymap *m;

		CHECK(policymap_parse("sasl:a.example 1\na.example 2\n", 28,
				      &m, err, sizeof(err)) == 0);
		CHECK(m && policymap_count(m) == 2);
		policymap_destroy(m);
	}
}

static void test_load(void)
{
	char path[] = "/tmp/policymap_test.XXXXXX";
	char err[256];
	struct policymap *m;
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, good, sizeof(good) - 1) == (ssize_t)sizeof(good) - 1);
	close(fd);
	CHECKF(policymap_load(path, &m, err, sizeof(err)) == 0, "%s", err);
	CHECK(m != NULL && policymap_count(m) == 6);
	policymap_destroy(m);
	unlink(path);
	CHECK(policymap_load("/nonexistent/consentd/map", &m, err,
			     sizeof(err)) == -ENOENT);
	CHECK(m == NULL);
	CHECKF(strstr(err, "policy map: /nonexistent/consentd/map") != NULL,
	       "%s", err);
	CHECK(policymap_load("/tmp", &m, err, sizeof(err)) == -EINVAL);
	CHECK_STREQ(err, "policy map: /tmp: not a regular file");
}

/* Many rules: every one found, its neighbours not confused with it. */
static void test_many(void)
{
	size_t n = 3000, cap = n * 40, len = 0;
	char *text = malloc(cap), key[64], err[256];
	struct policymap *m;

	if (text == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(text + len, cap - len,
					i % 3 == 0 ? "sasl:u%zu %zu\n"
					: i % 3 == 1 ? "s%zu@d.example %zu\n"
						     : "d%zu.example %zu\n",
					i, i + 1);
	CHECKF(policymap_parse(text, len, &m, err, sizeof(err)) == 0, "%s",
	       err);
	if (m == NULL) {
		free(text);
		return;
	}
	CHECK(policymap_count(m) == n);
	for (size_t i = 0; i < n; i++) {
		const struct policymap_rule *r;

		if (i % 3 == 0) {
			snprintf(key, sizeof(key), "u%zu", i);
			r = look(m, key, "nobody@x.example");
		} else if (i % 3 == 1) {
			snprintf(key, sizeof(key), "S%zu@D.example", i);
			r = look(m, "", key);
		} else {
			snprintf(key, sizeof(key), "x@d%zu.example", i);
			r = look(m, "", key);
		}
		CHECKF(r != NULL && r->brand_code == i + 1, "rule %zu", i);
	}
	CHECK(look(m, "u1", "") == NULL); /* u1 is an address rule's */
	policymap_destroy(m);
	free(text);
}

int main(void)
{
	RUN(test_good_file);
	RUN(test_bad_lines);
	RUN(test_load);
	RUN(test_many);
	return check_summary();
}
