/*
 * json_test: the ops port's JSON (server/json.c): decoding POST /v1/check
 * bodies (defaults, aliases, numeric enums, every kind of bad body, the
 * check limit), query parameters, and the encoders' exact output; the
 * bodies of POST /v1/reject and /v1/outbox/pushed and the outbox's JSON.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "core/enums.h"
#include "index/outbox.h"
#include "server/json.h"
#include "tests/check.h"

static int decode(const char *body, struct json_check_request *req, char *err,
		  size_t cap)
{
	return json_decode_check_request(body, strlen(body), JSON_MAX_CHECKS,
					 req, err, cap);
}

static void test_decode_defaults(void)
{
	const char *body =
		"{\"brand_code\":600123,\"channel\":\"MESAJ\","
		"\"recipient_type\":\"TACIR\",\"purpose\":\"TICARI\","
		"\"checks\":["
		"{\"recipient\":\"+905321234567\"},"
		"{\"recipient\":\"a@b.com\",\"channel\":\"EPOSTA\","
		" \"brand_code\":7,\"recipient_type\":\"bireysel\","
		" \"purpose\":\"BILGILENDIRME\"},"
		"{\"recipient\":\"5321234567\",\"channel\":1,\"brandCode\":\"42\","
		" \"recipientType\":null}"
		"]}";
	struct json_check_request req;
	char err[256] = "";
	int e = decode(body, &req, err, sizeof(err));

	CHECKF(e == 0, "%d %s", e, err);
	if (e)
		return;
	CHECK(req.n_checks == 3);
	CHECK(req.checks[0].recipient_len == 13);
	CHECK(!memcmp(req.checks[0].recipient, "+905321234567", 13));
	CHECK(req.checks[0].brand_code == 600123);
	CHECK(req.checks[0].channel == CHANNEL_MESAJ);
	CHECK(req.checks[0].rtype == RTYPE_TACIR);
	CHECK(req.checks[0].purpose == PURPOSE_TICARI);

	CHECK(req.checks[1].recipient_len == 7);
	CHECK(req.checks[1].brand_code == 7);
	CHECK(req.checks[1].channel == CHANNEL_EPOSTA);
	CHECK(req.checks[1].rtype == RTYPE_BIREYSEL);
	CHECK(req.checks[1].purpose == PURPOSE_BILGILENDIRME);

	CHECK(req.checks[2].brand_code == 42);
	CHECK(req.checks[2].channel == CHANNEL_ARAMA);
	CHECK(req.checks[2].rtype == RTYPE_TACIR); /* null: the default */
	json_check_request_fini(&req);
	CHECK(req.checks == NULL && req.doc == NULL);
}

static void test_decode_unset(void)
{
	struct json_check_request req;
	char err[256] = "";
	int e;

	/* No defaults, no recipient: zeros and "", for check_batch to call
	 * INVALID_REQUEST. An empty list is a valid (empty) request. */
	e = decode("{\"checks\":[{}]}", &req, err, sizeof(err));
	CHECKF(e == 0, "%s", err);
	if (!e) {
		CHECK(req.n_checks == 1);
		CHECK(req.checks[0].recipient != NULL);
		CHECK(req.checks[0].recipient_len == 0);
		CHECK(req.checks[0].brand_code == 0);
		CHECK(req.checks[0].channel == 0);
		json_check_request_fini(&req);
	}
	e = decode(" {\"checks\":[]} \n", &req, err, sizeof(err));
	CHECKF(e == 0, "%s", err);
	if (!e) {
		CHECK(req.n_checks == 0);
		json_check_request_fini(&req);
	}
}

