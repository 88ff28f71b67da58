/*
 * writer_test: the single writer against a real data directory (built by
 * build_snapshot from a stream written here), a real change log and the
 * real live pointer: Apply requests go in decoded by protobuf-c through
 * writer_submit, replies come back through the completion queue's eventfd,
 * and the served index is read back key by key against a model of the
 * order rule. Growth, restart (in-process and after a SIGKILL), snapshot
 * hand-over with and without a merge, rebuild, a failing log
 * (RLIMIT_FSIZE), concurrent submitters and request validation; origins
 * and cursors (DESIGN §8): the cursor rule, server-given positions, a
 * group of batches of one origin, the kinds that never mix, all of it
 * across restarts and a SIGKILL; local rejections (§11): origin "local"
 * unconditional, its cursor the batch's position, the reject right, the
 * outbox fed and reconciled in log order, the order rule kept.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/fsutil.h"
#include "core/natsmsg.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/tokens.h"
#include "index/build.h"
#include "index/changelog.h"
#include "index/generation.h"
#include "index/history.h"
#include "index/origins.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "index/outbox.h"
#include "server/live.h"
#include "server/reject.h"
#include "server/writer.h"
#include "tests/check.h"

static char tmpdir[] = "/tmp/writer_test.XXXXXX";
static int n_dirs;

#define DATE0 1700000000LL /* the snapshot's records */
#define MAX_KEYS 20000

/* ---- keys and the model ---- */

/* Key k: a phone (k even) or an e-mail (k odd), brand 100 + k % 3. */
static void key_text(uint64_t k, char *buf, size_t cap, int *channel)
{
	if (k % 2 == 0) {
		snprintf(buf, cap, "+90532%07" PRIu64, k);
		*channel = CHANNEL_MESAJ;
	} else {
		snprintf(buf, cap, "User%" PRIu64 "@Example.com", k);
		*channel = CHANNEL_EPOSTA;
	}
}

static uint32_t key_brand(uint64_t k)
{
	return 100 + (uint32_t)(k % 3);
}

struct model {
	uint8_t status[MAX_KEYS];
	int64_t date[MAX_KEYS];
};

static void model_apply(struct model *m, uint64_t k, int status, int64_t date)
{
	if (m->status[k] == 0 || date > m->date[k] ||
	    (date == m->date[k] && status == STATUS_RET)) {
		m->status[k] = (uint8_t)status;
		m->date[k] = date;
	}
}

/* A change: key, status, date, sequence. Text lives in the struct. */
struct chg {
	Consent__V1__Consent c;
	char text[64];
};

static void chg_make(struct chg *x, uint64_t k, int status, int64_t date,
		     uint64_t seq)
{
	int channel;
	consent__v1__consent__init(&x->c);
	key_text(k, x->text, sizeof(x->text), &channel);
	x->c.recipient = x->text;
	x->c.channel = (Consent__V1__Channel)channel;
	x->c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	x->c.brand_code = key_brand(k);
	x->c.status = (Consent__V1__Status)status;
	x->c.source = CONSENT__V1__SOURCE__HS_WEB;
	x->c.consent_date = date;
	x->c.sequence = seq;
}

/* What the served index holds for key k: 0 if absent. */
static int lookup(uint64_t k, int64_t *date)
{
	char text[64];
	int channel;
	struct recipient r;
	const char *why;
	struct consent_value v;
	struct index_key key;
	const struct index *ix = live_index();

	key_text(k, text, sizeof(text), &channel);
	if (ix == NULL || recipient_normalize(text, strlen(text), &r, &why) < 0)
		return -1;
	index_key_make(ix, &r, key_brand(k), RTYPE_BIREYSEL, channel, &key);
	if (!index_lookup(ix, &key, &v))
		return 0;
	if (date)
		*date = v.consent_date;
	return v.status;
}

/* Keys [0, n) that disagree with the model. */
static uint64_t mismatches(const struct model *m, uint64_t n)
{
	uint64_t bad = 0;
	for (uint64_t k = 0; k < n; k++) {
		int64_t d = 0;
		int st = lookup(k, &d);
		if (st != m->status[k] || (st && d != m->date[k])) {
			if (bad < 5)
				fprintf(stderr, "  key %" PRIu64 ": index %d@%"
					PRId64 ", model %d@%" PRId64 "\n", k,
					st, d, m->status[k], m->date[k]);
			bad++;
		}
	}
	return bad;
}

/* ---- data directories ---- */

/* Writes keys [0, n) as ONAY at DATE0 + k to a snapshot stream file. */
static void snapshot_file(const char *path, uint64_t n, uint64_t watermark)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	h.format_version = STREAM_FORMAT_VERSION;
	h.sequence = watermark;
	h.created_at = DATE0;
	h.origin = "writer_test";
	struct stream_writer *sw;
	CHECK(stream_writer_create(fd, &h, 100, &sw) == 0);
	for (uint64_t k = 0; k < n; k++) {
		struct chg x;
		chg_make(&x, k, STATUS_ONAY, DATE0 + (int64_t)k, 0);
		CHECK(stream_writer_add(sw, &x.c) == 0);
	}
	CHECK(stream_writer_finish(sw) == 0);
	close(fd);
}

static void build_into(const char *dir, uint64_t n, uint64_t watermark,
		       uint64_t *gen)
{
	char snap[300];
	char err[512] = "";
	struct build_result res;
	snprintf(snap, sizeof(snap), "%s/snap-%d.bin", tmpdir, ++n_dirs);
	snapshot_file(snap, n, watermark);
	int fd = open(snap, O_RDONLY | O_CLOEXEC);
	int rc = build_snapshot(fd, dir, &res, err, sizeof(err));
	CHECKF(rc == 0, "build_snapshot: %s", err);
	close(fd);
	if (gen)
		*gen = res.generation;
}

/* A fresh data directory holding keys [0, n) as ONAY. */
static void new_dir(char *dir, size_t cap, uint64_t n, struct model *m)
{
	snprintf(dir, cap, "%s/data-%d", tmpdir, ++n_dirs);
	build_into(dir, n, 0, NULL);
	if (m != NULL) {
		memset(m, 0, sizeof(*m));
		for (uint64_t k = 0; k < n; k++)
			model_apply(m, k, STATUS_ONAY, DATE0 + (int64_t)k);
	}
}

static struct writer *open_writer(const char *dir, uint64_t checkpoint,
				  unsigned queues)
{
	struct writer_options o = {
		.data_dir = dir,
		.index_load = INDEX_LOAD_ANON,
		.n_queues = queues,
		.checkpoint_changes = checkpoint,
	};
	struct writer *w = NULL;
	char err[512] = "";
	int rc = writer_open(&o, &w, err, sizeof(err));
	CHECKF(rc == 0, "writer_open: %s", err);
	if (rc == 0) {
		rc = writer_start(w, err, sizeof(err));
		CHECKF(rc == 0, "writer_start: %s", err);
	}
	return w;
}

static unsigned count_generations(const char *dir)
{
	DIR *d = opendir(dir);
	unsigned n = 0;
	struct dirent *de;
	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += strncmp(de->d_name, "gen-", 4) == 0;
	closedir(d);
	return n;
}

static void verify_dir(const char *dir)
{
	char err[512] = "";
	int rc = generation_verify(dir, err, sizeof(err));
	CHECKF(rc == 0, "generation_verify %s: %s", dir, err);
}

/* ---- submitting ---- */

struct waiter {
	struct writer_reply got[64];
	unsigned n;
};

static void on_reply(const struct writer_reply *r, void *arg)
{
	struct waiter *wt = arg;
	if (wt->n < 64)
		wt->got[wt->n++] = *r;
}

/* Who submits (NULL: a trusted caller). */
static const struct principal *submit_as;

/* Submits changes[0..n) as one request on queue q, with origin, its
 * after_cursor and cursor when origin is not NULL. Returns 1 when queued,
 * else 0 with *now the reply. */
static int submit_o(struct writer *w, unsigned q, struct chg *changes,
		    size_t n, uint64_t id, const char *origin,
		    const char *after, const char *cursor,
		    struct writer_reply *now)
{
	Consent__V1__Consent *ptrs[1024];
	Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
	for (size_t i = 0; i < n && i < 1024; i++)
		ptrs[i] = &changes[i].c;
	a.n_changes = n;
	a.changes = ptrs;
	if (origin != NULL) {
		a.origin = (char *)origin;
		a.after_cursor = (char *)after;
		a.cursor = (char *)cursor;
	}
	/* Through the wire and back, as the RPC hands it over. */
	size_t len = consent__v1__apply_request__get_packed_size(&a);
	uint8_t *buf = malloc(len + 1);
	consent__v1__apply_request__pack(&a, buf);
	Consent__V1__ApplyRequest *dec =
		consent__v1__apply_request__unpack(NULL, len, buf);
	free(buf);
	CHECK(dec != NULL);
	int rc = writer_submit(w, q, 1000 + id, id, submit_as, dec, now);
	CHECK(rc >= 0);
	return rc;
}

