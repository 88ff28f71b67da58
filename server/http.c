/*
 * http: the ops port. libmicrohttpd runs in its "external" epoll mode on a
 * thread of ours rather than on a thread of its own, for one reason: this
 * thread is a liburcu QSBR reader, and a reader must register before its
 * first read side and unregister before it exits. On our own thread both
 * are plain calls at its start and end; on MHD's internal thread there is
 * no hook for the second.
 *
 * The thread stays RCU-offline except around the few lines that use the
 * served index (http_checks, http_index_info): there it copies out what it
 * needs (verdicts, whose error strings are static, and the index's header
 * fields) and goes offline again before it encodes or sends anything, so a
 * slow client or a large JSON body never holds up a generation swap.
 *
 * Decisions (DESIGN §3.4 leaves them open):
 * - A request the port cannot read (bad JSON, unknown field or parameter,
 *   unknown enum name, wrong types, too many checks) is a 400 with
 *   {"error":...}; a check the port can read but the decision table calls
 *   malformed (a recipient that does not normalise, brand 0, no channel)
 *   is a 200 whose verdict says INVALID_REQUEST with an "error", as the
 *   RPC and RESP ports answer it. A body over 1 MiB is a 413.
 * - In a query string '+' means a space (form encoding), so a phone sent
 *   as ?recipient=+90532... arrives as " 90532..."; normalisation strips
 *   spaces and "905321234567" is a Turkish number, so it still answers
 *   right, but callers should send %2B.
 * - Before the first generation is published, /v1/check answers 503 and
 *   /v1/stats reports zeros for the index's fields; /metrics leaves the
 *   index's gauges out and says consentd_ready 0.
 */
#include "server/http.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <urcu-qsbr.h>

#include "index/check.h"
#include "core/enums.h"
#include "core/hex.h"
#include "core/tokens.h"
#include "index/table.h"
#include "server/addr.h"
#include "server/config.h"
#include "server/evidence.h"
#include "server/json.h"
#include "server/live.h"
#include "server/reject.h"
#include "index/outbox.h"
#include "server/replica.h"
#include "index/origins.h"
#include "server/metrics.h"
#include "server/snapshot.h"
#include "server/writer.h"
#include "version.h"

#define HTTP_MAX_CONNECTIONS 256
/* MHD closes a connection idle this long. Short: an idle or stalled
 * client holds one of few slots, and bytes MHD reads as blank lines (a
 * stream of NULs, say) only ever end this way. */
#define HTTP_CONN_TIMEOUT_S 3
/* MHD's timeout is an idle one, reset by every byte: a client dribbling
 * a byte a second would keep its slot for ever. So each request also
 * gets deadlines of ours: from the connection's start (or its previous
 * reply) to its whole header, and from there to its reply sent (a body
 * read included). A connection past one is shut down. */
#define HTTP_HEADER_MS 2000
#define HTTP_REPLY_MS 10000 /* JSON_MAX_BODY_BYTES at 100 KB/s */
/* Room for a burst of fresh clients while the slots turn over (the
 * kernel caps it at net.core.somaxconn). */
#define HTTP_BACKLOG 1024
#define HTTP_TURN_MS 1000        /* longest wait between two loop turns */
/* GET /v1/snapshot: at most this many at once (each a producer thread
 * walking the index); a client that takes nothing this long is cut. */
#define HTTP_SNAPSHOTS_MAX 4
#define HTTP_SNAPSHOT_IDLE_MS 60000
#define HTTP_SNAPSHOT_BLOCK (64u << 10)

/* A connection of the ops port, from MHD's STARTED notification to its
 * CLOSED one. MHD calls back on our thread, inside MHD_run, or (stopping)
 * on http_stop's once ours has ended: never two threads at once. */
struct http_conn {
	struct http_conn *prev, *next;
	int fd;
	uint64_t deadline_ms; /* CLOCK_MONOTONIC */
	bool cut;             /* shut down: MHD sees the end and closes it */
};

/* A GET /v1/snapshot response: MHD pulls the producer's pipe
 * (server/snapshot.h) through http_snap_read. When the pipe is empty the
 * connection is suspended (MHD would otherwise call again at once) and
 * the pipe's read end joins our poll; readable, it is resumed. */
struct http_snap {
	struct http_snap *prev, *next;
	struct http *h;
	struct snapshot_job *job;
	struct MHD_Connection *conn;
	struct http_conn *c;  /* its deadline */
	bool suspended;
};

struct http {
	const struct server_config *cfg;
	struct metrics *m;      /* our slot: this thread is its only writer */
	unsigned slot;
	struct MHD_Daemon *daemon;
	int epoll_fd;           /* MHD's, polled by our thread */
	int stop_fd;            /* eventfd: http_stop wakes the thread */
	pthread_t thread;
	uint16_t port;
	char bound[ADDR_TEXT_MAX]; /* "HOST:PORT" as bound */
	uint64_t start_ms;      /* CLOCK_MONOTONIC at http_start */
	int64_t started_at;     /* Unix time at http_start */
	struct http_conn conns; /* list head: every open connection */
	uint64_t reject_tag;    /* the last local rejection's, for its reply */
	struct http_snap snaps; /* list head: every snapshot response */
	unsigned n_snaps;
};

enum http_route {
	ROUTE_NONE,    /* 404 */
	ROUTE_HEALTHZ,
	ROUTE_READYZ,
	ROUTE_METRICS,
	ROUTE_CHECK,   /* GET and POST */
	ROUTE_STATS,
	ROUTE_REJECT,  /* POST: a local rejection (§11) */
	ROUTE_OUTBOX,  /* GET: the outbox for the connector (§12) */
	ROUTE_OUTBOX_PUSHED, /* POST: an entry pushed to İYS */
	ROUTE_SNAPSHOT, /* GET */
	ROUTE_HISTORY,  /* GET: a key's evidence (§10) */
};

/* A POST between its headers and the end of its body. */
struct http_req {
	enum http_route route;
	uint64_t start_us;
	const struct principal *principal;
	char *body;
	size_t len;
	size_t cap;
	bool too_large; /* went past JSON_MAX_BODY_BYTES: the rest is dropped */
};

static const char *const http_proto_names[METRICS_PROTO_COUNT] = {
	[METRICS_RPC] = "rpc",
	[METRICS_RESP] = "resp",
	[METRICS_HTTP] = "http",
	[METRICS_POLICY] = "policy",
	[METRICS_GRPC] = "grpc",
};

static uint64_t http_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int64_t http_wall_s(void)
{
	return (int64_t)time(NULL);
}

/* ---- replies ---- */

