/*
 * tokens_fuzz: tokens_parse on arbitrary text (an exact-size copy, so ASan
 * sees any over-read). Invariants (a violation traps):
 *   - failure: -EINVAL (or -ENOMEM), no set returned, and a NUL-terminated
 *     message that starts with "tokens";
 *   - success: a set, an empty message; every principal a token finds has
 *     a valid name, a brand list that is '*' or sorted, unique, non-zero
 *     and at most 8 digits, and principal_may_check agrees with a linear
 *     scan of that list.
 * The tokens tried are the input's own lines and slices, so a file that
 * holds the digest of one of them (rare, but the fuzzer can reach short
 * ones through the dictionary) exercises the match path.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokens.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static void check_principal(const struct principal *p)
{
	size_t n = strnlen(p->name, sizeof(p->name));

	REQUIRE(n > 0 && n <= TOKENS_NAME_MAX);
	if (p->all_brands) {
		REQUIRE(principal_may_check(p, 1));
		REQUIRE(principal_may_check(p, 99999999));
		return;
	}
	REQUIRE(p->n_brands > 0 && p->brands != NULL);
	for (size_t i = 0; i < p->n_brands; i++) {
		REQUIRE(p->brands[i] > 0 && p->brands[i] <= 99999999);
		if (i > 0)
			REQUIRE(p->brands[i - 1] < p->brands[i]);
		REQUIRE(principal_may_check(p, p->brands[i]));
		REQUIRE(!principal_may_check(p, p->brands[i] + 1) ||
			(i + 1 < p->n_brands &&
			 p->brands[i + 1] == p->brands[i] + 1));
	}
	REQUIRE(!principal_may_check(p, 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1);
	char err[160];
	struct tokens *t = (struct tokens *)&t;
	int rc;

	if (text == NULL)
		return 0;
	if (size)
		memcpy(text, data, size);
	memset(err, 'x', sizeof(err));
	rc = tokens_parse(text, size, &t, err, sizeof(err));
	REQUIRE(memchr(err, 0, sizeof(err)) != NULL);
	if (rc != 0) {
		REQUIRE(rc == -EINVAL || rc == -ENOMEM);
		REQUIRE(t == NULL);
		REQUIRE(strncmp(err, "tokens", 6) == 0);
		free(text);
		return 0;
	}
	REQUIRE(t != NULL && err[0] == 0);

	/* Try every line, and every prefix of the first 64 bytes, as a
	 * token. */
	for (size_t b = 0; b < size;) {
		const char *nl = memchr(text + b, '\n', size - b);
		size_t e = nl ? (size_t)(nl - text) : size;
		const struct principal *p =
			tokens_authenticate(t, text + b, e - b);

		if (p != NULL)
			check_principal(p);
		b = e + 1;
	}
	for (size_t n = 0; n <= size && n <= 64; n++) {
		const struct principal *p = tokens_authenticate(t, text, n);

		if (p != NULL)
			check_principal(p);
	}
	tokens_destroy(t);
	free(text);
	return 0;
}
