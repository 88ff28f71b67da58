/*
 * loadgen: drives consentd (RPC, RESP) or Redis (GET, MGET) with checks of
 * the synthetic dataset and verifies every reply (bench/README.md).
 *
 * Each thread owns an io_uring (--io uring, the default: see "the io_uring
 * loop" below) or an epoll instance (--io epoll, and under --tls-ca), and
 * its share of the connections.
 * Closed loop (no --rate): every connection keeps --pipeline requests in
 * flight; latency runs from the moment a request is queued. Open loop
 * (--rate R): each connection has a fixed schedule of R / connections
 * requests per second and a request's latency runs from its INTENDED send
 * time, so a stall on either side is charged to every request it delays
 * (no coordinated omission). Requests intended before --warmup ends are
 * verified but not measured. The run stops issuing at --duration (or
 * after --requests measured requests), waits --drain seconds for the
 * replies still owed, and counts the rest as lost.
 *
 * The requests are prepared before the run (loadgen_reqs.c): a connection
 * picks one at random, copies its bytes with a fresh id, and verifies the
 * reply against the expected bytes, decoding it only when they differ
 * (--verify full decodes every reply, the slower path kept to compare).
 *
 * --tls-ca FILE speaks TLS to a consentd TLS port (OpenSSL over the same
 * non-blocking sockets: a blocking handshake at connect, verifying the
 * server's certificate against FILE and the host, then SSL_write/SSL_read
 * where send/recv were); the replies are verified the same way.
 *
 * Exit: 0 all verified; 1 any wrong answer; 2 usage; 3 transport trouble
 * (refused connection, dropped connection, lost replies) with no wrong
 * answer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench/loadgen.h"
#include "core/enums.h"

#define LG_EXIT_OK 0
#define LG_EXIT_WRONG 1
#define LG_EXIT_USAGE 2
#define LG_EXIT_TRANSPORT 3

#define LG_BATCH_MAX 10000
#define LG_READ_CHUNK (64 * 1024)
#define LG_SPIN_NS 5000        /* open loop: closer than this, poll */
#define LG_WAIT_MAX_NS 10000000 /* wake at least every 10 ms */
#define LG_DETAILS_MAX 5       /* wrong answers printed in full */
#define LG_SECONDS_MAX 3600    /* per-second series length */
#define LG_PHASES_MAX 16       /* --phases: windows marked by SIGUSR1 */
#define LG_BUSY_LIMIT 0.85     /* a thread busier than this: client-bound */
/* io_uring open loop: a turn every 50 us. A turn (enter, timer, two
 * context switches) cost about 12 us of the client's core on the 2-core
 * VM, so 20 us ticks kept it 80 % busy whatever the rate; 50 us, 58 %
 * (p99 the same), 100 us, 45 % (p50 100 us higher). */
#define LG_TICK_NS_DEFAULT 50000
#define LG_URING_BUFS 256      /* provided receive buffers per thread */
#define LG_URING_BUF_SIZE (16 * 1024)
#define LG_URING_BGID 1
#define LG_UD_RECV 1u          /* user_data: conn << 8 | op */
#define LG_UD_SEND 2u

enum lg_io {
	LG_IO_URING = 0, /* io_uring: multishot recv, one submit per tick */
	LG_IO_EPOLL = 1, /* epoll: a send and recv call per event */
};

struct options {
	const char *host;
	const char *port;
	enum lg_proto proto;
	uint32_t connections;
	uint32_t threads;
	uint32_t pipeline;
	uint32_t batch;
	double hit_ratio;
	enum lg_skew skew;
	double duration_s;
	uint64_t requests;  /* 0: bounded by duration */
	double rate;        /* requests/s in total; 0: closed loop */
	double warmup_s;
	double drain_s;
	uint64_t seed;
	uint64_t records;
	bool have_records;
	bool have_duration;
	uint64_t pool;
	uint32_t max_outstanding; /* open loop, per connection */
	const char *json;
	const char *label;
	bool quiet;
	bool emit_redis_load;
	const char *out;    /* --emit-redis-load destination */
	bool verify_full;   /* decode every reply, not just the odd ones */
	uint32_t distinct;  /* requests prepared; 0: LG_DISTINCT_CHECKS worth */
	const char *tls_ca; /* TLS, verifying the server against this CA */
	enum lg_io io;
	bool have_io;
	uint64_t tick_ns;   /* open loop: sends batched per tick; 0: none */
	bool have_tick;
	long server_pid;    /* --server-pid: its CPU over the window */
	double busy_limit;  /* client-bound above this per thread */
	bool phases;        /* SIGUSR1 opens a window, SIGUSR2 stops */
};

/* Checks prepared by default: enough distinct keys that the server's
 * lookups miss its caches as with fresh draws (1 M keys of a 10 M-record
 * index touch ~64 MB of buckets, twice the L3; 4 M measured the same),
 * few enough to prepare in about a second and hold in 50-170 MB. */
#define LG_DISTINCT_CHECKS (1u << 20)
#define LG_DISTINCT_MIN 256u

/* A request in flight. */
struct slot {
	uint64_t id;
	uint64_t intended_ns; /* scheduled (open loop) or queued (closed) */
	uint32_t req;         /* which prepared request (lg_reqs) */
	uint32_t n;           /* checks */
	bool measured;        /* intended after the warm-up */
};

struct lg_conn {
	int fd;
	uint32_t index;      /* in its worker's conns (io_uring user_data) */
	SSL *ssl;            /* --tls-ca: the session over fd */
	bool dead;
	bool want_out;       /* EPOLLOUT armed */
	struct lg_buf out;
	size_t out_off;      /* bytes of out already written (epoll) */
	/* io_uring: out fills while tx is in the kernel's hands; one send
	 * in flight per connection keeps the bytes in order. */
	struct lg_buf tx;
	size_t tx_off;
	bool tx_busy;
	bool recv_armed;     /* a multishot recv is in flight */
	struct lg_buf in;
	struct slot *ring;   /* cap slots; requests in flight, oldest first */
	uint32_t cap, head, count;
	uint64_t next_id;
	uint64_t next_due_ns; /* open loop schedule */
};

struct worker {
	unsigned index;
	pthread_t tid;
	int epfd;
	struct lg_conn *conns;
	uint32_t n_conns;
	struct lg_rng rng;
	struct lg_codec *codec;
	struct lg_expect *scratch; /* batch answers for a full decode */
	struct hist hist;
	/* counters */
	uint64_t issued, issued_checks, issued_hits;
	uint64_t completed, measured, measured_checks;
	uint64_t wrong_replies, wrong_checks, decoded;
	uint64_t conn_errors, lost;
	uint64_t last_measured_ns;
	uint32_t *per_sec;
	int rc;
	/* this thread's CPU (CLOCK_THREAD_CPUTIME_ID) over the measured
	 * window: marked when it opens and when issuing stops */
	uint64_t cpu_at_measure, cpu_at_stop, wall_at_measure, wall_at_stop;
	double srv_at_measure, srv_at_stop; /* worker 0, --server-pid */
	struct hist *phase_hist; /* --phases: LG_PHASES_MAX of them */
	/* io_uring */
	struct io_uring ring;
	bool ring_ok;
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *bufs;
	uint64_t syscalls;       /* io_uring_enter; or epoll_wait, send, recv */
	uint64_t sends;          /* send operations (calls or SQEs) */
};

/* Shared, set before the workers start and read-only afterwards, except
 * the request budget and the detail counter (atomics). */
static struct options opt;
static SSL_CTX *tls_ctx; /* --tls-ca; read-only once made */
static const struct lg_reqs *reqs;
static uint64_t t_start_ns, t_measure_ns, t_stop_ns;
static uint64_t interval_ns; /* open loop, per connection */
static _Atomic uint64_t budget_used; /* --requests: measured requests issued */
/* SIGUSR2 (--phases): issuing stops at this time (UINT64_MAX: not asked). */
static _Atomic uint64_t stop_asked_ns = UINT64_MAX;
/* SIGUSR1 (--phases): phase p > 0 began at phase_start_ns[p]; requests
 * are counted in the phase their intended send time falls in. */
