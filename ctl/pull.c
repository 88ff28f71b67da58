/*
 * pull: İYS itself as the origin (DESIGN §8, §12):
 *   consentctl pull --iys URL --iys-code I --brand B[,B...]
 *                   --credentials FILE [--consentd HOST:PORT]
 *                   [--token T | --token-file FILE] [--once]
 *                   [--interval SEC] [--rate N/min] [--limit N] ...
 *
 * One process follows many brands. For each brand and source (HS, IYS)
 * it pages İYS's consents/changes from the origin's cursor and applies
 * each page through consentd's Apply under origin "iys:BRAND:SOURCE",
 * with after_cursor = the page's request cursor (İYS's "after" it asked
 * with) and cursor = the "after" the page answered. The page's records
 * and the cursor become durable together or not at all (consentd's
 * commit record), so a crash anywhere resumes exactly: at start, and
 * after any lost connection, each origin's cursor is read back from
 * consentd's Stats. A 409 means another feeder moved it: the cursor is
 * read again and the pull goes on from there (the page is fetched anew).
 *
 * A pass pages each origin until a page shorter than --limit (İYS gives
 * no "more" flag: a short page is what it had when asked; the rest comes
 * next pass). After each complete pass, a heartbeat (an Apply with no
 * change and no origin) tells consentd İYS was seen this fresh
 * (data_as_of). Then, with --ops, the outbox of local rejections is
 * pushed (ctl/outpush.c). --once stops after one pass, else a pass starts
 * every --interval seconds.
 *
 * Records go through core/iys (Turkey time to UTC, canonical recipients,
 * consent_validate). A bad record stops the pull with its brand, source,
 * page and field (exit 1) unless --skip-bad, which reports and skips it.
 * consentd unreachable or restarting: reconnect with backoff, cursors read
 * again. İYS's side (tokens, rate, retries) is ctl/iysapi.c's.
 *
 * Exit: 0 done (--once, or SIGTERM/SIGINT between steps), 1 a failure, 2
 * usage or a bad credentials or token file, 3 İYS refused the credentials
 * (so a supervisor can stop restarting: RestartPreventExitStatus=3).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "core/clock.h"
#include "core/iys.h"
#include "core/iyscred.h"
#include "core/textfile.h"
#include "ctl/ctl.h"
#include "ctl/iysapi.h"
#include "ctl/outpush.h"
#include "ctl/pull.h"
#include "ctl/rpcclient.h"

#define PULL_LIMIT_DEFAULT 999 /* what a known İYS client pages with */
#define PULL_LIMIT_MAX 1000    /* a page must fit one Apply frame */
#define PULL_RATE_DEFAULT 50.0 /* changes: 50/min (domain.md §2.4) */
#define PULL_BRANDS_MAX 10000
#define PULL_CURSOR_MAX 256    /* consentd's cursor limit */
#define PULL_WINDOW 4          /* Applies in flight per origin */

static volatile sig_atomic_t pull_stop;

static void pull_on_signal(int sig)
{
	(void)sig;
	pull_stop = 1;
}

struct pull_origin {
	uint32_t brand;
	const char *source;      /* "HS" or "IYS" */
	char name[48];           /* iys:BRAND:SOURCE */
	char cursor[PULL_CURSOR_MAX + 1];
};

struct pull {
	struct pull_opts o;
	struct iyscred cred;
	struct iysapi *api;
	struct rpcclient rpc;
	struct pull_origin *origins;
	size_t n_origins;
	struct iys_record *recs; /* one page's records */
	Consent__V1__Consent **ptrs;
	size_t n_recs;
	unsigned rpc_attempt;
	uint64_t pass_records;
};

/* ---- consentd ---- */

