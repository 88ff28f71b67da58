/*
 * changelog: the durable change log of a data directory (DESIGN §2 Changes,
 * §5.1). Append-only segment files DIR/changes/<first sequence>.log, each
 * record a checked length, an XXH3-64 checksum and a serialized
 * consent.v1.Consent carrying its sequence (format essay in changelog.c).
 * Threads: a log has one owner thread (the server's single writer); no two
 * calls on one log may overlap. Open and replay at start-up, then append
 * (group commit: one call, many changes, one fdatasync) and drop.
 * Errors: -errno; a damaged record is -EPROTO naming file and offset;
 * changelog_error() holds the text of the last failure.
 */
#ifndef CONSENTD_INDEX_CHANGELOG_H
#define CONSENTD_INDEX_CHANGELOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/stream.h"
#include "index/origins.h"
#include "proto/consent.pb-c.h"

#define CHANGELOG_DIR "changes"                     /* under the data dir */
#define CHANGELOG_SEGMENT_BYTES_DEFAULT (64ull << 20) /* roll past this */
#define CHANGELOG_RECORD_MAX CHANGE_BYTES_MAX /* one serialized Consent */

struct changelog;

struct changelog_options {
	uint64_t segment_bytes; /* a new segment once one reaches this; 0: default */
};

/* Opens (creating DIR/changes if missing) and verifies every record of
 * every segment: checksums, that each payload decodes, that sequences
 * strictly increase. A torn tail of the LAST segment (a crash mid-append:
 * a partial record, a last record whose checksum fails, or zero bytes) was
 * never acknowledged and is truncated away (changelog_stats tells how many
 * bytes). Any other damage is -EPROTO with "FILE: offset N: what" in err,
 * and the caller must refuse to start. -EBUSY if another process holds the
 * log (an flock on DIR/changes). opt may be NULL. */
int changelog_open(const char *dir, const struct changelog_options *opt,
		   struct changelog **out, char *err, size_t err_cap);

/* Closes the files; anything appended was durable already. NULL is a no-op. */
void changelog_close(struct changelog *log);

/* Appends changes[0..n) as one write and one fdatasync (and an fsync of
 * the directory when a new segment was started), returning 0 only once
 * all of them are durable: the caller may acknowledge them then.
 * Validating changes is the caller's (change_validate, core/stream.h, is
 * where the rules live); the log only guards its own format: a sequence
 * that is 0 or does not follow the previous one (within the batch and past
 * changelog_last_sequence()) is -EINVAL ("sequence 41 after 57"), a record
 * over CHANGELOG_RECORD_MAX -EMSGSIZE, and nothing is written. Replays are
 * the caller's business too: the server drops changes at or below its
 * applied watermark (counting them as skipped) and sorts and de-duplicates
 * a group before appending. A failed write or
 * fdatasync returns its -errno and fails the log: every later append
 * returns that error again until the log is closed and reopened (a failed
 * fsync is never retried: the kernel may have dropped the dirty pages).
 * Records of a failed append were never acknowledged; they may or may not
 * be found by the next open. */
int changelog_append(struct changelog *log, Consent__V1__Consent *const *changes,
		     size_t n);

/* A batch's commit record (DESIGN §8). */
struct changelog_commit {
	enum origins_kind kind; /* ORIGINS_SEQUENCE, or ORIGINS_ORIGIN */
	const char *origin;     /* ORIGINS_ORIGIN: 1..ORIGINS_NAME_MAX bytes */
	size_t origin_len;
	const char *cursor;     /* the cursor the origin moves to */
	size_t cursor_len;
	uint32_t n_changes;     /* replay: the changes it closes */
	/* Its position: the last of its changes (append sets it), or for a
	 * batch of no change (an origin's cursor moving alone: the caller
	 * gives it) a position of its own past the log's last sequence. */
	uint64_t sequence;
};

/* One batch of an append: changes and the commit record after them. */
struct changelog_batch {
	Consent__V1__Consent *const *changes;
	size_t n;
	struct changelog_commit commit;
};

/* Appends batches[0..n_batches) as one write and one fdatasync, each
 * batch's changes followed by its commit record; the rules (and the
 * failure behaviour) are changelog_append's, and besides: a batch of
 * kind ORIGINS_SEQUENCE has changes and no origin, one of ORIGINS_ORIGIN
 * a valid origin and cursor (origins_check_text) and any number of
 * changes; all commits of a log have one kind (changelog_kind); else
 * -EINVAL and nothing is written. changelog_append(log, changes, n) is
 * one batch of kind ORIGINS_SEQUENCE. */
int changelog_append_batches(struct changelog *log,
			     const struct changelog_batch *batches,
			     size_t n_batches);

/* The kind of every record found at open and appended since: NONE for an
 * empty log, SEQUENCE for a log of changes without origin (all version 1
 * segments are), ORIGIN for one of origins' batches. Open refuses a log
 * that mixes them (-EPROTO). Drops keep the newest segment, but a log
 * dropped to nothing forgets it: the generations carry it too. */
enum origins_kind changelog_kind(const struct changelog *log);

/* Parses a commit record's body (the bytes after its type byte): 0, or
 * -EPROTO. out's strings point into p. For fuzzers and tests. */
int changelog_commit_decode(const uint8_t *p, size_t len,
			    struct changelog_commit *out);

/* The highest sequence ever appended (0 for a new log). Drops keep the
 * newest segment, so it survives restarts; still, the server's applied
 * watermark is the larger of this and the served index's watermark. */
uint64_t changelog_last_sequence(const struct changelog *log);

/* Calls fn for every record with sequence > after, in sequence order,
 * re-verifying checksums on the way. The change is valid during the call
 * only. Stops at the first non-zero return of fn and returns it; else 0,
 * or -EPROTO/-errno (message in changelog_error). */
typedef int (*changelog_replay_fn)(const Consent__V1__Consent *change,
				   void *arg);
int changelog_replay(struct changelog *log, uint64_t after,
		     changelog_replay_fn fn, void *arg);

/* changelog_replay, and commit_fn (NULL: none) for every commit record
 * with sequence > after, in log order, after the changes it closes. */
typedef int (*changelog_commit_fn)(const struct changelog_commit *commit,
				   void *arg);
int changelog_replay_all(struct changelog *log, uint64_t after,
			 changelog_replay_fn fn, changelog_commit_fn commit_fn,
			 void *arg);

/* Once a generation whose watermark is `watermark` is published: removes,
 * oldest first, every segment whose records are all <= watermark, then
 * fsyncs the directory. The newest segment is never removed; when it is
 * wholly covered it is sealed, so the next append starts a new segment
 * and a later drop removes the sealed one. Returns the number of segments
 * removed, or -errno. */
int changelog_drop_through(struct changelog *log, uint64_t watermark);

struct changelog_stats {
	uint64_t segments;
	uint64_t bytes;          /* of all segments */
	uint64_t records;        /* changes found at open plus appended since */
	uint64_t commits;        /* commit records, the same way */
	uint64_t first_sequence; /* 0 when empty */
	uint64_t last_sequence;
	uint64_t truncated_bytes; /* torn tail removed at open */
	uint64_t appends;         /* successful append calls (= fdatasyncs) */
	bool failed;              /* appends refused until reopened */
};
void changelog_stats(const struct changelog *log, struct changelog_stats *out);

/* The last failure's text ("" if none); valid until the next call. */
const char *changelog_error(const struct changelog *log);

#endif
