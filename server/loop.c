/*
 * loop: thread-per-core workers on io_uring (server/loop.h).
 *
 * One turn of a worker:
 *   1. give returned receive buffers back to the kernel (one advance);
 *   2. go RCU-offline, submit everything queued and wait for at least one
 *      completion or 100 ms; come back online;
 *   3. read the clock and the live index once (conn_ctx_begin_turn);
 *   4. handle every completion: one switch over the kinds in user_data,
 *      failures routed to the kind's handler; received bytes go through
 *      conn_feed (tls_feed on a TLS port: decrypted, then conn_feed) at
 *      once and the provided buffer is returned at once;
 *   5. for every connection touched this turn: one send of all the replies
 *      gathered for it (encrypted on a TLS port), pause/resume/re-arm its
 *      multishot receive, start its close;
 *   6. every 100 ms: deadlines (idle, stalled frame, slow reader), a
 *      paused accept, the stop flag;
 *   7. live_quiescent().
 *
 * Connections live in the fixed-file table: multishot accept allocates a
 * slot (IORING_FILE_INDEX_ALLOC via the _direct helper, which liburing 2.3
 * encodes correctly) and the slot number indexes conns[]. A slot's
 * generation, bumped at each accept, rides in user_data so a completion
 * that outlives its connection is recognised. A connection is closed only
 * when neither its receive nor its send is in flight (cancelled first if
 * need be), so no completion can name a slot that was reused.
 *
 * Apply: the worker hands it to the single writer (server/writer.h) and
 * pauses the connection; the writer's reply comes back on this worker's
 * completion queue, whose eventfd the ring keeps a read armed on
 * (UD_WAKE). The reply carries the connection's slot and generation, so
 * one for a connection closed meanwhile is dropped.
 *
 * The CQ is sized for the worst turn: every provided buffer filled, plus
 * an accept, a receive end, a send, a close and two cancels per slot, so
 * completions never overflow (IORING_FEAT_NODROP would keep them, but on a
 * slow list; the kernel's overflow count is exported as cq_overflows).
 */
#include "server/loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <urcu-qsbr.h>

#include "core/clock.h"
#include "server/addr.h"
#include "server/config.h"
#include "server/conn.h"
#include "server/live.h"
#include "server/metrics.h"
#include "server/tls.h"
#include "server/writer.h"

#define LOOP_WAIT_MS 100         /* longest wait: deadlines, stop flag */
#define LOOP_SWEEP_MS 100        /* deadline sweep period */
#define LOOP_ACCEPT_PAUSE_MS 200 /* accept pause on EMFILE/ENFILE */
#define LOOP_REFUSE_SLOTS 64     /* slots beyond the cap, for refusals */
#define LOOP_SQ_ENTRIES 1024
#define LOOP_CQ_MAX 65536        /* the kernel's IORING_MAX_CQ_ENTRIES */
#define LOOP_BGID 0
#define LOOP_CLOSE_WAIT_MS 2000  /* after the grace: wait for closes */
#define LOOP_CLOSE_RETRY_MS 1000 /* re-cancel a close that is stuck */

/* user_data: kind (8 bits) | slot (24) | generation (32). */
enum loop_ud {
	UD_ACCEPT = 1, /* slot = listener (struct worker's listen[]) */
	UD_RECV,
	UD_SEND,
	UD_CLOSE,
	UD_CANCEL,     /* a cancel request's own completion: ignored */
	UD_WAKE,       /* the writer's completion eventfd was read */
};

static inline uint64_t loop_ud(unsigned kind, uint32_t slot, uint32_t gen)
{
	return (uint64_t)kind << 56 | (uint64_t)(slot & 0xffffff) << 32 | gen;
}

enum wconn_state {
	WC_FREE = 0,    /* slot unused */
	WC_OPEN,        /* serving */
	WC_CLOSING,     /* waiting for its receive/send to end */
	WC_CLOSE_SENT,  /* close_direct submitted */
};

struct wconn {
	struct conn c;
	uint32_t gen;
	uint8_t state;      /* enum wconn_state */
	bool refused;       /* over the cap: sends the refusal, then closes */
	bool recv_armed;    /* a multishot receive is in flight */
	bool recv_cancel;   /* ... and its cancel was submitted */
	bool send_inflight;
	bool send_cancel;
	bool abort;         /* close without sending what is queued */
	bool cancel_all;    /* closing: everything on the fd was cancelled */
	bool eof;           /* the peer shut its side */
	bool dirty;         /* in the worker's dirty list this turn */
	uint32_t active_idx;
	size_t refusal_off; /* refused: bytes of the refusal sent */
	uint64_t opened_ms;
	uint64_t send_wait_ms; /* unsent output waiting since; 0 none */
	uint64_t close_since_ms;
};

struct loop;

