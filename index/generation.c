/*
 * generation: the generations of a data directory (see index/generation.h).
 *
 * Names. A generation is named by its number, gen-%020llu, so that names
 * sort as numbers and nothing else in DIR (the change log, a temp
 * directory .tmp-gen-*) looks like one. The number in the name must match
 * the generation in the index header: a directory renamed or copied into
 * the wrong place is broken, not silently served under another number.
 *
 * Publishing. The index and the emails file are written into
 * DIR/.tmp-gen-N.PID and fsynced (index_write fsyncs the temp directory
 * for its own rename), the directory is renamed to DIR/gen-N, then DIR is
 * fsynced. A crash leaves a .tmp-gen directory that no reader looks at and
 * generation_remove_leftovers removes, never half a generation. Pruning
 * renames a generation to a .tmp-gen name first for the same reason.
 *
 * E-mails. The `emails` file is the only place e-mail addresses survive
 * (the index keeps a keyed fingerprint), so copying an index into a table
 * with another secret (growth, a merge) re-keys them from the file of the
 * generation the index came from, then from the list of those inserted
 * since. Verification reads the file back whole: every line parses, is
 * already normalised, appears once, and its key is in the index; and the
 * index holds exactly as many e-mail entries as the file has lines.
 */
#include "index/generation.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/decimal.h"
#include "core/enums.h"
#include "core/errmsg.h"
#include "core/fsutil.h"
#include "core/hex.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "index/changelog.h"
#include "index/origins.h"

#define GEN_PREFIX "gen-"
#define GEN_DIGITS 20
#define TMP_PREFIX ".tmp-gen-"      /* publishing, and pruning */
#define STAGING_PREFIX ".snapshot-" /* older servers' snapshot staging */
#define EMAILS_BUF (1u << 20)       /* stdio buffer of an emails file */
#define EMAIL_HEAD 6                /* a list record's brand, rtype, length */
#define MERGE_WINDOW 32 /* keys prefetched in dst before they are applied */

static bool parse_gen_name(const char *name, uint64_t *gen)
{
	size_t plen = strlen(GEN_PREFIX);
	if (strncmp(name, GEN_PREFIX, plen) != 0 ||
	    strlen(name) != plen + GEN_DIGITS)
		return false;
	uint64_t v = 0;
	for (const char *p = name + plen; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*gen = v;
	return v > 0;
}

static int cmp_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* The generation numbers in dir, newest first. */
static int list_generations(const char *dir, uint64_t **out, size_t *n_out)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return -errno;
	uint64_t *gens = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		uint64_t g;
		if (!parse_gen_name(de->d_name, &g))
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			uint64_t *ng = realloc(gens, nc * sizeof(*ng));
			if (ng == NULL) {
				rc = -ENOMEM;
				break;
			}
			gens = ng;
			cap = nc;
		}
		gens[n++] = g;
	}
	if (rc == 0 && errno != 0)
		rc = -errno;
	closedir(d);
	if (rc < 0) {
		free(gens);
		return rc;
	}
	if (n > 1)
		qsort(gens, n, sizeof(*gens), cmp_desc);
	*out = gens;
	*n_out = n;
	return 0;
}

int generation_path(const char *dir, uint64_t generation, char *buf,
			    size_t cap)
{
	int n = snprintf(buf, cap, "%s/" GEN_PREFIX "%020" PRIu64, dir,
			 generation);
	if (n < 0 || (size_t)n >= cap)
		return -ENAMETOOLONG;
	return 0;
}

static int gen_file_path(const char *dir, uint64_t generation,
			 const char *name, char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "%s/" GEN_PREFIX "%020" PRIu64 "/%s", dir,
			 generation, name);
	if (n < 0 || (size_t)n >= cap)
		return -ENAMETOOLONG;
	return 0;
}

int generation_newest(const char *dir, uint64_t *out)
{
	uint64_t *gens = NULL;
	size_t n = 0;
	int rc = list_generations(dir, &gens, &n);
	if (rc < 0)
		return rc;
	*out = n ? gens[0] : 0;
	free(gens);
	return 0;
}

/* A large index loads for seconds before anything is served: say how far
 * it is (index_open_progress calls this each eighth). */
static void open_progress(const char *path, uint64_t done, uint64_t total,
			  void *arg)
{
	const double *t0 = arg;

	fprintf(stderr, "consentd: generation: loading %s: %u %% (%" PRIu64
		" of %" PRIu64 " MiB, %.1f s)\n", path,
		(unsigned)(done * 100 / total), done >> 20, total >> 20,
		clock_mono_s() - *t0);
}

/* Opens generation g's index and checks that it calls itself g. The
 * whole table is in memory when it returns (read in and checked), so a
 * generation is served resident: no cold start after readiness. */
static int open_generation(const char *dir, uint64_t g,
			   enum index_load_mode mode, struct index **out,
			   char *err, size_t err_cap)
{
	char path[4096];
	int rc = gen_file_path(dir, g, "index", path, sizeof(path));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: path too long", dir);
	struct index *ix;
	double t0 = clock_mono_s();
	rc = index_open_progress(path, mode, open_progress, &t0, &ix, err,
				 err_cap);
	if (rc < 0)
		return rc;
	struct index_info info;
	index_info(ix, &info);
	if (info.bytes >= INDEX_PROGRESS_MIN_BYTES)
		fprintf(stderr, "consentd: generation: %s: %" PRIu64 " MiB in "
			"memory%s, checked, in %.1f s\n", path,
			info.bytes >> 20,
			info.huge_pages ? " (huge pages asked for)" : "",
			clock_mono_s() - t0);
	if (info.generation != g) {
		index_destroy(ix);
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header says generation %" PRIu64, path,
			    info.generation);
	}
	*out = ix;
	return 0;
}

int generation_origins(const char *dir, uint64_t g, struct origins **out,
		       char *err, size_t err_cap)
{
	char path[4096];
	int rc = gen_file_path(dir, g, ORIGINS_FILE, path, sizeof(path));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: path too long", dir);
	rc = origins_create(out);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "out of memory");
	rc = origins_read(*out, path, err, err_cap);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0) {
		origins_destroy(*out);
		*out = NULL;
		if (rc != -ENOMEM)
			rc = -EPROTO; /* unreadable: the generation is broken */
	}
	return rc;
}

