/*
 * changelog_test: the durable change log (index/changelog.h) on real files:
 * round trip, sequence rules, torn tails cut at every byte, damage in the
 * middle, dropping covered segments, a failed write, and SIGKILL crashes of
 * a child that reports every acknowledged sequence through a pipe; origins'
 * batches and their commit records (DESIGN §8): kept whole or not at all
 * across torn tails, and logs in the version 1 format still open.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "index/changelog.h"
#include "tests/check.h"

#define SEG0 "00000000000000000001.log"

static char dir[256];

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void fresh_dir(void)
{
	if (dir[0])
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	snprintf(dir, sizeof(dir), "/tmp/changelog_test.XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
}

static void seg_path(const char *name, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/%s/%s", dir, CHANGELOG_DIR, name);
}

/* A change whose every field derives from seq, so replay can check it;
 * the transaction id may carry a padding of '-' (fat records). */
struct change {
	Consent__V1__Consent c;
	char recipient[32];
	char tx[32];
	char *fat_tx;
};

static void change_make_padded(struct change *ch, uint64_t seq, size_t pad)
{
	consent__v1__consent__init(&ch->c);
	snprintf(ch->recipient, sizeof(ch->recipient), "+90532%07" PRIu64,
		 seq % 10000000);
	snprintf(ch->tx, sizeof(ch->tx), "tx-%" PRIu64, seq);
	ch->c.recipient = ch->recipient;
	ch->c.channel = CONSENT__V1__CHANNEL__MESAJ;
	ch->c.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
	ch->c.brand_code = 1000 + (uint32_t)(seq % 7);
	ch->c.status = seq % 3 ? CONSENT__V1__STATUS__ONAY :
				 CONSENT__V1__STATUS__RET;
	ch->c.source = CONSENT__V1__SOURCE__HS_WEB;
	ch->c.consent_date = 1500000000 + (int64_t)seq;
	ch->c.creation_date = 1500000100 + (int64_t)seq;
	ch->c.transaction_id = ch->tx;
	ch->c.sequence = seq;
	ch->fat_tx = NULL;
	if (pad) {
		size_t n = strlen(ch->tx);

		ch->fat_tx = malloc(n + pad + 1);
		memcpy(ch->fat_tx, ch->tx, n);
		memset(ch->fat_tx + n, '-', pad);
		ch->fat_tx[n + pad] = 0;
		ch->c.transaction_id = ch->fat_tx;
	}
}

static void change_make(struct change *ch, uint64_t seq)
{
	change_make_padded(ch, seq, 0);
}

/* Appends sequences first..first+n-1 as one batch, each record padded
 * by pad bytes. */
static int append_padded(struct changelog *log, uint64_t first, size_t n,
			 size_t pad)
{
	struct change *ch = calloc(n, sizeof(*ch));
	Consent__V1__Consent **v = calloc(n, sizeof(*v));
	int rc;

	for (size_t i = 0; i < n; i++) {
		change_make_padded(&ch[i], first + i, pad);
		v[i] = &ch[i].c;
	}
	rc = changelog_append(log, v, n);
	for (size_t i = 0; i < n; i++)
		free(ch[i].fat_tx);
	free(v);
	free(ch);
	return rc;
}

static int append_range(struct changelog *log, uint64_t first, size_t n)
{
	return append_padded(log, first, n, 0);
}

struct collect {
	uint64_t n;
	uint64_t first, last;
	int bad; /* a record out of order or not what was written */
};

static int collect_fn(const Consent__V1__Consent *c, void *arg)
{
	struct collect *col = arg;
	struct change want;

	change_make(&want, c->sequence);
	if (col->n && c->sequence != col->last + 1)
		col->bad++;
	size_t tx_len = strlen(want.tx);

	if (strcmp(c->recipient, want.recipient) != 0 ||
	    strncmp(c->transaction_id, want.tx, tx_len) != 0 ||
	    strspn(c->transaction_id + tx_len, "-") !=
		    strlen(c->transaction_id + tx_len) ||
	    c->brand_code != want.c.brand_code || c->status != want.c.status ||
	    c->consent_date != want.c.consent_date ||
	    c->channel != want.c.channel)
		col->bad++;
	if (!col->n)
		col->first = c->sequence;
	col->last = c->sequence;
	col->n++;
	return 0;
}

static struct collect replay_all(struct changelog *log, uint64_t after)
{
	struct collect col = { 0 };
	int rc = changelog_replay(log, after, collect_fn, &col);

	CHECKF(rc == 0, "replay: %d %s", rc, changelog_error(log));
	return col;
}