static int pull_read_cursor(struct pull *p, struct pull_origin *o)
{
	Consent__V1__Response *r = NULL;
	int rc = rpcclient_stats(&p->rpc, o->name, &r);
	const char *c;

	if (rc < 0)
		return rc;
	c = r->stats->origin_cursor ? r->stats->origin_cursor : "";
	snprintf(o->cursor, sizeof(o->cursor), "%s", c);
	consent__v1__response__free_unpacked(r, NULL);
	return 0;
}

/* Connected, authenticated, every cursor read: 0; -EINTR when stopped;
 * a refusal by consentd (bad token) is fatal. */
static int pull_rpc_ensure(struct pull *p)
{
	while (p->rpc.fd < 0) {
		int rc;

		if (pull_stop)
			return -EINTR;
		rc = rpcclient_connect(&p->rpc, p->o.consentd, p->o.timeout_ms,
				       "pull");
		if (rc == -EINVAL)
			return rc;
		if (rc == 0 && p->o.token)
			rc = rpcclient_auth(&p->rpc, p->o.token);
		if (rc == -EPROTO) {
			rpcclient_close(&p->rpc);
			return rc; /* consentd refused the token */
		}
		for (size_t i = 0; rc == 0 && i < p->n_origins; i++)
			rc = pull_read_cursor(p, &p->origins[i]);
		if (rc == 0) {
			p->rpc_attempt = 0;
			break;
		}
		rpcclient_close(&p->rpc);
		if (rc == -EPROTO)
			return rc;
		/* Not up (yet, again): back off, doubling to the cap. */
		int64_t ms = p->o.retry_min_ms;

		for (unsigned i = 0; i < p->rpc_attempt && ms < p->o.retry_max_ms; i++)
			ms *= 2;
		if (ms > p->o.retry_max_ms)
			ms = p->o.retry_max_ms;
		p->rpc_attempt++;
		fprintf(stderr, "pull: consentd %s: %s; retrying in %.1f s\n",
			p->o.consentd, strerror(-rc), (double)ms / 1000);
		if (!iysapi_sleep_ms(&pull_stop, ms))
			return -EINTR;
	}
	return 0;
}

/* The connection failed mid-exchange: drop it, connect again (which
 * reads every cursor back). */
static int pull_rpc_lost(struct pull *p)
{
	rpcclient_close(&p->rpc);
	return pull_rpc_ensure(p);
}

