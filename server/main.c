/*
 * consentd: the server (DESIGN §3.6). Parses the command line into a const
 * struct server_config, loads the token file, opens the data directory
 * through the single writer (server/writer.c: the change log, the newest
 * generation, the log replayed into it), starts the writer, the workers
 * (server/loop.c) and the HTTP ops port (server/http.c), then waits for
 * SIGTERM/SIGINT and stops gracefully. SIGUSR1 asks the writer for a
 * rebuilt generation; SIGHUP reloads the TLS files (server/tls.h), which
 * the client ports named by --tls-listeners speak with --tls-cert.
 * --history on|off and --history-keep DAYS govern the evidence store
 * (DESIGN §10, server/writer.h): the writer keeps it; the build thread
 * puts the first snapshot of a data directory into it (build_index_sink).
 * --config FILE gives flags as lines of a file (server/conffile.h), read
 * first, the command line overriding it. A
 * service manager is told READY=1 once the listeners are up and an index
 * is served, STOPPING=1 on the signal, and the watchdog is pinged from the
 * signal loop while the workers turn (server/notify.h). Exit status: 0
 * after a signal, 2 for bad flags (or config lines), a bad token file or a
 * bad policy map (before anything listens), 1 for any other failure to
 * start (a damaged change log among them).
 *
 * --bootstrap-from http://HOST:PORT, for a DIR without a generation: the
 * peer's GET /v1/snapshot is downloaded (core/download.h) into a pipe
 * that the same background build reads as it arrives, and the result is
 * DIR's first generation, with the peer's watermark and §8 state (an
 * ignored flag, said so, when DIR has one). A failed or cut download
 * publishes nothing: consentd says what failed and exits 1 (no retry: the
 * service manager's restart is the retry, from an empty DIR again).
 *
 * A --snapshot is built on a background thread, in memory, while the
 * previous generation (if any) is served; the writer then takes it
 * (replays the changes past its watermark, publishes it as the next
 * generation and swaps it in with live_publish). With no previous
 * generation the listeners are already up meanwhile and every check
 * answers as if no record existed, without ever allowing (index/check.c: no
 * index counts as stale); /readyz says not ready.
 *
 * Listeners: --rpc, --resp, --http, --grpc (and --policy when given)
 * take HOST:PORT or [v6]:PORT, read by
 * server/addr.c (checked while the flags are parsed: a bad one is exit 2);
 * port 0 lets the kernel choose. A port in use is waited for up to
 * --bind-wait-ms (default 10000; a kill -9'd predecessor's io_uring can
 * hold its listeners a moment after it is reaped). Each bound address is
 * logged, and with --ports-file FILE written, once all are bound
 * (independent of readiness), atomically (temp file in the same
 * directory, fsync, rename, directory fsync) as one line per listener:
 *   rpc 127.0.0.1:PORT
 *   resp 127.0.0.1:PORT
 *   grpc 127.0.0.1:PORT
 *   http [::1]:PORT
 * The file is left in place at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/download.h"
#include "core/policymap.h"
#include "core/tokens.h"
#include "index/build.h"
#include "index/generation.h"
#include "index/history.h"
#include "index/table.h"
#include "server/addr.h"
#include "server/conffile.h"
#include "server/config.h"
#include "server/http.h"
#include "server/live.h"
#include "server/loop.h"
#include "server/metrics.h"
#include "server/notify.h"
#include "server/grpc.h"
#include "server/policy.h"
#include "server/replica.h"
#include "server/resp.h"
#include "server/rpc.h"
#include "server/tls.h"
#include "server/writer.h"

#define MAIN_LOOP_REFUSE_SLOTS 64 /* loop.c's slots beyond the cap */
#define MAIN_OTHER_FILES 64       /* room for listeners, rings, data files */
#define MAIN_MIN_CONNECTIONS 8    /* per worker: fewer is no server */

/* ---- flags ------------------------------------------------------------- */

enum flag_kind {
	FLAG_STR,
	FLAG_U32,
	FLAG_I64,
};

struct flag {
	const char *name;
	enum flag_kind kind;
	size_t offset;     /* in struct server_config */
	uint64_t min, max; /* numbers */
	const char *help;
};

#define CFG_OFF(f) offsetof(struct server_config, f)

