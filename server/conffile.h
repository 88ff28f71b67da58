/*
 * conffile: the server's config file (--config FILE), read into the
 * arguments it stands for, so that main's option parser is the one
 * parser of names and values. A line is "NAME VALUE", "NAME = VALUE" or
 * "NAME=VALUE"; NAME is a long flag without its "--" (a lower-case
 * letter, then letters, digits, '-'); VALUE runs to the end of the line,
 * trailing blanks dropped, and may not be empty. Blank lines are skipped,
 * and '#' starts a comment at the start of a line or after a blank.
 * Threads: main's, at start-up. Ownership: struct conffile is the
 * caller's; its entries stay valid until conffile_fini (the configuration
 * points into them for the process's life). Errors: -EINVAL with
 * "FILE:LINE: why" in err, -errno for the file itself, -ENOMEM.
 */
#ifndef CONSENTD_SERVER_CONFFILE_H
#define CONSENTD_SERVER_CONFFILE_H

#include <stddef.h>

#define CONFFILE_MAX_BYTES (1u << 20) /* a config is lines, not data */

struct conffile_entry {
	char *arg;     /* "--NAME=VALUE", as on a command line */
	unsigned line; /* 1-based, for messages */
};

struct conffile {
	struct conffile_entry *entries; /* in file order */
	size_t n_entries;
};

/* Parses len bytes of text; file names it in messages. */
int conffile_parse(const char *file, const char *text, size_t len,
		   struct conffile *out, char *err, size_t err_cap);

/* Reads path (at most CONFFILE_MAX_BYTES) and parses it. */
int conffile_read(const char *path, struct conffile *out, char *err,
		  size_t err_cap);

void conffile_fini(struct conffile *cf);

#endif
