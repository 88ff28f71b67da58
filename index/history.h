/*
 * history: the evidence store of a data directory (DESIGN §10). Every
 * change the change log takes, and every record of the snapshot the data
 * directory began from, kept with all its İYS fields, append-only, in log
 * order, under DIR/history/ (format essay in history.c); a SHA-256 chain
 * over them; and, per key, the walk from its newest record to its oldest
 * without a scan. Never on the check path: the hot index is untouched.
 *
 * What it holds. Every change the log holds, in log order, including the
 * ones the index's order rule skipped (an older consent_date): İYS sent
 * them, and they are evidence. The state "as of" a point is therefore a
 * fold of a key's records under the order rule (consent_value_newer,
 * core/decision.h, the same rule index_apply_writer applies), never
 * simply its newest record. Records of the snapshot the data directory
 * began from carry the snapshot's watermark as their sequence, in stream
 * order.
 *
 * The chain (§10): chain(r) = SHA-256(chain(r-1) || the canonical bytes
 * of r's Consent with sequence set to r's), starting from 32 zero bytes
 * before the first record the data directory ever held. Several records
 * may share a sequence (a snapshot's, a replicated batch's); the head at
 * sequence S is the chain after the last record with sequence <= S. It
 * depends only on the records, so two data directories fed the same
 * stream have the same head at every sequence.
 *
 * Durability. history_append writes (no fdatasync): the change log is the
 * durable copy of the changes, and history_recover copies into history
 * whatever the log holds past history's end at open. history_sync makes
 * history durable; the writer calls it before the change log may drop a
 * segment, so that nothing is ever only in a dropped log segment. A torn
 * tail (a crash mid-append) is cut at open. A record's applied_at is the
 * writer's clock when it appended; a record copied back from the log by
 * history_recover gets the recovery's clock (README, Decisions).
 *
 * Threads: one writer thread appends, syncs and prunes (the server's
 * single writer; consentctl for a directory no server holds). Queries
 * (history_key, history_as_of, history_head) may run on any thread at
 * the same time as the writer: they read only records the writer has
 * finished and published (release/acquire on the end), and pruning never
 * removes a file a query still reads. The data directory's first
 * snapshot is ingested by the thread that builds it (history_append with
 * the snapshot's watermark), before the writer takes that generation:
 * the hand-over (writer_take_snapshot) orders the two. An flock on DIR/history keeps a
 * second process out (-EBUSY).
 *
 * Errors: -errno with a message in err; damage that is not a torn tail is
 * -EPROTO naming the file and offset.
 */
#ifndef CONSENTD_INDEX_HISTORY_H
#define CONSENTD_INDEX_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/consent.pb-c.h"

#define HISTORY_DIR "history"   /* under the data dir */
#define HISTORY_HASH_BYTES 32   /* SHA-256 */

struct history;
struct changelog;

struct history_options {
	/* Segments wholly older than this many seconds (by their newest
	 * record's applied_at) are removed by history_prune; 0 keeps all. */
	int64_t keep_seconds;
	uint64_t segment_bytes; /* roll past this; 0: a default */
	/* For tests: the key map's first size in slots (a power of two;
	 * 0: a default), and the boot id open compares with the one the
	 * map was written under (NULL: /proc/sys/kernel/random/boot_id). */
	uint64_t map_slots;
	const char *boot_id;
};

#define HISTORY_SEGMENT_BYTES_DEFAULT (64ull << 20)

/* Opens DIR/history (creating it), cuts a torn tail, and brings the
 * per-key map up to date with the records (rebuilding it by a scan when
 * it cannot be trusted: README, Decisions). opt may be NULL. */
int history_open(const char *dir, const struct history_options *opt,
		 struct history **out, char *err, size_t err_cap);
void history_close(struct history *h); /* NULL: no-op */

/* Copies into history every change of log past history's end (by
 * sequence, and for a shared last sequence by count), with applied_at
 * now. Writer, at open, after changelog_open. *copied gets how many. */
int history_recover(struct history *h, struct changelog *log,
		    uint64_t *copied, char *err, size_t err_cap);

/* Appends changes[0..n) (sequences >= history's last; equal allowed)
 * with applied_at, and makes them visible to queries. Each change must
 * have passed change_validate (core/stream.h). Not durable until
 * history_sync or until the change log that holds them is. -EINVAL for
 * a sequence below the last (nothing appended); a write error fails the
 * store (every later append returns it) like changelog_append. */
int history_append(struct history *h, Consent__V1__Consent *const *changes,
		   size_t n, int64_t applied_at, char *err, size_t err_cap);

