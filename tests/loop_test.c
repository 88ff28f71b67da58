/*
 * loop_test: server/loop.c, the io_uring worker, on its own (the e2e
 * suite covers it only under the real protocols): a real loop on a port-0
 * loopback listener, serving a toy protocol written here (each line is
 * answered "<n>:<line>", n counting the connection's lines), with real
 * sockets. Accepts and closes are counted, bytes split across sends and
 * many pipelined lines are answered whole and in order, connections are
 * independent, HTTP on a binary port is refused and closed, an idle
 * connection is closed at its deadline, and loop_stop ends every
 * connection (EOF) and returns.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/config.h"
#include "server/conn.h"
#include "server/loop.h"
#include "server/metrics.h"
#include "tests/check.h"

struct line_state {
	uint32_t lines;
};

static long line_process(struct conn_ctx *x, struct conn *c, const char *buf,
			 size_t len)
{
	struct line_state *st = (struct line_state *)c->ps.bytes;
	size_t pos = 0;
	const char *nl;

	while ((nl = memchr(buf + pos, '\n', len - pos)) != NULL) {
		char head[16];
		int hn = snprintf(head, sizeof(head), "%u:", ++st->lines);

		if (obuf_append(&c->out, head, (size_t)hn) < 0 ||
		    obuf_append(&c->out, buf + pos,
				(size_t)(nl - (buf + pos)) + 1) < 0)
			return -ENOMEM;
		x->n_requests++;
		pos = (size_t)(nl - buf) + 1;
	}
	return (long)pos;
}

static int line_fatal(struct conn_ctx *x, struct conn *c, enum conn_fatal why)
{
	(void)x;
	(void)why;
	c->want_close = true;
	return obuf_append(&c->out, "fatal\n", 6);
}

static const struct conn_proto line_proto = {
	.name = "line",
	.metrics = METRICS_RESP,
	.process = line_process,
	.reply_fatal = line_fatal,
	.refusal = "busy\n",
	.refusal_len = 5,
};

static struct server_config cfg;
static struct loop *loop;
static uint16_t port;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int dial(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Reads until want bytes arrived, EOF or 10 s; returns the bytes read. */
static size_t read_some(int fd, char *buf, size_t want)
{
	size_t got = 0;
	uint64_t end = now_ms() + 10000;

	while (got < want && now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, 100) <= 0)
			continue;
		n = read(fd, buf + got, want - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/* True once fd reads EOF (or a reset) within 10 s. */
static bool sees_eof(int fd)
{
	char b[256];
	uint64_t end = now_ms() + 10000;

	while (now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, 100) <= 0)
			continue;
		n = read(fd, b, sizeof(b));
		if (n <= 0)
			return true;
	}
	return false;
}

static uint64_t counter(size_t offset)
{
	struct metrics sum;

	metrics_sum(&sum);
	return atomic_load((_Atomic uint64_t *)((char *)&sum + offset));
}

/* Waits up to 10 s for a counter to reach want. */
static bool counter_reaches(size_t offset, uint64_t want)
{
	uint64_t end = now_ms() + 10000;

	while (now_ms() < end) {
		if (counter(offset) >= want)
			return true;
		usleep(5000);
	}
	return false;
}

#define ACCEPTED offsetof(struct metrics, connections_accepted)
#define CLOSED offsetof(struct metrics, connections_closed)
#define HTTP_REFUSED offsetof(struct metrics, http_on_binary_port)
#define IDLE offsetof(struct metrics, closed_idle)

static void test_lines(void)
{
	char buf[8192], want[8192];
	uint64_t acc0 = counter(ACCEPTED);
	int a = dial(), b = dial();
	size_t n = 0;

	CHECK(a >= 0 && b >= 0);
	if (a < 0 || b < 0)
		return;
	/* A line split over three sends, then two in one. */
	CHECK(write(a, "hel", 3) == 3);
	usleep(20000);
	CHECK(write(a, "lo\nwor", 6) == 6);
	usleep(20000);
	CHECK(write(a, "ld\nx\n", 5) == 5);
	CHECK(read_some(a, buf, 17) == 17);
	CHECK(memcmp(buf, "1:hello\n2:world\n3", 17) == 0);
	CHECK(read_some(a, buf, 3) == 3 && memcmp(buf, ":x\n", 3) == 0);
	/* The other connection counts its own lines. */
	CHECK(write(b, "y\n", 2) == 2);
	CHECK(read_some(b, buf, 4) == 4 && memcmp(buf, "1:y\n", 4) == 0);
	/* 500 pipelined lines in one send, answered whole and in order. */
	for (int i = 0; i < 500; i++) {
		buf[n++] = (char)('a' + i % 26);
		buf[n++] = '\n';
	}
	CHECK(write(b, buf, n) == (ssize_t)n);
	n = 0;
	for (int i = 0; i < 500; i++)
		n += (size_t)snprintf(want + n, sizeof(want) - n, "%d:%c\n",
				      i + 2, 'a' + i % 26);
	CHECK(read_some(b, buf, n) == n);
	CHECK(memcmp(buf, want, n) == 0);
	CHECK(counter(ACCEPTED) >= acc0 + 2);
	close(a);
	close(b);
}

static void test_http_refused(void)
{
	uint64_t before = counter(HTTP_REFUSED);
	int fd = dial();

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(write(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27) == 27);
	CHECK(sees_eof(fd));
	CHECK(counter_reaches(HTTP_REFUSED, before + 1));
	close(fd);
}

static void test_idle_closed(void)
{
	uint64_t before = counter(IDLE);
	uint64_t t0 = now_ms();
	int fd = dial();

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK(sees_eof(fd));
	/* Not before its deadline (cfg.idle_timeout_ms). */
	CHECK(now_ms() - t0 + 50 >= cfg.idle_timeout_ms);
	CHECK(counter_reaches(IDLE, before + 1));
	close(fd);
}

/* loop_stop ends an open connection (EOF), counts it closed, returns. */
static void test_stop(void)
{
	uint64_t closed0 = counter(CLOSED);
	int c = dial();
	char buf[8];

	CHECK(c >= 0);
	if (c < 0)
		return;
	CHECK(write(c, "z\n", 2) == 2);
	CHECK(read_some(c, buf, 4) == 4);
	loop_stop(loop);
	loop = NULL;
	CHECK(sees_eof(c));
	CHECK(counter(CLOSED) >= closed0 + 1);
	close(c);
}

int main(void)
{
	struct loop_listener ls;
	char bound[128], err[256];
	const char *colon;
	int fd = -1;

	server_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.idle_timeout_ms = 400;
	if (metrics_init(2) < 0)
		return 1;
	if (loop_listen("--test", "127.0.0.1:0", 0, 1, &fd, bound,
			sizeof(bound), err, sizeof(err)) < 0) {
		fprintf(stderr, "loop_listen: %s\n", err);
		return 1;
	}
	colon = strrchr(bound, ':');
	port = (uint16_t)atoi(colon ? colon + 1 : "0");
	if (port == 0) {
		fprintf(stderr, "loop_listen bound '%s'\n", bound);
		return 1;
	}
	ls.proto = &line_proto;
	ls.fds = &fd;
	if (loop_start(&cfg, &ls, 1, &loop, err, sizeof(err)) < 0) {
		fprintf(stderr, "loop_start: %s\n", err);
		return 1;
	}
	RUN(test_lines);
	RUN(test_http_refused);
	RUN(test_idle_closed);
	RUN(test_stop);
	return check_summary();
}
