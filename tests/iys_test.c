/*
 * iys_test: Turkey-time conversion (core/tztime.h) and the İYS
 * importers (core/iys.c, ctl/import.c). The commands run as the real
 * consentctl binary (BUILD/consentctl, beside BUILD/tests/) on real files,
 * and their output is read back with the stream reader; the parser is also
 * driven directly through core/iys.h to feed input split at every byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/iys.h"
#include "core/stream.h"
#include "core/tztime.h"
#include "index/table.h"
#include "tests/check.h"

static char tmp[256];
static char ctl[PATH_MAX];

static const char *HEADER =
	"creationDate,transactionId,recipient,recipientType,type,status,"
	"consentDate,source\n";

static void path_in_tmp(const char *name, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/%s", tmp, name);
}

static void write_text(const char *name, const char *text)
{
	char p[512];
	FILE *f;

	path_in_tmp(name, p, sizeof(p));
	f = fopen(p, "wb");
	if (!f || fwrite(text, 1, strlen(text), f) != strlen(text)) {
		perror(p);
		exit(1);
	}
	fclose(f);
}

/* Runs consentctl with args; its stderr lands in errbuf. Exit code. */
static int run_ctl(const char *const *args, char *errbuf, size_t cap)
{
	char errpath[512];
	const char *argv[32];
	int n = 0, status = 0;
	pid_t pid;

	path_in_tmp("stderr.txt", errpath, sizeof(errpath));
	argv[n++] = ctl;
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	if (pid == 0) {
		int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd < 0 || chdir(tmp) < 0)
			_exit(127);
		dup2(fd, STDERR_FILENO);
		execv(ctl, (char *const *)argv);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	FILE *f = fopen(errpath, "rb");
	size_t got = f ? fread(errbuf, 1, cap - 1, f) : 0;

	errbuf[got] = '\0';
	if (f)
		fclose(f);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* The records of a change stream, copied out. */
struct got {
	uint64_t header_seq;
	int changes;
	size_t n;
	Consent__V1__Consent *c[64];
};

static void got_free(struct got *g)
{
	for (size_t i = 0; i < g->n; i++)
		consent__v1__consent__free_unpacked(g->c[i], NULL);
	g->n = 0;
}

static int read_stream(const char *name, struct got *g)
{
	char p[512];
	struct stream_reader *r;
	struct stream_item it;
	int fd, rc;

	memset(g, 0, sizeof(*g));
	path_in_tmp(name, p, sizeof(p));
	fd = open(p, O_RDONLY);
	if (fd < 0)
		return -errno;
	rc = stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &r);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	while ((rc = stream_reader_next(r, &it)) > 0) {
		if (it.kind == STREAM_ITEM_HEADER) {
			g->header_seq = it.header->sequence;
			g->changes = it.header->changes;
			continue;
		}
		for (size_t i = 0; i < it.n_consents && g->n < 64; i++) {
			/* Copy: the reader's records die with the next call. */
			uint8_t buf[1024];
			size_t len = consent__v1__consent__pack(it.consents[i], buf);

			g->c[g->n++] = consent__v1__consent__unpack(NULL, len, buf);
		}
	}
	stream_reader_destroy(r);
	close(fd);
	return rc;
}

static bool exists(const char *name)
{
	char p[512];

	path_in_tmp(name, p, sizeof(p));
	return access(p, F_OK) == 0;
}