struct worker {
	struct loop *loop;
	unsigned id;
	int cpu;
	pthread_t thread;
	struct io_uring ring;
	bool ring_ok;
	/* Its listeners, in loop_start's order; each names the protocol of
	 * the connections it accepts. */
	struct {
		int fd;
		const struct conn_proto *proto;
		struct tls_server *tls; /* NULL: plaintext */
		bool accept_armed;
	} listen[LOOP_LISTENERS_MAX];
	unsigned n_listen;
	uint64_t accept_resume_ms; /* 0: not paused */

	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *bufs;
	size_t bufs_bytes;
	uint32_t n_bufs;
	uint32_t buf_size;
	uint32_t bufs_returned; /* added since the last advance */

	struct wconn *conns;
	uint32_t n_slots;
	uint32_t *active; /* open slots, dense, for the sweep */
	uint32_t n_active;
	uint32_t n_clients; /* open and not refused */
	uint32_t *dirty;
	uint32_t n_dirty;

	struct conn_ctx ctx;
	struct metrics *m;
	uint64_t last_sweep_ms;
	bool stopping;
	uint64_t stop_deadline_ms;
	uint64_t koverflow_seen;
	uint64_t wake_buf;  /* the writer eventfd's count, read by the ring */
	bool wake_armed;

	int err;
	char errmsg[200];
};

struct loop {
	const struct server_config *cfg;
	unsigned n;
	struct worker *w;
	atomic_bool stop;       /* set by loop_stop; workers poll it */
	pthread_mutex_t lock;   /* start-up handshake */
	pthread_cond_t cond;
	unsigned n_started;
};

/* ---- listeners --------------------------------------------------------- */

static int loop_listen_one(const struct sockaddr *sa, socklen_t len,
			   uint32_t bind_wait_ms, const char *what)
{
	int one = 1, fd, rc;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* TCP_NODELAY on the listener is inherited by accepted sockets: the
	 * direct descriptors from multishot accept cannot be setsockopt'd
	 * with liburing 2.3, and replies must not wait for Nagle. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	rc = addr_bind(fd, sa, len, bind_wait_ms, what);
	if (rc == 0 && listen(fd, 4096) < 0)
		rc = -errno;
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}

int loop_listen(const char *what, const char *addr, uint32_t bind_wait_ms,
		unsigned n, int *fds, char *bound, size_t bound_cap, char *err,
		size_t err_cap)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char label[ADDR_HOST_MAX + 32];
	unsigned i;
	int rc;

	rc = addr_resolve(addr, &ss, &sl, err, err_cap);
	if (rc < 0)
		return rc;
	snprintf(label, sizeof(label), "%s %s", what, addr);
	/* SO_REUSEPORT lets any process of the same user bind the port too
	 * (a stale consentd would silently get half the connections). A probe
	 * bound without it fails if anyone holds the port; it is also where
	 * a restart waits for a killed predecessor's port. */
	{
		int one = 1, probe = socket(ss.ss_family,
					    SOCK_STREAM | SOCK_CLOEXEC, 0);

		rc = probe < 0 ? -errno : 0;
		if (rc == 0 && setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one,
					  sizeof(one)) < 0)
			rc = -errno;
		if (rc == 0)
			rc = addr_bind(probe, (struct sockaddr *)&ss, sl,
				       bind_wait_ms, label);
		if (probe >= 0)
			close(probe);
		if (rc < 0) {
			snprintf(err, err_cap, "%s: %s", addr, strerror(-rc));
			return rc;
		}
	}
	for (i = 0; i < n; i++) {
		fds[i] = loop_listen_one((struct sockaddr *)&ss, sl,
					 bind_wait_ms, label);
		if (fds[i] < 0) {
			rc = fds[i];
			snprintf(err, err_cap, "%s: %s", addr, strerror(-rc));
			while (i > 0)
				close(fds[--i]);
			return rc;
		}
		if (i == 0) {
			/* Port 0: the others bind to the port the kernel
			 * picked for the first. */
			sl = sizeof(ss);
			getsockname(fds[0], (struct sockaddr *)&ss, &sl);
		}
	}
	if (addr_format((struct sockaddr *)&ss, bound, bound_cap) < 0)
		snprintf(bound, bound_cap, "%s", addr);
	return 0;
}

/* ---- submission helpers ------------------------------------------------ */

static struct io_uring_sqe *loop_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (sqe == NULL) {
		/* SQ full: hand the batch to the kernel and take another. */
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void loop_arm_accept(struct worker *w, unsigned li)
{
	struct io_uring_sqe *sqe = loop_sqe(w);

	if (sqe == NULL)
		return;
	io_uring_prep_multishot_accept_direct(sqe, w->listen[li].fd, NULL,
					      NULL, 0);
	io_uring_sqe_set_data64(sqe, loop_ud(UD_ACCEPT, li, 0));
	w->listen[li].accept_armed = true;
}

static void loop_cancel(struct worker *w, uint64_t target)
{
	struct io_uring_sqe *sqe = loop_sqe(w);

	if (sqe == NULL)
		return;
	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, loop_ud(UD_CANCEL, 0, 0));
}

