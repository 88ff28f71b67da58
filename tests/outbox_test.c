/*
 * outbox_test: the outbox of local rejections (index/outbox.h) on real
 * files: entries queued by local RETs, pushed marks (idempotent, a second
 * id refused), reconciliation by a later İYS RET of the same key and not
 * by anything else, reopening, a torn tail cut at every byte of the last
 * append, damage refused, the rebuild from a real change log (only past
 * the file's through position, never twice), and compaction keeping what
 * is live and its pushed ids.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "index/changelog.h"
#include "index/outbox.h"
#include "proto/consent.pb-c.h"
#include "tests/check.h"

static char tmpdir[] = "/tmp/outbox_test.XXXXXX";
static int n_dirs;

#define DATE0 1790000000LL

static void new_dir(char *dir, size_t cap)
{
	snprintf(dir, cap, "%s/d%d", tmpdir, ++n_dirs);
	CHECK(mkdir(dir, 0755) == 0);
}

struct chg {
	Consent__V1__Consent c;
	char text[64];
};

/* Key k: phone +90532000000k (MESAJ, BIREYSEL, brand 600123), written in
 * a national form so the outbox's normalisation is exercised. */
static void chg_make(struct chg *x, unsigned k, int status, int64_t date,
		     uint64_t seq)
{
	consent__v1__consent__init(&x->c);
	snprintf(x->text, sizeof(x->text), "0532 %07u", k);
	x->c.recipient = x->text;
	x->c.channel = CONSENT__V1__CHANNEL__MESAJ;
	x->c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	x->c.brand_code = 600123;
	x->c.status = (Consent__V1__Status)status;
	x->c.source = CONSENT__V1__SOURCE__HS_MESAJ;
	x->c.consent_date = date;
	x->c.creation_date = date;
	x->c.sequence = seq;
}

static struct outbox *open_ob(const char *dir, uint64_t *cut)
{
	struct outbox *ob = NULL;
	char err[512] = "";
	int rc = outbox_open(dir, &ob, cut, err, sizeof(err));
	CHECKF(rc == 0, "outbox_open: %s", err);
	return ob;
}

static void commit(struct outbox *ob, uint64_t through)
{
	char err[512] = "";
	int rc = outbox_commit(ob, through, err, sizeof(err));
	CHECKF(rc == 0, "outbox_commit: %s", err);
}

static void observe(struct outbox *ob, const char *origin, unsigned k,
		    int status, int64_t date, uint64_t seq)
{
	struct chg x;
	chg_make(&x, k, status, date, seq);
	CHECK(outbox_observe(ob, origin, strlen(origin), &x.c) == 0);
}

static uint64_t depth(struct outbox *ob)
{
	uint64_t d = 0;
	int64_t oldest;
	outbox_stats(ob, &d, &oldest);
	return d;
}

static size_t list(struct outbox *ob, struct outbox_entry *e, size_t max)
{
	uint64_t d = 0;
	size_t n = outbox_list(ob, NULL, NULL, e, max, &d);
	CHECK(d >= n);
	return n;
}

static off_t file_size(const char *dir)
{
	char path[400];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, OUTBOX_FILE);
	return stat(path, &st) == 0 ? st.st_size : -1;
}

static void copy_file(const char *from_dir, const char *to_dir, off_t len)
{
	char a[400], b[400];
	snprintf(a, sizeof(a), "%s/%s", from_dir, OUTBOX_FILE);
	snprintf(b, sizeof(b), "%s/%s", to_dir, OUTBOX_FILE);
	int in = open(a, O_RDONLY), out = open(b, O_WRONLY | O_CREAT | O_TRUNC,
					       0644);
	CHECK(in >= 0 && out >= 0);
	char *buf = malloc((size_t)len + 1);
	CHECK(pread(in, buf, (size_t)len, 0) == len);
	CHECK(fsutil_write_all(out, buf, (size_t)len) == 0);
	free(buf);
	close(in);
	close(out);
}

/* Queued, pushed (idempotent; another id refused), reconciled only by a
 * later-or-equal İYS RET of the same key, all of it across reopening. */
