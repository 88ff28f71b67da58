/*
 * policy: the Postfix policy parser, the verdict-to-action table and the
 * request loop (server/policy.h).
 *
 * Parsing: a request is scanned line by line; each line's length is
 * bounded before it is trusted (a line that has not ended within
 * max_line_bytes + CRLF is refused without waiting for more), and the
 * attribute count is checked as each line completes. Progress survives
 * between receives in struct policy_parser (the offset of the next
 * unscanned line), so a request split at any byte is scanned once; the
 * attribute values are picked out in one walk when the empty line
 * arrives, pointing into the buffer that then holds the whole request.
 *
 * RCPT checks from one receive are queued in the worker's batch and
 * decided together by check_batch; any other reply first flushes the
 * queue, so replies keep request order.
 */
#include "server/policy.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/enums.h"
#include "core/policymap.h"
#include "server/config.h"
#include "server/metrics.h"

static_assert(sizeof(struct policy_parser) <= sizeof(union conn_proto_state),
	      "struct policy_parser must fit in union conn_proto_state");

static inline struct policy_parser *policy_conn_parser(struct conn *c)
{
	return (struct policy_parser *)c->ps.bytes;
}

/* ---- parsing ----------------------------------------------------------- */

static bool policy_is(const struct policy_value *v, const char *lit,
		      size_t n)
{
	return v->p != NULL && v->len == n && strncasecmp(v->p, lit, n) == 0;
}

#define POLICY_IS(v, lit) policy_is((v), (lit), sizeof(lit) - 1)

/* Picks the attributes consentd reads out of a whole request
 * buf[0..end), every line of which policy_parse has validated. */
static void policy_fill(const char *buf, size_t end,
			struct policy_request *req)
{
	static const struct {
		const char *name;
		size_t len;
		size_t off;
	} wanted[] = {
#define POLICY_ATTR(f) { #f, sizeof(#f) - 1, offsetof(struct policy_request, f) }
		POLICY_ATTR(request),
		POLICY_ATTR(protocol_state),
		POLICY_ATTR(sender),
		POLICY_ATTR(recipient),
		POLICY_ATTR(sasl_username),
#undef POLICY_ATTR
	};
	size_t pos = 0;

	memset(req, 0, sizeof(*req));
	while (pos < end) {
		const char *s = buf + pos;
		const char *nl = memchr(s, '\n', end - pos);
		size_t n = (size_t)(nl - s);
		const char *eq;

		pos += n + 1;
		if (n > 0 && s[n - 1] == '\r')
			n--;
		if (n == 0)
			break; /* the empty line */
		req->n_attrs++;
		eq = memchr(s, '=', n);
		for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
			struct policy_value *v;

			if ((size_t)(eq - s) != wanted[i].len ||
			    memcmp(s, wanted[i].name, wanted[i].len) != 0)
				continue;
			v = (struct policy_value *)((char *)req + wanted[i].off);
			v->p = eq + 1;
			v->len = (uint32_t)(n - (size_t)(eq + 1 - s));
		}
	}
}

long policy_parse(struct policy_parser *ps, const char *buf, size_t len,
		  const struct policy_limits *lim, struct policy_request *req,
		  const char **why)
{
	/* A line may take its bytes, a CR and the LF. */
	size_t most = (size_t)lim->max_line_bytes + 2;
	size_t pos = ps->pos;

	while (pos < len) {
		size_t room = len - pos;
		const char *s = buf + pos;
		const char *nl = memchr(s, '\n', room < most ? room : most);
		size_t n;

		if (nl == NULL) {
			if (room >= most) {
				*why = "attribute line too long";
				return -EMSGSIZE;
			}
			break;
		}
		n = (size_t)(nl - s);
		if (n > 0 && s[n - 1] == '\r')
			n--;
		if (n > lim->max_line_bytes) {
			*why = "attribute line too long";
			return -EMSGSIZE;
		}
		if (n == 0) {
			size_t end = (size_t)(nl - buf) + 1;

			policy_fill(buf, end, req);
			return (long)end;
		}
		if (s[0] == '=' || memchr(s, '=', n) == NULL) {
			*why = "a line that is not name=value";
			return -EPROTO;
		}
		if (++ps->n_attrs > lim->max_attrs) {
			*why = "too many attributes";
			return -E2BIG;
		}
		pos = (size_t)(nl - buf) + 1;
	}
	ps->pos = pos;
	return 0;
}

/* ---- replies ----------------------------------------------------------- */

static int policy_reply(struct obuf *b, const char *action)
{
	size_t n = strlen(action);
	char *p = obuf_reserve(b, n + 9);

	if (p == NULL)
		return -ENOMEM;
	memcpy(p, "action=", 7);
	memcpy(p + 7, action, n);
	p[7 + n] = '\n';
	p[8 + n] = '\n';
	b->len += n + 9;
	return 0;
}

/* The action for one verdict (the table in server/policy.h). */
static int policy_verdict(struct conn_ctx *x, struct conn *c,
			  const struct verdict *v)
{
	char text[256];
	const char *why;

	if (v->allow)
		return policy_reply(&c->out, "DUNNO");
	switch (v->reason) {
	case REASON_DATA_STALE:
		metrics_inc(&x->m->policy_deferred);
		return policy_reply(&c->out, "451 4.7.1 DATA_STALE: consent "
				    "data stale (\xc4\xb0YS)");
	case REASON_CONSENT_REJECTED:
		why = "the recipient rejected commercial e-mail from this "
		      "sender";
		break;
	case REASON_NO_CONSENT:
		why = "no commercial e-mail consent from the recipient";
		break;
	case REASON_INVALID_REQUEST:
		why = v->error != NULL ? v->error : "malformed recipient";
		break;
	default: /* NOT_AUTHORIZED cannot happen: the port is trusted */
		why = "refused";
		break;
	}
	metrics_inc(&x->m->policy_rejected);
	snprintf(text, sizeof(text), "550 5.7.1 %s: %s (\xc4\xb0YS)",
		 enums_reason_name(v->reason), why);
	return policy_reply(&c->out, text);
}

