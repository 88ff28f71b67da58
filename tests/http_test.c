/*
 * http_test: the ops port (server/http.c) end to end over loopback: a real
 * index published with live_publish, http_start on 127.0.0.1 port 0, and a
 * small HTTP/1.1 client on plain sockets. Covers health (with stalled
 * workers), readiness (no index, stale), /metrics, GET and POST
 * /v1/check, /v1/stats, the 400/401/404/405/413 paths, bearer tokens and
 * a generation swap while requests run.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/history.h"
#include "index/table.h"
#include "server/config.h"
#include "server/http.h"
#include "server/json.h"
#include "server/live.h"
#include "server/metrics.h"
#include "tests/check.h"

#define D1 1700000000LL
#define D2 1710000000LL
#define N_SLOTS 3 /* two "workers" (this test plays them), then HTTP */
#define HTTP_SLOT (N_SLOTS - 1)
/* SHA-256 of "secret-token". */
#define TOKEN_DIGEST "930bbdc51b6aed5c2a5678fd6e28dee7a05e8a4b643cfc0b4427c3efb86c0d94"

static uint16_t port;

#if defined(__SANITIZE_THREAD__)
/*
 * liburcu 0.13 is not built for TSan: the grace period live_publish waits
 * for (synchronize_rcu against this thread's rcu_thread_offline) is
 * invisible to it, so freeing a swapped-out generation looks like a race
 * with the HTTP thread's last lookups in it. Only that report is
 * suppressed; ASan runs the same swap and would see a use after free.
 */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
	return "race:index_destroy\n";
}
#endif

struct reply {
	int status;
	char head[4096];
	char *body; /* NUL-terminated */
	size_t body_len;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The test's "workers" report a loop turn now (or ago_ms before now). */
static void workers_turn(uint64_t ago_ms)
{
	for (unsigned i = 0; i < HTTP_SLOT; i++)
		atomic_store_explicit(&metrics_slot(i)->last_turn_ms,
				      mono_ms() - ago_ms, memory_order_relaxed);
}

static int connect_port(uint16_t p)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(p) };
	struct timeval tv = { .tv_sec = 10 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w <= 0)
			return; /* the server may have answered and closed */
		p += w;
		n -= (size_t)w;
	}
}

/* Reads a whole reply (the request said Connection: close). */
static int read_reply(int fd, struct reply *r)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap + 1), *sep;

	memset(r, 0, sizeof(*r));
	r->status = -1;
	for (;;) {
		ssize_t n;

		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
		n = recv(fd, buf + len, cap - len, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	sep = strstr(buf, "\r\n\r\n");
	if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
		free(buf);
		return -EPROTO;
	}
	snprintf(r->head, sizeof(r->head), "%.*s", (int)(sep - buf), buf);
	r->body_len = len - (size_t)(sep + 4 - buf);
	r->body = malloc(r->body_len + 1);
	memcpy(r->body, sep + 4, r->body_len);
	r->body[r->body_len] = '\0';
	free(buf);
	return 0;
}

/* One request on its own connection; extra is more header lines. */
static int call(const char *method, const char *path, const char *extra,
		const char *body, size_t body_len, struct reply *r)
{
	char head[4096];
	int fd = connect_port(port), n, e;

	if (fd < 0) {
		memset(r, 0, sizeof(*r));
		return fd;
	}
	n = snprintf(head, sizeof(head),
		     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
		     "%s%s",
		     method, path, extra ? extra : "", body ? "" : "\r\n");
	if (body) {
		n += snprintf(head + n, sizeof(head) - (size_t)n,
			      "Content-Length: %zu\r\n\r\n", body_len);
	}
	send_all(fd, head, (size_t)n);
	if (body)
		send_all(fd, body, body_len);
	e = read_reply(fd, r);
	close(fd);
	return e;
}

static int get(const char *path, struct reply *r)
{
	return call("GET", path, NULL, NULL, 0, r);
}

static int post(const char *path, const char *body, struct reply *r)
{
	return call("POST", path, NULL, body, strlen(body), r);
}

static void reply_free(struct reply *r)
{
	free(r->body);
	r->body = NULL;
}

/* GET path and compare the status and body exactly. */
#define EXPECT_GET(path, st, want)                                          \
	do {                                                                \
		struct reply r_;                                            \
		int e_ = get(path, &r_);                                    \
		CHECKF(e_ == 0, "GET %s: %d", path, e_);                    \
		CHECKF(r_.status == (st), "GET %s: status %d: %s", path,    \
		       r_.status, r_.body ? r_.body : "");                  \
		if (want)                                                   \
			CHECKF(r_.body && !strcmp(r_.body, (want) ? (want) : ""), \
			       "GET %s: body %s", path, r_.body);           \
		reply_free(&r_);                                            \
	} while (0)

/* ---- the index ---- */

static void put(struct index *ix, const char *recipient, uint32_t brand,
		int channel, int rtype, int status, int source, int64_t date)
{
	struct recipient rc;
	struct index_key key;
	struct consent_value v = { .status = (uint8_t)status,
				   .source = (uint8_t)source,
				   .consent_date = date };
	const char *why = NULL;
	int e = recipient_normalize(recipient, strlen(recipient), &rc, &why);

	CHECKF(e == 0, "%s: %s", recipient, why);
	index_key_make(ix, &rc, brand, rtype, channel, &key);
	e = index_apply_writer(ix, &key, &v);
	CHECKF(e == INDEX_INSERTED, "%s: apply %d", recipient, e);
}