static void loop_arm_recv(struct worker *w, uint32_t slot)
{
	struct wconn *wc = &w->conns[slot];
	struct io_uring_sqe *sqe = loop_sqe(w);

	if (sqe == NULL)
		return;
	io_uring_prep_recv_multishot(sqe, (int)slot, NULL, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
	sqe->buf_group = LOOP_BGID;
	io_uring_sqe_set_data64(sqe, loop_ud(UD_RECV, slot, wc->gen));
	wc->recv_armed = true;
	wc->recv_cancel = false;
}

static void loop_send(struct worker *w, uint32_t slot, const void *buf,
		      size_t len)
{
	struct wconn *wc = &w->conns[slot];
	struct io_uring_sqe *sqe = loop_sqe(w);

	if (sqe == NULL)
		return;
	io_uring_prep_send(sqe, (int)slot, buf, len, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, loop_ud(UD_SEND, slot, wc->gen));
	wc->send_inflight = true;
	wc->send_cancel = false;
	if (wc->send_wait_ms == 0)
		wc->send_wait_ms = w->ctx.now_ms;
}

static void loop_buf_return(struct worker *w, unsigned bid)
{
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->buf_size,
			      w->buf_size, (unsigned short)bid,
			      io_uring_buf_ring_mask(w->n_bufs),
			      (int)w->bufs_returned);
	w->bufs_returned++;
}

static void loop_mark(struct worker *w, uint32_t slot)
{
	struct wconn *wc = &w->conns[slot];

	if (!wc->dirty) {
		wc->dirty = true;
		w->dirty[w->n_dirty++] = slot;
	}
}

/* ---- connection life --------------------------------------------------- */

static void loop_open(struct worker *w, uint32_t slot,
		      const struct conn_proto *proto, struct tls_server *tls)
{
	const struct server_config *cfg = w->loop->cfg;
	struct wconn *wc = &w->conns[slot];
	uint32_t gen = wc->gen + 1;
	bool ok;

	memset(wc, 0, sizeof(*wc));
	wc->gen = gen;
	wc->state = WC_OPEN;
	wc->opened_ms = w->ctx.now_ms;
	wc->c.proto = proto;
	wc->active_idx = w->n_active;
	w->active[w->n_active++] = slot;
	ok = w->n_clients < cfg->max_connections && !w->stopping &&
	     conn_init(&wc->c, proto, cfg, w->ctx.now_ms) == 0;
	if (ok && tls != NULL &&
	    tls_conn_create(tls, &wc->c, w->ctx.now_ms) < 0) {
		conn_fini(&wc->c);
		ok = false;
	}
	if (!ok) {
		/* A clean refusal: one reply, then close. A TLS client
		 * would read the plaintext reply as a bad record: it gets
		 * the close alone. */
		wc->refused = true;
		wc->c.want_close = true;
		metrics_inc(&w->m->connections_refused);
		if (tls == NULL)
			loop_send(w, slot, proto->refusal, proto->refusal_len);
		return;
	}
	wc->c.tag = (uint64_t)slot << 32 | gen;
	w->n_clients++;
	metrics_inc(&w->m->connections_accepted);
	atomic_store_explicit(&w->m->connections_open, w->n_clients,
			      memory_order_relaxed);
	loop_arm_recv(w, slot);
}

/* Starts (or continues) closing: cancels whatever is still in flight on
 * the descriptor (its receive; its send too, which only an abort or a
 * stuck peer leaves pending); submits the close once nothing is. */
static void loop_close_step(struct worker *w, uint32_t slot)
{
	struct wconn *wc = &w->conns[slot];
	struct io_uring_sqe *sqe;

	if (wc->state == WC_OPEN) {
		wc->state = WC_CLOSING;
		wc->close_since_ms = w->ctx.now_ms;
	}
	if (wc->state != WC_CLOSING)
		return;
	if ((wc->recv_armed || wc->send_inflight) && !wc->cancel_all) {
		sqe = loop_sqe(w);
		if (sqe == NULL)
			return;
		io_uring_prep_cancel_fd(sqe, (int)slot,
					IORING_ASYNC_CANCEL_ALL |
						IORING_ASYNC_CANCEL_FD_FIXED);
		io_uring_sqe_set_data64(sqe, loop_ud(UD_CANCEL, 0, 0));
		wc->cancel_all = true;
	}
	if (wc->recv_armed || wc->send_inflight)
		return;
	sqe = loop_sqe(w);
	if (sqe == NULL)
		return;
	io_uring_prep_close_direct(sqe, slot);
	io_uring_sqe_set_data64(sqe, loop_ud(UD_CLOSE, slot, wc->gen));
	wc->state = WC_CLOSE_SENT;
}

static void loop_abort(struct worker *w, uint32_t slot, _Atomic uint64_t *why)
{
	struct wconn *wc = &w->conns[slot];

	if (why != NULL && wc->state == WC_OPEN)
		metrics_inc(why);
	wc->abort = true;
	wc->c.want_close = true;
	loop_mark(w, slot);
}

