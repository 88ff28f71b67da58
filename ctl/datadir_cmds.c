/*
 * consentctl build, verify, dump, check: the data directory offline
 * (index/build.h, index/generation.h, index/check.h); and dump --from, a
 * running peer's GET /v1/snapshot to a file (core/download.h), verified
 * (trailer count and checksum) before it is renamed into place.
 *
 * check decides exactly as the server does (check_batch) for a trusted
 * caller with the default policy (merchant default allow, no freshness
 * bound), and prints one line:
 *   allow|deny REASON [STATUS SOURCE CONSENT_DATE]    (date in UTC, ISO 8601)
 *   deny INVALID_REQUEST: what was wrong
 * Its exit code is 0 whenever a verdict was printed, allow or deny: the
 * verdict is the output, not a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index/check.h"
#include "core/decision.h"
#include "core/download.h"
#include "core/enums.h"
#include "core/fsutil.h"
#include "core/stream.h"
#include "ctl/ctl.h"
#include "index/build.h"
#include "index/generation.h"
#include "index/table.h"

static int usage(const char *text)
{
	fprintf(stderr, "usage: consentctl %s\n", text);
	return 2;
}

int ctl_build(int argc, char **argv)
{
	static const char u[] = "build --snapshot FILE|- --out DIR";
	const char *snap = NULL, *dir = NULL;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && strcmp(argv[i], "--snapshot") == 0)
			snap = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--out") == 0)
			dir = argv[++i];
		else
			return usage(u);
	}
	if (snap == NULL || dir == NULL)
		return usage(u);
	int fd = ctl_open_in(snap);
	if (fd < 0) {
		fprintf(stderr, "consentctl build: %s: %s\n", snap, strerror(-fd));
		return 1;
	}
	struct build_result res;
	char err[1024];
	int rc = build_snapshot(fd, dir, &res, err, sizeof(err));
	if (fd != STDIN_FILENO)
		close(fd);
	if (rc < 0) {
		fprintf(stderr, "consentctl build: %s: %s\n", snap, err);
		return 1;
	}
	double rate = res.seconds > 0 ? (double)res.stream_records / res.seconds
				      : 0;
	printf("generation %" PRIu64 ": %" PRIu64 " records (%" PRIu64
	       " in the stream), watermark %" PRIu64 "\n", res.generation,
	       res.records, res.stream_records, res.watermark);
	printf("%.2f s (read %.2f s), %.0f records/s, table %.1f MiB, "
	       "%.1f bytes/record\n", res.seconds, res.read_seconds, rate,
	       (double)res.bytes / (1 << 20),
	       res.records ? (double)res.bytes / (double)res.records : 0.0);
	return 0;
}

int ctl_verify(int argc, char **argv)
{
	if (argc != 2)
		return usage("verify DIR");
	char err[1024];
	int rc = generation_verify(argv[1], err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "consentctl verify: %s\n", err);
		return 1;
	}
	printf("%s: every generation is whole\n", argv[1]);
	return 0;
}

/* dump --from: the peer's snapshot into a temporary file beside out,
 * read back whole (stream_reader: framing, record count and checksum in
 * the trailer), fsynced and only then renamed to out; a failed or cut
 * download leaves out as it was. */
static int dump_from(const char *base, const char *token, const char *out)
{
	char url[2048], tmp[PATH_MAX], err[PATH_MAX + 2560];
	uint64_t bytes = 0, records = 0, watermark = 0;
	struct download *d;
	struct stream_reader *r = NULL;

	if (download_snapshot_url(base, url, sizeof(url), err, sizeof(err)) < 0) {
		fprintf(stderr, "consentctl dump: --from %s\n", err);
		return 2;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.part-%ld", out, (long)getpid()) >=
	    (int)sizeof(tmp)) {
		fprintf(stderr, "consentctl dump: %s: name too long\n", out);
		return 1;
	}
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "consentctl dump: %s: %s\n", tmp, strerror(errno));
		return 1;
	}
	int wfd = dup(fd); /* the download's, closed by it */
	int rc = wfd < 0 ? -errno : download_start(url, token, wfd, &d, err,
						  sizeof(err));
	if (wfd < 0)
		snprintf(err, sizeof(err), "dup: %s", strerror(-rc));
	if (rc == 0)
		rc = download_finish(d, &bytes, err, sizeof(err));
	if (rc == 0 && lseek(fd, 0, SEEK_SET) != 0) {
		rc = -errno;
		snprintf(err, sizeof(err), "%s: %s", tmp, strerror(-rc));
	}
	if (rc == 0)
		rc = stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &r);
	if (rc == 0) {
		struct stream_item it;
		while ((rc = stream_reader_next(r, &it)) == 1)
			if (it.kind == STREAM_ITEM_HEADER)
				watermark = it.header->sequence;
		if (rc < 0)
			snprintf(err, sizeof(err), "the snapshot from %s does "
				 "not verify: %s", url, stream_reader_error(r));
		records = stream_reader_records(r);
		stream_reader_destroy(r);
	}
	if (rc == 0 && fsync(fd) < 0) {
		rc = -errno;
		snprintf(err, sizeof(err), "%s: fsync: %s", tmp, strerror(-rc));
	}
	close(fd);
	if (rc == 0 && rename(tmp, out) < 0) {
		rc = -errno;
		snprintf(err, sizeof(err), "%s: %s", out, strerror(-rc));
	}
	if (rc < 0) {
		unlink(tmp);
		fprintf(stderr, "consentctl dump: %s (nothing written to %s)\n",
			err, out);
		return 1;
	}
	fsutil_fsync_parent(out);
	fprintf(stderr, "consentctl dump: %" PRIu64 " records at sequence %"
		PRIu64 " from %s (%" PRIu64 " bytes, verified)\n", records,
		watermark, url, bytes);
	return 0;
}

