/*
 * outpush: see outpush.h. The ops port's contract (consentd, DESIGN §11):
 *   GET  /v1/outbox?limit=N -> {"entries":[{sequence, recipient,
 *        brand_code, iys_code, channel, recipient_type, source,
 *        consent_date, state: queued|pushed, transaction_id}], "depth"}
 *        oldest first;
 *   POST /v1/outbox/pushed {"sequence","transaction_id"} -> 200 once
 *        durable (the same id again: 200; another: 409; unknown: 404).
 * İYS's (domain.md §2.2): add one consent POST /sps/{iysCode}/brands/
 * {brandCode}/consents with the record {recipient, type, source, status,
 * consentDate (Turkey time), recipientType} -> 200 {transactionId,
 * creationDate}, 422 {errors:[...]}; query one POST .../consents/status
 * {recipient, recipientType, type} -> the record (status, consentDate,
 * ...), no record: 404 (İYS's documents say nothing of the no-record
 * answer; a 404 is taken as none).
 *
 * Nothing is pushed twice, across crashes too. İYS documents no request
 * id for add-consent, so the push is guarded by asking: before every push
 * of an entry (the first in this process, and each after an outcome left
 * unknown: a timeout, a lost connection, a 5xx) the connector queries the
 * key's status, and a RET at İYS dated at or after the entry's
 * consent_date means İYS holds it (pushed before a crash between İYS's
 * answer and the mark, or a later rejection): it is not pushed again but
 * left for consentd to reconcile when the pull brings İYS's copy back.
 * The window this leaves is İYS answering a status query without a write
 * it acknowledged (a read not seeing the write before it); İYS documents
 * nothing either way, and this assumes it reads its own writes. A 422
 * (İYS's validation: H174 RET on RET, H175 a first RET, H178 an older
 * date, ...) is reported with İYS's code and message and the entry left
 * queued for an operator; it is not retried by this process.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "core/tztime.h"
#include "ctl/outpush.h"

/* Entries asked for at once: the ops port's most. Pushed entries stay
 * listed until the pull brings İYS's copy back (an hour or more with
 * İYS), so more than this many pushed and unreconciled entries ahead of a
 * queued one would hide it until some are reconciled. */
#define OUTPUSH_BATCH 1000
#define OUTPUSH_PARKED_MAX 65536
#define OUTPUSH_BODY_MAX (16u << 20)

struct outpush {
	const struct pull_opts *o;
	struct iysapi *api;
	volatile sig_atomic_t *stop;
	CURL *curl;
	char base[300];
	char *buf;
	size_t len, cap;
	/* Entries this process will not touch again: İYS holds them or
	 * refused them. */
	uint64_t parked[OUTPUSH_PARKED_MAX];
	size_t n_parked;
	uint64_t pushed, found, refused;
};

struct outpush_entry {
	uint64_t sequence;
	uint32_t brand, iys_code;
	const char *recipient, *channel, *rtype, *source;
	int64_t consent_date;
};

static size_t outpush_write(char *p, size_t size, size_t n, void *arg)
{
	struct outpush *ob = arg;
	size_t len = size * n;

	if (ob->len + len + 1 > OUTPUSH_BODY_MAX)
		return 0;
	if (ob->len + len + 1 > ob->cap) {
		size_t cap = ob->cap ? ob->cap * 2 : 65536;
		char *nb;

		while (cap < ob->len + len + 1)
			cap *= 2;
		nb = realloc(ob->buf, cap);
		if (!nb)
			return 0;
		ob->buf = nb;
		ob->cap = cap;
	}
	memcpy(ob->buf + ob->len, p, len);
	ob->len += len;
	ob->buf[ob->len] = '\0';
	return len;
}

int outpush_create(const char *ops, struct iysapi *api,
		  const struct pull_opts *o, volatile sig_atomic_t *stop,
		  struct outpush **out)
{
	struct outpush *ob = calloc(1, sizeof(*ob));

	*out = NULL;
	if (!ob)
		return -ENOMEM;
	if (strlen(ops) > 200 || strchr(ops, '/')) {
		fprintf(stderr, "pull: --ops wants HOST:PORT\n");
		free(ob);
		return -EINVAL;
	}
	snprintf(ob->base, sizeof(ob->base), "http://%s", ops);
	ob->o = o;
	ob->api = api;
	ob->stop = stop;
	ob->curl = curl_easy_init();
	if (!ob->curl) {
		free(ob);
		return -ENOMEM;
	}
	*out = ob;
	return 0;
}