/* Waits for n replies on queue q, in completion order. */
static void wait_replies(struct writer *w, unsigned q, struct waiter *wt,
			 unsigned n)
{
	struct pollfd p = { .fd = writer_queue_fd(w, q), .events = POLLIN };
	for (int tries = 0; wt->n < n && tries < 600; tries++) {
		if (poll(&p, 1, 100) == 1) {
			uint64_t v;
			CHECK(read(p.fd, &v, sizeof(v)) == sizeof(v));
		}
		writer_take(w, q, on_reply, wt);
	}
	CHECKF(wt->n == n, "%u replies of %u", wt->n, n);
}

static struct writer_reply apply_o(struct writer *w, struct chg *changes,
				   size_t n, uint64_t id, const char *origin,
				   const char *after, const char *cursor)
{
	struct writer_reply now;
	if (submit_o(w, 0, changes, n, id, origin, after, cursor, &now) != 1)
		return now;
	struct waiter wt = { .n = 0 };
	wait_replies(w, 0, &wt, 1);
	CHECK(wt.got[0].tag == 1000 + id && wt.got[0].id == id);
	return wt.got[0];
}

/* Applies changes[0..n) as one request on queue q; waits for the reply. */
static struct writer_reply apply_q(struct writer *w, unsigned q,
				   struct chg *changes, size_t n, uint64_t id)
{
	struct writer_reply now;
	if (submit_o(w, q, changes, n, id, NULL, NULL, NULL, &now) != 1)
		return now;
	struct waiter wt = { .n = 0 };
	wait_replies(w, q, &wt, 1);
	CHECK(wt.got[0].tag == 1000 + id && wt.got[0].id == id);
	return wt.got[0];
}

static struct writer_reply apply(struct writer *w, struct chg *changes,
				 size_t n, uint64_t id)
{
	return apply_q(w, 0, changes, n, id);
}

static uint64_t watermark(void)
{
	struct index_info info;
	index_info(live_index(), &info);
	return info.watermark;
}

/* ---- tests ---- */

static void test_apply_order_replay(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[16];
	new_dir(dir, sizeof(dir), 50, m);
	struct writer *w = open_writer(dir, 0, 1);

	/* Flips, new phones and e-mails. */
	for (uint64_t i = 0; i < 10; i++) {
		uint64_t k = i < 5 ? i * 3 : 100 + i;
		chg_make(&c[i], k, i < 5 ? STATUS_RET : STATUS_ONAY,
			 DATE0 + 1000 + (int64_t)i, i + 1);
		model_apply(m, k, i < 5 ? STATUS_RET : STATUS_ONAY,
			    DATE0 + 1000 + (int64_t)i);
	}
	struct writer_reply r = apply(w, c, 10, 1);
	CHECKF(r.code == 0, "%u %s", r.code, r.message);
	CHECK(r.applied == 10 && r.skipped == 0 && r.applied_sequence == 10);
	CHECK(mismatches(m, 120) == 0);
	CHECK(watermark() == 10);

	/* The same request again: all replays. */
	r = apply(w, c, 10, 2);
	CHECK(r.code == 0 && r.applied == 0 && r.skipped == 10 &&
	      r.applied_sequence == 10);

	/* Order rule: older skipped, equal date RET wins, identical skipped. */
	chg_make(&c[0], 3, STATUS_ONAY, DATE0 + 500, 11);       /* older */
	chg_make(&c[1], 20, STATUS_RET, DATE0 + 20, 12);        /* tie: RET */
	chg_make(&c[2], 20, STATUS_RET, DATE0 + 20, 13);        /* identical */
	chg_make(&c[3], 21, STATUS_RET, DATE0 + 5000, 14);
	chg_make(&c[4], 21, STATUS_ONAY, DATE0 + 5000, 15);     /* tie: ONAY loses */
	model_apply(m, 20, STATUS_RET, DATE0 + 20);
	model_apply(m, 21, STATUS_RET, DATE0 + 5000);
	r = apply(w, c, 5, 3);
	CHECKF(r.code == 0 && r.applied == 2 && r.skipped == 3 &&
	       r.applied_sequence == 15, "code %u applied %u skipped %u seq %"
	       PRIu64, r.code, r.applied, r.skipped, r.applied_sequence);
	CHECK(mismatches(m, 120) == 0);

	/* A request straddling the watermark. */
	chg_make(&c[0], 30, STATUS_RET, DATE0 + 9000, 14);
	chg_make(&c[1], 31, STATUS_RET, DATE0 + 9000, 15);
	chg_make(&c[2], 32, STATUS_RET, DATE0 + 9000, 16);
	model_apply(m, 32, STATUS_RET, DATE0 + 9000);
	r = apply(w, c, 3, 4);
	CHECK(r.code == 0 && r.applied == 1 && r.skipped == 2 &&
	      r.applied_sequence == 16);
	CHECK(mismatches(m, 120) == 0);

	writer_close(w);
	/* A clean stop wrote everything into a generation. */
	verify_dir(dir);
	w = open_writer(dir, 0, 1);
	CHECK(watermark() == 16);
	CHECK(mismatches(m, 120) == 0);
	r = apply(w, NULL, 0, 5);
	CHECK(r.code == 0 && r.applied_sequence == 16);
	writer_close(w);
	free(m);
}

static void test_bad_requests(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[4];
	new_dir(dir, sizeof(dir), 20, m);
	struct writer *w = open_writer(dir, 0, 1);

	/* A heartbeat (no changes) moves data_as_of from the snapshot's
	 * time to now. */
	struct index_info info;
	index_info(live_index(), &info);
	CHECK(info.data_as_of == DATE0);
	struct writer_reply r = apply(w, NULL, 0, 100);
	CHECK(r.code == 0 && r.applied == 0 && r.applied_sequence == 0);
	index_info(live_index(), &info);
	CHECK(info.data_as_of >= time(NULL) - 5);

	chg_make(&c[0], 2, STATUS_RET, DATE0 + 100, 1);
	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 0);
	r = apply(w, c, 2, 1);
	CHECKF(r.code == 400 && strstr(r.message, "changes[1]") &&
	       strstr(r.message, "sequence"), "%u %s", r.code, r.message);

	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 2);
	c[1].c.recipient = "not a recipient";
	r = apply(w, c, 2, 2);
	CHECKF(r.code == 400 && strstr(r.message, "changes[1]") &&
	       strstr(r.message, "recipient"), "%u %s", r.code, r.message);

	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 1);
	r = apply(w, c, 2, 3);
	CHECKF(r.code == 400 && strstr(r.message, "changes[1]") &&
	       strstr(r.message, "must increase"), "%u %s", r.code, r.message);

	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 2);
	c[1].c.channel = CONSENT__V1__CHANNEL__EPOSTA;
	r = apply(w, c, 2, 4);
	CHECKF(r.code == 400 && strstr(r.message, "changes[1]") &&
	       strstr(r.message, "channel"), "%u %s", r.code, r.message);

	chg_make(&c[1], 4, STATUS_RET, 1000000000, 2); /* 2001 */
	r = apply(w, c, 2, 5);
	CHECKF(r.code == 400 && strstr(r.message, "consent_date"), "%u %s",
	       r.code, r.message);

	/* A principal limited to brand 100 may write neither brand 101 nor
	 * an unknown brand, and both refusals read alike. Key 4's brand is
	 * 101 (it has a record); brand 999 has none. */
	struct principal scoped = { .name = "scoped", .may_apply = true };
	uint32_t scoped_brands[] = { 100 };
	scoped.brands = scoped_brands;
	scoped.n_brands = 1;
	submit_as = &scoped;
	chg_make(&c[0], 3, STATUS_RET, DATE0 + 100, 1); /* brand 100 */
	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 2); /* brand 101 */
	r = apply(w, c, 2, 7);
	CHECKF(r.code == 403 && strstr(r.message, "changes[1]") &&
	       strstr(r.message, "brand_code 101"), "%u %s", r.code, r.message);
	char other[sizeof(r.message)];
	snprintf(other, sizeof(other), "%s", r.message);
	c[1].c.brand_code = 999;
	r = apply(w, c, 2, 8);
	CHECKF(r.code == 403 && strstr(r.message, "brand_code 999"), "%u %s",
	       r.code, r.message);
	/* The same words but for the brand the caller named. */
	char *at = strstr(other, "101");
	if (at != NULL)
		memcpy(at, "999", 3);
	CHECK_STREQ(other, r.message);
	c[1].c.brand_code = 100;
	c[1].c.sequence = 0; /* invalid too: the brand is not the problem */
	r = apply(w, c, 2, 9);
	CHECKF(r.code == 400, "%u %s", r.code, r.message);
	submit_as = NULL;
	chg_make(&c[0], 2, STATUS_RET, DATE0 + 100, 1);

	/* Nothing of any of them was applied. */
	CHECK(watermark() == 0);
	CHECK(mismatches(m, 20) == 0);
	chg_make(&c[1], 4, STATUS_RET, DATE0 + 100, 2);
	model_apply(m, 2, STATUS_RET, DATE0 + 100);
	model_apply(m, 4, STATUS_RET, DATE0 + 100);
	r = apply(w, c, 2, 6);
	CHECK(r.code == 0 && r.applied == 2 && r.applied_sequence == 2);
	CHECK(mismatches(m, 20) == 0);
	writer_close(w);
	free(m);
}

