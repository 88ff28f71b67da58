/*
 * textfile: the whole-file read behind tokens_load, policymap_load and
 * the config file, and their line helpers (core/textfile.h).
 */
#include "core/textfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int textfile_fail(int rc, const char *label, const char *path,
			 const char *what, char *err, size_t err_cap)
{
	if (err != NULL && err_cap > 0)
		snprintf(err, err_cap, "%s: %s: %s", label, path, what);
	return rc;
}

int textfile_read(const char *label, const char *path, size_t max_bytes,
		  char **out, size_t *len, char *err, size_t err_cap)
{
	char what[64];
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int fd, rc = 0;

	*out = NULL;
	*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return textfile_fail(-errno, label, path, strerror(errno), err,
				     err_cap);
	if (fstat(fd, &st) < 0) {
		rc = textfile_fail(-errno, label, path, strerror(errno), err,
				   err_cap);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = textfile_fail(-EINVAL, label, path, "not a regular file",
				   err, err_cap);
		goto out;
	}
	if ((uint64_t)st.st_size > max_bytes) {
		snprintf(what, sizeof(what), "larger than %zu bytes",
			 max_bytes);
		rc = textfile_fail(-EMSGSIZE, label, path, what, err, err_cap);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		rc = textfile_fail(-ENOMEM, label, path, "out of memory", err,
				   err_cap);
		goto out;
	}
	/* Read to EOF, bounded by the size we checked (a file growing
	 * under us is cut there, not overrun). */
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = textfile_fail(-errno, label, path,
					   strerror(errno), err, err_cap);
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	buf[got] = '\0';
	*out = buf;
	*len = got;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return rc;
}

bool textfile_line(const char *text, size_t len, size_t *pos,
		   const char **line, size_t *line_len)
{
	const char *s = text + *pos, *nl, *hash;
	size_t n;

	if (*pos >= len)
		return false;
	nl = memchr(s, '\n', len - *pos);
	n = nl != NULL ? (size_t)(nl - s) : len - *pos;
	*pos += n + (nl != NULL);
	hash = memchr(s, '#', n);
	if (hash != NULL)
		n = (size_t)(hash - s);
	while (n > 0 && s[n - 1] == '\r')
		n--;
	*line = s;
	*line_len = n;
	return true;
}

size_t textfile_fields(const char *line, size_t len, struct textfile_field *f,
		       size_t max)
{
	size_t nf = 0, i = 0;

	while (i < len && nf < max) {
		size_t b;

		while (i < len && (line[i] == ' ' || line[i] == '\t'))
			i++;
		if (i == len)
			break;
		b = i;
		while (i < len && line[i] != ' ' && line[i] != '\t')
			i++;
		f[nf].s = line + b;
		f[nf].len = i - b;
		nf++;
	}
	return nf;
}

const char *textfile_quote(const char *s, size_t len, size_t max, char *buf,
			   size_t cap)
{
	size_t n = len < max ? len : max;

	if (n + 4 > cap)
		n = cap - 4;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (n < len) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = 0;
	return buf;
}
