/*
 * policy: the Postfix policy delegation port (DESIGN §11, --policy), the
 * protocol of Postfix's check_policy_service: a request is name=value
 * lines ended by an empty line; the answer is one "action=..." line and an
 * empty line. Postfix keeps the connection open for further requests; a
 * client may pipeline them, and they are answered in order, one reply
 * each.
 *
 * Only requests with request=smtpd_access_policy at protocol_state=RCPT
 * are judged; every other request is answered DUNNO. At RCPT the policy
 * map (cfg->policy_map, core/policymap.h) turns sasl_username, else the
 * sender address, else the sender's domain into a brand and a purpose; an
 * unmapped sender is DUNNO. A mapped one has its recipient checked
 * through check_batch as EPOSTA, BIREYSEL, and the verdict answers:
 *   allow (CONSENT_GIVEN, NOT_COMMERCIAL)  DUNNO: let the restrictions
 *       after it decide (an OK would also skip reject_unauth_destination
 *       and the like, and could open a relay);
 *   CONSENT_REJECTED, NO_CONSENT          550 5.7.1 REASON: ... (İYS);
 *   INVALID_REQUEST (the recipient does   550 5.7.1 INVALID_REQUEST:
 *       not normalise as an e-mail)           <what was wrong> (İYS):
 *       never an allow (DESIGN §1.3 row 1), and retrying cannot help;
 *   DATA_STALE (past --stale-hard, or     451 4.7.1 DATA_STALE: consent
 *       no index loaded yet)                  data stale (İYS): the
 *       consent may well exist, so the sender retries later.
 * The port takes no token (there is no AUTH in the protocol): every
 * client is trusted, so it must listen on loopback or a trusted network
 * only. NOT_AUTHORIZED therefore cannot happen.
 *
 * Limits: a line (name=value) of at most cfg->policy_max_line_bytes, at
 * most cfg->policy_max_attrs attributes per request; past either, or a
 * line without '=', the reply is "action=451 4.3.0 ..." and the
 * connection closes (so Postfix defers the recipient, never accepts it).
 * The per-connection input and output caps and deadlines are conn.c's,
 * as on the other ports.
 */
#ifndef CONSENTD_SERVER_POLICY_H
#define CONSENTD_SERVER_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "server/conn.h"

/* The incremental parser's state between receives (a connection's, in its
 * conn_proto_state): lines before pos are whole and valid. */
struct policy_parser {
	size_t pos;       /* bytes of the current request already scanned */
	uint32_t n_attrs; /* attribute lines among them */
};

struct policy_limits {
	uint32_t max_line_bytes; /* one name=value line, without its LF */
	uint32_t max_attrs;      /* attribute lines per request */
};

/* One attribute's value: bytes inside the input (not NUL-terminated);
 * p NULL when the request did not have it. */
struct policy_value {
	const char *p;
	uint32_t len;
};

/* The attributes consentd reads; Postfix sends some thirty, the rest are
 * ignored. If one comes twice, the last counts. */
struct policy_request {
	struct policy_value request;        /* "smtpd_access_policy" */
	struct policy_value protocol_state; /* "RCPT", "MAIL", "DATA", ... */
	struct policy_value sender;         /* "" for the null sender */
	struct policy_value recipient;
	struct policy_value sasl_username;
	uint32_t n_attrs;
};

/* Parses one request at the start of buf[0..len) (ps carries the progress
 * of earlier calls on the same request; the caller zeroes it after each
 * complete one). Returns the request's bytes, its empty line included,
 * with *req pointing into buf; 0 if more bytes are needed; or an error
 * with *why set: -EMSGSIZE (a line too long), -E2BIG (too many
 * attributes), -EPROTO (a line that is not name=value). A line may end in
 * CRLF as well as LF. */
long policy_parse(struct policy_parser *ps, const char *buf, size_t len,
		  const struct policy_limits *lim, struct policy_request *req,
		  const char **why);

/* The port, for conn and loop (server/conn.h). */
extern const struct conn_proto policy_proto;

#endif
