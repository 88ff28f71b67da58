/*
 * receipt: a gateway's send-log line turned into the proof of the verdict
 * it acted on (DESIGN §10; README "Receipts"):
 *   consentctl receipt --server HOST:PORT [--token T] [--timeout-ms MS]
 *                      LINE|-
 *
 * LINE is core/receiptline.h's "RECIPIENT BRAND CHANNEL TYPE SEQUENCE"
 * (one argument; '-' reads such lines from stdin, blank and '#' lines
 * skipped). For each it asks the server, on its framed RPC (ctl/rpcclient):
 *  1. Check with as_of_sequence = SEQUENCE (purpose TICARI: the send was a
 *     commercial message): the verdict consentd gave when its
 *     applied_sequence was SEQUENCE, and the deciding change's sequence
 *     and transaction_id;
 *  2. History of the key: the deciding change's full record (creation
 *     date, applied_at, the chain hash after it), found by its sequence
 *     and transaction_id;
 *  3. Stats: the chain head, which is the head at SEQUENCE only when the
 *     server's chain_sequence is SEQUENCE (otherwise both are printed and
 *     the head at SEQUENCE is `consentctl audit head` of a copy of the data
 *     directory cut there: the server keeps no older heads to give).
 * The receipt is printed as "name: value" lines, one receipt per block,
 * blocks separated by a blank line. Exit 0 when every line gave a
 * receipt (whatever the verdict), 1 when a line was bad (its field named,
 * "receipt: line N: field K (NAME): …") or the server refused or failed a
 * query (its error printed), 2 for usage. The token is --token or the
 * CONSENTD_TOKEN environment variable (kept out of ps).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "core/enums.h"
#include "core/hex.h"
#include "core/receiptline.h"
#include "core/tztime.h"
#include "ctl/ctl.h"
#include "ctl/rpcclient.h"
#include "proto/consent.pb-c.h"

#define RECEIPT_TIMEOUT_MS_DEFAULT 10000

struct receipt_opts {
	const char *server;
	const char *token;
	const char *input;
	int timeout_ms;
};

static void put_date(const char *name, int64_t t)
{
	char text[TZTIME_TEXT_LEN + 1];

	if (tztime_format(t, text, sizeof(text)) < 0)
		printf("%s: %" PRId64 "\n", name, t);
	else
		printf("%s: %" PRId64 " (%s Turkey time)\n", name, t, text);
}

static void put_hex(const char *name, const ProtobufCBinaryData *b)
{
	char text[2 * 64 + 1];
	size_t n = b->len < 64 ? b->len : 64; /* a SHA-256 is 32 */
	printf("%s: %s\n", name, hex_put(text, b->data, n));
}

/* 1: the as-of verdict into *out (the caller's Response). */
static int receipt_verdict(struct rpcclient *c, const struct receiptline *l,
			   Consent__V1__Response **out)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__CheckRequest cr = CONSENT__V1__CHECK_REQUEST__INIT;
	Consent__V1__Check ck = CONSENT__V1__CHECK__INIT;
	Consent__V1__Check *cks[1] = { &ck };
	Consent__V1__Response *r = NULL;

	ck.recipient = (char *)l->recipient;
	ck.brand_code = l->brand_code;
	ck.channel = (Consent__V1__Channel)l->channel;
	ck.recipient_type = (Consent__V1__RecipientType)l->recipient_type;
	ck.purpose = CONSENT__V1__PURPOSE__TICARI;
	ck.as_of_sequence = l->sequence;
	cr.n_checks = 1;
	cr.checks = cks;
	req.body_case = CONSENT__V1__REQUEST__BODY_CHECK;
	req.check = &cr;
	int rc = rpcclient_call(c, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id || r->body_case != CONSENT__V1__RESPONSE__BODY_CHECK ||
	    !r->check || r->check->n_verdicts != 1) {
		rc = rpcclient_fault(c, r, req.id, "Check", NULL);
		consent__v1__response__free_unpacked(r, NULL);
		return rc;
	}
	*out = r;
	return 0;
}

/* 2: the key's history into *out. */
static int receipt_history(struct rpcclient *c, const struct receiptline *l,
			   Consent__V1__Response **out)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__HistoryRequest hr = CONSENT__V1__HISTORY_REQUEST__INIT;
	Consent__V1__Response *r = NULL;

	hr.recipient = (char *)l->recipient;
	hr.brand_code = l->brand_code;
	hr.channel = (Consent__V1__Channel)l->channel;
	hr.recipient_type = (Consent__V1__RecipientType)l->recipient_type;
	req.body_case = CONSENT__V1__REQUEST__BODY_HISTORY;
	req.history = &hr;
	int rc = rpcclient_call(c, &req, &r);
	if (rc < 0)
		return rc;
	if (r->id != req.id ||
	    r->body_case != CONSENT__V1__RESPONSE__BODY_HISTORY || !r->history) {
		rc = rpcclient_fault(c, r, req.id, "History", NULL);
		consent__v1__response__free_unpacked(r, NULL);
		return rc;
	}
	*out = r;
	return 0;
}

