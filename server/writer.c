/*
 * writer: the single writer thread (server/writer.h).
 *
 * Durability. A change is acknowledged only after the change log holds it
 * on disk (changelog_append: one write, one fdatasync). Requests that
 * arrive while an fdatasync runs wait in the inbox and go to disk together
 * in the next one (group commit), so the fsync cost is shared by every
 * connection that applies at once. Only after the append are the changes
 * applied to the index, and only after the index (and its header
 * watermark) holds them are the replies handed back, so a client that saw
 * an acknowledgement never reads an older state afterwards.
 *
 * Order. Workers push requests on a lock-free stack (the inbox); the
 * writer takes the whole stack at once and reverses it, which restores
 * arrival order. Within one group the changes of every request are sorted
 * by sequence; a change at or below the applied watermark, or a sequence a
 * request earlier in the group already carries, is a replay: skipped,
 * counted, and answered as processed (it is durable already). The index's
 * own order rule (index_apply_writer) makes the result independent of the
 * arrival order of different sequences for one key.
 *
 * Generations. Four things make one, all on this thread, all by copying an
 * index into another table (build_merge in index/build.c) and writing it
 * with build_publish (temp directory, fsync, rename, fsync of DIR):
 *  - growth: the table reached its load limit (index_apply_writer says
 *    -ENOSPC): a table 1.5 times as large is filled from the served one
 *    and swapped in at once with live_publish (readers keep the old one
 *    until the RCU grace period ends), then written as a checkpoint;
 *  - a snapshot built in the background (in a staging directory, never a
 *    generation of DIR): the change log past the snapshot's watermark is
 *    replayed into it; if the log may no longer reach back that far (it
 *    was dropped past the snapshot's watermark) the served index is merged
 *    in too, under the same order rule, so nothing acknowledged is lost;
 *  - a rebuild on request (SIGUSR1): a fresh table and hash secret;
 *  - a checkpoint every so many changes and at a graceful stop, so that a
 *    restart replays little.
 * Each new generation's header watermark is the applied watermark: what
 * it contains. Two generations stay on disk: the new one and the one
 * served before it, as a fallback should the newest be damaged; the
 * change log is dropped only through the fallback's watermark, so either
 * generation plus the log gives back every acknowledged change.
 *
 * E-mails. A table keeps e-mail keys as fingerprints in its own secret, so
 * copying one needs the addresses: the `emails` file of the generation the
 * index came from, plus the addresses this writer inserted since (kept in
 * memory, compact, and written into the next generation's file).
 *
 * Failure. A failed append (write or fdatasync) fails the log for good
 * (never retried: the kernel may have dropped the pages). The writer then
 * refuses every Apply with 503 and the log's message, keeps serving what
 * it has, and writer_fault turns /readyz false. Restart reopens the log.
 */
#include "server/writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/tokens.h"
#include "index/build.h"
#include "index/changelog.h"
#include "index/datadir.h"
#include "index/table.h"
#include "proto/consent.pb-c.h"
#include "server/live.h"
#include "server/metrics.h"

#define WRITER_CHECKPOINT_MIN 1000000u /* auto checkpoint: at least this */
#define WRITER_GROW_MIN 4096u          /* records added by a growth, at least */
#define STAGING_PREFIX ".snapshot-"
#define TMP_GEN_PREFIX ".tmp-gen-"     /* index/build.c's temp directories */

/* One Apply request, from submission to completion. */
struct writer_req {
	struct writer_req *next;  /* inbox, then its queue's done list */
	unsigned queue;
	Consent__V1__ApplyRequest *apply; /* freed once applied */
	struct writer_reply reply;
};

struct writer_queue {
	/* Pushed by the writer (release), taken whole by the worker
	 * (acquire exchange in writer_take). */
	_Alignas(64) _Atomic(struct writer_req *) done;
	int efd;
	bool wake; /* writer thread only: signal it after this group */
};

/* E-mail addresses inserted since a generation's file: records of brand
 * (4 bytes), rtype (1), length (1), address. */
struct email_list {
	uint8_t *p;
	size_t len, cap;
	uint64_t n;
};

#define EMAIL_HEAD 6

/* An index and where its e-mail addresses are. */
struct writer_gen {
	struct index *ix;
	char emails_dir[PATH_MAX]; /* "" : no emails file */
	uint64_t emails_gen;
	struct email_list extra;
	bool served;               /* live_publish'd: swap, never destroy */
};

/* One change of a group, for sorting. */
struct writer_chg {
	const Consent__V1__Consent *c;
	struct writer_req *r;
	uint32_t order;
};

struct writer {
	struct writer_options opt;
	char dir[PATH_MAX];
	struct changelog *log;
	struct metrics *m;
	struct metrics *own_metrics; /* when the options gave none (tests) */
	struct writer_queue *queues;
	int efd;
	pthread_t thread;
	bool started;
	/* Pushed by workers (release CAS), taken by the writer (acquire). */
	_Atomic(struct writer_req *) inbox;
	atomic_bool stop;
	/* Read by workers to refuse early; set by the writer (release) after
	 * cur has an index (acquire in writer_submit). */
	atomic_bool has_index;

	/* The writer thread's (writer_open's before the thread starts). */
	struct writer_gen cur;
	uint64_t gen;            /* cur's generation number on disk, 0: none */
	uint64_t file_watermark; /* the watermark of that file */
	uint64_t prev_gen;       /* the fallback kept on disk, 0: none */
	uint64_t prev_watermark;
	uint64_t log_floor;      /* the log may lack records <= this */
	uint64_t applied;        /* highest sequence durably processed */
	int64_t created_at;
	int64_t data_as_of;
	uint64_t since_checkpoint;
	bool need_checkpoint;
	struct writer_chg *chg;
	size_t chg_cap;
	Consent__V1__Consent **ptrs;
	size_t ptrs_cap;

