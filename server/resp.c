/*
 * resp: the RESP parser, the replies and the command table
 * (server/resp.h).
 *
 * Parsing: every length is bounded before it is trusted. A header line
 * ("*N" or "$N") has at most 18 digits and must end in CRLF within 24
 * bytes (a bare LF is an error: memcached's CVE-2023-46853 was an
 * off-by-one on exactly that); the argument count and each argument's
 * length are checked against the limits from the header alone, before
 * waiting for the bytes. Progress survives between receives in struct
 * resp_parser (offset of the next argument header, arguments done), so a
 * command split at any byte is scanned once; the argument pointers of a
 * resumed command are recomputed from the start when it completes,
 * because the per-worker argument array is shared by every connection.
 *
 * CHECK commands from one receive are queued in the worker's batch and
 * decided together by check_batch (one batched index lookup); any other
 * reply first flushes the queue, so replies keep request order.
 */
#include "server/resp.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/decimal.h"
#include "core/enums.h"
#include "core/tokens.h"
#include "index/history.h"
#include "proto/consent.pb-c.h"
#include "server/config.h"
#include "server/evidence.h"
#include "server/metrics.h"
#include "server/reject.h"
#include "server/writer.h"

#define RESP_LINE_MAX 24 /* '*' or '$', a sign, 18 digits, CRLF, slack */

const char resp_refusal[] = "-ERR max connections\r\n";
const size_t resp_refusal_len = sizeof(resp_refusal) - 1;

/* A connection's parser lives in its conn_proto_state. */
static_assert(sizeof(struct resp_parser) <= sizeof(union conn_proto_state),
	      "struct resp_parser must fit in union conn_proto_state");

static inline struct resp_parser *resp_conn_parser(struct conn *c)
{
	return (struct resp_parser *)c->ps.bytes;
}

/* The worker's RESP state (conn_ctx_state): the argument vector of one
 * command, cfg->max_resp_args entries (or the unauthenticated limit, if
 * higher), shared by its connections. */
struct resp_worker {
	uint32_t args_cap;
	struct resp_arg args[];
};

static void *resp_ctx_create(const struct server_config *cfg)
{
	uint32_t n = cfg->max_resp_args > cfg->max_resp_args_unauth
			     ? cfg->max_resp_args
			     : cfg->max_resp_args_unauth;
	struct resp_worker *rw;

	if (n < 1)
		n = 1;
	rw = calloc(1, sizeof(*rw) + (size_t)n * sizeof(rw->args[0]));
	if (rw != NULL)
		rw->args_cap = n;
	return rw;
}

/* ---- parsing ----------------------------------------------------------- */

/* A header line p[0] <digits> CRLF. Returns its length, 0 if more bytes
 * are needed, -1 if malformed. */
static long resp_header(const char *p, size_t n, int64_t *v)
{
	size_t i = 1, max = n < RESP_LINE_MAX ? n : RESP_LINE_MAX;
	size_t digits = 0;
	bool neg = false;
	uint64_t x = 0;

	/* What every client sends for a command's count and its short
	 * arguments: one or two digits. The same answer the loop gives. */
	if (n >= 5 && p[1] >= '0' && p[1] <= '9') {
		if (p[2] == '\r' && p[3] == '\n') {
			*v = p[1] - '0';
			return 4;
		}
		if (p[2] >= '0' && p[2] <= '9' && p[3] == '\r' &&
		    p[4] == '\n') {
			*v = (p[1] - '0') * 10 + (p[2] - '0');
			return 5;
		}
	}
	if (i < max && p[i] == '-') {
		neg = true;
		i++;
	}
	for (; i < max; i++) {
		char ch = p[i];

		if (ch >= '0' && ch <= '9') {
			if (++digits > 18)
				return -1;
			x = x * 10 + (uint64_t)(ch - '0');
			continue;
		}
		if (ch != '\r' || digits == 0)
			return -1;
		if (i + 1 >= n)
			return 0;
		if (p[i + 1] != '\n')
			return -1;
		*v = neg ? -(int64_t)x : (int64_t)x;
		return (long)(i + 2);
	}
	return n >= RESP_LINE_MAX ? -1 : 0;
}

