/*
 * build: a new generation from a snapshot stream (DESIGN §2, §3.5). Reads
 * and validates the whole stream (a bad record or a bad trailer rejects it
 * whole, naming the offset and field), sizes the table for the records
 * plus headroom, inserts, and publishes generation newest+1 in the data
 * directory (index/datadir.h). Whatever was served before stays untouched
 * until the new generation is renamed into place. One builder per data
 * directory at a time; any thread (the server runs it on a background one).
 */
#ifndef CONSENTD_INDEX_BUILD_H
#define CONSENTD_INDEX_BUILD_H

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

int build_snapshot(int fd, const char *dir, struct build_result *res,
		   char *err, size_t err_cap);

/* Writes the records of the newest generation in dir as a snapshot stream
 * to fd (header sequence = its watermark, created_at = its data_as_of).
 * The index keeps only the fields a verdict needs, so that is what comes
 * back: recipient, channel, recipient_type, brand_code, status, source,
 * consent_date; iys_code, creation_date, transaction_id and sequence are
 * 0/empty. Phones come in table order, then e-mails in the order of the
 * generation's `emails` file. */
int build_dump(const char *dir, int fd, uint64_t *records, char *err,
	       size_t err_cap);

/*
 * Growth and re-publishing, for the server's single writer (it owns every
 * index passed here; none of them is mutated by another thread meanwhile).
 * A table keeps e-mails only as keyed fingerprints, so copying one into a
 * table with another secret needs the addresses: those of a generation's
 * `emails` file, then any the caller inserted since (extra).
 */
struct datadir_email;
struct index;
typedef int (*build_email_fn)(const struct datadir_email *e, void *arg);
struct build_emails {
	const char *dir;     /* emails file of `generation` in dir; NULL: none */
	uint64_t generation;
	/* Calls fn for each further address, stops at fn's first non-zero
	 * return and returns it. NULL: none. */
	int (*extra)(void *extra_arg, build_email_fn fn, void *arg);
	void *extra_arg;
};

/* Applies every record of src to dst under the order rule
 * (index_apply_writer): phones from src's table, e-mails keyed again from
 * their addresses in emails. new_email (NULL: none) is called with each
 * address whose key dst did not hold before. Returns 0; -ENOSPC when dst
 * reaches its load limit (make it bigger and merge again: merging is
 * idempotent); -EPROTO when an address has no record in src; -errno; with
 * a message in err. */
int build_merge(struct index *dst, const struct index *src,
		const struct build_emails *emails, build_email_fn new_email,
		void *arg, char *err, size_t err_cap);

/* Publishes ix as generation index_info(ix).generation of dir, with its
 * header fields as set (index_set_meta_writer) and an emails file listing
 * emails' addresses (exactly the e-mail keys of ix, each once): temp
 * directory, fsync, rename, fsync of dir, as build_snapshot does. */
int build_publish(const char *dir, const struct index *ix,
		  const struct build_emails *emails, char *err, size_t err_cap);

#endif
