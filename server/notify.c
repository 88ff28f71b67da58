/*
 * notify: sd_notify(3) messages to the service manager (notify.h). The
 * watchdog pings at half the interval the manager asked for, the margin
 * sd_watchdog_enabled(3) recommends, and only while no worker loop has
 * stalled: a server whose workers hang but whose main thread still wakes
 * must not look alive to the manager.
 */
#include "server/notify.h"

#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "core/clock.h"
#include "server/metrics.h"

static void notify_send(struct notify *n, const char *state)
{
	/* 0: NOTIFY_SOCKET unset, nothing to tell; the environment is kept
	 * (unset_environment 0): the server starts no children. */
	int rc = sd_notify(0, state);

	if (rc < 0 && !n->send_failed) {
		n->send_failed = true;
		fprintf(stderr, "consentd: sd_notify: %s (said once)\n",
			strerror(-rc));
	}
}

void notify_init(struct notify *n)
{
	uint64_t usec = 0;

	memset(n, 0, sizeof(*n));
	/* > 0 only if WATCHDOG_USEC is set and WATCHDOG_PID, if set, is
	 * ours (sd_watchdog_enabled(3)). */
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		n->ping_every_ms = usec / 2000u;
		if (n->ping_every_ms == 0)
			n->ping_every_ms = 1;
	}
}

void notify_ready(struct notify *n, uint64_t generation, uint64_t n_records)
{
	char msg[160];

	if (n->ready)
		return;
	n->ready = true;
	snprintf(n->status, sizeof(n->status),
		 "serving generation %llu, %llu records",
		 (unsigned long long)generation, (unsigned long long)n_records);
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", n->status);
	notify_send(n, msg);
}

void notify_stopping(struct notify *n)
{
	notify_send(n, "STOPPING=1\nSTATUS=stopping");
}

void notify_watchdog_at(struct notify *n, unsigned n_workers, uint64_t now_ms)
{
	uint64_t silent_ms;
	char msg[160];
	int w;

	if (n->ping_every_ms == 0)
		return;
	if (n->since_ms == 0)
		n->since_ms = now_ms;
	if (n->last_ping_ms != 0 && now_ms < n->last_ping_ms + n->ping_every_ms)
		return;
	w = metrics_stalled_worker(n_workers, now_ms, n->since_ms, &silent_ms);
	if (w >= 0) {
		if (!n->stalled) {
			n->stalled = true;
			fprintf(stderr, "consentd: worker %d: no loop turn for "
				"%llu ms: watchdog not pinged\n", w,
				(unsigned long long)silent_ms);
			snprintf(msg, sizeof(msg), "STATUS=worker %d stalled", w);
			notify_send(n, msg);
		}
		return;
	}
	if (n->stalled) {
		n->stalled = false;
		fprintf(stderr, "consentd: workers turn again: watchdog "
			"pinged\n");
		snprintf(msg, sizeof(msg), "WATCHDOG=1\nSTATUS=%s",
			 n->ready ? n->status : "starting");
		notify_send(n, msg);
	} else {
		notify_send(n, "WATCHDOG=1");
	}
	n->last_ping_ms = now_ms;
}

void notify_watchdog(struct notify *n, unsigned n_workers)
{
	notify_watchdog_at(n, n_workers, clock_mono_ms());
}