int generation_chain(const char *dir, uint64_t g, uint64_t *sequence,
		     uint8_t head[GENERATION_CHAIN_BYTES], char *err,
		     size_t err_cap)
{
	char path[4096], text[128];
	int rc = gen_file_path(dir, g, GENERATION_CHAIN_FILE, path,
			       sizeof(path));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: path too long", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT)
		return 0;
	if (fd < 0)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", path,
				   strerror(errno));
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n < 0)
		return errmsg_fail(err, err_cap, -EIO, "%s: cannot be read",
				   path);
	text[n] = '\0';
	/* "SEQUENCE HEX64\n", nothing else. */
	char *p = text, *end;
	errno = 0;
	unsigned long long seq = strtoull(p, &end, 10);
	if (errno != 0 || end == p || *p < '0' || *p > '9' || *end != ' ')
		return errmsg_fail(err, err_cap, -EPROTO, "%s: no sequence",
				   path);
	p = end + 1;
	for (size_t i = 0; i < GENERATION_CHAIN_BYTES; i++) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			int d = hex_digit((unsigned char)*p++);
			if (d < 0)
				return errmsg_fail(err, err_cap, -EPROTO, "%s: "
						   "the head is not 64 hex "
						   "digits", path);
			v = v * 16 + d;
		}
		head[i] = (uint8_t)v;
	}
	if (strcmp(p, "\n") != 0)
		return errmsg_fail(err, err_cap, -EPROTO, "%s: bytes after the "
				   "head", path);
	*sequence = seq;
	return 1;
}

/* The newest generation that opens, with its origins when origins is not
 * NULL (a generation whose origins file is damaged is broken too). */
static int open_newest(const char *dir, enum index_load_mode mode,
		       struct index **out, uint64_t *generation,
		       struct origins **origins, char *err, size_t err_cap)
{
	uint64_t *gens = NULL;
	size_t n = 0;
	int rc = list_generations(dir, &gens, &n);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: %s", dir, strerror(-rc));
	size_t broken = 0;
	for (size_t i = 0; i < n; i++) {
		char e[512] = "";
		struct index *ix;
		rc = open_generation(dir, gens[i], mode, &ix, e, sizeof(e));
		if (rc == 0 && origins != NULL) {
			rc = generation_origins(dir, gens[i], origins, e, sizeof(e));
			if (rc < 0)
				index_destroy(ix);
		}
		if (rc == 0) {
			*out = ix;
			if (generation != NULL)
				*generation = gens[i];
			free(gens);
			return 0;
		}
		if (rc == -ENOMEM) {
			/* Not the generation's fault: do not fall back to an
			 * older one and serve stale data without saying so. */
			free(gens);
			return errmsg_fail(err, err_cap, rc, "%s", e);
		}
		fprintf(stderr, "generation: skipping generation %" PRIu64 ": %s\n",
			gens[i], e);
		broken++;
	}
	free(gens);
	return errmsg_fail(err, err_cap, -ENOENT, "%s: no valid generation (%zu broken)",
		    dir, broken);
}

int generation_open_newest(const char *dir, enum index_load_mode mode,
			struct index **out, uint64_t *generation,
			char *err, size_t err_cap)
{
	return open_newest(dir, mode, out, generation, NULL, err, err_cap);
}

/* ---- the emails file ---- */