static struct index *make_index(uint64_t generation, int64_t data_as_of)
{
	struct index *ix = NULL;
	int e = index_create(1024, NULL, &ix);

	CHECKF(e == 0, "index_create %d", e);
	if (e)
		exit(1);
	put(ix, "+905321234567", 100, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_ONAY, 6, D1);
	put(ix, "+905321234567", 100, CHANNEL_MESAJ, RTYPE_TACIR, STATUS_RET,
	    33, D2);
	put(ix, "ali.veli@example.com", 100, CHANNEL_EPOSTA, RTYPE_BIREYSEL,
	    STATUS_ONAY, 9, D1);
	put(ix, "+905321234567", 200, CHANNEL_MESAJ, RTYPE_BIREYSEL,
	    STATUS_ONAY, 7, D2);
	index_set_meta_writer(ix, generation, 42, data_as_of - 10, data_as_of);
	return ix;
}

static struct http *start(struct server_config *cfg)
{
	struct http *h = NULL;
	char err[256] = "";
	int e = http_start(cfg, HTTP_SLOT, &h, err, sizeof(err));

	CHECKF(e == 0, "http_start: %d %s", e, err);
	if (e) {
		check_summary();
		exit(1);
	}
	port = http_port(h);
	CHECK(port != 0);
	return h;
}

static struct server_config base_cfg(void)
{
	struct server_config cfg;

	server_config_defaults(&cfg);
	cfg.http_addr = "127.0.0.1:0";
	return cfg;
}

/* ---- tests ---- */

static void test_no_index(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct reply r;

	workers_turn(0);
	EXPECT_GET("/healthz", 200, "ok\n");
	EXPECT_GET("/readyz", 503, "no index loaded\n");
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ",
		   503, "{\"error\":\"no index loaded yet\"}");
	EXPECT_GET("/v1/stats", 200,
		   "{\"records\":0,\"applied_sequence\":0,\"data_as_of\":0,"
		   "\"generation\":0,\"checks_total\":0}");
	CHECK(get("/metrics", &r) == 0);
	CHECK(r.status == 200);
	CHECK(strstr(r.body, "\nconsentd_ready 0\n") != NULL);
	CHECK(strstr(r.body, "consentd_records") == NULL);
	reply_free(&r);
	http_stop(h);
}

static void test_health(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct reply r;

	/* Workers that have not turned yet, just after start: healthy for
	 * the first two seconds. */
	for (unsigned i = 0; i < HTTP_SLOT; i++)
		atomic_store(&metrics_slot(i)->last_turn_ms, 0);
	EXPECT_GET("/healthz", 200, "ok\n");
	workers_turn(0);
	EXPECT_GET("/healthz", 200, "ok\n");
	/* One worker silent for 5 s: unhealthy, naming it. */
	atomic_store_explicit(&metrics_slot(1)->last_turn_ms, mono_ms() - 5000,
			      memory_order_relaxed);
	CHECK(get("/healthz", &r) == 0);
	CHECK(r.status == 503);
	CHECKF(strstr(r.body, "worker 1: no loop turn for") != NULL, "%s", r.body);
	reply_free(&r);
	workers_turn(0);
	EXPECT_GET("/healthz", 200, "ok\n");
	/* HEAD: same status, no body. */
	CHECK(call("HEAD", "/healthz", NULL, NULL, 0, &r) == 0);
	CHECK(r.status == 200 && r.body_len == 0);
	reply_free(&r);
	/* A worker that never turns is unhealthy once the start-up grace
	 * has passed. */
	atomic_store(&metrics_slot(0)->last_turn_ms, 0);
	{
		struct timespec ts = { .tv_sec = 2, .tv_nsec = 200 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	atomic_store(&metrics_slot(1)->last_turn_ms, mono_ms());
	CHECK(get("/healthz", &r) == 0);
	CHECK(r.status == 503);
	CHECKF(strstr(r.body, "worker 0: no loop turn for") != NULL, "%s", r.body);
	reply_free(&r);
	http_stop(h);
}

static void test_ready_and_stale(void)
{
	struct server_config cfg = base_cfg();
	struct http *h;
	struct reply r;
	int64_t now = (int64_t)time(NULL);

	live_publish(make_index(1, now - 3600)); /* an hour old */
	cfg.stale_soft_s = 60;
	cfg.stale_hard_s = 1800;
	h = start(&cfg);
	workers_turn(0);
	CHECK(get("/readyz", &r) == 0);
	CHECK(r.status == 503);
	CHECKF(strstr(r.body, "data stale") != NULL, "%s", r.body);
	reply_free(&r);
	/* Past the hard bound an allow becomes DATA_STALE; a RET stays. */
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ",
		   200,
		   "{\"allow\":false,\"reason\":\"DATA_STALE\",\"status\":\"ONAY\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000000}");
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		   "&recipient_type=TACIR",
		   200,
		   "{\"allow\":false,\"reason\":\"CONSENT_REJECTED\",\"status\":\"RET\","
		   "\"source\":\"IYS_CM\",\"consent_date\":1710000000}");
	CHECK(get("/metrics", &r) == 0);
	CHECK(strstr(r.body, "\nconsentd_ready 0\n") != NULL);
	CHECK(strstr(r.body, "\nconsentd_stale_soft_seconds 60\n") != NULL);
	CHECK(strstr(r.body, "\nconsentd_stale_hard_seconds 1800\n") != NULL);
	CHECK(strstr(r.body, "\nconsentd_data_age_seconds 3600\n") != NULL ||
	      strstr(r.body, "\nconsentd_data_age_seconds 3601\n") != NULL);
	reply_free(&r);
	http_stop(h);

	/* Fresh data: ready. */
	live_publish(make_index(2, now));
	h = start(&cfg);
	EXPECT_GET("/readyz", 200, "ready\n");
	http_stop(h);
}

