/*
 * generation_test: index/generation.c against real temp directories:
 * names and numbering, publishing (files, no temp left, generation 0
 * refused, a missing directory), opening the newest valid generation with
 * fallback past damaged ones, pruning, leftovers, a generation in memory
 * (apply, grow, merge keep every key, e-mails included), which
 * generations are kept and the log dropped, start-up's open + replay of a
 * real change log (growing on the way), a snapshot's catch-up, and the
 * origins file: cursors carried across generations and a dropped log.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/fsutil.h"
#include "core/recipient.h"
#include "index/changelog.h"
#include "index/generation.h"
#include "index/origins.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "tests/check.h"

static char tmpdir[] = "/tmp/generation_test.XXXXXX";
static int n_dirs;

#define DATE0 1700000000LL

static void new_dir(char *dir, size_t cap)
{
	snprintf(dir, cap, "%s/d%d", tmpdir, ++n_dirs);
	CHECK(mkdir(dir, 0755) == 0);
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* Entries of dir whose name starts with prefix. */
static unsigned count_names(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	unsigned n = 0;
	struct dirent *de;
	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

/* Key k: a phone (k even) or an e-mail (k odd), brand 100 + k % 3. */
struct chg {
	Consent__V1__Consent c;
	char text[64];
};

static void chg_make(struct chg *x, uint64_t k, int status, int64_t date,
		     uint64_t seq)
{
	consent__v1__consent__init(&x->c);
	if (k % 2 == 0) {
		snprintf(x->text, sizeof(x->text), "+90533%07" PRIu64, k);
		x->c.channel = CONSENT__V1__CHANNEL__MESAJ;
	} else {
		snprintf(x->text, sizeof(x->text), "Gen%" PRIu64 "@Example.org", k);
		x->c.channel = CONSENT__V1__CHANNEL__EPOSTA;
	}
	x->c.recipient = x->text;
	x->c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__TACIR;
	x->c.brand_code = 100 + (uint32_t)(k % 3);
	x->c.status = (Consent__V1__Status)status;
	x->c.source = CONSENT__V1__SOURCE__HS_WEB;
	x->c.consent_date = date;
	x->c.sequence = seq;
}

/* What ix holds for key k: its status (0: none), and its date. */
static int lookup(const struct index *ix, uint64_t k, int64_t *date)
{
	struct chg x;
	struct recipient r;
	const char *why;
	struct index_key key;
	struct consent_value v;
	chg_make(&x, k, STATUS_ONAY, DATE0, 0);
	CHECK(recipient_normalize(x.text, strlen(x.text), &r, &why) == 0);
	index_key_make(ix, &r, x.c.brand_code, RTYPE_TACIR, (int)x.c.channel,
		       &key);
	if (!index_lookup(ix, &key, &v))
		return 0;
	if (date != NULL)
		*date = v.consent_date;
	return v.status;
}

/* A generation in memory holding keys [0, n) as ONAY at DATE0 + k. */
static void make_gen(struct generation *g, uint64_t capacity, uint64_t n)
{
	memset(g, 0, sizeof(*g));
	CHECK(index_create(capacity, NULL, &g->ix) == 0);
	for (uint64_t k = 0; k < n; k++) {
		struct chg x;
		chg_make(&x, k, STATUS_ONAY, DATE0 + (int64_t)k, 0);
		CHECK(generation_apply(g, &x.c) == INDEX_INSERTED);
	}
}

/* Publishes g as generation gen (watermark wm) of dir. */
static void publish(const char *dir, struct generation *g, uint64_t gen,
		    uint64_t wm)
{
	char err[512] = "";
	index_set_meta_writer(g->ix, gen, wm, DATE0, DATE0);
	int rc = generation_publish(dir, g, err, sizeof(err));
	CHECKF(rc == 0, "generation_publish: %s", err);
}

static void test_names(void)
{
	char dir[256], buf[512], p[600];
	uint64_t newest = 99;
	new_dir(dir, sizeof(dir));
	CHECK(generation_path(dir, 5, buf, sizeof(buf)) == 0);
	snprintf(p, sizeof(p), "%s/gen-00000000000000000005", dir);
	CHECK_STREQ(buf, p);
	CHECK(generation_path(dir, 5, buf, 10) == -ENAMETOOLONG);
	CHECK(generation_newest(dir, &newest) == 0 && newest == 0);
	CHECK(generation_newest("/nonexistent/x", &newest) == -ENOENT);

	/* Only names generation_path gives count, whatever they hold. */
	const char *names[] = {
		"gen-00000000000000000003", "gen-00000000000000000010",
		"gen-0000000000000000011",  "gen-000000000000000000x9",
		"gen-00000000000000000000", ".tmp-gen-00000000000000000012",
		"xgen-00000000000000000013",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		CHECK(mkdir(p, 0755) == 0);
	}
	CHECK(generation_newest(dir, &newest) == 0 && newest == 10);
	/* None of them validates. */
	struct index *ix = NULL;
	char err[512] = "";
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, NULL, err,
				     sizeof(err)) == -ENOENT);
	CHECK(strstr(err, "2 broken") != NULL);
}