void outpush_destroy(struct outpush *ob)
{
	if (!ob)
		return;
	curl_easy_cleanup(ob->curl);
	free(ob->buf);
	free(ob);
}

/* One exchange with the ops port: the status, or -1 without an answer. */
static long outpush_ops(struct outpush *ob, const char *path, const char *json)
{
	char url[512], authz[4200];
	struct curl_slist *h = NULL;
	long st = -1;
	CURLcode cc;

	snprintf(url, sizeof(url), "%s%s", ob->base, path);
	ob->len = 0;
	curl_easy_reset(ob->curl);
	curl_easy_setopt(ob->curl, CURLOPT_URL, url);
	curl_easy_setopt(ob->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(ob->curl, CURLOPT_PROTOCOLS_STR, "http");
	curl_easy_setopt(ob->curl, CURLOPT_TIMEOUT_MS, (long)ob->o->timeout_ms);
	curl_easy_setopt(ob->curl, CURLOPT_WRITEFUNCTION, outpush_write);
	curl_easy_setopt(ob->curl, CURLOPT_WRITEDATA, ob);
	if (ob->o->token) {
		/* The ops port's /v1/ wants the partner's token (the 'apply'
		 * right) when consentd has a token file. */
		snprintf(authz, sizeof(authz), "Authorization: Bearer %s",
			 ob->o->token);
		h = curl_slist_append(h, authz);
	}
	if (json) {
		h = curl_slist_append(h, "Content-Type: application/json");
		curl_easy_setopt(ob->curl, CURLOPT_POSTFIELDS, json);
	}
	curl_easy_setopt(ob->curl, CURLOPT_HTTPHEADER, h);
	cc = curl_easy_perform(ob->curl);
	curl_slist_free_all(h);
	if (cc != CURLE_OK) {
		fprintf(stderr, "pull: outbox: %s: %s\n", url, curl_easy_strerror(cc));
		return -1;
	}
	curl_easy_getinfo(ob->curl, CURLINFO_RESPONSE_CODE, &st);
	if (!ob->buf)
		outpush_write("", 0, 0, ob);
	return st;
}

static bool outpush_is_parked(const struct outpush *ob, uint64_t seq)
{
	for (size_t i = 0; i < ob->n_parked; i++)
		if (ob->parked[i] == seq)
			return true;
	return false;
}

static void outpush_park(struct outpush *ob, uint64_t seq)
{
	if (ob->n_parked < OUTPUSH_PARKED_MAX)
		ob->parked[ob->n_parked++] = seq;
}

static bool outpush_sleep(struct outpush *ob, unsigned *attempt)
{
	int64_t ms = ob->o->retry_min_ms;

	for (unsigned i = 0; i < *attempt && ms < ob->o->retry_max_ms; i++)
		ms *= 2;
	if (ms > ob->o->retry_max_ms)
		ms = ob->o->retry_max_ms;
	(*attempt)++;
	return iysapi_sleep_ms(ob->stop, ms / 2 + rand() % (ms / 2 + 1));
}

/* Marks e pushed with tx on the ops port, retrying until an answer. */
static int outpush_mark(struct outpush *ob, const struct outpush_entry *e,
		       const char *tx)
{
	json_t *j = json_pack("{s:I, s:s}", "sequence", (json_int_t)e->sequence,
			      "transaction_id", tx);
	char *body = json_dumps(j, JSON_COMPACT);
	unsigned attempt = 0;
	int rc = -EPROTO;

	json_decref(j);
	if (!body)
		return -ENOMEM;
	for (;;) {
		long st = outpush_ops(ob, "/v1/outbox/pushed", body);

		if (st == 200) {
			rc = 0;
			break;
		}
		if (st == 409 || st == 404) {
			fprintf(stderr, "pull: outbox: entry %" PRIu64 ": marking it "
				"pushed (transactionId %s) answered %ld: %s\n",
				e->sequence, tx, st, ob->buf ? ob->buf : "");
			rc = 0; /* reported; the entry is consentd's business */
			break;
		}
		if (st > 0 && st < 500 && st != 429) {
			fprintf(stderr, "pull: outbox: marking entry %" PRIu64
				" answered %ld: %s\n", e->sequence, st,
				ob->buf ? ob->buf : "");
			break;
		}
		if (!outpush_sleep(ob, &attempt)) {
			rc = -EINTR;
			break;
		}
	}
	free(body);
	return rc;
}

/* 1: İYS holds a RET for e's key dated at or after e's; 0: it does not;
 * < 0 an error. */
static int outpush_at_iys(struct outpush *ob, const struct outpush_entry *e)
{
	json_t *q = json_pack("{s:s, s:s, s:s}", "recipient", e->recipient,
			      "recipientType", e->rtype, "type", e->channel);
	char *body = json_dumps(q, JSON_COMPACT);
	struct iysapi_reply r;
	int rc;

	json_decref(q);
	if (!body)
		return -ENOMEM;
	rc = iysapi_status(ob->api, e->brand, body, &r);
	free(body);
	if (rc < 0)
		return rc;
	if (r.status == 404) {
		iysapi_reply_fini(&r);
		return 0;
	}
	if (r.status != 200) {
		fprintf(stderr, "pull: outbox: entry %" PRIu64 ": İYS's status "
			"query answered HTTP %ld %s %s\n", e->sequence, r.status,
			r.code, r.message);
		iysapi_reply_fini(&r);
		return -EPROTO;
	}
	json_t *j = json_loadb(r.body, r.len, 0, NULL);
	json_t *st = json_object_get(j, "status");
	json_t *cd = json_object_get(j, "consentDate");
	int64_t when = 0;

	rc = 0;
	if (json_is_string(st) && (strcmp(json_string_value(st), "RET") == 0 ||
				   strcmp(json_string_value(st), "RED") == 0) &&
	    json_is_string(cd) &&
	    tztime_parse(json_string_value(cd), json_string_length(cd), &when,
			 NULL) == 0 &&
	    when >= e->consent_date)
		rc = 1;
	json_decref(j);
	iysapi_reply_fini(&r);
	return rc;
}

/* One entry through to pushed, found, refused, or an error. */
static int outpush_entry_push(struct outpush *ob, const struct outpush_entry *e)
{
	char date[TZTIME_TEXT_LEN + 1];
	unsigned attempt = 0;

	if (tztime_format(e->consent_date, date, sizeof(date)) < 0) {
		fprintf(stderr, "pull: outbox: entry %" PRIu64 ": consent_date %"
			PRId64 " out of range\n", e->sequence, e->consent_date);
		outpush_park(ob, e->sequence);
		return 0;
	}
	for (;;) {
		int rc = outpush_at_iys(ob, e);

		if (rc < 0)
			return rc == -EPROTO ? 0 : rc;
		if (rc == 1) {
			fprintf(stderr, "pull: outbox: entry %" PRIu64 " (%s, brand %"
				PRIu32 ", %s): İYS holds a RET of %s or later "
				"already; not pushed again, left for the pull to "
				"reconcile\n", e->sequence, e->recipient, e->brand,
				e->channel, date);
			ob->found++;
			outpush_park(ob, e->sequence);
			return 0;
		}
		json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}",
					"recipient", e->recipient, "type", e->channel,
					"source", e->source, "status", "RET",
					"consentDate", date, "recipientType", e->rtype);
		char *body = json_dumps(rec, JSON_COMPACT);
		struct iysapi_reply r;

		json_decref(rec);
		if (!body)
			return -ENOMEM;
		rc = iysapi_add(ob->api, e->brand, body, &r);
		free(body);
		if (rc == -EAGAIN) {
			/* İYS may hold it now: ask again before any re-push. */
			if (!outpush_sleep(ob, &attempt))
				return -EINTR;
			continue;
		}
		if (rc < 0)
			return rc;
		if (r.status != 200) {
			fprintf(stderr, "pull: outbox: entry %" PRIu64 " (%s, brand %"
				PRIu32 ", %s): İYS refused it: HTTP %ld %s %s; left "
				"queued, not retried by this process\n", e->sequence,
				e->recipient, e->brand, e->channel, r.status, r.code,
				r.message);
			ob->refused++;
			outpush_park(ob, e->sequence);
			iysapi_reply_fini(&r);
			return 0;
		}
		json_t *j = json_loadb(r.body, r.len, 0, NULL);
		json_t *tx = json_object_get(j, "transactionId");
		char txid[300];

		if (!json_is_string(tx) || json_string_length(tx) == 0 ||
		    json_string_length(tx) >= sizeof(txid)) {
			/* An answer without the id: as good as none; ask again. */
			fprintf(stderr, "pull: outbox: entry %" PRIu64 ": İYS's "
				"answer has no transactionId\n", e->sequence);
			json_decref(j);
			iysapi_reply_fini(&r);
			if (!outpush_sleep(ob, &attempt))
				return -EINTR;
			continue;
		}
		snprintf(txid, sizeof(txid), "%s", json_string_value(tx));
		json_decref(j);
		iysapi_reply_fini(&r);
		fprintf(stderr, "pull: outbox: entry %" PRIu64 " (%s, brand %" PRIu32
			", %s) pushed: transactionId %s\n", e->sequence,
			e->recipient, e->brand, e->channel, txid);
		ob->pushed++;
		rc = outpush_mark(ob, e, txid);
		if (rc == 0)
			outpush_park(ob, e->sequence);
		return rc;
	}
}