static void test_tztime(void)
{
	int64_t t = 0;
	char buf[32];
	const char *why = NULL;

	CHECK(tztime_parse("2015-05-01 00:00:00", 19, &t, &why) == 0);
	CHECK(t == 1430427600);
	CHECK(t == INDEX_EPOCH);
	CHECK(tztime_parse("1970-01-01 03:00:00", 19, &t, NULL) == 0 && t == 0);
	CHECK(tztime_parse("2020-11-03T17:05:00", 19, &t, NULL) == 0 &&
	      t == 1604412300);
	CHECK(tztime_parse("2016-02-29 12:00:00", 19, &t, NULL) == 0);
	CHECK(tztime_parse("2000-02-29 12:00:00", 19, &t, NULL) == 0);
	CHECK(tztime_parse("2100-02-29 12:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-02-29 12:00:00", 19, &t, &why) == -EINVAL);
	CHECK_STREQ(why, "day out of range");
	CHECK(tztime_parse("2015-13-01 00:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-04-31 00:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01 24:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01 00:60:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01 00:00:60", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01", 10, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01 00:00:00Z", 20, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015/05/01 00:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("2015-05-01 0a:00:00", 19, &t, NULL) == -EINVAL);
	CHECK(tztime_parse("1969-12-31 23:59:59", 19, &t, NULL) == -EINVAL);

	CHECK(tztime_format(1430427600, buf, sizeof(buf)) == 19);
	CHECK_STREQ(buf, "2015-05-01 00:00:00");
	CHECK(tztime_format(1604412300, buf, sizeof(buf)) == 19);
	CHECK_STREQ(buf, "2020-11-03 17:05:00");
	CHECK(tztime_format(0, buf, 19) == -ENOSPC);
	CHECK(tztime_format(-3 * 3600 - 1, buf, sizeof(buf)) == -EINVAL);
	/* Round trips across the range, leap days included. */
	int bad = 0;

	for (int64_t s = -3 * 3600; s < 4102444800LL; s += 86400 * 7 + 3671) {
		if (tztime_format(s, buf, sizeof(buf)) != 19 ||
		    tztime_parse(buf, 19, &t, NULL) != 0 || t != s)
			bad++;
	}
	CHECKF(bad == 0, "%d round trips failed", bad);
}

static void test_csv_good(void)
{
	char err[4096];
	struct got g;

	/* BOM, CRLF, a blank line, RFC 4180 quotes, no final newline,
	 * permuted and extra columns, phone and e-mail normalised. */
	write_text("good.csv",
		   "\xef\xbb\xbfsource,recipient,type,recipientType,status,"
		   "consentDate,creationDate,transactionId,extra\r\n"
		   "HS_WEB,+905321234567,MESAJ,BIREYSEL,ONAY,"
		   "2015-05-01 00:00:00,2020-11-03 17:05:00,t1,x\r\n"
		   "\r\n"
		   "IYS_MOBIL,\"0532 123 45 68\",ARAMA,bireysel,RET,"
		   "\"2020-11-03 10:00:00\",2020-11-03 17:06:00,\"a,\"\"b\"\"\",\"\"\r\n"
		   "  ,  Foo@Example.COM ,EPOSTA,TACIR,RET,,"
		   "2020-11-03 17:07:00,,y");
	const char *args[] = { "import-csv", "--brand", "4242", "--iys-code",
			       "77", "--from-sequence", "1000", "good.csv",
			       "--out", "good.stream", NULL };
	int rc = run_ctl(args, err, sizeof(err));

	CHECKF(rc == 0, "exit %d: %s", rc, err);
	CHECKF(strstr(err, "3 records (sequences 1001..1003)") != NULL, "%s", err);
	CHECK(read_stream("good.stream", &g) == 0);
	CHECK(g.changes == 1 && g.header_seq == 1000);
	CHECK(g.n == 3);
	if (g.n != 3)
		return;
	for (size_t i = 0; i < 3; i++) {
		CHECK(g.c[i]->sequence == 1001 + i);
		CHECK(g.c[i]->brand_code == 4242 && g.c[i]->iys_code == 77);
	}
	CHECK_STREQ(g.c[0]->recipient, "+905321234567");
	CHECK(g.c[0]->channel == CONSENT__V1__CHANNEL__MESAJ);
	CHECK(g.c[0]->status == CONSENT__V1__STATUS__ONAY);
	CHECK(g.c[0]->source == CONSENT__V1__SOURCE__HS_WEB);
	CHECK(g.c[0]->consent_date == 1430427600);
	CHECK(g.c[0]->creation_date == 1604412300);
	CHECK_STREQ(g.c[0]->transaction_id, "t1");
	CHECK_STREQ(g.c[1]->recipient, "+905321234568");
	CHECK(g.c[1]->recipient_type == CONSENT__V1__RECIPIENT_TYPE__BIREYSEL);
	CHECK(g.c[1]->status == CONSENT__V1__STATUS__RET);
	CHECK(g.c[1]->consent_date == 1604386800);
	CHECK_STREQ(g.c[1]->transaction_id, "a,\"b\"");
	/* A TACIR record without consentDate takes its creationDate; an
	 * empty source is unspecified. */
	CHECK_STREQ(g.c[2]->recipient, "foo@example.com");
	CHECK(g.c[2]->recipient_type == CONSENT__V1__RECIPIENT_TYPE__TACIR);
	CHECK(g.c[2]->consent_date == g.c[2]->creation_date);
	CHECK(g.c[2]->source == CONSENT__V1__SOURCE__SOURCE_UNSPECIFIED);
	got_free(&g);

	/* ';' as the delimiter, LF ends, stdout as the output. */
	write_text("semi.csv",
		   "creationDate;transactionId;recipient;recipientType;type;"
		   "status;consentDate;source\n"
		   "2021-01-01 00:00:00;z;5321234567;TACIR;MESAJ;ONAY;"
		   "2021-01-01 00:00:00;SOMETHING_NEW\n");
	const char *args2[] = { "import-csv", "--brand", "9", "semi.csv",
				"--out", "semi.stream", NULL };

	rc = run_ctl(args2, err, sizeof(err));
	CHECKF(rc == 0, "exit %d: %s", rc, err);
	CHECK(read_stream("semi.stream", &g) == 0 && g.n == 1);
	if (g.n == 1) {
		CHECK(g.c[0]->sequence == 1 && g.header_seq == 0);
		CHECK(g.c[0]->source == CONSENT__V1__SOURCE__SOURCE_OTHER);
		CHECK(g.c[0]->consent_date == 1609448400);
	}
	got_free(&g);
}

struct bad_case {
	const char *row;   /* one data row after the header */
	const char *error; /* what stderr must say */
};

static void test_csv_bad_rows(void)
{
	static const struct bad_case cases[] = {
		{ "2020-01-01 00:00:00,t,+90532,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: recipient: " },
		{ "2020-01-01 00:00:00,t,,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: recipient: empty" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,SMS,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: type: not ARAMA, MESAJ or EPOSTA" },
		{ "2020-01-01 00:00:00,t,+905321234567,KURUMSAL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: recipientType: not BIREYSEL or TACIR" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,EVET,2020-01-01 00:00:00,HS_WEB",
		  "line 3: status: not ONAY or RET" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,2020-02-30 00:00:00,HS_WEB",
		  "line 3: consentDate: day out of range" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,,HS_WEB",
		  "line 3: consentDate: empty (only a TACIR record may omit it)" },
		{ "2020/01/01 00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: creationDate: not YYYY-MM-DD HH:mm:ss" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,EPOSTA,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: channel: EPOSTA needs an e-mail recipient" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,2015-04-30 23:59:59,HS_WEB",
		  "line 3: consent_date: before 2015-05-01" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00",
		  "line 3: row: fewer columns than the header" },
		{ "2020-01-01 00:00:00,t,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB,x",
		  "line 3: row: more columns than the header" },
		{ "2020-01-01 00:00:00,\"t,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: row: unterminated quote" },
		{ "2020-01-01 00:00:00,t\"x,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: row: a quote inside an unquoted field" },
		{ "2020-01-01 00:00:00,\"t\"x,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB",
		  "line 3: row: text after a closing quote" },
	};
	const char *good =
		"2020-01-01 00:00:00,g,+905321234567,BIREYSEL,MESAJ,ONAY,"
		"2020-01-01 00:00:00,HS_WEB\n";
	char text[2048], err[4096];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "%s%s%s\n%s", HEADER, good,
			 cases[i].row, good);
		write_text("bad.csv", text);
		const char *args[] = { "import-csv", "--brand", "5", "bad.csv",
				       "--out", "bad.stream", NULL };
		int rc = run_ctl(args, err, sizeof(err));

		CHECKF(rc == 1, "case %zu: exit %d", i, rc);
		CHECKF(strstr(err, cases[i].error) != NULL,
		       "case %zu: wanted \"%s\", got \"%s\"", i, cases[i].error,
		       err);
		/* A failed import leaves no output (nor a temp file). */
		CHECKF(!exists("bad.stream"), "case %zu left output", i);
	}
	/* An overlong line. */
	size_t big = IYS_LINE_MAX + 100;
	char *long_text = malloc(strlen(HEADER) + big + 300);

	strcpy(long_text, HEADER);
	strcat(long_text, good);
	size_t at = strlen(long_text);

	memset(long_text + at, 'x', big);
	long_text[at + big] = '\n';
	strcpy(long_text + at + big + 1, good);
	write_text("long.csv", long_text);
	free(long_text);
	const char *args[] = { "import-csv", "--brand", "5", "long.csv", "--out",
			       "long.stream", NULL };

	CHECK(run_ctl(args, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "line 3: row: longer than 65536 bytes") != NULL, "%s",
	       err);
	const char *args_skip[] = { "import-csv", "--brand", "5", "--skip-bad",
				    "long.csv", "--out", "long.stream", NULL };
	struct got g;

	CHECK(run_ctl(args_skip, err, sizeof(err)) == 0);
	CHECK(read_stream("long.stream", &g) == 0 && g.n == 2);
	got_free(&g);

	/* Bad headers fail even with --skip-bad. */
	write_text("hdr.csv", "creationDate,transactionId,recipient,type,status,"
			      "consentDate,source\n");
	const char *args_h[] = { "import-csv", "--brand", "5", "--skip-bad",
				 "hdr.csv", "--out", "hdr.stream", NULL };

	CHECK(run_ctl(args_h, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "line 1: header lacks column recipientType") != NULL,
	       "%s", err);
	write_text("hdr.csv", "");
	CHECK(run_ctl(args_h, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "no header line") != NULL, "%s", err);
	CHECK(!exists("hdr.stream"));

	/* Usage errors. */
	const char *args_u[] = { "import-csv", "good.csv", "--out", "x", NULL };

	CHECK(run_ctl(args_u, err, sizeof(err)) == 2);
	const char *args_b[] = { "import-csv", "--brand", "0", "good.csv",
				 "--out", "x", NULL };

	CHECK(run_ctl(args_b, err, sizeof(err)) == 2);
}