static struct changelog *open_ok(const struct changelog_options *opt)
{
	struct changelog *log = NULL;
	char err[512];
	int rc = changelog_open(dir, opt, &log, err, sizeof(err));

	CHECKF(rc == 0, "open: %d %s", rc, err);
	return rc == 0 ? log : NULL;
}

static long file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	long n = file_size(path);
	uint8_t *b;

	if (!f || n < 0)
		return NULL;
	b = malloc((size_t)n + 1);
	*len = fread(b, 1, (size_t)n, f);
	fclose(f);
	return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(b, 1, len, f) != len) {
		perror(path);
		exit(1);
	}
	fclose(f);
}

static void test_round_trip(void)
{
	fresh_dir();
	struct changelog *log = open_ok(NULL);
	uint64_t seq = 1;

	if (!log)
		return;
	CHECK(changelog_last_sequence(log) == 0);
	CHECK(replay_all(log, 0).n == 0);
	for (int b = 0; b < 40; b++) {
		size_t n = 1 + (size_t)(b * 7 % 23);

		CHECK(append_range(log, seq, n) == 0);
		seq += n;
	}
	CHECK(changelog_last_sequence(log) == seq - 1);
	changelog_close(log);

	log = open_ok(NULL);
	if (!log)
		return;
	CHECK(changelog_last_sequence(log) == seq - 1);
	struct collect col = replay_all(log, 0);

	CHECK(col.n == seq - 1 && col.first == 1 && col.last == seq - 1);
	CHECK(col.bad == 0);
	col = replay_all(log, 100);
	CHECK(col.n == seq - 1 - 100 && col.first == 101 && col.bad == 0);
	col = replay_all(log, seq - 1);
	CHECK(col.n == 0);

	struct changelog_stats st;

	changelog_stats(log, &st);
	CHECK(st.records == seq - 1 && st.segments == 1 && st.truncated_bytes == 0);
	CHECK(st.first_sequence == 1 && st.last_sequence == seq - 1);
	char p[512];

	seg_path(SEG0, p, sizeof(p));
	CHECK(st.bytes == (uint64_t)file_size(p));

	/* Appends continue after reopen; a second open is refused. */
	CHECK(append_range(log, seq, 3) == 0);
	struct changelog *other = NULL;
	char err[512];

	CHECK(changelog_open(dir, NULL, &other, err, sizeof(err)) == -EBUSY);
	changelog_close(log);
	log = open_ok(NULL);
	if (log) {
		CHECK(changelog_last_sequence(log) == seq + 2);
		changelog_close(log);
	}
}

static void test_sequence_rules(void)
{
	fresh_dir();
	struct changelog *log = open_ok(NULL);

	if (!log)
		return;
	CHECK(append_range(log, 50, 8) == 0); /* 50..57 */
	CHECK(append_range(log, 41, 1) == -EINVAL);
	CHECK_STREQ(changelog_error(log), "sequence 41 after 57");
	CHECK(append_range(log, 57, 1) == -EINVAL);
	CHECK(append_range(log, 0, 1) == -EINVAL);

	/* Within a batch: 60, 59 is refused whole. */
	struct change a, b;
	Consent__V1__Consent *v[2] = { &a.c, &b.c };

	change_make(&a, 60);
	change_make(&b, 59);
	CHECK(changelog_append(log, v, 2) == -EINVAL);
	CHECK(changelog_last_sequence(log) == 57);

	/* Oversize: nothing written. */
	char *big = malloc(CHANGELOG_RECORD_MAX + 10);

	memset(big, 'x', CHANGELOG_RECORD_MAX + 9);
	big[CHANGELOG_RECORD_MAX + 9] = 0;
	change_make(&a, 61);
	a.c.transaction_id = big;
	CHECK(changelog_append(log, v, 1) == -EMSGSIZE);
	free(big);
	/* Refusals do not fail the log. */
	CHECK(append_range(log, 58, 2) == 0);
	CHECK(changelog_append(log, v, 0) == 0);
	changelog_close(log);

	log = open_ok(NULL);
	if (!log)
		return;
	struct collect col = replay_all(log, 0);

	CHECK(col.n == 10 && col.first == 50 && col.last == 59 && col.bad == 0);
	changelog_close(log);
}

/* Writes a log of `n_batches` batches of 3, returns the segment's bytes
 * and the offset where its last batch starts. */