static void test_get_check(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct reply r;

	live_publish(make_index(3, (int64_t)time(NULL)));
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ",
		   200,
		   "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000000}");
	/* '+' unencoded is a space in a query string: " 905321234567" still
	 * normalises to the same number. */
	EXPECT_GET("/v1/check?recipient=+905321234567&brand_code=100&channel=MESAJ",
		   200,
		   "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000000}");
	/* Other spellings, camelCase names, numeric enums. */
	EXPECT_GET("/v1/check?recipient=0%20(532)%20123%2045%2067&brandCode=100&channel=2",
		   200,
		   "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000000}");
	EXPECT_GET("/v1/check?recipient=ALI.VELI%40example.com&brand_code=100&channel=eposta",
		   200,
		   "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		   "\"source\":\"HS_EPOSTA\",\"consent_date\":1700000000}");
	/* No record: the status, source and date are left out. */
	EXPECT_GET("/v1/check?recipient=%2B905320000000&brand_code=100&channel=MESAJ",
		   200, "{\"allow\":false,\"reason\":\"NO_CONSENT\"}");
	EXPECT_GET("/v1/check?recipient=%2B905320000000&brand_code=100&channel=MESAJ"
		   "&recipient_type=TACIR",
		   200, "{\"allow\":true,\"reason\":\"MERCHANT_NO_REJECTION\"}");
	EXPECT_GET("/v1/check?recipient=%2B905320000000&brand_code=100&channel=MESAJ"
		   "&purpose=BILGILENDIRME",
		   200, "{\"allow\":true,\"reason\":\"NOT_COMMERCIAL\"}");
	/* Malformed checks the decision table answers (row 1). */
	CHECK(get("/v1/check?recipient=12345&brand_code=100&channel=MESAJ", &r) == 0);
	CHECK(r.status == 200);
	CHECKF(strstr(r.body, "{\"allow\":false,\"reason\":\"INVALID_REQUEST\","
			      "\"error\":\"") == r.body, "%s", r.body);
	reply_free(&r);
	CHECK(get("/v1/check?recipient=%2B905321234567&brand_code=100", &r) == 0);
	CHECK(r.status == 200 && strstr(r.body, "INVALID_REQUEST"));
	reply_free(&r);
	CHECK(get("/v1/check", &r) == 0);
	CHECK(r.status == 200 && strstr(r.body, "INVALID_REQUEST"));
	reply_free(&r);
	/* Requests the port cannot read: 400 naming the problem. */
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=SMS",
		   400,
		   "{\"error\":\"channel: unknown value \\\"SMS\\\" (expected ARAMA, "
		   "MESAJ or EPOSTA)\"}");
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand=100&channel=MESAJ",
		   400, "{\"error\":\"unknown parameter \\\"brand\\\"\"}");
	EXPECT_GET("/v1/check?recipient=x&brand_code=1&brand_code=2&channel=MESAJ",
		   400, "{\"error\":\"parameter brand_code given twice\"}");
	EXPECT_GET("/v1/check?recipient=x&brand_code=-1&channel=MESAJ", 400,
		   "{\"error\":\"brand_code: \\\"-1\\\" is not a number in "
		   "0..4294967295\"}");
	/* An encoded NUL in the recipient reaches the normaliser whole. */
	CHECK(get("/v1/check?recipient=%2B90532%001234567&brand_code=100&channel=MESAJ",
		  &r) == 0);
	CHECK(r.status == 200 && strstr(r.body, "INVALID_REQUEST"));
	reply_free(&r);
	http_stop(h);
}