	/* Requests from main, under mu. */
	pthread_mutex_t mu;
	char take_dir[PATH_MAX];
	uint64_t take_gen;
	bool take_pending;
	bool rebuild_pending;

	/* Set once by the writer: the message first, then the flag with
	 * release (acquire in writer_fault and writer_submit). */
	atomic_bool failed;
	char fault[200];
};

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

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "consentd: writer: %s\n", line);
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void efd_signal(int fd)
{
	uint64_t one = 1;
	/* Cannot block: an eventfd write waits only when the counter would
	 * pass 2^64 - 2, and every reader resets it. */
	while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static void writer_set_fault(struct writer *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void writer_set_fault(struct writer *w, const char *fmt, ...)
{
	if (atomic_load_explicit(&w->failed, memory_order_relaxed))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->fault, sizeof(w->fault), fmt, ap);
	va_end(ap);
	/* Release: pairs with the acquire loads in writer_fault and
	 * writer_submit, which then read the complete message. */
	atomic_store_explicit(&w->failed, true, memory_order_release);
	say("%s; refusing Applies until restarted", w->fault);
}

/* ---- e-mail lists ---- */

static int email_list_add(struct email_list *l, uint32_t brand, int rtype,
			  const struct recipient *r)
{
	size_t need = EMAIL_HEAD + r->email_len;
	if (l->cap - l->len < need) {
		size_t cap = l->cap ? l->cap * 2 : 64 << 10;
		while (cap - l->len < need)
			cap *= 2;
		uint8_t *p = realloc(l->p, cap);
		if (p == NULL)
			return -ENOMEM;
		l->p = p;
		l->cap = cap;
	}
	uint8_t *p = l->p + l->len;
	memcpy(p, &brand, 4);
	p[4] = (uint8_t)rtype;
	p[5] = (uint8_t)r->email_len; /* <= RECIPIENT_EMAIL_MAX (254) */
	memcpy(p + EMAIL_HEAD, r->email, r->email_len);
	l->len += need;
	l->n++;
	return 0;
}

static void email_list_clear(struct email_list *l)
{
	free(l->p);
	memset(l, 0, sizeof(*l));
}

/* struct build_emails' extra: each listed address as a datadir_email. */
static int email_list_each(void *arg, build_email_fn fn, void *fn_arg)
{
	const struct email_list *l = arg;
	struct datadir_email e;
	for (size_t off = 0; off < l->len;) {
		const uint8_t *p = l->p + off;
		memcpy(&e.brand_code, p, 4);
		e.rtype = p[4];
		e.channel = CHANNEL_EPOSTA;
		e.recipient.kind = RECIPIENT_EMAIL;
		e.recipient.phone = 0;
		e.recipient.email_len = p[5];
		memcpy(e.recipient.email, p + EMAIL_HEAD, p[5]);
		e.recipient.email[p[5]] = '\0';
		off += EMAIL_HEAD + p[5];
		int rc = fn(&e, fn_arg);
		if (rc != 0)
			return rc;
	}
	return 0;
}

static int email_list_add_cb(const struct datadir_email *e, void *arg)
{
	return email_list_add(arg, e->brand_code, e->rtype, &e->recipient);
}

static struct build_emails writer_emails(struct writer_gen *g)
{
	struct build_emails em = {
		.dir = g->emails_dir[0] ? g->emails_dir : NULL,
		.generation = g->emails_gen,
		.extra = email_list_each,
		.extra_arg = &g->extra,
	};
	return em;
}

/* ---- directories ---- */

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void rm_tree(const char *path)
{
	nftw(path, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

/* Generation number of a DIR entry named like datadir's, else 0. */
static uint64_t gen_of_name(const char *dir, const char *name)
{
	if (strncmp(name, "gen-", 4) != 0 || strlen(name) != 24)
		return 0;
	uint64_t g = 0;
	for (const char *p = name + 4; *p; p++) {
		if (*p < '0' || *p > '9' || g > (UINT64_MAX - 9) / 10)
			return 0;
		g = g * 10 + (uint64_t)(*p - '0');
	}
	/* The name must be the one datadir gives that number. */
	char want[PATH_MAX];
	if (datadir_generation_path(dir, g, want, sizeof(want)) < 0)
		return 0;
	return strcmp(want + strlen(dir) + 1, name) == 0 ? g : 0;
}

/* Removes what crashed builds left (temp generations, staging). Called
 * with the change log's lock held, so no other server uses DIR. */
static void writer_remove_leftovers(const char *dir)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, TMP_GEN_PREFIX, strlen(TMP_GEN_PREFIX)) &&
		    strncmp(de->d_name, STAGING_PREFIX, strlen(STAGING_PREFIX)))
			continue;
		char path[PATH_MAX];
		int n = snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (n < 0 || (size_t)n >= sizeof(path))
			continue;
		say("removing %s (left by an unfinished build)", path);
		rm_tree(path);
	}
	closedir(d);
	fsync_dir(dir);
}

/* Removes every generation of DIR but keep and keep2. Each is first
 * renamed out of the generations' namespace (one atomic step), so a crash
 * while its files go leaves a temp directory writer_open removes, never a
 * generation with half its files. */
