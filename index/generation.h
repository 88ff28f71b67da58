/*
 * generation: a data directory's generations, their whole lifecycle
 * (DESIGN §2 Generations, §3.6). Each generation is a directory
 * gen-NNNNNNNNNNNNNNNNNNNN holding `index` (index/table.h's file) and
 * `emails` (the addresses behind the index's e-mail fingerprints, one line
 * "BRAND RTYPE CHANNEL ADDRESS", so that a dump or a copy into a table
 * with another secret can give them back; cold, never read to answer) and
 * `origins` (index/origins.h: the kind of changes taken and every origin's
 * cursor as of the generation's watermark, DESIGN §8; a generation
 * written before it existed has none and reads as an empty table) and,
 * with history on, `chain` (the evidence chain's head at the watermark,
 * DESIGN §10; absent in older generations and with history off).
 * This module owns the names (generations, temp directories), publishing
 * (temp directory, fsync, rename, fsync of DIR: a crash leaves either the
 * whole generation or none), opening the newest valid one (falling back
 * past damaged ones), pruning, removing what crashed builds left, and a
 * generation in memory: an index and its e-mail addresses, to which
 * changes are applied, that grows, and into which the change log is
 * replayed.
 * Threads: one thread per data directory and per struct generation at a
 * time (the server's single writer; consentctl). Errors: -errno with a
 * message in err; damage is -EPROTO.
 */
#ifndef CONSENTD_INDEX_GENERATION_H
#define CONSENTD_INDEX_GENERATION_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/table.h"
#include "proto/consent.pb-c.h"

struct changelog;
struct origins;

#define GENERATION_CHAIN_FILE "chain" /* in a generation directory */
#define GENERATION_CHAIN_BYTES 32     /* = HISTORY_HASH_BYTES */

/* ---- on disk ---- */

/* Opens the newest generation that validates; older or broken ones are
 * skipped with a line each on stderr (a damaged newest falls back to the
 * one before). -ENOENT if there is none; -ENOMEM is never a fallback. */
int generation_open_newest(const char *dir, enum index_load_mode mode,
			   struct index **out, uint64_t *generation,
			   char *err, size_t err_cap);

/* Verifies every generation in dir (index checksums, e-mail file parses and
 * each address is in the index). 0 only if all are whole. */
int generation_verify(const char *dir, char *err, size_t err_cap);

/* Reads generation's origins file into *out (created, the caller's to
 * destroy): an empty table when it has none (written before origins
 * existed). -EPROTO when the file is damaged; -ENOMEM. */
int generation_origins(const char *dir, uint64_t generation,
		       struct origins **out, char *err, size_t err_cap);

/* Reads generation's `chain` file (DESIGN §10: the evidence chain's
 * head at its watermark, one line "SEQUENCE HEX64"): 1 with *sequence
 * and head[] filled, 0 when it has none (written with history off, or
 * before the file existed), -EPROTO when it does not parse. */
int generation_chain(const char *dir, uint64_t generation, uint64_t *sequence,
		     uint8_t head[GENERATION_CHAIN_BYTES], char *err,
		     size_t err_cap);

/* "DIR/gen-NNN" for a generation number. */
int generation_path(const char *dir, uint64_t generation, char *buf,
		    size_t cap);
/* The newest generation number present (validated or not) in *out, 0 if
 * none. -errno if dir cannot be listed (no number is guessed: a build
 * that numbered its generation from a failed listing could publish one
 * older than what is served). */
int generation_newest(const char *dir, uint64_t *out);

/* Removes every generation of dir but keep and keep2 (0: none). Each is
 * first renamed out of the generations' names (one atomic step), so a
 * crash while its files go leaves a temp directory, never a generation
 * with half its files. Then fsyncs dir. Best effort: what cannot be
 * removed now is removed by a later call. */
void generation_prune(const char *dir, uint64_t keep, uint64_t keep2);

/* Which generations a data directory keeps (the server's writer): the
 * one served, and the one served before it as the fallback should the
 * newest be damaged. */
struct generation_keep {
	uint64_t gen, watermark;           /* the served one's; 0: none */
	uint64_t prev_gen, prev_watermark; /* the fallback's; 0: none */
	uint64_t log_floor; /* the change log may lack records <= this */
};

/* The number the next generation of dir gets in *out: above every one
 * present and above k->gen. -errno if dir cannot be listed (a number
 * guessed then could fall below one already there). */
int generation_next(const char *dir, const struct generation_keep *k,
		    uint64_t *out);

/* After generation gen (watermark wm) of dir was published and swapped
 * in: the one served before becomes the fallback, every other generation
 * is removed (generation_prune) and log is dropped through the fallback's
 * watermark, so either generation plus the log holds everything
 * acknowledged. A failed drop is said on stderr: the log keeps more.
 * log NULL: nothing is dropped (the evidence store could not be made
 * durable, and the log is its copy). */