/* Queues body (malloc'd; MHD frees it) and owns it in every case. */
static enum MHD_Result http_reply(struct MHD_Connection *conn,
				  unsigned status, const char *type, char *body,
				  size_t len, const char *hdr, const char *hdr_val)
{
	static const char oom[] = "{\"error\":\"out of memory\"}";
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (body)
		resp = MHD_create_response_from_buffer(len, body,
						       MHD_RESPMEM_MUST_FREE);
	else
		resp = MHD_create_response_from_buffer(sizeof(oom) - 1,
						       (void *)oom,
						       MHD_RESPMEM_PERSISTENT);
	if (!resp) {
		free(body);
		return MHD_NO; /* MHD closes the connection */
	}
	if (!body) {
		status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		type = "application/json";
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (hdr)
		MHD_add_response_header(resp, hdr, hdr_val);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result http_reply_json(struct MHD_Connection *conn,
				       unsigned status, char *json)
{
	return http_reply(conn, status, "application/json", json,
			  json ? strlen(json) : 0, NULL, NULL);
}

static enum MHD_Result http_reply_text(struct MHD_Connection *conn,
				       unsigned status, const char *text)
{
	char *s = strdup(text);

	return http_reply(conn, status, "text/plain; charset=utf-8", s,
			  s ? strlen(s) : 0, NULL, NULL);
}

/* {"error":...}; a 400 is counted as a bad request. */
static enum MHD_Result http_reply_error(struct http *h,
					struct MHD_Connection *conn,
					unsigned status, const char *hdr,
					const char *hdr_val, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static enum MHD_Result http_reply_error(struct http *h,
					struct MHD_Connection *conn,
					unsigned status, const char *hdr,
					const char *hdr_val, const char *fmt, ...)
{
	char msg[256];
	char *json;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (status == MHD_HTTP_BAD_REQUEST)
		metrics_inc(&h->m->http_bad_requests);
	json = json_encode_error(msg);
	return http_reply(conn, status, "application/json", json,
			  json ? strlen(json) : 0, hdr, hdr_val);
}

/* ---- the index, inside a read side ---- */

/*
 * Decides in[0..n) into out. Returns false, deciding nothing, when no
 * generation is published yet. The read side: live_online() makes
 * this thread a reader that live_publish's grace period waits for;
 * live_offline() ends it, after which neither ix nor anything in it
 * is touched (verdict error strings are static, info is a copy).
 */
static bool http_checks(struct http *h, const struct principal *p,
			const struct check_input *in, size_t n,
			struct verdict *out, struct check_evidence *ev,
			struct index_info *info)
{
	const struct index *ix;
	bool have;

	live_online();
	ix = live_index();
	have = ix != NULL;
	if (have) {
		struct check_env env = {
			.index = ix,
			.policy = &h->cfg->policy,
			.principal = p,
			.stale = live_stale(ix, http_wall_s(),
					    h->cfg->stale_hard_s),
			.history = h->cfg->history,
			.evidence = ev,
		};

		index_info(ix, info);
		check_batch(&env, in, n, out);
	}
	live_offline();
	return have;
}

/* The served generation's header fields and its soft freshness; false if
 * there is none. Same read side as http_checks. */
static bool http_index_info(struct http *h, struct index_info *info,
			    bool *soft_stale)
{
	const struct index *ix;
	bool have;

	live_online();
	ix = live_index();
	have = ix != NULL;
	if (have) {
		index_info(ix, info);
		*soft_stale = live_stale(ix, http_wall_s(), h->cfg->stale_soft_s);
	}
	live_offline();
	if (!have)
		memset(info, 0, sizeof(*info));
	return have;
}

static void http_count_checks(struct http *h, const struct verdict *v,
			      size_t n, uint64_t start_us)
{
	for (size_t i = 0; i < n; i++)
		metrics_record_check(h->m, METRICS_HTTP, v[i].reason);
	metrics_record_latency(h->m, METRICS_HTTP, http_mono_us() - start_us);
}

/* ---- endpoints ---- */

static enum MHD_Result http_healthz(struct http *h, struct MHD_Connection *conn)
{
	uint64_t now_ms = http_mono_us() / 1000u, silent_ms;
	char msg[128];
	int w;

	/* The slots before ours are the workers' (main.c's layout: workers,
	 * then this thread, whose answering at all shows it turns, then the
	 * single writer, which is no loop and may be busy for seconds with a
	 * generation). */
	w = metrics_stalled_worker(h->slot, now_ms, h->start_ms, &silent_ms);
	if (w >= 0) {
		snprintf(msg, sizeof(msg),
			 "worker %d: no loop turn for %" PRIu64 " ms\n", w,
			 silent_ms);
		return http_reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
	}
	return http_reply_text(conn, MHD_HTTP_OK, "ok\n");
}

static enum MHD_Result http_readyz(struct http *h, struct MHD_Connection *conn)
{
	struct index_info info;
	bool stale = false;
	char msg[300], why[240];

	if (!http_index_info(h, &info, &stale))
		return http_reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				       "no index loaded\n");
	/* The change log failed: the state served is frozen (writer.h). */
	if (writer_fault(h->cfg->writer, why, sizeof(why))) {
		snprintf(msg, sizeof(msg), "changes refused: %s\n", why);
		return http_reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
	}
	/* Replicated: too far behind the stream, or cut off from it for
	 * longer than --max-lag (server/replica.h). */
	if (!replica_ready(h->cfg->replica, why, sizeof(why))) {
		snprintf(msg, sizeof(msg), "replication: %s\n", why);
		return http_reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
	}
	if (stale) {
		snprintf(msg, sizeof(msg),
			 "data stale: %" PRId64 " s old, soft bound %" PRId64 " s\n",
			 http_wall_s() - info.data_as_of, h->cfg->stale_soft_s);
		return http_reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
	}
	return http_reply_text(conn, MHD_HTTP_OK, "ready\n");
}

/* 1 -> "0.000001", 10000 -> "0.01": Prometheus "le" labels in seconds. */
static void http_us_to_s(char *buf, size_t cap, uint64_t us)
{
	size_t n;

	n = (size_t)snprintf(buf, cap, "%" PRIu64 ".%06" PRIu64,
			     us / 1000000u, us % 1000000u);
	while (n > 0 && buf[n - 1] == '0')
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '.')
		buf[--n] = '\0';
}

static void http_gauge(FILE *f, const char *name, const char *help,
		       const char *fmt_value, ...)
	__attribute__((format(printf, 4, 5)));
static void http_gauge(FILE *f, const char *name, const char *help,
		       const char *fmt_value, ...)
{
	va_list ap;

	fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s ", name, help, name, name);
	va_start(ap, fmt_value);
	vfprintf(f, fmt_value, ap);
	va_end(ap);
	fputc('\n', f);
}

#define HTTP_LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* A histogram of REPLICA_PUBACK_BOUNDS_US buckets. */
static void http_replica_hist(FILE *f, const char *name, const char *help,
			      const uint64_t *buckets, uint64_t sum_us)
{
	static const uint64_t bounds[] = REPLICA_PUBACK_BOUNDS_US;
	_Static_assert(sizeof(bounds) / sizeof(bounds[0]) + 1 ==
		       REPLICA_PUBACK_BUCKETS, "buckets = bounds + Inf");
	char le[32];
	uint64_t cum = 0;

	fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int b = 0; b < REPLICA_PUBACK_BUCKETS; b++) {
		cum += buckets[b];
		if (b + 1 < REPLICA_PUBACK_BUCKETS)
			http_us_to_s(le, sizeof(le), bounds[b]);
		else
			strcpy(le, "+Inf");
		fprintf(f, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, le, cum);
	}
	fprintf(f, "%s_sum %" PRIu64 ".%06" PRIu64 "\n%s_count %" PRIu64 "\n",
		name, sum_us / 1000000u, sum_us % 1000000u, name, cum);
}

