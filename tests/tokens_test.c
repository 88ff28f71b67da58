/* tokens: a good file (from disk), every kind of malformed line with its
 * message, authentication with right and wrong tokens, brand checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "core/tokens.h"
#include "tests/check.h"

/* Hex SHA-256 of a token, as a token file holds it. */
static const char *hexdigest(const char *token, char out[65])
{
	unsigned char md[32];

	SHA256((const unsigned char *)token, strlen(token), md);
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
	return out;
}

static const char *tok_a = "tok-alpha-5f1c2b9e8d7a6c5b4a39281706f5e4d3";
static const char *tok_b = "tok-bravo-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
static const char *tok_c = "tok-charlie-99887766554433221100ffeeddccbbaa";

/* The good file used by several tests. */
static int good_text(char *buf, size_t cap)
{
	char a[65], b[65], c[65];

	return snprintf(buf, cap,
			"# consentd partners\n"
			"\n"
			"alpha %s 300,100,200,100   # duplicate 100 is fine\n"
			"   \t\n"
			"bravo\t%s\t*\tapply\r\n"
			"charlie %s 12345678 reject stats apply\n"
			"# the end, no newline after this comment",
			hexdigest(tok_a, a), hexdigest(tok_b, b),
			hexdigest(tok_c, c));
}

static void test_good_file(void)
{
	char text[1024], path[] = "/tmp/consentd-tokens-XXXXXX";
	char err[256];
	struct tokens *t = NULL;
	const struct principal *p;
	int len = good_text(text, sizeof(text));
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, text, (size_t)len) == len);
	close(fd);

	CHECK(tokens_load(path, &t, err, sizeof(err)) == 0);
	unlink(path);
	if (t == NULL) {
		fprintf(stderr, "load: %s\n", err);
		return;
	}

	p = tokens_authenticate(t, tok_a, strlen(tok_a));
	CHECK(p != NULL);
	if (p != NULL) {
		CHECK_STREQ(p->name, "alpha");
		CHECK(!p->all_brands && !p->may_apply && !p->may_stats);
		CHECK(!principal_may_stats(p));
		CHECK(!p->may_reject && !principal_may_reject(p));
		CHECK(p->n_brands == 3);
		CHECK(p->brands[0] == 100 && p->brands[1] == 200 &&
		      p->brands[2] == 300);
		CHECK(principal_may_check(p, 100));
		CHECK(principal_may_check(p, 200));
		CHECK(principal_may_check(p, 300));
		CHECK(!principal_may_check(p, 150));
		CHECK(!principal_may_check(p, 99));
		CHECK(!principal_may_check(p, 301));
		CHECK(!principal_may_check(p, 0));
	}
	p = tokens_authenticate(t, tok_b, strlen(tok_b));
	CHECK(p != NULL);
	if (p != NULL) {
		CHECK_STREQ(p->name, "bravo");
		CHECK(p->all_brands && p->may_apply && !p->may_stats);
		CHECK(!principal_may_reject(p)); /* apply does not imply it */
		CHECK(principal_may_check(p, 1));
		CHECK(principal_may_check(p, 99999999));
	}
	p = tokens_authenticate(t, tok_c, strlen(tok_c));
	CHECK(p != NULL);
	if (p != NULL) {
		CHECK_STREQ(p->name, "charlie");
		CHECK(p->may_apply && !p->all_brands && p->n_brands == 1);
		CHECK(p->may_stats && principal_may_stats(p));
		CHECK(p->may_reject && principal_may_reject(p));
		CHECK(principal_may_check(p, 12345678));
		CHECK(!principal_may_check(p, 1234567));
	}
	tokens_destroy(t);
}