static void test_skip_bad(void)
{
	char text[4096], err[4096];
	struct got g;

	snprintf(text, sizeof(text),
		 "%s"
		 "2020-01-01 00:00:00,a,+905321234567,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB\n"
		 "2020-01-01 00:00:00,b,nonsense,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB\n"
		 "2020-01-01 00:00:01,c,+905321234568,BIREYSEL,MESAJ,RET,2020-01-01 00:00:00,HS_WEB\n"
		 "2020-01-01 00:00:00,d,+905321234569,BIREYSEL,FAX,ONAY,2020-01-01 00:00:00,HS_WEB\n"
		 "2020-01-01 00:00:00,e,+905321234569,BIREYSEL,MESAJ,ONAY,bad,HS_WEB\n"
		 "2020-01-01 00:00:02,f,+905321234560,TACIR,ARAMA,RET,2020-01-01 00:00:00,HS_WEB\n",
		 HEADER);
	write_text("skip.csv", text);
	const char *args[] = { "import-csv", "--brand", "5", "--skip-bad",
			       "--from-sequence", "41", "skip.csv", "--out",
			       "skip.stream", NULL };
	int rc = run_ctl(args, err, sizeof(err));

	CHECKF(rc == 0, "exit %d: %s", rc, err);
	CHECKF(strstr(err, "3 records (sequences 42..44), 3 bad records skipped"),
	       "%s", err);
	CHECK(strstr(err, "line 3: recipient: ") != NULL);
	CHECK(strstr(err, "line 5: type: ") != NULL);
	CHECK(strstr(err, "line 6: consentDate: ") != NULL);
	CHECK(read_stream("skip.stream", &g) == 0 && g.n == 3);
	if (g.n == 3) {
		CHECK_STREQ(g.c[0]->transaction_id, "a");
		CHECK_STREQ(g.c[1]->transaction_id, "c");
		CHECK_STREQ(g.c[2]->transaction_id, "f");
		CHECK(g.c[0]->sequence == 42 && g.c[2]->sequence == 44);
	}
	got_free(&g);

	/* The same rows through the JSON importer. */
	write_text("skip.json",
		   "{\"after\": \"1604423100000_053a\", \"list\": [\n"
		   "{\"recipient\":\"+905321234567\",\"type\":\"MESAJ\",\"source\":\"HS_WEB\","
		   "\"status\":\"ONAY\",\"consentDate\":\"2020-01-01 00:00:00\","
		   "\"recipientType\":\"BIREYSEL\",\"creationDate\":\"2020-01-01 00:00:00\","
		   "\"transactionId\":\"a\",\"citizenName\":null},\n"
		   "{\"recipient\":\"nonsense\",\"type\":\"MESAJ\",\"status\":\"ONAY\","
		   "\"consentDate\":\"2020-01-01 00:00:00\",\"recipientType\":\"BIREYSEL\","
		   "\"creationDate\":\"2020-01-01 00:00:00\"},\n"
		   "7,\n"
		   "{\"recipient\":\"+905321234568\",\"type\":\"MESAJ\",\"status\":2,"
		   "\"consentDate\":\"2020-01-01 00:00:00\",\"recipientType\":\"BIREYSEL\","
		   "\"creationDate\":\"2020-01-01 00:00:00\"},\n"
		   "{\"recipient\":\"a@b.co\",\"type\":\"EPOSTA\",\"status\":\"RET\","
		   "\"consentDate\":\"2020-01-01 00:00:00\",\"recipientType\":\"BIREYSEL\","
		   "\"creationDate\":\"2020-01-01 00:00:00\",\"transactionId\":\"e\"}\n"
		   "]}\n");
	const char *jargs[] = { "import-json", "--brand", "5", "--skip-bad",
				"skip.json", "--out", "skipj.stream", NULL };

	rc = run_ctl(jargs, err, sizeof(err));
	CHECKF(rc == 0, "exit %d: %s", rc, err);
	CHECKF(strstr(err, "2 records (sequences 1..2), 3 bad records skipped"),
	       "%s", err);
	CHECK(strstr(err, "list[1]: recipient: ") != NULL);
	CHECK(strstr(err, "list[2]: record: not an object") != NULL);
	CHECK(strstr(err, "list[3]: status: not a string") != NULL);
	CHECK(strstr(err, "after 1604423100000_053a") != NULL);
	CHECK(read_stream("skipj.stream", &g) == 0 && g.n == 2);
	if (g.n == 2) {
		CHECK_STREQ(g.c[1]->recipient, "a@b.co");
		CHECK(g.c[1]->status == CONSENT__V1__STATUS__RET);
	}
	got_free(&g);
	/* Without --skip-bad the first bad record fails it, by index. */
	const char *jargs2[] = { "import-json", "--brand", "5", "skip.json",
				 "--out", "skipj2.stream", NULL };

	CHECK(run_ctl(jargs2, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "list[1]: recipient: ") != NULL, "%s", err);
	CHECK(!exists("skipj2.stream"));
}