static _Atomic unsigned phase_count = 1;
static uint64_t phase_start_ns[LG_PHASES_MAX];
static atomic_int details_printed;  /* wrong answers printed so far */
static pthread_barrier_t start_barrier;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* When issuing stops: the end of the run, or earlier on SIGUSR2. */
static uint64_t stop_ns(void)
{
	uint64_t asked = atomic_load_explicit(&stop_asked_ns,
					      memory_order_relaxed);
	return asked < t_stop_ns ? asked : t_stop_ns;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* utime + stime of a process, in seconds; < 0 if it cannot be read. */
static double proc_cpu_seconds(long pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	/* The command name may hold spaces and parentheses: fields are
	 * counted from the last ')'; utime and stime are fields 14, 15. */
	char *p = strrchr(buf, ')');
	unsigned long long ut, st;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
				"%llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* --phases. Only clock_gettime and atomics: async-signal-safe. */
static void on_phase_signal(int sig)
{
	uint64_t now = now_ns();
	if (sig == SIGUSR2) {
		atomic_store_explicit(&stop_asked_ns, now, memory_order_relaxed);
		return;
	}
	unsigned p = atomic_load_explicit(&phase_count, memory_order_relaxed);
	if (p >= LG_PHASES_MAX)
		return;
	phase_start_ns[p] = now;
	/* Release: a worker that sees the count sees the start. */
	atomic_store_explicit(&phase_count, p + 1, memory_order_release);
}

/* The phase a request intended at t belongs to. */
static unsigned phase_of(uint64_t t)
{
	unsigned p = atomic_load_explicit(&phase_count, memory_order_acquire);
	while (p > 1 && t < phase_start_ns[p - 1])
		p--;
	return p - 1;
}

static const char *proto_name(enum lg_proto p)
{
	static const char *const names[] = { "rpc", "resp-check", "resp-mcheck",
					     "redis-get", "redis-mget" };
	return names[p];
}

/* ---- connections -------------------------------------------------------- */

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return false;
}

static int lg_conn_open(struct lg_conn *c, const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	if (tls_ctx) {
		/* The handshake blocking, before the run starts. */
		c->ssl = SSL_new(tls_ctx);
		if (!c->ssl || !SSL_set_fd(c->ssl, fd) ||
		    !SSL_set1_host(c->ssl, opt.host) ||
		    SSL_connect(c->ssl) != 1) {
			char why[256];
			ERR_error_string_n(ERR_get_error(), why, sizeof(why));
			fprintf(stderr, "loadgen: TLS handshake with %s: %s "
				"(verify: %s)\n", opt.host, why,
				c->ssl ? X509_verify_cert_error_string(
						 SSL_get_verify_result(c->ssl))
				       : "-");
			return -EPROTO;
		}
	}
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	return 0;
}

static int lg_conn_init(struct lg_conn *c, uint32_t cap)
{
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->cap = cap;
	c->next_id = LG_ID_BASE;
	c->ring = calloc(cap, sizeof(*c->ring));
	if (!c->ring)
		return -ENOMEM;
	return 0;
}

static void lg_conn_fini(struct lg_conn *c)
{
	SSL_free(c->ssl);
	c->ssl = NULL;
	if (c->fd >= 0)
		close(c->fd);
	lg_buf_fini(&c->out);
	lg_buf_fini(&c->tx);
	lg_buf_fini(&c->in);
	free(c->ring);
}

/* A connection that failed: its replies are lost, the others go on. */
static void lg_conn_fail(struct worker *w, struct lg_conn *c, const char *why, int err)
{
	if (c->dead)
		return;
	fprintf(stderr, "loadgen: connection lost (%s: %s), %u replies owed\n",
		why, strerror(err < 0 ? -err : err), c->count);
	w->conn_errors++;
	w->lost += c->count;
	c->count = 0;
	c->dead = true;
	if (opt.io == LG_IO_EPOLL) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	} else {
		/* Operations in flight still name the fd: they end with
		 * an error once it is shut down, and it is closed at the
		 * end of the run (lg_conn_fini). */
		shutdown(c->fd, SHUT_RDWR);
	}
}

static void lg_conn_arm(struct worker *w, struct lg_conn *c, bool want_out)
{
	if (c->want_out == want_out || c->dead)
		return;
	struct epoll_event ev = {
		.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
		.data.ptr = c,
	};
	epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
	c->want_out = want_out;
}

/* SSL_write with send's contract: bytes written, or -1 with errno
 * (EAGAIN when OpenSSL wants the socket again). */
static ssize_t lg_tls_send(struct lg_conn *c, const char *buf, size_t len)
{
	int n = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
	if (n > 0)
		return n;
	switch (SSL_get_error(c->ssl, n)) {
	case SSL_ERROR_WANT_WRITE:
	case SSL_ERROR_WANT_READ:
		errno = EAGAIN;
		break;
	default:
		ERR_clear_error();
		errno = EPROTO;
		break;
	}
	return -1;
}

/* SSL_read with recv's contract (0: the server closed). */
static ssize_t lg_tls_recv(struct lg_conn *c, char *buf, size_t len)
{
	int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
	if (n > 0)
		return n;
	switch (SSL_get_error(c->ssl, n)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	default:
		ERR_clear_error();
		errno = EPROTO;
		return -1;
	}
}

static void lg_conn_flush(struct worker *w, struct lg_conn *c)
{
	while (!c->dead && c->out_off < c->out.len) {
		ssize_t n = c->ssl
			? lg_tls_send(c, c->out.data + c->out_off,
				      c->out.len - c->out_off)
			: send(c->fd, c->out.data + c->out_off,
			       c->out.len - c->out_off, MSG_NOSIGNAL);
		w->sends++;
		w->syscalls++;
		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			lg_conn_arm(w, c, true);
			return;
		}
		lg_conn_fail(w, c, "send", n < 0 ? errno : EPIPE);
		return;
	}
	if (c->out_off == c->out.len) {
		c->out.len = 0;
		c->out_off = 0;
		lg_conn_arm(w, c, false);
	}
}

/* ---- issuing ------------------------------------------------------------ */

/* May one more request go out? Issues nothing past the stop time; with
 * --requests, takes one unit of the shared measured budget. */
static bool may_issue(uint64_t intended_ns)
{
	if (intended_ns >= stop_ns())
		return false;
	if (opt.requests && intended_ns >= t_measure_ns) {
		uint64_t used = atomic_fetch_add_explicit(&budget_used, 1,
							  memory_order_relaxed);
		if (used >= opt.requests)
			return false;
	}
	return true;
}

static int lg_conn_issue(struct worker *w, struct lg_conn *c, uint64_t intended_ns)
{
	uint32_t r = (uint32_t)lg_rng_below(&w->rng, lg_reqs_count(reqs));
	uint64_t id = c->next_id++;
	int rc = lg_reqs_emit(reqs, r, id, &c->out);
	if (rc < 0)
		return rc;
	struct slot *s = &c->ring[(c->head + c->count) % c->cap];
	s->id = id;
	s->intended_ns = intended_ns;
	s->req = r;
	s->n = opt.batch;
	s->measured = intended_ns >= t_measure_ns;
	c->count++;
	w->issued++;
	w->issued_checks += opt.batch;
	w->issued_hits += lg_reqs_hits(reqs, r);
	return 0;
}

/* Tops every connection up: to the pipeline depth (closed loop) or to the
 * schedule (open loop). Returns the next time the schedule wants a send
 * (open loop), or UINT64_MAX. */
static uint64_t worker_issue(struct worker *w, uint64_t now)
{
	uint64_t next = UINT64_MAX;
	for (uint32_t k = 0; k < w->n_conns; k++) {
		struct lg_conn *c = &w->conns[k];
		if (c->dead)
			continue;
		bool issued = false;
		if (opt.rate > 0) {
			while (c->next_due_ns <= now && c->count < c->cap &&
			       may_issue(c->next_due_ns)) {
				if (lg_conn_issue(w, c, c->next_due_ns) < 0)
					break;
				c->next_due_ns += interval_ns;
				issued = true;
			}
			if (c->next_due_ns < next && c->next_due_ns < stop_ns())
				next = c->next_due_ns;
		} else {
			while (c->count < c->cap && may_issue(now)) {
				if (lg_conn_issue(w, c, now) < 0)
					break;
				issued = true;
			}
		}
		/* io_uring: the loop sends what is queued, once per turn. */
		if (issued && opt.io == LG_IO_EPOLL)
			lg_conn_flush(w, c);
	}
	return next;
}

/* ---- replies ------------------------------------------------------------ */

static void print_detail(const char *detail)
{
	int n = atomic_fetch_add_explicit(&details_printed, 1,
					  memory_order_relaxed);
	if (n < LG_DETAILS_MAX)
		fprintf(stderr, "loadgen: WRONG ANSWER: %s\n", detail);
	else if (n == LG_DETAILS_MAX)
		fprintf(stderr, "loadgen: (further wrong answers not shown)\n");
}

/* Verifies the replies in data[0..len) in order; returns the bytes used
 * (the rest is the start of a reply, or the connection failed). */