/* Each principal counts its own checks; NULL (trusted) counts nowhere. */
static void test_own_check_counts(void)
{
	char text[1024], err[256];
	struct tokens *t = NULL;
	const struct principal *a, *b;
	int len = good_text(text, sizeof(text));

	CHECK(tokens_parse(text, (size_t)len, &t, err, sizeof(err)) == 0);
	if (t == NULL)
		return;
	a = tokens_authenticate(t, tok_a, strlen(tok_a));
	b = tokens_authenticate(t, tok_b, strlen(tok_b));
	CHECK(a != NULL && b != NULL);
	if (a != NULL && b != NULL) {
		CHECK(principal_checks(a) == 0 && principal_checks(b) == 0);
		principal_count_checks(a, 3);
		principal_count_checks(a, 4);
		principal_count_checks(b, 1);
		principal_count_checks(NULL, 100);
		CHECK(principal_checks(a) == 7);
		CHECK(principal_checks(b) == 1);
		CHECK(principal_checks(NULL) == 0);
		CHECK(principal_may_stats(NULL));
		CHECK(principal_may_reject(NULL));
	}
	tokens_destroy(t);
}

static void test_authenticate_wrong(void)
{
	char text[1024], err[256];
	struct tokens *t = NULL;
	int len = good_text(text, sizeof(text));
	char wrong[128];

	CHECK(tokens_parse(text, (size_t)len, &t, err, sizeof(err)) == 0);
	if (t == NULL)
		return;
	/* A prefix, an extension, one changed byte, the digest itself. */
	CHECK(tokens_authenticate(t, tok_a, strlen(tok_a) - 1) == NULL);
	snprintf(wrong, sizeof(wrong), "%sx", tok_a);
	CHECK(tokens_authenticate(t, wrong, strlen(wrong)) == NULL);
	snprintf(wrong, sizeof(wrong), "%s", tok_a);
	wrong[5] ^= 1;
	CHECK(tokens_authenticate(t, wrong, strlen(wrong)) == NULL);
	hexdigest(tok_a, wrong);
	CHECK(tokens_authenticate(t, wrong, 64) == NULL);
	CHECK(tokens_authenticate(t, "", 0) == NULL);
	CHECK(tokens_authenticate(t, NULL, 0) == NULL);
	CHECK(tokens_authenticate(t, NULL, 5) == NULL);
	CHECK(tokens_authenticate(NULL, tok_a, strlen(tok_a)) == NULL);
	/* Length, not NUL, bounds the token. */
	snprintf(wrong, sizeof(wrong), "%s\n", tok_a);
	CHECK(tokens_authenticate(t, wrong, strlen(tok_a)) != NULL);
	/* NULL principal: trusted caller. */
	CHECK(principal_may_check(NULL, 42));
	tokens_destroy(t);
}

/* One line after a good first line, so the error must name line 2. */
static void bad_line(const char *line, const char *want)
{
	char a[65], text[2048], err[256];
	struct tokens *t = (struct tokens *)&t; /* must be reset to NULL */
	int rc;

	snprintf(text, sizeof(text), "alpha %s 1\n%s\n", hexdigest(tok_a, a),
		 line);
	rc = tokens_parse(text, strlen(text), &t, err, sizeof(err));
	CHECKF(rc == -EINVAL, "'%s': rc %d", line, rc);
	CHECK(t == NULL);
	CHECKF(strcmp(err, want) == 0, "'%s':\n  got  '%s'\n  want '%s'", line,
	       err, want);
}