static void test_post_check(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct reply r;
	size_t cap = 64 + (JSON_MAX_CHECKS + 1) * 32, len;
	char *big;

	CHECK(post("/v1/check",
		   "{\"brand_code\":100,\"channel\":\"MESAJ\",\"checks\":["
		   "{\"recipient\":\"+905321234567\"},"
		   "{\"recipient\":\"+905321234567\",\"recipient_type\":\"TACIR\"},"
		   "{\"recipient\":\"ali.veli@example.com\",\"channel\":\"EPOSTA\"},"
		   "{\"recipient\":\"+905321234567\",\"brand_code\":200},"
		   "{\"recipient\":\"+905321234567\",\"brand_code\":300},"
		   "{\"recipient\":\"nope@\",\"channel\":3}]}",
		   &r) == 0);
	CHECKF(r.status == 200, "%d %s", r.status, r.body);
	CHECKF(strstr(r.body,
		    "{\"verdicts\":["
		    "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		    "\"source\":\"HS_WEB\",\"consent_date\":1700000000},"
		    "{\"allow\":false,\"reason\":\"CONSENT_REJECTED\",\"status\":\"RET\","
		    "\"source\":\"IYS_CM\",\"consent_date\":1710000000},"
		    "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		    "\"source\":\"HS_EPOSTA\",\"consent_date\":1700000000},"
		    "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		    "\"source\":\"HS_MOBIL\",\"consent_date\":1710000000},"
		    "{\"allow\":false,\"reason\":\"NO_CONSENT\"},"
		    "{\"allow\":false,\"reason\":\"INVALID_REQUEST\",\"error\":") ==
	       r.body, "%s", r.body);
	CHECK(strstr(r.body, "],\"applied_sequence\":42,\"data_as_of\":") != NULL);
	reply_free(&r);

	/* Bad bodies: 400 with the decoder's message. */
	CHECK(post("/v1/check", "{not json", &r) == 0);
	CHECK(r.status == 400 && strstr(r.body, "{\"error\":\"body is not valid JSON"));
	reply_free(&r);
	CHECK(post("/v1/check", "{\"checks\":[{\"recipient\":5}]}", &r) == 0);
	CHECK(r.status == 400);
	CHECK_STREQ(r.body, "{\"error\":\"checks[0].recipient: expected a string\"}");
	reply_free(&r);
	CHECK(post("/v1/check", "", &r) == 0);
	CHECK(r.status == 400);
	reply_free(&r);

	/* The check limit: 10000 answered, 10001 refused. */
	big = malloc(cap);
	len = (size_t)sprintf(big, "{\"brand_code\":100,\"channel\":\"MESAJ\",\"checks\":[");
	for (size_t i = 0; i < JSON_MAX_CHECKS; i++)
		len += (size_t)sprintf(big + len, "%s{\"recipient\":\"+90532%07zu\"}",
				       i ? "," : "", 1234567 - i % 3);
	strcpy(big + len, "]}");
	CHECK(call("POST", "/v1/check", NULL, big, len + 2, &r) == 0);
	CHECKF(r.status == 200, "%d", r.status);
	{
		size_t given = 0;

		for (const char *p = r.body; (p = strstr(p, "CONSENT_GIVEN")); p++)
			given++;
		/* One in three is +905321234567, which has consent. */
		CHECKF(given == (JSON_MAX_CHECKS + 2) / 3, "%zu", given);
	}
	reply_free(&r);
	len += (size_t)sprintf(big + len, ",{\"recipient\":\"x\"}]}");
	CHECK(call("POST", "/v1/check", NULL, big, len, &r) == 0);
	CHECK(r.status == 400);
	CHECKF(strstr(r.body, "over the limit of 10000") != NULL, "%s", r.body);
	reply_free(&r);
	free(big);

	/* Over 1 MiB: 413, declared up front... */
	{
		int fd = connect_port(port);
		char head[256];
		int n = snprintf(head, sizeof(head),
				 "POST /v1/check HTTP/1.1\r\nHost: x\r\n"
				 "Connection: close\r\nContent-Length: %u\r\n\r\n",
				 JSON_MAX_BODY_BYTES + 1);

		send_all(fd, head, (size_t)n);
		CHECK(read_reply(fd, &r) == 0);
		CHECKF(r.status == 413, "%d", r.status);
		reply_free(&r);
		close(fd);
	}
	/* ... or found while reading a chunked body. */
	{
		int fd = connect_port(port);
		const char *head = "POST /v1/check HTTP/1.1\r\nHost: x\r\n"
				   "Connection: close\r\n"
				   "Transfer-Encoding: chunked\r\n\r\n";
		size_t chunk = 64 * 1024;
		char *data = malloc(chunk);
		char line[32];

		memset(data, ' ', chunk);
		send_all(fd, head, strlen(head));
		for (int i = 0; i < 17; i++) {
			int n = snprintf(line, sizeof(line), "%zx\r\n", chunk);

			send_all(fd, line, (size_t)n);
			send_all(fd, data, chunk);
			send_all(fd, "\r\n", 2);
		}
		send_all(fd, "0\r\n\r\n", 5);
		CHECK(read_reply(fd, &r) == 0);
		CHECKF(r.status == 413, "%d", r.status);
		CHECK(strstr(r.body ? r.body : "", "over the limit of 1048576"));
		reply_free(&r);
		close(fd);
		free(data);
	}
	http_stop(h);
}

static void test_routes_and_methods(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct reply r;

	workers_turn(0);
	CHECK(get("/", &r) == 0 && r.status == 404);
	CHECK(strstr(r.body, "{\"error\":\"no such path") == r.body);
	reply_free(&r);
	CHECK(get("/v1/checks", &r) == 0 && r.status == 404);
	reply_free(&r);
	CHECK(get("/healthz/", &r) == 0 && r.status == 404);
	reply_free(&r);
	CHECK(post("/metricsx", "", &r) == 0 && r.status == 404);
	reply_free(&r);
	CHECK(post("/healthz", "{}", &r) == 0 && r.status == 405);
	CHECK(strstr(r.head, "\r\nAllow: GET, HEAD") != NULL);
	reply_free(&r);
	CHECK(call("DELETE", "/v1/check", NULL, NULL, 0, &r) == 0);
	CHECK(r.status == 405);
	CHECK(strstr(r.head, "\r\nAllow: GET, HEAD, POST") != NULL);
	reply_free(&r);
	CHECK(post("/v1/stats", "{}", &r) == 0 && r.status == 405);
	reply_free(&r);
	/* Not HTTP at all: closed at once, or (NULs, which MHD takes for
	 * blank lines) on the idle deadline; still serving after. */
	{
		static const char *const junk[] = { "\x01\x02garbage\r\n\r\n",
						    "\x00\x01\x02garbage\r\n\r\n" };
		static const size_t junk_len[] = { 13, 14 };

		for (int i = 0; i < 2; i++) {
			int fd = connect_port(port);
			uint64_t t0 = mono_ms();
			char buf[256];

			send_all(fd, junk[i], junk_len[i]);
			/* EOF (0) well before the client's 10 s timeout. */
			CHECK(recv(fd, buf, sizeof(buf), 0) <= 0);
			CHECKF(mono_ms() - t0 < 6000, "junk %d: %" PRIu64 " ms", i,
			       mono_ms() - t0);
			close(fd);
		}
	}
	workers_turn(0); /* the wait above made our "workers" stale */
	EXPECT_GET("/healthz", 200, "ok\n");
	http_stop(h);
}