/* Inserts keys [from, to) with sequences from seq on, batch at a time. */
static uint64_t insert_range(struct writer *w, struct model *m, uint64_t from,
			     uint64_t to, uint64_t seq, size_t batch,
			     int64_t date)
{
	static struct chg c[256];
	uint64_t id = 100;
	for (uint64_t k = from; k < to;) {
		size_t n = 0;
		for (; n < batch && k < to; n++, k++) {
			int st = k % 5 == 0 ? STATUS_RET : STATUS_ONAY;
			chg_make(&c[n], k, st, date + (int64_t)k, seq++);
			model_apply(m, k, st, date + (int64_t)k);
		}
		struct writer_reply r = apply(w, c, n, id++);
		CHECKF(r.code == 0 && r.applied == n, "%u %s applied %u of %zu",
		       r.code, r.message, r.applied, n);
	}
	return seq;
}

static void test_growth_and_restart(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct index_info before, after;
	new_dir(dir, sizeof(dir), 20, m);
	struct writer *w = open_writer(dir, 0, 1);
	index_info(live_index(), &before);

	uint64_t seq = insert_range(w, m, 20, 6000, 1, 100, DATE0 + 10);
	index_info(live_index(), &after);
	CHECKF(after.capacity > before.capacity && after.n_records == 6000,
	       "capacity %" PRIu64 " -> %" PRIu64 ", %" PRIu64 " records",
	       before.capacity, after.capacity, after.n_records);
	CHECK(after.watermark == seq - 1);
	CHECK(mismatches(m, 6000) == 0);
	/* Growth writes generations; two stay on disk at most. */
	CHECKF(count_generations(dir) <= 2, "%u generations",
	       count_generations(dir));
	verify_dir(dir);
	writer_close(w);
	verify_dir(dir);

	w = open_writer(dir, 0, 1);
	CHECK(mismatches(m, 6000) == 0);
	CHECK(watermark() == seq - 1);
	writer_close(w);

	/* The fallback: the newest generation damaged, the previous one plus
	 * the log give everything back. */
	w = open_writer(dir, 0, 1);
	seq = insert_range(w, m, 6000, 6500, seq, 50, DATE0 + 10);
	writer_rebuild(w); /* a new generation with the writer running */
	seq = insert_range(w, m, 6500, 6600, seq, 50, DATE0 + 10);
	writer_close(w);
	CHECK(count_generations(dir) == 2);
	uint64_t newest = 0;
	CHECK(generation_newest(dir, &newest) == 0);
	char path[400];
	generation_path(dir, newest, path, sizeof(path));
	strcat(path, "/index");
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0 && pwrite(fd, "XX", 2, 8192) == 2);
	close(fd);
	w = open_writer(dir, 0, 1);
	CHECK(mismatches(m, 6600) == 0);
	CHECK(watermark() == seq - 1);
	struct index_info info;
	index_info(live_index(), &info);
	CHECK(info.generation < newest);
	writer_close(w);
	verify_dir(dir); /* the damaged one was replaced */
	free(m);
}

static void test_crash_replay(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	int pfd[2];
	new_dir(dir, sizeof(dir), 100, m);
	CHECK(pipe(pfd) == 0);
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		/* The child applies, reports its acknowledged sequence and
		 * dies without any stop: what it acknowledged must survive. */
		close(pfd[0]);
		struct writer *w = open_writer(dir, 300, 1);
		struct model *cm = calloc(1, sizeof(*cm));
		uint64_t seq = 1;
		for (int round = 0; round < 20; round++) {
			seq = insert_range(w, cm, (uint64_t)round * 100,
					   (uint64_t)round * 100 + 100, seq,
					   37, DATE0 + 100000 + round);
			if (write(pfd[1], &seq, sizeof(seq)) != sizeof(seq))
				_exit(3);
		}
		raise(SIGKILL);
		_exit(2);
	}
	close(pfd[1]);
	uint64_t acked = 0, v;
	while (read(pfd[0], &v, sizeof(v)) == sizeof(v))
		acked = v - 1;
	close(pfd[0]);
	int status;
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	CHECK(acked == 2000);
	/* The same changes in the model. */
	for (int round = 0; round < 20; round++)
		for (uint64_t k = (uint64_t)round * 100;
		     k < (uint64_t)round * 100 + 100; k++)
			model_apply(m, k, k % 5 == 0 ? STATUS_RET : STATUS_ONAY,
				    DATE0 + 100000 + round + (int64_t)k);
	struct writer *w = open_writer(dir, 0, 1);
	CHECK(watermark() == acked);
	CHECK(mismatches(m, 2000) == 0);
	writer_close(w);
	verify_dir(dir);
	free(m);
}

/* Builds keys [0, n) at watermark wm in memory and hands it over (the
 * writer has swapped it in when that returns). */
static void take_snapshot(struct writer *w, uint64_t n, uint64_t wm)
{
	char snap[300], err[512] = "";
	struct build_result res;
	struct generation *g = calloc(1, sizeof(*g));
	snprintf(snap, sizeof(snap), "%s/snap-%d.bin", tmpdir, ++n_dirs);
	snapshot_file(snap, n, wm);
	int fd = open(snap, O_RDONLY | O_CLOEXEC);
	int rc = build_index(fd, g, &res, err, sizeof(err));
	CHECKF(rc == 0, "build_index: %s", err);
	close(fd);
	const struct index *before = live_index();
	rc = writer_take_snapshot(w, g, err, sizeof(err));
	CHECKF(rc == 0, "writer_take_snapshot: %s", err);
	CHECK(live_index() != before);
	/* A round trip through the writer orders what it did before (the
	 * take) before what this thread reads next (release/acquire of the
	 * completion queue). A heartbeat moves data_as_of only. */
	struct writer_reply r = apply(w, NULL, 0, 999);
	CHECK(r.code == 0 || r.code == 503);
}

static void test_snapshot_take(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	new_dir(dir, sizeof(dir), 50, m);
	struct writer *w = open_writer(dir, 0, 1);
	uint64_t seq = insert_range(w, m, 0, 40, 1, 10, DATE0 + 50);

	/* A snapshot at sequence 0 with more keys: the log holds all 40
	 * changes past it, so they are replayed into it. */
	take_snapshot(w, 80, 0);
	for (uint64_t k = 0; k < 80; k++)
		model_apply(m, k, STATUS_ONAY, DATE0 + (int64_t)k);
	CHECK(mismatches(m, 80) == 0);
	CHECK(watermark() == seq - 1);
	verify_dir(dir);
	writer_close(w);

	/* Checkpoints drop the log; then a snapshot older than the log's
	 * start needs the served index merged in. */
	w = open_writer(dir, 25, 1);
	seq = insert_range(w, m, 80, 200, seq, 10, DATE0 + 60);
	seq = insert_range(w, m, 0, 30, seq, 10, DATE0 + 70);
	take_snapshot(w, 120, 0);
	for (uint64_t k = 0; k < 120; k++)
		model_apply(m, k, STATUS_ONAY, DATE0 + (int64_t)k);
	CHECK(mismatches(m, 200) == 0);
	CHECK(watermark() == seq - 1);
	verify_dir(dir);
	/* And a newer one: it states the whole state through its sequence,
	 * which becomes the applied sequence. */
	take_snapshot(w, 10, seq + 100);
	CHECK(watermark() == seq + 100);
	memset(m, 0, sizeof(*m));
	for (uint64_t k = 0; k < 10; k++)
		model_apply(m, k, STATUS_ONAY, DATE0 + (int64_t)k);
	CHECK(mismatches(m, 200) == 0);
	struct chg c[1];
	chg_make(&c[0], 7, STATUS_RET, DATE0 + 99999, seq + 50);
	struct writer_reply r = apply(w, c, 1, 1);
	CHECK(r.code == 0 && r.skipped == 1 && r.applied_sequence == seq + 100);
	writer_close(w);
	verify_dir(dir);
	w = open_writer(dir, 0, 1);
	CHECK(mismatches(m, 200) == 0);
	writer_close(w);
	free(m);
}

static void test_log_failure(void)
{
	char dir[300], seg[1024] = "";
	struct model *m = calloc(1, sizeof(*m));
	new_dir(dir, sizeof(dir), 30, m);
	struct writer *w = open_writer(dir, 0, 1);
	uint64_t seq = insert_range(w, m, 0, 10, 1, 5, DATE0 + 50);

	/* The log's segment may not grow: its next write fails (EFBIG). */
	char cdir[400];
	snprintf(cdir, sizeof(cdir), "%s/changes", dir);
	DIR *d = opendir(cdir);
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".log"))
			snprintf(seg, sizeof(seg), "%s/%s", cdir, de->d_name);
	if (d)
		closedir(d);
	struct stat st;
	CHECK(seg[0] && stat(seg, &st) == 0);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)st.st_size;
	signal(SIGXFSZ, SIG_IGN);
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);

	struct chg c[2];
	chg_make(&c[0], 1, STATUS_RET, DATE0 + 99999, seq);
	struct writer_reply r = apply(w, c, 1, 1);
	CHECKF(r.code == 503 && strstr(r.message, "change log"), "%u %s",
	       r.code, r.message);
	char msg[256];
	CHECK(writer_fault(w, msg, sizeof(msg)));
	/* Refused from now on, even once the disk would take it again. */
	setrlimit(RLIMIT_FSIZE, &old);
	r = apply(w, c, 1, 2);
	CHECK(r.code == 503);
	/* The state served is unchanged. */
	CHECK(mismatches(m, 30) == 0);
	CHECK(watermark() == seq - 1);
	writer_close(w);
	/* A restart reopens the log; the refused change is not there (or,
	 * if its bytes reached the disk, it may be; never half). */
	w = open_writer(dir, 0, 1);
	CHECK(!writer_fault(w, NULL, 0));
	uint64_t wm = watermark();
	CHECK(wm == seq - 1 || wm == seq);
	if (wm == seq)
		model_apply(m, 1, STATUS_RET, DATE0 + 99999);
	CHECK(mismatches(m, 30) == 0);
	writer_close(w);
	free(m);
}