/* Replicated mode's figures (DESIGN §9). */
static void http_replica_metrics(FILE *f, struct replica *r)
{
	struct replica_stats st;

	replica_stats(r, &st);
	http_gauge(f, "consentd_nats_connected",
		   "1 while the NATS connection is up.", "%d", st.connected);
	http_gauge(f, "consentd_nats_stream_reachable",
		   "1 when the last query of the stream was answered.", "%d",
		   st.stream_reachable);
	http_gauge(f, "consentd_nats_unreachable_seconds",
		   "How long the stream has not answered (0: it answers).",
		   "%.3f", (double)st.unreachable_ms / 1000.0);
	http_gauge(f, "consentd_replication_stream_last_sequence",
		   "The stream's last sequence, as last asked.", "%" PRIu64,
		   st.stream_last_seq);
	http_gauge(f, "consentd_replication_applied_sequence",
		   "The last stream sequence processed here.", "%" PRIu64,
		   st.applied_seq);
	http_gauge(f, "consentd_replication_lag_messages",
		   "Stream messages not processed here yet.", "%" PRIu64,
		   st.lag_messages);
	http_gauge(f, "consentd_replication_lag_seconds",
		   "Publish-time span of the stream not processed here yet.",
		   "%.3f", st.lag_seconds);
	http_gauge(f, "consentd_nats_consumer_pending",
		   "The consumer's messages not delivered yet (NumPending).",
		   "%" PRIu64, st.consumer_pending);
	http_gauge(f, "consentd_nats_consumer_ack_floor",
		   "The consumer's ack floor (stream sequence).", "%" PRIu64,
		   st.consumer_ack_floor);
	fprintf(f, "# HELP consentd_replication_messages_total Stream messages "
		"handed to the writer.\n# TYPE consentd_replication_messages_total "
		"counter\nconsentd_replication_messages_total %" PRIu64 "\n"
		"# HELP consentd_replication_repositions_total Times the consumer "
		"was made again at the next sequence expected.\n"
		"# TYPE consentd_replication_repositions_total counter\n"
		"consentd_replication_repositions_total %" PRIu64 "\n"
		"# HELP consentd_nats_publish_failures_total Applies answered 503: "
		"no PubAck in time.\n# TYPE consentd_nats_publish_failures_total "
		"counter\nconsentd_nats_publish_failures_total %" PRIu64 "\n",
		st.messages_fetched, st.repositions, st.publish_failures);
	http_replica_hist(f, "consentd_nats_puback_latency_seconds",
			  "Time from publishing an Apply to its PubAck.",
			  st.puback_buckets, st.puback_sum_us);
	http_replica_hist(f, "consentd_replication_visible_latency_seconds",
			  "Time from a message's publish (the stream's "
			  "timestamp) to its being applied here.",
			  st.visible_buckets, st.visible_sum_us);
}

/* Prometheus text exposition format 0.0.4. */
static char *http_metrics_text(struct http *h, size_t *len)
{
	static const uint64_t bounds[] = METRICS_LATENCY_BOUNDS_US;
	_Static_assert(sizeof(bounds) / sizeof(bounds[0]) + 1 ==
		       METRICS_LATENCY_BUCKETS, "buckets = bounds + Inf");
	struct metrics *sum;
	struct index_info info;
	bool stale = false, have;
	char *buf = NULL;
	size_t size = 0;
	FILE *f;

	sum = calloc(1, sizeof(*sum));
	if (!sum)
		return NULL;
	metrics_sum(sum);
	have = http_index_info(h, &info, &stale);
	f = open_memstream(&buf, &size);
	if (!f) {
		free(sum);
		return NULL;
	}

#define HTTP_COUNTER(name, prom, help)                                       \
	fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", prom, \
		help, prom, prom, (uint64_t)HTTP_LOAD(sum->name));
	METRICS_COUNTERS(HTTP_COUNTER)
#undef HTTP_COUNTER

	fputs("# HELP consentd_checks_total Checks answered, by protocol and "
	      "reason.\n# TYPE consentd_checks_total counter\n", f);
	for (int p = 0; p < METRICS_PROTO_COUNT; p++)
		for (int r = 1; r < REASON_COUNT; r++)
			fprintf(f,
				"consentd_checks_total{protocol=\"%s\",reason=\"%s\"} %" PRIu64 "\n",
				http_proto_names[p], enums_reason_name(r),
				(uint64_t)HTTP_LOAD(sum->checks[p][r]));

	fputs("# HELP consentd_request_latency_seconds Time from a request's "
	      "bytes arriving to its reply being queued.\n"
	      "# TYPE consentd_request_latency_seconds histogram\n", f);
	for (int p = 0; p < METRICS_PROTO_COUNT; p++) {
		uint64_t cum = 0;
		uint64_t sum_us = HTTP_LOAD(sum->latency_sum_us[p]);
		char le[32];

		for (int b = 0; b < METRICS_LATENCY_BUCKETS; b++) {
			cum += HTTP_LOAD(sum->latency[p][b]);
			if (b + 1 < METRICS_LATENCY_BUCKETS)
				http_us_to_s(le, sizeof(le), bounds[b]);
			else
				strcpy(le, "+Inf");
			fprintf(f,
				"consentd_request_latency_seconds_bucket{protocol=\"%s\",le=\"%s\"} %" PRIu64 "\n",
				http_proto_names[p], le, cum);
		}
		fprintf(f,
			"consentd_request_latency_seconds_sum{protocol=\"%s\"} %" PRIu64 ".%06" PRIu64 "\n"
			"consentd_request_latency_seconds_count{protocol=\"%s\"} %" PRIu64 "\n",
			http_proto_names[p], sum_us / 1000000u, sum_us % 1000000u,
			http_proto_names[p], cum);
	}

	fprintf(f, "# HELP consentd_build_info The running build (always 1).\n"
		"# TYPE consentd_build_info gauge\n"
		"consentd_build_info{version=\"%s\",commit=\"%s\"} 1\n",
		CONSENTD_VERSION, CONSENTD_COMMIT);
	http_gauge(f, "consentd_start_time_seconds",
		   "Unix time the server started.", "%" PRId64, h->started_at);
	http_gauge(f, "consentd_connections_open", "Client connections open.",
		   "%" PRIu64, (uint64_t)HTTP_LOAD(sum->connections_open));
	if (have) {
		int64_t now = http_wall_s();

		http_gauge(f, "consentd_records",
			   "Records in the served generation.", "%" PRIu64,
			   info.n_records);
		http_gauge(f, "consentd_index_capacity",
			   "Records the served generation holds before its load limit.",
			   "%" PRIu64, info.capacity);
		http_gauge(f, "consentd_index_bytes",
			   "Memory of the served generation's table.", "%" PRIu64,
			   info.bytes);
		http_gauge(f, "consentd_generation",
			   "The served index generation.", "%" PRIu64,
			   info.generation);
		http_gauge(f, "consentd_applied_sequence",
			   "Change-stream sequence the served data is consistent with.",
			   "%" PRIu64, info.watermark);
		http_gauge(f, "consentd_data_as_of_timestamp_seconds",
			   "Unix time of the newest applied change or heartbeat.",
			   "%" PRId64, info.data_as_of);
		http_gauge(f, "consentd_data_age_seconds",
			   "Seconds since consentd_data_as_of_timestamp_seconds.",
			   "%" PRId64,
			   now - info.data_as_of);
	}
	http_gauge(f, "consentd_stale_soft_seconds",
		   "Data age past which readiness turns false (0: off).",
		   "%" PRId64, h->cfg->stale_soft_s);
	http_gauge(f, "consentd_stale_hard_seconds",
		   "Data age past which allows become DATA_STALE (0: off).",
		   "%" PRId64, h->cfg->stale_hard_s);
	http_gauge(f, "consentd_ready",
		   "1 when an index is loaded and fresh (as /readyz).", "%d",
		   have && !stale && !writer_fault(h->cfg->writer, NULL, 0) &&
		   replica_ready(h->cfg->replica, NULL, 0));
	if (h->cfg->writer != NULL) {
		uint64_t depth;
		int64_t oldest;

		outbox_stats(writer_outbox(h->cfg->writer), &depth, &oldest);
		http_gauge(f, "consentd_outbox_depth",
			   "Local rejections not yet reconciled with IYS.",
			   "%" PRIu64, depth);
		http_gauge(f, "consentd_outbox_oldest_age_seconds",
			   "Seconds since the consent date of the oldest "
			   "entry of the outbox (0: empty).", "%" PRId64,
			   oldest ? http_wall_s() - oldest : 0);
	}
	{
		uint64_t cseq;
		uint8_t head[32];
		if (writer_chain(h->cfg->writer, &cseq, head)) {
			http_gauge(f, "consentd_chain_sequence",
				   "Sequence of the newest record of the "
				   "evidence chain (DESIGN 10).", "%" PRIu64,
				   cseq);
			/* A hash is no number: a label of an info metric
			 * (always 1), as consentd_build_info's version. */
			char hex[2 * sizeof(head) + 1];
			hex_put(hex, head, sizeof(head));
			fprintf(f, "# HELP consentd_chain_head_info The evidence "
				"chain's head (DESIGN 10; always 1).\n"
				"# TYPE consentd_chain_head_info gauge\n"
				"consentd_chain_head_info{sequence=\"%" PRIu64
				"\",hash=\"%s\"} 1\n", cseq, hex);
		}
	}
	if (h->cfg->replica != NULL)
		http_replica_metrics(f, h->cfg->replica);
	free(sum);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*len = size;
	return buf;
}