void generation_kept(const char *dir, struct changelog *log,
		     struct generation_keep *k, uint64_t gen, uint64_t wm);

/* Removes what crashed builds and prunes left in dir (temp directories,
 * and the .snapshot-PID staging directories older servers built in), with
 * a line each on stderr, then fsyncs dir. The caller must be the only
 * user of dir (the server holds the change log's lock). Returns how many
 * were removed. */
int generation_remove_leftovers(const char *dir);

/* One line of a generation's `emails` file. */
struct generation_email {
	uint32_t brand_code;
	int rtype;   /* enum rtype */
	int channel; /* enum channel: always CHANNEL_EPOSTA */
	struct recipient recipient; /* normalised e-mail */
};
typedef int (*generation_email_fn)(const struct generation_email *e,
				   void *arg);

/* Calls fn for each line of generation's `emails` file, in file order; a
 * non-zero return from fn stops and is returned. A line that does not
 * parse is -EPROTO with its line number in err; a failure to read (memory
 * for a line included) is -errno with a message, never an early end. */
int generation_emails_foreach(const char *dir, uint64_t generation,
			      generation_email_fn fn, void *arg, char *err,
			      size_t err_cap);

/* The emails file of a generation, opened (*fd, the caller's to close;
 * its path in name): it stays readable through fd after a prune removed
 * the generation. generation_emails_foreach_fd reads such an fd from its
 * start, as generation_emails_foreach does a path (name in messages). */
int generation_emails_open(const char *dir, uint64_t generation, int *fd,
			   char *name, size_t name_cap, char *err,
			   size_t err_cap);
int generation_emails_foreach_fd(int fd, const char *name,
				 generation_email_fn fn, void *arg, char *err,
				 size_t err_cap);

/* ---- in memory ---- */

/* E-mail addresses in memory, compact: brand (4 bytes), rtype (1),
 * length (1), address. */
struct generation_email_list {
	uint8_t *p;
	size_t len, cap;
	uint64_t n;
	bool spilled; /* p maps a temp file (generation.c says when) */
	int spill_fd; /* that file, when spilled */
};

/* An index and where the addresses of its e-mail keys are: the `emails`
 * file of generation emails_gen in emails_dir ("": none), then extra (the
 * ones inserted since, or all of them for a build that was never
 * written). The struct owns ix and extra (generation_fini frees both);
 * zero-initialised it is empty. */
struct generation {
	struct index *ix;
	/* The kind and the cursors as of ix's watermark: NULL is an empty
	 * table. Published as the `origins` file; replays move it. */
	struct origins *origins;
	/* The evidence chain's head at ix's watermark (index/history.h,
	 * DESIGN §10), published as the `chain` file; has_chain false: none
	 * (history off or empty). */
	bool has_chain;
	uint64_t chain_sequence;
	uint8_t chain[GENERATION_CHAIN_BYTES];
	char emails_dir[PATH_MAX];
	uint64_t emails_gen;
	struct generation_email_list extra;
};

/* Calls fn for each address of l, in order; a non-zero return from fn
 * stops and is returned. */
int generation_email_list_foreach(const struct generation_email_list *l,
				  generation_email_fn fn, void *arg);

/* An empty working table file (index_create_file) for capacity records
 * at DIR/.tmp-gen-work-K.PID/index, K counting this process's, with
 * secret_of's secret (NULL: random). generation_work_remove (or
 * generation_fini) takes its name away again. */
int generation_work_create(const char *dir, uint64_t capacity,
			   const struct index *secret_of, struct index **out,
			   char *err, size_t err_cap);

/* Puts a working file copy (index_copy_file) of g's table, at
 * DIR/.tmp-gen-work-K.PID/index, in its place, destroying the table it
 * copied (which must not be served). */
int generation_work_copy(struct generation *g, const char *dir, char *err,
			 size_t err_cap);

/* Removes the name of ix's working table file (generation_grow_file),
 * if it has one: its data lives on in the mapping until index_destroy.
 * Best effort; NULL or any other index: nothing. */
void generation_work_remove(const struct index *ix);

/* Frees g's index (and its working file's name), origins and list and
 * empties it. */
void generation_fini(struct generation *g);

/* Adds an address to g's list (the caller inserted its key). -ENOMEM. */
int generation_email_add(struct generation *g, uint32_t brand_code,
			 int rtype, const char *addr, size_t len);

/* After g was published as generation `number` of dir: its addresses are
 * that generation's file now; the list is dropped. */
void generation_written(struct generation *g, const char *dir,
			uint64_t number);

/* Publishes g as generation index_info(g->ix).generation of dir, with
 * the index's header fields as set (index_set_meta_writer) and an emails
 * file of g's addresses: temp directory DIR/.tmp-gen-N.PID, both files
 * fsynced, renamed to DIR/gen-N, DIR fsynced. A failure leaves no gen-N
 * behind (one renamed but not durable is taken back). */
