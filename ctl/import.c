/*
 * import: İYS's own change formats to a change stream (DESIGN §3.5, §3.6):
 *   consentctl import-csv  --brand B [--iys-code I] [--skip-bad]
 *                          [--from-sequence Q] FILE --out FILE
 *   consentctl import-json (same flags)
 *
 * Both read records of one brand (İYS's files and pull pages carry no
 * brandCode: --brand says whose they are) and write a change stream whose
 * header has changes=true and sequence Q (default 0), with the records
 * numbered Q+1, Q+2, ... in input order. The formats, the conversion of
 * each record and the error messages are core/iys.c's; this file is the
 * command line, the input and the output. A bad record fails the import
 * unless --skip-bad, which skips it, reports it on stderr and counts it.
 * A creationDate going backwards is counted and reported on stderr, not
 * an error. CSV is read in chunks; JSON whole (at most IYS_JSON_MAX
 * bytes), and the last page's "after" is printed so the next pull can
 * start there. The stream is written to a temp file renamed over FILE
 * only when the import succeeded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/iys.h"
#include "core/stream.h"
#include "ctl/ctl.h"


struct import_args {
	const char *in;
	const char *out;
	struct iys_opts opts;
};

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int import_usage(const char *cmd)
{
	fprintf(stderr,
		"usage: consentctl %s --brand B [--iys-code I] [--skip-bad] "
		"[--from-sequence Q] FILE --out FILE\n", cmd);
	return 2;
}

static int import_parse_args(int argc, char **argv, struct import_args *a)
{
	uint64_t v;
	bool have_brand = false;

	memset(a, 0, sizeof(*a));
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(arg, "--brand") == 0) {
			if (parse_u64(val, 99999999, &v) < 0 || v == 0) {
				fprintf(stderr, "%s: --brand wants 1..99999999\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.brand_code = (uint32_t)v;
			have_brand = true;
			i++;
		} else if (strcmp(arg, "--iys-code") == 0) {
			if (parse_u64(val, UINT32_MAX, &v) < 0) {
				fprintf(stderr, "%s: --iys-code wants a number\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.iys_code = (uint32_t)v;
			i++;
		} else if (strcmp(arg, "--from-sequence") == 0) {
			if (parse_u64(val, UINT64_MAX, &v) < 0) {
				fprintf(stderr,
					"%s: --from-sequence wants a number\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.first_sequence = v;
			i++;
		} else if (strcmp(arg, "--out") == 0 && val) {
			a->out = val;
			i++;
		} else if (strcmp(arg, "--skip-bad") == 0) {
			a->opts.skip_bad = true;
		} else if (arg[0] == '-' && arg[1] != '\0') {
			fprintf(stderr, "%s: unknown option %s\n", argv[0], arg);
			return -EINVAL;
		} else if (!a->in) {
			a->in = arg;
		} else {
			fprintf(stderr, "%s: one input file only\n", argv[0]);
			return -EINVAL;
		}
	}
	if (!have_brand || !a->in || !a->out)
		return -EINVAL;
	a->opts.diag = stderr;
	return 0;
}

/* The output: the stream goes to a temp file beside FILE that is renamed
 * over it only when the import succeeded (DESIGN §5.1), or to stdout. */
struct import_out {
	const char *path;
	char tmp[PATH_MAX];
	int fd;
	struct stream_writer *w;
};

static int import_out_open(struct import_out *out, const char *path,
			   const char *origin, uint64_t sequence)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	int rc;

	out->path = path;
	out->tmp[0] = '\0';
	out->w = NULL;
	if (strcmp(path, "-") == 0) {
		out->fd = STDOUT_FILENO;
	} else {
		if ((size_t)snprintf(out->tmp, sizeof(out->tmp), "%s.tmp.%d",
				     path, (int)getpid()) >= sizeof(out->tmp)) {
			out->tmp[0] = '\0';
			return -ENAMETOOLONG;
		}
		out->fd = open(out->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			       0644);
		if (out->fd < 0) {
			rc = -errno;
			out->tmp[0] = '\0';
			return rc;
		}
	}
	h.format_version = STREAM_FORMAT_VERSION;
	h.changes = true;
	h.sequence = sequence;
	h.created_at = (int64_t)time(NULL);
	h.origin = (char *)origin;
	return stream_writer_create(out->fd, &h, 0, &out->w);
}