static void test_metrics_and_stats(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct metrics sum;
	struct reply r;
	uint64_t checks_before, bad_before;
	char want[128];

	workers_turn(0);
	metrics_sum(&sum);
	checks_before = metrics_checks_total(&sum);
	bad_before = sum.http_bad_requests;
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ",
		   200, NULL);
	EXPECT_GET("/v1/check?recipient=1&brand_code=100&channel=MESAJ", 200, NULL);
	EXPECT_GET("/v1/check?channel=SMS", 400, NULL);
	metrics_sum(&sum);
	CHECK(metrics_checks_total(&sum) == checks_before + 2);
	CHECK(sum.http_bad_requests == bad_before + 1);
	CHECK(sum.checks[METRICS_HTTP][REASON_INVALID_REQUEST] >= 1);

	CHECK(get("/metrics", &r) == 0);
	CHECK(r.status == 200);
	CHECKF(strstr(r.head, "Content-Type: text/plain; version=0.0.4") != NULL,
	       "%s", r.head);
#define HTTP_TEST_NAME(name, prom, help)                                   \
	CHECKF(strstr(r.body, "# TYPE " prom " counter\n" prom " ") != NULL, \
	       "%s missing", prom);
	METRICS_COUNTERS(HTTP_TEST_NAME)
#undef HTTP_TEST_NAME
	snprintf(want, sizeof(want),
		 "\nconsentd_checks_total{protocol=\"http\",reason=\"INVALID_REQUEST\"} %" PRIu64 "\n",
		 (uint64_t)sum.checks[METRICS_HTTP][REASON_INVALID_REQUEST]);
	CHECKF(strstr(r.body, want) != NULL, "%s", want);
	CHECK(strstr(r.body, "# TYPE consentd_checks_total counter\n") != NULL);
	CHECK(strstr(r.body, "consentd_checks_total{protocol=\"rpc\",reason=\"DATA_STALE\"} 0\n"));
	CHECK(strstr(r.body, "# TYPE consentd_request_latency_seconds histogram\n"));
	CHECK(strstr(r.body, "consentd_request_latency_seconds_bucket{protocol=\"http\",le=\"0.000001\"} "));
	CHECK(strstr(r.body, "consentd_request_latency_seconds_bucket{protocol=\"http\",le=\"0.01\"} "));
	{
		/* Buckets cumulative, +Inf equal to _count, at least the two
		 * check requests. */
		const char *b = "consentd_request_latency_seconds_bucket{protocol=\"http\",le=\"";
		uint64_t prev = 0, v = 0, inf = 0, count = 0;
		const char *p = r.body;
		int buckets = 0;

		while ((p = strstr(p, b)) != NULL) {
			p = strchr(p, '}');
			if (!p || sscanf(p, "} %" SCNu64, &v) != 1)
				break;
			CHECK(v >= prev);
			prev = v;
			buckets++;
		}
		CHECK(buckets == METRICS_LATENCY_BUCKETS);
		inf = prev;
		p = strstr(r.body, "consentd_request_latency_seconds_count{protocol=\"http\"} ");
		CHECK(p && sscanf(strchr(p, '}'), "} %" SCNu64, &count) == 1);
		CHECK(count == inf && count >= 2);
		CHECK(strstr(r.body, "consentd_request_latency_seconds_sum{protocol=\"http\"} "));
	}
	CHECK(strstr(r.body, "# TYPE consentd_connections_open gauge\nconsentd_connections_open "));
	CHECK(strstr(r.body, "\nconsentd_records 4\n"));
	CHECK(strstr(r.body, "\nconsentd_generation 3\n"));
	CHECK(strstr(r.body, "\nconsentd_applied_sequence 42\n"));
	CHECK(strstr(r.body, "\nconsentd_data_as_of_timestamp_seconds "));
	CHECK(strstr(r.body, "\nconsentd_data_age_seconds "));
	CHECK(strstr(r.body, "\nconsentd_stale_soft_seconds 0\n"));
	CHECK(strstr(r.body, "\nconsentd_ready 1\n"));
	reply_free(&r);

	metrics_sum(&sum);
	CHECK(get("/v1/stats", &r) == 0);
	CHECK(r.status == 200);
	CHECKF(strstr(r.body, "{\"records\":4,\"applied_sequence\":42,"
			      "\"data_as_of\":") == r.body, "%s", r.body);
	snprintf(want, sizeof(want), ",\"generation\":3,\"checks_total\":%" PRIu64 "}",
		 metrics_checks_total(&sum));
	CHECKF(strstr(r.body, want) != NULL, "%s vs %s", r.body, want);
	reply_free(&r);
	http_stop(h);
}