/* Four submitters send the same stream at once, each on its own queue. */
struct feeder {
	struct writer *w;
	unsigned q;
	uint64_t n;
	unsigned seed;
	uint64_t applied, bad;
};

static void *feeder_main(void *arg)
{
	struct feeder *f = arg;
	static __thread struct chg c[64];
	uint64_t seq = 1, id = 1;
	while (seq <= f->n) {
		size_t n = 1 + (size_t)(rand_r(&f->seed) % 40);
		size_t i = 0;
		for (; i < n && seq <= f->n; i++, seq++) {
			uint64_t k = seq % 700;
			chg_make(&c[i], k, seq % 2 ? STATUS_RET : STATUS_ONAY,
				 DATE0 + 10000 + (int64_t)seq, seq);
		}
		struct writer_reply r = apply_q(f->w, f->q, c, i, id++);
		if (r.code != 0 || r.applied_sequence < seq - 1)
			f->bad++;
		f->applied += r.applied;
	}
	return NULL;
}

static void test_concurrent_submitters(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	new_dir(dir, sizeof(dir), 700, m);
	struct writer *w = open_writer(dir, 0, 4);
	struct feeder f[4];
	pthread_t th[4];
	uint64_t n = 3000;
	for (unsigned i = 0; i < 4; i++) {
		f[i] = (struct feeder){ .w = w, .q = i, .n = n, .seed = i + 1 };
		pthread_create(&th[i], NULL, feeder_main, &f[i]);
	}
	uint64_t applied = 0, bad = 0;
	for (unsigned i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		applied += f[i].applied;
		bad += f[i].bad;
	}
	for (uint64_t s = 1; s <= n; s++)
		model_apply(m, s % 700, s % 2 ? STATUS_RET : STATUS_ONAY,
			    DATE0 + 10000 + (int64_t)s);
	CHECK(bad == 0);
	/* Each sequence was applied by exactly one of the four. */
	CHECKF(applied == n, "%" PRIu64 " applied of %" PRIu64, applied, n);
	CHECK(watermark() == n);
	CHECK(mismatches(m, 700) == 0);
	writer_close(w);
	free(m);
}

static void test_no_generation(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	snprintf(dir, sizeof(dir), "%s/empty-%d", tmpdir, ++n_dirs);
	struct writer *w = open_writer(dir, 0, 1);
	struct chg c[1];
	chg_make(&c[0], 1, STATUS_RET, DATE0 + 5, 1);
	struct writer_reply r = apply(w, c, 1, 1);
	CHECKF(r.code == 503, "%u %s", r.code, r.message);
	take_snapshot(w, 10, 3);
	for (uint64_t k = 0; k < 10; k++)
		model_apply(m, k, STATUS_ONAY, DATE0 + (int64_t)k);
	CHECK(mismatches(m, 10) == 0);
	chg_make(&c[0], 1, STATUS_RET, DATE0 + 5, 4);
	model_apply(m, 1, STATUS_RET, DATE0 + 5);
	r = apply(w, c, 1, 2);
	CHECK(r.code == 0 && r.applied == 1 && r.applied_sequence == 4);
	CHECK(mismatches(m, 10) == 0);
	writer_close(w);
	verify_dir(dir);
	free(m);
}

static void test_damaged_log_refused(void)
{
	char dir[300], cdir[400], seg[1024] = "", err[512] = "";
	struct model *m = calloc(1, sizeof(*m));
	new_dir(dir, sizeof(dir), 10, m);
	struct writer *w = open_writer(dir, 0, 1);
	insert_range(w, m, 0, 10, 1, 2, DATE0 + 50);
	writer_close(w);
	/* The clean stop wrote a generation, but the log keeps its newest
	 * segment: a bit flipped inside a record that is not its last is
	 * damage, not a torn tail. */
	snprintf(cdir, sizeof(cdir), "%s/changes", dir);
	DIR *d = opendir(cdir);
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".log"))
			snprintf(seg, sizeof(seg), "%s/%s", cdir, de->d_name);
	if (d)
		closedir(d);
	struct stat st;
	CHECK(seg[0] && stat(seg, &st) == 0 && st.st_size > 64);
	int fd = open(seg, O_RDWR);
	uint8_t b;
	CHECK(pread(fd, &b, 1, 40) == 1);
	b ^= 0x10;
	CHECK(pwrite(fd, &b, 1, 40) == 1);
	close(fd);
	struct writer_options o = { .data_dir = dir, .n_queues = 1 };
	w = NULL;
	int rc = writer_open(&o, &w, err, sizeof(err));
	CHECKF(rc == -EPROTO && strstr(err, seg + strlen(dir)) != NULL,
	       "rc %d: %s", rc, err);
	CHECK(w == NULL);
	free(m);
}


/* ---- origins and cursors (DESIGN §8) ---- */

/* The stored cursor of origin, as a Stats reply would give it. */
static const char *cursor_of(struct writer *w, const char *origin)
{
	static char buf[ORIGINS_CURSOR_MAX + 1];
	int rc = writer_origin_cursor(w, origin, strlen(origin), buf,
				      sizeof(buf));
	CHECK(rc == 0 || rc == 1);
	CHECK(rc == 1 || buf[0] == '\0');
	return buf;
}

/* Follow, 409, new origin, positions, an empty batch moving a cursor,
 * bounds, the brand check first, the kinds refusing to mix; all of it
 * across a clean restart (a generation) and a SIGKILL (the log). */