static const struct flag main_flags[] = {
	{ "data-dir", FLAG_STR, CFG_OFF(data_dir), 0, 0,
	  "DIR: index generations and change log (required)" },
	{ "snapshot", FLAG_STR, CFG_OFF(snapshot), 0, 0,
	  "FILE|-: build a new generation from this snapshot stream" },
	{ "bootstrap-from", FLAG_STR, CFG_OFF(bootstrap_from), 0, 0,
	  "http://HOST:PORT: DIR without a generation starts from this "
	  "peer's /v1/snapshot (token: $CONSENTD_TOKEN)" },
	{ "rpc", FLAG_STR, CFG_OFF(rpc_addr), 0, 0,
	  "HOST:PORT of the protobuf RPC port (127.0.0.1:7700)" },
	{ "resp", FLAG_STR, CFG_OFF(resp_addr), 0, 0,
	  "HOST:PORT of the Redis-protocol port (127.0.0.1:7701)" },
	{ "http", FLAG_STR, CFG_OFF(http_addr), 0, 0,
	  "HOST:PORT of the HTTP ops port (127.0.0.1:7702)" },
	{ "ports-file", FLAG_STR, CFG_OFF(ports_file), 0, 0,
	  "FILE: once every listener is bound, their addresses (atomically)" },
	{ "bind-wait-ms", FLAG_U32, CFG_OFF(bind_wait_ms), 0, 600000,
	  "a listener's port in use: try again this long (10000)" },
	{ "policy", FLAG_STR, CFG_OFF(policy_addr), 0, 0,
	  "HOST:PORT of the Postfix policy port (off; needs --policy-map; "
	  "no tokens: keep it on loopback or a trusted network)" },
	{ "policy-max-line-bytes", FLAG_U32, CFG_OFF(policy_max_line_bytes),
	  64, 1u << 20, "bytes of one policy name=value line (4096)" },
	{ "policy-max-attrs", FLAG_U32, CFG_OFF(policy_max_attrs), 8,
	  1u << 16, "attributes per policy request (100)" },
	{ "tls-cert", FLAG_STR, CFG_OFF(tls_cert), 0, 0,
	  "FILE: PEM certificate (chain): TLS on the client ports (needs "
	  "--tls-key; SIGHUP reloads it)" },
	{ "tls-key", FLAG_STR, CFG_OFF(tls_key), 0, 0,
	  "FILE: PEM private key of --tls-cert" },
	{ "tls-ca", FLAG_STR, CFG_OFF(tls_ca), 0, 0,
	  "FILE: PEM CA certificates: clients must present a certificate "
	  "they signed (off)" },
	{ "tls-listeners", FLAG_STR, CFG_OFF(tls_listeners), 0, 0,
	  "LIST: the client ports that speak TLS with --tls-cert, e.g. "
	  "rpc,resp (every one but policy)" },
	{ "grpc", FLAG_STR, CFG_OFF(grpc_addr), 0, 0,
	  "HOST:PORT of the gRPC port (127.0.0.1:7703)" },
	{ "grpc-max-streams", FLAG_U32, CFG_OFF(grpc_max_streams), 1, 65536,
	  "concurrent gRPC calls per connection (100)" },
	{ "workers", FLAG_U32, CFG_OFF(workers), 1, 1024,
	  "N worker threads, one io_uring each (online cores)" },
	{ "stale-soft", FLAG_I64, CFG_OFF(stale_soft_s), 0, INT32_MAX,
	  "SEC: data older than this is not ready (0 = off)" },
	{ "stale-hard", FLAG_I64, CFG_OFF(stale_hard_s), 0, INT32_MAX,
	  "SEC: past this, allows become DATA_STALE (0 = off)" },
	{ "max-frame-bytes", FLAG_U32, CFG_OFF(max_frame_bytes), 16,
	  64u << 20, "RPC frame limit once authenticated (1048576)" },
	{ "max-frame-bytes-unauth", FLAG_U32, CFG_OFF(max_frame_bytes_unauth),
	  16, 64u << 20, "RPC frame limit before Auth (4096)" },
	{ "max-resp-args", FLAG_U32, CFG_OFF(max_resp_args), 2, 1u << 20,
	  "RESP arguments per command (100000)" },
	{ "max-resp-args-unauth", FLAG_U32, CFG_OFF(max_resp_args_unauth), 2,
	  1u << 20, "RESP arguments per command before AUTH (8)" },
	{ "max-resp-arg-bytes", FLAG_U32, CFG_OFF(max_resp_arg_bytes), 16,
	  64u << 20, "bytes of one RESP argument (4096)" },
	{ "max-resp-arg-bytes-unauth", FLAG_U32,
	  CFG_OFF(max_resp_arg_bytes_unauth), 16, 64u << 20,
	  "bytes of one RESP argument before AUTH (1024)" },
	{ "conn-in-cap-bytes", FLAG_U32, CFG_OFF(conn_in_cap_bytes), 1024,
	  1u << 30, "unprocessed input held per connection (1048580)" },
	{ "conn-out-cap-bytes", FLAG_U32, CFG_OFF(conn_out_cap_bytes), 1024,
	  1u << 30, "unsent replies per connection; reading stops past it "
	  "(4194304)" },
	{ "max-connections", FLAG_U32, CFG_OFF(max_connections), 1,
	  1u << 20, "client connections per worker (10000)" },
	{ "idle-timeout-ms", FLAG_U32, CFG_OFF(idle_timeout_ms), 1,
	  UINT32_MAX, "close a connection silent this long (300000)" },
	{ "partial-timeout-ms", FLAG_U32, CFG_OFF(partial_timeout_ms), 1,
	  UINT32_MAX, "close a connection stalled mid-frame (10000)" },
	{ "send-timeout-ms", FLAG_U32, CFG_OFF(send_timeout_ms), 1,
	  UINT32_MAX, "close a client that reads no replies this long (30000)" },
	{ "shutdown-grace-ms", FLAG_U32, CFG_OFF(shutdown_grace_ms), 0,
	  UINT32_MAX, "on SIGTERM, time to finish in-flight replies (5000)" },
	{ "recv-buffers", FLAG_U32, CFG_OFF(recv_buffers), 1, 32768,
	  "provided receive buffers per worker, a power of 2 (2048)" },
	{ "recv-buffer-bytes", FLAG_U32, CFG_OFF(recv_buffer_bytes), 256,
	  1u << 20, "bytes of each receive buffer (4096)" },
	{ "checkpoint-changes", FLAG_U32, CFG_OFF(checkpoint_changes), 0,
	  UINT32_MAX, "write a generation every N applied changes (0: the "
	  "larger of 1000000 and half the records)" },
	{ "nats", FLAG_STR, CFG_OFF(nats_urls), 0, 0,
	  "URL[,URL...]: replicated mode: the change log is this NATS "
	  "JetStream cluster's stream (off)" },
	{ "nats-stream", FLAG_STR, CFG_OFF(nats_stream), 0, 0,
	  "NAME of the JetStream stream, created when absent (CONSENT)" },
	{ "nats-consumer", FLAG_STR, CFG_OFF(nats_consumer), 0, 0,
	  "NAME of this replica's durable consumer (the host name)" },
	{ "max-lag", FLAG_U32, CFG_OFF(max_lag_s), 0, INT32_MAX,
	  "SEC: not ready while further behind the stream, or unable to "
	  "reach it for longer (0 = off)" },
	{ "history-keep", FLAG_U32, CFG_OFF(history_keep_days), 0, 36500,
	  "DAYS: the evidence store drops whole segments older than this "
	  "(0 = keep everything)" },
	{ "changelog-segment-bytes", FLAG_U32,
	  CFG_OFF(changelog_segment_bytes), 4096, 1u << 30,
	  "change log segment size (67108864)" },
};

#define N_FLAGS (sizeof(main_flags) / sizeof(main_flags[0]))