static void test_malformed_lines(void)
{
	char b[65], line[512];
	const char *hb = hexdigest(tok_b, b);

	bad_line("bravo", "tokens line 2: too few fields: the format is NAME "
		 "SHA256HEX BRANDS [apply] [stats] [reject]");
	bad_line("bravo 0123", "tokens line 2: too few fields: the format is "
		 "NAME SHA256HEX BRANDS [apply] [stats] [reject]");
	snprintf(line, sizeof(line), "bravo %s 1 apply stats reject extra", hb);
	bad_line(line, "tokens line 2: too many fields: the format is NAME "
		 "SHA256HEX BRANDS [apply] [stats] [reject]");
	snprintf(line, sizeof(line), "bravo %s 1 Apply", hb);
	bad_line(line, "tokens line 2: 'Apply' is not a flag (they are "
		 "'apply', 'stats' and 'reject')");
	snprintf(line, sizeof(line), "bravo %s 1 apply extra", hb);
	bad_line(line, "tokens line 2: 'extra' is not a flag (they are "
		 "'apply', 'stats' and 'reject')");
	snprintf(line, sizeof(line), "bravo %s 1 stats stats", hb);
	bad_line(line, "tokens line 2: flag 'stats' given twice");
	snprintf(line, sizeof(line), "bravo %s 1 reject apply reject", hb);
	bad_line(line, "tokens line 2: flag 'reject' given twice");
	snprintf(line, sizeof(line), "bravo %s 1 rejects", hb);
	bad_line(line, "tokens line 2: 'rejects' is not a flag (they are "
		 "'apply', 'stats' and 'reject')");
	snprintf(line, sizeof(line), "bravo %s abc", hb);
	bad_line(line, "tokens line 2: brand list: 'abc' is not a brand code "
		 "(1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %s 1,abc,3", hb);
	bad_line(line, "tokens line 2: brand list: 'abc' is not a brand code "
		 "(1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %s 0", hb);
	bad_line(line, "tokens line 2: brand list: '0' is not a brand code "
		 "(1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %s 123456789", hb);
	bad_line(line, "tokens line 2: brand list: '123456789' is not a "
		 "brand code (1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %s -5", hb);
	bad_line(line, "tokens line 2: brand list: '-5' is not a brand code "
		 "(1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %s 1,,2", hb);
	bad_line(line, "tokens line 2: brand list: empty entry (a stray "
		 "comma, or a space after one?)");
	snprintf(line, sizeof(line), "bravo %s 1,", hb);
	bad_line(line, "tokens line 2: brand list: empty entry (a stray "
		 "comma, or a space after one?)");
	snprintf(line, sizeof(line), "bravo %s ,1", hb);
	bad_line(line, "tokens line 2: brand list: empty entry (a stray "
		 "comma, or a space after one?)");
	snprintf(line, sizeof(line), "bravo %s 1, 2", hb);
	bad_line(line, "tokens line 2: brand list: empty entry (a stray "
		 "comma, or a space after one?)");
	snprintf(line, sizeof(line), "bravo %s *,5", hb);
	bad_line(line, "tokens line 2: brand list: '*' must stand alone");
	snprintf(line, sizeof(line), "bravo %s **", hb);
	bad_line(line, "tokens line 2: brand list: '**' is not a brand code "
		 "(1 to 99999999)");
	snprintf(line, sizeof(line), "bravo %.63s 1", hb);
	bad_line(line, "tokens line 2: digest: 63 characters, a SHA-256 in "
		 "hex has 64");
	snprintf(line, sizeof(line), "bravo %s0 1", hb);
	bad_line(line, "tokens line 2: digest: 65 characters, a SHA-256 in "
		 "hex has 64");
	snprintf(line, sizeof(line), "bravo %.10sg%.53s 1", hb, hb + 11);
	bad_line(line, "tokens line 2: digest: not hexadecimal (character 11)");
	bad_line("bravo e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b"
		 "7852b855 *", "tokens line 2: digest: this is the SHA-256 of "
		 "the empty token");
	snprintf(line, sizeof(line), "br@vo %s 1", hb);
	bad_line(line, "tokens line 2: name: 'br@vo' holds a character other "
		 "than letters, digits, '.', '_' and '-'");
	snprintf(line, sizeof(line), "br\x01vo %s 1", hb);
	bad_line(line, "tokens line 2: name: 'br?vo' holds a character other "
		 "than letters, digits, '.', '_' and '-'");
	snprintf(line, sizeof(line), "%s %s 1",
		 "a234567890123456789012345678901234567890123456789012345678901234",
		 hb);
	bad_line(line, "tokens line 2: name: longer than 63 characters");
	/* Duplicates name the first line. */
	snprintf(line, sizeof(line), "alpha %s 1", hb);
	bad_line(line, "tokens line 2: name 'alpha' already used on line 1");
	{
		char a[65];

		snprintf(line, sizeof(line), "other %s 1",
			 hexdigest(tok_a, a));
		bad_line(line, "tokens line 2: digest already used on line 1 "
			 "(one token, two principals)");
		/* Upper-case hex is the same digest. */
		for (char *c = line; *c; c++)
			if (*c >= 'a' && *c <= 'f')
				*c = (char)(*c - 'a' + 'A');
		memcpy(line, "other", 5);
		bad_line(line, "tokens line 2: digest already used on line 1 "
			 "(one token, two principals)");
	}
	/* A long bad brand is quoted, cut, and made printable. */
	snprintf(line, sizeof(line), "bravo %s 1,%s", hb,
		 "12345678901234567890123456789012345678901234567890");
	bad_line(line, "tokens line 2: brand list: "
		 "'12345678901234567890123456789012...' is not a brand code "
		 "(1 to 99999999)");
}