static uint8_t *make_log(int n_batches, size_t *len, size_t *last_start,
			 uint64_t *last_seq)
{
	struct changelog *log;
	char p[512];
	long before = 0;

	fresh_dir();
	log = open_ok(NULL);
	if (!log)
		return NULL;
	seg_path(SEG0, p, sizeof(p));
	for (int i = 0; i < n_batches; i++) {
		before = file_size(p);
		append_range(log, (uint64_t)i * 3 + 1, 3);
	}
	*last_seq = changelog_last_sequence(log);
	changelog_close(log);
	uint8_t *bytes = read_file(p, len);

	*last_start = before < 0 ? 16 : (size_t)before;
	return bytes;
}

static void test_torn_tail(void)
{
	size_t len, start;
	uint64_t last;
	uint8_t *bytes = make_log(6, &len, &start, &last);
	char p[512];
	int bad_cuts = 0;

	if (!bytes)
		return;
	CHECK(last == 18);
	seg_path(SEG0, p, sizeof(p));
	/* Cut at every byte of the last batch (its three changes and its
	 * commit record): the whole batch goes, since without its commit
	 * record it was never acknowledged; the rest stays, and the log
	 * takes appends again. */
	for (size_t cut = start; cut < len; cut++) {
		write_file(p, bytes, cut);
		struct changelog *log = NULL;
		char err[512];

		if (changelog_open(dir, NULL, &log, err, sizeof(err)) != 0) {
			bad_cuts++;
			fprintf(stderr, "cut %zu: %s\n", cut, err);
			continue;
		}
		struct changelog_stats st;
		struct collect col = replay_all(log, 0);

		changelog_stats(log, &st);
		if (changelog_last_sequence(log) != last - 3 ||
		    col.n != last - 3 || col.bad ||
		    st.truncated_bytes != cut - start ||
		    file_size(p) != (long)start)
			bad_cuts++;
		if (cut % 8 == 0) {
			if (append_range(log, last - 2, 2) != 0)
				bad_cuts++;
			changelog_close(log);
			log = open_ok(NULL);
			if (!log || changelog_last_sequence(log) != last - 1 ||
			    replay_all(log, 0).n != last - 1)
				bad_cuts++;
		}
		changelog_close(log);
	}
	CHECKF(bad_cuts == 0, "%d cuts of %zu misbehaved", bad_cuts, len - start);

	/* The last record (the commit record) whole but its payload damaged
	 * (a power loss that lost its data): torn too, its batch truncated. */
	uint8_t *b2 = malloc(len + 64);

	memcpy(b2, bytes, len);
	b2[len - 1] ^= 0x20;
	write_file(p, b2, len);
	struct changelog *log = open_ok(NULL);

	if (log) {
		CHECK(changelog_last_sequence(log) == last - 3);
		changelog_close(log);
	}
	/* A tail of zeros after whole records: cut, nothing lost. */
	memcpy(b2, bytes, len);
	memset(b2 + len, 0, 64);
	write_file(p, b2, len + 64);
	log = open_ok(NULL);
	if (log) {
		struct changelog_stats st;

		changelog_stats(log, &st);
		CHECK(changelog_last_sequence(log) == last);
		CHECK(st.truncated_bytes == 64);
		changelog_close(log);
	}
	/* A torn creation (the header cut anywhere): the segment goes. */
	for (size_t cut = 0; cut <= 16; cut++) {
		write_file(p, bytes, cut);
		log = open_ok(NULL);
		if (!log)
			continue;
		CHECK(changelog_last_sequence(log) == 0);
		CHECK(file_size(p) == -1);
		CHECK(append_range(log, 1, 1) == 0);
		changelog_close(log);
	}
	free(b2);
	free(bytes);
}

static int open_fails(const char *want_in_err)
{
	struct changelog *log = NULL;
	char err[512];
	int rc = changelog_open(dir, NULL, &log, err, sizeof(err));

	if (rc == 0)
		changelog_close(log);
	CHECKF(rc == -EPROTO, "open gave %d", rc);
	CHECKF(strstr(err, want_in_err) != NULL, "\"%s\" lacks \"%s\"", err,
	       want_in_err);
	return rc;
}