static void loop_closed(struct worker *w, uint32_t slot)
{
	struct wconn *wc = &w->conns[slot];
	uint32_t last;

	if (!wc->refused) {
		conn_fini(&wc->c);
		w->n_clients--;
		atomic_store_explicit(&w->m->connections_open, w->n_clients,
				      memory_order_relaxed);
	}
	metrics_inc(&w->m->connections_closed);
	last = w->active[--w->n_active];
	w->active[wc->active_idx] = last;
	w->conns[last].active_idx = wc->active_idx;
	wc->state = WC_FREE;
}

/* The bytes of c's next send: its replies, through TLS on a TLS port. */
static bool loop_take_send(struct worker *w, uint32_t slot, const char **buf,
			   size_t *len)
{
	struct conn *c = &w->conns[slot].c;
	int err;

	if (c->tls == NULL)
		return conn_take_send(c, buf, len);
	if (tls_take_send(c, buf, len, &err))
		return true;
	if (err < 0)
		loop_abort(w, slot, NULL);
	return false;
}

/* End of turn, for one touched connection: send, read or close. */
static void loop_settle(struct worker *w, uint32_t slot)
{
	struct wconn *wc = &w->conns[slot];
	struct conn *c = &wc->c;
	const char *buf;
	size_t len;

	wc->dirty = false;
	if (wc->state != WC_OPEN) {
		loop_close_step(w, slot);
		return;
	}
	if (wc->abort) {
		loop_close_step(w, slot);
		return;
	}
	if (wc->refused) {
		if (!wc->send_inflight)
			loop_close_step(w, slot);
		return;
	}
	if (!wc->send_inflight && loop_take_send(w, slot, &buf, &len))
		loop_send(w, slot, buf, len); /* an abort in it: marked again */
	/* The peer shut its side: answer what was received (a paused backlog
	 * too), then close. */
	if (wc->eof && !c->paused)
		c->want_close = true;
	if (c->want_close) {
		if (wc->recv_armed && !wc->recv_cancel) {
			loop_cancel(w, loop_ud(UD_RECV, slot, wc->gen));
			wc->recv_cancel = true;
		}
		/* An Apply with the writer still gets its reply. */
		if (!wc->send_inflight && conn_out_pending(c) == 0 &&
		    !c->apply_wait)
			loop_close_step(w, slot);
		return;
	}
	if (c->paused) {
		if (wc->recv_armed && !wc->recv_cancel) {
			if (!c->apply_wait)
				metrics_inc(&w->m->read_paused);
			loop_cancel(w, loop_ud(UD_RECV, slot, wc->gen));
			wc->recv_cancel = true;
		}
		return;
	}
	if (!wc->recv_armed && !wc->eof && !w->stopping)
		loop_arm_recv(w, slot);
}

/* ---- completions ------------------------------------------------------- */

static void loop_on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
	unsigned li = (unsigned)((cqe->user_data >> 32) & 0xffffff);

	if (li >= w->n_listen)
		return; /* not an accept we armed: never expected */
	if (!(cqe->flags & IORING_CQE_F_MORE))
		w->listen[li].accept_armed = false;
	if (cqe->res >= 0) {
		uint32_t slot = (uint32_t)cqe->res;

		if (slot >= w->n_slots || w->conns[slot].state != WC_FREE) {
			/* Not a slot we handed out: never expected. */
			struct io_uring_sqe *sqe = loop_sqe(w);

			if (sqe != NULL) {
				io_uring_prep_close_direct(sqe, slot);
				io_uring_sqe_set_data64(
					sqe, loop_ud(UD_CANCEL, 0, 0));
			}
			return;
		}
		loop_open(w, slot, w->listen[li].proto, w->listen[li].tls);
		loop_mark(w, slot);
		return;
	}
	if (w->stopping)
		return;
	/* EMFILE/ENFILE (no free slot), ENOMEM, anything else: pause rather
	 * than spin on a listener that fails at once. */
	if (w->listen[li].accept_armed) {
		loop_cancel(w, loop_ud(UD_ACCEPT, li, 0));
		w->listen[li].accept_armed = false;
	}
	if (w->accept_resume_ms == 0)
		metrics_inc(&w->m->accept_paused);
	w->accept_resume_ms = w->ctx.now_ms + LOOP_ACCEPT_PAUSE_MS;
}

