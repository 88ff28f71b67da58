/* addr: the HOST:PORT reader (what it accepts, what it refuses and that
 * the message names what was wrong), the bound-address writer, and the
 * bind that waits out EADDRINUSE (gives up on time, succeeds once the
 * holder lets go); loop_listen through it on port 0 and on a held port. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/addr.h"
#include "server/loop.h"
#include "tests/check.h"

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void accept_ok(const char *text, const char *host, uint16_t port)
{
	char h[ADDR_HOST_MAX] = "", err[512] = "";
	uint16_t p = 1;
	int rc = addr_split(text, h, &p, err, sizeof(err));

	CHECKF(rc == 0, "\"%s\": %d %s", text, rc, err);
	CHECKF(strcmp(h, host) == 0 && p == port, "\"%s\": host \"%s\" port %u",
	       text, h, (unsigned)p);
}

/* Refused with -EINVAL and a message holding why. */
static void refuse(const char *text, const char *why)
{
	char h[ADDR_HOST_MAX], err[512] = "";
	uint16_t p;
	int rc = addr_split(text, h, &p, err, sizeof(err));

	CHECKF(rc == -EINVAL, "\"%s\": %d", text, rc);
	CHECKF(strstr(err, why) != NULL, "\"%s\": message \"%s\" lacks \"%s\"",
	       text, err, why);
}

static void test_split(void)
{
	char long_host[400];

	accept_ok("127.0.0.1:7700", "127.0.0.1", 7700);
	accept_ok("localhost:0", "localhost", 0);
	accept_ok("my-host.example_1.com:65535", "my-host.example_1.com",
		  65535);
	accept_ok("[::1]:7702", "::1", 7702);
	accept_ok("[fe80::1%lo]:1", "fe80::1%lo", 1);
	accept_ok("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", 80);
	accept_ok("h:007", "h", 7);

	refuse("", "empty address");
	refuse("127.0.0.1", "no port");
	refuse("127.0.0.1:", "empty port");
	refuse(":7700", "empty host");
	refuse("[]:7700", "empty host");
	refuse("127.0.0.1:65536", "over 65535");
	refuse("127.0.0.1:99999999999999999999", "over 65535");
	refuse("127.0.0.1:x", "not a number");
	refuse("127.0.0.1:-1", "not a number");
	refuse("127.0.0.1:+1", "not a number");
	refuse("127.0.0.1: 1", "not a number");
	refuse("127.0.0.1:1 ", "not a number");
	refuse("::1:7702", "brackets");
	refuse("::1", "brackets");
	refuse("[::1]7702", "no ':PORT' after ']'");
	refuse("[::1]", "no ':PORT' after ']'");
	refuse("[::1", "without its ']'");
	refuse("[localhost]:1", "brackets hold an IPv6 address");
	refuse("a b:1", "character ' '");
	refuse("a/b:1", "character '/'");
	refuse("a\tb:1", "character '?'");
	refuse("[::1]]:1", "no ':PORT' after ']'");
	memset(long_host, 'a', sizeof(long_host));
	memcpy(long_host + 300, ":1", 3);
	refuse(long_host, "host longer than");
}

static void test_resolve_format(void)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char out[ADDR_TEXT_MAX], err[512] = "";

	CHECK(addr_resolve("127.0.0.1:7700", &ss, &sl, err, sizeof(err)) == 0);
	CHECK(ss.ss_family == AF_INET && sl == sizeof(struct sockaddr_in));
	CHECK(addr_format((struct sockaddr *)&ss, out, sizeof(out)) > 0);
	CHECK_STREQ(out, "127.0.0.1:7700");
	CHECK(addr_resolve("[::1]:0", &ss, &sl, err, sizeof(err)) == 0);
	CHECK(ss.ss_family == AF_INET6 && sl == sizeof(struct sockaddr_in6));
	CHECK(addr_format((struct sockaddr *)&ss, out, sizeof(out)) > 0);
	CHECK_STREQ(out, "[::1]:0");
	/* A short buffer is refused, not truncated silently. */
	CHECK(addr_format((struct sockaddr *)&ss, out, 4) == -EINVAL);
	/* Bad text comes back from the split; an unknown name from
	 * getaddrinfo, both -EINVAL with the address in the message. */
	CHECK(addr_resolve("127.0.0.1:70000", &ss, &sl, err,
			   sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "over 65535") != NULL);
	CHECK(addr_resolve("no.such.host.invalid:1", &ss, &sl, err,
			   sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "no.such.host.invalid:1") != NULL);
	{
		struct sockaddr un = { .sa_family = AF_UNIX };

		CHECK(addr_format(&un, out, sizeof(out)) == -EINVAL);
	}
}