static void test_origins(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[8];
	new_dir(dir, sizeof(dir), 50, m);
	struct writer *w = open_writer(dir, 0, 1);

	CHECK_STREQ(cursor_of(w, "iys:600123"), "");
	/* A new origin: after_cursor "". Own sequences are ignored. */
	for (uint64_t i = 0; i < 3; i++) {
		chg_make(&c[i], i * 2, STATUS_RET, DATE0 + 500, 77 + i * 5);
		model_apply(m, i * 2, STATUS_RET, DATE0 + 500);
	}
	c[1].c.sequence = 0;
	struct writer_reply r = apply_o(w, c, 3, 1, "iys:600123", "", "p1");
	CHECKF(r.code == 0 && r.applied == 3 && r.applied_sequence == 3,
	       "%u %s applied %u seq %" PRIu64, r.code, r.message, r.applied,
	       r.applied_sequence);
	CHECK(watermark() == 3);
	CHECK_STREQ(cursor_of(w, "iys:600123"), "p1");
	CHECK(mismatches(m, 60) == 0);

	/* A stale after_cursor: 409 naming the stored cursor, nothing of it
	 * applied (key 1 would flip, a new key would appear). */
	chg_make(&c[0], 1, STATUS_RET, DATE0 + 900, 0);
	chg_make(&c[1], 200, STATUS_ONAY, DATE0 + 900, 0);
	r = apply_o(w, c, 2, 2, "iys:600123", "", "p2");
	CHECKF(r.code == 409 && strstr(r.message, "\"p1\""), "%u %s", r.code,
	       r.message);
	r = apply_o(w, c, 2, 3, "iys:600123", "p0", "p2");
	CHECKF(r.code == 409 && strstr(r.message, "\"p1\""), "%u %s", r.code,
	       r.message);
	CHECK(watermark() == 3 && lookup(200, NULL) == 0);
	CHECK(mismatches(m, 60) == 0);
	CHECK_STREQ(cursor_of(w, "iys:600123"), "p1");

	/* Following it: the next positions. */
	model_apply(m, 1, STATUS_RET, DATE0 + 900);
	model_apply(m, 200, STATUS_ONAY, DATE0 + 900);
	r = apply_o(w, c, 2, 4, "iys:600123", "p1", "p2");
	CHECK(r.code == 0 && r.applied == 2 && r.applied_sequence == 5);
	/* Another origin interleaves, from "" on. */
	chg_make(&c[0], 9, STATUS_RET, DATE0 + 900, 0);
	model_apply(m, 9, STATUS_RET, DATE0 + 900);
	r = apply_o(w, c, 1, 5, "gateway", "", "g1");
	CHECK(r.code == 0 && r.applied == 1 && r.applied_sequence == 6);
	/* A cursor moved by no change takes a position of its own; one
	 * that stays is a heartbeat. */
	r = apply_o(w, NULL, 0, 6, "gateway", "g1", "g2");
	CHECK(r.code == 0 && r.applied == 0 && r.applied_sequence == 7);
	r = apply_o(w, NULL, 0, 7, "gateway", "g2", "g2");
	CHECK(r.code == 0 && r.applied_sequence == 7);
	CHECK_STREQ(cursor_of(w, "gateway"), "g2");
	CHECK(mismatches(m, 210) == 0);

	/* Bounds: 400 naming the field. */
	char big[300];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	chg_make(&c[0], 11, STATUS_RET, DATE0 + 901, 0);
	r = apply_o(w, c, 1, 8, big, "", "1");
	CHECKF(r.code == 400 && strncmp(r.message, "origin", 6) == 0, "%u %s",
	       r.code, r.message);
	r = apply_o(w, c, 1, 9, "gateway", big, "1");
	CHECKF(r.code == 400 && strncmp(r.message, "after_cursor", 12) == 0,
	       "%u %s", r.code, r.message);
	r = apply_o(w, c, 1, 10, "gateway", "g2", big);
	CHECKF(r.code == 400 && strncmp(r.message, "cursor", 6) == 0, "%u %s",
	       r.code, r.message);
	r = apply_o(w, c, 1, 11, "gateway", "g2", "");
	CHECKF(r.code == 400 && strncmp(r.message, "cursor", 6) == 0, "%u %s",
	       r.code, r.message);
	r = apply_o(w, c, 1, 12, "", "g2", "g3");
	CHECKF(r.code == 400 && strstr(r.message, "without origin"), "%u %s",
	       r.code, r.message);
	/* The brand check comes first, even before a stale cursor. */
	struct principal scoped = { .name = "scoped", .may_apply = true };
	uint32_t scoped_brands[] = { 100 };
	scoped.brands = scoped_brands;
	scoped.n_brands = 1;
	submit_as = &scoped;
	chg_make(&c[0], 4, STATUS_RET, DATE0 + 901, 0); /* brand 101 */
	r = apply_o(w, c, 1, 13, "gateway", "stale", "g3");
	CHECKF(r.code == 403, "%u %s", r.code, r.message);
	submit_as = NULL;

	/* The other kind: 409 saying why. */
	chg_make(&c[0], 11, STATUS_RET, DATE0 + 901, 100);
	r = apply(w, c, 1, 14);
	CHECKF(r.code == 409 && strstr(r.message, "without origin"), "%u %s",
	       r.code, r.message);
	CHECK(watermark() == 7 && mismatches(m, 210) == 0);

	/* A clean restart: from the generation written at the stop. */
	writer_close(w);
	verify_dir(dir);
	w = open_writer(dir, 0, 1);
	CHECK(watermark() == 7 && mismatches(m, 210) == 0);
	CHECK_STREQ(cursor_of(w, "iys:600123"), "p2");
	CHECK_STREQ(cursor_of(w, "gateway"), "g2");
	r = apply(w, c, 1, 15);
	CHECK(r.code == 409);
	writer_close(w);

	/* A SIGKILL after more batches: from the log past the generation. */
	int pfd[2];
	CHECK(pipe(pfd) == 0);
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		w = open_writer(dir, 0, 1);
		chg_make(&c[0], 13, STATUS_RET, DATE0 + 902, 0);
		r = apply_o(w, c, 1, 16, "gateway", "g2", "g3");
		uint64_t seq = r.code == 0 ? r.applied_sequence : 0;
		if (write(pfd[1], &seq, sizeof(seq)) != sizeof(seq))
			_exit(3);
		raise(SIGKILL);
		_exit(2);
	}
	close(pfd[1]);
	uint64_t acked = 0;
	CHECK(read(pfd[0], &acked, sizeof(acked)) == sizeof(acked));
	close(pfd[0]);
	int status;
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	CHECK(acked == 8);
	model_apply(m, 13, STATUS_RET, DATE0 + 902);
	w = open_writer(dir, 0, 1);
	CHECK(watermark() == 8 && mismatches(m, 210) == 0);
	CHECK_STREQ(cursor_of(w, "gateway"), "g3");
	CHECK_STREQ(cursor_of(w, "iys:600123"), "p2");
	r = apply_o(w, c, 1, 17, "gateway", "g2", "g4");
	CHECKF(r.code == 409 && strstr(r.message, "\"g3\""), "%u %s", r.code,
	       r.message);
	r = apply(w, c, 1, 18);
	CHECK(r.code == 409);
	writer_close(w);
	free(m);
}

/* Requests that reach the writer together are judged in arrival order:
 * the second batch of an origin sees the cursor the first moved, a stale
 * one is refused, and one of the other kind too. */
static void test_origins_group(void)
{
	char dir[300], err[512] = "";
	struct model *m = calloc(1, sizeof(*m));
	struct chg a[2], b[1], c[1], d[1];
	new_dir(dir, sizeof(dir), 20, m);
	struct writer_options o = {
		.data_dir = dir, .index_load = INDEX_LOAD_ANON, .n_queues = 1,
	};
	struct writer *w = NULL;
	CHECKF(writer_open(&o, &w, err, sizeof(err)) == 0, "%s", err);
	if (w == NULL)
		return;
	chg_make(&a[0], 2, STATUS_RET, DATE0 + 100, 0);
	chg_make(&a[1], 3, STATUS_RET, DATE0 + 100, 0);
	chg_make(&b[0], 4, STATUS_RET, DATE0 + 100, 0);
	chg_make(&c[0], 5, STATUS_RET, DATE0 + 100, 0);
	chg_make(&d[0], 6, STATUS_RET, DATE0 + 100, 1);
	model_apply(m, 2, STATUS_RET, DATE0 + 100);
	model_apply(m, 3, STATUS_RET, DATE0 + 100);
	model_apply(m, 4, STATUS_RET, DATE0 + 100);
	struct writer_reply now;
	/* Queued before the thread runs: its first group holds all four. */
	CHECK(submit_o(w, 0, a, 2, 1, "f", "", "1", &now) == 1);
	CHECK(submit_o(w, 0, b, 1, 2, "f", "1", "2", &now) == 1);
	CHECK(submit_o(w, 0, c, 1, 3, "f", "1", "3", &now) == 1);
	CHECK(submit_o(w, 0, d, 1, 4, NULL, NULL, NULL, &now) == 1);
	CHECK(writer_start(w, err, sizeof(err)) == 0);
	struct waiter wt = { .n = 0 };
	wait_replies(w, 0, &wt, 4);
	for (unsigned i = 0; i < wt.n; i++) {
		const struct writer_reply *x = &wt.got[i];
		switch (x->id) {
		case 1:
			CHECK(x->code == 0 && x->applied == 2);
			break;
		case 2:
			CHECK(x->code == 0 && x->applied == 1);
			break;
		case 3:
			CHECKF(x->code == 409 && strstr(x->message, "\"2\""),
			       "%u %s", x->code, x->message);
			break;
		default:
			CHECKF(x->code == 409, "%u %s", x->code, x->message);
		}
		/* One group: every reply tells the same watermark. */
		CHECK(x->code != 0 || x->applied_sequence == 3);
	}
	CHECK(watermark() == 3 && mismatches(m, 20) == 0);
	CHECK_STREQ(cursor_of(w, "f"), "2");
	writer_close(w);

	struct changelog *log = NULL;
	CHECK(changelog_open(dir, NULL, &log, err, sizeof(err)) == 0);
	if (log != NULL) {
		struct changelog_stats st;
		changelog_stats(log, &st);
		CHECK(st.records == 3 && st.commits == 2);
		CHECK(changelog_kind(log) == ORIGINS_ORIGIN);
		changelog_close(log);
	}
	free(m);
}

/* A directory fed without origins refuses an origin's batch, also after
 * its log was dropped behind a generation. */
static void test_sequence_kind_kept(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[2];
	new_dir(dir, sizeof(dir), 20, m);
	struct writer *w = open_writer(dir, 0, 1);
	chg_make(&c[0], 2, STATUS_RET, DATE0 + 100, 1);
	struct writer_reply r = apply(w, c, 1, 1);
	CHECK(r.code == 0 && r.applied_sequence == 1);
	chg_make(&c[1], 3, STATUS_RET, DATE0 + 100, 0);
	r = apply_o(w, &c[1], 1, 2, "f", "", "1");
	CHECKF(r.code == 409 && strstr(r.message, "with an origin"), "%u %s",
	       r.code, r.message);
	writer_close(w);
	/* Two more generations: the log is dropped through the first. */
	for (int i = 0; i < 2; i++) {
		w = open_writer(dir, 0, 1);
		chg_make(&c[0], 4 + (uint64_t)i, STATUS_RET, DATE0 + 100,
			 2 + (uint64_t)i);
		r = apply(w, c, 1, 3);
		CHECK(r.code == 0);
		writer_close(w);
	}
	/* Without any log: the generation alone keeps the kind. */
	char logdir[400];
	snprintf(logdir, sizeof(logdir), "%s/" CHANGELOG_DIR, dir);
	CHECK(fsutil_rm_tree(logdir) == 0);
	w = open_writer(dir, 0, 1);
	CHECK(watermark() == 3);
	r = apply_o(w, &c[1], 1, 4, "f", "", "1");
	CHECKF(r.code == 409, "%u %s", r.code, r.message);
	CHECK(lookup(3, NULL) == STATUS_ONAY);
	writer_close(w);
	free(m);
}

