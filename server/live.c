/*
 * live: the published-index pointer behind liburcu QSBR.
 *
 * Readers (workers, the HTTP thread) load the pointer with
 * rcu_dereference between two quiescent states; the publisher swaps it
 * with rcu_xchg_pointer and then waits in synchronize_rcu until every
 * registered reader has passed a quiescent state (or is offline), after
 * which no reader can still hold the old generation and it is destroyed.
 * Publishers are serialised by a mutex, so two publishes never destroy the
 * same generation twice.
 */
#include "server/live.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <urcu-qsbr.h>

#include "index/table.h"

static struct index *live_ptr;
static pthread_mutex_t live_publish_lock = PTHREAD_MUTEX_INITIALIZER;

/* The served index's count of references: one for being published, one
 * per live_acquire. Under live_publish_lock only (acquire reads it there;
 * nothing else reads it), so the count itself is the only atomic. */
struct live_ref {
	struct index *ix;
	atomic_uint refs;
};
static struct live_ref *live_cur;

/* Under TSan: a release by each reader at its quiescent state (and when
 * it goes offline), an acquire by the publisher after synchronize_rcu,
 * on one address. That is the happens-before edge a grace period is;
 * without it TSan reports the destroy of a retired generation as racing
 * with a reader's last read of it. No code at all in other builds. */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
static char live_grace;
#define LIVE_GRACE_RELEASE() __tsan_release(&live_grace)
#define LIVE_GRACE_ACQUIRE() __tsan_acquire(&live_grace)
#else
#define LIVE_GRACE_RELEASE() ((void)0)
#define LIVE_GRACE_ACQUIRE() ((void)0)
#endif

void live_quiescent(void)
{
	LIVE_GRACE_RELEASE();
	rcu_quiescent_state();
}

void live_offline(void)
{
	LIVE_GRACE_RELEASE();
	rcu_thread_offline();
}

void live_online(void)
{
	rcu_thread_online();
}

const struct index *live_index(void)
{
	/* Dependency-ordered load: pairs with the release in
	 * rcu_xchg_pointer below, so the index's contents (built before the
	 * publish) are visible through the pointer. */
	return rcu_dereference(live_ptr);
}

bool live_info(struct index_info *out)
{
	const struct index *ix;

	/* Registered (and online) from here: a publish meanwhile waits for
	 * our unregistering before it destroys what we read. */
	rcu_register_thread();
	ix = live_index();
	if (ix != NULL)
		index_info(ix, out);
	rcu_unregister_thread();
	return ix != NULL;
}

void live_release(struct live_ref *r)
{
	if (r == NULL)
		return;
	/* acq_rel: the last one to drop it sees every read of the others
	 * (their releases) before it destroys the index. */
	if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
		index_destroy(r->ix);
		free(r);
	}
}

struct live_ref *live_acquire(void)
{
	pthread_mutex_lock(&live_publish_lock);
	struct live_ref *r = live_cur;
	/* Relaxed: the lock orders it against live_publish's release of
	 * the published reference. */
	if (r != NULL)
		atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&live_publish_lock);
	return r;
}

const struct index *live_ref_index(const struct live_ref *r)
{
	return r->ix;
}

void live_publish(struct index *ix)
{
	struct index *old;
	struct live_ref *old_ref, *ref = NULL;

	/* Before the lock: a failure means no reference can be taken to
	 * this generation (live_acquire says NULL), never a failed swap. */
	if (ix != NULL && (ref = malloc(sizeof(*ref))) != NULL) {
		ref->ix = ix;
		atomic_init(&ref->refs, 1);
	}
	pthread_mutex_lock(&live_publish_lock);
	/* Full barrier before the exchange (liburcu's contract for
	 * rcu_xchg_pointer): pairs with rcu_dereference in live_index. */
	old = rcu_xchg_pointer(&live_ptr, ix);
	old_ref = live_cur;
	live_cur = ref;
	/* Waits until every online reader has reported a quiescent state
	 * since the exchange: none can still use `old` after this. */
	synchronize_rcu();
	LIVE_GRACE_ACQUIRE();
	pthread_mutex_unlock(&live_publish_lock);
	/* The published reference: the last holder destroys the index. */
	if (old_ref != NULL)
		live_release(old_ref);
	else if (old != NULL)
		index_destroy(old);
}

bool live_stale(const struct index *ix, int64_t now, int64_t bound_s)
{
	struct index_info info;

	if (bound_s <= 0 || ix == NULL)
		return false;
	index_info(ix, &info);
	return now - info.data_as_of > bound_s;
}