static bool resp_space(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* One line of space-separated words, as Redis takes from telnet users. */
static long resp_parse_inline(struct resp_parser *ps, const char *buf,
			      size_t len, const struct resp_limits *lim,
			      struct resp_arg *args, uint32_t args_cap,
			      uint32_t *argc, const char **why)
{
	size_t max_line = (size_t)lim->max_arg_bytes * 4;
	size_t scan_end = len < max_line + 1 ? len : max_line + 1;
	const char *nl = NULL;
	size_t line, i = 0;
	uint32_t n = 0;

	if (ps->pos < scan_end)
		nl = memchr(buf + ps->pos, '\n', scan_end - ps->pos);
	if (nl == NULL) {
		if (len > max_line) {
			*why = "inline command too long";
			return -EMSGSIZE;
		}
		ps->pos = len; /* scanned: resume the search here */
		return 0;
	}
	line = (size_t)(nl - buf);
	if (line > 0 && buf[line - 1] == '\r')
		line--;
	while (i < line) {
		size_t start;

		while (i < line && resp_space(buf[i]))
			i++;
		if (i == line)
			break;
		start = i;
		while (i < line && !resp_space(buf[i]))
			i++;
		if (n >= lim->max_args || n >= args_cap) {
			*why = "too many arguments";
			return -E2BIG;
		}
		if (i - start > lim->max_arg_bytes) {
			*why = "argument too long";
			return -EMSGSIZE;
		}
		args[n].p = buf + start;
		args[n].len = (uint32_t)(i - start);
		n++;
	}
	*argc = n;
	return (long)(nl - buf) + 1;
}

long resp_parse(struct resp_parser *ps, const char *buf, size_t len,
		const struct resp_limits *lim, struct resp_arg *args,
		uint32_t args_cap, uint32_t *argc, const char **why)
{
	size_t pos = ps->pos;
	uint32_t resumed = ps->done; /* arguments scanned by earlier calls */
	int64_t v;
	long h;

	if (len == 0)
		return 0;
	if (buf[0] != '*')
		return resp_parse_inline(ps, buf, len, lim, args, args_cap,
					 argc, why);
	if (ps->nargs == 0) {
		h = resp_header(buf, len, &v);
		if (h == 0)
			return 0;
		if (h < 0) {
			*why = "invalid multibulk length";
			return -EPROTO;
		}
		if (v <= 0) { /* *0 and *-1: an empty command */
			*argc = 0;
			return h;
		}
		if (v > (int64_t)lim->max_args || v > (int64_t)args_cap) {
			*why = "too many arguments";
			return -E2BIG;
		}
		ps->nargs = (uint32_t)v;
		ps->done = 0;
		resumed = 0;
		pos = (size_t)h;
	}
	while (ps->done < ps->nargs) {
		if (pos >= len)
			goto more;
		if (buf[pos] != '$') {
			*why = "expected '$' before an argument";
			return -EPROTO;
		}
		h = resp_header(buf + pos, len - pos, &v);
		if (h == 0)
			goto more;
		if (h < 0 || v < 0) {
			*why = "invalid bulk length";
			return -EPROTO;
		}
		if (v > (int64_t)lim->max_arg_bytes) {
			*why = "argument too long";
			return -EMSGSIZE;
		}
		if (len - pos - (size_t)h < (size_t)v + 2)
			goto more;
		if (buf[pos + (size_t)h + (size_t)v] != '\r' ||
		    buf[pos + (size_t)h + (size_t)v + 1] != '\n') {
			*why = "argument not followed by CRLF";
			return -EPROTO;
		}
		args[ps->done].p = buf + pos + h;
		args[ps->done].len = (uint32_t)v;
		ps->done++;
		pos += (size_t)h + (size_t)v + 2;
	}
	if (resumed > 0) {
		/* Earlier calls' argument pointers may have been overwritten
		 * by another connection: walk the validated prefix again. */
		size_t q = (size_t)resp_header(buf, len, &v);

		for (uint32_t i = 0; i < resumed; i++) {
			h = resp_header(buf + q, len - q, &v);
			args[i].p = buf + q + h;
			args[i].len = (uint32_t)v;
			q += (size_t)h + (size_t)v + 2;
		}
	}
	*argc = ps->nargs;
	return (long)pos;
more:
	ps->pos = pos;
	return 0;
}

/* ---- replies ----------------------------------------------------------- */

static char *resp_put_str(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

#define RESP_LIT(p, s) resp_put_str((p), (s), sizeof(s) - 1)

static int resp_line(struct obuf *b, char kind, const char *text)
{
	size_t n = strlen(text);
	char *p = obuf_reserve(b, n + 3);

	if (p == NULL)
		return -ENOMEM;
	*p++ = kind;
	p = resp_put_str(p, text, n);
	p = RESP_LIT(p, "\r\n");
	b->len = (size_t)(p - b->data);
	return 0;
}

static int resp_bulk(struct obuf *b, const char *s, size_t n)
{
	char *p = obuf_reserve(b, n + 32);

	if (p == NULL)
		return -ENOMEM;
	*p++ = '$';
	p = decimal_put_u64(p, n);
	p = RESP_LIT(p, "\r\n");
	p = resp_put_str(p, s, n);
	p = RESP_LIT(p, "\r\n");
	b->len = (size_t)(p - b->data);
	return 0;
}

static int resp_invalid(struct obuf *b, const char *why)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "ERR INVALID_REQUEST %s", why);
	return resp_line(b, '-', msg);
}