static void writer_prune(struct writer *w, uint64_t keep, uint64_t keep2)
{
	DIR *d = opendir(w->dir);
	if (d == NULL)
		return;
	struct dirent *de;
	uint64_t *gone = NULL;
	size_t n = 0, cap = 0;
	while ((de = readdir(d)) != NULL) {
		uint64_t g = gen_of_name(w->dir, de->d_name);
		if (g == 0 || g == keep || g == keep2)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 8;
			uint64_t *p = realloc(gone, nc * sizeof(*p));
			if (p == NULL)
				break;
			gone = p;
			cap = nc;
		}
		gone[n++] = g;
	}
	closedir(d);
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX], tmp[PATH_MAX];
		if (datadir_generation_path(w->dir, gone[i], path,
					    sizeof(path)) < 0 ||
		    snprintf(tmp, sizeof(tmp), "%s/" TMP_GEN_PREFIX "%" PRIu64
			     ".del", w->dir, gone[i]) >= (int)sizeof(tmp))
			continue;
		rm_tree(tmp);
		if (rename(path, tmp) == 0)
			rm_tree(tmp);
	}
	if (n)
		fsync_dir(w->dir);
	free(gone);
}

/* ---- applying ---- */

static uint8_t writer_source(int32_t source)
{
	/* Source is open (DESIGN §1.1): unknown values are SOURCE_OTHER, as
	 * the builder stores them. */
	if (source == SOURCE_NONE)
		return SOURCE_NONE;
	return enums_source_valid(source) ? (uint8_t)source : SOURCE_OTHER;
}

/* Copies g's index into a table for `capacity` records (0: 1.5 times the
 * present capacity) with a fresh secret, and puts it in g's place; a
 * served index is swapped in at once (live_publish). */
static int writer_grow(struct writer *w, struct writer_gen *g,
		       uint64_t capacity, const char *why)
{
	struct index_info info;
	char err[512];
	double t0 = mono_s();

	index_info(g->ix, &info);
	if (capacity == 0) {
		uint64_t more = info.capacity / 2;
		capacity = info.capacity + (more > WRITER_GROW_MIN
						    ? more : WRITER_GROW_MIN);
	}
	if (capacity < info.n_records + 1)
		capacity = info.n_records + 1;
	struct index *n = NULL;
	int rc;
	for (;;) {
		rc = index_create(capacity, NULL, &n);
		if (rc < 0) {
			say("growing the table to %" PRIu64 " records: %s",
			    capacity, strerror(-rc));
			return rc;
		}
		struct build_emails em = writer_emails(g);
		rc = build_merge(n, g->ix, &em, NULL, NULL, err, sizeof(err));
		if (rc != -ENOSPC)
			break;
		index_destroy(n); /* cannot happen: capacity >= records */
		capacity += capacity / 2;
	}
	if (rc < 0) {
		index_destroy(n);
		say("copying the table: %s", err);
		return rc;
	}
	index_set_meta_writer(n, info.generation, info.watermark,
			      info.created_at, info.data_as_of);
	double t_copy = mono_s();
	struct index *old = g->ix;
	g->ix = n;
	if (g == &w->cur)
		w->need_checkpoint = true;
	if (g->served) {
		live_publish(n); /* destroys old after the grace period */
		metrics_inc(&w->m->generation_swaps);
	} else {
		index_destroy(old);
	}
	struct index_info ni;
	index_info(n, &ni);
	say("%s: new table for %" PRIu64 " records (%" PRIu64 " held, %"
	    PRIu64 " MiB): copy %.2f s, swap %.2f s", why, ni.capacity,
	    ni.n_records, ni.bytes >> 20, t_copy - t0, mono_s() - t_copy);
	return 0;
}

/* Applies one change to g, growing the table when it is full. Returns
 * INDEX_INSERTED, INDEX_UPDATED or INDEX_SKIPPED; -EINVAL for a change
 * the index cannot hold (logged, skipped by the callers); -ENOMEM. */
static int writer_apply(struct writer *w, struct writer_gen *g,
			const Consent__V1__Consent *c)
{
	const char *text = c->recipient ? c->recipient : "";
	const char *why = NULL;
	struct recipient r;

	if (recipient_normalize(text, strlen(text), &r, &why) < 0)
		return -EINVAL;
	struct consent_value v = {
		.status = (uint8_t)c->status,
		.source = writer_source(c->source),
		.consent_date = c->consent_date,
	};
	for (int tries = 0;; tries++) {
		struct index_key key;
		index_key_make(g->ix, &r, c->brand_code,
			       (int)c->recipient_type, (int)c->channel, &key);
		int rc = index_apply_writer(g->ix, &key, &v);
		if (rc == -ENOSPC && tries < 3) {
			rc = writer_grow(w, g, 0, "load limit");
			if (rc < 0)
				return rc;
			continue;
		}
		if (rc == INDEX_INSERTED && r.kind == RECIPIENT_EMAIL &&
		    email_list_add(&g->extra, c->brand_code,
				   (int)c->recipient_type, &r) < 0)
			return -ENOMEM;
		return rc;
	}
}

struct replay_ctx {
	struct writer *w;
	struct writer_gen *g;
	uint64_t n, last;
	int rc;
};

static int replay_one(const Consent__V1__Consent *c, void *arg)
{
	struct replay_ctx *x = arg;
	int rc = writer_apply(x->w, x->g, c);
	if (rc == -EINVAL) {
		say("change log: sequence %" PRIu64 " cannot be applied "
		    "(skipped)", c->sequence);
		rc = INDEX_SKIPPED;
	}
	if (rc < 0) {
		x->rc = rc;
		return rc;
	}
	x->n++;
	x->last = c->sequence;
	return 0;
}

/* Replays the log past `after` into g. */
static int writer_replay(struct writer *w, struct writer_gen *g,
			 uint64_t after, uint64_t *n, char *err,
			 size_t err_cap)
{
	struct replay_ctx x = { .w = w, .g = g };
	int rc = changelog_replay(w->log, after, replay_one, &x);
	*n = x.n;
	if (rc < 0 && x.rc < 0)
		return fail(err, err_cap, rc, "replaying the change log: %s",
			    strerror(-rc));
	if (rc < 0)
		return fail(err, err_cap, rc, "replaying the change log: %s",
			    changelog_error(w->log));
	return 0;
}