/* Counts addresses (their channel and type checked). */
static int count_one(const struct generation_email *e, void *arg)
{
	CHECK(e->channel == CHANNEL_EPOSTA && e->rtype == RTYPE_TACIR);
	((uint64_t *)arg)[0]++;
	return 0;
}

/* Checks each address against the one email_spill_addr made for it. */
struct spill_walk {
	uint64_t n;
};
static void email_spill_addr(uint64_t i, char *buf, size_t *len)
{
	/* 200+ bytes each, so 400k of them pass the heap's 64 MiB. */
	int n = snprintf(buf, 256, "%0200" PRIu64 "@spill.example", i);
	*len = (size_t)n;
}
static int spill_one(const struct generation_email *e, void *arg)
{
	struct spill_walk *w = arg;
	char want[256];
	size_t len;
	email_spill_addr(w->n, want, &len);
	CHECK(e->brand_code == (uint32_t)(w->n % 1000) + 1);
	CHECK(e->recipient.email_len == len &&
	      memcmp(e->recipient.email, want, len) == 0);
	w->n++;
	return 0;
}

/* A list past its heap bound moves into a temp file's mapping (the
 * build of a large snapshot) and reads back whole, in order. */
static void test_email_spill(void)
{
	struct generation g = { 0 };
	enum { N = 400000 };
	char addr[256];
	size_t len;
	for (uint64_t i = 0; i < N; i++) {
		email_spill_addr(i, addr, &len);
		CHECK(generation_email_add(&g, (uint32_t)(i % 1000) + 1,
					   RTYPE_BIREYSEL, addr, len) == 0);
	}
	CHECK(g.extra.spilled);
	CHECK(g.extra.n == N);
	struct spill_walk w = { 0 };
	CHECK(generation_email_list_foreach(&g.extra, spill_one, &w) == 0);
	CHECK(w.n == N);
	generation_fini(&g); /* unmaps and closes the file */
}