static void main_usage(FILE *f)
{
	fprintf(f,
		"usage: consentd --data-dir DIR [--snapshot FILE|- | "
		"--bootstrap-from http://HOST:PORT]\n"
		"                [--rpc HOST:PORT]\n"
		"                [--resp HOST:PORT] [--http HOST:PORT] "
		"[--ports-file FILE]\n"
		"                [--grpc HOST:PORT]"
		"\n"
		"                [--bind-wait-ms N] [--workers N]"
		"\n"
		"                [--tokens FILE] [--stale-soft SEC] "
		"[--stale-hard SEC]\n"
		"                [--merchant-default allow|deny] "
		"[--index-load anon|mmap]\n"
		"                [--policy HOST:PORT --policy-map FILE] "
		"[LIMITS]\n"
		"                [--tls-cert FILE --tls-key FILE [--tls-ca FILE]"
		" [--tls-listeners LIST]]\n"
		"                [--nats URL[,URL...] [--nats-stream NAME] "
		"[--nats-consumer NAME] [--max-lag SEC]]\n"
		"                [--history on|off] [--history-keep DAYS]\n"
		"       consentd --config FILE [flags over it]\n\n");
	for (size_t i = 0; i < N_FLAGS; i++)
		fprintf(f, "  --%-26s %s\n", main_flags[i].name,
			main_flags[i].help);
	fprintf(f, "  --%-26s %s\n", "tokens",
		"FILE: partner tokens (NAME SHA256HEX BRANDS [apply] [stats] [reject]); "
		"without it every client is trusted");
	fprintf(f, "  --%-26s %s\n", "policy-map",
		"FILE: senders to brands for --policy (KEY BRAND "
		"[TICARI|BILGILENDIRME]; KEY user@dom, @dom, dom or "
		"sasl:USER)");
	fprintf(f, "  --%-26s %s\n", "merchant-default",
		"allow|deny: a TACIR with no record (allow)");
	fprintf(f, "  --%-26s %s\n", "history",
		"on|off: keep every applied change in DIR/history, with a "
		"SHA-256 chain, for as-of checks and history queries (on)");
	fprintf(f, "  --%-26s %s\n", "index-load",
		"anon|mmap: copy the index into huge-page memory, or map it "
		"(anon)");
	fprintf(f, "  --%-26s %s\n", "config",
		"FILE: these settings as lines 'name value' (# comments); "
		"flags given too override it");
	fprintf(f, "  --%-26s %s\n", "help", "this text");
	fprintf(f, "\nSIGTERM or SIGINT stops gracefully; SIGHUP reloads the "
		   "TLS files. Flags also take --flag=value.\n");
}

static int main_number(const char *s, uint64_t min, uint64_t max,
		       uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* A refused flag: "consentd: MSG", or "consentd: FILE:LINE: MSG" for a
 * line of the config file (at). */
static void main_flag_error(const char *at, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "consentd: ");
	if (at != NULL)
		fprintf(stderr, "%s: ", at);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

/* Flags into cfg: the command line (at NULL), where --config FILE is
 * taken into *config_path and --help answered; or one line of the config
 * file (at "FILE:LINE", config_path NULL), where neither is a name. */
static int main_parse(int argc, char **argv, struct server_config *cfg,
		      const char **tokens_path, const char **policy_map_path,
		      const char **config_path, const char *at)
{
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *name, *val, *eq;
		char namebuf[64];
		size_t nl;
		const struct flag *f = NULL;

		if (strncmp(arg, "--", 2) != 0) {
			main_flag_error(at, "unexpected argument '%s'\n", arg);
			return -EINVAL;
		}
		name = arg + 2;
		eq = strchr(name, '=');
		nl = eq ? (size_t)(eq - name) : strlen(name);
		if (nl >= sizeof(namebuf)) {
			main_flag_error(at, "unknown flag '%s'\n", arg);
			return -EINVAL;
		}
		memcpy(namebuf, name, nl);
		namebuf[nl] = '\0';
		if (strcmp(namebuf, "help") == 0 && at == NULL) {
			main_usage(stdout);
			exit(0);
		}
		for (size_t k = 0; k < N_FLAGS; k++)
			if (strcmp(main_flags[k].name, namebuf) == 0)
				f = &main_flags[k];
		if (f == NULL && strcmp(namebuf, "tokens") != 0 &&
		    strcmp(namebuf, "policy-map") != 0 &&
		    strcmp(namebuf, "merchant-default") != 0 &&
		    strcmp(namebuf, "history") != 0 &&
		    strcmp(namebuf, "index-load") != 0 &&
		    (strcmp(namebuf, "config") != 0 || config_path == NULL)) {
			if (at != NULL)
				main_flag_error(at, "unknown name '%s' (the "
						"names are the flags consentd "
						"--help lists)\n", namebuf);
			else
				main_flag_error(at, "unknown flag '--%s' (see "
						"--help)\n", namebuf);
			return -EINVAL;
		}
		if (eq != NULL) {
			val = eq + 1;
		} else if (i + 1 < argc) {
			val = argv[++i];
		} else {
			main_flag_error(at, "--%s needs a value\n", namebuf);
			return -EINVAL;
		}
		if (strcmp(namebuf, "tokens") == 0) {
			*tokens_path = val;
			continue;
		}
		if (strcmp(namebuf, "policy-map") == 0) {
			*policy_map_path = val;
			continue;
		}
		if (strcmp(namebuf, "config") == 0) {
			*config_path = val;
			continue;
		}
		if (strcmp(namebuf, "merchant-default") == 0) {
			if (strcmp(val, "allow") == 0)
				cfg->policy.merchant_default_deny = false;
			else if (strcmp(val, "deny") == 0)
				cfg->policy.merchant_default_deny = true;
			else {
				main_flag_error(at, "--merchant-default must "
						"be allow or deny, not '%s'\n", val);
				return -EINVAL;
			}
			continue;
		}
		if (strcmp(namebuf, "history") == 0) {
			if (strcmp(val, "on") == 0)
				cfg->history_off = false;
			else if (strcmp(val, "off") == 0)
				cfg->history_off = true;
			else {
				main_flag_error(at, "--history must be on or "
						"off, not '%s'\n", val);
				return -EINVAL;
			}
			continue;
		}
		if (strcmp(namebuf, "index-load") == 0) {
			if (strcmp(val, "anon") == 0)
				cfg->index_load = INDEX_LOAD_ANON;
			else if (strcmp(val, "mmap") == 0)
				cfg->index_load = INDEX_LOAD_MMAP;
			else {
				main_flag_error(at, "--index-load must be anon "
						"or mmap, not '%s'\n", val);
				return -EINVAL;
			}
			continue;
		}
		if (f->kind == FLAG_STR) {
			if (*val == '\0') {
				main_flag_error(at, "--%s is empty\n",
						f->name);
				return -EINVAL;
			}
			*(const char **)((char *)cfg + f->offset) = val;
		} else {
			uint64_t v;

			if (main_number(val, f->min, f->max, &v) < 0) {
				main_flag_error(at, "--%s wants a whole number "
						"from %llu to %llu, not '%s'\n",
						f->name,
						(unsigned long long)f->min,
						(unsigned long long)f->max, val);
				return -EINVAL;
			}
			if (f->kind == FLAG_U32)
				*(uint32_t *)((char *)cfg + f->offset) =
					(uint32_t)v;
			else
				*(int64_t *)((char *)cfg + f->offset) =
					(int64_t)v;
		}
	}
	return 0;
}