/* The four elements of a CHECK reply after its array header hdr (with
 * the first ':'): allow, reason, status, consent_date. */
static inline __attribute__((always_inline)) char *
resp_put_verdict(char *p, const struct verdict *v, const char *hdr)
{
	const char *reason = enums_reason_name(v->reason), *status;

	p = resp_put_str(p, hdr, 5);
	*p++ = v->allow ? '1' : '0';
	p = RESP_LIT(p, "\r\n+");
	p = resp_put_str(p, reason, strlen(reason));
	p = RESP_LIT(p, "\r\n");
	/* status != 0 exactly when a record backs the verdict. */
	if (v->status) {
		status = enums_status_name(v->status);
		*p++ = '$';
		p = decimal_put_u64(p, strlen(status));
		p = RESP_LIT(p, "\r\n");
		p = resp_put_str(p, status, strlen(status));
		p = RESP_LIT(p, "\r\n:");
		p = decimal_put_i64(p, v->consent_date);
		p = RESP_LIT(p, "\r\n");
	} else {
		p = RESP_LIT(p, "$-1\r\n$-1\r\n");
	}
	return p;
}

/* An as-of verdict (§10): the four, then the deciding record's sequence
 * (nil when no record decided). Out of line: live verdicts have none. */
static __attribute__((noinline, cold)) int
resp_verdict_as_of(struct obuf *b, const struct verdict *v)
{
	char *p = obuf_reserve(b, 160);

	if (p == NULL)
		return -ENOMEM;
	p = resp_put_verdict(p, v, "*5\r\n:");
	if (v->status) {
		*p++ = ':';
		p = decimal_put_u64(p, v->sequence);
		p = RESP_LIT(p, "\r\n");
	} else {
		p = RESP_LIT(p, "$-1\r\n");
	}
	b->len = (size_t)(p - b->data);
	return 0;
}

/* The CHECK reply for one verdict. */
static int resp_verdict(struct obuf *b, const struct verdict *v)
{
	char *p;

	if (v->reason == REASON_INVALID_REQUEST)
		return resp_invalid(b, v->error ? v->error : "malformed check");
	if (__builtin_expect(v->transaction_id != NULL, 0))
		return resp_verdict_as_of(b, v);
	p = obuf_reserve(b, 128);
	if (p == NULL)
		return -ENOMEM;
	p = resp_put_verdict(p, v, "*4\r\n:");
	b->len = (size_t)(p - b->data);
	return 0;
}

/* The writer's answer to a REJECT: *3 [:applied_sequence, :applied,
 * :skipped] (applied 0, skipped 1: a newer record stood), or an error
 * named by its kind (the message is the writer's, CR/LF never in it). */
static int resp_reply_apply(struct conn_ctx *x, struct conn *c,
			    const struct writer_reply *r)
{
	(void)x;
	if (r->code != 0) {
		const char *kind = r->code == 400 ? "ERR INVALID_REQUEST" :
				   r->code == 403 ? "NOPERM" :
				   r->code == 409 ? "ERR CONFLICT" :
				   r->code == 503 ? "ERR UNAVAILABLE" : "ERR";
		char msg[sizeof(r->message) + 32];

		snprintf(msg, sizeof(msg), "%s %s", kind, r->message);
		for (char *q = msg; *q; q++)
			if (*q == '\r' || *q == '\n')
				*q = ' ';
		return resp_line(&c->out, '-', msg);
	}
	char *p = obuf_reserve(&c->out, 3 * 24 + 8);
	if (p == NULL)
		return -ENOMEM;
	char *q = p;
	q = RESP_LIT(q, "*3\r\n:");
	q = decimal_put_u64(q, r->applied_sequence);
	q = RESP_LIT(q, "\r\n:");
	q = decimal_put_u64(q, r->applied);
	q = RESP_LIT(q, "\r\n:");
	q = decimal_put_u64(q, r->skipped);
	q = RESP_LIT(q, "\r\n");
	c->out.len += (size_t)(q - p);
	return 0;
}