/* Each body must be refused with -EINVAL and a message containing want. */
static void expect_bad(const char *body, size_t len, const char *want)
{
	struct json_check_request req;
	char err[256] = "";
	int e = json_decode_check_request(body, len, JSON_MAX_CHECKS, &req, err,
					  sizeof(err));

	CHECKF(e == -EINVAL, "body %s: got %d (%s)", body, e, err);
	CHECKF(strstr(err, want) != NULL, "body %s: error \"%s\" lacks \"%s\"",
	       body, err, want);
	CHECK(req.checks == NULL && req.doc == NULL);
	/* Messages go back inside JSON and into logs: printable ASCII. */
	for (const char *p = err; *p; p++)
		CHECKF(*p >= 0x20 && *p < 0x7f, "body %s: byte 0x%02x in \"%s\"",
		       body, (unsigned char)*p, err);
	if (e == 0)
		json_check_request_fini(&req);
}

#define BAD(body, want) expect_bad(body, strlen(body), want)

static void test_decode_bad(void)
{
	BAD("", "not valid JSON");
	BAD("checks", "not valid JSON");
	BAD("{\"checks\":[}", "not valid JSON");
	BAD("{\"checks\":[]} x", "not valid JSON");
	BAD("{\"checks\":[]}{}", "not valid JSON");
	BAD("[]", "expected a JSON object");
	BAD("{}", "checks: missing");
	BAD("{\"checks\":null}", "checks: missing");
	BAD("{\"checks\":{}}", "checks: expected an array");
	BAD("{\"checks\":[1]}", "checks[0]: expected an object");
	BAD("{\"checks\":[{},\"x\"]}", "checks[1]: expected an object");
	BAD("{\"checks\":[],\"checks\":[]}", "duplicate");
	BAD("{\"checks\":[{\"recipient\":\"a\",\"recipient\":\"b\"}]}",
	    "duplicate");
	BAD("{\"checks\":[],\"brand\":1}", "unknown field \"brand\"");
	BAD("{\"checks\":[],\"recipient\":\"x\"}", "unknown field \"recipient\"");
	BAD("{\"checks\":[{\"phone\":\"x\"}]}", "checks[0].unknown field \"phone\"");
	BAD("{\"checks\":[{\"checks\":[]}]}", "checks[0].unknown field");

	/* Wrong types. */
	BAD("{\"checks\":[{\"recipient\":905321234567}]}",
	    "checks[0].recipient: expected a string");
	BAD("{\"checks\":[{\"recipient\":[\"x\"]}]}", "recipient: expected");
	BAD("{\"checks\":[],\"brand_code\":1.5}", "brand_code: expected an integer");
	BAD("{\"checks\":[],\"brand_code\":true}", "brand_code: expected");
	BAD("{\"checks\":[],\"brand_code\":-1}", "brand_code: -1 is outside");
	BAD("{\"checks\":[],\"brand_code\":4294967296}", "outside 0..4294967295");
	BAD("{\"checks\":[],\"brand_code\":\"12a\"}", "brand_code: \"12a\"");
	BAD("{\"checks\":[],\"brand_code\":\"\"}", "brand_code");
	BAD("{\"checks\":[],\"brand_code\":\"99999999999\"}", "brand_code");
	BAD("{\"checks\":[],\"channel\":{}}", "channel: expected a name or a number");
	BAD("{\"checks\":[],\"purpose\":false}", "purpose: expected");

	/* Unknown enum names and numbers. */
	BAD("{\"checks\":[],\"channel\":\"SMS\"}",
	    "channel: unknown value \"SMS\" (expected ARAMA, MESAJ or EPOSTA)");
	BAD("{\"checks\":[{\"channel\":\"MESAJX\"}]}",
	    "checks[0].channel: unknown value");
	BAD("{\"checks\":[],\"recipient_type\":\"KURUMSAL\"}",
	    "recipient_type: unknown value \"KURUMSAL\"");
	BAD("{\"checks\":[],\"purpose\":\"OTP\"}", "purpose: unknown value \"OTP\"");
	BAD("{\"checks\":[],\"channel\":4}", "channel: 4 is not a defined value");
	BAD("{\"checks\":[],\"channel\":-1}", "channel: -1 is not a defined");
	BAD("{\"checks\":[],\"purpose\":\"3\"}", "purpose: unknown value \"3\"");

	/* A NUL inside a string, escaped or raw. */
	BAD("{\"checks\":[{\"recipient\":\"+90532\\u0000\"}]}", "not valid JSON");
	{
		static const char raw[] = "{\"checks\":[{\"recipient\":\"a\0b\"}]}";

		expect_bad(raw, sizeof(raw) - 1, "not valid JSON");
	}
	/* Control bytes jansson quotes in its message come out as '?'. */
	BAD("{\"checks\":[{\x14recipient\":\"x\"}]}", "not valid JSON");
	BAD("{\"checks\":[\x01]}", "not valid JSON");
	/* Invalid UTF-8 is refused by jansson. */
	BAD("{\"checks\":[{\"recipient\":\"\xff\"}]}", "not valid JSON");
	/* An error quoting a client's text stays printable ASCII. */
	BAD("{\"checks\":[],\"channel\":\"\xc3\xa7\"}", "unknown value \"??\"");
}