#define MAIN_PORTS_MAX 8           /* client ports (protocols) */
static unsigned main_ports(const struct server_config *cfg,
			   const char *addr[MAIN_PORTS_MAX],
			   const struct conn_proto *proto[MAIN_PORTS_MAX]);

/* Whether the client port of protocol name speaks TLS: with a
 * certificate, the ports --tls-listeners names (a comma-separated list),
 * by default every one but Postfix's (Postfix speaks no TLS to a policy
 * server). */
static bool main_tls_on(const struct server_config *cfg, const char *name)
{
	size_t n = strlen(name);

	if (cfg->tls_cert == NULL)
		return false;
	if (cfg->tls_listeners == NULL)
		return strcmp(name, "policy") != 0;
	for (const char *p = cfg->tls_listeners; *p != '\0';) {
		size_t k = strcspn(p, ",");

		if (k == n && memcmp(p, name, n) == 0)
			return true;
		p += k + (p[k] == ',');
	}
	return false;
}

/* TLS's flags go together, and --tls-listeners names client ports. */
static int main_check_tls(const struct server_config *cfg)
{
	const char *addr[MAIN_PORTS_MAX];
	const struct conn_proto *proto[MAIN_PORTS_MAX];
	unsigned n_ports = main_ports(cfg, addr, proto);

	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
		fprintf(stderr, "consentd: --tls-cert FILE and --tls-key FILE "
			"go together\n");
		return -EINVAL;
	}
	if (cfg->tls_cert == NULL &&
	    (cfg->tls_ca != NULL || cfg->tls_listeners != NULL)) {
		fprintf(stderr, "consentd: --%s needs --tls-cert and "
			"--tls-key\n", cfg->tls_ca ? "tls-ca" : "tls-listeners");
		return -EINVAL;
	}
	for (const char *p = cfg->tls_listeners; p != NULL && *p != '\0';) {
		size_t k = strcspn(p, ",");
		bool known = false;

		for (unsigned i = 0; i < n_ports; i++)
			known |= strlen(proto[i]->name) == k &&
				 memcmp(p, proto[i]->name, k) == 0;
		if (!known) {
			fprintf(stderr, "consentd: --tls-listeners: '%.*s' is no "
				"client port (", (int)k, p);
			for (unsigned i = 0; i < n_ports; i++)
				fprintf(stderr, "%s%s", i ? ", " : "",
					proto[i]->name);
			fprintf(stderr, ")\n");
			return -EINVAL;
		}
		p += k + (p[k] == ',');
	}
	return 0;
}

/* What must hold of the whole configuration, file and flags. */
static int main_check(const struct server_config *cfg,
		      const char *policy_map_path)
{
	if (cfg->data_dir == NULL) {
		fprintf(stderr, "consentd: --data-dir DIR is required (see "
			"--help)\n");
		return -EINVAL;
	}
	{
		/* Addresses are read again when bound; a typo is a bad flag
		 * (exit 2, before anything starts). */
		const char *const names[] = { "rpc", "resp", "http",
					      "policy", "grpc" };
		const char *const addrs[] = { cfg->rpc_addr, cfg->resp_addr,
					      cfg->http_addr,
					      cfg->policy_addr,
					      cfg->grpc_addr };
		char host[ADDR_HOST_MAX], why[ADDR_HOST_MAX + 128];
		uint16_t port;

		for (int k = 0; k < 5; k++)
			if (addrs[k] != NULL &&
			    addr_split(addrs[k], host, &port, why,
				       sizeof(why)) < 0) {
				fprintf(stderr, "consentd: --%s %s\n", names[k],
					why);
				return -EINVAL;
			}
	}
	if (cfg->snapshot != NULL && cfg->bootstrap_from != NULL) {
		fprintf(stderr, "consentd: --snapshot and --bootstrap-from "
			"each give the first generation: give one\n");
		return -EINVAL;
	}
	if (cfg->bootstrap_from != NULL) {
		char url[2048], why[512];

		if (download_snapshot_url(cfg->bootstrap_from, url, sizeof(url),
					  why, sizeof(why)) < 0) {
			fprintf(stderr, "consentd: --bootstrap-from %s\n", why);
			return -EINVAL;
		}
	}
	if ((cfg->policy_addr == NULL) != (policy_map_path == NULL)) {
		fprintf(stderr, "consentd: --policy HOST:PORT and --policy-map "
			"FILE go together (a policy port without a map would "
			"answer DUNNO to everything)\n");
		return -EINVAL;
	}
	if (cfg->recv_buffers & (cfg->recv_buffers - 1)) {
		fprintf(stderr, "consentd: --recv-buffers must be a power of "
			"2\n");
		return -EINVAL;
	}
	if (cfg->conn_in_cap_bytes < cfg->max_frame_bytes_unauth + 4) {
		fprintf(stderr, "consentd: --conn-in-cap-bytes must hold a "
			"frame before Auth (--max-frame-bytes-unauth + 4)\n");
		return -EINVAL;
	}
	return main_check_tls(cfg);
}

/* The config file, then the command line over it, both through
 * main_parse: the file's lines one at a time, so that a refusal names
 * FILE:LINE. The command line is parsed alone first (into a scratch
 * configuration) to find --config, and to answer --help or refuse a bad
 * flag before any file is read. */