static enum MHD_Result http_metrics(struct http *h, struct MHD_Connection *conn)
{
	size_t len = 0;
	char *text = http_metrics_text(h, &len);

	return http_reply(conn, MHD_HTTP_OK,
			  "text/plain; version=0.0.4; charset=utf-8", text, len,
			  NULL, NULL);
}

/* GET /v1/stats. Without the 'stats' right (core/tokens.h): no records or
 * generation, and checks_total is the principal's own. */
static enum MHD_Result http_stats(struct http *h, struct MHD_Connection *conn,
				  const struct principal *p)
{
	struct json_stats st = { 0 };
	struct index_info info;
	struct metrics *sum;
	bool stale;

	st.own_only = !principal_may_stats(p);
	if (st.own_only) {
		st.checks_total = principal_checks(p);
	} else {
		sum = calloc(1, sizeof(*sum));
		if (!sum)
			return http_reply_json(
				conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
		metrics_sum(sum);
		st.checks_total = metrics_checks_total(sum);
		free(sum);
	}
	/* §8: an origin's cursor, to a principal that may apply or has the
	 * stats right (as the RPC's Stats); "" for an unknown origin. An
	 * origin that cannot be one is a 400 naming it. */
	char cursor[ORIGINS_CURSOR_MAX + 1] = "";
	const char *origin = MHD_lookup_connection_value(
		conn, MHD_GET_ARGUMENT_KIND, "origin");
	if (origin != NULL) {
		const char *why;
		if (origins_check_text(origin, strlen(origin), ORIGINS_NAME_MAX,
				       0, &why) < 0)
			return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST,
						NULL, NULL, "origin: %s", why);
		if (h->cfg->writer != NULL &&
		    (p == NULL || p->may_apply || !st.own_only)) {
			writer_origin_cursor(h->cfg->writer, origin,
					     strlen(origin), cursor,
					     sizeof(cursor));
			st.origin_cursor = cursor;
		}
	}
	st.chain = writer_chain(h->cfg->writer, &st.chain_sequence,
				st.chain_head);
	st.chain_hash = st.chain_head;
	http_index_info(h, &info, &stale);
	st.records = info.n_records;
	st.applied_sequence = info.watermark;
	st.data_as_of = info.data_as_of;
	st.generation = info.generation;
	if (h->cfg->writer != NULL) {
		int64_t oldest;

		st.outbox = true;
		outbox_stats(writer_outbox(h->cfg->writer), &st.outbox_depth,
			     &oldest);
		st.outbox_oldest_age_s = oldest ? http_wall_s() - oldest : 0;
	}
	return http_reply_json(conn, MHD_HTTP_OK, json_encode_stats(&st));
}

/* GET /v1/check: one check from the query string. */
struct http_query {
	/* json_check_param (/v1/check) or json_history_param (/v1/history) */
	int (*param)(struct check_input *c, const char *key, size_t key_len,
		     const char *val, size_t val_len, char *err, size_t err_cap);
	struct check_input in;
	unsigned seen;  /* param's field bits */
	int error;
	char err[192];
};

static enum MHD_Result http_query_arg(void *cls, enum MHD_ValueKind kind,
				      const char *key, size_t key_len,
				      const char *val, size_t val_len)
{
	struct http_query *q = cls;
	int bit;

	(void)kind;
	if (!val) { /* "?recipient" with no '=' */
		val = "";
		val_len = 0;
	}
	bit = q->param(&q->in, key, key_len, val, val_len, q->err,
		       sizeof(q->err));
	if (bit < 0) {
		q->error = bit;
		return MHD_NO;
	}
	if (q->seen & (unsigned)bit) {
		snprintf(q->err, sizeof(q->err), "parameter %.*s given twice",
			 (int)(key_len < 40 ? key_len : 40), key);
		q->error = -EINVAL;
		return MHD_NO;
	}
	q->seen |= (unsigned)bit;
	return MHD_YES;
}

static enum MHD_Result http_get_check(struct http *h,
				      struct MHD_Connection *conn,
				      const struct principal *p)
{
	uint64_t start_us = http_mono_us();
	struct http_query q = { .param = json_check_param,
				.in = { .recipient = "" } };
	struct index_info info;
	struct verdict v;
	struct check_evidence ev; /* an as-of verdict's strings */

	MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, http_query_arg,
				    &q);
	if (q.error)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "%s", q.err);
	if (!http_checks(h, p, &q.in, 1, &v, &ev, &info))
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					NULL, NULL, "no index loaded yet");
	http_count_checks(h, &v, 1, start_us);
	return http_reply_json(conn, MHD_HTTP_OK, json_encode_verdict(&v));
}

/* GET /v1/history?recipient=&brand_code=&channel=&recipient_type= (§10,
 * server/evidence.h): the key's records, oldest first, the newest 1000 at
 * most ("total" and "truncated" say when there are more). The same
 * rights as a check of that brand; disk reads, on this thread. */
static enum MHD_Result http_history(struct http *h, struct MHD_Connection *conn,
				    const struct principal *p)
{
	struct http_query q = { .param = json_history_param,
				.in = { .recipient = "" } };
	struct evidence_answer a;
	struct index_info info;
	bool stale;
	char msg[400];

	MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, http_query_arg,
				    &q);
	if (q.error)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "%s", q.err);
	struct evidence_query eq = {
		.recipient = q.in.recipient,
		.recipient_len = q.in.recipient_len,
		.brand_code = q.in.brand_code,
		.channel = q.in.channel,
		.rtype = q.in.rtype,
	};
	int code = evidence_query(h->cfg->history, p, &eq, &a, msg,
				  sizeof(msg));
	if (code != 0)
		return http_reply_error(h, conn, (unsigned)code, NULL, NULL,
					"%s", msg);
	if (!http_index_info(h, &info, &stale))
		info.watermark = 0;
	char *out = json_encode_history(a.entries, a.n, a.total,
					info.watermark);
	evidence_answer_fini(&a);
	return http_reply_json(conn, MHD_HTTP_OK, out);
}

/* POST /v1/check, once the whole body is in. */
static enum MHD_Result http_post_check(struct http *h,
				       struct MHD_Connection *conn,
				       struct http_req *r)
{
	struct json_check_request req;
	struct index_info info;
	struct verdict *v;
	char err[256];
	char *out;
	int e;

	if (r->too_large)
		return http_reply_error(h, conn, MHD_HTTP_CONTENT_TOO_LARGE,
					NULL, NULL,
					"body: over the limit of %u bytes",
					JSON_MAX_BODY_BYTES);
	e = json_decode_check_request(r->body ? r->body : "", r->len,
				      JSON_MAX_CHECKS, &req, err, sizeof(err));
	if (e == -ENOMEM)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	if (e < 0)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "%s", err);
	v = calloc(req.n_checks ? req.n_checks : 1, sizeof(*v));
	/* Room for as-of verdicts' strings only when one asks for it. */
	struct check_evidence *ev = NULL;
	for (size_t i = 0; i < req.n_checks && ev == NULL && v != NULL; i++)
		if ((req.checks[i].as_of_time |
		     (int64_t)req.checks[i].as_of_sequence) != 0 &&
		    (ev = calloc(req.n_checks, sizeof(*ev))) == NULL) {
			free(v);
			v = NULL;
		}
	if (!v) {
		json_check_request_fini(&req);
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	}
	if (!http_checks(h, r->principal, req.checks, req.n_checks, v, ev,
			 &info)) {
		free(ev);
		free(v);
		json_check_request_fini(&req);
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					NULL, NULL, "no index loaded yet");
	}
	http_count_checks(h, v, req.n_checks, r->start_us);
	out = json_encode_check_response(v, req.n_checks, info.watermark,
					 info.data_as_of);
	free(ev);
	free(v);
	json_check_request_fini(&req);
	return http_reply_json(conn, MHD_HTTP_OK, out);
}