static int outpush_entry_of(json_t *it, struct outpush_entry *e)
{
	json_t *cd = json_object_get(it, "consent_date");

	memset(e, 0, sizeof(*e));
	if (!json_is_integer(json_object_get(it, "sequence")) ||
	    !json_is_integer(json_object_get(it, "brand_code")) ||
	    !json_is_string(json_object_get(it, "recipient")) ||
	    !json_is_string(json_object_get(it, "channel")) ||
	    !json_is_string(json_object_get(it, "recipient_type")) ||
	    !json_is_string(json_object_get(it, "source")))
		return -EINVAL;
	e->sequence = (uint64_t)json_integer_value(json_object_get(it, "sequence"));
	e->brand = (uint32_t)json_integer_value(json_object_get(it, "brand_code"));
	e->iys_code = (uint32_t)json_integer_value(json_object_get(it, "iys_code"));
	e->recipient = json_string_value(json_object_get(it, "recipient"));
	e->channel = json_string_value(json_object_get(it, "channel"));
	e->rtype = json_string_value(json_object_get(it, "recipient_type"));
	e->source = json_string_value(json_object_get(it, "source"));
	/* Unix seconds, or İYS's own Turkey-time text. */
	if (json_is_integer(cd))
		e->consent_date = json_integer_value(cd);
	else if (!json_is_string(cd) ||
		 tztime_parse(json_string_value(cd), json_string_length(cd),
			      &e->consent_date, NULL) < 0)
		return -EINVAL;
	return 0;
}

