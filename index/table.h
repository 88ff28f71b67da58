/*
 * table: the consent index, one generation of it, in memory. An
 * open-addressing hash table of 16-byte entries in 64-byte buckets (the
 * layout and its concurrency argument open table.c).
 *
 * Threads: lookups (index_lookup, index_lookup_batch, index_key_make,
 * index_info) are wait-free and may run on any number of threads at once,
 * concurrently with exactly one writer thread calling the *_writer
 * functions; readers see each entry either whole before or whole after an
 * update, never torn. Everything is validated at open, so a lookup cannot
 * fail afterwards.
 * Ownership: the index owns its memory; index_destroy releases it, and
 * only once no reader can still hold it (the server waits an RCU grace
 * period). Errors: -errno; a corrupt or truncated file is -EPROTO with a
 * message in err.
 */
#ifndef CONSENTD_INDEX_TABLE_H
#define CONSENTD_INDEX_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"
#include "core/recipient.h"

#define INDEX_SECRET_BYTES 192 /* XXH3 secret, random per index */
/* Dates are stored as seconds past the consent date floor. */
#define INDEX_EPOCH CONSENT_DATE_MIN

struct index;

/* A consent key, made against one index (its secret): the packed key bits
 * and the hash that picks its home bucket. Only compare or look up keys
 * with the index that made them. */
struct index_key {
	uint64_t bits[2];
	uint64_t hash;
};

struct index_info {
	uint64_t n_records;
	uint64_t n_buckets;
	uint64_t capacity;     /* records it holds before the load limit */
	uint64_t bytes;        /* memory of the bucket array */
	uint64_t generation;
	uint64_t watermark;    /* change sequence it is consistent with */
	int64_t created_at;    /* Unix seconds */
	int64_t data_as_of;    /* Unix seconds: newest change or heartbeat */
	bool huge_pages;       /* the bucket array asked for THP */
	bool mapped;           /* a file mapping (MMAP, or a table file being
				* filled), not anonymous memory */
};

/* An empty index in anonymous memory (huge pages advised), sized so that
 * `capacity` records stay under the load limit. secret NULL: random. */
int index_create(uint64_t capacity, const uint8_t *secret, struct index **out);

enum index_load_mode {
	INDEX_LOAD_ANON = 0, /* read the file into anonymous THP memory */
	INDEX_LOAD_MMAP = 1, /* map the file MAP_PRIVATE (page cache) */
	INDEX_LOAD_AUTO = 2, /* index_load_choose by size at open */
};

/* The memory rule (README "Memory"): ANON only where two copies of the
 * table fit, growth's 2.5 (the served table and one 1.5 times as large,
 * both anonymous) with INDEX_LOAD_RESERVE_BYTES to spare, MMAP otherwise,
 * so that the kernel may evict the table's pages rather than the
 * machine running out. mem_available: /proc/meminfo's MemAvailable in
 * bytes. Pure: tests call it with any figures. */
#define INDEX_LOAD_RESERVE_BYTES (1ull << 30)
enum index_load_mode index_load_choose(uint64_t table_bytes,
				       uint64_t mem_available);
/* MemAvailable in bytes into *out; -errno when /proc/meminfo cannot be
 * read or has no such line (index_open then takes MMAP, the mode that
 * cannot run the machine out of memory). */
int index_mem_available(uint64_t *out);

/* Validates a file written by index_write (magic, version, sizes,
 * header and bucket checksums) and loads it. */
int index_open(const char *path, enum index_load_mode mode, struct index **out,
	       char *err, size_t err_cap);

/* index_open reporting its progress: fn(path, done, total, arg) after
 * each eighth of the bucket array is loaded and checked (only for arrays
 * of INDEX_PROGRESS_MIN_BYTES or more: a short load says nothing). The
 * index is whole in memory (read in, or mapped and read through) before
 * it returns, so a generation is resident before it is served. */
#define INDEX_PROGRESS_MIN_BYTES (256ull << 20)
typedef void (*index_progress_fn)(const char *path, uint64_t done,
				  uint64_t total, void *arg);
int index_open_progress(const char *path, enum index_load_mode mode,
			index_progress_fn fn, void *arg, struct index **out,
			char *err, size_t err_cap);

/* Writes the index to path: temp file, fsync, rename, fsync of the
 * directory. A failed fsync is returned, never retried. */
int index_write(const struct index *ix, const char *path);