int ctl_dump(int argc, char **argv)
{
	static const char u[] = "dump DIR --out FILE|-\n"
				"       consentctl dump --from http://HOST:PORT "
				"[--token T] --out FILE";
	const char *dir = NULL, *out = NULL, *from = NULL, *token = NULL;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && strcmp(argv[i], "--out") == 0)
			out = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--from") == 0)
			from = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--token") == 0)
			token = argv[++i];
		else if (dir == NULL && argv[i][0] != '-')
			dir = argv[i];
		else
			return usage(u);
	}
	if (from != NULL) {
		if (dir != NULL || out == NULL || strcmp(out, "-") == 0)
			return usage(u);
		if (token == NULL)
			token = getenv("CONSENTD_TOKEN");
		if (token != NULL && token[0] == '\0')
			token = NULL;
		return dump_from(from, token, out);
	}
	if (dir == NULL || out == NULL || token != NULL)
		return usage(u);
	int fd = ctl_open_out(out);
	if (fd < 0) {
		fprintf(stderr, "consentctl dump: %s: %s\n", out, strerror(-fd));
		return 1;
	}
	uint64_t records = 0;
	char err[1024];
	int rc = build_dump(dir, fd, &records, err, sizeof(err));
	if (fd != STDOUT_FILENO && close(fd) < 0 && rc == 0) {
		snprintf(err, sizeof(err), "%s: %s", out, strerror(errno));
		rc = -EIO;
	}
	if (rc < 0) {
		fprintf(stderr, "consentctl dump: %s\n", err);
		return 1;
	}
	fprintf(stderr, "consentctl dump: %" PRIu64 " records\n", records);
	return 0;
}

static int parse_brand(const char *s, uint32_t *out)
{
	if (*s == '\0' || strlen(s) > 10)
		return -EINVAL;
	uint64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int ctl_check(int argc, char **argv)
{
	static const char u[] = "check DIR RECIPIENT BRAND CHANNEL "
				"[BIREYSEL|TACIR] [TICARI|BILGILENDIRME]";
	if (argc < 5 || argc > 7)
		return usage(u);
	struct check_input in = {
		.recipient = argv[2],
		.recipient_len = strlen(argv[2]),
	};
	if (parse_brand(argv[3], &in.brand_code) < 0) {
		fprintf(stderr, "consentctl check: BRAND '%s' is not a number\n",
			argv[3]);
		return usage(u);
	}
	in.channel = enums_channel_parse(argv[4], strlen(argv[4]));
	if (in.channel == CHANNEL_NONE) {
		fprintf(stderr, "consentctl check: CHANNEL '%s' is not ARAMA, "
			"MESAJ or EPOSTA\n", argv[4]);
		return usage(u);
	}
	/* The optional words may come in either order, each at most once. */
	for (int i = 5; i < argc; i++) {
		size_t len = strlen(argv[i]);
		int rt = enums_rtype_parse(argv[i], len);
		int pu = enums_purpose_parse(argv[i], len);
		if (rt != RTYPE_NONE && in.rtype == RTYPE_NONE) {
			in.rtype = rt;
		} else if (pu != PURPOSE_NONE && in.purpose == PURPOSE_NONE) {
			in.purpose = pu;
		} else {
			fprintf(stderr, "consentctl check: unexpected '%s'\n",
				argv[i]);
			return usage(u);
		}
	}

	struct index *ix;
	uint64_t gen;
	char err[1024];
	int rc = generation_open_newest(argv[1], INDEX_LOAD_MMAP, &ix, &gen, err,
				     sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "consentctl check: %s\n", err);
		return 1;
	}
	struct decision_policy policy = { .merchant_default_deny = false };
	struct check_env env = {
		.index = ix,
		.policy = &policy,
		.principal = NULL, /* trusted */
		.stale = false,
	};
	struct verdict v;
	check_batch(&env, &in, 1, &v);
	index_destroy(ix);

	printf("%s %s", v.allow ? "allow" : "deny",
	       enums_reason_name(v.reason));
	if (v.reason == REASON_INVALID_REQUEST && v.error != NULL) {
		printf(": %s", v.error);
	} else if (v.status != STATUS_NONE) {
		char date[32] = "?";
		time_t t = (time_t)v.consent_date;
		struct tm tm;
		if (gmtime_r(&t, &tm) != NULL)
			strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
		printf(" %s %s %s", enums_status_name(v.status),
		       enums_source_name(v.source), date);
	}
	printf("\n");
	return 0;
}
