/*
 * live_test: server/live.c, the served-generation pointer behind liburcu
 * QSBR, on its own. A reader that holds a generation between two quiescent
 * states keeps it: live_publish swaps the pointer at once but returns (and
 * destroys the old index) only after that reader's next quiescent state;
 * an offline reader holds nothing up. Under `make test-asan` a destroy
 * that came too early is a use-after-free report; under `make test-tsan`
 * the pointer's hand-over is checked for races. Also live_stale's bounds,
 * and live_acquire's references (GET /v1/snapshot's hold on a generation).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <urcu-qsbr.h>

#include "index/table.h"
#include "server/live.h"
#include "tests/check.h"

static struct index *make_index(uint64_t generation, int64_t data_as_of)
{
	static const uint8_t secret[INDEX_SECRET_BYTES] = { 1, 2, 3 };
	struct index *ix = NULL;

	if (index_create(1000, secret, &ix) < 0)
		return NULL;
	index_set_meta_writer(ix, generation, 0, data_as_of, data_as_of);
	return ix;
}

static uint64_t generation_of(const struct index *ix)
{
	struct index_info info;

	index_info(ix, &info);
	return info.generation;
}

struct reader {
	atomic_int step;          /* 1: holds a generation; 2: may let go */
	atomic_uint_fast64_t seen; /* the generation it held */
};

static void *reader_thread(void *arg)
{
	struct reader *r = arg;
	const struct index *ix;

	rcu_register_thread();
	ix = live_index();
	atomic_store(&r->seen, ix ? generation_of(ix) : 0);
	atomic_store(&r->step, 1);
	while (atomic_load(&r->step) != 2)
		usleep(1000);
	/* Still inside the same read side: the old index must be whole. */
	atomic_store(&r->seen, ix ? generation_of(ix) : 0);
	live_quiescent();
	rcu_unregister_thread();
	return NULL;
}

struct publisher {
	struct index *ix;
	atomic_bool done;
};

static void *publish_thread(void *arg)
{
	struct publisher *p = arg;

	live_publish(p->ix);
	atomic_store(&p->done, true);
	return NULL;
}

static void test_publish_waits_for_readers(void)
{
	struct reader r = { 0 };
	struct publisher p = { 0 };
	pthread_t rt, pt;

	live_publish(make_index(1, 1700000000));
	rcu_register_thread();
	CHECK(live_index() != NULL && generation_of(live_index()) == 1);
	live_offline(); /* this thread holds nothing while it waits */

	CHECK(pthread_create(&rt, NULL, reader_thread, &r) == 0);
	while (atomic_load(&r.step) != 1)
		usleep(1000);
	CHECK(atomic_load(&r.seen) == 1);

	p.ix = make_index(2, 1700000001);
	CHECK(pthread_create(&pt, NULL, publish_thread, &p) == 0);
	/* The pointer moves at once; the publish waits on the reader. */
	for (int i = 0; i < 5000; i++) {
		live_online();
		const struct index *now = live_index();
		bool swapped = now != NULL && generation_of(now) == 2;
		live_offline();
		if (swapped)
			break;
		usleep(1000);
	}
	usleep(200 * 1000);
	CHECK(!atomic_load(&p.done));

	atomic_store(&r.step, 2);
	pthread_join(rt, NULL);
	pthread_join(pt, NULL);
	CHECK(atomic_load(&r.seen) == 1); /* generation 1, read whole */
	CHECK(atomic_load(&p.done));
	live_online();
	CHECK(generation_of(live_index()) == 2);
	rcu_unregister_thread();
}

/* A registered reader that is offline does not hold a publish up. */
static void test_offline_reader_does_not_block(void)
{
	rcu_register_thread();
	live_offline();
	live_publish(make_index(3, 1700000002)); /* would hang if it waited */
	live_online();
	CHECK(generation_of(live_index()) == 3);
	rcu_unregister_thread();
}

static void test_stale(void)
{
	struct index *ix = make_index(4, 1000);

	CHECK(ix != NULL);
	if (ix == NULL)
		return;
	CHECK(!live_stale(NULL, 5000, 10));
	CHECK(!live_stale(ix, 5000, 0));     /* bound off */
	CHECK(!live_stale(ix, 1010, 10));    /* exactly at the bound */
	CHECK(live_stale(ix, 1011, 10));
	index_destroy(ix);
}

/* A reference keeps a generation whole past its swap, without holding
 * the swap up (no read side), and the last release destroys it (under
 * ASan a read after an early destroy is a report; a leak, one never
 * destroyed). A holder reads on a thread of its own while a publisher
 * swaps twice. */
struct holder {
	struct live_ref *ref;
	atomic_int step; /* 1: may read again and release */
	atomic_uint_fast64_t seen;
};

static void *holder_thread(void *arg)
{
	struct holder *h = arg;

	while (atomic_load(&h->step) != 1)
		usleep(1000);
	atomic_store(&h->seen, generation_of(live_ref_index(h->ref)));
	live_release(h->ref);
	return NULL;
}

static void test_reference_outlives_the_swap(void)
{
	struct holder h = { 0 };
	pthread_t th;

	live_publish(make_index(10, 1700000010));
	h.ref = live_acquire();
	CHECK(h.ref != NULL);
	if (h.ref == NULL)
		return;
	CHECK(generation_of(live_ref_index(h.ref)) == 10);
	CHECK(pthread_create(&th, NULL, holder_thread, &h) == 0);
	/* Neither publish waits for the holder. */
	live_publish(make_index(11, 1700000011));
	live_publish(make_index(12, 1700000012));
	atomic_store(&h.step, 1);
	pthread_join(th, NULL);
	CHECK(atomic_load(&h.seen) == 10);

	/* The served one, held twice, released in either order. */
	struct live_ref *a = live_acquire(), *b = live_acquire();
	CHECK(a != NULL && a == b);
	live_release(a);
	live_publish(make_index(13, 1700000013));
	CHECK(generation_of(live_ref_index(b)) == 12);
	live_release(b);
	live_release(NULL);
}

static void test_no_reference_before_publish(void)
{
	live_publish(NULL);
	CHECK(live_acquire() == NULL);
}

int main(void)
{
	RUN(test_no_reference_before_publish);
	RUN(test_reference_outlives_the_swap);
	RUN(test_publish_waits_for_readers);
	RUN(test_offline_reader_does_not_block);
	RUN(test_stale);
	live_publish(NULL); /* destroys the last generation */
	return check_summary();
}