static void writer_set_meta(struct writer *w)
{
	/* Release inside: pairs with index_info's acquire loads, so a reader
	 * that sees this watermark sees every change applied before it. */
	index_set_meta_writer(w->cur.ix, w->gen, w->applied, w->created_at,
			      w->data_as_of);
}

/* ---- generations ---- */

/* After generation gen (watermark wm) was published and is served: keeps
 * the one served before as the fallback, removes every other one and
 * drops the change log through the fallback's watermark. */
static void writer_published(struct writer *w, uint64_t gen, uint64_t wm)
{
	if (w->gen != 0 && w->gen != gen) {
		w->prev_gen = w->gen;
		w->prev_watermark = w->file_watermark;
	}
	w->gen = gen;
	w->file_watermark = wm;
	writer_prune(w, gen, w->prev_gen);
	if (w->prev_gen != 0) {
		int rc = changelog_drop_through(w->log, w->prev_watermark);
		if (rc < 0)
			say("dropping the change log through %" PRIu64 ": %s",
			    w->prev_watermark, strerror(-rc));
		else if (w->prev_watermark > w->log_floor)
			w->log_floor = w->prev_watermark;
	}
	metrics_inc(&w->m->generations_built);
}

/* The next generation number in *gen; -errno if DIR cannot be listed
 * (a number guessed then could fall below one already there). */
static int writer_next_gen(struct writer *w, uint64_t *gen)
{
	uint64_t newest;
	int rc = datadir_newest_generation(w->dir, &newest);
	if (rc < 0)
		return rc;
	*gen = (newest > w->gen ? newest : w->gen) + 1;
	return 0;
}

/* Writes the served index as the next generation. */
static int writer_checkpoint(struct writer *w, const char *why)
{
	char err[512];
	double t0 = mono_s();
	uint64_t gen, old = w->gen;
	int rc = writer_next_gen(w, &gen);
	if (rc < 0) {
		say("%s: listing %s: %s (the change log keeps everything; "
		    "next try after more changes)", why, w->dir, strerror(-rc));
		w->need_checkpoint = false;
		w->since_checkpoint = 0;
		return rc;
	}

	w->gen = gen;
	writer_set_meta(w);
	struct build_emails em = writer_emails(&w->cur);
	rc = build_publish(w->dir, w->cur.ix, &em, err, sizeof(err));
	if (rc < 0) {
		w->gen = old;
		writer_set_meta(w);
		say("%s: writing generation %" PRIu64 ": %s (the change log "
		    "keeps everything; next try after more changes)", why, gen,
		    err);
		w->need_checkpoint = false;
		w->since_checkpoint = 0;
		return rc;
	}
	w->gen = old;
	writer_published(w, gen, w->applied);
	snprintf(w->cur.emails_dir, sizeof(w->cur.emails_dir), "%s", w->dir);
	w->cur.emails_gen = gen;
	email_list_clear(&w->cur.extra);
	w->need_checkpoint = false;
	w->since_checkpoint = 0;
	struct index_info info;
	index_info(w->cur.ix, &info);
	say("%s: wrote generation %" PRIu64 " (%" PRIu64 " records, through "
	    "sequence %" PRIu64 ") in %.2f s", why, gen, info.n_records,
	    w->applied, mono_s() - t0);
	return 0;
}

/* Takes the snapshot built in staging (its generation sgen). */
static void writer_take_now(struct writer *w, const char *staging,
			    uint64_t sgen)
{
	struct writer_gen s = { 0 };
	struct index_info si;
	char err[512];
	uint64_t g = 0, replayed = 0;
	double t0 = mono_s();
	int rc;

	rc = datadir_open_newest(staging, (enum index_load_mode)w->opt.index_load,
				 &s.ix, &g, err, sizeof(err));
	if (rc == 0 && g != sgen)
		rc = fail(err, sizeof(err), -EPROTO, "%s holds generation %"
			  PRIu64 ", not %" PRIu64, staging, g, sgen);
	if (rc < 0) {
		say("snapshot: %s", err);
		goto out;
	}
	snprintf(s.emails_dir, sizeof(s.emails_dir), "%s", staging);
	s.emails_gen = sgen;
	index_info(s.ix, &si);

	/* Everything after the snapshot that the log still has... */
	rc = writer_replay(w, &s, si.watermark, &replayed, err, sizeof(err));
	if (rc < 0) {
		say("snapshot: %s", err);
		goto out;
	}
	/* ...and, when the log was dropped past the snapshot's watermark,
	 * what only the served index still holds. */
	bool merged = false;
	if (w->cur.ix != NULL && si.watermark < w->log_floor) {
		struct build_emails em = writer_emails(&w->cur);
		for (;;) {
			rc = build_merge(s.ix, w->cur.ix, &em,
					 email_list_add_cb, &s.extra, err,
					 sizeof(err));
			if (rc != -ENOSPC)
				break;
			struct index_info a, b;
			index_info(s.ix, &a);
			index_info(w->cur.ix, &b);
			rc = writer_grow(w, &s, a.n_records + b.n_records +
						       WRITER_GROW_MIN,
					 "snapshot merge");
			if (rc < 0)
				break;
		}
		if (rc < 0) {
			say("snapshot: merging the served index: %s", err);
			goto out;
		}
		merged = true;
	}

	uint64_t applied = si.watermark > w->applied ? si.watermark : w->applied;
	int64_t as_of = si.data_as_of;
	if (w->cur.ix != NULL && w->data_as_of > as_of)
		as_of = w->data_as_of;
	uint64_t gen;
	rc = writer_next_gen(w, &gen);
	if (rc < 0) {
		say("snapshot: listing %s: %s", w->dir, strerror(-rc));
		goto out;
	}
	index_set_meta_writer(s.ix, gen, applied, si.created_at, as_of);
	struct build_emails em = writer_emails(&s);
	rc = build_publish(w->dir, s.ix, &em, err, sizeof(err));
	if (rc < 0) {
		say("snapshot: writing generation %" PRIu64 ": %s", gen, err);
		goto out;
	}

	double t_pub = mono_s();
	live_publish(s.ix); /* the old index goes after the grace period */
	metrics_inc(&w->m->generation_swaps);
	email_list_clear(&w->cur.extra);
	w->cur.ix = s.ix;
	w->cur.served = true;
	s.ix = NULL;
	w->applied = applied;
	w->created_at = si.created_at;
	w->data_as_of = as_of;
	writer_published(w, gen, applied);
	snprintf(w->cur.emails_dir, sizeof(w->cur.emails_dir), "%s", w->dir);
	w->cur.emails_gen = gen;
	email_list_clear(&s.extra);
	w->since_checkpoint = 0;
	w->need_checkpoint = false;
	/* Release: pairs with the acquire in writer_submit. */
	atomic_store_explicit(&w->has_index, true, memory_order_release);
	index_info(w->cur.ix, &si);
	say("snapshot: now serving generation %" PRIu64 ": %" PRIu64
	    " records, %" PRIu64 " changes replayed%s, through sequence %"
	    PRIu64 "; %.2f s (swap %.2f s)", gen, si.n_records, replayed,
	    merged ? ", served index merged in" : "", applied,
	    mono_s() - t0, mono_s() - t_pub);
out:
	index_destroy(s.ix);
	email_list_clear(&s.extra);
	rm_tree(staging);
	fsync_dir(w->dir);
}

