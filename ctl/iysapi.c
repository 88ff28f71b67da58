/*
 * iysapi: see iysapi.h. What İYS documents and what this file chose
 * where it is silent (README "Following İYS" lists both):
 *  - token: POST /oauth2/token, JSON {"username","password",
 *    "grant_type":"password"}, answered {access_token, refresh_token,
 *    expires_in, refresh_expires_in, token_type}; a refresh sends
 *    {"refresh_token","grant_type":"refresh_token"}. Calls carry
 *    "Authorization: Bearer TOKEN". The token is renewed min(300 s, a
 *    tenth of its life) before it expires (300 s is what a known client
 *    does), by refresh while the refresh token lives, else by password.
 *  - H084 from the token endpoint (its hourly quota) waits an hour, as a
 *    known client does, whatever the status it came with.
 *  - a 401 on a call drops the token and gets a new one; a password grant
 *    refused (400/401), or a fresh token refused at once, is -EACCES: the
 *    credentials are wrong or revoked, and retrying would only spend the
 *    token endpoint's small hourly quota.
 *  - rate: one budget for every request (token, changes, status, add),
 *    spaced at least 60/rate seconds apart, so no window of a minute ever
 *    holds more than rate requests, retries included.
 *  - TLS is verified (peer and host name); a certificate not trusted is
 *    fatal (-EPROTO), the rest of the transport failures are retried.
 *  - 429, 5xx and transport failures: backoff min(max, min * 2^n) with
 *    jitter (a uniform draw from its upper half), never shorter than the
 *    Retry-After the answer sent; n resets on an answer. A stopped İYS
 *    costs one request per backoff, never a spin.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "ctl/iysapi.h"

#define IYSAPI_BODY_MAX (64u << 20)
#define IYSAPI_TOKEN_MAX 4096

struct iysapi {
	struct iysapi_opts o;
	CURL *curl;
	char base[1024];
	char access[IYSAPI_TOKEN_MAX];
	char refresh[IYSAPI_TOKEN_MAX];
	int64_t access_renew_ns;  /* monotonic: renew from here on */
	int64_t refresh_until_ns; /* monotonic: the refresh token's end */
	int64_t next_ok_ns;       /* monotonic: the next request may start */
	int64_t interval_ns;
	unsigned attempt;         /* consecutive failures, for the backoff */
	uint64_t requests, retries;
	uint64_t rng;
	/* the exchange in progress */
	char *buf;
	size_t len, cap;
	bool overflow;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool iysapi_sleep_ms(volatile sig_atomic_t *stop, int64_t ms)
{
	int64_t end = now_ns() + ms * 1000000;

	for (;;) {
		int64_t left = end - now_ns();

		if (stop && *stop)
			return false;
		if (left <= 0)
			return true;
		if (left > 100000000)
			left = 100000000; /* look at the stop flag 10 times a second */
		struct timespec ts = { 0, (long)left };

		nanosleep(&ts, NULL);
	}
}

