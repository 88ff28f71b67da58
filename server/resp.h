/*
 * resp: the Redis-protocol port (DESIGN §3.3), enough of RESP2 for
 * redis-cli, redis-benchmark and Redis client libraries.
 *
 * Commands (names in any case):
 *   CHECK recipient brand channel [BIREYSEL|TACIR] [TICARI|BILGILENDIRME]
 *         [AT unix | ATSEQ n]
 *     -> *4 [:allow, +REASON, $status or nil, :consent_date or nil]; a
 *        malformed check -> -ERR INVALID_REQUEST <what was wrong>.
 *        The two optional words may come in either order. AT / ATSEQ
 *        (§10, each with its value) answer as of that Unix time or log
 *        sequence from the evidence store: *5, the same four and the
 *        deciding record's :sequence (nil when no record decided).
 *   HISTORY recipient brand channel [BIREYSEL|TACIR]
 *     -> an array, oldest first, of *7 [:sequence, $status, $source,
 *        :consent_date, :creation_date, $transaction_id, :applied_at]
 *        (the newest 1000 at most); -ERR INVALID_REQUEST, -NOPERM (a
 *        brand outside the principal's), -ERR history is off.
 *   MCHECK brand channel rtype purpose r1 [r2 ...]
 *     -> one :1/:0 per recipient, or -ERR INVALID_REQUEST <why> in the
 *        place of a recipient that does not normalise.
 *   AUTH [user] token -> +OK | -WRONGPASS ... (+OK with no token file)
 *   PING [msg], QUIT (+OK, then close), INFO (bulk text)
 *   anything else -> -ERR unknown command '...' (the connection stays).
 * Before AUTH (with a token file) only AUTH, PING and QUIT are served
 * (-NOAUTH otherwise) and the parser's limits are the lower ones.
 *
 * The parser takes arrays of bulk strings and, like Redis, inline commands
 * (one line of space-separated words, at most 4 arguments' worth of
 * bytes). It is incremental: state between receives lives in struct
 * resp_parser, so a command dripping in byte by byte is scanned once.
 * A protocol error is answered -ERR Protocol error: ... and closes.
 */
#ifndef CONSENTD_SERVER_RESP_H
#define CONSENTD_SERVER_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "server/conn.h"

/* The incremental parser's state between receives (a connection's, in its
 * conn_proto_state). */
struct resp_parser {
	size_t pos;     /* bytes of the current command already scanned */
	uint32_t nargs; /* arguments the array announced (0: not yet) */
	uint32_t done;  /* arguments scanned whole */
};

/* One argument: bytes inside the input (not NUL-terminated). */
struct resp_arg {
	const char *p;
	uint32_t len;
};

struct resp_limits {
	uint32_t max_args;      /* arguments per command, name included */
	uint32_t max_arg_bytes; /* bytes per argument */
};

/* Parses one command at the start of buf[0..len) (buf starts where the
 * command starts; ps carries the progress of earlier calls on the same
 * command, zeroed by the caller after each complete one). Returns the
 * command's bytes with args[0..*argc) pointing into buf (argc 0: an empty
 * command, to be ignored), 0 if more bytes are needed, or an error with
 * *why set: -EPROTO (not RESP), -E2BIG (too many arguments), -EMSGSIZE (an
 * argument too long). args_cap must be at least lim->max_args. */
long resp_parse(struct resp_parser *ps, const char *buf, size_t len,
		const struct resp_limits *lim, struct resp_arg *args,
		uint32_t args_cap, uint32_t *argc, const char **why);

/* The whole refusal sent at the connection cap. */
extern const char resp_refusal[];
extern const size_t resp_refusal_len;

/* The port, for conn and loop (server/conn.h): process handles the
 * complete commands of a receive (replies appended to c->out, in order);
 * reply_fatal answers "-ERR ..." for a stalled command or input over its
 * cap, then closes. */
extern const struct conn_proto resp_proto;

#endif