static bool parse_u32(const char *s, size_t len, uint32_t *out)
{
	if (len == 0 || len > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* "BRAND RTYPE CHANNEL ADDRESS": returns NULL or what is wrong. */
static const char *parse_email_line(char *line, size_t len,
				    struct generation_email *e)
{
	char *f[4];
	size_t fl[4];
	char *p = line, *end = line + len;
	for (int i = 0; i < 4; i++) {
		char *sp = i < 3 ? memchr(p, ' ', (size_t)(end - p)) : end;
		if (sp == NULL)
			return "fewer than 4 fields";
		f[i] = p;
		fl[i] = (size_t)(sp - p);
		p = sp + 1;
	}
	if (!parse_u32(f[0], fl[0], &e->brand_code) || e->brand_code == 0)
		return "brand is not a number in 1..4294967295";
	e->rtype = enums_rtype_parse(f[1], fl[1]);
	if (e->rtype != RTYPE_BIREYSEL && e->rtype != RTYPE_TACIR)
		return "recipient type is not BIREYSEL or TACIR";
	e->channel = enums_channel_parse(f[2], fl[2]);
	if (e->channel != CHANNEL_EPOSTA)
		return "channel is not EPOSTA";
	const char *why = NULL;
	if (recipient_normalize(f[3], fl[3], &e->recipient, &why) < 0)
		return why ? why : "address does not normalise";
	if (e->recipient.kind != RECIPIENT_EMAIL ||
	    e->recipient.email_len != fl[3] ||
	    memcmp(e->recipient.email, f[3], fl[3]) != 0)
		return "address is not a normalised e-mail";
	return NULL;
}

int generation_emails_open(const char *dir, uint64_t generation, int *fd,
			   char *name, size_t name_cap, char *err,
			   size_t err_cap)
{
	int rc = gen_file_path(dir, generation, "emails", name, name_cap);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: path too long", dir);
	*fd = open(name, O_RDONLY | O_CLOEXEC);
	if (*fd < 0) {
		rc = -errno;
		return errmsg_fail(err, err_cap, rc, "%s: %s", name, strerror(-rc));
	}
	return 0;
}

int generation_emails_foreach_fd(int fd, const char *name,
				 generation_email_fn fn, void *arg, char *err,
				 size_t err_cap)
{
	int rc, dfd = dup(fd);
	FILE *f = dfd < 0 ? NULL : fdopen(dfd, "r");
	if (f == NULL) {
		rc = -errno;
		if (dfd >= 0)
			close(dfd);
		return errmsg_fail(err, err_cap, rc, "%s: %s", name, strerror(-rc));
	}
	/* From the start, whoever read it before (the dup shares the
	 * offset). */
	if (fseeko(f, 0, SEEK_SET) < 0) {
		rc = -errno;
		fclose(f);
		return errmsg_fail(err, err_cap, rc, "%s: %s", name, strerror(-rc));
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	uint64_t lineno = 0;
	struct generation_email e;
	rc = 0;
	errno = 0;
	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (len == 0 || line[len - 1] != '\n') {
			rc = errmsg_fail(err, err_cap, -EPROTO, "%s: line %" PRIu64
				  ": not ended by a newline (truncated)", name,
				  lineno);
			break;
		}
		line[--len] = '\0';
		const char *why = parse_email_line(line, (size_t)len, &e);
		if (why != NULL) {
			rc = errmsg_fail(err, err_cap, -EPROTO, "%s: line %" PRIu64
				  ": %s", name, lineno, why);
			break;
		}
		rc = fn(&e, arg);
		if (rc != 0)
			break;
	}
	/* getline returns -1 both at the end and when it cannot grow its
	 * buffer (or read): only feof says the file was read whole. */
	if (rc == 0 && !feof(f)) {
		rc = errno != 0 ? -errno : -EIO;
		if (rc == -ENOMEM)
			errmsg_fail(err, err_cap, rc, "%s: line %" PRIu64 ": out of "
			     "memory", name, lineno + 1);
		else
			errmsg_fail(err, err_cap, rc, "%s: read error: %s", name,
			     strerror(-rc));
	}
	free(line);
	fclose(f);
	return rc;
}

int generation_emails_foreach(const char *dir, uint64_t generation,
			   generation_email_fn fn, void *arg, char *err,
			      size_t err_cap)
{
	char path[4096];
	int fd;
	int rc = generation_emails_open(dir, generation, &fd, path,
					sizeof(path), err, err_cap);
	if (rc < 0)
		return rc;
	rc = generation_emails_foreach_fd(fd, path, fn, arg, err, err_cap);
	close(fd);
	return rc;
}

/* ---- verify ---- */

struct verify_ctx {
	const struct index *ix;
	struct index *seen;   /* the keys of the lines so far */
	uint64_t lines;
	uint64_t missing;     /* lines whose key the index lacks */
	uint64_t duplicates;
	uint64_t first_bad;   /* line number of the first problem */
};

static int verify_line(const struct generation_email *e, void *arg)
{
	struct verify_ctx *v = arg;
	struct index_key key;
	struct consent_value val;
	v->lines++;
	index_key_make(v->ix, &e->recipient, e->brand_code, e->rtype,
		       e->channel, &key);
	bool bad = false;
	if (!index_lookup(v->ix, &key, &val)) {
		v->missing++;
		bad = true;
	}
	/* The scratch index only needs the key's bits and hash, not its
	 * secret, to tell a repeated key. */
	struct consent_value one = { STATUS_ONAY, SOURCE_OTHER, INDEX_EPOCH };
	int rc = index_apply_writer(v->seen, &key, &one);
	if (rc == INDEX_SKIPPED) {
		v->duplicates++;
		bad = true;
	} else if (rc < 0) {
		return rc;
	}
	if (bad && v->first_bad == 0)
		v->first_bad = v->lines;
	return 0;
}

static int count_email(const struct index_entry *e, void *arg)
{
	*(uint64_t *)arg += e->is_email;
	return 0;
}

static int verify_generation(const char *dir, uint64_t g, char *err,
			     size_t err_cap)
{
	struct index *ix;
	struct origins *o = NULL;
	int rc = open_generation(dir, g, INDEX_LOAD_MMAP, &ix, err, err_cap);
	if (rc < 0)
		return rc;
	rc = generation_origins(dir, g, &o, err, err_cap);
	origins_destroy(o);
	if (rc < 0) {
		index_destroy(ix);
		return rc;
	}
	uint64_t n_email = 0;
	index_foreach(ix, count_email, &n_email);
	struct verify_ctx v = { .ix = ix };
	rc = index_create(n_email, NULL, &v.seen);
	if (rc < 0) {
		index_destroy(ix);
		return errmsg_fail(err, err_cap, rc, "generation %" PRIu64
			    ": no memory to check its e-mails", g);
	}
	rc = generation_emails_foreach(dir, g, verify_line, &v, err, err_cap);
	if (rc == -ENOSPC)
		rc = errmsg_fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": emails file has more lines than the index has "
			  "e-mail entries (%" PRIu64 ")", g, n_email);
	else if (rc == 0 && (v.missing || v.duplicates))
		rc = errmsg_fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": emails file: %" PRIu64 " addresses not in the index, %"
			  PRIu64 " listed twice (first at line %" PRIu64 ")", g,
			  v.missing, v.duplicates, v.first_bad);
	else if (rc == 0 && v.lines != n_email)
		rc = errmsg_fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": index has %" PRIu64 " e-mail entries, emails file %"
			  PRIu64 " lines", g, n_email, v.lines);
	index_destroy(v.seen);
	index_destroy(ix);
	return rc;
}

int generation_verify(const char *dir, char *err, size_t err_cap)
{
	uint64_t *gens = NULL;
	size_t n = 0;
	int rc = list_generations(dir, &gens, &n);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: %s", dir, strerror(-rc));
	if (n == 0) {
		free(gens);
		return errmsg_fail(err, err_cap, -ENOENT, "%s: no generations", dir);
	}
	int first_rc = 0;
	size_t broken = 0;
	char first[512] = "";
	for (size_t i = 0; i < n; i++) {
		char e[512] = "";
		rc = verify_generation(dir, gens[i], e, sizeof(e));
		if (rc == 0)
			continue;
		if (rc == -ENOMEM) {
			/* Not the generation's fault: do not call it broken. */
			free(gens);
			return errmsg_fail(err, err_cap, rc, "%s", e);
		}
		if (broken++ == 0) {
			first_rc = rc;
			snprintf(first, sizeof(first), "%s", e);
		}
	}
	free(gens);
	if (broken == 0)
		return 0;
	return errmsg_fail(err, err_cap, first_rc, "%s (%zu of %zu generations broken)",
		    first, broken, n);
}

/* ---- pruning and leftovers ---- */

void generation_prune(const char *dir, uint64_t keep, uint64_t keep2)
{
	uint64_t *gens = NULL;
	size_t n = 0, gone = 0;
	if (list_generations(dir, &gens, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX], tmp[PATH_MAX];
		if (gens[i] == keep || gens[i] == keep2 ||
		    generation_path(dir, gens[i], path, sizeof(path)) < 0 ||
		    snprintf(tmp, sizeof(tmp), "%s/" TMP_PREFIX "%" PRIu64
			     ".del", dir, gens[i]) >= (int)sizeof(tmp))
			continue;
		fsutil_rm_tree(tmp);
		if (rename(path, tmp) == 0) {
			fsutil_rm_tree(tmp);
			gone++;
		}
	}
	if (gone)
		fsutil_fsync_dir(dir);
	free(gens);
}

