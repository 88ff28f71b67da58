/*
 * iyscred_fuzz: iyscred_parse on arbitrary text (an exact-size copy, so
 * ASan sees any over-read). Invariants (a violation traps):
 *   - failure: -EINVAL, a NUL-terminated message starting "credentials:";
 *   - success: both values 1-256 bytes, NUL-terminated, free of control
 *     characters but tab, without leading or trailing blanks, and each
 *     found verbatim in the input.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/iyscred.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static void check_value(const char *v, const char *text, size_t size)
{
	size_t n = strnlen(v, IYSCRED_VALUE_MAX + 1);

	REQUIRE(n >= 1 && n <= IYSCRED_VALUE_MAX);
	REQUIRE(v[0] != ' ' && v[0] != '\t');
	REQUIRE(v[n - 1] != ' ' && v[n - 1] != '\t');
	for (size_t i = 0; i < n; i++)
		REQUIRE(((unsigned char)v[i] >= 0x20 || v[i] == '\t') &&
			v[i] != 0x7f);
	REQUIRE(memmem(text, size, v, n) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1);
	char err[400];
	struct iyscred c;
	int rc;

	if (text == NULL)
		return 0;
	if (size)
		memcpy(text, data, size);
	memset(err, 'x', sizeof(err));
	rc = iyscred_parse(text, size, &c, err, sizeof(err));
	REQUIRE(memchr(err, 0, sizeof(err)) != NULL);
	if (rc != 0) {
		REQUIRE(rc == -EINVAL);
		REQUIRE(strncmp(err, "credentials:", 12) == 0);
	} else {
		REQUIRE(err[0] == 0);
		check_value(c.username, text, size);
		check_value(c.password, text, size);
	}
	free(text);
	return 0;
}
