/*
 * metrics_test: server/metrics.c's counters on their own (the e2e tests
 * only see them through /metrics): per-slot single writers, sums over the
 * slots, the latency buckets' edges, reasons out of range, the stalest
 * worker's last turn, the first stalled worker, and a reader summing
 * while two writers count (run under TSan by `make test-tsan`: relaxed
 * atomics, no data race).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "server/metrics.h"
#include "tests/check.h"

static uint64_t load(const _Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

static void test_slots_and_sum(void)
{
	struct metrics sum;

	CHECK(metrics_init(0) < 0);
	CHECK(metrics_init(3) == 0);
	CHECK(metrics_n_slots() == 3);
	CHECK(metrics_slot(2) != NULL && metrics_slot(3) == NULL);
	/* No false sharing: the end padding keeps one slot's last counter a
	 * cache line from the next slot's first. */
	CHECK((uintptr_t)metrics_slot(0) % 64 == 0);
	CHECK((uintptr_t)&metrics_slot(1)->connections_accepted -
	      (uintptr_t)(&metrics_slot(0)->latency_sum_us[METRICS_PROTO_COUNT - 1] + 1) >= 64);
	metrics_inc(&metrics_slot(0)->http_requests);
	metrics_add(&metrics_slot(1)->http_requests, 41);
	metrics_record_check(metrics_slot(0), METRICS_RPC, REASON_CONSENT_GIVEN);
	metrics_record_check(metrics_slot(2), METRICS_RESP, REASON_NO_CONSENT);
	metrics_record_check(metrics_slot(2), METRICS_HTTP, -1);
	metrics_record_check(metrics_slot(2), METRICS_HTTP, REASON_COUNT);
	metrics_sum(&sum);
	CHECK(load(&sum.http_requests) == 42);
	CHECK(load(&sum.checks[METRICS_RPC][REASON_CONSENT_GIVEN]) == 1);
	CHECK(load(&sum.checks[METRICS_RESP][REASON_NO_CONSENT]) == 1);
	/* Out of range counts as REASON_NONE, never out of the array. */
	CHECK(load(&sum.checks[METRICS_HTTP][REASON_NONE]) == 2);
	CHECK(metrics_checks_total(&sum) == 4);
	CHECK(metrics_checks_total(metrics_slot(2)) == 3);
}

static void test_latency_buckets(void)
{
	static const uint64_t bounds[] = METRICS_LATENCY_BOUNDS_US;
	struct metrics *m = metrics_slot(0);
	struct metrics sum;

	CHECK(sizeof(bounds) / sizeof(bounds[0]) == METRICS_LATENCY_BUCKETS - 1);
	memset(m->latency, 0, sizeof(m->latency));
	memset(m->latency_sum_us, 0, sizeof(m->latency_sum_us));
	/* A bound is inclusive: 1 us is bucket 0, 2 us bucket 1. */
	metrics_record_latency(m, METRICS_RPC, 0);
	metrics_record_latency(m, METRICS_RPC, 1);
	metrics_record_latency(m, METRICS_RPC, 2);
	metrics_record_latency(m, METRICS_RPC, 10000);
	metrics_record_latency(m, METRICS_RPC, 10001);
	metrics_record_latency_n(m, METRICS_RESP, 150, 10);
	metrics_sum(&sum);
	CHECK(load(&sum.latency[METRICS_RPC][0]) == 2);
	CHECK(load(&sum.latency[METRICS_RPC][1]) == 1);
	CHECK(load(&sum.latency[METRICS_RPC][METRICS_LATENCY_BUCKETS - 2]) == 1);
	CHECK(load(&sum.latency[METRICS_RPC][METRICS_LATENCY_BUCKETS - 1]) == 1);
	CHECK(load(&sum.latency_sum_us[METRICS_RPC]) == 20004);
	CHECK(load(&sum.latency[METRICS_RESP][7]) == 10); /* (100, 200] */
	CHECK(load(&sum.latency_sum_us[METRICS_RESP]) == 1500);
}