static void loop_on_recv(struct worker *w, struct io_uring_cqe *cqe,
			 uint32_t slot, uint32_t gen)
{
	struct wconn *wc = &w->conns[slot];
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	bool live = slot < w->n_slots && wc->gen == gen &&
		    wc->state != WC_FREE;
	int rc;

	if (!live) {
		if (has_buf)
			loop_buf_return(w, bid);
		return;
	}
	if (!(cqe->flags & IORING_CQE_F_MORE))
		wc->recv_armed = false;
	loop_mark(w, slot);
	if (cqe->res > 0) {
		if (has_buf && wc->state == WC_OPEN && !wc->abort) {
			const char *data = w->bufs + (size_t)bid * w->buf_size;

			rc = wc->c.tls == NULL
				     ? conn_feed(&w->ctx, &wc->c, data,
						 (size_t)cqe->res)
				     : tls_feed(&w->ctx, &wc->c, data,
						(size_t)cqe->res);
			if (rc < 0)
				loop_abort(w, slot, NULL);
		}
		if (has_buf)
			loop_buf_return(w, bid);
		return;
	}
	if (has_buf)
		loop_buf_return(w, bid);
	switch (cqe->res) {
	case 0:
		wc->eof = true; /* replies already queued still go out */
		break;
	case -ENOBUFS:
		/* Ran out of provided buffers: re-armed at the end of the
		 * turn, after this turn's buffers went back. */
		metrics_inc(&w->m->recv_enobufs);
		break;
	case -ECANCELED:
		break; /* paused or closing: settle decides */
	default:
		loop_abort(w, slot, NULL); /* reset, or the socket failed */
		break;
	}
}

static void loop_on_send(struct worker *w, struct io_uring_cqe *cqe,
			 uint32_t slot, uint32_t gen)
{
	const struct server_config *cfg = w->loop->cfg;
	struct wconn *wc = &w->conns[slot];
	struct conn *c = &wc->c;

	if (slot >= w->n_slots || wc->gen != gen || wc->state == WC_FREE)
		return;
	wc->send_inflight = false;
	loop_mark(w, slot);
	if (cqe->res < 0) {
		loop_abort(w, slot, NULL); /* EPIPE, ECONNRESET, cancelled */
		return;
	}
	if (wc->refused) {
		wc->refusal_off += (size_t)cqe->res;
		if (cqe->res > 0 && wc->refusal_off < c->proto->refusal_len)
			loop_send(w, slot, c->proto->refusal + wc->refusal_off,
				  c->proto->refusal_len - wc->refusal_off);
		return;
	}
	conn_sent(c, (size_t)cqe->res);
	wc->send_wait_ms = conn_out_pending(c) ? w->ctx.now_ms : 0;
	if (c->paused && !c->apply_wait &&
	    conn_out_pending(c) <= cfg->conn_out_cap_bytes &&
	    wc->state == WC_OPEN && !wc->abort) {
		/* Below the cap again: go on with the carried input, then
		 * reading (settle re-arms the receive). */
		c->paused = false;
		if (conn_feed(&w->ctx, c, NULL, 0) < 0)
			loop_abort(w, slot, NULL);
	}
}

static void loop_on_close(struct worker *w, uint32_t slot, uint32_t gen)
{
	struct wconn *wc = &w->conns[slot];

	if (slot >= w->n_slots || wc->gen != gen || wc->state != WC_CLOSE_SENT)
		return;
	loop_closed(w, slot);
}

/* Reads the writer's completion eventfd (server/writer.h) once more. */
static void loop_arm_wake(struct worker *w)
{
	const struct server_config *cfg = w->loop->cfg;
	struct io_uring_sqe *sqe;

	if (cfg->writer == NULL || w->wake_armed)
		return;
	sqe = loop_sqe(w);
	if (sqe == NULL)
		return;
	io_uring_prep_read(sqe, writer_queue_fd(cfg->writer, w->id),
			   &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, loop_ud(UD_WAKE, 0, 0));
	w->wake_armed = true;
}

/* One Apply answered by the writer: its reply goes out, and the
 * connection's input, held since, is processed again. */
static void loop_on_applied(const struct writer_reply *r, void *arg)
{
	const struct server_config *cfg;
	struct worker *w = arg;
	uint32_t slot = (uint32_t)(r->tag >> 32), gen = (uint32_t)r->tag;
	struct wconn *wc;
	struct conn *c;

	if (slot >= w->n_slots)
		return;
	wc = &w->conns[slot];
	c = &wc->c;
	if (wc->gen != gen || wc->state != WC_OPEN || wc->refused ||
	    !c->apply_wait)
		return; /* the connection went away meanwhile */
	cfg = w->loop->cfg;
	c->apply_wait = false;
	c->paused = conn_out_pending(c) > cfg->conn_out_cap_bytes;
	loop_mark(w, slot);
	if (wc->abort)
		return;
	if (c->proto->reply_apply == NULL ||
	    c->proto->reply_apply(&w->ctx, c, r) < 0 ||
	    (!c->paused && !c->want_close && conn_feed(&w->ctx, c, NULL, 0) < 0))
		loop_abort(w, slot, NULL);
}

static void loop_on_wake(struct worker *w, struct io_uring_cqe *cqe)
{
	w->wake_armed = false;
	writer_take(w->loop->cfg->writer, w->id, loop_on_applied, w);
	if (cqe->res != -ECANCELED)
		loop_arm_wake(w);
}

