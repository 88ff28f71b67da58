/*
 * build: a new generation from a snapshot stream (DESIGN §2, §3.5). Reads
 * and validates the whole stream (a bad record or a bad trailer rejects it
 * whole, naming the offset and field), sizes the table for the records
 * plus headroom and inserts, into a generation in memory
 * (index/generation.h) that the server's writer takes, or that is
 * published as generation newest+1 of a data directory. Whatever was
 * served before stays untouched. Any thread (the server runs it on a
 * background one); one builder per data directory at a time.
 */
#ifndef CONSENTD_INDEX_BUILD_H
#define CONSENTD_INDEX_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct build_result {
	uint64_t generation;
	uint64_t records;      /* distinct keys in the index */
	uint64_t stream_records;
	uint64_t watermark;    /* the snapshot header's sequence */
	int64_t created_at;
	double seconds;        /* the whole build, publishing included */
	double read_seconds;   /* of which reading, checking, staging */
	uint64_t bytes;        /* the table's memory */
};

/* Reads and validates the whole stream and builds its index in memory:
 * out gets the table (header: generation 0, the snapshot's watermark,
 * created_at and data_as_of its created_at) and the addresses of its
 * e-mail keys, out's to free (generation_fini). Nothing touches a data
 * directory. */
struct generation;
int build_index(int fd, struct generation *out, struct build_result *res,
		char *err, size_t err_cap);
/* DESIGN §10: every record of a data directory's first snapshot into its
 * evidence store (index/history.h). A build with a sink hands it the
 * stream's records in stream order, every field as the stream has it and
 * sequence set to the header's (the snapshot's watermark), from the
 * thread that inserts, before the trailer is checked: a build that then
 * fails has given records of a snapshot never published (the store's
 * owner resets it before the next try). */
typedef struct Consent__V1__Consent Consent__V1__Consent;
struct build_sink {
	/* Before each pass over the stream (a file whose trailer hint
	 * proved wrong is read twice): 0, or -errno stopping the build. */
	int (*begin)(void *ctx, char *err, size_t err_cap);
	/* records[0..n), valid for the call only. 0, or -errno stopping
	 * the build with the message in err. */
	int (*records)(void *ctx, Consent__V1__Consent *const *records,
		       size_t n, char *err, size_t err_cap);
	void *ctx;
};
int build_index_sink(int fd, const struct build_sink *sink,
		     struct generation *out, struct build_result *res,
		     char *err, size_t err_cap);

/* The sink into an evidence store h (the caller's, open): history_reset
 * before each pass, then the records appended at the watermark with
 * applied_at. A snapshot at sequence 0 that the store refuses (its
 * positions start at 1) is left out whole: unplaced says so. */
struct history;
struct build_history_sink {
	struct history *h;
	int64_t applied_at;
	bool unplaced;
	struct build_sink sink; /* its ctx is the struct itself */
};
void build_history_sink_init(struct build_history_sink *s, struct history *h,
			     int64_t applied_at);

/* build_index on threads decoding threads (0: one per online core; the
 * calling thread inserts). The result means the same for any number:
 * tests compare them. */
int build_index_threads(int fd, unsigned threads, struct generation *out,
			struct build_result *res, char *err, size_t err_cap);

/* The §8 state a peer's snapshot states at its watermark (StreamHeader
 * origins 7, origins_kind 8; README "Decisions"), as build_index reads
 * it: into *out (created; the caller's), or *out left as it was for a
 * header that states none (kind 0, no origins). A kind outside
 * index/origins.h's, origins listed without kind 2, an origin or cursor
 * origins_check_text refuses (an empty cursor among them), or an origin
 * listed twice is -EPROTO with why naming the offset and the field;
 * -ENOMEM. */
struct origins;
typedef struct Consent__V1__StreamHeader Consent__V1__StreamHeader;
int build_header_origins(const Consent__V1__StreamHeader *h, uint64_t offset,
			 struct origins **out, char *why, size_t why_cap);

/* build_index, then publishes the result as generation newest+1 of dir
 * (created if missing; generation_publish). Into a dir without a
 * generation, the records also go into its evidence store (DIR/history,
 * emptied first; -EBUSY when a server holds it), made durable before the
 * generation is published. */
int build_snapshot(int fd, const char *dir, struct build_result *res,
		   char *err, size_t err_cap);

/* What a dump streams: an index, the addresses of its e-mail keys (an
 * emails file opened with generation_emails_open, then a list), and the
 * header's fields. The index may be one the server's writer is still
 * changing (GET /v1/snapshot): index_foreach and lookups read it as
 * lookups do, and every key an address names is in it already. */
struct generation_email_list;
struct origins;
struct build_dump_source {
	const struct index *ix;
	int emails_fd;            /* -1: no file */
	const char *emails_name;  /* its path, for messages */
	const struct generation_email_list *extra; /* NULL: none */
	uint64_t watermark;       /* the header's sequence */
	int64_t created_at;
	const struct origins *origins; /* §8's state at watermark (NULL: none),
					* as header origins/origins_kind */
	const char *origin;       /* the header's origin text */
	/* §10: the evidence chain's head at watermark (32 bytes), as the
	 * header's chain_hash; NULL: none (history off or empty). */
	const uint8_t *chain_hash;
};

/* The one dump (consentctl dump and GET /v1/snapshot): a snapshot stream
 * of src to fd, phones in table order, then e-mails in the order of the
 * file and the list, then the trailer. An address whose key is not in the
 * index is -EPROTO. *records gets the records written. */
int build_dump_source(const struct build_dump_source *src, int fd,
		      uint64_t *records, char *err, size_t err_cap);

/* Writes the records of the newest generation in dir as a snapshot stream
 * to fd (build_dump_source: header sequence = its watermark, created_at =
 * its data_as_of, its origins file's kind and cursors, its chain file's
 * head as chain_hash).
 * The index keeps only the fields a verdict needs, so that is what comes
 * back: recipient, channel, recipient_type, brand_code, status, source,
 * consent_date; iys_code, creation_date, transaction_id and sequence are
 * 0/empty. Phones come in table order, then e-mails in the order of the
 * generation's `emails` file. */
int build_dump(const char *dir, int fd, uint64_t *records, char *err,
	       size_t err_cap);

#endif