/* ---- commands ---------------------------------------------------------- */

static bool resp_is(const struct resp_arg *a, const char *name, size_t n)
{
	return a->len == n && strncasecmp(a->p, name, n) == 0;
}

#define RESP_IS(a, lit) resp_is((a), (lit), sizeof(lit) - 1)

/* Decides the queued CHECKs and writes their replies, in order. */
static int resp_flush(struct conn_ctx *x, struct conn *c)
{
	struct check_env env;
	int rc = 0;

	if (x->n_in == 0)
		return 0;
	env = conn_check_env(x, c, &x->cfg->policy);
	check_batch(&env, x->in, x->n_in, x->out);
	for (uint32_t i = 0; i < x->n_in && rc == 0; i++) {
		metrics_record_check(x->m, METRICS_RESP, x->out[i].reason);
		rc = resp_verdict(&c->out, &x->out[i]);
	}
	x->n_in = 0;
	return rc;
}

static int resp_arity(struct conn *c, const char *cmd)
{
	char msg[96];

	snprintf(msg, sizeof(msg),
		 "ERR wrong number of arguments for '%s' command", cmd);
	return resp_line(&c->out, '-', msg);
}

static const char *resp_brand(const struct resp_arg *a, uint32_t *out)
{
	uint64_t v = 0;

	if (a->len == 0)
		return "brand_code: missing (0 is not a brand)";
	for (uint32_t i = 0; i < a->len; i++) {
		char ch = a->p[i];

		if (ch < '0' || ch > '9')
			return "brand_code: not a decimal number";
		if (v <= UINT32_MAX)
			v = v * 10 + (uint64_t)(ch - '0');
	}
	/* Past 32 bits it is past 8 digits too: check_batch says so. */
	*out = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
	return NULL;
}

static const char *resp_channel(const struct resp_arg *a, int *out)
{
	*out = enums_channel_parse(a->p, a->len);
	return *out ? NULL : "channel: not ARAMA, MESAJ or EPOSTA";
}

/* A positive decimal number of at most 19 digits (AT's Unix time, ATSEQ's
 * sequence; 0 would mean "now"). */
