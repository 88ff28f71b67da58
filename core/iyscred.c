/*
 * iyscred: see iyscred.h. Comments are whole lines only (not textfile's
 * line helper, which cuts at any '#'): a password may contain '#'.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/errmsg.h"
#include "core/iyscred.h"
#include "core/textfile.h"

static bool iyscred_blank(char c)
{
	return c == ' ' || c == '\t';
}

int iyscred_parse(const char *text, size_t len, struct iyscred *out,
		  char *err, size_t err_cap)
{
	static const char *const keys[2] = { "username", "password" };
	char *dst[2] = { out->username, out->password };
	size_t line_no = 0, pos = 0;
	bool seen[2] = { false, false };

	memset(out, 0, sizeof(*out));
	if (err && err_cap)
		err[0] = '\0';
	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t end = nl ? (size_t)(nl - text) : len;
		const char *l = text + pos;
		size_t n = end - pos, i = 0, k, v;
		int key = -1;

		pos = end + 1;
		line_no++;
		if (n && l[n - 1] == '\r')
			n--;
		while (n && iyscred_blank(l[n - 1]))
			n--;
		while (i < n && iyscred_blank(l[i]))
			i++;
		if (i == n || l[i] == '#')
			continue;
		k = i;
		while (i < n && !iyscred_blank(l[i]))
			i++;
		for (int j = 0; j < 2; j++)
			if (i - k == strlen(keys[j]) &&
			    memcmp(l + k, keys[j], i - k) == 0)
				key = j;
		if (key < 0) {
			char q[40];

			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: line %zu: unknown key \"%s\" "
				"(username or password)", line_no,
				textfile_quote(l + k, i - k, 32, q, sizeof(q)));
		}
		if (seen[key])
			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: line %zu: %s given twice",
				line_no, keys[key]);
		while (i < n && iyscred_blank(l[i]))
			i++;
		if (i == n)
			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: line %zu: %s: no value",
				line_no, keys[key]);
		if (n - i > IYSCRED_VALUE_MAX)
			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: line %zu: %s: longer than %d "
				"bytes", line_no, keys[key], IYSCRED_VALUE_MAX);
		for (v = i; v < n; v++) {
			unsigned char c = (unsigned char)l[v];

			if (c < 0x20 && c != '\t')
				break;
			if (c == 0x7f)
				break;
		}
		if (v < n)
			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: line %zu: %s: a control "
				"character at byte %zu of the value", line_no,
				keys[key], v - i + 1);
		memcpy(dst[key], l + i, n - i);
		dst[key][n - i] = '\0';
		seen[key] = true;
	}
	for (int j = 0; j < 2; j++)
		if (!seen[j])
			return errmsg_fail(err, err_cap, -EINVAL,
				"credentials: no %s line (lines are "
				"\"username VALUE\" and \"password VALUE\")",
				keys[j]);
	return 0;
}

int iyscred_load(const char *path, struct iyscred *out, char *err,
		 size_t err_cap)
{
	char *buf = NULL, why[320];
	size_t len = 0;
	int rc = textfile_read("credentials", path, IYSCRED_FILE_MAX, &buf,
			       &len, err, err_cap);

	if (rc < 0)
		return rc;
	rc = iyscred_parse(buf, len, out, why, sizeof(why));
	/* The password is cleared from the copy the file was read into. */
	memset(buf, 0, len);
	free(buf);
	if (rc < 0)
		errmsg_set(err, err_cap, "credentials: %s: %s", path,
			   why + strlen("credentials: "));
	return rc;
}