/* ---- local rejections (§11) ---- */

/* A local rejection of key k through reject_submit, as every port makes
 * it; waits for the reply. */
static struct writer_reply reject_k(struct writer *w, uint64_t k, uint64_t id)
{
	char text[64];
	int channel;
	key_text(k, text, sizeof(text), &channel);
	struct reject_input in = {
		.recipient = text, .recipient_len = strlen(text),
		.brand_code = key_brand(k), .channel = channel,
	};
	struct writer_reply now;
	int rc = reject_submit(w, 0, 1000 + id, id, submit_as, &in, &now);
	CHECK(rc >= 0);
	if (rc != 1)
		return now;
	struct waiter wt = { .n = 0 };
	wait_replies(w, 0, &wt, 1);
	return wt.got[0];
}

static size_t outbox_entries(struct writer *w, struct outbox_entry *e,
			     size_t max)
{
	return outbox_list(writer_outbox(w), NULL, NULL, e, max, NULL);
}

/* Origin "local" is unconditional: applied whatever after_cursor says,
 * its cursor the decimal position of its batch (alone and in a group of
 * two); RET only, with the reject right, brands bounded first; the order
 * rule still keeps a newer record; every local RET in the outbox, an İYS
 * RET of its key reconciling it; all of it across a restart. */