/* ---- a table in its own file (growth without a second table in RAM;
 * README "Memory") ----
 * index_create_file makes an empty index like index_create whose bucket
 * array is a MAP_SHARED mapping of a new file at path (a header page,
 * zero, then the array; its blocks allocated up front, so a full disk is
 * -ENOSPC here and never a SIGBUS at a store). The writer fills and
 * changes it as any index, and readers read it: its pages are page
 * cache, which the kernel may write back and evict, so neither the fill
 * nor serving it holds the table in anonymous memory. The file is a
 * working copy, never a generation (its header stays zero; index_write
 * publishes a copy), and removed by whoever made it. secret_of (NULL: a
 * random secret) gives its secret: the same secret keeps a copy in
 * nearly ascending bucket order (fastrange is monotonic in the hash), so
 * a fill writes the file nearly sequentially.
 * Writer only: index_file_release says the buckets below `bucket` are
 * done for now (their writeback starts and they leave this process's
 * resident set; a later access faults them back in), a no-op for any
 * other index. index_file_path: its path, NULL for any other index. */
int index_create_file(uint64_t capacity, const struct index *secret_of,
		      const char *path, struct index **out);
/* A working file at path holding a copy of src (same buckets, secret and
 * header fields), written through the file. Writer only (src holds
 * still). */
int index_copy_file(const struct index *src, const char *path,
		    struct index **out);
void index_file_release(struct index *ix, uint64_t bucket);
/* Writer only: fdatasync of such an index's file, so that a failed
 * writeback of its pages (whose later reads could come back from the
 * disk without the failed changes) is seen: -errno. 0 for any other
 * index. */
int index_file_sync(struct index *ix);
const char *index_file_path(const struct index *ix);

void index_destroy(struct index *ix);

void index_info(const struct index *ix, struct index_info *out);

/* rtype: RTYPE_BIREYSEL/TACIR; channel must suit the recipient kind
 * (phones ARAMA/MESAJ, e-mails EPOSTA): callers validate first. A key
 * depends only on the index's secret: indexes created with the same
 * secret take each other's keys (the builder makes keys before it knows
 * the table's size). */
void index_key_make(const struct index *ix, const struct recipient *r,
		    uint32_t brand_code, int rtype, int channel,
		    struct index_key *out);

bool index_lookup(const struct index *ix, const struct index_key *key,
		  struct consent_value *out);

/* Hashes are in the keys already: prefetches every home bucket, then
 * probes. found[i] tells whether out[i] was filled. */
void index_lookup_batch(const struct index *ix, const struct index_key *keys,
			size_t n, struct consent_value *out, bool *found);

/* Any thread: how many buckets a lookup of key reads (its probe length),
 * for tests and benchmarks of the layout; the answer is index_lookup's. */
uint64_t index_probe_buckets(const struct index *ix,
			     const struct index_key *key);

/* A hint, any thread: starts loading key's home bucket, for a caller
 * about to apply or look up a run of keys (prefetch a few keys ahead). */
void index_prefetch(const struct index *ix, const struct index_key *key);

/* Whether the index can hold value: a status ONAY or RET and a
 * consent_date in [CONSENT_DATE_MIN, CONSENT_DATE_MAX] (core/decision.h).
 * The one such check; a record consent_validate accepts always fits. */
bool index_value_fits(const struct consent_value *value);

/* Writer only. Applies one value under DESIGN §2's order rule: a value
 * whose consent_date is older than the stored one is skipped, and at an
 * equal consent_date a RET wins over an ONAY (an identical value is
 * skipped). Returns INDEX_INSERTED, INDEX_UPDATED or INDEX_SKIPPED, or
 * -ENOSPC when inserting would pass the load limit (build a bigger
 * generation), or -EINVAL for a value that does not fit
 * (index_value_fits) or a channel that does not suit the key. */
enum index_apply_result { INDEX_INSERTED = 0, INDEX_UPDATED = 1, INDEX_SKIPPED = 2 };
int index_apply_writer(struct index *ix, const struct index_key *key,
		       const struct consent_value *value);

/* Writer only: header fields that travel with the generation. */
void index_set_meta_writer(struct index *ix, uint64_t generation,
			   uint64_t watermark, int64_t created_at,
			   int64_t data_as_of);

/* Visits every entry. Any thread, also while the writer changes the
 * table (GET /v1/snapshot walks the served one): each slot is read as a
 * lookup reads it, and entries never move, so every entry present before
 * the walk is visited once, whole, with its value then or a later one;
 * one inserted during the walk may or may not be. Phones come back whole;
 * e-mails only as a fingerprint (is_email set, no recipient): their
 * addresses live in the generation's e-mail file. */
struct index_entry {
	bool is_email;
	uint64_t phone;     /* phones: the E.164 digits */
	uint32_t brand_code; /* phones only */
	uint8_t rtype;       /* phones only */
	uint8_t channel;
	struct consent_value value;
};
typedef int (*index_visit_fn)(const struct index_entry *e, void *arg);
int index_foreach(const struct index *ix, index_visit_fn fn, void *arg);

#endif