/* Copies a cursor already checked to fit (at most PULL_CURSOR_MAX). */
static void pull_cursor_copy(char dst[PULL_CURSOR_MAX + 1], const char *src)
{
	size_t n = strnlen(src, PULL_CURSOR_MAX);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* An Apply sent and not yet answered. */
struct pull_inflight {
	uint64_t id;
	size_t n;
	char cursor[PULL_CURSOR_MAX + 1]; /* where it moves the origin */
};

/* Sends the page held in p->recs as an Apply of o from after to next,
 * without waiting (replies come in order). 0, or -EAGAIN when the
 * connection failed (it has been dropped). */
static int pull_apply_send(struct pull *p, struct pull_origin *o,
			   const char *after, const char *next,
			   struct pull_inflight *f)
{
	Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
	Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
	int rc;

	a.n_changes = p->n_recs;
	a.changes = p->ptrs;
	a.origin = o->name;
	a.after_cursor = (char *)after;
	a.cursor = (char *)next;
	req.body_case = CONSENT__V1__REQUEST__BODY_APPLY;
	req.apply = &a;
	req.id = p->rpc.next_id++;
	rc = rpcclient_send(&p->rpc, &req);
	if (rc < 0) {
		fprintf(stderr, "pull: consentd %s: send: %s\n", p->o.consentd,
			strerror(-rc));
		rpcclient_close(&p->rpc);
		return -EAGAIN;
	}
	f->id = req.id;
	f->n = p->n_recs;
	pull_cursor_copy(f->cursor, next);
	return 0;
}

/*
 * Waits for f's reply. 0: applied (*applied, *skipped); -EAGAIN: not
 * applied (a 409: the cursor is not where this batch follows; a 503: the
 * server's change log is failing; the connection lost: the outcome is
 * unknown) and the caller reads the cursor again; else fatal.
 */
static int pull_apply_wait(struct pull *p, struct pull_origin *o,
			   const struct pull_inflight *f, uint32_t *applied,
			   uint32_t *skipped)
{
	Consent__V1__Response *r = NULL;
	uint32_t code = 0;
	int rc;

	if (p->rpc.fd < 0)
		return -EAGAIN; /* lost with an earlier one */
	rc = rpcclient_recv(&p->rpc, &r);
	if (rc < 0) {
		fprintf(stderr, "pull: consentd %s: waiting for an Apply of %s: "
			"%s\n", p->o.consentd, o->name, strerror(-rc));
		rpcclient_close(&p->rpc);
		return -EAGAIN;
	}
	if (r->id == f->id && r->body_case == CONSENT__V1__RESPONSE__BODY_APPLY &&
	    r->apply) {
		*applied = r->apply->applied;
		*skipped = r->apply->skipped;
		rc = (uint64_t)*applied + *skipped == f->n ? 0 : -EPROTO;
		if (rc < 0)
			fprintf(stderr, "pull: %s: consentd processed %" PRIu32
				" of %zu changes\n", o->name, *applied + *skipped,
				f->n);
		consent__v1__response__free_unpacked(r, NULL);
		return rc;
	}
	if (r->id == f->id && r->body_case == CONSENT__V1__RESPONSE__BODY_ERROR &&
	    r->error)
		code = r->error->code;
	if (code == 409 || code == 503) {
		fprintf(stderr, "pull: %s: consentd: %s; reading the cursor again\n",
			o->name, r->error->message ? r->error->message : "");
		consent__v1__response__free_unpacked(r, NULL);
		return -EAGAIN;
	}
	rc = rpcclient_fault(&p->rpc, r, f->id, "Apply", NULL);
	consent__v1__response__free_unpacked(r, NULL);
	return rc;
}

/* An Apply with no change and no origin: "İYS was seen this fresh". */
static int pull_heartbeat(struct pull *p)
{
	for (;;) {
		Consent__V1__Request req = CONSENT__V1__REQUEST__INIT;
		Consent__V1__ApplyRequest a = CONSENT__V1__APPLY_REQUEST__INIT;
		Consent__V1__Response *r = NULL;
		int rc = pull_rpc_ensure(p);

		if (rc < 0)
			return rc;
		req.body_case = CONSENT__V1__REQUEST__BODY_APPLY;
		req.apply = &a;
		rc = rpcclient_call(&p->rpc, &req, &r);
		if (rc < 0) {
			/* Lost: connect again (that backs off) after a pause,
			 * so a server that takes connections and drops them
			 * is not hammered. */
			rpcclient_close(&p->rpc);
			if (!iysapi_sleep_ms(&pull_stop, p->o.retry_min_ms))
				return -EINTR;
			continue;
		}
		if (r->body_case != CONSENT__V1__RESPONSE__BODY_APPLY)
			rc = rpcclient_fault(&p->rpc, r, req.id, "Apply (heartbeat)",
					     NULL);
		consent__v1__response__free_unpacked(r, NULL);
		return rc;
	}
}

/* ---- İYS's pages ---- */

static int pull_emit(void *arg, const Consent__V1__Consent *c)
{
	struct pull *p = arg;
	struct iys_record *rec;

	if (p->n_recs >= p->o.limit)
		return -E2BIG;
	rec = &p->recs[p->n_recs];
	rec->c = *c;
	snprintf(rec->recipient, sizeof(rec->recipient), "%s", c->recipient);
	snprintf(rec->tx, sizeof(rec->tx), "%s",
		 c->transaction_id ? c->transaction_id : "");
	rec->c.recipient = rec->recipient;
	rec->c.transaction_id = rec->tx;
	rec->c.sequence = 0; /* consentd gives log positions */
	p->ptrs[p->n_recs++] = &rec->c;
	return 0;
}

/* Prints the skipped records' lines with the page named. */
static void pull_print_diag(const char *where, char *text, size_t len)
{
	size_t pos = 0;

	while (pos < len) {
		char *nl = memchr(text + pos, '\n', len - pos);
		size_t e = nl ? (size_t)(nl - text) : len;

		fprintf(stderr, "pull: %s: %.*s\n", where, (int)(e - pos), text + pos);
		pos = e + 1;
	}
}

/*
 * One origin, paged to its end. Up to PULL_WINDOW Applies are in flight:
 * the next page is fetched while consentd makes the last one durable.
 * That is safe because consentd judges an origin's batches in arrival
 * order against the cursor the one before moved: if one is refused, every
 * later one is refused too (its after_cursor no longer follows), so after
 * a refusal the pull drains the replies, reads the cursor and goes on
 * from it. Returns 0, or a fatal error.
 */
static int pull_origin_pass(struct pull *p, struct pull_origin *o)
{
	struct pull_inflight q[PULL_WINDOW];
	size_t q_head = 0, q_len = 0;
	uint64_t pages = 0, records = 0, applied = 0, skipped = 0, bad = 0;
	double t0 = clock_mono_s();
	char after[PULL_CURSOR_MAX + 1];
	bool at_end = false, again = false;
	int rc = 0;

	snprintf(after, sizeof(after), "%s", o->cursor);
	for (;;) {
		/* Room in the window, the end reached, or a refusal: wait. */
		while (q_len && (q_len == PULL_WINDOW || at_end || again)) {
			struct pull_inflight *f = &q[q_head];
			uint32_t ap = 0, sk = 0;
			int w = pull_apply_wait(p, o, f, &ap, &sk);

			q_head = (q_head + 1) % PULL_WINDOW;
			q_len--;
			if (w == -EAGAIN) {
				again = true;
				continue;
			}
			if (w < 0) {
				rc = w;
				goto out;
			}
			/* Applied (after a refused one too: someone else
			 * applied what that one held); the cursor is read
			 * again anyway when one was refused. */
			snprintf(o->cursor, sizeof(o->cursor), "%s", f->cursor);
			pages++;
			records += f->n;
			applied += ap;
			skipped += sk;
		}
		if (again) {
			/* Go on from where consentd is. */
			again = at_end = false;
			if (p->rpc.fd >= 0)
				rc = pull_read_cursor(p, o);
			if (p->rpc.fd < 0 || rc < 0)
				rc = pull_rpc_lost(p);
			if (rc < 0)
				goto out;
			snprintf(after, sizeof(after), "%s", o->cursor);
			continue;
		}
		if (at_end)
			break;

		struct iysapi_reply rep;
		struct iys_opts io = { .brand_code = o->brand,
				       .iys_code = p->o.iys_code,
				       .skip_bad = p->o.skip_bad };
		struct iys_counts k;
		char next[PULL_CURSOR_MAX + 64];
		char where[PULL_CURSOR_MAX + 96], err[512];
		char *diag_text = NULL;
		size_t diag_len = 0;

		if (pull_stop) {
			rc = -EINTR;
			goto out;
		}
		rc = iysapi_changes(p->api, o->brand, o->source, after, p->o.limit,
				    &rep);
		if (rc < 0)
			goto out;
		snprintf(where, sizeof(where), "brand %" PRIu32 " source %s page %"
			 PRIu64 " (after \"%s\")", o->brand, o->source,
			 pages + q_len + 1, after);
		if (rep.status != 200) {
			fprintf(stderr, "pull: %s: İYS answered HTTP %ld %s %s\n",
				where, rep.status, rep.code, rep.message);
			iysapi_reply_fini(&rep);
			rc = -EPROTO;
			goto out;
		}
		p->n_recs = 0;
		io.diag = open_memstream(&diag_text, &diag_len);
		rc = iys_json_import(&io, rep.body, rep.len, pull_emit, p, &k,
				     next, sizeof(next), err, sizeof(err));
		if (io.diag)
			fclose(io.diag);
		iysapi_reply_fini(&rep);
		if (diag_text && diag_len)
			pull_print_diag(where, diag_text, diag_len);
		free(diag_text);
		if (rc == -E2BIG) {
			fprintf(stderr, "pull: %s: more records than the limit "
				"%u asked for\n", where, p->o.limit);
			rc = -EPROTO;
			goto out;
		}
		if (rc < 0) {
			fprintf(stderr, "pull: %s: %s%s\n", where, err,
				rc == -EINVAL ? " (--skip-bad skips bad records)" : "");
			goto out;
		}
		bad += k.bad;
		if (p->n_recs == 0 && k.bad == 0) {
			at_end = true; /* nothing new */
			continue;
		}
		if (strlen(next) > PULL_CURSOR_MAX || next[0] == '\0' ||
		    strcmp(next, after) == 0) {
			fprintf(stderr, "pull: %s: the page's \"after\" (\"%.64s\") "
				"%s\n", where, next, next[0] == '\0' ? "is missing" :
				strcmp(next, after) == 0 ? "does not move" :
				"is over 256 bytes");
			rc = -EPROTO;
			goto out;
		}
		rc = pull_apply_send(p, o, after, next,
				     &q[(q_head + q_len) % PULL_WINDOW]);
		if (rc == -EAGAIN) {
			again = true;
			rc = 0;
			continue;
		}
		q_len++;
		pull_cursor_copy(after, next);
		if (p->n_recs + k.bad < p->o.limit)
			at_end = true; /* a short page: İYS's end, for now */
	}
out:
	/* A fatal error with Applies in flight: their outcome is consentd's
	 * to keep; the next start reads the cursors. */
	if (rc < 0 && q_len)
		rpcclient_close(&p->rpc);
	p->pass_records += records;
	if (pages) {
		double dt = clock_mono_s() - t0;

		fprintf(stderr, "pull: %s: %" PRIu64 " pages, %" PRIu64
			" records (%" PRIu64 " applied, %" PRIu64 " older, %"
			PRIu64 " bad) in %.2f s, %.0f records/s, cursor %s\n",
			o->name, pages, records, applied, skipped, bad, dt,
			dt > 0 ? records / dt : 0.0, o->cursor);
	}
	return rc;
}

/* ---- the command ---- */

static int pull_usage(FILE *f)
{
	fprintf(f,
		"usage: consentctl pull --iys URL --iys-code I --brand B[,B...] "
		"--credentials FILE\n"
		"         [--consentd HOST:PORT] [--token T | --token-file FILE]\n"
		"         [--once] [--interval SEC] [--rate N[/min]] [--limit N]\n"
		"         [--sources HS,IYS] [--skip-bad] [--iys-ca FILE]\n"
		"         [--ops HOST:PORT] [--timeout-ms MS] [--retry-min-ms MS]\n"
		"         [--retry-max-ms MS]\n"
		"  --consentd      consentd's RPC port (default 127.0.0.1:7700)\n"
		"  --rate          İYS requests per minute, never exceeded (default 50)\n"
		"  --limit         records per page (default 999, at most 1000)\n"
		"  --interval      seconds between passes (default 60)\n"
		"  --ops           consentd's ops port: push its outbox of local\n"
		"                  rejections to İYS\n"
		"  --sources       HS, IYS or HS,IYS (default both)\n"
		"  --skip-bad      report and skip bad records (default: stop, exit 1)\n"
		"  --iys-ca        CA file for İYS's https certificate\n"
		"  --token-file    consentd's partner token (also --token, CONSENTD_TOKEN)\n"
		"  --timeout-ms    one HTTP exchange (default 30000)\n"
		"  --retry-min-ms, --retry-max-ms  backoff (default 1000, 60000)\n"
		"exit: 0 done, 1 failure, 2 usage, 3 İYS refused the credentials\n");
	return f == stdout ? 0 : 2;
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || (*end && strcmp(end, "/min") != 0) || v < lo ||
	    v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

static int pull_brands(struct pull *p, const char *list, bool hs, bool iys)
{
	const char *s = list;
	uint32_t *brands = calloc(PULL_BRANDS_MAX, sizeof(*brands));
	size_t n = 0;

	if (!brands)
		return -ENOMEM;
	while (*s) {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(s, &end, 10);
		if (errno || end == s || v == 0 || v > 99999999 ||
		    (*end && *end != ',') || *s == '-' || *s == '+') {
			fprintf(stderr, "pull: --brand: \"%s\": brands are 1..99999999, "
				"comma-separated\n", list);
			free(brands);
			return -EINVAL;
		}
		bool dup = false;

		for (size_t i = 0; i < n; i++)
			dup |= brands[i] == v;
		if (!dup && n == PULL_BRANDS_MAX) {
			fprintf(stderr, "pull: --brand: at most %d brands\n",
				PULL_BRANDS_MAX);
			free(brands);
			return -EINVAL;
		}
		if (!dup)
			brands[n++] = (uint32_t)v;
		s = *end ? end + 1 : end;
	}
	p->origins = calloc(2 * n, sizeof(*p->origins));
	if (!p->origins) {
		free(brands);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		for (int k = 0; k < 2; k++) {
			struct pull_origin *o;

			if ((k == 0 && !hs) || (k == 1 && !iys))
				continue;
			o = &p->origins[p->n_origins++];
			o->brand = brands[i];
			o->source = k == 0 ? "HS" : "IYS";
			snprintf(o->name, sizeof(o->name), "iys:%" PRIu32 ":%s",
				 o->brand, o->source);
		}
	}
	free(brands);
	return n ? 0 : -EINVAL;
}

static int pull_parse_args(int argc, char **argv, struct pull *p,
			   const char **brands, const char **cred_path,
			   const char **token_file, const char **sources)
{
	struct pull_opts *o = &p->o;

	o->consentd = "127.0.0.1:7700";
	o->limit = PULL_LIMIT_DEFAULT;
	o->rate_per_min = PULL_RATE_DEFAULT;
	o->interval_s = 60;
	o->timeout_ms = 30000;
	o->retry_min_ms = 1000;
	o->retry_max_ms = 60000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		double d;

		if (strcmp(a, "--once") == 0) {
			o->once = true;
			continue;
		}
		if (strcmp(a, "--skip-bad") == 0) {
			o->skip_bad = true;
			continue;
		}
		if (!v || a[0] != '-') {
			fprintf(stderr, "pull: unknown argument or missing value: %s\n", a);
			return -EINVAL;
		}
		i++;
		if (strcmp(a, "--iys") == 0) {
			o->iys_url = v;
		} else if (strcmp(a, "--iys-code") == 0) {
			if (parse_num(v, 1, UINT32_MAX, &d) < 0 || d != (uint32_t)d) {
				fprintf(stderr, "pull: --iys-code wants a number\n");
				return -EINVAL;
			}
			o->iys_code = (uint32_t)d;
		} else if (strcmp(a, "--brand") == 0) {
			*brands = v;
		} else if (strcmp(a, "--credentials") == 0) {
			*cred_path = v;
		} else if (strcmp(a, "--consentd") == 0) {
			o->consentd = v;
		} else if (strcmp(a, "--token") == 0) {
			o->token = v;
		} else if (strcmp(a, "--token-file") == 0) {
			*token_file = v;
		} else if (strcmp(a, "--sources") == 0) {
			*sources = v;
		} else if (strcmp(a, "--iys-ca") == 0) {
			o->ca_file = v;
		} else if (strcmp(a, "--ops") == 0) {
			o->ops = v;
		} else if (strcmp(a, "--rate") == 0) {
			if (parse_num(v, 0.01, 1e6, &d) < 0) {
				fprintf(stderr, "pull: --rate wants requests per "
					"minute, 0.01..1000000 (e.g. 50 or 50/min)\n");
				return -EINVAL;
			}
			o->rate_per_min = d;
		} else if (strcmp(a, "--interval") == 0) {
			if (parse_num(v, 0, 86400, &d) < 0) {
				fprintf(stderr, "pull: --interval wants seconds, 0..86400\n");
				return -EINVAL;
			}
			o->interval_s = d;
		} else if (strcmp(a, "--limit") == 0) {
			if (parse_num(v, 1, PULL_LIMIT_MAX, &d) < 0 || d != (unsigned)d) {
				fprintf(stderr, "pull: --limit wants 1..%d\n", PULL_LIMIT_MAX);
				return -EINVAL;
			}
			o->limit = (unsigned)d;
		} else if (strcmp(a, "--timeout-ms") == 0 ||
			   strcmp(a, "--retry-min-ms") == 0 ||
			   strcmp(a, "--retry-max-ms") == 0) {
			if (parse_num(v, 1, 3600000, &d) < 0 || d != (int)d) {
				fprintf(stderr, "pull: %s wants 1..3600000\n", a);
				return -EINVAL;
			}
			if (strcmp(a, "--timeout-ms") == 0)
				o->timeout_ms = (int)d;
			else if (strcmp(a, "--retry-min-ms") == 0)
				o->retry_min_ms = (int)d;
			else
				o->retry_max_ms = (int)d;
		} else {
			fprintf(stderr, "pull: unknown option %s\n", a);
			return -EINVAL;
		}
	}
	if (!o->iys_url || !o->iys_code || !*brands || !*cred_path) {
		fprintf(stderr, "pull: --iys, --iys-code, --brand and --credentials "
			"are required\n");
		return -EINVAL;
	}
	if (o->retry_min_ms > o->retry_max_ms)
		o->retry_max_ms = o->retry_min_ms;
	return 0;
}

/* The partner token from FILE: its first non-comment line. */
static int pull_token_file(const char *path, char **out)
{
	char *buf = NULL, err[300];
	size_t len = 0, pos = 0, ll;
	const char *line;
	int rc = textfile_read("token file", path, 4096, &buf, &len, err,
			       sizeof(err));

	if (rc < 0) {
		fprintf(stderr, "pull: %s\n", err);
		return rc;
	}
	while (textfile_line(buf, len, &pos, &line, &ll)) {
		struct textfile_field f[2];

		if (textfile_fields(line, ll, f, 2) == 1) {
			*out = strndup(f[0].s, f[0].len);
			free(buf);
			return *out ? 0 : -ENOMEM;
		}
		if (textfile_fields(line, ll, f, 2) > 1) {
			fprintf(stderr, "pull: token file: %s: a token is one word "
				"on its line\n", path);
			free(buf);
			return -EINVAL;
		}
	}
	free(buf);
	fprintf(stderr, "pull: token file: %s: no token in it\n", path);
	return -EINVAL;
}

int ctl_pull(int argc, char **argv)
{
	struct pull p = { .rpc = { .fd = -1 } };
	const char *brands = NULL, *cred_path = NULL, *token_file = NULL;
	const char *sources = "HS,IYS";
	char *token_buf = NULL, err[600];
	struct outpush *ob = NULL;
	int rc, exit_code = 1;

	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return pull_usage(stdout);
	if (pull_parse_args(argc, argv, &p, &brands, &cred_path, &token_file,
			    &sources) < 0)
		return pull_usage(stderr);
	bool hs = strcmp(sources, "HS") == 0 || strcmp(sources, "HS,IYS") == 0 ||
		  strcmp(sources, "IYS,HS") == 0;
	bool iys = strcmp(sources, "IYS") == 0 || strcmp(sources, "HS,IYS") == 0 ||
		   strcmp(sources, "IYS,HS") == 0;
	if (!hs && !iys) {
		fprintf(stderr, "pull: --sources wants HS, IYS or HS,IYS\n");
		return 2;
	}
	if (pull_brands(&p, brands, hs, iys) < 0)
		return 2;
	if (iyscred_load(cred_path, &p.cred, err, sizeof(err)) < 0) {
		fprintf(stderr, "pull: %s\n", err);
		exit_code = 2;
		goto out;
	}
	if (token_file) {
		if (pull_token_file(token_file, &token_buf) < 0) {
			exit_code = 2;
			goto out;
		}
		p.o.token = token_buf;
	}
	if (!p.o.token)
		p.o.token = getenv("CONSENTD_TOKEN");
	if (p.o.token && !p.o.token[0])
		p.o.token = NULL;
	p.recs = calloc(p.o.limit, sizeof(*p.recs));
	p.ptrs = calloc(p.o.limit, sizeof(*p.ptrs));
	if (!p.recs || !p.ptrs)
		goto out;

	struct sigaction sa = { .sa_handler = pull_on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	struct iysapi_opts ao = {
		.base_url = p.o.iys_url, .iys_code = p.o.iys_code,
		.ca_file = p.o.ca_file, .rate_per_min = p.o.rate_per_min,
		.timeout_ms = p.o.timeout_ms, .retry_min_ms = p.o.retry_min_ms,
		.retry_max_ms = p.o.retry_max_ms, .cred = &p.cred,
		.stop = &pull_stop,
	};
	if (iysapi_create(&ao, &p.api) < 0) {
		exit_code = 2;
		goto out_curl;
	}
	if (p.o.ops && outpush_create(p.o.ops, p.api, &p.o, &pull_stop, &ob) < 0) {
		exit_code = 2;
		goto out_curl;
	}
	rc = pull_rpc_ensure(&p);
	fprintf(stderr, "pull: %zu origins of %zu brands from %s (iysCode %"
		PRIu32 ") into consentd %s, at most %.4g requests/min\n",
		p.n_origins, hs && iys ? p.n_origins / 2 : p.n_origins,
		p.o.iys_url, p.o.iys_code, p.o.consentd, p.o.rate_per_min);
	for (uint64_t pass = 1; rc == 0; pass++) {
		double t0 = clock_mono_s();

		p.pass_records = 0;
		for (size_t i = 0; rc == 0 && i < p.n_origins; i++) {
			rc = pull_rpc_ensure(&p);
			if (rc == 0)
				rc = pull_origin_pass(&p, &p.origins[i]);
		}
		if (rc == 0)
			rc = pull_heartbeat(&p);
		if (rc == 0) {
			uint64_t req, retries;
			double dt = clock_mono_s() - t0;

			iysapi_counts(p.api, &req, &retries);
			fprintf(stderr, "pull: pass %" PRIu64 ": %" PRIu64
				" records in %.2f s (%.0f records/s); %" PRIu64
				" İYS requests, %" PRIu64 " retries so far; "
				"heartbeat sent\n", pass, p.pass_records, dt,
				dt > 0 ? p.pass_records / dt : 0.0, req, retries);
		}
		if (rc == 0 && ob)
			rc = outpush_push(ob);
		if (rc < 0 || p.o.once)
			break;
		if (!iysapi_sleep_ms(&pull_stop, (int64_t)(p.o.interval_s * 1000)))
			rc = -EINTR;
	}
	if (rc == -EINTR) {
		fprintf(stderr, "pull: stopped by a signal\n");
		exit_code = 0;
	} else if (rc == -EACCES) {
		exit_code = 3;
	} else {
		exit_code = rc == 0 ? 0 : 1;
	}
out_curl:
	outpush_destroy(ob);
	iysapi_destroy(p.api);
	curl_global_cleanup();
out:
	rpcclient_close(&p.rpc);
	memset(&p.cred, 0, sizeof(p.cred));
	free(token_buf);
	free(p.recs);
	free(p.ptrs);
	free(p.origins);
	return exit_code;
}
