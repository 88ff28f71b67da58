/*
 * conffile_test: server/conffile.c's syntax on its own (the e2e tests see
 * it through consentd --config): the three line forms, comments, blank
 * and CRLF lines, values with blanks, '=' and '#' inside, a last line
 * without its newline, each refusal naming FILE:LINE, and reading a file
 * (present, missing, a directory).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "server/conffile.h"
#include "tests/check.h"

static int parse(const char *text, struct conffile *cf, char *err,
		 size_t cap)
{
	err[0] = '\0';
	return conffile_parse("t.conf", text, strlen(text), cf, err, cap);
}

static void test_forms(void)
{
	struct conffile cf;
	char err[256];
	const char *text =
		"# consentd\n"
		"\n"
		"data-dir /var/lib/consentd\n"
		"workers = 4\n"
		"rpc=127.0.0.1:7700\n"
		"   \t\n"
		"  http\t127.0.0.1:0   # the ops port\r\n"
		"tokens /etc/a#b\n"
		"snapshot my file.bin\n"
		"  # indented comment\n"
		"resp a=b\n"
		"stale-soft 60";

	CHECK(parse(text, &cf, err, sizeof(err)) == 0);
	CHECKF(cf.n_entries == 8, "%zu entries", cf.n_entries);
	if (cf.n_entries != 8)
		return;
	CHECK_STREQ(cf.entries[0].arg, "--data-dir=/var/lib/consentd");
	CHECK(cf.entries[0].line == 3);
	CHECK_STREQ(cf.entries[1].arg, "--workers=4");
	CHECK(cf.entries[1].line == 4);
	CHECK_STREQ(cf.entries[2].arg, "--rpc=127.0.0.1:7700");
	CHECK_STREQ(cf.entries[3].arg, "--http=127.0.0.1:0");
	CHECK(cf.entries[3].line == 7);
	/* '#' not after a blank is part of the value. */
	CHECK_STREQ(cf.entries[4].arg, "--tokens=/etc/a#b");
	CHECK_STREQ(cf.entries[5].arg, "--snapshot=my file.bin");
	/* The first '=' (or blank) ends the name; the rest is the value. */
	CHECK_STREQ(cf.entries[6].arg, "--resp=a=b");
	CHECK(cf.entries[6].line == 11);
	CHECK_STREQ(cf.entries[7].arg, "--stale-soft=60");
	CHECK(cf.entries[7].line == 12);
	conffile_fini(&cf);
	CHECK(cf.n_entries == 0 && cf.entries == NULL);

	CHECK(parse("stale-soft 60", &cf, err, sizeof(err)) == 0);
	CHECK(cf.n_entries == 1 && cf.entries[0].line == 1);
	CHECK_STREQ(cf.entries[0].arg, "--stale-soft=60");
	conffile_fini(&cf);
	CHECK(parse("", &cf, err, sizeof(err)) == 0 && cf.n_entries == 0);
	CHECK(parse("\n\n# only comments\n", &cf, err, sizeof(err)) == 0);
	CHECK(cf.n_entries == 0);
	conffile_fini(&cf);
}

static void refused(const char *text, const char *want)
{
	struct conffile cf;
	char err[256];

	CHECKF(parse(text, &cf, err, sizeof(err)) == -EINVAL, "%s", text);
	CHECKF(strcmp(err, want) == 0, "'%s': got '%s', want '%s'", text,
	       err, want);
	CHECK(cf.entries == NULL && cf.n_entries == 0);
}

#define BAD_NAME "a name is a lower-case letter, then letters, digits " \
		 "and '-' (a flag without its --)"

static void test_refusals(void)
{
	refused("workers\n", "t.conf:1: workers needs a value");
	refused("workers 2\nhttp =\n", "t.conf:2: http needs a value");
	refused("# c\n\nrpc # no value\n", "t.conf:3: rpc needs a value");
	refused("workers 2\n\nWorkers 2\n", "t.conf:3: " BAD_NAME);
	refused("= 4\n", "t.conf:1: " BAD_NAME);
	refused("--workers 4\n", "t.conf:1: " BAD_NAME);
	refused("work.ers 4\n", "t.conf:1: " BAD_NAME);

	struct conffile cf;
	char err[256];
	const char nul[] = "workers 2\nrpc a\0b\n";

	CHECK(conffile_parse("t.conf", nul, sizeof(nul) - 1, &cf, err,
			     sizeof(err)) == -EINVAL);
	CHECK_STREQ(err, "t.conf:2: a NUL byte in the value");
}

static void test_read(void)
{
	char dir[] = "/tmp/conffile_test.XXXXXX", path[300], err[512];
	struct conffile cf;
	int fd;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/consentd.conf", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(fsutil_write_all(fd, "workers 3\nbad line here\n", 24) == 0);
	close(fd);
	/* Syntax is fine here: whether 'bad' is a flag is main's to say. */
	CHECK(conffile_read(path, &cf, err, sizeof(err)) == 0);
	CHECK(cf.n_entries == 2);
	if (cf.n_entries == 2) {
		CHECK_STREQ(cf.entries[1].arg, "--bad=line here");
		CHECK(cf.entries[1].line == 2);
	}
	conffile_fini(&cf);

	fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	CHECK(fsutil_write_all(fd, "\nworkers\n", 9) == 0);
	close(fd);
	CHECK(conffile_read(path, &cf, err, sizeof(err)) == -EINVAL);
	char want[400];
	snprintf(want, sizeof(want), "%s:2: workers needs a value", path);
	CHECK_STREQ(err, want);

	CHECK(conffile_read(dir, &cf, err, sizeof(err)) == -EINVAL);
	unlink(path);
	CHECK(conffile_read(path, &cf, err, sizeof(err)) == -ENOENT);
	snprintf(want, sizeof(want), "config: %s: No such file or directory",
		 path);
	CHECK_STREQ(err, want);
	fsutil_rm_tree(dir);
}

int main(void)
{
	RUN(test_forms);
	RUN(test_refusals);
	RUN(test_read);
	return check_summary();
}