static void test_damage_in_middle(void)
{
	size_t len, start;
	uint64_t last;
	uint8_t *bytes = make_log(6, &len, &start, &last);
	char p[512], want[600];

	if (!bytes)
		return;
	seg_path(SEG0, p, sizeof(p));
	/* Records of the first batch start at 16; the second record: */
	size_t r1 = 16 + 16 + (bytes[16] | bytes[17] << 8);
	/* A bit flipped in the payload, the checksum, and the length of a
	 * middle record: each is -EPROTO naming the file and offset. */
	size_t where[3] = { r1 + 16 + 3, r1 + 9, r1 };

	for (int i = 0; i < 3; i++) {
		uint8_t *b = malloc(len);

		memcpy(b, bytes, len);
		b[where[i]] ^= 0x04;
		write_file(p, b, len);
		snprintf(want, sizeof(want), "%s: offset %zu: ", p, r1);
		open_fails(want);
		free(b);
	}
	/* A change log in two segments: damage in the first one's last
	 * record is not a torn tail. */
	fresh_dir();
	struct changelog_options opt = { .segment_bytes = 100 };
	struct changelog *log = open_ok(&opt);

	if (!log)
		return;
	CHECK(append_range(log, 1, 3) == 0);
	CHECK(append_range(log, 4, 3) == 0); /* rolls: second segment */
	changelog_close(log);
	free(bytes);
	seg_path(SEG0, p, sizeof(p)); /* the new directory's first segment */
	bytes = read_file(p, &len);
	if (!bytes)
		return;
	bytes[len - 2] ^= 1;
	write_file(p, bytes, len);
	open_fails(p);
	open_fails("checksum mismatch");
	write_file(p, bytes, len - 3); /* a cut too */
	open_fails("runs past the end");
	free(bytes);
}

static void test_drop(void)
{
	fresh_dir();
	struct changelog_options opt = { .segment_bytes = 400 };
	struct changelog *log = open_ok(&opt);
	struct changelog_stats st;

	if (!log)
		return;
	for (uint64_t s = 1; s <= 100; s += 5)
		CHECK(append_range(log, s, 5) == 0);
	changelog_stats(log, &st);
	uint64_t n_before = st.segments;

	CHECKF(n_before >= 5, "only %" PRIu64 " segments", n_before);
	/* Nothing is wholly covered by 0. */
	CHECK(changelog_drop_through(log, 0) == 0);
	int dropped = changelog_drop_through(log, 50);

	CHECK(dropped > 0);
	changelog_stats(log, &st);
	CHECK(st.segments == n_before - (uint64_t)dropped);
	CHECK(st.first_sequence <= 51); /* 51 must still be there */
	CHECK(st.last_sequence == 100);
	struct collect col = replay_all(log, 50);

	CHECK(col.n == 50 && col.first == 51 && col.last == 100 && col.bad == 0);
	changelog_close(log);

	log = open_ok(&opt);
	if (!log)
		return;
	changelog_stats(log, &st);
	CHECK(st.segments == n_before - (uint64_t)dropped);
	CHECK(st.last_sequence == 100);
	/* Everything covered: the active segment is sealed, not removed. */
	dropped = changelog_drop_through(log, 100);
	changelog_stats(log, &st);
	CHECK(st.segments == 1 && st.last_sequence == 100);
	CHECK(append_range(log, 101, 2) == 0); /* starts a new segment */
	changelog_stats(log, &st);
	CHECK(st.segments == 2);
	CHECK(changelog_drop_through(log, 100) == 1);
	changelog_stats(log, &st);
	CHECK(st.segments == 1 && st.first_sequence == 101);
	changelog_close(log);
	log = open_ok(&opt);
	if (log) {
		col = replay_all(log, 0);
		CHECK(col.n == 2 && col.first == 101 && col.bad == 0);
		changelog_close(log);
	}
}

/* A write that fails (RLIMIT_FSIZE: EFBIG) fails the log until reopen;
 * everything acknowledged before it survives. Runs in a child so the
 * limit does not touch the test process. */
static void test_failed_write(void)
{
	int pfd[2];
	pid_t pid;

	fresh_dir();
	if (pipe(pfd) < 0)
		return;
	pid = fork();
	if (pid == 0) {
		struct rlimit rl = { .rlim_cur = 4096, .rlim_max = 4096 };
		struct changelog *log = NULL;
		char err[512];
		uint64_t acked = 0;
		int rc = 0;

		close(pfd[0]);
		signal(SIGXFSZ, SIG_IGN);
		setrlimit(RLIMIT_FSIZE, &rl);
		if (changelog_open(dir, NULL, &log, err, sizeof(err)) != 0)
			_exit(10);
		for (uint64_t s = 1; s < 1000 && rc == 0; s += 4) {
			rc = append_range(log, s, 4);
			if (rc == 0)
				acked = s + 3;
		}
		int again = append_range(log, acked + 1, 1);
		struct changelog_stats st;

		changelog_stats(log, &st);
		int ok = rc == -EFBIG && again == -EFBIG && st.failed &&
			 changelog_last_sequence(log) == acked;
		if (write(pfd[1], &acked, sizeof(acked)) != sizeof(acked))
			_exit(11);
		_exit(ok ? 0 : 12);
	}
	close(pfd[1]);
	uint64_t acked = 0;
	int status = 0;

	CHECK(read(pfd[0], &acked, sizeof(acked)) == sizeof(acked));
	close(pfd[0]);
	waitpid(pid, &status, 0);
	CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d",
	       status);
	CHECK(acked > 0);
	struct changelog *log = open_ok(NULL);

	if (log) {
		struct collect col = replay_all(log, 0);

		CHECK(changelog_last_sequence(log) == acked);
		CHECK(col.n == acked && col.bad == 0);
		CHECK(append_range(log, acked + 1, 1) == 0);
		changelog_close(log);
	}
}