static void loop_on_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	unsigned kind = (unsigned)(cqe->user_data >> 56);
	uint32_t slot = (uint32_t)(cqe->user_data >> 32) & 0xffffff;
	uint32_t gen = (uint32_t)cqe->user_data;

	switch (kind) {
	case UD_ACCEPT:
		loop_on_accept(w, cqe);
		break;
	case UD_RECV:
		loop_on_recv(w, cqe, slot, gen);
		break;
	case UD_SEND:
		loop_on_send(w, cqe, slot, gen);
		break;
	case UD_CLOSE:
		loop_on_close(w, slot, gen);
		break;
	case UD_WAKE:
		loop_on_wake(w, cqe);
		break;
	case UD_CANCEL:
	default:
		if (cqe->flags & IORING_CQE_F_BUFFER)
			loop_buf_return(w, cqe->flags >>
					       IORING_CQE_BUFFER_SHIFT);
		break;
	}
}

/* ---- deadlines --------------------------------------------------------- */

static void loop_sweep(struct worker *w)
{
	const struct server_config *cfg = w->loop->cfg;
	uint64_t now = w->ctx.now_ms;

	for (uint32_t i = 0; i < w->n_active; i++) {
		uint32_t slot = w->active[i];
		struct wconn *wc = &w->conns[slot];
		struct conn *c = &wc->c;

		if (wc->state == WC_CLOSING &&
		    now - wc->close_since_ms >= LOOP_CLOSE_RETRY_MS) {
			/* A cancel that found its target mid-flight (-EALREADY)
			 * leaves it running: ask again. */
			wc->cancel_all = false;
			wc->close_since_ms = now;
			loop_mark(w, slot);
			continue;
		}
		if (wc->state != WC_OPEN || wc->abort)
			continue;
		if (w->stopping && now >= w->stop_deadline_ms) {
			loop_abort(w, slot, NULL);
			continue;
		}
		if (wc->refused) {
			if (now - wc->opened_ms >= cfg->send_timeout_ms)
				loop_abort(w, slot, NULL);
			continue;
		}
		if (conn_out_pending(c) && wc->send_wait_ms &&
		    now - wc->send_wait_ms >= cfg->send_timeout_ms) {
			loop_abort(w, slot, &w->m->closed_slow_reader);
			continue;
		}
		if (c->want_close)
			continue;
		if (c->partial_since_ms &&
		    now - c->partial_since_ms >= cfg->partial_timeout_ms &&
		    c->tls != NULL && !tls_established(c->tls)) {
			/* The handshake's deadline: no reply can go out. */
			loop_abort(w, slot, &w->m->tls_handshake_timeouts);
			continue;
		}
		if (c->partial_since_ms &&
		    now - c->partial_since_ms >= cfg->partial_timeout_ms) {
			metrics_inc(&w->m->closed_partial);
			if (c->proto->reply_fatal(&w->ctx, c,
						  CONN_FATAL_STALLED) < 0)
				loop_abort(w, slot, NULL);
			c->in_len = 0;
			loop_mark(w, slot);
			continue;
		}
		if (conn_out_pending(c) == 0 && c->in_len == 0 &&
		    !c->apply_wait &&
		    now - c->last_rx_ms >= cfg->idle_timeout_ms) {
			metrics_inc(&w->m->closed_idle);
			c->want_close = true;
			loop_mark(w, slot);
		}
	}
}

static void loop_begin_stop(struct worker *w)
{
	const struct server_config *cfg = w->loop->cfg;

	w->stopping = true;
	w->stop_deadline_ms = w->ctx.now_ms + cfg->shutdown_grace_ms;
	for (unsigned li = 0; li < w->n_listen; li++)
		if (w->listen[li].accept_armed)
			loop_cancel(w, loop_ud(UD_ACCEPT, li, 0));
	w->accept_resume_ms = 0;
	/* Finish what was received: each connection sends its queued replies
	 * and closes (settle sees want_close). */
	for (uint32_t i = 0; i < w->n_active; i++) {
		uint32_t slot = w->active[i];
		struct conn *c = &w->conns[slot].c;

		if (!w->conns[slot].refused && c->proto != NULL &&
		    c->proto->stopping != NULL &&
		    c->proto->stopping(&w->ctx, c) < 0)
			loop_abort(w, slot, NULL);
		else
			c->want_close = true;
		loop_mark(w, slot);
	}
}

/* ---- the worker -------------------------------------------------------- */

