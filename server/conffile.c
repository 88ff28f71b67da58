/*
 * conffile: lines of "NAME VALUE" into "--NAME=VALUE" arguments
 * (conffile.h). Only the syntax is judged here; whether NAME is a flag and
 * VALUE fits it is main's option parser's to say, with the line number
 * this module keeps.
 */
#include "server/conffile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/textfile.h"

static int conffile_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int conffile_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static int conffile_fail(char *err, size_t err_cap, const char *file,
			 unsigned line, const char *why)
{
	snprintf(err, err_cap, "%s:%u: %s", file, line, why);
	return -EINVAL;
}

/* One line, [p, end), without its newline: an entry appended to out, or
 * nothing for a blank or comment line. */
static int conffile_line(const char *file, unsigned line, const char *p,
			 const char *end, struct conffile *out, char *err,
			 size_t err_cap)
{
	const char *name, *val, *q;
	size_t nl, vl;
	struct conffile_entry *e;
	char *arg;

	while (p < end && conffile_blank(*p))
		p++;
	if (p == end || *p == '#')
		return 0;
	name = p;
	while (p < end && conffile_name_char(*p))
		p++;
	nl = (size_t)(p - name);
	if (nl == 0 || *name < 'a' || *name > 'z' ||
	    (p < end && !conffile_blank(*p) && *p != '='))
		return conffile_fail(err, err_cap, file, line,
				     "a name is a lower-case letter, then "
				     "letters, digits and '-' (a flag without "
				     "its --)");
	while (p < end && conffile_blank(*p))
		p++;
	if (p < end && *p == '=') {
		p++;
		while (p < end && conffile_blank(*p))
			p++;
	}
	val = p;
	/* The value ends at a comment ('#' after a blank) or the line's end,
	 * trailing blanks dropped. */
	for (q = val; q < end; q++)
		if (*q == '#' && q > val && conffile_blank(q[-1]))
			break;
	while (q > val && conffile_blank(q[-1]))
		q--;
	vl = (size_t)(q - val);
	if (vl == 0 || *val == '#') {
		snprintf(err, err_cap, "%s:%u: %.*s needs a value", file, line,
			 (int)nl, name);
		return -EINVAL;
	}
	if (memchr(val, '\0', vl) != NULL)
		return conffile_fail(err, err_cap, file, line,
				     "a NUL byte in the value");
	e = realloc(out->entries, (out->n_entries + 1) * sizeof(*e));
	if (e == NULL)
		goto nomem;
	out->entries = e;
	arg = malloc(2 + nl + 1 + vl + 1);
	if (arg == NULL)
		goto nomem;
	memcpy(arg, "--", 2);
	memcpy(arg + 2, name, nl);
	arg[2 + nl] = '=';
	memcpy(arg + 3 + nl, val, vl);
	arg[3 + nl + vl] = '\0';
	e[out->n_entries].arg = arg;
	e[out->n_entries].line = line;
	out->n_entries++;
	return 0;
nomem:
	snprintf(err, err_cap, "%s: out of memory", file);
	return -ENOMEM;
}

int conffile_parse(const char *file, const char *text, size_t len,
		   struct conffile *out, char *err, size_t err_cap)
{
	const char *p = text, *end = text + len;
	unsigned line = 0;
	int rc;

	out->entries = NULL;
	out->n_entries = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *eol = nl != NULL ? nl : end;

		line++;
		rc = conffile_line(file, line, p, eol, out, err, err_cap);
		if (rc < 0) {
			conffile_fini(out);
			return rc;
		}
		p = nl != NULL ? nl + 1 : end;
	}
	return 0;
}

int conffile_read(const char *path, struct conffile *out, char *err,
		  size_t err_cap)
{
	char *buf;
	size_t len;
	int rc;

	out->entries = NULL;
	out->n_entries = 0;
	rc = textfile_read("config", path, CONFFILE_MAX_BYTES, &buf, &len, err,
			   err_cap);
	if (rc < 0)
		return rc;
	rc = conffile_parse(path, buf, len, out, err, err_cap);
	free(buf);
	return rc;
}

void conffile_fini(struct conffile *cf)
{
	for (size_t i = 0; i < cf->n_entries; i++)
		free(cf->entries[i].arg);
	free(cf->entries);
	cf->entries = NULL;
	cf->n_entries = 0;
}