int outpush_push(struct outpush *ob)
{
	char path[64];
	unsigned attempt = 0;
	long st;

	snprintf(path, sizeof(path), "/v1/outbox?limit=%d", OUTPUSH_BATCH);
	for (;;) {
		if (*ob->stop)
			return -EINTR;
		st = outpush_ops(ob, path, NULL);
		if (st == 200)
			break;
		fprintf(stderr, "pull: outbox: GET %s%s answered %ld\n", ob->base,
			path, st);
		if (st > 0 && st < 500)
			return -EPROTO; /* not an outbox: a configuration error */
		if (!outpush_sleep(ob, &attempt))
			return -EINTR;
	}
	json_t *j = json_loadb(ob->buf, ob->len, 0, NULL);
	json_t *entries = json_object_get(j, "entries");
	size_t i;
	json_t *it;
	int rc = 0;

	if (!json_is_array(entries)) {
		fprintf(stderr, "pull: outbox: the answer has no \"entries\" list\n");
		json_decref(j);
		return -EPROTO;
	}
	json_array_foreach(entries, i, it) {
		struct outpush_entry e;
		json_t *state = json_object_get(it, "state");

		if (!json_is_string(state) ||
		    strcmp(json_string_value(state), "queued") != 0)
			continue;
		if (outpush_entry_of(it, &e) < 0) {
			fprintf(stderr, "pull: outbox: entries[%zu]: a field is "
				"missing or of the wrong type\n", i);
			rc = -EPROTO;
			break;
		}
		if (outpush_is_parked(ob, e.sequence))
			continue;
		if (e.iys_code && e.iys_code != ob->o->iys_code) {
			fprintf(stderr, "pull: outbox: entry %" PRIu64 ": iysCode %"
				PRIu32 " is not --iys-code %" PRIu32 "; left\n",
				e.sequence, e.iys_code, ob->o->iys_code);
			outpush_park(ob, e.sequence);
			continue;
		}
		rc = outpush_entry_push(ob, &e);
		if (rc < 0)
			break;
	}
	json_decref(j);
	if (rc == 0 && (ob->pushed || ob->found || ob->refused))
		fprintf(stderr, "pull: outbox: %" PRIu64 " pushed, %" PRIu64
			" found at İYS already, %" PRIu64 " refused by İYS so far\n",
			ob->pushed, ob->found, ob->refused);
	return rc;
}