/* ---- the group commit ---- */

static int chg_cmp(const void *a, const void *b)
{
	const struct writer_chg *x = a, *y = b;
	if (x->c->sequence != y->c->sequence)
		return x->c->sequence < y->c->sequence ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static void reply_error(struct writer_req *r, uint32_t code, const char *msg)
{
	r->reply.code = code;
	r->reply.applied = r->reply.skipped = 0;
	snprintf(r->reply.message, sizeof(r->reply.message), "%s", msg);
}

static int writer_reserve(struct writer *w, size_t n)
{
	if (n <= w->chg_cap)
		return 0;
	size_t cap = w->chg_cap ? w->chg_cap : 1024;
	while (cap < n)
		cap *= 2;
	struct writer_chg *c = realloc(w->chg, cap * sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	w->chg = c;
	Consent__V1__Consent **p = realloc(w->ptrs, cap * sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	w->ptrs = p;
	w->chg_cap = cap;
	return 0;
}

/* Appends, applies and answers the requests of list (arrival order). */
static void writer_group(struct writer *w, struct writer_req *list)
{
	size_t n = 0, total = 0;
	bool heartbeat = false;
	char msg[240];

	for (struct writer_req *r = list; r != NULL; r = r->next)
		total += r->apply->n_changes;
	if (writer_reserve(w, total) < 0) {
		for (struct writer_req *r = list; r != NULL; r = r->next)
			reply_error(r, 503, "the writer is out of memory");
		return;
	}
	for (struct writer_req *r = list; r != NULL; r = r->next) {
		if (atomic_load_explicit(&w->failed, memory_order_relaxed)) {
			snprintf(msg, sizeof(msg), "changes refused: %s",
				 w->fault);
			reply_error(r, 503, msg);
			continue;
		}
		if (w->cur.ix == NULL) {
			reply_error(r, 503, "no generation is loaded yet (a "
				    "snapshot is being built)");
			continue;
		}
		const Consent__V1__ApplyRequest *a = r->apply;
		if (a->n_changes == 0)
			heartbeat = true;
		for (size_t i = 0; i < a->n_changes; i++) {
			if (a->changes[i]->sequence <= w->applied) {
				r->reply.skipped++;
				metrics_inc(&w->m->changes_skipped_replay);
				continue;
			}
			w->chg[n].c = a->changes[i];
			w->chg[n].r = r;
			w->chg[n].order = (uint32_t)n;
			n++;
		}
	}
	/* Sequence order across the group; a sequence twice is a replay of
	 * the first copy (two feeders of one stream). */
	if (n > 1)
		qsort(w->chg, n, sizeof(*w->chg), chg_cmp);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && w->chg[i].c->sequence == w->chg[m - 1].c->sequence) {
			w->chg[i].r->reply.skipped++;
			metrics_inc(&w->m->changes_skipped_replay);
			continue;
		}
		w->chg[m++] = w->chg[i];
	}
	if (m > 0) {
		for (size_t i = 0; i < m; i++)
			w->ptrs[i] = (Consent__V1__Consent *)w->chg[i].c;
		int rc = changelog_append(w->log, w->ptrs, m);
		if (rc < 0) {
			metrics_inc(&w->m->changelog_failures);
			writer_set_fault(w, "change log: %s",
					 changelog_error(w->log));
			snprintf(msg, sizeof(msg), "changes refused: %s",
				 w->fault);
			for (struct writer_req *r = list; r != NULL; r = r->next)
				if (r->reply.code == 0)
					reply_error(r, 503, msg);
			return;
		}
		metrics_inc(&w->m->changelog_appends);
	}
	/* Durable: apply in sequence order. */
	for (size_t i = 0; i < m; i++) {
		struct writer_req *r = w->chg[i].r;
		int rc = writer_apply(w, &w->cur, w->chg[i].c);
		if (rc == -EINVAL) {
			say("sequence %" PRIu64 " cannot be held by the index "
			    "(skipped)", w->chg[i].c->sequence);
			rc = INDEX_SKIPPED;
		}
		if (rc < 0) {
			/* Durable but not applied: a restart replays it. */
			writer_set_fault(w, "applying sequence %" PRIu64 ": %s",
					 w->chg[i].c->sequence, strerror(-rc));
			snprintf(msg, sizeof(msg), "changes refused: %s",
				 w->fault);
			for (struct writer_req *q = list; q != NULL; q = q->next)
				if (q->reply.code == 0)
					reply_error(q, 503, msg);
			return;
		}
		if (rc == INDEX_SKIPPED) {
			r->reply.skipped++;
			metrics_inc(&w->m->changes_skipped_order);
		} else {
			r->reply.applied++;
			metrics_inc(&w->m->changes_applied);
		}
		w->applied = w->chg[i].c->sequence;
	}
	if (m > 0 || heartbeat) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		w->data_as_of = ts.tv_sec;
	}
	if (w->cur.ix != NULL)
		writer_set_meta(w);
	w->since_checkpoint += m;
	for (struct writer_req *r = list; r != NULL; r = r->next)
		r->reply.applied_sequence = w->applied;
}

