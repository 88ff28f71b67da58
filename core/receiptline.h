/*
 * receiptline: the send-log line a gateway writes beside each commercial
 * message it sends, so that the verdict it acted on can be reproduced
 * later (consentctl receipt; DESIGN §10, README "Receipts"). One line,
 * five fields separated by blanks (spaces or tabs):
 *
 *     RECIPIENT BRAND CHANNEL TYPE SEQUENCE
 *     +905321234567 600123 MESAJ BIREYSEL 4711
 *
 * RECIPIENT as the gateway asked for it (any form core/recipient.h
 * normalises, without blanks; the canonical form is kept), BRAND the brand
 * code (1-99999999), CHANNEL ARAMA|MESAJ|EPOSTA, TYPE BIREYSEL|TACIR (case
 * does not matter), SEQUENCE the applied_sequence of the CheckResponse
 * that allowed the send (a decimal above 0). Leading and trailing blanks
 * and a trailing CR or LF are ignored; an empty line or one whose first
 * non-blank is '#' holds no receipt. Pure functions, any thread.
 * Errors: -EINVAL with err "field N (NAME): what was wrong", or a line
 * fault ("line longer than …", "N fields, want 5") without a field.
 */
#ifndef CONSENTD_CORE_RECEIPTLINE_H
#define CONSENTD_CORE_RECEIPTLINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/recipient.h"

#define RECEIPTLINE_MAX 1024   /* bytes in a line, its CR/LF included */
#define RECEIPTLINE_FIELDS 5
#define RECEIPTLINE_BRAND_MAX 99999999u

struct receiptline {
	char recipient[RECIPIENT_TEXT_MAX]; /* canonical, NUL-terminated */
	uint32_t brand_code;
	int channel;        /* enum channel */
	int recipient_type; /* enum rtype */
	uint64_t sequence;  /* > 0 */
};

/* Parses line[0..len) (not NUL-terminated). 1 with *out filled; 0 for a
 * blank or comment line (*out untouched); -EINVAL with err. */
int receiptline_parse(const char *line, size_t len, struct receiptline *out,
		      char *err, size_t err_cap);

#endif