static void test_decode_limits(void)
{
	struct json_check_request req;
	char err[256] = "";
	size_t n = 50, cap = 64 + n * 32;
	char *body = malloc(cap);
	size_t len;
	int e;

	/* n checks, limit n: fine; limit n - 1: -EMSGSIZE naming the count. */
	len = (size_t)sprintf(body, "{\"channel\":\"MESAJ\",\"checks\":[");
	for (size_t i = 0; i < n; i++)
		len += (size_t)sprintf(body + len, "%s{\"recipient\":\"x%zu\"}",
				       i ? "," : "", i);
	len += (size_t)sprintf(body + len, "]}");
	e = json_decode_check_request(body, len, n, &req, err, sizeof(err));
	CHECKF(e == 0, "%s", err);
	if (!e) {
		CHECK(req.n_checks == n);
		CHECK(req.checks[n - 1].channel == CHANNEL_MESAJ);
		json_check_request_fini(&req);
	}
	e = json_decode_check_request(body, len, n - 1, &req, err, sizeof(err));
	CHECKF(e == -EMSGSIZE, "%d", e);
	CHECKF(strstr(err, "limit of 49"), "%s", err);
	free(body);

	/* A huge array of scalars: counted by jansson, refused by count. */
	cap = 16 + (JSON_MAX_CHECKS + 1) * 2;
	body = malloc(cap);
	len = (size_t)sprintf(body, "{\"checks\":[");
	for (size_t i = 0; i <= JSON_MAX_CHECKS; i++)
		len += (size_t)sprintf(body + len, "%s1", i ? "," : "");
	len += (size_t)sprintf(body + len, "]}");
	e = json_decode_check_request(body, len, JSON_MAX_CHECKS, &req, err,
				      sizeof(err));
	CHECKF(e == -EMSGSIZE, "%d %s", e, err);
	CHECKF(strstr(err, "10001 of them, over the limit of 10000"), "%s", err);
	free(body);

	/* A megabyte of empty objects is refused before jansson builds it;
	 * brackets inside strings do not count. */
	cap = 16 + (JSON_MAX_CHECKS + 5) * 3;
	body = malloc(cap);
	len = (size_t)sprintf(body, "{\"checks\":[");
	for (size_t i = 0; i < JSON_MAX_CHECKS + 5; i++)
		len += (size_t)sprintf(body + len, "%s{}", i ? "," : "");
	len += (size_t)sprintf(body + len, "]}");
	e = json_decode_check_request(body, len, JSON_MAX_CHECKS, &req, err,
				      sizeof(err));
	CHECKF(e == -EMSGSIZE, "%d %s", e, err);
	free(body);
	{
		const char *b = "{\"checks\":[{\"recipient\":\"{{[[\\\"{{[\"}]}";

		e = json_decode_check_request(b, strlen(b), 1, &req, err,
					      sizeof(err));
		CHECKF(e == 0, "%s", err);
		if (!e) {
			CHECK(req.checks[0].recipient_len == 8);
			json_check_request_fini(&req);
		}
	}

	/* Over the body limit: refused without parsing. */
	e = json_decode_check_request("{", JSON_MAX_BODY_BYTES + 1,
				      JSON_MAX_CHECKS, &req, err, sizeof(err));
	CHECK(e == -EMSGSIZE);
	CHECKF(strstr(err, "over the limit of 1048576"), "%s", err);

	/* Deep nesting: jansson's depth limit, an error not a crash. */
	{
		size_t d = 5000;
		char *deep = malloc(d * 2 + 1);

		memset(deep, '[', d);
		memset(deep + d, ']', d);
		e = json_decode_check_request(deep, 2 * d, d, &req, err,
					      sizeof(err));
		CHECKF(e == -EINVAL, "%d %s", e, err);
		free(deep);
	}
}