static size_t lg_conn_consume(struct worker *w, struct lg_conn *c,
			      const char *data, size_t len, uint64_t now)
{
	size_t off = 0;
	while (off < len) {
		if (c->count == 0) {
			lg_conn_fail(w, c, "reply with no request", EPROTO);
			return off;
		}
		struct slot *s = &c->ring[c->head];
		struct lg_reply r;
		long used = lg_reqs_verify(reqs, w->codec, s->req, s->id,
					   opt.verify_full, w->scratch,
					   data + off, len - off, &r);
		if (used == 0)
			break;
		if (used < 0) {
			lg_conn_fail(w, c, "reply does not parse", (int)used);
			return off;
		}
		off += (size_t)used;
		c->head = (c->head + 1) % c->cap;
		c->count--;
		w->completed++;
		w->decoded += r.decoded;
		if (r.wrong) {
			w->wrong_replies++;
			w->wrong_checks += r.wrong;
			print_detail(r.detail);
		}
		if (s->measured) {
			uint64_t lat = now > s->intended_ns ? now - s->intended_ns : 0;
			hist_record(&w->hist, lat);
			if (w->phase_hist)
				hist_record(&w->phase_hist[phase_of(s->intended_ns)],
					    lat);
			w->measured++;
			w->measured_checks += s->n;
			w->last_measured_ns = now;
			uint64_t sec = (now - t_measure_ns) / 1000000000ull;
			if (sec < LG_SECONDS_MAX)
				w->per_sec[sec]++;
		}
	}
	return off;
}

static void lg_conn_replies(struct worker *w, struct lg_conn *c, uint64_t now)
{
	size_t off = lg_conn_consume(w, c, c->in.data, c->in.len, now);
	if (off && !c->dead) {
		memmove(c->in.data, c->in.data + off, c->in.len - off);
		c->in.len -= off;
	}
}

static void lg_conn_read(struct worker *w, struct lg_conn *c)
{
	for (;;) {
		if (lg_buf_reserve(&c->in, LG_READ_CHUNK) < 0) {
			lg_conn_fail(w, c, "read buffer", ENOMEM);
			return;
		}
		ssize_t n = c->ssl
			? lg_tls_recv(c, c->in.data + c->in.len,
				      c->in.cap - c->in.len)
			: recv(c->fd, c->in.data + c->in.len,
			       c->in.cap - c->in.len, 0);
		w->syscalls++;
		if (n > 0) {
			size_t room = c->in.cap - c->in.len;
			c->in.len += (size_t)n;
			lg_conn_replies(w, c, now_ns());
			/* A short read drained the socket: epoll (level-
			 * triggered) says when there is more, and a recv
			 * just to hear EAGAIN costs as much as a reply.
			 * Not so under TLS: OpenSSL may hold decrypted
			 * bytes epoll cannot see, so read to EAGAIN. */
			if (c->dead || ((size_t)n < room && !c->ssl))
				return;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		lg_conn_fail(w, c, n == 0 ? "closed by server" : "recv",
			  n == 0 ? ECONNRESET : errno);
		return;
	}
}

/* ---- the loop ----------------------------------------------------------- */

static uint32_t worker_in_flight(const struct worker *w)
{
	uint32_t n = 0;
	for (uint32_t k = 0; k < w->n_conns; k++)
		n += w->conns[k].dead ? 0 : w->conns[k].count;
	return n;
}

static bool worker_alive(const struct worker *w)
{
	for (uint32_t k = 0; k < w->n_conns; k++)
		if (!w->conns[k].dead)
			return true;
	return false;
}

/* Is issuing over (the end, SIGUSR2, or the --requests budget)? */
static bool worker_stopping(uint64_t now)
{
	return now >= stop_ns() ||
	       (opt.requests &&
		atomic_load_explicit(&budget_used, memory_order_relaxed) >=
			opt.requests);
}

/* Marks this thread's CPU clock when the measured window opens and when
 * issuing stops: its busy share is CPU over wall between the two. */
static void worker_mark_cpu(struct worker *w, uint64_t now, bool stopping)
{
	if (!w->wall_at_measure && now >= t_measure_ns) {
		w->wall_at_measure = now;
		w->cpu_at_measure = thread_cpu_ns();
		if (opt.server_pid && w->index == 0)
			w->srv_at_measure = proc_cpu_seconds(opt.server_pid);
	}
	if (!w->wall_at_stop && stopping) {
		w->wall_at_stop = now;
		w->cpu_at_stop = thread_cpu_ns();
		if (opt.server_pid && w->index == 0)
			w->srv_at_stop = proc_cpu_seconds(opt.server_pid);
	}
}

/* The drain once issuing has stopped: true when the loop should end. */
static bool worker_done(struct worker *w, uint64_t now, bool stopping,
			uint64_t *drain_end)
{
	if (!worker_alive(w))
		return true;
	if (stopping && worker_in_flight(w) == 0)
		return true;
	if (stopping && *drain_end == UINT64_MAX)
		*drain_end = now + (uint64_t)(opt.drain_s * 1e9);
	return now >= *drain_end;
}

static void worker_loop_epoll(struct worker *w)
{
	struct epoll_event evs[64];
	uint64_t drain_end = UINT64_MAX; /* set once issuing has stopped */
	for (;;) {
		uint64_t now = now_ns();
		uint64_t next_due = worker_issue(w, now);
		bool stopping = worker_stopping(now);
		worker_mark_cpu(w, now, stopping);
		if (worker_done(w, now, stopping, &drain_end))
			break;

		uint64_t wait = LG_WAIT_MAX_NS;
		if (opt.rate > 0 && next_due != UINT64_MAX)
			wait = next_due > now ? next_due - now : 0;
		if (wait < LG_SPIN_NS)
			wait = 0;
		if (wait > LG_WAIT_MAX_NS)
			wait = LG_WAIT_MAX_NS;
		struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)wait };
		int n = epoll_pwait2(w->epfd, evs, 64, &ts, NULL);
		w->syscalls++;
		if (n < 0 && errno != EINTR) {
			w->rc = -errno;
			break;
		}
		for (int i = 0; i < n; i++) {
			struct lg_conn *c = evs[i].data.ptr;
			if (c->dead)
				continue;
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				lg_conn_read(w, c);
			if (!c->dead && (evs[i].events & EPOLLOUT))
				lg_conn_flush(w, c);
		}
	}
}

/* ---- the io_uring loop --------------------------------------------------
 * One ring per thread, made on that thread (SINGLE_ISSUER, DEFER_TASKRUN:
 * completions are posted only when this thread enters the kernel). Each
 * connection has a multishot recv over a provided-buffer ring and at most
 * one send in flight. A turn of the loop: take the completions (verify
 * replies), top up (closed loop) or issue everything the schedule has due
 * (open loop), queue one send per connection holding new requests, and
 * submit them all with the wait in one io_uring_enter. In the open loop
 * with --tick the thread sleeps a tick between turns whatever arrives
 * (the wait asks for more completions than can come, so only the timer
 * wakes it): the requests due on a connection during a tick go out in
 * one send, and replies are timed when the tick ends, so a reported
 * latency may be up to a tick late in sending and a tick late in reading,
 * never early: the client's batching is charged to the server. */

static struct io_uring_sqe *uring_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	while (!sqe) {
		/* Sized for a recv and a send per connection; only a
		 * burst of re-arms could fill it. */
		io_uring_submit(&w->ring);
		w->syscalls++;
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void uring_arm_recv(struct worker *w, struct lg_conn *c)
{
	struct io_uring_sqe *sqe = uring_sqe(w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = LG_URING_BGID;
	io_uring_sqe_set_data64(sqe, (uint64_t)c->index << 8 | LG_UD_RECV);
	c->recv_armed = true;
}

/* Queues the connection's pending bytes: the rest of a short send, else
 * everything issued since the last send (out and tx swap roles). */
static void uring_send(struct worker *w, struct lg_conn *c)
{
	if (c->dead || c->tx_busy)
		return;
	if (c->tx_off >= c->tx.len) {
		if (c->out.len == 0)
			return;
		struct lg_buf t = c->tx;
		c->tx = c->out;
		c->out = t;
		c->out.len = 0;
		c->tx_off = 0;
	}
	struct io_uring_sqe *sqe = uring_sqe(w);
	io_uring_prep_send(sqe, c->fd, c->tx.data + c->tx_off,
			   c->tx.len - c->tx_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, (uint64_t)c->index << 8 | LG_UD_SEND);
	c->tx_busy = true;
	w->sends++;
}

static void uring_buf_return(struct worker *w, unsigned bid)
{
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * LG_URING_BUF_SIZE,
			      LG_URING_BUF_SIZE, (unsigned short)bid,
			      io_uring_buf_ring_mask(LG_URING_BUFS), 0);
	io_uring_buf_ring_advance(w->br, 1);
}

/* Received bytes: verified in the provided buffer when nothing is carried
 * over, so only a reply cut by the buffer's end is copied. */
static void uring_in(struct worker *w, struct lg_conn *c, const char *data,
		     size_t len, uint64_t now)
{
	if (c->in.len == 0) {
		size_t used = lg_conn_consume(w, c, data, len, now);
		data += used;
		len -= used;
		if (c->dead || len == 0)
			return;
	}
	if (lg_buf_reserve(&c->in, len) < 0) {
		lg_conn_fail(w, c, "read buffer", ENOMEM);
		return;
	}
	memcpy(c->in.data + c->in.len, data, len);
	c->in.len += len;
	if (c->in.len > len)
		lg_conn_replies(w, c, now);
}

static void uring_cqe(struct worker *w, const struct io_uring_cqe *cqe,
		      uint64_t now)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	uint32_t k = (uint32_t)(ud >> 8);
	if (k >= w->n_conns)
		return;
	struct lg_conn *c = &w->conns[k];
	int res = cqe->res;