static int loop_setup(struct worker *w)
{
	const struct server_config *cfg = w->loop->cfg;
	struct io_uring_params p;
	struct io_uring_buf_reg reg;
	uint64_t cq;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	int rc;

	if (w->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	w->n_slots = cfg->max_connections + LOOP_REFUSE_SLOTS;
	w->n_bufs = cfg->recv_buffers;
	w->buf_size = cfg->recv_buffer_bytes;
	cq = (uint64_t)w->n_bufs + 6ull * w->n_slots + 256;
	if (cq > LOOP_CQ_MAX)
		cq = LOOP_CQ_MAX;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_CQSIZE;
	p.cq_entries = (unsigned)cq;
	rc = io_uring_queue_init_params(LOOP_SQ_ENTRIES, &w->ring, &p);
	if (rc < 0) {
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: io_uring_queue_init: %s", w->id,
			 strerror(-rc));
		return rc;
	}
	w->ring_ok = true;
	io_uring_register_ring_fd(&w->ring); /* optional: fewer fd lookups */
	rc = io_uring_register_files_sparse(&w->ring, w->n_slots);
	if (rc < 0) {
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: %u fixed files: %s (raise the open-files "
			 "limit or lower --max-connections)",
			 w->id, w->n_slots, strerror(-rc));
		return rc;
	}

	/* liburing 2.3 has no io_uring_setup_buf_ring: map the ring
	 * ourselves (page-aligned), register it, then fill it. */
	w->br_bytes = ((size_t)w->n_bufs * sizeof(struct io_uring_buf) +
		       page - 1) & ~(page - 1);
	w->br = mmap(NULL, w->br_bytes, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->bufs_bytes = (size_t)w->n_bufs * w->buf_size;
	w->bufs = mmap(NULL, w->bufs_bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->br == MAP_FAILED || w->bufs == MAP_FAILED) {
		if (w->br == MAP_FAILED)
			w->br = NULL;
		if (w->bufs == MAP_FAILED)
			w->bufs = NULL;
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: receive buffers: out of memory", w->id);
		return -ENOMEM;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)w->br;
	reg.ring_entries = w->n_bufs;
	reg.bgid = LOOP_BGID;
	rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (rc < 0) {
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: io_uring_register_buf_ring: %s", w->id,
			 strerror(-rc));
		return rc;
	}
	io_uring_buf_ring_init(w->br);
	for (uint32_t i = 0; i < w->n_bufs; i++)
		loop_buf_return(w, i);
	io_uring_buf_ring_advance(w->br, (int)w->bufs_returned);
	w->bufs_returned = 0;

	w->conns = calloc(w->n_slots, sizeof(*w->conns));
	w->active = calloc(w->n_slots, sizeof(*w->active));
	w->dirty = calloc(w->n_slots, sizeof(*w->dirty));
	rc = w->conns == NULL || w->active == NULL || w->dirty == NULL
		     ? -ENOMEM
		     : conn_ctx_init(&w->ctx, cfg, w->m);
	for (unsigned li = 0; li < w->n_listen && rc == 0; li++)
		rc = conn_ctx_add(&w->ctx, w->listen[li].proto);
	if (rc < 0) {
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: out of memory", w->id);
		return -ENOMEM;
	}
	w->ctx.worker = w->id;
	for (unsigned li = 0; li < w->n_listen; li++)
		loop_arm_accept(w, li);
	loop_arm_wake(w);
	rc = io_uring_submit(&w->ring);
	if (rc < 0) {
		snprintf(w->errmsg, sizeof(w->errmsg),
			 "worker %u: io_uring_submit: %s", w->id,
			 strerror(-rc));
		return rc;
	}
	return 0;
}

static void loop_teardown(struct worker *w)
{
	if (w->conns != NULL)
		for (uint32_t i = 0; i < w->n_active; i++) {
			struct wconn *wc = &w->conns[w->active[i]];

			if (!wc->refused)
				conn_fini(&wc->c);
		}
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring); /* closes the fixed files */
	if (w->br != NULL)
		munmap(w->br, w->br_bytes);
	if (w->bufs != NULL)
		munmap(w->bufs, w->bufs_bytes);
	conn_ctx_fini(&w->ctx);
	free(w->conns);
	free(w->active);
	free(w->dirty);
	for (unsigned li = 0; li < w->n_listen; li++)
		if (w->listen[li].fd >= 0)
			close(w->listen[li].fd);
}

static void loop_turn_end(struct worker *w)
{
	uint64_t now = w->ctx.now_ms;
	unsigned ov;

	for (uint32_t i = 0; i < w->n_dirty; i++)
		loop_settle(w, w->dirty[i]);
	w->n_dirty = 0;
	if (now - w->last_sweep_ms < LOOP_SWEEP_MS)
		return;
	w->last_sweep_ms = now;
	if (!w->stopping && atomic_load_explicit(&w->loop->stop,
						 memory_order_acquire))
		loop_begin_stop(w);
	if (w->accept_resume_ms && now >= w->accept_resume_ms) {
		w->accept_resume_ms = 0;
		for (unsigned li = 0; li < w->n_listen; li++)
			if (!w->listen[li].accept_armed)
				loop_arm_accept(w, li);
	}
	loop_sweep(w);
	ov = *w->ring.cq.koverflow;
	if (ov != w->koverflow_seen) {
		metrics_add(&w->m->cq_overflows, ov - w->koverflow_seen);
		w->koverflow_seen = ov;
	}
	/* Settle what the sweep touched now, not a turn later. */
	for (uint32_t i = 0; i < w->n_dirty; i++)
		loop_settle(w, w->dirty[i]);
	w->n_dirty = 0;
}