/* The body ends at a page boundary followed by a PROT_NONE page: any read
 * past len faults at once. */
static void test_decode_no_overread(void)
{
	static const char body[] = "{\"checks\":[{\"recipient\":\"+905321234567\","
				   "\"brand_code\":1,\"channel\":\"MESAJ\"}]}";
	size_t page = (size_t)sysconf(_SC_PAGESIZE), len = sizeof(body) - 1;
	char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct json_check_request req;
	char err[256] = "";

	CHECK(map != MAP_FAILED);
	if (map == MAP_FAILED)
		return;
	CHECK(mprotect(map + page, page, PROT_NONE) == 0);
	/* Every prefix too: truncated bodies are errors, never over-reads. */
	for (size_t cut = 0; cut <= len; cut++) {
		char *at = map + page - cut;
		int e;

		memcpy(at, body, cut);
		e = json_decode_check_request(at, cut, JSON_MAX_CHECKS, &req, err,
					      sizeof(err));
		CHECKF(cut == len ? e == 0 : e == -EINVAL, "cut %zu: %d", cut, e);
		if (!e)
			json_check_request_fini(&req);
	}
	munmap(map, 2 * page);
}

static void test_enum_text(void)
{
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "", 0) == 0);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "mesaj", 5) == CHANNEL_MESAJ);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "EPOSTA", 6) == CHANNEL_EPOSTA);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "3", 1) == CHANNEL_EPOSTA);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "0", 1) == 0);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "4", 1) == -EINVAL);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "MESAJ ", 6) == -EINVAL);
	CHECK(json_enum_text(JSON_ENUM_CHANNEL, "9999999999", 10) == -EINVAL);
	CHECK(json_enum_text(JSON_ENUM_RTYPE, "TACIR", 5) == RTYPE_TACIR);
	CHECK(json_enum_text(JSON_ENUM_RTYPE, "MESAJ", 5) == -EINVAL);
	CHECK(json_enum_text(JSON_ENUM_PURPOSE, "BILGILENDIRMEx", 13) ==
	      PURPOSE_BILGILENDIRME); /* the length rules, not the NUL */

	uint32_t b = 1;
	CHECK(json_brand_text("0", 1, &b) == 0 && b == 0);
	CHECK(json_brand_text("4294967295", 10, &b) == 0 && b == UINT32_MAX);
	CHECK(json_brand_text("4294967296", 10, &b) == -EINVAL);
	CHECK(json_brand_text("", 0, &b) == -EINVAL);
	CHECK(json_brand_text("+1", 2, &b) == -EINVAL);
	CHECK(json_brand_text(" 1", 2, &b) == -EINVAL);
}