/*
 * The crash test. The child appends batches forever and reports each
 * batch's last sequence through a pipe once append returned. Every fourth
 * batch is fat (48 records of ~60 KiB, a 3 MB write); before one the child
 * sends a 0, and in odd rounds the parent kills right after seeing it, so
 * the kill often lands inside the write and leaves a real torn tail. In
 * even rounds the kill comes at a random moment.
 */
#define CRASH_SEGMENT_BYTES (8u << 20)
#define FAT_PAD 60000
#define FAT_RECORDS 48

static void crash_child(int wfd, unsigned seed)
{
	struct changelog_options opt = { .segment_bytes = CRASH_SEGMENT_BYTES };
	struct changelog *log = NULL;
	char err[512];

	srand(seed);
	if (changelog_open(dir, &opt, &log, err, sizeof(err)) != 0) {
		fprintf(stderr, "child open: %s\n", err);
		_exit(20);
	}
	uint64_t next = changelog_last_sequence(log) + 1;
	const uint64_t notice = 0;

	for (int i = 1; i < 100000; i++) {
		int fat = i % 4 == 0;
		size_t n = fat ? FAT_RECORDS : 1 + (size_t)(rand() % 200);

		if (fat && write(wfd, &notice, sizeof(notice)) != sizeof(notice))
			_exit(22);
		if (append_padded(log, next, n, fat ? FAT_PAD : 0) != 0)
			_exit(21);
		next += n;
		uint64_t acked = next - 1;

		if (write(wfd, &acked, sizeof(acked)) != sizeof(acked))
			_exit(22);
	}
	_exit(0);
}

static void test_crash(void)
{
	const int rounds = 30;
	uint64_t max_acked = 0;
	int lost = 0, broken = 0, torn = 0;
	uint64_t dropped = 0; /* segments through this were dropped */

	fresh_dir();
	srand((unsigned)time(NULL));
	unsigned seed = (unsigned)rand();

	fprintf(stderr, "crash test seed %u\n", seed);
	srand(seed);
	for (int r = 0; r < rounds; r++) {
		int pfd[2];
		uint64_t v;

		if (pipe(pfd) < 0)
			return;
		pid_t pid = fork();

		if (pid == 0) {
			close(pfd[0]);
			crash_child(pfd[1], seed + (unsigned)r);
		}
		close(pfd[1]);
		if (r % 2) {
			/* Wait for the notice of a fat batch (bounded: the
			 * child sends one every four batches). */
			while (read(pfd[0], &v, sizeof(v)) == sizeof(v) && v)
				if (v > max_acked)
					max_acked = v;
		}
		struct timespec ts = { 0, r % 2 ? (long)(rand() % 12000) * 1000 :
						  (long)(rand() % 30000) * 1000 };

		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		while (read(pfd[0], &v, sizeof(v)) == sizeof(v))
			if (v > max_acked)
				max_acked = v;
		close(pfd[0]);

		struct changelog_options opt = { .segment_bytes = CRASH_SEGMENT_BYTES };
		struct changelog *log = NULL;
		char err[512];

		if (changelog_open(dir, &opt, &log, err, sizeof(err)) != 0) {
			fprintf(stderr, "round %d: reopen: %s\n", r, err);
			broken++;
			break;
		}
		uint64_t last = changelog_last_sequence(log);
		struct collect col = replay_all(log, dropped);
		struct changelog_stats st;

		changelog_stats(log, &st);
		torn += st.truncated_bytes > 0;
		/* Every acknowledged sequence is there, in order, and the log
		 * holds exactly dropped+1..last (the child appends
		 * contiguously). */
		if (last < max_acked)
			lost++;
		if (col.n != last - dropped || col.bad ||
		    (col.n && col.first != dropped + 1))
			broken++;
		/* Keep the directory small: drop what is behind us (the
		 * newest segment stays). */
		if (changelog_drop_through(log, last) < 0)
			broken++;
		dropped = last;
		changelog_close(log);
	}
	fprintf(stderr,
		"crash test: %d rounds, %d left a torn tail, %" PRIu64
		" acknowledged\n", rounds, torn, max_acked);
	CHECK(max_acked > 0);
	CHECKF(lost == 0, "%d rounds lost acknowledged changes", lost);
	CHECKF(broken == 0, "%d rounds left a broken log", broken);
}


