/*
 * metrics: the server's counters. Each worker (and the HTTP thread) owns
 * one struct metrics and is its only writer: metrics_inc/metrics_add are a
 * relaxed load and store, no locked instruction. Readers (/metrics, INFO,
 * Stats) sum every slot with metrics_sum; relaxed loads suffice because a
 * counter is only ever read as a whole 64-bit word and no other data is
 * published through it. Counters are listed once in METRICS_COUNTERS: a
 * name, the Prometheus name and its help text; /metrics renders the list.
 * Add a counter by adding a line there.
 */
#ifndef CONSENTD_SERVER_METRICS_H
#define CONSENTD_SERVER_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/enums.h"

#define METRICS_COUNTERS(X)                                                    \
	X(connections_accepted, "consentd_connections_accepted_total",         \
	  "Client connections accepted.")                                      \
	X(connections_closed, "consentd_connections_closed_total",             \
	  "Client connections closed, for any reason.")                        \
	X(connections_refused, "consentd_connections_refused_total",           \
	  "Connections refused at the connection cap.")                        \
	X(closed_idle, "consentd_closed_idle_total",                           \
	  "Connections closed after the idle deadline.")                       \
	X(closed_partial, "consentd_closed_partial_total",                     \
	  "Connections closed for stalling mid-frame.")                        \
	X(closed_slow_reader, "consentd_closed_slow_reader_total",             \
	  "Connections closed for not reading their replies.")                 \
	X(frames_oversize, "consentd_frames_oversize_total",                   \
	  "RPC frames, RESP or policy requests over the size limits.")         \
	X(frames_undecodable, "consentd_frames_undecodable_total",             \
	  "RPC frames, RESP or policy requests that did not parse.")           \
	X(http_on_binary_port, "consentd_http_on_binary_port_total",           \
	  "HTTP requests sent to a binary client port (closed).")              \
	X(auth_failures, "consentd_auth_failures_total",                       \
	  "AUTH attempts with an unknown token.")                              \
	X(unauthenticated_refused, "consentd_unauthenticated_refused_total",   \
	  "Commands refused before AUTH.")                                     \
	X(accept_paused, "consentd_accept_paused_total",                       \
	  "Times accepting paused on EMFILE/ENFILE.")                          \
	X(recv_enobufs, "consentd_recv_enobufs_total",                         \
	  "Multishot receives re-armed after running out of buffers.")         \
	X(http_requests, "consentd_http_requests_total",                       \
	  "Requests on the HTTP ops port.")                                    \
	X(http_bad_requests, "consentd_http_bad_requests_total",               \
	  "HTTP requests answered 400.")                                       \
	X(replies_too_large, "consentd_replies_too_large_total",               \
	  "Requests refused because their reply would pass the output cap.")   \
	X(read_paused, "consentd_read_paused_total",                           \
	  "Times reading a connection paused on its unsent-output cap.")       \
	X(cq_overflows, "consentd_cq_overflows_total",                         \
	  "Completions the kernel had to hold back (CQ full; should stay 0).") \
	X(changes_applied, "consentd_changes_applied_total",                   \
	  "Changes that changed the index (inserted or updated).")             \
	X(changes_skipped_replay, "consentd_changes_skipped_replay_total",     \
	  "Changes at or below the applied sequence (replays), skipped.")      \
	X(changes_skipped_order, "consentd_changes_skipped_order_total",       \
	  "Changes older than the stored record (or identical), skipped.")     \
	X(applies_conflict, "consentd_applies_conflict_total",                 \
	  "Applies refused with 409: a cursor that does not follow, or "      \
	  "changes of the other kind (origins vs sequences).")                 \
	X(changelog_appends, "consentd_changelog_appends_total",               \
	  "Group commits to the change log (one fdatasync each).")             \
	X(changelog_failures, "consentd_changelog_failures_total",             \
	  "Change log writes or fsyncs that failed (Applies refused since).")  \
	X(history_failures, "consentd_history_failures_total",                 \
	  "Evidence store appends, syncs or recoveries that failed "           \
	  "(Applies refused since).")                                          \
	X(generations_built, "consentd_generations_built_total",               \
	  "Generations written to the data directory by the server.")          \
	X(generation_swaps, "consentd_generation_swaps_total",                 \
	  "Served generations replaced (RCU swaps).")                          \
	X(policy_requests, "consentd_policy_requests_total",                   \
	  "Postfix policy requests answered.")                                 \
	X(policy_unmapped, "consentd_policy_unmapped_total",                   \
	  "Policy requests at RCPT from senders not in the map (DUNNO).")      \
	X(policy_rejected, "consentd_policy_rejected_total",                   \
	  "Recipients refused on the policy port (550 5.7.1).")                \
	X(policy_deferred, "consentd_policy_deferred_total",                   \
	  "Recipients deferred on the policy port: data stale (451 4.7.1).")   \
	X(tls_handshakes, "consentd_tls_handshakes_total",                     \
	  "TLS handshakes completed on client ports.")                         \
	X(tls_handshake_failures, "consentd_tls_handshake_failures_total",     \
	  "TLS handshakes refused (bad ClientHello, no shared version or "     \
	  "cipher, missing or bad client certificate); closed.")               \
	X(tls_handshake_timeouts, "consentd_tls_handshake_timeouts_total",     \
	  "TLS handshakes unfinished after --partial-timeout-ms; closed.")     \
	X(tls_not_tls, "consentd_tls_not_tls_total",                           \
	  "Connections to a TLS port that did not open with a TLS record "     \
	  "(plaintext clients); closed.")                                      \
	X(tls_record_errors, "consentd_tls_record_errors_total",               \
	  "Established TLS connections closed for a bad record.")