static void test_check_param(void)
{
	struct check_input c = { 0 };
	char err[192] = "";
	int a, b;

	a = json_check_param(&c, "recipient", 9, " 905321234567", 13, err,
			     sizeof(err));
	CHECK(a > 0);
	CHECK(c.recipient_len == 13 && c.recipient[0] == ' ');
	b = json_check_param(&c, "brandCode", 9, "600123", 6, err, sizeof(err));
	CHECK(b > 0 && b != a && c.brand_code == 600123);
	CHECK(json_check_param(&c, "brand_code", 10, "1", 1, err, sizeof(err)) ==
	      b); /* same field, same bit: the caller catches repeats */
	CHECK(json_check_param(&c, "channel", 7, "arama", 5, err, sizeof(err)) > 0);
	CHECK(c.channel == CHANNEL_ARAMA);
	CHECK(json_check_param(&c, "recipient_type", 14, "2", 1, err,
			       sizeof(err)) > 0);
	CHECK(c.rtype == RTYPE_TACIR);
	CHECK(json_check_param(&c, "purpose", 7, "BILGILENDIRME", 13, err,
			       sizeof(err)) > 0);
	CHECK(c.purpose == PURPOSE_BILGILENDIRME);

	CHECK(json_check_param(&c, "brand", 5, "1", 1, err, sizeof(err)) == -EINVAL);
	CHECK_STREQ(err, "unknown parameter \"brand\"");
	CHECK(json_check_param(&c, "checks", 6, "1", 1, err, sizeof(err)) == -EINVAL);
	CHECK(json_check_param(&c, "channel\0x", 9, "MESAJ", 5, err,
			       sizeof(err)) == -EINVAL);
	CHECK(json_check_param(&c, "channel", 7, "SMS", 3, err, sizeof(err)) ==
	      -EINVAL);
	CHECK_STREQ(err, "channel: unknown value \"SMS\" (expected ARAMA, MESAJ or EPOSTA)");
	CHECK(json_check_param(&c, "brand_code", 10, "x", 1, err, sizeof(err)) ==
	      -EINVAL);
	CHECK(strstr(err, "brand_code: \"x\"") != NULL);
}

static void test_encode(void)
{
	struct verdict found = { .allow = true, .reason = REASON_CONSENT_GIVEN,
				 .status = STATUS_ONAY, .source = 6,
				 .consent_date = 1700000000 };
	struct verdict none = { .allow = false, .reason = REASON_NO_CONSENT };
	struct verdict bad = { .allow = false, .reason = REASON_INVALID_REQUEST,
			       .error = "recipient: \"quoted\" text" };
	struct verdict ret = { .allow = false, .reason = REASON_CONSENT_REJECTED,
			       .status = STATUS_RET, .source = SOURCE_OTHER,
			       .consent_date = 1430427600 };
	struct verdict all[3] = { found, none, ret };
	struct json_stats st = { .records = 3, .applied_sequence = 77,
				 .data_as_of = 1700000100, .generation = 2,
				 .checks_total = 12 };
	char *s;

	s = json_encode_verdict(&found);
	CHECK_STREQ(s, "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":"
		       "\"ONAY\",\"source\":\"HS_WEB\",\"consent_date\":1700000000}");
	free(s);
	s = json_encode_verdict(&none);
	CHECK_STREQ(s, "{\"allow\":false,\"reason\":\"NO_CONSENT\"}");
	free(s);
	s = json_encode_verdict(&bad);
	CHECK_STREQ(s, "{\"allow\":false,\"reason\":\"INVALID_REQUEST\","
		       "\"error\":\"recipient: \\\"quoted\\\" text\"}");
	free(s);
	s = json_encode_check_response(all, 3, 77, 1700000100);
	CHECK_STREQ(s, "{\"verdicts\":["
		       "{\"allow\":true,\"reason\":\"CONSENT_GIVEN\",\"status\":"
		       "\"ONAY\",\"source\":\"HS_WEB\",\"consent_date\":1700000000},"
		       "{\"allow\":false,\"reason\":\"NO_CONSENT\"},"
		       "{\"allow\":false,\"reason\":\"CONSENT_REJECTED\",\"status\":"
		       "\"RET\",\"source\":\"SOURCE_OTHER\",\"consent_date\":1430427600}"
		       "],\"applied_sequence\":77,\"data_as_of\":1700000100}");
	free(s);
	s = json_encode_check_response(NULL, 0, UINT64_MAX, 0);
	CHECK_STREQ(s, "{\"verdicts\":[],\"applied_sequence\":9223372036854775807,"
		       "\"data_as_of\":0}");
	free(s);
	s = json_encode_stats(&st);
	CHECK_STREQ(s, "{\"records\":3,\"applied_sequence\":77,\"data_as_of\":"
		       "1700000100,\"generation\":2,\"checks_total\":12}");
	free(s);
	s = json_encode_error("checks: missing");
	CHECK_STREQ(s, "{\"error\":\"checks: missing\"}");
	free(s);
	s = json_encode_error("bad \xff byte");
	CHECK_STREQ(s, "{\"error\":\"bad ? byte\"}");
	free(s);
}