/* ---- origins' batches (DESIGN §8) ---- */

struct commits {
	int n;
	char cursor[8][32]; /* origin "=" cursor, or "-" for a sequence kind */
	uint64_t seq[8];
	uint32_t n_changes[8];
	uint64_t changes; /* change records seen */
};

static int commits_change(const Consent__V1__Consent *c, void *arg)
{
	(void)c;
	((struct commits *)arg)->changes++;
	return 0;
}

static int commits_fn(const struct changelog_commit *k, void *arg)
{
	struct commits *x = arg;

	if (x->n < 8) {
		if (k->kind == ORIGINS_ORIGIN)
			snprintf(x->cursor[x->n], sizeof(x->cursor[0]), "%.*s=%.*s",
				 (int)k->origin_len, k->origin,
				 (int)k->cursor_len, k->cursor);
		else
			snprintf(x->cursor[x->n], sizeof(x->cursor[0]), "-");
		x->seq[x->n] = k->sequence;
		x->n_changes[x->n] = k->n_changes;
	}
	x->n++;
	return 0;
}

static struct commits replay_commits(struct changelog *log, uint64_t after)
{
	struct commits x = { 0 };
	int rc = changelog_replay_all(log, after, commits_change, commits_fn, &x);

	CHECKF(rc == 0, "replay: %d %s", rc, changelog_error(log));
	return x;
}

/* Appends, as one write, batches of origin o: n[i] changes from
 * sequence *seq on (or a position of its own for 0), cursor "c<seq>". */
static int append_origin(struct changelog *log, const char *o,
			 const size_t *n, size_t n_batches, uint64_t *seq)
{
	struct change ch[16];
	Consent__V1__Consent *v[16];
	struct changelog_batch b[4];
	char cur[4][24];
	size_t used = 0;

	for (size_t j = 0; j < n_batches; j++) {
		b[j].changes = &v[used];
		b[j].n = n[j];
		for (size_t i = 0; i < n[j]; i++, used++) {
			change_make(&ch[used], (*seq)++);
			v[used] = &ch[used].c;
		}
		snprintf(cur[j], sizeof(cur[j]), "c%" PRIu64, *seq - 1 + !n[j]);
		b[j].commit = (struct changelog_commit){
			.kind = ORIGINS_ORIGIN, .origin = o,
			.origin_len = strlen(o), .cursor = cur[j],
			.cursor_len = strlen(cur[j]),
			.sequence = n[j] ? 0 : (*seq)++,
		};
	}
	return changelog_append_batches(log, b, n_batches);
}

static void test_origin_batches(void)
{
	uint64_t seq = 1;
	size_t n1[] = { 3, 0 }, n2[] = { 2 };

	fresh_dir();
	struct changelog *log = open_ok(NULL);
	if (!log)
		return;
	CHECK(changelog_kind(log) == ORIGINS_NONE);
	CHECK(append_origin(log, "a", n1, 2, &seq) == 0); /* 1-3, then 4 */
	CHECK(append_origin(log, "b", n2, 1, &seq) == 0); /* 5-6 */
	CHECK(changelog_last_sequence(log) == 6);
	CHECK(changelog_kind(log) == ORIGINS_ORIGIN);
	/* The other kind does not go into this log. */
	CHECK(append_range(log, 7, 1) == -EINVAL);
	changelog_close(log);

	log = open_ok(NULL);
	if (!log)
		return;
	struct commits x = replay_commits(log, 0);

	CHECK(x.n == 3 && x.changes == 5);
	CHECK_STREQ(x.cursor[0], "a=c3");
	CHECK(x.seq[0] == 3 && x.n_changes[0] == 3);
	CHECK_STREQ(x.cursor[1], "a=c4");
	CHECK(x.seq[1] == 4 && x.n_changes[1] == 0);
	CHECK_STREQ(x.cursor[2], "b=c6");
	CHECK(x.seq[2] == 6 && x.n_changes[2] == 2);
	CHECK(changelog_kind(log) == ORIGINS_ORIGIN);
	CHECK(changelog_last_sequence(log) == 6);
	/* Past a position: only what follows it. */
	x = replay_commits(log, 4);
	CHECK(x.n == 1 && x.changes == 2);
	changelog_close(log);
}