static void test_publish(void)
{
	char dir[256], p[600], err[512] = "";
	struct generation g;
	new_dir(dir, sizeof(dir));
	make_gen(&g, 100, 40);
	CHECK(g.extra.n == 20); /* the odd keys are e-mails */

	/* Generation 0 is not a number; nothing is written. */
	CHECK(generation_publish(dir, &g, err, sizeof(err)) == -EINVAL);
	CHECK(count_names(dir, "") == 2); /* . and .. */

	publish(dir, &g, 1, 7);
	snprintf(p, sizeof(p), "%s/gen-00000000000000000001/index", dir);
	CHECK(exists(p));
	snprintf(p, sizeof(p), "%s/gen-00000000000000000001/emails", dir);
	CHECK(exists(p));
	CHECK(count_names(dir, ".tmp-gen-") == 0);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* What is read back is what was written, e-mails included. */
	struct index *ix = NULL;
	uint64_t gen = 0;
	CHECK(generation_open_newest(dir, INDEX_LOAD_MMAP, &ix, &gen, err,
				     sizeof(err)) == 0 && gen == 1);
	struct index_info info;
	index_info(ix, &info);
	CHECK(info.n_records == 40 && info.watermark == 7 &&
	      info.generation == 1);
	for (uint64_t k = 0; k < 40; k++) {
		int64_t d = 0;
		CHECK(lookup(ix, k, &d) == STATUS_ONAY && d == DATE0 + (int64_t)k);
	}
	index_destroy(ix);
	uint64_t cnt = 0;
	CHECK(generation_emails_foreach(dir, 1, count_one, &cnt, err,
					sizeof(err)) == 0 && cnt == 20);

	/* Its addresses are the file's once written: the list is dropped,
	 * and a copy (growth) still finds every e-mail. */
	generation_written(&g, dir, 1);
	CHECK(g.extra.n == 0 && g.extra.len == 0);
	struct index *old = NULL;
	CHECK(generation_grow(&g, 0, &old, err, sizeof(err)) == 0);
	index_destroy(old);
	for (uint64_t k = 0; k < 40; k++)
		CHECK(lookup(g.ix, k, NULL) == STATUS_ONAY);

	/* A directory that is not there: an error, nothing left behind. */
	char missing[300];
	snprintf(missing, sizeof(missing), "%s/none", dir);
	index_set_meta_writer(g.ix, 2, 7, DATE0, DATE0);
	CHECK(generation_publish(missing, &g, err, sizeof(err)) == -ENOENT);
	CHECK(!exists(missing));
	generation_fini(&g);
	CHECK(g.ix == NULL && g.extra.p == NULL);
}


/* Flips one byte of generation gen's index in the bucket array. */
static void damage(const char *dir, uint64_t gen)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/gen-%020" PRIu64 "/index", dir, gen);
	int fd = open(p, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	struct stat st;
	CHECK(fstat(fd, &st) == 0);
	uint8_t b;
	off_t at = st.st_size - 100;
	CHECK(pread(fd, &b, 1, at) == 1);
	b ^= 0x40;
	CHECK(pwrite(fd, &b, 1, at) == 1);
	close(fd);
}

static void test_open_newest_fallback(void)
{
	char dir[256], err[512] = "";
	struct generation g;
	struct index *ix = NULL;
	uint64_t gen = 0;
	new_dir(dir, sizeof(dir));
	make_gen(&g, 100, 10);
	publish(dir, &g, 1, 1);
	struct chg x;
	chg_make(&x, 4, STATUS_RET, DATE0 + 100, 0);
	CHECK(generation_apply(&g, &x.c) == INDEX_UPDATED);
	publish(dir, &g, 2, 2);
	generation_fini(&g);

	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, &gen, err,
				     sizeof(err)) == 0 && gen == 2);
	CHECK(lookup(ix, 4, NULL) == STATUS_RET);
	index_destroy(ix);

	/* The newest damaged: the one before serves. */
	damage(dir, 2);
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, &gen, err,
				     sizeof(err)) == 0 && gen == 1);
	CHECK(lookup(ix, 4, NULL) == STATUS_ONAY);
	index_destroy(ix);
	CHECK(generation_verify(dir, err, sizeof(err)) == -EPROTO);

	/* A generation copied under another number is broken too. */
	char from[600], to[600];
	snprintf(from, sizeof(from), "%s/gen-%020d", dir, 1);
	snprintf(to, sizeof(to), "%s/gen-%020d", dir, 3);
	CHECK(rename(from, to) == 0);
	CHECK(generation_open_newest(dir, INDEX_LOAD_ANON, &ix, &gen, err,
				     sizeof(err)) == -ENOENT);
	CHECK(strstr(err, "2 broken") != NULL);
}