/* /healthz judges the stalest worker: the oldest nonzero last turn. */
static void test_oldest_turn(void)
{
	struct metrics sum;

	atomic_store(&metrics_slot(0)->last_turn_ms, 5000);
	atomic_store(&metrics_slot(1)->last_turn_ms, 3000);
	atomic_store(&metrics_slot(2)->last_turn_ms, 0); /* HTTP: no loop */
	metrics_sum(&sum);
	CHECK(load(&sum.last_turn_ms) == 3000);
	atomic_store(&metrics_slot(0)->last_turn_ms, 0);
	atomic_store(&metrics_slot(1)->last_turn_ms, 0);
	metrics_sum(&sum);
	CHECK(load(&sum.last_turn_ms) == 0);
}

/* /healthz and the watchdog: the first worker silent past METRICS_STALL_MS,
 * a never-turned one counted from the caller's start, only the slots asked
 * about (the HTTP slot after the workers keeps 0 and is never judged). */
static void test_stalled_worker(void)
{
	uint64_t silent = 0;

	atomic_store(&metrics_slot(0)->last_turn_ms, 10000);
	atomic_store(&metrics_slot(1)->last_turn_ms, 10000);
	atomic_store(&metrics_slot(2)->last_turn_ms, 0);
	CHECK(metrics_stalled_worker(2, 10000 + METRICS_STALL_MS, 0,
				     &silent) == -1);
	CHECK(metrics_stalled_worker(2, 10001 + METRICS_STALL_MS, 0,
				     &silent) == 0);
	CHECK(silent == METRICS_STALL_MS + 1);
	atomic_store(&metrics_slot(0)->last_turn_ms, 12500);
	CHECK(metrics_stalled_worker(2, 12500 + METRICS_STALL_MS, 0,
				     &silent) == 1);
	CHECK(silent == METRICS_STALL_MS + 2500);
	/* Slot 2 never turned: judged from since_ms when asked about. */
	atomic_store(&metrics_slot(0)->last_turn_ms, 13000);
	atomic_store(&metrics_slot(1)->last_turn_ms, 13000);
	CHECK(metrics_stalled_worker(2, 15000, 0, &silent) == -1);
	CHECK(metrics_stalled_worker(3, 14500, 12500, &silent) == -1);
	CHECK(metrics_stalled_worker(3, 15000, 12500, &silent) == 2);
	CHECK(silent == 2500);
	/* More workers than slots: only the slots there are. */
	CHECK(metrics_stalled_worker(99, 14001, 14001, &silent) == -1);
	atomic_store(&metrics_slot(0)->last_turn_ms, 0);
	atomic_store(&metrics_slot(1)->last_turn_ms, 0);
}

#define COUNT_N 200000

static void *count_in_slot(void *arg)
{
	struct metrics *m = arg;

	for (int i = 0; i < COUNT_N; i++)
		metrics_inc(&m->changes_applied);
	return NULL;
}

/* Two writers on their own slots, the reader summing meanwhile: every
 * sum lies between the previous one and the final total. */
static void test_concurrent_sum(void)
{
	pthread_t t[2];
	uint64_t last = 0, base;
	struct metrics sum;
	bool monotonic = true;

	metrics_sum(&sum);
	base = load(&sum.changes_applied);
	CHECK(pthread_create(&t[0], NULL, count_in_slot, metrics_slot(0)) == 0);
	CHECK(pthread_create(&t[1], NULL, count_in_slot, metrics_slot(1)) == 0);
	for (int i = 0; i < 2000; i++) {
		uint64_t now;

		metrics_sum(&sum);
		now = load(&sum.changes_applied) - base;
		if (now < last || now > 2u * COUNT_N)
			monotonic = false;
		last = now;
	}
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	metrics_sum(&sum);
	CHECK(monotonic);
	CHECK(load(&sum.changes_applied) - base == 2u * COUNT_N);
}

int main(void)
{
	RUN(test_slots_and_sum);
	RUN(test_latency_buckets);
	RUN(test_oldest_turn);
	RUN(test_stalled_worker);
	RUN(test_concurrent_sum);
	return check_summary();
}