/* xorshift64*: jitter only, no need for a good generator. */
static double iysapi_rand01(struct iysapi *a)
{
	a->rng ^= a->rng >> 12;
	a->rng ^= a->rng << 25;
	a->rng ^= a->rng >> 27;
	return (double)((a->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static size_t iysapi_write(char *p, size_t size, size_t n, void *arg)
{
	struct iysapi *a = arg;
	size_t len = size * n;

	if (a->len + len + 1 > IYSAPI_BODY_MAX) {
		a->overflow = true;
		return 0; /* curl fails the transfer */
	}
	if (a->len + len + 1 > a->cap) {
		size_t cap = a->cap ? a->cap : 65536;
		char *nb;

		while (cap < a->len + len + 1)
			cap *= 2;
		nb = realloc(a->buf, cap);
		if (!nb)
			return 0;
		a->buf = nb;
		a->cap = cap;
	}
	memcpy(a->buf + a->len, p, len);
	a->len += len;
	a->buf[a->len] = '\0';
	return len;
}

int iysapi_create(const struct iysapi_opts *o, struct iysapi **out)
{
	struct iysapi *a = calloc(1, sizeof(*a));
	size_t bl;

	*out = NULL;
	if (!a)
		return -ENOMEM;
	a->o = *o;
	bl = strlen(o->base_url);
	while (bl && o->base_url[bl - 1] == '/')
		bl--;
	if (bl == 0 || bl >= sizeof(a->base) ||
	    (strncmp(o->base_url, "http://", 7) != 0 &&
	     strncmp(o->base_url, "https://", 8) != 0)) {
		fprintf(stderr, "pull: --iys wants an http:// or https:// URL\n");
		free(a);
		return -EINVAL;
	}
	memcpy(a->base, o->base_url, bl);
	a->base[bl] = '\0';
	a->interval_ns = (int64_t)(60e9 / o->rate_per_min);
	a->rng = (uint64_t)now_ns() | 1;
	a->curl = curl_easy_init();
	if (!a->curl) {
		free(a);
		return -ENOMEM;
	}
	*out = a;
	return 0;
}

void iysapi_destroy(struct iysapi *a)
{
	if (!a)
		return;
	curl_easy_cleanup(a->curl);
	free(a->buf);
	/* The tokens are secrets too. */
	memset(a->access, 0, sizeof(a->access));
	memset(a->refresh, 0, sizeof(a->refresh));
	free(a);
}

void iysapi_reply_fini(struct iysapi_reply *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}

void iysapi_counts(const struct iysapi *a, uint64_t *requests,
		   uint64_t *retries)
{
	*requests = a->requests;
	*retries = a->retries;
}

/* İYS's error body {"errors":[{"code","message",...}]}: the first one. */
static void iysapi_error_of(const char *body, size_t len, char *code,
			    size_t code_cap, char *msg, size_t msg_cap)
{
	json_t *j = json_loadb(body, len, 0, NULL);
	json_t *e = json_array_get(json_object_get(j, "errors"), 0);
	json_t *c = json_object_get(e, "code"), *m = json_object_get(e, "message");

	code[0] = msg[0] = '\0';
	if (json_is_string(c))
		snprintf(code, code_cap, "%s", json_string_value(c));
	if (json_is_string(m))
		snprintf(msg, msg_cap, "%s", json_string_value(m));
	json_decref(j);
}

/* The outcome of one exchange. */
enum iysapi_outcome {
	IYSAPI_ANSWER,     /* a status and body */
	IYSAPI_NOT_SENT,   /* no connection: İYS never saw it */
	IYSAPI_UNKNOWN,    /* sent, or maybe sent, and no whole answer */
	IYSAPI_REFUSED,    /* TLS: İYS's certificate not trusted; fatal */
};

/* Waits for the rate budget, then one exchange. */
static enum iysapi_outcome iysapi_exchange(struct iysapi *a, const char *method,
					   const char *url, const char *json,
					   bool auth, bool idempotent, long *status,
					   double *retry_after_s)
{
	struct curl_slist *h = NULL;
	char authz[IYSAPI_TOKEN_MAX + 32];
	curl_off_t ra = -1;
	CURLcode cc;
	int64_t wait = a->next_ok_ns - now_ns();

	if (wait > 0)
		iysapi_sleep_ms(a->o.stop, (wait + 999999) / 1000000);
	a->next_ok_ns = now_ns() + a->interval_ns;
	a->requests++;
	a->len = 0;
	a->overflow = false;
	*status = 0;
	*retry_after_s = 0;
	h = curl_slist_append(h, "Accept: application/json");
	if (json)
		h = curl_slist_append(h, "Content-Type: application/json");
	if (auth) {
		snprintf(authz, sizeof(authz), "Authorization: Bearer %s", a->access);
		h = curl_slist_append(h, authz);
	}
	curl_easy_reset(a->curl);
	curl_easy_setopt(a->curl, CURLOPT_URL, url);
	curl_easy_setopt(a->curl, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(a->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(a->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(a->curl, CURLOPT_TIMEOUT_MS, (long)a->o.timeout_ms);
	curl_easy_setopt(a->curl, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)(a->o.timeout_ms < 10000 ? a->o.timeout_ms : 10000));
	curl_easy_setopt(a->curl, CURLOPT_WRITEFUNCTION, iysapi_write);
	curl_easy_setopt(a->curl, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(a->curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(a->curl, CURLOPT_SSL_VERIFYHOST, 2L);
	if (a->o.ca_file)
		curl_easy_setopt(a->curl, CURLOPT_CAINFO, a->o.ca_file);
	if (!idempotent) {
		/* libcurl sends a request again, unasked, when a kept-alive
		 * connection it reused dies before an answer: for an add that
		 * would be a second push İYS may take. A connection of its own
		 * has nothing to retry on. */
		curl_easy_setopt(a->curl, CURLOPT_FRESH_CONNECT, 1L);
		curl_easy_setopt(a->curl, CURLOPT_FORBID_REUSE, 1L);
	}
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(a->curl, CURLOPT_POST, 1L);
		curl_easy_setopt(a->curl, CURLOPT_POSTFIELDS, json ? json : "");
	} else {
		curl_easy_setopt(a->curl, CURLOPT_HTTPGET, 1L);
	}
	cc = curl_easy_perform(a->curl);
	curl_slist_free_all(h);
	memset(authz, 0, sizeof(authz));
	if (cc != CURLE_OK) {
		fprintf(stderr, "pull: %s %s: %s\n", method, url,
			a->overflow ? "answer over 64 MiB" : curl_easy_strerror(cc));
		/* A certificate nobody trusts is configuration, not weather:
		 * retrying would not change it. */
		if (cc == CURLE_PEER_FAILED_VERIFICATION ||
		    cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_CERTPROBLEM)
			return IYSAPI_REFUSED;
		if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
		    cc == CURLE_COULDNT_RESOLVE_PROXY)
			return IYSAPI_NOT_SENT;
		return IYSAPI_UNKNOWN;
	}
	curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, status);
	if (curl_easy_getinfo(a->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK &&
	    ra > 0)
		*retry_after_s = (double)ra;
	if (!a->buf || a->len == 0)
		iysapi_write("", 0, 0, a); /* an empty body is still a string */
	return IYSAPI_ANSWER;
}

/* One backoff; false when stopped. */
static bool iysapi_backoff(struct iysapi *a, double retry_after_s,
			   const char *why)
{
	double ms = a->o.retry_min_ms;
	int64_t wait;

	for (unsigned i = 0; i < a->attempt && ms < a->o.retry_max_ms; i++)
		ms *= 2;
	if (ms > a->o.retry_max_ms)
		ms = a->o.retry_max_ms;
	ms = ms / 2 + iysapi_rand01(a) * ms / 2;
	if (ms < retry_after_s * 1000)
		ms = retry_after_s * 1000;
	wait = (int64_t)ms;
	a->attempt++;
	a->retries++;
	fprintf(stderr, "pull: %s: retrying in %.1f s\n", why, (double)wait / 1000);
	return iysapi_sleep_ms(a->o.stop, wait);
}

static int iysapi_take_token(struct iysapi *a, const char *body, size_t len)
{
	json_t *j = json_loadb(body, len, 0, NULL);
	json_t *at = json_object_get(j, "access_token");
	json_t *rt = json_object_get(j, "refresh_token");
	json_t *ex = json_object_get(j, "expires_in");
	json_t *rex = json_object_get(j, "refresh_expires_in");
	int64_t now = now_ns(), life, margin;

	if (!json_is_string(at) || json_string_length(at) == 0 ||
	    json_string_length(at) >= IYSAPI_TOKEN_MAX || !json_is_integer(ex) ||
	    json_integer_value(ex) <= 0) {
		json_decref(j);
		fprintf(stderr, "pull: the token answer lacks access_token or "
			"expires_in\n");
		return -EPROTO;
	}
	snprintf(a->access, sizeof(a->access), "%s", json_string_value(at));
	life = json_integer_value(ex);
	margin = life / 10 < 300 ? life / 10 : 300;
	a->access_renew_ns = now + (life - margin) * 1000000000ll;
	if (json_is_string(rt) && json_string_length(rt) < IYSAPI_TOKEN_MAX) {
		snprintf(a->refresh, sizeof(a->refresh), "%s", json_string_value(rt));
		life = json_is_integer(rex) ? json_integer_value(rex) : 0;
		a->refresh_until_ns = now + (life > 1 ? life - 1 : 0) * 1000000000ll;
	} else {
		a->refresh[0] = '\0';
		a->refresh_until_ns = 0;
	}
	json_decref(j);
	return 0;
}

/* A token to use: the one held unless it is due for renewal. */
static int iysapi_token(struct iysapi *a)
{
	char url[1100];

	snprintf(url, sizeof(url), "%s/oauth2/token", a->base);
	while (a->access[0] == '\0' || now_ns() >= a->access_renew_ns) {
		bool by_refresh = a->refresh[0] && now_ns() < a->refresh_until_ns;
		json_t *req = by_refresh ?
			json_pack("{s:s, s:s}", "refresh_token", a->refresh,
				  "grant_type", "refresh_token") :
			json_pack("{s:s, s:s, s:s}", "username", a->o.cred->username,
				  "password", a->o.cred->password,
				  "grant_type", "password");
		char *body = json_dumps(req, JSON_COMPACT);
		double ra;
		long st;
		enum iysapi_outcome out;

		json_decref(req);
		if (!body)
			return -ENOMEM;
		if (a->o.stop && *a->o.stop) {
			free(body);
			return -EINTR;
		}
		out = iysapi_exchange(a, "POST", url, body, false, true, &st, &ra);
		memset(body, 0, strlen(body));
		free(body);
		if (out == IYSAPI_REFUSED)
			return -EPROTO;
		if (out == IYSAPI_ANSWER && st == 200) {
			int rc = iysapi_take_token(a, a->buf, a->len);

			if (rc < 0)
				return rc;
			a->attempt = 0;
			fprintf(stderr, "pull: token %s\n",
				by_refresh ? "refreshed" : "obtained (password grant)");
			return 0;
		}
		if (out == IYSAPI_ANSWER && st != 200) {
			char code[32], msg[256];

			iysapi_error_of(a->buf, a->len, code, sizeof(code), msg,
					sizeof(msg));
			if (strcmp(code, "H084") == 0) {
				/* The token endpoint's hourly quota: asking again
				 * before the hour is out only spends it. */
				fprintf(stderr, "pull: token: İYS's hourly token "
					"limit (H084 %s): waiting\n", msg);
				if (!iysapi_backoff(a, ra > 3600 ? ra : 3600,
						    "token: H084"))
					return -EINTR;
				continue;
			}
		}
		if (out == IYSAPI_ANSWER && (st == 400 || st == 401) && by_refresh) {
			/* The refresh token is spent or revoked: the password. */
			fprintf(stderr, "pull: token refresh refused (%ld): "
				"password grant\n", st);
			a->refresh[0] = '\0';
			continue;
		}
		if (out == IYSAPI_ANSWER && (st == 400 || st == 401 || st == 403)) {
			char code[32], msg[256];

			iysapi_error_of(a->buf, a->len, code, sizeof(code), msg,
					sizeof(msg));
			fprintf(stderr, "pull: İYS refused the credentials of "
				"user %s: HTTP %ld %s %s\n", a->o.cred->username,
				st, code, msg);
			return -EACCES;
		}
		char why[64];

		snprintf(why, sizeof(why), "token: %s",
			 out == IYSAPI_ANSWER ? (st == 429 ? "HTTP 429" : "HTTP error") :
						"no answer");
		if (out == IYSAPI_ANSWER && st != 429 && st < 500) {
			fprintf(stderr, "pull: token endpoint answered %ld\n", st);
			return -EPROTO;
		}
		if (!iysapi_backoff(a, ra, why))
			return -EINTR;
	}
	return 0;
}

/* One API call with the retry rules of iysapi.h. */
static int iysapi_call(struct iysapi *a, const char *method, const char *url,
		       const char *json, bool idempotent, struct iysapi_reply *r)
{
	bool fresh_refused = false;

	memset(r, 0, sizeof(*r));
	for (;;) {
		bool fresh = a->access[0] == '\0' || now_ns() >= a->access_renew_ns;
		int rc = iysapi_token(a);
		enum iysapi_outcome out;
		double ra;
		long st;
		char why[96];

		if (rc < 0)
			return rc;
		if (a->o.stop && *a->o.stop)
			return -EINTR;
		out = iysapi_exchange(a, method, url, json, true, idempotent, &st,
				      &ra);
		if (out == IYSAPI_REFUSED)
			return -EPROTO;
		if (out == IYSAPI_UNKNOWN && !idempotent)
			return -EAGAIN;
		if (out == IYSAPI_ANSWER && st == 401) {
			/* Expired or revoked: a new token, once. */
			if (fresh && fresh_refused) {
				fprintf(stderr, "pull: İYS refuses a token it "
					"has just issued (401): stopping\n");
				return -EACCES;
			}
			fresh_refused = fresh;
			fprintf(stderr, "pull: %s: 401: a new token\n", url);
			a->access[0] = '\0';
			continue;
		}
		if (out == IYSAPI_ANSWER && st >= 500 && !idempotent)
			return -EAGAIN;
		if (out == IYSAPI_ANSWER && st != 429 && st < 500) {
			a->attempt = 0;
			r->status = st;
			r->body = a->buf;
			r->len = a->len;
			a->buf = NULL;
			a->len = a->cap = 0;
			if (st != 200)
				iysapi_error_of(r->body, r->len, r->code,
						sizeof(r->code), r->message,
						sizeof(r->message));
			return 0;
		}
		if (out == IYSAPI_ANSWER)
			snprintf(why, sizeof(why), "HTTP %ld", st);
		else
			snprintf(why, sizeof(why), "no answer");
		if (!iysapi_backoff(a, ra, why))
			return -EINTR;
	}
}

int iysapi_changes(struct iysapi *a, uint32_t brand, const char *source,
		   const char *after, unsigned limit, struct iysapi_reply *r)
{
	char url[2048];
	int n;

	n = snprintf(url, sizeof(url),
		     "%s/sps/%" PRIu32 "/brands/%" PRIu32
		     "/consents/changes?source=%s&limit=%u", a->base,
		     a->o.iys_code, brand, source, limit);
	if (after && after[0]) {
		char *esc = curl_easy_escape(a->curl, after, 0);

		if (!esc)
			return -ENOMEM;
		n += snprintf(url + n, sizeof(url) - (size_t)n, "&after=%s", esc);
		curl_free(esc);
	}
	if ((size_t)n >= sizeof(url))
		return -ENAMETOOLONG;
	return iysapi_call(a, "GET", url, NULL, true, r);
}

int iysapi_status(struct iysapi *a, uint32_t brand, const char *json,
		  struct iysapi_reply *r)
{
	char url[1200];

	snprintf(url, sizeof(url), "%s/sps/%" PRIu32 "/brands/%" PRIu32
		 "/consents/status", a->base, a->o.iys_code, brand);
	return iysapi_call(a, "POST", url, json, true, r);
}

int iysapi_add(struct iysapi *a, uint32_t brand, const char *json,
	       struct iysapi_reply *r)
{
	char url[1200];

	snprintf(url, sizeof(url), "%s/sps/%" PRIu32 "/brands/%" PRIu32
		 "/consents", a->base, a->o.iys_code, brand);
	return iysapi_call(a, "POST", url, json, false, r);
}
