/*
 * http: the ops port (DESIGN §3.4): /healthz, /readyz, /metrics, /v1/check
 * (GET and POST, JSON) and /v1/stats, served by libmicrohttpd on its own
 * thread, off the hot path; and local rejections (§11: POST /v1/reject,
 * answered once the writer applied it: this thread waits on the writer's
 * completion queue cfg->workers, its own) and the outbox for the
 * connector (§12: GET /v1/outbox, POST /v1/outbox/pushed). That thread is a liburcu QSBR reader: it goes
 * online only while it answers a request, so it never holds up a swap.
 * Started once by main() after the first generation is published or while
 * it builds; stopped once at shutdown.
 */
#ifndef CONSENTD_SERVER_HTTP_H
#define CONSENTD_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct http;
struct server_config;

/* metrics_slot: the struct metrics slot this thread owns (the last one).
 * Returns 0, or -errno with a message (e.g. the address is still in use
 * after cfg->bind_wait_ms). */
int http_start(const struct server_config *cfg, unsigned metrics_slot,
	       struct http **out, char *err, size_t err_cap);
void http_stop(struct http *h);

/* The port it listens on (the one the kernel chose for port 0), and the
 * whole address as bound ("127.0.0.1:PORT", "[::1]:PORT"; owned by h). */
uint16_t http_port(const struct http *h);
const char *http_bound(const struct http *h);

#endif
