/*
 * csv_fuzz: arbitrary bytes as an İYS daily change file (core/iys.c's CSV
 * importer, iys_csv_import). The first input byte picks a read size (1-256
 * bytes per read), the rest is the file. Checks: no crash or over-read; a
 * failure always says why; every record emitted passes consent_validate
 * with consecutive sequences; input read in small pieces gives byte for
 * byte the records of input read at once; and a file that imports without
 * skip_bad imports the same with it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "core/iys.h"
#include "core/stream.h"

struct sink {
	uint8_t *bytes;
	size_t len, cap;
	uint64_t next_seq;
};

static int sink_emit(void *arg, const Consent__V1__Consent *c)
{
	struct sink *s = arg;
	struct recipient r;
	const char *field, *why;
	size_t n = consent__v1__consent__get_packed_size(c);

	if (consent_validate(c, &r, &field, &why) < 0 || c->sequence != s->next_seq)
		abort();
	s->next_seq++;
	if (s->cap - s->len < n) {
		s->cap = (s->cap + n) * 2;
		s->bytes = realloc(s->bytes, s->cap);
		if (!s->bytes)
			abort();
	}
	s->len += consent__v1__consent__pack(c, s->bytes + s->len);
	return 0;
}

struct mem {
	const char *p;
	size_t len, pos, step;
};

static ssize_t mem_read(void *arg, char *buf, size_t cap)
{
	struct mem *m = arg;
	size_t n = m->len - m->pos;

	if (n > m->step)
		n = m->step;
	if (n > cap)
		n = cap;
	memcpy(buf, m->p + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

static int run(const char *p, size_t len, size_t step, bool skip_bad,
	       struct sink *s, struct iys_counts *k)
{
	struct iys_opts o = { .brand_code = 4242, .iys_code = 1,
			      .skip_bad = skip_bad, .first_sequence = 10 };
	struct mem m = { p, len, 0, step };
	char err[512] = "";
	int rc;

	s->len = 0;
	s->next_seq = 11;
	rc = iys_csv_import(&o, mem_read, &m, sink_emit, s, k, err, sizeof(err));
	if (rc < 0 && err[0] == '\0')
		abort(); /* a failure must say why */
	if (rc == 0 && k->records != s->next_seq - 11)
		abort();
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct sink a, b;
	struct iys_counts ka, kb;

	if (size < 1)
		return 0;
	size_t step = (size_t)data[0] + 1;
	/* An exact-size copy, so ASan sees any over-read. */
	char *p = malloc(size - 1 ? size - 1 : 1);

	memcpy(p, data + 1, size - 1);
	int strict = run(p, size - 1, SIZE_MAX, false, &a, &ka);
	int rc_a = run(p, size - 1, SIZE_MAX, true, &a, &ka);
	int rc_b = run(p, size - 1, step, true, &b, &kb);

	if (rc_a != rc_b || ka.records != kb.records || ka.bad != kb.bad ||
	    a.len != b.len || (a.len && memcmp(a.bytes, b.bytes, a.len) != 0))
		abort(); /* the read size changed the result */
	if (strict == 0 && (rc_a != 0 || ka.bad != 0))
		abort();
	free(p);
	return 0;
}