static void test_prune_and_leftovers(void)
{
	char dir[256], p[600];
	struct generation g;
	new_dir(dir, sizeof(dir));
	make_gen(&g, 100, 6);
	for (uint64_t n = 1; n <= 4; n++)
		publish(dir, &g, n, n);
	generation_fini(&g);
	CHECK(count_names(dir, "gen-") == 4);

	generation_prune(dir, 4, 2);
	CHECK(count_names(dir, "gen-") == 2);
	snprintf(p, sizeof(p), "%s/gen-%020d", dir, 2);
	CHECK(exists(p));
	snprintf(p, sizeof(p), "%s/gen-%020d", dir, 4);
	CHECK(exists(p));
	CHECK(count_names(dir, ".tmp-gen-") == 0);
	generation_prune(dir, 4, 0);
	CHECK(count_names(dir, "gen-") == 1);

	/* What a crash leaves: temp directories with files, an old
	 * server's staging; the generation and other files stay. */
	const char *left[] = { ".tmp-gen-5.4242", ".tmp-gen-3.del",
			       ".snapshot-777" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, left[i]);
		CHECK(mkdir(p, 0755) == 0);
		snprintf(p, sizeof(p), "%s/%s/index", dir, left[i]);
		int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		CHECK(fd >= 0 && fsutil_write_all(fd, "junk", 4) == 0);
		close(fd);
	}
	snprintf(p, sizeof(p), "%s/keep.txt", dir);
	int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	close(fd);
	CHECK(generation_remove_leftovers(dir) == 3);
	CHECK(count_names(dir, ".tmp-gen-") == 0);
	CHECK(count_names(dir, ".snapshot-") == 0);
	CHECK(exists(p));
	CHECK(count_names(dir, "gen-") == 1);
	CHECK(generation_remove_leftovers(dir) == 0);
}

static void test_keep(void)
{
	char dir[256], err[512] = "";
	struct generation g;
	struct changelog *log = NULL;
	struct generation_keep k = { 0 };
	uint64_t next = 0;
	new_dir(dir, sizeof(dir));
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	make_gen(&g, 100, 6);
	CHECK(generation_next(dir, &k, &next) == 0 && next == 1);

	/* Generation 1 at watermark 3, changes 1..6 in the log. */
	static struct chg c[6];
	Consent__V1__Consent *ptrs[6];
	for (int i = 0; i < 6; i++) {
		chg_make(&c[i], (uint64_t)i, STATUS_RET, DATE0 + 50, (uint64_t)i + 1);
		ptrs[i] = &c[i].c;
	}
	CHECK(changelog_append(log, ptrs, 3) == 0);
	publish(dir, &g, 1, 3);
	generation_kept(dir, log, &k, 1, 3);
	CHECK(k.gen == 1 && k.watermark == 3 && k.prev_gen == 0);
	CHECK(k.log_floor == 0);
	CHECK(changelog_append(log, ptrs + 3, 3) == 0);

	/* Generation 2: 1 becomes the fallback, the log goes through its
	 * watermark only. */
	CHECK(generation_next(dir, &k, &next) == 0 && next == 2);
	publish(dir, &g, 2, 6);
	generation_kept(dir, log, &k, 2, 6);
	CHECK(k.gen == 2 && k.prev_gen == 1 && k.prev_watermark == 3);
	CHECK(k.log_floor == 3);
	CHECK(count_names(dir, "gen-") == 2);

	/* Generation 3: 2 is the fallback, 1 goes. A number below the
	 * served one is never given, even when the directory lacks it. */
	publish(dir, &g, 3, 6);
	generation_kept(dir, log, &k, 3, 6);
	CHECK(k.prev_gen == 2 && k.log_floor == 6);
	CHECK(count_names(dir, "gen-") == 2);
	char p[600];
	snprintf(p, sizeof(p), "%s/gen-%020d", dir, 1);
	CHECK(!exists(p));
	k.gen = 9;
	CHECK(generation_next(dir, &k, &next) == 0 && next == 10);
	CHECK(generation_next("/nonexistent/x", &k, &next) == -ENOENT);
	generation_fini(&g);
	changelog_close(log);
}