static void test_tokens(void)
{
	static const char file[] = "# partners\n"
				   "partner " TOKEN_DIGEST " 100\n";
	struct server_config cfg = base_cfg();
	struct tokens *t = NULL;
	struct http *h;
	struct reply r;
	char err[160] = "";
	const char *ok = "Authorization: Bearer secret-token\r\n";
	const char *path =
		"/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ";

	CHECKF(tokens_parse(file, sizeof(file) - 1, &t, err, sizeof(err)) == 0,
	       "%s", err);
	if (!t)
		return;
	cfg.tokens = t;
	h = start(&cfg);
	workers_turn(0);
	/* Health, readiness and metrics need no token. */
	EXPECT_GET("/healthz", 200, "ok\n");
	EXPECT_GET("/readyz", 200, "ready\n");
	EXPECT_GET("/metrics", 200, NULL);
	/* /v1/ does. */
	CHECK(get(path, &r) == 0 && r.status == 401);
	CHECK(strstr(r.head, "WWW-Authenticate: Bearer") != NULL);
	CHECK_STREQ(r.body ? r.body : "",
		    "{\"error\":\"missing Authorization: Bearer token\"}");
	reply_free(&r);
	CHECK(call("GET", path, "Authorization: Bearer wrong\r\n", NULL, 0, &r) == 0);
	CHECK(r.status == 401);
	CHECK_STREQ(r.body ? r.body : "", "{\"error\":\"unknown token\"}");
	reply_free(&r);
	CHECK(call("GET", path, "Authorization: Basic c2VjcmV0LXRva2Vu\r\n", NULL,
		   0, &r) == 0);
	CHECK(r.status == 401);
	reply_free(&r);
	CHECK(call("GET", "/v1/stats", NULL, NULL, 0, &r) == 0 && r.status == 401);
	reply_free(&r);
	CHECK(call("POST", "/v1/check", NULL, "{\"checks\":[]}", 13, &r) == 0);
	CHECK(r.status == 401);
	reply_free(&r);

	CHECK(call("GET", path, ok, NULL, 0, &r) == 0);
	CHECK(r.status == 200 && strstr(r.body, "CONSENT_GIVEN"));
	reply_free(&r);
	CHECK(call("GET", path, "authorization: bearer   secret-token  \r\n", NULL,
		   0, &r) == 0);
	CHECK(r.status == 200 && strstr(r.body, "CONSENT_GIVEN"));
	reply_free(&r);
	/* Brand 200 exists but is not this partner's. */
	CHECK(call("GET",
		   "/v1/check?recipient=%2B905321234567&brand_code=200&channel=MESAJ",
		   ok, NULL, 0, &r) == 0);
	CHECK(r.status == 200);
	CHECK_STREQ(r.body, "{\"allow\":false,\"reason\":\"NOT_AUTHORIZED\"}");
	reply_free(&r);
	{
		const char *b = "{\"channel\":\"MESAJ\",\"checks\":["
				"{\"recipient\":\"+905321234567\",\"brand_code\":100},"
				"{\"recipient\":\"+905321234567\",\"brand_code\":200},"
				"{\"recipient\":\"+905321234567\",\"brand_code\":999}]}";

		CHECK(call("POST", "/v1/check", ok, b, strlen(b), &r) == 0);
		CHECK(r.status == 200);
		CHECKF(strstr(r.body, "\"reason\":\"CONSENT_GIVEN\"") &&
		       strstr(r.body, "{\"allow\":false,\"reason\":\"NOT_AUTHORIZED\"},"
				      "{\"allow\":false,\"reason\":\"NOT_AUTHORIZED\"}]"),
		       "%s", r.body);
		reply_free(&r);
	}
	CHECK(call("GET", "/v1/stats", ok, NULL, 0, &r) == 0 && r.status == 200);
	reply_free(&r);
	http_stop(h);
	tokens_destroy(t);
}

/* Generations swapped in while a client keeps checking: every answer is
 * whole and comes from one generation or the other. */
struct hammer {
	int n_ok;
	int n_bad;
	_Atomic int stop;
};

static void *hammer_main(void *arg)
{
	struct hammer *hm = arg;

	for (int i = 0; i < 2000 && !atomic_load(&hm->stop); i++) {
		struct reply r;

		if (get("/v1/check?recipient=%2B905321234567&brand_code=100"
			"&channel=MESAJ", &r) == 0 &&
		    r.status == 200 && strstr(r.body, "CONSENT_GIVEN"))
			hm->n_ok++;
		else
			hm->n_bad++;
		reply_free(&r);
	}
	return NULL;
}

static void test_swap_while_serving(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg);
	struct hammer hm = { 0 };
	pthread_t t;

	CHECK(pthread_create(&t, NULL, hammer_main, &hm) == 0);
	for (int g = 10; g < 16; g++) {
		struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };

		live_publish(make_index((uint64_t)g, (int64_t)time(NULL)));
		nanosleep(&ts, NULL);
	}
	atomic_store(&hm.stop, 1);
	pthread_join(t, NULL);
	CHECKF(hm.n_bad == 0 && hm.n_ok > 0, "ok %d bad %d", hm.n_ok, hm.n_bad);
	http_stop(h);
}