int generation_publish(const char *dir, const struct generation *g,
		       char *err, size_t err_cap);

/* Applies every record of src to dst under the order rule
 * (index_apply_writer): phones from src's table, e-mails keyed again from
 * src's addresses. new_email (NULL: none) is called with each address
 * whose key dst did not hold before. Returns 0; -ENOSPC when dst reaches
 * its load limit (make it bigger and merge again: merging is idempotent);
 * -EPROTO when an address has no record in src; -errno; with a message. */
int generation_merge(struct index *dst, const struct generation *src,
		     generation_email_fn new_email, void *arg, char *err,
		     size_t err_cap);

/* Copies g's index into a new table for `capacity` records (0: 1.5 times
 * the present capacity, at least GENERATION_GROW_MIN more) with a fresh
 * secret and the same header fields (a working file's table: into another
 * working file of its directory, generation_grow_file keeping its
 * secret), and puts it in g's place; the index
 * it replaced goes to *old, the caller's to release (destroy it, or swap
 * the new one in and release it after a grace period). */
#define GENERATION_GROW_MIN 4096u
int generation_grow(struct generation *g, uint64_t capacity,
		    struct index **old, char *err, size_t err_cap);

/* generation_grow into a working table file (index_create_file) at
 * DIR/.tmp-gen-work-K.PID/index rather than anonymous memory, so that
 * growth never holds two tables in RAM (README "Memory"): the served
 * table is read in bucket order and, with the same secret, the new one
 * filled nearly sequentially, the pages behind the front released to
 * the page cache as it goes. fresh_secret (a rebuild) fills in random
 * order instead. The working file is never a generation: checkpoints
 * publish copies (index_write), and it is removed when a later growth
 * replaces it (the mapping lives on until the index is destroyed) or,
 * after a crash, by generation_remove_leftovers. */
int generation_grow_file(struct generation *g, const char *dir,
			 uint64_t capacity, bool fresh_secret,
			 struct index **old, char *err, size_t err_cap);

/* Merges src into dst (generation_merge), growing dst (not served: the
 * old table is destroyed) until everything fits; the addresses new to dst
 * go to its list. */
int generation_absorb(struct generation *dst, const struct generation *src,
		      char *err, size_t err_cap);

/* Applies one change (validated: change_validate) to g under the order
 * rule, listing a new e-mail key's address. Returns INDEX_INSERTED,
 * INDEX_UPDATED or INDEX_SKIPPED; -ENOSPC when the table is full (grow
 * it and apply again); -EINVAL for a change the index cannot hold;
 * -ENOMEM. */
int generation_apply(struct generation *g, const Consent__V1__Consent *c);

/* Prefetches the home bucket generation_apply(g, c) will touch (a cache
 * miss per change otherwise): a writer applying a group asks for the
 * change a few ahead of the one it applies. No effect for a change the
 * index cannot hold, or without a table. */
void generation_prefetch(const struct generation *g,
			 const Consent__V1__Consent *c);

/* Replays log's changes past `after` into g (not served: a table that
 * fills is grown in place and the old one destroyed), and its commit
 * records past `after` into g->origins (created if NULL). A change the
 * index cannot hold is skipped with a line on stderr. *n gets the changes
 * replayed. */
int generation_replay(struct generation *g, struct changelog *log,
		      uint64_t after, uint64_t *n, char *err, size_t err_cap);

/* Brings a snapshot s (built in memory, not served) up to date: replays
 * log past its watermark, and when the log may lack records past it
 * (log_floor, below which the log was dropped, above that watermark)
 * absorbs served (NULL: none), which holds them. *replayed gets the
 * changes replayed, *merged whether served was absorbed. */
int generation_catch_up(struct generation *s, struct changelog *log,
			uint64_t log_floor, const struct generation *served,
			uint64_t *replayed, bool *merged, char *err,
			size_t err_cap);

/* Start-up: opens the newest valid generation of dir into g (its
 * addresses and origins: that generation's files; one whose origins file
 * is damaged is skipped like a damaged index), a mapped one (MMAP, or
 * AUTO that chose it) copied into a working file (generation_work_copy;
 * where the copy cannot be made, said on stderr, served as mapped), then
 * replays log past its watermark. *number gets its generation number, *replayed the changes
 * replayed, *grown whether the table had to grow meanwhile (write it
 * again, or the next start grows it again). -ENOENT when dir has no
 * valid generation. */
int generation_open_replay(const char *dir, enum index_load_mode mode,
			   struct changelog *log, struct generation *g,
			   uint64_t *number, uint64_t *replayed, bool *grown,
			   char *err, size_t err_cap);

#endif