/* Decides the queued checks and writes their actions, in order. */
static int policy_flush(struct conn_ctx *x, struct conn *c)
{
	struct check_env env;
	int rc = 0;

	if (x->n_in == 0)
		return 0;
	env = conn_check_env(x, c, &x->cfg->policy);
	check_batch(&env, x->in, x->n_in, x->out);
	for (uint32_t i = 0; i < x->n_in && rc == 0; i++) {
		metrics_record_check(x->m, METRICS_POLICY, x->out[i].reason);
		rc = policy_verdict(x, c, &x->out[i]);
	}
	x->n_in = 0;
	return rc;
}

/* "action=451 4.3.0 consentd: <message>" after what is queued, then
 * close: Postfix defers the recipient it asked about. */
static int policy_reply_fatal(struct conn_ctx *x, struct conn *c,
			      const char *message)
{
	char text[160];
	int rc = policy_flush(x, c);

	c->want_close = true;
	if (rc < 0)
		return rc;
	snprintf(text, sizeof(text), "451 4.3.0 consentd: %s", message);
	return policy_reply(&c->out, text);
}

/* One whole request. */
static int policy_request(struct conn_ctx *x, struct conn *c,
			  const struct policy_request *req)
{
	const struct policymap_rule *rule = NULL;
	struct check_input *in;

	x->n_requests++;
	c->stat_requests++;
	metrics_inc(&x->m->policy_requests);
	if (POLICY_IS(&req->request, "smtpd_access_policy") &&
	    POLICY_IS(&req->protocol_state, "RCPT")) {
		if (x->cfg->policy_map != NULL)
			rule = policymap_lookup(x->cfg->policy_map,
						req->sasl_username.p,
						req->sasl_username.len,
						req->sender.p, req->sender.len);
		if (rule == NULL)
			metrics_inc(&x->m->policy_unmapped);
	}
	if (rule == NULL) {
		int rc = policy_flush(x, c);

		return rc < 0 ? rc : policy_reply(&c->out, "DUNNO");
	}
	in = &x->in[x->n_in];
	*in = (struct check_input){
		.recipient = req->recipient.p != NULL ? req->recipient.p : "",
		.recipient_len = req->recipient.len,
		.brand_code = rule->brand_code,
		.channel = CHANNEL_EPOSTA,
		.rtype = RTYPE_BIREYSEL,
		.purpose = rule->purpose,
	};
	if (++x->n_in == CONN_BATCH_MAX)
		return policy_flush(x, c);
	return 0;
}

static long policy_process(struct conn_ctx *x, struct conn *c,
			   const char *buf, size_t len)
{
	const struct server_config *cfg = x->cfg;
	const struct policy_limits lim = {
		.max_line_bytes = cfg->policy_max_line_bytes,
		.max_attrs = cfg->policy_max_attrs,
	};
	struct policy_parser *ps = policy_conn_parser(c);
	size_t pos = 0;
	int rc = 0;

	while (!c->want_close && rc == 0 && pos < len) {
		struct policy_request req;
		const char *why = "malformed";
		long n;

		if (conn_out_pending(c) > cfg->conn_out_cap_bytes) {
			c->paused = true;
			break;
		}
		n = policy_parse(ps, buf + pos, len - pos, &lim, &req, &why);
		if (n == 0)
			break;
		if (n < 0) {
			char msg[96];

			if (n == -EPROTO)
				metrics_inc(&x->m->frames_undecodable);
			else
				metrics_inc(&x->m->frames_oversize);
			snprintf(msg, sizeof(msg), "policy request refused: %s",
				 why);
			rc = policy_reply_fatal(x, c, msg);
			break;
		}
		memset(ps, 0, sizeof(*ps));
		pos += (size_t)n;
		rc = policy_request(x, c, &req);
	}
	if (rc == 0)
		rc = policy_flush(x, c);
	if (rc < 0)
		return rc;
	return c->want_close ? (long)len : (long)pos;
}

/* ---- the protocol ------------------------------------------------------ */

static int policy_proto_fatal(struct conn_ctx *x, struct conn *c,
			      enum conn_fatal why)
{
	char msg[96];

	if (why == CONN_FATAL_TOO_LARGE)
		return policy_reply_fatal(x, c, "policy request over the "
					  "per-connection input cap");
	snprintf(msg, sizeof(msg), "incomplete policy request after %u ms",
		 x->cfg->partial_timeout_ms);
	return policy_reply_fatal(x, c, msg);
}

static const char policy_refusal[] =
	"action=451 4.3.0 consentd: max connections\n\n";

const struct conn_proto policy_proto = {
	.name = "policy",
	.metrics = METRICS_POLICY,
	.process = policy_process,
	.reply_fatal = policy_proto_fatal,
	.reply_apply = NULL, /* the policy port submits no Apply */
	.ctx_create = NULL,  /* no per-worker state */
	.ctx_destroy = NULL,
	.refusal = policy_refusal,
	.refusal_len = sizeof(policy_refusal) - 1,
};
