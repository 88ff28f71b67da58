/*
 * consentd: the server (DESIGN §3.6). Parses the command line into a const
 * struct server_config, loads the token file, opens the data directory
 * through the single writer (server/writer.c: the change log, the newest
 * generation, the log replayed into it), starts the writer, the workers
 * (server/loop.c) and the HTTP ops port (server/http.c), then waits for
 * SIGTERM/SIGINT and stops gracefully. SIGUSR1 asks the writer for a
 * rebuilt generation. --config FILE gives flags as lines of a file
 * (server/conffile.h), read first, the command line overriding it. A
 * service manager is told READY=1 once the listeners are up and an index
 * is served, STOPPING=1 on the signal, and the watchdog is pinged from the
 * signal loop while the workers turn (server/notify.h). Exit status: 0
 * after a signal, 2 for bad flags (or config lines) or a bad token file
 * (before anything listens), 1 for any other failure to start (a damaged
 * change log among them).
 *
 * A --snapshot is built on a background thread, in memory, while the
 * previous generation (if any) is served; the writer then takes it
 * (replays the changes past its watermark, publishes it as the next
 * generation and swaps it in with live_publish). With no previous
 * generation the listeners are already up meanwhile and every check
 * answers as if no record existed, without ever allowing (core/check.c: no
 * index counts as stale); /readyz says not ready.
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

#include "core/tokens.h"
#include "index/build.h"
#include "index/generation.h"
#include "index/table.h"
#include "server/conffile.h"
#include "server/config.h"
#include "server/http.h"
#include "server/live.h"
#include "server/loop.h"
#include "server/metrics.h"
#include "server/notify.h"
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
	{ "rpc", FLAG_STR, CFG_OFF(rpc_addr), 0, 0,
	  "HOST:PORT of the protobuf RPC port (127.0.0.1:7700)" },
	{ "resp", FLAG_STR, CFG_OFF(resp_addr), 0, 0,
	  "HOST:PORT of the Redis-protocol port (127.0.0.1:7701)" },
	{ "http", FLAG_STR, CFG_OFF(http_addr), 0, 0,
	  "HOST:PORT of the HTTP ops port (127.0.0.1:7702)" },
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
	{ "changelog-segment-bytes", FLAG_U32,
	  CFG_OFF(changelog_segment_bytes), 4096, 1u << 30,
	  "change log segment size (67108864)" },
};

#define N_FLAGS (sizeof(main_flags) / sizeof(main_flags[0]))

static void main_usage(FILE *f)
{
	fprintf(f,
		"usage: consentd --data-dir DIR [--snapshot FILE|-] "
		"[--rpc HOST:PORT]\n"
		"                [--resp HOST:PORT] [--http HOST:PORT] "
		"[--workers N]\n"
		"                [--tokens FILE] [--stale-soft SEC] "
		"[--stale-hard SEC]\n"
		"                [--merchant-default allow|deny] "
		"[--index-load anon|mmap] [LIMITS]\n"
		"       consentd --config FILE [flags over it]\n\n");
	for (size_t i = 0; i < N_FLAGS; i++)
		fprintf(f, "  --%-26s %s\n", main_flags[i].name,
			main_flags[i].help);
	fprintf(f, "  --%-26s %s\n", "tokens",
		"FILE: partner tokens (NAME SHA256HEX BRANDS [apply]); "
		"without it every client is trusted");
	fprintf(f, "  --%-26s %s\n", "merchant-default",
		"allow|deny: a TACIR with no record (allow)");
	fprintf(f, "  --%-26s %s\n", "index-load",
		"anon|mmap: copy the index into huge-page memory, or map it "
		"(anon)");
	fprintf(f, "  --%-26s %s\n", "config",
		"FILE: these settings as lines 'name value' (# comments); "
		"flags given too override it");
	fprintf(f, "  --%-26s %s\n", "help", "this text");
	fprintf(f, "\nSIGTERM or SIGINT stops gracefully. Flags also take "
		   "--flag=value.\n");
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
		      const char **tokens_path, const char **config_path,
		      const char *at)
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
		    strcmp(namebuf, "merchant-default") != 0 &&
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

/* What must hold of the whole configuration, file and flags. */
static int main_check(const struct server_config *cfg)
{
	if (cfg->data_dir == NULL) {
		fprintf(stderr, "consentd: --data-dir DIR is required (see "
			"--help)\n");
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
	return 0;
}

/* The config file, then the command line over it, both through
 * main_parse: the file's lines one at a time, so that a refusal names
 * FILE:LINE. The command line is parsed alone first (into a scratch
 * configuration) to find --config, and to answer --help or refuse a bad
 * flag before any file is read. */
static int main_options(int argc, char **argv, struct server_config *cfg,
			const char **tokens_path)
{
	static struct conffile conf; /* cfg points into it for good */
	struct server_config scratch;
	const char *scratch_tokens = NULL, *config_path = NULL;
	char err[512], at[PATH_MAX + 16];

	server_config_defaults(&scratch);
	if (main_parse(argc, argv, &scratch, &scratch_tokens, &config_path,
		       NULL) < 0)
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
			if (main_parse(2, line_argv, cfg, tokens_path, NULL,
				       at) < 0)
				return -EINVAL;
		}
	}
	if (main_parse(argc, argv, cfg, tokens_path, &config_path, NULL) < 0)
		return -EINVAL;
	return main_check(cfg);
}