static void test_start_errors(void)
{
	struct server_config cfg = base_cfg();
	struct http *h = start(&cfg), *h2 = NULL;
	char addr[64], err[256] = "";
	static const char *const bad[] = {
		"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536",
		":7702", "::1:7702", "[::1]7702", "[::1", "no.such.host.invalid:1",
	};
	int e;

	/* The address in use: waited for cfg.bind_wait_ms (server/addr.h),
	 * then -EADDRINUSE with a message. */
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
	cfg.http_addr = addr;
	cfg.bind_wait_ms = 200;
	{
		struct timespec t0, t1;
		long ms;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		e = http_start(&cfg, HTTP_SLOT, &h2, err, sizeof(err));
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ms = (t1.tv_sec - t0.tv_sec) * 1000 +
		     (t1.tv_nsec - t0.tv_nsec) / 1000000;
		CHECKF(ms >= 200 && ms < 1000, "gave up after %ld ms", ms);
	}
	CHECKF(e == -EADDRINUSE, "%d %s", e, err);
	CHECKF(strstr(err, "Address already in use") != NULL, "%s", err);
	CHECK(h2 == NULL);
	http_stop(h);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cfg.http_addr = bad[i];
		err[0] = '\0';
		e = http_start(&cfg, HTTP_SLOT, &h2, err, sizeof(err));
		CHECKF(e == -EINVAL && h2 == NULL && err[0], "\"%s\": %d %s",
		       bad[i], e, err);
		if (!e)
			http_stop(h2);
	}
	/* IPv6 loopback, where the machine has it. */
	cfg.http_addr = "[::1]:0";
	e = http_start(&cfg, HTTP_SLOT, &h2, err, sizeof(err));
	if (e == 0) {
		struct sockaddr_in6 sa = { .sin6_family = AF_INET6,
					   .sin6_port = htons(http_port(h2)),
					   .sin6_addr = IN6ADDR_LOOPBACK_INIT };
		int fd = socket(AF_INET6, SOCK_STREAM, 0);
		struct reply r;
		const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n"
				  "Connection: close\r\n\r\n";

		char want[64];

		snprintf(want, sizeof(want), "[::1]:%u",
			 (unsigned)http_port(h2));
		CHECK_STREQ(http_bound(h2), want);
		workers_turn(0);
		CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
		send_all(fd, req, strlen(req));
		CHECK(read_reply(fd, &r) == 0 && r.status == 200);
		reply_free(&r);
		close(fd);
		http_stop(h2);
	} else {
		fprintf(stderr, "note: no IPv6 loopback here (%s)\n", err);
	}
	/* http_stop(NULL) is a no-op. */
	http_stop(NULL);
}

/* §10: as_of_time / as_of_sequence on /v1/check and GET /v1/history,
 * against a real evidence store. */
