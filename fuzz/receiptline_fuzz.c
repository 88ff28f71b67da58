/*
 * receiptline_fuzz: receiptline_parse on arbitrary bytes (an exact-size
 * copy, so ASan sees any over-read). Invariants (a violation traps):
 *   - failure: -EINVAL and a NUL-terminated one-line message (no control
 *     character) that names a field ("field N (NAME)"), the count of
 *     fields, or the line;
 *   - success: the recipient is canonical (it normalises to itself), the
 *     brand 1-99999999, channel and type named values, a phone recipient
 *     only on ARAMA/MESAJ and an e-mail only on EPOSTA, a sequence above
 *     0; and the same input parses the same way twice.
 *   - 0 (no receipt): the line is blank or a '#' comment.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"
#include "core/receiptline.h"
#include "core/recipient.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1);
	char err[300];
	struct receiptline l, again;
	int rc;

	if (text == NULL)
		return 0;
	if (size)
		memcpy(text, data, size);
	memset(err, 'x', sizeof(err));
	memset(&l, 0xa5, sizeof(l));
	rc = receiptline_parse(text, size, &l, err, sizeof(err));
	REQUIRE(memchr(err, 0, sizeof(err)) != NULL);
	if (rc < 0) {
		REQUIRE(rc == -EINVAL);
		REQUIRE(err[0] != 0);
		for (size_t i = 0; err[i]; i++)
			REQUIRE((unsigned char)err[i] >= 0x20);
		REQUIRE(strstr(err, "field") != NULL ||
			strncmp(err, "line ", 5) == 0);
	} else if (rc == 0) {
		size_t i = 0;
		while (i < size && (text[i] == ' ' || text[i] == '\t' ||
				    text[i] == '\r' || text[i] == '\n'))
			i++;
		REQUIRE(i == size || text[i] == '#');
	} else {
		struct recipient r;
		const char *why = NULL;
		char canon[RECIPIENT_TEXT_MAX];
		size_t n = strnlen(l.recipient, sizeof(l.recipient));

		REQUIRE(rc == 1);
		REQUIRE(n > 0 && n < sizeof(l.recipient));
		REQUIRE(recipient_normalize(l.recipient, n, &r, &why) == 0);
		REQUIRE(recipient_format(&r, canon, sizeof(canon)) == (int)n);
		REQUIRE(strcmp(canon, l.recipient) == 0);
		REQUIRE(l.brand_code >= 1 &&
			l.brand_code <= RECEIPTLINE_BRAND_MAX);
		REQUIRE(enums_channel_name(l.channel) != NULL);
		REQUIRE(enums_rtype_name(l.recipient_type) != NULL);
		REQUIRE((l.channel == CHANNEL_EPOSTA) ==
			(r.kind == RECIPIENT_EMAIL));
		REQUIRE(l.sequence > 0);
		memset(&again, 0, sizeof(again));
		REQUIRE(receiptline_parse(text, size, &again, err,
					  sizeof(err)) == 1);
		REQUIRE(strcmp(again.recipient, l.recipient) == 0 &&
			again.brand_code == l.brand_code &&
			again.channel == l.channel &&
			again.recipient_type == l.recipient_type &&
			again.sequence == l.sequence);
	}
	free(text);
	return 0;
}
