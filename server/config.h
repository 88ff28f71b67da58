/*
 * config: the server's settings, parsed once from the command line by
 * main.c and const afterwards (STYLE.md): every thread reads it, none
 * writes it. Every limit is a flag with the default given here.
 */
#ifndef CONSENTD_SERVER_CONFIG_H
#define CONSENTD_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"

struct tokens;

struct server_config {
	const char *data_dir;
	const char *snapshot;      /* NULL, a path, or "-" for stdin */
	const char *rpc_addr;      /* "HOST:PORT", default 127.0.0.1:7700 */
	const char *resp_addr;     /* default 127.0.0.1:7701 */
	const char *http_addr;     /* default 127.0.0.1:7702 */
	unsigned workers;          /* default: online cores */
	const struct tokens *tokens; /* NULL: every client trusted */
	int64_t stale_soft_s;      /* readiness off past this age; 0 = off */
	int64_t stale_hard_s;      /* ALLOW becomes DATA_STALE; 0 = off */
	struct decision_policy policy;

	/* Limits (DESIGN §4). */
	uint32_t max_frame_bytes;        /* RPC frame, authenticated: 1 MiB */
	uint32_t max_frame_bytes_unauth; /* before AUTH: 4 KiB */
	uint32_t max_resp_args;          /* RESP arguments per command: 100000 */
	uint32_t max_resp_args_unauth;   /* before AUTH: 8 */
	uint32_t max_resp_arg_bytes;     /* one RESP argument: 4096 */
	uint32_t conn_in_cap_bytes;      /* buffered partial input: 1 MiB + frame header */
	uint32_t conn_out_cap_bytes;     /* unsent replies: 4 MiB; stop reading past it */
	uint32_t max_connections;        /* per worker: 10000 */
	uint32_t idle_timeout_ms;        /* no bytes at all: 300000 */
	uint32_t partial_timeout_ms;     /* stalled mid-frame: 10000 */
	uint32_t send_timeout_ms;        /* replies unsent this long: 30000 */
};

#endif
