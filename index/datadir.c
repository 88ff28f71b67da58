/*
 * datadir: the generations of a data directory (see index/datadir.h).
 *
 * A generation is named by its number, gen-%020llu, so that names sort
 * as numbers and nothing else in DIR (the change log, a builder's
 * .tmp-gen-* directory) looks like one. The number in the name must match
 * the generation in the index header: a directory renamed or copied into
 * the wrong place is broken, not silently served under another number.
 *
 * The `emails` file is the only place e-mail addresses survive (the
 * index keeps a fingerprint). Verification reads it back whole: every line
 * parses, is already normalised, appears once, and its key is in the
 * index; and the index holds exactly as many e-mail entries as the file
 * has lines, so neither side has anything the other lacks.
 */
#include "index/datadir.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/enums.h"

#define GEN_PREFIX "gen-"
#define GEN_DIGITS 20

static int fail(char *err, size_t err_cap, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t err_cap, int rc, const char *fmt, ...)
{
	if (err != NULL && err_cap > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, err_cap, fmt, ap);
		va_end(ap);
	}
	return rc;
}

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

int datadir_generation_path(const char *dir, uint64_t generation, char *buf,
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

int datadir_newest_generation(const char *dir, uint64_t *out)
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

/* Opens generation g's index and checks that it calls itself g. */
static int open_generation(const char *dir, uint64_t g,
			   enum index_load_mode mode, struct index **out,
			   char *err, size_t err_cap)
{
	char path[4096];
	int rc = gen_file_path(dir, g, "index", path, sizeof(path));
	if (rc < 0)
		return fail(err, err_cap, rc, "%s: path too long", dir);
	struct index *ix;
	rc = index_open(path, mode, &ix, err, err_cap);
	if (rc < 0)
		return rc;
	struct index_info info;
	index_info(ix, &info);
	if (info.generation != g) {
		index_destroy(ix);
		return fail(err, err_cap, -EPROTO,
			    "%s: header says generation %" PRIu64, path,
			    info.generation);
	}
	*out = ix;
	return 0;
}

int datadir_open_newest(const char *dir, enum index_load_mode mode,
			struct index **out, uint64_t *generation,
			char *err, size_t err_cap)
{
	uint64_t *gens = NULL;
	size_t n = 0;
	int rc = list_generations(dir, &gens, &n);
	if (rc < 0)
		return fail(err, err_cap, rc, "%s: %s", dir, strerror(-rc));
	size_t broken = 0;
	for (size_t i = 0; i < n; i++) {
		char e[512] = "";
		struct index *ix;
		rc = open_generation(dir, gens[i], mode, &ix, e, sizeof(e));
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
			return fail(err, err_cap, rc, "%s", e);
		}
		fprintf(stderr, "datadir: skipping generation %" PRIu64 ": %s\n",
			gens[i], e);
		broken++;
	}
	free(gens);
	return fail(err, err_cap, -ENOENT, "%s: no valid generation (%zu broken)",
		    dir, broken);
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
				    struct datadir_email *e)
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

int datadir_emails_foreach(const char *dir, uint64_t generation,
			   int (*fn)(const struct datadir_email *e, void *arg),
			   void *arg, char *err, size_t err_cap)
{
	char path[4096];
	int rc = gen_file_path(dir, generation, "emails", path, sizeof(path));
	if (rc < 0)
		return fail(err, err_cap, rc, "%s: path too long", dir);
	FILE *f = fopen(path, "re");
	if (f == NULL) {
		rc = -errno;
		return fail(err, err_cap, rc, "%s: %s", path, strerror(-rc));
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	uint64_t lineno = 0;
	struct datadir_email e;
	rc = 0;
	errno = 0;
	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (len == 0 || line[len - 1] != '\n') {
			rc = fail(err, err_cap, -EPROTO, "%s: line %" PRIu64
				  ": not ended by a newline (truncated)", path,
				  lineno);
			break;
		}
		line[--len] = '\0';
		const char *why = parse_email_line(line, (size_t)len, &e);
		if (why != NULL) {
			rc = fail(err, err_cap, -EPROTO, "%s: line %" PRIu64
				  ": %s", path, lineno, why);
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
			fail(err, err_cap, rc, "%s: line %" PRIu64 ": out of "
			     "memory", path, lineno + 1);
		else
			fail(err, err_cap, rc, "%s: read error: %s", path,
			     strerror(-rc));
	}
	free(line);
	fclose(f);
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

static int verify_line(const struct datadir_email *e, void *arg)
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
	int rc = open_generation(dir, g, INDEX_LOAD_MMAP, &ix, err, err_cap);
	if (rc < 0)
		return rc;
	uint64_t n_email = 0;
	index_foreach(ix, count_email, &n_email);
	struct verify_ctx v = { .ix = ix };
	rc = index_create(n_email, NULL, &v.seen);
	if (rc < 0) {
		index_destroy(ix);
		return fail(err, err_cap, rc, "generation %" PRIu64
			    ": no memory to check its e-mails", g);
	}
	rc = datadir_emails_foreach(dir, g, verify_line, &v, err, err_cap);
	if (rc == -ENOSPC)
		rc = fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": emails file has more lines than the index has "
			  "e-mail entries (%" PRIu64 ")", g, n_email);
	else if (rc == 0 && (v.missing || v.duplicates))
		rc = fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": emails file: %" PRIu64 " addresses not in the index, %"
			  PRIu64 " listed twice (first at line %" PRIu64 ")", g,
			  v.missing, v.duplicates, v.first_bad);
	else if (rc == 0 && v.lines != n_email)
		rc = fail(err, err_cap, -EPROTO, "generation %" PRIu64
			  ": index has %" PRIu64 " e-mail entries, emails file %"
			  PRIu64 " lines", g, n_email, v.lines);
	index_destroy(v.seen);
	index_destroy(ix);
	return rc;
}

int datadir_verify(const char *dir, char *err, size_t err_cap)
{
	uint64_t *gens = NULL;
	size_t n = 0;
	int rc = list_generations(dir, &gens, &n);
	if (rc < 0)
		return fail(err, err_cap, rc, "%s: %s", dir, strerror(-rc));
	if (n == 0) {
		free(gens);
		return fail(err, err_cap, -ENOENT, "%s: no generations", dir);
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
			return fail(err, err_cap, rc, "%s", e);
		}
		if (broken++ == 0) {
			first_rc = rc;
			snprintf(first, sizeof(first), "%s", e);
		}
	}
	free(gens);
	if (broken == 0)
		return 0;
	return fail(err, err_cap, first_rc, "%s (%zu of %zu generations broken)",
		    first, broken, n);
}