	if ((ud & 0xff) == LG_UD_SEND) {
		c->tx_busy = false;
		if (c->dead)
			return;
		if (res <= 0) {
			if (res == -EINTR || res == -EAGAIN) {
				uring_send(w, c);
				return;
			}
			lg_conn_fail(w, c, "send", res < 0 ? res : -EPIPE);
			return;
		}
		c->tx_off += (size_t)res;
		if (c->tx_off >= c->tx.len) {
			c->tx.len = 0;
			c->tx_off = 0;
		}
		uring_send(w, c);
		return;
	}

	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	if (res > 0 && has_buf && !c->dead)
		uring_in(w, c, w->bufs + (size_t)bid * LG_URING_BUF_SIZE,
			 (size_t)res, now);
	if (has_buf)
		uring_buf_return(w, bid);
	if (c->dead)
		return;
	if (res == 0)
		lg_conn_fail(w, c, "closed by server", ECONNRESET);
	else if (res < 0 && res != -ENOBUFS)
		lg_conn_fail(w, c, "recv", res);
	else if (!c->recv_armed)
		uring_arm_recv(w, c); /* out of buffers for a moment */
}

/* On the worker's thread: the ring (SINGLE_ISSUER binds it to its
 * creator) and the provided receive buffers. */
static int uring_setup(struct worker *w)
{
	struct io_uring_params p;
	unsigned sq = 64;
	while (sq < 2 * w->n_conns + 8)
		sq <<= 1;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_CQSIZE;
	p.cq_entries = 4096 + 4 * sq;
	int rc = io_uring_queue_init_params(sq, &w->ring, &p);
	if (rc < 0)
		return rc;
	w->ring_ok = true;
	/* liburing 2.3 has no io_uring_setup_buf_ring: mapped here. */
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	w->br_bytes = (LG_URING_BUFS * sizeof(struct io_uring_buf) + page - 1) &
		      ~(page - 1);
	void *br = mmap(NULL, w->br_bytes, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (br == MAP_FAILED)
		return -ENOMEM;
	w->br = br;
	w->bufs = malloc((size_t)LG_URING_BUFS * LG_URING_BUF_SIZE);
	if (!w->bufs)
		return -ENOMEM;
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)w->br;
	reg.ring_entries = LG_URING_BUFS;
	reg.bgid = LG_URING_BGID;
	rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (rc < 0)
		return rc;
	io_uring_buf_ring_init(w->br);
	for (unsigned i = 0; i < LG_URING_BUFS; i++)
		io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * LG_URING_BUF_SIZE,
				      LG_URING_BUF_SIZE, (unsigned short)i,
				      io_uring_buf_ring_mask(LG_URING_BUFS), (int)i);
	io_uring_buf_ring_advance(w->br, LG_URING_BUFS);
	return 0;
}

static void worker_loop_uring(struct worker *w)
{
	for (uint32_t k = 0; k < w->n_conns; k++)
		uring_arm_recv(w, &w->conns[k]);
	uint64_t drain_end = UINT64_MAX;
	for (;;) {
		uint64_t now = now_ns();
		uint64_t next_due = worker_issue(w, now);
		for (uint32_t k = 0; k < w->n_conns; k++)
			uring_send(w, &w->conns[k]);
		bool stopping = worker_stopping(now);
		worker_mark_cpu(w, now, stopping);
		if (worker_done(w, now, stopping, &drain_end))
			break;

		unsigned wait_nr = 1;
		uint64_t wait = LG_WAIT_MAX_NS;
		if (opt.rate > 0 && !stopping) {
			uint64_t wake = next_due;
			if (opt.tick_ns) {
				uint64_t tick_end = now + opt.tick_ns;
				if (wake < tick_end)
					wake = tick_end;
				if (wake > tick_end && worker_in_flight(w))
					wake = tick_end;
				/* More than can complete: only the timer
				 * ends the wait. */
				wait_nr = w->ring.cq.ring_entries;
			}
			if (wake != UINT64_MAX)
				wait = wake > now ? wake - now : 0;
			if (!opt.tick_ns && wait < LG_SPIN_NS)
				wait = 0;
		}
		if (wait > LG_WAIT_MAX_NS)
			wait = LG_WAIT_MAX_NS;
		struct __kernel_timespec ts = {
			.tv_sec = 0, .tv_nsec = (long long)wait,
		};
		struct io_uring_cqe *cqe = NULL;
		int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, wait_nr,
							  &ts, NULL);
		w->syscalls++;
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY &&
		    rc != -EAGAIN) {
			w->rc = rc;
			break;
		}
		now = now_ns();
		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			uring_cqe(w, cqe, now);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	/* The default 50 us timer slack would delay every scheduled send of
	 * the open loop by up to that much, charged to the server. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	if (opt.io == LG_IO_URING) {
		int rc = uring_setup(w);
		if (rc < 0)
			w->rc = rc;
	}
	pthread_barrier_wait(&start_barrier); /* connected */
	pthread_barrier_wait(&start_barrier); /* t_start_ns set */
	if (w->rc < 0)
		return NULL;
	for (uint32_t k = 0; k < w->n_conns; k++) {
		/* Stagger the schedules so connections do not fire together. */
		uint32_t global = w->index + k * opt.threads;
		w->conns[k].next_due_ns = t_start_ns +
					  interval_ns * global / opt.connections;
	}
	if (opt.io == LG_IO_URING)
		worker_loop_uring(w);
	else
		worker_loop_epoll(w);
	uint64_t end = now_ns();
	worker_mark_cpu(w, end, true);
	w->lost += worker_in_flight(w);
	return NULL;
}