/* A large response parses back to what was encoded. */
static void test_encode_roundtrip(void)
{
	size_t n = JSON_MAX_CHECKS;
	struct verdict *v = calloc(n, sizeof(*v));
	json_error_t je;
	json_t *doc, *arr;
	char *s;

	for (size_t i = 0; i < n; i++) {
		v[i].reason = (uint8_t)(1 + i % 8);
		v[i].allow = i % 3 == 0;
		if (i % 2) {
			v[i].status = (uint8_t)(1 + i % 2);
			v[i].source = (uint8_t)(1 + i % 13);
			v[i].consent_date = 1430427600 + (int64_t)i;
		}
	}
	s = json_encode_check_response(v, n, 5, 6);
	CHECK(s != NULL);
	doc = s ? json_loads(s, 0, &je) : NULL;
	CHECK(doc != NULL);
	arr = json_object_get(doc, "verdicts");
	CHECK(json_array_size(arr) == n);
	for (size_t i = 0; i < json_array_size(arr); i += 997) {
		json_t *o = json_array_get(arr, i);

		CHECK(json_is_true(json_object_get(o, "allow")) == v[i].allow);
		CHECK_STREQ(json_string_value(json_object_get(o, "reason")),
			    enums_reason_name(v[i].reason));
		CHECK((json_object_get(o, "status") != NULL) == (v[i].status != 0));
		if (v[i].status)
			CHECK(json_integer_value(json_object_get(
				      o, "consent_date")) == v[i].consent_date);
	}
	json_decref(doc);
	free(s);
	free(v);
}