/* ---- the snapshot build ------------------------------------------------ */

struct main_build {
	const struct server_config *cfg;
	struct writer *writer;
	pthread_t thread;
	int fd;
	int rc;
	char err[512];
	atomic_bool done;
	atomic_bool had_index;
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

	memset(&res, 0, sizeof(res));
	/* In memory, never in the data directory: the writer takes it as it
	 * is and publishes it (server/writer.h). */
	b->rc = g == NULL ? -ENOMEM
			  : build_index(b->fd, g, &res, b->err, sizeof(b->err));
	if (g == NULL)
		snprintf(b->err, sizeof(b->err), "out of memory");
	if (b->fd != STDIN_FILENO)
		close(b->fd);
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
		fprintf(stderr, "consentd: snapshot %s: %s%s\n",
			b->cfg->snapshot, b->err,
			atomic_load(&b->had_index)
				? " (the previous generation stays served)"
				: "");
	/* Release: pairs with the acquire load in main's wait loop. */
	atomic_store_explicit(&b->done, true, memory_order_release);
	return NULL;
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

int main(int argc, char **argv)
{
	static struct server_config cfg;
	static struct main_build build;
	static struct notify notify;
	const char *tokens_path = NULL;
	struct tokens *tokens = NULL;
	const struct index *ix;
	struct writer *writer = NULL;
	struct loop *loop = NULL;
	struct http *http = NULL;
	int *rpc_fds, *resp_fds, rc, exit_code = 0;
	char err[512], bound[300];
	sigset_t sigs;
	bool had_index;

	server_config_defaults(&cfg);
	if (main_options(argc, argv, &cfg, &tokens_path) < 0)
		return 2;
	notify_init(&notify);
	if (cfg.workers == 0)
		cfg.workers = main_online_cores();
	if (tokens_path != NULL) {
		if (tokens_load(tokens_path, &tokens, err, sizeof(err)) < 0) {
			fprintf(stderr, "consentd: --tokens %s: %s\n",
				tokens_path, err);
			return 2;
		}
		cfg.tokens = tokens;
	}
	if (main_files_limit(&cfg) < 0)
		return 1;

	/* Signals: only this thread takes SIGTERM/SIGINT (sigtimedwait
	 * below); every thread created from here on inherits the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Slots: the workers, the HTTP thread, the writer. */
	if (metrics_init(cfg.workers + 2) < 0) {
		fprintf(stderr, "consentd: out of memory\n");
		return 1;
	}

	struct writer_options wo = {
		.data_dir = cfg.data_dir,
		.index_load = cfg.index_load,
		.n_queues = cfg.workers,
		.metrics = metrics_slot(cfg.workers + 1),
		.checkpoint_changes = cfg.checkpoint_changes,
		.segment_bytes = cfg.changelog_segment_bytes,
	};
	rc = writer_open(&wo, &writer, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "consentd: --data-dir %s: %s\n", cfg.data_dir,
			err);
		return 1;
	}
	/* No reader or writer thread runs yet: the pointer is stable. */
	ix = live_index();
	had_index = ix != NULL;
	if (!had_index && cfg.snapshot == NULL) {
		fprintf(stderr, "consentd: --data-dir %s: no valid generation "
			"(give --snapshot FILE to build one)\n", cfg.data_dir);
		writer_close(writer);
		return 1;
	}
	if (had_index)
		main_log_ready(ix);
	cfg.writer = writer;
	if (writer_start(writer, err, sizeof(err)) < 0) {
		fprintf(stderr, "consentd: %s\n", err);
		return 1;
	}
	if (cfg.snapshot != NULL) {
		build.fd = strcmp(cfg.snapshot, "-") == 0
				   ? STDIN_FILENO
				   : open(cfg.snapshot, O_RDONLY | O_CLOEXEC);
		if (build.fd < 0) {
			fprintf(stderr, "consentd: --snapshot %s: %s\n",
				cfg.snapshot, strerror(errno));
			return 1;
		}
	}