int generation_next(const char *dir, const struct generation_keep *k,
		    uint64_t *out)
{
	uint64_t newest;
	int rc = generation_newest(dir, &newest);
	if (rc < 0)
		return rc;
	*out = (newest > k->gen ? newest : k->gen) + 1;
	return 0;
}

void generation_kept(const char *dir, struct changelog *log,
		     struct generation_keep *k, uint64_t gen, uint64_t wm)
{
	if (k->gen != 0 && k->gen != gen) {
		k->prev_gen = k->gen;
		k->prev_watermark = k->watermark;
	}
	k->gen = gen;
	k->watermark = wm;
	generation_prune(dir, gen, k->prev_gen);
	if (k->prev_gen == 0 || log == NULL)
		return;
	int rc = changelog_drop_through(log, k->prev_watermark);
	if (rc < 0)
		fprintf(stderr, "consentd: generation: dropping the change log "
			"through %" PRIu64 ": %s\n", k->prev_watermark,
			strerror(-rc));
	else if (k->prev_watermark > k->log_floor)
		k->log_floor = k->prev_watermark;
}

int generation_remove_leftovers(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	if (d == NULL)
		return 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) &&
		    strncmp(de->d_name, STAGING_PREFIX, strlen(STAGING_PREFIX)))
			continue;
		char path[PATH_MAX];
		int len = snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (len < 0 || (size_t)len >= sizeof(path))
			continue;
		fprintf(stderr, "consentd: generation: removing %s (left by an "
			"unfinished build)\n", path);
		fsutil_rm_tree(path);
		n++;
	}
	closedir(d);
	fsutil_fsync_dir(dir);
	return n;
}

/* ---- a generation in memory ---- */

/*
 * The list of e-mail addresses not yet in an `emails` file. A build puts
 * every address of its snapshot here (4-8 GiB for 10^9 synthetic
 * records, beside an 18 GiB table: more than a 24 GiB box has), so past
 * EMAIL_SPILL_BYTES it moves from the heap into a shared mapping of an
 * unlinked file (O_TMPFILE in $TMPDIR, else /var/tmp): the page cache
 * holds it, and the kernel can write it back and evict it instead of
 * the process running out of memory. It is appended and read in order,
 * so the cost of that is a sequential write and read. l->p stays a
 * plain pointer to the bytes either way; only growth and freeing know.
 */
#define EMAIL_SPILL_BYTES (64u << 20)

static void email_list_free(struct generation_email_list *l)
{
	if (l->spilled) {
		munmap(l->p, l->cap);
		close(l->spill_fd);
	} else
		free(l->p);
	memset(l, 0, sizeof(*l));
}

/* The temp file's directory: $TMPDIR when set, else /var/tmp (disk,
 * where /tmp may be memory). */
static const char *email_spill_dir(void)
{
	const char *d = getenv("TMPDIR");
	return d != NULL && d[0] != '\0' ? d : "/var/tmp";
}

/* Grows l to at least cap bytes: on the heap below EMAIL_SPILL_BYTES,
 * else in the spill file. 0 or -errno. */
static int email_list_grow(struct generation_email_list *l, size_t cap)
{
	if (!l->spilled && cap <= EMAIL_SPILL_BYTES) {
		uint8_t *p = realloc(l->p, cap);
		if (p == NULL)
			return -ENOMEM;
		l->p = p;
		l->cap = cap;
		return 0;
	}
	if (!l->spilled) {
		int fd = open(email_spill_dir(), O_TMPFILE | O_RDWR | O_CLOEXEC,
			      0600);
		if (fd < 0)
			return -errno;
		uint8_t *p = MAP_FAILED;
		if (ftruncate(fd, (off_t)cap) == 0)
			p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED,
				 fd, 0);
		if (p == MAP_FAILED) {
			int e = errno;
			close(fd);
			return -e;
		}
		memcpy(p, l->p, l->len);
		free(l->p);
		l->p = p;
		l->cap = cap;
		l->spilled = true;
		l->spill_fd = fd; /* grown by ftruncate, then mremap */
		return 0;
	}
	if (ftruncate(l->spill_fd, (off_t)cap) < 0)
		return -errno;
	void *p = mremap(l->p, l->cap, cap, MREMAP_MAYMOVE);
	if (p == MAP_FAILED)
		return -errno;
	l->p = p;
	l->cap = cap;
	return 0;
}

/* Removes a working table's file and its directory (best effort: what
 * stays is a leftover generation_remove_leftovers takes). The mapping
 * keeps the data for whoever still reads it. */
static void work_file_remove(const char *path)
{
	char d[PATH_MAX + 16];
	snprintf(d, sizeof(d), "%s", path);
	(void)unlink(path);
	char *slash = strrchr(d, '/');
	if (slash != NULL) {
		*slash = '\0';
		(void)rmdir(d);
	}
}

void generation_work_remove(const struct index *ix)
{
	if (ix != NULL && index_file_path(ix) != NULL)
		work_file_remove(index_file_path(ix));
}

void generation_fini(struct generation *g)
{
	generation_work_remove(g->ix);
	index_destroy(g->ix);
	origins_destroy(g->origins);
	email_list_free(&g->extra);
	memset(g, 0, sizeof(*g));
}

int generation_email_add(struct generation *g, uint32_t brand_code,
			 int rtype, const char *addr, size_t len)
{
	struct generation_email_list *l = &g->extra;
	size_t need = EMAIL_HEAD + len;
	if (len > RECIPIENT_EMAIL_MAX)
		return -EINVAL;
	if (l->cap - l->len < need) {
		size_t cap = l->cap ? l->cap * 2 : 64 << 10;
		while (cap - l->len < need)
			cap *= 2;
		int rc = email_list_grow(l, cap);
		if (rc < 0)
			return rc;
	}
	uint8_t *p = l->p + l->len;
	memcpy(p, &brand_code, 4);
	p[4] = (uint8_t)rtype;
	p[5] = (uint8_t)len; /* <= RECIPIENT_EMAIL_MAX (254) */
	memcpy(p + EMAIL_HEAD, addr, len);
	l->len += need;
	l->n++;
	return 0;
}

void generation_written(struct generation *g, const char *dir,
			uint64_t number)
{
	snprintf(g->emails_dir, sizeof(g->emails_dir), "%s", dir);
	g->emails_gen = number;
	email_list_free(&g->extra);
}