/* Replicated batches (DESIGN §9): all of a batch's changes at one
 * position, the stream sequence of its message; positions still increase
 * from batch to batch, and a replay past a position sees whole batches. */
static void test_shared_positions(void)
{
	struct change ch[6];
	Consent__V1__Consent *v[6];
	struct changelog_batch b[2];

	fresh_dir();
	struct changelog *log = open_ok(NULL);
	if (!log)
		return;
	for (int i = 0; i < 6; i++) {
		change_make(&ch[i], (uint64_t)i + 1);
		ch[i].c.sequence = i < 3 ? 5 : 9; /* messages 5 and 9 */
		v[i] = &ch[i].c;
	}
	for (int j = 0; j < 2; j++)
		b[j] = (struct changelog_batch){
			.changes = &v[3 * j], .n = 3,
			.commit = { .kind = ORIGINS_ORIGIN, .origin = "o",
				    .origin_len = 1, .cursor = j ? "b" : "a",
				    .cursor_len = 1 },
		};
	CHECKF(changelog_append_batches(log, b, 2) == 0, "%s",
	       changelog_error(log));
	CHECK(changelog_last_sequence(log) == 9);
	/* A batch starting at the last position is refused, as is one
	 * going back within it, and one without origin repeating one. */
	ch[0].c.sequence = 9;
	b[0].n = 1;
	CHECK(changelog_append_batches(log, b, 1) == -EINVAL);
	ch[0].c.sequence = 12;
	ch[1].c.sequence = 11;
	b[0].n = 2;
	CHECK(changelog_append_batches(log, b, 1) == -EINVAL);
	ch[1].c.sequence = 12;
	CHECK(changelog_append(log, v, 2) == -EINVAL);
	CHECK(changelog_last_sequence(log) == 9);
	changelog_close(log);

	log = open_ok(NULL);
	if (!log)
		return;
	struct commits x = replay_commits(log, 0);
	CHECK(x.n == 2 && x.changes == 6);
	CHECK(x.seq[0] == 5 && x.n_changes[0] == 3);
	CHECK(x.seq[1] == 9 && x.n_changes[1] == 3);
	CHECK_STREQ(x.cursor[1], "o=b");
	x = replay_commits(log, 5);
	CHECK(x.n == 1 && x.changes == 3);
	x = replay_commits(log, 8);
	CHECK(x.n == 1 && x.changes == 3);
	x = replay_commits(log, 9);
	CHECK(x.n == 0 && x.changes == 0);
	changelog_close(log);
}

/* The commit record decides: a batch whose commit record a crash cut is
 * gone with its changes; one whose commit record is whole stays. */
static void test_origin_torn(void)
{
	uint64_t seq = 1;
	size_t n[] = { 3, 3 };
	char p[512];

	fresh_dir();
	struct changelog *log = open_ok(NULL);
	if (!log)
		return;
	CHECK(append_origin(log, "o", n, 2, &seq) == 0);
	changelog_close(log);
	seg_path(SEG0, p, sizeof(p));
	size_t len;
	uint8_t *bytes = read_file(p, &len);
	if (!bytes)
		return;
	/* Walk to the second batch's commit record: the 8th record. */
	size_t pos = 16, rec[8];
	for (int i = 0; i < 8; i++) {
		rec[i] = pos;
		pos += 16 + (bytes[pos] | bytes[pos + 1] << 8);
	}
	CHECK(pos == len);
	int bad = 0;
	for (size_t cut = rec[4]; cut <= len; cut++) {
		write_file(p, bytes, cut);
		log = open_ok(NULL);
		if (!log) {
			bad++;
			continue;
		}
		struct commits x = replay_commits(log, 0);
		int whole = cut == len;

		if (x.n != 1 + whole || x.changes != 3u + 3u * whole ||
		    changelog_last_sequence(log) != (whole ? 6u : 3u) ||
		    strcmp(x.cursor[x.n - 1], whole ? "o=c6" : "o=c3") != 0 ||
		    file_size(p) != (long)(whole ? len : rec[4]))
			bad++;
		changelog_close(log);
	}
	CHECKF(bad == 0, "%d cuts misbehaved", bad);
	/* The first batch's commit record cut: nothing of the log is left
	 * (a torn creation), and the log takes appends again. */
	write_file(p, bytes, rec[3] + 20);
	log = open_ok(NULL);
	if (log) {
		CHECK(changelog_last_sequence(log) == 0);
		CHECK(changelog_kind(log) == ORIGINS_NONE);
		CHECK(replay_commits(log, 0).changes == 0);
		CHECK(append_range(log, 1, 1) == 0);
		changelog_close(log);
	}
	free(bytes);

	/* Changes without their commit record in a segment that is not the
	 * last: damage, not a torn tail. */
	fresh_dir();
	struct changelog_options opt = { .segment_bytes = 100 };
	log = open_ok(&opt);
	if (!log)
		return;
	seq = 1;
	CHECK(append_origin(log, "o", n, 1, &seq) == 0);
	CHECK(append_origin(log, "o", n, 1, &seq) == 0); /* rolls */
	changelog_close(log);
	bytes = read_file(p, &len);
	if (!bytes)
		return;
	pos = 16;
	for (int i = 0; i < 3; i++)
		pos += 16 + (bytes[pos] | bytes[pos + 1] << 8);
	write_file(p, bytes, pos);
	open_fails("without their commit record");
	free(bytes);
}