static void test_json_good(void)
{
	char err[4096];
	struct got g;

	/* Two pages one after another, and a bare list. */
	write_text("pages.json",
		   "{\"after\":\"p1\",\"list\":[{\"consentDate\":\"2020-11-03 10:00:00\","
		   "\"creationDate\":\"2020-11-03 17:05:00\",\"source\":\"HS_WEB\","
		   "\"recipient\":\"+905321234567\",\"recipientType\":\"BIREYSEL\","
		   "\"status\":\"ONAY\",\"type\":\"MESAJ\",\"transactionId\":\"aa\"}]}\n"
		   "{\"after\":\"p2\",\"list\":[]}\n"
		   "  [{\"consentDate\":\"2020-11-03 11:00:00\","
		   "\"creationDate\":\"2020-11-03 17:06:00\",\"source\":\"IYS_MOBIL\","
		   "\"recipient\":\"X@Y.com\",\"recipientType\":\"TACIR\","
		   "\"status\":\"RET\",\"type\":\"EPOSTA\"}]");
	const char *args[] = { "import-json", "--brand", "12345678", "pages.json",
			       "--out", "pages.stream", NULL };
	int rc = run_ctl(args, err, sizeof(err));

	CHECKF(rc == 0, "exit %d: %s", rc, err);
	CHECK(strstr(err, "after p2") != NULL);
	CHECK(read_stream("pages.stream", &g) == 0 && g.n == 2);
	if (g.n == 2) {
		CHECK(g.c[0]->brand_code == 12345678);
		CHECK(g.c[0]->consent_date == 1604386800);
		CHECK(g.c[0]->creation_date == 1604412300);
		CHECK_STREQ(g.c[0]->transaction_id, "aa");
		CHECK_STREQ(g.c[1]->recipient, "x@y.com");
		CHECK(g.c[1]->source == CONSENT__V1__SOURCE__IYS_MOBIL);
		CHECK(g.c[1]->sequence == 2);
	}
	got_free(&g);

	/* Malformed JSON is named by page and byte; no output. */
	write_text("broken.json", "{\"list\":[]}\n{\"list\": [1, }");
	const char *args2[] = { "import-json", "--brand", "1", "broken.json",
				"--out", "broken.stream", NULL };

	CHECK(run_ctl(args2, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "page 2: byte ") != NULL, "%s", err);
	CHECK(!exists("broken.stream"));
	write_text("broken.json", "{\"after\":\"x\"}");
	CHECK(run_ctl(args2, err, sizeof(err)) == 1);
	CHECKF(strstr(err, "\"list\": missing") != NULL, "%s", err);
}