/* ---- set-up, report ----------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
"usage: loadgen --proto rpc|resp-check|resp-mcheck|redis-get|redis-mget\n"
"               --records N [--seed S] [options]\n"
"       loadgen --emit-redis-load --records N [--seed S] [--out FILE]\n"
"\n"
"  --host H            server address, loopback only (127.0.0.1)\n"
"  --port P            default 7700 rpc, 7701 resp-*, 6379 redis-*\n"
"  --connections N     connections in total (8)\n"
"  --threads T         client threads, each with its own ring or epoll (1)\n"
"  --io uring|epoll    io_uring (default): multishot recv, one submit per\n"
"                      turn; epoll: a send per turn and connection\n"
"                      (--tls-ca needs epoll, its default then)\n"
"  --tick-us T         io_uring open loop: the thread wakes every T us and\n"
"                      sends what fell due per connection in one send (50;\n"
"                      0: wake at each due time and each reply)\n"
"  --server-pid PID    report that process's CPU over the measured window\n"
"  --busy-limit X      a client thread busier than X (0.85) marks the run\n"
"                      client-bound\n"
"  --phases            SIGUSR1 starts a new latency window (up to 16),\n"
"                      SIGUSR2 stops issuing; windows in the JSON\n"
"  --pipeline D        requests in flight per connection, closed loop (1)\n"
"  --batch K           checks per request (1); K > 1 needs rpc, resp-mcheck\n"
"                      or redis-mget; a batch is one brand/channel/type\n"
"  --hit-ratio X       share of checks whose key exists (0.9)\n"
"  --skew uniform|zipf key popularity (uniform; zipf exponent 0.99)\n"
"  --duration SEC      measured seconds after the warm-up (10)\n"
"  --requests N        or: stop after N measured requests\n"
"  --rate R            open loop, R requests/s in total on a fixed\n"
"                      schedule; latency from the intended send time\n"
"  --max-outstanding M open loop: requests in flight per connection (4096/K)\n"
"  --warmup SEC        verified but not measured (1)\n"
"  --drain SEC         wait for owed replies after the end (5)\n"
"  --seed S --records N  the dataset (consentctl gen --seed S --records N)\n"
"  --pool N            keys per pool for batches, present and absent (4M)\n"
"  --distinct N        requests prepared at start-up, picked at random\n"
"                      (as many as hold 1M checks, at least 256)\n"
"  --tls-ca FILE       TLS (a consentd TLS port), the server's certificate\n"
"                      verified against the CAs in FILE and --host\n"
"  --verify fast|full  fast: compare each reply with the expected bytes,\n"
"                      decode only one that differs; full: decode all (fast)\n"
"  --json FILE         write the results as JSON\n"
"  --label TEXT        a name for this run in the output\n"
"  --quiet             no human summary on stdout\n"
"\n"
"Redis form: key c:BRAND:CHANNEL:RTYPE:RECIPIENT, value STATUS:SOURCE:DATE\n"
"(enums as wire numbers, date in Unix seconds).\n"
"Exit: 0 verified, 1 wrong answers, 2 usage, 3 transport errors.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	double d = strtod(s, &end);
	/* Accept 10000000, 1e7 and 10M. */
	if (*end == 'k' || *end == 'K')
		d *= 1e3, end++;
	else if (*end == 'm' || *end == 'M')
		d *= 1e6, end++;
	else if (*end == 'g' || *end == 'G')
		d *= 1e9, end++;
	if (errno || end == s || *end || d < 0 || d > 1.8e19 || d != floor(d))
		return -EINVAL;
	*out = (uint64_t)d;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(d) || d < 0)
		return -EINVAL;
	*out = d;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;
	if (parse_u64(s, &v) < 0 || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_options(int argc, char **argv)
{
	enum {
		O_HOST = 256, O_PORT, O_PROTO, O_CONNS, O_THREADS, O_PIPE,
		O_BATCH, O_HIT, O_SKEW, O_DUR, O_REQS, O_RATE, O_WARM, O_DRAIN,
		O_SEED, O_RECS, O_POOL, O_MAXOUT, O_JSON, O_LABEL, O_QUIET,
		O_EMIT, O_OUT, O_HELP, O_VERIFY, O_DISTINCT, O_TLS_CA,
		O_IO, O_TICK, O_SERVER_PID, O_BUSY, O_PHASES,
	};
	static const struct option longs[] = {
		{ "host", required_argument, 0, O_HOST },
		{ "port", required_argument, 0, O_PORT },
		{ "proto", required_argument, 0, O_PROTO },
		{ "connections", required_argument, 0, O_CONNS },
		{ "threads", required_argument, 0, O_THREADS },
		{ "pipeline", required_argument, 0, O_PIPE },
		{ "batch", required_argument, 0, O_BATCH },
		{ "hit-ratio", required_argument, 0, O_HIT },
		{ "skew", required_argument, 0, O_SKEW },
		{ "duration", required_argument, 0, O_DUR },
		{ "requests", required_argument, 0, O_REQS },
		{ "rate", required_argument, 0, O_RATE },
		{ "warmup", required_argument, 0, O_WARM },
		{ "drain", required_argument, 0, O_DRAIN },
		{ "seed", required_argument, 0, O_SEED },
		{ "records", required_argument, 0, O_RECS },
		{ "pool", required_argument, 0, O_POOL },
		{ "max-outstanding", required_argument, 0, O_MAXOUT },
		{ "json", required_argument, 0, O_JSON },
		{ "label", required_argument, 0, O_LABEL },
		{ "quiet", no_argument, 0, O_QUIET },
		{ "emit-redis-load", no_argument, 0, O_EMIT },
		{ "out", required_argument, 0, O_OUT },
		{ "help", no_argument, 0, O_HELP },
		{ "verify", required_argument, 0, O_VERIFY },
		{ "distinct", required_argument, 0, O_DISTINCT },
		{ "tls-ca", required_argument, 0, O_TLS_CA },
		{ "io", required_argument, 0, O_IO },
		{ "tick-us", required_argument, 0, O_TICK },
		{ "server-pid", required_argument, 0, O_SERVER_PID },
		{ "busy-limit", required_argument, 0, O_BUSY },
		{ "phases", no_argument, 0, O_PHASES },
		{ 0, 0, 0, 0 },
	};
	opt = (struct options){
		.host = "127.0.0.1", .proto = LG_PROTO_RPC, .connections = 8,
		.threads = 1, .pipeline = 1, .batch = 1, .hit_ratio = 0.9,
		.skew = LG_SKEW_UNIFORM, .duration_s = 10, .warmup_s = 1,
		.drain_s = 5, .seed = 1, .pool = 4000000,
		.tick_ns = LG_TICK_NS_DEFAULT, .busy_limit = LG_BUSY_LIMIT,
	};
	bool have_proto = false;
	int ch, bad = 0;
	while ((ch = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
		switch (ch) {
		case O_HOST: opt.host = optarg; break;
		case O_PORT: opt.port = optarg; break;
		case O_PROTO:
			have_proto = true;
			if (!strcmp(optarg, "rpc"))
				opt.proto = LG_PROTO_RPC;
			else if (!strcmp(optarg, "resp-check"))
				opt.proto = LG_PROTO_RESP_CHECK;
			else if (!strcmp(optarg, "resp-mcheck"))
				opt.proto = LG_PROTO_RESP_MCHECK;
			else if (!strcmp(optarg, "redis-get"))
				opt.proto = LG_PROTO_REDIS_GET;
			else if (!strcmp(optarg, "redis-mget"))
				opt.proto = LG_PROTO_REDIS_MGET;
			else
				bad = fprintf(stderr, "loadgen: unknown --proto '%s'\n", optarg);
			break;
		case O_CONNS: bad |= parse_u32(optarg, &opt.connections) < 0; break;
		case O_THREADS: bad |= parse_u32(optarg, &opt.threads) < 0; break;
		case O_PIPE: bad |= parse_u32(optarg, &opt.pipeline) < 0; break;
		case O_BATCH: bad |= parse_u32(optarg, &opt.batch) < 0; break;
		case O_HIT: bad |= parse_double(optarg, &opt.hit_ratio) < 0; break;
		case O_SKEW:
			if (!strcmp(optarg, "uniform"))
				opt.skew = LG_SKEW_UNIFORM;
			else if (!strcmp(optarg, "zipf"))
				opt.skew = LG_SKEW_ZIPF;
			else
				bad = fprintf(stderr, "loadgen: unknown --skew '%s'\n", optarg);
			break;
		case O_DUR:
			bad |= parse_double(optarg, &opt.duration_s) < 0;
			opt.have_duration = true;
			break;
		case O_REQS: bad |= parse_u64(optarg, &opt.requests) < 0; break;
		case O_RATE: bad |= parse_double(optarg, &opt.rate) < 0; break;
		case O_WARM: bad |= parse_double(optarg, &opt.warmup_s) < 0; break;
		case O_DRAIN: bad |= parse_double(optarg, &opt.drain_s) < 0; break;
		case O_SEED: bad |= parse_u64(optarg, &opt.seed) < 0; break;
		case O_RECS:
			bad |= parse_u64(optarg, &opt.records) < 0;
			opt.have_records = true;
			break;
		case O_POOL: bad |= parse_u64(optarg, &opt.pool) < 0; break;
		case O_MAXOUT: bad |= parse_u32(optarg, &opt.max_outstanding) < 0; break;
		case O_JSON: opt.json = optarg; break;
		case O_LABEL: opt.label = optarg; break;
		case O_QUIET: opt.quiet = true; break;
		case O_EMIT: opt.emit_redis_load = true; break;
		case O_OUT: opt.out = optarg; break;
		case O_VERIFY:
			if (!strcmp(optarg, "fast"))
				opt.verify_full = false;
			else if (!strcmp(optarg, "full"))
				opt.verify_full = true;
			else
				bad = fprintf(stderr, "loadgen: unknown --verify '%s'\n", optarg);
			break;
		case O_DISTINCT:
			bad |= parse_u32(optarg, &opt.distinct) < 0 || opt.distinct == 0;
			break;
		case O_TLS_CA: opt.tls_ca = optarg; break;
		case O_IO:
			opt.have_io = true;
			if (!strcmp(optarg, "uring"))
				opt.io = LG_IO_URING;
			else if (!strcmp(optarg, "epoll"))
				opt.io = LG_IO_EPOLL;
			else
				bad = fprintf(stderr, "loadgen: unknown --io '%s' "
					      "(uring or epoll)\n", optarg);
			break;
		case O_TICK: {
			double t;
			bad |= parse_double(optarg, &t) < 0 || t > 1e6;
			opt.tick_ns = (uint64_t)(t * 1000);
			opt.have_tick = true;
			break;
		}
		case O_SERVER_PID: {
			uint32_t pid;
			bad |= parse_u32(optarg, &pid) < 0 || pid == 0;
			opt.server_pid = (long)pid;
			break;
		}
		case O_BUSY:
			bad |= parse_double(optarg, &opt.busy_limit) < 0 ||
			       opt.busy_limit > 1;
			break;
		case O_PHASES: opt.phases = true; break;
		case O_HELP: case 'h': usage(stdout); exit(LG_EXIT_OK);
		default: bad = 1; break;
		}
	}
	if (optind < argc)
		bad = fprintf(stderr, "loadgen: unexpected argument '%s'\n", argv[optind]);
	if (!opt.have_records)
		bad = fprintf(stderr, "loadgen: --records is required (the dataset's size)\n");
	if (opt.emit_redis_load)
		return bad ? -EINVAL : 0;
	if (!have_proto)
		bad = fprintf(stderr, "loadgen: --proto is required\n");
	if (opt.connections == 0 || opt.threads == 0 || opt.pipeline == 0 ||
	    opt.batch == 0 || opt.batch > LG_BATCH_MAX || opt.hit_ratio > 1 ||
	    opt.pool < 1024 || opt.pool > UINT32_MAX)
		bad = fprintf(stderr, "loadgen: out-of-range option (connections, "
				      "threads, pipeline >= 1; 1 <= batch <= %d; "
				      "hit-ratio <= 1; 1024 <= pool < 2^32)\n",
			      LG_BATCH_MAX);
	if (opt.threads > opt.connections)
		opt.threads = opt.connections;
	if (opt.threads > 64)
		bad = fprintf(stderr, "loadgen: at most 64 --threads\n");
	if (opt.batch > 1 && (opt.proto == LG_PROTO_RESP_CHECK ||
			      opt.proto == LG_PROTO_REDIS_GET))
		bad = fprintf(stderr, "loadgen: --batch > 1 needs rpc, resp-mcheck or redis-mget\n");
	if (opt.duration_s <= 0 && !opt.requests)
		bad = fprintf(stderr, "loadgen: --duration must be > 0\n");
	if (opt.tls_ca && !opt.have_io)
		opt.io = LG_IO_EPOLL;
	if (opt.tls_ca && opt.io == LG_IO_URING)
		bad = fprintf(stderr, "loadgen: --tls-ca runs over --io epoll "
				      "(OpenSSL reads and writes the socket)\n");
	if (opt.have_tick && opt.io == LG_IO_EPOLL)
		bad = fprintf(stderr, "loadgen: --tick-us is for --io uring\n");
	if (!opt.port)
		opt.port = opt.proto == LG_PROTO_RPC ? "7700" :
			   opt.proto <= LG_PROTO_RESP_MCHECK ? "7701" : "6379";
	if (!opt.distinct && opt.batch) {
		opt.distinct = (LG_DISTINCT_CHECKS + opt.batch - 1) / opt.batch;
		if (opt.distinct < LG_DISTINCT_MIN)
			opt.distinct = LG_DISTINCT_MIN;
	}
	if (!opt.max_outstanding) {
		opt.max_outstanding = 4096 / opt.batch;
		if (opt.max_outstanding < 64)
			opt.max_outstanding = 64;
	}
	return bad ? -EINVAL : 0;
}

/* Redis mass-insertion protocol (redis-cli --pipe): one SET per record. */
static int emit_redis_load(void)
{
	FILE *f = stdout;
	if (opt.out && strcmp(opt.out, "-") != 0) {
		f = fopen(opt.out, "w");
		if (!f) {
			fprintf(stderr, "loadgen: %s: %s\n", opt.out, strerror(errno));
			return 1;
		}
	}
	static char iobuf[1 << 20];
	setvbuf(f, iobuf, _IOFBF, sizeof(iobuf));
	struct synth_record rec;
	char key[RECIPIENT_TEXT_MAX + 64], val[64];
	for (uint64_t i = 0; i < opt.records; i++) {
		synth_record(opt.seed, opt.records, i, &rec);
		int kl = lg_redis_key(&rec, key, sizeof(key));
		int vl = lg_redis_value(rec.status, rec.source, rec.consent_date,
					val, sizeof(val));
		if (kl < 0 || vl < 0) {
			fprintf(stderr, "loadgen: record %llu does not format\n",
				(unsigned long long)i);
			return 1;
		}
		fprintf(f, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", kl,
			key, vl, val);
	}
	if (fflush(f) != 0 || ferror(f)) {
		fprintf(stderr, "loadgen: write: %s\n", strerror(errno));
		return 1;
	}
	if (f != stdout)
		fclose(f);
	return 0;
}

struct totals {
	struct hist hist;
	uint64_t issued, issued_checks, issued_hits;
	uint64_t completed, measured, measured_checks;
	uint64_t wrong_replies, wrong_checks, conn_errors, lost, decoded;
	uint64_t last_measured_ns;
	uint32_t per_sec[LG_SECONDS_MAX];
	double seconds, rps, cps, cpu;
	double cpu_s;               /* the process's CPU seconds, whole run */
	double busy[64];            /* per thread, over the measured window */
	double busy_max;
	bool client_bound;
	double server_cpu;          /* --server-pid: cores busy; < 0 unknown */
	uint64_t syscalls, sends;
	struct hist phase_hist[LG_PHASES_MAX];
	unsigned phases;
};

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

static void write_json(const struct totals *t, FILE *f)
{
	const struct hist *h = &t->hist;
	fprintf(f, "{\n  \"label\": \"%s\",\n  \"proto\": \"%s\",\n",
		opt.label ? opt.label : "", proto_name(opt.proto));
	fprintf(f, "  \"host\": \"%s\", \"port\": \"%s\",\n", opt.host, opt.port);
	fprintf(f, "  \"connections\": %u, \"threads\": %u, \"pipeline\": %u, "
		   "\"batch\": %u,\n",
		opt.connections, opt.threads, opt.pipeline, opt.batch);
	fprintf(f, "  \"records\": %llu, \"seed\": %llu, \"hit_ratio\": %.4f, "
		   "\"skew\": \"%s\",\n",
		(unsigned long long)opt.records, (unsigned long long)opt.seed,
		opt.hit_ratio, opt.skew == LG_SKEW_ZIPF ? "zipf" : "uniform");
	fprintf(f, "  \"open_loop\": %s, \"target_rate\": %.1f,\n",
		opt.rate > 0 ? "true" : "false", opt.rate);
	fprintf(f, "  \"warmup_s\": %.3f, \"seconds\": %.6f,\n", opt.warmup_s,
		t->seconds);
	fprintf(f, "  \"requests\": %llu, \"checks\": %llu,\n",
		(unsigned long long)t->measured,
		(unsigned long long)t->measured_checks);
	fprintf(f, "  \"requests_per_s\": %.1f, \"checks_per_s\": %.1f,\n",
		t->rps, t->cps);
	fprintf(f, "  \"hit_ratio_sent\": %.4f,\n",
		t->issued_checks ? (double)t->issued_hits / (double)t->issued_checks : 0);
	fprintf(f, "  \"latency_us\": {\"mean\": %.2f, \"min\": %.2f, "
		   "\"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, "
		   "\"p9999\": %.2f, \"max\": %.2f},\n",
		h->count ? us(h->sum / h->count) : 0, h->count ? us(h->min) : 0,
		us(hist_quantile(h, 0.5)), us(hist_quantile(h, 0.9)),
		us(hist_quantile(h, 0.99)), us(hist_quantile(h, 0.999)),
		us(hist_quantile(h, 0.9999)), us(h->max));
	fprintf(f, "  \"issued\": %llu, \"completed\": %llu,\n",
		(unsigned long long)t->issued, (unsigned long long)t->completed);
	fprintf(f, "  \"wrong_replies\": %llu, \"wrong_checks\": %llu,\n",
		(unsigned long long)t->wrong_replies,
		(unsigned long long)t->wrong_checks);
	fprintf(f, "  \"connection_errors\": %llu, \"lost\": %llu,\n",
		(unsigned long long)t->conn_errors, (unsigned long long)t->lost);
	fprintf(f, "  \"client_cpu\": %.3f,\n", t->cpu);
	fprintf(f, "  \"io\": \"%s\", \"tick_us\": %.1f,\n",
		opt.io == LG_IO_URING ? "uring" : "epoll",
		opt.io == LG_IO_URING ? (double)opt.tick_ns / 1000 : 0.0);
	fprintf(f, "  \"client_threads_busy\": [");
	for (uint32_t i = 0; i < opt.threads; i++)
		fprintf(f, "%s%.3f", i ? ", " : "", t->busy[i]);
	fprintf(f, "], \"client_busy_max\": %.3f, \"busy_limit\": %.2f, "
		   "\"client_bound\": %s,\n", t->busy_max, opt.busy_limit,
		t->client_bound ? "true" : "false");
	fprintf(f, "  \"client_cpu_us_per_request\": %.3f, "
		   "\"syscalls_per_request\": %.3f, \"sends_per_request\": %.3f,\n",
		t->completed ? t->cpu_s * 1e6 / (double)t->completed : 0,
		t->completed ? (double)t->syscalls / (double)t->completed : 0,
		t->completed ? (double)t->sends / (double)t->completed : 0);
	if (t->server_cpu >= 0)
		fprintf(f, "  \"server_pid\": %ld, \"server_cpu\": %.3f,\n",
			opt.server_pid, t->server_cpu);
	if (opt.phases) {
		fprintf(f, "  \"phases\": [");
		for (unsigned i = 0; i < t->phases; i++) {
			const struct hist *ph = &t->phase_hist[i];
			double start = i == 0 ? 0 :
				(double)((int64_t)phase_start_ns[i] -
					 (int64_t)t_measure_ns) / 1e9;
			fprintf(f, "%s\n    {\"phase\": %u, \"start_s\": %.3f, "
				   "\"requests\": %llu, \"p50_us\": %.2f, "
				   "\"p99_us\": %.2f, \"p999_us\": %.2f, "
				   "\"max_us\": %.2f}", i ? "," : "", i, start,
				(unsigned long long)ph->count,
				us(hist_quantile(ph, 0.5)), us(hist_quantile(ph, 0.99)),
				us(hist_quantile(ph, 0.999)), us(ph->max));
		}
		fprintf(f, "\n  ],\n");
	}
	fprintf(f, "  \"verify\": \"%s\", \"distinct_requests\": %u, "
		   "\"replies_decoded\": %llu,\n",
		opt.verify_full ? "full" : "fast", opt.distinct,
		(unsigned long long)t->decoded);
	fprintf(f, "  \"per_second\": [");
	unsigned secs = (unsigned)ceil(t->seconds);
	if (secs > LG_SECONDS_MAX)
		secs = LG_SECONDS_MAX;
	for (unsigned i = 0; i < secs; i++)
		fprintf(f, "%s%u", i ? ", " : "", t->per_sec[i]);
	fprintf(f, "]\n}\n");
}

static void print_summary(const struct totals *t)
{
	const struct hist *h = &t->hist;
	printf("%s%s%s %s batch=%u conns=%u threads=%u %s%u: "
	       "%.0f req/s, %.0f checks/s | p50 %.1f p90 %.1f p99 %.1f "
	       "p99.9 %.1f max %.1f us | wrong %llu, lost %llu, conn errors "
	       "%llu | client cpu %.0f%% (busiest thread %.0f%%), %.2f us/req, "
	       "%s\n",
	       opt.label ? "[" : "", opt.label ? opt.label : "",
	       opt.label ? "] " : "", proto_name(opt.proto), opt.batch,
	       opt.connections, opt.threads, opt.rate > 0 ? "rate=" : "pipeline=",
	       opt.rate > 0 ? (unsigned)opt.rate : opt.pipeline, t->rps, t->cps,
	       us(hist_quantile(h, 0.5)), us(hist_quantile(h, 0.9)),
	       us(hist_quantile(h, 0.99)), us(hist_quantile(h, 0.999)),
	       us(h->max), (unsigned long long)t->wrong_checks,
	       (unsigned long long)t->lost, (unsigned long long)t->conn_errors,
	       t->cpu * 100, t->busy_max * 100,
	       t->completed ? t->cpu_s * 1e6 / (double)t->completed : 0,
	       opt.io == LG_IO_URING ? "io_uring" : "epoll");
	if (t->server_cpu >= 0)
		printf("  server pid %ld: %.0f%% of a core over the window\n",
		       opt.server_pid, t->server_cpu * 100);
	if (opt.rate > 0 && t->rps < opt.rate * 0.95)
		printf("  note: achieved %.0f of %.0f req/s: past saturation\n",
		       t->rps, opt.rate);
	if (!opt.verify_full && t->decoded)
		printf("  note: %llu replies differed from the expected bytes and "
		       "were decoded in full\n", (unsigned long long)t->decoded);
	if (t->client_bound)
		printf("  note: CLIENT-BOUND: a client thread was %.0f%% busy "
		       "(limit %.0f%%); these latencies measure the client\n",
		       t->busy_max * 100, opt.busy_limit * 100);
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Allocates worker t's state and opens its connections. On failure the
 * worker is left for worker_fini, which copes with any partial state. */
static int worker_init(struct worker *w, unsigned t, uint32_t cap,
		       const struct addrinfo *ai)
{
	w->index = t;
	w->epfd = -1;
	w->n_conns = opt.connections / opt.threads +
		     (t < opt.connections % opt.threads);
	hist_init(&w->hist);
	lg_rng_seed(&w->rng, opt.seed * 1000003u + t + 1);
	w->conns = calloc(w->n_conns, sizeof(*w->conns));
	w->scratch = calloc(opt.batch, sizeof(*w->scratch));
	w->per_sec = calloc(LG_SECONDS_MAX, sizeof(*w->per_sec));
	if (!w->conns || !w->scratch || !w->per_sec)
		return -ENOMEM;
	if (opt.phases) {
		w->phase_hist = malloc(LG_PHASES_MAX * sizeof(*w->phase_hist));
		if (!w->phase_hist)
			return -ENOMEM;
		for (unsigned p = 0; p < LG_PHASES_MAX; p++)
			hist_init(&w->phase_hist[p]);
	}
	for (uint32_t c = 0; c < w->n_conns; c++)
		w->conns[c].fd = -1;
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0)
		return -errno;
	int rc = lg_codec_create(opt.batch, &w->codec);
	if (rc < 0)
		return rc;
	for (uint32_t c = 0; c < w->n_conns; c++) {
		struct lg_conn *cn = &w->conns[c];
		rc = lg_conn_init(cn, cap);
		if (rc < 0)
			return rc;
		cn->index = c;
		rc = lg_conn_open(cn, ai);
		if (rc < 0)
			return rc;
		if (opt.io != LG_IO_EPOLL)
			continue;
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = cn };
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, cn->fd, &ev) < 0)
			return -errno;
	}
	return 0;
}

