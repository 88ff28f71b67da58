/*
 * textfile: reads a small configuration file (a token file, a policy map)
 * whole into memory, so its parser sees one byte string. Refuses what is
 * not a regular file and a file over max_bytes; a file growing while it is
 * read is cut at the size first seen. Any thread; start-up use.
 * Returns 0 with *out (malloc'd, NUL-terminated, the caller frees) and
 * *len, or -errno with err set to "LABEL: PATH: what went wrong".
 */
#ifndef CONSENTD_CORE_TEXTFILE_H
#define CONSENTD_CORE_TEXTFILE_H

#include <stddef.h>

int textfile_read(const char *label, const char *path, size_t max_bytes,
		  char **out, size_t *len, char *err, size_t err_cap);

#endif
