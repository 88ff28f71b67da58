/*
 * json_import_fuzz: arbitrary bytes as İYS pull API pages (core/iys.c's
 * JSON importer, iys_json_import). Checks: no crash or over-read; a
 * failure always says why; every record emitted passes consent_validate
 * with consecutive sequences; input that imports without skip_bad imports
 * to the same records with it, none skipped.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "core/iys.h"
#include "core/stream.h"

struct sink {
	uint64_t hash;
	uint64_t next_seq;
};

static int sink_emit(void *arg, const Consent__V1__Consent *c)
{
	struct sink *s = arg;
	struct recipient r;
	const char *field, *why;
	uint8_t buf[2048];

	if (consent_validate(c, &r, &field, &why) < 0 || c->sequence != s->next_seq)
		abort();
	s->next_seq++;
	if (consent__v1__consent__get_packed_size(c) > sizeof(buf))
		abort(); /* bounded by the field limits */
	size_t n = consent__v1__consent__pack(c, buf);

	s->hash = XXH3_64bits_withSeed(buf, n, s->hash);
	return 0;
}

static int run(const char *p, size_t len, bool skip_bad, struct sink *s,
	       struct iys_counts *k)
{
	struct iys_opts o = { .brand_code = 7, .skip_bad = skip_bad };
	char err[512] = "", after[64];
	int rc;

	s->hash = 0;
	s->next_seq = 1;
	rc = iys_json_import(&o, p, len, sink_emit, s, k, after, sizeof(after),
			     err, sizeof(err));
	if (rc < 0 && err[0] == '\0')
		abort();
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sink a, b;
	struct iys_counts ka, kb;
	char *p = malloc(size ? size : 1); /* exact size: ASan sees over-reads */

	memcpy(p, data, size);
	int strict = run(p, size, false, &a, &ka);
	int lax = run(p, size, true, &b, &kb);

	if (strict == 0 && (lax != 0 || kb.bad != 0 || a.hash != b.hash ||
			    ka.records != kb.records))
		abort();
	free(p);
	return 0;
}