static void test_states_and_reopen(void)
{
	char dir[300];
	char err[256];
	struct outbox_entry e[8];
	new_dir(dir, sizeof(dir));
	struct outbox *ob = open_ob(dir, NULL);
	CHECK(depth(ob) == 0 && outbox_through(ob) == 0);

	observe(ob, "local", 1, 2, DATE0 + 10, 1);
	observe(ob, "local", 2, 2, DATE0 + 20, 2);
	observe(ob, "local", 3, 2, DATE0 + 30, 4);
	/* Not entries: an ONAY of local, a RET of another origin. */
	observe(ob, "local", 4, 1, DATE0 + 40, 5);
	observe(ob, "gateway", 5, 2, DATE0 + 40, 6);
	commit(ob, 6);
	CHECK(outbox_through(ob) == 6);
	size_t n = list(ob, e, 8);
	CHECK(n == 3);
	CHECK(e[0].sequence == 1 && e[1].sequence == 2 && e[2].sequence == 4);
	CHECK_STREQ(e[0].recipient, "+905320000001");
	CHECK(e[0].state == OUTBOX_QUEUED && e[0].consent_date == DATE0 + 10);
	CHECK(e[0].brand_code == 600123 && e[0].source == 8 &&
	      e[0].channel == 2 && e[0].recipient_type == 1);
	int64_t oldest = 0;
	uint64_t d = 0;
	outbox_stats(ob, &d, &oldest);
	CHECK(d == 3 && oldest == DATE0 + 10);

	CHECK(outbox_mark_pushed(ob, 2, "tx-2", 4, err, sizeof(err)) == 0);
	CHECK(outbox_mark_pushed(ob, 2, "tx-2", 4, err, sizeof(err)) == 0);
	CHECK(outbox_mark_pushed(ob, 2, "tx-3", 4, err, sizeof(err)) == -EEXIST);
	CHECK(strstr(err, "tx-2") != NULL);
	CHECK(outbox_mark_pushed(ob, 3, "tx", 2, err, sizeof(err)) == -ENOENT);
	CHECK(outbox_mark_pushed(ob, 1, "", 0, err, sizeof(err)) == -EINVAL);
	CHECK(outbox_mark_pushed(ob, 1, "a\nb", 3, err, sizeof(err)) == -EINVAL);
	outbox_close(ob);

	ob = open_ob(dir, NULL);
	n = list(ob, e, 8);
	CHECK(n == 3 && e[1].state == OUTBOX_PUSHED);
	CHECK_STREQ(e[1].pushed_id, "tx-2");
	CHECK(e[0].state == OUTBOX_QUEUED && e[2].state == OUTBOX_QUEUED);
	CHECK(outbox_through(ob) == 6);
	struct outbox_entry one;
	CHECK(outbox_get(ob, 2, &one) && one.state == OUTBOX_PUSHED);
	CHECK(!outbox_get(ob, 3, &one));

	/* Reconciliation: İYS's RET of key 1 at the same date; of key 3
	 * earlier than the entry (no); an ONAY of key 2 (no); a RET of key
	 * 2 from a non-İYS origin (no); an "iys" without the colon (no). */
	observe(ob, "iys:600123:HS", 1, 2, DATE0 + 10, 7);
	observe(ob, "iys:600123:HS", 3, 2, DATE0 + 29, 8);
	observe(ob, "iys:600123:HS", 2, 1, DATE0 + 99, 9);
	observe(ob, "gateway", 2, 2, DATE0 + 99, 10);
	observe(ob, "iys", 2, 2, DATE0 + 99, 11);
	commit(ob, 11);
	n = list(ob, e, 8);
	CHECK(n == 2 && e[0].sequence == 2 && e[1].sequence == 4);
	CHECK(outbox_mark_pushed(ob, 1, "tx", 2, err, sizeof(err)) == -ENOENT);
	/* A later RET of key 2 from İYS: the pushed entry reconciles. */
	observe(ob, "iys:600123:IYS", 2, 2, DATE0 + 21, 12);
	commit(ob, 12);
	n = list(ob, e, 8);
	CHECK(n == 1 && e[0].sequence == 4);
	outbox_close(ob);

	ob = open_ob(dir, NULL);
	n = list(ob, e, 8);
	CHECK(n == 1 && e[0].sequence == 4 && outbox_through(ob) == 12);
	/* A group that touches nothing writes nothing. */
	off_t before = file_size(dir);
	observe(ob, "gateway", 9, 2, DATE0, 13);
	commit(ob, 13);
	CHECK(file_size(dir) == before);
	outbox_close(ob);
}

/* The file holding three units; the last append cut at every byte is a
 * torn tail (cut at open, its bytes counted), the rest stays; damage
 * inside is refused. */