static void test_grow_and_merge(void)
{
	char err[512] = "";
	struct generation a, b;
	make_gen(&a, 64, 50);
	/* Full tables say so; a growth makes room and keeps every key. */
	int rc = 0;
	uint64_t k = 50;
	for (; k < 10000; k++) {
		struct chg x;
		chg_make(&x, k, STATUS_ONAY, DATE0 + (int64_t)k, 0);
		rc = generation_apply(&a, &x.c);
		if (rc == -ENOSPC)
			break;
		CHECK(rc == INDEX_INSERTED);
	}
	CHECK(rc == -ENOSPC);
	struct index_info before, after;
	index_info(a.ix, &before);
	struct index *old = NULL;
	CHECK(generation_grow(&a, 0, &old, err, sizeof(err)) == 0);
	CHECK(old != NULL && old != a.ix);
	index_destroy(old);
	index_info(a.ix, &after);
	CHECK(after.capacity >= before.capacity + GENERATION_GROW_MIN &&
	      after.n_records == before.n_records);
	for (uint64_t i = 0; i < k; i++)
		CHECK(lookup(a.ix, i, NULL) == STATUS_ONAY);

	/* A merge under the order rule: newer wins, older is skipped, and
	 * the addresses new to dst are reported. */
	make_gen(&b, 200, 0);
	struct chg x;
	chg_make(&x, 1, STATUS_RET, DATE0 + 1000, 0); /* newer than a's */
	CHECK(generation_apply(&b, &x.c) == INDEX_INSERTED);
	chg_make(&x, 2, STATUS_RET, DATE0 - 1000, 0); /* older than a's */
	CHECK(generation_apply(&b, &x.c) == INDEX_INSERTED);
	uint64_t fresh = 0;
	struct generation small;
	make_gen(&small, 20, 10);
	CHECK(generation_merge(b.ix, &small, count_one, &fresh, err,
			       sizeof(err)) == 0);
	CHECK(fresh == 4); /* e-mails 3, 5, 7, 9: key 1 was there */
	CHECK(lookup(b.ix, 1, NULL) == STATUS_RET);
	CHECK(lookup(b.ix, 2, NULL) == STATUS_ONAY);
	for (uint64_t i = 0; i < 10; i++)
		CHECK(lookup(b.ix, i, NULL) != 0);
	/* A table too small is -ENOSPC. */
	struct index *tiny;
	CHECK(index_create(1, NULL, &tiny) == 0);
	CHECK(generation_merge(tiny, &a, NULL, NULL, err, sizeof(err)) ==
	      -ENOSPC);
	index_destroy(tiny);
	/* Absorbing into a table far too small grows it until all fits,
	 * and lists every address new to it. */
	struct generation c;
	make_gen(&c, 4, 0);
	CHECK(generation_absorb(&c, &a, err, sizeof(err)) == 0);
	for (uint64_t i = 0; i < k; i++)
		CHECK(lookup(c.ix, i, NULL) == STATUS_ONAY);
	CHECK(c.extra.n == k / 2);
	generation_fini(&c);
	/* An e-mail invalid for the index is refused. */
	chg_make(&x, 3, STATUS_ONAY, CONSENT_DATE_MIN - 1, 0);
	CHECK(generation_apply(&b, &x.c) == -EINVAL);
	generation_fini(&a);
	generation_fini(&b);
	generation_fini(&small);
}