int generation_email_list_foreach(const struct generation_email_list *l,
				  generation_email_fn fn, void *arg)
{
	struct generation_email e;
	int rc = 0;
	for (size_t off = 0; rc == 0 && off < l->len;) {
		const uint8_t *p = l->p + off;
		memcpy(&e.brand_code, p, 4);
		e.rtype = p[4];
		e.channel = CHANNEL_EPOSTA;
		memset(&e.recipient, 0, sizeof(e.recipient));
		e.recipient.kind = RECIPIENT_EMAIL;
		e.recipient.email_len = p[5];
		memcpy(e.recipient.email, p + EMAIL_HEAD, p[5]);
		e.recipient.email[p[5]] = '\0';
		off += EMAIL_HEAD + p[5];
		rc = fn(&e, arg);
	}
	return rc;
}

/* Calls fn for each of g's addresses: its file's, then its list's. */
static int emails_each(const struct generation *g, generation_email_fn fn,
		       void *arg, char *err, size_t err_cap)
{
	int rc = 0;
	if (g->emails_dir[0] != '\0')
		rc = generation_emails_foreach(g->emails_dir, g->emails_gen, fn,
					       arg, err, err_cap);
	if (rc == 0)
		rc = generation_email_list_foreach(&g->extra, fn, arg);
	return rc;
}

/* One line of a generation's `emails` file, "BRAND RTYPE EPOSTA ADDRESS\n",
 * into line (room for 32 + RECIPIENT_EMAIL_MAX bytes); returns its length. */
static size_t email_line(char *line, uint32_t brand, int rtype,
			 const char *addr, size_t len)
{
	char *p = decimal_put_u64(line, brand);
	const char *rt = enums_rtype_name(rtype);
	size_t rl = strlen(rt);
	*p++ = ' ';
	memcpy(p, rt, rl);
	p += rl;
	memcpy(p, " EPOSTA ", 8);
	p += 8;
	memcpy(p, addr, len);
	p += len;
	*p++ = '\n';
	return (size_t)(p - line);
}

/* ---- publishing ---- */

struct lines_fill {
	FILE *f;
	bool failed;
};

static int lines_one(const struct generation_email *e, void *arg)
{
	struct lines_fill *l = arg;
	char line[32 + RECIPIENT_EMAIL_MAX];
	size_t ll = email_line(line, e->brand_code, e->rtype,
			       e->recipient.email, e->recipient.email_len);
	errno = 0;
	if (fwrite(line, 1, ll, l->f) != ll) {
		l->failed = true;
		return errno != 0 ? -errno : -EIO; /* ENOSPC must say so */
	}
	return 0;
}

/* Writes g's addresses to path and fsyncs it. */
static int write_emails(const struct generation *g, const char *path,
			char *err, size_t err_cap)
{
	FILE *f = fopen(path, "we");
	if (f == NULL)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", path,
			    strerror(errno));
	setvbuf(f, NULL, _IOFBF, EMAILS_BUF);
	struct lines_fill l = { .f = f };
	int rc = emails_each(g, lines_one, &l, err, err_cap);
	if (rc < 0) {
		if (l.failed)
			errmsg_fail(err, err_cap, rc, "%s: %s", path, strerror(-rc));
		fclose(f);
		return rc;
	}
	/* A failed flush or fsync is fatal for the file (DESIGN §5.1). */
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: %s", path, strerror(errno));
		fclose(f);
		return rc;
	}
	if (fclose(f) != 0)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", path,
			    strerror(errno));
	return 0;
}

/* Writes len bytes to a new file at path and fsyncs it. */
static int write_bytes(const char *path, const uint8_t *b, size_t len,
		       char *err, size_t err_cap)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc = fd < 0 ? -errno : fsutil_write_all(fd, b, len);
	/* A failed fsync is fatal for the file (DESIGN §5.1). */
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0 && close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: %s", path, strerror(-rc));
	return 0;
}

int generation_publish(const char *dir, const struct generation *g,
		       char *err, size_t err_cap)
{
	char tmp[PATH_MAX], path[PATH_MAX + 16], final[PATH_MAX];
	struct index_info info;
	int rc;

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	index_info(g->ix, &info);
	if (info.generation == 0)
		return errmsg_fail(err, err_cap, -EINVAL, "generation 0 is not a "
			    "generation number");
	rc = generation_path(dir, info.generation, final, sizeof(final));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "%s: path too long", dir);
	int n = snprintf(tmp, sizeof(tmp), "%s/" TMP_PREFIX "%" PRIu64 ".%ld",
			 dir, info.generation, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return errmsg_fail(err, err_cap, -ENAMETOOLONG, "%s: path too long", dir);
	fsutil_rm_tree(tmp); /* a leftover of a crashed builder with our pid */
	/* Encoded first: once the temp directory exists, a shortage of
	 * memory could leave it behind (removing it allocates too). */
	uint8_t *ob = NULL;
	size_t ob_len = 0;
	rc = origins_encode(g->origins, &ob, &ob_len);
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "out of memory encoding the "
			    "origins");
	if (mkdir(tmp, 0755) < 0) {
		free(ob);
		return errmsg_fail(err, err_cap, -errno, "%s: %s", tmp, strerror(errno));
	}

	snprintf(path, sizeof(path), "%s/emails", tmp);
	rc = write_emails(g, path, err, err_cap);
	if (rc < 0)
		goto out_rm;
	snprintf(path, sizeof(path), "%s/" ORIGINS_FILE, tmp);
	rc = write_bytes(path, ob, ob_len, err, err_cap);
	if (rc < 0)
		goto out_rm;
	if (g->has_chain) {
		char line[128];
		int ll = snprintf(line, sizeof(line), "%" PRIu64 " ",
				  g->chain_sequence);
		hex_put(line + ll, g->chain, GENERATION_CHAIN_BYTES);
		ll += 2 * GENERATION_CHAIN_BYTES;
		line[ll++] = '\n';
		snprintf(path, sizeof(path), "%s/" GENERATION_CHAIN_FILE, tmp);
		rc = write_bytes(path, (const uint8_t *)line, (size_t)ll, err,
				 err_cap);
		if (rc < 0)
			goto out_rm;
	}
	snprintf(path, sizeof(path), "%s/index", tmp);
	rc = index_write(g->ix, path);
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "%s: %s", path, strerror(-rc));
		goto out_rm;
	}
	free(ob);
	ob = NULL;
	/* index_write fsynced the temp directory for its own rename. */
	if (rename(tmp, final) < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s -> %s: %s", tmp, final,
			  strerror(errno));
		goto out_rm;
	}
	rc = fsutil_fsync_dir(dir);
	if (rc < 0) {
		/* The rename may or may not be durable: a publish that reports
		 * failure must not leave gen-N to be served at the next
		 * start. Take it back; the second fsync is best effort (a
		 * crash before it can still bring gen-N back whole, which
		 * is no worse than a crash just after a success). */
		errmsg_fail(err, err_cap, rc, "%s: fsync: %s", dir, strerror(-rc));
		if (rename(final, tmp) < 0) {
			size_t used = err != NULL ? strlen(err) : 0;
			if (err != NULL && used < err_cap)
				errmsg_fail(err + used, err_cap - used, rc, "; and %s "
				     "stays: cannot take it back: %s", final,
				     strerror(errno));
			return rc;
		}
		fsutil_rm_tree(tmp);
		(void)fsutil_fsync_dir(dir);
		return rc;
	}
	return 0;

