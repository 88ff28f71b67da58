/*
 * consentctl: offline tools for consentd's data (DESIGN §3.6).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *usage;
	const char *help;
};

static const struct command commands[] = {
	{ "gen", ctl_gen,
	  "gen --records N [--seed S] [--changes K | --new-keys K [--from-sequence Q]] [--threads T] --out FILE",
	  "write a deterministic synthetic snapshot stream, or with --changes\n"
	  "      a change stream of K ONAY<->RET flips of its records, or with\n"
	  "      --new-keys K ONAYs of keys no dataset holds (+1 numbers),\n"
	  "      sequences Q+1..Q+K (Q defaults to 0); a snapshot is made on T\n"
	  "      threads (default: the online cores), the same bytes for any T" },
	{ "build", ctl_build, "build --snapshot FILE --out DIR",
	  "build a data directory that consentd --data-dir DIR serves" },
	{ "verify", ctl_verify, "verify DIR",
	  "exit 0 only if every generation in DIR is whole" },
	{ "dump", ctl_dump, "dump DIR --out FILE | dump --from http://HOST:PORT [--token T] --out FILE",
	  "write the served records back as a snapshot stream" },
	{ "check", ctl_check,
	  "check DIR RECIPIENT BRAND CHANNEL [BIREYSEL|TACIR] [TICARI|BILGILENDIRME]",
	  "decide one check offline against DIR's newest generation" },
	{ "feed", ctl_feed,
	  "feed --rpc HOST:PORT [--token T] [--origin NAME|--no-origin] [--batch K] FILE|-",
	  "send a change stream to a server's Apply RPC, resuming from its "
	  "origin's cursor (default origin file:BASENAME; --no-origin: after "
	  "the applied sequence)" },
	{ "pull", ctl_pull,
	  "pull --iys URL --iys-code I --brand B[,B...] --credentials FILE "
	  "[--consentd HOST:PORT] [--token T|--token-file FILE] [--once] "
	  "[--interval SEC] [--rate N/min] [--ops HOST:PORT] ...",
	  "follow İYS's consent changes of each brand (sources HS and IYS) "
	  "into consentd's Apply, resuming from each origin iys:BRAND:SOURCE's "
	  "cursor; with --ops push consentd's outbox of local rejections to "
	  "İYS (consentctl pull --help for every flag)" },
	{ "publish", ctl_publish,
	  "publish --nats URL[,URL] --replica HOST:PORT [--stream S] "
	  "[--origin NAME] [--heartbeat SEC] FILE|-",
	  "send a change stream to the fleet's JetStream stream (DESIGN 9), "
	  "resuming from the origin's cursor on a caught-up replica" },
	{ "audit", ctl_audit, "audit verify DIR | audit head DIR",
	  "recompute DIR's evidence chain (DIR/history, DESIGN 10): verify\n"
	  "      prints \"ok: N records, head SEQ HEX\" or names the first record\n"
	  "      that does not match (file, offset, sequence) and exits 1; head\n"
	  "      prints \"SEQ HEX\"" },
	{ "receipt", ctl_receipt,
	  "receipt --server HOST:PORT [--token T] LINE|-",
	  "a gateway's send-log line (RECIPIENT BRAND CHANNEL TYPE SEQUENCE)\n"
	  "      to its proof: the verdict as of SEQUENCE, the deciding change\n"
	  "      (sequence, transaction_id, dates, source) and the chain head" },
	{ "import-csv", ctl_import_csv,
	  "import-csv --brand B [--iys-code I] [--skip-bad] [--from-sequence Q] "
	  "FILE --out FILE",
	  "İYS daily change file (CSV, Turkey time) to a change stream "
	  "numbered Q+1.." },
	{ "import-json", ctl_import_json,
	  "import-json --brand B [--iys-code I] [--skip-bad] [--from-sequence Q] "
	  "FILE --out FILE",
	  "İYS pull API pages ({\"after\":..,\"list\":[..]}) to a change stream" },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	fprintf(f, "usage: consentctl COMMAND [ARGS]   ('-' means stdin/stdout)\n\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %s\n      %s\n", commands[i].usage, commands[i].help);
	fprintf(f, "  help\n      this text\n");
}

int ctl_open_in(const char *path)
{
	if (strcmp(path, "-") == 0)
		return STDIN_FILENO;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int ctl_open_out(const char *path)
{
	if (strcmp(path, "-") == 0)
		return STDOUT_FILENO;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	return fd < 0 ? -errno : fd;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "consentctl: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