static void test_local_rejections(void)
{
	char dir[300], err[512] = "";
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[4];
	struct outbox_entry e[16];
	new_dir(dir, sizeof(dir), 20, m);
	struct writer *w = open_writer(dir, 0, 1);

	/* Through the one entrance every port uses: a key with a record
	 * and one without (a RET creates it). */
	struct writer_reply r = reject_k(w, 2, 1);
	CHECKF(r.code == 0 && r.applied == 1 && r.applied_sequence == 1,
	       "%u %s", r.code, r.message);
	CHECK(lookup(2, NULL) == STATUS_RET);
	CHECK_STREQ(cursor_of(w, "local"), "1");
	r = reject_k(w, 40, 2);
	CHECK(r.code == 0 && r.applied == 1 && r.applied_sequence == 2);
	CHECK(lookup(40, NULL) == STATUS_RET);
	CHECK_STREQ(cursor_of(w, "local"), "2");

	/* Any after_cursor, stale or made up, is applied. */
	int64_t now = (int64_t)time(NULL);
	chg_make(&c[0], 4, STATUS_RET, now, 0);
	r = apply_o(w, c, 1, 3, "local", "nonsense", "whatever");
	CHECKF(r.code == 0 && r.applied_sequence == 3, "%u %s", r.code,
	       r.message);
	CHECK_STREQ(cursor_of(w, "local"), "3");

	/* The order rule: a newer record stands (skipped), yet the RET is
	 * the log's and so the outbox's (see outbox.c). */
	chg_make(&c[0], 6, STATUS_RET, DATE0 - 100, 0);
	r = apply_o(w, c, 1, 4, "local", "", "x");
	CHECK(r.code == 0 && r.applied == 0 && r.skipped == 1);
	CHECK(lookup(6, NULL) == STATUS_ONAY);

	/* Refusals: ONAY (400), no changes (400), no reject right (403),
	 * a brand outside the list (403, before anything else). */
	chg_make(&c[0], 8, STATUS_ONAY, now, 0);
	r = apply_o(w, c, 1, 5, "local", "", "x");
	CHECKF(r.code == 400 && strstr(r.message, "RET only"), "%u %s",
	       r.code, r.message);
	r = apply_o(w, NULL, 0, 6, "local", "", "x");
	CHECKF(r.code == 400, "%u %s", r.code, r.message);
	struct principal applier = { .name = "feeder", .may_apply = true,
				     .all_brands = true };
	submit_as = &applier;
	chg_make(&c[0], 8, STATUS_RET, now, 0);
	r = apply_o(w, c, 1, 7, "local", "", "x");
	CHECKF(r.code == 403 && strstr(r.message, "reject"), "%u %s", r.code,
	       r.message);
	struct principal gw = { .name = "gw", .may_reject = true };
	uint32_t gw_brands[] = { 100 };
	gw.brands = gw_brands;
	gw.n_brands = 1;
	submit_as = &gw;
	r = reject_k(w, 1, 8); /* brand 101 */
	CHECKF(r.code == 403 && strstr(r.message, "brand_code 101"), "%u %s",
	       r.code, r.message);
	r = reject_k(w, 3, 9); /* brand 100 */
	CHECK(r.code == 0 && r.applied_sequence == 5);
	submit_as = NULL;
	/* Bad input is a 400 naming the field, before the writer. */
	struct reject_input bad = { .recipient = "nobody", .recipient_len = 6,
				    .brand_code = 100, .channel = CHANNEL_MESAJ };
	struct writer_reply now_r;
	CHECK(reject_submit(w, 0, 1, 1, NULL, &bad, &now_r) == 0);
	CHECKF(now_r.code == 400 && strncmp(now_r.message, "recipient", 9) == 0,
	       "%s", now_r.message);
	bad.recipient = "+905320000002";
	bad.recipient_len = strlen(bad.recipient);
	bad.channel = CHANNEL_EPOSTA;
	CHECK(reject_submit(w, 0, 1, 1, NULL, &bad, &now_r) == 0);
	CHECKF(now_r.code == 400 && strncmp(now_r.message, "channel", 7) == 0,
	       "%s", now_r.message);
	bad.channel = CHANNEL_MESAJ;
	bad.source = 34; /* IYS_WEB */
	CHECK(reject_submit(w, 0, 1, 1, NULL, &bad, &now_r) == 0);
	CHECKF(now_r.code == 400 && strncmp(now_r.message, "source", 6) == 0,
	       "%s", now_r.message);

	/* Two local batches in one group, both with stale cursors: both
	 * applied, the cursor the second's position. */
	chg_make(&c[0], 10, STATUS_RET, now, 0);
	chg_make(&c[1], 12, STATUS_RET, now, 0);
	chg_make(&c[2], 14, STATUS_RET, now, 0);
	struct writer_reply q;
	writer_close(w);
	struct writer_options o = {
		.data_dir = dir, .index_load = INDEX_LOAD_ANON, .n_queues = 1,
	};
	w = NULL;
	CHECKF(writer_open(&o, &w, err, sizeof(err)) == 0, "%s", err);
	if (w == NULL)
		return;
	CHECK_STREQ(cursor_of(w, "local"), "5");
	CHECK(submit_o(w, 0, c, 2, 10, "local", "1", "x", &q) == 1);
	CHECK(submit_o(w, 0, &c[2], 1, 11, "local", "2", "x", &q) == 1);
	CHECK(writer_start(w, err, sizeof(err)) == 0);
	struct waiter wt = { .n = 0 };
	wait_replies(w, 0, &wt, 2);
	for (unsigned i = 0; i < wt.n; i++)
		CHECKF(wt.got[i].code == 0 && wt.got[i].applied_sequence == 8,
		       "%u %s", wt.got[i].code, wt.got[i].message);
	CHECK_STREQ(cursor_of(w, "local"), "8");
	CHECK(lookup(10, NULL) == STATUS_RET && lookup(14, NULL) == STATUS_RET);

	/* The outbox: every local RET, in log order. */
	size_t n = outbox_entries(w, e, 16);
	uint64_t want[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	CHECK(n == 8);
	for (size_t i = 0; i < n && i < 8; i++)
		CHECK(e[i].sequence == want[i] && e[i].state == OUTBOX_QUEUED);
	CHECK(e[1].brand_code == 101 && e[1].source == 8 &&
	      e[1].consent_date >= now - 5);

	/* İYS's copy of key 2's RET comes back through the pull: that entry
	 * reconciles; an ONAY or an older RET reconciles nothing. */
	CHECK(outbox_mark_pushed(writer_outbox(w), 1, "iys-tx-1", 8, err,
				 sizeof(err)) == 0);
	chg_make(&c[0], 2, STATUS_RET, e[0].consent_date, 0);
	chg_make(&c[1], 40, STATUS_ONAY, now, 0);
	chg_make(&c[2], 4, STATUS_RET, e[2].consent_date - 1, 0);
	r = apply_o(w, c, 3, 12, "iys:101:HS", "", "a1");
	CHECKF(r.code == 0, "%u %s", r.code, r.message);
	n = outbox_entries(w, e, 16);
	CHECK(n == 7 && e[0].sequence == 2 && e[1].sequence == 3);
	CHECK(lookup(2, NULL) == STATUS_RET);

	/* A restart keeps the cursor and the outbox. */
	writer_close(w);
	w = open_writer(dir, 0, 1);
	CHECK_STREQ(cursor_of(w, "local"), "8");
	CHECK(outbox_entries(w, e, 16) == 7 && e[0].sequence == 2);
	writer_close(w);

	/* A directory of the sequence kind refuses it with 409. */
	new_dir(dir, sizeof(dir), 20, m);
	w = open_writer(dir, 0, 1);
	chg_make(&c[0], 2, STATUS_RET, DATE0 + 100, 1);
	r = apply(w, c, 1, 1);
	CHECK(r.code == 0);
	r = reject_k(w, 4, 2);
	CHECKF(r.code == 409 && strstr(r.message, "without origin"), "%u %s",
	       r.code, r.message);
	CHECK(outbox_entries(w, e, 16) == 0);
	writer_close(w);
	free(m);
}

/* Reads a snapshot stream file back: its header's sequence, kind and
 * first cursor (into cursor), and its record count. */
static uint64_t read_back(const char *path, uint64_t *seq, uint32_t *kind,
			  char *cursor, size_t cap)
{
	int fd = open(path, O_RDONLY);
	struct stream_reader *r;
	struct stream_item it;
	CHECK(stream_reader_create(fd, STREAM_FRAME_MAX_DEFAULT, true, &r) == 0);
	cursor[0] = '\0';
	int rc;
	while ((rc = stream_reader_next(r, &it)) == 1)
		if (it.kind == STREAM_ITEM_HEADER) {
			*seq = it.header->sequence;
			*kind = it.header->origins_kind;
			if (it.header->n_origins > 0)
				snprintf(cursor, cap, "%s",
					 it.header->origins[0]->cursor);
		}
	CHECKF(rc == 0, "%s", stream_reader_error(r));
	uint64_t n = stream_reader_records(r);
	stream_reader_destroy(r);
	close(fd);
	return n;
}

static uint64_t dump_view(const struct writer_view *v, const char *path)
{
	char err[512];
	uint64_t n = 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	struct build_dump_source src = {
		.ix = v->ix, .emails_fd = v->emails_fd,
		.emails_name = v->emails_name, .extra = v->extra,
		.watermark = v->watermark, .created_at = v->data_as_of,
		.origins = v->origins, .origin = "writer_test",
	};
	int rc = build_dump_source(&src, fd, &n, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	close(fd);
	return n;
}

/* GET /v1/snapshot's view: the watermark, the cursors at it, the e-mail
 * addresses of the generation's file and of the list since; the index
 * stays readable while held across a swap (a rebuild). A peer's snapshot
 * taken by a writer without a generation brings its cursors, so the next
 * batch follows the peer's cursor and a stale one is 409. */
static void test_view(void)
{
	char dir[300], dir2[300], path[300], cur[64], err[512];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[2];
	uint64_t seq = 0;
	uint32_t kind = 0;
	new_dir(dir, sizeof(dir), 50, m);
	struct writer *w = open_writer(dir, 0, 1);
	chg_make(&c[0], 1001, STATUS_ONAY, DATE0 + 10, 0); /* a new e-mail */
	chg_make(&c[1], 2, STATUS_RET, DATE0 + 900, 0);
	struct writer_reply r = apply_o(w, c, 2, 1, "iys:1", "", "p1");
	CHECKF(r.code == 0 && r.applied_sequence == 2, "%u %s", r.code,
	       r.message);

	struct writer_view v;
	int rc = writer_view(w, &v, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	if (rc == 0) {
		size_t cl = 0;
		const char *pc = origins_get(v.origins, "iys:1", 5, &cl);
		CHECK(v.watermark == 2 && origins_kind(v.origins) == ORIGINS_ORIGIN);
		CHECK(pc != NULL && cl == 2 && memcmp(pc, "p1", 2) == 0);
		CHECK(v.emails_fd >= 0 && v.extra != NULL && v.extra->n == 1);
		snprintf(path, sizeof(path), "%s/view-1.bin", tmpdir);
		CHECK(dump_view(&v, path) == 51);
		CHECK(read_back(path, &seq, &kind, cur, sizeof(cur)) == 51);
		CHECK(seq == 2 && kind == ORIGINS_ORIGIN);
		CHECK_STREQ(cur, "p1");

		/* A rebuild swaps a new table in; the held one stays whole. */
		const struct index *before = live_index();
		writer_rebuild(w);
		for (int i = 0; i < 1000 && live_index() == before; i++)
			usleep(10000);
		CHECK(live_index() != before);
		CHECK(live_index() != v.ix);
		CHECK(dump_view(&v, path) == 51);
		writer_view_release(&v);
	}
	writer_stop(w);
	rc = writer_view(w, &v, err, sizeof(err));
	CHECKF(rc == -ESHUTDOWN, "%d %s", rc, err);
	writer_close(w);

	/* The bootstrap: the peer's snapshot into a DIR without one. */
	snprintf(dir2, sizeof(dir2), "%s/empty-%d", tmpdir, ++n_dirs);
	w = open_writer(dir2, 0, 1);
	rc = writer_view(w, &v, err, sizeof(err));
	CHECKF(rc == -ENOENT, "%d %s", rc, err);
	struct generation *g = calloc(1, sizeof(*g));
	struct build_result res;
	int fd = open(path, O_RDONLY);
	rc = build_index(fd, g, &res, err, sizeof(err));
	close(fd);
	CHECKF(rc == 0, "%s", err);
	rc = writer_take_snapshot(w, g, err, sizeof(err));
	CHECKF(rc == 0, "%s", err);
	CHECK_STREQ(cursor_of(w, "iys:1"), "p1");
	chg_make(&c[0], 4, STATUS_RET, DATE0 + 950, 0);
	r = apply_o(w, c, 1, 2, "iys:1", "", "p2");
	CHECKF(r.code == 409, "%u %s", r.code, r.message);
	r = apply_o(w, c, 1, 3, "iys:1", "p1", "p2");
	CHECKF(r.code == 0 && r.applied_sequence == 3, "%u %s %" PRIu64,
	       r.code, r.message, r.applied_sequence);
	writer_close(w);
	verify_dir(dir2);
	uint64_t newest = 0;
	struct origins *o = NULL;
	CHECK(generation_newest(dir2, &newest) == 0);
	CHECK(generation_origins(dir2, newest, &o, err, sizeof(err)) == 0);
	size_t cl = 0;
	const char *pc = o ? origins_get(o, "iys:1", 5, &cl) : NULL;
	CHECK(pc != NULL && cl == 2 && memcmp(pc, "p2", 2) == 0);
	origins_destroy(o);
	free(m);
}

/* ---- replicated mode (DESIGN §9) ----
 * The writer's half of it, with the stream played by this test: what the
 * publisher is handed goes through core/natsmsg (encode, then decode, as
 * on the wire) and comes back through writer_submit_stream at the
 * sequence the test gives it. tests/e2e/test_fleet.py runs the real
 * stream. */

static struct writer_req *published[8];
static unsigned n_published;

static int test_publish(void *ctx, struct writer_req *req)
{
	(void)ctx;
	if (n_published == 8)
		return -EAGAIN;
	published[n_published++] = req;
	return 0;
}

/* The message the publisher was handed, as a replica decodes it. */
static Consent__V1__ApplyRequest *wire(struct writer_req *req)
{
	struct natsmsg_out out;
	char err[200];
	Consent__V1__ApplyRequest *a = NULL;
	const Consent__V1__ApplyRequest *in = writer_req_apply(req);
	CHECK(natsmsg_encode(in, &out, err, sizeof(err)) == 0);
	CHECK(natsmsg_decode(out.subject, out.data, out.len,
			     in->origin[0] ? in->origin : NULL,
			     in->after_cursor[0] ? in->after_cursor : NULL,
			     in->cursor[0] ? in->cursor : NULL, &a, err,
			     sizeof(err)) == 0);
	natsmsg_out_fini(&out);
	return a;
}

static struct writer_reply reply_of(struct writer *w)
{
	struct waiter wt = { .n = 0 };
	wait_replies(w, 0, &wt, 1);
	return wt.got[0];
}

static void test_replicated(void)
{
	char dir[300];
	struct model *m = calloc(1, sizeof(*m));
	struct chg c[4];
	struct writer_reply now, r;
	new_dir(dir, sizeof(dir), 40, m);
	struct writer *w = open_writer(dir, 0, 1);
	writer_set_publisher(w, test_publish, NULL);
	n_published = 0;

	/* An Apply is published, not queued; its reply waits for the
	 * message's outcome here. Both changes take the message's position. */
	chg_make(&c[0], 1, STATUS_RET, DATE0 + 500, 0);
	chg_make(&c[1], 2, STATUS_RET, DATE0 + 500, 0);
	model_apply(m, 1, STATUS_RET, DATE0 + 500);
	model_apply(m, 2, STATUS_RET, DATE0 + 500);
	CHECK(submit_o(w, 0, c, 2, 1, "o", "", "1", &now) == 1);
	CHECK(n_published == 1);
	Consent__V1__ApplyRequest *msg = wire(published[0]);
	writer_req_await(w, published[0], 7, UINT64_MAX);
	CHECK(writer_submit_stream(w, msg, 7, 1700000007, NULL) == 0);
	r = reply_of(w);
	CHECKF(r.code == 0 && r.applied == 2 && r.applied_sequence == 7,
	       "%u %s %u %" PRIu64, r.code, r.message, r.applied,
	       r.applied_sequence);
	CHECK(writer_stream_wait(w, 7, 5000) == 1);
	CHECK(watermark() == 7 && mismatches(m, 40) == 0);
	CHECK_STREQ(cursor_of(w, "o"), "1");

	/* A heartbeat message: the position and the freshness move, no log. */
	Consent__V1__ApplyRequest *hb = malloc(sizeof(*hb));
	consent__v1__apply_request__init(hb);
	CHECK(writer_submit_stream(w, hb, 8, 1700000008, NULL) == 0);
	CHECK(writer_stream_wait(w, 8, 5000) == 1);
	struct index_info info;
	index_info(live_index(), &info);
	CHECK(info.watermark == 8 && info.data_as_of == 1700000008);

	/* A message the cursor rule refuses: 409 to the Apply waiting for it,
	 * applied nowhere; its position is used all the same. */
	chg_make(&c[0], 3, STATUS_RET, DATE0 + 900, 0);
	CHECK(submit_o(w, 0, c, 1, 2, "o", "0", "2", &now) == 1);
	msg = wire(published[1]);
	CHECK(writer_submit_stream(w, msg, 9, 1700000009, NULL) == 0);
	CHECK(writer_stream_wait(w, 9, 5000) == 1);
	writer_req_await(w, published[1], 9, UINT64_MAX); /* after: the ring */
	r = reply_of(w);
	CHECKF(r.code == 409 && strstr(r.message, "\"1\""), "%u %s", r.code,
	       r.message);
	CHECK(lookup(3, NULL) == STATUS_ONAY && watermark() == 9);

	/* A message that cannot be read is refused in its place (400). */
	CHECK(writer_submit_stream(w, NULL, 10, 1700000010, "bad payload") == 0);
	CHECK(writer_stream_wait(w, 10, 5000) == 1);
	/* A redelivered message at or below the watermark changes nothing. */
	chg_make(&c[0], 4, STATUS_RET, DATE0 + 900, 0);
	CHECK(submit_o(w, 0, c, 1, 3, "o", "1", "2", &now) == 1);
	msg = wire(published[2]);
	writer_req_fail(w, published[2], 503, "test: not published");
	r = reply_of(w);
	CHECK(r.code == 503);
	CHECK(writer_submit_stream(w, msg, 5, 1700000005, NULL) == 0);
	/* An Apply whose message never comes here: 503 at its deadline. */
	CHECK(submit_o(w, 0, c, 1, 4, "o", "1", "2", &now) == 1);
	writer_req_await(w, published[3], 50, 1);
	writer_expire(w, 2);
	r = reply_of(w);
	CHECK(r.code == 503 && strstr(r.message, "sequence 50"));
	CHECK(lookup(4, NULL) == STATUS_ONAY && watermark() == 10);
	CHECK(writer_stream_done(w) == 10);

	/* Restart: the log holds message 7; the generation written at the
	 * stop holds the positions up to 10. */
	writer_close(w);
	w = open_writer(dir, 0, 1);
	CHECK(watermark() == 10 && writer_stream_done(w) == 10);
	CHECK(mismatches(m, 40) == 0);
	CHECK_STREQ(cursor_of(w, "o"), "1");
	writer_close(w);
	free(m);
}

/* §10: the writer's evidence store: a built directory's snapshot, each
 * group's changes after the log, the head published, carried by the
 * generation a stop writes, recovered from the log, off; and a history
 * that cannot be written faulting the writer. */
static void test_history(void)
{
	char dir[300], gen_path[400], cmd[500], err[300];
	struct chg c[4];
	uint64_t seq = 0, gen = 0;
	uint8_t head[32], gh[32];

	snprintf(dir, sizeof(dir), "%s/data-%d", tmpdir, ++n_dirs);
	build_into(dir, 200, 5, &gen);
	/* consentctl build put the snapshot in history at its watermark,
	 * and its generation carries the head. */
	CHECK(generation_chain(dir, gen, &seq, gh, err, sizeof(err)) == 1 &&
	      seq == 5);
	struct writer *w = open_writer(dir, 0, 1);
	struct history *h = writer_history(w);
	CHECK(h != NULL);
	struct history_state st;
	history_state(h, &st);
	CHECK(st.records == 200 && st.first_sequence == 5 &&
	      st.last_sequence == 5 && memcmp(st.head, gh, 32) == 0);
	CHECK(writer_chain(w, &seq, head) && seq == 5 &&
	      memcmp(head, gh, 32) == 0);

	/* A group: appended in log order, the head published before the
	 * reply. */
	chg_make(&c[0], 7, STATUS_RET, DATE0 + 5000, 6);
	chg_make(&c[1], 3, STATUS_ONAY, DATE0 - 5000, 7); /* older: skipped */
	chg_make(&c[2], 7, STATUS_ONAY, DATE0 + 6000, 8);
	struct writer_reply r = apply(w, c, 3, 1);
	CHECKF(r.code == 0 && r.applied == 2 && r.skipped == 1, "%u %s",
	       r.code, r.message);
	history_state(h, &st);
	CHECK(st.records == 203 && st.last_sequence == 8);
	CHECK(writer_chain(w, &seq, head) && seq == 8 &&
	      memcmp(head, st.head, 32) == 0);
	struct history_entry e[4];
	size_t n = 0;
	CHECK(history_key(h, c[0].text, c[0].c.brand_code, (int)c[0].c.channel,
			  RTYPE_BIREYSEL, e, 4, &n, err, sizeof(err)) == 0);
	CHECK(n == 3 && e[0].consent.sequence == 5 &&
	      e[1].consent.sequence == 6 && e[2].consent.sequence == 8);
	/* The skipped change is evidence too. */
	CHECK(history_key(h, c[1].text, c[1].c.brand_code, (int)c[1].c.channel,
			  RTYPE_BIREYSEL, e, 4, &n, err, sizeof(err)) == 0 &&
	      n == 2 && e[1].consent.sequence == 7);
	writer_close(w);

	/* The stop's generation carries the head at its watermark. */
	CHECK(generation_newest(dir, &gen) == 0);
	CHECK(generation_chain(dir, gen, &seq, gh, err, sizeof(err)) == 1 &&
	      seq == 8 && memcmp(gh, head, 32) == 0);
	generation_path(dir, gen, gen_path, sizeof(gen_path));

	/* History gone (a new disk): open copies back what the log holds. */
	snprintf(cmd, sizeof(cmd), "rm -rf %s/" HISTORY_DIR, dir);
	CHECK(system(cmd) == 0);
	w = open_writer(dir, 0, 1);
	history_state(writer_history(w), &st);
	CHECK(st.records == 3 && st.first_sequence == 6 &&
	      st.last_sequence == 8);
	writer_close(w);

	/* --history off: no store, no head. */
	struct writer_options o = {
		.data_dir = dir, .index_load = INDEX_LOAD_ANON, .n_queues = 1,
		.history_off = true,
	};
	w = NULL;
	CHECKF(writer_open(&o, &w, err, sizeof(err)) == 0, "%s", err);
	CHECK(w != NULL && writer_history(w) == NULL &&
	      !writer_chain(w, &seq, head));
	writer_close(w);

	/* A history segment that may not grow: the change log takes the
	 * group, history refuses it, the writer faults (503, named). */
	snprintf(dir, sizeof(dir), "%s/data-%d", tmpdir, ++n_dirs);
	build_into(dir, 400, 5, NULL);
	w = open_writer(dir, 0, 1);
	char hseg[1100] = "";
	snprintf(cmd, sizeof(cmd), "%s/" HISTORY_DIR, dir);
	DIR *d = opendir(cmd);
	struct dirent *de;
	while (d && (de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".hist"))
			snprintf(hseg, sizeof(hseg), "%s/%s", cmd, de->d_name);
	if (d)
		closedir(d);
	struct stat sb;
	CHECK(hseg[0] && stat(hseg, &sb) == 0 && sb.st_size > 8192);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)sb.st_size;
	signal(SIGXFSZ, SIG_IGN);
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
	chg_make(&c[0], 9, STATUS_RET, DATE0 + 7000, 6);
	r = apply(w, c, 1, 2);
	setrlimit(RLIMIT_FSIZE, &old);
	CHECKF(r.code == 503 && strstr(r.message, "history"), "%u %s", r.code,
	       r.message);
	CHECK(writer_fault(w, NULL, 0));
	r = apply(w, c, 1, 3);
	CHECK(r.code == 503);
	writer_close(w);
	/* Restart: the log held it; history gets it back. */
	w = open_writer(dir, 0, 1);
	CHECK(!writer_fault(w, NULL, 0) && watermark() == 6);
	history_state(writer_history(w), &st);
	CHECK(st.records == 401 && st.last_sequence == 6);
	writer_close(w);
}

int main(void)
{
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_apply_order_replay);
	RUN(test_bad_requests);
	RUN(test_growth_and_restart);
	RUN(test_crash_replay);
	RUN(test_snapshot_take);
	RUN(test_log_failure);
	RUN(test_concurrent_submitters);
	RUN(test_no_generation);
	RUN(test_damaged_log_refused);
	RUN(test_origins);
	RUN(test_origins_group);
	RUN(test_view);
	RUN(test_sequence_kind_kept);
	RUN(test_local_rejections);
	RUN(test_replicated);
	RUN(test_history);
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return check_summary();
}