static void test_history(void)
{
	static const char file[] = "partner " TOKEN_DIGEST " 100\n";
	char dir[] = "/tmp/http_test_hist.XXXXXX", err[300];
	struct history *h = NULL;
	struct server_config cfg = base_cfg();
	struct tokens *t = NULL;
	struct http *srv;
	struct reply r;
	const char *auth = "Authorization: Bearer secret-token\r\n";

	CHECK(mkdtemp(dir) != NULL);
	CHECKF(history_open(dir, NULL, &h, err, sizeof(err)) == 0, "%s", err);
	if (h == NULL)
		return;
	Consent__V1__Consent ch[3];
	for (int i = 0; i < 3; i++) {
		Consent__V1__Consent x = CONSENT__V1__CONSENT__INIT;
		x.recipient = "+905321234567";
		x.channel = CONSENT__V1__CHANNEL__MESAJ;
		x.recipient_type = CONSENT__V1__RECIPIENT_TYPE__BIREYSEL;
		x.brand_code = i == 2 ? 200 : 100;
		x.iys_code = 7;
		x.status = i == 1 ? CONSENT__V1__STATUS__RET
				  : CONSENT__V1__STATUS__ONAY;
		x.source = CONSENT__V1__SOURCE__HS_WEB;
		x.consent_date = D1 + 100 * i;
		x.creation_date = D1 + 100 * i + 5;
		x.transaction_id = i == 0 ? "tx-\"a\"" : "tx-b";
		x.sequence = 40 + (uint64_t)i;
		ch[i] = x;
	}
	Consent__V1__Consent *cp[3] = { &ch[0], &ch[1], &ch[2] };
	CHECKF(history_append(h, cp, 3, D1 + 7, err, sizeof(err)) == 0, "%s",
	       err);
	cfg.history = h;
	srv = start(&cfg);
	live_publish(make_index(3, (int64_t)time(NULL)));

	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		   "&as_of_sequence=40", 200,
		   "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":\"ONAY\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000000,"
		   "\"sequence\":40,\"transaction_id\":\"tx-\\\"a\\\"\"}");
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		   "&asOfTime=1700000150", 200,
		   "{\"allow\":false,\"reason\":\"CONSENT_REJECTED\",\"status\":\"RET\","
		   "\"source\":\"HS_WEB\",\"consent_date\":1700000100,"
		   "\"sequence\":41,\"transaction_id\":\"tx-b\"}");
	/* No record then; before the start; both; bad text. */
	EXPECT_GET("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		   "&as_of_time=1600000000", 200,
		   "{\"allow\":false,\"reason\":\"NO_CONSENT\"}");
	CHECK(get("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		  "&as_of_sequence=39", &r) == 0);
	CHECKF(r.status == 200 && strstr(r.body, "INVALID_REQUEST") &&
	       strstr(r.body, "starts at sequence 40"), "%s", r.body);
	reply_free(&r);
	CHECK(get("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		  "&as_of_sequence=40&as_of_time=1700000000", &r) == 0);
	CHECKF(r.status == 200 && strstr(r.body, "at most one"), "%s", r.body);
	reply_free(&r);
	EXPECT_GET("/v1/check?recipient=x&brand_code=100&channel=MESAJ"
		   "&as_of_sequence=-1", 400,
		   "{\"error\":\"as_of_sequence: \\\"-1\\\" is not a sequence (a "
		   "uint64)\"}");
	EXPECT_GET("/v1/check?recipient=x&brand_code=100&channel=MESAJ"
		   "&as_of_time=99999999999999999999", 400,
		   "{\"error\":\"as_of_time: \\\"99999999999999999999\\\" is not "
		   "Unix seconds (an int64)\"}");
	/* POST: per check, as a number or proto3 JSON's string; not at the
	 * request's level. */
	CHECK(post("/v1/check", "{\"brand_code\":100,\"channel\":\"MESAJ\","
		   "\"checks\":[{\"recipient\":\"+905321234567\",\"as_of_sequence\":40},"
		   "{\"recipient\":\"+905321234567\",\"asOfSequence\":\"41\"},"
		   "{\"recipient\":\"+905321234567\"}]}", &r) == 0);
	CHECKF(r.status == 200 &&
	       strstr(r.body, "\"sequence\":40") && strstr(r.body, "\"sequence\":41") &&
	       strstr(r.body, "\"consent_date\":1700000000}]"), "%s", r.body);
	reply_free(&r);
	CHECK(post("/v1/check", "{\"as_of_sequence\":40,\"checks\":[]}", &r) == 0);
	CHECKF(r.status == 400 && strstr(r.body, "unknown field"), "%s", r.body);
	reply_free(&r);

	/* GET /v1/history: every field, oldest first, hex chains. */
	struct history_state st;
	history_state(h, &st);
	char head[65];
	for (int i = 0; i < 32; i++)
		snprintf(head + 2 * i, 3, "%02x", st.head[i]);
	CHECK(get("/v1/history?recipient=05321234567&brand_code=100"
		  "&channel=MESAJ", &r) == 0);
	CHECKF(r.status == 200 &&
	       strstr(r.body, "{\"entries\":[{\"consent\":{\"recipient\":"
			      "\"+905321234567\",\"channel\":\"MESAJ\","
			      "\"recipient_type\":\"BIREYSEL\",\"brand_code\":100,"
			      "\"iys_code\":7,\"status\":\"ONAY\",\"source\":"
			      "\"HS_WEB\",\"consent_date\":1700000000,"
			      "\"creation_date\":1700000005,\"transaction_id\":"
			      "\"tx-\\\"a\\\"\",\"sequence\":40},\"applied_at\":"
			      "1700000007,\"chain_hash\":\"") == r.body &&
	       strstr(r.body, "\"sequence\":41},\"applied_at\":1700000007,"
			      "\"chain_hash\":\"") != NULL &&
	       strstr(r.body, "\"applied_sequence\":42,\"total\":2,"
			      "\"truncated\":false}") != NULL, "%s", r.body);
	reply_free(&r);
	CHECK(get("/v1/history?recipient=%2B905321234567&brand_code=200"
		  "&channel=MESAJ", &r) == 0);
	CHECKF(r.status == 200 && strstr(r.body, head) != NULL, "%s", r.body);
	reply_free(&r);
	EXPECT_GET("/v1/history?recipient=%2B905321234567&brand_code=100"
		   "&channel=MESAJ&purpose=TICARI", 400,
		   "{\"error\":\"unknown parameter \\\"purpose\\\" (a history "
		   "names a key: recipient, brand_code, channel, "
		   "recipient_type)\"}");
	EXPECT_GET("/v1/history?recipient=%2B905321234567&brand_code=100", 400,
		   "{\"error\":\"channel: missing (ARAMA, MESAJ or EPOSTA)\"}");
	http_stop(srv);

	/* A partner (brand 100 only): brand 200's history is 403. */
	CHECKF(tokens_parse(file, sizeof(file) - 1, &t, err, sizeof(err)) == 0,
	       "%s", err);
	cfg.tokens = t;
	srv = start(&cfg);
	CHECK(call("GET", "/v1/history?recipient=%2B905321234567&brand_code=200"
		   "&channel=MESAJ", auth, NULL, 0, &r) == 0);
	CHECKF(r.status == 403, "%d %s", r.status, r.body);
	reply_free(&r);
	CHECK(call("GET", "/v1/history?recipient=%2B905321234567&brand_code=100"
		   "&channel=MESAJ", auth, NULL, 0, &r) == 0);
	CHECKF(r.status == 200 && strstr(r.body, "\"total\":2"), "%d %s",
	       r.status, r.body);
	reply_free(&r);
	http_stop(srv);

	/* History off. */
	cfg.tokens = NULL;
	cfg.history = NULL;
	srv = start(&cfg);
	EXPECT_GET("/v1/history?recipient=%2B905321234567&brand_code=100"
		   "&channel=MESAJ", 501,
		   "{\"error\":\"history is off (--history off)\"}");
	CHECK(get("/v1/check?recipient=%2B905321234567&brand_code=100&channel=MESAJ"
		  "&as_of_sequence=40", &r) == 0);
	CHECKF(r.status == 200 && strstr(r.body, "history is off"), "%s", r.body);
	reply_free(&r);
	http_stop(srv);
	live_publish(NULL);
	tokens_destroy(t);
	history_close(h);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	if (metrics_init(N_SLOTS) != 0) {
		fprintf(stderr, "metrics_init failed\n");
		return 1;
	}
	RUN(test_no_index);
	RUN(test_health);
	RUN(test_ready_and_stale);
	RUN(test_get_check);
	RUN(test_post_check);
	RUN(test_routes_and_methods);
	RUN(test_metrics_and_stats);
	RUN(test_tokens);
	RUN(test_swap_while_serving);
	RUN(test_start_errors);
	RUN(test_history);
	return check_summary();
}
