/*
 * iyscred: the credentials file of consentctl pull, the İYS API user of
 * the OAuth2 password grant (DESIGN §12). Lines of "KEY VALUE":
 *
 *     # İYS API account (keep the file mode 0600)
 *     username  api-user@example.com.tr
 *     password  everything after the blanks, to the end of the line
 *
 * KEY is username or password, each exactly once; VALUE is the rest of
 * the line after the blanks that follow KEY, trailing blanks and a CR cut,
 * 1-256 bytes with no control character (so a password may hold blanks
 * and '#'). Blank lines and lines whose first non-blank is '#' are
 * comments. Pure functions, any thread. Errors: -EINVAL (-ENOMEM, or the
 * file's -errno) with err "credentials: [PATH: ]line N: what was wrong";
 * a message never quotes a password.
 */
#ifndef CONSENTD_CORE_IYSCRED_H
#define CONSENTD_CORE_IYSCRED_H

#include <stddef.h>

#define IYSCRED_VALUE_MAX 256
#define IYSCRED_FILE_MAX (64u << 10)

struct iyscred {
	char username[IYSCRED_VALUE_MAX + 1];
	char password[IYSCRED_VALUE_MAX + 1];
};

/* Parses text[0..len) (not NUL-terminated) into *out. */
int iyscred_parse(const char *text, size_t len, struct iyscred *out,
		  char *err, size_t err_cap);

/* Reads PATH (core/textfile, at most IYSCRED_FILE_MAX bytes) and parses
 * it; the message names PATH. */
int iyscred_load(const char *path, struct iyscred *out, char *err,
		 size_t err_cap);

#endif