	rpc_fds = calloc(cfg.workers, sizeof(int));
	resp_fds = calloc(cfg.workers, sizeof(int));
	if (rpc_fds == NULL || resp_fds == NULL) {
		fprintf(stderr, "consentd: out of memory\n");
		return 1;
	}
	if (loop_listen(cfg.rpc_addr, cfg.workers, rpc_fds, bound,
			sizeof(bound), err, sizeof(err)) < 0) {
		fprintf(stderr, "consentd: --rpc %s\n", err);
		return 1;
	}
	fprintf(stderr, "consentd: rpc listening on %s (%u workers)\n", bound,
		cfg.workers);
	if (loop_listen(cfg.resp_addr, cfg.workers, resp_fds, bound,
			sizeof(bound), err, sizeof(err)) < 0) {
		fprintf(stderr, "consentd: --resp %s\n", err);
		return 1;
	}
	fprintf(stderr, "consentd: resp listening on %s (%u workers)\n", bound,
		cfg.workers);
	if (loop_start(&cfg, rpc_fds, resp_fds, &loop, err, sizeof(err)) < 0) {
		fprintf(stderr, "consentd: %s\n", err);
		return 1;
	}
	free(rpc_fds);
	free(resp_fds);
	if (http_start(&cfg, cfg.workers, &http, err, sizeof(err)) < 0) {
		fprintf(stderr, "consentd: --http %s: %s\n", cfg.http_addr,
			err);
		loop_stop(loop);
		return 1;
	}
	fprintf(stderr, "consentd: http listening on %s\n", cfg.http_addr);
	if (had_index)
		main_notify_ready(&notify);

	if (cfg.snapshot != NULL) {
		build.cfg = &cfg;
		build.writer = writer;
		atomic_init(&build.done, false);
		atomic_init(&build.had_index, had_index);
		rc = pthread_create(&build.thread, NULL, main_build_thread,
				    &build);
		if (rc != 0) {
			fprintf(stderr, "consentd: build thread: %s\n",
				strerror(rc));
			exit_code = 1;
			goto stop;
		}
		pthread_detach(build.thread);
	}

	for (;;) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 100000000L };
		int sig = sigtimedwait(&sigs, NULL, &ts);

		if (sig == SIGTERM || sig == SIGINT) {
			fprintf(stderr, "consentd: %s: stopping\n",
				sig == SIGTERM ? "SIGTERM" : "SIGINT");
			notify_stopping(&notify);
			break;
		}
		if (sig == SIGUSR1) {
			fprintf(stderr, "consentd: SIGUSR1: rebuilding the "
				"served generation\n");
			writer_rebuild(writer);
		}
		/* Acquire: pairs with the build thread's release store. */
		if (cfg.snapshot != NULL && !had_index &&
		    atomic_load_explicit(&build.done, memory_order_acquire)) {
			if (build.rc < 0) {
				exit_code = 1; /* nothing to serve */
				break;
			}
			had_index = true;
			main_notify_ready(&notify);
		}
		notify_watchdog(&notify, cfg.workers);
	}
stop:
	loop_stop(loop);
	http_stop(http);
	/* Finishes what was submitted and writes a generation holding
	 * every change applied since the last one. */
	writer_stop(writer);
	if (cfg.snapshot == NULL ||
	    atomic_load_explicit(&build.done, memory_order_acquire)) {
		/* Release the generation and the log (a build still running
		 * may still hand the writer its result, so the writer stays
		 * and the process exits around it). */
		writer_close(writer);
		if (tokens != NULL)
			tokens_destroy(tokens);
	}
	fprintf(stderr, "consentd: stopped\n");
	return exit_code;
}