/* A listener on 127.0.0.1, port chosen by the kernel; *sa gets it. */
static int hold_port(struct sockaddr_in *sa)
{
	socklen_t sl = sizeof(*sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)sa, sizeof(*sa)) < 0 ||
	    listen(fd, 8) < 0 ||
	    getsockname(fd, (struct sockaddr *)sa, &sl) < 0) {
		perror("hold_port");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

struct release {
	int fd;
	unsigned after_ms;
};

static void *release_later(void *arg)
{
	struct release *r = arg;
	struct timespec ts = { r->after_ms / 1000,
			       (long)(r->after_ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
	close(r->fd);
	return NULL;
}

static void test_bind_wait(void)
{
	struct sockaddr_in sa;
	int held = hold_port(&sa), fd;
	uint64_t t0, took;
	pthread_t th;
	struct release rel;

	CHECK(held >= 0);
	/* No wait: EADDRINUSE at once. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	t0 = now_ms();
	CHECK(addr_bind(fd, (struct sockaddr *)&sa, sizeof(sa), 0,
			"test no-wait") == -EADDRINUSE);
	CHECK(now_ms() - t0 < 50);
	/* A bounded wait: gives up after it, not long after. */
	t0 = now_ms();
	CHECK(addr_bind(fd, (struct sockaddr *)&sa, sizeof(sa), 250,
			"test give-up") == -EADDRINUSE);
	took = now_ms() - t0;
	CHECKF(took >= 250 && took < 250 + 4 * ADDR_RETRY_MS, "%llu ms",
	       (unsigned long long)took);
	/* The holder lets go after 200 ms: bound within a retry of it. */
	rel.fd = held;
	rel.after_ms = 200;
	CHECK(pthread_create(&th, NULL, release_later, &rel) == 0);
	t0 = now_ms();
	CHECK(addr_bind(fd, (struct sockaddr *)&sa, sizeof(sa), 5000,
			"test released") == 0);
	took = now_ms() - t0;
	CHECKF(took >= 150 && took < 200 + 4 * ADDR_RETRY_MS, "%llu ms",
	       (unsigned long long)took);
	pthread_join(th, NULL);
	close(fd);
	/* Another error is not waited for: a non-local address. */
	{
		struct sockaddr_in far = { .sin_family = AF_INET,
					   .sin_addr.s_addr = htonl(0x08080808) };

		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		t0 = now_ms();
		CHECK(addr_bind(fd, (struct sockaddr *)&far, sizeof(far), 5000,
				"test far") == -EADDRNOTAVAIL);
		CHECK(now_ms() - t0 < 50);
		close(fd);
	}
}

static void test_loop_listen(void)
{
	struct sockaddr_in sa;
	int fds[3], held, rc;
	char bound[ADDR_TEXT_MAX], addr[64], err[512] = "";
	unsigned port;

	/* Port 0: every listener on the port the first one got. */
	rc = loop_listen("--rpc", "127.0.0.1:0", 0, 3, fds, bound,
			 sizeof(bound), err, sizeof(err));
	CHECKF(rc == 0, "%d %s", rc, err);
	if (rc == 0) {
		CHECKF(sscanf(bound, "127.0.0.1:%u", &port) == 1 && port > 0,
		       "%s", bound);
		for (int i = 0; i < 3; i++) {
			socklen_t sl = sizeof(sa);

			CHECK(getsockname(fds[i], (struct sockaddr *)&sa,
					  &sl) == 0);
			CHECK(ntohs(sa.sin_port) == port);
			close(fds[i]);
		}
	}
	/* Held by another socket: refused after the wait, with the reason. */
	held = hold_port(&sa);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u",
		 (unsigned)ntohs(sa.sin_port));
	rc = loop_listen("--resp", addr, 120, 2, fds, bound, sizeof(bound),
			 err, sizeof(err));
	CHECKF(rc == -EADDRINUSE, "%d", rc);
	CHECKF(strstr(err, "Address already in use") != NULL &&
	       strstr(err, addr) != NULL, "%s", err);
	close(held);
	/* Bad text: the parser's message. */
	rc = loop_listen("--rpc", "::1:7700", 0, 1, fds, bound, sizeof(bound),
			 err, sizeof(err));
	CHECK(rc == -EINVAL && strstr(err, "brackets") != NULL);
}

int main(void)
{
	RUN(test_split);
	RUN(test_resolve_format);
	RUN(test_bind_wait);
	RUN(test_loop_listen);
	return check_summary();
}