out_rm:
	free(ob);
	/* Walking a tree allocates: short of memory, remove the files this
	 * function makes by name (index_write removes its own temp file). */
	if (fsutil_rm_tree(tmp) < 0) {
		static const char *const files[] = { "emails", ORIGINS_FILE,
						     GENERATION_CHAIN_FILE,
						     "index" };
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			snprintf(path, sizeof(path), "%s/%s", tmp, files[i]);
			(void)unlink(path);
		}
		(void)rmdir(tmp);
	}
	return rc;
}

/* ---- copying an index: growth, merges ---- */

struct merge_ctx {
	struct index *dst;
	const struct index *src;
	generation_email_fn new_email;
	void *new_email_arg;
	struct index_key keys[MERGE_WINDOW];
	struct consent_value vals[MERGE_WINDOW];
	unsigned n;
	uint64_t missing; /* addresses without a key in src */
	char first_missing[RECIPIENT_EMAIL_MAX + 32];
	/* A fill of a table file (generation_grow_file): src's entries
	 * seen, of src_records, say how far the nearly sequential front of
	 * dst has come, and the buckets well behind it are released. */
	bool release;
	uint64_t seen, src_records;
};

/* Buckets kept resident behind the fill's front: displaced entries land
 * anywhere, but the front itself wanders only by the spread of entries
 * around their homes, a few buckets. */
#define RELEASE_MARGIN_BUCKETS (1u << 16) /* 4 MiB */
#define RELEASE_EVERY 65536u /* entries seen between releases */

/* Applies the window: its home buckets were prefetched as it filled. */
static int merge_flush(struct merge_ctx *m)
{
	for (unsigned i = 0; i < m->n; i++) {
		int rc = index_apply_writer(m->dst, &m->keys[i], &m->vals[i]);
		if (rc < 0)
			return rc;
	}
	m->n = 0;
	return 0;
}

static int merge_phone(const struct index_entry *e, void *arg)
{
	struct merge_ctx *m = arg;
	if (m->release && ++m->seen % RELEASE_EVERY == 0 && m->src_records) {
		struct index_info di;
		index_info(m->dst, &di);
		/* src is walked in bucket order and dst shares its secret:
		 * the front is the same fraction of dst's buckets. */
		uint64_t front = (uint64_t)((unsigned __int128)m->seen *
					    di.n_buckets / m->src_records);
		if (front > RELEASE_MARGIN_BUCKETS)
			index_file_release(m->dst,
					   front - RELEASE_MARGIN_BUCKETS);
	}
	if (e->is_email)
		return 0;
	struct recipient r = { .kind = RECIPIENT_PHONE, .phone = e->phone };
	index_key_make(m->dst, &r, e->brand_code, e->rtype, e->channel,
		       &m->keys[m->n]);
	index_prefetch(m->dst, &m->keys[m->n]);
	m->vals[m->n++] = e->value;
	return m->n == MERGE_WINDOW ? merge_flush(m) : 0;
}

static int merge_email(const struct generation_email *e, void *arg)
{
	struct merge_ctx *m = arg;
	struct index_key key;
	struct consent_value v;
	index_key_make(m->src, &e->recipient, e->brand_code, e->rtype,
		       e->channel, &key);
	if (!index_lookup(m->src, &key, &v)) {
		if (m->missing++ == 0)
			snprintf(m->first_missing, sizeof(m->first_missing),
				 "%" PRIu32 " %s", e->brand_code,
				 e->recipient.email);
		return 0;
	}
	index_key_make(m->dst, &e->recipient, e->brand_code, e->rtype,
		       e->channel, &key);
	int rc = index_apply_writer(m->dst, &key, &v);
	if (rc == INDEX_INSERTED && m->new_email != NULL)
		rc = m->new_email(e, m->new_email_arg);
	return rc < 0 ? rc : 0;
}

