/* iyscred: a good file (from disk, CRLF, comments, a password with blanks
 * and '#'), and each malformed file refused with the line and the fault,
 * never the password. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/iyscred.h"
#include "tests/check.h"

static int parse(const char *text, struct iyscred *c, char *err, size_t cap)
{
	return iyscred_parse(text, strlen(text), c, err, cap);
}

static void test_good(void)
{
	struct iyscred c;
	char err[256];
	int rc = parse("# İYS API user\r\n\r\n   \t\n  username\tapi@x.com.tr  \r\n"
		       "  # password old\npassword  p4ss w#rd  \t\r\n", &c,
		       err, sizeof(err));

	CHECKF(rc == 0, "%s", err);
	CHECK_STREQ(c.username, "api@x.com.tr");
	CHECK_STREQ(c.password, "p4ss w#rd");
	CHECK(err[0] == '\0');
	/* No final newline. */
	rc = parse("password p\nusername u", &c, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	CHECK_STREQ(c.username, "u");
}

static void test_bad(void)
{
	static const struct {
		const char *text, *msg;
	} cases[] = {
		{ "username u\n", "credentials: no password line" },
		{ "password p\n", "credentials: no username line" },
		{ "", "credentials: no username line" },
		{ "username u\nuser u\npassword p\n",
		  "credentials: line 2: unknown key \"user\"" },
		{ "username u\npassword p\npassword q\n",
		  "credentials: line 3: password given twice" },
		{ "username u\n\npassword   \n",
		  "credentials: line 3: password: no value" },
		{ "username u\npassword se\001cret\n",
		  "credentials: line 2: password: a control character at byte 3" },
		{ "username=u\npassword p\n",
		  "credentials: line 1: unknown key \"username=u\"" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct iyscred c;
		char err[256];
		int rc = parse(cases[i].text, &c, err, sizeof(err));

		CHECKF(rc == -EINVAL, "case %zu: rc %d", i, rc);
		CHECKF(strncmp(err, cases[i].msg, strlen(cases[i].msg)) == 0,
		       "case %zu: \"%s\"", i, err);
		CHECKF(strstr(err, "secret") == NULL &&
			       strstr(err, "se\001") == NULL,
		       "case %zu: the password quoted: %s", i, err);
	}
	/* Over 256 bytes. */
	char long_text[400], err[256];
	struct iyscred c;

	snprintf(long_text, sizeof(long_text), "username u\npassword %0300d\n", 7);
	CHECK(parse(long_text, &c, err, sizeof(err)) == -EINVAL);
	CHECKF(strstr(err, "line 2: password: longer than 256 bytes"), "%s", err);
}

static void test_load(void)
{
	char path[] = "/tmp/iyscred_test_XXXXXX", err[512];
	struct iyscred c;
	int fd = mkstemp(path);
	const char *good = "username u1\npassword p1\n";

	CHECK(fd >= 0);
	CHECK(write(fd, good, strlen(good)) == (ssize_t)strlen(good));
	close(fd);
	CHECKF(iyscred_load(path, &c, err, sizeof(err)) == 0, "%s", err);
	CHECK_STREQ(c.password, "p1");
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(write(fd, "username u1\nbogus\n", 18) == 18);
	close(fd);
	CHECK(iyscred_load(path, &c, err, sizeof(err)) == -EINVAL);
	CHECKF(strncmp(err, "credentials: ", 13) == 0 && strstr(err, path) &&
		       strstr(err, ": line 2: unknown key \"bogus\""), "%s", err);
	unlink(path);
	CHECK(iyscred_load(path, &c, err, sizeof(err)) == -ENOENT);
	CHECKF(strstr(err, path) != NULL, "%s", err);
}

int main(void)
{
	RUN(test_good);
	RUN(test_bad);
	RUN(test_load);
	return check_summary();
}