/* Empties the store: for a data directory that has no generation yet,
 * whose history may hold a part of a snapshot a crash interrupted before
 * the generation built from it was published (nothing acknowledged
 * depends on it). The builder then ingests the snapshot afresh. */
int history_reset(struct history *h, char *err, size_t err_cap);

/* fdatasync of what was appended (and of the directory for new files). */
int history_sync(struct history *h, char *err, size_t err_cap);

/* Removes whole segments past opt.keep_seconds, never the newest. The
 * chain goes on from the anchor the next segment's header holds, which
 * history_verify then starts from. *removed gets the count. */
int history_prune(struct history *h, int64_t now, unsigned *removed,
		  char *err, size_t err_cap);

struct history_state {
	uint64_t first_sequence; /* of the oldest record held; 0: empty */
	uint64_t last_sequence;  /* of the newest record; 0: empty */
	uint64_t records;        /* held now */
	uint64_t bytes;          /* on disk, the map included */
	uint64_t head_sequence;  /* = last_sequence */
	uint8_t head[HISTORY_HASH_BYTES]; /* the chain after the newest */
	/* What the last open did: rebuilt the key map by a scan (it could
	 * not be trusted), and cut so many bytes of torn tail. */
	bool map_rebuilt;
	uint64_t truncated_bytes;
};
void history_state(struct history *h, struct history_state *out);

/* The chain head at sequence seq (after the last record with sequence
 * <= seq). -ERANGE when seq is before the history's first sequence or
 * past its last. */
int history_head_at(struct history *h, uint64_t seq,
		    uint8_t out[HISTORY_HASH_BYTES]);

/* One record, as queries give it. Strings point into the entry. */
struct history_entry {
	Consent__V1__Consent consent; /* sequence set; strings below */
	int64_t applied_at;
	uint8_t chain[HISTORY_HASH_BYTES]; /* the chain after this record */
	char recipient[256];
	char transaction_id[256];
};

/* The key's records, oldest first, into out[0..cap); *n gets how many
 * there are (may exceed cap: the caller asks again with more room, or
 * gives the newest cap). The key is (recipient canonical as
 * core/recipient.h makes it, brand_code, channel, recipient_type). */
int history_key(struct history *h, const char *recipient, uint32_t brand_code,
		int channel, int recipient_type, struct history_entry *out,
		size_t cap, size_t *n, char *err, size_t err_cap);

enum history_as_of_kind { HISTORY_AT_SEQUENCE = 1, HISTORY_AT_TIME = 2 };

/* The key's state as of a point (§10): at a sequence S, the fold under
 * the order rule of its records with sequence <= S; at a time T, its
 * record with the latest consent_date <= T (the order rule breaks ties).
 * 1 with *out filled (the deciding record), 0 when the key had no record
 * then, -ERANGE (err says the history's first sequence or time) when the
 * point is before the history's start, or past its last sequence. */
int history_as_of(struct history *h, const char *recipient,
		  uint32_t brand_code, int channel, int recipient_type,
		  enum history_as_of_kind kind, uint64_t point,
		  struct history_entry *out, char *err, size_t err_cap);

/* consentctl audit: recomputes the chain of DIR/history from its first
 * kept segment's anchor and checks every record's framing, checksum,
 * sequence order and back-pointers. 0 and the head, or -EPROTO with err
 * naming the first record that does not match: "FILE: offset N
 * (sequence S): what", or "(after sequence S)", the last good record's,
 * when the damage is in a header or a record's framing.
 * Needs no server and takes no lock (reads a copy a server may hold). */
int history_verify(const char *dir, uint64_t *head_sequence,
		   uint8_t head[HISTORY_HASH_BYTES], uint64_t *records,
		   char *err, size_t err_cap);

/* One record as its framing gives it (the decoder history_open and
 * history_verify use; for fuzzers and tests). The payload points into
 * the input. */
struct history_record {
	uint64_t sequence;
	int64_t applied_at;
	uint64_t prev;     /* global position of the key's previous record */
	uint64_t key_hash; /* history_key_hash of its key */
	uint8_t chain[HISTORY_HASH_BYTES];
	const uint8_t *payload; /* canonical Consent bytes */
	uint32_t payload_len;
};

/* Decodes the record at p[0..len): its size in bytes (> 0), 0 when
 * p holds only a prefix of one (a torn tail, or more to read), or
 * -EPROTO with *why (static text) for bytes that are no record. */
int history_record_decode(const uint8_t *p, size_t len,
			  struct history_record *out, const char **why);

/* The key hash of a record's key (never 0): outbox_key_hash over the
 * canonical recipient, as the key map and back-pointers use it. */
uint64_t history_key_hash(uint32_t brand_code, int channel,
			  int recipient_type, const char *recipient,
			  size_t len);

#endif
