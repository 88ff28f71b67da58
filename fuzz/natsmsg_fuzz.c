/*
 * natsmsg_fuzz: core/natsmsg.c's decoder on arbitrary messages. The input
 * is a flags byte (bit i: header i present: origin, after-cursor, cursor)
 * then NUL-separated fields: subject, origin, after-cursor, cursor, and
 * the rest is the payload (an exact-size copy, so ASan sees any
 * over-read). Invariants (a violation traps):
 *   - failure: -EPROTO (or -ENOMEM), no request, a message;
 *   - success: the request's strings are the headers given (absent ones
 *     empty), a cursor or after-cursor only with an origin, and encoding
 *     it again (natsmsg_encode) then decoding that gives the same strings
 *     and the same changes, each packed alike with its sequence as 0
 *     (but for a change carrying unknown fields: see the comment there).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/natsmsg.h"
#include "proto/consent.pb-c.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static const char *field(const uint8_t **p, const uint8_t *end, char *buf,
			 size_t cap)
{
	size_t n = 0;
	while (*p < end && **p != 0 && n + 1 < cap)
		buf[n++] = (char)*(*p)++;
	buf[n] = '\0';
	if (*p < end)
		(*p)++; /* the NUL (or the byte past the cap) */
	return buf;
}

static int same_change(const Consent__V1__Consent *a,
		       const Consent__V1__Consent *b)
{
	Consent__V1__Consent x = *a, y = *b;
	x.sequence = y.sequence = 0;
	size_t nx = consent__v1__consent__get_packed_size(&x);
	size_t ny = consent__v1__consent__get_packed_size(&y);
	if (nx != ny)
		return 0;
	uint8_t *bx = malloc(nx + 1), *by = malloc(ny + 1);
	consent__v1__consent__pack(&x, bx);
	consent__v1__consent__pack(&y, by);
	int same = memcmp(bx, by, nx) == 0;
	free(bx);
	free(by);
	return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char subject[96], hv[3][NATSMSG_VALUE_MAX + 2], err[300];
	const uint8_t *p = data, *end = data + size;
	const char *h[3];

	if (size < 1)
		return 0;
	uint8_t flags = *p++;
	field(&p, end, subject, sizeof(subject));
	for (int i = 0; i < 3; i++) {
		field(&p, end, hv[i], sizeof(hv[i]));
		h[i] = flags & (1u << i) ? hv[i] : NULL;
	}
	size_t len = (size_t)(end - p);
	uint8_t *payload = malloc(len ? len : 1);
	memcpy(payload, p, len);

	Consent__V1__ApplyRequest *a = (void *)1;
	err[0] = '\0';
	int rc = natsmsg_decode(subject, payload, len, h[0], h[1], h[2], &a,
				err, sizeof(err));
	free(payload);
	if (rc < 0) {
		REQUIRE(rc == -EPROTO || rc == -ENOMEM);
		REQUIRE(a == NULL && err[0] != '\0');
		return 0;
	}
	REQUIRE(a != NULL);
	for (int i = 0; i < 3; i++) {
		const char *got = i == 0 ? a->origin :
				  i == 1 ? a->after_cursor : a->cursor;
		REQUIRE(strcmp(got, h[i] ? h[i] : "") == 0);
	}
	REQUIRE(a->origin[0] != '\0' ||
		(a->cursor[0] == '\0' && a->after_cursor[0] == '\0'));

	struct natsmsg_out out;
	if (natsmsg_encode(a, &out, err, sizeof(err)) == 0) {
		Consent__V1__ApplyRequest *b = NULL;
		int rc2 = natsmsg_decode(out.subject, out.data, out.len,
					 a->origin[0] ? a->origin : NULL,
					 a->after_cursor[0] ? a->after_cursor :
							      NULL,
					 a->cursor[0] ? a->cursor : NULL, &b,
					 err, sizeof(err));
		/* protobuf-c keeps the unknown fields it read and packs them
		 * back, and a few it accepts (field number 0 spelt as a
		 * two-byte varint) it refuses in their shortest spelling:
		 * only such a message may fail the second time. */
		bool unknown = false;
		for (size_t i = 0; i < a->n_changes; i++)
			unknown |= a->changes[i]->base.n_unknown_fields > 0;
		REQUIRE(rc2 == 0 || rc2 == -ENOMEM || unknown);
		if (rc2 == 0) {
			REQUIRE(b->n_changes == a->n_changes);
			for (size_t i = 0; i < a->n_changes; i++) {
				REQUIRE(b->changes[i]->sequence == 0);
				REQUIRE(same_change(a->changes[i],
						    b->changes[i]));
			}
			REQUIRE(strcmp(a->origin, b->origin) == 0);
			REQUIRE(strcmp(a->cursor, b->cursor) == 0);
			consent__v1__apply_request__free_unpacked(b, NULL);
		}
		natsmsg_out_fini(&out);
	} else {
		/* Only a value a header cannot carry is refused. */
		REQUIRE(strpbrk(a->origin, "\r\n") ||
			strpbrk(a->after_cursor, "\r\n") ||
			strpbrk(a->cursor, "\r\n") ||
			strlen(a->origin) > NATSMSG_VALUE_MAX ||
			strlen(a->after_cursor) > NATSMSG_VALUE_MAX ||
			strlen(a->cursor) > NATSMSG_VALUE_MAX);
	}
	consent__v1__apply_request__free_unpacked(a, NULL);
	return 0;
}
