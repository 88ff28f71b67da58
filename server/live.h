/*
 * live: the served generation, the one piece of global mutable state
 * (STYLE.md). Readers are liburcu QSBR threads: workers and the HTTP
 * thread call rcu_register_thread() once, report rcu_quiescent_state()
 * between requests and go offline while they block; between two
 * quiescent states the index from live_index() stays valid.
 * live_publish (one publisher at a time) swaps a new generation in, waits
 * for a grace period and destroys the old one. Freshness (DESIGN §5.3)
 * is read from the index's header fields, which the single writer updates.
 */
#ifndef CONSENTD_SERVER_LIVE_H
#define CONSENTD_SERVER_LIVE_H

#include <stdbool.h>
#include <stdint.h>

struct index;
struct index_info;

/* A reader's quiescent state, going offline and coming back: liburcu's
 * rcu_quiescent_state, rcu_thread_offline and rcu_thread_online. Readers
 * call these, not liburcu's, so that a thread-sanitizer build also sees
 * the ordering the grace period gives (liburcu's own barriers are
 * invisible to TSan): everything a reader did before its quiescent state
 * happens before live_publish destroys a generation it may have used. */
void live_quiescent(void);
void live_offline(void);
void live_online(void);

/* Inside a read side only; NULL before the first publish. */
const struct index *live_index(void);

/* For a thread that is no reader (main): the served generation's
 * index_info in *out, false before the first publish. It registers the
 * calling thread for the read and unregisters it after, so never call it
 * from a reader thread. */
bool live_info(struct index_info *out);

/* Swaps ix in; returns after the old generation's RCU grace period, when
 * it is destroyed (or, while a live_ref holds it, when the last is
 * released). */
void live_publish(struct index *ix);

/* A counted reference to the served index, for a thread that reads it
 * for long (GET /v1/snapshot walks all of it): a read side that long
 * would hold up every publish (synchronize_rcu waits for it), a
 * reference does not. The index stays whole until the last reference is
 * released, though a publish may have swapped it out meanwhile (the
 * writer then changes it no more). Any thread that is not inside a read
 * side (an online reader would deadlock with a publish waiting for it);
 * the writer takes it between its groups, so the index and the writer's
 * watermark agree. NULL when nothing is published, or when the publish of
 * the served one could not allocate its count (-ENOMEM: none can be
 * taken until the next publish). */
struct live_ref;
struct live_ref *live_acquire(void);
const struct index *live_ref_index(const struct live_ref *r);
void live_release(struct live_ref *r); /* NULL is a no-op; any thread */

/* Data age against the bounds of the configuration (0 = bound off). */
bool live_stale(const struct index *ix, int64_t now, int64_t bound_s);

#endif