static void test_torn_tail(void)
{
	char dir[300], work[300];
	char err[256];
	new_dir(dir, sizeof(dir));
	new_dir(work, sizeof(work));
	struct outbox *ob = open_ob(dir, NULL);
	observe(ob, "local", 1, 2, DATE0, 1);
	commit(ob, 1);
	CHECK(outbox_mark_pushed(ob, 1, "tx-1", 4, err, sizeof(err)) == 0);
	off_t s0 = file_size(dir);
	observe(ob, "local", 2, 2, DATE0 + 1, 2);
	observe(ob, "local", 3, 2, DATE0 + 2, 3);
	commit(ob, 3);
	off_t s1 = file_size(dir);
	outbox_close(ob);
	CHECK(s1 > s0 && s0 > 16);

	for (off_t cut = s0; cut <= s1; cut++) {
		uint64_t truncated = 99;
		struct outbox_entry e[4];
		copy_file(dir, work, cut);
		ob = open_ob(work, &truncated);
		if (ob == NULL)
			continue;
		size_t n = list(ob, e, 4);
		if (cut == s1) {
			CHECKF(n == 3 && truncated == 0, "cut %lld: %zu",
			       (long long)cut, n);
		} else {
			CHECKF(n == 1 && e[0].state == OUTBOX_PUSHED &&
			       truncated == (uint64_t)(cut - s0),
			       "cut %lld: %zu entries, %" PRIu64 " cut",
			       (long long)cut, n, truncated);
			CHECK(file_size(work) == s0);
			/* Appending after the cut works and survives. */
			observe(ob, "local", 7, 2, DATE0 + 7, 7);
			commit(ob, 7);
		}
		outbox_close(ob);
		ob = open_ob(work, &truncated);
		if (ob != NULL) {
			CHECK(truncated == 0);
			CHECK(list(ob, e, 4) == (cut == s1 ? 3u : 2u));
			outbox_close(ob);
		}
	}

	/* Zeros after the last unit (space without data): cut. */
	copy_file(dir, work, s1);
	char path[400];
	snprintf(path, sizeof(path), "%s/%s", work, OUTBOX_FILE);
	int fd = open(path, O_WRONLY | O_APPEND);
	uint8_t zeros[100] = { 0 };
	CHECK(fsutil_write_all(fd, zeros, sizeof(zeros)) == 0);
	close(fd);
	uint64_t truncated = 0;
	ob = open_ob(work, &truncated);
	CHECK(ob != NULL && truncated == sizeof(zeros));
	outbox_close(ob);

	/* A byte flipped in the first unit with more after it: damage. */
	copy_file(dir, work, s1);
	fd = open(path, O_RDWR);
	uint8_t b;
	CHECK(pread(fd, &b, 1, 30) == 1);
	b ^= 0x40;
	CHECK(pwrite(fd, &b, 1, 30) == 1);
	close(fd);
	struct outbox *bad = NULL;
	CHECK(outbox_open(work, &bad, NULL, err, sizeof(err)) == -EPROTO);
	CHECKF(strstr(err, "offset 16") != NULL, "%s", err);
	CHECK(bad == NULL);

	/* Not an outbox at all. */
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(fsutil_write_all(fd, "hello, world, this is text", 26) == 0);
	close(fd);
	CHECK(outbox_open(work, &bad, NULL, err, sizeof(err)) == -EPROTO);
}

/* A change log with batches of several origins; an outbox that saw part
 * of it catches up from its through position, once. */