static void test_open_replay(void)
{
	char dir[256], err[512] = "";
	struct generation g;
	new_dir(dir, sizeof(dir));
	/* Generation 1 at watermark 5: keys [0, 20) in a small table. */
	make_gen(&g, 24, 20);
	publish(dir, &g, 1, 5);
	generation_fini(&g);
	uint64_t number = 0, replayed = 0;
	bool grown = true;

	struct changelog *log = NULL;
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	/* Nothing in the log: the generation as it is. */
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 1 && replayed == 0 && !grown);
	CHECK(strcmp(g.emails_dir, dir) == 0 && g.emails_gen == 1);
	generation_fini(&g);

	/* Sequences 1..5 are at or below the generation's watermark (keys
	 * 301..305, never replayed), 6.. are new: RET for keys [0, 10), then
	 * new keys [20, 220), more than the table holds. */
	static struct chg c[300];
	Consent__V1__Consent *ptrs[300];
	size_t n = 0;
	for (uint64_t s = 1; s <= 5; s++)
		chg_make(&c[n++], 300 + s, STATUS_RET, DATE0 + 900, s);
	for (uint64_t k = 0; k < 10; k++)
		chg_make(&c[n++], k, STATUS_RET, DATE0 + 500, 6 + k);
	for (uint64_t k = 20; k < 220; k++)
		chg_make(&c[n++], k, STATUS_ONAY, DATE0 + 700, 16 + k - 20);
	for (size_t i = 0; i < n; i++)
		ptrs[i] = &c[i].c;
	CHECK(changelog_append(log, ptrs, n) == 0);

	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECKF(number == 1 && replayed == n - 5 && grown,
	       "%" PRIu64 " %" PRIu64 " %d", number, replayed, grown);
	for (uint64_t k = 0; k < 220; k++) {
		int want = k < 10 ? STATUS_RET : STATUS_ONAY;
		CHECKF(lookup(g.ix, k, NULL) == want, "key %" PRIu64, k);
	}
	for (uint64_t k = 301; k <= 305; k++)
		CHECK(lookup(g.ix, k, NULL) == 0);
	/* The new e-mails are listed: written, the result verifies. */
	CHECK(g.extra.n == 100);
	generation_fini(&g);

	/* Mapped: the generation served from a working copy, grown into
	 * another working file, the same answers; gone when done with. */
	CHECK(generation_open_replay(dir, INDEX_LOAD_MMAP, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 1 && replayed == n - 5 && grown);
	struct index_info mi;
	index_info(g.ix, &mi);
	CHECK(mi.mapped && index_file_path(g.ix) != NULL);
	char work[PATH_MAX];
	snprintf(work, sizeof(work), "%s", index_file_path(g.ix));
	CHECK(strncmp(work, dir, strlen(dir)) == 0 &&
	      strstr(work, "/.tmp-gen-work-") != NULL);
	for (uint64_t k = 0; k < 220; k++) {
		int want = k < 10 ? STATUS_RET : STATUS_ONAY;
		CHECKF(lookup(g.ix, k, NULL) == want, "key %" PRIu64, k);
	}
	CHECK(g.extra.n == 100);
	generation_fini(&g);
	CHECK(access(work, F_OK) != 0);
	CHECK(generation_remove_leftovers(dir) == 0);

	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	index_set_meta_writer(g.ix, 2, 16 + 199, DATE0, DATE0);
	CHECK(generation_publish(dir, &g, err, sizeof(err)) == 0);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);
	generation_fini(&g);

	/* A damaged newest falls back to generation 1 plus the whole log. */
	damage(dir, 2);
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 1 && replayed == n - 5);
	CHECK(lookup(g.ix, 219, NULL) == STATUS_ONAY);
	generation_fini(&g);
	changelog_close(log);

	/* No generation at all. */
	new_dir(dir, sizeof(dir));
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) ==
	      -ENOENT);
	CHECK(g.ix == NULL);
	changelog_close(log);
}