/* Hands every request of list back to its worker. */
static void writer_complete(struct writer *w, struct writer_req *list)
{
	while (list != NULL) {
		struct writer_req *r = list;
		list = r->next;
		consent__v1__apply_request__free_unpacked(r->apply, NULL);
		r->apply = NULL;
		struct writer_queue *q = &w->queues[r->queue];
		struct writer_req *head =
			atomic_load_explicit(&q->done, memory_order_relaxed);
		do {
			r->next = head;
			/* Release: pairs with the acquire exchange in
			 * writer_take, which then reads the whole reply. */
		} while (!atomic_compare_exchange_weak_explicit(
			&q->done, &head, r, memory_order_release,
			memory_order_relaxed));
		q->wake = true;
	}
	for (unsigned i = 0; i < w->opt.n_queues; i++)
		if (w->queues[i].wake) {
			w->queues[i].wake = false;
			efd_signal(w->queues[i].efd);
		}
}

/* Takes the inbox whole, in arrival order. */
static struct writer_req *writer_inbox(struct writer *w)
{
	/* Acquire: pairs with the release CAS in writer_submit, so each
	 * request's fields are visible. */
	struct writer_req *r = atomic_exchange_explicit(&w->inbox, NULL,
							memory_order_acquire);
	struct writer_req *fifo = NULL;
	while (r != NULL) {
		struct writer_req *next = r->next;
		r->next = fifo;
		fifo = r;
		r = next;
	}
	return fifo;
}

static void writer_drain(struct writer *w)
{
	struct writer_req *list;
	while ((list = writer_inbox(w)) != NULL) {
		writer_group(w, list);
		writer_complete(w, list);
	}
}

static uint64_t writer_checkpoint_every(struct writer *w)
{
	if (w->opt.checkpoint_changes)
		return w->opt.checkpoint_changes;
	struct index_info info;
	index_info(w->cur.ix, &info);
	return info.n_records / 2 > WRITER_CHECKPOINT_MIN
		       ? info.n_records / 2 : WRITER_CHECKPOINT_MIN;
}

/* Between groups: what main asked for, and checkpoints. */
static void writer_housekeeping(struct writer *w)
{
	char staging[PATH_MAX];
	uint64_t sgen = 0;
	bool take, rebuild;

	pthread_mutex_lock(&w->mu);
	take = w->take_pending;
	rebuild = w->rebuild_pending;
	if (take)
		memcpy(staging, w->take_dir, sizeof(staging));
	sgen = w->take_gen;
	w->take_pending = w->rebuild_pending = false;
	pthread_mutex_unlock(&w->mu);

	if (take)
		writer_take_now(w, staging, sgen);
	if (w->cur.ix == NULL)
		return;
	if (rebuild) {
		struct index_info info;
		double t0 = mono_s();
		index_info(w->cur.ix, &info);
		uint64_t cap = info.n_records + info.n_records / 10 +
			       WRITER_GROW_MIN;
		if (cap < info.capacity)
			cap = info.capacity;
		if (writer_grow(w, &w->cur, cap, "rebuild") == 0 &&
		    writer_checkpoint(w, "rebuild") == 0)
			say("rebuild: %" PRIu64 " records rebuilt, written and "
			    "swapped in %.2f s", info.n_records,
			    mono_s() - t0);
	}
	if (w->need_checkpoint ||
	    w->since_checkpoint >= writer_checkpoint_every(w))
		writer_checkpoint(w, w->need_checkpoint ? "growth"
				     : "checkpoint");
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (;;) {
		uint64_t v;
		ssize_t rd = read(w->efd, &v, sizeof(v));
		if (rd < 0 && errno != EINTR)
			say("eventfd: %s", strerror(errno));
		writer_drain(w);
		/* A growth asked for a checkpoint: it is written here,
		 * once the replies of its group are out. */
		writer_housekeeping(w);
		/* Acquire: pairs with the release store in writer_stop. */
		if (atomic_load_explicit(&w->stop, memory_order_acquire))
			break;
	}
	writer_drain(w);
	if (w->cur.ix != NULL && w->applied > w->file_watermark &&
	    !atomic_load_explicit(&w->failed, memory_order_relaxed))
		writer_checkpoint(w, "shutdown");
	return NULL;
}

/* ---- main's side ---- */

