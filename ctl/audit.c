/*
 * consentctl audit: the evidence store's chain (DESIGN §10) checked
 * offline. "verify DIR" recomputes DIR/history's chain and every record's
 * framing, checksum, order and back-pointer (history_verify); "head DIR"
 * prints the head the same recomputation ends at. Both read a copy a
 * running server may hold (no lock, no write).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/hex.h"
#include "ctl/ctl.h"
#include "index/history.h"

int ctl_audit(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "verify") != 0 &&
			  strcmp(argv[1], "head") != 0)) {
		fprintf(stderr, "usage: consentctl audit verify DIR | audit head DIR\n");
		return 2;
	}
	uint64_t seq = 0, records = 0;
	uint8_t head[HISTORY_HASH_BYTES];
	char err[1024] = "", text[2 * HISTORY_HASH_BYTES + 1];
	int rc = history_verify(argv[2], &seq, head, &records, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "consentctl audit %s: %s\n", argv[1], err);
		return 1;
	}
	hex_put(text, head, HISTORY_HASH_BYTES);
	if (strcmp(argv[1], "verify") == 0)
		printf("ok: %" PRIu64 " records, head %" PRIu64 " %s\n", records,
		       seq, text);
	else
		printf("%" PRIu64 " %s\n", seq, text);
	return 0;
}
