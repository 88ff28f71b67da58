/*
 * history_fuzz: the evidence store's record decoder (index/history.c,
 * history_record_decode, the code history_open and history_verify read
 * segments with). The input is a segment image. Invariants (a violation
 * traps):
 *   - decoding records from the header on gives, at each step, a record
 *     within the input (> 0 bytes), 0 (a prefix of one: the torn tail
 *     open cuts) or -EPROTO with a reason, and nothing else;
 *   - a decoded record's payload lies inside it;
 *   - the image with its header and every framing checksum made right
 *     (records walked by their lengths), written as a store's only
 *     segment, is judged by history_verify: 0 with no more records than
 *     were decoded, or -EPROTO naming the file and an offset. So
 *     mutations reach the payload, sequence, back-pointer and chain
 *     rules behind the checksums.
 * HISTORY_FUZZ_WRITE_SEEDS=DIR writes seeds made by the real writer
 * (history_append) to DIR.
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
#include "index/history.h"
#include "proto/consent.pb-c.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

#define SEG_HDR 128
#define REC_HDR 80
#define SEG_NAME "00000000000000000000.hist"

static char dir[64];

static int write_seg(const uint8_t *p, size_t len)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s/%s", dir, HISTORY_DIR, SEG_NAME);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int rc = fsutil_write_all(fd, p, len);
	close(fd);
	return rc;
}

/* Seeds: stores the real writer made, their first segment. */
static void write_seeds(const char *out)
{
	char d[64], path[256];
	snprintf(d, sizeof(d), "/tmp/history_seed.XXXXXX");
	if (mkdtemp(d) == NULL)
		return;
	static const int sizes[] = { 1, 3, 12 };
	for (int s = 0; s < 3; s++) {
		struct history *h = NULL;
		char err[256];
		snprintf(path, sizeof(path), "%s/%s", d, HISTORY_DIR);
		fsutil_rm_tree(path);
		if (history_open(d, NULL, &h, err, sizeof(err)) != 0)
			return;
		for (int i = 0; i < sizes[s]; i++) {
			Consent__V1__Consent c;
			char rcp[32], tx[32];
			consent__v1__consent__init(&c);
			snprintf(rcp, sizeof(rcp), "+90532%07d", i % 4);
			snprintf(tx, sizeof(tx), "tx-%d", i);
			c.recipient = rcp;
			c.transaction_id = tx;
			c.channel = CONSENT__V1__CHANNEL__MESAJ;
			c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
			c.brand_code = 600001;
			c.status = 1 + i % 2;
			c.source = CONSENT__V1__SOURCE__HS_WEB;
			c.consent_date = 1700000000 + i;
			c.sequence = 10 + (uint64_t)i / 2;
			Consent__V1__Consent *pc = &c;
			history_append(h, &pc, 1, 1700000000 + i, err, sizeof(err));
		}
		history_close(h);
		snprintf(path, sizeof(path), "%s/%s/%s", d, HISTORY_DIR, SEG_NAME);
		int fd = open(path, O_RDONLY);
		uint8_t buf[1 << 16];
		ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf)) : -1;
		if (fd >= 0)
			close(fd);
		if (n > 0) {
			snprintf(path, sizeof(path), "%s/seed-%d", out, s);
			fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd >= 0) {
				fsutil_write_all(fd, buf, (size_t)n);
				close(fd);
			}
		}
	}
	fsutil_rm_tree(d);
}

static void cleanup(void)
{
	fsutil_rm_tree(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(dir, sizeof(dir), "/tmp/history_fuzz.XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(cleanup);
	char p[128];
	snprintf(p, sizeof(p), "%s/%s", dir, HISTORY_DIR);
	mkdir(p, 0755);
	const char *out = getenv("HISTORY_FUZZ_WRITE_SEEDS");
	if (out != NULL)
		write_seeds(out);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 1 << 20)
		return 0;
	size_t off = size < SEG_HDR ? size : SEG_HDR, n_ok = 0;
	for (;;) {
		struct history_record r;
		const char *why = NULL;
		int rc = history_record_decode(data + off, size - off, &r, &why);
		REQUIRE(rc >= 0 || (rc == -EPROTO && why != NULL && *why));
		if (rc <= 0)
			break;
		REQUIRE((size_t)rc <= size - off);
		REQUIRE(r.payload >= data + off + REC_HDR &&
			r.payload + r.payload_len == data + off + (size_t)rc);
		off += (size_t)rc;
		n_ok++;
	}

	/* The image with its checksums made right, through verify. */
	if (size < SEG_HDR)
		return 0;
	uint8_t *img = malloc(size);
	memcpy(img, data, size);
	memcpy(img, "CONSHIS1", 8);
	le_put64(img + 8, 0);
	le_put64(img + 120, XXH3_64bits(img, 120));
	size_t walked = 0;
	for (off = SEG_HDR; size - off >= REC_HDR;) {
		uint32_t plen = le_get32(img + off);
		if (plen == 0 || plen > size - off - REC_HDR || plen > (1u << 17))
			break;
		le_put32(img + off + 4, (uint32_t)XXH3_64bits(img + off, 4));
		le_put64(img + off + 8,
			 XXH3_64bits(img + off + 16, REC_HDR - 16 + plen));
		off += REC_HDR + plen;
		walked++;
	}
	if (write_seg(img, size) == 0) {
		uint64_t seq, records;
		uint8_t head[HISTORY_HASH_BYTES];
		char err[1024] = "";
		int rc = history_verify(dir, &seq, head, &records, err,
					sizeof(err));
		REQUIRE(rc == 0 || rc == -EPROTO);
		if (rc == 0)
			REQUIRE(records <= walked);
		else
			REQUIRE(strstr(err, SEG_NAME) != NULL &&
				strstr(err, "offset ") != NULL);
	}
	free(img);
	return 0;
}