static void import_out_abandon(struct import_out *out)
{
	if (out->w)
		stream_writer_destroy(out->w);
	out->w = NULL;
	if (out->tmp[0]) {
		close(out->fd);
		unlink(out->tmp);
	}
}

static int import_out_finish(struct import_out *out)
{
	int rc = stream_writer_finish(out->w);

	out->w = NULL;
	if (rc < 0 || !out->tmp[0]) {
		if (rc < 0)
			import_out_abandon(out);
		return rc;
	}
	if (fsync(out->fd) < 0) {
		rc = -errno;
		import_out_abandon(out);
		return rc;
	}
	close(out->fd);
	if (rename(out->tmp, out->path) < 0) {
		rc = -errno;
		unlink(out->tmp);
		return rc;
	}
	/* The rename is durable once the directory is synced. */
	rc = fsutil_fsync_parent(out->path);
	return rc;
}

static int emit_to_writer(void *arg, const Consent__V1__Consent *c)
{
	return stream_writer_add(arg, c);
}

static ssize_t read_fd(void *arg, char *buf, size_t cap)
{
	int fd = *(int *)arg;

	for (;;) {
		ssize_t r = read(fd, buf, cap);

		if (r >= 0 || errno != EINTR)
			return r < 0 ? -errno : r;
	}
}

/* The whole of fd in memory, at most max bytes. */
static int read_all(int fd, size_t max, char **out, size_t *len)
{
	size_t cap = 1u << 20, n = 0;
	char *buf = malloc(cap);

	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				free(buf);
				return -EMSGSIZE;
			}
			char *nb = realloc(buf, cap * 2);

			if (!nb) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read_fd(&fd, buf + n, cap - n);

		if (r < 0) {
			free(buf);
			return (int)r;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > max) {
		free(buf);
		return -EMSGSIZE;
	}
	*out = buf;
	*len = n;
	return 0;
}

static int import_main(int argc, char **argv, bool json)
{
	struct import_args a;
	struct iys_counts k;
	struct import_out out;
	char origin[128], err[512] = "", after[256] = "";
	int in_fd, rc;

	if (import_parse_args(argc, argv, &a) < 0)
		return import_usage(argv[0]);
	in_fd = ctl_open_in(a.in);
	if (in_fd < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.in, strerror(-in_fd));
		return 1;
	}
	snprintf(origin, sizeof(origin), "iys-%s brand=%" PRIu32,
		 json ? "json" : "csv", a.opts.brand_code);
	rc = import_out_open(&out, a.out, origin, a.opts.first_sequence);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.out, strerror(-rc));
		import_out_abandon(&out);
		if (in_fd != STDIN_FILENO)
			close(in_fd);
		return 1;
	}
	if (json) {
		char *buf = NULL;
		size_t len = 0;

		rc = read_all(in_fd, IYS_JSON_MAX, &buf, &len);
		if (rc < 0)
			snprintf(err, sizeof(err), "read: %s", strerror(-rc));
		else
			rc = iys_json_import(&a.opts, buf, len, emit_to_writer,
					     out.w, &k, after, sizeof(after), err,
					     sizeof(err));
		free(buf);
	} else {
		rc = iys_csv_import(&a.opts, read_fd, &in_fd, emit_to_writer,
				    out.w, &k, err, sizeof(err));
	}
	if (in_fd != STDIN_FILENO)
		close(in_fd);
	if (rc < 0) {
		if (!err[0])
			snprintf(err, sizeof(err), "%s", strerror(-rc));
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.in, err);
		import_out_abandon(&out);
		return 1;
	}
	rc = import_out_finish(&out);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.out, strerror(-rc));
		return 1;
	}
	fprintf(stderr, "%s: %" PRIu64 " records", argv[0], k.records);
	if (k.records)
		fprintf(stderr, " (sequences %" PRIu64 "..%" PRIu64 ")",
			a.opts.first_sequence + 1, a.opts.first_sequence + k.records);
	if (a.opts.skip_bad)
		fprintf(stderr, ", %" PRIu64 " bad records skipped", k.bad);
	fputc('\n', stderr);
	if (k.backwards)
		fprintf(stderr,
			"%s: note: creationDate went backwards %" PRIu64
			" times (input order kept)\n", argv[0], k.backwards);
	if (after[0])
		fprintf(stderr, "%s: after %s\n", argv[0], after);
	return 0;
}

int ctl_import_csv(int argc, char **argv)
{
	return import_main(argc, argv, false);
}

int ctl_import_json(int argc, char **argv)
{
	return import_main(argc, argv, true);
}