static void worker_fini(struct worker *w)
{
	if (w->conns)
		for (uint32_t c = 0; c < w->n_conns; c++)
			lg_conn_fini(&w->conns[c]);
	free(w->conns);
	free(w->scratch);
	free(w->per_sec);
	free(w->phase_hist);
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring);
	if (w->br)
		munmap(w->br, w->br_bytes);
	free(w->bufs);
	lg_codec_destroy(w->codec);
	if (w->epfd >= 0)
		close(w->epfd);
}

static void totals_add(struct totals *tot, const struct worker *w)
{
	hist_merge(&tot->hist, &w->hist);
	tot->issued += w->issued;
	tot->issued_checks += w->issued_checks;
	tot->issued_hits += w->issued_hits;
	tot->completed += w->completed;
	tot->measured += w->measured;
	tot->measured_checks += w->measured_checks;
	tot->wrong_replies += w->wrong_replies;
	tot->wrong_checks += w->wrong_checks;
	tot->conn_errors += w->conn_errors;
	tot->decoded += w->decoded;
	tot->lost += w->lost;
	if (w->last_measured_ns > tot->last_measured_ns)
		tot->last_measured_ns = w->last_measured_ns;
	for (unsigned s = 0; s < LG_SECONDS_MAX; s++)
		tot->per_sec[s] += w->per_sec[s];
	tot->syscalls += w->syscalls;
	tot->sends += w->sends;
	if (w->phase_hist)
		for (unsigned p = 0; p < LG_PHASES_MAX; p++)
			hist_merge(&tot->phase_hist[p], &w->phase_hist[p]);
	double busy = 0;
	if (w->wall_at_stop > w->wall_at_measure && w->wall_at_measure)
		busy = (double)(w->cpu_at_stop - w->cpu_at_measure) /
		       (double)(w->wall_at_stop - w->wall_at_measure);
	tot->busy[w->index] = busy;
	if (busy > tot->busy_max)
		tot->busy_max = busy;
}