static int merge(struct index *dst, const struct generation *src,
		 generation_email_fn new_email, void *arg, bool release,
		 char *err, size_t err_cap)
{
	struct merge_ctx *m = calloc(1, sizeof(*m));
	if (m == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	if (release) {
		struct index_info si;
		index_info(src->ix, &si);
		m->release = true;
		m->src_records = si.n_records;
	}
	m->dst = dst;
	m->src = src->ix;
	m->new_email = new_email;
	m->new_email_arg = arg;
	/* Phones come back whole from the table; e-mails are fingerprints
	 * in src's secret, so their addresses are keyed again for dst. */
	int rc = index_foreach(src->ix, merge_phone, m);
	if (rc == 0)
		rc = merge_flush(m);
	if (rc == 0)
		rc = emails_each(src, merge_email, m, err, err_cap);
	if (rc == 0 && m->missing)
		rc = errmsg_fail(err, err_cap, -EPROTO, "%" PRIu64 " e-mail addresses "
			  "have no record in the index copied (first: %s)",
			  m->missing, m->first_missing);
	else if (rc == -ENOSPC)
		errmsg_fail(err, err_cap, rc, "the new table is full (%s)",
		     strerror(ENOSPC));
	else if (rc < 0 && err != NULL && err_cap > 0 && err[0] == '\0')
		errmsg_fail(err, err_cap, rc, "copying the index: %s", strerror(-rc));
	free(m);
	return rc;
}

int generation_merge(struct index *dst, const struct generation *src,
		     generation_email_fn new_email, void *arg, char *err,
		     size_t err_cap)
{
	return merge(dst, src, new_email, arg, false, err, err_cap);
}

/* Growth's capacity: 0 is 1.5 times the present one, and never fewer
 * than the records held plus one. */
static uint64_t grow_capacity(const struct index_info *info, uint64_t capacity)
{
	if (capacity == 0) {
		uint64_t more = info->capacity / 2;
		capacity = info->capacity + (more > GENERATION_GROW_MIN
						     ? more : GENERATION_GROW_MIN);
	}
	if (capacity < info->n_records + 1)
		capacity = info->n_records + 1;
	return capacity;
}

/* A new working directory DIR/.tmp-gen-work-K.PID and the path of the
 * table file in it. */
static int work_path(const char *dir, char *path, size_t cap, char *err,
		     size_t err_cap)
{
	static _Atomic unsigned n_work; /* names of this process's files */
	char wdir[PATH_MAX];
	int len = snprintf(wdir, sizeof(wdir), "%s/" TMP_PREFIX "work-%u.%ld",
			   dir, atomic_fetch_add(&n_work, 1), (long)getpid());
	if (len < 0 || (size_t)len >= sizeof(wdir) ||
	    (size_t)len + sizeof("/index") > cap)
		return errmsg_fail(err, err_cap, -ENAMETOOLONG,
				   "%s: path too long", dir);
	fsutil_rm_tree(wdir); /* a leftover of a crashed process, our pid */
	if (mkdir(wdir, 0755) < 0)
		return errmsg_fail(err, err_cap, -errno, "%s: %s", wdir,
				   strerror(errno));
	snprintf(path, cap, "%s/index", wdir);
	return 0;
}

int generation_work_create(const char *dir, uint64_t capacity,
			   const struct index *secret_of, struct index **out,
			   char *err, size_t err_cap)
{
	char path[PATH_MAX + 8];
	int rc = work_path(dir, path, sizeof(path), err, err_cap);
	if (rc < 0)
		return rc;
	rc = index_create_file(capacity, secret_of, path, out);
	if (rc < 0) {
		work_file_remove(path);
		return errmsg_fail(err, err_cap, rc, "%s: a table for %" PRIu64
				   " records: %s", path, capacity,
				   strerror(-rc));
	}
	return 0;
}

int generation_work_copy(struct generation *g, const char *dir, char *err,
			 size_t err_cap)
{
	char path[PATH_MAX + 8];
	struct index *n;
	int rc = work_path(dir, path, sizeof(path), err, err_cap);
	if (rc < 0)
		return rc;
	rc = index_copy_file(g->ix, path, &n);
	if (rc < 0) {
		work_file_remove(path);
		return errmsg_fail(err, err_cap, rc, "%s: copying the table: %s",
				   path, strerror(-rc));
	}
	generation_work_remove(g->ix);
	index_destroy(g->ix);
	g->ix = n;
	return 0;
}

int generation_grow_file(struct generation *g, const char *dir,
			 uint64_t capacity, bool fresh_secret,
			 struct index **old, char *err, size_t err_cap)
{
	struct index_info info;
	struct index *n = NULL;

	index_info(g->ix, &info);
	capacity = grow_capacity(&info, capacity);
	int rc = generation_work_create(dir, capacity,
					fresh_secret ? NULL : g->ix, &n, err,
					err_cap);
	if (rc < 0)
		return rc;
	/* capacity > records: the merge cannot fill it. */
	rc = merge(n, g, NULL, NULL, true, err, err_cap);
	if (rc < 0) {
		generation_work_remove(n);
		index_destroy(n);
		return rc;
	}
	struct index_info ni;
	index_info(n, &ni);
	index_file_release(n, ni.n_buckets); /* all of it on its way out */
	index_set_meta_writer(n, info.generation, info.watermark,
			      info.created_at, info.data_as_of);
	/* The table it replaces, if a working file too, is done with: its
	 * name goes now, its pages when the last reader lets go. */
	generation_work_remove(g->ix);
	*old = g->ix;
	g->ix = n;
	return 0;
}

int generation_grow(struct generation *g, uint64_t capacity,
		    struct index **old, char *err, size_t err_cap)
{
	struct index_info info;
	struct index *n = NULL;
	int rc;

	/* A working file grows into another beside it (the same data
	 * directory): it was one to keep it out of anonymous memory. */
	const char *wf = index_file_path(g->ix);
	if (wf != NULL) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s", wf);
		for (int up = 0; up < 2; up++) {
			char *slash = strrchr(dir, '/');
			if (slash == NULL)
				return errmsg_fail(err, err_cap, -EINVAL, "%s: "
						   "not a working file", wf);
			*slash = '\0';
		}
		return generation_grow_file(g, dir, capacity, false, old, err,
					    err_cap);
	}
	index_info(g->ix, &info);
	capacity = grow_capacity(&info, capacity);
	for (;;) {
		rc = index_create(capacity, NULL, &n);
		if (rc < 0)
			return errmsg_fail(err, err_cap, rc, "a table for %" PRIu64
				    " records: %s", capacity, strerror(-rc));
		rc = generation_merge(n, g, NULL, NULL, err, err_cap);
		if (rc != -ENOSPC)
			break;
		index_destroy(n); /* cannot happen: capacity >= records */
		capacity += capacity / 2;
	}
	if (rc < 0) {
		index_destroy(n);
		return rc;
	}
	index_set_meta_writer(n, info.generation, info.watermark,
			      info.created_at, info.data_as_of);
	*old = g->ix;
	g->ix = n;
	return 0;
}

/* generation_absorb's new-address hook: lists the address in dst. */
static int absorb_email(const struct generation_email *e, void *arg)
{
	return generation_email_add(arg, e->brand_code, e->rtype,
				    e->recipient.email, e->recipient.email_len);
}

int generation_absorb(struct generation *dst, const struct generation *src,
		      char *err, size_t err_cap)
{
	for (;;) {
		int rc = generation_merge(dst->ix, src, absorb_email, dst, err,
					  err_cap);
		if (rc != -ENOSPC)
			return rc;
		struct index_info a, b;
		struct index *old = NULL;
		index_info(dst->ix, &a);
		index_info(src->ix, &b);
		rc = generation_grow(dst, a.n_records + b.n_records +
					     GENERATION_GROW_MIN,
				     &old, err, err_cap);
		if (rc < 0)
			return rc;
		index_destroy(old); /* never served */
	}
}

