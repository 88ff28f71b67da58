/*
 * metrics: one cache-line-padded struct metrics per worker (and one for
 * the HTTP thread), allocated once at start-up. Writers touch only their
 * own slot (metrics.h explains why relaxed loads and stores suffice);
 * metrics_sum adds every slot up for /metrics, INFO and Stats.
 */
#include "server/metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct metrics *metrics_slots;
static unsigned metrics_count;

static const uint64_t metrics_bounds_us[] = METRICS_LATENCY_BOUNDS_US;

_Static_assert(sizeof(metrics_bounds_us) / sizeof(metrics_bounds_us[0]) + 1 ==
		       METRICS_LATENCY_BUCKETS,
	       "one bucket per bound plus +Inf");

int metrics_init(unsigned n_slots)
{
	size_t bytes = (size_t)n_slots * sizeof(struct metrics);

	if (n_slots == 0)
		return -EINVAL;
	/* 64-byte aligned, and the struct ends in 64 bytes of padding, so no
	 * cache line holds counters of two slots (two writers). */
	bytes = (bytes + 63) & ~(size_t)63;
	metrics_slots = aligned_alloc(64, bytes);
	if (metrics_slots == NULL)
		return -ENOMEM;
	memset(metrics_slots, 0, bytes);
	metrics_count = n_slots;
	return 0;
}

struct metrics *metrics_slot(unsigned i)
{
	return i < metrics_count ? &metrics_slots[i] : NULL;
}

unsigned metrics_n_slots(void)
{
	return metrics_count;
}

void metrics_record_check(struct metrics *m, enum metrics_proto proto,
			  int reason)
{
	if (reason < 0 || reason >= REASON_COUNT)
		reason = REASON_NONE;
	metrics_inc(&m->checks[proto][reason]);
}

void metrics_record_latency_n(struct metrics *m, enum metrics_proto proto,
			      uint64_t latency_us, uint64_t n)
{
	unsigned b = 0;

	while (b < METRICS_LATENCY_BUCKETS - 1 &&
	       latency_us > metrics_bounds_us[b])
		b++;
	metrics_add(&m->latency[proto][b], n);
	metrics_add(&m->latency_sum_us[proto], latency_us * n);
}

void metrics_record_latency(struct metrics *m, enum metrics_proto proto,
			    uint64_t latency_us)
{
	metrics_record_latency_n(m, proto, latency_us, 1);
}

static uint64_t metrics_load(const _Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

static void metrics_acc(_Atomic uint64_t *dst, const _Atomic uint64_t *src)
{
	atomic_store_explicit(dst, metrics_load(dst) + metrics_load(src),
			      memory_order_relaxed);
}

void metrics_sum(struct metrics *out)
{
	uint64_t oldest_turn = 0;

	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < metrics_count; i++) {
		const struct metrics *s = &metrics_slots[i];
		uint64_t t = metrics_load(&s->last_turn_ms);

#define METRICS_SUM_FIELD(name, prom, help) metrics_acc(&out->name, &s->name);
		METRICS_COUNTERS(METRICS_SUM_FIELD)
#undef METRICS_SUM_FIELD
		metrics_acc(&out->connections_open, &s->connections_open);
		for (unsigned p = 0; p < METRICS_PROTO_COUNT; p++) {
			for (unsigned r = 0; r < REASON_COUNT; r++)
				metrics_acc(&out->checks[p][r], &s->checks[p][r]);
			for (unsigned b = 0; b < METRICS_LATENCY_BUCKETS; b++)
				metrics_acc(&out->latency[p][b],
					    &s->latency[p][b]);
			metrics_acc(&out->latency_sum_us[p],
				    &s->latency_sum_us[p]);
		}
		/* Slots that run no loop (HTTP) keep last_turn_ms at 0. */
		if (t != 0 && (oldest_turn == 0 || t < oldest_turn))
			oldest_turn = t;
	}
	atomic_store_explicit(&out->last_turn_ms, oldest_turn,
			      memory_order_relaxed);
}

int metrics_stalled_worker(unsigned n_workers, uint64_t now_ms,
			   uint64_t since_ms, uint64_t *silent_ms)
{
	if (n_workers > metrics_count)
		n_workers = metrics_count;
	for (unsigned i = 0; i < n_workers; i++) {
		/* Relaxed: pairs with the worker's relaxed store of its turn
		 * time; the value alone is the message, nothing else is read
		 * through it. */
		uint64_t last = metrics_load(&metrics_slots[i].last_turn_ms);

		if (last == 0)
			last = since_ms;
		if (last + METRICS_STALL_MS < now_ms) {
			*silent_ms = now_ms - last;
			return (int)i;
		}
	}
	return -1;
}

uint64_t metrics_checks_total(const struct metrics *m)
{
	uint64_t n = 0;

	for (unsigned p = 0; p < METRICS_PROTO_COUNT; p++)
		for (unsigned r = 0; r < REASON_COUNT; r++)
			n += metrics_load(&m->checks[p][r]);
	return n;
}