static int main_options(int argc, char **argv, struct server_config *cfg,
			const char **tokens_path, const char **policy_map_path)
{
	static struct conffile conf; /* cfg points into it for good */
	struct server_config scratch;
	const char *scratch_tokens = NULL, *scratch_map = NULL;
	const char *config_path = NULL;
	char err[512], at[PATH_MAX + 16];

	server_config_defaults(&scratch);
	if (main_parse(argc, argv, &scratch, &scratch_tokens, &scratch_map,
		       &config_path, NULL) < 0)
		return -EINVAL;
	if (config_path != NULL) {
		if (conffile_read(config_path, &conf, err, sizeof(err)) < 0) {
			fprintf(stderr, "consentd: --config %s\n", err);
			return -EINVAL;
		}
		for (size_t i = 0; i < conf.n_entries; i++) {
			char *line_argv[] = { argv[0], conf.entries[i].arg };

			snprintf(at, sizeof(at), "%s:%u", config_path,
				 conf.entries[i].line);
			if (main_parse(2, line_argv, cfg, tokens_path,
				       policy_map_path, NULL, at) < 0)
				return -EINVAL;
		}
	}
	if (main_parse(argc, argv, cfg, tokens_path, policy_map_path,
		       &config_path, NULL) < 0)
		return -EINVAL;
	return main_check(cfg, *policy_map_path);
}

/* ---- the snapshot build ------------------------------------------------ */

struct main_build {
	const struct server_config *cfg;
	struct writer *writer;
	pthread_t thread;
	bool wanted;    /* --snapshot, or --bootstrap-from into an empty DIR */
	char what[2100]; /* "--snapshot FILE", for messages */
	struct download *download; /* --bootstrap-from: feeds fd */
	int fd;
	int rc;
	char err[512];
	atomic_bool done;
	atomic_bool had_index;
	bool started;   /* the thread was created (main's alone) */
};

static void main_log_ready(const struct index *ix)
{
	struct index_info info;

	index_info(ix, &info);
	fprintf(stderr, "consentd: ready: generation %llu, %llu records\n",
		(unsigned long long)info.generation,
		(unsigned long long)info.n_records);
}

/* READY=1 to the service manager, naming the generation served. Main is
 * no RCU reader, hence live_info. */
static void main_notify_ready(struct notify *n)
{
	struct index_info info;

	if (live_info(&info))
		notify_ready(n, info.generation, info.n_records);
}

static void *main_build_thread(void *arg)
{
	struct main_build *b = arg;
	struct build_result res;
	struct generation *g = calloc(1, sizeof(*g));
	/* §10: the snapshot a data directory begins from goes into its
	 * evidence store, every record at its watermark, the store emptied
	 * first: what it holds then is a part of a snapshot whose build a
	 * crash interrupted before any generation existed, so nothing
	 * acknowledged rests on it (index/history.h). A later snapshot is
	 * not evidence of any change (README, Decisions). */
	struct history *hist = atomic_load(&b->had_index)
				       ? NULL : writer_history(b->writer);
	struct build_history_sink hs;
	build_history_sink_init(&hs, hist, (int64_t)time(NULL));

	memset(&res, 0, sizeof(res));
	/* In memory, never in the data directory: the writer takes it as it
	 * is and publishes it (server/writer.h). */
	b->rc = g == NULL ? -ENOMEM
			  : build_index_sink(b->fd, hist != NULL ? &hs.sink : NULL,
					     g, &res, b->err, sizeof(b->err));
	if (g == NULL)
		snprintf(b->err, sizeof(b->err), "out of memory");
	if (b->fd != STDIN_FILENO)
		close(b->fd); /* a download still writing stops (EPIPE) */
	if (b->download != NULL) {
		char derr[512];
		uint64_t bytes = 0;
		int drc = download_finish(b->download, &bytes, derr,
					  sizeof(derr));
		b->download = NULL;
		if (drc < 0 && b->rc < 0) {
			/* The download's failure is the cause; what the
			 * build saw of it (a truncated stream) follows. */
			char berr[512];
			snprintf(berr, sizeof(berr), "%s", b->err);
			snprintf(b->err, sizeof(b->err), "%.300s (the stream: "
				 "%.190s)", derr, berr);
		} else if (drc < 0) {
			/* Whole, trailer and checksum verified, before the
			 * transfer's end failed: kept. */
			fprintf(stderr, "consentd: %s: %s (the snapshot was "
				"whole and is kept)\n", b->what, derr);
		} else if (b->rc == 0) {
			fprintf(stderr, "consentd: %s: %llu bytes downloaded\n",
				b->what, (unsigned long long)bytes);
		}
	}
	if (b->rc == 0 && hs.unplaced)
		fprintf(stderr, "consentd: history: the snapshot states "
			"sequence 0, so its records are not in history (it "
			"starts with the first change)\n");
	if (b->rc == 0) {
		fprintf(stderr, "consentd: built snapshot: %llu records, "
			"watermark %llu, in %.1f s; the writer takes it\n",
			(unsigned long long)res.records,
			(unsigned long long)res.watermark, res.seconds);
		b->rc = writer_take_snapshot(b->writer, g, b->err,
					     sizeof(b->err));
	} else {
		free(g); /* build_index left it empty */
	}
	if (b->rc < 0)
		fprintf(stderr, "consentd: %s: %s%s\n", b->what, b->err,
			atomic_load(&b->had_index)
				? " (the previous generation stays served)"
				: "");
	/* Release: pairs with the acquire load in main's wait loop. */
	atomic_store_explicit(&b->done, true, memory_order_release);
	return NULL;
}

/* ---- the ports file ---------------------------------------------------- */

/* text into path so that a reader sees no file (or the one before) or all
 * of it: a temporary file in the same directory, fsync'd, renamed over
 * path, the directory fsync'd. 0, or -errno with a message. */