/* Runs the measurement with workers ws[0..opt.threads), all connected;
 * fills *tot. Returns an exit code for trouble outside the replies. */
static int measure(struct worker *ws, struct totals *tot)
{
	int exit_code = LG_EXIT_OK;
	if (opt.rate > 0) {
		interval_ns = (uint64_t)(1e9 * opt.connections / opt.rate);
		if (interval_ns == 0)
			interval_ns = 1;
	}
	pthread_barrier_init(&start_barrier, NULL, opt.threads + 1);
	for (uint32_t t = 0; t < opt.threads; t++)
		pthread_create(&ws[t].tid, NULL, worker_main, &ws[t]);
	pthread_barrier_wait(&start_barrier);
	double cpu0 = cpu_seconds();
	t_start_ns = now_ns();
	t_measure_ns = t_start_ns + (uint64_t)(opt.warmup_s * 1e9);
	/* --requests alone ends on its count, yet never runs past an hour;
	 * with --duration too, whichever comes first. */
	t_stop_ns = t_measure_ns + (uint64_t)(opt.duration_s * 1e9);
	if (opt.requests && !opt.have_duration)
		t_stop_ns = t_measure_ns + LG_SECONDS_MAX * 1000000000ull;
	pthread_barrier_wait(&start_barrier);

	hist_init(&tot->hist);
	for (unsigned p = 0; p < LG_PHASES_MAX; p++)
		hist_init(&tot->phase_hist[p]);
	for (uint32_t t = 0; t < opt.threads; t++) {
		pthread_join(ws[t].tid, NULL);
		totals_add(tot, &ws[t]);
		if (ws[t].rc < 0) {
			fprintf(stderr, "loadgen: %s: %s\n",
				opt.io == LG_IO_URING ? "io_uring" : "epoll",
				strerror(-ws[t].rc));
			exit_code = LG_EXIT_TRANSPORT;
		}
	}
	pthread_barrier_destroy(&start_barrier);
	uint64_t t_end = now_ns();
	tot->cpu_s = cpu_seconds() - cpu0;
	tot->cpu = tot->cpu_s / ((double)(t_end - t_start_ns) / 1e9);
	tot->client_bound = tot->busy_max > opt.busy_limit;
	/* The server's CPU over worker 0's window: read where it marks its
	 * own, so the two cover the same time. */
	tot->server_cpu = -1;
	const struct worker *w0 = &ws[0];
	if (opt.server_pid && w0->srv_at_measure >= 0 && w0->srv_at_stop >= 0 &&
	    w0->wall_at_stop > w0->wall_at_measure && w0->wall_at_measure)
		tot->server_cpu = (w0->srv_at_stop - w0->srv_at_measure) /
				  ((double)(w0->wall_at_stop - w0->wall_at_measure) / 1e9);
	tot->phases = atomic_load_explicit(&phase_count, memory_order_acquire);
	tot->seconds = tot->last_measured_ns > t_measure_ns ?
		(double)(tot->last_measured_ns - t_measure_ns) / 1e9 : 0;
	if (tot->seconds > 0) {
		tot->rps = (double)tot->measured / tot->seconds;
		tot->cps = (double)tot->measured_checks / tot->seconds;
	}
	return exit_code;
}