static void test_rebuild_from_log(void)
{
	char dir[300], err[512];
	struct changelog *log = NULL;
	new_dir(dir, sizeof(dir));
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	if (log == NULL)
		return;
	struct chg c[6];
	Consent__V1__Consent *p[6];
	for (int i = 0; i < 6; i++)
		p[i] = &c[i].c;
	/* Batch 1 (local): keys 1, 2 at sequences 1, 2. Batch 2 (iys):
	 * key 1's RET (3) and an ONAY (4). Batch 3 (local): key 3 (5). */
	chg_make(&c[0], 1, 2, DATE0, 1);
	chg_make(&c[1], 2, 2, DATE0, 2);
	chg_make(&c[2], 1, 2, DATE0 + 5, 3);
	chg_make(&c[3], 9, 1, DATE0 + 5, 4);
	chg_make(&c[4], 3, 2, DATE0 + 6, 5);
	struct changelog_batch b[3] = {
		{ .changes = &p[0], .n = 2, .commit = { .kind = ORIGINS_ORIGIN,
		  .origin = "local", .origin_len = 5, .cursor = "2",
		  .cursor_len = 1 } },
		{ .changes = &p[2], .n = 2, .commit = { .kind = ORIGINS_ORIGIN,
		  .origin = "iys:600123:HS", .origin_len = 13, .cursor = "a1",
		  .cursor_len = 2 } },
		{ .changes = &p[4], .n = 1, .commit = { .kind = ORIGINS_ORIGIN,
		  .origin = "local", .origin_len = 5, .cursor = "5",
		  .cursor_len = 1 } },
	};
	/* The outbox saw batch 1 (a crash fell after the log's fdatasync of
	 * batches 2 and 3, before the outbox's). */
	CHECK(changelog_append_batches(log, b, 1) == 0);
	struct outbox *ob = open_ob(dir, NULL);
	CHECK(outbox_rebuild(ob, log, err, sizeof(err)) == 2);
	CHECK(outbox_through(ob) == 2);
	CHECK(changelog_append_batches(log, &b[1], 2) == 0);
	outbox_close(ob);

	ob = open_ob(dir, NULL);
	int rc = outbox_rebuild(ob, log, err, sizeof(err));
	CHECKF(rc == 1, "rebuild: %d %s", rc, err);
	struct outbox_entry e[8];
	size_t n = list(ob, e, 8);
	CHECK(n == 2 && e[0].sequence == 2 && e[1].sequence == 5);
	CHECK(outbox_through(ob) == 5);
	outbox_close(ob);

	/* Again: nothing new, nothing twice. */
	ob = open_ob(dir, NULL);
	CHECK(outbox_rebuild(ob, log, err, sizeof(err)) == 0);
	n = list(ob, e, 8);
	CHECK(n == 2 && e[0].sequence == 2 && e[1].sequence == 5);
	outbox_close(ob);

	/* An outbox lost whole (a new file) rebuilds from the log's start:
	 * the same entries, by the same rules. */
	char path[400];
	snprintf(path, sizeof(path), "%s/%s", dir, OUTBOX_FILE);
	CHECK(unlink(path) == 0);
	ob = open_ob(dir, NULL);
	CHECK(outbox_rebuild(ob, log, err, sizeof(err)) == 3);
	n = list(ob, e, 8);
	CHECK(n == 2 && e[0].sequence == 2 && e[1].sequence == 5);
	outbox_close(ob);
	changelog_close(log);
}

/* Reconciled entries dominate: the file is rewritten with the live ones
 * and their pushed ids, and shrinks. */
static void test_compaction(void)
{
	char dir[300], err[256];
	new_dir(dir, sizeof(dir));
	struct outbox *ob = open_ob(dir, NULL);
	uint64_t seq = 0;
	for (unsigned k = 1; k <= 600; k++)
		observe(ob, "local", k, 2, DATE0 + k, ++seq);
	commit(ob, seq);
	for (unsigned k = 1; k <= 600; k += 6) {
		char id[32];
		snprintf(id, sizeof(id), "tx-%u", k);
		CHECK(outbox_mark_pushed(ob, k, id, strlen(id), err,
					 sizeof(err)) == 0);
	}
	off_t big = file_size(dir);
	/* İYS's copies of the first 500 come back, in groups. */
	for (unsigned k = 1; k <= 500; k++) {
		observe(ob, "iys:600123:HS", k, 2, DATE0 + k, ++seq);
		if (k % 50 == 0)
			commit(ob, seq);
	}
	CHECK(depth(ob) == 100);
	CHECKF(file_size(dir) < big / 2, "%lld of %lld",
	       (long long)file_size(dir), (long long)big);
	outbox_close(ob);

	ob = open_ob(dir, NULL);
	struct outbox_entry *e = calloc(200, sizeof(*e));
	size_t n = list(ob, e, 200);
	CHECK(n == 100 && e[0].sequence == 501 && e[99].sequence == 600);
	CHECK(outbox_through(ob) == seq);
	size_t pushed = 0;
	for (size_t i = 0; i < n; i++)
		if (e[i].state == OUTBOX_PUSHED) {
			char id[32];
			snprintf(id, sizeof(id), "tx-%" PRIu64, e[i].sequence);
			CHECK_STREQ(e[i].pushed_id, id);
			CHECK((e[i].sequence - 1) % 6 == 0);
			pushed++;
		}
	CHECK(pushed == 16); /* 505, 511, ..., 595 */
	free(e);
	/* Still appendable after the rewrite. */
	observe(ob, "local", 700, 2, DATE0 + 700, ++seq);
	commit(ob, seq);
	CHECK(depth(ob) == 101);
	outbox_close(ob);
	ob = open_ob(dir, NULL);
	CHECK(depth(ob) == 101);
	outbox_close(ob);
}