static void test_reject_and_outbox(void)
{
	struct json_reject jr;
	char err[256] = "", id[OUTBOX_TXID_MAX + 1];
	const char *b = "{\"recipient\":\"0532 123 45 67\",\"brandCode\":\"600123\","
			"\"channel\":\"mesaj\",\"recipient_type\":2,"
			"\"source\":\"HS_CAGRI_MERKEZI\"}";
	CHECKF(json_decode_reject(b, strlen(b), &jr, err, sizeof(err)) == 0,
	       "%s", err);
	CHECK(jr.recipient_len == 14 && memcmp(jr.recipient, "0532 123 45 67", 14) == 0);
	CHECK(jr.brand_code == 600123 && jr.channel == CHANNEL_MESAJ);
	CHECK(jr.recipient_type == RTYPE_TACIR && jr.source == 10);
	json_reject_fini(&jr);
	b = "{\"recipient\":\"a@b.co\",\"source\":10,\"channel\":null}";
	CHECK(json_decode_reject(b, strlen(b), &jr, err, sizeof(err)) == 0);
	CHECK(jr.source == 10 && jr.channel == 0 && jr.brand_code == 0);
	json_reject_fini(&jr);
	static const struct {
		const char *body, *err;
	} bad[] = {
		{ "{\"recipient\":\"x\",\"purpose\":\"TICARI\"}",
		  "unknown field \"purpose\"" },
		{ "{\"recipient\":\"x\",\"checks\":[]}", "unknown field \"checks\"" },
		{ "{\"nope\":1}", "unknown field \"nope\"" },
		{ "{\"source\":\"HS_NOPE\"}", "source: unknown value" },
		{ "{\"source\":99}", "source: unknown value" },
		{ "{\"source\":true}", "source: expected a name or a number" },
		{ "{\"channel\":\"SMS\"}", "channel: unknown value \"SMS\"" },
		{ "{\"brand_code\":-1}", "brand_code: -1 is outside" },
		{ "[1]", "body: expected a JSON object" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		CHECK(json_decode_reject(bad[i].body, strlen(bad[i].body), &jr, err,
					 sizeof(err)) == -EINVAL);
		CHECKF(strncmp(err, bad[i].err, strlen(bad[i].err)) == 0,
		       "%s: %s", bad[i].body, err);
	}

	uint64_t seq = 0;
	b = "{\"sequence\":42,\"transaction_id\":\"tx-1\"}";
	CHECK(json_decode_pushed(b, strlen(b), &seq, id, sizeof(id), err,
				 sizeof(err)) == 0);
	CHECK(seq == 42);
	CHECK_STREQ(id, "tx-1");
	static const struct {
		const char *body, *err;
	} badp[] = {
		{ "{\"sequence\":42}", "transaction_id: missing" },
		{ "{\"transaction_id\":\"a\"}", "sequence: missing" },
		{ "{\"sequence\":0,\"transaction_id\":\"a\"}", "sequence: expected" },
		{ "{\"sequence\":\"4\",\"transaction_id\":\"a\"}", "sequence: expected" },
		{ "{\"sequence\":4,\"transaction_id\":\"\"}", "transaction_id: expected" },
		{ "{\"sequence\":4,\"transaction_id\":\"a\",\"x\":1}",
		  "unknown field \"x\"" },
	};
	for (size_t i = 0; i < sizeof(badp) / sizeof(badp[0]); i++) {
		err[0] = '\0';
		CHECK(json_decode_pushed(badp[i].body, strlen(badp[i].body), &seq,
					 id, sizeof(id), err, sizeof(err)) == -EINVAL);
		CHECKF(strncmp(err, badp[i].err, strlen(badp[i].err)) == 0,
		       "%s: %s", badp[i].body, err);
	}

	struct outbox_entry e;
	memset(&e, 0, sizeof(e));
	e.sequence = 7;
	strcpy(e.recipient, "+905321234567");
	e.brand_code = 600123;
	e.channel = CHANNEL_MESAJ;
	e.recipient_type = RTYPE_BIREYSEL;
	e.source = 8;
	e.consent_date = 1790000000;
	e.state = OUTBOX_QUEUED;
	char *out = json_encode_outbox(&e, 1, 3);
	CHECK_STREQ(out, "{\"entries\":[{\"sequence\":7,\"recipient\":"
		    "\"+905321234567\",\"brand_code\":600123,\"iys_code\":0,"
		    "\"channel\":\"MESAJ\",\"recipient_type\":\"BIREYSEL\","
		    "\"source\":\"HS_MESAJ\",\"consent_date\":1790000000,"
		    "\"state\":\"queued\",\"transaction_id\":\"\"}],\"depth\":3}");
	free(out);
	out = json_encode_pushed(7);
	CHECK_STREQ(out, "{\"sequence\":7,\"state\":\"pushed\"}");
	free(out);
	out = json_encode_apply(9, 1, 0);
	CHECK_STREQ(out, "{\"applied_sequence\":9,\"applied\":1,\"skipped\":0}");
	free(out);
}

int main(void)
{
	RUN(test_decode_defaults);
	RUN(test_decode_unset);
	RUN(test_decode_bad);
	RUN(test_decode_limits);
	RUN(test_decode_no_overread);
	RUN(test_enum_text);
	RUN(test_check_param);
	RUN(test_encode);
	RUN(test_encode_roundtrip);
	RUN(test_reject_and_outbox);
	return check_summary();
}