static int main_write_ports(const char *path, const char *text, char *err,
			    size_t err_cap)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	size_t len = strlen(text);
	int fd, rc = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path,
		     (long)getpid()) >= (int)sizeof(tmp)) {
		snprintf(err, err_cap, "%s: path too long", path);
		return -ENAMETOOLONG;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, err_cap, "%s: a temporary file beside it: %s",
			 path, strerror(-rc));
		return rc;
	}
	errno = 0; /* a short write sets none */
	if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
		rc = errno ? -errno : -EIO;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc < 0) {
		snprintf(err, err_cap, "%s: %s", path, strerror(-rc));
		unlink(tmp);
		return rc;
	}
	/* The rename itself survives a crash once the directory is synced;
	 * a failure here is not one of the file's. */
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else
		snprintf(dir, sizeof(dir), "%.*s",
			 slash == path ? 1 : (int)(slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
}

/* ---- start-up ---------------------------------------------------------- */

static unsigned main_online_cores(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (unsigned)n : 1;
}

/* Raises the open-files limit to its hard maximum: each worker's fixed
 * file table (its connection cap plus loop.c's refusal slots) must not
 * exceed it. Lowers the connection cap to fit, leaving the process's own
 * descriptors MAIN_OTHER_FILES, or half of what remains under a lower
 * limit; -EMFILE (said on stderr) if under MAIN_MIN_CONNECTIONS remain. */
static int main_files_limit(struct server_config *cfg)
{
	struct rlimit rl;
	uint64_t have, room, other;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	have = rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : rl.rlim_cur;
	room = have > MAIN_LOOP_REFUSE_SLOTS ? have - MAIN_LOOP_REFUSE_SLOTS : 0;
	if (cfg->max_connections <= room)
		return 0;
	other = room / 2 < MAIN_OTHER_FILES ? room / 2 : MAIN_OTHER_FILES;
	if (room - other < MAIN_MIN_CONNECTIONS) {
		fprintf(stderr, "consentd: open-files limit %llu leaves room "
			"for %llu connections per worker, fewer than %d: "
			"raise it (ulimit -n)\n", (unsigned long long)have,
			(unsigned long long)(room - other),
			MAIN_MIN_CONNECTIONS);
		return -EMFILE;
	}
	cfg->max_connections = (uint32_t)(room - other);
	fprintf(stderr, "consentd: open-files limit %llu: "
		"--max-connections lowered to %u\n",
		(unsigned long long)have, cfg->max_connections);
	return 0;
}

/* Everything main starts, so that one exit path stops what was started
 * (every stop and close below takes NULL or "not started"). */
struct main_state {
	struct server_config cfg;
	struct main_build build;
	struct notify notify;
	const char *tokens_path, *policy_map_path;
	struct tokens *tokens;
	struct policymap *policy_map;
	struct tls_server *tls; /* NULL: no TLS */
	struct writer *writer;
	struct loop *loop;
	struct http *http;
	sigset_t sigs;
	bool had_index;
	char bound[MAIN_PORTS_MAX][300]; /* each client port, as bound */
	char err[512];
};

/* The client ports: a new protocol is a new row; a NULL address is a port
 * that is off. */
static unsigned main_ports(const struct server_config *cfg,
			   const char *addr[MAIN_PORTS_MAX],
			   const struct conn_proto *proto[MAIN_PORTS_MAX])
{
	const char *const a[] = { cfg->rpc_addr, cfg->resp_addr,
				  cfg->policy_addr, cfg->grpc_addr };
	const struct conn_proto *const p[] = { &rpc_proto, &resp_proto,
					       &policy_proto, &grpc_proto };
	enum { N = sizeof(a) / sizeof(a[0]) };

	_Static_assert(N <= MAIN_PORTS_MAX, "room for the ports");
	for (unsigned i = 0; i < N; i++) {
		addr[i] = a[i];
		proto[i] = p[i];
	}
	return N;
}

/* The token file and the policy map: a bad one is exit 2. */
static int main_load_files(struct main_state *s)
{
	if (s->tokens_path != NULL) {
		if (tokens_load(s->tokens_path, &s->tokens, s->err,
				sizeof(s->err)) < 0) {
			fprintf(stderr, "consentd: --tokens %s: %s\n",
				s->tokens_path, s->err);
			return -EINVAL;
		}
		s->cfg.tokens = s->tokens;
	}
	if (s->policy_map_path != NULL) {
		if (policymap_load(s->policy_map_path, &s->policy_map, s->err,
				   sizeof(s->err)) < 0) {
			fprintf(stderr, "consentd: --policy-map %s: %s\n",
				s->policy_map_path, s->err);
			return -EINVAL;
		}
		s->cfg.policy_map = s->policy_map;
		fprintf(stderr, "consentd: policy map %s: %zu senders\n",
			s->policy_map_path, policymap_count(s->policy_map));
	}
	if (s->cfg.tls_cert != NULL) {
		struct tls_files f = { .cert = s->cfg.tls_cert,
				       .key = s->cfg.tls_key,
				       .ca = s->cfg.tls_ca };

		if (tls_server_create(&f, &s->tls, s->err,
				      sizeof(s->err)) < 0) {
			fprintf(stderr, "consentd: TLS: %s\n", s->err);
			return -EINVAL;
		}
	}
	return 0;
}

/* Signals: only this thread takes SIGTERM/SIGINT/SIGUSR1/SIGHUP
 * (sigtimedwait in main_serve); every thread created from here on
 * inherits the mask. */
static void main_signals(struct main_state *s)
{
	sigemptyset(&s->sigs);
	sigaddset(&s->sigs, SIGTERM);
	sigaddset(&s->sigs, SIGINT);
	sigaddset(&s->sigs, SIGUSR1);
	sigaddset(&s->sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &s->sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* --bootstrap-from into an empty DIR: the peer's snapshot downloaded into
 * a pipe whose read end the build reads as it arrives. */
static int main_start_download(struct main_state *s)
{
	const char *base = s->cfg.bootstrap_from, *token;
	char url[2048];
	int p[2];

	snprintf(s->build.what, sizeof(s->build.what), "--bootstrap-from %s",
		 base);
	if (download_snapshot_url(base, url, sizeof(url), s->err,
				  sizeof(s->err)) < 0) {
		fprintf(stderr, "consentd: --bootstrap-from %s\n", s->err);
		return -1;
	}
	if (pipe2(p, O_CLOEXEC) < 0) {
		fprintf(stderr, "consentd: pipe: %s\n", strerror(errno));
		return -1;
	}
	(void)fcntl(p[1], F_SETPIPE_SZ, 1 << 20); /* best effort */
	token = getenv("CONSENTD_TOKEN");
	if (token != NULL && token[0] == '\0')
		token = NULL;
	/* The download owns p[1] from here, whatever happens. */
	if (download_start(url, token, p[1], &s->build.download, s->err,
			   sizeof(s->err)) < 0) {
		close(p[0]);
		fprintf(stderr, "consentd: %s: %s\n", s->build.what, s->err);
		return -1;
	}
	fprintf(stderr, "consentd: %s: %s has no generation: building the "
		"first from %s\n", s->build.what, s->cfg.data_dir, url);
	s->build.fd = p[0];
	s->build.wanted = true;
	return 0;
}

/* Replicated mode: the stream behind the writer (before any worker
 * submits). The consumer's name defaults to the host's. */
static int main_start_replica(struct main_state *s)
{
	struct server_config *cfg = &s->cfg;
	static char host[256];

	if (cfg->nats_consumer == NULL) {
		if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "consentd");
		/* A consumer name takes no '.', '*', '>' or spaces. */
		for (char *p = host; *p; p++)
			if (*p == '.' || *p == '*' || *p == '>' || *p == ' ')
				*p = '-';
		cfg->nats_consumer = host;
	}
	struct replica_options ro = {
		.urls = cfg->nats_urls,
		.stream = cfg->nats_stream,
		.consumer = cfg->nats_consumer,
		.max_lag_s = cfg->max_lag_s,
	};
	if (replica_start(&ro, s->writer, &cfg->replica, s->err,
			  sizeof(s->err)) < 0) {
		fprintf(stderr, "consentd: %s\n", s->err);
		return -1;
	}
	return 0;
}

/* The single writer over the data directory (the newest generation and
 * the change log replayed into it), started; and the snapshot to build,
 * opened. */
static int main_open_writer(struct main_state *s)
{
	struct server_config *cfg = &s->cfg;
	struct writer_options wo = {
		.data_dir = cfg->data_dir,
		.index_load = cfg->index_load,
		/* One completion queue per worker, and the ops thread's
		 * (POST /v1/reject) after them: queue cfg->workers. */
		.n_queues = cfg->workers + 1,
		.metrics = metrics_slot(cfg->workers + 1),
		.checkpoint_changes = cfg->checkpoint_changes,
		.segment_bytes = cfg->changelog_segment_bytes,
		.history_off = cfg->history_off,
		.history_keep_s = (int64_t)cfg->history_keep_days * 86400,
	};
	const struct index *ix;

	if (writer_open(&wo, &s->writer, s->err, sizeof(s->err)) < 0) {
		fprintf(stderr, "consentd: --data-dir %s: %s\n", cfg->data_dir,
			s->err);
		return -1;
	}
	/* No reader or writer thread runs yet: the pointer is stable. */
	ix = live_index();
	s->had_index = ix != NULL;
	if (s->had_index && cfg->bootstrap_from != NULL)
		fprintf(stderr, "consentd: --bootstrap-from %s ignored: %s has a "
			"generation already\n", cfg->bootstrap_from,
			cfg->data_dir);
	if (!s->had_index && cfg->snapshot == NULL &&
	    cfg->bootstrap_from == NULL) {
		fprintf(stderr, "consentd: --data-dir %s: no valid generation "
			"(give --snapshot FILE or --bootstrap-from "
			"http://HOST:PORT to build one)\n", cfg->data_dir);
		return -1;
	}
	if (s->had_index)
		main_log_ready(ix);
	cfg->writer = s->writer;
	cfg->history = writer_history(s->writer);
	if (writer_start(s->writer, s->err, sizeof(s->err)) < 0) {
		fprintf(stderr, "consentd: %s\n", s->err);
		return -1;
	}
	if (cfg->nats_urls != NULL && main_start_replica(s) < 0)
		return -1;
	if (cfg->snapshot != NULL) {
		s->build.fd = strcmp(cfg->snapshot, "-") == 0
				      ? STDIN_FILENO
				      : open(cfg->snapshot, O_RDONLY | O_CLOEXEC);
		if (s->build.fd < 0) {
			fprintf(stderr, "consentd: --snapshot %s: %s\n",
				cfg->snapshot, strerror(errno));
			return -1;
		}
		s->build.wanted = true;
		snprintf(s->build.what, sizeof(s->build.what),
			 "--snapshot %s", cfg->snapshot);
	} else if (cfg->bootstrap_from != NULL && !s->had_index) {
		return main_start_download(s);
	}
	return 0;
}

/* The client ports' listeners and the workers serving them, then the ops
 * port; then the ports file saying where they all are. */
static int main_listen(struct main_state *s)
{
	struct server_config *cfg = &s->cfg;
	const char *addr[MAIN_PORTS_MAX];
	const struct conn_proto *proto[MAIN_PORTS_MAX];
	unsigned n_ports = main_ports(cfg, addr, proto);
	struct loop_listener listeners[MAIN_PORTS_MAX] = { { 0 } };
	unsigned n_listeners = 0;
	int rc = 0;

	for (unsigned i = 0; i < n_ports && rc == 0; i++) {
		const char *name = proto[i]->name;
		char what[32];
		int *fds;

		if (addr[i] == NULL)
			continue;
		fds = calloc(cfg->workers, sizeof(int));
		if (fds == NULL) {
			fprintf(stderr, "consentd: out of memory\n");
			rc = -ENOMEM;
			break;
		}
		snprintf(what, sizeof(what), "--%s", name);
		rc = loop_listen(what, addr[i], cfg->bind_wait_ms, cfg->workers,
				 fds, s->bound[i], sizeof(s->bound[i]), s->err,
				 sizeof(s->err));
		if (rc < 0) {
			fprintf(stderr, "consentd: %s %s\n", what, s->err);
			free(fds);
			break;
		}
		fprintf(stderr, "consentd: %s listening on %s (%u workers%s)\n",
			name, s->bound[i], cfg->workers,
			main_tls_on(cfg, name) ? ", TLS" : "");
		listeners[n_listeners].proto = proto[i];
		listeners[n_listeners].fds = fds;
		listeners[n_listeners].tls =
			main_tls_on(cfg, name) ? s->tls : NULL;
		n_listeners++;
	}
	if (rc == 0) {
		rc = loop_start(cfg, listeners, n_listeners, &s->loop, s->err,
				sizeof(s->err));
		if (rc < 0)
			fprintf(stderr, "consentd: %s\n", s->err);
	} else {
		/* Not handed to a loop: the listeners are still ours. */
		for (unsigned i = 0; i < n_listeners; i++)
			for (unsigned w = 0; w < cfg->workers; w++)
				close(listeners[i].fds[w]);
	}
	for (unsigned i = 0; i < n_listeners; i++)
		free((int *)listeners[i].fds);
	if (rc < 0)
		return rc;
	if (http_start(cfg, cfg->workers, &s->http, s->err,
		       sizeof(s->err)) < 0) {
		fprintf(stderr, "consentd: --http %s\n", s->err);
		return -1;
	}
	fprintf(stderr, "consentd: http listening on %s\n", http_bound(s->http));
	/* Every listener is bound: the ports file says where (readiness is
	 * /readyz's business, not this file's). */
	if (cfg->ports_file != NULL) {
		char text[1024];
		size_t n = 0;

		for (unsigned i = 0; i < n_ports; i++)
			if (addr[i] != NULL)
				n += (size_t)snprintf(text + n, sizeof(text) - n,
						      "%s %s\n", proto[i]->name,
						      s->bound[i]);
		snprintf(text + n, sizeof(text) - n, "http %s\n",
			 http_bound(s->http));
		if (main_write_ports(cfg->ports_file, text, s->err,
				     sizeof(s->err)) < 0) {
			fprintf(stderr, "consentd: --ports-file %s\n", s->err);
			return -1;
		}
	}
	return 0;
}

/* The first generation's build from --snapshot, on its own thread. */
static int main_start_build(struct main_state *s)
{
	int rc;

	if (!s->build.wanted)
		return 0;
	s->build.cfg = &s->cfg;
	s->build.writer = s->writer;
	atomic_init(&s->build.done, false);
	atomic_init(&s->build.had_index, s->had_index);
	rc = pthread_create(&s->build.thread, NULL, main_build_thread,
			    &s->build);
	if (rc != 0) {
		fprintf(stderr, "consentd: build thread: %s\n", strerror(rc));
		return -rc;
	}
	s->build.started = true;
	pthread_detach(s->build.thread);
	return 0;
}

/* Serves until a stop signal (0), or until the first generation's build
 * failed with nothing to serve (1). */
static int main_serve(struct main_state *s)
{
	for (;;) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 100000000L };
		int sig = sigtimedwait(&s->sigs, NULL, &ts);

		if (sig == SIGTERM || sig == SIGINT) {
			fprintf(stderr, "consentd: %s: stopping\n",
				sig == SIGTERM ? "SIGTERM" : "SIGINT");
			notify_stopping(&s->notify);
			return 0;
		}
		if (sig == SIGUSR1) {
			fprintf(stderr, "consentd: SIGUSR1: rebuilding the "
				"served generation\n");
			writer_rebuild(s->writer);
		}
		if (sig == SIGHUP) {
			/* New handshakes take the new files; connections keep
			 * theirs; a bad file keeps the old context. */
			if (s->tls == NULL)
				fprintf(stderr, "consentd: SIGHUP: no TLS "
					"files to reload\n");
			else if (tls_server_reload(s->tls, s->err,
						   sizeof(s->err)) < 0)
				fprintf(stderr, "consentd: SIGHUP: TLS reload "
					"failed, the previous certificate "
					"stays: %s\n", s->err);
		}
		/* Acquire: pairs with the build thread's release store. */
		if (s->build.wanted && !s->had_index &&
		    atomic_load_explicit(&s->build.done, memory_order_acquire)) {
			if (s->build.rc < 0)
				return 1; /* nothing to serve */
			s->had_index = true;
			main_notify_ready(&s->notify);
		}
		notify_watchdog(&s->notify, s->cfg.workers);
	}
}