/* Appends a piece of a POST body; past the limit the body is dropped and
 * the rest of the upload is read and discarded, so the 413 can be sent. */
static void http_body_append(struct http_req *r, const char *data, size_t n)
{
	if (r->too_large)
		return;
	if (n > JSON_MAX_BODY_BYTES - r->len) {
		r->too_large = true;
		free(r->body);
		r->body = NULL;
		r->len = r->cap = 0;
		return;
	}
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		char *b;

		while (cap < r->len + n)
			cap *= 2;
		if (cap > JSON_MAX_BODY_BYTES)
			cap = JSON_MAX_BODY_BYTES;
		b = realloc(r->body, cap);
		if (!b) {
			/* Out of memory: answered like an oversized body,
			 * which it is, for what memory there is. */
			r->too_large = true;
			free(r->body);
			r->body = NULL;
			r->len = r->cap = 0;
			return;
		}
		r->body = b;
		r->cap = cap;
	}
	memcpy(r->body + r->len, data, n);
	r->len += n;
}

/* ---- local rejections and the outbox (§11, §12) ---- */

/* The ops thread's queue of the writer: main opens the writer with one
 * completion queue per worker and this thread's after them. */
static unsigned http_writer_queue(const struct http *h)
{
	return h->cfg->workers;
}

struct http_wait {
	uint64_t tag;
	bool got;
	struct writer_reply *out;
};

static void http_on_reply(const struct writer_reply *r, void *arg)
{
	struct http_wait *wt = arg;

	if (r->tag == wt->tag) {
		*wt->out = *r;
		wt->got = true;
	}
}

/* Waits for the writer's reply of tag. The ops thread blocks meanwhile
 * (one group commit: an fdatasync; longer while the writer writes a
 * generation): a local rejection through HTTP is rare, and its reply
 * must not come before the index holds it. */
static void http_wait_reply(struct http *h, uint64_t tag,
			    struct writer_reply *out)
{
	struct writer *w = h->cfg->writer;
	unsigned q = http_writer_queue(h);
	struct http_wait wt = { .tag = tag, .out = out };
	int fd = writer_queue_fd(w, q);

	while (!wt.got) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t v;

		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		if (read(fd, &v, sizeof(v)) < 0 && errno != EINTR &&
		    errno != EAGAIN)
			break;
		writer_take(w, q, http_on_reply, &wt);
	}
	if (!wt.got) {
		memset(out, 0, sizeof(*out));
		out->code = 503;
		snprintf(out->message, sizeof(out->message), "waiting for the "
			 "writer: %s", strerror(errno));
	}
}

static unsigned http_status_of(uint32_t code)
{
	switch (code) {
	case 400:
		return MHD_HTTP_BAD_REQUEST;
	case 403:
		return MHD_HTTP_FORBIDDEN;
	case 409:
		return MHD_HTTP_CONFLICT;
	default:
		return MHD_HTTP_SERVICE_UNAVAILABLE;
	}
}

/* POST /v1/reject, once the whole body is in. */
static enum MHD_Result http_post_reject(struct http *h,
					struct MHD_Connection *conn,
					struct http_req *r)
{
	struct json_reject jr;
	struct writer_reply rep;
	char err[256];
	int e;

	if (r->too_large)
		return http_reply_error(h, conn, MHD_HTTP_CONTENT_TOO_LARGE,
					NULL, NULL,
					"body: over the limit of %u bytes",
					JSON_MAX_BODY_BYTES);
	e = json_decode_reject(r->body ? r->body : "", r->len, &jr, err,
			       sizeof(err));
	if (e == -ENOMEM)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	if (e < 0)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "%s", err);
	struct reject_input in = {
		.recipient = jr.recipient,
		.recipient_len = jr.recipient_len,
		.brand_code = jr.brand_code,
		.channel = jr.channel,
		.recipient_type = jr.recipient_type,
		.source = jr.source,
	};
	if (writer_queue_fd(h->cfg->writer, http_writer_queue(h)) < 0) {
		json_reject_fini(&jr);
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					NULL, NULL, "the ops port has no writer "
					"queue of its own");
	}
	uint64_t tag = ++h->reject_tag;
	e = reject_submit(h->cfg->writer, http_writer_queue(h), tag, 0,
			  r->principal, &in, &rep);
	json_reject_fini(&jr);
	if (e < 0)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	if (e == 1)
		http_wait_reply(h, tag, &rep);
	if (rep.code != 0)
		return http_reply_error(h, conn, http_status_of(rep.code), NULL,
					NULL, "%s", rep.message);
	return http_reply_json(conn, MHD_HTTP_OK,
			       json_encode_apply(rep.applied_sequence,
						 rep.applied, rep.skipped));
}

/* The outbox holds recipients of every brand: a principal sees and marks
 * the entries of its own brands only (others read as unknown). */
static bool http_outbox_keep(const struct outbox_entry *e, const void *arg)
{
	return principal_may_check(arg, e->brand_code);
}

/* GET /v1/outbox?limit=N (default 100, at most 1000). */
static enum MHD_Result http_get_outbox(struct http *h,
				       struct MHD_Connection *conn,
				       const struct principal *p)
{
	const char *lim = MHD_lookup_connection_value(
		conn, MHD_GET_ARGUMENT_KIND, "limit");
	uint32_t limit = 100;

	if (lim != NULL &&
	    (json_brand_text(lim, strlen(lim), &limit) < 0 || limit == 0 ||
	     limit > OUTBOX_LIST_MAX))
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "limit: expected 1 to %d",
					OUTBOX_LIST_MAX);
	struct outbox_entry *e = calloc(limit, sizeof(*e));
	if (e == NULL)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	uint64_t depth = 0;
	size_t n = outbox_list(writer_outbox(h->cfg->writer), http_outbox_keep,
			       p, e, limit, &depth);
	char *out = json_encode_outbox(e, n, depth);
	free(e);
	return http_reply_json(conn, out ? MHD_HTTP_OK :
				     MHD_HTTP_INTERNAL_SERVER_ERROR, out);
}

/* POST /v1/outbox/pushed, once the whole body is in. */
static enum MHD_Result http_post_pushed(struct http *h,
					struct MHD_Connection *conn,
					struct http_req *r)
{
	struct outbox *ob = writer_outbox(h->cfg->writer);
	struct outbox_entry e;
	char id[OUTBOX_TXID_MAX + 1], err[256];
	uint64_t seq;
	int rc;

	if (r->too_large)
		return http_reply_error(h, conn, MHD_HTTP_CONTENT_TOO_LARGE,
					NULL, NULL,
					"body: over the limit of %u bytes",
					JSON_MAX_BODY_BYTES);
	rc = json_decode_pushed(r->body ? r->body : "", r->len, &seq, id,
				sizeof(id), err, sizeof(err));
	if (rc == -ENOMEM)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	if (rc < 0)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST, NULL,
					NULL, "%s", err);
	if (!outbox_get(ob, seq, &e) || !http_outbox_keep(&e, r->principal))
		return http_reply_error(h, conn, MHD_HTTP_NOT_FOUND, NULL, NULL,
					"sequence %" PRIu64 ": no entry waiting "
					"for İYS (unknown or reconciled)", seq);
	rc = outbox_mark_pushed(ob, seq, id, strlen(id), err, sizeof(err));
	if (rc < 0)
		return http_reply_error(h, conn,
					rc == -ENOENT ? MHD_HTTP_NOT_FOUND :
					rc == -EEXIST ? MHD_HTTP_CONFLICT :
					rc == -EINVAL ? MHD_HTTP_BAD_REQUEST :
					MHD_HTTP_SERVICE_UNAVAILABLE, NULL, NULL,
					"%s", err);
	return http_reply_json(conn, MHD_HTTP_OK, json_encode_pushed(seq));
}