/* ---- the parser driven directly ---- */

struct mem_reader {
	const char *p;
	size_t len, pos, step;
};

static ssize_t mem_read(void *arg, char *buf, size_t cap)
{
	struct mem_reader *m = arg;
	size_t n = m->len - m->pos;

	if (n > m->step)
		n = m->step;
	if (n > cap)
		n = cap;
	memcpy(buf, m->p + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

struct packed {
	uint8_t bytes[8192];
	size_t len;
};

static int pack_emit(void *arg, const Consent__V1__Consent *c)
{
	struct packed *pk = arg;
	size_t n = consent__v1__consent__get_packed_size(c);

	if (pk->len + n > sizeof(pk->bytes))
		return -ENOSPC;
	pk->len += consent__v1__consent__pack(c, pk->bytes + pk->len);
	return 0;
}

static void test_csv_split_reads(void)
{
	const char *text =
		"\xef\xbb\xbf"
		"creationDate,transactionId,recipient,recipientType,type,status,"
		"consentDate,source\r\n"
		"2020-01-01 00:00:00,\"a,\"\"b\",+905321234567,BIREYSEL,MESAJ,ONAY,"
		"2020-01-01 00:00:00,HS_WEB\r\n"
		"\n"
		"2020-01-01 00:00:00,b,bad,BIREYSEL,MESAJ,ONAY,2020-01-01 00:00:00,HS_WEB\n"
		"2020-01-01 00:00:01,c,x@y.z,TACIR,EPOSTA,RET,,\n"
		"2020-01-01 00:00:02,d,+905321234568,BIREYSEL,ARAMA,RET,"
		"2020-01-01 00:00:00,IYS_CM";
	struct iys_opts o = { .brand_code = 3, .skip_bad = true,
			      .first_sequence = 7 };
	struct iys_counts k;
	struct packed whole = { .len = 0 }, split;
	struct mem_reader m = { text, strlen(text), 0, SIZE_MAX };
	char err[256];
	int rc;

	rc = iys_csv_import(&o, mem_read, &m, pack_emit, &whole, &k, err,
			    sizeof(err));
	CHECKF(rc == 0, "%d %s", rc, err);
	CHECK(k.records == 3 && k.bad == 1);
	/* Every read size from 1 byte up gives the same records. */
	int differ = 0;

	for (size_t step = 1; step < 64; step++) {
		struct mem_reader ms = { text, strlen(text), 0, step };

		split.len = 0;
		rc = iys_csv_import(&o, mem_read, &ms, pack_emit, &split, &k,
				    err, sizeof(err));
		if (rc != 0 || k.records != 3 || k.bad != 1 ||
		    split.len != whole.len ||
		    memcmp(split.bytes, whole.bytes, whole.len) != 0)
			differ++;
	}
	CHECKF(differ == 0, "%d read sizes gave other records", differ);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int main(int argc, char **argv)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	(void)argc;
	(void)argv;
	if (n <= 0)
		return 1;
	self[n] = '\0';
	/* BUILD/tests/import_test -> BUILD/consentctl */
	snprintf(ctl, sizeof(ctl), "%s/../consentctl", dirname(self));
	snprintf(tmp, sizeof(tmp), "/tmp/import_test.XXXXXX");
	if (!mkdtemp(tmp))
		return 1;
	RUN(test_tztime);
	RUN(test_csv_split_reads);
	if (access(ctl, X_OK) != 0) {
		fprintf(stderr, "%s: not built (make all first)\n", ctl);
		check_tests_failed++;
	} else {
		RUN(test_csv_good);
		RUN(test_csv_bad_rows);
		RUN(test_skip_bad);
		RUN(test_json_good);
	}
	nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return check_summary();
}