/* The deciding change among the key's records: the last with its
 * sequence, transaction_id, date and status (a sequence may be shared by
 * the records of a snapshot, never by two of one key in practice). */
static const Consent__V1__HistoryEntry *
receipt_find(const Consent__V1__HistoryResponse *h, const Consent__V1__Verdict *v)
{
	const Consent__V1__HistoryEntry *found = NULL;

	for (size_t i = 0; i < h->n_entries; i++) {
		const Consent__V1__Consent *e = h->entries[i]->consent;
		if (e && e->sequence == v->sequence &&
		    strcmp(e->transaction_id ? e->transaction_id : "",
			   v->transaction_id ? v->transaction_id : "") == 0 &&
		    e->consent_date == v->consent_date &&
		    (int)e->status == (int)v->status)
			found = h->entries[i];
	}
	return found;
}

/* One receipt; 0 printed, -errno when a query failed (said on stderr). */
static int receipt_one(struct rpcclient *c, const struct receiptline *l)
{
	Consent__V1__Response *vr = NULL, *hr = NULL, *sr = NULL;
	int rc = receipt_verdict(c, l, &vr);
	if (rc < 0)
		return rc;
	const Consent__V1__Verdict *v = vr->check->verdicts[0];
	if (v->reason == CONSENT__V1__REASON__INVALID_REQUEST ||
	    v->reason == CONSENT__V1__REASON__NOT_AUTHORIZED) {
		fprintf(stderr, "receipt: %s %" PRIu32 " %s %s at sequence %"
			PRIu64 ": %s%s%s\n", l->recipient, l->brand_code,
			enums_channel_name(l->channel),
			enums_rtype_name(l->recipient_type), l->sequence,
			enums_reason_name(v->reason), v->error && *v->error ? ": " : "",
			v->error ? v->error : "");
		consent__v1__response__free_unpacked(vr, NULL);
		return -EPROTO;
	}
	if (v->sequence != 0) {
		rc = receipt_history(c, l, &hr);
		if (rc < 0)
			goto out;
	}
	rc = rpcclient_stats(c, "", &sr);
	if (rc < 0)
		goto out;

	printf("receipt: %s %" PRIu32 " %s %s %" PRIu64 "\n", l->recipient,
	       l->brand_code, enums_channel_name(l->channel),
	       enums_rtype_name(l->recipient_type), l->sequence);
	printf("verdict: %s %s\n", v->allow ? "allow" : "deny",
	       enums_reason_name(v->reason) ? enums_reason_name(v->reason) : "?");
	if (v->sequence == 0) {
		printf("deciding_change: none (no record of this key at "
		       "sequence %" PRIu64 ")\n", l->sequence);
	} else {
		const Consent__V1__HistoryEntry *e = receipt_find(hr->history, v);
		printf("deciding_sequence: %" PRIu64 "\n", v->sequence);
		printf("transaction_id: %s\n",
		       v->transaction_id ? v->transaction_id : "");
		printf("status: %s\n", enums_status_name(v->status)
					       ? enums_status_name(v->status)
					       : "?");
		printf("source: %s\n", enums_source_name(v->source));
		put_date("consent_date", v->consent_date);
		if (e == NULL) {
			/* The history was pruned past it (--history-keep),
			 * or the server disagrees with itself: say so. */
			printf("record: not in the key's history (%zu entries)\n",
			       hr->history->n_entries);
		} else {
			put_date("creation_date", e->consent->creation_date);
			printf("iys_code: %" PRIu32 "\n", e->consent->iys_code);
			put_date("applied_at", e->applied_at);
			put_hex("record_chain_hash", &e->chain_hash);
		}
	}
	const Consent__V1__StatsResponse *s = sr->stats;
	if (s->chain_sequence == 0 || s->chain_hash.len == 0) {
		printf("chain_head: none (the server keeps no history)\n");
	} else if (s->chain_sequence == l->sequence) {
		printf("chain_head_sequence: %" PRIu64 "\n", s->chain_sequence);
		put_hex("chain_head", &s->chain_hash);
	} else {
		printf("chain_head: not at %" PRIu64 " (the server's head is at "
		       "sequence %" PRIu64 ")\n", l->sequence, s->chain_sequence);
		printf("server_chain_sequence: %" PRIu64 "\n", s->chain_sequence);
		put_hex("server_chain_head", &s->chain_hash);
	}
	rc = 0;
out:
	if (sr)
		consent__v1__response__free_unpacked(sr, NULL);
	if (hr)
		consent__v1__response__free_unpacked(hr, NULL);
	consent__v1__response__free_unpacked(vr, NULL);
	return rc;
}

