/*
 * loop: the worker threads. One per --workers, each pinned to a core,
 * owning one io_uring (created on the thread itself: SINGLE_ISSUER and
 * DEFER_TASKRUN), one SO_REUSEPORT listener per port, a provided-buffer
 * ring for multishot receives and a fixed-file table for its connections.
 * Workers share nothing but the configuration, the live index (liburcu
 * QSBR readers) and the stop flag in struct loop.
 *
 * main() calls loop_listen for each port, loop_start once with the table
 * of listeners (each names its protocol, struct conn_proto), and
 * loop_stop once at shutdown (stop accepting, finish in-flight replies
 * within cfg->shutdown_grace_ms, then close everything and join).
 * Errors: -errno with a message.
 */
#ifndef CONSENTD_SERVER_LOOP_H
#define CONSENTD_SERVER_LOOP_H

#include <stddef.h>
#include <stdint.h>

struct server_config;
struct conn_proto;
struct loop;
struct tls_server;

#define LOOP_LISTENERS_MAX 8 /* ports (protocols) one loop serves */

/* One port: its listeners, one per worker (from loop_listen), and the
 * protocol the connections accepted on it speak. */
struct loop_listener {
	const struct conn_proto *proto;
	const int *fds; /* fds[i] for worker i */
	struct tls_server *tls; /* NULL: plaintext; else TLS under proto
				 * (server/tls.h), outliving the loop */
};

/* Opens n listeners on addr ("HOST:PORT", "[v6]:PORT", server/addr.h),
 * all bound to one port with SO_REUSEPORT (port 0: the kernel picks it
 * for the first and the rest follow). A port in use is waited for up to
 * bind_wait_ms (addr_bind; what, e.g. "--rpc", names it in the log).
 * fds[0..n) receive them; bound gets "HOST:PORT" as actually bound. */
int loop_listen(const char *what, const char *addr, uint32_t bind_wait_ms,
		unsigned n, int *fds, char *bound, size_t bound_cap, char *err,
		size_t err_cap);

/* Starts cfg->workers workers; worker i serves ls[j].fds[i] for each of
 * the n_ls ports (the loop owns the fds from then on) and uses metrics
 * slot i. Returns once every worker has its ring set up and accepts
 * armed. */
int loop_start(const struct server_config *cfg,
	       const struct loop_listener *ls, unsigned n_ls,
	       struct loop **out, char *err, size_t err_cap);

/* Graceful stop (see above); frees the loop. */
void loop_stop(struct loop *l);

#endif