int main(int argc, char **argv)
{
	static struct main_state s;
	int exit_code = 1;

	server_config_defaults(&s.cfg);
	if (main_options(argc, argv, &s.cfg, &s.tokens_path,
			 &s.policy_map_path) < 0)
		return 2;
	notify_init(&s.notify);
	if (s.cfg.workers == 0)
		s.cfg.workers = main_online_cores();
	if (main_load_files(&s) < 0) {
		exit_code = 2;
		goto out;
	}
	if (main_files_limit(&s.cfg) < 0)
		goto out;
	main_signals(&s);
	/* Slots: the workers, the HTTP thread, the writer. */
	if (metrics_init(s.cfg.workers + 2) < 0) {
		fprintf(stderr, "consentd: out of memory\n");
		goto out;
	}
	if (main_open_writer(&s) < 0 || main_listen(&s) < 0)
		goto out;
	if (s.had_index)
		main_notify_ready(&s.notify);
	if (main_start_build(&s) < 0)
		goto out;
	exit_code = main_serve(&s);
out:
	/* One way out, whatever was started: the workers (in-flight replies
	 * finished within the grace), the ops port, then the writer, which
	 * finishes what was submitted and writes a generation holding every
	 * change applied since the last one. */
	loop_stop(s.loop);
	http_stop(s.http);
	if (!s.build.started && s.build.download != NULL) {
		/* Started, never read: the closed pipe stops it. */
		close(s.build.fd);
		download_finish(s.build.download, NULL, s.err, sizeof(s.err));
	}
	replica_stop(s.cfg.replica); /* before the writer it feeds */
	writer_stop(s.writer);
	if (!s.build.started ||
	    atomic_load_explicit(&s.build.done, memory_order_acquire)) {
		/* Release the generation and the log (a build still running
		 * may still hand the writer its result, so the writer stays
		 * and the process exits around it). */
		writer_close(s.writer);
		tokens_destroy(s.tokens);
		policymap_destroy(s.policy_map);
		tls_server_destroy(s.tls);
	}
	if (s.writer != NULL)
		fprintf(stderr, "consentd: stopped\n");
	return exit_code;
}