/* The ops port's side (list, mark pushed, stats) running against the
 * writer's (observe, commit, reconcile, compaction): every mark made
 * durable is there after reopening, on the live entries. Run under TSan
 * by make test-tsan. */
struct marker {
	struct outbox *ob;
	atomic_int stop; /* main sets it, the marker reads it */
	unsigned marked;
};

static void *marker_main(void *arg)
{
	struct marker *mk = arg;
	struct outbox_entry e[64];
	char err[256], id[32];
	while (!atomic_load(&mk->stop)) {
		uint64_t d = 0;
		int64_t oldest;
		size_t n = outbox_list(mk->ob, NULL, NULL, e, 64, &d);
		outbox_stats(mk->ob, &d, &oldest);
		for (size_t i = 0; i < n; i++) {
			if (e[i].state != OUTBOX_QUEUED)
				continue;
			snprintf(id, sizeof(id), "tx-%" PRIu64, e[i].sequence);
			int rc = outbox_mark_pushed(mk->ob, e[i].sequence, id,
						    strlen(id), err, sizeof(err));
			/* Reconciled meanwhile: gone, which is no error. */
			if (rc == 0)
				mk->marked++;
			else if (rc != -ENOENT)
				CHECKF(0, "mark %" PRIu64 ": %d %s",
				       e[i].sequence, rc, err);
		}
	}
	return NULL;
}

static void test_concurrent_marks(void)
{
	char dir[300];
	new_dir(dir, sizeof(dir));
	struct outbox *ob = open_ob(dir, NULL);
	struct marker mk = { .ob = ob };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, marker_main, &mk) == 0);
	uint64_t seq = 0;
	for (unsigned k = 1; k <= 2000; k++) {
		observe(ob, "local", k, 2, DATE0 + k, ++seq);
		if (k > 100) /* İYS's copies trail by 100 */
			observe(ob, "iys:600123:HS", k - 100, 2, DATE0 + k, ++seq);
		if (k % 10 == 0)
			commit(ob, seq);
	}
	commit(ob, seq);
	atomic_store(&mk.stop, 1);
	pthread_join(t, NULL);
	CHECK(depth(ob) == 100);
	struct outbox_entry e[128];
	size_t n = list(ob, e, 128);
	outbox_close(ob);
	ob = open_ob(dir, NULL);
	struct outbox_entry f[128];
	CHECK(list(ob, f, 128) == n && n == 100);
	for (size_t i = 0; i < n; i++) {
		CHECK(f[i].sequence == e[i].sequence && f[i].state == e[i].state);
		CHECK_STREQ(f[i].pushed_id, e[i].pushed_id);
	}
	outbox_close(ob);
}

/* outbox_parse agrees with outbox_open on a file image. */
static void test_parse(void)
{
	char err[256];
	size_t good = 0, live = 0;
	CHECK(outbox_parse((const uint8_t *)"", 0, &good, &live, err,
			   sizeof(err)) == 0 && live == 0);
	CHECK(outbox_parse((const uint8_t *)"CDOUT", 5, &good, &live, err,
			   sizeof(err)) == 0 && good == 0);
	CHECK(outbox_parse((const uint8_t *)"XDOUTBOX\1\0\0\0\0\0\0\0", 16,
			   &good, &live, err, sizeof(err)) == -EPROTO);
	CHECK(outbox_parse((const uint8_t *)"CDOUTBOX\2\0\0\0\0\0\0\0", 16,
			   &good, &live, err, sizeof(err)) == -EPROTO);
	CHECK(strstr(err, "version") != NULL);
	CHECK_STREQ(outbox_state_name(OUTBOX_QUEUED), "queued");
	CHECK_STREQ(outbox_state_name(OUTBOX_PUSHED), "pushed");
}

int main(void)
{
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_states_and_reopen);
	RUN(test_torn_tail);
	RUN(test_rebuild_from_log);
	RUN(test_compaction);
	RUN(test_concurrent_marks);
	RUN(test_parse);
	fsutil_rm_tree(tmpdir);
	return check_summary();
}
