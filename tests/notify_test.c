/*
 * notify_test: server/notify.c against a datagram socket standing in for
 * the service manager's NOTIFY_SOCKET: READY=1 with its STATUS line once,
 * STOPPING=1, nothing without NOTIFY_SOCKET; the watchdog at half of
 * WATCHDOG_USEC, none for another process's WATCHDOG_PID, and no ping while
 * a worker slot's loop has stalled (metrics_stalled_worker), one STATUS
 * saying so, the ping back once it turns again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "server/metrics.h"
#include "server/notify.h"
#include "tests/check.h"

static int sock = -1;
static char sock_path[108];

/* The next datagram, or "" if none is waiting. */
static const char *next_msg(void)
{
	static char buf[512];
	ssize_t n = recv(sock, buf, sizeof(buf) - 1, MSG_DONTWAIT);

	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static void set_turns(uint64_t ms)
{
	atomic_store(&metrics_slot(0)->last_turn_ms, ms);
	atomic_store(&metrics_slot(1)->last_turn_ms, ms);
}

static void test_no_socket(void)
{
	struct notify n;

	unsetenv("NOTIFY_SOCKET");
	setenv("WATCHDOG_USEC", "1000000", 1);
	unsetenv("WATCHDOG_PID");
	notify_init(&n);
	notify_ready(&n, 1, 2);
	set_turns(1000);
	notify_watchdog_at(&n, 2, 1000);
	notify_stopping(&n);
	CHECK_STREQ(next_msg(), "");
	CHECK(!n.send_failed);
}

static void test_ready_stopping(void)
{
	struct notify n;

	setenv("NOTIFY_SOCKET", sock_path, 1);
	unsetenv("WATCHDOG_USEC");
	notify_init(&n);
	CHECK(n.ping_every_ms == 0);
	notify_ready(&n, 3, 42);
	CHECK_STREQ(next_msg(), "READY=1\nSTATUS=serving generation 3, 42 records");
	notify_ready(&n, 4, 43);
	CHECK_STREQ(next_msg(), "");
	/* No WATCHDOG_USEC: no pings however long. */
	set_turns(1000);
	notify_watchdog_at(&n, 2, 1000);
	notify_watchdog_at(&n, 2, 100000);
	CHECK_STREQ(next_msg(), "");
	notify_stopping(&n);
	CHECK_STREQ(next_msg(), "STOPPING=1\nSTATUS=stopping");
	CHECK(!n.send_failed);
}

static void test_watchdog(void)
{
	struct notify n;
	char pid[32];

	setenv("NOTIFY_SOCKET", sock_path, 1);
	setenv("WATCHDOG_USEC", "1000000", 1);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	notify_init(&n);
	CHECK(n.ping_every_ms == 500);
	notify_ready(&n, 1, 10);
	CHECK_STREQ(next_msg(), "READY=1\nSTATUS=serving generation 1, 10 records");
	set_turns(1000);
	notify_watchdog_at(&n, 2, 1000);
	CHECK_STREQ(next_msg(), "WATCHDOG=1");
	notify_watchdog_at(&n, 2, 1499);
	CHECK_STREQ(next_msg(), "");
	set_turns(1500);
	notify_watchdog_at(&n, 2, 1500);
	CHECK_STREQ(next_msg(), "WATCHDOG=1");

	/* Worker 1 stops turning: pings stop once it is stalled. */
	atomic_store(&metrics_slot(0)->last_turn_ms, 2000);
	notify_watchdog_at(&n, 2, 2000);
	CHECK_STREQ(next_msg(), "WATCHDOG=1");
	atomic_store(&metrics_slot(0)->last_turn_ms, 3600);
	notify_watchdog_at(&n, 2, 3600);
	CHECK_STREQ(next_msg(), "STATUS=worker 1 stalled");
	notify_watchdog_at(&n, 2, 4200);
	notify_watchdog_at(&n, 2, 9000);
	CHECK_STREQ(next_msg(), "");
	/* It turns again: the ping comes back with the status served. */
	set_turns(9100);
	notify_watchdog_at(&n, 2, 9100);
	CHECK_STREQ(next_msg(), "WATCHDOG=1\nSTATUS=serving generation 1, 10 records");
	notify_watchdog_at(&n, 2, 9600);
	CHECK_STREQ(next_msg(), "WATCHDOG=1");

	/* A worker that never turned counts from the first call. */
	notify_init(&n);
	set_turns(0);
	notify_watchdog_at(&n, 2, 20000);
	CHECK_STREQ(next_msg(), "WATCHDOG=1");
	notify_watchdog_at(&n, 2, 22000 + METRICS_STALL_MS);
	CHECK_STREQ(next_msg(), "STATUS=worker 0 stalled");
}

static void test_watchdog_other_pid(void)
{
	struct notify n;
	char pid[32];

	setenv("NOTIFY_SOCKET", sock_path, 1);
	setenv("WATCHDOG_USEC", "1000000", 1);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	notify_init(&n);
	CHECK(n.ping_every_ms == 0);
	set_turns(1000);
	notify_watchdog_at(&n, 2, 1000);
	CHECK_STREQ(next_msg(), "");
}

int main(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[] = "/tmp/notify_test.XXXXXX";

	if (mkdtemp(dir) == NULL || metrics_init(3) < 0) {
		perror("notify_test");
		return 1;
	}
	snprintf(sock_path, sizeof(sock_path), "%s/notify", dir);
	memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || bind(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("notify_test: socket");
		return 1;
	}
	RUN(test_no_socket);
	RUN(test_ready_stopping);
	RUN(test_watchdog);
	RUN(test_watchdog_other_pid);
	close(sock);
	unlink(sock_path);
	rmdir(dir);
	return check_summary();
}