static int receipt_usage(void)
{
	fprintf(stderr,
		"usage: consentctl receipt --server HOST:PORT [--token T] "
		"[--timeout-ms MS] LINE|-\n"
		"  LINE  RECIPIENT BRAND CHANNEL TYPE SEQUENCE, as one argument\n"
		"        (what a gateway logs with each send; '-': lines on stdin)\n");
	return 2;
}

static int receipt_parse_args(int argc, char **argv, struct receipt_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->timeout_ms = RECEIPT_TIMEOUT_MS_DEFAULT;
	o->token = getenv("CONSENTD_TOKEN");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--server") == 0 && v) {
			o->server = v;
			i++;
		} else if (strcmp(a, "--token") == 0 && v) {
			o->token = v;
			i++;
		} else if (strcmp(a, "--timeout-ms") == 0 && v) {
			char *end = NULL;
			errno = 0;
			long n = strtol(v, &end, 10);
			if (errno || *end || end == v || n <= 0 || n > 3600000) {
				fprintf(stderr, "receipt: --timeout-ms wants "
					"1-3600000\n");
				return -EINVAL;
			}
			o->timeout_ms = (int)n;
			i++;
		} else if (a[0] == '-' && a[1] == '-') {
			fprintf(stderr, "receipt: unknown flag %s\n", a);
			return -EINVAL;
		} else if (o->input == NULL) {
			o->input = a;
		} else {
			fprintf(stderr, "receipt: one LINE (quote it) or -\n");
			return -EINVAL;
		}
	}
	if (o->server == NULL || o->input == NULL)
		return -EINVAL;
	return 0;
}

/* Parses and answers one line; 1 done, 0 nothing on it, -errno failed. */
static int receipt_line(struct rpcclient *c, const char *text, size_t len,
			unsigned long line_no, bool *printed)
{
	struct receiptline l;
	char err[300];
	int rc = receiptline_parse(text, len, &l, err, sizeof(err));

	if (rc < 0) {
		fprintf(stderr, "receipt: line %lu: %s\n", line_no, err);
		return rc;
	}
	if (rc == 0)
		return 0;
	if (*printed)
		printf("\n");
	rc = receipt_one(c, &l);
	fflush(stdout);
	if (rc == 0)
		*printed = true;
	return rc < 0 ? rc : 1;
}

int ctl_receipt(int argc, char **argv)
{
	struct receipt_opts o;
	struct rpcclient c;
	bool printed = false, failed = false;
	unsigned long line_no = 0, receipts = 0;

	if (receipt_parse_args(argc, argv, &o) < 0)
		return receipt_usage();
	if (strcmp(o.input, "-") != 0) {
		/* Judge the line before connecting: a bad line needs no
		 * server to be told what is wrong with it. */
		struct receiptline l;
		char err[300];
		int rc = receiptline_parse(o.input, strlen(o.input), &l, err,
					   sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "receipt: %s\n", err);
			return 1;
		}
		if (rc == 0) {
			fprintf(stderr, "receipt: the line holds no receipt\n");
			return 1;
		}
	}
	int crc = rpcclient_connect(&c, o.server, o.timeout_ms, "receipt");
	if (crc < 0) {
		if (crc != -EINVAL) /* that one said why already */
			fprintf(stderr, "receipt: %s: %s\n", o.server,
				strerror(-crc));
		return 1;
	}
	if (o.token && rpcclient_auth(&c, o.token) < 0) {
		rpcclient_close(&c);
		return 1;
	}
	if (strcmp(o.input, "-") != 0) {
		int rc = receipt_line(&c, o.input, strlen(o.input), 1, &printed);
		rpcclient_close(&c);
		return rc == 1 ? 0 : 1;
	}
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&buf, &cap, stdin)) >= 0) {
		int rc = receipt_line(&c, buf, (size_t)n, ++line_no, &printed);
		if (rc < 0) {
			failed = true;
			/* A bad line or a refused query does not stop the
			 * lines after it; a connection that failed does. */
			if (rc != -EINVAL && rc != -EPROTO)
				break;
		} else if (rc == 1) {
			receipts++;
		}
	}
	free(buf);
	rpcclient_close(&c);
	fprintf(stderr, "receipt: %lu receipt%s from %lu line%s\n", receipts,
		receipts == 1 ? "" : "s", line_no, line_no == 1 ? "" : "s");
	return failed ? 1 : 0;
}
