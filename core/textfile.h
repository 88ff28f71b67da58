/*
 * textfile: reads a small configuration file (a token file, a policy map)
 * whole into memory, so its parser sees one byte string. Refuses what is
 * not a regular file and a file over max_bytes; a file growing while it is
 * read is cut at the size first seen. Any thread; start-up use.
 * Returns 0 with *out (malloc'd, NUL-terminated, the caller frees) and
 * *len, or -errno with err set to "LABEL: PATH: what went wrong".
 * Their parsers share the line helpers below: fields split at spaces and
 * tabs, and a bad field quoted back printable.
 */
#ifndef CONSENTD_CORE_TEXTFILE_H
#define CONSENTD_CORE_TEXTFILE_H

#include <stdbool.h>
#include <stddef.h>

int textfile_read(const char *label, const char *path, size_t max_bytes,
		  char **out, size_t *len, char *err, size_t err_cap);

/* The next line of text[0..len) at *pos, with its comment ('#' to the
 * end) and a CR line end cut off: *line, *line_len, and *pos moved past
 * it. False once the text is used up. */
bool textfile_line(const char *text, size_t len, size_t *pos,
		   const char **line, size_t *line_len);

/* One field of a line: bytes [s, s + len). */
struct textfile_field {
	const char *s;
	size_t len;
};

/* Splits line[0..len) at spaces and tabs into at most max fields of f and
 * returns how many (a caller allowing k passes k + 1 to tell "too
 * many"). */
size_t textfile_fields(const char *line, size_t len, struct textfile_field *f,
		       size_t max);

/* s[0..len) as printable text for an error message: at most max bytes,
 * anything unprintable as '?', "..." when cut; buf holds max + 4. */
const char *textfile_quote(const char *s, size_t len, size_t max, char *buf,
			   size_t cap);

#endif
