/*
 * outbox_fuzz: the outbox file's decoder (index/outbox.c, outbox_parse,
 * the same code outbox_open runs). The input is a whole file image, tried
 * as it is and once more with every unit's checksum made right (the units
 * walked by their length fields), so mutations of a valid seed reach the
 * record rules behind the checksums. Invariants (a violation traps):
 *   - the result is 0 or -EPROTO, the latter with a message;
 *   - on success the valid prefix is within the input, and parsing just
 *     that prefix succeeds with the same prefix and the same live count
 *     (what is cut as a torn tail never changes what came before it);
 *   - on success of the image with checksums made right, outbox_open on
 *     it as a file agrees: the same live entries, and it cuts exactly the
 *     bytes past the prefix (outbox_list then gives entries in increasing
 *     sequence, none reconciled).
 * OUTBOX_FUZZ_WRITE_SEEDS=DIR writes valid seeds, made with the real
 * writer (outbox_observe, outbox_commit, outbox_mark_pushed), to DIR.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/fsutil.h"
#include "core/le.h"
#include "index/outbox.h"
#include "proto/consent.pb-c.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

static char dir[64];

static void remove_dir(void)
{
	fsutil_rm_tree(dir);
}

static void write_file(const char *d, const uint8_t *p, size_t len)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", d, OUTBOX_FILE);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(fsutil_write_all(fd, p, len) == 0);
	close(fd);
}

static void observe(struct outbox *ob, const char *origin, unsigned k,
		    int status, int64_t date, uint64_t seq)
{
	char text[32];
	Consent__V1__Consent c = CONSENT__V1__CONSENT__INIT;
	snprintf(text, sizeof(text), "+90532%07u", k);
	c.recipient = text;
	c.channel = CONSENT__V1__CHANNEL__MESAJ;
	c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	c.brand_code = 600123;
	c.status = (Consent__V1__Status)status;
	c.source = CONSENT__V1__SOURCE__HS_MESAJ;
	c.consent_date = date;
	c.sequence = seq;
	outbox_observe(ob, origin, strlen(origin), &c);
}

static void copy_seed(const char *from, const char *out, int n)
{
	char a[128], b[512];
	snprintf(a, sizeof(a), "%s/%s", from, OUTBOX_FILE);
	snprintf(b, sizeof(b), "%s/seed-%d", out, n);
	int in = open(a, O_RDONLY), o = open(b, O_WRONLY | O_CREAT | O_TRUNC,
					     0644);
	REQUIRE(in >= 0 && o >= 0);
	uint8_t buf[65536];
	ssize_t r;
	while ((r = read(in, buf, sizeof(buf))) > 0)
		REQUIRE(fsutil_write_all(o, buf, (size_t)r) == 0);
	close(in);
	close(o);
}

static void write_seeds(const char *out)
{
	char d[96], err[256];
	struct outbox *ob = NULL;
	snprintf(d, sizeof(d), "%s/seeds", dir);
	mkdir(d, 0755);
	REQUIRE(outbox_open(d, &ob, NULL, err, sizeof(err)) == 0);
	copy_seed(d, out, 0); /* a header alone */
	observe(ob, "local", 1, 2, 1790000000, 1);
	outbox_commit(ob, 1, err, sizeof(err));
	copy_seed(d, out, 1);
	observe(ob, "local", 2, 2, 1790000001, 2);
	observe(ob, "local", 3, 2, 1790000002, 3);
	outbox_commit(ob, 3, err, sizeof(err));
	outbox_mark_pushed(ob, 2, "3f1c2a9e-0b7d-4e5c-9a61-2f8d4b7c1e00", 36,
			   err, sizeof(err));
	copy_seed(d, out, 2);
	observe(ob, "iys:600123:HS", 1, 2, 1790000000, 4);
	observe(ob, "gateway", 3, 2, 1790000005, 5);
	outbox_commit(ob, 5, err, sizeof(err));
	copy_seed(d, out, 3);
	outbox_close(ob);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/tmp/outbox_fuzz.XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(remove_dir);
	const char *out = getenv("OUTBOX_FUZZ_WRITE_SEEDS");
	if (out != NULL)
		write_seeds(out);
	return 0;
}

/* Parses p and checks the invariants; returns the result. */
static int check_parse(const uint8_t *p, size_t len, size_t *good,
		       size_t *live)
{
	char err[256] = "";
	int rc = outbox_parse(p, len, good, live, err, sizeof(err));
	REQUIRE(rc == 0 || rc == -EPROTO);
	if (rc < 0) {
		REQUIRE(err[0] != '\0');
		return rc;
	}
	REQUIRE(*good <= len);
	size_t g2 = 0, l2 = 0;
	REQUIRE(outbox_parse(p, *good, &g2, &l2, err, sizeof(err)) == 0);
	REQUIRE(g2 == *good && l2 == *live);
	return 0;
}

/* Recomputes every unit's checksum, walking units by their lengths. */
static void fix_checksums(uint8_t *p, size_t len)
{
	size_t off = 16;
	while (off + 8 <= len) {
		uint32_t plen = le_get32(p + off);
		if (plen == 0 || plen > len - off - 8)
			return;
		le_put32(p + off + 4, (uint32_t)XXH3_64bits(p + off + 8, plen));
		off += 8 + (size_t)plen;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: ASan sees any over-read. */
	uint8_t *p = malloc(size ? size : 1);
	size_t good, live;
	if (p == NULL)
		return 0;
	memcpy(p, data, size);
	check_parse(p, size, &good, &live);
	fix_checksums(p, size);
	if (check_parse(p, size, &good, &live) == 0 && size > 0) {
		char err[256];
		struct outbox *ob = NULL;
		uint64_t cut = 0;
		write_file(dir, p, size);
		int rc = outbox_open(dir, &ob, &cut, err, sizeof(err));
		REQUIRE(rc == 0);
		REQUIRE(good < 16 || cut == size - good);
		struct outbox_entry *e = calloc(live + 1, sizeof(*e));
		uint64_t depth = 0;
		size_t n = outbox_list(ob, NULL, NULL, e, live + 1, &depth);
		REQUIRE(n == live && depth == live);
		for (size_t i = 0; i < n; i++) {
			REQUIRE(e[i].state == OUTBOX_QUEUED ||
				e[i].state == OUTBOX_PUSHED);
			REQUIRE(i == 0 || e[i].sequence > e[i - 1].sequence);
		}
		free(e);
		outbox_close(ob);
	}
	free(p);
	return 0;
}