void generation_prefetch(const struct generation *g,
			 const Consent__V1__Consent *c)
{
	const char *text = c->recipient ? c->recipient : "";
	const char *why = NULL;
	struct recipient r;
	struct index_key key;

	if (g->ix == NULL || recipient_normalize(text, strlen(text), &r, &why) < 0)
		return;
	index_key_make(g->ix, &r, c->brand_code, (int)c->recipient_type,
		       (int)c->channel, &key);
	index_prefetch(g->ix, &key);
}

int generation_apply(struct generation *g, const Consent__V1__Consent *c)
{
	const char *text = c->recipient ? c->recipient : "";
	const char *why = NULL;
	struct recipient r;
	struct index_key key;

	if (recipient_normalize(text, strlen(text), &r, &why) < 0)
		return -EINVAL;
	struct consent_value v = {
		.status = (uint8_t)c->status,
		.source = (uint8_t)enums_source_stored(c->source),
		.consent_date = c->consent_date,
	};
	index_key_make(g->ix, &r, c->brand_code, (int)c->recipient_type,
		       (int)c->channel, &key);
	int rc = index_apply_writer(g->ix, &key, &v);
	if (rc == INDEX_INSERTED && r.kind == RECIPIENT_EMAIL &&
	    generation_email_add(g, c->brand_code, (int)c->recipient_type,
				 r.email, r.email_len) < 0)
		return -ENOMEM;
	return rc;
}

struct replay_ctx {
	struct generation *g;
	uint64_t n;
	int rc;
	char *err;
	size_t err_cap;
};

static int replay_one(const Consent__V1__Consent *c, void *arg)
{
	struct replay_ctx *x = arg;
	int rc;
	for (int tries = 0;; tries++) {
		rc = generation_apply(x->g, c);
		if (rc != -ENOSPC || tries == 3)
			break;
		struct index *old = NULL;
		/* A working file grows into another: generation_grow. */
		rc = generation_grow(x->g, 0, &old, x->err, x->err_cap);
		if (rc < 0)
			break;
		index_destroy(old); /* never served */
		struct index_info info;
		index_info(x->g->ix, &info);
		fprintf(stderr, "consentd: generation: replay: new table for %"
			PRIu64 " records (%" PRIu64 " held)\n", info.capacity,
			info.n_records);
	}
	if (rc == -EINVAL) {
		fprintf(stderr, "consentd: generation: change log: sequence %"
			PRIu64 " cannot be applied (skipped)\n", c->sequence);
		rc = INDEX_SKIPPED;
	}
	if (rc < 0) {
		x->rc = rc;
		return rc;
	}
	x->n++;
	return 0;
}

/* A commit record moves the kind and an origin's cursor (DESIGN §8). */
static int replay_commit(const struct changelog_commit *k, void *arg)
{
	struct replay_ctx *x = arg;
	int rc = 0;
	if (x->g->origins == NULL && (rc = origins_create(&x->g->origins)) < 0)
		return x->rc = rc;
	origins_set_kind(x->g->origins, k->kind);
	if (k->kind == ORIGINS_ORIGIN)
		rc = origins_set(x->g->origins, k->origin, k->origin_len,
				 k->cursor, k->cursor_len);
	if (rc < 0)
		x->rc = rc;
	return rc;
}

int generation_replay(struct generation *g, struct changelog *log,
		      uint64_t after, uint64_t *n, char *err, size_t err_cap)
{
	struct replay_ctx x = { .g = g, .err = err, .err_cap = err_cap };
	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	int rc = changelog_replay_all(log, after, replay_one, replay_commit, &x);
	*n = x.n;
	if (rc < 0 && x.rc < 0 && err != NULL && err[0] != '\0')
		return rc;
	if (rc < 0 && x.rc < 0)
		return errmsg_fail(err, err_cap, rc, "replaying the change log: %s",
			    strerror(-rc));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "replaying the change log: %s",
			    changelog_error(log));
	return 0;
}

int generation_catch_up(struct generation *s, struct changelog *log,
			uint64_t log_floor, const struct generation *served,
			uint64_t *replayed, bool *merged, char *err,
			size_t err_cap)
{
	struct index_info si;
	index_info(s->ix, &si);
	*merged = false;
	/* Everything after the snapshot that the log still has... */
	int rc = generation_replay(s, log, si.watermark, replayed, err,
				   err_cap);
	if (rc < 0 || served == NULL || si.watermark >= log_floor)
		return rc;
	/* ...and, as the log was dropped past the snapshot's watermark,
	 * what only the served index still holds. */
	char e[512] = "";
	rc = generation_absorb(s, served, e, sizeof(e));
	if (rc < 0)
		return errmsg_fail(err, err_cap, rc, "merging the served index: %s", e);
	*merged = true;
	return 0;
}

int generation_open_replay(const char *dir, enum index_load_mode mode,
			   struct changelog *log, struct generation *g,
			   uint64_t *number, uint64_t *replayed, bool *grown,
			   char *err, size_t err_cap)
{
	struct index_info info;
	uint64_t gen = 0;

	memset(g, 0, sizeof(*g));
	*replayed = 0;
	int rc = open_newest(dir, mode, &g->ix, &gen, &g->origins, err, err_cap);
	if (rc < 0)
		return rc;
	generation_written(g, dir, gen);
	/* A mapped generation is served from a working copy: changes to the
	 * file's MAP_PRIVATE mapping would copy each page they touch into
	 * anonymous memory, and the changes of a day touch most of them. */
	index_info(g->ix, &info);
	if (info.mapped) {
		char e[512] = "";
		rc = generation_work_copy(g, dir, e, sizeof(e));
		/* No room for the copy (a full disk, a file size limit): the
		 * private mapping still serves, at the cost the copy avoids,
		 * rather than nothing at all. */
		if (rc < 0)
			fprintf(stderr, "consentd: generation: %s; serving generation "
				"%" PRIu64 "'s file mapped privately (each page a "
				"change touches is copied into memory)\n", e, gen);
	}
	rc = generation_replay(g, log, info.watermark, replayed, err, err_cap);
	if (rc < 0) {
		generation_fini(g);
		return rc;
	}
	struct index_info now;
	index_info(g->ix, &now);
	*grown = now.capacity != info.capacity;
	*number = gen;
	return 0;
}
