/*
 * iys: İYS's own change formats to consent.v1.Consent records (DESIGN §3.5,
 * §3.6): the daily CSV file and the pull API's JSON pages of one brand.
 * Each record is converted (Turkey-time dates, canonical recipient, enum
 * names), validated and numbered, then handed to the caller's emit.
 * Any thread; calls share nothing. The input stays the caller's; a record
 * passed to emit lives only until emit returns. Errors: -errno, with a
 * message in err naming the line (CSV) or list index (JSON) and the field.
 */
#ifndef CONSENTD_CORE_IYS_H
#define CONSENTD_CORE_IYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "core/recipient.h"
#include "proto/consent.pb-c.h"

#define IYS_LINE_MAX (64u << 10)  /* a CSV line, without its end */
#define IYS_COLUMNS_MAX 64        /* columns of a CSV line */
#define IYS_TX_MAX 256            /* transactionId bytes */
#define IYS_JSON_MAX (256u << 20) /* a JSON input, all pages */
#define IYS_BAD_SHOWN 100         /* skip_bad: records reported one by one */

/* The İYS fields, in the daily file's documented column order. */
enum iys_field {
	IYS_CREATION_DATE,
	IYS_TRANSACTION_ID,
	IYS_RECIPIENT,
	IYS_RECIPIENT_TYPE,
	IYS_TYPE,
	IYS_STATUS,
	IYS_CONSENT_DATE,
	IYS_SOURCE,
	IYS_N_FIELDS
};

/* Their names as İYS spells them ("creationDate", ...). */
extern const char *const iys_field_names[IYS_N_FIELDS];

/* A field's text, not NUL-terminated; p may be NULL when len is 0. */
struct iys_text {
	const char *p;
	size_t len;
};

/* One record built from texts: the Consent points into this struct. */
struct iys_record {
	Consent__V1__Consent c;
	char recipient[RECIPIENT_TEXT_MAX];
	char tx[IYS_TX_MAX + 1];
};

struct iys_opts {
	uint32_t brand_code;
	uint32_t iys_code;
	bool skip_bad;           /* skip and count bad records, not fail */
	uint64_t first_sequence; /* records are numbered from this + 1 */
	FILE *diag;              /* skipped records reported here; NULL: not */
};

struct iys_counts {
	uint64_t records;      /* emitted */
	uint64_t bad;          /* skipped (skip_bad) */
	uint64_t backwards;    /* creationDate earlier than the record before */
	int64_t last_creation; /* of the last record emitted */
};

/* Receives each record, its sequence set; < 0 stops the import and is
 * returned by it. */
typedef int (*iys_emit_fn)(void *arg, const Consent__V1__Consent *c);
/* Reads up to cap bytes: > 0 bytes, 0 at the end, < 0 -errno. */
typedef ssize_t (*iys_read_fn)(void *arg, char *buf, size_t cap);

/*
 * Builds out from the texts f (indexed by enum iys_field) and validates it
 * (consent_validate). Returns 0, or -EINVAL with *field and *why set to
 * static texts naming the fault. The sequence is left 0.
 */
int iys_record_build(const struct iys_text f[IYS_N_FIELDS],
		     uint32_t brand_code, uint32_t iys_code,
		     struct iys_record *out, const char **field,
		     const char **why);

/*
 * Imports a CSV file pulled through rd, emitting each good record in input
 * order. Sets *counts. Returns 0; -EPROTO for a bad or missing header;
 * -EINVAL for a bad record without o->skip_bad; a read's or emit's error;
 * -EOVERFLOW if the sequence would pass 2^64-1; -ENOMEM. Every error but
 * -ENOMEM and emit's leaves a message in err.
 */
int iys_csv_import(const struct iys_opts *o, iys_read_fn rd, void *rd_arg,
		   iys_emit_fn emit, void *emit_arg, struct iys_counts *counts,
		   char *err, size_t err_cap);

/*
 * Imports buf[0..len), one or more pull API pages (or bare lists). Sets
 * *counts, and after to the last page's "after" (empty if none). Returns
 * as iys_csv_import, and -EPROTO also for malformed JSON (by page and
 * byte) or a page without a "list"; -EMSGSIZE over IYS_JSON_MAX bytes.
 */
int iys_json_import(const struct iys_opts *o, const char *buf, size_t len,
		    iys_emit_fn emit, void *emit_arg, struct iys_counts *counts,
		    char *after, size_t after_cap, char *err, size_t err_cap);

#endif