int writer_open(const struct writer_options *opt, struct writer **out,
		char *err, size_t err_cap)
{
	struct writer *w = calloc(1, sizeof(*w));
	int rc;

	if (w == NULL)
		return fail(err, err_cap, -ENOMEM, "out of memory");
	w->opt = *opt;
	w->efd = -1;
	pthread_mutex_init(&w->mu, NULL);
	atomic_init(&w->inbox, NULL);
	atomic_init(&w->stop, false);
	atomic_init(&w->has_index, false);
	atomic_init(&w->failed, false);
	w->m = opt->metrics;
	if (w->m == NULL) {
		w->m = w->own_metrics = calloc(1, sizeof(*w->own_metrics));
		if (w->m == NULL) {
			free(w);
			return fail(err, err_cap, -ENOMEM, "out of memory");
		}
	}
	if (snprintf(w->dir, sizeof(w->dir), "%s", opt->data_dir) >=
	    (int)sizeof(w->dir)) {
		rc = fail(err, err_cap, -ENAMETOOLONG, "%s: path too long",
			  opt->data_dir);
		goto fail_free;
	}
	w->opt.data_dir = w->dir;
	if (mkdir(w->dir, 0755) < 0 && errno != EEXIST) {
		rc = fail(err, err_cap, -errno, "%s: %s", w->dir,
			  strerror(errno));
		goto fail_free;
	}
	/* Cache-line aligned: each queue's head is its worker's and the
	 * writer's, nobody else's. */
	size_t qbytes = (opt->n_queues ? opt->n_queues : 1) * sizeof(*w->queues);
	w->queues = aligned_alloc(64, (qbytes + 63) & ~(size_t)63);
	if (w->queues != NULL)
		memset(w->queues, 0, qbytes);
	if (w->queues == NULL) {
		rc = fail(err, err_cap, -ENOMEM, "out of memory");
		goto fail_free;
	}
	for (unsigned i = 0; i < opt->n_queues; i++)
		w->queues[i].efd = -1;
	w->efd = eventfd(0, EFD_CLOEXEC);
	for (unsigned i = 0; i < opt->n_queues && w->efd >= 0; i++) {
		w->queues[i].efd = eventfd(0, EFD_CLOEXEC);
		atomic_init(&w->queues[i].done, NULL);
		if (w->queues[i].efd < 0) {
			rc = fail(err, err_cap, -errno, "eventfd: %s",
				  strerror(errno));
			goto fail_free;
		}
	}
	if (w->efd < 0) {
		rc = fail(err, err_cap, -errno, "eventfd: %s", strerror(errno));
		goto fail_free;
	}

	struct changelog_options lo = { .segment_bytes = opt->segment_bytes };
	char lerr[512];
	rc = changelog_open(w->dir, &lo, &w->log, lerr, sizeof(lerr));
	if (rc < 0) {
		rc = fail(err, err_cap, rc, "change log: %s", lerr);
		goto fail_free;
	}
	struct changelog_stats ls;
	changelog_stats(w->log, &ls);
	if (ls.truncated_bytes)
		say("change log: removed a torn tail of %" PRIu64 " bytes "
		    "(an append a crash interrupted, never acknowledged)",
		    ls.truncated_bytes);
	writer_remove_leftovers(w->dir);
	w->applied = changelog_last_sequence(w->log);

	uint64_t gen = 0;
	rc = datadir_open_newest(w->dir, (enum index_load_mode)opt->index_load,
				 &w->cur.ix, &gen, err, err_cap);
	if (rc == -ENOENT) {
		say("%s has no generation yet; Applies wait for a snapshot",
		    w->dir);
		*out = w;
		return 0;
	}
	if (rc < 0)
		goto fail_free;

	struct index_info info;
	uint64_t replayed = 0;
	double t0 = mono_s();
	index_info(w->cur.ix, &info);
	w->gen = gen;
	w->file_watermark = info.watermark;
	w->log_floor = info.watermark;
	w->created_at = info.created_at;
	w->data_as_of = info.data_as_of;
	snprintf(w->cur.emails_dir, sizeof(w->cur.emails_dir), "%s", w->dir);
	w->cur.emails_gen = gen;
	if (info.watermark > w->applied)
		w->applied = info.watermark;
	rc = writer_replay(w, &w->cur, info.watermark, &replayed, err,
			   err_cap);
	if (rc < 0)
		goto fail_free;
	struct index_info now;
	index_info(w->cur.ix, &now);
	/* A table grown during the replay is written at once: the next
	 * restart would otherwise grow it again. */
	w->need_checkpoint = now.capacity != info.capacity;
	w->since_checkpoint = replayed;
	writer_set_meta(w);
	if (replayed)
		say("generation %" PRIu64 ": replayed %" PRIu64 " changes from "
		    "the log in %.2f s (through sequence %" PRIu64 ")", gen,
		    replayed, mono_s() - t0, w->applied);
	live_publish(w->cur.ix);
	w->cur.served = true;
	atomic_store_explicit(&w->has_index, true, memory_order_release);
	*out = w;
	return 0;

fail_free:
	w->cur.served = false;
	writer_close(w);
	return rc;
}

int writer_start(struct writer *w, char *err, size_t err_cap)
{
	int rc = pthread_create(&w->thread, NULL, writer_main, w);
	if (rc != 0)
		return fail(err, err_cap, -rc, "writer thread: %s",
			    strerror(rc));
	w->started = true;
	return 0;
}

void writer_stop(struct writer *w)
{
	if (w == NULL || !w->started)
		return;
	/* Release: pairs with the acquire load in writer_main. */
	atomic_store_explicit(&w->stop, true, memory_order_release);
	efd_signal(w->efd);
	pthread_join(w->thread, NULL);
	w->started = false;
}