static void test_catch_up(void)
{
	char dir[256], err[512] = "";
	struct changelog *log = NULL;
	struct generation snap, served;
	uint64_t replayed = 0;
	bool merged = true;
	new_dir(dir, sizeof(dir));
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	/* The log holds 11..12: RET for keys 0 and 1. */
	static struct chg c[2];
	Consent__V1__Consent *ptrs[2];
	for (int i = 0; i < 2; i++) {
		chg_make(&c[i], (uint64_t)i, STATUS_RET, DATE0 + 500,
			 11 + (uint64_t)i);
		ptrs[i] = &c[i].c;
	}
	CHECK(changelog_append(log, ptrs, 2) == 0);
	/* Served: keys [0, 30); the snapshot: keys [0, 10) at watermark 10. */
	make_gen(&served, 100, 30);
	make_gen(&snap, 12, 10);
	index_set_meta_writer(snap.ix, 0, 10, DATE0, DATE0);

	/* The log reaches back to the snapshot: replay only. */
	CHECK(generation_catch_up(&snap, log, 10, &served, &replayed, &merged,
				  err, sizeof(err)) == 0);
	CHECK(replayed == 2 && !merged);
	CHECK(lookup(snap.ix, 1, NULL) == STATUS_RET);
	CHECK(lookup(snap.ix, 20, NULL) == 0);
	/* It does not (dropped through 11): the served index is merged in,
	 * growing the snapshot's table, its e-mails listed. */
	CHECK(generation_catch_up(&snap, log, 11, &served, &replayed, &merged,
				  err, sizeof(err)) == 0);
	CHECK(merged);
	for (uint64_t k = 0; k < 30; k++)
		CHECK(lookup(snap.ix, k, NULL) ==
		      (k < 2 ? STATUS_RET : STATUS_ONAY));
	CHECK(snap.extra.n == 15);
	/* Nothing served: nothing to merge. */
	CHECK(generation_catch_up(&snap, log, 11, NULL, &replayed, &merged,
				  err, sizeof(err)) == 0 && !merged);
	generation_fini(&snap);
	generation_fini(&served);
	changelog_close(log);
}


/* Appends one origin's batch of keys [k0, k0 + n) as RET, sequences from
 * *seq on, moving origin o to cursor. */
static void append_origin_batch(struct changelog *log, const char *o,
				const char *cursor, uint64_t k0, size_t n,
				uint64_t *seq)
{
	static struct chg c[16];
	Consent__V1__Consent *ptrs[16];
	for (size_t i = 0; i < n; i++) {
		chg_make(&c[i], k0 + i, STATUS_RET, DATE0 + 800, (*seq)++);
		ptrs[i] = &c[i].c;
	}
	struct changelog_batch b = {
		.changes = ptrs, .n = n,
		.commit = { .kind = ORIGINS_ORIGIN, .origin = o,
			    .origin_len = strlen(o), .cursor = cursor,
			    .cursor_len = strlen(cursor) },
	};
	CHECK(changelog_append_batches(log, &b, 1) == 0);
}

static const char *cursor_in(const struct generation *g, const char *o)
{
	static char buf[300];
	size_t len = 0;
	const char *c = g->origins ? origins_get(g->origins, o, strlen(o), &len)
				   : NULL;
	snprintf(buf, sizeof(buf), "%.*s", (int)len, c ? c : "");
	return buf;
}

/* Cursors (and the kind) ride in every generation's origins file, so
 * they outlive the log dropped behind it; the log's commit records past
 * the watermark move them on at open; a damaged origins file is a
 * damaged generation (fallback). */