/* ---- GET /v1/snapshot ---- */

static ssize_t http_snap_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct http_snap *sn = cls;
	ssize_t n;
	char err[512];

	(void)pos;
	do
		n = read(snapshot_fd(sn->job), buf, max);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		/* Taken by the client: it has another while to take more. */
		if (sn->c)
			sn->c->deadline_ms = http_mono_us() / 1000u +
					     HTTP_SNAPSHOT_IDLE_MS;
		return n;
	}
	if (n < 0 && errno == EAGAIN) {
		/* Nothing yet: out of MHD's loop until the pipe has more
		 * (http_snap_poll). */
		sn->suspended = true;
		MHD_suspend_connection(sn->conn);
		return 0;
	}
	if (n == 0 && snapshot_result(sn->job, err, sizeof(err)) == 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* The producer failed (it said why on stderr): the stream ends
	 * without its trailer and the connection closes, which a reader
	 * of the stream refuses. */
	return MHD_CONTENT_READER_END_WITH_ERROR;
}

static void http_snap_free(void *cls)
{
	struct http_snap *sn = cls;

	sn->prev->next = sn->next;
	sn->next->prev = sn->prev;
	sn->h->n_snaps--;
	snapshot_done(sn->job);
	free(sn);
}

/* The served state as a §3.5 snapshot stream (server/snapshot.h). With a
 * token file only a principal that sees every brand and fleet-wide
 * figures (BRANDS '*' and 'stats') may take it: it is all the data. */
static enum MHD_Result http_snapshot(struct http *h, struct MHD_Connection *conn,
				     const struct principal *p)
{
	struct index_info info;
	struct http_snap *sn;
	struct MHD_Response *resp;
	char err[512];
	enum MHD_Result ret;
	bool stale;

	if (p && !(p->all_brands && p->may_stats))
		return http_reply_error(h, conn, MHD_HTTP_FORBIDDEN, NULL, NULL,
					"a snapshot is every brand's data: it "
					"needs a principal with brands '*' and "
					"'stats'");
	if (!h->cfg->writer || !http_index_info(h, &info, &stale))
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					NULL, NULL, "no generation is served yet");
	if (h->n_snaps >= HTTP_SNAPSHOTS_MAX)
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					MHD_HTTP_HEADER_RETRY_AFTER, "10",
					"%u snapshots are being sent already",
					HTTP_SNAPSHOTS_MAX);
	sn = calloc(1, sizeof(*sn));
	if (!sn)
		return http_reply_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
	if (snapshot_start(h->cfg->writer, &sn->job, err, sizeof(err)) < 0) {
		free(sn);
		return http_reply_error(h, conn, MHD_HTTP_SERVICE_UNAVAILABLE,
					NULL, NULL, "%s", err);
	}
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN,
						 HTTP_SNAPSHOT_BLOCK,
						 http_snap_read, sn,
						 http_snap_free);
	if (!resp) {
		snapshot_done(sn->job);
		free(sn);
		return MHD_NO;
	}
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
		conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	sn->h = h;
	sn->conn = conn;
	sn->c = ci ? ci->socket_context : NULL;
	sn->next = &h->snaps;
	sn->prev = h->snaps.prev;
	sn->prev->next = sn;
	h->snaps.prev = sn;
	h->n_snaps++;
	if (sn->c)
		sn->c->deadline_ms = http_mono_us() / 1000u +
				     HTTP_SNAPSHOT_IDLE_MS;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				"application/octet-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp); /* http_snap_free when MHD is done */
	return ret;
}

/* The read ends of suspended snapshots, into pfd (room for
 * HTTP_SNAPSHOTS_MAX); their deadlines are ours to keep meanwhile (the
 * producer is slow, not the client). Returns how many. */
static unsigned http_snap_poll(struct http *h, struct pollfd *pfd)
{
	unsigned n = 0;

	for (struct http_snap *sn = h->snaps.next; sn != &h->snaps;
	     sn = sn->next) {
		if (!sn->suspended)
			continue;
		if (sn->c)
			sn->c->deadline_ms = http_mono_us() / 1000u +
					     HTTP_SNAPSHOT_IDLE_MS;
		pfd[n++] = (struct pollfd){ .fd = snapshot_fd(sn->job),
					    .events = POLLIN };
	}
	return n;
}

/* Resumes the suspended snapshots whose pipe has more (or ended). */
static void http_snap_resume(struct http *h, const struct pollfd *pfd,
			     unsigned n)
{
	for (struct http_snap *sn = h->snaps.next; sn != &h->snaps;
	     sn = sn->next) {
		if (!sn->suspended)
			continue;
		for (unsigned i = 0; i < n; i++)
			if (pfd[i].fd == snapshot_fd(sn->job) && pfd[i].revents) {
				sn->suspended = false;
				MHD_resume_connection(sn->conn);
			}
	}
}

/* ---- dispatch ---- */

static enum http_route http_route_of(const char *url)
{
	if (!strcmp(url, "/healthz"))
		return ROUTE_HEALTHZ;
	if (!strcmp(url, "/readyz"))
		return ROUTE_READYZ;
	if (!strcmp(url, "/metrics"))
		return ROUTE_METRICS;
	if (!strcmp(url, "/v1/check"))
		return ROUTE_CHECK;
	if (!strcmp(url, "/v1/stats"))
		return ROUTE_STATS;
	if (!strcmp(url, "/v1/reject"))
		return ROUTE_REJECT;
	if (!strcmp(url, "/v1/outbox"))
		return ROUTE_OUTBOX;
	if (!strcmp(url, "/v1/outbox/pushed"))
		return ROUTE_OUTBOX_PUSHED;
	if (!strcmp(url, "/v1/snapshot"))
		return ROUTE_SNAPSHOT;
	if (!strcmp(url, "/v1/history"))
		return ROUTE_HISTORY;
	return ROUTE_NONE;
}

/* Authorization: Bearer TOKEN, when a token file is configured. Returns 0
 * with the principal (NULL: trusted), or -EACCES with a message. */
static int http_authenticate(struct http *h, struct MHD_Connection *conn,
			     const struct principal **out, const char **why)
{
	const char *a, *end;

	*out = NULL;
	if (!h->cfg->tokens)
		return 0;
	a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					MHD_HTTP_HEADER_AUTHORIZATION);
	if (!a) {
		*why = "missing Authorization: Bearer token";
		return -EACCES;
	}
	if (strncasecmp(a, "Bearer ", 7) != 0) {
		*why = "Authorization must be Bearer TOKEN";
		return -EACCES;
	}
	a += 7;
	while (*a == ' ' || *a == '\t')
		a++;
	end = a + strlen(a);
	while (end > a && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*out = tokens_authenticate(h->cfg->tokens, a, (size_t)(end - a));
	if (!*out) {
		metrics_inc(&h->m->auth_failures);
		*why = "unknown token";
		return -EACCES;
	}
	return 0;
}

/* Gives conn until ms from now to reach its next step (http_cut_late). */
/* Message framing (RFC 9112 §6.3): a body's length must be stated once.
 * Two Content-Length headers, a Content-Length that is not one decimal
 * number, or one beside Transfer-Encoding are the stuff of request
 * smuggling behind a proxy that reads the other length: refused with a
 * 400 and the connection closed, since where the next request starts is
 * no longer known. */
struct http_framing {
	unsigned content_lengths;
	unsigned transfer_encodings;
	bool bad_length;
};