void writer_close(struct writer *w)
{
	if (w == NULL)
		return;
	writer_stop(w);
	/* Requests never processed, and replies no worker took. */
	for (struct writer_req *r = writer_inbox(w); r != NULL;) {
		struct writer_req *next = r->next;
		consent__v1__apply_request__free_unpacked(r->apply, NULL);
		free(r);
		r = next;
	}
	for (unsigned i = 0; w->queues != NULL && i < w->opt.n_queues; i++) {
		struct writer_req *r = atomic_exchange(&w->queues[i].done, NULL);
		while (r != NULL) {
			struct writer_req *next = r->next;
			free(r);
			r = next;
		}
		if (w->queues[i].efd >= 0)
			close(w->queues[i].efd);
	}
	if (w->cur.served)
		live_publish(NULL); /* destroys it after the grace period */
	else
		index_destroy(w->cur.ix);
	email_list_clear(&w->cur.extra);
	changelog_close(w->log);
	if (w->efd >= 0)
		close(w->efd);
	free(w->queues);
	free(w->chg);
	free(w->ptrs);
	free(w->own_metrics);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

/* ---- workers' side ---- */

static int submit_error(struct writer_reply *now, uint32_t code,
			const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int submit_error(struct writer_reply *now, uint32_t code,
			const char *fmt, ...)
{
	va_list ap;
	now->code = code;
	va_start(ap, fmt);
	vsnprintf(now->message, sizeof(now->message), fmt, ap);
	va_end(ap);
	return 0;
}

int writer_submit(struct writer *w, unsigned queue, uint64_t tag, uint64_t id,
		  const struct principal *principal,
		  Consent__V1__ApplyRequest *a, struct writer_reply *now)
{
	memset(now, 0, sizeof(*now));
	now->tag = tag;
	now->id = id;
	/* Acquire: pairs with the release in writer_set_fault. */
	if (atomic_load_explicit(&w->failed, memory_order_acquire)) {
		consent__v1__apply_request__free_unpacked(a, NULL);
		return submit_error(now, 503, "changes refused: %s", w->fault);
	}
	/* Acquire: pairs with the release stores of has_index. */
	if (!atomic_load_explicit(&w->has_index, memory_order_acquire)) {
		consent__v1__apply_request__free_unpacked(a, NULL);
		return submit_error(now, 503, "no generation is loaded yet (a "
				    "snapshot is being built)");
	}
	/* The principal's brands bound what it may write, as they bound what
	 * it may read: one change outside them refuses the whole request,
	 * before anything else is looked at, so the reply is the same whether
	 * the brand exists or not and tells nothing about its records. */
	for (size_t i = 0; i < a->n_changes; i++) {
		if (principal_may_check(principal, a->changes[i]->brand_code))
			continue;
		submit_error(now, 403, "changes[%zu]: brand_code %" PRIu32
			     " is not among this principal's brands (nothing "
			     "of this request was applied)", i,
			     a->changes[i]->brand_code);
		consent__v1__apply_request__free_unpacked(a, NULL);
		return 0;
	}
	uint64_t prev = 0;
	for (size_t i = 0; i < a->n_changes; i++) {
		const Consent__V1__Consent *c = a->changes[i];
		const char *field;
		char why[160];

		if (change_validate(c, prev, NULL, &field, why,
				    sizeof(why)) < 0) {
			if (strcmp(field, "sequence") == 0)
				submit_error(now, 400, "changes[%zu]: sequence: "
					     "%s", i, why);
			else
				submit_error(now, 400, "changes[%zu] (sequence %"
					     PRIu64 "): %s: %s", i, c->sequence,
					     field, why);
			consent__v1__apply_request__free_unpacked(a, NULL);
			return 0;
		}
		prev = c->sequence;
	}

	struct writer_req *req = calloc(1, sizeof(*req));
	if (req == NULL) {
		consent__v1__apply_request__free_unpacked(a, NULL);
		return -ENOMEM;
	}
	req->queue = queue < w->opt.n_queues ? queue : 0;
	req->apply = a;
	req->reply.tag = tag;
	req->reply.id = id;
	struct writer_req *head = atomic_load_explicit(&w->inbox,
						       memory_order_relaxed);
	do {
		req->next = head;
		/* Release: pairs with the acquire exchange in writer_inbox. */
	} while (!atomic_compare_exchange_weak_explicit(
		&w->inbox, &head, req, memory_order_release,
		memory_order_relaxed));
	efd_signal(w->efd);
	return 1;
}

int writer_queue_fd(const struct writer *w, unsigned queue)
{
	return queue < w->opt.n_queues ? w->queues[queue].efd : -1;
}

void writer_take(struct writer *w, unsigned queue,
		 void (*fn)(const struct writer_reply *r, void *arg), void *arg)
{
	if (queue >= w->opt.n_queues)
		return;
	/* Acquire: pairs with the release CAS in writer_complete. */
	struct writer_req *r = atomic_exchange_explicit(&w->queues[queue].done,
							NULL,
							memory_order_acquire);
	struct writer_req *fifo = NULL;
	while (r != NULL) {
		struct writer_req *next = r->next;
		r->next = fifo;
		fifo = r;
		r = next;
	}
	while (fifo != NULL) {
		struct writer_req *next = fifo->next;
		fn(&fifo->reply, arg);
		free(fifo);
		fifo = next;
	}
}

int writer_staging_dir(const struct writer *w, char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "%s/" STAGING_PREFIX "%ld", w->dir,
			 (long)getpid());
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

void writer_take_snapshot(struct writer *w, const char *staging, uint64_t gen)
{
	pthread_mutex_lock(&w->mu);
	snprintf(w->take_dir, sizeof(w->take_dir), "%s", staging);
	w->take_gen = gen;
	w->take_pending = true;
	pthread_mutex_unlock(&w->mu);
	efd_signal(w->efd);
}

void writer_rebuild(struct writer *w)
{
	pthread_mutex_lock(&w->mu);
	w->rebuild_pending = true;
	pthread_mutex_unlock(&w->mu);
	efd_signal(w->efd);
}

bool writer_fault(const struct writer *w, char *msg, size_t cap)
{
	if (w == NULL ||
	    !atomic_load_explicit(&w->failed, memory_order_acquire))
		return false;
	if (msg != NULL && cap > 0)
		snprintf(msg, cap, "%s", w->fault);
	return true;
}