enum metrics_proto {
	METRICS_RPC,  /* protobuf RPC */
	METRICS_RESP, /* Redis protocol */
	METRICS_HTTP, /* JSON on the ops port */
	METRICS_POLICY, /* Postfix policy delegation */
	METRICS_GRPC,   /* gRPC (HTTP/2) */
	METRICS_PROTO_COUNT,
};

/* Upper bounds (microseconds) of the latency histogram's buckets; the last
 * bucket is +Inf. Latency = from a request's bytes arriving to its reply
 * being queued. */
#define METRICS_LATENCY_BOUNDS_US \
	{ 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000 }
#define METRICS_LATENCY_BUCKETS 14

struct metrics {
#define METRICS_FIELD(name, prom, help) _Atomic uint64_t name;
	METRICS_COUNTERS(METRICS_FIELD)
#undef METRICS_FIELD
	_Atomic uint64_t connections_open; /* gauge: accepted - closed */
	_Atomic uint64_t last_turn_ms;     /* worker: CLOCK_MONOTONIC ms of its
					    * latest loop turn (/healthz) */
	_Atomic uint64_t checks[METRICS_PROTO_COUNT][REASON_COUNT];
	_Atomic uint64_t latency[METRICS_PROTO_COUNT][METRICS_LATENCY_BUCKETS];
	_Atomic uint64_t latency_sum_us[METRICS_PROTO_COUNT];
	char pad[64]; /* keep the next worker's slot off this cache line */
};

static inline void metrics_add(_Atomic uint64_t *c, uint64_t n)
{
	/* Single writer: no read-modify-write needed; relaxed, as no reader
	 * infers anything from the order of counter updates. */
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

static inline void metrics_inc(_Atomic uint64_t *c)
{
	metrics_add(c, 1);
}

/* Allocates n_slots zeroed slots (workers, then one for HTTP). Start-up
 * only. */
int metrics_init(unsigned n_slots);
struct metrics *metrics_slot(unsigned i);
unsigned metrics_n_slots(void);

/* Records one check's reason and one request's latency. */
void metrics_record_check(struct metrics *m, enum metrics_proto proto, int reason);
void metrics_record_latency(struct metrics *m, enum metrics_proto proto,
			    uint64_t latency_us);
/* n requests that each took latency_us (one receive's worth). */
void metrics_record_latency_n(struct metrics *m, enum metrics_proto proto,
			      uint64_t latency_us, uint64_t n);

/* Sums every slot into *out (any thread). out->last_turn_ms is not a sum:
 * it is the oldest last_turn_ms among the slots that run a loop (nonzero),
 * i.e. the stalest worker's; 0 if none has turned yet. */
void metrics_sum(struct metrics *out);

/* A worker whose loop has not turned for longer than this is stalled:
 * /healthz answers 503 and the systemd watchdog is not pinged. */
#define METRICS_STALL_MS 2000

/* The first of the workers' slots 0..n_workers-1 (main.c puts the workers
 * first) whose loop has not turned for over METRICS_STALL_MS at now_ms,
 * with its silence in *silent_ms; -1 if none is stalled. A worker that has
 * not turned yet counts its silence from since_ms (the caller's start), as
 * its first turn may still be under way. Times are CLOCK_MONOTONIC ms.
 * Any thread. The one judgement of /healthz and the watchdog. */
int metrics_stalled_worker(unsigned n_workers, uint64_t now_ms,
			   uint64_t since_ms, uint64_t *silent_ms);

/* Checks answered, every protocol and reason, in one slot or a sum. */
uint64_t metrics_checks_total(const struct metrics *m);

#endif