/* The verdict on the whole run, as an exit code. */
static int judge(const struct totals *tot, int exit_code)
{
	if (tot->wrong_checks) {
		fprintf(stderr, "loadgen: %llu WRONG ANSWERS in %llu replies\n",
			(unsigned long long)tot->wrong_checks,
			(unsigned long long)tot->wrong_replies);
		return LG_EXIT_WRONG;
	}
	if (tot->conn_errors || tot->lost) {
		fprintf(stderr, "loadgen: %llu connection errors, %llu replies lost\n",
			(unsigned long long)tot->conn_errors,
			(unsigned long long)tot->lost);
		return LG_EXIT_TRANSPORT;
	}
	if (tot->measured == 0 && exit_code == LG_EXIT_OK) {
		fprintf(stderr, "loadgen: no measured replies\n");
		return LG_EXIT_TRANSPORT;
	}
	return exit_code;
}

int main(int argc, char **argv)
{
	if (parse_options(argc, argv) < 0) {
		usage(stderr);
		return LG_EXIT_USAGE;
	}
	if (opt.emit_redis_load)
		return emit_redis_load();
	if (opt.tls_ca) {
		tls_ctx = SSL_CTX_new(TLS_client_method());
		if (!tls_ctx ||
		    SSL_CTX_load_verify_locations(tls_ctx, opt.tls_ca, NULL) != 1) {
			fprintf(stderr, "loadgen: --tls-ca %s: no CA certificate "
				"read\n", opt.tls_ca);
			return LG_EXIT_USAGE;
		}
		SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
		SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	}

	if (opt.phases) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_phase_signal;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGUSR1, &sa, NULL);
		sigaction(SIGUSR2, &sa, NULL);
	}

	int exit_code = LG_EXIT_USAGE;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	struct lg_keys *k = NULL;
	struct lg_reqs *rq = NULL;
	struct worker *ws = NULL;
	static struct totals tot; /* 14 KiB of per-second series */

	int gai = getaddrinfo(opt.host, opt.port, &hints, &ai);
	if (gai != 0) {
		fprintf(stderr, "loadgen: %s:%s: %s\n", opt.host, opt.port,
			gai_strerror(gai));
		return LG_EXIT_USAGE;
	}
	if (!is_loopback(ai->ai_addr)) {
		fprintf(stderr, "loadgen: %s is not a loopback address; the "
				"bench runs on one machine only\n", opt.host);
		goto out_ai;
	}

	struct lg_keys_config kc = {
		.seed = opt.seed, .records = opt.records,
		.hit_ratio = opt.hit_ratio, .skew = opt.skew,
		.batch = opt.batch, .pool = opt.pool,
	};
	uint64_t t0 = now_ns();
	int rc = lg_keys_create(&kc, &k);
	if (rc < 0) {
		fprintf(stderr, "loadgen: key pools: %s\n", strerror(-rc));
		goto out_ai;
	}
	if (opt.batch > 1 && !opt.quiet)
		fprintf(stderr, "loadgen: key pools ready in %.1f s\n",
			(double)(now_ns() - t0) / 1e9);
	t0 = now_ns();
	struct lg_reqs_config rc_cfg = {
		.proto = opt.proto, .batch = opt.batch, .count = opt.distinct,
		.seed = opt.seed,
	};
	rc = lg_reqs_create(k, &rc_cfg, &rq);
	if (rc < 0) {
		fprintf(stderr, "loadgen: preparing requests: %s\n", strerror(-rc));
		goto out_keys;
	}
	reqs = rq;
	if (!opt.quiet)
		fprintf(stderr, "loadgen: %u requests (%llu checks, %.0f MB) "
				"prepared in %.1f s\n", opt.distinct,
			(unsigned long long)opt.distinct * opt.batch,
			(double)lg_reqs_bytes(rq) / 1e6,
			(double)(now_ns() - t0) / 1e9);

	exit_code = LG_EXIT_TRANSPORT;
	ws = calloc(opt.threads, sizeof(*ws));
	if (!ws) {
		fprintf(stderr, "loadgen: out of memory\n");
		goto out_reqs;
	}
	uint32_t cap = opt.rate > 0 ? opt.max_outstanding : opt.pipeline;
	uint32_t n_init = 0;
	for (; n_init < opt.threads; n_init++) {
		rc = worker_init(&ws[n_init], n_init, cap, ai);
		if (rc < 0) {
			fprintf(stderr, "loadgen: %s:%s: %s\n", opt.host,
				opt.port, strerror(-rc));
			n_init++; /* its partial state is torn down too */
			goto out_workers;
		}
	}

	exit_code = measure(ws, &tot);
	if (!opt.quiet)
		print_summary(&tot);
	if (opt.json) {
		FILE *f = fopen(opt.json, "w");
		if (!f) {
			fprintf(stderr, "loadgen: %s: %s\n", opt.json, strerror(errno));
			exit_code = LG_EXIT_TRANSPORT;
		} else {
			write_json(&tot, f);
			if (fclose(f) != 0)
				exit_code = LG_EXIT_TRANSPORT;
		}
	}
	exit_code = judge(&tot, exit_code);

out_workers:
	for (uint32_t t = 0; t < n_init; t++)
		worker_fini(&ws[t]);
	free(ws);
out_reqs:
	lg_reqs_destroy(rq);
out_keys:
	lg_keys_destroy(k);
out_ai:
	freeaddrinfo(ai);
	return exit_code;
}