static void test_line_numbers_and_comments(void)
{
	char a[65], text[1024], err[256];
	struct tokens *t = NULL;

	/* The fault is on line 5 (comments and blanks still count). */
	snprintf(text, sizeof(text), "# one\n\n  # three\nalpha %s 7\n"
		 "bravo xyz 1\n", hexdigest(tok_a, a));
	CHECK(tokens_parse(text, strlen(text), &t, err, sizeof(err)) ==
	      -EINVAL);
	CHECKF(strncmp(err, "tokens line 5: ", 15) == 0, "%s", err);

	/* A '#' mid-line cuts the rest, 'apply' included. */
	snprintf(text, sizeof(text), "alpha %s 7 #apply\n",
		 hexdigest(tok_a, a));
	CHECK(tokens_parse(text, strlen(text), &t, err, sizeof(err)) == 0);
	if (t != NULL) {
		const struct principal *p =
			tokens_authenticate(t, tok_a, strlen(tok_a));

		CHECK(p != NULL && !p->may_apply);
		tokens_destroy(t);
	}

	/* No principals at all. */
	CHECK(tokens_parse("# nobody\n\n", 10, &t, err, sizeof(err)) ==
	      -EINVAL);
	CHECK(t == NULL);
	CHECK_STREQ(err, "tokens: no principals in the file (every client "
		    "would be refused)");
	CHECK(tokens_parse("", 0, &t, err, sizeof(err)) == -EINVAL);

	/* A small error buffer truncates, never overruns. */
	{
		char small[12];

		memset(small, 'x', sizeof(small));
		CHECK(tokens_parse("a b c\n", 6, &t, small, 8) == -EINVAL);
		CHECK(small[7] == 0 && small[8] == 'x');
		CHECK(tokens_parse("a b c\n", 6, &t, NULL, 0) == -EINVAL);
	}
}

static void test_load_errors(void)
{
	char err[256];
	struct tokens *t = (struct tokens *)&t;

	CHECK(tokens_load("/nonexistent/consentd/tokens", &t, err,
			  sizeof(err)) == -ENOENT);
	CHECK(t == NULL);
	CHECKF(strstr(err, "/nonexistent/consentd/tokens") != NULL, "%s", err);
	CHECK(tokens_load("/tmp", &t, err, sizeof(err)) == -EINVAL);
	CHECK_STREQ(err, "tokens: /tmp: not a regular file");
}

/* Many principals: each token finds its own. */
static void test_many(void)
{
	enum { N = 200 };
	size_t cap = N * 128, len = 0;
	char *text = malloc(cap), err[256], tok[64], hex[65];
	struct tokens *t = NULL;

	CHECK(text != NULL);
	if (text == NULL)
		return;
	for (int i = 0; i < N; i++) {
		snprintf(tok, sizeof(tok), "token-number-%d", i);
		len += (size_t)snprintf(text + len, cap - len, "p%d %s %d\n", i,
					hexdigest(tok, hex), i + 1);
	}
	CHECK(tokens_parse(text, len, &t, err, sizeof(err)) == 0);
	for (int i = 0; t != NULL && i < N; i++) {
		const struct principal *p;
		char name[16];

		snprintf(tok, sizeof(tok), "token-number-%d", i);
		snprintf(name, sizeof(name), "p%d", i);
		p = tokens_authenticate(t, tok, strlen(tok));
		CHECK(p != NULL && strcmp(p->name, name) == 0);
		CHECK(p != NULL && principal_may_check(p, (uint32_t)i + 1));
		CHECK(p != NULL && !principal_may_check(p, (uint32_t)i + 2));
	}
	tokens_destroy(t);
	free(text);
}

int main(void)
{
	RUN(test_good_file);
	RUN(test_own_check_counts);
	RUN(test_authenticate_wrong);
	RUN(test_malformed_lines);
	RUN(test_line_numbers_and_comments);
	RUN(test_load_errors);
	RUN(test_many);
	return check_summary();
}