static enum MHD_Result http_framing_header(void *cls, enum MHD_ValueKind kind,
					   const char *key, const char *value)
{
	struct http_framing *f = cls;

	(void)kind;
	if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
		f->content_lengths++;
		if (!value || !*value || value[strspn(value, "0123456789")])
			f->bad_length = true;
	} else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
		f->transfer_encodings++;
	}
	return MHD_YES;
}

/* NULL if the request's framing is sound, else what is wrong with it. */
static const char *http_framing_error(struct MHD_Connection *conn)
{
	struct http_framing f = { 0 };

	MHD_get_connection_values(conn, MHD_HEADER_KIND, http_framing_header,
				  &f);
	if (f.content_lengths > 1)
		return "Content-Length: stated more than once";
	if (f.content_lengths && f.transfer_encodings)
		return "Content-Length: stated together with Transfer-Encoding";
	if (f.bad_length)
		return "Content-Length: not a decimal number";
	return NULL;
}

static void http_conn_deadline(struct MHD_Connection *conn, uint64_t ms)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
		conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct http_conn *c = ci ? ci->socket_context : NULL;

	if (c)
		c->deadline_ms = http_mono_us() / 1000u + ms;
}

static enum MHD_Result http_handle(void *cls, struct MHD_Connection *conn,
				   const char *url, const char *method,
				   const char *version, const char *upload_data,
				   size_t *upload_size, void **con_cls)
{
	struct http *h = cls;
	struct http_req *r = *con_cls;
	const struct principal *p = NULL;
	enum http_route route;
	bool get, post;
	const char *why;

	(void)version;
	if (r) { /* a POST under way */
		if (*upload_size) {
			http_body_append(r, upload_data, *upload_size);
			*upload_size = 0;
			return MHD_YES;
		}
		if (r->route == ROUTE_REJECT)
			return http_post_reject(h, conn, r);
		if (r->route == ROUTE_OUTBOX_PUSHED)
			return http_post_pushed(h, conn, r);
		return http_post_check(h, conn, r);
	}
	if (*upload_size) {
		/* A body after a reply was queued early (an error before a
		 * POST's body, or a GET with one): read and ignore it. */
		*upload_size = 0;
		return MHD_YES;
	}

	/* The header is in: the body (if any) and the reply next. */
	http_conn_deadline(conn, HTTP_REPLY_MS);
	metrics_inc(&h->m->http_requests);
	why = http_framing_error(conn);
	if (why)
		return http_reply_error(h, conn, MHD_HTTP_BAD_REQUEST,
					MHD_HTTP_HEADER_CONNECTION, "close",
					"%s", why);
	route = http_route_of(url);
	if (route == ROUTE_NONE)
		return http_reply_error(h, conn, MHD_HTTP_NOT_FOUND, NULL, NULL,
					"no such path (try /healthz, /readyz, "
					"/metrics, /v1/check, /v1/stats, "
					"/v1/history, /v1/reject, /v1/outbox, "
					"/v1/snapshot)");
	get = !strcmp(method, MHD_HTTP_METHOD_GET) ||
	      !strcmp(method, MHD_HTTP_METHOD_HEAD);
	post = !strcmp(method, MHD_HTTP_METHOD_POST);
	{
		bool post_only = route == ROUTE_REJECT ||
				 route == ROUTE_OUTBOX_PUSHED;
		bool may_post = post_only || route == ROUTE_CHECK;

		if ((get && post_only) || (!get && !(post && may_post)))
			return http_reply_error(
				h, conn, MHD_HTTP_METHOD_NOT_ALLOWED,
				MHD_HTTP_HEADER_ALLOW,
				post_only ? "POST" :
				route == ROUTE_CHECK ? "GET, HEAD, POST" :
						       "GET, HEAD",
				"method %.16s not allowed here", method);
	}

	switch (route) {
	case ROUTE_HEALTHZ:
		return http_healthz(h, conn);
	case ROUTE_READYZ:
		return http_readyz(h, conn);
	case ROUTE_METRICS:
		return http_metrics(h, conn);
	default:
		break;
	}

	/* /v1/: the partner API. */
	if (http_authenticate(h, conn, &p, &why) < 0)
		return http_reply_error(h, conn, MHD_HTTP_UNAUTHORIZED,
					MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer realm=\"consentd\"", "%s", why);
	if (route == ROUTE_STATS)
		return http_stats(h, conn, p);
	if (route == ROUTE_SNAPSHOT)
		return http_snapshot(h, conn, p);
	if (route == ROUTE_HISTORY)
		return http_history(h, conn, p);
	if (route == ROUTE_REJECT || route == ROUTE_OUTBOX ||
	    route == ROUTE_OUTBOX_PUSHED) {
		/* Rights before the body is read: a refusal costs no
		 * upload. The outbox is the connector's, which applies
		 * İYS's pages too: the 'apply' right. */
		if (route == ROUTE_REJECT && !principal_may_reject(p))
			return http_reply_error(h, conn, MHD_HTTP_FORBIDDEN,
						NULL, NULL, "this principal may "
						"not reject (no 'reject' right)");
		if (route != ROUTE_REJECT && p != NULL && !p->may_apply)
			return http_reply_error(h, conn, MHD_HTTP_FORBIDDEN,
						NULL, NULL, "the outbox needs "
						"the 'apply' right");
		if (h->cfg->writer == NULL)
			return http_reply_error(h, conn,
						MHD_HTTP_SERVICE_UNAVAILABLE,
						NULL, NULL, "no change log here");
		if (route == ROUTE_OUTBOX)
			return http_get_outbox(h, conn, p);
	} else if (get) {
		return http_get_check(h, conn, p);
	}

	{
		const char *cl = MHD_lookup_connection_value(
			conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

		/* Refuse a declared oversize body before reading it. */
		if (cl && strtoull(cl, NULL, 10) > JSON_MAX_BODY_BYTES)
			return http_reply_error(
				h, conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL, NULL,
				"body: over the limit of %u bytes",
				JSON_MAX_BODY_BYTES);
		r = calloc(1, sizeof(*r));
		if (!r)
			return http_reply_json(conn,
					       MHD_HTTP_INTERNAL_SERVER_ERROR,
					       NULL);
		r->start_us = http_mono_us();
		r->principal = p;
		r->route = route;
		if (cl) {
			size_t n = strtoull(cl, NULL, 10);

			/* Known length: one allocation (n <= the limit). */
			if (n) {
				r->body = malloc(n);
				r->cap = r->body ? n : 0;
			}
		}
		*con_cls = r;
		return MHD_YES;
	}
}

static void http_completed(void *cls, struct MHD_Connection *conn,
			   void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct http_req *r = *con_cls;

	(void)cls;
	(void)toe;
	/* Kept alive: the next request's header has its own deadline. */
	http_conn_deadline(conn, HTTP_HEADER_MS);
	if (r) {
		free(r->body);
		free(r);
		*con_cls = NULL;
	}
}

/* MHD_OPTION_NOTIFY_CONNECTION: tracks every connection for
 * http_cut_late. */
static void http_notify(void *cls, struct MHD_Connection *conn,
			void **socket_context,
			enum MHD_ConnectionNotificationCode toe)
{
	struct http *h = cls;
	struct http_conn *c = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
			conn, MHD_CONNECTION_INFO_CONNECTION_FD);

		if (!ci)
			return;
		c = calloc(1, sizeof(*c));
		if (!c) {
			/* Untracked it would have no deadline: refuse it. */
			shutdown(ci->connect_fd, SHUT_RDWR);
			return;
		}
		c->fd = ci->connect_fd;
		c->deadline_ms = http_mono_us() / 1000u + HTTP_HEADER_MS;
		c->next = &h->conns;
		c->prev = h->conns.prev;
		c->prev->next = c;
		h->conns.prev = c;
		*socket_context = c;
		return;
	}
	if (c) {
		c->prev->next = c->next;
		c->next->prev = c->prev;
		free(c);
		*socket_context = NULL;
	}
}