static void loop_run(struct worker *w)
{
	struct __kernel_timespec ts = { .tv_sec = 0,
					.tv_nsec = LOOP_WAIT_MS * 1000000L };
	uint64_t hard_end = 0;

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;

		if (w->bufs_returned) {
			io_uring_buf_ring_advance(w->br,
						  (int)w->bufs_returned);
			w->bufs_returned = 0;
		}
		live_offline();
		io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		live_online();
		conn_ctx_begin_turn(&w->ctx);
		atomic_store_explicit(&w->m->last_turn_ms, w->ctx.now_ms,
				      memory_order_relaxed);
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			loop_on_cqe(w, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);
		loop_turn_end(w);
		live_quiescent();
		if (w->stopping) {
			if (w->n_active == 0)
				break;
			if (w->ctx.now_ms >= w->stop_deadline_ms) {
				if (hard_end == 0)
					hard_end = w->ctx.now_ms +
						   LOOP_CLOSE_WAIT_MS;
				else if (w->ctx.now_ms >= hard_end)
					break;
			}
		}
	}
	/* Give the last buffers back before the ring goes (tidy only). */
	if (w->bufs_returned)
		io_uring_buf_ring_advance(w->br, (int)w->bufs_returned);
}

static void *loop_thread(void *arg)
{
	struct worker *w = arg;
	struct loop *l = w->loop;
	int rc;

	rcu_register_thread();
	rc = loop_setup(w);
	pthread_mutex_lock(&l->lock);
	w->err = rc;
	l->n_started++;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	if (rc == 0) {
		w->ctx.now_ms = clock_mono_ms();
		w->last_sweep_ms = w->ctx.now_ms;
		loop_run(w);
	}
	loop_teardown(w);
	rcu_unregister_thread();
	return NULL;
}

/* The cpu for worker i: the i-th (mod count) of the cpus this process may
 * run on, so taskset is respected. */
static int loop_pick_cpu(unsigned i)
{
	cpu_set_t set;
	int n, k = 0;

	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return -1;
	n = CPU_COUNT(&set);
	if (n <= 0)
		return -1;
	k = (int)(i % (unsigned)n);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &set) && k-- == 0)
			return cpu;
	return -1;
}

int loop_start(const struct server_config *cfg,
	       const struct loop_listener *ls, unsigned n_ls,
	       struct loop **out, char *err, size_t err_cap)
{
	struct loop *l;
	unsigned i, started = 0;
	int rc = 0;

	if (n_ls > LOOP_LISTENERS_MAX) {
		snprintf(err, err_cap, "%u listeners: at most %u", n_ls,
			 LOOP_LISTENERS_MAX);
		return -EINVAL;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL)
		return -ENOMEM;
	l->cfg = cfg;
	l->n = cfg->workers;
	l->w = calloc(l->n, sizeof(*l->w));
	if (l->w == NULL) {
		free(l);
		return -ENOMEM;
	}
	atomic_init(&l->stop, false);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	for (i = 0; i < l->n; i++) {
		struct worker *w = &l->w[i];

		w->loop = l;
		w->id = i;
		w->cpu = loop_pick_cpu(i);
		for (unsigned li = 0; li < n_ls; li++) {
			w->listen[li].fd = ls[li].fds[i];
			w->listen[li].proto = ls[li].proto;
			w->listen[li].tls = ls[li].tls;
		}
		w->n_listen = n_ls;
		w->m = metrics_slot(i);
	}
	for (i = 0; i < l->n; i++) {
		rc = -pthread_create(&l->w[i].thread, NULL, loop_thread,
				     &l->w[i]);
		if (rc < 0) {
			snprintf(err, err_cap, "worker %u: %s", i,
				 strerror(-rc));
			/* The fds of workers never started are ours. */
			for (unsigned j = i; j < l->n; j++)
				for (unsigned li = 0; li < n_ls; li++)
					close(l->w[j].listen[li].fd);
			break;
		}
		started++;
	}
	pthread_mutex_lock(&l->lock);
	while (l->n_started < started)
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	for (i = 0; i < started && rc == 0; i++)
		if (l->w[i].err < 0) {
			rc = l->w[i].err;
			snprintf(err, err_cap, "%s", l->w[i].errmsg);
		}
	l->n = started;
	if (rc < 0) {
		loop_stop(l);
		return rc;
	}
	*out = l;
	return 0;
}

void loop_stop(struct loop *l)
{
	if (l == NULL)
		return;
	/* Release: pairs with the acquire load in loop_turn_end. */
	atomic_store_explicit(&l->stop, true, memory_order_release);
	for (unsigned i = 0; i < l->n; i++)
		pthread_join(l->w[i].thread, NULL);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l->w);
	free(l);
}
