/*
 * config: the server's settings, parsed once from the command line by
 * main.c and const afterwards (STYLE.md): every thread reads it, none
 * writes it. Every limit is a flag with the default given here.
 */
#ifndef CONSENTD_SERVER_CONFIG_H
#define CONSENTD_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"

struct policymap;
struct tokens;
struct replica;
struct writer;
struct history;

struct server_config {
	const char *data_dir;
	const char *snapshot;      /* NULL, a path, or "-" for stdin */
	const char *bootstrap_from; /* NULL, or a peer's http://HOST:PORT */
	const char *rpc_addr;      /* "HOST:PORT", default 127.0.0.1:7700 */
	const char *resp_addr;     /* default 127.0.0.1:7701 */
	const char *http_addr;     /* default 127.0.0.1:7702 */
	const char *ports_file;    /* NULL, or where the bound addresses go */
	uint32_t bind_wait_ms;     /* a listener's port in use: wait 10000 */
	const char *policy_addr;   /* Postfix policy port; NULL: off */
	const struct policymap *policy_map; /* --policy-map; set with it */
	const char *tls_cert;      /* PEM; with tls_key: TLS on client ports */
	const char *tls_key;
	const char *tls_ca;        /* NULL: no client certificates asked */
	const char *tls_listeners; /* "rpc,resp"; NULL: all but policy */
	const char *grpc_addr;     /* gRPC port, default 127.0.0.1:7703 */
	uint32_t grpc_max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS: 100 */
	unsigned workers;          /* default: online cores */
	const struct tokens *tokens; /* NULL: every client trusted */
	int64_t stale_soft_s;      /* readiness off past this age; 0 = off */
	int64_t stale_hard_s;      /* ALLOW becomes DATA_STALE; 0 = off */
	struct decision_policy policy;
	/* The single writer (server/writer.h), set by main before the workers
	 * start; NULL: Apply is refused (503). */
	struct writer *writer;
	/* DESIGN §10: the writer's evidence store (writer_history), set by
	 * main with it; NULL: --history off (as-of checks and history
	 * queries are refused). */
	struct history *history;
	bool history_off;                /* --history off (default on) */
	uint32_t history_keep_days;      /* --history-keep DAYS: 0 keeps all */
	uint32_t checkpoint_changes;     /* a generation every N changes; 0: auto */
	/* Replicated mode (DESIGN §9, server/replica.h): NULL nats_urls is
	 * the embedded change log alone. */
	const char *nats_urls;           /* --nats URL[,URL...] */
	const char *nats_stream;         /* CONSENT */
	const char *nats_consumer;       /* default: the host name */
	uint32_t max_lag_s;              /* readiness off further behind; 0: off */
	struct replica *replica;         /* set by main with --nats */
	uint32_t changelog_segment_bytes; /* change log segments; 0: 64 MiB */

	/* Limits (DESIGN §4). */
	uint32_t max_frame_bytes;        /* RPC frame, authenticated: 1 MiB */
	uint32_t max_frame_bytes_unauth; /* before AUTH: 4 KiB */
	uint32_t max_resp_args;          /* RESP arguments per command: 100000 */
	uint32_t max_resp_args_unauth;   /* before AUTH: 8 */
	uint32_t max_resp_arg_bytes;     /* one RESP argument: 4096 */
	uint32_t max_resp_arg_bytes_unauth; /* before AUTH: 1024 */
	uint32_t policy_max_line_bytes;  /* one policy name=value line: 4096 */
	uint32_t policy_max_attrs;       /* attributes per policy request: 100 */
	uint32_t conn_in_cap_bytes;      /* buffered partial input: 1 MiB + frame header */
	uint32_t conn_out_cap_bytes;     /* unsent replies: 4 MiB; stop reading past it */
	uint32_t max_connections;        /* per worker: 10000 */
	uint32_t idle_timeout_ms;        /* no bytes at all: 300000 */
	uint32_t partial_timeout_ms;     /* stalled mid-frame: 10000 */
	uint32_t send_timeout_ms;        /* replies unsent this long: 30000 */
	uint32_t shutdown_grace_ms;      /* SIGTERM: in-flight replies, 5000 */

	/* Receive buffers (one provided-buffer ring per worker). */
	uint32_t recv_buffers;           /* power of 2, <= 32768: 2048 */
	uint32_t recv_buffer_bytes;      /* each: 4096 */
	int index_load;                  /* enum index_load_mode: anon */
};

/* The defaults above (workers 0 = one per online core, chosen by main). */
static inline void server_config_defaults(struct server_config *cfg)
{
	*cfg = (struct server_config){
		.rpc_addr = "127.0.0.1:7700",
		.resp_addr = "127.0.0.1:7701",
		.http_addr = "127.0.0.1:7702",
		.grpc_addr = "127.0.0.1:7703",
		.grpc_max_streams = 100,
		.bind_wait_ms = 10000,
		.nats_stream = "CONSENT",
		.max_frame_bytes = 1u << 20,
		.max_frame_bytes_unauth = 4096,
		.max_resp_args = 100000,
		.max_resp_args_unauth = 8,
		.max_resp_arg_bytes = 4096,
		.max_resp_arg_bytes_unauth = 1024,
		.policy_max_line_bytes = 4096,
		.policy_max_attrs = 100,
		.conn_in_cap_bytes = (1u << 20) + 4,
		.conn_out_cap_bytes = 4u << 20,
		.max_connections = 10000,
		.idle_timeout_ms = 300000,
		.partial_timeout_ms = 10000,
		.send_timeout_ms = 30000,
		.shutdown_grace_ms = 5000,
		.recv_buffers = 2048,
		.recv_buffer_bytes = 4096,
		.index_load = 0, /* INDEX_LOAD_ANON */
	};
}

#endif