/* Shuts down every connection past its deadline (MHD reads the end at its
 * next turn and closes it); returns the milliseconds until the next
 * deadline, at most wait_ms. */
static int http_cut_late(struct http *h, int wait_ms)
{
	uint64_t now = http_mono_us() / 1000u;

	for (struct http_conn *c = h->conns.next; c != &h->conns;
	     c = c->next) {
		if (c->cut)
			continue;
		if (now >= c->deadline_ms) {
			shutdown(c->fd, SHUT_RDWR);
			c->cut = true;
		} else if (c->deadline_ms - now < (uint64_t)wait_ms) {
			wait_ms = (int)(c->deadline_ms - now);
		}
	}
	return wait_ms;
}

static void http_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	fputs("consentd: http: ", stderr);
	vfprintf(stderr, fmt, ap);
}

/* ---- the thread ---- */

static void *http_thread(void *arg)
{
	struct http *h = arg;

	pthread_setname_np(pthread_self(), "consentd-http");
	rcu_register_thread();
	/* Offline whenever we wait: only http_checks/http_index_info go
	 * online. */
	live_offline();
	for (;;) {
		struct pollfd pfd[2 + HTTP_SNAPSHOTS_MAX] = {
			{ .fd = h->epoll_fd, .events = POLLIN },
			{ .fd = h->stop_fd, .events = POLLIN },
		};
		unsigned n_snap = http_snap_poll(h, pfd + 2);
		MHD_UNSIGNED_LONG_LONG to;
		int timeout_ms = HTTP_TURN_MS;

		/* MHD's own deadline (connection timeouts, data it already
		 * holds) bounds the wait, as MHD_get_timeout requires. */
		if (MHD_get_timeout(h->daemon, &to) == MHD_YES &&
		    to < (MHD_UNSIGNED_LONG_LONG)timeout_ms)
			timeout_ms = (int)to;
		/* So do ours; the connections cut now close in MHD_run. */
		timeout_ms = http_cut_late(h, timeout_ms);
		if (poll(pfd, 2 + n_snap, timeout_ms) < 0 && errno != EINTR)
			(void)0; /* ENOMEM: try again next turn */
		if (pfd[1].revents)
			break;
		http_snap_resume(h, pfd + 2, n_snap);
		MHD_run(h->daemon);
	}
	rcu_unregister_thread();
	return NULL;
}

/* The ops port's listener on cfg->http_addr (server/addr.h), a port in use
 * waited for up to cfg->bind_wait_ms; bound gets the address as bound. */
static int http_listen(const struct server_config *cfg, int *fd_out,
		       int *family, uint16_t *port, char *bound,
		       size_t bound_cap, char *err, size_t err_cap)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char label[ADDR_HOST_MAX + 32];
	int fd, one = 1, e;

	e = addr_resolve(cfg->http_addr, &ss, &sl, err, err_cap);
	if (e < 0)
		return e;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
	if (fd < 0) {
		e = -errno;
		snprintf(err, err_cap, "http socket: %s", strerror(-e));
		return e;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	snprintf(label, sizeof(label), "--http %s", cfg->http_addr);
	e = addr_bind(fd, (struct sockaddr *)&ss, sl, cfg->bind_wait_ms, label);
	if (e == 0 && listen(fd, HTTP_BACKLOG) < 0)
		e = -errno;
	sl = sizeof(ss);
	if (e == 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		e = -errno;
	if (e < 0) {
		snprintf(err, err_cap, "%s: %s", cfg->http_addr, strerror(-e));
		close(fd);
		return e;
	}
	*family = ss.ss_family;
	*port = ntohs(ss.ss_family == AF_INET6 ?
			      ((struct sockaddr_in6 *)&ss)->sin6_port :
			      ((struct sockaddr_in *)&ss)->sin_port);
	if (addr_format((struct sockaddr *)&ss, bound, bound_cap) < 0)
		snprintf(bound, bound_cap, "%s", cfg->http_addr);
	*fd_out = fd;
	return 0;
}

int http_start(const struct server_config *cfg, unsigned metrics_slot_i,
	       struct http **out, char *err, size_t err_cap)
{
	const union MHD_DaemonInfo *di;
	struct http *h;
	int fd = -1, family = AF_INET, e;
	unsigned flags;

	*out = NULL;
	if (metrics_slot_i >= metrics_n_slots()) {
		snprintf(err, err_cap, "http: metrics slot %u of %u",
			 metrics_slot_i, metrics_n_slots());
		return -EINVAL;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(err, err_cap, "http: out of memory");
		return -ENOMEM;
	}
	h->cfg = cfg;
	h->start_ms = http_mono_us() / 1000u;
	h->started_at = http_wall_s();
	h->slot = metrics_slot_i;
	h->m = metrics_slot(metrics_slot_i);
	h->stop_fd = -1;
	h->conns.next = h->conns.prev = &h->conns;
	h->snaps.next = h->snaps.prev = &h->snaps;

	e = http_listen(cfg, &fd, &family, &h->port, h->bound, sizeof(h->bound),
			err, err_cap);
	if (e < 0)
		goto fail;
	h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->stop_fd < 0) {
		e = -errno;
		snprintf(err, err_cap, "http eventfd: %s", strerror(-e));
		goto fail;
	}
	/* No polling-thread flag: MHD runs in external mode, on ours. */
	/* Suspend and resume: GET /v1/snapshot waits for its producer. */
	flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
	if (family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, http_handle, h,
		/* First, so that MHD logs nothing through its own logger. */
		MHD_OPTION_EXTERNAL_LOGGER, http_log, h,
		MHD_OPTION_LISTEN_SOCKET, fd,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_CONN_TIMEOUT_S,
		MHD_OPTION_NOTIFY_COMPLETED, http_completed, h,
		MHD_OPTION_NOTIFY_CONNECTION, http_notify, h,
		MHD_OPTION_END);
	if (!h->daemon) {
		e = -EIO;
		snprintf(err, err_cap, "http: libmicrohttpd failed to start on %s",
			 cfg->http_addr);
		goto fail;
	}
	fd = -1; /* the daemon owns (and closes) it now */
	di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
	if (!di) {
		e = -EIO;
		snprintf(err, err_cap, "http: no epoll descriptor");
		goto fail;
	}
	h->epoll_fd = di->epoll_fd;
	e = -pthread_create(&h->thread, NULL, http_thread, h);
	if (e < 0) {
		snprintf(err, err_cap, "http thread: %s", strerror(-e));
		goto fail;
	}
	*out = h;
	return 0;

fail:
	if (h->daemon)
		MHD_stop_daemon(h->daemon);
	if (fd >= 0)
		close(fd);
	if (h->stop_fd >= 0)
		close(h->stop_fd);
	free(h);
	return e;
}

uint16_t http_port(const struct http *h)
{
	return h->port;
}

const char *http_bound(const struct http *h)
{
	return h->bound;
}

void http_stop(struct http *h)
{
	uint64_t one = 1;

	if (!h)
		return;
	/* The thread leaves its loop at the next poll and unregisters from
	 * RCU; only then is the daemon stopped, from this thread (MHD's
	 * external mode allows it once no MHD_run is under way). */
	if (write(h->stop_fd, &one, sizeof(one)) < 0)
		(void)0; /* an eventfd write of 1 cannot fail but for overflow */
	pthread_join(h->thread, NULL);
	/* A suspended connection is outside MHD's loop: back in, so that
	 * stopping closes it (its response freed: the producer's next write
	 * fails), then every producer is waited for. */
	for (struct http_snap *sn = h->snaps.next; sn != &h->snaps;
	     sn = sn->next)
		if (sn->suspended) {
			sn->suspended = false;
			MHD_resume_connection(sn->conn);
		}
	MHD_stop_daemon(h->daemon);
	snapshot_wait_all();
	close(h->stop_fd);
	free(h);
}
