/*
 * datadir: a data directory's generations (DESIGN §3.6). Each generation
 * is a directory gen-NNNNNNNNNNNNNNNNNNNN holding `index` (index/table.h's
 * file) and `emails` (the e-mail addresses of the e-mail keys, one line
 * "BRAND RTYPE CHANNEL ADDRESS", so a dump can give them back; cold, never
 * read while serving). A generation is published by building it in a
 * temp directory, fsyncing its files, renaming it into place and fsyncing
 * DIR, so a crash leaves either the whole generation or none.
 * One thread per data directory at a time; errors -errno with a message.
 */
#ifndef CONSENTD_INDEX_DATADIR_H
#define CONSENTD_INDEX_DATADIR_H

#include <stddef.h>
#include <stdint.h>

#include "index/table.h"

/* Opens the newest generation that validates; older or broken ones are
 * skipped with a line each on stderr. -ENOENT if there is none. */
int datadir_open_newest(const char *dir, enum index_load_mode mode,
			struct index **out, uint64_t *generation,
			char *err, size_t err_cap);

/* Verifies every generation in dir (index checksums, e-mail file parses and
 * each address is in the index). 0 only if all are whole. */
int datadir_verify(const char *dir, char *err, size_t err_cap);

/* Path helpers: "DIR/gen-NNN" and "DIR/gen-NNN/index". */
int datadir_generation_path(const char *dir, uint64_t generation, char *buf,
			    size_t cap);
/* The newest generation number present (validated or not) in *out, 0 if
 * none. -errno if dir cannot be listed (no number is guessed: a build
 * that numbered its generation from a failed listing could publish one
 * older than what is served). */
int datadir_newest_generation(const char *dir, uint64_t *out);

/* One line of a generation's `emails` file. */
struct datadir_email {
	uint32_t brand_code;
	int rtype;   /* enum rtype */
	int channel; /* enum channel: always CHANNEL_EPOSTA */
	struct recipient recipient; /* normalised e-mail */
};

/* Calls fn for each line of generation's `emails` file, in file order; a
 * non-zero return from fn stops and is returned. A line that does not
 * parse is -EPROTO with its line number in err; a failure to read (memory
 * for a line included) is -errno with a message, never an early end. */
int datadir_emails_foreach(const char *dir, uint64_t generation,
			   int (*fn)(const struct datadir_email *e, void *arg),
			   void *arg, char *err, size_t err_cap);

#endif