/* Appends one record in the version 1 format (no type byte). */
static size_t v1_record(uint8_t *p, uint64_t seq)
{
	struct change ch;

	change_make(&ch, seq);
	size_t len = consent__v1__consent__pack(&ch.c, p + 16);
	uint8_t lb[4] = { (uint8_t)len, (uint8_t)(len >> 8), 0, 0 };
	uint32_t lc = (uint32_t)XXH3_64bits(lb, 4);
	uint64_t sum = XXH3_64bits(p + 16, len);

	memcpy(p, lb, 4);
	for (int i = 0; i < 4; i++)
		p[4 + i] = (uint8_t)(lc >> (8 * i));
	for (int i = 0; i < 8; i++)
		p[8 + i] = (uint8_t)(sum >> (8 * i));
	return 16 + len;
}

/* A log written before origins (segment version 1) opens, reads as fed
 * without origins, and takes appends in a new version 2 segment. */
static void test_old_format(void)
{
	uint8_t buf[4096];
	size_t len = 16;
	char p[512], p2[512];

	fresh_dir();
	struct changelog *log = open_ok(NULL); /* makes DIR/changes */
	changelog_close(log);
	memcpy(buf, "CONSLOG\x01", 8);
	buf[8] = 1;
	memset(buf + 9, 0, 7);
	for (uint64_t s = 1; s <= 3; s++)
		len += v1_record(buf + len, s);
	seg_path(SEG0, p, sizeof(p));
	write_file(p, buf, len);
	log = open_ok(NULL);
	if (!log)
		return;
	struct collect col = replay_all(log, 0);
	CHECK(col.n == 3 && col.first == 1 && col.last == 3 && col.bad == 0);
	CHECK(changelog_kind(log) == ORIGINS_SEQUENCE);
	CHECK(changelog_last_sequence(log) == 3);
	uint64_t seq = 4;
	size_t n[] = { 1 };
	CHECK(append_origin(log, "o", n, 1, &seq) == -EINVAL);
	CHECK(append_range(log, 4, 2) == 0);
	changelog_close(log);
	CHECK(file_size(p) == (long)len); /* sealed: not appended to */
	seg_path("00000000000000000004.log", p2, sizeof(p2));
	CHECK(file_size(p2) > 16);
	log = open_ok(NULL);
	if (!log)
		return;
	col = replay_all(log, 0);
	CHECK(col.n == 5 && col.last == 5 && col.bad == 0);
	CHECK(changelog_kind(log) == ORIGINS_SEQUENCE);
	changelog_close(log);
	/* A torn tail of a version 1 segment is still one record's. */
	unlink(p2);
	write_file(p, buf, len - 5);
	log = open_ok(NULL);
	if (log) {
		CHECK(changelog_last_sequence(log) == 2);
		changelog_close(log);
	}
}

int main(void)
{
	RUN(test_round_trip);
	RUN(test_sequence_rules);
	RUN(test_torn_tail);
	RUN(test_damage_in_middle);
	RUN(test_drop);
	RUN(test_failed_write);
	RUN(test_crash);
	RUN(test_origin_batches);
	RUN(test_origin_torn);
	RUN(test_shared_positions);
	RUN(test_old_format);
	if (dir[0])
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return check_summary();
}