static void test_origins_carried(void)
{
	char dir[256], err[512] = "", p[600];
	struct generation g;
	struct changelog *log = NULL;
	struct generation_keep k = { 0 };
	struct changelog_options opt = { .segment_bytes = 64 }; /* roll each */
	uint64_t seq = 1, number = 0, replayed = 0;
	bool grown;
	new_dir(dir, sizeof(dir));
	CHECK(changelog_open(dir, &opt, &log, err, sizeof(err)) == 0);
	make_gen(&g, 100, 10);
	CHECK(origins_create(&g.origins) == 0);
	origins_set_kind(g.origins, ORIGINS_ORIGIN);

	/* Generation 1 at 3 (z=z3), 2 and 3 at 5 (b=c5): 2 becomes the
	 * fallback, so the log goes through 5: z's commit record is gone
	 * with its segment, only the generations know z. */
	append_origin_batch(log, "z", "z3", 0, 3, &seq);
	CHECK(origins_set(g.origins, "z", 1, "z3", 2) == 0);
	publish(dir, &g, 1, 3);
	generation_kept(dir, log, &k, 1, 3);
	append_origin_batch(log, "b", "c5", 3, 2, &seq);
	CHECK(origins_set(g.origins, "b", 1, "c5", 2) == 0);
	publish(dir, &g, 2, 5);
	generation_kept(dir, log, &k, 2, 5);
	publish(dir, &g, 3, 5);
	generation_kept(dir, log, &k, 3, 5);
	struct changelog_stats st;
	changelog_stats(log, &st);
	CHECKF(st.first_sequence == 4, "the log still holds %" PRIu64 "..",
	       st.first_sequence);
	generation_fini(&g);
	/* Past the watermark: one more batch, in the log only. */
	append_origin_batch(log, "a", "c7", 5, 2, &seq);
	changelog_close(log);

	CHECK(changelog_open(dir, &opt, &log, err, sizeof(err)) == 0);
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 3 && replayed == 2);
	CHECK(g.origins && origins_kind(g.origins) == ORIGINS_ORIGIN);
	CHECK_STREQ(cursor_in(&g, "a"), "c7");
	CHECK_STREQ(cursor_in(&g, "b"), "c5");
	CHECK_STREQ(cursor_in(&g, "z"), "z3");
	CHECK(lookup(g.ix, 6, NULL) == STATUS_RET);
	generation_fini(&g);
	CHECKF(generation_verify(dir, err, sizeof(err)) == 0, "%s", err);

	/* A bit flipped in generation 3's origins file: it is broken,
	 * verify says so, and open falls back to 2 (same cursors: the log
	 * still reaches back to its watermark). */
	snprintf(p, sizeof(p), "%s/gen-%020d/" ORIGINS_FILE, dir, 3);
	size_t len = 0;
	int fd = open(p, O_RDWR | O_CLOEXEC);
	struct stat fst;
	CHECK(fd >= 0 && fstat(fd, &fst) == 0);
	len = (size_t)fst.st_size;
	uint8_t b;
	CHECK(pread(fd, &b, 1, 10) == 1);
	b ^= 1;
	CHECK(pwrite(fd, &b, 1, 10) == 1);
	close(fd);
	CHECK(len > 24);
	CHECK(generation_verify(dir, err, sizeof(err)) == -EPROTO);
	CHECKF(strstr(err, ORIGINS_FILE) != NULL, "%s", err);
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 2);
	CHECK_STREQ(cursor_in(&g, "a"), "c7");
	CHECK_STREQ(cursor_in(&g, "b"), "c5");
	CHECK_STREQ(cursor_in(&g, "z"), "z3");
	generation_fini(&g);

	/* A generation from before origins (no file) reads as an empty
	 * table; the log's commit records past it still count. */
	unlink(p);
	snprintf(p, sizeof(p), "%s/gen-%020d/" ORIGINS_FILE, dir, 2);
	CHECK(unlink(p) == 0);
	CHECK(generation_open_replay(dir, INDEX_LOAD_ANON, log, &g, &number,
				     &replayed, &grown, err, sizeof(err)) == 0);
	CHECK(number == 3);
	CHECK_STREQ(cursor_in(&g, "a"), "c7");
	CHECK_STREQ(cursor_in(&g, "z"), "");
	generation_fini(&g);
	changelog_close(log);
}

int main(void)
{
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_names);
	RUN(test_publish);
	RUN(test_email_spill);
	RUN(test_open_newest_fallback);
	RUN(test_prune_and_leftovers);
	RUN(test_keep);
	RUN(test_grow_and_merge);
	RUN(test_open_replay);
	RUN(test_catch_up);
	RUN(test_origins_carried);
	fsutil_rm_tree(tmpdir);
	return check_summary();
}
