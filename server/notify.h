/*
 * notify: what the service manager is told (sd_notify(3), systemd's
 * Type=notify): READY=1 with a STATUS= line once the listeners are up and
 * an index is served, STOPPING=1 when a signal stops the server, and
 * WATCHDOG=1 every half watchdog interval while every worker loop turns
 * (metrics_stalled_worker, the judgement /healthz makes). Without
 * NOTIFY_SOCKET every call is a no-op; without WATCHDOG_USEC (or with a
 * WATCHDOG_PID that is not ours) no watchdog ping is sent.
 * Threads: main's only; struct notify is the caller's storage. Failures to
 * send are said once on stderr and otherwise ignored: the manager's own
 * timeouts judge a server that cannot tell it anything.
 */
#ifndef CONSENTD_SERVER_NOTIFY_H
#define CONSENTD_SERVER_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct notify {
	uint64_t ping_every_ms; /* half the watchdog interval; 0: no watchdog */
	uint64_t last_ping_ms;  /* CLOCK_MONOTONIC; 0: none yet */
	uint64_t since_ms;      /* first notify_watchdog: the workers run */
	bool ready;             /* READY=1 sent */
	bool stalled;           /* the last judgement found a stalled worker */
	bool send_failed;       /* a failure was said on stderr */
	char status[128];       /* the STATUS= line sent with READY=1 */
};

/* Reads the watchdog interval from the environment (sd_watchdog_enabled).
 * Before any thread is started. */
void notify_init(struct notify *n);

/* READY=1 and "STATUS=serving generation G, N records". Only the first
 * call sends anything. */
void notify_ready(struct notify *n, uint64_t generation, uint64_t n_records);

/* STOPPING=1 (a status saying so too). */
void notify_stopping(struct notify *n);

/* From main's signal loop, as often as it likes: WATCHDOG=1 once half the
 * interval has passed since the last ping, unless one of the n_workers
 * worker loops has stalled; then STATUS says which (once per stall) and
 * no ping goes, so the manager restarts the server when the stall
 * outlasts the interval. notify_watchdog_at takes the CLOCK_MONOTONIC ms
 * (tests); notify_watchdog reads the clock. */
void notify_watchdog_at(struct notify *n, unsigned n_workers, uint64_t now_ms);
void notify_watchdog(struct notify *n, unsigned n_workers);

#endif