static bool resp_number(const struct resp_arg *a, uint64_t *out)
{
	uint64_t v = 0;

	if (a->len == 0 || a->len > 19)
		return false;
	for (uint32_t i = 0; i < a->len; i++) {
		if (a->p[i] < '0' || a->p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(a->p[i] - '0');
	}
	*out = v;
	return v > 0;
}

/* CHECK recipient brand channel [rtype] [purpose] [AT unix | ATSEQ n] */
static int resp_check(struct conn_ctx *x, struct conn *c,
		      const struct resp_arg *a, uint32_t argc)
{
	struct check_input *in = &x->in[x->n_in];
	const char *bad;
	int rc;

	if (argc < 4 || argc > 8) {
		rc = resp_flush(x, c);
		return rc < 0 ? rc : resp_arity(c, "check");
	}
	*in = (struct check_input){
		.recipient = a[1].p,
		.recipient_len = a[1].len,
	};
	bad = resp_brand(&a[2], &in->brand_code);
	if (bad == NULL)
		bad = resp_channel(&a[3], &in->channel);
	for (uint32_t i = 4; bad == NULL && i < argc; i++) {
		int r = enums_rtype_parse(a[i].p, a[i].len);
		/* No name is both a recipient type and a purpose. */
		int p = r ? 0 : enums_purpose_parse(a[i].p, a[i].len);
		uint64_t v;

		if (r && !in->rtype) {
			in->rtype = r;
			continue;
		}
		if (p && !in->purpose) {
			in->purpose = p;
			continue;
		}
		/* §10: AT unix / ATSEQ n, each with its value; both is the
		 * decision table's row 1 (as on every port). Looked at only
		 * after the two words, so a live CHECK parses as it did. */
		if (!r && !p &&
		    (RESP_IS(&a[i], "AT") || RESP_IS(&a[i], "ATSEQ"))) {
			bool seq = a[i].len == 5;
			if (i + 1 == argc)
				bad = seq ? "ATSEQ: a sequence must follow" :
					    "AT: a Unix time must follow";
			else if ((seq ? in->as_of_sequence :
					(uint64_t)in->as_of_time) != 0)
				bad = seq ? "ATSEQ: given twice" :
					    "AT: given twice";
			else if (!resp_number(&a[++i], &v) ||
				 (!seq && v > INT64_MAX))
				bad = seq ? "ATSEQ: not a sequence (a decimal "
					    "number from 1)" :
					    "AT: not a Unix time (decimal "
					    "seconds from 1)";
			else if (seq)
				in->as_of_sequence = v;
			else
				in->as_of_time = (int64_t)v;
			continue;
		}
		bad = "expected BIREYSEL or TACIR, then TICARI or "
		      "BILGILENDIRME, then AT unix or ATSEQ n";
	}
	if (bad != NULL) {
		rc = resp_flush(x, c);
		metrics_record_check(x->m, METRICS_RESP,
				     REASON_INVALID_REQUEST);
		return rc < 0 ? rc : resp_invalid(&c->out, bad);
	}
	if (++x->n_in == CONN_BATCH_MAX)
		return resp_flush(x, c);
	return 0;
}

/* MCHECK brand channel rtype purpose r1 [r2 ...]: decided in chunks
 * straight into the output; refused whole past the output cap. */
static int resp_mcheck(struct conn_ctx *x, struct conn *c,
		       const struct resp_arg *a, uint32_t argc)
{
	struct check_env env = conn_check_env(x, c, &x->cfg->policy);
	uint64_t by_reason[REASON_COUNT] = { 0 };
	struct check_input tmpl;
	const char *bad;
	size_t start = c->out.len;
	uint32_t n = argc - 5, done = 0;
	char *p;

	if (argc < 6)
		return resp_arity(c, "mcheck");
	memset(&tmpl, 0, sizeof(tmpl));
	bad = resp_brand(&a[1], &tmpl.brand_code);
	if (bad == NULL)
		bad = resp_channel(&a[2], &tmpl.channel);
	if (bad == NULL && !(tmpl.rtype = enums_rtype_parse(a[3].p, a[3].len)))
		bad = "recipient_type: not BIREYSEL or TACIR";
	if (bad == NULL &&
	    !(tmpl.purpose = enums_purpose_parse(a[4].p, a[4].len)))
		bad = "purpose: not TICARI or BILGILENDIRME";
	if (bad != NULL)
		return resp_invalid(&c->out, bad);

	p = obuf_reserve(&c->out, 16);
	if (p == NULL)
		return -ENOMEM;
	*p++ = '*';
	p = decimal_put_u64(p, n);
	p = RESP_LIT(p, "\r\n");
	c->out.len = (size_t)(p - c->out.data);
	while (done < n) {
		uint32_t k = n - done < CONN_BATCH_MAX ? n - done
						       : CONN_BATCH_MAX;

		for (uint32_t j = 0; j < k; j++) {
			x->in[j] = tmpl;
			x->in[j].recipient = a[5 + done + j].p;
			x->in[j].recipient_len = a[5 + done + j].len;
		}
		check_batch(&env, x->in, k, x->out);
		for (uint32_t j = 0; j < k; j++) {
			const struct verdict *v = &x->out[j];

			by_reason[v->reason % REASON_COUNT]++;
			if (v->reason == REASON_INVALID_REQUEST) {
				if (resp_invalid(&c->out, v->error) < 0)
					return -ENOMEM;
				continue;
			}
			p = obuf_reserve(&c->out, 4);
			if (p == NULL)
				return -ENOMEM;
			p[0] = ':';
			p[1] = v->allow ? '1' : '0';
			p[2] = '\r';
			p[3] = '\n';
			c->out.len += 4;
		}
		done += k;
		if (c->out.len - start > x->cfg->conn_out_cap_bytes) {
			c->out.len = start;
			metrics_inc(&x->m->replies_too_large);
			return resp_line(&c->out, '-',
					 "ERR reply passes the output cap: "
					 "send fewer recipients per MCHECK");
		}
	}
	for (unsigned r = 0; r < REASON_COUNT; r++)
		if (by_reason[r])
			metrics_add(&x->m->checks[METRICS_RESP][r],
				    by_reason[r]);
	return 0;
}

static int resp_auth(struct conn_ctx *x, struct conn *c,
		     const struct resp_arg *a, uint32_t argc)
{
	const struct resp_arg *tok = &a[argc - 1]; /* AUTH [user] token */
	const struct principal *p;

	if (argc < 2 || argc > 3)
		return resp_arity(c, "auth");
	if (x->cfg->tokens == NULL)
		return resp_line(&c->out, '+', "OK");
	p = tokens_authenticate(x->cfg->tokens, tok->p, tok->len);
	if (p == NULL) {
		metrics_inc(&x->m->auth_failures);
		return resp_line(&c->out, '-',
				 "WRONGPASS invalid username-password pair "
				 "or user is disabled.");
	}
	c->principal = p;
	c->authed = true;
	return resp_line(&c->out, '+', "OK");
}

/* INFO. Without the 'stats' right (core/tokens.h) only what is the
 * principal's own or says how fresh the answers are: applied_sequence,
 * data_as_of and its own checks; no records, generation or connections. */
static int resp_info(struct conn_ctx *x, struct conn *c)
{
	struct metrics sum;
	char text[512];
	int n;

	if (!principal_may_stats(c->principal)) {
		n = snprintf(text, sizeof(text),
			     "# consentd\r\n"
			     "applied_sequence:%llu\r\n"
			     "data_as_of:%lld\r\n"
			     "checks:%llu\r\n",
			     (unsigned long long)(x->ix ? x->info.watermark : 0),
			     (long long)(x->ix ? x->info.data_as_of : 0),
			     (unsigned long long)principal_checks(c->principal));
		if (n < 0 || (size_t)n >= sizeof(text))
			n = 0;
		return resp_bulk(&c->out, text, (size_t)n);
	}
	metrics_sum(&sum);
	n = snprintf(text, sizeof(text),
		     "# consentd\r\n"
		     "records:%llu\r\n"
		     "generation:%llu\r\n"
		     "applied_sequence:%llu\r\n"
		     "data_as_of:%lld\r\n"
		     "checks:%llu\r\n"
		     "connections:%llu\r\n",
		     (unsigned long long)(x->ix ? x->info.n_records : 0),
		     (unsigned long long)(x->ix ? x->info.generation : 0),
		     (unsigned long long)(x->ix ? x->info.watermark : 0),
		     (long long)(x->ix ? x->info.data_as_of : 0),
		     (unsigned long long)metrics_checks_total(&sum),
		     (unsigned long long)atomic_load_explicit(
			     &sum.connections_open, memory_order_relaxed));
	if (n < 0 || (size_t)n >= sizeof(text))
		n = 0;
	return resp_bulk(&c->out, text, (size_t)n);
}

/* REJECT recipient brand channel [BIREYSEL|TACIR] [SOURCE]: a local
 * rejection (§11, server/reject.h) through the writer. The reply waits
 * for it (apply_wait: no later command is read meanwhile) and is
 * resp_reply_apply's. */
static int resp_reject(struct conn_ctx *x, struct conn *c,
		       const struct resp_arg *a, uint32_t argc)
{
	struct reject_input in = { 0 };
	struct writer_reply now;
	const char *bad;
	int rc;

	if (argc < 4 || argc > 6)
		return resp_arity(c, "reject");
	if (!principal_may_reject(c->principal))
		return resp_line(&c->out, '-', "NOPERM this principal may not "
				 "reject (no 'reject' right)");
	if (x->cfg->writer == NULL)
		return resp_line(&c->out, '-', "ERR UNAVAILABLE REJECT is not "
				 "available here (no change log)");
	in.recipient = a[1].p;
	in.recipient_len = a[1].len;
	bad = resp_brand(&a[2], &in.brand_code);
	if (bad == NULL)
		bad = resp_channel(&a[3], &in.channel);
	for (uint32_t i = 4; bad == NULL && i < argc; i++) {
		int r = enums_rtype_parse(a[i].p, a[i].len);
		/* No name is both a recipient type and a source. */
		int src = r ? 0 : enums_source_parse(a[i].p, a[i].len);

		if (r && !in.recipient_type)
			in.recipient_type = r;
		else if (src && src != SOURCE_OTHER && !in.source)
			in.source = src;
		else
			bad = "expected BIREYSEL or TACIR, then a source "
			      "(HS_MESAJ, HS_CAGRI_MERKEZI, ...)";
	}
	if (bad != NULL)
		return resp_invalid(&c->out, bad);
	rc = reject_submit(x->cfg->writer, x->worker, c->tag, 0, c->principal,
			   &in, &now);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return resp_reply_apply(x, c, &now);
	c->apply_wait = true;
	c->paused = true;
	return 0;
}

/* HISTORY recipient brand channel [BIREYSEL|TACIR] (§10,
 * server/evidence.h): an array, oldest first, of [:sequence, $status,
 * $source, :consent_date, :creation_date, $transaction_id, :applied_at],
 * the newest EVIDENCE_MAX_ENTRIES at most. Disk reads: off the check
 * path, not for the hot path. */
static int resp_history(struct conn_ctx *x, struct conn *c,
			const struct resp_arg *a, uint32_t argc)
{
	struct evidence_query q = { 0 };
	struct evidence_answer ans;
	const char *bad;
	char msg[400];

	if (argc < 4 || argc > 5)
		return resp_arity(c, "history");
	q.recipient = a[1].p;
	q.recipient_len = a[1].len;
	bad = resp_brand(&a[2], &q.brand_code);
	if (bad == NULL)
		bad = resp_channel(&a[3], &q.channel);
	if (bad == NULL && argc == 5 &&
	    !(q.rtype = enums_rtype_parse(a[4].p, a[4].len)))
		bad = "recipient_type: not BIREYSEL or TACIR";
	if (bad != NULL)
		return resp_invalid(&c->out, bad);
	int code = evidence_query(x->history, c->principal, &q, &ans, msg,
				  sizeof(msg));
	if (code != 0) {
		char line[sizeof(msg) + 32];
		snprintf(line, sizeof(line), "%s %s",
			 code == 400 ? "ERR INVALID_REQUEST" :
			 code == 403 ? "NOPERM" :
			 code == 503 ? "ERR UNAVAILABLE" : "ERR", msg);
		return resp_line(&c->out, '-', line);
	}
	char *p = obuf_reserve(&c->out, 24);
	int rc = 0;
	if (p == NULL) {
		evidence_answer_fini(&ans);
		return -ENOMEM;
	}
	*p++ = '*';
	p = decimal_put_u64(p, ans.n);
	p = RESP_LIT(p, "\r\n");
	c->out.len = (size_t)(p - c->out.data);
	for (size_t i = 0; i < ans.n && rc == 0; i++) {
		const Consent__V1__Consent *m = &ans.entries[i].consent;
		const char *st = enums_status_name((int)m->status);
		const char *src = enums_source_name((int)m->source);
		const char *tx = m->transaction_id ? m->transaction_id : "";
		p = obuf_reserve(&c->out, 6 * 24 + 32);
		if (p == NULL) {
			rc = -ENOMEM;
			break;
		}
		p = RESP_LIT(p, "*7\r\n:");
		p = decimal_put_u64(p, m->sequence);
		p = RESP_LIT(p, "\r\n");
		c->out.len = (size_t)(p - c->out.data);
		rc = resp_bulk(&c->out, st ? st : "?", st ? strlen(st) : 1);
		if (rc == 0)
			rc = resp_bulk(&c->out, src, strlen(src));
		if (rc == 0 && (p = obuf_reserve(&c->out, 2 * 24 + 8)) == NULL)
			rc = -ENOMEM;
		if (rc < 0)
			break;
		*p++ = ':';
		p = decimal_put_i64(p, m->consent_date);
		p = RESP_LIT(p, "\r\n:");
		p = decimal_put_i64(p, m->creation_date);
		p = RESP_LIT(p, "\r\n");
		c->out.len = (size_t)(p - c->out.data);
		rc = resp_bulk(&c->out, tx, strlen(tx));
		if (rc == 0 && (p = obuf_reserve(&c->out, 24 + 4)) == NULL)
			rc = -ENOMEM;
		if (rc < 0)
			break;
		*p++ = ':';
		p = decimal_put_i64(p, ans.entries[i].applied_at);
		p = RESP_LIT(p, "\r\n");
		c->out.len = (size_t)(p - c->out.data);
	}
	evidence_answer_fini(&ans);
	return rc;
}

static int resp_unknown(struct conn *c, const struct resp_arg *name)
{
	char msg[96], shown[49];
	uint32_t n = name->len < 48 ? name->len : 48;

	/* Never echo control bytes (CR/LF would split the reply). */
	for (uint32_t i = 0; i < n; i++) {
		char ch = name->p[i];

		shown[i] = (ch >= 0x20 && ch < 0x7f && ch != '\'') ? ch : '?';
	}
	shown[n] = '\0';
	snprintf(msg, sizeof(msg), "ERR unknown command '%s'", shown);
	return resp_line(&c->out, '-', msg);
}

static int resp_command(struct conn_ctx *x, struct conn *c,
			const struct resp_arg *a, uint32_t argc)
{
	int rc;

	x->n_requests++;
	c->stat_requests++;
	if (c->authed && RESP_IS(&a[0], "CHECK"))
		return resp_check(x, c, a, argc);
	rc = resp_flush(x, c); /* every other reply goes after the CHECKs */
	if (rc < 0)
		return rc;
	if (RESP_IS(&a[0], "PING")) {
		if (argc == 1)
			return resp_line(&c->out, '+', "PONG");
		if (argc == 2)
			return resp_bulk(&c->out, a[1].p, a[1].len);
		return resp_arity(c, "ping");
	}
	if (RESP_IS(&a[0], "AUTH"))
		return resp_auth(x, c, a, argc);
	if (RESP_IS(&a[0], "QUIT")) {
		c->want_close = true;
		return resp_line(&c->out, '+', "OK");
	}
	if (!c->authed) {
		metrics_inc(&x->m->unauthenticated_refused);
		return resp_line(&c->out, '-', "NOAUTH Authentication required.");
	}
	if (RESP_IS(&a[0], "MCHECK"))
		return resp_mcheck(x, c, a, argc);
	if (RESP_IS(&a[0], "INFO"))
		return resp_info(x, c);
	if (RESP_IS(&a[0], "REJECT"))
		return resp_reject(x, c, a, argc);
	if (RESP_IS(&a[0], "HISTORY"))
		return resp_history(x, c, a, argc);
	return resp_unknown(c, &a[0]);
}

/* "-ERR <message>" after what is queued, then close. */
static int resp_reply_fatal(struct conn_ctx *x, struct conn *c,
			    const char *message)
{
	char msg[160];
	int rc = resp_flush(x, c);

	c->want_close = true;
	if (rc < 0)
		return rc;
	snprintf(msg, sizeof(msg), "ERR %s", message);
	return resp_line(&c->out, '-', msg);
}

static long resp_process(struct conn_ctx *x, struct conn *c, const char *buf,
			 size_t len)
{
	const struct server_config *cfg = x->cfg;
	struct resp_worker *rw = conn_ctx_state(x, &resp_proto);
	struct resp_parser *ps = resp_conn_parser(c);
	size_t pos = 0;
	int rc = 0;

	if (rw == NULL)
		return -ENOMEM;
	while (!c->want_close && !c->apply_wait && rc == 0 && pos < len) {
		struct resp_limits lim;
		const char *why = "malformed";
		uint32_t argc = 0;
		long n;

		if (conn_out_pending(c) > cfg->conn_out_cap_bytes) {
			c->paused = true;
			break;
		}
		lim.max_args = c->authed ? cfg->max_resp_args
					 : cfg->max_resp_args_unauth;
		lim.max_arg_bytes = c->authed ? cfg->max_resp_arg_bytes
					      : cfg->max_resp_arg_bytes_unauth;
		n = resp_parse(ps, buf + pos, len - pos, &lim, rw->args,
			       rw->args_cap, &argc, &why);
		if (n == 0)
			break;
		if (n < 0) {
			char msg[128];

			if (n == -EPROTO)
				metrics_inc(&x->m->frames_undecodable);
			else
				metrics_inc(&x->m->frames_oversize);
			snprintf(msg, sizeof(msg), "Protocol error: %s%s", why,
				 c->authed || n == -EPROTO ? ""
							   : " before AUTH");
			rc = resp_reply_fatal(x, c, msg);
			break;
		}
		memset(ps, 0, sizeof(*ps));
		pos += (size_t)n;
		if (argc > 0)
			rc = resp_command(x, c, rw->args, argc);
	}
	if (rc == 0)
		rc = resp_flush(x, c);
	if (rc < 0)
		return rc;
	return c->want_close ? (long)len : (long)pos;
}

/* ---- the protocol ------------------------------------------------------ */

static int resp_proto_fatal(struct conn_ctx *x, struct conn *c,
			    enum conn_fatal why)
{
	char msg[96];

	if (why == CONN_FATAL_TOO_LARGE)
		return resp_reply_fatal(x, c, "Protocol error: command over "
					"the per-connection input cap");
	snprintf(msg, sizeof(msg), "incomplete command after %u ms",
		 x->cfg->partial_timeout_ms);
	return resp_reply_fatal(x, c, msg);
}

const struct conn_proto resp_proto = {
	.name = "resp",
	.metrics = METRICS_RESP,
	.process = resp_process,
	.reply_fatal = resp_proto_fatal,
	.reply_apply = resp_reply_apply, /* REJECT's */
	.ctx_create = resp_ctx_create,
	.ctx_destroy = free,
	.refusal = resp_refusal,
	.refusal_len = sizeof(resp_refusal) - 1,
};
